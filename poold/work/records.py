"""What the share path hands to its sinks: accepted shares and found blocks.

Pure data, no I/O. The ledger stores them (poold.ledger), the fleet's pool-coupling estimator
counts the shares; they live here so that work/ imports neither of its consumers. Amounts are
integer satoshis; times are Unix seconds (float); hashes and txids are display hex (`_hex`, as
in RPC), scripts are raw bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class AcceptedShare:
    """One share that met its job's target, credited at the difficulty of that job."""

    worker: str
    account: str
    difficulty: float
    job_id: str
    height: int
    time: float
    instance_id: int


@dataclass(frozen=True, slots=True)
class FoundBlock:
    """A share that met the network target: the full block, recorded before anything else."""

    height: int
    hash_hex: str
    prevhash_hex: str
    worker: str
    account: str
    coinbase_txid_hex: str
    coinbase_outputs: tuple[tuple[bytes, int], ...]  # (script_pubkey, value in satoshis)
    reward: int  # coinbase value = subsidy + fees, satoshis
    fees: int
    block_hex: str = field(repr=False)
    time: float
    instance_id: int
