"""The fast step (which miners to sleep at a grid signal) and the slow step's admission rule
(poold.fleet.fast_step): pure, property-tested."""

from __future__ import annotations

import math
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from poold.fleet.fast_step import Raise, SleepCandidate, SleepOrder, admit_raises
from poold.fleet.model import PowerCurve
from poold.fleet.policy import Actuator, MinerInput, allocate


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[SleepCandidate], dict[str, float], set[str]]:
    n = draw(st.integers(1, 40))
    racks = draw(st.integers(1, 5))
    cands, power, unavailable = [], {}, set()
    for i in range(n):
        mid = f"m{i:03d}"
        cands.append(SleepCandidate(mid, f"r{draw(st.integers(0, racks - 1))}",
                                    draw(st.floats(0.02, 0.08)),
                                    draw(st.sampled_from([30.0, 60.0])),
                                    draw(st.booleans())))
        power[mid] = draw(st.floats(0.0, 3500.0))
        if draw(st.integers(0, 9)) == 0:
            unavailable.add(mid)
    return cands, power, unavailable


@settings(max_examples=300, deadline=None)
@given(fleets(), st.floats(0.0, 1.2), st.floats(0.0, 2000.0))
def test_the_chosen_sleep_set_meets_the_level_and_none_of_it_is_superfluous(
        fleet: tuple[list[SleepCandidate], dict[str, float], set[str]], frac: float,
        margin: float) -> None:
    cands, power, unavailable = fleet
    site = sum(power.values())
    level = site * frac
    order = SleepOrder(cands)
    step = order.choose(power, level, margin_w=margin, unavailable=unavailable)
    sleep_w = {c.miner_id: c.sleep_w for c in cands}
    gains = {m: power[m] - sleep_w[m] for m in step.sleep}
    assert not set(step.sleep) & unavailable
    assert all(g > 0 for g in gains.values())
    assert step.projected_w == site - sum(gains.values()) or math.isclose(
        step.projected_w, site - sum(gains.values()), rel_tol=1e-9, abs_tol=1e-6)
    goal = level - margin
    possible = site - sum(max(0.0, power[c.miner_id] - c.sleep_w) for c in cands
                          if c.miner_id not in unavailable)
    if site <= goal:
        assert step.sleep == () and step.feasible
    elif possible <= goal + 1e-6:
        assert step.feasible and step.projected_w <= goal + 1e-6
        # minimal: waking any one chosen miner again would cross the goal
        for m, g in gains.items():
            assert step.projected_w + g > goal - 1e-6, m
    else:
        assert not step.feasible  # everything available was taken
        assert len(step.sleep) == sum(1 for c in cands if c.miner_id not in unavailable
                                      and power[c.miner_id] > c.sleep_w)
    # the choice follows the precomputed order
    pos = {m: i for i, m in enumerate(order.order)}
    assert [pos[m] for m in step.sleep] == sorted(pos[m] for m in step.sleep)


def test_least_efficient_first_within_a_rack_and_cycles_left_before_none_left() -> None:
    cands = [SleepCandidate("good", "r0", 0.05), SleepCandidate("bad", "r0", 0.03),
             SleepCandidate("worst-no-cycles", "r0", 0.01, may_cycle=False)]
    power = dict.fromkeys(["good", "bad", "worst-no-cycles"], 3000.0)
    step = SleepOrder(cands).choose(power, 6100.0)
    assert step.sleep == ("bad",)
    step = SleepOrder(cands).choose(power, 3100.0)
    assert step.sleep == ("bad", "good")  # cycles are soft, but spent where there are some
    step = SleepOrder(cands).choose(power, 50.0)
    assert set(step.sleep) == {"bad", "good", "worst-no-cycles"} and not step.feasible


def test_the_cut_is_spread_over_racks() -> None:
    cands = [SleepCandidate(f"r{r}-m{i}", f"r{r}", 0.03 + 0.001 * i + 0.0001 * r)
             for r in range(3) for i in range(10)]
    power = {c.miner_id: 3000.0 for c in cands}
    step = SleepOrder(cands).choose(power, 90_000.0 - 6 * 2970.0)
    racks = [m.split("-")[0] for m in step.sleep]
    assert len(step.sleep) == 6 and all(racks.count(r) == 2 for r in ("r0", "r1", "r2"))


def test_margin_and_what_is_already_under_the_level() -> None:
    power = {"a": 3000.0, "b": 3000.0}
    order = SleepOrder([SleepCandidate("a", "r", 0.03), SleepCandidate("b", "r", 0.04)])
    assert order.choose(power, 6000.0).sleep == ()
    assert order.choose(power, 6000.0, margin_w=10.0).sleep == ("a",)
    # a miner already at its sleep power frees nothing and is not chosen
    assert order.choose({"a": 30.0, "b": 3000.0}, 3000.0, margin_w=10.0).sleep == ("b",)


def test_choice_costs_milliseconds_at_ten_thousand_miners() -> None:
    rng = random.Random(7)
    cands = [SleepCandidate(f"m{i:05d}", f"r{i % 400:03d}", rng.uniform(0.02, 0.07),
                            may_cycle=rng.random() > 0.1) for i in range(10_000)]
    power = {c.miner_id: rng.uniform(2800.0, 3500.0) for c in cands}
    order = SleepOrder(cands)
    site = sum(power.values())
    t0 = time.process_time()  # CPU: the shared machine's load does not count against it
    runs = 20
    for _ in range(runs):
        step = order.choose(power, site * 0.5, margin_w=site * 0.02, site_w=site)
    ms = (time.process_time() - t0) / runs * 1000.0
    assert step.feasible and step.projected_w <= site * 0.48
    print(f"fast step at 10,000 miners: {ms:.2f} ms, {len(step.sleep)} to sleep")
    assert ms < 50.0  # measured about 7 ms of CPU


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 3000.0), st.floats(0.0, 3500.0),
                          st.floats(0.0, 50.0)), max_size=30),
       st.floats(0.0, 50_000.0), st.floats(0.0, 60_000.0), st.floats(0.0, 500.0))
def test_admitted_raises_keep_the_envelope_under_the_level(
        spec: list[tuple[float, float, float]], envelope: float, level: float,
        margin: float) -> None:
    raises = [Raise(f"m{i}", p, t, g) for i, (p, t, g) in enumerate(spec)]
    ok = admit_raises(raises, envelope, level, margin_w=margin)
    by_id = {r.miner_id: r for r in raises}
    added = sum(max(0.0, by_id[m].target_w - by_id[m].present_w) for m in ok)
    if ok:
        assert envelope + added <= level - margin + 1e-6
    # nothing left out that would still have fitted
    room = level - margin - envelope - added
    for r in raises:
        if r.miner_id not in ok and room > 0:
            assert r.target_w - r.present_w > room - 1e-6


# -- the two speeds together, on a first-order model of the firmware ----------------------------


def test_fast_then_slow_reaches_the_level_in_seconds_and_gives_the_hashrate_back() -> None:
    """40 Braiins-like miners (3,050 W, 100 TH/s ± 4 %): the level drops to 50 %; sleep takes
    a miner to 30 W with τ = 0.4 s (after 0.5 s), targets and wakes follow with τ = 10 s. The
    fast step is under the level within 5 s; the slow step never crosses it and brings the
    hashrate to ≥ 0.97 of the model optimum within 5 minutes."""
    rng = random.Random(3)
    n = 40
    ids = [f"m{i:02d}" for i in range(n)]
    curve = {m: PowerCurve.from_nameplate(3050.0, 100.0 * rng.uniform(0.96, 1.04),
                                          0.6 + rng.uniform(-0.03, 0.03)) for m in ids}
    p = dict.fromkeys(ids, 3050.0)  # true draw
    setting = dict.fromkeys(ids, 3050.0)  # where each miner is heading
    tau = dict.fromkeys(ids, 10.0)
    asleep: set[str] = set()
    level = 0.5 * n * 3050.0
    dt = 0.1

    def step_physics() -> None:
        for m in ids:
            p[m] = setting[m] + (p[m] - setting[m]) * math.exp(-dt / tau[m])

    def inputs(now_asleep: set[str]) -> list[MinerInput]:
        return [MinerInput(m, curve[m], Actuator.WATTS, 1040.0, 3050.0, asleep=m in now_asleep)
                for m in ids]

    optimum = allocate(inputs(set()), level).hashrate_ths
    order = SleepOrder(SleepCandidate(m, f"r{i % 4}", curve[m].hashrate(3050.0) / 3050.0)
                       for i, m in enumerate(ids))
    t0 = time.process_time()
    fast = order.choose(p, level, margin_w=0.03 * level)
    plan_ms = (time.process_time() - t0) * 1000.0
    assert fast.feasible and plan_ms < 50.0
    for m in fast.sleep:
        setting[m], tau[m] = 30.0, 0.4
        asleep.add(m)
    t = 0.0
    to_level = None
    while t < 10.0:
        step_physics()
        t += dt
        if to_level is None and sum(p.values()) <= level:
            to_level = t
    assert to_level is not None and to_level <= 5.0
    # slow step: re-plan under 0.97 of the level and admit raises only under the envelope
    plan = {a.miner_id: a for a in allocate(inputs(asleep), level * 0.97).allocations}
    recovered_at = None
    peak = 0.0
    while t < 300.0:
        envelope = sum(max(p[m], setting[m]) for m in ids)
        raises = []
        for m in ids:
            a = plan[m]
            if a.sleep:
                setting[m] = 30.0
            elif a.watts < setting[m] and m not in asleep:
                setting[m], tau[m] = a.watts, 10.0  # decreases at once
            elif m in asleep or a.watts > setting[m]:
                present = max(p[m], setting[m])
                raises.append(Raise(m, present, a.watts,
                                    curve[m].hashrate(a.watts) - curve[m].hashrate(present)))
        for m in admit_raises(raises, envelope, level, margin_w=0.01 * level):
            setting[m], tau[m] = plan[m].watts, 10.0
            asleep.discard(m)
        step_physics()
        t += dt
        peak = max(peak, sum(p.values()))
        hashrate = sum(curve[m].hashrate(p[m]) for m in ids if m not in asleep)
        if recovered_at is None and hashrate >= 0.97 * optimum:
            recovered_at = t
    assert peak <= level, f"crossed the level on the way back: {peak:.0f} > {level:.0f} W"
    assert recovered_at is not None, "hashrate never came back to 0.97 of the optimum"
