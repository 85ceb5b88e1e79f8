"""Each firmware driver against its emulator over real TCP, including every injectable fault."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from poold.fleet.clock import LoopClock
from poold.fleet.drivers.base import (
    Desired,
    DriverError,
    DriverTimeout,
    FastSleep,
    FirmwareAuthError,
    FirmwareProtocolError,
    MinerDriver,
    Secret,
    Telemetry,
    UnsupportedError,
    VerifyError,
)
from poold.fleet.drivers.braiins import BraiinsDriver
from poold.fleet.drivers.cgminer import CgminerDriver, cgminer_request
from poold.fleet.drivers.luxos import LuxosDriver
from poold.fleet.drivers.whatsminer import WhatsminerDriver
from poold.fleet.policy import Actuator
from poold.sim.asic import AsicSpec, SimAsic, default_presets
from poold.sim.firmware_rest import BraiinsRestServer
from poold.sim.firmware_tcp import LuxosServer, server_for
from tests.waiting import reading, until

PASSWORD = "correct horse"
FAST = {"cmd_delay_s": 0.05, "tau_down_s": 0.05, "tau_up_s": 0.05, "reboot_s": 0.5}


@dataclass
class Rig:
    asic: SimAsic
    driver: MinerDriver
    server: object
    minimal: bool = False

    @property
    def state_from_memory(self) -> bool:
        """Firmware whose documented minimum has no run/profile state to read back (LuxOS
        without `config`, Whatsminer v3's summary): the driver reports what it set while that
        settles, so an ignored command shows in telemetry only after the settle time."""
        return isinstance(self.driver, WhatsminerDriver) or (
            self.minimal and isinstance(self.driver, LuxosDriver))


@pytest.fixture(params=["braiins", "luxos", "whatsminer", "braiins-minimal", "luxos-minimal",
                        "whatsminer-minimal"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    kind, _, shape = str(request.param).partition("-")
    minimal = shape == "minimal"
    clock = LoopClock()
    if kind == "luxos":
        spec = AsicSpec(firmware="luxos", actuator=Actuator.PRESETS, p_nom_w=3010,
                        presets=default_presets(3010), **FAST)  # type: ignore[arg-type]
    else:
        spec = AsicSpec(firmware=kind, **FAST)  # type: ignore[arg-type]
    asic = SimAsic(spec, clock, password=PASSWORD)
    driver: MinerDriver
    if kind == "braiins":
        server: object = await BraiinsRestServer(asic, minimal=minimal).start()
        driver = BraiinsDriver("127.0.0.1", server.port, username="root",  # type: ignore[attr-defined]
                               password=Secret(PASSWORD), timeout_s=0.5)
    elif kind == "luxos":
        server = await LuxosServer(asic, minimal=minimal).start()
        driver = LuxosDriver("127.0.0.1", server.port, timeout_s=0.5)  # type: ignore[attr-defined]
    else:
        server = await server_for(asic, minimal=minimal).start()
        driver = WhatsminerDriver("127.0.0.1", server.port, password=Secret(PASSWORD),  # type: ignore[attr-defined]
                                  min_w=spec.min_w, max_w=spec.max_w, timeout_s=0.5)
    yield Rig(asic, driver, server, minimal)
    await driver.close()
    await server.stop()  # type: ignore[attr-defined]


def watts_for(rig: Rig, frac: float) -> Desired:
    caps_levels = rig.asic.levels()
    if rig.asic.spec.actuator == Actuator.WATTS:
        return Desired(watts=round(rig.asic.spec.p_nom_w * frac))
    target = rig.asic.spec.p_nom_w * frac
    return Desired(level=max((lv for lv in caps_levels if lv.watts <= target),
                             key=lambda lv: lv.watts).name)


async def test_capabilities_read_apply_and_read_back(rig: Rig) -> None:
    caps = await rig.driver.capabilities()
    assert caps.actuator == rig.asic.spec.actuator and caps.min_w < caps.max_w
    t = await rig.driver.read()
    assert t.power_w == pytest.approx(rig.asic.spec.p_nom_w, rel=0.05)
    assert t.hashrate_ths and t.hashrate_ths > 50 and not t.sleeping
    assert bool(t.temps_c) is not rig.minimal  # temperatures are an optional extra
    desired = watts_for(rig, 0.6)
    t = await rig.driver.apply(desired)
    assert (t.target_w == desired.watts) if desired.watts else (t.level == desired.level)
    t = await reading(rig.driver.read,
                      lambda t: t.power_w is not None and t.power_w < rig.asic.spec.p_nom_w * 0.7,
                      5.0, "the power down to 60 %")
    # Idempotent: the same desired state sends no command.
    before = rig.asic.commands_received
    await rig.driver.apply(desired)
    assert rig.asic.commands_received == before
    t = await rig.driver.apply(Desired(sleep=True))
    assert t.sleeping
    sleep_w = rig.asic.spec.sleep_w
    await reading(rig.driver.read,
                  lambda t: t.power_w is not None and abs(t.power_w - sleep_w) <= 0.2 * sleep_w,
                  5.0, "the miner at its sleep power")
    t = await rig.driver.apply(watts_for(rig, 1.0))
    assert not t.sleeping


async def test_sleep_now_is_the_one_sleep_call_and_the_next_read_confirms(rig: Rig) -> None:
    """The grid response's fast step: sleep alone, no reads around it."""
    assert isinstance(rig.driver, FastSleep)
    t = await rig.driver.read()
    assert not t.sleeping
    before = rig.asic.commands_received
    await rig.driver.sleep_now()
    assert rig.asic.commands_received == before + 1 and rig.asic.reported_sleep()
    sleep_w = rig.asic.spec.sleep_w
    await reading(rig.driver.read, lambda t: t.sleeping and t.power_w is not None
                  and t.power_w <= 1.5 * sleep_w, 5.0, "asleep on the reads after sleep_now")
    t = await rig.driver.apply(watts_for(rig, 1.0))
    assert not t.sleeping


async def test_fault_timeout(rig: Rig) -> None:
    rig.asic.faults.timeout = True
    with pytest.raises(DriverTimeout):
        await rig.driver.read()
    with pytest.raises(DriverTimeout):
        await rig.driver.apply(watts_for(rig, 0.5))


async def test_fault_malformed_reply(rig: Rig) -> None:
    await rig.driver.capabilities()
    rig.asic.faults.malformed = True
    with pytest.raises(FirmwareProtocolError):
        await rig.driver.read()


async def test_fault_ignores_commands_is_caught_by_read_back(rig: Rig) -> None:
    rig.asic.faults.ignore_commands = True
    if rig.minimal and isinstance(rig.driver, LuxosDriver):
        # No `config`: the profile read back is the one set; the power tells the truth.
        await rig.driver.apply(watts_for(rig, 0.5))
        await asyncio.sleep(0.3)
        t = await rig.driver.read()
        assert t.power_w is not None and t.power_w > rig.asic.spec.p_nom_w * 0.9
    else:
        with pytest.raises(VerifyError):
            await rig.driver.apply(watts_for(rig, 0.5))
    if rig.state_from_memory:
        # An ignored stop shows in the telemetry once the sleep settle time has passed (the
        # miner still hashes at full power).
        rig.driver.sleep_settle_s = 0.2  # type: ignore[attr-defined]
        await rig.driver.apply(Desired(sleep=True))
        await asyncio.sleep(0.3)
        t = await rig.driver.read()
        assert not t.sleeping and t.hashrate_ths and t.hashrate_ths > 50
        return
    with pytest.raises(VerifyError):
        await rig.driver.apply(Desired(sleep=True))


async def test_fault_false_power_is_what_the_firmware_says(rig: Rig) -> None:
    rig.asic.faults.false_power = 0.5
    t = await rig.driver.read()
    assert t.power_w == pytest.approx(rig.asic.power_w() * 0.5, rel=0.02)


async def test_fault_stuck_acknowledges_but_power_does_not_follow(rig: Rig) -> None:
    rig.asic.faults.stuck = True
    await rig.driver.apply(watts_for(rig, 0.5))  # read-back shows the setting...
    await asyncio.sleep(0.5)
    t = await rig.driver.read()  # ...telemetry shows the truth
    assert t.power_w is not None and t.power_w > rig.asic.spec.p_nom_w * 0.9


async def test_fault_reboot_on_command(rig: Rig) -> None:
    rig.asic.faults.reboot_on_command = True
    # The miner goes away mid-command: the driver reports an error, never a false success.
    with pytest.raises(DriverError):
        await rig.driver.apply(watts_for(rig, 0.5))

    async def read_when_back() -> Telemetry | None:  # refused while it reboots (reboot_s)
        try:
            return await rig.driver.read()
        except DriverError:
            return None

    await reading(read_when_back, lambda t: t is not None and t.power_w is not None
                  and t.power_w < rig.asic.spec.p_nom_w * 0.7, 5.0,
                  "the miner back from its reboot with the new setting")


async def test_operator_actions(rig: Rig) -> None:
    if isinstance(rig.driver, LuxosDriver):
        with pytest.raises(UnsupportedError):
            await rig.driver.set_pool("stratum+tcp://p:3333", "w", Secret("x"))
    else:
        await rig.driver.set_pool("stratum+tcp://p:3333", "w", Secret("x"))
        assert rig.asic.pool[0].startswith("stratum+tcp://p:3333") or "p:3333" in str(
            rig.asic.pool)
    await rig.driver.reboot()
    await until(lambda: rig.asic.rebooting, 2.0, "the miner rebooting")


async def test_credentials_are_never_logged_or_in_reprs(rig: Rig,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await rig.driver.apply(watts_for(rig, 0.5))
    assert PASSWORD not in repr(rig.driver) and PASSWORD not in caplog.text
    assert repr(Secret(PASSWORD)) == "Secret(***)"


async def test_wrong_password_is_an_auth_error() -> None:
    clock = LoopClock()
    for kind in ("braiins", "whatsminer"):
        asic = SimAsic(AsicSpec(firmware=kind, **FAST), clock,  # type: ignore[arg-type]
                       password=PASSWORD)
        if kind == "braiins":
            srv: object = await BraiinsRestServer(asic).start()
            d: MinerDriver = BraiinsDriver("127.0.0.1", srv.port,  # type: ignore[attr-defined]
                                           password=Secret("nope"), timeout_s=0.5)
        else:
            srv = await server_for(asic).start()
            d = WhatsminerDriver("127.0.0.1", srv.port,  # type: ignore[attr-defined]
                                 password=Secret("nope"), timeout_s=0.5)
        try:
            with pytest.raises(FirmwareAuthError) as exc:
                await d.apply(Desired(watts=2000))
            assert "nope" not in str(exc.value)
        finally:
            await d.close()
            await srv.stop()  # type: ignore[attr-defined]


async def test_luxos_session_lock_and_atm() -> None:
    clock = LoopClock()
    asic = SimAsic(AsicSpec(firmware="luxos", actuator=Actuator.PRESETS, p_nom_w=3010,
                            presets=default_presets(3010), **FAST), clock)  # type: ignore[arg-type]
    srv = await LuxosServer(asic).start()
    d = LuxosDriver("127.0.0.1", srv.port, timeout_s=0.5)
    try:
        assert srv.atm_enabled
        lv = asic.levels()[2]
        t = await d.apply(Desired(level=lv.name))
        assert t.level == lv.name and not srv.atm_enabled  # ATM switched off first
        assert srv.session_id == ""  # logged off after the write
        # Someone else holds the one session: we refuse rather than steal it.
        other = await cgminer_request("127.0.0.1", srv.port, "logon")
        assert other["SESSION"][0]["SessionID"]
        with pytest.raises(DriverError, match="session"):
            await d.apply(Desired(level=asic.levels()[3].name))
    finally:
        await srv.stop()


async def test_cgminer_is_read_only_telemetry() -> None:
    clock = LoopClock()
    asic = SimAsic(AsicSpec(firmware="cgminer", actuator=Actuator.ONOFF, presets=(3250.0,),
                            p_nom_w=3250, **FAST), clock)  # type: ignore[arg-type]
    srv = await server_for(asic).start()
    d = CgminerDriver("127.0.0.1", srv.port, nameplate_w=3250, timeout_s=0.5)
    try:
        caps = await d.capabilities()
        assert caps.read_only
        t = await d.read()
        assert t.power_w is None and t.hashrate_ths and t.hashrate_ths > 50 and t.temps_c
        with pytest.raises(UnsupportedError):
            await d.apply(Desired(sleep=True))
        with pytest.raises(DriverError, match="45"):
            await cgminer_request("127.0.0.1", srv.port, "restart")
        multi = await cgminer_request("127.0.0.1", srv.port, "summary+version")
        assert "summary" in multi and "version" in multi
        asic.faults.malformed = True
        with pytest.raises(FirmwareProtocolError):
            await d.read()
        asic.faults.malformed = False
        asic.faults.timeout = True
        with pytest.raises(DriverTimeout):
            await d.read()
    finally:
        await srv.stop()


def test_trailing_nul_and_comma_quirks_parse() -> None:
    from poold.fleet.drivers.base import loads_lenient

    assert loads_lenient(b'{"a":1,}\x00', "t") == {"a": 1}
    with pytest.raises(FirmwareProtocolError):
        loads_lenient(json.dumps({"a": 1}).encode()[:4], "t")
