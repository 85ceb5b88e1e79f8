"""`serve()` owns every long-lived task it starts (poold.lifetime) and stops them in the order
docs/DESIGN.md ("Processes and tasks") documents: stop listening and reconnect the miners,
finish block submissions, stop the nodes, then the ledger's last flush, then the store closes.
In process, against the devnet over real JSON-RPC and ZMQ, with the SQLite ledger."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from poold.bitcoin.address import Network, p2wpkh_address
from poold.config import load_config
from poold.daemon import serve
from poold.ledger import LedgerConfig
from poold.ledger.store import open_store
from poold.sim.ports import free_port
from tests.poold_process import nodes_toml
from tests.stratum.client import StratumClient


def write_config(tmp_path: Path, devnet: Any, port: int, api_port: int) -> Path:
    cfg = tmp_path / "poold.toml"
    # A flush interval of an hour: the shares accepted below reach the store only through the
    # ledger's last flush at shutdown, whose place in the order is what this test checks.
    cfg.write_text(f"""
[pool]
network = "regtest"
payout = "solo"
state_dir = "{tmp_path}"

{nodes_toml(devnet)}
[stratum]
listen = "127.0.0.1:{port}"
start_difficulty = 1e-8
min_difficulty = 1e-8
reconnect_host = "127.0.0.1"
reconnect_port = 4444

[api]
listen = "127.0.0.1:{api_port}"

[ledger]
flush_interval_ms = 3600000
""")
    return cfg


async def connect(port: int, serving: asyncio.Task[int], limit_s: float = 30.0
                  ) -> StratumClient:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return await StratumClient.connect(port)
        except OSError as exc:
            assert not serving.done(), f"serve() ended before listening: {serving!r}"
            assert time.monotonic() < deadline, f"serve() not listening after {limit_s} s: {exc}"
            await asyncio.sleep(0.05)


async def accept_shares(client: StratumClient, login: str, want: int,
                        limit_s: float = 30.0) -> int:
    """Submit nonces on the newest job until `want` shares are accepted (regtest: about one
    hash in 43 meets difficulty 1e-8, and about half of all hashes are blocks, which move the
    tip and bring a new job)."""
    accepted, nonce, answers = 0, 0, []
    deadline = time.monotonic() + limit_s
    while accepted < want:
        assert time.monotonic() < deadline, f"{accepted} shares accepted; answers {answers[-5:]}"
        job = [n for n in client.notes if n["method"] == "mining.notify"][-1]["params"]
        nonce += 1
        reply = await client.call("mining.submit", login, job[0], "00" * 8, job[7],
                                  f"{nonce:08x}")
        answers.append(reply.get("error"))
        accepted += reply.get("result") is True
    return accepted


def position(messages: list[str], pattern: str) -> int:
    for i, m in enumerate(messages):
        if re.search(pattern, m):
            return i
    raise AssertionError(f"no log line matches {pattern!r}; the last ones: {messages[-30:]}")


async def test_serve_stops_in_the_documented_order_and_leaves_no_task(
        devnet: Any, tmp_path: Path, caplog: Any) -> None:
    await devnet.generate(1)
    port, api_port = free_port(), free_port()
    cfg = load_config(write_config(tmp_path, devnet, port, api_port))
    caplog.set_level(logging.DEBUG, logger="poold")
    before = asyncio.all_tasks()
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(cfg, stop=stop), name="test-serve")
    try:
        client = await connect(port, serving)
        login = f"{p2wpkh_address(os.urandom(20), Network.REGTEST)}.w"
        await client.handshake(login)
        accepted = await accept_shares(client, login, 3)
        stop.set()
        note = await client.wait_note("client.reconnect", limit_s=10)
        assert note["params"] == ["127.0.0.1", 4444, 0]
        await client.close()
        assert await asyncio.wait_for(serving, 30) == 0
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.wait((serving,))
        gc.unfreeze()  # serve() froze the test process's objects

    # Every task serve() started has ended with it (only this test's own, and the devnet's,
    # which were there before, are left).
    left = [t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task()]
    assert not left, f"tasks left after serve() returned: {[t.get_name() for t in left]} {left}"

    messages = [r.getMessage() for r in caplog.records
                if r.name.startswith("poold") and r.created]
    order = [
        r"^stratum: stopped listening on 127\.0\.0\.1:",
        r"^stopped stratum-sweeper$",
        r"^stopped nodes$",
        rf"^ledger: final flush done \({accepted} buffered shares\)$",
        r"^ledger store sqlite:.* closed$",
        r"^stopped ledger$",
        r"^poold stopped$",
    ]
    at = [position(messages, p) for p in order]
    assert at == sorted(at), "shutdown out of order: " + ", ".join(
        f"{p} at {i}" for p, i in zip(order, at, strict=True))
    # Nothing was committed before the last flush: it committed every accepted share.
    assert not any(m.startswith("ledger: final flush failed") for m in messages)
    store = open_store(LedgerConfig.from_config(cfg).effective_url)
    await store.open()
    try:
        assert await store.share_count() == accepted
    finally:
        await store.close()


async def test_a_node_on_the_wrong_chain_ends_serve_with_1_and_no_task(
        devnet: Any, tmp_path: Path, caplog: Any) -> None:
    """A failure while starting (here the node check: regtest node, mainnet config) unwinds
    the Lifetime: the ledger started before it is closed, and no task is left behind."""
    path = write_config(tmp_path, devnet, free_port(), free_port())
    path.write_text(path.read_text().replace('network = "regtest"', 'network = "main"'))
    cfg = load_config(path)
    caplog.set_level(logging.DEBUG, logger="poold")
    before = asyncio.all_tasks()
    assert await asyncio.wait_for(serve(cfg), 30) == 1
    left = [t for t in asyncio.all_tasks() if t not in before and t is not asyncio.current_task()]
    assert not left, f"tasks left after serve() returned: {[t.get_name() for t in left]}"
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("poold")]
    at = [position(messages, p) for p in (
        r"is on chain 'regtest' but poold is configured for 'main'",  # the check failed
        r"^ledger store sqlite:.* closed$",  # the ledger, started first, closed on the way out
        r"^bitcoind check failed: ",  # what serve() says of it, having unwound
        r"^poold stopped$")]
    assert at == sorted(at), at
