"""The devnet's kernel in its own process, as bitcoind's validation is in its own process.

py-bitcoinkernel is a ctypes binding: every call into libbitcoinkernel releases the GIL and takes
it back on return, and every callback from C (validation events, log lines, and the byte writer
that serializes a block, once per field) takes it again. In a process whose event loop is busy
(a CPU miner in a test or the demo, a share flood) each of those hand-offs waits for Python's
switch interval (5 ms): one submitblock measured 20 s with a single busy coroutine beside a kernel
thread. A child process has its own GIL, so the kernel runs at full speed whatever its parent does.

Protocol: the parent starts `python -m poold.devnet.kernel_process` and sends frames on its stdin;
the child answers on its stdout (its fd 1 is kept for the protocol; anything else written to
stdout, by Python or C++, goes to stderr). A frame is a 4-byte big-endian length and a pickle:
requests are `(id, method, args)` with `method` a `kernel.Kernel` method (or "open"), answers are
`(id, ok, value)` where `value` is the result or the exception. The child serves one request at a
time and exits, after flushing the chainstate, on "close" or when its stdin closes (the parent is
gone, even after `kill -9`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import poold

if TYPE_CHECKING:
    from poold.devnet.kernel import EntryInfo, ProcessResult

log = logging.getLogger("poold.devnet")

_LEN = struct.Struct("!I")
# The child must import this very poold, also from a source checkout that is not installed.
_ROOT = str(Path(poold.__file__).resolve().parent.parent)
# What the parent may call; anything else is refused by the child.
_METHODS = frozenset(
    {"open", "load", "process_block", "read_block", "entry_info", "best_header_height", "close"}
)


def _kernel_error(message: str) -> Exception:
    from poold.devnet.kernel import KernelError

    return KernelError(message)


class KernelProcess:
    """Parent side: one child process holding one `kernel.Kernel` (one chainstate)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._dead: str | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def failure(self) -> str | None:
        """Why the child can no longer answer (it exited or answered garbage), else None."""
        return self._dead

    async def start(self, netdir: Path) -> None:
        """Start the child and open the chainstate in `netdir` (KernelError if it cannot)."""
        if self._proc is not None:
            raise RuntimeError("kernel process already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        self._proc = await asyncio.create_subprocess_exec(
            # -P: a `poold/` folder in the current directory must not shadow the package
            sys.executable, "-P", "-m", "poold.devnet.kernel_process",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read_answers(), name="devnet-kernel-reader")
        try:
            await self._call("open", netdir)
        except BaseException:
            await self.close()
            raise

    async def load(self) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        result: tuple[list[tuple[bytes, bytes]], list[bytes]] = await self._call("load")
        return result

    async def process_block(self, raw: bytes) -> ProcessResult:
        result: ProcessResult = await self._call("process_block", raw)
        return result

    async def read_block(self, block_hash: bytes) -> bytes | None:
        result: bytes | None = await self._call("read_block", block_hash)
        return result

    async def entry_info(self, block_hash: bytes) -> EntryInfo | None:
        result: EntryInfo | None = await self._call("entry_info", block_hash)
        return result

    async def best_header_height(self) -> int:
        result: int = await self._call("best_header_height")
        return result

    async def close(self) -> None:
        """Flush the chainstate and end the child (killed if it does not end within 30 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if self._dead is None:
                with contextlib.suppress(Exception):
                    await self._call_on(proc, "close")
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                log.error("devnet kernel process %d did not stop; killing it", proc.pid)
                proc.kill()
                await proc.wait()
        finally:
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
                self._reader = None
            self._fail_pending("devnet kernel process stopped")

    async def _call(self, method: str, *args: Any) -> Any:
        if self._proc is None:
            raise RuntimeError("devnet is not running")
        return await self._call_on(self._proc, method, *args)

    async def _call_on(self, proc: asyncio.subprocess.Process, method: str, *args: Any) -> Any:
        if self._dead is not None:
            raise _kernel_error(self._dead)
        assert proc.stdin is not None
        self._next_id += 1
        rid = self._next_id
        body = pickle.dumps((rid, method, args), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            proc.stdin.write(_LEN.pack(len(body)) + body)
        except (ConnectionError, RuntimeError) as exc:  # the child is gone, its pipe closed
            raise _kernel_error(f"devnet kernel process unreachable: {exc}") from exc
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        # A cancelled caller leaves its answer to the reader, which drops it: the stream of
        # answers never goes out of step with the requests.
        return await future

    async def _read_answers(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                (size,) = _LEN.unpack(await proc.stdout.readexactly(_LEN.size))
                rid, ok, value = pickle.loads(await proc.stdout.readexactly(size))
                future = self._pending.pop(rid, None)
                if future is None or future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except asyncio.IncompleteReadError:
            code = await proc.wait()
            self._dead = f"devnet kernel process exited (code {code})"
            if code != 0:
                log.error("%s", self._dead)
            self._fail_pending(self._dead)
        except Exception as exc:  # a frame that does not decode: the stream is out of step
            log.exception("devnet kernel process: bad answer")
            self._dead = f"devnet kernel process answered garbage ({exc!r})"
            self._fail_pending(self._dead)
            proc.kill()

    def _fail_pending(self, message: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(_kernel_error(message))


# -- child side ---------------------------------------------------------------------------------


def _read_frame(stream: BinaryIO) -> Any:
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None  # the parent closed our stdin
    (size,) = _LEN.unpack(head)
    return pickle.loads(stream.read(size))


def _write_frame(stream: BinaryIO, obj: Any) -> None:
    try:
        body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # an exception (or value) that does not pickle
        rid = obj[0]
        body = pickle.dumps((rid, False, _kernel_error(f"{obj[2]!r} ({exc})")))
    stream.write(_LEN.pack(len(body)) + body)
    stream.flush()


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Answer requests until "close" or end of input; the chainstate is flushed either way."""
    from poold.devnet.kernel import Kernel

    kernel: Kernel | None = None
    try:
        while (request := _read_frame(requests)) is not None:
            rid, method, args = request
            try:
                if method not in _METHODS:
                    raise _kernel_error(f"unknown kernel method {method!r}")
                if method == "open":
                    kernel = Kernel(*args)
                    value: Any = None
                elif kernel is None:
                    raise _kernel_error("the kernel is not open")
                elif method == "close":
                    kernel.close()
                    kernel = None
                    _write_frame(answers, (rid, True, None))
                    return
                else:
                    value = getattr(kernel, method)(*args)
            except Exception as exc:
                _write_frame(answers, (rid, False, exc))
            else:
                _write_frame(answers, (rid, True, value))
    finally:
        if kernel is not None:
            kernel.close()


def main() -> None:
    # The parent decides when the kernel stops (and a ^C in a terminal reaches the whole process
    # group): an interrupted child could not flush. Without its parent, stdin closes and it ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # fd 1 carries the protocol; everything else that writes to stdout goes to stderr.
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="devnet-kernel %(levelname)s: %(message)s")
    with contextlib.suppress(BrokenPipeError):
        serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
