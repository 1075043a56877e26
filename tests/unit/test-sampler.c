/* test-sampler: pins down the sampler chain on small hand-computed
 * distributions (each filter alone, then their order), the penalties and
 * biases, the determinism of the draw, its statistics, parameter validation
 * and stop-string scanning.  Expected survivors are worked out in the
 * comments from the probabilities the logits are made of. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "testutil.h"

/* Every filter at its neutral value, temperature 1. */
static void params_off(struct sampler_params *p)
{
	sampler_params_default(p);
	p->temperature = 1.0f;
	p->top_k = 0;
	p->top_p = 1.0f;
	p->min_p = 0.0f;
	p->typical_p = 1.0f;
	p->repeat_penalty = 1.0f;
	p->penalty_last_n = 0;
	p->seed = 1;
}

static sampler_t *make(const struct sampler_params *p, uint32_t n_vocab)
{
	sampler_t *s = NULL;
	struct itt_err err = {0};
	int rc = sampler_new(p, n_vocab, &s, &err);
	if (rc != ITT_OK)
		fail_msg("sampler_new: %s", err.msg);
	return s;
}

/* The distribution for p over logits, copied into out (n_vocab long). */
static size_t dist(const struct sampler_params *p, const float *logits, uint32_t n_vocab,
                   const int32_t *hist, size_t n_hist, struct sampler_cand *out)
{
	sampler_t *s = make(p, n_vocab);
	const struct sampler_cand *c = NULL;
	size_t n = sampler_distribution(s, logits, hist, n_hist, &c);
	assert_non_null(c);
	memcpy(out, c, n * sizeof *out);
	sampler_destroy(&s);
	assert_null(s);
	return n;
}

/* Logits whose softmax is probs. */
static void logits_of(const double *probs, size_t n, float *logits)
{
	for (size_t i = 0; i < n; i++)
		logits[i] = (float)log(probs[i]);
}

/* Asserts the distribution is exactly ids[] with probabilities ∝ w[]. */
static void assert_dist(const struct sampler_cand *c, size_t n, const int32_t *ids, const double *w,
                        size_t n_want)
{
	assert_int_equal(n, n_want);
	double sum = 0.0;
	for (size_t i = 0; i < n_want; i++)
		sum += w[i];
	for (size_t i = 0; i < n_want; i++) {
		assert_int_equal(c[i].id, ids[i]);
		assert_true(fabs(c[i].p - w[i] / sum) < 1e-5);
	}
}

static const double P4[4] = {0.5, 0.3, 0.15, 0.05};

static void test_greedy_picks_argmax_lowest_id_on_ties(void **state)
{
	(void)state;
	struct sampler_params p;
	params_off(&p);
	p.temperature = 0.0f;
	const float logits[5] = {1.0f, 3.0f, -2.0f, 3.0f, 2.9f};
	sampler_t *s = make(&p, 5);
	for (uint64_t pos = 0; pos < 20; pos++)
		assert_int_equal(sampler_sample(s, logits, NULL, 0, pos), 1);
	const struct sampler_cand *c;
	assert_int_equal(sampler_distribution(s, logits, NULL, 0, &c), 1);
	assert_int_equal(c[0].id, 1);
	assert_true(c[0].p == 1.0f);
	/* Greedy ignores the other filters: top_p and min_p cannot drop the max. */
	p.temperature = -1.0f;
	p.top_k = 3;
	p.top_p = 0.1f;
	p.min_p = 0.9f;
	sampler_destroy(&s);
	s = make(&p, 5);
	assert_int_equal(sampler_sample(s, logits, NULL, 0, 7), 1);
	sampler_destroy(&s);
}

static void test_greedy_sees_bias_and_penalties(void **state)
{
	(void)state;
	const float logits[4] = {1.0f, 3.0f, 2.0f, 0.0f};
	struct sampler_bias ban = {1, -INFINITY};
	struct sampler_params p;
	params_off(&p);
	p.temperature = 0.0f;
	p.bias = &ban;
	p.n_bias = 1;
	sampler_t *s = make(&p, 4);
	assert_int_equal(sampler_sample(s, logits, NULL, 0, 0), 2);
	sampler_destroy(&s);

	/* Repeat penalty 3 on token 1: 3 / 3 = 1 < 2. */
	params_off(&p);
	p.temperature = 0.0f;
	p.repeat_penalty = 3.0f;
	p.penalty_last_n = -1;
	const int32_t hist[2] = {1, 3};
	s = make(&p, 4);
	assert_int_equal(sampler_sample(s, logits, hist, 2, 0), 2);
	sampler_destroy(&s);
}

static void test_top_k_keeps_k_highest_ties_by_lower_id(void **state)
{
	(void)state;
	const float logits[5] = {0.0f, 2.0f, 1.0f, 2.0f, -1.0f};
	struct sampler_cand c[5];
	struct sampler_params p;
	params_off(&p);

	/* k = 2: the two logits 2 (ids 1 and 3), half each. */
	p.top_k = 2;
	int32_t ids2[] = {1, 3};
	double w2[] = {1, 1};
	assert_dist(c, dist(&p, logits, 5, NULL, 0, c), ids2, w2, 2);

	/* k = 1 with a tie: the lower id. */
	p.top_k = 1;
	int32_t ids1[] = {1};
	double w1[] = {1};
	assert_dist(c, dist(&p, logits, 5, NULL, 0, c), ids1, w1, 1);

	/* k = 3: e^2, e^2, e^1. */
	p.top_k = 3;
	int32_t ids3[] = {1, 3, 2};
	double w3[] = {exp(2.0), exp(2.0), exp(1.0)};
	assert_dist(c, dist(&p, logits, 5, NULL, 0, c), ids3, w3, 3);

	/* k beyond the vocabulary clamps: everything. */
	p.top_k = 100;
	int32_t ids5[] = {1, 3, 2, 0, 4};
	double w5[] = {exp(2.0), exp(2.0), exp(1.0), 1.0, exp(-1.0)};
	assert_dist(c, dist(&p, logits, 5, NULL, 0, c), ids5, w5, 5);
}

static void test_top_p_keeps_smallest_prefix_reaching_p(void **state)
{
	(void)state;
	float logits[4];
	logits_of(P4, 4, logits);
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);

	/* 0.5 < 0.7 <= 0.8: ids 0, 1 renormalised to 0.625, 0.375. */
	p.top_p = 0.7f;
	int32_t ids2[] = {0, 1};
	double w2[] = {0.5, 0.3};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids2, w2, 2);

	/* 0.8 < 0.85 <= 0.95: three. */
	p.top_p = 0.85f;
	int32_t ids3[] = {0, 1, 2};
	double w3[] = {0.5, 0.3, 0.15};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids3, w3, 3);

	/* Below the first probability: only the top token. */
	p.top_p = 0.1f;
	int32_t ids1[] = {0};
	double w1[] = {1};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids1, w1, 1);
}

static void test_min_p_keeps_relative_to_max(void **state)
{
	(void)state;
	float logits[4];
	logits_of(P4, 4, logits);
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);

	/* Threshold 0.2 * 0.5 = 0.1: drops 0.05. */
	p.min_p = 0.2f;
	int32_t ids3[] = {0, 1, 2};
	double w3[] = {0.5, 0.3, 0.15};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids3, w3, 3);

	/* Threshold 0.25: ids 0 and 1. */
	p.min_p = 0.5f;
	int32_t ids2[] = {0, 1};
	double w2[] = {0.5, 0.3};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids2, w2, 2);

	/* min_p 1: only the max. */
	p.min_p = 1.0f;
	int32_t ids1[] = {0};
	double w1[] = {1};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids1, w1, 1);
}

static void test_typical_keeps_tokens_near_entropy(void **state)
{
	(void)state;
	/* H = -sum p ln p = 1.1421; |-ln p - H| = 0.449, 0.062, 0.755, 1.854,
	 * so the typical order is ids 1, 0, 2, 3 with masses 0.3, 0.8, 0.95, 1. */
	float logits[4];
	logits_of(P4, 4, logits);
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);

	/* 0.3 > 0.25: token 1 alone, although token 0 is more likely. */
	p.typical_p = 0.25f;
	int32_t ids1[] = {1};
	double w1[] = {1};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids1, w1, 1);

	/* 0.3 <= 0.5 < 0.8: ids 1 and 0, reported by probability. */
	p.typical_p = 0.5f;
	int32_t ids2[] = {0, 1};
	double w2[] = {0.5, 0.3};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids2, w2, 2);

	/* 0.8 <= 0.9 < 0.95: ids 1, 0, 2. */
	p.typical_p = 0.9f;
	int32_t ids3[] = {0, 1, 2};
	double w3[] = {0.5, 0.3, 0.15};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids3, w3, 3);
}

static void test_temperature_scales_logits(void **state)
{
	(void)state;
	float logits[4];
	logits_of(P4, 4, logits);
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);

	/* T = 0.5 squares the probabilities. */
	p.temperature = 0.5f;
	int32_t ids[] = {0, 1, 2, 3};
	double w[] = {0.25, 0.09, 0.0225, 0.0025};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids, w, 4);
	assert_true(fabsf(c[0].logit - 2.0f * logits[0]) < 1e-6f);

	/* T = 2 takes square roots. */
	p.temperature = 2.0f;
	double w2[] = {sqrt(0.5), sqrt(0.3), sqrt(0.15), sqrt(0.05)};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids, w2, 4);
}

static void test_chain_runs_top_k_before_top_p(void **state)
{
	(void)state;
	/* probs 0.4 0.3 0.2 0.1, top_k 2, top_p 0.5.  Chain order: top-k
	 * leaves 0.571, 0.429, and top-p keeps id 0 alone.  The other order
	 * would keep 0.4 + 0.3 and then both survive top-k. */
	const double probs[4] = {0.4, 0.3, 0.2, 0.1};
	float logits[4];
	logits_of(probs, 4, logits);
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);
	p.top_k = 2;
	p.top_p = 0.5f;
	int32_t ids[] = {0};
	double w[] = {1};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids, w, 1);
	/* Reference for the other order: top-p alone keeps two. */
	p.top_k = 0;
	assert_int_equal(dist(&p, logits, 4, NULL, 0, c), 2);
}

static void test_chain_runs_min_p_before_temperature(void **state)
{
	(void)state;
	/* min_p 0.2 on P4 keeps three; at T = 0.5 first the probabilities
	 * would be 0.685 0.247 0.062 0.007 and the threshold 0.137 keeps two. */
	float logits[4];
	logits_of(P4, 4, logits);
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);
	p.min_p = 0.2f;
	p.temperature = 0.5f;
	int32_t ids[] = {0, 1, 2};
	double w[] = {0.25, 0.09, 0.0225};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids, w, 3);
}

static void test_chain_runs_typical_before_top_p(void **state)
{
	(void)state;
	/* typical 0.25 keeps token 1 only; top_p 0.6 alone would keep 0, 1. */
	float logits[4];
	logits_of(P4, 4, logits);
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);
	p.typical_p = 0.25f;
	p.top_p = 0.6f;
	int32_t ids[] = {1};
	double w[] = {1};
	assert_dist(c, dist(&p, logits, 4, NULL, 0, c), ids, w, 1);
}

/* The logit of token id in a distribution, or NAN when it was dropped. */
static float logit_of(const struct sampler_cand *c, size_t n, int32_t id)
{
	for (size_t i = 0; i < n; i++)
		if (c[i].id == id)
			return c[i].logit;
	return NAN;
}

static void test_penalties_repeat_frequency_presence(void **state)
{
	(void)state;
	const float logits[5] = {2.0f, -2.0f, 1.0f, 0.5f, 0.0f};
	const int32_t hist[7] = {0, 1, 1, 3, 0, 0, 4};
	struct sampler_cand c[5];
	struct sampler_params p;
	params_off(&p);
	p.repeat_penalty = 2.0f;
	p.frequency_penalty = 0.1f;
	p.presence_penalty = 0.5f;
	p.penalty_last_n = -1;
	size_t n = dist(&p, logits, 5, hist, 7, c);
	assert_int_equal(n, 5);
	/* counts 0:3 1:2 3:1 4:1; positive logits divide, others multiply. */
	assert_true(fabsf(logit_of(c, n, 0) - (2.0f / 2.0f - (3 * 0.1f + 0.5f))) < 1e-6f);
	assert_true(fabsf(logit_of(c, n, 1) - (-2.0f * 2.0f - (2 * 0.1f + 0.5f))) < 1e-6f);
	assert_true(logit_of(c, n, 2) == 1.0f);
	assert_true(fabsf(logit_of(c, n, 3) - (0.5f / 2.0f - (0.1f + 0.5f))) < 1e-6f);
	assert_true(fabsf(logit_of(c, n, 4) - (0.0f - (0.1f + 0.5f))) < 1e-6f);
	/* A penalty below 1 boosts: negative logits shrink toward 0. */
	p.repeat_penalty = 0.5f;
	p.frequency_penalty = 0.0f;
	p.presence_penalty = 0.0f;
	n = dist(&p, logits, 5, hist, 7, c);
	assert_true(logit_of(c, n, 0) == 4.0f);
	assert_true(logit_of(c, n, 1) == -1.0f);
}

static void test_penalties_window_is_last_n(void **state)
{
	(void)state;
	const float logits[4] = {2.0f, -2.0f, 1.0f, 0.5f};
	const int32_t hist[6] = {0, 1, 1, 3, 0, 0};
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);
	p.repeat_penalty = 2.0f;
	p.frequency_penalty = 0.1f;
	p.presence_penalty = 0.5f;
	p.penalty_last_n = 2; /* the window is {0, 0} */
	size_t n = dist(&p, logits, 4, hist, 6, c);
	assert_true(fabsf(logit_of(c, n, 0) - (1.0f - (2 * 0.1f + 0.5f))) < 1e-6f);
	assert_true(logit_of(c, n, 1) == -2.0f);
	assert_true(logit_of(c, n, 3) == 0.5f);
	/* Window larger than the history: all of it. */
	p.penalty_last_n = 100;
	n = dist(&p, logits, 4, hist, 6, c);
	assert_true(fabsf(logit_of(c, n, 3) - (0.25f - 0.6f)) < 1e-6f);
}

static void test_penalties_off_and_bad_history_ids(void **state)
{
	(void)state;
	const float logits[4] = {2.0f, -2.0f, 1.0f, 0.5f};
	const int32_t hist[4] = {0, -5, 99, 1};
	struct sampler_cand c[4];
	struct sampler_params p;
	params_off(&p);
	p.repeat_penalty = 2.0f;
	p.penalty_last_n = 0; /* off */
	size_t n = dist(&p, logits, 4, hist, 4, c);
	assert_true(logit_of(c, n, 0) == 2.0f);
	/* On, with ids outside the vocabulary ignored. */
	p.penalty_last_n = -1;
	n = dist(&p, logits, 4, hist, 4, c);
	assert_true(logit_of(c, n, 0) == 1.0f);
	assert_true(logit_of(c, n, 1) == -4.0f);
	assert_true(logit_of(c, n, 2) == 1.0f);
	/* A second call sees fresh counts (no state leaks between calls). */
	sampler_t *s = make(&p, 4);
	const struct sampler_cand *d;
	for (int k = 0; k < 3; k++) {
		n = sampler_distribution(s, logits, hist, 4, &d);
		assert_true(logit_of(d, n, 0) == 1.0f);
	}
	sampler_destroy(&s);
}

static void test_bias_adds_and_neg_inf_bans(void **state)
{
	(void)state;
	const float logits[3] = {0.0f, 0.0f, 5.0f};
	struct sampler_bias b[3] = {{1, (float)log(3.0)}, {2, -INFINITY}, {0, 0.0f}};
	struct sampler_cand c[3];
	struct sampler_params p;
	params_off(&p);
	p.bias = b;
	p.n_bias = 3;
	/* Token 2 banned; token 1 three times as likely as token 0. */
	int32_t ids[] = {1, 0};
	double w[] = {3, 1};
	assert_dist(c, dist(&p, logits, 3, NULL, 0, c), ids, w, 2);
	sampler_t *s = make(&p, 3);
	b[1].bias = 0.0f; /* the sampler keeps its own copy */
	for (uint64_t pos = 0; pos < 2000; pos++)
		assert_int_not_equal(sampler_sample(s, logits, NULL, 0, pos), 2);
	sampler_destroy(&s);
}

static void test_all_banned_falls_back_to_token_0(void **state)
{
	(void)state;
	const float logits[3] = {1.0f, 2.0f, 3.0f};
	struct sampler_bias b[3] = {{0, -INFINITY}, {1, -INFINITY}, {2, -INFINITY}};
	struct sampler_params p;
	params_off(&p);
	p.bias = b;
	p.n_bias = 3;
	sampler_t *s = make(&p, 3);
	assert_int_equal(sampler_sample(s, logits, NULL, 0, 0), 0);
	const struct sampler_cand *c;
	assert_int_equal(sampler_distribution(s, logits, NULL, 0, &c), 1);
	assert_true(c[0].p == 1.0f);
	sampler_destroy(&s);
}

static void test_uniform_is_pure_and_in_range(void **state)
{
	(void)state;
	double first[64];
	for (uint64_t pos = 0; pos < 64; pos++)
		first[pos] = sampler_uniform(42, pos, 0);
	for (uint64_t pos = 64; pos-- > 0;) {
		assert_true(sampler_uniform(42, pos, 0) == first[pos]);
		assert_true(first[pos] >= 0.0 && first[pos] < 1.0);
	}
	assert_true(sampler_uniform(42, 3, 0) != sampler_uniform(42, 3, 1));
	assert_true(sampler_uniform(42, 3, 0) != sampler_uniform(43, 3, 0));
	assert_true(sampler_uniform(0, 0, 0) != sampler_uniform(0, 1, 0));
	double sum = 0.0;
	for (uint64_t pos = 0; pos < 10000; pos++)
		sum += sampler_uniform(7, pos, 2);
	assert_true(fabs(sum / 10000 - 0.5) < 0.02);
}

static void test_sample_depends_only_on_seed_and_pos(void **state)
{
	(void)state;
	float logits[16];
	for (int i = 0; i < 16; i++)
		logits[i] = (float)(i % 5) * 0.3f;
	struct sampler_params p;
	params_off(&p);
	p.seed = 1234;
	sampler_t *s = make(&p, 16);
	int32_t fwd[200];
	for (uint64_t pos = 0; pos < 200; pos++)
		fwd[pos] = sampler_sample(s, logits, NULL, 0, pos);
	sampler_t *s2 = make(&p, 16);
	const struct sampler_cand *c;
	for (uint64_t pos = 200; pos-- > 0;) {
		(void)sampler_distribution(s2, logits, NULL, 0, &c);
		assert_int_equal(sampler_sample(s2, logits, NULL, 0, pos), fwd[pos]);
	}
	sampler_destroy(&s2);

	p.seed = 1235;
	s2 = make(&p, 16);
	int differ = 0;
	for (uint64_t pos = 0; pos < 200; pos++)
		differ += sampler_sample(s2, logits, NULL, 0, pos) != fwd[pos];
	assert_true(differ > 50);
	sampler_destroy(&s2);
	sampler_destroy(&s);
}

static void test_frequencies_match_softmax(void **state)
{
	(void)state;
	const float logits[5] = {0.0f, 0.5f, 1.0f, 1.5f, -1.0f};
	struct sampler_params p;
	params_off(&p);
	p.seed = 99;
	sampler_t *s = make(&p, 5);
	enum { N = 20000 };
	int count[5] = {0};
	for (uint64_t pos = 0; pos < N; pos++) {
		int32_t t = sampler_sample(s, logits, NULL, 0, pos);
		assert_true(t >= 0 && t < 5);
		count[t]++;
	}
	sampler_destroy(&s);
	double z = 0.0, chi2 = 0.0;
	for (int i = 0; i < 5; i++)
		z += exp(logits[i]);
	for (int i = 0; i < 5; i++) {
		double e = N * exp(logits[i]) / z;
		chi2 += (count[i] - e) * (count[i] - e) / e;
	}
	/* 4 degrees of freedom: P(chi2 > 40) is about 4e-8. */
	assert_true(chi2 < 40.0);
}

/* The token the documented draw picks from a distribution at u. */
static int32_t pick(const struct sampler_cand *c, size_t n, double u)
{
	double cum = 0.0;
	for (size_t i = 0; i < n; i++) {
		cum += c[i].p;
		if (u < cum)
			return c[i].id;
	}
	return c[n - 1].id;
}

static void check_distribution_matches_sample(const struct sampler_params *p, uint32_t n_vocab,
                                              const float *logits, const int32_t *hist,
                                              size_t n_hist)
{
	sampler_t *s = make(p, n_vocab);
	struct sampler_cand *copy = malloc(n_vocab * sizeof *copy);
	assert_non_null(copy);
	const struct sampler_cand *c;
	size_t n = sampler_distribution(s, logits, hist, n_hist, &c);
	memcpy(copy, c, n * sizeof *copy);
	double sum = 0.0;
	for (size_t i = 0; i < n; i++) {
		sum += copy[i].p;
		if (i > 0)
			assert_true(copy[i - 1].p >= copy[i].p);
	}
	assert_true(fabs(sum - 1.0) < 1e-4);
	for (uint64_t pos = 0; pos < 300; pos++) {
		double u = sampler_uniform(p->seed, pos, 0);
		assert_int_equal(sampler_sample(s, logits, hist, n_hist, pos), pick(copy, n, u));
	}
	free(copy);
	sampler_destroy(&s);
}

/* Deterministic pseudo-random logits in [lo, lo + span). */
static void fill_logits(float *logits, uint32_t n, uint64_t seed, float lo, float span)
{
	for (uint32_t i = 0; i < n; i++)
		logits[i] = lo + span * (float)sampler_uniform(seed, i, 9);
}

static void test_distribution_sums_to_one_and_matches_sample(void **state)
{
	(void)state;
	enum { V = 5000 };
	float *logits = malloc(V * sizeof *logits);
	assert_non_null(logits);
	fill_logits(logits, V, 5, -3.0f, 6.0f);
	const int32_t hist[5] = {3, 17, 3, 4000, 9};
	struct sampler_params p;

	sampler_params_default(&p); /* top-k 40, top-p, min-p */
	p.seed = 11;
	check_distribution_matches_sample(&p, V, logits, hist, 5);

	params_off(&p); /* no filters: the draw ranks a growing prefix */
	p.seed = 12;
	check_distribution_matches_sample(&p, V, logits, hist, 5);

	params_off(&p); /* typical, then a wide top-p over many candidates */
	p.typical_p = 0.95f;
	p.top_p = 0.9f;
	p.temperature = 0.7f;
	p.repeat_penalty = 1.3f;
	p.penalty_last_n = 64;
	check_distribution_matches_sample(&p, V, logits, hist, 5);

	params_off(&p);
	p.temperature = 0.0f;
	check_distribution_matches_sample(&p, V, logits, hist, 5);
	free(logits);
}

static int cmp_rank(const void *pa, const void *pb)
{
	const struct sampler_cand *a = pa, *b = pb;
	if (a->logit != b->logit)
		return a->logit > b->logit ? -1 : 1;
	return a->id < b->id ? -1 : (a->id > b->id);
}

static void test_large_vocab_filters_match_full_sort(void **state)
{
	(void)state;
	enum { V = 50000 };
	float *logits = malloc(V * sizeof *logits);
	struct sampler_cand *ref = malloc(V * sizeof *ref);
	struct sampler_cand *c = malloc(V * sizeof *c);
	assert_non_null(logits);
	assert_non_null(ref);
	assert_non_null(c);
	/* Coarse values so that ties are common. */
	fill_logits(logits, V, 77, 0.0f, 1.0f);
	for (uint32_t i = 0; i < V; i++)
		logits[i] = floorf(logits[i] * 1000.0f) / 100.0f;
	for (uint32_t i = 0; i < V; i++)
		ref[i] = (struct sampler_cand){(int32_t)i, logits[i], 0.0f};
	qsort(ref, V, sizeof *ref, cmp_rank);

	struct sampler_params p;
	params_off(&p);
	p.top_k = 40;
	size_t n = dist(&p, logits, V, NULL, 0, c);
	assert_int_equal(n, 40);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(c[i].id, ref[i].id);

	/* Top-p over a flat distribution needs thousands of candidates. */
	params_off(&p);
	p.top_p = 0.3f;
	double z = 0.0;
	for (uint32_t i = 0; i < V; i++)
		z += exp((double)ref[i].logit - ref[0].logit);
	size_t want = 0;
	double cum = 0.0;
	while (want < V && cum < 0.3) {
		cum += exp((double)ref[want].logit - ref[0].logit) / z;
		want++;
	}
	assert_true(want > 1024);
	n = dist(&p, logits, V, NULL, 0, c);
	assert_true(n == want || n == want + 1 || n + 1 == want); /* float vs double sum */
	for (size_t i = 0; i < n && i < want; i++)
		assert_int_equal(c[i].id, ref[i].id);
	free(logits);
	free(ref);
	free(c);
}

struct ref_key {
	double score;
	int32_t id;
	double p;
};

static int cmp_ref_key(const void *pa, const void *pb)
{
	const struct ref_key *a = pa, *b = pb;
	if (a->score != b->score)
		return a->score < b->score ? -1 : 1;
	return a->id < b->id ? -1 : (a->id > b->id);
}

static int cmp_id(const void *pa, const void *pb)
{
	const struct sampler_cand *a = pa, *b = pb;
	return a->id < b->id ? -1 : (a->id > b->id);
}

static void test_typical_matches_reference_on_many_tokens(void **state)
{
	(void)state;
	/* Distinct logits, so ranking by position is ranking by id here. */
	enum { V = 300 };
	float logits[V];
	struct ref_key ref[V];
	struct sampler_cand c[V];
	fill_logits(logits, V, 21, -4.0f, 8.0f);
	double z = 0.0, h = 0.0;
	for (int i = 0; i < V; i++)
		z += exp((double)logits[i]);
	for (int i = 0; i < V; i++) {
		ref[i].p = exp((double)logits[i]) / z;
		ref[i].id = i;
		h -= ref[i].p * log(ref[i].p);
	}
	for (int i = 0; i < V; i++)
		ref[i].score = fabs(-log(ref[i].p) - h);
	qsort(ref, V, sizeof *ref, cmp_ref_key);
	size_t want = 0;
	double cum = 0.0;
	while (want < V && !(cum > 0.6)) /* strictly above typical_p */
		cum += ref[want++].p;
	assert_true(want > 10 && want < V - 10);

	struct sampler_params p;
	params_off(&p);
	p.typical_p = 0.6f;
	size_t n = dist(&p, logits, V, NULL, 0, c);
	assert_int_equal(n, want);
	/* The same set of ids. */
	qsort(c, n, sizeof *c, cmp_id);
	bool in[V] = {false};
	for (size_t i = 0; i < want; i++)
		in[ref[i].id] = true;
	for (size_t i = 0; i < n; i++) {
		assert_true(in[c[i].id]);
		assert_true(i == 0 || c[i - 1].id < c[i].id);
	}
}

static void expect_invalid(const struct sampler_params *p, uint32_t n_vocab, const char *field)
{
	struct itt_err err = {0};
	assert_int_equal(sampler_params_validate(p, n_vocab, &err), ITT_E_INVALID);
	assert_int_equal(err.code, ITT_E_INVALID);
	if (!strstr(err.msg, field))
		fail_msg("message '%s' does not name '%s'", err.msg, field);
}

static void test_validate_rejects_each_bad_field(void **state)
{
	(void)state;
	struct sampler_params p;
	struct itt_err err = {0};
	sampler_params_default(&p);
	assert_int_equal(sampler_params_validate(&p, 10, &err), ITT_OK);
	params_off(&p);
	assert_int_equal(sampler_params_validate(&p, 10, &err), ITT_OK);

	sampler_params_default(&p);
	p.temperature = NAN;
	expect_invalid(&p, 10, "temperature");
	sampler_params_default(&p);
	p.temperature = INFINITY;
	expect_invalid(&p, 10, "temperature");

	sampler_params_default(&p);
	p.top_p = 2.0f;
	expect_invalid(&p, 10, "top_p must be in (0, 1], got 2");
	p.top_p = 0.0f;
	expect_invalid(&p, 10, "top_p");
	p.top_p = NAN;
	expect_invalid(&p, 10, "top_p");

	sampler_params_default(&p);
	p.min_p = -0.1f;
	expect_invalid(&p, 10, "min_p");
	p.min_p = 1.5f;
	expect_invalid(&p, 10, "min_p");

	sampler_params_default(&p);
	p.typical_p = 0.0f;
	expect_invalid(&p, 10, "typical_p");
	p.typical_p = 1.01f;
	expect_invalid(&p, 10, "typical_p");

	sampler_params_default(&p);
	p.repeat_penalty = 0.0f;
	expect_invalid(&p, 10, "repeat_penalty");
	p.repeat_penalty = INFINITY;
	expect_invalid(&p, 10, "repeat_penalty");

	sampler_params_default(&p);
	p.presence_penalty = NAN;
	expect_invalid(&p, 10, "presence_penalty");
	sampler_params_default(&p);
	p.frequency_penalty = -INFINITY;
	expect_invalid(&p, 10, "frequency_penalty");

	sampler_params_default(&p);
	p.penalty_last_n = -2;
	expect_invalid(&p, 10, "penalty_last_n must be >= -1, got -2");

	struct sampler_bias b[2] = {{3, 1.0f}, {10, 1.0f}};
	sampler_params_default(&p);
	p.bias = b;
	p.n_bias = 2;
	expect_invalid(&p, 10, "bias[1].token");
	b[1].token = -1;
	expect_invalid(&p, 10, "bias[1].token");
	b[1].token = 9;
	assert_int_equal(sampler_params_validate(&p, 10, &err), ITT_OK);
	b[1].bias = INFINITY;
	expect_invalid(&p, 10, "bias[1].bias");
	b[1].bias = NAN;
	expect_invalid(&p, 10, "bias[1].bias");
	b[1].bias = -INFINITY;
	assert_int_equal(sampler_params_validate(&p, 10, &err), ITT_OK);
	p.bias = NULL;
	expect_invalid(&p, 10, "bias");

	sampler_params_default(&p);
	expect_invalid(&p, 0, "n_vocab");
	/* Any top_k is accepted; <= 0 is off. */
	p.top_k = -7;
	assert_int_equal(sampler_params_validate(&p, 10, &err), ITT_OK);
}

static void test_new_rejects_bad_params(void **state)
{
	(void)state;
	struct sampler_params p;
	sampler_params_default(&p);
	p.top_p = 0.0f;
	sampler_t *s = (sampler_t *)&p; /* must be overwritten */
	struct itt_err err = {0};
	assert_int_equal(sampler_new(&p, 10, &s, &err), ITT_E_INVALID);
	assert_null(s);
	assert_non_null(strstr(err.msg, "top_p"));
	sampler_destroy(&s);
	sampler_destroy(NULL);
}

static void test_find_stop_full_match(void **state)
{
	(void)state;
	const char *stops[] = {"</s>", "\n\n"};
	const char *t = "hello</s> world";
	size_t safe = 99;
	assert_int_equal(sampler_find_stop(t, strlen(t), stops, 2, &safe), 5);
	assert_int_equal(safe, 5);
	/* The earliest match of any stop wins. */
	const char *t2 = "a\n\nb</s>";
	assert_int_equal(sampler_find_stop(t2, strlen(t2), stops, 2, &safe), 1);
	assert_int_equal(safe, 1);
	/* A match at the very end and at the very start. */
	assert_int_equal(sampler_find_stop("ab</s>", 6, stops, 2, &safe), 2);
	assert_int_equal(sampler_find_stop("</s>", 4, stops, 2, &safe), 0);
	assert_int_equal(safe, 0);
}

static void test_find_stop_holds_back_partial_suffix(void **state)
{
	(void)state;
	const char *stops[] = {"</s>", "STOP"};
	size_t safe = 99;
	assert_int_equal(sampler_find_stop("hello </", 8, stops, 2, &safe), 8);
	assert_int_equal(safe, 6);
	assert_int_equal(sampler_find_stop("hello <", 7, stops, 2, &safe), 7);
	assert_int_equal(safe, 6);
	/* The longest held-back suffix over all stops. */
	assert_int_equal(sampler_find_stop("x STO", 5, stops, 2, &safe), 5);
	assert_int_equal(safe, 2);
	/* Not a prefix of any stop: all safe. */
	assert_int_equal(sampler_find_stop("hello />", 8, stops, 2, &safe), 8);
	assert_int_equal(safe, 8);
	/* Text shorter than the stop, itself a prefix. */
	assert_int_equal(sampler_find_stop("</s", 3, stops, 2, &safe), 3);
	assert_int_equal(safe, 0);
	/* A self-overlapping stop: "aab" ending "...aa" holds back 2. */
	const char *stops2[] = {"aab"};
	assert_int_equal(sampler_find_stop("xaaa", 4, stops2, 1, &safe), 4);
	assert_int_equal(safe, 2);
	/* Only len bytes are looked at. */
	assert_int_equal(sampler_find_stop("ab</s>", 3, stops, 2, &safe), 3);
	assert_int_equal(safe, 2);
}

static void test_find_stop_empty_list_and_empty_strings(void **state)
{
	(void)state;
	size_t safe = 99;
	assert_int_equal(sampler_find_stop("abc", 3, NULL, 0, &safe), 3);
	assert_int_equal(safe, 3);
	const char *stops[] = {"", NULL, "c"};
	assert_int_equal(sampler_find_stop("abc", 3, stops, 3, &safe), 2);
	assert_int_equal(safe, 2);
	assert_int_equal(sampler_find_stop("", 0, stops, 3, &safe), 0);
	assert_int_equal(safe, 0);
	assert_int_equal(sampler_find_stop("abc", 3, stops, 3, NULL), 2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_greedy_picks_argmax_lowest_id_on_ties),
	    cmocka_unit_test(test_greedy_sees_bias_and_penalties),
	    cmocka_unit_test(test_top_k_keeps_k_highest_ties_by_lower_id),
	    cmocka_unit_test(test_top_p_keeps_smallest_prefix_reaching_p),
	    cmocka_unit_test(test_min_p_keeps_relative_to_max),
	    cmocka_unit_test(test_typical_keeps_tokens_near_entropy),
	    cmocka_unit_test(test_typical_matches_reference_on_many_tokens),
	    cmocka_unit_test(test_temperature_scales_logits),
	    cmocka_unit_test(test_chain_runs_top_k_before_top_p),
	    cmocka_unit_test(test_chain_runs_min_p_before_temperature),
	    cmocka_unit_test(test_chain_runs_typical_before_top_p),
	    cmocka_unit_test(test_penalties_repeat_frequency_presence),
	    cmocka_unit_test(test_penalties_window_is_last_n),
	    cmocka_unit_test(test_penalties_off_and_bad_history_ids),
	    cmocka_unit_test(test_bias_adds_and_neg_inf_bans),
	    cmocka_unit_test(test_all_banned_falls_back_to_token_0),
	    cmocka_unit_test(test_uniform_is_pure_and_in_range),
	    cmocka_unit_test(test_sample_depends_only_on_seed_and_pos),
	    cmocka_unit_test(test_frequencies_match_softmax),
	    cmocka_unit_test(test_distribution_sums_to_one_and_matches_sample),
	    cmocka_unit_test(test_large_vocab_filters_match_full_sort),
	    cmocka_unit_test(test_validate_rejects_each_bad_field),
	    cmocka_unit_test(test_new_rejects_bad_params),
	    cmocka_unit_test(test_find_stop_full_match),
	    cmocka_unit_test(test_find_stop_holds_back_partial_suffix),
	    cmocka_unit_test(test_find_stop_empty_list_and_empty_strings),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
