"""The share core (poold.bitcoin.sharecore): real mainnet blocks, every error path, and parity
between the native core (both SHA-256 paths: SHA-NI and portable C) and the pure-Python twin.

The oracle is never the code under test: block hashes are the real mainnet ones (and the header
of each block meets its own nbits), and random cases are checked against a reference written here
with hashlib and struct, step by step as docs/STRATUM.md §8 describes the share check.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from poold.bitcoin import sharecore
from poold.bitcoin.sharecore import PureJobCore, ShareFormatError
from tests.ci import missing

try:
    from poold import _sharecore as native
except ImportError:  # the pure-only install: native cases fail under CI, skip elsewhere
    native = None

REPO = Path(__file__).resolve().parents[2]
MAX_TARGET_LE = (2**256 - 1).to_bytes(32, "little")
BIP320_MASK = 0x1FFFE000


@dataclass(frozen=True)
class Core:
    name: str
    job_core: Any  # the JobCore class of this core


def _cores() -> list[Any]:
    return [
        pytest.param("native-shani", id="native-shani"),
        pytest.param("native-portable", id="native-portable"),
        pytest.param("pure", id="pure"),
    ]


@pytest.fixture(params=_cores())
def core(request: pytest.FixtureRequest) -> Iterator[Core]:
    """Every share test runs once per core: SHA-NI, portable C, pure Python."""
    name: str = request.param
    if name == "pure":
        yield Core(name, PureJobCore)
        return
    if native is None:
        missing("native extension not built (poold._sharecore missing)")
    impl = name.removeprefix("native-")
    if impl == "shani" and not native.shani_available():
        pytest.skip("this CPU has no SHA extensions")
    before = native.impl()
    native.set_impl(impl)
    try:
        yield Core(name, native.JobCore)
    finally:
        native.set_impl(before)


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def bits_to_target(bits: int) -> int:
    return (bits & 0x007FFFFF) << (8 * ((bits >> 24) - 3))


def branch_from_txids(txids: Sequence[bytes]) -> list[bytes]:
    """Siblings of the coinbase (index 0) bottom-up; txids = the non-coinbase txids."""
    level = [b"\0" * 32, *txids]
    branch = []
    while len(level) > 1:
        branch.append(level[1])
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return branch


def reference_check(
    coinb1: bytes,
    en1: bytes,
    en2_hex: str,
    coinb2: bytes,
    branch: Sequence[bytes],
    version: int,
    prevhash: bytes,
    nbits: int,
    ntime_hex: str,
    nonce_hex: str,
    bits_hex: str | None,
    mask: int,
    share_target: int,
    network_target: int,
) -> tuple[bytes, bool, bool]:
    root = sha256d(coinb1 + en1 + bytes.fromhex(en2_hex) + coinb2)
    for step in branch:
        root = sha256d(root + step)
    if bits_hex is not None:
        version = (version & ~mask) | (int(bits_hex, 16) & mask)
    header = (
        struct.pack("<I", version)
        + prevhash
        + root
        + struct.pack("<I", int(ntime_hex, 16))
        + struct.pack("<I", nbits)
        + struct.pack("<I", int(nonce_hex, 16))
    )
    hash_ = sha256d(header)
    value = int.from_bytes(hash_, "little")
    return hash_, value <= share_target, value <= network_target


# --- real mainnet blocks -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    hash_hex: str
    coinbase_legacy: bytes
    txids_hex: tuple[str, ...]
    version: int
    prevhash_hex: str
    ntime: int
    bits: int
    nonce: int


GENESIS = Block(
    "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    bytes.fromhex(
        "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04"
        "ffff001d0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e20"
        "6272696e6b206f66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01"
        "000000434104678afdb0fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4c"
        "ef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000"
    ),
    (),
    1,
    "00" * 32,
    1231006505,
    0x1D00FFFF,
    2083236893,
)

# Block 100,000: four transactions, a two-step branch.
BLOCK_100000 = Block(
    "000000000003ba27aa200b1cecaad478d2b00432346c3f1f3986da1afd33e506",
    bytes.fromhex(
        "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff0804"
        "4c86041b020602ffffffff0100f2052a010000004341041b0e8c2567c12536aa13357b79a073dc4444acb8"
        "3c4ec7a0e2f99dd7457516c5817242da796924ca4e99947d087fedf9ce467cb9f7c6287078f801df276fdf"
        "84ac00000000"
    ),
    (
        "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
        "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
        "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
    ),
    1,
    "000000000002d01c1fccc21636b607dfd930d31d01c3a62104612a1719011250",
    1293623863,
    0x1B04864C,
    274148111,
)

# Block 542,213 (AntPool, 2018): BIP34 height, segwit witness commitment output, version
# 0x20000000 (BIP9). The coinbase is its legacy serialization (what miners hash).
BLOCK_542213 = Block(
    "000000000000000000143a2c56c0214236dadfd30df41d4a0345492ad6d861ec",
    bytes.fromhex(
        "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff5003"
        "054608174d696e656420627920416e74506f6f6c393b205ba350dffabe6d6d3a3e92d9efff857664de632e"
        "89fa3182f1e793d00be2e71a117b273145945a810400000000000000db250000acba0500ffffffff028a8f"
        "814a000000001976a914edf10a7fac6b32e24daa5305c723f3de58db1bc888ac0000000000000000266a24"
        "aa21a9ed4a657fcaa2149342376247e2e283a55a6b92dcc35d4d89e4ac7b74488cb63be200000000"
    ),
    (
        "66beaceb4be99da1e9824448231ab4fd37bacaee912381e779b37cf0e1dadad7",
        "6c6e3849acf1b570db352dc08f7776e99c344a56fbb2f019e1865d1b6e044889",
        "5b211bc589cbdf5ad86cab1e2fe91f01c8ab934d21536b35864d30a3ff778456",
    ),
    0x20000000,
    "000000000000000000085a38ccf9c046c51b96add547c466ccba3612b1eb8089",
    1537429727,
    0x172819A1,
    31692307,
)


def job_for(
    core: Core,
    block: Block,
    split: int,
    en1_size: int = 4,
    en2_size: int = 8,
    version: int | None = None,
) -> tuple[Any, str]:
    """The block's coinbase cut into coinb1 | extranonce1 | extranonce2 | coinb2 at `split`,
    as a pool would have sent it; returns (session, extranonce2_hex)."""
    cb = block.coinbase_legacy
    en1 = cb[split : split + en1_size]
    en2 = cb[split + en1_size : split + en1_size + en2_size]
    branch = branch_from_txids([bytes.fromhex(t)[::-1] for t in block.txids_hex])
    job = core.job_core(
        cb[:split],
        cb[split + en1_size + en2_size :],
        branch,
        block.version if version is None else version,
        bytes.fromhex(block.prevhash_hex)[::-1],
        block.bits,
        bits_to_target(block.bits),
    )
    return job.session(en1, en2_size), en2.hex()


def test_vectors_are_real_blocks() -> None:
    """Independent of the cores: each vector's header hashes to its id and meets its nbits."""
    for block in (GENESIS, BLOCK_100000, BLOCK_542213):
        txids = [sha256d(block.coinbase_legacy)] + [bytes.fromhex(t)[::-1] for t in block.txids_hex]
        level = txids
        while len(level) > 1:
            level = level + level[-1:] if len(level) % 2 else level
            level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        header = struct.pack(
            "<I32s32sIII",
            block.version,
            bytes.fromhex(block.prevhash_hex)[::-1],
            level[0],
            block.ntime,
            block.bits,
            block.nonce,
        )
        hash_ = sha256d(header)
        assert hash_[::-1].hex() == block.hash_hex
        assert int.from_bytes(hash_, "little") <= bits_to_target(block.bits)


@pytest.mark.parametrize(
    "block", [GENESIS, BLOCK_100000, BLOCK_542213], ids=["genesis", "block-100000", "block-542213"]
)
def test_real_block_hash_at_every_split(core: Core, block: Block) -> None:
    """Wherever the extranonces sit (across every 64-byte boundary), the block's own hash."""
    target = bits_to_target(block.bits)
    for split in range(len(block.coinbase_legacy) - 12 + 1):
        session, en2_hex = job_for(core, block, split)
        hash_, share, network = session.check(
            en2_hex,
            f"{block.ntime:08x}",
            f"{block.nonce:08x}",
            None,
            0,
            target.to_bytes(32, "little"),
        )
        assert hash_[::-1].hex() == block.hash_hex, split
        assert share and network


def test_real_block_with_version_rolling(core: Core) -> None:
    """BIP310: bits inside the mask come from the miner, the job's own bits there are replaced."""
    block = BLOCK_542213
    share_target = MAX_TARGET_LE
    # the job's version has bits set inside the mask; the miner rolls them back to zero
    session, en2_hex = job_for(core, block, 42, version=0x20000000 | 0x0AB4E000)
    hash_, _, network = session.check(
        en2_hex, f"{block.ntime:08x}", f"{block.nonce:08x}", "00000000", BIP320_MASK, share_target
    )
    assert hash_[::-1].hex() == block.hash_hex and network
    # the job's bits outside the mask are kept: from job version 0 no rolling gives 0x20000000
    session, en2_hex = job_for(core, block, 42, version=0x0)
    hash_, _, network = session.check(
        en2_hex, f"{block.ntime:08x}", f"{block.nonce:08x}", "00000000", BIP320_MASK, share_target
    )
    assert hash_[::-1].hex() != block.hash_hex and not network
    # no version bits submitted: the job's version as is
    session, en2_hex = job_for(core, block, 42)
    hash_, _, _ = session.check(
        en2_hex, f"{block.ntime:08x}", f"{block.nonce:08x}", None, BIP320_MASK, share_target
    )
    assert hash_[::-1].hex() == block.hash_hex


def test_target_comparison_is_hash_le_target(core: Core) -> None:
    block = BLOCK_100000
    session, en2_hex = job_for(core, block, 30)
    args = (en2_hex, f"{block.ntime:08x}", f"{block.nonce:08x}", None, 0)
    hash_value = int.from_bytes(session.check(*args, MAX_TARGET_LE)[0], "little")
    assert session.check(*args, hash_value.to_bytes(32, "little"))[1] is True
    assert session.check(*args, (hash_value - 1).to_bytes(32, "little"))[1] is False
    assert session.check(*args, (hash_value + 1).to_bytes(32, "little"))[1] is True
    # the network target is the job's: exactly the hash meets it, one less does not
    branch = branch_from_txids([bytes.fromhex(t)[::-1] for t in block.txids_hex])
    cb = block.coinbase_legacy
    for network_target, expected in ((hash_value, True), (hash_value - 1, False)):
        job = core.job_core(
            cb[:30],
            cb[42:],
            branch,
            1,
            bytes.fromhex(block.prevhash_hex)[::-1],
            block.bits,
            network_target,
        )
        result = job.session(cb[30:34], 8).check(*args, MAX_TARGET_LE)
        assert result[2] is expected


def test_uppercase_hex_is_accepted(core: Core) -> None:
    block = BLOCK_100000
    session, en2_hex = job_for(core, block, 30)
    hash_, _, _ = session.check(
        en2_hex.upper(), f"{block.ntime:08X}", f"{block.nonce:08X}", None, 0, MAX_TARGET_LE
    )
    assert hash_[::-1].hex() == block.hash_hex


# --- malformed submits ---------------------------------------------------------------------------

GOOD = ("0011223344556677", "5f5e1000", "deadbeef", "00002000")

BAD_SUBMITS = [
    # (field, extranonce2, ntime, nonce, version_bits)
    ("extranonce2", "00112233445566", *GOOD[1:]),  # 7 bytes, size is 8
    ("extranonce2", "001122334455667788", *GOOD[1:]),  # 9 bytes
    ("extranonce2", "001122334455667", *GOOD[1:]),  # odd length
    ("extranonce2", "", *GOOD[1:]),
    ("extranonce2", "00112233445566zz", *GOOD[1:]),
    ("extranonce2", "0x11223344556677", *GOOD[1:]),
    ("extranonce2", " 011223344556677", *GOOD[1:]),  # bytes.fromhex would skip it
    ("extranonce2", "00112233 4556677", *GOOD[1:]),
    ("extranonce2", "001122334455667\u00e9", *GOOD[1:]),  # non-ASCII
    ("extranonce2", "\u0660" * 16, *GOOD[1:]),  # Arabic-Indic digits
    ("extranonce2", b"0011223344556677", *GOOD[1:]),  # bytes, not str
    ("extranonce2", 1122334455667, *GOOD[1:]),
    ("extranonce2", None, *GOOD[1:]),
    ("ntime", GOOD[0], "5f5e100", *GOOD[2:]),
    ("ntime", GOOD[0], "5f5e10000", *GOOD[2:]),
    ("ntime", GOOD[0], "5f5e100g", *GOOD[2:]),
    ("ntime", GOOD[0], "+5f5e100", *GOOD[2:]),
    ("ntime", GOOD[0], 0x5F5E1000, *GOOD[2:]),
    ("ntime", GOOD[0], "5f5e_100", *GOOD[2:]),
    ("nonce", *GOOD[:2], "deadbee", GOOD[3]),
    ("nonce", *GOOD[:2], "deadbeef0", GOOD[3]),
    ("nonce", *GOOD[:2], "-eadbeef", GOOD[3]),
    ("nonce", *GOOD[:2], "deadbeef\n", GOOD[3]),
    ("nonce", *GOOD[:2], None, GOOD[3]),
    ("version_bits", *GOOD[:3], "2000"),
    ("version_bits", *GOOD[:3], "0000200g"),
    ("version_bits", *GOOD[:3], "00002000 "),
    ("version_bits", *GOOD[:3], 0x2000),
    ("version_bits", *GOOD[:3], "20000000"),  # outside the mask
    ("version_bits", *GOOD[:3], "00001000"),  # just below the mask
    ("version_bits", *GOOD[:3], "ffffffff"),
]


def sample_session(core: Core, en2_size: int = 8) -> Any:
    job = core.job_core(
        b"\x01" * 70,
        b"\x02" * 100,
        [b"\x03" * 32] * 3,
        0x20000000,
        b"\x04" * 32,
        0x1D00FFFF,
        bits_to_target(0x1D00FFFF),
    )
    return job.session(b"\xaa\xbb\xcc\xdd", en2_size)


@pytest.mark.parametrize(("field", "en2", "ntime", "nonce", "bits"), BAD_SUBMITS)
def test_malformed_submit_names_the_field(
    core: Core, field: str, en2: Any, ntime: Any, nonce: Any, bits: Any
) -> None:
    session = sample_session(core)
    with pytest.raises(ShareFormatError) as info:
        session.check(en2, ntime, nonce, bits, BIP320_MASK, MAX_TARGET_LE)
    assert info.value.field == field
    assert info.value.index is None
    assert isinstance(info.value, ValueError)
    # in a batch: the same field and the submit's position; nothing is returned
    with pytest.raises(ShareFormatError) as info:
        session.check_batch(
            [GOOD, GOOD, (en2, ntime, nonce, bits), GOOD], BIP320_MASK, MAX_TARGET_LE
        )
    assert (info.value.field, info.value.index) == (field, 2)


def test_version_bits_without_negotiation(core: Core) -> None:
    """Mask 0 (nothing negotiated): only all-zero bits are acceptable, and change nothing."""
    session = sample_session(core)
    plain = session.check(*GOOD[:3], None, 0, MAX_TARGET_LE)
    assert session.check(*GOOD[:3], "00000000", 0, MAX_TARGET_LE) == plain
    with pytest.raises(ShareFormatError):
        session.check(*GOOD[:3], "00002000", 0, MAX_TARGET_LE)


@pytest.mark.parametrize("en2_size", [1, 3, 4, 8, 16, 32])
def test_extranonce2_sizes(core: Core, en2_size: int) -> None:
    session = sample_session(core, en2_size)
    session.check("ab" * en2_size, *GOOD[1:], BIP320_MASK, MAX_TARGET_LE)
    for wrong in (en2_size - 1, en2_size + 1):
        with pytest.raises(ShareFormatError):
            session.check("ab" * wrong, *GOOD[1:], BIP320_MASK, MAX_TARGET_LE)


def test_pool_side_arguments_are_validated(core: Core) -> None:
    ok = dict(
        coinb1=b"\x01" * 10,
        coinb2=b"\x02" * 10,
        merkle_branch=[b"\0" * 32],
        version=0x20000000,
        prevhash=b"\0" * 32,
        nbits=0x1D00FFFF,
        network_target=1 << 224,
    )
    core.job_core(**ok)
    for key, value in [
        ("prevhash", b"\0" * 31),
        ("prevhash", b"\0" * 33),
        ("merkle_branch", [b"\0" * 31]),
        ("merkle_branch", [b"\0" * 32, "00" * 32]),
        ("version", -1),
        ("version", 1 << 32),
        ("version", 1.0),
        ("nbits", -1),
        ("nbits", 1 << 32),
        ("network_target", -1),
        ("network_target", 1 << 256),
        ("network_target", 1.5),
    ]:
        with pytest.raises(ValueError):
            core.job_core(**{**ok, key: value})
    for key, value in [("coinb1", "00"), ("coinb2", None), ("prevhash", "00" * 32)]:
        with pytest.raises(TypeError):
            core.job_core(**{**ok, key: value})
    job = core.job_core(**ok)
    for size in (0, sharecore.MAX_EXTRANONCE2_SIZE + 1, -1):
        with pytest.raises(ValueError):
            job.session(b"\0" * 4, size)
    with pytest.raises(TypeError):
        job.session("00000000", 8)
    session = job.session(b"\0" * 4, 8)
    for mask in (-1, 1 << 32):
        with pytest.raises(ValueError):
            session.check(*GOOD, mask, MAX_TARGET_LE)
        with pytest.raises(ValueError):
            session.check_batch([GOOD], mask, MAX_TARGET_LE)
    for target in (b"\xff" * 31, b"\xff" * 33, bytearray(32), "ff" * 32):
        with pytest.raises(ValueError):
            session.check(*GOOD, BIP320_MASK, target)
        with pytest.raises(ValueError):
            session.check_batch([], BIP320_MASK, target)


def test_native_limit_matches_pure() -> None:
    if native is None:
        missing("native extension not built (poold._sharecore missing)")
    assert native.MAX_EXTRANONCE2_SIZE == sharecore.MAX_EXTRANONCE2_SIZE


# --- batch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 3, 16, 17, 64])
def test_batch_equals_single_checks(core: Core, n: int) -> None:
    session = sample_session(core)
    submits = [
        (
            f"{i:016x}",
            f"{0x5F5E1000 + i:08x}",
            f"{i * 7919:08x}",
            None if i % 3 == 0 else f"{(i << 13) & BIP320_MASK:08x}",
        )
        for i in range(n)
    ]
    target = (1 << 255).to_bytes(32, "little")
    expected = [session.check(*s, BIP320_MASK, target) for s in submits]
    assert session.check_batch(submits, BIP320_MASK, target) == expected
    assert session.check_batch(iter(submits), BIP320_MASK, target) == expected
    assert session.check_batch([list(s) for s in submits], BIP320_MASK, target) == expected
    assert len({h for h, _, _ in expected}) == n


def test_batch_from_threads(core: Core) -> None:
    """The native batch runs without the GIL; sessions are immutable, so threads may share one."""
    session = sample_session(core)
    submits = [(f"{i:016x}", "5f5e1000", f"{i:08x}", None) for i in range(200)]
    expected = session.check_batch(submits, 0, MAX_TARGET_LE)
    results: list[Any] = []

    def work() -> None:
        for _ in range(5):
            results.append(session.check_batch(submits, 0, MAX_TARGET_LE))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 20 and all(r == expected for r in results)


# --- parity on random jobs -----------------------------------------------------------------------


def available_job_cores() -> list[tuple[str, Any]]:
    cores: list[tuple[str, Any]] = [("pure", PureJobCore)]
    if native is not None:
        impls = ["portable"] + (["shani"] if native.shani_available() else [])
        cores += [(f"native-{impl}", native.JobCore) for impl in impls]
    return cores


hex32 = st.integers(0, 0xFFFFFFFF).map(lambda v: f"{v:08x}")


@st.composite
def random_case(draw: st.DrawFn) -> dict[str, Any]:
    en2_size = draw(st.integers(1, sharecore.MAX_EXTRANONCE2_SIZE))
    mask = draw(st.sampled_from([0, BIP320_MASK, 0xFFFFFFFF]) | st.integers(0, 0xFFFFFFFF))
    n = draw(st.integers(1, 5))
    submits = []
    for _ in range(n):
        bits = draw(st.none() | st.integers(0, 0xFFFFFFFF).map(lambda v, m=mask: v & m))
        submits.append(
            (
                draw(st.binary(min_size=en2_size, max_size=en2_size)).hex(),
                draw(hex32),
                draw(hex32),
                None if bits is None else f"{bits:08x}",
            )
        )
    return dict(
        coinb1=draw(st.binary(max_size=200)),
        extranonce1=draw(st.binary(max_size=12)),
        en2_size=en2_size,
        coinb2=draw(st.binary(max_size=300)),
        branch=draw(st.lists(st.binary(min_size=32, max_size=32), max_size=14)),
        version=draw(st.integers(0, 0xFFFFFFFF)),
        prevhash=draw(st.binary(min_size=32, max_size=32)),
        nbits=draw(st.integers(0, 0xFFFFFFFF)),
        mask=mask,
        submits=submits,
        # small targets (nothing passes), huge ones (everything passes), and the middle
        share_target=draw(
            st.sampled_from([0, 2**256 - 1])
            | st.integers(0, 2**256 - 1)
            | st.integers(0, 2**256 - 1).map(lambda v: v >> 1)
        ),
        network_target=draw(st.sampled_from([0, 2**256 - 1]) | st.integers(0, 2**256 - 1)),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=random_case())
def test_cores_agree_with_reference(case: dict[str, Any]) -> None:
    before = native.impl() if native is not None else None
    target_le = case["share_target"].to_bytes(32, "little")
    expected = [
        reference_check(
            case["coinb1"],
            case["extranonce1"],
            s[0],
            case["coinb2"],
            case["branch"],
            case["version"],
            case["prevhash"],
            case["nbits"],
            s[1],
            s[2],
            s[3],
            case["mask"],
            case["share_target"],
            case["network_target"],
        )
        for s in case["submits"]
    ]
    try:
        for name, job_core in available_job_cores():
            if native is not None and name.startswith("native-"):
                native.set_impl(name.removeprefix("native-"))
            job = job_core(
                case["coinb1"],
                case["coinb2"],
                case["branch"],
                case["version"],
                case["prevhash"],
                case["nbits"],
                case["network_target"],
            )
            session = job.session(case["extranonce1"], case["en2_size"])
            got = [session.check(*s, case["mask"], target_le) for s in case["submits"]]
            assert got == expected, name
            assert session.check_batch(case["submits"], case["mask"], target_le) == expected, name
    finally:
        if native is not None and before is not None:
            native.set_impl(before)


# near-valid strings (right length, one odd character, off by one) as well as arbitrary text
hexish = (
    st.text(alphabet="0123456789abcdefABCDEF", min_size=7, max_size=9)
    | st.text(alphabet="0123456789abcdef g+-_x\u0660\u00e9\n", min_size=8, max_size=8)
    | st.text(max_size=10)
)


@settings(max_examples=300, deadline=None)
@given(en2=hexish, ntime=hexish, nonce=hexish, bits=st.none() | hexish)
def test_cores_agree_on_arbitrary_text(en2: str, ntime: str, nonce: str, bits: str | None) -> None:
    """Native and pure accept and reject exactly the same strings, with the same field."""
    before = native.impl() if native is not None else None
    outcomes = set()
    try:
        for name, job_core in available_job_cores():
            if native is not None and name.startswith("native-"):
                native.set_impl(name.removeprefix("native-"))
            job = job_core(b"\x01" * 40, b"\x02" * 40, [], 1, b"\0" * 32, 0x1D00FFFF, 1 << 240)
            session = job.session(b"\0" * 4, 4)
            try:
                outcomes.add(session.check(en2, ntime, nonce, bits, 0xFFFFFFFF, MAX_TARGET_LE))
            except ShareFormatError as exc:
                outcomes.add(exc.field)
    finally:
        if native is not None and before is not None:
            native.set_impl(before)
    assert len(outcomes) == 1
    outcome = next(iter(outcomes))
    event("accepted" if isinstance(outcome, tuple) else f"rejected: {outcome}")


def test_large_coinbase(core: Core) -> None:
    """Firmware takes coinbases of up to 16 KB (docs/STRATUM.md §7): many cached blocks
    before the extranonces and many constant blocks after them."""
    rng = __import__("random").Random(16)
    coinb1, en1, coinb2 = rng.randbytes(1000), rng.randbytes(8), rng.randbytes(16_000)
    branch = [rng.randbytes(32) for _ in range(14)]
    prevhash = rng.randbytes(32)
    job = core.job_core(coinb1, coinb2, branch, 0x20000000, prevhash, 0x1D00FFFF, 1 << 255)
    session = job.session(en1, 16)
    submits = [(rng.randbytes(16).hex(), "6553f100", f"{i:08x}", "1fffe000") for i in range(3)]
    expected = [reference_check(coinb1, en1, en2, coinb2, branch, 0x20000000, prevhash,
                                0x1D00FFFF, ntime, nonce, bits, BIP320_MASK, 1 << 255, 1 << 255)
                for en2, ntime, nonce, bits in submits]
    target = (1 << 255).to_bytes(32, "little")
    assert [session.check(*s, BIP320_MASK, target) for s in submits] == expected
    assert session.check_batch(submits, BIP320_MASK, target) == expected


# --- the SHA-256 paths themselves ----------------------------------------------------------------


@pytest.mark.parametrize("impl", ["shani", "portable"])
def test_native_sha256_matches_hashlib(impl: str) -> None:
    if native is None:
        missing("native extension not built (poold._sharecore missing)")
    if impl == "shani" and not native.shani_available():
        pytest.skip("this CPU has no SHA extensions")
    before = native.impl()
    native.set_impl(impl)
    try:
        rng = __import__("random").Random(impl)
        for size in [*range(0, 260), 1000, 4096, 65537]:
            a, b = rng.randbytes(size), rng.randbytes(size)
            assert native.sha256(a) == hashlib.sha256(a).digest(), size
            assert native.sha256_pair(a, b) == (
                hashlib.sha256(a).digest(),
                hashlib.sha256(b).digest(),
            ), size
        assert native.sha256(b"abc").hex() == (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )  # FIPS 180-2 B.1
    finally:
        native.set_impl(before)


def test_set_impl_rejects_unknown_names() -> None:
    if native is None:
        missing("native extension not built (poold._sharecore missing)")
    before = native.impl()
    with pytest.raises(ValueError):
        native.set_impl("avx512")
    assert native.impl() == before


def test_native_session_is_made_by_the_job() -> None:
    if native is None:
        missing("native extension not built (poold._sharecore missing)")
    with pytest.raises(TypeError):
        native.SessionCore()


# --- the selector --------------------------------------------------------------------------------


def run_selector(env: dict[str, str], prelude: str = "") -> tuple[str, str]:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr,\n"
        "                    format='%(name)s %(message)s')\n"
        f"{prelude}\n"
        "from poold.bitcoin import sharecore\n"
        "print(sharecore.CORE, sharecore.JobCore.__module__)\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("POOLD_")}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout.strip(), proc.stderr


def test_selector_default_prefers_native() -> None:
    if native is None:
        missing("native extension not built (poold._sharecore missing)")
    out, err = run_selector({})
    expected = "native-shani" if native.shani_available() else "native-portable"
    assert out == f"{expected} poold._sharecore"
    assert err.count("poold.sharecore share core: ") == 1


def test_selector_env_forces_pure() -> None:
    out, err = run_selector({"POOLD_PURE_SHARECORE": "1"})
    assert out == "pure poold.bitcoin.sharecore"
    assert "poold.sharecore share core: pure Python (POOLD_PURE_SHARECORE is set)" in err


def test_selector_env_forces_portable_c() -> None:
    if native is None:
        missing("native extension not built (poold._sharecore missing)")
    out, _ = run_selector({"POOLD_SHARECORE_PORTABLE": "1"})
    assert out == "native-portable poold._sharecore"


def test_selector_falls_back_when_the_extension_cannot_load() -> None:
    # None in sys.modules makes `import poold._sharecore` raise ImportError, as a missing or
    # broken build would
    out, err = run_selector({}, "sys.modules['poold._sharecore'] = None")
    assert out == "pure poold.bitcoin.sharecore"
    assert "pure Python (native extension not available" in err
