"""Whether the ledger store takes writes right now, to within about two seconds (/readyz,
`poold_ledger_writable`), and store calls bounded in time whatever the driver does on cancel.

Every answered write or probe marks the store healthy; every failed one unhealthy, with the
reason. A store that has not answered for PROBE_INTERVAL_S is probed with a cheap read that
must answer within PROBE_TIMEOUT_S, so a hung or vanished store is seen within ~1.5 s on a busy
process and on an idle one alike.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from poold.ledger.sharebuffer import reason_of
from poold.ledger.store import LedgerStore, StoreUnavailable

log = logging.getLogger("poold.ledger")
T = TypeVar("T")

PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 1.0
_NEVER_OPENED = "not opened yet"
_PROBE_TASK = "ledger-probe-call"


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Done callback: an abandoned call's outcome is seen (logged at debug), never left as
    'exception was never retrieved'."""
    if not fut.cancelled():
        exc = fut.exception()
        if exc is not None:
            log.debug("ledger: abandoned store call ended with %s", reason_of(exc))


class StoreHealth:
    """Health of one store, as its callers and the probe saw it."""

    def __init__(self, store: LedgerStore, label: str, on_back: Callable[[], None]) -> None:
        self.store = store
        self.label = label  # the store URL without its password
        self._on_back = on_back
        self.healthy = False
        self.reason = _NEVER_OPENED
        self.last_ok = 0.0  # monotonic time the store last answered
        self.abandoned: set[asyncio.Future[Any]] = set()

    def ok(self) -> None:
        """The store just answered a write or a probe."""
        self.last_ok = time.monotonic()
        if not self.healthy:
            if self.reason != _NEVER_OPENED:
                log.warning("ledger store %s writable again", self.label)
            self.healthy = True
            self._on_back()

    def fail(self, reason: str) -> None:
        if self.healthy:
            log.warning("ledger store %s unwritable: %s", self.label, reason)
        self.healthy = False
        self.reason = reason

    async def bounded(self, work: Awaitable[T], limit_s: float | None, name: str) -> T:
        """`work`, but no longer than `limit_s` (None: no limit; a cancel still does not wait
        for it): past it the work is cancelled and left to end
        on its own (a driver may take long to honour a cancel: asyncio.timeout would wait for
        it), and TimeoutError is raised."""
        task = asyncio.ensure_future(work)
        if isinstance(task, asyncio.Task):
            task.set_name(name)
        try:
            done, _ = await asyncio.wait((task,), timeout=limit_s)
        except asyncio.CancelledError:
            task.cancel()
            self._abandon(task)
            raise
        if not done:
            task.cancel()
            self._abandon(task)
            raise TimeoutError(f"{name}: no answer within {limit_s:g} s")
        return task.result()

    def _abandon(self, task: asyncio.Future[Any]) -> None:
        self.abandoned.add(task)
        task.add_done_callback(self.abandoned.discard)
        task.add_done_callback(retrieve)

    async def probe(self) -> bool:
        """A cheap read: does the store answer within PROBE_TIMEOUT_S?"""
        if any(isinstance(t, asyncio.Task) and t.get_name() == _PROBE_TASK
               for t in self.abandoned):
            self.fail("an earlier probe is still unanswered")
            return False
        try:
            await self.bounded(self.store.schema_version(), PROBE_TIMEOUT_S, _PROBE_TASK)
        except (StoreUnavailable, TimeoutError) as exc:
            self.fail(reason_of(exc))
            return False
        self.ok()
        return True

    async def run(self, store_open: Callable[[], bool]) -> None:
        """Long-lived: probe a store that has not answered for PROBE_INTERVAL_S."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            if not store_open():
                self.fail("store not open")
            elif time.monotonic() - self.last_ok >= PROBE_INTERVAL_S:
                await self.probe()

    async def settle(self) -> None:
        """Shutdown: cancel abandoned calls and give them PROBE_TIMEOUT_S to end."""
        if self.abandoned:
            for t in self.abandoned:
                t.cancel()
            await asyncio.wait(self.abandoned, timeout=PROBE_TIMEOUT_S)
