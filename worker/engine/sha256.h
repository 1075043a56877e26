/* sha256: the SHA-256 hash of FIPS 180-4, for the HELLO's ModelFile (the
 * coordinator tells copies of one model apart by it).
 *
 * Contract: sha256_init, any number of sha256_update calls (any lengths,
 * any split of the message gives the same digest), then sha256_final once,
 * which writes 32 bytes and leaves the context unusable until the next
 * sha256_init.  sha256_file hashes a whole file in 1 MiB reads. */
#ifndef ITT_SHA256_H
#define ITT_SHA256_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define SHA256_DIGEST 32
#define SHA256_HEX    65 /* 64 hex digits and the NUL */

struct sha256 {
	uint32_t h[8];     /* chaining state */
	uint64_t n_bytes;  /* message length so far */
	uint8_t buf[64];   /* the partial block */
	uint32_t n_buf;    /* bytes used in buf */
};

void sha256_init(struct sha256 *c);
void sha256_update(struct sha256 *c, const void *data, size_t len);
void sha256_final(struct sha256 *c, uint8_t digest[SHA256_DIGEST]);
/* Lower-case hex of a digest, NUL-terminated. */
void sha256_hex(const uint8_t digest[SHA256_DIGEST], char out[SHA256_HEX]);
/* Hashes the file at path: its hex digest and size in bytes; 0, or
 * ITT_E_IO with the path and errno's text. */
int sha256_file(const char *path, char hex[SHA256_HEX], uint64_t *bytes, struct itt_err *err);

#endif
