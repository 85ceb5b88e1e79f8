"""A tiny Stratum V1 client for the server tests (real TCP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any


class StratumClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.notes: list[dict[str, Any]] = []
        self.replies: dict[Any, list[dict[str, Any]]] = {}
        self._waiters: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._note_event = asyncio.Event()
        self._reply_event = asyncio.Event()
        self.closed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(cls, port: int, limit: int = 1 << 20) -> StratumClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=limit)
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                line = await self.reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if msg.get("method") is not None:
                    self.notes.append(msg)
                    self._note_event.set()
                    continue
                self.replies.setdefault(msg["id"], []).append(msg)
                self._reply_event.set()
                fut = self._waiters.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            self._reply_event.set()
            self._note_event.set()
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    def send(self, method: str, params: list[Any], msg_id: Any = None) -> Any:
        msg_id = next(self._ids) if msg_id is None else msg_id
        self.writer.write(
            json.dumps({"id": msg_id, "method": method, "params": params}).encode() + b"\n"
        )
        return msg_id

    async def call(self, method: str, *params: Any, limit_s: float = 10.0) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[msg_id] = fut
        self.send(method, list(params), msg_id)
        return await asyncio.wait_for(fut, limit_s)

    async def wait_reply(self, msg_id: Any, limit_s: float = 10.0) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while msg_id not in self.replies:
                self._reply_event.clear()
                await self._reply_event.wait()
            return self.replies[msg_id][0]

        return await asyncio.wait_for(poll(), limit_s)

    async def wait_note(
        self, method: str, after: int = 0, limit_s: float = 10.0, clean: bool | None = None
    ) -> dict[str, Any]:
        async def poll() -> dict[str, Any]:
            while True:
                for note in self.notes[after:]:
                    if note["method"] != method:
                        continue
                    if clean is not None and note["params"][8] is not clean:
                        continue
                    return note
                self._note_event.clear()
                await self._note_event.wait()

        return await asyncio.wait_for(poll(), limit_s)

    def last_job(self) -> list[Any]:
        jobs = [n for n in self.notes if n["method"] == "mining.notify"]
        return list(jobs[-1]["params"])

    async def handshake(
        self, username: str, password: str = "x", session_id: str | None = None
    ) -> tuple[str, list[Any]]:
        await self.call(
            "mining.configure",
            ["version-rolling"],
            {"version-rolling.mask": "ffffffff", "version-rolling.min-bit-count": 2},
        )
        params: list[Any] = ["poold-test/1.0"]
        if session_id is not None:
            params.append(session_id)
        sub = await self.call("mining.subscribe", *params)
        en1 = sub["result"][1]
        auth = await self.call("mining.authorize", username, password)
        assert auth["result"] is True, auth
        note = await self.wait_note("mining.notify")
        return en1, list(note["params"])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
