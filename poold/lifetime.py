"""Who owns the long-lived tasks: `Lifetime`, the daemon's one TaskGroup with an order.

Every component with loops (NodeSet, Ledger, FleetRuntime, ...) exposes `async def run()`:
it runs its loops in its own inner TaskGroup until cancelled and does its orderly close in
`finally`. `poold.daemon.serve` starts each one in one `Lifetime`, in dependency order, and
leaves it in the reverse order: each component is cancelled and awaited (its close done)
before the one it depends on is cancelled, like an `AsyncExitStack` whose entries are tasks.
If a component fails, the TaskGroup cancels the others at once (each still runs its close)
and `serve` sees the failure. See docs/DESIGN.md, "Processes and tasks".

`start_in_background` / `stop_background` are the same `run()` driven from a test or a
benchmark that has no Lifetime: one code path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)

class Lifetime:
    """An asyncio.TaskGroup whose members are stopped one by one, last started first.

    `start(coro, name)` starts a member task; `on_close(fn)` pushes an async close call onto
    the same stack (for parts that are started and stopped but own no task, e.g. a listening
    socket). `close()` (also on leaving the `async with` normally) unwinds the stack."""

    def __init__(self) -> None:
        self._tg = asyncio.TaskGroup()
        self._stack: list[asyncio.Task[Any] | Callable[[], Awaitable[Any]]] = []

    async def __aenter__(self) -> Lifetime:
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if et is None:
            try:
                await self.close()
            except BaseException as e:  # handed to the TaskGroup, which raises it
                et, exc, tb = type(e), e, e.__traceback__
        try:
            # On an error path the TaskGroup cancels the member tasks that are left at once.
            await self._tg.__aexit__(et, exc, tb)
        finally:
            while self._stack:  # then the close calls not made yet, last pushed first
                entry = self._stack.pop()
                if not isinstance(entry, asyncio.Task):
                    try:
                        await entry()
                    except Exception:
                        log.exception("closing %r failed", entry)

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = self._tg.create_task(coro, name=name)
        self._stack.append(task)
        return task

    def on_close(self, close: Callable[[], Awaitable[Any]]) -> None:
        self._stack.append(close)

    @property
    def names(self) -> list[str]:
        """The member tasks still to stop, in start order (tests, logs)."""
        return [e.get_name() for e in self._stack if isinstance(e, asyncio.Task)]

    async def close(self) -> None:
        """Stop everything, last started first; each member's close completes before the next
        member is cancelled. A member that failed is reported by the TaskGroup, not here."""
        while self._stack:
            entry = self._stack.pop()
            if isinstance(entry, asyncio.Task):
                entry.cancel()
                await asyncio.wait((entry,))
                log.debug("stopped %s", entry.get_name())
            else:
                await entry()
                log.debug("closed %s", getattr(entry, "__qualname__", entry))


async def start_in_background(run: Coroutine[Any, Any, None], started: asyncio.Event,
                              name: str) -> asyncio.Task[None]:
    """Run `run` in a task until `started` is set; raise what `run` raised if it ends first."""
    task = asyncio.create_task(run, name=name)
    ready = asyncio.ensure_future(started.wait())
    try:
        await asyncio.wait((task, ready), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled while starting: take the component down with us
        task.cancel()
        await asyncio.wait((task,))
        raise
    finally:
        ready.cancel()
    if task.done():
        task.result()  # raises the failure of the start
        raise RuntimeError(f"{name} ended before it started")
    return task


async def stop_background(task: asyncio.Task[None] | None) -> None:
    """Cancel a task of `start_in_background` and wait for its close; its failure is raised."""
    if task is None:
        return
    task.cancel()
    await asyncio.wait((task,))
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
