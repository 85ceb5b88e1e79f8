# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True, embedsignature=True
"""Native Stratum V1 share check (poold._sharecore): Python objects in, one C call per share.

The arithmetic is in share.c and sha256*.c; this module only validates and decodes the arguments
(the miner's hex strings are decoded in C, without intermediate Python objects) and owns the
per-job and per-session memory. poold.bitcoin.sharecore selects it, or its pure-Python twin, and
documents the API; the two must agree bit for bit (tests/bitcoin/test_sharecore.py).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy


cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    bint PyLong_Check(object o)
    bint PyTuple_CheckExact(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1


cdef extern from "sha256.h":
    ctypedef struct sha256_impl:
        const char *name
    const sha256_impl *sha256_active
    int sha256_shani_available()
    int sha256_select(const char *name)


cdef extern from "share.h":
    enum:
        SC_MAX_EN2
    ctypedef struct sc_job:
        uint32_t version
        uint32_t nbits_w
        uint32_t prev_w[8]
        uint8_t network_target[32]
        size_t branch_len
        const uint32_t *branch_w
    ctypedef struct sc_session:
        pass
    ctypedef struct sc_submit:
        uint8_t en2[SC_MAX_EN2]
        uint32_t ntime
        uint32_t nonce
        uint32_t version
    ctypedef struct sc_result:
        uint8_t hash[32]
        int meets_share
        int meets_network
    int sc_hex_decode(const char *s, size_t n_chars, uint8_t *out) nogil
    int sc_hex_u32(const char *s, size_t n_chars, uint32_t *out) nogil
    size_t sc_tail_size(size_t prefix_len, size_t en2_size, size_t coinb2_len) nogil
    void sc_session_init(sc_session *sess, const uint8_t *prefix, size_t prefix_len,
                         size_t en2_size, const uint8_t *coinb2, size_t coinb2_len,
                         uint8_t *tail_buf) nogil
    void sc_check(const sc_job *job, const sc_session *sess, const sc_submit *sub,
                  const uint8_t *share_target, sc_result *res) nogil
    void sc_check_many(const sc_job *job, const sc_session *sess, const sc_submit *subs,
                       size_t n, const uint8_t *share_target, sc_result *res) nogil
    void sc_sha256(const uint8_t *data, size_t len, uint8_t *out) nogil
    void sc_sha256_pair(const uint8_t *a, const uint8_t *b, size_t len, uint8_t *out_a,
                        uint8_t *out_b) nogil


# Replaced by bind_error(): poold.bitcoin.sharecore owns the exception class so that both cores
# raise the same type, and it must exist before this module is imported (no import cycle).
cdef object _ShareFormatError = ValueError

# Below this many shares a batch keeps the GIL: releasing it costs more than it frees.
cdef Py_ssize_t _NOGIL_BATCH = 16

# Field codes returned by _decode_submit (0 = fine).
cdef enum:
    F_OK = 0
    F_EXTRANONCE2 = 1
    F_NTIME = 2
    F_NONCE = 3
    F_VERSION_BITS = 4

cdef tuple _FIELDS = (None, "extranonce2", "ntime", "nonce", "version_bits")

MAX_EXTRANONCE2_SIZE = SC_MAX_EN2

# The fastest implementation this CPU supports; POOLD_SHARECORE_PORTABLE is applied by the
# Python selector through set_impl().
sha256_select(b"auto")


def bind_error(cls):
    """Make the native core raise `cls(field)` / `cls(field, index)` for malformed submits."""
    global _ShareFormatError
    _ShareFormatError = cls


def impl():
    """The SHA-256 implementation in use: "shani" or "portable"."""
    return sha256_active.name.decode("ascii")


def shani_available():
    """True if this CPU and this build can run the SHA-NI path."""
    return bool(sha256_shani_available())


def set_impl(str name):
    """Select "shani", "portable" or "auto"; ValueError if unknown or unsupported here."""
    if sha256_select(name.encode("ascii")) != 0:
        raise ValueError(f"SHA-256 implementation {name!r} is not available on this machine")


def sha256(bytes data not None):
    """SHA-256 with the active implementation (for tests against hashlib)."""
    cdef uint8_t out[32]
    sc_sha256(<const uint8_t *>PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data), out)
    return PyBytes_FromStringAndSize(<char *>out, 32)


def sha256_pair(bytes a not None, bytes b not None):
    """SHA-256 of two messages of equal length through the two-stream path (for tests)."""
    cdef uint8_t out_a[32]
    cdef uint8_t out_b[32]
    if PyBytes_GET_SIZE(a) != PyBytes_GET_SIZE(b):
        raise ValueError("sha256_pair needs two messages of the same length")
    sc_sha256_pair(<const uint8_t *>PyBytes_AS_STRING(a), <const uint8_t *>PyBytes_AS_STRING(b),
                   <size_t>PyBytes_GET_SIZE(a), out_a, out_b)
    return (PyBytes_FromStringAndSize(<char *>out_a, 32),
            PyBytes_FromStringAndSize(<char *>out_b, 32))


cdef inline const char *_ascii(object s, Py_ssize_t *n):
    """Pointer to the characters of an ASCII str (NULL for anything else). CPython stores an
    ASCII str as one byte per character, so this is a view, not a copy."""
    if not PyUnicode_Check(s) or not PyUnicode_IS_ASCII(s):
        return NULL
    n[0] = PyUnicode_GET_LENGTH(s)
    return <const char *>PyUnicode_DATA(s)


cdef inline bint _u32(object v, uint32_t *out) except -1:
    """An int in 0..0xFFFFFFFF (bool included, as everywhere in Python), without Python-level
    comparisons on the per-share path."""
    cdef int overflow = 0
    cdef long long x
    if not PyLong_Check(v):
        return False
    x = PyLong_AsLongLongAndOverflow(v, &overflow)
    if overflow != 0 or x < 0 or x > 0xFFFFFFFF:
        return False
    out[0] = <uint32_t>x
    return True


cdef inline uint32_t _load_be32(const uint8_t *p) noexcept:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef class JobCore:
    """Per job, immutable: header fields, merkle branch and the coinbase around the extranonces.

    JobCore(coinb1, coinb2, merkle_branch, version, prevhash, nbits, network_target); see
    poold.bitcoin.sharecore for the contract.
    """

    cdef sc_job job
    cdef uint32_t *branch_w
    cdef readonly bytes coinb1
    cdef readonly bytes coinb2

    def __cinit__(self, bytes coinb1 not None, bytes coinb2 not None, merkle_branch,
                  version, bytes prevhash not None, nbits, network_target):
        cdef Py_ssize_t i, j, n
        cdef const uint8_t *p
        cdef bytes b
        self.branch_w = NULL
        if not _u32(version, &self.job.version):
            raise ValueError("version must be an int in 0..0xFFFFFFFF")
        cdef uint32_t bits
        if not _u32(nbits, &bits):
            raise ValueError("nbits must be an int in 0..0xFFFFFFFF")
        self.job.nbits_w = ((bits & 0xFF) << 24) | ((bits & 0xFF00) << 8) | \
            ((bits >> 8) & 0xFF00) | (bits >> 24)
        if PyBytes_GET_SIZE(prevhash) != 32:
            raise ValueError("prevhash must be 32 bytes")
        p = <const uint8_t *>PyBytes_AS_STRING(prevhash)
        for i in range(8):
            self.job.prev_w[i] = _load_be32(p + 4 * i)
        if not PyLong_Check(network_target) or not 0 <= network_target < (1 << 256):
            raise ValueError("network_target must be an int in 0..2**256-1")
        target = (<object>network_target).to_bytes(32, "little")
        memcpy(self.job.network_target, PyBytes_AS_STRING(target), 32)

        branch = tuple(merkle_branch)
        n = len(branch)
        for i in range(n):
            b = branch[i] if type(branch[i]) is bytes else None
            if b is None or PyBytes_GET_SIZE(b) != 32:
                raise ValueError(f"merkle_branch[{i}] must be 32 bytes")
        if n:
            self.branch_w = <uint32_t *>PyMem_Malloc(n * 32)
            if self.branch_w == NULL:
                raise MemoryError()
        for i in range(n):
            p = <const uint8_t *>PyBytes_AS_STRING(branch[i])
            for j in range(8):
                self.branch_w[8 * i + j] = _load_be32(p + 4 * j)
        self.job.branch_len = n
        self.job.branch_w = self.branch_w
        self.coinb1 = coinb1
        self.coinb2 = coinb2

    def __dealloc__(self):
        PyMem_Free(self.branch_w)

    def session(self, bytes extranonce1 not None, extranonce2_size):
        """The per-(job, session) core: caches SHA-256 over coinb1 + extranonce1."""
        cdef SessionCore s
        cdef Py_ssize_t k
        if not PyLong_Check(extranonce2_size) or not 1 <= extranonce2_size <= SC_MAX_EN2:
            raise ValueError(f"extranonce2_size must be an int in 1..{SC_MAX_EN2}")
        k = extranonce2_size
        prefix = self.coinb1 + extranonce1
        s = SessionCore.__new__(SessionCore)
        s.owner = self
        s.extranonce1 = extranonce1
        s.extranonce2_size = k
        s.tail = <uint8_t *>PyMem_Malloc(
            sc_tail_size(<size_t>PyBytes_GET_SIZE(prefix), <size_t>k,
                         <size_t>PyBytes_GET_SIZE(self.coinb2)))
        if s.tail == NULL:
            raise MemoryError()
        sc_session_init(&s.sess, <const uint8_t *>PyBytes_AS_STRING(prefix),
                        <size_t>PyBytes_GET_SIZE(prefix), <size_t>k,
                        <const uint8_t *>PyBytes_AS_STRING(self.coinb2),
                        <size_t>PyBytes_GET_SIZE(self.coinb2), s.tail)
        return s

    @property
    def branch_length(self):
        return self.job.branch_len


cdef class SessionCore:
    """Per (job, session); made by JobCore.session(). Safe to share between threads."""

    cdef JobCore owner            # keeps job.branch_w alive
    cdef sc_session sess
    cdef uint8_t *tail
    cdef readonly bytes extranonce1
    cdef readonly Py_ssize_t extranonce2_size

    def __cinit__(self):
        self.tail = NULL

    def __init__(self):
        raise TypeError("SessionCore is made by JobCore.session()")

    def __dealloc__(self):
        PyMem_Free(self.tail)

    cdef int _decode(self, object en2, object ntime, object nonce, object vbits, uint32_t mask,
                     sc_submit *out):
        cdef const char *s
        cdef Py_ssize_t n
        cdef uint32_t bits
        s = _ascii(en2, &n)
        if s == NULL or n != 2 * self.extranonce2_size or sc_hex_decode(s, n, out.en2) != 0:
            return F_EXTRANONCE2
        s = _ascii(ntime, &n)
        if s == NULL or sc_hex_u32(s, n, &out.ntime) != 0:
            return F_NTIME
        s = _ascii(nonce, &n)
        if s == NULL or sc_hex_u32(s, n, &out.nonce) != 0:
            return F_NONCE
        if vbits is None:
            out.version = self.owner.job.version
        else:
            s = _ascii(vbits, &n)
            if s == NULL or sc_hex_u32(s, n, &bits) != 0 or (bits & ~mask) != 0:
                return F_VERSION_BITS
            out.version = (self.owner.job.version & ~mask) | (bits & mask)
        return F_OK

    def check(self, extranonce2_hex, ntime_hex, nonce_hex, version_bits_hex,
              version_mask, share_target_le32):
        """-> (header hash, internal order; meets share target; meets network target)."""
        cdef sc_submit sub
        cdef sc_result res
        cdef uint32_t mask
        cdef int code
        if not _u32(version_mask, &mask):
            raise ValueError("version_mask must be an int in 0..0xFFFFFFFF")
        if type(share_target_le32) is not bytes or PyBytes_GET_SIZE(share_target_le32) != 32:
            raise ValueError("share_target_le32 must be 32 bytes")
        code = self._decode(extranonce2_hex, ntime_hex, nonce_hex, version_bits_hex, mask, &sub)
        if code != F_OK:
            raise _ShareFormatError(_FIELDS[code])
        sc_check(&self.owner.job, &self.sess, &sub,
                 <const uint8_t *>PyBytes_AS_STRING(share_target_le32), &res)
        return (PyBytes_FromStringAndSize(<char *>res.hash, 32),
                res.meets_share != 0, res.meets_network != 0)

    def check_batch(self, submits, version_mask, share_target_le32):
        """check() for many (extranonce2, ntime, nonce, version_bits) tuples; hashed two at a
        time. A malformed submit raises ShareFormatError with .index set; nothing is returned."""
        cdef list items = submits if type(submits) is list else list(submits)
        cdef Py_ssize_t n = len(items), i
        cdef uint32_t mask
        cdef int code
        cdef sc_submit *subs
        cdef sc_result *res
        cdef const uint8_t *target
        cdef list out
        if not _u32(version_mask, &mask):
            raise ValueError("version_mask must be an int in 0..0xFFFFFFFF")
        if type(share_target_le32) is not bytes or PyBytes_GET_SIZE(share_target_le32) != 32:
            raise ValueError("share_target_le32 must be 32 bytes")
        if n == 0:
            return []
        target = <const uint8_t *>PyBytes_AS_STRING(share_target_le32)
        subs = <sc_submit *>PyMem_Malloc(n * sizeof(sc_submit))
        res = <sc_result *>PyMem_Malloc(n * sizeof(sc_result))
        try:
            if subs == NULL or res == NULL:
                raise MemoryError()
            for i in range(n):
                item = items[i]
                if PyTuple_CheckExact(item) and PyTuple_GET_SIZE(item) == 4:
                    code = self._decode(<object>PyTuple_GET_ITEM(item, 0),
                                        <object>PyTuple_GET_ITEM(item, 1),
                                        <object>PyTuple_GET_ITEM(item, 2),
                                        <object>PyTuple_GET_ITEM(item, 3), mask, &subs[i])
                else:
                    en2, ntime, nonce, vbits = item
                    code = self._decode(en2, ntime, nonce, vbits, mask, &subs[i])
                if code != F_OK:
                    raise _ShareFormatError(_FIELDS[code], i)
            if n >= _NOGIL_BATCH:
                with nogil:
                    sc_check_many(&self.owner.job, &self.sess, subs, <size_t>n, target, res)
            else:
                sc_check_many(&self.owner.job, &self.sess, subs, <size_t>n, target, res)
            out = [None] * n
            for i in range(n):
                out[i] = (PyBytes_FromStringAndSize(<char *>res[i].hash, 32),
                          res[i].meets_share != 0, res[i].meets_network != 0)
            return out
        finally:
            PyMem_Free(subs)
            PyMem_Free(res)
