"""The share spill replay is idempotent (schema v6): a spilled batch whose commit landed but
whose fsynced `done` line did not (the process died in between) is recognised by its batch id
at the next replay and not paid twice; the hash chain still verifies. Both real stores."""

from __future__ import annotations

from pathlib import Path

from poold.ledger import chain, journal
from poold.ledger.config import LedgerConfig
from poold.ledger.journal import ShareSpill
from poold.ledger.ledger import Ledger
from poold.ledger.store import open_store
from poold.ledger.verify import verify
from tests.ledger.helpers import share

T0 = 1_700_000_000.0


async def test_store_refuses_a_batch_id_it_has(ledger_url: str) -> None:
    store = open_store(ledger_url)
    await store.open()
    try:
        batch = [share(i, t=T0 + i) for i in range(4)]
        first = chain.share_link("shares:1:0", None, batch, 1.0)
        assert await store.insert_shares(batch, first, "b1") is True
        assert await store.insert_shares(batch, first, "b1") is True  # the same link: a retry
        # The same batch again as a new link (a replay after a crash): nothing written.
        again = chain.share_link("shares:1:0", first, batch, 2.0)
        assert await store.insert_shares(batch, again, "b1") is False
        assert await store.share_count() == 4
        assert await store.chain_head("shares:1:0") == first
        assert await store.buckets_page(T0 + 100, 10) == [(T0, "acct", 4.0)]
        # Another batch id is another batch.
        assert await store.insert_shares(batch, again, "b2") is True
        assert await store.share_count() == 8
    finally:
        await store.close()


def totals(weights: dict[str, float]) -> dict[str, float]:
    return {a: round(w, 6) for a, w in sorted(weights.items())}


async def test_a_spill_batch_committed_before_a_crash_is_not_paid_twice(
        ledger_url: str, tmp_path: Path) -> None:
    cfg = LedgerConfig(url=ledger_url, state_dir=str(tmp_path), payout="pplns",
                       network="regtest", fee_address="pool", pplns_window_factor=1e6)
    # A process spilled three batches during a store outage, then stopped.
    shares = [share(n, account="alice" if n % 3 else "bob", difficulty=1.0 + n, t=T0 + n)
              for n in range(18)]
    spill = ShareSpill(journal.spill_path(cfg.journal_path))
    await spill.load()
    for b in range(3):
        await spill.append(shares[b * 6:(b + 1) * 6])
    spilled = spill.path.read_bytes()
    expected: dict[str, float] = {}
    for s in shares:
        expected[s.account] = expected.get(s.account, 0.0) + s.difficulty

    # The next start replays the spill, and shares keep coming (the head moves on past the
    # replayed batches)...
    ledger = Ledger(cfg)
    await ledger.start()
    try:
        assert await ledger.flush()
        assert ledger.committed_shares == 18
        ledger.record_share(share(50, account="carol", difficulty=7.0, t=T0 + 50))
        assert await ledger.flush()
    finally:
        await ledger.stop()
    assert not spill.path.exists()  # every batch retired
    expected["carol"] = 7.0
    # ... but it died after the store committed batches 2 and 3 and before their `done`
    # lines reached the disk: the spill file is as it was, batch 1 alone retired.
    spill.path.write_bytes(spilled + b'{"done":1}\n')

    ledger = Ledger(cfg)
    await ledger.start()
    try:
        assert await ledger.flush()
        assert ledger.backlog == 0 and not spill.path.exists()
        assert ledger.committed_shares == 12  # counted as committed: they are
        ledger.record_share(share(60, account="carol", difficulty=3.0, t=T0 + 60))
        assert await ledger.flush()  # the chain goes on from the stored head
        weights = await ledger.window_weights(1.0, T0 + 1000)
    finally:
        await ledger.stop()
    expected["carol"] += 3.0

    store = open_store(ledger_url)
    await store.open()
    try:
        assert await store.share_count() == 20  # each share exactly once
        rows = await store.query("SELECT account, SUM(difficulty) FROM shares GROUP BY account")
        assert totals({a: float(d) for a, d in rows}) == totals(expected)
        rows = await store.query(
            "SELECT account, SUM(difficulty) FROM share_buckets GROUP BY account")
        assert totals({a: float(d) for a, d in rows}) == totals(expected)
        rep = await verify(store, cfg)  # what `poold ledger verify` runs
    finally:
        await store.close()
    assert totals(weights) == totals(expected)  # what PPLNS credits are computed from
    assert rep.ok, rep.problems
    assert (rep.links, rep.shares) == (5, 20)
