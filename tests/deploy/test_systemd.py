"""systemd: the units pass `systemd-analyze verify`; sd_notify and socket activation work on real
sockets."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from poold.systemd import Notifier, listen_sockets

DEPLOY = Path(__file__).parents[2] / "deploy" / "systemd"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI")
        pytest.skip(f"{tool} not installed")
    return path


INSTALLED = Path("/opt/poold/bin/poold")  # README "Running poold": the documented install
UNITS = ("poold.service", "poold@.service")


def _verify(analyze: str, paths: list[Path]) -> None:
    out = subprocess.run([analyze, "verify", *map(str, paths)], capture_output=True, text=True,
                         check=False, cwd=paths[0].parent)
    assert out.returncode == 0, out.stderr
    assert "poold" not in out.stderr, out.stderr


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = need("systemd-analyze")
    poold = shutil.which("poold")
    assert poold is not None, "the poold console script must be installed"
    # verify checks that ExecStart exists: point it at this machine's console script.
    for name in (*UNITS, "poold.socket"):
        text = (DEPLOY / name).read_text()
        (tmp_path / name).write_text(text.replace(str(INSTALLED), poold))
    _verify(analyze, [tmp_path / "poold.service", tmp_path / "poold.socket"])
    _verify(analyze, [tmp_path / "poold@0.service"])


def test_units_verify_unchanged_on_the_installed_layout(tmp_path: Path) -> None:
    # .ci/run installs poold as README says (a virtualenv at /opt/poold); the units as shipped
    # must then verify without any edit.
    analyze = need("systemd-analyze")
    if not os.access(INSTALLED, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{INSTALLED} missing: .ci/run installs poold there, as README says")
        pytest.skip(f"{INSTALLED} not installed (skipped because CI is not set)")
    for name in (*UNITS, "poold.socket"):
        shutil.copy(DEPLOY / name, tmp_path / name)
    _verify(analyze, [tmp_path / "poold.service", tmp_path / "poold.socket"])
    _verify(analyze, [tmp_path / "poold@0.service"])
    version = subprocess.run([str(INSTALLED), "--version"], capture_output=True, text=True,
                             check=True)
    assert version.stdout.startswith("poold ")


def test_units_and_readme_agree_on_the_binary() -> None:
    readme = (DEPLOY.parents[1] / "README.md").read_text()
    assert "python3 -m venv /opt/poold" in readme and "/opt/poold/bin/pip install" in readme
    for name in UNITS:
        execs = [line for line in (DEPLOY / name).read_text().splitlines()
                 if line.startswith("ExecStart=")]
        assert execs and all(e.startswith(f"ExecStart={INSTALLED} run ") for e in execs), execs


def test_unit_hardening_is_present() -> None:
    unit = (DEPLOY / "poold.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "DynamicUser=yes", "StateDirectory=poold",
                 "ConfigurationDirectory=poold", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=\n",
                 "RestrictAddressFamilies=", "SystemCallFilter=@system-service",
                 "MemoryDenyWriteExecute=yes"):
        assert line in unit, line
    nofile = int(unit.split("LimitNOFILE=")[1].split()[0])
    assert nofile >= 100_000


def test_notifier_sends_ready_and_watchdog(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000",
                  "WATCHDOG_PID": str(os.getpid())})
    try:
        assert n.enabled
        assert n.watchdog_interval_s == 2.0
        assert n.ready("serving")
        assert server.recv(256) == b"READY=1\nSTATUS=serving"
        assert n.watchdog()
        assert server.recv(256) == b"WATCHDOG=1"
    finally:
        n.close()
        server.close()


def test_notifier_is_a_noop_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled
    assert not n.ready()
    assert n.watchdog_interval_s is None


def test_watchdog_for_another_pid_is_ignored() -> None:
    n = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n.watchdog_interval_s is None


def test_listen_sockets_takes_passed_fds() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    fd = 3
    saved = None
    try:
        saved = os.dup(fd)
    except OSError:
        saved = None
    os.dup2(listener.fileno(), fd)
    try:
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "stratum"}
        socks = listen_sockets(env)
        assert list(socks) == ["stratum"]
        assert socks["stratum"].getsockname() == listener.getsockname()
        socks["stratum"].detach()
    finally:
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)
        listener.close()


def test_listen_sockets_for_another_pid_is_empty() -> None:
    assert listen_sockets({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == {}
