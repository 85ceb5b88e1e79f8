"""RpcClient over real HTTP against a local JSON-RPC server (tests/node/fakenode.py)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from poold.metrics import Metrics
from poold.node.rpc import (
    Backoff,
    NodeAuthError,
    NodeCheckError,
    NodeNotReady,
    NodeRpcError,
    NodeUnavailable,
    RpcClient,
    ThrottledLog,
    split_credentials,
)
from tests.node.fakenode import FakeNode, free_port


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[FakeNode]:
    async with FakeNode(tmp_path, zmq_enabled=False) as n:
        yield n


async def test_password_auth_and_typed_calls(node: FakeNode) -> None:
    metrics = Metrics()
    async with RpcClient(node.rpc_url, name="n1", user=node.user, password=node.password,
                         metrics=metrics) as c:
        assert await c.getbestblockhash() == node.tip
        info = await c.getblockchaininfo()
        assert info["chain"] == "regtest"
        gbt = await c.getblocktemplate(("segwit",))
        assert gbt["previousblockhash"] == node.tip
        assert await c.submitblock(b"\x01\x02") is None
        assert node.submitted == ["0102"]
        header = await c.getblockheader(node.tip)
        assert header["height"] == node.height
        assert await c.getblockhash(0) == node.hashes[0]
    count = metrics.registry.get_sample_value(
        "poold_rpc_latency_seconds_count", {"node": "n1", "method": "getbestblockhash"})
    assert count == 1


async def test_credentials_in_url_are_used_but_never_shown(node: FakeNode) -> None:
    url = f"http://{node.user}:{node.password}@127.0.0.1:{node.rpc_port}/"
    async with RpcClient(url, name="n1") as c:
        assert await c.getbestblockhash() == node.tip
        assert node.password not in repr(c) and node.password not in c.url


async def test_rpc_error_is_an_answer(node: FakeNode) -> None:
    async with RpcClient(node.rpc_url, user=node.user, password=node.password) as c:
        with pytest.raises(NodeRpcError) as e:
            await c.call("nosuchmethod")
        assert e.value.code == -32601
        with pytest.raises(NodeRpcError) as e2:
            await c.getblockheader("00" * 32)
        assert e2.value.code == -8 and "not found" in e2.value.message


async def test_wrong_password_is_an_auth_error(node: FakeNode) -> None:
    async with RpcClient(node.rpc_url, user=node.user, password="wrong") as c:
        with pytest.raises(NodeAuthError):
            await c.getbestblockhash()


async def test_cookie_auth_rereads_the_cookie_after_a_restart(node: FakeNode) -> None:
    async with RpcClient(node.rpc_url, cookie_file=node.cookie_file) as c:
        assert await c.getbestblockhash() == node.tip
        old = node.cookie_file.read_text()
        await node.stop()
        await node.start()  # bitcoind writes a new cookie at every start
        assert node.cookie_file.read_text() != old
        assert await c.getbestblockhash() == node.tip


async def test_missing_cookie_file_is_a_clear_error(tmp_path: Path, node: FakeNode) -> None:
    async with RpcClient(node.rpc_url, cookie_file=tmp_path / "nope" / ".cookie") as c:
        with pytest.raises(NodeAuthError, match="cookie file"):
            await c.getbestblockhash()


async def test_unreachable_and_slow_nodes_are_unavailable(node: FakeNode) -> None:
    async with RpcClient(f"http://127.0.0.1:{free_port()}/", user="u", password="p") as c:
        with pytest.raises(NodeUnavailable):
            await c.getbestblockhash()
    node.gbt_delay_s = 0.5
    async with RpcClient(node.rpc_url, user=node.user, password=node.password,
                         timeout_s=0.1) as c:
        with pytest.raises(NodeUnavailable, match=r"no answer within 0\.1 s"):
            await c.getblocktemplate()
        # A per-call timeout overrides the client's.
        assert await c.call("getblocktemplate", {"rules": ["segwit"]}, timeout_s=2.0)


async def test_call_retrying_survives_a_short_outage(node: FakeNode) -> None:
    import asyncio

    async with RpcClient(node.rpc_url, user=node.user, password=node.password) as c:
        await node.stop()
        restart = asyncio.get_running_loop().call_later(
            0.3, lambda: asyncio.ensure_future(node.start()))
        try:
            tip = await c.call_retrying("getbestblockhash", deadline_s=5.0,
                                        backoff=Backoff(0.05, 0.2))
        finally:
            restart.cancel()
        assert tip == node.tip
        await node.stop()
        with pytest.raises(NodeUnavailable):
            await c.call_retrying("getbestblockhash", deadline_s=0.3, backoff=Backoff(0.05, 0.1))
        await node.start()


async def test_startup_check(node: FakeNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="poold.node")
    async with RpcClient(node.rpc_url, name="n1", user=node.user, password=node.password) as c:
        info = await c.check("regtest")
        assert info.chain == "regtest" and info.version == 310000
        assert info.best_block_hash_hex == node.tip
        assert "FakeNode:31.0.0" in caplog.text
        with pytest.raises(NodeCheckError, match=r"'regtest'.*'main'"):
            await c.check("main")
        node.chain = "main"
        node.ibd = True
        with pytest.raises(NodeNotReady, match="initial block download"):
            await c.check("main")
        node.chain = "regtest"
        assert (await c.check("regtest")).initial_block_download  # allowed on regtest


async def test_credentials_never_logged(node: FakeNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets_seen: list[str] = [node.password]
    errors: list[str] = []
    async with RpcClient(node.rpc_url, name="n1", user=node.user, password=node.password) as c:
        await c.check("regtest")
        errors.append(repr(c))
    async with RpcClient(node.rpc_url, name="n2", user=node.user,
                         password=node.password + "x") as c:
        with pytest.raises(NodeAuthError) as e:
            await c.check("regtest")
        errors += [str(e.value), repr(c)]
        secrets_seen.append(node.password + "x")
    async with RpcClient(node.rpc_url, name="n3", cookie_file=node.cookie_file) as c:
        await c.check("regtest")
        secrets_seen.append(node.cookie_file.read_text().split(":", 1)[1])
    url = f"http://{node.user}:{node.password}@127.0.0.1:{free_port()}/"
    async with RpcClient(url, name="n4") as c:
        with pytest.raises(NodeUnavailable) as e3:
            await c.getbestblockhash()
        errors += [str(e3.value), repr(e3.value), repr(c)]
    with pytest.raises(ValueError) as e4:
        split_credentials(f"ftp://{node.user}:{node.password}@host/")
    errors.append(str(e4.value))
    text = caplog.text + "\n".join(errors)
    for secret in secrets_seen:
        assert secret not in text


def test_backoff_is_exponential_and_capped() -> None:
    b = Backoff(initial_s=0.1, cap_s=1.0)
    delays = [b.next_delay() for _ in range(8)]
    assert 0.1 <= delays[0] <= 0.11 and 0.2 <= delays[1] <= 0.22 and 0.4 <= delays[2] <= 0.44
    assert all(1.0 <= d <= 1.1 for d in delays[4:])
    b.reset()
    assert b.next_delay() <= 0.11


def test_throttled_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    t = ThrottledLog(logging.getLogger("poold.test"), interval_s=60.0)
    for i in range(5):
        t.warning("k", "failure %d", i)
    assert [r.getMessage() for r in caplog.records] == ["failure 0"]
    t.clear("k")
    t.warning("k", "failure %d", 9)
    assert caplog.records[-1].getMessage() == "failure 9"


async def test_connection_closed_by_the_node_while_idle_is_retried_once() -> None:
    """bitcoind drops idle keep-alive connections (-rpcservertimeout); the next call on such a
    connection must go out again on a fresh one, not fail."""
    import asyncio
    import json

    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        first_connection = connections == 1
        answered = 0
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            req = json.loads(await reader.readexactly(length))
            if first_connection and answered == 1:
                writer.close()  # the node timed the connection out just as we reused it
                return
            body = json.dumps({"result": "ok", "error": None, "id": req["id"]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            answered += 1

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with RpcClient(f"http://127.0.0.1:{port}/", user="u", password="p") as c:
            assert await c.call("ping") == "ok"
            assert await c.call("ping") == "ok"
        assert connections == 2
    finally:
        server.close()
        await server.wait_closed()
