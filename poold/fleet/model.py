"""Per-miner power → hashrate curves, and how they are learned (docs/FLEET.md §3).

The law is the one fitted to vendor presets and under-clock measurements (docs/FLEET.md §3):
below nameplate ``H(P) = k · P^α`` with ``α ≈ 0.6`` (so ``k = H_nom / P_nom^α``). Because
``0 < α < 1`` the curve is concave, which is what makes water-filling (equal marginal hashrate
per watt) the optimal way to spread a cap (poold.fleet.policy).

`CurveLearner` refines ``k`` and ``α`` for one miner from observed (watts, hashrate) pairs —
firmware telemetry or, better, the pool's share-based estimate — by a weighted least-squares
fit of ``log H = log k + α log P`` with the nameplate curve as a prior, so one operating point
(every miner at nameplate) moves ``k`` only and a spread of points moves ``α`` too.

Pure: no I/O, no asyncio.
"""

# ruff: noqa: RUF002, RUF003  (math notation in docstrings is intended)


from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_ALPHA = 0.6
#: Bounds on a learned exponent: outside them the data is noise or the miner is broken.
ALPHA_MIN = 0.3
ALPHA_MAX = 0.95


@dataclass(frozen=True, slots=True)
class PowerCurve:
    """``H(P) = k · P^α`` for ``P`` in ``[p_min_w, p_max_w]``; hashrate in TH/s, power in W."""

    k: float
    alpha: float

    @classmethod
    def from_nameplate(
        cls, p_nom_w: float, h_nom_ths: float, alpha: float = DEFAULT_ALPHA
    ) -> PowerCurve:
        if p_nom_w <= 0 or h_nom_ths <= 0:
            raise ValueError("nameplate power and hashrate must be positive")
        return cls(k=h_nom_ths / p_nom_w**alpha, alpha=alpha)

    def hashrate(self, p_w: float) -> float:
        """TH/s at `p_w` watts (0 for non-positive power)."""
        if p_w <= 0:
            return 0.0
        return float(self.k * p_w**self.alpha)

    def marginal(self, p_w: float) -> float:
        """dH/dP in TH/s per W at `p_w` (> 0)."""
        return float(self.alpha * self.k * p_w ** (self.alpha - 1.0))

    def power_at_marginal(self, lam: float) -> float:
        """The power at which dH/dP equals `lam` (unclamped): the inverse of `marginal`."""
        return float((lam / (self.alpha * self.k)) ** (1.0 / (self.alpha - 1.0)))

    def power_for(self, h_ths: float) -> float:
        """Watts needed for `h_ths` TH/s (the inverse of `hashrate`)."""
        if h_ths <= 0:
            return 0.0
        return float((h_ths / self.k) ** (1.0 / self.alpha))


class CurveLearner:
    """Learns one miner's curve from (watts, TH/s) observations, nameplate curve as prior.

    Weighted least squares on ``y = log H``, ``x = log P``. The prior contributes
    `prior_weight` pseudo-observations at nameplate (anchoring ``k``) and a ridge penalty
    pulling ``α`` toward its prior value (so a single operating point cannot move α).
    Observations decay by `forget` per update so the curve follows ageing and seasons.
    """

    __slots__ = (
        "_alpha0",
        "_curve",
        "_dirty",
        "_forget",
        "_n",
        "_prior_weight",
        "_ridge",
        "_sw",
        "_sx",
        "_sxx",
        "_sxy",
        "_sy",
        "_x0",
    )

    def __init__(
        self,
        p_nom_w: float,
        h_nom_ths: float,
        *,
        alpha: float = DEFAULT_ALPHA,
        prior_weight: float = 2.0,
        ridge: float = 50.0,
        forget: float = 0.995,
    ) -> None:
        self._curve = PowerCurve.from_nameplate(p_nom_w, h_nom_ths, alpha)
        self._alpha0 = alpha
        self._prior_weight = prior_weight
        self._ridge = ridge
        self._forget = forget
        self._x0 = math.log(p_nom_w)
        x, y = self._x0, math.log(h_nom_ths)
        w = prior_weight
        self._sw, self._sx, self._sy = w, w * x, w * y
        self._sxx, self._sxy = w * x * x, w * x * y
        self._n = 0
        self._dirty = False

    @property
    def observations(self) -> int:
        return self._n

    def observe(self, p_w: float, h_ths: float, weight: float = 1.0) -> None:
        """Add one observation; non-positive or non-finite values are ignored (a sleeping or
        rebooting miner says nothing about its curve)."""
        if not (p_w > 0 and h_ths > 0 and math.isfinite(p_w) and math.isfinite(h_ths)):
            return
        f = self._forget
        self._sw *= f
        self._sx *= f
        self._sy *= f
        self._sxx *= f
        self._sxy *= f
        x, y = math.log(p_w), math.log(h_ths)
        self._sw += weight
        self._sx += weight * x
        self._sy += weight * y
        self._sxx += weight * x * x
        self._sxy += weight * x * y
        self._n += 1
        self._dirty = True

    def curve(self) -> PowerCurve:
        """The current fit (cached until the next observation)."""
        if not self._dirty:
            return self._curve
        self._dirty = False
        sw = self._sw
        mx, my = self._sx / sw, self._sy / sw
        sxx = self._sxx / sw - mx * mx
        sxy = self._sxy / sw - mx * my
        # Ridge toward alpha0: minimise Σw(y - a - αx)² + ridge·(α - α0)²/sw-normalised.
        lam = self._ridge / sw / 1000.0
        alpha = (sxy + lam * self._alpha0) / (sxx + lam)
        alpha = min(ALPHA_MAX, max(ALPHA_MIN, alpha))
        log_k = my - alpha * mx
        self._curve = PowerCurve(k=math.exp(log_k), alpha=alpha)
        return self._curve
