"""Jobs: mining work built from block templates, with the `mining.notify` line precomputed.

One `JobWork` per (template, payout group): the coinbase split around the extranonce, the merkle
branch, the native `JobCore` and the set of accepted header hashes (duplicate detection: the
header hash covers extranonce1/2, ntime, nonce and the rolled version, docs/STRATUM.md §8).
A payout group is the set of sessions whose coinbase is identical: one per payout script in solo
mode (the miner's address), a single group when the pool pays one script.

A `Job` is a job id handed to miners. Several ids can share one `JobWork`: after a difficulty
change the session gets a fresh id for the same work ("alias"), because a miner applies the new
difficulty from the next job on and the pool judges every share against the difficulty in force
when its job id was sent (DESIGN.md). Job sequence numbers grow monotonically, which is what the
per-session difficulty table in `poold.work.engine` keys on.

`mining.notify` params (docs/STRATUM.md §6): [job_id, prevhash_stratum, coinb1, coinb2,
merkle_branch (internal order hex), version, nbits, ntime (8-hex big-endian), clean_jobs]. The
bytes are built once per job, never per miner.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from poold.bitcoin.byteorder import prevhash_to_stratum, u32_to_hex
from poold.bitcoin.coinbase import DEFAULT_MAX_COINBASE_SIZE, CoinbaseParts, build_coinbase
from poold.bitcoin.merkle import coinbase_branch
from poold.bitcoin.sharecore import JobCore
from poold.bitcoin.template import Template
from poold.bitcoin.tx import TxOut
from poold.work.fees import fee_of

# A superseded (not stale) job stays valid this long after its successor was sent: miners finish
# the job in hand before switching (clean_jobs=false).
SUPERSEDED_TTL_S = 300.0
# A stale job (old tip) is kept this long only so that a late block candidate can still be checked
# and submitted; its shares are answered "stale".
STALE_TTL_S = 120.0


class PayoutPolicy(Protocol):
    """Who the coinbase pays: the seam between the work side and the ledger's payout schemes."""

    def group_key(self, miner_script: bytes | None) -> bytes:
        """The payout group of a session whose authorized address script is `miner_script`."""
        ...

    def outputs(self, template: Template, group_key: bytes) -> Sequence[TxOut]:
        """The coinbase payout outputs (before the witness commitment) for a group."""
        ...


@dataclass(frozen=True, slots=True)
class SoloPayout:
    """Solo mining: every block pays its finder's address, minus the pool fee if one is set
    (`poold.work.fees.fee_of`: rounded down, not taken below the dust limit)."""

    fee_ppm: int = 0
    fee_script: bytes | None = None
    dust: int = 0

    def group_key(self, miner_script: bytes | None) -> bytes:
        if miner_script is None:
            raise ValueError("solo mode needs the miner's payout address")
        return miner_script

    def outputs(self, template: Template, group_key: bytes) -> Sequence[TxOut]:
        value = template.coinbase_value
        fee = fee_of(value, self.fee_ppm, self.dust) if self.fee_script is not None else 0
        if not fee:
            return (TxOut(value, group_key),)
        assert self.fee_script is not None
        return (TxOut(value - fee, group_key), TxOut(fee, self.fee_script))


class PlannedPayout:
    """Outputs planned elsewhere, per template (the ledger's split scheme reads balances and the
    share window asynchronously): `plan(template, outputs)` before the template is fanned out."""

    __slots__ = ("_plans",)

    def __init__(self) -> None:
        self._plans: dict[Template, tuple[TxOut, ...]] = {}  # bounded, oldest dropped

    def plan(self, template: Template, outputs: Sequence[tuple[bytes, int]]) -> None:
        self._plans[template] = tuple(TxOut(v, s) for s, v in outputs)
        while len(self._plans) > 16:
            del self._plans[next(iter(self._plans))]

    def group_key(self, miner_script: bytes | None) -> bytes:
        return b""

    def outputs(self, template: Template, group_key: bytes) -> Sequence[TxOut]:
        try:
            return self._plans[template]
        except KeyError:
            raise LookupError("no payout plan for this template") from None


@dataclass(frozen=True, slots=True)
class FixedPayout:
    """Every block pays one script (the reserve address, or a pool address)."""

    script: bytes

    def group_key(self, miner_script: bytes | None) -> bytes:
        return b""

    def outputs(self, template: Template, group_key: bytes) -> Sequence[TxOut]:
        return (TxOut(template.coinbase_value, self.script),)


@dataclass(frozen=True, slots=True, eq=False)
class JobWork:
    """What miners grind on, shared by every job id (and alias) built from it."""

    template: Template
    group_key: bytes
    coinbase: CoinbaseParts
    outputs: tuple[TxOut, ...]
    branch: tuple[bytes, ...]
    core: JobCore
    notify_body: bytes  # `","<prevhash>",...,"<ntime>",` — everything between job id and clean
    seen: set[bytes] = field(default_factory=set)

    @property
    def mintime(self) -> int:
        return self.template.mintime


class Job:
    """A job id as sent to miners. Mutable only in `stale` (set when the tip moves on)."""

    __slots__ = ("created_at", "job_id", "notify_clean", "notify_plain", "seq", "stale",
                 "superseded_at", "work")

    def __init__(self, job_id: str, seq: int, work: JobWork, created_at: float) -> None:
        self.job_id = job_id
        self.seq = seq
        self.work = work
        self.created_at = created_at
        self.stale = False
        self.superseded_at: float | None = None
        head = b'{"id":null,"method":"mining.notify","params":["' + job_id.encode()
        self.notify_clean = head + work.notify_body + b"true]}\n"
        self.notify_plain = head + work.notify_body + b"false]}\n"

    def __repr__(self) -> str:
        t = self.work.template
        return f"Job({self.job_id}, seq={self.seq}, height={t.height}, stale={self.stale})"


def notify_body(template: Template, parts: CoinbaseParts, branch: Sequence[bytes]) -> bytes:
    """The fixed middle of a `mining.notify` line (after the job id, before clean_jobs)."""
    rest = [
        prevhash_to_stratum(template.prevhash),
        parts.coinb1.hex(),
        parts.coinb2.hex(),
        [b.hex() for b in branch],
        u32_to_hex(template.version),
        u32_to_hex(template.bits),
        u32_to_hex(template.curtime),
    ]
    # '["prev","cb1","cb2",[...],"ver","bits","time"]' without its brackets
    encoded = json.dumps(rest, separators=(",", ":")).encode()
    return b'",' + encoded[1:-1] + b","


class JobBook:
    """All live jobs of this instance, the current job per payout group, and their expiry."""

    __slots__ = ("_branch_cache", "_en1_size", "_en2_size", "_max_coinbase", "_payouts", "_seq",
                 "_tag", "current", "jobs", "template")

    def __init__(
        self,
        payouts: PayoutPolicy,
        *,
        tag: bytes,
        extranonce1_size: int = 4,
        extranonce2_size: int = 8,
        max_coinbase_size: int = DEFAULT_MAX_COINBASE_SIZE,
        first_seq: int = 0,
    ) -> None:
        """`first_seq`: where job numbering starts; the daemon derives it from the clock so that
        a miner submitting a job id of the previous process gets "job not found", not a clash."""
        self._payouts = payouts
        self._tag = tag
        self._en1_size = extranonce1_size
        self._en2_size = extranonce2_size
        self._max_coinbase = max_coinbase_size
        self._seq = first_seq
        self._branch_cache: tuple[Template, tuple[bytes, ...]] | None = None
        self.template: Template | None = None
        self.jobs: dict[str, Job] = {}  # insertion order = seq order
        self.current: dict[bytes, Job] = {}

    @property
    def payouts(self) -> PayoutPolicy:
        return self._payouts

    @property
    def extranonce2_size(self) -> int:
        return self._en2_size

    @property
    def oldest_seq(self) -> int:
        """Sequence number of the oldest live job (or the next one if there is none)."""
        for job in self.jobs.values():
            return job.seq
        return self._seq + 1

    def group_key(self, miner_script: bytes | None) -> bytes:
        return self._payouts.group_key(miner_script)

    def set_template(self, template: Template, new_tip: bool, now: float) -> None:
        """A new template: the next `job_for` of every group builds a job from it. On a new tip,
        jobs built on another prevhash become stale (answered 21, still checked for blocks)."""
        self.template = template
        for job in self.current.values():
            job.superseded_at = now
        self.current.clear()
        if new_tip:
            for job in self.jobs.values():
                if job.work.template.prevhash != template.prevhash:
                    job.stale = True
                    job.superseded_at = now

    def job_for(self, group_key: bytes, now: float) -> Job:
        """The current job of a payout group, built from the current template if needed."""
        job = self.current.get(group_key)
        if job is not None:
            return job
        template = self.template
        if template is None:
            raise LookupError("no template yet")
        work = self._build_work(template, group_key)
        job = self._add(work, now)
        self.current[group_key] = job
        return job

    def fresh_job(self, group_key: bytes, after_seq: int, now: float) -> Job:
        """A job of the group's current work whose seq is above `after_seq` (the last job a
        session was sent): the current job if it qualifies, else a new alias id for it."""
        job = self.job_for(group_key, now)
        if job.seq > after_seq:
            return job
        alias = self._add(job.work, now)
        job.superseded_at = now
        self.current[group_key] = alias
        return alias

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def expire(self, now: float) -> int:
        """Drop jobs past their time to live; returns how many were dropped."""
        dead = [
            job_id
            for job_id, job in self.jobs.items()
            if job.superseded_at is not None
            and now - job.superseded_at > (STALE_TTL_S if job.stale else SUPERSEDED_TTL_S)
        ]
        for job_id in dead:
            del self.jobs[job_id]
        return len(dead)

    def _add(self, work: JobWork, now: float) -> Job:
        self._seq += 1
        job = Job(f"{self._seq:x}", self._seq, work, now)
        self.jobs[job.job_id] = job
        return job

    def _branch(self, template: Template) -> tuple[bytes, ...]:
        """The coinbase merkle branch, computed once per template (thousands of hashes on
        mainnet) and shared by every payout group's job."""
        cached = self._branch_cache
        if cached is not None and cached[0] is template:
            return cached[1]
        branch = tuple(coinbase_branch(template.txids))
        self._branch_cache = (template, branch)
        return branch

    def _build_work(self, template: Template, group_key: bytes) -> JobWork:
        outputs = tuple(self._payouts.outputs(template, group_key))
        parts = build_coinbase(
            template.height,
            outputs,
            tag=self._tag,
            witness_commitment_script=template.witness_commitment_script,
            extranonce1_size=self._en1_size,
            extranonce2_size=self._en2_size,
            max_size=self._max_coinbase,
            max_value=template.coinbase_value,
        )
        branch = self._branch(template)
        core = JobCore(
            parts.coinb1,
            parts.coinb2,
            branch,
            template.version,
            template.prevhash,
            template.bits,
            template.target,
        )
        return JobWork(
            template=template,
            group_key=group_key,
            coinbase=parts,
            outputs=outputs,
            branch=branch,
            core=core,
            notify_body=notify_body(template, parts, branch),
        )
