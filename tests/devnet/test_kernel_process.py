"""The kernel's child process: validation keeps its pace while the parent's event loop is busy,
a dead kernel gives clear errors instead of hangs, and a parent killed with SIGKILL leaves a
flushed chainstate behind (the child sees its stdin close, flushes and exits)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from poold.devnet import Devnet
from poold.devnet.kernel import KernelError
from tests.devnet.helpers import busy_loop, rpc, rpc_error


async def test_blocks_are_validated_while_the_event_loop_is_busy() -> None:
    # With the kernel on a thread of this process, each ctypes call and callback waited for the
    # GIL behind the busy coroutine: one block took 20 s. In its own process it takes ~2 ms.
    async with Devnet() as dn:
        assert dn.kernel_pid is not None and dn.kernel_pid != os.getpid()
        stop = asyncio.Event()
        busy = [asyncio.create_task(busy_loop(stop)) for _ in range(2)]
        try:
            t0 = time.monotonic()
            await dn.generate(5)
            elapsed = time.monotonic() - t0
        finally:
            stop.set()
            await asyncio.gather(*busy)
        assert dn.height == 5
        assert elapsed < 10.0, f"5 blocks took {elapsed:.1f} s beside a busy event loop"


async def test_a_killed_kernel_gives_clear_errors() -> None:
    dn = Devnet()
    await dn.start()
    try:
        await dn.generate(1)
        pid = dn.kernel_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(KernelError, match=r"kernel process exited \(code -9\)"):
            async with asyncio.timeout(10):
                await dn.generate(1)
        # Over RPC: an error answer, not a hang; reads that need no kernel still work.
        async with asyncio.timeout(10):
            code, message = await rpc_error(dn, "getblock", dn.tip_hash_hex, 0)
        assert "kernel process exited" in message, (code, message)
        assert await rpc(dn, "getblockcount") == 1
    finally:
        async with asyncio.timeout(30):
            await dn.stop()
    assert dn.kernel_pid is None


SCRIPT = """
import asyncio, sys
from pathlib import Path
from poold.devnet import Devnet

async def main():
    dn = Devnet(datadir=Path(sys.argv[1]))
    await dn.start()
    await dn.generate(3)
    print(dn.kernel_pid, dn.tip_hash_hex, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_parent_killed_leaves_a_flushed_chain(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, str(tmp_path), stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().split()
        kernel_pid, tip = int(line[0]), line[1]
        proc.kill()
        await proc.wait()
        # The orphaned kernel notices its stdin closed, flushes and exits.
        deadline = time.monotonic() + 30
        while _alive(kernel_pid) and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a pid)
            await asyncio.sleep(0.05)
        assert not _alive(kernel_pid), "the orphaned kernel process is still running"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    async with Devnet(datadir=tmp_path) as dn:
        assert (dn.height, dn.tip_hash_hex) == (3, tip)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init in this container) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False
