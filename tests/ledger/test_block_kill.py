"""kill -9 of a real `poold run` around the submission of found blocks, with its PostgreSQL ledger
hung (a frozen loopback proxy): every block the devnet accepted is in the ledger after a restart,
exactly once. The journal append comes before the submission, so a block a node has is on disk.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from poold.bitcoin.address import Network, p2wpkh_address
from poold.ledger.store import open_store
from poold.sim.ports import free_port
from tests.ledger.proxy import FreezableProxy
from tests.ledger.test_poold_run_crash import write_config
from tests.poold_process import log_tail, poold_run


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kill_9_around_the_submit_with_the_store_hung(pg_url: str, tmp_path: Path) -> None:
    pytest.importorskip("poold.daemon")
    from poold.devnet import Devnet
    from poold.sim.miner import StratumMiner

    proxy = FreezableProxy(pg_url)
    await proxy.start()
    try:
        async with Devnet() as dn:
            await dn.generate(101)
            start_height = dn.height
            port = free_port()
            cfg = write_config(tmp_path, dn, port, proxy.url,
                               ledger_extra="flush_interval_ms = 100\n"
                                            "block_write_timeout_s = 5\n")
            log = tmp_path / "poold.log"
            # Kill points after the node accepted a block: at once (the ledger write has not
            # even been tried), 50 ms and 1 s later (it is waiting on the hung store).
            for delay in (0.0, 0.05, 1.0):
                proxy.thaw()
                async with poold_run(cfg, log, port=port, append=True) as proc:
                    miner = StratumMiner(
                        "127.0.0.1", port,
                        f"{p2wpkh_address(os.urandom(20), Network.REGTEST)}.rig",
                        suggest_difficulty=1e-6, reconnect=False)
                    task = asyncio.create_task(miner.run())
                    await asyncio.sleep(1.0)  # mining with a healthy store first
                    proxy.freeze()
                    height = dn.height
                    deadline = time.monotonic() + 45
                    while dn.height == height:  # a block the node accepted
                        assert time.monotonic() < deadline, log_tail(log)
                        await asyncio.sleep(0.002)
                    if delay:
                        await asyncio.sleep(delay)
                    os.kill(proc.pid, signal.SIGKILL)
                    await proc.wait()
                    miner.stop()
                    await asyncio.gather(task, return_exceptions=True)
            on_chain = {dn.view.hash_at(h)[::-1].hex()
                        for h in range(start_height + 1, dn.height + 1)}
            # Restart with the store healthy: the journal is replayed at start.
            proxy.thaw()
            store = open_store(pg_url)
            await store.open()
            try:
                async with poold_run(cfg, log, port=port, append=True):
                    deadline = time.monotonic() + 20
                    while True:
                        recorded = [b.hash_hex for b in await store.blocks()]
                        if on_chain <= set(recorded):
                            break
                        assert time.monotonic() < deadline, (
                            f"missing {on_chain - set(recorded)}\n{log_tail(log)}")
                        await asyncio.sleep(0.1)
            finally:
                await store.close()
    finally:
        await proxy.stop()
    print(f"{len(on_chain)} blocks on the chain, all in the ledger; {len(recorded)} recorded")
    assert len(recorded) == len(set(recorded))  # exactly once
    assert len(on_chain) >= 3
