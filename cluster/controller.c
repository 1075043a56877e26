/* controller: see controller.h for the rules. */
#include "controller.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

uint32_t controller_threads(uint32_t host_cores, uint32_t host_workers)
{
	uint32_t t = host_cores / (host_workers ? host_workers : 1);
	if (t < 1)
		t = 1;
	return t > CTL_MAX_THREADS ? CTL_MAX_THREADS : t;
}

const char *controller_knob_name(enum ctl_knob k)
{
	switch (k) {
	case CTL_KNOB_THREADS: return "threads";
	case CTL_KNOB_BATCH: return "batch_tokens";
	case CTL_KNOB_SLOW: return "slow_ms";
	}
	return "?";
}

unsigned controller_knob_bit(const char *name)
{
	static const enum ctl_knob all[] = {CTL_KNOB_THREADS, CTL_KNOB_BATCH, CTL_KNOB_SLOW};
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		if (!strcmp(name, controller_knob_name(all[i])))
			return all[i];
	return 0;
}

/* True while a value asked for has not shown up yet (and is not too old). */
static bool ctl_pending(const struct ctl_config *cfg, uint32_t *sent, uint64_t at,
                        uint32_t now_value, uint64_t now_ms)
{
	if (!*sent)
		return false;
	if (now_value == *sent || now_ms - at >= cfg->pending_ms) {
		*sent = 0;
		return false;
	}
	return true;
}

static size_t ctl_threads(const struct ctl_config *cfg, struct ctl_state *st,
                          const struct ctl_input *in, struct ctl_change *out)
{
	if ((in->pinned & CTL_KNOB_THREADS) || !in->host_cores || !in->threads)
		return 0;
	if (ctl_pending(cfg, &st->threads_sent, st->threads_at, in->threads, in->now_ms))
		return 0;
	uint32_t want = controller_threads(in->host_cores, in->host_workers);
	if (want == in->threads)
		return 0;
	out->knob = CTL_KNOB_THREADS;
	out->old_value = in->threads;
	out->new_value = want;
	snprintf(out->reason, sizeof out->reason,
	         "host has %u cores shared by %u worker%s: %u threads each", in->host_cores,
	         in->host_workers, in->host_workers == 1 ? "" : "s", want);
	st->threads_sent = want;
	st->threads_at = in->now_ms;
	return 1;
}

static size_t ctl_batch(const struct ctl_config *cfg, struct ctl_state *st,
                        const struct ctl_input *in, struct ctl_change *out)
{
	uint32_t b = in->batch_tokens;
	if ((in->pinned & CTL_KNOB_BATCH) || !b || !in->fresh || !(in->step_ms > 0) ||
	    ctl_pending(cfg, &st->batch_sent, st->batch_at, b, in->now_ms)) {
		st->over_since = st->under_since = 0;
		return 0;
	}
	bool over = in->step_ms > cfg->tpot_ms;
	bool under = in->step_ms < cfg->tpot_ms / 2 && in->rows_per_step >= 0.9 * b;
	if (!over)
		st->over_since = 0;
	else if (!st->over_since)
		st->over_since = in->now_ms;
	if (!under)
		st->under_since = 0;
	else if (!st->under_since)
		st->under_since = in->now_ms;

	uint32_t nb = b;
	uint64_t since = 0;
	if (over && b > cfg->min_batch && in->now_ms - st->over_since >= cfg->hold_ms) {
		double prop = floor(b * cfg->tpot_ms / in->step_ms);
		double cut = floor(b * 0.75);
		double v = prop < cut ? prop : cut;
		nb = v < cfg->min_batch ? cfg->min_batch : (uint32_t)v;
		since = st->over_since;
		snprintf(
		    out->reason, sizeof out->reason,
		    "mean step %.1f ms > tpot target %.0f ms for %.0f s: batch_tokens %u -> %u",
		    in->step_ms, cfg->tpot_ms, (double)(in->now_ms - since) / 1000.0, b, nb);
	} else if (under && in->max_batch_tokens > b &&
	           in->now_ms - st->under_since >= cfg->hold_ms) {
		double v = ceil(b * 1.5);
		nb = v > in->max_batch_tokens ? in->max_batch_tokens : (uint32_t)v;
		since = st->under_since;
		snprintf(out->reason, sizeof out->reason,
		         "mean step %.1f ms < half the tpot target %.0f ms with %.1f rows per step "
		         "(budget-limited) for %.0f s: batch_tokens %u -> %u",
		         in->step_ms, cfg->tpot_ms, in->rows_per_step,
		         (double)(in->now_ms - since) / 1000.0, b, nb);
	}
	if (nb == b)
		return 0;
	out->knob = CTL_KNOB_BATCH;
	out->old_value = b;
	out->new_value = nb;
	st->batch_sent = nb;
	st->batch_at = in->now_ms;
	st->over_since = st->under_since = 0;
	return 1;
}

size_t controller_step(const struct ctl_config *cfg, struct ctl_state *st,
                       const struct ctl_input *in, struct ctl_change out[2])
{
	size_t n = ctl_threads(cfg, st, in, &out[0]);
	n += ctl_batch(cfg, st, in, &out[n]);
	return n;
}
