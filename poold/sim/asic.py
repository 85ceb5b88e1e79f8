"""ASIC emulator core: power ↔ hashrate ↔ temperature physics, settle delays and faults
many per process, on any `SimClock` (real, scaled or virtual).

Physics (evaluated lazily at each query, so 10,000 emulated miners cost nothing when idle):
- hashrate ``H = H_nom · (P_eff/P_nom)^α`` below nameplate (α ≈ 0.6), ``α_above`` ≈ 0.5 above;
- heat costs watts: ``P_draw = P_clock · (1 + β (T − T_ref))``. Watt-target firmware regulates
  the draw to its target (so heat costs hashrate); fixed-clock presets drift up in watts;
- after a command delay, power follows each action with the firmware's own first-order lag
  (`Dynamics`, per firmware, real time by default; `AsicSpec.speed` runs them faster for
  tests): a Braiins power target τ ≈ 10 s (settled ≈ 30 s), a LuxOS profile ≈ 5 s, sleep to
  `sleep_w` in 1–3 s, wake ≈ 30 s to hashing at the setting again; board temperature follows
  power with τ_T; a reboot draws `boot_w` for `reboot_s` then comes back with its setting.

Faults (`Faults`, mutable at run time): `timeout` (API never answers), `malformed` (garbled
reply), `ignore_commands` (acknowledges, changes nothing), `false_power` (reports watts × factor),
`reboot_on_command` (each power change reboots the miner first, as Whatsminer v2 does).

The emulator speaks firmware, not fleet: over TCP the firmware servers in poold.sim.firmware_*
serve a `SimAsic` to the real drivers; in-process, `poold.sim.driver.SimDriver` drives it through
the fleet's `MinerDriver` protocol (the benchmark and the property tests).
"""

# ruff: noqa: RUF002  (math notation in docstrings is intended)

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

# How a firmware takes a power setting: an exact watt target, discrete presets, a few modes, or
# only sleep/wake (the values of poold.fleet.policy.Actuator; the emulator does not import the
# fleet, the seams poold.sim.driver and poold.sim.simsite translate).
WATTS, PRESETS, MODES, ONOFF = "watts", "presets", "modes", "onoff"


class SimClock(Protocol):
    """The clock an emulator runs on: real, scaled or virtual (poold.fleet.clock's clocks fit)."""

    def now(self) -> float:
        """Monotonic seconds (intervals, deadlines)."""
        ...

    def wall(self) -> float:
        """Unix time (what the firmware shows as its clock)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Preset:
    """One firmware preset or profile: its name, its watts and the TH/s expected at them."""

    name: str
    watts: float
    ths: float = 0.0


@dataclass(frozen=True, slots=True)
class Dynamics:
    """How fast one firmware's power follows each action, in seconds of simulated time.

    ``cmd_delay_s`` passes before the firmware acts; then power moves with a first-order lag
    whose τ depends on the action: a new watt target or level (``tau_down_s`` / ``tau_up_s``),
    sleep (``sleep_tau_s``) or wake (``wake_tau_s``). A lag is within 5 % of its end after 3 τ.
    """

    cmd_delay_s: float
    tau_down_s: float
    tau_up_s: float
    sleep_tau_s: float
    wake_tau_s: float
    reboot_s: float

    def faster(self, speed: float) -> Dynamics:
        """The same dynamics `speed`× faster (tests; 1.0 = the firmware's real time)."""
        if not speed > 0:
            raise ValueError("speed must be > 0")
        return Dynamics(self.cmd_delay_s / speed, self.tau_down_s / speed,
                        self.tau_up_s / speed, self.sleep_tau_s / speed,
                        self.wake_tau_s / speed, self.reboot_s / speed)

    @property
    def settle_s(self) -> float:
        """A new watt target or level: within 5 % of its end."""
        return self.cmd_delay_s + 3.0 * max(self.tau_down_s, self.tau_up_s)

    @property
    def sleep_settle_s(self) -> float:
        """Asleep: from nameplate to 1.5 × `sleep_w` (≈ 4.6 τ from 3 kW to 45 W)."""
        return self.cmd_delay_s + 5.0 * self.sleep_tau_s

    @property
    def wake_settle_s(self) -> float:
        """Awake and hashing at its setting again (within 5 %)."""
        return self.cmd_delay_s + 3.0 * self.wake_tau_s


#: The firmware's documented (or reported) dynamics at real time.
#: - Braiins OS applies a power target on the fly and its tuner ramps the draw to it, settled
#:   in about 30 s (first-order, τ ≈ 10 s, as measured on S19-class units); pause/resume ramp
#:   with the firmware's "quick ramping" times (PerformanceService/SetQuickRamping, up_s and
#:   down_s: https://github.com/braiins/bos-plus-api/releases/tag/1.7.0,
#:   https://github.com/braiins/bos-plus-api/blob/main/proto/bos/v1/performance.proto):
#:   hashboards off in seconds, back and hashing in tens of seconds.
#: - LuxOS `profileset` steps frequency and voltage in a few seconds
#:   (https://docs.luxor.tech/firmware/api/luxminer/profileset); `curtail sleep` turns off
#:   the hashboards and the PSU, `curtail wakeup` ramps like a reboot unless mode=unsafe
#:   (https://docs.luxor.tech/firmware/api/luxminer/curtail).
#: - Whatsminer: no documented ramp time for a power limit (taken as Braiins'); `power_off`
#:   stops the hashboards and keeps the control board on
#:   (https://www.buywhatsminer.com/download/whatsminer-api-v2-0-5/).
#: - cgminer-only (stock Antminer): on/off alone.
FIRMWARE_DYNAMICS: dict[str, Dynamics] = {
    "braiins": Dynamics(cmd_delay_s=0.5, tau_down_s=10.0, tau_up_s=10.0, sleep_tau_s=0.4,
                        wake_tau_s=10.0, reboot_s=120.0),
    "luxos": Dynamics(cmd_delay_s=0.5, tau_down_s=1.5, tau_up_s=1.5, sleep_tau_s=0.4,
                      wake_tau_s=10.0, reboot_s=120.0),
    "whatsminer": Dynamics(cmd_delay_s=0.5, tau_down_s=10.0, tau_up_s=10.0, sleep_tau_s=0.4,
                           wake_tau_s=10.0, reboot_s=120.0),
    "cgminer": Dynamics(cmd_delay_s=0.5, tau_down_s=2.0, tau_up_s=6.0, sleep_tau_s=0.4,
                        wake_tau_s=10.0, reboot_s=120.0),
}


@dataclass(frozen=True, slots=True)
class AsicSpec:
    """A model's nameplate and physics parameters."""

    model: str = "S19j Pro"
    p_nom_w: float = 3050.0
    h_nom_ths: float = 100.0
    alpha: float = 0.6
    alpha_above: float = 0.5
    min_w: float = 1040.0
    max_w: float = 3050.0
    sleep_w: float = 30.0
    boot_w: float = 80.0
    beta_per_c: float = 0.0012  # fraction of watts per °C (docs/FLEET.md §4)
    t_ref_c: float = 60.0
    ambient_c: float = 25.0
    c_per_w: float = 0.013  # board °C above ambient per W of draw (≈65 °C at 3 kW)
    tau_t_s: float = 60.0
    # Dynamics: None = the firmware's own (FIRMWARE_DYNAMICS). A spec that sets a faster
    # target lag is never slower to sleep or wake than it (fast test rigs stay fast).
    tau_down_s: float | None = None
    tau_up_s: float | None = None
    cmd_delay_s: float | None = None
    sleep_tau_s: float | None = None
    wake_tau_s: float | None = None
    reboot_s: float | None = None
    speed: float = 1.0  # dynamics run this many times faster than the firmware's (tests)
    firmware: str = "braiins"  # which API it speaks: braiins | luxos | whatsminer | cgminer
    actuator: str = WATTS  # WATTS | PRESETS | MODES | ONOFF
    presets: tuple[float, ...] = ()  # watts per preset (PRESETS / MODES)

    def dynamics(self) -> Dynamics:
        fw = FIRMWARE_DYNAMICS.get(self.firmware, FIRMWARE_DYNAMICS["braiins"])
        down = fw.tau_down_s if self.tau_down_s is None else self.tau_down_s
        up = fw.tau_up_s if self.tau_up_s is None else self.tau_up_s
        sleep = self.sleep_tau_s if self.sleep_tau_s is not None else (
            fw.sleep_tau_s if self.tau_down_s is None else min(fw.sleep_tau_s, down))
        wake = self.wake_tau_s if self.wake_tau_s is not None else (
            fw.wake_tau_s if self.tau_up_s is None else min(fw.wake_tau_s, up))
        return Dynamics(
            fw.cmd_delay_s if self.cmd_delay_s is None else self.cmd_delay_s, down, up,
            sleep, wake, fw.reboot_s if self.reboot_s is None else self.reboot_s,
        ).faster(self.speed)

    def hashrate_at(self, p_eff_w: float) -> float:
        if p_eff_w <= 0:
            return 0.0
        r = p_eff_w / self.p_nom_w
        return float(self.h_nom_ths * (r**self.alpha if r <= 1.0 else r**self.alpha_above))

    @property
    def settle_s(self) -> float:
        return self.dynamics().settle_s


def default_presets(p_nom_w: float, n: int = 9, lowest: float = 0.36) -> tuple[float, ...]:
    """Evenly spaced presets from `lowest`·P_nom to P_nom (LuxOS/VNish style)."""
    return tuple(round(p_nom_w * (lowest + (1 - lowest) * i / (n - 1))) for i in range(n))


@dataclass(slots=True)
class Faults:
    timeout: bool = False
    malformed: bool = False
    ignore_commands: bool = False
    false_power: float = 1.0
    reboot_on_command: bool = False
    stuck: bool = False  # reports the new setting but the hardware does not follow
    false_hashrate: float = 1.0  # the firmware's own hashrate figure times this


class SimAsic:
    """One emulated miner. All methods take the present from `clock`."""

    def __init__(
        self,
        spec: AsicSpec,
        clock: SimClock,
        *,
        miner_id: str = "asic",
        unit_factor: float = 1.0,
        username: str = "root",
        password: str = "sim-secret",
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.miner_id = miner_id
        self.unit_factor = unit_factor  # chip-lottery spread on hashrate
        self.username = username
        self.password = password
        self.faults = Faults()
        self.dyn = spec.dynamics()
        self._mode = "change"  # the action power is following: change | sleep | wake
        t = clock.now()
        self._t = t
        self._boot_t = t
        self.target_w: float = (
            spec.max_w
            if spec.actuator == WATTS
            else (spec.presets[-1] if spec.presets else spec.p_nom_w)
        )
        self.level_index = len(spec.presets) - 1 if spec.presets else 0
        self.sleeping = False
        self._clock_w = self._setpoint()  # watts at the reference temperature
        self._temp = spec.ambient_c + spec.c_per_w * self._clock_w
        self._pending: list[tuple[float, str, float]] = []  # (t, kind, value)
        self._reboot_until = -math.inf
        self.commands_received = 0
        self.pool: tuple[str, str] = ("", "")
        self.energy_j = 0.0
        self._shown_target = self.target_w
        self._shown_level = self.level_index
        self._shown_sleep = False
        self._levels: tuple[Preset, ...] | None = None

    # -- physics ------------------------------------------------------------------------------

    def _setpoint(self) -> float:
        if self.sleeping:
            return self.spec.sleep_w
        if self.spec.actuator == WATTS:
            return self.target_w
        return self.spec.presets[self.level_index] if self.spec.presets else self.spec.p_nom_w

    def _heat_factor(self) -> float:
        return 1.0 + self.spec.beta_per_c * (self._temp - self.spec.t_ref_c)

    def _evolve(self, t1: float) -> None:
        dt = t1 - self._t
        if dt <= 0:
            return
        s = self.spec
        d = self.dyn
        if t1 < self._reboot_until:
            target = s.boot_w
            tau = d.sleep_tau_s
        else:
            target = self._setpoint()
            down = target < self._clock_w
            if self._mode == "sleep":
                tau = d.sleep_tau_s
            elif self._mode == "wake" and not down:
                tau = d.wake_tau_s
            else:
                tau = d.tau_down_s if down else d.tau_up_s
        p0 = self._clock_w
        self._clock_w = target + (p0 - target) * math.exp(-dt / tau)
        self.energy_j += 0.5 * (p0 + self._clock_w) * dt
        t_eq = s.ambient_c + s.c_per_w * self._clock_w
        self._temp = t_eq + (self._temp - t_eq) * math.exp(-dt / s.tau_t_s)
        self._t = t1

    def advance(self) -> None:
        """Bring the state to the clock's now, applying commands whose delay has elapsed."""
        now = self.clock.now()
        while self._pending and self._pending[0][0] <= now:
            t, kind, value = self._pending.pop(0)
            if self._reboot_until > t:
                self._evolve(self._reboot_until)
            self._evolve(t)
            if kind == "watts":
                self.target_w = value
                if not self.sleeping:
                    self._mode = "change"
            elif kind == "level":
                self.level_index = int(value)
                if not self.sleeping:
                    self._mode = "change"
            elif kind == "sleep":
                if bool(value) != self.sleeping:
                    self._mode = "sleep" if value else "wake"
                self.sleeping = bool(value)
            elif kind == "reboot":
                self._reboot_until = t + self.dyn.reboot_s
                self._mode = "wake"
                self._boot_t = t
        if self._reboot_until > self._t and self._reboot_until <= now:
            self._evolve(self._reboot_until)
        self._evolve(now)

    @property
    def rebooting(self) -> bool:
        self.advance()
        return self.clock.now() < self._reboot_until

    def power_w(self) -> float:
        """True wall power now."""
        self.advance()
        if self.rebooting or (self.sleeping and self._clock_w <= self.spec.sleep_w * 1.5):
            return self._clock_w
        if self.spec.actuator == WATTS:
            return self._clock_w  # the firmware's power loop holds the draw at target
        return self._clock_w * self._heat_factor()

    def hashrate_ths(self) -> float:
        """True hashrate now (what the pool would see on average)."""
        self.advance()
        if self.rebooting or self.sleeping:  # a paused miner stops hashing at once
            return 0.0
        p = self._clock_w
        if p <= self.spec.sleep_w * 1.5:
            return 0.0
        if self.spec.actuator == WATTS:
            p = p / self._heat_factor()
        return self.spec.hashrate_at(p) * self.unit_factor

    def temp_c(self) -> float:
        self.advance()
        return self._temp

    def uptime_s(self) -> float:
        return self.clock.now() - self._boot_t

    # -- commands (what firmware servers call) -------------------------------------------------

    def _schedule(self, kind: str, value: float) -> bool:
        """Queue a setting change after the command delay; False if the firmware ignores it."""
        self.commands_received += 1
        if self.faults.ignore_commands:
            return False
        # The firmware's own view of its setting changes at once (that is what read-back sees).
        if kind == "watts":
            self._shown_target = value
        elif kind == "level":
            self._shown_level = int(value)
        elif kind == "sleep":
            self._shown_sleep = bool(value)
        if self.faults.stuck:
            return True
        now = self.clock.now()
        if self.faults.reboot_on_command and kind in ("watts", "level"):
            self._pending.append((now, "reboot", 0.0))
        self._pending.append((now + self.dyn.cmd_delay_s, kind, value))
        self._pending.sort(key=lambda e: e[0])
        return True

    def set_power_target(self, watts: float) -> float:
        """Firmware-side clamp then schedule; returns the setting the firmware reports."""
        w = min(self.spec.max_w, max(self.spec.min_w, float(watts)))
        self._schedule("watts", w)
        return self.reported_target_w()

    def set_level(self, index: int) -> None:
        if not 0 <= index < len(self.spec.presets):
            raise ValueError("no such preset")
        self._schedule("level", index)

    def set_sleep(self, sleep: bool) -> None:
        self._schedule("sleep", 1.0 if sleep else 0.0)

    def reboot(self) -> None:
        self.commands_received += 1
        self._pending.append((self.clock.now(), "reboot", 0.0))
        self._pending.sort(key=lambda e: e[0])

    def reported_target_w(self) -> float:
        return self._shown_target

    def reported_level(self) -> int:
        return self._shown_level

    def reported_sleep(self) -> bool:
        return self._shown_sleep

    def reported_power_w(self) -> float:
        return self.power_w() * self.faults.false_power

    def levels(self) -> tuple[Preset, ...]:
        if self._levels is None:
            self._levels = tuple(
                Preset(self.level_name(i), w, round(self.spec.hashrate_at(w), 1))
                for i, w in enumerate(self.spec.presets)
            )
        return self._levels

    def level_name(self, index: int) -> str:
        return f"{round(self.spec.presets[index])}W"
