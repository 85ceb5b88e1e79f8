"""The minimum dwell and its exception, over real TCP against the simulator serving the
documented-minimum firmware shape: a cap cut puts miners to sleep, and a full restore well
inside `min_sleep_s` wakes them early (the cap allows nothing else: no awake miner could take
those watts), counted in poold_rack_early_wakes_total; a partial restore the awake miners can
use keeps the dwell. Asserted on the emulators' own meters."""

from __future__ import annotations

import logging
import random

import pytest
from prometheus_client import CollectorRegistry

from poold.fleet.clock import ScaledClock
from poold.metrics import Metrics
from poold.sim.simsite import SimSite, build_table

SPEED = 10.0
KINDS = [["braiins", "luxos", "braiins", "luxos", "braiins"]]


async def _cut_until_asleep(site: SimSite, clock: ScaledClock, frac: float) -> list[str]:
    """Cut the rack to `frac` of its cap; the ids asleep on the emulators, within 120 s."""
    rack = site.cfg.racks[0]
    site.controller.set_cap(rack.id, rack.cap_kw * frac)
    t0 = clock.now()
    while clock.now() - t0 < 120.0:
        await clock.sleep(1.0)
        asleep = [mid for mid, a in site.asics.items() if a.sleeping]
        if asleep and site.true_power_w(rack.id) <= rack.cap_kw * 1000.0 * frac:
            return asleep
    raise AssertionError(f"no miner asleep under {frac:.0%} after 120 s: "
                         f"{site.true_power_w(rack.id):.0f} W")


async def test_a_full_restore_inside_the_dwell_wakes_early_and_the_site_comes_back(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="poold.fleet")
    registry = CollectorRegistry()
    clock = ScaledClock(SPEED)
    table = build_table(KINDS, over_cap_allowed_s=30.0, telemetry_interval_s=5.0,
                        stale_after_s=15.0, command_timeout_s=5.0, ramp_kw_per_min=600.0,
                        min_sleep_s=600.0)
    async with SimSite.started(table, clock, tcp=True, rng=random.Random(11),
                               driver_timeout_s=2.0, minimal_firmware=True,
                               metrics=Metrics(registry)) as site:
        rack = site.cfg.racks[0]
        await clock.sleep(20.0)
        asleep = await _cut_until_asleep(site, clock, 0.25)
        t_restore = clock.now()
        site.controller.set_cap(rack.id, rack.cap_kw)
        nameplate = sum(m.nameplate_w for m in site.cfg.miners)
        seen = 0.0
        while clock.now() - t_restore < 200.0:  # a third of the 600 s dwell
            await clock.sleep(2.0)
            seen = site.true_power_w(rack.id)
            if not any(a.sleeping for a in site.asics.values()) and seen >= 0.85 * nameplate:
                break
        still = [mid for mid, a in site.asics.items() if a.sleeping]
        assert not still, f"{still} held asleep {clock.now() - t_restore:.0f} s after a full " \
                          f"restore; rack at {seen:.0f} W of {nameplate:.0f} W nameplate"
        assert seen >= 0.85 * nameplate, (seen, nameplate)
        assert clock.now() - t_restore < 600.0
        early = registry.get_sample_value("poold_rack_early_wakes_total", {"rack": rack.id})
        assert early is not None and early >= len(asleep), (early, asleep)
    lines = [r for r in caplog.records if "before its dwell" in r.getMessage()]
    assert lines and all(r.levelno == logging.INFO for r in lines)
    assert any(mid in r.getMessage() for r in lines for mid in asleep)


async def test_a_partial_restore_the_awake_miners_can_use_keeps_the_dwell() -> None:
    registry = CollectorRegistry()
    clock = ScaledClock(SPEED)
    table = build_table(KINDS, over_cap_allowed_s=30.0, telemetry_interval_s=5.0,
                        stale_after_s=15.0, command_timeout_s=5.0, ramp_kw_per_min=600.0,
                        min_sleep_s=600.0)
    async with SimSite.started(table, clock, tcp=True, rng=random.Random(12),
                               driver_timeout_s=2.0, minimal_firmware=True,
                               metrics=Metrics(registry)) as site:
        rack = site.cfg.racks[0]
        await clock.sleep(20.0)
        asleep = await _cut_until_asleep(site, clock, 0.25)
        awake = [m for m in site.cfg.miners if m.id not in asleep]
        # A restore the awake miners alone can take (their nameplates, with margin).
        frac = 0.9 * sum(m.nameplate_w for m in awake) / (rack.cap_kw * 1000.0)
        assert frac > 0.25
        site.controller.set_cap(rack.id, rack.cap_kw * frac)
        t0 = clock.now()
        while clock.now() - t0 < 120.0:
            await clock.sleep(2.0)
            woken = [mid for mid in asleep if not site.asics[mid].sleeping]
            assert not woken, f"{woken} woken {clock.now() - t0:.0f} s into the dwell"
        assert registry.get_sample_value("poold_rack_early_wakes_total",
                                         {"rack": rack.id}) in (None, 0.0)
        # the awake miners did take the watts
        assert site.true_power_w(rack.id) >= 0.6 * rack.cap_kw * 1000.0 * frac
