"""The share path against a real regtest template: every rejection, duplicates, version rolling,
difficulty frozen per job, stale work and block candidates."""

from __future__ import annotations

import itertools

import pytest

from poold.bitcoin.block import parse_block
from poold.bitcoin.byteorder import hash_to_int
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.target import DIFF1_TARGET, difficulty_to_target, target_to_le32
from poold.work.blocks import assemble
from poold.work.engine import SessionWork
from poold.work.jobs import Job
from poold.work.shares import RejectReason
from poold.work.vardiff import Vardiff
from tests.work.builders import ADDRESS2, Rig, regtest_template, rig, script

EASY = 1e-12  # clamps to the largest target: every hash is a share
MASK = 0x1FFFE000


def started(
    r: Rig, difficulty: float = EASY, en1: bytes = b"\x07\x00\x00\x01"
) -> tuple[SessionWork, Job]:
    sw = SessionWork(en1, MASK, r.clock.now)
    r.engine.start(sw, script(), difficulty, r.clock.now)
    nxt = r.engine.next_job(sw, r.clock.now)
    assert nxt is not None
    job, announced = nxt
    assert announced == pytest.approx(difficulty) or difficulty < 1e-9
    return sw, job


def submit(
    r: Rig,
    sw: SessionWork,
    job: Job,
    en2: int = 0,
    nonce: int = 0,
    ntime: int | None = None,
    vbits: str | None = None,
) -> RejectReason | None:
    t = job.work.template
    return r.engine.submit(
        sw,
        "w",
        "acct",
        job.job_id,
        f"{en2:016x}",
        f"{(ntime or t.curtime):08x}",
        f"{nonce:08x}",
        vbits,
        r.clock.now,
    )


def hash_of(sw: SessionWork, job: Job, en2: int, nonce: int) -> int:
    core = job.work.core.session(sw.en1, 8)
    h, _, _ = core.check(
        f"{en2:016x}", f"{job.work.template.curtime:08x}", f"{nonce:08x}", None, MASK, b"\xff" * 32
    )
    return hash_to_int(h)


def test_accepted_share_is_credited_at_the_job_difficulty() -> None:
    r = rig(start=EASY, min_difficulty=1e-13)
    sw, job = started(r)
    assert submit(r, sw, job) is None
    (share,) = r.shares
    assert share.worker == "w" and share.account == "acct" and share.job_id == job.job_id
    assert share.height == job.work.template.height and share.instance_id == 7
    assert share.difficulty == pytest.approx(EASY)


def test_duplicate_key_covers_extranonce2_ntime_nonce_and_version_bits() -> None:
    r = rig(start=EASY, min_difficulty=1e-13)
    sw, job = started(r)
    t = job.work.template.curtime
    assert submit(r, sw, job, en2=1, nonce=5) is None
    assert submit(r, sw, job, en2=1, nonce=5) is RejectReason.duplicate
    # the same share spelled in upper-case hex is the same header: still a duplicate
    upper = r.engine.submit(
        sw, "w", "a", job.job_id, f"{1:016X}", f"{t:08X}", "00000005", None, r.clock.now
    )
    assert upper is RejectReason.duplicate
    assert submit(r, sw, job, en2=2, nonce=5) is None
    assert submit(r, sw, job, en2=1, nonce=5, ntime=t + 1) is None
    assert submit(r, sw, job, en2=1, nonce=6) is None
    assert submit(r, sw, job, en2=1, nonce=5, vbits="00002000") is None
    assert submit(r, sw, job, en2=1, nonce=5, vbits="00004000") is None
    assert submit(r, sw, job, en2=1, nonce=5, vbits="00004000") is RejectReason.duplicate
    # another session (another extranonce1) grinding the same numbers is not a duplicate
    sw2, job2 = started(r, en1=b"\x07\x00\x00\x02")
    assert job2 is job
    assert submit(r, sw2, job, en2=1, nonce=5) is None


def test_unknown_job_and_job_of_another_payout_group() -> None:
    r = rig(start=EASY, min_difficulty=1e-13)
    sw, job = started(r)
    assert (
        r.engine.submit(sw, "w", "a", "ffff", "00" * 8, "00000000", "00000000", None, r.clock.now)
        is RejectReason.job_not_found
    )
    other = SessionWork(b"\x07\x00\x00\x09", MASK, r.clock.now)
    r.engine.start(other, script(ADDRESS2), EASY, r.clock.now)
    assert r.engine.next_job(other, r.clock.now) is not None
    # `job` pays ADDRESS: a session paying ADDRESS2 may not submit it
    assert submit(r, other, job) is RejectReason.job_not_found


def test_low_difficulty() -> None:
    r = rig(start=1e6)
    sw, job = started(r, difficulty=1e6)
    assert submit(r, sw, job, nonce=1) is RejectReason.low_difficulty
    assert r.shares == []


def test_ntime_window_is_mintime_to_now_plus_two_hours() -> None:
    r = rig(start=EASY, min_difficulty=1e-13)
    sw, job = started(r)
    t = job.work.template
    assert submit(r, sw, job, ntime=t.mintime - 1) is RejectReason.ntime_out_of_range
    assert submit(r, sw, job, ntime=int(r.clock.now) + 7201) is RejectReason.ntime_out_of_range
    assert submit(r, sw, job, ntime=int(r.clock.now) + 7200) is None
    assert submit(r, sw, job, ntime=t.mintime) is None


@pytest.mark.parametrize(
    ("en2", "ntime", "nonce"),
    [
        ("00" * 7, None, "00000000"),
        ("zz" * 8, None, "00000000"),
        ("00" * 8, "xyz01234", "00000000"),
        ("00" * 8, "0000000", "00000000"),
        ("00" * 8, None, "0000000g"),
        ("00" * 8, None, "000"),
    ],
)
def test_malformed_fields(en2: str, ntime: str | None, nonce: str) -> None:
    r = rig(start=EASY, min_difficulty=1e-13)
    sw, job = started(r)
    nt = ntime if ntime is not None else f"{job.work.template.curtime:08x}"
    assert (
        r.engine.submit(sw, "w", "a", job.job_id, en2, nt, nonce, None, r.clock.now)
        is RejectReason.malformed
    )


def test_version_rolling_inside_and_outside_the_mask() -> None:
    r = rig(start=EASY, min_difficulty=1e-13)
    sw, job = started(r)
    assert submit(r, sw, job, nonce=1, vbits="1fffe000") is None
    assert submit(r, sw, job, nonce=2, vbits="00001000") is RejectReason.version_bits_outside_mask
    assert submit(r, sw, job, nonce=3, vbits="20000000") is RejectReason.version_bits_outside_mask
    sw.mask = 0  # no negotiation and unnegotiated bits not accepted
    assert submit(r, sw, job, nonce=4, vbits="00002000") is RejectReason.version_bits_outside_mask
    assert submit(r, sw, job, nonce=5, vbits="00000000") is None
    assert submit(r, sw, job, nonce=6) is None


def _split_nonce(sw: SessionWork, job: Job, easy_t: int, hard_t: int) -> int:
    """A nonce whose hash meets the easy target but not the hard one."""
    for nonce in itertools.count():
        h = hash_of(sw, job, 0, nonce)
        if hard_t < h <= easy_t:
            return nonce
    raise AssertionError


LOW = DIFF1_TARGET / 2**255  # about half of all hashes meet it
HIGH = LOW * 16


def test_difficulty_rise_is_frozen_per_job_no_honest_share_rejected() -> None:
    r = rig(start=LOW, min_difficulty=1e-13)
    sw, job1 = started(r, difficulty=LOW)
    assert r.engine.request_difficulty(sw, HIGH, r.clock.now)
    assert sw.pending == HIGH  # not in force before it is sent with a job
    nxt = r.engine.next_job(sw, r.clock.now)
    assert nxt is not None
    job2, announced = nxt
    assert announced == HIGH and job2.job_id != job1.job_id and job2.work is job1.work
    assert not job2.notify_plain.endswith(b"true]}\n")  # never clean_jobs for a difficulty change
    nonce = _split_nonce(sw, job1, difficulty_to_target(LOW), difficulty_to_target(HIGH))
    # in flight on job1: judged at the old difficulty and credited at it
    assert submit(r, sw, job1, nonce=nonce) is None
    assert r.shares[-1].difficulty == LOW
    # the same work under the new job id must meet the new difficulty
    assert submit(r, sw, job2, nonce=nonce) is RejectReason.low_difficulty
    easy_for_both = next(
        n for n in range(10_000) if hash_of(sw, job2, 1, n) <= difficulty_to_target(HIGH)
    )
    assert submit(r, sw, job2, en2=1, nonce=easy_for_both) is None
    assert r.shares[-1].difficulty == HIGH


def test_difficulty_drop_applied_early_by_the_miner_is_accepted() -> None:
    r = rig(start=HIGH, min_difficulty=1e-13)
    sw, job1 = started(r, difficulty=HIGH)
    assert r.engine.request_difficulty(sw, LOW, r.clock.now)
    assert r.engine.next_job(sw, r.clock.now) is not None
    nonce = _split_nonce(sw, job1, difficulty_to_target(LOW), difficulty_to_target(HIGH))
    assert submit(r, sw, job1, nonce=nonce) is None
    assert r.shares[-1].difficulty == LOW


def test_new_tip_makes_old_jobs_stale_but_blocks_on_them_still_count() -> None:
    t = regtest_template()  # regtest: about half of all hashes meet the network target
    r = rig(t, start=1e6)
    sw, job = started(r, difficulty=1e6)
    r.book.set_template(
        regtest_template(prevhash=b"\x11" * 32, height=t.height + 1), True, r.clock.now
    )
    assert job.stale
    results = [submit(r, sw, job, nonce=n) for n in range(8)]
    # a block on a stale job is "stale"; a hash below the share target too: counted as junk
    assert set(results) <= {RejectReason.stale, RejectReason.stale_low_difficulty}
    assert 1 <= len(r.blocks) <= 8
    assert results.count(RejectReason.stale) == len(r.blocks)
    assert r.shares == []
    nxt = r.engine.next_job(sw, r.clock.now)
    assert nxt is not None and nxt[0].notify_clean.endswith(b"true]}\n")


def test_fee_refresh_is_a_new_job_old_one_stays_valid() -> None:
    r = rig(start=EASY, min_difficulty=1e-13)
    sw, job1 = started(r)
    r.book.set_template(
        regtest_template(hard=True, curtime=job1.work.template.curtime + 30), False, r.clock.now
    )
    nxt = r.engine.next_job(sw, r.clock.now)
    assert nxt is not None
    job2 = nxt[0]
    assert job2.work is not job1.work and not job1.stale
    assert submit(r, sw, job1, nonce=1) is None
    assert submit(r, sw, job2, nonce=1) is None


def test_block_candidate_assembles_into_a_block_paying_the_miner() -> None:
    t = regtest_template()
    r = rig(t, start=1e6)
    sw, job = started(r, difficulty=1e6)
    for nonce in range(64):
        submit(r, sw, job, en2=3, nonce=nonce, vbits="00ffe000")
        if r.blocks:
            break
    (candidate,) = r.blocks
    raw, found = assemble(candidate)
    header, txs = parse_block(raw)
    assert header.hash == candidate.header_hash
    assert hash_to_int(header.hash) <= t.target
    assert header.version == (t.version & ~MASK) | 0x00FFE000
    assert header.prevhash == t.prevhash
    assert txs[0].outputs[0].script_pubkey == script()
    assert txs[0].outputs[0].value == t.coinbase_value
    assert [tx.txid for tx in txs[1:]] == list(t.txids)
    assert found.hash_hex == candidate.hash_hex and found.height == t.height
    assert isinstance(BlockHeader.parse(raw[:80]), BlockHeader)


def test_vardiff_raises_a_fast_miner_and_announces_with_the_next_job() -> None:
    r = rig(start=EASY, min_difficulty=1e-13, vardiff=Vardiff(share_interval_s=10))
    sw, job = started(r)
    for nonce in range(16):
        assert submit(r, sw, job, nonce=nonce) is None
    r.clock.now += 1.0
    assert r.engine.maybe_retarget(sw, r.clock.now)
    assert sw.pending is not None and sw.pending > EASY
    nxt = r.engine.next_job(sw, r.clock.now)
    assert nxt is not None and nxt[1] == sw.table[-1][1]


def test_target_le32_matches_the_difficulty_table() -> None:
    r = rig(start=2.0)
    sw, _ = started(r, difficulty=2.0)
    _seq, d, target, le32 = sw.table[-1]
    assert d == 2.0 and target == difficulty_to_target(2.0) and le32 == target_to_le32(target)


def test_solo_fee_output_and_planned_payouts() -> None:
    from poold.work.jobs import PlannedPayout, SoloPayout

    t = regtest_template()
    fee_script = script(ADDRESS2)
    outs = SoloPayout(fee_ppm=20_000, fee_script=fee_script).outputs(t, script())
    assert [o.script_pubkey for o in outs] == [script(), fee_script]
    assert outs[1].value == t.coinbase_value * 2 // 100
    assert sum(o.value for o in outs) == t.coinbase_value
    assert len(SoloPayout().outputs(t, script())) == 1
    planned = PlannedPayout()
    with pytest.raises(LookupError):
        planned.outputs(t, b"")
    planned.plan(t, [(script(), 1000), (fee_script, t.coinbase_value - 1000)])
    assert [o.value for o in planned.outputs(t, b"")] == [1000, t.coinbase_value - 1000]
    assert planned.group_key(script()) == planned.group_key(None) == b""


def test_tee_share_sink_feeds_every_sink() -> None:
    from poold.work.engine import TeeShareSink
    from tests.work.builders import ListSink

    a: list[object] = []
    b: list[object] = []
    r = rig(start=EASY, min_difficulty=1e-13)
    r.engine.share_sink = TeeShareSink(ListSink(a), ListSink(b))
    sw, job = started(r)
    assert submit(r, sw, job) is None
    assert len(a) == len(b) == 1 and a[0] is b[0]
