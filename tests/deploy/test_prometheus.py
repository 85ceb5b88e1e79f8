"""Prometheus config and alert rules are checked by promtool itself; each alert is unit-tested,
and every alert uses only metrics that poold defines."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from poold.metrics import Metrics

PROM = Path(__file__).parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI")
        pytest.skip("promtool not installed")
    return subprocess.run([tool, *args], capture_output=True, text=True, check=False, cwd=PROM)


def test_config_is_valid() -> None:
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_rules_are_valid() -> None:
    out = promtool("check", "rules", "poold-alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_fires_in_unit_tests() -> None:
    out = promtool("test", "rules", "poold-alerts.test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    rules = re.findall(r"- alert: (\w+)", (PROM / "poold-alerts.yml").read_text())
    tested = set(re.findall(r"alertname: (\w+)", (PROM / "poold-alerts.test.yml").read_text()))
    assert set(rules) == tested


def test_alerts_use_only_defined_metrics() -> None:
    suffixes = ("", "_total", "_bucket", "_count", "_sum", "_created", "_info")
    defined = {fam.name + sfx for fam in Metrics().registry.collect() for sfx in suffixes}
    used = set(re.findall(r"\b(poold_[a-z_]+)", (PROM / "poold-alerts.yml").read_text()))
    assert used, "no poold metric in the rules"
    assert used <= defined, used - defined
