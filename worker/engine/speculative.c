/* speculative: prompt-lookup drafts, exact verification, adaptive length
 * (contracts in speculative.h). */
#include "speculative.h"

#include <string.h>

uint32_t spec_ngram_draft(const int32_t *hist, uint32_t n_hist, uint32_t ngram_min,
                          uint32_t ngram_max, uint32_t max_draft, int32_t *out)
{
	if (ngram_min < 1)
		ngram_min = 1;
	if (max_draft > SPEC_MAX_DRAFT)
		max_draft = SPEC_MAX_DRAFT;
	for (uint32_t n = ngram_max; n >= ngram_min && n > 0; n--) {
		if (n >= n_hist)
			continue;
		const int32_t *suffix = hist + n_hist - n;
		/* most recent earlier occurrence: start positions n_hist-n-1 down to 0 */
		for (uint32_t s = n_hist - n; s-- > 0;) {
			if (memcmp(hist + s, suffix, n * sizeof *hist) != 0)
				continue;
			uint32_t from = s + n, k = 0;
			while (k < max_draft && from + k < n_hist) {
				out[k] = hist[from + k];
				k++;
			}
			if (k)
				return k;
		}
	}
	return 0;
}

uint32_t spec_verify(sampler_t *smp, const float *logits, uint32_t vocab, const int32_t *draft,
                     uint32_t k, int32_t *hist, uint32_t n_hist, int32_t *out)
{
	for (uint32_t i = 0; i <= k; i++) {
		uint64_t pos = (uint64_t)n_hist + i;
		int32_t tok = sampler_sample(smp, logits + (size_t)i * vocab, hist, pos, pos);
		hist[pos] = tok;
		out[i] = tok;
		if (i == k || tok != draft[i])
			return i + 1;
	}
	return k + 1; /* not reached */
}

int32_t spec_accept_general(const float *p, const float *q, uint32_t n, int32_t d, double u1,
                            double u2, bool *accepted)
{
	double ratio = q[d] > 0 ? (double)p[d] / (double)q[d] : 0.0;
	if (u1 < ratio) {
		*accepted = true;
		return d;
	}
	*accepted = false;
	double total = 0;
	for (uint32_t i = 0; i < n; i++)
		total += p[i] > q[i] ? (double)p[i] - (double)q[i] : 0.0;
	if (!(total > 0)) /* p == q: rejection has probability 0; keep d */
		return d;
	double target = u2 * total, acc = 0;
	int32_t last = d;
	for (uint32_t i = 0; i < n; i++) {
		double r = p[i] > q[i] ? (double)p[i] - (double)q[i] : 0.0;
		if (r <= 0)
			continue;
		last = (int32_t)i;
		acc += r;
		if (target < acc)
			return (int32_t)i;
	}
	return last; /* rounding at the top end */
}

#define SPEC_EWMA        0.3  /* weight of the newest step */
#define SPEC_GROW        0.7
#define SPEC_SHRINK      0.35
#define SPEC_MISS_PAUSE  4    /* all-rejected steps in a row before a pause */
#define SPEC_PAUSE_STEPS 16

void spec_ctl_init(struct spec_ctl *c, uint32_t k_max)
{
	memset(c, 0, sizeof *c);
	c->k_max = k_max > SPEC_MAX_DRAFT ? SPEC_MAX_DRAFT : k_max;
	c->k = c->k_max < 4 ? c->k_max : 4;
	c->rate = 0.5;
}

void spec_ctl_update(struct spec_ctl *c, uint32_t proposed, uint32_t accepted)
{
	c->steps++;
	if (c->pause) {
		if (--c->pause == 0)
			c->k = 1;
		return;
	}
	if (!proposed)
		return;
	c->proposed += proposed;
	c->accepted += accepted;
	double r = (double)accepted / (double)proposed;
	c->rate = (1 - SPEC_EWMA) * c->rate + SPEC_EWMA * r;
	c->misses = accepted ? 0 : c->misses + 1;
	if (c->misses >= SPEC_MISS_PAUSE) {
		c->pause = SPEC_PAUSE_STEPS;
		c->misses = 0;
		c->k = 0;
		return;
	}
	if (c->rate >= SPEC_GROW && c->k < c->k_max)
		c->k++;
	else if (c->rate < SPEC_SHRINK && c->k > 1)
		c->k--;
}
