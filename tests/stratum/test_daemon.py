"""`poold run -c FILE` as a process: serves Stratum against the devnet, and on SIGTERM stops
listening, sends client.reconnect to its miners and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp

from poold.bitcoin.address import Network, p2wpkh_address
from tests.stratum.client import StratumClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_poold_run_serves_and_shuts_down_in_order(devnet: Any, tmp_path: Path) -> None:
    await devnet.generate(1)
    port = free_port()
    api_port = free_port()
    cfg = tmp_path / "poold.toml"
    cfg.write_text(f"""
[pool]
network = "regtest"
payout = "solo"
state_dir = "{tmp_path}"

[[nodes]]
rpc_url = "{devnet.rpc_url}"
rpc_user = "{devnet.rpc_user}"
rpc_password = "{devnet.rpc_password}"
zmq_hashblock = "{devnet.zmq_url}"

[stratum]
listen = "127.0.0.1:{port}"
start_difficulty = 0.001
min_difficulty = 0.00001
reconnect_host = "127.0.0.1"
reconnect_port = 4444

[api]
listen = "127.0.0.1:{api_port}"

[metrics]
per_worker = true
per_worker_max = 10
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", "run", "-c", str(cfg),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        client = None
        for _ in range(200):
            try:
                client = await StratumClient.connect(port)
                break
            except OSError:
                assert proc.returncode is None
                await asyncio.sleep(0.05)
        assert client is not None, "poold run did not listen"
        addr = p2wpkh_address(os.urandom(20), Network.REGTEST)
        _, job = await client.handshake(f"{addr}.w")
        assert int(job[7], 16) > 0
        reply = await client.call(
            "mining.submit", f"{addr}.w", job[0], "00" * 8, job[7], "00000000"
        )
        assert reply["id"] is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{api_port}/api/v1/workers") as resp:
                workers = (await resp.json())["workers"]
            assert [w["worker"] for w in workers] == [f"{addr}.w"]
            async with http.get(f"http://127.0.0.1:{api_port}/api/v1/pool") as resp:
                pool = await resp.json()
            assert pool["connections"] == 1 and pool["template"]["height"] >= 2
            async with http.get(f"http://127.0.0.1:{api_port}/readyz") as resp:
                assert resp.status == 200
            for _ in range(50):  # counters reach Prometheus at the next sweep (1 s)
                async with http.get(f"http://127.0.0.1:{api_port}/metrics") as resp:
                    text = await resp.text()
                if "poold_shares_total{" in text:
                    break
                await asyncio.sleep(0.1)
            assert "poold_stratum_connections 1.0" in text
            assert 'poold_shares_total{reason="' in text
            assert 'poold_share_core_info{core="' in text
            assert f'poold_worker_accepted_difficulty_total{{worker="{addr}.w"}}' in text
            # regtest: about half of all hashes are blocks; the ledger records them durably
            for nonce in range(1, 24):
                await client.call(
                    "mining.submit", f"{addr}.w", job[0], "00" * 8, job[7], f"{nonce:08x}"
                )
            blocks: list[Any] = []
            for _ in range(100):
                async with http.get(f"http://127.0.0.1:{api_port}/api/v1/blocks") as resp:
                    blocks = (await resp.json())["blocks"]
                if blocks:
                    break
                await asyncio.sleep(0.05)
            assert blocks and blocks[0]["finder_worker"] == f"{addr}.w"
            assert blocks[0]["outputs"][0]["address"] == addr
        # SIGHUP: reloadable keys apply: the start difficulty to the next session, a new
        # version mask at once to the live session that negotiated version rolling.
        cfg.write_text(cfg.read_text().replace(
            "start_difficulty = 0.001", 'start_difficulty = 0.002\nversion_mask = "1fe00000"'))
        proc.send_signal(signal.SIGHUP)
        note = await client.wait_note("mining.set_version_mask", limit_s=10)
        assert note["params"] == ["1fe00000"]
        first: list[Any] = []
        for _ in range(50):
            late = await StratumClient.connect(port)
            await late.handshake(p2wpkh_address(os.urandom(20), Network.REGTEST))
            first = [n["params"] for n in late.notes if n["method"] == "mining.set_difficulty"]
            await late.close()
            if first and first[0] == [0.002]:
                break
            await asyncio.sleep(0.1)
        assert first[0] == [0.002]
        proc.send_signal(signal.SIGTERM)
        note = await client.wait_note("client.reconnect", limit_s=10)
        assert note["params"] == ["127.0.0.1", 4444, 0]
        await client.close()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_config_errors_name_the_key(tmp_path: Path, capsys: Any) -> None:
    import pytest

    from poold.cli import main
    from poold.config import config_from_dict
    from poold.daemon import build_pool
    from poold.errors import ConfigError

    class NoNodes:
        def subscribe(self, callback: Any) -> None:
            return None

    cfg = config_from_dict(
        {
            "pool": {"network": "regtest", "coinbase_tag": "x" * 90},
            "nodes": [{"rpc_url": "http://127.0.0.1:1", "rpc_user": "u", "rpc_password": "p"}],
        }
    )
    with pytest.raises(ConfigError) as exc:
        build_pool(cfg, NoNodes())  # type: ignore[arg-type]
    assert exc.value.key == "pool.coinbase_tag"
    bad = tmp_path / "bad.toml"
    bad.write_text('[stratum]\nlisten = "nowhere"\n')
    assert main(["run", "-c", str(bad)]) == 2
    assert "stratum.listen" in capsys.readouterr().err


async def _run_until_serving(devnet: Any, tmp_path: Path, level: str, args: list[str],
                             ) -> str:
    """Start `poold [args[0]...] run -c CFG [...]` with `[log] level = LEVEL`, wait until
    it serves Stratum, stop it; its stderr."""
    port = free_port()
    cfg = tmp_path / f"poold-{level}-{'-'.join(args)}.toml"
    cfg.write_text(f"""
[pool]
network = "regtest"
payout = "solo"
state_dir = "{tmp_path}"

[[nodes]]
rpc_url = "{devnet.rpc_url}"
rpc_user = "{devnet.rpc_user}"
rpc_password = "{devnet.rpc_password}"

[stratum]
listen = "127.0.0.1:{port}"

[api]
listen = "127.0.0.1:{free_port()}"

[log]
level = "{level}"
""")
    before, after = (args[: args.index("run")], args[args.index("run") + 1:])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", *before, "run", "-c", str(cfg), *after,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(400):
            try:
                client = await StratumClient.connect(port)
            except OSError:
                assert proc.returncode is None
                await asyncio.sleep(0.05)
                continue
            # with --processes, make sure a worker (not only the port) answers
            await client.handshake(p2wpkh_address(os.urandom(20), Network.REGTEST))
            await client.close()
            break
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return err.decode()


async def test_log_level_from_the_config_applies_at_start_and_in_workers(
    devnet: Any, tmp_path: Path,
) -> None:
    await devnet.generate(1)
    quiet = await _run_until_serving(devnet, tmp_path, "WARNING", ["run"])
    assert " INFO " not in quiet, quiet
    # the command line overrides the config when given
    loud = await _run_until_serving(devnet, tmp_path, "WARNING", ["--log-level", "INFO", "run"])
    assert "poold running" in loud
    # every --processes worker applies the config's level too
    workers = await _run_until_serving(devnet, tmp_path, "WARNING", ["run", "--processes", "2"])
    assert " INFO " not in workers, workers
    debug = await _run_until_serving(devnet, tmp_path, "DEBUG", ["run", "--processes", "2"])
    # A worker (not only the supervisor) logs at DEBUG. Which one is up when the port first
    # answers is the kernel's choice (SO_REUSEPORT), so no particular worker is named.
    assert re.search(r" DEBUG \[worker \d+\] ", debug), debug
