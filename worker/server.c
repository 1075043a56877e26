/* server: the worker's libuv loop and its broker connection (see server.h).
 *
 * Handles: one uv_poll per connection (on the socket's ZMQ_FD, heap-allocated
 * because a reconnect closes it while a new one starts; freed in its close
 * callback), the heartbeat timer (the one periodic tick: send HEARTBEAT,
 * check the broker's liveness), a one-shot retry timer (reconnect backoff), a
 * one-shot pump timer (continues a drain that hit its per-wake cap), the
 * uv_async the compute thread wakes us with, and the signal handles.
 *
 * The socket is edge-triggered: server_pump is called at the end of every
 * callback that may have touched the socket and reads until ZMQ_EVENTS has
 * no POLLIN, so no message is left behind an edge that was consumed by a
 * send.  Sends use ZMQ_DONTWAIT: a full pipe drops the message (logged)
 * rather than block the loop. */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <uv.h>
#include <zmq.h>

#include "itt.pb-c.h"
#include "wire.h"

/* Messages read per wake before yielding to the other handles. */
#define SERVER_PUMP_BATCH 256

enum server_state {
	SERVER_DISCONNECTED, /* waiting for the retry timer */
	SERVER_REGISTERING,  /* HELLO sent, no WELCOME yet */
	SERVER_READY,
};

struct server {
	struct server_config cfg;
	sched_t *sched;
	const struct sched_info *info;
	uv_loop_t loop;
	uv_timer_t hb_timer, retry_timer, pump_timer;
	uv_async_t async;
	uv_signal_t sigint, sigterm;
	void *zctx;
	void *sock;      /* NULL while disconnected */
	uv_poll_t *poll; /* watches sock's ZMQ_FD */
	enum server_state state;
	uint32_t heartbeat_ms, liveness; /* in force */
	uint32_t backoff_ms;             /* next reconnect delay (before jitter) */
	uint64_t last_recv_ms;           /* last message from the broker */
	uint64_t last_hello_ms;          /* last HELLO sent */
	uint32_t epoch;                  /* registrations so far */
	bool stopping;
	/* HELLO fields that do not change */
	char host[256];
	uint32_t cores;
	uint64_t mem_bytes;
	/* counters, logged at exit */
	uint64_t n_recv, n_bad, n_sent, n_dropped, n_stale;
};

static const int server_accepts[] = {
    WIRE_ERROR, WIRE_HEARTBEAT, WIRE_WELCOME, WIRE_OPEN, WIRE_STEP, WIRE_CLOSE, 0};

static uint64_t server_wall_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

/* ---- sending ------------------------------------------------------------ */

static int server_send(struct server *s, int cmd, const ProtobufCMessage *body)
{
	if (!s->sock)
		return -1;
	if (wire_send(s->sock, NULL, 0, cmd, body, NULL, 0, ZMQ_DONTWAIT) < 0) {
		s->n_dropped++;
		SCHED_LOG(SCHED_LOG_WARN, "send %s to %s failed: %s", wire_cmd_name(cmd),
		          s->cfg.broker, zmq_strerror(errno));
		return -1;
	}
	s->n_sent++;
	return 0;
}

static void server_send_error(struct server *s, uint64_t session_id, int code, const char *reason)
{
	Itt__Error e = ITT__ERROR__INIT;
	e.has_code = 1;
	e.code = (Itt__Code)code;
	e.reason = (char *)reason;
	e.has_session_id = session_id != 0;
	e.session_id = session_id;
	server_send(s, WIRE_ERROR, &e.base);
}

static void server_send_heartbeat(struct server *s, int cmd)
{
	Itt__Heartbeat h = ITT__HEARTBEAT__INIT;
	h.has_time_ms = 1;
	h.time_ms = server_wall_ms();
	server_send(s, cmd, &h.base);
}

/* HELLO starts a new registration: the broker knows none of our sessions. */
static void server_hello(struct server *s)
{
	const struct sched_info *in = s->info;
	struct sched_cmd *reset = sched_cmd_new(SCHED_CMD_RESET);
	s->epoch++;
	if (reset) {
		reset->epoch = s->epoch;
		sched_push(s->sched, reset);
	}
	Itt__WorkerHello h = ITT__WORKER_HELLO__INIT;
	h.worker_id = (char *)s->cfg.worker_id;
	h.host = s->host;
	h.has_pid = h.has_layer_first = h.has_layer_last = h.has_n_layers = h.has_vocab = 1;
	h.has_ctx_len = h.has_dim = h.has_eos_token = h.has_max_sessions = h.has_threads = 1;
	h.has_cores = h.has_mem_bytes = 1;
	h.pid = (uint32_t)getpid();
	h.model = (char *)s->cfg.model_name;
	h.layer_first = in->first;
	h.layer_last = in->last;
	h.n_layers = in->n_layers;
	h.vocab = in->vocab;
	h.ctx_len = in->ctx_len;
	h.dim = in->dim;
	h.eos_token = in->eos;
	h.max_sessions = s->cfg.max_sessions;
	h.threads = s->cfg.threads;
	h.cores = s->cores;
	h.mem_bytes = s->mem_bytes;
	s->state = SERVER_REGISTERING;
	s->last_hello_ms = wire_now_ms();
	if (server_send(s, WIRE_HELLO, &h.base) == 0)
		SCHED_LOG(SCHED_LOG_INFO, "HELLO to %s as %s (model %s, registration %u)",
		          s->cfg.broker, s->cfg.worker_id, s->cfg.model_name, s->epoch);
}

/* ---- receiving ---------------------------------------------------------- */

static void server_on_welcome(struct server *s, const struct wire_msg *m)
{
	Itt__Welcome *w = itt__welcome__unpack(NULL, m->body_len, m->body);
	if (!w) {
		SCHED_LOG(SCHED_LOG_WARN, "malformed WELCOME body from %s; ignored", s->cfg.broker);
		return;
	}
	uint32_t hb = s->heartbeat_ms, lv = s->liveness;
	if (w->has_heartbeat_ms && w->heartbeat_ms >= SERVER_MIN_HEARTBEAT_MS &&
	    w->heartbeat_ms <= SERVER_MAX_HEARTBEAT_MS)
		hb = w->heartbeat_ms;
	else if (w->has_heartbeat_ms)
		SCHED_LOG(SCHED_LOG_WARN, "WELCOME heartbeat_ms %u outside [%u, %u]; keeping %u",
		          w->heartbeat_ms, SERVER_MIN_HEARTBEAT_MS, SERVER_MAX_HEARTBEAT_MS, hb);
	if (w->has_liveness && w->liveness >= 1 && w->liveness <= SERVER_MAX_LIVENESS)
		lv = w->liveness;
	else if (w->has_liveness)
		SCHED_LOG(SCHED_LOG_WARN, "WELCOME liveness %u outside [1, %u]; keeping %u",
		          w->liveness, SERVER_MAX_LIVENESS, lv);
	itt__welcome__free_unpacked(w, NULL);
	if (hb != s->heartbeat_ms) {
		s->heartbeat_ms = hb;
		uv_timer_set_repeat(&s->hb_timer, hb);
		uv_timer_again(&s->hb_timer);
	}
	s->liveness = lv;
	s->backoff_ms = s->cfg.reconnect_min_ms;
	if (s->state != SERVER_READY)
		SCHED_LOG(SCHED_LOG_INFO, "WELCOME from %s: heartbeat %u ms, liveness %u",
		          s->cfg.broker, hb, lv);
	s->state = SERVER_READY;
}

static void server_on_error(struct server *s, const struct wire_msg *m)
{
	Itt__Error *e = itt__error__unpack(NULL, m->body_len, m->body);
	if (!e) {
		SCHED_LOG(SCHED_LOG_WARN, "malformed ERROR body from %s; ignored", s->cfg.broker);
		return;
	}
	int code = e->has_code ? (int)e->code : 0;
	uint64_t sid = e->has_session_id ? e->session_id : 0;
	SCHED_LOG(SCHED_LOG_WARN, "ERROR from %s: %s (%d) session %llu: %s", s->cfg.broker,
	          wire_code_name(code), code, (unsigned long long)sid, e->reason ? e->reason : "");
	itt__error__free_unpacked(e, NULL);
	/* "unknown worker": the broker restarted or expired us; register again.
	 * While a HELLO is on its way, the answers to messages sent before it
	 * are no reason for another one (each HELLO drops every session); one
	 * heartbeat interval later they are (that HELLO may have been lost). */
	if (code == ITT__CODE__NOT_FOUND && sid == 0 &&
	    (s->state != SERVER_REGISTERING || wire_now_ms() - s->last_hello_ms >= s->heartbeat_ms))
		server_hello(s);
}

static void server_on_session(struct server *s, const struct wire_msg *m)
{
	char reason[SCHED_MAX_REASON];
	struct sched_cmd *c = NULL;
	uint64_t sid = 0;
	int code;

	if (m->cmd == WIRE_OPEN)
		code = sched_decode_open(m->body, m->body_len, s->info, &c, &sid, reason,
		                         sizeof reason);
	else if (m->cmd == WIRE_STEP)
		code = sched_decode_step(m->body, m->body_len, s->info, &c, &sid, reason,
		                         sizeof reason);
	else
		code = sched_decode_close(m->body, m->body_len, &c, &sid, reason, sizeof reason);
	if (code) {
		SCHED_LOG(SCHED_LOG_INFO, "%s for session %llu refused: %s", wire_cmd_name(m->cmd),
		          (unsigned long long)sid, reason);
		/* CLOSE gets no answer, not even to a malformed one. */
		if (m->cmd != WIRE_CLOSE)
			server_send_error(s, sid, code, reason);
		return;
	}
	sched_push(s->sched, c);
}

static void server_handle(struct server *s, struct wire_msg *m, int code, const char *reason)
{
	s->n_recv++;
	s->last_recv_ms = wire_now_ms(); /* any message is a sign of life */
	if (code) {
		/* A worker drops garbage: there is nobody to answer but the broker. */
		s->n_bad++;
		SCHED_LOG(SCHED_LOG_WARN, "dropped a bad message from %s: %s: %s", s->cfg.broker,
		          wire_code_name(code), reason);
		return;
	}
	switch (m->cmd) {
	case WIRE_WELCOME: server_on_welcome(s, m); break;
	case WIRE_HEARTBEAT: break;
	case WIRE_ERROR: server_on_error(s, m); break;
	case WIRE_OPEN:
	case WIRE_STEP:
	case WIRE_CLOSE: server_on_session(s, m); break;
	}
}

static void server_on_pump(uv_timer_t *t);

/* Reads until the socket has nothing more (or the batch cap is hit, in
 * which case the pump timer continues on the next loop iteration). */
static void server_pump(struct server *s)
{
	for (int n = 0; s->sock; n++) {
		uint32_t ev = 0;
		size_t len = sizeof ev;
		if (zmq_getsockopt(s->sock, ZMQ_EVENTS, &ev, &len) < 0 || !(ev & ZMQ_POLLIN))
			return;
		if (n == SERVER_PUMP_BATCH) {
			uv_timer_start(&s->pump_timer, server_on_pump, 0, 0);
			return;
		}
		struct wire_msg m;
		char reason[256];
		int code = 0;
		int rc = wire_recv(s->sock, false, server_accepts, &m, &code, reason, sizeof reason,
		                   ZMQ_DONTWAIT);
		if (rc < 0) {
			SCHED_LOG(SCHED_LOG_WARN, "receive from %s: %s", s->cfg.broker,
			          zmq_strerror(errno));
			wire_msg_close(&m);
			return;
		}
		if (rc == 0) {
			wire_msg_close(&m);
			return;
		}
		server_handle(s, &m, code, reason);
		wire_msg_close(&m);
	}
}

/* ---- connection ---------------------------------------------------------- */

static void server_poll_closed(uv_handle_t *h)
{
	free(h);
}

static void server_on_poll(uv_poll_t *p, int status, int events)
{
	struct server *s = p->data;
	if (status < 0)
		SCHED_LOG(SCHED_LOG_WARN, "poll on the broker socket: %s", uv_strerror(status));
	server_pump(s);
}

static void server_disconnect(struct server *s)
{
	if (s->poll) {
		uv_poll_stop(s->poll);
		uv_close((uv_handle_t *)s->poll, server_poll_closed);
		s->poll = NULL;
	}
	if (s->sock) {
		zmq_close(s->sock);
		s->sock = NULL;
	}
	s->state = SERVER_DISCONNECTED;
}

static int server_connect(struct server *s)
{
	int zero = 0, hs = 2000, ri = 100, rmax = 4000, hbi = 1000, hbt = 3000;
	int64_t maxmsg = (int64_t)64 << 20;
	int fd;
	size_t fdlen = sizeof fd;

	s->sock = zmq_socket(s->zctx, ZMQ_DEALER);
	if (!s->sock) {
		SCHED_LOG(SCHED_LOG_ERROR, "zmq_socket: %s", zmq_strerror(errno));
		return -1;
	}
	zmq_setsockopt(s->sock, ZMQ_LINGER, &zero, sizeof zero);
	zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
	zmq_setsockopt(s->sock, ZMQ_HANDSHAKE_IVL, &hs, sizeof hs);
	zmq_setsockopt(s->sock, ZMQ_RECONNECT_IVL, &ri, sizeof ri);
	zmq_setsockopt(s->sock, ZMQ_RECONNECT_IVL_MAX, &rmax, sizeof rmax);
	zmq_setsockopt(s->sock, ZMQ_HEARTBEAT_IVL, &hbi, sizeof hbi);
	zmq_setsockopt(s->sock, ZMQ_HEARTBEAT_TIMEOUT, &hbt, sizeof hbt);
	if (zmq_connect(s->sock, s->cfg.broker) < 0) {
		SCHED_LOG(SCHED_LOG_ERROR, "zmq_connect %s: %s", s->cfg.broker,
		          zmq_strerror(errno));
		goto fail;
	}
	if (zmq_getsockopt(s->sock, ZMQ_FD, &fd, &fdlen) < 0) {
		SCHED_LOG(SCHED_LOG_ERROR, "ZMQ_FD: %s", zmq_strerror(errno));
		goto fail;
	}
	s->poll = malloc(sizeof *s->poll);
	if (!s->poll || uv_poll_init(&s->loop, s->poll, fd) < 0) {
		SCHED_LOG(SCHED_LOG_ERROR, "uv_poll_init on the broker socket failed");
		free(s->poll);
		s->poll = NULL;
		goto fail;
	}
	s->poll->data = s;
	uv_poll_start(s->poll, UV_READABLE, server_on_poll);
	s->last_recv_ms = wire_now_ms();
	server_hello(s);
	return 0;
fail:
	zmq_close(s->sock);
	s->sock = NULL;
	return -1;
}

/* Next reconnect delay: the backoff less up to 25% jitter (so that workers
 * that lost the broker together come back spread out, and never later than
 * the cap); the backoff doubles. */
static uint32_t server_next_delay(struct server *s)
{
	uint32_t b = s->backoff_ms;
	uint32_t d = b - (uint32_t)(rand() % (b / 4 + 1));
	s->backoff_ms = b >= s->cfg.reconnect_max_ms / 2 ? s->cfg.reconnect_max_ms : b * 2;
	return d;
}

static void server_on_retry(uv_timer_t *t)
{
	struct server *s = t->data;
	if (s->stopping || s->sock)
		return;
	if (server_connect(s) < 0) {
		uint32_t d = server_next_delay(s);
		SCHED_LOG(SCHED_LOG_WARN, "reconnect to %s failed; next try in %u ms",
		          s->cfg.broker, d);
		uv_timer_start(&s->retry_timer, server_on_retry, d, 0);
		return;
	}
	server_pump(s);
}

static void server_on_heartbeat(uv_timer_t *t)
{
	struct server *s = t->data;
	if (!s->sock || s->stopping)
		return;
	uint64_t now = wire_now_ms(), silent = now - s->last_recv_ms;
	if (silent > (uint64_t)s->liveness * s->heartbeat_ms) {
		uint32_t d = server_next_delay(s);
		SCHED_LOG(
		    SCHED_LOG_WARN,
		    "broker %s silent for %llu ms (liveness %u x %u ms); reconnecting in %u ms",
		    s->cfg.broker, (unsigned long long)silent, s->liveness, s->heartbeat_ms, d);
		server_disconnect(s);
		uv_timer_start(&s->retry_timer, server_on_retry, d, 0);
		return;
	}
	server_send_heartbeat(s, WIRE_HEARTBEAT);
	server_pump(s);
}

static void server_on_pump(uv_timer_t *t)
{
	server_pump(t->data);
}

/* ---- compute thread results ---------------------------------------------- */

static void server_notify(void *arg)
{
	struct server *s = arg;
	uv_async_send(&s->async);
}

static void server_send_result(struct server *s, const struct sched_out *o)
{
	Itt__StepResult r = ITT__STEP_RESULT__INIT;
	r.has_session_id = r.has_step = r.has_token = r.has_piece = r.has_n_pos = 1;
	r.has_step_ms = 1;
	r.session_id = o->session_id;
	r.step = o->step;
	r.token = o->token;
	r.piece.data = (uint8_t *)o->piece;
	r.piece.len = o->piece_len;
	r.prompt_tokens = o->prompt_tokens;
	r.n_prompt_tokens = o->n_prompt_tokens;
	r.n_pos = o->n_pos;
	r.step_ms = o->step_ms;
	server_send(s, WIRE_RESULT, &r.base);
}

static void server_on_async(uv_async_t *a)
{
	struct server *s = a->data;
	struct sched_out *list = sched_take(s->sched);
	for (struct sched_out *o = list; o; o = o->next) {
		if (o->epoch != s->epoch || !s->sock) {
			s->n_stale++;
			continue; /* a session of a registration the broker has forgotten */
		}
		if (o->kind == SCHED_OUT_RESULT)
			server_send_result(s, o);
		else
			server_send_error(s, o->session_id, o->code, o->reason);
	}
	sched_out_free_list(list);
	server_pump(s);
}

/* ---- life cycle ----------------------------------------------------------- */

static void server_close_handle(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, h->type == UV_POLL ? server_poll_closed : NULL);
}

static void server_on_signal(uv_signal_t *sig, int signum)
{
	struct server *s = sig->data;
	if (s->stopping)
		return;
	s->stopping = true;
	SCHED_LOG(SCHED_LOG_INFO, "%s: leaving", signum == SIGINT ? "SIGINT" : "SIGTERM");
	if (s->sock) {
		int linger = 500; /* let the BYE out */
		server_send_heartbeat(s, WIRE_BYE);
		zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
	}
	sched_stop(s->sched);
	if (s->poll) {
		uv_poll_stop(s->poll);
		s->poll = NULL; /* closed with the other handles below */
	}
	uv_walk(&s->loop, server_close_handle, NULL);
}

static void server_host_info(struct server *s)
{
	if (gethostname(s->host, sizeof s->host - 1) < 0)
		strcpy(s->host, "unknown");
	s->host[sizeof s->host - 1] = 0;
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
	s->cores = cores > 0 ? (uint32_t)cores : 0;
	s->mem_bytes = pages > 0 && page > 0 ? (uint64_t)pages * (uint64_t)page : 0;
}

int server_run(const struct server_config *c, sched_t *sched)
{
	struct server *s = calloc(1, sizeof *s);
	struct itt_err err = {0};
	int rc = 1;

	if (!s)
		return 1;
	s->cfg = *c;
	s->sched = sched;
	s->info = sched_get_info(sched);
	s->heartbeat_ms = c->heartbeat_ms;
	s->liveness = c->liveness;
	s->backoff_ms = c->reconnect_min_ms;
	server_host_info(s);
	srand((unsigned)(getpid() ^ wire_now_ms()));
	if (uv_loop_init(&s->loop) < 0) {
		free(s);
		return 1;
	}
	s->zctx = zmq_ctx_new();
	uv_timer_init(&s->loop, &s->hb_timer);
	uv_timer_init(&s->loop, &s->retry_timer);
	uv_timer_init(&s->loop, &s->pump_timer);
	uv_async_init(&s->loop, &s->async, server_on_async);
	uv_signal_init(&s->loop, &s->sigint);
	uv_signal_init(&s->loop, &s->sigterm);
	s->hb_timer.data = s->retry_timer.data = s->pump_timer.data = s;
	s->async.data = s->sigint.data = s->sigterm.data = s;
	uv_signal_start(&s->sigint, server_on_signal, SIGINT);
	uv_signal_start(&s->sigterm, server_on_signal, SIGTERM);
	signal(SIGPIPE, SIG_IGN);

	if (!s->zctx || sched_start(sched, server_notify, s, &err) < 0) {
		SCHED_LOG(SCHED_LOG_ERROR, "start-up: %s",
		          s->zctx ? err.msg : "zmq_ctx_new failed");
		goto out;
	}
	if (server_connect(s) < 0)
		goto out;
	uv_timer_start(&s->hb_timer, server_on_heartbeat, s->heartbeat_ms, s->heartbeat_ms);
	server_pump(s);
	uv_run(&s->loop, UV_RUN_DEFAULT);
	rc = 0;
	SCHED_LOG(SCHED_LOG_INFO,
	          "stopped: %llu messages received (%llu bad), %llu sent, %llu dropped, "
	          "%llu stale results",
	          (unsigned long long)s->n_recv, (unsigned long long)s->n_bad,
	          (unsigned long long)s->n_sent, (unsigned long long)s->n_dropped,
	          (unsigned long long)s->n_stale);
out:
	sched_stop(sched);
	if (rc) {
		if (s->poll)
			uv_poll_stop(s->poll);
		s->poll = NULL;
		uv_walk(&s->loop, server_close_handle, NULL);
	}
	uv_run(&s->loop, UV_RUN_DEFAULT); /* close callbacks */
	if (s->sock)
		zmq_close(s->sock);
	if (s->zctx)
		zmq_ctx_term(s->zctx);
	uv_loop_close(&s->loop);
	free(s);
	return rc;
}
