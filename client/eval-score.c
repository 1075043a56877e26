/* eval-score: the scoring loop of eval.h: every item's choices scored
 * under every setting, the branches of one item run in shared batches.
 *
 * Contract: eval_run fills out->sum[setting][item][choice] with the sum of
 * the choice tokens' log probabilities and out->n_tok with their counts;
 * prefix sharing (KV fork) and recompute agree up to float rounding.
 * Invariants: branch 0 is the plain model; every KV sequence of an item is
 * freed before the next item; BOS is never scored; a row's logits go
 * straight to their slot (choice c's token j of branch b at
 * lg[b][off[c] + j]); log probabilities are summed in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "eval.h"
#include "guidance.h"

int eval_open_engine(const char *path, int threads, struct engine **e, const char *cmd)
{
	struct engine_config c;
	struct itt_err err = {0};
	engine_config_default(&c);
	c.path = path;
	c.n_threads = threads;
	c.max_rows = ENGINE_DEFAULT_MAX_ROWS;
	c.kv_bytes = ENGINE_DEFAULT_KV_BYTES;
	if (engine_open(&c, e, &err) < 0) {
		fprintf(stderr, "itt %s: cannot load %s: %s: %s\n", cmd, path,
		        itt_strerror(err.code), err.msg);
		return 1;
	}
	if (!(*e)->tok) {
		fprintf(stderr, "itt %s: %s has no tokenizer in its metadata\n", cmd, path);
		engine_close(e);
		return 1;
	}
	if (!model_is_first((*e)->model) || !model_is_last((*e)->model)) {
		fprintf(stderr, "itt %s: %s: scoring needs the whole model\n", cmd, path);
		engine_close(e);
		return 1;
	}
	return 0;
}

/* One tokenized item: the context and, per choice, the choice's tokens. */
struct tok_item {
	int32_t *ctx;
	uint32_t n_ctx;
	int32_t *ch[EVAL_MAX_CHOICES];
	uint32_t n_ch[EVAL_MAX_CHOICES];
	bool mismatch;
};

static void tok_item_free(struct tok_item *ti)
{
	free(ti->ctx);
	for (int c = 0; c < EVAL_MAX_CHOICES; c++)
		free(ti->ch[c]);
	memset(ti, 0, sizeof *ti);
}

static int encode_alloc(const tokenizer_t *tok, const char *s, size_t len, int32_t **out, size_t *n)
{
	struct itt_err err = {0};
	size_t cap = len + 2;
	int32_t *ids = malloc(cap * sizeof *ids);
	if (!ids)
		return -1;
	if (tokenizer_encode(tok, s, len, true, ids, cap, n, &err) < 0) {
		free(ids);
		return -1;
	}
	*out = ids;
	return 0;
}

static int tokenize_item(const tokenizer_t *tok, const struct eval_item *it, uint32_t ctx_len,
                         struct tok_item *ti, char *msg, size_t cap)
{
	size_t nc, lc = strlen(it->context);
	memset(ti, 0, sizeof *ti);
	if (encode_alloc(tok, it->context, lc, &ti->ctx, &nc) < 0)
		goto oom;
	char *joint = NULL;
	for (uint32_t c = 0; c < it->n_choices; c++) {
		size_t la = strlen(it->choices[c]), nj;
		int32_t *ids;
		char *j2 = realloc(joint, lc + la + 2);
		if (!j2)
			goto oom_j;
		joint = j2;
		memcpy(joint, it->context, lc);
		joint[lc] = ' ';
		memcpy(joint + lc + 1, it->choices[c], la);
		if (encode_alloc(tok, joint, lc + 1 + la, &ids, &nj) < 0)
			goto oom_j;
		size_t k = 0;
		while (k < nc && k < nj && ids[k] == ti->ctx[k])
			k++;
		if (k < nc)
			ti->mismatch = true;
		if (k == 0)
			k = 1; /* never score BOS */
		if (nj <= k) {
			snprintf(msg, cap, "choice %u encodes to no tokens after the context", c);
			free(ids);
			free(joint);
			return -1;
		}
		if (nj > ctx_len) {
			snprintf(msg, cap, "context + choice %u is %zu tokens, over the model's %u",
			         c, nj, ctx_len);
			free(ids);
			free(joint);
			return -1;
		}
		/* the shared part is the common prefix of every choice */
		if (k < nc)
			nc = k;
		ti->ch[c] = ids; /* the whole joint encoding for now */
		ti->n_ch[c] = (uint32_t)nj;
	}
	free(joint);
	/* cut every choice at the common context length nc */
	for (uint32_t c = 0; c < it->n_choices; c++) {
		uint32_t m = ti->n_ch[c] - (uint32_t)nc;
		memmove(ti->ch[c], ti->ch[c] + nc, m * sizeof(int32_t));
		ti->n_ch[c] = m;
	}
	ti->n_ctx = (uint32_t)nc;
	return 0;
oom_j:
	free(joint);
oom:
	snprintf(msg, cap, "out of memory or bad text while tokenizing");
	return -1;
}

/* A batch being filled; flushed through forward_run when full. */
struct rowbuf {
	struct engine *e;
	uint32_t n, max;
	int32_t *tok;
	uint32_t *pos;
	struct kv_seq **seqs;
	uint8_t *want;
	const struct forward_perturb **pert;
	float **dest; /* where each wanted row's logits go */
	uint64_t rows;
	bool any_pert;
};

static int rowbuf_flush(struct rowbuf *rb, struct itt_err *err)
{
	if (rb->n == 0)
		return 0;
	struct forward_batch b = {
	    .n_rows = rb->n,
	    .tokens = rb->tok,
	    .pos = rb->pos,
	    .seqs = rb->seqs,
	    .want_logits = rb->want,
	    .perturb = rb->any_pert ? rb->pert : NULL,
	};
	bool any = false;
	for (uint32_t i = 0; i < rb->n; i++)
		any |= rb->want[i] != 0;
	if (!any) /* forward_run wants at least one output row on the last stage */
		rb->want[rb->n - 1] = 1;
	int rc = forward_run(&rb->e->fwd, &b, rb->e->logits, err);
	if (rc < 0)
		return rc;
	uint32_t V = rb->e->model->hp.vocab, o = 0;
	for (uint32_t i = 0; i < rb->n; i++) {
		if (!rb->want[i])
			continue;
		if (rb->dest[i])
			memcpy(rb->dest[i], rb->e->logits + (size_t)o * V, V * sizeof(float));
		o++;
	}
	rb->rows += rb->n;
	rb->n = 0;
	rb->any_pert = false;
	return 0;
}

static int rowbuf_add(struct rowbuf *rb, int32_t tok, uint32_t pos, struct kv_seq *s,
                      const struct forward_perturb *p, float *dest, struct itt_err *err)
{
	if (rb->n == rb->max) {
		int rc = rowbuf_flush(rb, err);
		if (rc < 0)
			return rc;
	}
	uint32_t i = rb->n++;
	rb->tok[i] = tok;
	rb->pos[i] = pos;
	rb->seqs[i] = s;
	rb->want[i] = dest != NULL;
	rb->pert[i] = p;
	rb->dest[i] = dest;
	rb->any_pert |= p != NULL;
	return 0;
}

/* log softmax(x)[tok] in double; identical inputs give identical outputs. */
static double log_prob(const float *x, uint32_t V, int32_t tok)
{
	double mx = x[0], s = 0;
	for (uint32_t j = 1; j < V; j++)
		mx = x[j] > mx ? x[j] : mx;
	for (uint32_t j = 0; j < V; j++)
		s += exp((double)x[j] - mx);
	return (double)x[tok] - mx - log(s);
}

void eval_scores_free(struct eval_scores *s)
{
	free(s->sum);
	free(s->n_tok);
	memset(s, 0, sizeof *s);
}

/* The buffers of one eval_run. */
struct run {
	struct engine *e;
	struct rowbuf rb;
	const struct eval_branch *branches;
	struct forward_perturb *pert; /* [n_branches] */
	struct kv_seq *seqs;          /* [n_branches][K + 1]: the context, then one per choice */
	uint32_t K, V;
	float *lg; /* [n_branches][S][V]: one item's logits, S its choice tokens */
	size_t lg_cap;
	float *z; /* [V] scratch */
	struct itt_err err;
};

/* One tokenized item and where its logits go: choice c's token j at slot
 * off[c] + j of a branch's S slots. */
struct slots {
	const struct tok_item *ti;
	uint32_t n_choices;
	uint32_t off[EVAL_MAX_CHOICES], S;
};

static const struct forward_perturb *branch_pert(const struct run *r, size_t b)
{
	return r->branches[b].mask ? &r->pert[b] : NULL;
}

static float *branch_logits(const struct run *r, const struct slots *sl, size_t b)
{
	return r->lg + b * (size_t)sl->S * r->V;
}

/* Branches g0..g1 with prefix sharing: the context once per branch (its
 * last row predicts every choice's first token), then each choice in a
 * sequence forked from it. */
static int forward_shared(struct run *r, const struct slots *sl, size_t g0, size_t g1)
{
	const struct tok_item *ti = sl->ti;
	const uint32_t K = r->K, V = r->V;
	int frc = 0;
	for (size_t b = g0; b < g1 && frc == 0; b++) {
		float *base = branch_logits(r, sl, b);
		for (uint32_t q = 0; q < ti->n_ctx && frc == 0; q++)
			frc = rowbuf_add(&r->rb, ti->ctx[q], q, &r->seqs[b * (K + 1)],
			                 branch_pert(r, b), q + 1 == ti->n_ctx ? base : NULL,
			                 &r->err);
	}
	if (frc == 0)
		frc = rowbuf_flush(&r->rb, &r->err);
	for (size_t b = g0; b < g1 && frc == 0; b++) {
		float *base = branch_logits(r, sl, b);
		for (uint32_t c = 0; c < sl->n_choices && frc == 0; c++) {
			struct kv_seq *sq = &r->seqs[b * (K + 1) + 1 + c];
			if (c > 0)
				memcpy(base + (size_t)sl->off[c] * V, base, V * sizeof(float));
			frc = kv_seq_fork(&r->e->kv, &r->seqs[b * (K + 1)], sq, ti->n_ctx, &r->err);
			for (uint32_t j = 0; j + 1 < ti->n_ch[c] && frc == 0; j++)
				frc = rowbuf_add(&r->rb, ti->ch[c][j], ti->n_ctx + j, sq,
				                 branch_pert(r, b),
				                 base + (size_t)(sl->off[c] + j + 1) * V, &r->err);
		}
	}
	return frc;
}

/* Branches g0..g1 without prefix sharing: context + choice from position 0
 * for every choice. */
static int forward_recompute(struct run *r, const struct slots *sl, size_t g0, size_t g1)
{
	const struct tok_item *ti = sl->ti;
	const uint32_t K = r->K, V = r->V;
	int frc = 0;
	for (size_t b = g0; b < g1 && frc == 0; b++) {
		float *base = branch_logits(r, sl, b);
		for (uint32_t c = 0; c < sl->n_choices && frc == 0; c++) {
			struct kv_seq *sq = &r->seqs[b * (K + 1) + 1 + c];
			uint32_t n = ti->n_ctx + ti->n_ch[c] - 1;
			for (uint32_t q = 0; q < n && frc == 0; q++) {
				int32_t tk = q < ti->n_ctx ? ti->ctx[q] : ti->ch[c][q - ti->n_ctx];
				float *d = q + 1 >= ti->n_ctx
				               ? base + (size_t)(sl->off[c] + q + 1 - ti->n_ctx) * V
				               : NULL;
				frc = rowbuf_add(&r->rb, tk, q, sq, branch_pert(r, b), d, &r->err);
			}
		}
	}
	return frc;
}

/* Every branch's logits of one item, in groups of branches small enough
 * for the KV cache; 0, or -1 after printing an error. */
static int forward_item(struct run *r, const struct eval_item *it, const struct slots *sl,
                        size_t n_branches, const struct eval_opts *o)
{
	const struct tok_item *ti = sl->ti;
	uint32_t bs = r->e->kv.block_size, maxm = 0;
	for (uint32_t c = 0; c < sl->n_choices; c++)
		maxm = ti->n_ch[c] > maxm ? ti->n_ch[c] : maxm;
	uint64_t per_branch =
	    (uint64_t)(sl->n_choices + 1) * ((ti->n_ctx + maxm + bs - 1) / bs + 1);
	uint64_t avail = kv_cache_available(&r->e->kv);
	size_t group = per_branch ? (size_t)(avail / per_branch) : n_branches;
	if (group == 0) {
		fprintf(stderr, "itt %s: item %lld: the KV cache is too small for it\n", o->cmd,
		        it->id);
		return -1;
	}
	for (size_t g0 = 0; g0 < n_branches; g0 += group) {
		size_t g1 = g0 + group < n_branches ? g0 + group : n_branches;
		int frc =
		    o->recompute ? forward_recompute(r, sl, g0, g1) : forward_shared(r, sl, g0, g1);
		if (frc == 0)
			frc = rowbuf_flush(&r->rb, &r->err);
		for (size_t b = g0; b < g1; b++)
			for (uint32_t c = 0; c <= r->K; c++)
				kv_seq_free(&r->e->kv, &r->seqs[b * (r->K + 1) + c]);
		if (frc < 0) {
			fprintf(stderr, "itt %s: item %lld: %s\n", o->cmd, it->id, r->err.msg);
			return -1;
		}
	}
	return 0;
}

/* The settings' log probabilities of one item's choices: sum[si * stride + c]. */
static void score_item(struct run *r, const struct slots *sl, const struct eval_setting *settings,
                       size_t n_settings, double *sum, size_t stride)
{
	const struct tok_item *ti = sl->ti;
	const uint32_t V = r->V;
	float *z = r->z;
	for (size_t si = 0; si < n_settings; si++) {
		const struct eval_setting *st = &settings[si];
		const float *l0 = r->lg;
		const float *lp =
		    st->kind == EVAL_GUIDANCE ? branch_logits(r, sl, st->branch) : NULL;
		for (uint32_t c = 0; c < sl->n_choices; c++) {
			double acc = 0;
			for (uint32_t j = 0; j < ti->n_ch[c]; j++) {
				size_t slot = (size_t)(sl->off[c] + j) * V;
				const float *l = l0 + slot, *x = l;
				if (st->kind == EVAL_TEMP) {
					for (uint32_t v = 0; v < V; v++)
						z[v] = l[v] / st->temp;
					x = z;
				} else if (st->kind == EVAL_GUIDANCE) {
					/* cut 0: no plausibility cut when scoring */
					guidance_combine(l, lp + slot, V, st->scale, 0.0f, z);
					x = z;
				}
				acc += log_prob(x, V, ti->ch[c][j]);
			}
			sum[si * stride + c] = acc;
		}
	}
}

static void run_free(struct run *r)
{
	free(r->rb.tok);
	free(r->rb.pos);
	free(r->rb.seqs);
	free(r->rb.want);
	free(r->rb.pert);
	free(r->rb.dest);
	free(r->pert);
	free(r->seqs);
	free(r->lg);
	free(r->z);
}

int eval_run(struct engine *e, const struct eval_task *t, const struct eval_branch *branches,
             size_t n_branches, const struct eval_setting *settings, size_t n_settings,
             const struct eval_opts *o, struct eval_scores *out)
{
	const struct model_hparams *hp = &e->model->hp;
	uint32_t V = hp->vocab, K = 0;
	int rc = -1;
	memset(out, 0, sizeof *out);
	for (size_t i = 0; i < t->n; i++)
		K = t->items[i].n_choices > K ? t->items[i].n_choices : K;
	out->n_items = t->n;
	out->n_settings = n_settings;
	out->max_choices = K;
	out->sum = calloc(n_settings * t->n * K, sizeof *out->sum);
	out->n_tok = calloc(t->n * K, sizeof *out->n_tok);

	struct run r = {.e = e, .branches = branches, .K = K, .V = V};
	struct rowbuf *rb = &r.rb;
	rb->e = e;
	rb->max = e->fwd.max_rows;
	rb->tok = malloc(rb->max * sizeof *rb->tok);
	rb->pos = malloc(rb->max * sizeof *rb->pos);
	rb->seqs = malloc(rb->max * sizeof *rb->seqs);
	rb->want = malloc(rb->max);
	rb->pert = malloc(rb->max * sizeof *rb->pert);
	rb->dest = malloc(rb->max * sizeof *rb->dest);
	r.pert = calloc(n_branches, sizeof *r.pert);
	r.seqs = malloc(n_branches * (K + 1) * sizeof *r.seqs);
	r.z = malloc(V * sizeof *r.z);
	struct tok_item ti;
	memset(&ti, 0, sizeof ti);
	if (!out->sum || !out->n_tok || !rb->tok || !rb->pos || !rb->seqs || !rb->want ||
	    !rb->pert || !rb->dest || !r.pert || !r.seqs || !r.z) {
		fprintf(stderr, "itt %s: out of memory\n", o->cmd);
		goto done;
	}
	for (size_t b = 0; b < n_branches * (K + 1); b++)
		kv_seq_init(&r.seqs[b]);
	for (size_t b = 0; b < n_branches; b++) {
		r.pert[b].mask = branches[b].mask;
		r.pert[b].blend = branches[b].blend;
	}
	double t0 = clock_mono_s(), last_note = t0;
	for (size_t i = 0; i < t->n; i++) {
		const struct eval_item *it = &t->items[i];
		char msg[200];
		if (tokenize_item(e->tok, it, hp->ctx_len, &ti, msg, sizeof msg) < 0) {
			fprintf(stderr, "itt %s: item %lld: %s\n", o->cmd, it->id, msg);
			goto done;
		}
		out->boundary_mismatch += ti.mismatch;
		struct slots sl = {.ti = &ti, .n_choices = it->n_choices};
		for (uint32_t c = 0; c < it->n_choices; c++) {
			sl.off[c] = sl.S;
			sl.S += ti.n_ch[c];
			out->n_tok[i * K + c] = ti.n_ch[c];
		}
		size_t need = n_branches * (size_t)sl.S * V;
		if (need > r.lg_cap) {
			free(r.lg);
			r.lg = malloc(need * sizeof *r.lg);
			r.lg_cap = r.lg ? need : 0;
			if (!r.lg) {
				fprintf(stderr, "itt %s: out of memory for logits\n", o->cmd);
				goto done;
			}
		}
		if (forward_item(&r, it, &sl, n_branches, o) < 0)
			goto done;
		score_item(&r, &sl, settings, n_settings, out->sum + i * K, t->n * K);
		for (uint32_t c = 0; c < it->n_choices; c++)
			out->scored_tokens += ti.n_ch[c];
		out->rows_per_branch += o->recompute ? 0 : ti.n_ctx;
		for (uint32_t c = 0; c < it->n_choices; c++)
			out->rows_per_branch +=
			    o->recompute ? ti.n_ctx + ti.n_ch[c] - 1 : ti.n_ch[c] - 1;
		tok_item_free(&ti);
		double now = clock_mono_s();
		if (o->progress && now - last_note > 5) {
			fprintf(stderr, "itt %s: %zu/%zu items, %.0f s\n", o->cmd, i + 1, t->n,
			        now - t0);
			last_note = now;
		}
	}
	out->forward_rows = rb->rows;
	out->seconds = clock_mono_s() - t0;
	rc = 0;
done:
	tok_item_free(&ti);
	run_free(&r);
	if (rc)
		eval_scores_free(out);
	return rc;
}
