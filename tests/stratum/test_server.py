"""The Stratum server over real TCP on 127.0.0.1 against the devnet (Bitcoin Core consensus)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.bitcoin.block import parse_block
from poold.bitcoin.byteorder import hash_from_hex
from poold.bitcoin.target import bits_to_target
from poold.config import config_from_dict
from poold.daemon import build_pool
from poold.node.nodes import NodeSet
from poold.pool import Pool
from poold.work.difficulty import DifficultyPolicy
from tests.stratum.client import StratumClient
from tests.work.builders import MAINNET_BITS

MakePool = Callable[..., Awaitable[Pool]]


def harden(pool: Pool) -> None:
    """Serve the current tip with a mainnet nBits: random nonces are shares, never blocks."""
    template = pool.nodes.latest
    assert template is not None
    hard = dataclasses.replace(template, bits=MAINNET_BITS, target=bits_to_target(MAINNET_BITS))
    pool.server.on_template(hard, True)


def new_address() -> str:
    return p2wpkh_address(os.urandom(20), Network.REGTEST)


@pytest.fixture
async def make_pool(devnet: Any, tmp_path: Path) -> AsyncIterator[MakePool]:
    pools: list[Pool] = []
    sweepers: list[asyncio.Task[None]] = []
    await devnet.generate(1)

    async def make(start: float = 1e-3, **overrides: Any) -> Pool:
        cfg = config_from_dict(
            {
                "pool": {"network": "regtest", "payout": "solo", "state_dir": str(tmp_path)},
                "nodes": [
                    {
                        "rpc_url": devnet.rpc_url,
                        "rpc_user": devnet.rpc_user,
                        "rpc_password": devnet.rpc_password,
                        "zmq_hashblock": devnet.zmq_url,
                    }
                ],
                "stratum": {"listen": "127.0.0.1:0"},
            }
        )
        nodes = NodeSet.from_config(cfg)
        policy = DifficultyPolicy(start, 1e-12, 1e15)
        pool = build_pool(cfg, nodes, difficulty=policy, **overrides)
        await nodes.start()
        await pool.server.start()
        pools.append(pool)
        sweepers.append(asyncio.create_task(pool.server.run_sweeper()))
        return pool

    yield make
    for task in sweepers:
        task.cancel()
    for pool in pools:
        await pool.server.shutdown()
        await pool.nodes.stop()


async def test_block_found_becomes_the_tip_and_pays_the_miner(
    make_pool: MakePool, devnet: Any
) -> None:
    pool = await make_pool(start=1e6)  # shares never meet 1e6; regtest blocks meet half of hashes
    addr = new_address()
    c = await StratumClient.connect(pool.server.port)
    _, job = await c.handshake(f"{addr}.rig")
    height = devnet.height
    notes_before = len(c.notes)
    results = []
    for nonce in range(16):
        results.append(
            await c.call(
                "mining.submit",
                f"{addr}.rig",
                job[0],
                f"{nonce:016x}",
                job[7],
                os.urandom(4).hex(),
                "00002000",
            )
        )
    await pool.server.wait_blocks()
    outcomes = pool.server.block_outcomes
    accepted = [o for o in outcomes if o.results == {"node0": None}]
    assert accepted and all(o.verified for o in accepted)
    assert any(r["result"] is True for r in results)  # a block is credited as a share
    assert devnet.height == height + 1
    tip = devnet.tip_hash_hex
    assert tip in {o.hash_hex for o in accepted}
    raw = await devnet.read_block(hash_from_hex(tip))
    _, txs = parse_block(raw)
    assert txs[0].outputs[0].script_pubkey == address_to_script(addr, Network.REGTEST)
    # the new tip reaches the miner as a clean job
    clean = await c.wait_note("mining.notify", after=notes_before, clean=True)
    assert clean["params"][1] != job[1]
    await c.close()


async def test_new_tip_during_a_submit_burst(make_pool: MakePool, devnet: Any) -> None:
    pool = await make_pool(start=1e-12)  # every hash is a share
    harden(pool)
    addr = new_address()
    c = await StratumClient.connect(pool.server.port)
    _, job = await c.handshake(addr)
    notes_before = len(c.notes)
    ids = [
        c.send("mining.submit", [addr, job[0], f"{i:016x}", job[7], f"{i:08x}"]) for i in range(150)
    ]
    gen = asyncio.create_task(devnet.generate(1))
    ids += [
        c.send("mining.submit", [addr, job[0], f"{i:016x}", job[7], f"{i:08x}"])
        for i in range(150, 300)
    ]
    await gen
    await c.wait_note("mining.notify", after=notes_before, clean=True)
    late = c.send("mining.submit", [addr, job[0], f"{999:016x}", job[7], f"{999:08x}"])
    ids.append(late)
    for i in ids:
        await c.wait_reply(i)
    assert all(len(c.replies[i]) == 1 for i in ids)  # exactly one reply per id
    for i in ids:
        r = c.replies[i][0]
        assert r["result"] is True or r["error"][0] == 21, r
    assert c.replies[late][0]["error"][0] == 21
    await c.close()


async def test_difficulty_change_with_work_in_flight(make_pool: MakePool) -> None:
    pool = await make_pool(start=1e-12)
    harden(pool)
    addr = new_address()
    c = await StratumClient.connect(pool.server.port)
    _, job1 = await c.handshake(addr)
    notes_before = len(c.notes)
    change = c.send("mining.suggest_difficulty", [1e6])
    # shares for job1 computed before the miner saw the change: all honest at the old difficulty
    in_flight = [
        c.send("mining.submit", [addr, job1[0], f"{i:016x}", job1[7], f"{i:08x}"])
        for i in range(20)
    ]
    assert (await c.wait_reply(change))["result"] is True
    diff = await c.wait_note("mining.set_difficulty", after=notes_before)
    assert diff["params"] == [1e6]
    job2 = (await c.wait_note("mining.notify", after=notes_before))["params"]
    assert job2[0] != job1[0] and job2[8] is False  # a new job, never clean_jobs
    for i in in_flight:
        assert (await c.wait_reply(i))["result"] is True
    late_job1 = await c.call("mining.submit", addr, job1[0], f"{77:016x}", job1[7], "0000004d")
    assert late_job1["result"] is True  # job1 keeps its difficulty
    new = await c.call("mining.submit", addr, job2[0], f"{78:016x}", job2[7], "0000004e")
    assert new["error"][0] == 23
    await c.close()


async def test_session_resume_over_tcp(make_pool: MakePool) -> None:
    pool = await make_pool()
    addr = new_address()
    c = await StratumClient.connect(pool.server.port)
    en1, _ = await c.handshake(addr)
    await c.close()
    for _ in range(100):
        if not pool.server.connections:
            break
        await asyncio.sleep(0.01)
    c2 = await StratumClient.connect(pool.server.port)
    en1_again, _ = await c2.handshake(addr, session_id=en1)
    assert en1_again == en1
    c3 = await StratumClient.connect(pool.server.port)
    en1_other, _ = await c3.handshake(addr, session_id=en1)
    assert en1_other != en1
    await c2.close()
    await c3.close()


async def test_line_too_long_drops_only_that_client(make_pool: MakePool) -> None:
    pool = await make_pool()
    good = await StratumClient.connect(pool.server.port)
    bad = await StratumClient.connect(pool.server.port)
    bad.writer.write(b'{"id":1,"method":"mining.subscribe","params":["' + b"x" * 17000)
    await asyncio.wait_for(bad.closed.wait(), 5)
    assert (await good.call("mining.ping"))["result"] == "pong"
    await good.close()
    await bad.close()


async def test_subscribe_and_idle_timeouts(make_pool: MakePool) -> None:
    pool = await make_pool(subscribe_timeout_s=0.3, idle_timeout_s=1.5, sweep_interval_s=0.05)
    silent = await StratumClient.connect(pool.server.port)
    idle = await StratumClient.connect(pool.server.port)
    await idle.handshake(new_address())
    busy = await StratumClient.connect(pool.server.port)
    addr = new_address()
    _, job = await busy.handshake(addr)
    await asyncio.wait_for(silent.closed.wait(), 3)
    assert not idle.closed.is_set()
    for i in range(25):  # keeps submitting: never idle
        await busy.call("mining.submit", addr, job[0], f"{i:016x}", job[7], f"{i:08x}")
        await asyncio.sleep(0.1)
    await asyncio.wait_for(idle.closed.wait(), 3)
    assert not busy.closed.is_set()
    for c in (silent, idle, busy):
        await c.close()


async def test_per_ip_and_global_connection_limits(make_pool: MakePool) -> None:
    pool = await make_pool(max_per_ip=2)
    a = await StratumClient.connect(pool.server.port)
    b = await StratumClient.connect(pool.server.port)
    c = await StratumClient.connect(pool.server.port)
    await asyncio.wait_for(c.closed.wait(), 3)
    assert (await a.call("mining.ping"))["result"] == "pong"
    assert (await b.call("mining.ping"))["result"] == "pong"
    pool2 = await make_pool(max_connections=1)
    d = await StratumClient.connect(pool2.server.port)
    e = await StratumClient.connect(pool2.server.port)
    await asyncio.wait_for(e.closed.wait(), 3)
    assert (await d.call("mining.ping"))["result"] == "pong"
    for x in (a, b, c, d, e):
        await x.close()


async def test_invalid_share_ladder_then_ip_ban(make_pool: MakePool) -> None:
    pool = await make_pool(start=1e6, invalid_limit=6, ban_after_kicks=2, ban_s=60)
    harden(pool)
    addr = new_address()
    for _ in range(2):
        c = await StratumClient.connect(pool.server.port)
        _, job = await c.handshake(addr)
        for i in range(6):
            c.send("mining.submit", [addr, job[0], f"{i:016x}", job[7], os.urandom(4).hex()])
        await asyncio.wait_for(c.closed.wait(), 5)
        assert any(n["method"] == "client.show_message" for n in c.notes)
        assert sum(1 for r in c.replies.values() if r[0]["error"]) >= 5
        await c.close()
    banned = await StratumClient.connect(pool.server.port)
    await asyncio.wait_for(banned.closed.wait(), 3)
    await banned.close()


async def test_slow_reader_is_dropped_and_never_delays_others(
    make_pool: MakePool, devnet: Any
) -> None:
    pool = await make_pool(write_buffer_limit=32 * 1024)
    server = pool.server
    fast = await StratumClient.connect(server.port)
    await fast.handshake(new_address())
    slow_sock = socket.socket()
    slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow_sock.connect(("127.0.0.1", server.port))
    slow_sock.sendall(
        b'{"id":1,"method":"mining.subscribe","params":["slow"]}\n'
        b'{"id":2,"method":"mining.authorize","params":["%s","x"]}\n' % new_address().encode()
    )
    for _ in range(100):
        if len(server.connections) == 2 and all(c.working for c in server.connections):
            break
        await asyncio.sleep(0.01)
    template = pool.nodes.latest
    assert template is not None
    sent = 0
    while len(server.connections) == 2 and sent < 20000:
        server.on_template(template, False)  # a fee refresh: a new job for everyone
        sent += 1
        if sent % 200 == 0:
            await asyncio.sleep(0)
    assert len(server.connections) == 1, "the slow reader was not dropped"
    assert server.drops.get("slow_reader") == 1
    # the fast miner got the newest job
    newest = server.ctx.engine.book.current
    want = {job.job_id for job in newest.values()}
    for _ in range(500):
        if fast.notes and fast.last_job()[0] in want:
            break
        await asyncio.sleep(0.01)
    assert fast.last_job()[0] in want
    slow_sock.close()
    await fast.close()


async def test_shutdown_sends_client_reconnect(make_pool: MakePool) -> None:
    pool = await make_pool(reconnect_host="pool2.example", reconnect_port=3334, drain_timeout_s=2.0)
    port = pool.server.port
    c = await StratumClient.connect(port)
    await c.handshake(new_address())
    await pool.server.shutdown()
    note = await c.wait_note("client.reconnect")
    assert note["params"] == ["pool2.example", 3334, 0]
    await asyncio.wait_for(c.closed.wait(), 5)
    refused = False
    try:
        await StratumClient.connect(port)
    except OSError:
        refused = True
    assert refused
    await c.close()


async def test_listens_on_a_passed_socket(make_pool: MakePool) -> None:
    """systemd socket activation hands poold a bound, listening socket."""
    pool = await make_pool()
    await pool.server.shutdown()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    pool.server.closing = False
    await pool.server.start(sock)
    c = await StratumClient.connect(port)
    assert (await c.call("mining.ping"))["result"] == "pong"
    await c.close()


async def test_two_instances_share_one_port_with_reuse_port() -> None:
    """Scale-out: one process per core on one port (SO_REUSEPORT), distinct extranonce1
    prefixes (pool.instance_id)."""
    from poold.stratum.server import ServerSettings, StratumServer
    from poold.work.extranonce import ExtranonceAllocator
    from tests.work.builders import rig

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    servers = []
    for instance in (1, 2):
        r = rig()
        r.ctx.allocator = ExtranonceAllocator(instance)
        server = StratumServer(r.ctx, ServerSettings(host="127.0.0.1", port=port, reuse_port=True))
        await server.start()
        servers.append(server)
    clients = [await StratumClient.connect(port) for _ in range(24)]
    prefixes = set()
    for c in clients:
        reply = await c.call("mining.subscribe", "x")
        prefixes.add(reply["result"][1][:2])
    assert prefixes == {"01", "02"}  # both instances took connections
    assert sum(len(s.connections) for s in servers) == 24
    for c in clients:
        await c.close()
    for server in servers:
        await server.shutdown()
