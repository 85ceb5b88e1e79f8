"""Batch send for the job fan-out: one non-blocking send() per miner socket, native or pure Python.

On a new tip every miner gets the same few hundred bytes at once. Through asyncio each costs a
`transport.write` (Python bookkeeping around a `socket.send`); here the server hands over the
sockets whose transport has nothing queued, and one call sends to all of them. Whatever did not go
out completely is reported back and the server queues the rest in that connection's transport, so
the byte order on every connection is unchanged (poold.stratum.server, `Connection`).

`send_many(fds, bufs) -> [(i, sent)]`: for each i, one send of bufs[i] on fd fds[i] without
blocking; the result lists, in order of i, every i not sent completely: `sent >= 0` bytes went out
(0 when the socket buffer was full), `sent < 0` is -errno of a failed send (EPIPE, ECONNRESET...).

Two implementations with one contract, parity-tested: `poold._fanout` (Cython, `native/`), and
`pure_send_many` below (`os.write`, which is send() without flags on a socket; a broken pipe is an
error, not a signal, because Python ignores SIGPIPE). `POOLD_PURE_FANOUT=1` selects the pure one;
`SENDER` names the one in use.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable

__all__ = ["SENDER", "pure_send_many", "send_many"]

log = logging.getLogger(__name__)

SendMany = Callable[[list[int], list[bytes]], list[tuple[int, int]]]


def pure_send_many(fds: list[int], bufs: list[bytes]) -> list[tuple[int, int]]:
    """The reference implementation of `send_many` (see the module docstring)."""
    if len(bufs) != len(fds):
        raise ValueError(f"{len(fds)} sockets but {len(bufs)} buffers")
    out: list[tuple[int, int]] = []
    write = os.write
    for i, fd in enumerate(fds):
        data = bufs[i]
        try:
            sent = write(fd, data)  # EINTR is retried by Python (PEP 475)
        except BlockingIOError:
            out.append((i, 0))
            continue
        except OSError as exc:
            out.append((i, -(exc.errno or 0) or -1))
            continue
        if sent != len(data):
            out.append((i, sent))
    return out


def _load() -> tuple[SendMany, str]:
    if os.environ.get("POOLD_PURE_FANOUT", "").strip().lower() in {"1", "true", "yes", "on"}:
        return pure_send_many, "pure (POOLD_PURE_FANOUT is set)"
    try:
        native = importlib.import_module("poold._fanout")
    except ImportError as exc:
        return pure_send_many, f"pure (native extension not available: {exc})"
    fn: SendMany = native.send_many
    return fn, "native"


send_many, SENDER = _load()
log.debug("fan-out sender: %s", SENDER)
