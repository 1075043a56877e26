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

/* The automatic choice: the measured crossovers of F32, F16, Q8_0 and
 * Q4_0 unchanged, BF16 as F16, the other block types FUSED up to 32. */
static void test_choose_per_type(void **state)
{
	(void)state;
	struct itt_err err = {0};
	threadpool_t *pool;
	struct linear_ctx lc;
	assert_int_equal(threadpool_new(1, &pool, &err), 0);
	assert_int_equal(linear_init(&lc, pool, 64, &err), 0);
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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
