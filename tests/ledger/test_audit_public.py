"""`[api] public_windows`: each block's window (share ids, worker names, difficulties) over a
real admin API without a token; off by default (404)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from poold.api import AdminApi, ApiError
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import BlockStatus
from poold.metrics import Metrics
from tests.ledger.helpers import block, share
from tests.test_api import READ, FakeBackend


class LedgerBackend(FakeBackend):
    """The daemon's public_windows contract over a real Ledger."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger

    async def public_windows(self, since: float | None) -> Sequence[dict[str, Any]]:
        rows = await self.ledger.public_windows(since)
        if rows is None:
            raise ApiError(404, "not published", "api.public_windows is off")
        return rows


async def fetch(ledger: Ledger) -> tuple[int, Any]:
    api = AdminApi(LedgerBackend(ledger), Metrics().registry, read_tokens=[READ])
    await api.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{api.port}/api/v1/public/windows") as resp:
            return resp.status, await resp.json()
    finally:
        await api.stop()


async def test_public_windows_on_and_off(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    base = dict(url=url, state_dir=str(tmp_path), payout="pplns", fee_address="pool",
                pplns_window_factor=3e11)  # x regtest difficulty 4.66e-10: ~140
    ledger = Ledger(LedgerConfig(**base, public_windows=True))  # type: ignore[arg-type]
    await ledger.start()
    try:
        t0 = 1_700_000_000.0
        for n in range(18):
            ledger.record_share(share(n, account="alice" if n % 3 else "bob",
                                      difficulty=1.0 + n, t=t0 + n))
        assert await ledger.flush()
        found = block(1, t=t0 + 100)
        await ledger.record_block(found)
        [rec] = await ledger.blocks()
        await ledger.store.update_block(found.hash_hex, BlockStatus.MATURED, 100, t0 + 200, [],
                                        await ledger.pplns_credits(rec))
        status, doc = await fetch(ledger)  # no token: public
    finally:
        await ledger.stop()
    assert status == 200
    [b] = doc["blocks"]
    window = b["window"]
    # Newest first until ~140 difficulty: shares 17 (18) down to 7 (8), the last one in part.
    ids = [s[0] for s in window["shares"]]
    assert ids == sorted(ids, reverse=True) and len(ids) == 11
    assert (window["last_share_id"], window["first_share_id"]) == (ids[0], ids[-1])
    assert {s[1] for s in window["shares"]} <= {f"{a}.w{i}" for a in ("alice", "bob")
                                                for i in range(3)}
    assert all(len(s) == 3 for s in window["shares"])  # id, worker, difficulty: no account
    # A miner recomputes its weight from the published shares: what the credits came from.
    alice = sum(d for _i, w, d in window["shares"] if w.startswith("alice"))
    assert alice >= window["weights"]["alice"] > 0
    assert {c["account"] for c in b["credits"]} == {"alice", "bob"}

    ledger = Ledger(LedgerConfig(**base))  # type: ignore[arg-type]
    await ledger.start()
    try:
        status, doc = await fetch(ledger)
    finally:
        await ledger.stop()
    assert status == 404 and "public_windows" in str(doc)


async def test_audit_export_from_the_api_is_the_database_export(tmp_path: Path) -> None:
    """`poold audit export --api URL` (a running daemon) and `poold ledger export` (the
    database) write the same document."""
    import asyncio

    from poold.cli import main

    url = f"sqlite:///{tmp_path / 'l.sqlite3'}"
    ledger = Ledger(LedgerConfig(url=url, state_dir=str(tmp_path), payout="pplns",
                                 fee_address="pool", pplns_window_factor=3e11))
    await ledger.start()
    backend = LedgerBackend(ledger)

    async def blocks(since: float | None) -> Sequence[dict[str, Any]]:
        return await ledger.audit_blocks(since)

    backend.blocks = blocks  # type: ignore[method-assign]
    api = AdminApi(backend, Metrics().registry, read_tokens=[READ])
    await api.start("127.0.0.1", 0)
    try:
        for n in range(6):
            ledger.record_share(share(n, difficulty=1.0 + n, t=1_700_000_000.0 + n))
        assert await ledger.flush()
        await ledger.record_block(block(1, t=1_700_000_100.0))
        token = tmp_path / "token"
        token.write_text(READ)
        for fmt in ("json", "csv"):
            assert await asyncio.to_thread(main, [
                "audit", "export", "--api", f"http://127.0.0.1:{api.port}", "--token-file",
                str(token), "--format", fmt, "-o", str(tmp_path / f"api.{fmt}")]) == 0
            assert await asyncio.to_thread(main, [
                "ledger", "export", "--ledger-url", url, "--format", fmt, "-o",
                str(tmp_path / f"db.{fmt}")]) == 0
            api_text = (tmp_path / f"api.{fmt}").read_text()
            assert api_text == (tmp_path / f"db.{fmt}").read_text()
            assert "shares:1:0:1:" in api_text  # the block's committed head
    finally:
        await api.stop()
        await ledger.stop()
