/* gguf: a validating reader for GGUF v2/v3 files.
 *
 * The file is mmapped read-only (or a caller's buffer is used, for fuzzing).
 * gguf_open checks every header field, string, array, tensor shape, type,
 * offset and size against the file size with overflow-safe arithmetic before
 * returning; afterwards every pointer handed out lies inside the mapping, so
 * accessors need no further checks.  A malformed file yields ITT_E_FORMAT
 * (or ITT_E_UNSUPPORTED) and a message naming the field.
 *
 * Strings are not NUL-terminated: they are (len, ptr) views into the map.
 * Lifetime: every view and tensor pointer is valid until gguf_close. */
#ifndef ITT_GGUF_H
#define ITT_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4

/* Hard limits a file must respect; anything larger is rejected as hostile. */
#define GGUF_MAX_TENSORS (1u << 20)
#define GGUF_MAX_KV (1u << 20)
#define GGUF_MAX_NAME 65535 /* bytes of a key or tensor name */

enum gguf_type {
	GGUF_TYPE_UINT8 = 0,
	GGUF_TYPE_INT8 = 1,
	GGUF_TYPE_UINT16 = 2,
	GGUF_TYPE_INT16 = 3,
	GGUF_TYPE_UINT32 = 4,
	GGUF_TYPE_INT32 = 5,
	GGUF_TYPE_FLOAT32 = 6,
	GGUF_TYPE_BOOL = 7,
	GGUF_TYPE_STRING = 8,
	GGUF_TYPE_ARRAY = 9,
	GGUF_TYPE_UINT64 = 10,
	GGUF_TYPE_INT64 = 11,
	GGUF_TYPE_FLOAT64 = 12,
	GGUF_TYPE_COUNT
};

/* ggml tensor types (numbering of the GGUF spec); only some are loadable. */
enum ggml_type {
	GGML_TYPE_F32 = 0,
	GGML_TYPE_F16 = 1,
	GGML_TYPE_Q4_0 = 2,
	GGML_TYPE_Q4_1 = 3,
	GGML_TYPE_Q5_0 = 6,
	GGML_TYPE_Q5_1 = 7,
	GGML_TYPE_Q8_0 = 8,
	GGML_TYPE_Q8_1 = 9,
	GGML_TYPE_Q2_K = 10,
	GGML_TYPE_Q3_K = 11,
	GGML_TYPE_Q4_K = 12,
	GGML_TYPE_Q5_K = 13,
	GGML_TYPE_Q6_K = 14,
	GGML_TYPE_Q8_K = 15,
	GGML_TYPE_BF16 = 30,
	GGML_TYPE_COUNT = 40
};

struct gguf_str {
	uint64_t len;
	const char *ptr; /* not NUL-terminated */
};

struct gguf_kv {
	struct gguf_str key;
	uint32_t type;       /* enum gguf_type */
	uint32_t arr_type;   /* element type when type == ARRAY */
	uint64_t arr_n;      /* element count when type == ARRAY */
	const uint8_t *data; /* the value (for arrays: the first element) */
};

struct gguf_tensor {
	struct gguf_str name;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the fastest-varying (row length) */
	uint32_t type;              /* enum ggml_type */
	uint64_t offset;            /* relative to the data section */
	uint64_t size;              /* bytes */
	const void *data;           /* inside the mapping */
};

typedef struct gguf gguf_t;

/* Opens and validates a file (mmap).  *out is set only on success. */
int gguf_open(const char *path, gguf_t **out, struct itt_err *err);
/* Validates a caller-owned buffer, which must outlive the handle. */
int gguf_open_mem(const void *buf, size_t size, gguf_t **out, struct itt_err *err);
/* Unmaps and frees; accepts NULL and nulls the caller's pointer. */
void gguf_close(gguf_t **g);

uint32_t gguf_version(const gguf_t *g);
uint64_t gguf_alignment(const gguf_t *g);
const void *gguf_base(const gguf_t *g, size_t *size); /* the whole mapping */

uint64_t gguf_n_kv(const gguf_t *g);
const struct gguf_kv *gguf_kv_at(const gguf_t *g, uint64_t i);
const struct gguf_kv *gguf_find_kv(const gguf_t *g, const char *key); /* NULL if absent */

uint64_t gguf_n_tensors(const gguf_t *g);
const struct gguf_tensor *gguf_tensor_at(const gguf_t *g, uint64_t i);
const struct gguf_tensor *gguf_find_tensor(const gguf_t *g, const char *name);

/* Typed getters: 0 on success, ITT_E_NOTFOUND if absent, ITT_E_FORMAT if
 * the stored type does not convert (integers convert when the value fits;
 * f32 accepts FLOAT32 or FLOAT64). */
int gguf_get_u32(const gguf_t *g, const char *key, uint32_t *out, struct itt_err *err);
int gguf_get_i32(const gguf_t *g, const char *key, int32_t *out, struct itt_err *err);
int gguf_get_u64(const gguf_t *g, const char *key, uint64_t *out, struct itt_err *err);
int gguf_get_f32(const gguf_t *g, const char *key, float *out, struct itt_err *err);
int gguf_get_bool(const gguf_t *g, const char *key, bool *out, struct itt_err *err);
int gguf_get_str(const gguf_t *g, const char *key, struct gguf_str *out, struct itt_err *err);
/* Array of any element type: element type, count and a pointer to the first
 * element (little-endian, unaligned; use memcpy). */
int gguf_get_arr(const gguf_t *g, const char *key, uint32_t *elem_type, uint64_t *n,
		 const void **data, struct itt_err *err);
/* String array: fills out[0..n) (n must equal the array length). */
int gguf_get_str_arr(const gguf_t *g, const char *key, struct gguf_str *out, uint64_t n,
		     struct itt_err *err);

/* True when the view equals the NUL-terminated s. */
bool gguf_str_eq(struct gguf_str a, const char *s);

/* Type traits of ggml tensor types: block size in elements and bytes per
 * block; 0 for types this reader does not know (the tensor is then rejected). */
uint32_t ggml_blck_size(uint32_t type);
uint32_t ggml_type_size(uint32_t type);
const char *ggml_type_name(uint32_t type);
const char *gguf_type_name(uint32_t type);
/* Encoded size of a scalar metadata value type; 0 for STRING, ARRAY and
 * unknown types. */
uint32_t gguf_scalar_size(uint32_t type);

#endif
