/* fuzz-gguf: libFuzzer target for the GGUF reader.
 *
 * Contract under test: gguf_open_mem on arbitrary bytes either fails with a
 * negative code and a message, or yields a handle whose every view lies
 * inside the input.  On success the target walks every kv (typed getters,
 * arrays, string arrays), every tensor (touching the first and last byte of
 * its data) and the lookups, and traps on any broken invariant, so ASan and
 * UBSan see every read the reader's users would make. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

static const uint8_t *fz_lo, *fz_hi; /* the input bytes */

static void fuzz_check_view(const void *p, uint64_t len)
{
	const uint8_t *b = p;
	FUZZ_CHECK(b >= fz_lo && b <= fz_hi);
	FUZZ_CHECK(len <= (uint64_t)(fz_hi - b));
}

/* Sums the bytes so the reads cannot be optimised away. */
static volatile uint8_t fz_sink;

static void fuzz_touch(const void *p, uint64_t len)
{
	const uint8_t *b = p;
	uint8_t s = 0;
	fuzz_check_view(p, len);
	if (len == 0)
		return;
	s ^= b[0];
	s ^= b[len - 1];
	fz_sink ^= s;
}

/* A NUL-terminated copy of a view, or NULL when it holds a NUL (such a
 * name cannot be looked up through the C-string API). */
static char *fuzz_cstr(struct gguf_str s)
{
	char *c;
	if (memchr(s.ptr, '\0', (size_t)s.len))
		return NULL;
	c = malloc((size_t)s.len + 1);
	if (!c)
		return NULL;
	memcpy(c, s.ptr, (size_t)s.len);
	c[s.len] = '\0';
	return c;
}

static void fuzz_walk_kv(const gguf_t *g, const struct gguf_kv *kv)
{
	struct itt_err err;
	char *key;
	uint32_t u32, et;
	int32_t i32;
	uint64_t u64, n;
	float f;
	bool b;
	struct gguf_str s;
	const void *data;

	fuzz_touch(kv->key.ptr, kv->key.len);
	FUZZ_CHECK(kv->type < GGUF_TYPE_COUNT);
	key = fuzz_cstr(kv->key);
	if (!key)
		return;
	FUZZ_CHECK(gguf_find_kv(g, key) != NULL);
	FUZZ_CHECK(gguf_str_eq(gguf_find_kv(g, key)->key, key));
	(void)gguf_get_u32(g, key, &u32, &err);
	(void)gguf_get_i32(g, key, &i32, &err);
	(void)gguf_get_u64(g, key, &u64, &err);
	(void)gguf_get_f32(g, key, &f, &err);
	(void)gguf_get_bool(g, key, &b, &err);
	if (gguf_get_str(g, key, &s, &err) == 0)
		fuzz_touch(s.ptr, s.len);
	if (gguf_get_arr(g, key, &et, &n, &data, &err) == 0) {
		FUZZ_CHECK(et < GGUF_TYPE_COUNT && et != GGUF_TYPE_ARRAY);
		fuzz_check_view(data, 0);
		if (et == GGUF_TYPE_STRING) {
			/* validated: n strings of at least 8 bytes each fit in the input */
			FUZZ_CHECK(n <= (uint64_t)(fz_hi - fz_lo) / 8);
			struct gguf_str *arr = malloc((size_t)(n ? n : 1) * sizeof *arr);
			if (arr) {
				FUZZ_CHECK(gguf_get_str_arr(g, key, arr, n, &err) == 0);
				for (uint64_t i = 0; i < n; i++)
					fuzz_touch(arr[i].ptr, arr[i].len);
				free(arr);
			}
		} else {
			/* encoded element sizes, by enum gguf_type (from the spec) */
			static const uint8_t esz[GGUF_TYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4,
			                                             1, 0, 0, 8, 8, 8};
			FUZZ_CHECK(n <= (uint64_t)(fz_hi - fz_lo) / esz[et]);
			fuzz_touch(data, n * esz[et]);
		}
	}
	free(key);
}

static void fuzz_walk_tensor(const gguf_t *g, const struct gguf_tensor *t)
{
	char *name;
	fuzz_touch(t->name.ptr, t->name.len);
	FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS);
	FUZZ_CHECK(ggml_blck_size(t->type) > 0 && t->size > 0);
	FUZZ_CHECK(t->offset % gguf_alignment(g) == 0);
	fuzz_touch(t->data, t->size);
	name = fuzz_cstr(t->name);
	if (name) {
		FUZZ_CHECK(gguf_find_tensor(g, name) == t);
		free(name);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct itt_err err = {0};
	gguf_t *g = NULL;
	int rc;

	fz_lo = data;
	fz_hi = data + size;
	rc = gguf_open_mem(data, size, &g, &err);
	if (rc != 0) {
		FUZZ_CHECK(rc < 0 && g == NULL && err.code == rc && err.msg[0] != '\0');
		return 0;
	}
	FUZZ_CHECK(gguf_version(g) == 2 || gguf_version(g) == 3);
	for (uint64_t i = 0; i < gguf_n_kv(g); i++)
		fuzz_walk_kv(g, gguf_kv_at(g, i));
	for (uint64_t i = 0; i < gguf_n_tensors(g); i++)
		fuzz_walk_tensor(g, gguf_tensor_at(g, i));
	FUZZ_CHECK(gguf_kv_at(g, gguf_n_kv(g)) == NULL);
	FUZZ_CHECK(gguf_tensor_at(g, gguf_n_tensors(g)) == NULL);
	gguf_close(&g);
	FUZZ_CHECK(g == NULL);
	return 0;
}
