"""Pure power allocation: spread a watt budget over miners to maximise hashrate (docs/FLEET.md §3).

Hashrate is concave in power (poold.fleet.model), so the optimum under a cap equalises the
marginal hashrate per watt λ across miners (water-filling, the KKT condition of
``max Σ H_i(P_i) s.t. Σ P_i ≤ B, lo_i ≤ P_i ≤ hi_i``): ``P_i(λ) = clamp(H_i'^{-1}(λ), lo_i, hi_i)``
and λ is the root of ``Σ P_i(λ) = B``, found here by safeguarded Newton in log λ.

The non-convex parts are handled around that core:
- a budget below ``Σ lo`` makes some miners sleep: those already asleep first (free), then the
  least efficient at their floor (``H(lo)/lo``), those with sleep/wake cycles left before those
  without (cycles are a soft limit, the cap is not);
- on/off-only miners are slept when the watts they free buy more hashrate elsewhere
  (``H(on) < λ · (on − sleep)``);
- preset and mode miners get the continuous relaxation, snapped down to a level, then
  upgraded greedily by ΔH/ΔP while that beats λ (or while watts would otherwise go unused);
- watt actuators are snapped down to their step.

No I/O, no asyncio: this module is property-tested directly (tests/fleet/test_policy.py).
"""

# ruff: noqa: RUF002, RUF003  (math notation in docstrings is intended)


from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from poold.fleet.model import PowerCurve


class Actuator(StrEnum):
    """How a firmware lets us set power (docs/FLEET.md §1)."""

    WATTS = "watts"  # exact watt target (Braiins OS, Whatsminer v3)
    PRESETS = "presets"  # discrete profiles named by watts (LuxOS, VNish)
    MODES = "modes"  # a few modes (stock Antminer normal/low-power)
    ONOFF = "onoff"  # only sleep/wake


@dataclass(frozen=True, slots=True)
class MinerInput:
    """What the allocator needs to know about one miner.

    `levels` are the allowed powers of a discrete actuator, ascending (for ONOFF: one level).
    `fixed_w` set means the miner is not controllable now (faulty, stale, read-only, thermal
    override): it counts at that power and is left alone.
    """

    miner_id: str
    curve: PowerCurve
    actuator: Actuator
    min_w: float
    max_w: float
    step_w: float = 1.0
    levels: tuple[float, ...] = ()
    sleep_w: float = 30.0
    can_sleep: bool = True
    asleep: bool = False
    may_cycle: bool = True
    fixed_w: float | None = None
    # Derived in __post_init__ (hot in the solver): the power range and discreteness.
    lo: float = field(init=False, default=0.0)
    hi: float = field(init=False, default=0.0)
    discrete: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        discrete = self.actuator is not Actuator.WATTS
        use_levels = discrete and bool(self.levels)
        object.__setattr__(self, "discrete", discrete)
        object.__setattr__(self, "lo", self.levels[0] if use_levels else self.min_w)
        object.__setattr__(self, "hi", self.levels[-1] if use_levels else self.max_w)


@dataclass(frozen=True, slots=True)
class Allocation:
    """One miner's planned state: asleep, or awake at `watts` (a level for discrete actuators)."""

    miner_id: str
    sleep: bool
    watts: float
    hashrate_ths: float
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """The allocation of one budget. `feasible` is False when even all-asleep (or the fixed
    miners alone) exceeds the budget; the plan is then the lowest power reachable."""

    budget_w: float
    allocations: tuple[Allocation, ...]
    planned_w: float
    hashrate_ths: float
    marginal: float
    feasible: bool


#: Minimum relative hashrate gain for sleeping a miner that could stay awake (a sleep/wake
#: cycle costs thermal stress, docs/FLEET.md §5).
SLEEP_GAIN = 0.002
#: ... and for swapping which miner sleeps (two state changes; hysteresis against churn).
SWAP_GAIN = 0.02

# ---------------------------------------------------------------------------------------------
# Water-filling core


class _Fill:
    """Vectors for the continuous relaxation of a set of awake miners (speed: one pow each)."""

    __slots__ = ("b", "e", "hi", "lo", "n")

    def __init__(self, miners: Sequence[MinerInput]) -> None:
        self.n = len(miners)
        # P_i(λ) = (λ/(α k))^(1/(α-1)) = b_i · λ^e_i with e_i = 1/(α-1) < 0
        self.e = [1.0 / (m.curve.alpha - 1.0) for m in miners]
        self.b = [(m.curve.alpha * m.curve.k) ** (-e) for m, e in zip(miners, self.e, strict=True)]
        self.lo = [m.lo for m in miners]
        self.hi = [m.hi for m in miners]

    def powers(self, log_lam: float) -> list[float]:
        out = []
        for b, e, lo, hi in zip(self.b, self.e, self.lo, self.hi, strict=True):
            x = b * math.exp(e * log_lam)
            out.append(lo if x < lo else hi if x > hi else x)
        return out

    def total_and_slope(self, log_lam: float) -> tuple[float, float]:
        """Σ P_i and d(Σ P_i)/d(log λ) (only unclamped miners contribute)."""
        total = 0.0
        slope = 0.0
        for b, e, lo, hi in zip(self.b, self.e, self.lo, self.hi, strict=True):
            x = b * math.exp(e * log_lam)
            if x <= lo:
                total += lo
            elif x >= hi:
                total += hi
            else:
                total += x
                slope += e * x
        return total, slope

    def solve(self, budget: float, tol_w: float = 0.5) -> tuple[list[float], float]:
        """Powers summing to `budget` (clamped to [Σlo, Σhi]) and the log marginal λ."""
        # λ at which each miner sits at hi (smallest) or lo (largest): the bracket.
        l_at_hi = [math.log(h / b) / e for b, e, h in zip(self.b, self.e, self.hi, strict=True)]
        l_at_lo = [math.log(lo / b) / e for b, e, lo in zip(self.b, self.e, self.lo, strict=True)]
        a, z = min(l_at_hi), max(l_at_lo)
        if sum(self.hi) <= budget:
            return list(self.hi), a
        if sum(self.lo) >= budget:
            return list(self.lo), z
        x = 0.5 * (a + z)
        target = budget - tol_w  # aim just under: the result never exceeds the budget
        for _ in range(60):
            total, slope = self.total_and_slope(x)
            f = total - target
            if abs(f) <= tol_w:
                break
            if f > 0:
                a = x  # too much power: raise λ
            else:
                z = x
            nx = x - f / slope if slope < 0 else 0.5 * (a + z)
            if not a < nx < z:
                nx = 0.5 * (a + z)
            x = nx
        return self.powers(x), x


# ---------------------------------------------------------------------------------------------
# The allocator


def _efficiency_at_floor(m: MinerInput) -> float:
    return m.curve.hashrate(m.lo) / m.lo


def _snap_level(levels: Sequence[float], x: float) -> int:
    """Index of the highest level ≤ x (0 if none)."""
    best = 0
    for i, lv in enumerate(levels):
        if lv <= x + 1e-9:
            best = i
        else:
            break
    return best


def _finish(awake: list[MinerInput], xs: list[float], lam: float,
            awake_budget: float) -> dict[str, Allocation]:
    """Snap the relaxation to what the actuators can do: discrete miners down to a level and
    then upgraded greedily by ΔH/ΔP while that beats λ (or uses watts that would otherwise go
    unused); watt miners re-solved for what is left and snapped down to their step."""
    cont = [(m, x) for m, x in zip(awake, xs, strict=True) if not m.discrete]
    disc = [(m, x) for m, x in zip(awake, xs, strict=True) if m.discrete]
    level_idx = {m.miner_id: _snap_level(m.levels, x) for m, x in disc}
    disc_w = sum(m.levels[level_idx[m.miner_id]] for m, _ in disc)
    cont_floor = sum(m.lo for m, _ in cont)
    cont_ceiling = sum(m.hi for m, _ in cont)
    by_id = {m.miner_id: m for m, _ in disc}

    def upgrades(only_above: float) -> None:
        nonlocal disc_w
        heap: list[tuple[float, str, int]] = []

        def push(m: MinerInput) -> None:
            i = level_idx[m.miner_id]
            if i + 1 < len(m.levels):
                dp = m.levels[i + 1] - m.levels[i]
                dh = m.curve.hashrate(m.levels[i + 1]) - m.curve.hashrate(m.levels[i])
                ratio = dh / dp if dp > 0 else math.inf
                if ratio > only_above:
                    heapq.heappush(heap, (-ratio, m.miner_id, i))

        for m, _ in disc:
            push(m)
        limit = awake_budget - (cont_floor if only_above > 0 else cont_ceiling)
        while heap:
            _, mid, i = heapq.heappop(heap)
            m = by_id[mid]
            dp = m.levels[i + 1] - m.levels[i]
            if disc_w + dp > limit + 1e-9:
                continue
            level_idx[mid] = i + 1
            disc_w += dp
            push(m)

    if disc:
        upgrades(lam * 0.999 if cont else 0.0)
    cxs: list[float] = []
    if cont:
        cont_budget = awake_budget - disc_w
        cxs, _ = _Fill([m for m, _ in cont]).solve(cont_budget)
        if disc and cont_budget - sum(cxs) > 1.0:
            upgrades(0.0)  # watt miners are at max: spend the leftover on presets
    out: dict[str, Allocation] = {}
    for (m, _), x in zip(cont, cxs, strict=True):
        w = max(m.lo, math.floor(x / m.step_w + 1e-9) * m.step_w) if m.step_w > 0 else x
        w = min(w, m.hi)
        out[m.miner_id] = Allocation(m.miner_id, False, w, m.curve.hashrate(w))
    for m, _ in disc:
        w = m.levels[level_idx[m.miner_id]]
        out[m.miner_id] = Allocation(m.miner_id, False, w, m.curve.hashrate(w))
    return out


def allocate(miners: Sequence[MinerInput], budget_w: float) -> Plan:
    """The hashrate-maximising plan for `miners` under `budget_w` watts."""
    fixed = [m for m in miners if m.fixed_w is not None]
    free = [m for m in miners if m.fixed_w is None]
    allocs: dict[str, Allocation] = {}
    fixed_w = 0.0
    for m in fixed:
        assert m.fixed_w is not None
        fixed_w += m.fixed_w
        allocs[m.miner_id] = Allocation(m.miner_id, m.asleep, m.fixed_w,
                                        0.0 if m.asleep else m.curve.hashrate(m.fixed_w), True)
    budget = budget_w - fixed_w

    # 1. Sleep until the floor fits: already-asleep first, then by cycles left, then efficiency.
    awake = list(free)
    sleepers: list[MinerInput] = []
    floor = sum(m.lo for m in awake)
    feasible = True
    if floor > budget:
        order = sorted(
            (m for m in awake if m.can_sleep),
            key=lambda m: (not m.asleep, not m.may_cycle, _efficiency_at_floor(m)),
        )
        chosen: set[str] = set()
        for m in order:
            if floor <= budget:
                break
            floor -= m.lo - m.sleep_w
            chosen.add(m.miner_id)
        # Repair the greedy overshoot: wake back, most efficient first, any sleeper that
        # fits in the slack the later (bigger) sleepers left.
        for m in sorted((m for m in order if m.miner_id in chosen),
                        key=lambda m: -_efficiency_at_floor(m)):
            if floor + m.lo - m.sleep_w <= budget:
                floor += m.lo - m.sleep_w
                chosen.discard(m.miner_id)
        sleepers = [m for m in awake if m.miner_id in chosen]
        awake = [m for m in awake if m.miner_id not in chosen]
        feasible = floor <= budget
    awake_budget = budget - sum(m.sleep_w for m in sleepers)

    xs, log_lam = _Fill(awake).solve(awake_budget) if awake else ([], 0.0)
    lam = math.exp(log_lam) if awake else 0.0
    done = _finish(awake, xs, lam, awake_budget) if awake else {}

    # 2. A miner held at its floor whose watts would buy more hashrate elsewhere
    #    (H(lo) < λ·(lo − sleep)) may be better asleep: on/off-only units, or units far less
    #    efficient than the rest. λ·Δ only bounds the gain (concavity, snapping), so each
    #    trial is finished and kept only if the hashrate rises by more than SLEEP_GAIN.
    if awake and feasible:
        for _ in range(3):
            cands = sorted(
                (m.curve.hashrate(m.lo) / (m.lo - m.sleep_w), m.miner_id)
                for m, x in zip(awake, xs, strict=True)
                if x <= m.lo + 1e-6 and m.can_sleep and m.may_cycle and m.lo > m.sleep_w
                and m.curve.hashrate(m.lo) < lam * (m.lo - m.sleep_w)
            )
            if not cands:
                break
            current = sum(a.hashrate_ths for a in done.values())
            best_trial = None
            # Each of the three worst alone, and all of them: keep the best.
            trials = [{mid} for _, mid in cands[:3]]
            if len(cands) > 1:
                trials.append({mid for _, mid in cands})
            for drop in trials:
                t_awake = [m for m in awake if m.miner_id not in drop]
                t_sleepers = sleepers + [m for m in awake if m.miner_id in drop]
                t_budget = budget - sum(m.sleep_w for m in t_sleepers)
                if not t_awake or sum(m.lo for m in t_awake) > t_budget:
                    continue
                t_xs, t_log = _Fill(t_awake).solve(t_budget)
                t_done = _finish(t_awake, t_xs, math.exp(t_log), t_budget)
                gain = sum(a.hashrate_ths for a in t_done.values())
                if gain > current * (1.0 + SLEEP_GAIN) and (
                    best_trial is None or gain > best_trial[0]
                ):
                    best_trial = (gain, t_awake, t_sleepers, t_budget, t_xs, t_log, t_done)
            if best_trial is None:
                break
            _, awake, sleepers, awake_budget, xs, t_log, done = best_trial
            lam = math.exp(t_log)

    # 3. Sleeping by floor efficiency is a knapsack heuristic: try a few swaps (wake one of
    #    the best sleepers, sleep one of the worst awake) and keep the best improvement.
    if sleepers and awake and feasible:
        current = sum(a.hashrate_ths for a in done.values())
        best: tuple[float, list[MinerInput], list[MinerInput], float, list[float], float,
                    dict[str, Allocation]] | None = None
        wake = sorted(sleepers, key=lambda m: -_efficiency_at_floor(m))[:3]
        worst = sorted((m for m in awake if m.can_sleep and m.may_cycle),
                       key=_efficiency_at_floor)[:3]
        by_floor_eff = sorted((m for m in awake if m.can_sleep and m.may_cycle),
                              key=_efficiency_at_floor)
        for w in wake:
            # Moves: wake w and sleep one of the worst; or wake w and sleep as many of the
            # worst as it takes to fit (a big unit for several small ones).
            moves = [[d] for d in worst]
            need, k = [], 0
            floor_after = sum(m.lo for m in awake) + w.lo - w.sleep_w
            while floor_after > budget and k < len(by_floor_eff):
                need.append(by_floor_eff[k])
                floor_after -= by_floor_eff[k].lo - by_floor_eff[k].sleep_w
                k += 1
            if len(need) > 1:
                moves.append(need)
            for ds in moves:
                t_awake = [m for m in awake if all(m is not d for d in ds)] + [w]
                t_sleepers = [m for m in sleepers if m is not w] + ds
                t_budget = budget - sum(m.sleep_w for m in t_sleepers)
                if sum(m.lo for m in t_awake) > t_budget:
                    continue
                t_xs, t_log = _Fill(t_awake).solve(t_budget)
                t_done = _finish(t_awake, t_xs, math.exp(t_log), t_budget)
                gain = sum(a.hashrate_ths for a in t_done.values())
                if gain > current * (1.0 + SWAP_GAIN) and (best is None or gain > best[0]):
                    best = (gain, t_awake, t_sleepers, t_budget, t_xs, math.exp(t_log), t_done)
        if best is not None:
            _, awake, sleepers, awake_budget, xs, lam, done = best

    allocs.update(done)
    for m in sleepers:
        allocs[m.miner_id] = Allocation(m.miner_id, True, m.sleep_w, 0.0)
    ordered = tuple(allocs[m.miner_id] for m in miners)
    planned = sum(a.watts for a in ordered)
    return Plan(
        budget_w=budget_w,
        allocations=ordered,
        planned_w=planned,
        hashrate_ths=sum(a.hashrate_ths for a in ordered),
        marginal=lam,
        feasible=feasible and planned <= budget_w + 1e-6,
    )


# ---------------------------------------------------------------------------------------------
# Hierarchy and emergency shedding


def demand(miners: Sequence[MinerInput], log_lam: float) -> float:
    """Total watts `miners` would take at marginal exp(log_lam) (relaxation, nobody asleep)."""
    free = [m for m in miners if m.fixed_w is None]
    fixed = sum(m.fixed_w for m in miners if m.fixed_w is not None)
    return fixed + (_Fill(free).total_and_slope(log_lam)[0] if free else 0.0)


def split_budget(
    children: Sequence[tuple[float, Sequence[MinerInput]]], budget_w: float
) -> list[float]:
    """Divide a parent's budget among children with their own caps (KKT across levels).

    Child j takes ``min(cap_j, D_j(λ))`` where ``D_j`` is its demand at the common marginal λ;
    λ solves ``Σ_j min(cap_j, D_j(λ)) = budget``. If the caps alone fit, each child gets its
    cap. A child's floor (Σ lo of its miners) is never cut below by this split; the child's own
    allocation then sleeps miners if it has to.
    """
    caps = [c for c, _ in children]
    if sum(caps) <= budget_w * (1.0 + 1e-9) + 1e-6:  # caps alone fit (allow rounding)
        return list(caps)
    a, z = -30.0, 10.0  # log λ bracket in TH/s per W: generous for any ASIC
    fills = [(_Fill([m for m in ms if m.fixed_w is None]),
              sum(m.fixed_w for m in ms if m.fixed_w is not None)) for _, ms in children]

    def take(log_lam: float) -> list[float]:
        out = []
        for cap, (f, fx) in zip(caps, fills, strict=True):
            d = fx + (f.total_and_slope(log_lam)[0] if f.n else 0.0)
            out.append(min(cap, d))
        return out

    for _ in range(80):
        mid = 0.5 * (a + z)
        if sum(take(mid)) > budget_w:
            a = mid
        else:
            z = mid
    shares = take(z)
    # Hand out the bisection remainder proportionally to unconstrained children.
    rest = budget_w - sum(shares)
    if rest > 0:
        room = [c - s for c, s in zip(caps, shares, strict=True)]
        total_room = sum(room)
        if total_room > 0:
            shares = [s + rest * r / total_room for s, r in zip(shares, room, strict=True)]
    return shares


def shed_order(miners: Iterable[tuple[MinerInput, float]]) -> list[str]:
    """Emergency shedding order for awake, sleepable miners given their present watts:
    cycles left first, then least efficient (lowest TH/s per W at present power) first."""
    cands = [(m, w) for m, w in miners if m.can_sleep and not m.asleep and m.fixed_w is None]
    cands.sort(key=lambda mw: (not mw[0].may_cycle,
                               mw[0].curve.hashrate(mw[1]) / mw[1] if mw[1] > 0 else 0.0))
    return [m.miner_id for m, _ in cands]
