"""Optional adapter to pyasic (extra ``poold[pyasic]``) for models the native drivers lack.

pyasic's ``set_power_limit`` means different things per backend (docs/FLEET.md §1: exact watts,
"highest preset ≤ W", a reboot, or a full-config rewrite), so this adapter is telemetry plus
sleep/wake only, declared as an on/off actuator; it is imported only when configured.
"""


from __future__ import annotations

import time
from typing import Any

from poold.fleet.drivers.base import (
    Capabilities,
    Desired,
    DriverError,
    Secret,
    Telemetry,
    UnsupportedError,
    VerifyError,
    with_timeout,
)
from poold.fleet.policy import Actuator

try:  # optional dependency
    import pyasic
except ImportError:  # pragma: no cover - depends on the environment
    pyasic = None


def available() -> bool:
    return pyasic is not None


class PyasicDriver:
    kind = "pyasic"

    def __init__(self, host: str, *, nameplate_w: float, max_w: float | None = None,
                 timeout_s: float = 15.0) -> None:
        if pyasic is None:
            raise UnsupportedError("pyasic is not installed (pip install 'poold[pyasic]')")
        self.host = host
        # On/off only: awake it draws its nameplate whatever max_w says, so that is what it
        # declares (an operator max_w below nameplate leaves the controller sleep alone).
        self.nameplate_w = nameplate_w
        self.max_w = max_w
        self.timeout_s = timeout_s
        self._miner: Any = None

    def __repr__(self) -> str:
        return f"PyasicDriver({self.host})"

    async def _get(self) -> Any:
        if self._miner is None:
            self._miner = await with_timeout(self.timeout_s, repr(self),
                                             lambda: pyasic.get_miner(self.host))
            if self._miner is None:
                raise DriverError(f"{self!r}: pyasic could not identify the miner")
        return self._miner

    async def capabilities(self) -> Capabilities:
        m = await self._get()
        # pyasic's stop/resume map to each backend's own sleep, whose timing no backend
        # documents: a generic budget of 10 s to sleep and a board restart (60 s) to wake.
        return Capabilities(actuator=Actuator.ONOFF, min_w=self.nameplate_w,
                            max_w=self.nameplate_w, can_sleep=bool(m.supports_shutdown),
                            settle_s=30.0, sleep_settle_s=10.0, wake_settle_s=60.0)

    async def read(self) -> Telemetry:
        m = await self._get()
        d = await with_timeout(self.timeout_s, repr(self), m.get_data)
        return Telemetry(
            time=time.monotonic(),
            power_w=float(d.wattage) if d.wattage else None,
            hashrate_ths=float(d.hashrate) if d.hashrate is not None else None,
            sleeping=d.is_mining is False,
            temps_c=tuple(float(b.temp) for b in d.hashboards if b.temp is not None),
            fans_rpm=tuple(int(f.speed) for f in d.fans if f.speed is not None),
            uptime_s=d.uptime, model=str(d.model or ""), firmware=str(d.firmware or ""),
        )

    async def apply(self, desired: Desired) -> Telemetry:
        m = await self._get()
        before = await self.read()
        if desired.sleep != before.sleeping:
            fn = m.stop_mining if desired.sleep else m.resume_mining
            ok = await with_timeout(self.timeout_s, repr(self), fn)
            if not ok:  # pyasic reports failure as False
                raise DriverError(f"{self!r}: pyasic refused the command")
        after = await self.read()
        if after.sleeping != desired.sleep:
            raise VerifyError(f"{self!r}: read-back sleeping={after.sleeping}")
        return after

    async def reboot(self) -> None:
        m = await self._get()
        if not await with_timeout(self.timeout_s, repr(self), m.reboot):
            raise DriverError(f"{self!r}: reboot refused")

    async def restart_mining(self) -> None:
        m = await self._get()
        if not await with_timeout(self.timeout_s, repr(self), m.restart_backend):
            raise DriverError(f"{self!r}: restart refused")

    async def set_pool(self, url: str, user: str, password: Secret) -> None:
        raise UnsupportedError(f"{self!r}: pool changes through pyasic rewrite the whole config")

    async def close(self) -> None:
        return None
