"""Replay servers for firmware vectors (tests/vectors/firmware/*.json), over real sockets.

Each server answers from a vector's ``responses`` table and records what it was asked, so a
driver is tested against the vendors' documented shapes byte for byte — including the error
shapes — without any emulator logic in between. A response is
``{"status": 200, "json": ...}`` (HTTP), ``{"json": ...}`` (TCP) or ``{"raw": "..."}`` (bytes
as given, for half-written replies), optionally after ``"delay"`` seconds (a hanging call); a
list of responses is served in turn, the last repeating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from pathlib import Path
from typing import Any

from aiohttp import web

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "firmware"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    assert data.get("source"), f"{name}: every vector file cites its source"
    return data


def cases(name: str) -> list[tuple[str, dict[str, Any]]]:
    data = load(name)
    out = []
    for case in data["cases"]:
        assert case.get("source") or data["source"], case["name"]
        out.append((case["name"], case))
    return out


class _Table:
    def __init__(self, responses: dict[str, Any]) -> None:
        self.responses = responses
        self.served: dict[str, int] = {}
        self.requests: list[tuple[str, Any]] = []

    def next(self, key: str) -> Any | None:
        spec = self.responses.get(key)
        if spec is None:
            return None
        if isinstance(spec, list):
            i = self.served.get(key, 0)
            self.served[key] = i + 1
            return spec[min(i, len(spec) - 1)]
        return spec


class HttpReplay(_Table):
    """Keys are "METHOD path" (path after /api/v1/); anything else answers 404, no body."""

    def __init__(self, responses: dict[str, Any]) -> None:
        super().__init__(responses)
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        assert self._runner is not None
        port: int = self._runner.addresses[0][1]
        return port

    async def start(self) -> HttpReplay:
        app = web.Application()
        app.router.add_route("*", "/api/v1/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = f"{request.method} {request.match_info['path']}"
        body = await request.read()
        self.requests.append((key, json.loads(body) if body else None))
        spec = self.next(key)
        if spec is None:
            return web.Response(status=404)
        if "delay" in spec:  # a firmware that hangs on this call
            await asyncio.sleep(float(spec["delay"]))
        status = int(spec.get("status", 200))
        if "raw" in spec:
            return web.Response(status=status, body=spec["raw"].encode(),
                                content_type="application/json")
        if "json" in spec:
            return web.json_response(spec["json"], status=status)
        return web.Response(status=status)


class _TcpReplay(_Table):
    def __init__(self, responses: dict[str, Any]) -> None:
        super().__init__(responses)
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> _TcpReplay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


def _payload(spec: dict[str, Any]) -> bytes:
    if "raw" in spec:
        return str(spec["raw"]).encode()
    return json.dumps(spec["json"]).encode()


class CgminerReplay(_TcpReplay):
    """cgminer-style TCP (one request per connection, NUL-terminated reply). Keys are the
    command, or "command parameter" to match a parameter too; an unknown command answers
    cgminer's STATUS E code 14 "Invalid command" (API-README)."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        req = json.loads((await reader.read(65536)).decode().strip("\x00 \n"))
        cmd, param = str(req.get("command", "")), req.get("parameter")
        self.requests.append((cmd, param))
        spec = self.next(f"{cmd} {param}") if param is not None else None
        spec = spec or self.next(cmd)
        if spec is None:
            spec = {"json": {"STATUS": [{"STATUS": "E", "When": 0, "Code": 14,
                                         "Msg": "Invalid command", "Description": "replay"}],
                             "id": 1}}
        writer.write(_payload(spec) + (b"" if spec.get("no_nul") else b"\x00"))
        await writer.drain()


class WhatsminerReplay(_TcpReplay):
    """Whatsminer v3 framing (4-byte little-endian length + JSON). Keys are the cmd."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            (n,) = struct.unpack("<I", await reader.readexactly(4))
            req = json.loads(await reader.readexactly(n))
            self.requests.append((str(req.get("cmd")), req))
            spec = self.next(str(req.get("cmd"))) or {
                "json": {"code": -1, "when": 0, "msg": "invalid command", "desc": req.get("cmd")}}
            data = _payload(spec)
            writer.write(struct.pack("<I", len(data)) + data)
            await writer.drain()
