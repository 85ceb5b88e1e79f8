"""Miners against `poold run` and the devnet over TCP: work, shares, blocks, payouts, rejections.

On regtest almost every share at the tiny test difficulty also meets the network target, so the
CPU miners find real blocks; Bitcoin Core's consensus (the devnet) is the judge of the pool's
whole encoding (coinbase, merkle branch, prevhash byte order, version rolling).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from poold.bitcoin.address import Network, address_to_script
from poold.bitcoin.block import parse_block
from poold.bitcoin.byteorder import hash_from_hex
from poold.sim.miner import (
    Job,
    StratumMiner,
    bits_to_target,
    difficulty_to_target,
    display_hash_hex,
    grind_share,
    losing_nonce,
    prevhash_from_stratum_hex,
)
from tests.integration.conftest import Pool, StratumClient, new_address
from tests.waiting import reading

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _until(predicate: Callable[[], bool], limit_s: float = 30.0) -> None:
    """Poll state owned by other components (devnet height, miner counters)."""

    async def _loop() -> None:
        while not predicate():  # noqa: ASYNC110 - no event to wait on across components
            await asyncio.sleep(0.05)

    await asyncio.wait_for(_loop(), limit_s)


async def _coinbase_scripts(pool: Pool, hash_hex: str) -> list[bytes]:
    raw = await pool.devnet.read_block(hash_from_hex(hash_hex))
    assert raw is not None, f"block {hash_hex} not on the devnet"
    _, txs = parse_block(raw)
    return [o.script_pubkey for o in txs[0].outputs if o.value > 0]


async def _subscribed(pool: Pool, address: str) -> tuple[StratumClient, bytes, int]:
    c = await StratumClient.connect(pool)
    sub = await c.request("mining.subscribe", ["e2e-test/1"])
    assert sub["error"] is None
    auth = await c.request("mining.authorize", [address, "x"])
    assert auth["result"] is True, auth
    await c.wait_for(lambda: c.of("mining.notify"))
    return c, bytes.fromhex(sub["result"][1]), int(sub["result"][2])


async def test_miners_find_blocks_that_pay_them(pool: Pool) -> None:
    addresses = [new_address() for _ in range(2)]
    miners = [
        StratumMiner(pool.host, pool.port, f"{a}.rig{i}", suggest_difficulty=1e-4, name=f"m{i}")
        for i, a in enumerate(addresses)
    ]
    start_height = pool.devnet.height
    tasks = [asyncio.create_task(m.run()) for m in miners]
    try:
        await _until(
            lambda: all(m.accepted >= 2 for m in miners) and pool.devnet.height >= start_height + 2,
            60,
        )
    finally:
        for m in miners:
            m.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
    # Every share is a block here, so a share can race a new tip (21 stale); nothing else.
    for m in miners:
        assert {r.split()[0] for r in m.stats.reject_reasons} <= {"21"}, m.stats.reject_reasons
    scripts = {address_to_script(a, Network.REGTEST): a for a in addresses}
    tip = pool.devnet.tip_hash_hex
    assert tip in [h for m in miners for h in m.stats.blocks]  # the last block is theirs
    # Every block the miners found that made it onto the chain pays the miner that found it.
    on_chain = 0
    for m, a in zip(miners, addresses, strict=True):
        for h in m.stats.blocks:
            if await pool.devnet.read_block(hash_from_hex(h)) is None:
                continue  # stale race: a sibling won at the same height
            on_chain += 1
            assert address_to_script(a, Network.REGTEST) in await _coinbase_scripts(pool, h)
    assert on_chain >= 2
    assert set(await _coinbase_scripts(pool, tip)) & set(scripts)


async def test_block_with_transactions_is_accepted(pool: Pool) -> None:
    """A template with transactions: the merkle branch and witness commitment must be right."""
    txid = await pool.devnet.send_test_transaction(fee_sat=5000)
    address = new_address()
    c, en1, en2_size = await _subscribed(pool, address)
    try:
        # Wait for a job that carries the transaction (non-empty merkle branch).
        await c.wait_for(lambda: c.of("mining.notify")[-1][4] != [], 30)
        job = Job.from_notify(c.of("mining.notify")[-1], c.difficulty_for_last_job(), en1, en2_size)
        height = pool.devnet.height
        en2 = os.urandom(en2_size)
        found = grind_share(job, en2, job.version, difficulty_to_target(job.difficulty))
        assert found is not None
        nonce, h = found
        reply = await c.request(
            "mining.submit", [address, job.job_id, en2.hex(), f"{job.ntime:08x}", f"{nonce:08x}"]
        )
        assert reply["result"] is True, reply
        await _until(lambda: pool.devnet.height > height, 30)
        assert pool.devnet.tip_hash_hex == display_hash_hex(h)
        raw = await pool.devnet.read_block(h)
        _, txs = parse_block(raw)
        assert txid in [t.txid_hex for t in txs]
        assert address_to_script(address, Network.REGTEST) in [
            o.script_pubkey for o in txs[0].outputs
        ]
    finally:
        await c.close()


async def test_new_tip_sends_clean_job_with_the_devnet_prevhash(pool: Pool) -> None:
    c, _, _ = await _subscribed(pool, new_address())
    try:
        before = len(c.of("mining.notify"))
        (new_tip,) = await pool.devnet.generate(1)
        await c.wait_for(
            lambda: any(
                n[8] is True and display_hash_hex(prevhash_from_stratum_hex(n[1])) == new_tip
                for n in c.of("mining.notify")[before:]
            ),
            10,
        )
    finally:
        await c.close()


async def test_rejection_codes(pool: Pool) -> None:
    address = new_address()
    # 25: submit before subscribe; 24: submit before authorize.
    c = await StratumClient.connect(pool)
    try:
        r = await c.request("mining.submit", [address, "1", "00" * 8, "00000000", "00000000"])
        assert r["error"][0] in (25, 24), r
        sub = await c.request("mining.subscribe", ["e2e-test/1"])
        r = await c.request(
            "mining.submit", [address, "1", "00" * sub["result"][2], "00000000", "00000000"]
        )
        assert r["error"][0] == 24, r
        u = await c.request("mining.no_such_method", [])
        assert u["error"][0] == 20 and u.get("result") is None, u
    finally:
        await c.close()

    c, en1, en2_size = await _subscribed(pool, address)
    try:
        job = Job.from_notify(c.of("mining.notify")[-1], c.difficulty_for_last_job(), en1, en2_size)
        ntime = f"{job.ntime:08x}"
        r = await c.request(
            "mining.submit", [address, "nosuchjob", "00" * en2_size, ntime, "00000000"]
        )
        assert r["error"][0] == 21, r
        r = await c.request(
            "mining.submit", [address, job.job_id, "zz" * en2_size, ntime, "00000000"]
        )
        assert r["error"][0] == 20, r
        r = await c.request(
            "mining.submit", [address, job.job_id, "00" * en2_size, "00000001", "00000000"]
        )
        assert r["error"][0] == 20, r  # ntime far outside [mintime, now + 7200]
        # Low difficulty: raise our difficulty so a random nonce cannot pass, then submit.
        s = await c.request("mining.suggest_difficulty", [1e6])
        assert s["error"] is None
        await c.wait_for(lambda: c.difficulty_for_last_job() == pytest.approx(1e6), 10)
        job = Job.from_notify(c.of("mining.notify")[-1], 1e6, en1, en2_size)
        en2 = os.urandom(en2_size)
        # Not a block either (half of all regtest hashes are), so it must be judged a low share.
        nonce = losing_nonce(job, en2, job.version, bits_to_target(job.nbits))
        r = await c.request(
            "mining.submit", [address, job.job_id, en2.hex(), f"{job.ntime:08x}", f"{nonce:08x}"]
        )
        assert r["error"][0] == 23, r
    finally:
        await c.close()


async def test_duplicate_share_is_rejected(pool: Pool) -> None:
    address = new_address()
    c, en1, en2_size = await _subscribed(pool, address)
    try:
        # On regtest the share is also a block, so the repeat may meet a stale job (21) first.
        job = Job.from_notify(c.of("mining.notify")[-1], c.difficulty_for_last_job(), en1, en2_size)
        en2 = os.urandom(en2_size)
        found = grind_share(job, en2, job.version, difficulty_to_target(job.difficulty))
        assert found is not None
        params = [address, job.job_id, en2.hex(), f"{job.ntime:08x}", f"{found[0]:08x}"]
        first = await c.request("mining.submit", params)
        second = await c.request("mining.submit", params)
        # The first is a share (and on regtest also a block: then the job is stale at once).
        assert first["result"] is True, first
        assert second["error"][0] in (22, 21), second
    finally:
        await c.close()


async def test_session_resume_keeps_extranonce1(pool: Pool) -> None:
    c = await StratumClient.connect(pool)
    sub = await c.request("mining.subscribe", ["e2e-test/1"])
    en1 = sub["result"][1]
    await c.close()

    async def resumed() -> str:  # free once the pool has seen the first session close
        c2 = await StratumClient.connect(pool)
        try:
            sub2 = await c2.request("mining.subscribe", ["e2e-test/1", en1])
            return str(sub2["result"][1])
        finally:
            await c2.close()

    await reading(resumed, lambda got: got == en1, 5.0, f"extranonce1 {en1} resumed",
                  poll_s=0.05)


async def test_string_and_null_ids_are_echoed(pool: Pool) -> None:
    c = await StratumClient.connect(pool)
    try:
        c.send({"id": "abc", "method": "mining.subscribe", "params": ["e2e-test/1"]})
        r = await c.reply("abc")
        assert r["error"] is None and r["result"][1]
        c.send({"id": 7, "method": "mining.extranonce.subscribe", "params": []})
        assert (await c.reply(7))["result"] is True
    finally:
        await c.close()
