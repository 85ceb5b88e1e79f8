"""Admin API over real HTTP on loopback: probes, metrics, auth scopes, clear 4xx on bad input.

The backend here is a small recording fake: this tests the API's own behaviour (routing, auth,
validation, error shapes); the daemon's real backend is exercised by the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import pytest

from poold.api import HEADER_TIMEOUT_S, KEEPALIVE_TIMEOUT_S, AdminApi
from poold.fleet.errors import FleetRequestError, UnknownRack
from poold.metrics import Metrics

READ, WRITE = "read-token-1", "write-token-1"


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.ready = {"bitcoind": True, "template_fresh": True, "ledger": True}

    def readiness(self) -> Mapping[str, bool]:
        return self.ready

    def pool(self) -> dict[str, Any]:
        return {"hashrate_hs": 1e15, "workers": 2}

    def workers(self) -> Sequence[dict[str, Any]]:
        return [{"name": "acct.w1"}]

    async def blocks(self, since: float | None) -> Sequence[dict[str, Any]]:
        self.calls.append(("blocks", since))
        return [{"height": 101}]

    async def public_windows(self, since: float | None) -> Sequence[dict[str, Any]]:
        self.calls.append(("public_windows", since))
        return [{"height": 101, "window": None}]

    async def energy(self, start: float, end: float) -> dict[str, Any]:
        self.calls.append(("energy", (start, end)))
        return {"start": start, "end": end, "kwh": 1.5}

    def racks(self) -> Sequence[dict[str, Any]]:
        return [{"id": "r1", "cap_w": 30000}]

    def miners(self, rack: str | None) -> Sequence[dict[str, Any]]:
        return [{"id": "m1", "rack": rack}]

    def budgets(self) -> dict[str, Any]:
        return {"site_kw": 100}

    async def set_cap(self, scope: str, kw: float) -> dict[str, Any]:
        if scope not in ("site", "r1"):
            raise UnknownRack("unknown rack", scope)
        if kw > 1000:
            raise FleetRequestError("cap above the breaker", {"max_kw": 1000})
        self.calls.append(("cap", (scope, kw)))
        return {"scope": scope, "kw": kw}

    async def curtail(self, rack: str) -> dict[str, Any]:
        self.calls.append(("curtail", rack))
        return {"rack": rack}

    async def restore(self, rack: str) -> dict[str, Any]:
        self.calls.append(("restore", rack))
        return {"rack": rack}

    async def grid_signal(self, cap_kw: float | None, ttl_s: float | None) -> dict[str, Any]:
        self.calls.append(("grid", (cap_kw, ttl_s)))
        return {"ok": True}

    async def reconnect_worker(self, worker: str) -> dict[str, Any]:
        self.calls.append(("reconnect", worker))
        return {"worker": worker}


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, FakeBackend, Metrics]]:
    backend = FakeBackend()
    metrics = Metrics()
    server = AdminApi(backend, metrics.registry, read_tokens=[READ], write_tokens=[WRITE])
    await server.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}", backend, metrics
    finally:
        await server.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_probes_and_metrics_need_no_token(api: tuple[str, FakeBackend, Metrics]) -> None:
    url, backend, metrics = api
    metrics.blocks_found.inc()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/healthz") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "alive"
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 200
        backend.ready["ledger"] = False
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 503
            assert (await r.json())["checks"]["ledger"] is False
        async with s.get(f"{url}/metrics") as r:
            assert r.status == 200
            assert "poold_blocks_found_total 1.0" in await r.text()


async def test_reads_need_a_read_or_write_token(api: tuple[str, FakeBackend, Metrics]) -> None:
    url, _, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/api/v1/pool") as r:
            assert r.status == 401
        async with s.get(f"{url}/api/v1/pool", headers=auth("wrong")) as r:
            assert r.status == 403
        for token in (READ, WRITE):
            async with s.get(f"{url}/api/v1/pool", headers=auth(token)) as r:
                assert r.status == 200
                assert (await r.json())["workers"] == 2
        async with s.get(f"{url}/api/v1/miners?rack=r1", headers=auth(READ)) as r:
            assert (await r.json())["miners"][0]["rack"] == "r1"


async def test_writes_need_the_write_scope(api: tuple[str, FakeBackend, Metrics]) -> None:
    url, backend, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{url}/api/v1/racks/r1/cap", json={"kw": 20}) as r:
            assert r.status == 401
        async with s.put(f"{url}/api/v1/racks/r1/cap", json={"kw": 20},
                         headers=auth(READ)) as r:
            assert r.status == 403
        async with s.put(f"{url}/api/v1/racks/r1/cap", json={"kw": 20},
                         headers=auth(WRITE)) as r:
            assert r.status == 200
    assert backend.calls == [("cap", ("r1", 20.0))]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/v1/racks/r1/cap", b"{not json", 400, "body is not valid JSON"),
        ("/api/v1/racks/r1/cap", b"[1]", 400, "body must be a JSON object"),
        ("/api/v1/racks/r1/cap", b"{}", 400, "missing field 'kw'"),
        ("/api/v1/racks/r1/cap", b'{"kw": "ten"}', 400, "field 'kw' must be a number"),
        ("/api/v1/racks/r1/cap", b'{"kw": -1}', 422, "field 'kw' out of range"),
        ("/api/v1/racks/r1/cap", b'{"kw": 1e9}', 422, "field 'kw' out of range"),
        ("/api/v1/racks/nope/cap", b'{"kw": 1}', 404, "unknown rack"),
        ("/api/v1/racks/r1/cap", b'{"kw": 1001}', 422, "cap above the breaker"),
        ("/api/v1/site/cap", b'{"kw": true}', 400, "field 'kw' must be a number"),
    ],
)
async def test_bad_input_is_a_clear_4xx(
    api: tuple[str, FakeBackend, Metrics], path: str, body: bytes, status: int, message: str
) -> None:
    url, backend, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{url}{path}", data=body, headers=auth(WRITE)) as r:
            assert r.status == status
            assert (await r.json())["error"] == message
    assert backend.calls == []


async def test_grid_signal_and_reconnect(api: tuple[str, FakeBackend, Metrics]) -> None:
    url, backend, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/api/v1/grid/signal", json={"cap_kw": 500, "ttl_s": 60},
                          headers=auth(WRITE)) as r:
            assert r.status == 200
        async with s.post(f"{url}/api/v1/workers/acct.w1/reconnect", headers=auth(WRITE)) as r:
            assert r.status == 200
    assert backend.calls == [("grid", (500.0, 60.0)), ("reconnect", "acct.w1")]


async def test_writes_disabled_without_write_tokens() -> None:
    server = AdminApi(FakeBackend(), Metrics().registry)
    await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{server.port}/api/v1/racks") as r:
                assert r.status == 200
            async with s.post(f"http://127.0.0.1:{server.port}/api/v1/racks/r1/curtail",
                              headers=auth("anything")) as r:
                assert r.status == 403
    finally:
        await server.stop()


async def test_openapi_lists_every_route(api: tuple[str, FakeBackend, Metrics]) -> None:
    url, _, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/api/v1/openapi.json") as r:
            doc = await r.json()
    assert doc["openapi"].startswith("3.")
    for p in ("/api/v1/pool", "/api/v1/racks/{rack}/cap", "/api/v1/grid/signal",
              "/api/v1/workers/{worker}/reconnect"):
        assert p in doc["paths"]


async def test_unknown_route_is_json_404(api: tuple[str, FakeBackend, Metrics]) -> None:
    url, _, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/api/v1/nothing", headers=auth(READ)) as r:
            assert r.status == 404
            assert "error" in await r.json()


async def test_energy_window_defaults_and_validation(api: tuple[str, FakeBackend, Metrics]) -> None:
    url, backend, _ = api
    async with aiohttp.ClientSession(headers=auth(READ)) as s:
        t0 = time.time()
        async with s.get(f"{url}/api/v1/energy") as r:
            assert r.status == 200
            body = await r.json()
        # Default: the last 24 hours up to now.
        assert body["end"] == pytest.approx(t0, abs=5)
        assert body["end"] - body["start"] == pytest.approx(86400)
        async with s.get(f"{url}/api/v1/energy?since=1000&until=4600") as r:
            assert r.status == 200
        assert backend.calls[-1] == ("energy", (1000.0, 4600.0))
        for query in ("since=yesterday", "since=nan", "since=-5", "since=50&until=40"):
            async with s.get(f"{url}/api/v1/energy?{query}") as r:
                assert r.status == 400, query
                err = await r.json()
                assert "since" in err["error"] or "until" in err["error"], err
    assert len([c for c in backend.calls if c[0] == "energy"]) == 2


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        # an integer that does not fit a float (json.loads takes it; float() would overflow)
        (b'{"kw": 1' + b"0" * 400 + b"}", 422, "field 'kw' out of range"),
        # more digits than CPython converts at all
        (b'{"kw": 1' + b"0" * 5000 + b"}", 400, "body is not valid JSON"),
        (b'{"kw": -1' + b"0" * 400 + b"}", 422, "field 'kw' out of range"),
        (b'{"kw": 1e400}', 400, "field 'kw' must be a number"),  # float("inf")
        (b'{"kw": NaN}', 400, "field 'kw' must be a number"),
        (b"[" * 20000 + b"]" * 20000, 400, "body nested too deeply"),  # RecursionError
        (b'{"kw": 1, "x": ' + b"[" * 9 + b"]" * 9 + b"}", 400, "body nested too deeply"),
        (b'{"kw": 1, "x": "[[[[[[[[[[[[[[[[[["}', 200, None),  # brackets in a string are text
        (b'{"kw": 1, "x": "\\"[[[[[[[[[[[[[[[["}', 200, None),
        (b"\xff\xfe{}", 400, "body is not valid JSON"),
        (b'{"kw": 1}' + b"\x00", 400, "body is not valid JSON"),
    ],
)
async def test_bad_input_never_reaches_a_500(
    api: tuple[str, FakeBackend, Metrics], body: bytes, status: int, message: str | None
) -> None:
    url, _, _ = api
    async with aiohttp.ClientSession() as s:
        async with s.put(f"{url}/api/v1/site/cap", data=body, headers=auth(WRITE)) as r:
            assert r.status == status, await r.text()
            if message is not None:
                assert (await r.json())["error"] == message


async def _open_and_wait(url: str, send: bytes, within: float) -> float:
    """Connect, send `send`, and return how long until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(send)
    try:
        async with asyncio.timeout(within):
            while await reader.read(4096):
                pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return time.monotonic() - started


async def test_silent_and_slow_header_clients_are_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert HEADER_TIMEOUT_S == 10.0 and KEEPALIVE_TIMEOUT_S == 60.0  # the production figures
    # The deadlines are read when a connection opens (10 s / 60 s in production).
    monkeypatch.setattr("poold.api.HEADER_TIMEOUT_S", 0.5)
    server = AdminApi(FakeBackend(), Metrics().registry)
    await server.start("127.0.0.1", 0)
    short = f"http://127.0.0.1:{server.port}"
    try:
        silent = await _open_and_wait(short, b"", within=5)
        partial = await _open_and_wait(short, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", within=5)
        assert 0.4 <= silent <= 3 and 0.4 <= partial <= 3, (silent, partial)
        # a complete request is answered, and the connection kept alive past the header deadline
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{short}/healthz") as r:
                assert r.status == 200
            await asyncio.sleep(0.8)
            async with s.get(f"{short}/healthz") as r:
                assert r.status == 200
    finally:
        await server.stop()


async def test_idle_keepalive_connections_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("poold.api.KEEPALIVE_TIMEOUT_S", 0.5)
    server = AdminApi(FakeBackend(), Metrics().registry)
    await server.start("127.0.0.1", 0)
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        elapsed = await _open_and_wait(f"http://127.0.0.1:{server.port}", request, within=5)
        assert 0.4 <= elapsed <= 3, elapsed
    finally:
        await server.stop()
