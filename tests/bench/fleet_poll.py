"""Benchmark: poold's own CPU for one telemetry reading, per driver (Braiins REST, LuxOS TCP).

Run: ``python -m tests.bench.fleet_poll [--reads 400] [--profile]``.

The emulated firmware (documented-minimum shape) is served by a child process
(tests.bench.farm), so this process's CPU is the driver's and the controller's alone: each
reading is a `Dispatcher.poll` (the driver's calls, parsing, the controller taking the reading)
as `poold run` does it every `telemetry_interval_s`. `--profile` prints the cProfile of the
reads (top 25 by own time). Baselines in the same run: one loopback request/reply of each
transport done the plain way -- an aiohttp GET on a kept-alive session, and an
`asyncio.open_connection` connect-send-read-close (how the LuxOS driver made each of its calls
before it used the loop's bare socket calls).

A second baseline: the Braiins reading as it was, re-reading the power target on every
reading (``TARGET_EVERY = 1``), against the default (once in ``TARGET_EVERY`` readings).

Last line: ``fleet_poll braiins_us=<x> braiins_target_every_reading_us=<x0> luxos_us=<y>
floor_http_us=<a> floor_tcp_us=<b>``
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import logging
import pstats
import time
from typing import Any

import aiohttp

from poold.fleet.clock import LoopClock
from poold.fleet.controller import FleetController
from poold.fleet.drivers import braiins
from poold.fleet.inventory import parse_fleet
from poold.fleet.state import MinerState
from poold.sim.simsite import build_table
from tests.bench.farm import PASSWORD, Farm, drivers_for


async def _floor(farm: Farm, reads: int) -> tuple[float, float]:
    http = next(m for m in farm.miners if m.kind == "braiins")
    tcp = next(m for m in farm.miners if m.kind == "luxos")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{http.address}/api/v1/miner/details") as r:
            await r.read()
        c0 = time.process_time()
        for _ in range(reads):
            async with s.get(f"http://{http.address}/api/v1/miner/details") as r:
                await r.read()
        f_http = (time.process_time() - c0) / reads
    c0 = time.process_time()
    for _ in range(reads):
        reader, writer = await asyncio.open_connection(tcp.host, tcp.port)
        writer.write(b'{"command":"summary"}')
        await reader.read()
        writer.close()
        await writer.wait_closed()
    f_tcp = (time.process_time() - c0) / reads
    return f_http, f_tcp


async def run(reads: int, profile: bool) -> dict[str, Any]:
    async with Farm.started([("m0", "braiins"), ("m1", "luxos")], seed=1, minimal=True,
                            password=PASSWORD) as farm:
        table = build_table([["braiins", "luxos"]], telemetry_interval_s=3600.0,
                            stale_after_s=7200.0)
        cfg = parse_fleet(table, "<bench>")
        by_cfg = dict(zip((m.id for m in cfg.miners), farm.miners, strict=True))
        served = drivers_for(farm, {r.id: m.max_w for m, r in zip(cfg.miners, farm.miners,
                                                                   strict=True)},
                             LoopClock(), password=PASSWORD, settle=False)
        drivers = {mid: served[r.id] for mid, r in by_cfg.items()}
        ctl = FleetController(cfg, drivers, clock=LoopClock())
        await ctl.start()  # capabilities, the first reading, logins
        out: dict[str, Any] = {}
        prof = cProfile.Profile() if profile else None
        async def measure(m: MinerState) -> float:
            for _ in range(5):
                await ctl.dispatcher.poll(m)  # warm: optional calls found absent, etc.
            if prof is not None:
                prof.enable()
            c0 = time.process_time()
            for _ in range(reads):
                await ctl.dispatcher.poll(m)
            cpu = (time.process_time() - c0) / reads
            if prof is not None:
                prof.disable()
            assert m.health.telemetry is not None and m.health.telemetry.power_w
            return cpu

        for m in ctl.miners.values():
            if m.driver.kind == "braiins":
                every = braiins.TARGET_EVERY
                braiins.TARGET_EVERY = 1  # baseline: the target re-read on every reading
                out["braiins_every"] = await measure(m)
                braiins.TARGET_EVERY = every
            out[m.driver.kind] = await measure(m)
        out["floor_http"], out["floor_tcp"] = await _floor(farm, reads)
        if prof is not None:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(25)
            out["profile"] = buf.getvalue()
        for d in drivers.values():
            await d.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reads", type=int, default=400)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out = asyncio.run(run(args.reads, args.profile))
    if "profile" in out:
        print(out["profile"])
    b, lx, b0 = out["braiins"] * 1e6, out["luxos"] * 1e6, out["braiins_every"] * 1e6
    fh, ft = out["floor_http"] * 1e6, out["floor_tcp"] * 1e6
    print(f"one reading: Braiins REST {b:.0f} µs ({b / fh:.1f}x one plain aiohttp GET, "
          f"{fh:.0f} µs); LuxOS TCP, two requests, {lx:.0f} µs ({lx / ft:.1f}x one "
          f"asyncio.open_connection request, {ft:.0f} µs)")
    print(f"Braiins target re-read every {braiins.TARGET_EVERY} readings instead of every one: "
          f"{b:.0f} µs vs {b0:.0f} µs per reading ({b / b0:.2f}x)")
    print(f"fleet_poll braiins_us={b:.0f} braiins_target_every_reading_us={b0:.0f} "
          f"luxos_us={lx:.0f} floor_http_us={fh:.0f} floor_tcp_us={ft:.0f}")


if __name__ == "__main__":
    main()
