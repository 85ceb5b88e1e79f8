"""The simulated miner against `poold run`: its modes and quirks, as the fleet emulator uses them.

Rate mode must make the pool see a share rate that follows the hashrate it is given (the fleet
controller confirms power changes from the pool's share rate), and the device quirks the miner
can play (no mining.configure with version bits, `[UA, null]` subscribe) must mine accepted
shares.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from poold.sim.miner import StratumMiner
from tests.integration.conftest import Pool, new_address, run_pool

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _accepted_during(miner: StratumMiner, seconds: float) -> int:
    before = miner.accepted
    await asyncio.sleep(seconds)
    return miner.accepted - before


async def test_rate_mode_share_rate_follows_hashrate(pool: Pool) -> None:
    hashrate = {"hs": 200_000.0}
    miner = StratumMiner(
        pool.host, pool.port, new_address(), hashrate_hs=lambda: hashrate["hs"], mode="rate",
        suggest_difficulty=1e-5,
    )  # fmt: skip
    task = asyncio.create_task(miner.run())
    try:
        await asyncio.wait_for(_until_accepted(miner), 20)
        high = await _accepted_during(miner, 4.0)
        hashrate["hs"] = 25_000.0
        await asyncio.sleep(0.5)
        low = await _accepted_during(miner, 4.0)
        hashrate["hs"] = 0.0
        await asyncio.sleep(0.5)
        hashes = miner.stats.hashes
        asleep = await _accepted_during(miner, 1.0)
    finally:
        miner.stop()
        await task
    # 200 kH/s at difficulty 1e-5 (~43 kH per share) is ~4.7 shares/s; 25 kH/s ~0.6/s. The
    # margins leave room for a loaded machine that delivers only half the asked rate.
    assert high >= 8, (high, low)
    assert low < high / 3, (high, low)
    assert asleep == 0 and miner.stats.hashes == hashes
    assert miner.rejected <= miner.accepted // 10, miner.stats.reject_reasons


async def _until_accepted(miner: StratumMiner) -> None:
    while miner.accepted == 0:  # noqa: ASYNC110 - the counter is the miner's, no event to wait on
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        (
            {"handshake": ("subscribe", "authorize"), "unnegotiated_version_bits": True},
            "S21 behind a rental: version bits without mining.configure (DATUM #214)",
        ),
        (
            {"subscribe_null_session": True, "handshake": ("subscribe", "authorize", "configure")},
            "Braiins OS: subscribe [UA, null] (stratum #964)",
        ),
        (
            {"handshake": ("configure", "subscribe", "authorize", "suggest"), "version_mask": None},
            "no version rolling at all",
        ),
    ],
)
async def test_quirky_miner_gets_shares_accepted(
    pool: Pool, kwargs: dict[str, object], why: str
) -> None:
    miner = StratumMiner(
        pool.host,
        pool.port,
        new_address(),
        suggest_difficulty=1e-5,
        **kwargs,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(miner.run())
    try:
        await asyncio.wait_for(_until_accepted(miner), 20)
        await asyncio.sleep(0.5)
    finally:
        miner.stop()
        await task
    assert miner.accepted >= 1, why
    # Only stale shares (a block found by another test's miner) may be refused.
    codes = {reason.split()[0] for reason in miner.stats.reject_reasons}
    assert codes <= {"21"}, (why, miner.stats.reject_reasons)


async def test_pool_shutdown_moves_the_miner_with_client_reconnect(
    pool: Pool, tmp_path: Path
) -> None:
    """Stopping a pool sends `client.reconnect` to its configured successor; the miner follows
    and keeps mining there (the shutdown order in poold/daemon.py)."""
    async with run_pool(tmp_path / "b", pool.devnet, instance_id=9) as successor:
        extra = f'reconnect_host = "127.0.0.1"\nreconnect_port = {successor.port}'
        async with run_pool(tmp_path / "a", pool.devnet, instance_id=8,
                            extra_stratum=extra) as first:  # fmt: skip
            miner = StratumMiner(first.host, first.port, new_address(), suggest_difficulty=1e-5)
            task = asyncio.create_task(miner.run())
            try:
                await asyncio.wait_for(_until_accepted(miner), 20)
                first.proc.terminate()
                await asyncio.wait_for(first.proc.wait(), 20)
                before = miner.accepted
                await asyncio.wait_for(_until(lambda: miner.accepted > before + 2), 20)
            finally:
                miner.stop()
                await task
        assert miner.port == successor.port, first.log_tail()
        assert miner.connects == 2


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the state is the miner's, no event to wait on
        await asyncio.sleep(0.05)
