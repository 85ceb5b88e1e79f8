"""The Ledger front on both real backends: batching, durability, store outages, split plans."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.errors import ConfigError
from poold.ledger.chain import commitment_script
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import AcceptedShare, BlockStatus, FoundBlock
from poold.ledger.store import LedgerStore, StoreUnavailable, open_store
from poold.metrics import Metrics
from tests.ledger.helpers import block, share
from tests.waiting import until


def config(url: str, state_dir: Path, **kw: Any) -> LedgerConfig:
    return LedgerConfig(url=url, state_dir=str(state_dir), **kw)


class Flaky:
    """Wraps a real store; while `down`, writes fail; while `stall` is clear, share writes hang
    (a slow store). Everything else goes to the real store."""

    def __init__(self, inner: LedgerStore) -> None:
        self.inner = inner
        self.down = False
        self.stall = asyncio.Event()
        self.stall.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def insert_shares(self, shares: Sequence[AcceptedShare], *a: Any) -> bool:
        await self.stall.wait()
        if self.down:
            raise StoreUnavailable("test: down")
        return await self.inner.insert_shares(shares, *a)

    async def insert_block(self, *a: Any) -> bool:
        if self.down:  # a dead server: the write hangs
            await asyncio.Event().wait()
        return await self.inner.insert_block(*a)

    async def schema_version(self) -> int:
        if self.down:
            raise StoreUnavailable("test: down")
        return await self.inner.schema_version()

    async def block_status(self, h: str) -> BlockStatus | None:
        if self.down:
            raise StoreUnavailable("test: down")
        return await self.inner.block_status(h)


async def test_shares_committed_within_the_window(ledger_url: str, tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    ledger = Ledger(config(ledger_url, tmp_path, flush_interval_ms=50), metrics=metrics)
    await ledger.start()
    try:
        now = time.time()
        for i in range(5000):
            ledger.record_share(share(i, t=now))
        await asyncio.sleep(0.5)  # ten flush intervals; no explicit flush
        assert await ledger.store.share_count() == 5000
        assert ledger.buffered == 0 and ledger.committed_shares == 5000
        assert metrics.ledger_lag_seconds._value.get() == 0.0
    finally:
        await ledger.stop()


async def test_stop_flushes_everything(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(config(ledger_url, tmp_path, flush_interval_ms=60_000))
    await ledger.start()
    for i in range(1234):
        ledger.record_share(share(i))
    await ledger.stop()
    store = open_store(ledger_url)
    await store.open()
    try:
        assert await store.share_count() == 1234
    finally:
        await store.close()


async def test_block_and_submit_results(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(config(ledger_url, tmp_path, network="regtest"))
    await ledger.start()
    try:
        b = block(7)
        await ledger.record_block(b)
        [rec] = await ledger.blocks()  # durable before record_block returned
        assert rec.status == BlockStatus.RECORDED
        assert rec.network_difficulty == pytest.approx(4.656542373906925e-10)
        assert rec.outputs[0].address is not None and rec.outputs[0].address.startswith("bcrt1")
        await ledger.record_submit_result(b.hash_hex, "node-a", "bad-cb-amount")
        assert (await ledger.blocks())[0].status == BlockStatus.REJECTED
        await ledger.record_submit_result(b.hash_hex, "node-b", None)
        assert (await ledger.blocks())[0].status == BlockStatus.SUBMITTED
        await ledger.record_submit_result(b.hash_hex, "node-c", "rejected")
        [rec] = await ledger.blocks()
        assert rec.status == BlockStatus.SUBMITTED  # one acceptance is enough
        assert {s.node: s.result for s in rec.submits} == {
            "node-a": "bad-cb-amount", "node-b": None, "node-c": "rejected"}
        await ledger.record_block(b)  # a repeat is harmless
        assert len(await ledger.blocks()) == 1
    finally:
        await ledger.stop()


async def test_slow_store_never_blocks_and_a_failing_spill_counts_losses(
        ledger_url: str, tmp_path: Path) -> None:
    """The store hangs: recording never waits on it. Past the in-memory bound a share is lost
    only when the spill file fails it too (here: every append raises, a full disk): what is
    over the bound is counted in poold_ledger_lost_shares, the rest committed later."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    store = Flaky(open_store(ledger_url))
    ledger = Ledger(config(ledger_url, tmp_path, flush_interval_ms=10, buffer_max_shares=2000),
                    store=store, metrics=metrics)
    await ledger.start()
    spill = ledger._shares.spill
    append = spill.append

    async def full_disk(*a: Any, **kw: Any) -> None:
        raise OSError(28, "No space left on device")

    try:
        store.stall.clear()  # every share write now hangs
        ledger.record_share(share(0))
        await asyncio.sleep(0.05)  # the flusher is stuck in a write of 1 share
        spill.append = full_disk  # type: ignore[method-assign]
        started = time.perf_counter()
        for i in range(1, 10_000):
            ledger.record_share(share(i))
        elapsed = time.perf_counter() - started
        assert elapsed < 0.5  # 10k calls: never waits on the store
        assert ledger.lost_shares == 0  # past the bound: kept until the spill fails them
        await until(lambda: ledger.lost_shares > 0, 5.0, "the failed spill's loss")
        assert ledger.buffered == 2000
        assert ledger.lost_shares == 10_000 - 1 - 2000
        assert metrics.ledger_lost_shares._value.get() == ledger.lost_shares
        from prometheus_client import generate_latest

        generate_latest(registry)  # a scrape runs the hooks
        assert metrics.ledger_lag_seconds._value.get() > 0  # the lag is visible
        # A found block is not held up by the stuck share writes.
        await asyncio.wait_for(ledger.record_block(block(1)), 2.0)
        spill.append = append  # type: ignore[method-assign]
        store.stall.set()
        await until(lambda: ledger.committed_shares == 2001, 5.0, "the kept shares committed")
        assert await store.inner.share_count() == 2001
    finally:
        spill.append = append  # type: ignore[method-assign]
        store.stall.set()
        await ledger.stop()


async def test_store_down_journals_blocks_and_replays(ledger_url: str, tmp_path: Path) -> None:
    store = Flaky(open_store(ledger_url))
    ledger = Ledger(config(ledger_url, tmp_path, flush_interval_ms=10,
                           block_write_timeout_s=60.0), store=store)
    await ledger.start()
    try:
        store.down = True
        for i in range(300):
            ledger.record_share(share(i))
        await asyncio.sleep(0.1)  # a share batch failed: the store is known to be down
        b = block(3)
        # Straight to the journal: the block does not wait out the 60 s store timeout.
        await asyncio.wait_for(ledger.record_block(b), 2.0)
        await ledger.record_submit_result(b.hash_hex, "n1", None)
        journal = ledger.config.journal_path
        assert journal.exists()
        assert b.hash_hex in journal.read_text()
        assert await store.inner.blocks() == []
        assert ledger.backlog == 300  # kept, not lost
        store.down = False
        for _ in range(200):
            await asyncio.sleep(0.02)
            if not journal.exists() and ledger.committed_shares == 300:
                break
        [rec] = await store.inner.blocks()
        assert rec.hash_hex == b.hash_hex and rec.status == BlockStatus.SUBMITTED
        assert [e.event for e in rec.events] == ["recorded"]
        assert "journal" in rec.events[0].detail
        assert await store.inner.share_count() == 300
        assert ledger.lost_shares == 0
    finally:
        await ledger.stop()


async def test_store_unreachable_at_start(tmp_path: Path) -> None:
    # A real outage: nothing listens on this port. start() does not fail; blocks go to the
    # journal; a later start with a reachable store replays them.
    bad = "postgresql://poold:poold@127.0.0.1:9/none"
    ledger = Ledger(config(bad, tmp_path))
    await asyncio.wait_for(ledger.start(), 10.0)
    b = block(9)
    await ledger.record_block(b)
    ledger.record_share(share(1))
    await ledger.stop()
    assert ledger.lost_shares == 0 and ledger.spilled_shares == 1  # spilled to disk, not lost
    good = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger2 = Ledger(config(good, tmp_path))
    await ledger2.start()
    try:
        assert [r.hash_hex for r in await ledger2.blocks()] == [b.hash_hex]
        assert not ledger2.config.journal_path.exists()
        await ledger2.flush()
        assert await ledger2.store.share_count() == 1
    finally:
        await ledger2.stop()


async def test_torn_journal_line_is_skipped(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    cfg = config(url, tmp_path)
    ledger = Ledger(config("postgresql://x:y@127.0.0.1:9/none", tmp_path))
    await ledger.start()
    await ledger.record_block(block(1))
    await ledger.stop()
    with cfg.journal_path.open("ab") as f:
        f.write(b'{"kind":"block","block":{"height":1}}\n')  # JSON, but not a whole record
        f.write(b'{"kind":"block","blo')  # a crash in the middle of a write
    ledger2 = Ledger(cfg)
    await ledger2.start()
    try:
        assert len(await ledger2.blocks()) == 1
        assert not cfg.journal_path.exists()  # replayed: every record retired
        # The two unreadable lines are kept aside for review, not dropped in silence.
        kept = cfg.journal_path.with_name(cfg.journal_path.name + ".unreadable")
        lines = (await asyncio.to_thread(kept.read_bytes)).splitlines()
        assert len(lines) == 2 and lines[1] == b'{"kind":"block","blo'
    finally:
        await ledger2.stop()


def regtest_address(n: int) -> str:
    return p2wpkh_address(bytes([n]) * 20, Network.REGTEST)


async def test_split_plan_updates_balances_when_its_block_is_found(ledger_url: str,
                                                                   tmp_path: Path) -> None:
    fee_addr = regtest_address(99)
    cfg = config(ledger_url, tmp_path, payout="split", network="regtest", fee_address=fee_addr,
                 fee_percent=1.0, dust_sat=1000, max_outputs=2, pplns_window_factor=1.0)
    ledger = Ledger(cfg)
    await ledger.start()
    try:
        a, b_, c = regtest_address(1), regtest_address(2), regtest_address(3)
        now = time.time() - 10
        for i, (acct, d) in enumerate([(a, 60.0), (b_, 30.0), (c, 0.5), (a, 100.0)]):
            # The oldest share (a, 100) is outside the window of 1 x difficulty 90.5.
            ledger.record_share(share(i, account=acct, difficulty=d, t=now - i))
        await ledger.flush()
        weights = await ledger.window_weights(90.5)
        assert weights == {a: 60.0, b_: 30.0, c: 0.5}
        outputs = await ledger.coinbase_outputs(100_000, 90.5)
        net = Network.REGTEST
        # Last, the commitment of the writer's chain head as of its last flush (a zero OP_RETURN).
        head = await ledger.store.chain_head(ledger.chain)
        assert head is not None
        assert outputs[-1] == (commitment_script(head.hash), 0)
        assert outputs[-2] == (address_to_script(fee_addr, net), 1000)
        assert sum(v for _, v in outputs) == 100_000
        paid = {s: v for s, v in outputs[:-2]}
        assert set(paid) == {address_to_script(a, net), address_to_script(b_, net)}
        witness = (bytes.fromhex("6a24aa21a9ed") + bytes(32), 0)
        found = block(5, outputs=(*outputs, witness))
        await ledger.record_block(found)
        balances = await ledger.split_balances()
        assert sum(balances.values()) == 0
        from poold.ledger.payouts import proportional

        # c's whole share (below dust) is carried: 99_000 * 0.5 / 90.5 = 546.96 -> 547.
        assert balances[c] == proportional(99_000, weights)[c] == 547
        # Orphaning the block takes its balance changes out again.
        await ledger.store.update_block(found.hash_hex, BlockStatus.ORPHANED, -1, 1.0, [], [])
        assert await ledger.split_balances() == {}
    finally:
        await ledger.stop()


async def test_two_instances_one_window_one_audit_log(ledger_url: str, tmp_path: Path) -> None:
    one = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path / "i1"), instance_id=1))
    two = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path / "i2"), instance_id=2))
    await asyncio.gather(one.start(), two.start())  # migrations race safely
    try:
        now = time.time() - 5
        for i in range(100):
            one.record_share(share(i, account="alice", t=now + i * 0.01, instance_id=1))
            two.record_share(share(i, account="bob", t=now + i * 0.01 + 0.005, instance_id=2))
        await asyncio.gather(one.flush(), two.flush())
        w1 = await one.window_weights(25.0)  # window = 2 x 25 = the newest 50 shares
        w2 = await two.window_weights(25.0)
        assert w1 == w2 == {"alice": 25.0, "bob": 25.0}
        await one.record_block(block(1, t=now + 1, instance_id=1))
        await two.record_block(block(2, t=now + 2, instance_id=2))
        for ledger in (one, two):
            assert [r.instance_id for r in await ledger.blocks()] == [1, 2]
    finally:
        await asyncio.gather(one.stop(), two.stop())


def test_config_errors_name_the_key() -> None:
    from poold.errors import ConfigError

    cases = [({"payout": "prop"}, "pool.payout"), ({"payout": "split"}, "pool.fee_address"),
             ({"payout": "reserve"}, "pool.reserve_address"),
             ({"dust_sat": 0}, "ledger.dust_sat"), ({"url": "mysql://x"}, "ledger.url")]
    for kw, key in cases:
        with pytest.raises(ConfigError) as exc:
            LedgerConfig(**kw).validate()
        assert exc.value.key == key


def test_found_block_keeps_block_hex_out_of_repr() -> None:
    b: FoundBlock = block(1)
    assert b.block_hex not in repr(b)


async def test_split_coinbase_fits_the_firmware_size_limit(tmp_path: Path) -> None:
    from poold.bitcoin.address import p2tr_address
    from poold.bitcoin.coinbase import DEFAULT_MAX_COINBASE_SIZE, build_coinbase
    from poold.bitcoin.tx import TxOut

    fee_addr = p2tr_address(bytes([200]) * 32, Network.REGTEST)
    cfg = config(f"sqlite:///{tmp_path / 'l.db'}", tmp_path, payout="split", network="regtest",
                 fee_address=fee_addr, fee_percent=1.0, dust_sat=1000, max_outputs=50)
    ledger = Ledger(cfg)
    await ledger.start()
    try:
        accounts = [p2tr_address(bytes([n]) * 32, Network.REGTEST) for n in range(40)]
        for i, a in enumerate(accounts):
            ledger.record_share(share(i, account=a, difficulty=1.0 + i, t=time.time() - 5))
        await ledger.flush()
        await ledger.refresh_split(1000.0)
        outputs = ledger.split_outputs(312_500_000, 1000.0)
        assert 2 <= len(outputs) < 40  # capped by bytes, not by max_outputs = 50
        assert sum(v for _, v in outputs) == 312_500_000
        commitment = bytes.fromhex("6a24aa21a9ed") + bytes(32)
        parts = build_coinbase(840_000, [TxOut(v, s) for s, v in outputs],
                               tag=b"/a-long-pool-tag-for-the-worst-case/"[:60],
                               witness_commitment_script=commitment)
        assert parts.size <= DEFAULT_MAX_COINBASE_SIZE
    finally:
        await ledger.stop()


async def test_retention_prunes_old_shares_only(ledger_url: str, tmp_path: Path) -> None:
    day = 86400.0
    now = time.time()
    ledger = Ledger(config(ledger_url, tmp_path, share_retention_s=2 * day))
    await ledger.start()
    try:
        # One share every 3 hours over 90 hours, each half an hour off the hour so that none
        # sits on the 48 h retention edge (the retention task may run with a later `now`).
        def age(i: int) -> float:
            return (90 - 3 * i) * 3600 + 1800

        for i in range(30):
            ledger.record_share(share(i, account=f"a{i % 3}", t=now - age(i)))
        await ledger.flush()
        totals = await ledger.store.share_totals(0, now + 1)
        await ledger.prune(now)  # (the retention task may have started on it already)
        old = sum(1 for i in range(30) if age(i) > 2 * day)
        assert old == 15
        assert await ledger.store.share_count() == 30 - old
        oldest = await ledger.store.oldest_share_time()
        assert oldest is not None and oldest >= now - 2 * day
        assert await ledger.store.share_totals(0, now + 1) == pytest.approx(totals)
        assert await ledger.prune(now) == 0
    finally:
        await ledger.stop()
    with pytest.raises(ConfigError):
        LedgerConfig(share_retention_s=3600).validate()


async def test_stop_completes_a_write_in_flight(ledger_url: str, tmp_path: Path) -> None:
    store = Flaky(open_store(ledger_url))
    ledger = Ledger(config(ledger_url, tmp_path, flush_interval_ms=10), store=store)
    await ledger.start()
    store.stall.clear()
    for i in range(500):
        ledger.record_share(share(i))
    await asyncio.sleep(0.05)  # the flusher is now inside a (stalled) write of 500 shares
    stopping = asyncio.create_task(ledger.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the write, not cutting it off
    store.stall.set()
    await asyncio.wait_for(stopping, 10)
    assert ledger.lost_shares == 0
    check = open_store(ledger_url)
    await check.open()
    try:
        assert await check.share_count() == 500
    finally:
        await check.close()


async def test_stop_with_a_hung_store_spills_every_share(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import poold.ledger.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "_STOP_GRACE_S", 0.2)
    url = f"sqlite:///{tmp_path / 'l.db'}"
    store = Flaky(open_store(url))
    ledger = Ledger(config(url, tmp_path, flush_interval_ms=10), store=store)
    await ledger.start()
    store.stall.clear()  # never released: a hung store
    for i in range(300):
        ledger.record_share(share(i))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(ledger.stop(), 5)  # bounded, does not hang with the store
    # Not lost: the in-flight batch came back and went to the spill file with the rest.
    assert ledger.lost_shares == 0
    assert ledger.spilled_shares == 300
    again = Ledger(config(url, tmp_path, flush_interval_ms=10))
    await again.start()
    try:
        await again.flush()
        assert await again.store.share_count() == 300
        assert not ledger_module.journal.spill_path(again.config.journal_path).exists()
    finally:
        await again.stop()


class SlowBlocks(Flaky):
    async def insert_block(self, *a: Any) -> bool:
        await asyncio.sleep(0.3)
        return await self.inner.insert_block(*a)


async def test_block_record_survives_a_cancelled_caller(ledger_url: str, tmp_path: Path) -> None:
    store = SlowBlocks(open_store(ledger_url))
    ledger = Ledger(config(ledger_url, tmp_path), store=store)
    await ledger.start()
    b = block(11)
    caller = asyncio.create_task(ledger.record_block(b))
    await asyncio.sleep(0.05)
    caller.cancel()  # e.g. the daemon shutting down while a block is being recorded
    with pytest.raises(asyncio.CancelledError):
        await caller
    await ledger.stop()  # waits for the record before closing the store
    check = open_store(ledger_url)
    await check.open()
    try:
        assert [r.hash_hex for r in await check.blocks()] == [b.hash_hex]
    finally:
        await check.close()


async def test_window_from_buckets_equals_share_by_share(ledger_url: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The bucketed window (whole 10 s buckets in the middle, single shares at both ends) is
    the exact PPLNS window: checked against the pure share-by-share definition."""
    import random

    import poold.ledger.planner as planner_module
    from poold.ledger.payouts import pplns_window

    monkeypatch.setattr(planner_module, "_PAGE", 7)  # exercise paging, incl. split buckets
    rng = random.Random(6)
    ledger = Ledger(config(ledger_url, tmp_path))
    await ledger.start()
    try:
        t0 = 1_700_000_000.0
        shares = [share(i, account=f"a{rng.randrange(9)}", difficulty=rng.choice([0.5, 1, 3]),
                        t=t0 + rng.uniform(0, 300)) for i in range(400)]
        shares += [share(400 + i, account="tie", t=t0 + 150.0) for i in range(5)]  # same time
        for s in shares:
            ledger.record_share(s)
        await ledger.flush()
        # Newest first by (time, id): by time, ties by recording order, reversed.
        ordered = sorted(enumerate(shares), key=lambda x: (x[1].time, x[0]), reverse=True)
        rows = [(s.time, s.account, s.difficulty) for _, s in ordered]
        for _ in range(25):
            upto = t0 + rng.uniform(-5, 310)
            size = rng.choice([0.25, 1.0, 7.5, 40.0, 200.0, 10_000.0])
            expected = pplns_window([(a, d) for t, a, d in rows if t <= upto], size)
            got = await ledger.window_weights(size / 2.0, until_time=upto)  # factor 2
            assert got.keys() == expected.keys()
            for a in expected:
                assert got[a] == pytest.approx(expected[a], rel=1e-9, abs=1e-9)
        # A window over every share reads single shares only at its two ends.
        read = 0
        real_page = ledger.store.shares_page

        async def counting(*a: Any) -> Any:
            nonlocal read
            page = await real_page(*a)
            read += len(page)
            return page

        monkeypatch.setattr(ledger.store, "shares_page", counting)
        assert sum((await ledger.window_weights(1e6, until_time=t0 + 400)).values()) == (
            pytest.approx(sum(s.difficulty for s in shares)))
        assert read < 40  # of 405 shares
    finally:
        await ledger.stop()


async def test_audit_records_the_coinbase_the_block_carries(tmp_path: Path) -> None:
    import dataclasses

    from tests.ledger.helpers import WITNESS_COMMITMENT

    ledger = Ledger(config(f"sqlite:///{tmp_path / 'l.db'}", tmp_path))
    await ledger.start()
    try:
        real = block(4)
        # The caller passes the payout outputs only (no witness commitment): the audit keeps
        # every output of the real coinbase and says nothing is wrong.
        told = dataclasses.replace(real, coinbase_outputs=real.coinbase_outputs[:1])
        await ledger.record_block(told)
        [rec] = await ledger.blocks()
        assert [(o.script_hex, o.value) for o in rec.outputs] == [
            (s.hex(), v) for s, v in real.coinbase_outputs]
        assert rec.outputs[-1].script_hex == WITNESS_COMMITMENT.hex()
        assert "differ" not in rec.events[0].detail
        # A caller whose outputs disagree with the block: the block wins, the event says so.
        other = block(5)
        wrong = dataclasses.replace(other, coinbase_outputs=((b"\x51", 1),),
                                    coinbase_txid_hex="ab" * 32)
        await ledger.record_block(wrong)
        rec5 = next(b for b in await ledger.blocks() if b.hash_hex == other.hash_hex)
        assert rec5.coinbase_txid_hex == other.coinbase_txid_hex
        assert "differ" in rec5.events[0].detail
    finally:
        await ledger.stop()
