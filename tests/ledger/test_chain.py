"""The ledger's hash chain: canonical encodings, links, the coinbase commitment, and the
Ledger's share chain against both real stores (poold.ledger.chain, docs/AUDIT.md)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest

from poold.ledger import chain
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import AcceptedShare
from poold.ledger.store import ChainConflict, StoreUnavailable, open_store
from tests.ledger.helpers import share


def test_share_link_hash_is_the_documented_encoding() -> None:
    s = AcceptedShare(worker="a.rig", account="a", difficulty=2.5, job_id="1f", height=7,
                      time=1000.25, instance_id=3)
    body = (struct.pack(">Q1q1q1d1d", 1, 3, 7, 2.5, 1000.25) + b"a.rig\x01a\x011f")
    assert chain.encode_shares([s]) == body
    link = chain.share_link("shares:3:0", None, [s], 5.0)
    assert link.seq == 1 and link.prev_hash == bytes(32) and link.n == 1
    assert link.hash == hashlib.sha256(
        b"poold-ledger-chain-v1\x00shares:3:0\x00" + bytes(32) + body).digest()
    nxt = chain.share_link("shares:3:0", link, [s], 6.0)
    assert nxt.seq == 2 and nxt.prev_hash == link.hash and nxt.hash != link.hash


def test_any_changed_field_changes_the_link() -> None:
    base = [share(i, t=1000.0 + i) for i in range(3)]
    h = chain.share_link("c", None, base, 0.0).hash
    import dataclasses

    for field, value in (("worker", "x.y"), ("account", "x"), ("difficulty", 1.0000001),
                         ("job_id", "zz"), ("height", 99), ("time", 1001.5),
                         ("instance_id", 9)):
        changed = list(base)
        changed[1] = dataclasses.replace(base[1], **{field: value})
        assert chain.share_link("c", None, changed, 0.0).hash != h, field
    # Moving text between fields is not the same encoding either.
    a = [dataclasses.replace(base[0], worker="ab", account="c")]
    b = [dataclasses.replace(base[0], worker="a", account="bc")]
    assert chain.encode_shares(a) != chain.encode_shares(b)
    with pytest.raises(ValueError, match="NUL"):
        chain.encode_shares([dataclasses.replace(base[0], worker="a\x00b")])


def test_commitment_round_trip_and_size() -> None:
    head = bytes(range(32))
    script = chain.commitment_script(head)
    assert script[0] == 0x6A and len(script) == 38
    assert 8 + 1 + len(script) == chain.COMMITMENT_OUTPUT_BYTES
    assert chain.parse_commitment(script) == head
    assert chain.parse_commitment(bytes.fromhex("6a24aa21a9ed") + bytes(32)) is None
    assert chain.committed_head([(b"\x00\x14" + bytes(20), 5), (script, 0)]) == head
    assert chain.parse_head(f"shares:1:0:7:{head.hex()}") == ("shares:1:0", 7, head)


async def test_store_links_are_idempotent_and_conflicts_refused(ledger_url: str) -> None:
    store = open_store(ledger_url)
    await store.open()
    try:
        batch = [share(i, t=1000.0 + i) for i in range(4)]
        link = chain.share_link("shares:1:0", None, batch, 1.0)
        await store.insert_shares(batch, link)
        await store.insert_shares(batch, link)  # a retry of a committed batch: no-op
        assert await store.share_count() == 4
        assert await store.chain_head("shares:1:0") == link
        other = chain.share_link("shares:1:0", None, batch[:2], 1.0)
        with pytest.raises(ChainConflict):
            await store.insert_shares(batch[:2], other)
        assert await store.share_count() == 4
        rows = await store.query("SELECT COUNT(*) FROM shares WHERE link IS NOT NULL")
        assert rows == [(4,)]
    finally:
        await store.close()


async def test_ledger_chain_continues_across_restarts(ledger_url: str, tmp_path: Path) -> None:
    cfg = LedgerConfig(url=ledger_url, state_dir=str(tmp_path), instance_id=2, writer=1)
    for round_ in range(2):
        ledger = Ledger(cfg)
        await ledger.start()
        try:
            for i in range(5):
                ledger.record_share(share(10 * round_ + i, t=1000.0 + 10 * round_ + i))
            assert await ledger.flush()
        finally:
            await ledger.stop()
    store = open_store(ledger_url)
    await store.open()
    try:
        links = await store.query(
            "SELECT seq, prev_hash, hash, n FROM chain_links WHERE chain = ? ORDER BY seq",
            "shares:2:1")
        assert [(r[0], r[3]) for r in links] == [(1, 5), (2, 5)]
        assert bytes(links[1][1]) == bytes(links[0][2])  # the second run chained on
    finally:
        await store.close()


def test_share_encoding_from_objects_and_from_stored_rows_agree() -> None:
    shares = [share(i, account=f"a{i % 3}", difficulty=0.1 * i, t=1000.0 - i) for i in range(9)]
    rows = [(s.instance_id, s.worker, s.account, s.difficulty, s.job_id, s.height, s.time)
            for s in shares]
    assert chain.encode_shares(shares) == chain.encode_share_rows(rows)
    link = chain.share_link("c", None, shares, 0.0)
    assert (link.t_first, link.t_last) == (992.0, 1000.0)  # out of order times still bounded


class CommitsThenFails:
    """A store whose next share commit lands but reports a failure (a connection lost after
    COMMIT): the ledger must not store that batch twice."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.fail_next = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def insert_shares(self, shares: Any, *a: Any) -> bool:
        stored: bool = await self.inner.insert_shares(shares, *a)
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("test: connection lost after COMMIT")
        return stored


async def test_a_batch_reported_failed_after_it_committed_is_not_stored_twice(
        ledger_url: str, tmp_path: Path) -> None:
    store = CommitsThenFails(open_store(ledger_url))
    ledger = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path)), store=store)
    await ledger.start()
    try:
        for i in range(4):
            ledger.record_share(share(i, t=1000.0 + i))
        store.fail_next = True
        assert not await ledger.flush()  # reported failed: kept for the next flush
        ledger.record_share(share(4, t=1004.0))
        assert await ledger.flush()
        assert await store.share_count() == 5
        assert ledger.committed_shares == 5
        head = await store.chain_head(ledger.chain)
        assert head is not None and (head.seq, head.n) == (2, 1)
        # What a coinbase built outside the split planner appends to commit the same head.
        assert ledger.chain_commitment() == (chain.commitment_script(head.hash), 0)
    finally:
        await ledger.stop()
