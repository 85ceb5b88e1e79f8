"""The Ledger: the pool's one front to the share ledger, found-block records and payouts.

Contract:

- `record_share(share)` is synchronous and never blocks (poold.ledger.sharebuffer: batches
  every `flush_interval_ms`, in order; past a 1 s window shares spill to an fsynced file;
  `pressure()` is the share engine's back-pressure; losses counted with their reason).
- `journal_block(block)` (poold.ledger.blocks) appends a found block to the local block
  journal (poold.ledger.journal) and fsyncs it; the block submitter awaits it *before* the block
  goes to any node, so a block a node accepted is always on disk here. `record_block(block)`
  then commits it to the store within `block_write_timeout_s` (honoured whatever the driver
  does on cancel: a late write is abandoned, not awaited) and retires the journal record once
  the store has it.
- `record_submit_result(hash, node, result)` records each node's answer the same way.
- Every pending journal record is replayed as soon as the store takes a write or answers a
  probe (and at start); replay is idempotent. `poold_ledger_journal_pending` and
  `poold_ledger_journal_oldest_age_seconds` show what waits.
- `writable` (/readyz, `poold_ledger_writable`) is the truth within ~2 s (poold.ledger.health).

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
from collections.abc import Callable, Sequence
from typing import Any

from poold.bitcoin.address import Network, script_to_address
from poold.ledger import audit, chain, journal, payments, payouts
from poold.ledger.blocks import BlockRecorder
from poold.ledger.config import LedgerConfig
from poold.ledger.energy import EnergyMeter, EnergyReport, PowerSample, report
from poold.ledger.health import PROBE_TIMEOUT_S, StoreHealth
from poold.ledger.planner import PayoutPlanner, payout_key
from poold.ledger.records import (
    AcceptedShare,
    BlockRecord,
    BlockStatus,
    Credit,
    FoundBlock,
    SubmitResult,
)
from poold.ledger.sharebuffer import ShareBuffer, reason_of
from poold.ledger.store import LedgerStore, StoreUnavailable, open_store, redact
from poold.lifetime import start_in_background, stop_background
from poold.metrics import Metrics

log = logging.getLogger("poold.ledger")

_MAX_BACKOFF_S = 1.0
_ENERGY_FLUSH_S = 60.0
_PRUNE_STEP_S = 10.0
_STOP_GRACE_S = 10.0
_RETENTION_INTERVAL_S = 60.0
SPILL_CHECK_S = 0.2


class Ledger:
    """Async front of the ledger: `run()` in the daemon's Lifetime (or `start()` / `stop()`)."""

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
        self._interval = config.flush_interval_ms / 1000.0
        self._store_open = False
        self._health = StoreHealth(self.store, redact(config.effective_url),
                                   self._wake_flusher)
        self._runner: asyncio.Task[None] | None = None  # start()'s
        self.started = asyncio.Event()  # run() has opened the ledger and runs its loops
        self._stopping = False
        self._wake = asyncio.Event()
        self._shares = ShareBuffer(config, self.store, self.metrics, clock,
                                   journal.ShareSpill(journal.spill_path(config.journal_path)))
        # The split coinbase's chain commitment comes out of the payout outputs' byte budget.
        self._planner = PayoutPlanner(dataclasses.replace(
            config, split_max_output_bytes=config.split_max_output_bytes
            - chain.COMMITMENT_OUTPUT_BYTES), self.store, clock)
        # Heads committed by recent split coinbases, and the windows of recent split plans.
        self._recent_heads: OrderedDict[bytes, chain.Link] = OrderedDict()
        self._plan_windows: OrderedDict[tuple[tuple[bytes, int], ...], dict[str, Any]] = (
            OrderedDict())
        self._blocks = BlockRecorder(config, self.store, self._health, self._planner, clock,
                                     describe=self._describe, writable=lambda: self.writable,
                                     unwritable_reason=lambda: self.unwritable_reason,
                                     commitment_of=self._commitment)
        self._journal = self._blocks.journal
        self.energy_meter = EnergyMeter()
        self._energy_flushed = time.monotonic()
        self.metrics.add_scrape_hook(self._update_lag)

    def _default_describe(self, script: bytes) -> str | None:
        try:
            return script_to_address(script, Network(self.config.network))
        except ValueError:
            return None

    # -- life cycle

    async def run(self) -> None:
        """Load the journal and the share spill, open the store (applying migrations) and
        replay; then (`started` set) the flusher, the spiller, the store probe and the retention
        loop in this task's TaskGroup until cancelled. On the way out the loops end in order
        (the flusher finishes its cycle), what is buffered is committed or spilled, and the
        store is closed (docs/DESIGN.md, "Processes and tasks").

        A store that is down at start is not fatal: shares buffer (and spill), blocks stay in
        the journal, and the flusher keeps trying to open it.
        """
        self.started.clear()
        self._stopping = False
        self._wake = asyncio.Event()
        await self._open()
        try:
            async with asyncio.TaskGroup() as tg:
                flusher = tg.create_task(self._flush_loop(), name="ledger-flush")
                spiller = tg.create_task(self._spill_loop(), name="ledger-spill")
                side = [tg.create_task(self._health.run(lambda: self._store_open),
                                       name="ledger-probe")]
                if self.config.share_retention_s:
                    side.append(tg.create_task(self._retention_loop(), name="ledger-retention"))
                self.started.set()
                try:
                    await asyncio.Future()  # until cancelled
                finally:
                    await self._end_loops(flusher, spiller, side)
        finally:
            await self._close()

    async def start(self) -> None:
        """`run()` in a task of its own until started (tests, benchmarks, the CLI); `stop()`
        ends it. The daemon runs `run()` in its Lifetime instead."""
        self._runner = await start_in_background(self.run(), self.started, "ledger")

    async def stop(self) -> None:
        """Stop the loops, commit what is buffered (or spill it), close the store."""
        runner, self._runner = self._runner, None
        await stop_background(runner)

    async def _open(self) -> None:
        try:
            pending = await self._journal.load()
            spilled = await self._shares.spill.load()
        except OSError as exc:
            log.critical("ledger: journal or share spill under %s unreadable (%s)",
                         self.config.state_dir, reason_of(exc))
            raise
        if pending or spilled:
            log.warning("ledger: %d journal records and %d spilled shares to replay",
                        pending, spilled)
        try:
            await self._open_store()
            if self.config.payout == "split":
                await self.refresh_split()
        except StoreUnavailable as exc:
            self._health.fail(reason_of(exc))
            log.error("ledger store %s unavailable at start (%s); buffering shares and "
                      "journaling blocks until it is back", redact(self.config.effective_url),
                      reason_of(exc))

    async def _end_loops(self, flusher: asyncio.Task[None], spiller: asyncio.Task[None],
                         side: list[asyncio.Task[None]]) -> None:
        self._stopping = True
        await self._planner.cancel_refresh()
        for task in side:  # the probe and the retention loop: nothing to finish
            task.cancel()
        await asyncio.wait(side)
        self._wake.set()
        await asyncio.wait((spiller,))  # ends by itself: a spill in progress completes
        # Let the flusher finish its cycle (a write in flight is completed, not cut off); only a
        # store hung past the grace period (short when the store is known to be failing) gets it
        # cancelled. Its cycle runs bounded (StoreHealth): a driver slow to honour the cancel is
        # not waited for, and the batch in flight is spilled by _close with its chain link.
        grace = _STOP_GRACE_S if self._health.healthy else PROBE_TIMEOUT_S
        done, _ = await asyncio.wait((flusher,), timeout=grace)
        if not done:
            flusher.cancel()
            await asyncio.wait((flusher,))

    async def _close(self) -> None:
        await self._blocks.settle()  # block records still being written
        if not self._store_open:
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                await self._health.bounded(self._open_store(), PROBE_TIMEOUT_S * 5, "ledger-open")
        if self._store_open and self._health.healthy:
            try:
                n = self._shares.buffered
                await self._health.bounded(self._shares.flush(), _STOP_GRACE_S,
                                           "ledger-final-flush")
                await self._health.bounded(self.flush_energy(), _STOP_GRACE_S,
                                           "ledger-final-energy")
                log.info("ledger: final flush done (%d buffered shares)", n)
            except (StoreUnavailable, TimeoutError) as exc:
                log.error("ledger: final flush failed: %s", reason_of(exc))
        if self._shares.in_memory:
            n = await self._shares.spill_all()
            log.warning("ledger: %d accepted shares not committed at shutdown are in the spill "
                        "file %s (committed at the next start)", n, self._shares.spill.path)
        if self._shares.buffered:
            self._shares.lose(self._shares.buffered, "neither committed nor spilled at shutdown")
        if self._journal.pending:
            log.error("ledger: %d journal records not yet in the store at shutdown (kept in "
                      "%s, replayed at the next start)", self._journal.pending,
                      self.config.journal_path)
        await self._health.settle()
        if self._store_open:
            self._store_open = False
            await self.store.close()
            log.info("ledger store %s closed", redact(self.config.effective_url))

    async def _open_store(self) -> None:
        if not self._store_open:
            await self.store.open()
            self._store_open = True
            self._health.ok()
            log.info("ledger store %s open (schema v%d)", redact(self.config.effective_url),
                     await self.store.schema_version())
        await self.replay_journal()

    # -- store health (poold.ledger.health)

    @property
    def writable(self) -> bool:
        """The store answered a write or a probe lately (for /readyz; blocks are safe either
        way: they are in the journal first)."""
        return self._store_open and self._health.healthy

    @property
    def unwritable_reason(self) -> str:
        return "" if self.writable else (
            self._health.reason if self._store_open else "store not open")

    # -- the flusher

    def _wake_flusher(self) -> None:
        self._wake.set()  # the store is back: the journal and the spill are replayed at once

    async def _flush_loop(self) -> None:
        backoff = self._interval
        cycle_start = time.monotonic()
        while True:
            # Fixed cadence: a cycle starts every flush interval whatever the last commit took,
            # so a share waits at most one interval plus its own commit.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(),
                                       max(0.0, cycle_start + backoff - time.monotonic()))
            self._wake.clear()
            if self._stopping:
                return  # stop() does the final flush
            cycle_start = time.monotonic()
            try:
                # In a task of its own, so that a cancel (stop, past the grace) does not wait
                # on a driver slow to honour it: StoreHealth abandons it and settles it later.
                ok = await self._health.bounded(self._cycle(), None, "ledger-flush-cycle")
            except Exception:
                # The flusher must outlive any one bad cycle, or shares would pile up unseen.
                log.exception("ledger flusher cycle failed; retrying")
                ok = False
            self._update_lag()
            if not ok:
                backoff = min(max(backoff * 2, 0.1), _MAX_BACKOFF_S)
            elif self._shares.buffered >= self.config.batch_max_shares:
                backoff = 0.0  # behind: commit the next full batch at once
            else:
                backoff = self._interval

    async def _cycle(self) -> bool:
        """One flusher round: (re)open the store, commit spilled and buffered shares, replay
        what the journal holds, commit energy rows, refresh the split window. False if the
        store failed."""
        ok = True
        if not self._store_open:
            try:
                await self._open_store()
            except StoreUnavailable as exc:
                self._health.fail(reason_of(exc))
                log.debug("ledger store still unavailable: %s", reason_of(exc))
                ok = False
        if ok:
            wrote = await self._shares.flush()
            if wrote is False:
                self._health.fail(self._shares.last_error)
                ok = False
            elif wrote:
                self._health.ok()
            elif not self._health.healthy:
                ok = await self._health.probe()
        if ok and self._blocks.replay_wanted:
            try:
                await self.replay_journal()
            except (StoreUnavailable, TimeoutError) as exc:
                self._health.fail(reason_of(exc))
                log.error("ledger journal replay failed: %s", reason_of(exc))
                ok = False
        self._blocks.check_stale()
        if ok and time.monotonic() - self._energy_flushed >= _ENERGY_FLUSH_S:
            self._energy_flushed = time.monotonic()
            try:
                await self.flush_energy()
            except StoreUnavailable as exc:
                log.error("ledger: energy rows not committed: %s", reason_of(exc))
        if ok and self.config.payout == "split" and self._planner.refresh_due:
            try:
                await self.refresh_split()
            except StoreUnavailable as exc:
                log.error("split: window refresh failed: %s", reason_of(exc))
        return ok

    async def _spill_loop(self) -> None:
        """Moves shares past the in-memory window to the spill file (sharebuffer)."""
        wanted = self._shares.spill_wanted
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wanted.wait(), SPILL_CHECK_S)
            if not self._stopping:
                await self._shares.spill_due()

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
                log.error("ledger retention: %s", reason_of(exc))
            await asyncio.sleep(_RETENTION_INTERVAL_S)

    # -- shares (poold.ledger.sharebuffer)

    def record_share(self, share: AcceptedShare) -> None:
        """Buffer an accepted share for the next batch. Never blocks."""
        self._shares.record(share)

    def pressure(self) -> float:
        """Back-pressure factor (>= 1) the share engine's vardiff scales its goal by."""
        return self._shares.pressure()

    @property
    def chain(self) -> str:
        """This writer's share chain (poold.ledger.chain)."""
        return self._shares.chain

    @property
    def buffered(self) -> int:
        return self._shares.buffered

    @property
    def backlog(self) -> int:
        """Accepted shares not yet committed (in memory and in the spill file)."""
        return self._shares.backlog

    @property
    def lost_shares(self) -> int:
        return self._shares.lost

    @property
    def committed_shares(self) -> int:
        return self._shares.committed

    @property
    def spilled_shares(self) -> int:
        """Shares written to the spill file so far (committed from there later)."""
        return self._shares.spilled

    @property
    def last_commit_seconds(self) -> float:
        return self._shares.last_commit_seconds

    async def flush(self) -> bool:
        """Commit the spill and the buffer now (tests, shutdown). False if the store refused."""
        return await self._shares.flush() is not False

    def _update_lag(self) -> None:
        """Scrape-time gauges (also run by the flusher): share lag, writable, journal, spill
        and back-pressure; a flusher stuck in a slow write still shows a growing lag."""
        m = self.metrics
        m.ledger_lag_seconds.set(self._shares.lag())
        m.ledger_writable.set(1.0 if self.writable else 0.0)
        m.ledger_journal_pending.set(self._journal.pending)
        m.ledger_journal_oldest_age_seconds.set(self._journal.oldest_age())
        m.ledger_spilled_shares.set(self._shares.spill.pending_shares)
        m.ledger_pressure.set(self._shares.pressure())

    # -- blocks and the journal (poold.ledger.blocks, poold.ledger.journal)

    async def journal_block(self, block: FoundBlock) -> None:
        """Append a found block to the journal and fsync it (once per block, however often it
        is called). The block submitter awaits this before the block goes to any node."""
        await self._blocks.journal_block(block)

    async def record_block(self, block: FoundBlock) -> None:
        """Make a found block durable (journal first, then the store) before returning.

        The write runs shielded: if the caller is cancelled (shutdown), it still completes, and
        `stop()` waits for it before closing the store."""
        await self._blocks.record_block(block)

    async def record_submit_result(self, block_hash_hex: str, node: str,
                                   result: str | None) -> None:
        """Record one node's `submitblock` answer (None = accepted), durably (shielded too)."""
        await self._blocks.record_submit_result(
            SubmitResult(block_hash_hex, node, result, self._clock()))

    @property
    def journal_pending(self) -> int:
        """Journal records not yet in the store."""
        return self._journal.pending

    async def replay_journal(self) -> int:
        """Apply the journal's pending records to the store (idempotent); returns how many.
        Records `record_block` is committing right now are left to it."""
        return await self._blocks.replay()

    def _commitment(self, block: FoundBlock) -> tuple[str | None, str, str | None]:
        """What a found block commits to (schema v5, docs/AUDIT.md): the chain head (split:
        the one in its coinbase; else this writer's head as of its last flush), the payout
        settings in force, and for split the window its coinbase was planned from."""
        c = self.config
        head: str | None = self._shares.head.head if self._shares.head is not None else None
        window = None
        if c.payout == "split":
            committed = chain.committed_head(block.coinbase_outputs)
            link = self._recent_heads.get(committed) if committed is not None else None
            if committed == chain.GENESIS:
                head = f"{self._shares.chain}:0:{chain.GENESIS.hex()}"
            elif committed is None or link is None:
                head = None if committed is None else f"{self._shares.chain}:?:{committed.hex()}"
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

    def chain_commitment(self) -> tuple[bytes, int]:
        """The zero-value OP_RETURN output committing this writer's chain head as of its last
        flush (docs/AUDIT.md), for a coinbase built without the split planner."""
        head = self._shares.head
        return (chain.commitment_script(head.hash if head is not None else chain.GENESIS), 0)

    def _committed(self, outputs: tuple[tuple[bytes, int], ...]) -> tuple[tuple[bytes, int], ...]:
        """Split outputs plus the OP_RETURN committing this writer's chain head as of its last
        flush (job building is synchronous: no read here); the plan's window is kept for the
        block's record."""
        head = self._shares.head.hash if self._shares.head is not None else chain.GENESIS
        if self._shares.head is not None:
            self._recent_heads[head] = self._shares.head
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
        from poold.ledger.export import export_blocks

        return await export_blocks(self.store, since or 0.0, config=self.config)

    async def public_windows(self, since: float | None = None) -> list[dict[str, Any]] | None:
        """Each block's window for `/api/v1/public/windows`; None while `[api] public_windows`
        is off (the default)."""
        if not self.config.public_windows:
            return None
        from poold.ledger.export import public_windows

        return await public_windows(self.store, since or 0.0, config=self.config)

    async def reconcile_forever(self, node: audit.NodeClient, interval_s: float = 30.0) -> None:
        """Long-lived loop for the daemon's TaskGroup: reconcile every `interval_s`; a node or
        store error is logged and retried at the next round. Each round also records payouts
        to owed accounts seen in new blocks (`payments.PaymentWatcher`)."""
        def address_of(account: str) -> str | None:
            # as the planner resolves it now (its account table follows SIGHUP)
            return self._planner.accounts.address_of(account)

        watcher = payments.PaymentWatcher(self.store, Network(self.config.network), address_of)
        leading: list[bool | None] = [None]

        async def one_round() -> None:
            lead = await self.store.lead("reconcile")
            if lead != leading[0]:
                log.info("reconcile: %s", "this instance reconciles found blocks" if lead
                         else "another instance on this ledger reconciles found blocks")
                leading[0] = lead
            if lead:
                rep = await self.reconcile(node)
                if rep.changed or rep.mismatches:
                    log.info("reconcile: %d blocks checked, changed %s, mismatches %s",
                             rep.checked, rep.changed, rep.mismatches)
                await watcher.scan(node)

        while True:
            try:
                # Bounded, and cancelled at once at shutdown even if the driver is stuck in a
                # call to a hung server (the daemon's TaskGroup waits for this task).
                await self._health.bounded(one_round(), max(interval_s, 30.0),
                                           "ledger-reconcile")
            except (StoreUnavailable, TimeoutError) as exc:
                log.error("reconcile: ledger unavailable: %s", reason_of(exc))
            except Exception as exc:  # node errors come in the node client's own types
                log.error("reconcile: %s", reason_of(exc))
            await asyncio.sleep(interval_s)

    async def export(self, fmt: str, since: float = 0.0) -> str:
        """The audit log as CSV or JSON (what the API serves)."""
        return await audit.export_async(self.store, fmt, since, config=self.config)

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
