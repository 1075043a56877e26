/* cli: pieces shared by the itt subcommands — their option tables (opts.h),
 * JSON output (jansson) and the generation options common to --local and
 * --broker.
 *
 * Every command parses its argv with opts_parse(): argv[0] is the command's
 * name ("stats", "up"), its options follow.  opts_parse() prints --help and
 * usage errors itself; cli_exit() turns its result into the exit status
 * (0 after --help, 2 after an error). */
#ifndef ITT_CLI_H
#define ITT_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "opts.h"
#include "sampling.h"

#define CLI_MAX_STOPS 8

/* Bounds of an option that only has to be a finite number (the command or
 * the broker checks its range and names the field). */
#define CLI_ANY_LO (-1e30)
#define CLI_ANY_HI 1e30

/* The exit status after opts_parse() returned OPTS_HELP or OPTS_ERROR. */
static inline int cli_exit(int opts_rc)
{
	return opts_rc == OPTS_HELP ? 0 : 2;
}

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

/* The options of the commands that talk to a broker. */
#define DEFAULT_BROKER "tcp://127.0.0.1:5555"

struct cluster_opts {
	const char *api_key;   /* --api-key, default $ITT_API_KEY */
	const char *client_id; /* --client-id, default random */
	long timeout_ms;       /* --timeout-ms; -1: absent (libitt's default) */
	/* of a request (generate --broker) */
	const char *tenant;
	long deadline_ms; /* 0: the broker's default */
	long priority;
};

/* Option rows for the struct cluster_opts at field `co` of options struct
 * T: the connection's, then a request's (flags: OPT_HIDDEN for commands
 * that accept and ignore them).  timeout_def NULL: --timeout-ms has no
 * default (set co.timeout_ms to -1 before parsing; timeout_help says what
 * it is). */
#define CLUSTER_CONN_OPTS(T, co, timeout_def, timeout_help)                                        \
	{"api-key", 0, OPT_STR, NULL, 0, 4096, offsetof(T, co.api_key), "KEY",                     \
	 "the broker's API key", .env = "ITT_API_KEY"},                                            \
	{"client-id", 0, OPT_STR, NULL, 0, 4096, offsetof(T, co.client_id), "ID",                  \
	 "this client's id (default random)"},                                                     \
	{"timeout-ms", 0, OPT_LONG, timeout_def, 0, 86400000, offsetof(T, co.timeout_ms), "MS",    \
	 timeout_help}
#define CLUSTER_REQ_OPTS(T, co, flag_bits)                                                         \
	{"tenant", 0, OPT_STR, NULL, 0, 4096, offsetof(T, co.tenant), "NAME",                      \
	 "the tenant the request counts against", .flags = (flag_bits)},                           \
	{"priority", 0, OPT_LONG, "0", -1000000, 1000000, offsetof(T, co.priority), "N",           \
	 "higher first", .flags = (flag_bits)},                                                    \
	{"deadline-ms", 0, OPT_LONG, "0", 0, 3600000, offsetof(T, co.deadline_ms), "MS",           \
	 "end the request after this long (0: the broker's default)", .flags = (flag_bits)}

/* One turn of a conversation (itt generate --chat); strings owned. */
struct gen_msg {
	char *role, *content;
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
	bool act_quant;     /* --act-quant (--local): integer products on 8-bit activations */
	bool json;
	struct gen_technique tech;
	struct cluster_opts co; /* --broker only */
	/* chat (PROTOCOL.md "Chat") */
	bool chat;                 /* --chat (or --messages): send a conversation */
	const char *system;        /* --system TEXT: a system message first */
	const char *messages_file; /* --messages FILE: a JSON array of {"role", "content"} */
	const char *chat_template; /* --chat-template NAME: instead of the model's */
	struct gen_msg *msgs;      /* the conversation parse_gen built: --system, the
	                            * file's messages, then the prompt as a user message */
	size_t n_msgs;
};

/* itt generate: parses argv (argv[0] "generate") and runs the local or the
 * broker path. */
int cmd_generate(int argc, char **argv);
/* The conversation of a --chat run as a JSON array of {"role", "content"}. */
json_t *gen_json_messages(const struct gen_opts *o);

/* --- JSON output (jansson) ---------------------------------------------------
 * A command builds its object with json_object_set_new() and these values,
 * then writes it with cli_json_print().  NULL (out of memory) is accepted
 * wherever a value is. */

/* A string of len bytes; invalid UTF-8 is replaced by U+FFFD. */
json_t *cli_json_text(const char *s, size_t len);
/* cli_json_text of a C string; NULL gives "". */
json_t *cli_json_str(const char *s);
/* An array of token ids. */
json_t *cli_json_ids(const int32_t *ids, size_t n);
/* A real printed as fmt ("%.3f", "%g") would print it, so that figures stay
 * as short and stable as before; null when v is not finite. */
json_t *cli_json_num(double v, const char *fmt);
/* An unsigned 64-bit integer (jansson's own are signed). */
json_t *cli_json_u64(uint64_t v);
/* Writes v as one compact line and releases it; 0, or -1 (nothing or part
 * written). */
int cli_json_print(json_t *v, FILE *f);

/* cmd-cluster.c: helpers of the commands that talk to a broker. */
struct itt_client;
struct itt_stream;
struct itt_event;

/* A client of endpoint with co's key (default $ITT_API_KEY), id and
 * timeout; NULL after printing "itt CMD: CODE: reason". */
struct itt_client *open_client(const char *endpoint, const struct cluster_opts *co,
			       const char *cmd);

/* The state of stream_next_or_cancel() over one stream; zero to begin. */
struct stream_wait {
	bool cancelled;       /* it sent CANCEL */
	uint64_t t_cancel_ms; /* when (clock_mono_ms) */
};
/* itt_stream_next() that, once SIGINT or SIGTERM arrived (sig_stop),
 * cancels the stream and waits at most 2 s more for the broker to end it.
 * Returns 1 with an event, -1 when the stream had ended (itt_stream_next),
 * or 0 when the cancel was not confirmed in time. */
int stream_next_or_cancel(struct itt_stream *s, struct itt_event *ev, struct stream_wait *w);

/* Sleeps ms milliseconds (less when a signal arrives). */
void sleep_ms(long ms);

/* cmd-bench.c, for `itt bench engine` and `itt bench serve`. */
/* The "model name" line of /proc/cpuinfo, or "unknown". */
void cpu_name(char *buf, size_t cap);
/* Percentiles (linear interpolation between order statistics; p50 is the
 * median) and mean of v[0..n); sorts v.  NAN when n is 0. */
struct dist {
	size_t n;
	double p50, p90, p99, mean;
};
struct dist dist_of(double *v, size_t n);

int cmd_generate_local(struct gen_opts *o);  /* cmd-local.c */
int cmd_generate_broker(struct gen_opts *o); /* cmd-cluster.c */
/* argv[0] is the command's name, its options follow. */
int cmd_stats(int argc, char **argv);    /* cmd-stats.c */
int cmd_settings(int argc, char **argv); /* cmd-stats.c */
int cmd_up(int argc, char **argv);       /* cmd-cluster.c */
int cmd_perplexity(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_bench_serve(int argc, char **argv);
/* argv holds the options after the subcommand's name. */
int cmd_eval(int argc, char **argv);  /* cmd-eval.c */
int cmd_heads(int argc, char **argv); /* cmd-heads.c */

#endif
