"""Guard: every `guard_interval_s` (≈1 s) the caps are checked against the miners.

A tick
1. re-plans the racks that are due (dirty, or next in the round-robin) and reconciles plan and
   miners (poold.fleet.dispatcher);
2. commands every blind miner (no fresh telemetry; counted at its worst case) down to its
   lowest setting: it cannot be shown to be lower, so it is asked to be;
3. sheds where the projection (commands in flight counted as they will settle) is still over
   a cap once the queued decreases are counted: sleeps the least efficient miners under the
   node, only as much as the breach;
4. escalates where the meters say a node will not be under its cap within its
   `over_cap_allowed_s` at the pace of the commands in flight (a watt target ramps over tens
   of seconds): at the last moment a sleep (and a reading showing it) still fits before the
   deadline, deeper steps for miners that can settle in the time left, sleep for the rest;
5. tracks each node's time over its cap on the meters; time past the allowance is counted
   (`poold_rack_over_cap_seconds_total`) and the breach logged once; and exports the series.
Before all that it hands the site cap to the grid response (poold.fleet.grid_response), which
sleeps miners at once when the grid lowers the level, and gates raises while it binds.
"""

from __future__ import annotations

import asyncio
import logging
import math

from poold.fleet.budgets import Budgets, Cap
from poold.fleet.clock import Clock
from poold.fleet.dispatcher import Dispatcher
from poold.fleet.drivers.base import Desired
from poold.fleet.grid_response import CONFIRM_READS, GridResponse
from poold.fleet.health import ShareRateEstimator
from poold.fleet.inventory import FleetConfig
from poold.fleet.planner import Planner
from poold.fleet.policy import Actuator, Allocation, shed_order
from poold.fleet.projection import Projection
from poold.fleet.state import MinerState
from poold.metrics import Metrics

log = logging.getLogger(__name__)

#: Per guard tick, the node lines (shed, escalated, past or back under the allowance) logged
#: one by one; the rest of a mass event (a site-wide cut reaches every rack at once) are
#: summed up in one more line, so a cut of 100 racks is 6 lines, not 100 a tick.
NODE_LINES_PER_TICK = 5


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
        #: Since when each node's meters are over its cap (None: under).
        self._over_since: dict[str, float | None] = dict.fromkeys(self.allowed)
        self.over_max_s: dict[str, float] = dict.fromkeys(self.allowed, 0.0)
        self._breached: set[str] = set()  # nodes past their allowance (logged once)
        self._tracked_at: float | None = None
        self._escalated_until: dict[str, float] = {}
        self._notes: list[tuple[str, str]] = []  # this tick's node WARNINGs (_log_notes)
        #: Each node's projected and metered watts at the last tick.
        self.last_projection: dict[str, float] = {}
        self.last_metered: dict[str, float] = {}
        self.blind: dict[str, int] = dict.fromkeys(self.topo.rack_miners, 0)
        for rid in self.topo.rack_miners:  # exported from the start: 0 until a breach
            metrics.rack_over_cap_seconds.labels(rid)
        #: CPU allowed to re-planning per tick; the rest waits for the next tick (racks over
        #: their cap go first), so a cycle stays bounded at any fleet size.
        self.optimize_budget_s = 0.06
        self._last_pool_export = -math.inf
        self.grid = GridResponse(cfg, clock, budgets, planner.miners, metrics)
        self.grid.poll = disp.poll_power
        self.grid.read_slots = asyncio.Semaphore(
            max(1, min(CONFIRM_READS, disp.max_starts_per_tick // 2)))
        disp.on_fast_ack = self.grid.sleep_acked
        self.grid.start_sleep = self._grid_sleep
        self.grid.planner_mark = planner.mark
        disp.admit = self.grid.admit
        disp.quiet = self.grid.quiet

    def _grid_sleep(self, m: MinerState) -> None:
        assert m.caps is not None
        self.disp.start(m, Desired(sleep=True), m.caps.sleep_w, fast=True)
        self.planner.mark(m)

    def reconfigure(self, cfg: FleetConfig) -> None:
        self.cfg = cfg
        self.allowed = allowances(cfg)
        self.grid.cfg = cfg

    def over_s(self, node: str, now: float) -> float:
        """How long the node's meters have been over its cap (0 when under)."""
        since = self._over_since.get(node)
        return 0.0 if since is None else now - since

    def unverified(self, now: float) -> list[str]:
        """Nodes whose meters (blind miners at worst case) have been over their cap for
        longer than their allowance: they cannot be shown to be under it."""
        return [n for n in self._over_since
                if self.over_s(n, now) > self.allowed.get(n, 0.0)]

    def tick(self) -> None:
        now = self.clock.now()
        caps = self.budgets.caps()
        self.grid.tick(caps[self.cfg.site], now)
        self.planner.mark_round_robin()
        self.planner.optimize(budget_s=self.optimize_budget_s, projection=self.last_projection)
        self.disp.reconcile(now, self.last_projection)
        self._command_blind_down(now)
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
        metered = self.proj.node_metered(now)
        shed |= self._escalate(metered, caps, now)
        if shed:
            power = self.proj.node_power(now)
        self._track_over(metered, caps, now)
        self._log_notes()
        self.last_projection = power
        self.last_metered = metered
        self._export(metered, caps, now)

    def _note(self, node: str, msg: str, *args: object) -> None:
        """A WARNING about `node`, logged at the end of the tick (see NODE_LINES_PER_TICK)."""
        self._notes.append((node, msg % args))

    def _log_notes(self) -> None:
        notes, self._notes = self._notes, []
        for _, line in notes[:NODE_LINES_PER_TICK]:
            log.warning("%s", line)
        rest = sorted({node for node, _ in notes[NODE_LINES_PER_TICK:]})
        if rest:
            names = ", ".join(rest[:20]) + (f" and {len(rest) - 20} more" if len(rest) > 20
                                            else "")
            log.warning("guard: %d more shed, escalation or allowance events this tick, on "
                        "%d nodes: %s (each node's series show them)",
                        len(notes) - NODE_LINES_PER_TICK, len(rest), names)

    # -- blind miners ---------------------------------------------------------------------------

    def _command_blind_down(self, now: float) -> None:
        stale = self.cfg.stale_after_s
        for rid, ms in self.topo.rack_miners.items():
            n = 0
            for m in ms:
                if m.health.stale(now, stale):
                    n += 1
                    self._down(m, now, "blind (no fresh telemetry)")
            self.blind[rid] = n

    def _down(self, m: MinerState, now: float, why: str) -> bool:
        """Command `m` to its lowest setting (sleep when that is all it has)."""
        caps = m.caps
        if caps is None or caps.read_only or m.inflight or m.health.backing_off(now) \
                or self.cfg.dry_run:
            return False
        if m.commanded is not None and m.commanded.sleep:
            return False
        if caps.actuator is Actuator.WATTS:
            desired, w = Desired(watts=caps.min_w), caps.min_w
        elif caps.levels and caps.actuator is not Actuator.ONOFF:
            desired, w = Desired(level=caps.levels[0].name), caps.levels[0].watts
        elif caps.can_sleep:
            desired, w = Desired(sleep=True), caps.sleep_w
        else:
            return False
        if m.commanded == desired:
            return False
        log.info("miner %s %s: commanding it down to %.0f W", m.spec.id, why, w)
        self.disp.start(m, desired, w)
        return True

    # -- shedding and escalation ----------------------------------------------------------------

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

    def _candidates(self, node: str, now: float) -> list[MinerState]:
        return [m for m in self.topo.miners_under(node)
                if not m.inflight and m.caps is not None and not m.caps.read_only
                and not m.health.backing_off(now)
                and not m.health.stale(now, self.cfg.stale_after_s)]

    def _sleep(self, m: MinerState) -> float:
        """Start sleeping `m` (planned so, and re-planned later); returns its sleep watts."""
        assert m.caps is not None
        self.disp.start(m, Desired(sleep=True), m.caps.sleep_w)
        m.plan = Allocation(m.spec.id, True, m.caps.sleep_w, 0.0)
        m.plan_desired = Desired(sleep=True)
        self.planner.mark(m)
        return m.caps.sleep_w

    def _shed(self, node: str, cap: Cap, deficit_w: float, now: float) -> bool:
        """Sleep miners under `node`, least efficient first, until `deficit_w` is covered."""
        ms = self._candidates(node, now)
        cands = [(self.planner.input(m, now), self.proj.miner_w(m, now)) for m in ms]
        by_id = {m.spec.id: m for m in ms}
        freed = 0.0
        acted = False
        for mid in shed_order(cands):
            if freed >= deficit_w:
                break
            m = by_id[mid]
            w = self.proj.miner_w(m, now)
            freed += w - self._sleep(m)
            acted = True
        if acted:
            self._note(node, "guard: %s over cap (%.0f W > %.0f W); shed %.0f W", node,
                       deficit_w + cap.watts * self.cfg.target_fraction, cap.watts, freed)
        return acted

    def _at(self, m: MinerState, now: float, deadline: float) -> float:
        """What `m` will draw at `deadline`: its projection if its command settles by then;
        otherwise its meter moving toward the command as a first-order lag whose settle
        bound is three time constants (a Braiins power target: τ ≈ 10 s, settled ≈ 30 s),
        never below the projection."""
        proj = self.proj.miner_w(m, now)
        if m.settle_until <= deadline:
            return proj
        meter = self.proj.metered_w(m, now)
        cw = m.commanded_w
        if cw is None or m.caps is None or meter <= cw or m.health.stale(
                now, self.cfg.stale_after_s):
            return max(meter, proj)
        bound = (m.caps.sleep_settle_s if m.commanded is not None and m.commanded.sleep
                 else m.caps.settle_s)
        tau = max(bound / 3.0, 1e-3)
        return max(proj, cw + (meter - cw) * math.exp(-max(0.0, deadline - now) / tau))

    def _lowest(self, m: MinerState) -> float | None:
        """The watts of the miner's lowest awake setting (None: on/off only)."""
        caps = m.caps
        if caps is None or caps.actuator is Actuator.ONOFF:
            return None
        if caps.actuator is Actuator.WATTS:
            return caps.min_w
        return caps.levels[0].watts if caps.levels else None

    def _escalate(self, metered: dict[str, float], caps: dict[str, Cap], now: float) -> bool:
        """Where the meters are over a cap and the commands in flight will not bring them
        under within the node's allowance: first deeper steps (each miner's lowest setting,
        which a first-order lag approaches faster; reversible, no sleep cycle spent), least
        efficient first; then, at the last moment a sleep still fits, sleep."""
        acted = False
        for node, cap in caps.items():
            if metered[node] <= cap.watts or now < self._escalated_until.get(node, -math.inf):
                continue
            since = self._over_since.get(node)
            deadline = (now if since is None else since) + self.allowed.get(node, 0.0)
            ms = self.topo.miners_under(node)
            expected = sum(self._at(m, now, deadline) for m in ms)
            deficit = expected - cap.watts * self.cfg.target_fraction
            if expected <= cap.watts or deficit <= 0:
                continue
            left = max(0.0, deadline - now)
            cands = self._candidates(node, now)
            inputs = [(self.planner.input(m, now), self._at(m, now, deadline)) for m in cands]
            by_id = {m.spec.id: m for m in cands}
            order = shed_order(inputs)
            freed, stepped, slept = 0.0, 0, 0
            for mid in order:  # deeper steps
                if freed >= deficit:
                    break
                m = by_id[mid]
                assert m.caps is not None
                low = self._lowest(m)
                if low is None or (m.commanded_w is not None and m.commanded_w <= low + 1e-6):
                    continue
                w = self._at(m, now, deadline)
                tau = max(m.caps.settle_s / 3.0, 1e-3)
                there = low + (self.proj.metered_w(m, now) - low) * math.exp(-left / tau)
                if w - there > 0.02 * w and self._down(m, now, f"escalation on {node}"):
                    freed += w - there
                    stepped += 1
            # The last responsible moment for sleep: while a sleep (and a reading showing it)
            # still fits before the deadline, let the steps and ramps show on the meters.
            lead = max((m.caps.sleep_settle_s for m in cands if m.caps is not None),
                       default=0.0) + self.cfg.telemetry_interval_s + self.cfg.guard_interval_s
            wait = 0.0
            if freed < deficit and left <= lead:
                for mid in order:
                    if freed >= deficit:
                        break
                    m = by_id[mid]
                    if m.inflight:
                        continue  # just stepped
                    assert m.caps is not None
                    freed += self._at(m, now, deadline) - self._sleep(m)
                    slept += 1
                    wait = max(wait, m.caps.sleep_settle_s)
            if stepped or slept:
                acted = True
                self._escalated_until[node] = now + max(wait, self.cfg.guard_interval_s)
                self._note(node, "guard: %s meters %.0f W > cap %.0f W and would still be over "
                           "at its %.0f s allowance: %d miners stepped to their lowest setting, "
                           "%d put to sleep (%.0f W)", node, metered[node], cap.watts,
                           self.allowed.get(node, 0.0), stepped, slept, freed)
        return acted

    # -- accounting and export ------------------------------------------------------------------

    def _track_over(self, metered: dict[str, float], caps: dict[str, Cap], now: float) -> None:
        dt = 0.0 if self._tracked_at is None else max(0.0, now - self._tracked_at)
        self._tracked_at = now
        for node, cap in caps.items():
            since = self._over_since.get(node)
            if metered[node] > cap.watts + 1e-6:
                if since is None:
                    self._over_since[node] = now
                    continue
                over = now - since
                self.over_max_s[node] = max(self.over_max_s[node], over)
                allowed = self.allowed.get(node, 0.0)
                if over <= allowed:
                    continue
                if node in self.topo.rack_miners:
                    self.metrics.rack_over_cap_seconds.labels(node).inc(min(dt, over - allowed))
                if node not in self._breached:
                    self._breached.add(node)
                    self._note(node, "%s has been over its cap for %.0f s, past its allowance "
                               "of %.0f s: meters %.0f W, cap %.0f W (%d blind miners at worst "
                               "case)", node, over, allowed, metered[node], cap.watts,
                               sum(self.blind.get(r, 0) for r in self.topo.racks_under(node)))
            else:
                if node in self._breached:
                    self._breached.discard(node)
                    self._note(node, "%s is back under its cap after %.0f s over it", node,
                               now - since if since is not None else 0.0)
                self._over_since[node] = None

    def _export(self, metered: dict[str, float], caps: dict[str, Cap], now: float) -> None:
        met = self.metrics
        pool_due = self.shares is not None and now - self._last_pool_export >= 10.0
        for rid, ms in self.topo.rack_miners.items():
            met.rack_power_watts.labels(rid).set(metered[rid])
            met.rack_cap_watts.labels(rid).set(caps[rid].watts)
            met.rack_commanded_watts.labels(rid).set(sum(
                m.commanded_w if m.commanded_w is not None else self.proj.metered_w(m, now)
                for m in ms))
            met.rack_blind_miners.labels(rid).set(self.blind.get(rid, 0))
            if self.shares is None:
                met.rack_hashrate.labels(rid).set(self.disp.rack_hs[rid] * 1e12)
            elif pool_due:
                met.rack_hashrate.labels(rid).set(self.rack_pool_hashrate_hs(rid, now))
        if pool_due:
            self._last_pool_export = now
        site = self.topo.site
        met.site_power_watts.set(metered[site])
        met.site_cap_watts.set(caps[site].watts)
        shown = self.budgets.grid_signal_in_use
        met.show_grid_signal_age(shown)
        if shown:
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

