/* cmd-bench: `itt bench engine`, prefill and decode speed of the in-process
 * engine beside the rooflines measured in the same run: streaming read
 * bandwidth for decode (weights must stream once per token) and, for
 * prefill, the time OpenBLAS sgemm alone needs for the same layer products. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cli.h"
#include "clock.h"
#include "engine.h"

/* cmd-bench-serve.c: `itt bench serve`, the closed-loop cluster load generator. */

static const char bench_help[] =
	"usage: itt bench engine --local MODEL.gguf [options]\n"
	"       itt bench serve --broker ENDPOINT --model NAME [options]\n"
	"`itt bench engine` measures the engine in this process beside the rooflines measured\n"
	"in the same run; `itt bench serve` loads a cluster with concurrent clients.\n"
	"`itt bench engine --help` and `itt bench serve --help` describe their options.\n";

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

struct dist dist_of(double *v, size_t n)
{
	struct dist d = {n, NAN, NAN, NAN, NAN};
	if (!n)
		return d;
	qsort(v, n, sizeof *v, cmp_double);
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	d.mean = sum / (double)n;
	double q[3] = {0.50, 0.90, 0.99}, *out[3] = {&d.p50, &d.p90, &d.p99};
	for (int k = 0; k < 3; k++) {
		double pos = q[k] * (double)(n - 1);
		size_t lo = (size_t)pos;
		size_t hi = lo + 1 < n ? lo + 1 : lo;
		*out[k] = v[lo] + (pos - (double)lo) * (v[hi] - v[lo]);
	}
	return d;
}

static double median(double *v, int n)
{
	return dist_of(v, (size_t)n).p50;
}

struct bw_job {
	const float *buf;
	size_t n;
	double sums[256];
};

static void bw_worker(void *arg, int ith, int nth)
{
	struct bw_job *j = arg;
	size_t lo, hi;
	threadpool_split(j->n, 64, ith, nth, &lo, &hi);
	const float *p = j->buf;
	double total = 0;
#if defined(__AVX2__)
	__m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
	size_t i = lo;
	for (; i + 32 <= hi; i += 32) {
		a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
		a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
		a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
		a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
	}
	float t[8];
	_mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
	for (int k = 0; k < 8; k++)
		total += t[k];
	for (; i < hi; i++)
		total += p[i];
#else
	float acc[16] = {0};
	size_t i = lo;
	for (; i + 16 <= hi; i += 16)
		for (int k = 0; k < 16; k++)
			acc[k] += p[i + k];
	for (int k = 0; k < 16; k++)
		total += acc[k];
	for (; i < hi; i++)
		total += p[i];
#endif
	j->sums[ith % 256] = total;
}

/* Read bandwidth in GB/s over a buffer much larger than the caches. */
static double measure_bandwidth(threadpool_t *pool, int reps)
{
	size_t n = (size_t)256 << 20; /* 1 GiB of floats */
	float *buf = malloc(n * sizeof(float));
	if (!buf)
		return NAN;
	for (size_t i = 0; i < n; i++)
		buf[i] = (float)(i & 1023);
	struct bw_job j = {buf, n, {0}};
	double t[32];
	threadpool_run(pool, bw_worker, &j); /* warm */
	for (int r = 0; r < reps; r++) {
		double t0 = clock_mono_us() / 1e3;
		threadpool_run(pool, bw_worker, &j);
		t[r] = clock_mono_us() / 1e3 - t0;
	}
	free(buf);
	return (double)n * sizeof(float) / (median(t, reps) / 1e3) / 1e9;
}

/* Milliseconds OpenBLAS sgemm needs, with its own threading over `threads`
 * threads, for C[M][N] = A[M][K] B[N][K]^T (median of reps).  The engine
 * runs OpenBLAS single-threaded inside its pool; the roofline is the best
 * OpenBLAS does on its own. */
static double time_sgemm(int M, int N, int K, int threads, int reps)
{
	float *A = malloc((size_t)M * K * sizeof(float));
	float *B = malloc((size_t)N * K * sizeof(float));
	float *C = malloc((size_t)M * N * sizeof(float));
	double t[32], ms = NAN;
	if (A && B && C) {
		for (size_t i = 0; i < (size_t)M * K; i++)
			A[i] = (float)((i * 7) % 13) * 0.01f;
		for (size_t i = 0; i < (size_t)N * K; i++)
			B[i] = (float)((i * 5) % 11) * 0.01f;
		openblas_set_num_threads(threads);
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, A, K, B, K, 0, C,
			    N);
		for (int r = 0; r < reps; r++) {
			double t0 = clock_mono_us() / 1e3;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1, A, K, B, K,
				    0, C, N);
			t[r] = clock_mono_us() / 1e3 - t0;
		}
		openblas_set_num_threads(1);
		ms = median(t, reps);
	}
	free(A);
	free(B);
	free(C);
	return ms;
}

/* The prefill roofline: the time OpenBLAS needs for exactly the matrix
 * products of the layers (every layer has the same seven shapes), M rows. */
static double time_layer_gemms(const struct model *m, int M, int threads, int reps)
{
	const struct model_layer *L = &m->layers[0];
	const struct model_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w1, &L->w2, &L->w3};
	double ms = 0;
	for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
		ms += time_sgemm(M, (int)ws[i]->rows, (int)ws[i]->cols, threads, reps);
	return ms * (m->last - m->first);
}

void cpu_name(char *buf, size_t cap)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[512];
	snprintf(buf, cap, "unknown");
	while (f && fgets(line, sizeof line, f)) {
		char *c = strchr(line, ':');
		if (c && !strncmp(line, "model name", 10)) {
			c += 1 + (c[1] == ' ');
			c[strcspn(c, "\n")] = 0;
			snprintf(buf, cap, "%s", c);
			break;
		}
	}
	if (f)
		fclose(f);
}

struct engine_bench_opts {
	const char *model;
	long threads, n_prompt, n_gen, reps;
	bool act_quant;
	bool json;
};

#define EB_AT(f) offsetof(struct engine_bench_opts, f)

static const struct opt engine_bench_opts_table[] = {
	{"local", 0, OPT_STR, NULL, 1, 4096, EB_AT(model), "MODEL.gguf", "the model (required)"},
	{"threads", 't', OPT_LONG, "1", 1, 256, EB_AT(threads), NULL, "compute threads"},
	{"prompt-tokens", 0, OPT_LONG, "128", 1, 65536, EB_AT(n_prompt), NULL,
	 "tokens of the prefill"},
	{"gen-tokens", 0, OPT_LONG, "64", 1, 65536, EB_AT(n_gen), NULL,
	 "tokens decoded one at a time"},
	{"reps", 0, OPT_LONG, "5", 1, 31, EB_AT(reps), "R", "runs; figures are their medians"},
	{"act-quant", 0, OPT_SWITCH, "on", 0, 0, EB_AT(act_quant), NULL,
	 "quantised weights: integer products on 8-bit activations (engine_config.act_quant)"},
	{"json", 0, OPT_FLAG, NULL, 0, 0, EB_AT(json), NULL, "print one JSON object"},
};

static const struct opt_spec engine_bench_spec = {
	.prog = "itt bench engine",
	.usage = "--local MODEL.gguf [options]",
	.about = "\n"
		 "Measures prefill and decode tokens/s and, in the same run, the rooflines they\n"
		 "are compared with: for decode, streaming read bandwidth (weight and KV bytes\n"
		 "per token / bandwidth); for prefill, OpenBLAS sgemm (its own threads, F32)\n"
		 "alone on the same layer matrix products. Figures are medians of R runs.",
	.opts = engine_bench_opts_table,
	.n_opts = OPTS_N(engine_bench_opts_table),
	.epilog = "`itt bench serve --broker ENDPOINT --model NAME ...` loads a cluster with\n"
		  "concurrent clients instead (`itt bench serve --help`).",
};

static int bench_engine(int argc, char **argv)
{
	struct engine_bench_opts bo = {0};
	int prc = opts_parse(&engine_bench_spec, argc, argv, &bo, NULL);
	if (prc != OPTS_OK)
		return cli_exit(prc);
	if (!bo.model) {
		fprintf(stderr, "itt bench engine: --local MODEL.gguf is required (see --help)\n");
		return 2;
	}
	const char *model = bo.model;
	long threads = bo.threads, n_prompt = bo.n_prompt, n_gen = bo.n_gen, reps = bo.reps;

	struct engine_config c;
	struct itt_err err = {0};
	struct engine *e;
	engine_config_default(&c);
	c.path = model;
	c.n_threads = (int)threads;
	c.max_rows = (uint32_t)n_prompt;
	c.kv_bytes = 0; /* one sequence of the full context */
	c.act_quant = bo.act_quant;
	if (engine_open(&c, &e, &err) < 0) {
		fprintf(stderr, "itt bench engine: %s: %s\n", itt_strerror(err.code), err.msg);
		return 1;
	}
	const struct model *m = e->model;
	const struct model_hparams *hp = &m->hp;
	if (!model_is_first(m) || !model_is_last(m) || (uint64_t)n_prompt + n_gen > hp->ctx_len) {
		fprintf(stderr, "itt bench engine: prompt + gen tokens exceed the context of %u\n",
			hp->ctx_len);
		engine_close(&e);
		return 2;
	}
	uint32_t V = hp->vocab;
	int32_t *toks = malloc((size_t)(n_prompt + n_gen) * sizeof *toks);
	float *logits = malloc((size_t)V * sizeof *logits);
	double *tp = malloc((size_t)reps * sizeof *tp), *td = malloc((size_t)reps * sizeof *td);
	for (long i = 0; i < n_prompt; i++)
		toks[i] = (int32_t)(3 + (i * 2654435761u) % (V - 3));

	for (long r = 0; r < reps; r++) {
		struct kv_seq seq;
		kv_seq_init(&seq);
		double t0 = clock_mono_us() / 1e3;
		if (engine_prefill(e, &seq, toks, (uint32_t)n_prompt, NULL, logits, &err) < 0) {
			fprintf(stderr, "itt bench engine: %s\n", err.msg);
			return 1;
		}
		double t1 = clock_mono_us() / 1e3;
		for (long g = 0; g < n_gen; g++) {
			int32_t best = 0;
			for (uint32_t j = 1; j < V; j++)
				if (logits[j] > logits[best])
					best = (int32_t)j;
			uint32_t pos = (uint32_t)(n_prompt + g);
			struct kv_seq *sp = &seq;
			struct forward_batch b = {.n_rows = 1, .tokens = &best, .hidden = NULL, .pos = &pos, .seqs = &sp, .want_logits = NULL};
			if (forward_run(&e->fwd, &b, logits, &err) < 0) {
				fprintf(stderr, "itt bench engine: %s\n", err.msg);
				return 1;
			}
		}
		double t2 = clock_mono_us() / 1e3;
		tp[r] = t1 - t0;
		td[r] = t2 - t1;
		kv_seq_free(&e->kv, &seq);
	}
	double prefill_ms = median(tp, (int)reps), decode_ms = median(td, (int)reps);
	double prefill_tps = n_prompt / (prefill_ms / 1e3), decode_tps = n_gen / (decode_ms / 1e3);

	double bw = measure_bandwidth(e->pool, (int)(reps < 3 ? 3 : reps));
	double blas_ms = time_layer_gemms(m, (int)n_prompt, (int)threads, (int)reps);

	/* Decode roofline: every weight of the range streams once per token,
	 * plus the KV cache read at the mean position. */
	double mean_pos = n_prompt + n_gen / 2.0;
	double kv_bytes = 2.0 * hp->n_layers * mean_pos * hp->n_kv_heads * hp->head_dim * 4;
	double bytes_tok = (double)m->weight_bytes + kv_bytes;
	double roof_tps = bw * 1e9 / bytes_tok;
	/* Prefill work: 2 flops per layer weight per token, attention, and the
	 * head on the last token only. */
	uint64_t layer_params = 0;
	for (uint32_t l = 0; l < hp->n_layers; l++) {
		const struct model_layer *L = &m->layers[l];
		layer_params += (uint64_t)L->wq.rows * L->wq.cols + (uint64_t)L->wk.rows * L->wk.cols +
				(uint64_t)L->wv.rows * L->wv.cols + (uint64_t)L->wo.rows * L->wo.cols +
				(uint64_t)L->w1.rows * L->w1.cols + (uint64_t)L->w2.rows * L->w2.cols +
				(uint64_t)L->w3.rows * L->w3.cols;
	}
	/* Prefill against OpenBLAS alone on the same layer products: the
	 * fraction is the share of the prefill time that a perfect engine
	 * (nothing but those sgemm calls) would still need. */
	double sgemm = 2.0 * layer_params * n_prompt / (blas_ms / 1e3) / 1e9;
	double prefill_gflops = 2.0 * layer_params * prefill_tps / 1e9;
	double prefill_roof_tps = n_prompt / (blas_ms / 1e3);

	char cpu[128];
	cpu_name(cpu, sizeof cpu);
	const char *tname = ggml_type_name(m->layers[0].wq.type);
	if (bo.json) {
		json_t *j = json_object(), *mach = json_object();
		json_object_set_new(mach, "cpu", cli_json_str(cpu));
		json_object_set_new(mach, "cores", json_integer(sysconf(_SC_NPROCESSORS_ONLN)));
		json_object_set_new(j, "machine", mach);
		json_object_set_new(j, "model", cli_json_str(model));
		json_object_set_new(j, "type", cli_json_str(tname));
		json_object_set_new(j, "params", cli_json_u64(layer_params + 2ull * V * hp->dim));
		json_object_set_new(j, "weight_bytes", cli_json_u64(m->weight_bytes));
		json_object_set_new(j, "threads", json_integer(threads));
		json_object_set_new(j, "prompt_tokens", json_integer(n_prompt));
		json_object_set_new(j, "gen_tokens", json_integer(n_gen));
		json_object_set_new(j, "prefill_tok_s", cli_json_num(prefill_tps, "%.2f"));
		json_object_set_new(j, "decode_tok_s", cli_json_num(decode_tps, "%.2f"));
		json_object_set_new(j, "bandwidth_gb_s", cli_json_num(bw, "%.2f"));
		json_object_set_new(j, "decode_roofline_tok_s", cli_json_num(roof_tps, "%.2f"));
		json_object_set_new(j, "decode_fraction",
				    cli_json_num(decode_tps / roof_tps, "%.3f"));
		json_object_set_new(j, "sgemm_gflops", cli_json_num(sgemm, "%.2f"));
		json_object_set_new(j, "prefill_gflops", cli_json_num(prefill_gflops, "%.2f"));
		json_object_set_new(j, "prefill_roofline_tok_s",
				    cli_json_num(prefill_roof_tps, "%.2f"));
		json_object_set_new(j, "prefill_fraction",
				    cli_json_num(prefill_tps / prefill_roof_tps, "%.3f"));
		cli_json_print(j, stdout);
	} else {
		printf("machine   %s, %ld cores; OpenBLAS %s\n", cpu, sysconf(_SC_NPROCESSORS_ONLN),
		       openblas_get_config());
		printf("model     %s (%s weights, dim %u, %u layers, ffn %u, vocab %u, %.1f MB read "
		       "per token)\n",
		       model, tname, hp->dim, hp->n_layers, hp->ffn_dim, V, m->weight_bytes / 1e6);
		printf("threads   %ld; medians of %ld runs\n\n", threads, reps);
		printf("%-8s %8s %10s %12s %9s  %s\n", "phase", "tokens", "tok/s", "roofline",
		       "fraction", "roofline from");
		printf("%-8s %8ld %10.1f %12.1f %8.1f%%  OpenBLAS sgemm alone on the layer products:"
		       " %.1f GFLOP/s (engine %.1f)\n",
		       "prefill", n_prompt, prefill_tps, prefill_roof_tps,
		       100 * prefill_tps / prefill_roof_tps, sgemm, prefill_gflops);
		printf("%-8s %8ld %10.1f %12.1f %8.1f%%  read bandwidth %.2f GB/s, %.1f MB per token\n",
		       "decode", n_gen, decode_tps, roof_tps, 100 * decode_tps / roof_tps, bw,
		       bytes_tok / 1e6);
	}
	free(toks);
	free(logits);
	free(tp);
	free(td);
	engine_close(&e);
	return 0;
}

int cmd_bench(int argc, char **argv)
{
	const char *sub = argc >= 2 ? argv[1] : "";
	if (!strcmp(sub, "engine"))
		return bench_engine(argc - 1, argv + 1);
	if (!strcmp(sub, "serve"))
		return cmd_bench_serve(argc - 1, argv + 1);
	bool help = !strcmp(sub, "--help") || !strcmp(sub, "-h");
	fputs(bench_help, help ? stdout : stderr);
	return help ? 0 : 2;
}
