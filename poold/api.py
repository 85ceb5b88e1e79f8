"""The admin HTTP API (aiohttp): /healthz, /readyz, /metrics and /api/v1 reads and writes.

Binds to 127.0.0.1 by default ([api] listen). Writes need a bearer token from `api.write_tokens`;
reads need one from `api.read_tokens` or `api.write_tokens` when read tokens are configured (open
otherwise, which config only allows on a loopback address). Tokens are compared in constant time
and never logged. Every 4xx answer is JSON `{"error": "...", "detail": ...}` naming what was wrong;
bad input (invalid or too deeply nested JSON, numbers that do not fit) is always a 4xx. A
connection must send its request headers within 10 s and may idle 60 s between requests.

The API reads and changes daemon state only through the `ApiBackend` Protocol, which the daemon
implements over the pool, the fleet controller and the ledger.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from poold import __version__
from poold.errors import PooldError
from poold.fleet.errors import FleetRequestError, UnknownRack
from poold.httpguard import BodyError, HeaderDeadline, parse_json_body

log = logging.getLogger("poold.api")

JSON = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 64 * 1024
MAX_DEPTH = 8  # JSON nesting allowed in a body (ours are flat objects)
HEADER_TIMEOUT_S = 10.0  # a new connection's request headers, complete
KEEPALIVE_TIMEOUT_S = 60.0  # an idle kept-alive connection
BODY_TIMEOUT_S = 10.0  # a request body, once its headers are in
ENERGY_DEFAULT_SPAN_S = 86400.0


class ApiError(PooldError):
    """A client error the backend reports; becomes a 4xx JSON answer."""

    def __init__(self, status: int, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


class ApiBackend(Protocol):
    """What the API needs from the daemon. Reads return JSON-ready values."""

    def readiness(self) -> Mapping[str, bool]: ...
    def pool(self) -> JSON: ...
    def workers(self) -> Sequence[JSON]: ...
    async def blocks(self, since: float | None) -> Sequence[JSON]: ...
    async def public_windows(self, since: float | None) -> Sequence[JSON]: ...
    async def energy(self, start: float, end: float) -> JSON: ...
    def racks(self) -> Sequence[JSON]: ...
    def miners(self, rack: str | None) -> Sequence[JSON]: ...
    def budgets(self) -> JSON: ...
    async def set_cap(self, scope: str, kw: float) -> JSON: ...
    async def curtail(self, rack: str) -> JSON: ...
    async def restore(self, rack: str) -> JSON: ...
    async def clear_miner(self, miner: str) -> JSON: ...
    async def grid_signal(self, cap_kw: float | None, ttl_s: float | None) -> JSON: ...
    async def reconnect_worker(self, worker: str) -> JSON: ...


def _error(status: int, message: str, detail: object = None) -> web.Response:
    return web.json_response({"error": message, "detail": detail}, status=status)


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip()


def _token_in(token: str, allowed: Sequence[str]) -> bool:
    # Compare against every token so timing does not reveal which (or how many) matched.
    ok = False
    for candidate in allowed:
        ok |= hmac.compare_digest(token.encode(), candidate.encode())
    return ok


async def _json_body(request: web.Request) -> JSON:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "body too large", {"max_bytes": MAX_BODY})
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "body not received in time", {"seconds": BODY_TIMEOUT_S}) from None
    if not raw:
        return {}
    try:
        body = parse_json_body(raw, MAX_DEPTH)
    except BodyError as exc:
        raise ApiError(400, exc.summary, exc.detail) from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def _number(body: JSON, key: str, *, minimum: float, maximum: float, required: bool = True,
            ) -> float | None:
    if key not in body or body[key] is None:
        if required:
            raise ApiError(400, f"missing field {key!r}")
        return None
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(400, f"field {key!r} must be a number")
    try:
        f = float(v)  # an integer of hundreds of digits does not fit: OverflowError
    except OverflowError:
        raise ApiError(422, f"field {key!r} out of range",
                       {"min": minimum, "max": maximum}) from None
    if not math.isfinite(f):
        raise ApiError(400, f"field {key!r} must be a number")
    if not minimum <= f <= maximum:
        raise ApiError(422, f"field {key!r} out of range", {"min": minimum, "max": maximum})
    return f


class AdminApi:
    """Builds the aiohttp application; `start`/`stop` run it on the configured address."""

    def __init__(
        self,
        backend: ApiBackend,
        registry: CollectorRegistry,
        *,
        read_tokens: Sequence[str] = (),
        write_tokens: Sequence[str] = (),
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.read_tokens = tuple(read_tokens)
        self.write_tokens = tuple(write_tokens)
        self.app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.port = 0
        r = self.app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/api/v1/openapi.json", self.openapi)
        for path, handler in (
            ("/api/v1/pool", self.get_pool),
            ("/api/v1/workers", self.get_workers),
            ("/api/v1/blocks", self.get_blocks),
            ("/api/v1/energy", self.get_energy),
            ("/api/v1/racks", self.get_racks),
            ("/api/v1/miners", self.get_miners),
            ("/api/v1/budgets", self.get_budgets),
        ):
            r.add_get(path, self._read(handler))
        # Public, read-only, no token: 404 unless [api] public_windows is on (docs/AUDIT.md).
        r.add_get("/api/v1/public/windows", self.get_public_windows)
        r.add_put("/api/v1/site/cap", self._write(self.put_site_cap))
        r.add_put("/api/v1/racks/{rack}/cap", self._write(self.put_rack_cap))
        r.add_post("/api/v1/racks/{rack}/curtail", self._write(self.post_curtail))
        r.add_post("/api/v1/racks/{rack}/restore", self._write(self.post_restore))
        r.add_post("/api/v1/grid/signal", self._write(self.post_grid_signal))
        r.add_post("/api/v1/miners/{miner}/clear", self._write(self.post_clear_miner))
        r.add_post("/api/v1/workers/{worker}/reconnect", self._write(self.post_reconnect))

    # -- lifecycle

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     keepalive_timeout=KEEPALIVE_TIMEOUT_S)
        await self._runner.setup()
        handler = self._runner.server
        assert handler is not None
        # aiohttp's protocol behind a header deadline (poold.httpguard) on our own listener.
        self._server = await asyncio.get_running_loop().create_server(
            lambda: HeaderDeadline(handler(), HEADER_TIMEOUT_S), host, port,
            reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("admin API listening on %s:%d", host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middleware and auth

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.message, exc.detail)
        except UnknownRack as exc:
            return _error(404, exc.message, exc.detail)
        except FleetRequestError as exc:
            return _error(422, exc.message, exc.detail)
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise

    def _authorized(self, request: web.Request, allowed: Sequence[str]) -> web.Response | None:
        token = _bearer(request)
        if token is None:
            return _error(401, "bearer token required")
        if not _token_in(token, allowed):
            return _error(403, "token not allowed here")
        return None

    def _read(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if self.read_tokens:
                denied = self._authorized(request, self.read_tokens + self.write_tokens)
                if denied is not None:
                    return denied
            return await handler(request)

        return wrapped

    def _write(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            if not self.write_tokens:
                return _error(403, "writes are disabled: set api.write_tokens")
            denied = self._authorized(request, self.write_tokens)
            if denied is not None:
                return denied
            result = await handler(request)
            log.info("api write %s %s", request.method, request.path)
            return result

        return wrapped

    # -- probes

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "version": __version__})

    async def readyz(self, request: web.Request) -> web.Response:
        checks = dict(self.backend.readiness())
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        reasons = getattr(self.backend, "readiness_reasons", None)
        if not ok and reasons is not None:
            body["reasons"] = reasons()  # why a failed check fails, where the backend knows
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    # -- reads

    async def get_pool(self, request: web.Request) -> web.Response:
        return web.json_response(self.backend.pool())

    async def get_workers(self, request: web.Request) -> web.Response:
        return web.json_response({"workers": list(self.backend.workers())})

    async def get_blocks(self, request: web.Request) -> web.Response:
        since = _unix_time(request, "since")
        return web.json_response({"blocks": list(await self.backend.blocks(since))})

    async def get_public_windows(self, request: web.Request) -> web.Response:
        since = _unix_time(request, "since")
        return web.json_response({"blocks": list(await self.backend.public_windows(since))})

    async def get_energy(self, request: web.Request) -> web.Response:
        until = _unix_time(request, "until")
        end = time.time() if until is None else until
        since = _unix_time(request, "since")
        start = end - ENERGY_DEFAULT_SPAN_S if since is None else since
        if not start < end:
            raise ApiError(400, "since must be before until", {"since": start, "until": end})
        return web.json_response(await self.backend.energy(start, end))

    async def get_racks(self, request: web.Request) -> web.Response:
        return web.json_response({"racks": list(self.backend.racks())})

    async def get_miners(self, request: web.Request) -> web.Response:
        rack = request.query.get("rack")
        return web.json_response({"miners": list(self.backend.miners(rack))})

    async def get_budgets(self, request: web.Request) -> web.Response:
        return web.json_response(self.backend.budgets())

    # -- writes

    async def put_site_cap(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        kw = _number(body, "kw", minimum=0.0, maximum=1e7)
        assert kw is not None
        return web.json_response(await self.backend.set_cap("site", kw))

    async def put_rack_cap(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        kw = _number(body, "kw", minimum=0.0, maximum=1e5)
        assert kw is not None
        return web.json_response(await self.backend.set_cap(request.match_info["rack"], kw))

    async def post_curtail(self, request: web.Request) -> web.Response:
        await _json_body(request)
        return web.json_response(await self.backend.curtail(request.match_info["rack"]))

    async def post_restore(self, request: web.Request) -> web.Response:
        await _json_body(request)
        return web.json_response(await self.backend.restore(request.match_info["rack"]))

    async def post_clear_miner(self, request: web.Request) -> web.Response:
        await _json_body(request)
        return web.json_response(await self.backend.clear_miner(request.match_info["miner"]))

    async def post_grid_signal(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        cap = _number(body, "cap_kw", minimum=0.0, maximum=1e7, required=False)
        ttl = _number(body, "ttl_s", minimum=1.0, maximum=86400.0, required=False)
        return web.json_response(await self.backend.grid_signal(cap, ttl))

    async def post_reconnect(self, request: web.Request) -> web.Response:
        await _json_body(request)
        return web.json_response(
            await self.backend.reconnect_worker(request.match_info["worker"]))


def _op(summary: str, *, write: bool = False, body: JSON | None = None,
        params: Sequence[JSON] = ()) -> JSON:
    op: JSON = {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {"application/json": {}}},
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "403": {"$ref": "#/components/responses/Error"},
    }}
    if write:
        op["security"] = [{"bearer": ["write"]}]
        op["responses"]["422"] = {"$ref": "#/components/responses/Error"}
        op["responses"]["404"] = {"$ref": "#/components/responses/Error"}
    else:
        op["security"] = [{"bearer": ["read"]}, {}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = list(params)
    return op


def _unix_time(request: web.Request, name: str) -> float | None:
    text = request.query.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, f"{name} must be a unix time in seconds", text)
    return value


def _path_param(name: str) -> JSON:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def openapi_document() -> JSON:
    """The OpenAPI 3.0 description of /api/v1, served at /api/v1/openapi.json."""
    kw = {"type": "object", "required": ["kw"], "properties": {
        "kw": {"type": "number", "minimum": 0}}}
    grid = {"type": "object", "properties": {
        "cap_kw": {"type": "number", "minimum": 0, "nullable": True},
        "ttl_s": {"type": "number", "minimum": 1, "maximum": 86400, "nullable": True}}}
    since = {"name": "since", "in": "query", "required": False, "schema": {"type": "number"}}
    until = {"name": "until", "in": "query", "required": False, "schema": {"type": "number"}}
    rack_q = {"name": "rack", "in": "query", "required": False, "schema": {"type": "string"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "poold admin API", "version": __version__},
        "paths": {
            "/api/v1/pool": {"get": _op("Pool summary")},
            "/api/v1/workers": {"get": _op("Connected workers")},
            "/api/v1/blocks": {"get": _op("Found blocks with audit state", params=[since])},
            "/api/v1/public/windows": {"get": _op(
                "Each block's PPLNS window (share ids, worker names, difficulties) and credits; "
                "no token; 404 unless api.public_windows is on", params=[since])},
            "/api/v1/energy": {"get": _op(
                "Energy accounting over [since, until) (default: the last 24 h): kWh, J/TH and "
                "cost per worker and rack, kWh per block", params=[since, until])},
            "/api/v1/racks": {"get": _op("Racks: power, cap, hashrate")},
            "/api/v1/miners": {"get": _op("Miners with telemetry", params=[rack_q])},
            "/api/v1/budgets": {"get": _op("Power budgets in force and their sources")},
            "/api/v1/site/cap": {"put": _op("Set the site cap", write=True, body=kw)},
            "/api/v1/racks/{rack}/cap": {"put": _op(
                "Set a rack cap", write=True, body=kw, params=[_path_param("rack")])},
            "/api/v1/racks/{rack}/curtail": {"post": _op(
                "Curtail a rack (sleep its miners)", write=True, params=[_path_param("rack")])},
            "/api/v1/racks/{rack}/restore": {"post": _op(
                "Restore a curtailed rack (ramp-limited)", write=True,
                params=[_path_param("rack")])},
            "/api/v1/miners/{miner}/clear": {"post": _op(
                "Clear a miner's faulty and not-following marks (it is planned and commanded "
                "again at once)", write=True, params=[_path_param("miner")])},
            "/api/v1/grid/signal": {"post": _op(
                "Grid signal heartbeat with an optional site cap", write=True, body=grid)},
            "/api/v1/workers/{worker}/reconnect": {"post": _op(
                "Send client.reconnect to a worker", write=True,
                params=[_path_param("worker")])},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Error": {"description": "Error", "content": {"application/json": {
                "schema": {"type": "object", "properties": {
                    "error": {"type": "string"}, "detail": {}}}}}}},
        },
    }
