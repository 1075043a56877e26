/* test-gguf: the GGUF reader against the real stories260K.gguf, against
 * mutated copies of it (truncation at every header offset, hostile counts,
 * lengths, types, shapes, offsets), and against tiny files built here.
 *
 * Contract pinned down: a valid file opens with the right metadata and
 * tensor views; every malformed copy fails with the specific negative code
 * and a non-empty message naming the field, never a crash or an over-read
 * (each mutated copy lives in a buffer of exactly its size, so ASan sees
 * any read past the end).  Field positions in the real file are located
 * through the views of a successful open, which the metadata tests check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf.h"
#include "testutil.h"

/* Facts of stories260K.gguf (see the models README). */
#define ST_FILE       "stories260K.gguf"
#define ST_SIZE       1185376u
#define ST_N_KV       19u
#define ST_N_TENSORS  48u
#define ST_DATA_START 14176u

static uint8_t *st_buf; /* the whole file, or NULL when absent */
static size_t st_size;
static gguf_t *st_g; /* st_buf opened, to locate fields */

static int group_setup(void **state)
{
	const char *path = tu_model_path(ST_FILE);
	struct itt_err err = {0};
	(void)state;
	if (!path)
		return 0;
	st_buf = tu_read_file(path, &st_size);
	if (!st_buf || gguf_open_mem(st_buf, st_size, &st_g, &err) != 0) {
		fprintf(stderr, "cannot load %s: %s\n", path, err.msg);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	gguf_close(&st_g);
	free(st_buf);
	return 0;
}

#define NEED_STORIES()                                                                             \
	do {                                                                                       \
		if (!st_buf)                                                                       \
			skip();                                                                    \
	} while (0)

/* ---- helpers -------------------------------------------------------- */

/* Opens size bytes of buf from a copy of exactly that size, checks the
 * error contract, closes any handle and returns the code. */
static int open_copy(const uint8_t *buf, size_t size, struct itt_err *err)
{
	uint8_t *copy = malloc(size ? size : 1);
	gguf_t *g = NULL;
	int rc;

	assert_non_null(copy);
	memcpy(copy, buf, size);
	memset(err, 0, sizeof *err);
	rc = gguf_open_mem(copy, size, &g, err);
	if (rc == 0) {
		assert_non_null(g);
		gguf_close(&g);
		assert_null(g);
	} else {
		assert_true(rc < 0);
		assert_null(g);
		assert_int_equal(err->code, rc);
		assert_true(err->msg[0] != '\0');
	}
	free(copy);
	return rc;
}

static void put_u32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/* Mutates a fresh copy of the real file at off (a u32 or u64) and opens it. */
static int st_mut_u32(size_t off, uint32_t v, struct itt_err *err)
{
	uint8_t *m = malloc(st_size);
	int rc;
	assert_non_null(m);
	memcpy(m, st_buf, st_size);
	put_u32(m + off, v);
	rc = open_copy(m, st_size, err);
	free(m);
	return rc;
}

static int st_mut_u64(size_t off, uint64_t v, struct itt_err *err)
{
	uint8_t *m = malloc(st_size);
	int rc;
	assert_non_null(m);
	memcpy(m, st_buf, st_size);
	put_u64(m + off, v);
	rc = open_copy(m, st_size, err);
	free(m);
	return rc;
}

static int st_mut_bytes(size_t off, const char *bytes, struct itt_err *err)
{
	uint8_t *m = malloc(st_size);
	int rc;
	assert_non_null(m);
	memcpy(m, st_buf, st_size);
	memcpy(m + off, bytes, strlen(bytes));
	rc = open_copy(m, st_size, err);
	free(m);
	return rc;
}

static size_t st_off(const void *p)
{
	return (size_t)((const uint8_t *)p - st_buf);
}

static const struct gguf_kv *st_kv(const char *key)
{
	const struct gguf_kv *kv = gguf_find_kv(st_g, key);
	assert_non_null(kv);
	return kv;
}

/* Offsets of a kv's fields in the real file. */
static size_t kv_keylen_off(const struct gguf_kv *kv)
{
	return st_off(kv->key.ptr) - 8;
}

static size_t kv_type_off(const struct gguf_kv *kv)
{
	return st_off(kv->key.ptr) + kv->key.len;
}

static const struct gguf_tensor *st_tensor(const char *name)
{
	const struct gguf_tensor *t = gguf_find_tensor(st_g, name);
	assert_non_null(t);
	return t;
}

/* Offsets of a tensor info's fields in the real file. */
static size_t t_ndims_off(const struct gguf_tensor *t)
{
	return st_off(t->name.ptr) + t->name.len;
}

static size_t t_ne_off(const struct gguf_tensor *t, uint32_t d)
{
	return t_ndims_off(t) + 4 + 8 * d;
}

static size_t t_type_off(const struct gguf_tensor *t)
{
	return t_ne_off(t, t->n_dims);
}

static size_t t_offset_off(const struct gguf_tensor *t)
{
	return t_type_off(t) + 4;
}

/* ---- a tiny GGUF builder -------------------------------------------- */

struct bld {
	uint8_t *p;
	size_t n, cap;
};

static void bld_bytes(struct bld *b, const void *src, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->n, src, n);
	b->n += n;
}

static void bld_u8(struct bld *b, uint8_t v)
{
	bld_bytes(b, &v, 1);
}

static void bld_u32(struct bld *b, uint32_t v)
{
	uint8_t t[4];
	put_u32(t, v);
	bld_bytes(b, t, 4);
}

static void bld_u64(struct bld *b, uint64_t v)
{
	uint8_t t[8];
	put_u64(t, v);
	bld_bytes(b, t, 8);
}

static void bld_str(struct bld *b, const char *s)
{
	bld_u64(b, strlen(s));
	bld_bytes(b, s, strlen(s));
}

static void bld_header(struct bld *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
	bld_u32(b, GGUF_MAGIC);
	bld_u32(b, version);
	bld_u64(b, n_tensors);
	bld_u64(b, n_kv);
}

static void bld_key(struct bld *b, const char *key, uint32_t type)
{
	bld_str(b, key);
	bld_u32(b, type);
}

static void bld_tensor(struct bld *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset)
{
	bld_str(b, name);
	bld_u32(b, n_dims);
	for (uint32_t d = 0; d < n_dims; d++)
		bld_u64(b, ne[d]);
	bld_u32(b, type);
	bld_u64(b, offset);
}

static void bld_pad(struct bld *b, size_t align)
{
	while (b->n % align)
		bld_u8(b, 0);
}

static void bld_zeros(struct bld *b, size_t n)
{
	while (n--)
		bld_u8(b, 0);
}

/* ---- the real file -------------------------------------------------- */

static void test_stories_header_and_metadata(void **state)
{
	const char *path = tu_model_path(ST_FILE);
	struct itt_err err = {0};
	struct gguf_str s;
	uint32_t u32;
	int32_t i32;
	uint64_t u64;
	float f;
	gguf_t *g = NULL;
	(void)state;
	if (!path)
		skip();

	assert_int_equal(gguf_open(path, &g, &err), 0);
	assert_int_equal(gguf_version(g), 3);
	assert_int_equal(gguf_n_kv(g), ST_N_KV);
	assert_int_equal(gguf_n_tensors(g), ST_N_TENSORS);
	assert_int_equal(gguf_alignment(g), 32);
	size_t size = 0;
	assert_non_null(gguf_base(g, &size));
	assert_int_equal(size, ST_SIZE);

	assert_int_equal(gguf_get_str(g, "general.architecture", &s, &err), 0);
	assert_true(gguf_str_eq(s, "llama"));
	assert_int_equal(gguf_get_str(g, "tokenizer.ggml.model", &s, &err), 0);
	assert_true(gguf_str_eq(s, "llama"));
	assert_false(gguf_str_eq(s, "llam"));
	assert_false(gguf_str_eq(s, "llamas"));

	static const struct {
		const char *key;
		uint32_t want;
	} u32s[] = {
	    {"llama.embedding_length", 64},
	    {"llama.feed_forward_length", 172},
	    {"llama.block_count", 5},
	    {"llama.attention.head_count", 8},
	    {"llama.attention.head_count_kv", 4},
	    {"llama.context_length", 2048},
	    {"llama.rope.dimension_count", 8},
	    {"tokenizer.ggml.bos_token_id", 1},
	    {"tokenizer.ggml.eos_token_id", 2},
	    {"tokenizer.ggml.unknown_token_id", 0},
	};
	for (size_t i = 0; i < sizeof u32s / sizeof u32s[0]; i++) {
		assert_int_equal(gguf_get_u32(g, u32s[i].key, &u32, &err), 0);
		assert_int_equal(u32, u32s[i].want);
		assert_int_equal(gguf_get_u64(g, u32s[i].key, &u64, &err), 0);
		assert_int_equal(u64, u32s[i].want);
		assert_int_equal(gguf_get_i32(g, u32s[i].key, &i32, &err), 0);
		assert_int_equal(i32, (int32_t)u32s[i].want);
	}
	/* 0xFFFFFFFF fits u32 but not i32 */
	assert_int_equal(gguf_get_u32(g, "tokenizer.ggml.padding_token_id", &u32, &err), 0);
	assert_int_equal(u32, UINT32_MAX);
	assert_int_equal(gguf_get_i32(g, "tokenizer.ggml.padding_token_id", &i32, &err),
	                 ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "tokenizer.ggml.padding_token_id"));

	assert_int_equal(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &f, &err), 0);
	assert_float_equal(f, 1e-5f, 1e-9f);

	/* vocabulary arrays */
	uint32_t et;
	uint64_t n;
	const void *data;
	assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n, &data, &err), 0);
	assert_int_equal(et, GGUF_TYPE_STRING);
	assert_int_equal(n, 512);
	struct gguf_str *toks = calloc(n, sizeof *toks);
	assert_non_null(toks);
	assert_int_equal(gguf_get_str_arr(g, "tokenizer.ggml.tokens", toks, n, &err), 0);
	assert_true(gguf_str_eq(toks[0], "<unk>"));
	assert_true(gguf_str_eq(toks[1], "<s>"));
	assert_true(gguf_str_eq(toks[2], "</s>"));
	assert_true(gguf_str_eq(toks[3], "<0x00>"));
	for (uint64_t i = 0; i < n; i++)
		assert_true(toks[i].len > 0);
	free(toks);
	assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n, &data, &err), 0);
	assert_int_equal(et, GGUF_TYPE_FLOAT32);
	assert_int_equal(n, 512);
	assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n, &data, &err), 0);
	assert_int_equal(et, GGUF_TYPE_INT32);
	assert_int_equal(n, 512);
	int32_t tt[4];
	memcpy(tt, data, sizeof tt);
	assert_int_equal(tt[0], 2);
	assert_int_equal(tt[1], 3);
	assert_int_equal(tt[2], 3);
	assert_int_equal(tt[3], 6);

	/* kv_at walks the file order; find agrees with it */
	assert_true(gguf_str_eq(gguf_kv_at(g, 0)->key, "tokenizer.ggml.tokens"));
	assert_null(gguf_kv_at(g, ST_N_KV));
	for (uint64_t i = 0; i < ST_N_KV; i++) {
		const struct gguf_kv *kv = gguf_kv_at(g, i);
		char key[128];
		assert_true(kv->key.len < sizeof key);
		memcpy(key, kv->key.ptr, kv->key.len);
		key[kv->key.len] = '\0';
		assert_ptr_equal(gguf_find_kv(g, key), kv);
	}
	gguf_close(&g);
	assert_null(g);
	gguf_close(&g); /* NULL is fine */
	gguf_close(NULL);
}

static void test_stories_tensors(void **state)
{
	static const struct {
		const char *name;
		uint32_t n_dims;
		uint64_t ne0, ne1, offset;
	} want[] = {
	    {"token_embd.weight", 2, 64, 512, 0},
	    {"output_norm.weight", 1, 64, 1, 131072},
	    {"output.weight", 2, 64, 512, 131328},
	    {"blk.0.attn_q.weight", 2, 64, 64, 262400},
	    {"blk.0.attn_k.weight", 2, 64, 32, 278784},
	    {"blk.0.ffn_gate.weight", 2, 64, 172, 311808},
	    {"blk.0.ffn_down.weight", 2, 172, 64, 355840},
	    {"blk.4.ffn_norm.weight", 1, 64, 1, 1170944},
	};
	(void)state;
	NEED_STORIES();
	const uint8_t *base = gguf_base(st_g, NULL);
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		const struct gguf_tensor *t = st_tensor(want[i].name);
		assert_int_equal(t->n_dims, want[i].n_dims);
		assert_int_equal(t->ne[0], want[i].ne0);
		assert_int_equal(t->ne[1], want[i].ne1);
		assert_int_equal(t->ne[2], 1);
		assert_int_equal(t->ne[3], 1);
		assert_int_equal(t->type, GGML_TYPE_F32);
		assert_int_equal(t->offset, want[i].offset);
		assert_int_equal(t->size, want[i].ne0 * want[i].ne1 * 4);
		assert_ptr_equal(t->data, base + ST_DATA_START + want[i].offset);
	}
	/* the last tensor ends exactly at the end of the file */
	const struct gguf_tensor *last = gguf_tensor_at(st_g, ST_N_TENSORS - 1);
	assert_int_equal(ST_DATA_START + last->offset + last->size, ST_SIZE);
	assert_null(gguf_tensor_at(st_g, ST_N_TENSORS));
	assert_null(gguf_find_tensor(st_g, "blk.5.attn_q.weight"));
	assert_null(gguf_find_tensor(st_g, "token_embd.weigh"));
	assert_null(gguf_find_tensor(st_g, ""));
	for (uint64_t i = 0; i < ST_N_TENSORS; i++) {
		const struct gguf_tensor *t = gguf_tensor_at(st_g, i);
		char name[128];
		assert_true(t->name.len < sizeof name);
		memcpy(name, t->name.ptr, t->name.len);
		name[t->name.len] = '\0';
		assert_ptr_equal(gguf_find_tensor(st_g, name), t);
	}
}

static void test_getters_reject_mismatch_and_absent(void **state)
{
	struct itt_err err = {0};
	struct gguf_str s, arr[4];
	uint32_t u32, et;
	uint64_t n;
	const void *data;
	float f;
	bool b;
	(void)state;
	NEED_STORIES();

	assert_int_equal(gguf_get_u32(st_g, "general.architecture", &u32, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "general.architecture"));
	assert_non_null(strstr(err.msg, "STRING"));
	assert_int_equal(gguf_get_str(st_g, "llama.block_count", &s, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_bool(st_g, "llama.block_count", &b, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_f32(st_g, "llama.block_count", &f, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_u32(st_g, "llama.attention.layer_norm_rms_epsilon", &u32, &err),
	                 ITT_E_FORMAT);
	assert_int_equal(gguf_get_u32(st_g, "tokenizer.ggml.tokens", &u32, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "ARRAY"));
	assert_int_equal(gguf_get_arr(st_g, "llama.block_count", &et, &n, &data, &err),
	                 ITT_E_FORMAT);
	assert_int_equal(gguf_get_str_arr(st_g, "tokenizer.ggml.scores", arr, 512, &err),
	                 ITT_E_FORMAT);
	assert_int_equal(gguf_get_str_arr(st_g, "tokenizer.ggml.tokens", arr, 4, &err),
	                 ITT_E_INVALID);

	assert_int_equal(gguf_get_u32(st_g, "llama.rope.freq_base", &u32, &err), ITT_E_NOTFOUND);
	assert_non_null(strstr(err.msg, "llama.rope.freq_base"));
	assert_int_equal(gguf_get_str(st_g, "", &s, &err), ITT_E_NOTFOUND);
	assert_int_equal(gguf_get_f32(st_g, "llama.attention", &f, &err), ITT_E_NOTFOUND);
	assert_null(gguf_find_kv(st_g, "general"));
	assert_null(gguf_find_kv(st_g, "zzz"));
	assert_null(gguf_find_kv(st_g, NULL));
	assert_int_equal(gguf_get_u32(st_g, NULL, &u32, &err), ITT_E_INVALID);
	assert_int_equal(gguf_get_u32(NULL, "x", &u32, &err), ITT_E_INVALID);
}

static void test_open_reports_io_and_argument_errors(void **state)
{
	struct itt_err err = {0};
	gguf_t *g = NULL;
	(void)state;

	assert_int_equal(gguf_open(tu_tmp_path("no-such.gguf"), &g, &err), ITT_E_IO);
	assert_non_null(strstr(err.msg, "no-such.gguf"));
	assert_int_equal(gguf_open(".", &g, &err), ITT_E_IO);
	const char *empty = tu_tmp_path("empty.gguf");
	assert_int_equal(tu_write_file(empty, "", 0), 0);
	assert_int_equal(gguf_open(empty, &g, &err), ITT_E_FORMAT);
	remove(empty);
	assert_null(g);
	assert_int_equal(gguf_open(NULL, &g, &err), ITT_E_INVALID);
	assert_int_equal(gguf_open_mem(NULL, 10, &g, &err), ITT_E_INVALID);
	assert_int_equal(gguf_open_mem("GGUF", 4, NULL, &err), ITT_E_INVALID);
	assert_int_equal(gguf_open_mem(NULL, 0, &g, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_open_mem(NULL, 0, &g, NULL), ITT_E_FORMAT); /* err may be NULL */
	assert_null(g);
}

/* ---- mutations of the real file ------------------------------------- */

static void test_truncation_at_every_header_offset_fails(void **state)
{
	struct itt_err err;
	(void)state;
	NEED_STORIES();
	for (size_t len = 0; len <= ST_DATA_START; len++)
		assert_int_equal(open_copy(st_buf, len, &err), ITT_E_FORMAT);
	/* e.g. a cut in the middle of the token strings names the string */
	open_copy(st_buf, 5000, &err);
	assert_non_null(
	    strstr(err.msg, "kv 0 (tokenizer.ggml.tokens): truncated: string 370 length"));
	open_copy(st_buf, 200, &err);
	assert_non_null(strstr(err.msg, "header: n_kv 19 cannot fit in the 176 bytes"));
}

static void test_truncation_in_data_section_fails(void **state)
{
	struct itt_err err;
	(void)state;
	NEED_STORIES();
	for (size_t len = ST_DATA_START + 1; len < st_size; len += 4099)
		assert_int_equal(open_copy(st_buf, len, &err), ITT_E_FORMAT);
	assert_int_equal(open_copy(st_buf, st_size - 1, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "tensor 47 (blk.4.ffn_norm.weight): data [offset 1170944, "
	                                "size 256] exceeds data section of"));
	assert_int_equal(open_copy(st_buf, st_size, &err), 0);
}

static void test_header_mutations(void **state)
{
	struct itt_err err;
	(void)state;
	NEED_STORIES();

	assert_int_equal(st_mut_bytes(0, "GGUG", &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "magic"));
	assert_int_equal(st_mut_bytes(0, "FUGG", &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u32(4, 1, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "version 1"));
	assert_int_equal(st_mut_u32(4, 4, &err), ITT_E_UNSUPPORTED);
	assert_int_equal(st_mut_u32(4, 0, &err), ITT_E_UNSUPPORTED);
	assert_int_equal(st_mut_u32(4, 0x03000000u, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "big-endian"));
	assert_int_equal(st_mut_u32(4, 2, &err), 0); /* v2 has the same layout */

	/* n_tensors at 8, n_kv at 16 */
	const uint64_t huge[] = {UINT64_MAX,       UINT64_MAX / 2, (uint64_t)GGUF_MAX_TENSORS + 1,
	                         GGUF_MAX_TENSORS, 1u << 17,       1u << 20};
	for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
		assert_int_equal(st_mut_u64(8, huge[i], &err), ITT_E_FORMAT);
		assert_non_null(strstr(err.msg, "n_tensors"));
		assert_int_equal(st_mut_u64(16, huge[i], &err), ITT_E_FORMAT);
		assert_non_null(strstr(err.msg, "n_kv"));
	}
	assert_int_equal(st_mut_u64(8, ST_N_TENSORS + 1, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(16, ST_N_KV + 1, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(16, ST_N_KV - 1, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(16, 0, &err), ITT_E_FORMAT);
	/* One tensor fewer is a well-formed file whose data section starts
	 * earlier: nothing in the format can tell, so it opens. */
	assert_int_equal(st_mut_u64(8, ST_N_TENSORS - 1, &err), 0);
	assert_int_equal(st_mut_u64(8, 0, &err), 0);
}

static void test_kv_mutations(void **state)
{
	struct itt_err err;
	(void)state;
	NEED_STORIES();
	const struct gguf_kv *toks = st_kv("tokenizer.ggml.tokens");
	const struct gguf_kv *scores = st_kv("tokenizer.ggml.scores");
	const struct gguf_kv *name = st_kv("general.name");
	const struct gguf_kv *blocks = st_kv("llama.block_count");

	/* key lengths */
	assert_int_equal(st_mut_u64(kv_keylen_off(blocks), UINT64_MAX, &err), ITT_E_FORMAT);
	assert_non_null(
	    strstr(err.msg, "kv 16: key length 18446744073709551615 exceeds remaining"));
	assert_int_equal(st_mut_u64(kv_keylen_off(blocks), GGUF_MAX_NAME + 1, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "limit"));
	assert_int_equal(st_mut_u64(kv_keylen_off(blocks), blocks->key.len + 1, &err),
	                 ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(kv_keylen_off(blocks), 0, &err), ITT_E_FORMAT);

	/* value types */
	const uint32_t bad_types[] = {GGUF_TYPE_COUNT, 100, UINT32_MAX};
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(st_mut_u32(kv_type_off(blocks), bad_types[i], &err), ITT_E_FORMAT);
		assert_non_null(strstr(err.msg, "kv 16 (llama.block_count): unknown value type"));
	}

	/* arrays: element type, nesting, counts */
	size_t at = kv_type_off(toks) + 4, an = kv_type_off(toks) + 8;
	assert_int_equal(st_mut_u32(at, GGUF_TYPE_ARRAY, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "tokenizer.ggml.tokens"));
	assert_int_equal(st_mut_u32(at, GGUF_TYPE_COUNT, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u32(at, UINT32_MAX, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(an, UINT64_MAX, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(an, 1ull << 40, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(an, 513, &err), ITT_E_FORMAT);
	size_t sn = kv_type_off(scores) + 8;
	assert_int_equal(st_mut_u64(sn, UINT64_MAX, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(sn, UINT64_MAX / 4 + 1, &err), ITT_E_FORMAT); /* n*4 wraps */
	assert_int_equal(st_mut_u64(sn, 513, &err), ITT_E_FORMAT);

	/* the length of string 17 of the vocabulary */
	const uint8_t *p = toks->data;
	for (int i = 0; i < 17; i++)
		p += 8 + get_u64(p);
	assert_int_equal(st_mut_u64(st_off(p), UINT64_MAX, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "kv 0 (tokenizer.ggml.tokens): string 17 length "
	                                "18446744073709551615 exceeds remaining"));
	assert_int_equal(st_mut_u64(st_off(p), get_u64(p) + 1, &err), ITT_E_FORMAT);

	/* a string value */
	assert_int_equal(st_mut_u64(st_off(name->data), UINT64_MAX, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(st_off(name->data), st_size, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(st_off(name->data), 6, &err), ITT_E_FORMAT);

	/* duplicate key: "tokenizer.ggml.bos_token_id" -> "...eos_token_id" */
	const struct gguf_kv *bos = st_kv("tokenizer.ggml.bos_token_id");
	assert_int_equal(st_mut_bytes(st_off(bos->key.ptr) + strlen("tokenizer.ggml."), "e", &err),
	                 ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "duplicate key"));
	assert_non_null(strstr(err.msg, "tokenizer.ggml.eos_token_id"));
}

static void test_tensor_mutations(void **state)
{
	struct itt_err err;
	(void)state;
	NEED_STORIES();
	const struct gguf_tensor *emb = st_tensor("token_embd.weight");
	const struct gguf_tensor *q1 = st_tensor("blk.1.attn_q.weight");
	const struct gguf_tensor *q0 = st_tensor("blk.0.attn_q.weight");
	const struct gguf_tensor *norm = st_tensor("output_norm.weight");
	const struct gguf_tensor *last = gguf_tensor_at(st_g, ST_N_TENSORS - 1);

	/* n_dims */
	assert_int_equal(st_mut_u32(t_ndims_off(q1), 0, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "tensor 12 (blk.1.attn_q.weight): n_dims 0"));
	assert_int_equal(st_mut_u32(t_ndims_off(q1), 5, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u32(t_ndims_off(q1), UINT32_MAX, &err), ITT_E_FORMAT);

	/* ne */
	assert_int_equal(st_mut_u64(t_ne_off(q1, 0), 0, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "ne[0] is 0"));
	assert_int_equal(st_mut_u64(t_ne_off(q1, 1), 0, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(t_ne_off(q1, 1), UINT64_MAX, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "overflow"));
	assert_int_equal(st_mut_u64(t_ne_off(q1, 1), 1ull << 40, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(t_ne_off(q1, 1), 65, &err), ITT_E_FORMAT); /* overlaps next */
	assert_int_equal(st_mut_u64(t_ne_off(emb, 1), 1024, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "overlaps tensor 0 (token_embd.weight)"));

	/* type */
	const uint32_t bad[] = {4, 5, 16, 29, 31, 39, GGML_TYPE_COUNT, 1000, UINT32_MAX};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(st_mut_u32(t_type_off(q1), bad[i], &err), ITT_E_FORMAT);
		assert_non_null(strstr(err.msg, "tensor 12 (blk.1.attn_q.weight): unknown tensor "
		                                "type"));
	}
	assert_int_equal(st_mut_u32(t_type_off(q1), GGML_TYPE_Q4_K, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "block size 256"));
	/* a smaller type leaves a valid (if meaningless) file */
	assert_int_equal(st_mut_u32(t_type_off(q1), GGML_TYPE_Q8_0, &err), 0);
	assert_int_equal(st_mut_u32(t_type_off(q1), GGML_TYPE_F16, &err), 0);

	/* offset */
	assert_int_equal(st_mut_u64(t_offset_off(q1), q1->offset + 4, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "not a multiple of the alignment 32"));
	assert_int_equal(st_mut_u64(t_offset_off(q1), UINT64_MAX, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(t_offset_off(q1), UINT64_MAX & ~31ull, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "exceeds data section"));
	assert_int_equal(st_mut_u64(t_offset_off(last), last->offset + 32, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "tensor 47 (blk.4.ffn_norm.weight)"));
	assert_int_equal(st_mut_u64(t_offset_off(norm), 0, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "overlaps"));
	assert_int_equal(st_mut_u64(t_offset_off(q1), q0->offset, &err), ITT_E_FORMAT);

	/* names */
	assert_int_equal(st_mut_bytes(st_off(q1->name.ptr), "blk.0", &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "tensor 12 (blk.0.attn_q.weight): duplicate name "
	                                "(first at tensor 3)"));
	assert_int_equal(st_mut_u64(st_off(q1->name.ptr) - 8, 0, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(st_off(q1->name.ptr) - 8, UINT64_MAX, &err), ITT_E_FORMAT);
	assert_int_equal(st_mut_u64(st_off(q1->name.ptr) - 8, q1->name.len - 1, &err),
	                 ITT_E_FORMAT);
}

/* ---- hand-built files ----------------------------------------------- */

static void test_built_v2_all_scalar_types(void **state)
{
	struct bld b = {0};
	struct itt_err err = {0};
	gguf_t *g = NULL;
	uint32_t u32, et;
	int32_t i32;
	uint64_t u64, n;
	float f;
	bool flag;
	struct gguf_str s, strs[3];
	const void *data;
	(void)state;

	bld_header(&b, 2, 2, 20);
	bld_key(&b, "u8", GGUF_TYPE_UINT8), bld_u8(&b, 200);
	bld_key(&b, "i8", GGUF_TYPE_INT8), bld_u8(&b, 0xff);
	bld_key(&b, "u16", GGUF_TYPE_UINT16), bld_bytes(&b, "\x34\x12", 2);
	bld_key(&b, "i16", GGUF_TYPE_INT16), bld_bytes(&b, "\x07\x00", 2);
	bld_key(&b, "u32", GGUF_TYPE_UINT32), bld_u32(&b, 0x80000000u);
	bld_key(&b, "i32", GGUF_TYPE_INT32), bld_u32(&b, (uint32_t)-7);
	bld_key(&b, "f32", GGUF_TYPE_FLOAT32), bld_bytes(&b, "\x00\x00\xc0\x3f", 4); /* 1.5 */
	bld_key(&b, "t", GGUF_TYPE_BOOL), bld_u8(&b, 1);
	bld_key(&b, "f", GGUF_TYPE_BOOL), bld_u8(&b, 0);
	bld_key(&b, "s", GGUF_TYPE_STRING), bld_str(&b, "hello");
	bld_key(&b, "empty", GGUF_TYPE_STRING), bld_str(&b, "");
	bld_key(&b, "u64", GGUF_TYPE_UINT64), bld_u64(&b, UINT64_MAX);
	bld_key(&b, "i64", GGUF_TYPE_INT64), bld_u64(&b, (uint64_t)-5);
	bld_key(&b, "f64", GGUF_TYPE_FLOAT64), bld_bytes(&b, "\0\0\0\0\0\0\xe0\x3f", 8); /* .5 */
	bld_key(&b, "f64big", GGUF_TYPE_FLOAT64), bld_bytes(&b, "\0\0\0\0\0\0\xf0\x7f", 8);
	bld_key(&b, "f64huge", GGUF_TYPE_FLOAT64), bld_bytes(&b, "\0\0\0\0\0\0\xef\x7f", 8);
	bld_key(&b, "a.bool", GGUF_TYPE_ARRAY), bld_u32(&b, GGUF_TYPE_BOOL), bld_u64(&b, 3);
	bld_bytes(&b, "\x01\x00\x01", 3);
	bld_key(&b, "a.str", GGUF_TYPE_ARRAY), bld_u32(&b, GGUF_TYPE_STRING), bld_u64(&b, 3);
	bld_str(&b, "a"), bld_str(&b, ""), bld_str(&b, "ccc");
	bld_key(&b, "a.empty", GGUF_TYPE_ARRAY), bld_u32(&b, GGUF_TYPE_INT16), bld_u64(&b, 0);
	bld_key(&b, "a.f64", GGUF_TYPE_ARRAY), bld_u32(&b, GGUF_TYPE_FLOAT64), bld_u64(&b, 2);
	bld_zeros(&b, 16);
	const uint64_t ne_a[2] = {4, 2}, ne_b[4] = {32, 1, 1, 2};
	bld_tensor(&b, "a", 2, ne_a, GGML_TYPE_F32, 0);
	bld_tensor(&b, "b", 4, ne_b, GGML_TYPE_Q8_0, 32);
	bld_pad(&b, 32);
	size_t data_start = b.n;
	bld_zeros(&b, 32 + 68);

	assert_int_equal(gguf_open_mem(b.p, b.n, &g, &err), 0);
	assert_int_equal(gguf_version(g), 2);
	assert_int_equal(gguf_n_kv(g), 20);

	assert_int_equal(gguf_get_u32(g, "u8", &u32, &err), 0);
	assert_int_equal(u32, 200);
	assert_int_equal(gguf_get_u32(g, "i8", &u32, &err), ITT_E_FORMAT); /* -1 */
	assert_non_null(strstr(err.msg, "does not fit"));
	assert_int_equal(gguf_get_i32(g, "i8", &i32, &err), 0);
	assert_int_equal(i32, -1);
	assert_int_equal(gguf_get_u32(g, "u16", &u32, &err), 0);
	assert_int_equal(u32, 0x1234);
	assert_int_equal(gguf_get_i32(g, "i16", &i32, &err), 0);
	assert_int_equal(i32, 7);
	assert_int_equal(gguf_get_u32(g, "u32", &u32, &err), 0);
	assert_int_equal(u32, 0x80000000u);
	assert_int_equal(gguf_get_i32(g, "u32", &i32, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_i32(g, "i32", &i32, &err), 0);
	assert_int_equal(i32, -7);
	assert_int_equal(gguf_get_u64(g, "i32", &u64, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_u64(g, "u64", &u64, &err), 0);
	assert_true(u64 == UINT64_MAX);
	assert_int_equal(gguf_get_u32(g, "u64", &u32, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_i32(g, "u64", &i32, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_i32(g, "i64", &i32, &err), 0);
	assert_int_equal(i32, -5);
	assert_int_equal(gguf_get_u64(g, "i64", &u64, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_f32(g, "f32", &f, &err), 0);
	assert_true(f == 1.5f);
	assert_int_equal(gguf_get_f32(g, "f64", &f, &err), 0);
	assert_true(f == 0.5f);
	assert_int_equal(gguf_get_f32(g, "f64big", &f, &err), 0); /* +inf stays inf */
	assert_true(f > 1e38f);
	assert_int_equal(gguf_get_f32(g, "f64huge", &f, &err), ITT_E_FORMAT); /* DBL_MAX */
	assert_int_equal(gguf_get_u32(g, "f32", &u32, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_bool(g, "t", &flag, &err), 0);
	assert_true(flag);
	assert_int_equal(gguf_get_bool(g, "f", &flag, &err), 0);
	assert_false(flag);
	assert_int_equal(gguf_get_bool(g, "u8", &flag, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_u32(g, "t", &u32, &err), ITT_E_FORMAT);
	assert_int_equal(gguf_get_str(g, "s", &s, &err), 0);
	assert_true(gguf_str_eq(s, "hello"));
	assert_int_equal(gguf_get_str(g, "empty", &s, &err), 0);
	assert_int_equal(s.len, 0);
	assert_int_equal(gguf_get_arr(g, "a.bool", &et, &n, &data, &err), 0);
	assert_int_equal(et, GGUF_TYPE_BOOL);
	assert_int_equal(n, 3);
	assert_memory_equal(data, "\x01\x00\x01", 3);
	assert_int_equal(gguf_get_str_arr(g, "a.str", strs, 3, &err), 0);
	assert_true(gguf_str_eq(strs[0], "a"));
	assert_true(gguf_str_eq(strs[1], ""));
	assert_true(gguf_str_eq(strs[2], "ccc"));
	assert_int_equal(gguf_get_arr(g, "a.empty", &et, &n, &data, &err), 0);
	assert_int_equal(et, GGUF_TYPE_INT16);
	assert_int_equal(n, 0);
	assert_int_equal(gguf_get_arr(g, "a.f64", &et, &n, &data, &err), 0);
	assert_int_equal(n, 2);

	const struct gguf_tensor *tb = gguf_find_tensor(g, "b");
	assert_non_null(tb);
	assert_int_equal(tb->n_dims, 4);
	assert_int_equal(tb->ne[3], 2);
	assert_int_equal(tb->size, 68);
	assert_ptr_equal(tb->data, b.p + data_start + 32);
	assert_int_equal(gguf_find_tensor(g, "a")->size, 32);
	gguf_close(&g);

	/* one byte short of the last tensor */
	assert_int_equal(open_copy(b.p, b.n - 1, &err), ITT_E_FORMAT);
	free(b.p);
}

/* A one-kv file: key "k" of the given type and raw value bytes. */
static int open_one_kv(uint32_t version, const char *key, uint32_t type, const void *val, size_t n,
                       struct itt_err *err)
{
	struct bld b = {0};
	int rc;
	bld_header(&b, version, 0, 1);
	bld_key(&b, key, type);
	bld_bytes(&b, val, n);
	bld_pad(&b, 32);
	rc = open_copy(b.p, b.n, err);
	free(b.p);
	return rc;
}

static void test_built_bad_values(void **state)
{
	struct itt_err err;
	(void)state;

	assert_int_equal(open_one_kv(3, "b", GGUF_TYPE_BOOL, "\x01", 1, &err), 0);
	assert_int_equal(open_one_kv(3, "b", GGUF_TYPE_BOOL, "\x02", 1, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "kv 0 (b): bool value is 2"));
	assert_int_equal(open_one_kv(3, "b", GGUF_TYPE_ARRAY,
	                             "\x07\0\0\0"
	                             "\x03\0\0\0\0\0\0\0"
	                             "\x01\x00\xff",
	                             15, &err),
	                 ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "bool element 2"));
	/* nested array, even an empty one */
	assert_int_equal(open_one_kv(3, "n", GGUF_TYPE_ARRAY,
	                             "\x09\0\0\0"
	                             "\x01\0\0\0\0\0\0\0"
	                             "\x04\0\0\0"
	                             "\0\0\0\0\0\0\0\0",
	                             24, &err),
	                 ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "kv 0 (n): arrays of arrays"));
	assert_int_equal(
	    open_one_kv(3, "n", GGUF_TYPE_ARRAY, "\x09\0\0\0\0\0\0\0\0\0\0\0", 12, &err),
	    ITT_E_UNSUPPORTED);
	/* key names with odd bytes are shown safely */
	assert_int_equal(open_one_kv(3, "a\nb", 13, "", 0, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "kv 0 (a?b): unknown value type 13"));
	/* a huge string count in a tiny file is refused before any loop */
	assert_int_equal(open_one_kv(3, "s", GGUF_TYPE_ARRAY,
	                             "\x08\0\0\0"
	                             "\xff\xff\xff\xff\xff\xff\xff\x0f",
	                             12, &err),
	                 ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "strings exceeds remaining"));
	/* a huge kv count in a tiny file is refused before allocation */
	struct bld b = {0};
	bld_header(&b, 3, 0, GGUF_MAX_KV);
	bld_zeros(&b, 64);
	assert_int_equal(open_copy(b.p, b.n, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "cannot fit"));
	free(b.p);
	/* version 2 and 3 parse alike; byte-swapped is big-endian */
	assert_int_equal(open_one_kv(2, "v", GGUF_TYPE_UINT8, "\x01", 1, &err), 0);
	assert_int_equal(open_one_kv(0x02000000u, "v", GGUF_TYPE_UINT8, "\x01", 1, &err),
	                 ITT_E_UNSUPPORTED);
}

/* A file with general.alignment (of a given type and value) and one
 * F32 [8] tensor at the given offset. */
static int open_aligned(uint32_t type, uint64_t align, uint64_t t_off, size_t pad_to,
                        struct itt_err *err, uint64_t *data_start)
{
	struct bld b = {0};
	const uint64_t ne[1] = {8};
	int rc;
	bld_header(&b, 3, 1, 1);
	bld_key(&b, "general.alignment", type);
	if (type == GGUF_TYPE_UINT64)
		bld_u64(&b, align);
	else
		bld_u32(&b, (uint32_t)align);
	bld_tensor(&b, "t", 1, ne, GGML_TYPE_F32, t_off);
	bld_pad(&b, pad_to);
	*data_start = b.n;
	bld_zeros(&b, (size_t)t_off + 32);
	rc = open_copy(b.p, b.n, err);
	free(b.p);
	return rc;
}

static void test_built_alignment(void **state)
{
	struct itt_err err;
	uint64_t ds;
	(void)state;

	assert_int_equal(open_aligned(GGUF_TYPE_UINT32, 64, 64, 64, &err, &ds), 0);
	assert_int_equal(ds % 64, 0);
	assert_int_equal(open_aligned(GGUF_TYPE_UINT32, 1, 4, 1, &err, &ds), 0);
	assert_int_equal(open_aligned(GGUF_TYPE_UINT32, 64, 32, 64, &err, &ds), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "alignment 64"));
	assert_int_equal(open_aligned(GGUF_TYPE_UINT32, 0, 0, 32, &err, &ds), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "kv 0 (general.alignment): alignment 0"));
	assert_int_equal(open_aligned(GGUF_TYPE_UINT32, 3, 0, 32, &err, &ds), ITT_E_FORMAT);
	assert_int_equal(open_aligned(GGUF_TYPE_UINT32, 0x80000000u, 0, 32, &err, &ds),
	                 ITT_E_FORMAT); /* padding runs past the end */
	assert_int_equal(open_aligned(GGUF_TYPE_UINT64, 32, 0, 32, &err, &ds), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "UINT32"));

	/* the alignment is reported by the handle */
	struct bld b = {0};
	gguf_t *g = NULL;
	bld_header(&b, 3, 0, 1);
	bld_key(&b, "general.alignment", GGUF_TYPE_UINT32), bld_u32(&b, 256);
	bld_pad(&b, 256);
	assert_int_equal(gguf_open_mem(b.p, b.n, &g, &err), 0);
	assert_int_equal(gguf_alignment(g), 256);
	gguf_close(&g);
	free(b.p);
}

static void test_built_data_section_edges(void **state)
{
	struct itt_err err;
	struct bld b = {0};
	const uint64_t ne[1] = {8};
	(void)state;

	/* no tensors: an empty data section, with or without the padding */
	bld_header(&b, 3, 0, 0);
	assert_int_equal(open_copy(b.p, b.n, &err), 0);
	bld_pad(&b, 32);
	assert_int_equal(open_copy(b.p, b.n, &err), 0);
	free(b.p);

	/* a tensor and nothing after the padding */
	b = (struct bld){0};
	bld_header(&b, 3, 1, 0);
	bld_tensor(&b, "t", 1, ne, GGML_TYPE_F32, 0);
	bld_pad(&b, 32);
	assert_int_equal(open_copy(b.p, b.n, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "empty"));
	bld_zeros(&b, 31);
	assert_int_equal(open_copy(b.p, b.n, &err), ITT_E_FORMAT);
	bld_zeros(&b, 1);
	assert_int_equal(open_copy(b.p, b.n, &err), 0);
	free(b.p);
}

static void test_built_many_tensors_lookup(void **state)
{
	enum { N = 3000 };
	struct itt_err err = {0};
	struct bld b = {0};
	const uint64_t ne[1] = {8};
	char name[32];
	gguf_t *g = NULL;
	(void)state;

	bld_header(&b, 3, N, 0);
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof name, "t.%d", (i * 7919) % N); /* not in sorted order */
		bld_tensor(&b, name, 1, ne, GGML_TYPE_F32, (uint64_t)i * 32);
	}
	bld_pad(&b, 32);
	bld_zeros(&b, (size_t)N * 32);
	assert_int_equal(gguf_open_mem(b.p, b.n, &g, &err), 0);
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof name, "t.%d", i);
		const struct gguf_tensor *t = gguf_find_tensor(g, name);
		assert_non_null(t);
		assert_true(gguf_str_eq(t->name, name));
	}
	assert_null(gguf_find_tensor(g, "t.3000"));
	assert_null(gguf_find_tensor(g, "t."));
	gguf_close(&g);

	free(b.p);

	/* the last name made equal to tensor 17's: a duplicate far apart */
	b = (struct bld){0};
	bld_header(&b, 3, N, 0);
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof name, "t.%d", i == N - 1 ? 17 : i);
		bld_tensor(&b, name, 1, ne, GGML_TYPE_F32, (uint64_t)i * 32);
	}
	bld_pad(&b, 32);
	bld_zeros(&b, (size_t)N * 32);
	assert_int_equal(open_copy(b.p, b.n, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "tensor 2999 (t.17): duplicate name (first at tensor 17)"));
	free(b.p);
}

static void test_type_tables(void **state)
{
	static const struct {
		uint32_t type, blck, size;
		const char *name;
	} want[] = {
	    {GGML_TYPE_F32, 1, 4, "F32"},       {GGML_TYPE_F16, 1, 2, "F16"},
	    {GGML_TYPE_BF16, 1, 2, "BF16"},     {GGML_TYPE_Q4_0, 32, 18, "Q4_0"},
	    {GGML_TYPE_Q4_1, 32, 20, "Q4_1"},   {GGML_TYPE_Q5_0, 32, 22, "Q5_0"},
	    {GGML_TYPE_Q5_1, 32, 24, "Q5_1"},   {GGML_TYPE_Q8_0, 32, 34, "Q8_0"},
	    {GGML_TYPE_Q8_1, 32, 36, "Q8_1"},   {GGML_TYPE_Q2_K, 256, 84, "Q2_K"},
	    {GGML_TYPE_Q3_K, 256, 110, "Q3_K"}, {GGML_TYPE_Q4_K, 256, 144, "Q4_K"},
	    {GGML_TYPE_Q5_K, 256, 176, "Q5_K"}, {GGML_TYPE_Q6_K, 256, 210, "Q6_K"},
	    {GGML_TYPE_Q8_K, 256, 292, "Q8_K"},
	};
	(void)state;
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		assert_int_equal(ggml_blck_size(want[i].type), want[i].blck);
		assert_int_equal(ggml_type_size(want[i].type), want[i].size);
		assert_string_equal(ggml_type_name(want[i].type), want[i].name);
	}
	assert_int_equal(ggml_blck_size(4), 0);
	assert_int_equal(ggml_type_size(GGML_TYPE_COUNT), 0);
	assert_int_equal(ggml_type_size(UINT32_MAX), 0);
	assert_string_equal(ggml_type_name(UINT32_MAX), "unknown");
	assert_string_equal(gguf_type_name(GGUF_TYPE_FLOAT64), "FLOAT64");
	assert_string_equal(gguf_type_name(GGUF_TYPE_COUNT), "unknown");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_stories_header_and_metadata),
	    cmocka_unit_test(test_stories_tensors),
	    cmocka_unit_test(test_getters_reject_mismatch_and_absent),
	    cmocka_unit_test(test_open_reports_io_and_argument_errors),
	    cmocka_unit_test(test_truncation_at_every_header_offset_fails),
	    cmocka_unit_test(test_truncation_in_data_section_fails),
	    cmocka_unit_test(test_header_mutations),
	    cmocka_unit_test(test_kv_mutations),
	    cmocka_unit_test(test_tensor_mutations),
	    cmocka_unit_test(test_built_v2_all_scalar_types),
	    cmocka_unit_test(test_built_bad_values),
	    cmocka_unit_test(test_built_alignment),
	    cmocka_unit_test(test_built_data_section_edges),
	    cmocka_unit_test(test_built_many_tensors_lookup),
	    cmocka_unit_test(test_type_tables),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
