"""`poold run` (one process) under a systemd notify socket: READY once serving, WATCHDOG pings
from the event loop at least twice per WatchdogSec, STOPPING on SIGTERM, exit within 10 s."""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from pathlib import Path
from typing import Any

from tests.integration.test_multiprocess import _until, start_poold


async def test_ready_watchdog_and_stopping(devnet: Any, tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    got: list[tuple[float, str]] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(notify.fileno(), lambda: got.append((time.monotonic(),
                                                         notify.recv(4096).decode())))

    def times(field: str) -> list[float]:
        return [t for t, msg in got if field in msg.split("\n")]

    p = await start_poold(tmp_path / "sd", devnet, env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"})
    try:
        await _until(lambda: bool(times("READY=1")), 10, "READY=1")
        assert "poold running" in p.text()  # READY only once the Stratum port is listening
        await _until(lambda: len(times("WATCHDOG=1")) >= 3, 10, "three watchdog pings")
        pings = times("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 2.0, f"watchdog pings {gaps} would miss a 2 s WatchdogSec"
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(p.proc.wait(), 10)
        assert code == 0, p.tail()
        assert time.monotonic() - t0 < 10
        await _until(lambda: bool(times("STOPPING=1")), 2, "STOPPING=1")
    finally:
        loop.remove_reader(notify.fileno())
        notify.close()
        if p.proc.returncode is None:
            await p.stop()
