"""Submits answered per CPU-second of the server, over loopback TCP, server pinned to one core.

    python -m tests.bench.stratum_throughput [--duration 10] [--only bare|poold]

For each server (a bare asyncio responder as the baseline, then `poold run`) and each
configuration (1,000 connections x 4 submits outstanding; 10,000 x 1) a fresh server process is
pinned to CPU 0 and our load generator (tests/bench/loadgen.py, a separate process) to CPU 1.
The figure is answered submits / (utime+stime of the server process over the window, from
/proc/PID/stat). Random nonces; each extranonce2 is unique so no submit is a duplicate.

poold is served a template whose network target random nonces never meet: a JSON-RPC proxy in
front of the devnet rewrites `getblocktemplate`'s bits/target to difficulty 1 (1d00ffff), so the
share path is measured and no block is ever submitted. The output says so.

Last line exactly:
    stratum_throughput conns1k_p4_per_cpu_s=<x> conns10k_p1_per_cpu_s=<y> p99_ms=<z>
(poold's figures). p99_ms is the submit round trip a miner sees: 10,000 connections sending
10,000 submits/s in total, open loop (one share per miner per second). The closed-loop p99 is
printed too but is only queueing (10,000 outstanding / throughput).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import os
import resource
import socket
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVER_CPU = 0
LOADGEN_CPU = 1
CONFIGS = ((1000, 4), (10000, 1))
PACED_RATE = 10_000.0  # submits/s over the 10,000 connections: one share per miner per second
HARD_BITS = "1d00ffff"
HARD_TARGET = "00000000ffff0000000000000000000000000000000000000000000000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pin(cpu: int) -> None:
    raise_nofile()
    os.sched_setaffinity(0, {cpu})


def regtest_address() -> str:
    from poold.bitcoin.address import Network, p2wpkh_address

    return p2wpkh_address(bytes(range(20)), Network.REGTEST)


# ---------------------------------------------------------------------------------------------
# The bare baseline: parse every line, answer the handshake, answer every submit `false`.

BARE_NOTIFY = (
    b'{"id":null,"method":"mining.set_difficulty","params":[1]}\n'
    b'{"id":null,"method":"mining.notify","params":["1",'
    b'"0000000000000000000000000000000000000000000000000000000000000000",'
    b'"01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff20",'
    b'"ffffffff0100f2052a010000001976a914000000000000000000000000000000000000000088ac00000000",'
    b'[],"20000000","1d00ffff","5f5e1000",true]}\n'
)


class BareResponder(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        out = []
        for line in lines:
            msg = json.loads(line)
            method = msg.get("method")
            rid = json.dumps(msg.get("id"))
            if method == "mining.submit":
                out.append(f'{{"id":{rid},"result":false,"error":null}}\n'.encode())
            elif method == "mining.subscribe":
                out.append(
                    f'{{"id":{rid},"result":[[["mining.notify","1"]],"00000001",8],'
                    f'"error":null}}\n'.encode()
                )
            elif method == "mining.authorize":
                out.append(f'{{"id":{rid},"result":true,"error":null}}\n'.encode())
                out.append(BARE_NOTIFY)
            else:
                out.append(f'{{"id":{rid},"result":null,"error":[20,"unknown",null]}}\n'.encode())
        if out:
            self.transport.write(b"".join(out))


def bare_server_main(port: int) -> None:
    _pin(SERVER_CPU)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(BareResponder, "127.0.0.1", port, backlog=4096)
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# ---------------------------------------------------------------------------------------------
# Processes.


@dataclass
class Server:
    proc: asyncio.subprocess.Process
    port: int
    name: str

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn_pinned(*argv: str, cpu: int = SERVER_CPU) -> asyncio.subprocess.Process:
    """Start a server process and pin it (and the threads it starts later) to `cpu`.

    The child inherits our raised RLIMIT_NOFILE.
    """
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
    os.sched_setaffinity(proc.pid, {cpu})
    return proc


async def wait_listening(port: int, proc: asyncio.subprocess.Process, limit_s: float = 60) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise TimeoutError(f"nothing listening on {port}")


async def start_bare() -> Server:
    port = free_port()
    proc = await spawn_pinned(
        sys.executable, "-m", "tests.bench.stratum_throughput", "--bare-server", str(port)
    )
    await wait_listening(port, proc)
    return Server(proc, port, "bare asyncio")


def poold_config(
    workdir: Path, rpc_url: str, user: str, password: str, zmq_url: str,
    invalid_share_limit: int | None = None,
) -> Path:
    port = free_port()
    ladder = "" if invalid_share_limit is None else f"invalid_share_limit = {invalid_share_limit}\n"
    cfg = workdir / "poold.toml"
    cfg.write_text(
        f"""[pool]
network = "regtest"
payout = "solo"
coinbase_tag = "/poold-bench/"
instance_id = 1
state_dir = "{workdir}"

[[nodes]]
rpc_url = "{rpc_url}"
rpc_user = "{user}"
rpc_password = "{password}"
zmq_hashblock = "{zmq_url}"

[stratum]
listen = "127.0.0.1:{port}"
start_difficulty = 1.0
min_difficulty = 1.0
max_difficulty = 1e15
share_interval_s = 1e6
max_connections = 100000
max_per_ip = 100000
idle_timeout_s = 3600
{ladder}
[api]
listen = "127.0.0.1:{free_port()}"

[log]
level = "WARNING"
"""
    )
    return cfg


def config_port(cfg: Path) -> int:
    data = tomllib.loads(cfg.read_text())
    return int(str(data["stratum"]["listen"]).rsplit(":", 1)[1])


def poold_server_main(cfg_path: str, accept_all: bool) -> None:
    """`poold run`'s own `serve()` on CPU 0 (with `accept_all`, one bench-only wiring override).

    The invalid-share ladder is off through the config (`stratum.invalid_share_limit = 0`): random
    nonces are all invalid shares, and the ladder would disconnect every generator connection
    after 100 of them (then ban the IP). With `accept_all`, the difficulty bounds go below 1e-9
    (under the config's minimum, hence the override) so every hash is a share (the accepted path,
    with the ledger), still never a block against the hard network target.
    """
    import functools
    import logging

    from poold import daemon
    from poold.config import load_config

    _pin(SERVER_CPU)
    logging.basicConfig(level=logging.WARNING)
    if accept_all:
        from poold.work.difficulty import DifficultyPolicy

        policy = DifficultyPolicy(1e-12, 1e-12, 1e-12)
        daemon.build_pool = functools.partial(  # type: ignore[assignment]
            daemon.build_pool, difficulty=policy
        )
    sys.exit(asyncio.run(daemon.serve(load_config(Path(cfg_path)))))


async def start_poold(cfg: Path, accept_all: bool = False) -> Server:
    port = config_port(cfg)
    extra = ["--accept-all"] if accept_all else []
    proc = await spawn_pinned(
        sys.executable, "-m", "tests.bench.stratum_throughput", "--poold-server", str(cfg), *extra
    )
    await wait_listening(port, proc)
    return Server(proc, port, "poold")


class LoadGenProc:
    """Drives a loadgen process over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(
        cls, port: int, conns: int, pipeline: int, user: str, *extra: str
    ) -> LoadGenProc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.bench.loadgen", "--port", str(port),
            "--conns", str(conns), "--pipeline", str(pipeline), "--user", user,
            "--cpu", str(LOADGEN_CPU), *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def event(self, limit_s: float = 300) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        if not line:
            raise RuntimeError(f"loadgen exited ({await self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    async def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            await self.send("quit")
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@dataclass
class Figure:
    per_cpu_s: float
    per_s: float
    p99_ms: float
    cpu_us_per_submit: float
    accepted: int
    rejected: int
    codes: dict[str, int]
    paced_p99_ms: float  # open loop at PACED_RATE submits/s (10k config only)
    paced_stalls: list[list[float]]  # [start s, length s, worst ms, round trips] > 50 ms
    server_busy: float  # CPU-seconds per wall second of the server over the window
    gen_busy: float  # same for the load generator (near 1.0 = generator-bound)


async def measure(
    server: Server,
    conns: int,
    pipeline: int,
    user: str,
    seconds: float,
    profile: str | None = None,
    paced_rate: float = 0.0,
) -> Figure:
    gen = await LoadGenProc.start(server.port, conns, pipeline, user)
    try:
        ready = await gen.event()
        if ready.get("event") != "ready":
            raise RuntimeError(f"loadgen: {ready}")
        await gen.send("go 2")  # warm-up
        await gen.event()
        if paced_rate:
            # Open loop at a rate the server sustains: the latency a miner sees (the closed
            # loop's p99 is only queueing: 10,000 outstanding / throughput).
            await gen.send(f"go {seconds} {paced_rate}")
            paced = await gen.event(seconds + 120)
        gen_pid = int(ready["pid"])
        cpu0, gcpu0, t0 = cpu_seconds(server.proc.pid), cpu_seconds(gen_pid), time.monotonic()
        async with profiled(server.proc.pid, profile):
            await gen.send(f"go {seconds}")
            done = await gen.event(seconds + 120)
            cpu1, gcpu1, t1 = cpu_seconds(server.proc.pid), cpu_seconds(gen_pid), time.monotonic()
    finally:
        await gen.close()
    cpu = max(cpu1 - cpu0, 1e-9)
    answered = int(done["answered"])
    return Figure(
        per_cpu_s=answered / cpu,
        per_s=answered / float(done["seconds"]),
        p99_ms=float(done["p99_ms"]),
        cpu_us_per_submit=1e6 * cpu / max(answered, 1),
        accepted=int(done["accepted"]),
        rejected=int(done["rejected"]),
        codes=dict(done.get("codes", {})),
        paced_p99_ms=float(paced["p99_ms"]) if paced_rate else float("nan"),
        paced_stalls=list(paced.get("slow_periods", [])) if paced_rate else [],
        server_busy=(cpu1 - cpu0) / (t1 - t0),
        gen_busy=(gcpu1 - gcpu0) / (t1 - t0),
    )


@contextlib.asynccontextmanager
async def profiled(pid: int, out: str | None) -> AsyncIterator[None]:
    """Sample `pid` with py-spy while the block runs; print the hottest frames (self time)."""
    if not out:
        yield
        return
    raw = f"{out}.txt"
    spy = await asyncio.create_subprocess_exec(
        "py-spy", "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", raw, "--nonblocking",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(1.0)
    try:
        yield
    finally:
        spy.send_signal(2)
        await spy.wait()
        print_profile(raw)


def print_profile(raw: str, top: int = 25) -> None:
    """Self and inclusive sample shares from py-spy's collapsed stacks."""
    selfs: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    with contextlib.suppress(FileNotFoundError), open(raw) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            selfs[frames[-1]] = selfs.get(frames[-1], 0) + n
            for fr in set(frames):
                incl[fr] = incl.get(fr, 0) + n
    if not total:
        print(f"  profile: no samples in {raw}")
        return
    print(f"  profile ({total} samples, {raw}): self time")
    for fr, n in sorted(selfs.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f}%  {fr}")
    print("  inclusive")
    for fr, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {100 * n / total:5.1f}%  {fr}")


# ---------------------------------------------------------------------------------------------
# The devnet behind a proxy that makes the network target hard.


@contextlib.asynccontextmanager
async def hard_node() -> AsyncIterator[tuple[str, str, str, str]]:
    """Yield (rpc_url, user, password, zmq_url) of a devnet whose templates carry bits 1d00ffff."""
    import aiohttp
    from aiohttp import web

    from poold.devnet import Devnet

    async with Devnet() as dn:
        await dn.generate(101, regtest_address())
        token = base64.b64encode(f"{dn.rpc_user}:{dn.rpc_password}".encode()).decode()
        auth = f"Basic {token}"
        session = aiohttp.ClientSession(headers={"Authorization": auth})

        def harden(reply: dict[str, Any]) -> dict[str, Any]:
            result = reply.get("result")
            if isinstance(result, dict) and "bits" in result and "coinbasevalue" in result:
                result["bits"] = HARD_BITS
                result["target"] = HARD_TARGET
            return reply

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            async with session.post(
                dn.rpc_url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                payload = await resp.json(content_type=None)
                status = resp.status
            if isinstance(payload, list):
                payload = [harden(r) for r in payload]
            elif isinstance(payload, dict):
                payload = harden(payload)
            return web.json_response(payload, status=status)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            yield f"http://127.0.0.1:{port}/", "proxy", "proxy", dn.zmq_url
        finally:
            await runner.cleanup()
            await session.close()


# ---------------------------------------------------------------------------------------------


def _paced(f: Figure) -> str:
    if f.paced_p99_ms != f.paced_p99_ms:  # nan
        return ""
    stalls = "; ".join(
        f"{a:.1f}s+{1000 * b:.0f}ms worst {c:.0f}ms" for a, b, c, _ in f.paced_stalls
    )
    return (
        f" (open loop {PACED_RATE:.0f}/s: p99 {f.paced_p99_ms:.1f} ms; stalls: {stalls or 'none'})"
    )


def _line(label: str, f: Figure, conns: int, pipeline: int) -> str:
    return (
        f"  {label:14s} {conns:6d} conns x {pipeline}: {f.per_cpu_s:9.0f} submits/CPU-s  "
        f"{f.per_s:9.0f}/s wall  {f.cpu_us_per_submit:6.1f} us CPU/submit  "
        f"p99 {f.p99_ms:7.1f} ms{_paced(f)}  "
        f"busy server {f.server_busy:.0%} generator {f.gen_busy:.0%}  "
        f"(accepted {f.accepted}, rejected {f.rejected} {f.codes})"
    )


async def run(args: argparse.Namespace) -> int:
    raise_nofile()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {LOADGEN_CPU})
    user = regtest_address()
    results: dict[tuple[str, int, int], Figure] = {}
    if args.only in (None, "bare"):
        print("baseline: bare asyncio responder (json.loads per line, answers false)")
        for conns, pipeline in CONFIGS:
            server = await start_bare()
            paced = PACED_RATE if conns == 10000 else 0.0
            try:
                fig = await measure(server, conns, pipeline, user, args.duration, None, paced)
            finally:
                await server.stop()
            results[("bare", conns, pipeline)] = fig
            print(_line("bare", fig, conns, pipeline), flush=True)
    poold_ok = False
    if args.only in (None, "poold"):
        try:
            importlib.import_module("poold.daemon")
            importlib.import_module("poold.devnet")

            poold_ok = True
        except ImportError as exc:
            print(f"poold: not measured ({exc})")
    if poold_ok:
        print(
            "poold: `poold run`'s serve() against the devnet through a JSON-RPC proxy that sets "
            f"the template bits to {HARD_BITS} (difficulty 1), so random nonces never meet the "
            "network target; share difficulty 1, so every submit is judged a low-difficulty "
            "share (code 23); invalid-share ladder off (invalid_share_limit = 0)"
        )
        variants = [(c, p, False) for c, p in CONFIGS]
        if args.accepted:
            variants += [(c, p, True) for c, p in CONFIGS]
        with tempfile.TemporaryDirectory(prefix="poold-bench-") as tmp:
            async with hard_node() as (rpc_url, ruser, rpass, zmq_url):
                for conns, pipeline, accept_all in variants:
                    workdir = Path(tmp) / f"c{conns}-{int(accept_all)}"
                    workdir.mkdir()
                    cfg = poold_config(
                        workdir, rpc_url, ruser, rpass, zmq_url, invalid_share_limit=0
                    )
                    server = await start_poold(cfg, accept_all)
                    prof = (
                        f"{args.profile}-{conns}x{pipeline}{'-accept' if accept_all else ''}"
                        if args.profile
                        else None
                    )
                    paced = PACED_RATE if conns == 10000 and not accept_all else 0.0
                    try:
                        fig = await measure(
                            server, conns, pipeline, user, args.duration, prof, paced
                        )
                    finally:
                        await server.stop()
                    label = "poold-accept" if accept_all else "poold"
                    results[(label, conns, pipeline)] = fig
                    print(_line(label, fig, conns, pipeline), flush=True)
    for conns, pipeline in CONFIGS:
        b = results.get(("bare", conns, pipeline))
        p = results.get(("poold", conns, pipeline))
        if b and p:
            print(f"  ratio poold/bare {conns} x {pipeline}: {p.per_cpu_s / b.per_cpu_s:.2f}")
    p1 = results.get(("poold", 1000, 4))
    p2 = results.get(("poold", 10000, 1))
    src = "poold"
    if p1 is None or p2 is None:
        src = "bare (poold not measured)"
        p1 = results.get(("bare", 1000, 4))
        p2 = results.get(("bare", 10000, 1))
    print(f"figures below: {src}")
    nan = float("nan")
    print(
        f"stratum_throughput conns1k_p4_per_cpu_s={p1.per_cpu_s if p1 else nan:.0f} "
        f"conns10k_p1_per_cpu_s={p2.per_cpu_s if p2 else nan:.0f} "
        f"p99_ms={p2.paced_p99_ms if p2 else nan:.1f}"
    )
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--only", choices=("bare", "poold"), default=None)
    p.add_argument("--profile", default=None, help="py-spy poold into PREFIX-<config>.txt")
    p.add_argument(
        "--accepted",
        action="store_true",
        help="also measure poold with every hash an accepted share (the ledger path)",
    )
    p.add_argument("--bare-server", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--poold-server", default=None, help=argparse.SUPPRESS)
    p.add_argument("--accept-all", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare_server is not None:
        bare_server_main(args.bare_server)
        return
    if args.poold_server is not None:
        poold_server_main(args.poold_server, args.accept_all)
        return
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
