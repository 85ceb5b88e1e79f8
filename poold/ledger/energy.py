"""Energy accounting: joules per accepted difficulty per worker and rack, kWh and cost per block.

Pure (no I/O). Input is the fleet controller's telemetry as `PowerSample`s (watts of the miner
that mines as `worker`, in `rack`, at `time`). `EnergyMeter` integrates each worker's power as a
step function (a reading holds until the next one, but never longer than `max_hold_s`: stale
telemetry is not extrapolated, it is left out and counted in `unmetered_s`). `report()` joins the
energy with the pool's accepted difficulty over the same period.

Units: a difficulty-1 share is 2**32 hashes on average, so J per accepted difficulty divided by
2**32 / 1e12 is J/TH, the efficiency figure operators compare with the miner's datasheet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from poold.ledger.records import EnergyRow

HASHES_PER_DIFFICULTY = 2**32
JOULES_PER_KWH = 3_600_000.0


@dataclass(frozen=True, slots=True)
class PowerSample:
    """One telemetry reading: `watts` drawn by the miner mining as `worker`, at Unix `time`."""

    worker: str
    rack: str
    time: float
    watts: float


class PowerReading(Protocol):
    """What the fleet's telemetry (poold.fleet.drivers.base.Telemetry) carries that counts here."""

    @property
    def time(self) -> float: ...

    @property
    def power_w(self) -> float | None: ...


def sample_from(worker: str, rack: str, reading: PowerReading) -> PowerSample | None:
    """A PowerSample from one fleet telemetry reading of the miner that mines as `worker`;
    None when the firmware reports no watts (then that miner is simply not metered)."""
    if reading.power_w is None:
        return None
    return PowerSample(worker=worker, rack=rack, time=reading.time, watts=reading.power_w)


class EnergyMeter:
    """Accumulates joules per (worker, rack) from samples; `drain()` hands out closed rows."""

    def __init__(self, *, max_hold_s: float = 120.0) -> None:
        if not max_hold_s > 0:
            raise ValueError("max_hold_s must be > 0")
        self.max_hold_s = max_hold_s
        self._last: dict[str, PowerSample] = {}
        self._joules: dict[tuple[str, str], float] = {}
        self._since: float | None = None
        self.unmetered_s = 0.0

    def add(self, sample: PowerSample) -> None:
        if not (math.isfinite(sample.watts) and sample.watts >= 0):
            raise ValueError(f"bad power reading for {sample.worker!r}: {sample.watts!r}")
        prev = self._last.get(sample.worker)
        if prev is not None and sample.time <= prev.time:
            return  # duplicate or out of order: the step function already covers it
        if prev is not None:
            dt = sample.time - prev.time
            held = min(dt, self.max_hold_s)
            self.unmetered_s += dt - held
            key = (prev.worker, prev.rack)
            self._joules[key] = self._joules.get(key, 0.0) + prev.watts * held
        if self._since is None:
            self._since = sample.time
        self._last[sample.worker] = sample

    def add_all(self, samples: Iterable[PowerSample]) -> None:
        for s in sorted(samples, key=lambda s: s.time):
            self.add(s)

    def drain(self, now: float) -> list[EnergyRow]:
        """Rows for the energy accumulated since the last drain (interval [since, now))."""
        start = self._since if self._since is not None else now
        rows = [EnergyRow(worker=w, rack=r, t_start=start, t_end=now, joules=j)
                for (w, r), j in sorted(self._joules.items()) if j > 0]
        self._joules.clear()
        self._since = now
        return rows


@dataclass(frozen=True, slots=True)
class Efficiency:
    joules: float
    difficulty: float

    @property
    def joules_per_difficulty(self) -> float | None:
        return self.joules / self.difficulty if self.difficulty > 0 else None

    @property
    def joules_per_terahash(self) -> float | None:
        jpd = self.joules_per_difficulty
        return None if jpd is None else jpd / (HASHES_PER_DIFFICULTY / 1e12)


@dataclass(frozen=True, slots=True)
class EnergyReport:
    start: float
    end: float
    workers: dict[str, Efficiency]
    racks: dict[str, Efficiency]
    total: Efficiency
    blocks: int
    tariff_per_kwh: float

    @property
    def kwh(self) -> float:
        return self.total.joules / JOULES_PER_KWH

    @property
    def kwh_per_block(self) -> float | None:
        return self.kwh / self.blocks if self.blocks else None

    @property
    def cost(self) -> float:
        return self.kwh * self.tariff_per_kwh

    @property
    def cost_per_block(self) -> float | None:
        return self.cost / self.blocks if self.blocks else None

    def as_dict(self) -> dict[str, object]:
        def eff(e: Efficiency) -> dict[str, float | None]:
            return {"joules": e.joules, "difficulty": e.difficulty,
                    "joules_per_difficulty": e.joules_per_difficulty,
                    "joules_per_terahash": e.joules_per_terahash}

        return {
            "start": self.start, "end": self.end, "kwh": self.kwh, "blocks": self.blocks,
            "kwh_per_block": self.kwh_per_block, "tariff_per_kwh": self.tariff_per_kwh,
            "cost": self.cost, "cost_per_block": self.cost_per_block, "total": eff(self.total),
            "workers": {w: eff(e) for w, e in sorted(self.workers.items())},
            "racks": {r: eff(e) for r, e in sorted(self.racks.items())},
        }


def report(rows: Iterable[EnergyRow], difficulty_by_worker: Mapping[str, float], *,
           start: float, end: float, blocks: int, tariff_per_kwh: float) -> EnergyReport:
    """Join energy rows with accepted difficulty per worker (a worker's rack: its energy rows)."""
    joules: dict[str, float] = {}
    rack_of: dict[str, str] = {}
    for r in rows:
        joules[r.worker] = joules.get(r.worker, 0.0) + r.joules
        rack_of[r.worker] = r.rack
    workers = {w: Efficiency(joules.get(w, 0.0), difficulty_by_worker.get(w, 0.0))
               for w in set(joules) | set(difficulty_by_worker)}
    racks: dict[str, Efficiency] = {}
    for w, e in workers.items():
        rack = rack_of.get(w, "")
        if not rack:
            continue  # shares from miners the fleet does not know: no energy to relate them to
        prev = racks.get(rack, Efficiency(0.0, 0.0))
        racks[rack] = Efficiency(prev.joules + e.joules, prev.difficulty + e.difficulty)
    total = Efficiency(sum(joules.values()),
                       sum(difficulty_by_worker.get(w, 0.0) for w in rack_of))
    return EnergyReport(start=start, end=end, workers=workers, racks=racks, total=total,
                        blocks=blocks, tariff_per_kwh=tariff_per_kwh)
