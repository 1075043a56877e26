/* linear: the one place where weight matrices meet activations.
 *
 *     Y[m][r] = sum_k W[r][k] X[m][k]     (Y = X W^T, m < M, r < rows)
 *
 * The kernel is chosen per weight type and batch size M, by measurement
 * (tests/bench/bench-linear): F32 goes to OpenBLAS (sgemv for few rows,
 * sgemm above a threshold); F16/Q8_0/Q4_0 go to the fused dequantising
 * kernel of quant.h for small M (weights stream once, no F32 copy) and to
 * dequantise-a-tile-then-sgemm for large M.  Our own kernels are split over
 * the thread pool by weight rows. */
#ifndef ITT_LINEAR_H
#define ITT_LINEAR_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "model.h"
#include "threadpool.h"

struct linear_ctx {
	threadpool_t *pool;
	int n_threads;
	uint32_t f32_gemv_max_m;   /* F32: M <= this uses one sgemv per row */
	uint32_t quant_fused_max_m; /* quantised: M <= this uses the fused kernel */
	float *tile;               /* dequantised weight tile for the sgemm path */
	size_t tile_floats;
};

/* max_cols: the widest input of any weight used with this context (sizes
 * the dequantisation tile). */
int linear_init(struct linear_ctx *lc, threadpool_t *pool, uint32_t max_cols, struct itt_err *err);
void linear_free(struct linear_ctx *lc);

/* Y has leading dimension ldy (>= w->rows); X is [M][w->cols] contiguous. */
void linear_matmul(struct linear_ctx *lc, const struct model_weight *w, const float *X, uint32_t M,
		   float *Y, size_t ldy);

#endif
