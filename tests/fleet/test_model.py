"""Power curves and how they are learned (poold.fleet.model)."""

from __future__ import annotations

import math
import random

import pytest

from poold.fleet.model import CurveLearner, PowerCurve


def test_nameplate_curve_matches_the_vnish_s19_table() -> None:
    # docs/FLEET.md §3 (VNish S19 presets): 3200 W -> 102 TH, 1100 W -> 53 TH; the fitted law
    # predicts within 5 %.
    c = PowerCurve.from_nameplate(3200, 102)
    assert c.hashrate(1100) == pytest.approx(53, rel=0.05)
    assert c.power_for(c.hashrate(2000)) == pytest.approx(2000)
    lam = c.marginal(1500)
    assert c.power_at_marginal(lam) == pytest.approx(1500)


def test_one_operating_point_moves_k_not_alpha() -> None:
    learner = CurveLearner(3000, 100)
    for _ in range(50):
        learner.observe(3000, 92)
    c = learner.curve()
    assert c.alpha == pytest.approx(0.6, abs=1e-6)
    assert c.hashrate(3000) == pytest.approx(92, rel=0.01)


def test_learns_true_curve_from_spread_points() -> None:
    rng = random.Random(3)
    true = PowerCurve.from_nameplate(3400, 170, alpha=0.66)
    learner = CurveLearner(3400, 160)  # nameplate off by 6 %, alpha prior 0.6
    for _ in range(400):
        p = rng.uniform(1200, 3400)
        learner.observe(p, true.hashrate(p) * rng.gauss(1, 0.01))
    c = learner.curve()
    assert c.alpha == pytest.approx(0.66, abs=0.03)
    for p in (1300, 2500, 3400):
        assert c.hashrate(p) == pytest.approx(true.hashrate(p), rel=0.02)


def test_ignores_sleeping_and_garbage_observations() -> None:
    learner = CurveLearner(3000, 100)
    before = learner.curve()
    for p, h in ((0, 0), (30, 0), (math.nan, 50), (3000, math.inf)):
        learner.observe(p, h)
    assert learner.observations == 0
    assert learner.curve() == before
