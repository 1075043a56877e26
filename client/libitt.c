/* libitt: client side of the itt protocol (see libitt.h for the contract).
 *
 * Structure: one DEALER socket per client; every public call that waits runs
 * client_pump, which receives whatever the broker sent, routes it to the
 * stream named by its request_id, and performs the periodic duties
 * (heartbeats, re-sends after broker silence, giving up).
 *
 * Invariants of a stream:
 *  - next_seq is the number of chunks queued so far; a chunk is queued only
 *    when its seq equals next_seq, so the queue holds seq 0, 1, 2, ... in
 *    order.  Chunks that arrive early wait in `pending` (sorted, bounded);
 *    late or repeated ones are dropped.
 *  - at most one final item (DONE or ERROR) is queued, always last; once it
 *    is (final_queued) every further message for the stream is dropped.
 *  - a stream is "open" (heartbeats, re-sends) until its final item is
 *    queued. */
#include "libitt.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <zmq.h>

#include "validate.h"
#include "clock.h"
#include "wire.h"

/* The front end drops messages over 1 MiB (PROTOCOL.md, "Limits"). */
#define LIBITT_MAX_MSG (1u << 20)
/* Out-of-order chunks kept per stream before the rest are dropped. */
#define LIBITT_MAX_PENDING 4096

struct item {
	struct item *next;
	int cmd;               /* WIRE_CHUNK, WIRE_DONE or WIRE_ERROR */
	ProtobufCMessage *msg; /* unpacked body; NULL for a local error */
	uint32_t seq;          /* CHUNK: its seq */
	int code;              /* local error */
	char *reason;          /* local error (owned) */
};

struct itt_stream {
	itt_client_t *client;
	struct itt_stream *prev, *next; /* the client's list */
	char id[72];
	uint8_t *submit; /* packed GenerateRequest, for re-sends */
	size_t submit_len;
	uint32_t next_seq;
	bool final_queued;
	bool ended; /* final item handed out */
	bool gap_resent;
	struct item *head, *tail;
	struct item *pending; /* early chunks, ascending seq */
	size_t n_pending;
	struct item *current; /* the event being handed out */
	char *text;           /* NUL-terminated copy of the current chunk's text */
	size_t text_cap;
	uint64_t heard_ms;       /* submit, or last message from the broker */
	uint64_t quiet_since_ms; /* heard_ms, or the last re-send */
};

/* A request/reply exchange (STATS, SET) in progress. */
struct exchange {
	bool waiting;
	ProtobufCMessage *reply; /* the reply, once it is in */
	struct itt_err err;      /* or the broker's ERROR */
};

struct itt_client {
	void *ctx, *sock;
	char id[72];
	char *api_key;
	struct itt_client_options opt;
	struct itt_stream *streams;
	uint64_t last_send_ms;
	uint64_t n_requests;
	struct exchange stats; /* itt_stats */
	struct exchange set;   /* itt_client_settings, request_id set_id */
	char set_id[32];
	uint64_t n_sets;
};

static const int client_accepts[] = {WIRE_CHUNK,       WIRE_DONE,      WIRE_ERROR, WIRE_HEARTBEAT,
				     WIRE_STATS_REPLY, WIRE_SET_REPLY, 0};

/* The exchange is waiting and its answer (reply or ERROR) is in. */
static bool exchange_over(const struct exchange *x)
{
	return x->waiting && (x->reply || x->err.code);
}

/* Forgets an exchange's reply and error. */
static void exchange_clear(struct exchange *x)
{
	if (x->reply)
		protobuf_c_message_free_unpacked(x->reply, NULL);
	x->reply = NULL;
	memset(&x->err, 0, sizeof x->err);
}

const char *itt_code_name(int code)
{
	return wire_code_name(code);
}

void itt_client_options_default(struct itt_client_options *o)
{
	memset(o, 0, sizeof *o);
	o->heartbeat_ms = 1000;
	o->resubmit_ms = 5000;
	o->give_up_ms = 30000;
	o->linger_ms = 1000;
}

void itt_request_init(struct itt_request *r)
{
	memset(r, 0, sizeof *r);
	r->max_tokens = -1;
}

static uint64_t random_u64(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof v, GRND_NONBLOCK) != (ssize_t)sizeof v) {
		v = (clock_mono_us() << 20) ^ clock_wall_ms() ^ ((uint64_t)getpid() << 40);
		v ^= (uintptr_t)&v;
	}
	return v;
}

/* --- sending --------------------------------------------------------------- */

/* Sends [signature][cmd][body] without waiting; a full queue (EAGAIN) is
 * not an error for callers that re-send on silence anyway. */
static int send_raw(itt_client_t *c, int cmd, const void *body, size_t len)
{
	uint8_t b = (uint8_t)cmd;
	if (zmq_send(c->sock, WIRE_SIGNATURE, WIRE_SIGNATURE_LEN, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
		return -1;
	if (zmq_send(c->sock, &b, 1, ZMQ_SNDMORE) < 0 || zmq_send(c->sock, body, len, 0) < 0)
		return -1;
	c->last_send_ms = clock_mono_ms();
	return 0;
}

static int send_msg(itt_client_t *c, int cmd, const ProtobufCMessage *m)
{
	int rc = wire_send(c->sock, NULL, 0, cmd, m, NULL, 0, ZMQ_DONTWAIT);
	if (rc == 0)
		c->last_send_ms = clock_mono_ms();
	return rc;
}

static int send_cancel(itt_stream_t *s)
{
	Itt__Cancel m = ITT__CANCEL__INIT;
	m.request_id = s->id;
	m.client_id = s->client->id;
	return send_msg(s->client, WIRE_CANCEL, &m.base);
}

static void resend(itt_stream_t *s)
{
	(void)send_raw(s->client, WIRE_SUBMIT, s->submit, s->submit_len);
	s->quiet_since_ms = clock_mono_ms();
}

/* --- client ---------------------------------------------------------------- */

static int sockopt(void *sock, int opt, int v)
{
	return zmq_setsockopt(sock, opt, &v, sizeof v);
}

itt_client_t *itt_client_new(const char *endpoint, const struct itt_client_options *opts,
			     struct itt_err *err)
{
	struct itt_client_options def;
	if (!opts) {
		itt_client_options_default(&def);
		opts = &def;
	}
	if (!endpoint || !*endpoint) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "no broker endpoint given");
		return NULL;
	}
	if (opts->client_id && (!*opts->client_id || strlen(opts->client_id) > 64)) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "client_id has %zu bytes; it must have 1..64", strlen(opts->client_id));
		return NULL;
	}
	if (opts->api_key && strlen(opts->api_key) > 128) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "api_key has %zu bytes; at most 128",
			    strlen(opts->api_key));
		return NULL;
	}
	if (opts->heartbeat_ms <= 0 || opts->resubmit_ms <= 0 || opts->give_up_ms < 0 ||
	    opts->linger_ms < 0) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "heartbeat_ms and resubmit_ms must be > 0, give_up_ms and linger_ms "
			    ">= 0");
		return NULL;
	}
	itt_client_t *c = calloc(1, sizeof *c);
	if (!c) {
		itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		return NULL;
	}
	c->opt = *opts;
	c->opt.client_id = NULL;
	c->opt.api_key = NULL;
	if (opts->client_id)
		snprintf(c->id, sizeof c->id, "%s", opts->client_id);
	else
		snprintf(c->id, sizeof c->id, "c-%016llx", (unsigned long long)random_u64());
	if (opts->api_key && !(c->api_key = strdup(opts->api_key)))
		goto nomem;
	if (!(c->ctx = zmq_ctx_new()) || !(c->sock = zmq_socket(c->ctx, ZMQ_DEALER))) {
		itt_err_set(err, ITT__CODE__INTERNAL, "zmq: %s", zmq_strerror(errno));
		goto fail;
	}
	sockopt(c->sock, ZMQ_LINGER, opts->linger_ms);
	sockopt(c->sock, ZMQ_HANDSHAKE_IVL, 2000);
	sockopt(c->sock, ZMQ_RECONNECT_IVL, 100);
	sockopt(c->sock, ZMQ_RECONNECT_IVL_MAX, 4000);
	sockopt(c->sock, ZMQ_HEARTBEAT_IVL, 1000);
	sockopt(c->sock, ZMQ_HEARTBEAT_TIMEOUT, 3000);
	if (zmq_connect(c->sock, endpoint) < 0) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "cannot connect to \"%s\": %s",
			    endpoint, zmq_strerror(errno));
		goto fail;
	}
	return c;
nomem:
	itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
fail:
	if (c->sock) {
		sockopt(c->sock, ZMQ_LINGER, 0);
		zmq_close(c->sock);
	}
	if (c->ctx)
		zmq_ctx_term(c->ctx);
	free(c->api_key);
	free(c);
	return NULL;
}

const char *itt_client_id(const itt_client_t *c)
{
	return c->id;
}

void itt_client_destroy(itt_client_t **cp)
{
	if (!cp || !*cp)
		return;
	itt_client_t *c = *cp;
	while (c->streams) {
		itt_stream_t *s = c->streams;
		itt_stream_destroy(&s);
	}
	exchange_clear(&c->stats);
	exchange_clear(&c->set);
	zmq_close(c->sock);
	zmq_ctx_term(c->ctx);
	free(c->api_key);
	free(c);
	*cp = NULL;
}

/* --- stream queues --------------------------------------------------------- */

static void item_free(struct item *it)
{
	if (!it)
		return;
	if (it->msg)
		protobuf_c_message_free_unpacked(it->msg, NULL);
	free(it->reason);
	free(it);
}

static void push(itt_stream_t *s, struct item *it)
{
	it->next = NULL;
	if (s->tail)
		s->tail->next = it;
	else
		s->head = it;
	s->tail = it;
}

static void drop_pending(itt_stream_t *s)
{
	while (s->pending) {
		struct item *n = s->pending->next;
		item_free(s->pending);
		s->pending = n;
	}
	s->n_pending = 0;
}

/* Queues the final item; the stream stops being open. */
static void push_final(itt_stream_t *s, struct item *it)
{
	push(s, it);
	s->final_queued = true;
	drop_pending(s);
}

static void push_local_error(itt_stream_t *s, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void push_local_error(itt_stream_t *s, int code, const char *fmt, ...)
{
	struct item *it = calloc(1, sizeof *it);
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (!it || !(it->reason = strdup(buf))) {
		/* Without memory the stream still has to end: a static item is
		 * not possible, so reuse nothing and mark it ended. */
		free(it);
		s->final_queued = true;
		s->ended = true;
		return;
	}
	it->cmd = WIRE_ERROR;
	it->code = code;
	push_final(s, it);
}

static itt_stream_t *find_stream(itt_client_t *c, const char *id)
{
	if (!id)
		return NULL;
	for (itt_stream_t *s = c->streams; s; s = s->next)
		if (!strcmp(s->id, id))
			return s;
	return NULL;
}

static void on_chunk(itt_client_t *c, Itt__StreamChunk *m)
{
	itt_stream_t *s = find_stream(c, m->request_id);
	if (!s || s->final_queued || m->seq < s->next_seq) {
		protobuf_c_message_free_unpacked(&m->base, NULL);
		return;
	}
	struct item *it = calloc(1, sizeof *it);
	if (!it) {
		protobuf_c_message_free_unpacked(&m->base, NULL);
		return;
	}
	it->cmd = WIRE_CHUNK;
	it->msg = &m->base;
	it->seq = m->seq;
	if (m->seq > s->next_seq) {
		/* Early: keep it sorted in pending, once per seq. */
		struct item **pp = &s->pending;
		while (*pp && (*pp)->seq < it->seq)
			pp = &(*pp)->next;
		if ((*pp && (*pp)->seq == it->seq) || s->n_pending >= LIBITT_MAX_PENDING) {
			item_free(it);
			return;
		}
		it->next = *pp;
		*pp = it;
		s->n_pending++;
		return;
	}
	push(s, it);
	s->next_seq++;
	while (s->pending && s->pending->seq <= s->next_seq) {
		struct item *p = s->pending;
		s->pending = p->next;
		s->n_pending--;
		if (p->seq == s->next_seq) {
			push(s, p);
			s->next_seq++;
		} else {
			item_free(p);
		}
	}
}

/* The open stream a DONE or ERROR is for, or NULL (m freed) when there is
 * none: unknown, or it has already ended. */
static itt_stream_t *final_stream(itt_client_t *c, const char *request_id, ProtobufCMessage *m)
{
	itt_stream_t *s = find_stream(c, request_id);
	if (!s || s->final_queued) {
		protobuf_c_message_free_unpacked(m, NULL);
		return NULL;
	}
	return s;
}

/* Queues the broker's DONE or ERROR as the stream's final item. */
static void push_final_msg(itt_stream_t *s, int cmd, ProtobufCMessage *m)
{
	struct item *it = calloc(1, sizeof *it);
	if (!it) {
		protobuf_c_message_free_unpacked(m, NULL);
		push_local_error(s, ITT__CODE__INTERNAL, "out of memory");
		return;
	}
	it->cmd = cmd;
	it->msg = m;
	push_final(s, it);
}

/* The code of a broker's ERROR (one without a code is INTERNAL). */
static int error_code(const Itt__Error *m)
{
	return m->code ? (int)m->code : ITT__CODE__INTERNAL;
}

static void on_done(itt_client_t *c, Itt__StreamDone *m)
{
	itt_stream_t *s = final_stream(c, m->request_id, &m->base);
	if (!s)
		return;
	if (m->n_chunks > s->next_seq) {
		uint32_t n = m->n_chunks, got = s->next_seq;
		protobuf_c_message_free_unpacked(&m->base, NULL);
		if (!s->gap_resent) {
			/* The broker re-sends the whole stream to a repeated SUBMIT. */
			s->gap_resent = true;
			resend(s);
		} else {
			push_local_error(s, ITT__CODE__INTERNAL,
					 "stream ended after %u chunks but only %u arrived", n,
					 got);
		}
		return;
	}
	push_final_msg(s, WIRE_DONE, &m->base);
}

static void on_error(itt_client_t *c, Itt__Error *m)
{
	bool no_request = !m->request_id || !*m->request_id;
	struct exchange *x = NULL;
	if (c->set.waiting && !c->set.reply && !c->set.err.code &&
	    (no_request || !strcmp(m->request_id, c->set_id))) {
		/* The answer to SET (one about no request counts too: a broker
		 * may refuse the message before reading its request_id). */
		x = &c->set;
	} else if (no_request) {
		/* Not about a request: the answer to STATS (e.g. UNAUTHENTICATED),
		 * or a complaint about framing that no stream can act on. */
		if (c->stats.waiting && !c->stats.err.code)
			x = &c->stats;
	} else {
		itt_stream_t *s = final_stream(c, m->request_id, &m->base);
		if (s)
			push_final_msg(s, WIRE_ERROR, &m->base);
		return;
	}
	if (x)
		itt_err_set(&x->err, error_code(m), "%s", m->reason ? m->reason : "");
	protobuf_c_message_free_unpacked(&m->base, NULL);
}

static void on_message(itt_client_t *c, struct wire_msg *w)
{
	const uint8_t *b = w->body;
	size_t n = w->body_len;
	switch (w->cmd) {
	case WIRE_CHUNK: {
		Itt__StreamChunk *m = itt__stream_chunk__unpack(NULL, n, b);
		if (m)
			on_chunk(c, m);
		break;
	}
	case WIRE_DONE: {
		Itt__StreamDone *m = itt__stream_done__unpack(NULL, n, b);
		if (m)
			on_done(c, m);
		break;
	}
	case WIRE_ERROR: {
		Itt__Error *m = itt__error__unpack(NULL, n, b);
		if (m)
			on_error(c, m);
		break;
	}
	case WIRE_STATS_REPLY: {
		Itt__ClusterStats *m = itt__cluster_stats__unpack(NULL, n, b);
		if (m && c->stats.waiting && !c->stats.reply)
			c->stats.reply = &m->base;
		else if (m)
			itt__cluster_stats__free_unpacked(m, NULL);
		break;
	}
	case WIRE_SET_REPLY: {
		Itt__SettingsReply *m = itt__settings_reply__unpack(NULL, n, b);
		if (m && c->set.waiting && !c->set.reply && !c->set.err.code &&
		    (!m->request_id || !strcmp(m->request_id, c->set_id)))
			c->set.reply = &m->base;
		else if (m)
			itt__settings_reply__free_unpacked(m, NULL);
		break;
	}
	default: /* HEARTBEAT: its arrival is all that counts */ break;
	}
}

/* Heartbeats, re-sends and giving up; returns ms until the next duty. */
static int duties(itt_client_t *c, uint64_t now)
{
	int open = 0;
	uint64_t wait = c->opt.heartbeat_ms;
	for (itt_stream_t *s = c->streams; s; s = s->next) {
		if (s->final_queued)
			continue;
		if (c->opt.give_up_ms && now - s->heard_ms >= (uint64_t)c->opt.give_up_ms) {
			(void)send_cancel(s);
			push_local_error(s, ITT__CODE__UNAVAILABLE,
					 "no answer from the broker for %d ms", c->opt.give_up_ms);
			continue;
		}
		open++;
		if (now - s->quiet_since_ms >= (uint64_t)c->opt.resubmit_ms)
			resend(s);
		uint64_t due = s->quiet_since_ms + (uint64_t)c->opt.resubmit_ms - now;
		if (due < wait)
			wait = due;
		if (c->opt.give_up_ms) {
			due = s->heard_ms + (uint64_t)c->opt.give_up_ms - now;
			if (due < wait)
				wait = due;
		}
	}
	if (open) {
		if (now - c->last_send_ms >= (uint64_t)c->opt.heartbeat_ms) {
			Itt__Heartbeat hb = ITT__HEARTBEAT__INIT;
			hb.has_time_ms = 1;
			hb.time_ms = clock_wall_ms();
			(void)send_msg(c, WIRE_HEARTBEAT, &hb.base);
			/* a full send queue must not make this spin */
			c->last_send_ms = now;
		}
		uint64_t due = c->last_send_ms + (uint64_t)c->opt.heartbeat_ms - now;
		if (due < wait)
			wait = due;
	}
	return (int)(wait > 0 ? wait : 1);
}

/* Ends every open stream with a local error (the socket failed). */
static void fail_all(itt_client_t *c, int e)
{
	for (itt_stream_t *s = c->streams; s; s = s->next)
		if (!s->final_queued)
			push_local_error(s, ITT__CODE__INTERNAL, "client socket: %s",
					 zmq_strerror(e));
}

/* Runs I/O until `want` has a queued item, a STATS or SET answer is in (when
 * waiting for one), or timeout_ms passes (< 0: no limit).  Returns 0, or
 * -1 on a socket error (the open streams have then been failed). */
static int client_pump(itt_client_t *c, int timeout_ms, itt_stream_t *want)
{
	uint64_t start = clock_mono_ms();
	for (;;) {
		/* Drain everything that is already here. */
		for (;;) {
			struct wire_msg w;
			struct itt_err err = {0};
			int rc = wire_recv(c->sock, false, client_accepts, &w, &err, ZMQ_DONTWAIT);
			if (rc == 0)
				break;
			if (rc < 0) {
				int e = errno;
				fail_all(c, e);
				return -1;
			}
			uint64_t now = clock_mono_ms();
			for (itt_stream_t *s = c->streams; s; s = s->next)
				s->heard_ms = s->quiet_since_ms = now;
			if (!err.code)
				on_message(c, &w);
			wire_msg_close(&w);
		}
		uint64_t now = clock_mono_ms();
		int wait = duties(c, now);
		if ((want && want->head) || exchange_over(&c->stats) || exchange_over(&c->set))
			return 0;
		if (timeout_ms >= 0) {
			uint64_t spent = now - start;
			if (spent >= (uint64_t)timeout_ms)
				return 0;
			if ((uint64_t)wait > (uint64_t)timeout_ms - spent)
				wait = (int)((uint64_t)timeout_ms - spent);
		}
		zmq_pollitem_t pi = {c->sock, 0, ZMQ_POLLIN, 0};
		if (zmq_poll(&pi, 1, wait) < 0) {
			if (errno == EINTR)
				return 0; /* let the caller look at its signals */
			fail_all(c, errno);
			return -1;
		}
	}
}

int itt_client_poll(itt_client_t *c, int timeout_ms)
{
	return client_pump(c, timeout_ms, NULL);
}

/* --- submit ---------------------------------------------------------------- */

itt_stream_t *itt_submit(itt_client_t *c, const struct itt_request *req, struct itt_err *err)
{
	char idbuf[32];
	const char *id = req->request_id;
	if (!id) {
		snprintf(idbuf, sizeof idbuf, "r%llu", (unsigned long long)++c->n_requests);
		id = idbuf;
	}
	if (find_stream(c, id)) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "request_id \"%s\" is already in use on this client", id);
		return NULL;
	}
	if (req->prompt && *req->prompt && req->n_prompt_tokens) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "prompt and prompt_tokens are exclusive");
		return NULL;
	}
	const struct itt_sampling *sp = &req->sampling;
	Itt__SamplingParams smp = ITT__SAMPLING_PARAMS__INIT;
	smp.has_temperature = !!(sp->set & ITT_SAMPLING_TEMPERATURE);
	smp.temperature = sp->temperature;
	smp.has_top_k = !!(sp->set & ITT_SAMPLING_TOP_K);
	smp.top_k = sp->top_k;
	smp.has_top_p = !!(sp->set & ITT_SAMPLING_TOP_P);
	smp.top_p = sp->top_p;
	smp.has_min_p = !!(sp->set & ITT_SAMPLING_MIN_P);
	smp.min_p = sp->min_p;
	smp.has_typical_p = !!(sp->set & ITT_SAMPLING_TYPICAL_P);
	smp.typical_p = sp->typical_p;
	smp.has_repeat_penalty = !!(sp->set & ITT_SAMPLING_REPEAT_PENALTY);
	smp.repeat_penalty = sp->repeat_penalty;
	smp.has_repeat_last_n = !!(sp->set & ITT_SAMPLING_REPEAT_LAST_N);
	smp.repeat_last_n = sp->repeat_last_n;
	smp.has_presence_penalty = !!(sp->set & ITT_SAMPLING_PRESENCE_PENALTY);
	smp.presence_penalty = sp->presence_penalty;
	smp.has_frequency_penalty = !!(sp->set & ITT_SAMPLING_FREQUENCY_PENALTY);
	smp.frequency_penalty = sp->frequency_penalty;
	/* Always a seed, so that a re-sent SUBMIT reproduces the same stream. */
	smp.has_seed = 1;
	smp.seed = (sp->set & ITT_SAMPLING_SEED) ? sp->seed : random_u64() >> 1;

	Itt__LogitBias *bias = NULL, **biasp = NULL;
	Itt__ChatMessage *msgs = NULL, **msgp = NULL;
	itt_stream_t *s = NULL;
	uint8_t *buf = NULL;
	size_t nm = req->messages ? req->n_messages : 0;
	size_t nb = sp->logit_bias ? sp->n_logit_bias : 0;
	if (nb > 1024) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "sampling.logit_bias has %zu entries; at most 1024", nb);
		return NULL;
	}
	if (nb && (!(bias = calloc(nb, sizeof *bias)) || !(biasp = calloc(nb, sizeof *biasp)))) {
		itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < nb; i++) {
		Itt__LogitBias init = ITT__LOGIT_BIAS__INIT;
		bias[i] = init;
		bias[i].has_token = bias[i].has_bias = 1;
		bias[i].token = sp->logit_bias[i].token;
		bias[i].bias = sp->logit_bias[i].bias;
		biasp[i] = &bias[i];
	}
	smp.n_logit_bias = nb;
	smp.logit_bias = biasp;
	if (nm > 4096) { /* validate_generate names the real limit */
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "messages has %zu entries", nm);
		goto fail;
	}
	if (nm && (!(msgs = calloc(nm, sizeof *msgs)) || !(msgp = calloc(nm, sizeof *msgp)))) {
		itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < nm; i++) {
		Itt__ChatMessage init = ITT__CHAT_MESSAGE__INIT;
		msgs[i] = init;
		msgs[i].role = (char *)(req->messages[i].role ? req->messages[i].role : "");
		msgs[i].content =
		    (char *)(req->messages[i].content ? req->messages[i].content : "");
		msgp[i] = &msgs[i];
	}

	Itt__GenerateRequest m = ITT__GENERATE_REQUEST__INIT;
	m.request_id = (char *)id;
	m.client_id = c->id;
	m.model = (char *)(req->model ? req->model : "");
	m.prompt = (char *)(req->prompt && *req->prompt ? req->prompt : NULL);
	m.prompt_tokens = (int32_t *)req->prompt_tokens;
	m.n_prompt_tokens = req->prompt_tokens ? req->n_prompt_tokens : 0;
	m.messages = msgp;
	m.n_messages = nm;
	m.chat_template = (char *)req->chat_template;
	m.has_max_tokens = req->max_tokens >= 0;
	m.max_tokens = req->max_tokens;
	m.sampling = &smp;
	m.stop = (char **)req->stop;
	m.n_stop = req->stop ? req->n_stop : 0;
	for (size_t i = 0; i < m.n_stop; i++)
		if (!m.stop[i]) {
			itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "stop[%zu] is NULL", i);
			goto fail;
		}
	m.has_deadline_ms = req->deadline_ms > 0;
	m.deadline_ms = req->deadline_ms;
	m.has_priority = req->priority != 0;
	m.priority = req->priority;
	m.tenant = (char *)(req->tenant && *req->tenant ? req->tenant : NULL);
	m.api_key = c->api_key;

	Itt__Guidance gm = ITT__GUIDANCE__INIT;
	Itt__Speculative spm = ITT__SPECULATIVE__INIT;
	Itt__EarlyExit eem = ITT__EARLY_EXIT__INIT;
	if (req->guidance) {
		const struct itt_guidance *g = req->guidance;
		gm.heads = (char **)g->heads;
		gm.n_heads = g->heads ? g->n_heads : 0;
		gm.head_set = (char *)g->head_set;
		gm.has_scale = 1;
		gm.scale = g->scale;
		gm.has_blend = g->blend >= 0;
		gm.blend = g->blend;
		gm.negative_prompt = (char *)g->negative_prompt;
		for (size_t i = 0; i < gm.n_heads; i++)
			if (!gm.heads[i]) {
				itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
					    "guidance.heads[%zu] is NULL", i);
				goto fail;
			}
		m.guidance = &gm;
	}
	if (req->speculative) {
		const struct itt_speculative *x = req->speculative;
		spm.draft = (char *)x->draft;
		spm.has_max_draft = 1;
		spm.max_draft = x->max_draft;
		spm.has_exit_layers = x->exit_layers > 0;
		spm.exit_layers = x->exit_layers;
		spm.has_ngram_min = x->ngram_min > 0;
		spm.ngram_min = x->ngram_min;
		spm.has_ngram_max = x->ngram_max > 0;
		spm.ngram_max = x->ngram_max;
		m.speculative = &spm;
	}
	if (req->early_exit) {
		eem.has_threshold = 1;
		eem.threshold = req->early_exit->threshold;
		eem.layers = (uint32_t *)req->early_exit->layers;
		eem.n_layers = req->early_exit->layers ? req->early_exit->n_layers : 0;
		m.early_exit = &eem;
	}

	struct wire_limits lim;
	struct itt_err verr;
	wire_limits_default(&lim);
	int code = validate_generate(&m, &lim, 0, &verr);
	if (code) {
		itt_err_set(err, code, "%s", verr.msg);
		goto fail;
	}
	size_t len = itt__generate_request__get_packed_size(&m);
	if (len + WIRE_SIGNATURE_LEN + 1 > LIBITT_MAX_MSG) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "request of %zu bytes exceeds the broker's message limit of %u bytes",
			    len, LIBITT_MAX_MSG);
		goto fail;
	}
	if (!(s = calloc(1, sizeof *s)) || !(buf = malloc(len ? len : 1))) {
		itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		goto fail;
	}
	itt__generate_request__pack(&m, buf);
	s->client = c;
	snprintf(s->id, sizeof s->id, "%s", id);
	s->submit = buf;
	s->submit_len = len;
	s->heard_ms = s->quiet_since_ms = clock_mono_ms();
	if (send_raw(c, WIRE_SUBMIT, buf, len) < 0 && errno != EAGAIN) {
		/* EAGAIN: the queue to the broker is full; the silence timer
		 * re-sends it. */
		itt_err_set(err, ITT__CODE__INTERNAL, "cannot send SUBMIT: %s",
			    zmq_strerror(errno));
		goto fail;
	}
	s->next = c->streams;
	if (c->streams)
		c->streams->prev = s;
	c->streams = s;
	free(bias);
	free(biasp);
	free(msgs);
	free(msgp);
	return s;
fail:
	free(buf);
	free(s);
	free(bias);
	free(biasp);
	free(msgs);
	free(msgp);
	return NULL;
}

/* --- streams --------------------------------------------------------------- */

static void fill_event(itt_stream_t *s, struct item *it, struct itt_event *ev)
{
	if (it->cmd == WIRE_CHUNK) {
		const Itt__StreamChunk *m = (const Itt__StreamChunk *)it->msg;
		size_t n = m->text.len;
		ev->type = ITT_EVENT_CHUNK;
		ev->seq = m->seq;
		ev->tokens = m->tokens;
		ev->n_tokens = m->n_tokens;
		if (n + 1 > s->text_cap) {
			char *t = realloc(s->text, n + 1);
			if (t) {
				s->text = t;
				s->text_cap = n + 1;
			} else {
				n = s->text_cap ? s->text_cap - 1
						: 0; /* truncated, never overrun */
			}
		}
		if (s->text) {
			if (n)
				memcpy(s->text, m->text.data, n);
			s->text[n] = 0;
		}
		ev->text = s->text ? s->text : "";
		ev->text_len = s->text ? n : 0;
	} else if (it->cmd == WIRE_DONE) {
		const Itt__StreamDone *m = (const Itt__StreamDone *)it->msg;
		ev->type = ITT_EVENT_DONE;
		ev->stop_reason = m->stop_reason ? m->stop_reason : "";
		ev->prompt_tokens = m->prompt_tokens;
		ev->n_prompt_tokens = m->n_prompt_tokens;
		ev->n_generated = m->n_tokens;
		ev->n_chunks = m->n_chunks;
		ev->seed = m->seed;
		ev->replays = m->replays;
		if (m->timings) {
			ev->queue_ms = m->timings->queue_ms;
			ev->first_token_ms = m->timings->first_token_ms;
			ev->total_ms = m->timings->total_ms;
		}
	} else if (it->msg) {
		const Itt__Error *m = (const Itt__Error *)it->msg;
		ev->type = ITT_EVENT_ERROR;
		ev->code = error_code(m);
		ev->reason = m->reason ? m->reason : "";
	} else {
		ev->type = ITT_EVENT_ERROR;
		ev->code = it->code;
		ev->reason = it->reason;
	}
}

int itt_stream_next(itt_stream_t *s, struct itt_event *ev, int timeout_ms)
{
	memset(ev, 0, sizeof *ev);
	item_free(s->current);
	s->current = NULL;
	if (s->ended)
		return -1;
	(void)client_pump(s->client, s->head ? 0 : timeout_ms, s);
	struct item *it = s->head;
	if (!it) {
		if (s->ended) /* ended without an item: out of memory */
			return -1;
		return 0;
	}
	s->head = it->next;
	if (!s->head)
		s->tail = NULL;
	it->next = NULL;
	s->current = it;
	fill_event(s, it, ev);
	if (ev->type != ITT_EVENT_CHUNK)
		s->ended = true;
	return 1;
}

int itt_stream_cancel(itt_stream_t *s)
{
	if (s->final_queued)
		return -1;
	return send_cancel(s) < 0 ? -1 : 0;
}

const char *itt_stream_id(const itt_stream_t *s)
{
	return s->id;
}

bool itt_stream_ended(const itt_stream_t *s)
{
	return s->ended;
}

void itt_stream_destroy(itt_stream_t **sp)
{
	if (!sp || !*sp)
		return;
	itt_stream_t *s = *sp;
	itt_client_t *c = s->client;
	if (!s->final_queued)
		(void)send_cancel(s);
	if (s->prev)
		s->prev->next = s->next;
	else
		c->streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	while (s->head) {
		struct item *n = s->head->next;
		item_free(s->head);
		s->head = n;
	}
	drop_pending(s);
	item_free(s->current);
	free(s->text);
	free(s->submit);
	free(s);
	*sp = NULL;
}

/* --- stats ----------------------------------------------------------------- */

/* Sends cmd and pumps the socket until x has its reply or an ERROR, or
 * timeout_ms passes (< 0: no limit).  Returns 0 with *out the reply, else
 * the broker's ERROR (copied to *err) or a socket failure, else
 * UNAVAILABLE: no `what` in time. */
static int client_exchange(itt_client_t *c, struct exchange *x, int cmd, const ProtobufCMessage *m,
			   const char *what, int timeout_ms, ProtobufCMessage **out,
			   struct itt_err *err)
{
	*out = NULL;
	exchange_clear(x);
	if (send_msg(c, cmd, m) < 0)
		return itt_err_set(err, ITT__CODE__UNAVAILABLE, "cannot send %s: %s",
				   wire_cmd_name(cmd), zmq_strerror(errno));
	x->waiting = true;
	uint64_t start = clock_mono_ms();
	for (;;) {
		uint64_t spent = clock_mono_ms() - start;
		if (x->reply || x->err.code || (timeout_ms >= 0 && spent >= (uint64_t)timeout_ms))
			break;
		if (client_pump(c, timeout_ms < 0 ? -1 : (int)((uint64_t)timeout_ms - spent),
				NULL) < 0) {
			itt_err_set(&x->err, ITT__CODE__INTERNAL, "client socket: %s",
				    zmq_strerror(errno));
			break;
		}
	}
	x->waiting = false;
	if (x->reply) {
		*out = x->reply;
		x->reply = NULL;
		return 0;
	}
	if (x->err.code) {
		if (err)
			*err = x->err;
		return x->err.code;
	}
	return itt_err_set(err, ITT__CODE__UNAVAILABLE, "no %s from the broker within %d ms", what,
			   timeout_ms);
}

int itt_stats(itt_client_t *c, Itt__ClusterStats **out, int timeout_ms, struct itt_err *err)
{
	Itt__StatsRequest m = ITT__STATS_REQUEST__INIT;
	m.api_key = c->api_key;
	ProtobufCMessage *r;
	int rc = client_exchange(c, &c->stats, WIRE_STATS, &m.base, "STATS_REPLY", timeout_ms, &r,
				 err);
	*out = (Itt__ClusterStats *)r;
	return rc;
}

void itt_stats_free(Itt__ClusterStats **sp)
{
	if (sp && *sp) {
		itt__cluster_stats__free_unpacked(*sp, NULL);
		*sp = NULL;
	}
}

/* --- settings -------------------------------------------------------------- */

static const struct {
	unsigned bit;
	const char *name;
	long lo, hi;
} knobs[] = {
	{ITT_KNOB_THREADS, "threads", 1, 64},
	{ITT_KNOB_BATCH_TOKENS, "batch_tokens", 1, UINT32_MAX},
	{ITT_KNOB_SLOW_MS, "slow_ms", 0, 10000},
};
#define N_KNOBS (sizeof knobs / sizeof knobs[0])

const char *itt_knob_name(unsigned knob)
{
	for (size_t i = 0; i < N_KNOBS; i++)
		if (knobs[i].bit == knob)
			return knobs[i].name;
	return NULL;
}

unsigned itt_knob_parse(const char *name)
{
	for (size_t i = 0; name && i < N_KNOBS; i++)
		if (!strcmp(knobs[i].name, name))
			return knobs[i].bit;
	return 0;
}

int itt_knob_check(unsigned knob, long value, struct itt_err *err)
{
	for (size_t i = 0; i < N_KNOBS; i++) {
		if (knobs[i].bit != knob)
			continue;
		if (value < knobs[i].lo || value > knobs[i].hi) {
			if (knob == ITT_KNOB_BATCH_TOKENS)
				return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
						   "batch_tokens must be >= 1 (at most the "
						   "worker's max_batch_tokens), got %ld",
						   value);
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
					   "%s must be in %ld..%ld, got %ld", knobs[i].name,
					   knobs[i].lo, knobs[i].hi, value);
		}
		return 0;
	}
	return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "unknown knob (bit 0x%x)", knob);
}

/* Appends the names of the knobs in mask to v (room for N_KNOBS). */
static size_t knob_names(unsigned mask, char **v)
{
	size_t n = 0;
	for (size_t i = 0; i < N_KNOBS; i++)
		if (mask & knobs[i].bit)
			v[n++] = (char *)knobs[i].name;
	return n;
}

int itt_client_settings(itt_client_t *c, const struct itt_settings_change *ch,
			Itt__SettingsReply **out, int timeout_ms, struct itt_err *err)
{
	unsigned unknown = (ch->set | ch->pin_knobs | ch->unpin_knobs) & ~(unsigned)ITT_KNOBS_ALL;
	*out = NULL;
	if (!ch->worker_id || !*ch->worker_id || strlen(ch->worker_id) > 128)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				   "worker_id must have 1..128 bytes");
	if (unknown)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				   "unknown knob bits 0x%x (knobs: threads, batch_tokens, slow_ms)",
				   unknown);
	if (!ch->set && !ch->pin_knobs && !ch->unpin_knobs)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				   "nothing to change: no knob to set, pin or unpin");
	if (ch->pin && !ch->set)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				   "pin applies to the knobs set, and none is");
	if ((ch->pin_knobs | (ch->pin ? ch->set : 0)) & ch->unpin_knobs)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				   "a knob cannot be pinned and unpinned at once");
	if (ch->reason && strlen(ch->reason) > 256)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				   "reason has %zu bytes; at most 256", strlen(ch->reason));
	const uint32_t vals[] = {ch->threads, ch->batch_tokens, ch->slow_ms};
	for (size_t i = 0; i < N_KNOBS; i++)
		if ((ch->set & knobs[i].bit) && itt_knob_check(knobs[i].bit, (long)vals[i], err))
			return ITT__CODE__INVALID_ARGUMENT;

	Itt__Settings st = ITT__SETTINGS__INIT;
	st.has_threads = !!(ch->set & ITT_KNOB_THREADS);
	st.threads = ch->threads;
	st.has_batch_tokens = !!(ch->set & ITT_KNOB_BATCH_TOKENS);
	st.batch_tokens = ch->batch_tokens;
	st.has_slow_ms = !!(ch->set & ITT_KNOB_SLOW_MS);
	st.slow_ms = ch->slow_ms;
	char *pins[N_KNOBS], *unpins[N_KNOBS];
	Itt__SettingsChange m = ITT__SETTINGS_CHANGE__INIT;
	m.worker_id = (char *)ch->worker_id;
	if (ch->set)
		m.settings = &st;
	if (ch->pin) {
		m.has_pin = 1;
		m.pin = 1;
	}
	m.n_pin_knobs = knob_names(ch->pin_knobs, pins);
	m.pin_knobs = pins;
	m.n_unpin_knobs = knob_names(ch->unpin_knobs, unpins);
	m.unpin_knobs = unpins;
	m.reason = (char *)ch->reason;
	m.api_key = c->api_key;
	snprintf(c->set_id, sizeof c->set_id, "set-%llu", (unsigned long long)++c->n_sets);
	m.request_id = c->set_id;

	ProtobufCMessage *r;
	int rc = client_exchange(c, &c->set, WIRE_SET, &m.base, "SET_REPLY", timeout_ms, &r, err);
	*out = (Itt__SettingsReply *)r;
	return rc;
}

void itt_settings_reply_free(Itt__SettingsReply **rp)
{
	if (rp && *rp) {
		itt__settings_reply__free_unpacked(*rp, NULL);
		*rp = NULL;
	}
}
