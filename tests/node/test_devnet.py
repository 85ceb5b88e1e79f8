"""The node client against the devnet: real JSON-RPC, real ZMQ, Bitcoin Core's consensus."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from poold.bitcoin.block import assemble_block
from poold.bitcoin.byteorder import hash_to_hex, hash_to_int
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import merkle_root
from poold.bitcoin.template import Template, block_subsidy, parse_gbt
from poold.bitcoin.tx import TxOut
from poold.devnet.node import Devnet
from poold.metrics import Metrics
from poold.node.nodes import NodeSet, NodeSpec, TemplateTiming
from poold.node.rpc import RpcClient
from tests.node.fakenode import free_port
from tests.node.test_nodes import Published, eventually, tip_is


def node_spec(dn: Devnet, name: str = "devnet", *, cookie: bool = False) -> NodeSpec:
    if cookie:
        return NodeSpec(name, dn.rpc_url, rpc_cookie_file=dn.cookie_file,
                        zmq_hashblock=dn.zmq_url, timeout_s=2.0)
    return NodeSpec(name, dn.rpc_url, dn.rpc_user, dn.rpc_password,
                    zmq_hashblock=dn.zmq_url, timeout_s=2.0)


def node_set(*specs: NodeSpec, metrics: Metrics | None = None) -> NodeSet:
    # safety_poll_s is long so that what happens is ZMQ's doing (or a fallback's), not a poll's.
    return NodeSet(specs, chain="regtest",
                   templates=TemplateTiming(poll_interval_s=0.05, empty_first_ms=2.0),
                   metrics=metrics, safety_poll_s=60.0, health_backoff_cap_s=0.2)


@pytest.fixture
async def dn() -> AsyncIterator[Devnet]:
    async with Devnet() as d:
        await d.generate(101)
        yield d


async def subscribed(ns: NodeSet, dn: Devnet, name: str = "devnet") -> None:
    async with asyncio.timeout(5):
        await dn.wait_zmq_subscribers("hashblock")
    listener = ns.listener(name)
    assert listener is not None
    await eventually(lambda: listener.connected)
    await asyncio.sleep(0.2)  # the poller's last fast poll (from before ZMQ was up) is done


def mine(template: Template, script: bytes) -> bytes:
    """A valid block on `template` built with poold's primitives (regtest target: a few tries)."""
    parts = build_coinbase(
        template.height, [TxOut(template.coinbase_value, script)], tag=b"/poold-test/",
        witness_commitment_script=template.witness_commitment_script,
    )
    coinbase = parts.assemble(b"\x00" * 4, b"\x00" * 8)
    root = merkle_root([coinbase.txid, *template.txids])
    for nonce in range(1_000_000):
        header = BlockHeader(template.version, template.prevhash, root, template.curtime,
                             template.bits, nonce)
        if hash_to_int(header.hash) <= template.target:
            return assemble_block(header.serialize(), coinbase,
                                  [tx.data for tx in template.transactions])
    raise AssertionError("no nonce found")


async def test_devnet_template_with_transactions(dn: Devnet) -> None:
    txid1 = await dn.send_test_transaction(fee_sat=1500)
    txid2 = await dn.send_test_transaction(fee_sat=2500, unconfirmed=True)  # depends on txid1
    async with RpcClient(dn.rpc_url, user=dn.rpc_user, password=dn.rpc_password) as c:
        raw = await c.getblocktemplate(("segwit",))
    t = parse_gbt(raw, received_at=time.time())
    assert t.prevhash_hex == dn.tip_hash_hex and t.height == dn.height + 1
    assert [hash_to_hex(x) for x in t.txids] == [txid1, txid2]
    assert [tx.fee for tx in t.transactions] == [1500, 2500]
    assert all(tx.wtxid != tx.txid for tx in t.transactions)  # segwit spends
    assert t.witness_commitment_script is not None
    assert t.witness_commitment_script.startswith(bytes.fromhex("6a24aa21a9ed"))
    assert t.coinbase_value == block_subsidy(t.height, "regtest") + 4000
    # And a block built from it with poold's primitives is accepted by the kernel.
    assert await dn.submit_block(mine(t, dn.script_pubkey)) is None
    assert dn.height == t.height


async def test_new_tip_over_zmq(dn: Devnet) -> None:
    async with node_set(node_spec(dn)) as ns:
        got = Published()
        ns.subscribe(got)
        await subscribed(ns, dn)
        for _ in range(3):
            await dn.send_test_transaction()  # mined into the block below
            started = time.perf_counter()
            (h,) = await dn.generate(1)
            t = await got.until(tip_is(h), within=2.0)
            assert time.perf_counter() - started < 1.0
            assert t.height == dn.height + 1 and t.transactions == ()
        new_tips = [new for t, new, _ in got.items if t.prevhash_hex == h]
        assert new_tips[0] is True
        assert ns.status()[0].zmq == "ok"


async def test_submit_block_reaches_the_node(dn: Devnet) -> None:
    metrics = Metrics()
    async with node_set(node_spec(dn), metrics=metrics) as ns:
        assert ns.latest is not None
        template = ns.latest
        block = mine(template, dn.script_pubkey)
        assert await ns.submit_block(block) == {"devnet": None}
        assert dn.height == template.height
        # The same block again: the node's own BIP22 answer comes back.
        assert await ns.submit_block(block) == {"devnet": "duplicate"}
        # A sibling (same parent, other coinbase) lost the height: valid, not connected.
        assert await ns.submit_block(mine(template, b"\x51")) == {"devnet": "inconclusive"}
        # A block the node refuses outright: a corrupted header (high-hash or bad-txnmrklroot).
        bad = bytearray(mine(template, b"\x52"))
        bad[40] ^= 1
        refused = await ns.submit_block(bytes(bad))
        assert refused["devnet"] not in (None, "duplicate", "inconclusive")
        sample = metrics.registry.get_sample_value
        for result, count in (("accepted", 1), ("duplicate", 1), ("stale", 1), ("rejected", 1)):
            labels = {"node": "devnet", "result": result}
            assert sample("poold_block_submits_total", labels) == count, result


async def test_zmq_gap_triggers_a_resync(dn: Devnet) -> None:
    metrics = Metrics()
    async with node_set(node_spec(dn), metrics=metrics) as ns:
        got = Published()
        ns.subscribe(got)
        await subscribed(ns, dn)
        (h0,) = await dn.generate(1)
        await got.until(tip_is(h0))
        listener = ns.listener("devnet")
        assert listener is not None
        listener.drop_next(1)  # lost on the way
        (h1,) = await dn.generate(1)
        await asyncio.sleep(0.3)
        assert ns.latest is not None and ns.latest.prevhash_hex == h0  # missed, poller asleep
        (h2,) = await dn.generate(1)
        await got.until(tip_is(h2), within=2.0)
        assert metrics.registry.get_sample_value("poold_zmq_gaps_total", {"node": "devnet"}) == 1
        assert not any(t.prevhash_hex == h1 for t, _, _ in got.items)


async def test_devnet_restart_is_survived(tmp_path: Path) -> None:
    rpc_port, zmq_port = free_port(), free_port()
    datadir = tmp_path / "devnet"

    def devnet() -> Devnet:
        return Devnet(datadir, rpc_port=rpc_port, zmq_port=zmq_port, rpc_password="pw")

    dn = devnet()
    await dn.start()
    try:
        await dn.generate(1)
        spec = node_spec(dn, cookie=True)
        async with node_set(spec) as ns:
            got = Published()
            ns.subscribe(got)
            await subscribed(ns, dn)
            await dn.stop()
            await eventually(lambda: not ns.healthy(), within=5.0)
            dn = devnet()  # same datadir, same ports, a new cookie
            await dn.start()
            assert dn.height == 1
            await subscribed(ns, dn)
            await eventually(ns.healthy, within=5.0)
            (h,) = await dn.generate(1)
            t = await got.until(tip_is(h), within=3.0)
            assert t.height == 3
    finally:
        await dn.stop()


async def test_two_nodes_one_killed(tmp_path: Path) -> None:
    async with Devnet() as a, Devnet() as b:
        # b follows a's chain (as a peer would relay it).
        for h in await a.generate(3):
            raw = await a.read_block(bytes.fromhex(h)[::-1])
            assert raw is not None
            assert await b.submit_block(raw) is None
        assert a.tip_hash_hex == b.tip_hash_hex
        async with node_set(node_spec(a, "a"), node_spec(b, "b")) as ns:
            got = Published()
            ns.subscribe(got)
            await subscribed(ns, a, "a")
            await subscribed(ns, b, "b")
            assert ns.latest is not None and ns.latest.source == "a"
            await a.stop()
            (h,) = await b.generate(1)
            t = await got.until(tip_is(h), within=3.0)
            assert t.source == "b"
            block = mine(t, b.script_pubkey)
            results = await ns.submit_block(block)
            assert results["b"] is None and b.height == t.height
            assert results["a"] is not None and results["a"].startswith("error")


async def test_credentials_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with Devnet(rpc_password="s3cret-devnet-password") as dn:
        cookie_secret = dn.cookie_file.read_text().split(":", 1)[1] if dn.cookie_file else "?"
        async with node_set(node_spec(dn, "pw"), node_spec(dn, "cookie", cookie=True)) as ns:
            await dn.generate(1)
            await asyncio.sleep(0.2)
            text = caplog.text + repr(ns.client("pw")) + repr(ns.client("cookie"))
        bad = NodeSet([NodeSpec("bad", dn.rpc_url, "poold", "wrong-password-xyz", timeout_s=1)],
                      chain="regtest")
        with pytest.raises(Exception) as e:
            await bad.start()
        text += caplog.text + str(e.value)
    for secret in ("s3cret-devnet-password", cookie_secret, "wrong-password-xyz"):
        assert secret not in text


async def test_typed_calls(dn: Devnet) -> None:
    async with RpcClient(dn.rpc_url, cookie_file=dn.cookie_file) as c:
        assert (await c.validateaddress(dn.address))["isvalid"] is True
        assert (await c.validateaddress("bc1qnotanaddress"))["isvalid"] is False
        assert (await c.getmininginfo())["blocks"] == dn.height
        tip = await c.getbestblockhash()
        assert tip == dn.tip_hash_hex == await c.getblockhash(dn.height)
        header = await c.getblockheader(tip)
        assert header["height"] == dn.height and header["confirmations"] == 1
        await c.preciousblock(tip)
        info = await c.check("regtest")
        assert info.blocks == dn.height and info.version is not None
