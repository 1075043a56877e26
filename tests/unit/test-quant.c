/* test-quant: half/bfloat16 conversions, Q8_0/Q4_0 quantisation against
 * hand-computed blocks and error bounds, dequantisation of every other
 * ggml block type against hand-built blocks, row sizes, and the fused
 * matmul kernels (every compiled-in kernel, every type) against a
 * double-precision reference on the dequantised weights, including
 * bit-exactness of batched runs.  (tests/integration/test_dequant_peer.py
 * checks the dequantisation against llama.cpp's on real files.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "err.h"
#include "gguf.h"
#include "quant-dot.h"
#include "quant.h"
#include "testutil.h"

#ifdef __F16C__
#include <immintrin.h>
#endif

static uint32_t f2u(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float u2f(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

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

/* ---- fp16 / bf16 ---------------------------------------------------------- */

static void test_fp16_to_fp32_known_values(void **state)
{
	(void)state;
	assert_true(quant_fp16_to_fp32(0x3c00) == 1.0f);
	assert_true(quant_fp16_to_fp32(0xc000) == -2.0f);
	assert_true(quant_fp16_to_fp32(0x7bff) == 65504.0f);
	assert_true(quant_fp16_to_fp32(0x0400) == 0x1p-14f);
	assert_true(quant_fp16_to_fp32(0x0001) == 0x1p-24f);
	assert_true(quant_fp16_to_fp32(0x03ff) == 1023 * 0x1p-24f);
	assert_true(quant_fp16_to_fp32(0x8001) == -0x1p-24f);
	assert_int_equal(f2u(quant_fp16_to_fp32(0x8000)), 0x80000000u);
	assert_int_equal(f2u(quant_fp16_to_fp32(0x7c00)), 0x7f800000u);
	assert_int_equal(f2u(quant_fp16_to_fp32(0xfc00)), 0xff800000u);
	/* signalling NaN with payload 1 comes back quiet, payload kept */
	assert_int_equal(f2u(quant_fp16_to_fp32(0x7c01)), 0x7fc02000u);
	assert_int_equal(f2u(quant_fp16_to_fp32(0x7e00)), 0x7fc00000u);
}

static void test_fp32_to_fp16_rounds_to_nearest_even(void **state)
{
	(void)state;
	assert_int_equal(quant_fp32_to_fp16(1.0f), 0x3c00);
	assert_int_equal(quant_fp32_to_fp16(-0.0f), 0x8000);
	assert_int_equal(quant_fp32_to_fp16(65504.0f), 0x7bff);
	assert_int_equal(quant_fp32_to_fp16(65519.996f), 0x7bff);
	assert_int_equal(quant_fp32_to_fp16(65520.0f), 0x7c00); /* tie, odd: up to inf */
	assert_int_equal(quant_fp32_to_fp16(1e10f), 0x7c00);
	assert_int_equal(quant_fp32_to_fp16(-INFINITY), 0xfc00);
	/* ties in the normal range: 1 + 2^-11 is halfway between 1 and 1 + 2^-10 */
	assert_int_equal(quant_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00);
	assert_int_equal(quant_fp32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3c02);
	assert_int_equal(quant_fp32_to_fp16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
	/* subnormals, units of 2^-24 */
	assert_int_equal(quant_fp32_to_fp16(0x1p-24f), 0x0001);
	assert_int_equal(quant_fp32_to_fp16(0x1p-25f), 0x0000);        /* tie to even 0 */
	assert_int_equal(quant_fp32_to_fp16(0x1.000002p-25f), 0x0001); /* just above */
	assert_int_equal(quant_fp32_to_fp16(3 * 0x1p-25f), 0x0002);    /* 1.5 -> 2 */
	assert_int_equal(quant_fp32_to_fp16(5 * 0x1p-25f), 0x0002);    /* 2.5 -> 2 */
	assert_int_equal(quant_fp32_to_fp16(1e-30f), 0x0000);
	assert_int_equal(quant_fp32_to_fp16(-1e-30f), 0x8000);
	assert_int_equal(quant_fp32_to_fp16(0x1p-14f - 0x1p-26f), 0x0400); /* carries to normal */
	/* NaN: quiet, top payload bits */
	assert_int_equal(quant_fp32_to_fp16(u2f(0x7f800001u)), 0x7e00);
	assert_int_equal(quant_fp32_to_fp16(u2f(0xff812345u)), 0xfe09);
}

static void test_fp16_round_trip_all_halves(void **state)
{
	(void)state;
	for (uint32_t h = 0; h < 65536; h++) {
		float f = quant_fp16_to_fp32((uint16_t)h);
		uint16_t back = quant_fp32_to_fp16(f);
		if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) /* NaN: comes back quiet */
			assert_int_equal(back, h | 0x200);
		else
			assert_int_equal(back, h);
	}
}

#ifdef __F16C__
static void test_fp16_to_fp32_matches_f16c_all_halves(void **state)
{
	(void)state;
	for (uint32_t h = 0; h < 65536; h++)
		assert_int_equal(f2u(quant_fp16_to_fp32((uint16_t)h)), f2u(_cvtsh_ss((uint16_t)h)));
}

static void check_f32_to_f16(uint32_t u)
{
	float f = u2f(u);
	uint16_t mine = quant_fp32_to_fp16(f), ref = _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
	if (mine != ref)
		fail_msg("fp32 %08x: got %04x, F16C %04x", u, mine, ref);
}

static void test_fp32_to_fp16_matches_f16c(void **state)
{
	(void)state;
	/* every boundary region: all floats within +-4096 ulps of each half's
	 * value and of each midpoint, both signs */
	for (uint32_t h = 0; h < 0x7c01; h++) {
		uint32_t c = f2u(quant_fp16_to_fp32((uint16_t)h));
		for (uint32_t d = 0; d < 64; d++) {
			check_f32_to_f16(c + d);
			check_f32_to_f16((c + d) | 0x80000000u);
			if (c >= d)
				check_f32_to_f16(c - d);
			check_f32_to_f16(c + 0x1000u + d - 32); /* around a normal midpoint */
		}
	}
	/* a sweep of the whole float space with a prime stride */
	for (uint64_t u = 0; u < (1ull << 32); u += 65521)
		check_f32_to_f16((uint32_t)u);
	for (int i = 0; i < 2000000; i++)
		check_f32_to_f16(rng_u32());
	static const uint32_t edges[] = {0x00000000, 0x80000000, 0x00000001, 0x007fffff, 0x00800000,
	                                 0x33000000, 0x33000001, 0x32ffffff, 0x387fe000, 0x387ff000,
	                                 0x38800000, 0x477fe000, 0x477fefff, 0x477ff000, 0x477fffff,
	                                 0x7f7fffff, 0x7f800000, 0x7f800001, 0x7fc00000, 0x7fffffff,
	                                 0xffffffff, 0xff800000};
	for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
		check_f32_to_f16(edges[i]);
}
#endif

static void test_bf16_dequant_is_upper_half(void **state)
{
	(void)state;
	const uint16_t src[4] = {0x3f80, 0xc000, 0x7f80, 0x0001};
	float dst[4];
	assert_int_equal(quant_dequant_row(GGML_TYPE_BF16, src, dst, 4), 0);
	assert_true(dst[0] == 1.0f);
	assert_true(dst[1] == -2.0f);
	assert_int_equal(f2u(dst[2]), 0x7f800000u);
	assert_int_equal(f2u(dst[3]), 0x00010000u);

	/* quantising to BF16 rounds to nearest even */
	const float in[4] = {1.0f, u2f(0x3f808000u), u2f(0x3f818000u), u2f(0x3f808001u)};
	uint16_t out[4];
	assert_int_equal(quant_quantize_row(GGML_TYPE_BF16, in, out, 4), 0);
	assert_int_equal(out[0], 0x3f80);
	assert_int_equal(out[1], 0x3f80);
	assert_int_equal(out[2], 0x3f82);
	assert_int_equal(out[3], 0x3f81);
}

/* ---- row sizes and errors --------------------------------------------------- */

static void test_row_bytes_per_type(void **state)
{
	(void)state;
	assert_int_equal(quant_row_bytes(GGML_TYPE_F32, 5), 20);
	assert_int_equal(quant_row_bytes(GGML_TYPE_F16, 5), 10);
	assert_int_equal(quant_row_bytes(GGML_TYPE_BF16, 7), 14);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q8_0, 64), 68);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q4_0, 64), 36);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q8_0, 4096), 4352);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q4_0, 4096), 2304);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q8_0, 0), 0);
	/* not a multiple of the block size */
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q8_0, 33), 0);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q4_0, 16), 0);
	/* the other block types: 32 or 256 values per block */
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q4_1, 64), 40);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q5_0, 64), 44);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q5_1, 64), 48);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q2_K, 512), 168);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q3_K, 512), 220);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q4_K, 4096), 2304);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q5_K, 256), 176);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q6_K, 768), 630);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q4_1, 48), 0);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q6_K, 128), 0);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q4_K, 32), 0);
	/* unknown or unsupported types */
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q8_1, 32), 0);
	assert_int_equal(quant_row_bytes(GGML_TYPE_Q8_K, 256), 0);
	assert_int_equal(quant_row_bytes(999, 32), 0);
	/* overflow */
	assert_int_equal(quant_row_bytes(GGML_TYPE_F32, SIZE_MAX / 2), 0);
	assert_int_equal(quant_row_bytes(GGML_TYPE_F16, SIZE_MAX / 2 + 1), 0);
}

static void test_unsupported_types_and_bad_lengths(void **state)
{
	(void)state;
	float f[64] = {0};
	uint8_t b[256] = {0};
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q8_1, b, f, 32), ITT_E_UNSUPPORTED);
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q8_K, b, f, 32), ITT_E_UNSUPPORTED);
	assert_int_equal(quant_quantize_row(999, f, b, 32), ITT_E_UNSUPPORTED);
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q8_0, b, f, 40), ITT_E_INVALID);
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q5_1, b, f, 48), ITT_E_INVALID);
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q4_K, b, f, 64), ITT_E_INVALID);
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q4_0, f, b, 48), ITT_E_INVALID);
}

/* ---- known blocks ------------------------------------------------------------ */

static void test_q8_0_known_block(void **state)
{
	(void)state;
	/* amax = 127 gives d = 1, id = 1: codes are roundf(x), halves away
	 * from zero */
	float x[32];
	for (int j = 0; j < 32; j++)
		x[j] = 0.0f;
	x[0] = -127.0f;
	x[1] = 0.5f;
	x[2] = 1.5f;
	x[3] = 2.5f;
	x[4] = -0.5f;
	x[5] = -2.5f;
	x[6] = 126.4f;
	x[7] = 3.49f;
	x[8] = -0.49f;
	x[31] = 100.0f;
	const uint8_t want[34] = {0x00, 0x3c, /* d = 1.0 */
	                          0x81, 0x01, 0x02, 0x03, 0xff, 0xfd, 0x7e, 0x03, 0x00, 0x00, 0x00,
	                          0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	                          0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64};
	uint8_t got[34];
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q8_0, x, got, 32), 0);
	assert_memory_equal(got, want, 34);

	/* amax = 254: d = 2 (0x4000), id = 0.5 */
	for (int j = 0; j < 32; j++)
		x[j] = (float)(2 * j) - 30.0f; /* -30, -28, ..., 32 */
	x[5] = 254.0f;
	x[6] = -3.0f; /* -1.5 -> -2 */
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q8_0, x, got, 32), 0);
	assert_int_equal(got[0], 0x00);
	assert_int_equal(got[1], 0x40);
	for (int j = 0; j < 32; j++) {
		int want_q = j == 5 ? 127 : j == 6 ? -2 : j - 15;
		assert_int_equal((int8_t)got[2 + j], want_q);
	}
	float back[32];
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q8_0, got, back, 32), 0);
	assert_true(back[5] == 254.0f);
	assert_true(back[6] == -4.0f);
	assert_true(back[0] == -30.0f);
}

static void test_q4_0_known_block(void **state)
{
	(void)state;
	/* max = -8 gives d = 1, id = 1: code = min(15, trunc(x + 8.5)) */
	float x[32] = {0};
	x[0] = -8.0f;  /* 0 */
	x[1] = 7.0f;   /* 15 */
	x[2] = 7.4f;   /* 15.9 -> 15 */
	x[3] = 7.6f;   /* 16.1 -> 16 -> clipped 15 */
	x[4] = -0.5f;  /* 8.0 -> 8 */
	x[5] = 0.5f;   /* 9 */
	x[6] = -1.5f;  /* 7 */
	x[7] = -0.51f; /* 7.99 -> 7 */
	x[16] = 1.0f;  /* 9 */
	x[17] = -7.9f; /* 0.6 -> 0 */
	x[31] = 3.0f;  /* 11 */
	/* elements j and j+16 share byte j: low nibble j, high nibble j+16;
	 * the zeros elsewhere are code 8 */
	const uint8_t want[18] = {0x00, 0x3c, 0x90, 0x0f, 0x8f, 0x8f, 0x88, 0x89, 0x87,
	                          0x87, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0xb8};
	uint8_t got[18];
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q4_0, x, got, 32), 0);
	assert_memory_equal(got, want, 18);

	/* a positive max 8 gives d = -1 (0xbc00) and maps 8 to code 0 */
	float y[32] = {0};
	y[0] = 8.0f;
	y[1] = -7.0f; /* x*id = 7 -> 15 */
	y[2] = 2.0f;  /* -2 -> 6 */
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q4_0, y, got, 32), 0);
	assert_int_equal(got[0], 0x00);
	assert_int_equal(got[1], 0xbc);
	assert_int_equal(got[2], 0x80);
	assert_int_equal(got[3], 0x8f);
	assert_int_equal(got[4], 0x86);
	float back[32];
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q4_0, got, back, 32), 0);
	assert_true(back[0] == 8.0f);
	assert_true(back[1] == -7.0f);
	assert_true(back[2] == 2.0f);
	assert_true(back[3] == 0.0f);
}

static void test_zero_blocks_quantise_to_zero(void **state)
{
	(void)state;
	float x[64] = {0}, back[64];
	uint8_t q8[68], q4[36];
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q8_0, x, q8, 64), 0);
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q4_0, x, q4, 64), 0);
	for (int i = 0; i < 68; i++)
		assert_int_equal(q8[i], 0);
	/* ggml computes d = 0 / -8 = -0, stored as fp16 0x8000 */
	assert_int_equal(q4[0], 0x00);
	assert_int_equal(q4[1], 0x80);
	assert_int_equal(q4[2], 0x88);
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q4_0, q4, back, 64), 0);
	for (int i = 0; i < 64; i++)
		assert_true(back[i] == 0.0f);
}

/* ---- the other block types: hand-built blocks ----------------------------------
 *
 * Each block is built field by field from the format definition (quant.h,
 * ggml's block_* structs), with codes placed one at a time, so the expected
 * values below are worked out by hand from where each code lives. */

static void put_fp16(uint8_t *p, float v)
{
	uint16_t h = quant_fp32_to_fp16(v);
	p[0] = (uint8_t)h;
	p[1] = (uint8_t)(h >> 8);
}

/* Dequantises the n values of blk (bytes long) in place and at an odd
 * address, and compares both with want (as values: the sign of a zero is
 * left to the peer test). */
static void check_dequant(uint32_t type, const uint8_t *blk, size_t bytes, size_t n,
                          const float *want)
{
	assert_int_equal(quant_row_bytes(type, n), bytes);
	uint8_t *odd = malloc(bytes + 1);
	float *got = malloc(n * sizeof(float));
	memcpy(odd + 1, blk, bytes);
	for (int pass = 0; pass < 2; pass++) {
		assert_int_equal(quant_dequant_row(type, pass ? odd + 1 : blk, got, n), 0);
		for (size_t i = 0; i < n; i++)
			if (!(got[i] == want[i]))
				fail_msg("type %u value %zu: %.9g, want %.9g", type, i, got[i],
				         want[i]);
	}
	free(odd);
	free(got);
}

static void test_q4_1_known_block(void **state)
{
	(void)state;
	/* d = 0.5, m = -1: value = 0.5 code - 1; byte j holds the codes of
	 * values j (low nibble) and j + 16 (high nibble) */
	uint8_t blk[sizeof(struct block_q4_1)];
	float want[32];
	put_fp16(blk + offsetof(struct block_q4_1, d), 0.5f);
	put_fp16(blk + offsetof(struct block_q4_1, m), -1.0f);
	for (int j = 0; j < 16; j++) {
		blk[offsetof(struct block_q4_1, qs) + j] = (uint8_t)(j | (15 - j) << 4);
		want[j] = 0.5f * (float)j - 1.0f;
		want[j + 16] = 0.5f * (float)(15 - j) - 1.0f;
	}
	assert_true(want[15] == 6.5f && want[16] == 6.5f && want[31] == -1.0f);
	check_dequant(GGML_TYPE_Q4_1, blk, sizeof blk, 32, want);
}

static void test_q5_0_known_block(void **state)
{
	(void)state;
	/* d = 2: value = 2 (code - 16); fifth bits: bit 0 of qh (value 0) and
	 * bit 31 (value 31); low nibbles all 0 except byte 1 = 0x3f (value 1:
	 * 15, value 17: 3) */
	uint8_t blk[sizeof(struct block_q5_0)] = {0};
	put_fp16(blk + offsetof(struct block_q5_0, d), 2.0f);
	blk[offsetof(struct block_q5_0, qh) + 0] = 0x01;
	blk[offsetof(struct block_q5_0, qh) + 3] = 0x80;
	blk[offsetof(struct block_q5_0, qs) + 1] = 0x3f;
	float want[32];
	for (int j = 0; j < 32; j++)
		want[j] = -32.0f; /* code 0 */
	want[0] = 0.0f;           /* code 16 */
	want[31] = 0.0f;          /* code 16 */
	want[1] = -2.0f;          /* code 15 */
	want[17] = -26.0f;        /* code 3 */
	check_dequant(GGML_TYPE_Q5_0, blk, sizeof blk, 32, want);
}

static void test_q5_1_known_block(void **state)
{
	(void)state;
	/* d = 1, m = 0.5: value = code + 0.5; fifth bit of value 16 (qh bit
	 * 16); byte 0 = 0x21: value 0 code 1, value 16 code 2 | 16 */
	uint8_t blk[sizeof(struct block_q5_1)] = {0};
	put_fp16(blk + offsetof(struct block_q5_1, d), 1.0f);
	put_fp16(blk + offsetof(struct block_q5_1, m), 0.5f);
	blk[offsetof(struct block_q5_1, qh) + 2] = 0x01;
	blk[offsetof(struct block_q5_1, qs) + 0] = 0x21;
	float want[32];
	for (int j = 0; j < 32; j++)
		want[j] = 0.5f;
	want[0] = 1.5f;
	want[16] = 18.5f;
	check_dequant(GGML_TYPE_Q5_1, blk, sizeof blk, 32, want);
}

static void test_q2_K_known_block(void **state)
{
	(void)state;
	/* d = 0.5, dmin = 0.25; value = d (scale nibble) code - dmin (min
	 * nibble) in sub-blocks of 16.  Byte 37 = byte 5 of the second half's
	 * 32, bits 4-5 (the third of its four 32-value runs): value 128 + 64 + 5
	 * = 197, in sub-block 12, code 3.  Sub-block 3 (values 48-63) has
	 * minimum nibble 5. */
	uint8_t blk[sizeof(struct block_q2_K)] = {0};
	put_fp16(blk + offsetof(struct block_q2_K, d), 0.5f);
	put_fp16(blk + offsetof(struct block_q2_K, dmin), 0.25f);
	blk[offsetof(struct block_q2_K, scales) + 12] = 0x07;
	blk[offsetof(struct block_q2_K, scales) + 3] = 0x50;
	blk[offsetof(struct block_q2_K, qs) + 37] = 0x30;
	/* byte 0, bits 0-1 and 6-7: values 0 (sub-block 0, scale 0) and 96
	 * (sub-block 6) */
	blk[offsetof(struct block_q2_K, scales) + 6] = 0x02;
	blk[offsetof(struct block_q2_K, qs) + 0] = 0xc1;
	float want[256] = {0};
	for (int i = 48; i < 64; i++)
		want[i] = -1.25f;
	want[197] = 10.5f; /* 0.5 * 7 * 3 */
	want[96] = 3.0f;   /* 0.5 * 2 * 3 */
	check_dequant(GGML_TYPE_Q2_K, blk, sizeof blk, 256, want);
}

static void test_q3_K_known_block(void **state)
{
	(void)state;
	/* d = 1; 6-bit scales offset by 32.  Bytes 8-11 = 0xaa give every
	 * scale the top bits 2 (32 + low nibble); with zero low nibbles every
	 * scale is 0.  Scale 13: low nibble in the high half of byte 5 -> 5.
	 * Scale 0: low nibble 0xd in byte 0, top bits 1 in byte 8 bits 0-1 ->
	 * 29 - 32 = -3.  hmask all set (no -4) except where noted. */
	uint8_t blk[sizeof(struct block_q3_K)];
	memset(blk, 0, sizeof blk);
	memset(blk + offsetof(struct block_q3_K, hmask), 0xff, QK_K / 8);
	uint8_t *sc = blk + offsetof(struct block_q3_K, scales);
	sc[8] = sc[9] = sc[10] = sc[11] = 0xaa;
	sc[5] = 0x50;
	sc[0] = 0x0d;
	sc[8] = 0xa9;
	put_fp16(blk + offsetof(struct block_q3_K, d), 1.0f);
	uint8_t *qs = blk + offsetof(struct block_q3_K, qs);
	uint8_t *hm = blk + offsetof(struct block_q3_K, hmask);
	/* sub-block 13 = values 208-223: second half, run 2 (bits 4-5), bytes
	 * 16-31 of the half, hmask bit 4 + 2 */
	qs[32 + 16 + 3] = 0x20; /* value 211: code 2 */
	hm[16 + 4] = 0xbf;      /* value 212: code 0 - 4 */
	/* sub-block 0 = values 0-15: first half, run 0, bytes 0-15, bit 0 */
	qs[0] = 0x03; /* value 0: code 3 */
	hm[1] = 0xfe; /* value 1: code -4 */
	float want[256] = {0};
	want[211] = 10.0f;  /* 5 * 2 */
	want[212] = -20.0f; /* 5 * -4 */
	want[0] = -9.0f;    /* -3 * 3 */
	want[1] = 12.0f;    /* -3 * -4 */
	check_dequant(GGML_TYPE_Q3_K, blk, sizeof blk, 256, want);
}

/* Scales bytes of Q4_K / Q5_K with sub-block 1: scale 3, min 2; sub-block
 * 6: scale 37 (low nibble 5 in byte 10, top bits 2 in byte 2), min 19 (low
 * nibble 3 in byte 10's high half, top bits 1 in byte 6); sub-block 7:
 * scale 1 (byte 11), min 0; all others 0. */
static void put_k4_scales(uint8_t *sc)
{
	memset(sc, 0, K_SCALE_SIZE);
	sc[1] = 3;
	sc[5] = 2;
	sc[2] = 0x80;
	sc[6] = 0x40;
	sc[10] = 0x35;
	sc[11] = 0x01;
}

static void test_q4_K_known_block(void **state)
{
	(void)state;
	/* d = 0.5, dmin = 0.25.  Sub-block 1 = high nibbles of bytes 0-31,
	 * sub-block 6 = low nibbles of bytes 96-127, sub-block 7 their high
	 * nibbles. */
	uint8_t blk[sizeof(struct block_q4_K)] = {0};
	put_fp16(blk + offsetof(struct block_q4_K, d), 0.5f);
	put_fp16(blk + offsetof(struct block_q4_K, dmin), 0.25f);
	put_k4_scales(blk + offsetof(struct block_q4_K, scales));
	uint8_t *qs = blk + offsetof(struct block_q4_K, qs);
	qs[4] = 0x70;      /* value 36: code 7 (value 4: code 0) */
	qs[96 + 9] = 0xcb; /* value 201: code 11; value 233: code 12 */
	float want[256] = {0};
	for (int i = 32; i < 64; i++)
		want[i] = -0.5f; /* - 0.25 * 2 */
	for (int i = 192; i < 224; i++)
		want[i] = -4.75f; /* - 0.25 * 19 */
	want[36] = 10.0f;         /* 0.5 * 3 * 7 - 0.5 */
	want[201] = 198.75f;      /* 0.5 * 37 * 11 - 4.75 */
	want[233] = 6.0f;         /* 0.5 * 1 * 12 */
	check_dequant(GGML_TYPE_Q4_K, blk, sizeof blk, 256, want);
}

static void test_q5_K_known_block(void **state)
{
	(void)state;
	/* As Q4_K, plus fifth bits: bit s of qh[l] is sub-block s's value l */
	uint8_t blk[sizeof(struct block_q5_K)] = {0};
	put_fp16(blk + offsetof(struct block_q5_K, d), 0.5f);
	put_fp16(blk + offsetof(struct block_q5_K, dmin), 0.25f);
	put_k4_scales(blk + offsetof(struct block_q5_K, scales));
	uint8_t *qs = blk + offsetof(struct block_q5_K, qs);
	uint8_t *qh = blk + offsetof(struct block_q5_K, qh);
	qs[4] = 0x70;
	qs[96 + 9] = 0xcb;
	qh[4] = 0x02; /* value 36: code 7 + 16 */
	qh[9] = 0x40; /* value 201: code 11 + 16 */
	qh[0] = 0x80; /* value 224: code 16 */
	float want[256] = {0};
	for (int i = 32; i < 64; i++)
		want[i] = -0.5f;
	for (int i = 192; i < 224; i++)
		want[i] = -4.75f;
	want[36] = 34.0f;    /* 0.5 * 3 * 23 - 0.5 */
	want[201] = 494.75f; /* 0.5 * 37 * 27 - 4.75 */
	want[233] = 6.0f;    /* 0.5 * 1 * 12 */
	want[224] = 8.0f;    /* 0.5 * 1 * 16 */
	check_dequant(GGML_TYPE_Q5_K, blk, sizeof blk, 256, want);
}

static void test_q6_K_known_block(void **state)
{
	(void)state;
	/* d = 0.5; codes offset by 32 (all-zero bits are -32); signed scales
	 * per 16 values, 0 except scale 5 = -3 and scale 10 = 100.
	 * Sub-block 5 = values 80-95: first half, quarter 2 (high nibbles of
	 * ql 0-31, qh bits 4-5), second 16.  Sub-block 10 = values 160-175:
	 * second half, quarter 1 (low nibbles of ql 64 + 32.., qh 32.. bits
	 * 2-3), first 16. */
	uint8_t blk[sizeof(struct block_q6_K)] = {0};
	put_fp16(blk + offsetof(struct block_q6_K, d), 0.5f);
	int8_t *sc = (int8_t *)(blk + offsetof(struct block_q6_K, scales));
	uint8_t *ql = blk + offsetof(struct block_q6_K, ql);
	uint8_t *qh = blk + offsetof(struct block_q6_K, qh);
	sc[5] = -3;
	sc[10] = 100;
	ql[16 + 2] = 0xa0;      /* value 82: low bits 10 */
	qh[16 + 2] = 0x20;      /* value 82: high bits 2: code 42 - 32 = 10 */
	ql[64 + 32 + 7] = 0x0f; /* value 167: low bits 15 */
	qh[32 + 7] = 0x0c;      /* value 167: high bits 3: code 63 - 32 = 31 */
	float want[256] = {0};
	for (int i = 80; i < 96; i++)
		want[i] = 48.0f; /* 0.5 * -3 * -32 */
	for (int i = 160; i < 176; i++)
		want[i] = -1600.0f; /* 0.5 * 100 * -32 */
	want[82] = -15.0f;          /* 0.5 * -3 * 10 */
	want[167] = 1550.0f;        /* 0.5 * 100 * 31 */
	check_dequant(GGML_TYPE_Q6_K, blk, sizeof blk, 256, want);
}

/* ---- round-trip error bounds --------------------------------------------------- */

/* Random blocks with scales from 1e-3 to 1e3 and a few spiky blocks. */
static void fill_blocks(float *x, size_t n)
{
	for (size_t b = 0; b < n / 32; b++) {
		float scale = powf(10.0f, 6.0f * (float)(rng_u32() % 1000) / 1000.0f - 3.0f);
		for (int j = 0; j < 32; j++)
			x[b * 32 + j] = scale * rng_float();
		if (b % 7 == 3)
			x[b * 32 + rng_u32() % 32] = -20.0f * scale;
		if (b % 11 == 5) /* a value of each sign near the extreme */
			x[b * 32 + 1] = -x[b * 32], x[b * 32 + 2] = 0.97f * x[b * 32];
	}
}

static void test_q8_0_round_trip_error_bound(void **state)
{
	(void)state;
	enum { N = 32 * 4096 };
	float *x = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
	uint8_t *q = malloc(quant_row_bytes(GGML_TYPE_Q8_0, N));
	fill_blocks(x, N);
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q8_0, x, q, N), 0);
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q8_0, q, back, N), 0);
	for (size_t b = 0; b < N / 32; b++) {
		float amax = 0.0f;
		for (int j = 0; j < 32; j++)
			amax = fmaxf(amax, fabsf(x[b * 32 + j]));
		float d = amax / 127.0f;
		float dh = quant_fp16_to_fp32((uint16_t)(q[b * 34] | q[b * 34 + 1] << 8));
		double bound = d / 2.0 + 127.0 * fabs((double)d - dh) + 1e-6 * amax;
		for (int j = 0; j < 32; j++) {
			float v = back[b * 32 + j];
			/* dequantisation uses the fp16 scale the block holds */
			assert_true(v == dh * (float)(int8_t)q[b * 34 + 2 + j]);
			double err = fabs((double)x[b * 32 + j] - v);
			if (err > bound)
				fail_msg("block %zu elem %d: err %g > bound %g", b, j, err, bound);
		}
	}
	free(x);
	free(back);
	free(q);
}

static void test_q4_0_round_trip_error_bound(void **state)
{
	(void)state;
	enum { N = 32 * 4096 };
	float *x = malloc(N * sizeof(float)), *back = malloc(N * sizeof(float));
	uint8_t *q = malloc(quant_row_bytes(GGML_TYPE_Q4_0, N));
	fill_blocks(x, N);
	assert_int_equal(quant_quantize_row(GGML_TYPE_Q4_0, x, q, N), 0);
	assert_int_equal(quant_dequant_row(GGML_TYPE_Q4_0, q, back, N), 0);
	int clipped = 0;
	for (size_t b = 0; b < N / 32; b++) {
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < 32; j++) {
			if (amax < fabsf(x[b * 32 + j])) {
				amax = fabsf(x[b * 32 + j]);
				max = x[b * 32 + j];
			}
		}
		float d = max / -8.0f;
		float dh = quant_fp16_to_fp32((uint16_t)(q[b * 18] | q[b * 18 + 1] << 8));
		double ad = fabs(d), dd = 8.0 * fabs((double)d - dh), slack = 1e-6 * amax;
		for (int j = 0; j < 32; j++) {
			int code = j < 16 ? q[b * 18 + 2 + j] & 15 : q[b * 18 + 2 + j - 16] >> 4;
			float v = back[b * 32 + j];
			assert_true(v == dh * (float)(code - 8));
			double ratio = x[b * 32 + j] / (double)d;
			double bound = (ratio < 7.5 ? ad / 2.0 : ad) + dd + slack;
			clipped += ratio >= 7.5;
			double err = fabs((double)x[b * 32 + j] - v);
			if (err > bound)
				fail_msg("block %zu elem %d: err %g > bound %g", b, j, err, bound);
		}
	}
	assert_true(clipped > 0); /* the clipped case was exercised */
	free(x);
	free(back);
	free(q);
}

static void test_f16_quantise_is_elementwise(void **state)
{
	(void)state;
	float x[37], back[37];
	uint16_t h[37];
	for (int i = 0; i < 37; i++)
		x[i] = 1000.0f * rng_float();
	assert_int_equal(quant_quantize_row(GGML_TYPE_F16, x, h, 37), 0);
	assert_int_equal(quant_dequant_row(GGML_TYPE_F16, h, back, 37), 0);
	for (int i = 0; i < 37; i++) {
		assert_int_equal(h[i], quant_fp32_to_fp16(x[i]));
		assert_int_equal(f2u(back[i]), f2u(quant_fp16_to_fp32(h[i])));
	}
	assert_int_equal(quant_quantize_row(GGML_TYPE_F32, x, back, 37), 0);
	assert_memory_equal(x, back, sizeof x);
}

/* ---- fused matmul ----------------------------------------------------------------- */

static const uint32_t mm_types[] = {GGML_TYPE_F32,  GGML_TYPE_F16,  GGML_TYPE_BF16, GGML_TYPE_Q8_0,
                                    GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q5_0, GGML_TYPE_Q5_1,
                                    GGML_TYPE_Q2_K, GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
                                    GGML_TYPE_Q6_K};
#define N_MM_TYPES (sizeof mm_types / sizeof mm_types[0])

/* The types without a quantiser here: their test rows are random blocks. */
static const struct {
	uint32_t type;
	size_t qk, bytes, d, dmin; /* values, bytes, offsets of the fp16 scales */
} random_block_types[] = {
    {GGML_TYPE_Q4_1, 32, sizeof(struct block_q4_1), offsetof(struct block_q4_1, d),
     offsetof(struct block_q4_1, m)},
    {GGML_TYPE_Q5_0, 32, sizeof(struct block_q5_0), offsetof(struct block_q5_0, d), SIZE_MAX},
    {GGML_TYPE_Q5_1, 32, sizeof(struct block_q5_1), offsetof(struct block_q5_1, d),
     offsetof(struct block_q5_1, m)},
    {GGML_TYPE_Q2_K, 256, sizeof(struct block_q2_K), offsetof(struct block_q2_K, d),
     offsetof(struct block_q2_K, dmin)},
    {GGML_TYPE_Q3_K, 256, sizeof(struct block_q3_K), offsetof(struct block_q3_K, d), SIZE_MAX},
    {GGML_TYPE_Q4_K, 256, sizeof(struct block_q4_K), offsetof(struct block_q4_K, d),
     offsetof(struct block_q4_K, dmin)},
    {GGML_TYPE_Q5_K, 256, sizeof(struct block_q5_K), offsetof(struct block_q5_K, d),
     offsetof(struct block_q5_K, dmin)},
    {GGML_TYPE_Q6_K, 256, sizeof(struct block_q6_K), offsetof(struct block_q6_K, d), SIZE_MAX},
};
#define N_RANDOM_BLOCK_TYPES (sizeof random_block_types / sizeof random_block_types[0])

static int is_random_block_type(uint32_t type)
{
	for (size_t t = 0; t < N_RANDOM_BLOCK_TYPES; t++)
		if (random_block_types[t].type == type)
			return 1;
	return 0;
}

/* A row of K values of a type from random_block_types: random codes and
 * sub-block scales, fp16 scales of either sign between 2^-9 and 2^-8 (values
 * of order 1, never inf or NaN).  Returns 0 if type is not in the list. */
static int fill_random_blocks(uint32_t type, uint8_t *row, size_t K)
{
	for (size_t t = 0; t < N_RANDOM_BLOCK_TYPES; t++) {
		if (random_block_types[t].type != type)
			continue;
		size_t bytes = random_block_types[t].bytes;
		for (size_t b = 0; b < K / random_block_types[t].qk; b++) {
			uint8_t *blk = row + b * bytes;
			for (size_t i = 0; i < bytes; i++)
				blk[i] = (uint8_t)rng_u32();
			put_fp16(blk + random_block_types[t].d, ldexpf(1.0f + rng_float() / 2, -8));
			if (random_block_types[t].dmin != SIZE_MAX)
				put_fp16(blk + random_block_types[t].dmin,
				         ldexpf(1.0f + rng_float() / 2, -8));
		}
		return 1;
	}
	return 0;
}

struct mm_case {
	uint32_t type;
	size_t rows, K, stride;
	uint8_t *W;  /* rows * stride bytes (stride may exceed a row) */
	float *Wf;   /* [rows][K] dequantised */
	float *X;    /* [QUANT_MAX_M][K] (+1 float so X + 1 is usable) */
	double *ref; /* [QUANT_MAX_M][rows] */
	double *mag; /* [QUANT_MAX_M][rows] sum |w x| */
};

/* Rows are pad bytes apart beyond their size: 6 leaves F32 rows misaligned
 * (the AVX-512 kernel then copies them), 8 lets it read them in place. */
static void mm_case_init_pad(struct mm_case *c, uint32_t type, size_t rows, size_t K, size_t pad)
{
	c->type = type;
	c->rows = rows;
	c->K = K;
	c->stride = quant_row_bytes(type, K) + pad;
	c->W = calloc(rows, c->stride);
	c->Wf = malloc(rows * K * sizeof(float));
	c->X = malloc((QUANT_MAX_M * K + 1) * sizeof(float));
	c->ref = malloc(QUANT_MAX_M * rows * sizeof(double));
	c->mag = malloc(QUANT_MAX_M * rows * sizeof(double));
	float *tmp = malloc(K * sizeof(float));
	for (size_t r = 0; r < rows; r++) {
		for (size_t k = 0; k < K; k++)
			tmp[k] = rng_float() * (1.0f + (float)(r % 5));
		if (!fill_random_blocks(type, c->W + r * c->stride, K))
			assert_int_equal(quant_quantize_row(type, tmp, c->W + r * c->stride, K), 0);
		assert_int_equal(quant_dequant_row(type, c->W + r * c->stride, c->Wf + r * K, K),
		                 0);
	}
	for (size_t i = 0; i < QUANT_MAX_M * K + 1; i++)
		c->X[i] = rng_float();
	for (size_t m = 0; m < QUANT_MAX_M; m++)
		for (size_t r = 0; r < rows; r++) {
			double s = 0, a = 0;
			for (size_t k = 0; k < K; k++) {
				double p = (double)c->Wf[r * K + k] * c->X[m * K + k];
				s += p;
				a += fabs(p);
			}
			c->ref[m * rows + r] = s;
			c->mag[m * rows + r] = a;
		}
	free(tmp);
}

static void mm_case_init(struct mm_case *c, uint32_t type, size_t rows, size_t K)
{
	mm_case_init_pad(c, type, rows, K, 6);
}

static void mm_case_free(struct mm_case *c)
{
	free(c->W);
	free(c->Wf);
	free(c->X);
	free(c->ref);
	free(c->mag);
}

#define SENTINEL 12345.0f

/* Runs one (kernel, M, [r0, r1)) product and checks it against the double
 * reference; entries outside the range must keep the sentinel. */
static void mm_check(const struct mm_case *c, enum quant_kernel kern, size_t M, size_t r0,
                     size_t r1)
{
	size_t ldy = c->rows + 3;
	float *Y = malloc(M * ldy * sizeof(float));
	for (size_t i = 0; i < M * ldy; i++)
		Y[i] = SENTINEL;
	int rc =
	    quant_matmul_rows_kernel(kern, c->type, c->W, c->stride, c->K, c->X, M, Y, ldy, r0, r1);
	assert_int_equal(rc, 0);
	/* float summation in 16 or more lanes: a rigorous bound is
	 * (K/8 + 8) u sum |w x| with u = 2^-24; in practice the error is far
	 * smaller (2.5e-8 sum |w x| at K = 4096), so cap the bound at 1e-6 to
	 * keep the NumPy reference's 1e-4 check far away */
	double tol = fmin(((double)c->K / 8.0 + 8.0) * 0x1p-24, 1e-6);
	for (size_t m = 0; m < M; m++)
		for (size_t r = 0; r < ldy; r++) {
			float y = Y[m * ldy + r];
			if (r < r0 || r >= r1) {
				assert_true(y == SENTINEL);
				continue;
			}
			double ref = c->ref[m * c->rows + r], mag = c->mag[m * c->rows + r];
			if (fabs(y - ref) > tol * mag + 1e-30)
				fail_msg("%s type %u K %zu M %zu row %zu m %zu: %.9g vs %.9g "
				         "(mag %g)",
				         quant_kernel_name(kern), c->type, c->K, M, r, m, y, ref,
				         mag);
		}
	free(Y);
}

static void mm_check_against_reference(size_t K)
{
	const size_t rows = 37;
	const size_t ranges[][2] = {{0, 37}, {3, 30}, {36, 37}, {5, 6}, {1, 12}};
	for (size_t t = 0; t < N_MM_TYPES; t++)
		for (size_t pad = 6; pad <= 8; pad += 2) {
			if (quant_row_bytes(mm_types[t], K) == 0) /* K-quants at K < 256 */
				continue;
			/* the padding is about F32 alignment; block types once */
			if (pad == 8 && is_random_block_type(mm_types[t]))
				continue;
			struct mm_case c;
			mm_case_init_pad(&c, mm_types[t], rows, K, pad);
			for (int kern = QUANT_KERNEL_AUTO; kern < QUANT_KERNEL_COUNT; kern++) {
				if (!quant_kernel_available(kern))
					continue;
				for (size_t M = 1; M <= QUANT_MAX_M; M++)
					for (size_t i = 0; i < sizeof ranges / sizeof ranges[0];
					     i++)
						mm_check(&c, kern, M, ranges[i][0], ranges[i][1]);
			}
			mm_case_free(&c);
		}
}

static void test_matmul_matches_reference_k32(void **state)
{
	(void)state;
	mm_check_against_reference(32);
}

static void test_matmul_matches_reference_k64(void **state)
{
	(void)state;
	mm_check_against_reference(64);
}

static void test_matmul_matches_reference_k768(void **state)
{
	(void)state;
	mm_check_against_reference(768);
}

static void test_matmul_matches_reference_k4096(void **state)
{
	(void)state;
	mm_check_against_reference(4096);
}

/* Float-like types take any K; the tail step is padded (1100: a partial
 * step after a whole chunk of the AVX-512 blocked kernel). */
static void test_matmul_float_types_any_k(void **state)
{
	(void)state;
	const size_t Ks[] = {1, 7, 16, 17, 33, 47, 100, 1100};
	const uint32_t types[] = {GGML_TYPE_F32, GGML_TYPE_F16, GGML_TYPE_BF16};
	for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
		for (size_t t = 0; t < 3; t++)
			for (size_t pad = 6; pad <= 8; pad += 2) {
				struct mm_case c;
				mm_case_init_pad(&c, types[t], 11, Ks[ki], pad);
				for (int kern = QUANT_KERNEL_AUTO; kern < QUANT_KERNEL_COUNT;
				     kern++) {
					if (!quant_kernel_available(kern))
						continue;
					for (size_t M = 1; M <= QUANT_MAX_M; M += 3)
						mm_check(&c, kern, M, 2, 11);
				}
				mm_case_free(&c);
			}
}

/* Y[m][r] of a batched call equals a single call on X row m, bit for bit,
 * whatever the row range, the batch size or the alignment of X (and the
 * AVX-512 kernel takes a different code path for single and batched calls,
 * and for F32 rows that are or are not float-aligned). */
static void test_matmul_batched_equals_single_bit_exact(void **state)
{
	(void)state;
	const size_t Ks[] = {4096, 96, 45, 1100, 2304};
	for (size_t ki = 0; ki < 2 * sizeof Ks / sizeof Ks[0]; ki++)
		for (size_t t = 0; t < N_MM_TYPES; t++) {
			size_t K = Ks[ki / 2], pad = ki % 2 ? 8 : 6;
			if (quant_row_bytes(mm_types[t], K) == 0 ||
			    (pad == 8 && is_random_block_type(mm_types[t])))
				continue;
			struct mm_case c;
			mm_case_init_pad(&c, mm_types[t], 29, K, pad);
			size_t ldy = c.rows;
			float *Yb = malloc(QUANT_MAX_M * ldy * sizeof(float));
			float *Ys = malloc(ldy * sizeof(float));
			float *Xs = malloc((K + 1) * sizeof(float));
			for (int kern = QUANT_KERNEL_SCALAR; kern < QUANT_KERNEL_COUNT; kern++) {
				if (!quant_kernel_available(kern))
					continue;
				for (size_t M = 1; M <= QUANT_MAX_M; M++) {
					assert_int_equal(
					    quant_matmul_rows_kernel(kern, c.type, c.W, c.stride, K,
					                             c.X, M, Yb, ldy, 0, c.rows),
					    0);
					for (size_t m = 0; m < M; m++) {
						/* a single row, copied to a misaligned buffer,
						 * computed in two pieces of the row range */
						memcpy(Xs + 1, c.X + m * K, K * sizeof(float));
						size_t cut = (M * 7 + m) % c.rows;
						assert_int_equal(quant_matmul_rows_kernel(
						                     kern, c.type, c.W, c.stride, K,
						                     Xs + 1, 1, Ys, 0, 0, cut),
						                 0);
						assert_int_equal(quant_matmul_rows_kernel(
						                     kern, c.type, c.W, c.stride, K,
						                     Xs + 1, 1, Ys, 0, cut, c.rows),
						                 0);
						if (memcmp(Ys, Yb + m * ldy, ldy * sizeof(float)))
							fail_msg("%s type %u K %zu M %zu m %zu: "
							         "batched != single",
							         quant_kernel_name(kern), c.type, K,
							         M, m);
					}
				}
			}
			free(Yb);
			free(Ys);
			free(Xs);
			mm_case_free(&c);
		}
}

/* The block types without a kernel of their own (Q4_1 .. Q6_K) are decoded
 * row by row: every kernel's product equals, bit for bit, the same kernel's
 * F32 product on the rows quant_dequant_row gives, for any M (and so
 * whichever of the AVX-512 kernels each type picks for that M). */
static void test_matmul_block_types_equal_f32_on_dequantised(void **state)
{
	(void)state;
	const size_t Ks[] = {96, 256, 2304}; /* 2304: past one chunk of the blocked kernel */
	for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
		for (size_t t = 0; t < N_RANDOM_BLOCK_TYPES; t++) {
			size_t K = Ks[ki];
			uint32_t type = random_block_types[t].type;
			if (quant_row_bytes(type, K) == 0)
				continue;
			struct mm_case c;
			mm_case_init_pad(&c, type, 19, K, 6);
			size_t ldy = c.rows;
			float *Yq = malloc(QUANT_MAX_M * ldy * sizeof(float));
			float *Yf = malloc(QUANT_MAX_M * ldy * sizeof(float));
			for (int kern = QUANT_KERNEL_SCALAR; kern < QUANT_KERNEL_COUNT; kern++) {
				if (!quant_kernel_available(kern))
					continue;
				for (size_t M = 1; M <= QUANT_MAX_M; M++) {
					assert_int_equal(
					    quant_matmul_rows_kernel(kern, type, c.W, c.stride, K,
					                             c.X, M, Yq, ldy, 0, c.rows),
					    0);
					assert_int_equal(
					    quant_matmul_rows_kernel(kern, GGML_TYPE_F32, c.Wf,
					                             K * sizeof(float), K, c.X, M,
					                             Yf, ldy, 0, c.rows),
					    0);
					if (memcmp(Yq, Yf, M * ldy * sizeof(float)))
						fail_msg("%s type %u K %zu M %zu: != F32 on the "
						         "dequantised rows",
						         quant_kernel_name(kern), type, K, M);
				}
			}
			free(Yq);
			free(Yf);
			mm_case_free(&c);
		}
}

/* n bytes that end where an inaccessible page begins. */
struct fenced {
	uint8_t *map;
	size_t map_len;
	void *p;
};

static void *fenced_alloc(struct fenced *f, size_t n)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t span = (n + page - 1) / page * page;
	f->map_len = span + page;
	f->map = mmap(NULL, f->map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(f->map != MAP_FAILED);
	assert_int_equal(mprotect(f->map + span, page, PROT_NONE), 0);
	f->p = f->map + span - n;
	return f->p;
}

static void fenced_free(struct fenced *f)
{
	munmap(f->map, f->map_len);
}

/* No kernel reads a byte past the last weight row or the last input, even
 * with a partial last step and rows packed without padding. */
static void test_matmul_reads_nothing_past_the_ends(void **state)
{
	(void)state;
	const size_t Ks[] = {45, 100, 1100, 64, 512};
	for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
		for (size_t t = 0; t < N_MM_TYPES; t++) {
			size_t K = Ks[ki];
			if (quant_row_bytes(mm_types[t], K) == 0)
				continue;
			struct mm_case c;
			mm_case_init_pad(&c, mm_types[t], 13, K, 0);
			struct fenced fw, fx;
			uint8_t *W = fenced_alloc(&fw, c.rows * c.stride);
			memcpy(W, c.W, c.rows * c.stride);
			for (size_t M = 1; M <= QUANT_MAX_M; M++) {
				float *X = fenced_alloc(&fx, M * K * sizeof(float));
				memcpy(X, c.X, M * K * sizeof(float));
				float *Y = malloc(M * c.rows * sizeof(float));
				for (int kern = QUANT_KERNEL_SCALAR; kern < QUANT_KERNEL_COUNT;
				     kern++)
					if (quant_kernel_available(kern))
						assert_int_equal(quant_matmul_rows_kernel(
						                     kern, c.type, W, c.stride, K,
						                     X, M, Y, c.rows, 0, c.rows),
						                 0);
				free(Y);
				fenced_free(&fx);
			}
			fenced_free(&fw);
			mm_case_free(&c);
		}
}

static void test_matmul_auto_is_best_kernel(void **state)
{
	(void)state;
	enum quant_kernel best = QUANT_KERNEL_SCALAR;
	for (int k = QUANT_KERNEL_SCALAR; k < QUANT_KERNEL_COUNT; k++)
		if (quant_kernel_available(k))
			best = k;
	struct mm_case c;
	mm_case_init(&c, GGML_TYPE_Q8_0, 9, 256);
	float Ya[9 * 4], Yb[9 * 4];
	assert_int_equal(quant_matmul_rows(c.type, c.W, c.stride, 256, c.X, 4, Ya, 9, 0, 9), 0);
	assert_int_equal(
	    quant_matmul_rows_kernel(best, c.type, c.W, c.stride, 256, c.X, 4, Yb, 9, 0, 9), 0);
	assert_memory_equal(Ya, Yb, sizeof Ya);
	mm_case_free(&c);
}

static void test_matmul_rejects_bad_arguments(void **state)
{
	(void)state;
	uint8_t W[4 * 68] = {0};
	float X[QUANT_MAX_M + 1][64] = {{0}}, Y[(QUANT_MAX_M + 1) * 4];
	const uint32_t q8 = GGML_TYPE_Q8_0;
	assert_int_equal(quant_matmul_rows(GGML_TYPE_Q8_1, W, 72, 64, X[0], 1, Y, 4, 0, 4),
	                 ITT_E_UNSUPPORTED);
	assert_int_equal(quant_matmul_rows(GGML_TYPE_Q8_K, W, 68, 64, X[0], 1, Y, 4, 0, 4),
	                 ITT_E_UNSUPPORTED);
	/* K-quants need whole super-blocks of 256 */
	assert_int_equal(quant_matmul_rows(GGML_TYPE_Q6_K, W, 68, 64, X[0], 1, Y, 4, 0, 4),
	                 ITT_E_INVALID);
	assert_int_equal(quant_matmul_rows(q8, W, 68, 64, X[0], 0, Y, 4, 0, 4), ITT_E_INVALID);
	assert_int_equal(quant_matmul_rows(q8, W, 68, 64, X[0], QUANT_MAX_M + 1, Y, 4, 0, 4),
	                 ITT_E_INVALID);
	assert_int_equal(quant_matmul_rows(q8, W, 68, 48, X[0], 1, Y, 4, 0, 4), ITT_E_INVALID);
	assert_int_equal(quant_matmul_rows(q8, W, 60, 64, X[0], 1, Y, 4, 0, 4), ITT_E_INVALID);
	assert_int_equal(quant_matmul_rows(q8, W, 68, 64, X[0], 1, Y, 4, 3, 2), ITT_E_INVALID);
	assert_int_equal(quant_matmul_rows(q8, W, 68, 64, X[0], 2, Y, 3, 0, 4), ITT_E_INVALID);
	assert_int_equal(quant_matmul_rows(q8, NULL, 68, 64, X[0], 1, Y, 4, 0, 4), ITT_E_INVALID);
	/* an empty range is a no-op */
	Y[0] = SENTINEL;
	assert_int_equal(quant_matmul_rows(q8, W, 68, 64, X[0], 1, Y, 4, 2, 2), 0);
	assert_true(Y[0] == SENTINEL);
	for (int k = QUANT_KERNEL_SCALAR; k < QUANT_KERNEL_COUNT; k++)
		if (!quant_kernel_available(k))
			assert_int_equal(
			    quant_matmul_rows_kernel(k, q8, W, 68, 64, X[0], 1, Y, 4, 0, 4),
			    ITT_E_UNSUPPORTED);
	assert_int_equal(
	    quant_matmul_rows_kernel(QUANT_KERNEL_COUNT, q8, W, 68, 64, X[0], 1, Y, 4, 0, 4),
	    ITT_E_UNSUPPORTED);
	assert_string_equal(quant_kernel_name(QUANT_KERNEL_SCALAR), "scalar");
}

/* ---- integer products with quantised activations (quant-dot.h) ------------------ */

/* Q8_0 by hand: amax 127 gives d = 1 and multiplier 127 / 127 = 1, and the
 * ties go to even (ggml's x86 quantiser; its portable _ref would round 0.5
 * to 1 and 2.5 to 3).  Second block: amax 2, multiplier 63.5. */
static void test_act_q8_0_known_blocks(void **state)
{
	(void)state;
	float x[64] = {0};
	x[0] = 127.0f, x[1] = -63.5f, x[2] = 0.5f, x[3] = 1.5f, x[4] = 2.5f, x[5] = -0.5f;
	x[6] = -3.25f, x[31] = 126.6f;
	x[32] = -2.0f, x[33] = 1.0f, x[34] = 0.5f, x[35] = 0.25f, x[36] = 1.0f / 127.0f;
	uint8_t y[2 * sizeof(struct block_q8_0)];
	assert_int_equal(quant_dot_act_row_bytes(GGML_TYPE_Q4_0, 64), sizeof y);
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_Q4_0, x, y, 64), 0);
	struct block_q8_0 b[2];
	memcpy(b, y, sizeof b);
	assert_int_equal(b[0].d, 0x3c00); /* 1.0 */
	const int8_t q0[32] = {127, -64, 0, 2, 2, 0, -3, [31] = 127};
	assert_memory_equal(b[0].qs, q0, 32);
	assert_int_equal(b[1].d, quant_fp32_to_fp16(2.0f / 127.0f));
	/* 63.5 -> 64 (even), 31.75 -> 32, 15.875 -> 16, 63.5 / 127 = 0.5 -> 0 */
	const int8_t q1[32] = {-127, 64, 32, 16, 0};
	assert_memory_equal(b[1].qs, q1, 32);
	/* the same weights' Q8_0 type pairs with Q8_0 activations */
	uint8_t y8[sizeof y];
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_Q8_0, x, y8, 64), 0);
	assert_memory_equal(y, y8, sizeof y);
}

/* Q8_1 adds s = fp16(d * sum q): 127 - 64 + 2 + 2 - 3 + 127 = 191. */
static void test_act_q8_1_known_block(void **state)
{
	(void)state;
	float x[32] = {127.0f, -63.5f, 0.5f, 1.5f, 2.5f, -0.5f, -3.25f, [31] = 126.6f};
	struct block_q8_1 b;
	assert_int_equal(quant_dot_act_row_bytes(GGML_TYPE_Q4_1, 32), sizeof b);
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_Q5_1, x, &b, 32), 0);
	assert_int_equal(b.d, 0x3c00);
	assert_int_equal(b.s, quant_fp32_to_fp16(191.0f));
	const int8_t q[32] = {127, -64, 0, 2, 2, 0, -3, [31] = 127};
	assert_memory_equal(b.qs, q, 32);
}

/* Q8_K by hand: the first value of largest magnitude sets the sign of the
 * scale (iscale = -127 / max), ties to even, bsums per 16 values. */
static void test_act_q8_K_known_blocks(void **state)
{
	(void)state;
	float x[512] = {0};
	/* super-block 0: max -4 at 5 (4 at 7 does not replace it) */
	x[0] = 2.0f, x[1] = 1.0f, x[5] = -4.0f, x[7] = 4.0f, x[16] = -0.5f / 31.75f;
	x[17] = 1.5f / 31.75f, x[255] = 0.75f;
	/* super-block 1: max 8 at 0 */
	x[256] = 8.0f, x[257] = -8.0f, x[258] = 1.0f, x[300] = 0.5f;
	struct block_q8_K b[2];
	assert_int_equal(quant_dot_act_row_bytes(GGML_TYPE_Q4_K, 512), sizeof b);
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_Q6_K, x, b, 512), 0);
	/* iscale = 31.75: 63.5 -> 64, 31.75 -> 32, -127, 127, -0.5 -> 0, 1.5 -> 2,
	 * 23.8125 -> 24 */
	assert_true(b[0].d == 1.0f / 31.75f);
	int8_t q0[256] = {64, 32, 0, 0, 0, -127, 0, 127, [16] = 0, [17] = 2, [255] = 24};
	assert_memory_equal(b[0].qs, q0, 256);
	assert_int_equal(b[0].bsums[0], 64 + 32 - 127 + 127);
	assert_int_equal(b[0].bsums[1], 2);
	assert_int_equal(b[0].bsums[15], 24);
	/* iscale = -15.875: 1 -> -15.875 -> -16, 0.5 -> -7.9375 -> -8 */
	assert_true(b[1].d == 1.0f / -15.875f);
	int8_t q1[256] = {-127, 127, -16, [44] = -8};
	assert_memory_equal(b[1].qs, q1, 256);
	assert_int_equal(b[1].bsums[0], -16);
	assert_int_equal(b[1].bsums[2], -8);
	/* all zero: d = 0, codes 0 */
	float z[256] = {0};
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_Q4_K, z, b, 256), 0);
	assert_true(b[0].d == 0.0f);
	assert_int_equal(b[0].bsums[3], 0);
}

static void test_act_types_and_bad_lengths(void **state)
{
	(void)state;
	assert_int_equal(quant_dot_act_type(GGML_TYPE_Q8_0), GGML_TYPE_Q8_0);
	assert_int_equal(quant_dot_act_type(GGML_TYPE_Q5_0), GGML_TYPE_Q8_0);
	assert_int_equal(quant_dot_act_type(GGML_TYPE_Q4_1), GGML_TYPE_Q8_1);
	assert_int_equal(quant_dot_act_type(GGML_TYPE_Q3_K), GGML_TYPE_Q8_K);
	assert_int_equal(quant_dot_act_type(GGML_TYPE_F16), 0);
	float x[256] = {0};
	uint8_t y[512];
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_F32, x, y, 32), ITT_E_UNSUPPORTED);
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_Q4_K, x, y, 32), ITT_E_INVALID);
	assert_int_equal(quant_dot_quantize_row(GGML_TYPE_Q4_0, x, y, 33), ITT_E_INVALID);
	assert_int_equal(quant_dot_act_row_bytes(GGML_TYPE_Q6_K, 128), 0);
	float Y[4];
	assert_int_equal(quant_dot_rows(GGML_TYPE_F32, y, 4, 1, y, 0, 1, Y, 0, 0, 1),
	                 ITT_E_UNSUPPORTED);
	assert_int_equal(quant_dot_rows(GGML_TYPE_Q4_0, y, 18, 32, y, 34, 0, Y, 0, 0, 1),
	                 ITT_E_INVALID);
	assert_int_equal(quant_dot_rows(GGML_TYPE_Q4_0, y, 18, 48, y, 34, 1, Y, 0, 0, 1),
	                 ITT_E_INVALID);
	assert_int_equal(quant_dot_rows(GGML_TYPE_Q4_0, y, 18, 32, y, 34, 2, Y, 1, 0, 2),
	                 ITT_E_INVALID);
	assert_int_equal(quant_dot_rows(GGML_TYPE_Q4_0, y, 18, 32, y, 34, 1, Y, 0, 1, 1), 0);
}

static const uint32_t dot_types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1,
                                     GGML_TYPE_Q5_0, GGML_TYPE_Q5_1, GGML_TYPE_Q2_K,
                                     GGML_TYPE_Q3_K, GGML_TYPE_Q4_K, GGML_TYPE_Q5_K,
                                     GGML_TYPE_Q6_K};
#define N_DOT_TYPES (sizeof dot_types / sizeof dot_types[0])

/* Quantised activations of an mm_case and the double-precision product of
 * the dequantised weights with the dequantised activations.  For Q8_1 the
 * minimum's term uses the block's stored s = fp16(d sum q) (that is the
 * format's definition, as in ggml), so the reference adds
 * m (s - d sum q) per block. */
struct dot_case {
	size_t ab;     /* activation row bytes */
	uint8_t *Xq;   /* [QUANT_MAX_M][ab] */
	double *ref;   /* [QUANT_MAX_M][rows] */
	double *mag;   /* sum |w x| */
};

static void dot_case_init(struct dot_case *d, const struct mm_case *c)
{
	size_t K = c->K, at = quant_dot_act_type(c->type);
	d->ab = quant_dot_act_row_bytes(c->type, K);
	d->Xq = malloc(QUANT_MAX_M * d->ab);
	d->ref = malloc(QUANT_MAX_M * c->rows * sizeof(double));
	d->mag = malloc(QUANT_MAX_M * c->rows * sizeof(double));
	double *xd = malloc(K * sizeof(double));
	double *corr = calloc(K / 32, sizeof(double)); /* Q8_1: s - d sum q per block */
	for (size_t m = 0; m < QUANT_MAX_M; m++) {
		uint8_t *a = d->Xq + m * d->ab;
		assert_int_equal(quant_dot_quantize_row(c->type, c->X + m * K, a, K), 0);
		for (size_t b = 0; b < K / (at == GGML_TYPE_Q8_K ? 256 : 32); b++) {
			if (at == GGML_TYPE_Q8_K) {
				struct block_q8_K q;
				memcpy(&q, a + b * sizeof q, sizeof q);
				for (int j = 0; j < 256; j++)
					xd[b * 256 + j] = (double)q.d * q.qs[j];
			} else if (at == GGML_TYPE_Q8_0) {
				struct block_q8_0 q;
				memcpy(&q, a + b * sizeof q, sizeof q);
				for (int j = 0; j < 32; j++)
					xd[b * 32 + j] = (double)quant_fp16_to_fp32(q.d) * q.qs[j];
			} else {
				struct block_q8_1 q;
				memcpy(&q, a + b * sizeof q, sizeof q);
				double dd = quant_fp16_to_fp32(q.d), sum = 0;
				for (int j = 0; j < 32; j++) {
					xd[b * 32 + j] = dd * q.qs[j];
					sum += q.qs[j];
				}
				corr[b] = quant_fp16_to_fp32(q.s) - dd * sum;
			}
		}
		for (size_t r = 0; r < c->rows; r++) {
			double s = 0, mg = 0;
			for (size_t k = 0; k < K; k++) {
				double p = (double)c->Wf[r * K + k] * xd[k];
				s += p;
				mg += fabs(p);
			}
			if (at == GGML_TYPE_Q8_1) {
				size_t bb = quant_row_bytes(c->type, 32);
				for (size_t b = 0; b < K / 32; b++) {
					/* m of Q4_1 / Q5_1 is the second fp16 */
					const uint8_t *blk = c->W + r * c->stride + b * bb;
					double mw = quant_fp16_to_fp32(
					    (uint16_t)(blk[2] | blk[3] << 8));
					s += mw * corr[b];
					mg += fabs(mw * corr[b]);
				}
			}
			d->ref[m * c->rows + r] = s;
			d->mag[m * c->rows + r] = mg;
		}
	}
	free(xd);
	free(corr);
}

static void dot_case_free(struct dot_case *d)
{
	free(d->Xq);
	free(d->ref);
	free(d->mag);
}

/* Every kernel against the double reference.  Roundings: one per fma and
 * per scale product, the int -> float conversion of a K-quant unit's sum,
 * and the 16-lane reduction: within (K/16 + 8) 2^-24 sum |w x| (the
 * weights with a minimum split each value in two terms, d sc q - dmin mn,
 * that could cancel; on these rows the error stays below a quarter of the
 * bound all the same). */
static void test_dot_matches_reference(void **state)
{
	(void)state;
	const size_t Ks[] = {32, 256, 768, 4096};
	for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
		for (size_t t = 0; t < N_DOT_TYPES; t++) {
			size_t K = Ks[ki];
			if (quant_row_bytes(dot_types[t], K) == 0)
				continue;
			struct mm_case c;
			struct dot_case d;
			mm_case_init(&c, dot_types[t], 37, K);
			dot_case_init(&d, &c);
			double tol = ((double)K / 16.0 + 8.0) * 0x1p-24;
			size_t ldy = c.rows + 3;
			float *Y = malloc(QUANT_MAX_M * ldy * sizeof(float));
			for (int kern = QUANT_KERNEL_AUTO; kern < QUANT_KERNEL_COUNT; kern++) {
				if (!quant_kernel_available(kern))
					continue;
				for (size_t M = 1; M <= QUANT_MAX_M; M += 5) {
					for (size_t i = 0; i < M * ldy; i++)
						Y[i] = SENTINEL;
					assert_int_equal(quant_dot_rows_kernel(
					                     kern, c.type, c.W, c.stride, K, d.Xq,
					                     d.ab, M, Y, ldy, 2, 35),
					                 0);
					for (size_t m = 0; m < M; m++)
						for (size_t r = 0; r < ldy; r++) {
							float y = Y[m * ldy + r];
							if (r < 2 || r >= 35) {
								assert_true(y == SENTINEL);
								continue;
							}
							double ref = d.ref[m * c.rows + r];
							double mg = d.mag[m * c.rows + r];
							if (fabs(y - ref) > tol * mg + 1e-30)
								fail_msg("%s type %u K %zu M %zu r %zu: "
								         "%.9g vs %.9g (mag %g)",
								         quant_kernel_name(kern),
								         c.type, K, M, r, y, ref, mg);
						}
				}
			}
			free(Y);
			dot_case_free(&d);
			mm_case_free(&c);
		}
}

/* All kernels give the scalar kernel's bits; a batched call equals single
 * calls on each activation row, computed in two pieces of the row range. */
static void test_dot_kernels_agree_and_batched_equals_single(void **state)
{
	(void)state;
	/* 736: 23 blocks, an odd tail of a 16-block group */
	const size_t Ks[] = {256, 768, 2304, 736};
	for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++)
		for (size_t t = 0; t < N_DOT_TYPES; t++) {
			size_t K = Ks[ki];
			if (quant_row_bytes(dot_types[t], K) == 0)
				continue;
			struct mm_case c;
			struct dot_case d;
			mm_case_init(&c, dot_types[t], 29, K);
			dot_case_init(&d, &c);
			size_t ldy = c.rows;
			float *Yref = malloc(QUANT_MAX_M * ldy * sizeof(float));
			float *Yb = malloc(QUANT_MAX_M * ldy * sizeof(float));
			float *Ys = malloc(ldy * sizeof(float));
			uint8_t *xs = malloc(d.ab + 1);
			assert_int_equal(quant_dot_rows_kernel(QUANT_KERNEL_SCALAR, c.type, c.W,
			                                       c.stride, K, d.Xq, d.ab, QUANT_MAX_M,
			                                       Yref, ldy, 0, c.rows),
			                 0);
			for (int kern = QUANT_KERNEL_SCALAR; kern < QUANT_KERNEL_COUNT; kern++) {
				if (!quant_kernel_available(kern))
					continue;
				for (size_t M = 1; M <= QUANT_MAX_M; M += (M < 8 ? 1 : 7)) {
					assert_int_equal(quant_dot_rows_kernel(kern, c.type, c.W,
					                                       c.stride, K, d.Xq, d.ab,
					                                       M, Yb, ldy, 0, c.rows),
					                 0);
					if (memcmp(Yb, Yref, M * ldy * sizeof(float)))
						fail_msg("%s type %u K %zu M %zu: differs from scalar",
						         quant_kernel_name(kern), c.type, K, M);
					for (size_t m = 0; m < M; m++) {
						/* misaligned copy of one row, two row pieces */
						memcpy(xs + 1, d.Xq + m * d.ab, d.ab);
						size_t cut = (M * 7 + m) % c.rows;
						assert_int_equal(quant_dot_rows_kernel(
						                     kern, c.type, c.W, c.stride, K,
						                     xs + 1, 0, 1, Ys, 0, 0, cut),
						                 0);
						assert_int_equal(quant_dot_rows_kernel(
						                     kern, c.type, c.W, c.stride, K,
						                     xs + 1, 0, 1, Ys, 0, cut, c.rows),
						                 0);
						if (memcmp(Ys, Yb + m * ldy, ldy * sizeof(float)))
							fail_msg("%s type %u K %zu M %zu m %zu: "
							         "batched != single",
							         quant_kernel_name(kern), c.type, K, M,
							         m);
					}
				}
			}
			free(Yref);
			free(Yb);
			free(Ys);
			free(xs);
			dot_case_free(&d);
			mm_case_free(&c);
		}
}

/* The SIMD kernels have their own code for the most used types (so the
 * agreement test above compares two implementations, not one twice). */
static void test_dot_simd_kernels_cover_main_types(void **state)
{
	(void)state;
	const uint32_t main_types[] = {GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_K,
	                               GGML_TYPE_Q6_K};
	for (int kern = QUANT_KERNEL_AVX2; kern < QUANT_KERNEL_COUNT; kern++)
		for (size_t t = 0; t < 4; t++)
			if (quant_kernel_available(kern))
				assert_true(quant_dot_kernel_has_type(kern, main_types[t]));
	assert_false(quant_dot_kernel_has_type(QUANT_KERNEL_SCALAR, GGML_TYPE_F32));
	assert_true(quant_dot_kernel_has_type(QUANT_KERNEL_SCALAR, GGML_TYPE_Q3_K));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fp16_to_fp32_known_values),
	    cmocka_unit_test(test_fp32_to_fp16_rounds_to_nearest_even),
	    cmocka_unit_test(test_fp16_round_trip_all_halves),
#ifdef __F16C__
	    cmocka_unit_test(test_fp16_to_fp32_matches_f16c_all_halves),
	    cmocka_unit_test(test_fp32_to_fp16_matches_f16c),
#endif
	    cmocka_unit_test(test_bf16_dequant_is_upper_half),
	    cmocka_unit_test(test_row_bytes_per_type),
	    cmocka_unit_test(test_unsupported_types_and_bad_lengths),
	    cmocka_unit_test(test_q8_0_known_block),
	    cmocka_unit_test(test_q4_0_known_block),
	    cmocka_unit_test(test_zero_blocks_quantise_to_zero),
	    cmocka_unit_test(test_q4_1_known_block),
	    cmocka_unit_test(test_q5_0_known_block),
	    cmocka_unit_test(test_q5_1_known_block),
	    cmocka_unit_test(test_q2_K_known_block),
	    cmocka_unit_test(test_q3_K_known_block),
	    cmocka_unit_test(test_q4_K_known_block),
	    cmocka_unit_test(test_q5_K_known_block),
	    cmocka_unit_test(test_q6_K_known_block),
	    cmocka_unit_test(test_q8_0_round_trip_error_bound),
	    cmocka_unit_test(test_q4_0_round_trip_error_bound),
	    cmocka_unit_test(test_f16_quantise_is_elementwise),
	    cmocka_unit_test(test_matmul_matches_reference_k32),
	    cmocka_unit_test(test_matmul_matches_reference_k64),
	    cmocka_unit_test(test_matmul_matches_reference_k768),
	    cmocka_unit_test(test_matmul_matches_reference_k4096),
	    cmocka_unit_test(test_matmul_float_types_any_k),
	    cmocka_unit_test(test_matmul_batched_equals_single_bit_exact),
	    cmocka_unit_test(test_matmul_block_types_equal_f32_on_dequantised),
	    cmocka_unit_test(test_matmul_reads_nothing_past_the_ends),
	    cmocka_unit_test(test_matmul_auto_is_best_kernel),
	    cmocka_unit_test(test_matmul_rejects_bad_arguments),
	    cmocka_unit_test(test_act_q8_0_known_blocks),
	    cmocka_unit_test(test_act_q8_1_known_block),
	    cmocka_unit_test(test_act_q8_K_known_blocks),
	    cmocka_unit_test(test_act_types_and_bad_lengths),
	    cmocka_unit_test(test_dot_matches_reference),
	    cmocka_unit_test(test_dot_kernels_agree_and_batched_equals_single),
	    cmocka_unit_test(test_dot_simd_kernels_cover_main_types),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
