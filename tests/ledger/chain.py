"""Real blocks for audit tests: built with poold's primitives, ground to the regtest target."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from poold.bitcoin.block import assemble_block
from poold.bitcoin.byteorder import hash_from_hex
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import merkle_root
from poold.bitcoin.target import bits_to_target
from poold.bitcoin.tx import TxOut
from poold.ledger.records import FoundBlock

REGTEST_BITS = 0x207FFFFF


@dataclass(frozen=True, slots=True)
class Mined:
    raw: bytes
    found: FoundBlock


def mine(height: int, prevhash_hex: str, outputs: list[tuple[bytes, int]], *,
         ntime: int | None = None, bits: int = REGTEST_BITS, tag: bytes = b"/ledger-test/",
         worker: str = "acct.rig", account: str = "acct", fees: int = 0,
         instance_id: int = 1) -> Mined:
    """A coinbase-only block (no witness commitment needed) on `prevhash_hex`."""
    parts = build_coinbase(height, [TxOut(v, s) for s, v in outputs], tag=tag,
                           witness_commitment_script=None)
    coinbase = parts.assemble(b"\x00\x00\x00\x01", height.to_bytes(8, "little"))
    header = BlockHeader(version=0x20000000, prevhash=hash_from_hex(prevhash_hex),
                         merkle_root=merkle_root([coinbase.txid]),
                         ntime=ntime if ntime is not None else int(time.time()), bits=bits,
                         nonce=0)
    target = bits_to_target(bits)
    prefix = header.serialize()[:76]
    for nonce in range(1 << 32):
        digest = hashlib.sha256(hashlib.sha256(prefix + nonce.to_bytes(4, "little")).digest())
        if int.from_bytes(digest.digest(), "little") <= target:
            break
    header = BlockHeader(header.version, header.prevhash, header.merkle_root, header.ntime,
                         header.bits, nonce)
    raw = assemble_block(header.serialize(), coinbase, [])
    found = FoundBlock(
        height=height, hash_hex=header.hash_hex, prevhash_hex=prevhash_hex, worker=worker,
        account=account, coinbase_txid_hex=coinbase.txid_hex,
        coinbase_outputs=tuple((o.script_pubkey, o.value) for o in coinbase.outputs),
        reward=sum(v for _, v in outputs), fees=fees, block_hex=raw.hex(), time=time.time(),
        instance_id=instance_id)
    return Mined(raw, found)
