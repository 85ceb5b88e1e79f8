"""Payments close the loop: a real wallet-less transaction on the devnet pays owed accounts,
and the ledger records it, from `poold ledger record-payment --txid` and from the reconcile
loop watching new blocks; `poold ledger payouts` then shows paid and still owed. Both backends.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from poold.bitcoin.address import Network, p2wpkh_address
from poold.cli import main
from poold.ledger import payments
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import BlockEvent, BlockStatus, Credit
from poold.ledger.store import LedgerStore, open_store
from poold.node.reader import NodeReader
from poold.node.rpc import RpcClient
from tests.ledger.helpers import block

REGTEST = Network.REGTEST


def addr() -> str:
    return p2wpkh_address(os.urandom(20), REGTEST)


async def owe(url: str, amounts: dict[str, int]) -> None:
    """A matured block whose PPLNS credits owe `amounts` (satoshis per account)."""
    store = open_store(url)
    await store.open()
    try:
        b = block(1, t=100.0)
        await store.insert_block(b, 1.0, [], BlockEvent(b.hash_hex, 1.0, "recorded", ""))
        await store.update_block(b.hash_hex, BlockStatus.MATURED, 100, 4.0, [],
                                 [Credit(b.hash_hex, a, v, "pplns", 4.0)
                                  for a, v in amounts.items()])
    finally:
        await store.close()


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def rpc_url(devnet: Any) -> str:
    host = devnet.rpc_url.removeprefix("http://")
    return f"http://{devnet.rpc_user}:{devnet.rpc_password}@{host}"


async def payouts(capsys: pytest.CaptureFixture[str], url: str) -> dict[str, tuple[int, int]]:
    code, out, err = await cli(capsys, "ledger", "payouts", "--ledger-url", url, "--json")
    assert code == 0, err
    return {r["account"]: (r["paid_sat"], r["owed_sat"]) for r in json.loads(out)["accounts"]}


@pytest.mark.slow
async def test_record_payment_reads_the_transaction_and_pays_owed_accounts(
    devnet: Any, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b, c, stranger = addr(), addr(), addr(), addr()
    await owe(ledger_url, {a: 30_000, b: 20_000, c: 10_000})
    await devnet.generate(101)  # a matured devnet coin to pay from
    txid = await devnet.send_test_transaction(
        outputs=[(a, 30_000), (b, 15_000), (stranger, 5_000)])
    base = ["--ledger-url", ledger_url, "--rpc", rpc_url(devnet), "--network", "regtest"]

    # In the mempool only: not recorded (it may never confirm) unless asked.
    code, _, err = await cli(capsys, "ledger", "record-payment", "--txid", txid, *base)
    assert code == 1 and "not in a block yet" in err, err
    assert await payouts(capsys, ledger_url) == {a: (0, 30_000), b: (0, 20_000),
                                                 c: (0, 10_000)}

    await devnet.generate(1)
    code, out, err = await cli(capsys, "ledger", "record-payment", "--txid", txid, *base)
    assert code == 0, err
    assert out.splitlines() == [
        f"recorded: 0.00030000 BTC to {a} ({a}) in {txid}",
        f"recorded: 0.00015000 BTC to {b} ({b}) in {txid}",
    ] or out.splitlines() == [  # accounts are listed in name order
        f"recorded: 0.00015000 BTC to {b} ({b}) in {txid}",
        f"recorded: 0.00030000 BTC to {a} ({a}) in {txid}",
    ], out
    assert await payouts(capsys, ledger_url) == {a: (30_000, 0), b: (15_000, 5_000),
                                                 c: (0, 10_000)}

    # The same transaction again: nothing counted twice.
    code, out, _ = await cli(capsys, "ledger", "record-payment", "--txid", txid, *base,
                             "--json")
    assert code == 0
    assert {(p["account"], p["recorded"]) for p in json.loads(out)["payments"]} == {
        (b, False)}  # a is no longer owed; b's payment was recorded before
    assert await payouts(capsys, ledger_url) == {a: (30_000, 0), b: (15_000, 5_000),
                                                 c: (0, 10_000)}

    # The human report: paid and still owed, in BTC.
    code, out, _ = await cli(capsys, "ledger", "payouts", "--ledger-url", ledger_url)
    assert code == 0
    row_b = next(line for line in out.splitlines() if line.startswith(b))
    assert row_b.split()[1:] == ["0.00020000", "BTC", "0.00015000", "BTC", "0.00005000", "BTC"]
    assert out.rstrip().endswith("still owed in total: 0.00015000 BTC")

    # An unknown transaction is a clear error.
    code, _, err = await cli(capsys, "ledger", "record-payment", "--txid", "ab" * 32, *base)
    assert code == 1 and "No such mempool or blockchain transaction" in err, err


@pytest.mark.slow
async def test_reconcile_loop_records_payouts_seen_in_new_blocks(
    devnet: Any, ledger_url: str, tmp_path: Path
) -> None:
    a, b = addr(), addr()
    await owe(ledger_url, {a: 40_000, b: 25_000})
    await devnet.generate(101)
    first = await devnet.send_test_transaction(outputs=[(a, 40_000)])
    await devnet.generate(1)
    not_owed = await devnet.send_test_transaction(outputs=[(addr(), 7_000)])
    await devnet.generate(1)
    second = await devnet.send_test_transaction(outputs=[(b, 10_000)])
    await devnet.generate(1)

    ledger = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path), network="regtest"))
    await ledger.start()
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    loop = asyncio.create_task(ledger.reconcile_forever(NodeReader([rpc]), 0.05))
    store: LedgerStore = ledger.store
    try:
        deadline = time.monotonic() + 30
        while await store.paid() != {a: 40_000, b: 10_000}:
            assert time.monotonic() < deadline, await store.payments()
            await asyncio.sleep(0.05)
        assert sorted((acct, txid) for acct, _, txid, _ in await store.payments()) == sorted(
            [(a, first), (b, second)])
        assert not_owed not in {t for *_, t, _ in await store.payments()}
        # Blocks already seen are not counted again.
        third = await devnet.send_test_transaction(outputs=[(b, 15_000)])
        await devnet.generate(1)
        while await store.paid() != {a: 40_000, b: 25_000}:
            assert time.monotonic() < deadline, await store.payments()
            await asyncio.sleep(0.05)
        assert len(await store.payments()) == 3
        assert third in {t for *_, t, _ in await store.payments()}
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await rpc.close()
        await ledger.stop()


class CountingNode(NodeReader):
    """The node adapter, counting the blocks the watcher reads."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.calls: list[str] = []

    async def getblock(self, hash_hex: str, verbosity: int) -> Any:
        self.calls.append(hash_hex)
        return await super().getblock(hash_hex, verbosity)


async def test_watcher_is_bounded_and_skips_blocks_when_nothing_is_owed(
    devnet: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    store = open_store(url)
    await store.open()
    await devnet.generate(30)
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    try:
        node = CountingNode([rpc])
        calls = node.calls
        watcher = payments.PaymentWatcher(store, REGTEST, payments.account_addresses(REGTEST),
                                          lookback=12, max_blocks=5)
        assert await watcher.scan(node) == []
        assert calls == [] and watcher.scanned == devnet.height  # nothing owed: no block read
        await owe(url, {addr(): 1000})
        await devnet.generate(8)
        await watcher.scan(node)
        assert len(calls) == 5 and watcher.scanned == devnet.height - 3  # at most 5 per round
        await watcher.scan(node)
        assert len(calls) == 8 and watcher.scanned == devnet.height
    finally:
        await rpc.close()
        await store.close()


def test_account_addresses() -> None:
    a = addr()
    address_of = payments.account_addresses(REGTEST, {"alice": a})
    assert address_of(a) == a  # an address is its own account
    assert address_of("alice") == a
    assert address_of("bob") is None  # a plain name with no address: never matched


async def test_watcher_resumes_from_its_kept_position_after_a_restart(
    devnet: Any, tmp_path: Path
) -> None:
    """The scan position is in the ledger: a new watcher (a restart) reads on from it, neither
    from its lookback (it would miss a payment further back) nor from zero."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    store = open_store(url)
    await store.open()
    a = addr()
    await owe(url, {a: 30_000})
    await devnet.generate(101)
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    try:
        node = CountingNode([rpc])
        calls = node.calls

        def watcher() -> payments.PaymentWatcher:
            return payments.PaymentWatcher(store, REGTEST, payments.account_addresses(REGTEST),
                                           lookback=5, max_blocks=50)

        first = watcher()
        await first.scan(node)
        assert first.scanned == devnet.height
        # While "down": a payment, then more blocks than the lookback.
        txid = await devnet.send_test_transaction(outputs=[(a, 30_000)])
        await devnet.generate(12)
        calls.clear()
        again = watcher()
        found = await again.scan(node)
        assert [(p.account, p.amount, p.txid_hex) for p in found] == [(a, 30_000, txid)]
        assert len(calls) == 12 and again.scanned == devnet.height  # only the new blocks
        assert await store.paid() == {a: 30_000}
    finally:
        await rpc.close()
        await store.close()


async def test_a_payment_from_an_orphaned_block_is_flagged_until_it_confirms_again(
    devnet: Any, ledger_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from poold.ledger import schema
    from tests.ledger.chain import mine

    a = addr()
    await owe(ledger_url, {a: 40_000})
    await devnet.generate(101)
    txid = await devnet.send_test_transaction(outputs=[(a, 40_000)])
    parent = devnet.tip_hash_hex
    [paid_in] = await devnet.generate(1)
    h = devnet.height
    store = open_store(ledger_url)
    await store.open()
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    node = NodeReader([rpc])
    watcher = payments.PaymentWatcher(store, REGTEST, payments.account_addresses(REGTEST),
                                      lookback=10)
    try:
        assert [p.txid_hex for p in await watcher.scan(node)] == [txid]
        assert await payouts(capsys, ledger_url) == {a: (40_000, 0)}

        # A longer rival branch from the block's parent, without the payment: a reorg.
        t = int((await rpc.call("getblockheader", parent))["time"]) + 1
        prev = parent
        for k in (1, 2):
            rival = mine(h - 1 + k, prev, [(b"\x51", 1000)], tag=b"/rival/", ntime=t + k)
            await devnet.submit_block(rival.raw)
            prev = rival.found.hash_hex
        assert devnet.tip_hash_hex == prev
        await watcher.scan(node)
        [(_t, _a, block_hash, _h, orphaned_at)] = await store.query(schema.PAYMENT_BLOCKS)
        assert block_hash == paid_in and orphaned_at is not None
        assert await payouts(capsys, ledger_url) == {a: (0, 40_000)}  # owed again, visibly
        assert watcher.scanned == h + 1  # the new branch was scanned

        # The transaction is back in the mempool: mined again, the payment counts again.
        [again] = await devnet.generate(1)
        await watcher.scan(node)
        [(_t, _a, block_hash, height, orphaned_at)] = await store.query(schema.PAYMENT_BLOCKS)
        assert (block_hash, height, orphaned_at) == (again, h + 2, None)
        assert await payouts(capsys, ledger_url) == {a: (40_000, 0)}
        assert len(await store.payments()) == 1  # moved, never counted twice
    finally:
        await rpc.close()
        await store.close()
