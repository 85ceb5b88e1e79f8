"""The two speeds of a grid response: the fast step (sleep, in seconds) and the slow step's rule
for giving hashrate back without crossing the level again.

A grid operator's signal (or the loss of it) can ask for the site at a lower level within
seconds. Only sleep is that fast: a Braiins OS pause or a LuxOS `curtail sleep` takes a miner
to tens of watts in 1–3 s (https://docs.luxor.tech/firmware/api/luxminer/curtail), while a
lower watt target ramps over tens of seconds (Braiins' tuner: about 30 s). So:

- **fast step** (`SleepOrder.choose`): from an ordering computed ahead of time (miners with
  sleep/wake cycles left first; least efficient first; racks interleaved so no rack takes the
  whole cut), the shortest prefix whose sleep brings the projected site power under the level
  with a margin, then pruned of every member the cut does not need (most efficient first). The
  ordering costs one sort when the fleet changes; the choice walks it once, so it takes
  milliseconds at 10,000 miners.
- **slow step** (`admit_raises`): once the meters are under the level, the planner
  (poold.fleet.policy: equal marginal hashrate per watt, ``H = k·P^α``) spreads the level over
  the miners again and wakes the sleepers; every raise or wake is admitted only while the
  projected envelope (each miner at the higher of its present draw and its new setting, so a
  decrease counts before it has happened on the meters) stays under the level with margin.
  Decreases go at once; raises follow as the decreases show on the meters.

Pure: no I/O, no asyncio (tests/fleet/test_fast_step.py).
"""

# ruff: noqa: RUF002  (math notation in docstrings is intended)

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SleepCandidate:
    """A miner the fast step may sleep: its rack, efficiency at its present setting (TH/s per
    W: lower sleeps first), its power asleep, and whether it has sleep/wake cycles left."""

    miner_id: str
    rack: str
    ths_per_w: float
    sleep_w: float = 30.0
    may_cycle: bool = True


@dataclass(frozen=True, slots=True)
class FastStep:
    """The miners to sleep now. `projected_w`: the site once they are asleep; `feasible`: it
    is under the level with the margin (else every available candidate was taken)."""

    sleep: tuple[str, ...]
    site_w: float
    projected_w: float
    level_w: float
    feasible: bool


class SleepOrder:
    """The precomputed order in which the fast step sleeps miners.

    Miners with cycles left come before those without (a cycle budget is soft, the level is
    not); within each group racks are interleaved round-robin, each rack contributing its
    least efficient miner first, and each round is ordered by efficiency.
    """

    __slots__ = ("_ids", "_sleep_w")

    def __init__(self, candidates: Iterable[SleepCandidate]) -> None:
        ordered: list[SleepCandidate] = []
        cands = list(candidates)
        for group in (True, False):
            by_rack: dict[str, list[SleepCandidate]] = {}
            for c in cands:
                if c.may_cycle is group:
                    by_rack.setdefault(c.rack, []).append(c)
            # rank within its rack (0 = least efficient), then efficiency, then id (stable)
            keyed: list[tuple[int, float, str, SleepCandidate]] = []
            for ms in by_rack.values():
                ms.sort(key=lambda c: (c.ths_per_w, c.miner_id))
                keyed.extend((i, c.ths_per_w, c.miner_id, c) for i, c in enumerate(ms))
            keyed.sort(key=lambda k: (k[0], k[1], k[2]))
            ordered.extend(k[3] for k in keyed)
        self._ids = tuple(c.miner_id for c in ordered)
        self._sleep_w = tuple(c.sleep_w for c in ordered)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def order(self) -> tuple[str, ...]:
        return self._ids

    def choose(self, power_w: Mapping[str, float], level_w: float, *, margin_w: float = 0.0,
               unavailable: Collection[str] = (), site_w: float | None = None) -> FastStep:
        """The miners to sleep so that the site (Σ `power_w`, or `site_w` if given: every
        miner's projected draw, worst case for the blind) ends at most `level_w − margin_w`.

        `power_w` must hold every candidate's projected draw; candidates in `unavailable`
        (asleep, busy, faulty, blind) are skipped, as are those already at their sleep power.
        """
        total = sum(power_w.values()) if site_w is None else site_w
        goal = level_w - margin_w
        need = total - goal
        if need <= 0:
            return FastStep((), total, total, level_w, True)
        chosen: list[tuple[str, float]] = []
        freed = 0.0
        for mid, sw in zip(self._ids, self._sleep_w, strict=True):
            if mid in unavailable:
                continue
            gain = power_w.get(mid, 0.0) - sw
            if gain <= 0:
                continue
            chosen.append((mid, gain))
            freed += gain
            if freed >= need:
                break
        if freed >= need and len(chosen) > 1:
            # Prune: the prefix's last member may have covered the need alone for some of the
            # earlier ones; keep out (most efficient first, i.e. from the end of the prefix)
            # whoever the cut does not need.
            keep: list[tuple[str, float]] = []
            for mid, gain in reversed(chosen):
                if freed - gain >= need:
                    freed -= gain
                else:
                    keep.append((mid, gain))
            keep.reverse()
            chosen = keep
        projected = total - freed
        return FastStep(tuple(m for m, _ in chosen), total, projected, level_w,
                        projected <= goal + 1e-6)


@dataclass(frozen=True, slots=True)
class Raise:
    """A planned increase (a wake, or a higher target): from `present_w` (what the miner is
    projected to draw now) to `target_w`, for `gain_ths` more hashrate."""

    miner_id: str
    present_w: float
    target_w: float
    gain_ths: float


def admit_raises(raises: Sequence[Raise], envelope_w: float, level_w: float, *,
                 margin_w: float = 0.0) -> list[str]:
    """The raises to start now so the projected envelope stays under the level: best gain per
    added watt first, each admitted while ``envelope + Σ added ≤ level − margin``.

    `envelope_w` is the site's projected draw with every planned decrease still counted at the
    higher of its present draw and its new setting (a decrease helps only once the meters show
    it), and every raise already under way at its new setting.
    """
    room = level_w - margin_w - envelope_w
    if room <= 0:
        return []
    ranked = sorted(raises, key=lambda r: (-(r.gain_ths / max(r.target_w - r.present_w, 1e-9)),
                                           r.miner_id))
    out: list[str] = []
    for r in ranked:
        add = max(0.0, r.target_w - r.present_w)
        if add <= room:
            out.append(r.miner_id)
            room -= add
    return out
