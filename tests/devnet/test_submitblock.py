"""submitblock against the kernel: blocks assembled by poold's primitives from devnet templates
with transactions are accepted and become the tip; each invalid variant gets Bitcoin Core's
reason string (BIP22) and leaves the tip alone."""

from __future__ import annotations

from typing import Any

import pytest

from poold.bitcoin.address import Network, p2wpkh_address
from poold.bitcoin.byteorder import hash_to_hex
from poold.bitcoin.merkle import witness_commitment
from poold.bitcoin.script import p2wpkh_script, witness_commitment_script
from poold.devnet import Devnet
from tests.devnet.helpers import (
    COINBASE_VALUE,
    build_block,
    coinbase_outpoint,
    rpc,
    rpc_error,
    rpc_raw,
    spend,
)

PAYOUT = p2wpkh_script(bytes(range(20)))


async def funded(dn: Devnet, ntx: int = 2) -> dict[str, Any]:
    """Mature coinbases, put `ntx` segwit spends (one chained) in the mempool, return a GBT."""
    await dn.generate(101)
    await dn.send_test_transaction(fee_sat=1500)
    for _ in range(ntx - 1):
        await dn.send_test_transaction(fee_sat=700, unconfirmed=True)
    gbt: dict[str, Any] = await rpc(dn, "getblocktemplate", {"rules": ["segwit"]})
    assert len(gbt["transactions"]) == ntx
    return gbt


async def test_block_with_transactions_is_accepted_and_becomes_tip(devnet: Devnet) -> None:
    gbt = await funded(devnet, 3)
    fees = sum(t["fee"] for t in gbt["transactions"])
    assert fees == 1500 + 700 + 700
    assert gbt["coinbasevalue"] == 50 * 100_000_000 + fees
    assert gbt["transactions"][1]["depends"] == [1]
    built = build_block(gbt, payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", built.raw.hex()) is None
    assert await rpc(devnet, "getbestblockhash") == built.header.hash_hex
    assert await rpc(devnet, "getblockcount") == gbt["height"]
    block = await rpc(devnet, "getblock", built.header.hash_hex, 1)
    assert block["tx"][1:] == [t["txid"] for t in gbt["transactions"]]
    # Mined transactions leave the mempool; the next template is on the new tip and empty.
    assert await rpc(devnet, "getrawmempool") == []
    nxt = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    assert nxt["previousblockhash"] == built.header.hash_hex
    assert nxt["transactions"] == []
    # Resubmitting the same block: bitcoind says "duplicate".
    assert await rpc(devnet, "submitblock", built.raw.hex()) == "duplicate"


async def test_coinbase_only_block_from_template_is_accepted(devnet: Devnet) -> None:
    gbt = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    built = build_block(gbt, payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", built.raw.hex()) is None
    assert devnet.tip_hash_hex == built.header.hash_hex


@pytest.mark.parametrize(
    ("knobs", "reason"),
    [
        ({"merkle_root_override": b"\x11" * 32}, "bad-txnmrklroot"),
        ({"drop_tx": 0}, "bad-txns-inputs-missingorspent"),  # child without its parent
        ({"pay_extra": 1}, "bad-cb-amount"),
        ({"commitment": None}, "unexpected-witness"),  # witness txs, no commitment
        ({"wrong_commitment": True}, "bad-witness-merkle-match"),
        ({"height_delta": 1}, "bad-cb-height"),
        ({"meet_target": False}, "high-hash"),
    ],
    ids=["merkle", "missing-parent", "overpay", "no-commitment", "wrong-commitment",
         "bip34-height", "high-hash"],
)
async def test_invalid_block_is_rejected_with_core_reason(
    devnet: Devnet, knobs: dict[str, Any], reason: str
) -> None:
    gbt = await funded(devnet)
    tip = devnet.tip_hash_hex
    kw: dict[str, Any] = {}
    if "merkle_root_override" in knobs:
        kw["merkle_root_override"] = knobs["merkle_root_override"]
    if "drop_tx" in knobs:
        kw["drop_tx"] = knobs["drop_tx"]
        kw["commitment"] = "recompute"
    if "pay_extra" in knobs:
        kw["pay"] = gbt["coinbasevalue"] + knobs["pay_extra"]
    if "commitment" in knobs:
        kw["commitment"] = knobs["commitment"]
    if "wrong_commitment" in knobs:
        kw["commitment"] = witness_commitment_script(witness_commitment([b"\x22" * 32]))
    if "height_delta" in knobs:
        kw["height"] = gbt["height"] + knobs["height_delta"]
    if "meet_target" in knobs:
        kw["meet_target"] = knobs["meet_target"]
    built = build_block(gbt, payout_script=PAYOUT, **kw)
    assert await rpc(devnet, "submitblock", built.raw.hex()) == reason
    assert await rpc(devnet, "getbestblockhash") == tip
    # The same template, built honestly, is still good: the rejection was about the variant.
    good = build_block(gbt, payout_script=PAYOUT, extranonce2=b"\x07" * 8)
    assert await rpc(devnet, "submitblock", good.raw.hex()) is None


async def test_overpaying_block_is_stored_but_rejected(devnet: Devnet) -> None:
    """The kernel stores the block before ConnectBlock fails: "processed" is not "accepted"."""
    gbt = await funded(devnet)
    bad = build_block(gbt, payout_script=PAYOUT, pay=gbt["coinbasevalue"] + 1)
    assert await rpc(devnet, "submitblock", bad.raw.hex()) == "bad-cb-amount"
    assert await rpc(devnet, "submitblock", bad.raw.hex()) == "duplicate-invalid"
    header = await rpc(devnet, "getblockheader", bad.header.hash_hex)
    assert header["confirmations"] == -1
    # A child of the invalid block: bad-prevblk.
    child_gbt = dict(gbt, height=gbt["height"] + 1, transactions=[],
                     previousblockhash=bad.header.hash_hex,
                     coinbasevalue=50 * 100_000_000)
    child = build_block(child_gbt, payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", child.raw.hex()) == "bad-prevblk"


async def test_stale_and_unknown_prevhash(devnet: Devnet) -> None:
    await devnet.generate(3)
    stale_gbt = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    await devnet.generate(1)
    # A valid block on the previous tip: stored as an equal-work fork, not connected.
    stale = build_block(stale_gbt, payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", stale.raw.hex()) == "inconclusive"
    assert devnet.tip_hash_hex != stale.header.hash_hex
    assert (await rpc(devnet, "getblockheader", stale.header.hash_hex))["confirmations"] == -1
    unknown = build_block(stale_gbt, payout_script=PAYOUT, prevhash_hex="ab" * 32)
    assert await rpc(devnet, "submitblock", unknown.raw.hex()) == "prev-blk-not-found"


async def test_undecodable_block_is_a_deserialization_error(devnet: Devnet) -> None:
    assert await rpc_error(devnet, "submitblock", "00") == (-22, "Block decode failed")
    assert (await rpc_error(devnet, "submitblock", "zz"))[0] == -22


async def test_reorg_moves_transactions_back_to_the_mempool(devnet: Devnet) -> None:
    gbt = await funded(devnet, 1)
    txid = gbt["transactions"][0]["txid"]
    fork_parent = devnet.tip_hash_hex
    (mined,) = await devnet.generate(1)
    assert txid in (await rpc(devnet, "getblock", mined))["tx"]
    assert await rpc(devnet, "getrawmempool") == []
    # Two empty blocks on the parent of `mined`: more work, the kernel reorgs to them.
    fork1_gbt = dict(gbt, transactions=[], coinbasevalue=50 * 100_000_000,
                     default_witness_commitment=witness_commitment_script(
                         witness_commitment([])).hex())
    fork1 = build_block(fork1_gbt, payout_script=PAYOUT, extranonce2=b"\x09" * 8)
    assert await rpc(devnet, "submitblock", fork1.raw.hex()) == "inconclusive"
    fork2_gbt = dict(fork1_gbt, height=gbt["height"] + 1,
                     previousblockhash=fork1.header.hash_hex)
    fork2 = build_block(fork2_gbt, payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", fork2.raw.hex()) is None
    assert devnet.tip_hash_hex == fork2.header.hash_hex
    assert (await rpc(devnet, "getblockheader", mined))["confirmations"] == -1
    assert (await rpc(devnet, "getblockheader", fork_parent))["nextblockhash"] == hash_to_hex(
        fork1.header.hash
    )
    assert await rpc(devnet, "getrawmempool") == [txid]
    again = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    assert [t["txid"] for t in again["transactions"]] == [txid]


async def test_generatetoaddress_pays_the_address(devnet: Devnet) -> None:
    address = p2wpkh_address(bytes(range(20)), Network.REGTEST)
    hashes = await rpc(devnet, "generatetoaddress", 2, address)
    assert len(hashes) == 2 and hashes[-1] == devnet.tip_hash_hex
    raw = bytes.fromhex(await rpc(devnet, "getblock", hashes[0], 0))
    assert PAYOUT in raw
    code, msg = await rpc_error(devnet, "generatetoaddress", 1, "bc1qnotanaddress")
    assert (code, msg) == (-5, "Error: Invalid address")


async def test_header_rules_time_and_bits(devnet: Devnet) -> None:
    await devnet.generate(12)
    gbt = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    too_old = build_block(dict(gbt, curtime=gbt["mintime"] - 1), payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", too_old.raw.hex()) == "time-too-old"
    too_new = build_block(dict(gbt, curtime=gbt["curtime"] + 3 * 3600), payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", too_new.raw.hex()) == "time-too-new"
    easier = build_block(dict(gbt, bits="207ffffe"), payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", easier.raw.hex()) == "bad-diffbits"
    at_mintime = build_block(dict(gbt, curtime=gbt["mintime"]), payout_script=PAYOUT)
    assert await rpc(devnet, "submitblock", at_mintime.raw.hex()) is None


async def test_mutated_blocks_never_break_the_node(devnet: Devnet) -> None:
    """Flip one byte at many offsets of a valid block with transactions: every answer is a
    BIP22 string (or null if the mutation happens to still be a valid block, e.g. in the
    nonce), a decode error, and the devnet's view never leaves the kernel's tip."""
    gbt = await funded(devnet, 2)
    good = build_block(gbt, payout_script=PAYOUT).raw
    answers: set[str] = set()
    for offset in range(0, len(good), 7):
        mutated = bytearray(good)
        mutated[offset] ^= 0x5A
        tip_before = devnet.tip_hash_hex
        _, reply = await rpc_raw(devnet, "submitblock", bytes(mutated).hex())
        if reply["error"] is not None:
            assert reply["error"]["code"] == -22, reply
            answers.add("decode")
            continue
        result = reply["result"]
        assert result is None or isinstance(result, str)
        answers.add(str(result))
        if result is not None:
            assert devnet.tip_hash_hex == tip_before
        assert await rpc(devnet, "getbestblockhash") == devnet.tip_hash_hex
    assert "500" not in answers and len(answers) >= 3
    assert not any(a.startswith("Internal") for a in answers)


async def test_block_with_a_bad_script_gets_the_full_core_reason(devnet: Devnet) -> None:
    await devnet.generate(101)
    gbt = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    bad = spend(await coinbase_outpoint(devnet, 1), COINBASE_VALUE - 1000, script=PAYOUT,
                witness=b"\x52")
    gbt = dict(gbt, coinbasevalue=COINBASE_VALUE + 1000, transactions=[{
        "data": bad.serialize().hex(), "txid": bad.txid_hex, "hash": bad.wtxid_hex,
        "depends": [], "fee": 1000, "sigops": 0, "weight": bad.weight}])
    built = build_block(gbt, payout_script=PAYOUT, commitment="recompute")
    assert await rpc(devnet, "submitblock", built.raw.hex()) == (
        "block-script-verify-flag-failed (Witness program hash mismatch)"
    )


def test_reason_parsing_from_kernel_log_lines() -> None:
    from poold.devnet.kernel import _reason_from_log

    h = bytes(range(32))
    hh = h[::-1].hex()
    assert _reason_from_log(
        [f"T ConnectTip: ConnectBlock {'00' * 32} failed, other, x\n",
         f"T [error] ConnectTip: ConnectBlock {hh} failed, bad-cb-amount, coinbase pays\n"], h
    ) == "bad-cb-amount"
    assert _reason_from_log(
        ["T [error] ProcessNewBlock: AcceptBlock FAILED (bad-prevblk)\n"], h) == "bad-prevblk"
    assert _reason_from_log(
        ["T ProcessNewBlock: AcceptBlock FAILED (x-failed (Detail here), input 0)\n"], h
    ) == "x-failed (Detail here)"
    assert _reason_from_log(["T UpdateTip: new best=...\n"], h) is None
