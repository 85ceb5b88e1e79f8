"""Submits answered by `poold run --processes N` against one process, over loopback TCP.

    python -m tests.bench.multiprocess [--processes 2] [--duration 8] [--conns 2000]

The setup of tests.bench.stratum_throughput (a devnet behind a JSON-RPC proxy that sets the
template bits to difficulty 1, share difficulty 1: every random-nonce submit goes through the whole
share check and is answered as a low-difficulty share, never a block), but `poold run` exactly as
an operator runs it, unpinned, with the invalid-share ladder off by config
(stratum.invalid_share_limit = 0). The load generator (tests/bench/loadgen.py) is pinned to
core 1. For each process count, the figures are answered submits per wall second and per
CPU-second of all the pool's processes (the supervisor and its workers, from /proc).

On a machine with few cores (the load generator needs one) or other load, the wall-second ratio
is bounded by the cores left, or by the load generator itself when the pool is not busy (the
"pool busy" figure below 1 CPU per process); the per-CPU-second ratio says what N processes cost
per submit against one (1.0 = no overhead from running several).

Last line exactly:
    multiprocess procs=<N> p1_per_s=<x> pN_per_s=<y> wall_ratio=<y/x> cpu_ratio=<r>
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.bench.stratum_throughput import (
    LOADGEN_CPU,
    LoadGenProc,
    cpu_seconds,
    hard_node,
    poold_config,
    raise_nofile,
    regtest_address,
    wait_listening,
)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pool_pids(pid: int) -> list[int]:
    """`pid` and its child processes (the supervisor's workers)."""
    out = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


@dataclass
class Figure:
    per_s: float
    per_cpu_s: float
    processes: int
    busy: float  # CPU-seconds of the pool's processes per wall second


async def measure(processes: int, node: tuple[str, str, str, str], workdir: Path, conns: int,
                  pipeline: int, seconds: float) -> Figure:
    cfg = poold_config(workdir, *node)
    text = cfg.read_text().replace("idle_timeout_s = 3600",
                                   "idle_timeout_s = 3600\ninvalid_share_limit = 0")
    # the workers' API ports (base + I) below the ephemeral range, where no outgoing
    # connection of worker 0 can take base + 1 first
    api = next(p for p in range(random.randrange(20000, 30000), 32000, 64)
               if all(port_free(p + i) for i in range(processes)))
    text = re.sub(r'\[api\]\nlisten = "127.0.0.1:\d+"', f'[api]\nlisten = "127.0.0.1:{api}"', text)
    cfg.write_text(text)
    port = int(text.split('listen = "127.0.0.1:', 1)[1].split('"', 1)[0])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", "--log-level", "WARNING", "run", "-c", str(cfg),
        "--processes", str(processes), stdout=asyncio.subprocess.DEVNULL)
    gen: LoadGenProc | None = None
    try:
        await wait_listening(port, proc)
        await asyncio.sleep(2.0 if processes > 1 else 0.5)  # every worker listening
        pids = pool_pids(proc.pid)
        gen = await LoadGenProc.start(port, conns, pipeline, regtest_address())
        ready = await gen.event()
        if ready.get("event") != "ready":
            raise RuntimeError(f"loadgen: {ready}")
        await gen.send("go 2")  # warm-up
        await gen.event()
        cpu0, t0 = cpu_of(pids), time.monotonic()
        await gen.send(f"go {seconds}")
        done = await gen.event(seconds + 120)
        cpu1, t1 = cpu_of(pids), time.monotonic()
    finally:
        if gen is not None:
            await gen.close()
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()
    answered = int(done["answered"])
    return Figure(answered / float(done["seconds"]), answered / max(cpu1 - cpu0, 1e-9),
                  len(pids) - (1 if processes > 1 else 0), (cpu1 - cpu0) / (t1 - t0))


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    cores = sorted(os.sched_getaffinity(0))
    print(f"{len(cores)} cores; load generator pinned to core {LOADGEN_CPU}; "
          f"{args.conns} connections x {args.pipeline} submits outstanding, {args.duration} s")
    figures: dict[int, Figure] = {}
    with tempfile.TemporaryDirectory(prefix="poold-bench-mp-") as tmp:
        async with hard_node() as node:
            for n in (1, args.processes):
                workdir = Path(tmp) / f"p{n}"
                workdir.mkdir()
                f = await measure(n, node, workdir, args.conns, args.pipeline, args.duration)
                figures[n] = f
                print(f"processes={n} (workers seen {f.processes}): {f.per_s:,.0f} submits/s, "
                      f"{f.per_cpu_s:,.0f} per CPU-second, pool busy {f.busy:.2f} CPU",
                      flush=True)
    one, many = figures[1], figures[args.processes]
    print(f"multiprocess procs={args.processes} p1_per_s={one.per_s:.0f} "
          f"pN_per_s={many.per_s:.0f} wall_ratio={many.per_s / one.per_s:.2f} "
          f"cpu_ratio={many.per_cpu_s / one.per_cpu_s:.2f}")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--pipeline", type=int, default=2)
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
