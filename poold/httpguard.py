"""Deadlines for the admin API's HTTP connections, and JSON bodies that cannot hurt the parser.

aiohttp bounds an idle keep-alive connection (`keepalive_timeout`, also armed when a connection
opens) but has no separate, shorter deadline for the request headers: a client that connects and
sends nothing, or trickles a header a byte at a time, holds a connection (and a descriptor) for
the whole keep-alive time. `HeaderDeadline` wraps aiohttp's request handler protocol and closes a
connection whose first request's headers (up to the blank line ending them, RFC 9112 §2.1) are
not complete within `header_timeout_s` of connecting; later requests on a kept-alive connection
are bounded by aiohttp's keep-alive timeout.

`parse_json_body` turns every way `json.loads` can fail — invalid JSON or UTF-8, nesting deep
enough to exhaust the recursion limit, integers with more digits than CPython converts
(sys.int_info.str_digits_check_threshold) — into `BodyError`, and refuses nesting deeper than
`max_depth` before parsing at all.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from poold.errors import PooldError

HEADER_END = b"\r\n\r\n"
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class BodyError(PooldError, ValueError):
    """The body is not acceptable JSON: `summary` for the client, `detail` says where."""

    def __init__(self, summary: str, detail: str) -> None:
        super().__init__(f"{summary}: {detail}")
        self.summary = summary
        self.detail = detail


def json_depth(raw: bytes) -> int:
    """Deepest nesting of arrays and objects in `raw` (strings skipped); no recursion."""
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRING.sub(b'""', raw)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_json_body(raw: bytes, max_depth: int = 8) -> Any:
    depth = json_depth(raw)
    if depth > max_depth:
        raise BodyError("body nested too deeply", f"{depth} levels; at most {max_depth}")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError, OverflowError, TypeError) as exc:
        # ValueError covers JSONDecodeError and integers beyond the int conversion limit.
        raise BodyError("body is not valid JSON", str(exc)) from None


class HeaderDeadline(asyncio.Protocol):
    """Delegates to aiohttp's protocol; closes the connection if its first request's headers
    are not complete `timeout_s` after connecting."""

    def __init__(self, inner: asyncio.Protocol, timeout_s: float) -> None:
        self.inner = inner
        self.timeout_s = timeout_s
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self._expire)
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        self.timed_out = True
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if HEADER_END in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()
