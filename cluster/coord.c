/* coord: what the broker tells the coordinator, and what it decides.
 *
 * Events (WORKER_UP, WORKER_DOWN, TELEMETRY) only update state and mark a
 * group dirty; decisions are taken in coord_tick, every interval_ms:
 *   1. a group without a plan adopts its current ranges when they form
 *      complete routes using every worker (and, with --stages N, have the
 *      shape N asks for); otherwise it is planned;
 *   2. a dirty group (a worker joined, left, or registered a range other
 *      than its target) is re-planned at once;
 *   3. a settled group whose workers all have a measured speed is
 *      re-planned when the plan with current speeds cuts the predicted
 *      time per row by min_gain for hold_s in a row, cooldown_s after its
 *      last move;
 *   4. the controller runs for every worker that has sent telemetry.
 * A re-plan sends PLACE only to workers whose range changes and ROUTES
 * once every placed worker has shown its new range in a WORKER_UP (the
 * broker refuses routes that do not tile the ranges it knows). */
#include "coord.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "wire.h"

/* ---- basics ------------------------------------------------------------ */

int coord_init(struct coord *c)
{
	c->w = calloc(COORD_MAX_WORKERS, sizeof *c->w);
	c->dec = calloc((size_t)c->cfg.decisions, sizeof *c->dec);
	if (!c->w || !c->dec) {
		LOG_ERROR("coord_init: out of memory for %d workers and %d decisions",
		          COORD_MAX_WORKERS, c->cfg.decisions);
		return -1;
	}
	return 0;
}

void coord_free(struct coord *c)
{
	free(c->w);
	free(c->dec);
	c->w = NULL;
	c->dec = NULL;
}

void coord_reset(struct coord *c)
{
	memset(c->w, 0, COORD_MAX_WORKERS * sizeof *c->w);
	memset(c->g, 0, sizeof c->g);
}

int coord_send(struct coord *c, int cmd, const void *msg)
{
	if (!c->sock)
		return -1;
	if (wire_send(c->sock, NULL, 0, cmd, msg, NULL, 0, ZMQ_DONTWAIT) < 0) {
		LOG_WARN("send %s to broker %s: %s", wire_cmd_name(cmd), c->cfg.broker,
		         zmq_strerror(errno));
		return -1;
	}
	if (cmd == WIRE_PLACE || cmd == WIRE_ROUTES || cmd == WIRE_SET)
		c->sent++;
	return 0;
}

void coord_decide(struct coord *c, const char *target, const char *knob, const char *old_value,
                  const char *new_value, const char *reason)
{
	size_t cap = (size_t)c->cfg.decisions;
	struct coord_decision *d = &c->dec[(c->dec_head + c->dec_n) % cap];
	if (c->dec_n == cap)
		c->dec_head = (c->dec_head + 1) % cap;
	else
		c->dec_n++;
	d->time_ms = clock_wall_ms();
	snprintf(d->target, sizeof d->target, "%s", target);
	snprintf(d->knob, sizeof d->knob, "%s", knob);
	snprintf(d->old_value, sizeof d->old_value, "%s", old_value);
	snprintf(d->new_value, sizeof d->new_value, "%s", new_value);
	snprintf(d->reason, sizeof d->reason, "%s", reason);
	LOG_INFO("decision: %s %s %s -> %s: %s", target, knob, old_value, new_value, reason);
}

static void coord_range(char *buf, size_t cap, uint32_t first, uint32_t last)
{
	snprintf(buf, cap, "[%u,%u)", first, last);
}

/* Appends to a reason, truncating quietly. */
static void coord_cat(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void coord_cat(char *buf, size_t cap, const char *fmt, ...)
{
	size_t len = strlen(buf);
	va_list ap;
	if (len + 1 >= cap)
		return;
	va_start(ap, fmt);
	vsnprintf(buf + len, cap - len, fmt, ap);
	va_end(ap);
}

/* ---- lookups ----------------------------------------------------------- */

static int coord_find(const struct coord *c, const char *id)
{
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		if (c->w[i].used && !strcmp(c->w[i].id, id))
			return i;
	return -1;
}

/* Live workers on a host (a worker that named no host is alone on its). */
static uint32_t coord_host_workers(const struct coord *c, const char *host)
{
	uint32_t n = 0;
	if (!*host)
		return 1;
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		if (c->w[i].used && !strcmp(c->w[i].host, host))
			n++;
	return n;
}

static uint32_t coord_group_size(const struct coord *c, int g)
{
	uint32_t n = 0;
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		n += c->w[i].used && c->w[i].group == g;
	return n;
}

static bool coord_group_placing(const struct coord *c, int g)
{
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		if (c->w[i].used && c->w[i].group == g && c->w[i].placing)
			return true;
	return false;
}

/* The group of (model, sha, n_layers), created when new; -1 when full. */
static int coord_group(struct coord *c, const char *model, const char *sha, uint32_t n_layers)
{
	int free_slot = -1;
	for (int i = 0; i < COORD_MAX_GROUPS; i++) {
		struct coord_group *g = &c->g[i];
		if (!g->used) {
			if (free_slot < 0)
				free_slot = i;
			continue;
		}
		if (!strcmp(g->model, model) && !strcmp(g->sha, sha) && g->n_layers == n_layers)
			return i;
	}
	if (free_slot < 0)
		return -1;
	struct coord_group *g = &c->g[free_slot];
	memset(g, 0, sizeof *g);
	g->used = true;
	snprintf(g->model, sizeof g->model, "%s", model);
	snprintf(g->sha, sizeof g->sha, "%s", sha);
	g->n_layers = n_layers;
	for (int i = 0; i < COORD_MAX_GROUPS; i++)
		if (i != free_slot && c->g[i].used && !strcmp(c->g[i].model, model))
			LOG_WARN("model %s: file sha256 %.12s differs from %.12s of other workers; "
			         "their workers are planned apart",
			         model, *sha ? sha : "(none)",
			         *c->g[i].sha ? c->g[i].sha : "(none)");
	return free_slot;
}

static void coord_dirty(struct coord *c, int g, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void coord_dirty(struct coord *c, int g, const char *fmt, ...)
{
	struct coord_group *grp = &c->g[g];
	char what[COORD_REASON];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	if (grp->dirty)
		coord_cat(grp->why, sizeof grp->why, ", %s", what);
	else
		snprintf(grp->why, sizeof grp->why, "%s", what);
	grp->dirty = true;
	c->kick = true;
}

/* ---- events ------------------------------------------------------------ */

static bool coord_name_ok(const char *s, bool may_be_empty)
{
	if (!s || !*s)
		return may_be_empty;
	return strlen(s) < COORD_NAME;
}

static void coord_worker_up(struct coord *c, const struct wire_msg *m)
{
	Itt__WorkerHello *h = itt__worker_hello__unpack(NULL, m->body_len, m->body);
	if (!h) {
		LOG_WARN("WORKER_UP from broker %s: malformed WorkerHello body", c->cfg.broker);
		return;
	}
	const char *bad = !coord_name_ok(h->worker_id, false) ? "worker_id"
	                  : !coord_name_ok(h->model, false)   ? "model"
	                  : !coord_name_ok(h->host, true)     ? "host"
	                  : !h->has_n_layers || h->n_layers == 0 || h->n_layers > 65536 ? "n_layers"
	                  : h->layer_first >= h->layer_last || h->layer_last > h->n_layers
	                      ? "layer range"
	                      : NULL;
	if (bad) {
		LOG_WARN("WORKER_UP from broker %s: bad %s (worker %.64s); ignored", c->cfg.broker,
		         bad, h->worker_id ? h->worker_id : "?");
		itt__worker_hello__free_unpacked(h, NULL);
		return;
	}
	const char *sha = "";
	for (size_t i = 0; i < h->n_files; i++)
		if (h->files[i]->model && !strcmp(h->files[i]->model, h->model) &&
		    h->files[i]->sha256 && strlen(h->files[i]->sha256) < COORD_SHA)
			sha = h->files[i]->sha256;

	int slot = coord_find(c, h->worker_id);
	bool fresh = slot < 0;
	if (fresh) {
		for (int i = 0; i < COORD_MAX_WORKERS && slot < 0; i++)
			if (!c->w[i].used)
				slot = i;
		if (slot < 0) {
			LOG_WARN("WORKER_UP %s: more than %d workers; ignored", h->worker_id,
			         COORD_MAX_WORKERS);
			itt__worker_hello__free_unpacked(h, NULL);
			return;
		}
		memset(&c->w[slot], 0, sizeof c->w[slot]);
	}
	struct coord_worker *w = &c->w[slot];
	int g = coord_group(c, h->model, sha, h->n_layers);
	if (g < 0) {
		LOG_WARN("WORKER_UP %s: more than %d model groups; ignored", h->worker_id,
		         COORD_MAX_GROUPS);
		itt__worker_hello__free_unpacked(h, NULL);
		return;
	}
	if (!fresh && w->group != g) {
		coord_dirty(c, w->group, "worker %s moved to model %s", w->id, h->model);
		w->planned = w->placing = false;
		fresh = true;
	}
	w->used = true;
	w->group = g;
	snprintf(w->id, sizeof w->id, "%s", h->worker_id);
	snprintf(w->host, sizeof w->host, "%s", h->host ? h->host : "");
	snprintf(w->model, sizeof w->model, "%s", h->model);
	snprintf(w->sha, sizeof w->sha, "%s", sha);
	w->first = h->layer_first;
	w->last = h->layer_last;
	w->n_layers = h->n_layers;
	w->cores = h->cores;
	w->threads = h->threads;
	if (h->settings && h->settings->has_threads)
		w->threads = h->settings->threads;
	w->batch_tokens =
	    h->settings && h->settings->has_batch_tokens ? h->settings->batch_tokens : 0;
	w->max_batch_tokens = h->max_batch_tokens;
	w->mem_available = h->mem_available;
	w->weight_bytes = h->weight_bytes;
	LOG_DEBUG("WORKER_UP %s host %s model %s layers [%u,%u) of %u", w->id, w->host, w->model,
	          w->first, w->last, w->n_layers);

	char have[32], want[32];
	coord_range(have, sizeof have, w->first, w->last);
	coord_range(want, sizeof want, w->tgt_first, w->tgt_last);
	if (fresh || !w->planned) {
		coord_dirty(c, g, "worker %s joined", w->id);
	} else if (w->first == w->tgt_first && w->last == w->tgt_last) {
		if (w->placing) {
			LOG_INFO("worker %s now holds layers %s of %s", w->id, have, w->model);
			c->kick = true; /* its ROUTES may be due */
		}
		w->placing = false;
	} else if (!w->placing) {
		coord_dirty(c, g, "worker %s registered layers %s instead of %s", w->id, have,
		            want);
	}
	itt__worker_hello__free_unpacked(h, NULL);
}

static void coord_worker_down(struct coord *c, const struct wire_msg *m)
{
	Itt__WorkerDown *d = itt__worker_down__unpack(NULL, m->body_len, m->body);
	if (!d) {
		LOG_WARN("WORKER_DOWN from broker %s: malformed WorkerDown body", c->cfg.broker);
		return;
	}
	int slot = d->worker_id ? coord_find(c, d->worker_id) : -1;
	if (slot < 0) {
		LOG_DEBUG("WORKER_DOWN of unknown worker %.64s", d->worker_id ? d->worker_id : "?");
	} else {
		struct coord_worker *w = &c->w[slot];
		LOG_INFO("worker %s of %s left: %s", w->id, w->model,
		         d->reason && *d->reason ? d->reason : "no reason given");
		coord_dirty(c, w->group, "worker %s left (%.100s)", w->id,
		            d->reason && *d->reason ? d->reason : "down");
		memset(w, 0, sizeof *w);
	}
	itt__worker_down__free_unpacked(d, NULL);
}

static void coord_telemetry(struct coord *c, const struct wire_msg *m)
{
	Itt__Telemetry *t = itt__telemetry__unpack(NULL, m->body_len, m->body);
	if (!t) {
		LOG_WARN("TELEMETRY from broker %s: malformed Telemetry body", c->cfg.broker);
		return;
	}
	int slot = t->worker_id ? coord_find(c, t->worker_id) : -1;
	if (slot < 0) {
		LOG_DEBUG("TELEMETRY of unknown worker %.64s", t->worker_id ? t->worker_id : "?");
		itt__telemetry__free_unpacked(t, NULL);
		return;
	}
	struct coord_worker *w = &c->w[slot];
	w->have_tel = true;
	w->tel_ms = c->now_ms;
	w->step_ms = t->has_step_ms && isfinite(t->step_ms) ? t->step_ms : 0;
	w->rows_per_step =
	    t->has_rows_per_step && isfinite(t->rows_per_step) ? t->rows_per_step : 0;
	if (t->has_steps) {
		w->steps_delta = t->steps >= w->steps ? t->steps - w->steps : t->steps;
		w->steps = t->steps;
	} else {
		w->steps_delta = w->step_ms > 0;
	}
	w->pinned = 0;
	for (size_t i = 0; i < t->n_pinned; i++)
		w->pinned |= t->pinned[i] ? controller_knob_bit(t->pinned[i]) : 0;
	if (t->settings) {
		if (t->settings->has_threads)
			w->threads = t->settings->threads;
		if (t->settings->has_batch_tokens)
			w->batch_tokens = t->settings->batch_tokens;
	}
	if (t->has_cores && t->cores)
		w->cores = t->cores;
	if (t->has_ms_per_row_layer && isfinite(t->ms_per_row_layer) && t->ms_per_row_layer > 0)
		w->ms_prl = w->ms_prl > 0 ? COORD_EWMA_ALPHA * t->ms_per_row_layer +
		                                (1 - COORD_EWMA_ALPHA) * w->ms_prl
		                          : t->ms_per_row_layer;
	itt__telemetry__free_unpacked(t, NULL);
}

static void coord_error(struct coord *c, const struct wire_msg *m)
{
	Itt__Error *e = itt__error__unpack(NULL, m->body_len, m->body);
	if (!e) {
		LOG_WARN("ERROR from broker %s: malformed Error body", c->cfg.broker);
		return;
	}
	LOG_WARN("broker %s answered ERROR %s: %.300s", c->cfg.broker,
	         wire_code_name(e->has_code ? (int)e->code : 0), e->reason ? e->reason : "");
	itt__error__free_unpacked(e, NULL);
}

void coord_handle(struct coord *c, const struct wire_msg *m)
{
	switch (m->cmd) {
	case WIRE_WORKER_UP: coord_worker_up(c, m); break;
	case WIRE_WORKER_DOWN: coord_worker_down(c, m); break;
	case WIRE_TELEMETRY: coord_telemetry(c, m); break;
	case WIRE_ERROR: coord_error(c, m); break;
	default: break;
	}
}

/* ---- placement ----------------------------------------------------------- */

static int coord_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* A group's workers as placement input; slot[i] is the table slot of
 * pw[i]. */
struct coord_view {
	uint32_t n;
	uint16_t slot[PLACE_MAX_WORKERS];
	struct place_worker pw[PLACE_MAX_WORKERS];
};

/* Layers a worker's memory holds: its share of the host's available
 * memory (workers on one host share it) over the bytes of one layer, plus
 * the layers it holds now (already counted as used); 1..n_layers.  Unknown
 * sizes: the whole model. */
static uint32_t coord_capacity(const struct coord *c, const struct coord_worker *w)
{
	uint32_t n = w->n_layers;
	if (!w->weight_bytes || !w->mem_available)
		return n;
	uint64_t per_layer = w->weight_bytes / n ? w->weight_bytes / n : 1;
	uint64_t share = w->mem_available / coord_host_workers(c, w->host);
	uint64_t cap = share / per_layer + (w->last - w->first);
	return cap < 1 ? 1 : cap > n ? n : (uint32_t)cap;
}

static void coord_view(const struct coord *c, int g, struct coord_view *v)
{
	v->n = 0;
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		const struct coord_worker *w = &c->w[i];
		if (!w->used || w->group != g)
			continue;
		if (v->n == PLACE_MAX_WORKERS) {
			LOG_WARN("model %s: more than %d workers; %s is not planned", w->model,
			         PLACE_MAX_WORKERS, w->id);
			continue;
		}
		struct place_worker *p = &v->pw[v->n];
		p->id = w->id;
		p->ms_per_row_layer = w->ms_prl;
		p->threads = w->threads;
		p->capacity = coord_capacity(c, w);
		p->layer_first = w->first;
		p->layer_last = w->last;
		v->slot[v->n++] = (uint16_t)i;
	}
	placement_speeds(v->pw, v->n);
}

static void coord_summary(const struct place_plan *p, uint32_t n_workers, char *buf, size_t cap)
{
	uint32_t most = 0;
	for (uint32_t r = 0; r < p->n_routes; r++)
		if (p->route[r].n_stages > most)
			most = p->route[r].n_stages;
	char st[32];
	if (most > p->stages)
		snprintf(st, sizeof st, "%u-%u", p->stages, most);
	else
		snprintf(st, sizeof st, "%u", p->stages);
	snprintf(buf, cap, "%u worker%s, stages %s, %u replica%s", n_workers,
	         n_workers == 1 ? "" : "s", st, p->n_routes, p->n_routes == 1 ? "" : "s");
}

static void coord_routes_text(const struct coord *c, const struct coord_group *g, char *buf,
                              size_t cap)
{
	buf[0] = 0;
	for (uint32_t r = 0; r < g->n_routes; r++) {
		if (r)
			coord_cat(buf, cap, " | ");
		for (uint32_t k = 0; k < g->route_len[r]; k++)
			coord_cat(buf, cap, "%s%s", k ? ">" : "", c->w[g->route[r][k]].id);
	}
	if (!buf[0])
		snprintf(buf, cap, "(none)");
}

/* Sends ROUTES for a model: the routes of all its groups. */
static void coord_publish(struct coord *c, const char *model, const char *why)
{
	Itt__Route routes[PLACE_MAX_ROUTES];
	Itt__Route *rp[PLACE_MAX_ROUTES];
	char *ids[PLACE_MAX_ROUTES][PLACE_MAX_STAGES];
	size_t n = 0;
	char text[COORD_REASON] = "";
	for (int gi = 0; gi < COORD_MAX_GROUPS; gi++) {
		const struct coord_group *g = &c->g[gi];
		if (!g->used || !g->have_plan || strcmp(g->model, model) != 0)
			continue;
		for (uint32_t r = 0; r < g->n_routes && n < PLACE_MAX_ROUTES; r++, n++) {
			itt__route__init(&routes[n]);
			for (uint32_t k = 0; k < g->route_len[r]; k++)
				ids[n][k] = c->w[g->route[r][k]].id;
			routes[n].n_worker_ids = g->route_len[r];
			routes[n].worker_ids = ids[n];
			rp[n] = &routes[n];
		}
		char part[COORD_REASON];
		coord_routes_text(c, g, part, sizeof part);
		coord_cat(text, sizeof text, "%s%s", text[0] ? " | " : "", part);
	}
	Itt__RouteTable rt = ITT__ROUTE_TABLE__INIT;
	rt.model = (char *)model;
	rt.n_routes = n;
	rt.routes = rp;
	rt.reason = (char *)why;
	if (coord_send(c, WIRE_ROUTES, &rt) < 0)
		return;
	char old[COORD_REASON] = "(unknown)";
	for (int gi = 0; gi < COORD_MAX_GROUPS; gi++)
		if (c->g[gi].used && !strcmp(c->g[gi].model, model) && c->g[gi].published[0])
			snprintf(old, sizeof old, "%s", c->g[gi].published);
	for (int gi = 0; gi < COORD_MAX_GROUPS; gi++)
		if (c->g[gi].used && !strcmp(c->g[gi].model, model))
			snprintf(c->g[gi].published, sizeof c->g[gi].published, "%s",
			         text[0] ? text : "(auto)");
	coord_decide(c, model, "routes", old, text[0] ? text : "(auto)", why);
}

static void coord_maybe_publish(struct coord *c, int g)
{
	struct coord_group *grp = &c->g[g];
	if (grp->routes_due && !coord_group_placing(c, g)) {
		grp->routes_due = false;
		coord_publish(c, grp->model, grp->routes_why);
	}
}

/* Makes plan p the group's: PLACE to every worker whose range changes,
 * ROUTES when they all show their new ranges. */
static void coord_apply(struct coord *c, int g, const struct coord_view *v,
                        const struct place_plan *p, const char *why)
{
	struct coord_group *grp = &c->g[g];
	uint32_t moved = 0;
	for (uint32_t i = 0; i < v->n; i++) {
		struct coord_worker *w = &c->w[v->slot[i]];
		const struct place_stage *st = placement_find(p, i);
		w->planned = true;
		if (!st) {
			LOG_WARN("model %s: worker %s left unplaced (routes are full)", w->model,
			         w->id);
			w->tgt_first = w->first;
			w->tgt_last = w->last;
			w->placing = false;
			continue;
		}
		w->tgt_first = st->first;
		w->tgt_last = st->last;
		if (w->first == st->first && w->last == st->last) {
			w->placing = false;
			continue;
		}
		char from[32], to[32], reason[COORD_REASON];
		coord_range(from, sizeof from, w->first, w->last);
		coord_range(to, sizeof to, st->first, st->last);
		snprintf(reason, sizeof reason, "%s; layers %s -> %s", why, from, to);
		Itt__Placement pl = ITT__PLACEMENT__INIT;
		pl.worker_id = w->id;
		pl.model = w->model;
		pl.has_layer_first = pl.has_layer_last = true;
		pl.layer_first = st->first;
		pl.layer_last = st->last;
		pl.reason = reason;
		if (coord_send(c, WIRE_PLACE, &pl) == 0) {
			coord_decide(c, w->id, "layers", from, to, reason);
			w->placing = true;
			w->place_ms = c->now_ms;
			moved++;
		}
	}
	grp->n_routes = p->n_routes;
	for (uint32_t r = 0; r < p->n_routes; r++) {
		grp->route_len[r] = p->route[r].n_stages;
		for (uint32_t k = 0; k < p->route[r].n_stages; k++)
			grp->route[r][k] = v->slot[p->stage[p->route[r].stage0 + k].worker];
	}
	if (p->over_memory)
		LOG_WARN("model %s: the workers' memory cannot hold every route; some hold more "
		         "layers than their memory allows",
		         grp->model);
	grp->have_plan = true;
	grp->routes_due = true;
	snprintf(grp->routes_why, sizeof grp->routes_why, "%s", why);
	grp->gain_since = 0;
	if (moved)
		grp->last_move_ms = c->now_ms;
	coord_maybe_publish(c, g);
}

/* Adopts the current ranges as the group's plan; nothing is sent. */
static void coord_adopt(struct coord *c, int g, const struct coord_view *v,
                        const struct place_plan *p)
{
	struct coord_group *grp = &c->g[g];
	for (uint32_t i = 0; i < v->n; i++) {
		struct coord_worker *w = &c->w[v->slot[i]];
		w->planned = true;
		w->placing = false;
		w->tgt_first = w->first;
		w->tgt_last = w->last;
	}
	grp->n_routes = p->n_routes;
	for (uint32_t r = 0; r < p->n_routes; r++) {
		grp->route_len[r] = p->route[r].n_stages;
		for (uint32_t k = 0; k < p->route[r].n_stages; k++)
			grp->route[r][k] = v->slot[p->stage[p->route[r].stage0 + k].worker];
	}
	grp->have_plan = true;
	grp->routes_due = false;
	char routes[COORD_REASON];
	coord_routes_text(c, grp, routes, sizeof routes);
	LOG_INFO("model %s: kept the current placement, %u route%s: %s", grp->model, p->n_routes,
	         p->n_routes == 1 ? "" : "s", routes);
}

/* Plans group g afresh (a join, a leave, a first sight). */
static void coord_replan(struct coord *c, int g, const char *why)
{
	struct coord_group *grp = &c->g[g];
	struct coord_view v;
	struct place_plan plan, cur;
	coord_view(c, g, &v);
	if (v.n == 0) {
		/* Its last worker left: the model goes back to what other groups
		 * of its name publish, or to auto routes. */
		char model[COORD_NAME];
		snprintf(model, sizeof model, "%s", grp->model);
		bool had = grp->have_plan;
		memset(grp, 0, sizeof *grp);
		if (had)
			coord_publish(c, model, why);
		return;
	}
	if (placement_plan(v.pw, v.n, grp->n_layers, (uint32_t)c->cfg.stages, &plan) < 0) {
		LOG_ERROR("model %s: placement_plan refused %u workers of %u layers", grp->model,
		          v.n, grp->n_layers);
		return;
	}
	char reason[COORD_REASON], sum[128];
	coord_summary(&plan, v.n, sum, sizeof sum);
	if (grp->have_plan) {
		snprintf(reason, sizeof reason, "%s: %s", why, sum);
	} else {
		/* First sight: complete routes of the right shape are kept. */
		bool complete = placement_adopt(v.pw, v.n, grp->n_layers, &cur) == 0;
		if (complete && (c->cfg.stages == 0 || placement_same_shape(&cur, &plan))) {
			coord_adopt(c, g, &v, &cur);
			return;
		}
		char now[96];
		if (complete)
			snprintf(now, sizeof now,
			         "its %u route%s of %u stage%s are not the %d stages "
			         "asked for",
			         cur.n_routes, cur.n_routes == 1 ? "" : "s", cur.stages,
			         cur.stages == 1 ? "" : "s", c->cfg.stages);
		else
			snprintf(now, sizeof now, "its ranges do not form complete routes");
		snprintf(reason, sizeof reason, "%s; %s: %s", why, now, sum);
	}
	coord_apply(c, g, &v, &plan, reason);
}

/* Rule 3 of the tick: a sustained slowdown worth a move. */
static void coord_check_speed(struct coord *c, int g)
{
	struct coord_group *grp = &c->g[g];
	struct coord_view v;
	struct place_plan cur, plan;
	if (coord_group_placing(c, g) || grp->routes_due) {
		grp->gain_since = 0;
		return;
	}
	coord_view(c, g, &v);
	double ms[PLACE_MAX_WORKERS];
	for (uint32_t i = 0; i < v.n; i++) {
		if (!(v.pw[i].ms_per_row_layer > 0)) {
			grp->gain_since = 0;
			return;
		}
		ms[i] = v.pw[i].ms_per_row_layer;
	}
	if (v.n < 2 || placement_adopt(v.pw, v.n, grp->n_layers, &cur) < 0 ||
	    placement_plan(v.pw, v.n, grp->n_layers, (uint32_t)c->cfg.stages, &plan) < 0) {
		grp->gain_since = 0;
		return;
	}
	uint32_t moves = 0;
	for (uint32_t i = 0; i < v.n; i++) {
		const struct place_stage *st = placement_find(&plan, i);
		if (st && (st->first != v.pw[i].layer_first || st->last != v.pw[i].layer_last))
			moves++;
	}
	double gain = cur.cost > 0 ? (cur.cost - plan.cost) / cur.cost : 0;
	if (!moves || gain < c->cfg.min_gain) {
		grp->gain_since = 0;
		return;
	}
	if (!grp->gain_since) {
		grp->gain_since = c->now_ms;
		LOG_DEBUG("model %s: a re-plan would cut %.3f -> %.3f ms per row (%.0f%%); holding",
		          grp->model, cur.cost, plan.cost, 100 * gain);
	}
	uint64_t held = c->now_ms - grp->gain_since;
	if (held < (uint64_t)c->cfg.hold_s * 1000u)
		return;
	if (grp->last_move_ms &&
	    c->now_ms - grp->last_move_ms < (uint64_t)c->cfg.cooldown_s * 1000u)
		return;

	/* Name the slowest worker against the median. */
	uint32_t slow = 0;
	for (uint32_t i = 1; i < v.n; i++)
		if (v.pw[i].ms_per_row_layer > v.pw[slow].ms_per_row_layer)
			slow = i;
	double worst = v.pw[slow].ms_per_row_layer;
	qsort(ms, v.n, sizeof *ms, coord_cmp_double);
	double med = v.n % 2 ? ms[v.n / 2] : 0.5 * (ms[v.n / 2 - 1] + ms[v.n / 2]);
	char why[COORD_REASON];
	if (worst >= 1.5 * med)
		snprintf(why, sizeof why,
		         "worker %s slowed: %.1f ms per row-layer vs median %.1f over %.0f s "
		         "(predicted %.2f -> %.2f ms per row)",
		         v.pw[slow].id, worst, med, (double)held / 1000.0, cur.cost, plan.cost);
	else
		snprintf(why, sizeof why,
		         "speeds changed over %.0f s: predicted %.2f -> %.2f ms per row",
		         (double)held / 1000.0, cur.cost, plan.cost);
	coord_apply(c, g, &v, &plan, why);
}

/* ---- the tick ------------------------------------------------------------ */

static void coord_control(struct coord *c, struct coord_worker *w)
{
	struct ctl_config cfg = {
	    .tpot_ms = c->cfg.tpot_ms,
	    .hold_ms = (uint64_t)c->cfg.hold_s * 1000u,
	    .min_batch = COORD_MIN_BATCH,
	    .pending_ms = 5000u + 3u * (uint64_t)c->cfg.interval_ms,
	};
	uint64_t stale = 3u * (uint64_t)c->cfg.interval_ms;
	if (stale < 3000)
		stale = 3000;
	if (!w->have_tel) /* pins come with telemetry: nothing before it */
		return;
	struct ctl_input in = {
	    .now_ms = c->now_ms,
	    .host_cores = w->cores,
	    .host_workers = coord_host_workers(c, w->host),
	    .threads = w->threads,
	    .batch_tokens = w->batch_tokens,
	    .max_batch_tokens = w->max_batch_tokens,
	    .fresh = c->now_ms - w->tel_ms <= stale && w->steps_delta > 0 && w->step_ms > 0,
	    .step_ms = w->step_ms,
	    .rows_per_step = w->rows_per_step,
	    .pinned = w->pinned,
	};
	struct ctl_change ch[2];
	size_t n = controller_step(&cfg, &w->ctl, &in, ch);
	for (size_t i = 0; i < n; i++) {
		Itt__Settings set = ITT__SETTINGS__INIT;
		if (ch[i].knob == CTL_KNOB_THREADS) {
			set.has_threads = true;
			set.threads = ch[i].new_value;
		} else {
			set.has_batch_tokens = true;
			set.batch_tokens = ch[i].new_value;
		}
		Itt__SettingsChange sc = ITT__SETTINGS_CHANGE__INIT;
		sc.worker_id = w->id;
		sc.settings = &set;
		sc.reason = ch[i].reason;
		if (coord_send(c, WIRE_SET, &sc) == 0) {
			char from[16], to[16];
			snprintf(from, sizeof from, "%u", ch[i].old_value);
			snprintf(to, sizeof to, "%u", ch[i].new_value);
			coord_decide(c, w->id, controller_knob_name(ch[i].knob), from, to,
			             ch[i].reason);
		}
	}
}

void coord_tick(struct coord *c)
{
	/* PLACEs not shown in time: give up waiting, plan again. */
	for (int i = 0; i < COORD_MAX_WORKERS; i++) {
		struct coord_worker *w = &c->w[i];
		if (w->used && w->placing && c->now_ms - w->place_ms > COORD_PLACE_WAIT_MS) {
			w->placing = false;
			coord_dirty(c, w->group, "worker %s did not show layers [%u,%u) in %d s",
			            w->id, w->tgt_first, w->tgt_last, COORD_PLACE_WAIT_MS / 1000);
		}
	}
	for (int g = 0; g < COORD_MAX_GROUPS; g++) {
		struct coord_group *grp = &c->g[g];
		if (!grp->used)
			continue;
		if (!grp->have_plan || grp->dirty) {
			char why[COORD_REASON];
			if (!grp->have_plan && c->fresh)
				snprintf(why, sizeof why,
				         "coordinator connected to %u workers of %s",
				         coord_group_size(c, g), grp->model);
			else
				snprintf(why, sizeof why, "%s",
				         grp->dirty ? grp->why : "first sight");
			grp->dirty = false;
			grp->why[0] = 0;
			coord_replan(c, g, why);
			continue;
		}
		coord_maybe_publish(c, g);
		coord_check_speed(c, g);
	}
	c->fresh = false;
	for (int i = 0; i < COORD_MAX_WORKERS; i++)
		if (c->w[i].used)
			coord_control(c, &c->w[i]);
}
