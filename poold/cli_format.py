"""Text for people: the operator commands' units, times and tables.

Hashrates and power in SI units (TH/s, PH/s, kW), amounts in BTC with all eight decimals,
instants as ISO 8601 UTC with their age ("12 s ago"), and tables whose columns line up (numbers
right-aligned). Everything here is pure: the caller passes `now`.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DASH = "-"
_SI = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def hashrate(hs: object) -> str:
    """H/s with an SI prefix: 1.31e15 -> "1.31 PH/s"."""
    v = _num(hs)
    if v is None:
        return DASH
    for factor, prefix in _SI:
        if abs(v) >= factor:
            return f"{v / factor:.2f} {prefix}H/s"
    return f"{v:.0f} H/s"


def ths(value: object) -> str:
    """A hashrate given in TH/s (firmware telemetry units)."""
    v = _num(value)
    return DASH if v is None else hashrate(v * 1e12)


def power(watts: object) -> str:
    """Watts as kW (MW from a megawatt): 3250 -> "3.25 kW"; under 1 kW as W."""
    v = _num(watts)
    if v is None:
        return DASH
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} MW"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.2f} kW"
    return f"{v:.0f} W"


def btc(sat: object) -> str:
    """Satoshis as BTC with all eight decimals: 5000000000 -> "50.00000000 BTC"."""
    if isinstance(sat, bool) or not isinstance(sat, int):
        return DASH
    sign = "-" if sat < 0 else ""
    whole, frac = divmod(abs(sat), 100_000_000)
    return f"{sign}{whole}.{frac:08d} BTC"


def iso(when: object) -> str:
    """Unix seconds as ISO 8601 UTC to the second; an ISO string is kept as it is."""
    if isinstance(when, str):
        return when
    v = _num(when)
    if v is None:
        return DASH
    return dt.datetime.fromtimestamp(v, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: object) -> str:
    """A span in the two largest units: 42 -> "42 s", 3725 -> "1 h 2 min"."""
    v = _num(seconds)
    if v is None:
        return DASH
    s = max(0, round(v))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def short_age(seconds: object) -> str:
    """A span in its largest unit only, for ages: 12.4 -> "12 s", 200 -> "3 min"."""
    v = _num(seconds)
    if v is None:
        return DASH
    s = max(0, round(v))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


def ago(when: object, now: float) -> str:
    """How long before `now` an instant was: "12 s ago" (an ISO string is shown as it is)."""
    if isinstance(when, str):
        return when
    v = _num(when)
    if v is None:
        return DASH
    if v > now + 1:
        return f"in {short_age(v - now)}"
    return f"{short_age(now - v)} ago"


def number(value: object, digits: int = 4) -> str:
    """A plain number: integers as they are, floats to `digits` significant digits."""
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    v = _num(value)
    return str(value) if v is None else f"{v:.{digits}g}"


def difficulty(value: object) -> str:
    """A share difficulty: 65536 -> "65,536"; 2.5e13 -> "25.00 T"; 1e-4 -> "0.0001"."""
    v = _num(value)
    if v is None:
        return DASH
    if abs(v) >= 1e12:
        for factor, prefix in _SI:
            if abs(v) >= factor:
                return f"{v / factor:.2f} {prefix}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def yes_no(value: object) -> str:
    return DASH if value is None else ("yes" if value else "no")


@dataclass(frozen=True, slots=True)
class Column:
    """One table column: its header, how a row's cell is written, and its alignment."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    right: bool = False


def table(columns: Sequence[Column], rows: Sequence[dict[str, Any]], empty: str = "(none)"
          ) -> str:
    """Rows under upper-case headers, two spaces between columns; numbers right-aligned."""
    if not rows:
        return empty
    cells = [[c.cell(r) for c in columns] for r in rows]
    widths = [max(len(c.header), *(len(row[i]) for row in cells))
              for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if c.right else v.ljust(w)
                 for v, w, c in zip(values, widths, columns, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line([c.header for c in columns]), *(line(row) for row in cells)])


def fields(pairs: Sequence[tuple[str, str]]) -> str:
    """`name  value` lines with the values in one column."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in pairs)
