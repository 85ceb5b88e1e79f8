"""script.py: pushes and numbers per Core's CScript/CScriptNum, BIP34 height pushes written out
by hand, and the standard output scripts."""

from __future__ import annotations

import pytest

from poold.bitcoin.block import parse_block
from poold.bitcoin.script import (
    bip34_height,
    bip34_height_push,
    decode_script_num,
    is_witness_commitment_script,
    op_return_script,
    p2pkh_hash,
    p2pkh_script,
    p2sh_hash,
    p2sh_script,
    p2tr_script,
    p2wpkh_script,
    p2wsh_script,
    push_data,
    push_int,
    script_num,
    witness_commitment_script,
    witness_program,
    witness_program_script,
)

from ._vectors import load_hex

# BIP34 pushes derived by hand from Core's `CScript() << nHeight` (script.h push_int64):
# 1..16 -> OP_1..OP_16 (0x51..0x60); otherwise a data push of the minimal CScriptNum, whose last
# byte's top bit is the sign, so 128/255/65535 need an extra 0x00 byte.
BIP34 = [
    (1, b"\x51"),
    (16, b"\x60"),
    (17, b"\x01\x11"),
    (127, b"\x01\x7f"),
    (128, b"\x02\x80\x00"),
    (255, b"\x02\xff\x00"),
    (256, b"\x02\x00\x01"),
    (65535, b"\x03\xff\xff\x00"),
    (65536, b"\x03\x00\x00\x01"),
    (1_000_000, b"\x03\x40\x42\x0f"),
]


@pytest.mark.parametrize(("height", "expected"), BIP34)
def test_bip34_height_push(height: int, expected: bytes) -> None:
    assert bip34_height_push(height) == expected


def test_bip34_real_coinbases() -> None:
    # The coinbase of mainnet block 542213 as mined (consensus-valid, so its BIP34 prefix is right).
    _, txs = parse_block(load_hex("mainnet-block-542213.hex"))
    assert txs[0].inputs[0].script_sig.startswith(bip34_height_push(542213))
    assert bip34_height_push(542213) == bytes.fromhex("03054608")
    # docs/STRATUM.md §6 public-pool job at 846646 (03 36eb0c); block 227931, the first height where
    # mainnet enforced BIP34 (03 5b7a03).
    assert bip34_height_push(846646) == bytes.fromhex("0336eb0c")
    assert bip34_height_push(227931) == bytes.fromhex("035b7a03")
    # Heights needing 4 bytes start at 2**23 (the sign bit of 3 bytes).
    assert bip34_height_push(2**23) == bytes.fromhex("0400008000")


@pytest.mark.parametrize(("height", "expected"), BIP34)
def test_bip34_height_decode(height: int, expected: bytes) -> None:
    assert bip34_height(expected + b"tag") == height


def test_bip34_height_of_real_coinbases() -> None:
    _, txs = parse_block(load_hex("mainnet-block-542213.hex"))
    assert bip34_height(txs[0].inputs[0].script_sig) == 542213
    assert bip34_height(b"") is None
    assert bip34_height(b"\x4c\x01\x05") is None  # PUSHDATA1 is not a minimal height push
    assert bip34_height(b"\x03\x01") is None  # truncated push


@pytest.mark.parametrize(
    ("n", "hex_"), [(0, ""), (1, "01"), (-1, "81"), (128, "8000"), (-128, "8080")]
)
def test_decode_script_num(n: int, hex_: str) -> None:
    assert decode_script_num(bytes.fromhex(hex_)) == n


def test_bip34_negative() -> None:
    with pytest.raises(ValueError):
        bip34_height_push(-1)


# CScriptNum serialization vectors, by hand from script.h CScriptNum::serialize.
SCRIPT_NUM = [
    (0, ""),
    (1, "01"),
    (-1, "81"),
    (127, "7f"),
    (-127, "ff"),
    (128, "8000"),
    (-128, "8080"),
    (255, "ff00"),
    (-255, "ff80"),
    (256, "0001"),
    (-256, "0081"),
    (32767, "ff7f"),
    (32768, "008000"),
    (-32768, "008080"),
    (2**31 - 1, "ffffff7f"),
    (-(2**31), "0000008080"),
]


@pytest.mark.parametrize(("n", "hex_"), SCRIPT_NUM)
def test_script_num(n: int, hex_: str) -> None:
    assert script_num(n).hex() == hex_


def test_push_int_small() -> None:
    assert push_int(0) == b"\x00"
    assert push_int(-1) == b"\x4f"
    assert push_int(5) == b"\x55"
    assert push_int(-2) == b"\x01\x82"


@pytest.mark.parametrize(
    ("n", "prefix"),
    [
        (0, "00"),
        (1, "01"),
        (75, "4b"),
        (76, "4c4c"),
        (255, "4cff"),
        (256, "4d0001"),
        (65535, "4dffff"),
        (65536, "4e00000100"),
    ],
)
def test_push_data_forms(n: int, prefix: str) -> None:
    data = b"\xab" * n
    assert push_data(data) == bytes.fromhex(prefix) + data


def test_standard_scripts() -> None:
    h = bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")
    # BIP173 vector: BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4 -> 0014751e...
    assert p2wpkh_script(h).hex() == "0014751e76e8199196d454941c45d1b3a323f1433bd6"
    assert p2pkh_script(h).hex() == "76a914751e76e8199196d454941c45d1b3a323f1433bd688ac"
    assert p2sh_script(h).hex() == "a914751e76e8199196d454941c45d1b3a323f1433bd687"
    assert p2pkh_hash(p2pkh_script(h)) == h
    assert p2sh_hash(p2sh_script(h)) == h
    assert p2pkh_hash(p2sh_script(h)) is None
    assert p2sh_hash(p2pkh_script(h)) is None
    # BIP141 example: P2WSH of "OP_1" is the sha256 of 0x51.
    assert p2wsh_script(b"\x51").hex() == (
        "00204ae81572f06e1b88fd5ced7a1a000945432e83e1551e6f721ee9c00b8cc33260"
    )
    xonly = bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    assert p2tr_script(xonly).hex() == "5120" + xonly.hex()
    assert witness_program(p2tr_script(xonly)) == (1, xonly)
    assert witness_program(p2wpkh_script(h)) == (0, h)
    assert witness_program(bytes.fromhex("6002751e")) == (16, bytes.fromhex("751e"))
    assert witness_program(p2pkh_script(h)) is None
    assert witness_program(b"\x00\x01\x02") is None
    assert op_return_script(b"hi") == b"\x6a\x02hi"
    with pytest.raises(ValueError):
        p2wpkh_script(b"\0" * 21)
    with pytest.raises(ValueError):
        witness_program_script(17, b"\0" * 20)
    with pytest.raises(ValueError):
        witness_program_script(1, b"\0")


def test_witness_commitment_script() -> None:
    c = bytes(range(32))
    s = witness_commitment_script(c)
    assert s[:6].hex() == "6a24aa21a9ed" and s[6:] == c and len(s) == 38
    assert is_witness_commitment_script(s)
    assert is_witness_commitment_script(s + b"extra")  # BIP141: "at least 38 bytes"
    assert not is_witness_commitment_script(s[:37])
    assert not is_witness_commitment_script(b"\x6a\x24\xaa\x21\xa9\xee" + c)
