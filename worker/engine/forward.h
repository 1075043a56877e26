/* forward: the llama-family forward pass (variants: model.h) of one layer
 * range over a batch of rows.
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

/* Attention-head perturbation of a row (the perturbed branch of guidance):
 * at every (layer, head) whose mask byte is set, that query head's output
 * becomes (1 - blend) * softmax(q k^T / sqrt(d)) v + blend * v[pos], i.e. the
 * attention matrix mixed with the identity; blend 1 attends only to its own
 * position.  Layers are global indices; heads are query heads; v[pos] is the
 * row's own value (its KV head, as stored in the cache; V is not roped).
 * blend 0 or an empty mask is the plain pass, bit for bit.  Rows without a
 * perturbation cost nothing extra. */
struct forward_perturb {
	const uint8_t *mask; /* [n_layers][n_heads] of the whole model */
	float blend;         /* u in [0, 1] */
};

/* Early exit (per batch): after each layer listed (global index, ascending,
 * inside the range, the model holding the output head), every row that
 * wants logits and has not stopped applies the output norm and head to its
 * residual stream; when top-1 minus top-2 probability >= threshold it stops
 * there: its logits are those, and each later layer only computes its K and
 * V from the exit hidden state (so later positions can attend to it).
 * exited_at[r] reports the layer after which row r stopped (the range's last
 * layer when it ran through).
 *
 * Cost: a stopped row leaves the layers' Q, attention, Wo and FFN products
 * (the rows still running are compacted; only the K and V products keep
 * every row); each test costs one output-head product over the rows tested.
 * A listed layer that is the last one run is not tested (the head follows
 * anyway).  threshold 0 stops every tested row at the first listed layer;
 * above 1 none ever stops (the pass then equals the plain one bit for bit).
 * Rows that do not want logits are never tested and run every layer. */
struct forward_exit {
	const uint32_t *layers;
	uint32_t n_layers;
	float threshold;     /* >= 0; in [0, 1] to be useful */
	uint32_t *exited_at; /* out, [n_rows] */
};

struct forward_batch {
	uint32_t n_rows;
	const int32_t *tokens;      /* [n_rows], first stage */
	const float *hidden;        /* [n_rows][dim], other stages */
	const uint32_t *pos;        /* [n_rows] */
	struct kv_seq *const *seqs; /* [n_rows] */
	const uint8_t *want_logits; /* [n_rows] or NULL (all) */
	/* inference-time techniques; all zero / NULL: the plain pass */
	const struct forward_perturb *const *perturb; /* [n_rows] or NULL; a NULL entry: none */
	uint32_t stop_layer; /* 0: the whole range; else run layers [first, stop_layer)
	                      * (first < stop_layer <= last) and apply the output head
	                      * (a shallow draft pass; needs the head, ITT_E_INVALID
	                      * otherwise; later layers' K/V are not written, so those
	                      * positions must be truncated and rerun before a full
	                      * pass reads them) */
	const struct forward_exit *exit; /* or NULL */
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
	uint32_t *out_rows; /* [max_rows] early exit: the row whose logits sit in each
	                     * output row while the pass runs (stop order) */
	uint32_t *out_index; /* [max_rows] early exit: each row's output row (row order) */
	uint32_t *seq_next; /* [max_rows] expected next position per row's seq */
	uint32_t *slot_row; /* [max_rows] early exit: the row held by each slot of the
	                     * scratch arrays; slots [0, n_active) still run the layers */
	uint32_t *test_slot; /* [max_rows] early exit: slots tested after a layer */
	float *logit_tmp;    /* [vocab] on the last stage: one row, for reordering */
};

/* kv must have been initialised for m's local layers and kv_dim. */
int forward_init(struct forward_ctx *f, const struct model *m, struct kv_cache *kv,
                 threadpool_t *pool, uint32_t max_rows, struct itt_err *err);
void forward_free(struct forward_ctx *f);

/* Runs the batch; out must hold the output described above.  Errors
 * (ITT_E_INVALID for a bad token/position/order or technique field,
 * ITT_E_FULL when the KV
 * cache has no block left) leave every sequence's positions as they were
 * (blocks it was given ahead, or copied on write, may have changed). */
int forward_run(struct forward_ctx *f, const struct forward_batch *b, float *out,
                struct itt_err *err);

#endif
