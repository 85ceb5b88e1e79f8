"""Dispatcher (poold.fleet.dispatcher): polls, commands, read-back, failures, the ramp."""

from __future__ import annotations

from typing import Any

from poold.fleet.clock import LoopClock, run_virtual
from poold.fleet.dispatcher import FAULTY_AFTER
from poold.fleet.drivers.base import Desired
from tests.fleet.fakes import controller, feed, fleet


def test_decreases_go_at_once_increases_wait_for_the_ramp() -> None:
    async def go() -> tuple[int, int, int]:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        ctl, drivers = controller(fleet([4], ramp_kw_per_min=6.0), clock=clock)
        for d in drivers.values():
            d.power_w = 3000.0
        feed(ctl, drivers, clock.now())
        ctl.budgets.set_cap("r0", 6.0)
        ctl.planner.optimize()
        lowered = ctl.dispatcher.reconcile(clock.now(), {})
        await clock.sleep(10)
        ctl.budgets.set_cap("r0", None)
        ctl.planner.optimize()
        raised_first = ctl.dispatcher.reconcile(clock.now(), {})
        await clock.sleep(60)
        raised_later = ctl.dispatcher.reconcile(clock.now(), {})
        ctl.dispatcher.cancel_all()
        return lowered, raised_first, raised_later

    lowered, raised_first, raised_later = run_virtual(go())
    assert lowered == 4
    # 6 kW/min over a 1 s guard interval: ~100 W of tokens, one raise at most, the rest later
    assert raised_first <= 1
    assert raised_later >= 1


def test_a_miner_that_keeps_failing_is_marked_faulty_and_its_command_rolled_back() -> None:
    async def go() -> tuple[Any, ...]:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        ctl, drivers = controller(fleet([2]), clock=clock)
        feed(ctl, drivers, clock.now())
        m = ctl.miners["r0m0"]
        before = m.commanded
        drivers["r0m0"].fail = "connection refused"
        for _ in range(FAULTY_AFTER):
            ctl.dispatcher.start(m, Desired(watts=1500.0), 1500.0)
            await clock.sleep(1)
        ctl.dispatcher.cancel_all()
        return m.health.faulty, m.health.failures, m.commanded == before, m.inflight

    faulty, failures, rolled_back, inflight = run_virtual(go())
    assert faulty and failures == FAULTY_AFTER
    assert rolled_back and not inflight


def test_polls_are_staggered_and_each_miner_read_once_per_interval() -> None:
    async def go() -> list[int]:
        clock = LoopClock(wall_at_zero=1_767_225_600.0)
        ctl, drivers = controller(fleet([10], telemetry_interval_s=5.0), clock=clock)
        ctl.dispatcher.reset_poll_phases(clock.now())
        started = []
        for _ in range(20):  # 20 s: 4 intervals
            await clock.sleep(1.0)
            started.append(ctl.dispatcher.poll_due(clock.now()))
        await clock.sleep(1.0)
        ctl.dispatcher.cancel_all()
        return [d.reads for d in drivers.values()] + [max(started)]

    *reads, peak = run_virtual(go())
    assert all(3 <= r <= 5 for r in reads)
    assert peak < 10  # staggered: never the whole fleet in one tick
