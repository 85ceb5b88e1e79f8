"""PostgreSQL adapter of `LedgerStore` (asyncpg): one ledger shared by several poold instances.

Same schema and semantics as the SQLite store. Share batches go through COPY (the fastest bulk
path); blocks and submit results are ordinary transactions, durable on COMMIT with the server's
default synchronous_commit=on. Migrations run under a transaction-level advisory lock so that
instances starting together apply them once.

Where a share batch's time goes (tests/bench/ledger.py; py-spy on the client, backend CPU from
/proc on the server; 10,000 shares, 500 accounts): the server backend ~1.4 s per million shares
(heap COPY, the (time, id) index, one bucket upsert per account), the client ~0.6 s (row tuples,
bucket sums, asyncpg's binary COPY encoding), one after the other on one connection. Hence v4
drops the unused id key index and the bucket sums go in one statement.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar

import asyncpg

from poold.ledger import chain, schema
from poold.ledger.backend import (
    SHARE_ROW,
    BatchStored,
    Commitment,
    StoreUnavailable,
    assemble_blocks,
    bucket_rows,
    redact,
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

# Arbitrary constant key of the advisory lock that serializes migrations across instances.
_MIGRATION_LOCK = 0x706F6F6C64  # "poold"
_PRUNE_LOCK = _MIGRATION_LOCK + 1
# Session-level advisory locks electing one instance for a role (`lead`), keyed (role, schema):
# ledgers in different schemas of one database do not elect each other.
_ROLE_KEYS = {"reconcile": 0x706F6F6C}
_CREDITS_CHAIN_LOCK = _MIGRATION_LOCK + 2  # one credits link at a time (its head read first)
_SHARE_COLUMNS = ("instance_id", "worker", "account", "difficulty", "job_id", "height", "time")
_LINKED_COLUMNS = (*_SHARE_COLUMNS, "link")
# schema.UPSERT_BUCKET for a whole batch in one statement: one Bind/Execute instead of one per
# (account, bucket), the same rows in the same (sorted) lock order.
_UPSERT_BUCKETS = (
    "INSERT INTO share_buckets (account, bucket, difficulty, shares)"
    " SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[], $4::bigint[])"
    " ON CONFLICT (account, bucket) DO UPDATE SET"
    " difficulty = share_buckets.difficulty + excluded.difficulty,"
    " shares = share_buckets.shares + excluded.shares")


class _DriverNoise(logging.Filter):
    """asyncpg's pool logs a WARNING with a traceback each time it fails to reconnect (every
    1-8 s per process while the server is away): pass one a minute, with its reason and how
    many were held back, without the traceback. The ledger's own log says what it means."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -math.inf
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        if now - self._last < _DRIVER_LOG_INTERVAL_S:
            self._held += 1
            return False
        exc = record.exc_info[1] if record.exc_info else None
        reason = "" if exc is None else f": {type(exc).__name__}: {exc}"
        text = record.getMessage()
        record.msg = "%s%s (%d similar messages in the last minute not shown)"
        record.args = (text, reason, self._held)
        record.exc_info = None
        record.exc_text = None
        self._last = now
        self._held = 0
        return True


_DRIVER_LOG_INTERVAL_S = 60.0
_DRIVER_NOISE = _DriverNoise()


class _DriverTasks(logging.Filter):
    """On the `asyncio` logger: an asyncpg-internal task that failed while the server was away
    ("Task exception was never retrieved ... asyncpg/pool.py") goes through `_DriverNoise`;
    everything else passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "asyncpg" not in record.getMessage():
            return True
        return _DRIVER_NOISE.filter(record)


_DRIVER_TASKS = _DriverTasks()


def quiet_driver_logs() -> None:
    """Install the asyncpg log filters (idempotent)."""
    for name in ("asyncpg", "asyncpg.pool", "asyncpg.connection"):
        logger = logging.getLogger(name)
        if _DRIVER_NOISE not in logger.filters:
            logger.addFilter(_DRIVER_NOISE)
    aio = logging.getLogger("asyncio")
    if _DRIVER_TASKS not in aio.filters:
        aio.addFilter(_DRIVER_TASKS)


def _q(sql: str) -> str:
    return schema.render(sql, "postgres")


_UNAVAILABLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class PostgresStore:
    """LedgerStore on PostgreSQL through an asyncpg connection pool."""

    name = "postgres"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 4,
                 command_timeout_s: float = 30.0, connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self._min = min_size
        self._max = max_size
        self._command_timeout = command_timeout_s
        self._connect_timeout = connect_timeout_s
        self._pool: Any = None
        self._leading: dict[str, Any] = {}  # role -> the connection holding its lock
        quiet_driver_logs()

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self.url)!r})"

    def _why(self, exc: BaseException) -> str:
        """A driver error as a reason that is never empty (asyncpg's timeouts have no text)."""
        text = str(exc)
        if not text and isinstance(exc, TimeoutError):
            text = (f"no answer within the connect ({self._connect_timeout:g} s) or command "
                    f"({self._command_timeout:g} s) timeout")
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    async def _with(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        if self._pool is None:
            raise StoreUnavailable("postgres store is not open")
        try:
            async with self._pool.acquire(timeout=self._connect_timeout) as conn:
                return await fn(conn)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgres: {self._why(exc)}") from exc

    async def _tx(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        async def run(conn: Any) -> T:
            async with conn.transaction():
                return await fn(conn)

        return await self._with(run)

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self.url, min_size=self._min, max_size=self._max,
                command_timeout=self._command_timeout, timeout=self._connect_timeout)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"postgres {redact(self.url)}: {self._why(exc)}") from exc
        self._pool = pool
        try:
            await self._tx(self._migrate)
        except BaseException:
            await self.close()
            raise

    @staticmethod
    async def _migrate(conn: Any) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0
        for version, statements in schema.pending(int(current)):
            for stmt in statements:
                await conn.execute(_q(stmt))
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)

    async def lead(self, role: str) -> bool:
        """Whether this process holds the instance-wide lock of `role` (taking it if free):
        a session-level advisory lock on a connection of its own, released when that
        connection ends (this process dies or loses the server: another instance takes over).
        """
        conn = self._leading.get(role)
        if conn is not None:
            try:
                await conn.fetchval("SELECT 1", timeout=self._connect_timeout)
                return True
            except _UNAVAILABLE:
                self._leading.pop(role, None)  # the lock went with the connection
                conn.terminate()
        try:
            conn = await asyncpg.connect(self.url, timeout=self._connect_timeout)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"postgres: {self._why(exc)}") from exc
        try:
            got = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext(current_schema()))", _ROLE_KEYS[role],
                timeout=self._connect_timeout)
        except _UNAVAILABLE as exc:
            conn.terminate()
            raise StoreUnavailable(f"postgres: {self._why(exc)}") from exc
        if got:
            self._leading[role] = conn
            return True
        await conn.close()
        return False

    async def close(self) -> None:
        for conn in self._leading.values():
            conn.terminate()
        self._leading.clear()
        pool, self._pool = self._pool, None
        if pool is not None:
            # A hung server would hold a graceful close (it waits for busy connections).
            try:
                await asyncio.wait_for(pool.close(), min(2.0, self._connect_timeout))
            except TimeoutError:
                pool.terminate()

    async def schema_version(self) -> int:
        async def q(conn: Any) -> int:
            return int(await conn.fetchval("SELECT MAX(version) FROM schema_version") or 0)

        return await self._with(q)

    # -- shares

    async def insert_shares(self, shares: Sequence[AcceptedShare],
                            link: chain.Link | None = None, batch_id: str | None = None) -> bool:
        records = list(map(SHARE_ROW, shares))
        rows = bucket_rows(shares)
        buckets = [[r[i] for r in rows] for i in range(4)]  # one array per column

        async def body(conn: Any) -> bool:
            if link is None:
                await conn.copy_records_to_table("shares", records=records,
                                                 columns=_SHARE_COLUMNS)
            else:
                try:
                    link_id = await self._link(conn, link, batch_id)
                except BatchStored:
                    return False
                if link_id is None:
                    return True  # this very batch was committed before (a retry)
                tail = (link_id,)
                await conn.copy_records_to_table(
                    "shares", records=[r + tail for r in records], columns=_LINKED_COLUMNS)
            await conn.execute(_UPSERT_BUCKETS, *buckets)
            return True

        return await self._tx(body)

    @staticmethod
    async def _link(conn: Any, link: chain.Link, batch_id: str | None = None) -> int | None:
        """Insert a chain link (with its batch's id); its id, or None if this very link is
        stored already. BatchStored: the batch id is stored with another link; ChainConflict:
        (chain, seq) holds another hash. A transaction inserting either key and not yet
        committed makes this wait for its outcome (the unique indexes), so a late commit of
        an earlier attempt and this one never both land."""
        link_id = await conn.fetchval(
            _q(schema.INSERT_LINK) + " RETURNING id", link.chain, link.seq, link.n,
            link.prev_hash, link.hash, link.time, link.t_first, link.t_last, batch_id)
        if link_id is not None:
            return int(link_id)
        settle_link(link, None if batch_id is None else
                    await conn.fetchrow(_q(schema.BATCH_LINK), batch_id),
                    await conn.fetchval(_q(schema.LINK_HASH), link.chain, link.seq))
        return None

    async def chain_head(self, name: str) -> chain.Link | None:
        async def q(conn: Any) -> chain.Link | None:
            r = await conn.fetchrow(_q(schema.CHAIN_HEAD), name)
            return None if r is None else chain.Link(
                name, int(r[0]), int(r[1]), bytes(r[2]), bytes(r[3]), float(r[4]), r[5], r[6])

        return await self._with(q)

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        async def q(conn: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in await conn.fetch(_q(sql), *params)]

        return await self._with(q)

    async def refresh_confirmations(self, tip_height: int) -> None:
        async def body(conn: Any) -> None:
            await conn.execute(_q(schema.MATURED_CONFIRMATIONS), tip_height, tip_height)

        await self._tx(body)

    async def buckets_page(self, before: float,
                           limit: int) -> list[tuple[float, str, float]]:
        async def q(conn: Any) -> list[tuple[float, str, float]]:
            rows = await conn.fetch(_q(schema.BUCKETS_PAGE), before, limit)
            return [(float(r[0]), r[1], float(r[2])) for r in rows]

        return await self._with(q)

    async def bucket(self, bucket: float) -> dict[str, float]:
        async def q(conn: Any) -> dict[str, float]:
            rows = await conn.fetch(_q(schema.BUCKET_ROWS), bucket)
            return {r[0]: float(r[1]) for r in rows}

        return await self._with(q)

    async def shares_page(self, until_time: float, cursor: tuple[float, int] | None,
                          limit: int) -> list[ShareRow]:
        async def q(conn: Any) -> list[ShareRow]:
            if cursor is None:
                rows = await conn.fetch(_q(schema.SHARES_PAGE_FIRST), until_time, limit)
            else:
                rows = await conn.fetch(_q(schema.SHARES_PAGE_NEXT),
                                        cursor[0], cursor[0], cursor[1], limit)
            return [ShareRow(id=r[0], account=r[1], difficulty=r[2], time=r[3]) for r in rows]

        return await self._with(q)

    async def share_totals(self, start: float, end: float) -> dict[str, float]:
        async def q(conn: Any) -> dict[str, float]:
            out: dict[str, float] = {}
            # One snapshot for both reads: a prune committing in between would count twice.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                for sql in (schema.SHARE_TOTALS, schema.ROLLUP_TOTALS):
                    for r in await conn.fetch(_q(sql), start, end):
                        out[r[0]] = out.get(r[0], 0.0) + float(r[1])
            return out

        return await self._with(q)

    async def prune_shares(self, before: float) -> int:
        async def body(conn: Any) -> int:
            # Prunes are serialized across connections and instances: two concurrent rollups
            # of the same shares would both add them.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _PRUNE_LOCK)
            await conn.execute(_q(schema.ROLLUP_SHARES), before)
            status = await conn.execute(_q(schema.DELETE_SHARES), before)
            return int(status.split()[-1])  # "DELETE <n>"

        return await self._tx(body)

    async def oldest_share_time(self) -> float | None:
        async def q(conn: Any) -> float | None:
            value = await conn.fetchval(schema.OLDEST_SHARE)
            return None if value is None else float(value)

        return await self._with(q)

    async def share_count(self) -> int:
        async def q(conn: Any) -> int:
            return int(await conn.fetchval(schema.SHARE_COUNT))

        return await self._with(q)

    # -- blocks

    async def insert_block(self, block: FoundBlock, network_difficulty: float,
                           outputs: Sequence[BlockOutput], event: BlockEvent,
                           credits: Sequence[Credit] = (),
                           commitment: Commitment | None = None) -> bool:
        async def body(conn: Any) -> bool:
            status = await conn.execute(
                _q(schema.INSERT_BLOCK), block.hash_hex, block.height, block.prevhash_hex,
                block.worker, block.account, block.coinbase_txid_hex, block.reward, block.fees,
                network_difficulty, block.block_hex, block.time, block.instance_id,
                BlockStatus.RECORDED.value)
            if status.endswith(" 0"):  # "INSERT 0 0": already recorded
                return False
            await conn.executemany(_q(schema.INSERT_OUTPUT), [
                (block.hash_hex, o.n, o.script_hex, o.address, o.value) for o in outputs])
            await self._events(conn, [event])
            await self._credits(conn, credits)
            if commitment is not None:
                await conn.execute(_q(schema.SET_COMMITMENT), *commitment, block.hash_hex)
            return True

        return await self._tx(body)

    async def upsert_submit_result(self, result: SubmitResult,
                                   status: BlockStatus | None) -> None:
        async def body(conn: Any) -> None:
            await conn.execute(_q(schema.UPSERT_SUBMIT), result.block_hash_hex, result.node,
                               result.result, result.time)
            if status is not None:
                await conn.execute("UPDATE blocks SET status = $1 WHERE hash_hex = $2",
                                   status.value, result.block_hash_hex)

        await self._tx(body)

    async def block_status(self, hash_hex: str) -> BlockStatus | None:
        async def q(conn: Any) -> BlockStatus | None:
            value = await conn.fetchval(_q(schema.BLOCK_STATUS), hash_hex)
            return None if value is None else BlockStatus(value)

        return await self._with(q)

    async def update_block(self, hash_hex: str, status: BlockStatus, confirmations: int,
                           checked_at: float, events: Sequence[BlockEvent],
                           credits: Sequence[Credit]) -> None:
        async def body(conn: Any) -> None:
            await conn.execute(_q(schema.UPDATE_BLOCK), status.value, confirmations,
                               checked_at, hash_hex)
            await self._events(conn, events)
            await self._credits(conn, credits)

        await self._tx(body)

    @staticmethod
    async def _events(conn: Any, events: Sequence[BlockEvent]) -> None:
        if events:
            await conn.executemany(_q(schema.INSERT_EVENT), [
                (e.block_hash_hex, e.time, e.event, e.detail) for e in events])

    @staticmethod
    async def _credits(conn: Any, credits: Sequence[Credit]) -> None:
        """Credits not stored yet, as one link of the credits chain (in the caller's
        transaction, under a lock: the head read here is the head this link follows)."""
        if not credits:
            return
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _CREDITS_CHAIN_LOCK)
        rows = []
        for c in credits:
            if await conn.fetchval(_q(schema.CREDIT_EXISTS), c.block_hash_hex, c.account,
                                   c.kind) is None:
                rows.append((c.block_hash_hex, c.account, c.amount, c.kind, c.time))
        if not rows:
            return
        r = await conn.fetchrow(_q(schema.CHAIN_HEAD), chain.CREDITS_CHAIN)
        prev = None if r is None else chain.Link(chain.CREDITS_CHAIN, int(r[0]), 0, b"",
                                                 bytes(r[3]), 0.0)
        link = chain.next_link(chain.CREDITS_CHAIN, prev, chain.encode_credit_rows(rows),
                               len(rows), max(x[4] for x in rows))
        link_id = await PostgresStore._link(conn, link)
        await conn.executemany(_q(schema.INSERT_CREDIT_LINKED), [(*x, link_id) for x in rows])

    async def add_events(self, events: Sequence[BlockEvent]) -> None:
        await self._tx(lambda conn: self._events(conn, events))

    async def blocks(self, since: float = 0.0) -> list[BlockRecord]:
        async def q(conn: Any) -> list[BlockRecord]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                heads = await conn.fetch(_q(schema.BLOCKS_SINCE), since)
                outs = await conn.fetch(_q(schema.OUTPUTS_SINCE), since)
                subs = await conn.fetch(_q(schema.SUBMITS_SINCE), since)
                evs = await conn.fetch(_q(schema.EVENTS_SINCE), since)
            return assemble_blocks(heads, outs, subs, evs)

        return await self._with(q)

    async def block_hex(self, hash_hex: str) -> str | None:
        async def q(conn: Any) -> str | None:
            value = await conn.fetchval(_q(schema.BLOCK_HEX), hash_hex)
            return None if value is None else str(value)

        return await self._with(q)

    # -- credits, payments, energy

    async def credits_for(self, block_hash_hex: str, kind: str) -> dict[str, int]:
        async def q(conn: Any) -> dict[str, int]:
            rows = await conn.fetch(_q(schema.CREDITS_FOR), block_hash_hex, kind)
            return {r[0]: int(r[1]) for r in rows}

        return await self._with(q)

    async def add_credits(self, credits: Sequence[Credit]) -> None:
        await self._tx(lambda conn: self._credits(conn, credits))

    async def balances(self, kinds: Collection[str]) -> dict[str, int]:
        kinds = list(kinds)
        sql = _q(schema.BALANCES.replace("{kinds}", ", ".join("?" * len(kinds))))

        async def q(conn: Any) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in await conn.fetch(sql, *kinds)}

        return await self._with(q)

    async def add_payment(self, account: str, amount: int, txid_hex: str, time: float,
                          block_hash_hex: str | None = None, height: int | None = None) -> None:
        async def body(conn: Any) -> None:
            await conn.execute(_q(schema.INSERT_PAYMENT), account, amount, txid_hex, time,
                               block_hash_hex, height)

        await self._with(body)

    async def set_payment_block(self, txid_hex: str, account: str, block_hash_hex: str | None,
                                height: int | None, orphaned_at: float | None) -> None:
        async def body(conn: Any) -> None:
            await conn.execute(_q(schema.SET_PAYMENT_BLOCK), block_hash_hex, height,
                               orphaned_at, txid_hex, account)

        await self._with(body)

    async def set_scan_position(self, name: str, height: int, hash_hex: str) -> None:
        async def body(conn: Any) -> None:
            await conn.execute(_q(schema.UPSERT_SCAN_POSITION), name, height, hash_hex)

        await self._with(body)

    async def paid(self) -> dict[str, int]:
        async def q(conn: Any) -> dict[str, int]:
            return {r[0]: int(r[1]) for r in await conn.fetch(_q(schema.PAID))}

        return await self._with(q)

    async def payments(self) -> list[tuple[str, int, str, float]]:
        async def q(conn: Any) -> list[tuple[str, int, str, float]]:
            return [(str(r[0]), int(r[1]), str(r[2]), float(r[3]))
                    for r in await conn.fetch(_q(schema.PAYMENTS))]

        return await self._with(q)

    async def insert_energy(self, rows: Sequence[EnergyRow]) -> None:
        async def body(conn: Any) -> None:
            await conn.executemany(_q(schema.INSERT_ENERGY), [
                (r.worker, r.rack, r.t_start, r.t_end, r.joules) for r in rows])

        await self._tx(body)

    async def energy(self, start: float, end: float) -> list[EnergyRow]:
        async def q(conn: Any) -> list[EnergyRow]:
            rows = await conn.fetch(_q(schema.ENERGY_BETWEEN), start, end)
            return [EnergyRow(worker=r[0], rack=r[1], t_start=r[2], t_end=r[3], joules=r[4])
                    for r in rows]

        return await self._with(q)
