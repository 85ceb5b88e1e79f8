/* SHA-256 compression with the x86 SHA extensions (SHA-NI), one stream and two interleaved.
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

SHANI_TARGET static void shani_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks)
{
    const __m128i bswap_ = BSWAP_MASK;
    __m128i s0, s1, save0, save1, m0, m1, m2, m3;

    STATE_IN(state, s0, s1);
    for (; nblocks > 0; nblocks--, data += 64) {
        save0 = s0;
        save1 = s1;
        m0 = LOAD_BE(data, 0);
        m1 = LOAD_BE(data, 1);
        m2 = LOAD_BE(data, 2);
        m3 = LOAD_BE(data, 3);
        ROUNDS(s0, s1, m0, m1, m2, m3);
        s0 = _mm_add_epi32(s0, save0);
        s1 = _mm_add_epi32(s1, save1);
    }
    STATE_OUT(state, s0, s1);
}

SHANI_TARGET static void shani_words(uint32_t state[8], const uint32_t w[16])
{
    __m128i s0, s1, save0, save1, m0, m1, m2, m3;

    STATE_IN(state, s0, s1);
    save0 = s0;
    save1 = s1;
    m0 = LOAD_W(w, 0);
    m1 = LOAD_W(w, 1);
    m2 = LOAD_W(w, 2);
    m3 = LOAD_W(w, 3);
    ROUNDS(s0, s1, m0, m1, m2, m3);
    s0 = _mm_add_epi32(s0, save0);
    s1 = _mm_add_epi32(s1, save1);
    STATE_OUT(state, s0, s1);
}

SHANI_TARGET static void shani_blocks2(uint32_t sa[8], const uint8_t *da,
                                       uint32_t sb[8], const uint8_t *db, size_t nblocks)
{
    const __m128i bswap_ = BSWAP_MASK;
    __m128i a0, a1, b0, b1, sa0, sa1, sb0, sb1;
    __m128i ma0, ma1, ma2, ma3, mb0, mb1, mb2, mb3;

    STATE_IN(sa, a0, a1);
    STATE_IN(sb, b0, b1);
    for (; nblocks > 0; nblocks--, da += 64, db += 64) {
        sa0 = a0; sa1 = a1; sb0 = b0; sb1 = b1;
        ma0 = LOAD_BE(da, 0); ma1 = LOAD_BE(da, 1); ma2 = LOAD_BE(da, 2); ma3 = LOAD_BE(da, 3);
        mb0 = LOAD_BE(db, 0); mb1 = LOAD_BE(db, 1); mb2 = LOAD_BE(db, 2); mb3 = LOAD_BE(db, 3);
        ROUNDS2();
        a0 = _mm_add_epi32(a0, sa0); a1 = _mm_add_epi32(a1, sa1);
        b0 = _mm_add_epi32(b0, sb0); b1 = _mm_add_epi32(b1, sb1);
    }
    STATE_OUT(sa, a0, a1);
    STATE_OUT(sb, b0, b1);
}

SHANI_TARGET static void shani_words2(uint32_t sa[8], const uint32_t wa[16],
                                      uint32_t sb[8], const uint32_t wb[16])
{
    __m128i a0, a1, b0, b1, sa0, sa1, sb0, sb1;
    __m128i ma0, ma1, ma2, ma3, mb0, mb1, mb2, mb3;

    STATE_IN(sa, a0, a1);
    STATE_IN(sb, b0, b1);
    sa0 = a0; sa1 = a1; sb0 = b0; sb1 = b1;
    ma0 = LOAD_W(wa, 0); ma1 = LOAD_W(wa, 1); ma2 = LOAD_W(wa, 2); ma3 = LOAD_W(wa, 3);
    mb0 = LOAD_W(wb, 0); mb1 = LOAD_W(wb, 1); mb2 = LOAD_W(wb, 2); mb3 = LOAD_W(wb, 3);
    ROUNDS2();
    a0 = _mm_add_epi32(a0, sa0); a1 = _mm_add_epi32(a1, sa1);
    b0 = _mm_add_epi32(b0, sb0); b1 = _mm_add_epi32(b1, sb1);
    STATE_OUT(sa, a0, a1);
    STATE_OUT(sb, b0, b1);
}

const sha256_impl sha256_shani_impl = {
    "shani", shani_blocks, shani_words, shani_blocks2, shani_words2,
};

#else

/* ISO C forbids an empty translation unit. */
typedef int poold_sha256_shani_unused;

#endif
