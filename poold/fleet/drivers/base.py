"""The one async interface every firmware driver implements, and its values.

A driver declares what it can do (`Capabilities`: actuator class, min/max watts, levels,
settle time, whether a change reboots the miner), reads `Telemetry`, and applies a `Desired`
state. `apply` is idempotent (it reads first and sends only what differs), bounded by a
timeout, and verified by reading back what the firmware now reports; a firmware that
acknowledges but does not take the setting raises `VerifyError`.

Credentials are held in `Secret`, whose repr and str are redacted, so a driver can be logged.
"""


from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from poold.errors import PooldError
from poold.fleet.policy import Actuator

T = TypeVar("T")


class DriverError(PooldError):
    """A firmware command failed (network, protocol, refusal)."""


class DriverTimeout(DriverError):
    """No answer within the command timeout."""


class FirmwareProtocolError(DriverError):
    """The firmware answered something we cannot parse or did not expect."""


class FirmwareAuthError(DriverError):
    """The firmware refused our credentials."""


class VerifyError(DriverError):
    """The command was acknowledged but reading back shows it did not take effect."""


class UnsupportedError(DriverError):
    """The driver has no way to do this (read-only driver, on/off-only actuator...)."""


@dataclass(frozen=True, slots=True)
class Secret:
    """A password or token that never appears in logs, reprs or exceptions."""

    value: str

    def __repr__(self) -> str:
        return "Secret(***)"

    def __str__(self) -> str:
        return "***"


@dataclass(frozen=True, slots=True)
class Level:
    """One preset/mode/profile: the firmware's name for it, its watts and expected TH/s."""

    name: str
    watts: float
    ths: float = 0.0


@dataclass(frozen=True, slots=True)
class Capabilities:
    actuator: Actuator
    min_w: float
    max_w: float
    step_w: float = 1.0
    levels: tuple[Level, ...] = ()  # ascending watts; PRESETS/MODES/ONOFF
    can_sleep: bool = True
    sleep_w: float = 30.0
    # The longest the firmware documents (or is measured) to take to reach a new setting;
    # the controller judges "settled" from telemetry converging, bounded by these maxima.
    settle_s: float = 10.0  # a new watt target or level
    sleep_settle_s: float = 5.0  # asleep (power at `sleep_w`)
    wake_settle_s: float = 60.0  # awake again and hashing at the asked level
    reboots_on_change: bool = False
    read_only: bool = False

    @property
    def asleep_w(self) -> float:
        """The most a miner told to sleep may draw and still count as asleep (the tail of
        its ramp down, its controller board)."""
        return max(1.5 * self.sleep_w, 100.0)


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One reading. `power_w` None = the firmware does not report watts (stock S19)."""

    time: float
    power_w: float | None
    hashrate_ths: float | None
    target_w: float | None = None
    level: str | None = None
    sleeping: bool = False
    temps_c: tuple[float, ...] = ()
    fans_rpm: tuple[int, ...] = ()
    boards_alive: int | None = None
    uptime_s: float | None = None
    errors: tuple[str, ...] = ()
    firmware: str = ""
    model: str = ""
    pool_connected: bool | None = None

    @property
    def max_temp_c(self) -> float | None:
        return max(self.temps_c) if self.temps_c else None


@dataclass(frozen=True, slots=True)
class Desired:
    """The state we want: asleep, or awake at `watts` (WATTS) / `level` (PRESETS, MODES)."""

    sleep: bool = False
    watts: float | None = None
    level: str | None = None


class MinerDriver(Protocol):
    """One miner's firmware API. All methods are safe to call concurrently from one task."""

    kind: str  # "braiins", "luxos", ... (metric label)

    async def capabilities(self) -> Capabilities: ...

    async def read(self) -> Telemetry: ...

    async def apply(self, desired: Desired) -> Telemetry: ...

    async def reboot(self) -> None: ...

    async def restart_mining(self) -> None: ...

    async def set_pool(self, url: str, user: str, password: Secret) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class FastSleep(Protocol):
    """A driver that can send sleep alone: the firmware's one documented sleep call, without
    the reads before and after that `apply` makes. The grid response's fast step uses it (a
    few thousand sleeps in seconds); the confirmation comes from the next telemetry read."""

    async def sleep_now(self) -> None: ...


@runtime_checkable
class PowerRead(Protocol):
    """A driver with a documented power-only call: what the miner draws now, in one request
    (the grid response confirms a few thousand sleeps with it in seconds; a full `read`
    costs several requests each)."""

    async def read_power(self) -> float: ...


async def with_timeout(seconds: float, what: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Run `fn()` within `seconds`, mapping a timeout or socket error to DriverError."""
    try:
        async with asyncio.timeout(seconds):
            return await fn()
    except TimeoutError:
        raise DriverTimeout(f"{what}: timed out after {seconds:g} s") from None
    except (ConnectionError, OSError) as exc:
        raise DriverError(f"{what}: {exc.__class__.__name__}: {exc}") from None


def loads_lenient(raw: bytes, what: str) -> Any:
    """Parse a firmware's JSON, forgiving the quirks real cgminer-family APIs emit (docs/FLEET.md
    §2: trailing NUL, newlines inside strings); anything else is a FirmwareProtocolError."""
    text = raw.rstrip(b"\x00 \r\n\t").decode("utf-8", errors="replace").replace("\n", " ")
    text = text.replace(",}", "}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FirmwareProtocolError(f"{what}: malformed reply ({exc.msg} at {exc.pos})") from None


class OptionalCalls:
    """Bookkeeping for the calls a reading can do without (temperatures, fans, ATM...): one
    the firmware does not have is never asked again; one that fails (a timeout costs the whole
    command timeout) is skipped for the next 1, 2, 4 ... 64 readings, so a flaky extra can
    neither blind nor slow the polling of the documented minimum."""

    MAX_SKIP = 64

    def __init__(self) -> None:
        self._absent: set[str] = set()
        self._skip: dict[str, int] = {}
        self._fails: dict[str, int] = {}

    def wanted(self, name: str) -> bool:
        if name in self._absent:
            return False
        left = self._skip.get(name, 0)
        if left > 0:
            self._skip[name] = left - 1
            return False
        return True

    def is_absent(self, name: str) -> bool:
        return name in self._absent

    def absent(self, name: str) -> None:
        self._absent.add(name)

    def failed(self, name: str) -> None:
        n = self._fails.get(name, 0) + 1
        self._fails[name] = n
        self._skip[name] = min(self.MAX_SKIP, 2 ** (n - 1))

    def ok(self, name: str) -> None:
        self._fails.pop(name, None)
        self._skip.pop(name, None)


def levels_within(levels: tuple[Level, ...], max_w: float) -> tuple[Level, ...]:
    """The levels (ascending watts) a miner may be offered under its `max_w`: those at or below
    it, or the lowest alone when none is (the least the firmware can do is still allowed)."""
    fit = tuple(lv for lv in levels if lv.watts <= max_w + 1e-6)
    return fit or levels[:1]


def pick_level(levels: tuple[Level, ...], watts: float) -> Level:
    """The highest level at or below `watts` (the lowest if none is)."""
    best = levels[0]
    for lv in levels:
        if lv.watts <= watts + 1e-6:
            best = lv
    return best


def target_watts(desired: Desired, min_w: float, max_w: float) -> int | None:
    """The power target to set for `desired` on an exact-watts actuator (clamped to the
    miner's range), or None when it is to sleep or no target is asked for."""
    if desired.sleep or desired.watts is None:
        return None
    return round(min(max_w, max(min_w, desired.watts)))


def target_differs(current_w: float | None, want_w: int) -> bool:
    """A write is needed (idempotence: an equal target within 1 W is not re-sent)."""
    return current_w is None or abs(current_w - want_w) >= 1


def verify_watts_and_sleep(driver: object, after: Telemetry, desired: Desired,
                           want_w: int | None) -> Telemetry:
    """The read-back check of an exact-watts driver: sleep state as asked and, when a target
    was set, the firmware reporting it; otherwise VerifyError naming what it shows."""
    if after.sleeping != desired.sleep or (
        want_w is not None and target_differs(after.target_w, want_w)
    ):
        raise VerifyError(f"{driver!r} read-back after the command: target={after.target_w} "
                          f"sleeping={after.sleeping}, asked target={want_w} "
                          f"sleep={desired.sleep}")
    return after
