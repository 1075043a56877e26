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

#include "clock.h"
#include "log.h"
#include "opts.h"
#include "scheduler.h"
#include "server.h"
#include "sha256.h"

struct worker_opts {
	const char *broker;
	const char *model;
	const char *name;
	const char *layers;
	const char *id;
	int log_level;
	long threads;
	long max_sessions;
	long batch_tokens;
	long max_batch_tokens;
	long batch_wait_us;
	double kv_mb;
	const char *kv_type;
	bool act_quant;
	long max_waiting;
	long prefix_cache;
	long heartbeat_ms;
	long liveness;
	long slow_ms;
	const char *chat_template;
	bool print_config;
};

#define WORKER_OFF(f) offsetof(struct worker_opts, f)
/* Strings without a bound of their own (checked after parsing, if at all). */
#define WORKER_STR_MAX 65536

/* In --print-config order (its "name value" lines follow the table). */
static const struct opt worker_opts_table[] = {
    {"broker", 0, OPT_STR, SERVER_DEFAULT_BROKER, 0, WORKER_STR_MAX, WORKER_OFF(broker), NULL,
     "broker back-end endpoint"},
    {"model", 0, OPT_STR, NULL, 0, WORKER_STR_MAX, WORKER_OFF(model), NULL,
     "GGUF model file (required)"},
    {"name", 0, OPT_STR, NULL, 0, WORKER_STR_MAX, WORKER_OFF(name), NULL,
     "service name in HELLO (default: the file name without .gguf)"},
    {"layers", 0, OPT_STR, NULL, 0, WORKER_STR_MAX, WORKER_OFF(layers), NULL,
     "layers [A, B) to hold, as A:B (default: all; ASSIGN may change it)"},
    {"id", 0, OPT_STR, NULL, 0, WORKER_STR_MAX, WORKER_OFF(id), NULL,
     "worker id, 1..64 bytes (default: host:pid:random)"},
    {"threads", 0, OPT_LONG, "1", 1, 256, WORKER_OFF(threads), NULL,
     "compute threads (SETTINGS: 1..64)"},
    {"max-sessions", 0, OPT_LONG, "64", 1, 65536, WORKER_OFF(max_sessions), NULL,
     "open sessions at most; further OPENs get OVERLOADED"},
    {"batch-tokens", 0, OPT_LONG, "256", 1, 65536, WORKER_OFF(batch_tokens), NULL,
     "rows of one step; longer prompts are prefilled in chunks (SETTINGS: "
     "1..max-batch-tokens)"},
    {"max-batch-tokens", 0, OPT_LONG, "0", 0, 65536, WORKER_OFF(max_batch_tokens), NULL,
     "largest batch-tokens SETTINGS may set (0: max(--batch-tokens, 512))"},
    {"batch-wait-us", 0, OPT_LONG, "2000", 0, 100000, WORKER_OFF(batch_wait_us), NULL,
     "gather window: with some sessions ready and others' next STEP due, wait this long for "
     "them so one step serves all"},
    {"kv-mb", 0, OPT_DOUBLE, "256", 0, 1L << 20, WORKER_OFF(kv_mb), NULL,
     "KV cache budget in MiB (fractions allowed; at least one block)", .flags = OPT_LO_OPEN},
    {"kv-type", 0, OPT_STR, "f32", 0, WORKER_STR_MAX, WORKER_OFF(kv_type), NULL,
     "element type of the KV cache: f32 or f16 (half the memory)"},
    {"max-waiting", 0, OPT_LONG, "64", 0, 65536, WORKER_OFF(max_waiting), NULL,
     "OPENs waiting for KV memory at most; further ones get OVERLOADED"},
    {"act-quant", 0, OPT_SWITCH, "on", 0, 0, WORKER_OFF(act_quant), NULL,
     "quantised weights: integer products on 8-bit activations, as llama.cpp"},
    {"prefix-cache", 0, OPT_LONG, "1", 0, 1, WORKER_OFF(prefix_cache), NULL,
     "share the KV blocks of common prompt prefixes (0: off)"},
    {"heartbeat-ms", 0, OPT_LONG, "500", SERVER_MIN_HEARTBEAT_MS, SERVER_MAX_HEARTBEAT_MS,
     WORKER_OFF(heartbeat_ms), NULL, "heartbeat interval until the broker's WELCOME sets one"},
    {"liveness", 0, OPT_LONG, "3", 1, SERVER_MAX_LIVENESS, WORKER_OFF(liveness), NULL,
     "silent heartbeat intervals before the broker counts as gone"},
    {"log-level", 0, OPT_LEVEL, "info", 0, 0, WORKER_OFF(log_level), NULL,
     "error, warn, info or debug"},
    {"slow-ms", 0, OPT_LONG, "0", 0, 10000, WORKER_OFF(slow_ms), NULL,
     "DEBUG knob: sleep this long after every step (SETTINGS may change it)"},
    {"chat-template", 0, OPT_STR, NULL, 0, WORKER_STR_MAX, WORKER_OFF(chat_template), "NAME",
     "render chat requests that name no template with this one (chatml, llama3, ...) "
     "instead of the model's tokenizer.chat_template"},
    {"print-config", 0, OPT_FLAG, NULL, 0, 0, WORKER_OFF(print_config), NULL,
     "print the settings in force and exit"},
};

static const struct opt_spec worker_spec = {
    .prog = "itt-worker",
    .usage = "--model FILE.gguf [options]",
    .about = "Serves a model, or a layer range of it (a pipeline stage), to an itt broker:\n"
             "registers with HELLO, runs the sessions the broker opens (continuous batching,\n"
             "chunked prefill), heartbeats, and sends TELEMETRY every second; applies SETTINGS\n"
             "(threads, batch_tokens, slow_ms) between steps and ASSIGN (another layer range,\n"
             "loaded from the same file); reconnects with backoff when the broker goes away.\n"
             "SIGINT/SIGTERM: BYE and exit.",
    .opts = worker_opts_table,
    .n_opts = OPTS_N(worker_opts_table),
};

/* --print-config: the settings in force (w resolved), one "name value" line
 * per option (opts_print's "name = value" with the name's dashes as
 * underscores, the form scripts and tests read), without print-config. */
static int worker_print_config(const struct worker_opts *w)
{
	char *text = NULL, *save = NULL;
	size_t len = 0;
	FILE *mem = open_memstream(&text, &len);
	if (!mem)
		return 1;
	opts_print(&worker_spec, w, mem);
	fclose(mem);
	for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		char *eq = strstr(l, " = ");
		if (!eq || !strncmp(l, "print-config ", 13))
			continue;
		for (char *p = l; p < eq; p++)
			if (*p == '-')
				*p = '_';
		printf("%.*s %s\n", (int)(eq - l), l, eq + 3);
	}
	free(text);
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
	if (!opts_parse_long(buf, 0, 4095, &a) || !opts_parse_long(colon + 1, 1, 4096, &b) ||
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
	struct worker_opts w = {0};
	char name[256], id[128];
	uint32_t first, last;
	int rc = opts_parse(&worker_spec, argc, argv, &w, NULL);

	if (rc != OPTS_OK)
		return rc == OPTS_HELP ? 0 : 2;
	log_set_program("itt-worker");
	log_level_now = w.log_level;
	if (!w.model) {
		fprintf(stderr, "itt-worker: --model FILE.gguf is required (see --help)\n");
		return 2;
	}
	if (!worker_parse_layers(w.layers, &first, &last)) {
		fprintf(stderr, "itt-worker: --layers %s: expected A:B with 0 <= A < B\n",
		        w.layers);
		return 2;
	}
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
	struct chat_template ct;
	struct itt_err cerr = {0};
	if (w.chat_template && chat_template_by_name(w.chat_template, &ct, &cerr) < 0) {
		fprintf(stderr, "itt-worker: --chat-template: %s\n", cerr.msg);
		return 2;
	}
	if (w.print_config) {
		if (!w.layers)
			w.layers = "all";
		w.kv_type = kv_type_name(kv_type);
		return worker_print_config(&w);
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
	    .act_quant_off = !w.act_quant,
	    .slow_ms = (uint32_t)w.slow_ms,
	    .batch_wait_us = (uint32_t)w.batch_wait_us,
	    .chat_template = w.chat_template,
	};
	struct itt_err err = {0};
	sched_t *sched = NULL;
	char sha[SHA256_HEX];
	uint64_t file_bytes = 0, t0 = clock_mono_ms();
	if (sha256_file(w.model, sha, &file_bytes, &err) < 0) {
		LOG_ERROR("cannot read %s: %s", w.model, err.msg);
		return 1;
	}
	LOG_INFO("sha256 of %s (%llu bytes) in %llu ms: %s", w.model,
	         (unsigned long long)file_bytes, (unsigned long long)(clock_mono_ms() - t0), sha);
	t0 = clock_mono_ms();
	if (sched_new(&sc, &sched, &err) < 0) {
		LOG_ERROR("cannot load %s: %s: %s", w.model, itt_strerror(err.code), err.msg);
		return 1;
	}
	const struct sched_info *in = sched_get_info(sched);
	LOG_INFO("loaded %s as %s in %llu ms: layers [%u, %u) of %u, vocab %u, ctx %u, "
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
