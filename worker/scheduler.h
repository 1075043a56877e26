/* scheduler (functions sched_*): the worker's compute side — the engine,
 * its sessions and the step scheduler — and the decoders that turn
 * OPEN/STEP/CLOSE bodies into commands for it.  (Not "sched.h": that name
 * would shadow the system <sched.h> that <pthread.h> includes.)
 *
 * Contract.  The loop thread decodes and validates each body with
 * sched_decode_open/_step/_close (pure functions of the bytes and the model's
 * shape, safe on any input, fuzzed by tests/fuzz/fuzz-worker-msg.c) and
 * hands the command to the compute thread with sched_push.  A text prompt is
 * tokenized (and checked against the context) by the compute thread, with
 * sched_prepare_open, because that is real work and the loop thread must
 * never compute.  The compute thread owns the engine and the session table;
 * every step it applies the queued commands, admits waiting sessions, then
 * runs ONE forward pass over rows of every running session with tokens to
 * feed (decode rows first, then prefill chunks, at most batch_tokens rows,
 * round-robin so nobody starves), samples each session whose step's tokens
 * are all in the cache, and queues a RESULT (or an ERROR) in the outbox,
 * calling notify() so the loop sends it.
 *
 * Memory.  A session is running (it holds KV blocks) or waiting.  An OPEN
 * is admitted when the cache can hold its whole history on top of what the
 * running sessions were promised; otherwise it waits, in (priority, arrival)
 * order, at most max_waiting of them (beyond: OVERLOADED at once).  On
 * admission it forks the longest run of whole blocks of its history found
 * in the prefix index (kv-cache.h) and computes the rest; its full prompt
 * blocks enter the index once computed.  When a step needs a block and none
 * is free (idle index blocks are evicted first), the running session of
 * lowest priority (ties: the latest admitted) is preempted: its blocks are
 * freed and it waits again, keeping its place before newer sessions, and
 * recomputes its history when re-admitted.
 *
 * Invariants.  A session's history holds every token fed to it (prompt and
 * steps), hist[0, n_done) are in its KV cache (n_done == seq.n_pos; 0 while
 * it waits), and a step's result samples the token at position `end` from
 * hist[0, end), so a replayed or preempted history samples the same tokens.
 * Outputs carry the epoch of the registration they belong to (set by
 * SCHED_CMD_RESET), so the loop drops results of sessions that a
 * reconnect has forgotten. */
#ifndef ITT_SCHED_H
#define ITT_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "kv-cache.h"
#include "sampler.h"
#include "tokenizer.h"

/* ---- logging (shared by the worker's modules) ------------------------- */

enum sched_log_level {
	SCHED_LOG_ERROR = 0,
	SCHED_LOG_WARN = 1,
	SCHED_LOG_INFO = 2,
	SCHED_LOG_DEBUG = 3,
};

extern int sched_log_level;
/* The sink (default: stderr with a timestamp); tests may replace it. */
extern void (*sched_log_sink)(int level, const char *line);
void sched_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Arguments are not evaluated when the level is filtered out. */
#define SCHED_LOG(level, ...)                                                                      \
	do {                                                                                       \
		if ((level) <= sched_log_level)                                                    \
			sched_log_write((level), __VA_ARGS__);                                     \
	} while (0)
/* "error", "warn", "info", "debug" -> level, or -1. */
int sched_log_parse(const char *name);

/* ---- configuration and model shape ------------------------------------ */

struct sched_config {
	const char *model_path;
	uint32_t first, last;   /* layer range; last 0 = all */
	int threads;            /* compute threads */
	uint32_t max_sessions;  /* open sessions at most; more OPENs get OVERLOADED */
	uint32_t batch_tokens;  /* rows per forward step (token budget) */
	size_t kv_bytes;        /* KV cache budget */
	enum kv_type kv_type;   /* element type of the KV cache */
	uint32_t max_waiting;   /* OPENs waiting for KV memory at most; more get OVERLOADED */
	bool prefix_cache;      /* share the KV blocks of common prompt prefixes */
	uint32_t slow_ms;       /* debug: sleep this long after every step */
	uint32_t batch_wait_us; /* gather window: see sched_gather in scheduler.c */
};

#define SCHED_DEFAULT_MAX_SESSIONS 64
#define SCHED_DEFAULT_BATCH_TOKENS 256
#define SCHED_DEFAULT_KV_MB        256
#define SCHED_DEFAULT_MAX_WAITING  64
/* Steps of one session queued before their results, at most. */
#define SCHED_MAX_INFLIGHT 16
/* Longest piece sent in a RESULT. */
#define SCHED_MAX_PIECE  256
#define SCHED_MAX_REASON 256

/* What the decoders need to know about the model. */
struct sched_info {
	uint32_t vocab, ctx_len, dim;
	uint32_t n_layers, first, last; /* layers [first, last) of n_layers */
	int32_t eos, bos;               /* -1: none */
	uint32_t kv_blocks, kv_block;   /* KV cache: blocks, positions per block */
	const tokenizer_t *tok;         /* NULL: text prompts are refused */
};

/* ---- commands (loop -> compute) ---------------------------------------- */

enum sched_cmd_kind {
	SCHED_CMD_OPEN,
	SCHED_CMD_STEP,
	SCHED_CMD_CLOSE,
	SCHED_CMD_RESET, /* forget every session; outputs from now carry epoch */
};

struct sched_cmd {
	enum sched_cmd_kind kind;
	uint64_t session_id;
	uint32_t step; /* STEP: its number; OPEN: 0 */
	char *prompt;  /* OPEN: text to tokenize, NUL-terminated, owned; NULL: tokens given */
	size_t prompt_len;
	int32_t *tokens; /* [n_tokens], owned */
	uint32_t n_tokens;
	uint32_t n_prompt;         /* OPEN: prompt part of tokens */
	int32_t priority;          /* OPEN: higher is served first and preempted last */
	bool tokenized;            /* OPEN: tokens came from a text prompt */
	struct sampler_params sp;  /* OPEN; sp.bias points at bias */
	struct sampler_bias *bias; /* [sp.n_bias], owned */
	uint32_t epoch;            /* RESET */
	struct sched_cmd *next;
};

/* Each decoder returns 0 and a new command in *out, or an itt code
 * (ITT__CODE__*) with reason set; *session_id is set whenever the body
 * decoded far enough to name one (else 0), so an ERROR can carry it. */
int sched_decode_open(const uint8_t *body, size_t len, const struct sched_info *info,
                      struct sched_cmd **out, uint64_t *session_id, char *reason, size_t cap);
int sched_decode_step(const uint8_t *body, size_t len, const struct sched_info *info,
                      struct sched_cmd **out, uint64_t *session_id, char *reason, size_t cap);
int sched_decode_close(const uint8_t *body, size_t len, struct sched_cmd **out,
                       uint64_t *session_id, char *reason, size_t cap);
/* Tokenizes an OPEN's text prompt (BOS first) into its tokens, on the
 * compute thread; 0 (also when there is no prompt), or a code with reason
 * (INVALID_ARGUMENT when the prompt does not fit the context). */
int sched_prepare_open(const struct sched_info *info, struct sched_cmd *c, char *reason,
                       size_t cap);
struct sched_cmd *sched_cmd_new(enum sched_cmd_kind kind);
void sched_cmd_free(struct sched_cmd **c);

/* ---- outputs (compute -> loop) ------------------------------------------ */

enum sched_out_kind {
	SCHED_OUT_RESULT,
	SCHED_OUT_ERROR,
};

struct sched_out {
	enum sched_out_kind kind;
	uint32_t epoch;
	uint64_t session_id;
	/* RESULT */
	uint32_t step;
	int32_t token;
	uint32_t n_pos;
	float step_ms;
	char piece[SCHED_MAX_PIECE];
	size_t piece_len;
	int32_t *prompt_tokens; /* [n_prompt_tokens], owned; step 0 of a text prompt */
	uint32_t n_prompt_tokens;
	/* ERROR */
	int code;
	char reason[SCHED_MAX_REASON];
	struct sched_out *next;
};

void sched_out_free_list(struct sched_out *o);

/* ---- the scheduler ------------------------------------------------------ */

typedef struct sched sched_t;

struct sched_stats {
	uint64_t steps;    /* forward passes run */
	uint64_t rows;     /* rows in them */
	uint64_t results;  /* RESULTs produced */
	uint32_t sessions; /* open now (running and waiting) */
	uint32_t waiting;  /* of them, waiting for KV memory (new or preempted) */
	uint32_t kv_free, kv_blocks;
	uint32_t kv_idle;        /* blocks only the prefix index holds (evictable) */
	uint64_t preemptions;    /* sessions that lost their blocks to another */
	uint64_t prefix_lookups; /* admissions that looked up the prefix index */
	uint64_t prefix_hits;    /* of them, those that shared blocks */
	uint64_t prefix_blocks;  /* blocks shared in total */
};

/* Opens the engine (may take a while for a big model). */
int sched_new(const struct sched_config *c, sched_t **out, struct itt_err *err);
const struct sched_info *sched_get_info(const sched_t *s);
/* Starts the compute thread; notify(arg) is called (from that thread) after
 * outputs were queued. */
int sched_start(sched_t *s, void (*notify)(void *arg), void *arg, struct itt_err *err);
/* Queues a command (ownership moves to the scheduler). Any thread. */
void sched_push(sched_t *s, struct sched_cmd *c);
/* Takes every queued output, oldest first (NULL when none). Any thread. */
struct sched_out *sched_take(sched_t *s);
void sched_get_stats(sched_t *s, struct sched_stats *st);
/* Stops and joins the compute thread (after its current step). */
void sched_stop(sched_t *s);
void sched_destroy(sched_t **s);

#endif
