/* test-speculative: prompt-lookup drafts, the coupled verification (every
 * emitted token is the one plain sampling draws at that position, greedy and
 * sampled), the general acceptance rule's distribution (statistically), and
 * the adaptive draft length. */
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
#include "speculative.h"
#include "testutil.h"

static void test_ngram(void **state)
{
	(void)state;
	int32_t out[SPEC_MAX_DRAFT];
	const int32_t h1[] = {1, 2, 3, 4, 5, 1, 2};
	/* suffix [1, 2] occurred at 0: propose what followed, up to the end */
	assert_int_equal(spec_ngram_draft(h1, 7, 1, 3, 8, out), 5);
	assert_int_equal(out[0], 3);
	assert_int_equal(out[1], 4);
	assert_int_equal(out[4], 2);
	assert_int_equal(spec_ngram_draft(h1, 7, 1, 3, 2, out), 2);
	const int32_t h2[] = {1, 2, 3, 4, 5};
	assert_int_equal(spec_ngram_draft(h2, 5, 1, 3, 8, out), 0);
	/* the longest suffix wins over a more recent shorter one */
	const int32_t h3[] = {7, 8, 9, 6, 8, 5, 7, 8};
	assert_int_equal(spec_ngram_draft(h3, 8, 1, 2, 1, out), 1);
	assert_int_equal(out[0], 9); /* [7, 8] at 0, not [8] at 4 */
	/* a most recent occurrence is preferred */
	const int32_t h4[] = {4, 1, 4, 2, 4};
	assert_int_equal(spec_ngram_draft(h4, 5, 1, 1, 1, out), 1);
	assert_int_equal(out[0], 2);
	assert_int_equal(spec_ngram_draft(h4, 1, 1, 4, 4, out), 0);
	assert_int_equal(spec_ngram_draft(h4, 0, 1, 4, 4, out), 0);
}

static sampler_t *make(float temperature, uint64_t seed, uint32_t vocab)
{
	struct sampler_params p;
	sampler_params_default(&p);
	p.temperature = temperature;
	p.repeat_penalty = 1.1f; /* the history matters: drafts must be in it */
	p.seed = seed;
	sampler_t *s = NULL;
	struct itt_err err = {0};
	if (sampler_new(&p, vocab, &s, &err) < 0)
		fail_msg("sampler_new: %s", err.msg);
	return s;
}

/* Every emitted token equals what sampler_sample draws at its position
 * given the same history; drafts that match are accepted. */
static void check_verify(float temperature)
{
	enum { V = 50, K = 6, TRIALS = 300 };
	float *logits = malloc(sizeof(float) * (K + 1) * V);
	int32_t hist[64], ref_hist[64], draft[K], out[K + 1];
	uint64_t rng = 12345;
	uint32_t accepted_total = 0;
	for (int t = 0; t < TRIALS; t++) {
		sampler_t *a = make(temperature, (uint64_t)t, V), *b = make(temperature, (uint64_t)t, V);
		for (size_t i = 0; i < (size_t)(K + 1) * V; i++) {
			rng = rng * 6364136223846793005ull + 1442695040888963407ull;
			logits[i] = (float)((rng >> 40) % 1000) / 250.0f;
		}
		uint32_t n = 10;
		for (uint32_t i = 0; i < n; i++)
			hist[i] = ref_hist[i] = (int32_t)((i * 7) % V);
		/* drafts: the plain draws for the first t % (K+1) rows, then junk */
		uint32_t good = (uint32_t)t % (K + 1);
		for (uint32_t i = 0; i < K; i++) {
			int32_t want = sampler_sample(b, logits + (size_t)i * V, ref_hist, n + i, n + i);
			ref_hist[n + i] = want;
			draft[i] = i < good ? want : (want + 1) % V;
		}
		uint32_t e = spec_verify(a, logits, V, draft, K, hist, n, out);
		assert_true(e >= 1 && e <= K + 1);
		/* greedy/coupled: accepted exactly the matching prefix */
		assert_int_equal(e, good + 1);
		accepted_total += e - 1;
		for (uint32_t i = 0; i < e; i++) {
			/* the plain draw at position n+i given the emitted history */
			int32_t want = sampler_sample(b, logits + (size_t)i * V, hist, n + i, n + i);
			assert_int_equal(out[i], want);
			assert_int_equal(hist[n + i], out[i]);
		}
		sampler_destroy(&a);
		sampler_destroy(&b);
	}
	assert_true(accepted_total > 0);
	free(logits);
}

static void test_verify_greedy(void **state)
{
	(void)state;
	check_verify(0.0f);
}

static void test_verify_sampled(void **state)
{
	(void)state;
	check_verify(0.8f);
}

/* The general rule: with d ~ q, the output is distributed as p. */
static void test_accept_general(void **state)
{
	(void)state;
	const float p[4] = {0.1f, 0.2f, 0.3f, 0.4f};
	const float q[4] = {0.4f, 0.3f, 0.2f, 0.1f};
	enum { N = 400000 };
	uint32_t count[4] = {0};
	uint32_t acc = 0;
	for (uint32_t i = 0; i < N; i++) {
		double u0 = sampler_uniform(7, i, 0), u1 = sampler_uniform(7, i, 1),
		       u2 = sampler_uniform(7, i, 2);
		int32_t d = u0 < 0.4 ? 0 : u0 < 0.7 ? 1 : u0 < 0.9 ? 2 : 3;
		bool ok;
		int32_t tok = spec_accept_general(p, q, 4, d, u1, u2, &ok);
		acc += ok;
		count[tok]++;
	}
	for (int k = 0; k < 4; k++)
		assert_true(fabs((double)count[k] / N - p[k]) < 0.005);
	/* acceptance probability is sum min(p, q) = 0.1+0.2+0.2+0.1 = 0.6 */
	assert_true(fabs((double)acc / N - 0.6) < 0.005);
	/* p == q: always accepted */
	bool ok;
	assert_int_equal(spec_accept_general(p, p, 4, 2, 0.99, 0.5, &ok), 2);
	assert_true(ok);
}

static void test_ctl(void **state)
{
	(void)state;
	struct spec_ctl c;
	spec_ctl_init(&c, 8);
	assert_int_equal(c.k, 4);
	for (int i = 0; i < 10; i++)
		spec_ctl_update(&c, c.k, c.k);
	assert_int_equal(c.k, 8);
	/* all rejected for a few steps: a pause, then drafting resumes at 1 */
	for (int i = 0; i < 4; i++)
		spec_ctl_update(&c, c.k, 0);
	assert_int_equal(c.k, 0);
	assert_true(c.pause > 0);
	while (c.pause)
		spec_ctl_update(&c, 0, 0);
	assert_int_equal(c.k, 1);
	spec_ctl_init(&c, 2);
	assert_int_equal(c.k, 2);
	spec_ctl_init(&c, 100);
	assert_int_equal(c.k_max, SPEC_MAX_DRAFT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ngram),         cmocka_unit_test(test_verify_greedy),
	    cmocka_unit_test(test_verify_sampled), cmocka_unit_test(test_accept_general),
	    cmocka_unit_test(test_ctl),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
