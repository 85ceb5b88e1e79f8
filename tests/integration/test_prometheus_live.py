"""A real Prometheus scrapes a running `poold demo --fleet`; every Grafana panel query and every
alert expression is evaluated through Prometheus's HTTP API.

A panel query must return data, unless it is listed in EXPECTED_EMPTY with the reason the demo
cannot produce it. An alert expression must evaluate, every poold metric it watches must exist
in the scraped data, and it must not fire on the healthy demo (unless listed in EXPECTED_FIRING).
Every metric README.md's table lists must have been written with a real value during the run: a
counter or histogram exported, a gauge (or info) away from its initial 0 at some scrape, unless
listed in NOT_WRITTEN with the reason the demo cannot write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.waiting import reading

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "poold.json"
RULES = ROOT / "deploy" / "prometheus" / "poold-alerts.yml"

# Panel title -> why the demo leaves it empty.
EXPECTED_EMPTY: dict[str, str] = {
    "Grid signal age": "the demo configures no grid signal; the age is exported only where "
                       "one is configured or was received",
}
# Alert name -> why it fires on the demo.
EXPECTED_FIRING: dict[str, str] = {}
# Metrics an alert watches that the demo never creates, with the reason.
ABSENT_METRICS: dict[str, str] = {
    "poold_grid_signal_age_seconds": "the demo configures no grid signal; the age is exported "
                                     "only where one is configured or was received",
}
README = ROOT / "README.md"
# README metrics the demo cannot write with a real value, with the reason.
NOT_WRITTEN: dict[str, str] = {
    "poold_grid_signal_age_seconds": ABSENT_METRICS["poold_grid_signal_age_seconds"],
    "poold_worker_accepted_difficulty_total": "opt-in ([metrics] per_worker), off in the demo",
    "poold_rack_blind_miners": "0 is the truth on the demo: every emulated miner answers "
                               "(tests/fleet/test_blind.py writes 1)",
    "poold_rpc_errors_total": "no bitcoind RPC fails on the healthy demo (the labelled counter "
                              "appears with a node's first error)",
    "poold_ledger_spilled_shares": "0 is the truth on the demo: the store never fails, nothing "
                                   "is spilled",
    "poold_ledger_journal_pending": "0 is the truth on the demo: each journaled block is retired "
                                    "within milliseconds, between two scrapes "
                                    "(tests/ledger/test_durability.py writes 5)",
    "poold_ledger_journal_oldest_age_seconds": "0 on the demo for the same reason "
                                               "(tests/ledger/test_durability.py writes > 0.3)",
    "poold_grid_response_seconds": "the demo sends no grid signal "
                                   "(tests/integration/test_grid_response.py writes it)",
    "poold_grid_response_misses_total": "no grid event on the demo, so none missed "
                                        "(tests/integration/test_grid_response.py counts one)",
    "poold_rack_early_wakes_total": "the demo never restores a cap inside a miner's dwell "
                                    "(tests/fleet/test_dwell.py counts them)",
}


def readme_metrics() -> dict[str, str]:
    """README's metrics table: name -> type (gauge, counter, histogram, info)."""
    rows = re.findall(r"^\| `(poold_[a-z_]+)` \| (\w+) \|", README.read_text(), re.M)
    return dict(rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prometheus() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus (Debian package) is required in CI")
        pytest.skip("prometheus not installed")
    return path


async def _wait_http(url: str, within: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.25)
    raise TimeoutError(f"{url} not up within {within} s")


def _spawn(args: list[str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def prom(tmp_path: Path) -> AsyncIterator[str]:
    """`poold demo --fleet` scraped every second by a real Prometheus; yields its base URL.

    The demo's output is in `demo.log` and its pool's log in `pool.log`, both in the test's
    tmp_path (shown on failure)."""
    prometheus = _prometheus()
    api_port, prom_port = _free_port(), _free_port()
    demo = _spawn(
        [sys.executable, "-m", "poold", "demo", "--fleet", "--duration", "240",
         "--api-listen", f"127.0.0.1:{api_port}", "--pool-log", str(tmp_path / "pool.log")],
        tmp_path / "demo.log", tmp_path,
    )
    shutil.copy(RULES, tmp_path / "poold-alerts.yml")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [poold-alerts.yml]\n"
        "scrape_configs:\n"
        "  - job_name: poold\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{api_port}']}}]\n"
    )
    server = _spawn(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        tmp_path / "prometheus.log", tmp_path,
    )
    try:
        await _wait_http(f"http://127.0.0.1:{api_port}/healthz", 60, demo)
        await _wait_http(f"http://127.0.0.1:{prom_port}/-/ready", 60, server)
        yield f"http://127.0.0.1:{prom_port}"
    finally:
        _stop(demo)
        _stop(server)


async def _query(s: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    async with s.get(f"{base}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace('=~"$instance"', '=~".*"')


def _panels() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


def _alerts() -> list[tuple[str, str]]:
    text = RULES.read_text()
    out = []
    for m in re.finditer(r"- alert: (\w+)\n\s+expr: (\|\n(?:\s{10}.*\n)+|.*\n)", text):
        expr = m.group(2)
        if expr.startswith("|"):
            expr = " ".join(line.strip() for line in expr.splitlines()[1:])
        out.append((m.group(1), expr.strip()))
    return out


def test_readme_lists_metrics_with_their_type() -> None:
    rows = readme_metrics()
    assert len(rows) > 20 and set(rows.values()) <= {"gauge", "counter", "histogram", "info"}
    assert set(NOT_WRITTEN) <= set(rows)


def test_rules_parse_into_every_alert() -> None:
    names = re.findall(r"- alert: (\w+)", RULES.read_text())
    assert [n for n, _ in _alerts()] == names


@pytest.mark.timeout(330)
async def test_dashboard_and_alerts_against_live_prometheus(prom: str, tmp_path: Path) -> None:
    try:
        await _check_live(prom)
    except BaseException:
        print("---- poold demo output (tail) ----")
        print((tmp_path / "demo.log").read_text(errors="replace")[-6000:])
        # The pool logs every block at WARNING; what explains a failure is everything else.
        pool = (tmp_path / "pool.log").read_text(errors="replace").splitlines()
        quiet = [line for line in pool if "poold.work.blocks" not in line]
        print("---- the demo pool's log without block lines (tail) ----")
        print("\n".join(quiet[-80:]))
        raise


async def _check_live(prom: str) -> None:
    async with aiohttp.ClientSession() as s:
        # Wait until Prometheus has scraped the daemon for a while: rate() windows need samples,
        # and the fleet has reported its racks.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            up = await _query(s, prom, 'up{job="poold"}')
            racks = await _query(s, prom, "poold_rack_cap_watts")
            shares = await _query(s, prom, 'increase(poold_shares_total{result="accepted"}[1m])')
            if up and up[0]["value"][1] == "1" and racks and shares and any(
                float(r["value"][1]) > 0 for r in shares
            ):
                break
            await asyncio.sleep(1)
        else:
            pytest.fail("Prometheus never saw a healthy demo with racks and accepted shares")
        print("scraping a healthy demo; evaluating panels and alerts")

        async def panels_without_data() -> list[tuple[str, str]]:
            empty = []
            for title, expr in _panels():
                result = await _query(s, prom, _grafana_to_promql(expr))
                if not result and title not in EXPECTED_EMPTY:
                    empty.append((title, expr))
                if result and title in EXPECTED_EMPTY:
                    pytest.fail(f"panel {title!r} has data now: drop it from EXPECTED_EMPTY")
            return empty

        # rate() windows fill as samples arrive: every panel has data within a few scrapes.
        await reading(panels_without_data, lambda empty: not empty, 60.0,
                      "dashboard queries with data", poll_s=2.0)

        present = {r["metric"]["__name__"] for r in await _query(s, prom, '{__name__=~"poold_.+"}')}
        problems = []
        for name, expr in _alerts():
            result = await _query(s, prom, expr)
            if result and name not in EXPECTED_FIRING:
                problems.append(f"{name} fires on the healthy demo: {result}")
            for metric in set(re.findall(r"\b(poold_[a-z_]+)", expr)):
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if base not in present and metric not in present and metric not in ABSENT_METRICS:
                    problems.append(f"{name} watches {metric}, which the daemon does not export")
        assert not problems, "\n".join(problems)
        await _check_readme_metrics(s, prom)


async def _check_readme_metrics(s: aiohttp.ClientSession, prom: str) -> None:
    """Every README-listed metric written with a real value at some point of the run (the
    demo's rack cut comes a minute in: wait for it, with a deadline, then name what is not)."""
    exprs = {}
    for name, kind in readme_metrics().items():
        if name in NOT_WRITTEN:
            continue
        if kind == "histogram":
            exprs[name] = f"max_over_time({name}_count[15m]) > 0"
        elif kind == "info":
            exprs[name] = name if name.endswith("_info") else f"{name}_info"
        elif kind == "counter":
            exprs[name] = name if name.endswith("_total") else f"{name}_total"
        else:  # a gauge stuck at its initial 0 was never written
            exprs[name] = f"max_over_time((abs({name}) > 0)[15m:1s])"
    deadline = time.monotonic() + 120
    while True:
        never = [f"{n} ({readme_metrics()[n]}): {e}" for n, e in exprs.items()
                 if not await _query(s, prom, e)]
        if not never or time.monotonic() > deadline:
            break
        print(f"README metrics not written yet: {[x.split()[0] for x in never]}")
        await asyncio.sleep(5)
    assert not never, "README metrics never written with a real value:\n" + "\n".join(never)
