/* test-quantize: the Q4_1/Q5_0/Q5_1 and K-quant row quantisers (round-trip
 * error bounds on random rows and on edge rows: all zeros, constant, one
 * outlier, negative only, non-finite), decoded by a small dequantiser of
 * this file written from the block layouts in quant.h (and compared with
 * quant_dequant_row where that knows the type); and the mix policy: which
 * tensor of a model gets which type in Q4_K_M, Q5_K_M, Q3_K_M, Q2_K, ...
 * (tests/integration/test_quantize_peer.py compares whole files with
 * llama-quantize's.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "gguf.h"
#include "quant.h"
#include "quantize.h"
#include "testutil.h"

/* xorshift64*: deterministic test data. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng_u32(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}

/* Uniform in [-1, 1). */
static float rng_float(void)
{
	return (float)((double)rng_u32() / 2147483648.0 - 1.0);
}

/* ---- an independent dequantiser, from the layouts in quant.h ----------- */

static float h2f(const uint8_t *p)
{
	return quant_fp16_to_fp32((uint16_t)(p[0] | (p[1] << 8)));
}

/* The 6-bit scale and min of group j of a Q4_K / Q5_K super-block. */
static void k_scale_min(const uint8_t *s, int j, int *sc, int *m)
{
	if (j < 4) {
		*sc = s[j] & 63;
		*m = s[j + 4] & 63;
	} else {
		*sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
		*m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
	}
}

/* Value i (0..255) of a super-block: 2-bit codes as Q2_K / Q3_K keep them. */
static int code2(const uint8_t *qs, int i)
{
	return (qs[32 * (i / 128) + i % 32] >> (2 * ((i % 128) / 32))) & 3;
}

static void ref_dequant(uint32_t type, const uint8_t *b, float *y, size_t n)
{
	switch (type) {
	case GGML_TYPE_Q4_1:
		for (size_t k = 0; k < n / 32; k++, b += 20, y += 32)
			for (int j = 0; j < 32; j++)
				y[j] = h2f(b) * (float)((b[4 + j % 16] >> (4 * (j / 16))) & 15) +
				       h2f(b + 2);
		return;
	case GGML_TYPE_Q5_0:
	case GGML_TYPE_Q5_1: {
		int one = type == GGML_TYPE_Q5_1;
		size_t bs = one ? 24 : 22;
		for (size_t k = 0; k < n / 32; k++, b += bs, y += 32) {
			const uint8_t *qh = b + (one ? 4 : 2), *qs = qh + 4;
			for (int j = 0; j < 32; j++) {
				int q = ((qs[j % 16] >> (4 * (j / 16))) & 15) |
				        (((qh[j / 8] >> (j % 8)) & 1) << 4);
				y[j] =
				    one ? h2f(b) * (float)q + h2f(b + 2) : h2f(b) * (float)(q - 16);
			}
		}
		return;
	}
	case GGML_TYPE_Q2_K:
		for (size_t k = 0; k < n / 256; k++, b += 84, y += 256) {
			float d = h2f(b + 80), dmin = h2f(b + 82);
			for (int i = 0; i < 256; i++) {
				int s = b[i / 16];
				y[i] = d * (float)(s & 15) * (float)code2(b + 16, i) -
				       dmin * (float)(s >> 4);
			}
		}
		return;
	case GGML_TYPE_Q3_K:
		for (size_t k = 0; k < n / 256; k++, b += 110, y += 256) {
			const uint8_t *hm = b, *qs = b + 32, *sc = b + 96;
			float d = h2f(b + 108);
			for (int i = 0; i < 256; i++) {
				int j = i / 16;
				int s = ((sc[j % 8] >> (4 * (j / 8))) & 15) |
				        (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
				int q = code2(qs, i) + 4 * ((hm[i % 32] >> (i / 32)) & 1);
				y[i] = d * (float)(s - 32) * (float)(q - 4);
			}
		}
		return;
	case GGML_TYPE_Q4_K:
	case GGML_TYPE_Q5_K: {
		int five = type == GGML_TYPE_Q5_K;
		size_t bs = five ? 176 : 144;
		for (size_t k = 0; k < n / 256; k++, b += bs, y += 256) {
			float d = h2f(b), dmin = h2f(b + 2);
			const uint8_t *qh = b + 16, *qs = b + (five ? 48 : 16);
			for (int i = 0; i < 256; i++) {
				int g = i / 32, sc, m;
				k_scale_min(b + 4, g, &sc, &m);
				int q = (qs[32 * (g / 2) + i % 32] >> (4 * (g % 2))) & 15;
				if (five)
					q |= ((qh[i % 32] >> g) & 1) << 4;
				y[i] = d * (float)sc * (float)q - dmin * (float)m;
			}
		}
		return;
	}
	case GGML_TYPE_Q6_K:
		for (size_t k = 0; k < n / 256; k++, b += 210, y += 256) {
			const uint8_t *ql = b, *qh = b + 128;
			const int8_t *sc = (const int8_t *)(b + 192);
			float d = h2f(b + 208);
			for (int i = 0; i < 256; i++) {
				int h = i / 128, q4 = (i % 128) / 32, l = i % 32;
				int lo = (ql[64 * h + 32 * (q4 % 2) + l] >> (4 * (q4 / 2))) & 15;
				int hi = (qh[32 * h + l] >> (2 * q4)) & 3;
				y[i] = d * (float)sc[i / 16] * (float)((lo | (hi << 4)) - 32);
			}
		}
		return;
	}
	fail_msg("no reference dequantiser for type %u", type);
}

/* ---- round trips ------------------------------------------------------- */

static const uint32_t qtypes[] = {GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q2_K,
                                  GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K, GGML_TYPE_Q6_K};
#define N_QTYPES (sizeof qtypes / sizeof qtypes[0])

/* RMS error over RMS value for uniform data, with a margin over what the
 * reference algorithms reach (measured: Q4_1 .062, Q5_0 .032, Q5_1 .030,
 * Q2_K .234, Q3_K .127, Q4_K .055, Q5_K .028, Q6_K .0135). */
static double rel_rms_bound(uint32_t type)
{
	switch (type) {
	case GGML_TYPE_Q4_1: return 0.075;
	case GGML_TYPE_Q5_0: return 0.04;
	case GGML_TYPE_Q5_1: return 0.036;
	case GGML_TYPE_Q2_K: return 0.28;
	case GGML_TYPE_Q3_K: return 0.15;
	case GGML_TYPE_Q4_K: return 0.066;
	case GGML_TYPE_Q5_K: return 0.034;
	case GGML_TYPE_Q6_K: return 0.017;
	}
	return 0;
}

/* Quantises x (n values) as type and decodes it with the reference into y;
 * the library's dequantiser, when it knows the type, must agree exactly. */
static void round_trip(uint32_t type, const float *x, float *y, size_t n)
{
	size_t bytes = n / ggml_blck_size(type) * ggml_type_size(type);
	uint8_t *q = malloc(bytes + 1);
	assert_non_null(q);
	q[bytes] = 0xa5; /* guard: nothing written past the row */
	assert_int_equal(quant_quantize_row(type, x, q, n), 0);
	assert_int_equal(q[bytes], 0xa5);
	ref_dequant(type, q, y, n);
	float *z = malloc(n * sizeof *z);
	assert_non_null(z);
	/* equal up to the rounding of d q - m (a kernel may fuse it) */
	float ymax = 0;
	for (size_t i = 0; i < n; i++)
		ymax = fmaxf(ymax, fabsf(y[i]));
	if (quant_dequant_row(type, q, z, n) == 0)
		for (size_t i = 0; i < n; i++)
			if (y[i] != z[i] && !(fabsf(y[i] - z[i]) <= 1e-6f * ymax) &&
			    !(isnan(y[i]) && isnan(z[i])))
				fail_msg("%s value %zu: reference %g, quant_dequant_row %g",
				         ggml_type_name(type), i, y[i], z[i]);
	free(z);
	free(q);
}

static double rel_rms(const float *x, const float *y, size_t n)
{
	double e = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		e += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
		s += (double)x[i] * x[i];
	}
	return s > 0 ? sqrt(e / s) : sqrt(e);
}

static void test_random_rows_within_error_bounds(void **state)
{
	(void)state;
	const size_t n = 4096;
	float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
	assert_non_null(x);
	assert_non_null(y);
	for (size_t t = 0; t < N_QTYPES; t++) {
		double worst = 0;
		for (int rep = 0; rep < 8; rep++) {
			float scale = rep % 2 ? 0.02f : 3.0f;
			for (size_t i = 0; i < n; i++)
				x[i] = scale * rng_float();
			round_trip(qtypes[t], x, y, n);
			double r = rel_rms(x, y, n);
			worst = r > worst ? r : worst;
			/* no value is off by more than its block's range */
			for (size_t i = 0; i < n; i++)
				assert_true(fabsf(x[i] - y[i]) <= 2.0f * scale * 0.6f);
		}
		print_message("%-5s worst relative RMS error %.4f\n", ggml_type_name(qtypes[t]),
		              worst);
		if (worst > rel_rms_bound(qtypes[t]))
			fail_msg("%s: relative RMS error %.4f > %.4f", ggml_type_name(qtypes[t]),
			         worst, rel_rms_bound(qtypes[t]));
	}
	free(x);
	free(y);
}

static void test_edge_rows(void **state)
{
	(void)state;
	const size_t n = 512;
	float x[512], y[512];
	for (size_t t = 0; t < N_QTYPES; t++) {
		uint32_t type = qtypes[t];
		const char *tn = ggml_type_name(type);

		/* all zeros decode to zeros */
		memset(x, 0, sizeof x);
		round_trip(type, x, y, n);
		for (size_t i = 0; i < n; i++)
			if (y[i] != 0.0f)
				fail_msg("%s zeros: value %zu decodes to %g", tn, i, y[i]);

		/* a constant row, of either sign, within 1% */
		for (int sign = -1; sign <= 1; sign += 2) {
			float c = 0.37f * (float)sign;
			for (size_t i = 0; i < n; i++)
				x[i] = c;
			round_trip(type, x, y, n);
			for (size_t i = 0; i < n; i++)
				if (fabsf(y[i] - c) > 0.01f * fabsf(c))
					fail_msg("%s constant %g: value %zu decodes to %g", tn, c,
					         i, y[i]);
		}

		/* one outlier among small values: the outlier survives within 5%,
		 * the rest within the outlier's quantisation step */
		for (size_t i = 0; i < n; i++)
			x[i] = 0.01f * rng_float();
		x[77] = 10.0f;
		round_trip(type, x, y, n);
		if (fabsf(y[77] - 10.0f) > 0.5f)
			fail_msg("%s outlier 10 decodes to %g", tn, y[77]);
		for (size_t i = 0; i < n; i++)
			assert_true(fabsf(y[i] - x[i]) <= 10.0f / 2.0f);
		/* blocks away from the outlier keep their accuracy */
		assert_true(rel_rms(x + 256, y + 256, 256) <= rel_rms_bound(type) * 1.5);

		/* negative values only */
		for (size_t i = 0; i < n; i++)
			x[i] = -fabsf(rng_float());
		round_trip(type, x, y, n);
		double r = rel_rms(x, y, n);
		if (r > rel_rms_bound(type) * 1.5)
			fail_msg("%s negative row: relative RMS error %.4f", tn, r);
		for (size_t i = 0; i < n; i++)
			assert_true(y[i] <= 0.6f); /* nothing far to the wrong side */
	}
}

/* Infinities and NaN give some codes, never undefined behaviour (the
 * sanitizer builds run this) or bytes past the row. */
static void test_non_finite_input_is_contained(void **state)
{
	(void)state;
	float x[256], y[256];
	for (size_t t = 0; t < N_QTYPES; t++) {
		for (int i = 0; i < 256; i++)
			x[i] = rng_float();
		x[3] = INFINITY;
		x[40] = -INFINITY;
		x[200] = NAN;
		round_trip(qtypes[t], x, y, 256);
		for (int i = 0; i < 256; i++)
			x[i] = NAN;
		round_trip(qtypes[t], x, y, 256);
	}
}

static void test_row_length_and_type_errors(void **state)
{
	(void)state;
	float x[512] = {0};
	uint8_t q[1024];
	for (size_t t = 0; t < N_QTYPES; t++) {
		size_t block = ggml_blck_size(qtypes[t]);
		assert_int_equal(quantize_row(qtypes[t], x, q, block + block / 2), ITT_E_INVALID);
		assert_int_equal(quant_quantize_row(qtypes[t], x, q, block / 2), ITT_E_INVALID);
		assert_int_equal(quantize_row(qtypes[t], x, q, 0), 0);
	}
	assert_int_equal(quantize_row(GGML_TYPE_Q8_K, x, q, 256), ITT_E_UNSUPPORTED);
	assert_int_equal(quantize_row(GGML_TYPE_Q8_0, x, q, 32), ITT_E_UNSUPPORTED);
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q8_1, x, q, 32), ITT_E_UNSUPPORTED);
	assert_int_equal(quant_quantize_row(99, x, q, 32), ITT_E_UNSUPPORTED);
}

/* A block computed by hand: Q4_1 of 0, 1, ..., 31 has d = 31/15, m = 0. */
static void test_q4_1_block_by_hand(void **state)
{
	(void)state;
	float x[32];
	uint8_t q[20];
	for (int i = 0; i < 32; i++)
		x[i] = (float)i;
	assert_int_equal(quantize_row(GGML_TYPE_Q4_1, x, q, 32), 0);
	assert_int_equal(q[0] | (q[1] << 8), quant_fp32_to_fp16(31.0f / 15.0f));
	assert_int_equal(q[2] | (q[3] << 8), 0);
	for (int j = 0; j < 16; j++) {
		float d = 31.0f / 15.0f;
		int q0 = (int)((float)j / d + 0.5f), q1 = (int)((float)(j + 16) / d + 0.5f);
		assert_int_equal(q[4 + j], q0 | (q1 << 4));
	}
}

/* ---- file types and the mix policy ------------------------------------- */

static void test_ftype_names(void **state)
{
	(void)state;
	uint32_t f = 0;
	assert_int_equal(quantize_ftype_parse("Q4_K_M", &f), 0);
	assert_int_equal(f, 15);
	assert_int_equal(quantize_ftype_parse("q5_k_m", &f), 0);
	assert_int_equal(f, 17);
	assert_int_equal(quantize_ftype_parse("Q4_K", &f), 0); /* llama-quantize's alias */
	assert_int_equal(f, 15);
	assert_int_equal(quantize_ftype_parse("q3_k", &f), 0);
	assert_int_equal(f, 12);
	const struct {
		const char *name;
		uint32_t ftype, base;
	} all[] = {{"F16", 1, GGML_TYPE_F16},      {"BF16", 32, GGML_TYPE_BF16},
	           {"Q8_0", 7, GGML_TYPE_Q8_0},    {"Q6_K", 18, GGML_TYPE_Q6_K},
	           {"Q5_K_M", 17, GGML_TYPE_Q5_K}, {"Q5_K_S", 16, GGML_TYPE_Q5_K},
	           {"Q5_1", 9, GGML_TYPE_Q5_1},    {"Q5_0", 8, GGML_TYPE_Q5_0},
	           {"Q4_K_M", 15, GGML_TYPE_Q4_K}, {"Q4_K_S", 14, GGML_TYPE_Q4_K},
	           {"Q4_1", 3, GGML_TYPE_Q4_1},    {"Q4_0", 2, GGML_TYPE_Q4_0},
	           {"Q3_K_L", 13, GGML_TYPE_Q3_K}, {"Q3_K_M", 12, GGML_TYPE_Q3_K},
	           {"Q3_K_S", 11, GGML_TYPE_Q3_K}, {"Q2_K", 10, GGML_TYPE_Q2_K}};
	size_t n = 0;
	while (quantize_ftype_names[n])
		n++;
	assert_int_equal(n, sizeof all / sizeof all[0]);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(quantize_ftype_parse(all[i].name, &f), 0);
		assert_int_equal(f, all[i].ftype);
		assert_string_equal(quantize_ftype_name(f), all[i].name);
		assert_int_equal(quantize_ftype_base_type(f), all[i].base);
	}
	f = 1234;
	assert_int_equal(quantize_ftype_parse("Q7_0", &f), ITT_E_INVALID);
	assert_int_equal(quantize_ftype_parse("", &f), ITT_E_INVALID);
	assert_int_equal(quantize_ftype_parse("Q4_K_MM", &f), ITT_E_INVALID);
	assert_int_equal(quantize_ftype_parse("Q2_K_S", &f), ITT_E_INVALID); /* needs an imatrix */
	assert_int_equal(f, 1234);
	assert_null(quantize_ftype_name(99));
	assert_int_equal(quantize_ftype_base_type(99), GGML_TYPE_COUNT);
}

/* A llama-style model of 12 layers, dim 768, ffn 2048, vocab 32000. */
struct shape_model {
	struct quantize_model m;
	uint32_t dim, ffn, vocab;
};

static void model_init(struct shape_model *s, uint32_t n_head, uint32_t n_head_kv, bool tied,
                       uint32_t dim)
{
	memset(s, 0, sizeof *s);
	s->dim = dim;
	s->ffn = 2048;
	s->vocab = 32000;
	char name[64];
	quantize_model_add(&s->m, "token_embd.weight");
	for (int l = 0; l < 12; l++) {
		static const char *const parts[] = {"attn_norm", "attn_q",      "attn_k",
		                                    "attn_v",    "attn_output", "ffn_norm",
		                                    "ffn_gate",  "ffn_up",      "ffn_down"};
		for (size_t p = 0; p < sizeof parts / sizeof parts[0]; p++) {
			snprintf(name, sizeof name, "blk.%d.%s.weight", l, parts[p]);
			quantize_model_add(&s->m, name);
		}
	}
	quantize_model_add(&s->m, "output_norm.weight");
	if (!tied)
		quantize_model_add(&s->m, "output.weight");
	s->m.n_head = n_head;
	s->m.n_head_kv = n_head_kv;
}

static uint32_t type_of(uint32_t ftype, const struct shape_model *s, const char *name)
{
	uint64_t ne[2] = {s->dim, s->dim};
	uint32_t n_dims = 2;
	if (strstr(name, "_norm"))
		n_dims = 1;
	else if (strcmp(name, "token_embd.weight") == 0 || strcmp(name, "output.weight") == 0)
		ne[1] = s->vocab;
	else if (strstr(name, "ffn_down"))
		ne[0] = s->ffn, ne[1] = s->dim;
	else if (strstr(name, "ffn_"))
		ne[1] = s->ffn;
	const char *why = NULL;
	return quantize_tensor_type(ftype, &s->m, name, n_dims, ne, GGML_TYPE_F32, &why);
}

static uint32_t layer_type(uint32_t ftype, const struct shape_model *s, int layer, const char *part)
{
	char name[64];
	snprintf(name, sizeof name, "blk.%d.%s.weight", layer, part);
	return type_of(ftype, s, name);
}

/* Expected type of part in each of the 12 layers: `hi` in the layers of
 * mask, else `lo`. */
static void expect_layers(uint32_t ftype, const struct shape_model *s, const char *part,
                          unsigned mask, uint32_t hi, uint32_t lo)
{
	for (int l = 0; l < 12; l++) {
		uint32_t want = (mask >> l) & 1 ? hi : lo, got = layer_type(ftype, s, l, part);
		if (got != want)
			fail_msg("%s: blk.%d.%s is %s, expected %s", quantize_ftype_name(ftype), l,
			         part, ggml_type_name(got), ggml_type_name(want));
	}
}

/* llama-quantize's choices for the synthetic 12-layer model (its Q4_K_M file
 * has these types): the _M mixes promote attn_v and ffn_down in layers
 * 0, 3, 6, 9, 10, 11. */
#define MORE_BITS_12 ((1u << 0) | (1u << 3) | (1u << 6) | (1u << 9) | (1u << 10) | (1u << 11))

static void test_mix_q4_k_m_and_q5_k_m(void **state)
{
	(void)state;
	struct shape_model s;
	model_init(&s, 12, 12, false, 768);
	assert_int_equal(s.m.n_layer, 12);
	assert_int_equal(s.m.n_attn_v, 12);
	assert_true(s.m.has_output);
	const uint32_t mixes[2][2] = {{QUANTIZE_FTYPE_Q4_K_M, GGML_TYPE_Q4_K},
	                              {QUANTIZE_FTYPE_Q5_K_M, GGML_TYPE_Q5_K}};
	for (int k = 0; k < 2; k++) {
		uint32_t f = mixes[k][0], base = mixes[k][1];
		assert_int_equal(type_of(f, &s, "output.weight"), GGML_TYPE_Q6_K);
		assert_int_equal(type_of(f, &s, "token_embd.weight"), base);
		assert_int_equal(type_of(f, &s, "output_norm.weight"), GGML_TYPE_F32);
		expect_layers(f, &s, "attn_v", MORE_BITS_12, GGML_TYPE_Q6_K, base);
		expect_layers(f, &s, "ffn_down", MORE_BITS_12, GGML_TYPE_Q6_K, base);
		expect_layers(f, &s, "attn_q", 0, 0, base);
		expect_layers(f, &s, "attn_k", 0, 0, base);
		expect_layers(f, &s, "attn_output", 0, 0, base);
		expect_layers(f, &s, "ffn_gate", 0, 0, base);
		expect_layers(f, &s, "ffn_up", 0, 0, base);
		expect_layers(f, &s, "attn_norm", 0, 0, GGML_TYPE_F32);
	}
	/* tied embeddings: token_embd is the output and gets its type */
	model_init(&s, 12, 12, true, 768);
	assert_false(s.m.has_output);
	assert_int_equal(type_of(QUANTIZE_FTYPE_Q4_K_M, &s, "token_embd.weight"), GGML_TYPE_Q6_K);
	/* --pure: the base type everywhere */
	model_init(&s, 12, 12, false, 768);
	s.m.pure = true;
	assert_int_equal(type_of(QUANTIZE_FTYPE_Q4_K_M, &s, "output.weight"), GGML_TYPE_Q4_K);
	expect_layers(QUANTIZE_FTYPE_Q4_K_M, &s, "ffn_down", 0, 0, GGML_TYPE_Q4_K);
}

static void test_mix_other_k_mixes(void **state)
{
	(void)state;
	struct shape_model s;
	model_init(&s, 12, 12, false, 768);
	/* Q3_K_M: attn_v Q5_K in the first two layers, else Q4_K; ffn_down and
	 * attn_output Q4_K (n/16 = 0 layers get Q5_K) */
	uint32_t f = QUANTIZE_FTYPE_Q3_K_M;
	expect_layers(f, &s, "attn_v", 3u, GGML_TYPE_Q5_K, GGML_TYPE_Q4_K);
	expect_layers(f, &s, "ffn_down", 0, 0, GGML_TYPE_Q4_K);
	expect_layers(f, &s, "attn_output", 0, 0, GGML_TYPE_Q4_K);
	expect_layers(f, &s, "ffn_up", 0, 0, GGML_TYPE_Q3_K);
	assert_int_equal(type_of(f, &s, "output.weight"), GGML_TYPE_Q6_K);
	/* Q3_K_L: attn_v, ffn_down, attn_output Q5_K */
	f = QUANTIZE_FTYPE_Q3_K_L;
	expect_layers(f, &s, "attn_v", 0, 0, GGML_TYPE_Q5_K);
	expect_layers(f, &s, "ffn_down", 0, 0, GGML_TYPE_Q5_K);
	expect_layers(f, &s, "attn_output", 0, 0, GGML_TYPE_Q5_K);
	/* Q3_K_S: Q3_K except the output */
	f = QUANTIZE_FTYPE_Q3_K_S;
	expect_layers(f, &s, "attn_v", 0, 0, GGML_TYPE_Q3_K);
	expect_layers(f, &s, "ffn_down", 0, 0, GGML_TYPE_Q3_K);
	/* Q4_K_S: attn_v Q5_K in layers 0-3, ffn_down Q5_K in layer 0 (n/8) */
	f = QUANTIZE_FTYPE_Q4_K_S;
	expect_layers(f, &s, "attn_v", 15u, GGML_TYPE_Q5_K, GGML_TYPE_Q4_K);
	expect_layers(f, &s, "ffn_down", 1u, GGML_TYPE_Q5_K, GGML_TYPE_Q4_K);
	/* Q5_K_S and Q6_K: no promotions below the output */
	expect_layers(QUANTIZE_FTYPE_Q5_K_S, &s, "attn_v", 0, 0, GGML_TYPE_Q5_K);
	expect_layers(QUANTIZE_FTYPE_Q6_K, &s, "ffn_down", 0, 0, GGML_TYPE_Q6_K);
	assert_int_equal(type_of(QUANTIZE_FTYPE_Q6_K, &s, "output.weight"), GGML_TYPE_Q6_K);
	/* Q2_K: attn_v Q3_K, or Q4_K with grouped-query attention (>= 4 heads
	 * per kv head); ffn_down and attn_output Q3_K */
	f = QUANTIZE_FTYPE_Q2_K;
	expect_layers(f, &s, "attn_v", 0, 0, GGML_TYPE_Q3_K);
	expect_layers(f, &s, "ffn_down", 0, 0, GGML_TYPE_Q3_K);
	expect_layers(f, &s, "attn_output", 0, 0, GGML_TYPE_Q3_K);
	expect_layers(f, &s, "attn_q", 0, 0, GGML_TYPE_Q2_K);
	assert_int_equal(type_of(f, &s, "output.weight"), GGML_TYPE_Q6_K);
	model_init(&s, 32, 8, false, 768);
	expect_layers(f, &s, "attn_v", 0, 0, GGML_TYPE_Q4_K);
}

static void test_mix_legacy_and_float_types(void **state)
{
	(void)state;
	struct shape_model s;
	model_init(&s, 12, 12, false, 768);
	/* the legacy mixes put the output in Q6_K too, except Q8_0 */
	assert_int_equal(type_of(QUANTIZE_FTYPE_Q4_0, &s, "output.weight"), GGML_TYPE_Q6_K);
	assert_int_equal(type_of(QUANTIZE_FTYPE_Q5_1, &s, "output.weight"), GGML_TYPE_Q6_K);
	assert_int_equal(type_of(QUANTIZE_FTYPE_Q8_0, &s, "output.weight"), GGML_TYPE_Q8_0);
	expect_layers(QUANTIZE_FTYPE_Q4_0, &s, "ffn_down", 0, 0, GGML_TYPE_Q4_0);
	expect_layers(QUANTIZE_FTYPE_Q4_1, &s, "attn_v", 0, 0, GGML_TYPE_Q4_1);
	expect_layers(QUANTIZE_FTYPE_Q5_0, &s, "attn_q", 0, 0, GGML_TYPE_Q5_0);
	/* F16 / BF16: no rules, every matrix in the type */
	assert_int_equal(type_of(QUANTIZE_FTYPE_F16, &s, "output.weight"), GGML_TYPE_F16);
	expect_layers(QUANTIZE_FTYPE_BF16, &s, "ffn_down", 0, 0, GGML_TYPE_BF16);
	expect_layers(QUANTIZE_FTYPE_F16, &s, "ffn_norm", 0, 0, GGML_TYPE_F32);
}

static void test_mix_fallbacks_for_odd_rows(void **state)
{
	(void)state;
	struct shape_model s;
	/* dim 4544 (Falcon-7B's): a multiple of 32, not of 256 */
	model_init(&s, 12, 12, false, 4544);
	uint32_t f = QUANTIZE_FTYPE_Q4_K_M;
	expect_layers(f, &s, "attn_q", 0, 0, GGML_TYPE_Q5_0); /* Q4_K -> Q5_0 */
	expect_layers(f, &s, "attn_v", MORE_BITS_12, GGML_TYPE_Q8_0, GGML_TYPE_Q5_0); /* Q6_K */
	assert_int_equal(type_of(f, &s, "output.weight"), GGML_TYPE_Q8_0);
	/* ffn_down rows are ffn = 2048 long: no fallback there */
	expect_layers(f, &s, "ffn_down", MORE_BITS_12, GGML_TYPE_Q6_K, GGML_TYPE_Q4_K);
	expect_layers(QUANTIZE_FTYPE_Q5_K_S, &s, "attn_k", 0, 0, GGML_TYPE_Q5_1);
	expect_layers(QUANTIZE_FTYPE_Q2_K, &s, "attn_q", 0, 0, GGML_TYPE_Q4_0);
	expect_layers(QUANTIZE_FTYPE_Q3_K_S, &s, "attn_q", 0, 0, GGML_TYPE_Q4_0);
	assert_int_equal(type_of(QUANTIZE_FTYPE_Q4_0, &s, "output.weight"), GGML_TYPE_Q8_0);
	/* rows 100 long fit no block: F16 */
	model_init(&s, 12, 12, false, 100);
	expect_layers(f, &s, "attn_q", 0, 0, GGML_TYPE_F16);
	expect_layers(QUANTIZE_FTYPE_Q8_0, &s, "attn_q", 0, 0, GGML_TYPE_F16);
	assert_int_equal(type_of(f, &s, "output.weight"), GGML_TYPE_F16);
	/* the note says why */
	uint64_t ne[2] = {4544, 4544};
	const char *why = NULL;
	assert_int_equal(
	    quantize_tensor_type(f, &s.m, "blk.1.attn_q.weight", 2, ne, GGML_TYPE_F32, &why),
	    GGML_TYPE_Q5_0);
	assert_non_null(why);
	assert_non_null(strstr(why, "fallback"));
}

static void test_mix_keeps_what_is_not_a_weight_matrix(void **state)
{
	(void)state;
	struct shape_model s;
	model_init(&s, 12, 12, false, 768);
	uint64_t ne[2] = {768, 768};
	const char *why = NULL;
	uint32_t f = QUANTIZE_FTYPE_Q4_K_M;
	/* 1-D */
	assert_int_equal(
	    quantize_tensor_type(f, &s.m, "blk.0.attn_q.weight", 1, ne, GGML_TYPE_F32, &why),
	    GGML_TYPE_F32);
	assert_string_equal(why, "1-D");
	/* a 2-D norm, a bias, an expert gate: kept as they are */
	assert_int_equal(
	    quantize_tensor_type(f, &s.m, "blk.0.attn_norm.weight", 2, ne, GGML_TYPE_F16, &why),
	    GGML_TYPE_F16);
	assert_non_null(why);
	assert_int_equal(
	    quantize_tensor_type(f, &s.m, "blk.0.attn_q.bias", 2, ne, GGML_TYPE_F32, &why),
	    GGML_TYPE_F32);
	assert_int_equal(
	    quantize_tensor_type(f, &s.m, "blk.0.ffn_gate_inp.weight", 2, ne, GGML_TYPE_F32, &why),
	    GGML_TYPE_F32);
	/* already quantised: not requantised */
	assert_int_equal(
	    quantize_tensor_type(f, &s.m, "blk.0.attn_q.weight", 2, ne, GGML_TYPE_Q8_0, &why),
	    GGML_TYPE_Q8_0);
	assert_string_equal(why, "already quantised");
	/* F16 and BF16 sources are converted like F32 */
	assert_int_equal(
	    quantize_tensor_type(f, &s.m, "blk.1.attn_q.weight", 2, ne, GGML_TYPE_BF16, &why),
	    GGML_TYPE_Q4_K);
	assert_null(why);
	/* an unknown file type keeps everything */
	assert_int_equal(
	    quantize_tensor_type(99, &s.m, "blk.1.attn_q.weight", 2, ne, GGML_TYPE_F32, NULL),
	    GGML_TYPE_F32);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_random_rows_within_error_bounds),
	    cmocka_unit_test(test_edge_rows),
	    cmocka_unit_test(test_non_finite_input_is_contained),
	    cmocka_unit_test(test_row_length_and_type_errors),
	    cmocka_unit_test(test_q4_1_block_by_hand),
	    cmocka_unit_test(test_ftype_names),
	    cmocka_unit_test(test_mix_q4_k_m_and_q5_k_m),
	    cmocka_unit_test(test_mix_other_k_mixes),
	    cmocka_unit_test(test_mix_legacy_and_float_types),
	    cmocka_unit_test(test_mix_fallbacks_for_odd_rows),
	    cmocka_unit_test(test_mix_keeps_what_is_not_a_weight_matrix),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
