"""The per-block proof end to end: a split block mined on the devnet (real JSON-RPC), exported
by `poold audit export`, checked by `poold audit verify --rpc` without the ledger database;
one altered credit (or a stale committed head) makes verify fail naming it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from poold.bitcoin.address import Network, p2wpkh_address
from poold.bitcoin.block import assemble_block
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import merkle_root
from poold.bitcoin.target import bits_to_target, target_to_difficulty
from poold.bitcoin.template import parse_gbt
from poold.bitcoin.tx import TxOut
from poold.cli import main
from poold.ledger import proof
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import FoundBlock
from poold.node.reader import NodeReader
from tests.ledger.helpers import share


def addr(n: int) -> str:
    return p2wpkh_address(bytes([n]) * 20, Network.REGTEST)


async def mine_block(devnet: Any, rpc: Any, ledger: Ledger, extranonce: int) -> str:
    """Plan a coinbase from the ledger as poold run does, grind it, submit it to the
    devnet and record it; returns its hash."""
    gbt = await rpc.call("getblocktemplate", {"rules": ["segwit"]})
    template = parse_gbt(gbt, received_at=time.time())
    netdiff = target_to_difficulty(template.target)
    planned = await ledger.coinbase_outputs(template.coinbase_value, netdiff)
    outputs = [TxOut(v, s) for s, v in planned]
    parts = build_coinbase(template.height, outputs, tag=b"/poold-proof/",
                           witness_commitment_script=template.witness_commitment_script)
    coinbase = parts.assemble(extranonce.to_bytes(4, "big"), bytes(8))
    header = BlockHeader(template.version, template.prevhash,
                         merkle_root([coinbase.txid, *template.txids]),
                         max(template.curtime, template.mintime), template.bits, 0)
    prefix, target = header.serialize()[:76], bits_to_target(template.bits)
    nonce = next(n for n in range(1 << 32) if int.from_bytes(hashlib.sha256(hashlib.sha256(
        prefix + n.to_bytes(4, "little")).digest()).digest(), "little") <= target)
    header = BlockHeader(header.version, header.prevhash, header.merkle_root, header.ntime,
                         header.bits, nonce)
    raw = assemble_block(header.serialize(), coinbase, [t.data for t in template.transactions])
    assert await devnet.submit_block(raw) is None
    await ledger.record_block(FoundBlock(
        height=template.height, hash_hex=header.hash_hex, prevhash_hex=template.prevhash_hex,
        worker="x.rig", account=addr(1), coinbase_txid_hex=coinbase.txid_hex,
        coinbase_outputs=tuple((o.script_pubkey, o.value) for o in coinbase.outputs),
        reward=template.coinbase_value, fees=0, block_hex=raw.hex(), time=time.time(),
        instance_id=1))
    await ledger.record_submit_result(header.hash_hex, "devnet", None)
    return header.hash_hex


def verify_cli(path: Path, devnet: Any) -> int:
    return main(["audit", "verify", str(path), "--rpc", devnet.rpc_url, "--rpc-user",
                 devnet.rpc_user, "--rpc-password", devnet.rpc_password])


@pytest.mark.slow
async def test_export_verifies_against_the_devnet_and_an_altered_credit_fails(
        devnet: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from poold.node.rpc import RpcClient

    await devnet.generate(1)
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    cfg = LedgerConfig(url=url, state_dir=str(tmp_path), payout="split", network="regtest",
                       fee_address=addr(200), fee_percent=1.5, dust_sat=10_000, max_outputs=3,
                       pplns_window_factor=1.0)
    ledger = Ledger(cfg)
    await ledger.start()
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    try:
        gbt = await rpc.call("getblocktemplate", {"rules": ["segwit"]})
        netdiff = target_to_difficulty(parse_gbt(gbt, received_at=time.time()).target)
        t0 = time.time() - 60
        # Five accounts: the smallest two carried (below dust or beyond max_outputs).
        for i, (n, weight) in enumerate([(1, 40), (2, 30), (3, 20), (4, 9.99), (5, 0.01)]):
            ledger.record_share(share(i, account=addr(n), difficulty=netdiff * weight / 100,
                                      t=t0 + i))
        await ledger.flush()
        first = await mine_block(devnet, rpc, ledger, 1)
        for i in range(5, 8):  # more shares, a second block on top of the carried balances
            ledger.record_share(share(i, account=addr(4), difficulty=netdiff / 10, t=t0 + i))
        await ledger.flush()
        second = await mine_block(devnet, rpc, ledger, 2)
        assert (await ledger.reconcile(NodeReader([rpc]))).ok
    finally:
        await rpc.close()
        await ledger.stop()

    # Export, as an outsider receives it: JSON and CSV, the same content.
    assert await asyncio.to_thread(main, ["audit", "export", "--ledger-url", url, "--format",
                                          "json", "-o", str(tmp_path / "e.json")]) == 0
    assert await asyncio.to_thread(main, ["ledger", "export", "--ledger-url", url, "--format",
                                          "csv", "-o", str(tmp_path / "e.csv")]) == 0
    doc = json.loads((tmp_path / "e.json").read_text())
    blocks = {b["hash"]: b for b in doc["blocks"]}
    b1 = blocks[first]
    assert b1["settings"]["payout"] == "split" and b1["settings"]["fee_ppm"] == 15_000
    assert b1["chain_head"].startswith("shares:1:0:1:")  # the head of the first flush
    assert blocks[second]["chain_head"].startswith("shares:1:0:2:")
    window = b1["window"]
    assert window["first_share_id"] is not None and window["last_share_id"] is not None
    assert set(window["weights"]) == {addr(n) for n in range(1, 6)}
    credited = {c["account"]: c["amount_sat"] for c in b1["credits"]}
    assert credited[addr(4)] > 0 and credited[addr(5)] > 0 and sum(credited.values()) == 0
    assert b1["status"] == "confirmed" and b1["confirmations"] == 2
    csv_blocks = {b["hash"]: b for b in proof.load_export((tmp_path / "e.csv").read_text())}
    assert csv_blocks[first]["credits"] == b1["credits"]
    assert csv_blocks[first]["window"]["weights"] == window["weights"]

    capsys.readouterr()
    for name in ("e.json", "e.csv"):
        assert await asyncio.to_thread(verify_cli, tmp_path / name, devnet) == 0
        assert "OK: 2 blocks match the node" in capsys.readouterr().out

    # One credit altered by a satoshi: verify names its block and account.
    for c in b1["credits"]:
        if c["account"] == addr(5):
            c["amount_sat"] += 1
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert await asyncio.to_thread(verify_cli, tmp_path / "bad.json", devnet) == 1
    out = capsys.readouterr().out
    assert f"FAILED: first mismatch: block {b1['height']} {first}" in out
    assert f"account {addr(5)!r}" in out.splitlines()[0]

    # A committed head that is not the one in the coinbase.
    doc = json.loads((tmp_path / "e.json").read_text())
    b2 = next(b for b in doc["blocks"] if b["hash"] == second)
    b2["chain_head"] = b1["chain_head"]
    (tmp_path / "bad2.json").write_text(json.dumps(doc))
    assert await asyncio.to_thread(verify_cli, tmp_path / "bad2.json", devnet) == 1
    assert "is not the one the coinbase commits" in capsys.readouterr().out


@pytest.mark.slow
async def test_pplns_export_verifies_after_maturity(devnet: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from poold.node.rpc import RpcClient

    await devnet.generate(1)
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    cfg = LedgerConfig(url=url, state_dir=str(tmp_path), payout="pplns", network="regtest",
                       fee_address=addr(200), fee_percent=2.0, pplns_window_factor=1.0)
    ledger = Ledger(cfg)
    await ledger.start()
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    try:
        gbt = await rpc.call("getblocktemplate", {"rules": ["segwit"]})
        netdiff = target_to_difficulty(parse_gbt(gbt, received_at=time.time()).target)
        t0 = time.time() - 60
        for i, (n, weight) in enumerate([(1, 50), (2, 30), (3, 30)]):  # the oldest in part
            ledger.record_share(share(i, account=addr(n), difficulty=netdiff * weight / 100,
                                      t=t0 + i))
        await ledger.flush()
        found = await mine_block(devnet, rpc, ledger, 3)  # the coinbase pays the pool
        await devnet.generate(100)
        rep = await ledger.reconcile(NodeReader([rpc]))
        assert rep.changed == {found: ("submitted", "matured")}
    finally:
        await rpc.close()
        await ledger.stop()
    assert await asyncio.to_thread(main, ["audit", "export", "--ledger-url", url, "--format",
                                          "json", "-o", str(tmp_path / "e.json")]) == 0
    doc = json.loads((tmp_path / "e.json").read_text())
    [b] = doc["blocks"]
    assert b["status"] == "matured" and b["confirmations"] == 101
    assert b["chain_head"].startswith("shares:1:0:1:")
    credits = {c["account"]: c["amount_sat"] for c in b["credits"]}
    assert set(credits) == {addr(1), addr(2), addr(3)}
    assert sum(credits.values()) == b["reward_sat"] - b["reward_sat"] * 20_000 // 1_000_000
    capsys.readouterr()
    assert await asyncio.to_thread(verify_cli, tmp_path / "e.json", devnet) == 0
    assert "OK: 1 blocks match the node" in capsys.readouterr().out
    for c in b["credits"]:
        if c["account"] == addr(2):
            c["amount_sat"] -= 7
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    assert await asyncio.to_thread(verify_cli, tmp_path / "bad.json", devnet) == 1
    out = capsys.readouterr().out
    assert f"account {addr(2)!r}: credited" in out and "the window gives" in out
