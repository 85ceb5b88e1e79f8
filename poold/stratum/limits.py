"""File descriptors: fit the connection limit to RLIMIT_NOFILE, and survive running out anyway.

Every miner is one descriptor. At start `fit_max_connections` raises the soft RLIMIT_NOFILE to
the hard limit (getrlimit(2): an unprivileged process may raise its soft limit up to the hard
one) and, if `stratum.max_connections` plus a reserve for everything else (bitcoind RPC, ZMQ,
the ledger, the admin API, logs) still does not fit, lowers the limit with a WARNING saying what
to change: `LimitNOFILE=` of the systemd unit (systemd.exec(5)) or `ulimit -n`. Miners beyond the
limit are then refused by the server ("server full") while accept() keeps working.

If descriptors run out anyway (other processes, a lower limit set behind our back), accept(2)
fails with EMFILE/ENFILE (or ENOBUFS/ENOMEM). asyncio's accept loop then reports the error to the
loop's exception handler, stops watching the socket and retries a second later — but it goes on
calling accept() up to `backlog` times in that same tick, reporting each failure (thousands of
tracebacks a second). `GuardedSocket` ends that tick at the first failure, and
`AcceptErrorHandler` turns the report into a counter and one WARNING a minute.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("poold.stratum.server")

# Descriptors kept for everything that is not a miner.
RESERVE_FDS = 256
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
PAUSE_S = 1.0  # asyncio's own retry delay after such an accept failure (ACCEPT_RETRY_DELAY)


def fit_max_connections(max_connections: int, reserve: int = RESERVE_FDS) -> int:
    """Raise the soft descriptor limit to the hard one; the connection limit that fits."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - not on Linux
        return max_connections
    want = max_connections + reserve
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = want if hard == resource.RLIM_INFINITY else min(max(want, soft), hard)
        if soft != resource.RLIM_INFINITY and target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError) as exc:
                log.warning("cannot raise the descriptor limit from %d to %d: %s",
                            soft, target, exc)
    if soft == resource.RLIM_INFINITY or want <= soft:
        return max_connections
    fits = max(1, soft - reserve)
    log.warning(
        "stratum.max_connections = %d does not fit in this process's descriptor limit (%d, "
        "%d kept for the rest): serving at most %d miners. Raise LimitNOFILE= in the systemd "
        "unit (or ulimit -n) to at least %d, or lower stratum.max_connections",
        max_connections, soft, reserve, fits, want)
    return fits


class GuardedSocket(socket.socket):
    """A listening socket whose accept() stops the rest of the event loop's accept burst after a
    resource error: the first failure goes up to asyncio (which pauses accepting for a second),
    the next calls in the same burst look like an empty queue."""

    paused_until = 0.0

    def accept(self) -> tuple[socket.socket, Any]:
        if self.paused_until and time.monotonic() < self.paused_until:
            raise BlockingIOError(errno.EAGAIN, "accepting paused")
        try:
            return super().accept()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self.paused_until = time.monotonic() + PAUSE_S / 2
            raise

    @classmethod
    def adopt(cls, sock: socket.socket) -> GuardedSocket:
        """The same listening socket as a GuardedSocket (`sock` is detached)."""
        return cls(sock.family, sock.type, sock.proto, fileno=sock.detach())


def listening_sockets(host: str, port: int, backlog: int, reuse_port: bool,
                      ) -> list[GuardedSocket]:
    """Bound, listening sockets for every address `host` resolves to (as create_server does)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    out: list[GuardedSocket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        for family, kind, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = GuardedSocket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


class AcceptErrorHandler:
    """A loop exception handler: accept() resource errors become a count and one WARNING a
    minute (no traceback); anything else goes to the handler that was there before."""

    def __init__(self, on_error: Callable[[], None] | None = None,
                 warn_every_s: float = 60.0) -> None:
        self.errors = 0
        self._on_error = on_error
        self._warn_every_s = warn_every_s
        self._warned_at = -1e18
        self._since_warning = 0
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self)

    def uninstall(self) -> None:
        if self._loop is not None and self._loop.get_exception_handler() is self:
            self._loop.set_exception_handler(self._previous)
        self._loop = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if (isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS
                and str(context.get("message", "")).startswith("socket.accept()")):
            self.errors += 1
            self._since_warning += 1
            if self._on_error is not None:
                self._on_error()
            now = time.monotonic()
            if now - self._warned_at >= self._warn_every_s:
                self._warned_at = now
                log.warning("accept() failed %d time(s) (%s): out of descriptors or memory; "
                            "new miners wait while accepting pauses %.0f s. Raise LimitNOFILE= "
                            "or lower stratum.max_connections",
                            self._since_warning, errno.errorcode.get(exc.errno or 0, exc),
                            PAUSE_S)
                self._since_warning = 0
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
