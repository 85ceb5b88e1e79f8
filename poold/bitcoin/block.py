"""Full block serialization for `submitblock`, and parsing for tests and audits.

A block is: 80-byte header || CompactSize(tx count) || coinbase (witness form, carrying the
BIP141 reserved value when the block commits to witnesses) || the template's transactions exactly
as GBT's `data` gives them (already in witness form where they have witnesses).
"""

from __future__ import annotations

from collections.abc import Sequence

from poold.bitcoin.encoding import ByteReader, DecodeError, compact_size
from poold.bitcoin.header import HEADER_SIZE, BlockHeader
from poold.bitcoin.script import is_witness_commitment_script
from poold.bitcoin.tx import Tx


def assemble_block(header: bytes, coinbase: Tx, transactions: Sequence[bytes]) -> bytes:
    """Serialize a block from an 80-byte header, the coinbase Tx and raw template txs."""
    if len(header) != HEADER_SIZE:
        raise ValueError(f"block header must be {HEADER_SIZE} bytes, got {len(header)}")
    if not coinbase.is_coinbase:
        raise ValueError("first transaction of a block must be a coinbase (null prevout)")
    return b"".join(
        (header, compact_size(1 + len(transactions)), coinbase.serialize(), *transactions)
    )


def parse_block(data: bytes) -> tuple[BlockHeader, list[Tx]]:
    """Parse a serialized block; trailing bytes or an empty tx list are DecodeErrors."""
    r = ByteReader(data)
    header = BlockHeader.parse(r.read(HEADER_SIZE))
    n = r.compact_size()
    if n == 0:
        raise DecodeError("block has no transactions")
    txs = [Tx.read(r) for _ in range(n)]
    r.expect_done("block")
    return header, txs


def find_witness_commitment(coinbase: Tx) -> bytes | None:
    """The 32-byte witness commitment of a coinbase, or None. BIP141: if several outputs match,
    the one with the highest index counts."""
    for out in reversed(coinbase.outputs):
        if is_witness_commitment_script(out.script_pubkey):
            return out.script_pubkey[6:38]
    return None
