"""Found blocks: assembly from a winning share, submission to every node, record and check.

Assembly (docs/STRATUM.md §7-§8): coinbase = coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2
with the BIP141 witness reserved value as its witness; merkle root from the coinbase txid and the
job's branch; header with the rolled version (BIP310); then the template transactions unchanged
(so GBT's `default_witness_commitment` stays valid). The assembled header must hash to what the
share core saw; a mismatch is a bug and is logged loudly, but the block is still submitted.

Submission order (DESIGN.md "Blocks are never lost"): the block is appended and fsynced to the
ledger's local journal first (well under a millisecond of disk; a block a node accepted is then
on disk here whatever happens to this process next), then every node at once (the block's value
decays by the second), while the ledger write runs alongside; then the per-node outcome, then
`getblockheader` as the proof the node kept it. A journal that cannot be written does not hold
the block back: it is submitted anyway, and the failure logged as critical. No asyncio here: the
caller runs `BlockSubmitter.submit` as a task.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from poold.bitcoin.block import assemble_block
from poold.bitcoin.byteorder import hash_to_hex
from poold.bitcoin.header import BlockHeader, rolled_version
from poold.bitcoin.merkle import root_from_branch
from poold.errors import PooldError
from poold.work.records import FoundBlock

if TYPE_CHECKING:
    from poold.metrics import Metrics
    from poold.work.jobs import JobWork

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, eq=False)
class BlockCandidate:
    """A share whose header hash met the network target, with everything needed to rebuild it."""

    work: JobWork
    job_id: str
    extranonce1: bytes
    extranonce2_hex: str
    ntime: int
    nonce_hex: str
    version_bits_hex: str | None
    version_mask: int
    header_hash: bytes
    worker: str
    account: str
    time: float
    instance_id: int

    @property
    def hash_hex(self) -> str:
        return hash_to_hex(self.header_hash)


class BlockAssemblyError(PooldError, ValueError):
    """The rebuilt header does not hash to the share's hash."""


def assemble(candidate: BlockCandidate) -> tuple[bytes, FoundBlock]:
    """The serialized block and its ledger record."""
    work = candidate.work
    template = work.template
    en2 = bytes.fromhex(candidate.extranonce2_hex)
    coinbase = work.coinbase.assemble(candidate.extranonce1, en2)
    merkle_root = root_from_branch(coinbase.txid, work.branch)
    version = template.version
    if candidate.version_bits_hex is not None:
        version = rolled_version(
            template.version, int(candidate.version_bits_hex, 16), candidate.version_mask
        )
    header = BlockHeader(
        version, template.prevhash, merkle_root, candidate.ntime, template.bits,
        int(candidate.nonce_hex, 16),
    )
    if header.hash != candidate.header_hash:
        raise BlockAssemblyError(
            f"rebuilt header hashes to {hash_to_hex(header.hash)}, "
            f"the share core saw {candidate.hash_hex}"
        )
    block = assemble_block(header.serialize(), coinbase, [tx.data for tx in template.transactions])
    found = FoundBlock(
        height=template.height,
        hash_hex=candidate.hash_hex,
        prevhash_hex=template.prevhash_hex,
        worker=candidate.worker,
        account=candidate.account,
        coinbase_txid_hex=coinbase.txid_hex,
        coinbase_outputs=tuple((o.script_pubkey, o.value) for o in work.outputs),
        reward=template.coinbase_value,
        fees=template.fees,
        block_hex=block.hex(),
        time=candidate.time,
        instance_id=candidate.instance_id,
    )
    return block, found


class BlockNodes(Protocol):
    """The nodes a block goes to (`poold.node.NodeSet`)."""

    async def submit_block(self, block: bytes) -> dict[str, str | None]: ...


class BlockSink(Protocol):
    """Durable record of found blocks (`poold.ledger.Ledger`)."""

    async def journal_block(self, block: FoundBlock) -> None:
        """Local and durable (fsynced), once per block however often called."""
        ...

    async def record_block(self, block: FoundBlock) -> None: ...

    async def record_submit_result(
        self, block_hash_hex: str, node: str, result: str | None
    ) -> None: ...


class LogBlockSink:
    """Logs found blocks; used until a ledger is wired in (and in tests)."""

    def __init__(self) -> None:
        self.blocks: list[FoundBlock] = []
        self.results: list[tuple[str, str, str | None]] = []

    async def journal_block(self, block: FoundBlock) -> None:
        return None

    async def record_block(self, block: FoundBlock) -> None:
        self.blocks.append(block)
        log.info("block %s at height %d recorded (log only)", block.hash_hex, block.height)

    async def record_submit_result(
        self, block_hash_hex: str, node: str, result: str | None
    ) -> None:
        self.results.append((block_hash_hex, node, result))


HeaderLookup = Callable[[str], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class BlockOutcome:
    """What happened to one candidate: per-node results and whether a node kept it."""

    hash_hex: str
    height: int
    results: dict[str, str | None]
    verified: bool | None  # None: no lookup available


class BlockSubmitter:
    """Assembles, submits, records and verifies found blocks."""

    def __init__(
        self,
        nodes: BlockNodes,
        sink: BlockSink,
        *,
        header_lookup: HeaderLookup | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.nodes = nodes
        self.sink = sink
        self.header_lookup = header_lookup
        self.metrics = metrics

    def prepare(self, candidate: BlockCandidate) -> tuple[bytes, FoundBlock]:
        """Assemble (synchronous, about a millisecond) and announce a found block."""
        try:
            block, found = assemble(candidate)
        except BlockAssemblyError:
            log.exception("block candidate %s cannot be assembled", candidate.hash_hex)
            raise
        log.warning(
            "BLOCK FOUND height=%d hash=%s worker=%s job=%s",
            found.height, found.hash_hex, found.worker, candidate.job_id,
        )
        if self.metrics is not None:
            self.metrics.blocks_found.inc()
        return block, found

    async def record(self, found: FoundBlock) -> None:
        """The durable record (journal, then the ledger); the server runs it concurrently with
        `submit_prepared`."""
        await self.sink.record_block(found)

    async def submit_prepared(
        self, block: bytes, found: FoundBlock, recorded: Awaitable[None] | None = None
    ) -> BlockOutcome:
        """Journaled (fsynced) first, then every node at once; then (once `recorded` is done)
        each node's answer is recorded; then getblockheader."""
        try:
            await self.sink.journal_block(found)
        except Exception:  # a disk error must not cost the block: submit it anyway
            log.critical("block %s could not be journaled; submitting it anyway",
                         found.hash_hex, exc_info=True)
        results = await self.nodes.submit_block(block)
        for node, result in results.items():
            if result is None:
                log.warning("block %s accepted by %s", found.hash_hex, node)
            elif result == "duplicate":  # the node already had it (relayed by another node)
                log.info("block %s already known to %s", found.hash_hex, node)
            elif result == "inconclusive":  # BIP22: valid, but not on the node's best chain
                log.warning("block %s not connected by %s: a competing block won height %d "
                            "(stale)", found.hash_hex, node, found.height)
            else:
                log.error("block %s refused by %s: %s", found.hash_hex, node, result)
        if recorded is None:
            await self.record(found)
        else:
            await recorded
        for node, result in results.items():
            await self.sink.record_submit_result(found.hash_hex, node, result)
        verified = await self._verify(found.hash_hex)
        return BlockOutcome(found.hash_hex, found.height, results, verified)

    async def submit(self, candidate: BlockCandidate) -> BlockOutcome:
        """Sequential form: assemble, submit to every node, record, verify."""
        block, found = self.prepare(candidate)
        return await self.submit_prepared(block, found)

    async def _verify(self, hash_hex: str) -> bool | None:
        if self.header_lookup is None:
            return None
        header = await self.header_lookup(hash_hex)
        ok = header is not None and header.get("hash") == hash_hex
        if ok:
            log.info("block %s verified by getblockheader (confirmations %s)",
                     hash_hex, header.get("confirmations") if header else None)
        else:
            log.error("block %s not known to the node after submission", hash_hex)
        return ok
