"""Every byte-order conversion poold needs, in one place.

Names: `x` = internal bytes (sha256d output order, as in headers and merkle trees), `x_hex` =
RPC/display hex (the byte-reverse of internal), `x_int` = internal bytes read as a little-endian
integer (what targets compare against), `x_stratum` = the `mining.notify` prevhash: internal
bytes with each 4-byte word byte-reversed (docs/STRATUM.md §6). Stratum's version/nbits/ntime/nonce
are the big-endian hex of a uint32 (`u32_to_hex`).
"""

from __future__ import annotations

import binascii


def _hash32(x: bytes, what: str) -> bytes:
    if len(x) != 32:
        raise ValueError(f"{what} must be 32 bytes, got {len(x)}")
    return x


def _unhex(s: str, what: str) -> bytes:
    # binascii (unlike bytes.fromhex) rejects embedded whitespace: wire hex must be exact.
    try:
        return binascii.unhexlify(s)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid hex: {s[:80]!r}") from None


def hash_from_hex(x_hex: str) -> bytes:
    """Display/RPC hex (e.g. a txid or block hash from bitcoind) -> internal bytes."""
    if len(x_hex) != 64:
        raise ValueError(f"hash hex must be 64 characters, got {len(x_hex)}")
    return _unhex(x_hex, "hash")[::-1]


def hash_to_hex(x: bytes) -> str:
    """Internal bytes -> display/RPC hex."""
    return _hash32(x, "hash")[::-1].hex()


def hash_to_int(x: bytes) -> int:
    """Internal bytes -> the 256-bit integer compared with targets (little-endian)."""
    return int.from_bytes(_hash32(x, "hash"), "little")


def int_to_hash(n: int) -> bytes:
    """256-bit integer -> internal bytes (inverse of hash_to_int)."""
    if not 0 <= n < 2**256:
        raise ValueError("hash integer out of 256-bit range")
    return n.to_bytes(32, "little")


def _swap_words(b: bytes) -> bytes:
    # Reverse the bytes inside each 4-byte word, keeping the word order.
    return b"".join(b[i : i + 4][::-1] for i in range(0, len(b), 4))


def prevhash_to_stratum(prevhash: bytes) -> str:
    """Internal prevhash -> the 64-hex `mining.notify` prevhash (each 4-byte word byte-reversed)."""
    return _swap_words(_hash32(prevhash, "prevhash")).hex()


def prevhash_from_stratum(prevhash_stratum: str) -> bytes:
    """The `mining.notify` prevhash hex -> internal bytes."""
    if len(prevhash_stratum) != 64:
        raise ValueError(f"stratum prevhash must be 64 hex characters, got {len(prevhash_stratum)}")
    return _swap_words(_unhex(prevhash_stratum, "stratum prevhash"))


def u32_to_hex(n: int) -> str:
    """uint32 -> 8-char zero-padded big-endian hex as on the Stratum wire (version/nbits/ntime)."""
    if not 0 <= n <= 0xFFFFFFFF:
        raise ValueError(f"u32 out of range: {n}")
    return f"{n:08x}"


def u32_from_hex(s: str) -> int:
    """8-char big-endian hex from the Stratum wire -> uint32. Exactly 8 hex digits required."""
    if len(s) != 8:
        raise ValueError(f"u32 hex must be 8 characters, got {len(s)}: {s[:16]!r}")
    return int.from_bytes(_unhex(s, "u32 hex"), "big")


def bytes_from_hex(s: str, what: str = "value") -> bytes:
    """Plain hex -> bytes in the same order (scripts, raw txs, coinb1/coinb2, extranonces)."""
    return _unhex(s, what)
