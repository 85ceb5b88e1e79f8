"""target.py: nBits per Core's arith_uint256 vectors, pool difficulty per docs/STRATUM.md §5, exact
fractional difficulty targets, and Hypothesis round trips."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from poold.bitcoin.block import parse_block
from poold.bitcoin.target import (
    DIFF1_TARGET,
    MAX_TARGET,
    TargetError,
    bits_to_target,
    difficulty_to_target,
    hash_difficulty,
    meets_target,
    target_to_bits,
    target_to_difficulty,
    target_to_le32,
)

from ._vectors import load_hex, load_json

# Bitcoin Core src/test/arith_uint256_tests.cpp (bignum_SetCompact): nBits -> (value, GetCompact).
CORE_COMPACT = [
    (0x00000000, 0, 0x00000000),
    (0x00123456, 0, 0x00000000),
    (0x01003456, 0, 0x00000000),
    (0x02000056, 0, 0x00000000),
    (0x03000000, 0, 0x00000000),
    (0x04000000, 0, 0x00000000),
    (0x00923456, 0, 0x00000000),
    (0x01803456, 0, 0x00000000),
    (0x02800056, 0, 0x00000000),
    (0x03800000, 0, 0x00000000),
    (0x04800000, 0, 0x00000000),
    (0x01123456, 0x12, 0x01120000),
    (0x02123456, 0x1234, 0x02123400),
    (0x03123456, 0x123456, 0x03123456),
    (0x04123456, 0x12345600, 0x04123456),
    (0x05009234, 0x92340000, 0x05009234),
    (0x20123456, 0x12345600 << 224, 0x20123456),
]


@pytest.mark.parametrize(("bits", "value", "compact"), CORE_COMPACT)
def test_core_set_get_compact(bits: int, value: int, compact: int) -> None:
    assert bits_to_target(bits) == value
    assert target_to_bits(value) == compact


def test_core_compact_sign_bit_avoided() -> None:
    # Core: "Make sure that we don't generate compacts with the 0x00800000 bit set".
    assert target_to_bits(0x80) == 0x02008000


@pytest.mark.parametrize("bits", [0x01FEDCBA, 0x04923456])
def test_negative_compact_rejected(bits: int) -> None:
    with pytest.raises(TargetError, match="negative"):
        bits_to_target(bits)


@pytest.mark.parametrize("bits", [0xFF123456, 0x23000100, 0x22010000, 0x217FFFFF])
def test_overflow_compact_rejected(bits: int) -> None:
    with pytest.raises(TargetError, match="overflow"):
        bits_to_target(bits)


def test_real_targets() -> None:
    # Mainnet genesis nBits = difficulty 1 (Core chainparams powLimit's compact form).
    assert bits_to_target(0x1D00FFFF) == DIFF1_TARGET
    assert DIFF1_TARGET == 0x00000000FFFF0000000000000000000000000000000000000000000000000000
    assert DIFF1_TARGET == 26959535291011309493156476344723991336010898738574164086137773096960
    # bitcoinjs-lib test/fixtures/block.json "targets" (entries without the sign bit set).
    assert f"{bits_to_target(0x1B0404CB):064x}" == (
        "00000000000404cb000000000000000000000000000000000000000000000000"
    )
    assert f"{bits_to_target(0x1814DD04):064x}" == (
        "000000000000000014dd04000000000000000000000000000000000000000000"
    )
    # The recorded Bitcoin Core v31 regtest getblocktemplate: "bits" and "target" fields.
    gbt = load_json("gbt-regtest-bitcoind-v31.json")
    assert bits_to_target(int(gbt["bits"], 16)) == int(gbt["target"], 16)
    assert target_to_bits(int(gbt["target"], 16)) == int(gbt["bits"], 16)


def test_real_difficulty() -> None:
    # getblock 000000000003ba27...e506 (mainnet 100000) reports bits 1b04864c and
    # difficulty 14484.1623612254 (e.g. coinbase/rosetta-bitcoin test fixtures).
    assert target_to_difficulty(bits_to_target(0x1B04864C)) == pytest.approx(
        14484.1623612254, rel=1e-13
    )
    assert target_to_difficulty(DIFF1_TARGET) == 1.0


@pytest.mark.parametrize("name", ["mainnet-block-100000.hex", "mainnet-block-542213.hex"])
def test_real_blocks_meet_their_target(name: str) -> None:
    header, _ = parse_block(load_hex(name))
    target = bits_to_target(header.bits)
    assert meets_target(header.hash, target)
    assert hash_difficulty(header.hash) >= target_to_difficulty(target)
    # One below the hash value must fail: the comparison is exactly "hash <= target".
    h_int = int.from_bytes(header.hash, "little")
    assert not meets_target(header.hash, h_int - 1)
    assert meets_target(header.hash, h_int)


def test_pool_difficulty_targets() -> None:
    assert difficulty_to_target(1) == DIFF1_TARGET
    assert difficulty_to_target(65536) == DIFF1_TARGET // 65536
    assert difficulty_to_target(0.5) == DIFF1_TARGET * 2
    assert difficulty_to_target(3) == DIFF1_TARGET // 3


@pytest.mark.parametrize("d", [1e-8, 0.001, 0.1, 1 / 3, 2.5, 1234.5678, 1e12, 1e-9])
def test_fractional_difficulty_is_exact_floor(d: float) -> None:
    t = difficulty_to_target(d)
    exact = Fraction(d)
    # floor(diff1 / d): t * d <= diff1 < (t + 1) * d, in exact rationals.
    assert t * exact <= DIFF1_TARGET < (t + 1) * exact
    assert target_to_difficulty(t) == pytest.approx(d, rel=1e-12)


def test_difficulty_clamps_to_max_target() -> None:
    # diff1 * 2**32 = 0xffff << 240 still fits in 256 bits; diff1 * 2**33 does not.
    assert difficulty_to_target(2.0**-32) == DIFF1_TARGET << 32
    assert difficulty_to_target(2.0**-33) == MAX_TARGET
    assert difficulty_to_target(1e-30) == MAX_TARGET


@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.5, math.inf, math.nan])
def test_difficulty_must_be_positive_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        difficulty_to_target(bad)


def test_target_to_le32() -> None:
    le = target_to_le32(DIFF1_TARGET)
    assert le == bytes.fromhex("00000000ffff" + "00" * 26)[::-1]
    with pytest.raises(ValueError):
        target_to_le32(2**256)


def test_hash_difficulty_of_zero_and_max() -> None:
    assert hash_difficulty(b"\0" * 32) == math.inf
    assert hash_difficulty(b"\xff" * 32) == pytest.approx(DIFF1_TARGET / MAX_TARGET)


# -- Hypothesis ---------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=MAX_TARGET))
def test_target_bits_roundtrip(t: int) -> None:
    bits = target_to_bits(t)
    back = bits_to_target(bits)
    # GetCompact keeps the top 23 bits of mantissa: never rounds up, loses < 1 part in 2**15.
    assert back <= t
    assert (t - back) * 2**15 < t
    assert target_to_bits(back) == bits


@given(
    st.integers(min_value=3, max_value=32),
    st.integers(min_value=0x008000, max_value=0x7FFFFF),
)
def test_canonical_bits_roundtrip(size: int, mantissa: int) -> None:
    bits = (size << 24) | mantissa
    assert target_to_bits(bits_to_target(bits)) == bits


@given(st.floats(min_value=1e-8, max_value=1e15, allow_nan=False, allow_infinity=False))
def test_difficulty_roundtrip(d: float) -> None:
    t = difficulty_to_target(d)
    assert target_to_difficulty(t) == pytest.approx(d, rel=1e-9)


@given(
    st.floats(min_value=1e-8, max_value=1e15, allow_nan=False),
    st.floats(min_value=1e-8, max_value=1e15, allow_nan=False),
)
def test_difficulty_monotonic(a: float, b: float) -> None:
    assume(a != b)
    lo, hi = sorted((a, b))
    assert difficulty_to_target(lo) >= difficulty_to_target(hi)
