"""Extranonce1 allocation: an instance prefix plus a per-instance counter, with session resume.

extranonce1 = instance_id (prefix_bytes, big-endian) ‖ counter (the remaining bytes), so several
poold instances behind one ledger never hand out the same coinbase space (DESIGN.md). The session
id given to miners in the `mining.subscribe` result is the extranonce1 hex, as in ckpool; a miner
that reconnects with it within `resume_window_s` (600 s, ckpool's figure; docs/STRATUM.md §3)
gets the same extranonce1 back, unless another live session holds it.

Worker processes (`poold run --processes N`, or the `poold@.service` template unit; see
poold.supervisor) split their instance's counter space by a fixed-width worker field, so that no
two processes of one instance can hand out the same extranonce1, whatever N each was told:

    one process:       instance_id (8 bits) ‖ counter (24 bits)               16,777,216 sessions
    worker w (0..63):  instance_id (8 bits) ‖ w (WORKER_BITS = 6) ‖ counter (18 bits)
                                                                  262,144 sessions per worker

(for the default size 4 and prefix_bytes 1). Distinct instance_id -> distinct first byte;
same instance, distinct w -> distinct next 6 bits; same process -> the counter, which skips every
value in use or resumable. An instance runs either as one plain process or as workers, never both
at once (the plain layout overlaps every worker's): that is the same rule as "every instance on
one ledger has its own instance_id".
"""

from __future__ import annotations

from collections import OrderedDict

from poold.errors import PooldError

RESUME_WINDOW_S = 600.0
# Width of the worker-index field of a worker process's extranonce1 (module docstring).
WORKER_BITS = 6
MAX_WORKERS = 1 << WORKER_BITS


class ExtranonceExhausted(PooldError, RuntimeError):
    """Every counter value is either in use or reserved for a resumable session."""


class ExtranonceAllocator:
    """Hands out unique extranonce1 values; not thread-safe (one event loop owns it)."""

    __slots__ = ("_base", "_counter", "_in_use", "_limit", "_prefix", "_released",
                 "resume_window_s", "size", "worker")

    def __init__(
        self,
        instance_id: int,
        *,
        size: int = 4,
        prefix_bytes: int = 1,
        resume_window_s: float = RESUME_WINDOW_S,
        worker: int | None = None,
    ) -> None:
        if not 1 <= prefix_bytes < size:
            raise ValueError("prefix_bytes must leave room for a counter")
        if not 0 <= instance_id < 256**prefix_bytes:
            raise ValueError(f"instance_id {instance_id} does not fit in {prefix_bytes} byte(s)")
        counter_bits = 8 * (size - prefix_bytes)
        if worker is not None:
            if not 0 <= worker < MAX_WORKERS:
                raise ValueError(f"worker index {worker} is outside 0..{MAX_WORKERS - 1}")
            counter_bits -= WORKER_BITS  # >= 2: a counter has at least one whole byte
        self.size = size
        self.worker = worker
        self.resume_window_s = resume_window_s
        self._prefix = instance_id.to_bytes(prefix_bytes, "big")
        self._limit = 1 << counter_bits
        self._base = (instance_id << (8 * (size - prefix_bytes))) | ((worker or 0) << counter_bits)
        self._counter = 0
        self._in_use: set[bytes] = set()
        # extranonce1 -> time released, oldest first (insertion order = release order).
        self._released: OrderedDict[bytes, float] = OrderedDict()

    @property
    def prefix(self) -> bytes:
        """The instance prefix (the first prefix_bytes of every extranonce1 handed out)."""
        return self._prefix

    @property
    def capacity(self) -> int:
        """How many distinct extranonce1 values this allocator can hand out."""
        return self._limit

    def __len__(self) -> int:
        return len(self._in_use)

    def allocate(self, now: float, resume: bytes | None = None) -> bytes:
        """A fresh extranonce1, or `resume` itself when it may be resumed."""
        self.expire(now)
        if resume is not None and self.can_resume(resume, now):
            del self._released[resume]
            self._in_use.add(resume)
            return resume
        for _ in range(self._limit):
            self._counter = (self._counter + 1) % self._limit
            en1 = (self._base | self._counter).to_bytes(self.size, "big")
            if en1 not in self._in_use and en1 not in self._released:
                self._in_use.add(en1)
                return en1
        raise ExtranonceExhausted(f"all {self._limit} extranonce1 values are taken")

    def can_resume(self, en1: bytes, now: float) -> bool:
        released = self._released.get(en1)
        return released is not None and now - released < self.resume_window_s

    def release(self, en1: bytes, now: float) -> None:
        """The session holding `en1` disconnected; keep it resumable for the window."""
        if en1 in self._in_use:
            self._in_use.discard(en1)
            self._released[en1] = now
            self._released.move_to_end(en1)

    def expire(self, now: float) -> None:
        released = self._released
        while released:
            en1, at = next(iter(released.items()))
            if now - at < self.resume_window_s:
                break
            del released[en1]

    @staticmethod
    def parse_session_id(session_id: object, size: int) -> bytes | None:
        """The extranonce1 a miner asks to resume, or None if the id is absent or malformed."""
        if not isinstance(session_id, str) or len(session_id) != 2 * size:
            return None
        try:
            return bytes.fromhex(session_id)
        except ValueError:
            return None
