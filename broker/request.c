/* request: the life of one generation request inside the broker.
 *
 *   SUBMIT -> queued (model queue) -> running on a route (OPEN, then one
 *   STEP per RESULT, each driven through the route's stages) -> ended (DONE
 *   or ERROR) -> kept keep_ended_ms for idempotent re-SUBMIT -> freed.
 *
 * Stages (PROTOCOL.md, "Pipeline stages"): a step goes to stage 0 with its
 * tokens; a non-last stage's RESULT carries the activations, which go on
 * to the next stage (OPEN the first time, then STEP with the same number),
 * with the same tokens; the last stage's RESULT carries the token.
 *
 * Contract (PROTOCOL.md, "Client session" and "Broker"): chunks carry seq
 * 0, 1, ... without gaps, one per RESULT, with that step's token and the
 * text that can no longer be the start of a stop string; EOS (or a
 * conversation's end-of-turn token, reported by stage 0) is never sent;
 * a stop string and what follows it are never sent (the token that completes
 * it is, in the last chunk, as the reference CLI counts it); held text is
 * flushed in a last chunk without tokens before DONE.  End conditions, in
 * the reference's order: eos, length (max_tokens), stop, context (the
 * sequence fills the model's context).
 *
 * Replay: the broker keeps the prompt as tokenized and every generated
 * token.  When a worker of its route dies, leaves, moves or fails the
 * session, the other stages get CLOSE and the
 * request goes back to the head of its model's queue and is re-opened with
 * OPEN {tokens = prompt + generated, n_prompt}; the worker's next token is
 * the one the lost worker would have sampled (sampling is a function of
 * seed, position and history), the stream goes on at the next seq.
 *
 * Invariants: a request is running iff r->n_stages > 0; at most one step
 * of a session is in flight, on stage r->at (r->awaiting); RESULTs are
 * taken only from that stage's worker and only for the expected step;
 * exactly one DONE or ERROR per request. */
#include "broker.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sampling.h"

bool req_queue_less(const void *a, const void *b)
{
	const struct request *x = a, *y = b;
	if (x->replay_first != y->replay_first)
		return x->replay_first;
	if (x->priority != y->priority)
		return x->priority > y->priority;
	return x->arrival < y->arrival;
}

bool req_deadline_less(const void *a, const void *b)
{
	const struct request *x = a, *y = b;
	if (x->deadline_ms != y->deadline_ms)
		return x->deadline_ms < y->deadline_ms;
	return x->arrival < y->arrival;
}

/* splitmix64: seeds for requests that bring none. */
static uint64_t req_random(struct broker *b)
{
	uint64_t z = (b->rng += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

struct request *req_new(struct broker *b, Itt__GenerateRequest *g, struct model *m,
                        struct client *c)
{
	struct request *r = calloc(1, sizeof *r);
	size_t cl = strlen(g->client_id), rl = strlen(g->request_id);
	if (!r || cl + rl + 2 > sizeof r->key)
		goto fail_alloc;
	memcpy(r->key, g->client_id, cl);
	memcpy(r->key + cl + 1, g->request_id, rl);
	r->key_len = cl + 1 + rl;
	r->client_id = r->key;
	r->request_id = r->key + cl + 1;
	r->session_id = ++b->next_session;
	r->req = g;
	r->model = m;
	if (g->sampling)
		r->sampling = *g->sampling;
	else
		itt__sampling_params__init(&r->sampling);
	if (!r->sampling.has_seed) {
		r->sampling.has_seed = true;
		r->sampling.seed = req_random(b);
	}
	r->seed = r->sampling.seed;
	if (g->n_prompt_tokens) {
		r->prompt = malloc(g->n_prompt_tokens * sizeof *r->prompt);
		if (!r->prompt)
			goto fail_alloc;
		memcpy(r->prompt, g->prompt_tokens, g->n_prompt_tokens * sizeof *r->prompt);
		r->n_prompt = (uint32_t)g->n_prompt_tokens;
		r->have_prompt = true;
	}
	r->max_tokens = g->has_max_tokens ? g->max_tokens : b->lim.max_tokens_default;
	r->priority = g->priority;
	r->arrival = ++b->next_arrival;
	r->t_recv_us = b->now_us;
	r->deadline_ms =
	    b->now_ms +
	    (g->has_deadline_ms && g->deadline_ms ? g->deadline_ms : b->lim.deadline_default_ms);
	r->queue_idx = r->deadline_idx = HEAP_NONE;
	link_init(&r->client_link);
	link_init(&r->ended_link);
	r->state = REQ_QUEUED;
	if (map_put(&b->requests, r->key, r->key_len, r) < 0)
		goto fail_alloc;
	if (map_put(&b->sessions, &r->session_id, sizeof r->session_id, r) < 0)
		goto fail_requests;
	if (heap_push(&b->deadlines, r) < 0)
		goto fail_sessions;
	if (heap_push(&m->queue, r) < 0)
		goto fail_deadlines;
	front_attach(b, c, r);
	b->n_requests++;
	return r;
fail_deadlines:
	heap_remove(&b->deadlines, r);
fail_sessions:
	map_del(&b->sessions, &r->session_id, sizeof r->session_id);
fail_requests:
	map_del(&b->requests, r->key, r->key_len);
fail_alloc:
	if (r)
		r->req = NULL; /* g stays the caller's */
	req_destroy(r);
	return NULL;
}

void req_destroy(struct request *r)
{
	if (!r)
		return;
	if (r->req)
		itt__generate_request__free_unpacked(r->req, NULL);
	free(r->prompt);
	free(r->gen);
	free(r->text);
	free(r->chunk_tok_end);
	free(r->chunk_text_end);
	free(r);
}

void req_free(struct broker *b, struct request *r)
{
	BROKER_ASSERT(r->state == REQ_ENDED && link_linked(&r->ended_link));
	map_del(&b->requests, r->key, r->key_len);
	if (link_linked(&r->ended_link)) {
		link_remove(&r->ended_link);
		b->n_ended--;
	}
	req_destroy(r);
}

/* Takes r off its route (no CLOSE: see req_close_stages). */
static void req_detach(struct request *r)
{
	if (!r->n_stages)
		return;
	if (r->awaiting)
		r->stages[r->at].w->in_flight--;
	for (uint32_t k = 0; k < r->n_stages; k++) {
		link_remove(&r->stages[k].link);
		r->stages[k].w->n_sessions--;
	}
	r->awaiting = false;
	r->n_stages = 0;
	r->model->n_running--;
}

/* CLOSE to every stage that was opened (a lost worker gets nothing). */
static void req_close_stages(struct broker *b, struct request *r, int code)
{
	for (uint32_t k = 0; k < r->n_stages; k++)
		if (r->stages[k].opened)
			back_close_session(b, r->stages[k].w, r->session_id, code);
}

/* The tokens of the session so far (prompt + generated), malloc'ed; NULL
 * when out of memory. */
static int32_t *req_history(const struct request *r, size_t *n)
{
	*n = (size_t)r->n_prompt + r->n_gen;
	int32_t *t = malloc((*n ? *n : 1) * sizeof *t);
	if (!t)
		return NULL;
	if (r->n_prompt)
		memcpy(t, r->prompt, r->n_prompt * sizeof *t);
	if (r->n_gen)
		memcpy(t + r->n_prompt, r->gen, r->n_gen * sizeof *t);
	return t;
}

/* Sends OPEN to stage k: stage 0 with the history (or the text prompt),
 * a later stage with the history and the previous stage's activations. */
static int req_send_open(struct broker *b, struct request *r, uint32_t k,
                         const Itt__TensorInfo *hidden, const void *tensor, size_t tensor_len)
{
	Itt__SessionOpen o = ITT__SESSION_OPEN__INIT;
	int32_t *toks = NULL;
	o.has_session_id = true;
	o.session_id = r->session_id;
	o.sampling = &r->sampling;
	o.has_priority = r->req->has_priority;
	o.priority = r->req->priority;
	if (r->n_stages > 1) {
		o.has_reply_dtype = true;
		o.reply_dtype = b->cfg.act_f16 ? ITT__DTYPE__F16 : ITT__DTYPE__F32;
	}
	if (r->have_prompt) {
		size_t n;
		if (!(toks = req_history(r, &n)))
			return -1;
		o.tokens = toks;
		o.n_tokens = n;
		o.has_n_prompt = true;
		o.n_prompt = r->n_prompt;
	} else if (r->req->n_messages) {
		/* a conversation: stage 0 renders it with the model's template */
		o.messages = r->req->messages;
		o.n_messages = r->req->n_messages;
		o.chat_template = r->req->chat_template;
	} else {
		o.prompt = r->req->prompt ? r->req->prompt : (char *)"";
	}
	o.hidden = (Itt__TensorInfo *)hidden;
	o.guidance = r->req->guidance;
	o.speculative = r->req->speculative;
	o.early_exit = r->req->early_exit;
	struct worker *w = r->stages[k].w;
	r->stages[k].opened = true;
	r->at = k;
	r->awaiting = true;
	w->in_flight++;
	LOG_DEBUG("session %llu (request %s of %s) opened on worker %s (stage %u of %u) with %zu "
	          "tokens%s",
	          (unsigned long long)r->session_id, r->request_id, r->client_id, w->id, k,
	          r->n_stages, o.n_tokens, r->replays ? " (replay)" : "");
	back_send_tensor(b, w, WIRE_OPEN, &o.base, tensor, tensor_len);
	free(toks);
	return 0;
}

static void req_open(struct broker *b, struct request *r, struct worker *const *route, uint32_t n)
{
	r->n_stages = n;
	for (uint32_t k = 0; k < n; k++) {
		struct stage *st = &r->stages[k];
		st->w = route[k];
		st->r = r;
		st->opened = false;
		link_init(&st->link);
		link_push_back(&route[k]->sessions, &st->link);
		route[k]->n_sessions++;
	}
	r->model->n_running++;
	r->state = REQ_RUNNING;
	r->step = 0;
	r->n_draft = 0;
	r->branch_rows = r->req->guidance && r->req->guidance->scale > 0 &&
	                 r->req->guidance->n_heads > 0;
	if (!r->t_open_us)
		r->t_open_us = b->now_us;
	if (req_send_open(b, r, 0, NULL, NULL, 0) < 0)
		req_end(b, r, ITT__CODE__INTERNAL, "out of memory opening the session");
}

void req_dispatch(struct broker *b, struct model *m)
{
	struct worker *route[BROKER_MAX_STAGES];
	while (m->queue.n) {
		struct request *r = heap_top(&m->queue);
		uint32_t n = route_pick(b, m, r->avoid_worker, route);
		if (!n)
			return;
		heap_pop(&m->queue);
		r->replay_first = false;
		req_open(b, r, route, n);
	}
}

static void req_fill_chunk(const struct request *r, uint32_t i, Itt__StreamChunk *c)
{
	uint32_t t0 = i ? r->chunk_tok_end[i - 1] : 0;
	size_t x0 = i ? r->chunk_text_end[i - 1] : 0;
	itt__stream_chunk__init(c);
	c->request_id = (char *)r->request_id;
	c->has_seq = true;
	c->seq = i;
	c->n_tokens = r->chunk_tok_end[i] - t0;
	c->tokens = c->n_tokens ? r->gen + t0 : NULL;
	c->has_text = true;
	c->text.len = r->chunk_text_end[i] - x0;
	c->text.data = c->text.len ? (uint8_t *)r->text + x0 : NULL;
}

/* Records and sends the next chunk: the tokens generated since the last
 * chunk and text[text_sent, text_to).  -1 when out of memory. */
static int req_emit(struct broker *b, struct request *r, size_t text_to)
{
	if (r->n_chunks == r->chunk_cap) {
		uint32_t cap = r->chunk_cap ? 2 * r->chunk_cap : 16;
		uint32_t *te = realloc(r->chunk_tok_end, cap * sizeof *te);
		if (!te)
			return -1;
		r->chunk_tok_end = te;
		size_t *xe = realloc(r->chunk_text_end, cap * sizeof *xe);
		if (!xe)
			return -1;
		r->chunk_text_end = xe;
		r->chunk_cap = cap;
	}
	r->chunk_tok_end[r->n_chunks] = r->n_gen;
	r->chunk_text_end[r->n_chunks] = text_to;
	r->text_sent = text_to;
	if (!r->t_first_us)
		r->t_first_us = b->now_us;
	Itt__StreamChunk c;
	req_fill_chunk(r, r->n_chunks++, &c);
	front_send(b, r->client, WIRE_CHUNK, &c.base);
	return 0;
}

static void req_fill_done(const struct request *r, Itt__StreamDone *d, Itt__Timings *t)
{
	itt__stream_done__init(d);
	itt__timings__init(t);
	d->request_id = (char *)r->request_id;
	d->has_n_chunks = d->has_n_tokens = d->has_seed = d->has_replays = true;
	d->n_chunks = r->n_chunks;
	d->stop_reason = (char *)r->end_reason;
	d->prompt_tokens = r->prompt;
	d->n_prompt_tokens = r->n_prompt;
	d->n_tokens = r->n_gen;
	d->seed = r->seed;
	d->replays = r->replays;
	t->has_queue_ms = r->t_open_us != 0;
	if (r->t_open_us)
		t->queue_ms = (double)(r->t_open_us - r->t_recv_us) / 1e3;
	t->has_first_token_ms = r->t_first_us != 0;
	if (r->t_first_us)
		t->first_token_ms = (double)(r->t_first_us - r->t_recv_us) / 1e3;
	t->has_total_ms = true;
	t->total_ms = (double)(r->t_end_us - r->t_recv_us) / 1e3;
	d->timings = t;
}

void req_end(struct broker *b, struct request *r, int code, const char *why)
{
	if (r->state == REQ_ENDED)
		return;
	struct model *m = r->model;
	bool was_running = r->state == REQ_RUNNING;
	if (was_running) {
		req_close_stages(b, r, code ? code : ITT__CODE__OK);
		req_detach(r);
	}
	heap_remove(&m->queue, r);
	heap_remove(&b->deadlines, r);
	map_del(&b->sessions, &r->session_id, sizeof r->session_id);
	r->t_end_us = b->now_us;
	r->end_code = code;
	snprintf(r->end_reason, sizeof r->end_reason, "%s", why);
	if (code == 0) {
		if (r->text_len > r->text_sent)
			(void)req_emit(b, r, r->text_len);
		Itt__StreamDone d;
		Itt__Timings t;
		req_fill_done(r, &d, &t);
		front_send(b, r->client, WIRE_DONE, &d.base);
		b->n_completed++;
		LOG_DEBUG("request %s of %s done: %s, %u tokens, %u replays", r->request_id,
		          r->client_id, why, r->n_gen, r->replays);
	} else {
		if (r->client && !r->client->gone)
			front_send_error(b, r->client->ident, r->client->ident_len, r->request_id,
			                 code, why);
		b->n_failed++;
		LOG_INFO("request %s of %s failed: %s: %s", r->request_id, r->client_id,
		         wire_code_name(code), why);
	}
	front_detach(b, r);
	itt__generate_request__free_unpacked(r->req, NULL);
	r->req = NULL;
	r->sampling.n_logit_bias = 0;
	r->sampling.logit_bias = NULL;
	r->state = REQ_ENDED;
	link_push_back(&b->ended, &r->ended_link);
	b->n_ended++;
	while (b->n_ended > (uint32_t)b->cfg.keep_ended)
		req_free(b, LINK_ENTRY(b->ended.next, struct request, ended_link));
	if (was_running)
		req_dispatch(b, m);
}

void req_requeue(struct broker *b, struct request *r, struct worker *culprit, bool count,
                 const char *why)
{
	char reason[320];
	struct model *m = r->model;
	if (culprit)
		r->avoid_worker = culprit->serial;
	req_close_stages(b, r, ITT__CODE__UNAVAILABLE);
	req_detach(r);
	r->state = REQ_QUEUED;
	if (count) {
		b->n_replays++;
		r->replays++;
		if (r->replays > (uint32_t)b->cfg.max_replays) {
			snprintf(reason, sizeof reason, "session failed %u times; last: %s",
			         r->replays, why);
			req_end(b, r, ITT__CODE__UNAVAILABLE, reason);
			return;
		}
		if (!r->have_prompt && r->n_gen) {
			snprintf(reason, sizeof reason,
			         "cannot replay: the worker did not report the prompt tokens (%s)",
			         why);
			req_end(b, r, ITT__CODE__INTERNAL, reason);
			return;
		}
	}
	r->replay_first = true;
	if (heap_push(&m->queue, r) < 0) {
		req_end(b, r, ITT__CODE__INTERNAL, "out of memory requeueing the session");
		return;
	}
	LOG_INFO("session %llu (request %s of %s, %u tokens) back at the head of model %s's queue: "
	         "%s",
	         (unsigned long long)r->session_id, r->request_id, r->client_id, r->n_gen, m->name,
	         why);
	req_dispatch(b, m);
}

/* Checks a RESULT against the limits; 0, or INVALID_ARGUMENT with the
 * reason in *err.  A non-last stage's RESULT carries activations, not a
 * token. */
static int req_check_result(const struct request *r, const Itt__StepResult *res, bool last,
                            struct itt_err *err)
{
	const int bad = ITT__CODE__INVALID_ARGUMENT;
	const struct model *m = r->model;
	if (!last)
		goto common;
	if (!res->has_token)
		return itt_err_set(err, bad, "RESULT has no token");
	if (res->token < 0 || (uint32_t)res->token >= m->vocab)
		return itt_err_set(err, bad, "RESULT token %d is not in [0, %u)", res->token,
		                   m->vocab);
	if (res->piece.len > BROKER_MAX_PIECE)
		return itt_err_set(err, bad, "RESULT piece has %zu bytes; at most %d",
		                   res->piece.len, BROKER_MAX_PIECE);
	if (res->n_tokens) {
		if (res->n_tokens > 1 + (size_t)r->n_draft || res->n_pieces != res->n_tokens ||
		    res->tokens[res->n_tokens - 1] != res->token)
			return itt_err_set(err, bad,
			                   "RESULT has %zu tokens and %zu pieces for a step of %u "
			                   "drafts (token must be the last)",
			                   res->n_tokens, res->n_pieces, r->n_draft);
		for (size_t i = 0; i < res->n_tokens; i++)
			if (res->tokens[i] < 0 || (uint32_t)res->tokens[i] >= m->vocab ||
			    res->pieces[i].len > BROKER_MAX_PIECE)
				return itt_err_set(err, bad,
				                   "RESULT tokens[%zu] = %d or its piece is out of range",
				                   i, res->tokens[i]);
	}
	if (res->n_draft > sizeof r->draft / sizeof r->draft[0])
		return itt_err_set(err, bad, "RESULT has %zu drafts; at most %zu", res->n_draft,
		                   sizeof r->draft / sizeof r->draft[0]);
	for (size_t i = 0; i < res->n_draft; i++)
		if (res->draft[i] < 0 || (uint32_t)res->draft[i] >= m->vocab)
			return itt_err_set(err, bad, "RESULT draft[%zu] = %d is not a token id", i,
			                   res->draft[i]);
common:
	if (res->n_pos > m->ctx_len)
		return itt_err_set(err, bad, "RESULT n_pos %u exceeds the context %u", res->n_pos,
		                   m->ctx_len);
	if (res->n_prompt_tokens >= m->ctx_len)
		return itt_err_set(err, bad, "RESULT has %zu prompt tokens for a context of %u",
		                   res->n_prompt_tokens, m->ctx_len);
	for (size_t i = 0; i < res->n_prompt_tokens; i++)
		if (res->prompt_tokens[i] < 0 || (uint32_t)res->prompt_tokens[i] >= m->vocab)
			return itt_err_set(err, bad, "RESULT prompt_tokens[%zu] = %d is not a token id",
			                   i, res->prompt_tokens[i]);
	if (res->n_stop_tokens > BROKER_MAX_STOP_TOKENS)
		return itt_err_set(err, bad, "RESULT has %zu stop_tokens; at most %d",
		                   res->n_stop_tokens, BROKER_MAX_STOP_TOKENS);
	for (size_t i = 0; i < res->n_stop_tokens; i++)
		if (res->stop_tokens[i] < 0 || (uint32_t)res->stop_tokens[i] >= m->vocab)
			return itt_err_set(err, bad,
			                   "RESULT stop_tokens[%zu] = %d is not a token id", i,
			                   res->stop_tokens[i]);
	return 0;
}

static int req_append(struct request *r, int32_t tok, const uint8_t *piece, size_t len)
{
	if (r->n_gen == r->gen_cap) {
		uint32_t cap = r->gen_cap ? 2 * r->gen_cap : 64;
		int32_t *g = realloc(r->gen, cap * sizeof *g);
		if (!g)
			return -1;
		r->gen = g;
		r->gen_cap = cap;
	}
	if (r->text_len + len + 1 > r->text_cap) {
		size_t cap = 2 * r->text_cap + len + 256;
		char *t = realloc(r->text, cap);
		if (!t)
			return -1;
		r->text = t;
		r->text_cap = cap;
	}
	r->gen[r->n_gen++] = tok;
	if (len)
		memcpy(r->text + r->text_len, piece, len);
	r->text_len += len;
	return 0;
}

static void req_count_token(struct broker *b, struct worker *w)
{
	uint64_t no = b->now_ms / 500;
	if (no != w->tok_bucket_no) {
		for (uint64_t k = w->tok_bucket_no + 1; k <= no && k <= w->tok_bucket_no + 8; k++)
			w->tok_bucket[k % 8] = 0;
		w->tok_bucket_no = no;
	}
	w->tok_bucket[no % 8]++;
}

/* Takes one generated token: end conditions, history, stop strings, a
 * chunk.  True when the request ended (r may be gone). */
static bool req_take(struct broker *b, struct request *r, int32_t tok, const uint8_t *piece,
                     size_t len)
{
	const struct model *m = r->model;
	bool eot = false;
	for (uint32_t i = 0; i < r->n_stop_tokens; i++)
		eot |= tok == r->stop_tokens[i];
	for (uint32_t i = 0; i < m->n_eog; i++)
		eot |= tok == m->eog[i];
	if ((m->eos >= 0 && tok == m->eos) || eot) {
		req_end(b, r, 0, "eos");
		return true;
	}
	if ((int64_t)r->n_gen >= r->max_tokens) {
		req_end(b, r, 0, "length");
		return true;
	}
	if (req_append(r, tok, piece, len) < 0) {
		req_end(b, r, ITT__CODE__INTERNAL, "out of memory");
		return true;
	}
	size_t held = r->text_len - r->text_sent, safe;
	size_t hit = sampler_find_stop(r->text + r->text_sent, held,
	                               (const char *const *)r->req->stop, r->req->n_stop, &safe);
	if (hit < held) {
		r->text_len = r->text_sent + hit;
		if (req_emit(b, r, r->text_len) < 0)
			req_end(b, r, ITT__CODE__INTERNAL, "out of memory");
		else
			req_end(b, r, 0, "stop");
		return true;
	}
	if (req_emit(b, r, r->text_sent + safe) < 0) {
		req_end(b, r, ITT__CODE__INTERNAL, "out of memory");
		return true;
	}
	return false;
}

/* A STEP of the session's current step: the last token and the drafts,
 * from position pos (toks has room for 1 + 16). */
static void req_fill_step(const struct request *r, Itt__StepRequest *s, int32_t *toks)
{
	s->has_session_id = s->has_step = s->has_pos = true;
	s->session_id = r->session_id;
	s->step = r->step;
	toks[0] = r->gen[r->n_gen - 1];
	memcpy(toks + 1, r->draft, r->n_draft * sizeof *toks);
	s->tokens = toks;
	s->n_tokens = 1 + r->n_draft;
	s->pos = r->n_prompt + r->n_gen - 1;
}

/* Sends the step's rows on to stage k (OPEN the first time, else STEP). */
static void req_forward(struct broker *b, struct request *r, uint32_t k,
                        const Itt__TensorInfo *hidden, const void *tensor, size_t len)
{
	if (!r->stages[k].opened) {
		if (req_send_open(b, r, k, hidden, tensor, len) < 0)
			req_end(b, r, ITT__CODE__INTERNAL, "out of memory");
		return;
	}
	int32_t toks[1 + sizeof r->draft / sizeof r->draft[0]];
	Itt__StepRequest s = ITT__STEP_REQUEST__INIT;
	req_fill_step(r, &s, toks);
	s.hidden = (Itt__TensorInfo *)hidden;
	r->at = k;
	r->awaiting = true;
	r->stages[k].w->in_flight++;
	back_send_tensor(b, r->stages[k].w, WIRE_STEP, &s.base, tensor, len);
}

void req_on_result_msg(struct broker *b, struct worker *w, const Itt__StepResult *res,
                       const void *tensor, size_t tensor_len)
{
	struct request *r = map_get(&b->sessions, &res->session_id, sizeof res->session_id);
	struct itt_err err = {0};
	if (!r || !r->n_stages || r->stages[r->at].w != w) {
		/* a late answer from a previous owner, or a session that ended */
		LOG_DEBUG("worker %s: RESULT for session %llu it does not own; dropped", w->id,
		          (unsigned long long)res->session_id);
		back_close_session(b, w, res->session_id, ITT__CODE__NOT_FOUND);
		return;
	}
	if (!r->awaiting || res->step != r->step) {
		LOG_WARN("worker %s: RESULT step %u for session %llu, expected step %u; dropped",
		         w->id, res->step, (unsigned long long)res->session_id, r->step);
		return;
	}
	r->awaiting = false;
	w->in_flight--;
	w->steps++;
	req_count_token(b, w);
	bool last = r->at + 1 == r->n_stages;
	if (req_check_result(r, res, last, &err))
		goto bad;
	if (res->step == 0 && !r->have_prompt && res->n_prompt_tokens) {
		r->prompt = malloc(res->n_prompt_tokens * sizeof *r->prompt);
		if (!r->prompt) {
			req_end(b, r, ITT__CODE__INTERNAL, "out of memory");
			return;
		}
		memcpy(r->prompt, res->prompt_tokens, res->n_prompt_tokens * sizeof *r->prompt);
		r->n_prompt = (uint32_t)res->n_prompt_tokens;
		r->have_prompt = true;
	}
	if (res->step == 0 && res->n_stop_tokens) {
		/* stage 0 rendered a conversation: its turn ends at these */
		r->n_stop_tokens = (uint32_t)res->n_stop_tokens;
		memcpy(r->stop_tokens, res->stop_tokens,
		       res->n_stop_tokens * sizeof *r->stop_tokens);
	}
	if (!last) {
		uint32_t rows = (res->step == 0 ? r->n_prompt + r->n_gen : 1 + r->n_draft) *
		                (r->branch_rows ? 2 : 1);
		if (!r->have_prompt)
			itt_err_set(&err, ITT__CODE__INVALID_ARGUMENT,
			            "stage %u RESULT of step 0 lacks prompt_tokens", r->at);
		else
			wire_check_tensor(res->hidden, tensor, tensor_len, rows, rows,
			                  r->model->dim, "RESULT hidden", &err);
		if (err.code)
			goto bad;
		req_forward(b, r, r->at + 1, res->hidden, tensor, tensor_len);
		return;
	}
	const struct model *m = r->model;
	size_t nt = res->n_tokens ? res->n_tokens : 1;
	for (size_t i = 0; i < nt; i++) {
		int32_t tok = res->n_tokens ? res->tokens[i] : res->token;
		const ProtobufCBinaryData *pc = res->n_tokens ? &res->pieces[i] : &res->piece;
		if (req_take(b, r, tok, pc->data, pc->len))
			return; /* ended */
	}
	uint64_t seq_len =
	    r->have_prompt ? (uint64_t)r->n_prompt + r->n_gen : (uint64_t)res->n_pos + 1;
	if ((int64_t)r->n_gen >= r->max_tokens) {
		req_end(b, r, 0, "length");
		return;
	}
	if (seq_len >= m->ctx_len) {
		req_end(b, r, 0, "context");
		return;
	}
	/* drafts for the next step: only those that can still be used */
	uint64_t room = m->ctx_len - 1 - seq_len, want = (uint64_t)(r->max_tokens - r->n_gen) - 1;
	r->n_draft = (uint32_t)res->n_draft;
	if (r->n_draft > room)
		r->n_draft = (uint32_t)room;
	if (r->n_draft > want)
		r->n_draft = (uint32_t)want;
	if (r->n_draft)
		memcpy(r->draft, res->draft, r->n_draft * sizeof *r->draft);
	int32_t toks[1 + sizeof r->draft / sizeof r->draft[0]];
	Itt__StepRequest s = ITT__STEP_REQUEST__INIT;
	r->step++;
	req_fill_step(r, &s, toks);
	r->at = 0;
	r->awaiting = true;
	r->stages[0].w->in_flight++;
	back_send(b, r->stages[0].w, WIRE_STEP, &s.base);
	return;
bad:
	LOG_WARN("worker %s: session %llu: %s; replaying it", w->id,
	         (unsigned long long)r->session_id, err.msg);
	req_requeue(b, r, w, true, err.msg);
}

void req_on_worker_error(struct broker *b, struct worker *w, const Itt__Error *e)
{
	char why[384];
	const char *reason = e->reason ? e->reason : "(no reason)";
	if (!e->session_id) {
		LOG_WARN("worker %s: ERROR %s: %s", w->id, wire_code_name(e->code), reason);
		return;
	}
	struct request *r = map_get(&b->sessions, &e->session_id, sizeof e->session_id);
	bool on_route = false;
	for (uint32_t k = 0; r && k < r->n_stages; k++)
		on_route = on_route || r->stages[k].w == w;
	if (!r || !on_route) {
		LOG_DEBUG("worker %s: ERROR %s for session %llu it does not own: %s", w->id,
		          wire_code_name(e->code), (unsigned long long)e->session_id, reason);
		return;
	}
	LOG_WARN("worker %s: ERROR %s for session %llu (request %s of %s): %s", w->id,
	         wire_code_name(e->code), (unsigned long long)r->session_id, r->request_id,
	         r->client_id, reason);
	snprintf(why, sizeof why, "worker %s: %s: %.250s", w->id, wire_code_name(e->code), reason);
	switch (e->code) {
	case ITT__CODE__OVERLOADED:
		/* no room for it now: back to the head of the queue, and give the
		 * worker a heartbeat interval before it is offered another; to a
		 * STEP it means the worker dropped the session: that is a replay */
		w->busy_until_ms = b->now_ms + (uint64_t)b->cfg.heartbeat_ms;
		req_requeue(b, r, w, r->step > 0, why);
		break;
	case ITT__CODE__INVALID_ARGUMENT:
		/* the session itself cannot run (e.g. its prompt does not fit the
		 * context): another worker of the model would say the same */
		req_end(b, r, ITT__CODE__UNAVAILABLE, why);
		break;
	default: req_requeue(b, r, w, true, why); break;
	}
}

void req_resend(struct broker *b, struct request *r, const uint8_t *ident, size_t len)
{
	for (uint32_t i = 0; i < r->n_chunks; i++) {
		Itt__StreamChunk c;
		req_fill_chunk(r, i, &c);
		if (front_send_to(b, ident, len, WIRE_CHUNK, &c.base) < 0)
			return;
	}
	if (r->state != REQ_ENDED)
		return;
	if (r->end_code == 0) {
		Itt__StreamDone d;
		Itt__Timings t;
		req_fill_done(r, &d, &t);
		front_send_to(b, ident, len, WIRE_DONE, &d.base);
	} else {
		front_send_error(b, ident, len, r->request_id, r->end_code, r->end_reason);
	}
}

void req_tick(struct broker *b)
{
	char why[96];
	for (;;) {
		struct request *r = heap_top(&b->deadlines);
		if (!r || r->deadline_ms > b->now_ms)
			break;
		snprintf(why, sizeof why, "deadline passed after %.0f ms",
		         (double)(b->now_us - r->t_recv_us) / 1e3);
		req_end(b, r, ITT__CODE__DEADLINE_EXCEEDED, why);
	}
	while (!link_empty(&b->ended)) {
		struct request *r = LINK_ENTRY(b->ended.next, struct request, ended_link);
		if (r->t_end_us / 1000 + (uint64_t)b->cfg.keep_ended_ms > b->now_ms)
			break;
		req_free(b, r);
	}
}
