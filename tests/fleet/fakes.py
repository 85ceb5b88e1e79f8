"""A scripted in-memory driver and a small fleet for the unit tests of the controller's parts
(pure logic: no firmware behaviour is modelled beyond "answers what it was told")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from poold.fleet.drivers.base import Capabilities, Desired, DriverError, Level, Secret, Telemetry
from poold.fleet.inventory import FleetConfig, parse_fleet
from poold.fleet.policy import Actuator


@dataclass
class FakeDriver:
    """Draws exactly what it was last told (hashrate on a 3000 W / 100 TH/s curve); `fail`
    makes every call raise."""

    caps: Capabilities
    kind: str = "fake"
    power_w: float = 3000.0
    sleeping: bool = False
    fail: str | None = None
    applied: list[Desired] = field(default_factory=list)
    reads: int = 0
    now: float = 0.0
    #: With a clock, the meter follows a new target as a first-order lag of `tau_s`.
    clock: Any = None
    tau_s: float = 0.0
    _from_w: float = 0.0
    _at: float = 0.0
    #: (time, watts, meter just before) of every target applied, with a clock
    targets: list[tuple[float, float, float]] = field(default_factory=list)

    def _check(self) -> None:
        if self.fail is not None:
            raise DriverError(self.fail)

    async def capabilities(self) -> Capabilities:
        self._check()
        return self.caps

    def meter_w(self) -> float:
        if self.sleeping:
            return self.caps.sleep_w
        if self.clock is None or self.tau_s <= 0:
            return self.power_w
        dt = self.clock.now() - self._at
        return self.power_w + (self._from_w - self.power_w) * math.exp(-dt / self.tau_s)

    def telemetry(self) -> Telemetry:
        w = self.meter_w()
        return Telemetry(time=self.now, power_w=w, hashrate_ths=0.0 if self.sleeping
                         else 100.0 * (w / 3000.0) ** 0.6, target_w=self.power_w,
                         sleeping=self.sleeping)

    async def read(self) -> Telemetry:
        self._check()
        self.reads += 1
        return self.telemetry()

    async def apply(self, desired: Desired) -> Telemetry:
        self._check()
        self.applied.append(desired)
        before = self.meter_w()
        if self.clock is not None:
            self._from_w, self._at = before, self.clock.now()
        self.sleeping = desired.sleep
        if desired.watts is not None:
            self.power_w = desired.watts
        if desired.level is not None:
            self.power_w = next(lv.watts for lv in self.caps.levels if lv.name == desired.level)
        if self.clock is not None and not desired.sleep:
            self.targets.append((self.clock.now(), self.power_w, before))
        return self.telemetry()

    async def reboot(self) -> None:
        self._check()

    async def restart_mining(self) -> None:
        self._check()

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        self._check()

    async def close(self) -> None:
        return None


def watts_caps(min_w: float = 1000.0, max_w: float = 3000.0, settle_s: float = 5.0
               ) -> Capabilities:
    return Capabilities(Actuator.WATTS, min_w, max_w, settle_s=settle_s)


def preset_caps(watts: Sequence[float]) -> Capabilities:
    levels = tuple(Level(f"p{int(w)}", w) for w in watts)
    return Capabilities(Actuator.PRESETS, watts[0], watts[-1], levels=levels, settle_s=5.0)


def fleet(racks: Sequence[int], *, nameplate_w: float = 3000.0, cap_factor: float = 1.0,
          containers: bool = False, allowed_s: float = 10.0, **options: Any) -> FleetConfig:
    """racks[i] miners in rack i, each `nameplate_w` at 100 TH/s; cap = factor * nameplates."""
    miners = []
    rack_rows = []
    for i, n in enumerate(racks):
        rid = f"r{i}"
        for j in range(n):
            miners.append({"id": f"{rid}m{j}", "rack": rid, "host": "fake", "driver": "braiins",
                           "nameplate_w": nameplate_w, "nameplate_ths": 100.0,
                           "min_w": nameplate_w / 3})
        row: dict[str, Any] = {"id": rid, "cap_kw": n * nameplate_w * cap_factor / 1000.0,
                               "over_cap_allowed_s": allowed_s}
        if containers:
            row["container"] = "c0"
        rack_rows.append(row)
    total = sum(racks) * nameplate_w / 1000.0
    table: dict[str, Any] = {"site": "s", "cap_kw": total, "racks": rack_rows,
                             "over_cap_allowed_s": allowed_s, "miners": miners, **options}
    if containers:
        table["containers"] = [{"id": "c0", "cap_kw": total, "over_cap_allowed_s": allowed_s}]
    return parse_fleet(table, "<test>")


class ManualClock:
    """A clock the test moves by hand (for the synchronous parts)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_767_225_600.0 + self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def controller(cfg: FleetConfig, caps: Capabilities | None = None, clock: Any = None,
               **kw: Any) -> tuple[Any, dict[str, FakeDriver]]:
    """A FleetController over FakeDrivers (all with `caps`, default watts 1000-3000 W)."""
    from poold.fleet.controller import FleetController

    drivers = {m.id: FakeDriver(caps or watts_caps()) for m in cfg.miners}
    ctl = FleetController(cfg, drivers, clock=clock or ManualClock(), **kw)
    return ctl, drivers


def feed(ctl: Any, drivers: dict[str, FakeDriver], now: float) -> None:
    """Every miner's capabilities and a fresh reading, as if just polled."""
    for mid, m in ctl.miners.items():
        d = drivers[mid]
        m.caps = d.caps
        d.now = now
        ctl.dispatcher.take(m, d.telemetry(), now, steady=True)
