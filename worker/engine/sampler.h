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
#include "sampling.h"

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

#endif
