/* sampler: turns a row of logits into the next token with llama.cpp's
 * sampler chain and semantics, in this order:
 *   logit bias -> penalties (repetition, presence, frequency over the last
 *   penalty_last_n tokens of the history) -> top-k -> typical -> top-p ->
 *   min-p -> temperature -> draw.
 * temperature <= 0 is greedy: the arg-max after bias and penalties (ties:
 * lowest id).  A filter at its neutral value (top_k <= 0, top_p >= 1,
 * min_p <= 0, typical_p >= 1, penalties 1/0/0) is skipped.
 *
 * Randomness: the draw for the token at sequence position pos is a pure
 * function of (seed, pos) (sampler_uniform), so a session replayed from its
 * token history samples exactly the same tokens. */
#ifndef ITT_SAMPLER_H
#define ITT_SAMPLER_H

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

/* One candidate of the filtered distribution. */
struct sampler_cand {
	int32_t id;
	float logit;
	float p;
};

typedef struct sampler sampler_t;

int sampler_new(const struct sampler_params *p, uint32_t n_vocab, sampler_t **out,
		struct itt_err *err);
void sampler_destroy(sampler_t **s);

/* Samples the token at position pos from logits[n_vocab] (not modified),
 * given the tokens so far (prompt and generated, oldest first). */
int32_t sampler_sample(sampler_t *s, const float *logits, const int32_t *history,
		       size_t n_history, uint64_t pos);

/* The distribution the draw would use: candidates after the whole chain,
 * sorted by descending probability, p normalised to sum 1.  Returns the
 * count (1 for greedy, with p = 1); the array stays valid until the next
 * call on s.  Used by speculative decoding's acceptance rule. */
size_t sampler_distribution(sampler_t *s, const float *logits, const int32_t *history,
			    size_t n_history, const struct sampler_cand **out);

/* The uniform draw in [0, 1) for (seed, pos), and for a second stream
 * (stream > 0) used e.g. by speculative acceptance tests. */
double sampler_uniform(uint64_t seed, uint64_t pos, uint32_t stream);

/* Stop strings over generated text: returns the offset of the first full
 * match of any stop string in text[0, len) or len if none; *safe is set to
 * the length of the prefix that can be emitted now (no stop string can
 * start inside it). */
size_t sampler_find_stop(const char *text, size_t len, const char *const *stops, size_t n_stops,
			 size_t *safe);

#endif
