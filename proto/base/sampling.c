/* sampling: defaults, validation and stop-string search of sampling settings. */
#include "sampling.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

void sampler_params_default(struct sampler_params *p)
{
	memset(p, 0, sizeof *p);
	p->temperature = 0.8f;
	p->top_k = 40;
	p->top_p = 0.95f;
	p->min_p = 0.05f;
	p->typical_p = 1.0f;
	p->repeat_penalty = 1.0f;
	p->presence_penalty = 0.0f;
	p->frequency_penalty = 0.0f;
	p->penalty_last_n = 64;
	p->seed = 0;
	p->bias = NULL;
	p->n_bias = 0;
}

int sampler_params_validate(const struct sampler_params *p, uint32_t n_vocab, struct itt_err *err)
{
	if (!p)
		return itt_err_set(err, ITT_E_INVALID, "sampler params must not be NULL");
	if (n_vocab == 0 || n_vocab > INT32_MAX)
		return itt_err_set(err, ITT_E_INVALID, "n_vocab must be in [1, %d], got %u",
		                   INT32_MAX, n_vocab);
	if (!isfinite(p->temperature))
		return itt_err_set(err, ITT_E_INVALID, "temperature must be finite, got %g",
		                   (double)p->temperature);
	if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
		return itt_err_set(err, ITT_E_INVALID, "top_p must be in (0, 1], got %g",
		                   (double)p->top_p);
	if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
		return itt_err_set(err, ITT_E_INVALID, "min_p must be in [0, 1], got %g",
		                   (double)p->min_p);
	if (!(p->typical_p > 0.0f && p->typical_p <= 1.0f))
		return itt_err_set(err, ITT_E_INVALID, "typical_p must be in (0, 1], got %g",
		                   (double)p->typical_p);
	if (!isfinite(p->repeat_penalty) || !(p->repeat_penalty > 0.0f))
		return itt_err_set(err, ITT_E_INVALID,
		                   "repeat_penalty must be finite and > 0, got %g",
		                   (double)p->repeat_penalty);
	if (!isfinite(p->presence_penalty))
		return itt_err_set(err, ITT_E_INVALID, "presence_penalty must be finite, got %g",
		                   (double)p->presence_penalty);
	if (!isfinite(p->frequency_penalty))
		return itt_err_set(err, ITT_E_INVALID, "frequency_penalty must be finite, got %g",
		                   (double)p->frequency_penalty);
	if (p->penalty_last_n < -1)
		return itt_err_set(err, ITT_E_INVALID, "penalty_last_n must be >= -1, got %d",
		                   (int)p->penalty_last_n);
	if (p->n_bias > 0 && !p->bias)
		return itt_err_set(err, ITT_E_INVALID, "bias must not be NULL when n_bias is %zu",
		                   p->n_bias);
	for (size_t i = 0; i < p->n_bias; i++) {
		const struct sampler_bias *b = &p->bias[i];
		if (b->token < 0 || (uint32_t)b->token >= n_vocab)
			return itt_err_set(err, ITT_E_INVALID,
			                   "bias[%zu].token must be in [0, %u), got %d", i, n_vocab,
			                   (int)b->token);
		if (!isfinite(b->bias) && b->bias != -INFINITY)
			return itt_err_set(err, ITT_E_INVALID,
			                   "bias[%zu].bias must be finite or -inf, got %g", i,
			                   (double)b->bias);
	}
	return ITT_OK;
}

size_t sampler_find_stop(const char *text, size_t len, const char *const *stops, size_t n_stops,
                         size_t *safe)
{
	size_t match = len, hold = 0;
	for (size_t k = 0; k < n_stops; k++) {
		const char *stop = stops ? stops[k] : NULL;
		size_t m = stop ? strlen(stop) : 0;
		if (m == 0)
			continue; /* an empty stop string never matches */
		for (size_t off = 0; off + m <= len && off < match; off++) {
			if (memcmp(text + off, stop, m) == 0) {
				match = off;
				break;
			}
		}
		/* The longest suffix of text that is a proper prefix of stop. */
		size_t most = m - 1 < len ? m - 1 : len;
		for (size_t h = most; h > hold; h--) {
			if (memcmp(text + len - h, stop, h) == 0) {
				hold = h;
				break;
			}
		}
	}
	if (safe)
		*safe = match < len ? match : len - hold;
	return match;
}
