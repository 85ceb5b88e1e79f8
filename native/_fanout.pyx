# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: embedsignature=True
"""Native batch send for the job fan-out (poold._fanout): one non-blocking send() per socket.

poold.stratum.fanout selects it, or its pure-Python twin, and documents the contract; the two must
agree (tests/stratum/test_fanout_send.py). The GIL stays held: every send() is non-blocking
(MSG_DONTWAIT), so the loop never waits, and releasing the GIL would let another thread take it
and delay the rest of the fan-out by up to a switch interval (5 ms) when it is given back.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno


cdef extern from *:
    """
    #include <errno.h>
    #include <sys/types.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0  /* no such flag here: Python ignores SIGPIPE anyway */
    #endif
    #ifndef MSG_DONTWAIT
    #define MSG_DONTWAIT 0  /* asyncio's sockets are non-blocking already */
    #endif
    """
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags) nogil
    int MSG_NOSIGNAL
    int MSG_DONTWAIT
    int EWOULDBLOCK


def send_many(list fds not None, list bufs not None):
    """Send bufs[i] on socket fds[i] for every i, each with one non-blocking send().

    Returns [(i, sent)] for every i not sent completely, in order of i: sent >= 0 is how many
    bytes went out (the caller queues the rest), sent < 0 is -errno of a failed send.
    """
    cdef Py_ssize_t n = len(fds)
    cdef Py_ssize_t i, size
    cdef ssize_t sent
    cdef int fd, err
    cdef bytes data
    if len(bufs) != n:
        raise ValueError(f"{n} sockets but {len(bufs)} buffers")
    out = []
    for i in range(n):
        fd = fds[i]
        data = bufs[i]
        if data is None:
            raise TypeError(f"buffer {i} is None")
        size = PyBytes_GET_SIZE(data)
        while True:
            sent = c_send(fd, PyBytes_AS_STRING(data), <size_t>size, MSG_DONTWAIT | MSG_NOSIGNAL)
            if sent >= 0:
                break
            err = errno
            if err != EINTR:
                break
        if sent == size:
            continue
        if sent >= 0:
            out.append((i, sent))
        elif err == EAGAIN or err == EWOULDBLOCK:
            out.append((i, 0))
        else:
            out.append((i, -err))
    return out
