/* SHA-256 with the x86 SHA extensions (SHA-NI): block compression and the share check's fused
 * double hashes (see sha256.h), each for one stream and for two interleaved streams.
 *
 * Compiled without -msha: each function carries __attribute__((target(...))) so the rest of the
 * extension stays baseline x86-64, and sha256_shani_cpu() (CPUID leaf 7, EBX bit 29 "SHA" and
 * leaf 1 SSSE3/SSE4.1) decides at run time whether this path may be used at all.
 *
 * The SHA-NI round instruction keeps the state as two registers, ABEF and CDGH (A in the top
 * lane). sha256rnds2 runs two rounds; its latency, not throughput, bounds one stream, which is
 * why two independent messages hashed in the same loop nearly double the rate (the batch path).
 */
#include "sha256.h"

#ifdef POOLD_HAVE_SHANI_BUILD

#include <cpuid.h>
#include <immintrin.h>

#define SHANI_TARGET __attribute__((target("sha,sse4.1")))

int sha256_shani_cpu(void)
{
    static int cached = -1;
    unsigned int a, b, c, d;
    int ok = 0;

    if (cached >= 0)
        return cached;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSSE3) && (c & bit_SSE4_1)) {
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_SHA))
            ok = 1;
    }
    cached = ok;
    return ok;
}

/* state[0..7] (host-order words A..H) -> s0 = ABEF, s1 = CDGH */
#define STATE_IN(st, s0, s1)                                                      \
    do {                                                                          \
        __m128i t_ = _mm_loadu_si128((const __m128i *)&(st)[0]);                  \
        s1 = _mm_loadu_si128((const __m128i *)&(st)[4]);                          \
        t_ = _mm_shuffle_epi32(t_, 0xB1);   /* CDAB */                            \
        s1 = _mm_shuffle_epi32(s1, 0x1B);   /* EFGH */                            \
        s0 = _mm_alignr_epi8(t_, s1, 8);    /* ABEF */                            \
        s1 = _mm_blend_epi16(s1, t_, 0xF0); /* CDGH */                            \
    } while (0)

/* s0 = ABEF, s1 = CDGH -> state[0..7] */
#define STATE_OUT(st, s0, s1)                                                     \
    do {                                                                          \
        __m128i t_ = _mm_shuffle_epi32(s0, 0x1B); /* FEBA */                      \
        __m128i u_ = _mm_shuffle_epi32(s1, 0xB1); /* DCHG */                      \
        _mm_storeu_si128((__m128i *)&(st)[0], _mm_blend_epi16(t_, u_, 0xF0));     \
        _mm_storeu_si128((__m128i *)&(st)[4], _mm_alignr_epi8(u_, t_, 8));        \
    } while (0)

/* Four rounds 4i..4i+3 with message words m = W[4i..4i+3]. */
#define QROUND(s0, s1, m, i)                                                      \
    do {                                                                          \
        __m128i k_ = _mm_add_epi32(                                               \
            (m), _mm_loadu_si128((const __m128i *)&SHA256_K[4 * (i)]));           \
        s1 = _mm_sha256rnds2_epu32(s1, s0, k_);                                   \
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(k_, 0x0E));          \
    } while (0)

/* W[i] from w4 = W[i-4], w3 = W[i-3], w2 = W[i-2], w1 = W[i-1]; the result replaces w4. */
#define SCHED(w4, w3, w2, w1)                                                     \
    (w4 = _mm_sha256msg2_epu32(                                                   \
         _mm_add_epi32(_mm_sha256msg1_epu32(w4, w3), _mm_alignr_epi8(w1, w2, 4)), w1))

/* The 64 rounds on one stream; m0..m3 hold W[0..15] on entry. */
#define ROUNDS(s0, s1, m0, m1, m2, m3)                                            \
    do {                                                                          \
        QROUND(s0, s1, m0, 0);                                                    \
        QROUND(s0, s1, m1, 1);                                                    \
        QROUND(s0, s1, m2, 2);                                                    \
        QROUND(s0, s1, m3, 3);                                                    \
        SCHED(m0, m1, m2, m3); QROUND(s0, s1, m0, 4);                             \
        SCHED(m1, m2, m3, m0); QROUND(s0, s1, m1, 5);                             \
        SCHED(m2, m3, m0, m1); QROUND(s0, s1, m2, 6);                             \
        SCHED(m3, m0, m1, m2); QROUND(s0, s1, m3, 7);                             \
        SCHED(m0, m1, m2, m3); QROUND(s0, s1, m0, 8);                             \
        SCHED(m1, m2, m3, m0); QROUND(s0, s1, m1, 9);                             \
        SCHED(m2, m3, m0, m1); QROUND(s0, s1, m2, 10);                            \
        SCHED(m3, m0, m1, m2); QROUND(s0, s1, m3, 11);                            \
        SCHED(m0, m1, m2, m3); QROUND(s0, s1, m0, 12);                            \
        SCHED(m1, m2, m3, m0); QROUND(s0, s1, m1, 13);                            \
        SCHED(m2, m3, m0, m1); QROUND(s0, s1, m2, 14);                            \
        SCHED(m3, m0, m1, m2); QROUND(s0, s1, m3, 15);                            \
    } while (0)

/* The same for two streams a and b, step by step, so that the out-of-order core always has
 * the other stream's independent sha256rnds2 to issue while one waits for its result. */
#define QROUND2(i, ma, mb)                                                        \
    do {                                                                          \
        QROUND(a0, a1, ma, i);                                                    \
        QROUND(b0, b1, mb, i);                                                    \
    } while (0)
#define STEP2(i, wa4, wa3, wa2, wa1, wb4, wb3, wb2, wb1)                          \
    do {                                                                          \
        SCHED(wa4, wa3, wa2, wa1);                                                \
        SCHED(wb4, wb3, wb2, wb1);                                                \
        QROUND2(i, wa4, wb4);                                                     \
    } while (0)
#define ROUNDS2()                                                                 \
    do {                                                                          \
        QROUND2(0, ma0, mb0);                                                     \
        QROUND2(1, ma1, mb1);                                                     \
        QROUND2(2, ma2, mb2);                                                     \
        QROUND2(3, ma3, mb3);                                                     \
        STEP2(4, ma0, ma1, ma2, ma3, mb0, mb1, mb2, mb3);                         \
        STEP2(5, ma1, ma2, ma3, ma0, mb1, mb2, mb3, mb0);                         \
        STEP2(6, ma2, ma3, ma0, ma1, mb2, mb3, mb0, mb1);                         \
        STEP2(7, ma3, ma0, ma1, ma2, mb3, mb0, mb1, mb2);                         \
        STEP2(8, ma0, ma1, ma2, ma3, mb0, mb1, mb2, mb3);                         \
        STEP2(9, ma1, ma2, ma3, ma0, mb1, mb2, mb3, mb0);                         \
        STEP2(10, ma2, ma3, ma0, ma1, mb2, mb3, mb0, mb1);                        \
        STEP2(11, ma3, ma0, ma1, ma2, mb3, mb0, mb1, mb2);                        \
        STEP2(12, ma0, ma1, ma2, ma3, mb0, mb1, mb2, mb3);                        \
        STEP2(13, ma1, ma2, ma3, ma0, mb1, mb2, mb3, mb0);                        \
        STEP2(14, ma2, ma3, ma0, ma1, mb2, mb3, mb0, mb1);                        \
        STEP2(15, ma3, ma0, ma1, ma2, mb3, mb0, mb1, mb2);                        \
    } while (0)

/* Big-endian 32-bit words from bytes: reverse the bytes within each lane. */
#define BSWAP_MASK _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL)
#define LOAD_BE(p, i) \
    _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)((p) + 16 * (i))), bswap_)
#define LOAD_W(p, i) _mm_loadu_si128((const __m128i *)((p) + 4 * (i)))

#define SHANI_INLINE static inline __attribute__((always_inline, target("sha,sse4.1")))

/* The initial state (FIPS 180-4 5.3.3) as ABEF, CDGH. */
SHANI_INLINE void iv(__m128i *s0, __m128i *s1)
{
    *s0 = _mm_set_epi32(0x6a09e667, (int)0xbb67ae85u, 0x510e527f, (int)0x9b05688cu);
    *s1 = _mm_set_epi32(0x3c6ef372, (int)0xa54ff53au, 0x1f83d9ab, 0x5be0cd19);
}

/* The digest of state (ABEF, CDGH) as message words: m0 = W[0..3] = A..D, m1 = W[4..7] = E..H. */
SHANI_INLINE void to_msg(__m128i s0, __m128i s1, __m128i *m0, __m128i *m1)
{
    __m128i t = _mm_shuffle_epi32(s0, 0x1B); /* FEBA */
    __m128i u = _mm_shuffle_epi32(s1, 0xB1); /* DCHG */
    *m0 = _mm_blend_epi16(t, u, 0xF0);
    *m1 = _mm_alignr_epi8(u, t, 8);
}

SHANI_INLINE void compress(__m128i *s0, __m128i *s1,
                           __m128i m0, __m128i m1, __m128i m2, __m128i m3)
{
    __m128i x0 = *s0, x1 = *s1;

    ROUNDS(x0, x1, m0, m1, m2, m3);
    *s0 = _mm_add_epi32(x0, *s0);
    *s1 = _mm_add_epi32(x1, *s1);
}

SHANI_INLINE void compress2(__m128i *pa0, __m128i *pa1,
                            __m128i ma0, __m128i ma1, __m128i ma2, __m128i ma3,
                            __m128i *pb0, __m128i *pb1,
                            __m128i mb0, __m128i mb1, __m128i mb2, __m128i mb3)
{
    __m128i a0 = *pa0, a1 = *pa1, b0 = *pb0, b1 = *pb1;

    ROUNDS2();
    *pa0 = _mm_add_epi32(a0, *pa0);
    *pa1 = _mm_add_epi32(a1, *pa1);
    *pb0 = _mm_add_epi32(b0, *pb0);
    *pb1 = _mm_add_epi32(b1, *pb1);
}

/* Four rounds 4i..4i+3 of a block whose K + W is precomputed in wk. */
#define QROUND_WK(s0, s1, wk, i)                                                  \
    do {                                                                          \
        __m128i k_ = _mm_loadu_si128((const __m128i *)&(wk)[4 * (i)]);            \
        s1 = _mm_sha256rnds2_epu32(s1, s0, k_);                                   \
        s0 = _mm_sha256rnds2_epu32(s0, s1, _mm_shuffle_epi32(k_, 0x0E));          \
    } while (0)

/* The padding block of a 64-byte message, its schedule precomputed (SHA256_PAD64_WK). */
SHANI_INLINE void compress_pad64(__m128i *s0, __m128i *s1)
{
    __m128i x0 = *s0, x1 = *s1;
    int i;

    for (i = 0; i < 16; i++)
        QROUND_WK(x0, x1, SHA256_PAD64_WK, i);
    *s0 = _mm_add_epi32(x0, *s0);
    *s1 = _mm_add_epi32(x1, *s1);
}

SHANI_INLINE void compress_pad64_2(__m128i *pa0, __m128i *pa1, __m128i *pb0, __m128i *pb1)
{
    __m128i a0 = *pa0, a1 = *pa1, b0 = *pb0, b1 = *pb1;
    int i;

    for (i = 0; i < 16; i++) {
        QROUND_WK(a0, a1, SHA256_PAD64_WK, i);
        QROUND_WK(b0, b1, SHA256_PAD64_WK, i);
    }
    *pa0 = _mm_add_epi32(a0, *pa0);
    *pa1 = _mm_add_epi32(a1, *pa1);
    *pb0 = _mm_add_epi32(b0, *pb0);
    *pb1 = _mm_add_epi32(b1, *pb1);
}

/* Padding of a 32-byte message in words 8..15: 0x80000000, zeros, 256 (bits). */
#define PAD32_LO _mm_set_epi32(0, 0, 0, (int)0x80000000u)
#define PAD32_HI _mm_set_epi32(256, 0, 0, 0)

SHANI_TARGET static void shani_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks)
{
    const __m128i bswap_ = BSWAP_MASK;
    __m128i s0, s1;

    STATE_IN(state, s0, s1);
    for (; nblocks > 0; nblocks--, data += 64)
        compress(&s0, &s1, LOAD_BE(data, 0), LOAD_BE(data, 1), LOAD_BE(data, 2),
                 LOAD_BE(data, 3));
    STATE_OUT(state, s0, s1);
}

SHANI_TARGET static void shani_blocks2(uint32_t sa[8], const uint8_t *da,
                                       uint32_t sb[8], const uint8_t *db, size_t nblocks)
{
    const __m128i bswap_ = BSWAP_MASK;
    __m128i a0, a1, b0, b1;

    STATE_IN(sa, a0, a1);
    STATE_IN(sb, b0, b1);
    for (; nblocks > 0; nblocks--, da += 64, db += 64)
        compress2(&a0, &a1, LOAD_BE(da, 0), LOAD_BE(da, 1), LOAD_BE(da, 2), LOAD_BE(da, 3),
                  &b0, &b1, LOAD_BE(db, 0), LOAD_BE(db, 1), LOAD_BE(db, 2), LOAD_BE(db, 3));
    STATE_OUT(sa, a0, a1);
    STATE_OUT(sb, b0, b1);
}

SHANI_TARGET static void shani_fold(uint32_t io[8], const uint32_t *branch_w, size_t n)
{
    __m128i s0, s1, m0, m1;

    iv(&s0, &s1);
    compress(&s0, &s1, LOAD_W(io, 0), LOAD_W(io, 1), PAD32_LO, PAD32_HI);
    for (; n > 0; n--, branch_w += 8) {
        to_msg(s0, s1, &m0, &m1);
        iv(&s0, &s1);
        compress(&s0, &s1, m0, m1, LOAD_W(branch_w, 0), LOAD_W(branch_w, 1));
        compress_pad64(&s0, &s1);
        to_msg(s0, s1, &m0, &m1);
        iv(&s0, &s1);
        compress(&s0, &s1, m0, m1, PAD32_LO, PAD32_HI);
    }
    STATE_OUT(io, s0, s1);
}

SHANI_TARGET static void shani_fold2(uint32_t io_a[8], uint32_t io_b[8],
                                     const uint32_t *branch_w, size_t n)
{
    __m128i a0, a1, b0, b1, ma0, ma1, mb0, mb1, br0, br1;

    iv(&a0, &a1);
    iv(&b0, &b1);
    compress2(&a0, &a1, LOAD_W(io_a, 0), LOAD_W(io_a, 1), PAD32_LO, PAD32_HI,
              &b0, &b1, LOAD_W(io_b, 0), LOAD_W(io_b, 1), PAD32_LO, PAD32_HI);
    for (; n > 0; n--, branch_w += 8) {
        br0 = LOAD_W(branch_w, 0);
        br1 = LOAD_W(branch_w, 1);
        to_msg(a0, a1, &ma0, &ma1);
        to_msg(b0, b1, &mb0, &mb1);
        iv(&a0, &a1);
        iv(&b0, &b1);
        compress2(&a0, &a1, ma0, ma1, br0, br1, &b0, &b1, mb0, mb1, br0, br1);
        compress_pad64_2(&a0, &a1, &b0, &b1);
        to_msg(a0, a1, &ma0, &ma1);
        to_msg(b0, b1, &mb0, &mb1);
        iv(&a0, &a1);
        iv(&b0, &b1);
        compress2(&a0, &a1, ma0, ma1, PAD32_LO, PAD32_HI, &b0, &b1, mb0, mb1, PAD32_LO, PAD32_HI);
    }
    STATE_OUT(io_a, a0, a1);
    STATE_OUT(io_b, b0, b1);
}

SHANI_TARGET static void shani_d80(uint32_t out[8], const uint32_t w1[16], const uint32_t w2[16])
{
    __m128i s0, s1, m0, m1;

    iv(&s0, &s1);
    compress(&s0, &s1, LOAD_W(w1, 0), LOAD_W(w1, 1), LOAD_W(w1, 2), LOAD_W(w1, 3));
    compress(&s0, &s1, LOAD_W(w2, 0), LOAD_W(w2, 1), LOAD_W(w2, 2), LOAD_W(w2, 3));
    to_msg(s0, s1, &m0, &m1);
    iv(&s0, &s1);
    compress(&s0, &s1, m0, m1, PAD32_LO, PAD32_HI);
    STATE_OUT(out, s0, s1);
}

SHANI_TARGET static void shani_d80x2(uint32_t out_a[8], const uint32_t wa1[16],
                                     const uint32_t wa2[16], uint32_t out_b[8],
                                     const uint32_t wb1[16], const uint32_t wb2[16])
{
    __m128i a0, a1, b0, b1, ma0, ma1, mb0, mb1;

    iv(&a0, &a1);
    iv(&b0, &b1);
    compress2(&a0, &a1, LOAD_W(wa1, 0), LOAD_W(wa1, 1), LOAD_W(wa1, 2), LOAD_W(wa1, 3),
              &b0, &b1, LOAD_W(wb1, 0), LOAD_W(wb1, 1), LOAD_W(wb1, 2), LOAD_W(wb1, 3));
    compress2(&a0, &a1, LOAD_W(wa2, 0), LOAD_W(wa2, 1), LOAD_W(wa2, 2), LOAD_W(wa2, 3),
              &b0, &b1, LOAD_W(wb2, 0), LOAD_W(wb2, 1), LOAD_W(wb2, 2), LOAD_W(wb2, 3));
    to_msg(a0, a1, &ma0, &ma1);
    to_msg(b0, b1, &mb0, &mb1);
    iv(&a0, &a1);
    iv(&b0, &b1);
    compress2(&a0, &a1, ma0, ma1, PAD32_LO, PAD32_HI, &b0, &b1, mb0, mb1, PAD32_LO, PAD32_HI);
    STATE_OUT(out_a, a0, a1);
    STATE_OUT(out_b, b0, b1);
}

const sha256_impl sha256_shani_impl = {
    "shani", shani_blocks, shani_blocks2, shani_fold, shani_fold2, shani_d80, shani_d80x2,
};

#else

/* ISO C forbids an empty translation unit. */
typedef int poold_sha256_shani_unused;

#endif
