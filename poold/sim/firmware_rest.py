"""Emulated Braiins OS public REST API (≥25.07) for a `SimAsic`.

Endpoints (https://developer.braiins-os.com/latest/openapi.json, API 1.7):
``POST /api/v1/auth/login`` → ``{"token", "timeout_s"}`` (the token goes back raw in
``Authorization``); ``GET /api/v1/miner/details``, ``GET /api/v1/miner/stats``,
``GET /api/v1/configuration/constraints``, ``GET /api/v1/performance/tuner-state`` and
``GET /api/v1/performance/mode`` (the current power target), ``PUT
/api/v1/performance/power-target`` (``{"watt": W}``, applied on the fly), ``PUT
/api/v1/actions/pause|resume|restart`` (a bare boolean) and ``reboot`` (204), ``PUT
/api/v1/pools``.

Two shapes. ``minimal=True`` serves exactly the documented minimum: ``miner/details`` with its
required fields only and ``status`` as the documented int32 ``MinerStatus`` (2 normal, 3
paused), and no ``cooling/state`` nor ``GET performance/power-target`` (HTTP 404). The default
full shape adds those, with enumerations as names (``MINER_STATUS_NORMAL``), as the gRPC JSON
mapping and older firmware print them.
The asic's faults apply to every request: timeout (no answer), malformed (truncated body).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from poold.sim.asic import SimAsic

TOKEN_TIMEOUT_S = 3600
# MinerStatus (https://github.com/braiins/bos-plus-api/blob/master/proto/bos/v1/miner.proto)
MINER_STATUS_NORMAL = 2
MINER_STATUS_PAUSED = 3

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BraiinsRestServer:
    def __init__(self, asic: SimAsic, host: str = "127.0.0.1", port: int = 0, *,
                 minimal: bool = False) -> None:
        self.asic = asic
        self.minimal = minimal
        self.host = host
        self._port = port
        self._tokens: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        assert self._runner is not None, "not started"
        addrs = self._runner.addresses
        port: int = addrs[0][1]
        return port

    async def start(self) -> BraiinsRestServer:
        app = web.Application(middlewares=[self._faults])
        r = app.router
        r.add_post("/api/v1/auth/login", self._login)
        r.add_get("/api/v1/miner/details", self._auth(self._details))
        r.add_get("/api/v1/miner/stats", self._auth(self._stats))
        r.add_get("/api/v1/configuration/constraints", self._auth(self._constraints))
        r.add_get("/api/v1/performance/tuner-state", self._auth(self._tuner_state))
        r.add_get("/api/v1/performance/mode", self._auth(self._mode))
        if not self.minimal:
            r.add_get("/api/v1/cooling/state", self._auth(self._cooling))
            r.add_get("/api/v1/performance/power-target", self._auth(self._get_target))
        r.add_put("/api/v1/performance/power-target", self._auth(self._put_target))
        r.add_put("/api/v1/actions/{action}", self._auth(self._action))
        r.add_put("/api/v1/pools", self._auth(self._pools))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self._port)
        await self._site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        f = self.asic.faults
        if f.timeout:
            await asyncio.sleep(3600)
        if self.asic.rebooting:
            raise web.HTTPServiceUnavailable(text="rebooting")
        resp = await handler(request)
        if f.malformed and isinstance(resp, web.Response) and resp.body is not None:
            body = bytes(resp.body)  # type: ignore[arg-type]
            return web.Response(
                body=body[: max(1, len(body) // 2)], content_type="application/json"
            )
        return resp

    def _auth(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            token = request.headers.get("Authorization", "")
            now = self.asic.clock.now()
            exp = self._tokens.get(token)
            if exp is None or exp < now:
                return web.json_response({"message": "Unauthorized"}, status=401)
            self._tokens[token] = now + TOKEN_TIMEOUT_S  # sliding expiry
            return await handler(request)

        return wrapped

    async def _login(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"message": "invalid json"}, status=400)
        if (
            not isinstance(body, dict)
            or body.get("username") != self.asic.username
            or (body.get("password") != self.asic.password)
        ):
            return web.json_response({"message": "Invalid credentials"}, status=401)
        token = secrets.token_urlsafe(16)
        self._tokens[token] = self.asic.clock.now() + TOKEN_TIMEOUT_S
        return web.json_response({"token": token, "timeout_s": TOKEN_TIMEOUT_S})

    async def _details(self, request: web.Request) -> web.StreamResponse:
        a = self.asic
        paused = a.reported_sleep()
        uptime = int(a.uptime_s())
        body: dict[str, Any] = {
            "uid": a.miner_id,
            "platform": 6,
            "bos_mode": 4,
            "hostname": a.miner_id,
            "mac_address": "02:00:00:00:00:01",
            "system_uptime": uptime,
            "bosminer_uptime_s": 0 if a.rebooting else uptime,
            "system_uptime_s": uptime,
            "status": MINER_STATUS_PAUSED if paused else MINER_STATUS_NORMAL,
            "kernel_version": "5.10.0-sim",
            "control_board_soc_family": 1,
        }
        if not self.minimal:
            body |= {
                "status": "MINER_STATUS_PAUSED" if paused else "MINER_STATUS_NORMAL",
                "miner_identity": {"brand": "MINER_BRAND_ANTMINER", "name": a.spec.model,
                                   "miner_model": a.spec.model},
                "bos_version": {"current": "26.05-sim", "major": "26.05", "bos_plus": True},
                "detailed_status": {"status": (
                    {"stopped": {"reason": {"user_pause": {}}}} if paused
                    else {"running": {"reason": {"normal": {}}}})},
            }
        return web.json_response(body)

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        # GetMinerStatsResponse: Power.watt is an integer; the minimum carries no pool_stats.
        a = self.asic
        ths = a.hashrate_ths()
        p = a.reported_power_w()
        body: dict[str, Any] = {
            "miner_stats": {"real_hashrate": {"last_5s": {"gigahash_per_second": ths * 1000}}},
            "power_stats": {"approximated_consumption": {"watt": round(p)}},
        }
        if not self.minimal:
            body["power_stats"]["efficiency"] = {
                "joule_per_terahash": round(p / ths, 2) if ths > 0 else 0}
            body["pool_stats"] = {"accepted_shares": 0, "rejected_shares": 0, "stale_shares": 0,
                                  "last_difficulty": 0, "best_share": 0, "generated_work": 0,
                                  "best_share_str": "0"}
        return web.json_response(body)

    async def _cooling(self, request: web.Request) -> web.StreamResponse:
        t = self.asic.temp_c()
        return web.json_response(
            {
                "fans": [
                    {"position": i, "rpm": 3000 + int(20 * max(0.0, t - 40))} for i in range(4)
                ],
                "highest_temperature": {"temperature": {"degree_c": round(t + 8, 1)}},
                "hashboards": [
                    {"id": i, "board_temp": {"degree_c": round(t, 1)}} for i in range(3)
                ],
            }
        )

    async def _constraints(self, request: web.Request) -> web.StreamResponse:
        s = self.asic.spec
        return web.json_response(
            {
                "tuner_constraints": {
                    "power_target": {
                        "min": {"watt": s.min_w},
                        "max": {"watt": s.max_w},
                        "default": {"watt": s.p_nom_w},
                    }
                }
            }
        )

    async def _get_target(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"watt": round(self.asic.reported_target_w())})

    async def _tuner_state(self, request: web.Request) -> web.StreamResponse:
        watt = round(self.asic.reported_target_w())
        body: dict[str, Any] = {
            "overall_tuner_state": 2,  # TUNER_STATE_STABLE
            "mode_state": {"powertargetmodestate": {"current_target": {"watt": watt}}},
        }
        if not self.minimal:
            body["mode_state"]["powertargetmodestate"]["profile"] = {
                "target": {"watt": watt}, "estimated_power_consumption": {"watt": watt}}
        return web.json_response(body)

    async def _mode(self, request: web.Request) -> web.StreamResponse:
        watt = round(self.asic.reported_target_w())
        return web.json_response(
            {"tunermode": {"target": {"powertarget": {"power_target": {"watt": watt}}}}})

    async def _put_target(self, request: web.Request) -> web.StreamResponse:
        try:
            body: Any = await request.json()
            watt = body["watt"]
            if isinstance(watt, bool) or not isinstance(watt, int):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"message": 'expected {"watt": <int>}'}, status=400)
        s = self.asic.spec
        if not s.min_w <= watt <= s.max_w:
            return web.json_response(
                {"message": f"watt out of range [{s.min_w}, {s.max_w}]"}, status=400
            )
        self.asic.set_power_target(watt)
        return web.json_response({"watt": round(self.asic.reported_target_w())})

    async def _action(self, request: web.Request) -> web.StreamResponse:
        # Each answers a bare boolean ("was already so"); reboot answers 204 (the OpenAPI).
        a = self.asic
        action = request.match_info["action"]
        if action == "pause":
            already = a.reported_sleep()
            if not already:
                a.set_sleep(True)
            return web.json_response(already)
        if action == "resume":
            already = not a.reported_sleep()
            if not already:
                a.set_sleep(False)
            return web.json_response(already)
        if action == "restart":
            return web.json_response(True)
        if action == "reboot":
            a.reboot()
            return web.Response(status=204)
        raise web.HTTPNotFound()

    async def _pools(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            self.asic.pool = (str(body["url"]), str(body["user"]))
        except (ValueError, KeyError, TypeError):
            return web.json_response({"message": "expected url, user, password"}, status=400)
        return web.json_response(json.loads(json.dumps({"url": body["url"]})))
