"""HashblockListener: sequence tracking (frames as Bitcoin Core sends them), a real socket."""

from __future__ import annotations

import asyncio
import struct

import pytest
import zmq
import zmq.asyncio

from poold.node.zmqsub import HashblockListener
from tests.node.fakenode import free_port


def frames(block_hash: bytes, seq: int, topic: bytes = b"hashblock") -> list[bytes]:
    return [topic, block_hash, struct.pack("<I", seq)]


def listener() -> tuple[HashblockListener, list[tuple[str, bool]]]:
    hints: list[tuple[str, bool]] = []
    return HashblockListener("n", "tcp://127.0.0.1:1", lambda h, g: hints.append((h, g))), hints


def test_sequence_gaps_are_flagged_and_wraparound_is_not() -> None:
    lst, hints = listener()
    h = bytes(range(32))
    for seq in (7, 8, 10, 0xFFFFFFFF, 0, 1):
        lst._handle(frames(h, seq))
    assert [g for _, g in hints] == [False, False, True, True, False, False]
    assert hints[0][0] == h.hex()  # display order on the wire = RPC hex
    assert lst.gaps == 2 and not lst.gap_pending


def test_malformed_and_foreign_messages_are_ignored() -> None:
    lst, hints = listener()
    lst._handle([b"hashblock", b"\x00" * 32])  # no sequence frame
    lst._handle(frames(b"\x00" * 31, 1))  # short hash
    lst._handle(frames(b"\x00" * 32, 2, topic=b"rawblock"))
    assert hints == [] and lst.messages == 0


def test_a_failing_handler_does_not_end_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    def boom(_h: str, _g: bool) -> None:
        raise RuntimeError("bug")

    lst = HashblockListener("n", "tcp://127.0.0.1:1", boom)
    lst._handle(frames(b"\x01" * 32, 1))
    lst._handle(frames(b"\x02" * 32, 2))
    assert lst.messages == 2 and "handler failed" in caplog.text


async def test_receives_from_a_real_publisher() -> None:
    port = free_port()
    ctx = zmq.asyncio.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{port}")
    got: list[tuple[str, bool]] = []
    arrived = asyncio.Event()

    def on_hint(h: str, gap: bool) -> None:
        got.append((h, gap))
        arrived.set()

    disconnected = asyncio.Event()
    lst = HashblockListener("n", f"tcp://127.0.0.1:{port}", on_hint,
                            on_disconnect=disconnected.set, context=ctx)
    task = asyncio.create_task(lst.run())
    try:
        async with asyncio.timeout(5):
            while not got:
                await pub.send_multipart(frames(b"\xab" * 32, 0))
                try:
                    await asyncio.wait_for(arrived.wait(), 0.05)
                except TimeoutError:
                    pass
            assert lst.connected
            pub.close(linger=0)
            await disconnected.wait()
        assert got[0] == ("ab" * 32, False) and not lst.connected
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ctx.term()
