/* sampling: the sampling settings of a request as plain data (llama.cpp's
 * fields and defaults), their validation, and the stop-string search.
 *
 * Shared by every layer: the protocol validates a request's settings with
 * these checks, the broker cuts streamed text at stop strings, the engine's
 * sampler (worker/engine/sampler.h) runs the chain they describe. */
#ifndef ITT_SAMPLING_H
#define ITT_SAMPLING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct sampler_bias {
	int32_t token;
	float bias; /* added to the logit; -INFINITY bans the token */
};

struct sampler_params {
	float temperature;       /* <= 0: greedy */
	int32_t top_k;           /* <= 0: off */
	float top_p;             /* in (0, 1]; 1: off */
	float min_p;             /* in [0, 1]; 0: off */
	float typical_p;         /* in (0, 1]; 1: off */
	float repeat_penalty;    /* > 0; 1: off */
	float presence_penalty;  /* 0: off */
	float frequency_penalty; /* 0: off */
	int32_t penalty_last_n;  /* window; 0: off, -1: whole history */
	uint64_t seed;
	const struct sampler_bias *bias; /* borrowed; may be NULL */
	size_t n_bias;
};

/* llama.cpp's defaults: temp 0.8, top_k 40, top_p 0.95, min_p 0.05,
 * typical 1, repeat 1.0 over 64, presence 0, frequency 0, seed 0. */
void sampler_params_default(struct sampler_params *p);

/* Checks every field; ITT_E_INVALID with a message naming it. */
int sampler_params_validate(const struct sampler_params *p, uint32_t n_vocab, struct itt_err *err);

/* Stop strings over generated text: returns the offset of the first full
 * match of any stop string in text[0, len) or len if none; *safe is set to
 * the length of the prefix that can be emitted now (no stop string can
 * start inside it). */
size_t sampler_find_stop(const char *text, size_t len, const char *const *stops, size_t n_stops,
			 size_t *safe);

#endif
