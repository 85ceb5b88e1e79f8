"""ZMQ `hashblock` listener for one node: a fast hint that the tip changed.

Bitcoin Core publishes each notification as three frames: the topic, the body (for hashblock the
32-byte block hash in display order) and a 4-byte little-endian sequence number counted per topic
(src/zmq/zmqpublishnotifier.cpp). A jump in that number means messages were lost (high-water mark,
reconnect, node restart): the listener reports it so the caller resynchronises over RPC. The
listener also tracks whether the subscription is up (socket monitor: handshake / disconnect) and
when it last heard anything, so the caller can fall back to polling when ZMQ cannot be trusted.

ZMQ is only a hint: the caller always asks the node (RPC) for the truth.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

TOPIC_HASHBLOCK = b"hashblock"
_monitor_ids = itertools.count(1)

# on_hint(block_hash_hex, gap): gap=True when messages were lost before this one.
HintCallback = Callable[[str, bool], None]


class HashblockListener:
    """Subscribes to one node's `hashblock` publisher; calls `on_hint` for every message."""

    def __init__(
        self,
        node: str,
        url: str,
        on_hint: HintCallback,
        *,
        on_disconnect: Callable[[], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        context: zmq.asyncio.Context | None = None,
    ) -> None:
        self.node = node
        self._on_disconnect = on_disconnect
        self._on_connect = on_connect
        self.url = url
        self._on_hint = on_hint
        self._context = context
        self._last_seq: dict[bytes, int] = {}
        self.connected = False
        # Last time the subscription showed life (message or handshake), time.monotonic().
        self.last_activity = time.monotonic()
        self.messages = 0
        self.gaps = 0
        self.gap_pending = False  # a gap was seen and no in-sequence message has followed yet
        self._drop = 0

    def __repr__(self) -> str:
        return f"HashblockListener(node={self.node!r}, url={self.url!r})"

    def drop_next(self, count: int = 1) -> None:
        """Test hook: discard the next `count` messages as if the network had lost them."""
        self._drop += count

    def silent_for(self) -> float:
        return time.monotonic() - self.last_activity

    async def run(self) -> None:
        """Receive until cancelled. pyzmq reconnects by itself after a node restart.

        Without a `context` from the caller the listener owns a private one for the duration of
        the run: nothing is shared with other listeners, event loops or the process-wide
        `Context.instance()`, and the run's sockets are closed (then its context destroyed) on
        every way out, including a failure while setting up.
        """
        owned = self._context is None
        ctx = zmq.asyncio.Context() if owned else self._context
        assert ctx is not None
        sock: zmq.asyncio.Socket | None = None
        monitor: zmq.asyncio.Socket | None = None
        monitor_task: asyncio.Task[None] | None = None
        try:
            sock = ctx.socket(zmq.SUB)
            # Fast reconnects after a node restart; heartbeats detect a silently dead peer.
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            # A restarted node is seen again within half a second (its return is a sign of life
            # the node set acts on at once); a reconnect attempt costs one refused connect.
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
            sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SUBSCRIBE, TOPIC_HASHBLOCK)
            # An explicit inproc name: pyzmq's default is derived from the socket's fd, which
            # the OS reuses while a closed monitor's endpoint may still be registered.
            monitor = sock.get_monitor_socket(
                zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED,
                addr=f"inproc://poold-hashblock-monitor-{next(_monitor_ids)}",
            )
            sock.connect(self.url)
            monitor_task = asyncio.create_task(
                self._watch(monitor), name=f"zmq-monitor-{self.node}"
            )
            while True:
                frames = await sock.recv_multipart()
                self._handle(frames)
        finally:
            self.connected = False
            try:
                if monitor_task is not None:
                    monitor_task.cancel()
                    # It uses the monitor socket: wait for it whatever it ended with.
                    await asyncio.wait([monitor_task])
                    if not monitor_task.cancelled() and monitor_task.exception() is not None:
                        log.error("zmq %s: socket monitor failed", self.node,
                                  exc_info=monitor_task.exception())
            finally:
                # Even if the wait above is itself cancelled.
                self._close(ctx, sock, monitor, owned)

    @staticmethod
    def _close(
        ctx: zmq.asyncio.Context,
        sock: zmq.asyncio.Socket | None,
        monitor: zmq.asyncio.Socket | None,
        owned: bool,
    ) -> None:
        """Close this run's sockets (monitor first), then the context if the run owns it."""
        if sock is not None and monitor is not None:
            sock.disable_monitor()
        if monitor is not None:
            monitor.close(linger=0)
        if sock is not None:
            sock.close(linger=0)
        if owned:
            ctx.destroy(linger=0)  # all its sockets are closed: returns at once

    def _handle(self, frames: list[bytes]) -> None:
        self.last_activity = time.monotonic()
        if len(frames) != 3 or len(frames[2]) != 4:
            log.warning("zmq %s: malformed message (%d frames), ignored", self.node, len(frames))
            return
        topic, body, seq_bytes = frames
        if self._drop > 0:
            self._drop -= 1
            return
        if topic != TOPIC_HASHBLOCK or len(body) != 32:
            log.warning("zmq %s: unexpected %r message of %d bytes", self.node, topic, len(body))
            return
        seq = int.from_bytes(seq_bytes, "little")
        last = self._last_seq.get(topic)
        self._last_seq[topic] = seq
        self.messages += 1
        # The first message after start tells us nothing about losses.
        gap = last is not None and seq != (last + 1) & 0xFFFFFFFF
        if gap:
            self.gaps += 1
            self.gap_pending = True
            log.warning(
                "zmq %s: hashblock sequence jumped %d -> %d; resynchronising over RPC",
                self.node, last, seq,
            )
        else:
            self.gap_pending = False
        try:
            # The body is the hash in display order already: its hex is the RPC's hex.
            self._on_hint(body.hex(), gap)
        except Exception:
            # A bug downstream must not end the subscription (polling would then carry it).
            log.exception("zmq %s: hashblock handler failed", self.node)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected = True
                self.last_activity = time.monotonic()
                log.info("zmq %s: subscribed to hashblock at %s", self.node, self.url)
                if self._on_connect is not None:
                    self._on_connect()
            elif kind == zmq.EVENT_DISCONNECTED:
                self.connected = False
                log.warning("zmq %s: disconnected from %s; polling until it is back",
                            self.node, self.url)
                if self._on_disconnect is not None:
                    self._on_disconnect()

