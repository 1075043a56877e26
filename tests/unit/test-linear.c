/* test-linear: every loadable weight type on every path of linear_matmul
 * (FUSED, GEMM with its tile dequantisation, GEMV, and the automatic
 * choice), against a double-precision product of quant_dequant_row's
 * values; the fused path equal to quant_matmul_rows bit for bit, and the
 * per-type crossovers of linear_choose. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "linear.h"
#include "quant-dot.h"
#include "quant.h"
#include "testutil.h"

static const uint32_t types[] = {GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q8_0,
                                 GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                 GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
                                 GGML_TYPE_Q6_K};
#define N_TYPES (sizeof types / sizeof types[0])

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint32_t rng_u32(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

static float rng_float(void) /* [-1, 1) */
{
	return (float)((double)rng_u32() / 2147483648.0 - 1.0);
}

/* A [rows][K] weight of type with values of order 1: the float types,
 * Q8_0 and Q4_0 quantised from random floats; the other block types random
 * bytes with every 16-bit word at an even offset made a small fp16 (their
 * fp16 scales all sit at even offsets of even-sized blocks, so the values
 * are finite; the codes stay random). */
static uint8_t *make_weight(uint32_t type, size_t rows, size_t K, size_t *row_bytes)
{
	size_t rb = quant_row_bytes(type, K);
	assert_true(rb > 0);
	uint8_t *W = malloc(rows * rb);
	float *x = malloc(K * sizeof(float));
	for (size_t r = 0; r < rows; r++) {
		for (size_t k = 0; k < K; k++)
			x[k] = rng_float();
		if (type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16 ||
		    type == GGML_TYPE_Q8_0 || type == GGML_TYPE_Q4_0) {
			assert_int_equal(quant_quantize_row(type, x, W + r * rb, K), 0);
			continue;
		}
		uint8_t *row = W + r * rb;
		for (size_t i = 0; i < rb; i++)
			row[i] = (uint8_t)rng_u32();
		for (size_t i = 0; i + 1 < rb; i += 2) {
			float v = quant_fp16_to_fp32((uint16_t)(row[i] | row[i + 1] << 8));
			if (!(fabsf(v) <= 0.01f)) {
				uint16_t h = quant_fp32_to_fp16(0.004f * (1.0f + rng_float() / 2));
				row[i] = (uint8_t)h;
				row[i + 1] = (uint8_t)(h >> 8);
			}
		}
	}
	free(x);
	*row_bytes = rb;
	return W;
}

static void test_every_type_on_every_path(void **state)
{
	(void)state;
	const size_t rows = 70, K = 512; /* 70: not a multiple of the row split */
	const uint32_t Ms[] = {1, 3, 33, 70};
	const enum linear_path paths[] = {LINEAR_PATH_AUTO, LINEAR_PATH_FUSED, LINEAR_PATH_GEMM,
	                                  LINEAR_PATH_GEMV};
	struct itt_err err = {0};
	threadpool_t *pool;
	struct linear_ctx lc;
	assert_int_equal(threadpool_new(2, &pool, &err), 0);
	assert_int_equal(linear_init(&lc, pool, (uint32_t)K, &err), 0);
	/* float activations here; test_act_quant_fused_is_quant_dot has the
	 * integer products */
	lc.act_quant = false;
	float *X = malloc(70 * K * sizeof(float)), *Wf = malloc(rows * K * sizeof(float));
	float *Y = malloc(70 * (rows + 2) * sizeof(float));
	float *Yd = malloc(70 * (rows + 2) * sizeof(float));
	for (size_t i = 0; i < 70 * K; i++)
		X[i] = rng_float();
	for (size_t t = 0; t < N_TYPES; t++) {
		size_t rb;
		uint8_t *W = make_weight(types[t], rows, K, &rb);
		for (size_t r = 0; r < rows; r++)
			assert_int_equal(quant_dequant_row(types[t], W + r * rb, Wf + r * K, K), 0);
		struct model_weight w = {W, types[t], (uint32_t)rows, (uint32_t)K, rb};
		size_t ldy = rows + 2;
		for (size_t pi = 0; pi < sizeof paths / sizeof paths[0]; pi++)
			for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
				uint32_t M = Ms[mi];
				lc.force = paths[pi];
				linear_matmul(&lc, &w, X, M, Y, ldy);
				for (uint32_t m = 0; m < M; m++)
					for (size_t r = 0; r < rows; r++) {
						double s = 0, a = 0;
						for (size_t k = 0; k < K; k++) {
							double p =
							    (double)Wf[r * K + k] * X[m * K + k];
							s += p;
							a += fabs(p);
						}
						float y = Y[m * ldy + r];
						if (!(fabs(y - s) <= 1e-5 * a + 1e-30))
							fail_msg(
							    "%s path %d M %u m %u row %zu: %.9g "
							    "vs %.9g",
							    ggml_type_name(types[t]),
							    (int)paths[pi], M, m, r, y, s);
					}
				/* the fused path is quant_matmul_rows, 32 inputs at a time */
				if (linear_choose(&lc, types[t], M) != LINEAR_PATH_FUSED)
					continue;
				for (uint32_t m0 = 0; m0 < M; m0 += QUANT_MAX_M) {
					uint32_t mm = M - m0 < QUANT_MAX_M ? M - m0 : QUANT_MAX_M;
					assert_int_equal(
					    quant_matmul_rows(types[t], W, rb, K, X + m0 * K, mm,
					                      Yd + m0 * ldy, ldy, 0, rows),
					    0);
				}
				for (uint32_t m = 0; m < M; m++)
					assert_memory_equal(Y + m * ldy, Yd + m * ldy,
					                    rows * sizeof(float));
			}
		free(W);
	}
	free(X);
	free(Wf);
	free(Y);
	free(Yd);
	linear_free(&lc);
	threadpool_destroy(&pool);
}

/* With act_quant (the default), the fused path of a quantised weight is
 * quant-dot.h's: X quantised once per call of up to QUANT_MAX_M rows, then
 * quant_dot_rows split across the threads, bit for bit; the float types
 * keep quant_matmul_rows.  The GEMM path is unchanged. */
static void test_act_quant_fused_is_quant_dot(void **state)
{
	(void)state;
	const size_t rows = 70, K = 512;
	const uint32_t Ms[] = {1, 5, 33, 64};
	struct itt_err err = {0};
	threadpool_t *pool;
	struct linear_ctx lc;
	assert_int_equal(threadpool_new(2, &pool, &err), 0);
	assert_int_equal(linear_init(&lc, pool, (uint32_t)K, &err), 0);
	assert_true(lc.act_quant);
	float *X = malloc(64 * K * sizeof(float));
	float *Y = malloc(64 * rows * sizeof(float)), *Yd = malloc(64 * rows * sizeof(float));
	float *Wf = malloc(rows * K * sizeof(float));
	uint8_t *Xq = malloc(QUANT_MAX_M * quant_dot_act_row_bytes(GGML_TYPE_Q4_K, K));
	for (size_t i = 0; i < 64 * K; i++)
		X[i] = rng_float();
	for (size_t t = 0; t < N_TYPES; t++) {
		size_t rb;
		uint8_t *W = make_weight(types[t], rows, K, &rb);
		struct model_weight w = {W, types[t], (uint32_t)rows, (uint32_t)K, rb};
		size_t ab = quant_dot_act_row_bytes(types[t], K);
		for (size_t r = 0; r < rows; r++)
			assert_int_equal(quant_dequant_row(types[t], W + r * rb, Wf + r * K, K), 0);
		for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
			uint32_t M = Ms[mi];
			lc.force = LINEAR_PATH_FUSED;
			linear_matmul(&lc, &w, X, M, Y, rows);
			for (uint32_t m0 = 0; m0 < M; m0 += QUANT_MAX_M) {
				uint32_t mm = M - m0 < QUANT_MAX_M ? M - m0 : QUANT_MAX_M;
				if (!ab) {
					assert_int_equal(quant_matmul_rows(types[t], W, rb, K,
					                                   X + m0 * K, mm,
					                                   Yd + m0 * rows, rows, 0,
					                                   rows),
					                 0);
					continue;
				}
				for (uint32_t m = 0; m < mm; m++)
					assert_int_equal(quant_dot_quantize_row(types[t],
					                                        X + (m0 + m) * K,
					                                        Xq + m * ab, K),
					                 0);
				assert_int_equal(quant_dot_rows(types[t], W, rb, K, Xq, ab, mm,
				                                Yd + m0 * rows, rows, 0, rows),
				                 0);
			}
			if (memcmp(Y, Yd, (size_t)M * rows * sizeof(float)))
				fail_msg("%s M %u: fused path != quant_dot_rows",
				         ggml_type_name(types[t]), M);
			/* GEMM: sgemm on the same quantised-and-dequantised X, so equal
			 * up to float rounding (and, for Q4_1 / Q5_1, the fp16
			 * rounding of Q8_1's s: 2^-11 of the minimum's term) */
			lc.force = LINEAR_PATH_GEMM;
			linear_matmul(&lc, &w, X, M, Y, rows);
			for (uint32_t m = 0; ab && m < M; m++)
				for (size_t r = 0; r < rows; r++) {
					double mag = 0;
					for (size_t k = 0; k < K; k++)
						mag += fabs((double)Wf[r * K + k] * X[m * K + k]);
					double e = fabs((double)Y[m * rows + r] - Yd[m * rows + r]);
					int q8_1 = quant_dot_act_type(types[t]) == GGML_TYPE_Q8_1;
					if (!(e <= (q8_1 ? 1e-3 : 1e-5) * mag))
						fail_msg("%s M %u m %u r %zu: gemm %.9g vs %.9g",
						         ggml_type_name(types[t]), M, m, r,
						         Y[m * rows + r], Yd[m * rows + r]);
				}
			lc.force = LINEAR_PATH_FUSED;
			/* act_quant off: the float kernel again */
			lc.act_quant = false;
			linear_matmul(&lc, &w, X, M, Y, rows);
			lc.act_quant = true;
			assert_int_equal(quant_matmul_rows(types[t], W, rb, K, X,
			                                   M < QUANT_MAX_M ? M : QUANT_MAX_M, Yd,
			                                   rows, 0, rows),
			                 0);
			assert_memory_equal(Y, Yd, (M < QUANT_MAX_M ? M : QUANT_MAX_M) * rows *
			                               sizeof(float));
		}
		free(W);
	}
	free(X);
	free(Y);
	free(Yd);
	free(Wf);
	free(Xq);
	linear_free(&lc);
	threadpool_destroy(&pool);
}

/* The automatic choice: with act_quant, FUSED at any M for quantised
 * weights; without, the measured crossovers of F32, F16, Q8_0 and Q4_0
 * unchanged, BF16 as F16, the other block types FUSED up to 32. */
static void test_choose_per_type(void **state)
{
	(void)state;
	struct itt_err err = {0};
	threadpool_t *pool;
	struct linear_ctx lc;
	assert_int_equal(threadpool_new(1, &pool, &err), 0);
	assert_int_equal(linear_init(&lc, pool, 64, &err), 0);
	/* act_quant on: the types with integer products are FUSED at any M */
	for (size_t t = 0; t < N_TYPES; t++)
		assert_int_equal(linear_choose(&lc, types[t], 1000),
		                 quant_dot_act_type(types[t]) ? LINEAR_PATH_FUSED
		                                              : LINEAR_PATH_GEMM);
	lc.act_quant = false;
	const struct {
		uint32_t type, max_fused;
	} want[] = {{GGML_TYPE_F32, 16},  {GGML_TYPE_F16, 32},  {GGML_TYPE_BF16, 32},
	            {GGML_TYPE_Q8_0, 64}, {GGML_TYPE_Q4_0, 64}, {GGML_TYPE_Q4_1, 32},
	            {GGML_TYPE_Q5_0, 32}, {GGML_TYPE_Q5_1, 32}, {GGML_TYPE_Q2_K, 32},
	            {GGML_TYPE_Q3_K, 32}, {GGML_TYPE_Q4_K, 32}, {GGML_TYPE_Q5_K, 32},
	            {GGML_TYPE_Q6_K, 32}};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		assert_int_equal(linear_choose(&lc, want[i].type, 1), LINEAR_PATH_FUSED);
		assert_int_equal(linear_choose(&lc, want[i].type, want[i].max_fused),
		                 LINEAR_PATH_FUSED);
		assert_int_equal(linear_choose(&lc, want[i].type, want[i].max_fused + 1),
		                 LINEAR_PATH_GEMM);
	}
	linear_free(&lc);
	threadpool_destroy(&pool);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_every_type_on_every_path),
	    cmocka_unit_test(test_choose_per_type),
	    cmocka_unit_test(test_act_quant_fused_is_quant_dot),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
