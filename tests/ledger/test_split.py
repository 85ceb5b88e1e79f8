"""The split coinbase end to end: planned from the ledger's PPLNS window, built with poold's
coinbase code, accepted by the devnet (Bitcoin Core's consensus), recorded, reconciled."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.bitcoin.block import assemble_block
from poold.bitcoin.coinbase import build_coinbase
from poold.bitcoin.header import BlockHeader
from poold.bitcoin.merkle import merkle_root
from poold.bitcoin.target import bits_to_target, target_to_difficulty
from poold.bitcoin.template import parse_gbt
from poold.bitcoin.tx import TxOut
from poold.ledger.chain import commitment_script
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.ledger.records import FoundBlock
from tests.ledger.helpers import share


def addr(n: int) -> str:
    return p2wpkh_address(bytes([n]) * 20, Network.REGTEST)


@pytest.mark.slow
async def test_split_coinbase_accepted_by_the_devnet(devnet: Any, tmp_path: Path) -> None:
    from poold.node.reader import NodeReader
    from poold.node.rpc import RpcClient

    await devnet.generate(1)
    cfg = LedgerConfig(url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}", state_dir=str(tmp_path),
                       payout="split", network="regtest", fee_address=addr(200), fee_percent=1.5,
                       dust_sat=10_000, max_outputs=3, pplns_window_factor=1.0)
    ledger = Ledger(cfg)
    await ledger.start()
    rpc = RpcClient(devnet.rpc_url, user=devnet.rpc_user, password=devnet.rpc_password)
    await rpc.start()
    try:
        gbt = await rpc.call("getblocktemplate", {"rules": ["segwit"]})
        template = parse_gbt(gbt, received_at=time.time())
        netdiff = target_to_difficulty(template.target)
        # Five accounts in the window; the smallest two below dust or beyond max_outputs.
        t0 = time.time() - 60
        for i, (n, weight) in enumerate([(1, 40), (2, 30), (3, 20), (4, 9.99), (5, 0.01)]):
            ledger.record_share(share(i, account=addr(n), difficulty=netdiff * weight / 100,
                                      t=t0 + i))
        await ledger.flush()
        # As poold run's planner does for each template.
        planned = await ledger.coinbase_outputs(template.coinbase_value, netdiff)
        outputs = [TxOut(v, s) for s, v in planned]
        net = Network.REGTEST
        fee = template.coinbase_value * 15_000 // 1_000_000
        head = await ledger.store.chain_head(ledger.chain)
        assert head is not None
        assert [o.script_pubkey for o in outputs] == [
            address_to_script(addr(n), net) for n in (1, 2, 3)] + [address_to_script(
                addr(200), net), commitment_script(head.hash)]
        assert outputs[-2].value == fee and outputs[-1].value == 0
        assert sum(o.value for o in outputs) == template.coinbase_value

        parts = build_coinbase(template.height, outputs, tag=b"/poold-split/",
                               witness_commitment_script=template.witness_commitment_script)
        coinbase = parts.assemble(b"\x00\x00\x00\x07", bytes(8))
        header = BlockHeader(template.version, template.prevhash,
                             merkle_root([coinbase.txid, *template.txids]),
                             max(template.curtime, template.mintime), template.bits, 0)
        prefix, target = header.serialize()[:76], bits_to_target(template.bits)
        nonce = next(n for n in range(1 << 32) if int.from_bytes(hashlib.sha256(hashlib.sha256(
            prefix + n.to_bytes(4, "little")).digest()).digest(), "little") <= target)
        header = BlockHeader(header.version, header.prevhash, header.merkle_root, header.ntime,
                             header.bits, nonce)
        raw = assemble_block(header.serialize(), coinbase, [t.data for t in template.transactions])
        assert await devnet.submit_block(raw) is None  # consensus accepts the split coinbase
        assert devnet.tip_hash_hex == header.hash_hex

        await ledger.record_block(FoundBlock(
            height=template.height, hash_hex=header.hash_hex, prevhash_hex=template.prevhash_hex,
            worker="x.rig", account=addr(1), coinbase_txid_hex=coinbase.txid_hex,
            coinbase_outputs=tuple((o.script_pubkey, o.value) for o in coinbase.outputs),
            reward=template.coinbase_value, fees=0, block_hex=raw.hex(), time=time.time(),
            instance_id=1))
        await ledger.record_submit_result(header.hash_hex, "devnet", None)
        # Accounts 4 and 5 were carried; 1-3 were paid ahead by as much. Zero-sum, exact.
        balances = await ledger.split_balances()
        assert sum(balances.values()) == 0
        assert balances[addr(4)] > 0 and balances[addr(5)] > 0
        assert all(balances[addr(n)] < 0 for n in (1, 2, 3))
        rep = await ledger.reconcile(NodeReader([rpc]))
        assert rep.ok and rep.changed == {header.hash_hex: ("submitted", "confirmed")}
    finally:
        await rpc.close()
        await ledger.stop()
