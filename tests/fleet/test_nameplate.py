"""Never above nameplate: firmware that offers more than a miner's nameplate (LuxOS profiles up
to 6,940 W on a 3,500 W S21, a power-target range to twice nameplate) is never set above the
inventory's `max_w`, which defaults to nameplate; an explicit per-miner `max_w` allows more.
Real drivers over real TCP against the emulated firmware, every driver kind."""

from __future__ import annotations

import random
from typing import Any

import pytest

from poold.fleet.clock import ScaledClock
from poold.fleet.policy import Actuator
from poold.sim.asic import AsicSpec, SimAsic
from poold.sim.simsite import MODELS, SimSite

SPEED = 10.0
# Firmware that allows about twice nameplate (nameplate 3500 W, as an S21 on LuxOS); cooled
# well enough (c_per_w) that heat does not decide the setting before max_w does.
NAMEPLATE = 3500.0
OVER = {
    "braiins": AsicSpec(model="S21", p_nom_w=NAMEPLATE, h_nom_ths=200, min_w=1200, max_w=7000,
                        firmware="braiins", actuator=Actuator.WATTS, c_per_w=0.006),
    "whatsminer": AsicSpec(model="M60S", p_nom_w=NAMEPLATE, h_nom_ths=170, min_w=1200,
                           max_w=7000, firmware="whatsminer", actuator=Actuator.WATTS,
                           c_per_w=0.006),
    "luxos": AsicSpec(model="S21", p_nom_w=NAMEPLATE, h_nom_ths=200, min_w=1300, max_w=6940,
                      firmware="luxos", actuator=Actuator.PRESETS, c_per_w=0.006,
                      presets=(1300.0, 2000.0, 2800.0, 3500.0, 4500.0, 5600.0, 6940.0)),
    "cgminer": AsicSpec(model="S19", p_nom_w=3250, h_nom_ths=95, min_w=3250, max_w=3250,
                        firmware="cgminer", actuator=Actuator.ONOFF, presets=(3250.0,)),
}


def table(kinds: list[str], max_w: dict[str, float]) -> dict[str, Any]:
    miners = []
    for j, kind in enumerate(kinds):
        s = OVER[kind]
        row: dict[str, Any] = {"id": f"m{j}", "rack": "r0", "host": "sim", "driver": kind,
                               "nameplate_w": s.p_nom_w, "nameplate_ths": s.h_nom_ths}
        if kind in max_w:
            row["max_w"] = max_w[kind]
        miners.append(row)
    cap_kw = len(kinds) * 7.0  # room for everything the firmware offers: only max_w binds
    return {"site": "s", "cap_kw": cap_kw, "over_cap_allowed_s": 30.0,
            "racks": [{"id": "r0", "cap_kw": cap_kw, "over_cap_allowed_s": 30.0}],
            "miners": miners, "telemetry_interval_s": 5.0, "stale_after_s": 20.0,
            "ramp_kw_per_min": 600.0}


def setting_w(a: SimAsic) -> float:
    """What the emulated firmware is set to run at (watts)."""
    if a.spec.actuator == Actuator.WATTS:
        return a.target_w
    return a.spec.presets[a.level_index] if a.spec.presets else a.spec.p_nom_w


async def run(kinds: list[str], max_w: dict[str, float], monkeypatch: pytest.MonkeyPatch,
              ) -> tuple[dict[str, list[float]], dict[str, SimAsic]]:
    for kind, spec in OVER.items():
        monkeypatch.setitem(MODELS, kind, spec)
    clock = ScaledClock(SPEED)
    seen: dict[str, list[float]] = {}
    async with SimSite.started(table(kinds, max_w), clock, tcp=True, rng=random.Random(2),
                               driver_timeout_s=3.0) as site:
        while clock.now() < 90.0:
            await clock.sleep(1.0)
            for mid, a in site.asics.items():
                seen.setdefault(mid, []).append(setting_w(a))
        return seen, dict(site.asics)


KINDS = ["braiins", "whatsminer", "luxos", "luxos", "cgminer"]


async def test_no_driver_kind_is_set_above_nameplate(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, asics = await run(KINDS, {}, monkeypatch)
    for mid, series in seen.items():
        nameplate = asics[mid].spec.p_nom_w
        # The emulators start at their firmware maximum; once brought to nameplate, never above.
        first_ok = next((i for i, w in enumerate(series) if w <= nameplate + 1e-6), None)
        assert first_ok is not None and first_ok <= 30, (mid, series)
        assert max(series[first_ok:]) <= nameplate + 1e-6, (mid, series)
        if asics[mid].spec.actuator != Actuator.ONOFF:
            assert asics[mid].commands_received > 0, mid


async def test_an_explicit_max_w_allows_more_than_nameplate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen, _ = await run(["luxos", "braiins"], {"luxos": 5600.0, "braiins": 5000.0},
                            monkeypatch)
    luxos, braiins = seen["m0"][-1], seen["m1"][-1]
    assert 3500.0 < luxos <= 5600.0
    assert 3500.0 < braiins <= 5000.0
