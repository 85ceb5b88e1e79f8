"""Read-only cgminer/bmminer RPC telemetry driver (TCP 4028).

Protocol: https://github.com/ckolivas/cgminer/blob/master/API-README. One JSON request per
connection (`{"command": ..., "parameter": ...}`); the server closes after its reply, which may
end in a NUL byte. A STATUS of "E"/"F" is an error (`CgminerStatusError`, with its code).
Stock firmware refuses writes (code 45), so this driver declares itself read-only: the
controller counts such miners at their measured (or nameplate) power and never commands them.

A reading needs only ``summary`` (``Elapsed``, ``GHS 5s``/``GHS av`` or ``MHS 5s``/``MHS av``);
``stats`` (temperatures, fans, chip counts: model-specific fields) is optional and its failure
is noted in ``Telemetry.errors``.
"""


from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from typing import Any

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    FirmwareProtocolError,
    OptionalCalls,
    Secret,
    Telemetry,
    UnsupportedError,
    loads_lenient,
    with_timeout,
)
from poold.fleet.policy import Actuator

MAX_REPLY = 1 << 20
# cgminer STATUS codes (https://github.com/ckolivas/cgminer/blob/master/API-README and api.c):
INVALID_COMMAND = 14  # "Invalid command": the firmware has no such command
ACCESS_DENIED = 45  # "Access denied to '<cmd>' command": privileged, not allowed from here


class CgminerStatusError(DriverError):
    """The firmware answered STATUS "E" or "F" with `code` and `msg`."""

    def __init__(self, message: str, code: object, msg: str) -> None:
        super().__init__(message)
        self.code = code
        self.msg = msg

    @property
    def absent(self) -> bool:
        """The command does not exist on this firmware (asking again is pointless)."""
        return self.code == INVALID_COMMAND and "invalid command" in self.msg.lower()


RECV_CHUNK = 1 << 16  # a reply is a few kB: a 1 MiB receive buffer per call is an mmap each


def _numeric_family(host: str) -> int | None:
    """The socket family of a numeric address (what inventories hold), None for a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


async def _exchange(family: int, host: str, port: int, payload: bytes) -> bytes:
    """Connect, send, read to EOF (or a trailing NUL), close: on a bare non-blocking socket
    with the loop's sock_* calls (each tries the syscall first), without the transport,
    protocol and stream objects `asyncio.open_connection` builds for every request."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, payload)
        chunks: list[bytes] = []
        size = 0
        while size < MAX_REPLY:
            data = await loop.sock_recv(sock, RECV_CHUNK)
            if not data:
                break
            chunks.append(data)
            size += len(data)
            if data.endswith(b"\x00"):
                break
        return b"".join(chunks)
    finally:
        sock.close()


async def cgminer_request(host: str, port: int, command: str, parameter: str | None = None,
                          *, timeout_s: float = 5.0) -> dict[str, Any]:
    """One cgminer-style request; returns the parsed reply or raises DriverError."""
    req: dict[str, str] = {"command": command}
    if parameter is not None:
        req["parameter"] = parameter
    family = _numeric_family(host)

    async def go() -> bytes:
        if family is not None:
            return await _exchange(family, host, port, json.dumps(req).encode())
        reader, writer = await asyncio.open_connection(host, port)  # a host name
        try:
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
        raise FirmwareProtocolError(f"{host}:{port} {command}: empty reply")
    reply = loads_lenient(raw, f"{host}:{port} {command}")
    if not isinstance(reply, dict):
        raise FirmwareProtocolError(f"{host}:{port} {command}: reply is not an object")
    status = reply.get("STATUS")
    if isinstance(status, list) and status and isinstance(status[0], dict):
        st = status[0]
        if st.get("STATUS") in ("E", "F"):
            msg = str(st.get("Msg") or "")
            raise CgminerStatusError(
                f"{host}:{port} {command}: STATUS {st.get('STATUS')} code {st.get('Code')} "
                f"{msg}", st.get("Code"), msg)
    return reply


def section(reply: dict[str, Any], name: str, what: str) -> dict[str, Any]:
    """First entry of a reply section, or FirmwareProtocolError."""
    sec = reply.get(name)
    if not isinstance(sec, list) or not sec or not isinstance(sec[0], dict):
        raise FirmwareProtocolError(f"{what}: no {name} section")
    first: dict[str, Any] = sec[0]
    return first


def number(v: Any) -> float | None:
    """A JSON number or a numeric string (bmminer prints "GHS 5s" as a string), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def summary_ths(summ: dict[str, Any]) -> float | None:
    """TH/s from a SUMMARY entry: GHS 5s, GHS av, MHS 5s or MHS av, the first present."""
    for key, scale in (("GHS 5s", 1e-3), ("GHS av", 1e-3), ("MHS 5s", 1e-6), ("MHS av", 1e-6)):
        v = number(summ.get(key))
        if v is not None:
            return v * scale
    return None


def num(d: dict[str, Any], key: str, what: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise FirmwareProtocolError(f"{what}: field {key!r} missing or not a number")
    return float(v)


class CgminerDriver:
    """Telemetry from SUMMARY (+ STATS temperatures and fans); no commands."""

    kind = "cgminer"

    def __init__(self, host: str, port: int = 4028, *, nameplate_w: float = 3250.0,
                 timeout_s: float = 5.0) -> None:
        self.host, self.port = host, port
        self.nameplate_w = nameplate_w
        self.timeout_s = timeout_s
        self._optional_calls = OptionalCalls()  # `stats`: absent, useless or failing
        self._stats_empty = 0  # consecutive stats replies without temperatures/fans/chains

    def __repr__(self) -> str:
        return f"CgminerDriver({self.host}:{self.port})"

    async def capabilities(self) -> Capabilities:
        return Capabilities(actuator=Actuator.ONOFF, min_w=self.nameplate_w,
                            max_w=self.nameplate_w, can_sleep=False, read_only=True)

    async def read(self) -> Telemetry:
        what = f"{self.host}:{self.port}"
        errors: list[str] = []
        summ = section(await cgminer_request(self.host, self.port, "summary",
                                             timeout_s=self.timeout_s), "SUMMARY",
                       f"{what} summary")
        stats: dict[str, Any] = {}
        calls = self._optional_calls
        if calls.wanted("stats"):
            try:
                stats = await cgminer_request(self.host, self.port, "stats",
                                              timeout_s=self.timeout_s)
                calls.ok("stats")
            except CgminerStatusError as exc:
                (calls.absent if exc.absent else calls.failed)("stats")
                errors.append(f"stats: code {exc.code} {exc.msg}")
            except DriverError as exc:
                calls.failed("stats")
                errors.append(f"stats: {exc}")
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
        if stats and not (temps or fans or chips):
            # stats without any field this driver uses, again and again: stop asking (one
            # connection per poll for nothing, at fleet scale).
            self._stats_empty += 1
            if self._stats_empty >= 3:
                calls.absent("stats")
        elif stats:
            self._stats_empty = 0
        ths = summary_ths(summ)
        if ths is None:
            raise FirmwareProtocolError(f"{what} summary: no GHS 5s, GHS av, MHS 5s or MHS av")
        return Telemetry(
            time=time.monotonic(), power_w=None, hashrate_ths=ths,
            temps_c=tuple(temps), fans_rpm=tuple(fans), boards_alive=chips if stats else None,
            uptime_s=number(summ.get("Elapsed")), model=model,
            errors=tuple(errors), firmware="cgminer",
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
