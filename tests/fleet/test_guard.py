"""Guard (poold.fleet.guard): shedding when a plan cannot meet the cap, over-cap tracking and
the rack series."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from poold.fleet.clock import LoopClock, run_virtual
from poold.metrics import Metrics
from tests.fleet.fakes import controller, feed, fleet, watts_caps


def test_a_cap_below_what_throttling_reaches_is_met_by_shedding() -> None:
    async def go() -> tuple[int, float, float]:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        # No sleep cycles left for the planner: only the guard's emergency shed can sleep.
        ctl, drivers = controller(fleet([4], daily_cycle_budget=0), clock=clock)
        feed(ctl, drivers, clock.now())
        ctl.guard.tick()
        ctl.budgets.set_cap("r0", 2.5)  # 4 x min 1000 W does not fit
        for _ in range(5):
            ctl.guard.tick()
            await clock.sleep(1.0)
        ctl.dispatcher.cancel_all()
        asleep = sum(d.sleeping for d in drivers.values())
        return asleep, ctl.proj.node_power(clock.now())["r0"], ctl.guard.over_s("r0", clock.now())

    asleep, power, _ = run_virtual(go())
    assert asleep >= 2
    assert power <= 2500.0


def test_over_cap_time_is_tracked_and_the_rack_series_exported() -> None:
    registry = CollectorRegistry()

    async def go() -> tuple[float, float, float]:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        ctl, drivers = controller(fleet([2]), clock=clock, metrics=Metrics(registry))
        feed(ctl, drivers, clock.now())
        for m in ctl.miners.values():
            m.health.faulty = True  # nothing can be commanded: the breach stays
            m.health.retry_at = 1e9
        ctl.budgets.set_cap("r0", 3.0)
        for _ in range(6):
            ctl.guard.tick()
            await clock.sleep(1.0)
        ctl.dispatcher.cancel_all()
        return (ctl.guard.over_s("r0", clock.now()), ctl.guard.over_max_s["r0"],
                ctl.proj.node_metered(clock.now())["r0"])

    over, over_max, power = run_virtual(go())
    assert over >= 5.0 and over_max >= 4.0
    assert registry.get_sample_value("poold_rack_power_watts", {"rack": "r0"}) == power
    assert registry.get_sample_value("poold_rack_cap_watts", {"rack": "r0"}) == 3000.0


def test_the_allowance_is_kept_on_the_meters_against_slow_ramps() -> None:
    """Watt targets settle as a 10 s lag; a 60 % cut with 10 s allowed cannot be met by
    ramps alone: the guard escalates in time, and the meters are under the cap by then."""
    registry = CollectorRegistry()

    async def go() -> tuple[float | None, float, int]:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        cfg = fleet([5], allowed_s=10.0, telemetry_interval_s=1.0, stale_after_s=5.0)
        ctl, drivers = controller(cfg, caps=watts_caps(settle_s=30.0), clock=clock,
                                  metrics=Metrics(registry))
        for d in drivers.values():
            d.clock, d.tau_s = clock, 10.0
        run = asyncio.get_running_loop().create_task(ctl.run())
        await clock.sleep(20)
        cap_w = 15_000 * 0.6
        ctl.set_cap("r0", cap_w / 1000)
        t0 = clock.now()
        under_at = None
        while clock.now() - t0 < 60:
            await clock.sleep(0.5)
            meters = sum(d.meter_w() for d in drivers.values())
            if meters <= cap_w and under_at is None:
                under_at = clock.now() - t0
            elif meters > cap_w:
                under_at = None
        run.cancel()
        await ctl.stop(settle_timeout_s=1.0)
        deeper = sum(any(x.sleep or (x.watts or 1e9) <= 1000.0 for x in d.applied)
                     for d in drivers.values())
        return under_at, ctl.guard.over_max_s["r0"], deeper

    under_at, over_max, deeper = run_virtual(go())
    assert under_at is not None and under_at <= 10.0 + 1.0, under_at
    assert over_max <= 10.0 + 1.0
    assert deeper >= 1  # ramps to the plan alone were too slow: deeper steps (or sleep)
    assert (registry.get_sample_value("poold_rack_over_cap_seconds_total", {"rack": "r0"})
            or 0.0) == 0.0


def test_a_breach_past_the_allowance_is_counted_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()

    async def go() -> None:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        ctl, drivers = controller(fleet([2], allowed_s=5.0), clock=clock,
                                  metrics=Metrics(registry))
        feed(ctl, drivers, clock.now())
        for m in ctl.miners.values():
            m.health.faulty, m.health.retry_at = True, 1e9  # nothing can be commanded
        ctl.budgets.set_cap("r0", 3.0)
        for _ in range(20):
            feed(ctl, drivers, clock.now())
            ctl.guard.tick()
            await clock.sleep(1.0)
        ctl.dispatcher.cancel_all()

    run_virtual(go())
    past = registry.get_sample_value("poold_rack_over_cap_seconds_total", {"rack": "r0"})
    assert past is not None and 13.0 <= past <= 15.0  # 19 s over, 5 allowed
    logged = [r for r in caplog.records if "past its allowance" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelname == "WARNING"


def test_a_mass_breach_is_a_few_lines_a_tick_not_one_per_rack(
        caplog: pytest.LogCaptureFixture) -> None:
    """Twenty racks cut at once and none can follow: all twenty pass their allowance in the
    same tick, which logs NODE_LINES_PER_TICK lines and one that names the other fifteen;
    each rack's breach is still counted."""
    from poold.fleet.guard import NODE_LINES_PER_TICK

    registry = CollectorRegistry()

    async def go() -> list[list[str]]:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        ctl, drivers = controller(fleet([2] * 20, allowed_s=5.0), clock=clock,
                                  metrics=Metrics(registry))
        feed(ctl, drivers, clock.now())
        for m in ctl.miners.values():
            m.health.faulty, m.health.retry_at = True, 1e9  # nothing can be commanded
        for r in range(20):
            ctl.budgets.set_cap(f"r{r}", 3.0)
        ticks = []
        for _ in range(10):
            feed(ctl, drivers, clock.now())
            caplog.clear()
            ctl.guard.tick()
            ticks.append([r.getMessage() for r in caplog.records
                          if r.name == "poold.fleet.guard" and r.levelname == "WARNING"])
            await clock.sleep(1.0)
        ctl.dispatcher.cancel_all()
        return ticks

    ticks = run_virtual(go())
    assert all(len(lines) <= NODE_LINES_PER_TICK + 1 for lines in ticks), ticks
    breach = [lines for lines in ticks if any("past its allowance" in x for x in lines)]
    assert len(breach) == 1, ticks  # all twenty in one tick, logged once
    assert breach[0][-1].startswith(
        "guard: 15 more shed, escalation or allowance events this tick, on 15 nodes: "), breach
    for r in range(20):
        past = registry.get_sample_value("poold_rack_over_cap_seconds_total", {"rack": f"r{r}"})
        assert past is not None and past > 0.0
