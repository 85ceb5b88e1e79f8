"""Value objects of the share ledger: submit results, block and audit rows (and the accepted
shares and found blocks of poold.work.records it stores).

Pure data, no I/O: these are what the Stratum side hands to `poold.ledger.Ledger` and what the
stores return. Amounts are integer satoshis; times are Unix seconds (float); hashes and txids are
display hex (`_hex`, as in RPC), scripts are raw bytes (or `script_hex` where stored as text).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# What the share path produces and the ledger stores; defined in work/ so that work/ needs no
# import of the ledger (the arrows of docs/DESIGN.md's package map point one way).
from poold.work.records import AcceptedShare, FoundBlock

__all__ = [
    "COINBASE_MATURITY",
    "FINAL_STATUSES",
    "AcceptedShare",
    "BlockEvent",
    "BlockOutput",
    "BlockRecord",
    "BlockStatus",
    "Credit",
    "EnergyRow",
    "FoundBlock",
    "ShareRow",
    "SubmitResult",
]


class BlockStatus(StrEnum):
    """Life of a found block in the audit log.

    recorded -> submitted (at least one node accepted) | rejected (every node refused) ->
    confirmed (on the best chain, fewer than 100 confirmations) -> matured (100, spendable) or
    orphaned (off the best chain; may come back to confirmed on a further reorg).
    """

    RECORDED = "recorded"
    SUBMITTED = "submitted"
    REJECTED = "rejected"
    CONFIRMED = "confirmed"
    MATURED = "matured"
    ORPHANED = "orphaned"


# A coinbase output can be spent after this many confirmations (consensus COINBASE_MATURITY).
COINBASE_MATURITY = 100

# Status values after which reconciliation no longer polls the node.
FINAL_STATUSES = frozenset({BlockStatus.MATURED})


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What one node answered to `submitblock`: None = accepted, else the BIP22 reason/error."""

    block_hash_hex: str
    node: str
    result: str | None
    time: float


@dataclass(frozen=True, slots=True)
class BlockOutput:
    n: int
    script_hex: str
    address: str | None
    value: int


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """An audit event on a block (status change, reorg, coinbase mismatch), append-only."""

    block_hash_hex: str
    time: float
    event: str
    detail: str


@dataclass(frozen=True, slots=True)
class Credit:
    """A signed satoshi amount owed to (positive) or by (negative) an account because of a block.

    kind: "pplns" (balance credited at maturity), "pplns_reversal" (a matured block later
    orphaned), "split" (split-coinbase balance carried forward), "split_reversal".
    """

    block_hash_hex: str
    account: str
    amount: int
    kind: str
    time: float


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """A found block as the audit log holds it (the row plus its outputs, submits and events)."""

    height: int
    hash_hex: str
    prevhash_hex: str
    worker: str
    account: str
    coinbase_txid_hex: str
    reward: int
    fees: int
    network_difficulty: float
    time: float
    instance_id: int
    status: BlockStatus
    confirmations: int
    checked_at: float | None
    outputs: tuple[BlockOutput, ...] = ()
    submits: tuple[SubmitResult, ...] = ()
    events: tuple[BlockEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class ShareRow:
    """A stored share as read back for PPLNS windows (newest first)."""

    id: int
    account: str
    difficulty: float
    time: float


@dataclass(frozen=True, slots=True)
class EnergyRow:
    """Energy used by one worker over [t_start, t_end), from fleet telemetry."""

    worker: str
    rack: str
    t_start: float
    t_end: float
    joules: float
