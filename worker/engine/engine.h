/* engine: one loaded model range with everything needed to run it — the
 * model, its tokenizer (when the file has one), a thread pool, the paged KV
 * cache and the forward context.  The CLI's in-process path, the worker's
 * compute thread, the tools and the tests all start here. */
#ifndef ITT_ENGINE_H
#define ITT_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "forward.h"
#include "kv-cache.h"
#include "model.h"
#include "threadpool.h"
#include "tokenizer.h"

struct engine_config {
	const char *path;
	uint32_t first, last; /* layer range; last 0 = all */
	int n_threads;        /* compute threads (our pool and OpenBLAS) */
	uint32_t max_rows;    /* rows per forward step */
	size_t kv_bytes;      /* KV cache budget; 0: kv_seqs sequences of the full context */
	uint32_t kv_seqs;     /* with kv_bytes 0: full-context sequences to make room for
	                       * (0 counts as 1), e.g. 2 for a guidance branch */
	uint32_t kv_block;    /* positions per KV block */
	enum kv_type kv_type; /* element type of the KV cache (default F32) */
	bool act_quant;       /* quantised weights: quantise the activations and use
	                       * integer products, as llama.cpp (linear.h; default on) */
};

#define ENGINE_DEFAULT_MAX_ROWS 512
#define ENGINE_DEFAULT_KV_BYTES ((size_t)256 << 20)
#define ENGINE_DEFAULT_KV_BLOCK 16

void engine_config_default(struct engine_config *c);

struct engine {
	struct model *model;
	tokenizer_t *tok; /* NULL when the file has no tokenizer metadata */
	threadpool_t *pool;
	struct kv_cache kv;
	struct forward_ctx fwd;
	float *logits; /* [max_rows][vocab] on the last stage, else [max_rows][dim] */
};

int engine_open(const struct engine_config *c, struct engine **out, struct itt_err *err);
void engine_close(struct engine **e);

/* Replaces the thread pool with one of n_threads and the forward context
 * (whose scratch is sized by the thread count) with one built on it; the
 * model and the KV cache stay.  Not while a forward pass runs.  On error
 * the engine is unchanged. */
int engine_set_threads(struct engine *e, int n_threads, struct itt_err *err);

/* Runs n tokens of one sequence (continuing at s->n_pos) in chunks of
 * max_rows.  On the last stage, writes the logits of every token into
 * all_logits ([n][vocab]) when it is not NULL, and those of the final token
 * into last_logits when that is not NULL.  Whole-model engines only. */
int engine_prefill(struct engine *e, struct kv_seq *s, const int32_t *tokens, uint32_t n,
                   float *all_logits, float *last_logits, struct itt_err *err);

#endif
