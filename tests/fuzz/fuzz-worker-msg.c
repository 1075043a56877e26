/* fuzz-worker-msg: libFuzzer target for the worker's message decoders.
 *
 * Contract under test: sched_decode_open / _step / _close / _settings /
 * _assign (worker/scheduler.h) on arbitrary body and tensor bytes either
 * refuse with a known itt code, a non-empty reason and no command, or return
 * a command that satisfies everything the compute thread relies on; for
 * OPEN, after sched_prepare_open (which tokenizes a text prompt, and may
 * refuse it in the same way): 1..ctx-1 tokens, each in [0, vocab), n_prompt
 * <= n_tokens, sampling parameters that pass the sampler's own validation,
 * bias entries in range, a known reply_dtype, techniques within their
 * bounds (a perturbation mask only with scale > 0, early exit, "exit"
 * drafts and a negative prompt only on a whole-model worker, a tokenized
 * negative prompt that starts with BOS and fits the context); STEP has step
 * >= 1, 1..ctx-1 tokens in range and pos inside the context; on stage 0
 * neither carries hidden rows, on a later stage OPEN carries n_tokens rows
 * (2 n_tokens with a perturbation branch) and STEP n_tokens or 2 n_tokens
 * (and OPEN came as tokens); CLOSE carries no tokens; SETTINGS values are
 * within their bounds; ASSIGN names the model and a range within it.
 *
 * Input: byte 0 picks the decoder (% 5) and the worker's range ((/ 5) % 2:
 * stage 0 = layers [0, 2), or a later stage = [2, 5); stage 0 with
 * (/ 10) % 2: the whole model [0, 5)); byte 1 is the tensor
 * frame's length (0xff: no tensor frame), taken from the end of the input;
 * the rest is the body.  The model is a stand-in: a byte-level vocabulary of
 * 259 tokens (<unk>, <s>, </s>, <0x00>..<0xFF>), a context of 64 and dim 2,
 * so that every length limit and tensor shape is within the fuzzer's reach. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "itt.pb-c.h"
#include "scheduler.h"

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

#define FZ_VOCAB 259
#define FZ_CTX   64

#define FZ_DIM       2
#define FZ_MAX_BATCH 8

static tokenizer_t *fz_tok;
static struct sched_info fz_info, fz_stage, fz_whole;

/* <unk>, <s>, </s>, then <0x00>..<0xFF> as byte tokens. */
static void fuzz_init(void)
{
	static char names[FZ_VOCAB][8];
	static struct gguf_str strs[FZ_VOCAB];
	static float scores[FZ_VOCAB];
	static int32_t types[FZ_VOCAB];
	struct itt_err err = {0};

	snprintf(names[0], sizeof names[0], "<unk>");
	snprintf(names[1], sizeof names[1], "<s>");
	snprintf(names[2], sizeof names[2], "</s>");
	types[0] = TOKENIZER_TYPE_UNKNOWN;
	types[1] = types[2] = TOKENIZER_TYPE_CONTROL;
	for (int i = 0; i < 256; i++) {
		snprintf(names[3 + i], sizeof names[3 + i], "<0x%02X>", i);
		types[3 + i] = TOKENIZER_TYPE_BYTE;
	}
	for (int i = 0; i < FZ_VOCAB; i++)
		strs[i] = (struct gguf_str){strlen(names[i]), names[i]};
	struct tokenizer_vocab v = {FZ_VOCAB, strs, scores, types, 1, 2, 0, true};
	if (tokenizer_new_from_vocab(&v, &fz_tok, &err) < 0)
		__builtin_trap();
	fz_info = (struct sched_info){.vocab = FZ_VOCAB,
	                              .ctx_len = FZ_CTX,
	                              .dim = FZ_DIM,
	                              .n_layers = 5,
	                              .n_heads = 4,
	                              .first = 0,
	                              .last = 2,
	                              .eos = 2,
	                              .bos = 1,
	                              .tok = fz_tok};
	fz_stage = fz_info;
	fz_stage.first = 2;
	fz_stage.last = 5;
	fz_whole = fz_info;
	fz_whole.last = 5;
}

static void fuzz_check_tech(const struct sched_cmd *c, const struct sched_info *info)
{
	const struct sched_tech *t = &c->tech;
	bool whole = info->first == 0 && info->last == info->n_layers;
	FUZZ_CHECK(t->g_scale >= 0 && t->g_scale <= 100);
	FUZZ_CHECK(!t->g_mask || (t->g_scale > 0 && t->g_blend >= 0 && t->g_blend <= 1));
	FUZZ_CHECK(!(t->g_mask && (t->g_neg || t->g_neg_tokens)));
	FUZZ_CHECK(!t->g_neg || whole);
	FUZZ_CHECK(!t->spec || (t->spec_max >= 1 && t->spec_max <= SPEC_MAX_DRAFT &&
	                        t->ngram_min >= 1 && t->ngram_min <= t->ngram_max &&
	                        t->ngram_max <= 8));
	FUZZ_CHECK(!t->spec_exit || (whole && t->spec_exit_layers >= 1 &&
	                             t->spec_exit_layers < info->n_layers));
	FUZZ_CHECK(!t->ee || (whole && t->g_scale == 0 && t->n_ee >= 1 &&
	                      t->n_ee <= SCHED_MAX_EXITS && t->ee_threshold >= 0 &&
	                      t->ee_threshold <= 1));
	for (uint32_t i = 0; t->ee && i < t->n_ee; i++)
		FUZZ_CHECK(t->ee_layers[i] + 1 < info->n_layers &&
		           (i == 0 || t->ee_layers[i] > t->ee_layers[i - 1]));
}

static void fuzz_check_tokens(const struct sched_cmd *c)
{
	FUZZ_CHECK(c->n_tokens >= 1 && c->n_tokens < FZ_CTX);
	FUZZ_CHECK(c->tokens != NULL);
	for (uint32_t i = 0; i < c->n_tokens; i++)
		FUZZ_CHECK(c->tokens[i] >= 0 && c->tokens[i] < FZ_VOCAB);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct itt_err err = {0};
	struct sched_cmd *c = (struct sched_cmd *)1;
	uint64_t sid = 1;
	int rc;

	if (!fz_tok)
		fuzz_init();
	if (size < 2)
		return 0;
	const struct sched_info *info = (data[0] / 5) % 2    ? &fz_stage
	                                : (data[0] / 10) % 2 ? &fz_whole
	                                                     : &fz_info;
	size_t tlen = data[1] == 0xff ? 0 : data[1];
	const uint8_t *body = data + 2;
	size_t len = size - 2;
	const void *tensor = NULL;
	if (data[1] != 0xff && tlen <= len) {
		len -= tlen;
		tensor = body + len;
	}
	int which = data[0] % 5;
	switch (which) {
	case 0: rc = sched_decode_open(body, len, tensor, tlen, info, &c, &sid, &err); break;
	case 1: rc = sched_decode_step(body, len, tensor, tlen, info, &c, &sid, &err); break;
	case 2: rc = sched_decode_close(body, len, &c, &sid, &err); break;
	case 3:
		rc = sched_decode_settings(body, len, FZ_MAX_BATCH, &c, &err);
		sid = 0;
		break;
	default:
		rc = sched_decode_assign(body, len, info, "m", &c, &err);
		sid = 0;
		break;
	}
	if (rc != 0) {
		FUZZ_CHECK(c == NULL);
		FUZZ_CHECK(rc == ITT__CODE__INVALID_ARGUMENT || rc == ITT__CODE__INTERNAL);
		FUZZ_CHECK(err.code == rc && err.msg[0] != 0 && memchr(err.msg, 0, sizeof err.msg));
		return 0;
	}
	FUZZ_CHECK(c != NULL && c->session_id == sid);
	if (which <= 1 && info->first > 0) {
		FUZZ_CHECK(c->hidden != NULL && !c->prompt);
		if (which == 0)
			FUZZ_CHECK(c->hidden_rows == c->n_tokens * (c->tech.g_mask ? 2 : 1));
		else
			FUZZ_CHECK(c->hidden_rows == c->n_tokens ||
			           c->hidden_rows == 2 * c->n_tokens);
	} else {
		FUZZ_CHECK(c->hidden == NULL);
	}
	switch (c->kind) {
	case SCHED_CMD_OPEN: {
		struct itt_err perr = {0}, serr = {0};
		FUZZ_CHECK(!c->prompt == !c->prompt_len || (c->prompt && !c->prompt[0]));
		fuzz_check_tech(c, info);
		rc = sched_prepare_open(info, c, &perr);
		if (rc != 0) {
			FUZZ_CHECK(rc == ITT__CODE__INVALID_ARGUMENT || rc == ITT__CODE__INTERNAL);
			FUZZ_CHECK(perr.code == rc && perr.msg[0] != 0);
			break;
		}
		FUZZ_CHECK(c->prompt == NULL);
		fuzz_check_tokens(c);
		FUZZ_CHECK(c->n_prompt <= c->n_tokens && c->step == 0);
		FUZZ_CHECK(c->sp.n_bias <= 1024 && (c->sp.n_bias == 0 || c->sp.bias == c->bias));
		for (size_t i = 0; i < c->sp.n_bias; i++)
			FUZZ_CHECK(c->bias[i].token >= 0 && c->bias[i].token < FZ_VOCAB);
		FUZZ_CHECK(sampler_params_validate(&c->sp, FZ_VOCAB, &serr) == 0);
		FUZZ_CHECK(c->reply_dtype == ITT__DTYPE__F32 || c->reply_dtype == ITT__DTYPE__F16);
		if (c->tokenized)
			FUZZ_CHECK(c->tokens[0] == 1); /* BOS first */
		FUZZ_CHECK(!c->tech.g_neg); /* tokenized */
		if (c->tech.g_neg_tokens)
			FUZZ_CHECK(c->tech.n_neg >= 1 && c->tech.n_neg < FZ_CTX &&
			           c->tech.g_neg_tokens[0] == 1);
		break;
	}
	case SCHED_CMD_STEP:
		fuzz_check_tokens(c);
		FUZZ_CHECK(c->step >= 1);
		FUZZ_CHECK(!c->has_pos || c->pos < FZ_CTX);
		break;
	case SCHED_CMD_CLOSE: FUZZ_CHECK(c->tokens == NULL && c->n_tokens == 0); break;
	case SCHED_CMD_SETTINGS:
		FUZZ_CHECK(!c->has_threads || (c->set.threads >= 1 && c->set.threads <= 64));
		FUZZ_CHECK(!c->has_batch_tokens ||
		           (c->set.batch_tokens >= 1 && c->set.batch_tokens <= FZ_MAX_BATCH));
		FUZZ_CHECK(!c->has_slow_ms || c->set.slow_ms <= SCHED_MAX_SLOW_MS);
		break;
	case SCHED_CMD_ASSIGN: FUZZ_CHECK(c->first < c->last && c->last <= info->n_layers); break;
	default: FUZZ_CHECK(0);
	}
	sched_cmd_free(&c);
	FUZZ_CHECK(c == NULL);
	return 0;
}
