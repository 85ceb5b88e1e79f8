"""Which miners the fleet controller curtailed on purpose, for every `--processes` worker.

Worker 0 runs the controller, but a curtailed miner's Stratum session may be on any worker, and
that worker must know: vardiff keeps a sleeping miner's difficulty (its silence is not a lower
hashrate) and the idle timeout does not drop it. Worker 0 writes the set of Stratum worker names
to a JSON file in the instance's state directory whenever it changes (a temporary file renamed
over the old one: a reader never sees half a file); the other workers read it every sweep (a
few hundred bytes; modification times can be too coarse to show two writes in one second).
File I/O runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

FILE_NAME = "fleet-curtailed.json"


class Sessions(Protocol):
    """The Stratum server as far as curtailment goes: its live sessions."""

    @property
    def connections(self) -> Any: ...


def mark_curtailed(server: Sessions, workers: Collection[str], now: float) -> int:
    """Flag the sessions of curtailed miners (vardiff keeps their difficulty) and count them as
    active (no idle drop while asleep on purpose). Returns how many are flagged."""
    n = 0
    for conn in list(server.connections):
        sw = getattr(conn, "work", None)
        if sw is None:
            continue
        on = bool(workers) and conn.worker in workers
        if on and not sw.curtailed:
            # Shares from before the curtailment say nothing about the rate now.
            sw.vd_shares = 0
            sw.vd_since = now
        sw.curtailed = on
        if on:
            conn.last_activity = now
            n += 1
    return n


def write_curtailed(path: Path, workers: Collection[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"workers": sorted(workers)}))
    os.replace(tmp, path)


def read_curtailed(path: Path) -> frozenset[str] | None:
    """The worker names, or None if there is no file yet."""
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    workers = body.get("workers") if isinstance(body, dict) else None
    if not isinstance(workers, list) or not all(isinstance(w, str) for w in workers):
        raise ValueError(f"{path}: not a curtailed-miners file")
    return frozenset(workers)


class CurtailedPublisher:
    """Worker 0: writes the set when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: frozenset[str] | None = None

    async def publish(self, workers: Collection[str]) -> None:
        current = frozenset(workers)
        if current == self._last:
            return
        try:
            await asyncio.to_thread(write_curtailed, self.path, current)
        except OSError as exc:
            log.error("fleet: cannot write %s for the other workers: %s", self.path, exc)
            return
        self._last = current


class CurtailedFollower:
    """Workers 1..N-1: marks their own sessions from worker 0's file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.workers: frozenset[str] = frozenset()
        self._error: str | None = None

    async def refresh(self) -> None:
        try:
            got = await asyncio.to_thread(read_curtailed, self.path)
        except (OSError, ValueError) as exc:  # ValueError: JSON or shape
            if str(exc) != self._error:  # once, not every sweep
                log.warning("fleet: cannot read %s (keeping the last set): %s", self.path, exc)
                self._error = str(exc)
            return
        self._error = None
        if got is not None:
            self.workers = got

    async def run(self, server: Sessions, clock: Callable[[], float],
                  interval_s: float = 2.0) -> None:
        last = 0
        while True:
            await self.refresh()
            n = mark_curtailed(server, self.workers, clock())
            if n != last:
                log.info("fleet: %d Stratum sessions of miners curtailed on purpose "
                         "(from worker 0)", n)
                last = n
            await asyncio.sleep(interval_s)
