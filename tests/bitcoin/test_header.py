"""header.py: real mainnet headers (fields -> hash) and BIP310 version rolling."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.byteorder import hash_from_hex, hash_to_hex
from poold.bitcoin.encoding import DecodeError
from poold.bitcoin.header import BlockHeader, VersionBitsError, rolled_version

# (display hash, version, prevhash, merkle root, time, bits, nonce)
REAL_HEADERS = [
    # Genesis: Core chainparams.cpp CreateGenesisBlock(1231006505, 2083236893, 0x1d00ffff, 1, ...).
    (
        "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
        1,
        "00" * 32,
        "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b",
        1231006505,
        0x1D00FFFF,
        2083236893,
    ),
    # Block 100000 (getblock fields as published, e.g. coinbase/rosetta-bitcoin fixtures).
    (
        "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506",
        1,
        "000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250",
        "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766",
        1293623863,
        0x1B04864C,
        274148111,
    ),
    # Block 542213 (bitcoinjs-lib fixture fields, merkle root restored: tests/vectors/bitcoin.md).
    (
        "000000000000000000143a2c56c0214236dadfd30df41d4a0345492ad6d861ec",
        0x20000000,
        "000000000000000000085a38ccf9c046c51b96add547c466ccba3612b1eb8089",
        "64a8b69cb7100430aec35825d54a48f4434f3db52dff8a02709aee3a659b5e13",
        1537429727,
        0x172819A1,
        31692307,
    ),
]


@pytest.mark.parametrize("vec", REAL_HEADERS, ids=lambda v: v[0][-8:])
def test_real_header_hash(vec: tuple[str, int, str, str, int, int, int]) -> None:
    hash_hex, version, prev_hex, root_hex, ntime, bits, nonce = vec
    h = BlockHeader(version, hash_from_hex(prev_hex), hash_from_hex(root_hex), ntime, bits, nonce)
    raw = h.serialize()
    assert len(raw) == 80
    assert h.hash_hex == hash_hex
    assert hash_to_hex(h.hash) == hash_hex
    assert BlockHeader.parse(raw) == h
    assert h.prevhash_hex == prev_hex and h.merkle_root_hex == root_hex


def test_block_100000_raw_header() -> None:
    # The 80 raw bytes as embedded in public tests (bitcoinj, btcrelay).
    raw = bytes.fromhex(
        "0100000050120119172a610421a6c3011dd330d9df07b63616c2cc1f1cd00200000000006657a925"
        "2aacd5c0b2940996ecff952228c3067cc38d4885efb5a4ac4247e9f337221b4d4c86041b0f2b5710"
    )
    h = BlockHeader.parse(raw)
    assert (h.version, h.ntime, h.bits, h.nonce) == (1, 1293623863, 0x1B04864C, 274148111)
    assert h.hash_hex == "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506"


def test_header_validation() -> None:
    with pytest.raises(DecodeError):
        BlockHeader.parse(b"\0" * 79)
    with pytest.raises(ValueError):
        BlockHeader(0, b"\0" * 31, b"\0" * 32, 0, 0, 0)
    with pytest.raises(ValueError, match="nonce"):
        BlockHeader(0, b"\0" * 32, b"\0" * 32, 0, 0, 2**32)


def test_rolling_changes_the_hash() -> None:
    base = BlockHeader(0x20000000, b"\1" * 32, b"\2" * 32, 1, 0x207FFFFF, 0)
    rolled = dataclasses.replace(base, version=rolled_version(0x20000000, 0x2000, 0x1FFFE000))
    assert rolled.serialize()[:4] == bytes.fromhex("00200020")
    assert rolled.hash != base.hash


# -- BIP310 version rolling ---------------------------------------------------------------------


def test_bip310_rolling_example() -> None:
    # docs/STRATUM.md §4: job version 0x20000000 with bits 0x038f4000 -> 0x238f4000. The bits lie
    # inside the BIP320 pool mask 0x1fffe000, so the formula (v & ~m) | (b & m) gives exactly that.
    assert 0x038F4000 & ~0x1FFFE000 == 0
    assert rolled_version(0x20000000, 0x038F4000, 0x1FFFE000) == 0x238F4000
    # And with the "all bits" mask a miner may request (ffffffff), the same submit is valid too.
    assert rolled_version(0x20000000, 0x038F4000 | 0x20000000, 0xFFFFFFFF) == 0x238F4000


def test_rolling_replaces_bits_inside_mask() -> None:
    # A job version with bits inside the mask (e.g. a BIP9 signal) is overridden by the miner's
    # bits, not OR-ed (pools that XOR or OR the bits in differ exactly here).
    assert rolled_version(0x20002000, 0x00000000, 0x1FFFE000) == 0x20000000
    assert rolled_version(0x20002000, 0x00004000, 0x1FFFE000) == 0x20004000


def test_rolling_bits_outside_mask_rejected() -> None:
    with pytest.raises(VersionBitsError, match="outside the negotiated mask 1fffe000"):
        rolled_version(0x20000000, 0x00001000, 0x1FFFE000)
    with pytest.raises(VersionBitsError):
        rolled_version(0x20000000, 0x20000000, 0x1FFFE000)
    with pytest.raises(VersionBitsError):
        rolled_version(0x20000000, 1, 0)
    with pytest.raises(VersionBitsError):
        rolled_version(2**32, 0, 0)


@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=2**32 - 1),
)
def test_rolling_formula(job: int, bits: int, mask: int) -> None:
    bits &= mask
    v = rolled_version(job, bits, mask)
    assert 0 <= v < 2**32
    assert v & ~mask & 0xFFFFFFFF == job & ~mask & 0xFFFFFFFF
    assert v & mask == bits


u32 = st.integers(min_value=0, max_value=2**32 - 1)
hash32 = st.binary(min_size=32, max_size=32)


@given(st.builds(BlockHeader, u32, hash32, hash32, u32, u32, u32))
def test_header_roundtrip(h: BlockHeader) -> None:
    raw = h.serialize()
    assert len(raw) == 80
    assert BlockHeader.parse(raw) == h
    assert BlockHeader.parse(raw).hash == h.hash


@given(st.binary(min_size=80, max_size=80))
def test_header_parse_serialize(raw: bytes) -> None:
    assert BlockHeader.parse(raw).serialize() == raw
