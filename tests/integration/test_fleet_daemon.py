"""`poold run` with a `[fleet]` table: the daemon's controller drives emulated ASICs over TCP.

The emulators (poold.sim: Braiins OS REST, Whatsminer v3, LuxOS 4028 firmware servers on
loopback) run in the test process; `poold run` is a subprocess against the devnet. Checked: a
rack cap cut through the admin API is met within the rack's allowance, /metrics carries the
per-rack power and cap, SIGHUP applies a new rack cap from the file, SIGTERM leaves the
emulators at the safe cap, and with `--processes 2` only worker 0 commands the firmware while
the pool share rate of every miner, on either worker, reaches its controller.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from poold.bitcoin.address import Network, p2wpkh_address
from poold.demo import write_config
from poold.devnet import Devnet
from poold.sim.fleet_demo import PASSWORD, PASSWORD_ENV, FleetDemo
from poold.sim.ports import free_port, free_ports
from tests.poold_process import wait_listening

TOKEN = "fleet-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@pytest_asyncio.fixture
async def emulators() -> AsyncIterator[FleetDemo]:
    address = p2wpkh_address(os.urandom(20), Network.REGTEST)  # solo pool: user = address
    fleet = await FleetDemo.start(worker_prefix=address, racks=2, per_rack=5, seed=3)
    try:
        yield fleet
    finally:
        await fleet.close()


async def _start(tmp: Path, devnet: Devnet, fleet: FleetDemo, *args: str
                 ) -> tuple[asyncio.subprocess.Process, Path, int, int]:
    # below the ephemeral range, where the emulators' and workers' outgoing connections take
    # their ports; worker I of --processes serves its API on api + I
    port, api = free_port(), free_ports(2)
    cfg = write_config(tmp, devnet, port, 1e-4, fleet.fleet_toml(), api=("127.0.0.1", api),
                       api_token=TOKEN)
    log = (tmp / "poold.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", "--log-level", "INFO", "run", "-c", str(cfg), *args,
        env={**os.environ, PASSWORD_ENV: PASSWORD}, stdout=log, stderr=log)
    log.close()
    await wait_listening("127.0.0.1", port, proc, tmp / "poold.log")
    return proc, cfg, port, api


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


def _read(log: Path) -> str:
    return log.read_text()


async def _until(what: str, fn: Any, within_s: float, log: Path) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        try:
            value = await fn()
        except aiohttp.ClientConnectionError:
            value = None  # the API is not listening yet
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within_s} s; log:\n"
                                 + _read(log)[-4000:])
        await asyncio.sleep(0.5)


def _set_w(fleet: FleetDemo) -> float:
    """What the emulators are set to draw (their firmware's setting; asleep = sleep power)."""
    def setting(a: Any) -> float:
        if a.reported_sleep():
            return float(a.spec.sleep_w)
        if a.spec.presets:  # LuxOS-style profiles: the level's watts
            return float(a.spec.presets[a.reported_level()])
        return float(a.reported_target_w())

    return sum(setting(a) for a in fleet.asics.values())


async def test_fleet_in_poold_run(tmp_path: Path, devnet: Devnet, emulators: FleetDemo) -> None:
    fleet = emulators
    proc, cfg, _, api = await _start(tmp_path, devnet, fleet)
    log = tmp_path / "poold.log"
    base = f"http://127.0.0.1:{api}"
    try:
        async with aiohttp.ClientSession(base, headers=HEADERS) as http:
            async def metrics_have_racks() -> str | None:
                _, text = await _get(http, "/metrics")
                ok = all(re.search(rf'^poold_rack_{m}{{rack="rack00{i}"}} [1-9]', text, re.M)
                         for m in ("power_watts", "cap_watts") for i in (0, 1))
                return text if ok else None

            await _until("rack series in /metrics", metrics_have_racks, 30, log)
            status, body = await _get(http, "/api/v1/racks")
            assert status == 200
            racks = {r["id"]: r for r in body["racks"]}
            assert set(racks) == {"rack000", "rack001"}
            r0 = racks["rack000"]
            assert r0["power_w"] <= r0["cap_w"] and r0["hashrate_hs"] > 0

            # Bad requests: unknown rack 404, a cap above the configured breaker 422.
            async with http.put("/api/v1/racks/nope/cap", json={"kw": 1.0}) as resp:
                assert resp.status == 404
            async with http.put("/api/v1/racks/rack000/cap",
                                json={"kw": r0["config_cap_w"] / 1000 + 1}) as resp:
                assert resp.status == 422

            # The operator's cut to 60 %: met within the rack's allowance.
            cut_w = round(r0["config_cap_w"] * 0.6)
            t_cut = time.monotonic()
            async with http.put("/api/v1/racks/rack000/cap", json={"kw": cut_w / 1000}) as resp:
                assert resp.status == 200, await resp.text()

            async def rack0_under() -> bool:
                _, b = await _get(http, "/api/v1/racks")
                r = next(x for x in b["racks"] if x["id"] == "rack000")
                return bool(r["cap_w"] <= cut_w + 1 and r["power_w"] <= cut_w)

            await _until("rack000 under its cut cap", rack0_under, r0["over_cap_allowed_s"], log)
            met_s = time.monotonic() - t_cut
            assert met_s <= r0["over_cap_allowed_s"]
            # ... and physically: the emulators of rack000 settle under it.
            async def physically_under() -> bool:
                return fleet.true_power_w("rack000") <= cut_w * 1.01

            await _until("rack000 emulators under the cut cap", physically_under, 20, log)
            _, miners = await _get(http, "/api/v1/miners?rack=rack000")
            assert len(miners["miners"]) == 5
            assert not any(m["asleep"] for m in miners["miners"])  # watts down, none off
            status, _ = await _get(http, "/api/v1/miners?rack=nope")
            assert status == 404
            # Clearing a miner's marks by hand: token-protected, 404 for an unknown miner.
            mid = miners["miners"][0]["id"]
            async with http.post(f"/api/v1/miners/{mid}/clear", json={}) as resp:
                assert resp.status == 200, await resp.text()
                cleared = await resp.json()
            assert cleared["miner"] == mid and cleared["faulty"] is False
            async with http.post("/api/v1/miners/nope/clear", json={}) as resp:
                assert resp.status == 404
            async with aiohttp.ClientSession(base) as anon, \
                    anon.post(f"/api/v1/miners/{mid}/clear", json={}) as resp:
                assert resp.status == 401
            _, doc = await _get(http, "/api/v1/openapi.json")
            assert "/api/v1/miners/{miner}/clear" in doc["paths"]

            # Energy accounting from the telemetry so far, through the ledger: both racks drew
            # ~15 kW for seconds (tens of kJ); a bad window is a 400.
            status, energy = await _get(http, "/api/v1/energy")
            assert status == 200, energy
            assert set(energy["racks"]) == {"rack000", "rack001"}, energy
            assert all(e["joules"] > 1e4 for e in energy["racks"].values()), energy
            assert energy["kwh"] == pytest.approx(energy["total"]["joules"] / 3.6e6)
            status, _ = await _get(http, "/api/v1/energy?since=10&until=5")
            assert status == 400

            # SIGHUP with a new configured cap for rack001 in the file.
            new_kw = round(racks["rack001"]["config_cap_w"] * 0.7 / 1000, 3)
            text = _read(cfg)
            old = re.search(r'id = "rack001"\ncap_kw = ([\d.]+)', text)
            assert old
            cfg.write_text(text.replace(old.group(0), f'id = "rack001"\ncap_kw = {new_kw}'))
            proc.send_signal(signal.SIGHUP)

            async def reloaded() -> bool:
                _, b = await _get(http, "/api/v1/racks")
                r = next(x for x in b["racks"] if x["id"] == "rack001")
                return bool(abs(r["cap_w"] - new_kw * 1000) < 1 and r["power_w"] <= r["cap_w"])

            await _until("rack001 at its reloaded cap", reloaded, 20, log)
            assert "fleet.racks[rack001]: cap" in _read(log)
            _, budgets = await _get(http, "/api/v1/budgets")
            safe_w = budgets["safe_cap_w"]
            assert safe_w < _set_w(fleet)
        # SIGTERM: down within 10 s, every emulator left at the safe cap.
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 12) == 0
        assert time.monotonic() - t0 < 10.0
        assert _set_w(fleet) <= safe_w, (_set_w(fleet), safe_w, [
            (mid, a.spec.firmware, a.reported_sleep(), a.reported_target_w(), a.power_w())
            for mid, a in fleet.asics.items()])
        stopped = re.search(r"fleet controller stopped: (\d+) safe-cap commands sent: "
                            r"(\d+) acknowledged, 0 failed, 0 unanswered", _read(log))
        assert stopped and int(stopped.group(1)) > 0, _read(log)[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_fleet_with_two_processes_commands_from_one(
        tmp_path: Path, devnet: Devnet, emulators: FleetDemo) -> None:
    fleet = emulators
    proc, _, port, api = await _start(tmp_path, devnet, fleet, "--processes", "2")
    log = tmp_path / "poold.log"
    try:
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            w0, w1 = f"http://127.0.0.1:{api}", f"http://127.0.0.1:{api + 1}"

            async def w0_racks() -> Any:
                status, body = await _get(http, w0 + "/api/v1/racks")
                return body["racks"] if status == 200 else None

            async def w1_racks() -> Any:
                return await _get(http, w1 + "/api/v1/racks")

            racks = await _until("worker 0 fleet API", w0_racks, 60, log)
            status, body = await _until("worker 1 API", w1_racks, 60, log)
            assert status == 404 and "worker process 0" in body["error"], body
            before = sum(a.commands_received for a in fleet.asics.values())
            for r in racks:
                async with http.put(w0 + f"/api/v1/racks/{r['id']}/cap",
                                    json={"kw": round(r["config_cap_w"] * 0.6 / 1000, 3)}
                                    ) as resp:
                    assert resp.status == 200

            def sent(text: str) -> float:
                return sum(float(v) for v in re.findall(
                    r'^poold_controller_commands_total{[^}]*} ([\d.e+]+)',
                    text, re.M))

            async def commanded() -> bool:
                _, text = await _get(http, w0 + "/metrics")
                return sent(text) >= 4 and sum(
                    a.commands_received for a in fleet.asics.values()) > before

            await _until("commands from worker 0", commanded, 30, log)
            await asyncio.sleep(3.0)
            _, m0 = await _get(http, w0 + "/metrics")
            _, m1 = await _get(http, w1 + "/metrics")
            at_emulators = sum(a.commands_received for a in fleet.asics.values())
            assert sent(m0) > 0 and at_emulators > 0
            assert sent(m1) == 0 and "poold_rack_power_watts{" not in m1
            # Every command the emulators got is one worker 0 sent (a Whatsminer wake is
            # two firmware calls, power limit + service start, hence the factor).
            assert at_emulators <= 2 * sent(m0), (at_emulators, sent(m0))

            # The emulated ASICs mine, spread over both workers by SO_REUSEPORT; worker 0's
            # controller sees every miner's pool share rate, worker 1's relayed to it.
            fleet.start_miners("127.0.0.1", port, 1e-6)

            async def on_w1() -> set[str]:
                _, b = await _get(http, w1 + "/api/v1/workers")
                return {w["worker"] for w in b["workers"] if w["worker"]}

            w1_names = await _until("a miner on worker 1", on_w1, 30, log)

            async def w1_miner_measured() -> bool:
                _, b = await _get(http, w0 + "/api/v1/miners")
                return any(m["pool_hashrate_hs"] for m in b["miners"] if m["worker"] in w1_names)

            await _until("worker 1's shares at worker 0's controller", w1_miner_measured, 60, log)

            # Curtail a rack: every miner of it asleep; restore: its API cap cleared.
            async with http.post(w0 + "/api/v1/racks/rack001/curtail", json={}) as resp:
                assert resp.status == 200, await resp.text()

            async def rack1_asleep() -> bool:
                _, b = await _get(http, w0 + "/api/v1/miners?rack=rack001")
                return all(m["asleep"] and m["curtailed"] for m in b["miners"])

            await _until("rack001 asleep", rack1_asleep, 20, log)
            # Their Stratum sessions, on either worker, are marked curtailed (vardiff keeps
            # their difficulty, the idle timeout spares them): worker 1 reads worker 0's file.
            _, b = await _get(http, w0 + "/api/v1/miners?rack=rack001")
            rack1_workers = {m["worker"] for m in b["miners"]}

            async def sessions_curtailed() -> bool:
                seen = []
                for w in (w0, w1):
                    _, s = await _get(http, w + "/api/v1/workers")
                    seen += [x["curtailed"] for x in s["workers"] if x["worker"] in rack1_workers]
                return len(seen) == len(rack1_workers) and all(seen)

            await _until("rack001 sessions curtailed on both workers", sessions_curtailed, 20,
                         log)
            async with http.post(w0 + "/api/v1/racks/rack001/restore", json={}) as resp:
                assert resp.status == 200
                restored = await resp.json()
            assert restored["cap_kw"] == racks[1]["config_cap_w"] / 1000
            _, b = await _get(http, w0 + "/api/v1/racks")
            assert next(r for r in b["racks"] if r["id"] == "rack001")["state"] != "curtailed"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_curtailed_miners_keep_their_difficulty(
        tmp_path: Path, devnet: Devnet, emulators: FleetDemo) -> None:
    """A rack put to sleep on purpose: its miners' sessions go silent, and vardiff (which
    lowers a silent session's difficulty every window) leaves them alone."""
    fleet = emulators
    proc, _, port, api = await _start(tmp_path, devnet, fleet)
    log = tmp_path / "poold.log"
    base = f"http://127.0.0.1:{api}"
    fleet.start_miners("127.0.0.1", port, 3e-6)
    try:
        async with aiohttp.ClientSession(base, headers=HEADERS) as http:
            async def sessions() -> dict[str, dict[str, Any]]:
                _, body = await _get(http, "/api/v1/workers")
                return {w["worker"].rpartition(".")[2]: w for w in body["workers"]}

            async def all_mining() -> bool:
                s = await sessions()
                return len(s) == 10 and all(w["accepted"] >= 1 for w in s.values())

            await _until("every emulated miner mining", all_mining, 60, log)
            async with http.post("/api/v1/racks/rack001/curtail", json={}) as resp:
                assert resp.status == 200

            async def rack1_silent() -> bool:
                _, b = await _get(http, "/api/v1/miners?rack=rack001")
                return all(m["asleep"] for m in b["miners"]) and all(
                    fleet.asics[m["id"]].hashrate_ths() == 0 for m in b["miners"])

            await _until("rack001 asleep", rack1_silent, 20, log)
            await asyncio.sleep(3.0)  # the fleet marks curtailed sessions every 2 s
            before = {k: w["difficulty"] for k, w in (await sessions()).items()}
            accepted = {k: w["accepted"] for k, w in (await sessions()).items()}
            await asyncio.sleep(20.0)  # > the vardiff window (6 x share_interval_s = 12 s)
            after = await sessions()
            for k, diff in before.items():
                if k.startswith("rack001-"):
                    assert after[k]["accepted"] == accepted[k]  # silent
                    assert after[k]["difficulty"] == diff, (k, diff, after[k]["difficulty"])
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 12) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
