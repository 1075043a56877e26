/* quant-dequant: Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K blocks
 * into floats, written from the ggml block formats (quant.h).
 *
 * Layouts are read byte by byte at the offsets of quant.h's structs, so a
 * block may sit at any address and the file's little-endian order holds on
 * any host.  The per-block decoders are plain loops over runs of 16 or 32
 * values that share one scale, which the compiler vectorises.
 *
 * Exactness (why the results equal ggml's bit for bit): fp16 scales have
 * 11 significant bits; a sub-block scale of 4, 6 or 8 bits times one gives
 * at most 18 bits, and a code of at most 6 bits (5 significant, since 32 is
 * a power of two) brings a product to at most 23: exact in float.  The
 * products are formed in ggml's order ((d * sc) * q for Q6_K), and the
 * types with a minimum add or subtract it once, rounded to nearest. */
#include "quant-dequant.h"

#include <stddef.h>

#include "gguf.h"
#include "quant.h"


/* ---- legacy blocks of 32: byte j holds values j (low nibble) and j + 16 */

static void dequant_q4_1(const uint8_t *blk, float *y)
{
	float d = quant_fp16_at(blk + offsetof(struct block_q4_1, d));
	float m = quant_fp16_at(blk + offsetof(struct block_q4_1, m));
	const uint8_t *qs = blk + offsetof(struct block_q4_1, qs);
	for (int j = 0; j < QK4_1 / 2; j++) {
		y[j] = d * (float)(qs[j] & 15) + m;
		y[j + QK4_1 / 2] = d * (float)(qs[j] >> 4) + m;
	}
}

/* Q5_0 / Q5_1: bit j of the little-endian qh is the fifth bit of value j. */
static void dequant_q5_0(const uint8_t *blk, float *y)
{
	float d = quant_fp16_at(blk + offsetof(struct block_q5_0, d));
	uint32_t qh = quant_u32_at(blk + offsetof(struct block_q5_0, qh));
	const uint8_t *qs = blk + offsetof(struct block_q5_0, qs);
	for (int j = 0; j < QK5_0 / 2; j++) {
		int q0 = (qs[j] & 15) | (int)((qh >> j) & 1) << 4;
		int q1 = (qs[j] >> 4) | (int)((qh >> (j + QK5_0 / 2)) & 1) << 4;
		y[j] = d * (float)(q0 - 16);
		y[j + QK5_0 / 2] = d * (float)(q1 - 16);
	}
}

static void dequant_q5_1(const uint8_t *blk, float *y)
{
	float d = quant_fp16_at(blk + offsetof(struct block_q5_1, d));
	float m = quant_fp16_at(blk + offsetof(struct block_q5_1, m));
	uint32_t qh = quant_u32_at(blk + offsetof(struct block_q5_1, qh));
	const uint8_t *qs = blk + offsetof(struct block_q5_1, qs);
	for (int j = 0; j < QK5_1 / 2; j++) {
		int q0 = (qs[j] & 15) | (int)((qh >> j) & 1) << 4;
		int q1 = (qs[j] >> 4) | (int)((qh >> (j + QK5_1 / 2)) & 1) << 4;
		y[j] = d * (float)q0 + m;
		y[j + QK5_1 / 2] = d * (float)q1 + m;
	}
}

/* ---- K-quants: super-blocks of QK_K = 256 ------------------------------
 *
 * Q2_K and Q3_K keep 2-bit codes four to a byte: each half (128 values) of
 * the super-block owns 32 bytes of qs, and its value 32 j + l (j < 4,
 * l < 32) is bits 2j, 2j+1 of byte l.  Sub-blocks of 16 values s = 0..15
 * therefore read bytes 16 (s % 2) .. + 15 of their half, at shift
 * 2 ((s % 8) / 2). */

static void dequant_q2_K(const uint8_t *blk, float *y)
{
	const uint8_t *sc = blk + offsetof(struct block_q2_K, scales);
	const uint8_t *qs = blk + offsetof(struct block_q2_K, qs);
	float d = quant_fp16_at(blk + offsetof(struct block_q2_K, d));
	float dmin = quant_fp16_at(blk + offsetof(struct block_q2_K, dmin));
	for (int s = 0; s < QK_K / 16; s++) {
		/* low nibble: scale, high nibble: minimum */
		float dl = d * (float)(sc[s] & 15), ml = dmin * (float)(sc[s] >> 4);
		const uint8_t *q = qs + 32 * (s / 8) + 16 * (s % 2);
		int shift = 2 * ((s % 8) / 2);
		for (int l = 0; l < 16; l++)
			y[16 * s + l] = dl * (float)((q[l] >> shift) & 3) - ml;
	}
}

/* Q3_K: the third bit of value 128 h + 32 j + l is bit 4 h + j of
 * hmask[l], and a clear bit subtracts 4.  The 16 6-bit scales, offset by
 * 32: low nibbles in bytes 0-7 (scales 0-7 low halves, 8-15 high halves),
 * the top two bits of scale s at bits 2 (s / 4) of byte 8 + s % 4. */
static void dequant_q3_K(const uint8_t *blk, float *y)
{
	const uint8_t *hm = blk + offsetof(struct block_q3_K, hmask);
	const uint8_t *qs = blk + offsetof(struct block_q3_K, qs);
	const uint8_t *sc = blk + offsetof(struct block_q3_K, scales);
	float d = quant_fp16_at(blk + offsetof(struct block_q3_K, d));
	for (int s = 0; s < QK_K / 16; s++) {
		int lo = s < 8 ? sc[s] & 15 : sc[s - 8] >> 4;
		int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
		float dl = d * (float)((lo | hi << 4) - 32);
		const uint8_t *q = qs + 32 * (s / 8) + 16 * (s % 2);
		const uint8_t *h = hm + 16 * (s % 2);
		int shift = 2 * ((s % 8) / 2);
		uint8_t bit = (uint8_t)(1u << (4 * (s / 8) + (s % 8) / 2));
		for (int l = 0; l < 16; l++)
			y[16 * s + l] =
			    dl * (float)(((q[l] >> shift) & 3) - ((h[l] & bit) ? 0 : 4));
	}
}

/* Sub-block j's scale and minimum as floats (quant_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *q, float d, float dmin, float *dl, float *ml)
{
	int sc, m;
	quant_scale_min_k4(j, q, &sc, &m);
	*dl = d * (float)sc;
	*ml = dmin * (float)m;
}

/* Each 64 values g share 32 bytes of qs: low nibbles are sub-block 2g,
 * high nibbles 2g + 1. */
static void dequant_q4_K(const uint8_t *blk, float *y)
{
	const uint8_t *sc = blk + offsetof(struct block_q4_K, scales);
	const uint8_t *qs = blk + offsetof(struct block_q4_K, qs);
	float d = quant_fp16_at(blk + offsetof(struct block_q4_K, d));
	float dmin = quant_fp16_at(blk + offsetof(struct block_q4_K, dmin));
	for (int s = 0; s < QK_K / 32; s++) {
		float dl, ml;
		scale_min_k4(s, sc, d, dmin, &dl, &ml);
		const uint8_t *q = qs + 32 * (s / 2);
		int shift = 4 * (s % 2);
		for (int l = 0; l < 32; l++)
			y[32 * s + l] = dl * (float)((q[l] >> shift) & 15) - ml;
	}
}

/* Q5_K: as Q4_K, and the fifth bit of sub-block s's value l is bit s of
 * qh[l]. */
static void dequant_q5_K(const uint8_t *blk, float *y)
{
	const uint8_t *sc = blk + offsetof(struct block_q5_K, scales);
	const uint8_t *qh = blk + offsetof(struct block_q5_K, qh);
	const uint8_t *qs = blk + offsetof(struct block_q5_K, qs);
	float d = quant_fp16_at(blk + offsetof(struct block_q5_K, d));
	float dmin = quant_fp16_at(blk + offsetof(struct block_q5_K, dmin));
	for (int s = 0; s < QK_K / 32; s++) {
		float dl, ml;
		scale_min_k4(s, sc, d, dmin, &dl, &ml);
		const uint8_t *q = qs + 32 * (s / 2);
		int shift = 4 * (s % 2);
		for (int l = 0; l < 32; l++) {
			int v = ((q[l] >> shift) & 15) | ((qh[l] >> s) & 1) << 4;
			y[32 * s + l] = dl * (float)v - ml;
		}
	}
}

/* Q6_K: each half h (128 values) owns 64 bytes of ql, 32 of qh and 8
 * scales.  Its quarter k (32 values) takes the low (k < 2) or high nibbles
 * of ql bytes 32 (k % 2) .. + 31 and bits 2k, 2k+1 of qh[l]; codes are
 * offset by 32 and sub-blocks of 16 have signed 8-bit scales. */
static void dequant_q6_K(const uint8_t *blk, float *y)
{
	const uint8_t *ql = blk + offsetof(struct block_q6_K, ql);
	const uint8_t *qh = blk + offsetof(struct block_q6_K, qh);
	const uint8_t *sc = blk + offsetof(struct block_q6_K, scales);
	float d = quant_fp16_at(blk + offsetof(struct block_q6_K, d));
	for (int h = 0; h < 2; h++)
		for (int k = 0; k < 4; k++)
			for (int s = 0; s < 2; s++) {
				/* ggml: d * sc * q, i.e. (d * sc) * q */
				float ds = d * (float)(int8_t)sc[8 * h + 2 * k + s];
				const uint8_t *lo = ql + 64 * h + 32 * (k % 2) + 16 * s;
				const uint8_t *hi = qh + 32 * h + 16 * s;
				int shift = 4 * (k / 2);
				float *out = y + 128 * h + 32 * k + 16 * s;
				for (int l = 0; l < 16; l++) {
					int v = ((lo[l] >> shift) & 15) | ((hi[l] >> (2 * k)) & 3)
					                                      << 4;
					out[l] = ds * (float)(v - 32);
				}
			}
}

/* ---- per-type table ----------------------------------------------------- */

struct block_type {
	uint32_t type;
	size_t elems, bytes;
	void (*decode)(const uint8_t *blk, float *y);
};

static const struct block_type block_types[] = {
    {GGML_TYPE_Q4_1, QK4_1, sizeof(struct block_q4_1), dequant_q4_1},
    {GGML_TYPE_Q5_0, QK5_0, sizeof(struct block_q5_0), dequant_q5_0},
    {GGML_TYPE_Q5_1, QK5_1, sizeof(struct block_q5_1), dequant_q5_1},
    {GGML_TYPE_Q2_K, QK_K, sizeof(struct block_q2_K), dequant_q2_K},
    {GGML_TYPE_Q3_K, QK_K, sizeof(struct block_q3_K), dequant_q3_K},
    {GGML_TYPE_Q4_K, QK_K, sizeof(struct block_q4_K), dequant_q4_K},
    {GGML_TYPE_Q5_K, QK_K, sizeof(struct block_q5_K), dequant_q5_K},
    {GGML_TYPE_Q6_K, QK_K, sizeof(struct block_q6_K), dequant_q6_K},
};

static const struct block_type *block_type_of(uint32_t type)
{
	for (size_t i = 0; i < sizeof block_types / sizeof block_types[0]; i++)
		if (block_types[i].type == type)
			return &block_types[i];
	return NULL;
}

int quant_dequant_is_block_type(uint32_t type)
{
	return block_type_of(type) != NULL;
}

size_t quant_dequant_block_elems(uint32_t type)
{
	const struct block_type *bt = block_type_of(type);
	return bt ? bt->elems : 0;
}

size_t quant_dequant_block_bytes(uint32_t type)
{
	const struct block_type *bt = block_type_of(type);
	return bt ? bt->bytes : 0;
}

void quant_dequant_blocks(uint32_t type, const uint8_t *src, float *dst, size_t n)
{
	const struct block_type *bt = block_type_of(type);
	if (!bt)
		return;
	for (size_t b = 0; b < n / bt->elems; b++)
		bt->decode(src + b * bt->bytes, dst + b * bt->elems);
}
