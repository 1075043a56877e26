/* engine: assembly of model, tokenizer, pool, KV cache and forward. */
#include "engine.h"

#include <stdlib.h>
#include <string.h>

void engine_config_default(struct engine_config *c)
{
	memset(c, 0, sizeof *c);
	c->n_threads = 1;
	c->max_rows = ENGINE_DEFAULT_MAX_ROWS;
	c->kv_bytes = ENGINE_DEFAULT_KV_BYTES;
	c->kv_block = ENGINE_DEFAULT_KV_BLOCK;
	c->kv_type = KV_TYPE_F32;
	c->act_quant = true;
}

int engine_open(const struct engine_config *c, struct engine **out, struct itt_err *err)
{
	struct engine *e = calloc(1, sizeof *e);
	int rc;

	if (!e)
		return itt_err_set(err, ITT_E_NOMEM, "engine_open: out of memory");
	if ((rc = model_open(c->path, c->first, c->last, &e->model, err)) < 0)
		goto fail;
	const struct model_hparams *hp = &e->model->hp;
	if (gguf_find_kv(e->model->file, "tokenizer.ggml.tokens")) {
		if ((rc = tokenizer_new(e->model->file, &e->tok, err)) < 0)
			goto fail;
	}
	if ((rc = threadpool_new(c->n_threads, &e->pool, err)) < 0)
		goto fail;
	uint32_t n_local = e->model->last - e->model->first, kv_dim = hp->n_kv_heads * hp->head_dim;
	size_t kv_bytes = c->kv_bytes;
	if (kv_bytes == 0) /* kv_seqs sequences of the full context */
		kv_bytes = kv_block_bytes(c->kv_type, n_local, kv_dim, c->kv_block) *
		           ((hp->ctx_len + c->kv_block - 1) / c->kv_block) *
		           (c->kv_seqs > 1 ? c->kv_seqs : 1);
	rc = kv_cache_init(&e->kv, c->kv_type, n_local, kv_dim, c->kv_block, kv_bytes, err);
	if (rc < 0)
		goto fail;
	if ((rc = forward_init(&e->fwd, e->model, &e->kv, e->pool, c->max_rows, err)) < 0)
		goto fail;
	e->fwd.lin.act_quant = c->act_quant;
	size_t width = model_is_last(e->model) ? hp->vocab : hp->dim;
	e->logits = malloc((size_t)c->max_rows * width * sizeof(float));
	if (!e->logits) {
		rc = itt_err_set(err, ITT_E_NOMEM, "engine_open: no memory for %u output rows",
		                 c->max_rows);
		goto fail;
	}
	*out = e;
	return 0;
fail:
	engine_close(&e);
	return rc;
}

int engine_set_threads(struct engine *e, int n_threads, struct itt_err *err)
{
	threadpool_t *pool = NULL;
	struct forward_ctx fwd;
	int rc = threadpool_new(n_threads, &pool, err);
	if (rc < 0)
		return rc;
	if ((rc = forward_init(&fwd, e->model, &e->kv, pool, e->fwd.max_rows, err)) < 0) {
		threadpool_destroy(&pool);
		return rc;
	}
	fwd.lin.act_quant = e->fwd.lin.act_quant;
	forward_free(&e->fwd);
	threadpool_destroy(&e->pool);
	e->fwd = fwd;
	e->pool = pool;
	return 0;
}

void engine_close(struct engine **ep)
{
	struct engine *e = ep ? *ep : NULL;
	if (!e)
		return;
	if (e->fwd.m)
		forward_free(&e->fwd);
	kv_cache_free(&e->kv);
	threadpool_destroy(&e->pool);
	tokenizer_destroy(&e->tok);
	model_close(&e->model);
	free(e->logits);
	free(e);
	*ep = NULL;
}

int engine_prefill(struct engine *e, struct kv_seq *s, const int32_t *tokens, uint32_t n,
                   float *all_logits, float *last_logits, struct itt_err *err)
{
	const struct model *m = e->model;
	uint32_t R = e->fwd.max_rows, V = m->hp.vocab;
	uint32_t *pos = malloc((size_t)R * sizeof *pos);
	struct kv_seq **seqs = malloc((size_t)R * sizeof *seqs);
	uint8_t *want = malloc(R);
	int rc = 0;

	if (!model_is_first(m) || !model_is_last(m))
		rc = itt_err_set(err, ITT_E_INVALID, "engine_prefill needs the whole model");
	else if (!pos || !seqs || !want)
		rc = itt_err_set(err, ITT_E_NOMEM, "engine_prefill: out of memory");
	for (uint32_t done = 0; rc == 0 && done < n;) {
		uint32_t k = n - done < R ? n - done : R;
		for (uint32_t i = 0; i < k; i++) {
			pos[i] = s->n_pos + i;
			seqs[i] = s;
			want[i] = all_logits || (done + i == n - 1 && last_logits);
		}
		struct forward_batch b = {.n_rows = k, .tokens = tokens + done, .hidden = NULL, .pos = pos, .seqs = seqs, .want_logits = want};
		float *dst = all_logits ? all_logits + (size_t)done * V : e->logits;
		rc = forward_run(&e->fwd, &b, dst, err);
		if (rc == 0 && last_logits && done + k == n)
			memcpy(last_logits, dst + (all_logits ? (size_t)(k - 1) * V : 0),
			       (size_t)V * sizeof(float));
		done += k;
	}
	free(pos);
	free(seqs);
	free(want);
	return rc;
}
