"""Two `poold run` instances (distinct instance_id, so distinct extranonce prefixes) on one
ledger, each with its own miners: one PPLNS window, one audit log, no duplicate work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from poold.bitcoin.address import Network, p2wpkh_address
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.sim.ports import free_port
from tests.ledger.test_poold_run_crash import mine_for
from tests.ledger.test_poold_run_crash import write_config as write_ledger_config
from tests.poold_process import poold_run


def write_config(workdir: Path, dn: Any, port: int, url: str, instance_id: int,
                 fee_address: str, api_port: int) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    return write_ledger_config(
        workdir, dn, port, url, payout="pplns", instance_id=instance_id,
        pool_extra=f'fee_address = "{fee_address}"\nfee_percent = 1.0\n', ledger_extra="",
        api_port=api_port)


async def shares_by_instance(url: str) -> dict[int, int]:
    if url.startswith("sqlite:///"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite://"):])
        try:
            rows = conn.execute(
                "SELECT instance_id, COUNT(*) FROM shares GROUP BY instance_id").fetchall()
        finally:
            conn.close()
        return {int(i): int(n) for i, n in rows}
    import asyncpg

    pg = await asyncpg.connect(url)
    try:
        rows = await pg.fetch("SELECT instance_id, COUNT(*) FROM shares GROUP BY instance_id")
    finally:
        await pg.close()
    return {int(r[0]): int(r[1]) for r in rows}


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_two_poold_instances_share_one_ledger(ledger_url: str, tmp_path: Path) -> None:
    from poold.devnet import Devnet
    from poold.sim.miner import StratumMiner

    fee_address = p2wpkh_address(os.urandom(20), Network.REGTEST)
    async with Devnet() as dn:
        await dn.generate(101)
        *ports, api1, api2 = (free_port() for _ in range(4))
        procs = []
        async with contextlib.AsyncExitStack() as running:
            for i, (port, api) in enumerate(zip(ports, (api1, api2), strict=True), 1):
                cfg = write_config(tmp_path / f"i{i}", dn, port, ledger_url, i, fee_address, api)
                procs.append(await running.enter_async_context(
                    poold_run(cfg, cfg.parent / "poold.log", port=port)))
            accounts = [p2wpkh_address(os.urandom(20), Network.REGTEST) for _ in range(4)]
            miners = [StratumMiner("127.0.0.1", ports[i % 2], f"{a}.rig", name=f"m{i}",
                                   suggest_difficulty=1e-6, reconnect=False)
                      for i, a in enumerate(accounts)]
            await mine_for(4.0, miners, quiesce=True)
            for p in procs:  # graceful stop: each flushes its shares
                p.send_signal(signal.SIGTERM)
            for p in procs:
                assert await asyncio.wait_for(p.wait(), 30) == 0
        accepted = sum(m.accepted for m in miners)

    by_instance = await shares_by_instance(ledger_url)
    assert set(by_instance) == {1, 2}
    # Graceful stop: none lost. The miners waited for every reply before they stopped, so a
    # share the pool stored is a share the miner counted (no reply lost in flight).
    assert sum(by_instance.values()) == accepted
    ledger = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path / "reader"),
                                 payout="pplns", fee_address=fee_address, network="regtest",
                                 pplns_window_factor=1e9))
    await ledger.start()
    try:
        blocks = await ledger.blocks()
        # One PPLNS window over both instances' shares: every miner's account is in it.
        weights = await ledger.window_weights(1.0, until_time=time.time())
        assert set(weights) == set(accounts)
        audit_csv = await ledger.export("csv")
    finally:
        await ledger.stop()
    # One audit log: blocks found through both instances, each recorded once.
    assert {b.instance_id for b in blocks} == {1, 2}
    assert len({b.hash_hex for b in blocks}) == len(blocks)
    # No duplicate work: the two instances never built the same coinbase (distinct extranonce1
    # prefixes). Within one session a coinbase can repeat: on regtest every nonce the miner
    # tries on one extranonce2 may be a block (stale siblings are still submitted).
    by = {i: {b.coinbase_txid_hex for b in blocks if b.instance_id == i} for i in (1, 2)}
    assert by[1] and by[2] and not by[1] & by[2]
    assert all(b.hash_hex in audit_csv for b in blocks)


async def test_one_instance_reconciles_and_another_takes_over(pg_url: str,
                                                             tmp_path: Path) -> None:
    """Audit events once per block: of two instances on one PostgreSQL ledger only one leads
    the reconcile loop; when it goes, the other takes over at its next round."""
    from poold.ledger.store import open_store

    one, two = open_store(pg_url), open_store(pg_url)
    await one.open()
    await two.open()
    try:
        assert await one.lead("reconcile") is True
        assert await two.lead("reconcile") is False
        assert await one.lead("reconcile") is True  # kept while its connection lives
        await one.close()  # the leader goes away (or dies: the server ends its session)
        deadline = time.monotonic() + 5
        while not await two.lead("reconcile"):
            assert time.monotonic() < deadline, "the lock was not released"
            await asyncio.sleep(0.05)
    finally:
        await one.close()
        await two.close()
