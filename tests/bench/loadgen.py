"""Stratum V1 load generator: many miner connections per process over real TCP.

Run as its own process (the benchmarks pin it to the core the server does not use):

    python -m tests.bench.loadgen --port 3333 --conns 1000 --pipeline 4 --user ADDR

Protocol with the parent on stdin/stdout (one JSON object per line on stdout):
  -> {"event": "ready", "connected": n, "pid": p}    after every handshake completed
     (--idle: {"event": "ready", "opened": n, "ready": n, "closed": n, "failed": {...}, ...}
     once every connection holds a job, was closed or failed, or at the deadline)
  <- "go <seconds> [rate]"   submit for that long: closed loop, or `rate` submits/s open loop
  -> {"event": "done", "answered": n, "accepted": n, "rejected": n, "seconds": s,
      "p50_ms": x, "p99_ms": y}
  <- "watch <limit_s>"   stamp each connection's first clean job on a new prevhash:
  -> {"event": "watching"}, later
  -> {"event": "clean", "first": t, "last": t, "count": n}  (time.time() stamps)
  <- "status" (--idle)  -> {"event": "status", "ready": n, "closed": n, "closed_how": {...}}
  <- "quit"

Efficiency matters more than elegance here: raw asyncio Protocols, one write per reply batch,
submit lines built from preformatted pieces with random nonces, and JSON parsed only for the
rare `mining.notify`/`set_difficulty` lines. Replies are recognised by their `"id":` prefix; a
connection keeps `pipeline` submits outstanding.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import random
import re
import resource
import select
import socket
import sys
import time
from collections import deque
from typing import Any

# job_id, prevhash, ... ntime, clean_jobs of a mining.notify (params = 9 items, docs/STRATUM.md §6).
NOTIFY_RE = re.compile(
    rb'"params"\s*:\s*\[\s*"([^"]*)"\s*,\s*"([0-9a-fA-F]{64})"\s*,.*\]\s*,'
    rb'\s*"[0-9a-fA-F]{8}"\s*,\s*"[0-9a-fA-F]{8}"\s*,\s*"([0-9a-fA-F]{8})"\s*,\s*(true|false)\s*\]'
)

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux, ip(7)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Stats:
    def __init__(self) -> None:
        self.answered = 0
        self.accepted = 0
        self.rejected = 0
        self.latencies: list[float] = []
        self.codes: dict[str, int] = {}
        self.slow: list[tuple[float, float]] = []  # (sent at, latency) of round trips > 50 ms
        self.sample_every = 16
        self.clean_seen: list[float] = []
        self.watching = False
        self.all_clean = asyncio.Event()


class MinerConn(asyncio.Protocol):
    """One simulated miner. Submits only while `gen.running`."""

    def __init__(self, gen: LoadGen, index: int) -> None:
        self.gen = gen
        self.index = index
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.subscribed = False
        self.authorized = False
        self.job_id: str | None = None
        self.ntime = "00000000"
        self.prevhash = ""
        self.prefix = b""
        self.next_id = 10
        self.sent_at: deque[float] = deque()
        self.outstanding = 0
        self.counter = random.getrandbits(32)
        self.ready = asyncio.get_running_loop().create_future()
        self.clean_at: float | None = None
        self.watch_from = ""
        self.en2_hex_len = 16
        self.en2_mask = (1 << 64) - 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        user = self.gen.user
        transport.write(
            b'{"id":1,"method":"mining.subscribe","params":["poold-loadgen/1"]}\n'
            + b'{"id":2,"method":"mining.authorize","params":["'
            + user.encode()
            + b'","x"]}\n'
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"conn {self.index} lost: {exc}"))

    def _set_job_fields(self, job_id: str, prevhash: str, ntime: str, clean: bool) -> None:
        self.job_id = job_id
        self.prevhash = prevhash
        self.ntime = ntime
        self.prefix = (
            b',"method":"mining.submit","params":["'
            + self.gen.user.encode()
            + b'","'
            + self.job_id.encode()
            + b'","'
        )
        stats = self.gen.stats
        if clean and stats.watching and self.prevhash != self.watch_from and not self.clean_at:
            self.clean_at = time.time()
            stats.clean_seen.append(self.clean_at)
            if len(stats.clean_seen) >= len(self.gen.conns):
                stats.all_clean.set()
        if self.subscribed and self.authorized and not self.ready.done():
            self.ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        replies = 0
        stats = self.gen.stats
        for line in lines:
            if line.startswith(b'{"id":null') or b'"method"' in line:
                self._pool_message(line)
                continue
            # A reply. The handshake ids are 1 and 2; everything else is a submit.
            if not (self.subscribed and self.authorized):
                msg = json.loads(line)
                if msg.get("id") == 1:
                    self.subscribed = msg.get("error") is None
                    size = int(msg["result"][2])
                    self.en2_hex_len = 2 * size
                    self.en2_mask = (1 << (8 * size)) - 1
                elif msg.get("id") == 2:
                    self.authorized = msg.get("result") is True
                if self.subscribed and self.authorized and self.job_id and not self.ready.done():
                    self.ready.set_result(None)
                continue
            replies += 1
            if b'"result":true' in line:
                stats.accepted += 1
            else:
                stats.rejected += 1
                at = line.find(b'"error":[')
                code = line[at + 9 : at + 12].rstrip(b",").decode() if at >= 0 else "false"
                stats.codes[code] = stats.codes.get(code, 0) + 1
            if self.sent_at:
                t0 = self.sent_at.popleft()
                if stats.answered % stats.sample_every == 0:
                    now = time.perf_counter()
                    stats.latencies.append(now - t0)
                    if now - t0 > 0.05:
                        stats.slow.append((t0, now - t0))
            stats.answered += 1
        if replies:
            self.outstanding -= replies
            if self.gen.running:
                self.fill()

    def _pool_message(self, line: bytes) -> None:
        m = NOTIFY_RE.search(line) if b'"mining.notify"' in line else None
        if m is not None:
            # Cheap path for the fan-out measurement: no json.loads of a whole notify per miner.
            self._set_job_fields(
                m.group(1).decode(), m.group(2).decode(), m.group(3).decode(), m.group(4) == b"true"
            )
            return
        msg = json.loads(line)
        method = msg.get("method")
        if method == "mining.notify":
            p = msg["params"]
            self._set_job_fields(str(p[0]), str(p[1]), str(p[7]), bool(p[8]))
        elif msg.get("id") is not None and method is not None and self.transport is not None:
            # A request from the pool (mining.ping etc.): answer it.
            self.transport.write(
                b'{"id":%s,"result":true,"error":null}\n' % json.dumps(msg["id"]).encode()
            )

    def fill(self) -> None:
        """Top up to `pipeline` outstanding submits in one write."""
        want = self.gen.pipeline - self.outstanding
        if want <= 0 or self.transport is None or self.job_id is None:
            return
        now = time.perf_counter()
        parts = []
        for _ in range(want):
            self.counter = (self.counter + 1) & 0xFFFFFFFF
            parts.append(self._line(random.getrandbits(32)))
            self.next_id += 1
            self.sent_at.append(now)
        self.outstanding += want
        self.transport.write(b"".join(parts))

    def send_one(self) -> None:
        if self.transport is None or self.job_id is None:
            return
        self.counter = (self.counter + 1) & 0xFFFFFFFF
        self.sent_at.append(time.perf_counter())
        self.outstanding += 1
        self.transport.write(self._line(random.getrandbits(32)))
        self.next_id += 1

    def _line(self, nonce: int) -> bytes:
        # extranonce2 = connection index + counter (unique per submit, so never a duplicate).
        en2 = (self.index << 32 | self.counter) & self.en2_mask
        return b'{"id":%d%s%0*x","%s","%08x"]}\n' % (
            self.next_id,
            self.prefix,
            self.en2_hex_len,
            en2,
            self.ntime.encode(),
            nonce,
        )


class LoadGen:
    def __init__(self, host: str, port: int, conns: int, pipeline: int, user: str) -> None:
        self.host = host
        self.port = port
        self.nconns = conns
        self.pipeline = pipeline
        self.user = user
        self.conns: list[MinerConn] = []
        self.stats = Stats()
        self.running = False
        self.lost = 0

    async def connect_all(self, batch: int = 200) -> None:
        loop = asyncio.get_running_loop()
        for start in range(0, self.nconns, batch):
            tasks = [
                loop.create_connection(lambda i=i: MinerConn(self, i), self.host, self.port)
                for i in range(start, min(start + batch, self.nconns))
            ]
            for _, proto in await asyncio.gather(*tasks):
                self.conns.append(proto)
        await asyncio.wait_for(asyncio.gather(*(c.ready for c in self.conns)), 120)

    async def run_for(self, seconds: float, rate: float = 0.0) -> dict[str, object]:
        """Closed loop (rate 0: keep `pipeline` outstanding per connection) or open loop at
        `rate` submits/s spread round-robin over the connections (a latency measurement)."""
        self.stats = Stats()
        t0 = time.perf_counter()
        if rate <= 0:
            self.running = True
            for c in self.conns:
                c.fill()
            await asyncio.sleep(seconds)
        else:
            self.stats.sample_every = 1
            sent = 0
            rr = 0
            n = len(self.conns)
            while (now := time.perf_counter()) - t0 < seconds:
                due = int(rate * (now - t0)) - sent
                for _ in range(due):
                    for _ in range(n):  # next idle connection
                        c = self.conns[rr]
                        rr = (rr + 1) % n
                        if c.outstanding == 0:
                            break
                    c.send_one()
                    sent += 1
                await asyncio.sleep(0.002)
        self.running = False
        elapsed = time.perf_counter() - t0
        answered = self.stats.answered
        lat = sorted(self.stats.latencies) or [0.0]
        # Let the in-flight tail drain so the next phase starts clean.
        for _ in range(50):
            if all(c.outstanding <= 0 for c in self.conns):
                break
            await asyncio.sleep(0.1)
        return {
            "event": "done",
            "answered": answered,
            "accepted": self.stats.accepted,
            "rejected": self.stats.rejected,
            "seconds": elapsed,
            "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max_ms": 1000 * lat[-1],
            "slow_periods": _periods(self.stats.slow, t0),
            "lost": self.lost,
            "codes": self.stats.codes,
        }

    async def watch_clean(self, limit_s: float) -> dict[str, object]:
        """From now, stamp each connection's first clean job on a prevhash it did not hold."""
        for c in self.conns:
            c.watch_from = c.prevhash
            c.clean_at = None
        self.stats.clean_seen = []
        self.stats.all_clean.clear()
        self.stats.watching = True
        emit({"event": "watching"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stats.all_clean.wait(), limit_s)
        seen = sorted(self.stats.clean_seen)
        return {
            "event": "clean",
            "count": len(seen),
            "first": seen[0] if seen else None,
            "last": seen[-1] if seen else None,
        }


def _periods(slow: list[tuple[float, float]], t0: float) -> list[list[float]]:
    """Group slow round trips into stalls: [start s after t0, duration s, worst ms, count]."""
    out: list[list[float]] = []
    for sent, lat in sorted(slow):
        if out and sent - t0 <= out[-1][0] + out[-1][1] + 0.05:
            last = out[-1]
            last[1] = max(last[1], sent - t0 + lat - last[0])
            last[2] = max(last[2], 1000 * lat)
            last[3] += 1
        else:
            out.append([sent - t0, lat, 1000 * lat, 1])
    return [[round(a, 2), round(b, 3), round(c, 1), d] for a, b, c, d in out]


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(args: argparse.Namespace) -> None:
    gen = LoadGen(args.host, args.port, args.conns, args.pipeline, args.user)
    await gen.connect_all()
    emit({"event": "ready", "connected": len(gen.conns), "pid": os.getpid()})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, *rest = line.split()
        if cmd == "go":
            emit(await gen.run_for(float(rest[0]), float(rest[1]) if len(rest) > 1 else 0.0))
        elif cmd == "watch":
            emit(await gen.watch_clean(float(rest[0]) if rest else 30.0))
    for c in gen.conns:
        if c.transport is not None:
            c.transport.close()


def idle_main(args: argparse.Namespace) -> None:
    """Idle miners on plain non-blocking sockets and one epoll loop (no asyncio): the cheapest
    way to notice, per connection, the moment a clean notify arrives, so the fan-out figure is
    the server's and not the generator's event loop. Opens `--conns` connections from
    `--source` at `--rate`/s (0: as fast as it can), and reports over stdout: "ready" once every
    connection holds a job, was closed or failed (or at the deadline), then "watch" as above."""
    hello = (
        b'{"id":1,"method":"mining.subscribe","params":["poold-loadgen/1"]}\n'
        b'{"id":2,"method":"mining.authorize","params":["' + args.user.encode() + b'","x"]}\n'
    )
    ep = select.epoll()
    socks: dict[int, socket.socket] = {}
    pending: dict[int, bool] = {}  # connecting: hello not sent yet
    bufs: dict[int, bytes] = {}
    prevhash: dict[int, bytes] = {}
    closed: list[tuple[float, str]] = []  # (time, what) of connections the pool ended
    failed: dict[str, int] = {}
    ep.register(sys.stdin.fileno(), select.EPOLLIN)
    started = time.monotonic()
    opened = 0
    watching = False
    watch_from: dict[int, bytes] = {}
    stamped: dict[int, float] = {}
    deadline = 0.0
    announced = False
    paced = args.rate > 0
    ready_deadline = started + (args.conns / args.rate if paced else 0.0) + args.ready_limit_s

    def lost(fd: int, what: str) -> None:
        with contextlib.suppress(OSError, KeyError):
            ep.unregister(fd)
        s = socks.pop(fd, None)
        if s is not None:
            s.close()
        pending.pop(fd, None)
        bufs.pop(fd, None)
        prevhash.pop(fd, None)
        closed.append((time.monotonic() - started, what))

    progress_at = started + 10.0
    hello_late = 0  # hellos sent more than 10 s after their connect (the generator was behind)
    connect_at: dict[int, float] = {}
    while True:
        now = time.monotonic()
        if now > progress_at:
            progress_at = now + 10.0
            print(f"gen {args.source} pid {os.getpid()} at {now - started:.0f} s: opened "
                  f"{opened}, connecting {len(pending)}, ready {len(prevhash)}, closed "
                  f"{len(closed)}, hellos late {hello_late}", file=sys.stderr, flush=True)
        # On schedule, in passes of at most 100 ms worth of connects (I/O is served between).
        due = min(args.conns, int((now - started) * args.rate) + 1 if paced else args.conns,
                  opened + (max(1, int(args.rate / 10)) if paced else 1000))
        while opened < due:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                # The port is picked at connect() (4-tuple unique), not at bind(): a bind to
                # port 0 reserves a port for good and searches for one linearly (ip(7)).
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((args.source, 0))
                code = s.connect_ex((args.host, args.port))
            except OSError as exc:
                code = exc.errno or -1
            opened += 1
            if code not in (0, errno.EINPROGRESS):
                name = errno.errorcode.get(code, str(code))
                failed[name] = failed.get(name, 0) + 1
                s.close()
                continue
            fd = s.fileno()
            socks[fd] = s
            bufs[fd] = b""
            try:
                # On loopback the handshake is usually done within connect(): say hello at
                # once, as a miner does, instead of one poll later.
                s.send(hello)
            except OSError:
                pending[fd] = True
                connect_at[fd] = now
                ep.register(fd, select.EPOLLOUT | select.EPOLLIN)
            else:
                ep.register(fd, select.EPOLLIN)
        if not announced and (now > ready_deadline or (
            opened == args.conns
            and len(prevhash) + len(closed) + sum(failed.values()) >= args.conns
        )):
            emit({"event": "ready", "opened": opened, "ready": len(prevhash),
                  "closed": len(closed), "failed": failed,
                  "closed_at": [round(t, 1) for t, _ in closed[:50]],
                  "closed_how": _counts(w for _, w in closed), "hello_late": hello_late,
                  "seconds": round(now - started, 1)})
            announced = True
        if watching and (len(stamped) >= len(prevhash) or now > deadline):
            seen = sorted(stamped.values())
            emit({"event": "clean", "count": len(seen), "first": seen[0] if seen else None,
                  "last": seen[-1] if seen else None, "live": len(prevhash)})
            watching = False
        for fd, ev in ep.poll(0.01):
            if fd == sys.stdin.fileno():
                line = sys.stdin.readline().strip()
                if not line or line == "quit":
                    for open_sock in socks.values():
                        open_sock.close()
                    return
                cmd, *rest = line.split()
                if cmd == "watch":
                    watch_from = dict(prevhash)
                    stamped = {}
                    deadline = time.monotonic() + (float(rest[0]) if rest else 30.0)
                    watching = True
                    emit({"event": "watching"})
                elif cmd == "status":
                    emit({"event": "status", "ready": len(prevhash), "closed": len(closed),
                          "closed_how": _counts(w for _, w in closed)})
                continue
            sock = socks.get(fd)
            if sock is None:
                continue
            if pending.get(fd):
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    lost(fd, "connect " + errno.errorcode.get(err, str(err)))
                    continue
                if ev & select.EPOLLOUT:
                    del pending[fd]
                    if time.monotonic() - connect_at.pop(fd, now) > 10.0:
                        hello_late += 1
                    try:
                        sock.send(hello)
                    except OSError as exc:
                        lost(fd, "send " + errno.errorcode.get(exc.errno or 0, "?"))
                        continue
                    ep.modify(fd, select.EPOLLIN)
                if not ev & select.EPOLLIN:
                    continue
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as exc:
                lost(fd, errno.errorcode.get(exc.errno or 0, "recv error"))
                continue
            if not data:
                lost(fd, "EOF")
                continue
            stamp = time.time()
            buf = bufs[fd] + data
            cut = buf.rfind(b"\n") + 1
            bufs[fd] = buf[cut:]
            for m in NOTIFY_RE.finditer(buf, 0, cut):
                prevhash[fd] = m.group(2)
                if watching and m.group(4) == b"true" and m.group(2) != watch_from.get(fd):
                    stamped.setdefault(fd, stamp)


def _counts(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--pipeline", type=int, default=1)
    p.add_argument("--user", default="bcrt1qloadgen")
    p.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    p.add_argument("--idle", action="store_true", help="idle miners only (epoll, no asyncio)")
    p.add_argument("--source", default="127.0.0.1", help="--idle: local address to connect from")
    p.add_argument("--rate", type=float, default=0.0,
                   help="--idle: connections per second (0: as fast as possible)")
    p.add_argument("--ready-limit-s", type=float, default=120.0,
                   help="--idle: after the last connect, how long miners may take to be ready")
    args = p.parse_args()
    raise_nofile()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    if args.idle:
        idle_main(args)
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
