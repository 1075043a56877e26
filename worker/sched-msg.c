/* sched-msg: the decoders that turn OPEN/STEP/CLOSE/SETTINGS/ASSIGN bodies
 * into scheduler commands (sched_decode_*, scheduler.h), and the commands'
 * and outputs' allocation.
 *
 * Contract: pure functions of the bytes and the model's shape (struct
 * sched_info), safe on any input (fuzzed by tests/fuzz/fuzz-worker-msg.c):
 * each returns 0 and a command, or a protocol code (ITT__CODE__*) with the
 * reason in a struct itt_err and no command.  They run on the loop thread
 * and only read the shape and its immutable tokenizer; sched_prepare_open
 * (tokenizing a text prompt is real work) runs on the compute thread.
 * Invariant: a command that comes out satisfies everything the compute
 * thread relies on (token ids within the vocabulary, hidden rows of the
 * right shape as F32, techniques this worker's range can run).  A
 * conversation (OPEN messages) is rendered here, with the named template or
 * the model's: a linear copy of at most max_prompt_bytes; its tokenizing
 * waits for the compute thread like a text prompt's. */
#include <stdlib.h>
#include <string.h>

#include "itt.pb-c.h"
#include "scheduler.h"
#include "validate.h"
#include "wire.h"

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
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory for %zu tokens", n);
	memcpy(*out, ids, n * sizeof **out);
	return 0;
}

/* The hidden-state input of an OPEN/STEP of n_tokens tokens: none on stage
 * 0; on a later stage a tensor of [n_tokens][dim] F32 or F16 elements (or
 * [alt_rows][dim] when alt_rows is not 0), returned as F32 in *out (owned by
 * the caller), its row count in *rows_out. */
static int sched_decode_hidden(const Itt__TensorInfo *ti, const void *tensor, size_t tensor_len,
                               uint32_t n_tokens, uint32_t alt_rows, const struct sched_info *info,
                               float **out, uint32_t *rows_out, struct itt_err *err)
{
	*out = NULL;
	*rows_out = 0;
	if (info->first == 0) {
		if (ti || tensor)
			return itt_err_set(
			    err, ITT__CODE__INVALID_ARGUMENT,
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
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory for %u hidden rows",
		                   n_tokens);
	if (ti->dtype == ITT__DTYPE__F32) {
		memcpy(*out, tensor, n * sizeof **out);
		return 0;
	}
	/* F16: the frame need not be aligned for uint16_t; copy, then widen. */
	uint16_t *h = malloc(n * sizeof *h);
	if (!h) {
		free(*out);
		*out = NULL;
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory for %u hidden rows",
		                   n_tokens);
	}
	memcpy(h, tensor, n * sizeof *h);
	kv_fp16_to_fp32(*out, h, n);
	free(h);
	return 0;
}

/* Renders an OPEN's conversation into c->prompt with the template it
 * names, or the model's. */
static int sched_render_chat(const Itt__SessionOpen *m, const struct sched_info *info,
                             struct sched_cmd *c, struct itt_err *err)
{
	struct itt_err ce = {0};
	char bos[128] = "", eos[128] = "";
	size_t n;
	const char *s;
	int rc;

	if (m->chat_template) {
		if (chat_template_by_name(m->chat_template, &c->chat_tmpl, &ce) < 0)
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "chat_template: %s",
			                   ce.msg);
	} else {
		c->chat_tmpl = info->chat;
	}
	/* the templates write BOS and EOS as their tokens' texts */
	if ((s = tokenizer_token_text(info->tok, info->bos, &n)) && n < sizeof bos) {
		memcpy(bos, s, n);
		bos[n] = 0;
	}
	if ((s = tokenizer_token_text(info->tok, info->eos, &n)) && n < sizeof eos) {
		memcpy(eos, s, n);
		eos[n] = 0;
	}
	struct chat_msg *msgs = malloc(m->n_messages * sizeof *msgs);
	if (!msgs)
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
	for (size_t i = 0; i < m->n_messages; i++)
		msgs[i] = (struct chat_msg){m->messages[i]->role ? m->messages[i]->role : "",
		                            m->messages[i]->content ? m->messages[i]->content : ""};
	/* a model without BOS (or EOS) writes nothing where the template has it */
	rc = chat_render(&c->chat_tmpl, msgs, m->n_messages, bos, eos, &c->prompt, &c->prompt_len,
	                 &ce);
	free(msgs);
	if (rc == ITT_E_NOMEM)
		return itt_err_set(err, ITT__CODE__INTERNAL,
		                   "out of memory rendering the messages");
	if (rc < 0) /* the reason names the message or the template */
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "%s", ce.msg);
	c->chat = true;
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
				return itt_err_set(
				    err, ITT__CODE__INVALID_ARGUMENT,
				    "guidance.negative_prompt needs a whole-model worker; "
				    "this one holds layers [%u, %u) of %u",
				    info->first, info->last, info->n_layers);
			if (!info->tok)
				return itt_err_set(
				    err, ITT__CODE__INVALID_ARGUMENT,
				    "guidance.negative_prompt: this model has no tokenizer");
			if (!(t->g_neg = strdup(g->negative_prompt)))
				return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
		} else {
			if (!info->n_heads || !g->n_heads)
				return itt_err_set(
				    err, ITT__CODE__INVALID_ARGUMENT,
				    "guidance.heads: none given (or the model's head "
				    "count is unknown)");
			if (!(t->g_mask = calloc((size_t)info->n_layers * info->n_heads, 1)))
				return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
			for (size_t i = 0; i < g->n_heads; i++) {
				uint32_t l, h;
				if (validate_parse_head(g->heads[i], &l, &h) < 0 ||
				    l >= info->n_layers || h >= info->n_heads)
					return itt_err_set(
					    err, ITT__CODE__INVALID_ARGUMENT,
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
			return itt_err_set(
			    err, ITT__CODE__INVALID_ARGUMENT,
			    "speculative.draft \"exit\" needs a whole-model worker; this "
			    "one holds layers [%u, %u) of %u",
			    info->first, info->last, info->n_layers);
	}
	if (m->early_exit) {
		const Itt__EarlyExit *ee = m->early_exit;
		if (!whole)
			return itt_err_set(
			    err, ITT__CODE__INVALID_ARGUMENT,
			    "early_exit needs a whole-model worker; this one holds layers "
			    "[%u, %u) of %u",
			    info->first, info->last, info->n_layers);
		if (t->g_scale > 0)
			return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			                   "early_exit does not combine with guidance (scale > 0)");
		t->ee = true;
		t->ee_threshold = ee->threshold;
		t->n_ee =
		    (uint32_t)(ee->n_layers < SCHED_MAX_EXITS ? ee->n_layers : SCHED_MAX_EXITS);
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
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "malformed SessionOpen body");
	*session_id = m->session_id;
	size_t plen = m->prompt ? strlen(m->prompt) : 0;
	if (m->has_reply_dtype && !wire_dtype_size(m->reply_dtype)) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "reply_dtype %d is not F32 or F16", (int)m->reply_dtype);
		goto out;
	}
	if ((rc = sched_check_stage_input(info, plen + m->n_messages, m->n_tokens, err)))
		goto out;
	if (plen && m->n_tokens) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "prompt and tokens are exclusive");
		goto out;
	}
	if (m->n_messages && (plen || m->n_tokens)) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "messages and %s are exclusive",
		                 plen ? "prompt" : "tokens");
		goto out;
	}
	if ((rc = validate_messages(m->messages, m->n_messages, m->chat_template, &lim, err)))
		goto out;
	if (plen > lim.max_prompt_bytes) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "prompt has %zu bytes; at most %u", plen, lim.max_prompt_bytes);
		goto out;
	}
	if (m->n_tokens > lim.max_prompt_tokens) {
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "tokens has %zu ids; at most %u",
		                 m->n_tokens, lim.max_prompt_tokens);
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
			rc = itt_err_set(
			    err, ITT__CODE__INVALID_ARGUMENT,
			    "this model has no tokenizer; send tokens instead of a prompt");
			goto out;
		}
		if (m->n_messages) {
			if ((rc = sched_render_chat(m, info, c, err)))
				goto out;
		} else if (!(c->prompt = malloc(plen + 1))) {
			rc = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
			goto out;
		} else {
			memcpy(c->prompt, plen ? m->prompt : "", plen + 1);
			c->prompt_len = plen;
		}
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

/* Tokenizes text (TOKENIZER_* flags) into a new array *ids (replacing the
 * old one) of at most ctx_len ids, *n of them; a text longer than that is
 * cut there (the callers refuse it).  what names the field in the reason. */
static int sched_tokenize(const struct sched_info *info, const char *text, size_t len,
                          unsigned flags, const char *what, int32_t **ids, size_t *n,
                          struct itt_err *err)
{
	struct itt_err te = {0};
	free(*ids);
	if (!(*ids = malloc(((size_t)info->ctx_len + 1) * sizeof **ids)))
		return itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
	int trc = tokenizer_encode_flags(info->tok, text, len, flags, *ids, info->ctx_len, n, &te);
	if (trc < 0 && trc != ITT_E_FULL)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "%s: %s", what, te.msg);
	return 0;
}

/* Tokenizes the negative prompt of a guidance (BOS first). */
static int sched_prepare_negative(const struct sched_info *info, struct sched_tech *t,
                                  struct itt_err *err)
{
	size_t n = 0;
	int rc;
	if (!t->g_neg)
		return 0;
	if (!info->tok)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "guidance.negative_prompt: this model has no tokenizer");
	if ((rc = sched_tokenize(info, t->g_neg, strlen(t->g_neg), TOKENIZER_ADD_BOS,
	                         "guidance.negative_prompt", &t->g_neg_tokens, &n, err)))
		return rc;
	if (n == 0 || n >= info->ctx_len)
		return itt_err_set(
		    err, ITT__CODE__INVALID_ARGUMENT,
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
	size_t n = 0;
	int rc;

	if ((rc = sched_prepare_negative(info, &c->tech, err)))
		return rc;
	if (!c->prompt)
		return 0;
	if (!info->tok)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "this model has no tokenizer; send tokens instead of a prompt");
	unsigned flags = TOKENIZER_ADD_BOS;
	if (c->chat) {
		/* a rendering that starts with the BOS text has its BOS already */
		size_t bl = 0;
		const char *bt = tokenizer_token_text(info->tok, info->bos, &bl);
		flags = TOKENIZER_PARSE_SPECIAL;
		if (!bt || !bl || c->prompt_len < bl || memcmp(c->prompt, bt, bl))
			flags |= TOKENIZER_ADD_BOS;
		c->n_stop_tokens = chat_stop_tokens(&c->chat_tmpl, info->tok, c->stop_tokens);
	}
	if ((rc = sched_tokenize(info, c->prompt, c->prompt_len, flags,
	                         c->chat ? "messages" : "prompt", &c->tokens, &n, err)))
		return rc;
	if (n >= info->ctx_len)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "%s of %zu tokens does not fit the context of %u",
		                   c->chat ? "messages" : "prompt", n, info->ctx_len);
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
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "malformed StepRequest body");
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
	if ((rc =
	         sched_copy_tokens(m->tokens, m->n_tokens, info->vocab, "tokens", &c->tokens, err)))
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
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "malformed Settings body");
	if (m->has_threads && (m->threads < 1 || m->threads > SCHED_MAX_THREADS))
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "threads must be in [1, %u], got %u", SCHED_MAX_THREADS,
		                 m->threads);
	else if (m->has_batch_tokens && (m->batch_tokens < 1 || m->batch_tokens > max_batch_tokens))
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "batch_tokens must be in [1, %u] (max_batch_tokens), got %u",
		                 max_batch_tokens, m->batch_tokens);
	else if (m->has_slow_ms && m->slow_ms > SCHED_MAX_SLOW_MS)
		rc = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                 "slow_ms must be in [0, %u], got %u", SCHED_MAX_SLOW_MS,
		                 m->slow_ms);
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
		                 "model %.128s: this worker holds %s",
		                 m->model ? m->model : "(none)", model);
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
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "malformed SessionClose body");
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
