"""The fan-out's direct send over real TCP: byte order across partial sends, failing and closing
connections, with the native batch send and its pure twin."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest

from poold.stratum import server as server_mod
from poold.stratum.fanout import SendMany, pure_send_many
from poold.stratum.server import Connection, StratumServer
from tests.stratum.test_fanout_send import _native
from tests.stratum.test_server import MakePool, harden, make_pool, new_address

__all__ = ["make_pool"]  # the fixture, shared with test_server

SENDERS = [pytest.param(pure_send_many, id="pure")]
if _native() is not None:
    SENDERS.append(pytest.param(_native(), id="native"))


class Spy:
    """Wraps a send_many and records what it reported back."""

    def __init__(self, inner: SendMany) -> None:
        self.inner = inner
        self.sockets = 0
        self.results: list[tuple[int, int]] = []

    def __call__(self, fds: list[int], bufs: list[bytes]) -> list[tuple[int, int]]:
        self.sockets += len(fds)
        out = self.inner(fds, bufs)
        self.results.extend(out)
        return out


@pytest.fixture(params=SENDERS)
def spy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Spy:
    s = Spy(request.param)
    monkeypatch.setattr(server_mod, "send_many", s)
    return s


async def raw_miner(server: StratumServer, rcvbuf: int = 0) -> socket.socket:
    """A subscribed, authorized miner on a plain socket that reads only when told to."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    sock.send(
        b'{"id":1,"method":"mining.subscribe","params":["raw"]}\n'
        b'{"id":2,"method":"mining.authorize","params":["%s","x"]}\n' % new_address().encode()
    )
    return sock


async def until(cond: Any, limit_s: float = 5.0) -> None:
    for _ in range(int(limit_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def conn_of(server: StratumServer, sock: socket.socket) -> Connection:
    port = sock.getsockname()[1]
    for conn in server.connections:
        assert conn.transport is not None
        if conn.transport.get_extra_info("peername")[1] == port:
            return conn
    raise AssertionError("no such connection")


async def read_lines(sock: socket.socket, until_job: str | None, limit_s: float = 10) -> list[Any]:
    """Every line the miner received, until a notify of `until_job` (None: any job; "": EOF)."""
    loop = asyncio.get_running_loop()
    buf = b""
    out: list[Any] = []
    async with asyncio.timeout(limit_s):
        while True:
            chunk = await loop.sock_recv(sock, 1 << 16)
            if not chunk:
                return out
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                msg = json.loads(line)  # a torn or interleaved line fails here
                out.append(msg)
                if msg.get("method") == "mining.notify" and until_job in (None, msg["params"][0]):
                    return out


def jobs(lines: list[Any]) -> list[str]:
    return [m["params"][0] for m in lines if m.get("method") == "mining.notify"]


async def test_partial_sends_keep_every_job_in_order(make_pool: MakePool, spy: Spy) -> None:
    pool = await make_pool()
    server = pool.server
    harden(pool)
    slow = await raw_miner(server, rcvbuf=4096)
    fast = await raw_miner(server)
    await until(lambda: len(server.connections) == 2 and all(c.working for c in server.connections))
    conn = conn_of(server, slow)
    assert conn.fd >= 0  # nothing queued: the direct path is open
    sndbuf = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
    sndbuf.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    template = pool.nodes.latest
    assert template is not None
    book = server.ctx.engine.book
    group = conn.work.group_key  # type: ignore[union-attr]
    fast_group = conn_of(server, fast).work.group_key  # type: ignore[union-attr]
    expected = []
    fast_expected = []
    queued_seen = False
    for i in range(300):  # ~600 B each: far past what the socket buffers take
        server.on_template(template, i % 50 == 0)
        expected.append(book.current[group].job_id)
        fast_expected.append(book.current[fast_group].job_id)
        queued_seen = queued_seen or conn.fd < 0
    assert queued_seen and conn.fd < 0
    assert conn.transport.get_write_buffer_size() > 0  # type: ignore[union-attr]
    assert any(sent >= 0 for _, sent in spy.results), "no partial send happened"
    # while bytes are queued, the later jobs went through the transport, not the direct path
    assert spy.sockets < 2 * 300
    lines = await read_lines(slow, expected[-1])
    assert jobs(lines)[-len(expected):] == expected  # every job, whole, in order
    # drained: resume_writing reopened the direct path, and the next job takes it
    await until(lambda: conn.fd >= 0)
    before = spy.sockets
    server.on_template(template, False)
    assert spy.sockets == before + 2
    lines = await read_lines(slow, book.current[group].job_id)
    assert jobs(lines) == [book.current[group].job_id]
    last_fast = book.current[fast_group].job_id
    fast_lines = await read_lines(fast, last_fast)
    assert jobs(fast_lines)[-len(expected) - 1:] == [*fast_expected, last_fast]
    for sock in (slow, fast):
        sock.close()


async def test_reset_connection_is_dropped_alone(make_pool: MakePool, spy: Spy) -> None:
    pool = await make_pool()
    server = pool.server
    gone = await raw_miner(server)
    ok = await raw_miner(server)
    await until(lambda: len(server.connections) == 2 and all(c.working for c in server.connections))
    await read_lines(gone, None)  # the handshake's replies and first job: nothing left unread
    gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    gone_conn = conn_of(server, gone)
    gone.close()  # RST at once; the server's loop has not seen it yet
    template = pool.nodes.latest
    assert template is not None
    server.on_template(template, False)
    failed = [sent for _, sent in spy.results if sent < 0]
    assert len(failed) == 1
    assert gone_conn.close_reason is not None and "send failed" in gone_conn.close_reason
    job = server.ctx.engine.book.current[conn_of(server, ok).work.group_key].job_id  # type: ignore[union-attr]
    assert jobs(await read_lines(ok, job))[-1] == job
    await until(lambda: len(server.connections) == 1)
    assert server.drops.get("client_closed") == 1  # the peer reset: it closed, not us
    ok.close()


async def test_closing_connection_gets_no_direct_send(make_pool: MakePool, spy: Spy) -> None:
    pool = await make_pool()
    server = pool.server
    sock = await raw_miner(server)
    await until(lambda: len(server.connections) == 1 and all(c.working for c in server.connections))
    conn = conn_of(server, sock)
    first = jobs(await read_lines(sock, None))
    assert conn.transport is not None
    conn.transport.close()  # closing: connection_lost is still to come
    template = pool.nodes.latest
    assert template is not None
    server.on_template(template, False)
    assert spy.sockets == 0
    assert jobs(await read_lines(sock, "")) == []  # EOF, and no job after the close
    assert first
    sock.close()


async def test_slow_reader_dropped_at_the_limit(make_pool: MakePool, spy: Spy) -> None:
    pool = await make_pool(write_buffer_limit=32 * 1024)
    server = pool.server
    slow = await raw_miner(server, rcvbuf=4096)
    fast = await raw_miner(server)
    await until(lambda: len(server.connections) == 2 and all(c.working for c in server.connections))
    slow_conn = conn_of(server, slow)
    fast_conn = conn_of(server, fast)
    assert slow_conn.transport is not None
    slow_conn.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    template = pool.nodes.latest
    assert template is not None
    book = server.ctx.engine.book
    group = fast_conn.work.group_key  # type: ignore[union-attr]
    sent = []
    for _ in range(2000):
        server.on_template(template, False)
        sent.append(book.current[group].job_id)
        if slow_conn.close_reason is not None:
            break
        # a miner still connected is within the limit
        assert slow_conn.transport is not None
        assert slow_conn.transport.get_write_buffer_size() <= 32 * 1024
        if len(sent) % 100 == 0:
            await read_lines(fast, sent[-1])  # keep the fast one drained
    assert slow_conn.close_reason == "write buffer full (slow reader)"
    assert any(sent_ >= 0 for _, sent_ in spy.results)  # it went partial on the direct path
    server.on_template(template, False)
    sent.append(book.current[group].job_id)
    fast_lines = await read_lines(fast, sent[-1])
    assert jobs(fast_lines)[-1] == sent[-1]
    await until(lambda: len(server.connections) == 1)
    assert server.drops.get("slow_reader") == 1
    for sock in (slow, fast):
        sock.close()
