/* linear: the one place where weight matrices meet activations.
 *
 *     Y[m][r] = sum_k W[r][k] X[m][k]     (Y = X W^T, m < M, r < rows)
 *
 * Three kernels, chosen per weight type and batch size M by measurement
 * (tests/bench/bench-linear.c; figures in the README):
 *   FUSED  quant.h's kernel: each weight block is read (and dequantised)
 *          once for up to QUANT_MAX_M input rows; the weights stream once.
 *          Wins for small M, where decode is bound by memory bandwidth.
 *   GEMM   OpenBLAS sgemm (quantised weights dequantised a tile at a time
 *          first, by quant_dequant_row); wins once M is large enough to be
 *          bound by compute.
 *   GEMV   OpenBLAS sgemv once per input row (F32 only); kept for
 *          comparison, never faster than FUSED here.
 * With act_quant on (the default), the FUSED path for quantised weights
 * is llama.cpp's arithmetic instead (quant-dot.h): X is quantised once per
 * call to 8-bit blocks (Q8_0, Q8_1 or Q8_K by weight type) and each block
 * pair is an integer dot product, and linear_choose picks FUSED at every
 * M for those weights, so that a row's result never depends on the batch
 * size (replays and prefix reuse depend on that).  Off, FUSED multiplies
 * float X by the dequantised weights up to the measured crossovers.  A
 * forced GEMM path stays sgemm on dequantised weight tiles; with act_quant
 * on its X is first quantised and dequantised the same way (equal to the
 * integer products up to float rounding).
 * Every kernel runs inside the thread pool, split by weight rows; OpenBLAS
 * itself runs single-threaded, so there is one set of threads. */
#ifndef ITT_LINEAR_H
#define ITT_LINEAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"
#include "model.h"
#include "threadpool.h"

enum linear_path {
	LINEAR_PATH_AUTO = 0,
	LINEAR_PATH_FUSED,
	LINEAR_PATH_GEMM,
	LINEAR_PATH_GEMV,
};

struct linear_ctx {
	threadpool_t *pool;
	int n_threads;
	uint32_t fused_max_m[GGML_TYPE_COUNT]; /* per weight type: M <= this uses FUSED */
	enum linear_path force;  /* benchmarks: one path for everything */
	float *tile;             /* dequantised weight tile for the GEMM path */
	size_t tile_floats;
	bool act_quant;          /* FUSED on quantised weights: integer products */
	uint8_t *xq;             /* [QUANT_MAX_M] quantised activation rows */
	size_t xq_bytes;
	float *xf;               /* [TILE_ROWS][max_cols] X quantised and dequantised (GEMM) */
};

/* max_cols: the widest input of any weight used with this context (sizes
 * the dequantisation tile). */
int linear_init(struct linear_ctx *lc, threadpool_t *pool, uint32_t max_cols, struct itt_err *err);
void linear_free(struct linear_ctx *lc);

/* The path linear_matmul takes for this weight type and M. */
enum linear_path linear_choose(const struct linear_ctx *lc, uint32_t type, uint32_t M);

/* Y has leading dimension ldy (>= w->rows); X is [M][w->cols] contiguous. */
void linear_matmul(struct linear_ctx *lc, const struct model_weight *w, const float *X, uint32_t M,
		   float *Y, size_t ldy);

#endif
