"""The devnet's ZMQ publisher, byte-compatible with bitcoind's `-zmqpub*` notifications.

One responsibility: publish `hashblock`/`rawblock` (and `hashtx`/`rawtx`) the way bitcoind does
(doc/zmq.md, src/zmq/zmqpublishnotifier.cpp): a 3-frame multipart message
[topic, body, sequence] where the sequence is a 4-byte little-endian counter kept per topic and
starting at 0, and hash bodies are 32 bytes in display (RPC) byte order.

The socket is an XPUB rather than bitcoind's PUB: identical on the wire for subscribers, but it
lets the devnet see subscriptions, so tests can wait until a subscriber is really connected
instead of sleeping past ZMQ's "slow joiner" window.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import zmq
import zmq.asyncio

log = logging.getLogger("poold.devnet.zmq")

TOPICS = ("hashblock", "rawblock", "hashtx", "rawtx")
_SNDHWM = 1000  # bitcoind's DEFAULT_ZMQ_SNDHWM


class ZmqPublisher:
    def __init__(self) -> None:
        self._ctx = zmq.asyncio.Context()
        self._sock: zmq.asyncio.Socket | None = None
        self._seq: dict[str, int] = dict.fromkeys(TOPICS, 0)
        self._subs: Counter[bytes] = Counter()
        self._changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.endpoint = ""

    def bind(self, endpoint: str) -> str:
        """Bind (port 0 or `*` = any free port); returns the endpoint actually bound."""
        if endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, _SNDHWM)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        self._sock = sock
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        self.endpoint = last.decode() if isinstance(last, bytes) else str(last)
        self._reader = asyncio.get_running_loop().create_task(
            self._read_subscriptions(sock), name="devnet-zmq-subscriptions"
        )
        return self.endpoint

    async def _read_subscriptions(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            msg = await sock.recv()
            if not msg:
                continue
            if msg[0] == 1:
                self._subs[msg[1:]] += 1
            elif msg[0] == 0 and self._subs[msg[1:]] > 0:
                self._subs[msg[1:]] -= 1
            self._changed.set()

    def subscribers(self, topic: str) -> int:
        """Subscriptions whose prefix matches `topic` (as seen by the XPUB socket)."""
        t = topic.encode()
        return sum(n for prefix, n in self._subs.items() if t.startswith(prefix))

    async def wait_subscribers(self, topic: str, count: int = 1) -> None:
        """Return once `count` subscriptions cover `topic` (callers bound it with a timeout)."""
        while self.subscribers(topic) < count:
            self._changed.clear()
            await self._changed.wait()

    async def publish(self, topic: str, body: bytes) -> None:
        if self._sock is None:
            return
        seq = self._seq[topic]
        self._seq[topic] = (seq + 1) & 0xFFFFFFFF
        try:
            await self._sock.send_multipart([topic.encode(), body, seq.to_bytes(4, "little")])
        except zmq.ZMQError as exc:  # bitcoind logs and carries on; the sequence still advances
            log.warning("zmq publish %s failed: %s", topic, exc)

    async def close(self) -> None:
        """Stop the subscription reader, close the socket, then destroy the publisher's own
        context (never shared: each publisher creates one). Safe to call twice."""
        reader, self._reader = self._reader, None
        sock, self._sock = self._sock, None  # publish() is a no-op from here on
        try:
            if reader is not None:
                reader.cancel()
                # The reader uses the socket: wait for it, whatever it ended with.
                await asyncio.wait([reader])
                if not reader.cancelled() and reader.exception() is not None:
                    log.error("zmq subscription reader failed", exc_info=reader.exception())
        finally:
            if sock is not None:
                sock.close(linger=0)
            self._ctx.destroy(linger=0)  # its only socket is closed: returns at once
