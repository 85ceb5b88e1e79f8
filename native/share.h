/* The Stratum V1 share check in C: coinbase -> merkle root -> 80-byte header -> sha256d -> targets.
 *
 * Layout and byte orders follow Bitcoin's block header (version, prevhash, merkle root, time,
 * bits, nonce; all integers little-endian) and Stratum V1 mining.submit with BIP310 version
 * rolling: the caller (the Cython wrapper) has already decoded and validated the miner's hex.
 *
 * Everything here is pure computation on caller-owned memory: no allocation, no Python, no
 * global state except the SHA-256 implementation pointer, so the batch path runs without the GIL.
 */
#ifndef POOLD_SHARE_H
#define POOLD_SHARE_H

#include <stddef.h>
#include <stdint.h>

#define SC_MAX_EN2 32                       /* largest extranonce2 size accepted */
#define SC_MAX_VAR (64 + SC_MAX_EN2 + 64)   /* bytes of coinbase rewritten per share, at most */

/* Per job: the header fields and the merkle branch as SHA-256 message words. */
typedef struct {
    uint32_t version;              /* job version (before rolling) */
    uint32_t nbits_w;              /* header word 18: byte-swapped nbits */
    uint32_t prev_w[8];            /* prevhash (internal byte order) as big-endian words */
    uint8_t network_target[32];    /* little-endian 256-bit target */
    size_t branch_len;
    const uint32_t *branch_w;      /* branch_len * 8 words, bottom-up */
} sc_job;

/* Per (job, session): SHA-256 state after the full 64-byte blocks of coinb1 + extranonce1, and
 * the rest of the padded coinbase with a hole where extranonce2 goes. Only the first var_len
 * bytes of tail (the blocks touching extranonce2) differ between shares. */
typedef struct {
    uint32_t midstate[8];
    const uint8_t *tail;
    size_t tail_len;               /* multiple of 64 */
    size_t var_len;                /* multiple of 64, <= tail_len, <= SC_MAX_VAR */
    size_t en2_offset;             /* offset of extranonce2 in tail */
    size_t en2_size;
} sc_session;

/* One decoded submit. version is already rolled (BIP310). ntime and nonce are the values. */
typedef struct {
    uint8_t en2[SC_MAX_EN2];
    uint32_t ntime;
    uint32_t nonce;
    uint32_t version;
} sc_submit;

typedef struct {
    uint8_t hash[32];              /* header hash, internal byte order */
    int meets_share;
    int meets_network;
} sc_result;

/* Decode n_chars hex characters (upper or lower case; n_chars even) into n_chars / 2 bytes.
 * Returns 0, or -1 on any non-hex character (out may then be partly written). */
int sc_hex_decode(const char *s, size_t n_chars, uint8_t *out);

/* Decode exactly eight hex characters as a big-endian uint32 (the Stratum wire form). */
int sc_hex_u32(const char *s, size_t n_chars, uint32_t *out);

/* Size of the tail buffer sc_session_init needs. */
size_t sc_tail_size(size_t prefix_len, size_t en2_size, size_t coinb2_len);

/* prefix = coinb1 || extranonce1. tail_buf must hold sc_tail_size(...) bytes and outlive sess. */
void sc_session_init(sc_session *sess, const uint8_t *prefix, size_t prefix_len, size_t en2_size,
                     const uint8_t *coinb2, size_t coinb2_len, uint8_t *tail_buf);

/* Check one share against share_target (little-endian 32 bytes) and the job's network target. */
void sc_check(const sc_job *job, const sc_session *sess, const sc_submit *sub,
              const uint8_t share_target[32], sc_result *res);

/* Check n shares; pairs are hashed together (two-way interleaved on SHA-NI). */
void sc_check_many(const sc_job *job, const sc_session *sess, const sc_submit *subs, size_t n,
                   const uint8_t share_target[32], sc_result *res);

/* SHA-256 of a whole message with the active implementation (tests compare it with hashlib).
 * sc_sha256_pair hashes two messages of the same length through the two-stream entry points. */
void sc_sha256(const uint8_t *data, size_t len, uint8_t out[32]);
void sc_sha256_pair(const uint8_t *a, const uint8_t *b, size_t len, uint8_t out_a[32],
                    uint8_t out_b[32]);

#endif
