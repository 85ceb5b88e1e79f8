"""Builders of shares and blocks for the ledger tests: blocks are real serializations (header,
coinbase built by poold's coinbase code), so nBits and the coinbase parse like the pool's."""

from __future__ import annotations

from poold.bitcoin.block import assemble_block
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import merkle_root
from poold.bitcoin.tx import TxOut
from poold.ledger.records import AcceptedShare, FoundBlock

REGTEST_BITS = 0x207FFFFF
WITNESS_COMMITMENT = bytes.fromhex("6a24aa21a9ed") + bytes(32)


def share(i: int, *, account: str = "acct", worker: str | None = None, difficulty: float = 1.0,
          t: float = 1_700_000_000.0, instance_id: int = 1) -> AcceptedShare:
    return AcceptedShare(worker=worker or f"{account}.w{i % 3}", account=account,
                         difficulty=difficulty, job_id=str(i), height=100 + i // 1000,
                         time=t, instance_id=instance_id)


def block(n: int, *, t: float = 1_700_000_000.0, bits: int = REGTEST_BITS,
          account: str = "acct", instance_id: int = 1,
          outputs: tuple[tuple[bytes, int], ...] | None = None) -> FoundBlock:
    """Block number n (distinct hash per n; the nonce is not ground: ledger tests only).
    `outputs` are the paying outputs; the witness commitment is added as the pool does."""
    pays = outputs if outputs is not None else (
        (bytes.fromhex("0014") + bytes([n % 256]) * 20, 312_500_000),)
    pays = tuple(o for o in pays if o[1] > 0)  # a caller may pass the commitment along
    height = 200 + n
    parts = build_coinbase(height, [TxOut(v, s) for s, v in pays], tag=b"/ledger-test/",
                           witness_commitment_script=WITNESS_COMMITMENT)
    coinbase = parts.assemble(b"\x00\x00\x00\x01", n.to_bytes(8, "little"))
    header = BlockHeader(0x20000000, bytes(32), merkle_root([coinbase.txid]), 1_700_000_000,
                         bits, n)
    raw = assemble_block(header.serialize(), coinbase, [])
    return FoundBlock(
        height=height, hash_hex=header.hash_hex, prevhash_hex="00" * 32,
        worker=f"{account}.rig", account=account, coinbase_txid_hex=coinbase.txid_hex,
        coinbase_outputs=tuple((o.script_pubkey, o.value) for o in coinbase.outputs),
        reward=sum(v for _, v in pays), fees=12_500_000, block_hex=raw.hex(), time=t,
        instance_id=instance_id)
