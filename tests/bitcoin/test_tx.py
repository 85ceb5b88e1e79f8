"""tx.py on real mainnet transactions (legacy and BIP144), Core's parsing rules, Hypothesis
round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poold.bitcoin.block import parse_block
from poold.bitcoin.encoding import ByteReader, DecodeError
from poold.bitcoin.header import HEADER_SIZE
from poold.bitcoin.tx import NULL_OUTPOINT, OutPoint, Tx, TxIn, TxOut

from ._vectors import load_hex, load_json

BLOCK_542213 = load_hex("mainnet-block-542213.hex")
BLOCK_100000 = load_hex("mainnet-block-100000.hex")


def _raw_txs(block: bytes) -> list[bytes]:
    """Slice the raw transactions out of a block by walking it with Tx.read."""
    r = ByteReader(block)
    r.read(HEADER_SIZE)
    out = []
    for _ in range(r.compact_size()):
        start = r.pos
        Tx.read(r)
        out.append(block[start : r.pos])
    return out


def test_block_100000_txids() -> None:
    # The four txids of mainnet block 100000 as published (bitcoin wiki merkle example, explorers).
    expected = [
        "8c14f0db3df150123e6f3dbbf30f8b955a8249b62ac1d1ff16284aefa3d06d87",
        "fff2525b8931402dd09222c50775608f75787bd2b87e56995a7bdd30f79702c4",
        "6359f0868171b1d194cbee1af2f16ea598ae8fad666d9b012c8ed2b79a236ec4",
        "e9a66845e05d5abc0ad04ec80f774a7e585c6e8db975962d069a522137b80c1d",
    ]
    _, txs = parse_block(BLOCK_100000)
    assert [t.txid_hex for t in txs] == expected
    assert all(t.wtxid == t.txid for t in txs)
    assert txs[0].is_coinbase and not txs[1].is_coinbase
    assert txs[0].outputs[0].value == 50 * 100_000_000


def test_real_txs_reserialize_byte_exact() -> None:
    for block in (BLOCK_100000, BLOCK_542213):
        for raw in _raw_txs(block):
            tx = Tx.parse(raw)
            assert tx.serialize() == raw


def test_segwit_tx_fields() -> None:
    # Block 542213, tx 2: a P2SH-P2WPKH spend (scriptSig = push of 0014<20>, two witness items).
    raw = _raw_txs(BLOCK_542213)[2]
    assert raw[4:6] == b"\x00\x01"  # BIP144 marker and flag
    tx = Tx.parse(raw)
    assert tx.has_witness
    assert tx.inputs[0].script_sig.hex() == "160014dde2f1a9a4bfda011ba9ec4062990c7e1a531585"
    assert [len(w) for w in tx.inputs[0].witness] == [72, 33]
    legacy = tx.serialize_legacy()
    assert len(raw) - len(legacy) == 2 + 1 + 1 + 72 + 1 + 33  # marker/flag + witness stack
    assert tx.txid != tx.wtxid
    assert Tx.parse(legacy).txid == tx.txid
    assert tx.weight == len(legacy) * 3 + len(raw)
    assert tx.vsize == (tx.weight + 3) // 4


def test_block_542213_size_and_weight() -> None:
    # bitcoinjs-lib fixture figures for this block: size 2355, strippedSize 2209, weight 8982.
    _, txs = parse_block(BLOCK_542213)
    assert len(BLOCK_542213) == 2355
    stripped = 80 + 1 + sum(len(t.serialize_legacy()) for t in txs)
    assert stripped == 2209
    assert sum(t.weight for t in txs) + (80 + 1) * 4 == 8982
    assert [t.has_witness for t in txs] == [True, False, True, False]


def test_gbt_template_txs_match_core_ids() -> None:
    # Bitcoin Core v31's getblocktemplate gives, per tx, the raw data, txid, hash (wtxid) and
    # weight: our parse must agree on all of them.
    gbt = load_json("gbt-regtest-bitcoind-v31.json")
    for entry in gbt["transactions"]:
        tx = Tx.parse(bytes.fromhex(entry["data"]))
        assert tx.txid_hex == entry["txid"]
        assert tx.wtxid_hex == entry["hash"]
        assert tx.weight == entry["weight"]
        assert tx.serialize().hex() == entry["data"]


def test_superfluous_witness_rejected() -> None:
    # Marker+flag set but every witness stack empty: Core's "Superfluous witness record".
    raw = bytes.fromhex(
        "01000000000101" + "00" * 32 + "0000000000ffffffff0100f2052a01000000000000000000"
    )
    with pytest.raises(DecodeError, match="superfluous witness"):
        Tx.parse(raw)


def test_unknown_flag_rejected() -> None:
    raw = bytes.fromhex(
        "01000000000301" + "00" * 32 + "0000000000ffffffff0100f2052a01000000000101aa00000000"
    )
    with pytest.raises(DecodeError, match="unknown transaction optional data flag 0x02"):
        Tx.parse(raw)


def test_trailing_and_truncated() -> None:
    raw = _raw_txs(BLOCK_542213)[2]
    with pytest.raises(DecodeError, match="trailing"):
        Tx.parse(raw + b"\x00")
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            Tx.parse(raw[:cut])


def test_value_objects_validate() -> None:
    with pytest.raises(ValueError):
        OutPoint(b"\0" * 31, 0)
    with pytest.raises(ValueError):
        OutPoint(b"\0" * 32, 2**32)
    with pytest.raises(ValueError):
        TxIn(NULL_OUTPOINT, b"", sequence=-1)
    with pytest.raises(ValueError):
        TxOut(2**63, b"")
    with pytest.raises(ValueError):
        Tx(2**32, (), (), 0)
    assert NULL_OUTPOINT.is_null
    assert not OutPoint(b"\0" * 32, 0).is_null


# -- Hypothesis round trip ----------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
witness = st.lists(st.binary(max_size=80), max_size=4).map(tuple)
txin = st.builds(
    TxIn,
    st.builds(OutPoint, st.binary(min_size=32, max_size=32), u32),
    st.binary(max_size=120),
    u32,
    witness,
)
txout = st.builds(
    TxOut, st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=120)
)
# At least one input: a zero-input legacy tx is ambiguous with the BIP144 marker (as in Core).
txs = st.builds(
    Tx,
    u32,
    st.lists(txin, min_size=1, max_size=4).map(tuple),
    st.lists(txout, max_size=4).map(tuple),
    u32,
)


@given(txs)
def test_tx_roundtrip(tx: Tx) -> None:
    raw = tx.serialize()
    back = Tx.parse(raw)
    assert back == tx
    assert back.txid == tx.txid and back.wtxid == tx.wtxid
    assert Tx.parse(tx.serialize_legacy()).txid == tx.txid
    if not tx.has_witness:
        assert raw == tx.serialize_legacy() and tx.txid == tx.wtxid
    assert tx.weight == 3 * len(tx.serialize_legacy()) + len(raw)


@given(st.binary(max_size=300))
def test_parse_garbage_raises_decode_error_only(data: bytes) -> None:
    try:
        Tx.parse(data)
    except DecodeError:
        pass
