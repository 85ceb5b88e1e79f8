"""Benchmark: sustained accepted-share writes into the ledger, SQLite and PostgreSQL.

Run: `python -m tests.bench.ledger [--seconds 5] [--pool-rate 103000]` (PostgreSQL from
POOLD_TEST_PG_URL; `source .ci/postgres.sh && start_postgres` provides one).

The pool rate the target is 3x of: `--pool-rate`, by default 103,000 accepted shares per CPU-second
of one poold process, measured with sockets by `python -m tests.bench.stratum_throughput
--accepted` (1,000 connections x 4 pipelined submits; 49,766 at 10,000 x 1). Measured in this
run as well: the same accepted path in process (stratum bytes in through `Connection`, the share
check, `ShareEngine`, a real `Ledger.record_share`; no sockets, no event loop) per CPU-second, an
upper bound of the pool rate; each backend's throughput is printed as a ratio to both.

Three figures per backend:
1. store throughput: back-to-back batch commits of one flush interval's worth of shares at 3x
   the pool rate (the most the store can take), shares/s;
2. the Ledger end to end at an offered load of 3x the pool's accepted-share rate: shares are
   recorded on the event loop as the pool would, committed by the flusher every 100 ms; the
   p99 of batch commit time, the worst lag and the shares lost (must be 0);
3. baseline in the same run: the same batches into an in-memory SQLite database (no disk, no
   WAL), to read the figures as ratios on this (shared, noisy) machine;
4. the cost of the hash chain (poold.ledger.chain): store throughput with batches hashed into
   chain links against plain batches, alternating in the same run, as a ratio.

Last line, exactly:
`ledger sqlite_shares_per_s=<x> postgres_shares_per_s=<y> p99_commit_ms=<z> lost=<n>`
(x, y: store throughput; z: the worst end-to-end p99 batch commit of the two backends; n: the
accepted shares the end-to-end runs of both backends lost, target 0: every recorded share is
committed, from the buffer or from the spill file, before the run ends).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poold.ledger.chain import share_link
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import AcceptedShare
from poold.ledger.schema import INSERT_SHARE, MIGRATIONS, render
from poold.ledger.store import LedgerStore, open_store

# tests.bench.stratum_throughput --accepted, 1,000 conns x 4: accepted shares per CPU-second.
MEASURED_POOL_RATE = 103_000.0


def make_shares(n: int, t0: float) -> list[AcceptedShare]:
    return [AcceptedShare(worker=f"acct{i % 500}.rig{i % 7}", account=f"acct{i % 500}",
                          difficulty=65536.0, job_id=f"{i % 4096:x}", height=900_000,
                          time=t0 + i * 1e-5, instance_id=1) for i in range(n)]


def p99(xs: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (never above the maximum)."""
    if not xs:
        return 0.0
    ordered = sorted(xs)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


async def store_throughput(store: LedgerStore, batch: int, seconds: float,
                           chained: bool = True) -> tuple[float, float]:
    """Back-to-back commits of `batch` shares for `seconds` of commit time: (shares/s, p99
    commit ms). Share times increase from batch to batch as in a live pool (the (time, id)
    index is then append-only); building the batches is not timed, hashing them into their
    chain link (poold.ledger.chain) is."""
    lat: list[float] = []
    total = 0
    t0 = time.time()
    head = None
    chain_name = f"shares:bench:{uuid.uuid4().hex[:8]}"  # a fresh chain per call
    while sum(lat) < seconds:
        shares = make_shares(batch, t0 + len(lat))
        t = time.perf_counter()
        if chained:
            # As the flusher does: hash the batch into its chain link, then commit both, with
            # the batch's id (schema v6).
            head = share_link(chain_name, head, shares, t0)
            await store.insert_shares(shares, head, uuid.uuid4().hex)
        else:
            await store.insert_shares(shares)
        lat.append(time.perf_counter() - t)
        total += batch
    return total / sum(lat), p99(lat) * 1000


def baseline_memory(batch: int, seconds: float) -> float:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for stmt in MIGRATIONS[0]:
        conn.execute(render(stmt, "sqlite"))
    sql = render(INSERT_SHARE, "sqlite")
    total = 0
    spent = 0.0
    t0 = time.time()
    while spent < seconds:
        rows = [(s.instance_id, s.worker, s.account, s.difficulty, s.job_id, s.height, s.time)
                for s in make_shares(batch, t0 + total)]
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        spent += time.perf_counter() - t
        total += batch
    conn.close()
    return total / spent


def pool_accepted_rate(state_dir: Path, n: int = 100_000) -> float:
    """Accepted shares per CPU-second through the pool's in-process accepted path into a real
    Ledger buffer (four submits per read, as in the measured 1,000 x 4 run)."""
    from poold.stratum.server import Connection, ServerSettings, StratumServer
    from poold.stratum.session import SessionSettings
    from tests.bench.submit_path import NullTransport
    from tests.work.builders import ADDRESS, regtest_template, rig

    # Difficulty 1e-12: every random nonce is an accepted share, never a block (mainnet nBits).
    r = rig(regtest_template(hard=True), start=1e-12, min_difficulty=1e-12,
            settings=SessionSettings(invalid_limit=0))
    ledger = Ledger(LedgerConfig(url=f"sqlite:///{state_dir / 'unused.sqlite3'}",
                                 state_dir=str(state_dir), buffer_max_shares=n))
    r.engine.share_sink = ledger
    # One connection sends n submits at once: no per-connection message rate limit here.
    conn = Connection(StratumServer(r.ctx, ServerSettings(max_messages_per_s=1e12,
                                                          message_burst=1 << 40)), time.time())
    conn.connection_made(NullTransport())
    conn.data_received(
        b'{"id":1,"method":"mining.subscribe","params":["bench"]}\n'
        b'{"id":2,"method":"mining.authorize","params":["%s","x"]}\n' % ADDRESS.encode())
    job = next(reversed(r.book.jobs)).encode()
    assert r.book.template is not None
    curtime = r.book.template.curtime
    lines = [b'{"id":%d,"method":"mining.submit","params":["%s","%s","%016x","%08x","%s"]}\n'
             % (i, ADDRESS.encode(), job, i, curtime, os.urandom(4).hex().encode())
             for i in range(n)]
    reads = [b"".join(lines[i:i + 4]) for i in range(0, n, 4)]
    t0 = time.process_time()
    for data in reads:
        conn.data_received(data)
    spent = time.process_time() - t0
    if ledger.buffered != n or r.blocks:
        raise RuntimeError(f"accepted path: {ledger.buffered}/{n} shares, {len(r.blocks)} blocks")
    return n / spent


class TimedStore:
    """Delegates to a store and records the duration of each share batch commit."""

    def __init__(self, inner: LedgerStore) -> None:
        self.inner = inner
        self.commits: list[float] = []
        self.sizes: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def insert_shares(self, shares: Sequence[AcceptedShare], *a: Any) -> bool:
        t = time.perf_counter()
        stored: bool = await self.inner.insert_shares(shares, *a)
        self.commits.append(time.perf_counter() - t)
        self.sizes.append(len(shares))
        return stored


async def ledger_end_to_end(url: str, state_dir: Path, rate: float,
                            seconds: float) -> dict[str, float]:
    timed = TimedStore(open_store(url))
    ledger = Ledger(LedgerConfig(url=url, state_dir=str(state_dir), flush_interval_ms=100),
                    store=timed)
    await ledger.start()
    template = make_shares(4096, 0.0)
    recorded = 0
    worst_lag = 0.0
    start = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate)
            now = time.time()
            while recorded < due:
                s = template[recorded % 4096]
                ledger.record_share(AcceptedShare(s.worker, s.account, s.difficulty, s.job_id,
                                                  s.height, now, 1))
                recorded += 1
            worst_lag = max(worst_lag, ledger._shares.lag())
            await asyncio.sleep(0.001)
        offered_s = time.perf_counter() - start
        drain_start = time.perf_counter()
        while ledger.committed_shares + ledger.lost_shares < recorded:
            await asyncio.sleep(0.01)
            if time.perf_counter() - drain_start > 30:
                break
        drain_s = time.perf_counter() - drain_start
    finally:
        await ledger.stop()
    return {"recorded": recorded, "offered_per_s": recorded / offered_s,
            "committed": ledger.committed_shares, "lost": ledger.lost_shares,
            "spilled": ledger.spilled_shares,
            "p99_commit_ms": p99(timed.commits) * 1000,
            "max_commit_ms": max(timed.commits, default=0.0) * 1000,
            "mean_batch": statistics.fmean(timed.sizes) if timed.sizes else 0.0,
            "drain_after_s": drain_s, "worst_lag_ms": worst_lag * 1000}


async def pg_schema_url(base: str) -> tuple[str, str]:
    import asyncpg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}search_path={schema}", schema


async def pg_drop(base: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def bench_backend(name: str, url: str, state_dir: Path, pool_rate: float,
                        seconds: float) -> tuple[float, dict[str, float]]:
    target = 3 * pool_rate
    # What the flusher commits at 3x load: a flush interval's worth, capped per commit.
    batch = min(int(target * 0.1), LedgerConfig().batch_max_shares)
    store = open_store(url)
    await store.open()
    try:
        # The hash chain's cost: unchained and chained commits alternate, same run, same store.
        plain: list[float] = []
        chained: list[float] = []
        for _ in range(4):
            plain.append((await store_throughput(store, batch, seconds / 8, chained=False))[0])
            chained.append((await store_throughput(store, batch, seconds / 8))[0])
        per_s, store_p99 = await store_throughput(store, batch, seconds)
    finally:
        await store.close()
    print(f"{name}: hash chain: {statistics.median(chained):,.0f} shares/s chained vs "
          f"{statistics.median(plain):,.0f} unchained "
          f"({statistics.median(chained) / statistics.median(plain):.2f}x)")
    e2e = await ledger_end_to_end(url, state_dir, target, seconds)
    print(f"{name}: store {per_s:,.0f} shares/s in batches of {batch} "
          f"(p99 commit {store_p99:.1f} ms)")
    print(f"{name}: ledger at {e2e['offered_per_s']:,.0f} offered/s: committed "
          f"{e2e['committed']:,.0f}/{e2e['recorded']:,.0f}, lost {e2e['lost']:.0f}, spilled "
          f"{e2e['spilled']:,.0f}, mean batch "
          f"{e2e['mean_batch']:,.0f}, p99 commit {e2e['p99_commit_ms']:.1f} ms "
          f"(max {e2e['max_commit_ms']:.1f}), worst lag {e2e['worst_lag_ms']:.0f} ms, "
          f"drained {e2e['drain_after_s']:.2f} s after load")
    return per_s, e2e


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Seconds of commits per figure; 5 s gives ~150 commits, so the p99 is not just the maximum.
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pool-rate", type=float, default=MEASURED_POOL_RATE,
                    help="the pool's accepted shares per CPU-second (default: measured by "
                         "tests.bench.stratum_throughput --accepted, 1,000 conns x 4)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="poold-bench-") as tmp:
        inproc = pool_accepted_rate(Path(tmp))
    gc.collect()  # the rig's cycles: not left for a full collection during the timed runs
    source = ("measured, tests.bench.stratum_throughput --accepted 1,000 x 4"
              if args.pool_rate == MEASURED_POOL_RATE else "given by --pool-rate")
    print(f"pool: {args.pool_rate:,.0f} accepted shares/CPU-s ({source}); in process, "
          f"this run (no sockets, an upper bound): {inproc:,.0f}/CPU-s")
    batch = min(int(3 * args.pool_rate * 0.1), LedgerConfig().batch_max_shares)
    base = baseline_memory(batch, min(args.seconds, 2.0))
    print(f"baseline: in-memory SQLite {base:,.0f} shares/s (batches of {batch})")
    print(f"target: 3 x {args.pool_rate:,.0f} = {3 * args.pool_rate:,.0f} shares/s, p99 commit "
          "< 100 ms")
    with tempfile.TemporaryDirectory(prefix="poold-bench-") as tmp:
        sq_rate, sq = await bench_backend(
            "sqlite", f"sqlite:///{Path(tmp) / 'ledger.sqlite3'}", Path(tmp), args.pool_rate,
            args.seconds)
        print(f"sqlite: {sq_rate / base:.2f}x the in-memory baseline")
        pg_base = os.environ.get("POOLD_TEST_PG_URL")
        pg_rate = 0.0
        pg: dict[str, float] = {"p99_commit_ms": 0.0}
        if pg_base:
            url, schema = await pg_schema_url(pg_base)
            try:
                pg_rate, pg = await bench_backend("postgres", url, Path(tmp) / "pg",
                                                  args.pool_rate, args.seconds)
                print(f"postgres: {pg_rate / base:.2f}x the in-memory baseline")
            finally:
                await pg_drop(pg_base, schema)
        else:
            print("postgres: not measured (POOLD_TEST_PG_URL unset)")
    for name, rate in (("sqlite", sq_rate), ("postgres", pg_rate)):
        print(f"ratio {name}: {rate / args.pool_rate:.2f}x the pool rate "
              f"(target >= 3), {rate / inproc:.2f}x the in-process accepted path")
    worst = max(sq["p99_commit_ms"], pg["p99_commit_ms"])
    lost = int(sq["lost"] + pg.get("lost", 0.0))
    print(f"ledger sqlite_shares_per_s={sq_rate:.0f} postgres_shares_per_s={pg_rate:.0f} "
          f"p99_commit_ms={worst:.1f} lost={lost}")


if __name__ == "__main__":
    asyncio.run(main())
