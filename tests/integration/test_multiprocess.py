"""Many instances, real processes: `poold run --processes 2` on one Stratum port (SO_REUSEPORT),
and two `poold run` instances (distinct instance_id) on one PostgreSQL, against the devnet.

What must hold: every session's extranonce1 is unique and names its instance (first byte) and
worker (next 6 bits); both workers' shares land in one ledger (SQLite and PostgreSQL); a worker
killed with SIGKILL is restarted and its miners come back; SIGTERM to the supervisor stops every
process within 10 s; two instances on one PostgreSQL share one PPLNS window and one audit log.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from poold.sim.miner import StratumMiner
from poold.sim.ports import free_port, free_ports
from poold.work.extranonce import WORKER_BITS
from tests.integration.conftest import StratumClient, new_address
from tests.integration.conftest import write_config as write_pool_config
from tests.poold_process import log_tail, poold_command, spawn
from tests.poold_process import stop as stop_process

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).parents[2]
INSTANCE = 9
START_DIFFICULTY = 1e-4
HASHRATE = 500_000  # CPU hashes/s per miner: a share (on regtest also a block) every ~0.9 s


def worker_of(en1: bytes) -> int:
    """The worker field of a worker process's extranonce1 (poold.work.extranonce)."""
    return int.from_bytes(en1[1:], "big") >> (8 * (len(en1) - 1) - WORKER_BITS)


async def _until(predicate: Callable[[], bool], limit_s: float, what: str = "") -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():  # state lives in other processes and components: poll it
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Poold:
    proc: asyncio.subprocess.Process
    log: Path
    port: int
    api_port: int
    ledger_url: str

    @property
    def host(self) -> str:  # StratumClient.connect(pool) reads .host and .port
        return "127.0.0.1"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, n: int = 80) -> str:
        return log_tail(self.log, n)

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.text()))

    def worker_pids(self) -> dict[int, int]:
        """The newest pid of each worker, from the supervisor's log."""
        out: dict[int, int] = {}
        for m in re.finditer(r"worker (\d+) started \(pid (\d+)\)", self.text()):
            out[int(m.group(1))] = int(m.group(2))
        return out

    async def stop(self, limit_s: float = 20.0) -> float:
        """SIGTERM, wait; the seconds it took."""
        t0 = time.monotonic()
        if not await stop_process(self.proc, limit_s):
            raise TimeoutError(f"poold still running {limit_s} s after SIGTERM: killed")
        return time.monotonic() - t0


def write_config(workdir: Path, devnet: Any, *, instance_id: int, port: int, api_port: int,
                 ledger_url: str, payout: str = "solo") -> Path:
    return write_pool_config(workdir, devnet, port, instance_id=instance_id, payout=payout,
                             coinbase_tag="/poold-mp/", start_difficulty=START_DIFFICULTY,
                             ledger_url=ledger_url, api_port=api_port)


async def start_poold(workdir: Path, devnet: Any, *, instance_id: int = INSTANCE,
                      processes: int = 1, ledger_url: str = "", payout: str = "solo",
                      ready_s: float = 60.0, env: dict[str, str] | None = None,
                      inherit: socket.socket | None = None) -> Poold:
    """`poold run` with a fresh config; `inherit`: a listening socket passed as systemd socket
    activation does (fd 3, LISTEN_FDS=1, FileDescriptorName stratum)."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    api_port = free_ports(processes)
    port = free_port()
    while api_port <= port < api_port + processes:
        port = free_port()
    ledger_url = ledger_url or f"sqlite:///{workdir / 'ledger.sqlite3'}"
    cfg = write_config(workdir, devnet, instance_id=instance_id, port=port, api_port=api_port,
                       ledger_url=ledger_url, payout=payout)
    log = workdir / "poold.log"
    extra = ["--processes", str(processes)] if processes != 1 else []
    cmd = poold_command(cfg, args=extra)
    pass_fds: tuple[int, ...] = ()
    if inherit is not None:
        fd = inherit.fileno()
        pass_fds = (fd,)
        env = {**(env or {}), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "stratum"}
        cmd = [sys.executable, "-c", "import os, sys; os.dup2(int(sys.argv[1]), 3); "
               "os.set_inheritable(3, True); os.execv(sys.executable, sys.argv[2:])",
               str(fd), *cmd]
    proc = await spawn(cmd, log, env=env, cwd=ROOT, pass_fds=pass_fds)
    p = Poold(proc, log, port, api_port, ledger_url)
    ready = (f"all {processes} workers ready" if processes > 1 else "poold running")
    try:
        await _until(lambda: ready in p.text() or proc.returncode is not None, ready_s, ready)
    except AssertionError:
        await p.stop()
        raise AssertionError(f"poold not ready:\n{p.tail()}") from None
    if proc.returncode is not None:
        raise AssertionError(f"poold exited {proc.returncode}:\n{p.tail()}")
    return p


async def subscribe(p: Poold) -> tuple[StratumClient, bytes]:
    c = await StratumClient.connect(p)  # type: ignore[arg-type]
    sub = await c.request("mining.subscribe", ["mp-test/1"])
    assert sub["error"] is None, sub
    return c, bytes.fromhex(sub["result"][1])


async def miners_on_each_worker(p: Poold, account: str, workers: int = 2, per_worker: int = 1,
                                limit: int = 40) -> dict[int, list[StratumMiner]]:
    """Start rate-mode miners until every worker has `per_worker` of them (the kernel picks)."""
    by_worker: dict[int, list[StratumMiner]] = {w: [] for w in range(workers)}
    tasks: list[asyncio.Task[None]] = []
    for i in range(limit):
        if all(len(v) >= per_worker for v in by_worker.values()):
            break
        m = StratumMiner(p.host, p.port, f"{account}.m{i}", hashrate_hs=HASHRATE, mode="rate")
        task = asyncio.create_task(m.run())
        await _until(lambda m=m, task=task: m.job is not None or task.done(),  # type: ignore[misc]
                     20, "a job")
        w = worker_of(m.extranonce1)
        if len(by_worker[w]) < per_worker:
            by_worker[w].append(m)
            tasks.append(task)
            setattr(m, "_task", task)  # noqa: B010 - kept with the miner for stop_all
        else:
            m.stop()
            await task
    assert all(len(v) >= per_worker for v in by_worker.values()), by_worker
    return by_worker


async def stop_all(miners: list[StratumMiner]) -> None:
    for m in miners:
        m.stop()
    await asyncio.gather(*(getattr(m, "_task") for m in miners))  # noqa: B009


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def devnet() -> AsyncIterator[Any]:
    from poold.devnet import Devnet

    async with Devnet() as dn:
        await dn.generate(101)
        yield dn


async def pg_url() -> tuple[str, str, str]:
    from tests.ledger.conftest import make_pg_schema_url

    return await make_pg_schema_url()


async def connections_gauge(api_port: int) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{api_port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    m = re.search(r"^poold_stratum_connections ([0-9.e+]+)$", text, re.M)
    assert m is not None, text[:500]
    return float(m.group(1))


async def ledger_rows(url: str) -> tuple[dict[str, float], list[tuple[str, int, str]]]:
    """(accepted difficulty per miner name, [(block hash, instance_id, worker)]) in the ledger."""
    from poold.ledger.store import open_store

    store = open_store(url)
    await store.open()
    try:
        totals = await store.share_totals(0.0, time.time() + 60)
        blocks = [(b.hash_hex, b.instance_id, b.worker) for b in await store.blocks(0.0)]
    finally:
        await store.close()
    return totals, blocks


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_two_workers_one_port_one_ledger(devnet: Any, tmp_path: Path,
                                               backend: str) -> None:
    url = ""
    schema: tuple[str, str, str] | None = None
    if backend == "postgres":
        schema = await pg_url()
        url = schema[0]
    t0 = time.monotonic()
    p = await start_poold(tmp_path, devnet, processes=2, ledger_url=url)
    print(f"{backend}: 2 workers ready in {time.monotonic() - t0:.2f} s")
    try:
        assert p.count(r"worker \d ready") == 2
        clients = [await subscribe(p) for _ in range(40)]
        en1s = [en1 for _, en1 in clients]
        assert len(set(en1s)) == len(en1s), "an extranonce1 was handed out twice"
        assert {en1[0] for en1 in en1s} == {INSTANCE}
        spread = {w: sum(worker_of(e) == w for e in en1s) for w in (0, 1)}
        print(f"{backend}: 40 connections over the workers: {spread}")
        assert spread[0] > 0 and spread[1] > 0 and sum(spread.values()) == 40
        # each worker's /metrics (API port + I) counts its own connections
        gauges: dict[int, float] = {}
        deadline = time.monotonic() + 15
        while gauges != {w: float(n) for w, n in spread.items()}:
            assert time.monotonic() < deadline, (gauges, spread)
            gauges = {w: await connections_gauge(p.api_port + w) for w in (0, 1)}
            await asyncio.sleep(0.2)
        for c, _ in clients:
            await c.close()

        by_worker = await miners_on_each_worker(p, new_address(), per_worker=1)
        miners = [m for ms in by_worker.values() for m in ms]
        await _until(lambda: all(m.stats.accepted >= 3 for m in miners), 60, "shares")
        await stop_all(miners)
        await asyncio.sleep(0.5)  # the ledgers' 100 ms flush window, with margin
        totals, blocks = await ledger_rows(p.ledger_url)
        for w, ms in by_worker.items():
            for m in ms:
                # every share the miner saw accepted, credited at its difficulty, in the one
                # ledger, whichever process accepted it
                assert totals.get(m.username, 0.0) >= m.stats.accepted_difficulty * (1 - 1e-9), (
                    w, m.username, totals)
        hashes = [h for h, _, _ in blocks]
        assert len(hashes) == len(set(hashes))
        finders = {name for _, _, name in blocks}
        assert {m.username for m in miners} <= finders, "blocks from both workers recorded"
    finally:
        took = await p.stop()
        if schema is not None:
            from tests.ledger.conftest import drop_pg_schema

            await drop_pg_schema(schema[1], schema[2])
    assert p.proc.returncode == 0, p.tail()
    assert took < 10.0


async def test_killed_worker_restarts_and_sigterm_stops_all(devnet: Any,
                                                            tmp_path: Path) -> None:
    p = await start_poold(tmp_path, devnet, processes=2)
    miners: list[StratumMiner] = []
    try:
        by_worker = await miners_on_each_worker(p, new_address(), per_worker=1)
        miners = [m for ms in by_worker.values() for m in ms]
        victim = by_worker[1][0]
        pid = p.worker_pids()[1]
        connects, accepted = victim.connects, victim.stats.accepted
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: p.count(r"worker 1 ready") == 2, 60, "worker 1 restarted")
        restart_s = time.monotonic() - t0
        assert p.worker_pids()[1] != pid
        # the miner reconnects (to whichever worker the kernel picks) and mines on
        await _until(lambda: victim.connects > connects and victim.stats.accepted > accepted + 2,
                     60, "the miner back")
        print(f"worker 1 killed: restarted and ready again in {restart_s:.2f} s, miner back "
              f"after {time.monotonic() - t0:.2f} s")
        await stop_all(miners)
        pids = list(p.worker_pids().values())
        took = await p.stop()
        print(f"SIGTERM to the supervisor: all stopped in {took:.2f} s")
        assert took < 10.0, p.tail()
        assert p.proc.returncode == 0, p.tail()
        for wpid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(wpid, 0)
    finally:
        if p.proc.returncode is None:
            await stop_all(miners)
            await p.stop()


def alive(pid: int) -> bool:
    """A running process (a zombie, exited but not yet reaped by its new parent, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_workers_die_with_a_killed_supervisor(devnet: Any, tmp_path: Path) -> None:
    p = await start_poold(tmp_path, devnet, processes=2)
    pids = list(p.worker_pids().values())
    assert len(pids) == 2 and all(alive(pid) for pid in pids)
    p.proc.kill()  # no chance to forward anything: PR_SET_PDEATHSIG stops the workers
    await p.proc.wait()
    t0 = time.monotonic()
    await _until(lambda: not any(alive(pid) for pid in pids), 10, "orphaned workers to exit")
    print(f"supervisor killed: workers gone in {time.monotonic() - t0:.2f} s")
    with socket.socket() as s:  # and the Stratum port is free again
        s.bind(("127.0.0.1", p.port))


async def test_supervisor_speaks_sd_notify_forwards_sighup_and_watches_workers(
        devnet: Any, tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    got: list[tuple[float, str]] = []

    def on_datagram() -> None:
        got.append((time.monotonic(), notify.recv(4096).decode()))

    def received(field: str) -> bool:
        return any(field in msg.split("\n") for _, msg in got)

    loop = asyncio.get_running_loop()
    loop.add_reader(notify.fileno(), on_datagram)
    # 4 s: workers ping the supervisor every 2 s; one silent for 4 s is killed
    p = await start_poold(tmp_path / "sd", devnet, processes=2, env={
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "4000000"})
    try:
        await _until(lambda: received("READY=1"), 10, "READY=1")
        # READY only once both workers were ready (the log line precedes the datagram)
        assert p.count(r"\[worker \d\] poold.daemon: poold running") == 2
        await _until(lambda: received("WATCHDOG=1"), 10, "the supervisor's watchdog ping")

        # SIGHUP reaches every worker: each reloads the changed reloadable key
        cfg = tmp_path / "sd" / "poold.toml"
        cfg.write_text(cfg.read_text().replace("share_interval_s = 10", "share_interval_s = 7"))
        p.proc.send_signal(signal.SIGHUP)
        await _until(lambda: all(
            p.count(rf"\[worker {i}\] poold.daemon: config reloaded .*share_interval_s") == 1
            for i in (0, 1)), 10, "both workers reloaded")

        # a worker whose event loop stops (SIGSTOP) misses its pings: killed, restarted
        pid = p.worker_pids()[1]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        await _until(lambda: p.count(r"worker 1 ready") == 2, 30, "worker 1 replaced")
        print(f"stuck worker replaced in {time.monotonic() - t0:.2f} s (watchdog 4 s)")
        assert "worker 1 missed its watchdog" in p.text()
        assert p.worker_pids()[1] != pid
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        took = await p.stop()
        assert took < 10.0 and p.proc.returncode == 0, p.tail()
        assert received("STOPPING=1")
        # READY once: a restarted worker changes the STATUS, not the unit's readiness
        assert sum("READY=1" in msg.split("\n") for _, msg in got) == 1, got
    finally:
        loop.remove_reader(notify.fileno())
        notify.close()
        if p.proc.returncode is None:
            await p.stop()


async def test_workers_share_a_socket_activated_listener(devnet: Any, tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    try:
        p = await start_poold(tmp_path, devnet, processes=2, inherit=listener)
    finally:
        listener.close()  # the workers hold it now
    try:
        p.port = port
        # one accept queue, whichever worker's loop takes a connection first: not an even
        # hash like SO_REUSEPORT, so connect until both have sessions (40 at least)
        clients: list[tuple[StratumClient, bytes]] = []
        while len(clients) < 200 and (len(clients) < 40 or len(
                {worker_of(en1) for _, en1 in clients}) < 2):
            clients.append(await subscribe(p))
        en1s = [en1 for _, en1 in clients]
        assert len(set(en1s)) == len(en1s)
        spread = {w: sum(worker_of(e) == w for e in en1s) for w in (0, 1)}
        print(f"socket activation: {len(en1s)} connections over the workers: {spread}")
        assert spread[0] > 0 and spread[1] > 0, "both workers accept on the inherited socket"
        for c, _ in clients:
            await c.close()
        assert p.count(rf"\[worker \d\] poold.stratum.server: stratum listening on "
                       rf"127.0.0.1:{port}") == 2
    finally:
        await p.stop()
    assert p.proc.returncode == 0, p.tail()


async def test_a_config_error_in_the_workers_stops_the_supervisor(devnet: Any,
                                                                  tmp_path: Path) -> None:
    # found only when a worker builds its pool (the coinbase tag cannot fit): exit 2 from the
    # workers, and the supervisor gives up with exit 2 instead of restarting them forever
    cfg = write_config(tmp_path, devnet, instance_id=INSTANCE, port=free_port(),
                       api_port=free_ports(2), ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}")
    cfg.write_text(cfg.read_text().replace('"/poold-mp/"', '"' + "x" * 120 + '"'))
    proc = await asyncio.create_subprocess_exec(
        *poold_command(cfg, args=["--processes", "2"]), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text
    assert "pool.coinbase_tag" in text and "exited with a config error" in text, text
    assert "restarting" not in text, text


async def test_two_instances_one_postgres(devnet: Any, tmp_path: Path) -> None:
    from poold.ledger import Ledger, LedgerConfig
    from tests.ledger.conftest import drop_pg_schema

    url, base, schema = await pg_url()
    a: Poold | None = None
    b: Poold | None = None
    miners: list[StratumMiner] = []
    try:
        a = await start_poold(tmp_path / "a", devnet, instance_id=3, ledger_url=url,
                              payout="pplns")
        b = await start_poold(tmp_path / "b", devnet, instance_id=4, ledger_url=url,
                              payout="pplns")
        prefixes = set()
        for inst, acct in ((a, "alice"), (b, "bob")):
            c, en1 = await subscribe(inst)
            prefixes.add(en1[0])
            await c.close()
            m = StratumMiner(inst.host, inst.port, f"{acct}.rig", hashrate_hs=HASHRATE,
                             mode="rate")
            setattr(m, "_task", asyncio.create_task(m.run()))  # noqa: B010
            miners.append(m)
        assert prefixes == {3, 4}, "distinct instance_id, distinct extranonce prefix"
        await _until(lambda: all(m.stats.accepted >= 3 for m in miners), 60, "shares")
        await stop_all(miners)
        await asyncio.sleep(0.5)

        ledger = Ledger(LedgerConfig(url=url, state_dir=str(tmp_path), payout="pplns",
                                     network="regtest", fee_address=new_address()))
        await ledger.start()
        try:
            # a window of difficulty 2 holds every test share: both instances' accounts in it
            weights = await ledger.window_weights(1.0)
        finally:
            await ledger.stop()
        assert set(weights) == {"alice", "bob"}, weights
        expect = {m.username.split(".")[0]: m.stats.accepted_difficulty for m in miners}
        for acct, diff in expect.items():
            assert weights[acct] >= diff * (1 - 1e-9), (acct, weights)

        _, blocks = await ledger_rows(url)
        hashes = [h for h, _, _ in blocks]
        assert len(hashes) == len(set(hashes)), "a block recorded twice in the audit log"
        assert {inst for _, inst, _ in blocks} == {3, 4}
        assert {w for _, _, w in blocks} == {"alice.rig", "bob.rig"}
    finally:
        for m in miners:
            m.stop()
        for running in (a, b):
            if running is not None:
                await running.stop()
        await drop_pg_schema(base, schema)


async def test_template_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is required in CI")
        pytest.skip("systemd-analyze not installed")
    poold = shutil.which("poold")
    assert poold is not None, "the poold console script must be installed"
    unit = (ROOT / "deploy" / "systemd" / "poold@.service").read_text()
    assert "--worker-index %i" in unit
    (tmp_path / "poold@.service").write_text(unit.replace("/opt/poold/bin/poold", poold))
    proc = await asyncio.create_subprocess_exec(
        analyze, "verify", str(tmp_path / "poold@0.service"), cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "poold" not in err.decode(), err.decode()
