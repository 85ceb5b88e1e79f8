"""The operator CLI against a real admin API over HTTP (the CLI runs in a thread, as the sync
client it is, while the API serves on the test's event loop)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

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
    assert "hashrate_hs" in out
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


async def test_audit_export_csv_and_json(
    served: tuple[str, FakeBackend, AdminApi], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, backend, _ = served
    monkeypatch.setenv("POOLD_API_TOKEN", READ)
    code, out, _ = await cli(capsys, "audit", "--api", url, "export", "--format", "csv",
                             "--since", "2026-01-01")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows == [{"height": "101"}]
    assert backend.calls[0][0] == "blocks" and backend.calls[0][1] > 1.7e9
    code, out, _ = await cli(capsys, "audit", "--api", url, "export", "--format", "json")
    assert json.loads(out) == [{"height": 101}]


async def test_unreachable_daemon_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await cli(capsys, "workers", "--api", "http://127.0.0.1:9")
    assert code == 1
    assert "cannot reach poold" in err


async def test_bad_since_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await cli(capsys, "blocks", "--api", "http://127.0.0.1:9", "--since", "soon")
    assert code == 1
    assert "--since" in err
