"""`poold demo`: a devnet, the pool and CPU miners finding real regtest blocks, narrated.

Starts an in-process devnet (Bitcoin Core's consensus via libbitcoinkernel, JSON-RPC + ZMQ),
runs `poold run` against it on loopback with a generated config, and connects a few
`poold.sim.miner.StratumMiner`s that grind real shares at a tiny difficulty. On regtest almost
every such share also meets the network target, so blocks come quickly: each one is checked on
the devnet (it must become the tip, with a coinbase paying the miner that found it, solo payout).

`--fleet` adds a simulated ASIC site run the real way: `poold.sim.fleet_demo.FleetDemo` starts
the emulated firmware servers in this process before the pool, the generated config gets their
`[fleet]` table (and an admin API write token), so `poold run`'s own fleet controller drives
them over TCP; `attach(ctx: DemoContext)` then starts their rate-following miners, cuts the rack
caps through the admin API mid-demo (`--fleet-cut-at`) and narrates. `--api-listen` fixes the
admin API address (printed at start) so an external Prometheus can scrape the demo's poold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from poold.bitcoin.address import Network, address_to_script, p2wpkh_address
from poold.bitcoin.block import parse_block
from poold.bitcoin.byteorder import hash_from_hex
from poold.sim.miner import MinerEvent, StratumMiner
from poold.sim.ports import free_port

FLEET_CPU_MINER_HS = 100_000.0
N = "\x00blocks\x00"  # in an outcome's line: the number of blocks verified when all is done


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--miners", type=int, default=3, help="CPU miners to run (default 3)")
    parser.add_argument(
        "--blocks", type=int, default=0,
        help="stop once at least this many found blocks are on the devnet's chain (with --fleet "
        "not before the rack cut is met, so usually more; the last line says how many); "
        "default: run until ^C. If the pool or the devnet dies, the demo stops at once with "
        "exit code 1",
    )
    parser.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (default: none)"
    )
    parser.add_argument(
        "--difficulty",
        type=float,
        default=1e-4,
        help="share difficulty the miners ask for (mining.suggest_difficulty; default 1e-4)",
    )
    parser.add_argument(
        "--hashrate",
        type=float,
        default=0.0,
        help="cap each CPU miner at this many H/s (default: as fast as the CPU allows; with "
        "--fleet 100000, so the emulated site in the same process keeps its CPU)",
    )
    parser.add_argument("--fleet", action="store_true",
                        help="also run a simulated ASIC site (2 racks x 10 emulated miners) "
                        "under poold's fleet controller")
    parser.add_argument("--fleet-cut-at", type=float, default=60.0, metavar="SECONDS",
                        help="with --fleet: cut every rack cap to 60%% this long after the "
                        "miners start (default 60)")
    parser.add_argument("--api-listen", type=_host_port, default=None, metavar="HOST:PORT",
                        help="admin API and /metrics of the demo's poold (default: a free "
                        "loopback port)")
    parser.add_argument("--pool-log", type=Path, default=None, metavar="FILE",
                        help="write the demo pool's own log (INFO and up) to FILE (default: "
                        "only its errors, on the terminal)")


def _open_log(path: Path) -> BinaryIO:
    """The pool's log file, appended to; the caller closes it."""
    return path.open("ab")


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass
class DemoContext:
    """What the demo shares with add-ons (the fleet emulator): read-only apart from say()."""

    devnet: Any
    stratum_host: str
    stratum_port: int
    config_path: Path
    stop: asyncio.Event
    say: Callable[[str], None]
    miners: list[StratumMiner] = field(default_factory=list)
    api_url: str = ""
    api_token: str = ""
    fleet: Any = None  # poold.sim.fleet_demo.FleetDemo with --fleet
    fleet_cut_at_s: float = 60.0
    fleet_difficulty: float | None = None
    # Set by the fleet add-on once its story is told (every rack under its cut cap); the demo
    # does not stop for `--blocks` before that.
    fleet_done: asyncio.Event = field(default_factory=asyncio.Event)


class Narrator:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.accepted = 0
        self.rejected = 0
        self.last_summary = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.2f}s] {text}", flush=True)

    def on_event(self, ev: MinerEvent) -> None:
        if ev.kind == "connected":
            self.say(f"{ev.miner}: connected")
        elif ev.kind == "authorized":
            self.say(f"{ev.miner}: authorized")
        elif ev.kind == "accepted":
            self.accepted += 1
        elif ev.kind == "rejected":
            self.rejected += 1
            self.say(f"{ev.miner}: share rejected ({ev.reason}) on job {ev.job_id}")
        elif ev.kind == "disconnected":
            self.say(f"{ev.miner}: disconnected")
        if time.monotonic() - self.last_summary >= 5.0:
            self.last_summary = time.monotonic()
            self.say(f"shares: {self.accepted} accepted, {self.rejected} rejected")


def write_config(workdir: Path, devnet: Any, port: int, difficulty: float, extra: str = "", *,
                 api: tuple[str, int] | None = None, api_token: str = "",
                 share_interval_s: float = 2.0) -> Path:
    """A `poold run` config for the devnet (regtest, solo payout, tiny difficulties); `extra`
    is appended (the `[fleet]` table), `api_token` becomes the admin API's write token."""
    api_host, api_port = api if api is not None else ("127.0.0.1", free_port())
    tokens = f"write_tokens = [{api_token!r}]\n" if api_token else ""
    cfg = workdir / "poold.toml"
    cfg.write_text(
        f"""# generated by `poold demo`
[pool]
network = "regtest"
payout = "solo"
coinbase_tag = "/poold-demo/"
instance_id = 1
state_dir = "{workdir}"

[[nodes]]
name = "devnet"
rpc_url = "{devnet.rpc_url}"
rpc_user = "{devnet.rpc_user}"
rpc_password = "{devnet.rpc_password}"
zmq_hashblock = "{devnet.zmq_url}"

[stratum]
listen = "127.0.0.1:{port}"
start_difficulty = {difficulty!r}
min_difficulty = 1e-8
max_difficulty = 1e15
share_interval_s = {share_interval_s!r}

[api]
listen = "{api_host}:{api_port}"
{tokens}
{extra}"""
    )
    return cfg


class PoolProcess:
    """The demo's `poold run` child. Without `--pool-log` its output is echoed to the terminal
    (it logs at ERROR) and the last lines are kept; with it, they are read back from that file.
    Either way the demo can say why the pool died."""

    TAIL = 15

    def __init__(self, proc: asyncio.subprocess.Process, log_path: Path | None) -> None:
        self.proc = proc
        self.log_path = log_path
        self.lines: deque[str] = deque(maxlen=self.TAIL)
        self._reader: asyncio.Task[None] | None = None
        if proc.stdout is not None:
            self._reader = asyncio.create_task(self._echo(proc.stdout), name="pool-output")

    async def _echo(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            print(f"  pool| {text}", file=sys.stderr, flush=True)

    def failure(self) -> str | None:
        if self.proc.returncode is None:
            return None
        return (f"the pool (`poold run`, pid {self.proc.pid}) exited with code "
                f"{self.proc.returncode}")

    async def last_lines(self) -> list[str]:
        if self._reader is not None:  # the rest of the dead child's output
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
            return list(self.lines)
        if self.log_path is None:
            return []
        return await asyncio.to_thread(_tail, self.log_path, self.TAIL)

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s` (short when the demo already failed)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace_s)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
            self._reader.cancel()


def _tail(path: Path, n: int) -> list[str]:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 16384))
        return [ln.decode(errors="replace") for ln in f.read().splitlines()[-n:]]


async def wait_listening(host: str, port: int, pool: PoolProcess, devnet: Any) -> str | None:
    """None once the pool accepts connections on host:port; else why it never will."""
    for _ in range(300):
        failure = pool.failure() or devnet.failure
        if failure:
            return str(failure)
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None
    return f"poold did not listen on {host}:{port} within 30 s"


def _bip34_height(script_sig: bytes) -> int:
    """The height a coinbase's scriptSig starts with (BIP34: OP_1..OP_16 or a minimal push)."""
    op = script_sig[0]
    if 0x51 <= op <= 0x60:
        return op - 0x50
    return int.from_bytes(script_sig[1 : 1 + op], "little")


async def _verify_block(
    devnet: Any, hash_hex: str, payouts: dict[bytes, str], say: Callable[[str], None]
) -> bool:
    """Is the block on the devnet's chain, and whom does its coinbase pay?"""
    for _ in range(50):
        raw = await devnet.read_block(hash_from_hex(hash_hex))
        if raw is not None:
            break
        await asyncio.sleep(0.1)
    else:
        say(f"block {hash_hex[:16]}... NOT on the devnet (the pool's submit was refused?)")
        return False
    _, txs = parse_block(raw)
    height = _bip34_height(txs[0].inputs[0].script_sig)
    paid = [payouts.get(out.script_pubkey) for out in txs[0].outputs if out.value > 0]
    names = ", ".join(p for p in paid if p) or "an unknown script"
    value = sum(out.value for out in txs[0].outputs) / 1e8
    if devnet.view.height_of(hash_from_hex(hash_hex)) is None:
        # Every regtest share is a block, so two can race for one height: both are valid,
        # the first one the node saw stays on the chain.
        say(f"block {hash_hex} at height {height}: valid, but a sibling won the height (stale)")
        return False
    say(
        f"BLOCK height {height} {hash_hex} is on the devnet's chain "
        f"(Bitcoin Core consensus); coinbase pays {value:.8f} BTC to {names}; {len(txs)} tx"
    )
    return True


@dataclass
class Outcome:
    """How the demo ended: the exit code and the final line, printed after everything stopped."""

    code: int
    line: str
    pool_died: bool = False


async def demo(args: argparse.Namespace) -> int:
    from poold.devnet import Devnet

    narrator = Narrator()
    say = narrator.say
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)

    outcome = Outcome(1, "FAILED: the demo did not start")
    with tempfile.TemporaryDirectory(prefix="poold-demo-") as tmp:
        async with Devnet() as dn:
            await dn.generate(1)
            say(f"devnet up: regtest at height {dn.height}, RPC {dn.rpc_url}, ZMQ {dn.zmq_url}")
            port = free_port()
            api = args.api_listen or ("127.0.0.1", free_port())
            token = secrets.token_hex(16)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            fleet = None
            extra = ""
            if args.fleet:
                from poold.sim import fleet_demo

                fleet_payout = p2wpkh_address(os.urandom(20), Network.REGTEST)
                fleet = await fleet_demo.FleetDemo.start(worker_prefix=fleet_payout)
                extra = fleet.fleet_toml()
                env[fleet_demo.PASSWORD_ENV] = fleet_demo.PASSWORD
                say(f"fleet: {len(fleet.asics)} emulated ASIC firmware servers on loopback; "
                    f"they mine to {fleet_payout}")
            cfg = write_config(Path(tmp), dn, port, args.difficulty, extra, api=api,
                               api_token=token, share_interval_s=5.0 if args.fleet else 2.0)
            api_url = f"http://{api[0]}:{api[1]}"
            say(f"admin API: {api_url} (Prometheus: {api_url}/metrics)")
            pool_log = _open_log(args.pool_log) if args.pool_log is not None else None
            try:
                # -P and cwd: a `poold/` folder in the directory the demo was started from
                # must not shadow the installed package in the child.
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-P", "-m", "poold", "--log-level",
                    "ERROR" if pool_log is None else "INFO", "run", "-c", str(cfg), env=env,
                    cwd=tmp, stdout=pool_log or asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )  # fmt: skip
            finally:
                if pool_log is not None:  # the child has its own copy of the descriptor
                    pool_log.close()
            pool = PoolProcess(proc, args.pool_log)
            try:
                failure = await wait_listening("127.0.0.1", port, pool, dn)
                if failure is not None:
                    outcome = Outcome(1, f"FAILED: {failure}", pool.failure() is not None)
                else:
                    say(f"pool up: `poold run` (pid {proc.pid}) on "
                        f"stratum+tcp://127.0.0.1:{port}")
                    say(f"regtest's network difficulty is about 4.7e-10, so nearly every share "
                        f"at difficulty {args.difficulty:g} is also a block")
                    extras = {"api_url": api_url, "api_token": token, "fleet": fleet,
                              "fleet_cut_at_s": args.fleet_cut_at, "fleet_difficulty": 3e-6}
                    outcome = await _mine(args, dn, port, cfg, narrator, stop, extras,
                                          watch=lambda: pool.failure() or dn.failure)
                    outcome.pool_died = pool.failure() is not None
            finally:
                if outcome.pool_died:
                    lines = await pool.last_lines()
                    say("the pool's last output lines:" if lines else
                        "the pool wrote nothing (see --pool-log)")
                    for text in lines:
                        print(f"  | {text}", flush=True)
                await pool.stop(15.0 if outcome.code == 0 else 1.0)
                if fleet is not None:  # after the pool: its controller left the safe caps
                    await fleet.close()
    say(outcome.line)
    return outcome.code


async def _mine(
    args: argparse.Namespace,
    dn: Any,
    port: int,
    cfg: Path,
    narrator: Narrator,
    stop: asyncio.Event,
    extras: dict[str, Any] | None = None,
    watch: Callable[[], str | None] = lambda: None,
) -> Outcome:
    """Run the miners until `--blocks`/`--duration`/^C, or until `watch()` names a failure
    (the pool or the devnet died: checked every 0.2 s, so the demo stops within 2 s)."""
    say = narrator.say
    payouts: dict[bytes, str] = {}
    miners: list[StratumMiner] = []
    found: list[str] = []
    pending: set[asyncio.Task[bool]] = set()
    verified: list[bool] = []

    def done(task: asyncio.Task[bool]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is None:
            verified.append(task.result())

    def on_event(ev: MinerEvent) -> None:
        narrator.on_event(ev)
        if ev.kind == "block" and ev.hash_hex not in found:
            found.append(ev.hash_hex)
            say(f"{ev.miner}: share meets the network target: block candidate {ev.hash_hex}")
            task = asyncio.create_task(_verify_block(dn, ev.hash_hex, payouts, say))
            pending.add(task)
            task.add_done_callback(done)

    # CPU miners hash on this event loop. Beside the emulated fleet (firmware servers and
    # their Stratum miners, also here) they are paced: unpaced, they delayed the emulators'
    # telemetry on a busy machine until the controller counted it stale at the worst case.
    hashrate = args.hashrate or (FLEET_CPU_MINER_HS if args.fleet else 0.0)
    for i in range(args.miners):
        address = p2wpkh_address(os.urandom(20), Network.REGTEST)
        name = f"cpu-miner-{i + 1}"
        payouts[address_to_script(address, Network.REGTEST)] = f"{name} ({address})"
        miners.append(
            StratumMiner(
                "127.0.0.1", port, f"{address}.{name}", "x", hashrate,
                name=name, suggest_difficulty=args.difficulty, on_event=on_event,
            )
        )  # fmt: skip
        say(f"{name}: mining to {address}")
    ctx = DemoContext(dn, "127.0.0.1", port, cfg, stop, say, miners, **(extras or {}))
    tasks = [asyncio.create_task(m.run(), name=m.name) for m in miners]
    if args.fleet:
        tasks.append(asyncio.create_task(_fleet(ctx), name="fleet"))
    started = time.monotonic()
    waiting_for_fleet = False
    outcome: Outcome | None = None
    try:
        while outcome is None:
            blocks = sum(verified)
            fleet_pending = args.fleet and not ctx.fleet_done.is_set()
            failure = watch()
            failed_task = next((t for t in tasks if t.done() and not t.cancelled()
                                and t.exception() is not None), None)
            if failure:
                outcome = Outcome(1, f"FAILED: {failure}; {N} block(s) found before")
            elif failed_task is not None:
                say(f"{failed_task.get_name()} failed: {failed_task.exception()!r}")
                outcome = Outcome(1, f"FAILED: {failed_task.get_name()} failed")
            elif stop.is_set():
                outcome = Outcome(0 if not args.blocks or blocks >= args.blocks else 1,
                                  f"stopped: {N} block(s) found and accepted")
            elif args.blocks and blocks >= args.blocks and not fleet_pending:
                extra = "; the fleet's rack cut was met" if args.fleet else ""
                outcome = Outcome(0, f"done: {N} block(s) found and accepted "
                                     f"(--blocks {args.blocks}{extra})")
            elif args.duration and time.monotonic() - started >= args.duration:
                short = args.blocks and (blocks < args.blocks or fleet_pending)
                why = ("" if not short else f" of --blocks {args.blocks}" if blocks < args.blocks
                       else "; the fleet's rack cut was not met")
                outcome = Outcome(1 if short else 0,
                                  f"{'FAILED' if short else 'done'}: {args.duration:g} s "
                                  f"elapsed, {N} block(s) found and accepted{why}")
            else:
                if args.blocks and blocks >= args.blocks and not waiting_for_fleet:
                    waiting_for_fleet = True
                    say(f"{blocks} block(s) found and accepted; going on until the fleet's "
                        f"rack caps are cut (at {ctx.fleet_cut_at_s:g} s) and met")
                with contextlib.suppress(TimeoutError):  # every pass waits: 0.2 s at most
                    await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        stop.set()
        for m in miners:
            m.stop()
        failed = outcome is None or outcome.code != 0
        if failed:  # a dead pool or devnet will not answer: do not wait long for them
            for task in [*tasks[len(miners):], *pending]:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.2)
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, *pending, return_exceptions=True)
    # The final line counts every block verified, those whose check ended after the decision
    # too, so that it agrees with the summary.
    outcome.line = outcome.line.replace(N, str(sum(verified)))
    acc = sum(m.accepted for m in miners)
    rej = sum(m.rejected for m in miners)
    rate = sum(m.stats.hashes for m in miners) / max(time.monotonic() - started, 1e-9)
    tip = "?" if dn.failure else dn.height
    say(
        f"summary: {acc} shares accepted, {rej} rejected, {sum(verified)} blocks on the devnet "
        f"(tip height {tip}); the CPU miners hashed {rate / 1e3:.0f} kH/s in total"
    )
    return outcome


async def _fleet(ctx: DemoContext) -> None:
    from poold.sim.fleet_demo import attach

    await attach(ctx)


def _die_with_parent() -> None:
    """In the demo's pool process, before it runs (Linux): be sent SIGTERM when the demo dies,
    even by kill -9, so that a killed demo leaves no pool behind holding its ports
    (prctl(2) PR_SET_PDEATHSIG). The devnet's kernel process exits when its stdin closes."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the demo died before the call: nothing will signal us
        os.kill(os.getpid(), signal.SIGTERM)


def run(args: argparse.Namespace) -> int:
    code = asyncio.run(demo(args))
    if code != 0:
        # Failed: the pool and the devnet are stopped and the temporary directory is gone.
        # Skip the interpreter's teardown (most of a second on a loaded machine), so that a
        # demo whose pool or devnet died ends within 2 s.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
