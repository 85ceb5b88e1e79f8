"""The one precedence for a session's share difficulty (DESIGN.md "Difficulty is frozen per job").

Sources, strongest first:

1. **Port bounds** `[min_difficulty, max_difficulty]` of the Stratum port clamp everything.
2. **Floors chosen by the miner**: BIP310 `minimum-difficulty.value` and the password hint `md=`.
   The higher of the two is a floor for every later value (but never above the port maximum).
3. **Suggestions**: `mining.suggest_difficulty`, `mining.suggest_target` and the password hint
   `d=` set the current difficulty when they arrive (floats allowed, also before authorize),
   clamped by 1-2. A later suggestion replaces an earlier one.
4. **Vardiff** then moves the difficulty toward the configured share interval, within 1-2. It is
   not frozen by a suggestion (users of pools that do that complain: docs/STRATUM.md §5).

The difficulty in force when a job is sent is the one its shares are judged against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def sane_difficulty(value: object) -> float | None:
    """A usable difficulty from untrusted input (int, float or numeric string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        d = float(value)
    elif isinstance(value, str):
        try:
            d = float(value)
        except ValueError:
            return None
    else:
        return None
    if not math.isfinite(d) or d <= 0.0:
        return None
    return d


@dataclass(frozen=True, slots=True)
class DifficultyPolicy:
    """Port bounds and the start value; `resolve` applies the precedence above."""

    start: float
    port_min: float
    port_max: float

    def __post_init__(self) -> None:
        if not 0.0 < self.port_min <= self.port_max:
            raise ValueError("need 0 < min_difficulty <= max_difficulty")

    def floor(self, minimum: float | None, md: float | None) -> float:
        """Lowest difficulty allowed for a session with these miner-chosen floors."""
        f = self.port_min
        if minimum is not None and minimum > f:
            f = minimum
        if md is not None and md > f:
            f = md
        return min(f, self.port_max)

    def resolve(
        self, wanted: float, minimum: float | None = None, md: float | None = None
    ) -> float:
        """`wanted` (a suggestion, the start value or a vardiff result) after the bounds."""
        lo = self.floor(minimum, md)
        if wanted < lo:
            return lo
        if wanted > self.port_max:
            return self.port_max
        return wanted
