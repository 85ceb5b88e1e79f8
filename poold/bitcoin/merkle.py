"""Merkle trees of a block (Bitcoin Core's BlockMerkleRoot/BlockWitnessMerkleRoot): the root
from txids (the last node of an odd level is paired with itself), the coinbase's branch (the
`merkle_branch` of `mining.notify`), the root from a leaf and its branch, and the BIP141
witness commitment.

All hashes are internal byte order (sha256d output), as in headers and on the Stratum wire.
"""

from __future__ import annotations

from collections.abc import Sequence

from poold.bitcoin.encoding import sha256d

ZERO_HASH = b"\0" * 32


def _check(leaves: Sequence[bytes]) -> None:
    for i, h in enumerate(leaves):
        if len(h) != 32:
            raise ValueError(f"merkle leaf {i} must be 32 bytes, got {len(h)}")


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Merkle root of the leaves (txids including the coinbase's, block order)."""
    if not leaves:
        raise ValueError("merkle root of an empty list is undefined")
    _check(leaves)
    level = list(leaves)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def coinbase_branch(txids: Sequence[bytes]) -> list[bytes]:
    """Siblings of leaf 0 (the coinbase), bottom-up, given the NON-coinbase txids in block order.

    The coinbase itself is unknown when jobs are built (its extranonce changes per share), so
    each level is computed without it: the sibling at a level is the node right after it, and
    the nodes further right are hashed pairwise into the next level."""
    _check(txids)
    branch: list[bytes] = []
    rest = list(txids)  # level nodes after position 0
    while rest:
        branch.append(rest[0])
        # Next level: position 0 is hash(coinbase-side, rest[0]); the others pair up rest[1:].
        tail = rest[1:]
        if len(tail) % 2:
            tail.append(tail[-1])
        rest = [sha256d(tail[i] + tail[i + 1]) for i in range(0, len(tail), 2)]
    return branch


def root_from_branch(leaf: bytes, branch: Sequence[bytes]) -> bytes:
    """Fold a leaf-0 hash up its branch: h = sha256d(h || sibling) at each level."""
    if len(leaf) != 32:
        raise ValueError("merkle leaf must be 32 bytes")
    _check(branch)
    h = leaf
    for sibling in branch:
        h = sha256d(h + sibling)
    return h


def witness_root(wtxids_without_coinbase: Sequence[bytes]) -> bytes:
    """BIP141 witness merkle root: the coinbase's wtxid counts as 32 zero bytes."""
    return merkle_root([ZERO_HASH, *wtxids_without_coinbase])


def witness_commitment(
    wtxids_without_coinbase: Sequence[bytes], reserved: bytes = ZERO_HASH
) -> bytes:
    """BIP141 commitment = sha256d(witness root || witness reserved value), 32 bytes."""
    if len(reserved) != 32:
        raise ValueError("witness reserved value must be 32 bytes")
    return sha256d(witness_root(wtxids_without_coinbase) + reserved)
