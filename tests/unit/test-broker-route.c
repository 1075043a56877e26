/* test-broker-route: pins down how the broker picks the workers of a
 * session (broker/route.c): a route is formed from the registered layer
 * ranges and tiles [0, n_layers) in order; the least loaded usable route
 * wins (equal load: the first found, in registration order); the worker
 * that failed a session is avoided while another route exists; lost,
 * loading, full and resting workers are skipped; a valid published route
 * (the coordinator's) comes first and holds, busy or not; STATS lists
 * disjoint auto routes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "brokerutil.h"

static struct model *model(struct tb *t)
{
	struct model *m = map_get(&t->b.models, "m", 1);
	assert_non_null(m);
	return m;
}

/* route_pick into st; asserts that what it returns tiles the layers. */
static uint32_t pick(struct tb *t, uint64_t avoid, struct worker **st)
{
	struct model *m = model(t);
	uint32_t n = route_pick(&t->b, m, avoid, st), at = 0;
	for (uint32_t k = 0; k < n; k++) {
		assert_ptr_equal(st[k]->model, m);
		assert_int_equal(st[k]->layer_first, at);
		at = st[k]->layer_last;
	}
	if (n)
		assert_int_equal(at, m->n_layers);
	return n;
}

/* Publishes routes as the coordinator's ROUTES would: ids of each route
 * separated by '>', routes by ' '. */
static void publish(struct tb *t, const char *spec)
{
	struct model *m = model(t);
	char buf[256], *save = NULL;
	route_clear(m);
	snprintf(buf, sizeof buf, "%s", spec);
	for (char *r = strtok_r(buf, " ", &save); r; r = strtok_r(NULL, " ", &save)) {
		char **ids = calloc(BROKER_MAX_STAGES, sizeof *ids), *save2 = NULL;
		uint32_t n = 0;
		assert_non_null(ids);
		for (char *id = strtok_r(r, ">", &save2); id; id = strtok_r(NULL, ">", &save2))
			ids[n++] = strdup(id);
		m->pub[m->n_pub] = ids;
		m->pub_len[m->n_pub++] = n;
	}
}

static void test_a_route_is_formed_from_the_registered_ranges(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	struct worker *b = tb_worker(t, "b", "m", 2, 4, 4, 1, NULL);
	assert_int_equal(pick(t, 0, st), 0); /* layers [0, 2) are missing */
	struct worker *a = tb_worker(t, "a", "m", 0, 2, 4, 1, NULL);
	assert_int_equal(pick(t, 0, st), 2);
	assert_ptr_equal(st[0], a);
	assert_ptr_equal(st[1], b);
	tb_free(t);
}

static void test_no_route_while_a_layer_is_missing(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "a", "m", 0, 2, 6, 1, NULL);
	tb_worker(t, "c", "m", 3, 6, 6, 1, NULL);
	assert_int_equal(pick(t, 0, st), 0);
	tb_worker(t, "b", "m", 2, 3, 6, 1, NULL);
	assert_int_equal(pick(t, 0, st), 3);
	tb_free(t);
}

static void test_the_least_loaded_route_is_picked_first(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	struct worker *x = tb_worker(t, "x", "m", 0, 4, 4, 4, NULL);
	struct worker *y = tb_worker(t, "y", "m", 0, 4, 4, 2, NULL);
	void *c = tb_peer(t, false, "c1");
	/* equal load: the first registered */
	assert_ptr_equal(tb_submit(t, c, "c", "r1", "m", 3, 8, 0)->stages[0].w, x);
	/* x 1/4 against y 0/2 */
	assert_ptr_equal(tb_submit(t, c, "c", "r2", "m", 3, 8, 0)->stages[0].w, y);
	/* x 1/4 against y 1/2 */
	assert_ptr_equal(tb_submit(t, c, "c", "r3", "m", 3, 8, 0)->stages[0].w, x);
	/* x 2/4 against y 1/2: equal, the first found */
	assert_ptr_equal(tb_submit(t, c, "c", "r4", "m", 3, 8, 0)->stages[0].w, x);
	assert_int_equal(pick(t, 0, st), 1);
	assert_ptr_equal(st[0], y); /* 3/4 against 1/2 */
	tb_free(t);
}

static void test_load_is_summed_over_the_stages_of_a_route(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	/* a>b and c>d both tile [0, 4) */
	struct worker *a = tb_worker(t, "a", "m", 0, 1, 4, 4, NULL);
	struct worker *b = tb_worker(t, "b", "m", 1, 4, 4, 4, NULL);
	struct worker *c = tb_worker(t, "c", "m", 0, 3, 4, 4, NULL);
	struct worker *d = tb_worker(t, "d", "m", 3, 4, 4, 4, NULL);
	void *cl = tb_peer(t, false, "c1");
	struct request *r = tb_submit(t, cl, "c", "r1", "m", 3, 8, 0);
	assert_int_equal(r->n_stages, 2);
	assert_ptr_equal(r->stages[0].w, a);
	assert_ptr_equal(r->stages[1].w, b);
	assert_int_equal(pick(t, 0, st), 2);
	assert_ptr_equal(st[0], c);
	assert_ptr_equal(st[1], d);
	tb_free(t);
}

static void test_the_failed_worker_is_avoided_while_another_route_exists(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	struct worker *x = tb_worker(t, "x", "m", 0, 4, 4, 4, NULL);
	void *c = tb_peer(t, false, "c1");
	tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	assert_int_equal(pick(t, x->serial, st), 1);
	assert_ptr_equal(st[0], x); /* the only route */
	struct worker *y = tb_worker(t, "y", "m", 0, 4, 4, 1, NULL);
	tb_submit(t, c, "c", "r2", "m", 3, 8, 0); /* y 1/1: full now */
	assert_int_equal(pick(t, y->serial, st), 1);
	assert_ptr_equal(st[0], x);
	struct worker *z = tb_worker(t, "z", "m", 0, 4, 4, 1, NULL);
	assert_int_equal(pick(t, z->serial, st), 1);
	assert_ptr_equal(st[0], x); /* z is idle, x is not, but z is avoided */
	tb_free(t);
}

static void test_lost_loading_full_and_resting_workers_are_skipped(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	struct worker *x = tb_worker(t, "x", "m", 0, 4, 4, 1, NULL);
	assert_int_equal(pick(t, 0, st), 1);
	x->loading = true; /* ASSIGN sent */
	assert_int_equal(pick(t, 0, st), 0);
	x->loading = false;
	x->busy_until_ms = t->b.now_ms + 1; /* said OVERLOADED */
	assert_int_equal(pick(t, 0, st), 0);
	t->b.now_ms++;
	assert_int_equal(pick(t, 0, st), 1);
	x->busy_until_ms = 0;
	void *c = tb_peer(t, false, "c1");
	tb_submit(t, c, "c", "r1", "m", 3, 8, 0); /* 1/1 */
	assert_int_equal(pick(t, 0, st), 0);
	struct worker *y = tb_worker(t, "y", "m", 0, 4, 4, 1, NULL);
	y->lost = true; /* as if a send had failed: on the reap list in real life */
	assert_int_equal(pick(t, 0, st), 0);
	y->lost = false;
	assert_int_equal(pick(t, 0, st), 1);
	broker_check(&t->b);
	tb_free(t);
}

static void test_a_valid_published_route_comes_first_and_holds(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "x", "m", 0, 4, 4, 1, NULL);
	struct worker *a = tb_worker(t, "a", "m", 0, 2, 4, 1, NULL);
	struct worker *b = tb_worker(t, "b", "m", 2, 4, 4, 1, NULL);
	publish(t, "a>b");
	assert_int_equal(pick(t, 0, st), 2); /* x is idle and shorter, but not published */
	assert_ptr_equal(st[0], a);
	assert_ptr_equal(st[1], b);
	void *c = tb_peer(t, false, "c1");
	tb_submit(t, c, "c", "r1", "m", 3, 8, 0);
	/* busy published routes make requests wait rather than stray */
	assert_int_equal(pick(t, 0, st), 0);
	struct request *r2 = tb_submit(t, c, "c", "r2", "m", 3, 8, 0);
	assert_int_equal(r2->state, REQ_QUEUED);
	/* a published route that is not valid (unknown worker) is ignored */
	publish(t, "a>nobody");
	assert_int_equal(pick(t, 0, st), 1);
	route_clear(model(t));
	assert_int_equal(pick(t, 0, st), 1);
	tb_free(t);
}

static void test_route_valid_wants_live_tiling_distinct_workers(void **state)
{
	(void)state;
	struct worker *st[BROKER_MAX_STAGES];
	struct tb *t = tb_new(0, NULL);
	tb_worker(t, "a", "m", 0, 2, 4, 1, NULL);
	struct worker *b = tb_worker(t, "b", "m", 2, 4, 4, 1, NULL);
	tb_worker(t, "z", "other", 0, 4, 4, 1, NULL);
	struct model *m = model(t);
	char *ab[] = {"a", "b"}, *ba[] = {"b", "a"}, *aa[] = {"a", "a"}, *a1[] = {"a"},
	     *z[] = {"z"}, *none[] = {"q"};
	assert_true(route_valid(&t->b, m, ab, 2, st));
	assert_false(route_valid(&t->b, m, ba, 2, st));   /* out of order */
	assert_false(route_valid(&t->b, m, aa, 2, st));   /* a worker twice */
	assert_false(route_valid(&t->b, m, a1, 1, st));   /* stops at layer 2 */
	assert_false(route_valid(&t->b, m, z, 1, st));    /* another model */
	assert_false(route_valid(&t->b, m, none, 1, st)); /* unknown */
	assert_false(route_valid(&t->b, m, ab, 0, st));
	b->loading = true;
	assert_false(route_valid(&t->b, m, ab, 2, st));
	b->loading = false;
	tb_free(t);
}

static void test_stats_lists_disjoint_auto_routes(void **state)
{
	(void)state;
	struct worker *routes[BROKER_MAX_ROUTES][BROKER_MAX_STAGES];
	uint32_t lens[BROKER_MAX_ROUTES];
	bool published;
	struct tb *t = tb_new(0, NULL);
	struct worker *w[4];
	w[0] = tb_worker(t, "a", "m", 0, 2, 4, 1, NULL);
	w[1] = tb_worker(t, "b", "m", 2, 4, 4, 1, NULL);
	w[2] = tb_worker(t, "c", "m", 0, 2, 4, 1, NULL);
	w[3] = tb_worker(t, "d", "m", 2, 4, 4, 1, NULL);
	assert_int_equal(route_list(&t->b, model(t), routes, lens, BROKER_MAX_ROUTES, &published),
	                 2);
	assert_false(published);
	assert_int_equal(lens[0], 2);
	assert_int_equal(lens[1], 2);
	assert_ptr_not_equal(routes[0][0], routes[1][0]);
	assert_ptr_not_equal(routes[0][1], routes[1][1]);
	for (int i = 0; i < 4; i++)
		assert_false(w[i]->mark); /* the scratch marks are cleared */
	publish(t, "c>b");
	assert_int_equal(route_list(&t->b, model(t), routes, lens, BROKER_MAX_ROUTES, &published),
	                 1);
	assert_true(published);
	assert_ptr_equal(routes[0][0], w[2]);
	assert_ptr_equal(routes[0][1], w[1]);
	tb_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_a_route_is_formed_from_the_registered_ranges),
	    cmocka_unit_test(test_no_route_while_a_layer_is_missing),
	    cmocka_unit_test(test_the_least_loaded_route_is_picked_first),
	    cmocka_unit_test(test_load_is_summed_over_the_stages_of_a_route),
	    cmocka_unit_test(test_the_failed_worker_is_avoided_while_another_route_exists),
	    cmocka_unit_test(test_lost_loading_full_and_resting_workers_are_skipped),
	    cmocka_unit_test(test_a_valid_published_route_comes_first_and_holds),
	    cmocka_unit_test(test_route_valid_wants_live_tiling_distinct_workers),
	    cmocka_unit_test(test_stats_lists_disjoint_auto_routes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
