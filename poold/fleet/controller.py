"""The fleet controller: keep every rack, container and the site under its cap (fleet.md §8.2).

Loops, on an injected `Clock` (real in production, virtual in tests and the benchmark):
- telemetry: each miner polled every `telemetry_interval_s`, staggered (a heap keeps the phase);
  stale → counted at worst case;
- fast guard (`guard_interval_s`, ≈1 s): re-plans racks whose caps or inputs changed, then
  reconciles plan and miners (decreases at once, over-cap racks first; increases through a
  site-wide ramp limit, a kW/min token bucket, in random order: a staggered restore); if a
  node is still over its cap once the queued decreases are counted, it sheds in bounded steps
  (sleeps the least efficient, only as much as the breach) and re-plans;
- optimizer: every rack re-planned every `optimizer_interval_s`, spread round-robin over the
  guard ticks; a parent's budget is split across children where it binds, and each rack's
  budget is water-filled (poold.fleet.policy) with each miner's learned curve
  (poold.fleet.model), aiming at cap × `target_fraction` (the hysteresis band).
Work per tick is bounded (`optimize_budget_s`, `max_starts_per_tick`), so a cycle stays short
at any fleet size; what does not fit follows on the next tick.

Power projection per miner (the number caps are checked against): stale or unknown → the worst
of nameplate, last measured, commanded; within a command's settle window → the commanded power
for a decrease, max(measured, commanded) for an increase; otherwise measured — raised to what
its hashrate needs (firmware figure, or the pool's share rate) when the reported watts are
implausibly low. After settling, a miner drawing more than commanded (by telemetry or by the
pool's shares) is flagged "not following" and counted at what it really draws.

Wiring (poold.daemon): ``FleetController(cfg.fleet, build_drivers(cfg.fleet), clock=LoopClock(),
metrics=metrics, shares=estimator)``; ``await run()`` in the TaskGroup, ``await stop()`` at
shutdown (leaves the safe cap); the share path calls ``estimator.record(worker, difficulty,
clock.now())``; vardiff / "worker silent" ask ``is_curtailed(worker)``; the API uses
``set_cap``, ``budgets.grid_signal``, ``status``, ``action``, ``clear_faulty``.
"""

# ruff: noqa: RUF002  (math notation in docstrings is intended)

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Mapping

from poold.fleet.budgets import Budgets, Cap
from poold.fleet.clock import Clock
from poold.fleet.drivers.base import (
    Desired,
    DriverError,
    MinerDriver,
    Secret,
    Telemetry,
    UnsupportedError,
)
from poold.fleet.health import (
    ActionLimiter,
    ShareRateEstimator,
    ambient_adjusted_limit,
    thermal_cap,
)
from poold.fleet.inventory import FleetConfig, MinerSpec
from poold.fleet.model import CurveLearner
from poold.fleet.policy import Actuator, Allocation, MinerInput, allocate, shed_order, split_budget
from poold.fleet.state import FleetStatus, MinerState, NodeStatus
from poold.metrics import Metrics

log = logging.getLogger(__name__)

DAY_S = 86400.0
FAULTY_AFTER = 5
FOLLOW_TOLERANCE = 1.10  # measured may exceed the commanded watts by 10 % (+50 W) after settle
MIN_RAISE_FRACTION = 0.02  # don't send an increase smaller than 2 % of nameplate (churn)
POWER_LIE_RATIO = 0.75  # reported watts below 75 % of what the hashrate needs: not believed
# The pool's hashrate of a miner is a count of shares (relative error ≈ 1/√n): it contradicts
# the miner only with its lower bound at this many standard errors.
POOL_SIGMAS = 2.0


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
        self._rng = rng or random.Random(0)
        self._ambient = ambient_c or (lambda: None)
        #: Every telemetry reading, as it arrives (the daemon meters energy with it).
        self.on_telemetry = on_telemetry
        self._sem = asyncio.Semaphore(max_concurrency)
        self.limiter = ActionLimiter()
        self.miners: dict[str, MinerState] = {}
        for spec in cfg.miners:
            if spec.id not in drivers:
                raise ValueError(f"no driver for miner {spec.id}")
            self.miners[spec.id] = MinerState(
                spec, drivers[spec.id], CurveLearner(spec.nameplate_w, spec.nameplate_ths),
                next_poll=self._rng.uniform(0.0, cfg.telemetry_interval_s))
        self._rack_miners: dict[str, list[MinerState]] = {r.id: [] for r in cfg.racks}
        for m in self.miners.values():
            self._rack_miners[m.spec.rack].append(m)
        self._container_racks: dict[str, list[str]] = {c.id: [] for c in cfg.containers}
        self._top: list[str] = []  # children of the site: containers and container-less racks
        for r in cfg.racks:
            if r.container is None:
                self._top.append(r.id)
            else:
                self._container_racks[r.container].append(r.id)
        self._top = [c.id for c in cfg.containers] + self._top
        self._allowed = {cfg.site: cfg.over_cap_allowed_s}
        self._allowed |= {c.id: c.over_cap_allowed_s for c in cfg.containers}
        self._allowed |= {r.id: r.over_cap_allowed_s for r in cfg.racks}
        self._over_since: dict[str, float | None] = dict.fromkeys(self._allowed)
        self.over_max_s: dict[str, float] = dict.fromkeys(self._allowed, 0.0)
        self._plan_caps: dict[str, float] = {}
        self._rack_budget: dict[str, float] = {}
        self._rack_dirty: set[str] = set(self._rack_miners)  # racks to re-plan
        self._rr = 0  # round-robin position of the periodic re-plan
        self._pending: set[str] = set()  # miners whose plan differs from their command
        self._poll_heap: list[tuple[float, str]] = sorted(
            (m.next_poll, mid) for mid, m in self.miners.items())
        self._rack_hs: dict[str, float] = dict.fromkeys(self._rack_miners, 0.0)
        self._last_pool_export = -math.inf
        #: CPU allowed to re-planning per guard tick; the rest waits for the next tick
        #: (racks over their cap go first), so a cycle stays bounded at any fleet size.
        self.optimize_budget_s = 0.06
        #: Commands started per guard tick at most (bounded cycle; ≈ the concurrency).
        self.max_starts_per_tick = max(1, max_concurrency)
        self._ramp_tokens = 0.0
        self._ramp_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self.commands_sent = 0
        self.cycle_cpu_s: list[float] = []  # controller CPU per guard/optimizer cycle
        self.optimize_cpu_s: list[float] = []
        self.cycle_spans: list[tuple[float, float]] = []  # process_time (start, end)
        self._last_projection: dict[str, float] = {}

    # -- projection -----------------------------------------------------------------------------

    def projected_w(self, m: MinerState, now: float) -> float:
        h = m.health
        t = h.telemetry
        measured = None if t is None else t.power_w
        if measured is None and t is not None and m.caps is not None and m.caps.read_only:
            measured = m.spec.nameplate_w  # no watt read-back (stock S19): nameplate
        if h.stale(now, self.cfg.stale_after_s) or measured is None:
            return max(m.worst_w, measured or 0.0, m.commanded_w or 0.0)
        if h.implied_w is not None:
            measured = max(measured, h.implied_w)  # it says less than its hashrate needs
        cw = m.commanded_w
        if cw is not None and (now < m.settle_until or h.received_at < m.settle_until):
            return cw if cw < measured else max(measured, cw)
        return measured

    def node_power(self, now: float) -> dict[str, float]:
        rack_w: dict[str, float] = {}
        for rid, ms in self._rack_miners.items():
            rack_w[rid] = sum(self.projected_w(m, now) for m in ms)
        out = dict(rack_w)
        for cid, rids in self._container_racks.items():
            out[cid] = sum(rack_w[r] for r in rids)
        out[self.cfg.site] = sum(rack_w.values())
        return out

    # -- planning -------------------------------------------------------------------------------

    def _may_cycle(self, m: MinerState) -> bool:
        wall = self.clock.wall()
        while m.sleeps and wall - m.sleeps[0] > DAY_S:
            m.sleeps.popleft()
        return len(m.sleeps) < self.cfg.daily_cycle_budget

    def _input(self, m: MinerState, now: float) -> MinerInput:
        curve = m.learner.curve()
        h = m.health
        asleep = m.commanded.sleep if m.commanded is not None else bool(
            h.telemetry is not None and h.telemetry.sleeping)
        caps = m.caps
        uncontrollable = (caps is None or caps.read_only or h.faulty or h.not_following
                          or h.stale(now, self.cfg.stale_after_s))
        if uncontrollable or caps is None:
            return MinerInput(m.spec.id, curve, Actuator.ONOFF, m.spec.min_w, m.spec.max_w,
                              levels=(m.spec.max_w,), asleep=asleep,
                              fixed_w=self.projected_w(m, now))
        levels = tuple(lv.watts for lv in caps.levels)
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
                          caps.sleep_w, caps.can_sleep, asleep, self._may_cycle(m))

    def _mark(self, miner: MinerState | None = None) -> None:
        """Re-plan the miner's rack (or every rack) at the next guard tick."""
        if miner is None:
            self._rack_dirty.update(self._rack_miners)
        else:
            self._rack_dirty.add(miner.spec.rack)

    def _rack_budgets(self, caps: dict[str, Cap], now: float) -> dict[str, float]:
        """Each rack's share of the hierarchy (× target_fraction). Where a parent's cap binds
        (its children's caps do not fit in it) the split follows the children's demand, so
        every rack under it is re-planned."""
        frac = self.cfg.target_fraction
        out: dict[str, float] = {}
        cache: dict[str, list[MinerInput]] = {}

        def inputs(rid: str) -> list[MinerInput]:
            if rid not in cache:
                cache[rid] = [self._input(m, now) for m in self._rack_miners[rid]]
            return cache[rid]

        def racks_of(node: str) -> list[str]:
            return self._container_racks.get(node, [node])

        def node_cap(node: str) -> float:
            return caps[node].watts * frac

        top_caps = [node_cap(n) for n in self._top]
        site_b = node_cap(self.cfg.site)
        if sum(top_caps) <= site_b * (1 + 1e-9) + 1e-6:
            top_share = top_caps
        else:
            top_share = split_budget(
                [(node_cap(n), [i for r in racks_of(n) for i in inputs(r)]) for n in self._top],
                site_b)
            self._rack_dirty.update(self._rack_miners)
        for node, share in zip(self._top, top_share, strict=True):
            if node not in self._container_racks:
                out[node] = share
                continue
            rids = self._container_racks[node]
            kid_caps = [node_cap(r) for r in rids]
            budget = min(node_cap(node), share)
            if sum(kid_caps) <= budget * (1 + 1e-9) + 1e-6:
                shares = kid_caps
            else:
                shares = split_budget([(node_cap(r), inputs(r)) for r in rids], budget)
                self._rack_dirty.update(rids)
            out.update(zip(rids, shares, strict=True))
        return out

    def optimize(self, *, budget_s: float | None = None) -> int:
        """Re-plan the dirty racks for the caps in force (pure computation, no commands),
        over-cap racks first, within `budget_s` of CPU if given. Returns racks re-planned."""
        cpu0 = time.process_time()
        now = self.clock.now()
        caps = self.budgets.caps()
        changed = {n for n, c in caps.items() if abs(c.watts - self._plan_caps.get(n, -1.0)) > 1e-6}
        if self.cfg.site in changed or any(n in self._container_racks for n in changed):
            self._mark()
        self._rack_dirty.update(n for n in changed if n in self._rack_miners)
        self._plan_caps = {n: c.watts for n, c in caps.items()}
        if changed or not self._rack_budget:
            self._rack_budget = self._rack_budgets(caps, now)
        proj = self._last_projection
        order = sorted(self._rack_dirty,
                       key=lambda r: proj.get(r, 0.0) <= caps[r].watts)  # over-cap first
        done = 0
        for rid in order:
            if budget_s is not None and done and time.process_time() - cpu0 > budget_s:
                break
            ms = self._rack_miners[rid]
            plan = allocate([self._input(m, now) for m in ms], self._rack_budget[rid])
            for m, a in zip(ms, plan.allocations, strict=True):
                m.plan = None if a.fixed else a
                m.plan_desired = None if m.plan is None else self._desired_of(m, m.plan)
                if m.plan_desired is not None and m.plan_desired != m.commanded:
                    self._pending.add(m.spec.id)
            self._rack_dirty.discard(rid)
            done += 1
        self.optimize_cpu_s.append(time.process_time() - cpu0)
        return done

    # -- reconciliation and commands ------------------------------------------------------------

    def _desired_of(self, m: MinerState, a: Allocation) -> Desired:
        if a.sleep:
            return Desired(sleep=True)
        caps = m.caps
        assert caps is not None
        if caps.actuator is Actuator.WATTS:
            return Desired(watts=a.watts)
        if caps.actuator is Actuator.ONOFF or not caps.levels:
            return Desired(sleep=False)
        name = min(caps.levels, key=lambda lv: abs(lv.watts - a.watts)).name
        return Desired(level=name)

    def _refill_ramp(self, now: float) -> None:
        rate = self.cfg.ramp_kw_per_min * 1000.0 / 60.0
        if self._ramp_at is None:
            self._ramp_at = now
        self._ramp_tokens = min(rate * max(self.cfg.guard_interval_s, 1.0),
                                self._ramp_tokens + rate * (now - self._ramp_at))
        self._ramp_at = now

    def reconcile(self, now: float) -> int:
        """Send what differs between plan and command: decreases first (racks over their cap
        first, biggest first), then increases within the ramp budget in random order
        (staggered restore); at most `max_starts_per_tick` commands per tick so a cycle stays
        bounded (the rest follow on the next tick). Returns commands started."""
        self._refill_ramp(now)
        over = {n for n, p in self._last_projection.items()
                if p > self._plan_caps.get(n, math.inf)}
        lowers: list[tuple[bool, float, MinerState, Desired, float]] = []
        raises: list[tuple[MinerState, Desired, float, float]] = []
        for mid in list(self._pending):
            m = self.miners[mid]
            a, desired = m.plan, m.plan_desired
            if m.inflight:
                continue  # looked at again when the command is done
            if a is None or desired is None or m.health.faulty or m.caps is None:
                self._pending.discard(mid)
                continue
            prev = m.commanded
            if desired == prev or (
                prev is not None and prev.sleep == desired.sleep and m.commanded_w is not None
                and abs(a.watts - m.commanded_w) < 0.005 * m.spec.nameplate_w
            ):
                self._pending.discard(mid)  # done, or not worth a command (hysteresis)
                continue
            delta = a.watts - self.projected_w(m, now)
            if a.sleep or delta <= 0:
                lowers.append((m.spec.rack not in over, delta, m, desired, a.watts))
            elif delta >= MIN_RAISE_FRACTION * m.spec.nameplate_w or prev is None or prev.sleep:
                raises.append((m, desired, a.watts, delta))
            else:
                self._pending.discard(mid)
        budget = self.max_starts_per_tick
        lowers.sort(key=lambda x: (x[0], x[1]))
        for _, _, m, desired, w in lowers[:budget]:
            self._start(m, desired, w)
        started = min(budget, len(lowers))
        self._rng.shuffle(raises)
        for m, desired, w, delta in raises:
            if self._ramp_tokens <= 0 or started >= budget:
                break
            self._ramp_tokens -= delta
            self._start(m, desired, w)
            started += 1
        return started

    def _start(self, m: MinerState, desired: Desired, planned_w: float) -> None:
        # Commanded state changes now, before the task runs, so this tick's projection
        # already counts it (and the guard does not shed twice for the same watts).
        caps = m.caps
        assert caps is not None
        if self.cfg.dry_run:
            log.info("dry-run: %s -> %s (%.0f W)", m.spec.id, desired, planned_w)
            return
        self._pending.discard(m.spec.id)
        prev = (m.commanded, m.commanded_w, m.settle_until)
        m.inflight = True
        m.commanded, m.commanded_w = desired, planned_w
        m.settle_until = self.clock.now() + caps.settle_s + self.cfg.command_timeout_s
        task = asyncio.get_running_loop().create_task(self._command(m, desired, prev))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, m: MinerState, desired: Desired,
                       prev: tuple[Desired | None, float | None, float]) -> None:
        caps = m.caps
        assert caps is not None
        going_to_sleep = desired.sleep and not (prev[0] is not None and prev[0].sleep)
        t0 = self.clock.now()
        try:
            async with self._sem:
                async with asyncio.timeout(self.cfg.command_timeout_s):
                    tel = await m.driver.apply(desired)
        except (DriverError, TimeoutError) as exc:
            m.commanded, m.commanded_w, m.settle_until = prev
            m.inflight = False
            self._pending.add(m.spec.id)
            self.metrics.controller_commands.labels(m.driver.kind, "error").inc()
            if m.health.record_failure(str(exc), FAULTY_AFTER):
                log.warning("miner %s marked faulty after %d failures: %s", m.spec.id,
                            FAULTY_AFTER, exc)
                self._mark(m)
            else:
                log.info("command to %s failed: %s", m.spec.id, exc)
            return
        now = self.clock.now()
        self.commands_sent += 1
        self.metrics.controller_commands.labels(m.driver.kind, "ok").inc()
        self.metrics.controller_command_seconds.labels(m.driver.kind).observe(now - t0)
        m.health.record_success()
        m.settle_until = now + caps.settle_s
        if going_to_sleep:
            m.sleeps.append(self.clock.wall())
        m.inflight = False
        if m.plan_desired is not None and m.plan_desired != desired:
            self._pending.add(m.spec.id)  # the plan moved on while we were busy
        self._take(m, tel, now, steady=False)
        # Confirm from telemetry once the miner has had time to settle.
        await self.clock.sleep(caps.settle_s + 0.5)
        if m.commanded is desired and not m.inflight:
            await self._poll(m)  # _take checks that the miner followed

    def _pool_implied_w(self, m: MinerState, now: float) -> tuple[float, float] | None:
        """Watts the pool-verified hashrate since the last command settled needs on the
        nameplate curve: (at least, by its POOL_SIGMAS lower bound; as estimated), or None
        without enough shares to say."""
        if self.shares is None or not m.spec.worker:
            return None
        window = min(300.0, now - m.settle_until)
        n = self.shares.shares(m.spec.worker, now, window)
        if window < 60.0 or n < 20:
            return None
        hs = self.shares.hashrate_hs(m.spec.worker, now, window)
        if not hs:
            return None
        # Power grows as hashrate^1.67: a plain estimate from 20-30 shares (a 5-minute window
        # at a 10 s share interval) was 13 % high, and flagged an honest miner "not following",
        # about one check in four. Only the lower bound contradicts the miner.
        low = max(0.0, hs * (1.0 - POOL_SIGMAS / math.sqrt(n)))
        curve = m.nameplate_curve
        return curve.power_for(low / 1e12), curve.power_for(hs / 1e12)

    def _check_following(self, m: MinerState, now: float) -> None:
        """After settling, the miner must draw (by telemetry, and by the hashrate the pool
        sees) no more than what it was commanded; a miner that does not is flagged and
        counted at what it really draws until it follows again."""
        h = m.health
        t = h.telemetry
        cw = m.commanded_w
        if t is None or cw is None or m.caps is None:
            return
        seen = [w for w in (t.power_w, h.implied_w) if w is not None]
        pool = self._pool_implied_w(m, now)
        pool_w = 0.0
        if pool is not None:
            low_w, est_w = pool
            # 10 % benefit of the doubt (unit spread) before the pool contradicts telemetry;
            # past that the pool is the ground truth and the miner counts at its estimate.
            pool_w = 0.9 * low_w
            seen.append(pool_w)
            if low_w > (t.power_w or 0.0) / POWER_LIE_RATIO:
                h.implied_w = max(h.implied_w or 0.0, est_w)
        if not seen:
            return
        measured = max(seen)
        if measured > cw * FOLLOW_TOLERANCE + 50.0:
            if pool is not None and pool_w >= measured:  # the pool's shares decided it
                h.implied_w = max(h.implied_w or 0.0, pool[1])
            if not h.not_following:
                log.warning("miner %s draws %.0f W (telemetry%s), commanded %.0f W: "
                            "not following", m.spec.id, measured,
                            " and pool shares" if pool is not None else "", cw)
            h.not_following = True
            self._mark(m)
        elif h.not_following:
            h.not_following = False
            self._mark(m)

    # -- telemetry ------------------------------------------------------------------------------

    def _take(self, m: MinerState, tel: Telemetry, now: float, *, steady: bool) -> None:
        h = m.health
        old = h.telemetry
        self._rack_hs[m.spec.rack] += (tel.hashrate_ths or 0.0) - (
            (old.hashrate_ths or 0.0) if old is not None else 0.0)
        h.telemetry = tel
        h.received_at = now
        if self.on_telemetry is not None:
            self.on_telemetry(m.spec, tel)
        h.implied_w = None
        if tel.power_w is not None and tel.hashrate_ths and not tel.sleeping:
            need = m.nameplate_curve.power_for(tel.hashrate_ths)
            if tel.power_w < POWER_LIE_RATIO * need:
                if not m.health.not_following:
                    log.warning("miner %s reports %.0f W for %.1f TH/s (needs ≈%.0f W): "
                                "counting the higher figure", m.spec.id, tel.power_w,
                                tel.hashrate_ths, need)
                h.implied_w = need
        if m.commanded is None:  # adopt what the miner runs now (restart: no mass restore)
            if tel.sleeping:
                m.commanded = Desired(sleep=True)
                m.commanded_w = m.caps.sleep_w if m.caps else tel.power_w
            elif tel.target_w is not None and m.caps is not None:
                act = m.caps.actuator
                m.commanded = (Desired(watts=tel.target_w) if act is Actuator.WATTS
                               else Desired(sleep=False) if act is Actuator.ONOFF
                               else Desired(level=tel.level))
                m.commanded_w = tel.target_w
            if m.plan_desired is not None and m.plan_desired != m.commanded:
                self._pending.add(m.spec.id)
        if steady and now >= m.settle_until and not m.inflight:
            self._check_following(m, now)
        if steady and not tel.sleeping and tel.power_w is not None and now >= m.settle_until \
                and h.implied_w is None:
            hr = tel.hashrate_ths
            weight = 1.0
            if self.shares is not None and m.spec.worker and self.shares.shares(
                    m.spec.worker, now, self.shares.window_s) >= 20:
                pool = self.shares.hashrate_hs(m.spec.worker, now)
                if pool is not None:
                    hr, weight = pool / 1e12, 3.0
            if hr is not None:
                m.learner.observe(tel.power_w, hr, weight)
        before = h.thermal_cap_w
        limit = ambient_adjusted_limit(self.cfg.temp_limit_c, self._ambient())
        if thermal_cap(h, limit, m.spec.min_w) != before:
            log.info("miner %s thermal cap %s W (%.1f °C)", m.spec.id, h.thermal_cap_w,
                     tel.max_temp_c or 0.0)
            self._mark(m)

    async def _poll(self, m: MinerState) -> None:
        was_stale = m.health.stale(self.clock.now(), self.cfg.stale_after_s)
        try:
            async with self._sem:
                async with asyncio.timeout(self.cfg.command_timeout_s):
                    if m.caps is None:
                        m.caps = await m.driver.capabilities()
                        self._mark(m)
                    tel = await m.driver.read()
        except (DriverError, TimeoutError) as exc:
            log.debug("telemetry from %s failed: %s", m.spec.id, exc)
            if m.health.stale(self.clock.now(), self.cfg.stale_after_s) != was_stale:
                self._mark(m)
            return
        self._take(m, tel, self.clock.now(), steady=True)
        if was_stale:
            self._mark(m)  # back from stale: it can be planned again

    def poll_due(self, now: float) -> int:
        """Start the telemetry reads that are due (a heap keeps this O(due), staggered)."""
        n = 0
        heap = self._poll_heap
        interval = self.cfg.telemetry_interval_s
        stale = self.cfg.stale_after_s
        while heap and heap[0][0] <= now:
            due, mid = heapq.heappop(heap)
            nxt = due + interval  # keep each miner's phase: polls stay staggered
            if nxt <= now:
                nxt = now + interval * self._rng.random()
            heapq.heappush(heap, (nxt, mid))
            m = self.miners[mid]
            if m.inflight:
                continue  # the command reads back and confirms; skip this round
            if m.health.received_at > -math.inf and now - m.health.received_at > stale:
                self._mark(m)  # just went stale: re-plan with it at worst case
            task = asyncio.get_running_loop().create_task(self._poll(m))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        return n

    # -- the guard ------------------------------------------------------------------------------

    def guard_tick(self) -> None:
        now = self.clock.now()
        caps = self.budgets.caps()
        # Periodic re-plan, spread round-robin so each rack is re-planned every
        # optimizer_interval_s without a CPU spike every 30 s.
        racks = list(self._rack_miners)
        k = max(1, math.ceil(len(racks) * self.cfg.guard_interval_s
                             / self.cfg.optimizer_interval_s))
        for _ in range(min(k, len(racks))):
            self._rack_dirty.add(racks[self._rr % len(racks)])
            self._rr += 1
        self.optimize(budget_s=self.optimize_budget_s)
        self.reconcile(now)
        power = self.node_power(now)
        shed = False
        for node, cap in caps.items():
            if power[node] <= cap.watts:
                continue
            racks = self._racks_under(node)
            if any(r in self._rack_dirty for r in racks):
                continue  # its re-plan is due next tick: no emergency yet
            committed = self._committed_w(racks, now)
            if committed > cap.watts:
                shed |= self._shed(node, cap, committed - cap.watts * self.cfg.target_fraction,
                                   now)
        if shed:
            power = self.node_power(now)
        self._track_over(power, caps, now)
        self._export(power, caps, now)

    def _committed_w(self, racks: list[str], now: float) -> float:
        """Projected power once the planned decreases still queued for dispatch are sent:
        a breach this explains is work in progress, not a reason to shed."""
        total = 0.0
        for r in racks:
            for m in self._rack_miners[r]:
                p = self.projected_w(m, now)
                if m.plan is not None and m.spec.id in self._pending and not m.inflight \
                        and m.health.failures == 0:
                    p = min(p, m.plan.watts)
                total += p
        return total

    def _racks_under(self, node: str) -> list[str]:
        if node == self.cfg.site:
            return list(self._rack_miners)
        return self._container_racks.get(node, [node])

    def _shed(self, node: str, cap: Cap, deficit_w: float, now: float) -> bool:
        """Sleep miners under `node`, least efficient first, until `deficit_w` is covered."""
        ms = [m for r in self._racks_under(node) for m in self._rack_miners[r]]
        cands = [(self._input(m, now), self.projected_w(m, now)) for m in ms
                 if not m.inflight and m.caps is not None and not m.health.faulty]
        by_id = {m.spec.id: m for m in ms}
        freed = 0.0
        acted = False
        for mid in shed_order(cands):
            if freed >= deficit_w:
                break
            m = by_id[mid]
            assert m.caps is not None
            w = self.projected_w(m, now)
            self._start(m, Desired(sleep=True), m.caps.sleep_w)
            m.plan = Allocation(mid, True, m.caps.sleep_w, 0.0)
            m.plan_desired = Desired(sleep=True)
            self._mark(m)
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
        self._last_projection = power

    def _export(self, power: dict[str, float], caps: dict[str, Cap], now: float) -> None:
        met = self.metrics
        pool_due = self.shares is not None and now - self._last_pool_export >= 10.0
        for rid in self._rack_miners:
            met.rack_power_watts.labels(rid).set(power[rid])
            met.rack_cap_watts.labels(rid).set(caps[rid].watts)
            if self.shares is None:
                met.rack_hashrate.labels(rid).set(self._rack_hs[rid] * 1e12)
            elif pool_due:
                met.rack_hashrate.labels(rid).set(self.rack_pool_hashrate_hs(rid, now))
        if pool_due:
            self._last_pool_export = now
        met.grid_signal_age.set(self.budgets.grid_signal_age())

    def rack_pool_hashrate_hs(self, rack: str, now: float) -> float:
        """The rack's hashrate as the pool sees it (firmware figure where no shares yet)."""
        total = 0.0
        for m in self._rack_miners[rack]:
            pool = (self.shares.hashrate_hs(m.spec.worker, now)
                    if self.shares is not None and m.spec.worker else None)
            if pool is not None:
                total += pool
            elif m.health.telemetry is not None and m.health.telemetry.hashrate_ths:
                total += m.health.telemetry.hashrate_ths * 1e12
        return total

    # -- lifecycle and the API surface ----------------------------------------------------------

    async def start(self) -> None:
        """Read every miner once (capabilities + telemetry) and adopt its present state."""
        await asyncio.gather(*(self._poll(m) for m in self.miners.values()))
        now = self.clock.now()
        for m in self.miners.values():
            m.next_poll = now + self._rng.uniform(0.0, self.cfg.telemetry_interval_s)
        self._poll_heap = sorted((m.next_poll, mid) for mid, m in self.miners.items())

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
            await self.clock.sleep(self.cfg.guard_interval_s)

    async def stop(self, *, settle_timeout_s: float = 30.0) -> None:
        """Leave the site at its safe cap (style rule 3), then stop all loops."""
        self._stopping.set()
        self.budgets.force_safe(True)
        self._mark()
        self.optimize()
        # Send the safe plan; a miner busy with an earlier command gets its safe setting when
        # that one is done. Wait for the commands themselves (not for their confirmation reads).
        deadline = self.clock.now() + settle_timeout_s
        while True:
            now = self.clock.now()
            self._ramp_tokens, self._ramp_at = 0.0, now  # no increases on the way out
            self.reconcile(now)
            if not any(m.inflight for m in self.miners.values()) or now >= deadline:
                break
            await self.clock.sleep(0.1)
        for t in list(self._tasks):
            t.cancel()
        for m in self.miners.values():
            try:
                await m.driver.close()
            except DriverError as exc:
                log.debug("closing %s: %s", m.spec.id, exc)

    def set_cap(self, node: str, cap_kw: float | None, *, until: float | None = None) -> None:
        """The API method for budget updates (validated; takes effect at the next guard tick)."""
        self.budgets.set_cap(node, cap_kw, until=until)

    def clear_faulty(self, miner_id: str) -> None:
        self.miners[miner_id].health.clear_faulty()
        self._mark(self.miners[miner_id])

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
        self._allowed = {cfg.site: cfg.over_cap_allowed_s}
        self._allowed |= {c.id: c.over_cap_allowed_s for c in cfg.containers}
        self._allowed |= {r.id: r.over_cap_allowed_s for r in cfg.racks}
        self._mark()

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
        power = self.node_power(now)
        nodes = []
        for node, cap in caps.items():
            since = self._over_since.get(node)
            if node in self._rack_miners:
                hr = sum((m.health.telemetry.hashrate_ths or 0.0) for m in
                         self._rack_miners[node] if m.health.telemetry is not None)
            else:
                hr = 0.0
            nodes.append(NodeStatus(node, cap.watts, power[node], hr,
                                    0.0 if since is None else now - since))
        return FleetStatus(
            time=now, nodes=tuple(nodes), miners=len(self.miners),
            stale=sum(m.health.stale(now, self.cfg.stale_after_s) for m in self.miners.values()),
            faulty=sum(m.health.faulty for m in self.miners.values()),
            asleep=sum(bool(m.commanded and m.commanded.sleep) for m in self.miners.values()),
            commands_sent=self.commands_sent,
        )
