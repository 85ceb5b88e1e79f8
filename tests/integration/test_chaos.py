"""Bounded chaos on loopback: `poold run --processes 2` on a PostgreSQL ledger behind a proxy that
can stop or hang, CPU miners on the devnet; kill -9 of a worker, the store stopped, the store
hung, SIGHUP, kill -9 of the supervisor, a restart. At the end every block on the devnet's chain
(all found by the pool: nothing else mines) is in the ledger exactly once, no share was lost,
and SIGHUP warned about nothing that did not change.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from poold.sim.miner import StratumMiner
from tests.integration.conftest import new_address
from tests.integration.test_multiprocess import Poold, start_poold
from tests.ledger.conftest import drop_pg_schema, make_pg_schema_url
from tests.ledger.proxy import FreezableProxy
from tests.waiting import until

HASHRATE = 300_000


def miners(p: Poold, n: int) -> tuple[list[StratumMiner], list[asyncio.Task[None]]]:
    ms = [StratumMiner("127.0.0.1", p.port, f"{new_address()}.chaos{i}", name=f"chaos{i}",
                       hashrate_hs=HASHRATE, reconnect=True) for i in range(n)]
    return ms, [asyncio.create_task(m.run()) for m in ms]


async def stop_miners(ms: list[StratumMiner], tasks: list[asyncio.Task[None]]) -> None:
    for m in ms:
        m.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


async def ledger_blocks(url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch("SELECT hash_hex FROM blocks")]
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_chaos_every_found_block_in_the_ledger_once(tmp_path: Path) -> None:
    from poold.devnet import Devnet

    url, base, schema = await make_pg_schema_url()
    proxy = FreezableProxy(url)
    await proxy.start()
    logs: list[str] = []
    try:
        async with Devnet() as dn:
            await dn.generate(101)
            start_height = dn.height
            p = await start_poold(tmp_path / "a", dn, processes=2, ledger_url=proxy.url)
            ms, tasks = miners(p, 3)
            try:
                await until(lambda: dn.height >= start_height + 3, 30, "blocks found",
                            seen=lambda: dn.height)
                # kill -9 of a worker: restarted, its miners come back
                os.kill(p.worker_pids()[1], signal.SIGKILL)
                await until(lambda: p.count(r"worker 1 ready") >= 2, 30, "worker 1 back",
                            seen=p.tail)
                # the store stopped, then hung, while blocks keep being found
                for fail in ("down", "hung"):
                    h = dn.height
                    if fail == "down":
                        await proxy.down()
                    else:
                        proxy.freeze()
                    # (back-pressure raises the share difficulty while the ledger lags: on
                    # regtest every share is a block, so blocks come slower then)
                    await until(lambda h=h: dn.height > h, 45, f"a block while {fail}",
                                seen=lambda: dn.height)
                    if fail == "down":
                        await proxy.up()
                    else:
                        proxy.thaw()
                    await asyncio.sleep(0.5)
                # SIGHUP with one reloadable key changed
                cfg = tmp_path / "a" / "poold.toml"
                text = cfg.read_text()
                assert "share_interval_s = 10" in text
                cfg.write_text(text.replace("share_interval_s = 10", "share_interval_s = 7"))
                p.proc.send_signal(signal.SIGHUP)
                await until(lambda: p.count(r"config reloaded .*share_interval_s") == 2, 15,
                            "both workers reloaded", seen=p.tail)
                # kill -9 of the supervisor with the store hung: the workers go with it
                proxy.freeze()
                await asyncio.sleep(1.5)
                pids = list(p.worker_pids().values())
                os.kill(p.proc.pid, signal.SIGKILL)
                await p.proc.wait()

                def gone() -> bool:
                    for pid in pids:
                        try:
                            os.kill(pid, 0)
                        except ProcessLookupError:
                            continue
                        return False
                    return True

                await until(gone, 45, "workers gone with their supervisor")
            finally:
                await stop_miners(ms, tasks)
                logs.append(p.text())
            # Restart the instance with the store back: journals and spills are replayed.
            proxy.thaw()
            on_chain = {dn.view.hash_at(h)[::-1].hex()
                        for h in range(start_height + 1, dn.height + 1)}
            (tmp_path / "a" / "poold.log").rename(tmp_path / "a" / "poold-1.log")
            p2 = await start_poold(tmp_path / "a", dn, processes=2, ledger_url=proxy.url)
            try:
                async def complete() -> bool:
                    return on_chain <= set(await ledger_blocks(url))

                await until(complete, 30, "every block on the chain in the ledger",
                            seen=p2.tail, poll_s=0.2)
            finally:
                await p2.stop()
                logs.append(p2.text())
            recorded = await ledger_blocks(url)
    finally:
        await proxy.stop()
        await drop_pg_schema(base, schema)
    text = "\n".join(logs)
    print(f"{len(on_chain)} blocks on the devnet's chain, {len(recorded)} recorded")
    assert len(on_chain) >= 5
    assert on_chain <= set(recorded)
    assert len(recorded) == len(set(recorded))  # each block once
    assert "accepted shares lost" not in text
    assert "need a restart" not in text  # SIGHUP warned about no key that did not change
