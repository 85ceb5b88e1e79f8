"""merkle.py against real blocks: roots from txids, the coinbase branch (mining.notify's
merkle_branch), roots from branches, and the BIP141 witness commitment."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.block import find_witness_commitment, parse_block
from poold.bitcoin.byteorder import hash_from_hex
from poold.bitcoin.encoding import sha256d
from poold.bitcoin.merkle import (
    coinbase_branch,
    merkle_root,
    root_from_branch,
    witness_commitment,
    witness_root,
)

from ._vectors import load_hex

GENESIS_ROOT = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"


@pytest.mark.parametrize("name", ["mainnet-block-100000.hex", "mainnet-block-542213.hex"])
def test_real_block_roots(name: str) -> None:
    header, txs = parse_block(load_hex(name))
    txids = [t.txid for t in txs]
    assert merkle_root(txids) == header.merkle_root
    branch = coinbase_branch(txids[1:])
    assert len(branch) == 2  # 4 transactions: two levels
    assert branch[0] == txids[1]
    assert root_from_branch(txids[0], branch) == header.merkle_root


def test_block_100000_published_root() -> None:
    # Published txids -> published root, without parsing anything of ours.
    txids = [
        hash_from_hex(x)
        for x in (
            "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
            "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
            "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
            "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
        )
    ]
    assert merkle_root(txids) == hash_from_hex(
        "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
    )


def test_single_leaf_root_is_the_leaf() -> None:
    # Genesis: one transaction, merkle root = its txid.
    leaf = hash_from_hex(GENESIS_ROOT)
    assert merkle_root([leaf]) == leaf
    assert coinbase_branch([]) == []
    assert root_from_branch(leaf, []) == leaf


def test_real_witness_commitment() -> None:
    # Block 542213's coinbase commits to 4a657fca...; reserved value = its coinbase witness.
    _, txs = parse_block(load_hex("mainnet-block-542213.hex"))
    reserved = txs[0].inputs[0].witness[0]
    assert reserved == b"\0" * 32
    commitment = witness_commitment([t.wtxid for t in txs[1:]], reserved)
    assert commitment.hex() == "4a657fcaa2149342376247e2e283a55a6b92dcc35d4d89e4ac7b74488cb63be2"
    assert find_witness_commitment(txs[0]) == commitment
    # Using the coinbase's real wtxid instead of zeros gives a different (wrong) commitment.
    assert witness_commitment([t.wtxid for t in txs], reserved) != commitment


def test_odd_levels_duplicate_last() -> None:
    a, b, c = (bytes([i]) * 32 for i in (1, 2, 3))
    expected = sha256d(sha256d(a + b) + sha256d(c + c))
    assert merkle_root([a, b, c]) == expected
    # Coinbase a with txids b, c: branch = [b, hash(c,c)].
    assert coinbase_branch([b, c]) == [b, sha256d(c + c)]


def test_witness_root_of_coinbase_only() -> None:
    assert witness_root([]) == b"\0" * 32
    assert witness_commitment([]) == sha256d(b"\0" * 64)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        merkle_root([])
    with pytest.raises(ValueError):
        merkle_root([b"\0" * 31])
    with pytest.raises(ValueError):
        coinbase_branch([b"\0" * 33])
    with pytest.raises(ValueError):
        root_from_branch(b"\0" * 32, [b"\0"])
    with pytest.raises(ValueError):
        witness_commitment([], b"\0" * 31)


@given(st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40))
def test_branch_agrees_with_root(leaves: list[bytes]) -> None:
    branch = coinbase_branch(leaves[1:])
    assert root_from_branch(leaves[0], branch) == merkle_root(leaves)
    assert len(branch) == (len(leaves) - 1).bit_length()
