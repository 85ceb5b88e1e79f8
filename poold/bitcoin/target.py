"""Proof-of-work targets: compact nBits <-> 256-bit target <-> pool difficulty.

nBits follows Bitcoin Core's arith_uint256 SetCompact/GetCompact. Difficulty is the pool
("bdiff") convention: difficulty 1 = 0x00000000FFFF0000...0000 = 0xFFFF * 2**208, share target
for difficulty D = floor(diff1 / D), and a hash meets a target iff its little-endian integer is
<= the target (docs/STRATUM.md §5). Fractional difficulties (down to 1e-8 and below, for regtest and
tests) are converted with exact rational arithmetic, never float division.
"""

from __future__ import annotations

import math
from fractions import Fraction

from poold.bitcoin.byteorder import hash_to_int, int_to_hash
from poold.errors import PooldError

DIFF1_TARGET: int = 0xFFFF << 208
MAX_TARGET: int = 2**256 - 1


class TargetError(PooldError, ValueError):
    """An nBits value that Bitcoin Core would flag as negative or overflowing."""


def bits_to_target(bits: int) -> int:
    """Compact nBits -> target (Core's SetCompact). Negative or overflowing encodings raise
    TargetError because no valid header can carry them; a zero mantissa gives target 0."""
    if not 0 <= bits <= 0xFFFFFFFF:
        raise TargetError(f"nbits out of u32 range: {bits}")
    size = bits >> 24
    word = bits & 0x007FFFFF
    # As in Core, small exponents shift the mantissa right first, and the sign/overflow flags are
    # judged on what remains (so 0x01803456 is plain zero, not negative).
    if size <= 3:
        word >>= 8 * (3 - size)
    if word != 0 and bits & 0x00800000:
        raise TargetError(f"nbits {bits:08x} encodes a negative target")
    if word != 0 and (size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32)):
        raise TargetError(f"nbits {bits:08x} overflows 256 bits")
    return word if size <= 3 else word << (8 * (size - 3))


def target_to_bits(target: int) -> int:
    """Target -> compact nBits (Core's GetCompact): truncates to a 3-byte mantissa, so
    bits_to_target(target_to_bits(t)) <= t, with equality for targets that came from nBits."""
    if not 0 <= target <= MAX_TARGET:
        raise TargetError("target out of 256-bit range")
    size = (target.bit_length() + 7) // 8
    compact = target << (8 * (3 - size)) if size <= 3 else target >> (8 * (size - 3))
    # The mantissa's top bit is the sign bit: shift into a bigger exponent to keep it positive.
    if compact & 0x00800000:
        compact >>= 8
        size += 1
    return compact | (size << 24)


def target_to_difficulty(target: int) -> float:
    """Pool difficulty of a target: diff1 / target (correctly rounded; inf for target 0)."""
    if target < 0:
        raise ValueError("target must be >= 0")
    if target == 0:
        return math.inf
    return DIFF1_TARGET / target


def difficulty_to_target(difficulty: float | Fraction) -> int:
    """Share target for a (possibly fractional) difficulty: floor(diff1 / difficulty), computed on
    the exact rational value of the float, clamped to 2**256-1 for difficulties below
    diff1 / 2**256 (about 2.3e-10)."""
    if isinstance(difficulty, float) and not math.isfinite(difficulty):
        raise ValueError(f"difficulty must be finite, got {difficulty}")
    exact = Fraction(difficulty)
    if exact <= 0:
        raise ValueError(f"difficulty must be > 0, got {difficulty}")
    target = (DIFF1_TARGET * exact.denominator) // exact.numerator
    return min(target, MAX_TARGET)


def hash_difficulty(hash_: bytes) -> float:
    """Share difficulty achieved by a header hash (internal bytes): diff1 / hash_int."""
    return target_to_difficulty(hash_to_int(hash_))


def target_to_le32(target: int) -> bytes:
    """Target as 32 little-endian bytes (the form the share core compares against)."""
    # Same byte order as a hash in internal order, so the share core can compare them directly.
    return int_to_hash(target)


def meets_target(hash_: bytes, target: int) -> bool:
    """True iff the hash (internal bytes), read as a little-endian integer, is <= target."""
    return hash_to_int(hash_) <= target
