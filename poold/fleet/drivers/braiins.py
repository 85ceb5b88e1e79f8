"""Braiins OS driver over the public REST API (BOS ≥25.07; fleet.md §3.3). gRPC is not used.

``POST /api/v1/auth/login`` gives a token sent raw in ``Authorization`` (sliding 3,600 s
expiry; on a 401 the driver logs in again once). Power: ``PUT /api/v1/performance/power-target
{"watt": W}`` changes the target on the fly (no restart); sleep is ``PUT /api/v1/actions/pause``
/ ``resume``. Limits come from ``GET /api/v1/configuration/constraints``. Each change is read
back (``GET performance/power-target``, ``miner/details`` status).
"""


from __future__ import annotations

import time
from typing import Any

import aiohttp

from poold.fleet.drivers.base import (
    AuthError,
    Capabilities,
    Desired,
    DriverError,
    ProtocolError,
    Secret,
    Telemetry,
    VerifyError,
    target_differs,
    target_watts,
    verify_watts_and_sleep,
    with_timeout,
)
from poold.fleet.policy import Actuator


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


class BraiinsDriver:
    kind = "braiins"

    def __init__(self, host: str, port: int = 80, *, username: str = "root",
                 password: Secret | None = None, timeout_s: float = 10.0,
                 settle_s: float = 20.0, sleep_w: float = 30.0) -> None:
        self.host, self.port = host, port
        self.username = username
        self._password = password or Secret("")
        self.timeout_s = timeout_s
        self.settle_s = settle_s
        self.sleep_w = sleep_w
        self._token: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._limits: tuple[float, float] | None = None

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
                    raise AuthError(f"{self!r}: login refused")
                if resp.status != 200:
                    raise DriverError(f"{self!r}: login HTTP {resp.status}")
                return await resp.json(content_type=None)

        body = await self._call("login", go)
        token = _get(body, "token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(f"{self!r}: login reply has no token")
        self._token = token

    async def _call(self, what: str, fn: Any) -> Any:
        try:
            return await with_timeout(self.timeout_s, f"{self!r} {what}", fn)
        except aiohttp.ContentTypeError as exc:
            raise ProtocolError(f"{self!r} {what}: not JSON") from exc
        except aiohttp.ClientPayloadError as exc:
            raise ProtocolError(f"{self!r} {what}: truncated body") from exc
        except ValueError as exc:
            raise ProtocolError(f"{self!r} {what}: malformed JSON") from exc
        except aiohttp.ClientError as exc:
            raise DriverError(f"{self!r} {what}: {exc.__class__.__name__}") from exc

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        if self._token is None:
            await self._login()
        for attempt in (0, 1):
            token = self._token or ""

            async def go(token: str = token) -> tuple[int, Any]:
                async with self._http().request(method, f"{self._base}/{path}", json=body,
                                                headers={"Authorization": token}) as resp:
                    if resp.status == 401:
                        return 401, None
                    if resp.status >= 400:
                        text = (await resp.text())[:200]
                        raise DriverError(f"{self!r} {method} {path}: HTTP {resp.status} "
                                          f"{text}")
                    return resp.status, await resp.json(content_type=None)

            status, data = await self._call(f"{method} {path}", go)
            if status == 401 and attempt == 0:
                await self._login()  # token expired: one fresh login
                continue
            if status == 401:
                raise AuthError(f"{self!r}: token refused after fresh login")
            return data
        raise AssertionError("unreachable")

    async def capabilities(self) -> Capabilities:
        if self._limits is None:
            c = await self._request("GET", "configuration/constraints")
            lo = _get(c, "tuner_constraints", "power_target", "min", "watt")
            hi = _get(c, "tuner_constraints", "power_target", "max", "watt")
            if not isinstance(lo, int | float) or not isinstance(hi, int | float) or lo > hi:
                raise ProtocolError(f"{self!r}: bad power-target constraints")
            self._limits = (float(lo), float(hi))
        return Capabilities(actuator=Actuator.WATTS, min_w=self._limits[0],
                            max_w=self._limits[1], step_w=1.0, sleep_w=self.sleep_w,
                            settle_s=self.settle_s)

    async def read(self) -> Telemetry:
        stats = await self._request("GET", "miner/stats")
        details = await self._request("GET", "miner/details")
        target = await self._request("GET", "performance/power-target")
        cooling = await self._request("GET", "cooling/state")
        watt = _get(stats, "power_stats", "approximated_consumption", "watt")
        ghs = _get(stats, "miner_stats", "real_hashrate", "last_5s", "gigahash_per_second")
        status = _get(details, "status")
        if not isinstance(watt, int | float) or not isinstance(status, str):
            raise ProtocolError(f"{self!r}: stats/details missing power or status")
        temps = tuple(float(b["board_temp"]["degree_c"]) for b in _get(cooling, "hashboards")
                      or [] if isinstance(_get(b, "board_temp", "degree_c"), int | float))
        fans = tuple(int(f["rpm"]) for f in _get(cooling, "fans") or []
                     if isinstance(_get(f, "rpm"), int))
        tw = _get(target, "watt")
        return Telemetry(
            time=time.monotonic(), power_w=float(watt),
            hashrate_ths=float(ghs) / 1000.0 if isinstance(ghs, int | float) else None,
            target_w=float(tw) if isinstance(tw, int | float) else None,
            sleeping=status == "MINER_STATUS_PAUSED", temps_c=temps, fans_rpm=fans,
            uptime_s=_get(details, "bosminer_uptime_s"),
            firmware=str(_get(details, "bos_version", "current") or ""),
            model=str(_get(details, "miner_identity", "model") or ""),
            pool_connected=_get(stats, "pool_stats", "connected"),
        )

    async def apply(self, desired: Desired) -> Telemetry:
        caps = await self.capabilities()
        before = await self.read()
        want_w = target_watts(desired, caps.min_w, caps.max_w)
        if want_w is not None and target_differs(before.target_w, want_w):
            echo = await self._request("PUT", "performance/power-target", {"watt": want_w})
            if _get(echo, "watt") != want_w:
                raise VerifyError(f"{self!r}: power-target echo {_get(echo, 'watt')} "
                                  f"!= {want_w}")
        if desired.sleep != before.sleeping:
            await self._request("PUT", "actions/pause" if desired.sleep else "actions/resume")
        return verify_watts_and_sleep(self, await self.read(), desired, want_w)

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
