/* bench-linear: which kernel wins for each weight type and batch size M,
 * measured through linear_matmul with each path forced in turn.
 *
 * Paths: the fused kernel of quant.h (weights stream once per QUANT_MAX_M rows),
 * sgemm (quantised weights dequantised a tile at a time first), and, for
 * F32, one OpenBLAS sgemv per input row; for quantised weights also "intdot",
 * the fused path with act_quant on (quant-dot.h: the activations quantised
 * once per call, integer block products), where the fused column has it off.
 * Shapes are the 134M synthetic model's (dim 768, ffn 2048, vocab 32000).
 * Weights are cold: the matrix has enough copies to overflow the caches and
 * each call uses the next.  Prints a table (weight GB/s streamed, GFLOP/s,
 * winner) and a JSON line; the crossover M per type is what linear.c uses.
 *
 * Usage: bench-linear [--threads T] [--reps R] [--types q8_0,q4_0,...] [--ms 1,5,16] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "gguf.h"
#include "linear.h"
#include "quant-dot.h"
#include "quant.h"
#include "quantize.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	int threads = 1, reps = 7;
	const char *type_list = NULL, *m_list = NULL;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--threads"))
			threads = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--reps"))
			reps = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--types"))
			type_list = argv[i + 1];
		else if (!strcmp(argv[i], "--ms"))
			m_list = argv[i + 1];
	}
	if (threads < 1 || reps < 1 || reps > 63) {
		fprintf(stderr, "usage: bench-linear [--threads T] [--reps R] [--types T,...] "
				"[--ms M,...]\n");
		return 2;
	}
	struct itt_err err = {0};
	threadpool_t *pool;
	struct linear_ctx lc;
	if (threadpool_new(threads, &pool, &err) < 0 || linear_init(&lc, pool, 4096, &err) < 0) {
		fprintf(stderr, "bench-linear: %s\n", err.msg);
		return 1;
	}
	const uint32_t shapes[][2] = {{2048, 768}, {768, 2048}, {32000, 768}};
	uint32_t types[16] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_Q8_0, GGML_TYPE_Q4_0};
	size_t n_types = 4, n_ms = 8;
	uint32_t Ms[16] = {1, 2, 4, 8, 16, 32, 64, 128};
	if (type_list) {
		char buf[256];
		snprintf(buf, sizeof buf, "%s", type_list);
		n_types = 0;
		for (char *t = strtok(buf, ","); t && n_types < 16; t = strtok(NULL, ",")) {
			uint32_t ty = GGML_TYPE_COUNT;
			for (uint32_t k = 0; k < GGML_TYPE_COUNT; k++)
				if (ggml_type_name(k) && !strcasecmp(ggml_type_name(k), t))
					ty = k;
			if (ty == GGML_TYPE_COUNT || !quant_type_supported(ty)) {
				fprintf(stderr, "bench-linear: unknown type %s\n", t);
				return 2;
			}
			types[n_types++] = ty;
		}
	}
	if (m_list) {
		char buf[256];
		snprintf(buf, sizeof buf, "%s", m_list);
		n_ms = 0;
		for (char *t = strtok(buf, ","); t && n_ms < 16; t = strtok(NULL, ","))
			if (atoi(t) >= 1 && atoi(t) <= 128)
				Ms[n_ms++] = (uint32_t)atoi(t);
	}
	float *X = malloc((size_t)128 * 2048 * sizeof(float));
	float *Y = malloc((size_t)128 * 32000 * sizeof(float));
	for (size_t i = 0; i < (size_t)128 * 2048; i++)
		X[i] = sinf((float)i * 0.01f);

	printf("bench-linear: %d thread(s), medians of %d, cold weights\n", threads, reps);
	printf("weight GB/s streamed per call (higher is better); gemv: F32 only, M <= 16;\n"
	       "fused: float activations, intdot: quantised activations (act_quant)\n");
	printf("%-6s %-11s %4s %10s %10s %10s %10s %8s\n", "type", "shape", "M", "fused", "gemm",
	       "gemv", "intdot", "winner");
	printf("JSON {\"threads\":%d,\"rows\":[", threads);
	int first_json = 1;
	char table[16384] = "";
	size_t tl = 0;
	for (size_t ti = 0; ti < n_types; ti++) {
		for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
			uint32_t R = shapes[si][0], K = shapes[si][1];
			size_t rb = quant_row_bytes(types[ti], K), bytes = rb * R;
			size_t copies = ((size_t)512 << 20) / bytes + 1;
			uint8_t *W = malloc(copies * bytes);
			float *row = malloc(K * sizeof(float));
			for (uint32_t r = 0; r < R; r++) {
				for (uint32_t k = 0; k < K; k++)
					row[k] = cosf((float)(r * 31 + k) * 0.001f) * 0.05f;
				if (quant_quantize_row(types[ti], row, W + r * rb, K) != 0)
					quantize_row(types[ti], row, W + r * rb, K);
			}
			for (size_t c = 1; c < copies; c++)
				memcpy(W + c * bytes, W, bytes);
			for (size_t mi = 0; mi < n_ms; mi++) {
				uint32_t M = Ms[mi];
				double gbs[4] = {0, 0, 0, 0};
				for (int path = 0; path < 4; path++) {
					static const enum linear_path paths[4] = {
						LINEAR_PATH_FUSED, LINEAR_PATH_GEMM, LINEAR_PATH_GEMV,
						LINEAR_PATH_FUSED};
					if (path == 2 && (types[ti] != GGML_TYPE_F32 || M > 16))
						continue;
					if (path == 3 && !quant_dot_act_type(types[ti]))
						continue;
					lc.force = paths[path];
					lc.act_quant = path == 3;
					double t[64];
					for (int r = 0; r < reps; r++) {
						struct model_weight w = {W + (r % copies) * bytes,
									 types[ti], R, K, rb};
						double t0 = now_s();
						linear_matmul(&lc, &w, X, M, Y, R);
						t[r] = now_s() - t0;
					}
					qsort(t, (size_t)reps, sizeof t[0], cmp);
					gbs[path] = bytes / t[reps / 2] / 1e9;
				}
				int best = 0;
				for (int p = 1; p < 4; p++)
					if (gbs[p] > gbs[best])
						best = p;
				static const char *names[4] = {"fused", "gemm", "gemv", "intdot"};
				tl += (size_t)snprintf(table + tl, sizeof table - tl,
						       "%-6s %5ux%-5u %4u %10.2f %10.2f %10.2f %10.2f %8s\n",
						       ggml_type_name(types[ti]), R, K, M, gbs[0],
						       gbs[1], gbs[2], gbs[3], names[best]);
				printf("%s{\"type\":\"%s\",\"rows\":%u,\"cols\":%u,\"m\":%u,"
				       "\"fused_gb_s\":%.3f,\"gemm_gb_s\":%.3f,\"gemv_gb_s\":%.3f,"
				       "\"intdot_gb_s\":%.3f}",
				       first_json ? "" : ",", ggml_type_name(types[ti]), R, K, M,
				       gbs[0], gbs[1], gbs[2], gbs[3]);
				first_json = 0;
			}
			free(W);
			free(row);
		}
	}
	printf("]}\n%s", table);
	free(X);
	free(Y);
	linear_free(&lc);
	threadpool_destroy(&pool);
	return 0;
}
