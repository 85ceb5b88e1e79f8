"""Lifecycle: fast start, a persistent datadir survives a restart (chain and UTXO view), one
datadir cannot be opened twice, and `poold devnet` runs as a process and exits cleanly on
SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from poold.devnet import Devnet
from poold.devnet.kernel import KernelError
from tests.devnet.helpers import basic_auth, rpc, rpc_raw


async def test_starts_fast_and_cleans_up(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    dn = Devnet()
    await dn.start()
    elapsed = time.perf_counter() - t0
    datadir = dn.datadir
    assert datadir is not None and datadir.exists()
    assert await rpc(dn, "getblockcount") == 0
    await dn.stop()
    assert not datadir.exists()
    # "well under a second"; generous for a loaded CI box.
    assert elapsed < 1.0, elapsed


async def test_persistent_datadir_survives_restart(tmp_path: Path) -> None:
    async with Devnet(datadir=tmp_path) as dn:
        hashes = await dn.generate(101)
        txid = await dn.send_test_transaction()
        with pytest.raises(KernelError):
            await Devnet(datadir=tmp_path).start()
    assert (tmp_path / "regtest" / "blocks").is_dir()
    async with Devnet(datadir=tmp_path) as dn:
        assert dn.height == 101 and dn.tip_hash_hex == hashes[-1]
        # The mempool is not persisted (like bitcoind with -persistmempool=0), the coins are.
        assert await rpc(dn, "getrawmempool") == []
        again = await dn.send_test_transaction()
        assert again == txid  # same oldest coin, same spend
        (mined,) = await dn.generate(1)
        assert txid in (await rpc(dn, "getblock", mined))["tx"]


async def test_cli_process_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", "devnet", "--rpc", "127.0.0.1:0",
        "--zmq", "tcp://127.0.0.1:0", "--datadir", str(tmp_path), "--generate", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        m = re.search(r"rpc (http://\S+) \(user (\S+), cookie (\S+)\), zmq (\S+), height 2", line)
        assert m, line
        url, cookie = m.group(1), Path(m.group(3).rstrip(")"))
        user, _, secret = (await asyncio.to_thread(cookie.read_text)).partition(":")

        class _Remote:
            rpc_url = url

        status, reply = await rpc_raw(_Remote(), "getblockcount",  # type: ignore[arg-type]
                                      auth=basic_auth(user, secret))
        assert (status, reply["result"]) == (200, 2)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
        assert not await asyncio.to_thread(cookie.exists)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    # The chain persisted in --datadir.
    async with Devnet(datadir=tmp_path) as dn:
        assert dn.height == 2
        assert await rpc(dn, "getblockcount") == 2


async def test_restart_on_the_same_ports(tmp_path: Path) -> None:
    """What a node client sees when its bitcoind restarts: same URL, same chain, new cookie."""
    first = Devnet(datadir=tmp_path)
    await first.start()
    hashes = await first.generate(2)
    url, zmq_url = first.rpc_url, first.zmq_url
    rpc_port, zmq_port = int(url.rsplit(":", 1)[1]), int(zmq_url.rsplit(":", 1)[1])
    await first.stop()
    async with Devnet(datadir=tmp_path, rpc_port=rpc_port, zmq_port=zmq_port,
                      rpc_password=first.rpc_password) as again:
        assert (again.rpc_url, again.zmq_url) == (url, zmq_url)
        assert await rpc(again, "getbestblockhash") == hashes[-1]


async def test_cli_refuses_a_datadir_in_use(tmp_path: Path) -> None:
    async with Devnet(datadir=tmp_path):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poold", "devnet", "--rpc", "127.0.0.1:0",
            "--zmq", "tcp://127.0.0.1:0", "--datadir", str(tmp_path),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode == 1
        assert b"already in use" in err
