"""Grid response: a lower site level from the grid operator (or the loss of its signal) met on
the miners' own meters within `[fleet.grid_signal] response_s`, then the hashrate given back.

Two speeds (the pure rules are in poold.fleet.fast_step):
- **fast step**, at the guard tick that first sees the site cap drop because of the grid signal
  (a lower level, or heartbeat/ttl lost → `safe_cap_kw`): the smallest set of miners whose
  sleep brings the projected site under the level with a margin is chosen from a precomputed
  order and all their sleep commands start at once, in parallel: each the firmware's one
  sleep call (`FastSleep.sleep_now`, no reads around it), and until the deadline the
  dispatcher sends nothing else and skips routine reads (`quiet`), so a few thousand sleeps
  are not queued behind a few thousand reads and watt targets. The deadline is judged on the
  meters, not on the commands: a sleep acknowledged late still helps (each command keeps the
  usual `command_timeout_s`; cutting it at the deadline would only spend a retry and count a
  failure towards "faulty"), and the miners still drawing at the deadline are named as late.
  Raises and wakes are held while the meters are over the level.
- **deadline**: every `WATCH_S` the site's metered power (each miner's last reading; the worst
  case for a blind one) is checked against the level. Each slept miner is read `FIRST_READ_S`
  after its sleep was acknowledged (the dispatcher tells, `on_fast_ack`), then every
  `READ_EVERY_S` until its meter shows the sleep: its watts alone where the firmware
  documents a power-only call (`PowerRead`: one request instead of a full reading's
  several), at most `read_slots` at a time, so that at a few thousand miners the site is
  seen under the level on telemetry about when it is on the meters, and the reads leave the
  sleeps still in flight most of the dispatcher's concurrency. The time from the signal to
  the site under the level is `poold_grid_response_seconds`; past `response_s` the event is
  counted in `poold_grid_response_misses_total` and logged once with the miners that were
  late.
- **slow step**: once the meters are under the level the planner's plan (equal marginal
  hashrate under the cap) is dispatched as usual, but every raise or wake is admitted only
  while the site's envelope (each miner at the higher of its reading and its command) stays
  under the level with margin: decreases first, the wakes as the meters make room.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from poold.fleet.budgets import Budgets, Cap, Source
from poold.fleet.clock import Clock
from poold.fleet.drivers.base import Desired
from poold.fleet.fast_step import FastStep, Raise, SleepCandidate, SleepOrder, admit_raises
from poold.fleet.inventory import FleetConfig
from poold.fleet.policy import Allocation
from poold.fleet.state import MinerState
from poold.metrics import Metrics

log = logging.getLogger(__name__)

#: Reads one miner's telemetry now (the dispatcher's power-only read, else a full poll).
PollFn = Callable[[MinerState], Coroutine[Any, Any, None]]
#: Starts a sleep command on one miner.
SleepFn = Callable[[MinerState], None]

#: The fast step aims this far under the level (fraction of it): telemetry and the unit's
#: own noise.
MARGIN = 0.03
#: The slow step keeps its envelope this far under the level.
RAISE_MARGIN = 0.01
#: How often the site's metered power is checked while the deadline runs; when a slept
#: miner is first read after its sleep was acknowledged (sleep takes 1-3 s on the
#: firmware: https://docs.luxor.tech/firmware/api/luxminer/curtail), and how often after.
WATCH_S = 0.25
FIRST_READ_S = 1.5
READ_EVERY_S = 1.0
#: The sleep order is rebuilt at most this often (one sort of the fleet).
ORDER_EVERY_S = 10.0
#: Confirming reads in flight at most (a share of the dispatcher's concurrency: the guard
#: sets `read_slots` to half of it, at most this).
CONFIRM_READS = 256
#: After a miss, keep watching this long for the time the meters did get under the level.
WATCH_MAX_S = 120.0


@dataclass(slots=True)
class GridEvent:
    """One response: the level, when it was asked for, and what the fast step did."""

    level_w: float
    asked_at: float
    step: FastStep
    plan_ms: float
    slept: tuple[str, ...]
    under_at: float | None = None
    missed: bool = False
    late: list[str] = field(default_factory=list)
    slept_set: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.slept_set = frozenset(self.slept)

    @property
    def response_s(self) -> float | None:
        return None if self.under_at is None else self.under_at - self.asked_at


def metered_w(m: MinerState, now: float, stale_after_s: float) -> float:
    """What the miner's own meter last said (worst case if blind or silent on watts)."""
    t = m.health.telemetry
    if t is None or t.power_w is None or m.health.stale(now, stale_after_s):
        return max(m.worst_w, m.commanded_w or 0.0)
    return max(t.power_w, m.health.implied_w or 0.0)


class GridResponse:
    """Owned by the guard: `tick` before planning, `admit` on the dispatcher's raises."""

    def __init__(self, cfg: FleetConfig, clock: Clock, budgets: Budgets,
                 miners: Mapping[str, MinerState], metrics: Metrics) -> None:
        self.cfg = cfg
        self.clock = clock
        self.budgets = budgets
        self.miners = miners
        self.metrics = metrics
        self._order: SleepOrder | None = None
        self._order_at = -1e18
        self._last_level: float | None = None
        #: False: no fast step and no gate on raises (the benchmark's baseline: the cap is
        #: met by lower watt targets alone).
        self.enabled = True
        self.hold = False  # raises held: the meters are not yet under the level
        self.event: GridEvent | None = None
        self.events = 0
        self._task: asyncio.Task[None] | None = None
        self._reads: set[asyncio.Task[None]] = set()
        self.read_slots = asyncio.Semaphore(CONFIRM_READS)
        self.poll: PollFn | None = None
        #: Re-plan a miner's rack (the planner's mark).
        self.planner_mark: Callable[[MinerState], None] = lambda m: None
        self.start_sleep: SleepFn | None = None
        self._gated_level: float | None = None  # the grid's level while it binds the site

    # -- the fast step ----------------------------------------------------------------------

    def _sleep_order(self, now: float) -> SleepOrder:
        if self._order is None or now - self._order_at >= ORDER_EVERY_S:
            cands = []
            for m in self.miners.values():
                caps = m.caps
                if caps is None or not caps.can_sleep or caps.read_only:
                    continue
                t = m.health.telemetry
                w = (t.power_w if t is not None and t.power_w else None) or m.spec.nameplate_w
                ths = m.learner.curve().hashrate(w)
                cands.append(SleepCandidate(m.spec.id, m.spec.rack, ths / w, caps.sleep_w,
                                            self._may_cycle(m)))
            self._order = SleepOrder(cands)
            self._order_at = now
        return self._order

    def _may_cycle(self, m: MinerState) -> bool:
        wall = self.clock.wall()
        return sum(1 for t in m.sleeps if wall - t <= 86400.0) < self.cfg.daily_cycle_budget

    def tick(self, site_cap: Cap, now: float) -> None:
        """Start a fast step when the grid signal (or its loss) has just lowered the site cap."""
        prev, self._last_level = self._last_level, site_cap.watts
        grid = site_cap.source is Source.GRID or (
            site_cap.source is Source.SAFE and self.budgets.grid_lost())
        self._gated_level = site_cap.watts if grid and self.enabled else None
        if not self.enabled or prev is None or site_cap.watts >= prev - 1e-6 or not grid:
            self._sleep_order(now)  # kept fresh on the ticks without an event
            return
        asked = self.budgets.grid_changed_at(site_cap.source)
        # The event uses the order as it stands (at most ORDER_EVERY_S + a tick old): its
        # sort is not on the way between the signal and the sleep commands.
        order = self._order if self._order is not None else self._sleep_order(now)
        self.fast_step(order, site_cap.watts, asked, now)

    def fast_step(self, order: SleepOrder, level_w: float, asked_at: float, now: float) -> None:
        t0 = time.perf_counter()
        stale = self.cfg.stale_after_s
        power: dict[str, float] = {}
        unavailable: set[str] = set()
        site = 0.0
        for mid, m in self.miners.items():
            w = metered_w(m, now, stale)
            if m.commanded_w is not None and not (m.commanded and m.commanded.sleep):
                w = max(w, m.commanded_w)  # a raise under way counts at its new setting
            power[mid] = w
            site += w
            if (m.inflight or m.caps is None or m.health.faulty
                    or (m.commanded is not None and m.commanded.sleep)
                    or m.health.stale(now, stale)):
                unavailable.add(mid)
        step = order.choose(power, level_w, margin_w=MARGIN * level_w, unavailable=unavailable,
                            site_w=site)
        plan_ms = (time.perf_counter() - t0) * 1000.0
        ev = GridEvent(level_w, asked_at, step, plan_ms, step.sleep)
        self.event = ev
        self.events += 1
        self.hold = True
        assert self.start_sleep is not None
        for mid in step.sleep:
            m = self.miners[mid]
            assert m.caps is not None
            m.plan = Allocation(mid, True, m.caps.sleep_w, 0.0)
            m.plan_desired = Desired(sleep=True)
            self.start_sleep(m)
        log.warning("grid: site level %.1f kW (was %.1f kW metered): fast step sleeps %d "
                    "miners (planned in %.1f ms), deadline %g s%s", level_w / 1000.0,
                    site / 1000.0, len(step.sleep), plan_ms, self.cfg.grid_response_s,
                    "" if step.feasible else "; not enough to sleep to reach the level")
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._watch(ev))

    # -- the deadline, on the meters -------------------------------------------------------

    def quiet(self, now: float) -> bool:
        """The fast step's sleeps have the firmware (and this process) to themselves: from
        the signal until the meters are under the level or the deadline has passed, the
        dispatcher sends no other command and skips routine reads. At a few thousand miners
        those would otherwise queue with the sleeps on the same sockets and CPU."""
        ev = self.event
        return (self.hold and ev is not None and ev.step.feasible and ev.under_at is None
                and now < ev.asked_at + self.cfg.grid_response_s)

    def cancel(self) -> list[asyncio.Task[None]]:
        """Stop watching (shutdown); the caller awaits the returned tasks."""
        tasks = [t for t in [self._task, *self._reads] if t is not None]
        for t in tasks:
            t.cancel()
        return tasks

    def sleep_acked(self, m: MinerState, acked_at: float) -> None:
        """A sleep was acknowledged: if it is the live event's, read the miner
        `FIRST_READ_S` later and on until its meter shows the sleep (the sleep call alone
        reads nothing back)."""
        ev = self.event
        if ev is None or ev.under_at is not None or m.spec.id not in ev.slept_set \
                or self.poll is None:
            return
        task = asyncio.get_running_loop().create_task(self._confirm(ev, m, acked_at))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _confirm(self, ev: GridEvent, m: MinerState, acked_at: float) -> None:
        assert self.poll is not None
        stale = self.cfg.stale_after_s
        due = acked_at + FIRST_READ_S
        while True:
            await self.clock.sleep(due - self.clock.now())
            if self.event is not ev or ev.under_at is not None or m.inflight \
                    or self.clock.now() - ev.asked_at > WATCH_MAX_S:
                return  # the site is seen under the level (or a newer event, or a command)
            async with self.read_slots:
                await self.poll(m)
            now = self.clock.now()
            if m.caps is None or metered_w(m, now, stale) <= m.caps.asleep_w:
                return
            due = now + READ_EVERY_S

    def site_metered_w(self, now: float) -> float:
        stale = self.cfg.stale_after_s
        return sum(metered_w(m, now, stale) for m in self.miners.values())

    async def _watch(self, ev: GridEvent) -> None:
        deadline = ev.asked_at + self.cfg.grid_response_s
        try:
            while True:
                now = self.clock.now()
                if self.site_metered_w(now) <= ev.level_w:
                    ev.under_at = now
                    break
                if now > deadline and not ev.missed:
                    self._miss(ev, now)
                if now - ev.asked_at > WATCH_MAX_S:
                    break
                await self.clock.sleep(WATCH_S)
        finally:
            self.hold = False
        # The fast step's sleeps are the first half of a planned response, not churn: the
        # slow step may wake them before `min_sleep_s` to give the hashrate back.
        for mid in ev.slept:
            self.miners[mid].slept_at = -math.inf
            self.planner_mark(self.miners[mid])
        if ev.under_at is not None:
            took = ev.under_at - ev.asked_at
            self.metrics.grid_response_seconds.set(took)
            if took > self.cfg.grid_response_s and not ev.missed:
                self._miss(ev, ev.under_at)
            log.info("grid: site under %.1f kW on the meters %.1f s after the signal",
                     ev.level_w / 1000.0, took)

    def _miss(self, ev: GridEvent, now: float) -> None:
        ev.missed = True
        stale = self.cfg.stale_after_s
        ev.late = [mid for mid in ev.slept
                   if (c := self.miners[mid].caps) is None
                   or metered_w(self.miners[mid], now, stale) > c.asleep_w]
        self.metrics.grid_response_misses.inc()
        log.warning("grid: site not under %.1f kW on the meters within %g s (%.1f kW now); "
                    "late: %s", ev.level_w / 1000.0, self.cfg.grid_response_s,
                    self.site_metered_w(now) / 1000.0,
                    ", ".join(ev.late[:20]) + (f" and {len(ev.late) - 20} more"
                                               if len(ev.late) > 20 else "")
                    or "none of the slept miners (others drew more)")

    # -- the slow step: raises only under the level ------------------------------------------

    def admit(self, raises: Sequence[tuple[MinerState, Desired, float, float]],
              now: float) -> list[tuple[MinerState, Desired, float, float]]:
        """The raises that keep the site's envelope under the grid's level while it binds
        (none while the fast step's deadline runs); all of them otherwise."""
        if self.hold:
            return []
        level_w = self._gated_level
        if level_w is None or not raises:
            return list(raises)
        stale = self.cfg.stale_after_s
        envelope = 0.0
        for m in self.miners.values():
            w = metered_w(m, now, stale)
            cw = m.commanded_w
            if cw is not None and not (m.commanded is not None and m.commanded.sleep):
                w = max(w, cw)
            envelope += w
        cands = []
        for m, _d, target, _delta in raises:
            present = metered_w(m, now, stale)
            curve = m.learner.curve()
            cands.append(Raise(m.spec.id, present, target,
                               curve.hashrate(target) - curve.hashrate(present)))
        ok = set(admit_raises(cands, envelope, level_w, margin_w=RAISE_MARGIN * level_w))
        return [r for r in raises if r[0].spec.id in ok]

