"""payout = split end to end: `poold run` builds each coinbase from the ledger's PPLNS window,
miners find blocks with it, the devnet (Bitcoin Core's consensus) accepts them, and the books
balance: recorded outputs match the chain, carried balances sum to zero."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.ledger.config import LedgerConfig
from poold.ledger.ledger import Ledger
from poold.sim.ports import free_port
from tests.ledger.test_poold_run_crash import mine_for, write_config
from tests.poold_process import log_tail, poold_run


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_poold_run_split_payout(ledger_url: str, tmp_path: Path) -> None:
    from poold.devnet import Devnet
    from poold.node.reader import NodeReader
    from poold.node.rpc import RpcClient
    from poold.sim.miner import StratumMiner

    fee_address = p2wpkh_address(os.urandom(20), Network.REGTEST)
    accounts = [p2wpkh_address(os.urandom(20), Network.REGTEST) for _ in range(3)]
    async with Devnet() as dn:
        await dn.generate(101)
        start_height = dn.height
        port = free_port()
        # Every regtest share is a block; a window of 1e6 x the network difficulty holds
        # the last few hundred shares, so coinbases pay several accounts.
        cfg = write_config(tmp_path, dn, port, ledger_url, payout="split", instance_id=5,
                           pool_extra=f'fee_address = "{fee_address}"\nfee_percent = 2.0\n',
                           ledger_extra="pplns_window_factor = 1000000\ndust_sat = 1000\n"
                                        "max_outputs = 5\n")
        log = tmp_path / "poold.log"
        async with poold_run(cfg, log, port=port) as proc:
            miners = [StratumMiner("127.0.0.1", port, f"{a}.rig", name=f"m{i}",
                                   suggest_difficulty=1e-6, reconnect=False)
                      for i, a in enumerate(accounts)]
            await mine_for(8.0, miners)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log_tail(log)
        assert dn.height >= start_height + 3, log_tail(log)
        print(f"chain grew by {dn.height - start_height} blocks")

        ledger = Ledger(LedgerConfig(url=ledger_url, state_dir=str(tmp_path / "reader"),
                                     payout="split", fee_address=fee_address,
                                     network="regtest"))
        await ledger.start()
        rpc = RpcClient(dn.rpc_url, user=dn.rpc_user, password=dn.rpc_password)
        await rpc.start()
        try:
            rep = await ledger.reconcile(NodeReader([rpc]))
            blocks = await ledger.blocks()
            balances = await ledger.split_balances()
        finally:
            await rpc.close()
            await ledger.stop()

    # Every recorded block on the chain pays exactly what was recorded.
    assert rep.ok, rep.mismatches
    on_chain = [b for b in blocks if b.status.value == "confirmed"]
    assert len(on_chain) >= 3, [(b.height, b.status.value) for b in blocks]
    print(f"{len(blocks)} blocks recorded, {len(on_chain)} on the chain")
    net = Network.REGTEST
    miner_scripts = {address_to_script(a, net).hex() for a in accounts}
    fee_script = address_to_script(fee_address, net).hex()
    multi = 0
    for b in on_chain:
        paying = [o for o in b.outputs if o.value > 0]
        assert sum(o.value for o in paying) == b.reward
        assert {o.script_hex for o in paying} <= miner_scripts | {fee_script}
        assert len([o for o in paying if o.script_hex in miner_scripts]) <= 5
        assert all(o.value >= 1000 for o in paying)
        multi += len({o.script_hex for o in paying} & miner_scripts) >= 2
    print(f"{multi} coinbases paid two or more accounts")
    # The window held several accounts at least once.
    assert multi >= 1, [[(o.script_hex[:12], o.value) for o in b.outputs] for b in on_chain]
    # Carried balances (sub-dust and beyond-max entitlements) always net to zero.
    assert sum(balances.values()) == 0
