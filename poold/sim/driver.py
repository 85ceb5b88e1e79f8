"""The seam between the emulator and the fleet controller.

`SimDriver` drives a `SimAsic` in-process through the fleet's `MinerDriver` protocol, with
command latency and faults on the asic's clock and no sockets (the virtual-time benchmark and the
property tests); `capabilities_of` and `telemetry_of` describe an emulated miner in the fleet's
terms. Over TCP, the firmware servers in poold.sim.firmware_* serve the same `SimAsic` to the
real drivers instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    DriverTimeout,
    FirmwareProtocolError,
    Level,
    Secret,
    Telemetry,
    UnsupportedError,
    VerifyError,
)
from poold.fleet.policy import Actuator
from poold.sim.asic import WATTS, SimAsic


def capabilities_of(asic: SimAsic) -> Capabilities:
    """What the fleet's drivers would learn from this miner's firmware."""
    s = asic.spec
    return Capabilities(
        actuator=Actuator(s.actuator),
        min_w=s.min_w
        if s.actuator == WATTS
        else (s.presets[0] if s.presets else s.p_nom_w),
        max_w=s.max_w
        if s.actuator == WATTS
        else (s.presets[-1] if s.presets else s.p_nom_w),
        levels=(tuple(Level(p.name, p.watts, p.ths) for p in asic.levels())
                if s.actuator != WATTS else ()),
        sleep_w=s.sleep_w,
        settle_s=asic.dyn.settle_s,
        sleep_settle_s=asic.dyn.sleep_settle_s,
        wake_settle_s=asic.dyn.wake_settle_s,
        reboots_on_change=asic.faults.reboot_on_command,
    )


def telemetry_of(asic: SimAsic) -> Telemetry:
    """One reading as the fleet's drivers report it (what the firmware claims, faults included)."""
    p = asic.reported_power_w()
    lvl = asic.reported_level()
    return Telemetry(
        time=asic.clock.now(),
        power_w=p,
        hashrate_ths=asic.hashrate_ths() * asic.faults.false_hashrate,
        target_w=(
            asic.reported_target_w()
            if asic.spec.actuator == WATTS
            else (asic.spec.presets[lvl] if asic.spec.presets else None)
        ),
        level=asic.level_name(lvl) if asic.spec.presets else None,
        sleeping=asic.reported_sleep(),
        temps_c=(round(asic.temp_c(), 1),),
        fans_rpm=(int(2000 + 3 * max(0.0, asic.temp_c() - 30) * 40),),
        boards_alive=0 if asic.rebooting or asic.sleeping else 3,
        uptime_s=asic.uptime_s(),
        firmware=asic.spec.firmware,
        model=asic.spec.model,
        pool_connected=not (asic.rebooting or asic.sleeping),
    )


@dataclass(slots=True)
class SimDriver:
    """Talks to a SimAsic directly; latency and faults are simulated on the asic's clock."""

    asic: SimAsic
    latency_s: float = 0.2
    timeout_s: float = 5.0
    kind: str = "sim"
    calls: int = field(default=0)

    async def _io(self) -> None:
        self.calls += 1
        f = self.asic.faults
        if f.timeout:
            await self.asic.clock.sleep(self.timeout_s)
            raise DriverTimeout(f"{self.asic.miner_id}: no answer within {self.timeout_s:g} s")
        await self.asic.clock.sleep(self.latency_s)
        if f.malformed:
            raise FirmwareProtocolError(f"{self.asic.miner_id}: malformed reply")
        if self.asic.rebooting:
            raise DriverError(f"{self.asic.miner_id}: connection refused (rebooting)")

    async def capabilities(self) -> Capabilities:
        await self._io()
        return capabilities_of(self.asic)

    async def read(self) -> Telemetry:
        await self._io()
        return telemetry_of(self.asic)

    async def apply(self, desired: Desired) -> Telemetry:
        await self._io()
        a = self.asic
        if desired.sleep != a.reported_sleep():
            a.set_sleep(desired.sleep)
        if not desired.sleep:
            if a.spec.actuator == WATTS and desired.watts is not None:
                if abs(a.reported_target_w() - desired.watts) >= 1.0:
                    a.set_power_target(desired.watts)
            elif desired.level is not None and a.spec.presets:
                names = [a.level_name(i) for i in range(len(a.spec.presets))]
                if desired.level not in names:
                    raise UnsupportedError(f"no level {desired.level!r}")
                idx = names.index(desired.level)
                if idx != a.reported_level():
                    a.set_level(idx)
        await self._io()
        t = telemetry_of(a)
        if (
            t.sleeping != desired.sleep
            or (
                not desired.sleep
                and desired.watts is not None
                and t.target_w is not None
                and a.spec.actuator == WATTS
                and abs(t.target_w - min(a.spec.max_w, max(a.spec.min_w, desired.watts))) >= 1.0
            )
            or (not desired.sleep and desired.level is not None and t.level != desired.level)
        ):
            raise VerifyError(f"{a.miner_id}: read-back does not show the new setting")
        return t

    async def reboot(self) -> None:
        await self._io()
        self.asic.reboot()

    async def restart_mining(self) -> None:
        await self._io()

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        await self._io()
        self.asic.pool = (url, user)

    async def close(self) -> None:
        return None
