"""Share batches are idempotent (schema v6): every batch carries the random id the flusher gave
it, in every commit and in its spill record. A spilled batch whose commit landed but whose
fsynced `done` line did not (the process died in between), and a batch whose commit got no
answer and landed later (after the replay read the chain head), are recognised by their id and
not paid twice; the hash chain still verifies. Both real stores."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from poold.ledger import chain, journal, sharebuffer
from poold.ledger.config import LedgerConfig
from poold.ledger.journal import ShareSpill
from poold.ledger.ledger import Ledger
from poold.ledger.records import AcceptedShare
from poold.ledger.store import LedgerStore, StoreUnavailable, open_store
from poold.ledger.verify import verify
from tests.ledger.helpers import share
from tests.waiting import until

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

    await each_share_once(cfg, expected, weights, links=5, shares=20)


async def each_share_once(cfg: LedgerConfig, expected: dict[str, float],
                          weights: dict[str, float], *, links: int, shares: int) -> None:
    """The store holds `shares` shares in `links` links, each exactly once: difficulty per
    account in the shares, the PPLNS buckets and the window `weights` are `expected`, and
    the hash chain verifies."""
    store = open_store(cfg.effective_url)
    await store.open()
    try:
        assert await store.share_count() == shares
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
    assert (rep.links, rep.shares) == (links, shares)


class LateCommit:
    """A real store whose next share commit (`time_out_next`) gets no answer: the caller sees
    the command timeout, and the commit is kept to land later (`late`: the server applies it
    after all, as a COMMIT held in the network does). Until it lands, share commits are
    refused (the store answers reads, refuses writes). With `land_on_head_read`, it lands
    just after the next read of `chain`'s head: the reader's head is stale."""

    def __init__(self, inner: LedgerStore, chain_name: str) -> None:
        self.inner = inner
        self.chain_name = chain_name
        self.time_out_next = False
        self.land_on_head_read = False
        self.late: tuple[list[AcceptedShare], Any, Any] | None = None
        self.refused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def insert_shares(self, shares: Sequence[AcceptedShare], *a: Any) -> bool:
        if self.time_out_next:
            self.time_out_next = False
            link, batch_id = (*a, None, None)[:2]
            self.late = (list(shares), link, batch_id)
            raise StoreUnavailable("test: TimeoutError: no answer within the command timeout")
        if self.late is not None:
            self.refused += 1
            raise StoreUnavailable("test: writes refused")
        return await self.inner.insert_shares(shares, *a)

    async def chain_head(self, name: str) -> Any:
        head = await self.inner.chain_head(name)
        if self.land_on_head_read and name == self.chain_name and self.late is not None:
            late, self.late = self.late, None
            assert await self.inner.insert_shares(*late)  # the late commit lands
        return head


@pytest.mark.parametrize("case", ["spilled_after_the_timeout", "spilled_at_shutdown",
                                  "replayed_without_a_restart"])
async def test_a_late_commit_and_its_replay_never_both_count(
        ledger_url: str, tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's commit times out but lands later; shares keep coming, the batch is retried
    (refused) and spilled (by the spiller, or at shutdown), and the next flush (after a
    restart, or in the same process) reads the chain head just before the late commit lands,
    then replays the spill: every share counts exactly once. (Without the batch id kept from
    the first commit attempt, the retried batch, merged with newer shares or built on another
    head, hashed to another link and was stored again.)"""
    if case == "spilled_at_shutdown":
        monkeypatch.setattr(sharebuffer, "SPILL_AFTER_S", 3600.0)  # only shutdown spills
    cfg = LedgerConfig(url=ledger_url, state_dir=str(tmp_path), flush_interval_ms=10,
                       payout="pplns", network="regtest", fee_address="pool",
                       pplns_window_factor=1e6)
    now = time.time()
    early = [share(n, account="carol", difficulty=2.0, t=now - 5) for n in range(5)]
    batch = [share(10 + n, account="alice" if n % 3 else "bob", difficulty=1.0 + n, t=now)
             for n in range(20)]
    during = [share(40 + n, account="dave", difficulty=0.5, t=now) for n in range(10)]
    expected: dict[str, float] = {"carol": 3.0}  # the share after the replay
    for s in early + batch + during:
        expected[s.account] = expected.get(s.account, 0.0) + s.difficulty

    ledger = Ledger(cfg, store=LateCommit(open_store(ledger_url), ""))
    store = ledger.store
    assert isinstance(store, LateCommit)
    weights: dict[str, float] = {}
    await ledger.start()
    try:
        for s in early:
            ledger.record_share(s)
        await until(lambda: ledger.committed_shares == 5, 10, "the early shares committed")
        store.time_out_next = True
        for s in batch:
            ledger.record_share(s)
        await until(lambda: store.late is not None, 10, "the commit timed out")
        for s in during:
            ledger.record_share(s)
        await until(lambda: store.refused >= 2
                    and (case == "spilled_at_shutdown" or ledger.backlog
                         == ledger.spilled_shares == 30), 10,
                    "retries refused, the shares spilled",
                    seen=lambda: (store.late is not None, store.refused, ledger.backlog,
                                  ledger.spilled_shares))
        if case == "replayed_without_a_restart":
            store.chain_name, store.land_on_head_read = ledger.chain, True
            weights = await replay_after_the_landing(ledger, store, now)
    finally:
        await ledger.stop()
    assert ledger.lost_shares == 0 and ledger.spilled_shares == 30

    if case != "replayed_without_a_restart":
        assert store.late is not None  # not landed yet
        again = LateCommit(open_store(ledger_url), ledger.chain)
        again.late, again.land_on_head_read = store.late, True
        ledger = Ledger(cfg, store=again)
        await ledger.start()
        try:
            weights = await replay_after_the_landing(ledger, again, now)
        finally:
            await ledger.stop()
    await each_share_once(cfg, expected, weights, links=4, shares=36)


async def replay_after_the_landing(ledger: Ledger, store: LateCommit,
                                   now: float) -> dict[str, float]:
    """Wait for the late commit to land and the spill to be replayed; one more share (the
    chain goes on from the stored head); the PPLNS window's weights."""
    await until(lambda: store.late is None and ledger.backlog == 0, 20,
                "the late commit landed and the spill replayed",
                seen=lambda: (store.late is not None, ledger.backlog))
    ledger.record_share(share(50, account="carol", difficulty=3.0, t=now + 1))
    assert await ledger.flush()
    return await ledger.window_weights(1.0, now + 1000)
