"""Block templates and the devnet's own miner.

One responsibility: shape `getblocktemplate` answers the way Bitcoin Core v31 does on regtest
(BIP22/BIP23 fields, BIP9 rules, BIP141 `default_witness_commitment`, BIP145 `weight`/`sigops`),
and build + grind a block from such a template for `generatetoaddress`. Pure: no I/O.

Field semantics (src/rpc/mining.cpp, src/node/miner.cpp): `mintime` = median time past + 1,
`curtime` = max(now, mintime), `longpollid` = tip hash hex + the mempool update counter,
`sigops` are sigop *costs* (the client announced segwit), `depends` are 1-based indexes into
`transactions`, and the witness commitment is present whenever segwit is active (always on
regtest), even for an empty template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from poold.bitcoin.block import assemble_block
from poold.bitcoin.byteorder import hash_to_hex
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import merkle_root, witness_commitment
from poold.bitcoin.script import witness_commitment_script
from poold.bitcoin.target import bits_to_target
from poold.bitcoin.tx import Tx, TxOut
from poold.devnet.chainstate import ChainView, block_subsidy
from poold.devnet.mempool import MAX_BLOCK_SIGOPS_COST, MAX_BLOCK_WEIGHT, MempoolEntry

BLOCK_VERSION = 0x20000000  # BIP9 top bits, no deployment signalling on regtest
REGTEST_BITS = 0x207FFFFF
MAX_BLOCK_SERIALIZED_SIZE = 4_000_000
DEVNET_COINBASE_TAG = b"/poold-devnet/"


@dataclass(frozen=True, slots=True)
class BlockCandidate:
    """Everything needed to build a block on the current tip."""

    height: int
    prevhash: bytes
    version: int
    bits: int
    mintime: int
    curtime: int
    coinbase_value: int
    entries: tuple[MempoolEntry, ...]

    @property
    def commitment_script(self) -> bytes:
        return witness_commitment_script(witness_commitment([e.wtxid for e in self.entries]))


def candidate(chain: ChainView, entries: Sequence[MempoolEntry], now: int) -> BlockCandidate:
    mintime = chain.median_time_past() + 1
    height = chain.height + 1
    return BlockCandidate(
        height=height,
        prevhash=chain.tip_hash,
        version=BLOCK_VERSION,
        bits=chain.tip_header.bits,  # regtest: fPowNoRetargeting, the bits never change
        mintime=mintime,
        curtime=max(now, mintime),
        coinbase_value=block_subsidy(height) + sum(e.fee for e in entries),
        entries=tuple(entries),
    )


def template_json(c: BlockCandidate, longpollid: str) -> dict[str, Any]:
    """The `getblocktemplate` result, keys in Bitcoin Core's order."""
    index = {e.txid: i + 1 for i, e in enumerate(c.entries)}
    txs = [
        {
            "data": e.raw.hex(),
            "txid": hash_to_hex(e.txid),
            "hash": hash_to_hex(e.wtxid),
            "depends": sorted(index[p] for p in e.parents),
            "fee": e.fee,
            "sigops": e.sigop_cost,
            "weight": e.weight,
        }
        for e in c.entries
    ]
    return {
        "version": c.version,
        "rules": ["csv", "!segwit", "taproot"],
        "vbavailable": {},
        "vbrequired": 0,
        "previousblockhash": hash_to_hex(c.prevhash),
        "transactions": txs,
        "coinbaseaux": {},
        "coinbasevalue": c.coinbase_value,
        "longpollid": longpollid,
        "target": f"{bits_to_target(c.bits):064x}",
        "mintime": c.mintime,
        "mutable": ["time", "transactions", "prevblock"],
        "noncerange": "00000000ffffffff",
        "sigoplimit": MAX_BLOCK_SIGOPS_COST,
        "sizelimit": MAX_BLOCK_SERIALIZED_SIZE,
        "weightlimit": MAX_BLOCK_WEIGHT,
        "curtime": c.curtime,
        "bits": f"{c.bits:08x}",
        "height": c.height,
        "default_witness_commitment": c.commitment_script.hex(),
    }


def build_block(c: BlockCandidate, payout_script: bytes, extranonce: int) -> BlockHeader:
    """Header (nonce 0) of the block paying `payout_script`; see `assemble` for the bytes."""
    coinbase = _coinbase(c, payout_script, extranonce)
    root = merkle_root([coinbase.txid, *(e.txid for e in c.entries)])
    return BlockHeader(c.version, c.prevhash, root, c.curtime, c.bits, 0)


def assemble(
    c: BlockCandidate, header: BlockHeader, payout_script: bytes, extranonce: int
) -> bytes:
    coinbase = _coinbase(c, payout_script, extranonce)
    return assemble_block(header.serialize(), coinbase, [e.raw for e in c.entries])


def _coinbase(c: BlockCandidate, payout_script: bytes, extranonce: int) -> Tx:
    parts = build_coinbase(
        c.height,
        [TxOut(c.coinbase_value, payout_script)],
        tag=DEVNET_COINBASE_TAG,
        witness_commitment_script=c.commitment_script,
        extranonce1_size=0,
        extranonce2_size=8,
        max_size=10_000,
    )
    return parts.assemble(b"", extranonce.to_bytes(8, "little"))


def grind(header: BlockHeader, max_tries: int) -> BlockHeader | None:
    """The first nonce (from 0) whose header hash meets the target, or None after max_tries."""
    target = bits_to_target(header.bits)
    prefix = header.serialize()[:76]
    for nonce in range(min(max_tries, 1 << 32)):
        raw = prefix + nonce.to_bytes(4, "little")
        digest = hashlib.sha256(hashlib.sha256(raw).digest()).digest()
        if int.from_bytes(digest, "little") <= target:
            return BlockHeader(
                header.version, header.prevhash, header.merkle_root, header.ntime, header.bits,
                nonce,
            )
    return None
