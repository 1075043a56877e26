/* quant-dequant: the block decoders of the ggml types that quant.c's
 * kernels do not decode in registers (Q4_1, Q5_0, Q5_1 and the K-quants
 * Q2_K .. Q6_K), and the byte readers of block fields that quant.c and
 * quant-dot.c use too.  Internal to those files; the engine's interface is
 * quant.h.
 *
 * Every value is the one ggml's dequantize_row_* gives, bit for bit: the
 * products of a scale and a code are exact in float (at most 23
 * significant bits), so the only rounding is the one subtraction or
 * addition of a block minimum, and whether the compiler fuses it with the
 * product cannot change the result. */
#ifndef ITT_QUANT_DEQUANT_H
#define ITT_QUANT_DEQUANT_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* Little-endian fields at any address. */
static inline uint16_t quant_u16_at(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t quant_u32_at(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline float quant_fp16_at(const uint8_t *p)
{
	return quant_fp16_to_fp32(quant_u16_at(p));
}

/* Q4_K / Q5_K: scale and minimum of sub-block j (32 values), 6 bits each,
 * packed in 12 bytes: for j < 4 the low 6 bits of bytes j and j + 4; for
 * j >= 4 a nibble of byte j + 4 and the top two bits of bytes j - 4 and j. */
static inline void quant_scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
	if (j < 4) {
		*sc = q[j] & 63;
		*m = q[j + 4] & 63;
	} else {
		*sc = (q[j + 4] & 15) | (q[j - 4] >> 6) << 4;
		*m = (q[j + 4] >> 4) | (q[j] >> 6) << 4;
	}
}

/* 1 for the types decoded here, else 0. */
int quant_dequant_is_block_type(uint32_t type);

/* Elements per block of such a type (32, or QK_K for the K-quants), and
 * bytes per block; 0 for any other type. */
size_t quant_dequant_block_elems(uint32_t type);
size_t quant_dequant_block_bytes(uint32_t type);

/* n values (n a multiple of the block size, not checked) of such a type
 * from src into dst.  src needs no alignment. */
void quant_dequant_blocks(uint32_t type, const uint8_t *src, float *dst, size_t n);

#endif
