"""The ledger's local write-ahead files under the state directory: the block journal and the
share spill. Both are append-only, fsynced JSON lines; this module owns their line formats, the
fsynced appends, the index of what is still pending, and retiring records once the store has
them. What a record means for the store is poold.ledger.blocks' business (`BlockRecorder.replay`).

Block journal (`ledger-journal-<instance>.jsonl`): every found block is appended and fsynced
*before* it is submitted to the nodes, and retired once the store committed it; a node's submit
result the store did not take goes here too. A record is pending until a `retire` line names its
key; a retire line is not fsynced (losing one only repeats an idempotent replay). When nothing is
pending the file is removed. Lines that cannot be read are copied to `<name>.unreadable` with a
loud log, never dropped in silence.

Share spill (`ledger-spill-<instance>.jsonl`): accepted shares the store has not committed
within the in-memory window, in numbered batches; a batch is retired by an fsynced `done` line
once committed. Each batch also carries its random id (given when the flusher formed it, or
when it was spilled), stored with its commit (schema v6): a commit that landed unanswered, or a
crash after the commit and before the `done` line, leaves the batch pending, and the store
recognises the id at the replay instead of paying the batch twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from poold.ledger.records import AcceptedShare, FoundBlock, SubmitResult

log = logging.getLogger("poold.ledger")


def spill_path(journal_path: Path) -> Path:
    """The share spill file beside a block journal (same directory, same instance)."""
    return journal_path.with_name(journal_path.name.replace("ledger-journal", "ledger-spill", 1))


def record_key(rec: dict[str, Any]) -> str:
    """The identity of a journal record (a retire line names it). Records written before keys
    existed get one derived from their content."""
    key = rec.get("key")
    if isinstance(key, str):
        return key
    if rec.get("kind") == "block":
        return f"block:{rec['block']['hash_hex']}"
    if rec.get("kind") == "submit":
        return f"submit:{rec['block_hash_hex']}:{rec['node']}:{rec['time']}"
    return f"other:{json.dumps(rec, sort_keys=True)}"


class Journal:
    """The block journal; appends, retires and replays are serialized by one lock."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self._clock = clock
        self._lock = asyncio.Lock()  # file operations
        self._replay_lock = asyncio.Lock()
        # key -> (record, time appended); insertion order = file order (a block before its
        # submit results).
        self._pending: dict[str, tuple[dict[str, Any], float]] = {}
        self._loaded = False

    @property
    def pending(self) -> int:
        return len(self._pending)

    def pending_keys(self) -> list[str]:
        return list(self._pending)

    def oldest_age(self) -> float:
        """Seconds since the oldest pending record was appended (0 when none)."""
        if not self._pending:
            return 0.0
        return max(0.0, self._clock() - min(t for _r, t in self._pending.values()))

    def is_pending(self, key: str) -> bool:
        return key in self._pending

    async def load(self) -> int:
        """Read the file into the pending index (once; at start). Returns the pending count."""
        async with self._lock:
            if self._loaded:
                return len(self._pending)
            raw = await asyncio.to_thread(_read_or_empty, self.path)
            bad: list[bytes] = []
            for lineno, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict):
                        raise ValueError("not an object")
                    if rec.get("kind") == "retire":
                        self._pending.pop(str(rec["key"]), None)
                        continue
                    key = record_key(rec)
                except (KeyError, TypeError, ValueError) as exc:
                    # A torn last line (a crash during a write that was never acknowledged),
                    # or a damaged file: kept aside for review, loudly.
                    log.error("ledger journal %s line %d unreadable (%s); copied to %s",
                              self.path, lineno, exc, self._unreadable_path)
                    bad.append(line)
                    continue
                appended = rec.get("recorded_at", rec.get("time"))
                self._pending[key] = (rec, float(appended) if appended else self._clock())
            if bad:
                await asyncio.to_thread(_append_fsync, self._unreadable_path,
                                        b"".join(b + b"\n" for b in bad))
            self._loaded = True
            if not self._pending and raw:
                await asyncio.to_thread(_unlink, self.path)
            return len(self._pending)

    @property
    def _unreadable_path(self) -> Path:
        return self.path.with_name(self.path.name + ".unreadable")

    async def append(self, record: dict[str, Any]) -> str:
        """Append one record as a JSON line; returns its key once it is fsynced."""
        key = record_key(record)
        record = {**record, "key": key}
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        async with self._lock:
            await asyncio.to_thread(_append_fsync, self.path, line)
            self._pending[key] = (record, self._clock())
        return key

    async def retire(self, key: str) -> None:
        """The store has the record `key`: it is no longer pending (the file goes when empty)."""
        async with self._lock:
            await self._retire_locked(key)

    async def _retire_locked(self, key: str) -> None:
        if self._pending.pop(key, None) is None:
            return
        if self._pending:
            line = json.dumps({"kind": "retire", "key": key}, separators=(",", ":")) + "\n"
            await asyncio.to_thread(_append, self.path, line.encode())
        else:
            await asyncio.to_thread(_unlink, self.path)

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[bool]],
                     skip: Collection[str] = ()) -> int:
        """Pass every pending record (but those in `skip`: being written right now) to `apply`
        in file order and retire it unless `apply` returns False (not yet); returns the
        records applied. `apply` must be idempotent (a crash before the retire replays it
        again). An exception other than a record this version cannot read ends the pass (the
        rest stays pending)."""
        await self.load()
        applied = 0
        # One replay at a time, but appends are never held up by one: a found block must reach
        # the journal (and then the nodes) while a replay waits on a slow store.
        async with self._replay_lock:
            for key, (rec, _t) in list(self._pending.items()):
                if key in skip or key not in self._pending:
                    continue
                try:
                    done = await apply(rec)
                except (KeyError, TypeError, ValueError) as exc:
                    log.error("ledger journal %s: record %s unreadable (%s: %s); copied to %s",
                              self.path, key, type(exc).__name__, exc, self._unreadable_path)
                    line = json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n"
                    await asyncio.to_thread(_append_fsync, self._unreadable_path, line.encode())
                    await self.retire(key)
                    continue
                if done:
                    await self.retire(key)
                    applied += 1
        if applied:
            log.warning("ledger journal: %d records replayed into the store (%d pending)",
                        applied, len(self._pending))
        return applied


def new_batch_id() -> str:
    """A share batch's id (schema v6): random, so unique across instances and restarts."""
    return uuid.uuid4().hex


class SpilledBatch(NamedTuple):
    """A pending batch of the share spill."""

    seq: int
    shares: list[AcceptedShare]
    link_hex: str | None  # the link of a commit of it that went unanswered
    batch_id: str | None  # stable and unique: its commit stores it (None: spilled before v6)


class ShareSpill:
    """The share spill file: numbered batches of accepted shares, retired once committed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        # seq -> (offset, length, shares, time of the first share), ascending seq
        self._batches: dict[int, tuple[int, int, int, float]] = {}
        self._next = 1
        self._loaded = False
        self.pending_shares = 0

    @property
    def pending_batches(self) -> int:
        return len(self._batches)

    @property
    def oldest_seq(self) -> int | None:
        return next(iter(self._batches), None)

    @property
    def oldest_time(self) -> float | None:
        """Accept time of the first share of the oldest pending batch."""
        first = next(iter(self._batches.values()), None)
        return None if first is None else first[3]

    async def load(self) -> int:
        """Index the file (once, at start); returns the shares pending."""
        async with self._lock:
            if not self._loaded:
                batches, nxt = await asyncio.to_thread(_index_spill, self.path)
                batches.update(self._batches)  # appended before the load (none in practice)
                self._batches = dict(sorted(batches.items()))
                self._next = max(self._next, nxt)
                self.pending_shares = sum(e[2] for e in self._batches.values())
                self._loaded = True
                if not self._batches:
                    await asyncio.to_thread(_unlink, self.path)
            return self.pending_shares

    async def append(self, shares: Sequence[AcceptedShare], link_hex: str | None = None,
                     batch_id: str | None = None) -> None:
        """Append a batch; returns once it is fsynced. `link_hex`: the chain link hash of a
        commit of this batch that went unanswered; `batch_id`: the id its commits carry
        (poold.ledger.sharebuffer; a new random one if None)."""
        if not shares:
            return
        async with self._lock:
            seq = self._next
            self._next += 1
            rows = [(s.instance_id, s.worker, s.account, s.difficulty, s.job_id, s.height,
                     s.time) for s in shares]
            offset, length = await asyncio.to_thread(_spill_append, self.path, seq, rows,
                                                     link_hex, batch_id or new_batch_id())
            self._batches[seq] = (offset, length, len(rows), shares[0].time)
            self.pending_shares += len(rows)

    async def oldest(self) -> SpilledBatch | None:
        """The oldest pending batch, or None."""
        async with self._lock:
            seq = self.oldest_seq
            if seq is None:
                return None
            offset, length, _n, _t = self._batches[seq]
            shares, link_hex, batch_id = await asyncio.to_thread(_read_batch, self.path, offset,
                                                                 length)
            return SpilledBatch(seq, shares, link_hex, batch_id)

    async def retire(self, seq: int) -> None:
        """Batch `seq` is committed: an fsynced `done` line (or the file goes, when empty)."""
        await self.discard(seq)

    async def discard(self, seq: int) -> int:
        """Retire batch `seq` (committed, or unreadable); returns its share count."""
        async with self._lock:
            entry = self._batches.pop(seq, None)
            if entry is None:
                return 0
            self.pending_shares -= entry[2]
            if self._batches:
                await asyncio.to_thread(_append_fsync, self.path, b'{"done":%d}\n' % seq)
            else:
                await asyncio.to_thread(_unlink, self.path)
            return entry[2]


def block_record(block: FoundBlock, network_difficulty: float, recorded_at: float,
                 split_deltas: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The journal record of a found block (written before it is submitted)."""
    return {"kind": "block", "block": block_to_json(block),
            "network_difficulty": network_difficulty, "recorded_at": recorded_at,
            "split_deltas": split_deltas}


def submit_record(sr: SubmitResult) -> dict[str, Any]:
    """The journal record of a node's submit result the store did not take."""
    return {"kind": "submit", "block_hash_hex": sr.block_hash_hex, "node": sr.node,
            "result": sr.result, "time": sr.time}


def submit_from_record(rec: dict[str, Any]) -> SubmitResult:
    return SubmitResult(str(rec["block_hash_hex"]), str(rec["node"]),
                        None if rec["result"] is None else str(rec["result"]),
                        float(rec["time"]))


def block_to_json(block: FoundBlock) -> dict[str, Any]:
    return {
        "height": block.height, "hash_hex": block.hash_hex, "prevhash_hex": block.prevhash_hex,
        "worker": block.worker, "account": block.account,
        "coinbase_txid_hex": block.coinbase_txid_hex,
        "coinbase_outputs": [[s.hex(), v] for s, v in block.coinbase_outputs],
        "reward": block.reward, "fees": block.fees, "block_hex": block.block_hex,
        "time": block.time, "instance_id": block.instance_id,
    }


def block_from_json(d: dict[str, Any]) -> FoundBlock:
    return FoundBlock(
        height=int(d["height"]), hash_hex=str(d["hash_hex"]), prevhash_hex=str(d["prevhash_hex"]),
        worker=str(d["worker"]), account=str(d["account"]),
        coinbase_txid_hex=str(d["coinbase_txid_hex"]),
        coinbase_outputs=tuple((bytes.fromhex(s), int(v)) for s, v in d["coinbase_outputs"]),
        reward=int(d["reward"]), fees=int(d["fees"]), block_hex=str(d["block_hex"]),
        time=float(d["time"]), instance_id=int(d["instance_id"]))


# -- file helpers (run on a worker thread, never on the event loop)

def _read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _append(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _append_fsync(path: Path, line: bytes) -> tuple[int, int]:
    """Append `line` and fsync it (and the directory when the file is new); returns (offset,
    length) of what was written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        offset = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return offset, len(line)


def _spill_append(path: Path, seq: int, rows: list[tuple[Any, ...]],
                  link_hex: str | None, batch_id: str) -> tuple[int, int]:
    rec: dict[str, Any] = {"seq": seq, "id": batch_id, "rows": rows}
    if link_hex is not None:
        rec["link"] = link_hex
    line = json.dumps(rec, separators=(",", ":")).encode() + b"\n"
    return _append_fsync(path, line)


def _read_batch(path: Path, offset: int,
                length: int) -> tuple[list[AcceptedShare], str | None, str | None]:
    fd = os.open(path, os.O_RDONLY)
    try:
        line = os.pread(fd, length, offset)
    finally:
        os.close(fd)
    rec = json.loads(line)
    link, batch_id = rec.get("link"), rec.get("id")
    return ([AcceptedShare(worker=str(w), account=str(a), difficulty=float(d), job_id=str(j),
                           height=int(h), time=float(t), instance_id=int(i))
             for i, w, a, d, j, h, t in rec["rows"]], None if link is None else str(link),
            None if batch_id is None else str(batch_id))


def _index_spill(path: Path) -> tuple[dict[int, tuple[int, int, int, float]], int]:
    """(pending batches, next seq) of a spill file; unreadable lines are logged and skipped
    (a torn last line was never acknowledged)."""
    raw = _read_or_empty(path)
    batches: dict[int, tuple[int, int, int, float]] = {}
    top = 0
    offset = 0
    for line in raw.splitlines(keepends=True):
        length = len(line)
        try:
            rec = json.loads(line)
            if "done" in rec:
                batches.pop(int(rec["done"]), None)
            else:
                seq = int(rec["seq"])
                rows = rec["rows"]
                batches[seq] = (offset, length, len(rows), float(rows[0][6]) if rows else 0.0)
                top = max(top, seq)
        except (KeyError, TypeError, ValueError) as exc:
            if line.strip():
                log.error("ledger share spill %s at byte %d unreadable (%s); skipped",
                          path, offset, exc)
        offset += length
    return batches, top + 1


def adopt_spill(src: Path, target: Path) -> int:
    """Move the pending batches of the share spill `src` into `target` (renumbered after the
    target's own: the two files number their batches independently), fsynced, then remove
    `src`. Blocking: for start-up, before any ledger runs. Returns the shares moved."""
    pending, _next = _index_spill(src)
    _tb, start = _index_spill(target)
    moved = 0
    raw = _read_or_empty(src)
    for k, seq in enumerate(sorted(pending)):
        offset, length, n, _t = pending[seq]
        rec = json.loads(raw[offset:offset + length])
        rec["seq"] = start + k
        _append_fsync(target, json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        moved += n
    _unlink(src)
    return moved
