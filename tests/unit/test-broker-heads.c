/* test-broker-heads: pins down head-set expansion (broker/heads.c): a
 * request's guidance.head_set names NAME.heads in --head-sets DIR, whose
 * "L:H" lines (blank lines and '#' comments ignored) replace head_set with
 * heads; every refusal is INVALID_ARGUMENT with a reason that names the set
 * (and the line), and leaves the guidance as it was: a name that could
 * leave the folder, heads given too, no folder, no such file, a bad line,
 * an empty set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker.h"
#include "testutil.h"

static struct broker B;
static char dir[sizeof B.cfg.head_sets];

static void put(const char *name, const char *text)
{
	char path[sizeof dir + 32];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	assert_int_equal(tu_write_file(path, text, strlen(text)), 0);
}

static int setup(void **state)
{
	(void)state;
	const char *p = tu_tmp_path("head-sets");
	assert_true(strlen(p) < sizeof dir);
	memcpy(dir, p, strlen(p) + 1);
	mkdir(dir, 0700);
	memcpy(B.cfg.head_sets, dir, sizeof dir);
	put("good.heads", "# found by itt heads search\n3:1\n\n  10:7   # strong\r\n0:0\n");
	put("bad.heads", "1:2\nthree:four\n");
	put("empty.heads", "# nothing\n\n");
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char path[sizeof dir + 32];
	static const char *const names[] = {"good.heads", "bad.heads", "empty.heads"};
	for (size_t i = 0; i < 3; i++) {
		snprintf(path, sizeof path, "%s/%s", dir, names[i]);
		unlink(path);
	}
	rmdir(dir);
	return 0;
}

/* A guidance as unpacked from a request (owned by the system allocator). */
static Itt__Guidance *guidance(const char *head_set)
{
	Itt__Guidance *g = malloc(sizeof *g);
	assert_non_null(g);
	itt__guidance__init(g);
	g->head_set = head_set ? strdup(head_set) : NULL;
	return g;
}

/* Expands, expecting a refusal whose reason contains `want`. */
static void refused(Itt__Guidance *g, const char *want)
{
	struct itt_err err = {0};
	char *before = g->head_set ? strdup(g->head_set) : NULL;
	assert_int_equal(heads_expand(&B, g, &err), ITT__CODE__INVALID_ARGUMENT);
	assert_int_equal(err.code, ITT__CODE__INVALID_ARGUMENT);
	if (!strstr(err.msg, want))
		fail_msg("reason \"%s\" lacks \"%s\"", err.msg, want);
	assert_string_equal(g->head_set, before); /* unchanged */
	free(before);
	itt__guidance__free_unpacked(g, NULL);
}

static void test_a_head_set_file_becomes_the_heads(void **state)
{
	(void)state;
	struct itt_err err = {0};
	Itt__Guidance *g = guidance("good");
	assert_int_equal(heads_expand(&B, g, &err), 0);
	assert_null(g->head_set);
	assert_int_equal(g->n_heads, 3);
	assert_string_equal(g->heads[0], "3:1");
	assert_string_equal(g->heads[1], "10:7");
	assert_string_equal(g->heads[2], "0:0");
	itt__guidance__free_unpacked(g, NULL);
}

static void test_no_head_set_changes_nothing(void **state)
{
	(void)state;
	struct itt_err err = {0};
	Itt__Guidance *g = guidance(NULL);
	assert_int_equal(heads_expand(&B, g, &err), 0);
	assert_int_equal(g->n_heads, 0);
	itt__guidance__free_unpacked(g, NULL);
	g = guidance("");
	assert_int_equal(heads_expand(&B, g, &err), 0);
	assert_string_equal(g->head_set, "");
	itt__guidance__free_unpacked(g, NULL);
}

static void test_names_cannot_leave_the_folder(void **state)
{
	(void)state;
	refused(guidance("../good"), "is not a name of 1..64");
	refused(guidance(".hidden"), "is not a name of 1..64");
	refused(guidance("a/b"), "is not a name of 1..64");
	char long_name[70];
	memset(long_name, 'n', 65);
	long_name[65] = 0;
	refused(guidance(long_name), "is not a name of 1..64");
}

static void test_heads_and_head_set_are_exclusive(void **state)
{
	(void)state;
	Itt__Guidance *g = guidance("good");
	g->heads = malloc(sizeof *g->heads);
	g->heads[0] = strdup("1:1");
	g->n_heads = 1;
	refused(g, "heads and head_set are exclusive");
}

static void test_missing_folder_file_bad_line_and_empty_set_are_refused(void **state)
{
	(void)state;
	refused(guidance("nope"), "guidance.head_set nope: no such head set");
	refused(guidance("bad"), "head set bad line 2: \"three:four\" is not LAYER:HEAD");
	refused(guidance("empty"), "head set empty lists no heads");
	char keep[sizeof B.cfg.head_sets];
	memcpy(keep, B.cfg.head_sets, sizeof keep);
	B.cfg.head_sets[0] = 0;
	refused(guidance("good"), "this broker has no --head-sets folder");
	memcpy(B.cfg.head_sets, keep, sizeof keep);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_a_head_set_file_becomes_the_heads),
	    cmocka_unit_test(test_no_head_set_changes_nothing),
	    cmocka_unit_test(test_names_cannot_leave_the_folder),
	    cmocka_unit_test(test_heads_and_head_set_are_exclusive),
	    cmocka_unit_test(test_missing_folder_file_bad_line_and_empty_set_are_refused),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
