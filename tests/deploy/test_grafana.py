"""The Grafana dashboard is valid JSON whose every query uses metrics that poold defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from poold.metrics import Metrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "poold.json"


def test_dashboard_queries_use_defined_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    suffixes = ("", "_total", "_bucket", "_count", "_sum", "_created", "_info")
    defined = {fam.name + sfx for fam in Metrics().registry.collect() for sfx in suffixes}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\b(poold_[a-z_]+)", target["expr"]))
            assert used, (panel["title"], target["expr"])
            assert used <= defined, (panel["title"], used - defined)


def test_dashboard_covers_what_operators_watch() -> None:
    titles = " | ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for topic in ("hashrate", "workers", "shares", "blocks", "rack power", "j/th", "notify",
                  "template age", "node health"):
        assert topic in titles, topic
