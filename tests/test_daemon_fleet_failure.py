"""A failing fleet controller does not take the pool down: the miners get the safe cap, /readyz
says the fleet is not ready, and the daemon's task ends normally (nothing propagates to the
TaskGroup that also runs the Stratum server). /readyz names every node the fleet cannot show
under its cap."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from poold.api_backend import DaemonBackend
from poold.daemon import _run_fleet


class Fleet:
    def __init__(self, over: list[str] | None = None) -> None:
        self.stopped_with: float | None = None
        self.over = over or []

    async def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped_with = timeout_s

    def unverified(self) -> list[str]:
        return self.over


class FailingFleet(Fleet):
    async def run(self, **kw: Any) -> None:
        raise RuntimeError("driver bug")


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


def test_readyz_names_every_node_not_shown_under_its_cap() -> None:
    backend = DaemonBackend(pool(), None, Fleet(["rack7", "site"]))  # type: ignore[arg-type]
    checks = backend.readiness()
    assert checks["fleet"] is True
    assert checks["fleet_under_cap:rack7"] is False
    assert checks["fleet_under_cap:site"] is False
    assert not all(checks.values())
