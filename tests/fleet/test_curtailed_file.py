"""Worker 0's curtailed-miners file and the other workers' follower: written whole (renamed
over), read on change, sessions marked (and unmarked) from it; a missing or damaged file changes
nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from poold.fleet.curtailed_file import CurtailedFollower, CurtailedPublisher, mark_curtailed


def _conn(worker: str) -> Any:
    work = SimpleNamespace(curtailed=False, vd_shares=7, vd_since=0.0)
    return SimpleNamespace(worker=worker, work=work, last_activity=0.0)


async def test_publisher_and_follower_mark_sessions(tmp_path: Path) -> None:
    path = tmp_path / "fleet-curtailed.json"
    server = SimpleNamespace(connections=[_conn("a.m1"), _conn("a.m2"), _conn("a.m3")])
    follower = CurtailedFollower(path)
    await follower.refresh()  # no file yet: nothing curtailed
    assert mark_curtailed(server, follower.workers, 100.0) == 0

    pub = CurtailedPublisher(path)
    await pub.publish({"a.m1", "a.m3"})
    assert not path.with_name(path.name + ".tmp").exists()
    await follower.refresh()
    assert mark_curtailed(server, follower.workers, 100.0) == 2
    m1, m2, m3 = server.connections
    assert (m1.work.curtailed, m2.work.curtailed, m3.work.curtailed) == (True, False, True)
    # Newly curtailed: vardiff forgets the shares from before; the idle clock is kept fresh.
    assert (m1.work.vd_shares, m1.work.vd_since, m1.last_activity) == (0, 100.0, 100.0)
    assert m2.work.vd_shares == 7

    # Restored: the next write clears them (a damaged file in between changes nothing).
    path.write_text("{not json")
    await follower.refresh()
    assert follower.workers == {"a.m1", "a.m3"}
    await pub.publish(set())
    await follower.refresh()
    assert mark_curtailed(server, follower.workers, 101.0) == 0
    assert not any(c.work.curtailed for c in server.connections)
