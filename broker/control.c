/* control: the broker's side of the control plane (PROTOCOL.md,
 * "Telemetry, settings, placement" and "Coordinator").
 *
 * Telemetry: each worker's latest TELEMETRY is kept (STATS shows it) and
 * forwarded to the coordinator with worker_id and pinned filled in.
 *
 * The coordinator is a peer of the back end that sent CONTROL_HELLO; one at
 * a time (a new one replaces the old), forgotten after liveness x
 * heartbeat_ms of silence.  It gets WELCOME, then WORKER_UP for every
 * registered worker (with its latest TELEMETRY), then every HELLO, loss and
 * TELEMETRY.  Its PLACE moves a worker (sessions replayed without counting,
 * ASSIGN sent, the worker unroutable until its next HELLO), ROUTES replaces
 * a model's published routes, SET changes knobs that are not pinned.
 *
 * Operators send SET on the front end: values, pins and unpins; pins live
 * here, by worker id.  Every change is a decision in a bounded ring. */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

#define CONTROL_MAX_THREADS 64
#define CONTROL_MAX_SLOW_MS 10000

/* ---- decisions and pins ------------------------------------------------- */

void control_decide(struct broker *b, const char *target, const char *knob, const char *old_value,
                    const char *new_value, const char *reason, const char *source)
{
	if (!b->decisions && !(b->decisions = calloc(BROKER_DECISIONS, sizeof *b->decisions))) {
		LOG_ERROR("out of memory for the decision log");
		return;
	}
	struct decision *d;
	if (b->n_dec < BROKER_DECISIONS) {
		d = &b->decisions[(b->dec_head + b->n_dec++) % BROKER_DECISIONS];
	} else {
		d = &b->decisions[b->dec_head];
		b->dec_head = (b->dec_head + 1) % BROKER_DECISIONS;
	}
	d->time_ms = clock_wall_ms(); /* a time of day, shown to people */
	snprintf(d->target, sizeof d->target, "%s", target);
	snprintf(d->knob, sizeof d->knob, "%s", knob);
	snprintf(d->old_value, sizeof d->old_value, "%s", old_value);
	snprintf(d->new_value, sizeof d->new_value, "%s", new_value);
	snprintf(d->reason, sizeof d->reason, "%s", reason);
	snprintf(d->source, sizeof d->source, "%s", source);
	LOG_INFO("decision (%s): %s %s: %s -> %s: %s", source, target, knob, old_value, new_value,
	         reason);
}

static struct pin *control_pin_find(const struct broker *b, const char *id)
{
	for (uint32_t i = 0; i < b->n_pins; i++)
		if (!strcmp(b->pins[i].id, id))
			return &b->pins[i];
	return NULL;
}

unsigned control_pins(const struct broker *b, const char *worker_id)
{
	const struct pin *p = control_pin_find(b, worker_id);
	return p ? p->mask : 0;
}

static const struct {
	const char *name;
	unsigned bit;
} control_knobs[] = {
    {"threads", KNOB_THREADS},
    {"batch_tokens", KNOB_BATCH_TOKENS},
    {"slow_ms", KNOB_SLOW_MS},
};
#define CONTROL_N_KNOBS (sizeof control_knobs / sizeof control_knobs[0])

size_t control_pin_names(unsigned mask, const char **out)
{
	size_t n = 0;
	for (size_t i = 0; i < CONTROL_N_KNOBS; i++)
		if (mask & control_knobs[i].bit)
			out[n++] = control_knobs[i].name;
	out[n] = NULL;
	return n;
}

static unsigned control_knob_bit(const char *name)
{
	for (size_t i = 0; i < CONTROL_N_KNOBS; i++)
		if (!strcmp(name, control_knobs[i].name))
			return control_knobs[i].bit;
	return 0;
}

static int control_pin_set(struct broker *b, const char *id, unsigned mask)
{
	struct pin *p = control_pin_find(b, id);
	if (!p) {
		if (!mask)
			return 0;
		if (b->n_pins == b->pins_cap) {
			uint32_t cap = b->pins_cap ? 2 * b->pins_cap : 16;
			struct pin *np = realloc(b->pins, cap * sizeof *np);
			if (!np)
				return -1;
			b->pins = np;
			b->pins_cap = cap;
		}
		p = &b->pins[b->n_pins++];
		snprintf(p->id, sizeof p->id, "%s", id);
	}
	p->mask = mask;
	if (!mask)
		*p = b->pins[--b->n_pins];
	return 0;
}

/* ---- settings ------------------------------------------------------------ */

static unsigned control_settings_mask(const Itt__Settings *s)
{
	if (!s)
		return 0;
	return (s->has_threads ? KNOB_THREADS : 0) | (s->has_batch_tokens ? KNOB_BATCH_TOKENS : 0) |
	       (s->has_slow_ms ? KNOB_SLOW_MS : 0);
}

/* 0, or INVALID_ARGUMENT with the reason in *err. */
static int control_check_settings(const struct worker *w, const Itt__Settings *s,
                                  struct itt_err *err)
{
	const int bad = ITT__CODE__INVALID_ARGUMENT;
	uint32_t max_bt = w->max_batch_tokens ? w->max_batch_tokens : 65536;
	if (s->has_threads && (s->threads < 1 || s->threads > CONTROL_MAX_THREADS))
		return itt_err_set(err, bad, "threads %u out of range [1, %d]", s->threads,
		                   CONTROL_MAX_THREADS);
	if (s->has_batch_tokens && (s->batch_tokens < 1 || s->batch_tokens > max_bt))
		return itt_err_set(err, bad, "batch_tokens %u out of range [1, %u] for worker %s",
		                   s->batch_tokens, max_bt, w->id);
	if (s->has_slow_ms && s->slow_ms > CONTROL_MAX_SLOW_MS)
		return itt_err_set(err, bad, "slow_ms %u out of range [0, %d]", s->slow_ms,
		                   CONTROL_MAX_SLOW_MS);
	return 0;
}

static void control_fmt_knob(char *buf, size_t cap, bool has, uint32_t v)
{
	if (has)
		snprintf(buf, cap, "%u", v);
	else
		snprintf(buf, cap, "?");
}

/* Sends SETTINGS with the knobs of s to w and logs a decision per knob. */
static void control_apply(struct broker *b, struct worker *w, const Itt__Settings *s,
                          const char *reason, const char *source)
{
	char o[32], n[32];
	Itt__Settings out = ITT__SETTINGS__INIT;
	if (s->has_threads) {
		control_fmt_knob(o, sizeof o, w->settings.has_threads, w->settings.threads);
		snprintf(n, sizeof n, "%u", s->threads);
		control_decide(b, w->id, "threads", o, n, reason, source);
		out.has_threads = w->settings.has_threads = true;
		out.threads = w->settings.threads = s->threads;
	}
	if (s->has_batch_tokens) {
		control_fmt_knob(o, sizeof o, w->settings.has_batch_tokens,
		                 w->settings.batch_tokens);
		snprintf(n, sizeof n, "%u", s->batch_tokens);
		control_decide(b, w->id, "batch_tokens", o, n, reason, source);
		out.has_batch_tokens = w->settings.has_batch_tokens = true;
		out.batch_tokens = w->settings.batch_tokens = s->batch_tokens;
	}
	if (s->has_slow_ms) {
		control_fmt_knob(o, sizeof o, w->settings.has_slow_ms, w->settings.slow_ms);
		snprintf(n, sizeof n, "%u", s->slow_ms);
		control_decide(b, w->id, "slow_ms", o, n, reason, source);
		out.has_slow_ms = w->settings.has_slow_ms = true;
		out.slow_ms = w->settings.slow_ms = s->slow_ms;
	}
	back_send(b, w, WIRE_SETTINGS, &out.base);
}

/* ---- the coordinator ----------------------------------------------------- */

bool control_is_coord(const struct broker *b, const uint8_t *ident, size_t len)
{
	return b->coord_ident_len && len == b->coord_ident_len &&
	       !memcmp(ident, b->coord_ident, len);
}

static int control_send(struct broker *b, int cmd, const ProtobufCMessage *msg)
{
	if (!b->coord_ident_len)
		return -1;
	if (wire_send(b->back, b->coord_ident, b->coord_ident_len, cmd, msg, NULL, 0,
	              ZMQ_DONTWAIT) < 0) {
		LOG_WARN("coordinator %s: %s failed: %s; forgetting it", b->coord_id,
		         wire_cmd_name(cmd), zmq_strerror(errno));
		b->coord_ident_len = 0;
		return -1;
	}
	return 0;
}

static void control_error(struct broker *b, int code, const char *reason)
{
	Itt__Error e = ITT__ERROR__INIT;
	e.has_code = true;
	e.code = (Itt__Code)code;
	e.reason = (char *)reason;
	LOG_WARN("coordinator %s: refused: %s: %s", b->coord_id, wire_code_name(code), reason);
	control_send(b, WIRE_ERROR, &e.base);
}

/* The worker's telemetry with worker_id and pinned filled in, to the coordinator. */
static void control_forward_telemetry(struct broker *b, struct worker *w)
{
	const char *names[CONTROL_N_KNOBS + 1];
	if (!w->telemetry || !b->coord_ident_len)
		return;
	Itt__Telemetry t = *w->telemetry;
	t.worker_id = w->id;
	t.n_pinned = control_pin_names(control_pins(b, w->id), names);
	t.pinned = (char **)names;
	control_send(b, WIRE_TELEMETRY, &t.base);
}

void control_worker_up(struct broker *b, struct worker *w)
{
	if (!b->coord_ident_len || !w->hello)
		return;
	control_send(b, WIRE_WORKER_UP, &w->hello->base);
	control_forward_telemetry(b, w);
}

void control_worker_down(struct broker *b, struct worker *w, const char *why)
{
	if (!b->coord_ident_len)
		return;
	Itt__WorkerDown d = ITT__WORKER_DOWN__INIT;
	d.worker_id = w->id;
	d.reason = (char *)why;
	control_send(b, WIRE_WORKER_DOWN, &d.base);
}

void control_telemetry(struct broker *b, struct worker *w, const struct wire_msg *m)
{
	Itt__Telemetry *t = itt__telemetry__unpack(NULL, m->body_len, m->body);
	if (!t) {
		LOG_WARN("back end: worker %s: malformed Telemetry body", w->id);
		return;
	}
	if (t->state && strlen(t->state) > 16) {
		LOG_WARN("back end: worker %s: Telemetry state has %zu bytes; at most 16", w->id,
		         strlen(t->state));
		itt__telemetry__free_unpacked(t, NULL);
		return;
	}
	/* what the broker keeps and forwards is its own view of the fields it fills */
	for (size_t i = 0; i < t->n_pinned; i++)
		free(t->pinned[i]);
	t->n_pinned = 0;
	free(t->worker_id);
	t->worker_id = NULL;
	if (w->telemetry)
		itt__telemetry__free_unpacked(w->telemetry, NULL);
	w->telemetry = t;
	if (t->settings) {
		if (t->settings->has_threads) {
			w->settings.has_threads = true;
			w->settings.threads = w->threads = t->settings->threads;
		}
		if (t->settings->has_batch_tokens) {
			w->settings.has_batch_tokens = true;
			w->settings.batch_tokens = t->settings->batch_tokens;
		}
		if (t->settings->has_slow_ms) {
			w->settings.has_slow_ms = true;
			w->settings.slow_ms = t->settings->slow_ms;
		}
	}
	control_forward_telemetry(b, w);
}

static void control_hello(struct broker *b, const struct wire_msg *m)
{
	char peer[32];
	Itt__ControlHello *h = itt__control_hello__unpack(NULL, m->body_len, m->body);
	if (!h || (h->coordinator_id && strlen(h->coordinator_id) > 128)) {
		Itt__Error e = ITT__ERROR__INIT;
		e.has_code = true;
		e.code = ITT__CODE__INVALID_ARGUMENT;
		e.reason = h ? "coordinator_id has more than 128 bytes" : "malformed ControlHello body";
		wire_send(b->back, m->identity, m->identity_len, WIRE_ERROR, &e.base, NULL, 0,
		          ZMQ_DONTWAIT);
		if (h)
			itt__control_hello__free_unpacked(h, NULL);
		return;
	}
	if (b->coord_ident_len && !control_is_coord(b, m->identity, m->identity_len))
		LOG_INFO("coordinator %s replaced", b->coord_id);
	memcpy(b->coord_ident, m->identity, m->identity_len);
	b->coord_ident_len = m->identity_len;
	snprintf(b->coord_id, sizeof b->coord_id, "%s",
	         h->coordinator_id && *h->coordinator_id
	             ? h->coordinator_id
	             : broker_peer_name(m->identity, m->identity_len, peer, sizeof peer));
	itt__control_hello__free_unpacked(h, NULL);
	b->coord_last_recv_ms = b->coord_last_hb_ms = b->now_ms;
	LOG_INFO("coordinator %s connected; %zu workers registered", b->coord_id, b->workers.n);
	Itt__Welcome wel = ITT__WELCOME__INIT;
	wel.has_heartbeat_ms = wel.has_liveness = true;
	wel.heartbeat_ms = (uint32_t)b->cfg.heartbeat_ms;
	wel.liveness = (uint32_t)b->cfg.liveness;
	if (control_send(b, WIRE_WELCOME, &wel.base) < 0)
		return;
	for (struct link *l = b->workers_seen.next; l != &b->workers_seen && b->coord_ident_len;
	     l = l->next)
		control_worker_up(b, LINK_ENTRY(l, struct worker, seen_link));
}

/* The worker a coordinator's command names, or NULL after refusing it. */
static struct worker *control_find(struct broker *b, const char *cmd, const char *id)
{
	char why[160];
	struct worker *w = id ? back_find_id(b, id) : NULL;
	if (!w) {
		snprintf(why, sizeof why, "%s: unknown worker %.128s", cmd, id ? id : "(none)");
		control_error(b, ITT__CODE__NOT_FOUND, why);
	}
	return w;
}

static void control_place(struct broker *b, const struct wire_msg *m)
{
	char why[320], o[32], n[32];
	Itt__Placement *p = itt__placement__unpack(NULL, m->body_len, m->body);
	if (!p) {
		control_error(b, ITT__CODE__INVALID_ARGUMENT, "malformed Placement body");
		return;
	}
	struct worker *w = control_find(b, "PLACE", p->worker_id);
	if (!w)
		goto out;
	if (!p->model || strcmp(p->model, w->model->name)) {
		snprintf(why, sizeof why, "PLACE: worker %s serves model %s, not %.128s", w->id,
		         w->model->name, p->model ? p->model : "(none)");
		control_error(b, ITT__CODE__INVALID_ARGUMENT, why);
		goto out;
	}
	if (p->layer_first >= p->layer_last || p->layer_last > w->n_layers) {
		snprintf(why, sizeof why, "PLACE: layers [%u, %u) are not a range of model %s (%u)",
		         p->layer_first, p->layer_last, w->model->name, w->n_layers);
		control_error(b, ITT__CODE__INVALID_ARGUMENT, why);
		goto out;
	}
	if (p->layer_first == w->layer_first && p->layer_last == w->layer_last && !w->loading)
		goto out;
	snprintf(o, sizeof o, "[%u,%u)", w->layer_first, w->layer_last);
	snprintf(n, sizeof n, "[%u,%u)", p->layer_first, p->layer_last);
	control_decide(b, w->id, "layers", o, n, p->reason ? p->reason : "", "coordinator");
	snprintf(why, sizeof why, "worker %s moves to layers %s", w->id, n);
	w->loading = true;
	while (!link_empty(&w->sessions))
		req_requeue(b, LINK_ENTRY(w->sessions.next, struct stage, link)->r, NULL, false,
		            why);
	Itt__Assign a = ITT__ASSIGN__INIT;
	a.model = w->model->name;
	a.has_layer_first = a.has_layer_last = true;
	a.layer_first = p->layer_first;
	a.layer_last = p->layer_last;
	back_send(b, w, WIRE_ASSIGN, &a.base);
out:
	itt__placement__free_unpacked(p, NULL);
}

static void control_routes(struct broker *b, const struct wire_msg *m)
{
	char why[320], desc[96];
	Itt__RouteTable *t = itt__route_table__unpack(NULL, m->body_len, m->body);
	if (!t) {
		control_error(b, ITT__CODE__INVALID_ARGUMENT, "malformed RouteTable body");
		return;
	}
	struct model *mo = t->model ? map_get(&b->models, t->model, strlen(t->model)) : NULL;
	if (!mo) {
		snprintf(why, sizeof why, "ROUTES: unknown model %.128s",
		         t->model ? t->model : "(none)");
		control_error(b, ITT__CODE__NOT_FOUND, why);
		goto out;
	}
	if (t->n_routes > BROKER_MAX_ROUTES) {
		snprintf(why, sizeof why, "ROUTES: %zu routes; at most %d", t->n_routes,
		         BROKER_MAX_ROUTES);
		control_error(b, ITT__CODE__INVALID_ARGUMENT, why);
		goto out;
	}
	for (size_t i = 0; i < t->n_routes; i++) {
		const Itt__Route *r = t->routes[i];
		if (r->n_worker_ids < 1 || r->n_worker_ids > BROKER_MAX_STAGES) {
			snprintf(why, sizeof why, "ROUTES: route %zu has %zu stages; 1..%d", i,
			         r->n_worker_ids, BROKER_MAX_STAGES);
			control_error(b, ITT__CODE__INVALID_ARGUMENT, why);
			goto out;
		}
		for (size_t k = 0; k < r->n_worker_ids; k++)
			if (!*r->worker_ids[k] || strlen(r->worker_ids[k]) > b->lim.max_name_len) {
				snprintf(why, sizeof why,
				         "ROUTES: route %zu stage %zu: worker id of 1..%u bytes "
				         "expected",
				         i, k, b->lim.max_name_len);
				control_error(b, ITT__CODE__INVALID_ARGUMENT, why);
				goto out;
			}
	}
	route_clear(mo);
	size_t dl = 0;
	desc[0] = 0;
	for (size_t i = 0; i < t->n_routes; i++) {
		const Itt__Route *r = t->routes[i];
		char **ids = calloc(r->n_worker_ids, sizeof *ids);
		bool ok = ids != NULL;
		for (size_t k = 0; ok && k < r->n_worker_ids; k++)
			ok = (ids[k] = strdup(r->worker_ids[k])) != NULL;
		if (!ok) {
			for (size_t k = 0; ids && k < r->n_worker_ids; k++)
				free(ids[k]);
			free(ids);
			LOG_ERROR("out of memory storing routes of %s", mo->name);
			break;
		}
		mo->pub[mo->n_pub] = ids;
		mo->pub_len[mo->n_pub++] = (uint32_t)r->n_worker_ids;
		for (size_t k = 0; k < r->n_worker_ids && dl + 1 < sizeof desc; k++) {
			int w = snprintf(desc + dl, sizeof desc - dl, "%s%s", k ? ">" : (i ? " | " : ""),
			                 ids[k]);
			dl = w < 0 ? dl : dl + (size_t)w < sizeof desc ? dl + (size_t)w : sizeof desc - 1;
		}
	}
	control_decide(b, mo->name, "routes", "", t->n_routes ? desc : "(auto)",
	               t->reason ? t->reason : "", "coordinator");
	req_dispatch(b, mo);
out:
	itt__route_table__free_unpacked(t, NULL);
}

static void control_coord_set(struct broker *b, const struct wire_msg *m)
{
	char why[320];
	Itt__SettingsChange *c = itt__settings_change__unpack(NULL, m->body_len, m->body);
	if (!c) {
		control_error(b, ITT__CODE__INVALID_ARGUMENT, "malformed SettingsChange body");
		return;
	}
	struct worker *w = control_find(b, "SET", c->worker_id);
	if (!w)
		goto out;
	unsigned want = control_settings_mask(c->settings), pinned = control_pins(b, w->id) & want;
	if (pinned) {
		const char *names[CONTROL_N_KNOBS + 1];
		control_pin_names(pinned, names);
		snprintf(why, sizeof why, "SET: knob %s of worker %s is pinned", names[0], w->id);
		control_error(b, ITT__CODE__INVALID_ARGUMENT, why);
		goto out;
	}
	if (!want)
		goto out;
	struct itt_err err;
	if (control_check_settings(w, c->settings, &err)) {
		control_error(b, err.code, err.msg);
		goto out;
	}
	control_apply(b, w, c->settings, c->reason ? c->reason : "", "coordinator");
out:
	itt__settings_change__free_unpacked(c, NULL);
}

void control_handle(struct broker *b, const struct wire_msg *m)
{
	if (m->cmd == WIRE_CONTROL_HELLO) {
		control_hello(b, m);
		return;
	}
	b->coord_last_recv_ms = b->now_ms;
	switch (m->cmd) {
	case WIRE_HEARTBEAT: break;
	case WIRE_PLACE: control_place(b, m); break;
	case WIRE_ROUTES: control_routes(b, m); break;
	case WIRE_SET: control_coord_set(b, m); break;
	case WIRE_ERROR: LOG_WARN("coordinator %s sent ERROR", b->coord_id); break;
	default: {
		char why[96];
		snprintf(why, sizeof why, "the coordinator may not send %s",
		         wire_cmd_name(m->cmd) ? wire_cmd_name(m->cmd) : "that");
		control_error(b, ITT__CODE__UNIMPLEMENTED, why);
	}
	}
}

void control_tick(struct broker *b)
{
	if (!b->coord_ident_len)
		return;
	uint64_t dead_ms = (uint64_t)b->cfg.heartbeat_ms * (uint64_t)b->cfg.liveness;
	if (b->now_ms - b->coord_last_recv_ms >= dead_ms) {
		LOG_WARN("coordinator %s silent for %llu ms: forgotten; routes and settings stay",
		         b->coord_id, (unsigned long long)(b->now_ms - b->coord_last_recv_ms));
		b->coord_ident_len = 0;
		return;
	}
	if (b->now_ms - b->coord_last_hb_ms >= (uint64_t)b->cfg.heartbeat_ms) {
		Itt__Heartbeat h = ITT__HEARTBEAT__INIT;
		b->coord_last_hb_ms = b->now_ms;
		h.has_time_ms = true;
		h.time_ms = b->now_ms;
		control_send(b, WIRE_HEARTBEAT, &h.base);
	}
}

/* ---- operators: SET on the front end ------------------------------------- */

void control_front_set(struct broker *b, const struct wire_msg *m)
{
	char why[320];
	const char *names[CONTROL_N_KNOBS + 1];
	Itt__SettingsChange *c = itt__settings_change__unpack(NULL, m->body_len, m->body);
	if (!c) {
		front_send_error(b, m->identity, m->identity_len, NULL, ITT__CODE__INVALID_ARGUMENT,
		                 "malformed SettingsChange body");
		return;
	}
	const char *rid = c->request_id;
	if (!front_authorized(b, c->api_key)) {
		front_send_error(b, m->identity, m->identity_len, rid, ITT__CODE__UNAUTHENTICATED,
		                 "api_key is missing or unknown");
		goto out;
	}
	struct worker *w = c->worker_id ? back_find_id(b, c->worker_id) : NULL;
	if (!w) {
		snprintf(why, sizeof why, "unknown worker %.128s",
		         c->worker_id ? c->worker_id : "(none)");
		front_send_error(b, m->identity, m->identity_len, rid, ITT__CODE__NOT_FOUND, why);
		goto out;
	}
	const char *why_set = c->reason && *c->reason ? c->reason : "set by an operator";
	if (strlen(why_set) > 256) {
		front_send_error(b, m->identity, m->identity_len, rid, ITT__CODE__INVALID_ARGUMENT,
		                 "reason has more than 256 bytes");
		goto out;
	}
	unsigned pin = 0, unpin = 0;
	for (size_t i = 0; i < c->n_pin_knobs + c->n_unpin_knobs; i++) {
		const char *k = i < c->n_pin_knobs ? c->pin_knobs[i] : c->unpin_knobs[i - c->n_pin_knobs];
		unsigned bit = control_knob_bit(k);
		if (!bit) {
			snprintf(why, sizeof why,
			         "unknown knob %.64s (knobs: threads, batch_tokens, slow_ms)", k);
			front_send_error(b, m->identity, m->identity_len, rid,
			                 ITT__CODE__INVALID_ARGUMENT, why);
			goto out;
		}
		if (i < c->n_pin_knobs)
			pin |= bit;
		else
			unpin |= bit;
	}
	unsigned set = control_settings_mask(c->settings);
	struct itt_err err;
	if (set && control_check_settings(w, c->settings, &err)) {
		front_send_error(b, m->identity, m->identity_len, rid, err.code, err.msg);
		goto out;
	}
	if (c->pin)
		pin |= set;
	unsigned before = control_pins(b, w->id), after = (before | pin) & ~unpin;
	if (control_pin_set(b, w->id, after) < 0) {
		front_send_error(b, m->identity, m->identity_len, rid, ITT__CODE__INTERNAL,
		                 "out of memory");
		goto out;
	}
	if (set)
		control_apply(b, w, c->settings, why_set, "operator");
	for (size_t i = 0; i < CONTROL_N_KNOBS; i++) {
		unsigned bit = control_knobs[i].bit;
		if ((before ^ after) & bit)
			control_decide(b, w->id, control_knobs[i].name, (before & bit) ? "pinned" : "free",
			               (after & bit) ? "pinned" : "free", why_set, "operator");
	}
	Itt__SettingsReply r = ITT__SETTINGS_REPLY__INIT;
	r.request_id = (char *)(rid ? rid : "");
	r.worker_id = w->id;
	r.settings = &w->settings;
	r.n_pinned = control_pin_names(after, names);
	r.pinned = (char **)names;
	front_send_to(b, m->identity, m->identity_len, WIRE_SET_REPLY, &r.base);
out:
	itt__settings_change__free_unpacked(c, NULL);
}
