"""No accepted share dropped: a ledger driven far past its in-memory buffer while the store hangs
spills to disk, raises the back-pressure factor, and commits every share exactly once when the
store answers again; the share engine's vardiff reads that factor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.sharebuffer import PRESSURE_MAX
from poold.ledger.store import open_store
from poold.metrics import Metrics
from poold.work.vardiff import Vardiff
from tests.ledger.helpers import share
from tests.ledger.test_ledger import Flaky
from tests.waiting import until
from tests.work.builders import rig
from tests.work.test_engine import EASY, started, submit


async def stored_once(ledger: Ledger, ledger_url: str, recorded: int) -> None:
    """Every recorded share committed, none lost, and in the store exactly once."""
    assert ledger.lost_shares == 0 and ledger.committed_shares == recorded
    check = open_store(ledger_url)
    await check.open()
    try:
        assert await check.share_count() == recorded  # every one, none twice
    finally:
        await check.close()


async def test_ledger_past_its_buffer_counts_every_share(ledger_url: str,
                                                        tmp_path: Path) -> None:
    store = Flaky(open_store(ledger_url))
    cap = 5_000
    ledger = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path), flush_interval_ms=20,
                                 buffer_max_shares=cap, batch_max_shares=2_000),
                    store=store, metrics=Metrics(CollectorRegistry()))
    await ledger.start()
    recorded = 0
    most_buffered = 0
    pressure = 1.0
    try:
        store.stall.clear()  # every share write hangs: the flusher is stuck in one
        start = time.monotonic()
        while time.monotonic() - start < 2.5:  # ~20-40k shares/s: many times the buffer
            for _ in range(400):
                ledger.record_share(share(recorded, t=time.time()))
                recorded += 1
            most_buffered = max(most_buffered, ledger.buffered)
            pressure = max(pressure, ledger.pressure())
            await asyncio.sleep(0.01)
        assert recorded > 6 * cap
        assert most_buffered <= cap
        assert ledger.lost_shares == 0
        assert ledger.spilled_shares >= recorded - 2 * cap
        assert pressure > 1.0  # lagging by more than 2 s: vardiff aims at bigger shares
        store.stall.set()
        await until(lambda: ledger.committed_shares >= recorded, 30.0, "every share committed",
                    seen=lambda: (ledger.committed_shares, ledger.backlog))
        assert ledger.backlog == 0 and ledger.pressure() == 1.0
    finally:
        store.stall.set()
        await ledger.stop()
    await stored_once(ledger, ledger_url, recorded)


async def test_past_its_bound_with_the_spill_behind_too_the_ledger_keeps_every_share(
        ledger_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store hangs and the spill file lags (each spill append waits): memory goes past
    `buffer_max_shares`; every share is kept, one WARNING says so, the back-pressure factor is
    at its maximum, and when both answer again every share is committed once."""
    store = Flaky(open_store(ledger_url))
    cap = 2_000
    ledger = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path), flush_interval_ms=20,
                                 buffer_max_shares=cap, batch_max_shares=1_000),
                    store=store, metrics=Metrics(CollectorRegistry()))
    await ledger.start()
    spill = ledger._shares.spill
    disk = asyncio.Event()
    append = spill.append

    async def lagging_append(*a: Any, **kw: Any) -> None:
        await disk.wait()
        await append(*a, **kw)

    spill.append = lagging_append  # type: ignore[method-assign]
    recorded = 0
    try:
        store.stall.clear()
        while ledger.buffered <= 2 * cap and recorded < 20 * cap:
            for _ in range(500):
                ledger.record_share(share(recorded, t=time.time()))
                recorded += 1
            await asyncio.sleep(0.005)
        assert ledger.lost_shares == 0 and ledger.buffered > 2 * cap, ledger.buffered
        assert ledger.pressure() == PRESSURE_MAX
        warned = [r for r in caplog.records if "past ledger.buffer_max_shares" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelname == "WARNING"
        disk.set()
        store.stall.set()
        await until(lambda: ledger.committed_shares >= recorded, 30.0, "every share committed",
                    seen=lambda: (ledger.committed_shares, ledger.backlog))
    finally:
        disk.set()
        store.stall.set()
        await ledger.stop()
    await stored_once(ledger, ledger_url, recorded)


def test_vardiff_aims_at_bigger_shares_under_pressure() -> None:
    """Same miner, same shares and time: with the ledger's pressure at 4 the retarget asks for
    about 4x the difficulty it asks for without."""
    results = []
    for p in (1.0, 4.0):
        r = rig(start=EASY, min_difficulty=1e-13, vardiff=Vardiff(share_interval_s=10))
        r.engine.pressure = lambda p=p: p
        sw, job = started(r)
        for nonce in range(16):
            assert submit(r, sw, job, nonce=nonce) is None
        r.clock.now += 40.0  # 16 shares in 40 s: 2.5 s each, 4x faster than the goal
        assert r.engine.maybe_retarget(sw, r.clock.now)
        assert sw.pending is not None
        results.append(sw.pending)
    assert results[1] == results[0] * 4
