"""Planner (poold.fleet.planner): rack budgets and per-miner plans, pure computation."""

from __future__ import annotations

from poold.fleet.policy import Actuator
from tests.fleet.fakes import ManualClock, controller, feed, fleet, preset_caps


def test_a_cap_cut_is_planned_under_the_cap_and_queued_for_dispatch() -> None:
    clock = ManualClock()
    ctl, drivers = controller(fleet([4]), clock=clock)
    feed(ctl, drivers, 0.0)
    ctl.planner.optimize()
    ctl.budgets.set_cap("r0", 12.0 * 0.6)
    assert ctl.planner.optimize() == 1
    planned = sum(m.plan.watts for m in ctl.miners.values() if m.plan is not None)
    assert planned <= 12_000 * 0.6 * ctl.cfg.target_fraction + 1e-6
    assert ctl.planner.pending == set(ctl.miners)
    assert not ctl.planner.dirty


def test_a_blind_miner_is_fixed_at_its_worst_case_in_the_plan() -> None:
    clock = ManualClock()
    ctl, drivers = controller(fleet([3]), clock=clock)
    feed(ctl, drivers, 0.0)
    m = ctl.miners["r0m0"]
    clock.t = ctl.cfg.stale_after_s + 1.0
    inp = ctl.planner.input(m, clock.t)
    assert inp.fixed_w == m.worst_w


def test_the_round_robin_marks_every_rack_within_the_optimizer_interval() -> None:
    ctl, _ = controller(fleet([1] * 10, guard_interval_s=1.0, optimizer_interval_s=5.0))
    ctl.planner.dirty.clear()
    for _ in range(5):
        ctl.planner.mark_round_robin()
    assert ctl.planner.dirty == set(ctl.topo.rack_miners)


def test_levels_map_to_the_nearest_preset() -> None:
    ctl, drivers = controller(fleet([1]), caps=preset_caps([1000.0, 2000.0, 3000.0]))
    feed(ctl, drivers, 0.0)
    m = ctl.miners["r0m0"]
    assert m.caps is not None and m.caps.actuator is Actuator.PRESETS
    ctl.budgets.set_cap("r0", 2.2)
    ctl.planner.optimize()
    assert m.plan_desired is not None and m.plan_desired.level == "p2000"
