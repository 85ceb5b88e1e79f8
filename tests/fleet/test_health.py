"""Health helpers: stale marking, thermal cap with hysteresis, faulty marking, action limits,
and the pool's share-based hashrate (poold.fleet.health)."""

from __future__ import annotations

import random

import pytest

from poold.fleet.drivers.base import Telemetry
from poold.fleet.health import (
    HASHES_PER_DIFF1,
    ActionLimiter,
    MinerHealth,
    ShareRateEstimator,
    ambient_adjusted_limit,
    expected_shares,
    thermal_cap,
)


def tel(temp: float, power: float = 3000.0) -> Telemetry:
    return Telemetry(time=0.0, power_w=power, hashrate_ths=100.0, temps_c=(temp - 5, temp))


def test_stale_after_the_limit() -> None:
    h = MinerHealth()
    assert h.stale(0.0, 30.0)
    h.telemetry, h.received_at = tel(60), 10.0
    assert not h.stale(40.0, 30.0) and h.stale(40.1, 30.0)


def test_thermal_cap_lowers_sleeps_and_releases_with_hysteresis() -> None:
    h = MinerHealth(telemetry=tel(70))
    assert thermal_cap(h, 85.0, 1000.0) is None
    h.telemetry = tel(86, 3000)
    assert thermal_cap(h, 85.0, 1000.0) == pytest.approx(2550)
    h.telemetry = tel(87, 2550)
    assert thermal_cap(h, 85.0, 1000.0) == pytest.approx(2167.5)  # keeps stepping down
    h.telemetry = tel(82, 2167)
    assert thermal_cap(h, 85.0, 1000.0) == pytest.approx(2167.5)  # inside the band: holds
    h.telemetry = tel(79.9, 2167)
    assert thermal_cap(h, 85.0, 1000.0) is None  # 5 °C below: released
    h.telemetry = tel(96)
    assert thermal_cap(h, 85.0, 1000.0) == 0.0  # far over: sleep


def test_hot_ambient_lowers_the_limit() -> None:
    assert ambient_adjusted_limit(85.0, None) == 85.0
    assert ambient_adjusted_limit(85.0, 30.0) == 85.0
    assert ambient_adjusted_limit(85.0, 40.0) == 80.0
    assert ambient_adjusted_limit(85.0, 70.0) == 75.0


def test_faulty_after_repeated_failures_until_cleared() -> None:
    h = MinerHealth()
    assert not any(h.record_failure("timeout", 3) for _ in range(2))
    h.record_success()
    assert not h.record_failure("timeout", 3) and not h.faulty
    assert not h.record_failure("timeout", 3)
    assert h.record_failure("timeout", 3) and h.faulty and h.fault_reason == "timeout"
    h.clear_faulty()
    assert not h.faulty and h.failures == 0


def test_action_limiter_window() -> None:
    lim = ActionLimiter(max_actions=2, window_s=100.0)
    assert lim.allow("m", "reboot", 0) and lim.allow("m", "reboot", 10)
    assert not lim.allow("m", "reboot", 50)
    assert lim.allow("m", "restart", 50)  # per action kind
    assert lim.allow("m", "reboot", 101)


def test_share_rate_estimates_hashrate_within_poisson_error() -> None:
    rng = random.Random(7)
    est = ShareRateEstimator(window_s=300.0)
    hs, diff = 100e12, 50_000.0
    rate = hs / (diff * HASHES_PER_DIFF1)  # shares per second
    t = 0.0
    while t < 600.0:
        t += rng.expovariate(rate)
        est.record("w", diff, t)
    n = est.shares("w", 600.0, 300.0)
    assert n == pytest.approx(expected_shares(hs, diff, 300.0), rel=0.3)
    got = est.hashrate_hs("w", 600.0)
    assert got is not None and got == pytest.approx(hs, rel=4 / n**0.5)
    assert est.hashrate_hs("other", 600.0) is None


def test_share_rate_uses_only_the_time_a_worker_was_seen() -> None:
    est = ShareRateEstimator(window_s=300.0, min_window_s=30.0)
    for i in range(60):
        est.record("w", 1.0, 100.0 + i)  # one share a second, seen for 60 s
    assert est.hashrate_hs("w", 129.0) is None  # seen for 29 s: too little to say
    got = est.hashrate_hs("w", 160.0)
    assert got == pytest.approx(HASHES_PER_DIFF1, rel=0.05)
