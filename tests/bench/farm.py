"""A farm of emulated miners served by child processes, for benchmarks that measure a controller.

A benchmark that holds thousands of firmware emulators *and* the fleet controller in one
process measures neither: the emulators' servers and the controller share one event loop and
starve each other. `Farm` serves the emulators (poold.sim: a `SimAsic` behind a Braiins OS
REST, LuxOS, Whatsminer or cgminer server on a loopback port, each at its firmware's own
real-time dynamics) from `N` child processes, each holding at most `per_child` miners, and
keeps a small control channel to each: JSON lines over the child's stdin/stdout.

    async with Farm.started([("m00000", "braiins"), ...], seed=1) as farm:
        farm.miners            # FarmMiner rows: id, kind, host, port, spec, unit_factor
        await farm.totals()    # (Σ true W, Σ true TH/s), every child sampled at once
        await farm.sample()    # {id: (W, TH/s)} per miner
        await farm.fault("m00003", timeout=True)   # that miner stops answering
        await farm.record(0.1); ...; await farm.first_under(watts, since)  # child-timed

The meters are the emulators' own physics (`SimAsic.power_w()` / `hashrate_ths()`), not what
the firmware reports. `drivers_for` builds poold's real drivers for the farm's miners.

Protocol (one JSON object a line): the parent writes the child's miners as its first line,
the child answers ``{"rows": [...]}`` once every server listens; then requests
``{"op": "sample" | "sum" | "settings" | "record" | "history" | "fault", ...}`` each get
one reply line, in order. EOF on stdin stops the child's servers.

Run alone (a farm for a controller in another process): ``python -m tests.bench.farm
--miners 2000`` prints one line per miner (id kind host:port) and serves until stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import resource
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from poold.fleet.clock import Clock, LoopClock
from poold.fleet.drivers.base import MinerDriver, Secret
from poold.fleet.drivers.braiins import BraiinsDriver
from poold.fleet.drivers.cgminer import CgminerDriver
from poold.fleet.drivers.luxos import LuxosDriver
from poold.fleet.drivers.whatsminer import WhatsminerDriver
from poold.sim.asic import WATTS, AsicSpec, SimAsic
from poold.sim.simsite import sample_asic

PER_CHILD = 500
PASSWORD = "sim-secret"
HOST = "127.0.0.1"


def raise_nofile() -> None:
    """Two sockets per miner (its server's and the driver's) and more: the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass(frozen=True, slots=True)
class FarmMiner:
    """One served miner: where its firmware listens and the physics behind it."""

    id: str
    kind: str
    host: str
    port: int
    spec: AsicSpec
    unit_factor: float

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def _spec_from(d: dict[str, Any]) -> AsicSpec:
    return AsicSpec(**{**d, "presets": tuple(d["presets"])})


class _Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.ids: list[str] = []
        self.lock = asyncio.Lock()

    async def ask(self, req: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        async with self.lock:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"farm child {self.proc.pid} exited ({self.proc.returncode})")
        return json.loads(line)


class Farm:
    """Emulated miners in child processes (see the module docstring)."""

    def __init__(self, children: list[_Child], miners: list[FarmMiner]) -> None:
        self._children = children
        self.miners = miners
        self.by_id = {m.id: m for m in miners}
        self._child_of = {mid: c for c in children for mid in c.ids}

    @classmethod
    async def start(cls, miners: Sequence[tuple[str, str]], *, seed: int = 1,
                    per_child: int = PER_CHILD, children: int | None = None,
                    minimal: bool = False, speed: float = 1.0,
                    password: str = PASSWORD) -> Farm:
        """Serve `miners` ((id, kind) pairs, kinds as in poold.sim.simsite.MODELS) from
        `children` processes (default: enough for at most `per_child` each). `minimal`: the
        firmware serves only its documented minimum; `speed`: the dynamics this many times
        faster (1 = the firmware's real time)."""
        n_child = children or max(1, math.ceil(len(miners) / per_child))
        size = math.ceil(len(miners) / n_child) if miners else 0
        procs: list[_Child] = []
        try:
            for i in range(n_child):
                part = list(miners[i * size:(i + 1) * size])
                if not part:
                    break
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.bench.farm", "--child",
                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    limit=2**24)
                child = _Child(proc)
                child.ids = [mid for mid, _ in part]
                procs.append(child)
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({
                    "miners": part, "seed": seed * 1000 + i, "minimal": minimal,
                    "speed": speed, "password": password}).encode() + b"\n")
                await proc.stdin.drain()
            rows: list[FarmMiner] = []
            for child in procs:  # they start their servers in parallel
                assert child.proc.stdout is not None
                line = await asyncio.wait_for(child.proc.stdout.readline(), 600)
                if not line:
                    raise RuntimeError(f"farm child {child.proc.pid} failed to start")
                for r in json.loads(line)["rows"]:
                    rows.append(FarmMiner(r["id"], r["kind"], HOST, r["port"],
                                          _spec_from(r["spec"]), r["unit_factor"]))
        except BaseException:
            await _stop(procs)
            raise
        return cls(procs, rows)

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls, miners: Sequence[tuple[str, str]],
                      **kw: Any) -> AsyncIterator[Farm]:
        farm = await cls.start(miners, **kw)
        try:
            yield farm
        finally:
            await farm.close()

    async def sample(self) -> dict[str, tuple[float, float]]:
        """Every miner's true (W, TH/s) now, all children sampled concurrently."""
        replies = await asyncio.gather(*(c.ask({"op": "sample"}) for c in self._children))
        out: dict[str, tuple[float, float]] = {}
        for c, r in zip(self._children, replies, strict=True):
            for mid, w, h in zip(c.ids, r["w"], r["ths"], strict=True):
                out[mid] = (w, h)
        return out

    async def totals(self) -> tuple[float, float]:
        """The site's true (Σ W, Σ TH/s) now."""
        replies = await asyncio.gather(*(c.ask({"op": "sum"}) for c in self._children))
        return (sum(r["w"] for r in replies), sum(r["ths"] for r in replies))

    async def settings(self) -> dict[str, float]:
        """What every emulated firmware is set to run at (watts; asleep: its sleep power)."""
        replies = await asyncio.gather(*(c.ask({"op": "settings"}) for c in self._children))
        return {mid: w for c, r in zip(self._children, replies, strict=True)
                for mid, w in zip(c.ids, r["w"], strict=True)}

    async def record(self, every_s: float) -> None:
        """Every child samples its miners' true (Σ W, Σ TH/s) every `every_s` on its own clock
        from now on, so a busy parent (or a busy pipe) does not blur when the meters moved."""
        await asyncio.gather(*(c.ask({"op": "record", "every": every_s})
                               for c in self._children))

    async def history(self, since: float) -> list[list[tuple[float, float, float]]]:
        """Per child, its recorded (time.monotonic(), W, TH/s) samples from `since` on
        (CLOCK_MONOTONIC is one clock for every process of the machine)."""
        replies = await asyncio.gather(*(c.ask({"op": "history", "since": since})
                                         for c in self._children))
        return [[(t, w, h) for t, w, h in r["samples"]] for r in replies]

    async def first_under(self, watts: float, since: float) -> float | None:
        """The first recorded moment after `since` when the site's true power was at most
        `watts` (each child at its last sample before that moment), or None."""
        hist = await self.history(since)
        if any(not h for h in hist):
            return None
        moments = sorted({t for h in hist for t, _, _ in h})
        idx = [0] * len(hist)
        for t in moments:
            total = 0.0
            ready = True
            for i, h in enumerate(hist):
                while idx[i] + 1 < len(h) and h[idx[i] + 1][0] <= t:
                    idx[i] += 1
                if h[idx[i]][0] > t:
                    ready = False  # this child has no sample yet at t
                    break
                total += h[idx[i]][1]
            if ready and total <= watts:
                return t
        return None

    async def fault(self, miner_id: str, **faults: Any) -> None:
        """Set `SimAsic.faults` fields of one miner (e.g. ``timeout=True``: stops answering)."""
        await self._child_of[miner_id].ask({"op": "fault", "id": miner_id, "set": faults})

    async def close(self) -> None:
        await _stop(self._children)


async def _stop(children: list[_Child]) -> None:
    for c in children:
        if c.proc.stdin is not None and not c.proc.stdin.is_closing():
            c.proc.stdin.close()
    for c in children:
        try:
            await asyncio.wait_for(c.proc.wait(), 60)
        except TimeoutError:
            c.proc.kill()
            await c.proc.wait()


def drivers_for(farm: Farm, max_w: dict[str, float], clock: Clock, *,
                timeout_s: float = 5.0, password: str = PASSWORD,
                settle: bool = True) -> dict[str, MinerDriver]:
    """poold's real drivers for the farm's miners (`max_w`: each miner's inventory cap;
    `settle`: tell the drivers the firmware's settle time and sleep power, as
    poold.sim.simsite does)."""
    out: dict[str, MinerDriver] = {}
    for m in farm.miners:
        s = m.spec
        extra: dict[str, Any] = {"settle_s": s.settle_s, "sleep_w": s.sleep_w} if settle else {}
        cap = max_w[m.id]
        if m.kind == "braiins":
            out[m.id] = BraiinsDriver(m.host, m.port, password=Secret(password),
                                      timeout_s=timeout_s, max_w=cap, **extra)
        elif m.kind == "luxos":
            out[m.id] = LuxosDriver(m.host, m.port, timeout_s=timeout_s, max_w=cap, **extra)
        elif m.kind == "whatsminer":
            out[m.id] = WhatsminerDriver(m.host, m.port, password=Secret(password),
                                         min_w=s.min_w, max_w=min(s.max_w, cap),
                                         timeout_s=timeout_s, wall_clock=clock.wall, **extra)
        else:
            out[m.id] = CgminerDriver(m.host, m.port, nameplate_w=s.p_nom_w,
                                      timeout_s=timeout_s)
    return out


# -- the child ------------------------------------------------------------------------------


def setting_w(a: SimAsic) -> float:
    """What the emulated firmware is set to run at (watts; asleep: its sleep power)."""
    if a.reported_sleep():
        return float(a.spec.sleep_w)
    if a.spec.actuator == WATTS or not a.spec.presets:
        return float(a.target_w)
    return float(a.spec.presets[a.level_index])


async def _child() -> None:
    from poold.sim.firmware_rest import BraiinsRestServer
    from poold.sim.firmware_tcp import server_for

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, sys.stdout)

    def reply(obj: Any) -> None:
        out.write(json.dumps(obj).encode() + b"\n")  # the transport buffers: never blocks

    setup = json.loads(await reader.readline())
    rng = random.Random(setup["seed"])
    clock = LoopClock()
    asics: list[SimAsic] = []
    servers: list[Any] = []
    rows = []
    for mid, kind in setup["miners"]:
        a = sample_asic(kind, clock, mid, rng, setup["speed"])
        a.password = setup["password"]
        srv = await (BraiinsRestServer(a, minimal=setup["minimal"]).start()
                     if kind == "braiins" else server_for(a, minimal=setup["minimal"]).start())
        asics.append(a)
        servers.append(srv)
        rows.append({"id": mid, "kind": kind, "port": srv.port,
                     "spec": dataclasses.asdict(a.spec), "unit_factor": a.unit_factor})
    by_id = {a.miner_id: a for a in asics}
    samples: list[tuple[float, float, float]] = []
    recorder: asyncio.Task[None] | None = None

    async def record(every_s: float) -> None:
        while True:
            samples.append((time.monotonic(), sum(a.power_w() for a in asics),
                            sum(a.hashrate_ths() for a in asics)))
            await asyncio.sleep(every_s)

    reply({"rows": rows})
    while line := await reader.readline():
        req = json.loads(line)
        op = req.get("op")
        if op == "sample":
            reply({"w": [a.power_w() for a in asics], "ths": [a.hashrate_ths() for a in asics]})
        elif op == "sum":
            reply({"w": sum(a.power_w() for a in asics),
                   "ths": sum(a.hashrate_ths() for a in asics)})
        elif op == "settings":
            reply({"w": [setting_w(a) for a in asics]})
        elif op == "record":
            if recorder is not None:
                recorder.cancel()
            samples.clear()
            recorder = loop.create_task(record(float(req["every"])))
            reply({"ok": True})
        elif op == "history":
            since = float(req["since"])
            # the last sample before `since` too: the state at `since` itself
            first = max(0, next((i for i, s in enumerate(samples) if s[0] >= since),
                                len(samples)) - 1)
            reply({"samples": samples[first:]})
        elif op == "fault":
            f = by_id[req["id"]].faults
            for k, v in req["set"].items():
                setattr(f, k, v)
            reply({"ok": True})
        else:
            reply({"error": f"unknown op {op!r}"})
    if recorder is not None:
        recorder.cancel()
    for s in servers:
        await s.stop()
    out.close()


async def _alone(n: int, seed: int, minimal: bool) -> None:
    kinds = ["braiins", "luxos"]
    async with Farm.started([(f"m{i:05d}", kinds[i % 2]) for i in range(n)], seed=seed,
                            minimal=minimal) as farm:
        for m in farm.miners:
            print(m.id, m.kind, m.address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--miners", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--minimal", action="store_true", help="documented-minimum firmware")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    # A blind miner's server holds its unanswered connections until it is stopped; asyncio
    # logs each one cancelled then. Expected here, not news.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    raise_nofile()
    if args.child:
        asyncio.run(_child())
    else:
        asyncio.run(_alone(args.miners, args.seed, args.minimal))


if __name__ == "__main__":
    main()
