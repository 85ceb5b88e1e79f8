"""Found blocks and the nodes' answers, journal first then the store; and the journal replay.

Contract (the Ledger fronts it):

- `journal_block(block)` appends a found block to the block journal (poold.ledger.journal) and
  fsyncs it, once per block however often it is called; the block submitter awaits it *before*
  the block goes to any node.
- `record_block(block)` commits it to the store within `block_write_timeout_s` (a late write is
  abandoned, not awaited) and retires the journal record once the store has it; a store known to
  be failing is not tried (the journal has the block, the flusher replays it).
- `record_submit_result(sr)` stores a node's BIP22 `submitblock` answer and moves the block's
  status, or journals it when the store cannot take it (or does not have the block yet).
- `replay()` applies every pending journal record to the store (idempotent: the store ignores
  a block it has); records `record_block` is committing right now are left to it.
- Both writes run shielded: a cancelled caller (shutdown) does not cut them off, and
  `settle()` waits for them before the store is closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from poold.ledger import journal
from poold.ledger.config import LedgerConfig
from poold.ledger.foundblock import network_difficulty_of, with_block_coinbase
from poold.ledger.health import StoreHealth, retrieve
from poold.ledger.planner import PayoutPlanner
from poold.ledger.records import (
    BlockEvent,
    BlockOutput,
    BlockStatus,
    Credit,
    FoundBlock,
    SubmitResult,
)
from poold.ledger.sharebuffer import reason_of
from poold.ledger.store import Commitment, LedgerStore, StoreUnavailable

log = logging.getLogger("poold.ledger")

# BIP22 answers that mean the node has the block (None is plain success).
_ACCEPTED_RESULTS = frozenset({None, "duplicate", "inconclusive"})
_STALE_JOURNAL_LOG_S = 60.0
_ENTRIES_KEPT = 256


@dataclasses.dataclass(slots=True, eq=False)
class _BlockEntry:
    """A found block as the ledger writes it (computed once: the split plan is taken once)."""

    block: FoundBlock
    netdiff: float
    outputs: list[BlockOutput]
    deltas: list[tuple[str, int]]
    credits: list[Credit]
    event: BlockEvent
    commitment: Commitment
    key: str
    journaled: asyncio.Future[str]
    deltas_applied: bool = False


class BlockRecorder:
    """Writes found blocks and submit results (journal, then store) and replays the journal.

    `writable()` and `unwritable_reason()` are the Ledger's view of the store;
    `commitment_of(block)` is what a block commits to (chain head, settings, split window)."""

    def __init__(self, config: LedgerConfig, store: LedgerStore, health: StoreHealth,
                 planner: PayoutPlanner, clock: Callable[[], float], *,
                 describe: Callable[[bytes], str | None],
                 writable: Callable[[], bool], unwritable_reason: Callable[[], str],
                 commitment_of: Callable[[FoundBlock], Commitment]) -> None:
        self.config = config
        self.store = store
        self.journal = journal.Journal(config.journal_path, clock)
        self._health = health
        self._planner = planner
        self._clock = clock
        self._describe = describe
        self._writable = writable
        self._unwritable_reason = unwritable_reason
        self._commitment_of = commitment_of
        self._submit_lock = asyncio.Lock()
        self._critical: set[asyncio.Future[None]] = set()
        self._entries: dict[str, _BlockEntry] = {}
        self._writing: set[str] = set()  # journal keys record_block is committing right now
        self._stale_logged = 0.0

    @property
    def replay_wanted(self) -> bool:
        """Journal records wait that no `record_block` is committing right now."""
        return self.journal.pending > len(self._writing)

    async def settle(self) -> None:
        """Wait for block and submit writes still in progress (their callers may be gone)."""
        if self._critical:
            await asyncio.gather(*self._critical, return_exceptions=True)

    def check_stale(self) -> None:
        """Rate-limited WARNING while journal records stay out of the store."""
        age = self.journal.oldest_age()
        now = time.monotonic()
        if age >= _STALE_JOURNAL_LOG_S and now - self._stale_logged >= _STALE_JOURNAL_LOG_S:
            self._stale_logged = now
            log.warning("ledger: %d journal records still not in the store, the oldest for "
                        "%.0f s (%s)", self.journal.pending, age,
                        self._unwritable_reason() or "store writable: replay pending")

    def output_rows(self, block: FoundBlock) -> list[BlockOutput]:
        """The audit rows of a block's coinbase outputs, with addresses where known."""
        return [BlockOutput(n=n, script_hex=s.hex(), address=self._describe(s), value=v)
                for n, (s, v) in enumerate(block.coinbase_outputs)]

    # -- found blocks

    async def journal_block(self, block: FoundBlock) -> None:
        await asyncio.shield(self._entry(block).journaled)

    def _entry(self, block: FoundBlock) -> _BlockEntry:
        entry = self._entries.get(block.hash_hex)
        if entry is not None:
            return entry
        now = self._clock()
        try:
            netdiff = network_difficulty_of(block.block_hex)
        except ValueError:
            netdiff = 0.0  # still record it: the block matters more than its metadata
        block, note = with_block_coinbase(block)
        deltas = list(self._planner.take_plan(block.coinbase_outputs))
        commitment = self._commitment_of(block)
        record = journal.block_record(block, netdiff, now, deltas)
        record["commitment"] = list(commitment)
        fut = asyncio.ensure_future(self.journal.append(record))
        fut.add_done_callback(retrieve)
        entry = _BlockEntry(
            block=block, netdiff=netdiff, outputs=self.output_rows(block), deltas=deltas,
            credits=[Credit(block.hash_hex, a, d, "split", block.time) for a, d in deltas],
            event=BlockEvent(block.hash_hex, now, "recorded",
                             f"height {block.height} found by {block.worker} on instance "
                             f"{block.instance_id}{note}"),
            commitment=commitment, key=journal.record_key(record), journaled=fut)
        self._entries[block.hash_hex] = entry
        while len(self._entries) > _ENTRIES_KEPT:
            del self._entries[next(iter(self._entries))]
        return entry

    async def record_block(self, block: FoundBlock) -> None:
        await self._shielded(self._record_block(block))

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._critical.add(task)
        task.add_done_callback(self._critical.discard)
        await asyncio.shield(task)

    def _apply_deltas(self, entry: _BlockEntry) -> None:
        if not entry.deltas_applied:
            entry.deltas_applied = True
            self._planner.apply_split_deltas(entry.deltas)

    async def _record_block(self, block: FoundBlock) -> None:
        entry = self._entry(block)
        journaled = True
        try:
            await asyncio.shield(entry.journaled)
        except OSError as exc:
            journaled = False
            log.critical("block %s NOT written to the journal %s (%s): only the store can "
                         "keep it now", block.hash_hex, self.config.journal_path,
                         reason_of(exc))
        # A store known to be failing is not tried (a block must not wait out a timeout): the
        # journal has it, and the flusher replays it when the store answers again.
        reason = self._unwritable_reason()
        if self._writable():
            self._writing.add(entry.key)
            try:
                new = await self._health.bounded(
                    self.store.insert_block(entry.block, entry.netdiff, entry.outputs,
                                            entry.event, entry.credits, entry.commitment),
                    self.config.block_write_timeout_s, "ledger-block-write")
            except (StoreUnavailable, TimeoutError) as exc:
                reason = reason_of(exc)
                self._health.fail(reason)
            else:
                self._health.ok()
                if new:
                    self._apply_deltas(entry)
                if journaled:
                    await self.journal.retire(entry.key)
                log.info("block %s at height %d recorded", block.hash_hex, block.height)
                return
            finally:
                self._writing.discard(entry.key)
        if not journaled:
            raise StoreUnavailable(f"block {block.hash_hex} is neither in the journal nor in "
                                   f"the store ({reason})")
        self._apply_deltas(entry)
        log.critical("block %s at height %d kept in the journal %s until the store takes it "
                     "(store: %s)", block.hash_hex, block.height, self.config.journal_path,
                     reason)

    # -- submit results

    async def record_submit_result(self, sr: SubmitResult) -> None:
        await self._shielded(self._record_submit_result(sr))

    async def _record_submit_result(self, sr: SubmitResult) -> None:
        block_hash_hex = sr.block_hash_hex
        if self._writable() and not self.journal.is_pending(f"block:{block_hash_hex}"):
            try:
                if await self._health.bounded(self._apply_submit(sr),
                                       self.config.block_write_timeout_s, "ledger-submit-write"):
                    self._health.ok()
                    return
            except (StoreUnavailable, TimeoutError) as exc:
                self._health.fail(reason_of(exc))
                log.error("submit result for %s not committed (%s); journaling it",
                          block_hash_hex, reason_of(exc))
        await self.journal.append(journal.submit_record(sr))

    async def _apply_submit(self, sr: SubmitResult) -> bool:
        """Store a submit result and move the block's status; False if the block is not in the
        store (it is in the journal, so the result goes there too, after it)."""
        async with self._submit_lock:
            status = await self.store.block_status(sr.block_hash_hex)
            if status is None:
                return False
            accepted = sr.result in _ACCEPTED_RESULTS
            new: BlockStatus | None = None
            if accepted and status in (BlockStatus.RECORDED, BlockStatus.REJECTED):
                new = BlockStatus.SUBMITTED
            elif not accepted and status == BlockStatus.RECORDED:
                new = BlockStatus.REJECTED
            await self.store.upsert_submit_result(sr, new)
            return True

    # -- the journal replay

    async def replay(self) -> int:
        return await self.journal.replay(self._replay_one, skip=set(self._writing))

    async def _replay_one(self, rec: dict[str, Any]) -> bool:
        """Apply one record; False leaves it pending (a submit result whose block is not in
        the store yet)."""
        if rec.get("kind") == "block":
            block = journal.block_from_json(rec["block"])
            credits = [Credit(block.hash_hex, str(a), int(d), "split", block.time)
                       for a, d in rec.get("split_deltas", [])]
            event = BlockEvent(block.hash_hex, float(rec["recorded_at"]), "recorded",
                               f"height {block.height} found by {block.worker} on instance "
                               f"{block.instance_id}; replayed from the journal")
            commitment = rec.get("commitment")
            await self.store.insert_block(
                block, float(rec["network_difficulty"]), self.output_rows(block), event,
                credits, None if commitment is None else (commitment[0], commitment[1],
                                                          commitment[2]))
            return True
        if rec.get("kind") == "submit":
            sr = journal.submit_from_record(rec)
            if await self._apply_submit(sr):
                return True
            block_key = f"block:{sr.block_hash_hex}"
            if block_key in self._writing or self.journal.is_pending(block_key):
                return False  # its block goes in first
            log.error("journal: submit result for unknown block %s kept as an event",
                      sr.block_hash_hex)
            await self.store.add_events([BlockEvent(
                sr.block_hash_hex, sr.time, "orphan_submit_result", f"{sr.node}: {sr.result}")])
            return True
        raise ValueError(f"unknown record kind {rec.get('kind')!r}")
