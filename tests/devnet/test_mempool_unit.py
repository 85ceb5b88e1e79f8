"""The mempool and chain view as pure logic (no kernel): selection order and limits, conflict
eviction with descendants, finality, BIP68, sigop costs, the UTXO undo on disconnect."""

from __future__ import annotations

import pytest

from poold.bitcoin.header import BlockHeader
from poold.bitcoin.script import bip34_height_push, p2pkh_script, p2wpkh_script, p2wsh_script
from poold.bitcoin.tx import NULL_OUTPOINT, OutPoint, Tx, TxIn, TxOut
from poold.devnet.chainstate import ChainView, Coin, UtxoSet, block_subsidy
from poold.devnet.mempool import Mempool, TxRejected, tx_sigop_cost

ANYONE = p2wsh_script(b"\x51")


def coinbase(height: int) -> Tx:
    return Tx(2, (TxIn(NULL_OUTPOINT, bip34_height_push(height) + b"\0"),),
              (TxOut(block_subsidy(height), ANYONE),), 0)


def chain_of(n: int, t0: int = 1_700_000_000) -> tuple[ChainView, UtxoSet, list[Tx]]:
    genesis = BlockHeader(1, b"\0" * 32, b"\1" * 32, t0, 0x207FFFFF, 0)
    view, utxos, cbs = ChainView(genesis.hash, genesis), UtxoSet(), []
    prev = genesis
    for h in range(1, n + 1):
        cb = coinbase(h)
        header = BlockHeader(0x20000000, prev.hash, cb.txid, t0 + h, 0x207FFFFF, h)
        view.connect(header.hash, header, h)
        utxos.connect_block(header.hash, h, [cb])
        cbs.append(cb)
        prev = header
    return view, utxos, cbs


def spend(prevout: OutPoint, value: int, *, sequence: int = 0xFFFFFFFD, locktime: int = 0,
          script: bytes = ANYONE) -> Tx:
    return Tx(2, (TxIn(prevout, b"", sequence, (b"\x51",)),), (TxOut(value, script),), locktime)


def test_select_keeps_dependency_order_and_weight_limit() -> None:
    view, utxos, cbs = chain_of(110)
    pool = Mempool()
    one = spend(OutPoint(cbs[0].txid, 0), block_subsidy(1) - 1000)
    parent = Tx(2, one.inputs, (*one.outputs, TxOut(0, b"\x6a" + b"\0" * 40)), 0)  # heavier
    child = spend(OutPoint(parent.txid, 0), block_subsidy(1) - 2000)
    other = spend(OutPoint(cbs[1].txid, 0), block_subsidy(2) - 1000)
    assert parent.weight > other.weight == child.weight
    for tx in (parent, child, other):
        pool.accept(tx, utxos, view)
    entries = pool.select()
    assert [e.txid for e in entries] == [parent.txid, child.txid, other.txid]
    assert entries[1].parents == {parent.txid} and entries[1].fee == 1000
    # Too little room for the parent: its child must be left out too.
    small = pool.select(max_weight=parent.weight - 1)
    assert [e.txid for e in small] == [other.txid]


def test_block_conflict_evicts_descendants() -> None:
    view, utxos, cbs = chain_of(110)
    pool = Mempool()
    parent = spend(OutPoint(cbs[0].txid, 0), block_subsidy(1) - 1000)
    child = spend(OutPoint(parent.txid, 0), block_subsidy(1) - 2000)
    pool.accept(parent, utxos, view)
    pool.accept(child, utxos, view)
    rival = spend(OutPoint(cbs[0].txid, 0), block_subsidy(1) - 5000, script=b"\x6a")
    before = pool.updates
    pool.remove_for_block([coinbase(111), rival])
    assert len(pool) == 0 and pool.updates > before
    assert pool.spender(OutPoint(cbs[0].txid, 0)) is None


def test_finality_and_bip68() -> None:
    view, utxos, cbs = chain_of(110)
    pool = Mempool()
    coin = OutPoint(cbs[0].txid, 0)
    with pytest.raises(TxRejected, match="non-final"):
        pool.accept(spend(coin, 1000, locktime=112), utxos, view)
    pool.accept(spend(coin, 1000, locktime=110), utxos, view)  # < next height 111: final
    # Relative lock of 20 blocks on the height-5 coinbase (BIP68): satisfied at height 111.
    pool.accept(spend(OutPoint(cbs[4].txid, 0), 1000, sequence=20), utxos, view)
    # ... but not 200 blocks.
    with pytest.raises(TxRejected, match="non-BIP68-final"):
        pool.accept(spend(OutPoint(cbs[5].txid, 0), 1000, sequence=200), utxos, view)


def test_sigop_costs() -> None:
    legacy_out = Tx(2, (TxIn(OutPoint(b"\1" * 32, 0), b""),), (TxOut(1, p2pkh_script(b"\2" * 20)),))
    assert tx_sigop_cost(legacy_out, [Coin(10, ANYONE, 1, False)]) == 4
    wpkh = Tx(2, (TxIn(OutPoint(b"\1" * 32, 0), b"", witness=(b"sig", b"key")),),
              (TxOut(1, ANYONE),))
    assert tx_sigop_cost(wpkh, [Coin(10, p2wpkh_script(b"\3" * 20), 1, False)]) == 1
    two_of_three = bytes([0x52]) + b"".join(b"\x21" + bytes([2]) + b"\4" * 32 for _ in range(3)) \
        + bytes([0x53, 0xAE])
    wsh = Tx(2, (TxIn(OutPoint(b"\1" * 32, 0), b"", witness=(b"", b"s1", b"s2", two_of_three)),),
             (TxOut(1, ANYONE),))
    assert tx_sigop_cost(wsh, [Coin(10, p2wsh_script(two_of_three), 1, False)]) == 3


def test_utxo_disconnect_restores_spent_coins() -> None:
    view, utxos, cbs = chain_of(101)
    spent = OutPoint(cbs[0].txid, 0)
    tx = spend(spent, block_subsidy(1) - 1000)
    block_hash = b"\x77" * 32
    utxos.connect_block(block_hash, 102, [coinbase(102), tx])
    assert spent not in utxos and OutPoint(tx.txid, 0) in utxos
    utxos.disconnect_block(block_hash, [coinbase(102), tx])
    assert utxos.get(spent) == Coin(block_subsidy(1), ANYONE, 1, True)
    assert OutPoint(tx.txid, 0) not in utxos
    assert view.median_time_past() == view.header_at(96).ntime
