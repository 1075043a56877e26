/* forward: the llama forward pass of one layer range over a batch of rows.
 *
 * A batch is a set of rows, each a (token or hidden state, position,
 * sequence) triple; rows of several sequences mix freely.  The rows of one
 * sequence must be consecutive positions continuing that sequence's cache
 * (the first at seq->n_pos), in order.  Per layer the pass computes Q, K, V
 * for all rows with one matrix product each, writes K and V into the paged
 * cache (converted to the cache's element type, F32 or F16), then attends
 * each row to positions [0, pos] of its own sequence, reading the cache
 * block by block.  A row never writes into a block shared with another
 * sequence: shared blocks in the rows' range are copied first
 * (kv_seq_prepare).
 *
 * Output: on the last stage, logits [n_out][vocab] for the rows whose
 * want_logits flag is set (all rows when want_logits is NULL), in row order;
 * on other stages, the residual stream [n_rows][dim] for the next stage.
 *
 * forward_run does no I/O and no allocation; scratch is sized at init for
 * max_rows rows. */
#ifndef ITT_FORWARD_H
#define ITT_FORWARD_H

#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "kv-cache.h"
#include "linear.h"
#include "model.h"
#include "threadpool.h"

struct forward_batch {
	uint32_t n_rows;
	const int32_t *tokens;      /* [n_rows], first stage */
	const float *hidden;        /* [n_rows][dim], other stages */
	const uint32_t *pos;        /* [n_rows] */
	struct kv_seq *const *seqs; /* [n_rows] */
	const uint8_t *want_logits; /* [n_rows] or NULL (all) */
};

struct forward_ctx {
	const struct model *m;
	struct kv_cache *kv;
	threadpool_t *pool;
	struct linear_ctx lin;
	uint32_t max_rows;
	/* scratch, [max_rows][width] each */
	float *x;           /* residual stream, dim */
	float *xb;          /* normed input, dim */
	float *q;           /* queries, n_heads * head_dim */
	float *k;           /* keys, kv_dim */
	float *v;           /* values, kv_dim */
	float *att;         /* attention output, n_heads * head_dim */
	float *hb;          /* ffn gate, ffn_dim */
	float *hb2;         /* ffn up, ffn_dim */
	float *rope;        /* cos/sin per row, [max_rows][head_dim] */
	float *scores;      /* [n_threads][group][ctx_len] attention weights, group =
	                     * n_heads / n_kv_heads query heads per KV head */
	float *kv_rows;     /* [n_threads][2][head_dim] K and V rows converted from F16 */
	float *inv_freq;    /* [head_dim / 2] */
	uint32_t *out_rows; /* [max_rows] indices of rows that want logits */
	uint32_t *seq_next; /* [max_rows] expected next position per row's seq */
};

/* kv must have been initialised for m's local layers and kv_dim. */
int forward_init(struct forward_ctx *f, const struct model *m, struct kv_cache *kv,
                 threadpool_t *pool, uint32_t max_rows, struct itt_err *err);
void forward_free(struct forward_ctx *f);

/* Runs the batch; out must hold the output described above.  Errors
 * (ITT_E_INVALID for a bad token/position/order, ITT_E_FULL when the KV
 * cache has no block left) leave every sequence's positions as they were
 * (blocks it was given ahead, or copied on write, may have changed). */
int forward_run(struct forward_ctx *f, const struct forward_batch *b, float *out,
                struct itt_err *err);

#endif
