"""Benchmark: new tip -> new template in poold, against the devnet (in-process).

Mines N blocks (default 100) on the devnet, with a few segwit transactions in the mempool so the
templates carry transactions, and measures per block the time from the devnet sending the ZMQ
`hashblock` message (its send timestamp) to poold's NodeSet publishing

- the first template on the new tip (the coinbase-only one when it wins: "empty first"), and
- the full template (transactions, witness commitment) on the new tip.

Runs with empty_first_ms=0 so that every block exercises the empty-first path. Baseline, measured
in the same run on the same devnet: one plain getblocktemplate round trip over a warm connection.

    python -m tests.bench.new_tip [--blocks 100] [--txs-per-block 2]

Last line: `new_tip p50_ms=<x> p99_ms=<y> empty_first_p50_ms=<z>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import statistics
import time
from typing import Any

from poold.devnet.node import Devnet
from poold.devnet.zmqpub import ZmqPublisher
from poold.node.nodes import NodeSet, NodeSpec, TemplateTiming
from poold.node.rpc import RpcClient
from poold.node.templates import Template

TARGET_P99_MS = 20.0
TARGET_EMPTY_MS = 5.0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def run(blocks: int, txs_per_block: int) -> tuple[list[float], list[float], list[float]]:
    sent: dict[str, float] = {}
    original = ZmqPublisher.publish

    async def timed_publish(self: ZmqPublisher, topic: str, body: bytes) -> None:
        if topic == "hashblock":
            sent[body.hex()] = time.perf_counter()
        await original(self, topic, body)

    ZmqPublisher.publish = timed_publish  # type: ignore[method-assign]
    first_at: dict[str, float] = {}
    empty_at: dict[str, float] = {}
    full_at: dict[str, float] = {}
    arrived = asyncio.Event()

    def on_template(t: Template, new_tip: bool) -> None:
        now = time.perf_counter()
        h = t.prevhash_hex
        first_at.setdefault(h, now)
        if t.is_empty:
            empty_at.setdefault(h, now)
        else:
            full_at.setdefault(h, now)
            arrived.set()

    try:
        async with Devnet() as dn:
            await dn.generate(101)  # mature coinbases to fund test transactions
            spec = NodeSpec("devnet", dn.rpc_url, dn.rpc_user, dn.rpc_password,
                            zmq_hashblock=dn.zmq_url)
            ns = NodeSet([spec], chain="regtest",
                         templates=TemplateTiming(empty_first_ms=0.0), safety_poll_s=3600.0)
            ns.subscribe(on_template)
            async with ns:
                await dn.wait_zmq_subscribers("hashblock")
                baseline = await gbt_baseline(dn, 30)
                for _ in range(blocks):
                    for _ in range(txs_per_block):
                        await dn.send_test_transaction()
                    (h,) = await dn.generate(1)
                    async with asyncio.timeout(10):
                        while h not in full_at:
                            arrived.clear()
                            await arrived.wait()
                mined = [h for h in sent if h in full_at]
                full = [(full_at[h] - sent[h]) * 1000 for h in mined]
                empty = [(empty_at[h] - sent[h]) * 1000 for h in mined if h in empty_at]
                return full, empty, baseline
    finally:
        ZmqPublisher.publish = original  # type: ignore[method-assign]


async def gbt_baseline(dn: Devnet, n: int) -> list[float]:
    out = []
    async with RpcClient(dn.rpc_url, user=dn.rpc_user, password=dn.rpc_password) as c:
        await c.getblocktemplate()
        for _ in range(n):
            t0 = time.perf_counter()
            await c.getblocktemplate()
            out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--txs-per-block", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    full, empty, baseline = asyncio.run(run(args.blocks, args.txs_per_block))
    base = statistics.median(baseline)
    p50, p99 = pct(full, 50), pct(full, 99)
    e50 = pct(empty, 50) if empty else float("nan")
    print(f"blocks={len(full)} txs_per_block={args.txs_per_block}")
    print(f"baseline getblocktemplate round trip: p50={base:.2f} ms p99={pct(baseline, 99):.2f} ms")
    print(f"full template after hashblock: p50={p50:.2f} ms p99={p99:.2f} ms max={max(full):.2f}"
          f" ms (target p99 < {TARGET_P99_MS:g} ms: {'met' if p99 < TARGET_P99_MS else 'MISSED'})"
          f"; p50/baseline = {p50 / base:.2f}x")
    if empty:
        print(f"empty-first template: {len(empty)}/{len(full)} blocks, p50={e50:.2f} ms "
              f"p99={pct(empty, 99):.2f} ms (target < {TARGET_EMPTY_MS:g} ms: "
              f"{'met' if e50 < TARGET_EMPTY_MS else 'MISSED'}); p50/baseline = {e50 / base:.2f}x")
    print(f"new_tip p50_ms={p50:.2f} p99_ms={p99:.2f} empty_first_p50_ms={e50:.2f}")


if __name__ == "__main__":
    main()
