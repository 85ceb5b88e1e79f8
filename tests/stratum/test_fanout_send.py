"""send_many, native and pure: full, partial and failed sends on real socket pairs."""

from __future__ import annotations

import errno
import importlib
import os
import socket
from collections.abc import Iterator

import pytest

from poold.stratum.fanout import SendMany, pure_send_many
from tests.ci import missing


def _native() -> SendMany | None:
    try:
        module = importlib.import_module("poold._fanout")
    except ImportError:
        return None
    fn: SendMany = module.send_many
    return fn


def _absent(fds: list[int], msgs: list[bytes]) -> list[tuple[int, int]]:
    missing("poold._fanout not built")


SENDERS = [pytest.param(pure_send_many, id="pure"), pytest.param(_native() or _absent, id="native")]


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def _pair(made: list[tuple[socket.socket, socket.socket]], sndbuf: int = 0) -> socket.socket:
    a, b = socket.socketpair()
    a.setblocking(False)
    if sndbuf:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    made.append((a, b))
    return a


def _drain(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("send_many", SENDERS)
def test_full_partial_and_failed_sends(
    send_many: SendMany, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    small = b"n" * 300
    big = os.urandom(1 << 20)  # far more than a 4 KiB socket buffer takes
    ok1 = _pair(pairs)
    tiny = _pair(pairs, sndbuf=4096)
    closed = _pair(pairs)
    pairs[-1][1].close()  # the peer is gone: EPIPE
    ok2 = _pair(pairs)
    bad_fd = os.open(os.devnull, os.O_RDONLY)
    os.close(bad_fd)  # a descriptor that is not open: EBADF
    fds = [ok1.fileno(), tiny.fileno(), closed.fileno(), bad_fd, ok2.fileno()]
    result = send_many(fds, [small, big, small, small, small])
    assert [i for i, _ in result] == [1, 2, 3]
    (_, partial), (_, epipe), (_, ebadf) = result
    assert 0 < partial < len(big)
    assert epipe == -errno.EPIPE
    assert ebadf == -errno.EBADF
    assert _drain(pairs[0][1]) == small
    assert _drain(pairs[3][1]) == small
    assert _drain(pairs[1][1]) == big[:partial]  # exactly what it reported, nothing more


@pytest.mark.parametrize("send_many", SENDERS)
def test_full_socket_buffer_reports_zero(
    send_many: SendMany, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    a = _pair(pairs, sndbuf=4096)
    filler = b"f" * (1 << 20)
    while True:
        try:
            a.send(filler)
        except BlockingIOError:
            break
    assert send_many([a.fileno()], [b"x" * 100]) == [(0, 0)]


@pytest.mark.parametrize("send_many", SENDERS)
def test_argument_errors(send_many: SendMany) -> None:
    with pytest.raises(ValueError):
        send_many([1, 2], [b"x"])
    assert send_many([], []) == []


def test_native_and_pure_agree(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    native = _native()
    if native is None:
        missing("poold._fanout not built")
    msgs = [os.urandom(n) for n in (1, 200, 5000, 300_000)]
    results = []
    received = []
    for send_many in (native, pure_send_many):
        start = len(pairs)
        socks = [_pair(pairs, sndbuf=8192 if len(m) > 10_000 else 0) for m in msgs]
        pairs[start + 1][1].close()
        results.append([(i, n > 0, n == 0, n < 0) for i, n in send_many(
            [s.fileno() for s in socks], msgs)])
        received.append([_drain(pairs[start + k][1]) for k in (0, 2)])
    assert results[0] == results[1] == [(1, False, False, True), (3, True, False, False)]
    assert received[0] == received[1] == [msgs[0], msgs[2]]
    with pytest.raises(TypeError):
        native([0], ["not bytes"])  # type: ignore[list-item]
