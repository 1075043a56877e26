/* test-tools: the GGUF writer, the llama2.c reader and the three tools.
 *
 * The writer is checked by round trips through the reader (gguf.h); the
 * llama2.c conversion against the reference stories260K.gguf (same
 * metadata, bit-identical tensors) and against the checkpoint's own
 * floats; malformed checkpoints and tokenizers must be rejected, never
 * crash.  itt-synth and itt-quantize are run as programs from ITT_BIN_DIR
 * (set by ctest); those tests skip when it is not set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gguf-write.h"
#include "gguf.h"
#include "llama2c.h"
#include "quant.h"
#include "testutil.h"
#include "tokenizer.h"

/* ---- helpers ---- */

/* Path of a built tool, or NULL (after saying why) when ITT_BIN_DIR is unset. */
static const char *bin_path(const char *tool)
{
	static char buf[4][4096];
	static int next;
	const char *dir = getenv("ITT_BIN_DIR");
	if (!dir || !*dir) {
		fprintf(stderr, "SKIP: ITT_BIN_DIR is not set; %s is needed\n", tool);
		return NULL;
	}
	char *p = buf[next++ % 4];
	snprintf(p, sizeof buf[0], "%s/%s", dir, tool);
	if (access(p, X_OK) != 0) {
		fprintf(stderr, "SKIP: %s is not built\n", p);
		return NULL;
	}
	return p;
}

/* Runs a program with a NULL-terminated argument list; returns its exit
 * status (-1 if it did not exit normally).  quiet: output to /dev/null. */
static int run_prog(const char *path, int quiet, ...)
{
	char *argv[32];
	int n = 0;
	argv[n++] = (char *)path;
	va_list ap;
	va_start(ap, quiet);
	const char *a;
	while ((a = va_arg(ap, const char *)) != NULL && n < 31)
		argv[n++] = (char *)a;
	va_end(ap);
	argv[n] = NULL;
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);
		if (fd >= 0) {
			dup2(fd, 1);
			if (quiet)
				dup2(fd, 2);
		}
		execv(path, argv);
		_exit(127);
	}
	int st;
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool file_exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/* Converts a llama2.c checkpoint with the library calls itt-convert makes. */
static int convert(const char *ckpt, const char *tok, const char *out, struct itt_err *err)
{
	llama2c_t *m = NULL;
	struct llama2c_vocab *v = NULL;
	gguf_writer_t *w = NULL;
	int rc = llama2c_open(ckpt, &m, err);
	if (rc == 0)
		rc = llama2c_vocab_load(tok, (uint32_t)llama2c_get_config(m)->vocab_size, &v, err);
	if (rc == 0)
		rc = gguf_writer_new(&w, err);
	if (rc == 0)
		rc = llama2c_add_hparams(w, llama2c_get_config(m), "test", err);
	if (rc == 0)
		rc = llama2c_add_vocab(w, v, err);
	if (rc == 0)
		rc = llama2c_add_tensors(w, m, err);
	if (rc == 0)
		rc = gguf_writer_write(w, out, false, err);
	gguf_writer_destroy(&w);
	llama2c_vocab_destroy(&v);
	llama2c_close(&m);
	return rc;
}

static uint32_t get_u32(const gguf_t *g, const char *key)
{
	uint32_t v = 0;
	struct itt_err err = {0};
	int rc = gguf_get_u32(g, key, &v, &err);
	if (rc)
		fail_msg("%s: %s", key, err.msg);
	return v;
}

/* Compares a key/value pair of two files byte for byte (type and value). */
static void assert_same_kv(const gguf_t *a, const gguf_t *b, const char *key)
{
	const struct gguf_kv *x = gguf_find_kv(a, key), *y = gguf_find_kv(b, key);
	if (!x || !y)
		fail_msg("key %s missing (%p, %p)", key, (const void *)x, (const void *)y);
	assert_int_equal(x->type, y->type);
	if (x->type == GGUF_TYPE_ARRAY && x->arr_type == GGUF_TYPE_STRING) {
		assert_int_equal(x->arr_n, y->arr_n);
		struct gguf_str *sx = calloc(x->arr_n, sizeof *sx),
		                *sy = calloc(x->arr_n, sizeof *sy);
		assert_int_equal(gguf_get_str_arr(a, key, sx, x->arr_n, NULL), 0);
		assert_int_equal(gguf_get_str_arr(b, key, sy, y->arr_n, NULL), 0);
		for (uint64_t i = 0; i < x->arr_n; i++) {
			if (sx[i].len != sy[i].len || memcmp(sx[i].ptr, sy[i].ptr, sx[i].len) != 0)
				fail_msg("%s[%llu]: \"%.*s\" != \"%.*s\"", key,
				         (unsigned long long)i, (int)sx[i].len, sx[i].ptr,
				         (int)sy[i].len, sy[i].ptr);
		}
		free(sx);
		free(sy);
	} else if (x->type == GGUF_TYPE_ARRAY) {
		uint32_t tx, ty;
		uint64_t nx, ny;
		const void *dx, *dy;
		assert_int_equal(gguf_get_arr(a, key, &tx, &nx, &dx, NULL), 0);
		assert_int_equal(gguf_get_arr(b, key, &ty, &ny, &dy, NULL), 0);
		assert_int_equal(tx, ty);
		assert_int_equal(nx, ny);
		size_t es = tx == GGUF_TYPE_INT32 || tx == GGUF_TYPE_FLOAT32 ? 4 : 1;
		assert_memory_equal(dx, dy, nx * es);
	} else if (x->type == GGUF_TYPE_STRING) {
		struct gguf_str sx, sy;
		assert_int_equal(gguf_get_str(a, key, &sx, NULL), 0);
		assert_int_equal(gguf_get_str(b, key, &sy, NULL), 0);
		assert_int_equal(sx.len, sy.len);
		assert_memory_equal(sx.ptr, sy.ptr, sx.len);
	} else {
		size_t n = x->type == GGUF_TYPE_UINT32 || x->type == GGUF_TYPE_FLOAT32 ? 4 : 1;
		assert_memory_equal(x->data, y->data, n);
	}
}

/* ---- the writer ---- */

struct fill_ctx {
	const uint8_t *src;
	size_t size, pos, step, extra; /* extra: bytes handed out beyond size */
};

static int fill_steps(void *ctx, const void **chunk, size_t *len, struct itt_err *err)
{
	struct fill_ctx *f = ctx;
	size_t n = f->size + f->extra - f->pos;
	if (n > f->step)
		n = f->step;
	*chunk = f->src + f->pos;
	*len = n;
	f->pos += n;
	return 0;
}

static void test_writer_round_trip_every_kv_type(void **state)
{
	(void)state;
	const char *path = tu_tmp_path("writer-rt.gguf");
	struct itt_err err = {0};
	gguf_writer_t *w = NULL;
	assert_int_equal(gguf_writer_new(&w, &err), 0);
	assert_int_equal(gguf_writer_add_u8(w, "t.u8", 200, &err), 0);
	assert_int_equal(gguf_writer_add_i8(w, "t.i8", -100, &err), 0);
	assert_int_equal(gguf_writer_add_u16(w, "t.u16", 65000, &err), 0);
	assert_int_equal(gguf_writer_add_i16(w, "t.i16", -32000, &err), 0);
	assert_int_equal(gguf_writer_add_u32(w, "t.u32", 4000000000u, &err), 0);
	assert_int_equal(gguf_writer_add_i32(w, "t.i32", -2000000000, &err), 0);
	assert_int_equal(gguf_writer_add_u64(w, "t.u64", 1ull << 60, &err), 0);
	assert_int_equal(gguf_writer_add_i64(w, "t.i64", -(1ll << 60), &err), 0);
	assert_int_equal(gguf_writer_add_f32(w, "t.f32", 1.5f, &err), 0);
	assert_int_equal(gguf_writer_add_f64(w, "t.f64", -2.25, &err), 0);
	assert_int_equal(gguf_writer_add_bool(w, "t.bool", true, &err), 0);
	assert_int_equal(gguf_writer_add_str(w, "t.str", "hello", &err), 0);
	assert_int_equal(gguf_writer_add_str_n(w, "t.bin", "a\0b", 3, &err), 0);
	assert_int_equal(gguf_writer_add_str(w, "t.empty", "", &err), 0);
	const int32_t i32s[4] = {1, -2, 3, INT32_MIN};
	const float f32s[3] = {0.5f, -0.0f, 1e30f};
	const uint8_t bools[3] = {1, 0, 7};
	const double f64s[2] = {1e300, -1e-300};
	const struct gguf_str strs[3] = {{3, "abc"}, {0, ""}, {4, "\xe2\x96\x81x"}};
	assert_int_equal(gguf_writer_add_arr(w, "a.i32", GGUF_TYPE_INT32, i32s, 4, &err), 0);
	assert_int_equal(gguf_writer_add_arr(w, "a.f32", GGUF_TYPE_FLOAT32, f32s, 3, &err), 0);
	assert_int_equal(gguf_writer_add_arr(w, "a.bool", GGUF_TYPE_BOOL, bools, 3, &err), 0);
	assert_int_equal(gguf_writer_add_arr(w, "a.f64", GGUF_TYPE_FLOAT64, f64s, 2, &err), 0);
	assert_int_equal(gguf_writer_add_arr(w, "a.empty", GGUF_TYPE_UINT8, NULL, 0, &err), 0);
	assert_int_equal(gguf_writer_add_str_arr(w, "a.str", strs, 3, &err), 0);
	/* replacing keeps one entry; the new value wins */
	assert_int_equal(gguf_writer_add_u32(w, "t.replaced", 1, &err), 0);
	assert_int_equal(gguf_writer_add_str(w, "t.replaced", "second", &err), 0);
	assert_int_equal(gguf_writer_add_u32(w, "general.alignment", 64, &err), 0);
	assert_int_equal(gguf_writer_n_kv(w), 22);

	/* tensors: copied F32 matrix, borrowed F16 vector, Q8_0 from a fill function */
	float m[3][5];
	for (int i = 0; i < 15; i++)
		m[i / 5][i % 5] = (float)i * 0.25f - 1.0f;
	uint16_t h[7] = {1, 2, 3, 4, 5, 6, 0x3c00};
	uint8_t q[2 * 34 * 3];
	for (size_t i = 0; i < sizeof q; i++)
		q[i] = (uint8_t)(i * 7 + 3);
	struct fill_ctx fc = {.src = q, .size = sizeof q, .step = 50};
	const uint64_t ne_m[2] = {5, 3}, ne_h[1] = {7}, ne_q[3] = {64, 3, 1};
	assert_int_equal(gguf_writer_add_tensor(w, "m", 2, ne_m, GGML_TYPE_F32, m, sizeof m,
	                                        GGUF_WRITER_COPY, &err),
	                 0);
	memset(m, 0, sizeof m); /* the copy must not see this */
	assert_int_equal(gguf_writer_add_tensor(w, "h", 1, ne_h, GGML_TYPE_F16, h, sizeof h,
	                                        GGUF_WRITER_BORROW, &err),
	                 0);
	assert_int_equal(
	    gguf_writer_add_tensor_fn(w, "q", 3, ne_q, GGML_TYPE_Q8_0, fill_steps, &fc, &err), 0);
	assert_int_equal(gguf_writer_write(w, path, false, &err), 0);
	uint64_t expect_size = gguf_writer_file_size(w);
	gguf_writer_destroy(&w);
	assert_null(w);
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	assert_false(file_exists(tmp));

	gguf_t *g = NULL;
	if (gguf_open(path, &g, &err) != 0)
		fail_msg("gguf_open: %s", err.msg);
	size_t fsize;
	gguf_base(g, &fsize);
	assert_int_equal(fsize, expect_size);
	assert_int_equal(gguf_version(g), 3);
	assert_int_equal(gguf_alignment(g), 64);
	assert_int_equal(gguf_n_kv(g), 22);
	const struct {
		const char *key;
		uint32_t type;
		size_t n;
		const void *v;
	} scalars[] = {
	    {"t.u8", GGUF_TYPE_UINT8, 1, &(uint8_t){200}},
	    {"t.i8", GGUF_TYPE_INT8, 1, &(int8_t){-100}},
	    {"t.u16", GGUF_TYPE_UINT16, 2, &(uint16_t){65000}},
	    {"t.i16", GGUF_TYPE_INT16, 2, &(int16_t){-32000}},
	    {"t.u32", GGUF_TYPE_UINT32, 4, &(uint32_t){4000000000u}},
	    {"t.i32", GGUF_TYPE_INT32, 4, &(int32_t){-2000000000}},
	    {"t.u64", GGUF_TYPE_UINT64, 8, &(uint64_t){1ull << 60}},
	    {"t.i64", GGUF_TYPE_INT64, 8, &(int64_t){-(1ll << 60)}},
	    {"t.f32", GGUF_TYPE_FLOAT32, 4, &(float){1.5f}},
	    {"t.f64", GGUF_TYPE_FLOAT64, 8, &(double){-2.25}},
	    {"t.bool", GGUF_TYPE_BOOL, 1, &(uint8_t){1}},
	};
	for (size_t i = 0; i < sizeof scalars / sizeof scalars[0]; i++) {
		const struct gguf_kv *kv = gguf_find_kv(g, scalars[i].key);
		assert_non_null(kv);
		assert_int_equal(kv->type, scalars[i].type);
		assert_memory_equal(kv->data, scalars[i].v, scalars[i].n);
	}
	assert_true(gguf_str_eq(gguf_kv_at(g, 0)->key, "t.u8")); /* order kept */
	uint32_t u32;
	int32_t i32;
	uint64_t u64;
	float f;
	bool b;
	struct gguf_str s;
	assert_int_equal(gguf_get_u32(g, "t.u32", &u32, &err), 0);
	assert_int_equal(u32, 4000000000u);
	assert_int_equal(gguf_get_i32(g, "t.i32", &i32, &err), 0);
	assert_int_equal(i32, -2000000000);
	assert_int_equal(gguf_get_u64(g, "t.u64", &u64, &err), 0);
	assert_int_equal(u64, 1ull << 60);
	assert_int_equal(gguf_get_f32(g, "t.f32", &f, &err), 0);
	assert_true(f == 1.5f);
	assert_int_equal(gguf_get_bool(g, "t.bool", &b, &err), 0);
	assert_true(b);
	assert_int_equal(gguf_get_str(g, "t.str", &s, &err), 0);
	assert_true(gguf_str_eq(s, "hello"));
	assert_int_equal(gguf_get_str(g, "t.bin", &s, &err), 0);
	assert_int_equal(s.len, 3);
	assert_memory_equal(s.ptr, "a\0b", 3);
	assert_int_equal(gguf_get_str(g, "t.empty", &s, &err), 0);
	assert_int_equal(s.len, 0);
	assert_int_equal(gguf_get_str(g, "t.replaced", &s, &err), 0);
	assert_true(gguf_str_eq(s, "second"));

	uint32_t et;
	uint64_t n;
	const void *data;
	assert_int_equal(gguf_get_arr(g, "a.i32", &et, &n, &data, &err), 0);
	assert_int_equal(et, GGUF_TYPE_INT32);
	assert_int_equal(n, 4);
	assert_memory_equal(data, i32s, sizeof i32s);
	assert_int_equal(gguf_get_arr(g, "a.f32", &et, &n, &data, &err), 0);
	assert_memory_equal(data, f32s, sizeof f32s);
	assert_int_equal(gguf_get_arr(g, "a.bool", &et, &n, &data, &err), 0);
	assert_int_equal(et, GGUF_TYPE_BOOL);
	assert_memory_equal(data, "\1\0\1", 3); /* normalised */
	assert_int_equal(gguf_get_arr(g, "a.f64", &et, &n, &data, &err), 0);
	assert_memory_equal(data, f64s, sizeof f64s);
	assert_int_equal(gguf_get_arr(g, "a.empty", &et, &n, &data, &err), 0);
	assert_int_equal(n, 0);
	struct gguf_str rs[3];
	assert_int_equal(gguf_get_str_arr(g, "a.str", rs, 3, &err), 0);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(rs[i].len, strs[i].len);
		assert_memory_equal(rs[i].ptr, strs[i].ptr, strs[i].len);
	}

	assert_int_equal(gguf_n_tensors(g), 3);
	const struct gguf_tensor *t = gguf_find_tensor(g, "m");
	assert_non_null(t);
	assert_int_equal(t->n_dims, 2);
	assert_int_equal(t->ne[0], 5);
	assert_int_equal(t->ne[1], 3);
	assert_int_equal(t->type, GGML_TYPE_F32);
	for (int i = 0; i < 15; i++) {
		float x;
		memcpy(&x, (const char *)t->data + 4 * i, 4);
		assert_true(x == (float)i * 0.25f - 1.0f);
	}
	t = gguf_find_tensor(g, "h");
	assert_non_null(t);
	assert_int_equal(t->type, GGML_TYPE_F16);
	assert_int_equal(t->offset % 64, 0);
	assert_memory_equal(t->data, h, sizeof h);
	t = gguf_find_tensor(g, "q");
	assert_non_null(t);
	assert_int_equal(t->n_dims, 3);
	assert_int_equal(t->type, GGML_TYPE_Q8_0);
	assert_int_equal(t->size, sizeof q);
	assert_int_equal(t->offset % 64, 0);
	assert_memory_equal(t->data, q, sizeof q);
	const uint8_t *base = gguf_base(g, NULL);
	assert_int_equal(((const uint8_t *)t->data - base) % 64, 0);
	gguf_close(&g);
	unlink(path);
}

static void test_writer_rejects_bad_input(void **state)
{
	(void)state;
	struct itt_err err = {0};
	gguf_writer_t *w = NULL;
	assert_int_equal(gguf_writer_new(&w, &err), 0);
	float x[64] = {0};
	const uint64_t ne[2] = {32, 2}, ne_odd[1] = {33}, ne_zero[2] = {32, 0};
	assert_int_equal(gguf_writer_add_u32(w, "general.alignment", 3, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "alignment"));
	assert_int_equal(gguf_writer_add_u64(w, "general.alignment", 64, &err), ITT_E_INVALID);
	assert_int_equal(gguf_writer_add_u32(w, "", 1, &err), ITT_E_INVALID);
	assert_int_equal(gguf_writer_add_arr(w, "x", GGUF_TYPE_STRING, x, 1, &err), ITT_E_INVALID);
	assert_int_equal(
	    gguf_writer_add_tensor(w, "a", 2, ne, GGML_TYPE_F32, x, sizeof x - 4, 0, &err),
	    ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "a:"));
	assert_int_equal(gguf_writer_add_tensor(w, "a", 1, ne_odd, GGML_TYPE_Q8_0, x, 34, 0, &err),
	                 ITT_E_INVALID);
	assert_int_equal(gguf_writer_add_tensor(w, "a", 2, ne_zero, GGML_TYPE_F32, x, 0, 0, &err),
	                 ITT_E_INVALID);
	assert_int_equal(gguf_writer_add_tensor(w, "a", 5, ne, GGML_TYPE_F32, x, sizeof x, 0, &err),
	                 ITT_E_INVALID);
	assert_int_equal(gguf_writer_add_tensor(w, "a", 2, ne, 99, x, sizeof x, 0, &err),
	                 ITT_E_UNSUPPORTED);
	char long_name[80];
	memset(long_name, 'n', sizeof long_name - 1);
	long_name[sizeof long_name - 1] = 0;
	assert_int_equal(
	    gguf_writer_add_tensor(w, long_name, 2, ne, GGML_TYPE_F32, x, sizeof x, 0, &err),
	    ITT_E_INVALID);
	assert_int_equal(gguf_writer_add_tensor(w, "a", 2, ne, GGML_TYPE_F32, x, sizeof x, 0, &err),
	                 0);
	assert_int_equal(gguf_writer_add_tensor(w, "a", 2, ne, GGML_TYPE_F32, x, sizeof x, 0, &err),
	                 ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "twice"));
	assert_int_equal(gguf_writer_n_tensors(w), 1);

	/* a fill function that overruns fails the write and leaves no file */
	uint8_t big[512] = {0};
	struct fill_ctx fc = {.src = big, .size = 256, .step = 100, .extra = 10};
	assert_int_equal(gguf_writer_add_tensor_fn(w, "b", 1, (const uint64_t[]){64}, GGML_TYPE_F32,
	                                           fill_steps, &fc, &err),
	                 0);
	const char *path = tu_tmp_path("writer-bad.gguf");
	assert_int_not_equal(gguf_writer_write(w, path, false, &err), 0);
	assert_non_null(strstr(err.msg, "b"));
	assert_false(file_exists(path));
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	assert_false(file_exists(tmp));
	/* fill functions are consumed by one write */
	assert_int_equal(gguf_writer_write(w, path, false, &err), ITT_E_INVALID);
	gguf_writer_destroy(&w);

	/* an unwritable path */
	assert_int_equal(gguf_writer_new(&w, &err), 0);
	assert_int_equal(gguf_writer_write(w, "/nonexistent-dir/x.gguf", false, &err), ITT_E_IO);
	gguf_writer_destroy(&w);
	gguf_writer_destroy(&w); /* NULL is fine */
}

/* ---- llama2.c checkpoints ---- */

static const int32_t TINY_HDR[7] = {8, 16, 2, 2, 1, -10, 4}; /* separate classifier */

/* A synthetic checkpoint in memory: header, then floats 0, 1, 2, ... */
static void *make_ckpt(const int32_t hdr[7], size_t *size)
{
	struct llama2c_config c = {
	    hdr[0], hdr[1],     hdr[2], hdr[3], hdr[4], hdr[5] < 0 ? -hdr[5] : hdr[5],
	    hdr[6], hdr[5] > 0, 0,      0};
	assert_int_equal(llama2c_check_config(&c, NULL), 0);
	uint64_t bytes = llama2c_file_bytes(&c);
	assert_true(bytes > LLAMA2C_HEADER_BYTES);
	uint8_t *buf = malloc(bytes);
	assert_non_null(buf);
	memcpy(buf, hdr, LLAMA2C_HEADER_BYTES);
	for (uint64_t i = 0; i < (bytes - LLAMA2C_HEADER_BYTES) / 4; i++) {
		float f = (float)i;
		memcpy(buf + LLAMA2C_HEADER_BYTES + 4 * i, &f, 4);
	}
	*size = (size_t)bytes;
	return buf;
}

static void test_llama2c_layout_of_a_separate_classifier(void **state)
{
	(void)state;
	size_t size;
	float *buf = make_ckpt(TINY_HDR, &size);
	llama2c_t *m = NULL;
	struct itt_err err = {0};
	if (llama2c_open_mem(buf, size, &m, &err) != 0)
		fail_msg("%s", err.msg);
	const struct llama2c_config *c = llama2c_get_config(m);
	const struct llama2c_weights *w = llama2c_get_weights(m);
	assert_false(c->shared_classifier);
	assert_int_equal(c->vocab_size, 10);
	assert_int_equal(c->head_dim, 4);
	assert_int_equal(c->kv_dim, 4);
	/* offsets in floats: embedding 80, rms_att 16, wq 128, wk 64, wv 64, wo 128,
	 * rms_ffn 16, w1 256, w2 256, w3 256, rms_final 8, freq_cis 2 * 4 * 2 */
	assert_true(w->token_embedding[0] == 0.0f);
	assert_true(w->rms_att[0] == 80.0f);
	assert_true(w->wq[0] == 96.0f);
	assert_true(w->wk[0] == 224.0f);
	assert_true(w->wv[0] == 288.0f);
	assert_true(w->wo[0] == 352.0f);
	assert_true(w->rms_ffn[0] == 480.0f);
	assert_true(w->w1[0] == 496.0f);
	assert_true(w->w2[0] == 752.0f);
	assert_true(w->w3[0] == 1008.0f);
	assert_true(w->rms_final[0] == 1264.0f);
	assert_true(w->wcls[0] == 1288.0f);
	assert_true(w->wcls[79] == 1367.0f);
	assert_int_equal(size, LLAMA2C_HEADER_BYTES + 4 * 1368);

	/* the GGUF form keeps output.weight and layer 1 starts where it should */
	const char *path = tu_tmp_path("sep-cls.gguf");
	gguf_writer_t *gw = NULL;
	assert_int_equal(gguf_writer_new(&gw, &err), 0);
	assert_int_equal(llama2c_add_tensors(gw, m, &err), 0);
	assert_int_equal(gguf_writer_write(gw, path, true, &err), 0);
	gguf_writer_destroy(&gw);
	gguf_t *g = NULL;
	assert_int_equal(gguf_open(path, &g, &err), 0);
	assert_int_equal(gguf_n_tensors(g), 3 + 2 * 9);
	const struct gguf_tensor *t = gguf_find_tensor(g, "output.weight");
	assert_non_null(t);
	assert_int_equal(t->ne[0], 8);
	assert_int_equal(t->ne[1], 10);
	assert_memory_equal(t->data, w->wcls, 80 * 4);
	t = gguf_find_tensor(g, "blk.1.attn_k.weight");
	assert_non_null(t);
	assert_int_equal(t->ne[0], 8);
	assert_int_equal(t->ne[1], 4);
	assert_memory_equal(t->data, w->wk + 32, 32 * 4);
	t = gguf_find_tensor(g, "blk.1.ffn_down.weight");
	assert_non_null(t);
	assert_int_equal(t->ne[0], 16);
	assert_int_equal(t->ne[1], 8);
	assert_memory_equal(t->data, w->w2 + 128, 128 * 4);
	gguf_close(&g);
	unlink(path);
	llama2c_close(&m);
	assert_null(m);
	free(buf);
}

static void test_llama2c_rejects_bad_headers(void **state)
{
	(void)state;
	size_t size;
	uint8_t *good = make_ckpt(TINY_HDR, &size);
	uint8_t *buf = malloc(size);
	const struct {
		int field;
		int32_t value;
		int code;
	} cases[] = {
	    {0, -8, ITT_E_FORMAT},              /* negative dim */
	    {0, 0, ITT_E_FORMAT},               /* zero dim */
	    {0, INT32_MAX, ITT_E_FORMAT},       /* huge dim */
	    {1, -1, ITT_E_FORMAT},              /* negative hidden */
	    {1, 1 << 30, ITT_E_FORMAT},         /* huge hidden */
	    {2, 0, ITT_E_FORMAT},               /* zero layers */
	    {2, 1 << 30, ITT_E_FORMAT},         /* huge layer count */
	    {3, 0, ITT_E_FORMAT},               /* zero heads */
	    {3, 3, ITT_E_FORMAT},               /* dim not a multiple of heads */
	    {3, 8, ITT_E_FORMAT},               /* odd head_dim (1) */
	    {4, 0, ITT_E_FORMAT},               /* zero kv heads */
	    {4, 4, ITT_E_FORMAT},               /* more kv heads than heads */
	    {5, 0, ITT_E_FORMAT},               /* zero vocab */
	    {5, INT32_MIN, ITT_E_FORMAT},       /* vocab that cannot be negated */
	    {5, 10, ITT_E_FORMAT},              /* shared: the file is too long */
	    {5, -11, ITT_E_FORMAT},             /* size mismatch */
	    {5, 1 << 30, ITT_E_FORMAT},         /* huge vocab */
	    {6, 0, ITT_E_FORMAT},               /* zero seq_len */
	    {6, -4, ITT_E_FORMAT},              /* negative seq_len */
	    {6, INT32_MAX, ITT_E_FORMAT},       /* huge seq_len */
	    {0, 0x616b3432, ITT_E_UNSUPPORTED}, /* "ak42": newer export */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memcpy(buf, good, size);
		memcpy(buf + 4 * cases[i].field, &cases[i].value, 4);
		llama2c_t *m = NULL;
		struct itt_err err = {0};
		int rc = llama2c_open_mem(buf, size, &m, &err);
		if (rc != cases[i].code)
			fail_msg("case %zu (field %d = %d): rc %d (%s)", i, cases[i].field,
			         cases[i].value, rc, err.msg);
		assert_null(m);
		assert_true(err.msg[0] != 0);
	}
	/* head_dim must be even: dim 6, 2 heads -> 3 */
	int32_t odd[7] = {6, 16, 1, 2, 1, 10, 4};
	memcpy(buf, odd, sizeof odd);
	llama2c_t *m = NULL;
	struct itt_err err = {0};
	assert_int_equal(llama2c_open_mem(buf, size, &m, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "head_dim"));
	/* messages name the field */
	memcpy(buf, good, size);
	memcpy(buf + 8, &(int32_t){0}, 4);
	assert_int_equal(llama2c_open_mem(buf, size, &m, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "n_layers"));
	free(buf);
	free(good);
}

static void test_llama2c_rejects_truncated_and_garbage_files(void **state)
{
	(void)state;
	const char *src = tu_model_path("stories260K.bin");
	if (!src)
		skip();
	size_t size;
	uint8_t *buf = tu_read_file(src, &size);
	assert_non_null(buf);
	llama2c_t *m = NULL;
	struct itt_err err = {0};
	assert_int_equal(llama2c_open_mem(buf, size, &m, &err), 0);
	assert_true(llama2c_get_config(m)->shared_classifier);
	llama2c_close(&m);

	const size_t cuts[] = {0, 1, 4, 27, 28, 32, 1000, size / 2, size - 4, size - 1};
	for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
		int rc = llama2c_open_mem(buf, cuts[i], &m, &err);
		if (rc != ITT_E_FORMAT)
			fail_msg("cut at %zu: rc %d", cuts[i], rc);
		assert_null(m);
	}
	/* trailing bytes are as wrong as missing ones */
	uint8_t *longer = malloc(size + 4);
	memcpy(longer, buf, size);
	memset(longer + size, 0, 4);
	assert_int_equal(llama2c_open_mem(longer, size + 4, &m, &err), ITT_E_FORMAT);
	free(longer);

	/* a truncated file on disk: the message names the path */
	const char *path = tu_tmp_path("trunc.bin");
	assert_int_equal(tu_write_file(path, buf, size - 100), 0);
	assert_int_equal(llama2c_open(path, &m, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, path));
	assert_int_equal(tu_write_file(path, "", 0), 0);
	assert_int_equal(llama2c_open(path, &m, &err), ITT_E_FORMAT);
	unlink(path);
	assert_int_equal(llama2c_open(path, &m, &err), ITT_E_IO);

	/* garbage: pseudo-random bytes of several sizes */
	uint64_t s = 12345;
	for (size_t n = 28; n < 100000; n = n * 3 + 1) {
		uint8_t *g = malloc(n);
		for (size_t i = 0; i < n; i++) {
			s = s * 6364136223846793005ull + 1442695040888963407ull;
			g[i] = (uint8_t)(s >> 56);
		}
		int rc = llama2c_open_mem(g, n, &m, &err);
		assert_true(rc == ITT_E_FORMAT || rc == ITT_E_UNSUPPORTED);
		free(g);
	}
	free(buf);
}

/* ---- llama2.c tokenizers ---- */

/* A tokenizer file from (score, text) pairs. */
static uint8_t *make_tok(int32_t maxlen, const char *const *texts, const float *scores, size_t n,
                         size_t *size)
{
	size_t cap = 4;
	for (size_t i = 0; i < n; i++)
		cap += 8 + strlen(texts[i]);
	uint8_t *buf = malloc(cap), *p = buf + 4;
	memcpy(buf, &maxlen, 4);
	for (size_t i = 0; i < n; i++) {
		int32_t len = (int32_t)strlen(texts[i]);
		memcpy(p, &scores[i], 4);
		memcpy(p + 4, &len, 4);
		memcpy(p + 8, texts[i], (size_t)len);
		p += 8 + len;
	}
	*size = cap;
	return buf;
}

static void test_llama2c_vocab_conversion(void **state)
{
	(void)state;
	const char *texts[] = {"<unk>", "\n<s>\n", "\n</s>\n", "<0x0A>",
	                       " ",     " the",    "a b",      "<0xZZ>"};
	const float scores[] = {0, 0, 0, 0, -1, -2.5f, -3, -4};
	size_t size;
	uint8_t *buf = make_tok(8, texts, scores, 8, &size);
	struct llama2c_vocab *v = NULL;
	struct itt_err err = {0};
	if (llama2c_vocab_load_mem(buf, size, 8, &v, &err) != 0)
		fail_msg("%s", err.msg);
	const char *want[] = {"<unk>",
	                      "<s>",
	                      "</s>",
	                      "<0x0A>",
	                      "\xe2\x96\x81",
	                      "\xe2\x96\x81the",
	                      "a\342\226\201b", /* "a▁b" */
	                      "<0xZZ>"};
	const int32_t types[] = {TOKENIZER_TYPE_UNKNOWN, TOKENIZER_TYPE_CONTROL,
	                         TOKENIZER_TYPE_CONTROL, TOKENIZER_TYPE_BYTE,
	                         TOKENIZER_TYPE_NORMAL,  TOKENIZER_TYPE_NORMAL,
	                         TOKENIZER_TYPE_NORMAL,  TOKENIZER_TYPE_NORMAL};
	assert_int_equal(v->n, 8);
	assert_int_equal(v->max_token_length, 8);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(v->tokens[i].len, strlen(want[i]));
		assert_memory_equal(v->tokens[i].ptr, want[i], strlen(want[i]));
		assert_int_equal(v->types[i], types[i]);
		assert_true(v->scores[i] == scores[i]);
	}
	llama2c_vocab_destroy(&v);
	assert_null(v);

	/* wrong counts: fewer tokens than the file holds, or more */
	assert_int_equal(llama2c_vocab_load_mem(buf, size, 7, &v, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "left"));
	assert_int_equal(llama2c_vocab_load_mem(buf, size, 9, &v, &err), ITT_E_FORMAT);
	assert_int_equal(llama2c_vocab_load_mem(buf, size, 2, &v, &err), ITT_E_INVALID);
	/* every truncation point */
	for (size_t cut = 0; cut < size; cut++)
		assert_int_equal(llama2c_vocab_load_mem(buf, cut, 8, &v, &err), ITT_E_FORMAT);
	/* a token longer than max_token_length */
	int32_t small = 3;
	memcpy(buf, &small, 4);
	assert_int_equal(llama2c_vocab_load_mem(buf, size, 8, &v, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "max_token_length"));
	free(buf);
	/* a NaN score, a negative length */
	const float bad_scores[] = {0, 0, NAN};
	buf = make_tok(8, texts, bad_scores, 3, &size);
	assert_int_equal(llama2c_vocab_load_mem(buf, size, 3, &v, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "score"));
	free(buf);
	const float ok_scores[] = {0, 0, 0};
	buf = make_tok(8, texts, ok_scores, 3, &size);
	assert_int_equal(llama2c_vocab_load_mem(buf, size, 3, &v, &err), 0);
	llama2c_vocab_destroy(&v);
	memcpy(buf + 8, &(int32_t){-1}, 4); /* length of token 0 */
	assert_int_equal(llama2c_vocab_load_mem(buf, size, 3, &v, &err), ITT_E_FORMAT);
	free(buf);
	assert_null(v);
}

/* ---- conversion of the real models ---- */

static void test_convert_stories260k_matches_reference_gguf(void **state)
{
	(void)state;
	const char *ckpt = tu_model_path("stories260K.bin");
	const char *tok = tu_model_path("tok512.bin");
	const char *ref_path = tu_model_path("stories260K.gguf");
	if (!ckpt || !tok || !ref_path)
		skip();
	const char *out = tu_tmp_path("stories260K.gguf");
	struct itt_err err = {0};
	if (convert(ckpt, tok, out, &err) != 0)
		fail_msg("convert: %s", err.msg);

	gguf_t *g = NULL, *ref = NULL;
	assert_int_equal(gguf_open(out, &g, &err), 0);
	assert_int_equal(gguf_open(ref_path, &ref, &err), 0);
	const char *same[] = {
	    "general.architecture",
	    "llama.embedding_length",
	    "llama.feed_forward_length",
	    "llama.block_count",
	    "llama.attention.head_count",
	    "llama.attention.head_count_kv",
	    "llama.rope.dimension_count",
	    "llama.attention.layer_norm_rms_epsilon",
	    "tokenizer.ggml.model",
	    "tokenizer.ggml.tokens",
	    "tokenizer.ggml.scores",
	    "tokenizer.ggml.token_type",
	    "tokenizer.ggml.bos_token_id",
	    "tokenizer.ggml.eos_token_id",
	    "tokenizer.ggml.unknown_token_id",
	};
	for (size_t i = 0; i < sizeof same / sizeof same[0]; i++)
		assert_same_kv(g, ref, same[i]);
	/* where ours differs on purpose: the training context, explicit defaults */
	assert_int_equal(get_u32(g, "llama.context_length"), 512);
	float base;
	assert_int_equal(gguf_get_f32(g, "llama.rope.freq_base", &base, &err), 0);
	assert_true(base == 10000.0f);
	bool asp = false;
	assert_int_equal(gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &asp, &err), 0);
	assert_true(asp);

	/* every reference tensor is bit-identical; output.weight is tied in ours */
	assert_int_equal(gguf_n_tensors(ref), 48);
	assert_int_equal(gguf_n_tensors(g), 47);
	for (uint64_t i = 0; i < gguf_n_tensors(ref); i++) {
		const struct gguf_tensor *r = gguf_tensor_at(ref, i);
		char name[128];
		snprintf(name, sizeof name, "%.*s", (int)r->name.len, r->name.ptr);
		const struct gguf_tensor *t = gguf_find_tensor(g, name);
		if (strcmp(name, "output.weight") == 0) {
			assert_null(t);
			const struct gguf_tensor *e = gguf_find_tensor(g, "token_embd.weight");
			assert_int_equal(e->size, r->size);
			assert_memory_equal(e->data, r->data, r->size);
			continue;
		}
		if (!t)
			fail_msg("tensor %s missing", name);
		assert_int_equal(t->type, r->type);
		assert_int_equal(t->n_dims, r->n_dims);
		for (uint32_t d = 0; d < r->n_dims; d++)
			assert_int_equal(t->ne[d], r->ne[d]);
		assert_int_equal(t->size, r->size);
		if (memcmp(t->data, r->data, r->size) != 0)
			fail_msg("tensor %s differs", name);
	}
	gguf_close(&g);
	gguf_close(&ref);
	unlink(out);
}

static void test_convert_babyllama_keeps_every_float(void **state)
{
	(void)state;
	const char *ckpt = tu_model_path("babyllama-tok105-model5000.bin");
	const char *tok = tu_model_path("tok105.bin");
	if (!ckpt || !tok)
		skip();
	const char *out = tu_tmp_path("baby.gguf");
	struct itt_err err = {0};
	if (convert(ckpt, tok, out, &err) != 0)
		fail_msg("convert: %s", err.msg);
	gguf_t *g = NULL;
	assert_int_equal(gguf_open(out, &g, &err), 0);
	assert_int_equal(get_u32(g, "llama.embedding_length"), 128);
	assert_int_equal(get_u32(g, "llama.feed_forward_length"), 352);
	assert_int_equal(get_u32(g, "llama.block_count"), 5);
	assert_int_equal(get_u32(g, "llama.attention.head_count"), 8);
	assert_int_equal(get_u32(g, "llama.attention.head_count_kv"), 4);
	assert_int_equal(get_u32(g, "llama.rope.dimension_count"), 16);
	assert_int_equal(get_u32(g, "llama.context_length"), 256);
	struct gguf_str toks[105];
	assert_int_equal(gguf_get_str_arr(g, "tokenizer.ggml.tokens", toks, 105, &err), 0);
	assert_true(gguf_str_eq(toks[1], "<s>"));
	assert_true(gguf_str_eq(toks[3], "\xe2\x96\x81"));
	assert_true(gguf_str_eq(toks[4], "e"));

	llama2c_t *m = NULL;
	assert_int_equal(llama2c_open(ckpt, &m, &err), 0);
	const struct llama2c_weights *w = llama2c_get_weights(m);
	const struct gguf_tensor *t = gguf_find_tensor(g, "token_embd.weight");
	assert_memory_equal(t->data, w->token_embedding, 105 * 128 * 4);
	assert_null(gguf_find_tensor(g, "output.weight"));
	t = gguf_find_tensor(g, "blk.4.ffn_up.weight");
	assert_memory_equal(t->data, w->w3 + 4 * 352 * 128, 352 * 128 * 4);
	t = gguf_find_tensor(g, "blk.3.attn_v.weight");
	assert_memory_equal(t->data, w->wv + 3 * 64 * 128, 64 * 128 * 4);
	t = gguf_find_tensor(g, "output_norm.weight");
	assert_memory_equal(t->data, w->rms_final, 128 * 4);
	llama2c_close(&m);
	gguf_close(&g);
	unlink(out);
}

/* ---- the programs ---- */

static void test_convert_tool_output_and_exit_codes(void **state)
{
	(void)state;
	const char *tool = bin_path("itt-convert");
	const char *ckpt = tu_model_path("stories260K.bin");
	const char *tok = tu_model_path("tok512.bin");
	if (!tool || !ckpt || !tok)
		skip();
	const char *out = tu_tmp_path("conv-tool.gguf");
	const char *lib = tu_tmp_path("conv-lib.gguf");
	assert_int_equal(run_prog(tool, false, ckpt, tok, out, "--name", "test", NULL), 0);
	struct itt_err err = {0};
	assert_int_equal(convert(ckpt, tok, lib, &err), 0);
	size_t na, nb;
	void *a = tu_read_file(out, &na), *b = tu_read_file(lib, &nb);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, na);
	free(a);
	free(b);
	unlink(lib);
	unlink(out);
	assert_int_equal(run_prog(tool, true, "--help", NULL), 0);
	assert_int_equal(run_prog(tool, true, ckpt, tok, NULL), 2);
	assert_int_equal(run_prog(tool, true, ckpt, tok, out, "--bogus", NULL), 2);
	assert_int_equal(run_prog(tool, true, ckpt, tok, out, "--name", NULL), 2);
	assert_int_equal(run_prog(tool, true, tok, tok, out, NULL), 1);   /* not a checkpoint */
	assert_int_equal(run_prog(tool, true, ckpt, ckpt, out, NULL), 1); /* not a tokenizer */
	assert_int_equal(run_prog(tool, true, "/nonexistent.bin", tok, out, NULL), 1);
	assert_false(file_exists(out));
}

/* Writes the tiny synthetic model used by the synth and quantize tests. */
static const char *synth_tiny(const char *tool, const char *name, const char *extra)
{
	const char *out = tu_tmp_path(name);
	int rc =
	    run_prog(tool, true, out, "--dim", "64", "--layers", "2", "--heads", "4", "--kv-heads",
	             "2", "--ffn", "96", "--vocab", "300", "--ctx", "128", extra, NULL);
	assert_int_equal(rc, 0);
	return out;
}

static void test_synth_tiny_model_reads_back(void **state)
{
	(void)state;
	const char *tool = bin_path("itt-synth");
	if (!tool)
		skip();
	const char *path = synth_tiny(tool, "synth.gguf", NULL);
	gguf_t *g = NULL;
	struct itt_err err = {0};
	if (gguf_open(path, &g, &err) != 0)
		fail_msg("%s", err.msg);
	assert_int_equal(get_u32(g, "llama.embedding_length"), 64);
	assert_int_equal(get_u32(g, "llama.block_count"), 2);
	assert_int_equal(get_u32(g, "llama.attention.head_count"), 4);
	assert_int_equal(get_u32(g, "llama.attention.head_count_kv"), 2);
	assert_int_equal(get_u32(g, "llama.feed_forward_length"), 96);
	assert_int_equal(get_u32(g, "llama.context_length"), 128);
	assert_int_equal(get_u32(g, "llama.rope.dimension_count"), 16);
	assert_int_equal(gguf_n_tensors(g), 3 + 2 * 9);

	/* vocabulary: specials, bytes, then distinct normal pieces */
	struct gguf_str toks[300];
	assert_int_equal(gguf_get_str_arr(g, "tokenizer.ggml.tokens", toks, 300, &err), 0);
	uint32_t et;
	uint64_t n;
	const void *types, *scores;
	assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &n, &types, &err), 0);
	assert_int_equal(n, 300);
	assert_int_equal(gguf_get_arr(g, "tokenizer.ggml.scores", &et, &n, &scores, &err), 0);
	assert_true(gguf_str_eq(toks[0], "<unk>"));
	assert_true(gguf_str_eq(toks[2], "</s>"));
	assert_true(gguf_str_eq(toks[3 + 0x41], "<0x41>"));
	assert_true(gguf_str_eq(toks[259], "\xe2\x96\x81"));
	for (int i = 0; i < 300; i++) {
		int32_t ty;
		memcpy(&ty, (const char *)types + 4 * i, 4);
		int32_t want = i == 0    ? TOKENIZER_TYPE_UNKNOWN
		               : i < 3   ? TOKENIZER_TYPE_CONTROL
		               : i < 259 ? TOKENIZER_TYPE_BYTE
		                         : TOKENIZER_TYPE_NORMAL;
		assert_int_equal(ty, want);
		for (int j = 0; j < i; j++)
			if (toks[i].len == toks[j].len &&
			    memcmp(toks[i].ptr, toks[j].ptr, toks[i].len) == 0)
				fail_msg("tokens %d and %d are equal", i, j);
	}
	/* a tokenizer can be built from it; text made of its characters survives */
	tokenizer_t *tk = NULL;
	if (tokenizer_new(g, &tk, &err) != 0)
		fail_msg("tokenizer_new: %s", err.msg);
	const char *text = "Hello, World! {~}";
	int32_t ids[64];
	size_t n_ids;
	assert_int_equal(tokenizer_encode(tk, text, strlen(text), true, ids, 64, &n_ids, &err), 0);
	char dec[128];
	size_t dn = 0;
	for (size_t i = 1; i < n_ids; i++) {
		assert_true(ids[i] > 2 && ids[i] < 300);
		int k = tokenizer_decode_piece(tk, ids[i - 1], ids[i], dec + dn, sizeof dec - dn);
		assert_true(k >= 0);
		dn += (size_t)k;
	}
	assert_int_equal(dn, strlen(text));
	assert_memory_equal(dec, text, dn);
	tokenizer_destroy(&tk);

	/* weights: norms 1, the embedding has a standard deviation near 0.02 */
	const struct gguf_tensor *t = gguf_find_tensor(g, "blk.1.ffn_norm.weight");
	assert_non_null(t);
	for (int i = 0; i < 64; i++) {
		float x;
		memcpy(&x, (const char *)t->data + 4 * i, 4);
		assert_true(x == 1.0f);
	}
	t = gguf_find_tensor(g, "token_embd.weight");
	double s2 = 0;
	for (size_t i = 0; i < 64 * 300; i++) {
		float x;
		memcpy(&x, (const char *)t->data + 4 * i, 4);
		assert_true(isfinite(x));
		s2 += (double)x * x;
	}
	double sd = sqrt(s2 / (64 * 300));
	assert_true(sd > 0.018 && sd < 0.022);
	assert_non_null(gguf_find_tensor(g, "output.weight"));
	gguf_close(&g);

	/* deterministic; the seed matters; --tied drops output.weight */
	const char *again = synth_tiny(tool, "synth-again.gguf", NULL);
	size_t na, nb;
	void *a = tu_read_file(path, &na), *b = tu_read_file(again, &nb);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, na);
	free(b);
	unlink(again);
	const char *tied = synth_tiny(tool, "synth-tied.gguf", "--tied");
	assert_int_equal(gguf_open(tied, &g, &err), 0);
	assert_null(gguf_find_tensor(g, "output.weight"));
	assert_int_equal(gguf_n_tensors(g), 2 + 2 * 9);
	gguf_close(&g);
	unlink(tied);
	const char *seeded = tu_tmp_path("synth-seed.gguf");
	assert_int_equal(run_prog(tool, true, seeded, "--dim", "64", "--layers", "2", "--heads",
	                          "4", "--kv-heads", "2", "--ffn", "96", "--vocab", "300", "--ctx",
	                          "128", "--seed", "2", NULL),
	                 0);
	b = tu_read_file(seeded, &nb);
	assert_int_equal(na, nb);
	assert_true(memcmp(a, b, na) != 0);
	free(a);
	free(b);
	unlink(seeded);
	unlink(path);
}

static void test_synth_rejects_bad_arguments(void **state)
{
	(void)state;
	const char *tool = bin_path("itt-synth");
	if (!tool)
		skip();
	const char *out = tu_tmp_path("synth-bad.gguf");
	assert_int_equal(run_prog(tool, true, "--help", NULL), 0);
	assert_int_equal(run_prog(tool, true, NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--dim", "65", "--heads", "4", NULL), 2);
	assert_int_equal(
	    run_prog(tool, true, out, "--dim", "64", "--heads", "4", "--kv-heads", "3", NULL), 2);
	assert_int_equal(
	    run_prog(tool, true, out, "--dim", "60", "--heads", "4", "--kv-heads", "4", NULL),
	    2); /* head_dim 15 */
	assert_int_equal(run_prog(tool, true, out, "--dim", "0", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--layers", "-1", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--vocab", "10", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--vocab", "99999999999", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--dim", "abc", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--ffn", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--seed", "-3", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--frobnicate", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--arch", "gemma2", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, "--rope-scale", "-1", NULL), 2);
	assert_int_equal(run_prog(tool, true, out, out, NULL), 2);
	/* well-formed but too large to write */
	assert_int_equal(run_prog(tool, true, out, "--dim", "65536", "--heads", "64", "--kv-heads",
	                          "64", "--vocab", "4000000", NULL),
	                 1);
	assert_false(file_exists(out));
}

/* --vocab-from copies every tokenizer.* key and sizes the model to it;
 * --chat-template sets (or replaces) tokenizer.chat_template; a file that
 * is not a GGUF, or holds no vocabulary, is refused without an output. */
static void test_synth_vocab_from_another_file(void **state)
{
	(void)state;
	const char *tool = bin_path("itt-synth");
	if (!tool)
		skip();
	char *src = strdup(tu_tmp_path("synth-vsrc.gguf"));
	char *out = strdup(tu_tmp_path("synth-vfrom.gguf"));
	char *tmpl = strdup(tu_tmp_path("synth-vfrom.jinja"));
	char *bare = strdup(tu_tmp_path("synth-vbare.gguf"));
	char *junk = strdup(tu_tmp_path("synth-vjunk.gguf"));
	assert_non_null(src);
	assert_non_null(out);
	assert_non_null(tmpl);
	assert_non_null(bare);
	assert_non_null(junk);
	struct itt_err err = {0};

	/* the source gets a template; the copy takes the vocabulary's size, not --vocab */
	assert_int_equal(run_prog(tool, true, src, "--dim", "64", "--layers", "2", "--heads", "4",
	                          "--kv-heads", "2", "--ffn", "96", "--vocab", "300", "--ctx",
	                          "128", "--chat-template", "{{ old }}", NULL),
	                 0);
	assert_int_equal(run_prog(tool, true, out, "--dim", "32", "--layers", "1", "--heads", "2",
	                          "--kv-heads", "1", "--ffn", "48", "--vocab", "1000", "--arch",
	                          "qwen2", "--vocab-from", src, NULL),
	                 0);
	gguf_t *a = NULL, *b = NULL;
	assert_int_equal(gguf_open(src, &a, &err), 0);
	assert_int_equal(gguf_open(out, &b, &err), 0);
	uint64_t n_tok = 0;
	for (uint64_t i = 0; i < gguf_n_kv(a); i++) {
		const struct gguf_kv *kv = gguf_kv_at(a, i);
		char key[128];
		if (kv->key.len < 10 || memcmp(kv->key.ptr, "tokenizer.", 10) != 0)
			continue;
		assert_true(kv->key.len < sizeof key);
		memcpy(key, kv->key.ptr, kv->key.len);
		key[kv->key.len] = 0;
		assert_same_kv(a, b, key);
		n_tok++;
	}
	assert_true(n_tok >= 5); /* model, tokens, scores, token_type, ids... */
	const struct gguf_tensor *t = gguf_find_tensor(b, "token_embd.weight");
	assert_non_null(t);
	assert_int_equal(t->ne[0], 32);
	assert_int_equal(t->ne[1], 300);
	assert_int_equal(get_u32(b, "qwen2.embedding_length"), 32);
	gguf_close(&b);

	/* a template from a file replaces the copied one */
	const char *jinja = "{% for m in messages %}{{ m.content }}{% endfor %}";
	assert_int_equal(tu_write_file(tmpl, jinja, strlen(jinja)), 0);
	assert_int_equal(run_prog(tool, true, out, "--dim", "32", "--layers", "1", "--heads", "2",
	                          "--kv-heads", "1", "--ffn", "48", "--vocab-from", src,
	                          "--chat-template-from", tmpl, NULL),
	                 0);
	assert_int_equal(gguf_open(out, &b, &err), 0);
	struct gguf_str ct;
	assert_int_equal(gguf_get_str(b, "tokenizer.chat_template", &ct, &err), 0);
	assert_int_equal(ct.len, strlen(jinja));
	assert_memory_equal(ct.ptr, jinja, ct.len);
	gguf_close(&b);
	unlink(out);

	/* refusals: no output is written */
	gguf_writer_t *w = NULL;
	assert_int_equal(gguf_writer_new(&w, &err), 0);
	assert_int_equal(gguf_writer_add_str(w, "general.architecture", "llama", &err), 0);
	assert_int_equal(gguf_writer_write(w, bare, false, &err), 0);
	gguf_writer_destroy(&w);
	/* no tokenizer keys */
	assert_int_equal(run_prog(tool, true, out, "--vocab-from", bare, NULL), 1);
	uint32_t ids[3] = {1, 2, 3};
	assert_int_equal(gguf_writer_new(&w, &err), 0);
	assert_int_equal(gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2", &err), 0);
	assert_int_equal(
	    gguf_writer_add_arr(w, "tokenizer.ggml.tokens", GGUF_TYPE_UINT32, ids, 3, &err), 0);
	assert_int_equal(gguf_writer_write(w, bare, false, &err), 0);
	gguf_writer_destroy(&w);
	/* tokens that are not strings */
	assert_int_equal(run_prog(tool, true, out, "--vocab-from", bare, NULL), 1);
	assert_int_equal(tu_write_file(junk, "GGUF\3\0\0\0garbage", 15), 0);
	assert_int_equal(run_prog(tool, true, out, "--vocab-from", junk, NULL), 1);
	assert_int_equal(run_prog(tool, true, out, "--vocab-from", tmpl, NULL), 1); /* text */
	assert_int_equal(run_prog(tool, true, out, "--vocab-from", "/nonexistent.gguf", NULL), 1);
	assert_int_equal(run_prog(tool, true, out, "--vocab-from", NULL), 2);
	assert_int_equal(
	    run_prog(tool, true, out, "--chat-template-from", "/nonexistent.jinja", NULL), 1);
	assert_int_equal(
	    run_prog(tool, true, out, "--chat-template", "x", "--chat-template-from", tmpl, NULL),
	    2);
	assert_false(file_exists(out));

	gguf_close(&a);
	unlink(src);
	unlink(tmpl);
	unlink(bare);
	unlink(junk);
	free(src);
	free(out);
	free(tmpl);
	free(bare);
	free(junk);
}

/* Largest |x - y| over a block of 32 against the block's largest |x|. */
static void check_block_error(uint32_t type, const float *x, const float *y, size_t n)
{
	for (size_t b = 0; b < n; b += 32) {
		float amax = 0, emax = 0;
		for (size_t i = b; i < b + 32 && i < n; i++) {
			amax = fmaxf(amax, fabsf(x[i]));
			emax = fmaxf(emax, fabsf(x[i] - y[i]));
			if (type == GGML_TYPE_F16 &&
			    fabsf(x[i] - y[i]) > fabsf(x[i]) * 0x1p-11f + 1e-7f)
				fail_msg("f16 element %zu: %g -> %g", i, x[i], y[i]);
		}
		/* a half step of the scale, plus the fp16 rounding of the scale */
		float bound = type == GGML_TYPE_Q8_0   ? amax / 127.0f * 0.51f + amax * 2e-3f
		              : type == GGML_TYPE_Q4_0 ? amax / 8.0f * 1.01f + amax * 2e-3f
		                                       : amax * 0x1p-11f + 1e-7f;
		if (emax > bound)
			fail_msg("%s block at %zu: error %g > %g (amax %g)", ggml_type_name(type),
			         b, emax, bound, amax);
	}
}

static void test_quantize_each_type(void **state)
{
	(void)state;
	const char *synth = bin_path("itt-synth");
	const char *quant = bin_path("itt-quantize");
	if (!synth || !quant)
		skip();
	const char *src = synth_tiny(synth, "quant-src.gguf", NULL);
	struct itt_err err = {0};
	gguf_t *f = NULL;
	assert_int_equal(gguf_open(src, &f, &err), 0);
	const struct {
		const char *arg;
		uint32_t type, ftype;
	} types[] = {
	    {"f16", GGML_TYPE_F16, 1}, {"q8_0", GGML_TYPE_Q8_0, 7}, {"q4_0", GGML_TYPE_Q4_0, 2}};
	float *row = malloc(300 * 96 * sizeof(float));
	for (size_t k = 0; k < 3; k++) {
		const char *out = tu_tmp_path("quant-out.gguf");
		/* --pure: every matrix in the type (no Q6_K output as in the mixes) */
		assert_int_equal(run_prog(quant, true, src, out, types[k].arg, "--pure", NULL), 0);
		gguf_t *q = NULL;
		if (gguf_open(out, &q, &err) != 0)
			fail_msg("%s: %s", types[k].arg, err.msg);
		assert_int_equal(get_u32(q, "general.file_type"), types[k].ftype);
		/* general.quantization_version (2, as llama.cpp) is added */
		assert_int_equal(get_u32(q, "general.quantization_version"), 2);
		assert_int_equal(gguf_n_kv(q),
		                 gguf_n_kv(f) + !gguf_find_kv(f, "general.quantization_version"));
		assert_same_kv(q, f, "tokenizer.ggml.tokens");
		assert_same_kv(q, f, "llama.embedding_length");
		assert_int_equal(gguf_n_tensors(q), gguf_n_tensors(f));
		for (uint64_t i = 0; i < gguf_n_tensors(f); i++) {
			const struct gguf_tensor *a = gguf_tensor_at(f, i);
			const struct gguf_tensor *b = gguf_tensor_at(q, i);
			assert_true(a->name.len == b->name.len &&
			            memcmp(a->name.ptr, b->name.ptr, a->name.len) == 0);
			assert_int_equal(a->n_dims, b->n_dims);
			assert_int_equal(a->ne[0], b->ne[0]);
			assert_int_equal(a->ne[1], b->ne[1]);
			if (a->n_dims == 1) {
				assert_int_equal(b->type, GGML_TYPE_F32);
				assert_memory_equal(a->data, b->data, a->size);
				continue;
			}
			assert_int_equal(b->type, types[k].type);
			size_t cols = (size_t)a->ne[0], rows = (size_t)a->ne[1];
			size_t rb = quant_row_bytes(b->type, cols);
			assert_int_equal(b->size, rb * rows);
			float *x = malloc(cols * rows * sizeof(float));
			memcpy(x, a->data, cols * rows * sizeof(float));
			for (size_t r = 0; r < rows; r++)
				assert_int_equal(quant_dequant_row(b->type,
				                                   (const char *)b->data + r * rb,
				                                   row + r * cols, cols),
				                 0);
			check_block_error(b->type, x, row, cols * rows);
			free(x);
		}
		gguf_close(&q);
		/* a quantised file has nothing left to convert; F16 matrices are
		 * converted again */
		const char *again = tu_tmp_path("quant-again.gguf");
		int f16 = types[k].type == GGML_TYPE_F16;
		assert_int_equal(run_prog(quant, true, out, again, "q4_0", NULL), f16 ? 0 : 1);
		assert_int_equal(file_exists(again), f16);
		unlink(again);
		unlink(out);
	}
	free(row);
	gguf_close(&f);
	const char *out = tu_tmp_path("quant-bad.gguf");
	assert_int_equal(run_prog(quant, true, src, out, "q7_0", NULL), 2);
	assert_int_equal(run_prog(quant, true, src, out, NULL), 2);
	assert_int_equal(run_prog(quant, true, "--help", NULL), 0);
	assert_int_equal(run_prog(quant, true, "/nonexistent.gguf", out, "f16", NULL), 1);
	assert_false(file_exists(out));
	unlink(src);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_writer_round_trip_every_kv_type),
	    cmocka_unit_test(test_writer_rejects_bad_input),
	    cmocka_unit_test(test_llama2c_layout_of_a_separate_classifier),
	    cmocka_unit_test(test_llama2c_rejects_bad_headers),
	    cmocka_unit_test(test_llama2c_rejects_truncated_and_garbage_files),
	    cmocka_unit_test(test_llama2c_vocab_conversion),
	    cmocka_unit_test(test_convert_stories260k_matches_reference_gguf),
	    cmocka_unit_test(test_convert_babyllama_keeps_every_float),
	    cmocka_unit_test(test_convert_tool_output_and_exit_codes),
	    cmocka_unit_test(test_synth_tiny_model_reads_back),
	    cmocka_unit_test(test_synth_rejects_bad_arguments),
	    cmocka_unit_test(test_synth_vocab_from_another_file),
	    cmocka_unit_test(test_quantize_each_type),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
