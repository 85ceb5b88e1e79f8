"""Water-filling allocation: budget respected, optimal against brute force, throttle before
sleep, presets and on/off handled, hierarchy split (poold.fleet.policy)."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from poold.fleet.model import PowerCurve
from poold.fleet.policy import Actuator, MinerInput, allocate, shed_order, split_budget


def watts_miner(i: int, p_nom: float = 3000.0, h_nom: float = 100.0, alpha: float = 0.6,
                **kw: object) -> MinerInput:
    return MinerInput(f"m{i}", PowerCurve.from_nameplate(p_nom, h_nom, alpha), Actuator.WATTS,
                      min_w=round(p_nom * 0.34), max_w=p_nom, **kw)  # type: ignore[arg-type]


miner_st = st.builds(
    lambda i, p, h, a, kind, n: (
        watts_miner(i, p, h, a) if kind == "w" else MinerInput(
            f"m{i}", PowerCurve.from_nameplate(p, h, a),
            Actuator.PRESETS if kind == "p" else Actuator.ONOFF, p * 0.34, p,
            levels=tuple(p * (0.36 + 0.64 * k / (n - 1)) for k in range(n)) if kind == "p"
            else (p,))),
    st.integers(0, 10**6), st.floats(1500, 4000), st.floats(40, 250), st.floats(0.5, 0.7),
    st.sampled_from(["w", "w", "p", "o"]), st.integers(9, 25),  # real firmware: 9-25 presets
)


@st.composite
def fleets(draw: st.DrawFn) -> list[MinerInput]:
    ms = draw(st.lists(miner_st, min_size=1, max_size=30))
    return [MinerInput(f"m{k}", m.curve, m.actuator, m.min_w, m.max_w, m.step_w, m.levels)
            for k, m in enumerate(ms)]


@settings(max_examples=300, deadline=None)
@given(fleets(), st.floats(0.0, 1.2))
def test_plan_never_exceeds_a_feasible_budget(ms: list[MinerInput], frac: float) -> None:
    budget = frac * sum(m.hi for m in ms)
    plan = allocate(ms, budget)
    all_asleep = sum(m.sleep_w for m in ms)
    if budget >= all_asleep:
        assert plan.feasible
        assert plan.planned_w <= budget + 1e-6
    for m, a in zip(ms, plan.allocations, strict=True):
        if a.sleep:
            assert a.hashrate_ths == 0
        elif m.actuator is Actuator.WATTS:
            assert m.min_w - 1e-9 <= a.watts <= m.max_w + 1e-9
        else:
            assert a.watts in m.levels


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(2000, 4000), st.floats(0.85, 1.15), st.floats(0.5, 0.7)),
                min_size=2, max_size=20), st.floats(0.35, 0.99))
def test_watts_fleet_throttles_all_before_any_sleep(specs: list[tuple[float, float, float]],
                                                    frac: float) -> None:
    # A real fleet: J/TH within ±15 % of each other (30 J/TH class).
    ms = [watts_miner(i, p, p / 30 * e, a) for i, (p, e, a) in enumerate(specs)]
    floor = sum(m.min_w for m in ms)
    budget = max(floor, frac * sum(m.max_w for m in ms))
    plan = allocate(ms, budget)
    assert not any(a.sleep for a in plan.allocations)
    # Equal marginal hashrate per watt for every miner strictly inside its range (KKT).
    inner = [m.curve.marginal(a.watts) for m, a in zip(ms, plan.allocations, strict=True)
             if m.min_w + 2 < a.watts < m.max_w - 2]
    if len(inner) >= 2:
        assert max(inner) / min(inner) < 1.01


def brute_force(ms: list[MinerInput], budget: float, grid: int = 40) -> float:
    """Best hashrate over a fine grid of each miner's options (sleep included)."""
    options = []
    for m in ms:
        if m.actuator is Actuator.WATTS:
            ps = [m.min_w + (m.max_w - m.min_w) * k / grid for k in range(grid + 1)]
        else:
            ps = list(m.levels)
        options.append([(m.sleep_w, 0.0)] + [(p, m.curve.hashrate(p)) for p in ps])
    best = 0.0
    for combo in itertools.product(*options):
        if sum(p for p, _ in combo) <= budget:
            best = max(best, sum(h for _, h in combo))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(miner_st, min_size=1, max_size=3), st.floats(0.1, 1.0))
def test_close_to_brute_force_optimum(raw: list[MinerInput], frac: float) -> None:
    ms = [MinerInput(f"m{k}", m.curve, m.actuator, m.min_w, m.max_w, m.step_w, m.levels)
          for k, m in enumerate(raw)]
    budget = frac * sum(m.hi for m in ms)
    plan = allocate(ms, budget)
    best = brute_force(ms, budget)
    # Within 3 % of a 40-step grid search (the grid itself is slightly below the optimum).
    assert plan.hashrate_ths >= 0.97 * best - 1e-9


def test_spreading_beats_switching_off() -> None:
    """docs/FLEET.md §3 (a concave H(P) favours spreading), on numbers: 10 equal miners at
    60 % of their power."""
    ms = [watts_miner(i) for i in range(10)]
    plan = allocate(ms, 0.6 * 10 * 3000)
    spread = plan.hashrate_ths
    switch_off = 6 * 100.0
    assert all(not a.sleep for a in plan.allocations)
    assert math.isclose(spread, 10 * 100 * 0.6**0.6, rel_tol=1e-3)
    assert spread / switch_off > 1.2


def test_hopelessly_inefficient_miner_sleeps_even_when_all_could_run() -> None:
    ms = [watts_miner(0, 1500, 40, 0.5), watts_miner(1, 1500, 165, 0.5)]
    plan = allocate(ms, 1500)
    assert [a.sleep for a in plan.allocations] == [True, False]
    assert plan.hashrate_ths > 160


def test_budget_below_floor_sleeps_least_efficient_first() -> None:
    eff = watts_miner(0, 3000, 140)
    ineff = watts_miner(1, 3000, 90)
    plan = allocate([eff, ineff], 1500)
    by_id = {a.miner_id: a for a in plan.allocations}
    assert by_id["m1"].sleep and not by_id["m0"].sleep
    assert plan.planned_w <= 1500


def test_sleeping_prefers_miners_already_asleep_and_with_cycles_left() -> None:
    a = watts_miner(0, 3000, 100, may_cycle=False)
    b = watts_miner(1, 3000, 100, asleep=True)
    c = watts_miner(2, 3000, 99)
    plan = allocate([a, b, c], 2 * 1020 + 30)
    asleep = {x.miner_id for x in plan.allocations if x.sleep}
    assert asleep == {"m1"}


def test_fixed_miners_count_against_the_budget() -> None:
    stale = MinerInput("s", PowerCurve.from_nameplate(3000, 100), Actuator.WATTS, 1000, 3000,
                       fixed_w=3000)
    plan = allocate([stale, watts_miner(1)], 5000)
    by_id = {a.miner_id: a for a in plan.allocations}
    assert by_id["s"].fixed and by_id["s"].watts == 3000
    assert by_id["m1"].watts <= 2000


def test_on_off_miner_sleeps_when_its_watts_buy_more_elsewhere() -> None:
    # An old 65 J/TH on/off unit next to ten watt-capable 30 J/TH units held low.
    onoff = MinerInput("o", PowerCurve.from_nameplate(3250, 50), Actuator.ONOFF, 3250, 3250,
                       levels=(3250.0,))
    ms = [onoff] + [watts_miner(i) for i in range(1, 11)]
    plan = allocate(ms, 3250 + 10 * 1300)
    assert next(a for a in plan.allocations if a.miner_id == "o").sleep
    pinned = MinerInput("o", onoff.curve, Actuator.ONOFF, 3250, 3250, levels=(3250.0,),
                        can_sleep=False)
    on = allocate([pinned, *ms[1:]], 3250 + 10 * 1300)
    assert plan.hashrate_ths > on.hashrate_ths


def test_efficient_on_off_miner_stays_on() -> None:
    onoff = MinerInput("o", PowerCurve.from_nameplate(3250, 95), Actuator.ONOFF, 3250, 3250,
                       levels=(3250.0,))
    ms = [onoff] + [watts_miner(i) for i in range(1, 5)]
    plan = allocate(ms, 0.75 * sum(m.hi for m in ms))
    assert not next(a for a in plan.allocations if a.miner_id == "o").sleep


def test_presets_use_the_budget_greedily() -> None:
    levels = tuple(float(w) for w in range(1100, 3300, 200))
    ms = [MinerInput(f"p{i}", PowerCurve.from_nameplate(3100, 100), Actuator.PRESETS, 1100,
                     3100, levels=levels) for i in range(5)]
    plan = allocate(ms, 10_000)
    assert plan.planned_w <= 10_000
    assert 10_000 - plan.planned_w < 200  # less than one preset step left unused
    assert max(a.watts for a in plan.allocations) - min(a.watts for a in plan.allocations) <= 200


def test_split_gives_caps_when_they_fit_and_shares_when_not() -> None:
    r1 = [watts_miner(i) for i in range(5)]
    r2 = [watts_miner(i + 5, h_nom=150) for i in range(5)]
    assert split_budget([(10_000, r1), (10_000, r2)], 30_000) == [10_000, 10_000]
    shares = split_budget([(15_000, r1), (15_000, r2)], 20_000)
    assert math.isclose(sum(shares), 20_000, rel_tol=1e-6)
    assert all(s <= 15_000 + 1e-6 for s in shares)


def test_shed_order_least_efficient_first() -> None:
    a, b = watts_miner(0, 3000, 140), watts_miner(1, 3000, 90)
    assert shed_order([(a, 3000.0), (b, 3000.0)]) == ["m1", "m0"]
