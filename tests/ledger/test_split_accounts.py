"""payout = split with plain login names: nothing a miner sends can stall the pool.

A login whose account is neither a regtest address nor mapped in `[accounts]` is refused at
authorize (error 24); a mapped name is paid at its address on the chain. A ledger that already
carries a split balance for an account without an address (written before logins were checked)
does not stop the pool after a restart: the name's credit stays carried, the coinbases pay the
others, and the blocks the miners find land on the devnet's chain (Bitcoin Core's consensus).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import aiohttp
import pytest

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.bitcoin.block import parse_block
from poold.ledger.records import BlockEvent, Credit
from poold.ledger.store import open_store
from poold.sim.miner import StratumError, StratumMiner
from poold.sim.ports import free_port
from tests.ledger.helpers import block
from tests.ledger.test_poold_run_crash import write_config
from tests.poold_process import log_tail, poold_run

NET = Network.REGTEST


def addr() -> str:
    return p2wpkh_address(os.urandom(20), NET)


async def readiness(cfg_text: str) -> tuple[int, dict[str, bool]]:
    api = re.search(r'\[api\]\nlisten = "([^"]+)"', cfg_text)
    assert api is not None
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://{api.group(1)}/readyz") as resp:
        return resp.status, (await resp.json())["checks"]


async def paid_scripts_on_chain(dn: object, first_height: int) -> list[set[str]]:
    """The paying output scripts (hex) of each coinbase above `first_height` on the chain."""
    from poold.node.rpc import RpcClient

    rpc = RpcClient(dn.rpc_url, user=dn.rpc_user, password=dn.rpc_password)  # type: ignore[attr-defined]
    await rpc.start()
    try:
        out = []
        for h in range(first_height + 1, dn.height + 1):  # type: ignore[attr-defined]
            block_hash = await rpc.call("getblockhash", h)
            _, txs = parse_block(bytes.fromhex(await rpc.call("getblock", block_hash, 0)))
            out.append({o.script_pubkey.hex() for o in txs[0].outputs if o.value > 0})
        return out
    finally:
        await rpc.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_plain_names_cannot_stall_split_payouts(ledger_url: str, tmp_path: Path) -> None:
    from poold.devnet import Devnet

    fee_address, alice, carol_address = addr(), addr(), addr()
    async with Devnet() as dn:
        await dn.generate(101)
        # A split balance for "bob" (no address) above dust, as an old ledger may hold it.
        store = open_store(ledger_url)
        await store.open()
        try:
            old = block(1, account="bob", t=1_700_000_000.0)
            await store.insert_block(
                old, 1.0, [], BlockEvent(old.hash_hex, 1.0, "recorded", "before logins were "
                                         "checked"),
                [Credit(old.hash_hex, "bob", 5_000_000, "split", 1.0),
                 Credit(old.hash_hex, alice, -5_000_000, "split", 1.0)])
            assert await store.balances(["split"]) == {"bob": 5_000_000, alice: -5_000_000}
        finally:
            await store.close()

        port = free_port()
        cfg = write_config(
            tmp_path, dn, port, ledger_url, payout="split", instance_id=6,
            pool_extra=f'fee_address = "{fee_address}"\n',
            ledger_extra="pplns_window_factor = 1000000\ndust_sat = 1000\n")
        cfg_text = cfg.read_text() + f'\n[accounts]\ncarol = "{carol_address}"\n'
        cfg.write_text(cfg_text)
        log = tmp_path / "poold.log"
        start_height = dn.height
        async with poold_run(cfg, log, port=port) as proc:
            bob = StratumMiner("127.0.0.1", port, "bob.rig", name="bob",
                               suggest_difficulty=1e-6, reconnect=False)
            with pytest.raises(StratumError) as refused:
                await asyncio.wait_for(bob.run(), 10)
            assert "mining.authorize" in str(refused.value) and "24" in str(refused.value)
            assert "unknown account 'bob'" in str(refused.value)
            miners = [StratumMiner("127.0.0.1", port, f"{alice}.rig", name="alice",
                                   suggest_difficulty=1e-6, reconnect=False),
                      StratumMiner("127.0.0.1", port, "carol.rig", name="carol",
                                   suggest_difficulty=1e-6, reconnect=False)]
            tasks = [asyncio.create_task(m.run()) for m in miners]
            for _ in range(600):  # until 5 blocks are on the chain (60 s at most)
                if dn.height >= start_height + 5 and all(m.accepted for m in miners):
                    break
                await asyncio.sleep(0.1)
            for m in miners:
                m.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            status, checks = await readiness(cfg_text)
            assert status == 200 and checks["payout_plan"] is True, (checks, log_tail(log))
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, log_tail(log)
        assert all(m.accepted > 0 for m in miners), log_tail(log)
        grown = dn.height - start_height
        assert grown >= 5, log_tail(log)
        coinbases = await paid_scripts_on_chain(dn, start_height)

    fee = address_to_script(fee_address, NET).hex()
    a = address_to_script(alice, NET).hex()
    c = address_to_script(carol_address, NET).hex()
    # The work followed the tip: every block the miners found is on the chain, and their
    # coinbases pay only the miners' addresses (carol's by her mapping) and the fee address.
    assert all(scripts <= {fee, a, c} for scripts in coinbases), coinbases
    assert any(c in scripts for scripts in coinbases), coinbases
    assert any(a in scripts for scripts in coinbases), coinbases
    text = log.read_text()
    assert "account 'bob' has no payout address" in text  # bob's credit is carried, said once
    assert "pays the whole coinbase to pool.fee_address" not in text  # no plan failed
