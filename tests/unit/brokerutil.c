/* brokerutil: see brokerutil.h. */
#include "brokerutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const int tb_all_cmds[] = {WIRE_SUBMIT,        WIRE_CHUNK,
                                  WIRE_DONE,          WIRE_ERROR,
                                  WIRE_CANCEL,        WIRE_HEARTBEAT,
                                  WIRE_STATS,         WIRE_STATS_REPLY,
                                  WIRE_HELLO,         WIRE_WELCOME,
                                  WIRE_OPEN,          WIRE_STEP,
                                  WIRE_RESULT,        WIRE_CLOSE,
                                  WIRE_BYE,           WIRE_TELEMETRY,
                                  WIRE_SETTINGS,      WIRE_ASSIGN,
                                  WIRE_CONTROL_HELLO, WIRE_WORKER_UP,
                                  WIRE_WORKER_DOWN,   WIRE_PLACE,
                                  WIRE_ROUTES,        WIRE_SET,
                                  WIRE_SET_REPLY,     0};

struct tb *tb_new(int argc, const char *const *argv)
{
	static int serial;
	const char *args[32] = {"itt-broker"};
	assert_true(argc < 30);
	for (int i = 0; i < argc; i++)
		args[1 + i] = argv[i];
	struct tb *t = calloc(1, sizeof *t);
	assert_non_null(t);
	assert_int_equal(broker_config_parse(&t->b.cfg, 1 + argc, (char **)args), 0);
	snprintf(t->b.cfg.front, sizeof t->b.cfg.front, "inproc://tb-front-%d", serial);
	snprintf(t->b.cfg.back, sizeof t->b.cfg.back, "inproc://tb-back-%d", serial++);
	log_level_now = getenv("TB_LOG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERROR;
	broker_init(&t->b);
	assert_int_equal(broker_bind(&t->b), 0);
	broker_check(&t->b);
	return t;
}

void tb_free(struct tb *t)
{
	for (int i = 0; i < t->n_peers; i++)
		zmq_close(t->peers[i]);
	broker_free(&t->b);
	free(t);
}

void *tb_peer(struct tb *t, bool back, const char *ident)
{
	int zero = 0;
	void *s = zmq_socket(t->b.zctx, ZMQ_DEALER);
	assert_non_null(s);
	assert_int_equal(zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero), 0);
	assert_int_equal(zmq_setsockopt(s, ZMQ_ROUTING_ID, ident, strlen(ident)), 0);
	assert_int_equal(zmq_connect(s, back ? t->b.cfg.back : t->b.cfg.front), 0);
	assert_true(t->n_peers < TB_MAX_PEERS);
	t->peers[t->n_peers++] = s;
	return s;
}

void tb_send(void *peer, int cmd, const ProtobufCMessage *msg)
{
	assert_int_equal(wire_send(peer, NULL, 0, cmd, msg, NULL, 0, 0), 0);
}

static void tb_pump(struct tb *t, void *sock, int (*handle)(struct broker *))
{
	zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
	assert_int_equal(zmq_poll(&it, 1, 1000), 1);
	assert_int_equal(handle(&t->b), 1);
}

void tb_pump_front(struct tb *t)
{
	tb_pump(t, t->b.front, front_handle);
}

void tb_pump_back(struct tb *t)
{
	tb_pump(t, t->b.back, back_handle);
}

void tb_expect(void *peer, int cmd, struct wire_msg *m)
{
	struct itt_err err = {0};
	zmq_pollitem_t it = {peer, 0, ZMQ_POLLIN, 0};
	assert_int_equal(zmq_poll(&it, 1, 1000), 1);
	assert_int_equal(wire_recv(peer, false, tb_all_cmds, m, &err, ZMQ_DONTWAIT), 1);
	assert_int_equal(err.code, 0);
	if (m->cmd != cmd)
		fail_msg("expected %s, received %s", wire_cmd_name(cmd), wire_cmd_name(m->cmd));
}

bool tb_quiet(void *peer)
{
	zmq_pollitem_t it = {peer, 0, ZMQ_POLLIN, 0};
	return zmq_poll(&it, 1, 20) == 0;
}

struct worker *tb_worker(struct tb *t, const char *id, const char *model, uint32_t first,
                         uint32_t last, uint32_t n_layers, uint32_t max_sessions, void **peer)
{
	void *s = tb_peer(t, true, id);
	Itt__WorkerHello h = ITT__WORKER_HELLO__INIT;
	h.worker_id = (char *)id;
	h.host = "test";
	h.model = (char *)model;
	h.vocab = TB_VOCAB;
	h.ctx_len = TB_CTX;
	h.has_eos_token = true;
	h.eos_token = TB_EOS;
	h.max_sessions = max_sessions;
	h.n_layers = n_layers;
	h.layer_first = first;
	h.layer_last = last;
	h.dim = TB_DIM;
	h.threads = 1;
	h.has_vocab = h.has_ctx_len = h.has_max_sessions = h.has_n_layers = true;
	h.has_layer_first = h.has_layer_last = h.has_dim = h.has_threads = true;
	tb_send(s, WIRE_HELLO, &h.base);
	tb_pump_back(t);
	struct wire_msg m;
	tb_expect(s, WIRE_WELCOME, &m);
	wire_msg_close(&m);
	struct worker *w = map_get(&t->b.workers, id, strlen(id));
	assert_non_null(w);
	if (peer)
		*peer = s;
	return w;
}

struct request *tb_request(struct tb *t, const char *client_id, const char *request_id)
{
	char key[sizeof((struct request *)0)->key];
	size_t cl = strlen(client_id), rl = strlen(request_id);
	assert_true(cl + rl + 2 <= sizeof key);
	memcpy(key, client_id, cl + 1);
	memcpy(key + cl + 1, request_id, rl);
	return map_get(&t->b.requests, key, cl + 1 + rl);
}

struct request *tb_submit(struct tb *t, void *client, const char *client_id, const char *request_id,
                          const char *model, uint32_t n_prompt, int32_t max_tokens,
                          uint32_t deadline_ms)
{
	int32_t toks[64];
	assert_true(n_prompt <= 64);
	for (uint32_t i = 0; i < n_prompt; i++)
		toks[i] = (int32_t)(i + 1) % TB_VOCAB;
	Itt__GenerateRequest g = ITT__GENERATE_REQUEST__INIT;
	g.client_id = (char *)client_id;
	g.request_id = (char *)request_id;
	g.model = (char *)model;
	g.prompt_tokens = toks;
	g.n_prompt_tokens = n_prompt;
	g.has_max_tokens = true;
	g.max_tokens = max_tokens;
	g.has_deadline_ms = deadline_ms != 0;
	g.deadline_ms = deadline_ms;
	tb_send(client, WIRE_SUBMIT, &g.base);
	tb_pump_front(t);
	return tb_request(t, client_id, request_id);
}

void tb_result(struct tb *t, void *worker, uint64_t session_id, uint32_t step, int32_t token,
               const char *piece)
{
	Itt__StepResult r = ITT__STEP_RESULT__INIT;
	r.has_session_id = r.has_step = r.has_token = r.has_piece = true;
	r.session_id = session_id;
	r.step = step;
	r.token = token;
	r.piece.data = (uint8_t *)piece;
	r.piece.len = strlen(piece);
	tb_send(worker, WIRE_RESULT, &r.base);
	tb_pump_back(t);
}
