"""The devnet's JSON-RPC server over HTTP, shaped like bitcoind's (src/httprpc.cpp, src/rpc/).

One responsibility: HTTP basic auth (user/password, or the `__cookie__` user with the cookie
file's secret), JSON-RPC 1.0/2.0 request handling and error objects, dispatch to a method table.

bitcoind behaviours kept: 401 with `WWW-Authenticate: Basic realm="jsonrpc"` and no body on bad
auth; POST only; named or positional params; batches; legacy (1.0/1.1) replies carry both
`result` and `error` with HTTP 500 on error (400 invalid request, 404 method not found); JSON-RPC
2.0 replies carry one of them with HTTP 200, and notifications (no `id`) get 204.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from poold.errors import PooldError

log = logging.getLogger("poold.devnet.rpc")

RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_PARSE_ERROR = -32700
RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_INTERNAL_ERROR = -32603

COOKIE_USER = "__cookie__"


class RpcError(PooldError):
    """An error reply: bitcoind's code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Method:
    """An RPC method: an async handler taking positional params, and the params' names (for
    named-parameter calls) of which the first `required` must be given."""

    handler: Callable[..., Awaitable[Any]]
    params: tuple[str, ...] = ()
    required: int = 0


@dataclass(frozen=True, slots=True)
class Credentials:
    user: str
    password: str
    cookie: str  # secret of the `__cookie__` user

    def check(self, header: str | None) -> bool:
        if header is None or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        if not sep:
            return False
        ok_user = hmac.compare_digest(user, self.user) and hmac.compare_digest(
            password, self.password
        )
        ok_cookie = hmac.compare_digest(user, COOKIE_USER) and hmac.compare_digest(
            password, self.cookie
        )
        return ok_user or ok_cookie


class RpcServer:
    def __init__(self, methods: Mapping[str, Method], credentials: Credentials) -> None:
        self._methods = methods
        self._credentials = credentials
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)  # blocks up to 4 MB in hex
        app.router.add_route("*", "/", self._handle)
        app.router.add_route("*", "/wallet/{name:.*}", self._handle)
        # A long-polling getblocktemplate must not hold a shutdown for aiohttp's default 60 s.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.host, self.port = str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self._credentials.check(request.headers.get("Authorization")):
            log.warning("rpc: incorrect credentials from %s", request.remote)
            return web.Response(
                status=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'}
            )
        if request.method != "POST":
            return web.Response(status=405, text="JSONRPC server handles only POST requests")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _json_response(
                {"result": None, "error": _error_obj(RPC_PARSE_ERROR, "Parse error"), "id": None},
                500,
            )
        if isinstance(body, list):
            replies = [await self._call(item) for item in body]
            return _json_response([r for r, _ in replies if r is not None], 200)
        if not isinstance(body, dict):
            return _json_response(
                {
                    "result": None,
                    "error": _error_obj(RPC_PARSE_ERROR, "Top-level object parse error"),
                    "id": None,
                },
                500,
            )
        reply, status = await self._call(body)
        if reply is None:
            return web.Response(status=204)
        return _json_response(reply, status)

    async def _call(self, req: Any) -> tuple[dict[str, Any] | None, int]:
        """One request -> (reply or None for a 2.0 notification, HTTP status)."""
        if not isinstance(req, dict):
            err = _error_obj(RPC_INVALID_REQUEST, "Invalid Request object")
            return {"result": None, "error": err, "id": None}, 400
        req_id = req.get("id")
        v2 = req.get("jsonrpc") == "2.0"
        try:
            result = await self._dispatch(req)
        except RpcError as exc:
            err = _error_obj(exc.code, exc.message)
            if v2:
                reply = {"jsonrpc": "2.0", "error": err, "id": req_id}
                return (reply if "id" in req else None), 200
            status = {RPC_INVALID_REQUEST: 400, RPC_METHOD_NOT_FOUND: 404}.get(exc.code, 500)
            return {"result": None, "error": err, "id": req_id}, status
        if v2:
            reply = {"jsonrpc": "2.0", "result": result, "id": req_id}
            return (reply if "id" in req else None), 200
        return {"result": result, "error": None, "id": req_id}, 200

    async def _dispatch(self, req: dict[str, Any]) -> Any:
        name = req.get("method")
        if not isinstance(name, str):
            raise RpcError(RPC_INVALID_REQUEST, "Method must be a string")
        method = self._methods.get(name)
        if method is None:
            raise RpcError(RPC_METHOD_NOT_FOUND, "Method not found")
        params = req.get("params", [])
        if params is None:
            params = []
        if isinstance(params, dict):
            args = _named_to_positional(name, method, params)
        elif isinstance(params, list):
            args = params
        else:
            raise RpcError(RPC_INVALID_REQUEST, "Params must be an array or object")
        if len(args) > len(method.params) or len(args) < method.required:
            usage = " ".join(
                p if i < method.required else f"( {p} )" for i, p in enumerate(method.params)
            )
            raise RpcError(RPC_MISC_ERROR, f"{name} {usage}".rstrip())
        try:
            return await method.handler(*args)
        except RpcError:
            raise
        except (TypeError, ValueError) as exc:
            raise RpcError(RPC_INVALID_PARAMETER, str(exc)) from exc
        except Exception as exc:
            # A devnet bug: answer like bitcoind does for an internal failure, keep the trace.
            log.exception("rpc %s failed", name)
            raise RpcError(RPC_INTERNAL_ERROR, f"Internal error: {exc}") from exc


def _named_to_positional(name: str, method: Method, params: dict[str, Any]) -> list[Any]:
    unknown = [k for k in params if k not in method.params]
    if unknown:
        raise RpcError(RPC_INVALID_PARAMETER, f"Unknown named parameter {unknown[0]}")
    args: list[Any] = []
    last = max((method.params.index(k) for k in params), default=-1)
    for i, pname in enumerate(method.params[: last + 1]):
        if pname not in params and i < method.required:
            raise RpcError(RPC_MISC_ERROR, f"{name}: missing required parameter {pname}")
        args.append(params.get(pname))
    return args


def _error_obj(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def _json_response(obj: Any, status: int) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(obj).encode() + b"\n", content_type="application/json"
    )
