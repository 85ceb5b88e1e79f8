"""systemd integration without libsystemd: sd_notify (READY, WATCHDOG, STOPPING, STATUS) and
socket activation (LISTEN_FDS), per sd_notify(3) and sd_listen_fds(3).

Both are plain socket operations, so they need no extra package. `Notifier.send` never blocks:
the notify socket is a datagram socket and a full queue drops the message (systemd treats a
missing WATCHDOG as a hang, which is exactly what a stuck loop should produce).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("poold.systemd")

SD_LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages when run under systemd (NOTIFY_SOCKET set); no-op otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._addr = env.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self._addr:
            if self._addr.startswith("@"):  # abstract namespace
                self._addr = "\0" + self._addr[1:]
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval_s: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # Ping at half the timeout, as sd_watchdog_enabled(3) recommends.
            self.watchdog_interval_s = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._addr)
        except (BlockingIOError, OSError) as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *((f"STATUS={status}",) if status else ()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def listen_sockets(
    env: Mapping[str, str] | None = None, *, unset: bool = True
) -> dict[str, socket.socket]:
    """Sockets passed by systemd socket activation, by FileDescriptorName (or "fd<N>").

    Returns {} when not socket-activated. With `unset`, LISTEN_* are removed from os.environ so
    child processes do not inherit them (as sd_listen_fds(1) does).
    """
    env = os.environ if env is None else env
    pid = env.get("LISTEN_PID", "")
    count = env.get("LISTEN_FDS", "")
    if not count.isdigit() or (pid and pid != str(os.getpid())):
        return {}
    names = env.get("LISTEN_FDNAMES", "").split(":")
    out: dict[str, socket.socket] = {}
    for i in range(int(count)):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) and names[i] else f"fd{fd}"
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        os.set_inheritable(fd, False)
        out[name] = sock
    if unset and env is os.environ:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    return out
