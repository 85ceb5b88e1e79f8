"""The ledger's SQL schema and its versioned migrations, one logical schema for both backends.

Each migration is a list of statements written once in a common dialect and rendered for SQLite
or PostgreSQL by `render()`: `{id}` becomes the auto-increment key, `{float}` a double, and `?`
placeholders stay for SQLite and become `$1..$n` for PostgreSQL (asyncpg); a statement only one
backend needs is a `{key}` that renders to a no-op (`SELECT 1`) on the other. The version applied
is kept in `schema_version`; `open()` of a store applies the missing migrations in one transaction.
"""

from __future__ import annotations

import re
from typing import Literal

Dialect = Literal["sqlite", "postgres"]

_TYPES: dict[Dialect, dict[str, str]] = {
    # A plain rowid key (no AUTOINCREMENT bookkeeping): ids still grow since rows are never
    # deleted, and share inserts are the hot path.
    "sqlite": {"id": "INTEGER PRIMARY KEY", "float": "REAL", "big": "INTEGER", "bytes": "BLOB",
               "hour": "(CAST(time / 3600 AS INTEGER) * 3600)",
               "bucket": "(CAST(time / 10 AS INTEGER) * 10)",
               # A rowid table has no separate key index to drop.
               "drop_shares_pk": "SELECT 1"},
    "postgres": {"id": "BIGSERIAL PRIMARY KEY", "float": "DOUBLE PRECISION", "big": "BIGINT",
                 "bytes": "BYTEA",
                 "hour": "(floor(time / 3600) * 3600)",
                 "bucket": "(floor(time / 10) * 10)",
                 "drop_shares_pk": "ALTER TABLE shares DROP CONSTRAINT IF EXISTS shares_pkey"},
}

# Migrations in order; index + 1 is the schema version after applying it. Never edit a released
# migration: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE shares (
            id {id},
            instance_id INTEGER NOT NULL,
            worker TEXT NOT NULL,
            account TEXT NOT NULL,
            difficulty {float} NOT NULL,
            job_id TEXT NOT NULL,
            height INTEGER NOT NULL,
            time {float} NOT NULL)""",
        # PPLNS windows walk shares newest first by (time, id).
        "CREATE INDEX shares_time ON shares (time, id)",
        """CREATE TABLE blocks (
            hash_hex TEXT PRIMARY KEY,
            height INTEGER NOT NULL,
            prevhash_hex TEXT NOT NULL,
            worker TEXT NOT NULL,
            account TEXT NOT NULL,
            coinbase_txid_hex TEXT NOT NULL,
            reward {big} NOT NULL,
            fees {big} NOT NULL,
            network_difficulty {float} NOT NULL,
            block_hex TEXT NOT NULL,
            time {float} NOT NULL,
            instance_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            confirmations INTEGER NOT NULL DEFAULT 0,
            checked_at {float})""",
        "CREATE INDEX blocks_time ON blocks (time)",
        """CREATE TABLE block_outputs (
            block_hash_hex TEXT NOT NULL,
            n INTEGER NOT NULL,
            script_hex TEXT NOT NULL,
            address TEXT,
            value {big} NOT NULL,
            PRIMARY KEY (block_hash_hex, n))""",
        # No foreign keys: a submit result replayed from the fallback journal may reach the
        # store in a different transaction than its block.
        """CREATE TABLE submit_results (
            block_hash_hex TEXT NOT NULL,
            node TEXT NOT NULL,
            result TEXT,
            time {float} NOT NULL,
            PRIMARY KEY (block_hash_hex, node))""",
        """CREATE TABLE block_events (
            id {id},
            block_hash_hex TEXT NOT NULL,
            time {float} NOT NULL,
            event TEXT NOT NULL,
            detail TEXT NOT NULL)""",
        "CREATE INDEX block_events_hash ON block_events (block_hash_hex)",
        # UNIQUE makes crediting idempotent when several instances reconcile the same block.
        """CREATE TABLE credits (
            id {id},
            block_hash_hex TEXT NOT NULL,
            account TEXT NOT NULL,
            amount {big} NOT NULL,
            kind TEXT NOT NULL,
            time {float} NOT NULL,
            UNIQUE (block_hash_hex, account, kind))""",
        """CREATE TABLE payments (
            id {id},
            account TEXT NOT NULL,
            amount {big} NOT NULL,
            txid_hex TEXT NOT NULL,
            time {float} NOT NULL)""",
        """CREATE TABLE energy (
            id {id},
            worker TEXT NOT NULL,
            rack TEXT NOT NULL,
            t_start {float} NOT NULL,
            t_end {float} NOT NULL,
            joules {float} NOT NULL)""",
        "CREATE INDEX energy_time ON energy (t_start)",
    ),
    (
        # v2: share retention. Shares older than the retention horizon are rolled up per
        # (worker, account, hour) and deleted; reports read both (poold.ledger.ledger.prune).
        """CREATE TABLE share_rollups (
            worker TEXT NOT NULL,
            account TEXT NOT NULL,
            hour {float} NOT NULL,
            difficulty {float} NOT NULL,
            shares {big} NOT NULL,
            PRIMARY KEY (worker, account, hour))""",
        "CREATE INDEX share_rollups_hour ON share_rollups (hour)",
    ),
    (
        # v3: accepted difficulty per (account, 10 s bucket), kept in the same transaction as
        # the shares. PPLNS windows sum whole buckets and read single shares only in the two
        # buckets at the window's ends, so a window of millions of shares costs a few thousand
        # rows. Kept after share retention (small: accounts x buckets).
        """CREATE TABLE share_buckets (
            account TEXT NOT NULL,
            bucket {float} NOT NULL,
            difficulty {float} NOT NULL,
            shares {big} NOT NULL,
            PRIMARY KEY (account, bucket))""",
        "CREATE INDEX share_buckets_bucket ON share_buckets (bucket)",
        """INSERT INTO share_buckets (account, bucket, difficulty, shares)
            SELECT account, {bucket}, SUM(difficulty), COUNT(*) FROM shares
            GROUP BY account, {bucket}""",
    ),
    (
        # v4: no primary-key index on shares.id in PostgreSQL. Nothing looks a share up by id
        # (reads walk (time, id), retention deletes by time) and ids stay unique through their
        # sequence; the index was a third of the server's cost per share batch
        # (tests/bench/ledger.py). SQLite's key is the rowid itself: nothing to drop.
        "{drop_shares_pk}",
    ),
    (
        # v5: the tamper-evident hash chain (poold.ledger.chain, docs/AUDIT.md). A link is one
        # committed batch of one writer's shares (chain "shares:<instance>:<writer>") or one
        # set of credits ("credits"); it carries the hash of the previous link of its chain and
        # of its own rows. Shares and credits name their link; rows from before v5 have none.
        # t_first/t_last bound a share link's share times: its rows are found through the
        # (time, id) index, so share inserts pay for no further index.
        """CREATE TABLE chain_links (
            id {id},
            chain TEXT NOT NULL,
            seq {big} NOT NULL,
            n {big} NOT NULL,
            prev_hash {bytes} NOT NULL,
            hash {bytes} NOT NULL,
            time {float} NOT NULL,
            t_first {float},
            t_last {float},
            UNIQUE (chain, seq))""",
        "ALTER TABLE shares ADD COLUMN link {big}",
        "ALTER TABLE credits ADD COLUMN link {big}",
        # What a found block commits to, and what its payout was computed from: the chain head
        # ("<chain>:<seq>:<hash hex>") as of the finder's last flush, the payout settings in
        # force and (split) the PPLNS window the coinbase was planned from, as JSON.
        "ALTER TABLE blocks ADD COLUMN chain_head TEXT",
        "ALTER TABLE blocks ADD COLUMN settings TEXT",
        "ALTER TABLE blocks ADD COLUMN payout_window TEXT",
    ),
    (
        # v6: every share batch carries a random id from when the flusher forms it (kept when
        # it is spilled, stored with its link); the id is unique, so a batch whose commit
        # landed unanswered (a timeout), or landed before a crash kept its fsynced "done" line
        # from the spill file, is recognised at any later attempt and not paid twice.
        # Links stored before every batch had an id, and credits links, have NULLs (never a
        # conflict).
        "ALTER TABLE chain_links ADD COLUMN batch_id TEXT",
        "CREATE UNIQUE INDEX chain_links_batch ON chain_links (batch_id)",
    ),
    (
        # v7: a payment seen in a block names it (and its height), so one recorded from a
        # block that a reorg later took off the best chain is flagged (`orphaned_at`) and no
        # longer counts as paid until the transaction confirms again (poold.ledger.payments).
        # The payment watcher's scan position is kept here, so a restart resumes where it
        # stopped rather than looking back a fixed number of blocks.
        "ALTER TABLE payments ADD COLUMN block_hash_hex TEXT",
        "ALTER TABLE payments ADD COLUMN height INTEGER",
        "ALTER TABLE payments ADD COLUMN orphaned_at {float}",
        """CREATE TABLE scan_positions (
            name TEXT PRIMARY KEY,
            height INTEGER NOT NULL,
            hash_hex TEXT NOT NULL)""",
    ),
)

BUCKET_S = 10.0  # must match the {bucket} expression above

SCHEMA_VERSION = len(MIGRATIONS)

_PLACEHOLDER = re.compile(r"\?")


def render(sql: str, dialect: Dialect) -> str:
    """Render a common-dialect statement for one backend."""
    out = sql.format(**_TYPES[dialect])
    if dialect == "postgres":
        counter = iter(range(1, 10_000))
        out = _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", out)
    return out


def pending(current: int) -> list[tuple[int, tuple[str, ...]]]:
    """The migrations to apply on a database at version `current`, as (new_version, statements)."""
    if current > SCHEMA_VERSION:
        raise RuntimeError(
            f"ledger schema version {current} is newer than this poold ({SCHEMA_VERSION}); "
            "upgrade poold before opening this ledger")
    return [(i + 1, MIGRATIONS[i]) for i in range(current, SCHEMA_VERSION)]


# -- Statements shared by both stores (common dialect; see render()).

INSERT_SHARE = ("INSERT INTO shares (instance_id, worker, account, difficulty, job_id, height,"
                " time) VALUES (?, ?, ?, ?, ?, ?, ?)")
INSERT_BLOCK = (
    "INSERT INTO blocks (hash_hex, height, prevhash_hex, worker, account, coinbase_txid_hex,"
    " reward, fees, network_difficulty, block_hex, time, instance_id, status)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash_hex) DO NOTHING")
INSERT_OUTPUT = ("INSERT INTO block_outputs (block_hash_hex, n, script_hex, address, value)"
                 " VALUES (?, ?, ?, ?, ?) ON CONFLICT (block_hash_hex, n) DO NOTHING")
UPSERT_SUBMIT = (
    "INSERT INTO submit_results (block_hash_hex, node, result, time) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (block_hash_hex, node) DO UPDATE SET result = excluded.result,"
    " time = excluded.time")
INSERT_EVENT = "INSERT INTO block_events (block_hash_hex, time, event, detail) VALUES (?, ?, ?, ?)"
INSERT_CREDIT = ("INSERT INTO credits (block_hash_hex, account, amount, kind, time)"
                 " VALUES (?, ?, ?, ?, ?) ON CONFLICT (block_hash_hex, account, kind) DO NOTHING")
INSERT_PAYMENT = ("INSERT INTO payments (account, amount, txid_hex, time, block_hash_hex, height)"
                  " VALUES (?, ?, ?, ?, ?, ?)")
INSERT_ENERGY = ("INSERT INTO energy (worker, rack, t_start, t_end, joules)"
                 " VALUES (?, ?, ?, ?, ?)")
UPDATE_BLOCK = "UPDATE blocks SET status = ?, confirmations = ?, checked_at = ? WHERE hash_hex = ?"
BLOCK_STATUS = "SELECT status FROM blocks WHERE hash_hex = ?"
SHARES_PAGE_FIRST = ("SELECT id, account, difficulty, time FROM shares WHERE time <= ?"
                     " ORDER BY time DESC, id DESC LIMIT ?")
SHARES_PAGE_NEXT = ("SELECT id, account, difficulty, time FROM shares"
                    " WHERE (time < ? OR (time = ? AND id < ?))"
                    " ORDER BY time DESC, id DESC LIMIT ?")
SHARE_TOTALS = ("SELECT worker, SUM(difficulty) FROM shares WHERE time >= ? AND time < ?"
                " GROUP BY worker")
ROLLUP_TOTALS = ("SELECT worker, SUM(difficulty) FROM share_rollups WHERE hour >= ? AND hour < ?"
                 " GROUP BY worker")
# Roll up, then delete, the shares before a cutoff (one transaction per call).
ROLLUP_SHARES = (
    "INSERT INTO share_rollups (worker, account, hour, difficulty, shares)"
    " SELECT worker, account, {hour}, SUM(difficulty), COUNT(*) FROM shares WHERE time < ?"
    " GROUP BY worker, account, {hour}"
    " ON CONFLICT (worker, account, hour) DO UPDATE SET"
    " difficulty = share_rollups.difficulty + excluded.difficulty,"
    " shares = share_rollups.shares + excluded.shares")
DELETE_SHARES = "DELETE FROM shares WHERE time < ?"
UPSERT_BUCKET = (
    "INSERT INTO share_buckets (account, bucket, difficulty, shares) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (account, bucket) DO UPDATE SET"
    " difficulty = share_buckets.difficulty + excluded.difficulty,"
    " shares = share_buckets.shares + excluded.shares")
BUCKETS_PAGE = ("SELECT bucket, account, difficulty FROM share_buckets WHERE bucket < ?"
                " ORDER BY bucket DESC, account LIMIT ?")
BUCKET_ROWS = "SELECT account, difficulty FROM share_buckets WHERE bucket = ? ORDER BY account"
OLDEST_SHARE = "SELECT MIN(time) FROM shares"
SHARE_COUNT = "SELECT COUNT(*) FROM shares"
BLOCKS_SINCE = (
    "SELECT height, hash_hex, prevhash_hex, worker, account, coinbase_txid_hex, reward, fees,"
    " network_difficulty, time, instance_id, status, confirmations, checked_at"
    " FROM blocks WHERE time >= ? ORDER BY time, hash_hex")
OUTPUTS_SINCE = (
    "SELECT o.block_hash_hex, o.n, o.script_hex, o.address, o.value FROM block_outputs o"
    " JOIN blocks b ON b.hash_hex = o.block_hash_hex WHERE b.time >= ? ORDER BY o.n")
SUBMITS_SINCE = (
    "SELECT s.block_hash_hex, s.node, s.result, s.time FROM submit_results s"
    " JOIN blocks b ON b.hash_hex = s.block_hash_hex WHERE b.time >= ? ORDER BY s.node")
EVENTS_SINCE = (
    "SELECT e.block_hash_hex, e.time, e.event, e.detail FROM block_events e"
    " JOIN blocks b ON b.hash_hex = e.block_hash_hex WHERE b.time >= ? ORDER BY e.id")
BLOCK_HEX = "SELECT block_hex FROM blocks WHERE hash_hex = ?"
# Credits count only while their block stands: a rejected or orphaned block's credits drop out
# (and come back if a further reorg restores it), so no reversal rows are ever needed.
BALANCES = (
    "SELECT c.account, SUM(c.amount) FROM credits c JOIN blocks b ON b.hash_hex = c.block_hash_hex"
    " WHERE c.kind IN ({kinds}) AND b.status NOT IN ('orphaned', 'rejected') GROUP BY c.account")
CREDITS_FOR = "SELECT account, amount FROM credits WHERE block_hash_hex = ? AND kind = ?"
PAID = "SELECT account, SUM(amount) FROM payments WHERE orphaned_at IS NULL GROUP BY account"
PAYMENTS = "SELECT account, amount, txid_hex, time FROM payments ORDER BY id"
# v7: where each payment was seen, and the watcher's position (poold.ledger.payments).
PAYMENT_BLOCKS = ("SELECT txid_hex, account, block_hash_hex, height, orphaned_at FROM payments"
                  " ORDER BY id")
SET_PAYMENT_BLOCK = ("UPDATE payments SET block_hash_hex = ?, height = ?, orphaned_at = ?"
                     " WHERE txid_hex = ? AND account = ?")
SCAN_POSITION = "SELECT height, hash_hex FROM scan_positions WHERE name = ?"
UPSERT_SCAN_POSITION = (
    "INSERT INTO scan_positions (name, height, hash_hex) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET height = excluded.height, hash_hex = excluded.hash_hex")
ENERGY_BETWEEN = ("SELECT worker, rack, t_start, t_end, joules FROM energy"
                  " WHERE t_start >= ? AND t_start < ? ORDER BY t_start, id")

# -- The hash chain (v5; poold.ledger.chain, docs/AUDIT.md).

# A share link names its batch (v6; credits links have no batch id: NULLs never conflict).
# Not inserted when either unique key is taken: its (chain, seq), or its batch id (an earlier
# attempt of the batch committed); the store then reads which (LINK_HASH, BATCH_LINK).
INSERT_LINK = (
    "INSERT INTO chain_links (chain, seq, n, prev_hash, hash, time, t_first, t_last, batch_id)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
LINK_HASH = "SELECT hash FROM chain_links WHERE chain = ? AND seq = ?"
BATCH_LINK = "SELECT chain, seq, hash FROM chain_links WHERE batch_id = ?"
CHAIN_HEAD = ("SELECT seq, n, prev_hash, hash, time, t_first, t_last FROM chain_links"
              " WHERE chain = ? ORDER BY seq DESC LIMIT 1")
INSERT_SHARE_LINKED = ("INSERT INTO shares (instance_id, worker, account, difficulty, job_id,"
                       " height, time, link) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
CREDIT_EXISTS = ("SELECT 1 FROM credits WHERE block_hash_hex = ? AND account = ? AND kind = ?")
INSERT_CREDIT_LINKED = (
    "INSERT INTO credits (block_hash_hex, account, amount, kind, time, link)"
    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (block_hash_hex, account, kind) DO NOTHING")
SET_COMMITMENT = ("UPDATE blocks SET chain_head = ?, settings = ?, payout_window = ?"
                  " WHERE hash_hex = ?")
# Matured blocks are no longer polled one by one: their confirmations follow the tip.
MATURED_CONFIRMATIONS = ("UPDATE blocks SET confirmations = ? - height + 1"
                         " WHERE status = 'matured' AND confirmations < ? - height + 1")
