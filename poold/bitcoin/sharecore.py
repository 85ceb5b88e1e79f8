"""The Stratum V1 share check: one coarse call per share, native (C) or pure Python, same contract.

Given a job (coinb1, coinb2, merkle branch, version, prevhash, nbits, network target) and a
`mining.submit` (extranonce2, ntime, nonce and BIP310 version bits as the hex strings the miner
sent), rebuild the coinbase, fold the merkle branch, build the 80-byte header, hash it with
SHA-256d and compare the hash, as a little-endian 256-bit integer, with the share target and the
network target (`hash <= target`, as Bitcoin Core's CheckProofOfWork). Wire formats: Stratum V1
mining.notify/mining.submit (docs/STRATUM.md §6, §8) and BIP310 version rolling:
`version = (job_version & ~mask) | (bits & mask)`, bits outside the mask are rejected.

Two implementations with one signature:

* `poold._sharecore` (Cython + C, `native/`): SHA-NI when CPUID reports it, portable C otherwise;
  the batch entry point hashes two shares at a time.
* `PureJobCore` / `PureSessionCore` below: hashlib, used when the extension is missing or
  `POOLD_PURE_SHARECORE=1`. It is also the reference the native core is tested against.

`CORE` names the one selected at import ("native-shani", "native-portable" or "pure");
`POOLD_SHARECORE_PORTABLE=1` makes the native core use its portable C path.

Errors: malformed miner input raises `ShareFormatError(field)` (a reply-level reject); malformed
pool-side arguments (a wrong-length prevhash, a target out of range) raise `ValueError`.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import struct
from collections.abc import Sequence
from hashlib import sha256
from types import ModuleType
from typing import TYPE_CHECKING, Final

from poold.errors import PooldError

__all__ = [
    "CORE",
    "MAX_EXTRANONCE2_SIZE",
    "JobCore",
    "PureJobCore",
    "PureSessionCore",
    "SessionCore",
    "ShareFormatError",
    "ShareResult",
    "Submit",
]

log = logging.getLogger("poold.sharecore")

#: (header hash in internal byte order, meets share target, meets network target)
ShareResult = tuple[bytes, bool, bool]
#: (extranonce2_hex, ntime_hex, nonce_hex, version_bits_hex or None), as sent by the miner
Submit = tuple[str, str, str, str | None]

#: Largest extranonce2 size accepted by both cores (Stratum pools use 2 to 16 bytes).
MAX_EXTRANONCE2_SIZE: Final = 32

_U32_MAX: Final = 0xFFFFFFFF
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]*")
_HEADER: Final = struct.Struct("<I32s32sIII")


class ShareFormatError(PooldError, ValueError):
    """A submit field is not valid hex of the right length (or version bits fall outside the
    negotiated mask). `field` is "extranonce2", "ntime", "nonce" or "version_bits"; `index` is
    the position in a `check_batch` call, None for `check`."""

    def __init__(self, field: str, index: int | None = None) -> None:
        self.field = field
        self.index = index
        where = "" if index is None else f" (submit {index} of the batch)"
        super().__init__(f"malformed {field}{where}")


def _u32(value: object, name: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= _U32_MAX:
        raise ValueError(f"{name} must be an int in 0..0xFFFFFFFF")
    return value


def _target_int(share_target_le32: object) -> int:
    if type(share_target_le32) is not bytes or len(share_target_le32) != 32:
        raise ValueError("share_target_le32 must be 32 bytes")
    return int.from_bytes(share_target_le32, "little")


def _hex_u32(text: object, field: str) -> int:
    """Eight hex digits, big-endian, as on the Stratum wire."""
    if not isinstance(text, str) or len(text) != 8 or not _HEX_RE.fullmatch(text):
        raise ShareFormatError(field)
    return int(text, 16)


def _sha256d(data: bytes) -> bytes:
    return sha256(sha256(data).digest()).digest()


class PureJobCore:
    """Per job, immutable. Same contract as the native `JobCore` (see the module docstring)."""

    __slots__ = ("_branch", "_nbits", "_network_target", "_prevhash", "_version",
                 "coinb1", "coinb2")

    def __init__(self, coinb1: bytes, coinb2: bytes, merkle_branch: Sequence[bytes],
                 version: int, prevhash: bytes, nbits: int, network_target: int) -> None:
        if type(coinb1) is not bytes or type(coinb2) is not bytes or type(prevhash) is not bytes:
            raise TypeError("coinb1, coinb2 and prevhash must be bytes")
        self._version = _u32(version, "version")
        self._nbits = _u32(nbits, "nbits")
        if len(prevhash) != 32:
            raise ValueError("prevhash must be 32 bytes")
        if not isinstance(network_target, int) or not 0 <= network_target < 1 << 256:
            raise ValueError("network_target must be an int in 0..2**256-1")
        branch = tuple(merkle_branch)
        for i, step in enumerate(branch):
            if type(step) is not bytes or len(step) != 32:
                raise ValueError(f"merkle_branch[{i}] must be 32 bytes")
        self.coinb1 = coinb1
        self.coinb2 = coinb2
        self._branch = branch
        self._prevhash = prevhash
        self._network_target = network_target

    @property
    def branch_length(self) -> int:
        return len(self._branch)

    def session(self, extranonce1: bytes, extranonce2_size: int) -> PureSessionCore:
        """The per-(job, session) core; caches SHA-256 over coinb1 + extranonce1."""
        return PureSessionCore(self, extranonce1, extranonce2_size)


class PureSessionCore:
    """Per (job, session). Same contract as the native `SessionCore`."""

    __slots__ = ("_job", "_prefix", "extranonce1", "extranonce2_size")

    def __init__(self, job: PureJobCore, extranonce1: bytes, extranonce2_size: int) -> None:
        if type(extranonce1) is not bytes:
            raise TypeError("extranonce1 must be bytes")
        if (not isinstance(extranonce2_size, int)
                or not 1 <= extranonce2_size <= MAX_EXTRANONCE2_SIZE):
            raise ValueError(f"extranonce2_size must be an int in 1..{MAX_EXTRANONCE2_SIZE}")
        self._job = job
        self.extranonce1 = extranonce1
        self.extranonce2_size = extranonce2_size
        # hashlib keeps the state after the full blocks; copy() resumes from it per share
        self._prefix = sha256(job.coinb1 + extranonce1)

    def _decode(self, extranonce2_hex: object, ntime_hex: object, nonce_hex: object,
                version_bits_hex: object, mask: int) -> tuple[bytes, int, int, int]:
        if (not isinstance(extranonce2_hex, str)
                or len(extranonce2_hex) != 2 * self.extranonce2_size
                or not _HEX_RE.fullmatch(extranonce2_hex)):
            raise ShareFormatError("extranonce2")
        extranonce2 = bytes.fromhex(extranonce2_hex)
        ntime = _hex_u32(ntime_hex, "ntime")
        nonce = _hex_u32(nonce_hex, "nonce")
        version = self._job._version
        if version_bits_hex is not None:
            bits = _hex_u32(version_bits_hex, "version_bits")
            if bits & ~mask:
                raise ShareFormatError("version_bits")
            version = (version & ~mask) | (bits & mask)
        return extranonce2, ntime, nonce, version

    def _hash(self, extranonce2: bytes, ntime: int, nonce: int, version: int) -> bytes:
        job = self._job
        h = self._prefix.copy()
        h.update(extranonce2)
        h.update(job.coinb2)
        root = sha256(h.digest()).digest()
        for step in job._branch:
            root = _sha256d(root + step)
        return _sha256d(_HEADER.pack(version, job._prevhash, root, ntime, job._nbits, nonce))

    def check(self, extranonce2_hex: str, ntime_hex: str, nonce_hex: str,
              version_bits_hex: str | None, version_mask: int,
              share_target_le32: bytes) -> ShareResult:
        """-> (header hash, internal byte order; meets share target; meets network target)."""
        mask = _u32(version_mask, "version_mask")
        target = _target_int(share_target_le32)
        fields = self._decode(extranonce2_hex, ntime_hex, nonce_hex, version_bits_hex, mask)
        hash_ = self._hash(*fields)
        value = int.from_bytes(hash_, "little")
        return hash_, value <= target, value <= self._job._network_target

    def check_batch(self, submits: Sequence[Submit], version_mask: int,
                    share_target_le32: bytes) -> list[ShareResult]:
        """check() for many submits. A malformed one raises ShareFormatError with .index set,
        before anything is hashed."""
        mask = _u32(version_mask, "version_mask")
        target = _target_int(share_target_le32)
        network = self._job._network_target
        decoded = []
        for i, (extranonce2_hex, ntime_hex, nonce_hex, version_bits_hex) in enumerate(submits):
            try:
                decoded.append(self._decode(extranonce2_hex, ntime_hex, nonce_hex,
                                            version_bits_hex, mask))
            except ShareFormatError as exc:
                raise ShareFormatError(exc.field, i) from None
        results: list[ShareResult] = []
        for fields in decoded:
            hash_ = self._hash(*fields)
            value = int.from_bytes(hash_, "little")
            results.append((hash_, value <= target, value <= network))
        return results


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _load_native() -> tuple[ModuleType | None, str]:
    """The native module (bound to ShareFormatError), or None and why not."""
    if _env_flag("POOLD_PURE_SHARECORE"):
        return None, "POOLD_PURE_SHARECORE is set"
    try:
        _sharecore = importlib.import_module("poold._sharecore")
    except ImportError as exc:
        return None, f"native extension not available ({exc})"
    _sharecore.bind_error(ShareFormatError)
    if _env_flag("POOLD_SHARECORE_PORTABLE"):
        _sharecore.set_impl("portable")
    return _sharecore, ""


_native, _why_pure = _load_native()

CORE: str
if _native is not None:
    CORE = f"native-{_native.impl()}"
    log.info("share core: %s", CORE)
else:
    CORE = "pure"
    log.info("share core: pure Python (%s)", _why_pure)

if TYPE_CHECKING:
    # The native classes have exactly the pure ones' signatures; type against those.
    JobCore = PureJobCore
    SessionCore = PureSessionCore
elif _native is not None:
    JobCore = _native.JobCore
    SessionCore = _native.SessionCore
else:
    JobCore = PureJobCore
    SessionCore = PureSessionCore
