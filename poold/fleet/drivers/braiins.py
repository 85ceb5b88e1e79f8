"""Braiins OS driver over the public REST API (BOS ≥25.07). gRPC is not used.

Contract: https://developer.braiins-os.com/latest/openapi.json (Public REST API 1.7); the
enumerations are those of https://github.com/braiins/bos-plus-api/tree/master/proto/bos/v1.

``POST /api/v1/auth/login`` gives a token sent raw in ``Authorization`` (sliding 3,600 s
expiry; on a 401 the driver logs in again once). A reading needs only the documented minimum:

- ``GET miner/stats``: ``power_stats.approximated_consumption.watt`` and
  ``miner_stats.real_hashrate.last_5s`` (both nullable in the contract: a null is "unknown",
  not an error);
- ``GET miner/details``: ``status``, a required int32 ``MinerStatus`` (2 NORMAL, 3 PAUSED),
  accepted as a number or as its name, with ``detailed_status`` (API 1.14) when present;
- ``GET performance/tuner-state``: ``mode_state.powertargetmodestate.current_target.watt``
  (``GET performance/mode`` when the firmware lacks tuner-state).

Temperatures and fans (``GET cooling/state``: ``fans[].rpm``, ``highest_temperature``) are
optional: used when served, and a 404 or any failure there never fails the reading (it is
noted in ``Telemetry.errors``; an endpoint the firmware does not have is not asked again).

Power: ``PUT performance/power-target {"watt": W}`` changes the target on the fly; sleep is
``PUT actions/pause`` / ``resume``; limits come from ``GET configuration/constraints`` and are
capped at the miner's configured ``max_w``. Each change is read back.
"""


from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import aiohttp

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    FirmwareAuthError,
    FirmwareProtocolError,
    OptionalCalls,
    Secret,
    Telemetry,
    VerifyError,
    target_differs,
    target_watts,
    verify_watts_and_sleep,
    with_timeout,
)
from poold.fleet.policy import Actuator

log = logging.getLogger(__name__)

# MinerStatus, https://github.com/braiins/bos-plus-api/blob/master/proto/bos/v1/miner.proto
MINER_STATUS = {0: "UNSPECIFIED", 1: "NOT_STARTED", 2: "NORMAL", 3: "PAUSED", 4: "SUSPENDED",
                5: "RESTRICTED"}

# Settle maxima. Braiins documents no settle time for a new power target; the tuner moves
# the draw with a first-order lag of τ ≈ 10 s on S19-class miners, so 3τ = 30 s reaches 95 %
# (large up-ramps can take minutes while temperatures stabilise:
# https://github.com/Schnitzel/hass-miner/issues/586).
SETTLE_S = 30.0
# Pause/resume follow the "quick ramping" times (down_s / up_s, "used in curtailments";
# OpenAPI example down_s 2, up_s 5: https://developer.braiins-os.com/latest/openapi.json,
# PUT /api/v1/performance/quick-ramping); resume then restarts the hashboards, so hashing at
# the asked target is budgeted 30 s.
SLEEP_SETTLE_S = 5.0
WAKE_SETTLE_S = 30.0
# The power target changes only when it is set (poold's own PUT, read back by `apply`, or a
# person's): a poll re-reads it every TARGET_EVERY readings and otherwise reports the last one
# read. A third of a reading's requests saved (miner/stats and miner/details carry the power,
# hashrate and pause state the controller acts on).
TARGET_EVERY = 10
# Endpoints that are "not there" rather than failing: stop asking for them.
_ABSENT = (404, 405, 501)


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def miner_status(details: Any) -> str | None:
    """The MinerStatus name ("NORMAL", "PAUSED", ...) from ``miner/details``: ``status`` as the
    documented int32 or as a name (with or without the MINER_STATUS_ prefix), else derived from
    ``detailed_status`` (stopped by a user pause = PAUSED); None when neither is usable."""
    v = _get(details, "status")
    if isinstance(v, int) and not isinstance(v, bool):
        return MINER_STATUS.get(v)
    if isinstance(v, str) and v.strip():
        name = v.strip().upper().removeprefix("MINER_STATUS_")
        if name.isdigit():
            return MINER_STATUS.get(int(name))
        return name if name in MINER_STATUS.values() else None
    st = _get(details, "detailed_status", "status")
    if isinstance(st, dict):
        if isinstance(_get(st, "stopped", "reason", "user_pause"), dict):
            return "PAUSED"
        if "running" in st:
            return "NORMAL"
        if "stopped" in st or "starting" in st or "stopping" in st:
            return "NOT_STARTED"
    return None


class HttpStatusError(DriverError):
    """The firmware answered an HTTP error status (`status`)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BraiinsDriver:
    kind = "braiins"

    def __init__(self, host: str, port: int = 80, *, username: str = "root",
                 password: Secret | None = None, timeout_s: float = 10.0,
                 max_w: float | None = None, settle_s: float | None = None,
                 sleep_settle_s: float | None = None, wake_settle_s: float | None = None,
                 sleep_w: float = 30.0) -> None:
        self.host, self.port = host, port
        self.username = username
        self._password = password or Secret("")
        self.timeout_s = timeout_s
        self.max_w = max_w  # the operator's ceiling (inventory max_w, default nameplate)
        self.settle_s = SETTLE_S if settle_s is None else settle_s
        self.sleep_settle_s = SLEEP_SETTLE_S if sleep_settle_s is None else sleep_settle_s
        self.wake_settle_s = WAKE_SETTLE_S if wake_settle_s is None else wake_settle_s
        self.sleep_w = sleep_w
        self._token: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._limits: tuple[float, float] | None = None
        self._optional_calls = OptionalCalls()
        self._target: float | None = None
        self._target_age = TARGET_EVERY  # readings since the target was last read

    def __repr__(self) -> str:
        return f"BraiinsDriver({self.host}:{self.port})"

    @property
    def _base(self) -> str:
        return f"http://{self.host}:{self.port}/api/v1"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _login(self) -> None:
        async def go() -> Any:
            async with self._http().post(f"{self._base}/auth/login", json={
                "username": self.username, "password": self._password.value}) as resp:
                if resp.status == 401:
                    raise FirmwareAuthError(
                        f"{self!r} POST auth/login: HTTP 401, credentials refused")
                if resp.status != 200:
                    raise HttpStatusError(f"{self!r} POST auth/login: HTTP {resp.status}",
                                          resp.status)
                return await resp.json(content_type=None)

        body = await self._call("POST auth/login", go)
        token = _get(body, "token")
        if not isinstance(token, str) or not token:
            raise FirmwareProtocolError(f"{self!r} POST auth/login: reply has no token")
        self._token = token

    async def _call(self, what: str, fn: Any) -> Any:
        try:
            return await with_timeout(self.timeout_s, f"{self!r} {what}", fn)
        except aiohttp.ContentTypeError as exc:
            raise FirmwareProtocolError(f"{self!r} {what}: not JSON") from exc
        except aiohttp.ClientPayloadError as exc:
            raise FirmwareProtocolError(f"{self!r} {what}: truncated body") from exc
        except ValueError as exc:
            raise FirmwareProtocolError(f"{self!r} {what}: malformed JSON ({exc})") from exc
        except aiohttp.ClientError as exc:
            raise DriverError(f"{self!r} {what}: {exc.__class__.__name__}: {exc}") from exc

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        if self._token is None:
            await self._login()
        what = f"{method} {path}"
        for attempt in (0, 1):
            token = self._token or ""

            async def go(token: str = token) -> tuple[int, Any]:
                async with self._http().request(method, f"{self._base}/{path}", json=body,
                                                headers={"Authorization": token}) as resp:
                    if resp.status == 401:
                        return 401, None
                    if resp.status >= 400:
                        text = " ".join((await resp.text()).split())[:200]
                        raise HttpStatusError(
                            f"{self!r} {what}: HTTP {resp.status} {resp.reason or ''}"
                            + (f": {text}" if text else ""), resp.status)
                    if resp.status == 204:
                        return 204, None
                    return resp.status, await resp.json(content_type=None)

            status, data = await self._call(what, go)
            if status == 401 and attempt == 0:
                await self._login()  # token expired: one fresh login
                continue
            if status == 401:
                raise FirmwareAuthError(
                    f"{self!r} {what}: HTTP 401, token refused after a fresh login")
            return data
        raise AssertionError("unreachable")

    async def _optional(self, path: str, errors: list[str]) -> Any:
        """GET an endpoint the reading can do without: None (and a note) when it fails."""
        calls = self._optional_calls
        if not calls.wanted(path):
            return None
        try:
            data = await self._request("GET", path)
        except HttpStatusError as exc:
            if exc.status in _ABSENT:
                calls.absent(path)
                log.info("%r: GET %s answers HTTP %d; reading without it", self, path,
                         exc.status)
            else:
                calls.failed(path)
            errors.append(f"{path}: HTTP {exc.status}")
        except FirmwareAuthError:
            raise
        except DriverError as exc:
            calls.failed(path)
            errors.append(f"{path}: {exc}")
        else:
            calls.ok(path)
            return data
        return None

    async def capabilities(self) -> Capabilities:
        if self._limits is None:
            c = await self._request("GET", "configuration/constraints")
            lo = _number(_get(c, "tuner_constraints", "power_target", "min", "watt"))
            hi = _number(_get(c, "tuner_constraints", "power_target", "max", "watt"))
            if lo is None or hi is None or lo > hi:
                raise FirmwareProtocolError(f"{self!r} GET configuration/constraints: no usable "
                                    f"tuner_constraints.power_target min/max (got {lo}, {hi})")
            self._limits = (lo, hi)
        lo, hi = self._limits
        if self.max_w is not None:
            hi = max(lo, min(hi, self.max_w))  # never offer a target above the miner's max_w
        return Capabilities(actuator=Actuator.WATTS, min_w=lo, max_w=hi, step_w=1.0,
                            sleep_w=self.sleep_w, settle_s=self.settle_s,
                            sleep_settle_s=self.sleep_settle_s,
                            wake_settle_s=self.wake_settle_s)

    async def _target_w(self, errors: list[str]) -> float | None:
        state = await self._optional("performance/tuner-state", errors)
        if state is not None:
            return _number(_get(state, "mode_state", "powertargetmodestate", "current_target",
                                "watt"))
        mode = await self._optional("performance/mode", errors)
        return _number(_get(mode, "tunermode", "target", "powertarget", "power_target", "watt"))

    async def read(self) -> Telemetry:
        return await self._read(fresh_target=False)

    async def _read(self, *, fresh_target: bool) -> Telemetry:
        errors: list[str] = []
        stats = await self._request("GET", "miner/stats")
        details = await self._request("GET", "miner/details")
        status = miner_status(details)
        if status is None:
            raise FirmwareProtocolError(f"{self!r} GET miner/details: status "
                                f"{_get(details, 'status')!r} is not a MinerStatus")
        if not isinstance(stats, dict):
            raise FirmwareProtocolError(f"{self!r} GET miner/stats: reply is not an object")
        if fresh_target or self._target_age >= TARGET_EVERY - 1:
            target = self._target = await self._target_w(errors)
            self._target_age = 0
        else:
            target = self._target
            self._target_age += 1
        cooling = await self._optional("cooling/state", errors)
        watt = _number(_get(stats, "power_stats", "approximated_consumption", "watt"))
        real = _get(stats, "miner_stats", "real_hashrate") or {}
        ghs = next((g for g in (_number(_get(real, k, "gigahash_per_second")) for k in
                                ("last_5s", "last_15s", "last_30s", "last_1m"))
                    if g is not None), None)
        # Per-board temperatures when served, else the documented highest_temperature.
        temps = tuple(float(t) for t in (
            _number(_get(b, "board_temp", "degree_c")) for b in _get(cooling, "hashboards") or []
        ) if t is not None)
        highest = _number(_get(cooling, "highest_temperature", "temperature", "degree_c"))
        if not temps and highest is not None:
            temps = (highest,)
        fans = tuple(int(f["rpm"]) for f in _get(cooling, "fans") or []
                     if _number(_get(f, "rpm")) is not None)
        uptime = _number(_get(details, "bosminer_uptime_s"))
        model = _get(details, "miner_identity", "miner_model") or _get(
            details, "miner_identity", "name")
        pool = _get(stats, "pool_stats", "connected")
        return Telemetry(
            time=time.monotonic(), power_w=watt,
            hashrate_ths=ghs / 1000.0 if ghs is not None else None,
            target_w=target, sleeping=status == "PAUSED", temps_c=temps, fans_rpm=fans,
            uptime_s=uptime, errors=tuple(errors),
            firmware=str(_get(details, "bos_version", "current") or "braiins"),
            model=str(model or ""), pool_connected=pool if isinstance(pool, bool) else None,
        )

    async def apply(self, desired: Desired) -> Telemetry:
        caps = await self.capabilities()
        before = await self._read(fresh_target=True)
        want_w = target_watts(desired, caps.min_w, caps.max_w)
        echoed: float | None = None
        if want_w is not None and target_differs(before.target_w, want_w):
            echo = await self._request("PUT", "performance/power-target", {"watt": want_w})
            echoed = _number(_get(echo, "watt"))
            if echoed != want_w:
                raise VerifyError(f"{self!r} PUT performance/power-target: echo {echoed} W "
                                  f"!= asked {want_w} W")
        if desired.sleep != before.sleeping:
            await self._request("PUT", "actions/pause" if desired.sleep else "actions/resume")
        after = await self._read(fresh_target=True)
        if after.target_w is None and echoed is not None:
            # No documented target read-back on this firmware: the PUT's echo is the proof.
            after = dataclasses.replace(after, target_w=echoed)
            self._target = echoed
        return verify_watts_and_sleep(self, after, desired, want_w)

    async def sleep_now(self) -> None:
        """Pause alone (the grid's fast step): no reads around it, the next read confirms."""
        await self._request("PUT", "actions/pause")

    async def read_power(self) -> float:
        """``GET miner/stats`` alone: ``power_stats.approximated_consumption.watt``
        (https://developer.braiins-os.com/latest/openapi.json); a null is an error here."""
        stats = await self._request("GET", "miner/stats")
        watt = _number(_get(stats, "power_stats", "approximated_consumption", "watt"))
        if watt is None:
            raise FirmwareProtocolError(f"{self!r} GET miner/stats: no "
                                        "power_stats.approximated_consumption.watt")
        return watt

    async def reboot(self) -> None:
        await self._request("PUT", "actions/reboot")

    async def restart_mining(self) -> None:
        await self._request("PUT", "actions/restart")

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        await self._request("PUT", "pools", {"url": url, "user": user,
                                             "password": password.value})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
