/* test-broker-config: pins down the broker's flag table (broker/config.c):
 * the defaults of PROTOCOL.md, "--name value" and "--name=value", bounds
 * and unknown flags as usage errors (2), --api-key repeatable (at most 64
 * keys of 1..128 bytes) and what front_authorized makes of them, --help
 * and --print-config (exit 0, one "name = value" line per setting, keys
 * counted but never shown). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "brokerutil.h"
#include "log.h"
#include "testutil.h"

/* broker_config_parse of "itt-broker" + args; stderr and stdout go to
 * *out (malloc'ed, may be NULL) instead of the terminal. */
static int parse(struct broker_config *c, char **out, int n, ...)
{
	static char *argv[80];
	va_list ap;
	assert_true(n < 79);
	argv[0] = "itt-broker";
	va_start(ap, n);
	for (int i = 0; i < n; i++)
		argv[1 + i] = va_arg(ap, char *);
	va_end(ap);
	argv[1 + n] = NULL;
	const char *path = tu_tmp_path("broker-config.out");
	fflush(stdout);
	fflush(stderr);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	int o1 = dup(1), o2 = dup(2);
	dup2(fd, 1);
	dup2(fd, 2);
	int rc = broker_config_parse(c, 1 + n, argv);
	fflush(stdout);
	fflush(stderr);
	dup2(o1, 1);
	dup2(o2, 2);
	close(o1);
	close(o2);
	close(fd);
	size_t size = 0;
	char *text = tu_read_file(path, &size);
	assert_non_null(text);
	unlink(path);
	char *z = realloc(text, size + 1);
	assert_non_null(z);
	z[size] = 0;
	if (out)
		*out = z;
	else
		free(z);
	return rc;
}

static void test_defaults_are_those_of_the_protocol(void **state)
{
	(void)state;
	struct broker_config c;
	assert_int_equal(parse(&c, NULL, 0), 0);
	assert_string_equal(c.front, "tcp://*:5555");
	assert_string_equal(c.back, "tcp://*:5556");
	assert_int_equal(c.heartbeat_ms, 500);
	assert_int_equal(c.liveness, 3);
	assert_int_equal(c.queue_limit, 64);
	assert_int_equal(c.client_timeout_ms, 10000);
	assert_int_equal(c.client_heartbeat_ms, 1000);
	assert_int_equal(c.max_sessions_per_worker, 0);
	assert_int_equal(c.max_replays, 16);
	assert_int_equal(c.keep_ended_ms, 60000);
	assert_int_equal(c.keep_ended, 10000);
	assert_int_equal(c.act_f16, 0);
	assert_string_equal(c.head_sets, "");
	assert_int_equal(c.n_api_keys, 0);
	assert_int_equal(c.log_level, LOG_LEVEL_INFO);
}

static void test_each_flag_sets_its_field_in_both_forms(void **state)
{
	(void)state;
	struct broker_config c;
	assert_int_equal(parse(&c, NULL, 14, "--front", "tcp://*:7000", "--back=ipc:///tmp/b",
	                       "--heartbeat-ms", "10", "--liveness=100", "--queue-limit", "0",
	                       "--keep-ended=0", "--act-f16", "1", "--head-sets", "/tmp/h",
	                       "--log-level=debug"),
	                 0);
	assert_string_equal(c.front, "tcp://*:7000");
	assert_string_equal(c.back, "ipc:///tmp/b");
	assert_int_equal(c.heartbeat_ms, 10);
	assert_int_equal(c.liveness, 100);
	assert_int_equal(c.queue_limit, 0);
	assert_int_equal(c.keep_ended, 0);
	assert_int_equal(c.act_f16, 1);
	assert_string_equal(c.head_sets, "/tmp/h");
	assert_int_equal(c.log_level, LOG_LEVEL_DEBUG);
	assert_int_equal(parse(&c, NULL, 2, "--log-level", "1"), 0);
	assert_int_equal(c.log_level, LOG_LEVEL_WARN);
}

static void test_bad_values_and_unknown_flags_are_usage_errors(void **state)
{
	(void)state;
	struct broker_config c;
	char *err;
	assert_int_equal(parse(&c, &err, 2, "--liveness", "0"), 2);
	assert_non_null(strstr(err, "--liveness 0: expected an integer in [1, 100]"));
	free(err);
	assert_int_equal(parse(&c, NULL, 1, "--act-f16=2"), 2);
	assert_int_equal(parse(&c, NULL, 2, "--heartbeat-ms", "9"), 2);
	assert_int_equal(parse(&c, NULL, 2, "--heartbeat-ms", "1e3"), 2);
	assert_int_equal(parse(&c, NULL, 2, "--keep-ended-ms", "3600001"), 2);
	assert_int_equal(parse(&c, NULL, 2, "--front", ""), 2);
	assert_int_equal(parse(&c, NULL, 2, "--log-level", "loud"), 2);
	assert_int_equal(parse(&c, NULL, 1, "--queue-limit"), 2); /* no value */
	assert_int_equal(parse(&c, &err, 2, "--frnt", "x"), 2);
	assert_non_null(strstr(err, "unknown option --frnt"));
	free(err);
	assert_int_equal(parse(&c, &err, 1, "stray"), 2);
	assert_non_null(strstr(err, "unexpected argument stray"));
	free(err);
	assert_int_equal(parse(&c, NULL, 1, "--print-config=yes"), 2);
}

static void test_api_keys_are_repeatable_and_bounded(void **state)
{
	(void)state;
	struct broker_config c;
	struct broker b;
	memset(&b, 0, sizeof b);
	assert_true(front_authorized(&b, NULL)); /* no keys: open */
	assert_int_equal(parse(&b.cfg, NULL, 3, "--api-key", "secret", "--api-key=other"), 0);
	assert_int_equal(b.cfg.n_api_keys, 2);
	assert_true(front_authorized(&b, "secret"));
	assert_true(front_authorized(&b, "other"));
	assert_false(front_authorized(&b, "secre"));
	assert_false(front_authorized(&b, "secrets"));
	assert_false(front_authorized(&b, ""));
	assert_false(front_authorized(&b, NULL));
	char long_key[130];
	memset(long_key, 'k', 129);
	long_key[129] = 0;
	assert_int_equal(parse(&c, NULL, 2, "--api-key", long_key), 2);
	long_key[128] = 0;
	assert_int_equal(parse(&c, NULL, 2, "--api-key", long_key), 0);
	assert_int_equal(parse(&c, NULL, 2, "--api-key", ""), 2);
	static char *many[2 * (BROKER_MAX_API_KEYS + 1)];
	for (int i = 0; i < BROKER_MAX_API_KEYS + 1; i++) {
		many[2 * i] = "--api-key";
		many[2 * i + 1] = "k";
	}
	char *argv[2 + 2 * (BROKER_MAX_API_KEYS + 1)] = {"itt-broker"};
	memcpy(argv + 1, many, sizeof many);
	int o2 = dup(2), null = open("/dev/null", O_WRONLY);
	dup2(null, 2);
	int rc65 = broker_config_parse(&c, 1 + 2 * (BROKER_MAX_API_KEYS + 1), argv);
	int rc64 = broker_config_parse(&c, 1 + 2 * BROKER_MAX_API_KEYS, argv);
	dup2(o2, 2);
	close(o2);
	close(null);
	assert_int_equal(rc65, 2);
	assert_int_equal(rc64, 0);
	assert_int_equal(c.n_api_keys, BROKER_MAX_API_KEYS);
}

static void test_help_and_print_config_exit_zero(void **state)
{
	(void)state;
	struct broker_config c;
	char *out;
	assert_int_equal(parse(&c, &out, 1, "--help"), 1);
	assert_non_null(strstr(out, "usage: itt-broker [options]"));
	static const char *const flags[] = {"--front",
	                                    "--back",
	                                    "--heartbeat-ms",
	                                    "--liveness",
	                                    "--queue-limit",
	                                    "--client-timeout-ms",
	                                    "--client-heartbeat-ms",
	                                    "--max-sessions-per-worker",
	                                    "--max-replays",
	                                    "--keep-ended-ms",
	                                    "--keep-ended",
	                                    "--act-f16",
	                                    "--head-sets",
	                                    "--api-key",
	                                    "--log-level",
	                                    "--print-config"};
	for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
		assert_non_null(strstr(out, flags[i]));
	assert_non_null(strstr(out, "[default 60000, 0..3600000]"));
	free(out);
	assert_int_equal(parse(&c, &out, 6, "--print-config", "--api-key", "s1", "--api-key", "s2",
	                       "--queue-limit=7"),
	                 1);
	assert_string_equal(out, "front = tcp://*:5555\n"
	                         "back = tcp://*:5556\n"
	                         "heartbeat-ms = 500\n"
	                         "liveness = 3\n"
	                         "queue-limit = 7\n"
	                         "client-timeout-ms = 10000\n"
	                         "client-heartbeat-ms = 1000\n"
	                         "max-sessions-per-worker = 0\n"
	                         "max-replays = 16\n"
	                         "keep-ended-ms = 60000\n"
	                         "keep-ended = 10000\n"
	                         "act-f16 = 0\n"
	                         "head-sets = \n"
	                         "api-key = (2 set)\n"
	                         "log-level = info\n");
	free(out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults_are_those_of_the_protocol),
	    cmocka_unit_test(test_each_flag_sets_its_field_in_both_forms),
	    cmocka_unit_test(test_bad_values_and_unknown_flags_are_usage_errors),
	    cmocka_unit_test(test_api_keys_are_repeatable_and_bounded),
	    cmocka_unit_test(test_help_and_print_config_exit_zero),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
