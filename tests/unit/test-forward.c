/* test-forward: properties of the forward pass that need no reference
 * implementation: a batch of rows from several sequences gives the same
 * logits as running each sequence one token at a time; layers [0,k) then
 * [k,n) on two model instances equal the whole model; bad batches and a
 * full KV cache are refused without changing any sequence.  The techniques:
 * a neutral perturbation (blend 0, empty mask) and an early exit that never
 * fires are the plain pass bit for bit; an exit with threshold 0 after
 * layer k is the stop_layer k+1 draft pass; bad technique fields are
 * refused.  Architecture variants: the layer split on a qwen2 model with
 * every variant (itt-synth), and unsupported ones refused by name. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "gguf-write.h"
#include "testutil.h"

#define N_SEQ 8

static const uint32_t seq_len[N_SEQ] = {3, 17, 1, 33, 8, 5, 12, 20};

static struct engine *open_model_kv(const char *path, uint32_t first, uint32_t last, int threads,
                                    uint32_t max_rows, size_t kv_bytes, enum kv_type kv_type,
                                    uint32_t kv_block)
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
	c.kv_type = kv_type;
	if (kv_block)
		c.kv_block = kv_block;
	if (engine_open(&c, &e, &err) < 0)
		fail_msg("engine_open(%s): %s", path, err.msg);
	return e;
}

static struct engine *open_model(const char *path, uint32_t first, uint32_t last, int threads,
                                 uint32_t max_rows, size_t kv_bytes)
{
	return open_model_kv(path, first, last, threads, max_rows, kv_bytes, KV_TYPE_F32, 0);
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
			struct forward_batch b = {.n_rows = 1, .tokens = &t, .hidden = NULL, .pos = &i, .seqs = &sp, .want_logits = NULL};
			assert_int_equal(forward_run(&e->fwd, &b, out + row * V, &err), 0);
		}
		kv_seq_free(&e->kv, &seq);
	}
	return out;
}

/* logits[s][i] of every position, all sequences in mixed steps: each step
 * takes up to 5 next tokens of every unfinished sequence, interleaved
 * round-robin (prefill chunks and decode rows together). */
static float *run_batched(struct engine *e, uint32_t V)
{
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
				tok[n] = token_of(s, i, V);
				pos[n] = i;
				sp[n] = &seqs[s];
				dst[n] = base[s] + i;
				n++;
			}
		if (n == 0)
			break;
		struct itt_err err = {0};
		struct forward_batch b = {.n_rows = n, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = sp, .want_logits = NULL};
		assert_int_equal(forward_run(&e->fwd, &b, out, &err), 0);
		for (uint32_t r = 0; r < n; r++)
			memcpy(batched + dst[r] * V, out + (size_t)r * V, V * sizeof(float));
		for (uint32_t s = 0; s < N_SEQ; s++)
			next[s] = next[s] + 5 < seq_len[s] ? next[s] + 5 : seq_len[s];
	}
	for (int s = 0; s < N_SEQ; s++)
		kv_seq_free(&e->kv, &seqs[s]);
	assert_int_equal(e->kv.n_free, e->kv.n_blocks);
	free(out);
	return batched;
}

static size_t total_rows(void)
{
	size_t acc = 0;
	for (int s = 0; s < N_SEQ; s++)
		acc += seq_len[s];
	return acc;
}

/* Worst row_rel_diff over every row of two logits sets. */
static double worst_rel_diff(const float *a, const float *b, size_t rows, uint32_t V)
{
	double worst = 0;
	for (size_t r = 0; r < rows; r++)
		worst = fmax(worst, row_rel_diff(a + r * V, b + r * V, V));
	return worst;
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
		struct forward_batch b = {.n_rows = n, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = sp, .want_logits = NULL};
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
static void check_layer_split(const char *path)
{
	struct engine *whole = open_model(path, 0, 0, 1, 64, 0);
	uint32_t V = whole->model->hp.vocab, D = whole->model->hp.dim,
	         L = whole->model->hp.n_layers;
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
	struct forward_batch b = {.n_rows = N, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = swp, .want_logits = NULL};
	assert_int_equal(forward_run(&whole->fwd, &b, ref, &err), 0);

	for (uint32_t k = 1; k < L; k++) {
		struct engine *a = open_model(path, 0, k, 1, 64, 0);
		struct engine *c = open_model(path, k, L, 1, 64, 0);
		assert_null(a->model->output.data);
		assert_null(c->model->tok_embd.data);
		/* every stage ropes with the file's frequency factors and
		 * holds its own layers' biases */
		assert_true(!a->model->rope_freqs == !whole->model->rope_freqs);
		assert_true(!c->model->rope_freqs == !whole->model->rope_freqs);
		assert_true(!a->model->layers[0].bq == !whole->model->layers[0].bq);
		assert_true(!c->model->layers[0].bk == !whole->model->layers[k].bk);
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
		struct forward_batch b1 = {.n_rows = N, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = p1, .want_logits = NULL};
		assert_int_equal(forward_run(&a->fwd, &b1, hidden, &err), 0);
		struct forward_batch b2 = {.n_rows = N, .tokens = NULL, .hidden = hidden, .pos = pos, .seqs = p2, .want_logits = NULL};
		assert_int_equal(forward_run(&c->fwd, &b2, logits, &err), 0);
		for (int i = 0; i < N; i++)
			assert_memory_equal(logits + (size_t)i * V, ref + (size_t)i * V,
			                    V * sizeof(float));
		/* The first stage in two steps (stages need not step in
		 * lockstep): equal within rounding of the other batch shape. */
		kv_seq_truncate(&a->kv, &s1, 0);
		kv_seq_truncate(&c->kv, &s2, 0);
		struct forward_batch c1 = {.n_rows = 10, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = p1, .want_logits = NULL};
		assert_int_equal(forward_run(&a->fwd, &c1, hidden, &err), 0);
		struct forward_batch c1b = {.n_rows = N - 10, .tokens = tok + 10, .hidden = NULL, .pos = pos + 10, .seqs = p1, .want_logits = NULL};
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

static void layer_split_equals_whole(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	check_layer_split(path);
}

/* Writes a synthetic model with itt-synth (ITT_BIN_DIR) and extra flags;
 * NULL when the tool is not there. */
static const char *synth_model(const char *name, const char *flags)
{
	static char out[4][4096];
	static int next;
	const char *dir = getenv("ITT_BIN_DIR");
	char cmd[8192];
	if (!dir || !*dir) {
		fprintf(stderr, "SKIP: ITT_BIN_DIR is not set; itt-synth is needed\n");
		return NULL;
	}
	char *path = out[next++ % 4];
	snprintf(path, sizeof out[0], "%s", tu_tmp_path(name));
	snprintf(cmd, sizeof cmd,
	         "'%s/itt-synth' '%s' --dim 64 --layers 4 --heads 4 --ffn 96 --vocab 300 "
	         "--ctx 64 --seed 5 %s >/dev/null",
	         dir, path, flags);
	return system(cmd) == 0 ? path : NULL;
}

/* The split on a qwen2 model with every variant at once: biases, NeoX
 * RoPE, GQA with one KV head, tied head, rope_freqs and linear scaling. */
static void qwen2_variant_split_equals_whole(void **state)
{
	const char *path = synth_model("fwd-qwen2.gguf", "--arch qwen2 --kv-heads 1 --tied "
	                                                 "--rope-freqs --rope-scale 2 "
	                                                 "--rope-base 500000");
	if (!path)
		skip();
	struct model *m = NULL;
	struct itt_err err = {0};
	assert_int_equal(model_open(path, 0, 0, &m, &err), 0);
	assert_int_equal(m->hp.arch, MODEL_ARCH_QWEN2);
	assert_true(m->hp.rope_neox);
	assert_true(m->tied_output);
	assert_non_null(m->rope_freqs);
	assert_non_null(m->layers[3].bv);
	assert_true(fabsf(m->hp.rope_scale - 0.5f) < 1e-7f);
	model_close(&m);
	check_layer_split(path);
}

/* Metadata-only files: the architecture and RoPE checks come first. */
static void write_meta_only(const char *path, const char *arch, const char *key,
                            uint32_t u, const char *str)
{
	gguf_writer_t *w = NULL;
	struct itt_err err = {0};
	char k[96];
	assert_int_equal(gguf_writer_new(&w, &err), 0);
	assert_int_equal(gguf_writer_add_str(w, "general.architecture", arch, &err), 0);
	static const char *const u32s[] = {"embedding_length", "block_count",
	                                   "attention.head_count", "feed_forward_length"};
	static const uint32_t vals[] = {64, 2, 4, 96};
	for (int i = 0; i < 4; i++) {
		snprintf(k, sizeof k, "%s.%s", arch, u32s[i]);
		assert_int_equal(gguf_writer_add_u32(w, k, vals[i], &err), 0);
	}
	if (key) {
		snprintf(k, sizeof k, "%s.%s", arch, key);
		if (str)
			assert_int_equal(gguf_writer_add_str(w, k, str, &err), 0);
		else
			assert_int_equal(gguf_writer_add_u32(w, k, u, &err), 0);
	}
	assert_int_equal(gguf_writer_write(w, path, false, &err), 0);
	gguf_writer_destroy(&w);
}

static void unsupported_variants_are_refused_by_name(void **state)
{
	(void)state;
	const char *path = tu_tmp_path("fwd-meta.gguf");
	struct model *m = NULL;
	struct itt_err err = {0};
	write_meta_only(path, "gemma2", NULL, 0, NULL);
	assert_int_equal(model_open(path, 0, 0, &m, &err), ITT_E_UNSUPPORTED);
	assert_string_equal(err.msg, "architecture 'gemma2' is not supported; supported: llama, "
	                             "qwen2");
	write_meta_only(path, "qwen2", "rope.dimension_count", 8, NULL);
	assert_int_equal(model_open(path, 0, 0, &m, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "qwen2.rope.dimension_count 8"));
	write_meta_only(path, "llama", "rope.scaling.type", 0, "yarn");
	assert_int_equal(model_open(path, 0, 0, &m, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "llama.rope.scaling.type 'yarn'"));
	write_meta_only(path, "llama", "expert_count", 8, NULL);
	assert_int_equal(model_open(path, 0, 0, &m, &err), ITT_E_UNSUPPORTED);
	/* the keys are read under the file's arch: a qwen2 file's metadata
	 * passes, and only the (absent) tensors are missing */
	write_meta_only(path, "qwen2", NULL, 0, NULL);
	assert_int_equal(model_open(path, 0, 0, &m, &err), ITT_E_FORMAT);
	assert_non_null(strstr(err.msg, "token_embd.weight"));
	assert_null(m);
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

	struct forward_batch b = {.n_rows = 9, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = sp, .want_logits = NULL};
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID); /* > max_rows */
	b.n_rows = 0;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	int32_t bad_tok[2] = {1, (int32_t)V};
	struct forward_batch bt = {.n_rows = 2, .tokens = bad_tok, .hidden = NULL, .pos = pos, .seqs = sp, .want_logits = NULL};
	assert_int_equal(forward_run(&e->fwd, &bt, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "token"));
	bad_tok[1] = -1;
	assert_int_equal(forward_run(&e->fwd, &bt, out, &err), ITT_E_INVALID);
	uint32_t gap[2] = {0, 2};
	struct forward_batch bg = {.n_rows = 2, .tokens = tok, .hidden = NULL, .pos = gap, .seqs = sp, .want_logits = NULL};
	assert_int_equal(forward_run(&e->fwd, &bg, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "continues at 1"));
	uint32_t far[1] = {e->model->hp.ctx_len};
	struct forward_batch bf = {.n_rows = 1, .tokens = tok, .hidden = NULL, .pos = far, .seqs = sp, .want_logits = NULL};
	assert_int_equal(forward_run(&e->fwd, &bf, out, &err), ITT_E_RANGE);
	assert_int_equal(s.n_pos, 0);
	assert_int_equal(e->kv.n_free, e->kv.n_blocks);
	/* a good batch still works afterwards */
	struct forward_batch ok = {.n_rows = 8, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = sp, .want_logits = NULL};
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
	size_t bb =
	    kv_cache_block_bytes(probe->kv.n_layers, probe->kv.kv_dim, probe->kv.block_size);
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
	struct forward_batch ba = {.n_rows = 20, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = pa, .want_logits = NULL};
	assert_int_equal(forward_run(&e->fwd, &ba, out, &err), 0); /* 2 blocks */
	struct forward_batch bb2 = {.n_rows = 1, .tokens = tok, .hidden = NULL, .pos = pos, .seqs = pb, .want_logits = NULL};
	assert_int_equal(forward_run(&e->fwd, &bb2, out, &err), ITT_E_FULL);
	assert_int_equal(b.n_pos, 0);
	struct forward_batch ba2 = {.n_rows = 13, .tokens = tok + 20, .hidden = NULL, .pos = pos + 20, .seqs = pa, .want_logits = NULL};
	assert_int_equal(forward_run(&e->fwd, &ba2, out, &err), ITT_E_FULL);
	assert_int_equal(a.n_pos, 20);
	kv_seq_free(&e->kv, &a);
	assert_int_equal(forward_run(&e->fwd, &bb2, out, &err), 0);
	kv_seq_free(&e->kv, &b);
	free(out);
	engine_close(&e);
}

/* Paged attention over blocks of 16 positions equals attention over one
 * block as large as the context (contiguous storage), and F16 KV stays
 * close to F32 KV, with the same batched schedule. */
static void paged_equals_contiguous_and_f16_close(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *paged = open_model_kv(path, 0, 0, 2, 128, 0, KV_TYPE_F32, 16);
	uint32_t V = paged->model->hp.vocab, ctx = paged->model->hp.ctx_len;
	struct engine *flat = open_model_kv(path, 0, 0, 2, 128, 0, KV_TYPE_F32, ctx);
	assert_int_equal(flat->kv.block_size, ctx);
	struct engine *half = open_model_kv(path, 0, 0, 2, 128, 0, KV_TYPE_F16, 16);
	assert_int_equal(half->kv.type, KV_TYPE_F16);
	float *a = run_batched(paged, V), *b = run_batched(flat, V), *h = run_batched(half, V);
	double d_flat = worst_rel_diff(a, b, total_rows(), V);
	double d_half = worst_rel_diff(h, a, total_rows(), V);
	print_message("paged (16) vs contiguous (%u): %.3g; F16 vs F32 KV: %.3g\n", ctx, d_flat,
	              d_half);
	assert_true(d_flat < 1e-5);
	assert_true(d_half < 1e-2);
	free(a);
	free(b);
	free(h);
	engine_close(&paged);
	engine_close(&flat);
	engine_close(&half);
}

static int32_t argmax(const float *x, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return (int32_t)best;
}

/* Greedy tokens after "Once upon a time" (BOS first), n at most. */
static uint32_t greedy(struct engine *e, int32_t *toks, uint32_t n)
{
	struct itt_err err = {0};
	uint32_t V = e->model->hp.vocab;
	int32_t ids[64];
	size_t np = 0;
	const char *prompt = "Once upon a time";
	assert_int_equal(tokenizer_encode(e->tok, prompt, strlen(prompt), true, ids, 64, &np, &err),
	                 0);
	assert_true(np > 1);
	float *logits = malloc((size_t)V * sizeof(float));
	struct kv_seq seq;
	kv_seq_init(&seq);
	assert_int_equal(engine_prefill(e, &seq, ids, (uint32_t)np, NULL, logits, &err), 0);
	uint32_t k = 0;
	for (; k < n; k++) {
		toks[k] = argmax(logits, V);
		assert_int_equal(engine_prefill(e, &seq, &toks[k], 1, NULL, logits, &err), 0);
	}
	kv_seq_free(&e->kv, &seq);
	free(logits);
	return k;
}

static void f16_kv_greedy_text_matches(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	enum { N = 200 };
	struct engine *f = open_model_kv(path, 0, 0, 1, 64, 0, KV_TYPE_F32, 0);
	struct engine *h = open_model_kv(path, 0, 0, 1, 64, 0, KV_TYPE_F16, 0);
	int32_t a[N], b[N];
	greedy(f, a, N);
	greedy(h, b, N);
	uint32_t same = 0;
	while (same < N && a[same] == b[same])
		same++;
	print_message("greedy, F16 KV vs F32 KV: first %u of %d tokens identical\n", same, N);
	assert_true(same >= 100);
	engine_close(&f);
	engine_close(&h);
}

/* Runs tokens [from, n) of t on s (its cache holds [0, from)); logits of
 * every row into out[(i - from) * V]. */
static void run_rest(struct engine *e, struct kv_seq *s, const int32_t *t, uint32_t from,
                     uint32_t n, float *out)
{
	struct itt_err err = {0};
	assert_int_equal(s->n_pos, from);
	assert_int_equal(engine_prefill(e, s, t + from, n - from, out, NULL, &err), 0);
}

/* A session that forks an indexed prefix (whole blocks) or another
 * sequence's partial block (copy on write) computes the same logits as one
 * that computes everything itself, and leaves the sharer's cache intact. */
static void shared_prefix_gives_unshared_logits(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *e = open_model(path, 0, 0, 1, 64, 0);
	uint32_t V = e->model->hp.vocab;
	enum { NA = 45, NB = 52, COMMON = 37 };
	int32_t ta[NA], tb[NB];
	for (uint32_t i = 0; i < NA; i++)
		ta[i] = token_of(1, i, V);
	for (uint32_t i = 0; i < NB; i++)
		tb[i] = i < COMMON ? ta[i] : token_of(2, i, V);
	float *ref = malloc((size_t)NB * V * sizeof(float));
	float *got = malloc((size_t)NB * V * sizeof(float));
	float *ta_next = malloc((size_t)2 * V * sizeof(float));
	struct itt_err err = {0};

	/* reference: b alone */
	struct kv_seq b, a;
	kv_seq_init(&b);
	run_rest(e, &b, tb, 0, NB, ref);
	kv_seq_free(&e->kv, &b);

	/* a computes its prompt and enters its 2 full blocks into the index */
	kv_seq_init(&a);
	run_rest(e, &a, ta, 0, NA, got);
	assert_int_equal(kv_prefix_insert(&e->kv, &a, ta, NA), 2);

	/* b shares the indexed blocks covering its first 32 tokens */
	kv_seq_init(&b);
	assert_int_equal(kv_prefix_match(&e->kv, tb, NB - 1, &b), 32);
	run_rest(e, &b, tb, 32, NB, got);
	double d = worst_rel_diff(got, ref + (size_t)32 * V, NB - 32, V);
	print_message("prefix-shared vs unshared logits: %.3g\n", d);
	assert_true(d < 1e-5);
	kv_seq_free(&e->kv, &b);

	/* b forks a's partial third block too (37 positions): its first write
	 * copies that block; a's continuation is unaffected */
	kv_seq_init(&b);
	assert_int_equal(kv_seq_fork(&e->kv, &a, &b, COMMON, &err), 0);
	uint32_t copied = (uint32_t)e->kv.stats.copied;
	run_rest(e, &b, tb, COMMON, NB, got);
	assert_int_equal(e->kv.stats.copied, copied + 1);
	assert_int_not_equal(b.blocks[2], a.blocks[2]);
	assert_int_equal(b.blocks[1], a.blocks[1]);
	d = worst_rel_diff(got, ref + (size_t)COMMON * V, NB - COMMON, V);
	print_message("forked partial block (copy on write) vs unshared: %.3g\n", d);
	assert_true(d < 1e-5);
	int32_t more[2] = {7, 9};
	assert_int_equal(engine_prefill(e, &a, more, 2, ta_next, NULL, &err), 0);
	struct kv_seq a2;
	kv_seq_init(&a2);
	int32_t ta2[NA + 2];
	memcpy(ta2, ta, sizeof ta);
	ta2[NA] = 7;
	ta2[NA + 1] = 9;
	float *ref_a = malloc((size_t)(NA + 2) * V * sizeof(float));
	run_rest(e, &a2, ta2, 0, NA + 2, ref_a);
	assert_true(worst_rel_diff(ta_next, ref_a + (size_t)NA * V, 2, V) < 1e-5);
	kv_seq_free(&e->kv, &a2);
	kv_seq_free(&e->kv, &a);
	kv_seq_free(&e->kv, &b);
	kv_prefix_clear(&e->kv);
	assert_int_equal(e->kv.n_free, e->kv.n_blocks);
	free(ref_a);
	free(ref);
	free(got);
	free(ta_next);
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

/* --- inference-time techniques -------------------------------------------- */

enum { TN = 2, TL = 9 }; /* sequences, tokens each */

/* One batch of TN sequences x TL tokens (sequence-major) on fresh
 * sequences, with the given technique fields; logits into out. */
static void run_tech(struct engine *e, const struct forward_perturb *const *perturb,
                     uint32_t stop_layer, const struct forward_exit *ex, float *out)
{
	uint32_t V = e->model->hp.vocab;
	struct kv_seq seqs[TN], *sp[TN * TL];
	int32_t tok[TN * TL];
	uint32_t pos[TN * TL];
	for (uint32_t s = 0; s < TN; s++) {
		kv_seq_init(&seqs[s]);
		for (uint32_t i = 0; i < TL; i++) {
			tok[s * TL + i] = token_of(s + 4, i, V);
			pos[s * TL + i] = i;
			sp[s * TL + i] = &seqs[s];
		}
	}
	struct itt_err err = {0};
	struct forward_batch b = {.n_rows = TN * TL, .tokens = tok, .pos = pos, .seqs = sp,
	                          .perturb = perturb, .stop_layer = stop_layer, .exit = ex};
	int rc = forward_run(&e->fwd, &b, out, &err);
	if (rc != 0)
		fail_msg("forward_run: %s", err.msg);
	for (uint32_t s = 0; s < TN; s++)
		kv_seq_free(&e->kv, &seqs[s]);
}

static void neutral_perturbation_is_plain_bit_for_bit(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *e = open_model(path, 0, 0, 2, 64, 0);
	const struct model_hparams *hp = &e->model->hp;
	size_t nl = (size_t)TN * TL * hp->vocab;
	float *plain = malloc(nl * sizeof(float)), *got = malloc(nl * sizeof(float));
	uint8_t *all = malloc((size_t)hp->n_layers * hp->n_heads);
	uint8_t *none = calloc((size_t)hp->n_layers * hp->n_heads, 1);
	memset(all, 1, (size_t)hp->n_layers * hp->n_heads);
	run_tech(e, NULL, 0, NULL, plain);

	struct forward_perturb zero = {all, 0.0f}, empty = {none, 1.0f}, full = {all, 1.0f};
	const struct forward_perturb *rows[TN * TL];
	for (int i = 0; i < TN * TL; i++)
		rows[i] = &zero;
	run_tech(e, rows, 0, NULL, got);
	assert_memory_equal(got, plain, nl * sizeof(float));
	for (int i = 0; i < TN * TL; i++)
		rows[i] = &empty;
	run_tech(e, rows, 0, NULL, got);
	assert_memory_equal(got, plain, nl * sizeof(float));
	/* every row NULL: plain too */
	for (int i = 0; i < TN * TL; i++)
		rows[i] = NULL;
	run_tech(e, rows, 0, NULL, got);
	assert_memory_equal(got, plain, nl * sizeof(float));

	/* perturbing the second sequence only changes that sequence's rows,
	 * except its first row (one position: attention is the identity) */
	for (int i = TL; i < TN * TL; i++)
		rows[i] = &full;
	run_tech(e, rows, 0, NULL, got);
	size_t rowf = hp->vocab * sizeof(float);
	assert_memory_equal(got, plain, TL * rowf);
	assert_true(row_rel_diff(got + (size_t)TL * hp->vocab, plain + (size_t)TL * hp->vocab,
	                         hp->vocab) < 1e-5);
	double d = worst_rel_diff(got + (size_t)(TL + 1) * hp->vocab,
	                          plain + (size_t)(TL + 1) * hp->vocab, TL - 1, hp->vocab);
	print_message("all heads perturbed (u = 1) vs plain: %.3g\n", d);
	assert_true(d > 1e-3);
	free(plain);
	free(got);
	free(all);
	free(none);
	engine_close(&e);
}

static void exit_that_never_fires_is_plain_bit_for_bit(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *e = open_model(path, 0, 0, 1, 64, 0);
	const struct model_hparams *hp = &e->model->hp;
	size_t nl = (size_t)TN * TL * hp->vocab;
	float *plain = malloc(nl * sizeof(float)), *got = malloc(nl * sizeof(float));
	uint32_t layers[] = {0, 1, 2, 3, 4}, at[TN * TL];
	struct forward_exit ex = {layers, 5, 1.5f, at};
	run_tech(e, NULL, 0, NULL, plain);
	run_tech(e, NULL, 0, &ex, got);
	assert_memory_equal(got, plain, nl * sizeof(float));
	for (int i = 0; i < TN * TL; i++)
		assert_int_equal(at[i], hp->n_layers - 1);
	/* stop_layer at the last layer is the whole model */
	run_tech(e, NULL, hp->n_layers, NULL, got);
	assert_memory_equal(got, plain, nl * sizeof(float));
	free(plain);
	free(got);
	engine_close(&e);
}

static void exit_at_threshold_zero_is_the_stop_layer_pass(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *e = open_model(path, 0, 0, 1, 64, 0);
	const struct model_hparams *hp = &e->model->hp;
	size_t nl = (size_t)TN * TL * hp->vocab;
	float *draft = malloc(nl * sizeof(float)), *got = malloc(nl * sizeof(float));
	float *plain = malloc(nl * sizeof(float));
	run_tech(e, NULL, 0, NULL, plain);
	for (uint32_t k = 0; k + 1 < hp->n_layers; k++) {
		uint32_t layers[] = {k, k + 1}, at[TN * TL];
		struct forward_exit ex = {layers, 2, 0.0f, at};
		run_tech(e, NULL, k + 1, NULL, draft);
		run_tech(e, NULL, 0, &ex, got);
		assert_memory_equal(got, draft, nl * sizeof(float));
		for (int i = 0; i < TN * TL; i++)
			assert_int_equal(at[i], k);
		assert_true(worst_rel_diff(draft, plain, TN * TL, hp->vocab) > 1e-3);
	}
	free(draft);
	free(got);
	free(plain);
	engine_close(&e);
}

static float margin_of(const float *l, uint32_t n)
{
	uint32_t a = argmax(l, n);
	double mx = l[a], sum = 0, second = 0;
	for (uint32_t i = 0; i < n; i++) {
		double p = exp((double)l[i] - mx);
		sum += p;
		if (i != a && p > second)
			second = p;
	}
	return (float)((1.0 - second) / sum);
}

/* Rows of independent one-token sequences, some wanting logits: with a
 * threshold between their margins some stop after layer 1 and some run
 * through; each row's logits (in row order) are its own draft or full
 * logits, and exited_at says which. */
static void mixed_exits_keep_row_order(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	enum { N = 12 };
	struct engine *e = open_model(path, 0, 0, 2, 64, 0);
	const struct model_hparams *hp = &e->model->hp;
	uint32_t V = hp->vocab;
	float *draft = malloc((size_t)N * V * sizeof(float));
	float *full = malloc((size_t)N * V * sizeof(float));
	float *got = malloc((size_t)N * V * sizeof(float));
	struct kv_seq seqs[N], *sp[N];
	int32_t tok[N];
	uint32_t pos[N] = {0}, at[N], layers[] = {1};
	uint8_t want[N];
	struct itt_err err = {0};
	for (uint32_t i = 0; i < N; i++) {
		kv_seq_init(&seqs[i]);
		sp[i] = &seqs[i];
		tok[i] = token_of(i, 3, V);
		want[i] = i % 3 != 1;
	}
	struct forward_batch b = {.n_rows = N, .tokens = tok, .pos = pos, .seqs = sp};
	b.stop_layer = 2;
	assert_int_equal(forward_run(&e->fwd, &b, draft, &err), 0);
	for (uint32_t i = 0; i < N; i++)
		kv_seq_truncate(&e->kv, &seqs[i], 0);
	b.stop_layer = 0;
	assert_int_equal(forward_run(&e->fwd, &b, full, &err), 0);
	for (uint32_t i = 0; i < N; i++)
		kv_seq_truncate(&e->kv, &seqs[i], 0);
	/* threshold: the median margin of the wanting rows' drafts */
	float mg[N], sorted[N];
	uint32_t nw = 0;
	for (uint32_t i = 0; i < N; i++) {
		mg[i] = margin_of(draft + (size_t)i * V, V);
		if (want[i])
			sorted[nw++] = mg[i];
	}
	for (uint32_t i = 0; i < nw; i++)
		for (uint32_t j = i + 1; j < nw; j++)
			if (sorted[j] < sorted[i]) {
				float t = sorted[i];
				sorted[i] = sorted[j];
				sorted[j] = t;
			}
	float thr = 0.5f * (sorted[nw / 2 - 1] + sorted[nw / 2]);
	struct forward_exit ex = {layers, 1, thr, at};
	b.want_logits = want;
	b.exit = &ex;
	assert_int_equal(forward_run(&e->fwd, &b, got, &err), 0);
	uint32_t o = 0, n_exit = 0;
	for (uint32_t i = 0; i < N; i++) {
		if (!want[i]) {
			assert_int_equal(at[i], hp->n_layers - 1);
			continue;
		}
		bool stops = mg[i] >= thr;
		assert_int_equal(at[i], stops ? 1 : hp->n_layers - 1);
		const float *ref = (stops ? draft : full) + (size_t)i * V;
		assert_true(row_rel_diff(got + (size_t)o * V, ref, V) < 1e-5);
		n_exit += stops;
		o++;
	}
	print_message("mixed exits: %u of %u rows stopped after layer 1\n", n_exit, nw);
	assert_true(n_exit > 0 && n_exit < nw);
	for (uint32_t i = 0; i < N; i++)
		kv_seq_free(&e->kv, &seqs[i]);
	free(draft);
	free(full);
	free(got);
	engine_close(&e);
}

static void bad_technique_fields_are_refused(void **state)
{
	const char *path = tu_model_path("stories260K.gguf");
	if (!path)
		skip();
	struct engine *e = open_model(path, 0, 0, 1, 8, 0);
	struct engine *head_less = open_model(path, 0, 3, 1, 8, 0);
	uint32_t V = e->model->hp.vocab;
	float *out = malloc(8 * (size_t)V * sizeof(float));
	struct kv_seq s, *sp[2] = {&s, &s};
	kv_seq_init(&s);
	struct itt_err err = {0};
	int32_t tok[2] = {1, 2};
	uint32_t pos[2] = {0, 1}, at[2];
	uint8_t mask[5 * 8] = {0};
	struct forward_batch b = {.n_rows = 2, .tokens = tok, .pos = pos, .seqs = sp};

	b.stop_layer = 6;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "stop_layer"));
	b.stop_layer = 2;
	assert_int_equal(forward_run(&head_less->fwd, &b, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "output head"));
	b.stop_layer = 0;
	uint32_t desc[2] = {2, 1}, beyond[1] = {5};
	struct forward_exit ex = {desc, 2, 0.5f, at};
	b.exit = &ex;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "ascend"));
	ex.layers = beyond;
	ex.n_layers = 1;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	ex.layers = desc + 1;
	ex.threshold = NAN;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	ex.threshold = 0.5f;
	ex.exited_at = NULL;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	b.exit = NULL;
	struct forward_perturb bad = {mask, 1.5f}, nomask = {NULL, 0.5f};
	const struct forward_perturb *rows[2] = {NULL, &bad};
	b.perturb = rows;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "blend"));
	rows[1] = &nomask;
	assert_int_equal(forward_run(&e->fwd, &b, out, &err), ITT_E_INVALID);
	assert_int_equal(s.n_pos, 0);
	assert_int_equal(e->kv.n_free, e->kv.n_blocks);
	kv_seq_free(&e->kv, &s);
	free(out);
	engine_close(&e);
	engine_close(&head_less);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(batched_equals_single_stories260k),
	    cmocka_unit_test(layer_split_equals_whole),
	    cmocka_unit_test(qwen2_variant_split_equals_whole),
	    cmocka_unit_test(unsupported_variants_are_refused_by_name),
	    cmocka_unit_test(bad_batches_are_refused),
	    cmocka_unit_test(full_kv_cache_is_refused_and_rolled_back),
	    cmocka_unit_test(layer_range_is_validated),
	    cmocka_unit_test(paged_equals_contiguous_and_f16_close),
	    cmocka_unit_test(f16_kv_greedy_text_matches),
	    cmocka_unit_test(shared_prefix_gives_unshared_logits),
	    cmocka_unit_test(neutral_perturbation_is_plain_bit_for_bit),
	    cmocka_unit_test(exit_that_never_fires_is_plain_bit_for_bit),
	    cmocka_unit_test(exit_at_threshold_zero_is_the_stop_layer_pass),
	    cmocka_unit_test(mixed_exits_keep_row_order),
	    cmocka_unit_test(bad_technique_fields_are_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
