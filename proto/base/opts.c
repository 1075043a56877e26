/* opts: see opts.h. */
#include "opts.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

bool opts_parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	if (!s || !*s)
		return false;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

bool opts_parse_double(const char *s, double *out)
{
	char *end;
	if (!s || !*s)
		return false;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || *end || !isfinite(v))
		return false;
	*out = v;
	return true;
}

static long opts_bound(double x)
{
	if (x >= (double)LONG_MAX)
		return LONG_MAX;
	if (x <= (double)LONG_MIN)
		return LONG_MIN;
	return (long)x;
}

/* Parses v for row o into out; 0, or -1 with a reason. */
static int opts_set(const struct opt *o, void *out, const char *v, char *reason, size_t cap)
{
	char *p = (char *)out + o->off;
	switch (o->type) {
	case OPT_FLAG:
		*(bool *)(void *)p = true;
		return 0;
	case OPT_INT:
	case OPT_LONG: {
		long x, lo = opts_bound(o->lo), hi = opts_bound(o->hi);
		if (o->type == OPT_INT) {
			lo = lo < INT_MIN ? INT_MIN : lo;
			hi = hi > INT_MAX ? INT_MAX : hi;
		}
		if (!opts_parse_long(v, lo, hi, &x)) {
			snprintf(reason, cap, "expected an integer in [%ld, %ld]", lo, hi);
			return -1;
		}
		if (o->type == OPT_INT)
			*(int *)(void *)p = (int)x;
		else
			*(long *)(void *)p = x;
		return 0;
	}
	case OPT_DOUBLE:
	case OPT_FLOAT: {
		double x;
		bool open = o->flags & OPT_LO_OPEN;
		if (!opts_parse_double(v, &x) || (open ? !(x > o->lo) : !(x >= o->lo)) ||
		    !(x <= o->hi)) {
			snprintf(reason, cap, "expected a number in %c%.15g, %.15g]", open ? '(' : '[',
			         o->lo, o->hi);
			return -1;
		}
		if (o->type == OPT_FLOAT)
			*(float *)(void *)p = (float)x;
		else
			*(double *)(void *)p = x;
		return 0;
	}
	case OPT_STR:
	case OPT_BUF: {
		size_t n = strlen(v);
		if ((double)n < o->lo || (double)n > o->hi) {
			snprintf(reason, cap, "expected %g..%g bytes", o->lo, o->hi);
			return -1;
		}
		if (o->type == OPT_STR)
			*(const char **)(void *)p = v;
		else
			memcpy(p, v, n + 1);
		return 0;
	}
	case OPT_LEVEL: {
		int l = log_parse_level(v);
		if (l < 0) {
			snprintf(reason, cap, "expected error, warn, info or debug");
			return -1;
		}
		*(int *)(void *)p = l;
		return 0;
	}
	case OPT_SWITCH:
		if (strcmp(v, "on") && strcmp(v, "off")) {
			snprintf(reason, cap, "expected on or off");
			return -1;
		}
		*(bool *)(void *)p = !strcmp(v, "on");
		return 0;
	case OPT_FN:
		if (!o->fn) {
			snprintf(reason, cap, "no parser for this option");
			return -1;
		}
		if (o->fn(out, v, reason, cap) < 0)
			return -1;
		return 0;
	}
	snprintf(reason, cap, "unknown option type");
	return -1;
}

int opts_defaults(const struct opt_spec *spec, void *out)
{
	char reason[256];
	for (size_t i = 0; i < spec->n_opts; i++) {
		const struct opt *o = &spec->opts[i];
		const char *v = o->def;
		const char *e = o->env ? getenv(o->env) : NULL;
		if (e && *e)
			v = e;
		if (o->type == OPT_FLAG) {
			*(bool *)(void *)((char *)out + o->off) = false;
			continue;
		}
		if (!v)
			continue;
		if (opts_set(o, out, v, reason, sizeof reason) < 0) {
			if (v == o->def)
				fprintf(stderr, "%s: default of --%s: %s\n", spec->prog, o->name,
				        reason);
			else
				fprintf(stderr, "%s: $%s: %s\n", spec->prog, o->env, reason);
			return OPTS_ERROR;
		}
	}
	return OPTS_OK;
}

static const struct opt *opts_find_long(const struct opt_spec *spec, const char *name, size_t n)
{
	for (size_t i = 0; i < spec->n_opts; i++) {
		const struct opt *o = &spec->opts[i];
		if (strlen(o->name) == n && !memcmp(o->name, name, n))
			return o;
	}
	return NULL;
}

static const struct opt *opts_find_short(const struct opt_spec *spec, char c)
{
	for (size_t i = 0; i < spec->n_opts; i++)
		if (c && spec->opts[i].short_name == c)
			return &spec->opts[i];
	return NULL;
}

int opts_parse(const struct opt_spec *spec, int argc, char **argv, void *out, int *n_pos)
{
	int rc = opts_defaults(spec, out);
	if (rc != OPTS_OK)
		return rc;
	int npos = 0;
	bool only_pos = false;
	for (int a = 1; a < argc; a++) {
		char *arg = argv[a];
		if (only_pos || arg[0] != '-' || !arg[1] || (arg[1] >= '0' && arg[1] <= '9')) {
			if (!n_pos) {
				fprintf(stderr, "%s: unexpected argument %s (see --help)\n",
				        spec->prog, arg);
				return OPTS_ERROR;
			}
			argv[1 + npos++] = arg;
			continue;
		}
		if (!strcmp(arg, "--")) {
			only_pos = true;
			continue;
		}
		if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
			opts_usage(spec, stdout);
			return OPTS_HELP;
		}
		const struct opt *o;
		const char *inline_v = NULL;
		if (arg[1] == '-') {
			const char *name = arg + 2, *eq = strchr(name, '=');
			o = opts_find_long(spec, name, eq ? (size_t)(eq - name) : strlen(name));
			inline_v = eq ? eq + 1 : NULL;
		} else {
			o = arg[2] ? NULL : opts_find_short(spec, arg[1]);
		}
		if (!o) {
			fprintf(stderr, "%s: unknown option %s (see --help)\n", spec->prog, arg);
			return OPTS_ERROR;
		}
		const char *v = inline_v;
		if (o->type == OPT_FLAG) {
			if (v) {
				fprintf(stderr, "%s: --%s takes no value\n", spec->prog, o->name);
				return OPTS_ERROR;
			}
		} else if (!v) {
			if (a + 1 >= argc) {
				fprintf(stderr, "%s: --%s needs a value\n", spec->prog, o->name);
				return OPTS_ERROR;
			}
			v = argv[++a];
		}
		char reason[256];
		if (opts_set(o, out, v ? v : "", reason, sizeof reason) < 0) {
			fprintf(stderr, "%s: --%s %s: %s\n", spec->prog, o->name, v, reason);
			return OPTS_ERROR;
		}
	}
	if (n_pos) {
		*n_pos = npos;
		if (1 + npos < argc)
			argv[1 + npos] = NULL;
	}
	return OPTS_OK;
}

static const char *opts_arg_name(const struct opt *o)
{
	if (o->arg)
		return o->arg;
	switch (o->type) {
	case OPT_FLAG: return "";
	case OPT_INT:
	case OPT_LONG:
	case OPT_DOUBLE:
	case OPT_FLOAT: return "N";
	case OPT_LEVEL: return "LEVEL";
	case OPT_SWITCH: return "on|off";
	default: return "S";
	}
}

void opts_usage(const struct opt_spec *spec, FILE *f)
{
	fprintf(f, "usage: %s %s\n", spec->prog, spec->usage ? spec->usage : "[options]");
	if (spec->about)
		fprintf(f, "%s\n", spec->about);
	fprintf(f, "\noptions:\n");
	for (size_t i = 0; i < spec->n_opts; i++) {
		const struct opt *o = &spec->opts[i];
		if (o->flags & OPT_HIDDEN)
			continue;
		char head[80], extra[128] = "";
		const char *an = opts_arg_name(o);
		if (o->short_name)
			snprintf(head, sizeof head, "-%c, --%s%s%s", o->short_name, o->name,
			         *an ? " " : "", an);
		else
			snprintf(head, sizeof head, "--%s%s%s", o->name, *an ? " " : "", an);
		if (o->type == OPT_INT || o->type == OPT_LONG)
			snprintf(extra, sizeof extra, "[default %s, %ld..%ld]", o->def ? o->def : "none",
			         opts_bound(o->lo), opts_bound(o->hi));
		else if (o->type == OPT_DOUBLE || o->type == OPT_FLOAT)
			snprintf(extra, sizeof extra, "[default %s, %s%.15g..%.15g]",
			         o->def ? o->def : "none", (o->flags & OPT_LO_OPEN) ? ">" : "",
			         o->lo, o->hi);
		else if (o->def && *o->def)
			snprintf(extra, sizeof extra, "[default %s]", o->def);
		if (o->env) {
			size_t n = strlen(extra);
			snprintf(extra + n, sizeof extra - n, "%s[env %s]", n ? " " : "", o->env);
		}
		size_t w = strlen(head) > 28 ? strlen(head) : 28;
		if (2 + w + 1 + strlen(o->help) + 1 + strlen(extra) <= 100)
			fprintf(f, "  %-28s %s%s%s\n", head, o->help, *extra ? " " : "", extra);
		else if (*extra)
			fprintf(f, "  %-28s %s\n  %-28s %s\n", head, o->help, "", extra);
		else
			fprintf(f, "  %-28s %s\n", head, o->help);
	}
	fprintf(f, "  %-28s %s\n", "-h, --help", "this text");
	if (spec->epilog)
		fprintf(f, "\n%s\n", spec->epilog);
}

void opts_print(const struct opt_spec *spec, const void *in, FILE *f)
{
	for (size_t i = 0; i < spec->n_opts; i++) {
		const struct opt *o = &spec->opts[i];
		const char *p = (const char *)in + o->off;
		switch (o->type) {
		case OPT_FLAG: fprintf(f, "%s = %s\n", o->name, *(const bool *)(const void *)p ? "true" : "false"); break;
		case OPT_INT: fprintf(f, "%s = %d\n", o->name, *(const int *)(const void *)p); break;
		case OPT_LONG: fprintf(f, "%s = %ld\n", o->name, *(const long *)(const void *)p); break;
		case OPT_DOUBLE: fprintf(f, "%s = %g\n", o->name, *(const double *)(const void *)p); break;
		case OPT_FLOAT: fprintf(f, "%s = %g\n", o->name, (double)*(const float *)(const void *)p); break;
		case OPT_STR: {
			const char *s = *(const char *const *)(const void *)p;
			fprintf(f, "%s = %s\n", o->name, s ? s : "");
			break;
		}
		case OPT_BUF: fprintf(f, "%s = %s\n", o->name, p); break;
		case OPT_LEVEL: fprintf(f, "%s = %s\n", o->name, log_level_name(*(const int *)(const void *)p)); break;
		case OPT_SWITCH: fprintf(f, "%s = %s\n", o->name, *(const bool *)(const void *)p ? "on" : "off"); break;
		case OPT_FN: fprintf(f, "%s = (custom)\n", o->name); break;
		}
	}
}
