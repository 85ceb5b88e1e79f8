"""`poold run --processes N`: one supervisor, N worker processes, one Stratum port, one ledger.

Python runs one core per process, so a host's cores are used by N full daemons (`poold run
--worker-index I`, re-executed by the supervisor) that share:
- the Stratum port: every worker binds it with SO_REUSEPORT and the kernel spreads the incoming
  connections over them (by a hash of the 4-tuple); under systemd socket activation the passed
  socket is inherited by every worker instead;
- the ledger: the configured PostgreSQL, or the one SQLite file under `pool.state_dir` (WAL,
  BEGIN IMMEDIATE and busy_timeout make concurrent writers from several processes safe).

What each worker has of its own (`worker_config`):
- an extranonce1 range: instance_id ‖ worker index (6 bits) ‖ counter (poold.work.extranonce), so
  no two workers, and no two instances with distinct instance_id, can hand out the same work;
- an admin API port: `api.listen` port + I (worker 0 keeps the configured one), so Prometheus
  scrapes every worker as its own target and no metric needs a per-process label;
- a state directory `pool.state_dir/worker-I` for its block journal (the ledger's fallback file
  is appended and replayed by one process only); the ledger URL is pinned to the shared ledger.
Singletons run in worker 0 only: the ledger's reconcile loop (and the fleet controller).

The supervisor forwards SIGTERM/SIGINT/SIGHUP to the workers, restarts a worker that exits (after
0.5 s, doubling to 30 s while it keeps failing fast; a config error, exit code 2, stops all only
while the instance is starting: later the file broke under running workers, which keep serving
while the failing one is retried, the supervisor logging the file's error), writes each worker's
state and why it is down to `state_dir/workers.json` (every worker's /readyz reads it), kills
a worker whose systemd watchdog pings stop (or that is not ready START_TIMEOUT_S after a start),
and tells systemd READY once every worker is ready: each worker gets its own notify socket
(abstract namespace) that the supervisor reads, so the unit keeps NotifyAccess=main. A worker
dies with its supervisor (PR_SET_PDEATHSIG).

The alternative without a supervisor is the systemd template unit `deploy/systemd/poold@.service`
(one unit per worker index, `poold run --worker-index %i`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from poold.errors import ConfigError
from poold.systemd import Notifier, listen_sockets
from poold.work.extranonce import MAX_WORKERS

if TYPE_CHECKING:
    from poold.config import Config

log = logging.getLogger("poold.supervisor")

SUPERVISOR_ENV = "POOLD_SUPERVISOR_PID"
STATUS_FILE = "workers.json"
CONFIG_ERROR_EXIT = 2
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
# A worker that ran this long before exiting is restarted at RESTART_MIN_S again.
STABLE_AFTER_S = 60.0
# Inside the unit's TimeoutStopSec (15 s): workers drain for up to ~10 s, then SIGKILL.
STOP_GRACE_S = 12.0
# A (re)started worker not READY within this is killed and started again (systemd's own start
# timeout only covers the first start of the unit).
START_TIMEOUT_S = 120.0
_PR_SET_PDEATHSIG = 1


def resolve_processes(n: int, source: str = "the command line") -> int:
    """N worker processes; 0 = one per CPU core available to this process (at most 64)."""
    if n == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return max(1, min(cores or os.cpu_count() or 1, MAX_WORKERS))
    if not 1 <= n <= MAX_WORKERS:
        raise ConfigError("--processes", f"must be 0 (one per core) or 1..{MAX_WORKERS}", source)
    return n


def owns_singletons(worker: int | None) -> bool:
    """Whether this process runs what must run once per instance (the ledger's reconcile loop,
    the fleet controller): a plain `poold run`, or worker 0."""
    return not worker


def worker_state_dir(cfg: Config, index: int) -> Path:
    return Path(cfg.pool.state_dir) / f"worker-{index}"


def relay_path(worker_cfg: Config) -> Path:
    """The unix socket in the instance's state directory on which worker 0 takes the other
    workers' accepted shares for the fleet controller (`worker_cfg` from `worker_config`)."""
    from poold.fleet.share_relay import SOCKET_NAME

    return Path(worker_cfg.pool.state_dir).parent / SOCKET_NAME


def curtailed_path(worker_cfg: Config) -> Path:
    """The file in the instance's state directory in which worker 0 publishes the miners its
    fleet controller curtailed, for the other workers' sessions."""
    from poold.fleet.curtailed_file import FILE_NAME

    return Path(worker_cfg.pool.state_dir).parent / FILE_NAME


def worker_config(cfg: Config, index: int) -> Config:
    """The config of worker `index`: shared port (SO_REUSEPORT), API port + index, own journal
    directory, the ledger URL pinned to the instance's one ledger."""
    if not 0 <= index < MAX_WORKERS:
        raise ConfigError("--worker-index", f"must be 0..{MAX_WORKERS - 1}", "the command line")
    host, port = cfg.api.listen
    if port and port + index > 65535:
        raise ConfigError("api.listen", f"port {port} + worker index {index} exceeds 65535",
                          cfg.source)
    return dataclasses.replace(
        cfg,
        pool=dataclasses.replace(cfg.pool, state_dir=str(worker_state_dir(cfg, index))),
        stratum=dataclasses.replace(cfg.stratum, reuse_port=True),
        ledger=dataclasses.replace(cfg.ledger, url=cfg.ledger_url),
        api=dataclasses.replace(cfg.api, listen=(host, port + index if port else 0)),
    )


def adopt_journals(cfg: Config, keep: int) -> int:
    """Before workers start: move the block journals of worker directories >= `keep` (left by a
    run with more processes, or all of them when going back to one process: keep=0 and the
    plain journal as target) into the journal that will be replayed next. Returns the files
    adopted. A journal holds found blocks the store did not take: never leave one unread."""
    try:
        return _adopt_journals(cfg, keep)
    except OSError as exc:
        log.error("block journals under %s not adopted (%s): replay them by hand",
                  cfg.pool.state_dir, exc)
        return 0


def _adopt_journals(cfg: Config, keep: int) -> int:
    from poold.ledger.journal import adopt_spill

    name = f"ledger-journal-{cfg.pool.instance_id}.jsonl"
    base = Path(cfg.pool.state_dir)
    # Share spills first (accepted shares not yet committed): renumbered into the target's.
    spill = f"ledger-spill-{cfg.pool.instance_id}.jsonl"
    spill_target = (worker_state_dir(cfg, 0) if keep else base) / spill
    spill_sources = [base / spill] if keep and (base / spill).exists() else []
    for d in sorted(base.glob("worker-*")):
        idx = d.name.removeprefix("worker-")
        if idx.isdigit() and int(idx) >= keep and (d / spill).exists():
            spill_sources.append(d / spill)
    for src in spill_sources:
        spill_target.parent.mkdir(parents=True, exist_ok=True)
        n = adopt_spill(src, spill_target)
        log.warning("share spill %s (%d shares) adopted into %s", src, n, spill_target)
    target = (worker_state_dir(cfg, 0) if keep else base) / name
    sources = []
    if keep and (base / name).exists():
        sources.append(base / name)  # left by a single-process run
    for d in sorted(base.glob("worker-*")):
        idx = d.name.removeprefix("worker-")
        if idx.isdigit() and int(idx) >= keep and (d / name).exists():
            sources.append(d / name)
    for src in sources:
        data = src.read_bytes()
        if data and not data.endswith(b"\n"):
            data += b"\n"  # a torn last line stays one bad line, not two
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and target.stat().st_size:
            with target.open("rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data  # end the target's torn line first
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        src.unlink()
        log.warning("block journal %s adopted into %s", src, target)
    return len(sources)


def status_path(cfg: Config) -> Path:
    """`workers.json` in the instance's state directory (`cfg`: the instance's config)."""
    return Path(cfg.pool.state_dir) / STATUS_FILE


def _replace_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


class PeerStatus:
    """A worker's view of its siblings, from the supervisor's `workers.json` (re-read every
    second off the loop): which are down and why, for /readyz."""

    def __init__(self, worker_cfg: Config, index: int) -> None:
        self.path = Path(worker_cfg.pool.state_dir).parent / STATUS_FILE
        self.index = index
        self.down: dict[str, str] = {}

    @property
    def reason(self) -> str:
        return "; ".join(f"worker {i}: {r}" for i, r in sorted(self.down.items()))

    def update(self, raw: str) -> None:
        data = json.loads(raw)
        self.down = {i: str(w.get("reason") or "not ready") for i, w in data.items()
                     if not w.get("ready") and int(i) != self.index}

    async def run(self) -> None:
        while True:
            try:
                self.update(await asyncio.to_thread(self.path.read_text))
            except FileNotFoundError:
                self.down = {}
            except (OSError, ValueError, AttributeError) as exc:
                log.debug("%s unreadable: %s", self.path, exc)
            await asyncio.sleep(1.0)


def become_worker(index: int) -> None:
    """Process setup of a worker: die with the supervisor, tag every log line with the index."""
    parent = os.environ.pop(SUPERVISOR_ENV, "")
    if parent.isdigit():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError) as exc:  # not Linux, or prctl filtered out
            log.warning("worker %d will outlive a killed supervisor: prctl: %s", index, exc)
        if os.getppid() != int(parent):  # the supervisor died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s [worker {index}] %(name)s: %(message)s"))


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of local ports for outgoing connections (Linux; else IANA's)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 49152, 65535


@dataclass(slots=True)
class _Worker:
    index: int
    notify: socket.socket
    notify_name: str
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    ready: bool = False
    last_ping: float = 0.0
    backoff_s: float = RESTART_MIN_S
    restarts: int = 0
    reason: str = "starting"  # why it is not ready ("" when ready)


class Supervisor:
    """Runs and watches N `poold run --worker-index I` processes (module docstring)."""

    def __init__(self, config_path: Path, cfg: Config, processes: int, *,
                 log_level: str | None = None, python: str = sys.executable) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.n = processes
        self.log_level = log_level
        self.python = python
        self.notifier = Notifier()
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.workers: list[_Worker] = []
        self._announced_ready = False
        self._status_dirty = asyncio.Event()
        self._inherited: dict[str, socket.socket] = {}
        # Workers ping the supervisor at half this; a silent worker is killed after it.
        usec = os.environ.get("WATCHDOG_USEC", "")
        self._worker_watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        self._inherited = listen_sockets()
        adopt_journals(self.cfg, keep=self.n)
        for i in range(self.n):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            name = f"@poold-{os.getpid()}-worker-{i}-{os.urandom(4).hex()}"
            sock.bind("\0" + name[1:])
            sock.setblocking(False)
            w = _Worker(i, sock, name)
            loop.add_reader(sock.fileno(), self._on_notify, w)
            self.workers.append(w)
        host, port = self.cfg.api.listen
        log.info("supervisor: %d workers on stratum %s:%d, admin API/metrics on %s",
                 self.n, *self.cfg.stratum.listen,
                 ", ".join(f"{host}:{port + i}" for i in range(self.n)) if port else "port 0")
        lo, hi = _ephemeral_ports()
        if port and port + self.n - 1 >= lo and port <= hi:
            log.warning("supervisor: api.listen ports %d..%d overlap the ephemeral port range "
                        "%d..%d: an outgoing connection can take one first (the worker then "
                        "fails to start and is retried)", port, port + self.n - 1, lo, hi)
        try:
            async with asyncio.TaskGroup() as tg:
                for w in self.workers:
                    tg.create_task(self._keep_running(w), name=f"worker-{w.index}")
                watchdog = tg.create_task(self._watchdog(), name="supervisor-watchdog")
                status = tg.create_task(self._write_status(), name="supervisor-status")
                self._status_changed()
                await self.stopping.wait()
                self.notifier.stopping()
                await self._stop_all()
                watchdog.cancel()  # the worker tasks end by themselves once `stopping` is set
                status.cancel()
        finally:
            for w in self.workers:
                loop.remove_reader(w.notify.fileno())
                w.notify.close()
            for s in self._inherited.values():
                s.close()
            self.notifier.close()
        log.info("supervisor: all workers stopped")
        return self.exit_code

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("supervisor: stopping %d workers", self.n)
            self.stopping.set()

    def _forward(self, sig: signal.Signals) -> None:
        log.info("supervisor: %s to the workers", sig.name)
        for w in self.workers:
            self._signal(w, sig)

    @staticmethod
    def _signal(w: _Worker, sig: signal.Signals) -> None:
        if w.proc is not None and w.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(sig)

    def _worker_env(self, w: _Worker) -> dict[str, str]:
        env = dict(os.environ)
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
                    "LISTEN_FDNAMES"):
            env.pop(key, None)
        env["NOTIFY_SOCKET"] = w.notify_name
        env[SUPERVISOR_ENV] = str(os.getpid())
        if self._worker_watchdog_s is not None:
            env["WATCHDOG_USEC"] = str(int(self._worker_watchdog_s * 1e6))
        if self._inherited:
            # Socket activation: every worker accepts on the same inherited sockets, at the
            # same fd numbers (3...), which is what sd_listen_fds(3) expects.
            env["LISTEN_FDS"] = str(len(self._inherited))
            env["LISTEN_FDNAMES"] = ":".join(self._inherited)
        return env

    async def _spawn(self, w: _Worker) -> None:
        # Without --log-level the worker applies `[log] level` of the config itself.
        level = ["--log-level", self.log_level] if self.log_level is not None else []
        cmd = [self.python, "-m", "poold", *level, "run",
               "-c", str(self.config_path), "--worker-index", str(w.index)]
        w.ready = False
        w.started = w.last_ping = time.monotonic()
        w.proc = await asyncio.create_subprocess_exec(
            *cmd, env=self._worker_env(w), stdin=asyncio.subprocess.DEVNULL,
            pass_fds=tuple(s.fileno() for s in self._inherited.values()),
        )
        log.info("supervisor: worker %d started (pid %d)", w.index, w.proc.pid)

    async def _keep_running(self, w: _Worker) -> None:
        """Start worker `w`, and again whenever it exits, until the supervisor stops."""
        while not self.stopping.is_set():
            await self._spawn(w)
            assert w.proc is not None
            if self.stopping.is_set():  # stopped while this worker was being started
                self._signal(w, signal.SIGTERM)
            rc = await w.proc.wait()
            ran = time.monotonic() - w.started
            w.ready = False
            if self.stopping.is_set():
                break
            if ran >= STABLE_AFTER_S:
                w.backoff_s = RESTART_MIN_S
            w.reason = f"exited with {rc} after {ran:.1f} s"
            if rc == CONFIG_ERROR_EXIT:
                why = await self._config_problem()
                if not self._announced_ready:
                    # A file broken at the start of the whole instance: nothing to keep serving.
                    log.error("supervisor: worker %d exited with a config error%s at start-up; "
                              "stopping", w.index, why)
                    self.exit_code = CONFIG_ERROR_EXIT
                    self.stop()
                    break
                # The file changed under a running instance: the others keep serving with the
                # config they loaded; this one is retried (a fixed file lets it start).
                w.reason = f"cannot start: config error{why}"
            log.error("supervisor: worker %d (pid %d) %s; restarting in %.1f s (the other "
                      "workers keep serving)", w.index, w.proc.pid, w.reason, w.backoff_s)
            self._status_changed()
            w.restarts += 1
            self.notifier.status(f"worker {w.index} restarting ({w.restarts} restarts)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), w.backoff_s)
            w.backoff_s = min(2 * w.backoff_s, RESTART_MAX_S)

    async def _stop_all(self) -> None:
        for w in self.workers:
            self._signal(w, signal.SIGTERM)
        live = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        if not live:
            return
        _done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in live],
                                            timeout=STOP_GRACE_S)
        if pending:
            log.error("supervisor: %d workers did not stop within %.0f s; killing them",
                      len(pending), STOP_GRACE_S)
            for w in self.workers:
                self._signal(w, signal.SIGKILL)
            await asyncio.wait(pending)

    def _on_notify(self, w: _Worker) -> None:
        """A datagram from worker `w`'s sd_notify (READY=1, WATCHDOG=1, STOPPING=1, STATUS=)."""
        while True:
            try:
                data = w.notify.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            fields = data.decode(errors="replace").split("\n")
            now = time.monotonic()
            w.last_ping = now
            if "READY=1" in fields and not w.ready:
                w.ready = True
                w.reason = ""
                log.info("supervisor: worker %d ready after %.2f s", w.index, now - w.started)
                self._maybe_ready()
                self._status_changed()

    async def _config_problem(self) -> str:
        """What is wrong with the config file now (": <the error>"), for the log and /readyz;
        empty if it loads (the error was the worker's own, e.g. its API port)."""
        from poold.config import load_config

        try:
            await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            return f": {exc}"
        except OSError as exc:
            return f": {self.config_path}: {exc}"
        return ""

    def _status_changed(self) -> None:
        self._status_dirty.set()

    async def _write_status(self) -> None:
        """Keeps `workers.json` in the instance's state directory current (atomically
        replaced), so every worker's /readyz can say which worker is down and why."""
        path = status_path(self.cfg)
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            status = {str(w.index): {"ready": w.ready, "reason": w.reason,
                                     "restarts": w.restarts} for w in self.workers}
            try:
                await asyncio.to_thread(_replace_json, path, status)
            except OSError as exc:
                log.error("supervisor: %s not written (%s)", path, exc)
            await asyncio.sleep(0.2)  # coalesce bursts

    def _maybe_ready(self) -> None:
        ready = sum(w.ready for w in self.workers)
        if ready == self.n and not self._announced_ready:
            self._announced_ready = True
            log.info("supervisor: all %d workers ready", self.n)
            self.notifier.ready(f"{self.n} workers ready")
        elif self._announced_ready:
            self.notifier.status(f"{ready} of {self.n} workers ready")

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog for the supervisor; kill a ready worker that stopped pinging
        (its event loop is stuck): it is restarted like any worker that exits."""
        interval = min(self.notifier.watchdog_interval_s or 5.0, 5.0,
                       (self._worker_watchdog_s or 20.0) / 4)
        while True:
            self.notifier.watchdog()
            now = time.monotonic()
            for w in self.workers:
                if w.proc is None or w.proc.returncode is not None:
                    continue
                if (self._worker_watchdog_s is not None and w.ready
                        and now - w.last_ping > self._worker_watchdog_s):
                    log.error("supervisor: worker %d missed its watchdog (%.0f s); killing it",
                              w.index, now - w.last_ping)
                    w.ready = False
                    self._signal(w, signal.SIGKILL)
                elif not w.ready and now - w.started > START_TIMEOUT_S:
                    log.error("supervisor: worker %d not ready after %.0f s; killing it",
                              w.index, now - w.started)
                    w.started = now  # one kill per attempt; the restart resets it
                    self._signal(w, signal.SIGKILL)
            await asyncio.sleep(interval)


def supervise(config_path: Path, cfg: Config, processes: int,
              log_level: str | None = None) -> int:
    """`poold run --processes N` with N > 1: the supervisor's process exit code."""
    return asyncio.run(Supervisor(config_path, cfg, processes, log_level=log_level).run())
