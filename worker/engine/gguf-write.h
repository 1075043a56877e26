/* gguf-write: an in-memory builder that writes GGUF v3 files.
 *
 * Key/value pairs are serialised when added (the builder owns a copy).
 * Tensors are described when added and their bytes are produced only while
 * the file is written: either from a caller's buffer (borrowed: it must stay
 * valid and unchanged until gguf_writer_write returns, or copied), or from a
 * callback that hands out the bytes piece by piece (quantisers and random
 * generators never hold a whole model).  So a large model is never built in
 * memory twice.
 *
 * Invariants: keys are unique (adding an existing key replaces its value in
 * place); tensor names are unique; every tensor's byte size matches its
 * shape and type; the data of each tensor starts at a multiple of the
 * alignment (general.alignment, default 32) from the start of the data
 * section and is followed by zero padding up to the next multiple.
 *
 * gguf_writer_write writes PATH.tmp and renames it to PATH, so PATH is never
 * seen half-written; on failure the temporary file is removed.  Multi-byte
 * fields are written little-endian; tensor bytes are written as given (the
 * host is little-endian, as the GGUF reader also assumes). */
#ifndef ITT_GGUF_WRITE_H
#define ITT_GGUF_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"

typedef struct gguf_writer gguf_writer_t;

int gguf_writer_new(gguf_writer_t **out, struct itt_err *err);
/* Frees everything (borrowed tensor data is untouched); accepts NULL and
 * nulls the caller's pointer. */
void gguf_writer_destroy(gguf_writer_t **w);

/* Scalars.  The key "general.alignment" must be a UINT32 power of two; it
 * sets the data alignment of the file. */
int gguf_writer_add_u8(gguf_writer_t *w, const char *key, uint8_t v, struct itt_err *err);
int gguf_writer_add_i8(gguf_writer_t *w, const char *key, int8_t v, struct itt_err *err);
int gguf_writer_add_u16(gguf_writer_t *w, const char *key, uint16_t v, struct itt_err *err);
int gguf_writer_add_i16(gguf_writer_t *w, const char *key, int16_t v, struct itt_err *err);
int gguf_writer_add_u32(gguf_writer_t *w, const char *key, uint32_t v, struct itt_err *err);
int gguf_writer_add_i32(gguf_writer_t *w, const char *key, int32_t v, struct itt_err *err);
int gguf_writer_add_u64(gguf_writer_t *w, const char *key, uint64_t v, struct itt_err *err);
int gguf_writer_add_i64(gguf_writer_t *w, const char *key, int64_t v, struct itt_err *err);
int gguf_writer_add_f32(gguf_writer_t *w, const char *key, float v, struct itt_err *err);
int gguf_writer_add_f64(gguf_writer_t *w, const char *key, double v, struct itt_err *err);
int gguf_writer_add_bool(gguf_writer_t *w, const char *key, bool v, struct itt_err *err);
/* A NUL-terminated string, or len bytes (any bytes) of s. */
int gguf_writer_add_str(gguf_writer_t *w, const char *key, const char *s, struct itt_err *err);
int gguf_writer_add_str_n(gguf_writer_t *w, const char *key, const char *s, uint64_t len,
                          struct itt_err *err);
/* An array of n scalars of elem_type (not STRING or ARRAY), packed in host
 * order (elements of BOOL are one byte, 0 or 1). */
int gguf_writer_add_arr(gguf_writer_t *w, const char *key, uint32_t elem_type, const void *data,
                        uint64_t n, struct itt_err *err);
int gguf_writer_add_str_arr(gguf_writer_t *w, const char *key, const struct gguf_str *strs,
                            uint64_t n, struct itt_err *err);
/* Copies one key/value pair of an open reader (any type) under its own key. */
int gguf_writer_copy_kv(gguf_writer_t *w, const gguf_t *g, const struct gguf_kv *kv,
                        struct itt_err *err);
/* True if the key was added. */
bool gguf_writer_has_kv(const gguf_writer_t *w, const char *key);
uint64_t gguf_writer_n_kv(const gguf_writer_t *w);

/* Tensor data handed out piece by piece: sets *chunk and *len (> 0) to the
 * next bytes; the pointer must stay valid until the next call.  Returns 0
 * or a negative code (with err set).  It is called until the tensor's size
 * is reached; producing more than the size is an error. */
typedef int (*gguf_writer_fill_fn)(void *ctx, const void **chunk, size_t *len, struct itt_err *err);

enum gguf_writer_flags {
	GGUF_WRITER_BORROW = 0, /* data stays the caller's until the write */
	GGUF_WRITER_COPY = 1,   /* data is copied now */
};

/* Adds a tensor of n_dims (1..GGUF_MAX_DIMS) dimensions ne[0..n_dims)
 * (ne[0] fastest, each >= 1, ne[0] a multiple of the type's block size),
 * of ggml type, with size bytes of data (must equal the size the shape
 * implies). */
int gguf_writer_add_tensor(gguf_writer_t *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                           uint32_t type, const void *data, uint64_t size, unsigned flags,
                           struct itt_err *err);
/* The same, with the data produced by fill(ctx, ...) during the write. */
int gguf_writer_add_tensor_fn(gguf_writer_t *w, const char *name, uint32_t n_dims,
                              const uint64_t *ne, uint32_t type, gguf_writer_fill_fn fill,
                              void *ctx, struct itt_err *err);
uint64_t gguf_writer_n_tensors(const gguf_writer_t *w);

/* Bytes of a tensor of this shape and type; 0 (with err set) if the type is
 * unknown, the shape invalid or the size overflows. */
uint64_t gguf_writer_tensor_bytes(uint32_t n_dims, const uint64_t *ne, uint32_t type,
                                  struct itt_err *err);

/* Writes the file (PATH.tmp, then rename); with sync, fsyncs the file and
 * its directory before returning.  May be called again for another path
 * unless a tensor has a fill function (those are consumed by one write). */
int gguf_writer_write(gguf_writer_t *w, const char *path, bool sync, struct itt_err *err);
/* Total bytes the file will have. */
uint64_t gguf_writer_file_size(const gguf_writer_t *w);

#endif
