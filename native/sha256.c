/* SHA-256 compression in portable C (FIPS 180-4 section 6.2.2) and the run-time dispatch.
 *
 * This path runs on every CPU; the SHA-NI path (sha256_shani.c) replaces it when CPUID reports
 * the SHA extensions. Both are checked against hashlib by the test suite.
 */
#include <string.h>

#include "sha256.h"

const uint32_t SHA256_IV[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
    0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

const uint32_t SHA256_K[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u,
};

/* K[t] + W[t] of the padding block of a 64-byte message (W[0] = 0x80000000, W[1..14] = 0,
 * W[15] = 512, W[16..63] by the FIPS 180-4 6.2.2 schedule). Tests compare every path using it
 * with hashlib. */
const uint32_t SHA256_PAD64_WK[64] = {
    0xc28a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf374u, 0x649b69c1u, 0xf0fe4786u, 0x0fe1edc6u, 0x240cf254u, 0x4fe9346fu,
    0x6cc984beu, 0x61b9411eu, 0x16f988fau, 0xf2c65152u, 0xa88e5a6du, 0xb019fc65u, 0xb9d99ec7u,
    0x9a1231c3u, 0xe70eeaa0u, 0xfdb1232bu, 0xc7353eb0u, 0x3069bad5u, 0xcb976d5fu, 0x5a0f118fu,
    0xdc1eeefdu, 0x0a35b689u, 0xde0b7a04u, 0x58f4ca9du, 0xe15d5b16u, 0x007f3e86u, 0x37088980u,
    0xa507ea32u, 0x6fab9537u, 0x17406110u, 0x0d8cd6f1u, 0xcdaa3b6du, 0xc0bbbe37u, 0x83613bdau,
    0xdb48a363u, 0x0b02e931u, 0x6fd15ca7u, 0x521afacau, 0x31338431u, 0x6ed41a95u, 0x6d437890u,
    0xc39c91f2u, 0x9eccabbdu, 0xb5c9a0e6u, 0x532fb63cu, 0xd2c741c6u, 0x07237ea3u, 0xa4954b68u,
    0x4c191d76u,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define CH(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MAJ(x, y, z) (((x) & (y)) | ((z) & ((x) | (y))))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* One round with the working variables renamed instead of shifted (a..h rotate by one per round).
 * w is the schedule word W[t] already in place. */
#define ROUND(a, b, c, d, e, f, g, h, t)                                          \
    do {                                                                          \
        uint32_t t1_ = (h) + BSIG1(e) + CH(e, f, g) + SHA256_K[t] + w[(t) & 15];  \
        uint32_t t2_ = BSIG0(a) + MAJ(a, b, c);                                   \
        (d) += t1_;                                                               \
        (h) = t1_ + t2_;                                                          \
    } while (0)

/* Schedule word W[t] for t >= 16, kept in a 16-word circular buffer. */
#define SCHED(t)                                                                  \
    (w[(t) & 15] += SSIG1(w[((t) - 2) & 15]) + w[((t) - 7) & 15] + SSIG0(w[((t) - 15) & 15]))

#define EIGHT_ROUNDS(t)                                                           \
    do {                                                                          \
        ROUND(a, b, c, d, e, f, g, h, (t) + 0);                                   \
        ROUND(h, a, b, c, d, e, f, g, (t) + 1);                                   \
        ROUND(g, h, a, b, c, d, e, f, (t) + 2);                                   \
        ROUND(f, g, h, a, b, c, d, e, (t) + 3);                                   \
        ROUND(e, f, g, h, a, b, c, d, (t) + 4);                                   \
        ROUND(d, e, f, g, h, a, b, c, (t) + 5);                                   \
        ROUND(c, d, e, f, g, h, a, b, (t) + 6);                                   \
        ROUND(b, c, d, e, f, g, h, a, (t) + 7);                                   \
    } while (0)

#define EIGHT_SCHED(t)                                                            \
    do {                                                                          \
        SCHED((t) + 0); SCHED((t) + 1); SCHED((t) + 2); SCHED((t) + 3);           \
        SCHED((t) + 4); SCHED((t) + 5); SCHED((t) + 6); SCHED((t) + 7);           \
    } while (0)

/* Compress one block whose sixteen message words are in w (the buffer is consumed). */
static void compress_w(uint32_t state[8], uint32_t w[16])
{
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    int t;

    EIGHT_ROUNDS(0);
    EIGHT_ROUNDS(8);
    for (t = 16; t < 64; t += 16) {
        /* Extend the schedule by eight words (their slots held W[t-16..t-9], already used),
         * then run the eight rounds that consume them. */
        EIGHT_SCHED(t);
        EIGHT_ROUNDS(t);
        EIGHT_SCHED(t + 8);
        EIGHT_ROUNDS(t + 8);
    }
    state[0] += a; state[1] += b; state[2] += c; state[3] += d;
    state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

/* Compress a block whose whole schedule (K[t] + W[t]) is given. */
#define ROUND_WK(a, b, c, d, e, f, g, h, t)                                       \
    do {                                                                          \
        uint32_t t1_ = (h) + BSIG1(e) + CH(e, f, g) + wk[t];                      \
        uint32_t t2_ = BSIG0(a) + MAJ(a, b, c);                                   \
        (d) += t1_;                                                               \
        (h) = t1_ + t2_;                                                          \
    } while (0)

static void compress_wk(uint32_t state[8], const uint32_t wk[64])
{
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    int t;

    for (t = 0; t < 64; t += 8) {
        ROUND_WK(a, b, c, d, e, f, g, h, t + 0);
        ROUND_WK(h, a, b, c, d, e, f, g, t + 1);
        ROUND_WK(g, h, a, b, c, d, e, f, t + 2);
        ROUND_WK(f, g, h, a, b, c, d, e, t + 3);
        ROUND_WK(e, f, g, h, a, b, c, d, t + 4);
        ROUND_WK(d, e, f, g, h, a, b, c, t + 5);
        ROUND_WK(c, d, e, f, g, h, a, b, t + 6);
        ROUND_WK(b, c, d, e, f, g, h, a, t + 7);
    }
    state[0] += a; state[1] += b; state[2] += c; state[3] += d;
    state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

static void portable_blocks(uint32_t state[8], const uint8_t *data, size_t nblocks)
{
    uint32_t w[16];
    size_t i;
    int j;

    for (i = 0; i < nblocks; i++, data += 64) {
        for (j = 0; j < 16; j++)
            w[j] = load_be32(data + 4 * j);
        compress_w(state, w);
    }
}

/* The padding words of a 32-byte message (a digest): 0x80, zeros, bit length 256. */
static void pad32(uint32_t w[16], const uint32_t digest[8])
{
    memcpy(w, digest, 32);
    w[8] = 0x80000000u;
    memset(w + 9, 0, 6 * sizeof(uint32_t));
    w[15] = 256u;
}

static void portable_fold(uint32_t io[8], const uint32_t *branch_w, size_t n)
{
    uint32_t w[16], st[8];

    pad32(w, io);
    memcpy(io, SHA256_IV, 32);
    compress_w(io, w);
    for (; n > 0; n--, branch_w += 8) {
        memcpy(w, io, 32);
        memcpy(w + 8, branch_w, 32);
        memcpy(st, SHA256_IV, 32);
        compress_w(st, w);
        compress_wk(st, SHA256_PAD64_WK);
        pad32(w, st);
        memcpy(io, SHA256_IV, 32);
        compress_w(io, w);
    }
}

static void portable_fold2(uint32_t io_a[8], uint32_t io_b[8], const uint32_t *branch_w,
                           size_t n)
{
    portable_fold(io_a, branch_w, n);
    portable_fold(io_b, branch_w, n);
}

static void portable_d80(uint32_t out[8], const uint32_t w1[16], const uint32_t w2[16])
{
    uint32_t w[16], st[8];

    memcpy(st, SHA256_IV, 32);
    memcpy(w, w1, sizeof w);
    compress_w(st, w);
    memcpy(w, w2, sizeof w);
    compress_w(st, w);
    pad32(w, st);
    memcpy(out, SHA256_IV, 32);
    compress_w(out, w);
}

static void portable_d80x2(uint32_t out_a[8], const uint32_t wa1[16], const uint32_t wa2[16],
                           uint32_t out_b[8], const uint32_t wb1[16], const uint32_t wb2[16])
{
    portable_d80(out_a, wa1, wa2);
    portable_d80(out_b, wb1, wb2);
}

static void portable_blocks2(uint32_t sa[8], const uint8_t *da,
                             uint32_t sb[8], const uint8_t *db, size_t nblocks)
{
    portable_blocks(sa, da, nblocks);
    portable_blocks(sb, db, nblocks);
}

const sha256_impl sha256_portable_impl = {
    "portable", portable_blocks, portable_blocks2, portable_fold, portable_fold2,
    portable_d80, portable_d80x2,
};

const sha256_impl *sha256_active = &sha256_portable_impl;

int sha256_shani_available(void)
{
#ifdef POOLD_HAVE_SHANI_BUILD
    return sha256_shani_cpu();
#else
    return 0;
#endif
}

int sha256_select(const char *name)
{
    if (strcmp(name, "portable") == 0) {
        sha256_active = &sha256_portable_impl;
        return 0;
    }
    if (strcmp(name, "shani") == 0 || strcmp(name, "auto") == 0) {
#ifdef POOLD_HAVE_SHANI_BUILD
        if (sha256_shani_cpu()) {
            sha256_active = &sha256_shani_impl;
            return 0;
        }
#endif
        if (strcmp(name, "auto") == 0) {
            sha256_active = &sha256_portable_impl;
            return 0;
        }
    }
    return -1;
}
