"""The `LedgerStore` Protocol: the one storage seam of the ledger, and `open_store(url)`.

Two real adapters implement it, with the same schema (`poold.ledger.schema`) and the same test
suite: `SqliteStore` (embedded default; WAL; runs on its own thread) and `PostgresStore` (asyncpg;
for several poold instances sharing one ledger). Every method is a coroutine and never blocks the
event loop. Writes are idempotent where a retry or a journal replay may repeat them. The errors
and row helpers both backends share live in `poold.ledger.backend` (and are importable from here).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from poold.errors import ConfigError
from poold.ledger.backend import (
    SHARE_ROW,
    ChainConflict,
    Commitment,
    StoreUnavailable,
    assemble_blocks,
    bucket_of,
    bucket_rows,
    redact,
)
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

__all__ = [
    "SHARE_ROW",
    "ChainConflict",
    "Commitment",
    "LedgerStore",
    "StoreUnavailable",
    "assemble_blocks",
    "bucket_of",
    "bucket_rows",
    "open_store",
    "redact",
    "resolve_url",
]


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

    async def lead(self, role: str) -> bool:
        """Whether this process is the one instance sharing this ledger that does `role`
        ("reconcile": audit events are written once per block); taken when free, kept while
        this process lives."""
        ...

    async def schema_version(self) -> int: ...

    async def insert_shares(self, shares: Sequence[AcceptedShare], link: Link | None = None,
                            batch_id: str | None = None) -> bool:
        """Commit a batch of shares and their bucket sums in one transaction (all or nothing).

        With `link` (poold.ledger.chain) the batch is that chain link: if the link is already
        stored with the same hash (a retry of a batch that did commit) nothing is written;
        if its (chain, seq) holds another hash, ChainConflict. `batch_id` (schema v6: the
        flusher gives every batch one, kept when it is spilled) is stored with the link, and
        if a link already holds it under another (chain, seq, hash), an earlier attempt of
        the batch committed (its answer lost): nothing is written and the result is False
        (the caller's chain head is stale). True: the batch is stored as `link` (or without
        a link)."""
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

    async def add_payment(self, account: str, amount: int, txid_hex: str, time: float,
                          block_hash_hex: str | None = None, height: int | None = None) -> None:
        """Record a payment (durably), with the block it was seen in if known."""
        ...

    async def set_payment_block(self, txid_hex: str, account: str, block_hash_hex: str | None,
                                height: int | None, orphaned_at: float | None) -> None:
        """Move a recorded payment to the block it is now in, or flag it orphaned (its block
        left the best chain: it no longer counts as paid), durably."""
        ...

    async def set_scan_position(self, name: str, height: int, hash_hex: str) -> None:
        """Where a chain scanner (`name`) got to; read back with schema.SCAN_POSITION."""
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
