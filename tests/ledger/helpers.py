"""Builders of shares and blocks for the ledger tests (real headers so nBits parse)."""

from __future__ import annotations

import hashlib

from poold.bitcoin.target import DIFF1_TARGET, target_to_bits
from poold.ledger.records import AcceptedShare, FoundBlock

REGTEST_BITS = 0x207FFFFF


def share(i: int, *, account: str = "acct", worker: str | None = None, difficulty: float = 1.0,
          t: float = 1_700_000_000.0, instance_id: int = 1) -> AcceptedShare:
    return AcceptedShare(worker=worker or f"{account}.w{i % 3}", account=account,
                         difficulty=difficulty, job_id=str(i), height=100 + i // 1000,
                         time=t, instance_id=instance_id)


def block(n: int, *, t: float = 1_700_000_000.0, bits: int = REGTEST_BITS,
          account: str = "acct", instance_id: int = 1,
          outputs: tuple[tuple[bytes, int], ...] | None = None) -> FoundBlock:
    header = (b"\x00\x00\x00\x20" + bytes(32) + bytes(32) + (1_700_000_000).to_bytes(4, "little")
              + bits.to_bytes(4, "little") + n.to_bytes(4, "little"))
    hash_hex = hashlib.sha256(hashlib.sha256(header).digest()).digest()[::-1].hex()
    outs = outputs if outputs is not None else (
        (bytes.fromhex("0014") + bytes([n % 256]) * 20, 312_500_000),
        (bytes.fromhex("6a24aa21a9ed") + bytes(32), 0))
    return FoundBlock(
        height=200 + n, hash_hex=hash_hex, prevhash_hex="00" * 32, worker=f"{account}.rig",
        account=account, coinbase_txid_hex=f"{n:064x}", coinbase_outputs=outs,
        reward=sum(v for _, v in outs), fees=12_500_000,
        block_hex=header.hex() + "01" + "00" * 60, time=t, instance_id=instance_id)


def difficulty_of_bits(bits: int) -> float:
    from poold.bitcoin.target import bits_to_target

    return DIFF1_TARGET / bits_to_target(bits)


MAINNET_LIKE_BITS = target_to_bits(DIFF1_TARGET // 1000)  # difficulty 1000
