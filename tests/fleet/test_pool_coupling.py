"""Pool coupling end to end: emulated ASICs mine on a real `poold run` (devnet-backed) through
`StratumMiner`s whose rate follows each ASIC's hashrate; the controller cuts a rack to 60 % and
the pool's accepted difficulty falls as the power model says (≈0.6^0.6, not 0.6).

The controller's share-rate estimator is fed from the accepted shares (in the daemon the
ledger feeds it), and its per-rack pool hashrate follows too."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from poold.fleet.clock import ScaledClock
from poold.fleet.health import ShareRateEstimator
from poold.sim.simsite import SimSite, build_table
from tests.integration.conftest import new_address, write_config
from tests.poold_process import free_port, poold_run

SPEED = 10.0
HASH_SCALE = 1e-10  # 100 TH/s of emulated ASIC -> 10 kH/s of real CPU hashing
DIFFICULTY = 5e-7


@pytest.fixture
async def pool_addr(tmp_path: Path) -> AsyncIterator[tuple[str, int]]:
    from poold.devnet import Devnet

    async with Devnet() as dn:
        await dn.generate(101)
        port = free_port()
        cfg = write_config(tmp_path, dn, port)
        # The pool's hashrate is counted from shares, with noise of 1/sqrt(shares per window):
        # vardiff aims at 4 shares a second per miner, ~350 per window (every one of them is
        # also a regtest block). At 1 s, ~100 shares per window made the ratio flaky.
        cfg.write_text(cfg.read_text().replace("share_interval_s = 10", "share_interval_s = 0.25"))
        async with poold_run(cfg, tmp_path / "poold.log", port=port):
            yield "127.0.0.1", port


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_pool_sees_hashrate_fall_as_the_model_says(pool_addr: tuple[str, int]) -> None:
    from poold.sim.miner import MinerEvent, StratumMiner

    clock = ScaledClock(SPEED)
    shares = ShareRateEstimator(window_s=300.0)
    kinds = [["braiins", "whatsminer", "luxos"], ["braiins", "braiins", "whatsminer"]]
    table = build_table(kinds, over_cap_allowed_s=40.0, telemetry_interval_s=5.0,
                        stale_after_s=20.0, command_timeout_s=20.0, ramp_kw_per_min=200.0)
    accepted: dict[str, float] = {}

    def on_event(ev: MinerEvent) -> None:
        if ev.kind == "accepted":
            accepted[ev.miner] = accepted.get(ev.miner, 0.0) + ev.difficulty
            shares.record(ev.miner, ev.difficulty, clock.now())

    async with SimSite.started(table, clock, tcp=True, rng=random.Random(2),
                               driver_timeout_s=3.0, shares=shares) as site:
        rack0 = site.cfg.racks[0].id
        rack0_miners = [m.id for m in site.cfg.miners if m.rack == rack0]
        tasks = []
        miners = []
        payout = new_address()  # solo pool: the username carries the payout address
        for mid in rack0_miners:
            a = site.asics[mid]
            worker = site.controller.miners[mid].spec.worker or mid
            sm = StratumMiner(*pool_addr, f"{payout}.{mid}", "x",
                              lambda a=a: a.hashrate_ths() * 1e12, mode="rate",
                              scale=HASH_SCALE, suggest_difficulty=DIFFICULTY, name=worker,
                              on_event=on_event)
            miners.append(sm)
            tasks.append(asyncio.create_task(sm.run()))
        try:
            await clock.sleep(60.0)  # connect, settle at the configured cap

            async def window(seconds: float) -> tuple[float, float]:
                """(pool H/s from accepted difficulty, model H/s averaged) over `seconds`."""
                d0 = sum(accepted.values())
                model = 0.0
                steps = int(seconds)
                for _ in range(steps):
                    model += sum(site.asics[m].hashrate_ths() for m in rack0_miners)
                    await clock.sleep(1.0)
                pool_hs = (sum(accepted.values()) - d0) * 2**32 / (seconds / SPEED)
                return pool_hs, model / steps * 1e12 * HASH_SCALE

            pool_before, model_before = await window(300.0)
            site.controller.set_cap(rack0, site.cfg.rack(rack0).cap_kw * 0.6)
            await clock.sleep(60.0)  # the cut is met well within this
            pool_after, model_after = await window(300.0)
            est = site.controller.rack_pool_hashrate_hs(rack0, clock.now())
        finally:
            for sm in miners:
                sm.stop()
            for t in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 5.0)
    model_ratio = model_after / model_before
    pool_ratio = pool_after / pool_before
    print(f"pool H/s {pool_before:.0f} -> {pool_after:.0f} (x{pool_ratio:.3f}); "
          f"model {model_before:.0f} -> {model_after:.0f} (x{model_ratio:.3f})")
    assert 0.65 < model_ratio < 0.85  # the power law: ≈ 0.6^0.6 = 0.74, not 0.6
    assert pool_ratio == pytest.approx(model_ratio, rel=0.25), (pool_ratio, model_ratio)
    assert pool_before == pytest.approx(model_before, rel=0.35)
    assert est > 0
