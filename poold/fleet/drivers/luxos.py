"""LuxOS (LUXminer) driver: cgminer-style JSON on TCP 4028 with a session (fleet.md §3.4).

Writes need a session id from `logon` as the first parameter; LuxOS allows one session and
expires it after 60 s idle, so the driver logs on per write batch and logs off after. Power is
set by profile (the highest profile whose Watts fit), which LuxOS refuses while ATM is
enabled, so ATM is switched off first (as pyasic does, PR #267/#324). Sleep is
``curtail <sid>,sleep`` / ``wakeup``. Every change is read back from `config`.
"""


from __future__ import annotations

import asyncio
import time
from typing import Any

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    Level,
    ProtocolError,
    Secret,
    Telemetry,
    UnsupportedError,
    VerifyError,
    pick_level,
)
from poold.fleet.drivers.cgminer import cgminer_request, num, section
from poold.fleet.policy import Actuator


class LuxosDriver:
    kind = "luxos"

    def __init__(self, host: str, port: int = 4028, *, timeout_s: float = 10.0,
                 settle_s: float = 30.0, sleep_w: float = 30.0) -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self.sleep_w = sleep_w
        self._levels: tuple[Level, ...] = ()
        self._lock = asyncio.Lock()  # one session per miner: serialise our writes

    def __repr__(self) -> str:
        return f"LuxosDriver({self.host}:{self.port})"

    async def _req(self, command: str, parameter: str | None = None) -> dict[str, Any]:
        return await cgminer_request(self.host, self.port, command, parameter,
                                     timeout_s=self.timeout_s)

    async def _levels_cached(self) -> tuple[Level, ...]:
        if not self._levels:
            reply = await self._req("profiles")
            profs = reply.get("PROFILES")
            if not isinstance(profs, list) or not profs:
                raise ProtocolError(f"{self!r}: no PROFILES")
            levels = []
            for p in profs:
                if not isinstance(p, dict) or not isinstance(p.get("Profile Name"), str):
                    raise ProtocolError(f"{self!r}: bad profile entry")
                levels.append(Level(p["Profile Name"], num(p, "Watts", repr(self)),
                                    float(p.get("Hashrate") or 0.0)))
            self._levels = tuple(sorted(levels, key=lambda lv: lv.watts))
        return self._levels

    async def capabilities(self) -> Capabilities:
        levels = await self._levels_cached()
        return Capabilities(actuator=Actuator.PRESETS, min_w=levels[0].watts,
                            max_w=levels[-1].watts, levels=levels, sleep_w=self.sleep_w,
                            settle_s=self.settle_s)

    async def read(self) -> Telemetry:
        what = repr(self)
        power = section(await self._req("power"), "POWER", what)
        summ = section(await self._req("summary"), "SUMMARY", what)
        conf = section(await self._req("config"), "CONFIG", what)
        stats = await self._req("stats")
        temps: list[float] = []
        for entry in stats.get("STATS", []) if isinstance(stats.get("STATS"), list) else []:
            if isinstance(entry, dict):
                temps += [float(v) for k, v in entry.items()
                          if k.startswith("temp") and isinstance(v, int | float)
                          and not isinstance(v, bool)]
        level = conf.get("Profile")
        levels = await self._levels_cached()
        target = next((lv.watts for lv in levels if lv.name == level), None)
        return Telemetry(
            time=time.monotonic(), power_w=num(power, "Watts", what),
            hashrate_ths=num(summ, "GHS 5s", what) / 1000.0, target_w=target,
            level=level if isinstance(level, str) else None,
            sleeping=conf.get("CurtailMode") == "sleep", temps_c=tuple(temps),
            uptime_s=num(summ, "Elapsed", what), firmware="luxos",
        )

    async def _logon(self) -> str:
        reply = await self._req("logon")
        sid = section(reply, "SESSION", repr(self)).get("SessionID")
        if not isinstance(sid, str) or not sid:
            raise ProtocolError(f"{self!r}: logon returned no SessionID")
        return sid

    async def _session(self) -> str:
        try:
            return await self._logon()
        except DriverError as exc:
            if "session" not in str(exc).lower():
                raise
        # A session is held (ours from a crashed run, or a person's): LuxOS sessions are a
        # coordination lock, not security; take it over only after it has expired.
        cur = section(await self._req("session"), "SESSION", repr(self)).get("SessionID")
        if isinstance(cur, str) and cur:
            raise DriverError(f"{self!r}: another LuxOS session is active")
        return await self._logon()

    async def apply(self, desired: Desired) -> Telemetry:
        async with self._lock:
            before = await self.read()
            want_level: Level | None = None
            if not desired.sleep:
                levels = await self._levels_cached()
                if desired.level is not None:
                    match = [lv for lv in levels if lv.name == desired.level]
                    if not match:
                        raise UnsupportedError(f"{self!r}: no profile {desired.level!r}")
                    want_level = match[0]
                elif desired.watts is not None:
                    want_level = pick_level(levels, desired.watts)
            need_sleep = desired.sleep != before.sleeping
            need_level = want_level is not None and want_level.name != before.level
            if need_sleep or need_level:
                sid = await self._session()
                try:
                    if desired.sleep and need_sleep:
                        await self._req("curtail", f"{sid},sleep")
                    if not desired.sleep and need_sleep:
                        await self._req("curtail", f"{sid},wakeup")
                    if need_level and want_level is not None:
                        atm = section(await self._req("atm"), "ATM", repr(self))
                        if atm.get("Enabled"):
                            await self._req("atmset", f"{sid},enabled=false")
                        await self._req("profileset", f"{sid},{want_level.name}")
                finally:
                    try:
                        await self._req("logoff", sid)
                    except DriverError:
                        pass  # the session expires on its own in 60 s
            after = await self.read()
            if after.sleeping != desired.sleep or (
                want_level is not None and after.level != want_level.name
            ):
                raise VerifyError(f"{self!r}: read-back shows sleeping={after.sleeping} "
                                  f"profile={after.level}")
            return after

    async def reboot(self) -> None:
        async with self._lock:
            sid = await self._session()
            try:
                await self._req("reboot", sid)
            finally:
                try:
                    await self._req("logoff", sid)
                except DriverError:
                    pass

    async def restart_mining(self) -> None:
        await self.apply(Desired(sleep=True))
        await self.apply(Desired(sleep=False))

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        raise UnsupportedError(f"{self!r}: pool changes are not implemented for LuxOS")

    async def close(self) -> None:
        return None
