/* test-broker-request: pins down the life of a request in the broker
 * (broker/request.c, with front.c's SUBMIT and CANCEL): a new request is
 * indexed (requests, sessions, deadlines, its client) and queued, opened on
 * a free route, streamed chunk by chunk; it ends exactly once (DONE or
 * ERROR) and is then kept keep_ended_ms (at most keep_ended of them) so a
 * re-SUBMIT gets the same stream again; a lost worker's sessions are
 * requeued at the head of the queue and replayed elsewhere with the history,
 * up to --max-replays; a conversation opens stage 0 with its messages and
 * ends at the end-of-turn id stage 0 reported.  Every state is checked with
 * broker_check(). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "brokerutil.h"

/* ---- what peers receive ----------------------------------------------------- */

static Itt__SessionOpen *expect_open(void *w)
{
	struct wire_msg m;
	tb_expect(w, WIRE_OPEN, &m);
	Itt__SessionOpen *o = itt__session_open__unpack(NULL, m.body_len, m.body);
	wire_msg_close(&m);
	assert_non_null(o);
	return o;
}

static Itt__StepRequest *expect_step(void *w)
{
	struct wire_msg m;
	tb_expect(w, WIRE_STEP, &m);
	Itt__StepRequest *s = itt__step_request__unpack(NULL, m.body_len, m.body);
	wire_msg_close(&m);
	assert_non_null(s);
	return s;
}

static void expect_close(void *w, uint64_t session_id, int reason)
{
	struct wire_msg m;
	tb_expect(w, WIRE_CLOSE, &m);
	Itt__SessionClose *c = itt__session_close__unpack(NULL, m.body_len, m.body);
	wire_msg_close(&m);
	assert_non_null(c);
	assert_int_equal(c->session_id, session_id);
	assert_int_equal(c->reason, reason);
	itt__session_close__free_unpacked(c, NULL);
}

/* A CHUNK with seq, one token (or none: tok < 0) and text. */
static void expect_chunk(void *c, uint32_t seq, int32_t tok, const char *text)
{
	struct wire_msg m;
	tb_expect(c, WIRE_CHUNK, &m);
	Itt__StreamChunk *k = itt__stream_chunk__unpack(NULL, m.body_len, m.body);
	wire_msg_close(&m);
	assert_non_null(k);
	assert_int_equal(k->seq, seq);
	assert_int_equal(k->n_tokens, tok < 0 ? 0 : 1);
	if (tok >= 0)
		assert_int_equal(k->tokens[0], tok);
	assert_int_equal(k->text.len, strlen(text));
	assert_memory_equal(k->text.data ? (const char *)k->text.data : "", text, strlen(text));
	itt__stream_chunk__free_unpacked(k, NULL);
}

static void expect_done(void *c, const char *request_id, const char *why, uint32_t n_chunks)
{
	struct wire_msg m;
	tb_expect(c, WIRE_DONE, &m);
	Itt__StreamDone *d = itt__stream_done__unpack(NULL, m.body_len, m.body);
	wire_msg_close(&m);
	assert_non_null(d);
	assert_string_equal(d->request_id, request_id);
	assert_string_equal(d->stop_reason, why);
	assert_int_equal(d->n_chunks, n_chunks);
	itt__stream_done__free_unpacked(d, NULL);
}

static void expect_error(void *c, const char *request_id, int code, const char *reason)
{
	struct wire_msg m;
	tb_expect(c, WIRE_ERROR, &m);
	Itt__Error *e = itt__error__unpack(NULL, m.body_len, m.body);
	wire_msg_close(&m);
	assert_non_null(e);
	assert_string_equal(e->request_id, request_id);
	assert_int_equal(e->code, code);
	if (reason)
		assert_string_equal(e->reason, reason);
	itt__error__free_unpacked(e, NULL);
}

static void bye(struct tb *t, void *w)
{
	tb_send(w, WIRE_BYE, NULL);
	tb_pump_back(t);
}

static struct model *model(struct tb *t, const char *name)
{
	struct model *m = map_get(&t->b.models, name, strlen(name));
	assert_non_null(m);
	return m;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_new_request_is_indexed_and_opened_on_a_free_route(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	struct worker *w = tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	assert_non_null(r);
	assert_string_equal(r->client_id, "c");
	assert_string_equal(r->request_id, "r1");
	assert_int_equal(r->state, REQ_RUNNING);
	assert_ptr_equal(map_get(&t->b.sessions, &r->session_id, sizeof r->session_id), r);
	assert_true(heap_contains(&t->b.deadlines, r));
	assert_ptr_equal(r->client, map_get(&t->b.clients, "c1", 2));
	assert_int_equal(r->client->n_open, 1);
	assert_int_equal(r->n_stages, 1);
	assert_ptr_equal(r->stages[0].w, w);
	assert_int_equal(w->n_sessions, 1);
	assert_int_equal(w->in_flight, 1);
	assert_int_equal(t->b.n_requests, 1);
	Itt__SessionOpen *o = expect_open(wp);
	assert_int_equal(o->session_id, r->session_id);
	assert_int_equal(o->n_tokens, 3);
	assert_int_equal(o->n_prompt, 3);
	assert_int_equal(o->tokens[0], 1);
	assert_int_equal(o->tokens[2], 3);
	assert_true(o->sampling && o->sampling->has_seed); /* the broker picks a seed */
	itt__session_open__free_unpacked(o, NULL);
	tb_free(t);
}

static void test_a_request_waits_in_the_queue_while_routes_are_full(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	struct request *r2 = tb_submit(t, c, "c", "r2", "m", 3, 8, 0);
	assert_non_null(r2);
	assert_int_equal(r2->state, REQ_QUEUED);
	assert_int_equal(r2->n_stages, 0);
	assert_true(heap_contains(&model(t, "m")->queue, r2));
	assert_true(heap_contains(&t->b.deadlines, r2));
	assert_ptr_equal(map_get(&t->b.sessions, &r2->session_id, sizeof r2->session_id), r2);
	assert_int_equal(r2->client->n_open, 2);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	assert_true(tb_quiet(wp)); /* only r1 was opened */
	tb_free(t);
}

static void test_result_streams_a_chunk_and_asks_for_the_next_step(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	tb_result(t, wp, r->session_id, 0, 7, "x");
	expect_chunk(c, 0, 7, "x");
	Itt__StepRequest *s = expect_step(wp);
	assert_int_equal(s->session_id, r->session_id);
	assert_int_equal(s->step, 1);
	assert_int_equal(s->n_tokens, 1);
	assert_int_equal(s->tokens[0], 7);
	assert_int_equal(s->pos, 3);
	itt__step_request__free_unpacked(s, NULL);
	assert_int_equal(r->n_gen, 1);
	assert_int_equal(r->n_chunks, 1);
	/* a late or repeated answer for another step changes nothing */
	tb_result(t, wp, r->session_id, 0, 9, "y");
	assert_int_equal(r->n_gen, 1);
	assert_true(tb_quiet(c));
	tb_free(t);
}

static void test_eos_ends_with_done_once_and_the_next_request_runs(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	struct worker *w = tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	struct request *r1 = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	struct request *r2 = tb_submit(t, c, "c", "r2", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	tb_result(t, wp, r1->session_id, 0, TB_EOS, "");
	expect_done(c, "r1", "eos", 0);
	assert_int_equal(r1->state, REQ_ENDED);
	assert_int_equal(r1->end_code, 0);
	assert_null(r1->req);
	assert_null(r1->client);
	assert_ptr_equal(tb_request(t, "c", "r1"), r1); /* kept for re-SUBMIT */
	assert_null(map_get(&t->b.sessions, &r1->session_id, sizeof r1->session_id));
	assert_false(heap_contains(&t->b.deadlines, r1));
	assert_int_equal(t->b.n_ended, 1);
	assert_int_equal(t->b.n_completed, 1);
	/* the route is closed, then the waiting request takes it */
	expect_close(wp, r1->session_id, ITT__CODE__OK);
	Itt__SessionOpen *o = expect_open(wp);
	assert_int_equal(o->session_id, r2->session_id);
	itt__session_open__free_unpacked(o, NULL);
	assert_int_equal(r2->state, REQ_RUNNING);
	assert_int_equal(w->n_sessions, 1);
	/* an ended request does not end again */
	req_end(&t->b, r1, ITT__CODE__INTERNAL, "again");
	assert_int_equal(r1->end_code, 0);
	assert_int_equal(t->b.n_failed, 0);
	assert_true(tb_quiet(c));
	broker_check(&t->b);
	tb_free(t);
}

/* HELLO of worker id with layers [0, 4) of 4 and end-of-generation ids
 * eog[0..n); returns its socket (the caller reads WELCOME or ERROR). */
static void *hello_with_eog(struct tb *t, const char *id, const int32_t *eog, size_t n)
{
	void *s = tb_peer(t, true, id);
	Itt__WorkerHello h = ITT__WORKER_HELLO__INIT;
	h.worker_id = (char *)id;
	h.host = "test";
	h.model = "m";
	h.has_vocab = h.has_ctx_len = h.has_max_sessions = h.has_n_layers = true;
	h.has_layer_last = h.has_dim = h.has_threads = h.has_eos_token = true;
	h.vocab = TB_VOCAB;
	h.ctx_len = TB_CTX;
	h.eos_token = TB_EOS;
	h.max_sessions = 1;
	h.n_layers = h.layer_last = 4;
	h.dim = TB_DIM;
	h.threads = 1;
	h.eog_tokens = (int32_t *)eog;
	h.n_eog_tokens = n;
	tb_send(s, WIRE_HELLO, &h.base);
	tb_pump_back(t);
	return s;
}

static void test_hello_s_end_of_generation_tokens_end_requests_like_eos(void **state)
{
	(void)state;
	struct tb *t = tb_new(0, NULL);
	struct wire_msg m;
	static const int32_t bad[][2] = {{9, 7}, {7, 7}, {-1, 7}, {7, TB_VOCAB}};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char id[16];
		snprintf(id, sizeof id, "bad%zu", i);
		tb_expect(hello_with_eog(t, id, bad[i], 2), WIRE_ERROR, &m);
		wire_msg_close(&m);
	}
	assert_null(map_get(&t->b.models, "m", 1));
	static const int32_t eog[] = {7, 9};
	void *wp = hello_with_eog(t, "w1", eog, 2);
	tb_expect(wp, WIRE_WELCOME, &m);
	wire_msg_close(&m);
	assert_int_equal(model(t, "m")->n_eog, 2);
	/* another worker of the model must agree on them */
	tb_expect(hello_with_eog(t, "w2", eog, 1), WIRE_ERROR, &m);
	wire_msg_close(&m);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	tb_result(t, wp, r->session_id, 0, 5, "a");
	expect_chunk(c, 0, 5, "a");
	itt__step_request__free_unpacked(expect_step(wp), NULL);
	tb_result(t, wp, r->session_id, 1, 9, "");
	expect_done(c, "r1", "eos", 1);
	assert_int_equal(r->state, REQ_ENDED);
	broker_check(&t->b);
	tb_free(t);
}

static void test_a_conversation_opens_with_its_messages_and_ends_at_its_end_of_turn(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	Itt__ChatMessage sys = ITT__CHAT_MESSAGE__INIT, user = ITT__CHAT_MESSAGE__INIT;
	Itt__ChatMessage *msgs[] = {&sys, &user};
	sys.role = "system";
	sys.content = "Be brief.";
	user.role = "user";
	user.content = "Hello";
	Itt__GenerateRequest g = ITT__GENERATE_REQUEST__INIT;
	g.client_id = "c";
	g.request_id = "r1";
	g.model = "m";
	g.messages = msgs;
	g.n_messages = 2;
	g.chat_template = "llama3";
	/* with a prompt too: refused at once */
	g.prompt = "text";
	tb_send(c, WIRE_SUBMIT, &g.base);
	tb_pump_front(t);
	expect_error(c, "r1", ITT__CODE__INVALID_ARGUMENT, "messages and prompt are exclusive");
	/* a system message that is not first: refused */
	g.prompt = NULL;
	msgs[0] = &user;
	msgs[1] = &sys;
	tb_send(c, WIRE_SUBMIT, &g.base);
	tb_pump_front(t);
	expect_error(c, "r1", ITT__CODE__INVALID_ARGUMENT,
	             "messages[1]: a system message may only come first");
	msgs[0] = &sys;
	msgs[1] = &user;
	tb_send(c, WIRE_SUBMIT, &g.base);
	tb_pump_front(t);
	struct request *r = tb_request(t, "c", "r1");
	assert_non_null(r);
	/* stage 0 gets the conversation and the template's name, no prompt */
	Itt__SessionOpen *o = expect_open(wp);
	assert_int_equal(o->n_messages, 2);
	assert_string_equal(o->messages[1]->content, "Hello");
	assert_string_equal(o->chat_template, "llama3");
	assert_null(o->prompt);
	assert_int_equal(o->n_tokens, 0);
	itt__session_open__free_unpacked(o, NULL);
	/* step 0 reports the prompt and the end-of-turn id 7 */
	int32_t prompt[] = {1, 5, 6}, eot[] = {7};
	Itt__StepResult res = ITT__STEP_RESULT__INIT;
	res.has_session_id = res.has_step = res.has_token = res.has_piece = true;
	res.session_id = r->session_id;
	res.token = 9;
	res.piece.data = (uint8_t *)"Hi";
	res.piece.len = 2;
	res.prompt_tokens = prompt;
	res.n_prompt_tokens = 3;
	res.stop_tokens = eot;
	res.n_stop_tokens = 1;
	tb_send(wp, WIRE_RESULT, &res.base);
	tb_pump_back(t);
	expect_chunk(c, 0, 9, "Hi");
	itt__step_request__free_unpacked(expect_step(wp), NULL);
	/* the end-of-turn token ends it like EOS, unsent */
	tb_result(t, wp, r->session_id, 1, 7, "");
	expect_done(c, "r1", "eos", 1);
	expect_close(wp, r->session_id, ITT__CODE__OK);
	assert_true(tb_quiet(c));
	broker_check(&t->b);
	tb_free(t);
}

static void test_resubmit_of_an_ended_request_resends_its_stream(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	tb_result(t, wp, r->session_id, 0, 7, "ab");
	expect_chunk(c, 0, 7, "ab");
	itt__step_request__free_unpacked(expect_step(wp), NULL);
	tb_result(t, wp, r->session_id, 1, TB_EOS, "");
	expect_done(c, "r1", "eos", 1);
	expect_close(wp, r->session_id, ITT__CODE__OK);
	uint64_t n = t->b.n_requests;
	/* the same ids again, from another connection: the same stream */
	void *c2 = tb_peer(t, false, "c2");
	assert_ptr_equal(tb_submit(t, c2, "c", "r1", "m", 3, 8, 0), r);
	expect_chunk(c2, 0, 7, "ab");
	expect_done(c2, "r1", "eos", 1);
	assert_int_equal(t->b.n_requests, n);
	assert_int_equal(r->state, REQ_ENDED);
	assert_true(tb_quiet(wp));
	tb_free(t);
}

static void test_resubmit_of_an_open_request_moves_its_stream(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c1 = tb_peer(t, false, "c1"), *c2 = tb_peer(t, false, "c2");
	struct request *r = tb_submit(t, c1, "c", "r1", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	tb_result(t, wp, r->session_id, 0, 7, "a");
	expect_chunk(c1, 0, 7, "a");
	itt__step_request__free_unpacked(expect_step(wp), NULL);
	assert_ptr_equal(tb_submit(t, c2, "c", "r1", "m", 3, 8, 0), r);
	expect_chunk(c2, 0, 7, "a");
	struct client *k1 = map_get(&t->b.clients, "c1", 2), *k2 = map_get(&t->b.clients, "c2", 2);
	assert_ptr_equal(r->client, k2);
	assert_int_equal(k1->n_open, 0);
	assert_int_equal(k2->n_open, 1);
	/* the stream goes on at the next seq, on the new connection only */
	tb_result(t, wp, r->session_id, 1, 8, "b");
	expect_chunk(c2, 1, 8, "b");
	assert_true(tb_quiet(c1));
	tb_free(t);
}

static void test_a_lost_worker_s_session_is_replayed_with_its_history(void **state)
{
	(void)state;
	void *p1, *p2;
	struct tb *t = tb_new(0, NULL);
	struct worker *w1 = tb_worker(t, "w1", "m", 0, 4, 4, 1, &p1);
	struct worker *w2 = tb_worker(t, "w2", "m", 0, 4, 4, 1, &p2);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	assert_ptr_equal(r->stages[0].w, w1); /* equal load: the first registered */
	itt__session_open__free_unpacked(expect_open(p1), NULL);
	tb_result(t, p1, r->session_id, 0, 7, "a");
	expect_chunk(c, 0, 7, "a");
	itt__step_request__free_unpacked(expect_step(p1), NULL);
	bye(t, p1);
	assert_null(map_get(&t->b.workers, "w1", 2));
	assert_int_equal(r->state, REQ_RUNNING);
	assert_ptr_equal(r->stages[0].w, w2);
	assert_int_equal(r->replays, 1);
	assert_int_equal(t->b.n_replays, 1);
	Itt__SessionOpen *o = expect_open(p2);
	assert_int_equal(o->session_id, r->session_id);
	assert_int_equal(o->n_tokens, 4); /* prompt + generated */
	assert_int_equal(o->n_prompt, 3);
	assert_int_equal(o->tokens[3], 7);
	assert_int_equal(o->sampling->seed, r->seed); /* the same seed: the same tokens */
	itt__session_open__free_unpacked(o, NULL);
	/* the stream goes on at the next seq */
	tb_result(t, p2, r->session_id, 0, 8, "b");
	expect_chunk(c, 1, 8, "b");
	tb_free(t);
}

static void test_replays_beyond_max_replays_fail_unavailable(void **state)
{
	(void)state;
	void *wp;
	const char *args[] = {"--max-replays", "0"};
	struct tb *t = tb_new(2, args);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	bye(t, wp);
	expect_error(c, "r1", ITT__CODE__UNAVAILABLE, "session failed 1 times; last: it said BYE");
	assert_int_equal(r->state, REQ_ENDED);
	assert_int_equal(r->end_code, ITT__CODE__UNAVAILABLE);
	assert_int_equal(t->b.n_failed, 1);
	tb_free(t);
}

static void test_a_requeued_request_goes_to_the_head_of_the_queue(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	struct request *r1 = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	struct request *r2 = tb_submit(t, c, "c", "r2", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	/* moved without counting (as for PLACE): CLOSE, then r1 again, not r2 */
	req_requeue(&t->b, r1, NULL, false, "moved");
	broker_check(&t->b);
	expect_close(wp, r1->session_id, ITT__CODE__UNAVAILABLE);
	Itt__SessionOpen *o = expect_open(wp);
	assert_int_equal(o->session_id, r1->session_id);
	itt__session_open__free_unpacked(o, NULL);
	assert_int_equal(r1->replays, 0);
	assert_int_equal(r1->state, REQ_RUNNING);
	assert_int_equal(r2->state, REQ_QUEUED);
	tb_free(t);
}

static void test_queue_order_is_replays_then_priority_then_arrival(void **state)
{
	(void)state;
	struct request a = {0}, b = {0};
	a.arrival = 1;
	b.arrival = 2;
	assert_true(req_queue_less(&a, &b));
	assert_false(req_queue_less(&b, &a));
	b.priority = 1;
	assert_true(req_queue_less(&b, &a));
	a.replay_first = true;
	assert_true(req_queue_less(&a, &b));
	a.deadline_ms = 5;
	b.deadline_ms = 4;
	assert_true(req_deadline_less(&b, &a));
	b.deadline_ms = 5;
	assert_true(req_deadline_less(&a, &b)); /* same deadline: arrival */
}

static void test_ended_requests_are_kept_keep_ended_ms(void **state)
{
	(void)state;
	const char *args[] = {"--keep-ended-ms", "1000"};
	struct tb *t = tb_new(2, args);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, NULL);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	req_end(&t->b, r, ITT__CODE__CANCELLED, "test");
	expect_error(c, "r1", ITT__CODE__CANCELLED, "test");
	broker_check(&t->b);
	uint64_t end_ms = r->t_end_us / 1000;
	t->b.now_ms = end_ms + 999;
	req_tick(&t->b);
	assert_ptr_equal(tb_request(t, "c", "r1"), r);
	t->b.now_ms = end_ms + 1000;
	req_tick(&t->b);
	assert_null(tb_request(t, "c", "r1"));
	assert_int_equal(t->b.n_ended, 0);
	broker_check(&t->b);
	tb_free(t);
}

static void test_at_most_keep_ended_requests_are_kept(void **state)
{
	(void)state;
	const char *args[] = {"--keep-ended", "1"};
	struct tb *t = tb_new(2, args);
	tb_worker(t, "w1", "m", 0, 4, 4, 2, NULL);
	void *c = tb_peer(t, false, "c1");
	struct request *r1 = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	struct request *r2 = tb_submit(t, c, "c", "r2", "m", 3, 8, 0);
	req_end(&t->b, r1, ITT__CODE__CANCELLED, "test");
	assert_ptr_equal(tb_request(t, "c", "r1"), r1);
	req_end(&t->b, r2, ITT__CODE__CANCELLED, "test");
	assert_null(tb_request(t, "c", "r1")); /* the oldest went */
	assert_ptr_equal(tb_request(t, "c", "r2"), r2);
	assert_int_equal(t->b.n_ended, 1);
	broker_check(&t->b);
	tb_free(t);
}

static void test_a_passed_deadline_ends_the_request(void **state)
{
	(void)state;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, NULL);
	void *c = tb_peer(t, false, "c1");
	tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	struct request *r = tb_submit(t, c, "c", "r2", "m", 3, 8, 50); /* queued */
	assert_int_equal(r->deadline_ms, r->t_recv_us / 1000 + 50);
	t->b.now_ms = r->deadline_ms - 1;
	req_tick(&t->b);
	assert_int_equal(r->state, REQ_QUEUED);
	t->b.now_ms = r->deadline_ms;
	req_tick(&t->b);
	assert_int_equal(r->state, REQ_ENDED);
	assert_int_equal(r->end_code, ITT__CODE__DEADLINE_EXCEEDED);
	expect_error(c, "r2", ITT__CODE__DEADLINE_EXCEEDED, NULL);
	assert_int_equal(model(t, "m")->queue.n, 0);
	broker_check(&t->b);
	tb_free(t);
}

static void test_cancel_ends_an_open_request_and_refuses_an_unknown_one(void **state)
{
	(void)state;
	void *wp;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &wp);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(wp), NULL);
	Itt__Cancel x = ITT__CANCEL__INIT;
	x.client_id = "c";
	x.request_id = "r1";
	tb_send(c, WIRE_CANCEL, &x.base);
	tb_pump_front(t);
	expect_error(c, "r1", ITT__CODE__CANCELLED, "cancelled by the client");
	expect_close(wp, r->session_id, ITT__CODE__CANCELLED);
	assert_int_equal(r->state, REQ_ENDED);
	tb_send(c, WIRE_CANCEL, &x.base); /* ended: not running */
	tb_pump_front(t);
	expect_error(c, "r1", ITT__CODE__NOT_FOUND, "request r1 of client c is not running");
	tb_free(t);
}

static void test_a_bad_result_replays_the_session_and_keeps_the_broker_up(void **state)
{
	(void)state;
	void *p1, *p2;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, &p1);
	struct worker *w2 = tb_worker(t, "w2", "m", 0, 4, 4, 1, &p2);
	void *c = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	itt__session_open__free_unpacked(expect_open(p1), NULL);
	tb_result(t, p1, r->session_id, 0, TB_VOCAB, ""); /* not a token id */
	expect_close(p1, r->session_id, ITT__CODE__UNAVAILABLE);
	assert_ptr_equal(r->stages[0].w, w2); /* the culprit is avoided */
	assert_int_equal(r->replays, 1);
	itt__session_open__free_unpacked(expect_open(p2), NULL);
	/* a RESULT for a session the worker does not own: CLOSE NOT_FOUND */
	tb_result(t, p1, 12345, 0, 7, "");
	expect_close(p1, 12345, ITT__CODE__NOT_FOUND);
	tb_free(t);
}

/* broker_check in a child after `breakit` broke state: it must abort. */
static void assert_check_aborts(struct tb *t, void (*breakit)(struct tb *))
{
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 2);
		breakit(t);
		broker_check(&t->b);
		_exit(0);
	}
	int status;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
}

static void miscount_sessions(struct tb *t)
{
	struct worker *w = map_get(&t->b.workers, "w1", 2);
	w->n_sessions++;
}

static void lose_from_the_queue(struct tb *t)
{
	struct model *m = map_get(&t->b.models, "m", 1);
	heap_pop(&m->queue);
}

static void test_broker_check_catches_broken_invariants(void **state)
{
	(void)state;
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "w1", "m", 0, 4, 4, 1, NULL);
	void *c = tb_peer(t, false, "c1");
	tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	tb_submit(t, c, "c", "r2", "m", 3, 8, 0);
	broker_check(&t->b);
	assert_check_aborts(t, miscount_sessions);
	assert_check_aborts(t, lose_from_the_queue);
	tb_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_new_request_is_indexed_and_opened_on_a_free_route),
	    cmocka_unit_test(test_a_request_waits_in_the_queue_while_routes_are_full),
	    cmocka_unit_test(test_result_streams_a_chunk_and_asks_for_the_next_step),
	    cmocka_unit_test(test_eos_ends_with_done_once_and_the_next_request_runs),
	    cmocka_unit_test(test_hello_s_end_of_generation_tokens_end_requests_like_eos),
	    cmocka_unit_test(
	        test_a_conversation_opens_with_its_messages_and_ends_at_its_end_of_turn),
	    cmocka_unit_test(test_resubmit_of_an_ended_request_resends_its_stream),
	    cmocka_unit_test(test_resubmit_of_an_open_request_moves_its_stream),
	    cmocka_unit_test(test_a_lost_worker_s_session_is_replayed_with_its_history),
	    cmocka_unit_test(test_replays_beyond_max_replays_fail_unavailable),
	    cmocka_unit_test(test_a_requeued_request_goes_to_the_head_of_the_queue),
	    cmocka_unit_test(test_queue_order_is_replays_then_priority_then_arrival),
	    cmocka_unit_test(test_ended_requests_are_kept_keep_ended_ms),
	    cmocka_unit_test(test_at_most_keep_ended_requests_are_kept),
	    cmocka_unit_test(test_a_passed_deadline_ends_the_request),
	    cmocka_unit_test(test_cancel_ends_an_open_request_and_refuses_an_unknown_one),
	    cmocka_unit_test(test_a_bad_result_replays_the_session_and_keeps_the_broker_up),
	    cmocka_unit_test(test_broker_check_catches_broken_invariants),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
