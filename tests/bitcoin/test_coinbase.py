"""coinbase.py: the coinb1/coinb2 split miners hash, BIP34, the witness commitment output, and
every size limit."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.coinbase import (
    DEFAULT_MAX_COINBASE_SIZE,
    CoinbaseError,
    CoinbaseParts,
    build_coinbase,
)
from poold.bitcoin.script import bip34_height_push, p2wpkh_script, witness_commitment_script
from poold.bitcoin.tx import Tx, TxOut

PAY = TxOut(5_000_000_000, p2wpkh_script(bytes.fromhex("d328b4b46cef262169f8d7605498ad5ac5829e55")))
COMMIT = witness_commitment_script(bytes(range(32)))


def test_public_pool_coinb1_layout() -> None:
    # docs/STRATUM.md §6 (public-pool job, ESP-Miner issue #203): height 846646, tag "Public-Pool",
    # 8 bytes of extranonce1||extranonce2 to come; coinb1 ends exactly before them.
    parts = build_coinbase(
        846646,
        [PAY],
        tag=b"Public-Pool",
        witness_commitment_script=COMMIT,
        extranonce1_size=4,
        extranonce2_size=4,
    )
    assert parts.coinb1.hex() == (
        "0200000001" + "00" * 32 + "ffffffff170336eb0c5075626c69632d506f6f6c"
    )
    # coinb2: sequence, two outputs (payout, then the zero-value commitment), locktime 0.
    assert parts.coinb2.hex().startswith("ffffffff02")
    assert parts.coinb2.hex().endswith("000000000000000026" + COMMIT.hex() + "00000000")


def test_legacy_bytes_and_assemble() -> None:
    parts = build_coinbase(200, [PAY], tag=b"/poold/", witness_commitment_script=COMMIT)
    en1, en2 = bytes.fromhex("a1b2c3d4"), bytes.fromhex("0102030405060708")
    legacy = parts.legacy_bytes(en1, en2)
    assert legacy == parts.coinb1 + en1 + en2 + parts.coinb2
    assert len(legacy) == parts.size
    tx = parts.assemble(en1, en2)
    assert tx.serialize_legacy() == legacy
    assert tx.is_coinbase
    assert tx.inputs[0].sequence == 0xFFFFFFFF and tx.locktime == 0
    assert tx.inputs[0].witness == (b"\0" * 32,)
    assert tx.inputs[0].script_sig == bip34_height_push(200) + b"/poold/" + en1 + en2
    assert [o.value for o in tx.outputs] == [PAY.value, 0]
    assert tx.outputs[-1].script_pubkey == COMMIT
    # Witness form: marker/flag after the version and the 32-byte reserved value before locktime.
    full = tx.serialize()
    assert full[4:6] == b"\x00\x01"
    assert full[-4 - 34 :] == b"\x01\x20" + b"\0" * 32 + b"\0" * 4
    # txid is over the legacy bytes, i.e. what the miner hashes from coinb1/coinb2.
    assert tx.txid == Tx.parse(legacy).txid


def test_no_commitment_no_witness() -> None:
    parts = build_coinbase(1, [PAY], tag=b"x", witness_commitment_script=None)
    assert not parts.has_witness_commitment
    tx = parts.assemble(b"\0" * 4, b"\0" * 8)
    assert not tx.has_witness
    assert tx.inputs[0].script_sig[0] == 0x51  # BIP34 height 1 = OP_1


def test_extranonce_size_checked() -> None:
    parts = build_coinbase(500, [PAY], tag=b"", witness_commitment_script=None)
    with pytest.raises(CoinbaseError, match="extranonce1 must be 4 bytes, got 3"):
        parts.assemble(b"\0" * 3, b"\0" * 8)
    with pytest.raises(CoinbaseError, match="extranonce2 must be 8 bytes, got 9"):
        parts.legacy_bytes(b"\0" * 4, b"\0" * 9)


def test_scriptsig_length_limits() -> None:
    # height 1000 -> 3-byte push (02 e803); 3 + tag + 12 extranonce bytes must be 2..100.
    ok = build_coinbase(1000, [PAY], tag=b"t" * 85, witness_commitment_script=None)
    assert ok.coinb1[41] == 100  # scriptSig length byte
    with pytest.raises(CoinbaseError, match="scriptSig would be 101 bytes"):
        build_coinbase(1000, [PAY], tag=b"t" * 86, witness_commitment_script=None)
    # Height 1..16 is one opcode: with no tag, en1=0 and en2=1 the scriptSig is exactly 2 bytes.
    two = build_coinbase(
        5, [PAY], tag=b"", witness_commitment_script=None, extranonce1_size=0, extranonce2_size=1
    )
    assert two.coinb1[41] == 2
    tx = two.assemble(b"", b"\x07")
    assert tx.inputs[0].script_sig == b"\x55\x07"


def test_total_size_limit() -> None:
    many = [PAY] * 30
    with pytest.raises(CoinbaseError, match=f"above the limit of {DEFAULT_MAX_COINBASE_SIZE}"):
        build_coinbase(800_000, many, tag=b"pool", witness_commitment_script=COMMIT)
    parts = build_coinbase(
        800_000, many, tag=b"pool", witness_commitment_script=COMMIT, max_size=2250
    )
    assert parts.size <= 2250
    assert len(parts.assemble(b"\0" * 4, b"\0" * 8).outputs) == 31


def test_value_and_output_checks() -> None:
    with pytest.raises(CoinbaseError, match="more than the coinbase value"):
        build_coinbase(
            10, [PAY, PAY], tag=b"", witness_commitment_script=None, max_value=PAY.value * 2 - 1
        )
    build_coinbase(10, [PAY, PAY], tag=b"", witness_commitment_script=None, max_value=PAY.value * 2)
    with pytest.raises(CoinbaseError, match="negative"):
        build_coinbase(10, [TxOut(-1, b"")], tag=b"", witness_commitment_script=None)
    with pytest.raises(CoinbaseError, match="at least one output"):
        build_coinbase(10, [], tag=b"", witness_commitment_script=None)
    # A commitment alone is a valid output list (the empty-template case pays nothing here).
    build_coinbase(10, [], tag=b"", witness_commitment_script=COMMIT)
    with pytest.raises(CoinbaseError, match="6a24aa21a9ed"):
        build_coinbase(10, [PAY], tag=b"", witness_commitment_script=b"\x6a\x24" + b"\0" * 36)
    with pytest.raises(CoinbaseError, match="height"):
        build_coinbase(0, [PAY], tag=b"", witness_commitment_script=None)
    with pytest.raises(CoinbaseError, match="extranonce"):
        build_coinbase(10, [PAY], tag=b"", witness_commitment_script=None, extranonce2_size=0)


@given(
    height=st.integers(min_value=1, max_value=2**31 - 1),
    tag=st.binary(max_size=40),
    en1=st.binary(min_size=0, max_size=8),
    en2=st.binary(min_size=1, max_size=16),
    values=st.lists(st.integers(min_value=0, max_value=21_000_000 * 10**8), min_size=1, max_size=5),
    commit=st.booleans(),
)
def test_split_property(
    height: int, tag: bytes, en1: bytes, en2: bytes, values: list[int], commit: bool
) -> None:
    outputs = [TxOut(v, PAY.script_pubkey) for v in values]
    try:
        parts = build_coinbase(
            height,
            outputs,
            tag=tag,
            witness_commitment_script=COMMIT if commit else None,
            extranonce1_size=len(en1),
            extranonce2_size=len(en2),
        )
    except CoinbaseError:
        push = len(bip34_height_push(height))
        assert push + len(tag) + len(en1) + len(en2) > 100
        return
    assert isinstance(parts, CoinbaseParts)
    tx = parts.assemble(en1, en2)
    script = tx.inputs[0].script_sig
    assert script.startswith(bip34_height_push(height) + tag)
    assert script.endswith(en1 + en2)
    legacy = parts.legacy_bytes(en1, en2)
    assert legacy[len(parts.coinb1) : len(parts.coinb1) + len(en1) + len(en2)] == en1 + en2
    assert Tx.parse(legacy).outputs == tx.outputs
    assert tx.has_witness == commit
