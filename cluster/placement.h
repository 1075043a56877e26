/* placement: which worker of one model holds which layers, and the routes.
 *
 * Pure functions: no I/O, no allocation, no clock, no logging; the same
 * input always gives the same plan.  The input is the workers of one model
 * group (same model name and same sha256 of the file: the coordinator
 * groups them), each with its measured cost per row-layer, thread count,
 * memory capacity in layers and current range.  The contract, pinned by
 * tests/unit/test-placement.c:
 *
 *  1. Speeds (placement_speeds): speed = 1 / ms_per_row_layer.  A worker
 *     with no measurement gets the median measured speed per thread times
 *     its own threads; when nobody is measured, speed = threads.  Only the
 *     ratios matter for the split.
 *  2. Stages S: forced (--stages N) gives min(N, W, n_layers,
 *     PLACE_MAX_STAGES); auto (0) gives the fewest S whose S largest
 *     capacities add up to n_layers (all W when even they do not).
 *  3. Routes R = max(1, floor(W / S)), at most PLACE_MAX_ROUTES.  Every
 *     worker gets layers: the workers are dealt to the R routes in snake
 *     order of (capacity capped at n_layers descending, then id), so route
 *     sizes differ by at most one and the W - R*S left over become an extra
 *     stage of some routes (S+1 stages).  Hence 3 workers with --stages 2
 *     make ONE route of 3 stages, not a 2-stage route plus a 1-stage one (a
 *     1-stage route needs the whole model in one memory and ignores the
 *     depth the operator asked for).  When a route's workers cannot hold
 *     the model, R is lowered (deeper routes) until all can.  Speeds do not
 *     affect dealing, so a slowdown changes layer splits, never route
 *     membership.  A route has at most min(n_layers, PLACE_MAX_STAGES)
 *     stages; workers beyond what 64 such routes hold are left unplaced.
 *  4. Within a route stages are ordered by worker id (stable: no needless
 *     moves), and the n_layers are split in proportion to speed: quotas
 *     bounded to [1, capacity] by water-filling, rounded by largest
 *     remainder (ties to the earlier stage); a remainder counts 0.3 layer more
 *     when the layer gives a stage the count it holds now, so noise in the
 *     speeds does not flip near-even splits.  No power-of-two or head-count
 *     constraint.  When the route's capacities cannot hold the model, the
 *     capacities are ignored (over_memory is set) rather than leave a gap.
 *  5. Cost: a route's cost is the max over its stages of layers *
 *     ms_per_row_layer (1 / speed), the per-row time of its bottleneck; the
 *     plan's cost is 1 / sum(1 / route cost), the time per row of the whole
 *     group (equal to the bottleneck when there is one route).
 *  6. placement_adopt: when the current ranges form complete routes that
 *     use every worker exactly once, it returns them as a plan (route
 *     pairing: lowest id first at each boundary), so a restarted
 *     coordinator can keep them and move nothing. */
#ifndef ITT_PLACEMENT_H
#define ITT_PLACEMENT_H

#include <stdbool.h>
#include <stdint.h>

#define PLACE_MAX_WORKERS 256 /* workers of one model group */
#define PLACE_MAX_ROUTES  64  /* routes per model (the broker's limit) */
#define PLACE_MAX_STAGES  16  /* stages per route (the broker's limit) */

struct place_worker {
	const char *id;          /* unique; orders stages and breaks ties */
	double ms_per_row_layer; /* measured (smoothed); <= 0: not measured */
	uint32_t threads;        /* compute threads (0 counts as 1) */
	uint32_t capacity;       /* layers its memory holds (0 counts as 1) */
	uint32_t layer_first;    /* current range [layer_first, layer_last) */
	uint32_t layer_last;
	double speed; /* set by placement_speeds: row-layers per ms */
};

struct place_stage {
	uint32_t worker; /* index into the input array */
	uint32_t first, last;
};

struct place_route {
	uint32_t stage0;   /* index of its first stage in place_plan.stage */
	uint32_t n_stages; /* stage 0 first */
	double cost;       /* ms per row of its slowest stage */
};

struct place_plan {
	uint32_t n_layers;
	uint32_t stages;   /* S: the smallest route has S or more stages */
	uint32_t n_routes; /* R */
	uint32_t n_stages; /* stages in all routes = workers placed */
	struct place_route route[PLACE_MAX_ROUTES];
	struct place_stage stage[PLACE_MAX_WORKERS];
	double cost;      /* ms per row of the group (rule 5) */
	bool over_memory; /* some route's workers cannot hold the model */
	uint32_t n_unplaced;
};

/* Fills w[i].speed for all n workers (rule 1). */
void placement_speeds(struct place_worker *w, uint32_t n);

/* Plans n workers (1..PLACE_MAX_WORKERS, speeds set) over n_layers
 * (>= 1) layers; stages 0 = auto.  0, or -1 when the input is out of
 * range (out untouched). */
int placement_plan(const struct place_worker *w, uint32_t n, uint32_t n_layers, uint32_t stages,
                   struct place_plan *out);

/* The current ranges as a plan (rule 6): 0, or -1 when they do not form
 * complete routes using every worker once. */
int placement_adopt(const struct place_worker *w, uint32_t n, uint32_t n_layers,
                    struct place_plan *out);

/* Recomputes p's route costs and total cost with w's speeds (rule 5). */
void placement_cost(const struct place_worker *w, struct place_plan *p);

/* True when a and b have the same number of routes with the same stage
 * counts (in any order). */
bool placement_same_shape(const struct place_plan *a, const struct place_plan *b);

/* The stage of worker i in p, or NULL when it is unplaced. */
const struct place_stage *placement_find(const struct place_plan *p, uint32_t i);

#endif
