"""Metrics follow the conventions: poold_ prefix, base units, bounded labels, scrape hooks."""

from __future__ import annotations

from prometheus_client import generate_latest

from poold.metrics import Metrics

FORBIDDEN_LABELS = {"worker", "ip", "address", "user", "username"}


def test_every_metric_is_prefixed_and_labels_are_bounded() -> None:
    m = Metrics()
    families = list(m.registry.collect())
    assert len(families) > 20
    for fam in families:
        assert fam.name.startswith("poold_"), fam.name
        for sample in fam.samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), (fam.name, sample.labels)


def test_two_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()
    a.blocks_found.inc()
    assert b.registry.get_sample_value("poold_blocks_found_total") == 0.0
    assert a.registry.get_sample_value("poold_blocks_found_total") == 1.0


def test_scrape_hook_runs_before_each_scrape() -> None:
    m = Metrics()
    live = {"n": 3}
    m.add_scrape_hook(lambda: m.connections.set(live["n"]))
    assert "poold_stratum_connections 3.0" in generate_latest(m.registry).decode()
    live["n"] = 7
    assert "poold_stratum_connections 7.0" in generate_latest(m.registry).decode()


def test_readme_documents_every_metric() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for fam in Metrics().registry.collect():
        name = {"counter": fam.name + "_total", "info": fam.name + "_info"}.get(fam.type, fam.name)
        assert f"`{name}`" in readme, f"README.md does not document {name}"


def test_per_worker_series_are_opt_in_and_capped() -> None:
    m = Metrics()
    assert m.registry.get_sample_value("poold_worker_accepted_difficulty_total", {"worker": "a"}) \
        is None
    sessions = [("a", 5.0), ("b", 1.0), ("a", 2.0), ("c", 3.0), ("d", 0.5)]
    m.enable_per_worker(lambda: iter(sessions), limit=2)

    def value(worker: str) -> float | None:
        return m.registry.get_sample_value("poold_worker_accepted_difficulty_total",
                                           {"worker": worker})

    assert value("a") == 7.0  # both of a's sessions
    assert value("c") == 3.0
    assert value("b") is None and value("d") is None  # beyond the cap...
    assert value("_other") == 1.5  # ...but still counted, so sums stay true
