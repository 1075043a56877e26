/* itt-broker: the data-plane hub (PROTOCOL.md, "Broker").
 *
 * One thread, one zmq_poll loop over the front end (clients, ROUTER) and the
 * back end (workers, ROUTER).  Each wake-up drains both sockets without
 * blocking (alternating, so neither side starves the other), reaps peers
 * whose sends failed, and every BROKER_TICK_MS runs the tick: worker expiry
 * and heartbeats, deadlines and expiry of ended requests, client liveness
 * and heartbeats.  SIGINT/SIGTERM stop the loop; sockets close with linger
 * 0, as the protocol says (a stopping broker drops unsent replies).
 *
 * Socket options are those of PROTOCOL.md, "Socket options". */
#include "broker.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static volatile sig_atomic_t main_stop;

static void main_on_signal(int sig)
{
	main_stop = sig;
}

void broker_clock(struct broker *b)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	b->now_us = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	b->now_ms = b->now_us / 1000u;
}

const char *broker_peer_name(const uint8_t *ident, size_t len, char *buf, size_t cap)
{
	size_t o = (size_t)snprintf(buf, cap, "0x");
	for (size_t i = 0; i < len && i < 8 && o + 3 <= cap; i++)
		o += (size_t)snprintf(buf + o, cap - o, "%02x", ident[i]);
	if (len > 8 && o + 4 <= cap)
		snprintf(buf + o, cap - o, "...");
	return buf;
}

void broker_reap(struct broker *b)
{
	while (!link_empty(&b->reap_workers))
		back_lose_worker(b, LINK_ENTRY(b->reap_workers.next, struct worker, reap_link),
		                 "unreachable");
	while (!link_empty(&b->reap_clients))
		front_lose_client(b, LINK_ENTRY(b->reap_clients.next, struct client, reap_link),
		                  "unreachable");
}

static int main_setopt(void *s, int opt, int v, const char *name, const char *ep)
{
	if (zmq_setsockopt(s, opt, &v, sizeof v) == 0)
		return 0;
	LOG_ERROR("zmq_setsockopt %s on %s: %s", name, ep, zmq_strerror(errno));
	return -1;
}

static void *main_socket(struct broker *b, const char *ep, int64_t maxmsg, int hwm)
{
	void *s = zmq_socket(b->zctx, ZMQ_ROUTER);
	if (!s) {
		LOG_ERROR("zmq_socket for %s: %s", ep, zmq_strerror(errno));
		return NULL;
	}
	if (main_setopt(s, ZMQ_LINGER, 0, "ZMQ_LINGER", ep) < 0 ||
	    main_setopt(s, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY", ep) < 0 ||
	    main_setopt(s, ZMQ_SNDHWM, hwm, "ZMQ_SNDHWM", ep) < 0 ||
	    main_setopt(s, ZMQ_RCVHWM, hwm, "ZMQ_RCVHWM", ep) < 0 ||
	    main_setopt(s, ZMQ_HANDSHAKE_IVL, BROKER_HANDSHAKE_MS, "ZMQ_HANDSHAKE_IVL", ep) < 0 ||
	    main_setopt(s, ZMQ_HEARTBEAT_IVL, BROKER_ZMTP_HB_MS, "ZMQ_HEARTBEAT_IVL", ep) < 0 ||
	    main_setopt(s, ZMQ_HEARTBEAT_TIMEOUT, BROKER_ZMTP_HB_TO_MS, "ZMQ_HEARTBEAT_TIMEOUT",
	                ep) < 0)
		goto fail;
	if (zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) < 0) {
		LOG_ERROR("zmq_setsockopt ZMQ_MAXMSGSIZE on %s: %s", ep, zmq_strerror(errno));
		goto fail;
	}
	if (zmq_bind(s, ep) < 0) {
		LOG_ERROR("zmq_bind %s: %s", ep, zmq_strerror(errno));
		goto fail;
	}
	return s;
fail:
	zmq_close(s);
	return NULL;
}

static int broker_init(struct broker *b)
{
	wire_limits_default(&b->lim);
	map_init(&b->requests);
	map_init(&b->sessions);
	map_init(&b->workers);
	map_init(&b->clients);
	map_init(&b->models);
	heap_init(&b->deadlines, req_deadline_less, offsetof(struct request, deadline_idx));
	link_init(&b->workers_seen);
	link_init(&b->clients_seen);
	link_init(&b->clients_sent);
	link_init(&b->ended);
	link_init(&b->reap_workers);
	link_init(&b->reap_clients);
	broker_clock(b);
	b->t_start_ms = b->now_ms;
	b->rng = b->now_us ^ ((uint64_t)getpid() << 32) ^ (uint64_t)time(NULL);
	b->zctx = zmq_ctx_new();
	if (!b->zctx) {
		LOG_ERROR("zmq_ctx_new: %s", zmq_strerror(errno));
		return -1;
	}
	b->front = main_socket(b, b->cfg.front, BROKER_FRONT_MAXMSG, BROKER_FRONT_HWM);
	if (!b->front)
		return -1;
	b->back = main_socket(b, b->cfg.back, BROKER_BACK_MAXMSG, BROKER_BACK_HWM);
	return b->back ? 0 : -1;
}

static void broker_free(struct broker *b)
{
	size_t it = 0;
	void *v;
	if (b->front)
		zmq_close(b->front);
	if (b->back)
		zmq_close(b->back);
	if (b->zctx)
		zmq_ctx_term(b->zctx);
	/* Nothing is unlinked here: every object goes, then every index. */
	while (map_next(&b->requests, &it, &v)) {
		struct request *r = v;
		if (r->req)
			itt__generate_request__free_unpacked(r->req, NULL);
		free(r->prompt);
		free(r->gen);
		free(r->text);
		free(r->chunk_tok_end);
		free(r->chunk_text_end);
		free(r);
	}
	for (it = 0; map_next(&b->workers, &it, &v);) {
		struct worker *w = v;
		if (w->hello)
			itt__worker_hello__free_unpacked(w->hello, NULL);
		if (w->telemetry)
			itt__telemetry__free_unpacked(w->telemetry, NULL);
		free(w->id);
		free(w->host);
		free(w);
	}
	for (it = 0; map_next(&b->clients, &it, &v);)
		free(v);
	for (it = 0; map_next(&b->models, &it, &v);) {
		struct model *m = v;
		heap_free(&m->queue);
		route_clear(m);
		free(m->name);
		free(m);
	}
	heap_free(&b->deadlines);
	free(b->decisions);
	free(b->pins);
	map_free(&b->requests);
	map_free(&b->sessions);
	map_free(&b->workers);
	map_free(&b->clients);
	map_free(&b->models);
}

static void broker_tick(struct broker *b)
{
	back_tick(b);
	control_tick(b);
	req_tick(b);
	front_tick(b);
	broker_reap(b);
}

int main(int argc, char **argv)
{
	static struct broker broker;
	struct broker *b = &broker;
	int rc = broker_config_parse(&b->cfg, argc, argv);
	if (rc)
		return rc == 1 ? 0 : 2;
	log_set_program("itt-broker");
	log_level_now = b->cfg.log_level;

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = main_on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (broker_init(b) < 0) {
		broker_free(b);
		return 1;
	}
	LOG_INFO("serving clients on %s, workers on %s (heartbeat %d ms x %d, queue limit %d, "
	         "%d api keys)",
	         b->cfg.front, b->cfg.back, b->cfg.heartbeat_ms, b->cfg.liveness,
	         b->cfg.queue_limit, b->cfg.n_api_keys);

	uint64_t next_tick = b->now_ms + BROKER_TICK_MS;
	while (!main_stop) {
		broker_clock(b);
		long timeout = next_tick > b->now_ms ? (long)(next_tick - b->now_ms) : 0;
		zmq_pollitem_t items[2] = {{b->front, 0, ZMQ_POLLIN, 0},
		                           {b->back, 0, ZMQ_POLLIN, 0}};
		if (zmq_poll(items, 2, timeout) < 0) {
			if (errno == EINTR)
				continue;
			LOG_ERROR("zmq_poll: %s", zmq_strerror(errno));
			break;
		}
		/* Drain only what zmq_poll reported, each socket until it is empty
		 * (alternating, so neither side starves the other), and bounded so
		 * the tick runs even under a flood: every receive attempt costs
		 * libzmq a few system calls, which dominate an idle broker's
		 * latency. */
		bool front = items[0].revents & ZMQ_POLLIN, back = items[1].revents & ZMQ_POLLIN;
		for (int i = 0; i < 1024 && (front || back) && !main_stop; i++) {
			if (front && !front_handle(b))
				front = false;
			if (back && !back_handle(b))
				back = false;
			if (!link_empty(&b->reap_workers) || !link_empty(&b->reap_clients))
				broker_reap(b);
		}
		broker_clock(b);
		if (b->now_ms >= next_tick) {
			broker_tick(b);
			next_tick = b->now_ms + BROKER_TICK_MS;
		}
	}
	LOG_INFO("stopping (signal %d): %zu open requests, %zu workers, %llu requests served",
	         (int)main_stop, b->sessions.n, b->workers.n, (unsigned long long)b->n_completed);
	broker_free(b);
	return 0;
}
