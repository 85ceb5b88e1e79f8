"""The Ledger: the pool's one front to the share ledger, found-block records and payouts.

Contract (INTERFACES.md, poold/ledger):

- `record_share(share)` is synchronous and never blocks: it appends to an in-memory buffer. A
  flusher task commits the buffer in batches every `flush_interval_ms` (default 100 ms).
  Durability window: a share is committed at most flush_interval + one commit (a batch of at
  most `batch_max_shares`) after it was recorded, as long as the share rate is within what the
  store sustains (tests/bench/ledger.py); a `kill -9` of poold loses at most the shares of that
  window, and batches commit in order, so the store holds a gap-free prefix of what was recorded.
  While the store is slow or down the buffer grows up to `buffer_max_shares`; beyond it shares
  are dropped and counted (`poold_ledger_lost_shares`, throttled log) and the pool keeps
  serving; `poold_ledger_lag_seconds` is the age of the oldest uncommitted share.
- `record_block(block)` returns only once the block is durable: committed to the store, or, if
  the store does not take it within `block_write_timeout_s`, appended and fsynced to a local
  JSON-lines journal under the state directory (poold.ledger.journal). The journal is replayed
  into the store at start and whenever the store comes back; replay is idempotent.
- `record_submit_result(hash, node, result)` records each node's answer the same way.

Also fronted here: PPLNS windows and credits at maturity and the split coinbase
(`coinbase_outputs`, which poold run's planner calls per template), computed by the owned
poold.ledger.planner.PayoutPlanner; reconciliation of found blocks against a node
(poold.ledger.audit), and energy rows from fleet telemetry.

Everything touching the store is awaited on the loop; the stores themselves keep blocking work
off it (SQLite on its own thread, asyncpg natively).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from poold.bitcoin.address import Network, script_to_address
from poold.bitcoin.encoding import ByteReader
from poold.bitcoin.target import bits_to_target, target_to_difficulty
from poold.bitcoin.tx import Tx
from poold.ledger import audit, chain, journal, payments, payouts
from poold.ledger.config import LedgerConfig
from poold.ledger.energy import EnergyMeter, EnergyReport, PowerSample, report
from poold.ledger.planner import PayoutPlanner, payout_key
from poold.ledger.records import (
    AcceptedShare,
    BlockEvent,
    BlockOutput,
    BlockRecord,
    BlockStatus,
    Credit,
    FoundBlock,
    SubmitResult,
)
from poold.ledger.store import LedgerStore, StoreUnavailable, open_store, redact
from poold.metrics import Metrics

log = logging.getLogger("poold.ledger")

# BIP22 answers that mean the node has the block (None is plain success).
_ACCEPTED_RESULTS = frozenset({None, "duplicate", "inconclusive"})
_LOST_LOG_INTERVAL_S = 10.0
_MAX_BACKOFF_S = 5.0
_ENERGY_FLUSH_S = 60.0
_PRUNE_STEP_S = 10.0
_STOP_GRACE_S = 10.0
_RETENTION_INTERVAL_S = 60.0


def network_difficulty_of(block_hex: str) -> float:
    """Difficulty of the network target in a serialized block's header (nBits at bytes 72..76)."""
    header = bytes.fromhex(block_hex[:160])
    if len(header) != 80:
        raise ValueError("block_hex is shorter than a block header")
    return target_to_difficulty(bits_to_target(int.from_bytes(header[72:76], "little")))


_COINBASE_PREFIX_HEX = 2 * (80 + 9 + 100_000)  # header, tx count, a coinbase of up to 100 kB


def coinbase_of(block_hex: str) -> Tx | None:
    """The coinbase transaction of a serialized block (None if it does not parse)."""
    for text in (block_hex[:_COINBASE_PREFIX_HEX], block_hex):
        try:
            r = ByteReader(bytes.fromhex(text))
            r.read(80)
            if r.compact_size() < 1:
                return None
            return Tx.read(r)
        except ValueError:
            continue
    return None


class Ledger:
    """Async front of the ledger. Create, `await start()`, use, `await stop()` (flushes)."""

    def __init__(self, config: LedgerConfig, *, metrics: Metrics | None = None,
                 store: LedgerStore | None = None,
                 describe_script: Callable[[bytes], str | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        config.validate()
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = store if store is not None else open_store(
            config.effective_url, source=config.source)
        self._describe = describe_script or self._default_describe
        self._clock = clock
        self._buffer: list[AcceptedShare] = []
        self._max = config.buffer_max_shares
        self._interval = config.flush_interval_ms / 1000.0
        self._store_open = False
        self._healthy = False
        self._task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._journal = journal.Journal(config.journal_path, clock)
        self._submit_lock = asyncio.Lock()
        self._critical: set[asyncio.Future[None]] = set()
        # The split coinbase's chain commitment comes out of the payout outputs' byte budget.
        self._planner = PayoutPlanner(dataclasses.replace(
            config, split_max_output_bytes=config.split_max_output_bytes
            - chain.COMMITMENT_OUTPUT_BYTES), self.store, clock)
        self.chain = chain.share_chain(config.instance_id, config.writer)
        self._head: chain.Link | None = None  # the last link of this writer's share chain
        self._head_known = False
        self._unsure: tuple[chain.Link, int] | None = None  # a link whose commit failed
        # Heads committed by recent split coinbases, and the windows of recent split plans.
        self._recent_heads: OrderedDict[bytes, chain.Link] = OrderedDict()
        self._plan_windows: OrderedDict[tuple[tuple[bytes, int], ...], dict[str, Any]] = (
            OrderedDict())
        self._lost_since_log = 0
        self._last_lost_log = 0.0
        self.lost_shares = 0
        self.committed_shares = 0
        self.last_commit_seconds = 0.0
        self.energy_meter = EnergyMeter()
        self._energy_flushed = time.monotonic()
        self._inflight_oldest: float | None = None  # time of the oldest share being written
        self.metrics.add_scrape_hook(self._update_lag)

    def _default_describe(self, script: bytes) -> str | None:
        try:
            return script_to_address(script, Network(self.config.network))
        except ValueError:
            return None

    # -- life cycle

    async def start(self) -> None:
        """Open the store (applying migrations) and replay the journal; start the flusher.

        A store that is down at start is not fatal: shares buffer, blocks go to the journal, and
        the flusher keeps trying to open it.
        """
        self._stopping = False
        self._wake = asyncio.Event()
        try:
            await self._open_store()
            if self.config.payout == "split":
                await self.refresh_split()
        except StoreUnavailable as exc:
            log.error("ledger store %s unavailable at start (%s); buffering shares and "
                      "journaling blocks until it is back", redact(self.config.effective_url), exc)
        self._task = asyncio.create_task(self._flush_loop(), name="ledger-flush")
        if self.config.share_retention_s:
            self._retention_task = asyncio.create_task(self._retention_loop(),
                                                       name="ledger-retention")

    async def stop(self) -> None:
        """Stop the flusher, commit what is buffered, close the store."""
        self._stopping = True
        await self._planner.cancel_refresh()
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
            self._retention_task = None
        if self._task is not None:
            # Let the flusher finish its cycle (a write in flight is completed, not cut off);
            # only a store hung past the grace period gets the task cancelled (the batch is
            # then put back and retried below).
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), _STOP_GRACE_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        if self._critical:  # block records still being written (their callers may be gone)
            await asyncio.gather(*self._critical, return_exceptions=True)
        if not self._store_open:
            with contextlib.suppress(StoreUnavailable):
                await self._open_store()
        if self._store_open:
            try:
                await asyncio.wait_for(self._flush(), _STOP_GRACE_S)
                await asyncio.wait_for(self.flush_energy(), _STOP_GRACE_S)
            except (StoreUnavailable, TimeoutError) as exc:
                log.error("ledger: final flush failed: %s", exc or type(exc).__name__)
        if self._buffer:
            n = len(self._buffer)
            self._buffer = []
            self._lose(n)
            log.error("ledger: %d buffered shares could not be committed at shutdown", n)
        if self._store_open:
            self._store_open = False
            await self.store.close()

    async def _open_store(self) -> None:
        if not self._store_open:
            await self.store.open()
            self._store_open = True
            self._healthy = True
            log.info("ledger store %s open (schema v%d)", redact(self.config.effective_url),
                     await self.store.schema_version())
        await self.replay_journal()

    async def _flush_loop(self) -> None:
        backoff = self._interval
        cycle_start = time.monotonic()
        while True:
            # Fixed cadence: a cycle starts every flush interval whatever the last commit took,
            # so a share waits at most one interval plus its own commit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.0, cycle_start + backoff - time.monotonic()))
            if self._stopping:
                return  # stop() does the final flush
            cycle_start = time.monotonic()
            try:
                ok = await self._cycle()
            except Exception:
                # The flusher must outlive any one bad cycle, or shares would pile up unseen.
                log.exception("ledger flusher cycle failed; retrying")
                ok = False
            self._update_lag()
            if not ok:
                backoff = min(max(backoff * 2, 0.1), _MAX_BACKOFF_S)
            elif len(self._buffer) >= self.config.batch_max_shares:
                backoff = 0.0  # behind: commit the next full batch at once
            else:
                backoff = self._interval

    async def _cycle(self) -> bool:
        """One flusher round: (re)open the store, commit shares, replay the journal after an
        outage, commit energy rows, refresh the split window. False if the store failed."""
        ok = True
        if not self._store_open:
            try:
                await self._open_store()
            except StoreUnavailable as exc:
                log.debug("ledger store still unavailable: %s", exc)
                ok = False
        if ok:
            was_healthy = self._healthy
            if not was_healthy and not self._buffer:
                ok = await self._probe()
            if ok:
                ok = await self._flush()
            if ok and not was_healthy:
                log.warning("ledger store is back; replaying the block journal")
                try:
                    await self.replay_journal()
                except StoreUnavailable as exc:
                    log.error("ledger journal replay failed: %s", exc)
        if ok and time.monotonic() - self._energy_flushed >= _ENERGY_FLUSH_S:
            self._energy_flushed = time.monotonic()
            try:
                await self.flush_energy()
            except StoreUnavailable as exc:
                log.error("ledger: energy rows not committed: %s", exc)
        if ok and self.config.payout == "split" and self._planner.refresh_due:
            try:
                await self.refresh_split()
            except StoreUnavailable as exc:
                log.error("split: window refresh failed: %s", exc)
        return ok

    async def prune(self, now: float | None = None, *, max_steps: int = 360) -> int:
        """Apply share retention: roll up and delete shares older than `share_retention_s`,
        `_PRUNE_STEP_S` of share time per transaction (short transactions: share commits keep
        flowing in between). Returns the shares deleted."""
        if not self.config.share_retention_s:
            return 0
        cutoff = (self._clock() if now is None else now) - self.config.share_retention_s
        deleted = 0
        for _ in range(max_steps):
            oldest = await self.store.oldest_share_time()
            if oldest is None or oldest >= cutoff:
                break
            deleted += await self.store.prune_shares(min(oldest + _PRUNE_STEP_S, cutoff))
            await asyncio.sleep(0)
        return deleted

    async def _retention_loop(self) -> None:
        while True:
            try:
                n = await self.prune()
                if n:
                    log.info("ledger retention: %d shares rolled up and deleted", n)
            except StoreUnavailable as exc:
                log.error("ledger retention: %s", exc)
            await asyncio.sleep(_RETENTION_INTERVAL_S)

    # -- shares

    def record_share(self, share: AcceptedShare) -> None:
        """Buffer an accepted share for the next batch. Never blocks; drops (counted) when full."""
        if len(self._buffer) >= self._max:
            self._lose(1)
            return
        self._buffer.append(share)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def writable(self) -> bool:
        """The store took its last batch or probe (for /readyz; blocks are safe either way:
        they fall back to the journal)."""
        return self._healthy

    async def flush(self) -> bool:
        """Commit the buffer now (tests, shutdown). False if the store refused it."""
        return await self._flush()

    async def _probe(self) -> bool:
        """A cheap read to learn whether an unhealthy store is back (no shares to write)."""
        try:
            await self.store.schema_version()
        except (StoreUnavailable, TimeoutError):
            return False
        return True

    async def _flush(self) -> bool:
        # Commit what is buffered now, not what arrives meanwhile: under overload the loop
        # still gets back to its other duties (lag gauge, split refresh) between rounds.
        left = len(self._buffer)
        while self._buffer and left > 0:
            if not self._head_known:
                try:
                    left -= await self._reload_head()
                except (StoreUnavailable, TimeoutError) as exc:
                    log.debug("ledger: chain head not readable: %s", exc)
                    self._healthy = False
                    return False
                continue
            if len(self._buffer) <= self.config.batch_max_shares:
                batch, self._buffer = self._buffer, []
            else:
                batch = self._buffer[:self.config.batch_max_shares]
                del self._buffer[:self.config.batch_max_shares]
            started = time.perf_counter()
            self._inflight_oldest = batch[0].time
            try:
                # Hashed here, once per batch (poold.ledger.chain), never on the share path.
                link = chain.share_link(self.chain, self._head, batch, self._clock())
                self._unsure = (link, len(batch))
                await self.store.insert_shares(batch, link)
                self._head, self._unsure = link, None
            except asyncio.CancelledError:
                # Cancelled mid-write (stop() past its grace period): not known to be committed,
                # so keep it; the retry re-reads the chain head and drops it if it did commit.
                self._inflight_oldest = None
                self._head_known = False
                self._requeue(batch)
                raise
            except (StoreUnavailable, TimeoutError) as exc:
                self._inflight_oldest = None
                self._head_known = False
                self._requeue(batch)
                if self._healthy:
                    log.error("ledger: share batch of %d not committed (%s); buffering "
                              "(%d buffered, bound %d)", len(batch), exc, len(self._buffer),
                              self._max)
                self._healthy = False
                return False
            self._inflight_oldest = None
            self.last_commit_seconds = time.perf_counter() - started
            left -= len(batch)
            self.committed_shares += len(batch)
            self.metrics.ledger_committed_shares.inc(len(batch))
        self._healthy = True
        return True

    async def _reload_head(self) -> int:
        """Read this writer's chain head (at start, and after a failed or cancelled commit).
        If the failed batch's link is the stored head, that batch did commit: its shares,
        requeued at the front of the buffer, are dropped rather than stored twice. Returns
        how many were dropped."""
        self._head = await self.store.chain_head(self.chain)
        self._head_known = True
        unsure, self._unsure = self._unsure, None
        if unsure is None or self._head is None or self._head.hash != unsure[0].hash:
            return 0
        n = min(unsure[1], len(self._buffer))
        del self._buffer[:n]
        log.warning("ledger: a share batch of %d reported failed had committed; not storing "
                    "it twice", n)
        self.committed_shares += n
        self.metrics.ledger_committed_shares.inc(n)
        return n

    def _requeue(self, batch: list[AcceptedShare]) -> None:
        self._buffer[:0] = batch
        overflow = len(self._buffer) - self._max
        if overflow > 0:
            del self._buffer[self._max:]  # keep the oldest: the committed prefix stays gap-free
            self._lose(overflow)

    def _lose(self, n: int) -> None:
        self.lost_shares += n
        self._lost_since_log += n
        self.metrics.ledger_lost_shares.inc(n)
        now = time.monotonic()
        if now - self._last_lost_log >= _LOST_LOG_INTERVAL_S:
            log.error("ledger: %d accepted shares dropped (buffer full at %d; store %s)",
                      self._lost_since_log, self._max,
                      "healthy" if self._healthy else "unavailable")
            self._lost_since_log = 0
            self._last_lost_log = now

    def _update_lag(self) -> None:
        """Age of the oldest share not yet committed (in flight or buffered); also run at
        scrape time, so a flusher stuck in a slow write still shows a growing lag."""
        oldest = self._inflight_oldest
        if self._buffer and (oldest is None or self._buffer[0].time < oldest):
            oldest = self._buffer[0].time
        self.metrics.ledger_lag_seconds.set(
            0.0 if oldest is None else max(0.0, self._clock() - oldest))

    # -- blocks

    async def record_block(self, block: FoundBlock) -> None:
        """Make a found block durable (store, else journal) before returning.

        The write runs shielded: if the caller is cancelled (shutdown), it still completes, and
        `stop()` waits for it before closing the store."""
        await self._shielded(self._record_block(block))

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._critical.add(task)
        task.add_done_callback(self._critical.discard)
        await asyncio.shield(task)

    async def _record_block(self, block: FoundBlock) -> None:
        now = self._clock()
        try:
            netdiff = network_difficulty_of(block.block_hex)
        except ValueError:
            netdiff = 0.0  # still record it: the block matters more than its metadata
        block, note = self._with_block_coinbase(block)
        outputs = self._output_rows(block)
        deltas = self._planner.take_plan(block.coinbase_outputs)
        commitment = self._commitment(block)
        credits = [Credit(block.hash_hex, a, d, "split", block.time) for a, d in deltas]
        event = BlockEvent(block.hash_hex, now, "recorded",
                           f"height {block.height} found by {block.worker} on instance "
                           f"{block.instance_id}{note}")
        # A store known to be failing is not tried (a block must not wait out a timeout): the
        # journal takes it at once and the flusher replays it when the store answers again.
        if self._store_open and self._healthy:
            try:
                new = await asyncio.wait_for(
                    self.store.insert_block(block, netdiff, outputs, event, credits,
                                            commitment),
                    self.config.block_write_timeout_s)
                if new:
                    self._planner.apply_split_deltas(deltas)
                log.info("block %s at height %d recorded", block.hash_hex, block.height)
                return
            except (StoreUnavailable, TimeoutError) as exc:
                self._healthy = False
                log.error("block %s not committed to the store (%s); journaling it",
                          block.hash_hex, exc or type(exc).__name__)
        await self._journal.append(journal.block_record(block, netdiff, now, deltas))
        self._planner.apply_split_deltas(deltas)
        log.critical("block %s at height %d written to the journal %s (store unavailable)",
                     block.hash_hex, block.height, self.config.journal_path)

    def _commitment(self, block: FoundBlock) -> tuple[str | None, str, str | None]:
        """What a found block commits to (schema v5, docs/AUDIT.md): the chain head (split:
        the one in its coinbase; else this writer's head as of its last flush), the payout
        settings in force, and for split the window its coinbase was planned from."""
        c = self.config
        head: str | None = self._head.head if self._head is not None else None
        window = None
        if c.payout == "split":
            committed = chain.committed_head(block.coinbase_outputs)
            link = self._recent_heads.get(committed) if committed is not None else None
            if committed == chain.GENESIS:
                head = f"{self.chain}:0:{chain.GENESIS.hex()}"
            elif committed is None or link is None:
                head = None if committed is None else f"{self.chain}:?:{committed.hex()}"
            else:
                head = link.head
            plan = self._plan_windows.pop(payout_key(block.coinbase_outputs), None)
            window = None if plan is None else json.dumps(plan, sort_keys=True)
        settings = {"payout": c.payout, "pplns_window_factor": c.pplns_window_factor,
                    "fee_ppm": payouts.fee_ppm(c.fee_percent), "dust_sat": c.dust_sat,
                    "max_outputs": c.max_outputs,
                    "split_max_output_bytes": c.split_max_output_bytes,
                    "fee_address": c.fee_address or None}
        return head, json.dumps(settings, sort_keys=True), window

    def _output_rows(self, block: FoundBlock) -> list[BlockOutput]:
        """The audit rows of a block's coinbase outputs, with addresses where known."""
        return [BlockOutput(n=n, script_hex=s.hex(), address=self._describe(s), value=v)
                for n, (s, v) in enumerate(block.coinbase_outputs)]

    @staticmethod
    def _with_block_coinbase(block: FoundBlock) -> tuple[FoundBlock, str]:
        """The audit records the coinbase the block really carries (every output, witness
        commitment included), read from the block itself; a disagreement with what the caller
        said is kept in the record's first event."""
        cb = coinbase_of(block.block_hex)
        if cb is None:
            log.error("block %s: the coinbase in block_hex does not parse", block.hash_hex)
            return block, "; block_hex coinbase unreadable"
        actual = tuple((o.script_pubkey, o.value) for o in cb.outputs)
        notes = []
        if payout_key(actual) != payout_key(block.coinbase_outputs):
            notes.append(f"; caller's outputs {[(s.hex(), v) for s, v in block.coinbase_outputs]}"
                         " differ from the block's")
        if cb.txid_hex != block.coinbase_txid_hex:
            notes.append(f"; caller's coinbase txid {block.coinbase_txid_hex} differs")
        if notes:
            log.error("block %s: %s", block.hash_hex, "".join(notes)[2:])
        return (dataclasses.replace(block, coinbase_outputs=actual,
                                    coinbase_txid_hex=cb.txid_hex), "".join(notes))

    async def record_submit_result(self, block_hash_hex: str, node: str,
                                   result: str | None) -> None:
        """Record one node's `submitblock` answer (None = accepted), durably (shielded too)."""
        await self._shielded(self._record_submit_result(
            SubmitResult(block_hash_hex, node, result, self._clock())))

    async def _record_submit_result(self, sr: SubmitResult) -> None:
        block_hash_hex = sr.block_hash_hex
        if self._store_open and self._healthy:
            try:
                if await asyncio.wait_for(self._apply_submit(sr),
                                          self.config.block_write_timeout_s):
                    return
            except (StoreUnavailable, TimeoutError) as exc:
                self._healthy = False
                log.error("submit result for %s not committed (%s); journaling it",
                          block_hash_hex, exc or type(exc).__name__)
        await self._journal.append(journal.submit_record(sr))

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

    # -- the journal (poold.ledger.journal)

    async def replay_journal(self) -> int:
        """Apply the journal to the store (idempotent); returns the records applied."""
        return await self._journal.replay(self._replay_one)

    async def _replay_one(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") == "block":
            block = journal.block_from_json(rec["block"])
            credits = [Credit(block.hash_hex, str(a), int(d), "split", block.time)
                       for a, d in rec.get("split_deltas", [])]
            event = BlockEvent(block.hash_hex, float(rec["recorded_at"]), "recorded",
                               f"height {block.height} found by {block.worker} on instance "
                               f"{block.instance_id}; replayed from the journal")
            await self.store.insert_block(block, float(rec["network_difficulty"]),
                                          self._output_rows(block), event, credits)
        elif rec.get("kind") == "submit":
            sr = journal.submit_from_record(rec)
            if not await self._apply_submit(sr):
                log.error("journal: submit result for unknown block %s kept as an event",
                          sr.block_hash_hex)
                await self.store.add_events([BlockEvent(
                    sr.block_hash_hex, sr.time, "orphan_submit_result",
                    f"{sr.node}: {sr.result}")])
        else:
            log.error("ledger journal: unknown record kind %r skipped", rec.get("kind"))

    # -- payouts (poold.ledger.planner)

    async def window_weights(self, network_difficulty: float,
                             until_time: float | None = None) -> dict[str, float]:
        """PPLNS weights of the window ending at `until_time` (see PayoutPlanner)."""
        return await self._planner.window_weights(network_difficulty, until_time)

    async def plan_coinbase(self, reward: int, network_difficulty: float,
                            finder_account: str = "") -> payouts.CoinbasePlan:
        """Who the coinbase of the next job pays, by account (see PayoutPlanner)."""
        return await self._planner.plan_coinbase(reward, network_difficulty, finder_account)

    async def coinbase_outputs(self, reward: int, network_difficulty: float,
                               finder_account: str = "") -> tuple[tuple[bytes, int], ...]:
        """The (script_pubkey, value) outputs for the next coinbase (see PayoutPlanner); in
        split mode followed by the chain commitment (docs/AUDIT.md)."""
        outputs = await self._planner.coinbase_outputs(reward, network_difficulty,
                                                       finder_account)
        return self._committed(outputs) if self.config.payout == "split" else outputs

    def _committed(self, outputs: tuple[tuple[bytes, int], ...]) -> tuple[tuple[bytes, int], ...]:
        """Split outputs plus the OP_RETURN committing this writer's chain head as of its last
        flush (job building is synchronous: no read here); the plan's window is kept for the
        block's record."""
        head = self._head.hash if self._head is not None else chain.GENESIS
        if self._head is not None:
            self._recent_heads[head] = self._head
            while len(self._recent_heads) > 64:
                self._recent_heads.popitem(last=False)
        self._plan_windows[payout_key(outputs)] = self._planner.split_window()
        while len(self._plan_windows) > 64:
            self._plan_windows.popitem(last=False)
        return (*outputs, (chain.commitment_script(head), 0))

    async def refresh_split(self, network_difficulty: float | None = None) -> None:
        """Re-read the window and balances `split_outputs` plans from (see PayoutPlanner)."""
        await self._planner.refresh_split(network_difficulty)

    def split_outputs(self, reward: int,
                      network_difficulty: float) -> tuple[tuple[bytes, int], ...]:
        """Split coinbase outputs from the cached window, without I/O (see PayoutPlanner),
        and the chain commitment."""
        return self._committed(self._planner.split_outputs(reward, network_difficulty))

    def set_accounts(self, accounts: tuple[tuple[str, str], ...]) -> None:
        """New login name -> payout address map (SIGHUP) for the payout plans."""
        self._planner.set_accounts(accounts)

    async def split_balances(self) -> dict[str, int]:
        return await self.store.balances(["split"])

    async def pplns_credits(self, block: BlockRecord) -> list[Credit]:
        """PPLNS credits of a block (for when it matures), from the window at its time."""
        return await self._planner.pplns_credits(block)

    async def payout_report(self) -> list[tuple[str, int, int, int]]:
        """(account, credited, paid, owed) for PPLNS: what a wallet process should pay."""
        credited = await self.store.balances(["pplns"])
        paid = await self.store.paid()
        return [(a, credited.get(a, 0), paid.get(a, 0), credited.get(a, 0) - paid.get(a, 0))
                for a in sorted(set(credited) | set(paid))]

    async def record_payment(self, account: str, amount: int, txid_hex: str) -> None:
        """A wallet process paid `amount` to `account` in `txid_hex`."""
        if amount <= 0:
            raise ValueError("payment amount must be positive")
        await self.store.add_payment(account, amount, txid_hex, self._clock())

    # -- audit and energy

    async def blocks(self, since: float = 0.0) -> list[BlockRecord]:
        return await self.store.blocks(since)

    async def reconcile(self, node: audit.NodeClient) -> audit.ReconcileReport:
        """Follow unmatured blocks on `node` (see audit.reconcile); PPLNS credits at maturity."""
        credit = self.pplns_credits if self.config.payout == "pplns" else None
        return await audit.reconcile(self.store, node, now=self._clock(),
                                     credit_on_maturity=credit)

    async def audit_blocks(self, since: float | None = None) -> list[dict[str, Any]]:
        """The audit log as JSON-ready dicts (what `/api/v1/blocks` serves; same fields as the
        JSON export): height, hash, outputs with addresses, submits per node, events."""
        return [audit.block_to_dict(b) for b in await self.store.blocks(since or 0.0)]

    async def reconcile_forever(self, node: audit.NodeClient, interval_s: float = 30.0) -> None:
        """Long-lived loop for the daemon's TaskGroup: reconcile every `interval_s`; a node or
        store error is logged and retried at the next round. Each round also records payouts
        to owed accounts seen in new blocks (`payments.PaymentWatcher`)."""
        watcher = payments.PaymentWatcher(self.store, Network(self.config.network),
                                          payments.account_addresses(self.config.network))
        while True:
            try:
                rep = await self.reconcile(node)
                if rep.changed or rep.mismatches:
                    log.info("reconcile: %d blocks checked, changed %s, mismatches %s",
                             rep.checked, rep.changed, rep.mismatches)
                await watcher.scan(node)
            except StoreUnavailable as exc:
                log.error("reconcile: ledger unavailable: %s", exc)
            except Exception as exc:  # node errors come in the node client's own types
                log.error("reconcile: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval_s)

    async def export(self, fmt: str, since: float = 0.0) -> str:
        """The audit log as CSV or JSON (what the API serves)."""
        return await audit.export_async(self.store, fmt, since)

    async def record_power(self, samples: Sequence[PowerSample]) -> None:
        """Telemetry from the fleet controller; energy rows are committed by `flush_energy`."""
        self.energy_meter.add_all(samples)

    async def flush_energy(self) -> None:
        rows = self.energy_meter.drain(self._clock())
        if rows:
            await self.store.insert_energy(rows)

    async def energy_report(self, start: float, end: float) -> EnergyReport:
        """J per accepted difficulty per worker and rack, kWh and cost per block, [start, end)."""
        return await energy_report(self.store, start, end, self.config.tariff_per_kwh)


async def energy_report(store: LedgerStore, start: float, end: float,
                        tariff_per_kwh: float) -> EnergyReport:
    """The energy report of a store over [start, end): energy rows joined with accepted
    difficulty; blocks = found blocks not rejected by every node (orphans count: their energy
    was spent)."""
    rows = await store.energy(start, end)
    difficulty = await store.share_totals(start, end)
    found = [b for b in await store.blocks(start)
             if b.time < end and b.status != BlockStatus.REJECTED]
    return report(rows, difficulty, start=start, end=end, blocks=len(found),
                  tariff_per_kwh=tariff_per_kwh)
