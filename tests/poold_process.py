"""`poold run` as a subprocess of a test: start it (stdout and stderr to a log file), wait until
its Stratum port accepts connections, and always stop it (SIGTERM, then SIGKILL after 20 s).

One copy of the start/wait/stop sequence the end-to-end tests share, so a test reads as what it
checks; tests that signal the process themselves (kill -9 and restart, SIGTERM and an exit code)
do so on the yielded process, and the stop on the way out leaves their returncode as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

STOP_S = 20.0  # SIGTERM to SIGKILL: a graceful stop drains sessions and flushes the ledger


def nodes_toml(devnet: Any) -> str:
    """The config's `[[nodes]]` table for an in-process `poold.devnet.Devnet`."""
    return f"""[[nodes]]
name = "devnet"
rpc_url = "{devnet.rpc_url}"
rpc_user = "{devnet.rpc_user}"
rpc_password = "{devnet.rpc_password}"
zmq_hashblock = "{devnet.zmq_url}"
"""


def log_tail(log: Path, n: int = 60) -> str:
    """The last `n` lines of a process log, for a failure message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def poold_command(cfg: Path, *, args: Sequence[str] = (), log_level: str | None = None
                  ) -> list[str]:
    """The argv of `python -m poold [--log-level L] run -c CFG ARGS...` in this interpreter."""
    level = ["--log-level", log_level] if log_level is not None else []
    return [sys.executable, "-m", "poold", *level, "run", "-c", str(cfg), *args]


async def spawn(cmd: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                cwd: Path | None = None, pass_fds: Sequence[int] = (), append: bool = False
                ) -> asyncio.subprocess.Process:
    """Start `cmd` with stdout and stderr to `log` (appended to with `append`: a restart keeps
    the first run's lines); `env` is added to this process's environment."""
    with log.open("ab" if append else "wb") as logf:
        return await asyncio.create_subprocess_exec(
            *cmd, stdout=logf, stderr=logf, cwd=cwd, pass_fds=tuple(pass_fds),
            env=None if env is None else {**os.environ, **env},
        )


async def wait_listening(host: str, port: int, proc: asyncio.subprocess.Process, log: Path,
                         within_s: float = 30.0) -> None:
    """Poll until `host:port` accepts a connection; fail the test, with the log's tail, if the
    process exits first or nothing listens within `within_s`."""
    for _ in range(round(within_s / 0.1)):
        if proc.returncode is not None:
            pytest.fail(f"poold run exited {proc.returncode}:\n{log_tail(log)}")
        try:
            _, w = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        w.close()
        await w.wait_closed()
        return
    pytest.fail(f"poold did not listen within {within_s:g} s:\n{log_tail(log)}")


async def stop(proc: asyncio.subprocess.Process, within_s: float = STOP_S) -> bool:
    """SIGTERM, wait up to `within_s`, then SIGKILL. False when it had to be killed; a process
    that has already exited is left as it is (its returncode stays the caller's to check)."""
    if proc.returncode is not None:
        return True
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), within_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False
    return True


@contextlib.asynccontextmanager
async def poold_run(cfg: Path, log: Path, *, port: int, host: str = "127.0.0.1",
                    args: Sequence[str] = (), log_level: str | None = None,
                    env: Mapping[str, str] | None = None, wait: bool = True,
                    append: bool = False) -> AsyncIterator[asyncio.subprocess.Process]:
    """`poold run -c cfg`, logging to `log`; with `wait`, yields once `host:port` listens.
    Stopped on the way out however the block ends (`stop`)."""
    proc = await spawn(poold_command(cfg, args=args, log_level=log_level), log, env=env,
                       append=append)
    try:
        if wait:
            await wait_listening(host, port, proc, log)
        yield proc
    finally:
        await stop(proc)
