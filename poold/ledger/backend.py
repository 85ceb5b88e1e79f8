"""What both ledger storage backends share: the store errors, share rows and their PPLNS buckets,
block records assembled from rows, and URL redaction for logs.

`poold.ledger.store` (the `LedgerStore` Protocol and `open_store`) picks a backend; the backends
(`poold.ledger.sqlite`, `poold.ledger.postgres`) import this module, not the store, so the
imports point one way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import attrgetter
from typing import Any
from urllib.parse import urlsplit

from poold.errors import PooldError
from poold.ledger import chain, schema
from poold.ledger.records import (
    AcceptedShare,
    BlockEvent,
    BlockOutput,
    BlockRecord,
    BlockStatus,
    SubmitResult,
)

# An AcceptedShare as a row of `shares` in column order (C speed: batches are large).
SHARE_ROW = attrgetter("instance_id", "worker", "account", "difficulty", "job_id", "height",
                       "time")


def bucket_of(t: float) -> float:
    """The 10 s PPLNS bucket of a share time (the same floor as schema's {bucket})."""
    return float(math.floor(t / schema.BUCKET_S) * int(schema.BUCKET_S))


def bucket_rows(shares: Sequence[AcceptedShare]) -> list[tuple[str, float, float, int]]:
    """A batch of shares summed per (account, bucket), sorted (a fixed lock order for upserts
    from concurrent instances)."""
    # bucket_of inlined (with the same float arithmetic): this runs per share on the loop.
    floor, width = math.floor, schema.BUCKET_S
    acc: dict[tuple[str, int], list[float]] = {}
    for s in shares:
        key = (s.account, floor(s.time / width))
        cell = acc.get(key)
        if cell is None:
            acc[key] = [s.difficulty, 1.0]
        else:
            cell[0] += s.difficulty
            cell[1] += 1.0
    step = int(width)
    return [(a, float(b * step), d, int(n)) for (a, b), (d, n) in sorted(acc.items())]


class StoreUnavailable(PooldError):
    """The store could not be reached or refused a write (the caller buffers or journals)."""


class ChainConflict(StoreUnavailable):
    """A share link's (chain, seq) is taken by a different link: another writer shares this
    chain name, or the head the caller hashed from is stale. The caller re-reads the head
    (`chain_head`) and hashes the batch again."""


class BatchStored(PooldError):
    """A share batch's id is stored already with another chain link: an earlier attempt of
    this very batch committed (an answer lost to a timeout, a crash before the spill's `done`
    line). Raised inside the store's transaction, which then writes nothing."""


def settle_link(link: chain.Link, batch_row: Sequence[Any] | None,
                stored_hash: bytes | None) -> None:
    """Why `link` was not inserted (schema.INSERT_LINK), from the link row holding its batch
    id (schema.BATCH_LINK: chain, seq, hash) and the hash stored at its (chain, seq): returns
    if this very link is stored (a retry); BatchStored if its batch id is stored with another
    link (an earlier attempt of the batch committed); ChainConflict if (chain, seq) holds
    another hash."""
    if batch_row is not None:
        if (batch_row[0], int(batch_row[1]), bytes(batch_row[2])) == (
                link.chain, link.seq, link.hash):
            return
        raise BatchStored(f"this batch is stored already as link {batch_row[1]} of {batch_row[0]}")
    if stored_hash is not None and bytes(stored_hash) == link.hash:
        return
    raise ChainConflict(f"chain {link.chain} link {link.seq} is taken by another writer")


# What a found block commits to (schema v5): chain head, settings JSON, payout window JSON.
Commitment = tuple[str | None, str | None, str | None]


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def assemble_blocks(heads: Sequence[Sequence[Any]], outs: Sequence[Sequence[Any]],
                    subs: Sequence[Sequence[Any]],
                    evs: Sequence[Sequence[Any]]) -> list[BlockRecord]:
    """Join the rows of the four audit tables into BlockRecords (used by both stores)."""
    outputs: dict[str, list[BlockOutput]] = {}
    for h, n, script_hex, address, value in outs:
        outputs.setdefault(h, []).append(BlockOutput(
            n=int(n), script_hex=str(script_hex), address=address, value=int(value)))
    submits: dict[str, list[SubmitResult]] = {}
    for h, node, result, t in subs:
        submits.setdefault(h, []).append(SubmitResult(
            block_hash_hex=h, node=node, result=result, time=float(t)))
    events: dict[str, list[BlockEvent]] = {}
    for h, t, event, detail in evs:
        events.setdefault(h, []).append(BlockEvent(
            block_hash_hex=h, time=float(t), event=event, detail=detail))
    records = []
    for (height, h, prevhash_hex, worker, account, cb_txid, reward, fees, netdiff, t,
         instance_id, status, confirmations, checked_at) in heads:
        records.append(BlockRecord(
            height=int(height), hash_hex=h, prevhash_hex=prevhash_hex, worker=worker,
            account=account, coinbase_txid_hex=cb_txid, reward=int(reward), fees=int(fees),
            network_difficulty=float(netdiff), time=float(t), instance_id=int(instance_id),
            status=BlockStatus(status), confirmations=int(confirmations),
            checked_at=None if checked_at is None else float(checked_at),
            outputs=tuple(outputs.get(h, ())), submits=tuple(submits.get(h, ())),
            events=tuple(events.get(h, ()))))
    return records
