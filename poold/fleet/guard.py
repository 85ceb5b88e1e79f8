"""Guard: every `guard_interval_s` (≈1 s) the caps are checked against the projection.

A tick re-plans the racks that are due (dirty, or next in the round-robin), reconciles plan
and miners (poold.fleet.dispatcher), then, for every node still over its cap once the queued
decreases are counted, sheds in bounded steps: sleeps the least efficient miners under it,
only as much as the breach, and re-plans. It tracks how long each node has been over its cap
and exports the rack series.
"""

from __future__ import annotations

import logging
import math

from poold.fleet.budgets import Budgets, Cap
from poold.fleet.clock import Clock
from poold.fleet.dispatcher import Dispatcher
from poold.fleet.drivers.base import Desired
from poold.fleet.health import ShareRateEstimator
from poold.fleet.inventory import FleetConfig
from poold.fleet.planner import Planner
from poold.fleet.policy import Allocation, shed_order
from poold.fleet.projection import Projection
from poold.metrics import Metrics

log = logging.getLogger(__name__)


def allowances(cfg: FleetConfig) -> dict[str, float]:
    """`over_cap_allowed_s` of every node (site, containers, racks)."""
    out = {cfg.site: cfg.over_cap_allowed_s}
    out |= {c.id: c.over_cap_allowed_s for c in cfg.containers}
    out |= {r.id: r.over_cap_allowed_s for r in cfg.racks}
    return out


class Guard:
    def __init__(self, cfg: FleetConfig, clock: Clock, budgets: Budgets, proj: Projection,
                 planner: Planner, disp: Dispatcher, metrics: Metrics,
                 shares: ShareRateEstimator | None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.budgets = budgets
        self.proj = proj
        self.topo = proj.topo
        self.planner = planner
        self.disp = disp
        self.metrics = metrics
        self.shares = shares
        self.allowed = allowances(cfg)
        self._over_since: dict[str, float | None] = dict.fromkeys(self.allowed)
        self.over_max_s: dict[str, float] = dict.fromkeys(self.allowed, 0.0)
        #: Each node's projected watts at the last tick.
        self.last_projection: dict[str, float] = {}
        #: CPU allowed to re-planning per tick; the rest waits for the next tick (racks over
        #: their cap go first), so a cycle stays bounded at any fleet size.
        self.optimize_budget_s = 0.06
        self._last_pool_export = -math.inf

    def reconfigure(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.allowed = allowances(cfg)

    def over_s(self, node: str, now: float) -> float:
        since = self._over_since.get(node)
        return 0.0 if since is None else now - since

    def tick(self) -> None:
        now = self.clock.now()
        caps = self.budgets.caps()
        self.planner.mark_round_robin()
        self.planner.optimize(budget_s=self.optimize_budget_s, projection=self.last_projection)
        self.disp.reconcile(now, self.last_projection)
        power = self.proj.node_power(now)
        shed = False
        for node, cap in caps.items():
            if power[node] <= cap.watts:
                continue
            racks = self.topo.racks_under(node)
            if any(r in self.planner.dirty for r in racks):
                continue  # its re-plan is due next tick: no emergency yet
            committed = self._committed_w(racks, now)
            if committed > cap.watts:
                shed |= self._shed(node, cap, committed - cap.watts * self.cfg.target_fraction,
                                   now)
        if shed:
            power = self.proj.node_power(now)
        self._track_over(power, caps, now)
        self._export(power, caps, now)

    def _committed_w(self, racks: list[str], now: float) -> float:
        """Projected power once the planned decreases still queued for dispatch are sent:
        a breach this explains is work in progress, not a reason to shed."""
        total = 0.0
        for r in racks:
            for m in self.topo.rack_miners[r]:
                p = self.proj.miner_w(m, now)
                if m.plan is not None and m.spec.id in self.planner.pending and not m.inflight \
                        and m.health.failures == 0:
                    p = min(p, m.plan.watts)
                total += p
        return total

    def _shed(self, node: str, cap: Cap, deficit_w: float, now: float) -> bool:
        """Sleep miners under `node`, least efficient first, until `deficit_w` is covered."""
        ms = [m for r in self.topo.racks_under(node) for m in self.topo.rack_miners[r]]
        cands = [(self.planner.input(m, now), self.proj.miner_w(m, now)) for m in ms
                 if not m.inflight and m.caps is not None and not m.health.faulty]
        by_id = {m.spec.id: m for m in ms}
        freed = 0.0
        acted = False
        for mid in shed_order(cands):
            if freed >= deficit_w:
                break
            m = by_id[mid]
            assert m.caps is not None
            w = self.proj.miner_w(m, now)
            self.disp.start(m, Desired(sleep=True), m.caps.sleep_w)
            m.plan = Allocation(mid, True, m.caps.sleep_w, 0.0)
            m.plan_desired = Desired(sleep=True)
            self.planner.mark(m)
            freed += w - m.caps.sleep_w
            acted = True
        if acted:
            log.warning("guard: %s over cap (%.0f W > %.0f W); shed %.0f W", node,
                        deficit_w + cap.watts * self.cfg.target_fraction, cap.watts, freed)
        return acted

    def _track_over(self, power: dict[str, float], caps: dict[str, Cap], now: float) -> None:
        for node, cap in caps.items():
            since = self._over_since.get(node)
            if power[node] > cap.watts + 1e-6:
                if since is None:
                    self._over_since[node] = now
                else:
                    self.over_max_s[node] = max(self.over_max_s[node], now - since)
            else:
                self._over_since[node] = None
        self.last_projection = power

    def _export(self, power: dict[str, float], caps: dict[str, Cap], now: float) -> None:
        met = self.metrics
        pool_due = self.shares is not None and now - self._last_pool_export >= 10.0
        for rid in self.topo.rack_miners:
            met.rack_power_watts.labels(rid).set(power[rid])
            met.rack_cap_watts.labels(rid).set(caps[rid].watts)
            if self.shares is None:
                met.rack_hashrate.labels(rid).set(self.disp.rack_hs[rid] * 1e12)
            elif pool_due:
                met.rack_hashrate.labels(rid).set(self.rack_pool_hashrate_hs(rid, now))
        if pool_due:
            self._last_pool_export = now
        met.grid_signal_age.set(self.budgets.grid_signal_age())

    def rack_pool_hashrate_hs(self, rack: str, now: float) -> float:
        """The rack's hashrate as the pool sees it (firmware figure where no shares yet)."""
        total = 0.0
        for m in self.topo.rack_miners[rack]:
            pool = (self.shares.hashrate_hs(m.spec.worker, now)
                    if self.shares is not None and m.spec.worker else None)
            if pool is not None:
                total += pool
            elif m.health.telemetry is not None and m.health.telemetry.hashrate_ths:
                total += m.health.telemetry.hashrate_ths * 1e12
        return total

