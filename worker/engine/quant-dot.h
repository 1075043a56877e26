/* quant-dot: integer products of quantised weights with quantised
 * activations, the arithmetic llama.cpp's CPU backend uses.
 *
 * The activations X (rows of K floats) are quantised once per product to
 * 8-bit blocks, the type ggml pairs with the weight type (its vec_dot_type):
 *   Q8_0  for Q4_0, Q5_0, Q8_0 weights: { fp16 d; int8 qs[32]; }
 *   Q8_1  for Q4_1, Q5_1 (weights with a minimum):
 *         { fp16 d; fp16 s = d * sum(qs); int8 qs[32]; }
 *   Q8_K  for Q2_K .. Q6_K: { float d; int8 qs[256]; int16 bsums[16]; }
 * and each block pair is an exact integer dot product scaled by one float.
 *
 * Rounding of the activation quantisers (the bits are pinned by
 * tests/unit/test-quant.c):
 *   Q8_0 / Q8_1: as ggml's x86 quantize_row_q8_0 / _q8_1, which llama.cpp
 *     runs on every AVX/AVX2 build: amax = max |x|, d = amax / 127,
 *     q = round-half-even(x * (127 / amax)), d stored as fp16 (and
 *     s = fp16(d * sum q) for Q8_1).  ggml's portable _ref versions differ
 *     only in ties and in the last bit of the multiplier (x * (1 / d),
 *     rounded half away from zero).
 *   Q8_K: as ggml's quantize_row_q8_K_ref (the only x86 version): the
 *     value of largest magnitude (first one on ties) sets
 *     iscale = -127 / max, q = min(127, round-half-even(iscale * x)),
 *     d = 1 / iscale, bsums[j] = sum of q[16 j .. 16 j + 15].
 *
 * Products (one "unit" is a 32-value block, or a 256-value super-block for
 * the K-quants), exact integers isum and summs per unit:
 *   legacy:  acc = fma(isum, dw * dx, acc) (dw * dx exact: two fp16),
 *            then acc = fma(mw, sx, acc) for the types with a minimum;
 *   K-quants: isum = sum over sub-blocks of scale * (codes . q8) and
 *            summs = sum over sub-blocks of min * (sum of q8), then
 *            acc = fma(isum, dw * dx, acc), acc = fma(-summs, dminw * dx, acc)
 *            (dw * dx rounded to float once, as in ggml).
 * Unit u goes to accumulator lane u % 16, and the 16 lanes are reduced by
 * one fixed tree (l + l+8, then + 4, + 2, + 1).  Every kernel (scalar,
 * AVX2, AVX-512) follows this order, so all kernels agree bit for bit; and
 * Y[m][r] depends only on W row r, Xq row m and K (a batched call equals M
 * single calls, any split of rows gives the same result).
 *
 * Error against the exact product of the dequantised weights and the
 * dequantised activations: one rounding per fma (and the int -> float
 * conversion of isum beyond 2^24), so within about (K/unit + 4) 2^-24
 * sum |w x|. */
#ifndef ITT_QUANT_DOT_H
#define ITT_QUANT_DOT_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

struct block_q8_1 {
	uint16_t d, s;
	int8_t qs[32];
};

struct block_q8_K {
	float d;
	int8_t qs[QK_K];
	int16_t bsums[QK_K / 16];
};

_Static_assert(sizeof(struct block_q8_1) == 36, "q8_1 block layout");
_Static_assert(sizeof(struct block_q8_K) == 292, "q8_K block layout");

/* The activation type (GGML_TYPE_Q8_0, _Q8_1 or _Q8_K) paired with a
 * weight type, or 0 when the weight type has no integer product (float
 * types). */
uint32_t quant_dot_act_type(uint32_t wtype);

/* Bytes of one quantised activation row of K values for weight type wtype;
 * 0 if the type has no integer product or K is not a multiple of its
 * block size. */
size_t quant_dot_act_row_bytes(uint32_t wtype, size_t K);

/* Quantises K floats into dst (quant_dot_act_row_bytes bytes) as the
 * activation type of wtype.  Returns 0, ITT_E_UNSUPPORTED or
 * ITT_E_INVALID (K). */
int quant_dot_quantize_row(uint32_t wtype, const float *x, void *dst, size_t K);

/* The values a quantised activation row stands for: d * q per block (for
 * Q8_1 the stored s is not used).  linear.c's GEMM path multiplies these
 * by the dequantised weights, so that large batches see the same
 * activations as the integer products (up to float rounding; for Q4_1 /
 * Q5_1 also up to the fp16 rounding of s).  Returns 0 or
 * ITT_E_UNSUPPORTED / ITT_E_INVALID as quant_dot_quantize_row. */
int quant_dot_dequantize_row(uint32_t wtype, const void *xq, float *y, size_t K);

/* Y[m * ldy + r] = sum over units of W row r times Xq row m, for m < M and
 * r in [r0, r1) (see above).  W rows are row_stride bytes apart, Xq rows
 * xq_row_bytes apart (>= quant_dot_act_row_bytes).  M >= 1, ldy >= r1 when
 * M > 1.  Returns 0, ITT_E_UNSUPPORTED (type, kernel) or ITT_E_INVALID. */
int quant_dot_rows(uint32_t type, const void *W, size_t row_stride, size_t K, const void *Xq,
                   size_t xq_row_bytes, size_t M, float *Y, size_t ldy, size_t r0, size_t r1);

/* The same with a chosen kernel (quant.h's enum; AUTO is the widest
 * compiled in).  Types without a SIMD version take the scalar one. */
int quant_dot_rows_kernel(enum quant_kernel kernel, uint32_t type, const void *W,
                          size_t row_stride, size_t K, const void *Xq, size_t xq_row_bytes,
                          size_t M, float *Y, size_t ldy, size_t r0, size_t r1);

/* 1 if the kernel has its own (SIMD) code for this weight type. */
int quant_dot_kernel_has_type(enum quant_kernel kernel, uint32_t type);

#endif
