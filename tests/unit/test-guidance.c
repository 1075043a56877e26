/* test-guidance: head lists, head-set files, the guidance combination and
 * the technique parameter checks (worker/engine/guidance.c). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "guidance.h"

enum { NL = 5, NH = 8 };

static void head_list_parses_into_a_mask(void **state)
{
	uint8_t mask[NL * NH];
	uint32_t n = 99;
	struct itt_err err = {0};
	assert_int_equal(guidance_parse_heads("0:0,4:7, 2:3 ", NL, NH, mask, &n, &err), 0);
	assert_int_equal(n, 3);
	assert_int_equal(mask[0], 1);
	assert_int_equal(mask[4 * NH + 7], 1);
	assert_int_equal(mask[2 * NH + 3], 1);
	uint32_t sum = 0;
	for (int i = 0; i < NL * NH; i++)
		sum += mask[i];
	assert_int_equal(sum, 3);
	char buf[64];
	assert_int_equal(guidance_format_heads(mask, NL, NH, buf, sizeof buf), strlen("0:0,2:3,4:7"));
	assert_string_equal(buf, "0:0,2:3,4:7");
	/* a short buffer is truncated but the needed length is returned */
	assert_int_equal(guidance_format_heads(mask, NL, NH, buf, 4), 11);
	assert_string_equal(buf, "0:0");
}

static void bad_head_lists_are_refused_with_reasons(void **state)
{
	uint8_t mask[NL * NH];
	uint32_t n;
	struct itt_err err = {0};
	static const struct {
		const char *spec, *reason;
	} bad[] = {
	    {"", "empty"},
	    {"  ", "empty"},
	    {"5:0", "layer 5 out of range"},
	    {"0:8", "unknown head 8"},
	    {"1:2,3:4,1:2", "listed twice"},
	    {"1-2", "expected LAYER:HEAD"},
	    {"1:", "expected LAYER:HEAD"},
	    {":1", "expected LAYER:HEAD"},
	    {"1:2,", "expected LAYER:HEAD"},
	    {"1:2,,3:4", "expected LAYER:HEAD"},
	    {"1:2x", "expected LAYER:HEAD"},
	    {"-1:2", "expected LAYER:HEAD"},
	    {"99999999999:1", "expected LAYER:HEAD"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		memset(mask, 7, sizeof mask);
		assert_int_equal(guidance_parse_heads(bad[i].spec, NL, NH, mask, &n, &err),
		                 ITT_E_INVALID);
		if (!strstr(err.msg, bad[i].reason))
			fail_msg("\"%s\": message \"%s\" lacks \"%s\"", bad[i].spec, err.msg,
			         bad[i].reason);
		assert_int_equal(n, 0);
		for (int j = 0; j < NL * NH; j++)
			assert_int_equal(mask[j], 0);
	}
	assert_int_equal(guidance_parse_heads(NULL, NL, NH, mask, &n, &err), ITT_E_INVALID);
}

static void head_set_text_round_trips(void **state)
{
	uint8_t mask[NL * NH], back[(NL + 1) * NH];
	uint32_t n;
	char name[GUIDANCE_MAX_NAME], path[] = "/tmp/itt-test-guidance-XXXXXX";
	struct itt_err err = {0};
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(guidance_parse_heads("1:1,3:0,4:5", NL, NH, mask, &n, &err), 0);
	assert_int_equal(guidance_save_head_set(path, "stories 260K", NL, NH, mask, &err), 0);
	assert_int_equal(guidance_load_head_set(path, NL, NH, back, &n, name, &err), 0);
	assert_int_equal(n, 3);
	assert_memory_equal(mask, back, sizeof mask);
	assert_string_equal(name, "stories_260K");
	/* (back has room for one more layer: the mask is cleared first) */
	/* the shape in the header must match */
	assert_int_equal(guidance_load_head_set(path, NL + 1, NH, back, &n, name, &err),
	                 ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "5 layers x 8 heads"));
	assert_non_null(strstr(err.msg, path));
	unlink(path);
	assert_int_equal(guidance_load_head_set(path, NL, NH, back, &n, name, &err), ITT_E_IO);
	memset(mask, 0, sizeof mask);
	assert_int_equal(guidance_save_head_set(path, "x", NL, NH, mask, &err), ITT_E_INVALID);
}

static void head_set_text_edge_cases(void **state)
{
	uint8_t mask[NL * NH];
	uint32_t n;
	char name[GUIDANCE_MAX_NAME];
	struct itt_err err = {0};
	/* comments, blank lines, CRLF, trailing comments; no header is fine */
	const char *ok = "# chosen by hand\r\n\r\n  2:3  # strongest\r\n4:0\n#1:1\n";
	assert_int_equal(guidance_parse_head_set(ok, strlen(ok), NL, NH, mask, &n, name, &err), 0);
	assert_int_equal(n, 2);
	assert_int_equal(mask[2 * NH + 3], 1);
	assert_int_equal(mask[4 * NH + 0], 1);
	assert_int_equal(mask[1 * NH + 1], 0);
	assert_string_equal(name, "");
	const char *hdr = "# itt-head-set model=m1 layers=5 heads=8\n0:1\n";
	assert_int_equal(guidance_parse_head_set(hdr, strlen(hdr), NL, NH, mask, &n, name, &err),
	                 0);
	assert_string_equal(name, "m1");
	static const struct {
		const char *text, *reason;
	} bad[] = {
	    {"", "no heads"},
	    {"# only a comment\n", "no heads"},
	    {"1:1\n1:1\n", "line 2: head 1:1 listed twice"},
	    {"1:1\n\n9:0\n", "line 3: head 9:0: layer 9 out of range"},
	    {"1:1 2:2\n", "line 1: \"1:1 2:2\": expected"},
	    {"# itt-head-set model=m layers=6 heads=8\n1:1\n", "6 layers x 8 heads"},
	    {"# itt-head-set model=m\n1:1\n", "lacks layers=N heads=H"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int rc = guidance_parse_head_set(bad[i].text, strlen(bad[i].text), NL, NH, mask, &n,
		                                 name, &err);
		assert_int_equal(rc, ITT_E_INVALID);
		if (!strstr(err.msg, bad[i].reason))
			fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, err.msg, bad[i].reason);
		assert_int_equal(n, 0);
	}
}

static void combine_is_l_plus_s_difference_with_the_cut(void **state)
{
	/* p under l: softmax of {0, -1, -2, -3, ln 0.1 + eps, ln 0.1 - eps} */
	float l[6] = {0.0f, -1.0f, -2.0f, -3.0f, logf(0.1f) + 1e-4f, logf(0.1f) - 1e-4f};
	float lp[6] = {1.0f, -1.0f, 0.0f, 5.0f, 0.0f, 0.0f};
	float out[6];
	guidance_combine(l, lp, 6, 2.0f, GUIDANCE_DEFAULT_CUT, out);
	assert_true(out[0] == 0.0f + 2.0f * (0.0f - 1.0f));
	assert_true(out[1] == -1.0f);
	assert_true(out[2] == -2.0f + 2.0f * (-2.0f - 0.0f));
	assert_true(isinf(out[3]) && out[3] < 0); /* p = e^-3 < 0.1 p_max */
	assert_true(out[4] == l[4] + 2.0f * l[4]); /* just above the cut */
	assert_true(isinf(out[5]) && out[5] < 0);  /* just below */
	/* the arg-max under l always survives the cut */
	/* s = 0: l itself, no cut, bit for bit */
	guidance_combine(l, lp, 6, 0.0f, GUIDANCE_DEFAULT_CUT, out);
	assert_memory_equal(out, l, sizeof l);
	/* cut 0: no cut */
	guidance_combine(l, lp, 6, 1.0f, 0.0f, out);
	for (int i = 0; i < 6; i++)
		assert_true(out[i] == l[i] + (l[i] - lp[i]));
	/* in place */
	float m[6];
	memcpy(m, l, sizeof l);
	guidance_combine(m, lp, 6, 2.0f, GUIDANCE_DEFAULT_CUT, m);
	assert_true(m[0] == -2.0f && isinf(m[3]));
	/* a branch equal to the main logits changes nothing but the cut */
	guidance_combine(l, l, 6, 3.0f, GUIDANCE_DEFAULT_CUT, out);
	assert_true(out[0] == l[0] && out[1] == l[1] && out[2] == l[2] && isinf(out[3]));
}

static void parameter_checks_give_reasons(void **state)
{
	struct itt_err err = {0};
	assert_int_equal(guidance_check_scale(0.0f, &err), 0);
	assert_int_equal(guidance_check_scale(3.5f, &err), 0);
	assert_int_equal(guidance_check_scale(-0.1f, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "guidance scale"));
	assert_int_equal(guidance_check_scale(INFINITY, &err), ITT_E_INVALID);
	assert_int_equal(guidance_check_scale(NAN, &err), ITT_E_INVALID);
	assert_int_equal(guidance_check_blend(0.0f, &err), 0);
	assert_int_equal(guidance_check_blend(1.0f, &err), 0);
	assert_int_equal(guidance_check_blend(1.01f, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "[0, 1]"));
	assert_int_equal(guidance_check_blend(NAN, &err), ITT_E_INVALID);
	assert_int_equal(guidance_check_threshold(0.0f, &err), 0);
	assert_int_equal(guidance_check_threshold(1.0f, &err), 0);
	assert_int_equal(guidance_check_threshold(-1e-6f, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "threshold"));
	assert_int_equal(guidance_check_threshold(NAN, &err), ITT_E_INVALID);
}

static void exit_layers_parse_ascending_below_the_last(void **state)
{
	uint32_t layers[8], n;
	struct itt_err err = {0};
	assert_int_equal(guidance_parse_exit_layers("0, 1,3", NL, layers, 8, &n, &err), 0);
	assert_int_equal(n, 3);
	assert_int_equal(layers[2], 3);
	assert_int_equal(guidance_parse_exit_layers("4", NL, layers, 8, &n, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "below 4"));
	assert_int_equal(guidance_parse_exit_layers("2,1", NL, layers, 8, &n, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "ascend"));
	assert_int_equal(guidance_parse_exit_layers("1,1", NL, layers, 8, &n, &err), ITT_E_INVALID);
	assert_int_equal(guidance_parse_exit_layers("", NL, layers, 8, &n, &err), ITT_E_INVALID);
	assert_int_equal(guidance_parse_exit_layers("1,x", NL, layers, 8, &n, &err), ITT_E_INVALID);
	assert_int_equal(guidance_parse_exit_layers("0,1,2", NL, layers, 2, &n, &err),
	                 ITT_E_INVALID);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(head_list_parses_into_a_mask),
	    cmocka_unit_test(bad_head_lists_are_refused_with_reasons),
	    cmocka_unit_test(head_set_text_round_trips),
	    cmocka_unit_test(head_set_text_edge_cases),
	    cmocka_unit_test(combine_is_l_plus_s_difference_with_the_cut),
	    cmocka_unit_test(parameter_checks_give_reasons),
	    cmocka_unit_test(exit_layers_parse_ascending_below_the_last),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
