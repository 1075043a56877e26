/* itt-coordinator: the control plane (coord.h has the module map).
 *
 * One thread, one zmq_poll loop on a DEALER connected to the broker's back
 * end.  The connection follows PROTOCOL.md, "Coordinator": CONTROL_HELLO,
 * then WELCOME {heartbeat_ms, liveness}; HEARTBEAT every heartbeat_ms;
 * a broker silent for liveness intervals (or one that never welcomes us)
 * is dropped: the socket is closed, the cluster forgotten, and after a
 * backoff (250 ms doubling to 4 s, with jitter) a new socket sends
 * CONTROL_HELLO again; the state is rebuilt from WORKER_UP.  Every
 * interval_ms after WELCOME the tick runs (coord_tick).  SIGINT/SIGTERM
 * stop the loop. */
#include "coord.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "sig.h"
#include "wire.h"

#define MAIN_HB_DEFAULT_MS    500
#define MAIN_LIVENESS_DEFAULT 3
#define MAIN_KICK_MS          50

static const int main_accepts[] = {WIRE_WELCOME,     WIRE_HEARTBEAT, WIRE_ERROR, WIRE_WORKER_UP,
                                   WIRE_WORKER_DOWN, WIRE_TELEMETRY, 0};

static int main_setopt(void *s, int opt, int v, const char *name, const char *ep)
{
	if (zmq_setsockopt(s, opt, &v, sizeof v) == 0)
		return 0;
	LOG_ERROR("zmq_setsockopt %s for %s: %s", name, ep, zmq_strerror(errno));
	return -1;
}

static void main_schedule_reconnect(struct coord *c)
{
	/* jitter: 75%..125% of the backoff */
	uint64_t d = c->backoff_ms * (75u + (uint64_t)(rand() % 51)) / 100u;
	c->reconnect_at_ms = c->now_ms + d;
	c->backoff_ms =
	    c->backoff_ms * 2 > COORD_BACKOFF_MAX_MS ? COORD_BACKOFF_MAX_MS : c->backoff_ms * 2;
}

static void main_disconnect(struct coord *c, const char *why)
{
	LOG_WARN("broker %s: %s; reconnecting", c->cfg.broker, why);
	if (c->sock)
		zmq_close(c->sock);
	c->sock = NULL;
	c->welcomed = false;
	coord_reset(c);
	main_schedule_reconnect(c);
}

static int main_connect(struct coord *c)
{
	const char *ep = c->cfg.broker;
	int64_t maxmsg = COORD_MAXMSG;
	void *s = zmq_socket(c->zctx, ZMQ_DEALER);
	if (!s) {
		LOG_ERROR("zmq_socket DEALER for %s: %s", ep, zmq_strerror(errno));
		return -1;
	}
	if (main_setopt(s, ZMQ_LINGER, 0, "ZMQ_LINGER", ep) < 0 ||
	    main_setopt(s, ZMQ_RECONNECT_IVL, 100, "ZMQ_RECONNECT_IVL", ep) < 0 ||
	    main_setopt(s, ZMQ_RECONNECT_IVL_MAX, 4000, "ZMQ_RECONNECT_IVL_MAX", ep) < 0 ||
	    main_setopt(s, ZMQ_HANDSHAKE_IVL, 2000, "ZMQ_HANDSHAKE_IVL", ep) < 0 ||
	    main_setopt(s, ZMQ_HEARTBEAT_IVL, 1000, "ZMQ_HEARTBEAT_IVL", ep) < 0 ||
	    main_setopt(s, ZMQ_HEARTBEAT_TIMEOUT, 3000, "ZMQ_HEARTBEAT_TIMEOUT", ep) < 0 ||
	    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) < 0) {
		zmq_close(s);
		return -1;
	}
	if (zmq_connect(s, ep) < 0) {
		LOG_ERROR("zmq_connect %s: %s", ep, zmq_strerror(errno));
		zmq_close(s);
		return -1;
	}
	c->sock = s;
	c->welcomed = false;
	c->hb_ms = MAIN_HB_DEFAULT_MS;
	c->liveness = MAIN_LIVENESS_DEFAULT;
	c->last_recv_ms = c->now_ms;
	Itt__ControlHello h = ITT__CONTROL_HELLO__INIT;
	h.coordinator_id = c->cfg.id;
	if (coord_send(c, WIRE_CONTROL_HELLO, &h) < 0)
		return -1;
	LOG_INFO("connected to broker %s as %s; sent CONTROL_HELLO", ep, c->cfg.id);
	return 0;
}

static void main_welcome(struct coord *c, const struct wire_msg *m)
{
	Itt__Welcome *w = itt__welcome__unpack(NULL, m->body_len, m->body);
	c->hb_ms = MAIN_HB_DEFAULT_MS;
	c->liveness = MAIN_LIVENESS_DEFAULT;
	if (w) {
		if (w->has_heartbeat_ms && w->heartbeat_ms >= 10 && w->heartbeat_ms <= 60000)
			c->hb_ms = w->heartbeat_ms;
		if (w->has_liveness && w->liveness >= 1 && w->liveness <= 100)
			c->liveness = w->liveness;
		itt__welcome__free_unpacked(w, NULL);
	} else {
		LOG_WARN("WELCOME from broker %s: malformed Welcome body; using defaults",
		         c->cfg.broker);
	}
	if (c->welcomed) /* a second WELCOME: a new session with the broker */
		coord_reset(c);
	c->welcomed = true;
	c->fresh = true;
	c->backoff_ms = COORD_BACKOFF_MIN_MS;
	c->next_hb_ms = c->now_ms + c->hb_ms;
	/* The broker sends every WORKER_UP right after WELCOME; the first
	 * tick, one interval later, sees the whole cluster. */
	c->next_tick_ms = c->now_ms + (uint64_t)c->cfg.interval_ms;
	LOG_INFO("broker %s welcomed us: heartbeat %u ms, liveness %u", c->cfg.broker, c->hb_ms,
	         c->liveness);
}

/* An ERROR saying the broker does not know this peer (a restarted broker
 * answers a heartbeat so): say CONTROL_HELLO again. */
static bool main_unknown_peer(const struct wire_msg *m)
{
	Itt__Error *e = itt__error__unpack(NULL, m->body_len, m->body);
	bool unknown = e && e->has_code && e->code == ITT__CODE__NOT_FOUND && e->reason &&
	               (strstr(e->reason, "send HELLO") || strstr(e->reason, "CONTROL_HELLO") ||
	                strstr(e->reason, "unknown coordinator"));
	if (e)
		itt__error__free_unpacked(e, NULL);
	return unknown;
}

static void main_drain(struct coord *c)
{
	for (;;) {
		struct wire_msg m;
		struct itt_err err = {0};
		int rc = wire_recv(c->sock, false, main_accepts, &m, &err,
		                   ZMQ_DONTWAIT);
		if (rc <= 0) {
			if (rc < 0 && errno != EAGAIN && errno != EINTR)
				LOG_WARN("zmq_recv from broker %s: %s", c->cfg.broker,
				         zmq_strerror(errno));
			return;
		}
		c->now_ms = clock_mono_ms();
		c->last_recv_ms = c->now_ms;
		if (err.code) {
			LOG_WARN("broker %s sent a bad message (%s): %s; dropped", c->cfg.broker,
			         wire_code_name(err.code), err.msg);
		} else if (m.cmd == WIRE_WELCOME) {
			main_welcome(c, &m);
		} else if (m.cmd == WIRE_ERROR && main_unknown_peer(&m)) {
			wire_msg_close(&m);
			main_disconnect(c, "the broker does not know this coordinator");
			return;
		} else if (c->welcomed && m.cmd != WIRE_HEARTBEAT) {
			coord_handle(c, &m);
		}
		wire_msg_close(&m);
	}
}

static uint64_t main_min(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static int main_loop(struct coord *c)
{
	c->backoff_ms = COORD_BACKOFF_MIN_MS;
	c->now_ms = clock_mono_ms();
	c->reconnect_at_ms = c->now_ms;
	while (!sig_stop) {
		c->now_ms = clock_mono_ms();
		if (!c->sock && c->now_ms >= c->reconnect_at_ms && main_connect(c) < 0) {
			if (c->sock)
				zmq_close(c->sock);
			c->sock = NULL;
			main_schedule_reconnect(c);
		}
		uint64_t due;
		if (!c->sock) {
			due = c->reconnect_at_ms;
		} else {
			due = c->last_recv_ms + (uint64_t)c->hb_ms * c->liveness + 1;
			if (c->welcomed)
				due = main_min(due, main_min(c->next_hb_ms, c->next_tick_ms));
		}
		long timeout = due > c->now_ms ? (long)(due - c->now_ms) : 0;
		zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
		int rc = zmq_poll(&it, c->sock ? 1 : 0, timeout);
		if (rc < 0 && errno != EINTR) {
			LOG_ERROR("zmq_poll: %s", zmq_strerror(errno));
			return 1;
		}
		c->now_ms = clock_mono_ms();
		if (!c->sock)
			continue;
		if (rc > 0)
			main_drain(c);
		if (!c->sock)
			continue;
		/* A join, a leave or a finished move is decided within
		 * MAIN_KICK_MS (events that come together are decided together),
		 * not at the next interval; the first tick after WELCOME still
		 * waits a whole interval, to see the cluster first. */
		if (c->kick && !c->fresh)
			c->next_tick_ms = main_min(c->next_tick_ms, c->now_ms + MAIN_KICK_MS);
		c->kick = false;
		uint64_t silent = c->now_ms - c->last_recv_ms;
		if (silent > (uint64_t)c->hb_ms * c->liveness) {
			char why[96];
			snprintf(why, sizeof why, "%s for %llu ms",
			         c->welcomed ? "silent" : "no WELCOME", (unsigned long long)silent);
			main_disconnect(c, why);
			continue;
		}
		if (!c->welcomed)
			continue;
		if (c->now_ms >= c->next_hb_ms) {
			Itt__Heartbeat hb = ITT__HEARTBEAT__INIT;
			hb.has_time_ms = true;
			hb.time_ms = clock_wall_ms();
			coord_send(c, WIRE_HEARTBEAT, &hb);
			c->next_hb_ms = c->now_ms + c->hb_ms;
		}
		if (c->now_ms >= c->next_tick_ms) {
			coord_tick(c);
			c->next_tick_ms = c->now_ms + (uint64_t)c->cfg.interval_ms;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct coord c;
	memset(&c, 0, sizeof c);
	int rc = coord_config_parse(&c.cfg, argc, argv);
	if (rc)
		return rc == 1 ? 0 : 2;
	log_set_program("itt-coordinator");
	log_level_now = c.cfg.log_level;
	srand((unsigned)(clock_mono_ms() ^ (uint64_t)getpid()));

	sig_stop_install();

	if (coord_init(&c) < 0)
		return 1;
	c.zctx = zmq_ctx_new();
	if (!c.zctx) {
		LOG_ERROR("zmq_ctx_new: %s", zmq_strerror(errno));
		coord_free(&c);
		return 1;
	}
	LOG_INFO("itt-coordinator %s: broker %s, stages %s%d, tpot %d ms, tick %d ms, hold %d s, "
	         "min gain %.2f, cooldown %d s",
	         c.cfg.id, c.cfg.broker, c.cfg.stages ? "" : "auto/", c.cfg.stages, c.cfg.tpot_ms,
	         c.cfg.interval_ms, c.cfg.hold_s, c.cfg.min_gain, c.cfg.cooldown_s);
	rc = main_loop(&c);
	LOG_INFO("stopping (signal %d): %llu messages of control sent, %zu decisions kept",
	         (int)sig_stop, (unsigned long long)c.sent, c.dec_n);
	if (c.sock)
		zmq_close(c.sock);
	zmq_ctx_term(c.zctx);
	coord_free(&c);
	return rc;
}
