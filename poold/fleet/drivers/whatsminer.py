"""Whatsminer API v3 driver (TCP 4433, 4-byte little-endian length + JSON).

Protocol: MicroBT's WhatsMiner API V3, https://apidoc.whatsminer.com/ (e.g.
#api-Miner-btminer_get_status); read the same way by asic-rs
(https://github.com/256foundation/asic-rs, whatsminer v3 backend) and pyasic
(https://github.com/UpstreamData/pyasic/blob/master/pyasic/rpc/btminer.py, BTMinerV3RPCAPI).

A reading needs only ``{"cmd": "get.miner.status", "param": "summary"}``: ``power-realtime``
(W), ``hash-realtime`` (TH/s) and ``power-limit`` (W). The summary has no run state, so
sleep (``set.miner.service stop``) is what this driver last commanded while that settles, and
then the physics of a stopped service (no hashrate at control-board watts). Temperatures, fans
and uptime are optional. An error reply (``code`` ≠ 0) names the command, code and msg.

Writes carry ``ts``, ``account: "super"`` and
``token = base64(sha256(cmd + password + salt + ts))[:8]`` with the salt from
``get.device.info`` (param "salt"); success is ``"msg": "ok"``. Power is
``set.miner.power_limit`` (watts, on the fly in v3 — unlike v2's ``adjust_power_limit``, which
reboots), sleep is ``set.miner.service stop`` / ``start``. Each change is read back.
"""


from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import struct
import time
from typing import Any

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    FirmwareAuthError,
    FirmwareProtocolError,
    Secret,
    Telemetry,
    target_differs,
    target_watts,
    verify_watts_and_sleep,
    with_timeout,
)
from poold.fleet.drivers.cgminer import number
from poold.fleet.policy import Actuator

MAX_FRAME = 1 << 20

# Settle maxima. Whatsminer documents no settle time for v3 ``set.miner.power_limit`` (applied
# on the fly, unlike v2's ``adjust_power_limit``, which reboots:
# https://www.buywhatsminer.com/download/whatsminer-api-v2-0-5/); budgeted like Braiins' tuner
# (30 s). ``set.miner.service stop`` turns the hashboards off (v2 ``power_off``: "stops mining
# and turns off the power output of the power board", same page): 5 s; ``start`` restarts
# the mining service and its boards: 60 s.
SETTLE_S = 30.0
SLEEP_SETTLE_S = 5.0
WAKE_SETTLE_S = 60.0
_SLEEP_POWER_FACTOR = 3.0


class WhatsminerDriver:
    kind = "whatsminer"

    def __init__(self, host: str, port: int = 4433, *, password: Secret | None = None,
                 min_w: float = 1200.0, max_w: float = 3600.0, timeout_s: float = 10.0,
                 settle_s: float | None = None, sleep_settle_s: float | None = None,
                 wake_settle_s: float | None = None, sleep_w: float = 60.0,
                 wall_clock: Any = time.time) -> None:
        self.host, self.port = host, port
        self._password = password or Secret("")
        # max_w: the operator's ceiling (inventory max_w, default nameplate); targets are
        # clamped to it, never above.
        self.min_w, self.max_w = min(min_w, max_w), max_w
        self.timeout_s = timeout_s
        self.settle_s = SETTLE_S if settle_s is None else settle_s
        self.sleep_settle_s = SLEEP_SETTLE_S if sleep_settle_s is None else sleep_settle_s
        self.wake_settle_s = WAKE_SETTLE_S if wake_settle_s is None else wake_settle_s
        self.sleep_w = sleep_w
        self._wall = wall_clock
        self._stop_set: bool | None = None  # the service state this driver last set
        self._stop_set_at = -1e18  # when (time.monotonic())

    def __repr__(self) -> str:
        return f"WhatsminerDriver({self.host}:{self.port})"

    async def _send(self, req: dict[str, Any]) -> dict[str, Any]:
        param = req.get("param")
        what = f"{self!r} {req.get('cmd')}" + (f" {param}" if isinstance(param, str)
                                                 and "ts" not in req else "")

        async def go() -> bytes:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            try:
                data = json.dumps(req).encode()
                writer.write(struct.pack("<I", len(data)) + data)
                await writer.drain()
                (n,) = struct.unpack("<I", await reader.readexactly(4))
                if n > MAX_FRAME:
                    raise FirmwareProtocolError(f"{what}: frame of {n} bytes")
                return await reader.readexactly(n)
            except asyncio.IncompleteReadError as exc:
                raise FirmwareProtocolError(f"{what}: truncated frame") from exc
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()

        raw = await with_timeout(self.timeout_s, what, go)
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise FirmwareProtocolError(f"{what}: malformed JSON ({exc})") from exc
        if not isinstance(reply, dict):
            raise FirmwareProtocolError(f"{what}: reply is not an object")
        code = reply.get("code")
        if code != 0:
            if reply.get("msg") == "invalid token":
                raise FirmwareAuthError(f"{what}: token refused")
            raise DriverError(f"{what}: error code {code} {reply.get('msg')!r}")
        return reply

    async def _write(self, cmd: str, param: Any) -> None:
        salt_reply = await self._send({"cmd": "get.device.info", "param": "salt"})
        salt = salt_reply.get("msg", {}).get("salt") if isinstance(
            salt_reply.get("msg"), dict) else None
        if not isinstance(salt, str):
            raise FirmwareProtocolError(f"{self!r} get.device.info: reply has no msg.salt")
        ts = int(self._wall())
        digest = hashlib.sha256(f"{cmd}{self._password.value}{salt}{ts}".encode()).digest()
        token = base64.b64encode(digest).decode()[:8]
        reply = await self._send({"cmd": cmd, "param": param, "ts": ts, "account": "super",
                                  "token": token})
        if reply.get("msg") != "ok":
            raise DriverError(f"{self!r} {cmd}: {reply.get('msg')}")

    async def capabilities(self) -> Capabilities:
        return Capabilities(actuator=Actuator.WATTS, min_w=self.min_w, max_w=self.max_w,
                            step_w=1.0, sleep_w=self.sleep_w, settle_s=self.settle_s,
                            sleep_settle_s=self.sleep_settle_s,
                            wake_settle_s=self.wake_settle_s)

    async def read(self) -> Telemetry:
        what = f"{self!r} get.miner.status summary"
        reply = await self._send({"cmd": "get.miner.status", "param": "summary"})
        s = reply.get("msg", {}).get("summary") if isinstance(reply.get("msg"), dict) else None
        if not isinstance(s, dict):
            raise FirmwareProtocolError(f"{what}: reply has no msg.summary object")
        p, h = number(s.get("power-realtime")), number(s.get("hash-realtime"))
        if p is None or h is None:
            raise FirmwareProtocolError(f"{what}: power-realtime {s.get('power-realtime')!r} / "
                                f"hash-realtime {s.get('hash-realtime')!r} not numbers")
        lim = number(s.get("power-limit"))
        stopped = self._infer_stopped(p, h)
        temps = s.get("board-temperature")
        return Telemetry(
            time=time.monotonic(), power_w=p, hashrate_ths=h, target_w=lim, sleeping=stopped,
            temps_c=tuple(float(t) for t in (temps if isinstance(temps, list) else [])
                          if number(t) is not None),
            fans_rpm=tuple(int(s[k]) for k in ("fan-speed-in", "fan-speed-out")
                           if isinstance(s.get(k), int)),
            uptime_s=number(s.get("elapsed")), firmware="whatsminer-v3",
        )

    def _infer_stopped(self, watts: float, ths: float) -> bool:
        """Service state: what this driver set while it settles; then hashing means running,
        no hashrate at sleep-level watts means stopped, otherwise what was last set."""
        if self._stop_set is not None:
            window = self.sleep_settle_s if self._stop_set else self.wake_settle_s
            if time.monotonic() - self._stop_set_at < window:
                return self._stop_set
        if ths > 0:
            return False
        if watts <= self.sleep_w * _SLEEP_POWER_FACTOR:
            return True
        return bool(self._stop_set)

    async def apply(self, desired: Desired) -> Telemetry:
        before = await self.read()
        want = target_watts(desired, self.min_w, self.max_w)
        if want is not None and target_differs(before.target_w, want):
            await self._write("set.miner.power_limit", want)
        if desired.sleep != before.sleeping:
            await self._write("set.miner.service", "stop" if desired.sleep else "start")
            self._stop_set, self._stop_set_at = desired.sleep, time.monotonic()
        return verify_watts_and_sleep(self, await self.read(), desired, want)

    async def sleep_now(self) -> None:
        """Mining service stopped alone (the grid's fast step): the next read confirms."""
        await self._write("set.miner.service", "stop")
        self._stop_set, self._stop_set_at = True, time.monotonic()

    async def reboot(self) -> None:
        await self._write("set.system.reboot", "")

    async def restart_mining(self) -> None:
        await self._write("set.miner.service", "restart")

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        await self._write("set.miner.pools", [{"pool": url, "worker": user,
                                               "passwd": password.value}])

    async def close(self) -> None:
        return None
