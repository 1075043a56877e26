/* test-forward: properties of the forward pass that need no reference
 * implementation: a batch of rows from several sequences gives the same
 * logits as running each sequence one token at a time; layers [0,k) then
 * [k,n) on two model instances equal the whole model; bad batches and a
 * full KV cache are refused without changing any sequence. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "testutil.h"

#define N_SEQ 8

static const uint32_t seq_len[N_SEQ] = {3, 17, 1, 33, 8, 5, 12, 20};

static struct engine *open_model(const char *path, uint32_t first, uint32_t last, int threads,
				 uint32_t max_rows, size_t kv_bytes)
{
	struct engine_config c;
	struct itt_err err = {0};
	struct engine *e = NULL;
	engine_config_default(&c);
	c.path = path;
	c.first = first;
	c.last = last;
	c.n_threads = threads;
	c.max_rows = max_rows;
	if (kv_bytes)
		c.kv_bytes = kv_bytes;
	if (engine_open(&c, &e, &err) < 0)
		fail_msg("engine_open(%s): %s", path, err.msg);
	return e;
}

static int32_t token_of(uint32_t s, uint32_t i, uint32_t vocab)
{
	return (int32_t)(1 + (s * 131 + i * 29 + s * i * 7) % (vocab - 1));
}

/* Max |a-b| over a row, relative to the row's max |b|. */
static double row_rel_diff(const float *a, const float *b, size_t n)
{
	double d = 0, mx = 0;
	for (size_t i = 0; i < n; i++) {
		d = fmax(d, fabs((double)a[i] - b[i]));
		mx = fmax(mx, fabs((double)b[i]));
	}
	return mx > 0 ? d / mx : d;
}

/* logits[s][i] of every position, one token per forward call. */
static float *run_single(struct engine *e, uint32_t V)
{
	size_t total = 0;
	for (int s = 0; s < N_SEQ; s++)
		total += seq_len[s];
	float *out = malloc(total * V * sizeof(float));
	size_t row = 0;
	struct itt_err err = {0};
	for (uint32_t s = 0; s < N_SEQ; s++) {
		struct kv_seq seq, *sp = &seq;
		kv_seq_init(&seq);
		for (uint32_t i = 0; i < seq_len[s]; i++, row++) {
			int32_t t = token_of(s, i, V);
			struct forward_batch b = {1, &t, NULL, &i, &sp, NULL};
			assert_int_equal(forward_run(&e->fwd, &b, out + row * V, &err), 0);
		}
		kv_seq_free(&e->kv, &seq);
	}
	return out;
}

static void check_batched_equals_single(const char *path, int threads)
{
	struct engine *e = open_model(path, 0, 0, threads, 128, 0);
	uint32_t V = e->model->hp.vocab;
	float *single = run_single(e, V);

	/* All sequences in steps that mix prefill chunks and decode rows: each
	 * step takes up to 5 next tokens of every unfinished sequence,
	 * interleaved round-robin. */
	struct kv_seq seqs[N_SEQ];
	uint32_t next[N_SEQ] = {0};
	size_t base[N_SEQ], acc = 0;
	for (int s = 0; s < N_SEQ; s++) {
		kv_seq_init(&seqs[s]);
		base[s] = acc;
		acc += seq_len[s];
	}
	float *batched = malloc(acc * V * sizeof(float));
	float *out = malloc(128 * (size_t)V * sizeof(float));
	for (;;) {
		int32_t tok[128];
		uint32_t pos[128];
		struct kv_seq *sp[128];
		size_t dst[128];
		uint32_t n = 0;
		for (uint32_t k = 0; k < 5; k++)
			for (uint32_t s = 0; s < N_SEQ; s++) {
				uint32_t i = next[s] + k;
				if (i >= seq_len[s])
					continue;
				/* keep each sequence's rows in order: a later k of s
				 * always comes after an earlier one */
				tok[n] = token_of(s, i, V);
				pos[n] = i;
				sp[n] = &seqs[s];
				dst[n] = base[s] + i;
				n++;
			}
		if (n == 0)
			break;
		struct itt_err err = {0};
		struct forward_batch b = {n, tok, NULL, pos, sp, NULL};
		assert_int_equal(forward_run(&e->fwd, &b, out, &err), 0);
		for (uint32_t r = 0; r < n; r++)
			memcpy(batched + dst[r] * V, out + (size_t)r * V, V * sizeof(float));
		for (uint32_t s = 0; s < N_SEQ; s++)
			next[s] = next[s] + 5 < seq_len[s] ? next[s] + 5 : seq_len[s];
	}
	double worst = 0;
	for (size_t r = 0; r < acc; r++)
		worst = fmax(worst, row_rel_diff(batched + r * V, single + r * V, V));
	print_message("batched vs single (%d threads): max relative difference %.3g\n", threads,
		      worst);
	assert_true(worst < 1e-5);
	for (int s = 0; s < N_SEQ; s++)
		kv_seq_free(&e->kv, &seqs[s]);
	assert_int_equal(e->kv.n_free, e->kv.n_blocks);
	free(out);
	free(batched);
	free(single);
	engine_close(&e);
}

static void batched_equals_single_stories260k(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	check_batched_equals_single(path, 1);
	check_batched_equals_single(path, 2);
}

/* Runs tokens through [0,k) and [k,n) and compares with the whole model. */
static void layer_split_equals_whole(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *whole = open_model(path, 0, 0, 1, 64, 0);
	uint32_t V = whole->model->hp.vocab, D = whole->model->hp.dim, L = whole->model->hp.n_layers;
	enum { N = 23 };
	int32_t tok[N];
	uint32_t pos[N];
	struct kv_seq sw, *swp[N];
	kv_seq_init(&sw);
	for (uint32_t i = 0; i < N; i++) {
		tok[i] = token_of(3, i, V);
		pos[i] = i;
		swp[i] = &sw;
	}
	float *ref = malloc((size_t)N * V * sizeof(float));
	struct itt_err err = {0};
	struct forward_batch b = {N, tok, NULL, pos, swp, NULL};
	assert_int_equal(forward_run(&whole->fwd, &b, ref, &err), 0);

	for (uint32_t k = 1; k < L; k++) {
		struct engine *a = open_model(path, 0, k, 1, 64, 0);
		struct engine *c = open_model(path, k, L, 1, 64, 0);
		assert_null(a->model->output.data);
		assert_null(c->model->tok_embd.data);
		float *hidden = malloc((size_t)N * D * sizeof(float));
		float *logits = malloc((size_t)N * V * sizeof(float));
		struct kv_seq s1, s2, *p1[N], *p2[N];
		kv_seq_init(&s1);
		kv_seq_init(&s2);
		for (int i = 0; i < N; i++) {
			p1[i] = &s1;
			p2[i] = &s2;
		}
		/* Same batch shape as the whole run: bit-identical. */
		struct forward_batch b1 = {N, tok, NULL, pos, p1, NULL};
		assert_int_equal(forward_run(&a->fwd, &b1, hidden, &err), 0);
		struct forward_batch b2 = {N, NULL, hidden, pos, p2, NULL};
		assert_int_equal(forward_run(&c->fwd, &b2, logits, &err), 0);
		for (int i = 0; i < N; i++)
			assert_memory_equal(logits + (size_t)i * V, ref + (size_t)i * V,
					    V * sizeof(float));
		/* The first stage in two steps (stages need not step in
		 * lockstep): equal within rounding of the other batch shape. */
		kv_seq_truncate(&a->kv, &s1, 0);
		kv_seq_truncate(&c->kv, &s2, 0);
		struct forward_batch c1 = {10, tok, NULL, pos, p1, NULL};
		assert_int_equal(forward_run(&a->fwd, &c1, hidden, &err), 0);
		struct forward_batch c1b = {N - 10, tok + 10, NULL, pos + 10, p1, NULL};
		assert_int_equal(forward_run(&a->fwd, &c1b, hidden + 10 * D, &err), 0);
		assert_int_equal(forward_run(&c->fwd, &b2, logits, &err), 0);
		for (int i = 0; i < N; i++)
			assert_true(row_rel_diff(logits + (size_t)i * V, ref + (size_t)i * V, V) <
				    1e-5);
		kv_seq_free(&a->kv, &s1);
		kv_seq_free(&c->kv, &s2);
		free(hidden);
		free(logits);
		engine_close(&a);
		engine_close(&c);
	}
	kv_seq_free(&whole->kv, &sw);
	free(ref);
	engine_close(&whole);
}

static void bad_batches_are_refused(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *e = open_model(path, 0, 0, 1, 8, 0);
	uint32_t V = e->model->hp.vocab;
	float *out = malloc(8 * (size_t)V * sizeof(float));
	struct kv_seq s, *sp[8];
	kv_seq_init(&s);
	for (int i = 0; i < 8; i++)
		sp[i] = &s;
	struct itt_err err = {0};
	int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
	uint32_t pos[8] = {0, 1, 2, 3, 4, 5, 6, 7};

	struct forward_batch b = {9, tok, NULL, pos, sp, NULL};
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID); /* > max_rows */
	b.n_rows = 0;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	int32_t bad_tok[2] = {1, (int32_t)V};
	struct forward_batch bt = {2, bad_tok, NULL, pos, sp, NULL};
	assert_int_equal(forward_run(&e->fwd, &bt, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "token"));
	bad_tok[1] = -1;
	assert_int_equal(forward_run(&e->fwd, &bt, out, &err), ITT_E_INVALID);
	uint32_t gap[2] = {0, 2};
	struct forward_batch bg = {2, tok, NULL, gap, sp, NULL};
	assert_int_equal(forward_run(&e->fwd, &bg, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "continues at 1"));
	uint32_t far[1] = {e->model->hp.ctx_len};
	struct forward_batch bf = {1, tok, NULL, far, sp, NULL};
	assert_int_equal(forward_run(&e->fwd, &bf, out, &err), ITT_E_RANGE);
	assert_int_equal(s.n_pos, 0);
	assert_int_equal(e->kv.n_free, e->kv.n_blocks);
	/* a good batch still works afterwards */
	struct forward_batch ok = {8, tok, NULL, pos, sp, NULL};
	assert_int_equal(forward_run(&e->fwd, &ok, out, &err), 0);
	assert_int_equal(s.n_pos, 8);
	kv_seq_free(&e->kv, &s);
	free(out);
	engine_close(&e);
}

static void full_kv_cache_is_refused_and_rolled_back(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	/* Room for exactly 2 blocks of 16 positions. */
	struct engine *probe = open_model(path, 0, 0, 1, 64, 1);
	size_t bb = kv_cache_block_bytes(probe->kv.n_layers, probe->kv.kv_dim, probe->kv.block_size);
	engine_close(&probe);
	struct engine *e = open_model(path, 0, 0, 1, 64, 2 * bb);
	assert_int_equal(e->kv.n_blocks, 2);
	uint32_t V = e->model->hp.vocab;
	float *out = malloc(64 * (size_t)V * sizeof(float));
	struct kv_seq a, b, *pa[64], *pb[64];
	kv_seq_init(&a);
	kv_seq_init(&b);
	int32_t tok[64];
	uint32_t pos[64];
	for (int i = 0; i < 64; i++) {
		pa[i] = &a;
		pb[i] = &b;
		tok[i] = 5 + i;
		pos[i] = (uint32_t)i;
	}
	struct itt_err err = {0};
	struct forward_batch ba = {20, tok, NULL, pos, pa, NULL};
	assert_int_equal(forward_run(&e->fwd, &ba, out, &err), 0); /* 2 blocks */
	struct forward_batch bb2 = {1, tok, NULL, pos, pb, NULL};
	assert_int_equal(forward_run(&e->fwd, &bb2, out, &err), ITT_E_FULL);
	assert_int_equal(b.n_pos, 0);
	struct forward_batch ba2 = {13, tok + 20, NULL, pos + 20, pa, NULL};
	assert_int_equal(forward_run(&e->fwd, &ba2, out, &err), ITT_E_FULL);
	assert_int_equal(a.n_pos, 20);
	kv_seq_free(&e->kv, &a);
	assert_int_equal(forward_run(&e->fwd, &bb2, out, &err), 0);
	kv_seq_free(&e->kv, &b);
	free(out);
	engine_close(&e);
}

static void layer_range_is_validated(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct model *m = NULL;
	struct itt_err err = {0};
	assert_int_equal(model_open(path, 3, 3, &m, &err), ITT_E_RANGE);
	assert_int_equal(model_open(path, 0, 6, &m, &err), ITT_E_RANGE);
	assert_int_equal(model_open(path, 4, 2, &m, &err), ITT_E_RANGE);
	assert_null(m);
	assert_int_equal(model_open(path, 2, 4, &m, &err), 0);
	assert_int_equal(m->hp.dim, 64);
	assert_int_equal(m->hp.n_kv_heads, 4);
	assert_int_equal(m->hp.head_dim, 8);
	assert_int_equal(m->hp.ffn_dim, 172);
	assert_int_equal(m->hp.vocab, 512);
	assert_true(m->hp.rope_base == 10000.0f);
	assert_null(m->tok_embd.data);
	assert_null(m->output.data);
	model_close(&m);
	assert_int_equal(model_open("/nonexistent/model.gguf", 0, 0, &m, &err), ITT_E_IO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(batched_equals_single_stories260k),
		cmocka_unit_test(layer_split_equals_whole),
		cmocka_unit_test(bad_batches_are_refused),
		cmocka_unit_test(full_kv_cache_is_refused_and_rolled_back),
		cmocka_unit_test(layer_range_is_validated),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
