/* quantize: Q4_1/Q5_0/Q5_1 and K-quant row quantisers, and llama.cpp's
 * per-tensor type policy for the named file types.
 *
 * Contract: see quantize.h.  The quantisers reproduce ggml's reference
 * rounding (the path llama-quantize takes without an importance matrix):
 * the same fits, the same search grids and the same float expressions in
 * the same order, because the sums and comparisons of those searches pick
 * codes, and a different order would pick different ones on ties.  This
 * file is built as ISO C (no FMA contraction), like ggml's baseline build.
 *
 * Invariants: every code written lies in its field's range whatever the
 * input (non-finite values included: conversions are clamped or go through
 * nearest_int, which is defined for every float), so a file we write is
 * always a valid file for any reader. */
#include "quantize.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "err.h"
#include "gguf.h"
#include "quant.h"

/* Groups whose largest magnitude is below this are all zero (ggml's). */
#define GROUP_EPS 1e-15f

static inline void store_u16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

/* Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 moves
 * the integer part into the low mantissa bits.  Unlike a float-to-int cast
 * it is defined for every input (NaN and huge values give some integer,
 * which the callers clamp), and it is the rounding ggml's searches use. */
static inline int nearest_int(float v)
{
	float t = v + 12582912.0f;
	int32_t i;
	memcpy(&i, &t, sizeof i);
	return (i & 0x007fffff) - 0x00400000;
}

static inline int clampi(int v, int lo, int hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* Truncation toward zero of a code computed as x + 0.5 (the legacy types'
 * rounding), clamped to [0, hi]; a cast would be undefined out of range. */
static inline int trunc_code(float v, int hi)
{
	return v >= (float)hi ? hi : v > 0.0f ? (int)v : 0;
}

/* ---- legacy 32-value blocks -------------------------------------------- */

/* Q4_1: d = (max - min) / 15 and m = min; codes round (x - min) / d. */
static void quantize_q4_1(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK4_1; b++, x += QK4_1, y += sizeof(struct block_q4_1)) {
		float min = FLT_MAX, max = -FLT_MAX;
		for (int j = 0; j < QK4_1; j++) {
			min = x[j] < min ? x[j] : min;
			max = x[j] > max ? x[j] : max;
		}
		float d = (max - min) / 15.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		store_u16(y, quant_fp32_to_fp16(d));
		store_u16(y + 2, quant_fp32_to_fp16(min));
		for (int j = 0; j < QK4_1 / 2; j++) {
			int q0 = trunc_code((x[j] - min) * id + 0.5f, 15);
			int q1 = trunc_code((x[j + QK4_1 / 2] - min) * id + 0.5f, 15);
			y[4 + j] = (uint8_t)(q0 | (q1 << 4));
		}
	}
}

/* Q5_0: like Q4_0 with 32 levels: the value of largest magnitude maps to
 * -16; the fifth bits go to qh (bit j for value j). */
static void quantize_q5_0(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK5_0; b++, x += QK5_0, y += sizeof(struct block_q5_0)) {
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < QK5_0; j++) {
			if (amax < fabsf(x[j])) {
				amax = fabsf(x[j]);
				max = x[j];
			}
		}
		float d = max / -16.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		store_u16(y, quant_fp32_to_fp16(d));
		uint32_t qh = 0;
		for (int j = 0; j < QK5_0 / 2; j++) {
			int q0 = trunc_code(x[j] * id + 16.5f, 31);
			int q1 = trunc_code(x[j + QK5_0 / 2] * id + 16.5f, 31);
			y[6 + j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
			qh |= (uint32_t)(q0 >> 4) << j;
			qh |= (uint32_t)(q1 >> 4) << (j + QK5_0 / 2);
		}
		for (int k = 0; k < 4; k++)
			y[2 + k] = (uint8_t)(qh >> (8 * k));
	}
}

/* Q5_1: Q4_1 with 32 levels and Q5_0's fifth-bit layout. */
static void quantize_q5_1(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK5_1; b++, x += QK5_1, y += sizeof(struct block_q5_1)) {
		float min = FLT_MAX, max = -FLT_MAX;
		for (int j = 0; j < QK5_1; j++) {
			min = x[j] < min ? x[j] : min;
			max = x[j] > max ? x[j] : max;
		}
		float d = (max - min) / 31.0f;
		float id = d != 0.0f ? 1.0f / d : 0.0f;
		store_u16(y, quant_fp32_to_fp16(d));
		store_u16(y + 2, quant_fp32_to_fp16(min));
		uint32_t qh = 0;
		for (int j = 0; j < QK5_1 / 2; j++) {
			int q0 = trunc_code((x[j] - min) * id + 0.5f, 31);
			int q1 = trunc_code((x[j + QK5_1 / 2] - min) * id + 0.5f, 31);
			y[8 + j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
			qh |= (uint32_t)(q0 >> 4) << j;
			qh |= (uint32_t)(q1 >> 4) << (j + QK5_1 / 2);
		}
		for (int k = 0; k < 4; k++)
			y[4 + k] = (uint8_t)(qh >> (8 * k));
	}
}

/* ---- fits used by the K-quants ----------------------------------------- */

/* Symmetric fit x ~ s * (L - nmax), L in [0, 2 nmax), weights x^2 (ggml's
 * make_qx_quants with rmse_type 1): start from the scale that maps the
 * value of largest magnitude to -nmax, then try 18 nearby scales and keep
 * the one with the best weighted least-squares fit.  Returns s (0 and all
 * L = 0 for a zero group). */
static float fit_symmetric(int n, int nmax, const float *x, int8_t *L)
{
	float max = 0.0f, amax = 0.0f;
	for (int i = 0; i < n; i++) {
		float ax = fabsf(x[i]);
		if (ax > amax) {
			amax = ax;
			max = x[i];
		}
	}
	if (amax < GROUP_EPS) {
		memset(L, 0, (size_t)n);
		return 0.0f;
	}
	float iscale = (float)-nmax / max;
	float sumlx = 0.0f, suml2 = 0.0f;
	for (int i = 0; i < n; i++) {
		int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
		L[i] = (int8_t)(l + nmax);
		float w = x[i] * x[i];
		sumlx += w * x[i] * (float)l;
		suml2 += w * (float)l * (float)l;
	}
	float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
	float best = scale * sumlx;
	for (int is = -9; is <= 9; is++) {
		if (is == 0)
			continue;
		iscale = -((float)nmax + 0.1f * (float)is) / max;
		sumlx = suml2 = 0.0f;
		for (int i = 0; i < n; i++) {
			int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
			float w = x[i] * x[i];
			sumlx += w * x[i] * (float)l;
			suml2 += w * (float)l * (float)l;
		}
		if (suml2 > 0.0f && sumlx * sumlx > best * suml2) {
			for (int i = 0; i < n; i++)
				L[i] = (int8_t)(nmax + clampi(nearest_int(iscale * x[i]), -nmax,
				                              nmax - 1));
			scale = sumlx / suml2;
			best = scale * sumlx;
		}
	}
	return scale;
}

/* Symmetric 3-bit fit (ggml's make_q3_quants with do_rmse): codes from the
 * max-magnitude scale, then up to 5 passes of moving single codes to the
 * value that improves the x^2-weighted fit.  L in [0, 2 nmax). */
static float fit_q3(int n, int nmax, const float *x, int8_t *L)
{
	float max = 0.0f, amax = 0.0f;
	for (int i = 0; i < n; i++) {
		float ax = fabsf(x[i]);
		if (ax > amax) {
			amax = ax;
			max = x[i];
		}
	}
	if (amax < GROUP_EPS) {
		memset(L, 0, (size_t)n);
		return 0.0f;
	}
	float iscale = (float)-nmax / max;
	float sumlx = 0.0f, suml2 = 0.0f;
	for (int i = 0; i < n; i++) {
		int l = clampi(nearest_int(iscale * x[i]), -nmax, nmax - 1);
		L[i] = (int8_t)l;
		float w = x[i] * x[i];
		sumlx += w * x[i] * (float)l;
		suml2 += w * (float)l * (float)l;
	}
	for (int itry = 0; itry < 5; itry++) {
		int n_changed = 0;
		for (int i = 0; i < n; i++) {
			float w = x[i] * x[i];
			float slx = sumlx - w * x[i] * (float)L[i];
			if (slx > 0.0f) {
				float sl2 = suml2 - w * (float)L[i] * (float)L[i];
				int nl = clampi(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
				if (nl != L[i]) {
					slx += w * x[i] * (float)nl;
					sl2 += w * (float)nl * (float)nl;
					if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
						L[i] = (int8_t)nl;
						sumlx = slx;
						suml2 = sl2;
						n_changed++;
					}
				}
			}
		}
		if (!n_changed)
			break;
	}
	for (int i = 0; i < n; i++)
		L[i] = (int8_t)(L[i] + nmax);
	return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Affine fit x ~ s * L - m with L in [0, nmax] and m >= 0 (ggml's
 * make_qkx2_quants): from the min/max grid, try nstep + 1 stretched grids
 * (nmax + rmin + rdelta * is levels across the range) and keep the
 * weighted least-squares (s, m) with the smallest weighted error (squared,
 * or absolute with use_mad).  Returns s and sets *the_min = m. */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                        float rmin, float rdelta, int nstep, bool use_mad)
{
	uint8_t Laux[32];
	float min = x[0], max = x[0];
	float sum_w = w[0], sum_x = sum_w * x[0];
	for (int i = 1; i < n; i++) {
		min = x[i] < min ? x[i] : min;
		max = x[i] > max ? x[i] : max;
		sum_w += w[i];
		sum_x += w[i] * x[i];
	}
	if (min > 0.0f)
		min = 0.0f;
	if (max == min) {
		memset(L, 0, (size_t)n);
		*the_min = -min;
		return 0.0f;
	}
	float iscale = (float)nmax / (max - min);
	float scale = 1.0f / iscale;
	float best_error = 0.0f;
	for (int i = 0; i < n; i++) {
		L[i] = (uint8_t)clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
		float diff = scale * (float)L[i] + min - x[i];
		diff = use_mad ? fabsf(diff) : diff * diff;
		best_error += w[i] * diff;
	}
	for (int is = 0; is <= nstep; is++) {
		iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
		float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
		for (int i = 0; i < n; i++) {
			int l = clampi(nearest_int(iscale * (x[i] - min)), 0, nmax);
			Laux[i] = (uint8_t)l;
			float fl = (float)l;
			sum_l += w[i] * fl;
			sum_l2 += w[i] * fl * fl;
			sum_xl += w[i] * fl * x[i];
		}
		float D = sum_w * sum_l2 - sum_l * sum_l;
		if (D > 0.0f) {
			float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
			float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
			if (this_min > 0.0f) {
				this_min = 0.0f;
				this_scale = sum_xl / sum_l2;
			}
			float cur_error = 0.0f;
			for (int i = 0; i < n; i++) {
				float diff = this_scale * (float)Laux[i] + this_min - x[i];
				diff = use_mad ? fabsf(diff) : diff * diff;
				cur_error += w[i] * diff;
			}
			if (cur_error < best_error) {
				memcpy(L, Laux, (size_t)n);
				best_error = cur_error;
				scale = this_scale;
				min = this_min;
			}
		}
	}
	*the_min = -min;
	return scale;
}

/* ---- K-quants: 256-value super-blocks ---------------------------------- */

/* Q2_K: 16 groups of 16, each an affine 2-bit fit (absolute error, weights
 * |x|); group scales and mins in 4 bits against fp16 d and dmin; codes
 * recomputed against the rounded scales.  The code of value 128 h + 32 s + l
 * (h half, s = 0..3, l = 0..31) lives in qs[32 h + l] at bit 2 s. */
static void quantize_q2_K(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK_K; b++, x += QK_K, y += sizeof(struct block_q2_K)) {
		struct block_q2_K *blk = (struct block_q2_K *)(void *)y;
		uint8_t L[QK_K], sc[QK_K / 16];
		float w[16], scales[QK_K / 16], mins[QK_K / 16];
		float max_scale = 0.0f, max_min = 0.0f;
		for (int j = 0; j < QK_K / 16; j++) {
			for (int l = 0; l < 16; l++)
				w[l] = fabsf(x[16 * j + l]);
			scales[j] = fit_affine(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f,
			                       0.1f, 15, true);
			max_scale = scales[j] > max_scale ? scales[j] : max_scale;
			max_min = mins[j] > max_min ? mins[j] : max_min;
		}
		uint16_t dh = 0, dminh = 0;
		memset(sc, 0, sizeof sc);
		if (max_scale > 0.0f) {
			float iscale = 15.0f / max_scale;
			for (int j = 0; j < QK_K / 16; j++)
				sc[j] = (uint8_t)nearest_int(iscale * scales[j]);
			dh = quant_fp32_to_fp16(max_scale / 15.0f);
		}
		if (max_min > 0.0f) {
			float iscale = 15.0f / max_min;
			for (int j = 0; j < QK_K / 16; j++)
				sc[j] |= (uint8_t)((unsigned)nearest_int(iscale * mins[j]) << 4);
			dminh = quant_fp32_to_fp16(max_min / 15.0f);
		}
		float d_all = quant_fp16_to_fp32(dh), dmin_all = quant_fp16_to_fp32(dminh);
		for (int j = 0; j < QK_K / 16; j++) {
			float d = d_all * (float)(sc[j] & 15);
			if (d == 0.0f)
				continue;
			float dm = dmin_all * (float)(sc[j] >> 4);
			for (int i = 0; i < 16; i++)
				L[16 * j + i] =
				    (uint8_t)clampi(nearest_int((x[16 * j + i] + dm) / d), 0, 3);
		}
		memcpy(blk->scales, sc, sizeof sc);
		for (int j = 0; j < QK_K; j += 128)
			for (int l = 0; l < 32; l++)
				blk->qs[j / 4 + l] =
				    (uint8_t)(L[j + l] | (L[j + l + 32] << 2) |
				              (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
		store_u16((uint8_t *)&blk->d, dh);
		store_u16((uint8_t *)&blk->dmin, dminh);
	}
}

/* Q3_K: 16 groups of 16, each a symmetric 3-bit fit; 6-bit signed group
 * scales against fp16 d (the largest-magnitude scale maps to -32).  Scale
 * j: low 4 bits in scales[j % 8] (high nibble for j >= 8), high 2 bits in
 * scales[8 + j % 4] at bit 2 (j / 4).  Codes: low 2 bits as in Q2_K, the
 * third bit of value i in hmask[i % 32] bit i / 32. */
static void quantize_q3_K(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK_K; b++, x += QK_K, y += sizeof(struct block_q3_K)) {
		struct block_q3_K *blk = (struct block_q3_K *)(void *)y;
		int8_t L[QK_K];
		int sc[QK_K / 16];
		float scales[QK_K / 16];
		float max_scale = 0.0f, amax = 0.0f;
		for (int j = 0; j < QK_K / 16; j++) {
			scales[j] = fit_q3(16, 4, x + 16 * j, L + 16 * j);
			if (fabsf(scales[j]) > amax) {
				amax = fabsf(scales[j]);
				max_scale = scales[j];
			}
		}
		memset(blk->scales, 0, sizeof blk->scales);
		uint16_t dh = 0;
		for (int j = 0; j < QK_K / 16; j++)
			sc[j] = -32; /* code 0: what an all-zero scale field reads as */
		if (max_scale != 0.0f) {
			float iscale = -32.0f / max_scale;
			for (int j = 0; j < QK_K / 16; j++) {
				/* ggml stores the rounded value in an int8_t first */
				int l =
				    clampi((int8_t)nearest_int(iscale * scales[j]), -32, 31) + 32;
				sc[j] = l - 32;
				if (j < 8)
					blk->scales[j] = (uint8_t)(l & 15);
				else
					blk->scales[j - 8] |= (uint8_t)((l & 15) << 4);
				blk->scales[8 + j % 4] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
			}
			dh = quant_fp32_to_fp16(1.0f / iscale);
		}
		float d_all = quant_fp16_to_fp32(dh);
		for (int j = 0; j < QK_K / 16; j++) {
			float d = d_all * (float)sc[j];
			if (d == 0.0f)
				continue;
			for (int i = 0; i < 16; i++)
				L[16 * j + i] =
				    (int8_t)(clampi(nearest_int(x[16 * j + i] / d), -4, 3) + 4);
		}
		memset(blk->hmask, 0, sizeof blk->hmask);
		for (int j = 0; j < QK_K; j++) {
			if (L[j] > 3) {
				blk->hmask[j % (QK_K / 8)] |= (uint8_t)(1u << (j / (QK_K / 8)));
				L[j] = (int8_t)(L[j] - 4);
			}
		}
		for (int j = 0; j < QK_K; j += 128)
			for (int l = 0; l < 32; l++)
				blk->qs[j / 4 + l] =
				    (uint8_t)(L[j + l] | (L[j + l + 32] << 2) |
				              (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
		store_u16((uint8_t *)&blk->d, dh);
	}
}

/* The 8 groups of 32 of a Q4_K / Q5_K super-block: affine fits weighted by
 * rms + |x|, then 6-bit scales and mins against fp16 d and dmin, packed in
 * 12 bytes (groups 0-3: low 6 bits of bytes 0-3 / 4-7; groups 4-7: low
 * nibbles in bytes 8-11, high 2 bits in the top bits of bytes 0-7).
 * Writes the codes against the rounded scales into L (0..nmax). */
static void kquant_groups32(const float *x, int nmax, float rmin, int nstep, uint8_t *L,
                            uint8_t *scales12, uint16_t *dh, uint16_t *dminh)
{
	float w[32], scales[QK_K / 32], mins[QK_K / 32];
	float max_scale = 0.0f, max_min = 0.0f;
	for (int j = 0; j < QK_K / 32; j++) {
		float sum_x2 = 0.0f;
		for (int l = 0; l < 32; l++)
			sum_x2 += x[32 * j + l] * x[32 * j + l];
		float av_x = sqrtf(sum_x2 / 32.0f);
		for (int l = 0; l < 32; l++)
			w[l] = av_x + fabsf(x[32 * j + l]);
		scales[j] = fit_affine(32, nmax, x + 32 * j, w, L + 32 * j, &mins[j], rmin, 0.1f,
		                       nstep, false);
		max_scale = scales[j] > max_scale ? scales[j] : max_scale;
		max_min = mins[j] > max_min ? mins[j] : max_min;
	}
	float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
	float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
	uint8_t ls[QK_K / 32], lm[QK_K / 32];
	memset(scales12, 0, K_SCALE_SIZE);
	for (int j = 0; j < QK_K / 32; j++) {
		/* ggml rounds into a uint8_t, then caps at 63 */
		ls[j] = (uint8_t)nearest_int(inv_scale * scales[j]);
		lm[j] = (uint8_t)nearest_int(inv_min * mins[j]);
		ls[j] = ls[j] > 63 ? 63 : ls[j];
		lm[j] = lm[j] > 63 ? 63 : lm[j];
		if (j < 4) {
			scales12[j] |= ls[j];
			scales12[j + 4] |= lm[j];
		} else {
			scales12[j + 4] = (uint8_t)((ls[j] & 15) | ((lm[j] & 15) << 4));
			scales12[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
			scales12[j] |= (uint8_t)((lm[j] >> 4) << 6);
		}
	}
	*dh = quant_fp32_to_fp16(max_scale / 63.0f);
	*dminh = quant_fp32_to_fp16(max_min / 63.0f);
	float d_all = quant_fp16_to_fp32(*dh), dmin_all = quant_fp16_to_fp32(*dminh);
	for (int j = 0; j < QK_K / 32; j++) {
		float d = d_all * (float)ls[j];
		if (d == 0.0f)
			continue;
		float dm = dmin_all * (float)lm[j];
		for (int i = 0; i < 32; i++)
			L[32 * j + i] =
			    (uint8_t)clampi(nearest_int((x[32 * j + i] + dm) / d), 0, nmax);
	}
}

/* Q4_K: codes of groups 2c and 2c + 1 share qs[32 c .. 32 c + 31] (low and
 * high nibbles). */
static void quantize_q4_K(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK_K; b++, x += QK_K, y += sizeof(struct block_q4_K)) {
		struct block_q4_K *blk = (struct block_q4_K *)(void *)y;
		uint8_t L[QK_K];
		uint16_t dh, dminh;
		kquant_groups32(x, 15, -1.0f, 20, L, blk->scales, &dh, &dminh);
		for (int j = 0; j < QK_K; j += 64)
			for (int l = 0; l < 32; l++)
				blk->qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
		store_u16((uint8_t *)&blk->d, dh);
		store_u16((uint8_t *)&blk->dmin, dminh);
	}
}

/* Q5_K: Q4_K's low nibbles, and the fifth bit of value 64 c + 32 h + l in
 * qh[l] at bit 2 c + h. */
static void quantize_q5_K(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK_K; b++, x += QK_K, y += sizeof(struct block_q5_K)) {
		struct block_q5_K *blk = (struct block_q5_K *)(void *)y;
		uint8_t L[QK_K];
		uint16_t dh, dminh;
		kquant_groups32(x, 31, -0.5f, 15, L, blk->scales, &dh, &dminh);
		memset(blk->qh, 0, sizeof blk->qh);
		for (int c = 0; c < QK_K / 64; c++) {
			for (int l = 0; l < 32; l++) {
				int l1 = L[64 * c + l], l2 = L[64 * c + l + 32];
				blk->qh[l] |=
				    (uint8_t)(((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1)));
				blk->qs[32 * c + l] = (uint8_t)((l1 & 15) | ((l2 & 15) << 4));
			}
		}
		store_u16((uint8_t *)&blk->d, dh);
		store_u16((uint8_t *)&blk->dmin, dminh);
	}
}

/* Q6_K: 16 groups of 16, symmetric 6-bit fits; 8-bit signed group scales
 * against fp16 d (the largest-magnitude scale maps to -128, capped at
 * 127).  Value 128 h + 32 q + l (h half, q quarter): low nibble in
 * ql[64 h + l + 32 (q % 2)] (high nibble when q >= 2), top 2 bits in
 * qh[32 h + l] at bit 2 q. */
static void quantize_q6_K(const float *x, uint8_t *y, size_t n)
{
	for (size_t b = 0; b < n / QK_K; b++, x += QK_K, y += sizeof(struct block_q6_K)) {
		struct block_q6_K *blk = (struct block_q6_K *)(void *)y;
		int8_t L[QK_K];
		float scales[QK_K / 16];
		float max_scale = 0.0f, max_abs = 0.0f;
		for (int j = 0; j < QK_K / 16; j++) {
			scales[j] = fit_symmetric(16, 32, x + 16 * j, L + 16 * j);
			if (fabsf(scales[j]) > max_abs) {
				max_abs = fabsf(scales[j]);
				max_scale = scales[j];
			}
		}
		if (max_abs < GROUP_EPS) {
			memset(y, 0, sizeof(struct block_q6_K));
			continue;
		}
		float iscale = -128.0f / max_scale;
		uint16_t dh = quant_fp32_to_fp16(1.0f / iscale);
		float d_all = quant_fp16_to_fp32(dh);
		for (int j = 0; j < QK_K / 16; j++) {
			int s = nearest_int(iscale * scales[j]);
			blk->scales[j] = (int8_t)clampi(s, -128, 127);
		}
		for (int j = 0; j < QK_K / 16; j++) {
			float d = d_all * (float)blk->scales[j];
			if (d == 0.0f)
				continue;
			for (int i = 0; i < 16; i++)
				L[16 * j + i] =
				    (int8_t)(clampi(nearest_int(x[16 * j + i] / d), -32, 31) + 32);
		}
		for (int h = 0; h < QK_K / 128; h++) {
			const int8_t *q = L + 128 * h;
			for (int l = 0; l < 32; l++) {
				blk->ql[64 * h + l] =
				    (uint8_t)((q[l] & 15) | ((q[l + 64] & 15) << 4));
				blk->ql[64 * h + l + 32] =
				    (uint8_t)((q[l + 32] & 15) | ((q[l + 96] & 15) << 4));
				blk->qh[32 * h + l] =
				    (uint8_t)((q[l] >> 4) | ((q[l + 32] >> 4) << 2) |
				              ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
			}
		}
		store_u16((uint8_t *)&blk->d, dh);
	}
}

/* ---- dispatch ---------------------------------------------------------- */

int quantize_row(uint32_t type, const float *src, void *dst, size_t n)
{
	void (*fn)(const float *, uint8_t *, size_t);
	size_t block = QK_K;
	switch (type) {
	case GGML_TYPE_Q4_1: fn = quantize_q4_1, block = QK4_1; break;
	case GGML_TYPE_Q5_0: fn = quantize_q5_0, block = QK5_0; break;
	case GGML_TYPE_Q5_1: fn = quantize_q5_1, block = QK5_1; break;
	case GGML_TYPE_Q2_K: fn = quantize_q2_K; break;
	case GGML_TYPE_Q3_K: fn = quantize_q3_K; break;
	case GGML_TYPE_Q4_K: fn = quantize_q4_K; break;
	case GGML_TYPE_Q5_K: fn = quantize_q5_K; break;
	case GGML_TYPE_Q6_K: fn = quantize_q6_K; break;
	default: return ITT_E_UNSUPPORTED;
	}
	if (n % block)
		return ITT_E_INVALID;
	fn(src, dst, n);
	return 0;
}

/* ---- named file types -------------------------------------------------- */

static const struct ftype_name {
	const char *name;
	uint32_t ftype, base;
} ftypes[] = {
    {"F16", QUANTIZE_FTYPE_F16, GGML_TYPE_F16},
    {"BF16", QUANTIZE_FTYPE_BF16, GGML_TYPE_BF16},
    {"Q8_0", QUANTIZE_FTYPE_Q8_0, GGML_TYPE_Q8_0},
    {"Q6_K", QUANTIZE_FTYPE_Q6_K, GGML_TYPE_Q6_K},
    {"Q5_K_M", QUANTIZE_FTYPE_Q5_K_M, GGML_TYPE_Q5_K},
    {"Q5_K_S", QUANTIZE_FTYPE_Q5_K_S, GGML_TYPE_Q5_K},
    {"Q5_1", QUANTIZE_FTYPE_Q5_1, GGML_TYPE_Q5_1},
    {"Q5_0", QUANTIZE_FTYPE_Q5_0, GGML_TYPE_Q5_0},
    {"Q4_K_M", QUANTIZE_FTYPE_Q4_K_M, GGML_TYPE_Q4_K},
    {"Q4_K_S", QUANTIZE_FTYPE_Q4_K_S, GGML_TYPE_Q4_K},
    {"Q4_1", QUANTIZE_FTYPE_Q4_1, GGML_TYPE_Q4_1},
    {"Q4_0", QUANTIZE_FTYPE_Q4_0, GGML_TYPE_Q4_0},
    {"Q3_K_L", QUANTIZE_FTYPE_Q3_K_L, GGML_TYPE_Q3_K},
    {"Q3_K_M", QUANTIZE_FTYPE_Q3_K_M, GGML_TYPE_Q3_K},
    {"Q3_K_S", QUANTIZE_FTYPE_Q3_K_S, GGML_TYPE_Q3_K},
    {"Q2_K", QUANTIZE_FTYPE_Q2_K, GGML_TYPE_Q2_K},
};
#define N_FTYPES (sizeof ftypes / sizeof ftypes[0])

const char *const quantize_ftype_names[] = {
    "F16",    "BF16", "Q8_0", "Q6_K",   "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M",
    "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", NULL};
_Static_assert(sizeof quantize_ftype_names / sizeof quantize_ftype_names[0] == N_FTYPES + 1,
               "one name per file type");

int quantize_ftype_parse(const char *name, uint32_t *ftype)
{
	/* llama-quantize's aliases: the bare K type means its _M mix */
	static const struct {
		const char *alias, *name;
	} aliases[] = {{"Q3_K", "Q3_K_M"}, {"Q4_K", "Q4_K_M"}, {"Q5_K", "Q5_K_M"}};
	for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
		if (strcasecmp(name, aliases[i].alias) == 0)
			name = aliases[i].name;
	for (size_t i = 0; i < N_FTYPES; i++) {
		if (strcasecmp(name, ftypes[i].name) == 0) {
			*ftype = ftypes[i].ftype;
			return 0;
		}
	}
	return ITT_E_INVALID;
}

const char *quantize_ftype_name(uint32_t ftype)
{
	for (size_t i = 0; i < N_FTYPES; i++)
		if (ftypes[i].ftype == ftype)
			return ftypes[i].name;
	return NULL;
}

uint32_t quantize_ftype_base_type(uint32_t ftype)
{
	for (size_t i = 0; i < N_FTYPES; i++)
		if (ftypes[i].ftype == ftype)
			return ftypes[i].base;
	return GGML_TYPE_COUNT;
}

/* ---- per-tensor policy ------------------------------------------------- */

enum category {
	CAT_OTHER,
	CAT_TOKEN_EMBD,
	CAT_OUTPUT,
	CAT_ATTN_V,
	CAT_ATTN_QKV,
	CAT_ATTN_KV_B,
	CAT_ATTN_K,
	CAT_ATTN_Q,
	CAT_ATTN_OUTPUT,
	CAT_FFN_DOWN,
};

/* llama.cpp's broad categories: substrings, first match wins. */
static enum category tensor_category(const char *name)
{
	if (strcmp(name, "output.weight") == 0)
		return CAT_OUTPUT;
	if (strcmp(name, "token_embd.weight") == 0 ||
	    strcmp(name, "per_layer_token_embd.weight") == 0)
		return CAT_TOKEN_EMBD;
	static const struct {
		const char *sub;
		enum category cat;
	} subs[] = {
	    {"attn_qkv.weight", CAT_ATTN_QKV},
	    {"attn_kv_b.weight", CAT_ATTN_KV_B},
	    {"attn_v.weight", CAT_ATTN_V},
	    {"attn_k.weight", CAT_ATTN_K},
	    {"attn_q.weight", CAT_ATTN_Q},
	    {"attn_output.weight", CAT_ATTN_OUTPUT},
	    {"ffn_up", CAT_OTHER},
	    {"ffn_gate", CAT_OTHER},
	    {"ffn_down", CAT_FFN_DOWN},
	};
	for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++)
		if (strstr(name, subs[i].sub))
			return subs[i].cat;
	return CAT_OTHER;
}

/* More bits for the first and last eighth of the layers and every third
 * one between (llama.cpp's use_more_bits). */
static bool use_more_bits(int i, int n)
{
	return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static size_t block_of(uint32_t type)
{
	uint32_t block = ggml_blck_size(type);
	return block ? block : 1;
}

/* Why a tensor is not a weight matrix to quantise, or NULL. */
static const char *keep_reason(const char *name, uint32_t n_dims, uint32_t cur)
{
	size_t len = strlen(name);
	if (n_dims < 2)
		return "1-D";
	if (len < 6 || strcmp(name + len - 6, "weight") != 0)
		return "not a weight";
	/* llama.cpp's list, for the names that occur in dense models */
	static const char *const never[] = {"_norm.weight", "ffn_gate_inp.weight",
	                                    "position_embd.weight", "token_types.weight",
	                                    "attn_rel_b.weight"};
	for (size_t i = 0; i < sizeof never / sizeof never[0]; i++)
		if (strstr(name, never[i]))
			return "not quantised in llama.cpp's mixes";
	if (cur != GGML_TYPE_F32 && cur != GGML_TYPE_F16 && cur != GGML_TYPE_BF16)
		return "already quantised";
	return NULL;
}

/* The mix rules proper (llama.cpp's llama_tensor_get_type_impl, for the
 * file types above and dense models). */
static uint32_t mix_type(uint32_t ftype, const struct quantize_model *m, enum category cat,
                         int layer, uint64_t ne0, uint32_t t)
{
	bool falcon = m->falcon;
	uint32_t gqa = m->n_head_kv ? m->n_head / m->n_head_kv : 0;

	if (cat == CAT_OUTPUT || (!m->has_output && cat == CAT_TOKEN_EMBD)) {
		if (falcon || ne0 % block_of(t) != 0)
			return GGML_TYPE_Q8_0;
		return t != GGML_TYPE_Q8_0 ? GGML_TYPE_Q6_K : t;
	}
	if (cat == CAT_ATTN_V || cat == CAT_ATTN_QKV || cat == CAT_ATTN_KV_B) {
		/* attn_v-like: the attn_v rules first (llama.cpp checks them
		 * before the fused-QKV ones, so attn_qkv never reaches those) */
		int n = (int)m->n_attn_v;
		switch (ftype) {
		case QUANTIZE_FTYPE_Q2_K: return gqa >= 4 ? GGML_TYPE_Q4_K : GGML_TYPE_Q3_K;
		case QUANTIZE_FTYPE_Q3_K_M: return layer < 2 ? GGML_TYPE_Q5_K : GGML_TYPE_Q4_K;
		case QUANTIZE_FTYPE_Q3_K_L: return GGML_TYPE_Q5_K;
		case QUANTIZE_FTYPE_Q4_K_M:
		case QUANTIZE_FTYPE_Q5_K_M: return use_more_bits(layer, n) ? GGML_TYPE_Q6_K : t;
		case QUANTIZE_FTYPE_Q4_K_S: return layer < 4 ? GGML_TYPE_Q5_K : t;
		}
		return t;
	}
	if (cat == CAT_FFN_DOWN) {
		int n = (int)m->n_layer;
		bool more = use_more_bits(layer, n);
		switch (ftype) {
		case QUANTIZE_FTYPE_Q2_K: return GGML_TYPE_Q3_K;
		case QUANTIZE_FTYPE_Q3_K_M:
			return layer < n / 16    ? GGML_TYPE_Q5_K
			       : !falcon || more ? GGML_TYPE_Q4_K
			                         : GGML_TYPE_Q3_K;
		case QUANTIZE_FTYPE_Q3_K_L: return falcon ? GGML_TYPE_Q4_K : GGML_TYPE_Q5_K;
		case QUANTIZE_FTYPE_Q4_K_M:
			if (falcon)
				return layer < n / 16 ? GGML_TYPE_Q6_K
				       : more         ? GGML_TYPE_Q5_K
				                      : GGML_TYPE_Q4_K;
			return more ? GGML_TYPE_Q6_K : t;
		case QUANTIZE_FTYPE_Q5_K_M: return more ? GGML_TYPE_Q6_K : t;
		case QUANTIZE_FTYPE_Q4_K_S: return !falcon && layer < n / 8 ? GGML_TYPE_Q5_K : t;
		}
		return t;
	}
	if (cat == CAT_ATTN_OUTPUT) {
		if (falcon)
			return ftype == QUANTIZE_FTYPE_Q3_K_L ? GGML_TYPE_Q4_K : t;
		switch (ftype) {
		case QUANTIZE_FTYPE_Q2_K: return GGML_TYPE_Q3_K;
		case QUANTIZE_FTYPE_Q3_K_M: return GGML_TYPE_Q4_K;
		case QUANTIZE_FTYPE_Q3_K_L: return GGML_TYPE_Q5_K;
		}
		return t;
	}
	return t; /* token_embd (untied), attn_q, attn_k, ffn_up, ffn_gate, ... */
}

void quantize_model_add(struct quantize_model *m, const char *name)
{
	enum category cat = tensor_category(name);
	int layer;
	if (cat == CAT_ATTN_V || cat == CAT_ATTN_QKV || cat == CAT_ATTN_KV_B)
		m->n_attn_v++;
	if (cat == CAT_OUTPUT)
		m->has_output = true;
	if (sscanf(name, "blk.%d.", &layer) == 1 && layer >= 0 && (uint32_t)layer >= m->n_layer)
		m->n_layer = (uint32_t)layer + 1;
}

uint32_t quantize_tensor_type(uint32_t ftype, const struct quantize_model *m, const char *name,
                              uint32_t n_dims, const uint64_t *ne, uint32_t cur, const char **why)
{
	static _Thread_local char note[64];
	uint32_t base = quantize_ftype_base_type(ftype);
	const char *keep = keep_reason(name, n_dims, cur);
	if (why)
		*why = keep;
	if (keep || base == GGML_TYPE_COUNT)
		return cur;
	if (base == GGML_TYPE_F16 || base == GGML_TYPE_BF16)
		return base; /* not a quantised type: no mix rules, no fallback */

	int layer = 0;
	if (sscanf(name, "blk.%d.", &layer) != 1 || layer < 0)
		layer = 0;
	uint32_t t = m->pure ? base : mix_type(ftype, m, tensor_category(name), layer, ne[0], base);

	/* Rows that do not split into the type's blocks: the 32-block type of
	 * about the same size, and F16 when even 32 does not divide them. */
	if (ne[0] % block_of(t) != 0) {
		uint32_t want = t;
		switch (t) {
		case GGML_TYPE_Q2_K:
		case GGML_TYPE_Q3_K: t = GGML_TYPE_Q4_0; break;
		case GGML_TYPE_Q4_K: t = GGML_TYPE_Q5_0; break;
		case GGML_TYPE_Q5_K: t = GGML_TYPE_Q5_1; break;
		case GGML_TYPE_Q6_K: t = GGML_TYPE_Q8_0; break;
		}
		if (ne[0] % block_of(t) != 0)
			t = GGML_TYPE_F16;
		if (why) {
			snprintf(note, sizeof note, "fallback: %llu %% %zu != 0 for %s",
			         (unsigned long long)ne[0], block_of(want), ggml_type_name(want));
			*why = note;
		}
	}
	return t;
}
