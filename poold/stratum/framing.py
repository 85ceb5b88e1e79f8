"""Newline framing of the Stratum byte stream (docs/STRATUM.md §1): bytes in, lines out.

A line longer than `max_line` (16 KiB by default; ckpool allows 1 KiB, MiningCore 32 KiB) is a
session-level protocol violation: `LineTooLong` tells the server to drop that connection. Empty
lines and a trailing `\\r` are left to the caller (the JSON parser ignores the whitespace).
"""

from __future__ import annotations

from poold.errors import PooldError

MAX_LINE_BYTES = 16 * 1024


class LineTooLong(PooldError, ValueError):
    """A line (complete or still buffered) exceeds the limit."""


class LineFramer:
    """Splits a byte stream on b"\\n", keeping the incomplete tail between reads."""

    __slots__ = ("_buf", "max_line")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self._buf = b""

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held back."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """The complete lines in `data` (after what was buffered), without their b"\\n"."""
        if self._buf:
            data = self._buf + data
        lines = data.split(b"\n")
        rest = lines.pop()
        if len(data) > self.max_line:
            if len(rest) > self.max_line:
                raise LineTooLong(f"unterminated line of {len(rest)} bytes")
            for line in lines:
                if len(line) > self.max_line:
                    raise LineTooLong(f"line of {len(line)} bytes")
        self._buf = rest
        return lines
