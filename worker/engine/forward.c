/* forward: RMSNorm, Q/K/V (with optional biases), RoPE (normal or NeoX
 * pairing; scaled frequencies), grouped-query attention over the paged KV
 * cache, SwiGLU FFN and the output head, for a batch of rows.
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
	f->out_index = malloc(R * sizeof(uint32_t));
	f->seq_next = malloc(R * sizeof(uint32_t));
	f->slot_row = malloc(R * sizeof(uint32_t));
	f->test_slot = malloc(R * sizeof(uint32_t));
	f->logit_tmp = malloc((model_is_last(m) ? hp->vocab : 1) * sizeof(float));
	if (!f->x || !f->xb || !f->q || !f->k || !f->v || !f->att || !f->hb || !f->hb2 ||
	    !f->rope || !f->scores || !f->kv_rows || !f->inv_freq || !f->out_rows ||
	    !f->out_index || !f->seq_next || !f->slot_row || !f->test_slot || !f->logit_tmp) {
		forward_free(f);
		return itt_err_set(err, ITT_E_NOMEM, "forward_init: out of memory for %u rows",
		                   max_rows);
	}
	/* llama2.c: freq = 1 / base^(i / head_dim) for even i; then linear
	 * scaling and llama 3.1's per-frequency divisors (both exactly 1, so
	 * no-ops, in a plain llama file). */
	for (uint32_t i = 0; i < hp->head_dim; i += 2) {
		float fr = 1.0f / powf(hp->rope_base, (float)i / (float)hp->head_dim);
		if (hp->rope_scale != 1.0f)
			fr *= hp->rope_scale;
		if (m->rope_freqs)
			fr /= m->rope_freqs[i / 2];
		f->inv_freq[i / 2] = fr;
	}
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
	free(f->out_index);
	free(f->seq_next);
	free(f->slot_row);
	free(f->test_slot);
	free(f->logit_tmp);
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

/* Rotates pairs of every head of vec by the row's angles; cs holds
 * (cos, sin) of angle i at cs[2i], cs[2i+1].  Normal RoPE (llama) pairs
 * (2i, 2i+1); NeoX (qwen2) pairs (i, i + head_dim/2). */
static void rope_apply(float *vec, uint32_t n_heads, uint32_t head_dim, const float *cs, bool neox)
{
	uint32_t half = head_dim / 2;
	for (uint32_t h = 0; h < n_heads; h++) {
		float *v = vec + (size_t)h * head_dim;
		for (uint32_t i = 0; i < half; i++) {
			uint32_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
			float c = cs[2 * i], s = cs[2 * i + 1];
			float v0 = v[a], v1 = v[b];
			v[a] = v0 * c - v1 * s;
			v[b] = v0 * s + v1 * c;
		}
	}
}

/* y[r] += bias for rows [0, n) of width w; no-op without a bias. */
static void add_bias(float *y, const float *bias, uint32_t n, uint32_t w)
{
	if (!bias)
		return;
	for (uint32_t r = 0; r < n; r++)
		for (uint32_t i = 0; i < w; i++)
			y[(size_t)r * w + i] += bias[i];
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
	uint32_t layer;          /* local layer index */
	uint32_t n_slots;        /* slots [0, n_slots) attend */
	const uint32_t *slot_row; /* row of each slot, or NULL: slot == row */
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

	threadpool_split((size_t)j->n_slots * hp->n_kv_heads, 1, ith, nth, &lo, &hi);
	for (size_t idx = lo; idx < hi; idx++) {
		uint32_t sl = (uint32_t)(idx / hp->n_kv_heads),
		         kvh = (uint32_t)(idx % hp->n_kv_heads);
		uint32_t r = j->slot_row ? j->slot_row[sl] : sl;
		const struct kv_seq *s = j->b->seqs[r];
		uint32_t n_t = j->b->pos[r] + 1;
		const float *q = f->q + (size_t)sl * q_dim + (size_t)kvh * group * hd;
		float *out = f->att + (size_t)sl * q_dim + (size_t)kvh * group * hd;

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
		/* perturbation: masked heads mix in their own position's value,
		 * out = (1 - u) out + u v[pos] (u = 1: v[pos] itself) */
		const struct forward_perturb *pt = j->b->perturb ? j->b->perturb[r] : NULL;
		if (pt && pt->blend > 0.0f) {
			const uint8_t *mk = pt->mask +
			                    (size_t)(f->m->first + j->layer) * hp->n_heads +
			                    (size_t)kvh * group;
			uint32_t p = n_t - 1;
			const float *vs = NULL;
			float u = pt->blend;
			for (uint32_t g = 0; g < group; g++) {
				if (!mk[g])
					continue;
				if (!vs)
					vs = kv_row(kv, kv->v,
					            s->blocks[p / bs] * block_elems + layer_off +
					                (size_t)(p % bs) * kv->kv_dim + (size_t)kvh * hd,
					            hd, vbuf);
				float *o = out + (size_t)g * hd;
				if (u == 1.0f)
					memcpy(o, vs, hd * sizeof(float));
				else
					for (uint32_t i = 0; i < hd; i++)
						o[i] = (1.0f - u) * o[i] + u * vs[i];
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

/* Checks the technique fields against the model and the batch (before any
 * state changes). */
static int techniques_check(const struct forward_ctx *f, const struct forward_batch *b,
                           struct itt_err *err)
{
	const struct model *m = f->m;
	uint32_t end = b->stop_layer ? b->stop_layer : m->last;

	if (b->perturb)
		for (uint32_t r = 0; r < b->n_rows; r++) {
			const struct forward_perturb *pt = b->perturb[r];
			if (!pt)
				continue;
			if (!pt->mask)
				return itt_err_set(err, ITT_E_INVALID,
				                   "row %u: perturbation without a head mask", r);
			if (!(pt->blend >= 0.0f && pt->blend <= 1.0f))
				return itt_err_set(err, ITT_E_INVALID,
				                   "row %u: perturbation blend %g outside [0, 1]", r,
				                   (double)pt->blend);
		}
	if ((b->stop_layer || b->exit) && !model_is_last(m))
		return itt_err_set(err, ITT_E_INVALID,
		                   "%s needs the output head, but this model holds layers [%u, %u) "
		                   "of %u",
		                   b->stop_layer ? "stop_layer" : "early exit", m->first, m->last,
		                   m->hp.n_layers);
	if (b->stop_layer && (b->stop_layer <= m->first || b->stop_layer > m->last))
		return itt_err_set(err, ITT_E_INVALID,
		                   "stop_layer %u outside (%u, %u], the layers this model holds",
		                   b->stop_layer, m->first, m->last);
	if (b->exit) {
		const struct forward_exit *x = b->exit;
		if (!x->exited_at || (x->n_layers && !x->layers))
			return itt_err_set(err, ITT_E_INVALID, "early exit lacks %s",
			                   x->exited_at ? "its layer list" : "exited_at");
		if (!(x->threshold >= 0.0f))
			return itt_err_set(err, ITT_E_INVALID, "early exit threshold %g below 0",
			                   (double)x->threshold);
		for (uint32_t i = 0; i < x->n_layers; i++) {
			if (x->layers[i] < m->first || x->layers[i] >= end)
				return itt_err_set(err, ITT_E_INVALID,
				                   "exit layer %u outside the layers run, [%u, %u)",
				                   x->layers[i], m->first, end);
			if (i > 0 && x->layers[i] <= x->layers[i - 1])
				return itt_err_set(err, ITT_E_INVALID,
				                   "exit layers must ascend: %u after %u", x->layers[i],
				                   x->layers[i - 1]);
		}
	}
	return 0;
}

/* Top-1 minus top-2 probability of softmax(l). */
static float top_margin(const float *l, uint32_t n)
{
	float m1 = -INFINITY, m2 = -INFINITY;
	for (uint32_t i = 0; i < n; i++) {
		if (l[i] > m1) {
			m2 = m1;
			m1 = l[i];
		} else if (l[i] > m2) {
			m2 = l[i];
		}
	}
	double sum = 0.0;
	for (uint32_t i = 0; i < n; i++)
		sum += exp((double)l[i] - m1);
	return (float)((1.0 - exp((double)m2 - m1)) / sum);
}

/* Exchanges the contents of two slots: residual stream, RoPE angles, row. */
static void slot_swap(struct forward_ctx *f, uint32_t a, uint32_t c)
{
	uint32_t dim = f->m->hp.dim, hd = f->m->hp.head_dim;
	float *xa = f->x + (size_t)a * dim, *xc = f->x + (size_t)c * dim;
	for (uint32_t i = 0; i < dim; i++) {
		float t = xa[i];
		xa[i] = xc[i];
		xc[i] = t;
	}
	float *ra = f->rope + (size_t)a * hd, *rc = f->rope + (size_t)c * hd;
	for (uint32_t i = 0; i < hd; i++) {
		float t = ra[i];
		ra[i] = rc[i];
		rc[i] = t;
	}
	uint32_t t = f->slot_row[a];
	f->slot_row[a] = f->slot_row[c];
	f->slot_row[c] = t;
}

/* The exit test after global layer `layer`: applies the output head to the
 * active slots whose rows want logits, writing them after the *n_done rows
 * of out already final; rows confident enough keep theirs (moved to
 * out[*n_done++]) and leave the active slots, which are compacted (stable)
 * to [0, *n_act). */
static void exit_test(struct forward_ctx *f, const struct forward_batch *b, uint32_t layer,
                      uint32_t *n_act, uint32_t *n_done, float *out)
{
	const struct model *m = f->m;
	uint32_t dim = m->hp.dim, V = m->hp.vocab, nt = 0;

	for (uint32_t sl = 0; sl < *n_act; sl++) {
		uint32_t r = f->slot_row[sl];
		if (b->want_logits && !b->want_logits[r])
			continue;
		rmsnorm(f->xb + (size_t)nt * dim, f->x + (size_t)sl * dim, m->output_norm, dim,
		        m->hp.rms_eps);
		f->test_slot[nt++] = sl;
	}
	if (nt == 0)
		return;
	float *lo = out + (size_t)*n_done * V;
	linear_matmul(&f->lin, &m->output, f->xb, nt, lo, V);
	/* keep the logits of the rows that stop, in test order; exited_at marks
	 * them (it holds the range's last layer for every row still running) */
	uint32_t w = *n_done, stopped = 0;
	for (uint32_t i = 0; i < nt; i++) {
		if (!(top_margin(lo + (size_t)i * V, V) >= b->exit->threshold))
			continue;
		uint32_t r = f->slot_row[f->test_slot[i]];
		if (w != *n_done + i)
			memmove(out + (size_t)w * V, lo + (size_t)i * V, (size_t)V * sizeof(float));
		f->out_rows[w++] = r;
		b->exit->exited_at[r] = layer;
		stopped++;
	}
	*n_done = w;
	if (stopped == 0)
		return;
	/* stable partition of the active slots: the running ones first */
	uint32_t keep = 0;
	for (uint32_t sl = 0; sl < *n_act; sl++) {
		if (b->exit->exited_at[f->slot_row[sl]] == layer)
			continue;
		if (sl != keep)
			slot_swap(f, sl, keep);
		keep++;
	}
	*n_act = keep;
}

int forward_run(struct forward_ctx *f, const struct forward_batch *b, float *out,
                struct itt_err *err)
{
	const struct model *m = f->m;
	const struct model_hparams *hp = &m->hp;
	uint32_t n = b->n_rows, dim = hp->dim, hd = hp->head_dim, V = hp->vocab;
	uint32_t q_dim = hp->n_heads * hd, kv_dim = hp->n_kv_heads * hd, ffn = hp->ffn_dim;
	int rc = b->n_rows && b->n_rows <= f->max_rows ? techniques_check(f, b, err) : 0;
	if (rc == 0)
		rc = batch_prepare(f, b, err);
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

	/* Early exit works on slots: slot s holds row slot_row[s]; the slots
	 * [0, n_act) still run whole layers, the others (rows that stopped)
	 * only their K and V.  Without early exit slot == row throughout. */
	const struct forward_exit *ex = b->exit;
	const uint32_t *slot_row = ex ? f->slot_row : NULL;
	uint32_t n_act = n, n_done = 0, next_exit = 0;
	uint32_t end = (b->stop_layer ? b->stop_layer : m->last) - m->first;
	if (ex)
		for (uint32_t r = 0; r < n; r++) {
			f->slot_row[r] = r;
			ex->exited_at[r] = m->first + end - 1;
		}

	for (uint32_t l = 0; l < end; l++) {
		const struct model_layer *L = &m->layers[l];

		/* attention: xb = rmsnorm(x); q, k, v = xb W^T (q of active slots only) */
		for (uint32_t r = 0; r < n; r++)
			rmsnorm(f->xb + (size_t)r * dim, f->x + (size_t)r * dim, L->attn_norm, dim,
			        hp->rms_eps);
		if (n_act > 0)
			linear_matmul(&f->lin, &L->wq, f->xb, n_act, f->q, q_dim);
		linear_matmul(&f->lin, &L->wk, f->xb, n, f->k, kv_dim);
		linear_matmul(&f->lin, &L->wv, f->xb, n, f->v, kv_dim);
		add_bias(f->q, L->bq, n_act, q_dim);
		add_bias(f->k, L->bk, n, kv_dim);
		add_bias(f->v, L->bv, n, kv_dim);

		/* RoPE on q and k, then k and v into the cache at each row's position */
		for (uint32_t sl = 0; sl < n; sl++) {
			uint32_t r = slot_row ? slot_row[sl] : sl;
			const float *cs = f->rope + (size_t)sl * hd;
			if (sl < n_act)
				rope_apply(f->q + (size_t)sl * q_dim, hp->n_heads, hd, cs,
				           hp->rope_neox);
			rope_apply(f->k + (size_t)sl * kv_dim, hp->n_kv_heads, hd, cs,
			           hp->rope_neox);
			size_t off = kv_offset(f->kv, b->seqs[r], l, b->pos[r]);
			kv_store(f->kv, f->kv->k, off, f->k + (size_t)sl * kv_dim, kv_dim);
			kv_store(f->kv, f->kv->v, off, f->v + (size_t)sl * kv_dim, kv_dim);
		}
		if (n_act == 0)
			continue; /* every row has stopped: only K and V remain to write */

		/* softmax(q k^T / sqrt(hd)) v per row and head, over [0, pos] */
		struct attn_job aj = {f, b, l, n_act, slot_row};
		threadpool_run(f->pool, attn_worker, &aj);

		/* x += att Wo^T */
		linear_matmul(&f->lin, &L->wo, f->att, n_act, f->xb, dim);
		for (size_t i = 0; i < (size_t)n_act * dim; i++)
			f->x[i] += f->xb[i];

		/* ffn: x += (silu(xb W1^T) * (xb W3^T)) W2^T with xb = rmsnorm(x) */
		for (uint32_t r = 0; r < n_act; r++)
			rmsnorm(f->xb + (size_t)r * dim, f->x + (size_t)r * dim, L->ffn_norm, dim,
			        hp->rms_eps);
		linear_matmul(&f->lin, &L->w1, f->xb, n_act, f->hb, ffn);
		linear_matmul(&f->lin, &L->w3, f->xb, n_act, f->hb2, ffn);
		for (size_t i = 0; i < (size_t)n_act * ffn; i++) {
			float val = f->hb[i];
			val *= 1.0f / (1.0f + expf(-val));
			f->hb[i] = val * f->hb2[i];
		}
		linear_matmul(&f->lin, &L->w2, f->hb, n_act, f->xb, dim);
		for (size_t i = 0; i < (size_t)n_act * dim; i++)
			f->x[i] += f->xb[i];

		/* early exit: test after the listed layers (the last one run needs
		 * no test: its rows get the head below anyway) */
		while (ex && next_exit < ex->n_layers && ex->layers[next_exit] < m->first + l)
			next_exit++;
		if (ex && next_exit < ex->n_layers && ex->layers[next_exit] == m->first + l &&
		    l + 1 < end)
			exit_test(f, b, m->first + l, &n_act, &n_done, out);
	}

	if (!model_is_last(m)) {
		memcpy(out, f->x, (size_t)n * dim * sizeof(float));
		return 0;
	}
	/* output head on the rows that want logits (the active slots under early exit) */
	uint32_t n_out = 0;
	for (uint32_t sl = 0; sl < n_act; sl++) {
		uint32_t r = slot_row ? slot_row[sl] : sl;
		if (!b->want_logits || b->want_logits[r]) {
			rmsnorm(f->xb + (size_t)n_out * dim, f->x + (size_t)sl * dim,
			        m->output_norm, dim, hp->rms_eps);
			if (ex)
				f->out_rows[n_done + n_out] = r;
			n_out++;
		}
	}
	if (n_out > 0)
		linear_matmul(&f->lin, &m->output, f->xb, n_out, out + (size_t)n_done * V, V);
	if (!ex)
		return 0;
	/* out holds the rows in stop order (out_rows); put them in row order */
	uint32_t total = 0;
	for (uint32_t r = 0; r < n; r++)
		if (!b->want_logits || b->want_logits[r])
			f->out_index[r] = total++;
	for (uint32_t p = 0; p < total; p++) {
		while (f->out_index[f->out_rows[p]] != p) {
			uint32_t q = f->out_index[f->out_rows[p]], t = f->out_rows[p];
			float *a = out + (size_t)p * V, *c = out + (size_t)q * V;
			memcpy(f->logit_tmp, a, (size_t)V * sizeof(float));
			memcpy(a, c, (size_t)V * sizeof(float));
			memcpy(c, f->logit_tmp, (size_t)V * sizeof(float));
			f->out_rows[p] = f->out_rows[q];
			f->out_rows[q] = t;
		}
	}
	return 0;
}
