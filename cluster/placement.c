/* placement: see placement.h for the contract (rules 1-6).
 *
 * Sizes are bounded (PLACE_MAX_*), so every scratch array lives on the
 * stack; nothing here allocates. */
#include "placement.h"

#include <stdlib.h>
#include <string.h>

/* Smallest speed any worker gets, so that costs stay finite. */
#define PLACE_MIN_SPEED 1e-9
/* Rounding bonus, in layers, for the count a stage holds now (rule 4). */
#define PLACE_STICKY 0.3

static uint32_t place_cap(const struct place_worker *w, uint32_t n_layers)
{
	uint32_t c = w->capacity ? w->capacity : 1;
	return c < n_layers ? c : n_layers;
}

static uint32_t place_held(const struct place_worker *w)
{
	return w->layer_last > w->layer_first ? w->layer_last - w->layer_first : 0;
}

static int place_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double place_median(double *v, uint32_t n)
{
	qsort(v, n, sizeof *v, place_cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void placement_speeds(struct place_worker *w, uint32_t n)
{
	double per_thread[PLACE_MAX_WORKERS];
	uint32_t m = 0;
	if (n > PLACE_MAX_WORKERS)
		n = PLACE_MAX_WORKERS;
	for (uint32_t i = 0; i < n; i++)
		if (w[i].ms_per_row_layer > 0)
			per_thread[m++] =
			    1.0 / w[i].ms_per_row_layer / (w[i].threads ? w[i].threads : 1);
	double med = m ? place_median(per_thread, m) : 1.0;
	for (uint32_t i = 0; i < n; i++) {
		double t = w[i].threads ? w[i].threads : 1;
		double s = w[i].ms_per_row_layer > 0 ? 1.0 / w[i].ms_per_row_layer : med * t;
		w[i].speed = s > PLACE_MIN_SPEED ? s : PLACE_MIN_SPEED;
	}
}

/* Orders of worker indices: by id, or for dealing (rule 3). */
static int place_cmp_id(const struct place_worker *w, uint32_t n_layers, uint32_t a, uint32_t b)
{
	(void)n_layers;
	return strcmp(w[a].id, w[b].id);
}

static int place_cmp_deal(const struct place_worker *w, uint32_t n_layers, uint32_t a, uint32_t b)
{
	uint32_t ca = place_cap(&w[a], n_layers), cb = place_cap(&w[b], n_layers);
	if (ca != cb)
		return ca > cb ? -1 : 1;
	return strcmp(w[a].id, w[b].id);
}

/* Insertion sort (n <= PLACE_MAX_WORKERS): stable and reentrant, unlike
 * qsort with a comparator that needs the input. */
static void place_sort(const struct place_worker *w, uint32_t n_layers, uint32_t *idx, uint32_t n,
                       int (*cmp)(const struct place_worker *, uint32_t, uint32_t, uint32_t))
{
	for (uint32_t i = 1; i < n; i++) {
		uint32_t v = idx[i], j = i;
		for (; j > 0 && cmp(w, n_layers, idx[j - 1], v) > 0; j--)
			idx[j] = idx[j - 1];
		idx[j] = v;
	}
}

/* Splits n_layers over m stages in proportion to speed, each in [1, hi]
 * (rule 4).  Requires 1 <= m <= n_layers.  Returns true when the
 * capacities had to be ignored. */
static bool place_split(const struct place_worker *w, const uint32_t *idx, uint32_t m,
                        uint32_t n_layers, uint32_t *out)
{
	double q[PLACE_MAX_STAGES];
	uint32_t hi[PLACE_MAX_STAGES];
	bool fixed[PLACE_MAX_STAGES] = {false};
	uint32_t most = n_layers - (m - 1), sum_hi = 0;
	bool over = false;
	for (uint32_t k = 0; k < m; k++) {
		uint32_t c = place_cap(&w[idx[k]], n_layers);
		hi[k] = c < most ? c : most;
		sum_hi += hi[k];
	}
	if (sum_hi < n_layers) {
		over = true;
		for (uint32_t k = 0; k < m; k++)
			hi[k] = most;
	}
	/* Water-filling: quotas in proportion to speed among the stages not
	 * yet fixed at a bound; fix those below 1 first, then those above
	 * their capacity, and share the rest again. */
	for (;;) {
		double rest = n_layers, sp = 0;
		uint32_t n_free = 0;
		for (uint32_t k = 0; k < m; k++) {
			if (fixed[k]) {
				rest -= q[k];
			} else {
				sp += w[idx[k]].speed;
				n_free++;
			}
		}
		if (!n_free)
			break;
		bool low = false, high = false;
		for (uint32_t k = 0; k < m; k++)
			if (!fixed[k]) {
				q[k] = rest * w[idx[k]].speed / sp;
				low = low || q[k] < 1.0;
			}
		for (uint32_t k = 0; k < m; k++) {
			if (fixed[k])
				continue;
			if (low && q[k] < 1.0) {
				q[k] = 1.0;
				fixed[k] = true;
			} else if (!low && q[k] > hi[k]) {
				q[k] = hi[k];
				fixed[k] = high = true;
			}
		}
		if (!low && !high)
			break;
	}
	/* Largest remainder, within the bounds. */
	uint32_t sum = 0;
	for (uint32_t k = 0; k < m; k++) {
		double f = q[k] + 1e-9;
		uint32_t b = f < 1.0 ? 1 : (uint32_t)f;
		out[k] = b > hi[k] ? hi[k] : b;
		sum += out[k];
	}
	/* The remainder of a stage, plus PLACE_STICKY when the layer would
	 * bring it to the count it holds now (minus when taking one would):
	 * near ties keep current ranges. */
	double key[PLACE_MAX_STAGES];
	while (sum < n_layers) {
		int best = -1;
		for (uint32_t k = 0; k < m; k++) {
			key[k] = q[k] - out[k] +
			         (place_held(&w[idx[k]]) == out[k] + 1 ? PLACE_STICKY : 0);
			if (out[k] < hi[k] && (best < 0 || key[k] > key[best] + 1e-12))
				best = (int)k;
		}
		out[best]++;
		sum++;
	}
	while (sum > n_layers) {
		int best = -1;
		for (uint32_t k = 0; k < m; k++) {
			key[k] =
			    q[k] - out[k] + (place_held(&w[idx[k]]) == out[k] ? PLACE_STICKY : 0);
			if (out[k] > 1 && (best < 0 || key[k] < key[best] - 1e-12))
				best = (int)k;
		}
		out[best]--;
		sum--;
	}
	return over;
}

void placement_cost(const struct place_worker *w, struct place_plan *p)
{
	double inv = 0;
	for (uint32_t r = 0; r < p->n_routes; r++) {
		struct place_route *rt = &p->route[r];
		double worst = 0;
		for (uint32_t k = 0; k < rt->n_stages; k++) {
			const struct place_stage *s = &p->stage[rt->stage0 + k];
			double c = (double)(s->last - s->first) / w[s->worker].speed;
			if (c > worst)
				worst = c;
		}
		rt->cost = worst;
		if (worst > 0)
			inv += 1.0 / worst;
	}
	p->cost = inv > 0 ? 1.0 / inv : 0;
}

/* Deals the first n_used of order[] to r routes in snake order; members
 * of route j go to mem[j][..], counts to cnt[j]. */
static void place_deal(const uint32_t *order, uint32_t n_used, uint32_t r,
                       uint32_t mem[][PLACE_MAX_STAGES], uint32_t *cnt)
{
	memset(cnt, 0, r * sizeof *cnt);
	for (uint32_t i = 0; i < n_used; i++) {
		uint32_t round = i / r, pos = i % r;
		uint32_t j = round % 2 ? r - 1 - pos : pos;
		mem[j][cnt[j]++] = order[i];
	}
}

static bool place_holds(const struct place_worker *w, const uint32_t *mem, uint32_t cnt,
                        uint32_t n_layers)
{
	uint64_t sum = 0;
	for (uint32_t k = 0; k < cnt; k++)
		sum += place_cap(&w[mem[k]], n_layers);
	return sum >= n_layers;
}

int placement_plan(const struct place_worker *w, uint32_t n, uint32_t n_layers, uint32_t stages,
                   struct place_plan *out)
{
	uint32_t order[PLACE_MAX_WORKERS];
	uint32_t mem[PLACE_MAX_ROUTES][PLACE_MAX_STAGES], cnt[PLACE_MAX_ROUTES];
	if (n == 0 || n > PLACE_MAX_WORKERS || n_layers == 0)
		return -1;
	for (uint32_t i = 0; i < n; i++)
		order[i] = i;
	place_sort(w, n_layers, order, n, place_cmp_deal);

	/* Route depth limit, workers used, stages S (rule 2). */
	uint32_t depth = n_layers < PLACE_MAX_STAGES ? n_layers : PLACE_MAX_STAGES;
	uint32_t used = n < PLACE_MAX_ROUTES * depth ? n : PLACE_MAX_ROUTES * depth;
	uint32_t s;
	if (stages) {
		s = stages;
	} else {
		uint64_t held = 0;
		for (s = 0; s < used && held < n_layers; s++)
			held += place_cap(&w[order[s]], n_layers);
	}
	if (s > used)
		s = used;
	if (s > depth)
		s = depth;
	if (s < 1)
		s = 1;

	/* Routes (rule 3): from floor(W / S) down to the fewest that keep
	 * every route within depth, until every route holds the model. */
	uint32_t r_min = (used + depth - 1) / depth;
	uint32_t r = used / s;
	if (r < r_min)
		r = r_min;
	if (r > PLACE_MAX_ROUTES)
		r = PLACE_MAX_ROUTES;
	bool over = false;
	for (;; r--) {
		place_deal(order, used, r, mem, cnt);
		bool ok = true;
		for (uint32_t j = 0; j < r && ok; j++)
			ok = place_holds(w, mem[j], cnt[j], n_layers);
		if (ok)
			break;
		if (r == r_min) {
			over = true;
			break;
		}
	}

	memset(out, 0, sizeof *out);
	out->n_layers = n_layers;
	out->n_routes = r;
	out->n_unplaced = n - used;
	out->stages = depth;
	for (uint32_t j = 0; j < r; j++) {
		uint32_t layers[PLACE_MAX_STAGES], at = 0;
		place_sort(w, n_layers, mem[j], cnt[j], place_cmp_id);
		if (place_split(w, mem[j], cnt[j], n_layers, layers))
			over = true;
		out->route[j].stage0 = out->n_stages;
		out->route[j].n_stages = cnt[j];
		if (cnt[j] < out->stages)
			out->stages = cnt[j];
		for (uint32_t k = 0; k < cnt[j]; k++) {
			struct place_stage *st = &out->stage[out->n_stages++];
			st->worker = mem[j][k];
			st->first = at;
			st->last = at + layers[k];
			at = st->last;
		}
	}
	out->over_memory = over;
	placement_cost(w, out);
	return 0;
}

int placement_adopt(const struct place_worker *w, uint32_t n, uint32_t n_layers,
                    struct place_plan *out)
{
	uint32_t order[PLACE_MAX_WORKERS];
	bool used[PLACE_MAX_WORKERS] = {false};
	if (n == 0 || n > PLACE_MAX_WORKERS || n_layers == 0)
		return -1;
	for (uint32_t i = 0; i < n; i++) {
		if (w[i].layer_first >= w[i].layer_last || w[i].layer_last > n_layers)
			return -1;
		order[i] = i;
	}
	place_sort(w, n_layers, order, n, place_cmp_id);
	memset(out, 0, sizeof *out);
	out->n_layers = n_layers;
	out->stages = PLACE_MAX_STAGES;
	/* Chains from layer 0, lowest id first at each boundary.  A chain
	 * that dead-ends, or a worker left over, means the ranges do not
	 * form complete routes. */
	for (;;) {
		uint32_t at = 0, len = 0, start = out->n_stages;
		for (;;) {
			int next = -1;
			for (uint32_t i = 0; i < n && next < 0; i++)
				if (!used[order[i]] && w[order[i]].layer_first == at)
					next = (int)order[i];
			if (next < 0)
				break;
			if (len == PLACE_MAX_STAGES)
				return -1;
			used[next] = true;
			out->stage[out->n_stages++] =
			    (struct place_stage){(uint32_t)next, at, w[next].layer_last};
			len++;
			at = w[next].layer_last;
			if (at == n_layers)
				break;
		}
		if (len == 0)
			break;
		if (at != n_layers || out->n_routes == PLACE_MAX_ROUTES)
			return -1;
		out->route[out->n_routes++] = (struct place_route){start, len, 0};
		if (len < out->stages)
			out->stages = len;
	}
	if (out->n_stages != n)
		return -1;
	placement_cost(w, out);
	return 0;
}

static int place_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

bool placement_same_shape(const struct place_plan *a, const struct place_plan *b)
{
	uint32_t sa[PLACE_MAX_ROUTES], sb[PLACE_MAX_ROUTES];
	if (a->n_routes != b->n_routes)
		return false;
	for (uint32_t r = 0; r < a->n_routes; r++) {
		sa[r] = a->route[r].n_stages;
		sb[r] = b->route[r].n_stages;
	}
	qsort(sa, a->n_routes, sizeof *sa, place_cmp_u32);
	qsort(sb, b->n_routes, sizeof *sb, place_cmp_u32);
	return memcmp(sa, sb, a->n_routes * sizeof *sa) == 0;
}

const struct place_stage *placement_find(const struct place_plan *p, uint32_t i)
{
	for (uint32_t k = 0; k < p->n_stages; k++)
		if (p->stage[k].worker == i)
			return &p->stage[k];
	return NULL;
}
