"""The share relay between `--processes` workers, over a real unix datagram socket: sums per
worker arrive intact, big batches are split, garbage is counted and ignored, and a worker 0 that
is down (or restarted over its old socket file) costs only the sums sent meanwhile."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from poold.fleet.share_relay import (
    MAX_DATAGRAM,
    RelayedShares,
    ShareRelayReceiver,
    ShareRelaySender,
    decode,
    encode,
)
from poold.metrics import Metrics
from tests.waiting import until


def test_encode_decode_round_trip_and_split() -> None:
    sums = {f"bc1qaccount{i:04d}.rig{i}": (1e-6 * (i + 1), i % 7 + 1) for i in range(3000)}
    datagrams = encode(sums)
    assert len(datagrams) > 1 and all(len(d) <= MAX_DATAGRAM for d in datagrams)
    got = {s.worker: (s.difficulty, s.shares) for d in datagrams for s in decode(d)}
    assert got == sums


@pytest.mark.parametrize("bad", [b"", b"nope", b"[]", b'{"d": 5}', b'{"d": {"w": 1}}',
                                 b'{"d": {"w": [-1, 1]}}', b'{"d": {"w": ["1", 1]}}',
                                 b'{"d": {"w": [NaN, 1]}}', b'{"d": {"w": [Infinity, 1]}}',
                                 b'{"d": {"w": [1, 0]}}', b'{"d": {"w": [1, 1.5]}}',
                                 b'{"d": {"w": [1, true]}}', b'{"d": {"w": [1]}}'])
def test_decode_refuses_garbage(bad: bytes) -> None:
    with pytest.raises(ValueError):
        decode(bad)


class _Share:
    def __init__(self, worker: str, difficulty: float) -> None:
        self.worker, self.difficulty = worker, difficulty


async def test_sums_reach_worker_zero_and_survive_its_restart(tmp_path: Path) -> None:
    path = tmp_path / "fleet-shares.sock"
    got: list[RelayedShares] = []
    metrics = Metrics(CollectorRegistry())
    sender = ShareRelaySender(path, interval_s=0.05, dropped=metrics.share_relay_dropped)
    # Worker 0 not up yet: the sums are dropped and counted, nothing blocks or raises.
    sender.record_share(_Share("a.rig1", 0.5))
    sender.flush()
    assert sender.dropped == 1 and sender.sent == 0
    assert metrics.registry.get_sample_value("poold_share_relay_dropped_total") == 1.0

    receiver = ShareRelayReceiver(path, got.append)
    await receiver.start()
    task = asyncio.create_task(sender.run())
    try:
        for _ in range(3):
            sender.record_share(_Share("a.rig1", 0.25))
        sender.record_share(_Share("b.rig2", 2.0))
        sender.record_share(_Share("", 9.0))  # an unauthorized session's share: no worker
        await until(lambda: len(got) >= 4, 5.0, "four relayed sums", seen=lambda: got)
        # Each share counted (the controller's confidence depends on how many), with the mean
        # difficulty of its interval.
        assert sorted((s.worker, s.difficulty) for s in got) == [
            ("a.rig1", 0.25), ("a.rig1", 0.25), ("a.rig1", 0.25), ("b.rig2", 2.0)]

        # Worker 0 killed (its socket file stays), then started again over it.
        await receiver.stop()
        path.touch()
        receiver = ShareRelayReceiver(path, got.append)
        await receiver.start()
        got.clear()
        sender.record_share(_Share("a.rig1", 1.0))
        await until(lambda: got == [RelayedShares("a.rig1", 1.0)], 5.0, "a.rig1 relayed",
                    seen=lambda: got)

        # Garbage from anyone on the socket is counted and ignored.
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=str(path), family=socket.AF_UNIX)
        transport.sendto(b"not json")
        transport.sendto(json.dumps({"d": {"c.rig3": [4.0, 2]}}).encode())
        await until(lambda: got.count(RelayedShares("c.rig3", 2.0)) == 2, 5.0,
                    "c.rig3 relayed twice", seen=lambda: got)
        transport.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await receiver.stop()
    assert not path.exists()
