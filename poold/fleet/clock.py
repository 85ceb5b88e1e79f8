"""Time for the fleet controller and the ASIC emulator: one `Clock` protocol, real and virtual.

- `LoopClock` reads the running event loop's time, so under the stock loop it is real time and
  under `VirtualTimeLoop` it is virtual time — the same controller code serves both.
- `ScaledClock(speed)` runs simulated time `speed`× faster than real time (TCP integration tests:
  emulator settle delays and controller intervals shrink together, sockets stay real).
- `VirtualTimeLoop` is an asyncio event loop whose clock jumps to the next timer whenever no
  I/O is ready, so hours of control loop over thousands of in-process miners run in seconds
  (property tests and the benchmark). Timers, `asyncio.sleep`, `asyncio.timeout` all follow it.
  Real sockets still work (they are polled without blocking), but a reply in flight does not
  hold time back, so use it for in-process simulation only.
"""

# ruff: noqa: RUF002  (math notation in docstrings is intended)


from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Mapping
from typing import Any, Protocol


class Clock(Protocol):
    """Seconds. `now` is monotonic (intervals, deadlines); `wall` is Unix time (days, ts)."""

    def now(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running loop's clock (real under asyncio's loop, virtual under VirtualTimeLoop)."""

    def __init__(self, wall_at_zero: float | None = None) -> None:
        self._wall_offset = wall_at_zero

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        if self._wall_offset is None:
            return time.time()
        return self._wall_offset + self.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time running `speed`× real time, starting at 0 when created."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._t0 = time.monotonic()
        self._wall0 = time.time()

    def now(self) -> float:
        return (time.monotonic() - self._t0) * self.speed

    def wall(self) -> float:
        return self._wall0 + self.now()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class _VirtualSelector(selectors.BaseSelector):
    """Polls the real selector without blocking; when nothing is ready, advances the loop's
    virtual time by the timeout asyncio asked to wait (the time to its next timer)."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._real = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing scheduled at all: only real I/O can wake us.
            return self._real.select(0.05)
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (starts at 0, jumps to the next timer when idle)."""

    def __init__(self) -> None:
        self._vtime = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._vtime

    def advance(self, seconds: float) -> None:
        self._vtime += max(0.0, seconds)


def run_virtual(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh VirtualTimeLoop (tests, benchmark)."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
