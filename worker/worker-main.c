/* itt-worker: serves one model (or layer range) to an itt broker.
 *
 * Start-up: parse the flags (one declarative table drives parsing, bounds,
 * --help and --print-config), hash the model file (HELLO's files), open the
 * engine through the scheduler, then hand over to the event loop (server.c)
 * until SIGINT/SIGTERM.
 * Exit status: 0 after a clean stop, 1 when the model cannot be loaded or
 * the broker endpoint is unusable, 2 on a usage error. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "scheduler.h"
#include "server.h"
#include "sha256.h"
#include "clock.h"
#include "wire.h"

struct worker_opts {
	const char *broker;
	const char *model;
	const char *name;
	const char *layers;
	const char *id;
	const char *log_level;
	long threads;
	long max_sessions;
	long batch_tokens;
	long max_batch_tokens;
	long batch_wait_us;
	double kv_mb;
	const char *kv_type;
	long max_waiting;
	long prefix_cache;
	long heartbeat_ms;
	long liveness;
	long slow_ms;
	bool print_config;
};

enum worker_opt_type {
	WORKER_OPT_STR,
	WORKER_OPT_LONG,
	WORKER_OPT_DOUBLE, /* bounds lo..hi as for LONG */
	WORKER_OPT_FLAG,
};

struct worker_opt {
	const char *name;
	enum worker_opt_type type;
	size_t offset;
	const char *def; /* default as text (NULL: none / computed) */
	long lo, hi;     /* bounds of a LONG */
	const char *help;
};

#define WORKER_OFF(f) offsetof(struct worker_opts, f)

static const struct worker_opt worker_opts_table[] = {
    {"--broker", WORKER_OPT_STR, WORKER_OFF(broker), SERVER_DEFAULT_BROKER, 0, 0,
     "broker back-end endpoint"},
    {"--model", WORKER_OPT_STR, WORKER_OFF(model), NULL, 0, 0, "GGUF model file (required)"},
    {"--name", WORKER_OPT_STR, WORKER_OFF(name), NULL, 0, 0,
     "service name in HELLO (default: the file name without .gguf)"},
    {"--layers", WORKER_OPT_STR, WORKER_OFF(layers), NULL, 0, 0,
     "layers [A, B) to hold, as A:B (default: all; ASSIGN may change it)"},
    {"--threads", WORKER_OPT_LONG, WORKER_OFF(threads), "1", 1, 256,
     "compute threads (SETTINGS: 1..64)"},
    {"--max-sessions", WORKER_OPT_LONG, WORKER_OFF(max_sessions), "64", 1, 65536,
     "open sessions at most; further OPENs get OVERLOADED"},
    {"--batch-tokens", WORKER_OPT_LONG, WORKER_OFF(batch_tokens), "256", 1, 65536,
     "rows of one step; longer prompts are prefilled in chunks (SETTINGS: "
     "1..max-batch-tokens)"},
    {"--max-batch-tokens", WORKER_OPT_LONG, WORKER_OFF(max_batch_tokens), "0", 0, 65536,
     "largest batch-tokens SETTINGS may set (0: max(--batch-tokens, 512))"},
    {"--batch-wait-us", WORKER_OPT_LONG, WORKER_OFF(batch_wait_us), "2000", 0, 100000,
     "gather window: with some sessions ready and others' next STEP due, wait this long for "
     "them so one step serves all"},
    {"--kv-mb", WORKER_OPT_DOUBLE, WORKER_OFF(kv_mb), "256", 0, 1L << 20,
     "KV cache budget in MiB (fractions allowed; at least one block)"},
    {"--kv-type", WORKER_OPT_STR, WORKER_OFF(kv_type), "f32", 0, 0,
     "element type of the KV cache: f32 or f16 (half the memory)"},
    {"--max-waiting", WORKER_OPT_LONG, WORKER_OFF(max_waiting), "64", 0, 65536,
     "OPENs waiting for KV memory at most; further ones get OVERLOADED"},
    {"--prefix-cache", WORKER_OPT_LONG, WORKER_OFF(prefix_cache), "1", 0, 1,
     "share the KV blocks of common prompt prefixes (0: off)"},
    {"--heartbeat-ms", WORKER_OPT_LONG, WORKER_OFF(heartbeat_ms), "500", SERVER_MIN_HEARTBEAT_MS,
     SERVER_MAX_HEARTBEAT_MS, "heartbeat interval until the broker's WELCOME sets one"},
    {"--liveness", WORKER_OPT_LONG, WORKER_OFF(liveness), "3", 1, SERVER_MAX_LIVENESS,
     "silent heartbeat intervals before the broker counts as gone"},
    {"--id", WORKER_OPT_STR, WORKER_OFF(id), NULL, 0, 0,
     "worker id, 1..64 bytes (default: host:pid:random)"},
    {"--log-level", WORKER_OPT_STR, WORKER_OFF(log_level), "info", 0, 0,
     "error, warn, info or debug"},
    {"--slow-ms", WORKER_OPT_LONG, WORKER_OFF(slow_ms), "0", 0, 10000,
     "DEBUG knob: sleep this long after every step (SETTINGS may change it)"},
    {"--print-config", WORKER_OPT_FLAG, WORKER_OFF(print_config), NULL, 0, 0,
     "print the settings in force and exit"},
};

#define WORKER_N_OPTS (sizeof worker_opts_table / sizeof worker_opts_table[0])

static void worker_usage(FILE *f)
{
	fprintf(f,
	        "usage: itt-worker --model FILE.gguf [options]\n"
	        "Serves a model, or a layer range of it (a pipeline stage), to an itt broker:\n"
	        "registers with HELLO, runs the sessions the broker opens (continuous batching,\n"
	        "chunked prefill), heartbeats, and sends TELEMETRY every second; applies SETTINGS\n"
	        "(threads, batch_tokens, slow_ms) between steps and ASSIGN (another layer range,\n"
	        "loaded from the same file); reconnects with backoff when the broker goes away.\n"
	        "SIGINT/SIGTERM: BYE and exit.\n\n"
	        "options:\n");
	for (size_t i = 0; i < WORKER_N_OPTS; i++) {
		const struct worker_opt *o = &worker_opts_table[i];
		char arg[64];
		snprintf(arg, sizeof arg, "%s%s", o->name,
		         o->type == WORKER_OPT_STR                                    ? " S"
		         : o->type == WORKER_OPT_LONG || o->type == WORKER_OPT_DOUBLE ? " N"
		                                                                      : "");
		char extra[96] = "";
		if (o->type == WORKER_OPT_LONG)
			snprintf(extra, sizeof extra, "[%ld..%ld, default %s]", o->lo, o->hi,
			         o->def);
		else if (o->type == WORKER_OPT_DOUBLE)
			snprintf(extra, sizeof extra, "[%ld < N <= %ld, default %s]", o->lo, o->hi,
			         o->def);
		else if (o->def)
			snprintf(extra, sizeof extra, "[default %s]", o->def);
		/* 23 columns of name, the help, and the bounds where they fit */
		if (23 + strlen(o->help) + 1 + strlen(extra) <= 100)
			fprintf(f, "  %-20s %s%s%s\n", arg, o->help, *extra ? " " : "", extra);
		else
			fprintf(f, "  %-20s %s\n  %-20s %s\n", arg, o->help, "", extra);
	}
	fprintf(f, "  %-20s %s\n", "--help", "this text");
}

static bool worker_parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	if (!s || !*s)
		return false;
	long v = strtol(s, &end, 10);
	if (*end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

/* A finite number in (lo, hi]. */
static bool worker_parse_double(const char *s, long lo, long hi, double *out)
{
	char *end;
	if (!s || !*s)
		return false;
	double v = strtod(s, &end);
	if (*end || !(v > (double)lo) || !(v <= (double)hi))
		return false;
	*out = v;
	return true;
}

static int worker_parse(int argc, char **argv, struct worker_opts *w)
{
	memset(w, 0, sizeof *w);
	for (size_t i = 0; i < WORKER_N_OPTS; i++) {
		const struct worker_opt *o = &worker_opts_table[i];
		char *p = (char *)w + o->offset;
		if (o->type == WORKER_OPT_STR)
			*(const char **)p = o->def;
		else if (o->type == WORKER_OPT_LONG)
			worker_parse_long(o->def, o->lo, o->hi, (long *)p);
		else if (o->type == WORKER_OPT_DOUBLE)
			worker_parse_double(o->def, o->lo, o->hi, (double *)p);
	}
	for (int a = 1; a < argc; a++) {
		const char *arg = argv[a];
		if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
			worker_usage(stdout);
			exit(0);
		}
		const struct worker_opt *o = NULL;
		for (size_t i = 0; i < WORKER_N_OPTS && !o; i++)
			if (!strcmp(arg, worker_opts_table[i].name))
				o = &worker_opts_table[i];
		if (!o) {
			fprintf(stderr, "itt-worker: unknown option %s (see --help)\n", arg);
			return 2;
		}
		char *p = (char *)w + o->offset;
		if (o->type == WORKER_OPT_FLAG) {
			*(bool *)p = true;
			continue;
		}
		if (a + 1 >= argc) {
			fprintf(stderr, "itt-worker: %s needs a value\n", arg);
			return 2;
		}
		const char *v = argv[++a];
		if (o->type == WORKER_OPT_STR) {
			*(const char **)p = v;
		} else if (o->type == WORKER_OPT_DOUBLE) {
			if (!worker_parse_double(v, o->lo, o->hi, (double *)p)) {
				fprintf(stderr,
				        "itt-worker: %s %s: expected a number in (%ld, %ld]\n", arg,
				        v, o->lo, o->hi);
				return 2;
			}
		} else if (!worker_parse_long(v, o->lo, o->hi, (long *)p)) {
			fprintf(stderr, "itt-worker: %s %s: expected an integer in [%ld, %ld]\n",
			        arg, v, o->lo, o->hi);
			return 2;
		}
	}
	return 0;
}

/* "A:B" with A < B, or NULL (all layers: 0, 0). */
static bool worker_parse_layers(const char *s, uint32_t *first, uint32_t *last)
{
	long a, b;
	char buf[64];
	*first = *last = 0;
	if (!s)
		return true;
	const char *colon = strchr(s, ':');
	if (!colon || (size_t)(colon - s) >= sizeof buf)
		return false;
	memcpy(buf, s, (size_t)(colon - s));
	buf[colon - s] = 0;
	if (!worker_parse_long(buf, 0, 4095, &a) || !worker_parse_long(colon + 1, 1, 4096, &b) ||
	    a >= b)
		return false;
	*first = (uint32_t)a;
	*last = (uint32_t)b;
	return true;
}

/* The file name without its folder and a trailing ".gguf". */
static void worker_default_name(const char *path, char *out, size_t cap)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	snprintf(out, cap, "%s", base);
	size_t n = strlen(out);
	if (n > 5 && !strcmp(out + n - 5, ".gguf"))
		out[n - 5] = 0;
}

static void worker_default_id(char *out, size_t cap)
{
	char host[65] = "unknown";
	uint32_t r = 0;
	FILE *f = fopen("/dev/urandom", "rb");
	if (!f || fread(&r, sizeof r, 1, f) != 1)
		r = (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16);
	if (f)
		fclose(f);
	if (gethostname(host, sizeof host - 1) < 0)
		strcpy(host, "unknown");
	host[sizeof host - 1] = 0;
	/* Keep within the 64-byte id limit whatever the host name. */
	host[40] = 0;
	snprintf(out, cap, "%s:%ld:%04x", host, (long)getpid(), r & 0xffff);
}

int main(int argc, char **argv)
{
	struct worker_opts w;
	char name[256], id[128];
	uint32_t first, last;
	int rc = worker_parse(argc, argv, &w);

	if (rc)
		return rc;
	if (!w.model) {
		fprintf(stderr, "itt-worker: --model FILE.gguf is required (see --help)\n");
		return 2;
	}
	if (!worker_parse_layers(w.layers, &first, &last)) {
		fprintf(stderr, "itt-worker: --layers %s: expected A:B with 0 <= A < B\n",
		        w.layers);
		return 2;
	}
	int level = sched_log_parse(w.log_level);
	if (level < 0) {
		fprintf(stderr, "itt-worker: --log-level %s: expected error, warn, info or debug\n",
		        w.log_level);
		return 2;
	}
	sched_log_level = level;
	if (!w.name) {
		worker_default_name(w.model, name, sizeof name);
		w.name = name;
	}
	if (!*w.name || strlen(w.name) > 128) {
		fprintf(stderr, "itt-worker: --name must have 1..128 bytes\n");
		return 2;
	}
	if (!w.id) {
		worker_default_id(id, sizeof id);
		w.id = id;
	}
	if (!*w.id || strlen(w.id) > 64) {
		fprintf(stderr, "itt-worker: --id must have 1..64 bytes\n");
		return 2;
	}
	if (strncmp(w.broker, "tcp://", 6) && strncmp(w.broker, "ipc://", 6)) {
		fprintf(stderr,
		        "itt-worker: --broker %s: expected tcp://HOST:PORT (or ipc://PATH)\n",
		        w.broker);
		return 2;
	}
	int kv_type = kv_type_parse(w.kv_type);
	if (kv_type < 0) {
		fprintf(stderr, "itt-worker: --kv-type %s: expected f32 or f16\n", w.kv_type);
		return 2;
	}
	if (!w.max_batch_tokens)
		w.max_batch_tokens = w.batch_tokens > 512 ? w.batch_tokens : 512;
	if (w.max_batch_tokens < w.batch_tokens) {
		fprintf(stderr, "itt-worker: --max-batch-tokens %ld is below --batch-tokens %ld\n",
		        w.max_batch_tokens, w.batch_tokens);
		return 2;
	}
	if (w.print_config) {
		printf(
		    "broker %s\nmodel %s\nname %s\nlayers %s\nid %s\nthreads %ld\n"
		    "max_sessions %ld\nbatch_tokens %ld\nmax_batch_tokens %ld\nbatch_wait_us %ld\n"
		    "kv_mb %g\nkv_type %s\n"
		    "max_waiting %ld\nprefix_cache %ld\nheartbeat_ms %ld\n"
		    "liveness %ld\nlog_level %s\nslow_ms %ld\n",
		    w.broker, w.model, w.name, w.layers ? w.layers : "all", w.id, w.threads,
		    w.max_sessions, w.batch_tokens, w.max_batch_tokens, w.batch_wait_us, w.kv_mb,
		    kv_type_name(kv_type), w.max_waiting, w.prefix_cache, w.heartbeat_ms,
		    w.liveness, w.log_level, w.slow_ms);
		return 0;
	}

	struct sched_config sc = {
	    .model_path = w.model,
	    .first = first,
	    .last = last,
	    .threads = (int)w.threads,
	    .max_sessions = (uint32_t)w.max_sessions,
	    .batch_tokens = (uint32_t)w.batch_tokens,
	    .max_batch_tokens = (uint32_t)w.max_batch_tokens,
	    .kv_bytes = (size_t)(w.kv_mb * 1048576.0),
	    .kv_type = (enum kv_type)kv_type,
	    .max_waiting = (uint32_t)w.max_waiting,
	    .prefix_cache = w.prefix_cache != 0,
	    .slow_ms = (uint32_t)w.slow_ms,
	    .batch_wait_us = (uint32_t)w.batch_wait_us,
	};
	struct itt_err err = {0};
	sched_t *sched = NULL;
	char sha[SHA256_HEX];
	uint64_t file_bytes = 0, t0 = clock_mono_ms();
	if (sha256_file(w.model, sha, &file_bytes, &err) < 0) {
		SCHED_LOG(SCHED_LOG_ERROR, "cannot read %s: %s", w.model, err.msg);
		return 1;
	}
	SCHED_LOG(SCHED_LOG_INFO, "sha256 of %s (%llu bytes) in %llu ms: %s", w.model,
	          (unsigned long long)file_bytes, (unsigned long long)(clock_mono_ms() - t0), sha);
	t0 = clock_mono_ms();
	if (sched_new(&sc, &sched, &err) < 0) {
		SCHED_LOG(SCHED_LOG_ERROR, "cannot load %s: %s: %s", w.model,
		          itt_strerror(err.code), err.msg);
		return 1;
	}
	const struct sched_info *in = sched_get_info(sched);
	SCHED_LOG(SCHED_LOG_INFO,
	          "loaded %s as %s in %llu ms: layers [%u, %u) of %u, vocab %u, ctx %u, "
	          "%ld threads, batch %ld tokens, kv %g MiB %s (%u blocks of %u), prefix cache %s",
	          w.model, w.name, (unsigned long long)(clock_mono_ms() - t0), in->first, in->last,
	          in->n_layers, in->vocab, in->ctx_len, w.threads, w.batch_tokens, w.kv_mb,
	          kv_type_name(kv_type), in->kv_blocks, in->kv_block,
	          !w.prefix_cache                              ? "off"
	          : in->first == 0 && in->last == in->n_layers ? "on"
	                                                       : "off (a pipeline stage)");

	struct server_config cfg = {
	    .broker = w.broker,
	    .worker_id = w.id,
	    .model_name = w.name,
	    .heartbeat_ms = (uint32_t)w.heartbeat_ms,
	    .liveness = (uint32_t)w.liveness,
	    .reconnect_min_ms = SERVER_RECONNECT_MIN_MS,
	    .reconnect_max_ms = SERVER_RECONNECT_MAX_MS,
	    .max_sessions = (uint32_t)w.max_sessions,
	    .max_batch_tokens = (uint32_t)w.max_batch_tokens,
	    .sha256 = sha,
	    .file_bytes = file_bytes,
	};
	rc = server_run(&cfg, sched);
	sched_destroy(&sched);
	return rc;
}
