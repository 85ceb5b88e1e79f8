"""The firmware emulators serve the vendors' documented shapes: in `minimal` mode exactly the
fields and calls the vectors (tests/vectors/firmware, sources cited there) call the documented
minimum, nothing the drivers could come to depend on by accident; in full mode the extras."""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

import aiohttp
import pytest

from poold.fleet.clock import LoopClock
from poold.fleet.drivers.cgminer import CgminerStatusError, cgminer_request
from poold.fleet.policy import Actuator
from poold.sim.asic import AsicSpec, SimAsic, default_presets
from poold.sim.firmware_rest import BraiinsRestServer
from poold.sim.firmware_tcp import server_for
from tests.fleet.drivers.replay import load


def vector(file: str, case: str, key: str) -> Any:
    c = next(c for c in load(file)["cases"] if c["name"] == case)
    return c["responses"][key]["json"]


async def rest(minimal: bool) -> dict[str, tuple[int, Any]]:
    asic = SimAsic(AsicSpec(firmware="braiins"), LoopClock(), password="pw")
    srv = await BraiinsRestServer(asic, minimal=minimal).start()
    out: dict[str, tuple[int, Any]] = {}
    try:
        base = f"http://127.0.0.1:{srv.port}/api/v1"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/auth/login",
                                 json={"username": "root", "password": "pw"}) as r:
                login = await r.json()
                assert set(login) == {"token", "timeout_s"}
            h = {"Authorization": login["token"]}
            for path in ("miner/details", "miner/stats", "performance/tuner-state",
                         "performance/mode", "cooling/state", "performance/power-target",
                         "configuration/constraints"):
                async with http.get(f"{base}/{path}", headers=h) as r:
                    out[path] = (r.status, await r.json() if r.status == 200 else None)
            async with http.put(f"{base}/actions/pause", headers=h) as r:
                out["pause"] = (r.status, await r.json())
            async with http.put(f"{base}/actions/reboot", headers=h) as r:
                out["reboot"] = (r.status, None)
    finally:
        await srv.stop()
    return out


async def test_braiins_minimal_serves_the_documented_minimum_only() -> None:
    got = await rest(minimal=True)
    documented = vector("braiins-rest.json", "minimal", "GET miner/details")
    status, details = got["miner/details"]
    assert status == 200 and set(details) == set(documented)  # required fields only
    assert details["status"] == 2 and isinstance(details["status"], int)
    assert got["cooling/state"][0] == 404
    assert got["performance/power-target"][0] == 405  # only PUT is documented
    tuner = got["performance/tuner-state"][1]
    assert tuner["mode_state"]["powertargetmodestate"]["current_target"]["watt"] > 0
    assert got["pause"] == (200, False)  # a bare boolean: "was already paused"
    assert got["reboot"][0] == 204


async def test_braiins_full_adds_names_and_cooling() -> None:
    got = await rest(minimal=False)
    details = got["miner/details"][1]
    assert details["status"] == "MINER_STATUS_NORMAL"
    assert "running" in details["detailed_status"]["status"]
    cooling = got["cooling/state"][1]
    assert cooling["fans"] and cooling["highest_temperature"]["temperature"]["degree_c"] > 0


async def test_luxos_minimal_has_no_config_and_cgminer_minimal_no_temperatures() -> None:
    clock = LoopClock()
    lux = await server_for(SimAsic(AsicSpec(firmware="luxos", actuator=Actuator.PRESETS,
                                            presets=default_presets(3010)), clock),
                           minimal=True).start()
    cg = await server_for(SimAsic(AsicSpec(firmware="cgminer", actuator=Actuator.ONOFF,
                                           presets=(3250.0,)), clock), minimal=True).start()
    try:
        with pytest.raises(CgminerStatusError, match="code 14 Invalid command") as exc:
            await cgminer_request("127.0.0.1", lux.port, "config")
        assert exc.value.absent
        power = await cgminer_request("127.0.0.1", lux.port, "power")
        assert power["POWER"][0]["Watts"] > 0
        stats = await cgminer_request("127.0.0.1", cg.port, "stats")
        keys = {k for e in stats["STATS"] for k in e}
        assert not any(k.startswith(("temp", "fan")) for k in keys)
    finally:
        await lux.stop()
        await cg.stop()


async def test_whatsminer_minimal_summary_has_only_power_hashrate_and_limit() -> None:
    srv = await server_for(SimAsic(AsicSpec(firmware="whatsminer"), LoopClock()),
                           minimal=True).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        body = json.dumps({"cmd": "get.miner.status", "param": "summary"}).encode()
        writer.write(struct.pack("<I", len(body)) + body)
        (n,) = struct.unpack("<I", await reader.readexactly(4))
        reply = json.loads(await reader.readexactly(n))
        writer.close()
        documented = vector("whatsminer-v3.json", "minimal", "get.miner.status")
        assert set(reply["msg"]["summary"]) == set(documented["msg"]["summary"])
    finally:
        await srv.stop()
