"""The Stratum V1 TCP server: accept, protect, read lines, write replies, fan out jobs.

Built on `asyncio.Protocol`, not streams: streams (`readline`, one write per line) measured
23-34 µs per message before any work, over loopback on one core; tests/bench/stratum_throughput
measures this server against a bare Protocol responder. Each read is split into lines by hand
and all replies of that read go out in ONE `transport.write`. A connection is one object
(`Connection` = `Session` + transport slots), so an idle miner costs little memory.

Protection: line length (disconnect), subscribe timeout, idle timeout without submits, per-IP
and global connection limits, a per-connection message-rate limit (token bucket, counted before
any parsing), the session's invalid-share ladder plus a short IP ban after repeated kicks (rate
limit drops count too), and bounded write buffers: a slow reader whose buffer passes
`write_buffer_limit` is dropped, so it can never delay the fan-out to others. Everything a bad
client can trigger is confined to its own connection. Every connection that ends is counted
under one `poold.stratum.disconnects.Disconnect` reason; running out of descriptors is handled by
`poold.stratum.limits`.

New templates (`on_template`, a `NodeSet.subscribe` callback) are fanned out synchronously, clean
jobs first and without yielding (a yielding loop only delays the last miner): the notify bytes
exist once per job and payout group (`mining.set_difficulty` prepended, from a cache, for a miner
whose difficulty changed). The send itself bypasses asyncio: on loopback 80 % of the fan-out is the
send() syscall, and `transport.write` adds Python bookkeeping to each one. Every transport runs
with a write-buffer high-water mark of 0, so `pause_writing`/`resume_writing` tell the connection
exactly when bytes are queued in it (`Connection.fd` is -1 then); miners with nothing queued get
one non-blocking send() each from `poold.stratum.fanout.send_many` (native batch), and whatever
did not go out completely is handed to that transport, so per-connection byte order is kept. The
slow-reader check (`get_write_buffer_size`) is only needed while bytes are queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import functools
import logging
import socket
import struct
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from poold.bitcoin.coinbase import CoinbaseError
from poold.config import default
from poold.stratum import messages
from poold.stratum.disconnects import Disconnect, DisconnectLog
from poold.stratum.fanout import send_many
from poold.stratum.framing import LineFramer, LineTooLong
from poold.stratum.limits import AcceptErrorHandler, GuardedSocket, listening_sockets
from poold.stratum.session import Session, SessionContext, State
from poold.work.blocks import BlockAssemblyError, BlockCandidate, BlockOutcome, BlockSubmitter
from poold.work.shares import RejectReason

if TYPE_CHECKING:
    from poold.bitcoin.template import Template
    from poold.config import StratumConfig
    from poold.metrics import Metrics

log = logging.getLogger(__name__)

HASHRATE_WINDOW_S = 300.0
# Fan-out sends go out in batches of this many sockets: the first miners need not wait for the
# whole list to be built, and one native call per batch costs nothing next to 512 send()s.
SEND_BATCH = 512


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 3333
    max_connections: int = default("stratum.max_connections")
    max_per_ip: int = default("stratum.max_per_ip")
    max_line_bytes: int = default("stratum.max_line_bytes")
    subscribe_timeout_s: float = default("stratum.subscribe_timeout_s")
    idle_timeout_s: float = default("stratum.idle_timeout_s")
    # bytes queued for one miner before it is dropped
    write_buffer_limit: int = default("stratum.max_write_buffer_bytes")
    sweep_interval_s: float = 1.0
    ban_after_kicks: int = 3  # invalid-share disconnects from one IP within ban_window_s ...
    ban_window_s: float = 600.0
    ban_s: float = 60.0  # ... refuse that IP for this long
    reconnect_host: str = default("stratum.reconnect_host")
    reconnect_port: int = default("stratum.reconnect_port")
    drain_timeout_s: float = 5.0
    reuse_port: bool = default("stratum.reuse_port")
    backlog: int = 4096
    # Messages (lines) per second a connection may send on average, and in one burst; beyond
    # that it is dropped ("rate limit"). 0 = no limit. Honest miners send a few a second.
    max_messages_per_s: float = default("stratum.max_messages_per_s")
    message_burst: int = default("stratum.message_burst")

    @classmethod
    def from_config(cls, cfg: StratumConfig, **overrides: Any) -> ServerSettings:
        host, port = cfg.listen
        values: dict[str, Any] = {
            "host": host,
            "port": port,
            "max_connections": cfg.max_connections,
            "max_per_ip": cfg.max_per_ip,
            "max_line_bytes": cfg.max_line_bytes,
            "subscribe_timeout_s": cfg.subscribe_timeout_s,
            "idle_timeout_s": cfg.idle_timeout_s,
            "reconnect_host": cfg.reconnect_host,
            "reconnect_port": cfg.reconnect_port,
            "write_buffer_limit": cfg.max_write_buffer_bytes,
            "reuse_port": cfg.reuse_port,
            "max_messages_per_s": cfg.max_messages_per_s,
            "message_burst": cfg.message_burst,
        }
        values.update(overrides)
        return cls(**values)


_set_difficulty = functools.lru_cache(maxsize=1024)(messages.set_difficulty)


def _unread(conn: Connection) -> bool:
    """Bytes received for `conn` that its transport has not read yet (FIONREAD, tcp(7))."""
    fd = conn.sock_fd
    if fd < 0:
        return False
    try:
        waiting: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return False
    return waiting > 0


def _send_batch(fds: list[int], bufs: list[bytes], conns: list[Connection]) -> None:
    """One non-blocking send() per socket; the rest of a partial send goes to its transport."""
    for i, sent in send_many(fds, bufs):
        conns[i].sent_part(bufs[i], sent)


class Connection(Session, asyncio.Protocol):
    """A miner connection: the session state machine plus its transport."""

    __slots__ = ("disconnect", "fd", "framer", "peer_ip", "server", "sock_fd", "tokens",
                 "tokens_at", "transport")

    def __init__(self, server: StratumServer, now: float) -> None:
        Session.__init__(self, server.ctx, now)
        self.server = server
        self.framer = LineFramer(server.settings.max_line_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.disconnect: Disconnect | None = None  # why the server ends it (None: not ending)
        # Token bucket of the message-rate limit: messages allowed now, refilled over time.
        self.tokens = float(server.settings.message_burst)
        self.tokens_at = now
        # The socket's descriptor, and the same while a direct send() is allowed: the transport
        # is open and has nothing queued (else -1, and everything goes through the transport).
        self.sock_fd = -1
        self.fd = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        refused = self.server.admit(self)
        if refused is not None:
            self.server.disconnects.count(refused)
            transport.abort()
            self.transport = None
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.type == socket.SOCK_STREAM:
            # pause_writing as soon as one byte is queued, resume_writing once all is sent.
            transport.set_write_buffer_limits(high=0, low=0)
            self.sock_fd = self.fd = sock.fileno()

    def pause_writing(self) -> None:
        self.fd = -1

    def resume_writing(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.fd = self.sock_fd

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        now = time.time()
        s = self.server.settings
        rate = s.max_messages_per_s
        if rate > 0:
            # Message-rate limit (token bucket), before any parsing: a flood costs one count.
            tokens = min(self.tokens + (now - self.tokens_at) * rate, s.message_burst)
            tokens -= data.count(b"\n")
            self.tokens = tokens
            self.tokens_at = now
            if tokens < 0:
                self.drop(Disconnect.rate_limit, f"over {rate:g} messages/s")
                self.server.kicked(self)
                return
        try:
            lines = self.framer.feed(data)
        except LineTooLong as exc:
            self.drop(Disconnect.line_too_long, str(exc))
            return
        if not lines:
            return
        out = self.feed(lines, now)
        if out:
            transport.write(out)
            # fd < 0: bytes are queued (or no socket); only then can the buffer be too full
            if self.fd < 0 and transport.get_write_buffer_size() > s.write_buffer_limit:
                self.drop(Disconnect.slow_reader)
                return
        if self.close_reason is not None:
            self.server.kicked(self)
            self.fd = -1
            transport.close()  # flushes the replies first

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.fd = self.sock_fd = -1
        if self.transport is not None:
            self.transport = None
            self.server.forget(self)

    def push(self, data: bytes) -> None:
        """Write unsolicited data (jobs, reconnect); drops the connection if it cannot keep up."""
        transport = self.transport
        if transport is None or not data:
            return
        transport.write(data)
        if self.fd < 0 and (
            transport.get_write_buffer_size() > self.server.settings.write_buffer_limit
        ):
            self.drop(Disconnect.slow_reader)

    def sent_part(self, data: bytes, sent: int) -> None:
        """A direct send of `data` sent only `sent` bytes (< 0: -errno): queue the rest or drop.

        Called before anything else is written to this connection, so the order is kept."""
        if sent < 0:
            code = errno.errorcode.get(-sent, str(-sent))
            # The peer reset or went away under us: it closed, we did not end it.
            self.drop(Disconnect.client_closed, f"send failed ({code})")
        else:
            self.push(data[sent:])

    def drop(self, reason: Disconnect, detail: str = "") -> None:
        """Abort now (no flush): for protocol violations and slow readers. Counted under
        `reason` when the connection is gone (`StratumServer.forget`)."""
        if self.disconnect is None:
            self.disconnect = reason
        self.close_reason = f"{reason.value} ({detail})" if detail else reason.value
        self.fd = -1
        transport = self.transport
        if transport is not None:
            log.debug("dropping %s (%s): %s", self.peer_ip, self.user_agent, self.close_reason)
            transport.abort()


class StratumServer:
    """Owns the listening socket, the live connections and the protection state."""

    def __init__(
        self,
        ctx: SessionContext,
        settings: ServerSettings,
        *,
        metrics: Metrics | None = None,
        blocks: BlockSubmitter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.metrics = metrics
        self.blocks = blocks
        self.clock = clock
        self.connections: set[Connection] = set()
        self.per_ip: dict[str, int] = {}
        self._kicks: dict[str, list[float]] = {}
        self._banned: dict[str, float] = {}
        self._servers: list[asyncio.Server] = []
        self.accept_errors = AcceptErrorHandler(
            metrics.accept_errors.inc if metrics is not None else None)
        self._block_tasks: set[asyncio.Task[Any]] = set()
        self.block_outcomes: list[BlockOutcome] = []
        self.closing = False
        self.has_work = asyncio.Event()  # set by the first template (the daemon waits on it)
        self.disconnects = DisconnectLog()
        self._flushed_disconnects: dict[Disconnect, int] = dict.fromkeys(Disconnect, 0)
        self._flushed_accepted = 0
        self._flushed_rejected = [0] * len(ctx.counters.rejected)
        self._flushed_difficulty = 0.0
        # (time, accepted difficulty so far) samples for the pool hashrate over HASHRATE_WINDOW_S
        self._rate_samples: deque[tuple[float, float]] = deque()
        self.hashrate = 0.0
        ctx.engine.on_block = self.on_block
        if metrics is not None:
            metrics.add_scrape_hook(self._export)
            for reason in Disconnect:  # every label from 0: rate() sees the first one
                metrics.disconnects.labels(reason=reason.name)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on `settings.host:port`, or on `sock` (systemd socket activation)."""
        loop = asyncio.get_running_loop()
        s = self.settings
        if sock is not None:
            socks = [GuardedSocket.adopt(sock)]
        else:
            socks = listening_sockets(s.host, s.port, s.backlog, s.reuse_port)
        self.accept_errors.install(loop)
        for listener in socks:
            self._servers.append(await loop.create_server(
                lambda: Connection(self, self.clock()), sock=listener, backlog=s.backlog))
        log.info("stratum listening on %s", ", ".join(self.addresses))

    @property
    def addresses(self) -> list[str]:
        return [f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"
                for server in self._servers for sock in server.sockets]

    @property
    def port(self) -> int:
        assert self._servers and self._servers[0].sockets
        port: int = self._servers[0].sockets[0].getsockname()[1]
        return port

    async def run_sweeper(self) -> None:
        """Timeouts, vardiff for silent miners, job expiry, metric flush; runs until cancelled."""
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            self.sweep(self.clock())

    def set_version_mask(self, mask: int) -> int:
        """A new pool version mask (SIGHUP): every session re-applies it and each one that
        negotiated version rolling gets `mining.set_version_mask`. Returns how many did."""
        self.ctx.settings = dataclasses.replace(self.ctx.settings, version_mask=mask)
        told = 0
        for conn in list(self.connections):
            data = conn.pool_mask_changed()
            if data:
                conn.push(data)
                told += 1
        return told

    async def shutdown(self) -> None:
        """Ordered: stop listening, ask miners to reconnect, drain, close, finish block tasks."""
        self.closing = True
        addresses = self.addresses
        for server in self._servers:
            server.close()
        log.info("stratum: stopped listening on %s", ", ".join(addresses) or "-")
        s = self.settings
        if s.reconnect_host:
            bye = messages.reconnect(s.reconnect_host, s.reconnect_port or s.port, 0)
        else:
            bye = messages.reconnect()
        for conn in list(self.connections):
            conn.push(bye)
        deadline = time.monotonic() + s.drain_timeout_s
        while self.connections and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.fd = -1
                conn.transport.close()
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self.accept_errors.uninstall()
        if self._block_tasks:
            await asyncio.gather(*self._block_tasks, return_exceptions=True)
        self.flush_metrics()

    # --- admission and protection ------------------------------------------------------------

    @property
    def drops(self) -> dict[str, int]:
        """Connections ended or refused so far, by `Disconnect` name (the metric's labels)."""
        return self.disconnects.by_label()

    def admit(self, conn: Connection) -> Disconnect | None:
        """None if `conn` may stay, else why it is refused."""
        s = self.settings
        ip = conn.peer_ip
        m = self.metrics
        if self.closing or len(self.connections) >= s.max_connections:
            if m is not None:
                m.connections_total.labels(result="rejected_full").inc()
            return Disconnect.shutdown if self.closing else Disconnect.server_full
        banned_until = self._banned.get(ip)
        if banned_until is not None:
            if self.clock() < banned_until:
                if m is not None:
                    m.connections_total.labels(result="rejected_ip").inc()
                return Disconnect.banned
            del self._banned[ip]
        n = self.per_ip.get(ip, 0)
        if n >= s.max_per_ip:
            if m is not None:
                m.connections_total.labels(result="rejected_ip").inc()
            return Disconnect.ip_limit
        self.per_ip[ip] = n + 1
        self.connections.add(conn)
        if m is not None:
            m.connections_total.labels(result="accepted").inc()
        return None

    def forget(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        reason = conn.disconnect
        if reason is None:
            reason = Disconnect.shutdown if self.closing else Disconnect.client_closed
        self.disconnects.count(reason)
        self.connections.discard(conn)
        ip = conn.peer_ip
        n = self.per_ip.get(ip, 1) - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            self.per_ip.pop(ip, None)
        conn.closed(self.clock())

    def kicked(self, conn: Connection) -> None:
        """A session ended itself (invalid-share ladder, no extranonce left) or flooded: count
        it toward an IP ban."""
        reason = conn.close_reason or ""
        if conn.disconnect is None:
            conn.disconnect = (Disconnect.server_full if "extranonce" in reason
                               else Disconnect.invalid_shares)
        if conn.disconnect is Disconnect.server_full:
            return  # our limit, not the miner's fault
        s = self.settings
        if s.ban_after_kicks <= 0:
            return
        now = self.clock()
        kicks = [t for t in self._kicks.get(conn.peer_ip, []) if now - t < s.ban_window_s]
        kicks.append(now)
        self._kicks[conn.peer_ip] = kicks
        if len(kicks) >= s.ban_after_kicks:
            self._banned[conn.peer_ip] = now + s.ban_s
            log.warning("refusing %s for %.0f s after %d disconnects (%s)",
                        conn.peer_ip, s.ban_s, len(kicks), reason)

    def sweep(self, now: float) -> None:
        s = self.settings
        engine = self.ctx.engine
        vardiff = engine.vardiff is not None
        for conn in list(self.connections):
            if conn.state is State.CONNECTED or not conn.authorized:
                # Bytes waiting unread: the miner spoke and the pool is behind (a connect burst
                # on a busy core), which is no reason to drop it; it is served when its turn
                # comes. Only a connection that is silent (or too slow to finish) goes.
                if now - conn.connected_at > s.subscribe_timeout_s and not _unread(conn):
                    conn.drop(Disconnect.subscribe_timeout)
                continue
            if now - conn.last_activity > s.idle_timeout_s:
                conn.drop(Disconnect.idle)
                continue
            sw = conn.work
            if vardiff and sw is not None and sw.group_key is not None and engine.maybe_retarget(
                sw, now
            ):
                conn.push(conn.next_work(now))
        engine.expire(now)
        self.ctx.allocator.expire(now)
        for ip, until in list(self._banned.items()):
            if until <= now:
                del self._banned[ip]
        for ip, kicks in list(self._kicks.items()):
            if not kicks or now - kicks[-1] > s.ban_window_s:
                del self._kicks[ip]
        self._sample_hashrate(now)
        self.disconnects.check(now, len(self.connections))
        self.flush_metrics()

    def _sample_hashrate(self, now: float) -> None:
        """Hashrate = accepted difficulty x 2**32 / seconds (docs/STRATUM.md §5)."""
        samples = self._rate_samples
        samples.append((now, self.ctx.engine.stats[0]))
        while len(samples) > 2 and now - samples[0][0] > HASHRATE_WINDOW_S:
            samples.popleft()
        t0, d0 = samples[0]
        if now > t0:
            self.hashrate = (samples[-1][1] - d0) * 2**32 / (now - t0)

    def workers(self) -> list[dict[str, Any]]:
        """Connected sessions for the admin API (no secrets)."""
        out = []
        for conn in self.connections:
            sw = conn.work
            out.append({
                "worker": conn.worker,
                "account": conn.account,
                "user_agent": conn.user_agent,
                "peer": conn.peer_ip,
                "extranonce1": sw.en1.hex() if sw else None,
                "difficulty": sw.difficulty if sw else None,
                "accepted": conn.accepted,
                "accepted_difficulty": conn.accepted_difficulty,
                "invalid_streak": conn.invalid_streak,
                "curtailed": bool(sw and sw.curtailed),
                "connected_at": conn.connected_at,
                "last_activity": conn.last_activity,
            })
        return out

    def reconnect_worker(self, worker: str) -> int:
        """Send client.reconnect to every connection of `worker`; how many there were."""
        n = 0
        for conn in list(self.connections):
            if conn.worker == worker or (conn.extra_workers and worker in conn.extra_workers):
                conn.push(messages.reconnect())
                n += 1
        return n

    # --- work --------------------------------------------------------------------------------

    def on_template(self, template: Template, new_tip: bool) -> None:
        """`NodeSet.subscribe` callback: a new job for every payout group, sent to its miners."""
        now = self.clock()
        ctx = self.ctx
        book = ctx.engine.book
        book.set_template(template, new_tip, now)
        self.has_work.set()
        engine = ctx.engine
        # Per miner: pick the bytes, then either queue the socket for the batch send or, when
        # its transport holds queued bytes (or is closing), write through the transport.
        fds: list[int] = []
        bufs: list[bytes] = []
        conns: list[Connection] = []
        for group, members in list(ctx.groups.items()):
            try:
                job = book.job_for(group, now)
            except (CoinbaseError, LookupError) as exc:
                # Those miners keep their previous job (still valid unless the tip moved).
                log.error("cannot build a job for height %d (payout group %s): %s",
                          template.height, group.hex()[:16], exc)
                continue
            notify = job.notify_clean if new_tip else job.notify_plain
            seq = job.seq
            # every session of this server is one of its Connections
            for conn in cast("list[Connection]", list(members)):
                sw = conn.work
                if sw is None:
                    continue
                if sw.pending is None:
                    sw.last_seq = seq
                    data = notify
                else:
                    # Session.next_work, with the set_difficulty line from a cache.
                    nxt = engine.next_job(sw, now)
                    if nxt is None:
                        continue
                    job_d, difficulty = nxt
                    data = job_d.notify_clean if new_tip else job_d.notify_plain
                    if difficulty is not None:
                        data = _set_difficulty(difficulty) + data
                fd = conn.fd
                if fd < 0 or conn.transport is None or conn.transport.is_closing():
                    conn.push(data)
                    continue
                fds.append(fd)
                bufs.append(data)
                conns.append(conn)
                if len(fds) >= SEND_BATCH:
                    _send_batch(fds, bufs, conns)
                    fds, bufs, conns = [], [], []
        if fds:
            _send_batch(fds, bufs, conns)
        if self.metrics is not None and template.received_at:
            self.metrics.notify_latency.observe(max(0.0, time.time() - template.received_at))

    def on_block(self, candidate: BlockCandidate) -> None:
        """Engine callback (synchronous): submit the block in a task, right now."""
        if self.blocks is None:
            log.error("block %s found but no block submitter is configured", candidate.hash_hex)
            return
        try:
            block, found = self.blocks.prepare(candidate)
        except BlockAssemblyError:
            return  # logged with the traceback by prepare(); a bug, not the miner's fault
        loop = asyncio.get_running_loop()
        name = f"block-{candidate.hash_hex[:16]}"
        # The durable record runs alongside the submission, not after it: a crash while the
        # nodes are slow to answer must not lose the block.
        recorded = loop.create_task(self.blocks.record(found), name=f"{name}-record")
        task = loop.create_task(self.blocks.submit_prepared(block, found, recorded), name=name)
        for t in (recorded, task):
            self._block_tasks.add(t)
            t.add_done_callback(self._block_done)

    def _block_done(self, task: asyncio.Task[Any]) -> None:
        self._block_tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("%s failed: %r", task.get_name(), exc)
            return
        result = task.result()
        if isinstance(result, BlockOutcome):
            self.block_outcomes.append(result)
            del self.block_outcomes[:-100]

    async def wait_blocks(self) -> None:
        """Wait for every block submission in flight (tests, shutdown)."""
        while self._block_tasks:
            await asyncio.gather(*list(self._block_tasks), return_exceptions=True)

    # --- metrics -----------------------------------------------------------------------------

    def flush_metrics(self) -> None:
        m = self.metrics
        c = self.ctx.counters
        if m is None:
            c.check_samples.clear()
            return
        delta = c.accepted - self._flushed_accepted
        if delta:
            m.shares.labels(result="accepted", reason="none").inc(delta)
            self._flushed_accepted = c.accepted
        for reason in RejectReason:
            n = c.rejected[reason.index]
            d = n - self._flushed_rejected[reason.index]
            if d:
                m.shares.labels(result="rejected", reason=reason.name).inc(d)
                self._flushed_rejected[reason.index] = n
        counts = self.disconnects.counts
        flushed = self._flushed_disconnects
        for why, n in counts.items():
            if n != flushed[why]:
                m.disconnects.labels(reason=why.name).inc(n - flushed[why])
                flushed[why] = n
        samples = c.check_samples
        if samples:
            for seconds in samples[:1000]:
                m.share_check_seconds.observe(seconds)
            samples.clear()
        total = self.ctx.engine.stats[0]
        dd = total - self._flushed_difficulty
        if dd:
            m.accepted_difficulty.inc(dd)
            self._flushed_difficulty = total

    def _export(self) -> None:
        m = self.metrics
        if m is not None:
            m.connections.set(len(self.connections))
            m.pool_hashrate.set(self.hashrate)
            now = self.clock()
            m.workers.set(len({c.worker for c in self.connections
                               if c.last_share and now - c.last_share < 600.0}))
