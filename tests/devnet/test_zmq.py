"""ZMQ notifications in bitcoind's format: [topic, body, LE32 per-topic sequence]."""

from __future__ import annotations

import asyncio

import zmq
import zmq.asyncio

from poold.bitcoin.block import parse_block
from poold.devnet import Devnet
from poold.devnet.zmqpub import ZmqPublisher
from tests.devnet.helpers import rpc


async def test_hashblock_and_rawblock_with_sequence_numbers(devnet: Devnet) -> None:
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"hashblock")
        sub.setsockopt(zmq.SUBSCRIBE, b"rawblock")
        sub.connect(devnet.zmq_url)
        async with asyncio.timeout(5):
            await devnet.wait_zmq_subscribers("hashblock")
            await devnet.wait_zmq_subscribers("rawblock")
        hashes = await devnet.generate(3)
        got: dict[str, list[tuple[bytes, int]]] = {"hashblock": [], "rawblock": []}
        async with asyncio.timeout(5):
            while len(got["hashblock"]) < 3 or len(got["rawblock"]) < 3:
                frames = await sub.recv_multipart()
                assert len(frames) == 3
                topic, body, seq = frames
                assert len(seq) == 4
                got[topic.decode()].append((body, int.from_bytes(seq, "little")))
        assert [s for _, s in got["hashblock"]] == [0, 1, 2]
        assert [s for _, s in got["rawblock"]] == [0, 1, 2]
        # hashblock body: 32 bytes in display (RPC) order.
        assert [b.hex() for b, _ in got["hashblock"]] == hashes
        for (raw, _), h in zip(got["rawblock"], hashes, strict=True):
            header, _ = parse_block(raw)
            assert header.hash_hex == h
            assert raw.hex() == await rpc(devnet, "getblock", h, 0)
    finally:
        sub.close(linger=0)
        ctx.destroy(linger=0)


async def test_rejected_block_publishes_nothing(devnet: Devnet) -> None:
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"hashblock")
        sub.connect(devnet.zmq_url)
        async with asyncio.timeout(5):
            await devnet.wait_zmq_subscribers("hashblock")
        (first,) = await devnet.generate(1)
        assert await rpc(devnet, "submitblock", await rpc(devnet, "getblock", first, 0)) == (
            "duplicate"
        )
        (second,) = await devnet.generate(1)
        async with asyncio.timeout(5):
            msgs = [await sub.recv_multipart() for _ in range(2)]
        assert [(m[1].hex(), int.from_bytes(m[2], "little")) for m in msgs] == [
            (first, 0), (second, 1)
        ]
        notifications = await rpc(devnet, "getzmqnotifications")
        assert {"type": "pubhashblock", "address": devnet.zmq_url, "hwm": 1000} in notifications
    finally:
        sub.close(linger=0)
        ctx.destroy(linger=0)


async def test_publisher_close_is_final_and_releases_its_own_context() -> None:
    pub = ZmqPublisher()
    endpoint = pub.bind("tcp://127.0.0.1:0")
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"hashblock")
        sub.connect(endpoint)
        async with asyncio.timeout(5):
            await pub.wait_subscribers("hashblock")
        await pub.publish("hashblock", b"\x01" * 32)
        async with asyncio.timeout(5):
            assert (await sub.recv_multipart())[1] == b"\x01" * 32
        await pub.close()
        assert pub._ctx.closed  # destroyed, not left for the garbage collector
        await pub.close()  # twice is harmless
        await pub.publish("hashblock", b"\x02" * 32)  # after close: dropped, no error
        assert pub.subscribers("hashblock") == 1  # last state seen, nothing read after close
    finally:
        sub.close(linger=0)
        ctx.destroy(linger=0)
