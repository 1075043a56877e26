/* cli: pieces shared by the itt subcommands — option parsing helpers, JSON
 * output and the generation options common to --local and --broker. */
#ifndef ITT_CLI_H
#define ITT_CLI_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "sampling.h"

#define CLI_MAX_STOPS 8

/* Inference-time techniques of a generation (values as given; the command
 * checks them against the model). */
struct gen_technique {
	const char *heads;           /* --guidance-heads L:H,... */
	const char *head_set;        /* --head-set FILE (--local) or NAME (--broker) */
	float scale;                 /* --guidance-scale S; 0: off */
	float blend;                 /* --guidance-blend U; default 1 */
	const char *negative_prompt; /* --negative-prompt TEXT (classifier-free guidance) */
	float exit_threshold;        /* --early-exit T; < 0: off */
	const char *exit_layers;     /* --exit-layers 1,2,3 */
	bool compare;                /* --compare: run the full model alongside */
	/* speculative decoding (--broker) */
	const char *draft;           /* --speculative ngram|exit */
	long max_draft;              /* --draft N; -1: absent (4 with --speculative) */
	long exit_draft_layers;      /* --exit-draft-layers K; 0: absent */
};

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
	struct gen_technique tech;
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

/* cmd-cluster.c: helpers of the commands that talk to a broker. */
#define DEFAULT_BROKER "tcp://127.0.0.1:5555"

struct itt_client;
struct cluster_opts {
	const char *api_key;
	const char *client_id;
	const char *tenant;
	long deadline_ms;
	long priority;
	long timeout_ms;
};

/* SIGINT/SIGTERM set g_stop (the signal) and interrupt blocking calls. */
extern volatile sig_atomic_t g_stop;
void install_signals(void);
/* $name when set and not empty, else def. */
const char *env_or(const char *name, const char *def);
/* Removes --api-key, --client-id, --tenant, --deadline-ms, --priority and
 * --timeout-ms from argv (in place) into co; the new argc, or -1 after a
 * usage error. */
int take_cluster_opts(int argc, char **argv, struct cluster_opts *co, const char *cmd);
/* A client of endpoint with co's key (default $ITT_API_KEY), id and
 * timeout; NULL after printing "itt CMD: CODE: reason". */
struct itt_client *open_client(const char *endpoint, const struct cluster_opts *co,
			       const char *cmd);

int cmd_generate_local(struct gen_opts *o);
/* cmd-cluster.c: argv holds the options after the subcommand's name. */
int cmd_generate_broker(int argc, char **argv);
int cmd_stats(int argc, char **argv);    /* cmd-stats.c */
int cmd_settings(int argc, char **argv); /* cmd-stats.c */
int cmd_up(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_serve(int argc, char **argv);
int cmd_eval(int argc, char **argv);  /* cmd-eval.c */
int cmd_heads(int argc, char **argv); /* cmd-heads.c */

#endif
