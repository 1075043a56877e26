/* back: the worker side of the broker (ROUTER back end).
 *
 * Contract (PROTOCOL.md, "Worker session"): accepts HELLO, HEARTBEAT,
 * RESULT (with a tensor frame from a non-last stage), ERROR, BYE and
 * TELEMETRY from workers, and the coordinator's commands (control.c).
 * HELLO registers (or re-registers) a worker after
 * checking every field, and is answered WELCOME {heartbeat_ms, liveness};
 * any other command from an identity the broker does not know is answered
 * ERROR NOT_FOUND "unknown worker; send HELLO" (an ERROR from an unknown
 * peer is not answered, so two peers cannot ping-pong errors).  Garbage is
 * logged and answered with ERROR; it never disturbs other sessions.
 *
 * Registry: workers by routing identity (hash map), per model in
 * registration order, and on one list ordered by the last time the broker
 * heard from them: the tick expires workers silent for liveness x
 * heartbeat_ms scanning from the oldest, and sends every worker a HEARTBEAT
 * each heartbeat_ms (whatever else it sent: a worker that only counts
 * HEARTBEATs stays happy, and a send to a dead one fails EHOSTUNREACH within
 * one interval, which is what detects a killed worker fastest).  A lost worker (expired, BYE,
 * re-registered, or unreachable on send) leaves every structure before its
 * sessions are replayed, so a replay never lands on it. */
#include "broker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const int back_accepts[] = {WIRE_HELLO,     WIRE_HEARTBEAT,     WIRE_RESULT, WIRE_ERROR,
                                   WIRE_BYE,       WIRE_TELEMETRY,     WIRE_PLACE,  WIRE_ROUTES,
                                   WIRE_SET,       WIRE_CONTROL_HELLO, 0};

#define BACK_MAX_VOCAB (1u << 24)
#define BACK_MAX_CTX   (1u << 24)

static void back_mark_lost(struct broker *b, struct worker *w)
{
	if (w->lost)
		return;
	w->lost = true;
	link_push_back(&b->reap_workers, &w->reap_link);
}

int back_send(struct broker *b, struct worker *w, int cmd, const ProtobufCMessage *msg)
{
	return back_send_tensor(b, w, cmd, msg, NULL, 0);
}

int back_send_tensor(struct broker *b, struct worker *w, int cmd, const ProtobufCMessage *msg,
                     const void *tensor, size_t len)
{
	if (w->lost)
		return -1;
	if (wire_send(b->back, w->ident, w->ident_len, cmd, msg, tensor, len, ZMQ_DONTWAIT) < 0) {
		LOG_WARN("back end: %s to worker %s failed: %s; dropping the worker",
		         wire_cmd_name(cmd), w->id, zmq_strerror(errno));
		back_mark_lost(b, w);
		return -1;
	}
	return 0;
}

static void back_send_error(struct broker *b, const uint8_t *ident, size_t len, uint64_t session_id,
                            int code, const char *reason)
{
	Itt__Error e = ITT__ERROR__INIT;
	e.has_code = true;
	e.code = (Itt__Code)code;
	e.reason = (char *)reason;
	e.has_session_id = session_id != 0;
	e.session_id = session_id;
	if (wire_send(b->back, ident, len, WIRE_ERROR, &e.base, NULL, 0, ZMQ_DONTWAIT) < 0)
		LOG_DEBUG("back end: ERROR to a peer failed: %s", zmq_strerror(errno));
}

void back_close_session(struct broker *b, struct worker *w, uint64_t session_id, int reason)
{
	Itt__SessionClose c = ITT__SESSION_CLOSE__INIT;
	c.has_session_id = c.has_reason = true;
	c.session_id = session_id;
	c.reason = (Itt__Code)reason;
	back_send(b, w, WIRE_CLOSE, &c.base);
}

struct worker *back_find_id(struct broker *b, const char *id)
{
	for (struct link *l = b->workers_seen.next; l != &b->workers_seen; l = l->next) {
		struct worker *w = LINK_ENTRY(l, struct worker, seen_link);
		if (!strcmp(w->id, id))
			return w;
	}
	return NULL;
}

void back_lose_worker(struct broker *b, struct worker *w, const char *why)
{
	char peer[32];
	LOG_WARN("worker %s (%s, model %s) lost: %s; %u sessions to replay", w->id,
	         broker_peer_name(w->ident, w->ident_len, peer, sizeof peer), w->model->name, why,
	         w->n_sessions);
	map_del(&b->workers, w->ident, w->ident_len);
	link_remove(&w->seen_link);
	link_remove(&w->model_link);
	link_remove(&w->reap_link);
	w->model->n_workers--;
	w->lost = true;
	while (!link_empty(&w->sessions))
		req_requeue(b, LINK_ENTRY(w->sessions.next, struct stage, link)->r, w, true, why);
	if (!w->reregister)
		control_worker_down(b, w, why);
	worker_destroy(w);
}

void worker_destroy(struct worker *w)
{
	if (!w)
		return;
	if (w->hello)
		itt__worker_hello__free_unpacked(w->hello, NULL);
	if (w->telemetry)
		itt__telemetry__free_unpacked(w->telemetry, NULL);
	free(w->id);
	free(w->host);
	free(w);
}

void model_destroy(struct model *m)
{
	if (!m)
		return;
	heap_free(&m->queue);
	route_clear(m);
	free(m->name);
	free(m);
}

static int back_check_str(const char *s, const char *field, size_t lo, size_t hi,
                          struct itt_err *err)
{
	size_t n = s ? strlen(s) : 0;
	if (n < lo || n > hi)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "%s has %zu bytes; it must have %zu..%zu", field, n, lo, hi);
	return 0;
}

/* 0, or INVALID_ARGUMENT with the reason in *err. */
static int back_check_hello(const struct broker *b, Itt__WorkerHello *h, struct itt_err *err)
{
	const int bad = ITT__CODE__INVALID_ARGUMENT;
	size_t nl = b->lim.max_name_len;
	if (back_check_str(h->worker_id, "worker_id", 1, nl, err) ||
	    back_check_str(h->host, "host", 0, nl, err) ||
	    back_check_str(h->model, "model", 1, nl, err))
		return bad;
	if (h->vocab < 1 || h->vocab > BACK_MAX_VOCAB)
		return itt_err_set(err, bad, "vocab %u out of range [1, %u]", h->vocab,
		                   BACK_MAX_VOCAB);
	if (h->ctx_len < 2 || h->ctx_len > BACK_MAX_CTX)
		return itt_err_set(err, bad, "ctx_len %u out of range [2, %u]", h->ctx_len,
		                   BACK_MAX_CTX);
	if (!h->has_eos_token)
		h->eos_token = -1; /* absent: the model has none */
	if (h->eos_token < -1 || (h->eos_token >= 0 && (uint32_t)h->eos_token >= h->vocab))
		return itt_err_set(err, bad, "eos_token %d is neither -1 nor a token id",
		                   h->eos_token);
	if (h->n_eog_tokens > BROKER_MAX_EOG)
		return itt_err_set(err, bad, "%zu eog_tokens; at most %d", h->n_eog_tokens,
		                   BROKER_MAX_EOG);
	for (size_t i = 0; i < h->n_eog_tokens; i++)
		if (h->eog_tokens[i] < 0 || (uint32_t)h->eog_tokens[i] >= h->vocab ||
		    (i > 0 && h->eog_tokens[i] <= h->eog_tokens[i - 1]))
			return itt_err_set(err, bad,
			                   "eog_tokens[%zu] = %d: not an ascending token id", i,
			                   h->eog_tokens[i]);
	if (h->max_sessions < 1)
		return itt_err_set(err, bad, "max_sessions must be at least 1");
	if (h->n_layers < 1 || h->layer_first >= h->layer_last || h->layer_last > h->n_layers)
		return itt_err_set(err, bad,
		                   "layers [%u, %u) of %u: not a non-empty range of the model",
		                   h->layer_first, h->layer_last, h->n_layers);
	if (h->dim < 1 || h->dim > BROKER_MAX_DIM)
		return itt_err_set(err, bad, "dim %u out of range [1, %u]", h->dim,
		                   BROKER_MAX_DIM);
	return 0;
}

static struct model *back_model(struct broker *b, const char *name)
{
	struct model *m = map_get(&b->models, name, strlen(name));
	if (m)
		return m;
	m = calloc(1, sizeof *m);
	if (!m || !(m->name = strdup(name)))
		goto fail;
	link_init(&m->workers);
	heap_init(&m->queue, req_queue_less, offsetof(struct request, queue_idx));
	if (map_put(&b->models, m->name, strlen(m->name), m) < 0)
		goto fail;
	return m;
fail:
	model_destroy(m);
	return NULL;
}

static void back_hello(struct broker *b, const struct wire_msg *msg, struct worker *old)
{
	char why[320], peer[32];
	struct itt_err err;
	broker_peer_name(msg->identity, msg->identity_len, peer, sizeof peer);
	Itt__WorkerHello *h = itt__worker_hello__unpack(NULL, msg->body_len, msg->body);
	if (!h) {
		LOG_WARN("back end: peer %s: malformed WorkerHello body", peer);
		back_send_error(b, msg->identity, msg->identity_len, 0, ITT__CODE__INVALID_ARGUMENT,
		                "malformed WorkerHello body");
		return;
	}
	if (back_check_hello(b, h, &err)) {
		LOG_WARN("back end: peer %s: HELLO refused: %s", peer, err.msg);
		back_send_error(b, msg->identity, msg->identity_len, 0, err.code, err.msg);
		goto out;
	}
	/* A HELLO from a known identity or a known worker_id is a worker that
	 * started over: what it held is gone. */
	if (old) {
		old->reregister = true;
		back_lose_worker(b, old, "it sent HELLO again");
	}
	for (struct link *l = b->workers_seen.next; l != &b->workers_seen;) {
		struct worker *w = LINK_ENTRY(l, struct worker, seen_link);
		l = l->next;
		if (!strcmp(w->id, h->worker_id)) {
			w->reregister = true;
			back_lose_worker(b, w, "it registered again from a new connection");
		}
	}
	struct model *m = back_model(b, h->model);
	if (!m)
		goto oom;
	bool same_eog = m->n_eog == h->n_eog_tokens &&
	                (!m->n_eog || !memcmp(m->eog, h->eog_tokens, m->n_eog * sizeof *m->eog));
	if (m->n_workers && (m->vocab != h->vocab || m->ctx_len != h->ctx_len ||
	                     m->eos != h->eos_token || !same_eog || m->n_layers != h->n_layers ||
	                     m->dim != h->dim || (h->n_heads && m->n_heads != h->n_heads))) {
		snprintf(why, sizeof why,
		         "model %s is served with vocab %u, ctx_len %u, eos %d, %u layers, dim %u, "
		         "%u eog tokens; this worker has vocab %u, ctx_len %u, eos %d, %u layers, "
		         "dim %u, %zu eog tokens%s",
		         m->name, m->vocab, m->ctx_len, m->eos, m->n_layers, m->dim, m->n_eog,
		         h->vocab, h->ctx_len, h->eos_token, h->n_layers, h->dim, h->n_eog_tokens,
		         same_eog ? "" : " (different end-of-generation tokens)");
		LOG_WARN("back end: worker %s (%s): HELLO refused: %s", h->worker_id, peer, why);
		back_send_error(b, msg->identity, msg->identity_len, 0, ITT__CODE__INVALID_ARGUMENT,
		                why);
		goto out;
	}
	struct worker *w = calloc(1, sizeof *w);
	if (!w || !(w->id = strdup(h->worker_id)) || !(w->host = strdup(h->host ? h->host : "")))
		goto oom_worker;
	memcpy(w->ident, msg->identity, msg->identity_len);
	w->ident_len = msg->identity_len;
	if (map_put(&b->workers, w->ident, w->ident_len, w) < 0)
		goto oom_worker;
	w->serial = ++b->next_worker_serial;
	w->pid = h->pid;
	w->layer_first = h->layer_first;
	w->layer_last = h->layer_last;
	w->n_layers = h->n_layers;
	w->vocab = h->vocab;
	w->ctx_len = h->ctx_len;
	w->dim = h->dim;
	w->eos = h->eos_token;
	w->threads = h->threads;
	w->cores = h->cores;
	w->mem_bytes = h->mem_bytes;
	w->max_sessions = h->max_sessions;
	w->max_batch_tokens = h->has_max_batch_tokens ? h->max_batch_tokens : 0;
	itt__settings__init(&w->settings);
	if (h->settings) {
		w->settings.has_threads = h->settings->has_threads;
		w->settings.threads = h->settings->threads;
		w->settings.has_batch_tokens = h->settings->has_batch_tokens;
		w->settings.batch_tokens = h->settings->batch_tokens;
		w->settings.has_slow_ms = h->settings->has_slow_ms;
		w->settings.slow_ms = h->settings->slow_ms;
	}
	if (b->cfg.max_sessions_per_worker > 0 &&
	    w->max_sessions > (uint32_t)b->cfg.max_sessions_per_worker)
		w->max_sessions = (uint32_t)b->cfg.max_sessions_per_worker;
	w->model = m;
	link_init(&w->sessions);
	link_init(&w->reap_link);
	link_init(&w->seen_link);
	link_init(&w->model_link);
	w->last_recv_ms = w->last_hb_ms = b->now_ms;
	link_push_back(&b->workers_seen, &w->seen_link);
	link_push_back(&m->workers, &w->model_link);
	m->n_workers++;
	m->vocab = h->vocab;
	m->ctx_len = h->ctx_len;
	m->eos = h->eos_token;
	m->n_eog = (uint32_t)h->n_eog_tokens;
	if (m->n_eog)
		memcpy(m->eog, h->eog_tokens, m->n_eog * sizeof *m->eog);
	m->n_layers = h->n_layers;
	m->dim = h->dim;
	if (h->n_heads)
		m->n_heads = h->n_heads;
	w->hello = h;
	h = NULL;
	Itt__Welcome wel = ITT__WELCOME__INIT;
	wel.has_heartbeat_ms = wel.has_liveness = true;
	wel.heartbeat_ms = (uint32_t)b->cfg.heartbeat_ms;
	wel.liveness = (uint32_t)b->cfg.liveness;
	back_send(b, w, WIRE_WELCOME, &wel.base);
	LOG_INFO("worker %s registered (%s, host %s, pid %u): model %s, layers [%u, %u) of %u, "
	         "vocab %u, ctx %u, eos %d, %u sessions, %u threads",
	         w->id, peer, w->host, w->pid, m->name, w->layer_first, w->layer_last,
	         w->n_layers, m->vocab, m->ctx_len, m->eos, w->max_sessions, w->threads);
	control_worker_up(b, w);
	req_dispatch(b, m);
	return;
oom_worker:
	worker_destroy(w);
oom:
	back_send_error(b, msg->identity, msg->identity_len, 0, ITT__CODE__INTERNAL, "out of memory");
out:
	if (h)
		itt__worker_hello__free_unpacked(h, NULL);
}

/* A body that does not decode: logged and answered. */
static void back_malformed(struct broker *b, const struct wire_msg *m, const struct worker *w,
                           const char *type)
{
	char why[64];
	snprintf(why, sizeof why, "malformed %s body", type);
	LOG_WARN("back end: worker %s: %s", w->id, why);
	back_send_error(b, m->identity, m->identity_len, 0, ITT__CODE__INVALID_ARGUMENT, why);
}

static void back_unknown(struct broker *b, const struct wire_msg *m)
{
	char peer[32];
	LOG_DEBUG("back end: %s from unknown peer %s: asking it to HELLO", wire_cmd_name(m->cmd),
	          broker_peer_name(m->identity, m->identity_len, peer, sizeof peer));
	back_send_error(b, m->identity, m->identity_len, 0, ITT__CODE__NOT_FOUND,
	                "unknown worker; send HELLO");
}

int back_handle(struct broker *b)
{
	struct wire_msg m;
	struct itt_err err = {0};
	char peer[32];
	int rc =
	    wire_recv(b->back, true, back_accepts, &m, &err, ZMQ_DONTWAIT);
	if (rc < 0)
		LOG_ERROR("back end: receive failed: %s", zmq_strerror(errno));
	if (rc <= 0)
		return 0;
	broker_clock(b);
	if (!err.code && (m.cmd == WIRE_CONTROL_HELLO ||
	              control_is_coord(b, m.identity, m.identity_len))) {
		control_handle(b, &m);
		goto out;
	}
	struct worker *w = map_get(&b->workers, m.identity, m.identity_len);
	if (err.code) {
		LOG_WARN("back end: %s %s: %s: %s", w ? "worker" : "peer",
		         w ? w->id
		           : broker_peer_name(m.identity, m.identity_len, peer, sizeof peer),
		         wire_code_name(err.code), err.msg);
		back_send_error(b, m.identity, m.identity_len, 0, err.code, err.msg);
		goto out;
	}
	if (w && !w->lost) {
		w->last_recv_ms = b->now_ms;
		link_push_back(&b->workers_seen, &w->seen_link);
	}
	if (!w && (m.cmd == WIRE_HEARTBEAT || m.cmd == WIRE_RESULT || m.cmd == WIRE_TELEMETRY)) {
		back_unknown(b, &m);
		goto out;
	}
	switch (m.cmd) {
	case WIRE_HELLO: back_hello(b, &m, w); break;
	case WIRE_HEARTBEAT: {
		Itt__Heartbeat *h = itt__heartbeat__unpack(NULL, m.body_len, m.body);
		if (!h)
			back_malformed(b, &m, w, "Heartbeat");
		else
			itt__heartbeat__free_unpacked(h, NULL);
		break;
	}
	case WIRE_RESULT: {
		Itt__StepResult *res = itt__step_result__unpack(NULL, m.body_len, m.body);
		if (!res) {
			back_malformed(b, &m, w, "StepResult");
			break;
		}
		req_on_result_msg(b, w, res, m.tensor, m.tensor_len);
		itt__step_result__free_unpacked(res, NULL);
		break;
	}
	case WIRE_TELEMETRY: control_telemetry(b, w, &m); break;
	case WIRE_PLACE:
	case WIRE_ROUTES:
	case WIRE_SET:
		back_send_error(b, m.identity, m.identity_len, 0, ITT__CODE__INVALID_ARGUMENT,
		                "only the coordinator sends PLACE, ROUTES and SET here; send "
		                "CONTROL_HELLO first");
		break;
	case WIRE_ERROR: {
		if (!w)
			break; /* never answer an ERROR with an ERROR */
		Itt__Error *e = itt__error__unpack(NULL, m.body_len, m.body);
		if (!e) {
			LOG_WARN("back end: worker %s: malformed Error body", w->id);
			break;
		}
		if (!e->session_id && w->loading) {
			/* the worker refused an ASSIGN: it keeps its range */
			w->loading = false;
			LOG_WARN("worker %s refused ASSIGN: %s: %s; it keeps layers [%u, %u)",
			         w->id, wire_code_name(e->code), e->reason ? e->reason : "",
			         w->layer_first, w->layer_last);
			control_decide(b, w->id, "layers", "(assign)", "refused",
			               e->reason ? e->reason : "", "worker");
			req_dispatch(b, w->model);
		}
		req_on_worker_error(b, w, e);
		itt__error__free_unpacked(e, NULL);
		break;
	}
	case WIRE_BYE:
		if (w)
			back_lose_worker(b, w, "it said BYE");
		break;
	}
out:
	wire_msg_close(&m);
	BROKER_CHECK(b);
	return 1;
}

void back_tick(struct broker *b)
{
	uint64_t dead_ms = (uint64_t)b->cfg.heartbeat_ms * (uint64_t)b->cfg.liveness;
	char why[64];
	while (!link_empty(&b->workers_seen)) {
		struct worker *w = LINK_ENTRY(b->workers_seen.next, struct worker, seen_link);
		uint64_t quiet = b->now_ms - w->last_recv_ms;
		if (quiet < dead_ms)
			break;
		snprintf(why, sizeof why, "silent for %llu ms", (unsigned long long)quiet);
		back_lose_worker(b, w, why);
	}
	for (struct link *l = b->workers_seen.next; l != &b->workers_seen; l = l->next) {
		struct worker *w = LINK_ENTRY(l, struct worker, seen_link);
		if (b->now_ms - w->last_hb_ms >= (uint64_t)b->cfg.heartbeat_ms) {
			Itt__Heartbeat h = ITT__HEARTBEAT__INIT;
			w->last_hb_ms = b->now_ms;
			h.has_time_ms = true;
			h.time_ms = b->now_ms;
			back_send(b, w, WIRE_HEARTBEAT, &h.base);
		}
	}
	/* workers that said OVERLOADED may have room again */
	size_t it = 0;
	void *v;
	while (map_next(&b->models, &it, &v)) {
		struct model *m = v;
		if (m->queue.n)
			req_dispatch(b, m);
	}
}
