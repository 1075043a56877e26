/* config: the broker's flags as one declarative table.
 *
 * Each row names a flag, its type, default, bounds and the field it fills;
 * the same table drives parsing, validation, --help and --print-config, so
 * a limit cannot exist without a documented flag and default (opts.h does
 * the work).  Defaults are those of PROTOCOL.md. */
#include "broker.h"

#include <string.h>

#include "opts.h"

#define CFG_AT(f) offsetof(struct broker_config, f)

/* --api-key: repeatable; the keys point into argv. */
static int cfg_api_key(void *opts, const char *v, char *reason, size_t cap)
{
	struct broker_config *c = opts;
	size_t n = strlen(v);
	if (n < 1 || n > 128) {
		snprintf(reason, cap, "expected 1..128 bytes");
		return -1;
	}
	if (c->n_api_keys == BROKER_MAX_API_KEYS) {
		snprintf(reason, cap, "at most %d --api-key", BROKER_MAX_API_KEYS);
		return -1;
	}
	c->api_keys[c->n_api_keys++] = v;
	return 0;
}

/* Set by --print-config; not a setting (not printed by it). */
struct cfg_parse {
	struct broker_config c;
	bool print;
};

#define CFG_PRINT offsetof(struct cfg_parse, print)

static const struct opt cfg_opts[] = {
    {"front", 0, OPT_BUF, "tcp://*:5555", 1, 255, CFG_AT(front), NULL,
     "endpoint the client front end (ROUTER) binds"},
    {"back", 0, OPT_BUF, "tcp://*:5556", 1, 255, CFG_AT(back), NULL,
     "endpoint the worker back end (ROUTER) binds"},
    {"heartbeat-ms", 0, OPT_INT, "500", 10, 60000, CFG_AT(heartbeat_ms), NULL,
     "heartbeat interval with workers (sent in WELCOME)"},
    {"liveness", 0, OPT_INT, "3", 1, 100, CFG_AT(liveness), NULL,
     "heartbeat intervals of silence after which a worker is dead"},
    {"queue-limit", 0, OPT_INT, "64", 0, 1000000, CFG_AT(queue_limit), NULL,
     "requests waiting per model; one more is OVERLOADED at once"},
    {"client-timeout-ms", 0, OPT_INT, "10000", 100, 3600000, CFG_AT(client_timeout_ms), NULL,
     "a client with open requests silent this long is gone"},
    {"client-heartbeat-ms", 0, OPT_INT, "1000", 10, 60000, CFG_AT(client_heartbeat_ms), NULL,
     "HEARTBEAT to a client with open requests after this much quiet"},
    {"max-sessions-per-worker", 0, OPT_INT, "0", 0, 1000000, CFG_AT(max_sessions_per_worker),
     NULL, "cap on the sessions a worker gets (0: what its HELLO says)"},
    {"max-replays", 0, OPT_INT, "16", 0, 1000, CFG_AT(max_replays), NULL,
     "moves of a session to another worker before it fails UNAVAILABLE"},
    {"keep-ended-ms", 0, OPT_INT, "60000", 0, 3600000, CFG_AT(keep_ended_ms), NULL,
     "how long an ended request is kept for idempotent re-SUBMIT"},
    {"keep-ended", 0, OPT_INT, "10000", 0, 10000000, CFG_AT(keep_ended), NULL,
     "at most this many ended requests are kept (oldest dropped first)"},
    {"act-f16", 0, OPT_INT, "0", 0, 1, CFG_AT(act_f16), NULL,
     "1: pipeline stages pass activations as F16 (half the bytes), 0: F32"},
    {"head-sets", 0, OPT_BUF, "", 0, 255, CFG_AT(head_sets), NULL,
     "folder of head-set files NAME.heads that guidance.head_set may name"},
    {"api-key", 0, OPT_FN, NULL, 1, 128, 0, "S",
     "accepted API key (repeatable); when set, SUBMIT and STATS need one", cfg_api_key},
    {"log-level", 0, OPT_LEVEL, "info", 0, 3, CFG_AT(log_level), NULL,
     "error, warn, info or debug"},
    {"print-config", 0, OPT_FLAG, NULL, 0, 0, CFG_PRINT, NULL,
     "print the settings in force and exit"},
};

static const struct opt_spec cfg_spec = {
    .prog = "itt-broker",
    .usage = "[options]",
    .about = "\nThe itt broker: clients connect a DEALER to --front and send SUBMIT; workers\n"
             "connect a DEALER to --back and send HELLO.  Every step of every session is\n"
             "routed here (see proto/PROTOCOL.md).  SIGINT/SIGTERM stop it.",
    .opts = cfg_opts,
    .n_opts = OPTS_N(cfg_opts),
};

/* "name = value" per setting: the table's lines, the keys counted (never shown). */
static void cfg_print(const struct broker_config *c)
{
	for (size_t i = 0; i < cfg_spec.n_opts; i++) {
		const struct opt *o = &cfg_opts[i];
		struct opt_spec one = cfg_spec;
		if (o->type == OPT_FLAG)
			continue;
		if (o->type == OPT_FN) {
			printf("%s = (%d set)\n", o->name, c->n_api_keys);
			continue;
		}
		one.opts = o;
		one.n_opts = 1;
		opts_print(&one, c, stdout);
	}
}

int broker_config_parse(struct broker_config *c, int argc, char **argv)
{
	struct cfg_parse p;
	memset(&p, 0, sizeof p);
	int rc = opts_parse(&cfg_spec, argc, argv, &p, NULL);
	*c = p.c;
	if (rc == OPTS_HELP)
		return 1;
	if (rc != OPTS_OK)
		return 2;
	if (p.print) {
		cfg_print(c);
		return 1;
	}
	return 0;
}
