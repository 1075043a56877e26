/* speculative: draft tokens and their exact verification (speculative
 * decoding), independent of where the drafts come from.
 *
 * A step with drafts d_1..d_k feeds [t, d_1, ..., d_k] (t: the last token,
 * not yet in the cache) at positions p..p+k in one batch and gets the target
 * logits of every row: row i predicts the token at position p+1+i.
 * spec_verify walks the rows in order and emits tokens until one is not the
 * draft; it always emits at least one token (the correction, or the bonus
 * token after k accepted drafts), at most k+1.
 *
 * Exactness.  Drafts are deterministic here (n-gram lookup, or the arg-max
 * of a shallow early exit): q is one-hot at d.  The standard rule, accept d
 * with probability min(1, p(d) / q(d)) = p(d) and on rejection draw from the
 * normalised residual max(0, p - q) (p without d), is implemented by
 * coupling: the token at position pos is drawn from the target distribution
 * p with the same uniform sampler_sample would use, u(seed, pos); d is
 * accepted iff that draw is d.  Acceptance then has probability p(d), the
 * rejected draw is distributed as the residual, and every emitted token is
 * exactly the token plain decoding would have drawn at that position:
 * greedy and sampled output are token-identical to plain decoding, and a
 * replayed session (drafts or not) produces the same tokens.
 *
 * spec_accept_general implements the rule for a stochastic draft
 * distribution q (accept with min(1, p/q), else draw from the residual) for
 * drafts that are sampled; it is exact in distribution, not token-identical.
 *
 * The draft length adapts (spec_ctl): an exponentially weighted acceptance
 * rate a; the length grows by one while a >= 0.7 and shrinks by one while
 * a < 0.35, within [1, k_max]; a length whose drafts were all rejected for
 * several steps in a row pauses drafting for a while (the session then
 * decodes plainly), so text without repetition does not pay for drafts. */
#ifndef ITT_SPECULATIVE_H
#define ITT_SPECULATIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sampler.h"

#define SPEC_MAX_DRAFT 16

/* Prompt-lookup drafts: the longest suffix of hist (n from ngram_max down to
 * ngram_min tokens) that occurred earlier in hist, at its most recent
 * earlier occurrence; proposes the tokens that followed it there, at most
 * max_draft (and never past the end of hist).  Returns the count (0: none). */
uint32_t spec_ngram_draft(const int32_t *hist, uint32_t n_hist, uint32_t ngram_min,
                          uint32_t ngram_max, uint32_t max_draft, int32_t *out);

/* Verifies k drafts (coupled rule above).  logits: [k+1][vocab], row i the
 * target logits for position pos0 + i, where pos0 = n_hist is the position
 * after hist[0, n_hist) (hist must have room for k+1 more tokens: the
 * emitted tokens are appended as the penalties of later rows see them).
 * Writes the emitted tokens to out and returns their count (1..k+1); the
 * number of drafts accepted is that count minus one. */
uint32_t spec_verify(sampler_t *smp, const float *logits, uint32_t vocab, const int32_t *draft,
                     uint32_t k, int32_t *hist, uint32_t n_hist, int32_t *out);

/* The standard acceptance rule for a sampled draft d ~ q: with u1, u2
 * uniform in [0, 1): accept when u1 < p(d) / q(d); else draw from
 * max(0, p - q) normalised, by inverse CDF with u2.  p and q are
 * distributions over [0, n) (q(d) > 0).  Returns d or the residual draw;
 * *accepted tells which. */
int32_t spec_accept_general(const float *p, const float *q, uint32_t n, int32_t d, double u1,
                            double u2, bool *accepted);

/* Adaptive draft length. */
struct spec_ctl {
	uint32_t k;     /* drafts to propose next (0 while paused) */
	uint32_t k_max; /* the request's maximum */
	double rate;    /* EWMA of accepted / proposed */
	uint32_t misses;   /* steps in a row with every draft rejected */
	uint32_t pause;    /* steps left without drafting */
	uint64_t proposed, accepted, steps;
};

void spec_ctl_init(struct spec_ctl *c, uint32_t k_max);
/* After a step that proposed `proposed` drafts and accepted `accepted`. */
void spec_ctl_update(struct spec_ctl *c, uint32_t proposed, uint32_t accepted);

#endif
