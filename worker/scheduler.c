/* scheduler (functions sched_*): sessions and the step scheduler of the
 * worker's compute thread, and the decoders of OPEN/STEP/CLOSE bodies (see
 * scheduler.h for the contract).
 *
 * Threads: sched_decode_* run on the loop thread and only read the model's
 * shape and its (immutable) tokenizer.  The inbox and the outbox are the only
 * state both threads touch, each under its own mutex.  Everything else here
 * (engine, sessions, round-robin cursor, epoch) belongs to the compute
 * thread. */
#include "scheduler.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "guidance.h"
#include "itt.pb-c.h"
#include "validate.h"
#include "wire.h"

/* ---- logging ------------------------------------------------------------ */

int sched_log_level = SCHED_LOG_INFO;

static void sched_log_stderr(int level, const char *line)
{
	static const char *names[] = {"error", "warn", "info", "debug"};
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	fprintf(stderr, "%02d:%02d:%02d.%03ld itt-worker %s: %s\n", tm.tm_hour, tm.tm_min,
	        tm.tm_sec, ts.tv_nsec / 1000000,
	        names[level < 0   ? 0
	              : level > 3 ? 3
	                          : level],
	        line);
}

void (*sched_log_sink)(int level, const char *line) = sched_log_stderr;

void sched_log_write(int level, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	sched_log_sink(level, line);
}

int sched_log_parse(const char *name)
{
	static const char *names[] = {"error", "warn", "info", "debug"};
	for (int i = 0; i < 4; i++)
		if (!strcmp(name, names[i]))
			return i;
	return -1;
}

/* ---- decoders ----------------------------------------------------------- */

struct sched_cmd *sched_cmd_new(enum sched_cmd_kind kind)
{
	struct sched_cmd *c = calloc(1, sizeof *c);
	if (c)
		c->kind = kind;
	return c;
}

void sched_cmd_free(struct sched_cmd **cp)
{
	struct sched_cmd *c = cp ? *cp : NULL;
	if (!c)
		return;
	free(c->tokens);
	free(c->bias);
	free(c->prompt);
	free(c->hidden);
	free(c->tech.g_mask);
	free(c->tech.g_neg);
	free(c->tech.g_neg_tokens);
	free(c);
	*cp = NULL;
}

/* Checks ids against the vocabulary and copies them into a new array. */
static int sched_copy_tokens(const int32_t *ids, size_t n, uint32_t vocab, const char *field,
                             int32_t **out, struct itt_err *err)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || (uint32_t)ids[i] >= vocab)
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			                 "%s[%zu] = %d is not a token id (vocab %u)", field, i,
			                 ids[i], vocab);
	*out = malloc((n ? n : 1) * sizeof **out);
	if (!*out)
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory for %zu tokens",
		                 n);
	memcpy(*out, ids, n * sizeof **out);
	return 0;
}

/* The hidden-state input of an OPEN/STEP of n_tokens tokens: none on stage
 * 0; on a later stage a tensor of [n_tokens][dim] F32 or F16 elements (or
 * [alt_rows][dim] when alt_rows is not 0), returned as F32 in *out (owned by
 * the caller), its row count in *rows_out. */
static int sched_decode_hidden(const Itt__TensorInfo *ti, const void *tensor, size_t tensor_len,
                               uint32_t n_tokens, uint32_t alt_rows,
                               const struct sched_info *info, float **out, uint32_t *rows_out,
                               struct itt_err *err)
{
	*out = NULL;
	*rows_out = 0;
	if (info->first == 0) {
		if (ti || tensor)
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "hidden: this worker holds layers [0, %u), the first stage, "
			    "which takes no tensor",
			    info->last);
		return 0;
	}
	if (alt_rows && ti && ti->has_rows && ti->rows == alt_rows)
		n_tokens = alt_rows;
	int rc = wire_check_tensor(ti, tensor, tensor_len, n_tokens, 0, info->dim, "hidden", err);
	if (rc)
		return rc;
	*rows_out = n_tokens;
	size_t n = (size_t)n_tokens * info->dim;
	if (!(*out = malloc(n * sizeof **out)))
		return itt_err_set(err, ITT__CODE__INTERNAL,
		                 "out of memory for %u hidden rows", n_tokens);
	if (ti->dtype == ITT__DTYPE__F32) {
		memcpy(*out, tensor, n * sizeof **out);
		return 0;
	}
	/* F16: the frame need not be aligned for uint16_t; copy, then widen. */
	uint16_t *h = malloc(n * sizeof *h);
	if (!h) {
		free(*out);
		*out = NULL;
		return itt_err_set(err, ITT__CODE__INTERNAL,
		                 "out of memory for %u hidden rows", n_tokens);
	}
	memcpy(h, tensor, n * sizeof *h);
	kv_fp16_to_fp32(*out, h, n);
	free(h);
	return 0;
}

/* A stage after the first computes on the previous stage's output: it
 * needs token ids (for the history) and cannot tokenize a prompt. */
static int sched_check_stage_input(const struct sched_info *info, size_t prompt_len,
                                   size_t n_tokens, struct itt_err *err)
{
	if (info->first == 0 || (prompt_len == 0 && n_tokens > 0))
		return 0;
	return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
	                 "this worker holds layers [%u, %u) of %u: a stage after the first takes "
	                 "tokens with their hidden states, not a text prompt",
	                 info->first, info->last, info->n_layers);
}

/* An OPEN's techniques: validated against this model's shape (the broker
 * did so against the model's, this repeats it for this worker), then what
 * this worker's range can run. */
static int sched_decode_tech(const Itt__SessionOpen *m, const struct sched_info *info,
                             struct sched_tech *t, struct itt_err *err)
{
	int rc = validate_techniques(m->guidance, m->speculative, m->early_exit, info->n_layers,
	                             info->n_heads, false, err);
	if (rc)
		return rc;
	const bool whole = info->first == 0 && info->last == info->n_layers;
	const Itt__Guidance *g = m->guidance;
	if (g && g->scale > 0) {
		t->g_scale = g->scale;
		t->g_blend = g->has_blend ? g->blend : 1.0f;
		if (g->negative_prompt && *g->negative_prompt) {
			if (!whole)
				return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				                 "guidance.negative_prompt needs a whole-model worker; "
				                 "this one holds layers [%u, %u) of %u",
				                 info->first, info->last, info->n_layers);
			if (!info->tok)
				return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				                 "guidance.negative_prompt: this model has no tokenizer");
			if (!(t->g_neg = strdup(g->negative_prompt)))
				return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		} else {
			if (!info->n_heads || !g->n_heads)
				return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
				                 "guidance.heads: none given (or the model's head "
				                 "count is unknown)");
			if (!(t->g_mask = calloc((size_t)info->n_layers * info->n_heads, 1)))
				return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
			for (size_t i = 0; i < g->n_heads; i++) {
				uint32_t l, h;
				if (validate_parse_head(g->heads[i], &l, &h) < 0 ||
				    l >= info->n_layers || h >= info->n_heads)
					return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
					                 "guidance.heads[%zu] is not a head of this "
					                 "model",
					                 i);
				t->g_mask[(size_t)l * info->n_heads + h] = 1;
			}
		}
	}
	if (m->speculative) {
		const Itt__Speculative *sp = m->speculative;
		t->spec = true;
		t->spec_exit = sp->draft && !strcmp(sp->draft, "exit");
		t->spec_max = sp->max_draft;
		t->spec_exit_layers = sp->exit_layers;
		t->ngram_min = sp->has_ngram_min ? sp->ngram_min : 1;
		t->ngram_max = sp->has_ngram_max ? sp->ngram_max : 3;
		if (t->spec_exit && !whole)
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			                 "speculative.draft \"exit\" needs a whole-model worker; this "
			                 "one holds layers [%u, %u) of %u",
			                 info->first, info->last, info->n_layers);
	}
	if (m->early_exit) {
		const Itt__EarlyExit *ee = m->early_exit;
		if (!whole)
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			                 "early_exit needs a whole-model worker; this one holds layers "
			                 "[%u, %u) of %u",
			                 info->first, info->last, info->n_layers);
		if (t->g_scale > 0)
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			                 "early_exit does not combine with guidance (scale > 0)");
		t->ee = true;
		t->ee_threshold = ee->threshold;
		t->n_ee = (uint32_t)(ee->n_layers < SCHED_MAX_EXITS ? ee->n_layers : SCHED_MAX_EXITS);
		memcpy(t->ee_layers, ee->layers, t->n_ee * sizeof *t->ee_layers);
	}
	return 0;
}

int sched_decode_open(const uint8_t *body, size_t len, const void *tensor, size_t tensor_len,
                      const struct sched_info *info, struct sched_cmd **out, uint64_t *session_id,
                      struct itt_err *err)
{
	struct wire_limits lim;
	struct sched_cmd *c = NULL;
	int rc;

	*out = NULL;
	*session_id = 0;
	wire_limits_default(&lim);
	Itt__SessionOpen *m = itt__session_open__unpack(NULL, len, body);
	if (!m)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "malformed SessionOpen body");
	*session_id = m->session_id;
	size_t plen = m->prompt ? strlen(m->prompt) : 0;
	if (m->has_reply_dtype && !wire_dtype_size(m->reply_dtype)) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "reply_dtype %d is not F32 or F16", (int)m->reply_dtype);
		goto out;
	}
	if ((rc = sched_check_stage_input(info, plen, m->n_tokens, err)))
		goto out;
	if (plen && m->n_tokens) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "prompt and tokens are exclusive");
		goto out;
	}
	if (plen > lim.max_prompt_bytes) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "prompt has %zu bytes; at most %u", plen, lim.max_prompt_bytes);
		goto out;
	}
	if (m->n_tokens > lim.max_prompt_tokens) {
		rc =
		    itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		              "tokens has %zu ids; at most %u", m->n_tokens, lim.max_prompt_tokens);
		goto out;
	}
	if (!(c = sched_cmd_new(SCHED_CMD_OPEN))) {
		rc = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		goto out;
	}
	c->session_id = m->session_id;
	c->priority = m->has_priority ? m->priority : 0;
	c->reply_dtype = m->has_reply_dtype ? (int)m->reply_dtype : ITT__DTYPE__F32;
	size_t nb = m->sampling ? m->sampling->n_logit_bias : 0;
	size_t bias_cap = nb <= lim.max_bias ? nb : 0;
	if (!(c->bias = malloc((bias_cap ? bias_cap : 1) * sizeof *c->bias))) {
		rc = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		goto out;
	}
	rc = validate_sampling(m->sampling, info->vocab, &lim, &c->sp, c->bias, bias_cap, err);
	if (rc)
		goto out;
	if ((rc = sched_decode_tech(m, info, &c->tech, err)))
		goto out;
	/* a perturbation branch travels with the main rows across stages */
	const uint32_t mult = c->tech.g_mask ? 2 : 1;
	if (m->n_tokens) {
		if ((rc = sched_copy_tokens(m->tokens, m->n_tokens, info->vocab, "tokens",
		                            &c->tokens, err)))
			goto out;
		c->n_tokens = (uint32_t)m->n_tokens;
		if (m->n_prompt > c->n_tokens) {
			rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			               "n_prompt %u exceeds the %u tokens", m->n_prompt,
			               c->n_tokens);
			goto out;
		}
		c->n_prompt = m->n_prompt ? m->n_prompt : c->n_tokens;
		if (c->n_tokens < info->ctx_len &&
		    (rc = sched_decode_hidden(m->hidden, tensor, tensor_len, c->n_tokens * mult, 0,
		                              info, &c->hidden, &c->hidden_rows, err)))
			goto out;
	} else {
		/* A text prompt (or none: BOS alone), tokenized later on the
		 * compute thread (sched_prepare_open): a 256 KiB prompt takes tens
		 * of milliseconds, which the loop thread must not spend.  Only
		 * stage 0 gets here (sched_check_stage_input). */
		if ((rc = sched_decode_hidden(m->hidden, tensor, tensor_len, 0, 0, info, &c->hidden,
		                              &c->hidden_rows, err)))
			goto out;
		if (!info->tok) {
			rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			    "this model has no tokenizer; send tokens instead of a prompt");
			goto out;
		}
		if (!(c->prompt = malloc(plen + 1))) {
			rc = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
			goto out;
		}
		memcpy(c->prompt, plen ? m->prompt : "", plen + 1);
		c->prompt_len = plen;
	}
	if (!c->prompt && c->n_tokens >= info->ctx_len) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "tokens: %u ids do not fit the context of %u (at most %u)",
		               c->n_tokens, info->ctx_len, info->ctx_len ? info->ctx_len - 1 : 0);
		goto out;
	}
	*out = c;
	c = NULL;
out:
	sched_cmd_free(&c);
	itt__session_open__free_unpacked(m, NULL);
	return rc;
}

/* Tokenizes the negative prompt of a guidance (BOS first). */
static int sched_prepare_negative(const struct sched_info *info, struct sched_tech *t,
                                  struct itt_err *err)
{
	struct itt_err te = {0};
	size_t n = 0;
	if (!t->g_neg)
		return 0;
	if (!info->tok)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "guidance.negative_prompt: this model has no tokenizer");
	free(t->g_neg_tokens);
	if (!(t->g_neg_tokens = malloc(((size_t)info->ctx_len + 1) * sizeof *t->g_neg_tokens)))
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
	int trc = tokenizer_encode(info->tok, t->g_neg, strlen(t->g_neg), true, t->g_neg_tokens,
	                           info->ctx_len, &n, &te);
	if (trc < 0 && trc != ITT_E_FULL)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "guidance.negative_prompt: %s", te.msg);
	if (n == 0 || n >= info->ctx_len)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "guidance.negative_prompt of %zu tokens does not fit the context "
		                 "of %u",
		                 n, info->ctx_len);
	t->n_neg = (uint32_t)n;
	free(t->g_neg);
	t->g_neg = NULL;
	return 0;
}

int sched_prepare_open(const struct sched_info *info, struct sched_cmd *c, struct itt_err *err)
{
	struct itt_err te = {0};
	size_t n = 0;
	int rc;

	if ((rc = sched_prepare_negative(info, &c->tech, err)))
		return rc;
	if (!c->prompt)
		return 0;
	if (!info->tok)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "this model has no tokenizer; send tokens instead of a prompt");
	free(c->tokens);
	if (!(c->tokens = malloc(((size_t)info->ctx_len + 1) * sizeof *c->tokens)))
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
	int trc = tokenizer_encode(info->tok, c->prompt, c->prompt_len, true, c->tokens,
	                           info->ctx_len, &n, &te);
	if (trc < 0 && trc != ITT_E_FULL)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "prompt: %s", te.msg);
	if (n >= info->ctx_len)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "prompt of %zu tokens does not fit the context of %u", n,
		                 info->ctx_len);
	if (n == 0)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "prompt: no tokens (the vocabulary has no BOS)");
	c->n_tokens = c->n_prompt = (uint32_t)n;
	c->tokenized = true;
	free(c->prompt);
	c->prompt = NULL;
	c->prompt_len = 0;
	return 0;
}

int sched_decode_step(const uint8_t *body, size_t len, const void *tensor, size_t tensor_len,
                      const struct sched_info *info, struct sched_cmd **out, uint64_t *session_id,
                      struct itt_err *err)
{
	struct sched_cmd *c = NULL;
	int rc;

	*out = NULL;
	*session_id = 0;
	Itt__StepRequest *m = itt__step_request__unpack(NULL, len, body);
	if (!m)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "malformed StepRequest body");
	*session_id = m->session_id;
	if (m->step == 0) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "step must be 1 or more (OPEN is step 0)");
		goto out;
	}
	if (m->n_tokens == 0 || m->n_tokens >= info->ctx_len) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "tokens has %zu ids; a step takes 1..%u", m->n_tokens,
		               info->ctx_len ? info->ctx_len - 1 : 0);
		goto out;
	}
	if (!(c = sched_cmd_new(SCHED_CMD_STEP))) {
		rc = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		goto out;
	}
	c->session_id = m->session_id;
	c->step = m->step;
	if ((rc = sched_copy_tokens(m->tokens, m->n_tokens, info->vocab, "tokens", &c->tokens, err)))
		goto out;
	c->n_tokens = (uint32_t)m->n_tokens;
	c->has_pos = m->has_pos;
	c->pos = m->pos;
	if (c->has_pos && c->pos >= info->ctx_len) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "pos %u is outside the context of %u", c->pos, info->ctx_len);
		goto out;
	}
	if ((rc = sched_decode_hidden(m->hidden, tensor, tensor_len, c->n_tokens, 2 * c->n_tokens,
	                              info, &c->hidden, &c->hidden_rows, err)))
		goto out;
	*out = c;
	c = NULL;
out:
	sched_cmd_free(&c);
	itt__step_request__free_unpacked(m, NULL);
	return rc;
}

int sched_decode_settings(const uint8_t *body, size_t len, uint32_t max_batch_tokens,
                          struct sched_cmd **out, struct itt_err *err)
{
	int rc = 0;
	*out = NULL;
	Itt__Settings *m = itt__settings__unpack(NULL, len, body);
	if (!m)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "malformed Settings body");
	if (m->has_threads && (m->threads < 1 || m->threads > SCHED_MAX_THREADS))
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "threads must be in [1, %u], got %u", SCHED_MAX_THREADS, m->threads);
	else if (m->has_batch_tokens && (m->batch_tokens < 1 || m->batch_tokens > max_batch_tokens))
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "batch_tokens must be in [1, %u] (max_batch_tokens), got %u",
		               max_batch_tokens, m->batch_tokens);
	else if (m->has_slow_ms && m->slow_ms > SCHED_MAX_SLOW_MS)
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "slow_ms must be in [0, %u], got %u", SCHED_MAX_SLOW_MS, m->slow_ms);
	else if (!(*out = sched_cmd_new(SCHED_CMD_SETTINGS)))
		rc = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
	if (*out) {
		(*out)->has_threads = m->has_threads;
		(*out)->has_batch_tokens = m->has_batch_tokens;
		(*out)->has_slow_ms = m->has_slow_ms;
		(*out)->set = (struct sched_settings){m->threads, m->batch_tokens, m->slow_ms};
	}
	itt__settings__free_unpacked(m, NULL);
	return rc;
}

int sched_decode_assign(const uint8_t *body, size_t len, const struct sched_info *info,
                        const char *model, struct sched_cmd **out, struct itt_err *err)
{
	int rc = 0;
	*out = NULL;
	Itt__Assign *m = itt__assign__unpack(NULL, len, body);
	if (!m)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "malformed Assign body");
	if (!m->model || strcmp(m->model, model))
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "model %.128s: this worker holds %s", m->model ? m->model : "(none)",
		               model);
	else if (!m->has_layer_last || m->layer_first >= m->layer_last ||
	         m->layer_last > info->n_layers)
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		               "layers [%u, %u): expected 0 <= layer_first < layer_last <= %u",
		               m->layer_first, m->layer_last, info->n_layers);
	else if (!(*out = sched_cmd_new(SCHED_CMD_ASSIGN)))
		rc = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
	else {
		(*out)->first = m->layer_first;
		(*out)->last = m->layer_last;
	}
	itt__assign__free_unpacked(m, NULL);
	return rc;
}

int sched_decode_close(const uint8_t *body, size_t len, struct sched_cmd **out,
                       uint64_t *session_id, struct itt_err *err)
{
	*out = NULL;
	*session_id = 0;
	Itt__SessionClose *m = itt__session_close__unpack(NULL, len, body);
	if (!m)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "malformed SessionClose body");
	*session_id = m->session_id;
	itt__session_close__free_unpacked(m, NULL);
	if (!(*out = sched_cmd_new(SCHED_CMD_CLOSE)))
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
	(*out)->session_id = *session_id;
	return 0;
}

void sched_out_free_list(struct sched_out *o)
{
	while (o) {
		struct sched_out *next = o->next;
		free(o->prompt_tokens);
		free(o->tensor);
		free(o);
		o = next;
	}
}

/* ---- sessions ----------------------------------------------------------- */

/* A queued step: its result is due once hist[0, end) is in the cache; it
 * fed hist[start, end); the rows of its last n_logits positions want logits
 * (1; a speculative step's every row: [t, drafts...]). */
struct sched_mark {
	uint32_t step;
	uint32_t end;
	uint32_t start;
	uint32_t n_logits;
};

struct sched_session {
	uint64_t id;
	int32_t priority;   /* SessionOpen.priority: higher is served first, preempted last */
	uint64_t ticket;    /* arrival order; a preempted session keeps its ticket */
	uint64_t admitted;  /* admission order (victims: the latest admitted first) */
	bool running;       /* admitted, holds KV blocks; else in the wait queue */
	uint32_t preempted; /* times it lost its blocks */
	double last_out_ms; /* when its last result was queued (gather window) */
	struct kv_seq seq;
	sampler_t *smp;
	int32_t *hist; /* [cap] every token fed, prompt first */
	uint32_t n_hist, cap;
	uint32_t n_done;   /* hist[0, n_done) are in the cache (== seq.n_pos) */
	uint32_t n_prompt; /* prompt part of hist */
	bool tokenized;    /* the prompt came as text: step 0 reports it */
	uint64_t *keys;    /* [n_keys] prefix-index chain keys of the full prompt blocks */
	uint32_t n_keys;
	uint32_t n_reg; /* prompt blocks entered into the prefix index */
	struct sched_mark marks[SCHED_MAX_INFLIGHT]; /* ring, oldest at head */
	uint32_t mark_head, n_marks;
	/* Stages.  A stage > 0 keeps the input rows of positions [hid_start,
	 * n_hist) (hid_start <= n_done: rows already computed are dropped when
	 * new ones come); a non-last stage collects the output rows of
	 * positions [out_start, n_done), out_start being the start of the
	 * oldest step it owes. */
	float *hid; /* [hid_cap][dim] */
	uint32_t hid_start, hid_cap;
	float *outr; /* [out_cap][dim] */
	uint32_t out_start, out_cap;
	int reply_dtype; /* ITT__DTYPE__* of its RESULT rows */
	/* Techniques.  buffered: the logits of the head mark's rows are kept
	 * in lg (and the branch's in blg) until the mark completes. */
	struct sched_tech tech;
	bool buffered;
	float *lg, *blg;        /* [SPEC_MAX_DRAFT + 1 or 1][vocab] */
	uint32_t lg_exit[SPEC_MAX_DRAFT + 1]; /* early exit: where each row stopped */
	struct spec_ctl ctl;    /* speculative: adaptive draft length */
	uint64_t spec_proposed, spec_accepted, spec_steps;
	uint32_t *ee_count; /* early exit: [n_layers] tokens decided after each layer */
	/* guidance branch (g_kind 1: perturbed heads, 2: negative prompt) */
	int g_kind;
	struct forward_perturb pert;
	struct kv_seq bseq;
	int32_t off;      /* branch position = main position + off */
	uint32_t bn_done; /* branch positions in its cache (== bseq.n_pos) */
	float *bhid;      /* stage > 0: branch input rows, as hid */
	float *boutr;     /* non-last stage: branch output rows, as outr */
	uint32_t bhid_cap, bout_cap;
};

struct sched {
	struct sched_config cfg;
	struct sched_info info;
	struct engine *e;  /* NULL only when broken */
	uint32_t block;    /* KV positions per block */
	uint32_t max_rows; /* rows per step at most (max_batch_tokens) */
	bool stage;        /* a partial range: no prefix sharing, no preemption */
	bool prefix_cache; /* as configured (cfg.prefix_cache: in force, off on a stage) */
	bool broken;       /* an ASSIGN left no engine (written under out_mu) */

	/* compute thread only */
	struct sched_session **sess; /* [max_sessions], first n_sess used */
	uint32_t n_sess;
	struct sched_session **waitq; /* [max_sessions] by (priority desc, ticket asc) */
	uint32_t n_wait;
	uint64_t next_ticket, next_admit;
	uint32_t rr; /* round-robin start */
	uint32_t epoch;
	int32_t *row_tok;                            /* [max_rows] */
	uint32_t *row_pos;                           /* [max_rows] */
	struct kv_seq **row_seq;                     /* [max_rows] */
	uint8_t *row_want;                           /* [max_rows] */
	struct sched_session **row_sess;             /* [max_rows] session of each row */
	uint8_t *row_br;                             /* [max_rows] a guidance branch row */
	uint32_t *row_grp;                           /* [max_rows] its group */
	const struct forward_perturb **row_pert;     /* [max_rows] */
	uint32_t *row_exit;                          /* [max_rows] early exit: where it stopped */
	float *row_hid;                              /* [max_rows][dim] input rows (stage > 0) */
	struct sched_session **grp_sess;             /* [max_sessions] sessions in this batch */
	uint32_t *grp_rows;                          /* [max_sessions] their main row counts */
	uint32_t *grp_brows;                         /* [max_sessions] their branch row counts */
	struct sched_session *pass_exit;             /* the pass's early-exit owner (or NULL) */
	uint64_t spec_proposed, spec_accepted;       /* since start */
	uint64_t preemptions;                        /* since start */
	uint64_t logged_proposed;                    /* spec_proposed at the last summary */
	uint64_t logged_preemptions, logged_lookups; /* at the last summary line */
	double logged_ms;                            /* its time */

	/* inbox: loop -> compute */
	pthread_mutex_t in_mu;
	pthread_cond_t in_cv;
	struct sched_cmd *in_head, *in_tail;
	bool stop;

	/* outbox: compute -> loop, and stats */
	pthread_mutex_t out_mu;
	struct sched_out *out_head, *out_tail;
	struct sched_stats stats;
	bool out_new; /* outputs queued since the last notify */

	pthread_t thread;
	bool started;
	void (*notify)(void *arg);
	void *notify_arg;
};

static uint32_t sched_blocks(const sched_t *s, uint32_t n_pos)
{
	return (uint32_t)(((uint64_t)n_pos + s->block - 1) / s->block);
}

/* Positions of a session's guidance branch (0: none). */
static uint32_t sched_bn_len(const struct sched_session *ss)
{
	return ss->g_kind ? (uint32_t)((int64_t)ss->n_hist + ss->off) : 0;
}

/* Blocks the whole history takes: the main sequence and the branch. */
static uint32_t sched_need(const sched_t *s, const struct sched_session *ss)
{
	return sched_blocks(s, ss->n_hist) + sched_blocks(s, sched_bn_len(ss));
}

/* Blocks a running session will still take for the tokens it was given. */
static uint32_t sched_promised(const sched_t *s, const struct sched_session *ss)
{
	uint32_t need = sched_blocks(s, ss->n_hist), bneed = sched_blocks(s, sched_bn_len(ss));
	if (!ss->running)
		return 0;
	return (need > ss->seq.n_blocks ? need - ss->seq.n_blocks : 0) +
	       (bneed > ss->bseq.n_blocks ? bneed - ss->bseq.n_blocks : 0);
}

/* Blocks available (free or idle in the prefix index) and not yet promised
 * to a running session; negative when steps have over-committed the cache
 * (the scheduler then preempts). */
static int64_t sched_kv_unpromised(const sched_t *s)
{
	int64_t avail = kv_cache_available(&s->e->kv);
	for (uint32_t i = 0; i < s->n_sess; i++)
		avail -= sched_promised(s, s->sess[i]);
	return avail;
}

static struct sched_session *sched_find(sched_t *s, uint64_t id, uint32_t *index)
{
	for (uint32_t i = 0; i < s->n_sess; i++)
		if (s->sess[i]->id == id) {
			if (index)
				*index = i;
			return s->sess[i];
		}
	return NULL;
}

static void sched_session_free(sched_t *s, struct sched_session *ss)
{
	kv_seq_free(&s->e->kv, &ss->seq);
	kv_seq_free(&s->e->kv, &ss->bseq);
	free(ss->tech.g_mask);
	free(ss->tech.g_neg);
	free(ss->tech.g_neg_tokens);
	free(ss->lg);
	free(ss->blg);
	free(ss->ee_count);
	free(ss->bhid);
	free(ss->boutr);
	sampler_destroy(&ss->smp);
	free(ss->hist);
	free(ss->keys);
	free(ss->hid);
	free(ss->outr);
	free(ss);
}

/* Grows a [*cap][dim] row buffer to hold `need` rows; -1 when out of memory. */
static int sched_rows_fit(float **rows, uint32_t *cap, uint32_t need, uint32_t dim)
{
	if (need <= *cap)
		return 0;
	uint32_t c = *cap ? *cap : 16;
	while (c < need)
		c = c > UINT32_MAX / 2 ? need : c * 2;
	float *r = realloc(*rows, (size_t)c * dim * sizeof *r);
	if (!r)
		return -1;
	*rows = r;
	*cap = c;
	return 0;
}

/* Appends the input rows of n new positions (before they enter hist):
 * rows already computed are dropped first.  bh: the branch's rows (a
 * perturbation branch on a stage, in step with the main rows), or NULL. */
static int sched_append_hidden(sched_t *s, struct sched_session *ss, const float *h,
                               const float *bh, uint32_t n)
{
	const size_t dim = s->info.dim;
	uint32_t done = ss->n_done;
	if (ss->g_kind && ss->bn_done < done)
		done = ss->bn_done;
	if (done > ss->hid_start) {
		uint32_t keep = ss->n_hist - done;
		memmove(ss->hid, ss->hid + (size_t)(done - ss->hid_start) * dim,
		        (size_t)keep * dim * sizeof *ss->hid);
		if (ss->bhid)
			memmove(ss->bhid, ss->bhid + (size_t)(done - ss->hid_start) * dim,
			        (size_t)keep * dim * sizeof *ss->bhid);
		ss->hid_start = done;
	}
	uint32_t have = ss->n_hist - ss->hid_start;
	if (sched_rows_fit(&ss->hid, &ss->hid_cap, have + n, (uint32_t)dim) < 0)
		return -1;
	memcpy(ss->hid + (size_t)have * dim, h, (size_t)n * dim * sizeof *h);
	if (bh) {
		if (sched_rows_fit(&ss->bhid, &ss->bhid_cap, have + n, (uint32_t)dim) < 0)
			return -1;
		memcpy(ss->bhid + (size_t)have * dim, bh, (size_t)n * dim * sizeof *bh);
	}
	return 0;
}

/* Puts ss into the wait queue at its place: after every session of higher
 * or equal priority with an earlier ticket. */
static void sched_wait_insert(sched_t *s, struct sched_session *ss)
{
	uint32_t at = s->n_wait;
	while (at > 0 && (s->waitq[at - 1]->priority < ss->priority ||
	                  (s->waitq[at - 1]->priority == ss->priority &&
	                   s->waitq[at - 1]->ticket > ss->ticket))) {
		s->waitq[at] = s->waitq[at - 1];
		at--;
	}
	s->waitq[at] = ss;
	s->n_wait++;
	ss->running = false;
}

static void sched_wait_remove(sched_t *s, struct sched_session *ss)
{
	for (uint32_t i = 0; i < s->n_wait; i++)
		if (s->waitq[i] == ss) {
			memmove(s->waitq + i, s->waitq + i + 1,
			        (size_t)(s->n_wait - i - 1) * sizeof *s->waitq);
			s->n_wait--;
			return;
		}
}

static void sched_drop(sched_t *s, uint64_t id)
{
	uint32_t i;
	struct sched_session *ss = sched_find(s, id, &i);
	if (!ss)
		return;
	if (!ss->running)
		sched_wait_remove(s, ss);
	sched_session_free(s, ss);
	s->sess[i] = s->sess[--s->n_sess];
}

/* Makes room for `need` tokens of history (at most ctx + 1). */
static int sched_hist_reserve(sched_t *s, struct sched_session *ss, uint32_t need)
{
	if (need > ss->cap) {
		uint32_t cap = ss->cap ? ss->cap : 64;
		while (cap < need)
			cap *= 2;
		if (cap > s->info.ctx_len + 1)
			cap = s->info.ctx_len + 1; /* speculative verification writes one past */
		int32_t *h = realloc(ss->hist, (size_t)cap * sizeof *h);
		if (!h)
			return -1;
		ss->hist = h;
		ss->cap = cap;
	}
	return need <= ss->cap ? 0 : -1;
}

/* Appends tokens to a session's history (its capacity grows up to ctx). */
static int sched_append(sched_t *s, struct sched_session *ss, const int32_t *t, uint32_t n)
{
	if (sched_hist_reserve(s, ss, ss->n_hist + n) < 0)
		return -1;
	memcpy(ss->hist + ss->n_hist, t, (size_t)n * sizeof *t);
	ss->n_hist += n;
	return 0;
}

static void sched_push_out(sched_t *s, struct sched_out *o)
{
	o->epoch = s->epoch;
	pthread_mutex_lock(&s->out_mu);
	if (s->out_tail)
		s->out_tail->next = o;
	else
		s->out_head = o;
	s->out_tail = o;
	if (o->kind == SCHED_OUT_RESULT)
		s->stats.results++;
	s->out_new = true;
	pthread_mutex_unlock(&s->out_mu);
}

static void sched_error(sched_t *s, uint64_t id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void sched_error(sched_t *s, uint64_t id, int code, const char *fmt, ...)
{
	struct sched_out *o = calloc(1, sizeof *o);
	va_list ap;
	if (!o) {
		SCHED_LOG(SCHED_LOG_ERROR, "session %llu: out of memory for an ERROR",
		          (unsigned long long)id);
		return;
	}
	o->kind = SCHED_OUT_ERROR;
	o->session_id = id;
	o->code = code;
	va_start(ap, fmt);
	vsnprintf(o->reason, sizeof o->reason, fmt, ap);
	va_end(ap);
	SCHED_LOG(SCHED_LOG_DEBUG, "session %llu: ERROR %d: %s", (unsigned long long)id, code,
	          o->reason);
	sched_push_out(s, o);
}

/* Least time between two "busy" summary lines. */
#define SCHED_SUMMARY_MS 60000.0

/* ---- admission, prefix sharing and preemption ----------------------------
 *
 * A session waits in the queue until the cache can hold its whole history
 * without breaking a promise to a running session; the queue is served
 * strictly in (priority, ticket) order, so a big session at its head is not
 * overtaken (no starvation) and a preempted session, which keeps its
 * ticket, goes before newer ones of its priority.  On admission it forks
 * the longest indexed prefix of its history and computes the rest.  When a
 * step needs a block that is not there, the running session with the
 * lowest priority (ties: the latest admitted) loses its blocks and waits
 * again; it is recomputed from its history before its owed result, which
 * is therefore the same token. */

/* Positions a session may take from the prefix index: none of the rows
 * whose logits its first owed result needs (the last token; every row of a
 * speculative step). */
static uint32_t sched_share_limit(const struct sched_session *ss)
{
	if (!ss->n_marks)
		return ss->n_hist > 0 ? ss->n_hist - 1 : 0;
	const struct sched_mark *mk = &ss->marks[ss->mark_head];
	return mk->end >= mk->n_logits ? mk->end - mk->n_logits : 0;
}

/* True when another running session is computing the next block ss could
 * share: ss waits for it to be indexed rather than compute it twice. */
static bool sched_prefix_in_flight(const sched_t *s, const struct sched_session *ss,
                                   uint32_t matched)
{
	uint32_t m = matched / s->block;
	if (!s->cfg.prefix_cache || m >= ss->n_keys || (m + 1) * s->block > sched_share_limit(ss))
		return false;
	for (uint32_t i = 0; i < s->n_sess; i++) {
		const struct sched_session *r = s->sess[i];
		if (r != ss && r->running && r->n_keys > m && r->n_reg <= m &&
		    r->keys[m] == ss->keys[m])
			return true;
	}
	return false;
}

/* Whether the head of the wait queue can be admitted now (no side effect).
 * *matched: the positions it would share. */
static bool sched_head_fits(const sched_t *s, bool may_defer, uint32_t *matched)
{
	const struct sched_session *ss = s->waitq[0];
	uint32_t idle = 0;
	*matched = s->cfg.prefix_cache ? s->block * kv_prefix_peek(&s->e->kv, ss->hist,
	                                                           sched_share_limit(ss), &idle)
	                               : 0;
	uint32_t need = sched_need(s, ss) - *matched / s->block;
	if ((int64_t)need + idle > sched_kv_unpromised(s))
		return false;
	return !(may_defer && sched_prefix_in_flight(s, ss, *matched));
}

/* Admits waiting sessions in queue order while they fit. */
static void sched_admit(sched_t *s, bool may_defer)
{
	struct kv_cache *kv = &s->e->kv;
	while (s->n_wait > 0) {
		struct sched_session *ss = s->waitq[0];
		uint32_t matched;
		if (sched_need(s, ss) > kv->n_blocks) {
			/* Grown past the whole cache: only another worker can help. */
			sched_error(s, ss->id, ITT__CODE__OVERLOADED,
			            "kv cache full: %u positions need %u blocks, the cache has %u",
			            ss->n_hist, sched_need(s, ss), kv->n_blocks);
			sched_drop(s, ss->id);
			continue;
		}
		if (!sched_head_fits(s, may_defer, &matched))
			return;
		sched_wait_remove(s, ss);
		ss->running = true;
		ss->admitted = ++s->next_admit;
		if (s->cfg.prefix_cache) {
			uint32_t got =
			    kv_prefix_match(kv, ss->hist, sched_share_limit(ss), &ss->seq);
			ss->n_done = got;
			ss->n_reg = got / s->block < ss->n_keys ? got / s->block : ss->n_keys;
		}
		SCHED_LOG(ss->preempted ? SCHED_LOG_INFO : SCHED_LOG_DEBUG,
		          "session %llu admitted (priority %d%s): %u positions, %u shared from "
		          "the prefix index, %u blocks free",
		          (unsigned long long)ss->id, ss->priority,
		          ss->preempted ? ", after preemption" : "", ss->n_hist, ss->n_done,
		          kv->n_free);
	}
}

/* The running session to preempt first: lowest priority, then the latest
 * admitted. */
static struct sched_session *sched_victim(sched_t *s)
{
	struct sched_session *v = NULL;
	for (uint32_t i = 0; i < s->n_sess; i++) {
		struct sched_session *ss = s->sess[i];
		if (ss->running && (!v || ss->priority < v->priority ||
		                    (ss->priority == v->priority && ss->admitted > v->admitted)))
			v = ss;
	}
	return v;
}

static void sched_preempt(sched_t *s, struct sched_session *v, const struct sched_session *for_ss)
{
	uint32_t freed = v->seq.n_blocks + v->bseq.n_blocks;
	kv_seq_free(&s->e->kv, &v->seq);
	kv_seq_free(&s->e->kv, &v->bseq);
	v->n_done = 0;
	v->bn_done = 0;
	v->n_reg = 0;
	v->preempted++;
	s->preemptions++;
	sched_wait_insert(s, v);
	SCHED_LOG(SCHED_LOG_INFO,
	          "session %llu preempted (priority %d) for session %llu (priority %d): %u "
	          "blocks released, %u positions to recompute",
	          (unsigned long long)v->id, v->priority, (unsigned long long)for_ss->id,
	          for_ss->priority, freed, v->n_hist);
}

/* ---- commands ------------------------------------------------------------ */

/* Whether a command's hidden input matches this worker's range (the loop
 * decoded it for the range it knew; ASSIGN keeps them in step, this makes
 * sure). */
static bool sched_input_fits(sched_t *s, const struct sched_cmd *c)
{
	if ((s->info.first > 0) == (c->hidden != NULL))
		return true;
	sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
	            "this worker now holds layers [%u, %u): hidden states %s", s->info.first,
	            s->info.last, c->hidden ? "not expected" : "missing");
	return false;
}

static void sched_apply_open(sched_t *s, struct sched_cmd *c)
{
	struct itt_err err = {0};
	if (!sched_input_fits(s, c))
		return;
	int code = sched_prepare_open(&s->info, c, &err);
	if (code) {
		sched_error(s, c->session_id, code, "%s", err.msg);
		return;
	}
	if (sched_find(s, c->session_id, NULL)) {
		SCHED_LOG(SCHED_LOG_WARN, "OPEN of session %llu, which is open: replacing it",
		          (unsigned long long)c->session_id);
		sched_drop(s, c->session_id);
	}
	if (s->n_sess >= s->cfg.max_sessions) {
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "worker full: %u sessions open (--max-sessions)", s->n_sess);
		return;
	}
	/* the guidance branch: perturbed heads (on stages its rows come after
	 * the main rows) or the negative prompt */
	const struct sched_tech *t = &c->tech;
	int g_kind = t->g_scale > 0 ? (t->g_mask ? 1 : t->g_neg_tokens ? 2 : 0) : 0;
	int32_t off = g_kind == 2 ? (int32_t)t->n_neg - (int32_t)c->n_prompt : 0;
	if (c->hidden && c->hidden_rows != c->n_tokens * (g_kind == 1 ? 2 : 1)) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "hidden has %u rows for %u tokens%s", c->hidden_rows, c->n_tokens,
		            g_kind == 1 ? " and their guidance branch" : "");
		return;
	}
	if (g_kind == 2 && (int64_t)c->n_tokens + off > s->info.ctx_len) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "guidance: the negative prompt's branch (%u tokens) would pass the "
		            "context of %u",
		            (uint32_t)((int64_t)c->n_tokens + off), s->info.ctx_len);
		return;
	}
	uint32_t need =
	    sched_blocks(s, c->n_tokens) +
	    (g_kind ? sched_blocks(s, (uint32_t)((int64_t)c->n_tokens + off)) : 0);
	if (need > s->e->kv.n_blocks) {
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "kv cache full: the prompt needs %u blocks, the cache has %u", need,
		            s->e->kv.n_blocks);
		return;
	}
	struct sched_session *ss = calloc(1, sizeof *ss);
	uint32_t n_keys = c->n_prompt / s->block;
	const size_t V = s->info.vocab;
	const size_t lg_rows = t->spec ? SPEC_MAX_DRAFT + 1 : 1;
	bool last = s->info.last == s->info.n_layers;
	if (ss) {
		ss->g_kind = g_kind;
		ss->off = off;
		ss->buffered = last && (g_kind || t->spec || t->ee);
	}
	if (!ss || sampler_new(&c->sp, s->info.vocab, &ss->smp, &err) < 0 ||
	    (c->hidden && sched_append_hidden(s, ss, c->hidden,
	                                      g_kind == 1 ? c->hidden +
	                                                        (size_t)c->n_tokens * s->info.dim
	                                                  : NULL,
	                                      c->n_tokens) < 0) ||
	    sched_append(s, ss, c->tokens, c->n_tokens) < 0 ||
	    !(ss->keys = malloc((n_keys ? n_keys : 1) * sizeof *ss->keys)) ||
	    (ss->buffered && !(ss->lg = malloc(lg_rows * V * sizeof *ss->lg))) ||
	    (ss->buffered && g_kind && !(ss->blg = malloc(lg_rows * V * sizeof *ss->blg))) ||
	    (c->tech.ee && !(ss->ee_count = calloc(s->info.n_layers, sizeof *ss->ee_count)))) {
		sched_error(s, c->session_id, ITT__CODE__INTERNAL, "cannot open the session: %s",
		            err.code ? err.msg : "out of memory");
		if (ss)
			sched_session_free(s, ss);
		return;
	}
	/* the techniques move into the session */
	ss->tech = c->tech;
	memset(&c->tech, 0, sizeof c->tech);
	kv_seq_init(&ss->bseq);
	if (g_kind == 1) {
		ss->pert.mask = ss->tech.g_mask;
		ss->pert.blend = ss->tech.g_blend;
	}
	if (ss->tech.spec)
		spec_ctl_init(&ss->ctl, ss->tech.spec_max);
	ss->id = c->session_id;
	ss->priority = c->priority;
	ss->ticket = ++s->next_ticket;
	kv_seq_init(&ss->seq);
	ss->n_prompt = c->n_prompt;
	ss->tokenized = c->tokenized;
	ss->reply_dtype = c->reply_dtype;
	ss->n_keys = n_keys;
	kv_prefix_keys(&s->e->kv, ss->hist, n_keys, ss->keys);
	ss->marks[0] = (struct sched_mark){0, c->n_tokens, 0, 1};
	ss->n_marks = 1;
	s->sess[s->n_sess++] = ss;
	sched_wait_insert(s, ss);
	/* Admit now if it fits (no deferral: the queue bound below must only
	 * refuse what really lacks memory). */
	sched_admit(s, s->n_wait <= s->cfg.max_waiting);
	if (!ss->running && s->n_wait > s->cfg.max_waiting) {
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "kv cache full: %u sessions wait for memory already (--max-waiting)",
		            s->n_wait - 1);
		sched_drop(s, c->session_id);
		return;
	}
	SCHED_LOG(SCHED_LOG_DEBUG,
	          "session %llu open: %u tokens (%u prompt), priority %d, %s%s%s%s%s",
	          (unsigned long long)ss->id, c->n_tokens, c->n_prompt, ss->priority,
	          ss->running ? "running" : "waiting",
	          ss->g_kind == 1   ? ", guidance (heads)"
	          : ss->g_kind == 2 ? ", guidance (negative prompt)"
	                            : "",
	          ss->tech.spec ? (ss->tech.spec_exit ? ", speculative (exit)" : ", speculative (ngram)")
	                        : "",
	          ss->tech.ee ? ", early exit" : "", "");
}

/* Drops a session's positions >= pos (history, KV cache of the main
 * sequence and the branch, kept stage rows) before a STEP at pos appends:
 * the drafts the last stage rejected.  -1 (ERROR sent) when that would drop
 * prompt positions, leave a gap, or drop tokens of a step still in flight. */
static int sched_truncate(sched_t *s, struct sched_session *ss, uint32_t pos)
{
	struct kv_cache *kv = &s->e->kv;
	ss->n_hist = pos;
	if (ss->n_done > pos)
		ss->n_done = pos;
	kv_seq_truncate(kv, &ss->seq, ss->n_done);
	if (ss->g_kind) {
		uint32_t bpos = (uint32_t)((int64_t)pos + ss->off);
		if (ss->bn_done > bpos)
			ss->bn_done = bpos;
		kv_seq_truncate(kv, &ss->bseq, ss->bn_done);
	}
	if (ss->hid_start > pos)
		ss->hid_start = pos;
	if (ss->out_start > pos)
		ss->out_start = pos;
	return 0;
}

static int sched_drop_from(sched_t *s, struct sched_session *ss, const struct sched_cmd *c)
{
	if (c->pos > ss->n_hist) {
		sched_error(s, ss->id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: pos %u is past the session's %u positions", c->step, c->pos,
		            ss->n_hist);
		return -1;
	}
	if (c->pos < ss->n_prompt) {
		sched_error(s, ss->id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: pos %u would drop prompt positions (the prompt has %u)",
		            c->step, c->pos, ss->n_prompt);
		return -1;
	}
	if (ss->n_marks) {
		sched_error(s, ss->id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: pos %u would drop positions of a step not yet answered",
		            c->step, c->pos);
		return -1;
	}
	SCHED_LOG(SCHED_LOG_DEBUG, "session %llu: step %u drops positions [%u, %u)",
	          (unsigned long long)ss->id, c->step, c->pos, ss->n_hist);
	return sched_truncate(s, ss, c->pos);
}

static void sched_apply_step(sched_t *s, struct sched_cmd *c)
{
	struct sched_session *ss = sched_find(s, c->session_id, NULL);
	if (!sched_input_fits(s, c))
		return;
	if (!ss) {
		sched_error(s, c->session_id, ITT__CODE__NOT_FOUND,
		            "session %llu is not open on this worker",
		            (unsigned long long)c->session_id);
		return;
	}
	if (ss->n_marks == SCHED_MAX_INFLIGHT) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "session %llu has %u steps in flight already",
		            (unsigned long long)c->session_id, ss->n_marks);
		return;
	}
	if (c->hidden && c->hidden_rows != c->n_tokens * (ss->g_kind == 1 ? 2 : 1)) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: hidden has %u rows for %u tokens%s", c->step, c->hidden_rows,
		            c->n_tokens, ss->g_kind == 1 ? " and their guidance branch" : "");
		return;
	}
	if (ss->tech.spec && c->n_tokens > SPEC_MAX_DRAFT + 1) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: a speculative step takes the last token and at most %d "
		            "drafts, got %u tokens",
		            c->step, SPEC_MAX_DRAFT, c->n_tokens);
		return;
	}
	if (c->has_pos && c->pos != ss->n_hist && sched_drop_from(s, ss, c) < 0)
		return;
	if ((uint64_t)ss->n_hist + c->n_tokens > s->info.ctx_len ||
	    (ss->g_kind && (int64_t)ss->n_hist + c->n_tokens + ss->off > s->info.ctx_len)) {
		sched_error(s, c->session_id, ITT__CODE__INVALID_ARGUMENT,
		            "step %u: %u + %u tokens exceed the context of %u%s", c->step, ss->n_hist,
		            c->n_tokens, s->info.ctx_len,
		            ss->g_kind == 2 ? " (with the negative prompt's branch)" : "");
		return;
	}
	uint32_t start = ss->n_hist;
	uint32_t need = sched_blocks(s, ss->n_hist + c->n_tokens) +
	                (ss->g_kind ? sched_blocks(s, (uint32_t)((int64_t)ss->n_hist +
	                                                         c->n_tokens + ss->off))
	                            : 0);
	if (need > s->e->kv.n_blocks ||
	    (c->hidden &&
	     sched_append_hidden(s, ss, c->hidden,
	                         ss->g_kind == 1 ? c->hidden + (size_t)c->n_tokens * s->info.dim
	                                         : NULL,
	                         c->n_tokens) < 0) ||
	    sched_append(s, ss, c->tokens, c->n_tokens) < 0) {
		/* Only a worker with more memory can run it: the broker replays
		 * the session elsewhere; its memory is freed. */
		sched_error(s, c->session_id, ITT__CODE__OVERLOADED,
		            "kv cache full: step %u needs %u blocks, the cache has %u", c->step,
		            need, s->e->kv.n_blocks);
		sched_drop(s, c->session_id);
		return;
	}
	ss->marks[(ss->mark_head + ss->n_marks++) % SCHED_MAX_INFLIGHT] =
	    (struct sched_mark){c->step, ss->n_hist, start, ss->tech.spec ? c->n_tokens : 1};
}

static void sched_log_summary(sched_t *s, const char *when);
static void sched_apply_settings(sched_t *s, const struct sched_cmd *c);
static void sched_apply_assign(sched_t *s, const struct sched_cmd *c);

/* INFO lines for a session with techniques when it ends: speculative
 * acceptance, and where early exit decided its tokens. */
static void sched_log_spec(const sched_t *s, const struct sched_session *ss)
{
	if (ss && ss->tech.ee && ss->ee_count) {
		char line[512];
		size_t at = 0;
		uint64_t total = 0;
		for (uint32_t l = 0; l < s->info.n_layers; l++) {
			total += ss->ee_count[l];
			if (ss->ee_count[l] && at < sizeof line)
				at += (size_t)snprintf(line + at, sizeof line - at, " %u:%u", l,
				                       ss->ee_count[l]);
		}
		if (total)
			SCHED_LOG(SCHED_LOG_INFO,
			          "session %llu: early exit: %llu tokens decided after layer "
			          "(layer:tokens)%s",
			          (unsigned long long)ss->id, (unsigned long long)total,
			          at ? line : "");
	}
	if (!ss || !ss->tech.spec || !ss->spec_steps)
		return;
	SCHED_LOG(SCHED_LOG_INFO,
	          "session %llu: speculative (%s): %llu drafts proposed, %llu accepted (%.1f%%) "
	          "over %llu steps",
	          (unsigned long long)ss->id, ss->tech.spec_exit ? "exit" : "ngram",
	          (unsigned long long)ss->spec_proposed, (unsigned long long)ss->spec_accepted,
	          ss->spec_proposed ? 100.0 * (double)ss->spec_accepted / (double)ss->spec_proposed
	                            : 0.0,
	          (unsigned long long)ss->spec_steps);
}

static void sched_apply(sched_t *s, struct sched_cmd *c)
{
	if (!s->e && c->kind != SCHED_CMD_CLOSE && c->kind != SCHED_CMD_RESET) {
		if (c->kind == SCHED_CMD_OPEN || c->kind == SCHED_CMD_STEP)
			sched_error(s, c->session_id, ITT__CODE__UNAVAILABLE, "no layers loaded");
		return;
	}
	switch (c->kind) {
	case SCHED_CMD_OPEN: sched_apply_open(s, c); break;
	case SCHED_CMD_STEP: sched_apply_step(s, c); break;
	case SCHED_CMD_CLOSE:
		SCHED_LOG(SCHED_LOG_DEBUG, "session %llu closed",
		          (unsigned long long)c->session_id);
		sched_log_spec(s, sched_find(s, c->session_id, NULL));
		sched_drop(s, c->session_id);
		if (s->n_sess == 0)
			sched_log_summary(s, "idle");
		break;
	case SCHED_CMD_RESET:
		if (s->n_sess)
			SCHED_LOG(SCHED_LOG_INFO, "registration %u: dropping %u sessions", c->epoch,
			          s->n_sess);
		while (s->n_sess)
			sched_drop(s, s->sess[0]->id);
		s->epoch = c->epoch;
		break;
	case SCHED_CMD_SETTINGS: sched_apply_settings(s, c); break;
	case SCHED_CMD_ASSIGN: sched_apply_assign(s, c); break;
	}
}

static double sched_now_ms(void);

/* One INFO line with the prefix index and preemption counters, when they
 * changed since the last one (logged when the worker becomes idle, at most
 * once a minute while busy, and at exit). */
static void sched_log_summary(sched_t *s, const char *when)
{
	if (!s->e)
		return;
	const struct kv_cache *kv = &s->e->kv;
	if (s->spec_proposed != s->logged_proposed) {
		s->logged_proposed = s->spec_proposed;
		SCHED_LOG(SCHED_LOG_INFO,
		          "speculative (%s): %llu drafts proposed, %llu accepted (%.1f%%) since "
		          "start",
		          when, (unsigned long long)s->spec_proposed,
		          (unsigned long long)s->spec_accepted,
		          100.0 * (double)s->spec_accepted / (double)s->spec_proposed);
	}
	if (kv->stats.lookups == s->logged_lookups && s->preemptions == s->logged_preemptions)
		return;
	s->logged_ms = sched_now_ms();
	s->logged_lookups = kv->stats.lookups;
	s->logged_preemptions = s->preemptions;
	SCHED_LOG(SCHED_LOG_INFO,
	          "kv (%s): prefix index %llu lookups, %llu hits, %llu blocks shared, %llu "
	          "inserted, %llu evicted, %u indexed (%u idle); %llu preemptions; %u of %u "
	          "blocks free",
	          when, (unsigned long long)kv->stats.lookups, (unsigned long long)kv->stats.hits,
	          (unsigned long long)kv->stats.hit_blocks, (unsigned long long)kv->stats.inserted,
	          (unsigned long long)kv->stats.evicted, kv->n_indexed, kv->n_idle,
	          (unsigned long long)s->preemptions, kv->n_free, kv->n_blocks);
}

static bool sched_has_work(const sched_t *s)
{
	uint32_t matched;
	for (uint32_t i = 0; i < s->n_sess; i++)
		if (s->sess[i]->running && s->sess[i]->n_done < s->sess[i]->n_hist)
			return true;
	return s->n_wait > 0 && sched_head_fits(s, true, &matched);
}

static double sched_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Whether the row of main position p wants logits: it is one of the last
 * n_logits positions of a step not yet answered.  *mi: the mark to look at
 * first (relative to the head; positions are asked in ascending order). */
static bool sched_wants(const struct sched_session *ss, uint32_t p, uint32_t *mi)
{
	while (*mi < ss->n_marks && ss->marks[(ss->mark_head + *mi) % SCHED_MAX_INFLIGHT].end <= p)
		(*mi)++;
	if (*mi >= ss->n_marks)
		return false;
	const struct sched_mark *mk = &ss->marks[(ss->mark_head + *mi) % SCHED_MAX_INFLIGHT];
	return p + mk->n_logits >= mk->end;
}

/* Adds one row to the batch at row *n. */
static void sched_add_row(sched_t *s, struct sched_session *ss, uint32_t g, bool branch,
                          uint32_t pos, bool want, uint32_t *n)
{
	uint32_t r = (*n)++;
	int32_t tok;
	if (!branch)
		tok = ss->hist[pos];
	else if (pos < ss->tech.n_neg)
		tok = ss->tech.g_neg_tokens[pos];
	else
		tok = ss->hist[(int64_t)pos - ss->off];
	s->row_tok[r] = tok;
	s->row_pos[r] = pos;
	s->row_seq[r] = branch ? &ss->bseq : &ss->seq;
	s->row_want[r] = want && s->info.last == s->info.n_layers;
	s->row_sess[r] = ss;
	s->row_br[r] = branch;
	s->row_grp[r] = g;
	s->row_pert[r] = branch && ss->g_kind == 1 ? &ss->pert : NULL;
	if (s->info.first > 0) {
		const size_t dim = s->info.dim;
		/* a branch on a stage is a perturbation branch: off 0, rows in step */
		const float *src = (branch ? ss->bhid : ss->hid) + (size_t)(pos - ss->hid_start) * dim;
		memcpy(s->row_hid + (size_t)r * dim, src, dim * sizeof *src);
	}
}

/* Adds the rows of group g (k main rows from n_done, kb branch rows from
 * bn_done) to the batch at row *n: first branch rows that catch up with the
 * main sequence, then each main row followed by its branch row, so that the
 * logits of a pair come out one after the other. */
static void sched_take_rows(sched_t *s, uint32_t g, uint32_t *n)
{
	struct sched_session *ss = s->grp_sess[g];
	uint32_t k = s->grp_rows[g], kb = s->grp_brows[g];
	uint32_t mi = 0, q = ss->bn_done, qend = ss->bn_done + kb;
	while (q < qend && (int64_t)q < (int64_t)ss->n_done + ss->off)
		sched_add_row(s, ss, g, true, q++, false, n);
	for (uint32_t j = 0; j < k; j++) {
		uint32_t p = ss->n_done + j;
		bool want = sched_wants(ss, p, &mi);
		sched_add_row(s, ss, g, false, p, want, n);
		if (q < qend && (int64_t)q == (int64_t)p + ss->off)
			sched_add_row(s, ss, g, true, q++, want, n);
	}
	while (q < qend) /* not expected: the branch is never ahead */
		sched_add_row(s, ss, g, true, q++, false, n);
}

/* Branch rows that go with k main rows of ss this step (0 without one):
 * the branch catches up to the main sequence's alignment. */
static uint32_t sched_branch_rows(const struct sched_session *ss, uint32_t k)
{
	if (!ss->g_kind)
		return 0;
	int64_t want = (int64_t)ss->n_done + k + ss->off, len = sched_bn_len(ss);
	if (want > len)
		want = len;
	return want > ss->bn_done ? (uint32_t)(want - ss->bn_done) : 0;
}

/* Whether two sessions can share a forward pass: the same early exit (or
 * none); a pass runs one exit configuration. */
static bool sched_same_exit(const struct sched_session *a, const struct sched_session *b)
{
	if (a->tech.ee != b->tech.ee)
		return false;
	return !a->tech.ee ||
	       (a->tech.ee_threshold == b->tech.ee_threshold && a->tech.n_ee == b->tech.n_ee &&
	        !memcmp(a->tech.ee_layers, b->tech.ee_layers, a->tech.n_ee * sizeof(uint32_t)));
}

/* Whether group a goes before group b when blocks are handed out. */
static bool sched_before(const struct sched_session *a, const struct sched_session *b)
{
	return a->priority > b->priority ||
	       (a->priority == b->priority && a->admitted < b->admitted);
}

/* Picks the rows of this step: decode rows first, then prefill chunks,
 * round-robin, at most batch_tokens (a guidance branch's rows count too),
 * one early-exit configuration per pass; returns the number of groups. */
static uint32_t sched_select(sched_t *s)
{
	const uint32_t budget = s->cfg.batch_tokens;
	uint32_t n = 0, n_grp = 0;
	uint32_t start = s->n_sess ? s->rr++ % s->n_sess : 0;
	struct sched_session *first = NULL;
	s->pass_exit = NULL;
	for (int pass = 0; pass < 2 && n < budget; pass++) {
		for (uint32_t i = 0; i < s->n_sess && n < budget; i++) {
			struct sched_session *ss = s->sess[(start + i) % s->n_sess];
			uint32_t left = ss->n_hist - ss->n_done;
			if (!ss->running || (left == 0 && !sched_branch_rows(ss, 0)))
				continue;
			bool prefill =
			    left > 1 || (ss->n_marks && ss->marks[ss->mark_head].step == 0);
			if (prefill != (pass == 1))
				continue;
			if (first && !sched_same_exit(first, ss))
				continue;
			uint32_t room = budget - n;
			uint32_t k = left < room ? left : room;
			while (k > 0 && k + sched_branch_rows(ss, k) > room)
				k--;
			uint32_t kb = sched_branch_rows(ss, k);
			if (k == 0 && kb > room)
				kb = room; /* catching up only */
			if (k == 0 && kb == 0) {
				/* a main row and its branch row do not fit a budget of 1:
				 * an empty pass takes them anyway */
				if (n > 0 || left == 0 || 1 + sched_branch_rows(ss, 1) > s->max_rows)
					continue;
				k = 1;
				kb = sched_branch_rows(ss, 1);
			}
			if (!first) {
				first = ss;
				s->pass_exit = ss->tech.ee ? ss : NULL;
			}
			s->grp_sess[n_grp] = ss;
			s->grp_rows[n_grp] = k;
			s->grp_brows[n_grp++] = kb;
			n += k + kb;
		}
	}
	return n_grp;
}

/* A stage cannot preempt (it keeps no input rows to recompute from): it
 * fails the session instead, and the broker replays it from stage 0. */
static void sched_fail_stage(sched_t *s, struct sched_session *v, int rc, const char *why)
{
	SCHED_LOG(SCHED_LOG_INFO, "session %llu failed on layers [%u, %u): %s",
	          (unsigned long long)v->id, s->info.first, s->info.last, why);
	if (rc == ITT_E_FULL)
		sched_error(s, v->id, ITT__CODE__OVERLOADED,
		            "kv cache full on layers [%u, %u) (%u blocks): a stage does not "
		            "preempt; replay the session",
		            s->info.first, s->info.last, s->e->kv.n_blocks);
	else
		sched_error(s, v->id, ITT__CODE__INTERNAL, "kv cache: %s", why);
	sched_drop(s, v->id);
}

/* Gives every group the blocks for its rows (main and branch), highest
 * priority first, preempting the lowest-priority running sessions when the
 * cache is short (a stage fails them instead); groups whose session lost
 * its blocks get 0 rows. */
static void sched_reserve(sched_t *s, uint32_t n_grp)
{
	struct kv_cache *kv = &s->e->kv;
	/* insertion sort by (priority desc, admission asc); n_grp is small */
	for (uint32_t g = 1; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		uint32_t k = s->grp_rows[g], kb = s->grp_brows[g], h = g;
		for (; h > 0 && sched_before(ss, s->grp_sess[h - 1]); h--) {
			s->grp_sess[h] = s->grp_sess[h - 1];
			s->grp_rows[h] = s->grp_rows[h - 1];
			s->grp_brows[h] = s->grp_brows[h - 1];
		}
		s->grp_sess[h] = ss;
		s->grp_rows[h] = k;
		s->grp_brows[h] = kb;
	}
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		struct itt_err err = {0};
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		int rc;
		for (;;) {
			rc = kv_seq_prepare(kv, &ss->seq, ss->n_done, ss->n_done + s->grp_rows[g],
			                    &err);
			if (rc >= 0 && s->grp_brows[g])
				rc = kv_seq_prepare(kv, &ss->bseq, ss->bn_done,
				                    ss->bn_done + s->grp_brows[g], &err);
			if (rc >= 0)
				break;
			/* Out of blocks: preempt; out of memory: retry ss later. */
			struct sched_session *v = rc == ITT_E_FULL ? sched_victim(s) : ss;
			bool self = v == ss;
			if (rc != ITT_E_FULL)
				SCHED_LOG(SCHED_LOG_ERROR, "session %llu: %s",
				          (unsigned long long)ss->id, err.msg);
			for (uint32_t h = g; h < n_grp; h++)
				if (s->grp_sess[h] == v)
					s->grp_rows[h] = s->grp_brows[h] = 0;
			if (s->stage)
				sched_fail_stage(s, v, rc, err.msg); /* v is freed */
			else
				sched_preempt(s, v, ss);
			if (self)
				break;
		}
	}
}

/* Enters the session's newly computed full prompt blocks into the index. */
static void sched_register(sched_t *s, struct sched_session *ss)
{
	uint32_t upto = ss->n_done < ss->n_prompt ? ss->n_done : ss->n_prompt;
	if (!s->cfg.prefix_cache || upto / s->block <= ss->n_reg)
		return;
	kv_prefix_insert(&s->e->kv, &ss->seq, ss->hist, upto);
	ss->n_reg = upto / s->block;
}

/* A new RESULT of step mk with its prompt tokens on step 0. */
static struct sched_out *sched_result_new(const struct sched_session *ss,
                                          const struct sched_mark *mk)
{
	struct sched_out *r = calloc(1, sizeof *r);
	if (!r)
		return NULL;
	r->kind = SCHED_OUT_RESULT;
	r->session_id = ss->id;
	r->step = mk->step;
	r->n_pos = mk->end;
	if (mk->step == 0 && ss->tokenized &&
	    (r->prompt_tokens = malloc((size_t)ss->n_prompt * sizeof(int32_t)))) {
		memcpy(r->prompt_tokens, ss->hist, (size_t)ss->n_prompt * sizeof(int32_t));
		r->n_prompt_tokens = ss->n_prompt;
	}
	return r;
}

static void sched_piece(const sched_t *s, int32_t prev, int32_t tok, char *buf, size_t *len)
{
	*len = 0;
	if (s->e->tok) {
		int pl = tokenizer_decode_piece(s->e->tok, prev, tok, buf, SCHED_MAX_PIECE);
		*len = pl > 0 ? (size_t)pl : 0;
	}
}

/* A session whose step needs "exit" drafts after this pass (the shallow
 * passes reuse the logits buffer, so they run after every result). */
struct sched_exit_job {
	struct sched_session *ss;
	struct sched_out *r;
	uint32_t k;
};

/* The last stage, a buffered session (techniques): the head mark's rows
 * are all in lg (and blg): guidance combines them, the sampler draws (a
 * speculative step verifies its drafts), the history and the caches keep
 * only the emitted tokens, and the next drafts are proposed. */
static struct sched_out *sched_finish(sched_t *s, struct sched_session *ss,
                                      struct sched_exit_job *job)
{
	const uint32_t V = s->info.vocab;
	struct sched_mark mk = ss->marks[ss->mark_head];
	ss->mark_head = (ss->mark_head + 1) % SCHED_MAX_INFLIGHT;
	ss->n_marks--;
	const uint32_t nl = mk.n_logits, k = nl - 1, p0 = mk.end - nl;
	int32_t out[SPEC_MAX_DRAFT + 1], draft[SPEC_MAX_DRAFT];
	uint32_t c;

	job->ss = NULL;
	if (ss->g_kind)
		for (uint32_t i = 0; i < nl; i++)
			guidance_combine(ss->lg + (size_t)i * V, ss->blg + (size_t)i * V, V,
			                 ss->tech.g_scale, GUIDANCE_DEFAULT_CUT,
			                 ss->lg + (size_t)i * V);
	if (ss->tech.spec) {
		/* verification writes the emitted tokens over the drafts, one past */
		memcpy(draft, ss->hist + p0 + 1, (size_t)k * sizeof *draft);
		if (sched_hist_reserve(s, ss, mk.end + 1) < 0) {
			sched_error(s, ss->id, ITT__CODE__INTERNAL, "out of memory for the history");
			return NULL;
		}
		c = spec_verify(ss->smp, ss->lg, V, draft, k, ss->hist, p0 + 1, out);
		ss->spec_proposed += k;
		ss->spec_accepted += c - 1;
		ss->spec_steps++;
		s->spec_proposed += k;
		s->spec_accepted += c - 1;
		spec_ctl_update(&ss->ctl, k, c - 1);
	} else {
		out[0] = sampler_sample(ss->smp, ss->lg, ss->hist, mk.end, mk.end);
		c = 1;
	}
	struct sched_out *r = sched_result_new(ss, &mk);
	if (!r) {
		sched_error(s, ss->id, ITT__CODE__INTERNAL, "out of memory for a RESULT");
		return NULL;
	}
	const uint32_t npos = p0 + c; /* t and the accepted drafts */
	r->has_token = true;
	r->token = out[c - 1];
	r->n_pos = npos;
	for (uint32_t i = 0; i < c; i++) {
		int32_t prev = i ? out[i - 1] : ss->hist[p0];
		sched_piece(s, prev, out[i], r->pieces[i], &r->piece_lens[i]);
	}
	memcpy(r->piece, r->pieces[c - 1], r->piece_lens[c - 1]);
	r->piece_len = r->piece_lens[c - 1];
	if (ss->tech.ee) {
		r->has_exit_layer = true;
		r->exit_layer = ss->lg_exit[c - 1];
		for (uint32_t i = 0; i < c; i++)
			if (ss->lg_exit[i] < s->info.n_layers)
				ss->ee_count[ss->lg_exit[i]]++;
	}
	if (!ss->tech.spec)
		return r;
	r->n_tokens = c;
	memcpy(r->tokens, out, c * sizeof *out);
	/* the rejected drafts leave the history and the caches now (the other
	 * stages drop them when the next STEP's pos says so) */
	if (ss->n_marks)
		return r; /* later steps were appended already (not a broker's way) */
	if (npos < ss->n_hist)
		sched_truncate(s, ss, npos);
	/* next drafts: the next step feeds [last, drafts] at npos.. (< ctx) */
	int64_t room = (int64_t)s->info.ctx_len - npos - 1 - (ss->off > 0 ? ss->off : 0);
	uint32_t kd = room <= 0 ? 0 : ss->ctl.k < room ? ss->ctl.k : (uint32_t)room;
	if (!kd)
		return r;
	if (ss->tech.spec_exit) {
		*job = (struct sched_exit_job){ss, r, kd};
		return r;
	}
	/* hist[npos] is the last emitted token (verification wrote it) */
	r->n_draft = spec_ngram_draft(ss->hist, npos + 1, ss->tech.ngram_min, ss->tech.ngram_max,
	                              kd, r->draft);
	return r;
}

static uint32_t sched_argmax(const float *l, uint32_t n)
{
	uint32_t best = 0;
	for (uint32_t i = 1; i < n; i++)
		if (l[i] > l[best])
			best = i;
	return best;
}

/* "exit" drafts: k passes of one row through the first exit_layers layers
 * and the output head, each feeding the previous arg-max; they write those
 * layers' K/V at positions the verification pass rewrites, so the sequence
 * is cut back afterwards. */
static void sched_exit_drafts(sched_t *s, const struct sched_exit_job *j)
{
	struct sched_session *ss = j->ss;
	struct kv_cache *kv = &s->e->kv;
	struct itt_err err = {0};
	const uint32_t P = ss->seq.n_pos;
	if (P != ss->n_done || P != ss->n_hist)
		return;
	if (kv_seq_prepare(kv, &ss->seq, P, P + j->k, &err) < 0) {
		kv_seq_truncate(kv, &ss->seq, P);
		return; /* no blocks to spare: no drafts this time */
	}
	int32_t x = j->r->token;
	struct kv_seq *seq = &ss->seq;
	for (uint32_t i = 0; i < j->k; i++) {
		uint32_t pos = P + i;
		struct forward_batch b = {.n_rows = 1,
		                          .tokens = &x,
		                          .pos = &pos,
		                          .seqs = &seq,
		                          .stop_layer = ss->tech.spec_exit_layers};
		if (forward_run(&s->e->fwd, &b, s->e->logits, &err) < 0) {
			SCHED_LOG(SCHED_LOG_WARN, "session %llu: exit draft pass: %s",
			          (unsigned long long)ss->id, err.msg);
			break;
		}
		x = (int32_t)sched_argmax(s->e->logits, s->info.vocab);
		j->r->draft[j->r->n_draft++] = x;
	}
	kv_seq_truncate(kv, &ss->seq, P);
}

/* The last stage: takes the logits rows in row order; a plain session
 * samples at once, a buffered one keeps its rows until its step is
 * complete.  Results go onto *tail. */
static struct sched_out **sched_sample(sched_t *s, uint32_t n, struct sched_out **tail)
{
	const uint32_t V = s->info.vocab;
	struct sched_exit_job jobs[64];
	uint32_t n_jobs = 0;
	for (uint32_t row = 0, o = 0; row < n; row++) {
		if (!s->row_want[row])
			continue;
		const float *l = s->e->logits + (size_t)(o++) * V;
		struct sched_session *ss = s->row_sess[row];
		if (!s->grp_rows[s->row_grp[row]] && !s->grp_brows[s->row_grp[row]])
			continue; /* dropped meanwhile */
		struct sched_mark mk = ss->marks[ss->mark_head];
		bool br = s->row_br[row];
		uint32_t p = br ? (uint32_t)((int64_t)s->row_pos[row] - ss->off) : s->row_pos[row];
		if (!ss->buffered) {
			ss->mark_head = (ss->mark_head + 1) % SCHED_MAX_INFLIGHT;
			ss->n_marks--;
			int32_t tok = sampler_sample(ss->smp, l, ss->hist, mk.end, mk.end);
			struct sched_out *r = sched_result_new(ss, &mk);
			if (!r) {
				sched_error(s, ss->id, ITT__CODE__INTERNAL,
				            "out of memory for a RESULT");
				continue;
			}
			r->has_token = true;
			r->token = tok;
			sched_piece(s, ss->hist[mk.end - 1], tok, r->piece, &r->piece_len);
			ss->last_out_ms = sched_now_ms();
			*tail = r;
			tail = &r->next;
			continue;
		}
		uint32_t idx = p + mk.n_logits - mk.end;
		memcpy((br ? ss->blg : ss->lg) + (size_t)idx * V, l, (size_t)V * sizeof *l);
		if (!br && s->pass_exit)
			ss->lg_exit[idx] = s->row_exit[row];
		if (p + 1 != mk.end || br != (ss->g_kind != 0))
			continue;
		struct sched_exit_job job;
		struct sched_out *r = sched_finish(s, ss, &job);
		if (!r)
			continue;
		if (job.ss && n_jobs < sizeof jobs / sizeof jobs[0])
			jobs[n_jobs++] = job;
		ss->last_out_ms = sched_now_ms();
		*tail = r;
		tail = &r->next;
	}
	for (uint32_t i = 0; i < n_jobs; i++)
		sched_exit_drafts(s, &jobs[i]);
	return tail;
}

/* A RESULT of a non-last stage: the output rows of step mk, which are the
 * first rows the session collected, in its reply_dtype (with a branch: the
 * main rows, then the branch rows). */
static struct sched_out *sched_rows_result(sched_t *s, struct sched_session *ss,
                                           struct sched_mark mk)
{
	const uint32_t dim = s->info.dim, rows = mk.end - mk.start;
	const uint32_t mult = ss->g_kind ? 2 : 1;
	const size_t n = (size_t)rows * dim;
	struct sched_out *r = sched_result_new(ss, &mk);
	size_t es = ss->reply_dtype == ITT__DTYPE__F16 ? 2 : 4;
	if (!r || !(r->tensor = malloc(n ? n * es * mult : 1))) {
		sched_out_free_list(r);
		return NULL;
	}
	for (uint32_t b = 0; b < mult; b++) {
		const float *src = b ? ss->boutr : ss->outr;
		uint8_t *dst = (uint8_t *)r->tensor + (size_t)b * n * es;
		if (es == 2)
			kv_fp16_from_fp32((uint16_t *)(void *)dst, src, n);
		else
			memcpy(dst, src, n * es);
	}
	r->tensor_len = n * es * mult;
	r->tensor_dtype = ss->reply_dtype;
	r->tensor_rows = rows * mult;
	r->tensor_cols = dim;
	return r;
}

/* A non-last stage: keeps every row's output (row r of `rows`) with its
 * session and answers every step now complete onto *tail.  n_done and
 * bn_done already count the rows. */
static struct sched_out **sched_collect(sched_t *s, uint32_t n, uint32_t n_grp, const float *rows,
                                        struct sched_out **tail)
{
	const size_t dim = s->info.dim;
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		uint32_t need = ss->n_done - ss->out_start;
		uint32_t bneed = ss->g_kind ? (uint32_t)((int64_t)ss->bn_done - ss->off) -
		                                  ss->out_start
		                            : 0;
		if (sched_rows_fit(&ss->outr, &ss->out_cap, need, (uint32_t)dim) < 0 ||
		    (ss->g_kind &&
		     sched_rows_fit(&ss->boutr, &ss->bout_cap, bneed, (uint32_t)dim) < 0)) {
			sched_error(s, ss->id, ITT__CODE__INTERNAL,
			            "out of memory for %u output rows", need);
			s->grp_rows[g] = s->grp_brows[g] = 0;
			sched_drop(s, ss->id);
		}
	}
	for (uint32_t r = 0; r < n; r++) {
		uint32_t g = s->row_grp[r];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		struct sched_session *ss = s->row_sess[r];
		bool br = s->row_br[r];
		uint32_t p = br ? (uint32_t)((int64_t)s->row_pos[r] - ss->off) : s->row_pos[r];
		float *dst = (br ? ss->boutr : ss->outr) + (size_t)(p - ss->out_start) * dim;
		memcpy(dst, rows + (size_t)r * dim, dim * sizeof *dst);
	}
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		while (ss->n_marks && ss->marks[ss->mark_head].end <= ss->n_done &&
		       (!ss->g_kind ||
		        (int64_t)ss->marks[ss->mark_head].end + ss->off <= ss->bn_done)) {
			struct sched_mark mk = ss->marks[ss->mark_head];
			ss->mark_head = (ss->mark_head + 1) % SCHED_MAX_INFLIGHT;
			ss->n_marks--;
			struct sched_out *r = sched_rows_result(s, ss, mk);
			uint32_t left = ss->n_done - mk.end, taken = mk.end - mk.start;
			memmove(ss->outr, ss->outr + (size_t)taken * dim,
			        (size_t)left * dim * sizeof *ss->outr);
			if (ss->g_kind) {
				uint32_t bleft =
				    (uint32_t)((int64_t)ss->bn_done - ss->off) - mk.end;
				memmove(ss->boutr, ss->boutr + (size_t)taken * dim,
				        (size_t)bleft * dim * sizeof *ss->boutr);
			}
			ss->out_start = mk.end;
			if (!r) {
				sched_error(s, ss->id, ITT__CODE__INTERNAL,
				            "out of memory for a RESULT");
				continue;
			}
			ss->last_out_ms = sched_now_ms();
			*tail = r;
			tail = &r->next;
		}
	}
	return tail;
}

static void sched_sleep_ms(uint32_t ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* One step: admission, a batch over the running sessions with pending
 * tokens, then results. */
static void sched_run_step(sched_t *s)
{
	const bool last = s->info.last == s->info.n_layers;
	uint32_t n = 0;
	bool any_pert = false;
	struct itt_err err = {0};

	if (!s->e)
		return;
	sched_admit(s, true);
	uint32_t n_grp = sched_select(s);
	sched_reserve(s, n_grp);
	for (uint32_t g = 0; g < n_grp; g++) {
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue; /* preempted, or failed and freed */
		any_pert |= s->grp_brows[g] && s->grp_sess[g]->g_kind == 1;
		sched_take_rows(s, g, &n);
	}
	if (n == 0)
		return;
	double t0 = sched_now_ms();
	struct forward_exit ex = {0};
	if (s->pass_exit && last) {
		ex.layers = s->pass_exit->tech.ee_layers;
		ex.n_layers = s->pass_exit->tech.n_ee;
		ex.threshold = s->pass_exit->tech.ee_threshold;
		ex.exited_at = s->row_exit;
	}
	struct forward_batch b = {.n_rows = n,
	                          .tokens = s->row_tok,
	                          .hidden = s->info.first > 0 ? s->row_hid : NULL,
	                          .pos = s->row_pos,
	                          .seqs = s->row_seq,
	                          .want_logits = s->row_want,
	                          .perturb = any_pert ? s->row_pert : NULL,
	                          .exit = ex.layers ? &ex : NULL};
	int rc = forward_run(&s->e->fwd, &b, s->e->logits, &err);
	if (rc < 0) {
		SCHED_LOG(SCHED_LOG_ERROR, "forward_run of %u rows failed: %s", n, err.msg);
		for (uint32_t g = 0; g < n_grp; g++) {
			if (!s->grp_rows[g] && !s->grp_brows[g])
				continue;
			sched_error(s, s->grp_sess[g]->id, ITT__CODE__INTERNAL, "forward pass: %s",
			            err.msg);
			sched_drop(s, s->grp_sess[g]->id);
		}
		return;
	}
	struct sched_out *outs = NULL, **tail = &outs;
	for (uint32_t g = 0; g < n_grp; g++) {
		struct sched_session *ss = s->grp_sess[g];
		if (!s->grp_rows[g] && !s->grp_brows[g])
			continue;
		ss->n_done += s->grp_rows[g];
		ss->bn_done += s->grp_brows[g];
		sched_register(s, ss);
	}
	if (!last)
		tail = sched_collect(s, n, n_grp, s->e->logits, tail);
	if (s->cfg.slow_ms)
		sched_sleep_ms(s->cfg.slow_ms);
	if (last)
		tail = sched_sample(s, n, tail);
	double ms = sched_now_ms() - t0;
	pthread_mutex_lock(&s->out_mu);
	s->stats.steps++;
	s->stats.rows += n;
	s->stats.step_ms += ms;
	pthread_mutex_unlock(&s->out_mu);
	uint32_t n_res = 0;
	while (outs) {
		struct sched_out *r = outs;
		outs = r->next;
		r->next = NULL;
		r->step_ms = (float)ms;
		sched_push_out(s, r);
		n_res++;
	}
	SCHED_LOG(SCHED_LOG_DEBUG, "step: %u rows of %u sessions, %u results, %.2f ms", n, n_grp,
	          n_res, ms);
}

/* A session whose result went out this recently will most likely send its
 * next STEP within microseconds (the broker answers at once). */
#define SCHED_EXPECT_MS 50.0

/* Running sessions with nothing to feed whose next STEP is expected soon. */
static uint32_t sched_expected(const sched_t *s, double now)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < s->n_sess; i++) {
		const struct sched_session *ss = s->sess[i];
		n += ss->running && ss->n_done == ss->n_hist && ss->last_out_ms > 0 &&
		     now - ss->last_out_ms < SCHED_EXPECT_MS;
	}
	return n;
}

static void sched_apply_all(sched_t *s, struct sched_cmd *cmds)
{
	while (cmds) {
		struct sched_cmd *c = cmds;
		cmds = c->next;
		sched_apply(s, c);
		sched_cmd_free(&c);
	}
}

/* The gather window.  Results of one step go out together and the broker
 * answers each with the next STEP within tens of microseconds; running the
 * next step as soon as the first STEP arrives would split the sessions into
 * a 1-row step and an (n-1)-row step that stream the weights twice, and keep
 * them split.  So when some sessions are ready and others are expected,
 * wait up to batch_wait_us for the expected ones. */
static void sched_gather(sched_t *s)
{
	if (!s->cfg.batch_wait_us)
		return;
	double deadline = sched_now_ms() + s->cfg.batch_wait_us / 1e3;
	for (;;) {
		double now = sched_now_ms();
		if (now >= deadline || !sched_expected(s, now))
			return;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		double left_ns = (deadline - now) * 1e6;
		ts.tv_sec += (time_t)(left_ns / 1e9);
		ts.tv_nsec += (long)fmod(left_ns, 1e9);
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&s->in_mu);
		while (!s->stop && !s->in_head &&
		       pthread_cond_timedwait(&s->in_cv, &s->in_mu, &ts) == 0)
			;
		struct sched_cmd *cmds = s->in_head;
		s->in_head = s->in_tail = NULL;
		bool stop = s->stop;
		pthread_mutex_unlock(&s->in_mu);
		sched_apply_all(s, cmds);
		if (stop)
			return;
	}
}

/* Copies the counters the loop reads (telemetry) under the outbox lock;
 * returns whether outputs were queued since the last call. */
static bool sched_publish(sched_t *s)
{
	pthread_mutex_lock(&s->out_mu);
	bool fresh = s->out_new;
	s->out_new = false;
	s->stats.sessions = s->n_sess;
	s->stats.waiting = s->n_wait;
	s->stats.preemptions = s->preemptions;
	s->stats.spec_proposed = s->spec_proposed;
	s->stats.spec_accepted = s->spec_accepted;
	s->stats.settings = (struct sched_settings){
	    s->e ? (uint32_t)threadpool_size(s->e->pool) : 0, s->cfg.batch_tokens, s->cfg.slow_ms};
	if (s->e) {
		const struct kv_cache *kv = &s->e->kv;
		s->stats.kv_blocks = kv->n_blocks;
		s->stats.kv_free = kv->n_free;
		s->stats.kv_idle = kv->n_idle;
		s->stats.prefix_lookups = kv->stats.lookups;
		s->stats.prefix_hits = kv->stats.hits;
		s->stats.prefix_blocks = kv->stats.hit_blocks;
	}
	pthread_mutex_unlock(&s->out_mu);
	return fresh;
}

static void *sched_main(void *arg)
{
	sched_t *s = arg;
	s->logged_ms = sched_now_ms();
	for (;;) {
		pthread_mutex_lock(&s->in_mu);
		while (!s->stop && !s->in_head && !sched_has_work(s))
			pthread_cond_wait(&s->in_cv, &s->in_mu);
		if (s->stop) {
			pthread_mutex_unlock(&s->in_mu);
			break;
		}
		struct sched_cmd *cmds = s->in_head;
		s->in_head = s->in_tail = NULL;
		pthread_mutex_unlock(&s->in_mu);

		/* Commands first: CLOSE frees blocks before this step runs. */
		sched_apply_all(s, cmds);
		sched_gather(s);
		sched_run_step(s);
		if (sched_now_ms() - s->logged_ms >= SCHED_SUMMARY_MS)
			sched_log_summary(s, "busy");

		bool fresh = sched_publish(s);
		if (fresh && s->notify)
			s->notify(s->notify_arg);
	}
	sched_log_summary(s, "exit");
	while (s->n_sess)
		sched_drop(s, s->sess[0]->id);
	return NULL;
}

/* ---- live changes and life cycle ---------------------------------------- */

/* Bytes of every tensor of the file: the weights of the whole model. */
static uint64_t sched_file_weight_bytes(const gguf_t *g)
{
	uint64_t sum = 0;
	for (uint64_t i = 0; i < gguf_n_tensors(g); i++)
		sum += gguf_tensor_at(g, i)->size;
	return sum;
}

/* Opens the engine for layers [first, last) (last 0: all) with threads
 * compute threads, and sets info and the buffers that depend on the range.
 * On error s->e is NULL. */
static int sched_load(sched_t *s, uint32_t first, uint32_t last, int threads, struct itt_err *err)
{
	struct engine_config ec;
	engine_config_default(&ec);
	ec.path = s->cfg.model_path;
	ec.first = first;
	ec.last = last;
	ec.n_threads = threads > 0 ? threads : 1;
	ec.max_rows = s->max_rows;
	ec.kv_bytes = s->cfg.kv_bytes;
	ec.kv_type = s->cfg.kv_type;
	s->block = ec.kv_block;
	int rc = engine_open(&ec, &s->e, err);
	if (rc < 0)
		return rc;
	const struct model *m = s->e->model;
	s->info.vocab = m->hp.vocab;
	s->info.ctx_len = m->hp.ctx_len;
	s->info.dim = m->hp.dim;
	s->info.n_layers = m->hp.n_layers;
	s->info.n_heads = m->hp.n_heads;
	s->info.first = m->first;
	s->info.last = m->last;
	s->info.tok = s->e->tok;
	s->info.eos = s->e->tok ? tokenizer_eos(s->e->tok) : -1;
	s->info.bos = s->e->tok ? tokenizer_bos(s->e->tok) : -1;
	s->info.kv_blocks = s->e->kv.n_blocks;
	s->info.kv_block = s->e->kv.block_size;
	s->info.weight_bytes = sched_file_weight_bytes(m->file);
	s->stage = m->first != 0 || m->last != m->hp.n_layers;
	s->cfg.prefix_cache = s->prefix_cache && !s->stage;
	if (m->first > 0 && !s->row_hid &&
	    !(s->row_hid = malloc((size_t)s->max_rows * m->hp.dim * sizeof *s->row_hid))) {
		engine_close(&s->e);
		return itt_err_set(err, ITT_E_NOMEM, "sched: no memory for %u hidden rows",
		                   s->max_rows);
	}
	return 0;
}

static void sched_apply_settings(sched_t *s, const struct sched_cmd *c)
{
	struct itt_err err = {0};
	int threads = threadpool_size(s->e->pool);
	if (c->has_threads && (int)c->set.threads != threads) {
		if (engine_set_threads(s->e, (int)c->set.threads, &err) < 0)
			SCHED_LOG(SCHED_LOG_ERROR, "settings: threads %u: %s; keeping %d",
			          c->set.threads, err.msg, threads);
		else
			SCHED_LOG(SCHED_LOG_INFO, "settings: threads %d -> %u", threads,
			          c->set.threads);
	}
	if (c->has_batch_tokens && c->set.batch_tokens != s->cfg.batch_tokens) {
		SCHED_LOG(SCHED_LOG_INFO, "settings: batch_tokens %u -> %u", s->cfg.batch_tokens,
		          c->set.batch_tokens);
		s->cfg.batch_tokens = c->set.batch_tokens;
	}
	if (c->has_slow_ms && c->set.slow_ms != s->cfg.slow_ms) {
		SCHED_LOG(SCHED_LOG_INFO, "settings: slow_ms %u -> %u", s->cfg.slow_ms,
		          c->set.slow_ms);
		s->cfg.slow_ms = c->set.slow_ms;
	}
	sched_publish(s);
}

/* Drops every session, reopens the engine with the assigned range (the old
 * one when that fails) and reports with SCHED_OUT_LOADED. */
static void sched_apply_assign(sched_t *s, const struct sched_cmd *c)
{
	struct itt_err err = {0}, err2 = {0};
	uint32_t old_first = s->info.first, old_last = s->info.last;
	int threads = threadpool_size(s->e->pool);
	struct sched_out *o = calloc(1, sizeof *o);

	if (s->n_sess)
		SCHED_LOG(SCHED_LOG_INFO, "assign: dropping %u sessions", s->n_sess);
	while (s->n_sess)
		sched_drop(s, s->sess[0]->id);
	s->epoch = c->epoch;
	SCHED_LOG(SCHED_LOG_INFO, "assign: loading layers [%u, %u) (holding [%u, %u))", c->first,
	          c->last, old_first, old_last);
	double t0 = sched_now_ms();
	engine_close(&s->e);
	int rc = sched_load(s, c->first, c->last, threads, &err);
	if (rc < 0) {
		SCHED_LOG(SCHED_LOG_ERROR,
		          "assign: cannot load layers [%u, %u): %s; reloading [%u, %u)", c->first,
		          c->last, err.msg, old_first, old_last);
		if (sched_load(s, old_first, old_last, threads, &err2) < 0) {
			SCHED_LOG(SCHED_LOG_ERROR,
			          "assign: cannot reload layers [%u, %u) either: %s", old_first,
			          old_last, err2.msg);
			pthread_mutex_lock(&s->out_mu);
			s->broken = true;
			pthread_mutex_unlock(&s->out_mu);
		}
	} else {
		SCHED_LOG(SCHED_LOG_INFO, "assign: layers [%u, %u) loaded in %.0f ms, %u kv blocks",
		          s->info.first, s->info.last, sched_now_ms() - t0, s->info.kv_blocks);
	}
	sched_publish(s);
	if (!o) {
		SCHED_LOG(SCHED_LOG_ERROR, "assign: out of memory for the LOADED report");
		return;
	}
	o->kind = SCHED_OUT_LOADED;
	o->loaded = rc == 0;
	o->info = s->info;
	if (s->broken)
		o->info.tok = NULL;
	if (rc < 0)
		snprintf(o->reason, sizeof o->reason, "%s", err.msg);
	sched_push_out(s, o);
}

int sched_new(const struct sched_config *c, sched_t **out, struct itt_err *err)
{
	int rc;
	sched_t *s = calloc(1, sizeof *s);

	*out = NULL;
	if (!s)
		return itt_err_set(err, ITT_E_NOMEM, "sched_new: out of memory");
	s->cfg = *c;
	s->prefix_cache = c->prefix_cache;
	s->max_rows = c->max_batch_tokens ? c->max_batch_tokens : c->batch_tokens;
	if (!s->cfg.max_sessions || !s->cfg.batch_tokens || s->cfg.batch_tokens > s->max_rows) {
		free(s);
		return itt_err_set(err, ITT_E_INVALID,
		                   "sched_new: max_sessions and batch_tokens must be at least 1, "
		                   "batch_tokens at most max_batch_tokens");
	}
	pthread_mutex_init(&s->in_mu, NULL);
	pthread_cond_init(&s->in_cv, NULL);
	pthread_mutex_init(&s->out_mu, NULL);
	if ((rc = sched_load(s, c->first, c->last, c->threads, err)) < 0)
		goto fail;
	size_t R = s->max_rows, S = c->max_sessions;
	s->sess = calloc(S, sizeof *s->sess);
	s->waitq = calloc(S, sizeof *s->waitq);
	s->row_tok = malloc(R * sizeof *s->row_tok);
	s->row_pos = malloc(R * sizeof *s->row_pos);
	s->row_seq = malloc(R * sizeof *s->row_seq);
	s->row_want = malloc(R);
	s->row_sess = malloc(R * sizeof *s->row_sess);
	s->row_br = malloc(R);
	s->row_grp = malloc(R * sizeof *s->row_grp);
	s->row_pert = malloc(R * sizeof *s->row_pert);
	s->row_exit = malloc(R * sizeof *s->row_exit);
	s->grp_sess = malloc(S * sizeof *s->grp_sess);
	s->grp_rows = malloc(S * sizeof *s->grp_rows);
	s->grp_brows = malloc(S * sizeof *s->grp_brows);
	if (!s->sess || !s->waitq || !s->row_tok || !s->row_pos || !s->row_seq || !s->row_want ||
	    !s->row_sess || !s->row_br || !s->row_grp || !s->row_pert || !s->row_exit ||
	    !s->grp_sess || !s->grp_rows || !s->grp_brows) {
		rc = itt_err_set(err, ITT_E_NOMEM, "sched_new: out of memory for %zu sessions", S);
		goto fail;
	}
	sched_publish(s);
	*out = s;
	return 0;
fail:
	sched_destroy(&s);
	return rc;
}

const struct sched_info *sched_get_info(const sched_t *s)
{
	return &s->info;
}

int sched_start(sched_t *s, void (*notify)(void *arg), void *arg, struct itt_err *err)
{
	s->notify = notify;
	s->notify_arg = arg;
	int rc = pthread_create(&s->thread, NULL, sched_main, s);
	if (rc)
		return itt_err_set(err, ITT_E_NOMEM, "pthread_create: %s", strerror(rc));
	pthread_setname_np(s->thread, "itt-compute");
	s->started = true;
	return 0;
}

void sched_push(sched_t *s, struct sched_cmd *c)
{
	c->next = NULL;
	pthread_mutex_lock(&s->in_mu);
	if (s->in_tail)
		s->in_tail->next = c;
	else
		s->in_head = c;
	s->in_tail = c;
	pthread_cond_signal(&s->in_cv);
	pthread_mutex_unlock(&s->in_mu);
}

struct sched_out *sched_take(sched_t *s)
{
	pthread_mutex_lock(&s->out_mu);
	struct sched_out *o = s->out_head;
	s->out_head = s->out_tail = NULL;
	pthread_mutex_unlock(&s->out_mu);
	return o;
}

void sched_get_stats(sched_t *s, struct sched_stats *st)
{
	pthread_mutex_lock(&s->out_mu);
	*st = s->stats;
	pthread_mutex_unlock(&s->out_mu);
}

bool sched_broken(sched_t *s)
{
	pthread_mutex_lock(&s->out_mu);
	bool b = s->broken;
	pthread_mutex_unlock(&s->out_mu);
	return b;
}

void sched_stop(sched_t *s)
{
	if (!s || !s->started)
		return;
	pthread_mutex_lock(&s->in_mu);
	s->stop = true;
	pthread_cond_signal(&s->in_cv);
	pthread_mutex_unlock(&s->in_mu);
	pthread_join(s->thread, NULL);
	s->started = false;
}

void sched_destroy(sched_t **sp)
{
	sched_t *s = sp ? *sp : NULL;
	if (!s)
		return;
	sched_stop(s);
	if (s->e)
		while (s->n_sess)
			sched_drop(s, s->sess[0]->id);
	for (struct sched_cmd *c = s->in_head; c;) {
		struct sched_cmd *next = c->next;
		sched_cmd_free(&c);
		c = next;
	}
	sched_out_free_list(s->out_head);
	engine_close(&s->e);
	free(s->sess);
	free(s->waitq);
	free(s->row_tok);
	free(s->row_pos);
	free(s->row_seq);
	free(s->row_want);
	free(s->row_sess);
	free(s->row_br);
	free(s->row_grp);
	free(s->row_pert);
	free(s->row_exit);
	free(s->row_hid);
	free(s->grp_sess);
	free(s->grp_rows);
	free(s->grp_brows);
	pthread_mutex_destroy(&s->in_mu);
	pthread_cond_destroy(&s->in_cv);
	pthread_mutex_destroy(&s->out_mu);
	free(s);
	*sp = NULL;
}
