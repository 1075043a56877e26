/* quant: half precision, bfloat16, Q8_0 and Q4_0 rows, and the fused
 * "dequantise and multiply" kernels used for decode and small batches.
 *
 * Contract: see quant.h.  Conversions are portable C (bit manipulation);
 * the matmul kernels come in three flavours selected at compile time
 * (scalar, always built; AVX2+FMA+F16C; AVX-512F), and tests may call each
 * one through quant_matmul_rows_kernel.
 *
 * Invariants of every matmul kernel:
 *   - a dequantised weight d * q is exact in float (11-bit d times a 4- or
 *     8-bit q), so the only rounding is in the float summation;
 *   - each (input row m, weight row r) pair owns one vector accumulator
 *     that sees the K products in one fixed order and is reduced by one
 *     fixed sequence, whatever M, the tile shape, r0, r1 or ldy are; tiles
 *     only decide which pairs run side by side, never how one pair sums.
 *     That is what makes batched runs equal single runs bit for bit. */
#include "quant.h"

#include <math.h>
#include <string.h>

#include "err.h"
#include "gguf.h"

#if defined(__AVX512F__) && defined(__FMA__) && defined(__F16C__)
#define QUANT_HAVE_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QUANT_HAVE_AVX2 1
#endif
#if defined(QUANT_HAVE_AVX512) || defined(QUANT_HAVE_AVX2)
#include <immintrin.h>
#endif

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- scalar conversions ------------------------------------------------ */

static inline uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	return u;
}

static inline float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

static inline uint16_t load_u16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

float quant_fp16_to_fp32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t mant = h & 0x3ffu;

	if (exp == 0x1f) /* inf, or NaN made quiet with its payload kept (as F16C) */
		return bits_f32(sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0));
	if (exp != 0)
		return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
	if (mant == 0)
		return bits_f32(sign);
	/* Subnormal half: mant * 2^-24; shift the leading one up to bit 10. */
	uint32_t e = 113;
	do {
		mant <<= 1;
		e--;
	} while (!(mant & 0x400u));
	return bits_f32(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

uint16_t quant_fp32_to_fp16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	u &= 0x7fffffffu;

	if (u > 0x7f800000u) /* NaN: quiet, top payload bits kept (as F16C) */
		return sign | 0x7e00u | ((u >> 13) & 0x3ffu);
	if (u >= 0x477ff000u) /* >= 65520 rounds to infinity */
		return sign | 0x7c00u;
	if (u >= 0x38800000u) { /* normal half: rebias, round to nearest even */
		uint32_t r = u - (112u << 23);
		uint32_t h = r >> 13, rem = r & 0x1fffu;
		h += rem > 0x1000u || (rem == 0x1000u && (h & 1));
		return sign | (uint16_t)h;
	}
	/* Subnormal half (or zero): the result counts units of 2^-24. */
	uint32_t e = u >> 23;
	if (e < 102) /* below 2^-25: rounds to zero */
		return sign;
	uint32_t m = (u & 0x7fffffu) | 0x800000u;
	uint32_t shift = 126 - e; /* 14..24 */
	uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
	h += rem > half || (rem == half && (h & 1));
	return sign | (uint16_t)h; /* may carry into the smallest normal: right */
}

static inline float bf16_to_fp32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

/* Round to nearest even; NaN stays NaN (made quiet). */
static inline uint16_t fp32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40u);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}

/* ---- row sizes, dequantisation, quantisation --------------------------- */

size_t quant_row_bytes(uint32_t type, size_t n)
{
	switch (type) {
	case GGML_TYPE_F32: return n <= SIZE_MAX / 4 ? n * 4 : 0;
	case GGML_TYPE_F16:
	case GGML_TYPE_BF16: return n <= SIZE_MAX / 2 ? n * 2 : 0;
	case GGML_TYPE_Q8_0: return n % QK8_0 ? 0 : n / QK8_0 * sizeof(struct block_q8_0);
	case GGML_TYPE_Q4_0: return n % QK4_0 ? 0 : n / QK4_0 * sizeof(struct block_q4_0);
	}
	return 0;
}

/* Block b of a Q8_0 / Q4_0 row into 32 floats (portable). */
static inline void dequant_block_q8_0(const uint8_t *row, size_t b, float *out)
{
	const uint8_t *blk = row + b * sizeof(struct block_q8_0);
	float d = quant_fp16_to_fp32(load_u16(blk));
	for (int j = 0; j < QK8_0; j++)
		out[j] = d * (float)(int8_t)blk[2 + j];
}

static inline void dequant_block_q4_0(const uint8_t *row, size_t b, float *out)
{
	const uint8_t *blk = row + b * sizeof(struct block_q4_0);
	float d = quant_fp16_to_fp32(load_u16(blk));
	for (int j = 0; j < QK4_0 / 2; j++) {
		out[j] = d * (float)((blk[2 + j] & 15) - 8);
		out[j + QK4_0 / 2] = d * (float)((blk[2 + j] >> 4) - 8);
	}
}

int quant_dequant_row(uint32_t type, const void *src, float *dst, size_t n)
{
	const uint8_t *s = src;
	size_t i = 0;

	switch (type) {
	case GGML_TYPE_F32: memcpy(dst, src, n * sizeof(float)); return 0;
	case GGML_TYPE_F16:
#if defined(QUANT_HAVE_AVX512)
		for (; i + 16 <= n; i += 16)
			_mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(
			                              (const __m256i *)(s + 2 * i))));
#elif defined(QUANT_HAVE_AVX2)
		for (; i + 8 <= n; i += 8)
			_mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(
			                              (const __m128i *)(s + 2 * i))));
#endif
		for (; i < n; i++)
			dst[i] = quant_fp16_to_fp32(load_u16(s + 2 * i));
		return 0;
	case GGML_TYPE_BF16:
		for (; i < n; i++)
			dst[i] = bf16_to_fp32(load_u16(s + 2 * i));
		return 0;
	case GGML_TYPE_Q8_0:
		if (n % QK8_0)
			return ITT_E_INVALID;
		for (size_t b = 0; b < n / QK8_0; b++)
			dequant_block_q8_0(s, b, dst + b * QK8_0);
		return 0;
	case GGML_TYPE_Q4_0:
		if (n % QK4_0)
			return ITT_E_INVALID;
		for (size_t b = 0; b < n / QK4_0; b++)
			dequant_block_q4_0(s, b, dst + b * QK4_0);
		return 0;
	}
	return ITT_E_UNSUPPORTED;
}

/* ggml's quantize_row_q8_0_ref, with the float-to-int conversion guarded so
 * that NaN or infinite inputs give defined (if meaningless) codes. */
static void quantize_q8_0(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK8_0; b++, x += QK8_0, y += sizeof(struct block_q8_0)) {
		float amax = 0.0f;
		for (int j = 0; j < QK8_0; j++)
			amax = fmaxf(amax, fabsf(x[j]));
		float d = amax / 127.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		uint16_t dh = quant_fp32_to_fp16(d);
		y[0] = (uint8_t)dh;
		y[1] = (uint8_t)(dh >> 8);
		for (int j = 0; j < QK8_0; j++) {
			float v = roundf(x[j] * id);
			v = v >= -127.0f ? (v <= 127.0f ? v : 127.0f) : -127.0f;
			y[2 + j] = (uint8_t)(int8_t)v;
		}
	}
}

/* ggml's quantize_row_q4_0_ref: the scale maps the value of largest
 * magnitude (sign kept) to -8; codes are truncations of x/d + 8.5. */
static void quantize_q4_0(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK4_0; b++, x += QK4_0, y += sizeof(struct block_q4_0)) {
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < QK4_0; j++) {
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		float d = max / -8.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		uint16_t dh = quant_fp32_to_fp16(d);
		y[0] = (uint8_t)dh;
		y[1] = (uint8_t)(dh >> 8);
		for (int j = 0; j < QK4_0 / 2; j++) {
			float v0 = x[j] * id + 8.5f, v1 = x[j + QK4_0 / 2] * id + 8.5f;
			/* (int8_t) truncation then min(15, .); v >= 0 for finite input */
			int q0 = v0 >= 15.0f ? 15 : v0 > 0.0f ? (int)v0 : 0;
			int q1 = v1 >= 15.0f ? 15 : v1 > 0.0f ? (int)v1 : 0;
			y[2 + j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}

int quant_quantize_row(uint32_t type, const float *src, void *dst, size_t n)
{
	uint8_t *d = dst;

	switch (type) {
	case GGML_TYPE_F32: memcpy(dst, src, n * sizeof(float)); return 0;
	case GGML_TYPE_F16:
	case GGML_TYPE_BF16:
		for (size_t i = 0; i < n; i++) {
			uint16_t h = type == GGML_TYPE_F16 ? quant_fp32_to_fp16(src[i])
			                                   : fp32_to_bf16(src[i]);
			d[2 * i] = (uint8_t)h;
			d[2 * i + 1] = (uint8_t)(h >> 8);
		}
		return 0;
	case GGML_TYPE_Q8_0:
		if (n % QK8_0)
			return ITT_E_INVALID;
		quantize_q8_0(src, d, n);
		return 0;
	case GGML_TYPE_Q4_0:
		if (n % QK4_0)
			return ITT_E_INVALID;
		quantize_q4_0(src, d, n);
		return 0;
	}
	return ITT_E_UNSUPPORTED;
}

/* ---- fused matmul: shared shape ----------------------------------------
 *
 * Weights are walked in 32-element steps (one Q8_0/Q4_0 block, or 32
 * elements of a float-like row).  Float-like rows whose K is not a multiple
 * of 32 end with one zero-padded step.  A kernel computes a tile of R
 * weight rows times MG input rows; rows past the end of the range are
 * served by repeating the last valid row and their results are dropped. */

static inline int type_is_float(uint32_t type)
{
	return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

static inline size_t type_elem_bytes(uint32_t type)
{
	return type == GGML_TYPE_F32 ? 4 : 2;
}

/* Input rows per group: larger M is cut into a group of 8 and the rest, and
 * every group reuses the weight tile while it is in L1. */
#define GROUP_M 8

/* ---- scalar kernel ------------------------------------------------------ */

#define SCALAR_LANES 16

/* 32 weights of step b of a row as floats; the tail step is zero-padded. */
static void scalar_decode_step(uint32_t type, const uint8_t *row, size_t K, size_t b, float *w)
{
	size_t k0 = b * 32, n = K - k0 < 32 ? K - k0 : 32;
	switch (type) {
	case GGML_TYPE_Q8_0: dequant_block_q8_0(row, b, w); return;
	case GGML_TYPE_Q4_0: dequant_block_q4_0(row, b, w); return;
	case GGML_TYPE_F32: memcpy(w, row + 4 * k0, n * sizeof(float)); break;
	case GGML_TYPE_F16:
		for (size_t j = 0; j < n; j++)
			w[j] = quant_fp16_to_fp32(load_u16(row + 2 * (k0 + j)));
		break;
	case GGML_TYPE_BF16:
		for (size_t j = 0; j < n; j++)
			w[j] = bf16_to_fp32(load_u16(row + 2 * (k0 + j)));
		break;
	}
	for (size_t j = n; j < 32; j++)
		w[j] = 0.0f;
}

/* Lane l of pair (m, r) sums elements l, l+16, l+32, ... in order; the 16
 * lanes are then added pairwise (l, l+8), (l, l+4), ... like the SIMD
 * reductions.  Multiply and add stay separate (ISO C: no contraction). */
static void scalar_rows(uint32_t type, const uint8_t *W, size_t stride, size_t K, const float *X,
                        size_t M, float *Y, size_t ldy, size_t r0, size_t r1)
{
	float acc[QUANT_MAX_M][SCALAR_LANES];
	float w[32];
	size_t nsteps = (K + 31) / 32;

	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = W + r * stride;
		memset(acc, 0, sizeof acc);
		for (size_t b = 0; b < nsteps; b++) {
			size_t k0 = b * 32, n = K - k0 < 32 ? K - k0 : 32;
			scalar_decode_step(type, row, K, b, w);
			for (size_t m = 0; m < M; m++) {
				const float *x = X + m * K + k0;
				for (size_t j = 0; j < 32; j++) {
					float xv = j < n ? x[j] : 0.0f;
					acc[m][j % SCALAR_LANES] += w[j] * xv;
				}
			}
		}
		for (size_t m = 0; m < M; m++) {
			float *a = acc[m];
			for (int width = SCALAR_LANES / 2; width >= 1; width /= 2)
				for (int l = 0; l < width; l++)
					a[l] = a[l] + a[l + width];
			Y[m * ldy + r] = a[0];
		}
	}
}

/* ---- AVX-512 kernel ----------------------------------------------------- */
#ifdef QUANT_HAVE_AVX512

ALWAYS_INLINE __m512 avx512_bcast_fp16(const uint8_t *p)
{
	return _mm512_cvtph_ps(_mm256_set1_epi16((short)load_u16(p)));
}

/* Half h (16 floats) of 32-element step b of a row. */
ALWAYS_INLINE __m512 avx512_load_half(uint32_t type, const uint8_t *row, size_t b, int h)
{
	switch (type) {
	case GGML_TYPE_F32: return _mm512_loadu_ps((const float *)(row + 4 * (b * 32 + 16 * h)));
	case GGML_TYPE_F16:
		return _mm512_cvtph_ps(
		    _mm256_loadu_si256((const __m256i *)(row + 2 * (b * 32 + 16 * h))));
	case GGML_TYPE_BF16:
		return _mm512_castsi512_ps(
		    _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
		                          (const __m256i *)(row + 2 * (b * 32 + 16 * h)))),
		                      16));
	case GGML_TYPE_Q8_0: {
		const uint8_t *blk = row + b * sizeof(struct block_q8_0);
		__m512i q =
		    _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2 + 16 * h)));
		return _mm512_mul_ps(avx512_bcast_fp16(blk), _mm512_cvtepi32_ps(q));
	}
	default: { /* Q4_0: codes index a 16-entry table d * (c - 8) */
		const uint8_t *blk = row + b * sizeof(struct block_q4_0);
		const __m512 codes =
		    _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
		__m512 tab = _mm512_mul_ps(avx512_bcast_fp16(blk), codes);
		__m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)));
		if (h)
			idx = _mm512_srli_epi32(idx, 4);
		return _mm512_permutexvar_ps(idx, tab); /* uses the low 4 bits */
	}
	}
}

ALWAYS_INLINE void avx512_tile(uint32_t type, const int R, const int MG, const uint8_t *W0,
                               size_t stride, size_t nvalid, size_t K, const float *X, float *Y,
                               size_t ldy)
{
	__m512 acc[4][GROUP_M];
	const uint8_t *row[4];
	size_t nb = type_is_float(type) ? K / 32 : K / QK8_0;

#pragma GCC unroll 16
	for (int i = 0; i < R; i++) {
		row[i] = W0 + ((size_t)i < nvalid ? (size_t)i : nvalid - 1) * stride;
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			acc[i][m] = _mm512_setzero_ps();
	}
	for (size_t b = 0; b < nb; b++) {
#pragma GCC unroll 16
		for (int h = 0; h < 2; h++) {
			__m512 w[4];
#pragma GCC unroll 16
			for (int i = 0; i < R; i++)
				w[i] = avx512_load_half(type, row[i], b, h);
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++) {
				__m512 x = _mm512_loadu_ps(X + m * K + b * 32 + 16 * h);
#pragma GCC unroll 16
				for (int i = 0; i < R; i++)
					acc[i][m] = _mm512_fmadd_ps(w[i], x, acc[i][m]);
			}
		}
	}
	if (type_is_float(type) && K % 32) {
		size_t rem = K % 32, k0 = K - rem, es = type_elem_bytes(type);
		uint8_t tail[4][128];
#pragma GCC unroll 16
		for (int i = 0; i < R; i++) {
			memset(tail[i], 0, sizeof tail[i]);
			memcpy(tail[i], row[i] + k0 * es, rem * es);
		}
		for (int h = 0; h < 2 && (size_t)(16 * h) < rem; h++) {
			size_t n = rem - 16 * h < 16 ? rem - 16 * h : 16;
			__mmask16 mask = (__mmask16)((1u << n) - 1);
			__m512 w[4];
#pragma GCC unroll 16
			for (int i = 0; i < R; i++)
				w[i] = avx512_load_half(type, tail[i], 0, h);
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++) {
				__m512 x = _mm512_maskz_loadu_ps(mask, X + m * K + k0 + 16 * h);
#pragma GCC unroll 16
				for (int i = 0; i < R; i++)
					acc[i][m] = _mm512_fmadd_ps(w[i], x, acc[i][m]);
			}
		}
	}
#pragma GCC unroll 16
	for (int i = 0; i < R; i++) {
		if ((size_t)i >= nvalid)
			break;
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			Y[m * ldy + i] = _mm512_reduce_add_ps(acc[i][m]);
	}
}

/* Tile shapes (R weight rows x MG inputs): R * MG accumulators plus R
 * weight registers and one input register fit the 32 zmm registers. */
#define AVX512_TILES(T)                                                                            \
	T(1, 4)                                                                                    \
	T(2, 4) T(3, 4) T(4, 4) T(5, 2) T(6, 2) T(7, 2) T(8, 2) T(1, 2) T(2, 2) T(3, 2) T(4, 2)

#define AVX512_CASE(mg, r)                                                                         \
	case (mg)*16 + (r):                                                                        \
		avx512_tile(TYPE, r, mg, W0, stride, nvalid, K, X, Y, ldy);                        \
		return;

#define AVX512_TYPE_FN(name, type)                                                                 \
	static void name(int mg, int R, const uint8_t *W0, size_t stride, size_t nvalid, size_t K, \
	                 const float *X, float *Y, size_t ldy)                                     \
	{                                                                                          \
		enum { TYPE = type };                                                              \
		switch (mg * 16 + R) {                                                             \
			AVX512_TILES(AVX512_CASE)                                                  \
		}                                                                                  \
	}

AVX512_TYPE_FN(avx512_f32, GGML_TYPE_F32)
AVX512_TYPE_FN(avx512_f16, GGML_TYPE_F16)
AVX512_TYPE_FN(avx512_bf16, GGML_TYPE_BF16)
AVX512_TYPE_FN(avx512_q8_0, GGML_TYPE_Q8_0)
AVX512_TYPE_FN(avx512_q4_0, GGML_TYPE_Q4_0)

static int avx512_rows_for(int mg)
{
	return mg <= 4 ? 4 : 2;
}

#endif /* QUANT_HAVE_AVX512 */

/* ---- AVX2 kernel -------------------------------------------------------- */
#ifdef QUANT_HAVE_AVX2

ALWAYS_INLINE __m256 avx2_bcast_fp16(const uint8_t *p)
{
	return _mm256_set1_ps(_cvtsh_ss(load_u16(p)));
}

/* Quarter c (8 floats) of 32-element step b of a row. */
ALWAYS_INLINE __m256 avx2_load_quarter(uint32_t type, const uint8_t *row, size_t b, int c)
{
	switch (type) {
	case GGML_TYPE_F32: return _mm256_loadu_ps((const float *)(row + 4 * (b * 32 + 8 * c)));
	case GGML_TYPE_F16:
		return _mm256_cvtph_ps(
		    _mm_loadu_si128((const __m128i *)(row + 2 * (b * 32 + 8 * c))));
	case GGML_TYPE_BF16:
		return _mm256_castsi256_ps(
		    _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(
		                          (const __m128i *)(row + 2 * (b * 32 + 8 * c)))),
		                      16));
	case GGML_TYPE_Q8_0: {
		const uint8_t *blk = row + b * sizeof(struct block_q8_0);
		__m256i q =
		    _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * c)));
		return _mm256_mul_ps(avx2_bcast_fp16(blk), _mm256_cvtepi32_ps(q));
	}
	default: { /* Q4_0: quarters 0, 1 are low nibbles, 2, 3 high nibbles */
		const uint8_t *blk = row + b * sizeof(struct block_q4_0);
		__m256i q =
		    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * (c & 1))));
		q = c < 2 ? _mm256_and_si256(q, _mm256_set1_epi32(15)) : _mm256_srli_epi32(q, 4);
		q = _mm256_sub_epi32(q, _mm256_set1_epi32(8));
		return _mm256_mul_ps(avx2_bcast_fp16(blk), _mm256_cvtepi32_ps(q));
	}
	}
}

ALWAYS_INLINE float avx2_hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

ALWAYS_INLINE void avx2_tile(uint32_t type, const int R, const int MG, const uint8_t *W0,
                             size_t stride, size_t nvalid, size_t K, const float *X, float *Y,
                             size_t ldy)
{
	__m256 acc[4][GROUP_M];
	const uint8_t *row[4];
	size_t nb = K / 32;

#pragma GCC unroll 16
	for (int i = 0; i < R; i++) {
		row[i] = W0 + ((size_t)i < nvalid ? (size_t)i : nvalid - 1) * stride;
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			acc[i][m] = _mm256_setzero_ps();
	}
	for (size_t b = 0; b < nb; b++) {
#pragma GCC unroll 16
		for (int c = 0; c < 4; c++) {
			__m256 w[4];
#pragma GCC unroll 16
			for (int i = 0; i < R; i++)
				w[i] = avx2_load_quarter(type, row[i], b, c);
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++) {
				__m256 x = _mm256_loadu_ps(X + m * K + b * 32 + 8 * c);
#pragma GCC unroll 16
				for (int i = 0; i < R; i++)
					acc[i][m] = _mm256_fmadd_ps(w[i], x, acc[i][m]);
			}
		}
	}
	if (type_is_float(type) && K % 32) {
		size_t rem = K % 32, k0 = K - rem, es = type_elem_bytes(type);
		uint8_t tail[4][128];
#pragma GCC unroll 16
		for (int i = 0; i < R; i++) {
			memset(tail[i], 0, sizeof tail[i]);
			memcpy(tail[i], row[i] + k0 * es, rem * es);
		}
		for (int c = 0; c < 4 && (size_t)(8 * c) < rem; c++) {
			size_t n = rem - 8 * c < 8 ? rem - 8 * c : 8;
			__m256i mask = _mm256_cmpgt_epi32(
			    _mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
			__m256 w[4];
#pragma GCC unroll 16
			for (int i = 0; i < R; i++)
				w[i] = avx2_load_quarter(type, tail[i], 0, c);
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++) {
				__m256 x = _mm256_maskload_ps(X + m * K + k0 + 8 * c, mask);
#pragma GCC unroll 16
				for (int i = 0; i < R; i++)
					acc[i][m] = _mm256_fmadd_ps(w[i], x, acc[i][m]);
			}
		}
	}
#pragma GCC unroll 16
	for (int i = 0; i < R; i++) {
		if ((size_t)i >= nvalid)
			break;
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			Y[m * ldy + i] = avx2_hsum(acc[i][m]);
	}
}

/* 16 ymm registers: R * MG accumulators + R weights + 1 input + temps. */
#define AVX2_TILES(T)                                                                              \
	T(1, 4)                                                                                    \
	T(2, 3)                                                                                    \
	T(3, 2) T(4, 2) T(5, 2) T(6, 1) T(7, 1) T(8, 1) T(1, 1) T(2, 1) T(3, 1) T(4, 1) T(5, 1)

#define AVX2_CASE(mg, r)                                                                           \
	case (mg)*16 + (r):                                                                        \
		avx2_tile(TYPE, r, mg, W0, stride, nvalid, K, X, Y, ldy);                          \
		return;

#define AVX2_TYPE_FN(name, type)                                                                   \
	static void name(int mg, int R, const uint8_t *W0, size_t stride, size_t nvalid, size_t K, \
	                 const float *X, float *Y, size_t ldy)                                     \
	{                                                                                          \
		enum { TYPE = type };                                                              \
		switch (mg * 16 + R) {                                                             \
			AVX2_TILES(AVX2_CASE)                                                      \
		}                                                                                  \
	}

AVX2_TYPE_FN(avx2_f32, GGML_TYPE_F32)
AVX2_TYPE_FN(avx2_f16, GGML_TYPE_F16)
AVX2_TYPE_FN(avx2_bf16, GGML_TYPE_BF16)
AVX2_TYPE_FN(avx2_q8_0, GGML_TYPE_Q8_0)
AVX2_TYPE_FN(avx2_q4_0, GGML_TYPE_Q4_0)

static int avx2_rows_for(int mg)
{
	static const int r[GROUP_M + 1] = {0, 4, 3, 2, 2, 2, 1, 1, 1};
	return r[mg];
}

#endif /* QUANT_HAVE_AVX2 */

/* ---- dispatch ----------------------------------------------------------- */

typedef void (*tile_fn)(int mg, int R, const uint8_t *W0, size_t stride, size_t nvalid, size_t K,
                        const float *X, float *Y, size_t ldy);

/* Walks [r0, r1) in tiles of R rows; within a tile, the inputs go in groups
 * of at most GROUP_M (M > GROUP_M: one group of GROUP_M and the rest, both
 * with the row count of the smaller-register fallback `r_split`). */
static void simd_rows(tile_fn fn, int (*rows_for)(int), int r_split, const uint8_t *W,
                      size_t stride, size_t K, const float *X, size_t M, float *Y, size_t ldy,
                      size_t r0, size_t r1)
{
	int R = M <= GROUP_M ? rows_for((int)M) : r_split;
	for (size_t r = r0; r < r1; r += (size_t)R) {
		size_t nvalid = r1 - r < (size_t)R ? r1 - r : (size_t)R;
		for (size_t m0 = 0; m0 < M; m0 += GROUP_M) {
			int mg = (int)(M - m0 < GROUP_M ? M - m0 : GROUP_M);
			fn(mg, R, W + r * stride, stride, nvalid, K, X + m0 * K, Y + m0 * ldy + r,
			   ldy);
		}
	}
}

const char *quant_kernel_name(enum quant_kernel kernel)
{
	switch (kernel) {
	case QUANT_KERNEL_AUTO: return "auto";
	case QUANT_KERNEL_SCALAR: return "scalar";
	case QUANT_KERNEL_AVX2: return "avx2";
	case QUANT_KERNEL_AVX512: return "avx512";
	case QUANT_KERNEL_COUNT: break;
	}
	return "unknown";
}

int quant_kernel_available(enum quant_kernel kernel)
{
	switch (kernel) {
	case QUANT_KERNEL_AUTO:
	case QUANT_KERNEL_SCALAR: return 1;
#ifdef QUANT_HAVE_AVX2
	case QUANT_KERNEL_AVX2: return 1;
#endif
#ifdef QUANT_HAVE_AVX512
	case QUANT_KERNEL_AVX512: return 1;
#endif
	default: return 0;
	}
}

static enum quant_kernel kernel_best(void)
{
#if defined(QUANT_HAVE_AVX512)
	return QUANT_KERNEL_AVX512;
#elif defined(QUANT_HAVE_AVX2)
	return QUANT_KERNEL_AVX2;
#else
	return QUANT_KERNEL_SCALAR;
#endif
}

int quant_matmul_rows_kernel(enum quant_kernel kernel, uint32_t type, const void *W,
                             size_t row_stride, size_t K, const float *X, size_t M, float *Y,
                             size_t ldy, size_t r0, size_t r1)
{
	if (!type_is_float(type) && type != GGML_TYPE_Q8_0 && type != GGML_TYPE_Q4_0)
		return ITT_E_UNSUPPORTED;
	if (!quant_kernel_available(kernel))
		return ITT_E_UNSUPPORTED;
	if (M == 0 || M > QUANT_MAX_M || r0 > r1)
		return ITT_E_INVALID;
	if (r0 == r1)
		return 0;
	size_t rb = quant_row_bytes(type, K);
	if ((rb == 0 && K != 0) || (r1 - r0 > 1 && row_stride < rb) || !W || !X || !Y ||
	    (M > 1 && ldy < r1))
		return ITT_E_INVALID;
	if (kernel == QUANT_KERNEL_AUTO)
		kernel = kernel_best();

	const uint8_t *w = W;
	switch (kernel) {
#ifdef QUANT_HAVE_AVX512
	case QUANT_KERNEL_AVX512: {
		tile_fn fn = type == GGML_TYPE_F32    ? avx512_f32
		             : type == GGML_TYPE_F16  ? avx512_f16
		             : type == GGML_TYPE_BF16 ? avx512_bf16
		             : type == GGML_TYPE_Q8_0 ? avx512_q8_0
		                                      : avx512_q4_0;
		simd_rows(fn, avx512_rows_for, 2, w, row_stride, K, X, M, Y, ldy, r0, r1);
		return 0;
	}
#endif
#ifdef QUANT_HAVE_AVX2
	case QUANT_KERNEL_AVX2: {
		tile_fn fn = type == GGML_TYPE_F32    ? avx2_f32
		             : type == GGML_TYPE_F16  ? avx2_f16
		             : type == GGML_TYPE_BF16 ? avx2_bf16
		             : type == GGML_TYPE_Q8_0 ? avx2_q8_0
		                                      : avx2_q4_0;
		simd_rows(fn, avx2_rows_for, 1, w, row_stride, K, X, M, Y, ldy, r0, r1);
		return 0;
	}
#endif
	default: scalar_rows(type, w, row_stride, K, X, M, Y, ldy, r0, r1); return 0;
	}
}

int quant_matmul_rows(uint32_t type, const void *W, size_t row_stride, size_t K, const float *X,
                      size_t M, float *Y, size_t ldy, size_t r0, size_t r1)
{
	return quant_matmul_rows_kernel(QUANT_KERNEL_AUTO, type, W, row_stride, K, X, M, Y, ldy, r0,
	                                r1);
}
