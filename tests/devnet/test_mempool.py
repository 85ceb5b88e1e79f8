"""Transactions: sendrawtransaction's checks and codes, coinbase maturity, conflicts with a
block, and the devnet's own segwit spends (anyone-can-spend P2WSH OP_TRUE)."""

from __future__ import annotations

from typing import Any

from poold.bitcoin.byteorder import hash_from_hex
from poold.bitcoin.script import p2wpkh_script
from poold.bitcoin.tx import OutPoint, Tx
from poold.devnet import DEVNET_SCRIPT, Devnet
from poold.devnet.node import WITNESS_SCRIPT
from tests.devnet.helpers import COINBASE_VALUE, build_block, coinbase_outpoint, rpc, rpc_error
from tests.devnet.helpers import spend as spend_to

PAYOUT = p2wpkh_script(b"\x05" * 20)


def spend(prevout: OutPoint, value: int, witness: bytes = WITNESS_SCRIPT,
          script: bytes = PAYOUT) -> Tx:
    return spend_to(prevout, value, script=script, witness=witness)


async def test_coinbase_maturity_is_100_blocks(devnet: Devnet) -> None:
    await devnet.generate(99)
    prevout = await coinbase_outpoint(devnet, 1)
    tx = spend(prevout, COINBASE_VALUE - 1000)
    code, msg = await rpc_error(devnet, "sendrawtransaction", tx.serialize().hex())
    assert code == -26 and msg.startswith("bad-txns-premature-spend-of-coinbase")
    try:
        await devnet.send_test_transaction()
    except RuntimeError as exc:
        assert "101" in str(exc)
    else:
        raise AssertionError("spent an immature coinbase")
    await devnet.generate(1)  # tip 100: the height-1 coinbase may go into block 101
    assert await rpc(devnet, "sendrawtransaction", tx.serialize().hex()) == tx.txid_hex
    (mined,) = await devnet.generate(1)
    assert tx.txid_hex in (await rpc(devnet, "getblock", mined))["tx"]


async def test_sendrawtransaction_rejections(devnet: Devnet) -> None:
    await devnet.generate(101)
    prevout = await coinbase_outpoint(devnet, 1)
    good = spend(prevout, COINBASE_VALUE - 1000)
    code, msg = await rpc_error(devnet, "sendrawtransaction", "0200")
    assert code == -22
    missing = spend(OutPoint(b"\x42" * 32, 0), 1000)
    assert await rpc_error(devnet, "sendrawtransaction", missing.serialize().hex()) == (
        -25, "bad-txns-inputs-missingorspent"
    )
    over = spend(prevout, COINBASE_VALUE + 1)
    code, msg = await rpc_error(devnet, "sendrawtransaction", over.serialize().hex())
    assert code == -26 and msg.startswith("bad-txns-in-belowout")
    bad_witness = spend(prevout, COINBASE_VALUE - 1000, witness=b"\x52")
    code, msg = await rpc_error(devnet, "sendrawtransaction", bad_witness.serialize().hex())
    assert code == -26 and msg.startswith("mandatory-script-verify-flag-failed")
    greedy = spend(prevout, 100_000)  # ~50 BTC fee: above the default maxfeerate
    code, msg = await rpc_error(devnet, "sendrawtransaction", greedy.serialize().hex())
    assert code == -25 and msg.startswith("Fee exceeds maximum")
    assert await rpc(devnet, "sendrawtransaction", good.serialize().hex()) == good.txid_hex
    # The same transaction again is not an error (bitcoind returns the txid).
    assert await rpc(devnet, "sendrawtransaction", good.serialize().hex()) == good.txid_hex
    double = spend(prevout, COINBASE_VALUE - 5000)
    assert await rpc_error(devnet, "sendrawtransaction", double.serialize().hex()) == (
        -26, "txn-mempool-conflict"
    )
    # maxfeerate 0 disables the fee cap (the coin is spent in the mempool though).
    other = spend(await coinbase_outpoint(devnet, 2), 100_000)
    assert await rpc(devnet, "sendrawtransaction", other.serialize().hex(), 0) == other.txid_hex
    (mined,) = await devnet.generate(1)
    assert await rpc(devnet, "getrawmempool") == []
    code, msg = await rpc_error(devnet, "sendrawtransaction", good.serialize().hex())
    assert (code, msg) == (-27, "Transaction outputs already in utxo set")
    assert mined == devnet.tip_hash_hex


async def test_send_test_transaction_outputs_and_fee(devnet: Devnet) -> None:
    await devnet.generate(101)
    txid = await devnet.send_test_transaction(fee_sat=1234, outputs=[(PAYOUT, 10_000)])
    gbt: dict[str, Any] = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    (entry,) = gbt["transactions"]
    assert entry["txid"] == txid and entry["fee"] == 1234
    tx = Tx.parse(bytes.fromhex(entry["data"]))
    assert tx.has_witness and entry["hash"] == tx.wtxid_hex and entry["weight"] == tx.weight
    assert [o.script_pubkey for o in tx.outputs] == [PAYOUT, DEVNET_SCRIPT]
    assert tx.outputs[0].value == 10_000
    assert sum(o.value for o in tx.outputs) == COINBASE_VALUE - 1234
    assert await rpc(devnet, "getrawmempool") == [txid]


async def test_block_with_a_conflicting_spend_evicts_the_mempool_tx(devnet: Devnet) -> None:
    await devnet.generate(101)
    prevout = await coinbase_outpoint(devnet, 1)
    in_mempool = spend(prevout, COINBASE_VALUE - 1000)
    await rpc(devnet, "sendrawtransaction", in_mempool.serialize().hex())
    gbt = await rpc(devnet, "getblocktemplate", {"rules": ["segwit"]})
    conflicting = spend(prevout, COINBASE_VALUE - 3000, script=DEVNET_SCRIPT)
    gbt = dict(gbt, coinbasevalue=COINBASE_VALUE + 3000, transactions=[{
        "data": conflicting.serialize().hex(), "txid": conflicting.txid_hex,
        "hash": conflicting.wtxid_hex, "depends": [], "fee": 3000, "sigops": 0,
        "weight": conflicting.weight,
    }])
    built = build_block(gbt, payout_script=PAYOUT, commitment="recompute")
    assert await rpc(devnet, "submitblock", built.raw.hex()) is None
    assert await rpc(devnet, "getrawmempool") == []
    assert hash_from_hex(conflicting.txid_hex) == conflicting.txid


async def test_two_nodes_share_blocks(devnet_factory) -> None:  # type: ignore[no-untyped-def]
    a: Devnet = await devnet_factory()
    b: Devnet = await devnet_factory()
    assert a.rpc_url != b.rpc_url and a.zmq_url != b.zmq_url
    hashes = await a.generate(3)
    for h in hashes:
        assert await rpc(b, "submitblock", await rpc(a, "getblock", h, 0)) is None
    assert b.tip_hash_hex == a.tip_hash_hex == hashes[-1]
