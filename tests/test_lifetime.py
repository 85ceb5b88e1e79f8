"""poold.lifetime.Lifetime: members stop last-started-first, each close finished before the next
member is cancelled; on a failure every member still closes and the failure is raised."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from poold.lifetime import Lifetime, start_in_background, stop_background


def member(name: str, events: list[str], started: asyncio.Event | None = None,
           fail: bool = False) -> Coroutine[Any, Any, None]:
    async def run() -> None:
        events.append(f"start {name}")
        if started is not None:
            started.set()
        try:
            if fail:
                raise RuntimeError(f"{name} failed")
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # a close that takes time: the next one must wait for it
            events.append(f"closed {name}")
    return run()


async def test_members_stop_last_started_first_each_close_done_before_the_next() -> None:
    events: list[str] = []

    async def close_api() -> None:
        events.append("closed api")

    async with Lifetime() as life:
        life.start(member("ledger", events), "ledger")
        life.start(member("nodes", events), "nodes")
        life.on_close(close_api)
        life.start(member("loop", events), "loop")
        await asyncio.sleep(0.01)
        assert life.names == ["ledger", "nodes", "loop"]
    assert events == ["start ledger", "start nodes", "start loop",
                      "closed loop", "closed api", "closed nodes", "closed ledger"]


async def test_a_failing_member_ends_the_lifetime_and_every_part_still_closes() -> None:
    events: list[str] = []

    async def close_api() -> None:
        events.append("closed api")

    with pytest.raises(BaseExceptionGroup) as caught:
        async with Lifetime() as life:
            life.start(member("ledger", events), "ledger")
            life.on_close(close_api)
            started = asyncio.Event()
            life.start(member("nodes", events, started, fail=True), "nodes")
            await asyncio.Event().wait()  # cancelled by the TaskGroup when nodes fails
    assert [str(e) for e in caught.value.exceptions] == ["nodes failed"]
    assert "closed ledger" in events and "closed nodes" in events
    assert events[-1] == "closed api"  # close calls run after the member tasks ended


async def test_start_in_background_raises_what_run_raised_and_stop_waits_for_the_close() -> None:
    events: list[str] = []
    with pytest.raises(RuntimeError, match="nodes failed"):
        await start_in_background(member("nodes", events, fail=True),
                                  asyncio.Event(), "nodes")
    assert events == ["start nodes", "closed nodes"]
    started = asyncio.Event()
    task = await start_in_background(member("ledger", events, started),
                                     started, "ledger")
    await stop_background(task)
    assert events[-1] == "closed ledger" and task.done()
