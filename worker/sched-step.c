/* sched-step: one step of the compute thread: the batch, the forward
 * pass, and its results.
 *
 * Contract: sched_run_step admits what fits, picks rows (decode rows first,
 * then prefill chunks, round-robin from s->rr, at most batch_tokens rows, one
 * early-exit configuration per pass), gives each group its KV blocks
 * (preempting, or on a stage failing, the lowest-priority sessions when the
 * cache is short), runs ONE forward pass, and queues a RESULT (or ERROR) for
 * every step now complete: the last stage samples (guidance combines the
 * branch's logits, a speculative step verifies its drafts and proposes the
 * next ones), a non-last stage sends the output rows.
 * Invariants: a group whose session lost its blocks or was dropped during
 * the step has grp_rows == grp_brows == 0 and its rows are ignored; a
 * step's result samples the token at `end` from hist[0, end), so a replayed
 * or preempted history gives the same tokens. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "guidance.h"
#include "itt.pb-c.h"
#include "log.h"
#include "sched-internal.h"
#include "wire.h"

/* Whether the row of main position p wants logits: it is one of the last
 * n_logits positions of a step not yet answered.  *mi: the mark to look at
 * first (relative to the head; positions are asked in ascending order). */
static bool sched_wants(const struct sched_session *ss, uint32_t p, uint32_t *mi)
{
	while (*mi < ss->n_marks && ss->marks[(ss->mark_head + *mi) % SCHED_MAX_INFLIGHT].end <= p)
		(*mi)++;
	if (*mi >= ss->n_marks)
		return false;
	const struct sched_mark *mk = &ss->marks[(ss->mark_head + *mi) % SCHED_MAX_INFLIGHT];
	return p + mk->n_logits >= mk->end;
}

/* Adds one row to the batch at row *n. */
static void sched_add_row(sched_t *s, struct sched_session *ss, uint32_t g, bool branch,
                          uint32_t pos, bool want, uint32_t *n)
{
	uint32_t r = (*n)++;
	int32_t tok;
	if (!branch)
		tok = ss->hist[pos];
	else if (pos < ss->tech.n_neg)
		tok = ss->tech.g_neg_tokens[pos];
	else
		tok = ss->hist[(int64_t)pos - ss->off];
	s->row_tok[r] = tok;
	s->row_pos[r] = pos;
	s->row_seq[r] = branch ? &ss->bseq : &ss->seq;
	s->row_want[r] = want && s->info.last == s->info.n_layers;
	s->row_sess[r] = ss;
	s->row_br[r] = branch;
	s->row_grp[r] = g;
	s->row_pert[r] = branch && ss->g_kind == 1 ? &ss->pert : NULL;
	if (s->info.first > 0) {
		const size_t dim = s->info.dim;
		/* a branch on a stage is a perturbation branch: off 0, rows in step */
		const float *src =
		    (branch ? ss->bhid : ss->hid) + (size_t)(pos - ss->hid_start) * dim;
		memcpy(s->row_hid + (size_t)r * dim, src, dim * sizeof *src);
	}
}

/* Adds the rows of group g (k main rows from n_done, kb branch rows from
 * bn_done) to the batch at row *n: first branch rows that catch up with the
 * main sequence, then each main row followed by its branch row, so that the
 * logits of a pair come out one after the other. */
static void sched_take_rows(sched_t *s, uint32_t g, uint32_t *n)
{
	struct sched_session *ss = s->grp_sess[g];
	uint32_t k = s->grp_rows[g], kb = s->grp_brows[g];
	uint32_t mi = 0, q = ss->bn_done, qend = ss->bn_done + kb;
	while (q < qend && (int64_t)q < (int64_t)ss->n_done + ss->off)
		sched_add_row(s, ss, g, true, q++, false, n);
	for (uint32_t j = 0; j < k; j++) {
		uint32_t p = ss->n_done + j;
		bool want = sched_wants(ss, p, &mi);
		sched_add_row(s, ss, g, false, p, want, n);
		if (q < qend && (int64_t)q == (int64_t)p + ss->off)
			sched_add_row(s, ss, g, true, q++, want, n);
	}
	while (q < qend) /* not expected: the branch is never ahead */
		sched_add_row(s, ss, g, true, q++, false, n);
}

/* Branch rows that go with k main rows of ss this step (0 without one):
 * the branch catches up to the main sequence's alignment. */
static uint32_t sched_branch_rows(const struct sched_session *ss, uint32_t k)
{
	if (!ss->g_kind)
		return 0;
	int64_t want = (int64_t)ss->n_done + k + ss->off, len = sched_bn_len(ss);
	if (want > len)
		want = len;
	return want > ss->bn_done ? (uint32_t)(want - ss->bn_done) : 0;
}

/* Whether two sessions can share a forward pass: the same early exit (or
 * none); a pass runs one exit configuration. */
static bool sched_same_exit(const struct sched_session *a, const struct sched_session *b)
{
	if (a->tech.ee != b->tech.ee)
		return false;
	return !a->tech.ee ||
	       (a->tech.ee_threshold == b->tech.ee_threshold && a->tech.n_ee == b->tech.n_ee &&
	        !memcmp(a->tech.ee_layers, b->tech.ee_layers, a->tech.n_ee * sizeof(uint32_t)));
}

/* Whether group a goes before group b when blocks are handed out. */
static bool sched_before(const struct sched_session *a, const struct sched_session *b)
{
	return a->priority > b->priority ||
	       (a->priority == b->priority && a->admitted < b->admitted);
}

/* Picks the rows of this step: decode rows first, then prefill chunks,
 * round-robin, at most batch_tokens (a guidance branch's rows count too),
 * one early-exit configuration per pass; returns the number of groups. */
static uint32_t sched_select(sched_t *s)
{
	const uint32_t budget = s->cfg.batch_tokens;
	uint32_t n = 0, n_grp = 0;
	uint32_t start = s->n_sess ? s->rr++ % s->n_sess : 0;
	struct sched_session *first = NULL;
	s->pass_exit = NULL;
	for (int pass = 0; pass < 2 && n < budget; pass++) {
		for (uint32_t i = 0; i < s->n_sess && n < budget; i++) {
			struct sched_session *ss = s->sess[(start + i) % s->n_sess];
			uint32_t left = ss->n_hist - ss->n_done;
			if (!ss->running || (left == 0 && !sched_branch_rows(ss, 0)))
				continue;
			bool prefill =
			    left > 1 || (ss->n_marks && ss->marks[ss->mark_head].step == 0);
			if (prefill != (pass == 1))
				continue;
			if (first && !sched_same_exit(first, ss))
				continue;
			uint32_t room = budget - n;
			uint32_t k = left < room ? left : room;
			while (k > 0 && k + sched_branch_rows(ss, k) > room)
				k--;
			uint32_t kb = sched_branch_rows(ss, k);
			if (k == 0 && kb > room)
				kb = room; /* catching up only */
			if (k == 0 && kb == 0) {
				/* a main row and its branch row do not fit a budget of 1:
				 * an empty pass takes them anyway */
				if (n > 0 || left == 0 ||
				    1 + sched_branch_rows(ss, 1) > s->max_rows)
					continue;
				k = 1;
				kb = sched_branch_rows(ss, 1);
			}
			if (!first) {
				first = ss;
				s->pass_exit = ss->tech.ee ? ss : NULL;
			}
			s->grp_sess[n_grp] = ss;
			s->grp_rows[n_grp] = k;
			s->grp_brows[n_grp++] = kb;
			n += k + kb;
		}
	}
	return n_grp;
}

/* A stage cannot preempt (it keeps no input rows to recompute from): it
 * fails the session instead, and the broker replays it from stage 0. */
static void sched_fail_stage(sched_t *s, struct sched_session *v, int rc, const char *why)
{
	LOG_INFO("session %llu failed on layers [%u, %u): %s", (unsigned long long)v->id,
	         s->info.first, s->info.last, why);
	/* rc is ITT_E_FULL (OVERLOADED: another worker may have room) or a
	 * failed allocation (INTERNAL) */
	if (rc == ITT_E_FULL)
		sched_error(s, v->id, wire_code(rc),
		            "kv cache full on layers [%u, %u) (%u blocks): a stage does not "
		            "preempt; replay the session",
		            s->info.first, s->info.last, s->e->kv.n_blocks);
	else
		sched_error(s, v->id, wire_code(rc), "kv cache: %s", why);
	sched_drop(s, v->id);
}

/* Gives every group the blocks for its rows (main and branch), highest
 * priority first, preempting the lowest-priority running sessions when the
 * cache is short (a stage fails them instead); groups whose session lost
 * its blocks get 0 rows. */
static void sched_reserve(sched_t *s, uint32_t n_grp)
{
	struct kv_cache *kv = &s->e->kv;
	/* insertion sort by (priority desc, admission asc); n_grp is small */
	for (uint32_t g = 1; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		uint32_t k = s->grp_rows[g], kb = s->grp_brows[g], h = g;
		for (; h > 0 && sched_before(ss, s->grp_sess[h - 1]); h--) {
			s->grp_sess[h] = s->grp_sess[h - 1];
			s->grp_rows[h] = s->grp_rows[h - 1];
			s->grp_brows[h] = s->grp_brows[h - 1];
		}
		s->grp_sess[h] = ss;
		s->grp_rows[h] = k;
		s->grp_brows[h] = kb;
	}
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		struct itt_err err = {0};
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		int rc;
		for (;;) {
			rc = kv_seq_prepare(kv, &ss->seq, ss->n_done, ss->n_done + s->grp_rows[g],
			                    &err);
			if (rc >= 0 && s->grp_brows[g])
				rc = kv_seq_prepare(kv, &ss->bseq, ss->bn_done,
				                    ss->bn_done + s->grp_brows[g], &err);
			if (rc >= 0)
				break;
			/* Out of blocks: preempt; out of memory: retry ss later. */
			struct sched_session *v = rc == ITT_E_FULL ? sched_victim(s) : ss;
			bool self = v == ss;
			if (rc != ITT_E_FULL)
				LOG_ERROR("session %llu: %s", (unsigned long long)ss->id, err.msg);
			for (uint32_t h = g; h < n_grp; h++)
				if (s->grp_sess[h] == v)
					s->grp_rows[h] = s->grp_brows[h] = 0;
			if (s->stage)
				sched_fail_stage(s, v, rc, err.msg); /* v is freed */
			else
				sched_preempt(s, v, ss);
			if (self)
				break;
		}
	}
}

/* Enters the session's newly computed full prompt blocks into the index. */
static void sched_register(sched_t *s, struct sched_session *ss)
{
	uint32_t upto = ss->n_done < ss->n_prompt ? ss->n_done : ss->n_prompt;
	if (!s->cfg.prefix_cache || upto / s->block <= ss->n_reg)
		return;
	kv_prefix_insert(&s->e->kv, &ss->seq, ss->hist, upto);
	ss->n_reg = upto / s->block;
}

/* Takes the oldest owed step off a session's ring: its result is made now. */
static struct sched_mark sched_mark_pop(struct sched_session *ss)
{
	struct sched_mark mk = ss->marks[ss->mark_head];
	ss->mark_head = (ss->mark_head + 1) % SCHED_MAX_INFLIGHT;
	ss->n_marks--;
	return mk;
}

/* Appends a session's RESULT to the step's list at *tail, noting when (the
 * gather window); returns the new tail. */
static struct sched_out **sched_emit(struct sched_session *ss, struct sched_out *r,
                                     struct sched_out **tail)
{
	ss->last_out_us = clock_mono_us();
	*tail = r;
	return &r->next;
}

/* A new RESULT of step mk with its prompt tokens on step 0. */
static struct sched_out *sched_result_new(const struct sched_session *ss,
                                          const struct sched_mark *mk)
{
	struct sched_out *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->kind = SCHED_OUT_RESULT;
	r->session_id = ss->id;
	r->step = mk->step;
	r->n_pos = mk->end;
	if (mk->step == 0 && ss->tokenized &&
	    (r->prompt_tokens = malloc((size_t)ss->n_prompt * sizeof(int32_t)))) {
		memcpy(r->prompt_tokens, ss->hist, (size_t)ss->n_prompt * sizeof(int32_t));
		r->n_prompt_tokens = ss->n_prompt;
	}
	if (mk->step == 0) {
		r->n_stop_tokens = ss->n_stop_tokens;
		memcpy(r->stop_tokens, ss->stop_tokens, sizeof r->stop_tokens);
	}
	return r;
}

static void sched_piece(const sched_t *s, int32_t prev, int32_t tok, char *buf, size_t *len)
{
	*len = 0;
	if (s->e->tok) {
		int pl = tokenizer_decode_piece(s->e->tok, prev, tok, buf, SCHED_MAX_PIECE);
		*len = pl > 0 ? (size_t)pl : 0;
	}
}

/* A session whose step needs "exit" drafts after this pass (the shallow
 * passes reuse the logits buffer, so they run after every result). */
struct sched_exit_job {
	struct sched_session *ss;
	struct sched_out *r;
	uint32_t k;
};

/* The last stage, a buffered session (techniques): the head mark's rows
 * are all in lg (and blg): guidance combines them, the sampler draws (a
 * speculative step verifies its drafts), the history and the caches keep
 * only the emitted tokens, and the next drafts are proposed. */
static struct sched_out *sched_finish(sched_t *s, struct sched_session *ss,
                                      struct sched_exit_job *job)
{
	const uint32_t V = s->info.vocab;
	struct sched_mark mk = sched_mark_pop(ss);
	const uint32_t nl = mk.n_logits, k = nl - 1, p0 = mk.end - nl;
	int32_t out[SPEC_MAX_DRAFT + 1], draft[SPEC_MAX_DRAFT];
	uint32_t c;

	job->ss = NULL;
	if (ss->g_kind)
		for (uint32_t i = 0; i < nl; i++)
			guidance_combine(ss->lg + (size_t)i * V, ss->blg + (size_t)i * V, V,
			                 ss->tech.g_scale, GUIDANCE_DEFAULT_CUT,
			                 ss->lg + (size_t)i * V);
	if (ss->tech.spec) {
		/* verification writes the emitted tokens over the drafts, one past */
		memcpy(draft, ss->hist + p0 + 1, (size_t)k * sizeof *draft);
		if (sched_hist_reserve(s, ss, mk.end + 1) < 0) {
			sched_error(s, ss->id, ITT__CODE__INTERNAL,
			            "out of memory for the history");
			return NULL;
		}
		c = spec_verify(ss->smp, ss->lg, V, draft, k, ss->hist, p0 + 1, out);
		ss->spec_proposed += k;
		ss->spec_accepted += c - 1;
		ss->spec_steps++;
		s->spec_proposed += k;
		s->spec_accepted += c - 1;
		spec_ctl_update(&ss->ctl, k, c - 1);
	} else {
		out[0] = sampler_sample(ss->smp, ss->lg, ss->hist, mk.end, mk.end);
		c = 1;
	}
	struct sched_out *r = sched_result_new(ss, &mk);
	if (!r) {
		sched_error(s, ss->id, ITT__CODE__INTERNAL, "out of memory for a RESULT");
		return NULL;
	}
	const uint32_t npos = p0 + c; /* t and the accepted drafts */
	r->has_token = true;
	r->token = out[c - 1];
	r->n_pos = npos;
	for (uint32_t i = 0; i < c; i++) {
		int32_t prev = i ? out[i - 1] : ss->hist[p0];
		sched_piece(s, prev, out[i], r->pieces[i], &r->piece_lens[i]);
	}
	memcpy(r->piece, r->pieces[c - 1], r->piece_lens[c - 1]);
	r->piece_len = r->piece_lens[c - 1];
	if (ss->tech.ee) {
		r->has_exit_layer = true;
		r->exit_layer = ss->lg_exit[c - 1];
		for (uint32_t i = 0; i < c; i++)
			if (ss->lg_exit[i] < s->info.n_layers)
				ss->ee_count[ss->lg_exit[i]]++;
	}
	if (!ss->tech.spec)
		return r;
	r->n_tokens = c;
	memcpy(r->tokens, out, c * sizeof *out);
	/* the rejected drafts leave the history and the caches now (the other
	 * stages drop them when the next STEP's pos says so) */
	if (ss->n_marks)
		return r; /* later steps were appended already (not a broker's way) */
	if (npos < ss->n_hist)
		sched_truncate(s, ss, npos);
	/* next drafts: the next step feeds [last, drafts] at npos.. (< ctx) */
	int64_t room = (int64_t)s->info.ctx_len - npos - 1 - (ss->off > 0 ? ss->off : 0);
	uint32_t kd = room <= 0 ? 0 : ss->ctl.k < room ? ss->ctl.k : (uint32_t)room;
	if (!kd)
		return r;
	if (ss->tech.spec_exit) {
		*job = (struct sched_exit_job){ss, r, kd};
		return r;
	}
	/* hist[npos] is the last emitted token (verification wrote it) */
	r->n_draft = spec_ngram_draft(ss->hist, npos + 1, ss->tech.ngram_min, ss->tech.ngram_max,
	                              kd, r->draft);
	return r;
}

static uint32_t sched_argmax(const float *l, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (l[i] > l[best])
			best = i;
	return best;
}

/* "exit" drafts: k passes of one row through the first exit_layers layers
 * and the output head, each feeding the previous arg-max; they write those
 * layers' K/V at positions the verification pass rewrites, so the sequence
 * is cut back afterwards. */
static void sched_exit_drafts(sched_t *s, const struct sched_exit_job *j)
{
	struct sched_session *ss = j->ss;
	struct kv_cache *kv = &s->e->kv;
	struct itt_err err = {0};
	const uint32_t P = ss->seq.n_pos;
	if (P != ss->n_done || P != ss->n_hist)
		return;
	if (kv_seq_prepare(kv, &ss->seq, P, P + j->k, &err) < 0) {
		kv_seq_truncate(kv, &ss->seq, P);
		return; /* no blocks to spare: no drafts this time */
	}
	int32_t x = j->r->token;
	struct kv_seq *seq = &ss->seq;
	for (uint32_t i = 0; i < j->k; i++) {
		uint32_t pos = P + i;
		struct forward_batch b = {.n_rows = 1,
		                          .tokens = &x,
		                          .pos = &pos,
		                          .seqs = &seq,
		                          .stop_layer = ss->tech.spec_exit_layers};
		if (forward_run(&s->e->fwd, &b, s->e->logits, &err) < 0) {
			LOG_WARN("session %llu: exit draft pass: %s", (unsigned long long)ss->id,
			         err.msg);
			break;
		}
		x = (int32_t)sched_argmax(s->e->logits, s->info.vocab);
		j->r->draft[j->r->n_draft++] = x;
	}
	kv_seq_truncate(kv, &ss->seq, P);
}

/* The last stage: takes the logits rows in row order; a plain session
 * samples at once, a buffered one keeps its rows until its step is
 * complete.  Results go onto *tail. */
static struct sched_out **sched_sample(sched_t *s, uint32_t n, struct sched_out **tail)
{
	const uint32_t V = s->info.vocab;
	struct sched_exit_job jobs[64];
	uint32_t n_jobs = 0;
	for (uint32_t row = 0, o = 0; row < n; row++) {
		if (!s->row_want[row])
			continue;
		const float *l = s->e->logits + (size_t)(o++) * V;
		struct sched_session *ss = s->row_sess[row];
		if (!s->grp_rows[s->row_grp[row]] && !s->grp_brows[s->row_grp[row]])
			continue; /* dropped meanwhile */
		struct sched_mark mk = ss->marks[ss->mark_head];
		bool br = s->row_br[row];
		uint32_t p = br ? (uint32_t)((int64_t)s->row_pos[row] - ss->off) : s->row_pos[row];
		if (!ss->buffered) {
			sched_mark_pop(ss); /* mk */
			int32_t tok = sampler_sample(ss->smp, l, ss->hist, mk.end, mk.end);
			struct sched_out *r = sched_result_new(ss, &mk);
			if (!r) {
				sched_error(s, ss->id, ITT__CODE__INTERNAL,
				            "out of memory for a RESULT");
				continue;
			}
			r->has_token = true;
			r->token = tok;
			sched_piece(s, ss->hist[mk.end - 1], tok, r->piece, &r->piece_len);
			tail = sched_emit(ss, r, tail);
			continue;
		}
		uint32_t idx = p + mk.n_logits - mk.end;
		memcpy((br ? ss->blg : ss->lg) + (size_t)idx * V, l, (size_t)V * sizeof *l);
		if (!br && s->pass_exit)
			ss->lg_exit[idx] = s->row_exit[row];
		if (p + 1 != mk.end || br != (ss->g_kind != 0))
			continue;
		struct sched_exit_job job;
		struct sched_out *r = sched_finish(s, ss, &job);
		if (!r)
			continue;
		if (job.ss && n_jobs < sizeof jobs / sizeof jobs[0])
			jobs[n_jobs++] = job;
		tail = sched_emit(ss, r, tail);
	}
	for (uint32_t i = 0; i < n_jobs; i++)
		sched_exit_drafts(s, &jobs[i]);
	return tail;
}

/* A RESULT of a non-last stage: the output rows of step mk, which are the
 * first rows the session collected, in its reply_dtype (with a branch: the
 * main rows, then the branch rows). */
static struct sched_out *sched_rows_result(sched_t *s, struct sched_session *ss,
                                           struct sched_mark mk)
{
	const uint32_t dim = s->info.dim, rows = mk.end - mk.start;
	const uint32_t mult = ss->g_kind ? 2 : 1;
	const size_t n = (size_t)rows * dim;
	struct sched_out *r = sched_result_new(ss, &mk);
	size_t es = ss->reply_dtype == ITT__DTYPE__F16 ? 2 : 4;
	if (!r || !(r->tensor = malloc(n ? n * es * mult : 1))) {
		sched_out_free_list(r);
		return NULL;
	}
	for (uint32_t b = 0; b < mult; b++) {
		const float *src = b ? ss->boutr : ss->outr;
		uint8_t *dst = (uint8_t *)r->tensor + (size_t)b * n * es;
		if (es == 2)
			kv_fp16_from_fp32((uint16_t *)(void *)dst, src, n);
		else
			memcpy(dst, src, n * es);
	}
	r->tensor_len = n * es * mult;
	r->tensor_dtype = ss->reply_dtype;
	r->tensor_rows = rows * mult;
	r->tensor_cols = dim;
	return r;
}

/* A non-last stage: keeps every row's output (row r of `rows`) with its
 * session and answers every step now complete onto *tail.  n_done and
 * bn_done already count the rows. */
static struct sched_out **sched_collect(sched_t *s, uint32_t n, uint32_t n_grp, const float *rows,
                                        struct sched_out **tail)
{
	const size_t dim = s->info.dim;
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		uint32_t need = ss->n_done - ss->out_start;
		uint32_t bneed =
		    ss->g_kind ? (uint32_t)((int64_t)ss->bn_done - ss->off) - ss->out_start : 0;
		if (sched_rows_fit(&ss->outr, &ss->out_cap, need, (uint32_t)dim) < 0 ||
		    (ss->g_kind &&
		     sched_rows_fit(&ss->boutr, &ss->bout_cap, bneed, (uint32_t)dim) < 0)) {
			sched_error(s, ss->id, ITT__CODE__INTERNAL,
			            "out of memory for %u output rows", need);
			s->grp_rows[g] = s->grp_brows[g] = 0;
			sched_drop(s, ss->id);
		}
	}
	for (uint32_t r = 0; r < n; r++) {
		uint32_t g = s->row_grp[r];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		struct sched_session *ss = s->row_sess[r];
		bool br = s->row_br[r];
		uint32_t p = br ? (uint32_t)((int64_t)s->row_pos[r] - ss->off) : s->row_pos[r];
		float *dst = (br ? ss->boutr : ss->outr) + (size_t)(p - ss->out_start) * dim;
		memcpy(dst, rows + (size_t)r * dim, dim * sizeof *dst);
	}
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		while (ss->n_marks && ss->marks[ss->mark_head].end <= ss->n_done &&
		       (!ss->g_kind ||
		        (int64_t)ss->marks[ss->mark_head].end + ss->off <= ss->bn_done)) {
			struct sched_mark mk = sched_mark_pop(ss);
			struct sched_out *r = sched_rows_result(s, ss, mk);
			uint32_t left = ss->n_done - mk.end, taken = mk.end - mk.start;
			memmove(ss->outr, ss->outr + (size_t)taken * dim,
			        (size_t)left * dim * sizeof *ss->outr);
			if (ss->g_kind) {
				uint32_t bleft =
				    (uint32_t)((int64_t)ss->bn_done - ss->off) - mk.end;
				memmove(ss->boutr, ss->boutr + (size_t)taken * dim,
				        (size_t)bleft * dim * sizeof *ss->boutr);
			}
			ss->out_start = mk.end;
			if (!r) {
				sched_error(s, ss->id, ITT__CODE__INTERNAL,
				            "out of memory for a RESULT");
				continue;
			}
			tail = sched_emit(ss, r, tail);
		}
	}
	return tail;
}

static void sched_sleep_ms(uint32_t ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* One step: admission, a batch over the running sessions with pending
 * tokens, then results. */
void sched_run_step(sched_t *s)
{
	const bool last = s->info.last == s->info.n_layers;
	uint32_t n = 0;
	bool any_pert = false;
	struct itt_err err = {0};

	if (!s->e)
		return;
	sched_admit(s, true);
	uint32_t n_grp = sched_select(s);
	sched_reserve(s, n_grp);
	for (uint32_t g = 0; g < n_grp; g++) {
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue; /* preempted, or failed and freed */
		any_pert |= s->grp_brows[g] && s->grp_sess[g]->g_kind == 1;
		sched_take_rows(s, g, &n);
	}
	if (n == 0)
		return;
	uint64_t t0 = clock_mono_us();
	struct forward_exit ex = {0};
	if (s->pass_exit && last) {
		ex.layers = s->pass_exit->tech.ee_layers;
		ex.n_layers = s->pass_exit->tech.n_ee;
		ex.threshold = s->pass_exit->tech.ee_threshold;
		ex.exited_at = s->row_exit;
	}
	struct forward_batch b = {.n_rows = n,
	                          .tokens = s->row_tok,
	                          .hidden = s->info.first > 0 ? s->row_hid : NULL,
	                          .pos = s->row_pos,
	                          .seqs = s->row_seq,
	                          .want_logits = s->row_want,
	                          .perturb = any_pert ? s->row_pert : NULL,
	                          .exit = ex.layers ? &ex : NULL};
	int rc = forward_run(&s->e->fwd, &b, s->e->logits, &err);
	if (rc < 0) {
		LOG_ERROR("forward_run of %u rows failed: %s", n, err.msg);
		for (uint32_t g = 0; g < n_grp; g++) {
			if (!s->grp_rows[g] && !s->grp_brows[g])
				continue;
			sched_error(s, s->grp_sess[g]->id, ITT__CODE__INTERNAL, "forward pass: %s",
			            err.msg);
			sched_drop(s, s->grp_sess[g]->id);
		}
		return;
	}
	struct sched_out *outs = NULL, **tail = &outs;
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		ss->n_done += s->grp_rows[g];
		ss->bn_done += s->grp_brows[g];
		sched_register(s, ss);
	}
	if (!last)
		tail = sched_collect(s, n, n_grp, s->e->logits, tail);
	if (s->cfg.slow_ms)
		sched_sleep_ms(s->cfg.slow_ms);
	if (last)
		tail = sched_sample(s, n, tail);
	double ms = (double)(clock_mono_us() - t0) / 1e3;
	pthread_mutex_lock(&s->out_mu);
	s->stats.steps++;
	s->stats.rows += n;
	s->stats.step_ms += ms;
	pthread_mutex_unlock(&s->out_mu);
	uint32_t n_res = 0;
	while (outs) {
		struct sched_out *r = outs;
		outs = r->next;
		r->next = NULL;
		r->step_ms = (float)ms;
		sched_push_out(s, r);
		n_res++;
	}
	LOG_DEBUG("step: %u rows of %u sessions, %u results, %.2f ms", n, n_grp, n_res, ms);
}
