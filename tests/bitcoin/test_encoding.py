"""encoding.py: CompactSize per Core's serialize.h (including canonical-encoding rejection),
fixed-width integers, hashes, ByteReader bounds."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.encoding import (
    MAX_COMPACT_SIZE,
    ByteReader,
    DecodeError,
    compact_size,
    hash160,
    i32le,
    sha256,
    sha256d,
    u32le,
    u64le,
)

# Boundaries of the four CompactSize forms, written out by hand from serialize.h WriteCompactSize.
COMPACT_VECTORS = [
    (0, "00"),
    (0xFC, "fc"),
    (0xFD, "fdfd00"),
    (0xFFFF, "fdffff"),
    (0x10000, "fe00000100"),
    (0xFFFFFFFF, "feffffffff"),
    (0x100000000, "ff0000000001000000"),
    (2**64 - 1, "ffffffffffffffffff"),
]


@pytest.mark.parametrize(("n", "hex_"), COMPACT_VECTORS)
def test_compact_size_vectors(n: int, hex_: str) -> None:
    assert compact_size(n).hex() == hex_
    assert ByteReader(bytes.fromhex(hex_)).compact_size(limit=2**64) == n


@pytest.mark.parametrize("hex_", ["fdfc00", "feffff0000", "ffffffffff00000000"])
def test_non_canonical_compact_size_rejected(hex_: str) -> None:
    # Each value fits the next shorter form: Core throws "non-canonical ReadCompactSize()".
    with pytest.raises(DecodeError, match="non-canonical"):
        ByteReader(bytes.fromhex(hex_)).compact_size(limit=2**64)


def test_compact_size_limit() -> None:
    data = compact_size(MAX_COMPACT_SIZE + 1)
    with pytest.raises(DecodeError, match="exceeds"):
        ByteReader(data).compact_size()
    assert ByteReader(compact_size(MAX_COMPACT_SIZE)).compact_size() == MAX_COMPACT_SIZE


def test_compact_size_negative() -> None:
    with pytest.raises(ValueError):
        compact_size(-1)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_compact_size_roundtrip(n: int) -> None:
    r = ByteReader(compact_size(n))
    assert r.compact_size(limit=2**64) == n
    assert r.done()


def test_fixed_width_ints() -> None:
    assert u32le(1) == b"\x01\x00\x00\x00"
    assert u32le(0x20000000).hex() == "00000020"
    assert i32le(-1) == b"\xff\xff\xff\xff"
    assert u64le(5_000_000_000).hex() == "00f2052a01000000"  # 50 BTC as in the genesis coinbase
    for bad in (lambda: u32le(-1), lambda: u32le(2**32), lambda: i32le(2**31), lambda: u64le(-1)):
        with pytest.raises(ValueError):
            bad()


def test_hashes() -> None:
    # sha256("") and sha256d("") are well-known constants (FIPS 180-2 / Bitcoin wiki "Protocol
    # documentation"); hash160 of the empty string is RIPEMD160(SHA256("")).
    assert sha256(b"").hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256d(b"").hex() == "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456"
    assert sha256d(b"hello").hex() == hashlib.sha256(hashlib.sha256(b"hello").digest()).hexdigest()
    assert hash160(b"").hex() == "b472a266d0bd89c13706a4132ccfb16f7c3b9fcb"


def test_reader_reads_and_bounds() -> None:
    r = ByteReader(bytes.fromhex("010200030000000400000000000000ffffffffaabb"))
    assert r.u8() == 1
    assert r.u16() == 2
    assert r.u32() == 3
    assert r.u64() == 4
    assert r.i32() == -1
    assert r.remaining() == 2
    assert not r.done()
    with pytest.raises(DecodeError, match="truncated"):
        r.read(3)
    assert r.read(2) == b"\xaa\xbb"
    assert r.done()
    r.expect_done()
    with pytest.raises(DecodeError):
        r.u8()


def test_reader_trailing() -> None:
    r = ByteReader(b"\x00\x01")
    r.u8()
    with pytest.raises(DecodeError, match="1 trailing"):
        r.expect_done("thing")


def test_var_bytes_truncated() -> None:
    with pytest.raises(DecodeError):
        ByteReader(bytes.fromhex("05aabb")).var_bytes()
