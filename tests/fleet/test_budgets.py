"""Caps in force: config, schedule, API override, grid signal with heartbeat → safe cap."""

from __future__ import annotations

import datetime as dt

import pytest

from poold.fleet.budgets import Budgets, Source
from poold.fleet.inventory import parse_fleet


class FakeClock:
    def __init__(self, wall: float) -> None:
        self.t = 0.0
        self.wall0 = wall

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return self.wall0 + self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def cfg(**over: object):  # type: ignore[no-untyped-def]
    t = {"site": "s", "cap_kw": 100.0, "safe_cap_kw": 10.0,
         "grid_signal": {"heartbeat_timeout_s": 60.0},
         "racks": [{"id": "r1", "cap_kw": 50.0}],
         "schedule": [{"start": "22:00", "end": "02:00", "cap_kw": 30.0, "node": "r1",
                       "days": ["mon"]}]}
    t.update(over)
    return parse_fleet(t, "t.toml")


def at(hour: int, minute: int = 0, day: int = 1) -> float:
    """Unix time of 2024-01-<day> hh:mm UTC (2024-01-01 is a Monday)."""
    return dt.datetime(2024, 1, day, hour, minute, tzinfo=dt.UTC).timestamp()


def test_config_caps_then_schedule_with_midnight_wrap() -> None:
    c = FakeClock(at(12))
    b = Budgets(cfg(), c)
    assert b.caps()["r1"].watts == 50_000 and b.caps()["r1"].source is Source.CONFIG
    b.clock = FakeClock(at(23, 30))  # Monday 23:30
    assert b.caps()["r1"].watts == 30_000 and b.caps()["r1"].source is Source.SCHEDULE
    b.clock = FakeClock(at(1, 0, day=2))  # Tuesday 01:00 belongs to Monday's entry
    assert b.caps()["r1"].watts == 30_000
    b.clock = FakeClock(at(23, 30, day=2))  # Tuesday evening: not scheduled
    assert b.caps()["r1"].watts == 50_000


def test_api_only_lowers_and_expires() -> None:
    c = FakeClock(at(12))
    b = Budgets(cfg(), c)
    b.set_cap("r1", 20.0, until=100.0)
    assert b.caps()["r1"].watts == 20_000 and b.caps()["r1"].source is Source.API
    with pytest.raises(ValueError):
        b.set_cap("r1", 60.0)  # above the breaker
    with pytest.raises(ValueError):
        b.set_cap("nope", 1.0)
    c.t = 101.0
    assert b.caps()["r1"].watts == 50_000


def test_grid_signal_and_heartbeat_loss_go_to_safe_cap() -> None:
    c = FakeClock(at(12))
    b = Budgets(cfg(), c)
    b.grid_signal(70.0)
    assert b.caps()["s"].watts == 70_000 and b.caps()["s"].source is Source.GRID
    c.t = 59.0
    assert not b.grid_lost()
    c.t = 61.0
    assert b.grid_lost()
    assert b.caps()["s"].watts == 10_000 and b.caps()["s"].source is Source.SAFE
    b.heartbeat()
    assert b.caps()["s"].watts == 70_000
    b.force_safe()
    assert b.caps()["s"].source is Source.SAFE


def test_no_grid_signal_configured_never_goes_safe() -> None:
    c = FakeClock(at(12))
    b = Budgets(cfg(grid_signal={}), c)
    c.t = 1e6
    assert b.caps()["s"].watts == 100_000
