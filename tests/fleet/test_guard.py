"""Guard (poold.fleet.guard): shedding when a plan cannot meet the cap, over-cap tracking and
the rack series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from poold.fleet.clock import LoopClock, run_virtual
from poold.metrics import Metrics
from tests.fleet.fakes import controller, feed, fleet


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
        ctl.budgets.set_cap("r0", 3.0)
        for _ in range(6):
            ctl.guard.tick()
            await clock.sleep(1.0)
        ctl.dispatcher.cancel_all()
        return (ctl.guard.over_s("r0", clock.now()), ctl.guard.over_max_s["r0"],
                ctl.proj.node_power(clock.now())["r0"])

    over, over_max, power = run_virtual(go())
    assert over >= 5.0 and over_max >= 4.0
    assert registry.get_sample_value("poold_rack_power_watts", {"rack": "r0"}) == power
    assert registry.get_sample_value("poold_rack_cap_watts", {"rack": "r0"}) == 3000.0
