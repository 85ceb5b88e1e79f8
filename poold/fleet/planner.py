"""Planner: each rack's budget and each miner's planned setting (pure computation, no I/O).

A parent's budget is split across its children where it binds (their caps do not fit in it),
by their demand; each rack's budget is water-filled (poold.fleet.policy) with each miner's
learned curve (poold.fleet.model), aiming at cap × `target_fraction` (the hysteresis band).
Racks are re-planned when marked dirty (a cap, a miner's state or its telemetry changed) and
round-robin every `optimizer_interval_s`; over-cap racks first, within a CPU budget per call.

A miner's allowed watts and levels never exceed its inventory `max_w` (nameplate unless the
operator set more): a firmware that offers higher profiles does not get them.

A miner the controller put to sleep stays asleep for `min_sleep_s` (a sleep/wake cycle is a
few-a-day budget; docs/FLEET.md "Minimum dwell"), unless the cap allows nothing else: it is woken
early only into watts of its rack's budget that no other miner can take — with every miner that
is awake or past its dwell at its plan (at its maximum, or the budget would be spent), the
budget left over, on the plan and on the meters alike, must run it at its lowest setting. No
awake miner is turned down to make room for it.
"""

# ruff: noqa: RUF002  (math notation in docstrings is intended)

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping

from poold.fleet.budgets import Budgets, Cap
from poold.fleet.clock import Clock
from poold.fleet.drivers.base import Desired
from poold.fleet.inventory import FleetConfig
from poold.fleet.policy import (
    Actuator,
    Allocation,
    MinerInput,
    Plan,
    allocate,
    split_budget,
)
from poold.fleet.projection import Projection, Topology
from poold.fleet.state import MinerState

DAY_S = 86400.0
TIMING_SAMPLES = 4096  # per-call CPU samples kept (bounded: a day of ticks would be 86,400)


def allowed_levels(m: MinerState) -> tuple[float, ...]:
    """The watts of the miner's levels at or below its inventory `max_w` (the lowest level
    alone when every level is above it)."""
    caps = m.caps
    if caps is None or not caps.levels:
        return ()
    watts = tuple(lv.watts for lv in caps.levels)
    return tuple(w for w in watts if w <= m.spec.max_w + 1e-6) or watts[:1]


class Planner:
    def __init__(self, cfg: FleetConfig, clock: Clock, budgets: Budgets, proj: Projection,
                 miners: Mapping[str, MinerState]) -> None:
        self.cfg = cfg
        self.clock = clock
        self.budgets = budgets
        self.proj = proj
        self.topo: Topology = proj.topo
        self.miners = miners
        self.plan_caps: dict[str, float] = {}
        self.rack_budget: dict[str, float] = {}
        self.dirty: set[str] = set(self.topo.rack_miners)  # racks to re-plan
        self.pending: set[str] = set()  # miners whose plan differs from their command
        self._rr = 0  # round-robin position of the periodic re-plan
        self.optimize_cpu_s: deque[float] = deque(maxlen=TIMING_SAMPLES)

    # -- marking --------------------------------------------------------------------------------

    def mark(self, miner: MinerState | None = None) -> None:
        """Re-plan the miner's rack (or every rack) at the next guard tick."""
        if miner is None:
            self.dirty.update(self.topo.rack_miners)
        else:
            self.dirty.add(miner.spec.rack)

    def mark_round_robin(self) -> None:
        """Mark the next racks of the periodic re-plan, spread so each rack is re-planned
        every optimizer_interval_s without a CPU spike every interval."""
        racks = list(self.topo.rack_miners)
        k = max(1, math.ceil(len(racks) * self.cfg.guard_interval_s
                             / self.cfg.optimizer_interval_s))
        for _ in range(min(k, len(racks))):
            self.dirty.add(racks[self._rr % len(racks)])
            self._rr += 1

    # -- per-miner inputs -----------------------------------------------------------------------

    def may_cycle(self, m: MinerState) -> bool:
        wall = self.clock.wall()
        while m.sleeps and wall - m.sleeps[0] > DAY_S:
            m.sleeps.popleft()
        return len(m.sleeps) < self.cfg.daily_cycle_budget

    def controllable(self, m: MinerState, now: float) -> bool:
        caps, h = m.caps, m.health
        return not (caps is None or caps.read_only or (h.faulty and h.backing_off(now))
                    or h.not_following or h.stale(now, self.cfg.stale_after_s))

    def thermal_sleep(self, m: MinerState, now: float) -> bool:
        """Too hot to run at all: it must be put to sleep (a fixed input, but a command)."""
        tc = m.health.thermal_cap_w
        return tc is not None and tc <= 0 and self.controllable(m, now)

    def dwelling(self, m: MinerState, now: float) -> bool:
        """Asleep by our command less than `min_sleep_s` ago (and otherwise controllable)."""
        asleep = m.commanded.sleep if m.commanded is not None else bool(
            m.health.telemetry is not None and m.health.telemetry.sleeping)
        return (asleep and now - m.slept_at < self.cfg.min_sleep_s
                and self.controllable(m, now) and m.caps is not None)

    def input(self, m: MinerState, now: float, *, dwell: bool = True) -> MinerInput:
        curve = m.learner.curve()
        h = m.health
        asleep = m.commanded.sleep if m.commanded is not None else bool(
            h.telemetry is not None and h.telemetry.sleeping)
        caps = m.caps
        if not self.controllable(m, now) or caps is None:
            return MinerInput(m.spec.id, curve, Actuator.ONOFF, m.spec.min_w, m.spec.max_w,
                              levels=(m.spec.max_w,), asleep=asleep,
                              fixed_w=self.proj.miner_w(m, now))
        # Never above the inventory's max_w (nameplate unless the operator set more), whatever
        # the firmware offers: a profile above nameplate can trip a breaker or void a warranty.
        if dwell and asleep and now - m.slept_at < self.cfg.min_sleep_s:
            # Minimum dwell: a miner we just put to sleep is not woken before min_sleep_s
            # (a sleep/wake cycle is a few-a-day budget; waking at once wastes one).
            return MinerInput(m.spec.id, curve, caps.actuator, caps.min_w, caps.max_w,
                              asleep=True, sleep_w=caps.sleep_w, fixed_w=caps.sleep_w)
        levels = allowed_levels(m)
        max_w = min(caps.max_w, m.spec.max_w)
        min_w = max(caps.min_w, min(m.spec.min_w, max_w)) if caps.actuator is Actuator.WATTS \
            else caps.min_w
        tc = h.thermal_cap_w
        force_sleep = False
        if tc is not None:
            if tc <= 0:
                force_sleep = True
            elif caps.actuator is Actuator.WATTS:
                max_w = max(min_w, min(max_w, tc))
            else:
                levels = tuple(w for w in levels if w <= tc) or levels[:1]
        if force_sleep:
            return MinerInput(m.spec.id, curve, caps.actuator, min_w, max_w, asleep=True,
                              levels=levels, sleep_w=caps.sleep_w, fixed_w=caps.sleep_w)
        if caps.actuator is Actuator.ONOFF:
            levels = (max_w,)
        return MinerInput(m.spec.id, curve, caps.actuator, min_w, max_w, caps.step_w, levels,
                          caps.sleep_w, caps.can_sleep, asleep, self.may_cycle(m))

    def desired_of(self, m: MinerState, a: Allocation) -> Desired:
        if a.sleep:
            return Desired(sleep=True)
        caps = m.caps
        assert caps is not None
        if caps.actuator is Actuator.WATTS:
            return Desired(watts=a.watts)
        if caps.actuator is Actuator.ONOFF or not caps.levels:
            return Desired(sleep=False)
        allowed = [lv for lv in caps.levels if lv.watts <= m.spec.max_w + 1e-6] \
            or [caps.levels[0]]
        name = min(allowed, key=lambda lv: abs(lv.watts - a.watts)).name
        return Desired(level=name)

    # -- budgets and plans ----------------------------------------------------------------------

    def rack_budgets(self, caps: dict[str, Cap], now: float) -> dict[str, float]:
        """Each rack's share of the hierarchy (× target_fraction). Where a parent's cap binds
        (its children's caps do not fit in it) the split follows the children's demand, so
        every rack under it is re-planned."""
        frac = self.cfg.target_fraction
        topo = self.topo
        out: dict[str, float] = {}
        cache: dict[str, list[MinerInput]] = {}

        def inputs(rid: str) -> list[MinerInput]:
            if rid not in cache:
                cache[rid] = [self.input(m, now) for m in topo.rack_miners[rid]]
            return cache[rid]

        def racks_of(node: str) -> list[str]:
            return topo.container_racks.get(node, [node])

        def node_cap(node: str) -> float:
            return caps[node].watts * frac

        top_caps = [node_cap(n) for n in topo.top]
        site_b = node_cap(topo.site)
        if sum(top_caps) <= site_b * (1 + 1e-9) + 1e-6:
            top_share = top_caps
        else:
            top_share = split_budget(
                [(node_cap(n), [i for r in racks_of(n) for i in inputs(r)]) for n in topo.top],
                site_b)
            self.dirty.update(topo.rack_miners)
        for node, share in zip(topo.top, top_share, strict=True):
            if node not in topo.container_racks:
                out[node] = share
                continue
            rids = topo.container_racks[node]
            kid_caps = [node_cap(r) for r in rids]
            budget = min(node_cap(node), share)
            if sum(kid_caps) <= budget * (1 + 1e-9) + 1e-6:
                shares = kid_caps
            else:
                shares = split_budget([(node_cap(r), inputs(r)) for r in rids], budget)
                self.dirty.update(rids)
            out.update(zip(rids, shares, strict=True))
        return out

    def wake_early(self, rid: str, ms: list[MinerState], plan: Plan,
                   now: float) -> list[Allocation]:
        """The rack's allocations, with miners still in their dwell woken where the cap allows
        nothing else: only into the watts the plan leaves unused (the others are at their
        maximum) and the meters confirm are free, spread over them by the same allocator.
        Sets each miner's `early_wake` (the reason, logged and counted when the wake is
        taken) or clears it."""
        allocs = list(plan.allocations)
        held = [i for i, m in enumerate(ms) if self.dwelling(m, now)]
        for m in ms:
            m.early_wake = None
        if not held:
            return allocs
        budget = self.rack_budget[rid]
        plan_spare = budget - plan.planned_w
        meter_spare = budget - sum(self.proj.miner_w(m, now) for m in ms)
        spare = min(plan_spare, meter_spare)
        inputs = [self.input(ms[i], now, dwell=False) for i in held]
        if spare <= 0 or min(x.lo - x.sleep_w for x in inputs) > spare + 1e-6:
            return allocs
        sub = allocate(inputs, spare + sum(x.sleep_w for x in inputs))
        for i, a in zip(held, sub.allocations, strict=True):
            if a.sleep or a.fixed:
                continue
            m = ms[i]
            allocs[i] = a
            m.early_wake = (
                f"rack {rid} has {spare:.0f} W of its {budget:.0f} W budget that no miner "
                f"awake or past its dwell can take (planned {plan.planned_w:.0f} W, "
                f"projected {budget - meter_spare:.0f} W); slept {now - m.slept_at:.0f} s ago, "
                f"min_sleep_s {self.cfg.min_sleep_s:.0f}")
        return allocs

    def optimize(self, *, budget_s: float | None = None,
                 projection: Mapping[str, float] | None = None) -> int:
        """Re-plan the dirty racks for the caps in force, over-cap racks (by `projection`)
        first, within `budget_s` of CPU if given. Returns racks re-planned."""
        cpu0 = time.process_time()
        now = self.clock.now()
        caps = self.budgets.caps()
        topo = self.topo
        changed = {n for n, c in caps.items() if abs(c.watts - self.plan_caps.get(n, -1.0)) > 1e-6}
        if topo.site in changed or any(n in topo.container_racks for n in changed):
            self.mark()
        self.dirty.update(n for n in changed if n in topo.rack_miners)
        self.plan_caps = {n: c.watts for n, c in caps.items()}
        if changed or not self.rack_budget:
            self.rack_budget = self.rack_budgets(caps, now)
        proj = projection or {}
        order = sorted(self.dirty,
                       key=lambda r: proj.get(r, 0.0) <= caps[r].watts)  # over-cap first
        done = 0
        for rid in order:
            if budget_s is not None and done and time.process_time() - cpu0 > budget_s:
                break
            ms = topo.rack_miners[rid]
            plan = allocate([self.input(m, now) for m in ms], self.rack_budget[rid])
            allocs = self.wake_early(rid, ms, plan, now)
            for m, a in zip(ms, allocs, strict=True):
                m.plan = None if a.fixed and not self.thermal_sleep(m, now) else a
                m.plan_desired = None if m.plan is None else self.desired_of(m, m.plan)
                if m.plan_desired is not None and m.plan_desired != m.commanded:
                    self.pending.add(m.spec.id)
            self.dirty.discard(rid)
            done += 1
        self.optimize_cpu_s.append(time.process_time() - cpu0)
        return done
