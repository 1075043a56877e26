/* opts: one declarative option parser and usage printer for the daemons and
 * the command-line client.
 *
 * A program describes its flags as a table of struct opt rows: the flag's
 * name (given as --name), its type, its default as text, its bounds, where
 * in the caller's options struct the value goes (offsetof), and a line of
 * help.  The same table drives parsing, validation, the defaults, --help
 * and --print-config, so a limit cannot exist without a documented flag.
 *
 * Contract:
 * - opts_parse() first applies every row's default, then reads argv[1..):
 *   "--name value", "--name=value", "-x value" for rows with a short letter;
 *   flags (OPT_FLAG) take no value.  "--" ends the options.  Arguments that
 *   are not options are moved, in order, to argv[1..1+*n_pos) when n_pos is
 *   given; without n_pos they are an error.
 * - A row with env set takes its default from that environment variable
 *   when it is set and not empty (so secrets need not be on argv).
 * - Every bad input is one line on stderr "PROG: --name VALUE: what was
 *   expected", and opts_parse returns OPTS_ERROR; --help / -h prints the
 *   usage to stdout and returns OPTS_HELP.  Nothing else is printed.
 * - Bounds: OPT_INT and OPT_LONG take [lo, hi]; OPT_DOUBLE and OPT_FLOAT
 *   take [lo, hi], or (lo, hi] with OPT_LO_OPEN, and must be finite; OPT_STR
 *   and OPT_BUF strings are lo..hi bytes long (OPT_BUF copies into a char
 *   array of hi + 1 bytes).  OPT_SWITCH takes on or off into a bool.
 *   OPT_FN calls the row's function with the value
 *   (repeatable options, lists, custom syntax); it returns 0, or -1 after
 *   writing the reason. */
#ifndef ITT_OPTS_H
#define ITT_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

enum opt_type {
	OPT_FLAG,   /* bool, set by its presence */
	OPT_INT,    /* int */
	OPT_LONG,   /* long */
	OPT_DOUBLE, /* double */
	OPT_FLOAT,  /* float */
	OPT_STR,    /* const char *, pointing into argv (or the default) */
	OPT_BUF,    /* char[hi + 1], copied */
	OPT_LEVEL,  /* int: a log level name (error, warn, info, debug) or 0..3 */
	OPT_SWITCH, /* bool: on or off */
	OPT_FN,     /* the row's fn parses the value */
};

#define OPT_LO_OPEN 1u  /* OPT_DOUBLE / OPT_FLOAT: the lower bound is excluded */
#define OPT_HIDDEN  2u  /* not shown by --help */

/* Parses value into the options struct; 0, or -1 with a reason (no newline). */
typedef int (*opt_fn)(void *opts, const char *value, char *reason, size_t cap);

struct opt {
	const char *name;  /* without the dashes: "threads" */
	char short_name;   /* 'n' for -n, or 0 */
	enum opt_type type;
	const char *def;   /* default as text; NULL: none (the field stays as it was) */
	double lo, hi;     /* bounds (see the contract) */
	size_t off;        /* offsetof the field in the options struct */
	const char *arg;   /* the value's name in --help ("N", "FILE"); NULL: by type */
	const char *help;  /* one line */
	opt_fn fn;         /* OPT_FN only */
	const char *env;   /* environment variable that overrides def, or NULL */
	unsigned flags;    /* OPT_LO_OPEN, OPT_HIDDEN */
};

struct opt_spec {
	const char *prog;  /* "itt-broker", "itt generate": the prefix of messages */
	const char *usage; /* "[options]", "--model FILE.gguf [options]" */
	const char *about; /* paragraphs printed after the usage line, or NULL */
	const struct opt *opts;
	size_t n_opts;
	const char *epilog; /* printed after the options, or NULL */
};

#define OPTS_OK    0
#define OPTS_HELP  1
#define OPTS_ERROR 2

#define OPTS_N(table) (sizeof(table) / sizeof((table)[0]))

/* Applies the defaults (and env overrides) of every row to out. */
int opts_defaults(const struct opt_spec *spec, void *out);

/* See the contract.  n_pos NULL: positional arguments are refused. */
int opts_parse(const struct opt_spec *spec, int argc, char **argv, void *out, int *n_pos);

/* The usage text: "usage: PROG USAGE", about, one line (or two) per row. */
void opts_usage(const struct opt_spec *spec, FILE *f);

/* "name = value" per row (OPT_FN rows print "(custom)"), for --print-config. */
void opts_print(const struct opt_spec *spec, const void *in, FILE *f);

/* Strict number parsing shared with hand-written syntax (the whole string
 * must be the number, in range; floats finite). */
bool opts_parse_long(const char *s, long lo, long hi, long *out);
bool opts_parse_double(const char *s, double *out);

#endif
