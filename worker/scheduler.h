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
 * Pipeline stages.  A worker may hold layers [first, last) of n_layers
 * (PROTOCOL.md, "Pipeline stages").  Stage 0 (first == 0) takes tokens or a
 * text prompt as a whole worker does; a later stage takes tokens plus their
 * hidden states (the tensor frame, F32 or F16, converted to F32 by the
 * decoder) and keeps the rows of tokens not yet computed with the session.
 * A stage that is not the last (last < n_layers) samples nothing: each
 * step's RESULT carries the output residual rows of that step's tokens (in
 * the session's reply_dtype), collected over as many forward passes as a
 * chunked prefill takes.  A partial range neither shares prefixes nor
 * preempts: where it would preempt, it fails that session with OVERLOADED
 * and drops it (the broker replays it from stage 0).
 *
 * Live changes.  SETTINGS (threads, batch_tokens, slow_ms) and ASSIGN (a new
 * layer range) are commands too, applied by the compute thread between two
 * steps; ASSIGN drops every session, reopens the engine with the new range
 * from the same file (falling back to the old range when that fails) and
 * answers with a SCHED_OUT_LOADED output carrying the new sched_info.  The
 * loop thread keeps its own copy of sched_info and never reads the compute
 * thread's while it may be rebuilt.
 *
 * Techniques (PROTOCOL.md, "Techniques"; validated again by the decoder
 * against this worker's shape and range).  Speculative decoding: a STEP may
 * carry `pos` (the position of its first token): a longer history first
 * drops positions >= pos (never prompt positions, never while a step is in
 * flight) from the history and the KV cache; a speculative session's STEP
 * [t, d1..dk] wants the logits of all its rows, and the last stage verifies
 * the drafts (spec_verify: the emitted tokens are those plain decoding
 * draws), keeps only the emitted tokens in the history and the cache, and
 * proposes the next drafts (prompt n-grams, or k shallow passes of the
 * first exit_layers layers) in the RESULT.  Guidance: with scale > 0 the
 * session has a second KV sequence, the branch, whose rows run in the same
 * forward pass, interleaved with the main rows: the same tokens with the
 * listed heads perturbed (on stages the tensor frames hold the main rows,
 * then the branch rows), or the negative prompt (BOS first) followed by the
 * generated tokens; the last stage samples from guidance_combine(l, l_b).
 * The branch's blocks count for admission and preemption.  Early exit:
 * sessions with the same exit configuration share a forward pass (a pass
 * runs one configuration; round-robin decides which), RESULT exit_layer
 * says where the token was decided.  Early exit, "exit" drafts and
 * negative prompts need a whole-model worker.
 *
 * Invariants.  A session's history holds every token fed to it (prompt and
 * steps, less dropped drafts), hist[0, n_done) are in its KV cache (n_done
 * == seq.n_pos; 0 while it waits), and a step's result samples the token at
 * position `end` from hist[0, end), so a replayed or preempted history
 * samples the same tokens.  A branch holds positions [0, bn_done) of its
 * own history (branch position = main position + off, off = n_neg -
 * n_prompt for a negative prompt, 0 for perturbation) and is never ahead of
 * the main sequence's alignment.
 * Outputs carry the epoch of the registration they belong to (set by
 * SCHED_CMD_RESET), so the loop drops results of sessions that a
 * reconnect has forgotten.
 *
 * Implementation: sched-msg.c (decoders), sched-session.c (sessions,
 * admission, preemption), sched-step.c (the step), scheduler.c (the compute
 * thread); what they share is in sched-internal.h.  Log lines go through the
 * base logger (log.h). */
#ifndef ITT_SCHED_H
#define ITT_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "err.h"
#include "kv-cache.h"
#include "sampler.h"
#include "speculative.h"
#include "tokenizer.h"

/* ---- configuration and model shape ------------------------------------ */

struct sched_config {
	const char *model_path;
	uint32_t first, last;  /* layer range; last 0 = all */
	int threads;           /* compute threads */
	uint32_t max_sessions; /* open sessions at most; more OPENs get OVERLOADED */
	uint32_t batch_tokens; /* rows per forward step (token budget) */
	uint32_t
	    max_batch_tokens; /* buffers are sized for this; batch_tokens <= it (0: batch_tokens) */
	size_t kv_bytes;      /* KV cache budget */
	enum kv_type kv_type; /* element type of the KV cache */
	uint32_t max_waiting; /* OPENs waiting for KV memory at most; more get OVERLOADED */
	bool prefix_cache;    /* share the KV blocks of common prompt prefixes */
	bool act_quant_off;   /* engine_config.act_quant false: float activations */
	uint32_t slow_ms;     /* debug: sleep this long after every step */
	uint32_t batch_wait_us; /* gather window: see sched_gather in scheduler.c */
	const char *chat_template; /* a chat template name replacing the model's, or NULL */
};

#define SCHED_DEFAULT_MAX_SESSIONS 64
#define SCHED_DEFAULT_BATCH_TOKENS 256
#define SCHED_DEFAULT_KV_MB        256
#define SCHED_DEFAULT_MAX_WAITING  64
/* Steps of one session queued before their results, at most. */
#define SCHED_MAX_INFLIGHT 16
/* Longest piece sent in a RESULT. */
#define SCHED_MAX_PIECE 256
/* Bounds of the live knobs (SETTINGS). */
#define SCHED_MAX_THREADS 64
#define SCHED_MAX_SLOW_MS 10000
/* End-of-generation tokens besides EOS a worker announces (as many as the
 * broker takes: BROKER_MAX_EOG). */
#define SCHED_MAX_EOG 16

/* What the decoders need to know about the model. */
struct sched_info {
	uint32_t vocab, ctx_len, dim;
	uint32_t n_layers, first, last; /* layers [first, last) of n_layers */
	uint32_t n_heads;               /* query heads per layer (guidance heads) */
	int32_t eos, bos;               /* -1: none */
	int32_t eog[SCHED_MAX_EOG];     /* other tokens that end generation (HELLO) */
	uint32_t n_eog;
	uint32_t kv_blocks, kv_block;   /* KV cache: blocks, positions per block */
	const tokenizer_t *tok;         /* NULL: text prompts are refused */
	struct chat_template chat;      /* the model's chat template (chat.h: detected, or the
	                                 * chatml fallback when the file has none) */
	uint64_t weight_bytes;          /* bytes of every tensor of the file (all layers) */
};

/* The live knobs (Settings in itt.proto). */
struct sched_settings {
	uint32_t threads, batch_tokens, slow_ms;
};

/* ---- commands (loop -> compute) ---------------------------------------- */

enum sched_cmd_kind {
	SCHED_CMD_OPEN,
	SCHED_CMD_STEP,
	SCHED_CMD_CLOSE,
	SCHED_CMD_RESET,    /* forget every session; outputs from now carry epoch */
	SCHED_CMD_SETTINGS, /* change the knobs present (validated) */
	SCHED_CMD_ASSIGN,   /* drop every session (outputs carry epoch), load [first, last) */
};

/* Early-exit test layers per request, at most (VALIDATE_MAX_EXITS). */
#define SCHED_MAX_EXITS 64

/* An OPEN's techniques, decoded and checked against the worker. */
struct sched_tech {
	/* guidance, active when g_scale > 0 */
	float g_scale, g_blend;
	uint8_t *g_mask;         /* [n_layers * n_heads] perturbed heads, owned (or NULL) */
	char *g_neg;             /* negative prompt text, owned; tokenized by sched_prepare_open */
	int32_t *g_neg_tokens;   /* [n_neg] (BOS first), owned */
	uint32_t n_neg;
	/* speculative decoding */
	bool spec, spec_exit;    /* drafts from n-grams, or from the first spec_exit_layers */
	uint32_t spec_max, spec_exit_layers, ngram_min, ngram_max;
	/* early exit */
	bool ee;
	float ee_threshold;
	uint32_t ee_layers[SCHED_MAX_EXITS], n_ee;
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
	bool chat;                 /* OPEN: prompt is a rendered conversation (special tokens
	                            * are parsed; BOS only when the rendering has none) */
	struct chat_template chat_tmpl;     /* OPEN with chat: the template it was rendered with */
	int32_t stop_tokens[CHAT_MAX_STOP]; /* OPEN with chat: its end-of-turn ids, set by
	                                     * sched_prepare_open */
	uint32_t n_stop_tokens;
	struct sampler_params sp;  /* OPEN; sp.bias points at bias */
	struct sampler_bias *bias; /* [sp.n_bias], owned */
	float *hidden;             /* OPEN/STEP on a stage > 0: [hidden_rows][dim] F32, owned */
	uint32_t hidden_rows;      /* n_tokens, or 2 n_tokens with a guidance branch (main
	                            * rows, then branch rows) */
	bool has_pos;              /* STEP: pos was given */
	uint32_t pos;              /* STEP: position of tokens[0] */
	struct sched_tech tech;    /* OPEN */
	int reply_dtype;           /* OPEN: ITT__DTYPE__* of a non-last stage's RESULT rows */
	uint32_t epoch;            /* RESET, ASSIGN */
	bool has_threads, has_batch_tokens, has_slow_ms; /* SETTINGS: the knobs present */
	struct sched_settings set;                       /* SETTINGS: their values */
	uint32_t first, last;                            /* ASSIGN: the layer range */
	struct sched_cmd *next;
};

/* Each decoder returns 0 and a new command in *out, or an itt code
 * (ITT__CODE__*) with reason set; *session_id is set whenever the body
 * decoded far enough to name one (else 0), so an ERROR can carry it.
 * tensor/tensor_len: the message's 4th frame (NULL: none).  On a stage > 0
 * OPEN/STEP need tokens, `hidden` and a tensor of n_tokens rows of dim F32
 * or F16 elements (converted to F32 into c->hidden) — 2 n_tokens rows for a
 * session with a perturbation branch (an OPEN says so; a STEP may have
 * either, the compute thread checks it against the session); on stage 0 a
 * tensor or `hidden` is refused; a text prompt is only valid on stage 0.
 * An OPEN with messages (a conversation, stage 0 only) is rendered here
 * with the named chat template or the model's (info->chat), into the text
 * prompt that sched_prepare_open tokenizes; a template that is unknown or
 * refuses the conversation is INVALID_ARGUMENT.
 * OPEN's techniques pass validate_techniques with this model's n_layers and
 * n_heads, and early exit, "exit" drafts and a negative prompt need a
 * whole-model worker (else INVALID_ARGUMENT). */
int sched_decode_open(const uint8_t *body, size_t len, const void *tensor, size_t tensor_len,
                      const struct sched_info *info, struct sched_cmd **out, uint64_t *session_id,
                      struct itt_err *err);
int sched_decode_step(const uint8_t *body, size_t len, const void *tensor, size_t tensor_len,
                      const struct sched_info *info, struct sched_cmd **out, uint64_t *session_id,
                      struct itt_err *err);
/* SETTINGS: threads 1..SCHED_MAX_THREADS, batch_tokens 1..max_batch_tokens,
 * slow_ms 0..SCHED_MAX_SLOW_MS; any value out of range refuses the whole
 * message (INVALID_ARGUMENT naming the knob). */
int sched_decode_settings(const uint8_t *body, size_t len, uint32_t max_batch_tokens,
                          struct sched_cmd **out, struct itt_err *err);
/* ASSIGN: model must be `model` and 0 <= first < last <= info->n_layers. */
int sched_decode_assign(const uint8_t *body, size_t len, const struct sched_info *info,
                        const char *model, struct sched_cmd **out, struct itt_err *err);
int sched_decode_close(const uint8_t *body, size_t len, struct sched_cmd **out,
                       uint64_t *session_id, struct itt_err *err);
/* Tokenizes an OPEN's text prompt (BOS first) into its tokens, on the
 * compute thread; 0 (also when there is no prompt), or a code with reason
 * (INVALID_ARGUMENT when the prompt does not fit the context).  A rendered
 * conversation is tokenized with special-token parsing (BOS added only
 * when the text does not begin with it), and its end-of-turn ids are looked
 * up into c->stop_tokens. */
int sched_prepare_open(const struct sched_info *info, struct sched_cmd *c, struct itt_err *err);
struct sched_cmd *sched_cmd_new(enum sched_cmd_kind kind);
void sched_cmd_free(struct sched_cmd **c);

/* ---- outputs (compute -> loop) ------------------------------------------ */

enum sched_out_kind {
	SCHED_OUT_RESULT,
	SCHED_OUT_ERROR,
	SCHED_OUT_LOADED, /* an ASSIGN finished: info holds the range in force */
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
	int32_t stop_tokens[CHAT_MAX_STOP]; /* step 0 of a conversation: its end-of-turn ids */
	uint32_t n_stop_tokens;
	bool has_token;    /* last stage: token and piece are set */
	/* speculative: every token emitted (token is the last), their pieces,
	 * and the drafts to feed next */
	uint32_t n_tokens;
	int32_t tokens[SPEC_MAX_DRAFT + 1];
	char pieces[SPEC_MAX_DRAFT + 1][SCHED_MAX_PIECE];
	size_t piece_lens[SPEC_MAX_DRAFT + 1];
	uint32_t n_draft;
	int32_t draft[SPEC_MAX_DRAFT];
	bool has_exit_layer; /* early exit: the layer after which token was decided */
	uint32_t exit_layer;
	void *tensor;      /* non-last stage: [tensor_rows][tensor_cols] of tensor_dtype, owned */
	size_t tensor_len; /* bytes */
	int tensor_dtype;  /* ITT__DTYPE__* */
	uint32_t tensor_rows, tensor_cols;
	/* LOADED */
	bool loaded;            /* the assigned range is in force (else the old one is) */
	struct sched_info info; /* the range in force; info.tok valid until the next ASSIGN */
	/* ERROR: its protocol code (ITT__CODE__*) and reason; LOADED: why it
	 * failed (msg only) */
	struct itt_err err;
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
	uint32_t kv_idle;               /* blocks only the prefix index holds (evictable) */
	uint64_t preemptions;           /* sessions that lost their blocks to another */
	uint64_t prefix_lookups;        /* admissions that looked up the prefix index */
	uint64_t prefix_hits;           /* of them, those that shared blocks */
	uint64_t prefix_blocks;         /* blocks shared in total */
	double step_ms;                 /* wall time of all steps (slow_ms included), in total */
	uint64_t spec_proposed;         /* speculative drafts proposed (verified) */
	uint64_t spec_accepted;         /* of them, accepted */
	struct sched_settings settings; /* in force */
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
/* True after an ASSIGN could load neither the new range nor the old one:
 * the scheduler has no engine and the worker must stop. */
bool sched_broken(sched_t *s);
/* Stops and joins the compute thread (after its current step). */
void sched_stop(sched_t *s);
void sched_destroy(sched_t **s);

#endif
