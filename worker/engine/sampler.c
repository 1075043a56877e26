/* sampler: llama.cpp's sampler chain over one row of logits.
 *
 * Contract: sampler_sample() and sampler_distribution() run the same chain
 * (bias -> penalties -> top-k -> typical -> top-p -> min-p -> temperature)
 * on a private copy of the logits and never allocate; every work array is
 * n_vocab long and made in sampler_new().  The draw is the inverse CDF of
 * the final distribution in descending-probability order at the uniform
 * sampler_uniform(seed, pos, 0), so the pick is a pure function of
 * (params, logits, history, pos).
 *
 * Invariants: candidates are ranked by (logit descending, id ascending), a
 * total order, so every sort and partial selection is deterministic and
 * agrees with every other; `sorted` says the current candidates are in that
 * order.  Candidates whose logit is -INFINITY (banned) or NaN are dropped
 * before the filters: they have probability 0 in llama.cpp and would only
 * poison the entropy of typical sampling.  The penalty counters are all zero
 * between calls. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* One candidate's key for typical sampling's reordering. */
struct sampler_key {
	double score; /* |-log p - H| */
	uint32_t idx; /* position in the candidates before the reordering */
};

struct sampler {
	struct sampler_params params; /* .bias points at bias below */
	struct sampler_bias *bias;    /* [n_bias] own copy */
	uint32_t n_vocab;
	struct sampler_cand *cur;   /* [n_vocab] current candidates, first n valid */
	struct sampler_cand *spare; /* [n_vocab] selection output; swapped with cur */
	struct sampler_key *keys;   /* [n_vocab] typical sampling's sort keys */
	uint32_t *count;            /* [n_vocab] penalty counts; zero between calls */
	size_t n;                   /* live candidates in cur */
	bool sorted;                /* cur[0, n) ranked by logit desc, id asc */
};

/* Beyond this many unsorted candidates, ranked prefixes are found by partial
 * selection of a growing top instead of a full sort (as llama.cpp's top-p). */
#define SAMPLER_SORT_MAX   1024
#define SAMPLER_SELECT_TOP 256

int sampler_new(const struct sampler_params *p, uint32_t n_vocab, sampler_t **out,
                struct itt_err *err)
{
	if (!out)
		return itt_err_set(err, ITT_E_INVALID, "sampler_new: out must not be NULL");
	*out = NULL;
	int rc = sampler_params_validate(p, n_vocab, err);
	if (rc < 0)
		return rc;
	sampler_t *s = calloc(1, sizeof *s);
	if (!s)
		return itt_err_set(err, ITT_E_NOMEM, "sampler_new: out of memory");
	s->params = *p;
	s->n_vocab = n_vocab;
	s->cur = malloc(n_vocab * sizeof *s->cur);
	s->spare = malloc(n_vocab * sizeof *s->spare);
	s->keys = malloc(n_vocab * sizeof *s->keys);
	s->count = calloc(n_vocab, sizeof *s->count);
	if (p->n_bias > 0) {
		s->bias = malloc(p->n_bias * sizeof *s->bias);
		if (s->bias)
			memcpy(s->bias, p->bias, p->n_bias * sizeof *s->bias);
	}
	s->params.bias = s->bias;
	if (!s->cur || !s->spare || !s->keys || !s->count || (p->n_bias > 0 && !s->bias)) {
		sampler_destroy(&s);
		return itt_err_set(err, ITT_E_NOMEM, "sampler_new: out of memory for n_vocab %u",
		                   n_vocab);
	}
	*out = s;
	return ITT_OK;
}

void sampler_destroy(sampler_t **sp)
{
	if (!sp || !*sp)
		return;
	sampler_t *s = *sp;
	free(s->cur);
	free(s->spare);
	free(s->keys);
	free(s->count);
	free(s->bias);
	free(s);
	*sp = NULL;
}

/* ---- ranking ---------------------------------------------------------- */

/* Is a ranked before b: higher logit first, then lower id. */
static inline bool sampler_is_before(const struct sampler_cand *a, const struct sampler_cand *b)
{
	return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

/* Heap whose root is the candidate ranked last: no parent is ranked before
 * either child. */
static void sampler_sift_down(struct sampler_cand *h, size_t n, size_t i)
{
	struct sampler_cand x = h[i];
	for (;;) {
		size_t l = 2 * i + 1;
		if (l >= n)
			break;
		size_t w = (l + 1 < n && sampler_is_before(&h[l], &h[l + 1])) ? l + 1 : l;
		if (!sampler_is_before(&x, &h[w]))
			break;
		h[i] = h[w];
		i = w;
	}
	h[i] = x;
}

/* Writes the k best of src[0, n) to dst[0, k) in rank order, in
 * O(n log k); src is untouched.  1 <= k <= n. */
static void sampler_select_top(const struct sampler_cand *src, size_t n, size_t k,
                               struct sampler_cand *dst)
{
	memcpy(dst, src, k * sizeof *dst);
	for (size_t i = k / 2; i-- > 0;)
		sampler_sift_down(dst, k, i);
	for (size_t i = k; i < n; i++) {
		if (sampler_is_before(&src[i], &dst[0])) {
			dst[0] = src[i];
			sampler_sift_down(dst, k, 0);
		}
	}
	/* Heap sort: the root (worst left) goes to the end each round. */
	for (size_t m = k; m-- > 1;) {
		struct sampler_cand t = dst[0];
		dst[0] = dst[m];
		dst[m] = t;
		sampler_sift_down(dst, m, 0);
	}
}

static void sampler_swap_buffers(sampler_t *s)
{
	struct sampler_cand *t = s->cur;
	s->cur = s->spare;
	s->spare = t;
}

/* Heap sort through spare: no allocation (qsort() may allocate), and the
 * same ranking as every partial selection. */
static void sampler_sort_all(sampler_t *s)
{
	if (s->sorted)
		return;
	sampler_select_top(s->cur, s->n, s->n, s->spare);
	sampler_swap_buffers(s);
	s->sorted = true;
}

/* The ranked candidates when at least `need` of them must be ranked: cur
 * itself, sorted, when it already is, is small or all of it is needed;
 * else the top max(need, 256) selected into spare.  *have says how many of
 * the returned prefix are ranked. */
static const struct sampler_cand *sampler_rank_prefix(sampler_t *s, size_t need, size_t *have)
{
	if (s->sorted || s->n <= SAMPLER_SORT_MAX || need >= s->n) {
		sampler_sort_all(s);
		*have = s->n;
		return s->cur;
	}
	size_t k = need > SAMPLER_SELECT_TOP ? need : SAMPLER_SELECT_TOP;
	sampler_select_top(s->cur, s->n, k, s->spare);
	*have = k;
	return s->spare;
}

/* p = softmax(logit) over the current candidates, summed in double. */
static void sampler_softmax(sampler_t *s)
{
	struct sampler_cand *c = s->cur;
	float max = c[0].logit;
	for (size_t i = 1; i < s->n; i++)
		max = c[i].logit > max ? c[i].logit : max;
	double sum = 0.0;
	for (size_t i = 0; i < s->n; i++) {
		c[i].p = expf(c[i].logit - max);
		sum += c[i].p;
	}
	for (size_t i = 0; i < s->n; i++)
		c[i].p = (float)(c[i].p / sum);
}

/* ---- the chain ------------------------------------------------------------ */

/* Repetition, frequency and presence penalties on cur indexed by id (before
 * compaction), each distinct token of the window once. */
static void sampler_apply_penalties(sampler_t *s, const int32_t *history, size_t n_history)
{
	const struct sampler_params *p = &s->params;
	if (p->penalty_last_n == 0 || !history || n_history == 0)
		return;
	if (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f &&
	    p->presence_penalty == 0.0f)
		return;
	size_t window = n_history;
	if (p->penalty_last_n > 0 && (size_t)p->penalty_last_n < window)
		window = (size_t)p->penalty_last_n;
	const int32_t *w = history + (n_history - window);
	for (size_t i = 0; i < window; i++)
		if (w[i] >= 0 && (uint32_t)w[i] < s->n_vocab)
			s->count[w[i]]++;
	for (size_t i = 0; i < window; i++) {
		if (w[i] < 0 || (uint32_t)w[i] >= s->n_vocab || s->count[w[i]] == 0)
			continue;
		uint32_t cnt = s->count[w[i]];
		s->count[w[i]] = 0;
		float *l = &s->cur[w[i]].logit;
		/* Dividing a negative logit would make the token more likely. */
		if (*l <= 0.0f)
			*l *= p->repeat_penalty;
		else
			*l /= p->repeat_penalty;
		*l -= (float)cnt * p->frequency_penalty + p->presence_penalty;
	}
}

/* Single candidate: the best ranked of cur[0, n). */
static void sampler_keep_argmax(sampler_t *s)
{
	size_t best = 0;
	for (size_t i = 1; i < s->n; i++)
		if (sampler_is_before(&s->cur[i], &s->cur[best]))
			best = i;
	s->cur[0] = s->cur[best];
	s->cur[0].p = 1.0f;
	s->n = 1;
	s->sorted = true;
}

static void sampler_apply_top_k(sampler_t *s, int32_t top_k)
{
	if (top_k <= 0 || (size_t)top_k >= s->n)
		return;
	size_t k = (size_t)top_k;
	sampler_select_top(s->cur, s->n, k, s->spare);
	sampler_swap_buffers(s);
	s->n = k;
	s->sorted = true;
}

/* Does key a come after b: larger score, then later position. */
static inline bool sampler_key_is_after(const struct sampler_key *a, const struct sampler_key *b)
{
	return a->score > b->score || (a->score == b->score && a->idx > b->idx);
}

static void sampler_key_sift_down(struct sampler_key *h, size_t n, size_t i)
{
	struct sampler_key x = h[i];
	for (;;) {
		size_t l = 2 * i + 1;
		if (l >= n)
			break;
		size_t w = (l + 1 < n && sampler_key_is_after(&h[l + 1], &h[l])) ? l + 1 : l;
		if (!sampler_key_is_after(&h[w], &x))
			break;
		h[i] = h[w];
		i = w;
	}
	h[i] = x;
}

/* In-place heap sort, ascending; qsort() may allocate. */
static void sampler_sort_keys(struct sampler_key *k, size_t n)
{
	for (size_t i = n / 2; i-- > 0;)
		sampler_key_sift_down(k, n, i);
	for (size_t m = n; m-- > 1;) {
		struct sampler_key t = k[0];
		k[0] = k[m];
		k[m] = t;
		sampler_key_sift_down(k, m, 0);
	}
}

/* Locally typical sampling: keep the candidates whose surprisal is closest
 * to the entropy until their mass exceeds typical_p (strictly, as
 * llama.cpp), in that order. */
static void sampler_apply_typical(sampler_t *s, float typical_p)
{
	if (typical_p >= 1.0f)
		return;
	sampler_sort_all(s);
	sampler_softmax(s);
	const struct sampler_cand *c = s->cur;
	double entropy = 0.0;
	for (size_t i = 0; i < s->n; i++)
		if (c[i].p > 0.0f)
			entropy -= (double)c[i].p * log((double)c[i].p);
	for (size_t i = 0; i < s->n; i++) {
		s->keys[i].score = fabs(-log((double)c[i].p) - entropy);
		s->keys[i].idx = (uint32_t)i;
	}
	sampler_sort_keys(s->keys, s->n);
	double cum = 0.0;
	size_t keep = s->n;
	for (size_t i = 0; i < s->n; i++) {
		cum += c[s->keys[i].idx].p;
		if (cum > (double)typical_p) {
			keep = i + 1;
			break;
		}
	}
	for (size_t i = 0; i < keep; i++)
		s->spare[i] = c[s->keys[i].idx];
	sampler_swap_buffers(s);
	s->n = keep;
	s->sorted = keep == 1;
}

/* Nucleus: the smallest ranked prefix whose mass reaches top_p. */
static void sampler_apply_top_p(sampler_t *s, float top_p)
{
	if (top_p >= 1.0f)
		return;
	sampler_softmax(s);
	size_t need = 0; /* ranked prefix asked for; grows until the mass is reached */
	for (;;) {
		size_t have;
		const struct sampler_cand *r = sampler_rank_prefix(s, need, &have);
		double cum = 0.0;
		size_t keep = 0;
		for (size_t i = 0; i < have; i++) {
			cum += r[i].p;
			if (cum >= (double)top_p) {
				keep = i + 1;
				break;
			}
		}
		if (keep == 0 && have < s->n) {
			need = have * 2;
			continue;
		}
		if (keep == 0)
			keep = s->n; /* rounding kept the mass short of top_p: keep all */
		if (r == s->spare)
			sampler_swap_buffers(s);
		s->n = keep;
		s->sorted = true;
		return;
	}
}

/* Keeps p >= min_p * p_max, i.e. logit >= max + log(min_p), in order. */
static void sampler_apply_min_p(sampler_t *s, float min_p)
{
	if (min_p <= 0.0f)
		return;
	float max = s->cur[0].logit;
	for (size_t i = 1; i < s->n; i++)
		max = s->cur[i].logit > max ? s->cur[i].logit : max;
	const float min_logit = max + logf(min_p);
	size_t j = 0;
	for (size_t i = 0; i < s->n; i++)
		if (s->cur[i].logit >= min_logit)
			s->cur[j++] = s->cur[i];
	s->n = j; /* the max always survives */
}

/* Runs the chain up to (not including) the final ranking; leaves p as the
 * softmax of the survivors. */
static void sampler_run_chain(sampler_t *s, const float *logits, const int32_t *history,
                              size_t n_history)
{
	const struct sampler_params *p = &s->params;
	struct sampler_cand *c = s->cur;
	for (uint32_t i = 0; i < s->n_vocab; i++) {
		c[i].id = (int32_t)i;
		c[i].logit = logits[i];
		c[i].p = 0.0f;
	}
	for (size_t i = 0; i < p->n_bias; i++)
		c[p->bias[i].token].logit += p->bias[i].bias;
	sampler_apply_penalties(s, history, n_history);

	/* Drop banned (-inf) and NaN candidates; ids stay ascending. */
	size_t n = 0;
	for (uint32_t i = 0; i < s->n_vocab; i++)
		if (c[i].logit > -INFINITY)
			c[n++] = c[i];
	s->sorted = false;
	if (n == 0) {
		/* Everything banned: fall back to token 0, as an arg-max over
		 * all -inf would. */
		c[0].id = 0;
		c[0].logit = -INFINITY;
		c[0].p = 1.0f;
		s->n = 1;
		s->sorted = true;
		return;
	}
	s->n = n;
	if (p->temperature <= 0.0f) {
		sampler_keep_argmax(s);
		return;
	}
	sampler_apply_top_k(s, p->top_k);
	sampler_apply_typical(s, p->typical_p);
	sampler_apply_top_p(s, p->top_p);
	sampler_apply_min_p(s, p->min_p);
	for (size_t i = 0; i < s->n; i++)
		s->cur[i].logit /= p->temperature;
	sampler_softmax(s);
}

int32_t sampler_sample(sampler_t *s, const float *logits, const int32_t *history, size_t n_history,
                       uint64_t pos)
{
	sampler_run_chain(s, logits, history, n_history);
	if (s->n == 1)
		return s->cur[0].id;
	/* Inverse CDF over the ranked candidates: the first whose cumulative
	 * probability exceeds u; only as much of the ranking as needed. */
	const double u = sampler_uniform(s->params.seed, pos, 0);
	size_t need = 0, have, start = 0;
	double cum = 0.0;
	for (;;) {
		const struct sampler_cand *r = sampler_rank_prefix(s, need, &have);
		for (size_t i = start; i < have; i++) {
			cum += r[i].p;
			if (u < cum)
				return r[i].id;
		}
		if (have == s->n)
			return r[have - 1].id; /* rounding left the total below u */
		start = have;
		need = have * 2;
	}
}

size_t sampler_distribution(sampler_t *s, const float *logits, const int32_t *history,
                            size_t n_history, const struct sampler_cand **out)
{
	sampler_run_chain(s, logits, history, n_history);
	sampler_sort_all(s);
	*out = s->cur;
	return s->n;
}

/* splitmix64's finaliser: a bijection on 64 bits with full avalanche. */
static uint64_t sampler_mix64(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

double sampler_uniform(uint64_t seed, uint64_t pos, uint32_t stream)
{
	uint64_t h = sampler_mix64(seed);
	h = sampler_mix64(h ^ pos);
	h = sampler_mix64(h ^ ((uint64_t)stream * 0xd1b54a32d192ed03ull));
	return (double)(h >> 11) * 0x1.0p-53;
}
