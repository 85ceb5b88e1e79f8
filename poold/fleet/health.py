"""Miner health: telemetry freshness, thermal protection, rate-limited actions, faulty marking,
and the pool's share-based hashrate per worker (the ground truth the controller trusts).

- `MinerHealth` holds one miner's latest telemetry with its receipt time; older than the stale
  limit it is stale and the controller counts the miner at worst case.
- `thermal_cap` lowers a miner's allowed watts before the firmware's own protection trips
  (docs/FLEET.md §4): above the limit → 85 % of present power; 10 °C above → sleep; the cap is
  released with 5 °C of hysteresis. The limit is lowered on hot ambient days.
- `ActionLimiter` rate-limits operator actions (reboot, restart, set pool) per miner.
- Failed commands back off exponentially (`BACKOFF_BASE_S` doubling, at most `BACKOFF_MAX_S`);
  a miner that fails `faulty_after` commands in a row is marked faulty and left alone until its
  back-off has passed; then it is tried again, and the first command it takes (or, with nothing
  to command, the first good reading) clears it. An operator can clear it by hand at any time.
- `ShareRateEstimator` turns accepted share difficulty into H/s per worker (2^32 hashes per
  difficulty-1 share) over a sliding window; `expected_shares` says how trustworthy it is.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from poold.fleet.drivers.base import Telemetry

HASHES_PER_DIFF1 = 2.0**32
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 300.0
THERMAL_SLEEP_MARGIN_C = 10.0
THERMAL_RELEASE_C = 5.0
THERMAL_STEP = 0.85


@dataclass(slots=True)
class MinerHealth:
    telemetry: Telemetry | None = None
    received_at: float = -math.inf
    failures: int = 0
    faulty: bool = False
    fault_reason: str = ""
    thermal_cap_w: float | None = None  # None = no thermal limit; 0 = sleep
    not_following: bool = False
    #: Watts the reported hashrate needs on the nameplate curve, when the reported power is
    #: implausibly below it (a firmware under-reporting its power).
    implied_w: float | None = None

    def age(self, now: float) -> float:
        return now - self.received_at

    def stale(self, now: float, stale_after_s: float) -> bool:
        return self.telemetry is None or self.age(now) > stale_after_s

    #: No new command before this time (back-off after failures).
    retry_at: float = -math.inf

    def record_failure(self, reason: str, faulty_after: int, now: float | None = None) -> bool:
        """Count a failed command (and back off from `now`); True if this marks the miner
        faulty."""
        self.failures += 1
        if now is not None:
            self.retry_at = now + self.backoff_s()
        if not self.faulty and self.failures >= faulty_after:
            self.faulty = True
            self.fault_reason = reason
            return True
        return False

    def backoff_s(self) -> float:
        """The wait after the present run of failures: 2, 4, 8 ... s, at most 5 minutes."""
        if self.failures <= 0:
            return 0.0
        return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** min(self.failures - 1, 20))

    def backing_off(self, now: float) -> bool:
        return now < self.retry_at

    def record_success(self) -> bool:
        """A command taken; True if this cleared a faulty mark."""
        was = self.faulty
        self.failures = 0
        self.retry_at = -math.inf
        self.faulty = False
        self.fault_reason = ""
        return was

    def clear_faulty(self) -> None:
        self.record_success()
        self.not_following = False


def ambient_adjusted_limit(limit_c: float, ambient_c: float | None) -> float:
    """Lower the temperature limit 0.5 °C per °C of ambient above 30 °C (hot-day margin:
    firmware derates sooner when inlet air is hot, docs/FLEET.md §4), never below limit - 10."""
    if ambient_c is None or ambient_c <= 30.0:
        return limit_c
    return max(limit_c - 10.0, limit_c - 0.5 * (ambient_c - 30.0))


def thermal_cap(h: MinerHealth, limit_c: float, min_w: float) -> float | None:
    """Update and return the thermal cap from the latest telemetry."""
    t = h.telemetry
    temp = t.max_temp_c if t is not None else None
    if temp is None or t is None:
        return h.thermal_cap_w
    if temp >= limit_c + THERMAL_SLEEP_MARGIN_C:
        h.thermal_cap_w = 0.0
    elif temp >= limit_c:
        present = t.power_w if t.power_w is not None else t.target_w
        if present is not None and present > 0:
            lowered = max(min_w, present * THERMAL_STEP)
            h.thermal_cap_w = lowered if h.thermal_cap_w is None else min(h.thermal_cap_w,
                                                                          lowered)
    elif temp <= limit_c - THERMAL_RELEASE_C:
        h.thermal_cap_w = None
    return h.thermal_cap_w


@dataclass(slots=True)
class ActionLimiter:
    """At most `max_actions` per `window_s` per miner for each action kind."""

    max_actions: int = 2
    window_s: float = 3600.0
    _log: dict[tuple[str, str], deque[float]] = field(default_factory=dict)

    def allow(self, miner_id: str, action: str, now: float) -> bool:
        q = self._log.setdefault((miner_id, action), deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        if len(q) >= self.max_actions:
            return False
        q.append(now)
        return True


class ShareRateEstimator:
    """Per-worker hashrate from accepted shares: Σ difficulty · 2^32 / window."""

    def __init__(self, window_s: float = 300.0, min_window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.min_window_s = min_window_s
        self._shares: dict[str, deque[tuple[float, float]]] = {}
        self._first: dict[str, float] = {}

    def record(self, worker: str, difficulty: float, t: float) -> None:
        self._shares.setdefault(worker, deque()).append((t, difficulty))
        self._first.setdefault(worker, t)

    def forget(self, worker: str) -> None:
        """Drop a worker's history (reconnected under a new identity, or removed)."""
        self._shares.pop(worker, None)
        self._first.pop(worker, None)

    def _trim(self, worker: str, now: float, window_s: float) -> deque[tuple[float, float]]:
        q = self._shares.get(worker)
        if q is None:
            return deque()
        while q and now - q[0][0] > max(window_s, self.window_s):
            q.popleft()
        return q

    def hashrate_hs(self, worker: str, now: float, window_s: float | None = None) -> float | None:
        """H/s over the last `window_s` (default the estimator's window); None if no shares."""
        w = self.window_s if window_s is None else window_s
        q = self._trim(worker, now, w)
        if not q:
            return None
        # A worker seen for less than the window is measured over the time it was seen.
        w = min(w, now - self._first[worker])
        if w < self.min_window_s:
            return None
        total = sum(d for t, d in q if now - t <= w)
        return total * HASHES_PER_DIFF1 / w

    def shares(self, worker: str, now: float, window_s: float) -> int:
        return sum(1 for t, _ in self._trim(worker, now, window_s) if now - t <= window_s)


def expected_shares(hashrate_hs: float, difficulty: float, window_s: float) -> float:
    """Shares a worker at `hashrate_hs` finds at `difficulty` in `window_s` (Poisson mean);
    the relative error of a rate estimate is ≈ 1/√N (docs/FLEET.md §5)."""
    return hashrate_hs * window_s / (difficulty * HASHES_PER_DIFF1)
