/* sched-session: the session table, admission, prefix sharing and
 * preemption, and the OPEN and STEP commands applied to a session.
 *
 * Contract (compute thread only): a session is running (it holds KV blocks)
 * or waiting in s->waitq, ordered by (priority desc, ticket asc).  A session
 * is admitted when the cache can hold its whole history (main sequence and
 * guidance branch) on top of what the running sessions were promised; the
 * queue is served strictly in order.  OPEN and STEP either change a session
 * or answer with an ERROR (sched_error), never both.
 * Invariants: every session is in s->sess[0, n_sess); a waiting one is in
 * s->waitq too and holds no blocks (n_done == bn_done == 0); hist[0, n_done)
 * are in its cache; at most SCHED_MAX_INFLIGHT steps are owed (marks). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "itt.pb-c.h"
#include "log.h"
#include "sched-internal.h"

static uint32_t sched_blocks(const sched_t *s, uint32_t n_pos)
{
	return (uint32_t)(((uint64_t)n_pos + s->block - 1) / s->block);
}

/* Blocks of n main positions and, for a session with a guidance branch
 * (g_kind != 0), its branch's n + off positions. */
static uint32_t sched_blocks_with(const sched_t *s, uint32_t n, int g_kind, int32_t off)
{
	return sched_blocks(s, n) + (g_kind ? sched_blocks(s, (uint32_t)((int64_t)n + off)) : 0);
}

/* Positions of a session's guidance branch (0: none). */
uint32_t sched_bn_len(const struct sched_session *ss)
{
	return ss->g_kind ? (uint32_t)((int64_t)ss->n_hist + ss->off) : 0;
}

/* Blocks the whole history takes: the main sequence and the branch. */
static uint32_t sched_need(const sched_t *s, const struct sched_session *ss)
{
	return sched_blocks_with(s, ss->n_hist, ss->g_kind, ss->off);
}

/* Blocks a running session will still take for the tokens it was given. */
static uint32_t sched_promised(const sched_t *s, const struct sched_session *ss)
{
	uint32_t need = sched_blocks(s, ss->n_hist), bneed = sched_blocks(s, sched_bn_len(ss));
	if (!ss->running)
		return 0;
	return (need > ss->seq.n_blocks ? need - ss->seq.n_blocks : 0) +
	       (bneed > ss->bseq.n_blocks ? bneed - ss->bseq.n_blocks : 0);
}

/* Blocks available (free or idle in the prefix index) and not yet promised
 * to a running session; negative when steps have over-committed the cache
 * (the scheduler then preempts). */
static int64_t sched_kv_unpromised(const sched_t *s)
{
	int64_t avail = kv_cache_available(&s->e->kv);
	for (uint32_t i = 0; i < s->n_sess; i++)
		avail -= sched_promised(s, s->sess[i]);
	return avail;
}

struct sched_session *sched_find(sched_t *s, uint64_t id, uint32_t *index)
{
	for (uint32_t i = 0; i < s->n_sess; i++)
		if (s->sess[i]->id == id) {
			if (index)
				*index = i;
			return s->sess[i];
		}
	return NULL;
}

static void sched_session_free(sched_t *s, struct sched_session *ss)
{
	kv_seq_free(&s->e->kv, &ss->seq);
	kv_seq_free(&s->e->kv, &ss->bseq);
	free(ss->tech.g_mask);
	free(ss->tech.g_neg);
	free(ss->tech.g_neg_tokens);
	free(ss->lg);
	free(ss->blg);
	free(ss->ee_count);
	free(ss->bhid);
	free(ss->boutr);
	sampler_destroy(&ss->smp);
	free(ss->hist);
	free(ss->keys);
	free(ss->hid);
	free(ss->outr);
	free(ss);
}

/* Grows a [*cap][dim] row buffer to hold `need` rows; -1 when out of memory. */
int sched_rows_fit(float **rows, uint32_t *cap, uint32_t need, uint32_t dim)
{
	if (need <= *cap)
		return 0;
	uint32_t c = *cap ? *cap : 16;
	while (c < need)
		c = c > UINT32_MAX / 2 ? need : c * 2;
	float *r = realloc(*rows, (size_t)c * dim * sizeof *r);
	if (!r)
		return -1;
	*rows = r;
	*cap = c;
	return 0;
}

/* Appends the input rows of a command's n_tokens new positions (before
 * they enter hist): rows already computed are dropped first.  A session
 * with a perturbation branch (on a stage, in step with the main rows) gets
 * the rows after the main ones as its branch's. */
static int sched_append_hidden(sched_t *s, struct sched_session *ss, const struct sched_cmd *c)
{
	const size_t dim = s->info.dim;
	const uint32_t n = c->n_tokens;
	const float *h = c->hidden, *bh = ss->g_kind == 1 ? h + (size_t)n * dim : NULL;
	uint32_t done = ss->n_done;
	if (ss->g_kind && ss->bn_done < done)
		done = ss->bn_done;
	if (done > ss->hid_start) {
		uint32_t keep = ss->n_hist - done;
		memmove(ss->hid, ss->hid + (size_t)(done - ss->hid_start) * dim,
		        (size_t)keep * dim * sizeof *ss->hid);
		if (ss->bhid)
			memmove(ss->bhid, ss->bhid + (size_t)(done - ss->hid_start) * dim,
			        (size_t)keep * dim * sizeof *ss->bhid);
		ss->hid_start = done;
	}
	uint32_t have = ss->n_hist - ss->hid_start;
	if (sched_rows_fit(&ss->hid, &ss->hid_cap, have + n, (uint32_t)dim) < 0)
		return -1;
	memcpy(ss->hid + (size_t)have * dim, h, (size_t)n * dim * sizeof *h);
	if (bh) {
		if (sched_rows_fit(&ss->bhid, &ss->bhid_cap, have + n, (uint32_t)dim) < 0)
			return -1;
		memcpy(ss->bhid + (size_t)have * dim, bh, (size_t)n * dim * sizeof *bh);
	}
	return 0;
}

/* Puts ss into the wait queue at its place: after every session of higher
 * or equal priority with an earlier ticket. */
static void sched_wait_insert(sched_t *s, struct sched_session *ss)
{
	uint32_t at = s->n_wait;
	while (at > 0 && (s->waitq[at - 1]->priority < ss->priority ||
	                  (s->waitq[at - 1]->priority == ss->priority &&
	                   s->waitq[at - 1]->ticket > ss->ticket))) {
		s->waitq[at] = s->waitq[at - 1];
		at--;
	}
	s->waitq[at] = ss;
	s->n_wait++;
	ss->running = false;
}

static void sched_wait_remove(sched_t *s, struct sched_session *ss)
{
	for (uint32_t i = 0; i < s->n_wait; i++)
		if (s->waitq[i] == ss) {
			memmove(s->waitq + i, s->waitq + i + 1,
			        (size_t)(s->n_wait - i - 1) * sizeof *s->waitq);
			s->n_wait--;
			return;
		}
}

void sched_drop(sched_t *s, uint64_t id)
{
	uint32_t i;
	struct sched_session *ss = sched_find(s, id, &i);
	if (!ss)
		return;
	if (!ss->running)
		sched_wait_remove(s, ss);
	sched_session_free(s, ss);
	s->sess[i] = s->sess[--s->n_sess];
}

/* Makes room for `need` tokens of history (at most ctx + 1). */
int sched_hist_reserve(sched_t *s, struct sched_session *ss, uint32_t need)
{
	if (need > ss->cap) {
		uint32_t cap = ss->cap ? ss->cap : 64;
		while (cap < need)
			cap *= 2;
		if (cap > s->info.ctx_len + 1)
			cap = s->info.ctx_len + 1; /* speculative verification writes one past */
		int32_t *h = realloc(ss->hist, (size_t)cap * sizeof *h);
		if (!h)
			return -1;
		ss->hist = h;
		ss->cap = cap;
	}
	return need <= ss->cap ? 0 : -1;
}

/* Appends tokens to a session's history (its capacity grows up to ctx). */
static int sched_append(sched_t *s, struct sched_session *ss, const int32_t *t, uint32_t n)
{
	if (sched_hist_reserve(s, ss, ss->n_hist + n) < 0)
		return -1;
	memcpy(ss->hist + ss->n_hist, t, (size_t)n * sizeof *t);
	ss->n_hist += n;
	return 0;
}

void sched_push_out(sched_t *s, struct sched_out *o)
{
	o->epoch = s->epoch;
	pthread_mutex_lock(&s->out_mu);
	if (s->out_tail)
		s->out_tail->next = o;
	else
		s->out_head = o;
	s->out_tail = o;
	if (o->kind == SCHED_OUT_RESULT)
		s->stats.results++;
	s->out_new = true;
	pthread_mutex_unlock(&s->out_mu);
}

void sched_error(sched_t *s, uint64_t id, int code, const char *fmt, ...)
{
	struct sched_out *o = calloc(1, sizeof *o);
	va_list ap;
	if (!o) {
		LOG_ERROR("session %llu: out of memory for an ERROR", (unsigned long long)id);
		return;
	}
	o->kind = SCHED_OUT_ERROR;
	o->session_id = id;
	o->err.code = code;
	va_start(ap, fmt);
	vsnprintf(o->err.msg, sizeof o->err.msg, fmt, ap);
	va_end(ap);
	LOG_DEBUG("session %llu: ERROR %d: %s", (unsigned long long)id, code, o->err.msg);
	sched_push_out(s, o);
}

/* ---- admission, prefix sharing and preemption ----------------------------
 *
 * A session waits in the queue until the cache can hold its whole history
 * without breaking a promise to a running session; the queue is served
 * strictly in (priority, ticket) order, so a big session at its head is not
 * overtaken (no starvation) and a preempted session, which keeps its
 * ticket, goes before newer ones of its priority.  On admission it forks
 * the longest indexed prefix of its history and computes the rest.  When a
 * step needs a block that is not there, the running session with the
 * lowest priority (ties: the latest admitted) loses its blocks and waits
 * again; it is recomputed from its history before its owed result, which
 * is therefore the same token. */

/* Positions a session may take from the prefix index: none of the rows
 * whose logits its first owed result needs (the last token; every row of a
 * speculative step). */
static uint32_t sched_share_limit(const struct sched_session *ss)
{
	if (!ss->n_marks)
		return ss->n_hist > 0 ? ss->n_hist - 1 : 0;
	const struct sched_mark *mk = &ss->marks[ss->mark_head];
	return mk->end >= mk->n_logits ? mk->end - mk->n_logits : 0;
}

/* True when another running session is computing the next block ss could
 * share: ss waits for it to be indexed rather than compute it twice. */
static bool sched_prefix_in_flight(const sched_t *s, const struct sched_session *ss,
                                   uint32_t matched)
{
	uint32_t m = matched / s->block;
	if (!s->cfg.prefix_cache || m >= ss->n_keys || (m + 1) * s->block > sched_share_limit(ss))
		return false;
	for (uint32_t i = 0; i < s->n_sess; i++) {
		const struct sched_session *r = s->sess[i];
		if (r != ss && r->running && r->n_keys > m && r->n_reg <= m &&
		    r->keys[m] == ss->keys[m])
			return true;
	}
	return false;
}

/* Whether the head of the wait queue can be admitted now (no side effect).
 * *matched: the positions it would share. */
bool sched_head_fits(const sched_t *s, bool may_defer, uint32_t *matched)
{
	const struct sched_session *ss = s->waitq[0];
	uint32_t idle = 0;
	*matched = s->cfg.prefix_cache ? s->block * kv_prefix_peek(&s->e->kv, ss->hist,
	                                                           sched_share_limit(ss), &idle)
	                               : 0;
	uint32_t need = sched_need(s, ss) - *matched / s->block;
	if ((int64_t)need + idle > sched_kv_unpromised(s))
		return false;
	return !(may_defer && sched_prefix_in_flight(s, ss, *matched));
}

/* Admits waiting sessions in queue order while they fit. */
void sched_admit(sched_t *s, bool may_defer)
{
	struct kv_cache *kv = &s->e->kv;
	while (s->n_wait > 0) {
		struct sched_session *ss = s->waitq[0];
		uint32_t matched;
		if (sched_need(s, ss) > kv->n_blocks) {
			/* Grown past the whole cache: only another worker can help. */
			sched_error(s, ss->id, ITT__CODE__OVERLOADED,
			            "kv cache full: %u positions need %u blocks, the cache has %u",
			            ss->n_hist, sched_need(s, ss), kv->n_blocks);
			sched_drop(s, ss->id);
			continue;
		}
		if (!sched_head_fits(s, may_defer, &matched))
			return;
		sched_wait_remove(s, ss);
		ss->running = true;
		ss->admitted = ++s->next_admit;
		if (s->cfg.prefix_cache) {
			uint32_t got =
			    kv_prefix_match(kv, ss->hist, sched_share_limit(ss), &ss->seq);
			ss->n_done = got;
			ss->n_reg = got / s->block < ss->n_keys ? got / s->block : ss->n_keys;
		}
		LOG_AT(ss->preempted ? LOG_LEVEL_INFO : LOG_LEVEL_DEBUG,
		       "session %llu admitted (priority %d%s): %u positions, %u shared from "
		       "the prefix index, %u blocks free",
		       (unsigned long long)ss->id, ss->priority,
		       ss->preempted ? ", after preemption" : "", ss->n_hist, ss->n_done,
		       kv->n_free);
	}
}

/* The running session to preempt first: lowest priority, then the latest
 * admitted. */
struct sched_session *sched_victim(sched_t *s)
{
	struct sched_session *v = NULL;
	for (uint32_t i = 0; i < s->n_sess; i++) {
		struct sched_session *ss = s->sess[i];
		if (ss->running && (!v || ss->priority < v->priority ||
		                    (ss->priority == v->priority && ss->admitted > v->admitted)))
			v = ss;
	}
	return v;
}

void sched_preempt(sched_t *s, struct sched_session *v, const struct sched_session *for_ss)
{
	uint32_t freed = v->seq.n_blocks + v->bseq.n_blocks;
	kv_seq_free(&s->e->kv, &v->seq);
	kv_seq_free(&s->e->kv, &v->bseq);
	v->n_done = 0;
	v->bn_done = 0;
	v->n_reg = 0;
	v->preempted++;
	s->preemptions++;
	sched_wait_insert(s, v);
	LOG_INFO("session %llu preempted (priority %d) for session %llu (priority %d): %u "
	         "blocks released, %u positions to recompute",
	         (unsigned long long)v->id, v->priority, (unsigned long long)for_ss->id,
	         for_ss->priority, freed, v->n_hist);
}

/* ---- commands ------------------------------------------------------------ */

/* Whether a command's hidden input matches this worker's range (the loop
 * decoded it for the range it knew; ASSIGN keeps them in step, this makes
 * sure). */
static bool sched_input_fits(sched_t *s, const struct sched_cmd *c)
{
	if ((s->info.first > 0) == (c->hidden != NULL))
		return true;
	sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
	            "this worker now holds layers [%u, %u): hidden states %s", s->info.first,
	            s->info.last, c->hidden ? "not expected" : "missing");
	return false;
}

void sched_apply_open(sched_t *s, struct sched_cmd *c)
{
	struct itt_err err = {0};
	if (!sched_input_fits(s, c))
		return;
	int code = sched_prepare_open(&s->info, c, &err);
	if (code) {
		sched_error(s, c->session_id, code, "%s", err.msg);
		return;
	}
	if (sched_find(s, c->session_id, NULL)) {
		LOG_WARN("OPEN of session %llu, which is open: replacing it",
		         (unsigned long long)c->session_id);
		sched_drop(s, c->session_id);
	}
	if (s->n_sess >= s->cfg.max_sessions) {
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "worker full: %u sessions open (--max-sessions)", s->n_sess);
		return;
	}
	/* the guidance branch: perturbed heads (on stages its rows come after
	 * the main rows) or the negative prompt */
	const struct sched_tech *t = &c->tech;
	int g_kind = t->g_scale > 0 ? (t->g_mask ? 1 : t->g_neg_tokens ? 2 : 0) : 0;
	int32_t off = g_kind == 2 ? (int32_t)t->n_neg - (int32_t)c->n_prompt : 0;
	if (c->hidden && c->hidden_rows != c->n_tokens * (g_kind == 1 ? 2 : 1)) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "hidden has %u rows for %u tokens%s", c->hidden_rows, c->n_tokens,
		            g_kind == 1 ? " and their guidance branch" : "");
		return;
	}
	if (g_kind == 2 && (int64_t)c->n_tokens + off > s->info.ctx_len) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "guidance: the negative prompt's branch (%u tokens) would pass the "
		            "context of %u",
		            (uint32_t)((int64_t)c->n_tokens + off), s->info.ctx_len);
		return;
	}
	uint32_t need = sched_blocks_with(s, c->n_tokens, g_kind, off);
	if (need > s->e->kv.n_blocks) {
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "kv cache full: the prompt needs %u blocks, the cache has %u", need,
		            s->e->kv.n_blocks);
		return;
	}
	struct sched_session *ss = calloc(1, sizeof *ss);
	uint32_t n_keys = c->n_prompt / s->block;
	const size_t V = s->info.vocab;
	const size_t lg_rows = t->spec ? SPEC_MAX_DRAFT + 1 : 1;
	bool last = s->info.last == s->info.n_layers;
	if (ss) {
		ss->g_kind = g_kind;
		ss->off = off;
		ss->buffered = last && (g_kind || t->spec || t->ee);
	}
	if (!ss || sampler_new(&c->sp, s->info.vocab, &ss->smp, &err) < 0 ||
	    (c->hidden && sched_append_hidden(s, ss, c) < 0) ||
	    sched_append(s, ss, c->tokens, c->n_tokens) < 0 ||
	    !(ss->keys = malloc((n_keys ? n_keys : 1) * sizeof *ss->keys)) ||
	    (ss->buffered && !(ss->lg = malloc(lg_rows * V * sizeof *ss->lg))) ||
	    (ss->buffered && g_kind && !(ss->blg = malloc(lg_rows * V * sizeof *ss->blg))) ||
	    (c->tech.ee && !(ss->ee_count = calloc(s->info.n_layers, sizeof *ss->ee_count)))) {
		sched_error(s, c->session_id, ITT__CODE__INTERNAL, "cannot open the session: %s",
		            err.code ? err.msg : "out of memory");
		if (ss)
			sched_session_free(s, ss);
		return;
	}
	/* the techniques move into the session */
	ss->tech = c->tech;
	memset(&c->tech, 0, sizeof c->tech);
	kv_seq_init(&ss->bseq);
	if (g_kind == 1) {
		ss->pert.mask = ss->tech.g_mask;
		ss->pert.blend = ss->tech.g_blend;
	}
	if (ss->tech.spec)
		spec_ctl_init(&ss->ctl, ss->tech.spec_max);
	ss->id = c->session_id;
	ss->priority = c->priority;
	ss->ticket = ++s->next_ticket;
	kv_seq_init(&ss->seq);
	ss->n_prompt = c->n_prompt;
	ss->tokenized = c->tokenized;
	ss->n_stop_tokens = c->n_stop_tokens;
	memcpy(ss->stop_tokens, c->stop_tokens, sizeof ss->stop_tokens);
	ss->reply_dtype = c->reply_dtype;
	ss->n_keys = n_keys;
	kv_prefix_keys(&s->e->kv, ss->hist, n_keys, ss->keys);
	ss->marks[0] = (struct sched_mark){0, c->n_tokens, 0, 1};
	ss->n_marks = 1;
	s->sess[s->n_sess++] = ss;
	sched_wait_insert(s, ss);
	/* Admit now if it fits (no deferral: the queue bound below must only
	 * refuse what really lacks memory). */
	sched_admit(s, s->n_wait <= s->cfg.max_waiting);
	if (!ss->running && s->n_wait > s->cfg.max_waiting) {
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "kv cache full: %u sessions wait for memory already (--max-waiting)",
		            s->n_wait - 1);
		sched_drop(s, c->session_id);
		return;
	}
	LOG_DEBUG("session %llu open: %u tokens (%u prompt), priority %d, %s%s%s%s%s",
	          (unsigned long long)ss->id, c->n_tokens, c->n_prompt, ss->priority,
	          ss->running ? "running" : "waiting",
	          ss->g_kind == 1   ? ", guidance (heads)"
	          : ss->g_kind == 2 ? ", guidance (negative prompt)"
	                            : "",
	          ss->tech.spec
	              ? (ss->tech.spec_exit ? ", speculative (exit)" : ", speculative (ngram)")
	              : "",
	          ss->tech.ee ? ", early exit" : "", "");
}

/* Drops a session's positions >= pos (history, KV cache of the main
 * sequence and the branch, kept stage rows) before a STEP at pos appends:
 * the drafts the last stage rejected.  -1 (ERROR sent) when that would drop
 * prompt positions, leave a gap, or drop tokens of a step still in flight. */
int sched_truncate(sched_t *s, struct sched_session *ss, uint32_t pos)
{
	struct kv_cache *kv = &s->e->kv;
	ss->n_hist = pos;
	if (ss->n_done > pos)
		ss->n_done = pos;
	kv_seq_truncate(kv, &ss->seq, ss->n_done);
	if (ss->g_kind) {
		uint32_t bpos = (uint32_t)((int64_t)pos + ss->off);
		if (ss->bn_done > bpos)
			ss->bn_done = bpos;
		kv_seq_truncate(kv, &ss->bseq, ss->bn_done);
	}
	if (ss->hid_start > pos)
		ss->hid_start = pos;
	if (ss->out_start > pos)
		ss->out_start = pos;
	return 0;
}

static int sched_drop_from(sched_t *s, struct sched_session *ss, const struct sched_cmd *c)
{
	if (c->pos > ss->n_hist) {
		sched_error(s, ss->id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: pos %u is past the session's %u positions", c->step, c->pos,
		            ss->n_hist);
		return -1;
	}
	if (c->pos < ss->n_prompt) {
		sched_error(s, ss->id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: pos %u would drop prompt positions (the prompt has %u)",
		            c->step, c->pos, ss->n_prompt);
		return -1;
	}
	if (ss->n_marks) {
		sched_error(s, ss->id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: pos %u would drop positions of a step not yet answered",
		            c->step, c->pos);
		return -1;
	}
	LOG_DEBUG("session %llu: step %u drops positions [%u, %u)", (unsigned long long)ss->id,
	          c->step, c->pos, ss->n_hist);
	return sched_truncate(s, ss, c->pos);
}

void sched_apply_step(sched_t *s, struct sched_cmd *c)
{
	struct sched_session *ss = sched_find(s, c->session_id, NULL);
	if (!sched_input_fits(s, c))
		return;
	if (!ss) {
		sched_error(s, c->session_id, ITT__CODE__NOT_FOUND,
		            "session %llu is not open on this worker",
		            (unsigned long long)c->session_id);
		return;
	}
	if (ss->n_marks == SCHED_MAX_INFLIGHT) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "session %llu has %u steps in flight already",
		            (unsigned long long)c->session_id, ss->n_marks);
		return;
	}
	if (c->hidden && c->hidden_rows != c->n_tokens * (ss->g_kind == 1 ? 2 : 1)) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: hidden has %u rows for %u tokens%s", c->step, c->hidden_rows,
		            c->n_tokens, ss->g_kind == 1 ? " and their guidance branch" : "");
		return;
	}
	if (ss->tech.spec && c->n_tokens > SPEC_MAX_DRAFT + 1) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: a speculative step takes the last token and at most %d "
		            "drafts, got %u tokens",
		            c->step, SPEC_MAX_DRAFT, c->n_tokens);
		return;
	}
	if (c->has_pos && c->pos != ss->n_hist && sched_drop_from(s, ss, c) < 0)
		return;
	if ((uint64_t)ss->n_hist + c->n_tokens > s->info.ctx_len ||
	    (ss->g_kind && (int64_t)ss->n_hist + c->n_tokens + ss->off > s->info.ctx_len)) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: %u + %u tokens exceed the context of %u%s", c->step,
		            ss->n_hist, c->n_tokens, s->info.ctx_len,
		            ss->g_kind == 2 ? " (with the negative prompt's branch)" : "");
		return;
	}
	uint32_t start = ss->n_hist;
	uint32_t need = sched_blocks_with(s, ss->n_hist + c->n_tokens, ss->g_kind, ss->off);
	if (need > s->e->kv.n_blocks || (c->hidden && sched_append_hidden(s, ss, c) < 0) ||
	    sched_append(s, ss, c->tokens, c->n_tokens) < 0) {
		/* Only a worker with more memory can run it: the broker replays
		 * the session elsewhere; its memory is freed. */
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "kv cache full: step %u needs %u blocks, the cache has %u", c->step,
		            need, s->e->kv.n_blocks);
		sched_drop(s, c->session_id);
		return;
	}
	ss->marks[(ss->mark_head + ss->n_marks++) % SCHED_MAX_INFLIGHT] =
	    (struct sched_mark){c->step, ss->n_hist, start, ss->tech.spec ? c->n_tokens : 1};
}
