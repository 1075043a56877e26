/* quant-dequant: the block decoders of the ggml types that quant.c's
 * kernels do not decode in registers (Q4_1, Q5_0, Q5_1 and the K-quants
 * Q2_K .. Q6_K).  Internal to quant.c; the engine's interface is quant.h.
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
