/* quant: half precision, bfloat16, Q8_0 and Q4_0 rows, and the fused
 * "dequantise and multiply" kernels used for decode and small batches.
 * The other block types (Q4_1, Q5_0, Q5_1, Q2_K .. Q6_K) are decoded by
 * quant-dequant.c; the kernels here take them through a generic path that
 * decodes each row a segment at a time into a float buffer.
 *
 * Contract: see quant.h.  Conversions are portable C (bit manipulation);
 * the matmul kernels come in three flavours selected at compile time
 * (scalar, always built; AVX2+FMA+F16C; AVX-512F, which has a single-row
 * kernel for small M and a register-blocked one for larger M), and tests
 * may call each one through quant_matmul_rows_kernel.
 *
 * Invariants of every matmul kernel:
 *   - the weights it multiplies are exactly quant_dequant_row's values
 *     (for Q8_0 / Q4_0 d * q, exact in float: an 11-bit d times a 4- or
 *     8-bit q), so the only rounding is in the float summation;
 *   - each (input row m, weight row r) pair owns its accumulators (16
 *     scalar lanes, or two vectors) that see the K products in one fixed
 *     order and are reduced by one fixed sequence, whatever M, the input
 *     grouping, r0, r1 or ldy are; grouping only decides which pairs run
 *     side by side, never how one pair sums.  That is what makes batched
 *     runs equal single runs bit for bit. */
#include "quant.h"

#include <math.h>
#include <string.h>

#include "err.h"
#include "gguf.h"
#include "quantize.h"
#include "quant-dequant.h"

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
/* The unrolled SIMD kernel bodies are left out of sanitizer
 * instrumentation: it multiplied the file's compile time by ten (50 s), and
 * their loads are whole 32-element steps inside K by construction.  The
 * padded tail steps and all scalar code stay instrumented. */
#define NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

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

int quant_type_supported(uint32_t type)
{
	return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16 ||
	       type == GGML_TYPE_Q8_0 || type == GGML_TYPE_Q4_0 ||
	       quant_dequant_is_block_type(type);
}

size_t quant_row_bytes(uint32_t type, size_t n)
{
	switch (type) {
	case GGML_TYPE_F32: return n <= SIZE_MAX / 4 ? n * 4 : 0;
	case GGML_TYPE_F16:
	case GGML_TYPE_BF16: return n <= SIZE_MAX / 2 ? n * 2 : 0;
	case GGML_TYPE_Q8_0: return n % QK8_0 ? 0 : n / QK8_0 * sizeof(struct block_q8_0);
	case GGML_TYPE_Q4_0: return n % QK4_0 ? 0 : n / QK4_0 * sizeof(struct block_q4_0);
	}
	/* blocks are smaller than their values' floats: no overflow */
	size_t qk = quant_dequant_block_elems(type);
	return qk && n % qk == 0 ? n / qk * quant_dequant_block_bytes(type) : 0;
}

/* Block b of a Q8_0 / Q4_0 row into 32 floats (portable). */
static inline void dequant_block_q8_0(const uint8_t *row, size_t b, float *out)
{
	const uint8_t *blk = row + b * sizeof(struct block_q8_0);
	float d = quant_fp16_to_fp32(quant_u16_at(blk));
	for (int j = 0; j < QK8_0; j++)
		out[j] = d * (float)(int8_t)blk[2 + j];
}

static inline void dequant_block_q4_0(const uint8_t *row, size_t b, float *out)
{
	const uint8_t *blk = row + b * sizeof(struct block_q4_0);
	float d = quant_fp16_to_fp32(quant_u16_at(blk));
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
			dst[i] = quant_fp16_to_fp32(quant_u16_at(s + 2 * i));
		return 0;
	case GGML_TYPE_BF16:
		for (; i < n; i++)
			dst[i] = bf16_to_fp32(quant_u16_at(s + 2 * i));
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
	size_t qk = quant_dequant_block_elems(type);
	if (!qk)
		return ITT_E_UNSUPPORTED;
	if (n % qk)
		return ITT_E_INVALID;
	quant_dequant_blocks(type, s, dst, n);
	return 0;
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
	default: return quantize_row(type, src, dst, n); /* Q4_1..Q6_K: quantize.c */
	}
}

/* ---- fused matmul: shared shape ----------------------------------------
 *
 * Weights are walked in 32-element steps (one Q8_0/Q4_0 block, or 32
 * elements of a float-like row).  Float-like rows whose K is not a multiple
 * of 32 end with one zero-padded step.  Rows of the other block types
 * (quant-dequant.c; K a multiple of 32 for all of them) are decoded
 * SEG_ELEMS values at a time into a float buffer, whose steps then get the
 * FMAs an F32 row's would: their products equal the F32 kernel's on the
 * dequantised row, bit for bit.  (A first, generic kernel: the decoders
 * are portable C loops left to the compiler's vectoriser, and the
 * accumulators go through memory around each call of one.  Decoding in
 * registers, as for Q4_0, is the way to speed.)
 *
 * The single-row SIMD kernels take one weight row at a time against a
 * group of MG inputs, with two vector accumulators per (input, row) pair
 * (even and odd vectors of each step) that are added before the final
 * reduction.  One row at a time keeps the weight reads a single sequential
 * stream, which the hardware prefetcher follows at full bandwidth
 * (interleaving rows without software prefetch measured at under half of
 * it); two accumulators keep the FMA latency chains short when MG is
 * small.  That is the kernel for small M, bound by memory.  For larger M
 * the AVX-512 build adds a register-blocked kernel with the same
 * arithmetic per pair (see "AVX-512 blocked kernel" below). */

static inline int type_is_float(uint32_t type)
{
	return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
}

/* Values of a block-type row decoded per call of the decoder: one K-quant
 * super-block, or eight legacy blocks (a multiple of every block size). */
#define SEG_ELEMS QK_K

/* Bytes of a block-type row before value k0 (k0 a multiple of the block). */
static inline size_t seg_offset(uint32_t type, size_t k0)
{
	return quant_row_bytes(type, k0);
}

#if defined(QUANT_HAVE_AVX512) || defined(QUANT_HAVE_AVX2)
static inline size_t type_elem_bytes(uint32_t type)
{
	return type == GGML_TYPE_F32 ? 4 : 2;
}

/* Bytes of one 32-element step of a row. */
static inline size_t step_bytes(uint32_t type)
{
	switch (type) {
	case GGML_TYPE_F32: return 128;
	case GGML_TYPE_Q8_0: return sizeof(struct block_q8_0);
	case GGML_TYPE_Q4_0: return sizeof(struct block_q4_0);
	default: return 64;
	}
}

/* Software prefetch distance for groups of two or more inputs.  Their
 * longer loop bodies leave the out-of-order window too few cache misses in
 * flight, and the hardware prefetcher did not make up for it: prefetching
 * this far ahead took 10-40% off F16 and Q8_0 at M = 4..16, cold.  A
 * single input is faster without it. */
#define PREFETCH 2048

/* Largest input group of any kernel (a per-kernel limit may be lower). */
#define GROUP_M 8

/* A kernel for one input group size: rows [r0, r1) of W (of type; only
 * the generic block-type kernels look at it) times the group's inputs X
 * (rows of K floats) into Y[m * ldy + r]. */
typedef void (*group_fn)(uint32_t type, const uint8_t *W, size_t stride, size_t K, const float *X,
                         float *Y, size_t ldy, size_t r0, size_t r1);

/* Row of the per-type kernel tables; the last one is the generic kernel of
 * the block types of quant-dequant.c. */
#define N_KERNEL_TYPES 6
static inline int type_index(uint32_t type)
{
	switch (type) {
	case GGML_TYPE_F32: return 0;
	case GGML_TYPE_F16: return 1;
	case GGML_TYPE_BF16: return 2;
	case GGML_TYPE_Q8_0: return 3;
	case GGML_TYPE_Q4_0: return 4;
	default: return 5;
	}
}
#endif

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
			w[j] = quant_fp16_to_fp32(quant_u16_at(row + 2 * (k0 + j)));
		break;
	case GGML_TYPE_BF16:
		for (size_t j = 0; j < n; j++)
			w[j] = bf16_to_fp32(quant_u16_at(row + 2 * (k0 + j)));
		break;
	}
	for (size_t j = n; j < 32; j++)
		w[j] = 0.0f;
}

/* Lane l of pair (m, r) sums elements l, l+16, l+32, ... in order; the 16
 * lanes are then added pairwise (l, l+8), (l, l+4), ... like the SIMD
 * reductions.  Whether the compiler fuses a multiply and its add is fixed
 * per build, so the order stays independent of M. */
static void scalar_rows(uint32_t type, const uint8_t *W, size_t stride, size_t K, const float *X,
                        size_t M, float *Y, size_t ldy, size_t r0, size_t r1)
{
	float acc[QUANT_MAX_M][SCALAR_LANES];
	float wbuf[32], xpad[32], seg[SEG_ELEMS];
	size_t nsteps = (K + 31) / 32;
	int blocks = quant_dequant_is_block_type(type);

	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = W + r * stride;
		memset(acc, 0, sizeof acc);
		for (size_t b = 0; b < nsteps; b++) {
			size_t k0 = b * 32, n = K - k0 < 32 ? K - k0 : 32;
			const float *w = wbuf;
			if (blocks) { /* whole steps: K is a multiple of 32 */
				size_t s0 = k0 % SEG_ELEMS;
				if (s0 == 0)
					quant_dequant_blocks(type, row + seg_offset(type, k0), seg,
					                     K - k0 < SEG_ELEMS ? K - k0
					                                        : SEG_ELEMS);
				w = seg + s0;
			} else {
				scalar_decode_step(type, row, K, b, wbuf);
			}
			for (size_t m = 0; m < M; m++) {
				const float *x = X + m * K + k0;
				if (n < 32) { /* the padded tail step */
					memset(xpad, 0, sizeof xpad);
					memcpy(xpad, x, n * sizeof(float));
					x = xpad;
				}
				/* two plain 16-lane loops: the compiler vectorises them */
				float *a = acc[m];
				for (int l = 0; l < SCALAR_LANES; l++)
					a[l] += w[l] * x[l];
				for (int l = 0; l < SCALAR_LANES; l++)
					a[l] += w[l + 16] * x[l + 16];
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

#define AVX512_GROUP_M 8 /* 16 accumulators + 2 weights + temporaries */

/* Step b of a row as two vectors of 16 floats (elements 0-15, 16-31); d is
 * the block's scale (Q8_0, Q4_0). */
ALWAYS_INLINE void avx512_load_step(uint32_t type, const uint8_t *row, size_t b, float d,
                                    __m512 *w0, __m512 *w1)
{
	switch (type) {
	case GGML_TYPE_F32:
		*w0 = _mm512_loadu_ps((const float *)(row + 128 * b));
		*w1 = _mm512_loadu_ps((const float *)(row + 128 * b + 64));
		return;
	case GGML_TYPE_F16:
		*w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 64 * b)));
		*w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(row + 64 * b + 32)));
		return;
	case GGML_TYPE_BF16: {
		__m512i h0 =
		    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 64 * b)));
		__m512i h1 =
		    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(row + 64 * b + 32)));
		*w0 = _mm512_castsi512_ps(_mm512_slli_epi32(h0, 16));
		*w1 = _mm512_castsi512_ps(_mm512_slli_epi32(h1, 16));
		return;
	}
	case GGML_TYPE_Q8_0: {
		const uint8_t *blk = row + b * sizeof(struct block_q8_0);
		__m512i q0 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)));
		__m512i q1 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18)));
		*w0 = _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(q0));
		*w1 = _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(q1));
		return;
	}
	default: { /* Q4_0: the codes index a 16-entry table d * (c - 8) */
		const uint8_t *blk = row + b * sizeof(struct block_q4_0);
		const __m512 codes =
		    _mm512_setr_ps(-8, -7, -6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5, 6, 7);
		__m512 tab = _mm512_mul_ps(_mm512_set1_ps(d), codes);
		__m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2)));
		*w0 = _mm512_permutexvar_ps(idx, tab); /* uses the low 4 bits */
		*w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(idx, 4), tab);
		return;
	}
	}
}

/* The sum of the 16 lanes of v by halving: lanes (l, l + 8), then (l, l + 4),
 * (l, l + 2), (l, l + 1), the lower lane the first operand.  Every kernel's
 * final reduction of a pair is this tree (avx512_hsum16 does it for 16 at
 * once), which is what makes the single-row and blocked kernels agree. */
ALWAYS_INLINE float avx512_hsum(__m512 v)
{
	__m256 lo = _mm512_castps512_ps256(v);
	__m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
	__m256 a = _mm256_add_ps(lo, hi);
	__m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
	__m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
	return _mm_cvtss_f32(_mm_add_ss(c, _mm_movehdup_ps(c)));
}

/* avx512_hsum of v[0..15] at once, in a transposed order: lane 4 a + b of
 * the result is the sum of v[4 b + a].  Each addition has the operands it
 * has in avx512_hsum, in the same order; the shuffles only move lanes. */
ALWAYS_INLINE __m512 avx512_hsum16(const __m512 v[16])
{
	__m512 a[8], b[4], c[2];
#pragma GCC unroll 8
	for (int i = 0; i < 8; i++)
		a[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
		                     _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
#pragma GCC unroll 4
	for (int i = 0; i < 4; i++)
		b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x88),
		                     _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xdd));
#pragma GCC unroll 2
	for (int i = 0; i < 2; i++)
		c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
		                     _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xee));
	return _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88),
	                     _mm512_shuffle_ps(c[0], c[1], 0xdd));
}

/* Scales of blocks [b0, b0 + n) (n <= 16) of a Q8_0 / Q4_0 row as floats,
 * in memory: the kernel then broadcasts each one straight from L1 as an
 * operand of the multiply, which took an eighth off the Q4_0 decode time
 * compared with a vector conversion and a register broadcast per block.
 * (A gather, or one vector conversion of 16 scales, is slower still: the
 * 64-byte store does not forward to the 4-byte loads that follow.) */
ALWAYS_INLINE void avx512_scales(uint32_t type, const uint8_t *row, size_t b0, size_t n, float *ds)
{
	const size_t bs = type == GGML_TYPE_Q8_0 ? 34 : 18;
	for (size_t j = 0; j < n; j++)
		ds[j] = _cvtsh_ss(quant_u16_at(row + (b0 + j) * bs));
}

/* The zero-padded last step of a float-like row whose K is not a multiple
 * of 32, on accumulators in memory: the same operations, in the same order,
 * as if it were inlined. */
static void avx512_tail(uint32_t type, const uint8_t *row, int MG, size_t K, const float *X,
                        __m512 acc[2][GROUP_M])
{
	size_t rem = K % 32, k0 = K - rem, es = type_elem_bytes(type);
	uint8_t tail[128] = {0};
	memcpy(tail, row + k0 * es, rem * es);
	__m512 w[2];
	avx512_load_step(type, tail, 0, 0.0f, &w[0], &w[1]);
	for (int h = 0; h < 2; h++) {
		size_t n = rem > 16 * (size_t)h ? rem - 16 * (size_t)h : 0;
		__mmask16 mask = (__mmask16)((1u << (n < 16 ? n : 16)) - 1);
		for (int m = 0; m < MG; m++) {
			__m512 x = _mm512_maskz_loadu_ps(mask, X + m * K + k0 + 16 * h);
			acc[h][m] = _mm512_fmadd_ps(w[h], x, acc[h][m]);
		}
	}
}

/* Rows [r0, r1) times MG inputs (MG a constant once inlined). */
ALWAYS_INLINE NO_SANITIZE void avx512_rows(uint32_t type, const int MG, const uint8_t *W,
                                           size_t stride, size_t K, const float *X, float *Y,
                                           size_t ldy, size_t r0, size_t r1)
{
	size_t nb = K / 32;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = W + r * stride;
		__m512 acc[2][GROUP_M];
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			acc[0][m] = acc[1][m] = _mm512_setzero_ps();
		for (size_t b0 = 0; b0 < nb; b0 += 16) {
			size_t nb1 = nb - b0 < 16 ? nb - b0 : 16;
			float ds[16];
			if (!type_is_float(type))
				avx512_scales(type, row, b0, nb1, ds);
			for (size_t j = 0; j < nb1; j++) {
				size_t b = b0 + j;
				__m512 w0, w1;
				avx512_load_step(type, row, b, ds[j], &w0, &w1);
				if (MG > 1)
					_mm_prefetch((const char *)row + b * step_bytes(type) +
					                 PREFETCH,
					             _MM_HINT_T0);
#pragma GCC unroll 16
				for (int m = 0; m < MG; m++) {
					const float *x = X + m * K + 32 * b;
					acc[0][m] =
					    _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[0][m]);
					acc[1][m] =
					    _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[1][m]);
				}
			}
		}
		if (type_is_float(type) && K % 32) {
			/* rare; out of line, the accumulators visit memory */
			__m512 spill[2][GROUP_M];
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++)
				spill[0][m] = acc[0][m], spill[1][m] = acc[1][m];
			avx512_tail(type, row, MG, K, X, spill);
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++)
				acc[0][m] = spill[0][m], acc[1][m] = spill[1][m];
		}
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			Y[m * ldy + r] = avx512_hsum(_mm512_add_ps(acc[0][m], acc[1][m]));
	}
}

/* The generic kernel of the block types: rows decoded SEG_ELEMS values at
 * a time into seg, then multiplied as an F32 row is (same FMAs, same
 * order), so the result is the F32 kernel's on the dequantised row. */
ALWAYS_INLINE NO_SANITIZE void avx512_rows_blocks(uint32_t type, const int MG, const uint8_t *W,
                                                  size_t stride, size_t K, const float *X, float *Y,
                                                  size_t ldy, size_t r0, size_t r1)
{
	_Alignas(64) float seg[SEG_ELEMS];
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = W + r * stride;
		__m512 acc[2][GROUP_M];
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			acc[0][m] = acc[1][m] = _mm512_setzero_ps();
		for (size_t k0 = 0; k0 < K; k0 += SEG_ELEMS) {
			size_t n = K - k0 < SEG_ELEMS ? K - k0 : SEG_ELEMS;
			quant_dequant_blocks(type, row + seg_offset(type, k0), seg, n);
			for (size_t k = 0; k < n; k += 32) {
				__m512 w0 = _mm512_load_ps(seg + k),
				       w1 = _mm512_load_ps(seg + k + 16);
#pragma GCC unroll 16
				for (int m = 0; m < MG; m++) {
					const float *x = X + m * K + k0 + k;
					acc[0][m] =
					    _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[0][m]);
					acc[1][m] =
					    _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[1][m]);
				}
			}
		}
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			Y[m * ldy + r] = avx512_hsum(_mm512_add_ps(acc[0][m], acc[1][m]));
	}
}

#define AVX512_FN(tn, type, mg)                                                                    \
	static NO_SANITIZE void avx512_##tn##_##mg(uint32_t t, const uint8_t *W, size_t stride,    \
	                                           size_t K, const float *X, float *Y, size_t ldy, \
	                                           size_t r0, size_t r1)                           \
	{                                                                                          \
		(void)t;                                                                           \
		avx512_rows(type, mg, W, stride, K, X, Y, ldy, r0, r1);                            \
	}
#define AVX512_FN_BLOCKS(mg)                                                                       \
	static NO_SANITIZE void avx512_blocks_##mg(uint32_t t, const uint8_t *W, size_t stride,    \
	                                           size_t K, const float *X, float *Y, size_t ldy, \
	                                           size_t r0, size_t r1)                           \
	{                                                                                          \
		avx512_rows_blocks(t, mg, W, stride, K, X, Y, ldy, r0, r1);                        \
	}
#define AVX512_FNS(tn, type)                                                                       \
	AVX512_FN(tn, type, 1)                                                                     \
	AVX512_FN(tn, type, 2)                                                                     \
	AVX512_FN(tn, type, 3)                                                                     \
	AVX512_FN(tn, type, 4)                                                                     \
	AVX512_FN(tn, type, 5)                                                                     \
	AVX512_FN(tn, type, 6)                                                                     \
	AVX512_FN(tn, type, 7)                                                                     \
	AVX512_FN(tn, type, 8)
#define AVX512_ROW(tn)                                                                             \
	{                                                                                          \
		avx512_##tn##_1, avx512_##tn##_2, avx512_##tn##_3, avx512_##tn##_4,                \
		    avx512_##tn##_5, avx512_##tn##_6, avx512_##tn##_7, avx512_##tn##_8             \
	}

AVX512_FNS(f32, GGML_TYPE_F32)
AVX512_FNS(f16, GGML_TYPE_F16)
AVX512_FNS(bf16, GGML_TYPE_BF16)
AVX512_FNS(q8_0, GGML_TYPE_Q8_0)
AVX512_FNS(q4_0, GGML_TYPE_Q4_0)
AVX512_FN_BLOCKS(1)
AVX512_FN_BLOCKS(2)
AVX512_FN_BLOCKS(3)
AVX512_FN_BLOCKS(4)
AVX512_FN_BLOCKS(5)
AVX512_FN_BLOCKS(6)
AVX512_FN_BLOCKS(7)
AVX512_FN_BLOCKS(8)

static const group_fn avx512_fns[N_KERNEL_TYPES][GROUP_M] = {AVX512_ROW(f32),  AVX512_ROW(f16),
                                                             AVX512_ROW(bf16), AVX512_ROW(q8_0),
                                                             AVX512_ROW(q4_0), AVX512_ROW(blocks)};

/* ---- AVX-512 blocked kernel (larger batches) -----------------------------
 *
 * From a few inputs up, the single-row kernel is bound by loads, not by
 * memory: each x vector it loads feeds one FMA, and beyond 8 inputs it
 * reads every weight block once per group of 8.  The blocked kernel takes
 * BLK_RB weight rows against groups of up to BLK_MB inputs, so each loaded
 * x vector feeds BLK_RB FMAs and each weight vector BLK_MB.
 *
 * Each pair (input, row) has the same two accumulators as in the
 * single-row kernel (the even and odd 16-element halves of every 32-element
 * step), fed the same products in the same order, and is reduced by the
 * same tree (avx512_hsum); only the two halves run one after the other,
 * which halves the registers a pair needs and makes room for a 6 x 4 block
 * (48 accumulators in two passes of 24).  So the two kernels agree bit for
 * bit and the choice between them is free per call.
 *
 * Weights are used as floats: F32 rows in place, other types dequantised
 * BLK_RB rows and BLK_KC elements at a time into an aligned buffer that
 * stays in L1 for every input group, so a quantised block is decoded once
 * per call, not once per group.  Software prefetch, spread over the FMA
 * steps, brings the rows BLK_PF_AHEAD blocks ahead: the block pattern
 * (rows side by side, even and odd lines in turn) is not one the hardware
 * prefetcher follows, and without it memory and compute do not overlap.
 * F32 rows read in place go to L2 (into L1 they evict the inputs); the
 * dequantising pass reads its rows at once and wants them in L1. */

#define BLK_RB       6    /* weight rows per block */
#define BLK_MB       4    /* inputs per group */
#define BLK_KC       2048 /* elements of K per chunk of the buffer (a multiple of 32) */
#define BLK_PF_AHEAD 2    /* blocks ahead that are prefetched */

/* GCC folds a vector load into every FMA that uses it, which turns one
 * load of a weight vector into BLK_MB; an empty asm that claims to change
 * the register keeps the single load. */
#define KEEP_IN_REGISTER(v) __asm__("" : "+v"(v))

/* Rows [r, r + rb) of W, elements [k0, k0 + kc), as floats into buf (row j
 * at buf + j * BLK_KC); a partial last step is zero-padded.  The values are
 * exactly the ones avx512_load_step gives the single-row kernel. */
ALWAYS_INLINE void avx512_fill_rows(uint32_t type, const uint8_t *W, size_t stride, size_t r,
                                    size_t rb, size_t k0, size_t kc, float *buf)
{
	size_t nfull = kc / 32, rem = kc % 32, b0 = k0 / 32;
	for (size_t j = 0; j < rb; j++) {
		const uint8_t *row = W + (r + j) * stride;
		float *dst = buf + j * BLK_KC;
		for (size_t s0 = 0; s0 < nfull; s0 += 16) {
			size_t n = nfull - s0 < 16 ? nfull - s0 : 16;
			float ds[16];
			if (!type_is_float(type))
				avx512_scales(type, row, b0 + s0, n, ds);
			for (size_t s = s0; s < s0 + n; s++) {
				__m512 w0, w1;
				float d = type_is_float(type) ? 0.0f : ds[s - s0];
				avx512_load_step(type, row, b0 + s, d, &w0, &w1);
				_mm512_store_ps(dst + 32 * s, w0);
				_mm512_store_ps(dst + 32 * s + 16, w1);
			}
		}
		if (rem) { /* float-like types only */
			float *t = dst + 32 * nfull;
			const uint8_t *src = row + (k0 + 32 * nfull) * type_elem_bytes(type);
			for (size_t i = 0; i < 32; i++) {
				if (i >= rem)
					t[i] = 0.0f;
				else if (type == GGML_TYPE_F32)
					memcpy(&t[i], src + 4 * i, sizeof(float));
				else if (type == GGML_TYPE_F16)
					t[i] = quant_fp16_to_fp32(quant_u16_at(src + 2 * i));
				else
					t[i] = bf16_to_fp32(quant_u16_at(src + 2 * i));
			}
		}
	}
}

static NO_SANITIZE void avx512_fill(uint32_t type, const uint8_t *W, size_t stride, size_t r,
                                    size_t rb, size_t k0, size_t kc, float *buf)
{
	switch (type) {
	case GGML_TYPE_F32: avx512_fill_rows(GGML_TYPE_F32, W, stride, r, rb, k0, kc, buf); return;
	case GGML_TYPE_F16: avx512_fill_rows(GGML_TYPE_F16, W, stride, r, rb, k0, kc, buf); return;
	case GGML_TYPE_BF16:
		avx512_fill_rows(GGML_TYPE_BF16, W, stride, r, rb, k0, kc, buf);
		return;
	case GGML_TYPE_Q8_0:
		avx512_fill_rows(GGML_TYPE_Q8_0, W, stride, r, rb, k0, kc, buf);
		return;
	case GGML_TYPE_Q4_0:
		avx512_fill_rows(GGML_TYPE_Q4_0, W, stride, r, rb, k0, kc, buf);
		return;
	default: /* block types; k0 and kc are multiples of their block size */
		for (size_t j = 0; j < rb; j++)
			quant_dequant_blocks(type, W + (r + j) * stride + seg_offset(type, k0),
			                     buf + j * BLK_KC, kc);
		return;
	}
}

/* Prefetch state: the lines [next, end) of rows ahead are due; each step
 * moves the target position at on by inc bytes and prefetches up to it. */
struct prefetch {
	const char *next, *end, *at;
	size_t inc;
	int to_l1;
};

/* a[j][i] += w[j] x[i] on 16 lanes (the ones in mask, others zero), with
 * the MB x vectors in registers and one weight vector at a time. */
ALWAYS_INLINE void avx512_block_step(const int RB, const int MB, const float *w, size_t ldw,
                                     const float *x, size_t K, __mmask16 mask,
                                     __m512 a[BLK_RB][BLK_MB])
{
	__m512 xv[BLK_MB];
#pragma GCC unroll 8
	for (int i = 0; i < MB; i++)
		xv[i] = mask == 0xffff ? _mm512_loadu_ps(x + i * K)
		                       : _mm512_maskz_loadu_ps(mask, x + i * K);
#pragma GCC unroll 8
	for (int j = 0; j < RB; j++) {
		__m512 wv = mask == 0xffff ? _mm512_loadu_ps(w + j * ldw)
		                           : _mm512_maskz_loadu_ps(mask, w + j * ldw);
		KEEP_IN_REGISTER(wv);
#pragma GCC unroll 8
		for (int i = 0; i < MB; i++)
			a[j][i] = _mm512_fmadd_ps(wv, xv[i], a[j][i]);
	}
}

/* One half h of every step of a chunk, for RB rows x MB inputs: w is the
 * first row's chunk plus 16 h (rows ldw floats apart), x the group's first
 * input plus k0 + 16 h (inputs K floats apart).  nfull whole steps, then,
 * if tail, the partial step with both operands masked (as the zero-padded
 * tail of the single-row kernel).  acc[i * BLK_RB + j] carries the pair's
 * accumulator across chunks; first: start from zero. */
ALWAYS_INLINE void avx512_block_half(const int RB, const int MB, const float *w, size_t ldw,
                                     const float *x, size_t K, size_t nfull, int tail,
                                     __mmask16 mask, __m512 *acc, int first, struct prefetch *pf)
{
	__m512 a[BLK_RB][BLK_MB];
#pragma GCC unroll 8
	for (int j = 0; j < RB; j++)
#pragma GCC unroll 8
		for (int i = 0; i < MB; i++)
			a[j][i] = first ? _mm512_setzero_ps() : acc[i * BLK_RB + j];
	const char *next = pf->next, *end = pf->end, *at = pf->at;
	size_t inc = pf->inc;
	int to_l1 = pf->to_l1;
	for (size_t s = 0; s < nfull; s++) {
		avx512_block_step(RB, MB, w + 32 * s, ldw, x + 32 * s, K, 0xffff, a);
		for (at += inc; next < at && next < end; next += 64) {
			if (to_l1)
				_mm_prefetch(next, _MM_HINT_T0);
			else
				_mm_prefetch(next, _MM_HINT_T1);
		}
	}
	if (tail)
		avx512_block_step(RB, MB, w + 32 * nfull, ldw, x + 32 * nfull, K, mask, a);
	pf->next = next;
	pf->at = at;
#pragma GCC unroll 8
	for (int j = 0; j < RB; j++)
#pragma GCC unroll 8
		for (int i = 0; i < MB; i++)
			acc[i * BLK_RB + j] = a[j][i];
}

typedef void (*block_fn)(const float *w, size_t ldw, const float *x, size_t K, size_t nfull,
                         int tail, __mmask16 mask, __m512 *acc, int first, struct prefetch *pf);

#define BLOCK_FN(rb, mb)                                                                           \
	static NO_SANITIZE void avx512_block_##rb##_##mb(                                          \
	    const float *w, size_t ldw, const float *x, size_t K, size_t nfull, int tail,          \
	    __mmask16 mask, __m512 *acc, int first, struct prefetch *pf)                           \
	{                                                                                          \
		avx512_block_half(rb, mb, w, ldw, x, K, nfull, tail, mask, acc, first, pf);        \
	}
#define BLOCK_FNS(rb) BLOCK_FN(rb, 1) BLOCK_FN(rb, 2) BLOCK_FN(rb, 3) BLOCK_FN(rb, 4)
#define BLOCK_ROW(rb)                                                                              \
	{                                                                                          \
		avx512_block_##rb##_1, avx512_block_##rb##_2, avx512_block_##rb##_3,               \
		    avx512_block_##rb##_4                                                          \
	}

BLOCK_FNS(1)
BLOCK_FNS(2)
BLOCK_FNS(3)
BLOCK_FNS(4)
BLOCK_FNS(5)
BLOCK_FNS(6)

_Static_assert(BLK_RB == 6 && BLK_MB == 4, "the table below lists 6 x 4 kernels");
static const block_fn avx512_block_fns[BLK_RB][BLK_MB] = {BLOCK_ROW(1), BLOCK_ROW(2), BLOCK_ROW(3),
                                                          BLOCK_ROW(4), BLOCK_ROW(5), BLOCK_ROW(6)};

/* Accumulators of a block: [half][input][row]. */
typedef __m512 block_acc[2][QUANT_MAX_M][BLK_RB];

/* Y[m * ldy + j] = avx512_hsum(acc[0][m][j] + acc[1][m][j]) for m < M,
 * j < rb: 16 pairs at a time with avx512_hsum16, laid out so that each
 * input's sums for 4 (or 2) consecutive rows come out side by side and go
 * to memory in one store (a wide store read back in pieces would stall).
 * Not instrumented either: the accumulators live in avx512_blocked's
 * uninstrumented frame, whose stack ASan may still mark from earlier calls. */
static NO_SANITIZE void avx512_store_block(block_acc acc, size_t M, size_t rb, float *Y,
                                           size_t ldy)
{
#define PAIR_SUM(m, j) _mm512_add_ps(acc[0][m][j], acc[1][m][j])
	size_t j0 = 0, m;
	__m512 v[16];
	for (; j0 + 4 <= rb; j0 += 4) { /* 4 inputs x 4 rows */
		for (m = 0; m + 4 <= M; m += 4) {
			for (size_t a = 0; a < 4; a++)
				for (size_t b = 0; b < 4; b++)
					v[4 * b + a] = PAIR_SUM(m + a, j0 + b);
			__m512 t = avx512_hsum16(v);
			_mm_storeu_ps(Y + (m + 0) * ldy + j0, _mm512_extractf32x4_ps(t, 0));
			_mm_storeu_ps(Y + (m + 1) * ldy + j0, _mm512_extractf32x4_ps(t, 1));
			_mm_storeu_ps(Y + (m + 2) * ldy + j0, _mm512_extractf32x4_ps(t, 2));
			_mm_storeu_ps(Y + (m + 3) * ldy + j0, _mm512_extractf32x4_ps(t, 3));
		}
		for (; m < M; m++)
			for (size_t j = j0; j < j0 + 4; j++)
				Y[m * ldy + j] = avx512_hsum(PAIR_SUM(m, j));
	}
	if (j0 + 2 <= rb) { /* 8 inputs x 2 rows */
		for (m = 0; m + 8 <= M; m += 8) {
			for (size_t a = 0; a < 4; a++)
				for (size_t b = 0; b < 4; b++)
					v[4 * b + a] = PAIR_SUM(m + a + 4 * (b / 2), j0 + b % 2);
			__m512 t = avx512_hsum16(v);
			__m128 q[4] = {_mm512_extractf32x4_ps(t, 0), _mm512_extractf32x4_ps(t, 1),
			               _mm512_extractf32x4_ps(t, 2), _mm512_extractf32x4_ps(t, 3)};
			for (size_t a = 0; a < 4; a++) {
				_mm_storel_pi((__m64 *)(Y + (m + a) * ldy + j0), q[a]);
				_mm_storeh_pi((__m64 *)(Y + (m + a + 4) * ldy + j0), q[a]);
			}
		}
		for (; m < M; m++)
			for (size_t j = j0; j < j0 + 2; j++)
				Y[m * ldy + j] = avx512_hsum(PAIR_SUM(m, j));
		j0 += 2;
	}
	for (; j0 < rb; j0++)
		for (m = 0; m < M; m++)
			Y[m * ldy + j0] = avx512_hsum(PAIR_SUM(m, j0));
#undef PAIR_SUM
}

/* Rows [r0, r1) times M inputs, BLK_RB rows at a time. */
static NO_SANITIZE void avx512_blocked(uint32_t type, const uint8_t *W, size_t stride, size_t K,
                                       const float *X, size_t M, float *Y, size_t ldy, size_t r0,
                                       size_t r1)
{
	_Alignas(64) float buf[BLK_RB * BLK_KC];
	block_acc acc;
	/* the inputs in ng groups of nearly equal size */
	size_t ng = (M + BLK_MB - 1) / BLK_MB, m0[QUANT_MAX_M + 1];
	for (size_t g = 0; g <= ng; g++)
		m0[g] = g * M / ng;
	int direct = type == GGML_TYPE_F32 && stride % sizeof(float) == 0 &&
	             (uintptr_t)W % sizeof(float) == 0;
	size_t steps = ng * 2 * ((K + 31) / 32); /* FMA steps per block */
	/* rows used in place need no chunks: each one costs a round trip of
	 * the accumulators through memory */
	size_t kc_max = direct ? K : BLK_KC;
	for (size_t r = r0; r < r1; r += BLK_RB) {
		size_t rb = r1 - r < BLK_RB ? r1 - r : BLK_RB;
		/* prefetch rows [p0, p1) while this block runs */
		size_t p0 = r + BLK_PF_AHEAD * BLK_RB < r1 ? r + BLK_PF_AHEAD * BLK_RB : r1;
		size_t p1 = p0 + BLK_RB < r1 ? p0 + BLK_RB : r1;
		const char *from = (const char *)(W + p0 * stride);
		struct prefetch pf = {(const char *)((uintptr_t)from & ~(uintptr_t)63),
		                      (const char *)(W + p1 * stride), NULL, 0, !direct};
		pf.at = pf.next;
		pf.inc = ((p1 - p0) * stride + steps - 1) / steps;
		for (size_t k0 = 0; k0 < K; k0 += kc_max) {
			size_t kc = K - k0 < kc_max ? K - k0 : kc_max;
			const float *w = buf;
			size_t ldw = BLK_KC;
			if (direct) {
				w = (const float *)(W + r * stride) + k0;
				ldw = stride / sizeof(float);
			} else {
				avx512_fill(type, W, stride, r, rb, k0, kc, buf);
			}
			size_t nfull = kc / 32, rem = kc % 32;
			for (size_t g = 0; g < ng; g++) {
				block_fn fn = avx512_block_fns[rb - 1][m0[g + 1] - m0[g] - 1];
				for (size_t h = 0; h < 2; h++) {
					size_t n = rem > 16 * h ? rem - 16 * h : 0;
					__mmask16 mask = (__mmask16)((1u << (n < 16 ? n : 16)) - 1);
					fn(w + 16 * h, ldw, X + m0[g] * K + k0 + 16 * h, K, nfull,
					   rem != 0, mask, acc[h][m0[g]], k0 == 0, &pf);
				}
			}
		}
		avx512_store_block(acc, M, rb, Y + r, ldy);
	}
}

/* Smallest M that takes the blocked kernel, per type (F32, F16, BF16,
 * Q8_0, Q4_0, other block types).  Below it the single-row kernel, which
 * streams one row at a time and decodes it in registers, was as fast or
 * faster in bench-quant (cold weights, the 134M model's mix of shapes): up
 * to the point where F32 stops being bound by memory, and for the other
 * types up to the point where decoding every block once per group of 8
 * inputs costs more than the blocked kernel's trip through its buffer.
 * The generic block-type kernel decodes a row once per group of 8 inputs
 * (the costly part) and the blocked kernel once per call, so it switches
 * as soon as there is a second group (not measured). */
static const size_t avx512_blocked_min_m[N_KERNEL_TYPES] = {6, 12, 12, 9, 9, 9};

#endif /* QUANT_HAVE_AVX512 */

/* ---- AVX2 kernel -------------------------------------------------------- */
#ifdef QUANT_HAVE_AVX2

#define AVX2_GROUP_M 5 /* 10 accumulators + weight, scale and temporaries */

ALWAYS_INLINE __m256 avx2_bcast_fp16(const uint8_t *p)
{
	return _mm256_set1_ps(_cvtsh_ss(quant_u16_at(p)));
}

/* Quarter c (8 floats) of step b of a row; d is the block's scale,
 * broadcast (unused for the float types). */
ALWAYS_INLINE __m256 avx2_load_quarter(uint32_t type, const uint8_t *row, size_t b, int c, __m256 d)
{
	switch (type) {
	case GGML_TYPE_F32: return _mm256_loadu_ps((const float *)(row + 128 * b + 32 * c));
	case GGML_TYPE_F16:
		return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 64 * b + 16 * c)));
	case GGML_TYPE_BF16:
		return _mm256_castsi256_ps(
		    _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(
		                          (const __m128i *)(row + 64 * b + 16 * c))),
		                      16));
	case GGML_TYPE_Q8_0: {
		const uint8_t *qs = row + b * sizeof(struct block_q8_0) + 2;
		__m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * c)));
		return _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
	}
	default: { /* Q4_0: quarters 0, 1 are low nibbles, 2, 3 high nibbles */
		const uint8_t *qs = row + b * sizeof(struct block_q4_0) + 2;
		__m256i q =
		    _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * (c & 1))));
		q = c < 2 ? _mm256_and_si256(q, _mm256_set1_epi32(15)) : _mm256_srli_epi32(q, 4);
		q = _mm256_sub_epi32(q, _mm256_set1_epi32(8));
		return _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
	}
	}
}

ALWAYS_INLINE __m256 avx2_step_scale(uint32_t type, const uint8_t *row, size_t b)
{
	if (type == GGML_TYPE_Q8_0)
		return avx2_bcast_fp16(row + b * sizeof(struct block_q8_0));
	if (type == GGML_TYPE_Q4_0)
		return avx2_bcast_fp16(row + b * sizeof(struct block_q4_0));
	return _mm256_setzero_ps();
}

ALWAYS_INLINE float avx2_hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

/* Quarters 0 and 2 of each step go to acc[0], 1 and 3 to acc[1]. */
static void avx2_tail(uint32_t type, const uint8_t *row, int MG, size_t K, const float *X,
                      __m256 acc[2][GROUP_M])
{
	size_t rem = K % 32, k0 = K - rem, es = type_elem_bytes(type);
	uint8_t tail[128] = {0};
	memcpy(tail, row + k0 * es, rem * es);
	for (int c = 0; c < 4; c++) {
		size_t n = rem > 8 * (size_t)c ? rem - 8 * (size_t)c : 0;
		__m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 8 ? n : 8)),
		                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
		__m256 w = avx2_load_quarter(type, tail, 0, c, _mm256_setzero_ps());
		for (int m = 0; m < MG; m++) {
			__m256 x = _mm256_maskload_ps(X + m * K + k0 + 8 * c, mask);
			acc[c & 1][m] = _mm256_fmadd_ps(w, x, acc[c & 1][m]);
		}
	}
}

ALWAYS_INLINE NO_SANITIZE void avx2_rows(uint32_t type, const int MG, const uint8_t *W,
                                         size_t stride, size_t K, const float *X, float *Y,
                                         size_t ldy, size_t r0, size_t r1)
{
	size_t nb = K / 32;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = W + r * stride;
		__m256 acc[2][GROUP_M];
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			acc[0][m] = acc[1][m] = _mm256_setzero_ps();
		for (size_t b = 0; b < nb; b++) {
			__m256 d = avx2_step_scale(type, row, b);
			if (MG > 1)
				_mm_prefetch((const char *)row + b * step_bytes(type) + PREFETCH,
				             _MM_HINT_T0);
#pragma GCC unroll 16
			for (int c = 0; c < 4; c++) {
				__m256 w = avx2_load_quarter(type, row, b, c, d);
#pragma GCC unroll 16
				for (int m = 0; m < MG; m++)
					acc[c & 1][m] = _mm256_fmadd_ps(
					    w, _mm256_loadu_ps(X + m * K + 32 * b + 8 * c),
					    acc[c & 1][m]);
			}
		}
		if (type_is_float(type) && K % 32) {
			__m256 spill[2][GROUP_M];
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++)
				spill[0][m] = acc[0][m], spill[1][m] = acc[1][m];
			avx2_tail(type, row, MG, K, X, spill);
#pragma GCC unroll 16
			for (int m = 0; m < MG; m++)
				acc[0][m] = spill[0][m], acc[1][m] = spill[1][m];
		}
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			Y[m * ldy + r] = avx2_hsum(_mm256_add_ps(acc[0][m], acc[1][m]));
	}
}

/* The generic kernel of the block types (see avx512_rows_blocks): quarters
 * of each step of the decoded segment as an F32 row's. */
ALWAYS_INLINE NO_SANITIZE void avx2_rows_blocks(uint32_t type, const int MG, const uint8_t *W,
                                                size_t stride, size_t K, const float *X, float *Y,
                                                size_t ldy, size_t r0, size_t r1)
{
	_Alignas(32) float seg[SEG_ELEMS];
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = W + r * stride;
		__m256 acc[2][GROUP_M];
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			acc[0][m] = acc[1][m] = _mm256_setzero_ps();
		for (size_t k0 = 0; k0 < K; k0 += SEG_ELEMS) {
			size_t n = K - k0 < SEG_ELEMS ? K - k0 : SEG_ELEMS;
			quant_dequant_blocks(type, row + seg_offset(type, k0), seg, n);
			for (size_t k = 0; k < n; k += 32) {
#pragma GCC unroll 16
				for (int c = 0; c < 4; c++) {
					__m256 w = _mm256_load_ps(seg + k + 8 * c);
#pragma GCC unroll 16
					for (int m = 0; m < MG; m++)
						acc[c & 1][m] = _mm256_fmadd_ps(
						    w, _mm256_loadu_ps(X + m * K + k0 + k + 8 * c),
						    acc[c & 1][m]);
				}
			}
		}
#pragma GCC unroll 16
		for (int m = 0; m < MG; m++)
			Y[m * ldy + r] = avx2_hsum(_mm256_add_ps(acc[0][m], acc[1][m]));
	}
}

#define AVX2_FN(tn, type, mg)                                                                      \
	static NO_SANITIZE void avx2_##tn##_##mg(uint32_t t, const uint8_t *W, size_t stride,      \
	                                         size_t K, const float *X, float *Y, size_t ldy,   \
	                                         size_t r0, size_t r1)                             \
	{                                                                                          \
		(void)t;                                                                           \
		avx2_rows(type, mg, W, stride, K, X, Y, ldy, r0, r1);                              \
	}
#define AVX2_FN_BLOCKS(mg)                                                                         \
	static NO_SANITIZE void avx2_blocks_##mg(uint32_t t, const uint8_t *W, size_t stride,      \
	                                         size_t K, const float *X, float *Y, size_t ldy,   \
	                                         size_t r0, size_t r1)                             \
	{                                                                                          \
		avx2_rows_blocks(t, mg, W, stride, K, X, Y, ldy, r0, r1);                          \
	}
#define AVX2_FNS(tn, type)                                                                         \
	AVX2_FN(tn, type, 1)                                                                       \
	AVX2_FN(tn, type, 2)                                                                       \
	AVX2_FN(tn, type, 3)                                                                       \
	AVX2_FN(tn, type, 4)                                                                       \
	AVX2_FN(tn, type, 5)
#define AVX2_ROW(tn)                                                                               \
	{                                                                                          \
		avx2_##tn##_1, avx2_##tn##_2, avx2_##tn##_3, avx2_##tn##_4, avx2_##tn##_5          \
	}

AVX2_FNS(f32, GGML_TYPE_F32)
AVX2_FNS(f16, GGML_TYPE_F16)
AVX2_FNS(bf16, GGML_TYPE_BF16)
AVX2_FNS(q8_0, GGML_TYPE_Q8_0)
AVX2_FNS(q4_0, GGML_TYPE_Q4_0)
AVX2_FN_BLOCKS(1)
AVX2_FN_BLOCKS(2)
AVX2_FN_BLOCKS(3)
AVX2_FN_BLOCKS(4)
AVX2_FN_BLOCKS(5)

static const group_fn avx2_fns[N_KERNEL_TYPES][GROUP_M] = {
    AVX2_ROW(f32), AVX2_ROW(f16), AVX2_ROW(bf16), AVX2_ROW(q8_0), AVX2_ROW(q4_0), AVX2_ROW(blocks)};

#endif /* QUANT_HAVE_AVX2 */

/* ---- dispatch ----------------------------------------------------------- */

#if defined(QUANT_HAVE_AVX512) || defined(QUANT_HAVE_AVX2)
/* Splits the inputs into groups of at most gmax.  With more than one group,
 * rows go in chunks of ROW_CHUNK so that the chunk of W read for the first
 * group is still in L1/L2 for the others: W streams from memory once. */
#define ROW_CHUNK 16

static void simd_rows(const group_fn fns[GROUP_M], size_t gmax, uint32_t type, const uint8_t *W,
                      size_t stride, size_t K, const float *X, size_t M, float *Y, size_t ldy,
                      size_t r0, size_t r1)
{
	if (M <= gmax) {
		fns[M - 1](type, W, stride, K, X, Y, ldy, r0, r1);
		return;
	}
	for (size_t c0 = r0; c0 < r1; c0 += ROW_CHUNK) {
		size_t c1 = r1 - c0 < ROW_CHUNK ? r1 : c0 + ROW_CHUNK;
		for (size_t m0 = 0; m0 < M; m0 += gmax) {
			size_t mg = M - m0 < gmax ? M - m0 : gmax;
			fns[mg - 1](type, W, stride, K, X + m0 * K, Y + m0 * ldy, ldy, c0, c1);
		}
	}
}
#endif

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
	if (!quant_type_supported(type))
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
	case QUANT_KERNEL_AVX512:
		if (M >= avx512_blocked_min_m[type_index(type)])
			avx512_blocked(type, w, row_stride, K, X, M, Y, ldy, r0, r1);
		else
			simd_rows(avx512_fns[type_index(type)], AVX512_GROUP_M, type, w, row_stride,
			          K, X, M, Y, ldy, r0, r1);
		return 0;
#endif
#ifdef QUANT_HAVE_AVX2
	case QUANT_KERNEL_AVX2:
		simd_rows(avx2_fns[type_index(type)], AVX2_GROUP_M, type, w, row_stride, K, X, M, Y,
		          ldy, r0, r1);
		return 0;
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
