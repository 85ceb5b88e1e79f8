"""HashblockListener: sequence tracking (frames as Bitcoin Core sends them), a real socket."""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable

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
        ctx.destroy(linger=0)  # term() would hang if a failure left `pub` open


class _RecordingContext(zmq.asyncio.Context):
    """A real context that remembers every instance, so a test can check they were closed."""

    made: list[zmq.asyncio.Context] = []

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _RecordingContext.made.append(self)


@pytest.fixture
def contexts(monkeypatch: pytest.MonkeyPatch) -> list[zmq.asyncio.Context]:
    _RecordingContext.made = []
    monkeypatch.setattr(zmq.asyncio, "Context", _RecordingContext)
    return _RecordingContext.made


def _setter(event: asyncio.Event) -> Callable[[str, bool], None]:
    return lambda _h, _g: event.set()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_run_owns_its_context_and_leaves_nothing_open(
    contexts: list[zmq.asyncio.Context],
) -> None:
    """Each run without a caller's context has a private one, destroyed when the run ends:
    nothing lives on in a process-wide context for a later event loop to trip over."""
    port = free_port()
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"tcp://127.0.0.1:{port}")
    try:
        baseline = _open_fds()
        for i in range(20):
            got = asyncio.Event()
            lst = HashblockListener("n", f"tcp://127.0.0.1:{port}", _setter(got))
            task = asyncio.create_task(lst.run())
            async with asyncio.timeout(5):
                while not got.is_set():
                    pub.send_multipart(frames(bytes([i]) * 32, i))
                    try:
                        await asyncio.wait_for(got.wait(), 0.02)
                    except TimeoutError:
                        pass
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert len(contexts) == 20 and all(c.closed for c in contexts)
        # Every context's sockets, monitor, threads' eventfds and epoll fds are gone.
        assert _open_fds() <= baseline
    finally:
        pub.close(linger=0)
        ctx.destroy(linger=0)


async def test_a_run_that_fails_to_start_closes_what_it_opened(
    contexts: list[zmq.asyncio.Context],
) -> None:
    lst = HashblockListener("n", "tcp://no-port-here", lambda _h, _g: None)
    with pytest.raises(zmq.ZMQError):
        await lst.run()
    (ctx,) = contexts
    assert ctx.closed and not lst.connected


async def test_a_shared_context_is_left_open_for_its_owner() -> None:
    ctx = zmq.asyncio.Context()
    try:
        lst = HashblockListener("n", "tcp://127.0.0.1:1", lambda _h, _g: None, context=ctx)
        task = asyncio.create_task(lst.run())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not ctx.closed
        # The run's sockets are closed: a plain term() returns instead of waiting for them.
        ctx.term()
    finally:
        ctx.destroy(linger=0)
