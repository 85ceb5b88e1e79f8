"""Projection (poold.fleet.projection): what each miner draws and will draw."""

from __future__ import annotations

import pytest

from poold.fleet.drivers.base import Desired, Telemetry
from poold.fleet.projection import blind, projected_w
from tests.fleet.fakes import controller, feed, fleet


def test_a_fresh_miner_counts_at_its_measured_watts_and_nodes_sum_up() -> None:
    ctl, drivers = controller(fleet([2, 3], containers=True))
    for i, d in enumerate(drivers.values()):
        d.power_w = 2000.0 + i
    feed(ctl, drivers, 0.0)
    m = ctl.miners["r0m0"]
    assert projected_w(m, 1.0, ctl.cfg.stale_after_s) == 2000.0
    power = ctl.proj.node_power(1.0)
    assert power["r0"] == 2000.0 + 2001.0
    assert power["r1"] == sum(2000.0 + i for i in range(2, 5))
    assert power["c0"] == power["s"] == power["r0"] + power["r1"]


def test_a_blind_miner_counts_at_its_worst_case() -> None:
    ctl, drivers = controller(fleet([2]))
    drivers["r0m0"].power_w = 1200.0
    feed(ctl, drivers, 0.0)
    m = ctl.miners["r0m0"]
    later = ctl.cfg.stale_after_s + 1.0
    assert blind(m, later, ctl.cfg.stale_after_s)
    assert projected_w(m, later, ctl.cfg.stale_after_s) == pytest.approx(m.spec.nameplate_w)
    never_read = ctl.miners["r0m1"]
    never_read.health.telemetry = None
    assert projected_w(never_read, 0.0, ctl.cfg.stale_after_s) == never_read.worst_w


def test_within_the_settle_window_a_decrease_counts_at_once_an_increase_not_yet() -> None:
    ctl, drivers = controller(fleet([1]))
    drivers["r0m0"].power_w = 2500.0
    feed(ctl, drivers, 0.0)
    m = ctl.miners["r0m0"]
    m.commanded, m.commanded_w, m.settle_until = Desired(watts=1500.0), 1500.0, 30.0
    assert projected_w(m, 1.0, 1e9) == 1500.0  # a decrease: counted as commanded
    m.commanded, m.commanded_w = Desired(watts=2900.0), 2900.0
    assert projected_w(m, 1.0, 1e9) == 2900.0  # an increase: the higher figure
    m.settle_until = -1.0
    assert projected_w(m, 1.0, 1e9) == 2500.0  # settled, read after it: measured


def test_watts_implausibly_low_for_the_hashrate_are_not_believed() -> None:
    ctl, _ = controller(fleet([1]))
    m = ctl.miners["r0m0"]
    ctl.dispatcher.take(m, Telemetry(time=0.0, power_w=500.0, hashrate_ths=100.0), 0.0,
                        steady=True)
    assert projected_w(m, 0.0, 1e9) == pytest.approx(m.nameplate_curve.power_for(100.0))
