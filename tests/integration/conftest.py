"""End-to-end fixtures: a devnet in this process and `poold run` against it, over loopback TCP.

`pool` (one per test module): the devnet (Bitcoin Core consensus via libbitcoinkernel) plus a
`poold run` subprocess with a generated regtest config (solo payout, tiny difficulties so CPU
miners find shares fast). `StratumClient` is a raw line-level client for tests that need to
send exact messages; `poold.sim.miner.StratumMiner` is the full miner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from poold.bitcoin.address import Network, p2wpkh_address
from poold.sim.ports import free_port
from tests.poold_process import log_tail, nodes_toml, poold_run

START_DIFFICULTY = 1e-5
MIN_DIFFICULTY = 1e-8
MAX_DIFFICULTY = 1e15
POOL_MASK = 0x1FFFE000


def new_address() -> str:
    return p2wpkh_address(os.urandom(20), Network.REGTEST)


@dataclass
class Pool:
    devnet: Any
    host: str
    port: int
    config: Path
    log: Path
    proc: asyncio.subprocess.Process

    def log_tail(self, n: int = 60) -> str:
        return log_tail(self.log, n)


def write_config(
    workdir: Path, devnet: Any, port: int, *, instance_id: int = 7, extra_stratum: str = "",
    payout: str = "solo", coinbase_tag: str = "/poold-test/",
    start_difficulty: float = START_DIFFICULTY, ledger_url: str = "", api_port: int | None = None,
) -> Path:
    """A regtest `poold run` config against `devnet`: tiny difficulties, a fee address when the
    payout is not solo, a `[ledger]` table when `ledger_url` is given; with pooled payouts the
    test logins alice, bob and carol are mapped to fresh addresses in `[accounts]`."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "poold.toml"
    fee = f'fee_address = "{new_address()}"\n' if payout != "solo" else ""
    accounts = ""
    if payout in ("pplns", "split"):
        accounts = "[accounts]\n" + "".join(f'{name} = "{new_address()}"\n'
                                             for name in ("alice", "bob", "carol")) + "\n"
    ledger = f'[ledger]\nurl = "{ledger_url}"\n\n' if ledger_url else ""
    cfg.write_text(
        f"""[pool]
network = "regtest"
payout = "{payout}"
{fee}coinbase_tag = "{coinbase_tag}"
instance_id = {instance_id}
state_dir = "{workdir}"

{nodes_toml(devnet)}
[templates]
refresh_s = 1

[stratum]
listen = "127.0.0.1:{port}"
start_difficulty = {start_difficulty!r}
min_difficulty = {MIN_DIFFICULTY!r}
max_difficulty = {MAX_DIFFICULTY!r}
share_interval_s = 10
version_mask = "{POOL_MASK:08x}"
{extra_stratum}

{ledger}{accounts}[api]
listen = "127.0.0.1:{api_port or free_port()}"
"""
    )
    return cfg


@contextlib.asynccontextmanager
async def run_pool(
    workdir: Path, devnet: Any, *, instance_id: int = 7, extra_stratum: str = ""
) -> AsyncIterator[Pool]:
    """`poold run` on a free port against `devnet`, logging to workdir/poold.log."""
    port = free_port()
    cfg = write_config(workdir, devnet, port, instance_id=instance_id, extra_stratum=extra_stratum)
    log = workdir / "poold.log"
    async with poold_run(cfg, log, port=port, log_level="DEBUG") as proc:
        yield Pool(devnet, "127.0.0.1", port, cfg, log, proc)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pool]:
    from poold.devnet import Devnet

    async with Devnet() as dn:
        await dn.generate(101)
        async with run_pool(tmp_path_factory.mktemp("pool"), dn) as p:
            yield p


class StratumClient:
    """Line-level Stratum client: send exact JSON, collect every reply and notification."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.replies: dict[Any, list[dict[str, Any]]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._read())
        self._next_id = 1000

    @classmethod
    async def connect(cls, pool: Pool) -> StratumClient:
        reader, writer = await asyncio.open_connection(pool.host, pool.port)
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while line := await self.reader.readline():
                msg = json.loads(line)
                if msg.get("method") is not None:
                    self.notifications.append(msg)
                else:
                    self.replies.setdefault(msg.get("id"), []).append(msg)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            self.closed.set()
            async with self._changed:
                self._changed.notify_all()

    def send(self, msg: dict[str, Any]) -> None:
        self.writer.write(json.dumps(msg).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def wait_for(self, predicate: Any, limit_s: float = 10.0) -> None:
        async def _wait() -> None:
            async with self._changed:
                while not predicate():
                    if self.closed.is_set():
                        raise ConnectionError("pool closed the connection")
                    await self._changed.wait()

        await asyncio.wait_for(_wait(), limit_s)

    async def reply(self, rid: Any, limit_s: float = 10.0) -> dict[str, Any]:
        await self.wait_for(lambda: rid in self.replies, limit_s)
        return self.replies[rid][0]

    async def request(
        self, method: str, params: list[Any], limit_s: float = 10.0
    ) -> dict[str, Any]:
        self._next_id += 1
        rid = self._next_id
        self.send({"id": rid, "method": method, "params": params})
        return await self.reply(rid, limit_s)

    def of(self, method: str) -> list[list[Any]]:
        return [n["params"] for n in self.notifications if n["method"] == method]

    def difficulty_for_last_job(self) -> float:
        """The last set_difficulty sent before the last notify (difficulty frozen per job)."""
        diff = last = START_DIFFICULTY
        for n in self.notifications:
            if n["method"] == "mining.set_difficulty":
                diff = float(n["params"][0])
            elif n["method"] == "mining.notify":
                last = diff
        return last

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
            await self._task


@pytest_asyncio.fixture(loop_scope="module")
async def client(pool: Pool) -> AsyncIterator[StratumClient]:
    c = await StratumClient.connect(pool)
    try:
        yield c
    finally:
        await c.close()
