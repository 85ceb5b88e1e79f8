"""The operator CLI against a real admin API over HTTP (the CLI runs in a thread, as the sync
client it is, while the API serves on the test's event loop)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from poold.api import AdminApi
from poold.cli import main
from poold.metrics import Metrics
from tests.test_api import READ, WRITE, FakeBackend


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
async def served() -> tuple[str, FakeBackend, AdminApi]:
    backend = FakeBackend()
    api = AdminApi(backend, Metrics().registry, read_tokens=[READ], write_tokens=[WRITE])
    await api.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{api.port}", backend, api  # type: ignore[misc]
    await api.stop()


async def test_status_and_fleet_cap(
    served: tuple[str, FakeBackend, AdminApi], capsys: pytest.CaptureFixture[str],
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, backend, _ = served
    monkeypatch.setenv("POOLD_API_TOKEN", READ)
    code, out, _ = await cli(capsys, "status", "--api", url)
    assert code == 0
    assert "hashrate     1.00 PH/s" in out
    token = tmp_path / "token"
    token.write_text(WRITE + "\n")
    code, out, _ = await cli(capsys, "fleet", "--api", url, "--token-file", str(token),
                             "cap", "r1", "12.5")
    assert code == 0
    assert backend.calls == [("cap", ("r1", 12.5))]


async def test_write_with_read_token_fails_clearly(
    served: tuple[str, FakeBackend, AdminApi], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, backend, _ = served
    monkeypatch.setenv("POOLD_API_TOKEN", READ)
    code, _, err = await cli(capsys, "fleet", "--api", url, "curtail", "r1")
    assert code == 1
    assert "HTTP 403" in err
    assert READ not in err
    assert backend.calls == []


async def test_unreachable_daemon_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await cli(capsys, "workers", "--api", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot reach poold" in err


async def test_bad_since_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await cli(capsys, "blocks", "--api", "http://127.0.0.1:9", "--since", "soon")
    assert code == 1
    assert "--since" in err


# -- golden output: what an operator reads ------------------------------------------------------

NOW = 1_800_000_000.0


class SiteBackend(FakeBackend):
    """A backend answering with the daemon's real field names and realistic values."""

    def pool(self) -> dict[str, Any]:
        return {
            "stratum": [["0.0.0.0", 3333]], "connections": 2, "hashrate_hs": 1.30966e15,
            "shares": {"accepted": 1520, "rejected": {"STALE_JOB": 3, "DUPLICATE": 1}},
            "template": {"height": 871234, "prevhash": "00" * 32, "transactions": 3120,
                         "coinbase_value": 318_750_000, "age_s": 0.5958452224731445},
            "jobs": 4,
            "blocks_submitted": [
                {"hash_hex": "0000000000000000000112" + "ab" * 21, "height": 871233,
                 "results": {"devnet": None, "backup": "duplicate"}, "verified": True}],
            "nodes": [{"name": "devnet", "up": True, "tip_hex": "00" * 32, "zmq": "ok",
                       "last_error": None},
                      {"name": "backup", "up": False, "tip_hex": None, "zmq": "down",
                       "last_error": "connection refused"}],
            "uptime_s": 7384.2,
        }

    def workers(self) -> Sequence[dict[str, Any]]:
        return [
            {"worker": "bc1qminer.rig01", "account": "bc1qminer", "user_agent": "bmminer/2.0",
             "peer": "10.0.0.11", "extranonce1": "00000001", "difficulty": 65536.0,
             "accepted": 120, "accepted_difficulty": 7864320.0, "invalid_streak": 0,
             "curtailed": False, "connected_at": NOW - 3 * 3600 - 5, "last_activity": NOW - 12.4},
            {"worker": "bc1qminer.rig2", "account": "bc1qminer", "user_agent": "",
             "peer": "10.0.0.12", "extranonce1": "00000002", "difficulty": 1024.5,
             "accepted": 3, "accepted_difficulty": 3073.5, "invalid_streak": 0,
             "curtailed": True, "connected_at": NOW - 65, "last_activity": NOW - 65},
        ]

    async def blocks(self, since: float | None) -> Sequence[dict[str, Any]]:
        return [{"height": 871233, "hash": "0000000000000000000112" + "ab" * 21,
                 "time": "2027-01-15T08:00:00Z", "finder_worker": "bc1qminer.rig01",
                 "reward_sat": 318_750_000, "status": "confirmed", "confirmations": 12},
                {"height": 871240, "hash": "0000000000000000000007" + "cd" * 21,
                 "time": "2027-01-15T09:10:00Z", "finder_worker": "bc1qminer.rig2",
                 "reward_sat": 312_512_345, "status": "submitted", "confirmations": 0}]

    def racks(self) -> Sequence[dict[str, Any]]:
        return [{"id": "rack000", "container": "c1", "power_w": 28_513.4, "cap_w": 30_000.0,
                 "cap_source": "config", "config_cap_w": 30_000.0, "hashrate_hs": 1.30966e15,
                 "state": "ok", "over_cap_s": 0.0, "over_cap_allowed_s": 60.0, "miners": 10,
                 "asleep": 0},
                {"id": "rack001", "container": "c1", "power_w": 19_002.0, "cap_w": 18_000.0,
                 "cap_source": "api", "config_cap_w": 30_000.0, "hashrate_hs": 8.5e14,
                 "state": "over_cap", "over_cap_s": 12.0, "over_cap_allowed_s": 60.0,
                 "miners": 10, "asleep": 2}]

    def miners(self, rack: str | None) -> Sequence[dict[str, Any]]:
        return [{"id": "m001", "rack": "rack000", "host": "10.0.0.11:80", "driver": "braiins",
                 "model": "S19j Pro", "worker": "bc1qminer.rig01", "nameplate_w": 3250.0,
                 "telemetry": {"power_w": 2950.0, "hashrate_ths": 98.7, "target_w": 3000.0,
                               "temps_c": [61.0, 64.5, 63.0], "fans_rpm": [4200]},
                 "telemetry_age_s": 3.2, "stale": False, "faulty": False,
                 "not_following": False, "commanded_w": 3000.0, "asleep": False,
                 "curtailed": False, "pool_hashrate_hs": 9.61e13},
                {"id": "m002", "rack": "rack000", "host": "10.0.0.12:4028", "driver": "luxos",
                 "model": None, "worker": "", "nameplate_w": 3250.0, "telemetry": None,
                 "telemetry_age_s": None, "stale": True, "faulty": True,
                 "not_following": False, "commanded_w": None, "asleep": True,
                 "curtailed": False, "pool_hashrate_hs": None}]


@pytest.fixture
async def site(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    from poold import client_cli

    monkeypatch.setattr(client_cli, "now", lambda: NOW)
    monkeypatch.setenv("POOLD_API_TOKEN", READ)
    api = AdminApi(SiteBackend(), Metrics().registry, read_tokens=[READ], write_tokens=[WRITE])
    await api.start("127.0.0.1", 0)
    yield f"http://127.0.0.1:{api.port}"
    await api.stop()


GOLDEN = Path(__file__).parent / "golden"  # reviewed by eye: what an operator reads


@pytest.mark.parametrize(("argv", "golden"), [
    (["status"], "status.txt"),
    (["workers"], "workers.txt"),
    (["blocks"], "blocks.txt"),
    (["fleet", "ls", "--miners"], "fleet-ls-miners.txt"),
])
async def test_golden_output(site: str, capsys: pytest.CaptureFixture[str], argv: list[str],
                             golden: str) -> None:
    code, out, err = await cli(capsys, *argv, "--api", site)
    assert code == 0, err
    assert out == (GOLDEN / golden).read_text(), "\n" + out


@pytest.mark.parametrize("argv", [["status"], ["workers"], ["blocks"], ["fleet", "ls"],
                                  ["fleet", "ls", "--miners"], ["audit", "export"]])
async def test_every_read_command_has_json(site: str, capsys: pytest.CaptureFixture[str],
                                           argv: list[str]) -> None:
    code, out, err = await cli(capsys, *argv, "--api", site, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc  # the API's own data, not text
    if argv == ["blocks"]:  # the API's field names, as sent
        assert {"finder_worker", "reward_sat"} <= set(doc[0])


@pytest.mark.parametrize("argv", [
    ["--api", "{url}", "--token-file", "{token}", "fleet", "ls"],
    ["fleet", "--api", "{url}", "--token-file", "{token}", "ls"],
    ["fleet", "ls", "--api", "{url}", "--token-file", "{token}"],
    ["fleet", "--api", "{url}", "ls", "--token-file", "{token}"],
])
async def test_global_options_before_or_after_the_subcommand(
    site: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, argv: list[str],
) -> None:
    monkeypatch.delenv("POOLD_API_TOKEN")  # only the token file can authorize the read
    token = tmp_path / "token"
    token.write_text(READ + "\n")
    code, out, err = await cli(capsys, *[a.format(url=site, token=token) for a in argv])
    assert code == 0, err
    assert out.startswith("RACK "), out


async def test_blocks_output_survives_a_closed_pipe(tmp_path: Path) -> None:
    # `poold blocks | head -1`: the reader goes away; no traceback, exit as by SIGPIPE.
    class ManyBlocks(SiteBackend):
        async def blocks(self, since: float | None) -> Sequence[dict[str, Any]]:
            row = (await super().blocks(since))[0]
            return [{**row, "height": h} for h in range(5000)]  # far more than a pipe holds

    api = AdminApi(ManyBlocks(), Metrics().registry)
    await api.start("127.0.0.1", 0)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "poold", "blocks", "--api", f"http://127.0.0.1:{api.port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.startswith(b"HEIGHT")
        proc.stdout.feed_eof()
        transport = proc._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(1).close()  # the reader's end closes, as `head` exits
        err = await asyncio.wait_for(proc.stderr.read(), 30)
        code = await asyncio.wait_for(proc.wait(), 30)
    finally:
        await api.stop()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert code == 141, (code, err.decode())


async def test_fleet_clear_posts_to_the_miner_clear_route(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from aiohttp import web

    seen: list[tuple[str, str, str | None]] = []

    async def clear(request: web.Request) -> web.Response:
        seen.append((request.method, request.match_info["miner"],
                     request.headers.get("Authorization")))
        return web.json_response({"miner": request.match_info["miner"], "cleared": True})

    app = web.Application()
    app.router.add_post("/api/v1/miners/{miner}/clear", clear)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    token = tmp_path / "token"
    token.write_text(WRITE)
    try:
        code, out, err = await cli(capsys, "fleet", "clear", "m 001", "--api",
                                   f"http://127.0.0.1:{port}", "--token-file", str(token))
        assert code == 0, err
        assert out == "clear m 001: ok\n"
        code, out, _ = await cli(capsys, "fleet", "clear", "m2", "--json", "--api",
                                 f"http://127.0.0.1:{port}", "--token-file", str(token))
        assert json.loads(out) == {"miner": "m2", "cleared": True}
    finally:
        await runner.cleanup()
    assert seen == [("POST", "m 001", f"Bearer {WRITE}"), ("POST", "m2", f"Bearer {WRITE}")]
