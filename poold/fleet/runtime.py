"""The fleet controller inside the daemon: built from `[fleet]`, fed by the pool, read by the API.

`FleetRuntime.build(cfg.fleet, metrics)` makes the drivers (per-site credentials, resolved once)
and the `FleetController` on the event loop's clock, with the daemon's Metrics and a
`ShareRateEstimator` that the pool's share path feeds (`share_sink`, for
poold.work.engine.TeeShareSink). `run()` is the controller plus two small bridges: fleet
telemetry to the ledger's energy meter (`ledger.record_power`), and curtailment to the Stratum
sessions (a session whose miner is asleep or turned down on purpose is neither "silent" for the
idle timeout nor retargeted down by vardiff). `stop()` leaves the safe cap, bounded in time.
The API methods (`racks`, `miners`, `budgets`, `set_cap`, `curtail`, `restore`, `grid_signal`)
return JSON-ready values and raise `poold.fleet.errors.FleetRequestError` on bad requests (the
API maps them to HTTP answers). `reconfigure()` is the SIGHUP path: new caps and limits for the
same inventory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from poold.fleet.clock import LoopClock
from poold.fleet.controller import FleetController
from poold.fleet.curtailed_file import CurtailedPublisher, Sessions, mark_curtailed
from poold.fleet.drivers.base import MinerDriver, Telemetry
from poold.fleet.errors import FleetRequestError, UnknownMiner, UnknownRack
from poold.fleet.health import ShareRateEstimator
from poold.fleet.inventory import FleetConfig, MinerSpec
from poold.metrics import Metrics

log = logging.getLogger(__name__)

ENERGY_FLUSH_S = 10.0
SESSION_SWEEP_S = 2.0
DEFAULT_SLEEP_W = 60.0  # per miner, before its capabilities are known


class _Share(Protocol):
    @property
    def worker(self) -> str: ...

    @property
    def difficulty(self) -> float: ...


class PowerLedger(Protocol):
    async def record_power(self, samples: Sequence[Any]) -> None: ...


@dataclass(frozen=True, slots=True)
class _WallReading:
    """A telemetry reading on the wall clock (drivers stamp theirs with time.monotonic())."""

    time: float
    power_w: float | None


class EstimatorSink:
    """A `ShareSink` handing each accepted share to the controller's share-rate estimator."""

    __slots__ = ("clock", "estimator", "scale")

    def __init__(self, estimator: ShareRateEstimator, clock: LoopClock,
                 scale: float = 1.0) -> None:
        self.estimator = estimator
        self.clock = clock
        self.scale = scale  # fleet.pool_hashrate_scale (simulations only)

    def record_share(self, share: _Share) -> None:
        self.estimator.record(share.worker, share.difficulty * self.scale, self.clock.now())


class FleetRuntime:
    def __init__(self, cfg: FleetConfig, drivers: Mapping[str, MinerDriver], *,
                 metrics: Metrics, clock: LoopClock | None = None) -> None:
        self.clock = clock or LoopClock()
        self.estimator = ShareRateEstimator(window_s=600.0)
        self.share_sink = EstimatorSink(self.estimator, self.clock, cfg.pool_hashrate_scale)
        self.controller = FleetController(cfg, drivers, clock=self.clock, metrics=metrics,
                                          shares=self.estimator,
                                          on_telemetry=self._on_telemetry)
        # Known label values exported from the start (0), so rate() has a series to work on.
        for kind in sorted({m.driver.kind for m in self.controller.miners.values()}):
            metrics.controller_commands.labels(kind, "ok")
            metrics.telemetry_reads.labels(kind, "ok")
            metrics.controller_command_seconds.labels(kind)
        self._samples: list[Any] = []
        self._curtailed_racks: set[str] = set()
        self.stopped = False

    @classmethod
    def build(cls, cfg: FleetConfig, metrics: Metrics,
              env: Mapping[str, str] | None = None) -> FleetRuntime:
        """Drivers from the inventory (raises ConfigError on missing credentials)."""
        from poold.fleet.drivers import build_drivers

        return cls(cfg, build_drivers(cfg, env), metrics=metrics)

    @property
    def cfg(self) -> FleetConfig:
        return self.controller.cfg

    # -- bridges ---------------------------------------------------------------------------------

    def _on_telemetry(self, spec: MinerSpec, tel: Telemetry) -> None:
        if tel.power_w is None:
            return
        from poold.ledger.energy import sample_from

        wall = time.time() - (time.monotonic() - tel.time)
        sample = sample_from(spec.worker or spec.id, spec.rack, _WallReading(wall, tel.power_w))
        if sample is not None:
            self._samples.append(sample)

    async def _energy_loop(self, ledger: PowerLedger) -> None:
        while True:
            await asyncio.sleep(ENERGY_FLUSH_S)
            await self.push_power(ledger)

    async def push_power(self, ledger: PowerLedger) -> None:
        """Hand the power samples gathered since the last push to the ledger's energy meter
        (every ENERGY_FLUSH_S, and before an energy report so it reaches up to now)."""
        batch, self._samples = self._samples, []
        if batch:
            try:
                await ledger.record_power(batch)
            except ValueError as exc:
                log.warning("fleet: %d power samples refused by the ledger: %s",
                            len(batch), exc)

    def mark_sessions(self, server: Sessions, now: float) -> int:
        """Flag the sessions of curtailed miners (vardiff keeps their difficulty) and count
        them as active (no idle drop while asleep on purpose). Returns how many are flagged."""
        return mark_curtailed(server, self.controller.curtailed_workers(), now)

    async def _session_loop(self, server: Sessions, clock: Callable[[], float],
                            publish: CurtailedPublisher | None) -> None:
        last = 0
        while True:
            await asyncio.sleep(SESSION_SWEEP_S)
            if publish is not None:  # for the other --processes workers' sessions
                await publish.publish(self.controller.curtailed_workers())
            n = self.mark_sessions(server, clock())
            if n != last:
                log.info("fleet: %d Stratum sessions of miners curtailed on purpose", n)
                last = n

    async def run(self, *, ledger: PowerLedger | None = None, server: Sessions | None = None,
                  server_clock: Callable[[], float] = time.time,
                  curtailed_file: Path | None = None) -> None:
        """The controller (until `stop()`) and the energy and session bridges (and, with
        `curtailed_file`, the curtailed set published for the other worker processes) in this
        task's TaskGroup, until cancelled; on the way out, cancelled or failed, the safe cap
        (`stop()`, which the daemon has usually done already while the miners drained)."""
        publish = CurtailedPublisher(curtailed_file) if curtailed_file is not None else None
        try:
            async with asyncio.TaskGroup() as tg:
                if ledger is not None:
                    tg.create_task(self._energy_loop(ledger), name="fleet-energy")
                if server is not None:
                    tg.create_task(self._session_loop(server, server_clock, publish),
                                   name="fleet-sessions")
                await self.controller.run()  # returns once stop() asked it to
        finally:
            await self.stop()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Safe cap on every miner (the commands sent, bounded by `timeout_s`); the controller's
        loop in `run()` ends at its next tick. Idempotent: `run()` calls it on its way out."""
        if self.stopped:
            return
        self.stopped = True
        report = None
        try:
            report = await asyncio.wait_for(
                self.controller.stop(settle_timeout_s=timeout_s * 0.8), timeout_s)
        except TimeoutError:
            log.error("fleet: safe-cap commands not all acknowledged within %.1f s", timeout_s)
        if report is None:
            return
        if report.failed or report.unanswered or report.site_w > report.safe_w + 1e-6:
            log.warning("fleet controller stopped, NOT shown at the safe cap: %s",
                        report.describe())
        else:
            log.info("fleet controller stopped: %s", report.describe())

    # -- SIGHUP ----------------------------------------------------------------------------------

    def reconfigure(self, new: FleetConfig) -> tuple[list[str], list[str]]:
        """Apply the caps and limits of `new`; (applied, ignored) key descriptions."""
        old = self.cfg
        ignored: list[str] = []
        if [(m.id, m.rack, m.host, m.port, m.driver, m.worker) for m in old.miners] != [
                (m.id, m.rack, m.host, m.port, m.driver, m.worker) for m in new.miners]:
            ignored.append("fleet.miners")
        if [(r.id, r.container) for r in old.racks] != [(r.id, r.container) for r in new.racks]:
            ignored.append("fleet.racks (ids)")
        if [c.id for c in old.containers] != [c.id for c in new.containers] \
                or old.site != new.site:
            ignored.append("fleet.containers / fleet.site")
        if old.credentials != new.credentials:
            ignored.append("fleet.credentials")
        if ignored:
            return [], ignored  # another inventory: caps of it would not match the miners
        applied = [f"fleet.{k}: {getattr(old, k)!r} -> {getattr(new, k)!r}"
                   for k in ("cap_kw", "safe_cap_kw", "over_cap_allowed_s", "dry_run",
                             "guard_interval_s", "optimizer_interval_s", "telemetry_interval_s",
                             "stale_after_s", "ramp_kw_per_min", "daily_cycle_budget",
                             "target_fraction", "command_timeout_s", "temp_limit_c",
                             "grid_heartbeat_timeout_s", "grid_response_s", "schedule")
                   if getattr(old, k) != getattr(new, k)]
        for a, b in zip(old.containers, new.containers, strict=True):
            if a != b:
                applied.append(f"fleet.containers[{a.id}]: cap {a.cap_kw:g} -> {b.cap_kw:g} kW")
        for ra, rb in zip(old.racks, new.racks, strict=True):
            if ra != rb:
                applied.append(f"fleet.racks[{ra.id}]: cap {ra.cap_kw:g} -> {rb.cap_kw:g} kW, "
                               f"over-cap allowance {rb.over_cap_allowed_s:g} s")
        self.controller.reconfigure(new)
        return applied, []

    def unverified(self) -> list[str]:
        """Nodes that cannot be shown under their cap (for /readyz)."""
        return self.controller.unverified()

    # -- the API ---------------------------------------------------------------------------------

    def _rack_or_404(self, rack: str) -> None:
        if rack not in {r.id for r in self.cfg.racks}:
            raise UnknownRack("unknown rack", rack)

    def _floor_w(self, rack: str) -> float:
        """What the rack draws with every miner asleep (the lowest cap it can meet)."""
        ctl = self.controller
        return sum((m.caps.sleep_w if m.caps is not None else DEFAULT_SLEEP_W)
                   for m in ctl.miners.values() if m.spec.rack == rack)

    def racks(self) -> list[dict[str, Any]]:
        ctl = self.controller
        now = self.clock.now()
        caps = ctl.budgets.caps()
        power = ctl.proj.node_metered(now)
        status = {n.node: n for n in ctl.status().nodes}
        out = []
        for r in self.cfg.racks:
            ms = [m for m in ctl.miners.values() if m.spec.rack == r.id]
            over = status[r.id].over_s if r.id in status else 0.0
            state = ("curtailed" if r.id in self._curtailed_racks
                     else "over_cap" if power[r.id] > caps[r.id].watts + 1e-6 else "ok")
            out.append({
                "id": r.id, "container": r.container, "power_w": power[r.id],
                "cap_w": caps[r.id].watts, "cap_source": caps[r.id].source.value,
                "config_cap_w": r.cap_kw * 1000.0,
                "hashrate_hs": ctl.rack_pool_hashrate_hs(r.id, now),
                "state": state, "over_cap_s": over,
                "over_cap_allowed_s": r.over_cap_allowed_s,
                "commanded_w": sum(m.commanded_w if m.commanded_w is not None
                                   else ctl.proj.metered_w(m, now) for m in ms),
                "blind": sum(m.health.stale(now, self.cfg.stale_after_s) for m in ms),
                "miners": len(ms),
                "asleep": sum(bool(m.commanded and m.commanded.sleep) for m in ms),
            })
        return out

    def miners(self, rack: str | None) -> list[dict[str, Any]]:
        if rack is not None:
            self._rack_or_404(rack)
        ctl = self.controller
        now = self.clock.now()
        curtailed = ctl.curtailed_workers()
        out = []
        for m in ctl.miners.values():
            if rack is not None and m.spec.rack != rack:
                continue
            h = m.health
            t = h.telemetry
            worker = m.spec.worker
            out.append({
                "id": m.spec.id, "rack": m.spec.rack, "host": m.spec.host,
                "driver": m.spec.driver, "model": m.spec.model, "worker": worker,
                "nameplate_w": m.spec.nameplate_w,
                "telemetry": None if t is None else {
                    "power_w": t.power_w, "hashrate_ths": t.hashrate_ths,
                    "target_w": t.target_w, "level": t.level, "sleeping": t.sleeping,
                    "temps_c": list(t.temps_c), "fans_rpm": list(t.fans_rpm),
                    "boards_alive": t.boards_alive, "uptime_s": t.uptime_s,
                    "errors": list(t.errors), "firmware": t.firmware, "model": t.model,
                    "pool_connected": t.pool_connected,
                },
                "telemetry_age_s": None if t is None else max(0.0, h.age(now)),
                "stale": h.stale(now, self.cfg.stale_after_s),
                "faulty": h.faulty, "fault_reason": h.fault_reason,
                "not_following": h.not_following,
                "commanded_w": m.commanded_w,
                "asleep": bool(m.commanded and m.commanded.sleep),
                "curtailed": bool(worker) and worker in curtailed,
                "pool_hashrate_hs": (self.estimator.hashrate_hs(worker, now)
                                     if worker else None),
            })
        return out

    def budgets(self) -> dict[str, Any]:
        ctl = self.controller
        b = ctl.budgets
        now = self.clock.now()
        caps = b.caps()
        overrides = b.overrides()
        nodes = []
        for node, cap in caps.items():
            api = overrides.get(node)
            nodes.append({
                "node": node, "cap_w": cap.watts, "source": cap.source.value,
                "config_w": b.config_w(node),
                "api_w": None if api is None else api[0],
                "api_until_s": None if api is None or api[1] is None else api[1] - now,
            })
        hb = self.cfg.grid_heartbeat_timeout_s
        return {
            "site": self.cfg.site,
            "safe_cap_w": self.cfg.safe_cap_kw * 1000.0,
            "nodes": nodes,
            "schedule": [{"node": e.node, "start_min": e.start_min, "end_min": e.end_min,
                          "cap_w": e.cap_kw * 1000.0, "days": list(e.days)}
                         for e in self.cfg.schedule],
            "grid": {"cap_w": b.grid_w, "age_s": b.grid_signal_age(),
                     "heartbeat_timeout_s": hb, "lost": b.grid_lost()},
            "dry_run": self.cfg.dry_run,
        }

    def _node(self, scope: str) -> str:
        if scope == "site":
            return self.cfg.site
        if scope not in self.controller.budgets.nodes:
            raise UnknownRack("unknown rack", scope)
        return scope

    async def set_cap(self, scope: str, kw: float) -> dict[str, Any]:
        node = self._node(scope)
        b = self.controller.budgets
        limit_kw = b.config_w(node) / 1000.0
        if kw > limit_kw + 1e-9:
            raise FleetRequestError(f"cap for {node} above its configured cap (the breaker)",
                           {"max_kw": limit_kw})
        racks = [node] if node in {r.id for r in self.cfg.racks} else (
            [r.id for r in self.cfg.racks] if node == self.cfg.site
            else [r.id for r in self.cfg.racks if r.container == node])
        floor_kw = sum(self._floor_w(r) for r in racks) / 1000.0
        if kw < floor_kw - 1e-9:
            raise FleetRequestError(f"cap for {node} below what it draws with every miner asleep",
                           {"min_kw": floor_kw})
        try:
            self.controller.set_cap(node, kw)
        except ValueError as exc:
            raise FleetRequestError(str(exc), scope) from None
        self._curtailed_racks.discard(node)
        log.warning("API: cap of %s set to %.3f kW", node, kw)
        return {"node": node, "cap_kw": kw,
                "in_force_kw": self.controller.budgets.caps()[node].watts / 1000.0}

    async def curtail(self, rack: str) -> dict[str, Any]:
        """Sleep the whole rack: its cap goes to what it draws asleep."""
        self._rack_or_404(rack)
        kw = self._floor_w(rack) / 1000.0
        self.controller.set_cap(rack, kw)
        self._curtailed_racks.add(rack)
        log.warning("API: rack %s curtailed (cap %.3f kW)", rack, kw)
        return {"rack": rack, "curtailed": True, "cap_kw": kw}

    async def restore(self, rack: str) -> dict[str, Any]:
        """Clear the rack's API cap: back to config/schedule, through the restore ramp."""
        self._rack_or_404(rack)
        self.controller.set_cap(rack, None)
        self._curtailed_racks.discard(rack)
        log.warning("API: rack %s restored", rack)
        return {"rack": rack, "curtailed": False,
                "cap_kw": self.controller.budgets.caps()[rack].watts / 1000.0}

    async def clear_miner(self, miner: str) -> dict[str, Any]:
        """Clear a miner's faulty and not-following marks by hand."""
        m = self.controller.miners.get(miner)
        if m is None:
            raise UnknownMiner("unknown miner", miner)
        was = {"faulty": m.health.faulty, "fault_reason": m.health.fault_reason,
               "not_following": m.health.not_following}
        self.controller.clear_faulty(miner)
        log.warning("API: miner %s cleared (was %s)", miner, was)
        return {"miner": miner, "faulty": False, "not_following": False, "was": was}

    async def grid_signal(self, cap_kw: float | None, ttl_s: float | None) -> dict[str, Any]:
        try:
            self.controller.budgets.grid_signal(cap_kw, ttl_s=ttl_s)
        except ValueError as exc:
            raise FleetRequestError(str(exc)) from None
        site = self.cfg.site
        return {"site": site, "grid_cap_kw": cap_kw, "ttl_s": ttl_s,
                "in_force_kw": self.controller.budgets.caps()[site].watts / 1000.0}
