/* itt-bench-peer: the C peers that tests/bench/bench-broker.py uses to
 * measure itt-broker without any model in the way.
 *
 *   worker  --connect EP [--count N] [--model M] [--vocab V] [--max-sessions S]
 *           [--delay-us D]
 *       N trivial workers (one DEALER each) that answer OPEN/STEP at once (or
 *       after D us) with the deterministic token of tests/integration/
 *       fakeworker.py: token at position p = (token at p-1 * 31 + p) % vocab.
 *   worker  --bind EP      the same worker on a bound ROUTER: the "direct"
 *       peer a client talks to without a broker in between.
 *   latency --broker EP --direct EP [--relay EP] [--n N] [--model M]
 *       round trip of a one-token step: directly (STEP -> RESULT), through the
 *       broker (SUBMIT max_tokens 1 -> first CHUNK) and (--relay) through a
 *       zero-logic relay, taking turns round by round; then the gap between
 *       chunks of one long stream through the broker; prints a JSON line.
 *   relay   --bind EP --direct EP
 *       a zero-logic relay (ROUTER in, DEALER out, one client): the cost of
 *       a ZeroMQ hop alone, the floor under the broker's added latency.
 *   load    --broker EP [--clients C] [--streams K] [--tokens T] [--seconds S]
 *       C clients each keep K streams of T tokens open; counts CHUNKs per
 *       second after a 0.5 s warm-up; prints a JSON line.
 *
 * Contract: a peer for measurements, not a conformant worker (no liveness
 * reconnect: a benchmark restarts it); every received message is still
 * decoded and checked, and garbage is dropped.  SIGINT/SIGTERM stop it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "map.h"
#include "wire.h"

#define PEER_MAX_SOCKS 64

static volatile sig_atomic_t peer_stop;

static void peer_on_signal(int sig)
{
	peer_stop = sig;
}

static uint64_t peer_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

struct peer_opts {
	const char *connect, *bind, *broker, *direct, *relay, *model;
	int count, vocab, max_sessions, delay_us, n, clients, streams, tokens;
	double seconds;
};

static int peer_parse(struct peer_opts *o, int argc, char **argv)
{
	*o = (struct peer_opts){.model = "bench",
	                        .count = 1,
	                        .vocab = 512,
	                        .max_sessions = 1024,
	                        .n = 2000,
	                        .clients = 4,
	                        .streams = 16,
	                        .tokens = 1000,
	                        .seconds = 5};
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help"))
			return 1;
		if (!v)
			return -1;
		i++;
		if (!strcmp(a, "--connect"))
			o->connect = v;
		else if (!strcmp(a, "--bind"))
			o->bind = v;
		else if (!strcmp(a, "--broker"))
			o->broker = v;
		else if (!strcmp(a, "--direct"))
			o->direct = v;
		else if (!strcmp(a, "--relay"))
			o->relay = v;
		else if (!strcmp(a, "--model"))
			o->model = v;
		else if (!strcmp(a, "--count"))
			o->count = atoi(v);
		else if (!strcmp(a, "--vocab"))
			o->vocab = atoi(v);
		else if (!strcmp(a, "--max-sessions"))
			o->max_sessions = atoi(v);
		else if (!strcmp(a, "--delay-us"))
			o->delay_us = atoi(v);
		else if (!strcmp(a, "--n"))
			o->n = atoi(v);
		else if (!strcmp(a, "--clients"))
			o->clients = atoi(v);
		else if (!strcmp(a, "--streams"))
			o->streams = atoi(v);
		else if (!strcmp(a, "--tokens"))
			o->tokens = atoi(v);
		else if (!strcmp(a, "--seconds"))
			o->seconds = atof(v);
		else
			return -1;
	}
	if (o->count < 1 || o->count > PEER_MAX_SOCKS || o->vocab < 2 || o->n < 1 ||
	    o->clients < 1 || o->clients > PEER_MAX_SOCKS || o->streams < 1 || o->tokens < 1)
		return -1;
	return 0;
}

static void *peer_socket(void *ctx, int type, const char *ep, bool bind)
{
	void *s = zmq_socket(ctx, type);
	int zero = 0, hwm = 100000;
	zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
	zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof hwm);
	zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof hwm);
	if ((bind ? zmq_bind(s, ep) : zmq_connect(s, ep)) < 0) {
		fprintf(stderr, "itt-bench-peer: %s %s: %s\n", bind ? "bind" : "connect", ep,
		        zmq_strerror(errno));
		zmq_close(s);
		return NULL;
	}
	return s;
}

/* ------------------------------------------------------------ worker */

struct peer_session {
	uint64_t id;
	int32_t last;
	uint32_t pos;
};

struct peer_pending {
	uint64_t due_us;
	int sock;
	uint8_t ident[WIRE_MAX_IDENTITY];
	size_t ident_len;
	uint64_t session;
	uint32_t step;
	int32_t *prompt; /* owned; step 0 of a text prompt */
	size_t n_prompt;
};

struct peer_worker {
	const struct peer_opts *o;
	void *socks[PEER_MAX_SOCKS];
	bool router;
	int n;
	struct map sessions; /* by session id; ids are unique across the broker */
	struct peer_pending *q;
	size_t q_head, q_len, q_cap;
	uint64_t results;
};

static void peer_hello(struct peer_worker *w, int k)
{
	char id[96];
	Itt__WorkerHello h = ITT__WORKER_HELLO__INIT;
	snprintf(id, sizeof id, "bench:%d:%d", (int)getpid(), k);
	h.worker_id = id;
	h.host = "bench";
	h.model = (char *)w->o->model;
	h.has_pid = h.has_layer_first = h.has_layer_last = h.has_n_layers = true;
	h.has_vocab = h.has_ctx_len = h.has_eos_token = h.has_max_sessions = true;
	h.has_threads = true;
	h.pid = (uint32_t)getpid();
	h.layer_first = 0;
	h.layer_last = h.n_layers = 1;
	h.vocab = (uint32_t)w->o->vocab;
	h.ctx_len = 1u << 20;
	h.eos_token = -1;
	h.max_sessions = (uint32_t)w->o->max_sessions;
	h.threads = 1;
	wire_send(w->socks[k], NULL, 0, WIRE_HELLO, &h.base, NULL, 0, 0);
}

static int peer_queue(struct peer_worker *w, const struct peer_pending *p)
{
	if (w->q_len == w->q_cap) {
		size_t cap = w->q_cap ? 2 * w->q_cap : 1024;
		struct peer_pending *q = malloc(cap * sizeof *q);
		if (!q)
			return -1;
		for (size_t i = 0; i < w->q_len; i++)
			q[i] = w->q[(w->q_head + i) % w->q_cap];
		free(w->q);
		w->q = q;
		w->q_head = 0;
		w->q_cap = cap;
	}
	w->q[(w->q_head + w->q_len++) % w->q_cap] = *p;
	return 0;
}

static void peer_answer(struct peer_worker *w, struct peer_pending *p)
{
	struct peer_session *s = map_get(&w->sessions, &p->session, sizeof p->session);
	if (s) {
		int32_t tok = (int32_t)(((int64_t)s->last * 31 + s->pos) % w->o->vocab);
		uint8_t piece = (uint8_t)(97 + tok % 26);
		Itt__StepResult r = ITT__STEP_RESULT__INIT;
		r.has_session_id = r.has_step = r.has_token = r.has_piece = r.has_n_pos = true;
		r.session_id = p->session;
		r.step = p->step;
		r.token = tok;
		r.piece.data = &piece;
		r.piece.len = 1;
		r.n_pos = s->pos;
		r.prompt_tokens = p->prompt;
		r.n_prompt_tokens = p->n_prompt;
		wire_send(w->socks[p->sock], p->ident_len ? p->ident : NULL, p->ident_len,
		          WIRE_RESULT, &r.base, NULL, 0, 0);
		w->results++;
	}
	free(p->prompt);
}

static void peer_worker_msg(struct peer_worker *w, int k, const struct wire_msg *m)
{
	struct peer_pending p = {.sock = k, .ident_len = m->identity_len};
	memcpy(p.ident, m->identity, m->identity_len);
	if (m->cmd == WIRE_OPEN) {
		Itt__SessionOpen *o = itt__session_open__unpack(NULL, m->body_len, m->body);
		if (!o)
			return;
		struct peer_session *s = calloc(1, sizeof *s);
		if (!s) {
			itt__session_open__free_unpacked(o, NULL);
			return;
		}
		s->id = o->session_id;
		if (o->n_tokens) {
			s->last = o->tokens[o->n_tokens - 1];
			s->pos = (uint32_t)o->n_tokens;
		} else {
			/* BOS, then one token per byte, as fakeworker.py */
			size_t n = o->prompt ? strlen(o->prompt) : 0;
			p.prompt = malloc((n + 1) * sizeof *p.prompt);
			if (p.prompt) {
				p.prompt[0] = 1;
				for (size_t i = 0; i < n; i++)
					p.prompt[i + 1] = (uint8_t)o->prompt[i] % w->o->vocab;
				p.n_prompt = n + 1;
			}
			s->last = n ? (uint8_t)o->prompt[n - 1] % w->o->vocab : 1;
			s->pos = (uint32_t)n + 1;
		}
		struct peer_session *old = map_get(&w->sessions, &s->id, sizeof s->id);
		if (old) {
			map_del(&w->sessions, &old->id, sizeof old->id);
			free(old);
		}
		map_put(&w->sessions, &s->id, sizeof s->id, s);
		p.session = s->id;
		p.step = 0;
		itt__session_open__free_unpacked(o, NULL);
	} else if (m->cmd == WIRE_STEP) {
		Itt__StepRequest *q = itt__step_request__unpack(NULL, m->body_len, m->body);
		if (!q)
			return;
		struct peer_session *s =
		    map_get(&w->sessions, &q->session_id, sizeof q->session_id);
		if (s) {
			for (size_t i = 0; i < q->n_tokens; i++) {
				s->last = q->tokens[i];
				s->pos++;
			}
		}
		p.session = q->session_id;
		p.step = q->step;
		itt__step_request__free_unpacked(q, NULL);
	} else {
		if (m->cmd == WIRE_CLOSE) {
			Itt__SessionClose *c =
			    itt__session_close__unpack(NULL, m->body_len, m->body);
			struct peer_session *s =
			    c ? map_del(&w->sessions, &c->session_id, sizeof c->session_id) : NULL;
			free(s);
			if (c)
				itt__session_close__free_unpacked(c, NULL);
		} else if (m->cmd == WIRE_ERROR) {
			Itt__Error *e = itt__error__unpack(NULL, m->body_len, m->body);
			if (e && e->code == ITT__CODE__NOT_FOUND && !e->session_id)
				peer_hello(w, k); /* a restarted broker */
			if (e)
				itt__error__free_unpacked(e, NULL);
		}
		return;
	}
	if (w->o->delay_us <= 0) {
		peer_answer(w, &p);
		return;
	}
	p.due_us = peer_now_us() + (uint64_t)w->o->delay_us;
	if (peer_queue(w, &p) < 0)
		free(p.prompt);
}

static int peer_worker_run(const struct peer_opts *o, void *ctx)
{
	static const int accepts[] = {WIRE_WELCOME, WIRE_HEARTBEAT, WIRE_ERROR, WIRE_OPEN,
	                              WIRE_STEP,    WIRE_CLOSE,     0};
	struct peer_worker w = {.o = o, .router = o->bind != NULL, .n = o->bind ? 1 : o->count};
	zmq_pollitem_t items[PEER_MAX_SOCKS];
	uint64_t last_hb = 0;
	map_init(&w.sessions);
	for (int k = 0; k < w.n; k++) {
		w.socks[k] = peer_socket(ctx, w.router ? ZMQ_ROUTER : ZMQ_DEALER,
		                         w.router ? o->bind : o->connect, w.router);
		if (!w.socks[k])
			return 1;
		items[k] = (zmq_pollitem_t){w.socks[k], 0, ZMQ_POLLIN, 0};
		if (!w.router)
			peer_hello(&w, k);
	}
	while (!peer_stop) {
		long timeout = 100;
		if (w.q_len) {
			uint64_t now = peer_now_us(), due = w.q[w.q_head].due_us;
			timeout = due > now ? (long)((due - now) / 1000) : 0;
		}
		if (zmq_poll(items, w.n, timeout) < 0 && errno != EINTR)
			break;
		for (int k = 0; k < w.n; k++) {
			for (int i = 0; i < 256; i++) {
				struct wire_msg m;
				struct itt_err err = {0};
				if (wire_recv(w.socks[k], w.router, accepts, &m, &err, ZMQ_DONTWAIT) <= 0)
					break;
				if (!err.code)
					peer_worker_msg(&w, k, &m);
				wire_msg_close(&m);
			}
		}
		uint64_t now = peer_now_us();
		while (w.q_len && w.q[w.q_head].due_us <= now) {
			peer_answer(&w, &w.q[w.q_head]);
			w.q_head = (w.q_head + 1) % w.q_cap;
			w.q_len--;
		}
		if (!w.router && now - last_hb > 200000) {
			Itt__Heartbeat h = ITT__HEARTBEAT__INIT;
			for (int k = 0; k < w.n; k++)
				wire_send(w.socks[k], NULL, 0, WIRE_HEARTBEAT, &h.base, NULL, 0, 0);
			last_hb = now;
		}
	}
	for (int k = 0; k < w.n; k++)
		zmq_close(w.socks[k]);
	size_t it = 0;
	void *v;
	while (map_next(&w.sessions, &it, &v))
		free(v);
	map_free(&w.sessions);
	free(w.q);
	return 0;
}

/* ------------------------------------------------------------ relay */

static int peer_relay(const struct peer_opts *o, void *ctx)
{
	void *in = peer_socket(ctx, ZMQ_ROUTER, o->bind, true);
	void *out = peer_socket(ctx, ZMQ_DEALER, o->direct, false);
	uint8_t ident[WIRE_MAX_IDENTITY];
	size_t ident_len = 0;
	if (!in || !out)
		return 1;
	zmq_pollitem_t items[2] = {{in, 0, ZMQ_POLLIN, 0}, {out, 0, ZMQ_POLLIN, 0}};
	while (!peer_stop) {
		if (zmq_poll(items, 2, 100) < 0 && errno != EINTR)
			break;
		for (int k = 0; k < 2; k++) {
			void *from = k ? out : in, *to = k ? in : out;
			for (;;) {
				zmq_msg_t part;
				zmq_msg_init(&part);
				if (zmq_msg_recv(&part, from, ZMQ_DONTWAIT) < 0) {
					zmq_msg_close(&part);
					break;
				}
				if (k == 0) { /* the client's identity frame: keep it, drop it */
					ident_len = zmq_msg_size(&part);
					if (ident_len > sizeof ident)
						ident_len = sizeof ident;
					memcpy(ident, zmq_msg_data(&part), ident_len);
					zmq_msg_close(&part);
					zmq_msg_init(&part);
					if (zmq_msg_recv(&part, from, 0) < 0) {
						zmq_msg_close(&part);
						break;
					}
				} else {
					zmq_send(to, ident, ident_len, ZMQ_SNDMORE);
				}
				for (;;) { /* forward every part as it is */
					int more = zmq_msg_more(&part);
					zmq_msg_send(&part, to, more ? ZMQ_SNDMORE : 0);
					zmq_msg_close(&part);
					if (!more)
						break;
					zmq_msg_init(&part);
					zmq_msg_recv(&part, from, 0);
				}
			}
		}
	}
	zmq_close(in);
	zmq_close(out);
	return 0;
}

/* ------------------------------------------------------------ clients */

static const int peer_client_accepts[] = {WIRE_CHUNK,     WIRE_DONE,        WIRE_ERROR, WIRE_RESULT,
                                          WIRE_HEARTBEAT, WIRE_STATS_REPLY, 0};

/* Next message of a wanted command on sock within timeout_ms; its command,
 * or -1 on timeout.  m is left open for the caller. */
static int peer_wait(void *sock, int want1, int want2, struct wire_msg *m, long timeout_ms)
{
	uint64_t end = peer_now_us() + (uint64_t)timeout_ms * 1000;
	for (;;) {
		struct itt_err err = {0};
		int rc = wire_recv(sock, false, peer_client_accepts, m, &err, ZMQ_DONTWAIT);
		if (rc > 0) {
			if (!err.code && (m->cmd == want1 || m->cmd == want2))
				return m->cmd;
			if (!err.code && m->cmd == WIRE_ERROR) {
				Itt__Error *e = itt__error__unpack(NULL, m->body_len, m->body);
				fprintf(stderr, "itt-bench-peer: ERROR %s: %s\n",
				        e ? wire_code_name(e->code) : "?",
				        e && e->reason ? e->reason : "?");
				if (e)
					itt__error__free_unpacked(e, NULL);
			}
			wire_msg_close(m);
			continue;
		}
		uint64_t now = peer_now_us();
		if (now >= end || peer_stop)
			return -1;
		zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
		zmq_poll(&it, 1, (long)((end - now) / 1000) + 1);
	}
}

static int peer_cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

struct peer_dist {
	double p50, p99, mean;
};

static struct peer_dist peer_summary(double *v, int n)
{
	struct peer_dist d = {0, 0, 0};
	if (n <= 0)
		return d;
	qsort(v, (size_t)n, sizeof *v, peer_cmp);
	for (int i = 0; i < n; i++)
		d.mean += v[i] / n;
	d.p50 = v[n / 2];
	d.p99 = v[(size_t)n * 99 / 100];
	return d;
}

static void peer_submit(void *sock, const char *model, const char *rid, int max_tokens)
{
	static int32_t prompt[] = {1, 2, 3};
	Itt__GenerateRequest g = ITT__GENERATE_REQUEST__INIT;
	g.request_id = (char *)rid;
	g.client_id = "bench";
	g.model = (char *)model;
	g.prompt_tokens = prompt;
	g.n_prompt_tokens = 3;
	g.has_max_tokens = true;
	g.max_tokens = max_tokens;
	wire_send(sock, NULL, 0, WIRE_SUBMIT, &g.base, NULL, 0, 0);
}

/* Opens session 1 on a worker's ROUTER (or a relay in front of it). */
static int peer_open1(void *sock)
{
	struct wire_msg m;
	Itt__SessionOpen op = ITT__SESSION_OPEN__INIT;
	int32_t one = 1;
	op.has_session_id = true;
	op.session_id = 1;
	op.tokens = &one;
	op.n_tokens = 1;
	wire_send(sock, NULL, 0, WIRE_OPEN, &op.base, NULL, 0, 0);
	if (peer_wait(sock, WIRE_RESULT, 0, &m, 5000) < 0)
		return -1;
	wire_msg_close(&m);
	return 0;
}

/* One timed one-token STEP of session 1: microseconds, or -1. */
static double peer_step1(void *sock, uint32_t step)
{
	struct wire_msg m;
	Itt__StepRequest s = ITT__STEP_REQUEST__INIT;
	int32_t tok = 7;
	s.has_session_id = s.has_step = true;
	s.session_id = 1;
	s.step = step;
	s.tokens = &tok;
	s.n_tokens = 1;
	uint64_t t0 = peer_now_us();
	wire_send(sock, NULL, 0, WIRE_STEP, &s.base, NULL, 0, 0);
	if (peer_wait(sock, WIRE_RESULT, 0, &m, 5000) < 0)
		return -1;
	wire_msg_close(&m);
	return (double)(peer_now_us() - t0);
}

/* One timed SUBMIT max_tokens 1 through the broker, to its CHUNK (then
 * its DONE, untimed): microseconds, or -1. */
static double peer_request1(void *sock, const char *model, int i)
{
	struct wire_msg m;
	char rid[48];
	snprintf(rid, sizeof rid, "lat-%d-%d", (int)getpid(), i); /* new ids: no resend */
	uint64_t t0 = peer_now_us();
	peer_submit(sock, model, rid, 1);
	if (peer_wait(sock, WIRE_CHUNK, 0, &m, 5000) < 0)
		return -1;
	uint64_t t1 = peer_now_us();
	wire_msg_close(&m);
	if (peer_wait(sock, WIRE_DONE, 0, &m, 5000) < 0)
		return -1;
	wire_msg_close(&m);
	return (double)(t1 - t0);
}

static int peer_latency(const struct peer_opts *o, void *ctx)
{
	int n = o->n, rc = 1;
	double *direct = calloc((size_t)n, sizeof *direct);
	double *hop = calloc((size_t)n, sizeof *hop);
	double *gap = calloc((size_t)n, sizeof *gap);
	double *relay = calloc((size_t)n, sizeof *relay);
	double *added = calloc((size_t)n, sizeof *added);
	void *d = peer_socket(ctx, ZMQ_DEALER, o->direct, false);
	void *r = o->relay ? peer_socket(ctx, ZMQ_DEALER, o->relay, false) : NULL;
	void *b = peer_socket(ctx, ZMQ_DEALER, o->broker, false);
	struct wire_msg m;
	char rid[48];
	if (!direct || !hop || !gap || !relay || !added || !d || !b || (o->relay && !r))
		goto out;
	if (peer_open1(d) < 0 || (r && peer_open1(r) < 0)) {
		fprintf(stderr, "itt-bench-peer: no RESULT from %s\n", o->direct);
		goto out;
	}
	/* The paths take turns, so a change in the machine's load hits all of
	 * them alike; the first 100 rounds warm up. */
	for (int i = -100; i < n; i++) {
		double td = peer_step1(d, (uint32_t)(i + 101));
		double tr = r ? peer_step1(r, (uint32_t)(i + 101)) : 0;
		double tb = peer_request1(b, o->model, i);
		if (td < 0 || tr < 0 || tb < 0) {
			fprintf(stderr, "itt-bench-peer: a round trip timed out\n");
			goto out;
		}
		if (i >= 0) {
			direct[i] = td;
			relay[i] = tr;
			hop[i] = tb;
			added[i] = tb - td;
		}
	}
	/* one long stream: the gap between chunks is a step through the broker */
	snprintf(rid, sizeof rid, "lat-%d-stream", (int)getpid());
	peer_submit(b, o->model, rid, n + 101);
	uint64_t prev = 0;
	for (int i = -101; i < n; i++) {
		if (peer_wait(b, WIRE_CHUNK, 0, &m, 5000) < 0)
			goto out;
		wire_msg_close(&m);
		uint64_t t = peer_now_us();
		if (i >= 0)
			gap[i] = (double)(t - prev);
		prev = t;
	}
	if (peer_wait(b, WIRE_DONE, 0, &m, 5000) >= 0)
		wire_msg_close(&m);
	struct peer_dist dd = peer_summary(direct, n), hd = peer_summary(hop, n);
	struct peer_dist gd = peer_summary(gap, n), rd = peer_summary(relay, r ? n : 0);
	struct peer_dist ad = peer_summary(added, n);
	printf("{\"n\":%d,\"added_paired_p50_us\":%.1f,\"added_paired_p99_us\":%.1f,"
	       "\"direct_p50_us\":%.1f,\"direct_p99_us\":%.1f,\"direct_mean_us\":%.1f,"
	       "\"relay_p50_us\":%.1f,\"relay_p99_us\":%.1f,\"relay_mean_us\":%.1f,"
	       "\"broker_p50_us\":%.1f,\"broker_p99_us\":%.1f,\"broker_mean_us\":%.1f,"
	       "\"stream_gap_p50_us\":%.1f,\"stream_gap_p99_us\":%.1f,"
	       "\"stream_gap_mean_us\":%.1f}\n",
	       n, ad.p50, ad.p99, dd.p50, dd.p99, dd.mean, rd.p50, rd.p99, rd.mean, hd.p50, hd.p99,
	       hd.mean, gd.p50, gd.p99, gd.mean);
	rc = 0;
out:
	if (d)
		zmq_close(d);
	if (r)
		zmq_close(r);
	if (b)
		zmq_close(b);
	free(direct);
	free(hop);
	free(gap);
	free(relay);
	free(added);
	return rc;
}

static int peer_load(const struct peer_opts *o, void *ctx)
{
	void *s[PEER_MAX_SOCKS];
	zmq_pollitem_t items[PEER_MAX_SOCKS];
	int next_id = 0, rc = 1, c;
	uint64_t chunks = 0, done = 0, errors = 0;
	char rid[48];
	for (c = 0; c < o->clients; c++) {
		s[c] = peer_socket(ctx, ZMQ_DEALER, o->broker, false);
		if (!s[c])
			goto out;
		items[c] = (zmq_pollitem_t){s[c], 0, ZMQ_POLLIN, 0};
		for (int k = 0; k < o->streams; k++) {
			snprintf(rid, sizeof rid, "load-%d-%d", (int)getpid(), next_id++);
			peer_submit(s[c], o->model, rid, o->tokens);
		}
	}
	uint64_t t_start = peer_now_us(), t_warm = t_start + 500000, t0 = 0, last_hb = t_start;
	uint64_t t_end = t_warm + (uint64_t)(o->seconds * 1e6);
	for (;;) {
		uint64_t now = peer_now_us();
		if (now >= t_end || peer_stop)
			break;
		if (!t0 && now >= t_warm) {
			t0 = now;
			chunks = done = 0;
		}
		zmq_poll(items, o->clients, 10);
		for (c = 0; c < o->clients; c++) {
			for (int i = 0; i < 1024; i++) {
				struct wire_msg m;
				struct itt_err err = {0};
				if (wire_recv(s[c], false, peer_client_accepts, &m, &err, ZMQ_DONTWAIT) <= 0)
					break;
				if (!err.code && m.cmd == WIRE_CHUNK) {
					chunks++;
				} else if (!err.code && (m.cmd == WIRE_DONE || m.cmd == WIRE_ERROR)) {
					if (m.cmd == WIRE_DONE)
						done++;
					else
						errors++;
					snprintf(rid, sizeof rid, "load-%d-%d", (int)getpid(),
					         next_id++);
					peer_submit(s[c], o->model, rid, o->tokens);
				}
				wire_msg_close(&m);
			}
		}
		if (now - last_hb > 500000) {
			Itt__Heartbeat h = ITT__HEARTBEAT__INIT;
			for (c = 0; c < o->clients; c++)
				wire_send(s[c], NULL, 0, WIRE_HEARTBEAT, &h.base, NULL, 0, 0);
			last_hb = now;
		}
	}
	double secs = (double)(peer_now_us() - t0) / 1e6;
	printf("{\"clients\":%d,\"streams\":%d,\"seconds\":%.3f,\"chunks\":%llu,"
	       "\"chunks_per_s\":%.1f,\"requests_done\":%llu,\"errors\":%llu}\n",
	       o->clients, o->clients * o->streams, secs, (unsigned long long)chunks,
	       (double)chunks / secs, (unsigned long long)done, (unsigned long long)errors);
	rc = 0;
out:
	for (int k = 0; k < c; k++)
		zmq_close(s[k]);
	return rc;
}

static void peer_usage(void)
{
	printf("usage: itt-bench-peer worker (--connect EP [--count N] | --bind EP) [--model M]\n"
	       "                             [--vocab V] [--max-sessions S] [--delay-us D]\n"
	       "       itt-bench-peer latency --broker EP --direct EP [--relay EP] [--n N] "
	       "[--model M]\n"
	       "       itt-bench-peer relay --bind EP --direct EP\n"
	       "       itt-bench-peer load --broker EP [--clients C] [--streams K] [--tokens T]\n"
	       "                           [--seconds S] [--model M]\n"
	       "Trivial workers and clients that measure itt-broker "
	       "(see tests/bench/bench-broker.py).\n"
	       "Defaults: model bench, count 1, vocab 512, max-sessions 1024, delay 0, n 2000,\n"
	       "clients 4, streams 16 per client, tokens 1000, seconds 5.\n");
}

int main(int argc, char **argv)
{
	struct peer_opts o;
	if (argc < 2 || !strcmp(argv[1], "--help")) {
		peer_usage();
		return argc < 2 ? 2 : 0;
	}
	int prc = peer_parse(&o, argc, argv);
	if (prc) {
		peer_usage();
		return prc > 0 ? 0 : 2;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = peer_on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	void *ctx = zmq_ctx_new();
	int rc = 2;
	if (!strcmp(argv[1], "worker") && (o.connect || o.bind))
		rc = peer_worker_run(&o, ctx);
	else if (!strcmp(argv[1], "latency") && o.broker && o.direct)
		rc = peer_latency(&o, ctx);
	else if (!strcmp(argv[1], "relay") && o.bind && o.direct)
		rc = peer_relay(&o, ctx);
	else if (!strcmp(argv[1], "load") && o.broker)
		rc = peer_load(&o, ctx);
	else
		peer_usage();
	zmq_ctx_term(ctx);
	return rc;
}
