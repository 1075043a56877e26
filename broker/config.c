/* config: the broker's flags as one declarative table.
 *
 * Each row names a flag, its type, default, bounds and the field it fills;
 * the same table drives parsing, validation, --help and --print-config, so
 * a limit cannot exist without a documented flag and default.  Defaults are
 * those of PROTOCOL.md. */
#include "broker.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

enum cfg_type {
	CFG_INT,
	CFG_STR,
	CFG_KEYS,
	CFG_LEVEL,
};

struct cfg_opt {
	const char *name;
	enum cfg_type type;
	const char *def;
	long lo, hi;
	size_t off;
	const char *help;
};

#define CFG_AT(f) offsetof(struct broker_config, f)

static const struct cfg_opt cfg_opts[] = {
    {"front", CFG_STR, "tcp://*:5555", 1, 255, CFG_AT(front),
     "endpoint the client front end (ROUTER) binds"},
    {"back", CFG_STR, "tcp://*:5556", 1, 255, CFG_AT(back),
     "endpoint the worker back end (ROUTER) binds"},
    {"heartbeat-ms", CFG_INT, "500", 10, 60000, CFG_AT(heartbeat_ms),
     "heartbeat interval with workers (sent in WELCOME)"},
    {"liveness", CFG_INT, "3", 1, 100, CFG_AT(liveness),
     "heartbeat intervals of silence after which a worker is dead"},
    {"queue-limit", CFG_INT, "64", 0, 1000000, CFG_AT(queue_limit),
     "requests waiting per model; one more is OVERLOADED at once"},
    {"client-timeout-ms", CFG_INT, "10000", 100, 3600000, CFG_AT(client_timeout_ms),
     "a client with open requests silent this long is gone"},
    {"client-heartbeat-ms", CFG_INT, "1000", 10, 60000, CFG_AT(client_heartbeat_ms),
     "HEARTBEAT to a client with open requests after this much quiet"},
    {"max-sessions-per-worker", CFG_INT, "0", 0, 1000000, CFG_AT(max_sessions_per_worker),
     "cap on the sessions a worker gets (0: what its HELLO says)"},
    {"max-replays", CFG_INT, "16", 0, 1000, CFG_AT(max_replays),
     "moves of a session to another worker before it fails UNAVAILABLE"},
    {"keep-ended-ms", CFG_INT, "60000", 0, 3600000, CFG_AT(keep_ended_ms),
     "how long an ended request is kept for idempotent re-SUBMIT"},
    {"keep-ended", CFG_INT, "10000", 0, 10000000, CFG_AT(keep_ended),
     "at most this many ended requests are kept (oldest dropped first)"},
    {"act-f16", CFG_INT, "0", 0, 1, CFG_AT(act_f16),
     "1: pipeline stages pass activations as F16 (half the bytes), 0: F32"},
    {"head-sets", CFG_STR, "", 0, 255, CFG_AT(head_sets),
     "folder of head-set files NAME.heads that guidance.head_set may name"},
    {"api-key", CFG_KEYS, "", 1, 128, 0,
     "accepted API key (repeatable); when set, SUBMIT and STATS need one"},
    {"log-level", CFG_LEVEL, "info", 0, 3, CFG_AT(log_level), "error, warn, info or debug"},
};

#define CFG_N (sizeof cfg_opts / sizeof cfg_opts[0])

static int cfg_set(struct broker_config *c, const struct cfg_opt *o, const char *v)
{
	char *p = (char *)c + o->off;
	switch (o->type) {
	case CFG_INT: {
		char *end;
		errno = 0;
		long x = strtol(v, &end, 10);
		if (errno || end == v || *end || x < o->lo || x > o->hi) {
			fprintf(stderr, "itt-broker: --%s %s: expected an integer in [%ld, %ld]\n",
			        o->name, v, o->lo, o->hi);
			return -1;
		}
		*(int *)(void *)p = (int)x;
		return 0;
	}
	case CFG_STR:
		if (strlen(v) < (size_t)o->lo || strlen(v) > (size_t)o->hi) {
			fprintf(stderr, "itt-broker: --%s: %ld..%ld bytes expected\n", o->name,
			        o->lo, o->hi);
			return -1;
		}
		snprintf(p, (size_t)o->hi + 1, "%s", v);
		return 0;
	case CFG_KEYS:
		if (strlen(v) < (size_t)o->lo || strlen(v) > (size_t)o->hi) {
			fprintf(stderr, "itt-broker: --%s: %ld..%ld bytes expected\n", o->name,
			        o->lo, o->hi);
			return -1;
		}
		if (c->n_api_keys == BROKER_MAX_API_KEYS) {
			fprintf(stderr, "itt-broker: at most %d --api-key\n", BROKER_MAX_API_KEYS);
			return -1;
		}
		c->api_keys[c->n_api_keys++] = v;
		return 0;
	case CFG_LEVEL: {
		int l = log_parse_level(v);
		if (l < 0) {
			fprintf(stderr,
			        "itt-broker: --%s %s: expected error, warn, info or debug\n",
			        o->name, v);
			return -1;
		}
		*(int *)(void *)p = l;
		return 0;
	}
	}
	return -1;
}

static void cfg_help(void)
{
	printf("usage: itt-broker [options]\n\n"
	       "The itt broker: clients connect a DEALER to --front and send SUBMIT; workers\n"
	       "connect a DEALER to --back and send HELLO.  Every step of every session is\n"
	       "routed here (see proto/PROTOCOL.md).  SIGINT/SIGTERM stop it.\n\noptions:\n");
	for (size_t i = 0; i < CFG_N; i++) {
		const struct cfg_opt *o = &cfg_opts[i];
		char head[64];
		snprintf(head, sizeof head, "--%s %s", o->name,
		         o->type == CFG_INT     ? "N"
		         : o->type == CFG_LEVEL ? "LEVEL"
		                                : "S");
		printf("  %-30s %s\n", head, o->help);
		if (o->type == CFG_INT)
			printf("  %-30s [default %s, %ld..%ld]\n", "", o->def, o->lo, o->hi);
		else if (o->type != CFG_KEYS)
			printf("  %-30s [default %s]\n", "", o->def);
	}
	printf("  %-30s %s\n  %-30s %s\n", "--print-config", "print the settings in force and exit",
	       "--help", "this text");
}

static void cfg_print(const struct broker_config *c)
{
	for (size_t i = 0; i < CFG_N; i++) {
		const struct cfg_opt *o = &cfg_opts[i];
		const char *p = (const char *)c + o->off;
		switch (o->type) {
		case CFG_INT: printf("%s = %d\n", o->name, *(const int *)(const void *)p); break;
		case CFG_STR: printf("%s = %s\n", o->name, p); break;
		case CFG_KEYS: printf("%s = (%d set)\n", o->name, c->n_api_keys); break;
		case CFG_LEVEL:
			printf("%s = %s\n", o->name, log_level_name(*(const int *)(const void *)p));
			break;
		}
	}
}

int broker_config_parse(struct broker_config *c, int argc, char **argv)
{
	bool print = false;
	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < CFG_N; i++)
		if (cfg_opts[i].type != CFG_KEYS && cfg_set(c, &cfg_opts[i], cfg_opts[i].def) < 0)
			return 2;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			cfg_help();
			return 1;
		}
		if (!strcmp(a, "--print-config")) {
			print = true;
			continue;
		}
		if (strncmp(a, "--", 2) != 0) {
			fprintf(stderr, "itt-broker: unexpected argument %s (see --help)\n", a);
			return 2;
		}
		const char *name = a + 2, *eq = strchr(name, '=');
		size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
		const struct cfg_opt *o = NULL;
		for (size_t k = 0; k < CFG_N && !o; k++)
			if (strlen(cfg_opts[k].name) == nlen &&
			    !strncmp(cfg_opts[k].name, name, nlen))
				o = &cfg_opts[k];
		if (!o) {
			fprintf(stderr, "itt-broker: unknown option %s (see --help)\n", a);
			return 2;
		}
		const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
		if (!v) {
			fprintf(stderr, "itt-broker: --%s needs a value\n", o->name);
			return 2;
		}
		if (cfg_set(c, o, v) < 0)
			return 2;
	}
	if (print) {
		cfg_print(c);
		return 1;
	}
	return 0;
}
