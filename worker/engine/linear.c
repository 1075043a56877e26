/* linear: kernel choice per weight type and batch size, and the threaded
 * drivers of the three kernels. */
#include "linear.h"

#include <cblas.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
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
	memset(lc, 0, sizeof *lc);
}

enum linear_path linear_choose(const struct linear_ctx *lc, uint32_t type, uint32_t M)
{
	if (lc->force == LINEAR_PATH_GEMV && type != GGML_TYPE_F32)
		return LINEAR_PATH_FUSED;
	if (lc->force != LINEAR_PATH_AUTO)
		return lc->force;
	uint32_t max_m = type < GGML_TYPE_COUNT ? lc->fused_max_m[type] : FUSED_MAX_M_BLOCKS;
	return M <= max_m ? LINEAR_PATH_FUSED : LINEAR_PATH_GEMM;
}

struct job {
	const struct model_weight *w;
	const float *X;
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

void linear_matmul(struct linear_ctx *lc, const struct model_weight *w, const float *X, uint32_t M,
		   float *Y, size_t ldy)
{
	switch (linear_choose(lc, w->type, M)) {
	case LINEAR_PATH_GEMV: {
		struct job j = {w, X, M, Y, ldy, 0, 0};
		threadpool_run(lc->pool, gemv_worker, &j);
		return;
	}
	case LINEAR_PATH_FUSED:
		for (uint32_t m0 = 0; m0 < M; m0 += QUANT_MAX_M) {
			uint32_t mm = M - m0 < QUANT_MAX_M ? M - m0 : QUANT_MAX_M;
			struct job j = {w, X + (size_t)m0 * w->cols, mm, Y + (size_t)m0 * ldy, ldy,
					0, 0};
			threadpool_run(lc->pool, fused_worker, &j);
		}
		return;
	case LINEAR_PATH_AUTO:
	case LINEAR_PATH_GEMM:
		break;
	}
	if (w->type == GGML_TYPE_F32) {
		struct job j = {w, X, M, Y, ldy, 0, 0};
		threadpool_run(lc->pool, gemm_worker, &j);
		return;
	}
	/* Dequantise TILE_ROWS weight rows at a time (in parallel) and let
	 * sgemm reuse each tile across all M inputs. */
	for (size_t r0 = 0; r0 < w->rows; r0 += TILE_ROWS) {
		size_t n = w->rows - r0 < TILE_ROWS ? w->rows - r0 : TILE_ROWS;
		struct job dj = {w, NULL, 0, lc->tile, 0, r0, n};
		threadpool_run(lc->pool, dequant_worker, &dj);
		struct model_weight tile = {lc->tile, GGML_TYPE_F32, (uint32_t)n, w->cols,
					    (size_t)w->cols * sizeof(float)};
		struct job bj = {&tile, X, M, Y + r0, ldy, 0, 0};
		threadpool_run(lc->pool, gemm_worker, &bj);
	}
}
