"""The operator commands' units, times and tables (pure functions)."""

from __future__ import annotations

import pytest

from poold import cli_format as f
from poold.cli_format import Column


@pytest.mark.parametrize(("hs", "text"), [
    (0, "0 H/s"), (999, "999 H/s"), (1500, "1.50 kH/s"), (1.30966e15, "1.31 PH/s"),
    (8.5e14, "850.00 TH/s"), (2.1e18, "2.10 EH/s"), (None, "-"), (float("nan"), "-"),
    (True, "-"),
])
def test_hashrate(hs: object, text: str) -> None:
    assert f.hashrate(hs) == text


def test_power_btc_and_difficulty() -> None:
    assert [f.power(w) for w in (850, 3250, 28_513.4, 2.5e6, None)] == [
        "850 W", "3.25 kW", "28.51 kW", "2.50 MW", "-"]
    assert [f.btc(s) for s in (0, 1, 5_000_000_000, 318_750_000, -5000, 1.5)] == [
        "0.00000000 BTC", "0.00000001 BTC", "50.00000000 BTC", "3.18750000 BTC",
        "-0.00005000 BTC", "-"]
    assert [f.difficulty(d) for d in (1e-4, 512, 65536, 7_864_320.0, 2.5e13)] == [
        "0.0001", "512", "65,536", "7,864,320", "25.00 T"]


def test_times() -> None:
    now = 1_800_000_000.0
    assert f.iso(now) == "2027-01-15T08:00:00Z"
    assert f.iso("2027-01-15T08:00:00Z") == "2027-01-15T08:00:00Z"
    assert [f.ago(now - s, now) for s in (0.4, 12.4, 65, 3 * 3600 + 5, 3 * 86400)] == [
        "0 s ago", "12 s ago", "1 min ago", "3 h ago", "3 d ago"]
    assert f.ago(now + 30, now) == "in 30 s"
    assert [f.duration(s) for s in (42, 3725, 7384.2, 90000)] == [
        "42 s", "1 h 2 min", "2 h 3 min", "1 d 1 h"]
    assert f.duration(75) == "1 min 15 s"


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    rows = [{"id": "rack000", "kw": 28.5}, {"id": "r1", "kw": 3.25}]
    text = f.table([Column("RACK", lambda r: str(r["id"])),
                    Column("POWER", lambda r: f.power(r["kw"] * 1000), right=True)], rows)
    assert text.splitlines() == [
        "RACK        POWER",
        "rack000  28.50 kW",
        "r1        3.25 kW",
    ]
    assert f.table([Column("X", str)], [], empty="(none)") == "(none)"
