/* gguf: the validating GGUF v2/v3 reader declared in gguf.h.
 *
 * Contract: gguf_open/gguf_open_mem either return a handle whose every view
 * (key, string, array, tensor data) lies inside the buffer, or fail with a
 * negative ITT_E_* code and a message naming the field, its index and the
 * offending numbers.  Nothing in the file is trusted: every read is checked
 * against the bytes remaining with `len > size - off` arithmetic (never
 * `off + len > size`), counts are bounded by hard limits and by what the
 * remaining bytes could possibly hold before any array is allocated, arrays
 * nest at most one level (no recursion), and tensor shapes, types, offsets,
 * sizes, name and key uniqueness and data overlap are all checked.
 *
 * Layout (little-endian; v2 and v3 parse identically, v3 only adds a
 * big-endian variant, recognisable by a byte-swapped version, which we
 * refuse): "GGUF", u32 version, u64 n_tensors, u64 n_kv, n_kv key/values
 * (string key, u32 type, value), n_tensors tensor infos (string name,
 * u32 n_dims, u64 ne[n_dims], u32 type, u64 offset), padding to the
 * alignment (general.alignment, u32, else 32), then the data section.
 * A file without tensors may end before that padding (metadata only).
 * A string is a u64 length and that many bytes; an array is a u32 element
 * type, a u64 count and the elements.
 *
 * Invariants of an open handle: kv[i].data points at the encoded value
 * (for STRING: its u64 length prefix; for ARRAY: the first element, after
 * the element type and count); the sorted indexes kv_ix and t_ix hold each
 * key/name once, ordered by bytes then length, so lookups are binary
 * searches; tensor data ranges are disjoint and inside the data section. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_HEADER_BYTES 24 /* magic, version, n_tensors, n_kv */
/* Smallest encodings, for the plausibility of counts: a kv is a key length,
 * a key byte (empty keys are refused), a type and a one-byte value; a
 * tensor info is a name length, a name byte, n_dims, one ne, type and offset. */
#define GGUF_KV_MIN_BYTES     (8 + 1 + 4 + 1)
#define GGUF_TENSOR_MIN_BYTES (8 + 1 + 4 + 8 + 4 + 8)
#define GGUF_NAME_SHOWN       64 /* bytes of a name quoted in a message */
#define GGUF_NO_INDEX         UINT64_MAX

/* A key or tensor name with its position in the file, sortable. */
struct gguf_name_ix {
	const char *ptr;
	uint64_t len;
	uint32_t idx;
};

struct gguf {
	const uint8_t *base; /* the file bytes */
	size_t size;
	bool mapped; /* base came from mmap and must be unmapped */
	uint32_t version;
	uint64_t alignment;
	uint64_t data_off; /* start of the data section */
	uint64_t n_kv;
	struct gguf_kv *kv;
	struct gguf_name_ix *kv_ix; /* kv keys, sorted */
	uint64_t n_tensors;
	struct gguf_tensor *tensors;
	struct gguf_name_ix *t_ix; /* tensor names, sorted */
};

/* Parse state: a cursor over the buffer and where we are, for messages. */
struct gguf_parser {
	const uint8_t *buf;
	size_t size;
	size_t off;
	const char *what; /* "kv", "tensor" or NULL for the header */
	uint64_t idx;
	struct gguf_str name; /* of the current kv/tensor, once read */
	struct itt_err *err;
};

/* ---- type tables ---------------------------------------------------- */

struct ggml_type_traits {
	const char *name;
	uint32_t blck; /* elements per block */
	uint32_t size; /* bytes per block */
};

/* Block layouts of ggml (QK_K = 256): Q4_0 = f16 d + 16 nibbles bytes;
 * Q4_1 adds an f16 m; Q5_x add 4 bytes of high bits; Q8_0 = f16 d + 32
 * int8; Q8_1 adds an f16 s; K-quants are 256-element super-blocks. */
static const struct ggml_type_traits gguf_ggml_types[GGML_TYPE_COUNT] = {
    [GGML_TYPE_F32] = {"F32", 1, 4},
    [GGML_TYPE_F16] = {"F16", 1, 2},
    [GGML_TYPE_Q4_0] = {"Q4_0", 32, 18},
    [GGML_TYPE_Q4_1] = {"Q4_1", 32, 20},
    [GGML_TYPE_Q5_0] = {"Q5_0", 32, 22},
    [GGML_TYPE_Q5_1] = {"Q5_1", 32, 24},
    [GGML_TYPE_Q8_0] = {"Q8_0", 32, 34},
    [GGML_TYPE_Q8_1] = {"Q8_1", 32, 36},
    [GGML_TYPE_Q2_K] = {"Q2_K", 256, 84},
    [GGML_TYPE_Q3_K] = {"Q3_K", 256, 110},
    [GGML_TYPE_Q4_K] = {"Q4_K", 256, 144},
    [GGML_TYPE_Q5_K] = {"Q5_K", 256, 176},
    [GGML_TYPE_Q6_K] = {"Q6_K", 256, 210},
    [GGML_TYPE_Q8_K] = {"Q8_K", 256, 292},
    [24] = {"I8", 1, 1},
    [25] = {"I16", 1, 2},
    [26] = {"I32", 1, 4},
    [27] = {"I64", 1, 8},
    [28] = {"F64", 1, 8},
    [GGML_TYPE_BF16] = {"BF16", 1, 2},
};

static const char *const gguf_type_names[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_UINT8] = "UINT8",     [GGUF_TYPE_INT8] = "INT8",     [GGUF_TYPE_UINT16] = "UINT16",
    [GGUF_TYPE_INT16] = "INT16",     [GGUF_TYPE_UINT32] = "UINT32", [GGUF_TYPE_INT32] = "INT32",
    [GGUF_TYPE_FLOAT32] = "FLOAT32", [GGUF_TYPE_BOOL] = "BOOL",     [GGUF_TYPE_STRING] = "STRING",
    [GGUF_TYPE_ARRAY] = "ARRAY",     [GGUF_TYPE_UINT64] = "UINT64", [GGUF_TYPE_INT64] = "INT64",
    [GGUF_TYPE_FLOAT64] = "FLOAT64",
};

/* Encoded size of a scalar value type; 0 for STRING, ARRAY and unknown. */
uint32_t gguf_scalar_size(uint32_t type)
{
	switch (type) {
	case GGUF_TYPE_UINT8:
	case GGUF_TYPE_INT8:
	case GGUF_TYPE_BOOL: return 1;
	case GGUF_TYPE_UINT16:
	case GGUF_TYPE_INT16: return 2;
	case GGUF_TYPE_UINT32:
	case GGUF_TYPE_INT32:
	case GGUF_TYPE_FLOAT32: return 4;
	case GGUF_TYPE_UINT64:
	case GGUF_TYPE_INT64:
	case GGUF_TYPE_FLOAT64: return 8;
	}
	return 0;
}

uint32_t ggml_blck_size(uint32_t type)
{
	return type < GGML_TYPE_COUNT ? gguf_ggml_types[type].blck : 0;
}

uint32_t ggml_type_size(uint32_t type)
{
	return type < GGML_TYPE_COUNT ? gguf_ggml_types[type].size : 0;
}

const char *ggml_type_name(uint32_t type)
{
	if (type < GGML_TYPE_COUNT && gguf_ggml_types[type].name)
		return gguf_ggml_types[type].name;
	return "unknown";
}

const char *gguf_type_name(uint32_t type)
{
	return type < GGUF_TYPE_COUNT ? gguf_type_names[type] : "unknown";
}

/* ---- small helpers -------------------------------------------------- */

static uint32_t gguf_load_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t gguf_load_u64(const uint8_t *p)
{
	return (uint64_t)gguf_load_u32(p) | (uint64_t)gguf_load_u32(p + 4) << 32;
}

/* Copies a name into dst for a message: printable ASCII kept, other bytes
 * shown as '?', cut to GGUF_NAME_SHOWN bytes with "..." appended. */
static void gguf_show_name(char *dst, size_t cap, const char *p, uint64_t len)
{
	size_t n = 0;
	uint64_t i;
	for (i = 0; i < len && i < GGUF_NAME_SHOWN && n + 1 < cap; i++) {
		unsigned char c = (unsigned char)p[i];
		dst[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	if (i < len && n + 4 < cap) {
		memcpy(dst + n, "...", 3);
		n += 3;
	}
	dst[n] = '\0';
}

static int gguf_fail(struct gguf_parser *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fails with "<where>: <message>", where is "header", "kv 3" or
 * "kv 3 (tokenizer.ggml.tokens)". */
static int gguf_fail(struct gguf_parser *p, int code, const char *fmt, ...)
{
	char msg[ITT_ERR_MSG];
	char name[GGUF_NAME_SHOWN + 4];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (!p->what)
		return itt_err_set(p->err, code, "header: %s", msg);
	if (p->idx == GGUF_NO_INDEX)
		return itt_err_set(p->err, code, "%s: %s", p->what, msg);
	if (!p->name.ptr)
		return itt_err_set(p->err, code, "%s %" PRIu64 ": %s", p->what, p->idx, msg);
	gguf_show_name(name, sizeof name, p->name.ptr, p->name.len);
	return itt_err_set(p->err, code, "%s %" PRIu64 " (%s): %s", p->what, p->idx, name, msg);
}

static size_t gguf_remaining(const struct gguf_parser *p)
{
	return p->size - p->off;
}

/* Takes n bytes at the cursor; field names what they are, for the message. */
static int gguf_read_bytes(struct gguf_parser *p, uint64_t n, const char *field,
                           const uint8_t **out)
{
	if (n > gguf_remaining(p))
		return gguf_fail(p, ITT_E_FORMAT,
		                 "truncated: %s needs %" PRIu64 " bytes at offset %zu, %zu remain",
		                 field, n, p->off, gguf_remaining(p));
	*out = p->buf + p->off;
	p->off += (size_t)n;
	return 0;
}

static int gguf_read_u32(struct gguf_parser *p, const char *field, uint32_t *v)
{
	const uint8_t *b = NULL;
	int rc = gguf_read_bytes(p, 4, field, &b);
	if (rc == 0)
		*v = gguf_load_u32(b);
	return rc;
}

static int gguf_read_u64(struct gguf_parser *p, const char *field, uint64_t *v)
{
	const uint8_t *b = NULL;
	int rc = gguf_read_bytes(p, 8, field, &b);
	if (rc == 0)
		*v = gguf_load_u64(b);
	return rc;
}

/* Reads a string: field and idx ("string", 17) name it in messages;
 * idx GGUF_NO_INDEX leaves the index out.  max bounds its length. */
static int gguf_read_str(struct gguf_parser *p, const char *field, uint64_t idx, uint64_t max,
                         struct gguf_str *s)
{
	char label[64];
	uint64_t len;

	if (idx == GGUF_NO_INDEX)
		snprintf(label, sizeof label, "%s", field);
	else
		snprintf(label, sizeof label, "%s %" PRIu64, field, idx);
	if (gguf_remaining(p) < 8)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "truncated: %s length needs 8 bytes at offset %zu, %zu remain",
		                 label, p->off, gguf_remaining(p));
	len = gguf_load_u64(p->buf + p->off);
	p->off += 8;
	if (len > gguf_remaining(p))
		return gguf_fail(p, ITT_E_FORMAT,
		                 "%s length %" PRIu64 " exceeds remaining %zu bytes", label, len,
		                 gguf_remaining(p));
	if (len > max)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "%s length %" PRIu64 " exceeds the limit of %" PRIu64, label, len,
		                 max);
	s->len = len;
	s->ptr = (const char *)p->buf + p->off;
	p->off += (size_t)len;
	return 0;
}

/* Bytewise order, shorter first on a common prefix; ties by file index so
 * the first occurrence of a duplicate sorts first. */
static int gguf_cmp_bytes(const char *a, uint64_t alen, const char *b, uint64_t blen)
{
	int c = memcmp(a, b, (size_t)(alen < blen ? alen : blen));
	if (c)
		return c;
	return (alen > blen) - (alen < blen);
}

static int gguf_cmp_name_ix(const void *va, const void *vb)
{
	const struct gguf_name_ix *a = va, *b = vb;
	int c = gguf_cmp_bytes(a->ptr, a->len, b->ptr, b->len);
	if (c)
		return c;
	return (a->idx > b->idx) - (a->idx < b->idx);
}

/* Binary search of a sorted index; the index position or -1. */
static int64_t gguf_find_ix(const struct gguf_name_ix *ix, uint64_t n, const char *key)
{
	uint64_t lo = 0, hi = n, klen = strlen(key);
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		int c = gguf_cmp_bytes(ix[mid].ptr, ix[mid].len, key, klen);
		if (c == 0)
			return (int64_t)ix[mid].idx;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

/* ---- parsing -------------------------------------------------------- */

static int gguf_parse_header(struct gguf_parser *p, gguf_t *g)
{
	uint32_t magic, version;
	size_t rem;

	if (p->size < GGUF_HEADER_BYTES)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "file of %zu bytes is shorter than the %d-byte GGUF header",
		                 p->size, GGUF_HEADER_BYTES);
	magic = gguf_load_u32(p->buf);
	version = gguf_load_u32(p->buf + 4);
	if (magic != GGUF_MAGIC)
		return gguf_fail(p, ITT_E_FORMAT, "bad magic 0x%08" PRIx32 " (want \"GGUF\")",
		                 magic);
	if (version == 1)
		return gguf_fail(p, ITT_E_UNSUPPORTED,
		                 "version 1 (32-bit counts) is not supported; convert to v3");
	if (version == 0x02000000u || version == 0x03000000u)
		return gguf_fail(p, ITT_E_UNSUPPORTED,
		                 "big-endian GGUF (version 0x%08" PRIx32 ") is not supported",
		                 version);
	if (version != 2 && version != 3)
		return gguf_fail(p, ITT_E_UNSUPPORTED,
		                 "version %" PRIu32 " is not supported (2 or 3)", version);
	g->version = version;
	g->n_tensors = gguf_load_u64(p->buf + 8);
	g->n_kv = gguf_load_u64(p->buf + 16);
	p->off = GGUF_HEADER_BYTES;

	/* Bound the counts before anything is allocated from them. */
	if (g->n_kv > GGUF_MAX_KV)
		return gguf_fail(p, ITT_E_FORMAT, "n_kv %" PRIu64 " exceeds the limit of %u",
		                 g->n_kv, GGUF_MAX_KV);
	if (g->n_tensors > GGUF_MAX_TENSORS)
		return gguf_fail(p, ITT_E_FORMAT, "n_tensors %" PRIu64 " exceeds the limit of %u",
		                 g->n_tensors, GGUF_MAX_TENSORS);
	rem = gguf_remaining(p);
	if (g->n_kv > rem / GGUF_KV_MIN_BYTES)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "n_kv %" PRIu64 " cannot fit in the %zu bytes after the header",
		                 g->n_kv, rem);
	rem -= (size_t)g->n_kv * GGUF_KV_MIN_BYTES;
	if (g->n_tensors > rem / GGUF_TENSOR_MIN_BYTES)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "n_tensors %" PRIu64
		                 " cannot fit in the %zu bytes left by %" PRIu64 " kvs",
		                 g->n_tensors, rem, g->n_kv);
	return 0;
}

/* Validates n elements of a scalar type at the cursor (bools must be 0/1). */
static int gguf_parse_scalars(struct gguf_parser *p, uint32_t type, uint64_t n, bool in_array)
{
	uint64_t esz = gguf_scalar_size(type);
	const uint8_t *b = NULL;

	if (!in_array && esz > gguf_remaining(p))
		return gguf_fail(p, ITT_E_FORMAT,
		                 "truncated: %s value needs %" PRIu64
		                 " bytes at offset %zu, %zu remain",
		                 gguf_type_name(type), esz, p->off, gguf_remaining(p));
	if (n > gguf_remaining(p) / esz)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "array of %" PRIu64 " %s (%" PRIu64
		                 " bytes each) exceeds remaining %zu bytes",
		                 n, gguf_type_name(type), esz, gguf_remaining(p));
	b = p->buf + p->off;
	if (type == GGUF_TYPE_BOOL) {
		for (uint64_t i = 0; i < n; i++) {
			if (b[i] > 1) {
				if (in_array)
					return gguf_fail(p, ITT_E_FORMAT,
					                 "bool element %" PRIu64
					                 " is %u (want 0 or 1)",
					                 i, b[i]);
				return gguf_fail(p, ITT_E_FORMAT, "bool value is %u (want 0 or 1)",
				                 b[i]);
			}
		}
	}
	p->off += (size_t)(n * esz);
	return 0;
}

/* The value of one kv, after its key and type; arrays nest one level. */
static int gguf_parse_value(struct gguf_parser *p, struct gguf_kv *kv)
{
	struct gguf_str s;
	int rc;

	kv->data = p->buf + p->off;
	if (kv->type == GGUF_TYPE_STRING)
		return gguf_read_str(p, "string value", GGUF_NO_INDEX, UINT64_MAX, &s);
	if (kv->type != GGUF_TYPE_ARRAY)
		return gguf_parse_scalars(p, kv->type, 1, false);

	if ((rc = gguf_read_u32(p, "array element type", &kv->arr_type)) ||
	    (rc = gguf_read_u64(p, "array length", &kv->arr_n)))
		return rc;
	kv->data = p->buf + p->off;
	if (kv->arr_type == GGUF_TYPE_ARRAY)
		return gguf_fail(p, ITT_E_UNSUPPORTED, "arrays of arrays are not supported");
	if (kv->arr_type >= GGUF_TYPE_COUNT)
		return gguf_fail(p, ITT_E_FORMAT, "unknown array element type %" PRIu32,
		                 kv->arr_type);
	if (kv->arr_type != GGUF_TYPE_STRING)
		return gguf_parse_scalars(p, kv->arr_type, kv->arr_n, true);

	/* Each string needs at least its 8-byte length: bound n first. */
	if (kv->arr_n > gguf_remaining(p) / 8)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "array of %" PRIu64 " strings exceeds remaining %zu bytes",
		                 kv->arr_n, gguf_remaining(p));
	for (uint64_t i = 0; i < kv->arr_n; i++)
		if ((rc = gguf_read_str(p, "string", i, UINT64_MAX, &s)))
			return rc;
	return 0;
}

static int gguf_parse_alignment(struct gguf_parser *p, gguf_t *g, const struct gguf_kv *kv)
{
	uint32_t a;
	if (kv->type != GGUF_TYPE_UINT32)
		return gguf_fail(p, ITT_E_FORMAT, "type %s, want UINT32", gguf_type_name(kv->type));
	a = gguf_load_u32(kv->data);
	if (a == 0 || (a & (a - 1)) != 0)
		return gguf_fail(p, ITT_E_FORMAT, "alignment %" PRIu32 " is not a power of two", a);
	g->alignment = a;
	return 0;
}

static int gguf_parse_kvs(struct gguf_parser *p, gguf_t *g)
{
	int rc;

	p->what = "kv";
	for (uint64_t i = 0; i < g->n_kv; i++) {
		struct gguf_kv *kv = &g->kv[i];
		p->idx = i;
		p->name.ptr = NULL;
		if ((rc = gguf_read_str(p, "key", GGUF_NO_INDEX, GGUF_MAX_NAME, &kv->key)))
			return rc;
		if (kv->key.len == 0)
			return gguf_fail(p, ITT_E_FORMAT, "empty key");
		p->name = kv->key;
		if ((rc = gguf_read_u32(p, "value type", &kv->type)))
			return rc;
		if (kv->type >= GGUF_TYPE_COUNT)
			return gguf_fail(p, ITT_E_FORMAT, "unknown value type %" PRIu32, kv->type);
		if ((rc = gguf_parse_value(p, kv)))
			return rc;
		if (gguf_str_eq(kv->key, "general.alignment") &&
		    (rc = gguf_parse_alignment(p, g, kv)))
			return rc;
	}
	return 0;
}

/* Shape, type and byte size of one tensor info (its offset is checked
 * once the data section is known). */
static int gguf_parse_tensor_info(struct gguf_parser *p, struct gguf_tensor *t)
{
	char field[16];
	uint64_t nelem = 1, blocks;
	uint32_t blck, tsize;
	int rc;

	if ((rc = gguf_read_str(p, "name", GGUF_NO_INDEX, GGUF_MAX_NAME, &t->name)))
		return rc;
	if (t->name.len == 0)
		return gguf_fail(p, ITT_E_FORMAT, "empty name");
	p->name = t->name;
	if ((rc = gguf_read_u32(p, "n_dims", &t->n_dims)))
		return rc;
	if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
		return gguf_fail(p, ITT_E_FORMAT, "n_dims %" PRIu32 " outside 1..%d", t->n_dims,
		                 GGUF_MAX_DIMS);
	for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
		t->ne[d] = 1;
	for (uint32_t d = 0; d < t->n_dims; d++) {
		snprintf(field, sizeof field, "ne[%" PRIu32 "]", d);
		if ((rc = gguf_read_u64(p, field, &t->ne[d])))
			return rc;
		if (t->ne[d] == 0)
			return gguf_fail(p, ITT_E_FORMAT, "ne[%" PRIu32 "] is 0", d);
		if (t->ne[d] > UINT64_MAX / nelem)
			return gguf_fail(p, ITT_E_FORMAT,
			                 "element count overflows at ne[%" PRIu32 "]", d);
		nelem *= t->ne[d];
	}
	if ((rc = gguf_read_u32(p, "type", &t->type)) ||
	    (rc = gguf_read_u64(p, "offset", &t->offset)))
		return rc;
	blck = ggml_blck_size(t->type);
	tsize = ggml_type_size(t->type);
	if (blck == 0 || tsize == 0)
		return gguf_fail(p, ITT_E_FORMAT, "unknown tensor type %" PRIu32, t->type);
	if (t->ne[0] % blck != 0)
		return gguf_fail(p, ITT_E_FORMAT,
		                 "ne[0] %" PRIu64
		                 " is not a multiple of the %s block size %" PRIu32,
		                 t->ne[0], ggml_type_name(t->type), blck);
	blocks = nelem / blck;
	if (blocks > UINT64_MAX / tsize)
		return gguf_fail(p, ITT_E_FORMAT, "byte size of %" PRIu64 " %s elements overflows",
		                 nelem, ggml_type_name(t->type));
	t->size = blocks * tsize;
	return 0;
}

/* Places every tensor inside the data section and checks alignment. */
static int gguf_place_tensors(struct gguf_parser *p, gguf_t *g)
{
	uint64_t data_size = g->size - g->data_off;

	for (uint64_t i = 0; i < g->n_tensors; i++) {
		struct gguf_tensor *t = &g->tensors[i];
		p->idx = i;
		p->name = t->name;
		if (t->offset % g->alignment != 0)
			return gguf_fail(p, ITT_E_FORMAT,
			                 "offset %" PRIu64
			                 " is not a multiple of the alignment %" PRIu64,
			                 t->offset, g->alignment);
		if (t->offset > data_size || t->size > data_size - t->offset)
			return gguf_fail(p, ITT_E_FORMAT,
			                 "data [offset %" PRIu64 ", size %" PRIu64
			                 "] exceeds data section of %" PRIu64 " bytes",
			                 t->offset, t->size, data_size);
		t->data = g->base + g->data_off + t->offset;
	}
	return 0;
}

/* Rejects duplicate names in a sorted index (kind: "key" or "name"). */
static int gguf_check_dups(struct gguf_parser *p, const struct gguf_name_ix *ix, uint64_t n,
                           const char *kind)
{
	for (uint64_t i = 1; i < n; i++) {
		if (gguf_cmp_bytes(ix[i - 1].ptr, ix[i - 1].len, ix[i].ptr, ix[i].len) == 0) {
			p->idx = ix[i].idx;
			p->name.ptr = ix[i].ptr;
			p->name.len = ix[i].len;
			return gguf_fail(p, ITT_E_FORMAT, "duplicate %s (first at %s %" PRIu32 ")",
			                 kind, p->what, ix[i - 1].idx);
		}
	}
	return 0;
}

/* A tensor's byte range, sorted by offset (ties by index) for the
 * overlap check; plain qsort keeps the comparator free of state. */
struct gguf_span {
	uint64_t offset;
	uint64_t size;
	uint32_t idx;
};

static int gguf_cmp_span(const void *va, const void *vb)
{
	const struct gguf_span *a = va, *b = vb;
	if (a->offset != b->offset)
		return (a->offset > b->offset) - (a->offset < b->offset);
	return (a->idx > b->idx) - (a->idx < b->idx);
}

/* Neighbours in offset order must not overlap. */
static int gguf_check_overlap(struct gguf_parser *p, gguf_t *g)
{
	struct gguf_span *span;
	char prev[GGUF_NAME_SHOWN + 4];
	int rc = 0;

	if (g->n_tensors < 2)
		return 0;
	span = malloc((size_t)g->n_tensors * sizeof *span);
	if (!span)
		return itt_err_set(p->err, ITT_E_NOMEM, "gguf: allocating %" PRIu64 " tensor spans",
		                   g->n_tensors);
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		span[i].offset = g->tensors[i].offset;
		span[i].size = g->tensors[i].size;
		span[i].idx = (uint32_t)i;
	}
	qsort(span, (size_t)g->n_tensors, sizeof *span, gguf_cmp_span);
	for (uint64_t i = 1; i < g->n_tensors; i++) {
		const struct gguf_span *a = &span[i - 1], *b = &span[i];
		/* a->offset + a->size cannot overflow: both lie in the data section */
		if (a->offset + a->size > b->offset) {
			const struct gguf_str *an = &g->tensors[a->idx].name;
			p->idx = b->idx;
			p->name = g->tensors[b->idx].name;
			gguf_show_name(prev, sizeof prev, an->ptr, an->len);
			rc = gguf_fail(p, ITT_E_FORMAT,
			               "data [offset %" PRIu64 ", size %" PRIu64
			               "] overlaps tensor %" PRIu32 " (%s) [offset %" PRIu64
			               ", size %" PRIu64 "]",
			               b->offset, b->size, a->idx, prev, a->offset, a->size);
			break;
		}
	}
	free(span);
	return rc;
}

/* Sorts (name, index) pairs and rejects duplicates; kind is "key" or
 * "name" and p->what says whether they are kvs or tensors. */
static int gguf_index_names(struct gguf_parser *p, struct gguf_name_ix *ix, uint64_t n,
                            const char *kind)
{
	qsort(ix, (size_t)n, sizeof *ix, gguf_cmp_name_ix);
	return gguf_check_dups(p, ix, n, kind);
}

static int gguf_parse(gguf_t *g, struct itt_err *err)
{
	struct gguf_parser p = {.buf = g->base, .size = g->size, .err = err};
	uint64_t pad;
	int rc;

	if ((rc = gguf_parse_header(&p, g)))
		return rc;
	g->alignment = GGUF_DEFAULT_ALIGNMENT;
	/* calloc checks n * size; the counts are already bounded by the file. */
	g->kv = calloc((size_t)(g->n_kv ? g->n_kv : 1), sizeof *g->kv);
	g->tensors = calloc((size_t)(g->n_tensors ? g->n_tensors : 1), sizeof *g->tensors);
	if (!g->kv || !g->tensors)
		return itt_err_set(err, ITT_E_NOMEM,
		                   "gguf: allocating %" PRIu64 " kvs and %" PRIu64 " tensors",
		                   g->n_kv, g->n_tensors);
	if ((rc = gguf_parse_kvs(&p, g)))
		return rc;

	p.what = "tensor";
	for (uint64_t i = 0; i < g->n_tensors; i++) {
		p.idx = i;
		p.name.ptr = NULL;
		if ((rc = gguf_parse_tensor_info(&p, &g->tensors[i])))
			return rc;
	}

	/* The data section starts at the next multiple of the alignment. */
	p.what = "data section";
	p.idx = GGUF_NO_INDEX;
	pad = (g->alignment - p.off % g->alignment) % g->alignment;
	if (g->n_tensors == 0 && pad > gguf_remaining(&p))
		pad = gguf_remaining(&p); /* metadata-only files may omit the padding */
	if (pad > gguf_remaining(&p))
		return gguf_fail(&p, ITT_E_FORMAT,
		                 "would start at offset %zu + %" PRIu64
		                 " padding, past the end of the %zu-byte file",
		                 p.off, pad, p.size);
	g->data_off = p.off + pad;
	if (g->data_off == g->size && g->n_tensors > 0)
		return gguf_fail(&p, ITT_E_FORMAT,
		                 "empty (at offset %" PRIu64 ") but there are %" PRIu64 " tensors",
		                 g->data_off, g->n_tensors);
	p.what = "tensor";
	if ((rc = gguf_place_tensors(&p, g)))
		return rc;

	g->kv_ix = malloc((size_t)(g->n_kv ? g->n_kv : 1) * sizeof *g->kv_ix);
	g->t_ix = malloc((size_t)(g->n_tensors ? g->n_tensors : 1) * sizeof *g->t_ix);
	if (!g->kv_ix || !g->t_ix)
		return itt_err_set(err, ITT_E_NOMEM, "gguf: allocating the name indexes");
	for (uint64_t i = 0; i < g->n_kv; i++)
		g->kv_ix[i] =
		    (struct gguf_name_ix){g->kv[i].key.ptr, g->kv[i].key.len, (uint32_t)i};
	for (uint64_t i = 0; i < g->n_tensors; i++)
		g->t_ix[i] = (struct gguf_name_ix){g->tensors[i].name.ptr, g->tensors[i].name.len,
		                                   (uint32_t)i};
	p.what = "kv";
	if ((rc = gguf_index_names(&p, g->kv_ix, g->n_kv, "key")))
		return rc;
	p.what = "tensor";
	if ((rc = gguf_index_names(&p, g->t_ix, g->n_tensors, "name")))
		return rc;
	return gguf_check_overlap(&p, g);
}

static void gguf_free(gguf_t *g)
{
	if (!g)
		return;
	if (g->mapped && g->base)
		munmap((void *)g->base, g->size);
	free(g->kv);
	free(g->kv_ix);
	free(g->tensors);
	free(g->t_ix);
	free(g);
}

int gguf_open_mem(const void *buf, size_t size, gguf_t **out, struct itt_err *err)
{
	gguf_t *g;
	int rc;

	if (!out || (!buf && size > 0))
		return itt_err_set(err, ITT_E_INVALID, "gguf_open_mem: NULL %s",
		                   out ? "buffer" : "out");
	g = calloc(1, sizeof *g);
	if (!g)
		return itt_err_set(err, ITT_E_NOMEM, "gguf_open_mem: allocating the handle");
	g->base = buf;
	g->size = size;
	rc = gguf_parse(g, err);
	if (rc) {
		gguf_free(g);
		return rc;
	}
	*out = g;
	return 0;
}

int gguf_open(const char *path, gguf_t **out, struct itt_err *err)
{
	struct stat st;
	void *map;
	int fd, rc;

	if (!path || !out)
		return itt_err_set(err, ITT_E_INVALID, "gguf_open: NULL %s", path ? "out" : "path");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return itt_err_set(err, ITT_E_IO, "gguf_open: open %s: %s", path, strerror(errno));
	if (fstat(fd, &st) != 0) {
		rc = itt_err_set(err, ITT_E_IO, "gguf_open: fstat %s: %s", path, strerror(errno));
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return itt_err_set(err, ITT_E_IO, "gguf_open: %s is not a regular file", path);
	}
	if ((uint64_t)st.st_size < GGUF_HEADER_BYTES) {
		/* mmap of an empty file fails; report the format problem instead. */
		close(fd);
		return itt_err_set(err, ITT_E_FORMAT,
		                   "%s: file of %lld bytes is shorter than the %d-byte GGUF header",
		                   path, (long long)st.st_size, GGUF_HEADER_BYTES);
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		close(fd);
		return itt_err_set(err, ITT_E_UNSUPPORTED, "gguf_open: %s is too large to map",
		                   path);
	}
	map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (map == MAP_FAILED)
		return itt_err_set(err, ITT_E_IO, "gguf_open: mmap %s: %s", path, strerror(errno));
	rc = gguf_open_mem(map, (size_t)st.st_size, out, err);
	if (rc) {
		munmap(map, (size_t)st.st_size);
		return rc;
	}
	(*out)->mapped = true;
	return 0;
}

void gguf_close(gguf_t **g)
{
	if (!g)
		return;
	gguf_free(*g);
	*g = NULL;
}

/* ---- accessors ------------------------------------------------------ */

uint32_t gguf_version(const gguf_t *g)
{
	return g ? g->version : 0;
}

uint64_t gguf_alignment(const gguf_t *g)
{
	return g ? g->alignment : 0;
}

const void *gguf_base(const gguf_t *g, size_t *size)
{
	if (size)
		*size = g ? g->size : 0;
	return g ? g->base : NULL;
}

uint64_t gguf_n_kv(const gguf_t *g)
{
	return g ? g->n_kv : 0;
}

const struct gguf_kv *gguf_kv_at(const gguf_t *g, uint64_t i)
{
	return g && i < g->n_kv ? &g->kv[i] : NULL;
}

const struct gguf_kv *gguf_find_kv(const gguf_t *g, const char *key)
{
	int64_t i;
	if (!g || !key)
		return NULL;
	i = gguf_find_ix(g->kv_ix, g->n_kv, key);
	return i < 0 ? NULL : &g->kv[i];
}

uint64_t gguf_n_tensors(const gguf_t *g)
{
	return g ? g->n_tensors : 0;
}

const struct gguf_tensor *gguf_tensor_at(const gguf_t *g, uint64_t i)
{
	return g && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const struct gguf_tensor *gguf_find_tensor(const gguf_t *g, const char *name)
{
	int64_t i;
	if (!g || !name)
		return NULL;
	i = gguf_find_ix(g->t_ix, g->n_tensors, name);
	return i < 0 ? NULL : &g->tensors[i];
}

bool gguf_str_eq(struct gguf_str a, const char *s)
{
	size_t n = strlen(s);
	return a.len == n && memcmp(a.ptr, s, n) == 0;
}

/* The kv for a getter, or an error naming the key. */
static int gguf_lookup(const gguf_t *g, const char *key, const struct gguf_kv **kv,
                       struct itt_err *err)
{
	if (!g || !key)
		return itt_err_set(err, ITT_E_INVALID, "gguf get: NULL %s", g ? "key" : "handle");
	*kv = gguf_find_kv(g, key);
	if (!*kv)
		return itt_err_set(err, ITT_E_NOTFOUND, "key %s: absent", key);
	return 0;
}

static int gguf_type_mismatch(const struct gguf_kv *kv, const char *key, const char *want,
                              struct itt_err *err)
{
	if (kv->type == GGUF_TYPE_ARRAY)
		return itt_err_set(err, ITT_E_FORMAT, "key %s: stored as ARRAY of %s, want %s", key,
		                   gguf_type_name(kv->arr_type), want);
	return itt_err_set(err, ITT_E_FORMAT, "key %s: stored as %s, want %s", key,
	                   gguf_type_name(kv->type), want);
}

/* Reads an integer kv as (negative?, magnitude-or-value) so any integer
 * type can be range-checked against any target.  Returns false when the
 * kv does not hold an integer. */
static bool gguf_load_int(const struct gguf_kv *kv, bool *neg, uint64_t *u, int64_t *s)
{
	const uint8_t *d = kv->data;
	*neg = false;
	switch (kv->type) {
	case GGUF_TYPE_UINT8: *u = d[0]; break;
	case GGUF_TYPE_UINT16: *u = (uint64_t)d[0] | (uint64_t)d[1] << 8; break;
	case GGUF_TYPE_UINT32: *u = gguf_load_u32(d); break;
	case GGUF_TYPE_UINT64: *u = gguf_load_u64(d); break;
	case GGUF_TYPE_INT8: *s = (int8_t)d[0]; goto sign;
	case GGUF_TYPE_INT16:
		*s = (int16_t)(uint16_t)((uint16_t)d[0] | (uint16_t)d[1] << 8);
		goto sign;
	case GGUF_TYPE_INT32: *s = (int32_t)gguf_load_u32(d); goto sign;
	case GGUF_TYPE_INT64: *s = (int64_t)gguf_load_u64(d); goto sign;
	default: return false;
	}
	*s = *u > INT64_MAX ? INT64_MAX : (int64_t)*u;
	return true;
sign:
	*neg = *s < 0;
	*u = *neg ? 0 : (uint64_t)*s;
	return true;
}

static int gguf_get_int(const gguf_t *g, const char *key, int64_t lo, uint64_t hi, bool *neg,
                        uint64_t *u, int64_t *s, const char *want, struct itt_err *err)
{
	const struct gguf_kv *kv;
	int rc = gguf_lookup(g, key, &kv, err);
	if (rc)
		return rc;
	if (!gguf_load_int(kv, neg, u, s))
		return gguf_type_mismatch(kv, key, want, err);
	if ((*neg && *s < lo) || (!*neg && *u > hi)) {
		if (*neg)
			return itt_err_set(err, ITT_E_FORMAT,
			                   "key %s: %s value %" PRId64 " does not fit %s", key,
			                   gguf_type_name(kv->type), *s, want);
		return itt_err_set(err, ITT_E_FORMAT,
		                   "key %s: %s value %" PRIu64 " does not fit %s", key,
		                   gguf_type_name(kv->type), *u, want);
	}
	return 0;
}

int gguf_get_u32(const gguf_t *g, const char *key, uint32_t *out, struct itt_err *err)
{
	bool neg;
	uint64_t u;
	int64_t s;
	int rc = gguf_get_int(g, key, 0, UINT32_MAX, &neg, &u, &s, "UINT32", err);
	if (rc == 0)
		*out = (uint32_t)u;
	return rc;
}

int gguf_get_i32(const gguf_t *g, const char *key, int32_t *out, struct itt_err *err)
{
	bool neg;
	uint64_t u;
	int64_t s;
	int rc = gguf_get_int(g, key, INT32_MIN, INT32_MAX, &neg, &u, &s, "INT32", err);
	if (rc == 0)
		*out = (int32_t)s;
	return rc;
}

int gguf_get_u64(const gguf_t *g, const char *key, uint64_t *out, struct itt_err *err)
{
	bool neg;
	uint64_t u;
	int64_t s;
	int rc = gguf_get_int(g, key, 0, UINT64_MAX, &neg, &u, &s, "UINT64", err);
	if (rc == 0)
		*out = u;
	return rc;
}

int gguf_get_f32(const gguf_t *g, const char *key, float *out, struct itt_err *err)
{
	const struct gguf_kv *kv;
	int rc = gguf_lookup(g, key, &kv, err);
	if (rc)
		return rc;
	if (kv->type == GGUF_TYPE_FLOAT32) {
		memcpy(out, kv->data, sizeof *out);
		return 0;
	}
	if (kv->type == GGUF_TYPE_FLOAT64) {
		double d;
		memcpy(&d, kv->data, sizeof d);
		if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
			return itt_err_set(err, ITT_E_FORMAT,
			                   "key %s: FLOAT64 value %g does not fit FLOAT32", key, d);
		*out = (float)d;
		return 0;
	}
	return gguf_type_mismatch(kv, key, "FLOAT32", err);
}

int gguf_get_bool(const gguf_t *g, const char *key, bool *out, struct itt_err *err)
{
	const struct gguf_kv *kv;
	int rc = gguf_lookup(g, key, &kv, err);
	if (rc)
		return rc;
	if (kv->type != GGUF_TYPE_BOOL)
		return gguf_type_mismatch(kv, key, "BOOL", err);
	*out = kv->data[0] != 0;
	return 0;
}

int gguf_get_str(const gguf_t *g, const char *key, struct gguf_str *out, struct itt_err *err)
{
	const struct gguf_kv *kv;
	int rc = gguf_lookup(g, key, &kv, err);
	if (rc)
		return rc;
	if (kv->type != GGUF_TYPE_STRING)
		return gguf_type_mismatch(kv, key, "STRING", err);
	out->len = gguf_load_u64(kv->data);
	out->ptr = (const char *)kv->data + 8;
	return 0;
}

int gguf_get_arr(const gguf_t *g, const char *key, uint32_t *elem_type, uint64_t *n,
                 const void **data, struct itt_err *err)
{
	const struct gguf_kv *kv;
	int rc = gguf_lookup(g, key, &kv, err);
	if (rc)
		return rc;
	if (kv->type != GGUF_TYPE_ARRAY)
		return gguf_type_mismatch(kv, key, "ARRAY", err);
	*elem_type = kv->arr_type;
	*n = kv->arr_n;
	*data = kv->data;
	return 0;
}

int gguf_get_str_arr(const gguf_t *g, const char *key, struct gguf_str *out, uint64_t n,
                     struct itt_err *err)
{
	const struct gguf_kv *kv;
	const uint8_t *d;
	int rc = gguf_lookup(g, key, &kv, err);
	if (rc)
		return rc;
	if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING)
		return gguf_type_mismatch(kv, key, "ARRAY of STRING", err);
	if (n != kv->arr_n)
		return itt_err_set(err, ITT_E_INVALID,
		                   "key %s: caller has room for %" PRIu64
		                   " strings, array holds %" PRIu64,
		                   key, n, kv->arr_n);
	/* Every string was bounds-checked by gguf_open. */
	d = kv->data;
	for (uint64_t i = 0; i < n; i++) {
		out[i].len = gguf_load_u64(d);
		out[i].ptr = (const char *)d + 8;
		d += 8 + out[i].len;
	}
	return 0;
}
