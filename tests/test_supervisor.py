"""poold.supervisor's pure parts: process counts, each worker's config, orphan journal adoption."""

from __future__ import annotations

from pathlib import Path

import pytest

from poold.config import config_from_dict
from poold.errors import ConfigError
from poold.supervisor import adopt_journals, resolve_processes, worker_config


def cfg(tmp_path: Path, **api: object) -> object:
    return config_from_dict({
        "pool": {"network": "regtest", "payout": "solo", "instance_id": 5,
                 "state_dir": str(tmp_path)},
        "nodes": [{"name": "n", "rpc_url": "http://127.0.0.1:18443", "rpc_user": "u",
                   "rpc_password": "p"}],
        "stratum": {"listen": "127.0.0.1:3333"},
        "api": {"listen": "127.0.0.1:9332", **api},
    }, source="test.toml")


def test_resolve_processes() -> None:
    assert 1 <= resolve_processes(0) <= 64
    assert resolve_processes(3) == 3
    for bad in (-1, 65):
        with pytest.raises(ConfigError, match="--processes"):
            resolve_processes(bad)


def test_worker_config(tmp_path: Path) -> None:
    base = cfg(tmp_path)
    w = worker_config(base, 2)  # type: ignore[arg-type]
    assert w.stratum.reuse_port is True
    assert w.stratum.listen == base.stratum.listen  # type: ignore[attr-defined]
    assert w.api.listen == ("127.0.0.1", 9334)
    assert w.pool.state_dir == str(tmp_path / "worker-2")
    # the ledger stays the instance's one SQLite file, not one per worker
    assert w.ledger_url == f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    assert w.pool.instance_id == 5
    with pytest.raises(ConfigError, match="--worker-index"):
        worker_config(base, 64)  # type: ignore[arg-type]


def test_adopt_journals(tmp_path: Path) -> None:
    base = cfg(tmp_path)
    name = "ledger-journal-5.jsonl"
    (tmp_path / name).write_bytes(b'{"kind": "block", "n": 0}\n')
    for i in (0, 1, 2):
        (tmp_path / f"worker-{i}").mkdir()
        (tmp_path / f"worker-{i}" / name).write_bytes(b'{"n": %d}' % (i + 1))  # torn: no \n
    # now 2 processes: the plain journal and worker 2's move into worker 0's
    assert adopt_journals(base, keep=2) == 2  # type: ignore[arg-type]
    assert not (tmp_path / name).exists() and not (tmp_path / "worker-2" / name).exists()
    lines = (tmp_path / "worker-0" / name).read_bytes().splitlines()
    assert lines == [b'{"n": 1}', b'{"kind": "block", "n": 0}', b'{"n": 3}']
    assert (tmp_path / "worker-1" / name).exists()
    # back to one process: every worker journal moves into the plain one
    assert adopt_journals(base, keep=0) == 2  # type: ignore[arg-type]
    assert not list(tmp_path.glob("worker-*/" + name))
    assert (tmp_path / name).read_bytes().splitlines() == [
        b'{"n": 1}', b'{"kind": "block", "n": 0}', b'{"n": 3}', b'{"n": 2}']
