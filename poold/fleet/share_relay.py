"""Accepted shares from every `poold run --processes N` worker reach the one fleet controller.

Only worker 0 runs the fleet controller, but SO_REUSEPORT hands each miner's connection to any
worker. The controller confirms every power change from the pool's own share rate per miner, so
the other workers forward what their miners earn: each sums accepted difficulty per Stratum
worker name and, every `interval_s`, sends the sums as datagrams to a unix socket that worker 0
binds in the instance's state directory. Worker 0 feeds them to its share-rate estimator as if
the shares had arrived on its own connections.

A datagram is JSON `{"d": {"<worker>": [<difficulty>, <shares>], ...}}`, at most `MAX_DATAGRAM`
bytes (a larger batch goes out in several). Worker 0 records each sum as that many shares of the
mean difficulty: the controller's confidence in a rate depends on the number of shares.
Datagrams on a local socket are not lost in transit; when worker 0 is down (restarting after a
crash) the sums of those seconds are dropped, which costs the controller's estimate (a 600 s
window) at most that slice. Sending never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MAX_DATAGRAM = 32 * 1024
# Shares one sum stands for, at most, on the receiving side (beyond a thousand the rate's
# confidence bound hardly moves; a bound keeps a bad datagram from costing much).
MAX_EXPAND = 1000
SOCKET_NAME = "fleet-shares.sock"


class _Share(Protocol):
    @property
    def worker(self) -> str: ...

    @property
    def difficulty(self) -> float: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayedShares:
    """One worker's accepted difficulty (`shares` of them) over one interval of another
    process."""

    worker: str
    difficulty: float
    shares: int = 1


def encode(sums: dict[str, tuple[float, int]]) -> list[bytes]:
    """The (difficulty, shares) sums as datagrams of at most MAX_DATAGRAM bytes each."""
    out: list[bytes] = []
    chunk: dict[str, list[float | int]] = {}
    size = 0
    for worker, (difficulty, shares) in sums.items():
        item = len(json.dumps(worker)) + 48
        if chunk and size + item > MAX_DATAGRAM - 16:
            out.append(json.dumps({"d": chunk}).encode())
            chunk, size = {}, 0
        chunk[worker] = [difficulty, shares]
        size += item
    if chunk:
        out.append(json.dumps({"d": chunk}).encode())
    return out


def decode(datagram: bytes) -> list[RelayedShares]:
    """The sums of one datagram; ValueError for anything that is not one."""
    body = json.loads(datagram)
    sums = body.get("d") if isinstance(body, dict) else None
    if not isinstance(sums, dict):
        raise ValueError("not a share relay datagram")
    out = []
    for worker, pair in sums.items():
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"bad sum for {worker!r}: {pair!r}")
        difficulty, shares = pair
        if not isinstance(difficulty, int | float) or not 0 < difficulty < math.inf:
            raise ValueError(f"bad difficulty for {worker!r}: {difficulty!r}")
        if not isinstance(shares, int) or isinstance(shares, bool) or shares < 1:
            raise ValueError(f"bad share count for {worker!r}: {shares!r}")
        out.append(RelayedShares(str(worker), float(difficulty), shares))
    return out


class ShareRelaySender:
    """In workers 1..N-1: a share sink that forwards accepted difficulty to worker 0."""

    def __init__(self, path: Path, *, interval_s: float = 1.0,
                 dropped: _Counter | None = None) -> None:
        self.path = str(path)
        self._dropped_metric = dropped
        self.interval_s = interval_s
        self._sums: dict[str, tuple[float, int]] = {}
        # Opened by the first flush, closed when `run` ends: a daemon that fails before it
        # starts the relay leaves no socket behind.
        self._sock: socket.socket | None = None
        self.sent = 0
        self.dropped = 0
        self._failing = False

    def record_share(self, share: _Share) -> None:
        if share.worker:
            difficulty, shares = self._sums.get(share.worker, (0.0, 0))
            self._sums[share.worker] = (difficulty + share.difficulty, shares + 1)

    def flush(self) -> None:
        sums, self._sums = self._sums, {}
        if not sums:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
        for datagram in encode(sums):
            try:
                self._sock.sendto(datagram, self.path)
            except OSError as exc:  # worker 0 not bound yet or restarting; its buffer full
                self.dropped += 1
                if self._dropped_metric is not None:
                    self._dropped_metric.inc()
                if not self._failing:
                    log.warning("share relay to worker 0 (%s) failing: %s; the fleet controller "
                                "misses this worker's shares meanwhile", self.path, exc)
                    self._failing = True
            else:
                self.sent += 1
                if self._failing:
                    log.info("share relay to worker 0 is back")
                    self._failing = False

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.flush()
        finally:
            self.flush()
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_shares: Callable[[RelayedShares], None]) -> None:
        self.on_shares = on_shares
        self.bad = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            batch = decode(data)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self.bad += 1
            if self.bad == 1 or self.bad % 1000 == 0:
                log.warning("share relay: %d bad datagram(s), latest: %s", self.bad, exc)
            return
        for relayed in batch:
            n = min(relayed.shares, MAX_EXPAND)
            each = RelayedShares(relayed.worker, relayed.difficulty / n)
            for _ in range(n):
                self.on_shares(each)


class ShareRelayReceiver:
    """In worker 0: binds the relay socket and hands every forwarded share (a sum of n shares
    as n of its mean difficulty) to `on_shares`."""

    def __init__(self, path: Path, on_shares: Callable[[RelayedShares], None]) -> None:
        self.path = path
        self._protocol = _Protocol(on_shares)
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        # A socket file left by a worker 0 that was killed: nobody listens on it any more.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self._protocol, local_addr=str(self.path), family=socket.AF_UNIX)
        self._transport = transport
        log.info("share relay: listening on %s for the other workers' shares", self.path)

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
