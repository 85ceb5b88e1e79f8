"""Every driver reads and commands every miner of a site whose emulated firmware serves only
the documented minimum (no Braiins cooling/state, no LuxOS config, enums as numbers), over
real TCP: the drivers are never blind on firmware that answers exactly as documented."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import aiohttp
import pytest

from poold.fleet.clock import LoopClock, ScaledClock
from poold.fleet.drivers.base import Desired
from poold.fleet.drivers.cgminer import CgminerStatusError, cgminer_request
from poold.fleet.policy import Actuator
from poold.sim.asic import AsicSpec, SimAsic, default_presets
from poold.sim.firmware_rest import BraiinsRestServer
from poold.sim.firmware_tcp import LuxosServer
from poold.sim.simsite import SimSite, build_table
from tests.waiting import reading

KINDS = [["braiins", "luxos", "whatsminer", "cgminer", "braiins"],
         ["luxos", "luxos", "whatsminer", "braiins", "cgminer"]]


async def test_minimal_servers_lack_the_optional_calls() -> None:
    clock = LoopClock()
    asic = SimAsic(AsicSpec(firmware="braiins"), clock, password="pw")
    srv = await BraiinsRestServer(asic, minimal=True).start()
    lux = await LuxosServer(SimAsic(AsicSpec(firmware="luxos", actuator=Actuator.PRESETS,
                                             presets=default_presets(3010)), clock),
                            minimal=True).start()
    try:
        base = f"http://127.0.0.1:{srv.port}/api/v1"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/auth/login",
                                 json={"username": "root", "password": "pw"}) as r:
                token = (await r.json())["token"]
            h = {"Authorization": token}
            async with http.get(f"{base}/cooling/state", headers=h) as r:
                assert r.status == 404
            async with http.get(f"{base}/miner/details", headers=h) as r:
                assert (await r.json())["status"] == 2  # MINER_STATUS_NORMAL as a number
        with pytest.raises(CgminerStatusError, match="code 14 Invalid command"):
            await cgminer_request("127.0.0.1", lux.port, "config")
    finally:
        await srv.stop()
        await lux.stop()


async def test_drivers_read_and_command_every_minimal_miner_over_tcp() -> None:
    table = build_table(KINDS)
    site = await SimSite.create(table, LoopClock(), tcp=True, rng=random.Random(3),
                                minimal_firmware=True, driver_timeout_s=2.0)
    try:
        for a in site.asics.values():  # settle in tens of milliseconds
            a.spec = dataclasses.replace(a.spec, cmd_delay_s=0.02, tau_down_s=0.02,
                                         tau_up_s=0.02)
        readings = await asyncio.gather(*(d.read() for d in site.drivers.values()))
        assert len(readings) == len(site.asics) == 10
        for (mid, d), t in zip(site.drivers.items(), readings, strict=True):
            assert t.hashrate_ths and t.hashrate_ths > 50, mid
            assert not t.sleeping, mid
            if d.kind != "cgminer":
                assert t.power_w is not None and t.power_w > 1000, mid
            if d.kind in ("braiins", "whatsminer"):
                assert t.target_w is not None, mid  # tuner-state / power-limit
        for mid, d in site.drivers.items():
            if d.kind == "cgminer":
                continue
            caps = await d.capabilities()
            if caps.actuator is Actuator.WATTS:
                t = await d.apply(Desired(watts=caps.min_w + 0.5 * (caps.max_w - caps.min_w)))
                assert t.target_w == round(caps.min_w + 0.5 * (caps.max_w - caps.min_w)), mid
            else:
                t = await d.apply(Desired(level=caps.levels[2].name))
                assert t.level == caps.levels[2].name, mid
            t = await d.apply(Desired(sleep=True))
            assert t.sleeping, mid
            # Sleep is seen by a plain read too (without config/names).
            await reading(d.read, lambda t: t.sleeping, 5.0, f"{mid} read as asleep")
            t = await d.apply(Desired(watts=caps.max_w))
            assert not t.sleeping, mid
    finally:
        await site.close()


async def test_controller_meets_a_cut_on_minimal_firmware() -> None:
    """The symptom that started it: on documented-minimum firmware every miner read as stale
    and a cut to 60 % produced no command. Now: all read, the cut is met on the emulators'
    own meters, and nothing is faulty."""
    clock = ScaledClock(10.0)
    table = build_table([["braiins", "luxos", "whatsminer", "luxos", "braiins"]],
                        over_cap_allowed_s=40.0, telemetry_interval_s=5.0, stale_after_s=20.0,
                        optimizer_interval_s=30.0, command_timeout_s=20.0,
                        ramp_kw_per_min=120.0)
    async with SimSite.started(table, clock, tcp=True, rng=random.Random(5),
                               driver_timeout_s=3.0, minimal_firmware=True) as site:
        ctl = site.controller
        deadline = clock.now() + 60.0
        while clock.now() < deadline and not all(
                m.health.telemetry is not None for m in ctl.miners.values()):
            await clock.sleep(1.0)
        unread = [mid for mid, m in ctl.miners.items() if m.health.telemetry is None]
        assert not unread, unread
        cap = site.cfg.racks[0].cap_kw * 1000.0
        assert site.true_power_w() > 0.8 * cap  # the cut below is a real one
        ctl.set_cap(site.cfg.racks[0].id, site.cfg.racks[0].cap_kw * 0.6)
        t_cut, met = clock.now(), None
        while clock.now() - t_cut < 120.0 and met is None:
            await clock.sleep(1.0)
            if site.true_power_w() <= 0.6 * cap:
                met = clock.now() - t_cut
        assert met is not None, (site.true_power_w(), 0.6 * cap)
        assert sum(a.commands_received for a in site.asics.values()) > 0
        assert ctl.status().faulty == 0
