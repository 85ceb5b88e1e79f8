"""Dispatcher: commands to the miners, their read-back and retries, and the telemetry polls.

- `poll_due` starts the telemetry reads that are due, each miner every `telemetry_interval_s`,
  staggered (a heap keeps each miner's phase); `take` folds a reading into the miner's state
  (adopting what a miner runs at start: no mass restore after a restart; flagging watts
  implausibly low for the hashrate; learning the miner's curve).
- `reconcile` sends what differs between plan and command: decreases at once (over-cap racks
  first), increases through a site-wide ramp limit (a kW/min token bucket) in random order,
  a staggered restore; bounded per tick (`max_starts_per_tick`).
- `_command` applies one setting through the driver (which reads it back), counts failures
  (faulty after FAULTY_AFTER in a row) and confirms from telemetry once the miner settled;
  after settling, a miner drawing more than commanded (by telemetry or by the pool's shares)
  is flagged "not following" and counted at what it really draws.
"""



from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from poold.fleet.clock import Clock
from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    DriverTimeout,
    FastSleep,
    PowerRead,
    Telemetry,
)
from poold.fleet.health import ShareRateEstimator, ambient_adjusted_limit, thermal_cap
from poold.fleet.inventory import FleetConfig, MinerSpec
from poold.fleet.planner import Planner
from poold.fleet.policy import Actuator
from poold.fleet.projection import Projection
from poold.fleet.state import MinerState
from poold.metrics import Metrics

log = logging.getLogger(__name__)

FAULTY_AFTER = 5
FOLLOW_TOLERANCE = 1.10  # measured may exceed the commanded watts by 10 % (+50 W) after settle
MIN_RAISE_FRACTION = 0.02  # don't send an increase smaller than 2 % of nameplate (churn)
POWER_LIE_RATIO = 0.75  # reported watts below 75 % of what the hashrate needs: not believed
# The pool's hashrate of a miner is a count of shares (relative error ≈ 1/√n): it contradicts
# the miner only with its lower bound at this many standard errors.
POOL_SIGMAS = 2.0
SETTLED_FRACTION = 0.03  # a reading within 3 % (or 50 W) of the command: settled
WARN_EVERY_S = 60.0  # at most one WARNING a minute per miner about the same trouble
#: A planned increase: (miner, setting, planned watts, watts above its projection).
Raise = tuple[MinerState, Desired, float, float]


def settle_bound(caps: Capabilities, desired: Desired, prev: Desired | None) -> float:
    """The longest the firmware takes to reach `desired` from `prev` (the driver's maxima,
    from its vendor's documentation): to sleep, to wake, or to a new target or level."""
    if desired.sleep:
        return caps.sleep_settle_s
    if prev is not None and prev.sleep:
        return caps.wake_settle_s
    return caps.settle_s


def converged(m: MinerState, tel: Telemetry) -> bool:
    """The reading shows the commanded state reached (settled before its bound)."""
    c, cw = m.commanded, m.commanded_w
    if c is None or m.caps is None:
        return False
    if c.sleep:
        return tel.sleeping and (tel.power_w is None or tel.power_w <= m.caps.asleep_w)
    if tel.sleeping or tel.power_w is None or cw is None:
        return False
    return abs(tel.power_w - cw) <= max(SETTLED_FRACTION * cw, 50.0)


def reason(exc: BaseException, timeout_s: float) -> str:
    """What went wrong, never empty (asyncio's TimeoutError has no message)."""
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout_s:g} s"
    return str(exc) or exc.__class__.__name__


class Dispatcher:
    def __init__(self, cfg: FleetConfig, clock: Clock, miners: Mapping[str, MinerState],
                 planner: Planner, proj: Projection, metrics: Metrics, *,
                 shares: ShareRateEstimator | None, rng: random.Random,
                 max_concurrency: int,
                 ambient_c: Callable[[], float | None],
                 on_telemetry: Callable[[MinerSpec, Telemetry], None] | None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.miners = miners
        self.planner = planner
        self.proj = proj
        self.metrics = metrics
        self.shares = shares
        self._rng = rng
        self._ambient = ambient_c
        self.on_telemetry = on_telemetry
        self._sem = asyncio.Semaphore(max_concurrency)
        #: Commands started per guard tick at most (bounded cycle; ≈ the concurrency).
        self.max_starts_per_tick = max(1, max_concurrency)
        self._ramp_tokens = 0.0
        self._ramp_at: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.commands_sent = 0
        self._read_counters: dict[tuple[str, str], Any] = {}
        self.commands_failed = 0
        self.rack_hs: dict[str, float] = dict.fromkeys(proj.topo.rack_miners, 0.0)
        #: Filters the increases `reconcile` may start (the grid response's slow step).
        self.admit: Callable[[list[Raise], float], list[Raise]] | None = None
        #: True while the grid response's fast step has the firmware's attention (until its
        #: deadline): only sleeps are sent, routine reads skip a round.
        self.quiet: Callable[[float], bool] | None = None
        #: Told when a sleep is acknowledged (the grid response times the confirming read
        #: of its fast step's sleeps from it).
        self.on_fast_ack: Callable[[MinerState, float], None] | None = None
        self._poll_heap: list[tuple[float, str]] = sorted(
            (m.next_poll, mid) for mid, m in miners.items())

    def _over(self, m: MinerState, over: set[str]) -> bool:
        """Its rack, its container or the site is over its cap (a decrease cannot wait)."""
        if not over:
            return False
        topo = self.proj.topo
        rack = m.spec.rack
        return rack in over or topo.site in over or any(
            rack in rids for cid, rids in topo.container_racks.items() if cid in over)

    def reset_poll_phases(self, now: float) -> None:
        """Spread the next polls over one interval from `now` (after the start-up read)."""
        for m in self.miners.values():
            m.next_poll = now + self._rng.uniform(0.0, self.cfg.telemetry_interval_s)
        self._poll_heap = sorted((m.next_poll, mid) for mid, m in self.miners.items())

    def hold_increases(self, now: float) -> None:
        """No increases from now on (shutdown: the way out only goes down)."""
        self._ramp_tokens, self._ramp_at = 0.0, now

    def cancel_all(self) -> list[asyncio.Task[None]]:
        """Cancel every command and poll in flight; the caller awaits the returned tasks."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        return tasks

    @property
    def busy(self) -> bool:
        return any(m.inflight for m in self.miners.values())

    def refill_ramp(self, now: float) -> None:
        rate = self.cfg.ramp_kw_per_min * 1000.0 / 60.0
        if self._ramp_at is None:
            self._ramp_at = now
        self._ramp_tokens = min(rate * max(self.cfg.guard_interval_s, 1.0),
                                self._ramp_tokens + rate * (now - self._ramp_at))
        self._ramp_at = now

    def reconcile(self, now: float, projection: Mapping[str, float]) -> int:
        """Send what differs between plan and command: decreases first (racks over their cap
        first, biggest first), then increases within the ramp budget in random order
        (staggered restore); at most `max_starts_per_tick` commands per tick so a cycle stays
        bounded (the rest follow on the next tick). Returns commands started."""
        self.refill_ramp(now)
        quiet = self.quiet is not None and self.quiet(now)
        over = {n for n, p in projection.items()
                if p > self.planner.plan_caps.get(n, math.inf)}
        lowers: list[tuple[bool, float, MinerState, Desired, float]] = []
        raises: list[Raise] = []
        for mid in list(self.planner.pending):
            m = self.miners[mid]
            a, desired = m.plan, m.plan_desired
            if m.inflight or m.health.backing_off(now):
                continue  # looked at again when the command is done / the back-off is over
            if a is None or desired is None or m.caps is None:
                self.planner.pending.discard(mid)
                continue
            if quiet and not a.sleep:
                continue  # only sleeps until the fast step's deadline
            prev = m.commanded
            if desired == prev or (
                prev is not None and prev.sleep == desired.sleep and m.commanded_w is not None
                and abs(a.watts - m.commanded_w) < 0.005 * m.spec.nameplate_w
            ):
                self.planner.pending.discard(mid)  # done, or not worth a command (hysteresis)
                continue
            delta = a.watts - self.proj.miner_w(m, now)
            settling = now < m.settle_until or m.health.received_at < m.settle_until
            if settling and not (a.sleep or (delta < 0 and self._over(m, over))):
                # One new target per settle period, and not before a reading has shown where
                # the last one got to (the "not following" verdict is made on it): pending.
                continue
            if a.sleep or delta <= 0:
                lowers.append((m.spec.rack not in over, delta, m, desired, a.watts))
            elif delta >= MIN_RAISE_FRACTION * m.spec.nameplate_w or prev is None or prev.sleep:
                raises.append((m, desired, a.watts, delta))
            else:
                self.planner.pending.discard(mid)
        budget = self.max_starts_per_tick
        lowers.sort(key=lambda x: (x[0], x[1]))
        for _, _, m, desired, w in lowers[:budget]:
            self.start(m, desired, w)
        started = min(budget, len(lowers))
        self._rng.shuffle(raises)
        if self.admit is not None and raises:
            raises = self.admit(raises, now)
        for m, desired, w, delta in raises:
            if self._ramp_tokens <= 0 or started >= budget:
                break
            self._ramp_tokens -= delta
            self.start(m, desired, w)
            started += 1
        return started

    def start(self, m: MinerState, desired: Desired, planned_w: float, *,
              fast: bool = False) -> None:
        """Send `desired` to `m` in the background. `fast` (a sleep from the grid response's
        fast step): the driver's `sleep_now` alone where it has one (FastSleep), confirmed by
        the read that follows the settle time instead of reads around the command."""
        # Commanded state changes now, before the task runs, so this tick's projection
        # already counts it (and the guard does not shed twice for the same watts).
        caps = m.caps
        assert caps is not None
        if self.cfg.dry_run:
            log.info("dry-run: %s -> %s (%.0f W)", m.spec.id, desired, planned_w)
            return
        self.planner.pending.discard(m.spec.id)
        prev = (m.commanded, m.commanded_w, m.settle_until)
        m.inflight = True
        m.commanded, m.commanded_w = desired, planned_w
        m.settle_until = self.clock.now() + settle_bound(caps, desired, prev[0]) \
            + self.cfg.command_timeout_s
        task = asyncio.get_running_loop().create_task(self._command(
            m, desired, prev, fast=fast and desired.sleep and isinstance(m.driver, FastSleep)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _command(self, m: MinerState, desired: Desired,
                       prev: tuple[Desired | None, float | None, float], *,
                       fast: bool = False) -> None:
        caps = m.caps
        assert caps is not None
        going_to_sleep = desired.sleep and not (prev[0] is not None and prev[0].sleep)
        t0 = self.clock.now()
        tel: Telemetry | None = None
        try:
            async with self._sem:
                async with asyncio.timeout(self.cfg.command_timeout_s):
                    if fast and isinstance(m.driver, FastSleep):
                        await m.driver.sleep_now()
                    else:
                        tel = await m.driver.apply(desired)
        except (DriverError, TimeoutError) as exc:
            m.commanded, m.commanded_w, m.settle_until = prev
            m.inflight = False
            self.planner.pending.add(m.spec.id)
            self.commands_failed += 1
            result = "timeout" if isinstance(exc, TimeoutError) else "error"
            self.metrics.controller_commands.labels(m.driver.kind, result).inc()
            why = reason(exc, self.cfg.command_timeout_s)
            now = self.clock.now()
            if m.health.record_failure(why, FAULTY_AFTER, now):
                log.warning("miner %s marked faulty after %d failed commands (last: %s); "
                            "tried again in %.0f s", m.spec.id, FAULTY_AFTER, why,
                            m.health.backoff_s())
                self.planner.mark(m)
            else:
                self.warn(m, now, "command %s to miner %s failed: %s; tried again in %.0f s",
                          desired, m.spec.id, why, m.health.backoff_s())
            return
        now = self.clock.now()
        self.commands_sent += 1
        self.metrics.controller_commands.labels(m.driver.kind, "ok").inc()
        self.metrics.controller_command_seconds.labels(m.driver.kind).observe(now - t0)
        if m.health.record_success():
            log.info("miner %s takes commands again: no longer faulty", m.spec.id)
        bound = settle_bound(caps, desired, prev[0])
        m.settle_until = now + bound
        if going_to_sleep:
            m.sleeps.append(self.clock.wall())
            m.slept_at = now
        elif m.early_wake is not None and not desired.sleep and prev[0] is not None \
                and prev[0].sleep:
            # Woken before its min_sleep_s dwell because the cap allowed nothing else
            # (docs/FLEET.md "Minimum dwell"): a spent cycle the operator should see.
            self.metrics.rack_early_wakes.labels(m.spec.rack).inc()
            log.info("miner %s woken before its dwell: %s", m.spec.id, m.early_wake)
            m.early_wake = None
        m.inflight = False
        if m.plan_desired is not None and m.plan_desired != desired:
            self.planner.pending.add(m.spec.id)  # the plan moved on while we were busy
        if tel is not None:
            self.take(m, tel, now, steady=False)
        if desired.sleep and self.on_fast_ack is not None:
            self.on_fast_ack(m, now)
        # Confirm from telemetry once the miner has had time to settle.
        await self.clock.sleep(bound + 0.5)
        if m.commanded is desired and not m.inflight and not (
                self.quiet is not None and self.quiet(self.clock.now())):
            await self.poll(m)  # _take checks that the miner followed (else the next poll)

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
        limit = cw * FOLLOW_TOLERANCE + 50.0
        if m.commanded is not None and m.commanded.sleep and t.sleeping:
            limit = max(limit, m.caps.asleep_w)  # as `converged` counts it asleep
        if measured > limit:
            if pool is not None and pool_w >= measured:  # the pool's shares decided it
                h.implied_w = max(h.implied_w or 0.0, pool[1])
            if not h.not_following:
                log.warning("miner %s draws %.0f W (telemetry%s), commanded %.0f W: "
                            "not following", m.spec.id, measured,
                            " and pool shares" if pool is not None else "", cw)
            h.not_following = True
            self.planner.mark(m)
        elif h.not_following:
            h.not_following = False
            self.planner.mark(m)

    def take(self, m: MinerState, tel: Telemetry, now: float, *, steady: bool) -> None:
        h = m.health
        old = h.telemetry
        self.rack_hs[m.spec.rack] += (tel.hashrate_ths or 0.0) - (
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
                self.planner.pending.add(m.spec.id)
        if steady and h.faulty and not h.backing_off(now):
            # Its back-off is over: plan it again; with nothing to command, a good reading is
            # the proof it answers correctly again.
            if m.plan_desired is not None and m.plan_desired == m.commanded:
                h.record_success()
                log.info("miner %s answers correctly again: no longer faulty", m.spec.id)
            self.planner.mark(m)
        if steady and now < m.settle_until and not m.inflight and converged(m, tel):
            m.settle_until = now  # its meter is there: settled, before the bound
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
            self.planner.mark(m)

    def warn(self, m: MinerState, now: float, msg: str, *args: object) -> None:
        """A WARNING about this miner, at most one a minute (the rest at DEBUG)."""
        if now - m.warned_at >= WARN_EVERY_S:
            m.warned_at = now
            log.warning(msg, *args)
        else:
            log.debug(msg, *args)

    async def poll(self, m: MinerState) -> None:
        was_stale = m.health.stale(self.clock.now(), self.cfg.stale_after_s)
        call = "read"
        try:
            async with self._sem:
                async with asyncio.timeout(self.cfg.command_timeout_s):
                    if m.caps is None:
                        call = "capabilities"
                        m.caps = await m.driver.capabilities()
                        self.planner.mark(m)
                        call = "read"
                    tel = await m.driver.read()
        except (DriverError, TimeoutError) as exc:
            now = self.clock.now()
            self._count_read(m, "timeout" if isinstance(exc, TimeoutError | DriverTimeout)
                             else "error")
            m.read_failures += 1
            self.warn(m, now, "miner %s: telemetry %s failed (%d in a row): %s; counted at its "
                      "worst case %.0f W until it answers", m.spec.id, call, m.read_failures,
                      reason(exc, self.cfg.command_timeout_s), m.worst_w)
            if m.health.stale(now, self.cfg.stale_after_s) != was_stale:
                self.planner.mark(m)
            return
        now = self.clock.now()
        self._count_read(m, "ok")
        if m.read_failures:
            log.info("miner %s: telemetry back after %d failed reads", m.spec.id,
                     m.read_failures)
            m.read_failures = 0
            m.warned_at = -math.inf
        self.take(m, tel, now, steady=True)
        if was_stale:
            self.planner.mark(m)  # back from stale: it can be planned again

    async def poll_power(self, m: MinerState) -> None:
        """The miner's watts alone where its driver has a documented power-only call
        (PowerRead), a full `poll` otherwise. The reading's other fields stay as last read;
        the next routine poll replaces them."""
        t = m.health.telemetry
        if not isinstance(m.driver, PowerRead) or t is None:
            await self.poll(m)
            return
        try:
            async with self._sem:
                async with asyncio.timeout(self.cfg.command_timeout_s):
                    watts = await m.driver.read_power()
        except (DriverError, TimeoutError) as exc:
            self._count_read(m, "timeout" if isinstance(exc, TimeoutError | DriverTimeout)
                             else "error")
            self.warn(m, self.clock.now(), "miner %s: power read failed: %s", m.spec.id,
                      reason(exc, self.cfg.command_timeout_s))
            return
        self._count_read(m, "ok")
        now = self.clock.now()
        if m.health.telemetry is t:  # not replaced by a full reading meanwhile
            m.health.telemetry = dataclasses.replace(t, power_w=watts, time=time.monotonic())
            m.health.received_at = now

    def _count_read(self, m: MinerState, result: str) -> None:
        key = (m.driver.kind, result)
        child = self._read_counters.get(key)
        if child is None:
            child = self._read_counters[key] = self.metrics.telemetry_reads.labels(*key)
        child.inc()

    def poll_due(self, now: float) -> int:
        """Start the telemetry reads that are due (a heap keeps this O(due), staggered)."""
        n = 0
        heap = self._poll_heap
        interval = self.cfg.telemetry_interval_s
        stale = self.cfg.stale_after_s
        quiet = self.quiet is not None and self.quiet(now)
        while heap and heap[0][0] <= now:
            due, mid = heapq.heappop(heap)
            nxt = due + interval  # keep each miner's phase: polls stay staggered
            if nxt <= now:
                nxt = now + interval * self._rng.random()
            heapq.heappush(heap, (nxt, mid))
            m = self.miners[mid]
            if m.health.received_at > -math.inf and now - m.health.received_at > stale:
                self.planner.mark(m)  # just went stale: re-plan with it at worst case
            if m.inflight or quiet:
                continue  # the command reads back and confirms / the fast step: skip a round
            task = asyncio.get_running_loop().create_task(self.poll(m))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1
        return n

