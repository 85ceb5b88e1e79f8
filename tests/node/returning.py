"""A node that goes away and comes back, with the whole pool and a CPU miner on it.

Shared by the test (tests/node/test_node_return.py) and the benchmark (tests.bench.node_return):
a devnet on fixed ports and a fixed datadir, the pool in this process (`build_pool` over a real
NodeSet, real JSON-RPC and ZMQ), and one paced CPU miner (`poold.sim.miner.StratumMiner`) whose
every share is a regtest block. One round: stop the devnet, wait, start it again (same ports,
same chain, a new cookie), optionally mine a block on it, and measure

- the latency from the node's first answer (its RPC server is listening again: the moment
  `Devnet.start` returns, which is after the RPC socket opened, so the figure errs on the short
  side by the ZMQ bind only) to the first clean `mining.notify` on a tip other than the old one,
  as the miner received it;
- the blocks the miner found after that first answer that were built on the old tip (orphans
  that fresh work would have avoided).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from poold.bitcoin.address import Network, p2wpkh_address
from poold.config import config_from_dict
from poold.daemon import build_pool
from poold.devnet.node import Devnet
from poold.node.nodes import NodeSet
from poold.pool import Pool
from poold.sim.miner import MinerEvent, StratumMiner
from poold.work.difficulty import DifficultyPolicy
from tests.node.fakenode import free_port

DIFF1 = 2**32  # hashes per share at difficulty 1


@dataclass(slots=True)
class Round:
    old_tip: bytes
    answered_at: float
    latency_s: float | None  # None: no clean notify on a new tip within the round's limit
    orphaned: int  # blocks found after answered_at on old_tip
    found_in_outage: int


@dataclass(slots=True)
class Events:
    jobs: list[tuple[float, bytes, bool]] = field(default_factory=list)  # (t, prevhash, clean)
    blocks: list[tuple[float, bytes]] = field(default_factory=list)  # (t, prevhash of its job)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class ReturnHarness:
    """`async with ReturnHarness(tmp) as h: r = await h.round(outage_s=2.0)`."""

    def __init__(self, workdir: Path, *, hashrate_hs: float = 20_000.0,
                 blocks_per_s: float = 0.3) -> None:
        self.workdir = workdir
        self.rpc_port = free_port()
        self.zmq_port = free_port()
        self.hashrate_hs = hashrate_hs
        # Every share meets the regtest target: the share rate is the block rate.
        self.difficulty = hashrate_hs / (blocks_per_s * DIFF1) if blocks_per_s > 0 else 1e6
        self.dn: Devnet | None = None
        self.pool: Pool | None = None
        self.miner: StratumMiner | None = None
        self.events = Events()
        self._tasks: list[asyncio.Task[None]] = []

    def _devnet(self) -> Devnet:
        return Devnet(self.workdir / "devnet", rpc_port=self.rpc_port, zmq_port=self.zmq_port,
                      rpc_password="node-return")

    async def __aenter__(self) -> ReturnHarness:
        self.dn = self._devnet()
        await self.dn.start()
        await self.dn.generate(1)
        cfg = config_from_dict({
            "pool": {"network": "regtest", "payout": "solo",
                     "state_dir": str(self.workdir / "state")},
            "nodes": [{"name": "devnet", "rpc_url": self.dn.rpc_url, "rpc_user": "poold",
                       "rpc_password": "node-return", "zmq_hashblock": self.dn.zmq_url,
                       "timeout_s": 2.0}],
            "stratum": {"listen": "127.0.0.1:0"},
        })
        nodes = NodeSet.from_config(cfg)
        d = self.difficulty
        self.pool = build_pool(cfg, nodes, difficulty=DifficultyPolicy(d, d, d))
        await nodes.start()
        await self.pool.server.start()
        self._tasks.append(asyncio.create_task(self.pool.server.run_sweeper()))
        address = p2wpkh_address(os.urandom(20), Network.REGTEST)
        self.miner = StratumMiner("127.0.0.1", self.pool.server.port, f"{address}.cpu", "x",
                                  self.hashrate_hs, name="cpu", on_event=self._on_event)
        self._tasks.append(asyncio.create_task(self.miner.run()))
        async with asyncio.timeout(10):
            while not self.events.jobs:
                await self._changed()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.miner is not None:
            self.miner.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pool is not None:
            await self.pool.server.shutdown()
            await self.pool.nodes.stop()
        if self.dn is not None:
            await self.dn.stop()

    def _on_event(self, ev: MinerEvent) -> None:
        miner = self.miner
        if miner is None:
            return
        now = time.monotonic()
        if ev.kind == "job" and miner.job is not None:
            self.events.jobs.append((now, miner.job.prevhash, miner.job.clean))
        elif ev.kind == "block":
            job = miner.jobs.get(ev.job_id)
            if job is not None:
                self.events.blocks.append((now, job.prevhash))
        self.events.changed.set()

    async def _changed(self) -> None:
        self.events.changed.clear()
        await self.events.changed.wait()

    async def new_tip_latency(self, limit_s: float = 5.0) -> float:
        """The baseline: a block mined on a node that stayed up -> the clean notify on it."""
        dn = self.dn
        assert dn is not None
        started = time.monotonic()
        (tip_hex,) = await dn.generate(1)
        tip = bytes.fromhex(tip_hex)[::-1]
        async with asyncio.timeout(limit_s):
            while True:
                for t, prevhash, clean in self.events.jobs:
                    if t >= started and clean and prevhash == tip:
                        return t - started
                await self._changed()

    async def round(self, outage_s: float, *, mine_on_return: bool = True,
                    limit_s: float = 5.0) -> Round:
        dn = self.dn
        assert dn is not None and self.pool is not None
        old_tip = dn.tip_hash
        # Let the miner's work be on the node's tip first (its last block may still be moving).
        async with asyncio.timeout(limit_s):
            while not (self.events.jobs and self.events.jobs[-1][1] == old_tip):
                await self._changed()
                old_tip = dn.tip_hash
        await dn.stop()
        stopped_at = time.monotonic()
        await asyncio.sleep(outage_s)
        dn = self.dn = self._devnet()
        await dn.start()
        answered_at = time.monotonic()
        found_in_outage = sum(1 for t, _ in self.events.blocks if stopped_at <= t < answered_at)
        if mine_on_return or not found_in_outage:
            await dn.generate(1)
        latency: float | None = None
        try:
            async with asyncio.timeout(limit_s):
                while latency is None:
                    for t, prevhash, clean in self.events.jobs:
                        if t >= answered_at and clean and prevhash != old_tip:
                            latency = t - answered_at
                            break
                    else:
                        await self._changed()
        except TimeoutError:
            pass
        # Blocks found after the answer on the old tip, counted once the miner is off it.
        orphaned = sum(1 for t, prevhash in self.events.blocks
                       if t >= answered_at and prevhash == old_tip)
        return Round(old_tip, answered_at, latency, orphaned, found_in_outage)
