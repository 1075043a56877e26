/* controller: the adaptive-settings rules for one worker.
 *
 * Pure: the caller passes the time, the worker's settings and its latest
 * telemetry; the controller keeps its memory in a struct ctl_state per
 * worker and returns the knob changes to make (at most one per knob), each
 * with a reason.  No I/O, no clock, no logging.  The rules:
 *
 *  threads       = max(1, cores of its host / workers on that host), at
 *                  most CTL_MAX_THREADS; set whenever it differs.
 *  batch_tokens  down: the mean step time has been above tpot_ms for
 *                  hold_ms in a row and batch_tokens > min_batch: the new
 *                  value is batch * tpot / step_ms, at least 25% lower,
 *                  not below min_batch.
 *                up: the mean step time has been below tpot_ms / 2 while
 *                  the steps were budget-limited (rows_per_step >= 0.9 *
 *                  batch_tokens) for hold_ms in a row: batch * 1.5
 *                  (rounded up), at most max_batch_tokens.
 *  A knob named in `pinned` is never changed.  After a change the
 *  controller waits for the worker to report the new value (or
 *  pending_ms) before it changes that knob again, and a hold starts
 *  afresh; an idle or stale report resets the holds. */
#ifndef ITT_CONTROLLER_H
#define ITT_CONTROLLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CTL_MAX_THREADS 64

/* Knobs, as bits for `pinned`. */
enum ctl_knob {
	CTL_KNOB_THREADS = 1u << 0,
	CTL_KNOB_BATCH = 1u << 1,
	CTL_KNOB_SLOW = 1u << 2,
};

struct ctl_config {
	double tpot_ms;      /* per-token latency target */
	uint64_t hold_ms;    /* a condition must last this long */
	uint32_t min_batch;  /* batch_tokens is never lowered below this (16) */
	uint64_t pending_ms; /* wait this long for a change to show */
};

struct ctl_state {
	uint64_t over_since;  /* first report of the current run above tpot (0: none) */
	uint64_t under_since; /* likewise below tpot / 2 and budget-limited */
	uint32_t threads_sent, batch_sent; /* values asked for, not yet reported (0: none) */
	uint64_t threads_at, batch_at;     /* when they were asked for */
};

struct ctl_input {
	uint64_t now_ms;
	uint32_t host_cores;   /* cores of the worker's host (0: unknown) */
	uint32_t host_workers; /* live workers on that host, this one included */
	uint32_t threads;      /* in force (0: unknown) */
	uint32_t batch_tokens; /* in force (0: unknown) */
	uint32_t max_batch_tokens;
	bool fresh;     /* a recent telemetry report with steps in it */
	double step_ms; /* its mean step time */
	double rows_per_step;
	unsigned pinned; /* enum ctl_knob bits */
};

struct ctl_change {
	enum ctl_knob knob;
	uint32_t old_value, new_value;
	char reason[256];
};

/* The threads rule alone. */
uint32_t controller_threads(uint32_t host_cores, uint32_t host_workers);

/* Applies the rules; writes up to 2 changes to out and returns how many. */
size_t controller_step(const struct ctl_config *cfg, struct ctl_state *st,
                       const struct ctl_input *in, struct ctl_change out[2]);

/* "threads", "batch_tokens", "slow_ms". */
const char *controller_knob_name(enum ctl_knob k);
/* The bit of a knob name, 0 when unknown. */
unsigned controller_knob_bit(const char *name);

#endif
