/* The share check (see share.h): 45 SHA-256 compressions for the usual 250-byte coinbase and a
 * 12-step branch, with no allocation and no byte shuffling between the chained hashes.
 *
 * Digests are kept as eight host-order words: a SHA-256 digest is the big-endian serialization of
 * its state words (FIPS 180-4 section 6.2.2 step 4), and the next hash reads its message as
 * big-endian words (section 5.2.1), so a digest fed into another hash is already its message words.
 */
#include <string.h>

#include "sha256.h"
#include "share.h"

static const signed char HEX_VALUE[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  -1, -1, -1, -1, -1, -1,
    -1, 10, 11, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, 10, 11, 12, 13, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

static inline uint32_t bswap32(uint32_t x)
{
    return (x >> 24) | ((x >> 8) & 0xff00u) | ((x << 8) & 0xff0000u) | (x << 24);
}

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t x)
{
    p[0] = (uint8_t)(x >> 24);
    p[1] = (uint8_t)(x >> 16);
    p[2] = (uint8_t)(x >> 8);
    p[3] = (uint8_t)x;
}

int sc_hex_decode(const char *s, size_t n_chars, uint8_t *out)
{
    size_t i;
    int bad = 0;

    if (n_chars & 1)
        return -1;
    for (i = 0; i < n_chars; i += 2) {
        int hi = HEX_VALUE[(unsigned char)s[i]];
        int lo = HEX_VALUE[(unsigned char)s[i + 1]];
        bad |= hi | lo;      /* any -1 sets the sign bit */
        out[i / 2] = (uint8_t)((hi << 4) | (lo & 15));
    }
    return bad < 0 ? -1 : 0;
}

int sc_hex_u32(const char *s, size_t n_chars, uint32_t *out)
{
    uint8_t b[4];

    if (n_chars != 8 || sc_hex_decode(s, 8, b) != 0)
        return -1;
    *out = load_be32(b);
    return 0;
}

/* Padded length of an n-byte message: n, 0x80, zeros, 8-byte length, to a multiple of 64. */
static size_t padded_len(size_t n)
{
    return (n + 8) / 64 * 64 + 64;
}

size_t sc_tail_size(size_t prefix_len, size_t en2_size, size_t coinb2_len)
{
    return padded_len(prefix_len + en2_size + coinb2_len) - prefix_len / 64 * 64;
}

static void write_padding(uint8_t *end_of_message, uint8_t *end_of_buffer, uint64_t msg_len)
{
    uint64_t bits = msg_len * 8;
    int i;

    memset(end_of_message, 0, (size_t)(end_of_buffer - end_of_message));
    end_of_message[0] = 0x80;
    for (i = 0; i < 8; i++)
        end_of_buffer[-1 - i] = (uint8_t)(bits >> (8 * i));
}

void sc_session_init(sc_session *sess, const uint8_t *prefix, size_t prefix_len, size_t en2_size,
                     const uint8_t *coinb2, size_t coinb2_len, uint8_t *tail_buf)
{
    const size_t cached = prefix_len / 64 * 64;
    const size_t msg_len = prefix_len + en2_size + coinb2_len;
    const size_t tail_len = padded_len(msg_len) - cached;
    const size_t en2_offset = prefix_len - cached;
    size_t var_len = (en2_offset + en2_size + 63) / 64 * 64;
    uint8_t *p = tail_buf;

    memcpy(sess->midstate, SHA256_IV, sizeof sess->midstate);
    sha256_active->blocks(sess->midstate, prefix, cached / 64);

    memcpy(p, prefix + cached, en2_offset);
    p += en2_offset;
    memset(p, 0, en2_size);
    p += en2_size;
    memcpy(p, coinb2, coinb2_len);
    p += coinb2_len;
    write_padding(p, tail_buf + tail_len, msg_len);

    if (var_len > tail_len)
        var_len = tail_len;
    sess->tail = tail_buf;
    sess->tail_len = tail_len;
    sess->var_len = var_len;
    sess->en2_offset = en2_offset;
    sess->en2_size = en2_size;
}

/* Little-endian 256-bit a <= b. */
static int le256_leq(const uint8_t *a, const uint8_t *b)
{
    int i;

    for (i = 31; i >= 0; i--) {
        if (a[i] != b[i])
            return a[i] < b[i];
    }
    return 1;
}

static void finish(const sc_job *job, const uint32_t h[8], const uint8_t share_target[32],
                   sc_result *res)
{
    int i;

    for (i = 0; i < 8; i++)
        store_be32(res->hash + 4 * i, h[i]);
    res->meets_share = le256_leq(res->hash, share_target);
    res->meets_network = le256_leq(res->hash, job->network_target);
}

/* The first header block: version, prevhash, the first 28 bytes of the merkle root. */
static void header_block1(const sc_job *job, const sc_submit *sub, const uint32_t root[8],
                          uint32_t w[16])
{
    w[0] = bswap32(sub->version);
    memcpy(w + 1, job->prev_w, 32);
    memcpy(w + 9, root, 28);
}

/* The second: the last 4 bytes of the root, ntime, nbits, nonce, padding for 80 bytes. */
static void header_block2(const sc_job *job, const sc_submit *sub, const uint32_t root[8],
                          uint32_t w[16])
{
    w[0] = root[7];
    w[1] = bswap32(sub->ntime);
    w[2] = job->nbits_w;
    w[3] = bswap32(sub->nonce);
    w[4] = 0x80000000u;
    memset(w + 5, 0, 10 * sizeof(uint32_t));
    w[15] = 640u;
}

/* Start SHA-256 of the coinbase (the first half of its sha256d): the cached prefix state, and
 * the blocks holding extranonce2 copied with it into var. The caller hashes var, then the
 * constant rest of the tail. */
static void coinbase_start(const sc_session *sess, const sc_submit *sub, uint8_t *var,
                           uint32_t st[8])
{
    memcpy(st, sess->midstate, 32);
    memcpy(var, sess->tail, sess->var_len);
    memcpy(var + sess->en2_offset, sub->en2, sess->en2_size);
}

void sc_check(const sc_job *job, const sc_session *sess, const sc_submit *sub,
              const uint8_t share_target[32], sc_result *res)
{
    const sha256_impl *impl = sha256_active;
    uint8_t var[SC_MAX_VAR];
    uint32_t st[8], h1[16], h2[16];

    coinbase_start(sess, sub, var, st);
    impl->blocks(st, var, sess->var_len / 64);
    impl->blocks(st, sess->tail + sess->var_len, (sess->tail_len - sess->var_len) / 64);
    impl->fold(st, job->branch_w, job->branch_len);          /* st = merkle root */
    header_block1(job, sub, st, h1);
    header_block2(job, sub, st, h2);
    impl->d80(st, h1, h2);
    finish(job, st, share_target, res);
}

/* Two shares of the same session in lockstep: every step has the same shape for both. */
static void check2(const sc_job *job, const sc_session *sess, const sc_submit *sa,
                   const sc_submit *sb, const uint8_t share_target[32], sc_result *ra,
                   sc_result *rb)
{
    const sha256_impl *impl = sha256_active;
    const size_t rest = (sess->tail_len - sess->var_len) / 64;
    const uint8_t *rest_p = sess->tail + sess->var_len;
    uint8_t var_a[SC_MAX_VAR], var_b[SC_MAX_VAR];
    uint32_t st_a[8], st_b[8], ha1[16], ha2[16], hb1[16], hb2[16];

    coinbase_start(sess, sa, var_a, st_a);
    coinbase_start(sess, sb, var_b, st_b);
    impl->blocks2(st_a, var_a, st_b, var_b, sess->var_len / 64);
    impl->blocks2(st_a, rest_p, st_b, rest_p, rest);
    impl->fold2(st_a, st_b, job->branch_w, job->branch_len);
    header_block1(job, sa, st_a, ha1);
    header_block2(job, sa, st_a, ha2);
    header_block1(job, sb, st_b, hb1);
    header_block2(job, sb, st_b, hb2);
    impl->d80x2(st_a, ha1, ha2, st_b, hb1, hb2);
    finish(job, st_a, share_target, ra);
    finish(job, st_b, share_target, rb);
}

void sc_check_many(const sc_job *job, const sc_session *sess, const sc_submit *subs, size_t n,
                   const uint8_t share_target[32], sc_result *res)
{
    size_t i;

    for (i = 0; i + 1 < n; i += 2)
        check2(job, sess, &subs[i], &subs[i + 1], share_target, &res[i], &res[i + 1]);
    if (i < n)
        sc_check(job, sess, &subs[i], share_target, &res[i]);
}

/* The final one or two padded blocks of a len-byte message whose full blocks are already hashed. */
static size_t last_blocks(const uint8_t *data, size_t len, uint8_t buf[128])
{
    const size_t full = len / 64 * 64;
    const size_t rem = len - full;
    const size_t nbuf = padded_len(len) - full;

    memcpy(buf, data + full, rem);
    write_padding(buf + rem, buf + nbuf, len);
    return nbuf / 64;
}

static void digest_out(const uint32_t st[8], uint8_t out[32])
{
    int i;

    for (i = 0; i < 8; i++)
        store_be32(out + 4 * i, st[i]);
}

void sc_sha256(const uint8_t *data, size_t len, uint8_t out[32])
{
    const sha256_impl *impl = sha256_active;
    uint8_t buf[128];
    uint32_t st[8];
    size_t n;

    memcpy(st, SHA256_IV, 32);
    impl->blocks(st, data, len / 64);
    n = last_blocks(data, len, buf);
    impl->blocks(st, buf, n);
    digest_out(st, out);
}

void sc_sha256_pair(const uint8_t *a, const uint8_t *b, size_t len, uint8_t out_a[32],
                    uint8_t out_b[32])
{
    const sha256_impl *impl = sha256_active;
    uint8_t buf_a[128], buf_b[128];
    uint32_t st_a[8], st_b[8];
    size_t n;

    memcpy(st_a, SHA256_IV, 32);
    memcpy(st_b, SHA256_IV, 32);
    impl->blocks2(st_a, a, st_b, b, len / 64);
    n = last_blocks(a, len, buf_a);
    last_blocks(b, len, buf_b);
    impl->blocks2(st_a, buf_a, st_b, buf_b, n);
    digest_out(st_a, out_a);
    digest_out(st_b, out_b);
}
