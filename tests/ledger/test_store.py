"""The LedgerStore contract, run on both real backends (SQLite file and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.errors import ConfigError
from poold.ledger import schema
from poold.ledger.records import (
    BlockEvent,
    BlockOutput,
    BlockStatus,
    Credit,
    EnergyRow,
    SubmitResult,
)
from poold.ledger.store import LedgerStore, StoreUnavailable, open_store, redact
from tests.ledger.helpers import block, share


async def opened(url: str) -> LedgerStore:
    store = open_store(url)
    await store.open()
    return store


async def test_migrations_applied_once_and_reopen(ledger_url: str) -> None:
    store = await opened(ledger_url)
    assert await store.schema_version() == schema.SCHEMA_VERSION
    await store.insert_shares([share(1)])
    await store.close()
    again = await opened(ledger_url)  # re-opening applies nothing and keeps the data
    try:
        assert await again.schema_version() == schema.SCHEMA_VERSION
        assert await again.share_count() == 1
    finally:
        await again.close()


async def test_shares_pages_newest_first(ledger_url: str) -> None:
    store = await opened(ledger_url)
    try:
        # Two shares share a timestamp: the id breaks the tie, newest (larger id) first.
        await store.insert_shares([share(i, account=f"a{i}", t=1000.0 + (i // 2))
                                   for i in range(10)])
        await store.insert_shares([share(10, account="late", t=5000.0)])
        page = await store.shares_page(1004.0, None, 3)
        assert [r.account for r in page] == ["a9", "a8", "a7"]
        nxt = await store.shares_page(1004.0, (page[-1].time, page[-1].id), 100)
        assert [r.account for r in nxt] == ["a6", "a5", "a4", "a3", "a2", "a1", "a0"]
        assert await store.share_count() == 11
        totals = await store.share_totals(1000.0, 1002.0)
        assert sum(totals.values()) == 4.0  # shares 0..3
    finally:
        await store.close()


async def test_block_roundtrip_is_idempotent(ledger_url: str) -> None:
    store = await opened(ledger_url)
    try:
        b = block(1)
        outs = [BlockOutput(n=i, script_hex=s.hex(), address="bcrt1qexample" if i == 0 else None,
                            value=v) for i, (s, v) in enumerate(b.coinbase_outputs)]
        ev = BlockEvent(b.hash_hex, 10.0, "recorded", "test")
        assert await store.insert_block(b, 4.6e-10, outs, ev) is True
        assert await store.insert_block(b, 4.6e-10, outs, ev) is False
        await store.upsert_submit_result(SubmitResult(b.hash_hex, "n1", None, 11.0),
                                         BlockStatus.SUBMITTED)
        await store.upsert_submit_result(SubmitResult(b.hash_hex, "n2", "high-hash", 12.0), None)
        await store.upsert_submit_result(SubmitResult(b.hash_hex, "n2", "duplicate", 13.0), None)
        [rec] = await store.blocks()
        assert rec.hash_hex == b.hash_hex and rec.height == b.height
        assert rec.status == BlockStatus.SUBMITTED
        assert rec.reward == b.reward and rec.fees == b.fees
        assert rec.outputs == tuple(outs)
        assert [(s.node, s.result) for s in rec.submits] == [("n1", None), ("n2", "duplicate")]
        assert [e.event for e in rec.events] == ["recorded"]
        assert await store.block_hex(b.hash_hex) == b.block_hex
        assert await store.blocks(b.time + 1) == []
    finally:
        await store.close()


async def test_credits_of_orphaned_blocks_drop_out(ledger_url: str) -> None:
    store = await opened(ledger_url)
    try:
        b1, b2 = block(1, t=100.0), block(2, t=200.0)
        for b, credits in ((b1, [Credit(b1.hash_hex, "x", 500, "split", 1.0),
                                 Credit(b1.hash_hex, "y", -500, "split", 1.0)]),
                           (b2, [Credit(b2.hash_hex, "x", 7, "split", 2.0),
                                 Credit(b2.hash_hex, "y", -7, "split", 2.0)])):
            await store.insert_block(b, 1.0, [], BlockEvent(b.hash_hex, 1.0, "recorded", ""),
                                     credits)
        assert await store.balances(["split"]) == {"x": 507, "y": -507}
        await store.update_block(b2.hash_hex, BlockStatus.ORPHANED, -1, 3.0,
                                 [BlockEvent(b2.hash_hex, 3.0, "orphaned", "reorg")], [])
        assert await store.balances(["split"]) == {"x": 500, "y": -500}
        # Crediting is idempotent per (block, account, kind).
        await store.add_credits([Credit(b1.hash_hex, "x", 500, "split", 1.0)])
        assert await store.balances(["split"]) == {"x": 500, "y": -500}
        await store.update_block(b1.hash_hex, BlockStatus.MATURED, 100, 4.0, [],
                                 [Credit(b1.hash_hex, "x", 90, "pplns", 4.0)])
        assert await store.balances(["pplns"]) == {"x": 90}
        assert await store.credits_for(b1.hash_hex, "pplns") == {"x": 90}
        await store.add_payment("x", 40, "ab" * 32, 5.0)
        assert await store.paid() == {"x": 40}
        [r1, r2] = await store.blocks()
        assert (r1.status, r2.status) == (BlockStatus.MATURED, BlockStatus.ORPHANED)
        assert [e.event for e in r2.events] == ["recorded", "orphaned"]
    finally:
        await store.close()


async def test_energy_rows(ledger_url: str) -> None:
    store = await opened(ledger_url)
    try:
        rows = [EnergyRow("w1", "r1", 0.0, 60.0, 180_000.0), EnergyRow("w2", "r1", 60.0, 120.0,
                                                                        90_000.0)]
        await store.insert_energy(rows)
        assert await store.energy(0.0, 61.0) == rows
        assert await store.energy(61.0, 200.0) == []
    finally:
        await store.close()


def test_bad_urls_name_the_key() -> None:
    for url in ("mysql://x", "sqlite://relative.db", "nonsense"):
        with pytest.raises(ConfigError) as exc:
            open_store(url, source="poold.toml")
        assert exc.value.key == "ledger.url"
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"


def test_render_placeholders() -> None:
    assert schema.render("SELECT ? , ?", "postgres") == "SELECT $1 , $2"
    assert schema.render("CREATE TABLE t (id {id})", "sqlite").endswith("INTEGER PRIMARY KEY)")


async def test_sqlite_unusable_path_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = open_store(f"sqlite:///{blocker / 'ledger.sqlite3'}")
    with pytest.raises(StoreUnavailable):
        await store.open()


# What v5 (the hash chain), v6 (spilled batch ids, on chain_links) and v7 (payment blocks, the
# scan position) added, undone.
UNDO_V5 = ["DROP TABLE chain_links", "ALTER TABLE shares DROP COLUMN link",
           "ALTER TABLE credits DROP COLUMN link", "ALTER TABLE blocks DROP COLUMN chain_head",
           "ALTER TABLE blocks DROP COLUMN settings",
           "ALTER TABLE blocks DROP COLUMN payout_window",
           "ALTER TABLE payments DROP COLUMN block_hash_hex",
           "ALTER TABLE payments DROP COLUMN height",
           "ALTER TABLE payments DROP COLUMN orphaned_at", "DROP TABLE scan_positions"]


async def downgrade_to_v1(url: str) -> None:
    """Make an opened ledger look like one written by a poold with schema v1."""
    stmts = ["DROP TABLE share_rollups", "DROP TABLE share_buckets", *UNDO_V5,
             "DELETE FROM schema_version WHERE version >= 2"]
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite://"):], isolation_level=None)
        try:
            for s in stmts:
                conn.execute(s)
        finally:
            conn.close()
        return
    import asyncpg

    pg = await asyncpg.connect(url)
    try:
        for s in stmts:
            await pg.execute(s)
    finally:
        await pg.close()


async def test_migration_from_v1_keeps_data(ledger_url: str) -> None:
    store = await opened(ledger_url)
    await store.insert_shares([share(i, t=1000.0 + i) for i in range(5)])
    await store.close()
    await downgrade_to_v1(ledger_url)
    store = await opened(ledger_url)
    try:
        assert await store.schema_version() == schema.SCHEMA_VERSION
        assert await store.share_count() == 5
        # v3 backfilled the buckets from the shares already there.
        assert await store.buckets_page(2000.0, 10) == [(1000.0, "acct", 5.0)]
        assert await store.prune_shares(1002.5) == 3  # the v2 table is there and works
    finally:
        await store.close()


async def test_v4_postgres_shares_keep_only_the_time_index(pg_url: str) -> None:
    """v4 drops the id key index of shares (write cost); a v3 ledger is migrated in place, its
    shares kept, and reads still page by (time, id)."""
    import asyncpg

    store = await opened(pg_url)
    await store.insert_shares([share(i, t=1000.0 + i // 2) for i in range(6)])
    await store.close()
    pg = await asyncpg.connect(pg_url)
    try:
        # Make it a v3 ledger again: the key as v1 created it, version 4 not applied.
        await pg.execute("ALTER TABLE shares ADD PRIMARY KEY (id)")
        for stmt in UNDO_V5:
            await pg.execute(stmt)
        await pg.execute("DELETE FROM schema_version WHERE version >= 4")
        store = await opened(pg_url)
        indexes = {r[0] for r in await pg.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'shares'"
            " AND schemaname = current_schema()")}
    finally:
        await pg.close()
    try:
        assert indexes == {"shares_time"}
        assert await store.schema_version() == schema.SCHEMA_VERSION
        await store.insert_shares([share(i, t=1003.0) for i in range(6, 8)])
        rows = await store.shares_page(2000.0, None, 100)
        assert [(r.time, r.id) for r in rows] == sorted(((r.time, r.id) for r in rows),
                                                        reverse=True)
        assert len({r.id for r in rows}) == len(rows) == 8
        cursor = (rows[2].time, rows[2].id)
        assert await store.shares_page(2000.0, cursor, 100) == rows[3:]
    finally:
        await store.close()


async def test_prune_rolls_up_by_hour(ledger_url: str) -> None:
    store = await opened(ledger_url)
    try:
        t0 = 1_700_000_000.0 - 1_700_000_000.0 % 3600  # an hour boundary
        shares = [share(i, account="a" if i % 2 else "b", worker="a.w" if i % 2 else "b.w",
                        difficulty=float(i + 1), t=t0 + i * 600.0) for i in range(12)]
        await store.insert_shares(shares)
        before = await store.share_totals(t0, t0 + 7200)
        assert await store.oldest_share_time() == t0
        assert await store.prune_shares(t0 + 3600 + 1) == 7  # the first hour and one more
        assert await store.prune_shares(t0 + 3600 + 1) == 0  # idempotent
        assert await store.share_count() == 5
        assert await store.oldest_share_time() == t0 + 7 * 600.0
        after = await store.share_totals(t0, t0 + 7200)
        assert after == before  # pruned shares still count, by the hour of their rollup
        assert await store.shares_page(t0 + 3600, None, 10) == []  # gone from PPLNS reads
    finally:
        await store.close()
