"""The simulated ASIC fleet inside `poold demo --fleet` (the demo's `attach` hook).

Runs `poold.fleet.simsite.run_sim_site`: 2 racks x 10 emulated ASICs over real TCP (Braiins OS
REST, Whatsminer v3, LuxOS), each also mining on the demo's pool through a rate-following
`StratumMiner`, under rack caps; mid-demo every rack cap is cut to 60 % and the narration shows
the controller turning watts down across the racks (not switching miners off) and the
pool-verified hashrate following the power law.
"""

from __future__ import annotations

import os
from typing import Any

from poold.bitcoin.address import Network, p2wpkh_address
from poold.fleet.simsite import run_sim_site


async def attach(ctx: Any) -> None:
    """`ctx` is poold.demo.DemoContext (stratum_host/port, stop, say)."""
    payout = p2wpkh_address(os.urandom(20), Network.REGTEST)  # solo pool: user = address
    ctx.say(f"fleet: ASICs mine to {payout}")
    await run_sim_site(
        racks=2, per_rack=10, pool=(ctx.stratum_host, ctx.stratum_port),
        username_for=lambda mid: f"{payout}.{mid}", speed=10.0, duration_s=1e9,
        cut_at_s=120.0, cut_fraction=0.6, hash_scale=2e-11, status_every_s=30.0,
        say=ctx.say, stop=ctx.stop,
    )
