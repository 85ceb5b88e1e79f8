"""Difficulty precedence, vardiff and extranonce allocation (pure)."""

from __future__ import annotations

import math

import pytest

from poold.work.difficulty import DifficultyPolicy, sane_difficulty
from poold.work.extranonce import ExtranonceAllocator, ExtranonceExhausted
from poold.work.vardiff import Vardiff


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(1000, 1000.0), (0.0001, 0.0001), ("512", 512.0), ("1e-3", 0.001), (0, None), (-1, None),
     (math.inf, None), (math.nan, None), ("x", None), (None, None), (True, None), ([1], None)],
)
def test_sane_difficulty(raw: object, expected: float | None) -> None:
    assert sane_difficulty(raw) == expected


def test_precedence_port_bounds_then_floors_then_suggestion() -> None:
    p = DifficultyPolicy(start=8.0, port_min=1.0, port_max=1000.0)
    assert p.resolve(0.5) == 1.0  # port minimum
    assert p.resolve(5000.0) == 1000.0  # port maximum beats everything
    assert p.resolve(2.0, minimum=4.0) == 4.0  # BIP310 minimum-difficulty is a floor
    assert p.resolve(2.0, md=16.0) == 16.0  # md= is a floor
    assert p.resolve(2.0, minimum=4.0, md=16.0) == 16.0  # the higher floor wins
    assert p.resolve(32.0, minimum=4.0, md=16.0) == 32.0  # suggestion / vardiff above floors
    assert p.resolve(2.0, minimum=1e6) == 1000.0  # a floor never passes the port maximum
    assert p.resolve(0.37) == 1.0 and DifficultyPolicy(1, 1e-8, 1).resolve(0.37) == 0.37


def test_policy_rejects_inverted_bounds() -> None:
    with pytest.raises(ValueError):
        DifficultyPolicy(start=1.0, port_min=10.0, port_max=1.0)


def test_vardiff_moves_toward_the_share_interval() -> None:
    v = Vardiff(share_interval_s=10.0, window_s=60.0, fast_shares=16)
    assert not v.due(3, 30.0) and v.due(16, 1.0) and v.due(0, 60.0)
    # 16 shares in 16 s at D=100: ideal 1000 (one per 10 s)
    assert v.retarget(100.0, 16, 16.0) == pytest.approx(1000.0)
    # within the hysteresis band: no change
    assert v.retarget(100.0, 6, 60.0) is None
    assert v.retarget(100.0, 7, 60.0) is None
    # silence: down, but at most max_down per step
    assert v.retarget(100.0, 0, 60.0) == pytest.approx(100.0 / 8)
    # a huge miner at a tiny start difficulty climbs at most max_up per step
    assert v.retarget(0.001, 10_000, 1.0) == pytest.approx(0.001 * 256)


def test_extranonce_prefix_counter_and_uniqueness() -> None:
    a = ExtranonceAllocator(5, size=4)
    seen = {a.allocate(0.0) for _ in range(1000)}
    assert len(seen) == 1000 and all(e[:1] == b"\x05" and len(e) == 4 for e in seen)
    assert ExtranonceAllocator(6).allocate(0.0)[:1] == b"\x06"
    with pytest.raises(ValueError):
        ExtranonceAllocator(256)


def test_extranonce_resume_within_ten_minutes_only() -> None:
    a = ExtranonceAllocator(1)
    en1 = a.allocate(0.0)
    a.release(en1, 100.0)
    other = a.allocate(101.0)
    assert other != en1  # a released value is kept for its owner
    assert a.allocate(200.0, resume=en1) == en1
    assert a.allocate(201.0, resume=en1) != en1  # in use: not handed out twice
    a.release(en1, 300.0)
    assert a.allocate(300.0 + 600.0, resume=en1) != en1  # too late
    assert ExtranonceAllocator.parse_session_id(en1.hex(), 4) == en1
    assert ExtranonceAllocator.parse_session_id(None, 4) is None
    assert ExtranonceAllocator.parse_session_id("zz", 4) is None
    assert ExtranonceAllocator.parse_session_id("zzzzzzzz", 4) is None


def test_extranonce_exhaustion() -> None:
    a = ExtranonceAllocator(1, size=2, prefix_bytes=1)
    for _ in range(256):
        a.allocate(0.0)
    with pytest.raises(ExtranonceExhausted):
        a.allocate(0.0)
