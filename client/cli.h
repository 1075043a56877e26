/* cli: pieces shared by the itt subcommands — option parsing helpers, JSON
 * output and the generation options common to --local and --broker. */
#ifndef ITT_CLI_H
#define ITT_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "sampler.h"

#define CLI_MAX_STOPS 8

struct gen_opts {
	const char *local;  /* model path for the in-process engine */
	const char *broker; /* broker endpoint */
	const char *model;  /* model name at the broker */
	const char *prompt;
	int32_t n_predict;
	struct sampler_params sp;
	bool seed_set;
	const char *stops[CLI_MAX_STOPS];
	int n_stops;
	int threads;
	bool json;
};

/* Parses argv into o; returns 0, or 2 after printing a usage error. */
int cli_parse_gen(int argc, char **argv, struct gen_opts *o, const char *cmd);

/* Strict number parsing: the whole string must be the number. */
bool cli_parse_long(const char *s, long lo, long hi, long *out);
bool cli_parse_float(const char *s, float *out);

/* JSON: a string with escapes (bytes >= 0x80 passed through, invalid UTF-8
 * replaced by U+FFFD), and arrays of ids. */
void json_str(FILE *f, const char *s, size_t len);
void json_ids(FILE *f, const int32_t *ids, size_t n);

double cli_now_ms(void);

int cmd_generate_local(struct gen_opts *o);
/* cmd-cluster.c: argv holds the options after the subcommand's name. */
int cmd_generate_broker(int argc, char **argv);
int cmd_stats(int argc, char **argv);
int cmd_up(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_serve(int argc, char **argv);

#endif
