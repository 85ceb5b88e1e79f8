"""The found-block journal: an append-only, fsynced JSON-lines file under the state directory.

The Ledger writes a found block (or a node's submit result) here when the store does not take it
within `block_write_timeout_s`, so `record_block` can return only once the block is durable. The
journal is replayed into the store at start and whenever the store comes back; what a record
means for the store is the Ledger's business (`Ledger._replay_one`), this module owns the file:
its line format, the fsynced append, and the replay pass that renames the file once applied.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from poold.ledger.records import FoundBlock, SubmitResult

log = logging.getLogger("poold.ledger")


class Journal:
    """One journal file; appends and replays are serialized by one lock."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self._clock = clock
        self._lock = asyncio.Lock()

    async def append(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line; returns once it is fsynced."""
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        async with self._lock:
            await asyncio.to_thread(_append_fsync, self.path, line)

    async def replay(self, apply: Callable[[dict[str, Any]], Awaitable[None]]) -> int:
        """Pass every record to `apply`, then rename the file `<name>.replayed-<ms>`; returns
        the records applied. `apply` must be idempotent: a crash before the rename replays the
        whole file again."""
        path = self.path
        async with self._lock:
            if not await asyncio.to_thread(path.exists):
                return 0
            raw = await asyncio.to_thread(path.read_bytes)
            applied = 0
            for lineno, line in enumerate(raw.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    # Only the last line can be torn (crash during the write that was then
                    # never acknowledged); anything else is a damaged file worth a loud log.
                    log.error("ledger journal %s line %d is not JSON; skipped", path, lineno)
                    continue
                try:
                    await apply(rec)
                except (KeyError, TypeError, ValueError) as exc:
                    # A record this version cannot read: kept in the renamed file for review.
                    log.error("ledger journal %s line %d unreadable (%s: %s); skipped",
                              path, lineno, type(exc).__name__, exc)
                    continue
                applied += 1
            done = path.with_name(f"{path.name}.replayed-{int(self._clock() * 1000)}")
            await asyncio.to_thread(os.replace, path, done)
            log.warning("ledger journal: %d records replayed into the store (%s)", applied, done)
            return applied


def block_record(block: FoundBlock, network_difficulty: float, recorded_at: float,
                 split_deltas: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The journal record of a found block the store did not take."""
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


def _append_fsync(path: Path, line: bytes) -> None:
    """Append one line and fsync it (and the directory when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
