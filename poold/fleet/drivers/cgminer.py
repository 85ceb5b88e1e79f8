"""Read-only cgminer/bmminer RPC telemetry driver (TCP 4028; fleet.md §3.1).

One JSON request per connection (`{"command": ..., "parameter": ...}`); the server closes after
its reply, which may end in a NUL byte. A STATUS of "E"/"F" is an error. Stock firmware
refuses writes (code 45), so this driver declares itself read-only: the controller counts such
miners at their measured (or nameplate) power and never commands them.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    ProtocolError,
    Secret,
    Telemetry,
    UnsupportedError,
    loads_lenient,
    with_timeout,
)
from poold.fleet.policy import Actuator

MAX_REPLY = 1 << 20


async def cgminer_request(host: str, port: int, command: str, parameter: str | None = None,
                          *, timeout_s: float = 5.0) -> dict[str, Any]:
    """One cgminer-style request; returns the parsed reply or raises DriverError."""

    async def go() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            req: dict[str, str] = {"command": command}
            if parameter is not None:
                req["parameter"] = parameter
            writer.write(json.dumps(req).encode())
            await writer.drain()
            data = await reader.read(MAX_REPLY)
            while data and not data.endswith(b"\x00"):
                more = await reader.read(MAX_REPLY)
                if not more:
                    break
                data += more
            return data
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    raw = await with_timeout(timeout_s, f"{host}:{port} {command}", go)
    if not raw:
        raise ProtocolError(f"{host}:{port} {command}: empty reply")
    reply = loads_lenient(raw, f"{host}:{port} {command}")
    if not isinstance(reply, dict):
        raise ProtocolError(f"{host}:{port} {command}: reply is not an object")
    status = reply.get("STATUS")
    if isinstance(status, list) and status and isinstance(status[0], dict):
        st = status[0]
        if st.get("STATUS") in ("E", "F"):
            raise DriverError(f"{host}:{port} {command}: code {st.get('Code')} {st.get('Msg')}")
    return reply


def section(reply: dict[str, Any], name: str, what: str) -> dict[str, Any]:
    """First entry of a reply section, or ProtocolError."""
    sec = reply.get(name)
    if not isinstance(sec, list) or not sec or not isinstance(sec[0], dict):
        raise ProtocolError(f"{what}: no {name} section")
    first: dict[str, Any] = sec[0]
    return first


def num(d: dict[str, Any], key: str, what: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ProtocolError(f"{what}: field {key!r} missing or not a number")
    return float(v)


class CgminerDriver:
    """Telemetry from SUMMARY (+ STATS temperatures and fans); no commands."""

    kind = "cgminer"

    def __init__(self, host: str, port: int = 4028, *, nameplate_w: float = 3250.0,
                 timeout_s: float = 5.0) -> None:
        self.host, self.port = host, port
        self.nameplate_w = nameplate_w
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"CgminerDriver({self.host}:{self.port})"

    async def capabilities(self) -> Capabilities:
        return Capabilities(actuator=Actuator.ONOFF, min_w=self.nameplate_w,
                            max_w=self.nameplate_w, can_sleep=False, read_only=True)

    async def read(self) -> Telemetry:
        what = f"{self.host}:{self.port}"
        summ = section(await cgminer_request(self.host, self.port, "summary",
                                             timeout_s=self.timeout_s), "SUMMARY", what)
        stats = await cgminer_request(self.host, self.port, "stats", timeout_s=self.timeout_s)
        temps: list[float] = []
        fans: list[int] = []
        chips = 0
        model = ""
        for entry in stats.get("STATS", []) if isinstance(stats.get("STATS"), list) else []:
            if not isinstance(entry, dict):
                continue
            model = str(entry.get("Type", model))
            for k, v in entry.items():
                if isinstance(v, bool) or not isinstance(v, int | float):
                    continue
                if k.startswith("temp_chip") or (k.startswith("temp") and k[4:].isdigit()):
                    temps.append(float(v))
                elif k.startswith("fan") and k[3:].isdigit():
                    fans.append(int(v))
                elif k.startswith("chain_acn"):
                    chips += 1 if v > 0 else 0
        ghs = summ.get("GHS 5s", summ.get("GHS av"))
        hashrate = float(ghs) / 1000.0 if isinstance(ghs, int | float) else None
        return Telemetry(
            time=time.monotonic(), power_w=None, hashrate_ths=hashrate,
            temps_c=tuple(temps), fans_rpm=tuple(fans), boards_alive=chips,
            uptime_s=num(summ, "Elapsed", what), model=model, firmware="cgminer",
        )

    async def apply(self, desired: Desired) -> Telemetry:
        raise UnsupportedError(f"{self!r} is read-only")

    async def reboot(self) -> None:
        raise UnsupportedError(f"{self!r} is read-only")

    async def restart_mining(self) -> None:
        raise UnsupportedError(f"{self!r} is read-only")

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        raise UnsupportedError(f"{self!r} is read-only")

    async def close(self) -> None:
        return None
