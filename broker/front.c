/* front: the client side of the broker (ROUTER front end).
 *
 * Contract (PROTOCOL.md, "Client session"): accepts SUBMIT, CANCEL,
 * HEARTBEAT, STATS and SET (control.c); every other command, bad framing or a body that does
 * not decode is answered with ERROR (code and reason) to the sender and
 * changes nothing else.  SUBMIT is checked in this order: body decodes, API
 * key, fields (validate_generate, token ids against the model's vocabulary
 * when the model is known), idempotency key (a known request is re-sent from
 * seq 0 to the sender and continues there), model known (MODEL_NOT_FOUND),
 * prompt fits the context (UNAVAILABLE), queue not full (OVERLOADED, at
 * once).
 *
 * Client liveness: a client is tracked by routing identity from its first
 * accepted SUBMIT.  Any message from it counts as a sign of life; one with
 * open requests that is silent for --client-timeout-ms, or that cannot be
 * sent to (EHOSTUNREACH, or a full queue), is gone: its requests are
 * cancelled and their sessions closed.  While it has open requests it gets a
 * HEARTBEAT after --client-heartbeat-ms without any other message.  Both
 * scans run on lists ordered by last receive / last send, oldest first. */
#include "broker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const int front_accepts[] = {WIRE_SUBMIT, WIRE_CANCEL, WIRE_HEARTBEAT,
                                    WIRE_STATS,  WIRE_SET,    0};

static void front_mark_gone(struct broker *b, struct client *c)
{
	if (c->gone)
		return;
	c->gone = true;
	link_push_back(&b->reap_clients, &c->reap_link);
}

int front_send_to(struct broker *b, const uint8_t *ident, size_t len, int cmd,
                  const ProtobufCMessage *msg)
{
	if (wire_send(b->front, ident, len, cmd, msg, NULL, 0, ZMQ_DONTWAIT) == 0)
		return 0;
	int e = errno;
	char peer[32];
	struct client *c = map_get(&b->clients, ident, len);
	LOG_WARN("front end: %s to client %s failed: %s%s", wire_cmd_name(cmd),
	         broker_peer_name(ident, len, peer, sizeof peer), zmq_strerror(e),
	         c && c->n_open ? "; cancelling its requests" : "");
	if (c)
		front_mark_gone(b, c);
	return -1;
}

int front_send(struct broker *b, struct client *c, int cmd, const ProtobufCMessage *msg)
{
	if (!c || c->gone)
		return -1;
	if (front_send_to(b, c->ident, c->ident_len, cmd, msg) < 0)
		return -1;
	c->last_send_ms = b->now_ms;
	if (c->n_open)
		link_push_back(&b->clients_sent, &c->sent_link);
	return 0;
}

/* An ERROR that refuses what a client sent: logged (peer, code, reason), then sent. */
static void front_refuse(struct broker *b, const struct wire_msg *m, const char *request_id,
                         int code, const char *reason)
{
	char peer[32];
	const char *what = m->cmd >= 0 && wire_cmd_name(m->cmd) ? wire_cmd_name(m->cmd) : "message";
	LOG_INFO("front end: client %s: %s refused: %s: %s",
	         broker_peer_name(m->identity, m->identity_len, peer, sizeof peer), what,
	         wire_code_name(code), reason);
	front_send_error(b, m->identity, m->identity_len, request_id, code, reason);
}

int front_send_error(struct broker *b, const uint8_t *ident, size_t len, const char *request_id,
                     int code, const char *reason)
{
	Itt__Error e = ITT__ERROR__INIT;
	size_t rl = request_id ? strlen(request_id) : 0;
	/* echo the id only when it is a valid one (1..64 bytes) */
	e.request_id = (char *)(rl >= 1 && rl <= b->lim.max_id_len ? request_id : "");
	e.has_code = true;
	e.code = (Itt__Code)code;
	e.reason = (char *)reason;
	return front_send_to(b, ident, len, WIRE_ERROR, &e.base);
}

static struct client *front_client(struct broker *b, const uint8_t *ident, size_t len)
{
	struct client *c = map_get(&b->clients, ident, len);
	if (c)
		return c;
	c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	memcpy(c->ident, ident, len);
	c->ident_len = len;
	link_init(&c->requests);
	link_init(&c->seen_link);
	link_init(&c->sent_link);
	link_init(&c->reap_link);
	if (map_put(&b->clients, c->ident, c->ident_len, c) < 0) {
		free(c);
		return NULL;
	}
	c->last_recv_ms = c->last_send_ms = b->now_ms;
	link_push_back(&b->clients_seen, &c->seen_link);
	return c;
}

static void front_free_client(struct broker *b, struct client *c)
{
	map_del(&b->clients, c->ident, c->ident_len);
	link_remove(&c->seen_link);
	link_remove(&c->sent_link);
	link_remove(&c->reap_link);
	free(c);
}

void front_attach(struct broker *b, struct client *c, struct request *r)
{
	r->client = c;
	link_push_back(&c->requests, &r->client_link);
	if (c->n_open++ == 0) {
		c->last_send_ms = b->now_ms;
		link_push_back(&b->clients_sent, &c->sent_link);
	}
}

void front_detach(struct broker *b, struct request *r)
{
	struct client *c = r->client;
	(void)b;
	if (!c)
		return;
	link_remove(&r->client_link);
	if (--c->n_open == 0)
		link_remove(&c->sent_link);
	r->client = NULL;
}

void front_lose_client(struct broker *b, struct client *c, const char *why)
{
	char peer[32], reason[128];
	if (c->n_open)
		LOG_INFO("client %s gone (%s): cancelling %u requests",
		         broker_peer_name(c->ident, c->ident_len, peer, sizeof peer), why,
		         c->n_open);
	snprintf(reason, sizeof reason, "client gone: %s", why);
	while (!link_empty(&c->requests))
		req_end(b, LINK_ENTRY(c->requests.next, struct request, client_link),
		        ITT__CODE__CANCELLED, reason);
	front_free_client(b, c);
}

bool front_authorized(const struct broker *b, const char *key)
{
	if (!b->cfg.n_api_keys)
		return true;
	size_t n = key ? strlen(key) : 0;
	bool ok = false;
	for (int k = 0; k < b->cfg.n_api_keys; k++) {
		const char *want = b->cfg.api_keys[k];
		size_t wl = strlen(want);
		unsigned d = wl != n;
		for (size_t i = 0; i < wl; i++) /* no early exit: time independent of the key */
			d |= (unsigned)(uint8_t)want[i] ^ (unsigned)(uint8_t)(i < n ? key[i] : 0);
		ok |= d == 0;
	}
	return ok;
}

static void front_submit(struct broker *b, const struct wire_msg *m)
{
	struct itt_err err;
	Itt__GenerateRequest *g = itt__generate_request__unpack(NULL, m->body_len, m->body);
	if (!g) {
		front_refuse(b, m, NULL, ITT__CODE__INVALID_ARGUMENT,
		             "malformed GenerateRequest body");
		return;
	}
	if (!front_authorized(b, g->api_key)) {
		front_refuse(b, m, g->request_id, ITT__CODE__UNAUTHENTICATED,
		             "api_key is missing or unknown");
		goto out;
	}
	size_t ml = g->model ? strlen(g->model) : 0;
	struct model *mo =
	    ml && ml <= b->lim.max_name_len ? map_get(&b->models, g->model, ml) : NULL;
	if (validate_generate(g, &b->lim, mo ? mo->vocab : 0, &err))
		goto refuse;
	char key[sizeof((struct request *)0)->key];
	size_t cl = strlen(g->client_id), rl = strlen(g->request_id);
	memcpy(key, g->client_id, cl);
	key[cl] = 0;
	memcpy(key + cl + 1, g->request_id, rl);
	struct request *r = map_get(&b->requests, key, cl + 1 + rl);
	if (r) {
		char peer[32];
		LOG_INFO("client %s re-sent request %s of %s (%s): resending %u chunks",
		         broker_peer_name(m->identity, m->identity_len, peer, sizeof peer),
		         r->request_id, r->client_id, r->state == REQ_ENDED ? "ended" : "open",
		         r->n_chunks);
		if (r->state != REQ_ENDED) {
			struct client *c = front_client(b, m->identity, m->identity_len);
			if (!c) {
				front_refuse(b, m, g->request_id, ITT__CODE__INTERNAL,
				             "out of memory");
				goto out;
			}
			if (r->client != c) {
				front_detach(b, r);
				front_attach(b, c, r);
			}
		}
		req_resend(b, r, m->identity, m->identity_len);
		goto out;
	}
	if (!mo) {
		itt_err_set(&err, ITT__CODE__MODEL_NOT_FOUND, "model %s: no worker has registered it",
		            g->model);
		goto refuse;
	}
	if (g->guidance && heads_expand(b, g->guidance, &err))
		goto refuse;
	if (validate_techniques(g->guidance, g->speculative, g->early_exit, mo->n_layers,
	                        mo->n_heads, false, &err))
		goto refuse;
	if (g->n_prompt_tokens >= mo->ctx_len) {
		itt_err_set(&err, ITT__CODE__UNAVAILABLE,
		            "prompt_tokens has %zu ids; model %s has a context of %u tokens",
		            g->n_prompt_tokens, mo->name, mo->ctx_len);
		goto refuse;
	}
	struct worker *route[BROKER_MAX_STAGES];
	if (mo->queue.n >= (size_t)b->cfg.queue_limit && !route_pick(b, mo, 0, route)) {
		itt_err_set(&err, ITT__CODE__OVERLOADED, "model %s: queue full (%zu waiting)",
		            mo->name, mo->queue.n);
		goto refuse;
	}
	struct client *c = front_client(b, m->identity, m->identity_len);
	if (!c || !(r = req_new(b, g, mo, c))) {
		front_refuse(b, m, g->request_id, ITT__CODE__INTERNAL, "out of memory");
		goto out;
	}
	LOG_DEBUG("request %s of %s accepted as session %llu (model %s, %zu waiting)",
	          r->request_id, r->client_id, (unsigned long long)r->session_id, mo->name,
	          mo->queue.n);
	req_dispatch(b, mo);
	return; /* g is the request's now */
refuse:
	front_refuse(b, m, g->request_id, err.code, err.msg);
out:
	itt__generate_request__free_unpacked(g, NULL);
}

static void front_cancel(struct broker *b, const struct wire_msg *m)
{
	struct itt_err err;
	Itt__Cancel *x = itt__cancel__unpack(NULL, m->body_len, m->body);
	if (!x) {
		front_refuse(b, m, NULL, ITT__CODE__INVALID_ARGUMENT, "malformed Cancel body");
		return;
	}
	size_t cl = x->client_id ? strlen(x->client_id) : 0;
	size_t rl = x->request_id ? strlen(x->request_id) : 0;
	if (cl < 1 || cl > b->lim.max_id_len || rl < 1 || rl > b->lim.max_id_len) {
		itt_err_set(&err, ITT__CODE__INVALID_ARGUMENT, "%s has %zu bytes; it must have 1..%u",
		            cl < 1 || cl > b->lim.max_id_len ? "client_id" : "request_id",
		            cl < 1 || cl > b->lim.max_id_len ? cl : rl, b->lim.max_id_len);
		goto refuse;
	}
	char key[sizeof((struct request *)0)->key];
	memcpy(key, x->client_id, cl);
	key[cl] = 0;
	memcpy(key + cl + 1, x->request_id, rl);
	struct request *r = map_get(&b->requests, key, cl + 1 + rl);
	if (!r || r->state == REQ_ENDED) {
		itt_err_set(&err, ITT__CODE__NOT_FOUND, "request %s of client %s is not running",
		            x->request_id, x->client_id);
		goto refuse;
	}
	/* the owner's stream gets the ERROR; a different canceller gets it too */
	bool other = !r->client || r->client->ident_len != m->identity_len ||
	             memcmp(r->client->ident, m->identity, m->identity_len) != 0;
	req_end(b, r, ITT__CODE__CANCELLED, "cancelled by the client");
	if (other)
		front_send_error(b, m->identity, m->identity_len, x->request_id,
		                 ITT__CODE__CANCELLED, "cancelled by the client");
	goto out;
refuse:
	front_refuse(b, m, x->request_id, err.code, err.msg);
out:
	itt__cancel__free_unpacked(x, NULL);
}

static const char *front_worker_state(const struct broker *b, const struct worker *w)
{
	if (w->lost)
		return "lost";
	if (w->loading)
		return "loading";
	if (w->n_sessions >= w->max_sessions || w->busy_until_ms > b->now_ms)
		return "full";
	return w->n_sessions ? "busy" : "ready";
}

static double front_tokens_per_s(const struct broker *b, const struct worker *w)
{
	uint64_t no = b->now_ms / 500, sum = 0;
	for (uint64_t k = 0; k < 8; k++)
		if (w->tok_bucket_no >= k && no - (w->tok_bucket_no - k) < 8)
			sum += w->tok_bucket[(w->tok_bucket_no - k) % 8];
	/* 7 whole buckets and the current partial one */
	double secs = 3.5 + (double)(b->now_ms % 500) / 1e3;
	return (double)sum / secs;
}

/* Counts the running sessions whose route is exactly st[0..n). */
static uint32_t front_route_sessions(struct worker *const *st, uint32_t n)
{
	uint32_t count = 0;
	for (struct link *l = st[0]->sessions.next; l != &st[0]->sessions; l = l->next) {
		const struct stage *s0 = LINK_ENTRY(l, struct stage, link);
		const struct request *r = s0->r;
		bool same = s0 == &r->stages[0] && r->n_stages == n;
		for (uint32_t k = 0; same && k < n; k++)
			same = r->stages[k].w == st[k];
		count += same;
	}
	return count;
}

/* STATS_REPLY: every worker (with telemetry and pins), model, route, and the
 * latest decisions.  Everything points into broker state or the scratch
 * below, which lives until the reply is packed. */
struct front_scratch {
	Itt__WorkerStats *ws, **wp;
	Itt__ModelStats *ms, **mp;
	const char *(*pins)[4];
	Itt__RouteStats *rs, **rp;
	char ***rids; /* per route: worker ids */
	Itt__Decision *ds, **dp;
};

static void front_scratch_free(struct front_scratch *x, size_t nr)
{
	free(x->ws);
	free(x->wp);
	free(x->ms);
	free(x->mp);
	free(x->pins);
	free(x->rs);
	free(x->rp);
	for (size_t i = 0; x->rids && i < nr; i++)
		free(x->rids[i]);
	free(x->rids);
	free(x->ds);
	free(x->dp);
}

static void front_stats(struct broker *b, const struct wire_msg *m)
{
	Itt__StatsRequest *q = itt__stats_request__unpack(NULL, m->body_len, m->body);
	if (!q) {
		front_refuse(b, m, NULL, ITT__CODE__INVALID_ARGUMENT,
		             "malformed StatsRequest body");
		return;
	}
	bool ok = front_authorized(b, q->api_key);
	itt__stats_request__free_unpacked(q, NULL);
	if (!ok) {
		front_refuse(b, m, NULL, ITT__CODE__UNAUTHENTICATED,
		             "api_key is missing or unknown");
		return;
	}
	size_t nw = b->workers.n, nm = b->models.n, nr_cap = nm * BROKER_MAX_ROUTES;
	size_t nd = b->n_dec < BROKER_STATS_DECISIONS ? b->n_dec : BROKER_STATS_DECISIONS;
	struct front_scratch x = {0};
	x.ws = calloc(nw ? nw : 1, sizeof *x.ws);
	x.wp = calloc(nw ? nw : 1, sizeof *x.wp);
	x.ms = calloc(nm ? nm : 1, sizeof *x.ms);
	x.mp = calloc(nm ? nm : 1, sizeof *x.mp);
	x.pins = calloc(nw ? nw : 1, sizeof *x.pins);
	x.rs = calloc(nr_cap ? nr_cap : 1, sizeof *x.rs);
	x.rp = calloc(nr_cap ? nr_cap : 1, sizeof *x.rp);
	x.rids = calloc(nr_cap ? nr_cap : 1, sizeof *x.rids);
	x.ds = calloc(nd ? nd : 1, sizeof *x.ds);
	x.dp = calloc(nd ? nd : 1, sizeof *x.dp);
	Itt__ClusterStats cs = ITT__CLUSTER_STATS__INIT;
	if (!x.ws || !x.wp || !x.ms || !x.mp || !x.pins || !x.rs || !x.rp || !x.rids || !x.ds ||
	    !x.dp) {
		front_refuse(b, m, NULL, ITT__CODE__INTERNAL, "out of memory");
		goto out;
	}
	size_t it = 0;
	void *v;
	while (map_next(&b->models, &it, &v) && cs.n_models < nm) {
		struct model *mo = v;
		Itt__ModelStats *s = &x.ms[cs.n_models];
		itt__model_stats__init(s);
		s->has_queued = s->has_queue_limit = s->has_running = s->has_workers = true;
		s->name = mo->name;
		s->queued = (uint32_t)mo->queue.n;
		s->queue_limit = (uint32_t)b->cfg.queue_limit;
		s->running = mo->n_running;
		s->workers = mo->n_workers;
		x.mp[cs.n_models++] = s;
		for (struct link *l = mo->workers.next; l != &mo->workers && cs.n_workers < nw;
		     l = l->next) {
			struct worker *w = LINK_ENTRY(l, struct worker, model_link);
			Itt__WorkerStats *y = &x.ws[cs.n_workers];
			itt__worker_stats__init(y);
			y->has_layer_first = y->has_layer_last = y->has_n_layers = true;
			y->has_sessions = y->has_max_sessions = y->has_queue = true;
			y->has_tokens_per_s = y->has_last_heartbeat_ms = true;
			y->has_threads = y->has_steps = true;
			y->id = w->id;
			y->host = w->host;
			y->model = mo->name;
			y->layer_first = w->layer_first;
			y->layer_last = w->layer_last;
			y->n_layers = w->n_layers;
			y->state = (char *)front_worker_state(b, w);
			y->sessions = w->n_sessions;
			y->max_sessions = w->max_sessions;
			y->queue = w->in_flight;
			y->tokens_per_s = front_tokens_per_s(b, w);
			y->last_heartbeat_ms = (double)(b->now_ms - w->last_recv_ms);
			y->threads = w->threads;
			y->steps = w->steps;
			y->telemetry = w->telemetry;
			y->n_pinned =
			    control_pin_names(control_pins(b, w->id), x.pins[cs.n_workers]);
			y->pinned = (char **)x.pins[cs.n_workers];
			x.wp[cs.n_workers++] = y;
		}
		struct worker *routes[BROKER_MAX_ROUTES][BROKER_MAX_STAGES];
		uint32_t lens[BROKER_MAX_ROUTES];
		bool published;
		uint32_t n = route_list(b, mo, routes, lens, BROKER_MAX_ROUTES, &published);
		for (uint32_t r = 0; r < n; r++) {
			size_t i = cs.n_routes;
			Itt__RouteStats *rs = &x.rs[i];
			itt__route_stats__init(rs);
			if (!(x.rids[i] = calloc(lens[r], sizeof *x.rids[i]))) {
				front_refuse(b, m, NULL, ITT__CODE__INTERNAL, "out of memory");
				goto out;
			}
			for (uint32_t k = 0; k < lens[r]; k++)
				x.rids[i][k] = routes[r][k]->id;
			rs->model = mo->name;
			rs->worker_ids = x.rids[i];
			rs->n_worker_ids = lens[r];
			rs->source = (char *)(published ? "coordinator" : "auto");
			rs->has_sessions = true;
			rs->sessions = front_route_sessions(routes[r], lens[r]);
			x.rp[cs.n_routes++] = rs;
		}
	}
	for (size_t i = 0; i < nd; i++) {
		const struct decision *d =
		    &b->decisions[(b->dec_head + b->n_dec - nd + i) % BROKER_DECISIONS];
		Itt__Decision *y = &x.ds[i];
		itt__decision__init(y);
		y->has_time_ms = true;
		y->time_ms = d->time_ms;
		y->target = (char *)d->target;
		y->knob = (char *)d->knob;
		y->old_value = (char *)d->old_value;
		y->new_value = (char *)d->new_value;
		y->reason = (char *)d->reason;
		y->source = (char *)d->source;
		x.dp[i] = y;
	}
	cs.workers = x.wp;
	cs.models = x.mp;
	cs.routes = x.rp;
	cs.decisions = x.dp;
	cs.n_decisions = nd;
	cs.has_uptime_ms = cs.has_requests = cs.has_completed = cs.has_failed = true;
	cs.has_coordinator = cs.has_replays = true;
	cs.uptime_ms = b->now_ms - b->t_start_ms;
	cs.requests = b->n_requests;
	cs.completed = b->n_completed;
	cs.failed = b->n_failed;
	cs.coordinator = b->coord_ident_len != 0;
	cs.replays = b->n_replays;
	front_send_to(b, m->identity, m->identity_len, WIRE_STATS_REPLY, &cs.base);
out:
	front_scratch_free(&x, cs.n_routes);
}

int front_handle(struct broker *b)
{
	struct wire_msg m;
	struct itt_err err = {0};
	char peer[32];
	int rc = wire_recv(b->front, true, front_accepts, &m, &err,
	                   ZMQ_DONTWAIT);
	if (rc < 0)
		LOG_ERROR("front end: receive failed: %s", zmq_strerror(errno));
	if (rc <= 0)
		return 0;
	broker_clock(b);
	struct client *c = map_get(&b->clients, m.identity, m.identity_len);
	if (c) {
		c->last_recv_ms = b->now_ms;
		link_push_back(&b->clients_seen, &c->seen_link);
	}
	if (err.code) {
		LOG_INFO("front end: client %s: %s: %s",
		         broker_peer_name(m.identity, m.identity_len, peer, sizeof peer),
		         wire_code_name(err.code), err.msg);
		front_send_error(b, m.identity, m.identity_len, NULL, err.code, err.msg);
		goto out;
	}
	switch (m.cmd) {
	case WIRE_SUBMIT: front_submit(b, &m); break;
	case WIRE_CANCEL: front_cancel(b, &m); break;
	case WIRE_STATS: front_stats(b, &m); break;
	case WIRE_SET: control_front_set(b, &m); break;
	case WIRE_HEARTBEAT: {
		Itt__Heartbeat *h = itt__heartbeat__unpack(NULL, m.body_len, m.body);
		if (!h)
			front_send_error(b, m.identity, m.identity_len, NULL,
			                 ITT__CODE__INVALID_ARGUMENT, "malformed Heartbeat body");
		else
			itt__heartbeat__free_unpacked(h, NULL);
		break;
	}
	}
out:
	wire_msg_close(&m);
	BROKER_CHECK(b);
	return 1;
}

void front_tick(struct broker *b)
{
	char why[64];
	while (!link_empty(&b->clients_seen)) {
		struct client *c = LINK_ENTRY(b->clients_seen.next, struct client, seen_link);
		uint64_t quiet = b->now_ms - c->last_recv_ms;
		if (quiet < (uint64_t)b->cfg.client_timeout_ms)
			break;
		snprintf(why, sizeof why, "silent for %llu ms", (unsigned long long)quiet);
		front_lose_client(b, c, why);
	}
	while (!link_empty(&b->clients_sent)) {
		struct client *c = LINK_ENTRY(b->clients_sent.next, struct client, sent_link);
		if (b->now_ms - c->last_send_ms < (uint64_t)b->cfg.client_heartbeat_ms)
			break;
		Itt__Heartbeat h = ITT__HEARTBEAT__INIT;
		h.has_time_ms = true;
		h.time_ms = b->now_ms;
		if (front_send(b, c, WIRE_HEARTBEAT, &h.base) < 0)
			link_remove(&c->sent_link); /* gone: reaped after this tick */
	}
}
