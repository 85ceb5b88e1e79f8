"""The demo entry point `run_sim_site` (no pool): a cut mid-run is met and narrated."""

from __future__ import annotations

import pytest

from poold.fleet.state import FleetStatus
from poold.sim.simsite import run_sim_site


async def test_run_sim_site_cuts_and_meets_the_caps() -> None:
    said: list[str] = []
    seen: list[FleetStatus] = []
    final = await run_sim_site(racks=2, per_rack=4, speed=20.0, duration_s=100.0,
                               cut_at_s=30.0, status_every_s=10.0, on_status=seen.append,
                               say=said.append)
    assert any("cut to 60%" in line for line in said)
    racks = [n for n in final.nodes if n.node.startswith("rack")]
    assert len(racks) == 2
    for n in racks:
        first = next(x for x in seen[1].nodes if x.node == n.node)  # before the cut
        assert n.cap_w == pytest.approx(first.cap_w * 0.6)
        assert n.power_w <= n.cap_w
        assert n.hashrate_ths > 0.6 * first.hashrate_ths  # throttled, not switched off
    assert final.asleep == 0 and final.commands_sent > 0
