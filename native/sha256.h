/* SHA-256 compression (FIPS 180-4 section 6.2.2) for the share core, with run-time dispatch.
 *
 * Two implementations of the same operations: SHA-NI (x86 SHA extensions, chosen when CPUID
 * reports them) and portable C. The chaining state is eight host-order words; message blocks come
 * as bytes (big-endian words, FIPS 180-4 section 3.1) or, for the fused double hashes, as
 * host-order words (digests fed back into SHA-256, merkle branch entries, header fields), which
 * saves byte swapping on the hot path.
 *
 * The "2" variants process two independent messages of the same shape; the SHA-NI path
 * interleaves them so the two dependency chains overlap in the pipeline. The portable path simply
 * runs them one after the other.
 */
#ifndef POOLD_SHA256_H
#define POOLD_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef void (*sha256_blocks_fn)(uint32_t state[8], const uint8_t *data, size_t nblocks);
typedef void (*sha256_blocks2_fn)(uint32_t sa[8], const uint8_t *da,
                                  uint32_t sb[8], const uint8_t *db, size_t nblocks);
typedef void (*sha256_fold_fn)(uint32_t io[8], const uint32_t *branch_w, size_t n);
typedef void (*sha256_fold2_fn)(uint32_t io_a[8], uint32_t io_b[8], const uint32_t *branch_w,
                                size_t n);
typedef void (*sha256_d80_fn)(uint32_t out[8], const uint32_t w1[16], const uint32_t w2[16]);
typedef void (*sha256_d80x2_fn)(uint32_t out_a[8], const uint32_t wa1[16],
                                const uint32_t wa2[16], uint32_t out_b[8],
                                const uint32_t wb1[16], const uint32_t wb2[16]);

/* One implementation. Besides plain block compression it offers the two chained double hashes
 * of the share check as single calls, so that SHA-NI keeps every intermediate digest in
 * registers (a digest is the big-endian form of the state words, hence already the next
 * message's words):
 *   fold:  on entry io = the state after SHA-256 of the coinbase (the first half of its
 *          sha256d); completes that sha256d, then cur = sha256d(cur || branch[i]) for each of
 *          the n 8-word branch entries; on exit io = the merkle root's words.
 *   d80:   out = sha256d of an 80-byte message given as its two padded blocks' words.
 * The "2" variants do the same for two independent inputs at once. */
typedef struct {
    const char *name;           /* "shani" or "portable" */
    sha256_blocks_fn blocks;
    sha256_blocks2_fn blocks2;
    sha256_fold_fn fold;
    sha256_fold2_fn fold2;
    sha256_d80_fn d80;
    sha256_d80x2_fn d80x2;
} sha256_impl;

extern const uint32_t SHA256_IV[8];
extern const uint32_t SHA256_K[64];

/* K[t] + W[t] for the constant second block of every 64-byte message (0x80, zeros, length 512),
 * which is a third of the compressions of a merkle fold: its schedule is a table, not per use. */
extern const uint32_t SHA256_PAD64_WK[64];

/* The implementation in use; set by sha256_select(). Starts as the portable one. */
extern const sha256_impl *sha256_active;

/* 1 if this CPU (and this build) can run the SHA-NI path. */
int sha256_shani_available(void);

/* Select "shani", "portable" or "auto" (the fastest available). Returns 0, or -1 if the named
 * implementation is unknown or not available on this CPU (the selection is then unchanged). */
int sha256_select(const char *name);

/* Portable implementation (always available). */
extern const sha256_impl sha256_portable_impl;

/* SHA-NI implementation; only present when gcc or clang targets x86 (see sha256_shani.c).
 * -DPOOLD_NO_SHANI leaves it out, as on other CPUs (this is how that build is tested). */
#if !defined(POOLD_NO_SHANI) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define POOLD_HAVE_SHANI_BUILD 1
extern const sha256_impl sha256_shani_impl;
int sha256_shani_cpu(void);
#endif

#endif
