"""byteorder.py: every conversion against worked examples from outside our code."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.byteorder import (
    bytes_from_hex,
    hash_from_hex,
    hash_to_hex,
    hash_to_int,
    int_to_hash,
    prevhash_from_stratum,
    prevhash_to_stratum,
    u32_from_hex,
    u32_to_hex,
)

# docs/STRATUM.md §6 worked example (a public-pool job logged in ESP-Miner issue #203): the
# notify prevhash and the display hash it stands for.
PREV_STRATUM = "9e81c964520c42f237a10b2ad1141c5e38eaf83a0002224a0000000000000000"
PREV_DISPLAY = "00000000000000000002224a38eaf83ad1141c5e37a10b2a520c42f29e81c964"

# Mainnet genesis: display hash, and the same hash as it appears inside block 1's header
# (hashPrevBlock, internal order) — block 1 header from the Bitcoin wiki / Core test vectors.
GENESIS_DISPLAY = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
GENESIS_INTERNAL = "6fe28c0ab6f1b372c1a6a246ae63f74f931e8365e15a089c68d6190000000000"


def test_display_vs_internal() -> None:
    internal = hash_from_hex(GENESIS_DISPLAY)
    assert internal.hex() == GENESIS_INTERNAL
    assert hash_to_hex(internal) == GENESIS_DISPLAY
    # As an integer the genesis hash is small: 0x19d6689c... with 11 leading zero nibbles.
    assert hash_to_int(internal) == int(GENESIS_DISPLAY, 16)
    assert int_to_hash(int(GENESIS_DISPLAY, 16)) == internal


def test_pools_md_prevhash_example() -> None:
    internal = hash_from_hex(PREV_DISPLAY)
    assert prevhash_to_stratum(internal) == PREV_STRATUM
    assert prevhash_from_stratum(PREV_STRATUM) == internal


def test_stratum_prevhash_is_word_reversed_display() -> None:
    # The equivalent description: the display hash's eight 8-hex groups in reverse order.
    groups = [PREV_DISPLAY[i : i + 8] for i in range(0, 64, 8)]
    assert "".join(reversed(groups)) == PREV_STRATUM


@given(st.binary(min_size=32, max_size=32))
def test_prevhash_roundtrip(h: bytes) -> None:
    assert prevhash_from_stratum(prevhash_to_stratum(h)) == h
    assert hash_from_hex(hash_to_hex(h)) == h
    assert int_to_hash(hash_to_int(h)) == h


def test_u32_hex() -> None:
    # Stratum wire: big-endian, 8 chars, zero padded (docs/STRATUM.md §6: version "20000000").
    assert u32_to_hex(0x20000000) == "20000000"
    assert u32_to_hex(0x1D00FFFF) == "1d00ffff"
    assert u32_to_hex(5) == "00000005"
    assert u32_from_hex("663c8e8a") == 0x663C8E8A
    assert u32_from_hex("038F4000") == 0x038F4000


@pytest.mark.parametrize("bad", ["", "1234567", "123456789", "zzzzzzzz", " 1234567", "1234 567"])
def test_u32_from_hex_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        u32_from_hex(bad)


def test_u32_to_hex_range() -> None:
    with pytest.raises(ValueError):
        u32_to_hex(2**32)
    with pytest.raises(ValueError):
        u32_to_hex(-1)


@pytest.mark.parametrize(
    "bad",
    [PREV_STRATUM[:-2], PREV_STRATUM + "00", "g" + PREV_STRATUM[1:], " " + PREV_STRATUM[1:]],
)
def test_hash_hex_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        hash_from_hex(bad)
    with pytest.raises(ValueError):
        prevhash_from_stratum(bad)


def test_wrong_lengths() -> None:
    for f in (hash_to_hex, hash_to_int, prevhash_to_stratum):
        with pytest.raises(ValueError):
            f(b"\0" * 31)
    with pytest.raises(ValueError):
        int_to_hash(2**256)


def test_bytes_from_hex() -> None:
    assert bytes_from_hex("00ff") == b"\x00\xff"
    with pytest.raises(ValueError, match="extranonce2"):
        bytes_from_hex("0g", "extranonce2")
