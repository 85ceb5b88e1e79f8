"""Benchmark: many idle miners on one host, `poold run --processes N`, new blocks fanned out.

    python -m tests.bench.scale [--miners 100000] [--processes 6] [--rate 5000] [--blocks 3]
                                [--addresses 5] [--ready-limit-s 120]

A devnet runs in this process. `poold run --processes N` is pinned to one core (CPU 0, workers
included: they inherit the supervisor's affinity); the load generators, several processes
(descriptor limits are per process) each bound to one of the loopback source addresses
127.0.0.1..127.0.0.<addresses> (ephemeral ports run out near 28,000 per address), run on CPU 1.
They open `--miners` connections at `--rate` per second in total, each one subscribing and
authorizing at once (the subscribe goes out with the connect, as a miner's does); a miner is
ready when it holds a job (its first `mining.notify`). The generators count every connection the
pool closed (EOF or reset) and when, and every subscribe they sent late (a starved generator
looks silent to the pool). `ready` is counted at the generators' deadline (printed) and again
after the blocks (the figure on the last line: on a busy machine the pool may still be working
through the connect burst at the deadline).

Then `--blocks` blocks are mined on the devnet. t0 = this process receiving the devnet's ZMQ
`hashblock`; each miner is stamped when it has parsed a clean notify on the new prevhash.
fanout_last_ms is the last miner's stamp of the last block; fanout_us_per_miner_per_core =
fanout_last_ms x 1000 / miners reached x cores the pool ran on (1). RSS per connection = (the
pool's processes' RSS with the miners connected - before) / ready miners. The drop reasons the
pool counted are read from each worker's /metrics (`poold_stratum_disconnects_total`).

Baseline, measured first in the same run and the same way: 1,000 miners (`--baseline`), so the
per-miner fan-out cost at scale is shown as a ratio to the cost at a small population.

Last line exactly:
    scale processes=<n> miners=<n> ready=<n> rss_per_conn_kb=<x> fanout_last_ms=<y>
    fanout_us_per_miner_per_core=<z>
(on one line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import resource
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.multiprocess import pool_pids
from tests.bench.notify_fanout import zmq_stamps
from tests.bench.stratum_throughput import (
    LOADGEN_CPU,
    SERVER_CPU,
    LoadGenProc,
    config_port,
    poold_config,
    raise_nofile,
    regtest_address,
    rss_kb,
    wait_listening,
)

RESERVE_FDS = 256  # poold.stratum.limits.RESERVE_FDS
PER_GEN_MAX = 15_000  # connections per generator process (fds, and the epoll loop's length)


@dataclass
class Gen:
    """One idle-miner generator process (`tests.bench.loadgen --idle`) bound to `source`."""

    proc: LoadGenProc
    source: str
    conns: int
    ready: dict[str, Any] = field(default_factory=dict)


@dataclass
class Phase:
    miners: int
    ready: int
    closed: int
    closed_how: dict[str, int]
    failed: dict[str, int]
    connect_s: float
    rss_per_conn_kb: float
    fanout_last_ms: list[float]
    fanout_counts: list[int]
    drops: dict[str, float]


def low_ports(n: int) -> int:
    """The first of `n` consecutive free ports below the ephemeral range."""
    for base in range(20000, 32000, 50):
        free = True
        for port in range(base, base + n):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free:
            return base
    raise RuntimeError("no free ports below 32000")


def pool_rss_kb(pid: int) -> int:
    total = 0
    for p in pool_pids(pid):
        with contextlib.suppress(OSError):
            total += rss_kb(p)
    return total


async def scrape_drops(api_port: int, processes: int) -> dict[str, float]:
    """poold_stratum_disconnects_total summed over the workers' /metrics (API port + index)."""
    import aiohttp

    out: dict[str, float] = {}
    pattern = re.compile(r'^poold_stratum_disconnects_total\{reason="([a-z_]+)"\} (\S+)$', re.M)
    async with aiohttp.ClientSession() as http:
        for i in range(processes):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"http://127.0.0.1:{api_port + i}/metrics",
                                    timeout=aiohttp.ClientTimeout(total=10)) as r:
                    for reason, value in pattern.findall(await r.text()):
                        if float(value):
                            out[reason] = out.get(reason, 0.0) + float(value)
    return out


async def phase(dn: Any, address: str, pool_pid: int, port: int, api_port: int,
                processes: int, miners: int, rate: float, sources: list[str], blocks: int,
                ready_limit_s: float) -> Phase:
    n_gens = max(len(sources), math.ceil(miners / PER_GEN_MAX))
    n_gens = math.ceil(n_gens / len(sources)) * len(sources) if miners > 1000 else 1
    rss0 = pool_rss_kb(pool_pid)
    gens: list[Gen] = []
    base, extra = divmod(miners, n_gens)
    started = time.monotonic()
    for i in range(n_gens):
        conns = base + (1 if i < extra else 0)
        proc = await LoadGenProc.start(
            port, conns, 1, address, "--idle", "--rate", str(rate / n_gens), "--source",
            sources[i % len(sources)], "--ready-limit-s", str(ready_limit_s))
        gens.append(Gen(proc, sources[i % len(sources)], conns))
    try:
        limit = miners / rate + ready_limit_s + 60
        for g in gens:
            g.ready = await g.proc.event(limit)
        connect_s = time.monotonic() - started
        ready = sum(int(g.ready["ready"]) for g in gens)
        closed = sum(int(g.ready["closed"]) for g in gens)
        how: dict[str, int] = {}
        failed: dict[str, int] = {}
        for g in gens:
            for k, v in g.ready["closed_how"].items():
                how[k] = how.get(k, 0) + v
            for k, v in g.ready["failed"].items():
                failed[k] = failed.get(k, 0) + v
        print(f"  {miners} miners from {n_gens} generators: {ready} ready, {closed} closed by "
              f"the pool {how or ''}, {sum(failed.values())} failed {failed or ''} in "
              f"{connect_s:.1f} s", flush=True)
        if closed:
            first = sorted(t for g in gens for t in g.ready["closed_at"])[:10]
            print(f"  first closes at (s after the generator started): {first}", flush=True)
        await asyncio.sleep(2.0)
        lasts: list[float] = []
        counts: list[int] = []
        async with zmq_stamps(dn.zmq_url) as stamps:
            for b in range(blocks):
                for g in gens:
                    await g.proc.send("watch 60")
                for g in gens:
                    await g.proc.event(180)  # watching (a starved generator answers late)
                while not stamps.empty():
                    stamps.get_nowait()
                await dn.generate(1, address)
                t0 = await asyncio.wait_for(stamps.get(), 30)
                cleans = [await g.proc.event(180) for g in gens]
                last = max(float(c["last"]) for c in cleans if c["count"])
                count = sum(int(c["count"]) for c in cleans)
                lasts.append(1000 * (last - t0))
                counts.append(count)
                print(f"  block {b + 1}: {count} miners got the clean job, the last "
                      f"{lasts[-1]:.0f} ms after the hashblock", flush=True)
                await asyncio.sleep(1.0)
        drops = await scrape_drops(api_port, processes)
        # Miners holding a job now, after the blocks (the pool may still have been working
        # through the connect burst when the generators' deadline passed).
        statuses = []
        for g in gens:
            await g.proc.send("status")
            statuses.append(await g.proc.event(180))
        final = sum(int(st["ready"]) for st in statuses)
        closed = sum(int(st["closed"]) for st in statuses)
        print(f"  ready {ready} at the generators' deadline, {final} after the blocks; closed by "
              f"the pool in all: {closed}", flush=True)
        ready = final
        rss1 = pool_rss_kb(pool_pid)  # with every ready miner connected
        return Phase(miners, ready, closed, how, failed, connect_s,
                     (rss1 - rss0) / max(ready, 1), lasts, counts, drops)
    finally:
        await asyncio.gather(*(g.proc.close() for g in gens))


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOADGEN_CPU})
    from poold.devnet import Devnet

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    per_process = math.ceil(args.miners / args.processes * 1.25) + 100
    if per_process + RESERVE_FDS > soft:
        print(f"note: the descriptor limit is {soft} per process here: each worker takes at "
              f"most {soft - RESERVE_FDS} miners", flush=True)
        per_process = soft - RESERVE_FDS
    sources = [f"127.0.0.{i + 1}" for i in range(args.addresses)]
    address = regtest_address()
    async with Devnet() as dn:
        await dn.generate(101, address)
        with tempfile.TemporaryDirectory(prefix="poold-scale-") as tmp:
            cfg = poold_config(Path(tmp), dn.rpc_url, dn.rpc_user, dn.rpc_password, dn.zmq_url)
            # API ports (one per worker) below the ephemeral range: 100,000 outgoing loopback
            # connections would otherwise take one before a worker binds it.
            api_port = low_ports(args.processes)
            text = re.sub(r'(\[api\]\nlisten = "127.0.0.1:)\d+"', rf'\g<1>{api_port}"',
                          cfg.read_text())
            text = text.replace("max_connections = 100000", f"max_connections = {per_process}")
            cfg.write_text(text)
            port = config_port(cfg)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "poold", "run", "-c", str(cfg), "--processes",
                str(args.processes), stdout=asyncio.subprocess.DEVNULL)
            os.sched_setaffinity(proc.pid, {SERVER_CPU})
            try:
                await wait_listening(port, proc)
                await asyncio.sleep(3.0)  # every worker up (they inherit the pinning)
                print(f"poold --processes {args.processes} on CPU {SERVER_CPU}, "
                      f"{per_process} miners max per process; generators on CPU {LOADGEN_CPU}",
                      flush=True)
                print(f"baseline: {args.baseline} miners", flush=True)
                base = await phase(dn, address, proc.pid, port, api_port, args.processes,
                                   args.baseline, min(args.rate, 2000), sources[:1],
                                   args.blocks, 30)
                await asyncio.sleep(3.0)
                print(f"scale: {args.miners} miners at {args.rate:g}/s from "
                      f"{len(sources)} addresses", flush=True)
                full = await phase(dn, address, proc.pid, port, api_port, args.processes,
                                   args.miners, args.rate, sources, args.blocks,
                                   args.ready_limit_s)
            finally:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
    cores = 1
    b_us = base.fanout_last_ms[-1] * 1000 / max(base.fanout_counts[-1], 1) * cores
    reached = full.fanout_counts[-1]
    f_us = full.fanout_last_ms[-1] * 1000 / max(reached, 1) * cores
    print(f"drops counted by the pool (poold_stratum_disconnects_total): {full.drops}")
    print(f"fan-out per miner: {f_us:.1f} us at {reached} miners vs {b_us:.1f} us at "
          f"{base.fanout_counts[-1]} (baseline): ratio {f_us / max(b_us, 1e-9):.2f}; "
          f"on {cores} core")
    print(f"targets: ready = miners {'met' if full.ready == args.miners else 'MISSED'}; "
          f"rss_per_conn_kb <= 4 {'met' if full.rss_per_conn_kb <= 4 else 'MISSED'}")
    print(f"scale processes={args.processes} miners={args.miners} ready={full.ready} "
          f"rss_per_conn_kb={full.rss_per_conn_kb:.2f} "
          f"fanout_last_ms={full.fanout_last_ms[-1]:.0f} "
          f"fanout_us_per_miner_per_core={f_us:.2f}")
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--miners", type=int, default=100_000)
    p.add_argument("--processes", type=int, default=6)
    p.add_argument("--rate", type=float, default=5000.0, help="connections per second")
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--addresses", type=int, default=5)
    p.add_argument("--baseline", type=int, default=1000)
    p.add_argument("--ready-limit-s", type=float, default=120.0,
                   help="after the last connect, how long miners may take to be ready")
    args = p.parse_args()

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt  # SIGTERM: stop the pool and the generators on the way out

    signal.signal(signal.SIGTERM, interrupt)
    raise SystemExit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
