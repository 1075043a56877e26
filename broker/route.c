/* route: the workers a session runs on, stage by stage.
 *
 * A route is an ordered list of live workers of one model whose layer
 * ranges tile [0, n_layers): the first starts at 0, each next one where the
 * previous ends, the last ends at n_layers (PROTOCOL.md, "Pipeline
 * stages").  Routes come from the coordinator (ROUTES, kept per model in
 * m->pub) while they are usable; otherwise the broker forms them from the
 * registered ranges with a depth-first search from layer 0.
 *
 * Load of a route: the sum over its stages of open sessions / max_sessions
 * (a worker shared by two routes counts for both).  A route is usable when
 * no stage is lost, loading, full, or resting after OVERLOADED. */
#include "broker.h"

#include <stdlib.h>
#include <string.h>

/* Auto routes explored per pick at most (the search is exhaustive below). */
#define ROUTE_MAX_EXPLORED 4096

static bool route_usable_worker(const struct broker *b, const struct worker *w)
{
	return !w->lost && !w->loading && w->n_sessions < w->max_sessions &&
	       w->busy_until_ms <= b->now_ms;
}

static double route_load(struct worker *const *st, uint32_t n)
{
	double l = 0;
	for (uint32_t i = 0; i < n; i++)
		l += (double)st[i]->n_sessions / (double)st[i]->max_sessions;
	return l;
}

static bool route_has(struct worker *const *st, uint32_t n, uint64_t serial)
{
	for (uint32_t i = 0; i < n; i++)
		if (st[i]->serial == serial)
			return true;
	return false;
}

bool route_valid(struct broker *b, struct model *m, char *const *ids, uint32_t n,
                 struct worker **out)
{
	uint32_t at = 0;
	if (n == 0 || n > BROKER_MAX_STAGES)
		return false;
	for (uint32_t i = 0; i < n; i++) {
		struct worker *w = back_find_id(b, ids[i]);
		if (!w || w->model != m || w->lost || w->loading || w->layer_first != at)
			return false;
		for (uint32_t j = 0; j < i; j++)
			if (out[j] == w)
				return false;
		out[i] = w;
		at = w->layer_last;
	}
	return at == m->n_layers;
}

/* The best candidate so far while searching. */
struct route_best {
	struct worker *st[BROKER_MAX_STAGES];
	uint32_t n;
	double load;
	bool avoided; /* it passes through the avoided worker */
	uint32_t explored;
};

static void route_offer(struct route_best *best, struct worker *const *st, uint32_t n,
                        uint64_t avoid)
{
	bool av = avoid && route_has(st, n, avoid);
	double load = route_load(st, n);
	if (best->n && (best->avoided < av || (best->avoided == av && best->load <= load)))
		return;
	memcpy(best->st, st, n * sizeof *st);
	best->n = n;
	best->load = load;
	best->avoided = av;
}

static void route_search(struct broker *b, struct model *m, struct worker **st, uint32_t depth,
                         uint32_t at, bool usable_only, uint64_t avoid, struct route_best *best)
{
	if (at == m->n_layers) {
		best->explored++;
		route_offer(best, st, depth, avoid);
		return;
	}
	if (depth == BROKER_MAX_STAGES || best->explored >= ROUTE_MAX_EXPLORED)
		return;
	for (struct link *l = m->workers.next; l != &m->workers; l = l->next) {
		struct worker *w = LINK_ENTRY(l, struct worker, model_link);
		if (w->layer_first != at || w->layer_last <= at || w->lost || w->loading || w->mark)
			continue;
		if (usable_only && !route_usable_worker(b, w))
			continue;
		st[depth] = w;
		route_search(b, m, st, depth + 1, w->layer_last, usable_only, avoid, best);
	}
}

uint32_t route_pick(struct broker *b, struct model *m, uint64_t avoid, struct worker **stages)
{
	struct route_best best = {.n = 0};
	struct worker *st[BROKER_MAX_STAGES];
	bool any_published = false;
	for (uint32_t i = 0; i < m->n_pub; i++) {
		if (!route_valid(b, m, m->pub[i], m->pub_len[i], st))
			continue;
		any_published = true;
		bool usable = true;
		for (uint32_t k = 0; k < m->pub_len[i]; k++)
			usable = usable && route_usable_worker(b, st[k]);
		if (usable)
			route_offer(&best, st, m->pub_len[i], avoid);
	}
	/* While any published route is valid, the coordinator's plan holds:
	 * busy published routes make the request wait rather than stray. */
	if (!any_published)
		route_search(b, m, st, 0, 0, true, avoid, &best);
	if (best.n)
		memcpy(stages, best.st, best.n * sizeof *stages);
	return best.n;
}

uint32_t route_list(struct broker *b, struct model *m, struct worker *(*out)[BROKER_MAX_STAGES],
                    uint32_t *lens, uint32_t cap, bool *published)
{
	uint32_t n = 0;
	*published = false;
	for (uint32_t i = 0; i < m->n_pub && n < cap; i++)
		if (route_valid(b, m, m->pub[i], m->pub_len[i], out[n]))
			lens[n++] = m->pub_len[i];
	if (n) {
		*published = true;
		return n;
	}
	/* Disjoint auto routes: take a complete chain, mark its workers, repeat. */
	struct worker *st[BROKER_MAX_STAGES];
	while (n < cap) {
		struct route_best best = {.n = 0};
		route_search(b, m, st, 0, 0, false, 0, &best);
		if (!best.n)
			break;
		memcpy(out[n], best.st, best.n * sizeof *st);
		lens[n++] = best.n;
		for (uint32_t k = 0; k < best.n; k++)
			best.st[k]->mark = true; /* hidden from the next search */
	}
	for (uint32_t r = 0; r < n; r++)
		for (uint32_t k = 0; k < lens[r]; k++)
			out[r][k]->mark = false;
	return n;
}

void route_clear(struct model *m)
{
	for (uint32_t i = 0; i < m->n_pub; i++) {
		for (uint32_t k = 0; k < m->pub_len[i]; k++)
			free(m->pub[i][k]);
		free(m->pub[i]);
	}
	m->n_pub = 0;
}
