"""Driver writes against the documented shapes replayed over real sockets: a target or level
is never above the miner's `max_w` (LuxOS profiles filtered, exact watts clamped), LuxOS ATM is
switched off loudly and given back, each driver declares its settle times, and timeouts say
how long they waited. Vectors: tests/vectors/firmware/*.json (sources cited there)."""

from __future__ import annotations

import asyncio
import copy
import logging
import sys
import types
from typing import Any

import pytest

from poold.fleet.drivers import braiins, luxos, whatsminer
from poold.fleet.drivers.base import (
    Desired,
    DriverError,
    DriverTimeout,
    Secret,
    UnsupportedError,
    with_timeout,
)
from poold.fleet.drivers.braiins import BraiinsDriver
from poold.fleet.drivers.cgminer import CgminerDriver
from poold.fleet.drivers.luxos import LuxosDriver
from poold.fleet.drivers.whatsminer import WhatsminerDriver
from poold.fleet.policy import Actuator
from tests.fleet.drivers.replay import CgminerReplay, HttpReplay, WhatsminerReplay, load


def case(file: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in load(file)["cases"] if c["name"] == name)
    return copy.deepcopy(found["responses"])


# -- Braiins -----------------------------------------------------------------------------------

async def test_braiins_clamps_targets_to_max_w_and_pauses() -> None:
    r = case("braiins-rest.json", "minimal")  # constraints allow 1000..3730 W
    r["GET performance/tuner-state"] = [r["GET performance/tuner-state"], {"json": {
        "overall_tuner_state": 1,
        "mode_state": {"powertargetmodestate": {"current_target": {"watt": 3500}}}}}]
    r["PUT performance/power-target"] = {"json": {"watt": 3500}}
    srv = await HttpReplay(r).start()
    d = BraiinsDriver("127.0.0.1", srv.port, password=Secret("pw"), timeout_s=2.0, max_w=3500)
    try:
        caps = await d.capabilities()
        assert (caps.min_w, caps.max_w) == (1000, 3500)  # 3730 W is never offered
        t = await d.apply(Desired(watts=6000))
        assert t.target_w == 3500
        assert ("PUT performance/power-target", {"watt": 3500}) in srv.requests
        assert not any(body == {"watt": 6000} for _, body in srv.requests)
    finally:
        await d.close()
        await srv.stop()


async def test_braiins_pause_answers_a_bare_boolean_and_status_3_reads_asleep() -> None:
    r = case("braiins-rest.json", "minimal")
    paused = case("braiins-rest.json", "minimal-paused-status-3")
    r["GET miner/details"] = [r["GET miner/details"], paused["GET miner/details"]]
    r["PUT actions/pause"] = {"json": False}  # OpenAPI: "bool if was already paused"
    srv = await HttpReplay(r).start()
    d = BraiinsDriver("127.0.0.1", srv.port, password=Secret("pw"), timeout_s=2.0)
    try:
        t = await d.apply(Desired(sleep=True))
        assert t.sleeping and ("PUT actions/pause", None) in srv.requests
    finally:
        await d.close()
        await srv.stop()


async def test_braiins_without_a_target_read_back_trusts_the_put_echo() -> None:
    r = case("braiins-rest.json", "minimal")
    r["GET performance/tuner-state"] = {"status": 404}
    r["PUT performance/power-target"] = {"json": {"watt": 2000}}
    srv = await HttpReplay(r).start()
    d = BraiinsDriver("127.0.0.1", srv.port, password=Secret("pw"), timeout_s=2.0)
    try:
        assert (await d.read()).target_w is None
        t = await d.apply(Desired(watts=2000))
        assert t.target_w == 2000
        # Absent endpoints are not asked again on every reading.
        asked = [k for k, _ in srv.requests if k == "GET performance/tuner-state"]
        assert len(asked) == 1
    finally:
        await d.close()
        await srv.stop()


# -- LuxOS -------------------------------------------------------------------------------------

def luxos_writes(**over: Any) -> dict[str, Any]:
    data = load("luxos.json")
    r: dict[str, Any] = case("luxos.json", "minimal")
    r.update({k: v for k, v in data["writes"].items() if k != "session-held"})
    for name in ("320MHz", "420MHz", "470MHz", "500MHz"):
        r[f"profileset yJN2nlj1,{name}"] = {"json": {
            "PROFILE": [{"Board": 0, "FrequencyStep": 5, "Profile": name, "VoltageStep": 0.05}],
            "STATUS": [{"Code": 321, "Msg": "Profile Set", "STATUS": "S", "When": 0}], "id": 1}}
    r.update(over)
    return r


async def test_luxos_s21_is_never_offered_a_profile_above_max_w() -> None:
    srv = await CgminerReplay(luxos_writes()).start()
    d = LuxosDriver("127.0.0.1", srv.port, timeout_s=2.0, max_w=3500)
    try:
        caps = await d.capabilities()
        assert caps.actuator is Actuator.PRESETS
        assert max(lv.watts for lv in caps.levels) == caps.max_w == 3500
        assert "700MHz" not in {lv.name for lv in caps.levels}  # the 6940 W profile
        t = await d.apply(Desired(watts=6940))
        assert t.level == "500MHz" and t.target_w == 3500
        with pytest.raises(UnsupportedError, match=r"700MHz.*6940 W\) is above max_w 3500"):
            await d.apply(Desired(level="700MHz"))
        assert not any(c == "profileset" and p.endswith(("560MHz", "620MHz", "700MHz"))
                       for c, p in srv.requests)
    finally:
        await d.close()
        await srv.stop()


async def test_luxos_atm_is_switched_off_loudly_and_restored(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="poold.fleet.drivers.luxos")
    monkeypatch.setattr(luxos, "ATM_OFF_LOG", luxos._AtmOffLog())  # no WARNING this minute yet
    r = luxos_writes()
    off = copy.deepcopy(r["atm"])
    off["json"]["ATM"][0]["Enabled"] = False
    r["atm"] = [r["atm"], off, r["atm"]]  # on; off (as we left it); on (as we gave it back)
    srv = await CgminerReplay(r).start()
    d = LuxosDriver("127.0.0.1", srv.port, timeout_s=2.0, max_w=3500)
    try:
        t = await d.apply(Desired(level="420MHz"))
        assert t.level == "420MHz"  # no config command: the level this driver set
        assert ("atmset", "yJN2nlj1,enabled=false") in srv.requests
        warn = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert warn and "switched LuxOS ATM off to set profile 420MHz" in warn[0].getMessage()
        # Back at the top allowed profile: ATM on again, capped at that profile.
        await d.apply(Desired(watts=3500))
        assert ("atmset", "yJN2nlj1,enabled=true,max_profile=500MHz") in srv.requests
        assert any("ATM back on" in r.getMessage() for r in caplog.records)
        # Lowered again: off again (INFO now, one WARNING in all), and close() gives it back,
        # capped at the profile the miner is left at so ATM cannot raise it past a safe cap.
        await d.apply(Desired(level="320MHz"))
        assert srv.requests.count(("atmset", "yJN2nlj1,enabled=false")) == 2
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        await d.close()
        assert srv.requests[-2:] == [("atmset", "yJN2nlj1,enabled=true,max_profile=320MHz"),
                                     ("logoff", "yJN2nlj1")]
        assert any("(shutdown), capped at profile 320MHz" in r.getMessage()
                   for r in caplog.records)
    finally:
        await srv.stop()


async def test_luxos_sleep_without_config_and_a_held_session() -> None:
    held = load("luxos.json")["writes"]["session-held"]
    r = luxos_writes()
    asleep = case("luxos.json", "minimal-asleep-inferred")
    r["power"] = [r["power"], asleep["power"]]
    r["summary"] = [r["summary"], asleep["summary"]]
    srv = await CgminerReplay(r).start()
    d = LuxosDriver("127.0.0.1", srv.port, timeout_s=2.0, sleep_settle_s=0.0)
    try:
        t = await d.apply(Desired(sleep=True))  # read-back sees no hashrate at 25 W
        assert t.sleeping and ("curtail", "yJN2nlj1,sleep") in srv.requests
        srv.responses["logon"] = held
        srv.responses["session"] = {"json": {"SESSION": [{"SessionID": "Zk1"}], "id": 1}}
        with pytest.raises(DriverError, match="logon: another LuxOS session"):
            await d.apply(Desired(level="320MHz"))
    finally:
        await d.close()
        await srv.stop()


# -- Whatsminer, cgminer, pyasic ---------------------------------------------------------------

async def test_whatsminer_clamps_power_limit_to_max_w() -> None:
    data = load("whatsminer-v3.json")
    r = case("whatsminer-v3.json", "minimal")  # power-limit 3400
    at_cap = copy.deepcopy(r["get.miner.status"])
    at_cap["json"]["msg"]["summary"]["power-limit"] = 3300
    r["get.miner.status"] = [r["get.miner.status"], at_cap]
    r.update(data["writes"])
    srv = await WhatsminerReplay(r).start()
    d = WhatsminerDriver("127.0.0.1", srv.port, password=Secret("pw"), min_w=1200,
                         max_w=3300, timeout_s=2.0)
    try:
        assert (await d.capabilities()).max_w == 3300
        t = await d.apply(Desired(watts=5000))
        assert t.target_w == 3300
        params = [req.get("param") for c, req in srv.requests if c == "set.miner.power_limit"]
        assert params == [3300]
    finally:
        await d.close()
        await srv.stop()


async def test_cgminer_is_counted_at_nameplate_and_never_commanded() -> None:
    srv = await CgminerReplay(case("cgminer.json", "minimal")).start()
    d = CgminerDriver("127.0.0.1", srv.port, nameplate_w=3250, timeout_s=2.0)
    try:
        caps = await d.capabilities()
        assert caps.read_only and caps.min_w == caps.max_w == 3250
        with pytest.raises(UnsupportedError):
            await d.apply(Desired(watts=1000))
        assert [c for c, _ in srv.requests] == []
    finally:
        await srv.stop()


async def test_pyasic_adapter_declares_on_off_at_nameplate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # pyasic is an optional extra; a stand-in module exercises the adapter's own logic only.
    miner = types.SimpleNamespace(supports_shutdown=True)

    async def get_miner(host: str) -> Any:
        return miner

    monkeypatch.setitem(sys.modules, "pyasic", types.SimpleNamespace(get_miner=get_miner))
    from poold.fleet.drivers import pyasic_adapter

    monkeypatch.setattr(pyasic_adapter, "pyasic", sys.modules["pyasic"])
    d = pyasic_adapter.PyasicDriver("10.0.0.9", nameplate_w=3250, max_w=3000)
    caps = await d.capabilities()
    assert caps.actuator is Actuator.ONOFF and caps.max_w == 3250 and caps.can_sleep
    assert caps.wake_settle_s > caps.sleep_settle_s > 0


# -- settle times, timeouts --------------------------------------------------------------------

def test_settle_times_are_the_documented_ones() -> None:
    assert (braiins.SETTLE_S, braiins.SLEEP_SETTLE_S, braiins.WAKE_SETTLE_S) == (30, 5, 30)
    assert (luxos.SETTLE_S, luxos.SLEEP_SETTLE_S, luxos.WAKE_SETTLE_S) == (10, 5, 30)
    assert whatsminer.SETTLE_S == 30 and whatsminer.SLEEP_SETTLE_S < whatsminer.WAKE_SETTLE_S


async def test_capabilities_carry_the_settle_times() -> None:
    r = case("braiins-rest.json", "minimal")
    srv = await HttpReplay(r).start()
    lux = await CgminerReplay(case("luxos.json", "minimal")).start()
    try:
        b = BraiinsDriver("127.0.0.1", srv.port, password=Secret("pw"), timeout_s=2.0)
        caps = await b.capabilities()
        await b.close()
        assert (caps.settle_s, caps.sleep_settle_s, caps.wake_settle_s) == (30, 5, 30)
        caps = await LuxosDriver("127.0.0.1", lux.port, timeout_s=2.0).capabilities()
        assert (caps.settle_s, caps.sleep_settle_s, caps.wake_settle_s) == (10, 5, 30)
        w = await WhatsminerDriver("127.0.0.1", 1, timeout_s=2.0).capabilities()
        assert (w.settle_s, w.sleep_settle_s, w.wake_settle_s) == (30, 5, 60)
    finally:
        await srv.stop()
        await lux.stop()


async def test_timeouts_say_how_long_they_waited() -> None:
    async def never() -> None:
        await asyncio.sleep(10)

    with pytest.raises(DriverTimeout, match=r"^miner-7 GET miner/stats: timed out after 0.05 s$"):
        await with_timeout(0.05, "miner-7 GET miner/stats", never)


async def test_luxos_stops_asking_for_stats_that_carry_no_temperatures() -> None:
    r = case("luxos.json", "minimal")
    r["stats"] = {"json": {"STATS": [{"STATS": 0, "ID": "BC50", "Elapsed": 5}], "id": 1}}
    srv = await CgminerReplay(r).start()
    d = LuxosDriver("127.0.0.1", srv.port, timeout_s=2.0)
    try:
        for _ in range(5):
            await d.read()
        assert [c for c, _ in srv.requests].count("stats") == 3
        assert [c for c, _ in srv.requests].count("config") == 1  # absent: asked once
    finally:
        await srv.stop()


async def test_cgminer_stops_asking_for_stats_without_usable_fields() -> None:
    r = case("cgminer.json", "minimal")
    r["stats"] = {"json": {"STATS": [{"STATS": 0, "ID": "BC50", "Elapsed": 5}], "id": 1}}
    srv = await CgminerReplay(r).start()
    d = CgminerDriver("127.0.0.1", srv.port, nameplate_w=3250, timeout_s=2.0)
    try:
        for _ in range(5):
            await d.read()
        assert [c for c, _ in srv.requests].count("stats") == 3
    finally:
        await srv.stop()


async def test_a_hanging_optional_call_neither_blinds_nor_slows_the_polling() -> None:
    r = case("braiins-rest.json", "minimal")
    r["GET cooling/state"] = {"delay": 5.0, "json": {}}
    srv = await HttpReplay(r).start()
    d = BraiinsDriver("127.0.0.1", srv.port, password=Secret("pw"), timeout_s=0.3)
    try:
        t = await d.read()
        assert t.power_w == 3245 and not t.sleeping  # read despite the hang
        assert any("cooling/state" in e and "timed out after 0.3 s" in e for e in t.errors)
        for _ in range(3):  # skipped for 1, then asked, then skipped for 2 readings
            await d.read()
        asked = [k for k, _ in srv.requests].count("GET cooling/state")
        assert asked == 2
    finally:
        await d.close()
        await srv.stop()


def test_the_factory_hands_every_driver_its_max_w() -> None:
    from poold.fleet.drivers import build_drivers
    from poold.fleet.inventory import parse_fleet

    miners = [{"id": f"m-{d}", "rack": "r0", "host": "10.0.0.1", "driver": d, "model": "S21",
               "nameplate_w": 3500, "nameplate_ths": 200}
              for d in ("braiins", "luxos", "whatsminer", "cgminer")]
    miners[1]["max_w"] = 4300  # an explicit per-miner max_w above nameplate
    cfg = parse_fleet({"site": "s", "cap_kw": 20, "racks": [{"id": "r0", "cap_kw": 20}],
                       "miners": miners}, "<test>")
    drivers = build_drivers(cfg, {})
    assert drivers["m-braiins"].max_w == 3500  # type: ignore[attr-defined]
    assert drivers["m-luxos"].max_w == 4300  # type: ignore[attr-defined]
    assert drivers["m-whatsminer"].max_w == 3500  # type: ignore[attr-defined]
    assert drivers["m-cgminer"].nameplate_w == 3500  # type: ignore[attr-defined]


async def test_braiins_polls_re_read_the_target_every_tenth_reading_and_after_a_command(
) -> None:
    from poold.fleet.drivers.braiins import TARGET_EVERY

    r = case("braiins-rest.json", "minimal")
    at_2000 = {"json": {"overall_tuner_state": 1, "mode_state": {
        "powertargetmodestate": {"current_target": {"watt": 2000}}}}}
    # the target read at readings 1 and 11 and before the PUT; 2000 W after it
    r["GET performance/tuner-state"] = [r["GET performance/tuner-state"]] * 3 + [at_2000]
    r["PUT performance/power-target"] = {"json": {"watt": 2000}}
    srv = await HttpReplay(r).start()
    d = BraiinsDriver("127.0.0.1", srv.port, password=Secret("pw"), timeout_s=2.0)

    def target_gets() -> int:
        return sum(k in ("GET performance/tuner-state", "GET performance/mode")
                   for k, _ in srv.requests)

    try:
        first = await d.read()
        n0 = target_gets()
        assert n0 >= 1
        for _ in range(TARGET_EVERY - 1):  # readings 2..10
            assert (await d.read()).target_w == first.target_w  # the last one read
        assert target_gets() == n0
        await d.read()  # reading 11 asks again: one in every TARGET_EVERY
        assert target_gets() > n0
        n1 = target_gets()
        await d.apply(Desired(watts=2000))  # read before and after the PUT: fresh both times
        assert target_gets() >= n1 + 2
        stats = sum(k == "GET miner/stats" for k, _ in srv.requests)
        assert stats == TARGET_EVERY + 3  # power and state are read on every reading
    finally:
        await d.close()
        await srv.stop()


async def test_power_only_reads_are_one_documented_request() -> None:
    """The grid response's confirming read: Braiins `GET miner/stats`, LuxOS `power`, alone,
    with the watts a full reading reports."""
    from poold.fleet.drivers.base import PowerRead

    srv = await HttpReplay(case("braiins-rest.json", "minimal")).start()
    d = BraiinsDriver("127.0.0.1", srv.port, password=Secret("pw"), timeout_s=2.0)
    try:
        assert isinstance(d, PowerRead)
        full = await d.read()
        n = len(srv.requests)
        assert await d.read_power() == full.power_w
        assert [k for k, _ in srv.requests[n:]] == ["GET miner/stats"]
    finally:
        await d.close()
        await srv.stop()
    lsrv = await CgminerReplay(case("luxos.json", "minimal")).start()
    lx = LuxosDriver("127.0.0.1", lsrv.port, timeout_s=2.0)
    try:
        assert isinstance(lx, PowerRead)
        full = await lx.read()
        n = len(lsrv.requests)
        assert await lx.read_power() == full.power_w
        assert [k for k, _ in lsrv.requests[n:]] == ["power"]
    finally:
        await lx.close()
        await lsrv.stop()


def test_luxos_atm_off_is_one_warning_a_minute_for_the_fleet() -> None:
    """1,000 miners switched within a minute: one WARNING (the first), INFO for the rest; the
    next WARNING, a minute later, says how many were switched since."""
    now = [1000.0]
    gate = luxos._AtmOffLog(clock=lambda: now[0])
    levels = [gate.level() for _ in range(1000)]
    assert levels[0] == (logging.WARNING, 1)
    assert all(lv == logging.INFO for lv, _ in levels[1:])
    now[0] += 60.0
    assert gate.level() == (logging.WARNING, 1000)
