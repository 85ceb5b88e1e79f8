"""Block audit: reconciliation against a node (a small fake, then the real devnet with a reorg),
and the CSV/JSON export."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.ledger import audit
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import BlockStatus
from tests.ledger.chain import mine
from tests.ledger.helpers import share

GENESIS_PREV = "00" * 32


class FakeNode:
    """A NodeClient over a dict: hash -> (confirmations, raw block). Unit tests only."""

    def __init__(self) -> None:
        self.chain: dict[str, tuple[int, bytes]] = {}
        self.best: dict[int, str] = {}
        self.tip = 10

    async def getblockhash(self, height: int) -> str:
        if height > self.tip:
            raise LookupError("Block height out of range")
        return self.best.get(height, "ff" * 32)

    async def getblockheader(self, hash_hex: str) -> dict[str, Any] | None:
        if hash_hex not in self.chain:
            return None
        return {"hash": hash_hex, "confirmations": self.chain[hash_hex][0]}

    async def getblock(self, hash_hex: str, verbosity: int) -> Any:
        assert verbosity == 0
        return self.chain[hash_hex][1].hex()


def addr(n: int) -> str:
    return p2wpkh_address(bytes([n]) * 20, Network.REGTEST)


def script(n: int) -> bytes:
    return address_to_script(addr(n), Network.REGTEST)


async def test_reconcile_life_of_a_block(ledger_url: str, tmp_path: Path) -> None:
    cfg = LedgerConfig(url=ledger_url, state_dir=str(tmp_path), payout="pplns",
                       fee_address=addr(9), fee_percent=2.0, network="regtest",
                       pplns_window_factor=1.0)
    ledger = Ledger(cfg)
    await ledger.start()
    node = FakeNode()
    try:
        t0 = time.time() - 100
        for i, acct in enumerate(["alice", "bob", "alice", "carol"]):
            ledger.record_share(share(i, account=acct, difficulty=1e-10, t=t0 + i))
        await ledger.flush()
        m = mine(1, GENESIS_PREV, [(script(9), 5_000_000_000)])
        await ledger.record_block(m.found)
        await ledger.record_submit_result(m.found.hash_hex, "n1", None)
        unknown = mine(2, m.found.hash_hex, [(script(9), 5_000_000_000)])
        await ledger.record_block(unknown.found)  # never accepted by any node

        node.chain[m.found.hash_hex] = (1, m.raw)
        rep = await ledger.reconcile(node)
        assert rep.ok and rep.unknown == [unknown.found.hash_hex]
        assert rep.changed == {m.found.hash_hex: ("submitted", "confirmed")}

        node.chain[m.found.hash_hex] = (-1, m.raw)  # a reorg took it off the best chain
        rep = await ledger.reconcile(node)
        assert rep.changed == {m.found.hash_hex: ("confirmed", "orphaned")}

        node.chain[m.found.hash_hex] = (100, m.raw)  # back, and deep enough to mature
        rep = await ledger.reconcile(node)
        assert rep.changed == {m.found.hash_hex: ("orphaned", "matured")}
        blocks = {b.hash_hex: b for b in await ledger.blocks()}
        rec = blocks[m.found.hash_hex]
        assert [e.event for e in rec.events] == ["recorded", "confirmed", "orphaned", "reorg",
                                                 "matured"]
        assert rec.confirmations == 100
        assert blocks[unknown.found.hash_hex].status == BlockStatus.RECORDED

        # PPLNS credits at maturity: the window (1 x regtest difficulty, 4.66e-10) holds all
        # four shares; 2% fee; exact.
        report = await ledger.payout_report()
        credited = {a: c for a, c, _, _ in report}
        assert sum(credited.values()) == 5_000_000_000 - 100_000_000
        weights = await ledger.window_weights(rec.network_difficulty, until_time=rec.time)
        from poold.ledger.payouts import proportional

        assert weights == {"alice": 2e-10, "bob": 1e-10, "carol": 1e-10}
        assert credited == proportional(4_900_000_000, weights)
        await ledger.record_payment("alice", 1000, "aa" * 32)
        owed = {a: o for a, _, _, o in await ledger.payout_report()}
        assert owed["alice"] == credited["alice"] - 1000
        # The offline report (a wallet process reads it) says the same.
        from poold.ledger import cli

        doc = json.loads(await asyncio.to_thread(cli.payout_report, ledger_url, "json"))
        assert {r["account"]: r["owed_sat"] for r in doc["accounts"]} == owed
        # Matured blocks are not polled again; the never-accepted block is polled until the
        # chain is 100 blocks past it, then settled for good.
        node.chain[m.found.hash_hex] = (150, m.raw)  # the tip moved on
        rep = await ledger.reconcile(node)
        assert rep.checked == 1 and rep.unknown == [unknown.found.hash_hex]
        # ... but their confirmations follow the tip: the export shows them live.
        [exported] = [b for b in await ledger.audit_blocks() if b["hash"] == m.found.hash_hex]
        assert exported["status"] == "matured" and exported["confirmations"] == 150
        assert {c["kind"] for c in exported["credits"]} == {"pplns"}
        assert exported["window"]["weights"] == weights
        assert exported["settings"]["fee_ppm"] == 20_000
        node.tip = unknown.found.height + 100
        rep = await ledger.reconcile(node)
        assert rep.checked == 0
        settled = {b.hash_hex: b for b in await ledger.blocks()}[unknown.found.hash_hex]
        assert settled.status == BlockStatus.RECORDED and settled.events[-1].event == "settled"
        assert (await ledger.reconcile(node)).checked == 0
    finally:
        await ledger.stop()


async def test_reconcile_flags_a_coinbase_that_differs(tmp_path: Path) -> None:
    ledger = Ledger(LedgerConfig(url=f"sqlite:///{tmp_path / 'l.db'}", state_dir=str(tmp_path)))
    await ledger.start()
    try:
        recorded = mine(5, GENESIS_PREV, [(script(1), 1000)])
        on_chain = mine(5, GENESIS_PREV, [(script(2), 1000)])
        await ledger.record_block(recorded.found)
        node = FakeNode()
        node.chain[recorded.found.hash_hex] = (3, on_chain.raw)
        rep = await ledger.reconcile(node)
        assert not rep.ok
        assert "coinbase txid" in rep.mismatches[recorded.found.hash_hex]
        [rec] = await ledger.blocks()
        assert rec.events[-2].event == "coinbase_mismatch"
    finally:
        await ledger.stop()


async def test_export_csv_and_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    ledger = Ledger(LedgerConfig(url=url, state_dir=str(tmp_path), network="regtest"))
    await ledger.start()
    try:
        m = mine(7, GENESIS_PREV, [(script(1), 3000), (script(2), 2000)], fees=500)
        await ledger.record_block(m.found)
        await ledger.record_submit_result(m.found.hash_hex, "core-a", None)
        await ledger.record_submit_result(m.found.hash_hex, "core-b", "inconclusive")
        text = await ledger.export("csv")
        [api_row] = await ledger.audit_blocks(None)
        assert api_row["hash"] == m.found.hash_hex
        assert [s["node"] for s in api_row["submits"]] == ["core-a", "core-b"]
        assert api_row["outputs"][1] == {"n": 1, "script_hex": script(2).hex(),
                                         "address": addr(2), "value_sat": 2000}
    finally:
        await ledger.stop()
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["item"] == "output"]
    assert [r["address"] for r in rows] == [addr(1), addr(2)]
    assert [int(r["amount_sat"]) for r in rows] == [3000, 2000]
    assert rows[0]["hash"] == m.found.hash_hex and rows[0]["fees_sat"] == "500"
    assert rows[0]["payout"] == "solo" and rows[0]["chain_head"] == ""  # no share yet
    # The synchronous export used by `poold audit export` reads the same ledger.
    # (it runs its own event loop, so from this async test it runs in a thread, as from a CLI)
    doc = json.loads(await asyncio.to_thread(audit.export, url, fmt="json"))
    [b] = doc["blocks"]
    assert b["coinbase_txid"] == m.found.coinbase_txid_hex
    assert [o["value_sat"] for o in b["outputs"]] == [3000, 2000]
    later = await asyncio.to_thread(audit.export, url, fmt="json", since="2999-01-01")
    assert json.loads(later)["blocks"] == []
    with pytest.raises(ValueError):
        await asyncio.to_thread(audit.export, url, fmt="xml")


def test_cli_audit_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from poold.ledger import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    args = parser.parse_args(["export", "--format", "csv", "--ledger-url", url])
    assert cli.run(args) == 0
    assert capsys.readouterr().out.startswith("height,hash,time,status")
    bad = parser.parse_args(["export", "--ledger-url", url, "--since", "yesterday-ish"])
    assert cli.run(bad) == 2
    capsys.readouterr()
    assert cli.run(parser.parse_args(["payouts", "--ledger-url", url, "--format", "json"])) == 0
    assert json.loads(capsys.readouterr().out) == {"accounts": []}


def test_parse_since() -> None:
    assert audit.parse_since(None) == 0.0
    assert audit.parse_since("1700000000") == 1_700_000_000.0
    assert audit.parse_since("2023-11-14T22:13:20") == 1_700_000_000.0
    assert audit.parse_since("2023-11-14T23:13:20+01:00") == 1_700_000_000.0


# -- the real thing: a devnet, a block we mined, a reorg by a longer competing chain


@pytest.mark.slow
async def test_devnet_reorg_orphans_and_restores_a_block(devnet: Any, tmp_path: Path) -> None:
    from poold.node.reader import NodeReader
    from poold.node.rpc import RpcClient

    await devnet.generate(1)
    base_hex = devnet.tip_hash_hex
    h = devnet.height
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = Ledger(LedgerConfig(url=url, state_dir=str(tmp_path), network="regtest"))
    await ledger.start()
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    node = NodeReader([rpc])
    try:
        t = int((await rpc.call("getblockheader", base_hex))["time"]) + 1
        ours = mine(h + 1, base_hex, [(script(1), 5_000_000_000)], tag=b"/ours/", ntime=t)
        assert await devnet.submit_block(ours.raw) is None
        await ledger.record_block(ours.found)
        await ledger.record_submit_result(ours.found.hash_hex, "devnet", None)
        rep = await ledger.reconcile(node)
        assert rep.ok and rep.changed == {ours.found.hash_hex: ("submitted", "confirmed")}

        # A competing chain of two blocks from the same parent: longer, so the node reorgs.
        rival1 = mine(h + 1, base_hex, [(script(2), 5_000_000_000)], tag=b"/rival/", ntime=t)
        rival2 = mine(h + 2, rival1.found.hash_hex, [(script(2), 5_000_000_000)],
                      tag=b"/rival/", ntime=t + 1)
        await devnet.submit_block(rival1.raw)
        assert await devnet.submit_block(rival2.raw) is None
        assert devnet.tip_hash_hex == rival2.found.hash_hex
        rep = await ledger.reconcile(node)
        assert rep.changed == {ours.found.hash_hex: ("confirmed", "orphaned")}
        [rec] = await ledger.blocks()
        assert rec.status == BlockStatus.ORPHANED and rec.confirmations == -1
        assert rival1.found.hash_hex in rec.events[-1].detail  # what replaced it

        # Our branch grows longer again: the block comes back and is confirmed once more.
        prev = ours.found
        for k in (2, 3):
            nxt = mine(h + k, prev.hash_hex, [(script(1), 5_000_000_000)], tag=b"/ours/",
                       ntime=t + k)
            await devnet.submit_block(nxt.raw)
            prev = nxt.found
        assert devnet.tip_hash_hex == prev.hash_hex
        rep = await ledger.reconcile(node)
        assert rep.ok and rep.changed == {ours.found.hash_hex: ("orphaned", "confirmed")}
        [rec] = await ledger.blocks()
        assert rec.confirmations == 3
        assert [e.event for e in rec.events] == ["recorded", "confirmed", "orphaned", "reorg"]
    finally:
        await rpc.close()
        await ledger.stop()


@pytest.mark.parametrize("prog", ["ledger", "audit"])
def test_cli_ledger_and_audit_share_output_and_error_mapping(
        prog: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`poold ledger export` and `poold audit export` write and fail alike (ledger.cli.emit):
    --output gets the text, an unwritable --output exits 2 and an unreachable database 1, each
    named on stderr."""
    import argparse

    from poold.ledger import audit_cli, cli

    parser = argparse.ArgumentParser()
    if prog == "ledger":
        cli.add_arguments(parser)
    else:
        audit_cli.add_arguments(parser)

    def run(*argv: str) -> int:
        args = parser.parse_args(["export", *argv])
        return cli.run(args) if prog == "ledger" else audit_cli.run(args)

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    out = tmp_path / "export.json"
    assert run("--json", "--ledger-url", url, "-o", str(out)) == 0
    assert json.loads(out.read_text())["blocks"] == []
    assert capsys.readouterr().out == ""
    assert run("--ledger-url", url, "-o", str(tmp_path)) == 2  # a directory
    err = capsys.readouterr().err
    assert err.startswith(f"poold {prog}: ") and str(tmp_path) in err
    down = "postgresql://poold:poold@127.0.0.1:9/nothing"  # discard port: nothing listens
    assert run("--ledger-url", down) == 1
    assert f"poold {prog}: the ledger database is unavailable" in capsys.readouterr().err
