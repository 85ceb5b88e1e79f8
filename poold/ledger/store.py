"""The `LedgerStore` Protocol: the one storage seam of the ledger, and `open_store(url)`.

Two real adapters implement it, with the same schema (`poold.ledger.schema`) and the same test
suite: `SqliteStore` (embedded default; WAL; runs on its own thread) and `PostgresStore` (asyncpg;
for several poold instances sharing one ledger). Every method is a coroutine and never blocks the
event loop. Writes are idempotent where a retry or a journal replay may repeat them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from poold.errors import ConfigError
from poold.ledger import schema
from poold.ledger.chain import Link
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

# An AcceptedShare as a row of `shares` in column order (C speed: batches are large).
SHARE_ROW = attrgetter("instance_id", "worker", "account", "difficulty", "job_id", "height",
                       "time")


def bucket_of(t: float) -> float:
    """The 10 s PPLNS bucket of a share time (the same floor as schema's {bucket})."""
    return float(math.floor(t / schema.BUCKET_S) * int(schema.BUCKET_S))


def bucket_rows(shares: Sequence[AcceptedShare]) -> list[tuple[str, float, float, int]]:
    """A batch of shares summed per (account, bucket), sorted (a fixed lock order for upserts
    from concurrent instances)."""
    # bucket_of inlined (with the same float arithmetic): this runs per share on the loop.
    floor, width = math.floor, schema.BUCKET_S
    acc: dict[tuple[str, int], list[float]] = {}
    for s in shares:
        key = (s.account, floor(s.time / width))
        cell = acc.get(key)
        if cell is None:
            acc[key] = [s.difficulty, 1.0]
        else:
            cell[0] += s.difficulty
            cell[1] += 1.0
    step = int(width)
    return [(a, float(b * step), d, int(n)) for (a, b), (d, n) in sorted(acc.items())]


class StoreUnavailable(Exception):
    """The store could not be reached or refused a write (the caller buffers or journals)."""


class ChainConflict(StoreUnavailable):
    """A share link's (chain, seq) is taken by a different link: another writer shares this
    chain name, or the head the caller hashed from is stale. The caller re-reads the head
    (`chain_head`) and hashes the batch again."""


# What a found block commits to (schema v5): chain head, settings JSON, payout window JSON.
Commitment = tuple[str | None, str | None, str | None]


class LedgerStore(Protocol):
    """Storage of shares, blocks and their audit trail, credits, payments and energy."""

    @property
    def name(self) -> str:
        """"sqlite" or "postgres" (for logs and benchmarks)."""
        ...

    async def open(self) -> None:
        """Connect and apply pending migrations (safe when several instances start at once)."""
        ...

    async def close(self) -> None: ...

    async def schema_version(self) -> int: ...

    async def insert_shares(self, shares: Sequence[AcceptedShare],
                            link: Link | None = None) -> None:
        """Commit a batch of shares and their bucket sums in one transaction (all or nothing).

        With `link` (poold.ledger.chain) the batch is that chain link: if the link is already
        stored with the same hash (a retry of a batch that did commit) nothing is written;
        if its (chain, seq) holds another hash, ChainConflict."""
        ...

    async def chain_head(self, chain: str) -> Link | None:
        """The last link of a chain (None if it has none yet)."""
        ...

    async def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """A read-only statement in the common dialect (poold.ledger.schema.render), for the
        audit (`poold ledger verify`, exports)."""
        ...

    async def refresh_confirmations(self, tip_height: int) -> None:
        """Set the confirmations of matured blocks from the node's tip height."""
        ...

    async def insert_block(self, block: FoundBlock, network_difficulty: float,
                           outputs: Sequence[BlockOutput], event: BlockEvent,
                           credits: Sequence[Credit] = (),
                           commitment: Commitment | None = None) -> bool:
        """Durably commit a found block with its outputs, first event, split credits and
        (schema v5) what it commits to.

        Returns False (and writes nothing) if the block was already recorded.
        """
        ...

    async def upsert_submit_result(self, result: SubmitResult,
                                   status: BlockStatus | None) -> None:
        """Record one node's submit outcome; optionally move the block to `status`."""
        ...

    async def block_status(self, hash_hex: str) -> BlockStatus | None: ...

    async def update_block(self, hash_hex: str, status: BlockStatus, confirmations: int,
                           checked_at: float, events: Sequence[BlockEvent],
                           credits: Sequence[Credit]) -> None:
        """Change a block's state, append its events and credits, in one transaction."""
        ...

    async def add_events(self, events: Sequence[BlockEvent]) -> None: ...

    async def shares_page(self, until_time: float, cursor: tuple[float, int] | None,
                          limit: int) -> list[ShareRow]:
        """Shares newest first: time <= until_time, then strictly before `cursor` (time, id)."""
        ...

    async def share_totals(self, start: float, end: float) -> dict[str, float]:
        """Accepted difficulty per worker for shares with start <= time < end (pruned shares
        count by the hour of their rollup)."""
        ...

    async def share_count(self) -> int: ...

    async def buckets_page(self, before: float,
                           limit: int) -> list[tuple[float, str, float]]:
        """(bucket, account, difficulty) with bucket < before, newest bucket first."""
        ...

    async def bucket(self, bucket: float) -> dict[str, float]:
        """Accepted difficulty per account in one bucket."""
        ...

    async def prune_shares(self, before: float) -> int:
        """Roll shares with time < before up into share_rollups and delete them, in one
        transaction; returns how many shares were deleted."""
        ...

    async def oldest_share_time(self) -> float | None: ...

    async def blocks(self, since: float = 0.0) -> list[BlockRecord]:
        """Found blocks with time >= since, oldest first, with outputs, submits and events."""
        ...

    async def block_hex(self, hash_hex: str) -> str | None: ...

    async def credits_for(self, block_hash_hex: str, kind: str) -> dict[str, int]: ...

    async def add_credits(self, credits: Sequence[Credit]) -> None: ...

    async def balances(self, kinds: Collection[str]) -> dict[str, int]:
        """Sum of credits per account over the given kinds, for blocks not orphaned/rejected."""
        ...

    async def add_payment(self, account: str, amount: int, txid_hex: str, time: float) -> None:
        ...

    async def paid(self) -> dict[str, int]: ...

    async def payments(self) -> list[tuple[str, int, str, float]]:
        """Every recorded payment as (account, amount, txid_hex, time), oldest first."""
        ...

    async def insert_energy(self, rows: Sequence[EnergyRow]) -> None: ...

    async def energy(self, start: float, end: float) -> list[EnergyRow]: ...


def resolve_url(url: str, state_dir: Path | str) -> str:
    """The effective ledger URL: empty means the SQLite file `ledger.sqlite3` in the state dir."""
    if not url:
        return f"sqlite:///{Path(state_dir) / 'ledger.sqlite3'}"
    return url


def open_store(url: str, *, source: str = "") -> LedgerStore:
    """Build (not yet open) the store for `sqlite:///PATH` or `postgresql://...`.

    Raises ConfigError("ledger.url", ...) for anything else.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url[len("sqlite://"):]
        if not path.startswith("/") or len(path) < 2:
            raise ConfigError("ledger.url", "sqlite URL must be sqlite:///ABSOLUTE/PATH", source)
        from poold.ledger.sqlite import SqliteStore

        return SqliteStore(Path(path))
    if scheme in ("postgresql", "postgres"):
        from poold.ledger.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError("ledger.url", "must be sqlite:///PATH or postgresql://...", source)


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def outputs_of(block: FoundBlock,
               describe: Mapping[bytes, str | None] | None = None) -> list[BlockOutput]:
    """The coinbase outputs of a found block as audit rows (address from `describe` if known)."""
    rows = []
    for n, (script, value) in enumerate(block.coinbase_outputs):
        address = describe.get(script) if describe is not None else None
        rows.append(BlockOutput(n=n, script_hex=script.hex(), address=address, value=value))
    return rows


def assemble_blocks(heads: Sequence[Sequence[Any]], outs: Sequence[Sequence[Any]],
                    subs: Sequence[Sequence[Any]],
                    evs: Sequence[Sequence[Any]]) -> list[BlockRecord]:
    """Join the rows of the four audit tables into BlockRecords (used by both stores)."""
    outputs: dict[str, list[BlockOutput]] = {}
    for h, n, script_hex, address, value in outs:
        outputs.setdefault(h, []).append(BlockOutput(
            n=int(n), script_hex=str(script_hex), address=address, value=int(value)))
    submits: dict[str, list[SubmitResult]] = {}
    for h, node, result, t in subs:
        submits.setdefault(h, []).append(SubmitResult(
            block_hash_hex=h, node=node, result=result, time=float(t)))
    events: dict[str, list[BlockEvent]] = {}
    for h, t, event, detail in evs:
        events.setdefault(h, []).append(BlockEvent(
            block_hash_hex=h, time=float(t), event=event, detail=detail))
    records = []
    for (height, h, prevhash_hex, worker, account, cb_txid, reward, fees, netdiff, t,
         instance_id, status, confirmations, checked_at) in heads:
        records.append(BlockRecord(
            height=int(height), hash_hex=h, prevhash_hex=prevhash_hex, worker=worker,
            account=account, coinbase_txid_hex=cb_txid, reward=int(reward), fees=int(fees),
            network_difficulty=float(netdiff), time=float(t), instance_id=int(instance_id),
            status=BlockStatus(status), confirmations=int(confirmations),
            checked_at=None if checked_at is None else float(checked_at),
            outputs=tuple(outputs.get(h, ())), submits=tuple(submits.get(h, ())),
            events=tuple(events.get(h, ()))))
    return records
