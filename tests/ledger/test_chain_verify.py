"""`poold ledger verify` against both real stores: a clean ledger verifies; a share row edited
in the database (as in a reward-moving edit), a credit edited, or a stray share inserted is
caught and named."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from poold.cli import main
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import BlockStatus
from poold.ledger.store import open_store
from poold.ledger.verify import Report, verify
from tests.ledger.helpers import block, share


async def raw_sql(url: str, sql: str) -> None:
    """Change the database behind poold's back, as someone with write access would."""
    if url.startswith("sqlite:///"):
        import sqlite3

        def run() -> None:
            conn = sqlite3.connect(url[len("sqlite://"):], isolation_level=None)
            try:
                conn.execute(sql)
            finally:
                conn.close()

        await asyncio.to_thread(run)
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def build_ledger(url: str, tmp_path: Path) -> tuple[LedgerConfig, str]:
    """A PPLNS ledger: three flushes of shares by two accounts, one block matured with its
    credits computed from the window, as reconciliation does. Returns the block hash."""
    cfg = LedgerConfig(url=url, state_dir=str(tmp_path), payout="pplns", network="regtest",
                       fee_address="pool", fee_percent=1.0,
                       pplns_window_factor=3e11)  # x regtest difficulty 4.66e-10: ~140
    ledger = Ledger(cfg)
    await ledger.start()
    try:
        t0 = 1_700_000_000.0
        for batch in range(3):
            for i in range(6):
                n = batch * 6 + i
                ledger.record_share(share(n, account="alice" if n % 3 else "bob",
                                          difficulty=1.0 + n, t=t0 + n))
            assert await ledger.flush()
        found = block(1, t=t0 + 100)
        await ledger.record_block(found)
        [rec] = await ledger.blocks()
        credits = await ledger.pplns_credits(rec)
        assert {c.account for c in credits} == {"alice", "bob"}
        await ledger.store.update_block(found.hash_hex, BlockStatus.MATURED, 100, time.time(),
                                        [], credits)
    finally:
        await ledger.stop()
    return cfg, found.hash_hex


async def run_verify(url: str, cfg: LedgerConfig) -> Report:
    store = open_store(url)
    await store.open()
    try:
        return await verify(store, cfg)
    finally:
        await store.close()


async def test_clean_ledger_verifies(ledger_url: str, tmp_path: Path) -> None:
    cfg, _h = await build_ledger(ledger_url, tmp_path)
    rep = await run_verify(ledger_url, cfg)
    assert rep.ok, rep.problems
    assert (rep.links, rep.shares, rep.credit_links, rep.credited_blocks) == (3, 18, 1, 1)
    assert rep.buckets > 0


async def test_an_edited_share_row_is_caught(ledger_url: str, tmp_path: Path) -> None:
    cfg, h = await build_ledger(ledger_url, tmp_path)
    # The edit that moved a reward: relabel a share and multiply its difficulty.
    await raw_sql(ledger_url, "UPDATE shares SET account = 'mallory', worker = 'mallory.rig',"
                  " difficulty = difficulty * 100 WHERE job_id = '14'")
    rep = await run_verify(ledger_url, cfg)
    assert not rep.ok
    first = rep.problems[0]
    assert first.startswith("chain shares:1:0 link 3: shares ") and "do not match" in first
    # The buckets no longer add up to the shares, and the block's credits no longer follow.
    assert any("bucket" in p and "'alice'" in p for p in rep.problems)
    assert any("account 'mallory'" in p and "in no bucket" in p for p in rep.problems)
    assert any(f"block 201 {h}: PPLNS credit of account" in p for p in rep.problems)


async def test_an_edited_credit_and_a_stray_share_are_caught(ledger_url: str,
                                                             tmp_path: Path) -> None:
    cfg, h = await build_ledger(ledger_url, tmp_path)
    await raw_sql(ledger_url, "UPDATE credits SET amount = amount + 1000 WHERE account = 'bob'")
    await raw_sql(ledger_url, "INSERT INTO shares (instance_id, worker, account, difficulty,"
                  " job_id, height, time) VALUES (1, 'eve.rig', 'eve', 5.0, 'x', 100,"
                  " 1699990000.0)")  # older than the window
    rep = await run_verify(ledger_url, cfg)
    assert rep.problems[0].startswith("chain credits link 1: credits ")
    assert any("was stored after the chain began but is in no link" in p
               for p in rep.problems)
    assert any(f"{h}: PPLNS credit of account 'bob': stored" in p for p in rep.problems)


def test_cli_ledger_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    asyncio.run(build_ledger(url, tmp_path))
    args: list[Any] = ["ledger", "verify", "--ledger-url", url]
    # The recorded settings (factor, fee) are used: no config file needed.
    assert main(args) == 0
    assert "ledger verify: OK: 3 share links (18 shares" in capsys.readouterr().out
    asyncio.run(raw_sql(url, "UPDATE shares SET difficulty = 99 WHERE job_id = '2'"))
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED: first mismatch: chain shares:1:0 link 1: shares 1..6" in out


async def test_retention_keeps_the_chain_verifiable(ledger_url: str, tmp_path: Path) -> None:
    now = time.time()
    cfg = LedgerConfig(url=ledger_url, state_dir=str(tmp_path), share_retention_s=2 * 86400.0)
    ledger = Ledger(cfg)
    await ledger.start()
    try:
        for batch, t in enumerate((now - 4 * 86400, now - 3 * 86400, now - 3600)):
            for i in range(5):
                ledger.record_share(share(batch * 5 + i, account=f"a{i % 2}", t=t + i))
            assert await ledger.flush()
        assert await ledger.prune(now) == 10
    finally:
        await ledger.stop()
    rep = await run_verify(ledger_url, cfg)
    assert rep.ok, rep.problems
    assert (rep.links, rep.pruned_links, rep.shares) == (3, 2, 5)
    # The links whose shares are gone still chain: removing one is caught.
    await raw_sql(ledger_url, "DELETE FROM chain_links WHERE seq = 2")
    rep = await run_verify(ledger_url, cfg)
    assert rep.problems[0] == "chain shares:1:0 link 3: expected link 2 (a link is missing)"
