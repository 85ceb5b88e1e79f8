"""The ledger's hash chain: canonical encodings, link hashes and the coinbase commitment.

Pure (hashlib, struct; no I/O). The format is specified in docs/AUDIT.md; in short:

- A chain is one writer's sequence of links: `shares:<instance_id>:<writer>` for the share
  batches one Ledger (one process) commits, `credits` for every set of credits written at once.
- A link covers the rows committed together (one flush batch of shares, or the credits of one
  block event) and carries the hash of the previous link of its chain:
  `hash = SHA-256(DOMAIN || chain || 0x00 || prev_hash || body)`, the first link's prev_hash
  being 32 zero bytes. `body` is the canonical encoding of the rows (`encode_share_rows`,
  `encode_credit_rows`): big-endian fixed-width numbers (IEEE 754 binary64 for difficulty and
  time, exactly as stored) column by column, then the text columns UTF-8, NUL-separated.
- Hashing a batch costs one pass over its columns in C (struct, str.join) and one SHA-256: the
  flusher hashes each batch at flush time, never on the share path.
- In split mode each coinbase carries the head (hash of the last link) of the finder's share
  chain as of its last flush, in an OP_RETURN output (`commitment_script`).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

DOMAIN = b"poold-ledger-chain-v1\x00"
GENESIS = bytes(32)
CREDITS_CHAIN = "credits"

# OP_RETURN <36 bytes: b"PLD" 0x01 || head hash>: a 38-byte script, a 47-byte output.
COMMITMENT_TAG = b"PLD\x01"
_OP_RETURN = 0x6A
COMMITMENT_OUTPUT_BYTES = 8 + 1 + 2 + len(COMMITMENT_TAG) + 32

# An AcceptedShare as the tuple of its stored columns (the order of schema.INSERT_SHARE).
ShareRowTuple = tuple[int, str, str, float, str, int, float]
# A credit as (block_hash_hex, account, amount, kind, time).
CreditRowTuple = tuple[str, str, int, str, float]
_SHARE_COLUMNS = attrgetter("instance_id", "worker", "account", "difficulty", "job_id",
                            "height", "time")


def share_chain(instance_id: int, writer: int) -> str:
    """The name of one writer's share chain (writer: the worker process index, 0 if one)."""
    return f"shares:{instance_id}:{writer}"


@dataclass(frozen=True, slots=True)
class Link:
    """One committed link: `seq` counts from 1 in its chain; `n` rows."""

    chain: str
    seq: int
    n: int
    prev_hash: bytes
    hash: bytes
    time: float
    t_first: float | None = None
    t_last: float | None = None

    @property
    def head(self) -> str:
        """The head as blocks store and export it: `<chain>:<seq>:<hash hex>`."""
        return f"{self.chain}:{self.seq}:{self.hash.hex()}"


def parse_head(head: str) -> tuple[str, int, bytes]:
    """(chain, seq, hash) of a `<chain>:<seq>:<hash hex>` head (seq `?`, returned as -1, when
    the recording process no longer knew the link's number); ValueError if malformed."""
    chain, _, rest = head.rpartition(":")
    chain, _, seq = chain.rpartition(":")
    digest = bytes.fromhex(rest)
    if not chain or len(digest) != 32:
        raise ValueError(f"not a chain head: {head!r}")
    return chain, -1 if seq == "?" else int(seq), digest


def _text(columns: Sequence[Sequence[str]], n: int) -> bytes:
    text = "\x01".join("\x00".join(c) for c in columns)
    if text.count("\x00") != len(columns) * max(n - 1, 0) or text.count("\x01") != len(
            columns) - 1:
        raise ValueError("ledger text fields must not contain NUL or 0x01")
    return text.encode()


def encode_share_rows(rows: Sequence[ShareRowTuple] | Sequence[Sequence[Any]]) -> bytes:
    """Canonical body of a share link: rows (instance_id, worker, account, difficulty, job_id,
    height, time) in commit order."""
    if not rows:
        return _body([], [], [], [], [], [], [])
    inst, workers, accounts, diffs, jobs, heights, times = zip(*rows, strict=True)
    return _body(inst, heights, diffs, times, workers, accounts, jobs)


def encode_shares(shares: Sequence[Any]) -> bytes:
    """`encode_share_rows` of AcceptedShares."""
    return _share_body(shares)[0]


def _share_body(shares: Sequence[Any]) -> tuple[bytes, float, float]:
    """The body of AcceptedShares, column by column (the flusher's hot path: about 0.3 us a
    share, a tenth of the cost of storing it; tests/bench/ledger.py), and their time range."""
    times = [s.time for s in shares]
    body = _body([s.instance_id for s in shares], [s.height for s in shares],
                 [s.difficulty for s in shares], times, [s.worker for s in shares],
                 [s.account for s in shares], [s.job_id for s in shares])
    return body, min(times), max(times)


def _body(inst: Sequence[int], heights: Sequence[int], diffs: Sequence[float],
          times: Sequence[float], workers: Sequence[str], accounts: Sequence[str],
          jobs: Sequence[str]) -> bytes:
    n = len(inst)
    ints = array("q", inst)
    ints.extend(heights)
    floats = array("d", diffs)
    floats.extend(times)
    if sys.byteorder == "little":  # the encoding is big-endian
        ints.byteswap()
        floats.byteswap()
    return (struct.pack(">Q", n) + ints.tobytes() + floats.tobytes()
            + _text((workers, accounts, jobs), n))


def encode_credit_rows(rows: Sequence[CreditRowTuple] | Sequence[Sequence[Any]]) -> bytes:
    """Canonical body of a credit link: rows (block_hash_hex, account, amount, kind, time)."""
    n = len(rows)
    if not n:
        return struct.pack(">Q", 0)
    blocks, accounts, amounts, kinds, times = zip(*rows, strict=True)
    return (struct.pack(f">Q{n}q{n}d", n, *amounts, *times)
            + _text((blocks, accounts, kinds), n))


def link_hash(chain: str, prev_hash: bytes, body: bytes) -> bytes:
    return hashlib.sha256(DOMAIN + chain.encode() + b"\x00" + prev_hash + body).digest()


def next_link(chain: str, prev: Link | None, body: bytes, n: int, time: float,
              t_first: float | None = None, t_last: float | None = None) -> Link:
    """The link after `prev` (None: the chain's first) covering `body` of `n` rows."""
    prev_hash = GENESIS if prev is None else prev.hash
    return Link(chain=chain, seq=1 if prev is None else prev.seq + 1, n=n, prev_hash=prev_hash,
                hash=link_hash(chain, prev_hash, body), time=time, t_first=t_first,
                t_last=t_last)


def share_link(chain: str, prev: Link | None, shares: Sequence[Any], time: float) -> Link:
    """The link of one batch of AcceptedShares (hashed at flush time)."""
    body, first, last = _share_body(shares)
    return next_link(chain, prev, body, len(shares), time, first, last)


# -- the coinbase commitment (split mode)


def commitment_script(head_hash: bytes) -> bytes:
    """OP_RETURN PUSH36(b"PLD\\x01" || head): a zero-value output, never spendable."""
    if len(head_hash) != 32:
        raise ValueError("a chain head is 32 bytes")
    payload = COMMITMENT_TAG + head_hash
    return bytes((_OP_RETURN, len(payload))) + payload


def parse_commitment(script: bytes) -> bytes | None:
    """The head hash committed by a coinbase output script, or None if it is not one."""
    if (len(script) == 2 + len(COMMITMENT_TAG) + 32 and script[0] == _OP_RETURN
            and script[1] == len(COMMITMENT_TAG) + 32 and script[2:6] == COMMITMENT_TAG):
        return bytes(script[6:])
    return None


def committed_head(outputs: Sequence[tuple[bytes, int]]) -> bytes | None:
    """The head committed by a coinbase's outputs, if one of them is a commitment."""
    for script, _value in outputs:
        head = parse_commitment(script)
        if head is not None:
            return head
    return None
