/* forward: RMSNorm, RoPE, grouped-query attention over the paged KV cache,
 * SwiGLU FFN and the output head, for a batch of rows.
 *
 * Numerics follow llama2.c's run.c (float accumulation in the same order
 * for norms, softmax and RoPE angles) so that known greedy outputs of the
 * trained models are reproduced exactly; matrix products go through
 * linear.c. */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

int forward_init(struct forward_ctx *f, const struct model *m, struct kv_cache *kv,
                 threadpool_t *pool, uint32_t max_rows, struct itt_err *err)
{
	const struct model_hparams *hp = &m->hp;
	memset(f, 0, sizeof *f);
	if (max_rows == 0 || max_rows > (1u << 16))
		return itt_err_set(err, ITT_E_INVALID, "forward_init: max_rows %u out of range",
		                   max_rows);
	if (kv->n_layers != m->last - m->first || kv->kv_dim != hp->n_kv_heads * hp->head_dim ||
	    hp->n_kv_heads == 0 || hp->n_heads % hp->n_kv_heads != 0)
		return itt_err_set(
		    err, ITT_E_INVALID,
		    "forward_init: kv cache shape (%u layers, kv_dim %u) does not fit the model",
		    kv->n_layers, kv->kv_dim);
	f->m = m;
	f->kv = kv;
	f->pool = pool;
	f->max_rows = max_rows;
	size_t R = max_rows, q_dim = (size_t)hp->n_heads * hp->head_dim;
	size_t kv_dim = (size_t)hp->n_kv_heads * hp->head_dim;
	uint32_t max_cols = hp->dim > hp->ffn_dim ? hp->dim : hp->ffn_dim;
	int rc = linear_init(&f->lin, pool, max_cols, err);
	if (rc < 0)
		return rc;
	f->x = malloc(R * hp->dim * sizeof(float));
	f->xb = malloc(R * hp->dim * sizeof(float));
	f->q = malloc(R * q_dim * sizeof(float));
	f->k = malloc(R * kv_dim * sizeof(float));
	f->v = malloc(R * kv_dim * sizeof(float));
	f->att = malloc(R * q_dim * sizeof(float));
	f->hb = malloc(R * hp->ffn_dim * sizeof(float));
	f->hb2 = malloc(R * hp->ffn_dim * sizeof(float));
	f->rope = malloc(R * hp->head_dim * sizeof(float));
	size_t nth = (size_t)threadpool_size(pool), group = hp->n_heads / hp->n_kv_heads;
	f->scores = malloc(nth * group * hp->ctx_len * sizeof(float));
	f->kv_rows = malloc(nth * 2 * hp->head_dim * sizeof(float));
	f->inv_freq = malloc(hp->head_dim / 2 * sizeof(float));
	f->out_rows = malloc(R * sizeof(uint32_t));
	f->seq_next = malloc(R * sizeof(uint32_t));
	if (!f->x || !f->xb || !f->q || !f->k || !f->v || !f->att || !f->hb || !f->hb2 ||
	    !f->rope || !f->scores || !f->kv_rows || !f->inv_freq || !f->out_rows || !f->seq_next) {
		forward_free(f);
		return itt_err_set(err, ITT_E_NOMEM, "forward_init: out of memory for %u rows",
		                   max_rows);
	}
	/* llama2.c: freq = 1 / base^(i / head_dim) for even i. */
	for (uint32_t i = 0; i < hp->head_dim; i += 2)
		f->inv_freq[i / 2] = 1.0f / powf(hp->rope_base, (float)i / (float)hp->head_dim);
	return 0;
}

void forward_free(struct forward_ctx *f)
{
	linear_free(&f->lin);
	free(f->x);
	free(f->xb);
	free(f->q);
	free(f->k);
	free(f->v);
	free(f->att);
	free(f->hb);
	free(f->hb2);
	free(f->rope);
	free(f->scores);
	free(f->kv_rows);
	free(f->inv_freq);
	free(f->out_rows);
	free(f->seq_next);
	memset(f, 0, sizeof *f);
}

/* o = w * x / sqrt(mean(x^2) + eps), accumulated in float as llama2.c does. */
static void rmsnorm(float *o, const float *x, const float *w, uint32_t n, float eps)
{
	float ss = 0.0f;
	for (uint32_t j = 0; j < n; j++)
		ss += x[j] * x[j];
	ss /= (float)n;
	ss += eps;
	ss = 1.0f / sqrtf(ss);
	for (uint32_t j = 0; j < n; j++)
		o[j] = w[j] * (ss * x[j]);
}

/* Rotates consecutive pairs (2i, 2i+1) of every head of vec (normal,
 * non-NeoX RoPE); cs holds cos/sin of the row's angles. */
static void rope_apply(float *vec, uint32_t n_heads, uint32_t head_dim, const float *cs)
{
	for (uint32_t h = 0; h < n_heads; h++) {
		float *v = vec + (size_t)h * head_dim;
		for (uint32_t i = 0; i < head_dim; i += 2) {
			float c = cs[i], s = cs[i + 1];
			float v0 = v[i], v1 = v[i + 1];
			v[i] = v0 * c - v1 * s;
			v[i + 1] = v0 * s + v1 * c;
		}
	}
}

/* q . k with LANES independent partial sums (vectorisable without
 * reassociation), summed in lane order at the end.  With hd == LANES this
 * is exactly the sequential sum. */
#define LANES 8
static inline float dot(const float *q, const float *k, uint32_t hd)
{
	if (hd % LANES != 0) {
		float s = 0.0f;
		for (uint32_t i = 0; i < hd; i++)
			s += q[i] * k[i];
		return s;
	}
	float acc[LANES] = {0};
	for (uint32_t i = 0; i < hd; i += LANES)
		for (uint32_t l = 0; l < LANES; l++)
			acc[l] += q[i + l] * k[i + l];
	float s = 0.0f;
	for (uint32_t l = 0; l < LANES; l++)
		s += acc[l];
	return s;
}

/* y += a x; restrict lets the compiler vectorise it. */
static inline void axpy(float *restrict y, float a, const float *restrict x, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		y[i] += a * x[i];
}

struct attn_job {
	struct forward_ctx *f;
	const struct forward_batch *b;
	uint32_t layer; /* local layer index */
};

/* A head's row of K or V at element offset off, as floats: a pointer into
 * the cache for F32, else converted into buf. */
static inline const float *kv_row(const struct kv_cache *kv, const void *base, size_t off,
                                  uint32_t n, float *buf)
{
	if (kv->type == KV_TYPE_F32)
		return (const float *)base + off;
	kv_fp16_to_fp32(buf, (const uint16_t *)base + off, n);
	return buf;
}

/* One (row, KV head) at a time, rows * kv_heads split over the threads; the
 * group of query heads sharing that KV head reads each cached row once.
 * Per query head the arithmetic is the same as one head at a time. */
static void attn_worker(void *arg, int ith, int nth)
{
	struct attn_job *j = arg;
	struct forward_ctx *f = j->f;
	const struct model_hparams *hp = &f->m->hp;
	const struct kv_cache *kv = f->kv;
	uint32_t hd = hp->head_dim, q_dim = hp->n_heads * hd, bs = kv->block_size;
	uint32_t group = hp->n_heads / hp->n_kv_heads, ctx = hp->ctx_len;
	size_t layer_off = (size_t)j->layer * bs * kv->kv_dim;
	size_t block_elems = (size_t)kv->n_layers * bs * kv->kv_dim;
	float scale = 1.0f / sqrtf((float)hd);
	float *att = f->scores + (size_t)ith * group * ctx; /* [group][ctx] */
	float *kbuf = f->kv_rows + (size_t)ith * 2 * hd, *vbuf = kbuf + hd;
	size_t lo, hi;

	threadpool_split((size_t)j->b->n_rows * hp->n_kv_heads, 1, ith, nth, &lo, &hi);
	for (size_t idx = lo; idx < hi; idx++) {
		uint32_t r = (uint32_t)(idx / hp->n_kv_heads),
		         kvh = (uint32_t)(idx % hp->n_kv_heads);
		const struct kv_seq *s = j->b->seqs[r];
		uint32_t n_t = j->b->pos[r] + 1;
		const float *q = f->q + (size_t)r * q_dim + (size_t)kvh * group * hd;
		float *out = f->att + (size_t)r * q_dim + (size_t)kvh * group * hd;

		/* scores: q . k / sqrt(hd) for t in [0, pos], block by block */
		for (uint32_t t0 = 0; t0 < n_t; t0 += bs) {
			size_t base =
			    s->blocks[t0 / bs] * block_elems + layer_off + (size_t)kvh * hd;
			uint32_t tn = n_t - t0 < bs ? n_t - t0 : bs;
			for (uint32_t i = 0; i < tn; i++) {
				const float *k =
				    kv_row(kv, kv->k, base + (size_t)i * kv->kv_dim, hd, kbuf);
				for (uint32_t g = 0; g < group; g++)
					att[(size_t)g * ctx + t0 + i] =
					    dot(q + (size_t)g * hd, k, hd) * scale;
			}
		}
		/* softmax per head */
		for (uint32_t g = 0; g < group; g++) {
			float *a = att + (size_t)g * ctx, sum = 0.0f, max = -INFINITY;
			for (uint32_t t = 0; t < n_t; t++)
				if (a[t] > max)
					max = a[t];
			for (uint32_t t = 0; t < n_t; t++) {
				a[t] = expf(a[t] - max);
				sum += a[t];
			}
			for (uint32_t t = 0; t < n_t; t++)
				a[t] /= sum;
		}
		/* out = sum_t att[t] v[t] */
		memset(out, 0, (size_t)group * hd * sizeof(float));
		for (uint32_t t0 = 0; t0 < n_t; t0 += bs) {
			size_t base =
			    s->blocks[t0 / bs] * block_elems + layer_off + (size_t)kvh * hd;
			uint32_t tn = n_t - t0 < bs ? n_t - t0 : bs;
			for (uint32_t i = 0; i < tn; i++) {
				const float *v =
				    kv_row(kv, kv->v, base + (size_t)i * kv->kv_dim, hd, vbuf);
				for (uint32_t g = 0; g < group; g++)
					axpy(out + (size_t)g * hd, att[(size_t)g * ctx + t0 + i], v,
					     hd);
			}
		}
	}
}

/* Checks tokens, positions and per-sequence order; on success reserves KV
 * storage for every sequence (rolled back on failure). */
static int batch_prepare(struct forward_ctx *f, const struct forward_batch *b, struct itt_err *err)
{
	const struct model *m = f->m;
	uint32_t n = b->n_rows;

	if (n == 0 || n > f->max_rows)
		return itt_err_set(err, ITT_E_INVALID, "batch of %u rows; this context takes 1..%u",
		                   n, f->max_rows);
	if (!b->pos || !b->seqs || (model_is_first(m) ? !b->tokens : !b->hidden))
		return itt_err_set(err, ITT_E_INVALID, "batch lacks %s",
		                   model_is_first(m) ? "tokens" : "hidden states");
	for (uint32_t r = 0; r < n; r++) {
		const struct kv_seq *s = b->seqs[r];
		if (!s)
			return itt_err_set(err, ITT_E_INVALID, "row %u has no sequence", r);
		if (model_is_first(m) &&
		    (b->tokens[r] < 0 || (uint32_t)b->tokens[r] >= m->hp.vocab))
			return itt_err_set(err, ITT_E_INVALID,
			                   "row %u: token %d outside the vocabulary of %u", r,
			                   b->tokens[r], m->hp.vocab);
		if (b->pos[r] >= m->hp.ctx_len)
			return itt_err_set(err, ITT_E_RANGE,
			                   "row %u: position %u beyond the context of %u", r,
			                   b->pos[r], m->hp.ctx_len);
		/* Expected position: one past this sequence's previous row in the
		 * batch, or its cache length for its first row. */
		uint32_t expect = s->n_pos;
		for (uint32_t p = r; p-- > 0;) {
			if (b->seqs[p] == s) {
				expect = b->pos[p] + 1;
				break;
			}
		}
		if (b->pos[r] != expect)
			return itt_err_set(err, ITT_E_INVALID,
			                   "row %u: position %u, but its sequence continues at %u",
			                   r, b->pos[r], expect);
		f->seq_next[r] = expect;
	}
	/* Reserve storage row by row (reserve only extends); on failure,
	 * truncate each sequence back, ending with its first row's length. */
	for (uint32_t r = 0; r < n; r++) {
		struct kv_seq *s = b->seqs[r];
		/* copy on write: the block this row writes must be its own */
		int rc = kv_seq_prepare(f->kv, s, b->pos[r], b->pos[r] + 1, err);
		if (rc == 0)
			rc = kv_seq_reserve(f->kv, s, b->pos[r] + 1, err);
		if (rc < 0) {
			for (uint32_t q = r + 1; q-- > 0;)
				kv_seq_truncate(f->kv, b->seqs[q], f->seq_next[q]);
			return rc;
		}
	}
	return 0;
}

int forward_run(struct forward_ctx *f, const struct forward_batch *b, float *out,
                struct itt_err *err)
{
	const struct model *m = f->m;
	const struct model_hparams *hp = &m->hp;
	uint32_t n = b->n_rows, dim = hp->dim, hd = hp->head_dim;
	uint32_t q_dim = hp->n_heads * hd, kv_dim = hp->n_kv_heads * hd, ffn = hp->ffn_dim;
	int rc = batch_prepare(f, b, err);
	if (rc < 0)
		return rc;

	/* Input: token embeddings on the first stage, else the previous stage's stream. */
	if (model_is_first(m)) {
		const uint8_t *base = m->tok_embd.data;
		for (uint32_t r = 0; r < n; r++)
			quant_dequant_row(m->tok_embd.type,
			                  base + (size_t)b->tokens[r] * m->tok_embd.row_bytes,
			                  f->x + (size_t)r * dim, dim);
	} else {
		memcpy(f->x, b->hidden, (size_t)n * dim * sizeof(float));
	}
	/* RoPE angles per row: theta_i = pos * inv_freq_i. */
	for (uint32_t r = 0; r < n; r++) {
		float *cs = f->rope + (size_t)r * hd;
		for (uint32_t i = 0; i < hd; i += 2) {
			float val = (float)b->pos[r] * f->inv_freq[i / 2];
			cs[i] = cosf(val);
			cs[i + 1] = sinf(val);
		}
	}

	for (uint32_t l = 0; l < m->last - m->first; l++) {
		const struct model_layer *L = &m->layers[l];

		/* attention: xb = rmsnorm(x); q, k, v = xb W^T */
		for (uint32_t r = 0; r < n; r++)
			rmsnorm(f->xb + (size_t)r * dim, f->x + (size_t)r * dim, L->attn_norm, dim,
			        hp->rms_eps);
		linear_matmul(&f->lin, &L->wq, f->xb, n, f->q, q_dim);
		linear_matmul(&f->lin, &L->wk, f->xb, n, f->k, kv_dim);
		linear_matmul(&f->lin, &L->wv, f->xb, n, f->v, kv_dim);

		/* RoPE on q and k, then k and v into the cache at each row's position */
		for (uint32_t r = 0; r < n; r++) {
			const float *cs = f->rope + (size_t)r * hd;
			rope_apply(f->q + (size_t)r * q_dim, hp->n_heads, hd, cs);
			rope_apply(f->k + (size_t)r * kv_dim, hp->n_kv_heads, hd, cs);
			size_t off = kv_offset(f->kv, b->seqs[r], l, b->pos[r]);
			kv_store(f->kv, f->kv->k, off, f->k + (size_t)r * kv_dim, kv_dim);
			kv_store(f->kv, f->kv->v, off, f->v + (size_t)r * kv_dim, kv_dim);
		}

		/* softmax(q k^T / sqrt(hd)) v per row and head, over [0, pos] */
		struct attn_job aj = {f, b, l};
		threadpool_run(f->pool, attn_worker, &aj);

		/* x += att Wo^T */
		linear_matmul(&f->lin, &L->wo, f->att, n, f->xb, dim);
		for (size_t i = 0; i < (size_t)n * dim; i++)
			f->x[i] += f->xb[i];

		/* ffn: x += (silu(xb W1^T) * (xb W3^T)) W2^T with xb = rmsnorm(x) */
		for (uint32_t r = 0; r < n; r++)
			rmsnorm(f->xb + (size_t)r * dim, f->x + (size_t)r * dim, L->ffn_norm, dim,
			        hp->rms_eps);
		linear_matmul(&f->lin, &L->w1, f->xb, n, f->hb, ffn);
		linear_matmul(&f->lin, &L->w3, f->xb, n, f->hb2, ffn);
		for (size_t i = 0; i < (size_t)n * ffn; i++) {
			float val = f->hb[i];
			val *= 1.0f / (1.0f + expf(-val));
			f->hb[i] = val * f->hb2[i];
		}
		linear_matmul(&f->lin, &L->w2, f->hb, n, f->xb, dim);
		for (size_t i = 0; i < (size_t)n * dim; i++)
			f->x[i] += f->xb[i];
	}

	if (!model_is_last(m)) {
		memcpy(out, f->x, (size_t)n * dim * sizeof(float));
		return 0;
	}
	/* output head on the rows that want logits */
	uint32_t n_out = 0;
	for (uint32_t r = 0; r < n; r++)
		if (!b->want_logits || b->want_logits[r])
			rmsnorm(f->xb + (size_t)n_out++ * dim, f->x + (size_t)r * dim,
			        m->output_norm, dim, hp->rms_eps);
	if (n_out > 0)
		linear_matmul(&f->lin, &m->output, f->xb, n_out, out, hp->vocab);
	return 0;
}
