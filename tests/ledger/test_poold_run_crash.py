"""kill -9 of a real `poold run` under share load, on both ledger backends.

The devnet runs in this process, `poold run` in a subprocess, simulated miners connect over
loopback TCP. Every share a miner saw accepted at least the durability window (flush interval
+ commit, with slack for this shared machine) before the kill must be in the ledger, and every
block a miner found at least one second before the kill (the pool submits it to the nodes, then
records it) must be in the ledger when it is on the devnet's chain.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from poold.bitcoin.address import Network, p2wpkh_address
from poold.ledger.store import open_store
from poold.sim.ports import free_port
from tests.poold_process import nodes_toml, poold_run

if TYPE_CHECKING:
    from poold.sim.miner import StratumMiner

def journal_spill(state_dir: Path) -> Path:
    from poold.ledger.config import LedgerConfig
    from poold.ledger.journal import spill_path

    return spill_path(LedgerConfig(state_dir=str(state_dir), instance_id=3).journal_path)


WINDOW_S = 0.1 + 0.4  # flush interval + commit and scheduling slack on a noisy box
BLOCK_GRACE_S = 1.0


def write_config(workdir: Path, dn: Any, port: int, ledger_url: str, *, payout: str = "solo",
                 instance_id: int = 3, pool_extra: str = "",
                 ledger_extra: str = "flush_interval_ms = 100\n", api_port: int | None = None
                 ) -> Path:
    """The ledger tests' `poold run` config: `pool_extra` and `ledger_extra` are lines added to
    the `[pool]` and `[ledger]` tables (the fee, the payout's tuning)."""
    cfg = workdir / "poold.toml"
    cfg.write_text(f"""[pool]
network = "regtest"
payout = "{payout}"
{pool_extra}instance_id = {instance_id}
state_dir = "{workdir}"

{nodes_toml(dn)}
[stratum]
listen = "127.0.0.1:{port}"
start_difficulty = 1e-6
min_difficulty = 1e-8

[ledger]
url = "{ledger_url}"
{ledger_extra}
[api]
listen = "127.0.0.1:{api_port or free_port()}"
""")
    return cfg


async def mine_for(seconds: float, miners: list[StratumMiner], *, quiesce: bool = False
                   ) -> None:
    """Run the miners for `seconds`, then stop them and wait until each has finished. With
    `quiesce`, each first finds no more shares and waits for the replies to those it sent."""
    tasks = [asyncio.create_task(m.run()) for m in miners]
    await asyncio.sleep(seconds)
    if quiesce:
        await asyncio.gather(*(m.quiesce(30.0) for m in miners))
    for m in miners:
        m.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_kill_9_of_poold_run_under_share_load(ledger_url: str, tmp_path: Path) -> None:
    from poold.devnet import Devnet
    from poold.sim.miner import MinerEvent, StratumMiner

    async with Devnet() as dn:
        await dn.generate(101)
        start_height = dn.height
        port = free_port()
        cfg = write_config(tmp_path, dn, port, ledger_url)
        log = tmp_path / "poold.log"
        async with poold_run(cfg, log, port=port) as proc:
            events: list[tuple[float, MinerEvent]] = []
            addresses = [p2wpkh_address(os.urandom(20), Network.REGTEST) for _ in range(3)]
            miners = [StratumMiner("127.0.0.1", port, f"{a}.rig{i}", suggest_difficulty=1e-6,
                                   name=f"m{i}", reconnect=False,
                                   on_event=lambda e: events.append((time.time(), e)))
                      for i, a in enumerate(addresses)]
            tasks = [asyncio.create_task(m.run()) for m in miners]
            await asyncio.sleep(4.0)
            killed_at = time.time()
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            for m in miners:
                m.stop()
            await asyncio.gather(*tasks, return_exceptions=True)

        accepted = [t for t, e in events if e.kind == "accepted"]
        found = {e.hash_hex: t for t, e in events if e.kind == "block"}
        on_chain = {dn.view.hash_at(h)[::-1].hex() for h in range(start_height + 1, dn.height + 1)}
        store = open_store(ledger_url)
        await store.open()
        try:
            cutoff = killed_at - WINDOW_S
            page = await store.shares_page(cutoff, None, 1_000_000)
            recorded = {b.hash_hex for b in await store.blocks()}
        finally:
            await store.close()
        must_have_shares = sum(1 for t in accepted if t <= cutoff)
        must_have_blocks = {h for h, t in found.items()
                            if h in on_chain and t <= killed_at - BLOCK_GRACE_S}
        print(f"{len(accepted)} shares accepted, {must_have_shares} before the window, "
              f"{len(page)} in the ledger before it; {len(must_have_blocks)} blocks to check")
        assert must_have_shares > 20, log.read_text()[-3000:]
        assert len(page) >= must_have_shares
        assert must_have_blocks, "no block found early enough to check"
        assert must_have_blocks <= recorded


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_poold_run_with_the_database_down_keeps_serving(tmp_path: Path) -> None:
    """The ledger database is unreachable for a whole `poold run`: miners are still served,
    found blocks go to the journal; the next start (database back) replays them."""
    from poold.devnet import Devnet
    from poold.ledger.config import LedgerConfig
    from poold.sim.miner import StratumMiner

    async with Devnet() as dn:
        await dn.generate(101)
        start_height = dn.height
        port = free_port()
        cfg = write_config(tmp_path, dn, port, "postgresql://poold:poold@127.0.0.1:9/none")
        log = tmp_path / "poold.log"
        async with poold_run(cfg, log, port=port, append=True) as proc:
            miner = StratumMiner("127.0.0.1", port,
                                 f"{p2wpkh_address(os.urandom(20), Network.REGTEST)}.rig",
                                 suggest_difficulty=1e-6, reconnect=False)
            task = asyncio.create_task(miner.run())
            await asyncio.sleep(3.0)
            # Still serving, but not ready: /readyz names the unwritable ledger.
            api = re.search(r'\[api\]\nlisten = "([^"]+)"', cfg.read_text())
            assert api is not None
            async with aiohttp.ClientSession() as http, \
                    http.get(f"http://{api.group(1)}/readyz") as resp:
                assert resp.status == 503
                checks = (await resp.json())["checks"]
            assert checks["ledger"] is False and checks["stratum"] is True, checks
            miner.stop()
            await asyncio.gather(task, return_exceptions=True)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert miner.accepted > 5  # served while the ledger database was down
        # The shares had nowhere to go but the spill file (after 1 s, or at shutdown).
        assert journal_spill(tmp_path).exists()
        journal = LedgerConfig(state_dir=str(tmp_path), instance_id=3).journal_path
        journaled = journal.read_text()
        on_chain = [dn.view.hash_at(h)[::-1].hex()
                    for h in range(start_height + 1, dn.height + 1)]
        assert on_chain and all(h in journaled for h in on_chain)

        # The database is back (here: the default SQLite file): the next start replays.
        text = cfg.read_text().replace('url = "postgresql://poold:poold@127.0.0.1:9/none"',
                                       f'url = "sqlite:///{tmp_path / "ledger.sqlite3"}"')
        cfg.write_text(text)
        async with poold_run(cfg, log, port=port, append=True) as proc:
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    store = open_store(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    await store.open()
    try:
        recorded = {b.hash_hex: b for b in await store.blocks()}
        shares = await store.share_count()
    finally:
        await store.close()
    assert shares >= miner.accepted  # every accepted share, from the spill file
    assert not journal_spill(tmp_path).exists()
    assert set(on_chain) <= set(recorded)
    assert not journal.exists()
    assert all(any(s.result is None for s in recorded[h].submits) for h in on_chain)
