"""Benchmark: fleet control on firmware that serves only its documented minimum.

Run: ``python -m tests.bench.fleet_firmware [--miners 2000 --speed 5 --seed 1]``.

poold's simulator serves the documented-minimum firmware shape (Braiins OS public REST API:
no cooling/state, `miner/details.status` as the MinerStatus number; LuxOS TCP API: no
`config`) over real loopback sockets; poold's fleet controller (the `FleetController` a
`poold run` with a `[fleet]` table runs, in this process) drives it through the real drivers.

1. Ten miners, two racks of five (Braiins and LuxOS), simulated time at `--speed`: every
   miner must be read; no firmware setting may exceed the miner's nameplate at any sample;
   rack000's cap is cut to 60 %:
   - time_to_cap_s: from the cut until the rack's *true* power (the emulators' meters) is
     under the cap for good;
   - kept_vs_optimal: the rack's hashrate by the model H = H_nom·(P/P_nom)^0.6 at the watts
     the emulators draw, over the model optimum for the cap (watts spread by equal marginal
     hashrate, each miner within its range) -- the baseline, computed in the same run;
2. then one miner of rack001 stops answering, and rack001 is cut to 60 %:
   blind_rack_under_cap = 1 if the rack's true power ends (and stays, 20 s) under the cap;
3. then `--miners` emulated miners (served by child processes, tests.bench.farm, so that
   only the controller's work is measured here) are polled and controlled by this one
   process on real time:
   poll_cpu_us_per_miner = this process's CPU ÷ telemetry readings taken, extrapolated to a
   2 GW site (570,000 miners at 3.5 kW) at the configured poll interval.

Last line:
``fleet_firmware miners=<n> read=<n> over_nameplate=<n> time_to_cap_s=<x> kept_vs_optimal=<y>
blind_rack_under_cap=<0|1> poll_cpu_us_per_miner=<z>``
"""



from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from typing import Any

from poold.fleet.clock import LoopClock, ScaledClock
from poold.fleet.controller import FleetController
from poold.fleet.drivers.base import MinerDriver, Telemetry
from poold.fleet.inventory import MinerSpec, parse_fleet
from poold.sim.asic import WATTS, SimAsic
from poold.sim.simsite import MODELS, SimSite, build_table
from tests.bench.farm import Farm, drivers_for

ALLOWED_S = 10.0
CUT = 0.6
SITE_W = 2e9
MINER_W = 3500.0
PASSWORD = "sim-secret"


def setting_w(a: SimAsic) -> float:
    """What the emulated firmware is set to run at (watts; asleep: its sleep power)."""
    if a.reported_sleep():
        return float(a.spec.sleep_w)
    if a.spec.actuator == WATTS or not a.spec.presets:
        return float(a.target_w)
    return float(a.spec.presets[a.level_index])


def model_h(p_nom: float, h_nom: float, p: float) -> float:
    return h_nom * (p / p_nom) ** 0.6 if p > 0 else 0.0


def optimum_h(miners: list[tuple[float, float, float, float]], cap_w: float) -> float:
    """Max Σ H_nom·(P/P_nom)^0.6 with Σ P ≤ cap, min ≤ P ≤ max per miner (equal marginal
    hashrate: P_i = (0.6·H_i/(λ·P_nom_i^0.6))^2.5, clamped; λ by bisection)."""
    def watts(lam: float) -> list[float]:
        out = []
        for p_nom, h_nom, lo, hi in miners:
            p = (0.6 * h_nom / (lam * p_nom**0.6)) ** 2.5
            out.append(min(hi, max(lo, p)))
        return out

    if sum(hi for _, _, _, hi in miners) <= cap_w:
        return sum(model_h(p, h, hi) for p, h, _, hi in miners)
    lo_l, hi_l = 1e-9, 1e3
    for _ in range(200):
        mid = (lo_l * hi_l) ** 0.5
        if sum(watts(mid)) > cap_w:
            lo_l = mid
        else:
            hi_l = mid
    return sum(model_h(p_nom, h, w) for (p_nom, h, _, _), w in
               zip(miners, watts(hi_l), strict=True))


async def small_site(speed: float, seed: int) -> dict[str, Any]:
    clock = ScaledClock(speed)
    table = build_table([["braiins", "luxos", "braiins", "luxos", "braiins"],
                         ["luxos", "braiins", "luxos", "braiins", "luxos"]],
                        over_cap_allowed_s=ALLOWED_S, telemetry_interval_s=5.0,
                        stale_after_s=15.0, command_timeout_s=5.0, ramp_kw_per_min=120.0)
    out: dict[str, Any] = {}
    async with SimSite.started(table, clock, tcp=True, rng=random.Random(seed),
                               driver_timeout_s=2.0, minimal_firmware=True) as site:
        ctl = site.controller
        over: set[str] = set()

        def sample() -> None:
            for mid, a in site.asics.items():
                if setting_w(a) > ctl.miners[mid].spec.nameplate_w + 1e-6:
                    over.add(mid)

        async def run_for(seconds: float, each: Any = None) -> None:
            end = clock.now() + seconds
            while clock.now() < end:
                await clock.sleep(0.5)
                sample()
                if each is not None:
                    each()

        await run_for(45.0)
        now = clock.now()
        out["read"] = sum(not m.health.stale(now, 15.0) for m in ctl.miners.values())
        # 1. rack000 cut to 60 %
        r0 = site.cfg.racks[0]
        cap0 = r0.cap_kw * 1000.0 * CUT
        ctl.set_cap(r0.id, cap0 / 1000.0)
        t_cut = clock.now()
        under_since: list[float | None] = [None]

        def track0() -> None:
            if site.true_power_w(r0.id) <= cap0:
                if under_since[0] is None:
                    under_since[0] = clock.now()
            else:
                under_since[0] = None

        await run_for(120.0, track0)
        out["time_to_cap_s"] = (under_since[0] - t_cut) if under_since[0] is not None \
            else float("inf")
        rack0 = [(mid, a) for mid, a in site.asics.items()
                 if ctl.miners[mid].spec.rack == r0.id]
        kept = sum(model_h(ctl.miners[mid].spec.nameplate_w, ctl.miners[mid].spec.nameplate_ths,
                           a.power_w()) for mid, a in rack0)
        best = optimum_h([(ctl.miners[mid].spec.nameplate_w, ctl.miners[mid].spec.nameplate_ths,
                           MODELS[a.spec.firmware].min_w, ctl.miners[mid].spec.max_w)
                          for mid, a in rack0], cap0)
        out["kept_vs_optimal"] = kept / best
        out["rack0_w"], out["cap0_w"] = site.true_power_w(r0.id), cap0
        # 2. a blind miner in rack001, then its cut to 60 %
        r1 = site.cfg.racks[1]
        blind = next(m.id for m in site.cfg.miners if m.rack == r1.id)
        site.asics[blind].faults.timeout = True
        await run_for(20.0)
        cap1 = r1.cap_kw * 1000.0 * CUT
        ctl.set_cap(r1.id, cap1 / 1000.0)
        ok_since: list[float | None] = [None]

        def track1() -> None:
            if site.true_power_w(r1.id) <= cap1:
                if ok_since[0] is None:
                    ok_since[0] = clock.now()
            else:
                ok_since[0] = None

        await run_for(120.0, track1)
        out["blind_rack_under_cap"] = int(ok_since[0] is not None
                                          and clock.now() - ok_since[0] >= 20.0)
        out["rack1_w"], out["cap1_w"] = site.true_power_w(r1.id), cap1
        out["blind_gauge"] = ctl.guard.blind.get(r1.id, 0)
        out["unverified"] = ctl.unverified()
        out["over_nameplate"] = len(over)
        out["miners"] = len(site.asics)
    return out


# -- part 3: many miners, served by child processes (tests.bench.farm) ----------------------


async def many(n: int, seed: int, window_s: float) -> dict[str, Any]:
    kinds_flat = ["braiins" if i % 2 == 0 else "luxos" for i in range(n)]
    async with Farm.started([(f"m{i:05d}", k) for i, k in enumerate(kinds_flat)], seed=seed,
                            minimal=True, password=PASSWORD) as farm:
        return await _control(farm, window_s)


async def _control(farm: Farm, window_s: float) -> dict[str, Any]:
    n = len(farm.miners)
    per_rack = 20
    kinds = [[m.kind for m in farm.miners[i:i + per_rack]] for i in range(0, n, per_rack)]
    table = build_table(kinds, over_cap_allowed_s=ALLOWED_S, telemetry_interval_s=10.0,
                        stale_after_s=30.0, command_timeout_s=15.0)
    for m, r in zip(table["miners"], farm.miners, strict=True):
        m["host"] = r.address
    cfg = parse_fleet(table, "<bench>")
    # The cfg's ids are the table's (rackNNN-mNNN), the farm's are mNNNNN: same order.
    by_cfg = {m.id: r for m, r in zip(cfg.miners, farm.miners, strict=True)}
    served = drivers_for(farm, {r.id: m.max_w for m, r in zip(cfg.miners, farm.miners,
                                                               strict=True)},
                         LoopClock(), password=PASSWORD, settle=False)
    drivers: dict[str, MinerDriver] = {mid: served[r.id] for mid, r in by_cfg.items()}
    readings = [0]

    def count(_spec: MinerSpec, _tel: Telemetry) -> None:
        readings[0] += 1

    clock = LoopClock()
    ctl = FleetController(cfg, drivers, clock=clock, on_telemetry=count, max_concurrency=256)
    t0 = time.monotonic()
    await ctl.start()
    start_s = time.monotonic() - t0
    read = sum(m.health.telemetry is not None for m in ctl.miners.values())
    run = asyncio.get_running_loop().create_task(ctl.run())
    await asyncio.sleep(ctl.cfg.telemetry_interval_s)  # past the start-up read
    cpu0, r0, w0 = time.process_time(), readings[0], time.monotonic()
    await asyncio.sleep(window_s / 3)
    for rack in cfg.racks:  # controlled, not just polled: every rack cut to 80 %
        ctl.set_cap(rack.id, rack.cap_kw * 0.8)
    await asyncio.sleep(window_s * 2 / 3)
    cpu = time.process_time() - cpu0
    polls = readings[0] - r0
    wall = time.monotonic() - w0
    commands = ctl.commands_sent
    stale = sum(m.health.stale(clock.now(), cfg.stale_after_s) for m in ctl.miners.values())
    await ctl.stop(settle_timeout_s=5.0)
    run.cancel()
    for d in drivers.values():
        await d.close()
    return {"miners": n, "read": read, "start_s": start_s, "cpu_s": cpu, "polls": polls,
            "wall_s": wall, "commands": commands, "stale_at_end": stale,
            "interval_s": cfg.telemetry_interval_s,
            "poll_cpu_us_per_miner": cpu / max(polls, 1) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--miners", type=int, default=2000)
    ap.add_argument("--speed", type=float, default=5.0, help="simulated time speed, parts 1-2")
    ap.add_argument("--window", type=float, default=60.0, help="measured seconds, part 3")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    # The blind miner's server holds its unanswered connections until it is stopped; asyncio
    # logs each one cancelled then. Expected here, not news.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    small = asyncio.run(small_site(args.speed, args.seed))
    print(f"10 miners (Braiins + LuxOS, documented minimum): read {small['read']}/"
          f"{small['miners']}; settings above nameplate: {small['over_nameplate']}")
    print(f"rack000 cut to 60 %: under {small['cap0_w']:.0f} W on the emulators' meters after "
          f"{small['time_to_cap_s']:.1f} s (allowed {ALLOWED_S:g} s + settle); now "
          f"{small['rack0_w']:.0f} W; model hashrate {small['kept_vs_optimal']:.3f} of the "
          f"model optimum for the cap")
    print(f"rack001 with one blind miner cut to 60 %: {small['rack1_w']:.0f} W vs cap "
          f"{small['cap1_w']:.0f} W (blind gauge {small['blind_gauge']}, not shown under cap: "
          f"{small['unverified'] or 'none'})")
    big = asyncio.run(many(args.miners, args.seed, args.window))
    print(f"{big['miners']} miners over loopback sockets: {big['read']} read at start "
          f"({big['start_s']:.1f} s), {big['polls']} readings and {big['commands']} commands in "
          f"{big['wall_s']:.0f} s, {big['stale_at_end']} stale at the end; controller process "
          f"CPU {big['cpu_s']:.1f} s")
    us = big["poll_cpu_us_per_miner"]
    n_site = SITE_W / MINER_W
    cores = n_site * us * 1e-6 / big["interval_s"]
    print(f"2 GW site ≈ {n_site:,.0f} miners at {MINER_W:g} W: at a {big['interval_s']:g} s poll "
          f"interval the fleet needs ≈ {cores:.1f} cores ({us:.0f} µs per miner per poll)")
    miners = small["miners"] + big["miners"]
    read = small["read"] + big["read"]
    print(f"fleet_firmware miners={miners} read={read} over_nameplate={small['over_nameplate']} "
          f"time_to_cap_s={small['time_to_cap_s']:.1f} "
          f"kept_vs_optimal={small['kept_vs_optimal']:.3f} "
          f"blind_rack_under_cap={small['blind_rack_under_cap']} "
          f"poll_cpu_us_per_miner={us:.0f}")


if __name__ == "__main__":
    main()
