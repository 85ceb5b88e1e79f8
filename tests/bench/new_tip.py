"""Benchmark: new tip -> new template in poold, against the devnet (in-process).

Mines blocks on the devnet, with a few segwit transactions in the mempool so the templates carry
transactions, and measures per block the time from the devnet sending the ZMQ `hashblock` message
(its send timestamp, taken in the devnet's publisher) to poold's NodeSet publishing a template on
the new tip. Two phases of N blocks each (default 100):

1. getblocktemplate as fast as the devnet answers: time to the full template (p50, p99);
2. getblocktemplate slowed by `--slow-gbt-ms` (default 50 ms, like mainnet with a full mempool;
   the delay is added on poold's side): time to the empty-block template published first.

Both phases run with `--empty-first-ms` (default 2, poold's TemplateTiming default; the empty
template cannot come sooner than that wait). Baseline, measured in the same run on the same
devnet: plain getblocktemplate and getblockheader round trips over a warm connection.

    python -m tests.bench.new_tip [--blocks 100] [--txs-per-block 2] [--slow-gbt-ms 50]
                                  [--empty-first-ms 2]

Last line: `new_tip p50_ms=<x> p99_ms=<y> empty_first_p50_ms=<z>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from poold.bitcoin.template import Template
from poold.devnet.node import Devnet
from poold.devnet.zmqpub import ZmqPublisher
from poold.node.nodes import NodeSet, NodeSpec, TemplateTiming, _Node
from poold.node.rpc import RpcClient

TARGET_P99_MS = 20.0
TARGET_EMPTY_MS = 5.0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class SlowGbtNodeSet(NodeSet):
    """getblocktemplate answered `delay_s` later, as on mainnet with a full mempool."""

    delay_s = 0.0

    async def _template(self, node: _Node) -> Template:
        await asyncio.sleep(self.delay_s)
        return await super()._template(node)


@dataclass
class Timings:
    empty_at: dict[str, float] = field(default_factory=dict)
    full_at: dict[str, float] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, t: Template, new_tip: bool) -> None:
        now = time.perf_counter()
        if t.is_empty:
            self.empty_at.setdefault(t.prevhash_hex, now)
        else:
            self.full_at.setdefault(t.prevhash_hex, now)
            self.arrived.set()


async def phase(
    dn: Devnet, sent: dict[str, float], blocks: int, txs_per_block: int, slow_gbt_s: float,
    empty_first_ms: float,
) -> tuple[list[float], list[float]]:
    spec = NodeSpec("devnet", dn.rpc_url, dn.rpc_user, dn.rpc_password, zmq_hashblock=dn.zmq_url)
    timing = TemplateTiming(empty_first_ms=empty_first_ms)
    ns = SlowGbtNodeSet([spec], chain="regtest", templates=timing, safety_poll_s=3600.0)
    ns.delay_s = slow_gbt_s
    timings = Timings()
    ns.subscribe(timings)
    mined: list[str] = []
    async with ns:
        await dn.wait_zmq_subscribers("hashblock", count=1)
        await asyncio.sleep(0.2)  # the subscription reaches the publisher's filter
        for _ in range(blocks):
            for i in range(txs_per_block):
                await dn.send_test_transaction(unconfirmed=i > 0)  # i > 0: a chain (depends)
            (h,) = await dn.generate(1)
            mined.append(h)
            async with asyncio.timeout(10):
                while h not in timings.full_at:
                    timings.arrived.clear()
                    await timings.arrived.wait()
    full = [(timings.full_at[h] - sent[h]) * 1000 for h in mined]
    empty = [(timings.empty_at[h] - sent[h]) * 1000 for h in mined if h in timings.empty_at]
    return full, empty


async def run(
    blocks: int, txs_per_block: int, slow_gbt_s: float, empty_first_ms: float
) -> tuple[list[float], list[float], list[float], list[float]]:
    sent: dict[str, float] = {}
    original = ZmqPublisher.publish

    async def timed_publish(self: ZmqPublisher, topic: str, body: bytes) -> None:
        if topic == "hashblock":
            sent[body.hex()] = time.perf_counter()
        await original(self, topic, body)

    ZmqPublisher.publish = timed_publish  # type: ignore[method-assign]
    try:
        async with Devnet() as dn:
            await dn.generate(101)  # mature coinbases to fund test transactions
            gbt_base, header_base = await baseline(dn, 30)
            full, _ = await phase(dn, sent, blocks, txs_per_block, 0.0, empty_first_ms)
            _, empty = await phase(dn, sent, blocks, txs_per_block, slow_gbt_s, empty_first_ms)
            return full, empty, gbt_base, header_base
    finally:
        ZmqPublisher.publish = original  # type: ignore[method-assign]


async def baseline(dn: Devnet, n: int) -> tuple[list[float], list[float]]:
    gbt, header = [], []
    async with RpcClient(dn.rpc_url, user=dn.rpc_user, password=dn.rpc_password) as c:
        await c.getblocktemplate()
        for i in range(n):
            # A changed mempool: no cached template.
            await dn.send_test_transaction(unconfirmed=i > 0)
            t0 = time.perf_counter()
            await c.getblocktemplate()
            t1 = time.perf_counter()
            await c.getblockheader(dn.tip_hash_hex)
            t2 = time.perf_counter()
            gbt.append((t1 - t0) * 1000)
            header.append((t2 - t1) * 1000)
        await dn.generate(1)  # clear the mempool
    return gbt, header


def main(argv: Any = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--txs-per-block", type=int, default=2)
    parser.add_argument("--slow-gbt-ms", type=float, default=50.0)
    parser.add_argument("--empty-first-ms", type=float, default=TemplateTiming().empty_first_ms)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    full, empty, gbt, header = asyncio.run(
        run(args.blocks, args.txs_per_block, args.slow_gbt_ms / 1000, args.empty_first_ms))
    gbt50, hdr50 = statistics.median(gbt), statistics.median(header)
    p50, p99 = pct(full, 50), pct(full, 99)
    e50 = pct(empty, 50) if empty else float("nan")
    print(f"blocks={len(full)}+{args.blocks} txs_per_block={args.txs_per_block} "
          f"empty_first_ms={args.empty_first_ms:g}")
    print(f"baseline round trips: getblocktemplate p50={gbt50:.2f} ms, "
          f"getblockheader p50={hdr50:.2f} ms")
    print(f"phase 1, full template after hashblock: p50={p50:.2f} ms p99={p99:.2f} ms "
          f"max={max(full):.2f} ms (target p99 < {TARGET_P99_MS:g} ms: "
          f"{'met' if p99 < TARGET_P99_MS else 'MISSED'}); p50 = {p50 / gbt50:.1f}x one GBT")
    if empty:
        print(f"phase 2, GBT +{args.slow_gbt_ms:g} ms: empty-first on {len(empty)}/{args.blocks}"
              f" blocks, p50={e50:.2f} ms p99={pct(empty, 99):.2f} ms (target < "
              f"{TARGET_EMPTY_MS:g} ms: {'met' if e50 < TARGET_EMPTY_MS else 'MISSED'}); "
              f"p50 = {e50 / hdr50:.1f}x one getblockheader")
    print(f"new_tip p50_ms={p50:.2f} p99_ms={p99:.2f} empty_first_p50_ms={e50:.2f}")


if __name__ == "__main__":
    main()
