"""block.py: a block assembled by poold from a real Bitcoin Core v31 getblocktemplate re-parses to
the template's txids and merkle root and carries the template's witness commitment, which equals
our own computation from the template's wtxids. Real mainnet blocks parse and re-serialize."""

from __future__ import annotations

from typing import Any

import pytest

from poold.bitcoin.address import Network, address_to_script
from poold.bitcoin.block import assemble_block, find_witness_commitment, parse_block
from poold.bitcoin.byteorder import hash_from_hex
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.encoding import DecodeError
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import coinbase_branch, merkle_root, root_from_branch, witness_commitment
from poold.bitcoin.script import bip34_height, bip34_height_push
from poold.bitcoin.tx import Tx, TxOut

from ._vectors import load_hex, load_json

GBT: dict[str, Any] = load_json("gbt-regtest-bitcoind-v31.json")
# Core's test-framework regtest address (P2WSH of OP_TRUE) as the payout.
PAYOUT = "bcrt1qft5p2uhsdcdc3l2ua4ap5qqfg4pjaqlp250x7us7a8qqhrxrxfsqseac85"


def _assemble_from_gbt() -> tuple[bytes, Tx, BlockHeader]:
    commitment_script = bytes.fromhex(GBT["default_witness_commitment"])
    parts = build_coinbase(
        GBT["height"],
        [TxOut(GBT["coinbasevalue"], address_to_script(PAYOUT, Network.REGTEST))],
        tag=b"/poold/",
        witness_commitment_script=commitment_script,
        max_value=GBT["coinbasevalue"],
    )
    coinbase = parts.assemble(bytes.fromhex("00000001"), bytes.fromhex("0000000000000002"))
    txids = [hash_from_hex(t["txid"]) for t in GBT["transactions"]]
    root = root_from_branch(coinbase.txid, coinbase_branch(txids))
    header = BlockHeader(
        GBT["version"],
        hash_from_hex(GBT["previousblockhash"]),
        root,
        GBT["curtime"],
        int(GBT["bits"], 16),
        0,
    )
    raw_txs = [bytes.fromhex(t["data"]) for t in GBT["transactions"]]
    return assemble_block(header.serialize(), coinbase, raw_txs), coinbase, header


def test_gbt_block_reparses_to_template() -> None:
    block, coinbase, header = _assemble_from_gbt()
    parsed_header, txs = parse_block(block)
    assert parsed_header == header
    assert txs[0] == coinbase
    assert [t.txid for t in txs[1:]] == [hash_from_hex(t["txid"]) for t in GBT["transactions"]]
    assert [t.wtxid for t in txs[1:]] == [hash_from_hex(t["hash"]) for t in GBT["transactions"]]
    assert merkle_root([t.txid for t in txs]) == parsed_header.merkle_root
    # Layout submitblock expects: header, CompactSize count, coinbase in witness form, GBT data.
    assert block[80] == 1 + len(GBT["transactions"])
    assert block[81:].startswith(coinbase.serialize())
    assert block.endswith(b"".join(bytes.fromhex(t["data"]) for t in GBT["transactions"]))
    assert parsed_header.prevhash == bytes.fromhex(GBT["previousblockhash"])[::-1]


def test_gbt_block_witness_commitment() -> None:
    block, _, _ = _assemble_from_gbt()
    _, txs = parse_block(block)
    cb = txs[0]
    assert cb.inputs[0].witness == (b"\0" * 32,)
    assert cb.inputs[0].script_sig.startswith(bip34_height_push(GBT["height"]))
    assert bip34_height(cb.inputs[0].script_sig) == GBT["height"]
    committed = find_witness_commitment(cb)
    # Core's default_witness_commitment is the full script 6a24aa21a9ed<32 bytes>.
    assert committed is not None
    assert committed.hex() == GBT["default_witness_commitment"][12:]
    # ... and equals sha256d(witness root || zero reserved) from the template's wtxids.
    assert committed == witness_commitment([t.wtxid for t in txs[1:]], cb.inputs[0].witness[0])
    assert committed == witness_commitment([hash_from_hex(t["hash"]) for t in GBT["transactions"]])


def test_gbt_coinbase_pays_the_value() -> None:
    _, txs = parse_block(_assemble_from_gbt()[0])
    assert sum(o.value for o in txs[0].outputs) == GBT["coinbasevalue"]
    fees = sum(t["fee"] for t in GBT["transactions"])
    assert GBT["coinbasevalue"] - fees == 50 * 10**8  # regtest subsidy at height 102


@pytest.mark.parametrize("name", ["mainnet-block-100000.hex", "mainnet-block-542213.hex"])
def test_real_blocks_roundtrip(name: str) -> None:
    raw = load_hex(name)
    header, txs = parse_block(raw)
    assert assemble_block(header.serialize(), txs[0], [t.serialize() for t in txs[1:]]) == raw


def test_parse_errors() -> None:
    raw = load_hex("mainnet-block-100000.hex")
    with pytest.raises(DecodeError, match="trailing"):
        parse_block(raw + b"\0")
    with pytest.raises(DecodeError):
        parse_block(raw[:-1])
    with pytest.raises(DecodeError, match="no transactions"):
        parse_block(raw[:80] + b"\x00")


def test_assemble_checks() -> None:
    raw = load_hex("mainnet-block-100000.hex")
    header, txs = parse_block(raw)
    with pytest.raises(ValueError, match="80 bytes"):
        assemble_block(header.serialize()[:79], txs[0], [])
    with pytest.raises(ValueError, match="coinbase"):
        assemble_block(header.serialize(), txs[1], [])


def test_find_witness_commitment_highest_index_wins() -> None:
    _, txs = parse_block(load_hex("mainnet-block-542213.hex"))
    cb = txs[0]
    other = TxOut(0, bytes.fromhex("6a24aa21a9ed") + b"\x11" * 32)
    later = Tx(cb.version, cb.inputs, (*cb.outputs, other), cb.locktime)
    earlier = Tx(cb.version, cb.inputs, (other, *cb.outputs), cb.locktime)
    assert find_witness_commitment(later) == b"\x11" * 32
    assert find_witness_commitment(earlier) == find_witness_commitment(cb)
    _, legacy_txs = parse_block(load_hex("mainnet-block-100000.hex"))
    assert find_witness_commitment(legacy_txs[0]) is None
