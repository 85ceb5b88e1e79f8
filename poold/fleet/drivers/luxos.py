"""LuxOS (LUXminer) driver: cgminer-style JSON on TCP 4028 with a session.

Commands as documented at https://docs.luxor.tech/firmware/api/ (LUXminer and CGminer command
pages). A reading needs only the documented minimum:

- ``power`` → ``POWER[0].Watts``; ``summary`` → ``SUMMARY[0]["GHS 5s"]`` (cgminer's field);
- ``profiles`` (once) → the levels, each ``{"Profile Name", "Watts", "Hashrate"}``.

The current profile and curtail state come from ``config`` (``Profile``, ``CurtailMode``) when the
firmware has it; without it (code 14 "Invalid command") the driver uses what it last set and
infers sleep from the documented physics of ``curtail sleep`` (hashboards and PSU off: no
hashrate, tens of watts). Temperatures (``stats``) are optional too; an optional command's
failure is noted in ``Telemetry.errors`` and never fails the reading.

Writes need a session id from ``logon`` as the first parameter; LuxOS allows one session and
expires it after 60 s idle, so the driver logs on per write batch and logs off after. Power is
set by profile (the highest whose Watts fit), only among the profiles at or below the miner's
``max_w``. LuxOS refuses a profile change while ATM (advanced thermal management) is enabled,
so ATM is switched off first — logged at WARNING — and switched back on (capped at the highest
allowed profile) when the miner is asked for its top profile again, and at ``close()`` (capped
at the profile the miner was left at, so ATM cannot raise it above the shutdown's safe cap).
Sleep is ``curtail <sid>,sleep`` / ``wakeup``. Every change is read back.
"""


from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    FirmwareProtocolError,
    Level,
    OptionalCalls,
    Secret,
    Telemetry,
    UnsupportedError,
    VerifyError,
    levels_within,
    pick_level,
)
from poold.fleet.drivers.cgminer import (
    CgminerStatusError,
    cgminer_request,
    number,
    section,
    summary_ths,
)
from poold.fleet.policy import Actuator

log = logging.getLogger(__name__)


class _AtmOffLog:
    """Switching ATM off is a WARNING once a minute for the whole fleet (with how many miners
    since the last one), INFO per miner otherwise: a start that brings 1,000 LuxOS miners to
    a profile within nameplate is one WARNING, not 1,000."""

    every_s = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.at = -float("inf")
        self.since = 0

    def level(self) -> tuple[int, int]:
        """(log level, miners switched off since the last WARNING, this one included)."""
        self.since += 1
        now = self.clock()
        if now - self.at < self.every_s:
            return logging.INFO, self.since
        self.at, n, self.since = now, self.since, 0
        return logging.WARNING, n


ATM_OFF_LOG = _AtmOffLog()

# Settle maxima. "LuxOS drops a miner to roughly 25W in under five seconds and restores full
# power in under ten" (Luxor, https://hashrateindex.com/blog/firmware-features-series-bitcoin-
# mining-curtailment-how-luxos-powers-down-fast/); a profile change ramps the boards the same
# way as a wakeup (https://docs.luxor.tech/firmware/api/luxminer/curtail), and a default
# wakeup ramps "similar to what happens on a reboot" (same page), so it is budgeted 30 s.
SETTLE_S = 10.0
SLEEP_SETTLE_S = 5.0
WAKE_SETTLE_S = 30.0
# A sleeping LuxOS miner draws "roughly 25W" (same Luxor page): at most this many sleep_w.
_SLEEP_POWER_FACTOR = 3.0
_EMPTY_STATS_LIMIT = 3


def _flag(v: Any) -> bool | None:
    """A boolean given as true/false, "true"/"false" or 1/0; None when it is neither."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return bool(v) if v in (0, 1) else None
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0"):
        return v.strip().lower() in ("true", "1")
    return None


def curtail_mode_sleeping(v: Any) -> bool | None:
    """``CONFIG[0].CurtailMode``: "sleep" → True, "None"/"" (or 0) → False, else unknown."""
    if isinstance(v, str):
        mode = v.strip().lower()
        if mode == "sleep":
            return True
        if mode in ("none", "", "wakeup", "active", "normal"):
            return False
        return None
    if isinstance(v, int) and not isinstance(v, bool) and v == 0:
        return False
    return None


class LuxosDriver:
    kind = "luxos"

    def __init__(self, host: str, port: int = 4028, *, timeout_s: float = 10.0,
                 max_w: float | None = None, settle_s: float | None = None,
                 sleep_settle_s: float | None = None, wake_settle_s: float | None = None,
                 sleep_w: float = 30.0) -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.max_w = max_w  # the operator's ceiling (inventory max_w, default nameplate)
        self.settle_s = SETTLE_S if settle_s is None else settle_s
        self.sleep_settle_s = SLEEP_SETTLE_S if sleep_settle_s is None else sleep_settle_s
        self.wake_settle_s = WAKE_SETTLE_S if wake_settle_s is None else wake_settle_s
        self.sleep_w = sleep_w
        self._all_levels: tuple[Level, ...] = ()
        self._levels: tuple[Level, ...] = ()  # those at or below max_w
        self._lock = asyncio.Lock()  # one session per miner: serialise our writes
        self._optional_calls = OptionalCalls()
        self._level_set: str | None = None  # the profile this driver last set
        self._sleep_set: bool | None = None  # the curtail state this driver last set
        self._sleep_set_at = -1e18  # when (time.monotonic())
        self._stats_empty = 0  # consecutive stats replies without temperatures
        self._atm_owed = False  # we switched ATM off and owe switching it back on

    def __repr__(self) -> str:
        return f"LuxosDriver({self.host}:{self.port})"

    async def _req(self, command: str, parameter: str | None = None) -> dict[str, Any]:
        return await cgminer_request(self.host, self.port, command, parameter,
                                     timeout_s=self.timeout_s)

    async def _optional(self, command: str, name: str, errors: list[str]
                        ) -> dict[str, Any] | None:
        """First entry of an optional command's section; None (noted) when it fails."""
        reply = await self._optional_reply(command, errors)
        if reply is None:
            return None
        try:
            return section(reply, name, f"{self!r} {command}")
        except FirmwareProtocolError as exc:
            errors.append(f"{command}: {exc}")
            return None

    async def _optional_reply(self, command: str, errors: list[str]) -> dict[str, Any] | None:
        calls = self._optional_calls
        if not calls.wanted(command):
            return None
        try:
            reply = await self._req(command)
        except CgminerStatusError as exc:
            if exc.absent:
                calls.absent(command)
                log.info("%r: LuxOS has no %r command (%s); reading without it", self,
                         command, exc.msg)
            else:
                calls.failed(command)
            errors.append(f"{command}: code {exc.code} {exc.msg}")
        except DriverError as exc:
            calls.failed(command)
            errors.append(f"{command}: {exc}")
        else:
            calls.ok(command)
            return reply
        return None

    async def _levels_cached(self) -> tuple[Level, ...]:
        if not self._levels:
            what = f"{self!r} profiles"
            profs = (await self._req("profiles")).get("PROFILES")
            if not isinstance(profs, list) or not profs:
                raise FirmwareProtocolError(f"{what}: no PROFILES section")
            levels = []
            for p in profs:
                watts = number(p.get("Watts")) if isinstance(p, dict) else None
                if not isinstance(p, dict) or not isinstance(p.get("Profile Name"), str) \
                        or watts is None:
                    raise FirmwareProtocolError(f"{what}: entry without a Profile Name and Watts: "
                                        f"{str(p)[:120]}")
                levels.append(Level(p["Profile Name"], watts, number(p.get("Hashrate")) or 0.0))
            self._all_levels = tuple(sorted(levels, key=lambda lv: lv.watts))
            self._levels = (levels_within(self._all_levels, self.max_w)
                            if self.max_w is not None else self._all_levels)
            if len(self._levels) < len(self._all_levels):
                log.info("%r: %d of %d profiles are above max_w %g W and never offered "
                         "(highest allowed: %s, %g W)", self,
                         len(self._all_levels) - len(self._levels), len(self._all_levels),
                         self.max_w, self._levels[-1].name, self._levels[-1].watts)
        return self._levels

    async def capabilities(self) -> Capabilities:
        levels = await self._levels_cached()
        return Capabilities(actuator=Actuator.PRESETS, min_w=levels[0].watts,
                            max_w=levels[-1].watts, levels=levels, sleep_w=self.sleep_w,
                            settle_s=self.settle_s, sleep_settle_s=self.sleep_settle_s,
                            wake_settle_s=self.wake_settle_s)

    async def read(self) -> Telemetry:
        what = repr(self)
        errors: list[str] = []
        power = section(await self._req("power"), "POWER", f"{what} power")
        summ = section(await self._req("summary"), "SUMMARY", f"{what} summary")
        watts = number(power.get("Watts"))
        if watts is None:
            raise FirmwareProtocolError(f"{what} power: POWER[0].Watts missing or not a number "
                                f"({power.get('Watts')!r})")
        ths = summary_ths(summ)
        conf = await self._optional("config", "CONFIG", errors)
        stats = await self._optional_reply("stats", errors)
        entries = (stats or {}).get("STATS")
        temps = tuple(float(v) for e in (entries if isinstance(entries, list) else [])
                      if isinstance(e, dict) for k, v in e.items()
                      if k.startswith("temp") and isinstance(v, int | float)
                      and not isinstance(v, bool))
        if stats is not None:
            # A stats reply without temperatures, again and again, is a connection per poll
            # for nothing: stop asking (at 500,000 miners that is a third of the polling).
            self._stats_empty = 0 if temps else self._stats_empty + 1
            if self._stats_empty >= _EMPTY_STATS_LIMIT:
                self._optional_calls.absent("stats")
                log.info("%r: LuxOS stats carries no temperatures; reading without it", self)
        level = conf.get("Profile") if conf is not None else None
        if not isinstance(level, str) or not level:
            level = self._level_set
        sleeping = curtail_mode_sleeping(conf.get("CurtailMode")) if conf is not None else None
        if sleeping is None:
            sleeping = self._infer_sleep(watts, ths)
        await self._levels_cached()
        target = next((lv.watts for lv in self._all_levels if lv.name == level), None)
        return Telemetry(
            time=time.monotonic(), power_w=watts,
            hashrate_ths=ths, target_w=target,
            level=level, sleeping=sleeping, temps_c=temps,
            uptime_s=number(summ.get("Elapsed")), errors=tuple(errors), firmware="luxos",
        )

    def _infer_sleep(self, watts: float, ths: float | None) -> bool:
        """Curtail state without ``config``: what this driver set, while that is still
        settling; then hashing means awake, no hashrate at sleep-level watts means asleep, and
        otherwise (ramping, booting) what this driver last set."""
        if self._sleep_set is not None:
            window = self.sleep_settle_s if self._sleep_set else self.wake_settle_s
            if time.monotonic() - self._sleep_set_at < window:
                return self._sleep_set
        if ths is not None and ths > 0:
            return False
        if watts <= self.sleep_w * _SLEEP_POWER_FACTOR:
            return True
        return bool(self._sleep_set)

    async def _logon(self) -> str:
        reply = await self._req("logon")
        sid = section(reply, "SESSION", f"{self!r} logon").get("SessionID")
        if not isinstance(sid, str) or not sid:
            raise FirmwareProtocolError(f"{self!r} logon: reply has no SessionID")
        return sid

    async def _session(self) -> str:
        try:
            return await self._logon()
        except DriverError as exc:
            if "session" not in str(exc).lower():
                raise
        # A session is held (ours from a crashed run, or a person's): LuxOS sessions are a
        # coordination lock, not security; take it over only after it has expired.
        cur = section(await self._req("session"), "SESSION", f"{self!r} session").get(
            "SessionID")
        if isinstance(cur, str) and cur:
            raise DriverError(f"{self!r} logon: another LuxOS session ({cur[:2]}…) is active")
        return await self._logon()

    async def _logoff(self, sid: str) -> None:
        try:
            await self._req("logoff", sid)
        except DriverError as exc:
            log.debug("%r logoff: %s (the session expires on its own in 60 s)", self, exc)

    async def _atm_off(self, sid: str, profile: str) -> None:
        """Switch ATM off (LuxOS refuses profileset while it is on), loudly."""
        errors: list[str] = []
        atm = await self._optional("atm", "ATM", errors)
        if atm is None or not _flag(atm.get("Enabled")):
            return
        await self._req("atmset", f"{sid},enabled=false")
        self._atm_owed = True
        level, n = ATM_OFF_LOG.level()
        log.log(level, "%r: switched LuxOS ATM off to set profile %s (LuxOS refuses profile "
                "changes under ATM); it is switched back on when the miner is asked for its "
                "top profile again and at shutdown%s", self, profile,
                f" ({n} LuxOS miners switched so in the last minute)"
                if level == logging.WARNING and n > 1 else "")

    async def _atm_restore(self, sid: str, why: str, ceiling: Level | None = None) -> None:
        """ATM back on. ATM may raise the profile on its own, so it is capped: at `ceiling`
        (at shutdown, the profile the miner was left at, so the site stays at its safe cap),
        else at the highest profile within max_w."""
        top = ceiling or (self._levels[-1] if self._levels else None)
        params = "enabled=true"
        if top is not None and self._all_levels and top != self._all_levels[-1]:
            params += f",max_profile={top.name}"
        await self._req("atmset", f"{sid},{params}")
        self._atm_owed = False
        log.info("%r: switched LuxOS ATM back on (%s)%s", self, why,
                 f", capped at profile {top.name}" if top is not None and "max_profile" in params
                 else "")

    async def apply(self, desired: Desired) -> Telemetry:
        async with self._lock:
            before = await self.read()
            levels = await self._levels_cached()
            want_level: Level | None = None
            if not desired.sleep:
                if desired.level is not None:
                    match = [lv for lv in levels if lv.name == desired.level]
                    if not match:
                        above = [lv for lv in self._all_levels if lv.name == desired.level]
                        raise UnsupportedError(
                            f"{self!r} profileset: profile {desired.level!r} "
                            + (f"({above[0].watts:g} W) is above max_w {self.max_w:g} W"
                               if above and self.max_w is not None else "does not exist"))
                    want_level = match[0]
                elif desired.watts is not None:
                    want_level = pick_level(levels, desired.watts)
            need_sleep = desired.sleep != before.sleeping
            need_level = want_level is not None and want_level.name != before.level
            restore_atm = (self._atm_owed and want_level is not None
                           and want_level == levels[-1])
            if need_sleep or need_level or restore_atm:
                sid = await self._session()
                try:
                    if need_sleep:
                        action = "sleep" if desired.sleep else "wakeup"
                        await self._req("curtail", f"{sid},{action}")
                        self._sleep_set = desired.sleep
                        self._sleep_set_at = time.monotonic()
                    if need_level and want_level is not None:
                        await self._atm_off(sid, want_level.name)
                        reply = await self._req("profileset", f"{sid},{want_level.name}")
                        echoed = [p.get("Profile") for p in reply.get("PROFILE") or []
                                  if isinstance(p, dict)]
                        if echoed and want_level.name not in echoed:
                            raise VerifyError(f"{self!r} profileset: reply names profile "
                                              f"{echoed[0]!r}, not {want_level.name!r}")
                        self._level_set = want_level.name
                    if restore_atm:
                        await self._atm_restore(sid, "the miner is back at its top profile")
                finally:
                    await self._logoff(sid)
            after = await self.read()
            if after.sleeping != desired.sleep or (
                want_level is not None and after.level != want_level.name
            ):
                raise VerifyError(f"{self!r} read-back after curtail/profileset: "
                                  f"sleeping={after.sleeping} profile={after.level}, asked "
                                  f"sleep={desired.sleep} profile="
                                  f"{want_level.name if want_level else None}")
            return after

    async def sleep_now(self) -> None:
        """`curtail sleep` alone (the grid's fast step): no reads around it, the next read
        confirms (https://docs.luxor.tech/firmware/api/luxminer/curtail)."""
        async with self._lock:
            sid = await self._session()
            try:
                await self._req("curtail", f"{sid},sleep")
                self._sleep_set = True
                self._sleep_set_at = time.monotonic()
            finally:
                await self._logoff(sid)

    async def read_power(self) -> float:
        """``power`` alone: ``POWER[0].Watts``
        (https://docs.luxor.tech/firmware/api/luxminer/power)."""
        power = section(await self._req("power"), "POWER", f"{self!r} power")
        watts = number(power.get("Watts"))
        if watts is None:
            raise FirmwareProtocolError(f"{self!r} power: POWER[0].Watts missing or not a "
                                        f"number ({power.get('Watts')!r})")
        return watts

    async def reboot(self) -> None:
        async with self._lock:
            sid = await self._session()
            try:
                await self._req("reboot", sid)
            finally:
                await self._logoff(sid)

    async def restart_mining(self) -> None:
        await self.apply(Desired(sleep=True))
        await self.apply(Desired(sleep=False))

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        raise UnsupportedError(f"{self!r}: pool changes are not implemented for LuxOS")

    async def close(self) -> None:
        """Give back what was borrowed: ATM, if this driver switched it off."""
        if not self._atm_owed:
            return
        async with self._lock:
            try:
                sid = await self._session()
                try:
                    left_at = next((lv for lv in self._levels if lv.name == self._level_set),
                                   None)
                    await self._atm_restore(sid, "shutdown", left_at)
                finally:
                    await self._logoff(sid)
            except DriverError as exc:
                log.warning("%r: could not switch LuxOS ATM back on at shutdown: %s "
                            "(it stays off until set by hand)", self, exc)
