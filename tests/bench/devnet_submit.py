"""Benchmark: the devnet's block submission while its own event loop is busy.

The demo and many tests run CPU miners (hashing in slices, yielding between them) on the same
event loop as the devnet. The devnet's kernel lives in a child process, so validation should not
care. Per phase, `--blocks` blocks (default 50) go through `Devnet.generate(1)` (template, grind,
submit, apply, ZMQ): first with an idle loop (the baseline), then beside `--busy` CPU-bound
coroutines (default 3). With the kernel on a thread of this process, the busy phase measured
20 s per block (each ctypes call and callback waited for the GIL's 5 ms switch interval).

    python -m tests.bench.devnet_submit [--blocks 50] [--busy 3]

Last line: `devnet_submit idle_p50_ms=<x> busy_p50_ms=<y> busy_vs_idle=<ratio>`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from poold.devnet import Devnet
from tests.devnet.helpers import busy_loop


async def _phase(dn: Devnet, blocks: int) -> list[float]:
    out = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        await dn.generate(1)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def run(blocks: int, busy: int) -> None:
    async with Devnet() as dn:
        await dn.generate(5)
        idle = await _phase(dn, blocks)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(busy_loop(stop)) for _ in range(busy)]
        try:
            loaded = await _phase(dn, blocks)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    i50, b50 = statistics.median(idle), statistics.median(loaded)
    print(f"blocks={blocks} busy_coroutines={busy}")
    print(f"idle: p50={i50:.2f} ms max={max(idle):.2f} ms; busy: p50={b50:.2f} ms "
          f"max={max(loaded):.2f} ms")
    print(f"devnet_submit idle_p50_ms={i50:.2f} busy_p50_ms={b50:.2f} busy_vs_idle={b50 / i50:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=50)
    parser.add_argument("--busy", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.blocks, args.busy))


if __name__ == "__main__":
    main()
