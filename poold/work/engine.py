"""The share path: judge one `mining.submit` against its job, credit it, and spot blocks.

Order of checks (cheapest first; each failure is a `RejectReason`, docs/STRATUM.md §8):
job known and sent to this payout group (21) -> ntime in [template mintime, now + 7200] (20) ->
native check (malformed hex 20, version bits outside the session's mask 20) -> duplicate (22,
keyed on the header hash, which covers extranonce1/2, ntime, nonce and version bits) -> block? ->
stale job (21) -> low difficulty (23); a stale share below the share target is
`stale_low_difficulty` (21 on the wire, but it counts toward the session's invalid-share ladder).

A share whose hash meets the network target is handed to `on_block` before anything can refuse
it, even when its job is stale (ckpool and DATUM do the same): a block is worth more than any
bookkeeping. It is credited as an accepted share unless the job is stale.

Difficulty is frozen per job: each session keeps a short table of (first job seq, difficulty,
target) entries; a share is judged against the entry of its job's seq, or against the difficulty
announced since if that is lower (a miner that applies a decrease early is not punished). A new
difficulty is "pending" until the next job is sent, and announced with it.

No I/O here: the caller passes `now`, the share sink is a sync non-blocking call, and blocks go to
a callback that schedules their submission.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from poold.bitcoin.sharecore import SessionCore, ShareFormatError
from poold.bitcoin.target import difficulty_to_target, target_to_le32
from poold.work.blocks import BlockCandidate
from poold.work.difficulty import DifficultyPolicy
from poold.work.jobs import Job, JobBook, JobWork
from poold.work.records import AcceptedShare
from poold.work.shares import RejectReason
from poold.work.vardiff import Vardiff

# Consensus: a header's time may be at most 2 hours past the node's adjusted time.
MAX_FUTURE_S = 7200
# Difficulty table entries kept per session beyond those still needed by live jobs.
MAX_DIFFICULTY_ENTRIES = 32

_JOB_NOT_FOUND = RejectReason.job_not_found
_STALE = RejectReason.stale
_STALE_LOW = RejectReason.stale_low_difficulty
_DUPLICATE = RejectReason.duplicate
_LOW = RejectReason.low_difficulty
_NTIME = RejectReason.ntime_out_of_range
_MALFORMED = RejectReason.malformed
_VBITS = RejectReason.version_bits_outside_mask


class ShareSink(Protocol):
    """Where accepted shares go (the ledger); must not block."""

    def record_share(self, share: AcceptedShare) -> None: ...


class NullShareSink:
    """Drops shares (tests and a pool run without a ledger)."""

    def record_share(self, share: AcceptedShare) -> None:
        return None


class TeeShareSink:
    """Hands every accepted share to several sinks (the ledger and the fleet controller's
    share-rate estimator), in order."""

    __slots__ = ("sinks",)

    def __init__(self, *sinks: ShareSink) -> None:
        self.sinks = sinks

    def record_share(self, share: AcceptedShare) -> None:
        for sink in self.sinks:
            sink.record_share(share)


class SessionWork:
    """Per-session state of the work side: kept small, it exists once per connection."""

    __slots__ = ("core", "core_work", "curtailed", "en1", "group_key", "last_difficulty",
                 "last_seq", "mask", "md", "minimum", "pending", "table", "vd_shares", "vd_since")

    def __init__(self, en1: bytes, mask: int, now: float) -> None:
        self.en1 = en1
        self.mask = mask
        self.group_key: bytes | None = None
        # (first job seq, difficulty, target, target as 32 little-endian bytes), ascending seq.
        self.table: list[tuple[int, float, int, bytes]] = []
        self.pending: float | None = None
        self.last_seq = 0
        self.minimum: float | None = None
        self.md: float | None = None
        self.core_work: JobWork | None = None
        self.core: SessionCore | None = None
        self.vd_shares = 0
        self.vd_since = now
        self.last_difficulty = 0.0
        # Set by the fleet controller's bridge (poold.daemon): the miner is asleep or turned
        # down on purpose, so its silence is no reason to lower the difficulty.
        self.curtailed = False

    @property
    def difficulty(self) -> float | None:
        """The newest difficulty (pending or announced), None before the first one."""
        if self.pending is not None:
            return self.pending
        return self.table[-1][1] if self.table else None

    def entry_for(self, seq: int) -> tuple[int, float, int, bytes]:
        """The difficulty entry a share of job `seq` is judged against (see module doc)."""
        table = self.table
        last = table[-1]
        if seq >= last[0]:
            return last
        for entry in reversed(table):
            if seq >= entry[0]:
                break
        else:
            entry = table[0]
        return last if last[2] > entry[2] else entry


def _no_pressure() -> float:
    return 1.0


class ShareEngine:
    """Jobs for sessions, difficulty bookkeeping and the share check."""

    __slots__ = ("book", "difficulty", "instance_id", "on_block", "pressure", "share_sink",
                 "stats", "vardiff")

    def __init__(
        self,
        book: JobBook,
        difficulty: DifficultyPolicy,
        vardiff: Vardiff | None,
        *,
        instance_id: int,
        on_block: Callable[[BlockCandidate], None],
        share_sink: ShareSink | None = None,
    ) -> None:
        self.book = book
        self.difficulty = difficulty
        self.vardiff = vardiff
        self.instance_id = instance_id
        self.on_block = on_block
        self.share_sink: ShareSink = NullShareSink() if share_sink is None else share_sink
        # Back-pressure from the ledger (`Ledger.pressure`, >= 1 while it lags): vardiff aims
        # at one share per `pressure` share intervals, so new jobs carry a higher difficulty
        # (the same pay in fewer shares) until the ledger catches up.
        self.pressure: Callable[[], float] = _no_pressure
        # Accepted difficulty summed since the last `take_accepted_difficulty` (hashrate gauge).
        self.stats = [0.0]

    # --- difficulty --------------------------------------------------------------------------

    def request_difficulty(self, sw: SessionWork, wanted: float, now: float) -> bool:
        """Ask for `wanted` (a suggestion, d=, or vardiff); True if the session's difficulty
        changes (announced with the next job)."""
        d = self.difficulty.resolve(wanted, sw.minimum, sw.md)
        if d == sw.difficulty:
            return False
        sw.pending = d
        sw.vd_shares = 0
        sw.vd_since = now
        return True

    def set_floors(
        self, sw: SessionWork, minimum: float | None, md: float | None, now: float
    ) -> bool:
        """Record BIP310 minimum-difficulty / md= floors; raise the difficulty if below them."""
        if minimum is not None:
            sw.minimum = minimum
        if md is not None:
            sw.md = md
        current = sw.difficulty
        if current is None:
            return False
        return self.request_difficulty(sw, current, now)

    def start(self, sw: SessionWork, group_key: bytes, suggested: float | None, now: float) -> None:
        """The session is authorized: join a payout group and fix the first difficulty."""
        sw.group_key = group_key
        if sw.pending is None and not sw.table:
            wanted = self.difficulty.start if suggested is None else suggested
            sw.pending = self.difficulty.resolve(wanted, sw.minimum, sw.md)

    def maybe_retarget(self, sw: SessionWork, now: float) -> bool:
        """Vardiff; True if a new difficulty is now pending."""
        vd = self.vardiff
        if vd is None or not sw.table or sw.pending is not None:
            return False
        elapsed = now - sw.vd_since
        p = self.pressure()
        if not vd.due(int(sw.vd_shares * p), elapsed):
            return False
        current = sw.table[-1][1]
        new = vd.retarget(current, sw.vd_shares, elapsed / p)
        sw.vd_shares = 0
        sw.vd_since = now
        if new is None or (sw.curtailed and new < current):
            # Curtailed on purpose (asleep or turned down): its silence or slower shares are
            # no reason to lower the difficulty it will need again when restored.
            return False
        return self.request_difficulty(sw, new, now)

    # --- jobs --------------------------------------------------------------------------------

    def next_job(self, sw: SessionWork, now: float) -> tuple[Job, float | None] | None:
        """The job to send to this session now and the difficulty to announce before it (None
        if unchanged); None if the session already has the current job and nothing changed."""
        group = sw.group_key
        if group is None:
            return None
        pending = sw.pending
        if pending is None:
            job = self.book.job_for(group, now)
            if job.seq <= sw.last_seq:
                return None
            sw.last_seq = job.seq
            return job, None
        job = self.book.fresh_job(group, sw.last_seq, now)
        sw.last_seq = job.seq
        self.announce(sw, job.seq, pending)
        return job, pending

    def announce(self, sw: SessionWork, seq: int, difficulty: float) -> None:
        """`difficulty` is in force from job `seq` on (it is being sent with that job)."""
        target = difficulty_to_target(difficulty)
        table = sw.table
        table.append((seq, difficulty, target, target_to_le32(target)))
        oldest = self.book.oldest_seq
        while len(table) > 1 and (table[1][0] <= oldest or len(table) > MAX_DIFFICULTY_ENTRIES):
            del table[0]
        sw.pending = None

    # --- shares ------------------------------------------------------------------------------

    def submit(
        self,
        sw: SessionWork,
        worker: str,
        account: str,
        job_id: str,
        extranonce2: str,
        ntime: str,
        nonce: str,
        version_bits: str | None,
        now: float,
    ) -> RejectReason | None:
        """Judge one share; None = accepted (credited at `sw.last_difficulty`)."""
        job = self.book.jobs.get(job_id)
        if job is None:
            return _JOB_NOT_FOUND
        work = job.work
        if work.group_key != sw.group_key or not sw.table:
            return _JOB_NOT_FOUND  # not sent to this session's payout group (or no job sent yet)
        if len(ntime) != 8:
            return _MALFORMED
        try:
            ntime_int = int(ntime, 16)
        except ValueError:
            return _MALFORMED
        if ntime_int < work.template.mintime or ntime_int > now + MAX_FUTURE_S:
            return _NTIME
        core = sw.core
        if sw.core_work is not work or core is None:
            core = work.core.session(sw.en1, self.book.extranonce2_size)
            sw.core = core
            sw.core_work = work
        table = sw.table
        entry = table[-1]
        if job.seq < entry[0]:  # a job sent before the last difficulty change
            entry = sw.entry_for(job.seq)
        try:
            hash_, meets_share, meets_network = core.check(
                extranonce2, ntime, nonce, version_bits, sw.mask, entry[3]
            )
        except ShareFormatError as exc:
            return _VBITS if exc.field == "version_bits" else _MALFORMED
        if not (meets_share or meets_network):
            return _STALE_LOW if job.stale else _LOW
        seen = work.seen
        if hash_ in seen:
            return _DUPLICATE
        seen.add(hash_)
        if meets_network:
            self.on_block(
                BlockCandidate(
                    work=work,
                    job_id=job_id,
                    extranonce1=sw.en1,
                    extranonce2_hex=extranonce2,
                    ntime=ntime_int,
                    nonce_hex=nonce,
                    version_bits_hex=version_bits,
                    version_mask=sw.mask,
                    header_hash=hash_,
                    worker=worker,
                    account=account,
                    time=now,
                    instance_id=self.instance_id,
                )
            )
        if job.stale:
            return _STALE
        difficulty = entry[1]
        sw.last_difficulty = difficulty
        self.stats[0] += difficulty
        self.share_sink.record_share(
            AcceptedShare(worker, account, difficulty, job_id, work.template.height, now,
                          self.instance_id)
        )
        sw.vd_shares += 1
        return None

    def expire(self, now: float) -> int:
        return self.book.expire(now)
