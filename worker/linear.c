/* linear: kernel choice per weight type and batch size. */
#include "linear.h"

#include <cblas.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

/* Rows of weight dequantised per sgemm tile (a few MB, stays in L2/L3). */
#define TILE_ROWS 512

int linear_init(struct linear_ctx *lc, threadpool_t *pool, uint32_t max_cols, struct itt_err *err)
{
	memset(lc, 0, sizeof *lc);
	lc->tile_floats = (size_t)TILE_ROWS * max_cols;
	lc->tile = malloc(lc->tile_floats * sizeof(float));
	if (!lc->tile)
		return itt_err_set(err, ITT_E_NOMEM, "linear_init: cannot allocate a %zu-float tile",
				   lc->tile_floats);
	lc->pool = pool;
	lc->n_threads = threadpool_size(pool);
	lc->f32_gemv_max_m = 1;
	lc->quant_fused_max_m = QUANT_MAX_M;
	/* OpenBLAS runs single-threaded inside our pool's threads, each on its
	 * own slice of weight rows: one set of threads, no oversubscription of
	 * the cores by two pools spinning against each other. */
	openblas_set_num_threads(1);
	return 0;
}

void linear_free(struct linear_ctx *lc)
{
	free(lc->tile);
	memset(lc, 0, sizeof *lc);
}

struct fused_job {
	const struct model_weight *w;
	const float *X;
	uint32_t M;
	float *Y;
	size_t ldy;
};

static void fused_worker(void *arg, int ith, int nth)
{
	struct fused_job *j = arg;
	size_t lo, hi;
	threadpool_split(j->w->rows, 16, ith, nth, &lo, &hi);
	if (lo < hi)
		quant_matmul_rows(j->w->type, j->w->data, j->w->row_bytes, j->w->cols, j->X, j->M,
				  j->Y, j->ldy, lo, hi);
}

struct dequant_job {
	const struct model_weight *w;
	size_t r0, n;
	float *dst;
};

static void dequant_worker(void *arg, int ith, int nth)
{
	struct dequant_job *j = arg;
	size_t lo, hi;
	threadpool_split(j->n, 1, ith, nth, &lo, &hi);
	const uint8_t *base = j->w->data;
	for (size_t r = lo; r < hi; r++)
		quant_dequant_row(j->w->type, base + (j->r0 + r) * j->w->row_bytes,
				  j->dst + r * j->w->cols, j->w->cols);
}

struct blas_job {
	const struct model_weight *w;
	const float *X;
	uint32_t M;
	float *Y;
	size_t ldy;
	bool gemv;
};

/* F32 through OpenBLAS on this thread's slice of weight rows. */
static void blas_worker(void *arg, int ith, int nth)
{
	struct blas_job *j = arg;
	const struct model_weight *w = j->w;
	size_t lo, hi;
	threadpool_split(w->rows, 16, ith, nth, &lo, &hi);
	if (lo >= hi)
		return;
	const float *W = (const float *)w->data + lo * w->cols;
	int n = (int)(hi - lo), k = (int)w->cols;
	if (j->gemv) {
		for (uint32_t m = 0; m < j->M; m++)
			cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f, W, k,
				    j->X + (size_t)m * k, 1, 0.0f, j->Y + (size_t)m * j->ldy + lo, 1);
	} else {
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)j->M, n, k, 1.0f, j->X, k,
			    W, k, 0.0f, j->Y + lo, (int)j->ldy);
	}
}

void linear_matmul(struct linear_ctx *lc, const struct model_weight *w, const float *X, uint32_t M,
		   float *Y, size_t ldy)
{
	if (w->type == GGML_TYPE_F32) {
		struct blas_job j = {w, X, M, Y, ldy, M <= lc->f32_gemv_max_m};
		threadpool_run(lc->pool, blas_worker, &j);
		return;
	}
	if (M <= lc->quant_fused_max_m) {
		for (uint32_t m0 = 0; m0 < M; m0 += QUANT_MAX_M) {
			uint32_t mm = M - m0 < QUANT_MAX_M ? M - m0 : QUANT_MAX_M;
			struct fused_job j = {w, X + (size_t)m0 * w->cols, mm, Y + (size_t)m0 * ldy,
					      ldy};
			threadpool_run(lc->pool, fused_worker, &j);
		}
		return;
	}
	/* Large M: dequantise TILE_ROWS weight rows at a time (in parallel) and
	 * let sgemm reuse each tile across all M inputs, also split by rows. */
	for (size_t r0 = 0; r0 < w->rows; r0 += TILE_ROWS) {
		size_t n = w->rows - r0 < TILE_ROWS ? w->rows - r0 : TILE_ROWS;
		struct dequant_job dj = {w, r0, n, lc->tile};
		threadpool_run(lc->pool, dequant_worker, &dj);
		struct model_weight tile = {lc->tile, GGML_TYPE_F32, (uint32_t)n, w->cols,
					    (size_t)w->cols * sizeof(float)};
		struct blas_job bj = {&tile, X, M, Y + r0, ldy, false};
		threadpool_run(lc->pool, blas_worker, &bj);
	}
}
