"""ASIC emulator physics and faults (poold.sim.asic; docs/FLEET.md §3-§5)."""

from __future__ import annotations

import pytest

from poold.fleet.drivers.base import Desired, DriverTimeout, FirmwareProtocolError, VerifyError
from poold.fleet.policy import Actuator
from poold.sim.asic import AsicSpec, SimAsic, default_presets
from poold.sim.driver import SimDriver, capabilities_of


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1.7e9 + self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


NO_HEAT = {"beta_per_c": 0.0}


def test_hashrate_follows_the_power_law_below_nameplate() -> None:
    c = ManualClock()
    a = SimAsic(AsicSpec(**NO_HEAT), c)  # type: ignore[arg-type]
    c.t = 100
    assert a.hashrate_ths() == pytest.approx(100.0, rel=1e-3)
    a.set_power_target(3050 * 0.5)
    c.t = 200
    assert a.power_w() == pytest.approx(1525, rel=1e-3)
    assert a.hashrate_ths() == pytest.approx(100 * 0.5**0.6, rel=1e-3)


def test_settle_follows_command_delay_and_first_order_lag() -> None:
    c = ManualClock()
    spec = AsicSpec(cmd_delay_s=1.0, tau_down_s=2.0, **NO_HEAT)  # type: ignore[arg-type]
    a = SimAsic(spec, c)
    a.set_power_target(1525)
    assert a.reported_target_w() == 1525  # firmware shows the setting at once
    c.t = 0.9
    assert a.power_w() == pytest.approx(3050)  # not yet acted on
    c.t = 3.0  # one tau after the delay
    expected = 1525 + (3050 - 1525) * 2.718281828 ** -1
    assert a.power_w() == pytest.approx(expected, rel=1e-3)
    c.t = spec.settle_s
    assert a.power_w() < 1525 * 1.05


def test_sleep_and_wake() -> None:
    c = ManualClock()
    a = SimAsic(AsicSpec(), c)
    a.set_sleep(True)
    c.t = 30
    assert a.power_w() == pytest.approx(30, rel=0.01)
    assert a.hashrate_ths() == 0
    a.set_sleep(False)
    c.t = 31.5
    assert a.power_w() < 3050 * 0.5  # ramping up (tau_up 6 s)
    c.t = 100
    assert a.power_w() == pytest.approx(3050, rel=0.01)


def test_thermal_drift_of_fixed_clock_presets() -> None:
    c = ManualClock()
    spec = AsicSpec(actuator=Actuator.PRESETS, firmware="luxos", presets=default_presets(3010),
                    p_nom_w=3010, beta_per_c=0.0015, ambient_c=40.0)
    a = SimAsic(spec, c)
    c.t = 600  # hot day, steady state
    assert a.power_w() > 3010 * 1.01  # heat costs watts at a fixed clock
    assert a.temp_c() > 70


def test_reboot_draws_boot_power_then_restores_setting() -> None:
    c = ManualClock()
    a = SimAsic(AsicSpec(reboot_s=60), c)
    a.set_power_target(2000)
    c.t = 30
    a.reboot()
    c.t = 50
    assert a.rebooting and a.hashrate_ths() == 0 and a.power_w() < 200
    c.t = 200
    assert not a.rebooting and a.power_w() == pytest.approx(2000, rel=0.02)


async def test_sim_driver_faults() -> None:
    c = ManualClock()
    a = SimAsic(AsicSpec(), c)
    d = SimDriver(a)
    t = await d.apply(Desired(watts=2000))
    assert t.target_w == 2000
    a.faults.ignore_commands = True
    with pytest.raises(VerifyError):
        await d.apply(Desired(watts=1500))
    a.faults.ignore_commands = False
    a.faults.malformed = True
    with pytest.raises(FirmwareProtocolError):
        await d.read()
    a.faults.malformed = False
    a.faults.timeout = True
    with pytest.raises(DriverTimeout):
        await d.read()
    a.faults.timeout = False
    a.faults.false_power = 0.5
    c.t += 100
    assert (await d.read()).power_w == pytest.approx(a.power_w() * 0.5)
    a.faults.false_power = 1.0
    a.faults.stuck = True
    t = await d.apply(Desired(watts=1200))  # acknowledged and shown...
    c.t += 100
    assert t.target_w == 1200 and a.power_w() > 1900  # ...but the hardware did not follow


# -- the firmware's real-time dynamics, per action --------------------------------------------


def _time_to(a: SimAsic, c: ManualClock, ok: object, limit_s: float = 120.0) -> float:
    """Simulated seconds from now until `ok(asic)` holds (0.05 s resolution)."""
    t0 = c.t
    while not ok(a):  # type: ignore[operator]
        c.t += 0.05
        assert c.t - t0 < limit_s, f"not reached in {limit_s} s (power {a.power_w():.0f} W)"
    return c.t - t0


def test_braiins_power_target_is_a_ten_second_lag_settled_in_about_thirty() -> None:
    c = ManualClock()
    a = SimAsic(AsicSpec(firmware="braiins", **NO_HEAT), c)  # type: ignore[arg-type]
    a.set_power_target(1525)
    d = a.dyn
    c.t = d.cmd_delay_s + 10.0  # one τ after the firmware acted
    assert a.power_w() == pytest.approx(1525 + 1525 * 2.718281828 ** -1, rel=1e-3)
    c.t = 0.0
    a = SimAsic(AsicSpec(firmware="braiins", **NO_HEAT), c)  # type: ignore[arg-type]
    a.set_power_target(1525)
    settled = _time_to(a, c, lambda x: x.power_w() <= 1525 * 1.05)
    assert 25.0 <= settled <= 35.0
    assert capabilities_of(a).settle_s == pytest.approx(30.5)


def test_luxos_profile_change_settles_in_about_five_seconds() -> None:
    c = ManualClock()
    spec = AsicSpec(firmware="luxos", actuator=Actuator.PRESETS, p_nom_w=3010,
                    presets=default_presets(3010), **NO_HEAT)  # type: ignore[arg-type]
    a = SimAsic(spec, c)
    a.set_level(0)
    settled = _time_to(a, c, lambda x: x.power_w() <= spec.presets[0] * 1.05)
    assert 3.0 <= settled <= 6.0


@pytest.mark.parametrize("firmware", ["braiins", "luxos", "whatsminer"])
def test_sleep_reaches_tens_of_watts_in_one_to_three_seconds(firmware: str) -> None:
    c = ManualClock()
    a = SimAsic(AsicSpec(firmware=firmware, **NO_HEAT), c)  # type: ignore[arg-type]
    a.set_sleep(True)
    t = _time_to(a, c, lambda x: x.power_w() <= 100.0)
    assert 1.0 <= t <= 3.0
    assert a.hashrate_ths() == 0.0
    c.t += 5.0
    assert a.power_w() == pytest.approx(a.spec.sleep_w, rel=0.05)


def test_wake_takes_about_thirty_seconds_to_hash_at_its_setting_again() -> None:
    c = ManualClock()
    a = SimAsic(AsicSpec(firmware="braiins", **NO_HEAT), c)  # type: ignore[arg-type]
    a.set_sleep(True)
    c.t = 60.0
    a.set_sleep(False)
    c.t = 65.0
    assert a.power_w() < 0.5 * 3050  # far from back after 5 s
    back = _time_to(a, c, lambda x: x.hashrate_ths() >= 0.95 * 100.0) + 5.0
    assert 20.0 <= back <= 35.0
    caps = capabilities_of(a)
    assert caps.sleep_settle_s <= 3.0 and 25.0 <= caps.wake_settle_s <= 35.0


def test_speed_factor_runs_every_action_faster() -> None:
    slow = AsicSpec(firmware="braiins").dynamics()
    fast = AsicSpec(firmware="braiins", speed=4.0).dynamics()
    assert fast.settle_s == pytest.approx(slow.settle_s / 4)
    assert fast.sleep_settle_s == pytest.approx(slow.sleep_settle_s / 4)
    assert fast.wake_settle_s == pytest.approx(slow.wake_settle_s / 4)
    c = ManualClock()
    a = SimAsic(AsicSpec(firmware="braiins", speed=4.0, **NO_HEAT), c)  # type: ignore[arg-type]
    a.set_power_target(1525)
    assert _time_to(a, c, lambda x: x.power_w() <= 1525 * 1.05) == pytest.approx(
        30.5 / 4, abs=0.3)
    with pytest.raises(ValueError):
        AsicSpec(speed=0.0).dynamics()


def test_a_fast_test_rig_is_never_slower_to_sleep_or_wake_than_its_target_lag() -> None:
    d = AsicSpec(cmd_delay_s=0.05, tau_down_s=0.05, tau_up_s=0.05).dynamics()
    assert d.sleep_tau_s == 0.05 and d.wake_tau_s == 0.05
    d = AsicSpec(tau_up_s=2.0, wake_tau_s=20.0).dynamics()
    assert d.wake_tau_s == 20.0  # an explicit wake lag wins
