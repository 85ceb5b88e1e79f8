"""Benchmark: fresh work after bitcoind comes back (the devnet stopped and restarted N times).

The whole pool in this process against the devnet (real JSON-RPC and ZMQ), one CPU miner paced so
that it finds `--blocks-per-s` regtest blocks a second (every share is a block). Each round stops
the devnet for `--outage-s`, starts it again on the same ports and datadir (a new cookie), and
measures the time from the node's first answer (its RPC server is listening again) to the first
clean `mining.notify` on a new tip as the miner received it. The new tip is the first block the
miner found during the outage, resubmitted by poold (or, when it found none, a block the devnet
mines at once). `orphaned_after_return` counts the miner's blocks found after the node answered
that were built on the old tip. Baseline, measured in the same run: a block mined on the node
while it stays up -> the clean notify on it.

    python -m tests.bench.node_return [--rounds 10] [--outage-s 3] [--blocks-per-s 0.5]

Last line: `node_return p50_ms=<x> p99_ms=<y> orphaned_after_return=<n>`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import tempfile
from pathlib import Path

from tests.node.returning import ReturnHarness

TARGET_P99_MS = 1000.0


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def run(rounds: int, outage_s: float, blocks_per_s: float, hashrate: float,
              ) -> tuple[list[float], int, int, int, list[float]]:
    latencies: list[float] = []
    orphaned = missing = found = 0
    baseline: list[float] = []
    with tempfile.TemporaryDirectory(prefix="poold-node-return-") as tmp:
        async with ReturnHarness(Path(tmp), hashrate_hs=hashrate,
                                 blocks_per_s=blocks_per_s) as h:
            for _ in range(5):
                baseline.append(await h.new_tip_latency() * 1000)
            for i in range(rounds):
                r = await h.round(outage_s, mine_on_return=False)
                found += r.found_in_outage
                orphaned += r.orphaned
                if r.latency_s is None:
                    missing += 1
                else:
                    latencies.append(r.latency_s * 1000)
                after = "-" if r.latency_s is None else f"{r.latency_s * 1000:.1f}"
                print(f"round {i + 1}: blocks found in the outage {r.found_in_outage}, "
                      f"fresh work after {after} ms, orphaned after return {r.orphaned}",
                      flush=True)
    return latencies, orphaned, missing, found, baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--outage-s", type=float, default=3.0)
    parser.add_argument("--blocks-per-s", type=float, default=0.5)
    parser.add_argument("--hashrate", type=float, default=20_000.0, help="miner H/s")
    parser.add_argument("--log-level", default="ERROR")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    latencies, orphaned, missing, found, baseline = asyncio.run(
        run(args.rounds, args.outage_s, args.blocks_per_s, args.hashrate))
    # A round without fresh work counts as the worst case (the round's 5 s limit).
    values = latencies + [5000.0] * missing
    p50, p99 = pct(values, 50), pct(values, 99)
    b50 = pct(baseline, 50)
    print(f"rounds={args.rounds} outage_s={args.outage_s:g} blocks_per_s={args.blocks_per_s:g} "
          f"blocks found during outages={found} rounds without fresh work={missing}")
    print(f"baseline (node up, block -> clean notify): p50={b50:.1f} ms max={max(baseline):.1f}"
          f" ms; return p50 = {p50 / b50:.1f}x baseline")
    print(f"target p99 <= {TARGET_P99_MS:g} ms: {'met' if p99 <= TARGET_P99_MS else 'MISSED'}; "
          f"orphaned target 0: {'met' if orphaned == 0 else 'MISSED'}")
    print(f"node_return p50_ms={p50:.1f} p99_ms={p99:.1f} orphaned_after_return={orphaned}")


if __name__ == "__main__":
    main()
