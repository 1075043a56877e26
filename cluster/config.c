/* config: itt-coordinator's flags, one declarative table.
 *
 * A row is a flag: its type, default, bounds, the field it fills and one
 * line of help.  The table alone drives parsing (--name V or --name=V),
 * validation, --help and --print-config, so no setting exists without a
 * documented default. */
#include "coord.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

enum opt_kind {
	OPT_INT,
	OPT_REAL,
	OPT_TEXT,
	OPT_LEVEL,
};

struct opt {
	const char *name;
	enum opt_kind kind;
	const char *def;
	double lo, hi; /* numbers: bounds; text: bytes */
	size_t off;
	const char *help;
};

#define AT(f) offsetof(struct coord_config, f)

static const struct opt opts[] = {
    {"broker", OPT_TEXT, "tcp://127.0.0.1:5556", 1, 255, AT(broker),
     "the broker's back end to connect to"},
    {"id", OPT_TEXT, "", 0, 128, AT(id), "coordinator id in CONTROL_HELLO (empty: host:pid)"},
    {"stages", OPT_INT, "0", 0, PLACE_MAX_STAGES, AT(stages),
     "stages per route: 0 = the fewest whose workers' memory holds the model"},
    {"tpot-ms", OPT_INT, "100", 1, 600000, AT(tpot_ms),
     "per-token latency target of the batch budget controller"},
    {"interval-ms", OPT_INT, "1000", 10, 60000, AT(interval_ms), "control tick"},
    {"hold-s", OPT_INT, "3", 0, 3600, AT(hold_s),
     "a slowdown or latency excess must last this long before an action"},
    {"min-gain", OPT_REAL, "0.25", 0, 1, AT(min_gain),
     "re-plan on a slowdown only if the predicted bottleneck drops by this fraction"},
    {"cooldown-s", OPT_INT, "5", 0, 3600, AT(cooldown_s),
     "least time between two speed-driven placement moves of one model"},
    {"decisions", OPT_INT, "256", 1, 1000000, AT(decisions), "decisions kept in memory"},
    {"log-level", OPT_LEVEL, "info", 0, 3, AT(log_level), "error, warn, info or debug"},
};

#define N_OPTS (sizeof opts / sizeof opts[0])

static int opt_set(struct coord_config *c, const struct opt *o, const char *v)
{
	char *p = (char *)c + o->off;
	char *end;
	switch (o->kind) {
	case OPT_INT:
	case OPT_REAL: {
		errno = 0;
		double x = strtod(v, &end);
		if (errno || end == v || *end || !isfinite(x) || x < o->lo || x > o->hi ||
		    (o->kind == OPT_INT && x != floor(x))) {
			fprintf(stderr, "itt-coordinator: --%s %s: expected %s in [%.10g, %.10g]\n",
			        o->name, v, o->kind == OPT_INT ? "an integer" : "a number", o->lo,
			        o->hi);
			return -1;
		}
		if (o->kind == OPT_INT)
			*(int *)(void *)p = (int)x;
		else
			*(double *)(void *)p = x;
		return 0;
	}
	case OPT_TEXT:
		if (strlen(v) < (size_t)o->lo || strlen(v) > (size_t)o->hi) {
			fprintf(stderr, "itt-coordinator: --%s: %.10g..%.10g bytes expected\n",
			        o->name, o->lo, o->hi);
			return -1;
		}
		snprintf(p, (size_t)o->hi + 1, "%s", v);
		return 0;
	case OPT_LEVEL: {
		int l = log_parse_level(v);
		if (l < 0) {
			fprintf(stderr,
			        "itt-coordinator: --%s %s: expected error, warn, info or debug\n",
			        o->name, v);
			return -1;
		}
		*(int *)(void *)p = l;
		return 0;
	}
	}
	return -1;
}

static void opt_help(void)
{
	printf("usage: itt-coordinator [options]\n\n"
	       "The itt control plane.  It connects a DEALER to the broker's back end, sends\n"
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
	       "backoff.  SIGINT/SIGTERM stop it.\n\noptions:\n");
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt *o = &opts[i];
		char head[64];
		snprintf(head, sizeof head, "--%s %s", o->name,
		         o->kind == OPT_INT     ? "N"
		         : o->kind == OPT_REAL  ? "X"
		         : o->kind == OPT_LEVEL ? "LEVEL"
		                                : "S");
		printf("  %-24s %s\n", head, o->help);
		if (o->kind == OPT_INT || o->kind == OPT_REAL)
			printf("  %-24s [default %s, %.10g..%.10g]\n", "", o->def, o->lo, o->hi);
		else
			printf("  %-24s [default %s]\n", "", *o->def ? o->def : "empty");
	}
	printf("  %-24s %s\n  %-24s %s\n", "--print-config", "print the settings in force and exit",
	       "--help", "this text");
}

static void opt_print(const struct coord_config *c)
{
	for (size_t i = 0; i < N_OPTS; i++) {
		const struct opt *o = &opts[i];
		const char *p = (const char *)c + o->off;
		switch (o->kind) {
		case OPT_INT: printf("%s = %d\n", o->name, *(const int *)(const void *)p); break;
		case OPT_REAL:
			printf("%s = %g\n", o->name, *(const double *)(const void *)p);
			break;
		case OPT_TEXT: printf("%s = %s\n", o->name, p); break;
		case OPT_LEVEL:
			printf("%s = %s\n", o->name, log_level_name(*(const int *)(const void *)p));
			break;
		}
	}
}

int coord_config_parse(struct coord_config *c, int argc, char **argv)
{
	bool print = false;
	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < N_OPTS; i++)
		if (opt_set(c, &opts[i], opts[i].def) < 0)
			return 2;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			opt_help();
			return 1;
		}
		if (!strcmp(a, "--print-config")) {
			print = true;
			continue;
		}
		if (strncmp(a, "--", 2) != 0) {
			fprintf(stderr, "itt-coordinator: unexpected argument %s (see --help)\n",
			        a);
			return 2;
		}
		const char *name = a + 2, *eq = strchr(name, '=');
		size_t len = eq ? (size_t)(eq - name) : strlen(name);
		const struct opt *o = NULL;
		for (size_t k = 0; k < N_OPTS && !o; k++)
			if (strlen(opts[k].name) == len && !strncmp(opts[k].name, name, len))
				o = &opts[k];
		if (!o) {
			fprintf(stderr, "itt-coordinator: unknown option %s (see --help)\n", a);
			return 2;
		}
		const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
		if (!v) {
			fprintf(stderr, "itt-coordinator: --%s needs a value\n", o->name);
			return 2;
		}
		if (opt_set(c, o, v) < 0)
			return 2;
	}
	if (!c->id[0]) {
		char host[64] = "coordinator";
		gethostname(host, sizeof host - 1);
		snprintf(c->id, sizeof c->id, "%.64s:%d", host, (int)getpid());
	}
	if (print) {
		opt_print(c);
		return 1;
	}
	return 0;
}
