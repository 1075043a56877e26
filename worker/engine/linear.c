/* linear: kernel choice per weight type and batch size, and the threaded
 * drivers of the three kernels. */
#include "linear.h"

#include <cblas.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant-dot.h"
#include "quant.h"

/* Rows of weight dequantised per sgemm tile (a few MB, stays in cache). */
#define TILE_ROWS 512

/* Crossovers measured with bench-linear on the 134M model's shapes (see the
 * README's performance section): up to these M the fused kernel beats
 * sgemm.  With the register-blocked kernel (QUANT_MAX_M = 32; cold weights,
 * 1 and 2 threads, three runs of medians of 11-15): F32 wins to M = 16 and
 * ties at 32 (sgemm won or tied 768x2048 in every run); F16 wins to 32 and loses
 * at 64 on two shapes of three; Q8_0 and Q4_0 win to 64 and tie at 128. */
#define FUSED_MAX_M_F32 16
#define FUSED_MAX_M_F16 32
#define FUSED_MAX_M_Q8_0 64
#define FUSED_MAX_M_Q4_0 64
/* BF16 as F16 (its kernels have the same shape).  The other block types
 * (Q4_1 .. Q6_K) go through quant.c's generic kernel, which decodes each
 * row once per call of up to QUANT_MAX_M inputs: beyond that the fused
 * path decodes the weights again for every 32 inputs while the GEMM path
 * decodes them once, so FUSED stops at 32 (not measured yet). */
#define FUSED_MAX_M_BF16 FUSED_MAX_M_F16
#define FUSED_MAX_M_BLOCKS 32

/* Integer products for quantised weights (quant-dot.h) unless the build
 * says otherwise. */
#ifndef LINEAR_ACT_QUANT_DEFAULT
#define LINEAR_ACT_QUANT_DEFAULT true
#endif

int linear_init(struct linear_ctx *lc, threadpool_t *pool, uint32_t max_cols, struct itt_err *err)
{
	memset(lc, 0, sizeof *lc);
	lc->tile_floats = (size_t)TILE_ROWS * max_cols;
	lc->tile = malloc(lc->tile_floats * sizeof(float));
	if (!lc->tile)
		return itt_err_set(err, ITT_E_NOMEM, "linear_init: cannot allocate a %zu-float tile",
				   lc->tile_floats);
	/* Quantised activation rows: the widest format is Q8_K (292 bytes per
	 * 256 values); Q8_1 is 36 per 32.  Rounded up to whole blocks. */
	size_t kb = ((size_t)max_cols + QK_K - 1) / QK_K * sizeof(struct block_q8_K);
	size_t lb = ((size_t)max_cols + 31) / 32 * sizeof(struct block_q8_1);
	lc->xq_bytes = (size_t)QUANT_MAX_M * (kb > lb ? kb : lb);
	lc->xq = malloc(lc->xq_bytes);
	lc->xf = malloc(lc->tile_floats * sizeof(float));
	if (!lc->xq || !lc->xf) {
		free(lc->tile);
		free(lc->xq);
		free(lc->xf);
		return itt_err_set(err, ITT_E_NOMEM, "linear_init: cannot allocate %zu bytes",
				   lc->xq_bytes);
	}
	lc->act_quant = LINEAR_ACT_QUANT_DEFAULT;
	lc->pool = pool;
	lc->n_threads = threadpool_size(pool);
	for (uint32_t t = 0; t < GGML_TYPE_COUNT; t++)
		lc->fused_max_m[t] = FUSED_MAX_M_BLOCKS;
	lc->fused_max_m[GGML_TYPE_F32] = FUSED_MAX_M_F32;
	lc->fused_max_m[GGML_TYPE_F16] = FUSED_MAX_M_F16;
	lc->fused_max_m[GGML_TYPE_BF16] = FUSED_MAX_M_BF16;
	lc->fused_max_m[GGML_TYPE_Q8_0] = FUSED_MAX_M_Q8_0;
	lc->fused_max_m[GGML_TYPE_Q4_0] = FUSED_MAX_M_Q4_0;
	/* OpenBLAS runs single-threaded inside our pool's threads, each on its
	 * own slice of weight rows: one set of threads, no oversubscription of
	 * the cores by two pools spinning against each other. */
	openblas_set_num_threads(1);
	return 0;
}

void linear_free(struct linear_ctx *lc)
{
	free(lc->tile);
	free(lc->xq);
	free(lc->xf);
	memset(lc, 0, sizeof *lc);
}

enum linear_path linear_choose(const struct linear_ctx *lc, uint32_t type, uint32_t M)
{
	if (lc->force == LINEAR_PATH_GEMV && type != GGML_TYPE_F32)
		return LINEAR_PATH_FUSED;
	if (lc->force != LINEAR_PATH_AUTO)
		return lc->force;
	/* Integer products at every batch size: a row's result then does not
	 * depend on the batch it comes in (replays and prefix reuse rebuild
	 * decode steps as prefill batches; with quantised activations, float
	 * rounding differences between two paths can flip a code and grow).
	 * On this path's speed at large M, see bench-linear's intdot column:
	 * at M = 128 it matched sgemm on dequantised tiles here. */
	if (lc->act_quant && quant_dot_act_type(type))
		return LINEAR_PATH_FUSED;
	uint32_t max_m = type < GGML_TYPE_COUNT ? lc->fused_max_m[type] : FUSED_MAX_M_BLOCKS;
	return M <= max_m ? LINEAR_PATH_FUSED : LINEAR_PATH_GEMM;
}

struct job {
	const struct model_weight *w;
	const float *X;
	const uint8_t *Xq; /* quantised X (act_quant), rows xq_row bytes apart */
	size_t xq_row;
	uint32_t M;
	float *Y;
	size_t ldy;
	size_t r0, n; /* dequantisation: tile rows */
};

static void fused_worker(void *arg, int ith, int nth)
{
	struct job *j = arg;
	size_t lo, hi;
	threadpool_split(j->w->rows, 16, ith, nth, &lo, &hi);
	if (lo < hi)
		quant_matmul_rows(j->w->type, j->w->data, j->w->row_bytes, j->w->cols, j->X, j->M,
				  j->Y, j->ldy, lo, hi);
}

static void dot_worker(void *arg, int ith, int nth)
{
	struct job *j = arg;
	size_t lo, hi;
	threadpool_split(j->w->rows, 16, ith, nth, &lo, &hi);
	if (lo < hi)
		quant_dot_rows(j->w->type, j->w->data, j->w->row_bytes, j->w->cols, j->Xq, j->xq_row,
			       j->M, j->Y, j->ldy, lo, hi);
}

static void gemv_worker(void *arg, int ith, int nth)
{
	struct job *j = arg;
	const struct model_weight *w = j->w;
	size_t lo, hi;
	threadpool_split(w->rows, 16, ith, nth, &lo, &hi);
	int n = (int)(hi - lo), k = (int)w->cols;
	for (uint32_t m = 0; lo < hi && m < j->M; m++)
		cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f,
			    (const float *)w->data + lo * w->cols, k, j->X + (size_t)m * k, 1, 0.0f,
			    j->Y + (size_t)m * j->ldy + lo, 1);
}

/* F32 sgemm on this thread's slice of weight rows. */
static void gemm_worker(void *arg, int ith, int nth)
{
	struct job *j = arg;
	const struct model_weight *w = j->w;
	size_t lo, hi;
	threadpool_split(w->rows, 16, ith, nth, &lo, &hi);
	if (lo >= hi)
		return;
	int k = (int)w->cols;
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->M, (int)(hi - lo), k, 1.0f,
		    j->X, k, (const float *)w->data + lo * w->cols, k, 0.0f, j->Y + lo,
		    (int)j->ldy);
}

static void dequant_worker(void *arg, int ith, int nth)
{
	struct job *j = arg;
	size_t lo, hi;
	threadpool_split(j->n, 1, ith, nth, &lo, &hi);
	const uint8_t *base = j->w->data;
	for (size_t r = lo; r < hi; r++)
		quant_dequant_row(j->w->type, base + (j->r0 + r) * j->w->row_bytes,
				  j->Y + r * j->w->cols, j->w->cols);
}

/* Dequantise TILE_ROWS weight rows at a time (in parallel) and let sgemm
 * reuse each tile across all M inputs. */
static void gemm_tiles(struct linear_ctx *lc, const struct model_weight *w, const float *X,
		       uint32_t M, float *Y, size_t ldy)
{
	for (size_t r0 = 0; r0 < w->rows; r0 += TILE_ROWS) {
		size_t n = w->rows - r0 < TILE_ROWS ? w->rows - r0 : TILE_ROWS;
		struct job dj = {.w = w, .Y = lc->tile, .r0 = r0, .n = n};
		threadpool_run(lc->pool, dequant_worker, &dj);
		struct model_weight tile = {lc->tile, GGML_TYPE_F32, (uint32_t)n, w->cols,
					    (size_t)w->cols * sizeof(float)};
		struct job bj = {.w = &tile, .X = X, .M = M, .Y = Y + r0, .ldy = ldy};
		threadpool_run(lc->pool, gemm_worker, &bj);
	}
}

void linear_matmul(struct linear_ctx *lc, const struct model_weight *w, const float *X, uint32_t M,
		   float *Y, size_t ldy)
{
	switch (linear_choose(lc, w->type, M)) {
	case LINEAR_PATH_GEMV: {
		struct job j = {.w = w, .X = X, .M = M, .Y = Y, .ldy = ldy};
		threadpool_run(lc->pool, gemv_worker, &j);
		return;
	}
	case LINEAR_PATH_FUSED:
		for (uint32_t m0 = 0; m0 < M; m0 += QUANT_MAX_M) {
			uint32_t mm = M - m0 < QUANT_MAX_M ? M - m0 : QUANT_MAX_M;
			struct job j = {.w = w, .X = X + (size_t)m0 * w->cols, .M = mm,
					.Y = Y + (size_t)m0 * ldy, .ldy = ldy};
			size_t ab = lc->act_quant ? quant_dot_act_row_bytes(w->type, w->cols) : 0;
			if (ab && ab * mm <= lc->xq_bytes) {
				/* quantise X once, on this thread, before the split */
				for (uint32_t m = 0; m < mm; m++)
					quant_dot_quantize_row(w->type, j.X + (size_t)m * w->cols,
							       lc->xq + m * ab, w->cols);
				j.Xq = lc->xq;
				j.xq_row = ab;
				threadpool_run(lc->pool, dot_worker, &j);
			} else {
				threadpool_run(lc->pool, fused_worker, &j);
			}
		}
		return;
	case LINEAR_PATH_AUTO:
	case LINEAR_PATH_GEMM:
		break;
	}
	if (w->type == GGML_TYPE_F32) {
		struct job j = {.w = w, .X = X, .M = M, .Y = Y, .ldy = ldy};
		threadpool_run(lc->pool, gemm_worker, &j);
		return;
	}
	size_t ab = lc->act_quant ? quant_dot_act_row_bytes(w->type, w->cols) : 0;
	if (!ab) {
		gemm_tiles(lc, w, X, M, Y, ldy);
		return;
	}
	/* the activations the integer products would see, TILE_ROWS at a time */
	for (uint32_t m0 = 0; m0 < M; m0 += TILE_ROWS) {
		uint32_t mm = M - m0 < TILE_ROWS ? M - m0 : TILE_ROWS;
		for (uint32_t m = 0; m < mm; m++) {
			quant_dot_quantize_row(w->type, X + (size_t)(m0 + m) * w->cols, lc->xq,
					       w->cols);
			quant_dot_dequantize_row(w->type, lc->xq, lc->xf + (size_t)m * w->cols,
						 w->cols);
		}
		gemm_tiles(lc, w, lc->xf, mm, Y + (size_t)m0 * ldy, ldy);
	}
}
