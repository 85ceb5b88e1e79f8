"""A Stratum V1 client that mines real shares on the CPU (docs/STRATUM.md; BIP310 version rolling).

`StratumMiner` speaks the dialect ASICs speak (subscribe with a user agent, `mining.configure`
version-rolling, `mining.suggest_difficulty`, authorize; it follows set_difficulty, notify,
set_extranonce, set_version_mask and client.reconnect) and grinds nonces with hashlib.

It is also poold's independent check of its own wire encoding: the header is rebuilt here from
the wire strings alone (coinb1 ‖ extranonce1 ‖ extranonce2 ‖ coinb2, the merkle fold, the
word-swapped prevhash, big-endian hex fields written little-endian) with no help from
`poold.bitcoin`, so an encoding bug on the pool side makes shares fail instead of cancelling out.

Two modes (`mode`):
- "grind": hash as fast as the CPU allows (or at `hashrate_hs * scale` H/s if a rate is given).
- "rate": hash at exactly `hashrate_hs() * scale` H/s, re-read continuously, so the pool sees a
  share rate that follows the simulated hashrate (the fleet emulator moves it with power).
Every submitted share is real work that meets the difficulty of its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from poold.errors import PooldError

log = logging.getLogger(__name__)

DIFF1_TARGET = 0xFFFF << 208
BIP320_MASK = 0x1FFFE000
Mode = Literal["grind", "rate"]
HandshakeStep = Literal["configure", "subscribe", "suggest", "authorize", "xnsub"]
DEFAULT_HANDSHAKE: tuple[HandshakeStep, ...] = ("configure", "subscribe", "authorize", "suggest")

# ---------------------------------------------------------------------------------------------
# Header reconstruction from the wire strings (docs/STRATUM.md §6, §8), deliberately standalone.


def _sha256d(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def prevhash_from_stratum_hex(prevhash_stratum: str) -> bytes:
    """The notify prevhash -> internal header bytes: byte-reverse each 4-byte word."""
    raw = bytes.fromhex(prevhash_stratum)
    if len(raw) != 32:
        raise ValueError("stratum prevhash must be 32 bytes")
    return b"".join(raw[i : i + 4][::-1] for i in range(0, 32, 4))


def display_hash_hex(h: bytes) -> str:
    """Internal hash bytes -> RPC/display hex (byte-reversed)."""
    return h[::-1].hex()


def coinbase_txid(
    coinb1_hex: str, extranonce1: bytes, extranonce2: bytes, coinb2_hex: str
) -> bytes:
    """sha256d of the legacy coinbase assembled from the wire parts (internal order)."""
    return _sha256d(
        bytes.fromhex(coinb1_hex) + extranonce1 + extranonce2 + bytes.fromhex(coinb2_hex)
    )


def merkle_root_from_branch(leaf: bytes, branch: list[bytes]) -> bytes:
    """Fold the coinbase txid up the branch (siblings bottom-up, internal order)."""
    h = leaf
    for sibling in branch:
        h = _sha256d(h + sibling)
    return h


def rolled_version(job_version: int, version_bits: int, mask: int) -> int:
    """BIP310: (job_version AND NOT mask) OR (bits AND mask)."""
    return (job_version & ~mask & 0xFFFFFFFF) | (version_bits & mask)


def header_bytes(
    version: int, prevhash: bytes, merkle_root: bytes, ntime: int, nbits: int, nonce: int
) -> bytes:
    """The 80-byte header: uint32 fields little-endian, hashes in internal order."""
    return (
        version.to_bytes(4, "little")
        + prevhash
        + merkle_root
        + ntime.to_bytes(4, "little")
        + nbits.to_bytes(4, "little")
        + nonce.to_bytes(4, "little")
    )


def bits_to_target(nbits: int) -> int:
    exponent = nbits >> 24
    mantissa = nbits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def difficulty_to_target(difficulty: float) -> int:
    """Share target for a (possibly fractional) difficulty, clamped to 256 bits."""
    if difficulty <= 0:
        raise ValueError("difficulty must be positive")
    return min(int(DIFF1_TARGET / difficulty), 2**256 - 1)


def hash_difficulty(h: bytes) -> float:
    """diff1 / hash, the difficulty a header hash achieves (hash read little-endian)."""
    value = int.from_bytes(h, "little")
    return DIFF1_TARGET / value if value else float("inf")


@dataclass(frozen=True, slots=True)
class Job:
    """One `mining.notify`, with the difficulty and extranonce in force when it arrived."""

    job_id: str
    prevhash: bytes
    coinb1_hex: str
    coinb2_hex: str
    branch: tuple[bytes, ...]
    version: int
    nbits: int
    ntime: int
    clean: bool
    difficulty: float
    extranonce1: bytes
    extranonce2_size: int

    @classmethod
    def from_notify(
        cls, params: list[Any], difficulty: float, extranonce1: bytes, extranonce2_size: int
    ) -> Job:
        if len(params) < 9:
            raise ValueError(f"mining.notify needs 9 params, got {len(params)}")
        return cls(
            job_id=str(params[0]),
            prevhash=prevhash_from_stratum_hex(params[1]),
            coinb1_hex=params[2],
            coinb2_hex=params[3],
            branch=tuple(bytes.fromhex(b) for b in params[4]),
            version=int(params[5], 16),
            nbits=int(params[6], 16),
            ntime=int(params[7], 16),
            clean=bool(params[8]),
            difficulty=difficulty,
            extranonce1=extranonce1,
            extranonce2_size=extranonce2_size,
        )

    def header(self, extranonce2: bytes, ntime: int, nonce: int, version: int) -> bytes:
        root = merkle_root_from_branch(
            coinbase_txid(self.coinb1_hex, self.extranonce1, extranonce2, self.coinb2_hex),
            list(self.branch),
        )
        return header_bytes(version, self.prevhash, root, ntime, self.nbits, nonce)


def grind_share(
    job: Job,
    extranonce2: bytes,
    version: int,
    target: int,
    start_nonce: int = 0,
    max_hashes: int = 1 << 24,
) -> tuple[int, bytes] | None:
    """First nonce from `start_nonce` whose header hash meets `target`: (nonce, hash) or None."""
    prefix = job.header(extranonce2, job.ntime, 0, version)[:76]
    head = hashlib.sha256(prefix[:64])
    tail = prefix[64:]
    for n in range(start_nonce, min(start_nonce + max_hashes, 1 << 32)):
        s = head.copy()
        s.update(tail + n.to_bytes(4, "little"))
        h = hashlib.sha256(s.digest()).digest()
        if int.from_bytes(h, "little") <= target:
            return n, h
    return None


def losing_nonce(job: Job, extranonce2: bytes, version: int, target: int) -> int:
    """A random nonce whose header hash does NOT meet `target` (on regtest half of all hashes
    meet the network target, so a test that wants a rejection must pick its nonce)."""
    while True:
        nonce = int.from_bytes(os.urandom(4), "big")
        h = _sha256d(job.header(extranonce2, job.ntime, nonce, version))
        if int.from_bytes(h, "little") > target:
            return nonce


# ---------------------------------------------------------------------------------------------
# The client.


@dataclass(frozen=True, slots=True)
class MinerEvent:
    """What a miner reports to its owner (the demo prints these; the fleet counts them)."""

    kind: Literal[
        "connected",
        "subscribed",
        "authorized",
        "difficulty",
        "job",
        "accepted",
        "rejected",
        "block",
        "disconnected",
        "reconnect",
    ]
    miner: str
    job_id: str = ""
    difficulty: float = 0.0
    reason: str = ""
    hash_hex: str = ""


class StratumError(PooldError):
    """The pool answered a request with an error (or a handshake step failed)."""

    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error!r}")
        self.method = method
        self.error = error


@dataclass(slots=True)
class MinerStats:
    accepted: int = 0
    rejected: int = 0
    accepted_difficulty: float = 0.0
    hashes: int = 0
    blocks: list[str] = field(default_factory=list)  # display hex of shares meeting nbits
    reject_reasons: dict[str, int] = field(default_factory=dict)


class StratumMiner:
    """A Stratum V1 CPU miner. `await run()` until `stop()`; counters in `stats`.

    `hashrate_hs` (a number or a callable read continuously) times `scale` is the hash rate
    actually spent on the CPU in mode "rate" (and a cap in mode "grind" when > 0).
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str = "x",
        hashrate_hs: Callable[[], float] | float = 0.0,
        *,
        mode: Mode = "grind",
        scale: float = 1.0,
        name: str | None = None,
        user_agent: str = "poold-sim/1.0",
        subscribe_null_session: bool = False,
        handshake: tuple[HandshakeStep, ...] = DEFAULT_HANDSHAKE,
        version_mask: int | None = 0xFFFFFFFF,
        unnegotiated_version_bits: bool = False,
        suggest_difficulty: float | None = None,
        reconnect: bool = True,
        on_event: Callable[[MinerEvent], None] | None = None,
        slice_hashes: int = 512,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self._hashrate = hashrate_hs
        self.mode: Mode = mode
        self.scale = scale
        self.name = name or username
        self.user_agent = user_agent
        self.subscribe_null_session = subscribe_null_session
        self.handshake = handshake
        self.requested_mask = version_mask
        # S21-behind-a-rental quirk (DATUM #214): sixth submit param without mining.configure.
        self.unnegotiated_version_bits = unnegotiated_version_bits
        self.suggest = suggest_difficulty
        self.reconnect = reconnect
        self.on_event = on_event
        self.slice_hashes = slice_hashes

        self.stats = MinerStats()
        self.extranonce1 = b""
        self.extranonce2_size = 0
        self.difficulty = 1.0
        self.version_mask = 0  # negotiated; 0 = no version rolling
        self.authorized = False
        self.job: Job | None = None
        self.jobs: dict[str, Job] = {}
        self.session_id: str | None = None
        self.connects = 0

        self._pending_extranonce: tuple[bytes, int] | None = None
        self._next_id = 1
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._submits: dict[int, Job] = {}
        self._handshake_ids: dict[int, str] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._job_event = asyncio.Event()
        self._stopping = asyncio.Event()
        self._paused = False  # quiesce(): no new shares
        self._redirect: tuple[str, int, float] | None = None
        self._extranonce2_counter = int.from_bytes(os.urandom(2), "big") << 16

    # -- public API ---------------------------------------------------------------------------

    @property
    def accepted(self) -> int:
        return self.stats.accepted

    @property
    def rejected(self) -> int:
        return self.stats.rejected

    def hashrate(self) -> float:
        """The simulated hashrate currently asked for (H/s, before `scale`)."""
        return float(self._hashrate() if callable(self._hashrate) else self._hashrate)

    async def run(self) -> None:
        """Connect, handshake and mine until stop(); reconnects on loss if `reconnect`."""
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                await self._session()
                backoff = 0.1
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
                log.debug("%s: connection lost: %s", self.name, exc)
            self._emit("disconnected")
            if not self.reconnect or self._stopping.is_set():
                return
            if self._redirect is not None:
                self.host, self.port, wait = self._redirect
                self._redirect = None
                await self._sleep_or_stop(wait)
            else:
                await self._sleep_or_stop(backoff)
                backoff = min(backoff * 2, 5.0)
            self._emit("reconnect")

    @property
    def in_flight(self) -> int:
        """Shares submitted whose reply has not arrived (yet)."""
        return len(self._submits)

    async def quiesce(self, timeout_s: float = 10.0) -> None:
        """Find no more shares and wait until every submitted one has its reply, so that
        `accepted` counts what the pool accepted (TimeoutError names how many are missing)."""
        self._paused = True
        deadline = time.monotonic() + timeout_s
        while self._submits and self._writer is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {len(self._submits)} share replies still "
                                   f"missing after {timeout_s:g} s")
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stopping.set()
        self._job_event.set()
        if self._writer is not None:
            self._writer.close()

    async def request(self, method: str, params: list[Any]) -> Any:
        """Send one request and wait for its reply; raises StratumError on an error reply."""
        _rid, fut = self._send_request(method, params)
        reply = await fut
        if reply.get("error") is not None:
            raise StratumError(method, reply["error"])
        return reply.get("result")

    # -- connection ---------------------------------------------------------------------------

    async def _wait_stopping(self) -> None:
        await self._stopping.wait()

    async def _sleep_or_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        self._writer = writer
        self.connects += 1
        self.authorized = False
        self.version_mask = 0
        self.jobs.clear()
        self.job = None
        self._emit("connected")
        reader_task = asyncio.create_task(self._read_loop(reader), name=f"{self.name}-read")
        grind_task: asyncio.Task[None] | None = None
        try:
            await self._handshake()
            grind_task = asyncio.create_task(self._grind_loop(), name=f"{self.name}-grind")
            stop_task = asyncio.create_task(self._wait_stopping())
            done, _ = await asyncio.wait(
                {reader_task, grind_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            stop_task.cancel()
            for t in done:
                exc = None if t.cancelled() else t.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in (reader_task, grind_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                        await task
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
            self._writer = None
            for fut in self._waiters.values():
                if not fut.done():
                    fut.set_exception(ConnectionResetError("connection closed"))
                    # marked as retrieved: a reply nobody awaits any more (the handshake gave
                    # up at its first lost reply) is no error for asyncio to log at exit
                    fut.exception()
            self._waiters.clear()
            self._submits.clear()

    async def _handshake(self) -> None:
        """Send the handshake pipelined in the configured order, as firmware does, then await."""
        futures: list[tuple[str, asyncio.Future[Any]]] = []
        self._handshake_ids.clear()
        self.extranonce2_size = 0
        for step in self.handshake:
            request = self._handshake_request(step)
            if request is None:
                continue
            rid, fut = self._send_request(*request)
            self._handshake_ids[rid] = step
            futures.append((step, fut))
        for name, fut in futures:
            reply = await fut
            failed = reply.get("error") or reply.get("result")
            if name == "subscribe" and not self.extranonce2_size:
                raise StratumError("mining.subscribe", failed)
            if name == "authorize" and not self.authorized:
                raise StratumError("mining.authorize", failed)

    def _handshake_request(self, step: str) -> tuple[str, list[Any]] | None:
        if step == "configure" and self.requested_mask is not None:
            ext = {
                "version-rolling.mask": f"{self.requested_mask:08x}",
                "version-rolling.min-bit-count": 2,
            }
            return "mining.configure", [["version-rolling"], ext]
        if step == "subscribe":
            sub: list[Any] = [self.user_agent]
            if self.session_id is not None:
                sub.append(self.session_id)
            elif self.subscribe_null_session:
                sub.append(None)
            return "mining.subscribe", sub
        if step == "suggest" and self.suggest is not None:
            return "mining.suggest_difficulty", [self.suggest]
        if step == "authorize":
            return "mining.authorize", [self.username, self.password]
        if step == "xnsub":
            return "mining.extranonce.subscribe", []
        return None

    def _apply_handshake_reply(self, step: str, reply: dict[str, Any]) -> None:
        """Called by the reader as the reply arrives, so that a notify read right after it
        (often in the same TCP segment) already sees the extranonce and the mask."""
        err = reply.get("error")
        result = reply.get("result")
        if step == "configure" and err is None and isinstance(result, dict):
            if result.get("version-rolling") is True:
                self.version_mask = int(result.get("version-rolling.mask", "0"), 16)
        elif step == "subscribe":
            if err is None and isinstance(result, list) and len(result) >= 3:
                self.extranonce1 = bytes.fromhex(result[1])
                self.extranonce2_size = int(result[2])
                self.session_id = result[1]
                self._emit("subscribed")
        elif step == "authorize" and err is None and result is True:
            self.authorized = True
            self._emit("authorized")

    def _send_request(self, method: str, params: list[Any]) -> tuple[int, asyncio.Future[Any]]:
        rid = self._send(method, params)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[rid] = fut
        return rid, fut

    def _send(self, method: str, params: list[Any]) -> int:
        rid = self._next_id
        self._next_id += 1
        self._write({"id": rid, "method": method, "params": params})
        return rid

    def _write(self, obj: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            raise ConnectionResetError("not connected")
        self._writer.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionResetError("pool closed the connection")
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("%s: unparseable line from pool: %r", self.name, line[:200])
                continue
            if not isinstance(msg, dict):
                continue
            method = msg.get("method")
            if method is None:
                self._on_reply(msg)
            else:
                self._on_pool_message(str(method), msg.get("params") or [], msg.get("id"))

    def _on_reply(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        if not isinstance(rid, int):
            return
        step = self._handshake_ids.pop(rid, None)
        if step is not None:
            self._apply_handshake_reply(step, msg)
        job = self._submits.pop(rid, None)
        fut = self._waiters.pop(rid, None)
        if job is not None:
            if msg.get("result") is True and msg.get("error") is None:
                self.stats.accepted += 1
                self.stats.accepted_difficulty += job.difficulty
                self._emit("accepted", job_id=job.job_id, difficulty=job.difficulty)
            else:
                self.stats.rejected += 1
                reason = _reason(msg.get("error"))
                self.stats.reject_reasons[reason] = self.stats.reject_reasons.get(reason, 0) + 1
                self._emit("rejected", job_id=job.job_id, reason=reason)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_pool_message(self, method: str, params: list[Any], rid: Any) -> None:
        if method == "mining.set_difficulty" and params:
            self.difficulty = float(params[0])
            self._emit("difficulty", difficulty=self.difficulty)
        elif method == "mining.notify":
            if self._pending_extranonce is not None:
                self.extranonce1, self.extranonce2_size = self._pending_extranonce
                self._pending_extranonce = None
            job = Job.from_notify(params, self.difficulty, self.extranonce1, self.extranonce2_size)
            if job.clean:
                self.jobs.clear()
            self.jobs[job.job_id] = job
            self.job = job
            self._job_event.set()
            self._emit("job", job_id=job.job_id, difficulty=job.difficulty)
        elif method == "mining.set_extranonce" and len(params) >= 2:
            # Takes effect with the next notify (SRI sv1 server_to_client.rs).
            self._pending_extranonce = (bytes.fromhex(params[0]), int(params[1]))
        elif method == "mining.set_version_mask" and params:
            self.version_mask = int(params[0], 16)
        elif method == "client.reconnect":
            host = str(params[0]) if len(params) > 0 and params[0] else self.host
            port = int(params[1]) if len(params) > 1 and params[1] else self.port
            wait = float(params[2]) if len(params) > 2 and params[2] else 0.0
            self._redirect = (host, port, wait)
            if self._writer is not None:
                self._writer.close()
        elif method == "client.show_message" and params:
            log.info("%s: pool says: %s", self.name, params[0])
        if rid is not None:
            # A request from the pool (mining.ping, client.get_version) needs an answer.
            result: Any = self.user_agent if method == "client.get_version" else True
            with contextlib.suppress(ConnectionError):
                self._write({"id": rid, "result": result, "error": None})

    # -- mining -------------------------------------------------------------------------------

    def _next_extranonce2(self, size: int) -> bytes:
        self._extranonce2_counter = (self._extranonce2_counter + 1) % (1 << (8 * size))
        return self._extranonce2_counter.to_bytes(size, "big")

    def _rate(self) -> float:
        rate = self.hashrate() * self.scale
        return rate if rate > 0 else 0.0

    async def _grind_loop(self) -> None:
        while not self._stopping.is_set():
            if self.job is None or not self.authorized:
                self._job_event.clear()
                await self._job_event.wait()
                continue
            job = self.job
            self._job_event.clear()
            await self._grind_job(job)

    async def _grind_job(self, job: Job) -> None:
        """Grind one job until a newer notify arrives (then `self.job` changes)."""
        target = difficulty_to_target(job.difficulty)
        network_target = bits_to_target(job.nbits)
        mask = self.version_mask or (BIP320_MASK if self.unnegotiated_version_bits else 0)
        started = time.monotonic()
        done = 0
        while self.job is job and not self._stopping.is_set():
            extranonce2 = self._next_extranonce2(job.extranonce2_size)
            bits = (int.from_bytes(os.urandom(4), "big") & mask) if mask else 0
            version = rolled_version(job.version, bits, mask) if mask else job.version
            root = merkle_root_from_branch(
                coinbase_txid(job.coinb1_hex, job.extranonce1, extranonce2, job.coinb2_hex),
                list(job.branch),
            )
            prefix = header_bytes(version, job.prevhash, root, job.ntime, job.nbits, 0)[:76]
            head = hashlib.sha256(prefix[:64])
            tail = prefix[64:]
            nonce = 0
            while nonce < 1 << 32 and self.job is job and not self._stopping.is_set():
                rate = self._rate()
                if (self.mode == "rate" and rate <= 0) or self._paused:
                    # A sleeping miner: no hashes, no shares, until its hashrate comes back.
                    started, done = time.monotonic(), 0
                    await asyncio.sleep(0.1)
                    continue
                # Slices of ~20 ms of work when paced, so a new job is picked up promptly.
                size = (
                    self.slice_hashes
                    if rate <= 0
                    else max(1, min(self.slice_hashes, int(rate / 50)))
                )
                end = min(nonce + size, 1 << 32)
                for n in range(nonce, end):
                    s = head.copy()
                    s.update(tail + n.to_bytes(4, "little"))
                    h = hashlib.sha256(s.digest()).digest()
                    value = int.from_bytes(h, "little")
                    if value <= target:
                        self._submit(job, extranonce2, n, bits if mask else None)
                        if value <= network_target:
                            hash_hex = display_hash_hex(h)
                            self.stats.blocks.append(hash_hex)
                            self._emit("block", job_id=job.job_id, hash_hex=hash_hex)
                self.stats.hashes += end - nonce
                done += end - nonce
                nonce = end
                if rate > 0:
                    # Pace to the asked rate: sleep until `done` hashes are due.
                    ahead = done / rate - (time.monotonic() - started)
                    await asyncio.sleep(max(0.0, ahead))
                    if time.monotonic() - started > 5.0:
                        # Re-anchor so a rate change takes effect promptly.
                        started, done = time.monotonic(), 0
                else:
                    await asyncio.sleep(0)

    def _submit(self, job: Job, extranonce2: bytes, nonce: int, version_bits: int | None) -> None:
        params: list[Any] = [
            self.username,
            job.job_id,
            extranonce2.hex(),
            f"{job.ntime:08x}",
            f"{nonce:08x}",
        ]
        if version_bits is not None:
            params.append(f"{version_bits:08x}")
        try:
            rid = self._send("mining.submit", params)
        except ConnectionError:
            return
        self._submits[rid] = job

    def _emit(self, kind: Any, **kw: Any) -> None:
        if self.on_event is not None:
            self.on_event(MinerEvent(kind=kind, miner=self.name, **kw))


def _reason(error: Any) -> str:
    if isinstance(error, list) and len(error) >= 2:
        return f"{error[0]} {error[1]}"
    return "false" if error is None else str(error)
