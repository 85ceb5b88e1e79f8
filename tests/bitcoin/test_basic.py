"""Smoke tests of every primitive module against hand-checked facts (deeper vectors live in the
per-module test files)."""

from __future__ import annotations

from poold.bitcoin.block import assemble_block, parse_block
from poold.bitcoin.byteorder import hash_from_hex, hash_to_hex
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import coinbase_branch, merkle_root, root_from_branch
from poold.bitcoin.script import p2wpkh_script
from poold.bitcoin.target import DIFF1_TARGET, bits_to_target
from poold.bitcoin.tx import Tx, TxOut

# Mainnet genesis header fields and hash: Bitcoin Core chainparams.cpp (CreateGenesisBlock
# (1231006505, 2083236893, 0x1d00ffff, 1, 50 * COIN) and the asserted hashGenesisBlock /
# hashMerkleRoot).
GENESIS_HASH_HEX = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
GENESIS_ROOT_HEX = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"


def test_genesis_header_hash() -> None:
    h = BlockHeader(
        1, b"\0" * 32, hash_from_hex(GENESIS_ROOT_HEX), 1231006505, 0x1D00FFFF, 2083236893
    )
    assert hash_to_hex(h.hash) == GENESIS_HASH_HEX
    assert BlockHeader.parse(h.serialize()) == h
    assert bits_to_target(0x1D00FFFF) == DIFF1_TARGET


def test_coinbase_block_roundtrip() -> None:
    parts = build_coinbase(
        200,
        [TxOut(5_000_000_000, p2wpkh_script(b"\x11" * 20))],
        tag=b"/poold/",
        witness_commitment_script=None,
    )
    cb = parts.assemble(b"\1\2\3\4", b"\0" * 8)
    assert Tx.parse(cb.serialize()) == cb
    fake = [bytes([i]) * 32 for i in range(1, 4)]
    branch = coinbase_branch(fake)
    assert root_from_branch(cb.txid, branch) == merkle_root([cb.txid, *fake])
    header = BlockHeader(0x20000000, b"\0" * 32, merkle_root([cb.txid]), 1, 0x207FFFFF, 0)
    block = assemble_block(header.serialize(), cb, [])
    h2, txs = parse_block(block)
    assert h2 == header and txs == [cb]
