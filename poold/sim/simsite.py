"""A simulated site: emulated ASICs, their firmware servers, drivers and a controller, wired.

Used by the demo (`run_sim_site`), the integration tests and the benchmark. `build_site`
creates the inventory table (the same `[fleet]` TOML shape operators write), one `SimAsic` per
miner with a firmware from the mix, and either in-process `SimDriver`s (`tcp=False`, for the
virtual-time benchmark) or real servers on loopback ports with the real drivers (`tcp=True`).

Entry points for poold.demo:
- ``await run_sim_site(racks=2, per_rack=10, pool=("127.0.0.1", 3333), ...)`` runs a site
  under caps, optionally mining on a Stratum pool with one `StratumMiner` per ASIC whose rate
  follows the emulated hashrate (× `hash_scale`), cuts every rack cap to `cut_fraction` at
  `cut_at_s` (simulated seconds) and reports `FleetStatus` snapshots through `on_status`.
- ``async with SimSite.started(...) as site:`` for callers that want to drive it themselves.
"""

# ruff: noqa: RUF002  (math notation in docstrings is intended)

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from poold.fleet.clock import Clock, ScaledClock
from poold.fleet.controller import FleetController
from poold.fleet.drivers.base import MinerDriver, Secret
from poold.fleet.drivers.braiins import BraiinsDriver
from poold.fleet.drivers.cgminer import CgminerDriver
from poold.fleet.drivers.luxos import LuxosDriver
from poold.fleet.drivers.whatsminer import WhatsminerDriver
from poold.fleet.health import ShareRateEstimator
from poold.fleet.inventory import FleetConfig, parse_fleet
from poold.fleet.policy import Actuator
from poold.fleet.state import FleetStatus
from poold.metrics import Metrics
from poold.sim.asic import AsicSpec, SimAsic, default_presets
from poold.sim.driver import SimDriver

log = logging.getLogger(__name__)

#: Model templates (nameplates: docs/FLEET.md §3).
MODELS: dict[str, AsicSpec] = {
    "braiins": AsicSpec(model="S19j Pro", p_nom_w=3050, h_nom_ths=100, min_w=1040, max_w=3050,
                        firmware="braiins", actuator=Actuator.WATTS),
    "whatsminer": AsicSpec(model="M60S", p_nom_w=3400, h_nom_ths=170, min_w=1200, max_w=3400,
                           firmware="whatsminer", actuator=Actuator.WATTS, sleep_w=60),
    "luxos": AsicSpec(model="S19 XP", p_nom_w=3010, h_nom_ths=140, min_w=1080, max_w=3010,
                      firmware="luxos", actuator=Actuator.PRESETS,
                      presets=default_presets(3010)),
    "cgminer": AsicSpec(model="S19", p_nom_w=3250, h_nom_ths=95, min_w=3250, max_w=3250,
                        firmware="cgminer", actuator=Actuator.ONOFF, presets=(3250.0,)),
}
DEFAULT_MIX: Mapping[str, float] = {"braiins": 0.45, "whatsminer": 0.25, "luxos": 0.25,
                                    "cgminer": 0.05}


class _Server(Protocol):
    @property
    def port(self) -> int: ...

    async def stop(self) -> None: ...


def sample_asic(kind: str, clock: Clock, miner_id: str, rng: random.Random,
                speed: float = 1.0) -> SimAsic:
    """One ASIC of a kind with unit-to-unit spread (α ±0.03, chips ±4 %, thermal ±1 °C);
    its firmware dynamics run `speed`× faster than real time (1 = the firmware's own)."""
    base = MODELS[kind]
    spec = AsicSpec(**{
        **{f: getattr(base, f) for f in base.__dataclass_fields__},
        "alpha": base.alpha + rng.uniform(-0.03, 0.03),
        "ambient_c": base.ambient_c + rng.uniform(-1.0, 1.0),
        "speed": speed,
    })
    return SimAsic(spec, clock, miner_id=miner_id, unit_factor=rng.uniform(0.96, 1.04))


def build_table(kinds: Sequence[Sequence[str]], *, rack_cap_factor: float = 1.0,
                over_cap_allowed_s: float = 30.0, **options: Any) -> dict[str, Any]:
    """A `[fleet]` table: rack i holds miners of kinds[i]; rack cap = factor × Σ nameplate."""
    racks: list[dict[str, Any]] = []
    miners: list[dict[str, Any]] = []
    for i, rack in enumerate(kinds):
        rid = f"rack{i:03d}"
        total = 0.0
        for j, kind in enumerate(rack):
            s = MODELS[kind]
            total += s.p_nom_w
            miners.append({"id": f"{rid}-m{j:03d}", "rack": rid, "position": j, "host": "sim",
                           "driver": kind, "model": s.model, "nameplate_w": s.p_nom_w,
                           "nameplate_ths": s.h_nom_ths, "min_w": s.min_w, "max_w": s.max_w,
                           "worker": f"sim.{rid}-m{j:03d}"})
        racks.append({"id": rid, "cap_kw": round(total * rack_cap_factor / 1000.0, 3),
                      "over_cap_allowed_s": over_cap_allowed_s})
    site_cap = round(sum(r["cap_kw"] for r in racks), 3)
    return {"site": "sim-site", "cap_kw": site_cap, "racks": racks, "miners": miners,
            **options}


def random_kinds(racks: int, per_rack: int, rng: random.Random,
                 mix: Mapping[str, float] = DEFAULT_MIX) -> list[list[str]]:
    names, weights = list(mix), list(mix.values())
    return [rng.choices(names, weights, k=per_rack) for _ in range(racks)]


@dataclass
class SimSite:
    cfg: FleetConfig
    clock: Clock
    asics: dict[str, SimAsic]
    drivers: dict[str, MinerDriver]
    controller: FleetController
    servers: list[_Server] = field(default_factory=list)

    def true_power_w(self, node: str | None = None) -> float:
        """Physical power of a rack (or the site) from the emulators, not from telemetry."""
        return sum(a.power_w() for mid, a in self.asics.items()
                   if node is None or self.cfg_rack(mid) == node)

    def cfg_rack(self, miner_id: str) -> str:
        return self.controller.miners[miner_id].spec.rack

    def true_hashrate_ths(self) -> float:
        return sum(a.hashrate_ths() for a in self.asics.values())

    @classmethod
    async def create(cls, table: Mapping[str, Any], clock: Clock, *, tcp: bool,
                     rng: random.Random | None = None, metrics: Metrics | None = None,
                     password: str = "sim-secret", driver_timeout_s: float = 5.0,
                     minimal_firmware: bool = False, dynamics_speed: float = 1.0,
                     **controller_kw: Any) -> SimSite:
        """`minimal_firmware`: the emulated firmware serves only its documented minimum
        (see poold.sim.firmware_rest / firmware_tcp), as real firmware may.
        `dynamics_speed`: the firmware's dynamics run this many times faster (1 = real)."""
        from poold.sim.firmware_rest import BraiinsRestServer
        from poold.sim.firmware_tcp import server_for

        rng = rng or random.Random(0)
        cfg = parse_fleet(table, "<sim>")
        asics: dict[str, SimAsic] = {}
        drivers: dict[str, MinerDriver] = {}
        servers: list[_Server] = []
        for m in cfg.miners:
            a = sample_asic(m.driver, clock, m.id, rng, dynamics_speed)
            a.password = password
            asics[m.id] = a
            if not tcp:
                drivers[m.id] = SimDriver(a, latency_s=rng.uniform(0.1, 0.4),
                                          timeout_s=driver_timeout_s, kind=m.driver)
                continue
            srv: _Server
            if m.driver == "braiins":
                srv = await BraiinsRestServer(a, minimal=minimal_firmware).start()
                drivers[m.id] = BraiinsDriver("127.0.0.1", srv.port, username=a.username,
                                              password=Secret(password),
                                              timeout_s=driver_timeout_s, max_w=m.max_w,
                                              settle_s=a.spec.settle_s, sleep_w=a.spec.sleep_w)
            else:
                srv = await server_for(a, minimal=minimal_firmware).start()
                if m.driver == "luxos":
                    drivers[m.id] = LuxosDriver("127.0.0.1", srv.port, timeout_s=driver_timeout_s,
                                                max_w=m.max_w, settle_s=a.spec.settle_s,
                                                sleep_w=a.spec.sleep_w)
                elif m.driver == "whatsminer":
                    drivers[m.id] = WhatsminerDriver(
                        "127.0.0.1", srv.port, password=Secret(password), min_w=a.spec.min_w,
                        max_w=min(a.spec.max_w, m.max_w), timeout_s=driver_timeout_s,
                        settle_s=a.spec.settle_s, sleep_w=a.spec.sleep_w, wall_clock=clock.wall)
                else:
                    drivers[m.id] = CgminerDriver("127.0.0.1", srv.port,
                                                  nameplate_w=m.nameplate_w,
                                                  timeout_s=driver_timeout_s)
            servers.append(srv)
        controller = FleetController(cfg, drivers, clock=clock, metrics=metrics, **controller_kw)
        return cls(cfg, clock, asics, drivers, controller, servers)

    async def close(self) -> None:
        for d in self.drivers.values():  # first: a driver may give settings back (LuxOS ATM)
            await d.close()
        for s in self.servers:
            await s.stop()

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, table: Mapping[str, Any], clock: Clock, *, tcp: bool = True,
                      **kw: Any) -> AsyncIterator[SimSite]:
        """Create, run the controller in the background, and on exit stop at the safe cap."""
        site = await cls.create(table, clock, tcp=tcp, **kw)
        task = asyncio.get_running_loop().create_task(site.controller.run())
        try:
            yield site
        finally:
            await site.controller.stop(settle_timeout_s=10.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await site.close()


def _hashrate_hs(asic: SimAsic) -> Callable[[], float]:
    return lambda: asic.hashrate_ths() * 1e12


async def run_sim_site(
    racks: int = 2,
    per_rack: int = 10,
    *,
    pool: tuple[str, int] | None = None,
    username_for: Callable[[str], str] | None = None,
    speed: float = 10.0,
    duration_s: float = 240.0,
    cut_at_s: float = 90.0,
    cut_fraction: float = 0.6,
    hash_scale: float = 1e-10,
    suggest_difficulty: float | None = None,
    status_every_s: float = 15.0,
    on_status: Callable[[FleetStatus], None] | None = None,
    say: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    metrics: Metrics | None = None,
    seed: int = 1,
) -> FleetStatus:
    """The demo site: `racks` × `per_rack` emulated miners over real TCP under rack caps.

    Simulated time runs `speed`× real time; `duration_s` and `cut_at_s` are simulated
    seconds. With `pool=(host, port)` every ASIC also mines on that Stratum pool through a
    `StratumMiner` (username `username_for(miner_id)`, default its worker name) whose hash
    rate is the emulated TH/s × `hash_scale` (100 TH/s → 10 kH/s of CPU hashing by default),
    so the pool sees the share rate fall when the controller turns watts down. At `cut_at_s`
    every rack cap is cut to `cut_fraction`. Narration goes to `say`; `stop` ends it early.
    Returns the final status.
    """
    rng = random.Random(seed)
    clock = ScaledClock(speed)
    tell = say or (lambda text: log.info("%s", text))
    mix = {"braiins": 0.4, "whatsminer": 0.3, "luxos": 0.3}
    # The allowance outlasts a watt target's settle time on real firmware (a Braiins power
    # target ≈ 30 s, then still ≈ 5 % of its step away), and the plan aims 5 % under the cap,
    # so the cut is met by turning watts down, not by the guard's sleep.
    table = build_table(random_kinds(racks, per_rack, rng, mix), rack_cap_factor=1.05,
                        telemetry_interval_s=5.0, stale_after_s=20.0, optimizer_interval_s=30.0,
                        ramp_kw_per_min=60.0, over_cap_allowed_s=45.0, target_fraction=0.95)
    shares = ShareRateEstimator(window_s=600.0) if pool is not None else None
    miners: list[Any] = []
    tasks: list[asyncio.Task[None]] = []
    async with SimSite.started(table, clock, tcp=True, rng=rng, metrics=metrics,
                               shares=shares) as site:
        ctl = site.controller
        tell(f"fleet: {len(site.asics)} emulated ASICs in {racks} racks on loopback "
             f"(Braiins OS REST, Whatsminer v3, LuxOS 4028), time x{speed:g}")
        if pool is not None:
            from poold.sim.miner import MinerEvent, StratumMiner

            def on_event(ev: MinerEvent) -> None:
                if ev.kind == "accepted" and shares is not None:
                    shares.record(ev.miner, ev.difficulty, clock.now())

            for mid, a in site.asics.items():
                worker = ctl.miners[mid].spec.worker or mid
                user = username_for(mid) if username_for is not None else worker
                sm = StratumMiner(pool[0], pool[1], user, "x", _hashrate_hs(a), mode="rate",
                                  scale=hash_scale, name=worker, on_event=on_event,
                                  suggest_difficulty=suggest_difficulty)
                miners.append(sm)
                tasks.append(asyncio.get_running_loop().create_task(sm.run()))
        cut_done = False
        next_status = 0.0
        try:
            while clock.now() < duration_s and not (stop is not None and stop.is_set()):
                if not cut_done and clock.now() >= cut_at_s:
                    for r in site.cfg.racks:
                        ctl.set_cap(r.id, r.cap_kw * cut_fraction)
                    tell(f"fleet: every rack cap cut to {cut_fraction:.0%} "
                         f"(allowed {site.cfg.racks[0].over_cap_allowed_s:g} s over)")
                    cut_done = True
                if clock.now() >= next_status:
                    st = ctl.status()
                    if on_status is not None:
                        on_status(st)
                    tell(_describe(site, st))
                    next_status = clock.now() + status_every_s
                await clock.sleep(1.0)
            final = ctl.status()
            tell(_describe(site, final))
        finally:
            for sm in miners:
                sm.stop()
            for t in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, 5.0)
    return final


def _describe(site: SimSite, st: FleetStatus) -> str:
    racks = [n for n in st.nodes if n.node in {r.id for r in site.cfg.racks}]
    parts = [f"{n.node} {site.true_power_w(n.node) / 1000:.1f}/{n.cap_w / 1000:.1f} kW "
             f"{n.hashrate_ths:.0f} TH/s" for n in racks]
    pool = ""
    if site.controller.shares is not None:
        now = site.clock.now()
        hs = sum(site.controller.rack_pool_hashrate_hs(n.node, now) for n in racks)
        pool = f"; pool-verified {hs / 1e12:.0f} TH/s"
    return (f"fleet t={st.time:.0f}s: " + ", ".join(parts)
            + f"; asleep {st.asleep}, commands {st.commands_sent}{pool}")
