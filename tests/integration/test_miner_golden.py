"""The simulated miner's header reconstruction against real-world golden values.

The miner (poold.sim.miner) is poold's independent check of its Stratum encoding, so its own
byte-order handling is pinned here to real mainnet blocks and the worked examples of
docs/STRATUM.md §6/§8 without using poold.bitcoin; a property test then checks that the two
independent implementations (the miner's and poold.bitcoin's) agree on arbitrary inputs.
"""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from poold.sim.miner import (
    Job,
    coinbase_txid,
    difficulty_to_target,
    display_hash_hex,
    hash_difficulty,
    header_bytes,
    merkle_root_from_branch,
    prevhash_from_stratum_hex,
    rolled_version,
)

# Block 1 of mainnet: coinbase, header fields and hash (any block explorer; Bitcoin Core chain).
BLOCK1_COINBASE = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff07"
    "04ffff001d0104ffffffff0100f2052a0100000043410496b538e853519c726a2c91e61ec11600ae1390"
    "813a627c66fb8be7947be63c52da7589379515d4e0a604f8141781e62294721166bf621e73a82cbf2342"
    "c858eeac00000000"
)
BLOCK1_PREV_HEX = "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
BLOCK1_HASH_HEX = "00000000839a8e6886ab5951d76f411475428afc90947ee320161bbf18eb6048"
BLOCK1_MERKLE_HEX = "0e3e2357e806b6cdb1f70b54c3a3a17b6714ee1f0e68bebb44a74b1efd512098"

# Block 100000: its four txids, merkle root, header and hash.
B100K_TXIDS_HEX = (
    "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
    "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
    "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
    "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
)
B100K_MERKLE_HEX = "f3e94742aca4b5ef85488dc37c06c3282295ffec960994b2c0d5ac2a25a95766"
B100K_PREV_HEX = "000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250"
B100K_HASH_HEX = "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506"


def _stratum_prevhash(display_hex: str) -> str:
    # docs/STRATUM.md §6: the display hash with its eight 8-hex-char groups in reverse order.
    groups = [display_hex[i : i + 8] for i in range(0, 64, 8)]
    return "".join(reversed(groups))


def _sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def test_prevhash_worked_example_from_pools_md() -> None:
    stratum = "9e81c964520c42f237a10b2ad1141c5e38eaf83a0002224a0000000000000000"
    display = "00000000000000000002224a38eaf83ad1141c5e37a10b2a520c42f29e81c964"
    assert display_hash_hex(prevhash_from_stratum_hex(stratum)) == display
    assert _stratum_prevhash(display) == stratum


def test_block1_rebuilt_from_wire_strings() -> None:
    # Cut the real coinbase's scriptSig where a pool puts extranonce1 (4 B) + extranonce2 (3 B).
    raw = bytes.fromhex(BLOCK1_COINBASE)
    cut = 42 + 1  # after version|vin count|prevout|scriptSig length
    en1, en2 = raw[cut : cut + 4], raw[cut + 4 : cut + 7]
    coinb1, coinb2 = raw[:cut].hex(), raw[cut + 7 :].hex()
    params = [
        "1",
        _stratum_prevhash(BLOCK1_PREV_HEX),
        coinb1,
        coinb2,
        [],
        "00000001",
        "1d00ffff",
        f"{1231469665:08x}",
        True,
    ]
    job = Job.from_notify(params, difficulty=1.0, extranonce1=en1, extranonce2_size=3)
    assert display_hash_hex(coinbase_txid(coinb1, en1, en2, coinb2)) == BLOCK1_MERKLE_HEX
    header = job.header(en2, job.ntime, 2573394689, job.version)
    assert display_hash_hex(_sha256d(header)) == BLOCK1_HASH_HEX
    assert hash_difficulty(_sha256d(header)) >= 1.0


def test_block100000_merkle_fold_and_header() -> None:
    txids = [bytes.fromhex(t)[::-1] for t in B100K_TXIDS_HEX]
    branch = [txids[1], _sha256d(txids[2] + txids[3])]
    root = merkle_root_from_branch(txids[0], branch)
    assert display_hash_hex(root) == B100K_MERKLE_HEX
    prev = prevhash_from_stratum_hex(_stratum_prevhash(B100K_PREV_HEX))
    header = header_bytes(1, prev, root, 1293623863, 0x1B04864C, 274148111)
    assert display_hash_hex(_sha256d(header)) == B100K_HASH_HEX


def test_version_rolling_bitaxe_example() -> None:
    # docs/STRATUM.md §4: job version 0x20000000 with submitted bits 0x038f4000 -> 0x238f4000.
    assert rolled_version(0x20000000, 0x038F4000, 0x1FFFE000) == 0x238F4000
    # Bits outside the mask never reach the header; bits of the job inside the mask are replaced.
    assert rolled_version(0x20000000, 0xFFFFFFFF, 0x1FFFE000) == 0x3FFFE000
    assert rolled_version(0x3FFFE000, 0, 0x1FFFE000) == 0x20000000


def test_difficulty_one_target() -> None:
    assert difficulty_to_target(1.0) == 0x00000000FFFF << 208
    assert difficulty_to_target(1e-12) == 2**256 - 1


@settings(max_examples=200, deadline=None)
@given(
    prevhash=st.binary(min_size=32, max_size=32),
    coinb1=st.binary(min_size=0, max_size=120),
    coinb2=st.binary(min_size=0, max_size=200),
    en1=st.binary(min_size=4, max_size=4),
    en2=st.binary(min_size=8, max_size=8),
    branch=st.lists(st.binary(min_size=32, max_size=32), max_size=12),
    version=st.integers(0, 2**32 - 1),
    bits=st.integers(0, 2**32 - 1),
    ntime=st.integers(0, 2**32 - 1),
    nbits=st.integers(0, 2**32 - 1),
    nonce=st.integers(0, 2**32 - 1),
)
def test_miner_agrees_with_poold_bitcoin(
    prevhash: bytes,
    coinb1: bytes,
    coinb2: bytes,
    en1: bytes,
    en2: bytes,
    branch: list[bytes],
    version: int,
    bits: int,
    ntime: int,
    nbits: int,
    nonce: int,
) -> None:
    """Two independent implementations of the wire -> header path must agree on every input."""
    from poold.bitcoin.byteorder import prevhash_to_stratum
    from poold.bitcoin.encoding import sha256d
    from poold.bitcoin.header import BlockHeader
    from poold.bitcoin.header import rolled_version as core_rolled
    from poold.bitcoin.merkle import root_from_branch

    mask = 0x1FFFE000
    stratum_prev = prevhash_to_stratum(prevhash)
    params = [
        "j", stratum_prev, coinb1.hex(), coinb2.hex(), [b.hex() for b in branch],
        f"{version:08x}", f"{nbits:08x}", f"{ntime:08x}", False,
    ]  # fmt: skip
    job = Job.from_notify(params, 1.0, en1, 8)
    v = rolled_version(version, bits & mask, mask)
    assert v == core_rolled(version, bits & mask, mask)
    ours = job.header(en2, ntime, nonce, v)
    root = root_from_branch(sha256d(coinb1 + en1 + en2 + coinb2), branch)
    theirs = BlockHeader(v, prevhash, root, ntime, nbits, nonce)
    assert ours == theirs.serialize()
    assert _sha256d(ours) == theirs.hash
