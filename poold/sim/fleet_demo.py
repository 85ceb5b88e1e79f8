"""The simulated ASIC fleet of `poold demo --fleet`, controlled by the daemon itself.

The demo process runs the emulated hardware: 2 racks x 10 `SimAsic`s (a mix of Braiins OS REST,
Whatsminer API v3 and LuxOS 4028 firmware), each serving its firmware API on its own loopback
port, and one rate-following `StratumMiner` per ASIC mining on the pool at the emulated hashrate
x `hash_scale`. `FleetDemo.fleet_toml()` is the `[fleet]` table of the generated `poold run`
config (miners' host:port and driver, rack caps, credentials from an env var), so the daemon's
own fleet controller drives the emulators over TCP exactly as it would drive real firmware.
Mid-demo `attach` cuts every rack cap to 60 % through the daemon's admin API (what
`poold fleet cap RACK KW` does) and narrates, from the API, each rack's power against its cap and
the pool-verified hashrate following.

The emulators run on real time (the daemon does), with settle delays of seconds.
"""


from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
from collections.abc import Callable
from typing import Any

from poold.fleet.clock import ScaledClock
from poold.sim.asic import SimAsic
from poold.sim.simsite import MODELS, build_table, random_kinds

PASSWORD_ENV = "POOLD_DEMO_ASIC_PASSWORD"
PASSWORD = "sim-secret"  # the emulators' firmware password (demo only)
MIX = {"braiins": 0.4, "whatsminer": 0.3, "luxos": 0.3}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def fleet_toml(t: dict[str, Any], password_env: str = PASSWORD_ENV) -> str:
    """A `[fleet]` table (poold.sim.simsite.build_table's shape, each miner's `host` set) as
    TOML, with every driver's firmware password read from `password_env`."""
    lines = ["[fleet]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in t.items()
              if k not in ("racks", "miners")]
    for driver in sorted({m["driver"] for m in t["miners"]}):
        lines += ["", f"[fleet.credentials.{driver}]", 'username = "root"',
                  f'password_env = "{password_env}"']
    for section in ("racks", "miners"):
        for row in t[section]:
            lines += ["", f"[[fleet.{section}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"


class FleetDemo:
    """Emulated racks of ASICs with their firmware servers, for `poold demo --fleet`."""

    def __init__(self, table: dict[str, Any], asics: dict[str, SimAsic], servers: list[Any],
                 hash_scale: float) -> None:
        self.table = table
        self.asics = asics
        self.servers = servers
        self.hash_scale = hash_scale
        self.miners: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def start(cls, *, worker_prefix: str, racks: int = 2, per_rack: int = 10,
                    seed: int = 1, hash_scale: float = 2e-11,
                    minimal_firmware: bool = False) -> FleetDemo:
        """Start the emulators; Stratum workers are `worker_prefix` + "." + miner id.
        `minimal_firmware`: the firmware serves only its documented minimum."""
        from poold.sim.firmware_rest import BraiinsRestServer
        from poold.sim.firmware_tcp import server_for

        rng = random.Random(seed)
        clock = ScaledClock(1.0)
        table = build_table(random_kinds(racks, per_rack, rng, MIX), rack_cap_factor=1.05,
                            telemetry_interval_s=3.0, stale_after_s=15.0,
                            optimizer_interval_s=10.0, ramp_kw_per_min=60.0,
                            over_cap_allowed_s=15.0, command_timeout_s=5.0,
                            pool_hashrate_scale=1.0 / hash_scale)
        asics: dict[str, SimAsic] = {}
        servers: list[Any] = []
        for m in table["miners"]:
            base = MODELS[m["driver"]]
            # Settle in seconds, not minutes: a demo, on real time.
            spec = dataclasses.replace(base, alpha=base.alpha + rng.uniform(-0.03, 0.03),
                                       cmd_delay_s=0.5, tau_down_s=1.0, tau_up_s=2.0,
                                       tau_t_s=20.0)
            a = SimAsic(spec, clock, miner_id=m["id"], unit_factor=rng.uniform(0.96, 1.04),
                        password=PASSWORD)
            srv = await (BraiinsRestServer(a, minimal=minimal_firmware).start()
                         if m["driver"] == "braiins"
                         else server_for(a, minimal=minimal_firmware).start())
            servers.append(srv)
            asics[m["id"]] = a
            m["host"] = f"127.0.0.1:{srv.port}"
            m["worker"] = f"{worker_prefix}.{m['id']}"
        table["safe_cap_kw"] = round(table["cap_kw"] * 0.5, 3)
        return cls(table, asics, servers, hash_scale)

    def fleet_toml(self) -> str:
        """The `[fleet]` table for the generated `poold run` config."""
        return fleet_toml(self.table)

    def true_power_w(self, rack: str) -> float:
        """Physical power of a rack, from the emulators (not from the daemon's telemetry)."""
        return sum(a.power_w() for mid, a in self.asics.items() if mid.startswith(rack + "-"))

    def start_miners(self, host: str, port: int, difficulty: float | None) -> None:
        from poold.sim.miner import StratumMiner

        for m in self.table["miners"]:
            a = self.asics[m["id"]]
            sm = StratumMiner(host, port, m["worker"], "x", _hashrate_hs(a), mode="rate",
                              scale=self.hash_scale, name=m["id"],
                              suggest_difficulty=difficulty)
            self.miners.append(sm)
            self.tasks.append(asyncio.get_running_loop().create_task(sm.run()))

    async def close(self) -> None:
        for sm in self.miners:
            sm.stop()
        for t in self.tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, 5.0)
        for s in self.servers:
            await s.stop()


def _hashrate_hs(asic: SimAsic) -> Callable[[], float]:
    return lambda: asic.hashrate_ths() * 1e12


async def attach(ctx: Any) -> None:
    """`ctx` is poold.demo.DemoContext: the running pool and its admin API, `fleet` (this
    process's `FleetDemo`), `fleet_cut_at_s`, `stop`, `say`."""
    import aiohttp

    fleet: FleetDemo | None = getattr(ctx, "fleet", None)
    if fleet is None:
        ctx.say("fleet: no emulated fleet in this demo")
        ctx.fleet_done.set()
        return
    say = ctx.say
    headers = {"Authorization": f"Bearer {ctx.api_token}"}
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    cut_at = float(ctx.fleet_cut_at_s)
    fraction = 0.6
    cut: dict[str, float] = {}
    met: dict[str, float] = {}
    fleet.start_miners(ctx.stratum_host, ctx.stratum_port, ctx.fleet_difficulty)
    say(f"fleet: {len(fleet.asics)} emulated ASICs in {len(fleet.table['racks'])} racks on "
        f"loopback (Braiins OS REST, Whatsminer v3, LuxOS 4028), driven by poold's fleet "
        f"controller; each mines on the pool at its emulated hashrate x {fleet.hash_scale:g}")
    async with aiohttp.ClientSession(ctx.api_url, headers=headers) as http:

        async def racks() -> list[dict[str, Any]]:
            async with http.get("/api/v1/racks") as resp:
                resp.raise_for_status()
                body: dict[str, Any] = await resp.json()
                return list(body["racks"])

        next_status = 0.0
        while not ctx.stop.is_set():
            now = loop.time() - t0
            if not cut and now >= cut_at:
                for r in await racks():
                    kw = round(r["config_cap_w"] * fraction / 1000.0, 3)
                    async with http.put(f"/api/v1/racks/{r['id']}/cap", json={"kw": kw}) as resp:
                        resp.raise_for_status()
                    cut[r["id"]] = kw * 1000.0
                say(f"fleet: operator cuts every rack cap to {fraction:.0%} through the admin "
                    f"API (PUT /api/v1/racks/RACK/cap, as `poold fleet cap RACK KW`): "
                    + ", ".join(f"{k} {v / 1000:.1f} kW" for k, v in cut.items()))
            if now >= next_status:
                rs = await racks()
                for r in rs:
                    if r["id"] in cut and r["power_w"] <= cut[r["id"]] and r["id"] not in met:
                        met[r["id"]] = now - cut_at
                        say(f"fleet: {r['id']} under its cut cap {now - cut_at:.1f} s after the "
                            f"cut (allowed {r['over_cap_allowed_s']:g} s)")
                if cut and set(met) >= set(cut) and not ctx.fleet_done.is_set():
                    say("fleet: every rack is under its cut cap")
                    ctx.fleet_done.set()
                say("fleet: " + "; ".join(
                    f"{r['id']} {r['power_w'] / 1000:.1f}/{r['cap_w'] / 1000:.1f} kW "
                    f"(emulators draw {fleet.true_power_w(r['id']) / 1000:.1f} kW), "
                    f"pool-verified {r['hashrate_hs'] / 1e12:.0f} TH/s, "
                    f"asleep {r['asleep']}/{r['miners']}" for r in rs))
                next_status = now + 5.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ctx.stop.wait(), 1.0)
        rs = await racks()
    asleep = sum(r["asleep"] for r in rs)
    under = all(r["power_w"] <= cut.get(r["id"], r["cap_w"]) for r in rs)
    say(f"fleet summary: cut={'yes' if cut else 'no'} under_cap={'yes' if under else 'no'} "
        f"asleep={asleep} " + " ".join(
            f"{r['id']}={r['power_w'] / 1000:.2f}/{r['cap_w'] / 1000:.2f}kW" for r in rs))
