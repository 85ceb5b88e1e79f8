"""Wait on a condition with a deadline, never a fixed sleep before an assert.

`until(cond, timeout_s, what)` polls `cond` (a plain or async callable) until it is true and fails
the test, naming `what` and the last value seen (`seen`, or what `cond` returned), when the
deadline passes. `reading(probe, ok, timeout_s, what)` polls `probe` until `ok(value)` and returns
that value, so the assertions that follow run on a reading that met the condition. The deadline is
on the running loop's clock, so the helpers work under real and virtual time alike.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")

POLL_S = 0.02


async def _value(probe: Callable[[], T | Awaitable[T]]) -> T:
    value = probe()
    if inspect.isawaitable(value):
        return await value
    return value


async def reading(probe: Callable[[], T | Awaitable[T]], ok: Callable[[T], bool],
                  timeout_s: float, what: str, *, poll_s: float = POLL_S) -> T:
    """The first value of `probe()` for which `ok(value)` holds; fails with the last value
    seen if none does within `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await _value(probe)
        if ok(value):
            return value
        if loop.time() >= deadline:
            pytest.fail(f"{what}: not within {timeout_s:g} s; last seen: {value!r}")
        await asyncio.sleep(poll_s)


async def until(cond: Callable[[], object], timeout_s: float, what: str, *,
                seen: Callable[[], object] | None = None, poll_s: float = POLL_S) -> None:
    """Wait until `cond()` (awaited if it returns an awaitable) is truthy; on timeout fail with
    `what` and `seen()` (default: the last value of `cond()`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await _value(cond)
        if value:
            return
        if loop.time() >= deadline:
            shown = seen() if seen is not None else value
            pytest.fail(f"{what}: not within {timeout_s:g} s; last seen: {shown!r}")
        await asyncio.sleep(poll_s)
