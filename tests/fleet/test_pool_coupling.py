"""Pool coupling end to end: emulated ASICs mine on a real `poold run` (devnet-backed) through
`StratumMiner`s whose rate follows each ASIC's hashrate; the controller cuts a rack to 60 % and
the pool's accepted difficulty falls as the power model says (≈0.6^0.6, not 0.6).

The controller's share-rate estimator is fed from the accepted shares (in the daemon the
ledger feeds it), and its per-rack pool hashrate follows too.

What is compared, and with what tolerance (so a busy machine cannot make it fail):
- the model's hashrate ratio (the power law, evaluated on the simulated clock) is in 0.55..0.85;
- the hashes the CPU miners actually did follow the model (they are paced to it and need little
  CPU: 1 kH/s each);
- the pool's accepted difficulty follows the hashes actually done, within 4 standard deviations
  of share counting (a share count n has a relative noise of 1/sqrt(n)), after taking out the
  shares the pool refused as stale (every share is a regtest block, so each one moves the tip and
  the miners' work in flight on the old tip is refused; that fraction grows with the machine's
  latency, not with the hashrate).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from poold.fleet.clock import ScaledClock
from poold.fleet.health import ShareRateEstimator
from poold.sim.ports import free_port
from poold.sim.simsite import SimSite, build_table
from tests.integration.conftest import new_address, write_config
from tests.poold_process import poold_run

SPEED = 10.0
HASH_SCALE = 1e-11  # 100 TH/s of emulated ASIC -> 1 kH/s of real CPU hashing
DIFFICULTY = 5e-8  # about 4 shares a second per miner at 1 kH/s
Z = 4.0  # standard deviations of share-count noise allowed


@dataclass(frozen=True, slots=True)
class Window:
    pool_hs: float  # from the accepted difficulty
    model_hs: float  # the power model, averaged (times HASH_SCALE)
    done_hs: float  # hashes the CPU miners did
    accepted: int
    rejected: int

    @property
    def kept(self) -> float:
        """The fraction of found shares the pool accepted."""
        return self.accepted / max(1, self.accepted + self.rejected)


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
    counts = {"accepted": 0, "rejected": 0}

    def on_event(ev: MinerEvent) -> None:
        if ev.kind == "accepted":
            accepted[ev.miner] = accepted.get(ev.miner, 0.0) + ev.difficulty
            shares.record(ev.miner, ev.difficulty, clock.now())
        if ev.kind in counts:
            counts[ev.kind] += 1

    # Firmware dynamics at 3x (a Braiins target τ ≈ 3 s): at real ramps (τ ≈ 10 s) the guard
    # sleeps a miner to keep the 40 s allowance, and the rack's hashrate falls further than
    # the power law this test checks the pool against.
    async with SimSite.started(table, clock, tcp=True, rng=random.Random(2),
                               driver_timeout_s=3.0, shares=shares, dynamics_speed=3.0) as site:
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

            async def window(seconds: float) -> Window:
                """The pool's, the model's and the miners' hashrate over `seconds`."""
                d0 = sum(accepted.values())
                n0, r0 = counts["accepted"], counts["rejected"]
                h0 = sum(sm.stats.hashes for sm in miners)
                t0 = asyncio.get_running_loop().time()
                model = 0.0
                steps = int(seconds)
                for _ in range(steps):
                    model += sum(site.asics[m].hashrate_ths() for m in rack0_miners)
                    await clock.sleep(1.0)
                real_s = asyncio.get_running_loop().time() - t0
                return Window(
                    pool_hs=(sum(accepted.values()) - d0) * 2**32 / real_s,
                    model_hs=model / steps * 1e12 * HASH_SCALE,
                    done_hs=(sum(sm.stats.hashes for sm in miners) - h0) / real_s,
                    accepted=counts["accepted"] - n0, rejected=counts["rejected"] - r0)

            before = await window(300.0)
            site.controller.set_cap(rack0, site.cfg.rack(rack0).cap_kw * 0.6)
            await clock.sleep(60.0)  # the cut is met well within this
            after = await window(300.0)
            est = site.controller.rack_pool_hashrate_hs(rack0, clock.now())
        finally:
            for sm in miners:
                sm.stop()
            for t in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 5.0)
    model_ratio = after.model_hs / before.model_hs
    done_ratio = after.done_hs / before.done_hs
    pool_ratio = after.pool_hs / before.pool_hs
    # What the pool should see of the work done: the shares it kept (not stale) of each window.
    expected = done_ratio * after.kept / before.kept
    noise = Z * math.sqrt(1 / max(1, before.accepted) + 1 / max(1, after.accepted))
    print(f"model x{model_ratio:.3f}; done {before.done_hs:.0f} -> {after.done_hs:.0f} H/s "
          f"(x{done_ratio:.3f}); pool {before.pool_hs:.0f} -> {after.pool_hs:.0f} H/s "
          f"(x{pool_ratio:.3f}, expected x{expected:.3f} +- {noise:.3f}); shares "
          f"{before.accepted}+{before.rejected} stale -> {after.accepted}+{after.rejected} stale")
    # The power law: watts spread over the rack give ≈ 0.6^0.6 = 0.74, not 0.6; when the guard
    # also sleeps one miner to keep the 40 s allowance at the firmware's pace, ≈ 0.62 (seen in a
    # clean-clone CI run: x0.617). The pool must follow either way (below).
    assert 0.55 < model_ratio < 0.85
    assert done_ratio == pytest.approx(model_ratio, rel=0.1), (done_ratio, model_ratio)
    assert abs(pool_ratio / expected - 1) <= noise, (pool_ratio, expected, noise)
    assert before.pool_hs == pytest.approx(
        before.done_hs * before.kept, rel=Z / math.sqrt(max(1, before.accepted)))
    assert est > 0
