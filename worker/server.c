/* server: the worker's libuv loop and its broker connection (see server.h).
 *
 * Handles: one uv_poll per connection (on the socket's ZMQ_FD, heap-allocated
 * because a reconnect closes it while a new one starts; freed in its close
 * callback), the heartbeat timer (send HEARTBEAT, check the broker's
 * liveness), the telemetry timer (TELEMETRY every second, rates over the
 * last interval), a one-shot retry timer (reconnect backoff), a
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <uv.h>
#include <zmq.h>

#include "itt.pb-c.h"
#include "clock.h"
#include "log.h"
#include "sig.h"
#include "wire.h"

/* Messages read per wake before yielding to the other handles. */
#define SERVER_PUMP_BATCH 256
/* TELEMETRY interval. */
#define SERVER_TELEMETRY_MS 1000

enum server_state {
	SERVER_DISCONNECTED, /* waiting for the retry timer */
	SERVER_REGISTERING,  /* HELLO sent, no WELCOME yet */
	SERVER_READY,
};

/* The counters at the last TELEMETRY (rates are deltas from these). */
struct server_sample {
	uint64_t ms; /* monotonic */
	uint64_t steps, rows;
	double step_ms; /* cumulative step wall time */
	double cpu_s;   /* process user + system time */
};

struct server {
	struct server_config cfg;
	sched_t *sched;
	/* The loop's copy of the model shape and range: the compute thread
	 * rebuilds its own on ASSIGN.  While loading, info.tok is NULL (the
	 * old tokenizer is gone; the decoders only test it). */
	struct sched_info info;
	bool loading;       /* an ASSIGN is being applied; OPEN/STEP are UNAVAILABLE */
	bool hello_pending; /* a HELLO was due while loading: sent when loaded */
	struct server_sample tele;
	uv_loop_t loop;
	uv_timer_t hb_timer, retry_timer, pump_timer, tele_timer;
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
	int rc; /* server_run's status (1 when the compute side broke) */
	/* counters, logged at exit */
	uint64_t n_recv, n_bad, n_sent, n_dropped, n_stale;
};

static const int server_accepts[] = {WIRE_ERROR, WIRE_HEARTBEAT, WIRE_WELCOME, WIRE_OPEN, WIRE_STEP,
                                     WIRE_CLOSE, WIRE_SETTINGS,  WIRE_ASSIGN,  0};

/* ---- sending ------------------------------------------------------------ */

static int server_send_tensor(struct server *s, int cmd, const ProtobufCMessage *body,
                              const void *tensor, size_t tensor_len)
{
	if (!s->sock)
		return -1;
	if (wire_send(s->sock, NULL, 0, cmd, body, tensor, tensor_len, ZMQ_DONTWAIT) < 0) {
		s->n_dropped++;
		LOG_WARN("send %s to %s failed: %s", wire_cmd_name(cmd), s->cfg.broker,
		         zmq_strerror(errno));
		return -1;
	}
	s->n_sent++;
	return 0;
}

static int server_send(struct server *s, int cmd, const ProtobufCMessage *body)
{
	return server_send_tensor(s, cmd, body, NULL, 0);
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
	h.time_ms = clock_wall_ms();
	server_send(s, cmd, &h.base);
}

/* The knobs in force, as HELLO and TELEMETRY carry them. */
static void server_settings(const struct sched_stats *st, Itt__Settings *set)
{
	*set = (Itt__Settings)ITT__SETTINGS__INIT;
	set->has_threads = set->has_batch_tokens = set->has_slow_ms = 1;
	set->threads = st->settings.threads;
	set->batch_tokens = st->settings.batch_tokens;
	set->slow_ms = st->settings.slow_ms;
}

/* MemAvailable of /proc/meminfo in bytes (0 when unknown). */
static uint64_t server_mem_available(void)
{
	char line[256];
	unsigned long long kb = 0;
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	fclose(f);
	return (uint64_t)kb * 1024u;
}

/* HELLO starts a new registration: the broker knows none of our sessions.
 * While an ASSIGN loads, it waits for the new range. */
static void server_hello(struct server *s)
{
	const struct sched_info *in = &s->info;
	struct sched_stats st;
	if (s->loading) {
		s->hello_pending = true;
		return;
	}
	s->hello_pending = false;
	sched_get_stats(s->sched, &st);
	struct sched_cmd *reset = sched_cmd_new(SCHED_CMD_RESET);
	s->epoch++;
	if (reset) {
		reset->epoch = s->epoch;
		sched_push(s->sched, reset);
	}
	Itt__Settings set;
	server_settings(&st, &set);
	Itt__ModelFile file = ITT__MODEL_FILE__INIT, *files[1] = {&file};
	file.model = (char *)s->cfg.model_name;
	file.sha256 = (char *)s->cfg.sha256;
	file.has_bytes = file.has_n_layers = 1;
	file.bytes = s->cfg.file_bytes;
	file.n_layers = in->n_layers;
	Itt__WorkerHello h = ITT__WORKER_HELLO__INIT;
	h.worker_id = (char *)s->cfg.worker_id;
	h.host = s->host;
	h.has_pid = h.has_layer_first = h.has_layer_last = h.has_n_layers = h.has_vocab = 1;
	h.has_ctx_len = h.has_dim = h.has_eos_token = h.has_max_sessions = h.has_threads = 1;
	h.has_cores = h.has_mem_bytes = h.has_max_batch_tokens = h.has_mem_available = 1;
	h.has_weight_bytes = 1;
	h.has_n_heads = in->n_heads > 0;
	h.n_heads = in->n_heads;
	h.pid = (uint32_t)getpid();
	h.model = (char *)s->cfg.model_name;
	h.layer_first = in->first;
	h.layer_last = in->last;
	h.n_layers = in->n_layers;
	h.vocab = in->vocab;
	h.ctx_len = in->ctx_len;
	h.dim = in->dim;
	h.eos_token = in->eos;
	h.n_eog_tokens = in->n_eog;
	h.eog_tokens = (int32_t *)in->eog;
	h.max_sessions = s->cfg.max_sessions;
	h.threads = st.settings.threads;
	h.cores = s->cores;
	h.mem_bytes = s->mem_bytes;
	h.n_files = s->cfg.sha256 ? 1 : 0;
	h.files = files;
	h.settings = &set;
	h.max_batch_tokens = s->cfg.max_batch_tokens;
	h.mem_available = server_mem_available();
	h.weight_bytes = in->weight_bytes;
	s->state = SERVER_REGISTERING;
	s->last_hello_ms = clock_mono_ms();
	if (server_send(s, WIRE_HELLO, &h.base) == 0)
		LOG_INFO("HELLO to %s as %s (model %s, layers [%u, %u) of %u, registration %u)",
		         s->cfg.broker, s->cfg.worker_id, s->cfg.model_name, in->first, in->last,
		         in->n_layers, s->epoch);
}

/* ---- receiving ---------------------------------------------------------- */

static void server_on_welcome(struct server *s, const struct wire_msg *m)
{
	Itt__Welcome *w = itt__welcome__unpack(NULL, m->body_len, m->body);
	if (!w) {
		LOG_WARN("malformed WELCOME body from %s; ignored", s->cfg.broker);
		return;
	}
	uint32_t hb = s->heartbeat_ms, lv = s->liveness;
	if (w->has_heartbeat_ms && w->heartbeat_ms >= SERVER_MIN_HEARTBEAT_MS &&
	    w->heartbeat_ms <= SERVER_MAX_HEARTBEAT_MS)
		hb = w->heartbeat_ms;
	else if (w->has_heartbeat_ms)
		LOG_WARN("WELCOME heartbeat_ms %u outside [%u, %u]; keeping %u", w->heartbeat_ms,
		         SERVER_MIN_HEARTBEAT_MS, SERVER_MAX_HEARTBEAT_MS, hb);
	if (w->has_liveness && w->liveness >= 1 && w->liveness <= SERVER_MAX_LIVENESS)
		lv = w->liveness;
	else if (w->has_liveness)
		LOG_WARN("WELCOME liveness %u outside [1, %u]; keeping %u", w->liveness,
		         SERVER_MAX_LIVENESS, lv);
	itt__welcome__free_unpacked(w, NULL);
	if (hb != s->heartbeat_ms) {
		s->heartbeat_ms = hb;
		uv_timer_set_repeat(&s->hb_timer, hb);
		uv_timer_again(&s->hb_timer);
	}
	s->liveness = lv;
	s->backoff_ms = s->cfg.reconnect_min_ms;
	if (s->state != SERVER_READY)
		LOG_INFO("WELCOME from %s: heartbeat %u ms, liveness %u", s->cfg.broker, hb, lv);
	s->state = SERVER_READY;
}

static void server_on_error(struct server *s, const struct wire_msg *m)
{
	Itt__Error *e = itt__error__unpack(NULL, m->body_len, m->body);
	if (!e) {
		LOG_WARN("malformed ERROR body from %s; ignored", s->cfg.broker);
		return;
	}
	int code = e->has_code ? (int)e->code : 0;
	uint64_t sid = e->has_session_id ? e->session_id : 0;
	LOG_WARN("ERROR from %s: %s (%d) session %llu: %s", s->cfg.broker, wire_code_name(code),
	         code, (unsigned long long)sid, e->reason ? e->reason : "");
	itt__error__free_unpacked(e, NULL);
	/* "unknown worker": the broker restarted or expired us; register again.
	 * While a HELLO is on its way, the answers to messages sent before it
	 * are no reason for another one (each HELLO drops every session); one
	 * heartbeat interval later they are (that HELLO may have been lost). */
	if (code == ITT__CODE__NOT_FOUND && sid == 0 &&
	    (s->state != SERVER_REGISTERING || clock_mono_ms() - s->last_hello_ms >= s->heartbeat_ms))
		server_hello(s);
}

static void server_on_session(struct server *s, const struct wire_msg *m)
{
	struct itt_err err = {0};
	struct sched_cmd *c = NULL;
	uint64_t sid = 0;
	int code;

	if (m->cmd == WIRE_OPEN)
		code = sched_decode_open(m->body, m->body_len, m->tensor, m->tensor_len, &s->info,
		                         &c, &sid, &err);
	else if (m->cmd == WIRE_STEP)
		code = sched_decode_step(m->body, m->body_len, m->tensor, m->tensor_len, &s->info,
		                         &c, &sid, &err);
	else
		code = sched_decode_close(m->body, m->body_len, &c, &sid, &err);
	if (s->loading && m->cmd != WIRE_CLOSE) {
		/* The sessions went with the ASSIGN; the new range is not there yet. */
		sched_cmd_free(&c);
		server_send_error(s, sid, ITT__CODE__UNAVAILABLE, "loading layers");
		return;
	}
	if (code) {
		LOG_INFO("%s for session %llu refused: %s", wire_cmd_name(m->cmd),
		         (unsigned long long)sid, err.msg);
		/* CLOSE gets no answer, not even to a malformed one. */
		if (m->cmd != WIRE_CLOSE)
			server_send_error(s, sid, code, err.msg);
		return;
	}
	sched_push(s->sched, c);
}

/* A SETTINGS or ASSIGN refused: logged and answered (no session). */
static void server_refuse(struct server *s, const char *what, int code, const struct itt_err *err)
{
	LOG_INFO("%s refused: %s", what, err->msg);
	server_send_error(s, 0, code, err->msg);
}

static void server_on_settings(struct server *s, const struct wire_msg *m)
{
	struct itt_err err = {0};
	struct sched_cmd *c = NULL;
	int code = sched_decode_settings(m->body, m->body_len, s->cfg.max_batch_tokens, &c, &err);
	if (code) {
		server_refuse(s, "SETTINGS", code, &err);
		return;
	}
	sched_push(s->sched, c);
}

/* ASSIGN: refuse a bad one at once; else forget the sessions (their
 * results are dropped from now), and let the compute thread load. */
static void server_on_assign(struct server *s, const struct wire_msg *m)
{
	struct itt_err err = {0};
	struct sched_cmd *c = NULL;
	int code = s->loading ? itt_err_set(&err, ITT__CODE__UNAVAILABLE, "loading layers already")
	                      : sched_decode_assign(m->body, m->body_len, &s->info,
	                                            s->cfg.model_name, &c, &err);
	if (code) {
		server_refuse(s, "ASSIGN", code, &err);
		return;
	}
	LOG_INFO("ASSIGN layers [%u, %u) (holding [%u, %u))", c->first, c->last, s->info.first,
	         s->info.last);
	s->loading = true;
	s->info.tok = NULL; /* freed by the reload */
	c->epoch = ++s->epoch;
	sched_push(s->sched, c);
}

static void server_handle(struct server *s, struct wire_msg *m, const struct itt_err *err)
{
	int code = err->code;
	s->n_recv++;
	s->last_recv_ms = clock_mono_ms(); /* any message is a sign of life */
	if (code) {
		/* A worker drops garbage: there is nobody to answer but the broker. */
		s->n_bad++;
		LOG_WARN("dropped a bad message from %s: %s: %s", s->cfg.broker,
		         wire_code_name(code), err->msg);
		return;
	}
	switch (m->cmd) {
	case WIRE_WELCOME: server_on_welcome(s, m); break;
	case WIRE_HEARTBEAT: break;
	case WIRE_ERROR: server_on_error(s, m); break;
	case WIRE_OPEN:
	case WIRE_STEP:
	case WIRE_CLOSE: server_on_session(s, m); break;
	case WIRE_SETTINGS: server_on_settings(s, m); break;
	case WIRE_ASSIGN: server_on_assign(s, m); break;
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
		struct itt_err err = {0};
		int rc = wire_recv(s->sock, false, server_accepts, &m, &err,
		                   ZMQ_DONTWAIT);
		if (rc < 0) {
			LOG_WARN("receive from %s: %s", s->cfg.broker, zmq_strerror(errno));
			wire_msg_close(&m);
			return;
		}
		if (rc == 0) {
			wire_msg_close(&m);
			return;
		}
		server_handle(s, &m, &err);
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
		LOG_WARN("poll on the broker socket: %s", uv_strerror(status));
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
		LOG_ERROR("zmq_socket: %s", zmq_strerror(errno));
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
		LOG_ERROR("zmq_connect %s: %s", s->cfg.broker, zmq_strerror(errno));
		goto fail;
	}
	if (zmq_getsockopt(s->sock, ZMQ_FD, &fd, &fdlen) < 0) {
		LOG_ERROR("ZMQ_FD: %s", zmq_strerror(errno));
		goto fail;
	}
	s->poll = malloc(sizeof *s->poll);
	if (!s->poll || uv_poll_init(&s->loop, s->poll, fd) < 0) {
		LOG_ERROR("uv_poll_init on the broker socket failed");
		free(s->poll);
		s->poll = NULL;
		goto fail;
	}
	s->poll->data = s;
	uv_poll_start(s->poll, UV_READABLE, server_on_poll);
	s->last_recv_ms = clock_mono_ms();
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
		LOG_WARN("reconnect to %s failed; next try in %u ms", s->cfg.broker, d);
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
	uint64_t now = clock_mono_ms(), silent = now - s->last_recv_ms;
	if (silent > (uint64_t)s->liveness * s->heartbeat_ms) {
		uint32_t d = server_next_delay(s);
		LOG_WARN(
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

/* ---- telemetry ------------------------------------------------------------ */

/* Process CPU time (user + system), seconds. */
static double server_cpu_s(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) < 0)
		return 0;
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* Resident set size from /proc/self/statm (0 when unknown). */
static uint64_t server_rss_bytes(void)
{
	unsigned long long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (!f)
		return 0;
	int n = fscanf(f, "%llu %llu", &size, &resident);
	fclose(f);
	long page = sysconf(_SC_PAGESIZE);
	return n == 2 && page > 0 ? (uint64_t)resident * (uint64_t)page : 0;
}

static void server_sample_now(struct server *s, struct server_sample *x, struct sched_stats *st)
{
	sched_get_stats(s->sched, st);
	x->ms = clock_mono_ms();
	x->steps = st->steps;
	x->rows = st->rows;
	x->step_ms = st->step_ms;
	x->cpu_s = server_cpu_s();
}

/* TELEMETRY: counters since start, rates over the interval since the last. */
static void server_send_telemetry(struct server *s)
{
	struct sched_stats st;
	struct server_sample now, *was = &s->tele;
	server_sample_now(s, &now, &st);
	double wall_ms = now.ms > was->ms ? (double)(now.ms - was->ms) : 1.0;
	uint64_t steps = now.steps - was->steps, rows = now.rows - was->rows;
	double step_ms = now.step_ms - was->step_ms;
	uint32_t layers = s->info.last - s->info.first;

	Itt__Settings set;
	server_settings(&st, &set);
	Itt__Telemetry t = ITT__TELEMETRY__INIT;
	t.worker_id = (char *)s->cfg.worker_id;
	t.has_time_ms = t.has_layer_first = t.has_layer_last = t.has_steps = t.has_rows = 1;
	t.has_step_ms = t.has_rows_per_step = t.has_tokens_per_s = t.has_busy = 1;
	t.has_sessions = t.has_waiting = t.has_kv_used = t.has_kv_blocks = t.has_cpu = 1;
	t.has_rss_bytes = t.has_cores = 1;
	t.time_ms = clock_wall_ms();
	t.layer_first = s->info.first;
	t.layer_last = s->info.last;
	t.steps = now.steps;
	t.rows = now.rows;
	t.step_ms = steps ? step_ms / (double)steps : 0.0;
	t.rows_per_step = steps ? (double)rows / (double)steps : 0.0;
	t.tokens_per_s = (double)rows * 1000.0 / wall_ms;
	t.busy = step_ms / wall_ms > 1.0 ? 1.0 : step_ms / wall_ms;
	t.sessions = st.sessions;
	t.waiting = st.waiting;
	t.kv_used = st.kv_blocks - st.kv_free;
	t.kv_blocks = st.kv_blocks;
	t.cpu = (now.cpu_s - was->cpu_s) * 1000.0 / wall_ms;
	t.rss_bytes = server_rss_bytes();
	t.settings = &set;
	t.cores = s->cores;
	if (steps && rows && layers) {
		t.has_ms_per_row_layer = 1;
		t.ms_per_row_layer = t.step_ms / (t.rows_per_step * layers);
	}
	t.state = s->loading ? "loading" : "ready";
	*was = now;
	server_send(s, WIRE_TELEMETRY, &t.base);
}

static void server_on_telemetry(uv_timer_t *t)
{
	struct server *s = t->data;
	struct sched_stats st;
	if (s->stopping)
		return;
	if (!s->sock || s->state != SERVER_READY) {
		server_sample_now(s, &s->tele, &st); /* rates start afresh when registered */
		return;
	}
	server_send_telemetry(s);
	server_pump(s);
}

/* ---- compute thread results ---------------------------------------------- */

static void server_notify(void *arg)
{
	struct server *s = arg;
	uv_async_send(&s->async);
}

/* RESULT: a token (last stage) or the output rows in the tensor frame. */
static void server_send_result(struct server *s, const struct sched_out *o)
{
	Itt__StepResult r = ITT__STEP_RESULT__INIT;
	Itt__TensorInfo ti = ITT__TENSOR_INFO__INIT;
	r.has_session_id = r.has_step = r.has_n_pos = r.has_step_ms = 1;
	r.session_id = o->session_id;
	r.step = o->step;
	ProtobufCBinaryData pieces[SPEC_MAX_DRAFT + 1];
	if (o->has_token) {
		r.has_token = r.has_piece = 1;
		r.token = o->token;
		r.piece.data = (uint8_t *)o->piece;
		r.piece.len = o->piece_len;
		if (o->n_tokens) {
			r.n_tokens = r.n_pieces = o->n_tokens;
			r.tokens = (int32_t *)o->tokens;
			for (uint32_t i = 0; i < o->n_tokens; i++)
				pieces[i] = (ProtobufCBinaryData){o->piece_lens[i],
				                                  (uint8_t *)o->pieces[i]};
			r.pieces = pieces;
		}
		r.n_draft = o->n_draft;
		r.draft = (int32_t *)o->draft;
		r.has_exit_layer = o->has_exit_layer;
		r.exit_layer = o->exit_layer;
	} else {
		ti.has_dtype = ti.has_rows = ti.has_cols = 1;
		ti.dtype = (Itt__DType)o->tensor_dtype;
		ti.rows = o->tensor_rows;
		ti.cols = o->tensor_cols;
		r.hidden = &ti;
	}
	r.prompt_tokens = o->prompt_tokens;
	r.n_prompt_tokens = o->n_prompt_tokens;
	r.stop_tokens = (int32_t *)o->stop_tokens;
	r.n_stop_tokens = o->n_stop_tokens;
	r.n_pos = o->n_pos;
	r.step_ms = o->step_ms;
	server_send_tensor(s, WIRE_RESULT, &r.base, o->has_token ? NULL : o->tensor,
	                   o->has_token ? 0 : o->tensor_len);
}

static void server_stop(struct server *s, const char *why);

/* An ASSIGN finished: the range in force (new, or the old one after a
 * failure) goes out in a new HELLO. */
static void server_on_loaded(struct server *s, const struct sched_out *o)
{
	s->loading = false;
	if (sched_broken(s->sched)) {
		LOG_ERROR("no layers could be loaded: stopping");
		s->rc = 1;
		server_stop(s, "no layers loaded");
		return;
	}
	if (!o->loaded)
		LOG_ERROR("ASSIGN failed (%s); serving layers [%u, %u) again", o->err.msg,
		          o->info.first, o->info.last);
	s->info = o->info;
	if (s->sock)
		server_hello(s);
}

static void server_on_async(uv_async_t *a)
{
	struct server *s = a->data;
	struct sched_out *list = sched_take(s->sched);
	for (struct sched_out *o = list; o; o = o->next) {
		if (o->kind == SCHED_OUT_LOADED) {
			server_on_loaded(s, o);
			continue;
		}
		if (o->epoch != s->epoch || !s->sock || s->stopping) {
			s->n_stale++;
			continue; /* a session of a registration the broker has forgotten */
		}
		if (o->kind == SCHED_OUT_RESULT)
			server_send_result(s, o);
		else
			server_send_error(s, o->session_id, o->err.code, o->err.msg);
	}
	sched_out_free_list(list);
	if (!s->stopping)
		server_pump(s);
}

/* ---- life cycle ----------------------------------------------------------- */

static void server_close_handle(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, h->type == UV_POLL ? server_poll_closed : NULL);
}

/* BYE, stop the compute thread, close every handle (uv_run returns). */
static void server_stop(struct server *s, const char *why)
{
	if (s->stopping)
		return;
	s->stopping = true;
	LOG_INFO("%s: leaving", why);
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

static void server_on_signal(uv_signal_t *sig, int signum)
{
	server_stop(sig->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
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
	s->info = *sched_get_info(sched); /* before the compute thread starts */
	s->heartbeat_ms = c->heartbeat_ms;
	s->liveness = c->liveness;
	s->backoff_ms = c->reconnect_min_ms;
	server_host_info(s);
	srand((unsigned)(getpid() ^ clock_mono_ms()));
	if (uv_loop_init(&s->loop) < 0) {
		free(s);
		return 1;
	}
	s->zctx = zmq_ctx_new();
	uv_timer_init(&s->loop, &s->hb_timer);
	uv_timer_init(&s->loop, &s->retry_timer);
	uv_timer_init(&s->loop, &s->pump_timer);
	uv_timer_init(&s->loop, &s->tele_timer);
	uv_async_init(&s->loop, &s->async, server_on_async);
	uv_signal_init(&s->loop, &s->sigint);
	uv_signal_init(&s->loop, &s->sigterm);
	s->hb_timer.data = s->retry_timer.data = s->pump_timer.data = s->tele_timer.data = s;
	s->async.data = s->sigint.data = s->sigterm.data = s;
	uv_signal_start(&s->sigint, server_on_signal, SIGINT);
	uv_signal_start(&s->sigterm, server_on_signal, SIGTERM);
	sig_ignore_pipe();

	if (!s->zctx || sched_start(sched, server_notify, s, &err) < 0) {
		LOG_ERROR("start-up: %s", s->zctx ? err.msg : "zmq_ctx_new failed");
		goto out;
	}
	if (server_connect(s) < 0)
		goto out;
	uv_timer_start(&s->hb_timer, server_on_heartbeat, s->heartbeat_ms, s->heartbeat_ms);
	server_sample_now(s, &s->tele, &(struct sched_stats){0});
	uv_timer_start(&s->tele_timer, server_on_telemetry, SERVER_TELEMETRY_MS,
	               SERVER_TELEMETRY_MS);
	server_pump(s);
	uv_run(&s->loop, UV_RUN_DEFAULT);
	rc = s->rc;
	LOG_INFO("stopped: %llu messages received (%llu bad), %llu sent, %llu dropped, "
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
