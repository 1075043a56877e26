/* gguf-write: builds a GGUF v3 file from key/value pairs and tensors.
 *
 * Each key/value pair is kept as its serialised bytes (key, type, value),
 * so writing the metadata is a sequence of fwrites.  Tensors keep their
 * description and a data source; offsets are assigned when the file is
 * written (the alignment may change until then).  The data section is
 * streamed tensor by tensor through one buffered FILE, so the writer never
 * holds more than one fill chunk beyond what the caller already has. */
#include "gguf-write.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf-write writes tensor bytes as given and assumes a little-endian host"
#endif

#define GGUF_WRITE_VERSION         3
#define GGUF_WRITE_MAX_TENSOR_NAME 63 /* ggml's GGML_MAX_NAME is 64 with the NUL */
#define GGUF_WRITE_BUF             (1u << 20)

struct wkv {
	char *key;     /* NUL-terminated copy */
	uint8_t *blob; /* serialised: key string, type, value */
	size_t blob_len;
};

struct wtensor {
	char *name;
	uint32_t n_dims;
	uint64_t ne[GGUF_MAX_DIMS];
	uint32_t type;
	uint64_t size;
	uint64_t offset;  /* assigned by gguf_writer_write */
	const void *data; /* borrowed or == owned; NULL with fill */
	void *owned;
	gguf_writer_fill_fn fill;
	void *ctx;
};

struct gguf_writer {
	struct wkv *kv;
	uint64_t n_kv, cap_kv;
	struct wtensor *t;
	uint64_t n_t, cap_t;
	uint32_t alignment;
	bool consumed; /* fill functions have run */
};

/* A growable byte buffer used to serialise one key/value pair. */
struct bbuf {
	uint8_t *p;
	size_t len, cap;
	bool oom;
};

static void bbuf_put(struct bbuf *b, const void *src, size_t n)
{
	if (b->oom)
		return;
	if (n > SIZE_MAX - b->len) {
		b->oom = true;
		return;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->len + n)
			cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, src, n);
	b->len += n;
}

static void bbuf_u32(struct bbuf *b, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
	bbuf_put(b, x, 4);
}

static void bbuf_u64(struct bbuf *b, uint64_t v)
{
	uint8_t x[8];
	for (int i = 0; i < 8; i++)
		x[i] = (uint8_t)(v >> (8 * i));
	bbuf_put(b, x, 8);
}

static void bbuf_str(struct bbuf *b, const char *s, uint64_t len)
{
	bbuf_u64(b, len);
	if (len > SIZE_MAX) {
		b->oom = true;
		return;
	}
	bbuf_put(b, s, (size_t)len);
}

int gguf_writer_new(gguf_writer_t **out, struct itt_err *err)
{
	if (!out)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer_new: out is NULL");
	gguf_writer_t *w = calloc(1, sizeof *w);
	if (!w)
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer_new: out of memory");
	w->alignment = GGUF_DEFAULT_ALIGNMENT;
	*out = w;
	return 0;
}

void gguf_writer_destroy(gguf_writer_t **wp)
{
	if (!wp || !*wp)
		return;
	gguf_writer_t *w = *wp;
	for (uint64_t i = 0; i < w->n_kv; i++) {
		free(w->kv[i].key);
		free(w->kv[i].blob);
	}
	for (uint64_t i = 0; i < w->n_t; i++) {
		free(w->t[i].name);
		free(w->t[i].owned);
	}
	free(w->kv);
	free(w->t);
	free(w);
	*wp = NULL;
}

static struct wkv *find_kv(const gguf_writer_t *w, const char *key)
{
	for (uint64_t i = 0; i < w->n_kv; i++)
		if (strcmp(w->kv[i].key, key) == 0)
			return &w->kv[i];
	return NULL;
}

bool gguf_writer_has_kv(const gguf_writer_t *w, const char *key)
{
	return w && key && find_kv(w, key) != NULL;
}

uint64_t gguf_writer_n_kv(const gguf_writer_t *w)
{
	return w ? w->n_kv : 0;
}

uint64_t gguf_writer_n_tensors(const gguf_writer_t *w)
{
	return w ? w->n_t : 0;
}

static int check_key(gguf_writer_t *w, const char *key, struct itt_err *err)
{
	if (!w || !key)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer: writer or key is NULL");
	size_t n = strlen(key);
	if (n == 0 || n > GGUF_MAX_NAME)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer: key length %zu not in [1, %u]",
		                   n, GGUF_MAX_NAME);
	if (w->n_kv >= GGUF_MAX_KV && !find_kv(w, key))
		return itt_err_set(err, ITT_E_FULL, "gguf_writer: more than %u keys", GGUF_MAX_KV);
	return 0;
}

/* Starts the blob of key with its type. */
static void begin_kv(struct bbuf *b, const char *key, uint32_t type)
{
	bbuf_str(b, key, strlen(key));
	bbuf_u32(b, type);
}

/* Stores the finished blob under key (replacing an existing value). */
static int finish_kv(gguf_writer_t *w, const char *key, struct bbuf *b, struct itt_err *err)
{
	if (b->oom) {
		free(b->p);
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer: key %s: out of memory", key);
	}
	struct wkv *kv = find_kv(w, key);
	if (kv) {
		free(kv->blob);
		kv->blob = b->p;
		kv->blob_len = b->len;
		return 0;
	}
	if (w->n_kv == w->cap_kv) {
		uint64_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
		struct wkv *p = realloc(w->kv, cap * sizeof *p);
		if (!p) {
			free(b->p);
			return itt_err_set(err, ITT_E_NOMEM, "gguf_writer: key %s: out of memory",
			                   key);
		}
		w->kv = p;
		w->cap_kv = cap;
	}
	char *k = strdup(key);
	if (!k) {
		free(b->p);
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer: key %s: out of memory", key);
	}
	w->kv[w->n_kv++] = (struct wkv){.key = k, .blob = b->p, .blob_len = b->len};
	return 0;
}

static int add_scalar(gguf_writer_t *w, const char *key, uint32_t type, const void *v,
                      struct itt_err *err)
{
	int rc = check_key(w, key, err);
	if (rc)
		return rc;
	if (strcmp(key, "general.alignment") == 0) {
		uint32_t a;
		if (type != GGUF_TYPE_UINT32)
			return itt_err_set(err, ITT_E_INVALID,
			                   "gguf_writer: general.alignment must be UINT32, not %s",
			                   gguf_type_name(type));
		memcpy(&a, v, 4);
		if (a == 0 || (a & (a - 1)) != 0)
			return itt_err_set(
			    err, ITT_E_INVALID,
			    "gguf_writer: general.alignment %u is not a power of two", a);
	}
	struct bbuf b = {0};
	begin_kv(&b, key, type);
	bbuf_put(&b, v, gguf_scalar_size(type));
	rc = finish_kv(w, key, &b, err);
	if (rc == 0 && strcmp(key, "general.alignment") == 0)
		memcpy(&w->alignment, v, 4);
	return rc;
}

int gguf_writer_add_u8(gguf_writer_t *w, const char *key, uint8_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_UINT8, &v, err);
}

int gguf_writer_add_i8(gguf_writer_t *w, const char *key, int8_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_INT8, &v, err);
}

int gguf_writer_add_u16(gguf_writer_t *w, const char *key, uint16_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_UINT16, &v, err);
}

int gguf_writer_add_i16(gguf_writer_t *w, const char *key, int16_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_INT16, &v, err);
}

int gguf_writer_add_u32(gguf_writer_t *w, const char *key, uint32_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_UINT32, &v, err);
}

int gguf_writer_add_i32(gguf_writer_t *w, const char *key, int32_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_INT32, &v, err);
}

int gguf_writer_add_u64(gguf_writer_t *w, const char *key, uint64_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_UINT64, &v, err);
}

int gguf_writer_add_i64(gguf_writer_t *w, const char *key, int64_t v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_INT64, &v, err);
}

int gguf_writer_add_f32(gguf_writer_t *w, const char *key, float v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_FLOAT32, &v, err);
}

int gguf_writer_add_f64(gguf_writer_t *w, const char *key, double v, struct itt_err *err)
{
	return add_scalar(w, key, GGUF_TYPE_FLOAT64, &v, err);
}

int gguf_writer_add_bool(gguf_writer_t *w, const char *key, bool v, struct itt_err *err)
{
	uint8_t b = v ? 1 : 0;
	return add_scalar(w, key, GGUF_TYPE_BOOL, &b, err);
}

int gguf_writer_add_str_n(gguf_writer_t *w, const char *key, const char *s, uint64_t len,
                          struct itt_err *err)
{
	int rc = check_key(w, key, err);
	if (rc)
		return rc;
	if (!s && len)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer: key %s: string is NULL", key);
	if (strcmp(key, "general.alignment") == 0)
		return itt_err_set(err, ITT_E_INVALID,
		                   "gguf_writer: general.alignment must be UINT32, not STRING");
	struct bbuf b = {0};
	begin_kv(&b, key, GGUF_TYPE_STRING);
	bbuf_str(&b, s, len);
	return finish_kv(w, key, &b, err);
}

int gguf_writer_add_str(gguf_writer_t *w, const char *key, const char *s, struct itt_err *err)
{
	if (!s)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer: key %s: string is NULL",
		                   key ? key : "(null)");
	return gguf_writer_add_str_n(w, key, s, strlen(s), err);
}

int gguf_writer_add_arr(gguf_writer_t *w, const char *key, uint32_t elem_type, const void *data,
                        uint64_t n, struct itt_err *err)
{
	int rc = check_key(w, key, err);
	if (rc)
		return rc;
	size_t es = gguf_scalar_size(elem_type);
	if (es == 0)
		return itt_err_set(err, ITT_E_INVALID,
		                   "gguf_writer: key %s: array element type %u is not a scalar",
		                   key, elem_type);
	if (!data && n)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer: key %s: array data is NULL",
		                   key);
	if (n > SIZE_MAX / es)
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer: key %s: %llu elements too many",
		                   key, (unsigned long long)n);
	if (strcmp(key, "general.alignment") == 0)
		return itt_err_set(err, ITT_E_INVALID,
		                   "gguf_writer: general.alignment must be UINT32, not ARRAY");
	struct bbuf b = {0};
	begin_kv(&b, key, GGUF_TYPE_ARRAY);
	bbuf_u32(&b, elem_type);
	bbuf_u64(&b, n);
	if (elem_type == GGUF_TYPE_BOOL) {
		/* normalise to 0/1 so a reader's validation accepts it */
		const uint8_t *s = data;
		for (uint64_t i = 0; i < n && !b.oom; i++) {
			uint8_t v = s[i] ? 1 : 0;
			bbuf_put(&b, &v, 1);
		}
	} else {
		bbuf_put(&b, data, (size_t)(n * es));
	}
	return finish_kv(w, key, &b, err);
}

int gguf_writer_add_str_arr(gguf_writer_t *w, const char *key, const struct gguf_str *strs,
                            uint64_t n, struct itt_err *err)
{
	int rc = check_key(w, key, err);
	if (rc)
		return rc;
	if (!strs && n)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer: key %s: array data is NULL",
		                   key);
	if (strcmp(key, "general.alignment") == 0)
		return itt_err_set(err, ITT_E_INVALID,
		                   "gguf_writer: general.alignment must be UINT32, not ARRAY");
	struct bbuf b = {0};
	begin_kv(&b, key, GGUF_TYPE_ARRAY);
	bbuf_u32(&b, GGUF_TYPE_STRING);
	bbuf_u64(&b, n);
	for (uint64_t i = 0; i < n && !b.oom; i++) {
		if (!strs[i].ptr && strs[i].len) {
			free(b.p);
			return itt_err_set(err, ITT_E_INVALID,
			                   "gguf_writer: key %s: string %llu is NULL", key,
			                   (unsigned long long)i);
		}
		bbuf_str(&b, strs[i].ptr, strs[i].len);
	}
	return finish_kv(w, key, &b, err);
}

int gguf_writer_copy_kv(gguf_writer_t *w, const gguf_t *g, const struct gguf_kv *kv,
                        struct itt_err *err)
{
	if (!w || !g || !kv)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer_copy_kv: NULL argument");
	if (kv->key.len == 0 || kv->key.len > GGUF_MAX_NAME || memchr(kv->key.ptr, 0, kv->key.len))
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer_copy_kv: unusable key");
	char *key = malloc(kv->key.len + 1);
	if (!key)
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer_copy_kv: out of memory");
	memcpy(key, kv->key.ptr, kv->key.len);
	key[kv->key.len] = 0;

	int rc;
	if (kv->type == GGUF_TYPE_STRING) {
		struct gguf_str s;
		rc = gguf_get_str(g, key, &s, err);
		if (rc == 0)
			rc = gguf_writer_add_str_n(w, key, s.ptr, s.len, err);
	} else if (kv->type == GGUF_TYPE_ARRAY && kv->arr_type == GGUF_TYPE_STRING) {
		struct gguf_str *s = NULL;
		if (kv->arr_n > SIZE_MAX / sizeof *s) {
			rc = itt_err_set(err, ITT_E_NOMEM, "gguf_writer_copy_kv: key %s too large",
			                 key);
		} else if (!(s = malloc((kv->arr_n ? kv->arr_n : 1) * sizeof *s))) {
			rc = itt_err_set(err, ITT_E_NOMEM,
			                 "gguf_writer_copy_kv: key %s: out of memory", key);
		} else {
			rc = gguf_get_str_arr(g, key, s, kv->arr_n, err);
			if (rc == 0)
				rc = gguf_writer_add_str_arr(w, key, s, kv->arr_n, err);
		}
		free(s);
	} else if (kv->type == GGUF_TYPE_ARRAY) {
		uint32_t et;
		uint64_t n;
		const void *data;
		rc = gguf_get_arr(g, key, &et, &n, &data, err);
		if (rc == 0)
			rc = gguf_writer_add_arr(w, key, et, data, n, err);
	} else if (gguf_scalar_size(kv->type) != 0) {
		uint8_t v[8];
		memcpy(v, kv->data, gguf_scalar_size(kv->type));
		rc = add_scalar(w, key, kv->type, v, err);
	} else {
		rc = itt_err_set(err, ITT_E_UNSUPPORTED, "gguf_writer_copy_kv: key %s: type %u",
		                 key, kv->type);
	}
	free(key);
	return rc;
}

uint64_t gguf_writer_tensor_bytes(uint32_t n_dims, const uint64_t *ne, uint32_t type,
                                  struct itt_err *err)
{
	uint32_t bs = ggml_blck_size(type), ts = ggml_type_size(type);
	if (bs == 0 || ts == 0) {
		itt_err_set(err, ITT_E_UNSUPPORTED, "tensor type %u is not known", type);
		return 0;
	}
	if (n_dims < 1 || n_dims > GGUF_MAX_DIMS || !ne) {
		itt_err_set(err, ITT_E_INVALID, "tensor n_dims %u not in [1, %d]", n_dims,
		            GGUF_MAX_DIMS);
		return 0;
	}
	uint64_t n = 1;
	for (uint32_t i = 0; i < n_dims; i++) {
		if (ne[i] == 0) {
			itt_err_set(err, ITT_E_INVALID, "tensor ne[%u] is 0", i);
			return 0;
		}
		if (__builtin_mul_overflow(n, ne[i], &n)) {
			itt_err_set(err, ITT_E_RANGE, "tensor element count overflows");
			return 0;
		}
	}
	if (ne[0] % bs != 0) {
		itt_err_set(err, ITT_E_INVALID,
		            "tensor row length %llu is not a multiple of the %s block size %u",
		            (unsigned long long)ne[0], ggml_type_name(type), bs);
		return 0;
	}
	uint64_t bytes;
	if (__builtin_mul_overflow(n / bs, (uint64_t)ts, &bytes) || bytes > (UINT64_MAX >> 2)) {
		itt_err_set(err, ITT_E_RANGE, "tensor byte size overflows");
		return 0;
	}
	return bytes;
}

static int add_tensor(gguf_writer_t *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                      uint32_t type, struct wtensor *t, struct itt_err *err)
{
	if (!w || !name || !ne)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer_add_tensor: NULL argument");
	size_t nl = strlen(name);
	if (nl == 0 || nl > GGUF_WRITE_MAX_TENSOR_NAME)
		return itt_err_set(
		    err, ITT_E_INVALID,
		    "gguf_writer_add_tensor: name \"%.64s\" length %zu not in [1, %d]", name, nl,
		    GGUF_WRITE_MAX_TENSOR_NAME);
	for (uint64_t i = 0; i < w->n_t; i++)
		if (strcmp(w->t[i].name, name) == 0)
			return itt_err_set(err, ITT_E_INVALID,
			                   "gguf_writer_add_tensor: %s added twice", name);
	if (w->n_t >= GGUF_MAX_TENSORS)
		return itt_err_set(err, ITT_E_FULL, "gguf_writer_add_tensor: more than %u tensors",
		                   GGUF_MAX_TENSORS);
	struct itt_err e = {0};
	uint64_t bytes = gguf_writer_tensor_bytes(n_dims, ne, type, &e);
	if (bytes == 0)
		return itt_err_set(err, e.code, "gguf_writer_add_tensor: %s: %s", name, e.msg);
	if (t->fill == NULL && t->size != bytes)
		return itt_err_set(err, ITT_E_INVALID,
		                   "gguf_writer_add_tensor: %s: %llu bytes given, shape and type "
		                   "need %llu",
		                   name, (unsigned long long)t->size, (unsigned long long)bytes);
	t->size = bytes;
	t->n_dims = n_dims;
	t->type = type;
	for (uint32_t i = 0; i < GGUF_MAX_DIMS; i++)
		t->ne[i] = i < n_dims ? ne[i] : 1;
	if (w->n_t == w->cap_t) {
		uint64_t cap = w->cap_t ? w->cap_t * 2 : 64;
		struct wtensor *p = realloc(w->t, cap * sizeof *p);
		if (!p)
			return itt_err_set(err, ITT_E_NOMEM,
			                   "gguf_writer_add_tensor: out of memory");
		w->t = p;
		w->cap_t = cap;
	}
	t->name = strdup(name);
	if (!t->name)
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer_add_tensor: out of memory");
	w->t[w->n_t++] = *t;
	return 0;
}

int gguf_writer_add_tensor(gguf_writer_t *w, const char *name, uint32_t n_dims, const uint64_t *ne,
                           uint32_t type, const void *data, uint64_t size, unsigned flags,
                           struct itt_err *err)
{
	if (!data)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer_add_tensor: %s: data is NULL",
		                   name ? name : "(null)");
	struct wtensor t = {.data = data, .size = size};
	if (flags & GGUF_WRITER_COPY) {
		if (size > SIZE_MAX)
			return itt_err_set(err, ITT_E_NOMEM, "gguf_writer_add_tensor: too large");
		/* validate before copying a possibly large buffer */
		struct itt_err e = {0};
		uint64_t bytes = gguf_writer_tensor_bytes(n_dims, ne, type, &e);
		if (bytes != size)
			return add_tensor(w, name, n_dims, ne, type, &t, err);
		t.owned = malloc(size ? (size_t)size : 1);
		if (!t.owned)
			return itt_err_set(err, ITT_E_NOMEM,
			                   "gguf_writer_add_tensor: out of memory");
		memcpy(t.owned, data, (size_t)size);
		t.data = t.owned;
	}
	int rc = add_tensor(w, name, n_dims, ne, type, &t, err);
	if (rc)
		free(t.owned);
	return rc;
}

int gguf_writer_add_tensor_fn(gguf_writer_t *w, const char *name, uint32_t n_dims,
                              const uint64_t *ne, uint32_t type, gguf_writer_fill_fn fill,
                              void *ctx, struct itt_err *err)
{
	if (!fill)
		return itt_err_set(err, ITT_E_INVALID,
		                   "gguf_writer_add_tensor_fn: %s: fill is NULL",
		                   name ? name : "(null)");
	struct wtensor t = {.fill = fill, .ctx = ctx};
	return add_tensor(w, name, n_dims, ne, type, &t, err);
}

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

/* Bytes of the header, metadata and tensor infos (before the padding). */
static uint64_t header_bytes(const gguf_writer_t *w)
{
	uint64_t n = 4 + 4 + 8 + 8;
	for (uint64_t i = 0; i < w->n_kv; i++)
		n += w->kv[i].blob_len;
	for (uint64_t i = 0; i < w->n_t; i++)
		n += 8 + strlen(w->t[i].name) + 4 + 8ull * w->t[i].n_dims + 4 + 8;
	return n;
}

/* Offset of each tensor's data after the previous one, padded to the
 * alignment; with assign, stores them.  Returns the data section's size. */
static uint64_t layout(const gguf_writer_t *w, bool assign)
{
	uint64_t off = 0;
	for (uint64_t i = 0; i < w->n_t; i++) {
		if (assign)
			w->t[i].offset = off;
		off = align_up(off + w->t[i].size, w->alignment);
	}
	return off;
}

uint64_t gguf_writer_file_size(const gguf_writer_t *w)
{
	if (!w)
		return 0;
	return align_up(header_bytes(w), w->alignment) + layout(w, false);
}

static int put(FILE *f, const void *p, size_t n, const char *path, struct itt_err *err)
{
	if (n && fwrite(p, 1, n, f) != n)
		return itt_err_set(err, ITT_E_IO, "gguf_writer_write: write %s: %s", path,
		                   strerror(errno));
	return 0;
}

static int put_zeros(FILE *f, uint64_t n, const char *path, struct itt_err *err)
{
	static const uint8_t zeros[256];
	while (n) {
		size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
		int rc = put(f, zeros, k, path, err);
		if (rc)
			return rc;
		n -= k;
	}
	return 0;
}

static int put_header(gguf_writer_t *w, FILE *f, const char *path, struct itt_err *err)
{
	struct bbuf b = {0};
	bbuf_u32(&b, GGUF_MAGIC);
	bbuf_u32(&b, GGUF_WRITE_VERSION);
	bbuf_u64(&b, w->n_t);
	bbuf_u64(&b, w->n_kv);
	int rc = b.oom ? itt_err_set(err, ITT_E_NOMEM, "gguf_writer_write: out of memory")
	               : put(f, b.p, b.len, path, err);
	for (uint64_t i = 0; i < w->n_kv && rc == 0; i++)
		rc = put(f, w->kv[i].blob, w->kv[i].blob_len, path, err);
	b.len = 0;
	for (uint64_t i = 0; i < w->n_t && rc == 0; i++) {
		const struct wtensor *t = &w->t[i];
		bbuf_str(&b, t->name, strlen(t->name));
		bbuf_u32(&b, t->n_dims);
		for (uint32_t d = 0; d < t->n_dims; d++)
			bbuf_u64(&b, t->ne[d]);
		bbuf_u32(&b, t->type);
		bbuf_u64(&b, t->offset);
	}
	if (rc == 0)
		rc = b.oom ? itt_err_set(err, ITT_E_NOMEM, "gguf_writer_write: out of memory")
		           : put(f, b.p, b.len, path, err);
	free(b.p);
	return rc;
}

static int put_tensor(struct wtensor *t, FILE *f, const char *path, struct itt_err *err)
{
	if (!t->fill) {
		const uint8_t *p = t->data;
		uint64_t left = t->size;
		while (left) {
			size_t k = left > (1u << 30) ? (1u << 30) : (size_t)left;
			int rc = put(f, p, k, path, err);
			if (rc)
				return rc;
			p += k;
			left -= k;
		}
		return 0;
	}
	uint64_t done = 0;
	while (done < t->size) {
		const void *chunk = NULL;
		size_t len = 0;
		struct itt_err e = {0};
		int rc = t->fill(t->ctx, &chunk, &len, &e);
		if (rc)
			return itt_err_set(err, rc < 0 ? rc : ITT_E_IO, "tensor %s: %s", t->name,
			                   e.msg[0] ? e.msg : itt_strerror(rc));
		if (!chunk || len == 0 || len > t->size - done)
			return itt_err_set(
			    err, ITT_E_INVALID, "tensor %s: fill gave %zu bytes at %llu of %llu",
			    t->name, len, (unsigned long long)done, (unsigned long long)t->size);
		rc = put(f, chunk, len, path, err);
		if (rc)
			return rc;
		done += len;
	}
	return 0;
}

static int sync_dir(const char *path, struct itt_err *err)
{
	char *copy = strdup(path);
	if (!copy)
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer_write: out of memory");
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
	int rc = 0;
	if (fd < 0 || fsync(fd) != 0)
		rc = itt_err_set(err, ITT_E_IO, "gguf_writer_write: fsync directory of %s: %s",
		                 path, strerror(errno));
	if (fd >= 0)
		close(fd);
	free(copy);
	return rc;
}

int gguf_writer_write(gguf_writer_t *w, const char *path, bool sync, struct itt_err *err)
{
	if (!w || !path || !*path)
		return itt_err_set(err, ITT_E_INVALID, "gguf_writer_write: writer or path missing");
	if (w->consumed)
		return itt_err_set(err, ITT_E_INVALID,
		                   "gguf_writer_write: fill functions were already consumed");
	size_t pl = strlen(path);
	char *tmp = malloc(pl + 5);
	if (!tmp)
		return itt_err_set(err, ITT_E_NOMEM, "gguf_writer_write: out of memory");
	memcpy(tmp, path, pl);
	memcpy(tmp + pl, ".tmp", 5);

	layout(w, true);
	uint64_t head = header_bytes(w);
	int rc = 0;
	char *vbuf = NULL;
	FILE *f = fopen(tmp, "wb");
	if (!f) {
		rc = itt_err_set(err, ITT_E_IO, "gguf_writer_write: open %s: %s", tmp,
		                 strerror(errno));
		goto out;
	}
	vbuf = malloc(GGUF_WRITE_BUF);
	if (vbuf)
		setvbuf(f, vbuf, _IOFBF, GGUF_WRITE_BUF);
	rc = put_header(w, f, tmp, err);
	if (rc == 0)
		rc = put_zeros(f, align_up(head, w->alignment) - head, tmp, err);
	for (uint64_t i = 0; i < w->n_t && rc == 0; i++) {
		struct wtensor *t = &w->t[i];
		if (t->fill)
			w->consumed = true;
		rc = put_tensor(t, f, tmp, err);
		if (rc == 0)
			rc = put_zeros(f, align_up(t->size, w->alignment) - t->size, tmp, err);
	}
	if (rc == 0 && fflush(f) != 0)
		rc = itt_err_set(err, ITT_E_IO, "gguf_writer_write: write %s: %s", tmp,
		                 strerror(errno));
	if (rc == 0 && sync && fsync(fileno(f)) != 0)
		rc = itt_err_set(err, ITT_E_IO, "gguf_writer_write: fsync %s: %s", tmp,
		                 strerror(errno));
	if (fclose(f) != 0 && rc == 0)
		rc = itt_err_set(err, ITT_E_IO, "gguf_writer_write: close %s: %s", tmp,
		                 strerror(errno));
	if (rc == 0 && rename(tmp, path) != 0)
		rc = itt_err_set(err, ITT_E_IO, "gguf_writer_write: rename %s to %s: %s", tmp, path,
		                 strerror(errno));
	if (rc)
		unlink(tmp);
	else if (sync)
		rc = sync_dir(path, err);
out:
	free(vbuf);
	free(tmp);
	return rc;
}
