/* quant: weight element types other than F32 — half precision conversion,
 * the ggml block layouts (Q8_0 and Q4_0 below, the others further down),
 * row dequantisation, quantisation, and fused "dequantise and multiply"
 * kernels for small batches.
 *
 * Loadable weight types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
 * Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, in any mix.  Dequantisation gives ggml's
 * values bit for bit (tests/integration/test_dequant_peer.py checks it
 * against llama.cpp's on files llama-quantize wrote).
 *
 * Block layouts (little-endian, no padding), as in ggml:
 *   Q8_0: { uint16_t d (fp16); int8_t qs[32]; }          34 bytes / 32 values
 *         x[i] = d * qs[i]
 *   Q4_0: { uint16_t d (fp16); uint8_t qs[16]; }         18 bytes / 32 values
 *         x[j] = d * ((qs[j] & 15) - 8), x[j + 16] = d * ((qs[j] >> 4) - 8)
 * A row of n values (n a multiple of 32) is n/32 consecutive blocks. */
#ifndef ITT_QUANT_H
#define ITT_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define QK8_0 32
#define QK4_0 32

struct block_q8_0 {
	uint16_t d;
	int8_t qs[QK8_0];
};

struct block_q4_0 {
	uint16_t d;
	uint8_t qs[QK4_0 / 2];
};

_Static_assert(sizeof(struct block_q8_0) == 34, "q8_0 block layout");
_Static_assert(sizeof(struct block_q4_0) == 18, "q4_0 block layout");

/* The other block layouts of ggml (GGUF files carry them as written by
 * llama.cpp).  Legacy blocks hold 32 values; K-quant super-blocks hold
 * QK_K = 256 values in 16 or 8 sub-blocks whose scales are quantised too.
 * Scales d and mins m/dmin are fp16.  Values (codes q, sub-block scale
 * sc and minimum mn as stored; "bit b of x" counts from the least
 * significant):
 *   Q4_1: d q + m, q the nibbles as in Q4_0
 *   Q5_0: d (q - 16), Q5_1: d q + m; q = nibble | bit j of qh (little-
 *         endian 32 bits) << 4 for value j
 *   Q2_K: d sc q - dmin mn, per 16 values; scales[s] = sc | mn << 4
 *   Q3_K: d (sc - 32) (q - 4 if the hmask bit is clear), per 16 values
 *   Q4_K: d sc q - dmin mn, per 32 values (6-bit sc, mn packed in 12 bytes)
 *   Q5_K: as Q4_K with a fifth bit from qh
 *   Q6_K: (d sc) (q - 32), per 16 values, sc signed 8-bit
 * (quant-dequant.c spells out where each code and scale lives.) */
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

struct block_q4_1 {
	uint16_t d, m;
	uint8_t qs[QK4_1 / 2];
};

struct block_q5_0 {
	uint16_t d;
	uint8_t qh[4]; /* fifth bits */
	uint8_t qs[QK5_0 / 2];
};

struct block_q5_1 {
	uint16_t d, m;
	uint8_t qh[4];
	uint8_t qs[QK5_1 / 2];
};

struct block_q2_K {
	uint8_t scales[QK_K / 16]; /* 4-bit scale and 4-bit min per 16 values */
	uint8_t qs[QK_K / 4];      /* 2-bit quants */
	uint16_t d, dmin;
};

struct block_q3_K {
	uint8_t hmask[QK_K / 8]; /* high bits */
	uint8_t qs[QK_K / 4];    /* low 2 bits */
	uint8_t scales[12];      /* 16 6-bit scales */
	uint16_t d;
};

struct block_q4_K {
	uint16_t d, dmin;
	uint8_t scales[K_SCALE_SIZE]; /* 8 6-bit scales and 8 6-bit mins */
	uint8_t qs[QK_K / 2];
};

struct block_q5_K {
	uint16_t d, dmin;
	uint8_t scales[K_SCALE_SIZE];
	uint8_t qh[QK_K / 8];
	uint8_t qs[QK_K / 2];
};

struct block_q6_K {
	uint8_t ql[QK_K / 2];      /* low 4 bits */
	uint8_t qh[QK_K / 4];      /* high 2 bits */
	int8_t scales[QK_K / 16];  /* 8-bit scales */
	uint16_t d;
};

_Static_assert(sizeof(struct block_q4_1) == 20, "q4_1 block layout");
_Static_assert(sizeof(struct block_q5_0) == 22, "q5_0 block layout");
_Static_assert(sizeof(struct block_q5_1) == 24, "q5_1 block layout");
_Static_assert(sizeof(struct block_q2_K) == 84, "q2_K block layout");
_Static_assert(sizeof(struct block_q3_K) == 110, "q3_K block layout");
_Static_assert(sizeof(struct block_q4_K) == 144, "q4_K block layout");
_Static_assert(sizeof(struct block_q5_K) == 176, "q5_K block layout");
_Static_assert(sizeof(struct block_q6_K) == 210, "q6_K block layout");

/* 1 if weights of this type can be loaded and multiplied (the model loader
 * asks this), else 0. */
int quant_type_supported(uint32_t type);

/* IEEE half <-> single in portable C; fp32 -> fp16 rounds to nearest even,
 * handles subnormals, infinities and NaN.  Both agree bit for bit with the
 * F16C instructions: NaNs become quiet and keep the top payload bits. */
float quant_fp16_to_fp32(uint16_t h);
uint16_t quant_fp32_to_fp16(float f);

/* Bytes of a row of n elements of a loadable type (quant_type_supported);
 * 0 if the type is not one, n is not a multiple of its block size (32, or
 * 256 for the K-quants) or the size does not fit a size_t. */
size_t quant_row_bytes(uint32_t type, size_t n);

/* Dequantises n elements (n a multiple of the block size) of any loadable
 * type into dst, exactly as ggml's dequantize_row_* does.  src needs no
 * alignment.  Returns 0, ITT_E_UNSUPPORTED for a type it does not handle,
 * or ITT_E_INVALID when n is not a multiple of the block size. */
int quant_dequant_row(uint32_t type, const void *src, float *dst, size_t n);

/* Quantises n floats into dst (quant_row_bytes(type, n) bytes) with ggml's
 * reference rounding rules.  Types: F16, BF16 (round to nearest even),
 * Q8_0, Q4_0 (and F32 as a copy).  Returns 0, ITT_E_UNSUPPORTED, or
 * ITT_E_INVALID when n is not a multiple of the block size.
 *
 * Error bounds, up to float rounding of x / d (d the float scale, dh the
 * fp16 scale the block holds and dequantisation uses):
 *   Q8_0 (d = amax / 127):     |x - dh q| <= d/2 + 127 |d - dh|
 *   Q4_0 (d = -(signed max) / 8): |x - dh (q - 8)| <= |d|/2 + 8 |d - dh| when
 *         x/d < 7.5; up to |d| + 8 |d - dh| for x/d in [7.5, 8] (values of the
 *         sign opposite to the largest one, whose code 16 is clipped to 15). */
int quant_quantize_row(uint32_t type, const float *src, void *dst, size_t n);

/* Fused small-batch product for a weight matrix W with rows of K elements
 * stored row_stride bytes apart:
 *     Y[m * ldy + r] = sum_k W[r][k] * X[m * K + k]
 * for m in [0, M) and weight rows r in [r0, r1); other entries of Y are not
 * touched.  Types: every loadable one; K must be a multiple of the block
 * size (32, or 256 for the K-quants), any K for the float types (F32, F16,
 * BF16).  1 <= M <= QUANT_MAX_M, and ldy >= r1 when M > 1.  Returns 0,
 * ITT_E_UNSUPPORTED (type) or ITT_E_INVALID (arguments); r0 == r1 does
 * nothing.
 *
 * W streams from memory once per call.  For small M each weight block is
 * dequantised into registers once per group of up to 8 inputs (5 on AVX2)
 * and used for all of them (with more inputs the rows go in short chunks,
 * still read from memory once).  From a few inputs up the AVX-512 build
 * switches to a register-blocked kernel: 6 weight rows x 4 inputs per
 * inner loop, the rows dequantised once per call into a buffer that stays
 * in cache for every group of inputs.  The other block types (Q4_1, Q5_0,
 * Q5_1, the K-quants) take a first, generic path instead: each row is
 * decoded a super-block at a time (portable C) into a buffer that is then
 * multiplied exactly as an F32 row would be, so for these types a kernel's
 * result equals its F32 result on quant_dequant_row's values bit for bit.
 * The activations are not quantised: the weights multiplied are
 * quant_dequant_row's values and the only rounding is the float summation
 * (16 to 32 partial sums per output, then a fixed reduction), within
 * (K/8 + 8) 2^-24 sum |w x| of the exact dot product of the dequantised
 * row, and in practice much closer.
 *
 * Determinism: for one kernel, Y[m][r] depends only on W row r, X row m and
 * K; not on M, m, r0, r1, ldy or the alignment of X.  A batched call equals
 * M single calls bit for bit, and any split of [r0, r1) across threads gives
 * the same result.  Different kernels (scalar, AVX2, AVX-512) may differ in
 * the last bits.  Single-threaded: callers split [r0, r1) across threads. */
#define QUANT_MAX_M 32
int quant_matmul_rows(uint32_t type, const void *W, size_t row_stride, size_t K, const float *X,
                      size_t M, float *Y, size_t ldy, size_t r0, size_t r1);

/* The kernels behind quant_matmul_rows, for tests and benchmarks.  AUTO is
 * the widest one compiled in (the build targets one instruction set). */
enum quant_kernel {
	QUANT_KERNEL_AUTO = 0,
	QUANT_KERNEL_SCALAR, /* portable C, always built */
	QUANT_KERNEL_AVX2,   /* AVX2 + FMA + F16C */
	QUANT_KERNEL_AVX512, /* AVX-512F + FMA + F16C */
	QUANT_KERNEL_COUNT
};

/* 1 if the kernel is compiled in, else 0. */
int quant_kernel_available(enum quant_kernel kernel);
const char *quant_kernel_name(enum quant_kernel kernel);
/* quant_matmul_rows with a chosen kernel; ITT_E_UNSUPPORTED if absent. */
int quant_matmul_rows_kernel(enum quant_kernel kernel, uint32_t type, const void *W,
                             size_t row_stride, size_t K, const float *X, size_t M, float *Y,
                             size_t ldy, size_t r0, size_t r1);

#endif
