"""The fleet controller: keep every rack, container and the site under its cap.

`FleetController` is the facade the daemon and the API use; the work is done by four parts
on one injected `Clock` (real in production, virtual in tests and the benchmark):
- poold.fleet.projection: what each miner draws and will draw (blind → worst case);
- poold.fleet.planner: each rack's budget and each miner's planned setting;
- poold.fleet.dispatcher: telemetry polls, commands, read-back, retries;
- poold.fleet.guard: the ≈1 s tick that re-plans what is due, reconciles, and sheds when a
  node is still over its cap.
Work per tick is bounded (`optimize_budget_s`, `max_starts_per_tick`), so a cycle stays short
at any fleet size; what does not fit follows on the next tick.

Wiring (poold.fleet.runtime.FleetRuntime, run by poold.daemon): ``FleetController(cfg.fleet,
build_drivers(cfg.fleet), clock=LoopClock(), metrics=metrics, shares=estimator)``; ``await run()``
in the runtime's TaskGroup, ``await stop()`` at shutdown (leaves the safe cap, and awaits the
command and poll tasks it cancels: none outlives the controller); the share path calls
``estimator.record(worker, difficulty, clock.now())``; vardiff / "worker silent" ask
``is_curtailed(worker)``; the API uses ``set_cap``, ``budgets.grid_signal``, ``status``,
``action``, ``clear_faulty``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from poold.fleet.budgets import Budgets
from poold.fleet.clock import Clock
from poold.fleet.dispatcher import Dispatcher
from poold.fleet.drivers.base import DriverError, MinerDriver, Secret, Telemetry, UnsupportedError
from poold.fleet.guard import Guard
from poold.fleet.health import ActionLimiter, ShareRateEstimator
from poold.fleet.inventory import FleetConfig, MinerSpec
from poold.fleet.model import CurveLearner
from poold.fleet.planner import TIMING_SAMPLES, Planner
from poold.fleet.projection import Projection, Topology
from poold.fleet.state import FleetStatus, MinerState, NodeStatus
from poold.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StopReport:
    """What `stop()` did: safe-cap commands started, acknowledged, failed, unanswered at the
    deadline, and the site's projected power against its safe cap afterwards."""

    commands: int
    ok: int
    failed: int
    unanswered: int
    site_w: float
    safe_w: float

    def describe(self) -> str:
        where = (f"site projected {self.site_w / 1000:.1f} kW, safe cap "
                 f"{self.safe_w / 1000:.1f} kW")
        if self.commands == 0:
            return f"no command needed ({where})"
        return (f"{self.commands} safe-cap commands sent: {self.ok} acknowledged, "
                f"{self.failed} failed, {self.unanswered} unanswered ({where})")


class FleetController:
    """Owns the control loops for one site. Drive it with `run()` (until `stop()`), or tick it
    by hand with `guard_tick()` / `optimize()` / `poll_due()` in tests."""

    def __init__(
        self,
        cfg: FleetConfig,
        drivers: Mapping[str, MinerDriver],
        *,
        clock: Clock,
        budgets: Budgets | None = None,
        metrics: Metrics | None = None,
        shares: ShareRateEstimator | None = None,
        max_concurrency: int = 1000,
        rng: random.Random | None = None,
        ambient_c: Callable[[], float | None] | None = None,
        on_telemetry: Callable[[MinerSpec, Telemetry], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.budgets = budgets or Budgets(cfg, clock)
        self.metrics = metrics if metrics is not None else Metrics()
        self.shares = shares
        rng = rng or random.Random(0)
        self.limiter = ActionLimiter()
        self.miners: dict[str, MinerState] = {}
        for spec in cfg.miners:
            if spec.id not in drivers:
                raise ValueError(f"no driver for miner {spec.id}")
            self.miners[spec.id] = MinerState(
                spec, drivers[spec.id], CurveLearner(spec.nameplate_w, spec.nameplate_ths),
                next_poll=rng.uniform(0.0, cfg.telemetry_interval_s))
        self.topo = Topology(cfg, self.miners)
        self.proj = Projection(cfg, self.topo)
        self.planner = Planner(cfg, clock, self.budgets, self.proj, self.miners)
        self.dispatcher = Dispatcher(
            cfg, clock, self.miners, self.planner, self.proj, self.metrics, shares=shares,
            rng=rng, max_concurrency=max_concurrency, ambient_c=ambient_c or (lambda: None),
            on_telemetry=on_telemetry)
        self.guard = Guard(cfg, clock, self.budgets, self.proj, self.planner, self.dispatcher,
                           self.metrics, shares)
        self._stopping = asyncio.Event()
        #: Set by a cap change (grid signal, API): the guard ticks at once instead of at the
        #: end of its interval, so a grid signal's fast step does not wait for it.
        self._wake = asyncio.Event()
        self.budgets.on_change = self._wake.set
        #: Controller CPU per guard cycle, and the cycles' process_time (start, end) spans;
        #: bounded (the most recent TIMING_SAMPLES).
        self.cycle_cpu_s: deque[float] = deque(maxlen=TIMING_SAMPLES)
        self.cycle_spans: deque[tuple[float, float]] = deque(maxlen=TIMING_SAMPLES)

    # -- the parts, by their old names ----------------------------------------------------------

    @property
    def commands_sent(self) -> int:
        return self.dispatcher.commands_sent

    @property
    def optimize_cpu_s(self) -> deque[float]:
        return self.planner.optimize_cpu_s

    @property
    def over_max_s(self) -> dict[str, float]:
        return self.guard.over_max_s

    def projected_w(self, m: MinerState, now: float) -> float:
        return self.proj.miner_w(m, now)

    def node_power(self, now: float) -> dict[str, float]:
        return self.proj.node_power(now)

    def optimize(self, *, budget_s: float | None = None) -> int:
        return self.planner.optimize(budget_s=budget_s, projection=self.guard.last_projection)

    def reconcile(self, now: float) -> int:
        return self.dispatcher.reconcile(now, self.guard.last_projection)

    def poll_due(self, now: float) -> int:
        return self.dispatcher.poll_due(now)

    def guard_tick(self) -> None:
        self.guard.tick()

    def rack_pool_hashrate_hs(self, rack: str, now: float) -> float:
        return self.guard.rack_pool_hashrate_hs(rack, now)

    def unverified(self) -> list[str]:
        """Nodes (site, containers, racks) that cannot be shown under their cap: their meters,
        blind miners at worst case, are over it past their allowance (/readyz names them)."""
        return self.guard.unverified(self.clock.now())

    # -- lifecycle and the API surface ----------------------------------------------------------

    async def start(self) -> None:
        """Read every miner once (capabilities + telemetry) and adopt its present state."""
        await asyncio.gather(*(self.dispatcher.poll(m) for m in self.miners.values()))
        self.dispatcher.reset_poll_phases(self.clock.now())

    async def run(self) -> None:
        """Guard, telemetry and optimizer until `stop()`; then hold the safe cap."""
        await self.start()
        while not self._stopping.is_set():
            cpu0 = time.process_time()
            self.poll_due(self.clock.now())
            self.guard_tick()
            cpu1 = time.process_time()
            self.cycle_cpu_s.append(cpu1 - cpu0)
            self.cycle_spans.append((cpu0, cpu1))
            await self._until_next_tick()

    async def _until_next_tick(self) -> None:
        """The guard interval, cut short by a cap change (`_wake`) and ended just after the
        grid signal's heartbeat or ttl runs out (its loss is met at once, like a signal)."""
        wait = self.cfg.guard_interval_s
        lost_in = self.budgets.grid_lost_in()
        if lost_in is not None and lost_in < wait:
            wait = lost_in + 1e-3  # grid_lost() holds once the age is past the limit
        if self._wake.is_set():
            self._wake.clear()
            return
        sleep = asyncio.ensure_future(self.clock.sleep(wait))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait((sleep, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sleep, woken):
                t.cancel()
            await asyncio.gather(sleep, woken, return_exceptions=True)
        self._wake.clear()

    async def stop(self, *, settle_timeout_s: float = 30.0) -> StopReport:
        """Leave the site at its safe cap, then stop all loops; says what it did."""
        self._stopping.set()
        self._wake.set()
        self.budgets.force_safe(True)
        self.planner.mark()
        self.optimize()
        disp = self.dispatcher
        ok0, failed0, started = disp.commands_sent, disp.commands_failed, 0
        # Send the safe plan; a miner busy with an earlier command gets its safe setting when
        # that one is done. Wait for the commands themselves (not for their confirmation reads).
        deadline = self.clock.now() + settle_timeout_s
        while True:
            now = self.clock.now()
            disp.hold_increases(now)  # no increases on the way out
            started += self.reconcile(now)
            if not disp.busy or now >= deadline:
                break
            await self.clock.sleep(0.1)
        now = self.clock.now()
        report = StopReport(
            commands=started, ok=disp.commands_sent - ok0, failed=disp.commands_failed - failed0,
            unanswered=sum(m.inflight for m in self.miners.values()),
            site_w=self.proj.node_power(now)[self.cfg.site],
            safe_w=self.budgets.caps()[self.cfg.site].watts)
        # The commands and reads still in flight are this controller's tasks: none outlives it.
        cancelled = disp.cancel_all() + self.guard.grid.cancel()
        if cancelled:
            await asyncio.wait(cancelled)
        for m in self.miners.values():
            try:
                await m.driver.close()
            except DriverError as exc:
                log.debug("closing %s: %s", m.spec.id, exc)
        return report

    def set_cap(self, node: str, cap_kw: float | None, *, until: float | None = None) -> None:
        """The API method for budget updates (validated; takes effect at the next guard tick)."""
        self.budgets.set_cap(node, cap_kw, until=until)

    def clear_faulty(self, miner_id: str) -> None:
        self.miners[miner_id].health.clear_faulty()
        self.planner.mark(self.miners[miner_id])

    def is_curtailed(self, worker: str) -> bool:
        """For vardiff and "worker silent" logic: True if we put this worker's miner to sleep
        or below 60 % of nameplate on purpose."""
        for m in self.miners.values():
            if m.spec.worker == worker and m.commanded is not None:
                return m.commanded.sleep or (m.commanded_w or m.spec.nameplate_w) < (
                    0.6 * m.spec.nameplate_w)
        return False

    def curtailed_workers(self) -> set[str]:
        """The Stratum workers `is_curtailed` says yes for, in one pass (for the pool's sweep)."""
        return {m.spec.worker for m in self.miners.values()
                if m.spec.worker and m.commanded is not None
                and (m.commanded.sleep or (m.commanded_w or m.spec.nameplate_w)
                     < 0.6 * m.spec.nameplate_w)}

    def reconfigure(self, cfg: FleetConfig) -> None:
        """SIGHUP: take new caps, allowances, schedule, intervals and limits for the same
        inventory (same sites, containers, racks and miners: the caller checks). API
        overrides above a new configured cap are dropped (the configured cap is the breaker)."""
        self.cfg = cfg
        self.budgets.reconfigure(cfg)
        for part in (self.proj, self.planner, self.dispatcher):
            part.cfg = cfg
        self.guard.reconfigure(cfg)
        self.planner.mark()

    async def action(self, miner_id: str, what: str, *, pool: tuple[str, str, Secret] | None
                     = None) -> None:
        """Operator actions through the driver, logged and rate-limited: reboot, restart,
        set_pool. Raises UnsupportedError / DriverError / ValueError."""
        m = self.miners[miner_id]
        if not self.limiter.allow(miner_id, what, self.clock.now()):
            raise ValueError(f"{what} on {miner_id}: rate limit reached")
        log.info("action %s on %s", what, miner_id)
        if what == "reboot":
            await m.driver.reboot()
        elif what == "restart":
            await m.driver.restart_mining()
        elif what == "set_pool":
            if pool is None:
                raise ValueError("set_pool needs (url, user, password)")
            await m.driver.set_pool(*pool)
        else:
            raise UnsupportedError(f"unknown action {what!r}")

    def status(self) -> FleetStatus:
        now = self.clock.now()
        caps = self.budgets.caps()
        power = self.proj.node_metered(now)
        nodes = []
        for node, cap in caps.items():
            if node in self.topo.rack_miners:
                hr = sum((m.health.telemetry.hashrate_ths or 0.0) for m in
                         self.topo.rack_miners[node] if m.health.telemetry is not None)
            else:
                hr = 0.0
            nodes.append(NodeStatus(node, cap.watts, power[node], hr,
                                    self.guard.over_s(node, now)))
        return FleetStatus(
            time=now, nodes=tuple(nodes), miners=len(self.miners),
            stale=sum(m.health.stale(now, self.cfg.stale_after_s) for m in self.miners.values()),
            faulty=sum(m.health.faulty for m in self.miners.values()),
            asleep=sum(bool(m.commanded and m.commanded.sleep) for m in self.miners.values()),
            commands_sent=self.commands_sent,
        )
