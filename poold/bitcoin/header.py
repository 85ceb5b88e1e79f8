"""The 80-byte block header and BIP310 version rolling.

Serialization: LE32 version || prevhash (internal) || merkle root (internal) || LE32 time ||
LE32 nBits || LE32 nonce; the block hash is sha256d of those 80 bytes (internal order).
Version rolling (BIP310): version = (job_version & ~mask) | (version_bits & mask); bits outside
the negotiated mask are an error, never silently dropped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from poold.bitcoin.byteorder import hash_to_hex, hash_to_int
from poold.bitcoin.encoding import DecodeError, sha256d
from poold.errors import PooldError

HEADER_SIZE = 80
_HEADER = struct.Struct("<I32s32sIII")
_U32_MAX = 0xFFFFFFFF


class VersionBitsError(PooldError, ValueError):
    """Submitted version bits fall outside the negotiated BIP310 mask."""


@dataclass(frozen=True, slots=True)
class BlockHeader:
    version: int  # uint32 as on the Stratum wire (Core prints it as int32; same bits)
    prevhash: bytes  # internal byte order
    merkle_root: bytes  # internal byte order
    ntime: int
    bits: int
    nonce: int

    def __post_init__(self) -> None:
        if len(self.prevhash) != 32 or len(self.merkle_root) != 32:
            raise ValueError("prevhash and merkle_root must be 32 bytes")
        for name in ("version", "ntime", "bits", "nonce"):
            v = getattr(self, name)
            if not 0 <= v <= _U32_MAX:
                raise ValueError(f"header {name} out of u32 range: {v}")

    def serialize(self) -> bytes:
        return _HEADER.pack(
            self.version, self.prevhash, self.merkle_root, self.ntime, self.bits, self.nonce
        )

    @property
    def hash(self) -> bytes:
        """Block hash, internal byte order."""
        return sha256d(self.serialize())

    @property
    def hash_hex(self) -> str:
        return hash_to_hex(self.hash)

    @property
    def hash_int(self) -> int:
        return hash_to_int(self.hash)

    @property
    def prevhash_hex(self) -> str:
        return hash_to_hex(self.prevhash)

    @property
    def merkle_root_hex(self) -> str:
        return hash_to_hex(self.merkle_root)

    @classmethod
    def parse(cls, b: bytes) -> BlockHeader:
        if len(b) != HEADER_SIZE:
            raise DecodeError(f"block header must be {HEADER_SIZE} bytes, got {len(b)}")
        version, prev, root, ntime, bits, nonce = _HEADER.unpack(b)
        return cls(version, prev, root, ntime, bits, nonce)


def rolled_version(job_version: int, version_bits: int, mask: int) -> int:
    """BIP310 header version from the job's version and the miner's submitted bits."""
    for name, v in (("job_version", job_version), ("version_bits", version_bits), ("mask", mask)):
        if not 0 <= v <= _U32_MAX:
            raise VersionBitsError(f"{name} out of u32 range: {v}")
    if version_bits & ~mask & _U32_MAX:
        raise VersionBitsError(
            f"version bits {version_bits:08x} outside the negotiated mask {mask:08x}"
        )
    return (job_version & ~mask & _U32_MAX) | (version_bits & mask)
