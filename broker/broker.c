/* broker: the broker's state as a whole (broker.h): set-up, the two
 * sockets, teardown, the clock, reaping, and broker_check, the walk that
 * asserts the invariants broker.h states.
 *
 * Socket options are those of PROTOCOL.md, "Socket options". */
#include "broker.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

void broker_clock(struct broker *b)
{
	b->now_us = clock_mono_us();
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

static int broker_setopt(void *s, int opt, int v, const char *name, const char *ep)
{
	if (zmq_setsockopt(s, opt, &v, sizeof v) == 0)
		return 0;
	LOG_ERROR("zmq_setsockopt %s on %s: %s", name, ep, zmq_strerror(errno));
	return -1;
}

static void *broker_socket(struct broker *b, const char *ep, int64_t maxmsg, int hwm)
{
	void *s = zmq_socket(b->zctx, ZMQ_ROUTER);
	if (!s) {
		LOG_ERROR("zmq_socket for %s: %s", ep, zmq_strerror(errno));
		return NULL;
	}
	if (broker_setopt(s, ZMQ_LINGER, 0, "ZMQ_LINGER", ep) < 0 ||
	    broker_setopt(s, ZMQ_ROUTER_MANDATORY, 1, "ZMQ_ROUTER_MANDATORY", ep) < 0 ||
	    broker_setopt(s, ZMQ_SNDHWM, hwm, "ZMQ_SNDHWM", ep) < 0 ||
	    broker_setopt(s, ZMQ_RCVHWM, hwm, "ZMQ_RCVHWM", ep) < 0 ||
	    broker_setopt(s, ZMQ_HANDSHAKE_IVL, BROKER_HANDSHAKE_MS, "ZMQ_HANDSHAKE_IVL", ep) < 0 ||
	    broker_setopt(s, ZMQ_HEARTBEAT_IVL, BROKER_ZMTP_HB_MS, "ZMQ_HEARTBEAT_IVL", ep) < 0 ||
	    broker_setopt(s, ZMQ_HEARTBEAT_TIMEOUT, BROKER_ZMTP_HB_TO_MS, "ZMQ_HEARTBEAT_TIMEOUT",
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

void broker_init(struct broker *b)
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
}

int broker_bind(struct broker *b)
{
	b->zctx = zmq_ctx_new();
	if (!b->zctx) {
		LOG_ERROR("zmq_ctx_new: %s", zmq_strerror(errno));
		return -1;
	}
	b->front = broker_socket(b, b->cfg.front, BROKER_FRONT_MAXMSG, BROKER_FRONT_HWM);
	if (!b->front)
		return -1;
	b->back = broker_socket(b, b->cfg.back, BROKER_BACK_MAXMSG, BROKER_BACK_HWM);
	return b->back ? 0 : -1;
}

void broker_free(struct broker *b)
{
	size_t it = 0;
	void *v;
	if (b->front)
		zmq_close(b->front);
	if (b->back)
		zmq_close(b->back);
	if (b->zctx)
		zmq_ctx_term(b->zctx);
	b->front = b->back = b->zctx = NULL;
	/* Nothing is unlinked here: every object goes, then every index. */
	while (map_next(&b->requests, &it, &v))
		req_destroy(v);
	for (it = 0; map_next(&b->workers, &it, &v);)
		worker_destroy(v);
	for (it = 0; map_next(&b->clients, &it, &v);)
		free(v);
	for (it = 0; map_next(&b->models, &it, &v);)
		model_destroy(v);
	heap_free(&b->deadlines);
	free(b->decisions);
	free(b->pins);
	map_free(&b->requests);
	map_free(&b->sessions);
	map_free(&b->workers);
	map_free(&b->clients);
	map_free(&b->models);
}

/* ---- checks ---------------------------------------------------------------- */

void broker_assert_fail(const char *what, const char *file, int line, const char *func)
{
	LOG_ERROR("internal invariant broken at %s:%d (%s): %s", file, line, func, what);
	abort();
}

/* Always on: broker_check is only called with ITT_CHECKS (or by a test). */
#define CHECK(cond) ((cond) ? (void)0 : broker_assert_fail(#cond, __FILE__, __LINE__, __func__))

/* list.h: links agree both ways; returns the length. */
static size_t check_list(const struct link *head)
{
	size_t n = 0;
	CHECK(head->next->prev == head && head->prev->next == head);
	for (const struct link *l = head->next; l != head; l = l->next, n++)
		CHECK(l->next->prev == l && l->prev->next == l);
	return n;
}

/* map.h: cap 0 or a power of two, n * 2 <= cap, n keys, each found. */
static void check_map(const struct map *m)
{
	size_t n = 0;
	CHECK((m->cap & (m->cap - 1)) == 0 && m->n * 2 <= m->cap);
	for (size_t i = 0; i < m->cap; i++) {
		const struct map_slot *s = &m->slots[i];
		if (!s->key)
			continue;
		n++;
		CHECK(map_get(m, s->key, s->klen) == s->val);
	}
	CHECK(n == m->n);
}

/* heap.h: every item knows its index; no item is less than its parent. */
static void check_heap(const struct heap *h)
{
	CHECK(h->n <= h->cap);
	for (size_t i = 0; i < h->n; i++) {
		const size_t *slot =
		    (const size_t *)(const void *)((const char *)h->items[i] + h->idx_off);
		CHECK(*slot == i);
		CHECK(i == 0 || !h->less(h->items[i], h->items[(i - 1) / 2]));
	}
}

static bool check_in_heap(const struct heap *h, const struct request *r, size_t idx)
{
	return idx != HEAP_NONE && idx < h->n && h->items[idx] == r;
}

static void check_request(const struct broker *b, const struct request *r)
{
	size_t cl = strlen(r->client_id);
	CHECK(r->client_id == r->key && r->request_id == r->key + cl + 1);
	CHECK(r->key_len == cl + 1 + strlen(r->request_id));
	CHECK(map_get(&b->requests, r->key, r->key_len) == r);
	CHECK(r->model && map_get(&b->models, r->model->name, strlen(r->model->name)) == r->model);
	CHECK(r->n_gen <= r->gen_cap && r->n_chunks <= r->chunk_cap);
	CHECK(r->text_sent <= r->text_len && (r->text_len <= r->text_cap || !r->text_cap));
	CHECK(r->n_draft <= sizeof r->draft / sizeof r->draft[0]);
	for (uint32_t i = 0; i < r->n_chunks; i++) {
		CHECK(r->chunk_tok_end[i] <= r->n_gen && r->chunk_text_end[i] <= r->text_sent);
		CHECK(i == 0 || (r->chunk_tok_end[i - 1] <= r->chunk_tok_end[i] &&
		                 r->chunk_text_end[i - 1] <= r->chunk_text_end[i]));
	}
	CHECK(!r->n_chunks || r->chunk_text_end[r->n_chunks - 1] == r->text_sent);
	if (r->state == REQ_ENDED) {
		/* ended: kept for re-SUBMIT only */
		CHECK(!r->req && !r->client && !r->n_stages && !r->awaiting);
		CHECK(r->queue_idx == HEAP_NONE && r->deadline_idx == HEAP_NONE);
		CHECK(link_linked(&r->ended_link) && !link_linked(&r->client_link));
		CHECK(map_get(&b->sessions, &r->session_id, sizeof r->session_id) != r);
		return;
	}
	/* open: in sessions and deadlines, on exactly one client's list */
	CHECK(r->state == REQ_QUEUED || r->state == REQ_RUNNING);
	CHECK(r->req && !link_linked(&r->ended_link));
	CHECK(map_get(&b->sessions, &r->session_id, sizeof r->session_id) == r);
	CHECK(check_in_heap(&b->deadlines, r, r->deadline_idx));
	CHECK(r->client && link_linked(&r->client_link));
	CHECK(map_get(&b->clients, r->client->ident, r->client->ident_len) == r->client);
	if (r->state == REQ_QUEUED) {
		CHECK(!r->n_stages && !r->awaiting);
		CHECK(check_in_heap(&r->model->queue, r, r->queue_idx));
		return;
	}
	/* running iff on a route: one stage per worker, tiling the layers, one
	 * step in flight on stage `at`, stages up to `at` opened */
	CHECK(r->n_stages >= 1 && r->n_stages <= BROKER_MAX_STAGES);
	CHECK(r->queue_idx == HEAP_NONE);
	CHECK(r->awaiting && r->at < r->n_stages);
	uint32_t at = 0;
	for (uint32_t k = 0; k < r->n_stages; k++) {
		const struct stage *st = &r->stages[k];
		const struct worker *w = st->w;
		CHECK(st->r == r && link_linked(&st->link));
		CHECK(map_get(&b->workers, w->ident, w->ident_len) == w);
		CHECK(w->model == r->model && w->layer_first == at && w->layer_last > at);
		CHECK(k > r->at || st->opened);
		at = w->layer_last;
	}
	CHECK(at == r->model->n_layers);
}

static void check_worker(const struct broker *b, const struct worker *w)
{
	CHECK(w->id && w->host && w->hello && w->model);
	CHECK(map_get(&b->workers, w->ident, w->ident_len) == w);
	CHECK(link_linked(&w->seen_link) && link_linked(&w->model_link));
	CHECK(w->lost == link_linked(&w->reap_link));
	CHECK(w->layer_first < w->layer_last && w->layer_last <= w->n_layers);
	CHECK(w->max_sessions >= 1 && w->n_sessions <= w->max_sessions);
	/* its session list: one stage of a running request each; in_flight
	 * counts the stages whose step is in flight */
	uint32_t n = 0, in_flight = 0;
	for (const struct link *l = w->sessions.next; l != &w->sessions; l = l->next, n++) {
		const struct stage *st = LINK_ENTRY(l, struct stage, link);
		const struct request *r = st->r;
		CHECK(st->w == w && r->state == REQ_RUNNING);
		CHECK(st >= r->stages && st < r->stages + r->n_stages);
		in_flight += r->awaiting && st == &r->stages[r->at];
	}
	CHECK(n == w->n_sessions && check_list(&w->sessions) == n);
	CHECK(in_flight == w->in_flight);
}

static void check_model(const struct broker *b, const struct model *m)
{
	CHECK(map_get(&b->models, m->name, strlen(m->name)) == m);
	uint32_t n = 0;
	for (const struct link *l = m->workers.next; l != &m->workers; l = l->next, n++) {
		const struct worker *w = LINK_ENTRY(l, struct worker, model_link);
		CHECK(w->model == m);
		CHECK(w->vocab == m->vocab && w->ctx_len == m->ctx_len &&
		      w->n_layers == m->n_layers);
	}
	CHECK(n == m->n_workers && check_list(&m->workers) == n);
	check_heap(&m->queue);
	for (size_t i = 0; i < m->queue.n; i++) {
		const struct request *r = m->queue.items[i];
		CHECK(r->model == m && r->state == REQ_QUEUED);
	}
	uint32_t running = 0;
	size_t it = 0;
	void *v;
	while (map_next(&b->requests, &it, &v)) {
		const struct request *r = v;
		running += r->model == m && r->state == REQ_RUNNING;
	}
	CHECK(running == m->n_running);
	CHECK(m->n_pub <= BROKER_MAX_ROUTES);
	for (uint32_t i = 0; i < m->n_pub; i++)
		CHECK(m->pub_len[i] >= 1 && m->pub_len[i] <= BROKER_MAX_STAGES);
}

static void check_client(const struct broker *b, const struct client *c)
{
	CHECK(map_get(&b->clients, c->ident, c->ident_len) == c);
	CHECK(link_linked(&c->seen_link));
	CHECK(c->gone == link_linked(&c->reap_link));
	uint32_t n = 0;
	for (const struct link *l = c->requests.next; l != &c->requests; l = l->next, n++) {
		const struct request *r = LINK_ENTRY(l, struct request, client_link);
		CHECK(r->client == c && r->state != REQ_ENDED);
	}
	CHECK(n == c->n_open && check_list(&c->requests) == n);
	/* on clients_sent only while it has open requests (and always then,
	 * unless a send to it failed) */
	CHECK(!link_linked(&c->sent_link) || c->n_open);
	CHECK(!c->n_open || c->gone || link_linked(&c->sent_link));
}

void broker_check(const struct broker *b)
{
	size_t it, n_open = 0, n_lost = 0, n_gone = 0;
	uint32_t n_workers = 0;
	void *v;
	check_map(&b->requests);
	check_map(&b->sessions);
	check_map(&b->workers);
	check_map(&b->clients);
	check_map(&b->models);
	check_heap(&b->deadlines);
	for (it = 0; map_next(&b->requests, &it, &v);) {
		const struct request *r = v;
		check_request(b, r);
		n_open += r->state != REQ_ENDED;
	}
	CHECK(b->sessions.n == n_open && b->deadlines.n == n_open);
	for (it = 0; map_next(&b->workers, &it, &v);) {
		const struct worker *w = v;
		check_worker(b, w);
		n_lost += w->lost;
	}
	for (it = 0; map_next(&b->models, &it, &v);) {
		const struct model *m = v;
		check_model(b, m);
		n_workers += m->n_workers;
	}
	CHECK(n_workers == b->workers.n);
	for (it = 0; map_next(&b->clients, &it, &v);) {
		const struct client *c = v;
		check_client(b, c);
		n_gone += c->gone;
	}
	/* the orders the ticks scan: oldest first */
	CHECK(check_list(&b->workers_seen) == b->workers.n);
	CHECK(check_list(&b->reap_workers) == n_lost);
	CHECK(check_list(&b->clients_seen) == b->clients.n);
	CHECK(check_list(&b->reap_clients) == n_gone);
	check_list(&b->clients_sent);
	uint64_t last = 0;
	for (const struct link *l = b->workers_seen.next; l != &b->workers_seen; l = l->next) {
		const struct worker *w = LINK_ENTRY(l, struct worker, seen_link);
		CHECK(w->last_recv_ms >= last);
		last = w->last_recv_ms;
	}
	last = 0;
	for (const struct link *l = b->clients_seen.next; l != &b->clients_seen; l = l->next) {
		const struct client *c = LINK_ENTRY(l, struct client, seen_link);
		CHECK(c->last_recv_ms >= last);
		last = c->last_recv_ms;
	}
	last = 0;
	for (const struct link *l = b->clients_sent.next; l != &b->clients_sent; l = l->next) {
		const struct client *c = LINK_ENTRY(l, struct client, sent_link);
		CHECK(c->last_send_ms >= last);
		last = c->last_send_ms;
	}
	/* ended requests: kept oldest first, at most keep_ended of them */
	CHECK(check_list(&b->ended) == b->n_ended);
	CHECK(b->n_ended <= (uint32_t)b->cfg.keep_ended);
	last = 0;
	for (const struct link *l = b->ended.next; l != &b->ended; l = l->next) {
		const struct request *r = LINK_ENTRY(l, struct request, ended_link);
		CHECK(r->state == REQ_ENDED && r->t_end_us >= last);
		last = r->t_end_us;
	}
	CHECK(b->n_dec <= BROKER_DECISIONS && b->dec_head < BROKER_DECISIONS);
	CHECK(b->n_dec == BROKER_DECISIONS || b->dec_head == 0);
	CHECK(b->n_pins <= b->pins_cap);
	for (uint32_t i = 0; i < b->n_pins; i++)
		CHECK(b->pins[i].mask &&
		      !(b->pins[i].mask &
		        ~(unsigned)(KNOB_THREADS | KNOB_BATCH_TOKENS | KNOB_SLOW_MS)));
	CHECK(b->coord_ident_len <= WIRE_MAX_IDENTITY);
}
