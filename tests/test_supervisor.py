"""poold.supervisor's pure parts: process counts, each worker's config, orphan journal adoption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


async def test_a_worker_that_cannot_start_is_retried_while_the_other_serves(
        tmp_path: Path) -> None:
    """The file breaks under a running instance; worker 1 is killed and restarts into it (exit
    2): the supervisor says why and retries it with back-off, worker 0 keeps serving and its
    /readyz names worker 1 and the reason; a fixed file lets worker 1 start again."""
    import asyncio
    import os
    import signal
    import time

    import aiohttp

    from poold.devnet import Devnet
    from tests.integration.test_multiprocess import start_poold

    async def until(cond: object, limit_s: float, what: str) -> None:
        deadline = time.monotonic() + limit_s
        while not cond():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"{what}:\n{p.tail()}"
            await asyncio.sleep(0.1)

    async with Devnet() as dn:
        await dn.generate(101)
        p = await start_poold(tmp_path / "i", dn, processes=2)
        try:
            cfg = tmp_path / "i" / "poold.toml"
            good = cfg.read_text()
            cfg.write_text(good.replace("[stratum]", "[stratum]\nno_such_key = 1"))
            pid = p.worker_pids()[1]
            os.kill(pid, signal.SIGKILL)
            await until(lambda: p.count(r"worker 1 .*cannot start: config error") >= 2, 30,
                        "worker 1 retried")
            assert "no_such_key" in p.text()
            assert p.proc.returncode is None  # the supervisor keeps running
            async with aiohttp.ClientSession() as http:
                async def readyz() -> tuple[int, dict[str, object]]:
                    async with http.get(f"http://127.0.0.1:{p.api_port}/readyz") as r:
                        return r.status, await r.json()
                deadline = time.monotonic() + 5
                while True:
                    status, body = await readyz()
                    if status == 503:
                        break
                    assert time.monotonic() < deadline, body
                    await asyncio.sleep(0.2)
                checks: Any = body["checks"]
                why: Any = body["reasons"]
                assert checks["workers"] is False and checks["stratum"] is True, body
                assert "worker 1" in why["workers"] and "no_such_key" in why["workers"], body
                # worker 0 still serves miners
                _r, w = await asyncio.open_connection("127.0.0.1", p.port)
                w.close()
                cfg.write_text(good)
                await until(lambda: p.count(r"worker 1 ready") >= 2, 60, "worker 1 back")
                deadline = time.monotonic() + 5
                while (await readyz())[0] != 200:
                    assert time.monotonic() < deadline, await readyz()
                    await asyncio.sleep(0.2)
        finally:
            await p.stop()
        assert p.proc.returncode == 0, p.tail()


async def test_adopted_share_spills_keep_every_pending_batch(tmp_path: Path) -> None:
    """Going from 3 processes to 1: the spills of workers 1 and 2 move into worker 0's, their
    batches renumbered after its own, retired batches left behind."""
    from poold.ledger.journal import ShareSpill
    from tests.ledger.helpers import share

    base = cfg(tmp_path)
    name = "ledger-spill-5.jsonl"
    expected = 0
    for i in (0, 1, 2):
        spill = ShareSpill(tmp_path / f"worker-{i}" / name)
        await spill.load()
        for b in range(3):
            await spill.append([share(100 * i + 10 * b + k) for k in range(4)])
        await spill.retire(2)  # committed: must not come back
        expected += 8
    assert adopt_journals(base, keep=1) == 0  # type: ignore[arg-type]  # no block journals
    assert not (tmp_path / "worker-2" / name).exists()
    assert not (tmp_path / "worker-1" / name).exists()
    merged = ShareSpill(tmp_path / "worker-0" / name)
    assert await merged.load() == expected
    jobs = []
    while (got := await merged.oldest()) is not None:
        seq, shares, _link, _id = got
        jobs += [s.job_id for s in shares]
        await merged.retire(seq)
    assert sorted(jobs) == sorted(str(100 * i + 10 * b + k) for i in (0, 1, 2)
                                  for b in (0, 2) for k in range(4))
