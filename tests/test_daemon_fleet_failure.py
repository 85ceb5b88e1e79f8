"""A failing fleet controller does not take the pool down: the miners get the safe cap, /readyz
says the fleet is not ready, and the daemon's task ends normally (nothing propagates to the
TaskGroup that also runs the Stratum server)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from poold.daemon import DaemonBackend, _run_fleet


class FailingFleet:
    def __init__(self) -> None:
        self.stopped_with: float | None = None

    async def run(self, **kw: Any) -> None:
        raise RuntimeError("driver bug")

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped_with = timeout_s


def pool() -> Any:
    """Just what DaemonBackend.readiness reads of the pool."""
    book = SimpleNamespace(template=object())
    server = SimpleNamespace(addresses=["127.0.0.1:3333"], closing=False,
                             ctx=SimpleNamespace(engine=SimpleNamespace(book=book)))
    return SimpleNamespace(server=server,
                           nodes=SimpleNamespace(latest=None, healthy=lambda: True),
                           planning=None)


async def test_controller_failure_is_contained(caplog: Any) -> None:
    fleet = FailingFleet()
    backend = DaemonBackend(pool(), None, fleet)  # type: ignore[arg-type]
    assert backend.readiness()["fleet"] is True
    await _run_fleet(fleet, backend)  # type: ignore[arg-type]
    assert fleet.stopped_with is not None  # the safe cap went out
    assert backend.readiness()["fleet"] is False
    assert any("fleet controller failed" in r.message and r.levelname == "CRITICAL"
               for r in caplog.records)
