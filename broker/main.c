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
 * The broker's state, sockets and handlers are itt_broker_core (broker.c and
 * the modules of broker.h); this file is the process around them. */
#include "broker.h"

#include <errno.h>

#include "log.h"
#include "sig.h"

static void broker_tick(struct broker *b)
{
	back_tick(b);
	control_tick(b);
	req_tick(b);
	front_tick(b);
	broker_reap(b);
	BROKER_CHECK(b);
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

	sig_stop_install();

	broker_init(b);
	if (broker_bind(b) < 0) {
		broker_free(b);
		return 1;
	}
	LOG_INFO("serving clients on %s, workers on %s (heartbeat %d ms x %d, queue limit %d, "
	         "%d api keys)",
	         b->cfg.front, b->cfg.back, b->cfg.heartbeat_ms, b->cfg.liveness,
	         b->cfg.queue_limit, b->cfg.n_api_keys);

	uint64_t next_tick = b->now_ms + BROKER_TICK_MS;
	while (!sig_stop) {
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
		for (int i = 0; i < 1024 && (front || back) && !sig_stop; i++) {
			if (front && !front_handle(b))
				front = false;
			if (back && !back_handle(b))
				back = false;
			if (!link_empty(&b->reap_workers) || !link_empty(&b->reap_clients)) {
				broker_reap(b);
				BROKER_CHECK(b);
			}
		}
		broker_clock(b);
		if (b->now_ms >= next_tick) {
			broker_tick(b);
			next_tick = b->now_ms + BROKER_TICK_MS;
		}
	}
	LOG_INFO("stopping (signal %d): %zu open requests, %zu workers, %llu requests served",
	         (int)sig_stop, b->sessions.n, b->workers.n, (unsigned long long)b->n_completed);
	broker_free(b);
	return 0;
}
