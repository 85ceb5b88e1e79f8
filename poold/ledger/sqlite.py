"""SQLite adapter of `LedgerStore`: the embedded default, one file under the state directory.

sqlite3 is blocking, so the connection lives on one dedicated thread and every call is shipped
to it (`run_in_executor` on a single-worker pool): the event loop never waits on the disk.

Checkpoints: the writer never checkpoints (wal_autocheckpoint=0: copying WAL pages into the
database inside a share commit would add tens of ms to it); a second connection on its own thread
runs a PASSIVE checkpoint every `checkpoint_interval_s`, concurrently with the writer, so the
WAL is recycled and stays bounded.

Durability: WAL journal. Share batches commit with synchronous=NORMAL, which survives a crash or
`kill -9` of poold (the WAL is in the OS page cache) but may lose the last commits on power loss;
found blocks and submit results commit with synchronous=FULL (fsync before COMMIT returns).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from poold.ledger import chain, schema
from poold.ledger.backend import (
    SHARE_ROW,
    BatchStored,
    Commitment,
    StoreUnavailable,
    assemble_blocks,
    bucket_rows,
    settle_link,
)
from poold.ledger.records import (
    AcceptedShare,
    BlockEvent,
    BlockOutput,
    BlockRecord,
    BlockStatus,
    Credit,
    EnergyRow,
    FoundBlock,
    ShareRow,
    SubmitResult,
)

T = TypeVar("T")
log = logging.getLogger("poold.ledger.sqlite")


def _q(sql: str) -> str:
    return schema.render(sql, "sqlite")


_INSERT_SHARE = _q(schema.INSERT_SHARE)
_INSERT_SHARE_LINKED = _q(schema.INSERT_SHARE_LINKED)
_UPSERT_BUCKET = _q(schema.UPSERT_BUCKET)


class SqliteStore:
    """LedgerStore on a SQLite file in WAL mode, driven from one private thread."""

    name = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000,
                 checkpoint_interval_s: float = 0.5) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._checkpoint_interval_s = checkpoint_interval_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    # -- plumbing: everything below `_call` runs on the store thread

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise StoreUnavailable("sqlite store is not open")
        loop = asyncio.get_running_loop()

        def run() -> T:
            if self._conn is None:
                raise StoreUnavailable("sqlite store is closed")
            try:
                return fn(self._conn)
            except sqlite3.OperationalError as exc:  # locked, disk full, I/O error
                raise StoreUnavailable(f"sqlite: {exc}") from exc

        return await loop.run_in_executor(self._executor, run)

    @staticmethod
    def _tx(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T],
            *, durable: bool = False) -> T:
        if durable:
            conn.execute("PRAGMA synchronous=FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return out
        finally:
            if durable:
                conn.execute("PRAGMA synchronous=NORMAL")

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        loop = asyncio.get_running_loop()

        def connect() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
                mode = self._enable_wal(conn)
                if str(mode).lower() != "wal":
                    raise StoreUnavailable(f"sqlite: cannot enable WAL on {self.path} ({mode})")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint=0")
                self._migrate(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn

        try:
            await loop.run_in_executor(self._executor, connect)
        except (sqlite3.Error, OSError) as exc:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise StoreUnavailable(f"sqlite: cannot open {self.path}: {exc}") from exc
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._stop_checkpoints.clear()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                              name="ledger-sqlite-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        """Own thread, own connection: PASSIVE checkpoints never block the writer."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            while not self._stop_checkpoints.wait(self._checkpoint_interval_s):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.OperationalError as exc:
                    log.warning("ledger sqlite checkpoint failed (retrying): %s", exc)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            log.error("ledger sqlite checkpointer stopped: %s", exc)
        finally:
            conn.close()

    def _enable_wal(self, conn: sqlite3.Connection) -> str:
        # Switching to WAL takes an exclusive lock and does not wait on busy_timeout, so two
        # processes opening the same new file at once retry here for a while.
        deadline = time.monotonic() + self._busy_timeout_ms / 1000.0
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            for version, statements in schema.pending(current):
                for stmt in statements:
                    conn.execute(_q(stmt))
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def lead(self, role: str) -> bool:
        """One SQLite file is one host's ledger: the process that runs the singletons (a plain
        `poold run`, or worker 0) is the only one that asks."""
        return True

    async def close(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        loop = asyncio.get_running_loop()
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            self._stop_checkpoints.set()
            await asyncio.to_thread(checkpointer.join)

        def shut() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await loop.run_in_executor(executor, shut)
        executor.shutdown(wait=True)

    async def schema_version(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)

        return await self._call(q)

    # -- shares

    async def insert_shares(self, shares: Sequence[AcceptedShare],
                            link: chain.Link | None = None, batch_id: str | None = None) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            if link is None:
                conn.executemany(_INSERT_SHARE, map(SHARE_ROW, shares))
            else:
                try:
                    link_id = self._link(conn, link, batch_id)
                except BatchStored:
                    return False
                if link_id is None:
                    return True  # this very batch was committed before (a retry)
                # The link id as a literal: one statement per batch, rows as they come.
                conn.executemany(_INSERT_SHARE_LINKED.replace("?)", f"{int(link_id)})"),
                                 map(SHARE_ROW, shares))
            conn.executemany(_UPSERT_BUCKET, bucket_rows(shares))
            return True

        return await self._call(lambda conn: self._tx(conn, body))

    @staticmethod
    def _link(conn: sqlite3.Connection, link: chain.Link,
              batch_id: str | None = None) -> int | None:
        """Insert a chain link (with its batch's id); its id, or None if this very link is
        stored already. BatchStored: the batch id is stored with another link; ChainConflict:
        (chain, seq) holds another hash."""
        cur = conn.execute(_q(schema.INSERT_LINK), (
            link.chain, link.seq, link.n, link.prev_hash, link.hash, link.time, link.t_first,
            link.t_last, batch_id))
        if cur.rowcount == 1:
            return int(cur.lastrowid or 0)
        stored = conn.execute(_q(schema.LINK_HASH), (link.chain, link.seq)).fetchone()
        settle_link(link, None if batch_id is None else
                    conn.execute(_q(schema.BATCH_LINK), (batch_id,)).fetchone(),
                    None if stored is None else stored[0])
        return None

    async def chain_head(self, name: str) -> chain.Link | None:
        def q(conn: sqlite3.Connection) -> chain.Link | None:
            row = conn.execute(_q(schema.CHAIN_HEAD), (name,)).fetchone()
            return None if row is None else chain.Link(
                name, int(row[0]), int(row[1]), bytes(row[2]), bytes(row[3]), float(row[4]),
                row[5], row[6])

        return await self._call(q)

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        def q(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(_q(sql), params)]

        return await self._call(q)

    async def refresh_confirmations(self, tip_height: int) -> None:
        await self._call(lambda conn: self._tx(conn, lambda c: c.execute(
            _q(schema.MATURED_CONFIRMATIONS), (tip_height, tip_height))))

    async def buckets_page(self, before: float,
                           limit: int) -> list[tuple[float, str, float]]:
        def q(conn: sqlite3.Connection) -> list[tuple[float, str, float]]:
            return [(float(b), a, float(d))
                    for b, a, d in conn.execute(_q(schema.BUCKETS_PAGE), (before, limit))]

        return await self._call(q)

    async def bucket(self, bucket: float) -> dict[str, float]:
        def q(conn: sqlite3.Connection) -> dict[str, float]:
            return {a: float(d) for a, d in conn.execute(_q(schema.BUCKET_ROWS), (bucket,))}

        return await self._call(q)

    async def shares_page(self, until_time: float, cursor: tuple[float, int] | None,
                          limit: int) -> list[ShareRow]:
        def q(conn: sqlite3.Connection) -> list[ShareRow]:
            if cursor is None:
                rows = conn.execute(_q(schema.SHARES_PAGE_FIRST), (until_time, limit))
            else:
                rows = conn.execute(_q(schema.SHARES_PAGE_NEXT),
                                    (cursor[0], cursor[0], cursor[1], limit))
            return [ShareRow(id=r[0], account=r[1], difficulty=r[2], time=r[3]) for r in rows]

        return await self._call(q)

    async def share_totals(self, start: float, end: float) -> dict[str, float]:
        def q(conn: sqlite3.Connection) -> dict[str, float]:
            out: dict[str, float] = {}
            conn.execute("BEGIN")  # one snapshot: another process may prune in between
            try:
                for sql in (schema.SHARE_TOTALS, schema.ROLLUP_TOTALS):
                    for w, d in conn.execute(_q(sql), (start, end)):
                        out[w] = out.get(w, 0.0) + float(d)
            finally:
                conn.execute("COMMIT")
            return out

        return await self._call(q)

    async def prune_shares(self, before: float) -> int:
        def body(conn: sqlite3.Connection) -> int:
            conn.execute(_q(schema.ROLLUP_SHARES), (before,))
            return int(conn.execute(_q(schema.DELETE_SHARES), (before,)).rowcount)

        return await self._call(lambda conn: self._tx(conn, body))

    async def oldest_share_time(self) -> float | None:
        def q(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(schema.OLDEST_SHARE).fetchone()
            return None if row is None or row[0] is None else float(row[0])

        return await self._call(q)

    async def share_count(self) -> int:
        return await self._call(lambda c: int(c.execute(schema.SHARE_COUNT).fetchone()[0]))

    # -- blocks

    async def insert_block(self, block: FoundBlock, network_difficulty: float,
                           outputs: Sequence[BlockOutput], event: BlockEvent,
                           credits: Sequence[Credit] = (),
                           commitment: Commitment | None = None) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(_q(schema.INSERT_BLOCK), (
                block.hash_hex, block.height, block.prevhash_hex, block.worker, block.account,
                block.coinbase_txid_hex, block.reward, block.fees, network_difficulty,
                block.block_hex, block.time, block.instance_id, BlockStatus.RECORDED.value))
            if cur.rowcount == 0:
                return False
            conn.executemany(_q(schema.INSERT_OUTPUT), [
                (block.hash_hex, o.n, o.script_hex, o.address, o.value) for o in outputs])
            self._events(conn, [event])
            self._credits(conn, credits)
            if commitment is not None:
                conn.execute(_q(schema.SET_COMMITMENT), (*commitment, block.hash_hex))
            return True

        return await self._call(lambda conn: self._tx(conn, body, durable=True))

    async def upsert_submit_result(self, result: SubmitResult,
                                   status: BlockStatus | None) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute(_q(schema.UPSERT_SUBMIT),
                         (result.block_hash_hex, result.node, result.result, result.time))
            if status is not None:
                conn.execute("UPDATE blocks SET status = ? WHERE hash_hex = ?",
                             (status.value, result.block_hash_hex))

        await self._call(lambda conn: self._tx(conn, body, durable=True))

    async def block_status(self, hash_hex: str) -> BlockStatus | None:
        def q(conn: sqlite3.Connection) -> BlockStatus | None:
            row = conn.execute(_q(schema.BLOCK_STATUS), (hash_hex,)).fetchone()
            return None if row is None else BlockStatus(row[0])

        return await self._call(q)

    async def update_block(self, hash_hex: str, status: BlockStatus, confirmations: int,
                           checked_at: float, events: Sequence[BlockEvent],
                           credits: Sequence[Credit]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute(_q(schema.UPDATE_BLOCK),
                         (status.value, confirmations, checked_at, hash_hex))
            self._events(conn, events)
            self._credits(conn, credits)

        await self._call(lambda conn: self._tx(conn, body, durable=True))

    @staticmethod
    def _events(conn: sqlite3.Connection, events: Sequence[BlockEvent]) -> None:
        conn.executemany(_q(schema.INSERT_EVENT),
                         [(e.block_hash_hex, e.time, e.event, e.detail) for e in events])

    @staticmethod
    def _credits(conn: sqlite3.Connection, credits: Sequence[Credit]) -> None:
        """Credits not stored yet, as one link of the credits chain (BEGIN IMMEDIATE holds
        the write lock: the head read here is the head this link follows)."""
        rows = [(c.block_hash_hex, c.account, c.amount, c.kind, c.time) for c in credits
                if conn.execute(_q(schema.CREDIT_EXISTS),
                                (c.block_hash_hex, c.account, c.kind)).fetchone() is None]
        if not rows:
            return
        row = conn.execute(_q(schema.CHAIN_HEAD), (chain.CREDITS_CHAIN,)).fetchone()
        prev = None if row is None else chain.Link(
            chain.CREDITS_CHAIN, int(row[0]), 0, b"", bytes(row[3]), 0.0)
        link = chain.next_link(chain.CREDITS_CHAIN, prev, chain.encode_credit_rows(rows),
                               len(rows), max(r[4] for r in rows))
        link_id = SqliteStore._link(conn, link)
        conn.executemany(_q(schema.INSERT_CREDIT_LINKED), [(*r, link_id) for r in rows])

    async def add_events(self, events: Sequence[BlockEvent]) -> None:
        await self._call(lambda conn: self._tx(conn, lambda c: self._events(c, events)))

    async def blocks(self, since: float = 0.0) -> list[BlockRecord]:
        def q(conn: sqlite3.Connection) -> list[BlockRecord]:
            conn.execute("BEGIN")  # one snapshot for the four reads
            try:
                heads = conn.execute(_q(schema.BLOCKS_SINCE), (since,)).fetchall()
                outs = conn.execute(_q(schema.OUTPUTS_SINCE), (since,)).fetchall()
                subs = conn.execute(_q(schema.SUBMITS_SINCE), (since,)).fetchall()
                evs = conn.execute(_q(schema.EVENTS_SINCE), (since,)).fetchall()
            finally:
                conn.execute("COMMIT")
            return assemble_blocks(heads, outs, subs, evs)

        return await self._call(q)

    async def block_hex(self, hash_hex: str) -> str | None:
        def q(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(_q(schema.BLOCK_HEX), (hash_hex,)).fetchone()
            return None if row is None else str(row[0])

        return await self._call(q)

    # -- credits, payments, energy

    async def credits_for(self, block_hash_hex: str, kind: str) -> dict[str, int]:
        def q(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(_q(schema.CREDITS_FOR), (block_hash_hex, kind))
            return {a: int(v) for a, v in rows}

        return await self._call(q)

    async def add_credits(self, credits: Sequence[Credit]) -> None:
        await self._call(lambda conn: self._tx(conn, lambda c: self._credits(c, credits),
                                               durable=True))

    async def balances(self, kinds: Collection[str]) -> dict[str, int]:
        kinds = list(kinds)
        sql = _q(schema.BALANCES.replace("{kinds}", ", ".join("?" * len(kinds))))

        def q(conn: sqlite3.Connection) -> dict[str, int]:
            return {a: int(v) for a, v in conn.execute(sql, kinds)}

        return await self._call(q)

    async def add_payment(self, account: str, amount: int, txid_hex: str, time: float,
                          block_hash_hex: str | None = None, height: int | None = None) -> None:
        await self._call(lambda conn: self._tx(conn, lambda c: c.execute(
            _q(schema.INSERT_PAYMENT), (account, amount, txid_hex, time, block_hash_hex,
                                        height)), durable=True))

    async def set_payment_block(self, txid_hex: str, account: str, block_hash_hex: str | None,
                                height: int | None, orphaned_at: float | None) -> None:
        await self._call(lambda conn: self._tx(conn, lambda c: c.execute(
            _q(schema.SET_PAYMENT_BLOCK), (block_hash_hex, height, orphaned_at, txid_hex,
                                           account)), durable=True))

    async def set_scan_position(self, name: str, height: int, hash_hex: str) -> None:
        await self._call(lambda conn: self._tx(conn, lambda c: c.execute(
            _q(schema.UPSERT_SCAN_POSITION), (name, height, hash_hex))))

    async def paid(self) -> dict[str, int]:
        return await self._call(
            lambda conn: {a: int(v) for a, v in conn.execute(_q(schema.PAID))})

    async def payments(self) -> list[tuple[str, int, str, float]]:
        return await self._call(lambda conn: [
            (str(a), int(v), str(t), float(w)) for a, v, t, w in conn.execute(
                _q(schema.PAYMENTS))])

    async def insert_energy(self, rows: Sequence[EnergyRow]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.executemany(_q(schema.INSERT_ENERGY), [
                (r.worker, r.rack, r.t_start, r.t_end, r.joules) for r in rows])

        await self._call(lambda conn: self._tx(conn, body))

    async def energy(self, start: float, end: float) -> list[EnergyRow]:
        def q(conn: sqlite3.Connection) -> list[EnergyRow]:
            return [EnergyRow(worker=r[0], rack=r[1], t_start=r[2], t_end=r[3], joules=r[4])
                    for r in conn.execute(_q(schema.ENERGY_BETWEEN), (start, end))]

        return await self._call(q)

