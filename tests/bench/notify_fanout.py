"""New block -> every idle miner holds the clean job: fan-out latency and memory per connection.

    python -m tests.bench.notify_fanout [--conns 10000] [--rounds 5]

A devnet runs in this process. The server (a bare asyncio fan-out responder as the baseline,
then `poold run` against the devnet) is pinned to CPU 0; our load generator holds `--conns` idle
miners (subscribed, authorized, holding a job) on CPU 1. Each round mines one block on the devnet;
t0 = when this process receives the devnet's ZMQ `hashblock` message, and each miner is stamped
when it has parsed a `clean_jobs=true` notify on a new prevhash. RSS per connection = (server RSS
with the miners connected - RSS before they connected) / connections.

The generator notices 10,000 notifies on one core too, so last_ms includes its own tail; it
uses plain sockets and one epoll loop (a recv and a 0.5 us regex per connection) to keep it short.

Last line exactly:
    notify_fanout connections=<n> first_ms=<x> last_ms=<y> rss_per_conn_kb=<z>
(poold's figures, medians over the rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench.stratum_throughput import (
    LOADGEN_CPU,
    LoadGenProc,
    Server,
    config_port,
    free_port,
    poold_config,
    profiled,
    raise_nofile,
    regtest_address,
    rss_kb,
    spawn_pinned,
    wait_listening,
)

# ---------------------------------------------------------------------------------------------
# Baseline: a bare asyncio server that answers the handshake and, on each ZMQ hashblock,
# serializes one clean notify and writes it to every connection.

_SUBSCRIBE = '{{"id":{},"result":[[["mining.notify","1"]],"{:08x}",8],"error":null}}\n'
_NOTIFY = (
    '{{"id":null,"method":"mining.notify","params":["{job}","{prev}",'
    '"01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20",'
    '"ffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000",'
    '[],"20000000","207fffff","{ntime:08x}",{clean}]}}\n'
)


def _append(path: str, text: str) -> None:
    # After the measured loop, a few bytes: not worth a thread.
    with open(path, "a") as f:
        f.write(text)


def bare_fanout_main(port: int, zmq_url: str, loop_log: str) -> None:
    import json

    import zmq
    import zmq.asyncio

    conns: list[asyncio.Transport] = []
    state = {"job": 1, "prev": "00" * 32}

    def notify(clean: bool) -> bytes:
        line = _NOTIFY.format(
            job=state["job"], prev=state["prev"], ntime=int(time.time()), clean=str(clean).lower()
        )
        return line.encode()

    class Bare(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.t = transport
            self.buf = b""
            conns.append(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            conns.remove(self.t)

        def data_received(self, data: bytes) -> None:
            lines = (self.buf + data).split(b"\n")
            self.buf = lines.pop()
            out = []
            for line in lines:
                msg = json.loads(line)
                rid = json.dumps(msg.get("id"))
                if msg.get("method") == "mining.subscribe":
                    out.append(_SUBSCRIBE.format(rid, len(conns)).encode())
                elif msg.get("method") == "mining.authorize":
                    out.append(f'{{"id":{rid},"result":true,"error":null}}\n'.encode())
                    out.append(notify(True))
                else:
                    out.append(f'{{"id":{rid},"result":false,"error":null}}\n'.encode())
            self.t.write(b"".join(out))

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Bare, "127.0.0.1", port, backlog=4096)
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"hashblock")
        sock.connect(zmq_url)
        async with server:
            while True:
                frames = await sock.recv_multipart()
                h = frames[1]
                state["job"] += 1
                state["prev"] = b"".join(h[::-1][i : i + 4][::-1] for i in range(0, 32, 4)).hex()
                t0 = time.perf_counter()
                line = notify(True)
                for t in conns:
                    t.write(line)
                # How long the send loop itself took: the server's share of last_ms.
                _append(loop_log, f"{1000 * (time.perf_counter() - t0):.1f}\n")

    asyncio.run(serve())


# ---------------------------------------------------------------------------------------------


@dataclass
class Round:
    first_ms: float
    last_ms: float
    count: int


@contextlib.asynccontextmanager
async def zmq_stamps(zmq_url: str) -> AsyncIterator[asyncio.Queue[float]]:
    """time.time() of each hashblock message, as this process receives it."""
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.SUBSCRIBE, b"hashblock")
    sock.connect(zmq_url)
    queue: asyncio.Queue[float] = asyncio.Queue()

    async def pump() -> None:
        while True:
            await sock.recv_multipart()
            queue.put_nowait(time.time())

    task = asyncio.create_task(pump())
    await asyncio.sleep(0.5)  # ZMQ slow joiner: let the subscription reach the publisher
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close(0)
        ctx.term()


async def measure(
    server: Server,
    dn: Any,
    zmq_url: str,
    conns: int,
    rounds: int,
    address: str,
    profile: str | None = None,
) -> tuple[list[Round], float]:
    await asyncio.sleep(1.0)
    rss0 = rss_kb(server.proc.pid)
    gen = await LoadGenProc.start(server.port, conns, 1, address, "--idle")
    results: list[Round] = []
    try:
        ready = await gen.event()
        if ready.get("event") != "ready":
            raise RuntimeError(f"loadgen: {ready}")
        await asyncio.sleep(2.0)
        rss1 = rss_kb(server.proc.pid)
        async with zmq_stamps(zmq_url) as stamps, profiled(server.proc.pid, profile):
            for _ in range(rounds):
                await gen.send("watch 30")
                await gen.event()  # watching
                while not stamps.empty():
                    stamps.get_nowait()
                await dn.generate(1, address)
                t0 = await asyncio.wait_for(stamps.get(), 30)
                clean = await gen.event(60)
                if not clean.get("count"):
                    raise RuntimeError("no miner received a clean job")
                results.append(
                    Round(
                        first_ms=1000 * (float(clean["first"]) - t0),
                        last_ms=1000 * (float(clean["last"]) - t0),
                        count=int(clean["count"]),
                    )
                )
                await asyncio.sleep(1.0)
    finally:
        await gen.close()
    return results, (rss1 - rss0) / conns


def _summary(label: str, rounds: list[Round], rss: float, conns: int) -> tuple[float, float]:
    first = statistics.median(r.first_ms for r in rounds)
    last = statistics.median(r.last_ms for r in rounds)
    lasts = ", ".join(f"{r.last_ms:.0f}" for r in rounds)
    short = [r.count for r in rounds if r.count < conns]
    print(
        f"  {label:6s} {conns} miners: first {first:6.1f} ms  last {last:6.1f} ms "
        f"(rounds: {lasts})  RSS/conn {rss:.2f} KB"
        + (f"  INCOMPLETE rounds: {short}" if short else ""),
        flush=True,
    )
    return first, last


def _read_loop_log(path: Path) -> list[float]:
    try:
        return [float(x) for x in path.read_text().split()]
    except FileNotFoundError:
        return []


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOADGEN_CPU})
    from poold.devnet import Devnet

    address = regtest_address()
    figures: dict[str, tuple[float, float, float]] = {}
    async with Devnet() as dn:
        await dn.generate(101, address)
        print(f"devnet at height {dn.height}; {args.conns} idle miners; {args.rounds} rounds")
        # Baseline.
        port = free_port()
        loop_log = Path(tempfile.mkdtemp(prefix="fanout-")) / "send_loop_ms"
        proc = await spawn_pinned(
            sys.executable, "-m", "tests.bench.notify_fanout",
            "--bare-server", str(port), "--zmq", dn.zmq_url, "--loop-log", str(loop_log),
        )  # fmt: skip
        server = Server(proc, port, "bare")
        try:
            await wait_listening(port, proc)
            rounds, rss = await measure(server, dn, dn.zmq_url, args.conns, args.rounds, address)
        finally:
            await server.stop()
        f, last = _summary("bare", rounds, rss, args.conns)
        figures["bare"] = (f, last, rss)
        loops = _read_loop_log(loop_log)
        if loops:
            print(
                f"  bare server's send loop alone: {statistics.median(loops):.1f} ms median "
                f"({', '.join(f'{x:.0f}' for x in loops)}); the rest of last_ms is wake-up and "
                "the generator's tail"
            )
        try:
            importlib.import_module("poold.daemon")
        except ImportError as exc:
            print(f"poold: not measured ({exc})")
        else:
            with tempfile.TemporaryDirectory(prefix="poold-fanout-") as tmp:
                cfg = poold_config(Path(tmp), dn.rpc_url, dn.rpc_user, dn.rpc_password, dn.zmq_url)
                port = config_port(cfg)
                proc = await spawn_pinned(
                    sys.executable, "-m", "poold", "--log-level", "WARNING", "run", "-c", str(cfg)
                )
                server = Server(proc, port, "poold")
                try:
                    await wait_listening(port, proc)
                    rounds, rss = await measure(
                        server, dn, dn.zmq_url, args.conns, args.rounds, address, args.profile
                    )
                finally:
                    await server.stop()
                f, last = _summary("poold", rounds, rss, args.conns)
                figures["poold"] = (f, last, rss)
    if "poold" in figures:
        b, p = figures["bare"], figures["poold"]
        ratio_rss = p[2] / max(b[2], 1e-9)
        print(f"  ratio poold/bare last_ms {p[1] / b[1]:.2f}  rss/conn {ratio_rss:.2f}")
        src = "poold"
    else:
        src = "bare (poold not measured)"
    first, last, rss = figures.get("poold", figures["bare"])
    print(f"figures below: {src}")
    print(
        f"notify_fanout connections={args.conns} first_ms={first:.1f} last_ms={last:.1f} "
        f"rss_per_conn_kb={rss:.2f}"
    )
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--profile", default=None, help="py-spy poold into PREFIX.txt")
    p.add_argument("--bare-server", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--zmq", default="", help=argparse.SUPPRESS)
    p.add_argument("--loop-log", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server is not None:
        raise_nofile()
        bare_fanout_main(args.bare_server, args.zmq, args.loop_log)
        return
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
