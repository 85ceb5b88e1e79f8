"""Bitcoin wire serialization primitives: hashes, fixed-width integers, CompactSize, and a
bounds-checked reader.

Implements the encodings of Bitcoin Core's `serialize.h` (little-endian integers, CompactSize with
canonical-encoding and MAX_SIZE checks) used by transactions (BIP144) and block headers.
"""

from __future__ import annotations

import hashlib
import struct

from poold.errors import PooldError

# Bitcoin Core's MAX_SIZE (serialize.h): the largest length a CompactSize may announce for a
# vector; anything larger is "ReadCompactSize(): size too large".
MAX_COMPACT_SIZE = 0x02000000

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")


class DecodeError(PooldError, ValueError):
    """Serialized data is truncated, non-canonical or otherwise malformed."""


def sha256(b: bytes) -> bytes:
    """Single SHA-256."""
    return hashlib.sha256(b).digest()


def sha256d(b: bytes) -> bytes:
    """Double SHA-256 (Bitcoin's hash for txids, headers and merkle nodes); internal byte order."""
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def hash160(b: bytes) -> bytes:
    """RIPEMD-160 of SHA-256 (P2PKH/P2WPKH key hashes, P2SH script hashes)."""
    return hashlib.new("ripemd160", hashlib.sha256(b).digest()).digest()


def _check_range(n: int, lo: int, hi: int, what: str) -> None:
    if not lo <= n <= hi:
        raise ValueError(f"{what} out of range: {n}")


def u32le(n: int) -> bytes:
    _check_range(n, 0, 0xFFFFFFFF, "u32")
    return _U32.pack(n)


def i32le(n: int) -> bytes:
    _check_range(n, -(2**31), 2**31 - 1, "i32")
    return _I32.pack(n)


def u64le(n: int) -> bytes:
    _check_range(n, 0, 2**64 - 1, "u64")
    return _U64.pack(n)


def i64le(n: int) -> bytes:
    _check_range(n, -(2**63), 2**63 - 1, "i64")
    return _I64.pack(n)


def compact_size(n: int) -> bytes:
    """CompactSize ("varint" in the wiki): 1, 3, 5 or 9 bytes, always the shortest form."""
    if n < 0:
        raise ValueError(f"compact size must be >= 0, got {n}")
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + _U16.pack(n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + _U32.pack(n)
    if n <= 0xFFFFFFFFFFFFFFFF:
        return b"\xff" + _U64.pack(n)
    raise ValueError(f"compact size too large: {n}")


def var_bytes(b: bytes) -> bytes:
    """A byte vector as serialized by Core: CompactSize length, then the bytes."""
    return compact_size(len(b)) + b


class ByteReader:
    """Sequential reader over a bytes object; every read is bounds-checked and raises DecodeError
    (never IndexError or struct.error) so parsers can report malformed input cleanly."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def pos(self) -> int:
        return self._pos

    def read(self, n: int) -> bytes:
        if n < 0:
            raise DecodeError(f"negative read length {n}")
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError(
                f"truncated: need {n} bytes at offset {self._pos}, "
                f"have {len(self._data) - self._pos}"
            )
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.read(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.read(4))[0])

    def i32(self) -> int:
        return int(_I32.unpack(self.read(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.read(8))[0])

    def i64(self) -> int:
        return int(_I64.unpack(self.read(8))[0])

    def compact_size(self, *, limit: int = MAX_COMPACT_SIZE) -> int:
        """Read a CompactSize; non-canonical (longer than needed) encodings are rejected as
        Bitcoin Core does ("non-canonical ReadCompactSize()"), and values above `limit` too."""
        first = self.u8()
        if first < 0xFD:
            n = first
        elif first == 0xFD:
            n = self.u16()
            if n < 0xFD:
                raise DecodeError("non-canonical compact size")
        elif first == 0xFE:
            n = self.u32()
            if n <= 0xFFFF:
                raise DecodeError("non-canonical compact size")
        else:
            n = self.u64()
            if n <= 0xFFFFFFFF:
                raise DecodeError("non-canonical compact size")
        if n > limit:
            raise DecodeError(f"compact size {n} exceeds limit {limit}")
        return n

    def var_bytes(self) -> bytes:
        """A CompactSize-prefixed byte vector."""
        return self.read(self.compact_size())

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def done(self) -> bool:
        return self._pos == len(self._data)

    def expect_done(self, what: str = "data") -> None:
        """Raise DecodeError if unread bytes remain (trailing garbage)."""
        if not self.done():
            raise DecodeError(f"{self.remaining()} trailing bytes after {what}")
