"""Variable difficulty: move a session's difficulty toward one share per `share_interval_s`.

A retarget happens when a session has sent `fast_shares` shares (it is far too easy) or when
`window_s` has passed. The estimate is difficulty * expected / observed shares; it is applied
only if it differs from the current value by more than the hysteresis band, with the step capped
(up `max_up` times, down `max_down` times) so one unlucky window cannot swing it far. With no
share in a whole window the estimate assumes half a share, which lowers the difficulty for
miners that are too slow. The result goes through `DifficultyPolicy.resolve` (floors and port
bounds) in the caller.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Vardiff:
    share_interval_s: float = 10.0
    window_s: float = 60.0
    fast_shares: int = 16
    hysteresis: float = 1.5
    max_up: float = 256.0
    max_down: float = 8.0

    def __post_init__(self) -> None:
        if self.share_interval_s <= 0 or self.window_s <= 0 or self.fast_shares < 1:
            raise ValueError("vardiff intervals and counts must be positive")

    def due(self, shares: int, elapsed: float) -> bool:
        """Whether a retarget should be computed now (cheap; called per accepted share)."""
        return shares >= self.fast_shares or elapsed >= self.window_s

    def retarget(self, difficulty: float, shares: int, elapsed: float) -> float | None:
        """The new difficulty, or None to keep the current one."""
        if elapsed <= 0.0:
            return None
        observed = shares if shares > 0 else 0.5
        ratio = observed * self.share_interval_s / elapsed
        if 1.0 / self.hysteresis < ratio < self.hysteresis:
            return None
        ratio = min(max(ratio, 1.0 / self.max_down), self.max_up)
        return difficulty * ratio
