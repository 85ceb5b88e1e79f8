"""`poold demo` end to end: devnet + `poold run` + CPU miners, blocks verified on the chain."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def test_demo_finds_blocks_that_pay_its_miners() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "poold", "demo", "--miners", "2", "--blocks", "2"],
        check=False, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    blocks = re.findall(r"BLOCK height (\d+) ([0-9a-f]{64}) is on the devnet's chain", out.stdout)
    assert len(blocks) >= 2, out.stdout
    # Found through the share path at difficulty 1e-4 (target ~2**242), display byte order.
    assert all(int(h, 16) <= 0xFFFF * 2**208 * 10**4 for _, h in blocks)
    assert re.search(r"coinbase pays 50\.0+ BTC to cpu-miner-\d \(bcrt1", out.stdout)
    summary = re.search(r"summary: (\d+) shares accepted, (\d+) rejected", out.stdout)
    assert summary is not None and int(summary.group(1)) > 0, out.stdout
    # The only honest rejection: a share on the old tip that raced the new block's clean job
    # (blocks come seconds apart on regtest). Anything else is a pool or miner bug.
    reasons = re.findall(r"share rejected \(([^)]*)\)", out.stdout)
    assert len(reasons) == int(summary.group(2)), out.stdout
    assert all(r in ("21 Stale job", "21 Job not found") for r in reasons), reasons


# -- from any directory; a pool or devnet that dies stops the demo ------------------------------

REPO = Path(__file__).resolve().parents[2]
FINAL = re.compile(r"^\[\s*[\d.]+s\] (done|FAILED|stopped): (.*)$")


def _env() -> dict[str, str]:
    """This checkout's poold for the demo (an editable install would find it too)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), path) if p)}


def test_demo_runs_from_a_directory_holding_a_poold_folder(tmp_path: Path) -> None:
    # As after an editable install, run from the clone's parent: a `poold/` folder there must
    # not be what the demo's pool (or the devnet's kernel process) imports. -P is what the
    # `poold` console script amounts to: its own directory, not the current one, is on sys.path.
    shadow = tmp_path / "poold"
    shadow.mkdir()
    (shadow / "__init__.py").write_text('raise SystemExit("the shadowing poold/ was imported")\n')
    out = subprocess.run(
        [sys.executable, "-P", "-m", "poold", "demo", "--miners", "1", "--blocks", "1"],
        check=False, capture_output=True, text=True, timeout=90, cwd=tmp_path, env=_env(),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    last = out.stdout.strip().splitlines()[-1]
    final = FINAL.match(last)
    blocks = re.findall(r"BLOCK height \d+ [0-9a-f]{64} is on the devnet's chain", out.stdout)
    assert final is not None and final.group(1) == "done", last
    # The final line says how many blocks were found, and that is what happened.
    assert final.group(2) == f"{len(blocks)} block(s) found and accepted (--blocks 1)", last
    assert len(blocks) >= 1


async def _start_demo(*args: str) -> tuple[asyncio.subprocess.Process, list[str], int]:
    """The demo as a child, read up to its "pool up" line: (process, lines so far, pool pid)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "poold", "demo", "--miners", "1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stdout.readline()).decode(errors="replace")
            assert line, "the demo ended before its pool was up:\n" + "".join(lines)
            lines.append(line)
            up = re.search(r"pool up: `poold run` \(pid (\d+)\)", line)
            if up:
                return proc, lines, int(up.group(1))


async def _rest(proc: asyncio.subprocess.Process, lines: list[str]) -> str:
    assert proc.stdout is not None
    lines.append((await proc.stdout.read()).decode(errors="replace"))
    await proc.wait()
    return "".join(lines)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live children of `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append((int(entry.name), cmdline))
    return found


@pytest.mark.parametrize("victim", ["pool", "devnet"])
async def test_demo_stops_within_2_s_when_its_pool_or_devnet_dies(victim: str) -> None:
    # No --blocks: without the watch the demo would mine on (or wait) until killed.
    proc, lines, pool_pid = await _start_demo("--hashrate", "1000")
    try:
        if victim == "pool":
            pid = pool_pid
        else:
            kernels = [p for p, cmd in _children(proc.pid) if "poold.devnet.kernel_process" in cmd]
            assert len(kernels) == 1, _children(proc.pid)
            pid = kernels[0]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        async with asyncio.timeout(30):
            text = await _rest(proc, lines)
        took = time.monotonic() - killed
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, text
    assert took <= 2.0, f"the demo took {took:.2f} s to stop:\n{text}"
    final = FINAL.match(text.strip().splitlines()[-1])
    assert final is not None and final.group(1) == "FAILED", text
    if victim == "pool":
        assert final.group(2).startswith(f"the pool (`poold run`, pid {pool_pid}) exited with "
                                         "code -9"), text
    else:
        assert final.group(2).startswith("devnet kernel process exited (code -9)"), text


async def test_a_demo_killed_with_sigkill_leaves_no_pool_or_devnet_behind() -> None:
    """The pool is told to go when the demo dies (PR_SET_PDEATHSIG), the kernel process when
    its stdin closes: nothing keeps holding ports or CPU after a demo killed with -9."""
    proc, _, pool_pid = await _start_demo("--hashrate", "1000")
    kernels = [p for p, cmd in _children(proc.pid) if "poold.devnet.kernel_process" in cmd]
    assert len(kernels) == 1, _children(proc.pid)
    proc.kill()
    await proc.wait()
    left: list[int] = []
    for _ in range(200):  # 20 s at most; a pool shuts down in well under its 10 s budget
        left = [p for p in (pool_pid, kernels[0]) if _state(p) != "(Z)"]
        if not left:
            break
        await asyncio.sleep(0.1)
    assert not left, f"still running after the demo was killed: {left}"


def _state(pid: int) -> str:
    """The process state letter in parentheses; "(Z)" also for a process that is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "(Z)"
    return f"({stat.rsplit(')', 1)[1].split()[0]})"


async def test_demo_shows_the_error_of_a_pool_that_cannot_start() -> None:
    # The admin API port is taken: `poold run` fails, and the demo says why instead of mining on.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "poold", "demo", "--miners", "1",
             "--api-listen", f"127.0.0.1:{port}"],
            check=False, capture_output=True, text=True, timeout=60, env=_env(),
        )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    tail = out.stdout.strip().splitlines()
    final = FINAL.match(tail[-1])
    assert final is not None and final.group(1) == "FAILED", out.stdout
    assert final.group(2).startswith("the pool (`poold run`"), tail[-1]
    # the pool's own last lines, on the demo's output
    assert any("address already in use" in line and line.startswith("  | ") for line in tail), (
        out.stdout)


def test_demo_waiting_for_the_fleet_still_serves_its_loop_and_its_duration() -> None:
    # Blocks come in seconds, the cut only at 30 s: while the demo waits for the fleet with
    # enough blocks, its loop must keep running (narration, the fleet task) and --duration
    # must still end it, saying what was missing.
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "poold", "demo", "--fleet", "--miners", "1", "--blocks", "1",
         "--fleet-cut-at", "30", "--duration", "12"],
        check=False, capture_output=True, text=True, timeout=90, env=_env(),
    )  # fmt: skip
    took = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    waiting = next(i for i, line in enumerate(lines) if "going on until the fleet's" in line)
    # the fleet's status lines go on after the demo started waiting for it
    assert any(line.split("] ", 1)[1].startswith("fleet: rack000 ") for line in lines[waiting:])
    final = FINAL.match(lines[-1])
    assert final is not None and final.group(1) == "FAILED", lines[-1]
    assert final.group(2).startswith("12 s elapsed, ") and final.group(2).endswith(
        "; the fleet's rack cut was not met"), lines[-1]
    assert took < 60, took
