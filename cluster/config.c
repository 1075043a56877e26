/* config: itt-coordinator's flags, one declarative table (opts.h).
 *
 * A row is a flag: its type, default, bounds, the field it fills and one
 * line of help.  The table alone drives parsing (--name V or --name=V),
 * validation, --help and --print-config, so no setting exists without a
 * documented default. */
#include "coord.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "opts.h"

#define AT(f) offsetof(struct coord_config, f)

/* --print-config stays last: it is the one row --print-config leaves out. */
static const struct opt opts[] = {
    {"broker", 0, OPT_BUF, "tcp://127.0.0.1:5556", 1, 255, AT(broker), NULL,
     "the broker's back end to connect to"},
    {"id", 0, OPT_BUF, "", 0, COORD_NAME - 1, AT(id), NULL,
     "coordinator id in CONTROL_HELLO (empty: host:pid)"},
    {"stages", 0, OPT_INT, "0", 0, PLACE_MAX_STAGES, AT(stages), NULL,
     "stages per route: 0 = the fewest whose workers' memory holds the model"},
    {"tpot-ms", 0, OPT_INT, "100", 1, 600000, AT(tpot_ms), NULL,
     "per-token latency target of the batch budget controller"},
    {"interval-ms", 0, OPT_INT, "1000", 10, 60000, AT(interval_ms), NULL, "control tick"},
    {"hold-s", 0, OPT_INT, "3", 0, 3600, AT(hold_s), NULL,
     "a slowdown or latency excess must last this long before an action"},
    {"min-gain", 0, OPT_DOUBLE, "0.25", 0, 1, AT(min_gain), "X",
     "re-plan on a slowdown only if the predicted bottleneck drops by this fraction"},
    {"cooldown-s", 0, OPT_INT, "5", 0, 3600, AT(cooldown_s), NULL,
     "least time between two speed-driven placement moves of one model"},
    {"decisions", 0, OPT_INT, "256", 1, 1000000, AT(decisions), NULL, "decisions kept in memory"},
    {"log-level", 0, OPT_LEVEL, "info", 0, 3, AT(log_level), NULL,
     "error, warn, info or debug"},
    {"print-config", 0, OPT_FLAG, NULL, 0, 0, AT(print_config), NULL,
     "print the settings in force and exit"},
};

static const struct opt_spec spec = {
    .prog = "itt-coordinator",
    .usage = "[options]",
    .about =
        "\nThe itt control plane.  It connects a DEALER to the broker's back end, sends\n"
        "CONTROL_HELLO, learns the workers from WORKER_UP / WORKER_DOWN / TELEMETRY and\n"
        "keeps the cluster tuned (proto/PROTOCOL.md, \"Coordinator\"):\n"
        "  placement  splits each model's layers over its workers in proportion to\n"
        "             their measured speed and memory, forms routes (replicas when there\n"
        "             are more workers than stages) and sends PLACE and ROUTES; it\n"
        "             re-plans within one tick when a worker joins or leaves, and on a\n"
        "             slowdown that lasts --hold-s and promises --min-gain, at most once\n"
        "             per --cooldown-s.  Ranges that already form complete routes when\n"
        "             it starts are kept: a restart moves nothing.\n"
        "  settings   threads = cores of the host / workers on it; batch_tokens lowered\n"
        "             when the mean step exceeds --tpot-ms, raised when steps are fast\n"
        "             and budget-limited (both after --hold-s); pinned knobs are never\n"
        "             touched.  Every change is a decision logged at info.\n"
        "If the broker is silent for its liveness, the coordinator reconnects with\n"
        "backoff.  SIGINT/SIGTERM stop it.",
    .opts = opts,
    .n_opts = OPTS_N(opts),
};

int coord_config_parse(struct coord_config *c, int argc, char **argv)
{
	memset(c, 0, sizeof *c);
	int rc = opts_parse(&spec, argc, argv, c, NULL);
	if (rc != OPTS_OK)
		return rc == OPTS_HELP ? 1 : 2;
	if (!c->id[0]) {
		char host[64] = "coordinator";
		gethostname(host, sizeof host - 1);
		snprintf(c->id, sizeof c->id, "%.64s:%d", host, (int)getpid());
	}
	if (c->print_config) {
		struct opt_spec settings = spec;
		settings.n_opts--; /* without --print-config itself */
		opts_print(&settings, c, stdout);
		return 1;
	}
	return 0;
}
