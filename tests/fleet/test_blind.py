"""Blind is loud and safe: a miner that stops answering is counted at its worst case, commanded
down, and the rest of its rack is shed so the rack's own meters end under its cap; the first
failure is a WARNING naming the miner, the call and the reason (then at most one a minute),
the rack's blind count is exported, and a rack that cannot be shown under its cap is named.
Real drivers over real TCP, the simulator serving the documented-minimum firmware shape."""

from __future__ import annotations

import logging
import random

import pytest
from prometheus_client import CollectorRegistry

from poold.fleet.clock import ScaledClock
from poold.metrics import Metrics
from poold.sim.simsite import SimSite, build_table

SPEED = 10.0
ALLOWED_S = 40.0


async def test_one_blind_miner_of_five_and_a_cut_to_60_percent_ends_under_the_cap(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="poold.fleet")
    registry = CollectorRegistry()
    clock = ScaledClock(SPEED)
    table = build_table([["braiins", "luxos", "braiins", "luxos", "braiins"]],
                        over_cap_allowed_s=ALLOWED_S, telemetry_interval_s=5.0,
                        stale_after_s=15.0, command_timeout_s=5.0, ramp_kw_per_min=120.0)
    async with SimSite.started(table, clock, tcp=True, rng=random.Random(7),
                               driver_timeout_s=2.0, minimal_firmware=True,
                               metrics=Metrics(registry)) as site:
        ctl = site.controller
        rack = site.cfg.racks[0]
        await clock.sleep(30.0)
        assert all(not m.health.stale(clock.now(), 15.0) for m in ctl.miners.values()), \
            "the documented minimum must be enough to read every miner"
        blind = site.cfg.miners[1].id  # a LuxOS miner stops answering
        site.asics[blind].faults.timeout = True
        await clock.sleep(25.0)  # past stale_after_s
        cap_w = rack.cap_kw * 1000.0 * 0.6
        ctl.set_cap(rack.id, rack.cap_kw * 0.6)
        t_cut = clock.now()
        met_since: float | None = None
        while clock.now() - t_cut < 150.0:
            await clock.sleep(1.0)
            if site.true_power_w(rack.id) <= cap_w:
                met_since = met_since if met_since is not None else clock.now()
            else:
                met_since = None
        assert met_since is not None, f"meters {site.true_power_w(rack.id):.0f} W > {cap_w:.0f} W"
        assert met_since - t_cut <= ALLOWED_S + 30.0
        # Shown under the cap with the blind miner at its worst case: nothing to name.
        assert ctl.guard.unverified(clock.now()) == []
        assert registry.get_sample_value("poold_rack_blind_miners", {"rack": rack.id}) == 1.0
        power = registry.get_sample_value("poold_rack_power_watts", {"rack": rack.id})
        assert power is not None and power <= cap_w
        # every reading counted by outcome: the blind LuxOS miner's time out
        timeouts = registry.get_sample_value("poold_telemetry_reads_total",
                                             {"driver": "luxos", "result": "timeout"})
        assert timeouts is not None and timeouts >= 1
        for kind in ("braiins", "luxos"):
            ok = registry.get_sample_value("poold_telemetry_reads_total",
                                           {"driver": kind, "result": "ok"})
            assert ok is not None and ok >= 10, (kind, ok)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and blind in
                r.getMessage() and "telemetry" in r.getMessage()]
    assert warnings, "the first failure must be a WARNING"
    first = warnings[0].getMessage()
    assert "read" in first and "timed out after 2 s" in first, first
    # ≤ one a minute per miner over the ~3 simulated minutes it stayed blind
    assert len(warnings) <= 4, [w.getMessage() for w in warnings]


async def test_a_rack_its_blind_miners_alone_put_over_its_cap_is_named() -> None:
    clock = ScaledClock(SPEED)
    table = build_table([["braiins"] * 3], over_cap_allowed_s=10.0, telemetry_interval_s=5.0,
                        stale_after_s=15.0, command_timeout_s=5.0)
    async with SimSite.started(table, clock, tcp=True, rng=random.Random(8),
                               driver_timeout_s=2.0, minimal_firmware=True) as site:
        ctl = site.controller
        rack = site.cfg.racks[0]
        await clock.sleep(20.0)
        for m in site.cfg.miners[:2]:
            site.asics[m.id].faults.timeout = True
        ctl.set_cap(rack.id, rack.cap_kw * 0.5)  # less than two miners at nameplate
        await clock.sleep(60.0)
        assert ctl.guard.unverified(clock.now()) == [rack.id]
        assert rack.id in ctl.unverified()
