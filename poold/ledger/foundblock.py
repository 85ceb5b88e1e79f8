"""What a found block really carries, read from its serialization: the network difficulty of
its nBits and its coinbase (the audit records these, not what the caller said)."""

from __future__ import annotations

import dataclasses
import logging

from poold.bitcoin.encoding import ByteReader
from poold.bitcoin.target import bits_to_target, target_to_difficulty
from poold.bitcoin.tx import Tx
from poold.ledger.planner import payout_key
from poold.ledger.records import FoundBlock

log = logging.getLogger("poold.ledger")


def network_difficulty_of(block_hex: str) -> float:
    """Difficulty of the network target in a serialized block's header (nBits at bytes 72..76)."""
    header = bytes.fromhex(block_hex[:160])
    if len(header) != 80:
        raise ValueError("block_hex is shorter than a block header")
    return target_to_difficulty(bits_to_target(int.from_bytes(header[72:76], "little")))


_COINBASE_PREFIX_HEX = 2 * (80 + 9 + 100_000)  # header, tx count, a coinbase of up to 100 kB


def coinbase_of(block_hex: str) -> Tx | None:
    """The coinbase transaction of a serialized block (None if it does not parse)."""
    for text in (block_hex[:_COINBASE_PREFIX_HEX], block_hex):
        try:
            r = ByteReader(bytes.fromhex(text))
            r.read(80)
            if r.compact_size() < 1:
                return None
            return Tx.read(r)
        except ValueError:
            continue
    return None


def with_block_coinbase(block: FoundBlock) -> tuple[FoundBlock, str]:
    """The audit records the coinbase the block really carries (every output, witness
    commitment included), read from the block itself; a disagreement with what the caller
    said is kept in the record's first event."""
    cb = coinbase_of(block.block_hex)
    if cb is None:
        log.error("block %s: the coinbase in block_hex does not parse", block.hash_hex)
        return block, "; block_hex coinbase unreadable"
    actual = tuple((o.script_pubkey, o.value) for o in cb.outputs)
    notes = []
    if payout_key(actual) != payout_key(block.coinbase_outputs):
        notes.append(f"; caller's outputs {[(s.hex(), v) for s, v in block.coinbase_outputs]}"
                     " differ from the block's")
    if cb.txid_hex != block.coinbase_txid_hex:
        notes.append(f"; caller's coinbase txid {block.coinbase_txid_hex} differs")
    if notes:
        log.error("block %s: %s", block.hash_hex, "".join(notes)[2:])
    return (dataclasses.replace(block, coinbase_outputs=actual,
                                coinbase_txid_hex=cb.txid_hex), "".join(notes))
