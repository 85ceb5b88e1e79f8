"""Loopback ports for servers started a moment later: the demo's pool and the tests' servers.

Below the kernel's ephemeral range: bind(0) picks from that range, where every outgoing
connection on the machine takes its local port, and on a busy machine (tens of thousands of
sockets in TIME_WAIT) one took the port before the server bound it. Never the same port twice in
one process (the kernel may hand a just-closed port out again).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_GIVEN: set[int] = set()  # ports this process handed out: never the same one twice


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default range is 32768-60999


def free_port() -> int:
    """A loopback port free now (see the module docstring)."""
    rng = random.Random()
    low = _ephemeral_low()
    for _ in range(500):
        port = rng.randrange(10_000, max(10_001, low))
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:  # nothing free below the range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> int:
    """A base port with n consecutive free ports (the admin APIs of `--processes n`: base + I),
    below the ephemeral range like `free_port`."""
    rng = random.Random()
    low = _ephemeral_low()
    for _ in range(500):
        base = rng.randrange(10_000, max(10_001, low - n))
        if any(base + i in _GIVEN for i in range(n)):
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        _GIVEN.update(base + i for i in range(n))
        return base
    raise AssertionError(f"no run of {n} free loopback ports below {low}")
