"""Accepted shares between `Ledger.record_share` and the store: the in-memory window, the share
spill on disk, ordered batch commits, and the back-pressure factor.

- `record` appends to an in-memory buffer (never blocks, never does I/O).
- `flush` commits the spill's pending batches first (they are the oldest shares), then what is
  buffered, in batches of at most `batch_max_shares`, in order. Each batch gets a random id
  when it is formed (schema v6), which every commit of it carries and its spill record keeps:
  a commit that timed out or went unanswered and landed later, and a retry or replay of the
  same batch, never both count (the store refuses the id a second time), whatever the order.
- `spill_due` moves shares older than `SPILL_AFTER_S` (or beyond half the buffer bound) to the
  fsynced spill file (poold.ledger.journal.ShareSpill), so a `kill -9` during an outage or while
  the store is behind loses at most that window (and the batch being committed), and shutdown
  never drops what the store did not take.
- `pressure` is >= 1 while the ledger lags: the share engine scales its vardiff goal by it, so
  new jobs carry a higher difficulty (fewer, larger shares; the same pay) until it catches up.
Nothing is dropped but when the spill itself fails (the disk will not take it) with memory past
its bound, or a spilled batch cannot be read back; each loss is counted
(`poold_ledger_lost_shares`) and logged with the reason (rate-limited). Memory past its bound
while the spill merely lags (a burst above what the disk takes) keeps every share: a WARNING,
and the back-pressure factor at its maximum.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Callable
from operator import attrgetter
from typing import NamedTuple

from poold.ledger import chain
from poold.ledger.config import LedgerConfig
from poold.ledger.journal import ShareSpill, new_batch_id
from poold.ledger.records import AcceptedShare
from poold.ledger.store import LedgerStore, StoreUnavailable
from poold.metrics import Metrics

log = logging.getLogger("poold.ledger")

# Shares not committed this long after they were accepted go to the spill file.
SPILL_AFTER_S = 1.0
# Lag (s) at which back-pressure starts (a busy but healthy ledger stays well below it):
# pressure = lag / this, from 1 up to PRESSURE_MAX.
PRESSURE_LAG_S = 2.0
PRESSURE_MAX = 16.0
_LOST_LOG_INTERVAL_S = 10.0
_share_time = attrgetter("time")


class _Attempt(NamedTuple):
    """A commit of one batch: its link, its shares, its spill seq (None: only in memory) and
    its batch id (None: a spill record from before v6)."""

    link: chain.Link
    shares: list[AcceptedShare]
    seq: int | None
    batch_id: str | None


def reason_of(exc: BaseException) -> str:
    """An exception as a log reason that is never empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ShareBuffer:
    """The share path of one Ledger (module docstring)."""

    def __init__(self, config: LedgerConfig, store: LedgerStore, metrics: Metrics,
                 clock: Callable[[], float], spill: ShareSpill) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.spill = spill
        self._clock = clock
        self._buffer: list[AcceptedShare] = []
        self._max = config.buffer_max_shares
        self._spill_mark = max(1, self._max // 2)
        self.spill_wanted = asyncio.Event()
        self._inflight_oldest: float | None = None
        self._spilling_oldest: float | None = None
        self._lost_since_log = 0
        self._last_lost_log = 0.0
        self._last_bound_log = -math.inf
        self._last_reason = ""
        self._write_failing = False
        self.last_error = ""
        self._flush_lock = asyncio.Lock()
        self.chain = chain.share_chain(config.instance_id, config.writer)
        self.head: chain.Link | None = None  # the last link of this writer's share chain
        self._head_known = False
        # The last attempt of a batch whose commit failed or was cancelled (its outcome
        # unknown until the head is read); one from memory is retried as it is, with its id.
        self._held: _Attempt | None = None
        self._writing: _Attempt | None = None
        self.lost = 0
        self.committed = 0
        self.spilled = 0
        self.last_commit_seconds = 0.0

    # -- the hot path

    def record(self, share: AcceptedShare) -> None:
        buf = self._buffer
        if len(buf) >= self._spill_mark:
            self.spill_wanted.set()  # half full: the spiller goes now, not at its next tick
            if len(buf) >= self._max:
                self._over_bound()
        buf.append(share)  # an accepted share is kept: past the bound is back-pressure, not loss

    def _over_bound(self) -> None:
        """The store and the spill file are both behind (a burst above what the disk takes):
        the share is kept all the same, `pressure` is at its maximum (vardiff aims at the
        fewest, largest shares), and a WARNING says so at most every 10 s."""
        now = time.monotonic()
        if now - self._last_bound_log >= _LOST_LOG_INTERVAL_S:
            self._last_bound_log = now
            log.warning("ledger: %d accepted shares in memory, past ledger.buffer_max_shares "
                        "(%d): the store and the spill file are both behind; every share is "
                        "kept and vardiff is at its maximum back-pressure (x%.0f) until they "
                        "catch up", len(self._buffer), self._max, PRESSURE_MAX)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def in_memory(self) -> int:
        """Shares only in memory: buffered, being committed, or held after a commit that
        failed or went unanswered."""
        unsure = self._held if self._held is not None else self._writing
        return len(self._buffer) + (len(unsure.shares) if unsure is not None
                                    and unsure.seq is None else 0)

    @property
    def backlog(self) -> int:
        """Shares accepted and not yet committed (in memory or in the spill file)."""
        return self.in_memory + self.spill.pending_shares

    def oldest_time(self) -> float | None:
        held = self._held
        times = [t for t in (self._inflight_oldest, self._spilling_oldest,
                             self.spill.oldest_time, held.shares[0].time if held else None,
                             self._buffer[0].time if self._buffer else None) if t is not None]
        return min(times) if times else None

    def lag(self) -> float:
        """Age of the oldest share not yet committed (in flight, spilled or buffered)."""
        oldest = self.oldest_time()
        return 0.0 if oldest is None else max(0.0, self._clock() - oldest)

    def pressure(self) -> float:
        """Back-pressure factor for the share engine: 1 while the ledger keeps up."""
        if len(self._buffer) >= self._max:
            return PRESSURE_MAX
        return max(1.0, min(PRESSURE_MAX, self.lag() / PRESSURE_LAG_S))

    # -- commits

    async def flush(self) -> bool | None:
        """Commit the spill's pending batches, then what is buffered now (not what arrives
        meanwhile: under overload the caller still gets to its other duties between rounds).
        True: the store took writes; None: nothing to write; False: the store failed.
        One flush at a time (the flusher, `Ledger.flush`, shutdown): a spilled batch must be
        committed once."""
        async with self._flush_lock:
            try:
                return await self._flush()
            except (StoreUnavailable, TimeoutError) as exc:  # reading the chain head
                self.last_error = reason_of(exc)
                return False

    async def _flush(self) -> bool | None:
        wrote = False
        if not self._head_known and (self._held or self._buffer or self.spill.pending_batches):
            wrote = await self._reload_head()
        for _ in range(self.spill.pending_batches):
            try:
                got = await self.spill.oldest()
            except (OSError, ValueError, KeyError, TypeError) as exc:
                seq = self.spill.oldest_seq
                if seq is None:
                    break
                n = await self.spill.discard(seq)
                self.lose(n, f"spill batch {seq} unreadable ({reason_of(exc)})")
                continue
            if got is None:
                break
            seq, shares, link_hex, batch_id = got
            if not self._head_known:
                wrote = await self._reload_head() or wrote
            if (link_hex is not None and self.head is not None
                    and self.head.hash.hex() == link_hex):
                # Spilled while its commit was unanswered: it did commit.
                await self.spill.retire(seq)
                self._count(len(shares))
                continue
            if not await self._commit(shares, seq, batch_id):
                return False
            await self.spill.retire(seq)
            wrote = True
        held = self._held
        if held is not None and held.seq is None:
            # Its commit failed and the head says it did not land: again, as the same batch.
            if not self._head_known:
                wrote = await self._reload_head() or wrote
            if self._held is not None:
                self._held = None
                if not await self._commit(held.shares, None, held.batch_id):
                    return False
                wrote = True
        left = len(self._buffer)
        batch_max = self.config.batch_max_shares
        while self._buffer and left > 0:
            if not self._head_known:
                wrote = await self._reload_head() or wrote
            if len(self._buffer) <= batch_max:
                batch, self._buffer = self._buffer, []
            else:
                batch = self._buffer[:batch_max]
                del self._buffer[:batch_max]
            if not await self._commit(batch, None, new_batch_id()):
                return False
            left -= len(batch)
            wrote = True
        return True if wrote else None

    async def _commit(self, batch: list[AcceptedShare], seq: int | None,
                      batch_id: str | None) -> bool:
        """Commit one batch as the next link of this writer's chain (poold.ledger.chain),
        with its batch id. A batch from the buffer whose commit fails is held aside until the
        chain head tells whether it landed after all (`_reload_head`), then retried as it is;
        one from the spill stays in the spill. If the store has the id already (an earlier
        attempt landed unanswered, or before a crash kept its `done` line from the spill
        file), nothing is written twice and the head is read again before the next link."""
        started = time.perf_counter()
        self._inflight_oldest = batch[0].time
        # Hashed here, once per batch, never on the share path.
        link = chain.share_link(self.chain, self.head, batch, self._clock())
        self._writing = _Attempt(link, batch, seq, batch_id)
        try:
            stored = await self.store.insert_shares(batch, link, batch_id)
        except asyncio.CancelledError:
            # Cancelled mid-write (shutdown past its grace period): not known to be committed.
            self._inflight_oldest = None
            self._head_known = False
            self._held, self._writing = self._writing, None
            raise
        except (StoreUnavailable, TimeoutError) as exc:
            self._inflight_oldest = None
            self._head_known = False
            self._held, self._writing = self._writing, None
            self.last_error = reason_of(exc)
            if not self._write_failing:
                self._write_failing = True
                log.error("ledger: share batch of %d not committed (%s); %d buffered, %d in "
                          "the spill file", len(batch), self.last_error, len(self._buffer),
                          self.spill.pending_shares)
            return False
        if stored is False:
            log.warning("ledger: share batch %s (%d shares) had committed in an earlier "
                        "attempt whose answer was lost; not storing it twice",
                        batch_id, len(batch))
            self._head_known = False  # the stored head is past ours
        else:
            self.head = link
        self._inflight_oldest = None
        self._writing = None
        if self._write_failing:
            self._write_failing = False
            log.warning("ledger: share batches commit again (%d buffered, %d in the spill file)",
                        len(self._buffer), self.spill.pending_shares)
        self.last_commit_seconds = time.perf_counter() - started
        self._count(len(batch))
        return True

    def _count(self, n: int) -> None:
        self.committed += n
        self.metrics.ledger_committed_shares.inc(n)

    async def _reload_head(self) -> bool:
        """Read this writer's chain head (at start, after a failed or cancelled commit, and
        after a batch was found committed by an earlier attempt). The held batch is settled
        by it: if its link is the stored head it did commit (not stored twice); else one from
        memory stays held, to be retried with its id, and one from the spill stays there.
        Returns whether the held batch had committed."""
        self.head = await self.store.chain_head(self.chain)
        self._head_known = True
        held = self._held
        if held is None:
            return False
        if self.head is not None and self.head.hash == held.link.hash:
            self._held = None
            log.warning("ledger: a share batch of %d reported failed had committed; not "
                        "storing it twice", len(held.shares))
            if held.seq is not None:
                await self.spill.retire(held.seq)
            self._count(len(held.shares))
            return True
        if held.seq is not None:
            self._held = None
        return False

    # -- the spill

    async def spill_due(self) -> int:
        """Move shares past the in-memory window to the spill file; returns how many. A batch
        held after a failed commit goes first, whole, with its link and id."""
        buf = self._buffer
        cutoff = self._clock() - SPILL_AFTER_S
        n = 0
        if buf:
            self.spill_wanted.clear()
            n = bisect.bisect_left(buf, cutoff, key=_share_time)
            n = max(n, len(buf) - self._spill_mark // 2)
        held = self._held
        done = 0
        if (held is not None and held.seq is None and (n > 0 or held.shares[0].time < cutoff)
                and not self._flush_lock.locked()):
            done = await self._spill_held()
        if n <= 0:
            return done
        batch = buf[:n]
        del buf[:n]
        return done + await self._spill(batch)

    async def _spill_held(self) -> int:
        """The held batch to the spill file (under the flush lock: the flusher is not
        retrying it meanwhile)."""
        async with self._flush_lock:
            held = self._held
            if held is None or held.seq is not None:
                return 0
            self._spilling_oldest = held.shares[0].time
            try:
                await self.spill.append(held.shares, held.link.hash.hex(), held.batch_id)
            except OSError as exc:
                log.error("ledger: %d shares not spilled to %s (%s); kept in memory",
                          len(held.shares), self.spill.path, reason_of(exc))
                return 0
            finally:
                self._spilling_oldest = None
            self._held = None
            self.spilled += len(held.shares)
            return len(held.shares)

    async def spill_all(self) -> int:
        """Shutdown: everything still buffered goes to the spill file; a batch whose commit
        went unanswered goes with its link (the next start checks it against the head)."""
        n = 0
        # A commit still unanswered (a hung store that did not honour the cancel) counts as
        # held: its outcome is unknown.
        unsure = self._held if self._held is not None else self._writing
        if unsure is not None and unsure.seq is None:
            link, held, _seq, batch_id = unsure
            self._held = self._writing = None
            try:
                await self.spill.append(held, link.hash.hex(), batch_id)
                n += len(held)
                self.spilled += len(held)
            except OSError as exc:
                self.lose(len(held), f"spill file {self.spill.path} unwritable "
                                     f"({reason_of(exc)}) at shutdown")
        batch, self._buffer = self._buffer, []
        return n + await self._spill(batch)

    async def _spill(self, batch: list[AcceptedShare]) -> int:
        step = self.config.batch_max_shares
        done = 0
        self._spilling_oldest = batch[0].time if batch else None
        try:
            while done < len(batch):
                await self.spill.append(batch[done:done + step])
                done += min(step, len(batch) - done)
        except OSError as exc:
            rest = batch[done:]
            log.error("ledger: %d shares not spilled to %s (%s); kept in memory", len(rest),
                      self.spill.path, reason_of(exc))
            self._buffer[:0] = rest
            overflow = len(self._buffer) - self._max
            if overflow > 0:
                del self._buffer[self._max:]
                self.lose(overflow, f"spill file {self.spill.path} unwritable "
                                    f"({reason_of(exc)}) and the buffer full")
        finally:
            self._spilling_oldest = None
        self.spilled += done
        return done

    def lose(self, n: int, reason: str) -> None:
        """Count (and log, at most every 10 s per reason change) shares that are lost."""
        if n <= 0:
            return
        self.lost += n
        self._lost_since_log += n
        self.metrics.ledger_lost_shares.inc(n)
        now = time.monotonic()
        if now - self._last_lost_log >= _LOST_LOG_INTERVAL_S or reason != self._last_reason:
            log.error("ledger: %d accepted shares lost: %s", self._lost_since_log, reason)
            self._lost_since_log = 0
            self._last_lost_log = now
            self._last_reason = reason
