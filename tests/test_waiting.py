"""The waiting helpers: they return as soon as the condition holds and fail with what they saw."""

from __future__ import annotations

import asyncio

import pytest

from tests.waiting import reading, until


async def test_until_returns_once_the_condition_holds() -> None:
    box = {"n": 0}

    async def bump() -> None:
        for _ in range(3):
            await asyncio.sleep(0.01)
            box["n"] += 1

    task = asyncio.create_task(bump())
    await until(lambda: box["n"] == 3, 2.0, "three bumps")
    await task


async def test_until_fails_with_what_it_saw() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"the answer: not within 0.1 s; last seen: 41"):
        await until(lambda: False, 0.1, "the answer", seen=lambda: 41)


async def test_reading_returns_the_value_that_met_the_condition() -> None:
    values = iter(range(100))

    async def probe() -> int:
        return next(values)

    assert await reading(probe, lambda v: v >= 5, 2.0, "five") == 5
    with pytest.raises(pytest.fail.Exception, match="last seen: 'x'"):
        await reading(lambda: "x", lambda v: v == "y", 0.05, "a y")
