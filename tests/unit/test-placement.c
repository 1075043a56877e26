/* test-placement: pins down the coordinator's pure parts, the rules stated
 * in cluster/placement.h (speeds, stages, routes, proportional split,
 * memory caps, stability, adoption of current ranges, cost) and
 * cluster/controller.h (threads from host sharing, the batch budget moving
 * down and up only after a hold, pinned knobs left alone).  Expected splits
 * are worked out in the comments. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "controller.h"
#include "placement.h"

static const char *const IDS[] = {"w0", "w1", "w2", "w3", "w4", "w5", "w6", "w7", "w8", "w9"};

/* n workers w0.. measured at ms[i] per row-layer, 1 thread, capacity cap,
 * holding the whole model. */
static void workers(struct place_worker *w, uint32_t n, const double *ms, uint32_t cap,
                    uint32_t n_layers)
{
	memset(w, 0, n * sizeof *w);
	for (uint32_t i = 0; i < n; i++) {
		w[i].id = IDS[i];
		w[i].ms_per_row_layer = ms ? ms[i] : 0;
		w[i].threads = 1;
		w[i].capacity = cap;
		w[i].layer_first = 0;
		w[i].layer_last = n_layers;
	}
	placement_speeds(w, n);
}

/* Layers of worker i in p (0 when unplaced). */
static uint32_t layers_of(const struct place_plan *p, uint32_t i)
{
	const struct place_stage *s = placement_find(p, i);
	return s ? s->last - s->first : 0;
}

/* Every route tiles [0, n_layers) with ids in ascending order. */
static void assert_tiles(const struct place_worker *w, const struct place_plan *p)
{
	for (uint32_t r = 0; r < p->n_routes; r++) {
		const struct place_route *rt = &p->route[r];
		uint32_t at = 0;
		for (uint32_t k = 0; k < rt->n_stages; k++) {
			const struct place_stage *s = &p->stage[rt->stage0 + k];
			assert_int_equal(s->first, at);
			assert_true(s->last > s->first);
			if (k)
				assert_true(strcmp(w[p->stage[rt->stage0 + k - 1].worker].id,
				                   w[s->worker].id) < 0);
			at = s->last;
		}
		assert_int_equal(at, p->n_layers);
	}
}

/* Speeds 3:1 (1 and 3 ms per row-layer) over 8 layers: quotas 6 and 2. */
static void test_split_is_proportional_to_speed(void **state)
{
	(void)state;
	struct place_worker w[2];
	struct place_plan p;
	workers(w, 2, (const double[]){1.0, 3.0}, 8, 8);
	assert_int_equal(placement_plan(w, 2, 8, 2, &p), 0);
	assert_int_equal(p.n_routes, 1);
	assert_tiles(w, &p);
	assert_int_equal(layers_of(&p, 0), 6);
	assert_int_equal(layers_of(&p, 1), 2);
	/* cost: max(6 * 1, 2 * 3) = 6 ms per row */
	assert_true(fabs(p.cost - 6.0) < 1e-9);
}

/* Equal speeds, 5 layers over 3: 5/3 each, floors 1,1,1, the two extra
 * layers by largest remainder with ties to the earlier id: 2,2,1. */
static void test_equal_speeds_use_largest_remainder(void **state)
{
	(void)state;
	struct place_worker w[3];
	struct place_plan p;
	workers(w, 3, NULL, 5, 5);
	assert_int_equal(placement_plan(w, 3, 5, 3, &p), 0);
	assert_tiles(w, &p);
	assert_int_equal(layers_of(&p, 0), 2);
	assert_int_equal(layers_of(&p, 1), 2);
	assert_int_equal(layers_of(&p, 2), 1);
}

/* 10 layers, w0 ten times faster but its memory holds 4: water-filling
 * fixes it at 4 and w1 takes the other 6. */
static void test_memory_caps_a_fast_worker(void **state)
{
	(void)state;
	struct place_worker w[2];
	struct place_plan p;
	workers(w, 2, (const double[]){0.1, 1.0}, 10, 10);
	w[0].capacity = 4;
	assert_int_equal(placement_plan(w, 2, 10, 2, &p), 0);
	assert_tiles(w, &p);
	assert_int_equal(layers_of(&p, 0), 4);
	assert_int_equal(layers_of(&p, 1), 6);
	assert_false(p.over_memory);
}

/* Memory short in total: the plan still tiles, and says so. */
static void test_memory_short_still_tiles(void **state)
{
	(void)state;
	struct place_worker w[2];
	struct place_plan p;
	workers(w, 2, NULL, 1, 5);
	assert_int_equal(placement_plan(w, 2, 5, 0, &p), 0);
	assert_int_equal(p.n_routes, 1);
	assert_tiles(w, &p);
	assert_true(p.over_memory);
}

/* Auto stages: capacity 3 of 5 layers needs 2 stages; 4 workers make 2
 * replicas of 2 stages.  Capacity 5: 1 stage, one replica per worker. */
static void test_auto_stages_from_memory(void **state)
{
	(void)state;
	struct place_worker w[4];
	struct place_plan p;
	workers(w, 4, NULL, 3, 5);
	assert_int_equal(placement_plan(w, 4, 5, 0, &p), 0);
	assert_int_equal(p.stages, 2);
	assert_int_equal(p.n_routes, 2);
	assert_tiles(w, &p);
	for (uint32_t i = 0; i < 4; i++)
		assert_true(layers_of(&p, i) <= 3);

	workers(w, 4, NULL, 5, 5);
	assert_int_equal(placement_plan(w, 4, 5, 0, &p), 0);
	assert_int_equal(p.stages, 1);
	assert_int_equal(p.n_routes, 4);
	assert_tiles(w, &p);
}

/* Mixed memory: one big worker (5) and two small (2): auto S is 1 (the
 * biggest holds all), but R = 3 would leave the small ones alone with a
 * model they cannot hold; R drops until every route holds it: 2 routes
 * is still short (2 < 5) so 1 route of 3 stages. */
static void test_routes_deepen_until_memory_holds(void **state)
{
	(void)state;
	struct place_worker w[3];
	struct place_plan p;
	workers(w, 3, NULL, 2, 5);
	w[1].capacity = 5;
	assert_int_equal(placement_plan(w, 3, 5, 0, &p), 0);
	assert_int_equal(p.n_routes, 1);
	assert_int_equal(p.route[0].n_stages, 3);
	assert_tiles(w, &p);
	assert_false(p.over_memory);
	assert_true(layers_of(&p, 0) <= 2 && layers_of(&p, 2) <= 2);
}

/* The decision documented in placement.h: --stages 2 with 3 workers is one
 * route of 3 stages (every worker gets layers), not 2 + 1. */
static void test_forced_stages_with_leftover_deepen_a_route(void **state)
{
	(void)state;
	struct place_worker w[3];
	struct place_plan p;
	workers(w, 3, NULL, 5, 5);
	assert_int_equal(placement_plan(w, 3, 5, 2, &p), 0);
	assert_int_equal(p.n_routes, 1);
	assert_int_equal(p.route[0].n_stages, 3);
	assert_int_equal(p.stages, 3);
	assert_int_equal(p.n_unplaced, 0);
	assert_tiles(w, &p);
}

/* W > S: 5 workers, --stages 2: 2 routes (3 and 2 stages); 4 workers: 2
 * routes of 2. */
static void test_replicas_when_more_workers_than_stages(void **state)
{
	(void)state;
	struct place_worker w[5];
	struct place_plan p;
	workers(w, 5, NULL, 5, 5);
	assert_int_equal(placement_plan(w, 5, 5, 2, &p), 0);
	assert_int_equal(p.n_routes, 2);
	assert_int_equal(p.route[0].n_stages + p.route[1].n_stages, 5);
	assert_int_equal(p.stages, 2);
	assert_tiles(w, &p);
	for (uint32_t i = 0; i < 5; i++)
		assert_true(layers_of(&p, i) >= 1);

	assert_int_equal(placement_plan(w, 4, 5, 2, &p), 0);
	assert_int_equal(p.n_routes, 2);
	assert_int_equal(p.route[0].n_stages, 2);
	assert_int_equal(p.route[1].n_stages, 2);
	assert_tiles(w, &p);
}

/* One worker 100x slower: quotas 5 * (1, 1, .01) / 2.01 put it below one
 * layer; it is fixed at 1 and the others split 4: 2 and 2. */
static void test_very_slow_worker_gets_one_layer(void **state)
{
	(void)state;
	struct place_worker w[3];
	struct place_plan p;
	workers(w, 3, (const double[]){100.0, 1.0, 1.0}, 5, 5);
	assert_int_equal(placement_plan(w, 3, 5, 3, &p), 0);
	assert_tiles(w, &p);
	assert_int_equal(layers_of(&p, 0), 1);
	assert_int_equal(layers_of(&p, 1), 2);
	assert_int_equal(layers_of(&p, 2), 2);
}

/* Input order does not matter; noise in the speeds does not move the
 * layers of a plan in force: 7 layers over 2 stages is 4 + 3 with equal
 * speeds, and stays so when the second becomes 7% faster (quotas 3.38 and
 * 3.62: the remainder of the stage that holds 4 gets the 0.3 bonus). */
static void test_plan_is_stable(void **state)
{
	(void)state;
	struct place_worker a[4], b[4];
	struct place_plan pa, pb;
	workers(a, 4, (const double[]){1.0, 1.0, 1.0, 1.0}, 7, 7);
	struct place_worker r[4] = {a[3], a[2], a[1], a[0]};
	assert_int_equal(placement_plan(a, 4, 7, 2, &pa), 0);
	assert_int_equal(placement_plan(r, 4, 7, 2, &pb), 0);
	assert_tiles(r, &pb);
	for (uint32_t i = 0; i < 4; i++) {
		const struct place_stage *sa = placement_find(&pa, i);
		const struct place_stage *sb = placement_find(&pb, 3 - i);
		assert_non_null(sa);
		assert_non_null(sb);
		assert_int_equal(sa->first, sb->first);
		assert_int_equal(sa->last, sb->last);
		assert_int_equal(sa->last - sa->first,
		                 pa.stage[pa.route[0].stage0].worker == i ||
		                         pa.stage[pa.route[1].stage0].worker == i
		                     ? 4
		                     : 3);
	}
	/* the plan is in force; speeds drift */
	workers(b, 4, (const double[]){1.04, 0.97, 1.0, 1.02}, 7, 7);
	for (uint32_t i = 0; i < 4; i++) {
		b[i].layer_first = placement_find(&pa, i)->first;
		b[i].layer_last = placement_find(&pa, i)->last;
	}
	assert_int_equal(placement_plan(b, 4, 7, 2, &pb), 0);
	for (uint32_t i = 0; i < 4; i++) {
		assert_int_equal(placement_find(&pb, i)->first, b[i].layer_first);
		assert_int_equal(placement_find(&pb, i)->last, b[i].layer_last);
	}
	assert_true(placement_same_shape(&pa, &pb));
}

/* Unmeasured workers: the median measured speed per thread times their
 * threads; nobody measured: their threads. */
static void test_speed_of_unmeasured_workers(void **state)
{
	(void)state;
	struct place_worker w[3];
	workers(w, 3, (const double[]){1.0, 0.5, 0}, 5, 5);
	w[0].threads = 2; /* 0.5 per thread */
	w[1].threads = 4; /* 0.5 per thread */
	w[2].threads = 8;
	placement_speeds(w, 3);
	assert_true(fabs(w[2].speed - 4.0) < 1e-9);
	assert_true(fabs(w[1].speed - 2.0) < 1e-9);

	workers(w, 3, NULL, 5, 5);
	w[1].threads = 3;
	placement_speeds(w, 3);
	assert_true(fabs(w[0].speed - 1.0) < 1e-9);
	assert_true(fabs(w[1].speed - 3.0) < 1e-9);
}

/* Current ranges that form complete routes are adopted as they are, and
 * have the plan's shape when they came from it. */
static void test_adopt_complete_routes(void **state)
{
	(void)state;
	struct place_worker w[4];
	struct place_plan cur, plan;
	workers(w, 4, NULL, 5, 5);
	/* routes w0 [0,2) > w3 [2,5) and w1 [0,3) > w2 [3,5) */
	w[0].layer_last = 2;
	w[3].layer_first = 2;
	w[1].layer_last = 3;
	w[2].layer_first = 3;
	assert_int_equal(placement_adopt(w, 4, 5, &cur), 0);
	assert_int_equal(cur.n_routes, 2);
	assert_int_equal(cur.n_stages, 4);
	for (uint32_t i = 0; i < 4; i++) {
		const struct place_stage *s = placement_find(&cur, i);
		assert_non_null(s);
		assert_int_equal(s->first, w[i].layer_first);
		assert_int_equal(s->last, w[i].layer_last);
	}
	assert_int_equal(placement_plan(w, 4, 5, 2, &plan), 0);
	assert_true(placement_same_shape(&cur, &plan));
	assert_int_equal(placement_plan(w, 4, 5, 0, &plan), 0);
	assert_false(placement_same_shape(&cur, &plan)); /* auto: 4 whole replicas */

	/* A plan's own ranges, fed back, are adopted with every range kept:
	 * a restarted coordinator moves nothing. */
	struct place_worker x[3];
	workers(x, 3, (const double[]){10.0, 1.0, 1.0}, 5, 5);
	assert_int_equal(placement_plan(x, 3, 5, 3, &plan), 0);
	for (uint32_t i = 0; i < 3; i++) {
		x[i].layer_first = placement_find(&plan, i)->first;
		x[i].layer_last = placement_find(&plan, i)->last;
	}
	assert_int_equal(placement_adopt(x, 3, 5, &cur), 0);
	assert_true(placement_same_shape(&cur, &plan));
	assert_true(fabs(cur.cost - plan.cost) < 1e-9);
}

static void test_adopt_refuses_gaps_and_leftovers(void **state)
{
	(void)state;
	struct place_worker w[3];
	struct place_plan p;
	workers(w, 3, NULL, 5, 5);
	w[0].layer_last = 2; /* [0,2) then nothing starts at 2 */
	w[1].layer_first = 3;
	assert_int_equal(placement_adopt(w, 3, 5, &p), -1);

	workers(w, 3, NULL, 5, 5);
	w[2].layer_last = 2; /* two whole routes and a lone [0,2) */
	assert_int_equal(placement_adopt(w, 3, 5, &p), -1);

	workers(w, 3, NULL, 5, 5);
	w[2].layer_first = 5; /* empty range */
	assert_int_equal(placement_adopt(w, 3, 5, &p), -1);
}

/* Route depth and count are bounded by the broker's limits: 1 layer and 70
 * workers make 64 one-stage routes and leave 6 unplaced. */
static void test_limits_leave_workers_unplaced(void **state)
{
	(void)state;
	static struct place_worker w[70];
	static char names[70][8];
	static struct place_plan p;
	memset(w, 0, sizeof w);
	for (uint32_t i = 0; i < 70; i++) {
		snprintf(names[i], sizeof names[i], "w%02u", i);
		w[i].id = names[i];
		w[i].threads = 1;
		w[i].capacity = 1;
		w[i].layer_last = 1;
	}
	placement_speeds(w, 70);
	assert_int_equal(placement_plan(w, 70, 1, 0, &p), 0);
	assert_int_equal(p.n_routes, PLACE_MAX_ROUTES);
	assert_int_equal(p.n_unplaced, 6);
	assert_tiles(w, &p);
	assert_int_equal(placement_plan(w, 0, 1, 0, &p), -1);
	assert_int_equal(placement_plan(w, 1, 0, 0, &p), -1);
}

/* ---- controller ---- */

static const struct ctl_config CFG = {
    .tpot_ms = 100, .hold_ms = 3000, .min_batch = 16, .pending_ms = 5000};

static struct ctl_input busy(uint64_t now, uint32_t batch, double step_ms, double rows)
{
	return (struct ctl_input){.now_ms = now,
	                          .host_cores = 8,
	                          .host_workers = 8, /* threads 1 already right */
	                          .threads = 1,
	                          .batch_tokens = batch,
	                          .max_batch_tokens = 256,
	                          .fresh = true,
	                          .step_ms = step_ms,
	                          .rows_per_step = rows};
}

static void test_threads_follow_host_sharing(void **state)
{
	(void)state;
	assert_int_equal(controller_threads(8, 2), 4);
	assert_int_equal(controller_threads(3, 4), 1);
	assert_int_equal(controller_threads(0, 1), 1);
	assert_int_equal(controller_threads(200, 1), CTL_MAX_THREADS);

	struct ctl_state st = {0};
	struct ctl_change ch[2];
	struct ctl_input in = busy(1000, 64, 50, 10);
	in.host_workers = 2;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].knob, CTL_KNOB_THREADS);
	assert_int_equal(ch[0].old_value, 1);
	assert_int_equal(ch[0].new_value, 4);
	assert_non_null(strstr(ch[0].reason, "8 cores shared by 2 workers"));
	/* not again while the worker still reports 1 thread ... */
	in.now_ms = 2000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	/* ... nor once it reports 4 */
	in.threads = 4;
	in.now_ms = 3000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	/* a worker joins the host: 8 / 3 = 2 */
	in.host_workers = 3;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].new_value, 2);
}

/* step 250 ms > 100 ms: after 3 s in a row, 64 * 100 / 250 = 25.6 -> 25. */
static void test_budget_goes_down_after_hold(void **state)
{
	(void)state;
	struct ctl_state st = {0};
	struct ctl_change ch[2];
	struct ctl_input in;
	for (uint64_t t = 1000; t < 4000; t += 1000) {
		in = busy(t, 64, 250, 64);
		assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	}
	in = busy(4000, 64, 250, 64);
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].knob, CTL_KNOB_BATCH);
	assert_int_equal(ch[0].new_value, 25);
	assert_non_null(strstr(ch[0].reason, "tpot"));
	/* until the worker reports 25, nothing more */
	in = busy(9000, 64, 250, 64);
	in.now_ms = 5000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);

	/* 110 ms: proportional 58 is less than a 25% cut: 48. */
	memset(&st, 0, sizeof st);
	in = busy(1000, 64, 110, 64);
	controller_step(&CFG, &st, &in, ch);
	in.now_ms = 4000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].new_value, 48);

	/* never below 16, and 16 stays */
	memset(&st, 0, sizeof st);
	in = busy(1000, 20, 1000, 20);
	controller_step(&CFG, &st, &in, ch);
	in.now_ms = 4000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].new_value, 16);
	memset(&st, 0, sizeof st);
	in = busy(1000, 16, 1000, 16);
	controller_step(&CFG, &st, &in, ch);
	in.now_ms = 9000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
}

/* A break in the excess restarts the hold. */
static void test_budget_hold_restarts(void **state)
{
	(void)state;
	struct ctl_state st = {0};
	struct ctl_change ch[2];
	struct ctl_input in = busy(1000, 64, 250, 64);
	controller_step(&CFG, &st, &in, ch);
	in = busy(2500, 64, 80, 64); /* back under target */
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	in = busy(3000, 64, 250, 64);
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	in.now_ms = 5000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	in.now_ms = 6000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	/* idle reports reset it too */
	memset(&st, 0, sizeof st);
	in = busy(1000, 64, 250, 64);
	controller_step(&CFG, &st, &in, ch);
	in.fresh = false;
	in.now_ms = 2000;
	controller_step(&CFG, &st, &in, ch);
	in = busy(4500, 64, 250, 64);
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
}

/* Fast, budget-limited steps: 64 * 1.5 = 96, capped by max_batch_tokens. */
static void test_budget_goes_up_when_budget_limited(void **state)
{
	(void)state;
	struct ctl_state st = {0};
	struct ctl_change ch[2];
	struct ctl_input in = busy(1000, 64, 20, 60); /* 60 >= 0.9 * 64 */
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	in.now_ms = 4000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].new_value, 96);

	memset(&st, 0, sizeof st);
	in = busy(1000, 64, 20, 60);
	in.max_batch_tokens = 80;
	controller_step(&CFG, &st, &in, ch);
	in.now_ms = 4000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].new_value, 80);

	/* not budget-limited (30 rows of 64): no change */
	memset(&st, 0, sizeof st);
	in = busy(1000, 64, 20, 30);
	controller_step(&CFG, &st, &in, ch);
	in.now_ms = 9000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	/* at the maximum already: no change */
	memset(&st, 0, sizeof st);
	in = busy(1000, 256, 20, 256);
	controller_step(&CFG, &st, &in, ch);
	in.now_ms = 9000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
}

static void test_pinned_knobs_are_untouched(void **state)
{
	(void)state;
	struct ctl_state st = {0};
	struct ctl_change ch[2];
	struct ctl_input in = busy(1000, 64, 900, 64);
	in.host_workers = 1; /* wants 8 threads */
	in.pinned = CTL_KNOB_THREADS | CTL_KNOB_BATCH;
	for (uint64_t t = 1000; t < 20000; t += 1000) {
		in.now_ms = t;
		assert_int_equal(controller_step(&CFG, &st, &in, ch), 0);
	}
	/* unpinning batch_tokens alone changes only batch_tokens */
	in.pinned = CTL_KNOB_THREADS;
	in.now_ms = 21000;
	controller_step(&CFG, &st, &in, ch);
	in.now_ms = 24000;
	assert_int_equal(controller_step(&CFG, &st, &in, ch), 1);
	assert_int_equal(ch[0].knob, CTL_KNOB_BATCH);
	assert_int_equal(controller_knob_bit("batch_tokens"), CTL_KNOB_BATCH);
	assert_int_equal(controller_knob_bit("threads"), CTL_KNOB_THREADS);
	assert_int_equal(controller_knob_bit("nope"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_split_is_proportional_to_speed),
	    cmocka_unit_test(test_equal_speeds_use_largest_remainder),
	    cmocka_unit_test(test_memory_caps_a_fast_worker),
	    cmocka_unit_test(test_memory_short_still_tiles),
	    cmocka_unit_test(test_auto_stages_from_memory),
	    cmocka_unit_test(test_routes_deepen_until_memory_holds),
	    cmocka_unit_test(test_forced_stages_with_leftover_deepen_a_route),
	    cmocka_unit_test(test_replicas_when_more_workers_than_stages),
	    cmocka_unit_test(test_very_slow_worker_gets_one_layer),
	    cmocka_unit_test(test_plan_is_stable),
	    cmocka_unit_test(test_speed_of_unmeasured_workers),
	    cmocka_unit_test(test_adopt_complete_routes),
	    cmocka_unit_test(test_adopt_refuses_gaps_and_leftovers),
	    cmocka_unit_test(test_limits_leave_workers_unplaced),
	    cmocka_unit_test(test_threads_follow_host_sharing),
	    cmocka_unit_test(test_budget_goes_down_after_hold),
	    cmocka_unit_test(test_budget_hold_restarts),
	    cmocka_unit_test(test_budget_goes_up_when_budget_limited),
	    cmocka_unit_test(test_pinned_knobs_are_untouched),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
