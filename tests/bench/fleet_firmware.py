"""Benchmark: a `poold run` process controlling firmware that serves only its documented minimum.

Run: ``python -m tests.bench.fleet_firmware [--miners 2000 --window 60 --seed 1]``.

One `poold run -c CONFIG` process, as an operator runs it: a `[fleet]` table of 10 + `--miners`
miners, the pool half on an in-process devnet (regtest, as `poold demo` wires it). The miners
are poold's emulators (poold.sim behind Braiins OS public REST and LuxOS TCP servers, in the
documented-minimum shape: no cooling/state, `miner/details.status` as the MinerStatus number,
no LuxOS `config`) served by child processes (tests.bench.farm) at the firmware's REAL-time
dynamics: a Braiins power target settles in ~30 s (first-order, tau ~10 s), a LuxOS profile in
~5 s, sleep in 1-3 s, wake in ~30 s. Every command goes through poold's admin API (a rack cap,
with the admin token); every power figure is the emulators' own meters, not poold's telemetry.

1. rack000 (5 miners, Braiins + LuxOS) cut to 60 %: every miner must be read; no firmware
   setting of any of the 2,010 miners may exceed its nameplate at any sample (1 s);
   - time_to_cap_s: from the PUT until the rack's true power is under the cap for good (the
     phase ends once it has stayed under for 30 s);
   - kept_vs_optimal: the rack's hashrate by the model H = H_nom*(P/P_nom)^0.6 at the watts the
     emulators draw, over the model optimum for the cap (watts spread by equal marginal
     hashrate, each miner within its range) -- the baseline, computed in the same run;
2. one miner of rack001 stops answering; once poold counts it blind, rack001 is cut to 60 %:
   blind_rack_under_cap = 1 if the rack's true power ends under the cap and stays 30 s;
3. all along, the `--miners` others (racks of 20, served by their own children) are polled by
   the same process. poll_cpu_us_per_miner = the poold process's CPU time (/proc/PID/stat
   utime + stime) over a polled-only `--window` / the telemetry readings in it (its own
   `poold_telemetry_reads_total` on /metrics), extrapolated to a 2 GW site (570,000 miners
   at 3.5 kW) at the configured poll interval. Then every one of their racks is cut to 80 %
   at once through the API: the commands by outcome and the racks still over their cap on
   the meters (within 120 s) are printed.

Last line:
``fleet_firmware miners=<n> read=<n> over_nameplate=<n> time_to_cap_s=<x> kept_vs_optimal=<y>
blind_rack_under_cap=<0|1> poll_cpu_us_per_miner=<z>``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from poold.demo import write_config
from poold.devnet import Devnet
from poold.sim.fleet_demo import fleet_toml
from poold.sim.ports import free_port
from poold.sim.simsite import MODELS, build_table
from tests.bench.farm import PASSWORD, Farm, raise_nofile

# The racks' over_cap_allowed_s: as long as a Braiins power target takes to settle, so a cut
# is met by turning watts down; a shorter allowance is kept by sleeping miners, at a cost in
# hashrate (`--allowance 10`: kept_vs_optimal 0.936, one miner of five slept).
ALLOWED_S = 30.0
SETTLE_S = 30.0  # a Braiins OS power target, the slowest of the settles a cut waits for
CUT = 0.6
HOLD_S = 30.0  # "under for good": stayed under this long
SITE_W = 2e9
MINER_W = 3500.0
INTERVAL_S = 10.0  # telemetry_interval_s: every miner read every 10 s
CONTROL_S = 120.0  # the big racks' cut: at most this long to be under on the meters
MIN_PHASE_S = 60.0  # a cut is judged (kept_vs_optimal) no sooner: past a Braiins settle
TOKEN = "bench-token"
PASSWORD_ENV = "POOLD_BENCH_ASIC_PASSWORD"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KEPT_LOG = Path(tempfile.gettempdir()) / "fleet_firmware.poold.log"  # poold's log, kept
SMALL = [["braiins", "luxos", "braiins", "luxos", "braiins"],
         ["luxos", "braiins", "luxos", "braiins", "luxos"]]


def model_h(p_nom: float, h_nom: float, p: float) -> float:
    return h_nom * (p / p_nom) ** 0.6 if p > 0 else 0.0


def optimum_h(miners: list[tuple[float, float, float, float]], cap_w: float) -> float:
    """Max sum H_nom*(P/P_nom)^0.6 with sum P <= cap, min <= P <= max per miner (equal
    marginal hashrate: P_i = (0.6*H_i/(lam*P_nom_i^0.6))^2.5, clamped; lam by bisection)."""
    def watts(lam: float) -> list[float]:
        return [min(hi, max(lo, (0.6 * h_nom / (lam * p_nom**0.6)) ** 2.5))
                for p_nom, h_nom, lo, hi in miners]

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


def cpu_s(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat fields 14 and 15), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def reads(text: str) -> float:
    """Telemetry readings so far, from poold's /metrics (every driver, every outcome)."""
    return sum(float(v) for v in re.findall(
        r"^poold_telemetry_reads_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def commands_by_result(text: str) -> dict[str, float]:
    """Firmware commands poold has finished so far, by result, from its /metrics."""
    out: dict[str, float] = {}
    for result, v in re.findall(r'^poold_controller_commands_total\{[^}]*result="(\w+)"[^}]*\} '
                                r"([0-9.e+]+)$", text, re.M):
        out[result] = out.get(result, 0.0) + float(v)
    return out


def commands(text: str) -> float:
    """Firmware commands poold has finished so far (any outcome), from its /metrics."""
    return sum(float(v) for v in re.findall(
        r"^poold_controller_commands_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


class Bench:
    def __init__(self, farms: list[Farm], table: dict[str, Any], http: aiohttp.ClientSession,
                 proc: asyncio.subprocess.Process, log: Path) -> None:
        self.farms = farms
        self.table = table
        self.http = http
        self.proc = proc
        self.log = log
        self.spec = {m["id"]: m for m in table["miners"]}
        self.rack_of = {m["id"]: m["rack"] for m in table["miners"]}
        self.over: set[str] = set()
        self.true_w: dict[str, float] = {}
        self._watch: asyncio.Task[None] | None = None

    async def get(self, path: str) -> Any:
        async with self.http.get(path) as r:
            return await r.json() if r.content_type == "application/json" else await r.text()

    async def put_cap(self, rack: str, watts: float) -> None:
        async with self.http.put(f"/api/v1/racks/{rack}/cap", json={"kw": watts / 1000}) as r:
            if r.status != 200:
                raise RuntimeError(f"PUT {rack} cap: HTTP {r.status} {await r.text()}")

    def rack_w(self, rack: str) -> float:
        return sum(w for mid, w in self.true_w.items() if self.rack_of[mid] == rack)

    async def watch(self) -> None:
        """Every second: the emulators' meters, and any firmware set above nameplate."""
        while True:
            got = await asyncio.gather(*(f.sample() for f in self.farms),
                                       *(f.settings() for f in self.farms))
            k = len(self.farms)
            self.true_w = {mid: w for sample in got[:k] for mid, (w, _) in sample.items()}
            for mid, w in ((mid, w) for settings in got[k:] for mid, w in settings.items()):
                if w > self.spec[mid]["nameplate_w"] + 1e-6:
                    self.over.add(mid)
            await asyncio.sleep(1.0)

    async def until(self, what: str, cond: Callable[[], Awaitable[bool]], within_s: float
                    ) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < within_s:
            if self.proc.returncode is not None:
                raise RuntimeError(f"poold exited {self.proc.returncode}: {tail(self.log)}")
            with contextlib.suppress(aiohttp.ClientError):
                if await cond():
                    return time.monotonic() - t0
            await asyncio.sleep(1.0)
        raise RuntimeError(f"{what} not within {within_s:g} s; poold log: {tail(self.log)}")

    async def cut_and_hold(self, rack: str, frac: float, within_s: float
                           ) -> tuple[float, float, float]:
        """PUT the cut; (time until under for good or inf, cap W, true W at the end)."""
        racks = {r["id"]: r for r in self.table["racks"]}
        cap = racks[rack]["cap_kw"] * 1000.0 * frac
        await self.put_cap(rack, cap)
        t_cut = time.monotonic()
        under_since: float | None = None
        while time.monotonic() - t_cut < within_s:
            await asyncio.sleep(0.5)
            if self.rack_w(rack) <= cap:
                under_since = under_since if under_since is not None else time.monotonic()
                if time.monotonic() - under_since >= HOLD_S:
                    break
            else:
                under_since = None
        held = under_since is not None and time.monotonic() - under_since >= HOLD_S
        while held and time.monotonic() - t_cut < MIN_PHASE_S:
            await asyncio.sleep(0.5)  # the planner gives watts back once the ramps settle
            held = self.rack_w(rack) <= cap
        return ((under_since - t_cut) if held and under_since is not None else float("inf"),
                cap, self.rack_w(rack))


def tail(log: Path, n: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    return ""


async def run(n_big: int, window_s: float, seed: int, workdir: Path, allowed_s: float
              ) -> dict[str, Any]:
    per_rack = 20
    big = [["braiins" if (r * per_rack + j) % 2 == 0 else "luxos" for j in range(per_rack)]
           for r in range(max(1, n_big // per_rack))]
    # Racks capped 5 % above their nameplates (the units draw up to 4 % over theirs, as real
    # ones do), so the start is not itself a breach.
    table = build_table(SMALL + big, rack_cap_factor=1.05, over_cap_allowed_s=allowed_s,
                        telemetry_interval_s=INTERVAL_S, stale_after_s=3 * INTERVAL_S,
                        command_timeout_s=15.0, ramp_kw_per_min=600.0)
    table["safe_cap_kw"] = round(table["cap_kw"] * 0.9, 3)
    miners = [(m["id"], m["driver"]) for m in table["miners"]]
    out: dict[str, Any] = {"miners": len(miners)}
    t_setup = time.monotonic()
    # The ten miners of the cut phases get their own child: a real miner's firmware does not
    # share a CPU with 500 others (the shared machine is what it is).
    small, many = miners[:10], miners[10:]
    async with Devnet() as devnet, \
            Farm.started(small, seed=seed, minimal=True, speed=1.0, password=PASSWORD) as f1, \
            Farm.started(many, seed=seed + 1, minimal=True, speed=1.0,
                         password=PASSWORD) as f2:
        for m in table["miners"]:
            m["host"] = (f1.by_id.get(m["id"]) or f2.by_id[m["id"]]).address
        port, api = free_port(), free_port()
        cfg = write_config(workdir, devnet, port, 1e-4, fleet_toml(table, PASSWORD_ENV),
                           api=("127.0.0.1", api), api_token=TOKEN)
        log = workdir / "poold.log"
        with log.open("wb") as f:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "poold", "--log-level", "WARNING", "run", "-c", str(cfg),
                env={**os.environ, PASSWORD_ENV: PASSWORD}, stdout=f, stderr=f)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{api}", headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=30)) as http:
                b = Bench([f1, f2], table, http, proc, log)
                out.update(await phases(b, window_s, table))
                out["setup_s"] = t_setup
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 90)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
        text = log.read_text(errors="replace")
        out["log_warnings"] = sum("WARNING" in line for line in text.splitlines())
        KEPT_LOG.write_text(text)
    return out


async def phases(b: Bench, window_s: float, table: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = len(table["miners"])
    t0 = time.monotonic()

    async def all_read() -> bool:
        ms = (await b.get("/api/v1/miners"))["miners"]
        return sum(m["telemetry"] is not None and not m["stale"] for m in ms) == n

    try:
        await b.until("every miner read", all_read, 240.0)
    except RuntimeError as exc:
        print(f"not every miner read: {exc}", file=sys.stderr)
    out["start_s"] = time.monotonic() - t0
    ms = (await b.get("/api/v1/miners"))["miners"]
    out["read"] = sum(m["telemetry"] is not None and not m["stale"] for m in ms)
    b._watch = asyncio.get_running_loop().create_task(b.watch())
    # The start-up commands (every LuxOS unit brought to a profile within its nameplate, ...)
    # and their read-backs are done before the first cut: no command for 15 s.
    t_q = time.monotonic()
    last, quiet_since = -1.0, time.monotonic()
    while time.monotonic() - t_q < 180.0 and time.monotonic() - quiet_since < 15.0:
        sent = commands(await b.get("/metrics"))
        if sent != last:
            last, quiet_since = sent, time.monotonic()
        await asyncio.sleep(1.0)
    out["quiet_s"] = time.monotonic() - t_q
    # 1. rack000 cut to 60 %
    t, cap0, w0 = await b.cut_and_hold("rack000", CUT, 150.0)
    out["time_to_cap_s"], out["cap0_w"], out["rack0_w"] = t, cap0, w0
    rack0 = [m for m in table["miners"] if m["rack"] == "rack000"]
    kept = sum(model_h(m["nameplate_w"], m["nameplate_ths"], b.true_w[m["id"]]) for m in rack0)
    best = optimum_h([(m["nameplate_w"], m["nameplate_ths"], MODELS[m["driver"]].min_w,
                       m["max_w"]) for m in rack0], cap0)
    out["kept_vs_optimal"] = kept / best
    # 2. one blind miner in rack001, then its cut to 60 %
    blind = next(m["id"] for m in table["miners"] if m["rack"] == "rack001")
    await b.farms[0].fault(blind, timeout=True)

    async def counted_blind() -> bool:
        racks = (await b.get("/api/v1/racks"))["racks"]
        return any(r["id"] == "rack001" and r["blind"] == 1 for r in racks)

    out["blind_after_s"] = await b.until("poold counting rack001's miner blind",
                                         counted_blind, 60.0)
    t1, cap1, w1 = await b.cut_and_hold("rack001", CUT, 150.0)
    out["blind_rack_under_cap"] = int(t1 != float("inf") and w1 <= cap1)
    out["blind_time_s"], out["cap1_w"], out["rack1_w"] = t1, cap1, w1
    # 3. the whole process polling: its CPU per reading over a polled-only window
    c0, r0, w_0 = cpu_s(b.proc.pid), reads(await b.get("/metrics")), time.monotonic()
    await asyncio.sleep(window_s)
    c1, r1, w_1 = cpu_s(b.proc.pid), reads(await b.get("/metrics")), time.monotonic()
    out["cpu_s"], out["polls"], out["wall_s"] = c1 - c0, r1 - r0, w_1 - w_0
    out["poll_cpu_us_per_miner"] = (c1 - c0) / max(r1 - r0, 1) * 1e6
    # ... and controlling: every big rack cut to 80 % at once through the API
    big_racks = [r for r in table["racks"] if r["id"] not in ("rack000", "rack001")]
    k0 = commands_by_result(await b.get("/metrics"))
    t_cut = time.monotonic()
    await asyncio.gather(*(b.put_cap(r["id"], r["cap_kw"] * 1000.0 * 0.8) for r in big_racks))
    caps = {r["id"]: r["cap_kw"] * 1000.0 * 0.8 for r in big_racks}

    def over() -> int:
        return sum(b.rack_w(r) > c for r, c in caps.items())

    while True:
        await asyncio.sleep(1.0)
        if time.monotonic() - t_cut >= CONTROL_S or not over():
            break
    out["control_s"] = time.monotonic() - t_cut
    out["big_over"] = over()
    k1 = commands_by_result(await b.get("/metrics"))
    out["commands"] = {k: v - k0.get(k, 0.0) for k, v in k1.items() if v - k0.get(k, 0.0)}
    racks = (await b.get("/api/v1/racks"))["racks"]
    out["blind_end"] = sum(r["blind"] for r in racks)
    out["over_nameplate"] = len(b.over)
    if b._watch is not None:
        b._watch.cancel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--miners", type=int, default=2000)
    ap.add_argument("--window", type=float, default=40.0,
                    help="measured seconds of polling, part 3")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--allowance", type=float, default=ALLOWED_S,
                    help="the racks' over_cap_allowed_s")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    # A blind miner's server holds its unanswered connections until it is stopped; asyncio
    # logs each one cancelled then. Expected here, not news.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="fleet_firmware.") as tmp:
        r = asyncio.run(run(args.miners, args.window, args.seed, Path(tmp),
                           args.allowance))
    print(f"one `poold run` process, {r['miners']} miners (Braiins + LuxOS, documented minimum, "
          f"real-time firmware dynamics): {r['read']} read {r['start_s']:.0f} s after start, "
          f"start-up commands done {r['quiet_s']:.0f} s later; "
          f"firmware set above nameplate: {r['over_nameplate']}")
    print(f"rack000 cut to 60 % through the admin API: under {r['cap0_w']:.0f} W on the "
          f"emulators' meters after {r['time_to_cap_s']:.1f} s (target: allowance "
          f"{args.allowance:g} s + Braiins settle {SETTLE_S:g} s), held {HOLD_S:g} s; "
          f"{r['rack0_w']:.0f} W at the end; model hashrate {r['kept_vs_optimal']:.3f} of the "
          f"model optimum for the cap (baseline)")
    print(f"rack001, one miner blind (counted after {r['blind_after_s']:.0f} s), cut to 60 %: "
          f"{r['rack1_w']:.0f} W vs cap {r['cap1_w']:.0f} W on the meters "
          f"(under for good after {r['blind_time_s']:.1f} s)")
    print(f"{r['miners']} miners polled every {INTERVAL_S:g} s: {r['polls']:.0f} readings in "
          f"{r['wall_s']:.0f} s ({r['polls'] / r['wall_s']:.0f}/s of "
          f"{r['miners'] / INTERVAL_S:.0f}/s due), poold CPU {r['cpu_s']:.1f} s "
          f"({r['cpu_s'] / r['wall_s']:.2f} core)")
    print(f"then the {r['miners'] - 10} in racks of 20 all cut to 80 % at once: commands "
          f"{r['commands']}; racks over their cap on the meters after {r['control_s']:.0f} s: "
          f"{r['big_over']}; blind at the end: {r['blind_end']}; WARNING lines in poold's log "
          f"({KEPT_LOG}): {r['log_warnings']}")
    us = r["poll_cpu_us_per_miner"]
    n_site = SITE_W / MINER_W
    cores = n_site * us * 1e-6 / INTERVAL_S
    print(f"2 GW site ~ {n_site:,.0f} miners at {MINER_W:g} W: at a {INTERVAL_S:g} s poll "
          f"interval the fleet needs ~ {cores:.1f} cores ({us:.0f} us of poold CPU per reading; "
          f"{cores * INTERVAL_S / 10:.1f} cores at 10 s, {cores * INTERVAL_S / 30:.1f} at 30 s)")
    print(f"fleet_firmware miners={r['miners']} read={r['read']} "
          f"over_nameplate={r['over_nameplate']} time_to_cap_s={r['time_to_cap_s']:.1f} "
          f"kept_vs_optimal={r['kept_vs_optimal']:.3f} "
          f"blind_rack_under_cap={r['blind_rack_under_cap']} poll_cpu_us_per_miner={us:.0f}")


if __name__ == "__main__":
    main()
