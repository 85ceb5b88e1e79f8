"""Energy accounting: telemetry integration, J per accepted difficulty, kWh and cost per block."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from poold.ledger.config import LedgerConfig
from poold.ledger.energy import EnergyMeter, PowerSample, report
from poold.ledger.ledger import Ledger
from poold.ledger.records import EnergyRow
from tests.ledger.helpers import block, share


def test_meter_integrates_steps_and_does_not_extrapolate_stale_telemetry() -> None:
    m = EnergyMeter(max_hold_s=60.0)
    m.add_all([PowerSample("w1", "r1", 0.0, 3000.0), PowerSample("w1", "r1", 10.0, 1000.0),
               PowerSample("w1", "r1", 20.0, 0.0),
               PowerSample("w2", "r2", 0.0, 100.0), PowerSample("w2", "r2", 200.0, 100.0)])
    m.add(PowerSample("w1", "r1", 15.0, 9999.0))  # out of order: ignored
    rows = m.drain(300.0)
    assert {(r.worker, r.rack): r.joules for r in rows} == {
        ("w1", "r1"): 3000.0 * 10 + 1000.0 * 10,
        ("w2", "r2"): 100.0 * 60}  # a 200 s gap counts 60 s held, 140 s unmetered
    assert m.unmetered_s == 140.0
    assert all((r.t_start, r.t_end) == (0.0, 300.0) for r in rows)
    assert m.drain(400.0) == []
    with pytest.raises(ValueError):
        m.add(PowerSample("w1", "r1", 500.0, -1.0))


def test_report_per_worker_rack_and_block() -> None:
    rows = [EnergyRow("w1", "r1", 0, 3600, 3_600_000.0 * 3),  # 3 kWh
            EnergyRow("w2", "r1", 0, 3600, 3_600_000.0 * 1),
            EnergyRow("w3", "r2", 0, 3600, 3_600_000.0 * 2)]
    rep = report(rows, {"w1": 1e6, "w2": 0.0, "w3": 4e6, "ghost": 5.0}, start=0, end=3600,
                 blocks=2, tariff_per_kwh=0.05)
    assert rep.kwh == pytest.approx(6.0)
    assert rep.kwh_per_block == pytest.approx(3.0)
    assert rep.cost == pytest.approx(0.30) and rep.cost_per_block == pytest.approx(0.15)
    assert rep.workers["w1"].joules_per_difficulty == pytest.approx(10.8)
    assert rep.workers["w2"].joules_per_difficulty is None  # no shares: no efficiency
    assert rep.racks["r1"].joules == pytest.approx(14_400_000.0)
    assert rep.racks["r1"].difficulty == 1e6
    # J/TH from J per difficulty-1 share (2**32 hashes).
    assert rep.racks["r2"].joules_per_terahash == pytest.approx(7.2e6 / 4e6 / (2**32 / 1e12))
    assert "ghost" not in rep.racks  # shares of miners the fleet does not know
    assert rep.as_dict()["kwh"] == pytest.approx(6.0)


async def test_ledger_keeps_energy_and_reports_it(ledger_url: str, tmp_path: Path) -> None:
    ledger = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path), tariff_per_kwh=0.1))
    await ledger.start()
    try:
        t0 = time.time() - 100
        await ledger.record_power([PowerSample("acct.w0", "rack-a", t0, 3600.0),
                                   PowerSample("acct.w0", "rack-a", t0 + 50, 3600.0)])
        for i in range(10):
            ledger.record_share(share(i * 3, account="acct", difficulty=100.0, t=t0 + i))
        await ledger.record_block(block(1, t=t0 + 20))
        await ledger.flush()
        await ledger.flush_energy()
        rep = await ledger.energy_report(t0 - 1, time.time() + 1)
        assert rep.workers["acct.w0"].joules == pytest.approx(3600.0 * 50)
        assert rep.workers["acct.w0"].difficulty == 1000.0
        assert rep.blocks == 1 and rep.kwh_per_block == pytest.approx(0.05)
        assert rep.cost == pytest.approx(0.005)
    finally:
        await ledger.stop()
    # The offline report (`energy` of the CLI helper) reads the same from the ledger.
    import asyncio
    import json

    from poold.ledger import cli

    doc = json.loads(await asyncio.to_thread(cli.energy_json, ledger_url, t0 - 1,
                                             time.time() + 1, 0.1))
    assert doc["workers"]["acct.w0"]["joules"] == pytest.approx(3600.0 * 50)
    assert doc["kwh_per_block"] == pytest.approx(0.05)
    assert doc["racks"]["rack-a"]["difficulty"] == 1000.0


def test_samples_from_fleet_telemetry() -> None:
    from poold.fleet.drivers.base import Telemetry
    from poold.ledger.energy import sample_from

    reading = Telemetry(time=12.0, power_w=3250.0, hashrate_ths=100.0)
    assert sample_from("acct.s19-1", "rack-a", reading) == PowerSample(
        "acct.s19-1", "rack-a", 12.0, 3250.0)
    assert sample_from("acct.s19-2", "rack-a", Telemetry(time=12.0, power_w=None,
                                                         hashrate_ths=None)) is None
