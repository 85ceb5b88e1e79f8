"""Block audit: reconciliation of recorded blocks against a node, and the audit export.

Every found block is recorded (height, hash, coinbase txid, every output's script, address and
amount, reward, fees, finder, each node's submit result). `reconcile()` then follows it on the
node through an injected `NodeClient` (bitcoind JSON-RPC `getblockheader`, `getblockhash`,
`getblock`): confirmations until it matures (COINBASE_MATURITY = 100) or leaves the best chain
(orphaned; `getblockheader` reports confirmations = -1 for a block off the main chain), reorgs
in both directions, and whether the coinbase on chain pays exactly what was recorded.
`export()`/`render()` produce the CSV or JSON that `poold audit export` and the API serve.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from poold.bitcoin.block import parse_block
from poold.ledger.records import (
    COINBASE_MATURITY,
    BlockEvent,
    BlockRecord,
    BlockStatus,
    Credit,
)
from poold.ledger.store import LedgerStore

if TYPE_CHECKING:
    from poold.ledger.config import LedgerConfig

log = logging.getLogger("poold.ledger.audit")

FORMATS = ("csv", "json")


class NodeClient(Protocol):
    """The three read calls of bitcoind that reconciliation needs."""

    async def getblockhash(self, height: int) -> str: ...


    async def getblockheader(self, hash_hex: str) -> dict[str, Any] | None:
        """The verbose header, or None if the node does not know the block."""
        ...

    async def getblock(self, hash_hex: str, verbosity: int) -> Any:
        """Verbosity 0 (the serialized block as hex) is what reconciliation asks for."""
        ...


# The production NodeClient is poold.node.reader.NodeReader (the first node that answers).


@dataclass(slots=True)
class ReconcileReport:
    """What one reconciliation pass found (also written as block events)."""

    checked: int = 0
    changed: dict[str, tuple[str, str]] = field(default_factory=dict)  # hash -> (old, new)
    mismatches: dict[str, str] = field(default_factory=dict)  # hash -> what differs
    unknown: list[str] = field(default_factory=list)  # blocks the node never saw

    @property
    def ok(self) -> bool:
        """Every block is on the best chain or marked orphaned, and coinbases match."""
        return not self.mismatches


def coinbase_mismatch(record: BlockRecord, raw_block_hex: str) -> str | None:
    """Compare the recorded coinbase with the one in the node's block (`getblock(hash, 0)`,
    the serialized block: works on every node); None if txid and all outputs are equal."""
    try:
        _header, txs = parse_block(bytes.fromhex(raw_block_hex))
    except ValueError as exc:
        return f"the node's block does not parse: {exc}"
    cb = txs[0]
    if cb.txid_hex != record.coinbase_txid_hex:
        return f"coinbase txid {cb.txid_hex} != recorded {record.coinbase_txid_hex}"
    on_chain = [(o.script_pubkey.hex(), o.value) for o in cb.outputs]
    recorded = [(o.script_hex, o.value) for o in record.outputs]
    if on_chain != recorded:
        return f"coinbase outputs on chain {on_chain} != recorded {recorded}"
    return None


CreditFn = Callable[[BlockRecord], Awaitable[Sequence[Credit]]]

# Event marking a block off the best chain for good (no longer polled).
SETTLED = "settled"
_OFF_CHAIN = frozenset({BlockStatus.ORPHANED, BlockStatus.REJECTED, BlockStatus.RECORDED})


async def _buried(node: NodeClient, height: int) -> bool:
    """Whether the node's best chain reaches COINBASE_MATURITY blocks past `height`."""
    try:
        await node.getblockhash(height + COINBASE_MATURITY)
    except Exception as exc:  # "height out of range" comes in each client's own error type
        log.debug("height %d not buried yet: %s", height, exc)
        return False
    return True


async def reconcile(store: LedgerStore, node: NodeClient, *, now: float,
                    credit_on_maturity: CreditFn | None = None) -> ReconcileReport:
    """One pass over the blocks that are not yet matured: follow them on `node`.

    Status moves: submitted/recorded/rejected -> confirmed (on the best chain) -> matured (at
    100 confirmations; `credit_on_maturity` gives the PPLNS credits written in the same
    transaction) or -> orphaned (off the best chain: a reorg, logged as an event); orphaned ->
    confirmed if a later reorg brings it back. A block the node does not know stays as it is
    (recorded or rejected) and is listed in `report.unknown`. A block off the best chain is
    settled (event "settled", no longer polled) once the best chain is 100 blocks past it.
    """
    rep = ReconcileReport()
    for rec in await store.blocks(0.0):
        if rec.status == BlockStatus.MATURED or any(e.event == SETTLED for e in rec.events):
            continue
        if rec.status in _OFF_CHAIN and await _buried(node, rec.height):
            # 100 blocks past it on the best chain: it can no longer come back; stop polling.
            await store.add_events([BlockEvent(rec.hash_hex, now, SETTLED,
                                               f"{rec.status.value} for good: the best chain is "
                                               f"{COINBASE_MATURITY} blocks past it")])
            continue
        rep.checked += 1
        header = await node.getblockheader(rec.hash_hex)
        events: list[BlockEvent] = []
        credits: Sequence[Credit] = ()
        if header is None:
            rep.unknown.append(rec.hash_hex)
            if rec.status in (BlockStatus.SUBMITTED, BlockStatus.CONFIRMED):
                new, conf = BlockStatus.ORPHANED, -1
                events.append(BlockEvent(rec.hash_hex, now, "orphaned",
                                         "the node does not know this block"))
            else:
                continue
        else:
            conf = int(header.get("confirmations", -1))
            if conf < 0:
                new = BlockStatus.ORPHANED
                if rec.status != BlockStatus.ORPHANED:
                    best = await node.getblockhash(rec.height) if rec.height >= 0 else "?"
                    events.append(BlockEvent(
                        rec.hash_hex, now, "orphaned",
                        f"reorg: height {rec.height} is now {best} on the node's best chain"))
            else:
                new = BlockStatus.MATURED if conf >= COINBASE_MATURITY else BlockStatus.CONFIRMED
                if rec.status == BlockStatus.ORPHANED:
                    events.append(BlockEvent(rec.hash_hex, now, "reorg",
                                             "back on the best chain"))
                if rec.status != BlockStatus.CONFIRMED or new == BlockStatus.MATURED:
                    raw = await node.getblock(rec.hash_hex, 0)
                    mismatch = coinbase_mismatch(rec, str(raw))
                    if mismatch is not None:
                        rep.mismatches[rec.hash_hex] = mismatch
                        events.append(BlockEvent(rec.hash_hex, now, "coinbase_mismatch",
                                                 mismatch))
                        log.error("block %s: %s", rec.hash_hex, mismatch)
                if new == BlockStatus.MATURED:
                    events.append(BlockEvent(rec.hash_hex, now, "matured",
                                             f"{conf} confirmations"))
                    if credit_on_maturity is not None:
                        credits = await credit_on_maturity(rec)
                elif rec.status not in (BlockStatus.CONFIRMED, BlockStatus.ORPHANED):
                    events.append(BlockEvent(rec.hash_hex, now, "confirmed",
                                             f"{conf} confirmations"))
        if new != rec.status:
            rep.changed[rec.hash_hex] = (rec.status.value, new.value)
            if new == BlockStatus.ORPHANED:
                log.warning("block %s at height %d orphaned", rec.hash_hex, rec.height)
        await store.update_block(rec.hash_hex, new, conf, now, events, credits)
    await _follow_matured(store, node)
    return rep


async def _follow_matured(store: LedgerStore, node: NodeClient) -> None:
    """Matured blocks are not polled one by one: their confirmations follow the tip, read from
    the newest matured block's header (height + confirmations - 1), so exports show live
    counts. (A matured block leaving the best chain would take a reorg of 100 blocks.)"""
    matured = [b for b in await store.blocks(0.0) if b.status == BlockStatus.MATURED]
    if not matured:
        return
    newest = max(matured, key=lambda b: b.height)
    header = await node.getblockheader(newest.hash_hex)
    conf = -1 if header is None else int(header.get("confirmations", -1))
    if conf > 0:
        await store.refresh_confirmations(newest.height + conf - 1)


# -- export


def parse_since(text: str | None) -> float:
    """`--since`: Unix seconds, or an ISO 8601 date/time (UTC if no zone). None/'' = all."""
    if not text:
        return 0.0
    try:
        return float(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"--since: expected Unix seconds or ISO 8601, got {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso(t: float | None) -> str:
    """A time as ISO 8601 UTC ('' for None), as the export writes it."""
    return "" if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def block_to_dict(b: BlockRecord) -> dict[str, Any]:
    """The audit record of one block (poold.ledger.export adds the v5 fields)."""
    from poold.ledger.export import block_to_dict as to_dict

    return to_dict(b)


async def export_async(store: LedgerStore, fmt: str, since: float = 0.0, *,
                       config: LedgerConfig | None = None, with_shares: bool = False) -> str:
    """The audit export of an open store (poold.ledger.export, docs/AUDIT.md)."""
    from poold.ledger.export import export_blocks, render

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return render(await export_blocks(store, since, config=config, with_shares=with_shares),
                  fmt)


def export(url: str, *, fmt: str = "csv", since: str | float | None = None,
           config: LedgerConfig | None = None, with_shares: bool = False) -> str:
    """Synchronous export for the CLI (`poold audit export`, `poold ledger export`): open the
    ledger at `url`, render. Run from the CLI only (it runs its own event loop)."""
    import asyncio

    from poold.ledger.store import open_store

    t = since if isinstance(since, float) else parse_since(since)

    async def run() -> str:
        store = open_store(url)
        await store.open()
        try:
            return await export_async(store, fmt, t, config=config, with_shares=with_shares)
        finally:
            await store.close()

    return asyncio.run(run())
