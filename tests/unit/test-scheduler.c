/* test-scheduler: the worker's message decoders (worker/scheduler.h) for
 * pipeline stages, SETTINGS and ASSIGN: on a stage after the first an
 * OPEN/STEP needs `hidden` and a tensor frame of exactly n_tokens x dim
 * elements of a known dtype, and F16 rows are widened exactly; on stage 0 a
 * tensor is refused; a text prompt is refused past stage 0; a conversation
 * (messages) is rendered with the named or the model's chat template and
 * tokenized with special tokens (no second BOS when the rendering has one),
 * its end-of-turn id reported, and bad templates or turns refused; knobs and
 * ranges out of bounds are refused naming the field.  Techniques: OPEN
 * re-validates them against the worker's n_layers and n_heads, refuses
 * early exit, "exit" drafts and a negative prompt on a partial range, and a
 * perturbation branch doubles the rows of a stage's tensor; STEP carries
 * pos and accepts n or 2n rows.  Bodies are packed with protobuf-c, so any
 * field value (an unknown dtype too) can be sent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "itt.pb-c.h"
#include "quant.h"
#include "scheduler.h"
#include "testutil.h"

#define DIM 4

static const struct sched_info stage0 = {.vocab = 32,
                                         .ctx_len = 64,
                                         .dim = DIM,
                                         .n_layers = 5,
                                         .n_heads = 4,
                                         .first = 0,
                                         .last = 2,
                                         .eos = 2,
                                         .bos = 1};
static const struct sched_info stage1 = {.vocab = 32,
                                         .ctx_len = 64,
                                         .dim = DIM,
                                         .n_layers = 5,
                                         .n_heads = 4,
                                         .first = 2,
                                         .last = 5,
                                         .eos = 2,
                                         .bos = 1};

struct packed {
	uint8_t buf[4096];
	size_t len;
};

static void pack(const ProtobufCMessage *m, struct packed *p)
{
	assert_true(protobuf_c_message_get_packed_size(m) <= sizeof p->buf);
	p->len = protobuf_c_message_pack(m, p->buf);
}

/* OPEN {session 9, tokens [1..n], hidden (dtype, rows, cols) unless dtype < 0}. */
static void open_body(uint32_t n, int dtype, uint32_t rows, uint32_t cols, const char *prompt,
                      struct packed *p)
{
	int32_t toks[16];
	Itt__SessionOpen o = ITT__SESSION_OPEN__INIT;
	Itt__TensorInfo ti = ITT__TENSOR_INFO__INIT;
	for (uint32_t i = 0; i < n; i++)
		toks[i] = (int32_t)(i + 1);
	o.has_session_id = 1;
	o.session_id = 9;
	o.tokens = toks;
	o.n_tokens = n;
	o.prompt = (char *)prompt;
	if (dtype >= 0) {
		ti.has_dtype = ti.has_rows = ti.has_cols = 1;
		ti.dtype = (Itt__DType)dtype;
		ti.rows = rows;
		ti.cols = cols;
		o.hidden = &ti;
	}
	pack(&o.base, p);
}

static void step_body(uint32_t n, int dtype, uint32_t rows, uint32_t cols, struct packed *p)
{
	int32_t toks[16];
	Itt__StepRequest r = ITT__STEP_REQUEST__INIT;
	Itt__TensorInfo ti = ITT__TENSOR_INFO__INIT;
	for (uint32_t i = 0; i < n; i++)
		toks[i] = (int32_t)(i + 3);
	r.has_session_id = r.has_step = 1;
	r.session_id = 9;
	r.step = 1;
	r.tokens = toks;
	r.n_tokens = n;
	if (dtype >= 0) {
		ti.has_dtype = ti.has_rows = ti.has_cols = 1;
		ti.dtype = (Itt__DType)dtype;
		ti.rows = rows;
		ti.cols = cols;
		r.hidden = &ti;
	}
	pack(&r.base, p);
}

/* Expects INVALID_ARGUMENT with session 9 and no command from OPEN/STEP. */
static void expect_invalid(bool open, const struct packed *p, const void *t, size_t tlen,
                           const struct sched_info *info, const char *needle)
{
	struct sched_cmd *c = (struct sched_cmd *)1;
	uint64_t sid = 0;
	struct itt_err err = {0};
	int rc =
	    open
	        ? sched_decode_open(p->buf, p->len, t, tlen, info, &c, &sid, &err)
	        : sched_decode_step(p->buf, p->len, t, tlen, info, &c, &sid, &err);
	assert_int_equal(rc, ITT__CODE__INVALID_ARGUMENT);
	assert_null(c);
	assert_int_equal(sid, 9);
	if (!strstr(err.msg, needle))
		fail_msg("reason \"%s\" lacks \"%s\"", err.msg, needle);
}

static void test_stage_needs_hidden_of_the_right_shape(void **state)
{
	float t[3 * DIM] = {0};
	struct packed p;
	for (int open = 0; open <= 1; open++) {
		/* no tensor description, no frame */
		open ? open_body(3, -1, 0, 0, NULL, &p) : step_body(3, -1, 0, 0, &p);
		expect_invalid(open, &p, NULL, 0, &stage1, "hidden");
		/* description without a frame */
		open ? open_body(3, ITT__DTYPE__F32, 3, DIM, NULL, &p)
		     : step_body(3, ITT__DTYPE__F32, 3, DIM, &p);
		expect_invalid(open, &p, NULL, 0, &stage1, "bytes");
		/* frame without a description */
		open ? open_body(3, -1, 0, 0, NULL, &p) : step_body(3, -1, 0, 0, &p);
		expect_invalid(open, &p, t, sizeof t, &stage1, "no tensor description");
		/* rows != tokens */
		open ? open_body(3, ITT__DTYPE__F32, 2, DIM, NULL, &p)
		     : step_body(3, ITT__DTYPE__F32, 2, DIM, &p);
		expect_invalid(open, &p, t, 2 * DIM * sizeof(float), &stage1, "rows");
		/* cols != dim */
		open ? open_body(3, ITT__DTYPE__F32, 3, DIM + 1, NULL, &p)
		     : step_body(3, ITT__DTYPE__F32, 3, DIM + 1, &p);
		expect_invalid(open, &p, t, sizeof t, &stage1, "columns");
		/* byte length off by one element, and by one byte */
		open ? open_body(3, ITT__DTYPE__F32, 3, DIM, NULL, &p)
		     : step_body(3, ITT__DTYPE__F32, 3, DIM, &p);
		expect_invalid(open, &p, t, sizeof t - sizeof(float), &stage1, "bytes");
		expect_invalid(open, &p, t, sizeof t - 1, &stage1, "bytes");
		/* F16 rows in the length of F32 rows */
		open ? open_body(3, ITT__DTYPE__F16, 3, DIM, NULL, &p)
		     : step_body(3, ITT__DTYPE__F16, 3, DIM, &p);
		expect_invalid(open, &p, t, sizeof t, &stage1, "bytes");
		/* an unknown dtype */
		open ? open_body(3, 7, 3, DIM, NULL, &p) : step_body(3, 7, 3, DIM, &p);
		expect_invalid(open, &p, t, sizeof t, &stage1, "dtype");
	}
}

static void test_stage0_refuses_a_tensor(void **state)
{
	float t[2 * DIM] = {0};
	struct packed p;
	open_body(2, ITT__DTYPE__F32, 2, DIM, NULL, &p);
	expect_invalid(true, &p, t, sizeof t, &stage0, "no tensor");
	step_body(2, ITT__DTYPE__F32, 2, DIM, &p);
	expect_invalid(false, &p, t, sizeof t, &stage0, "no tensor");
	/* a frame alone, or a description alone */
	step_body(2, -1, 0, 0, &p);
	expect_invalid(false, &p, t, sizeof t, &stage0, "no tensor");
	step_body(2, ITT__DTYPE__F32, 2, DIM, &p);
	expect_invalid(false, &p, NULL, 0, &stage0, "no tensor");
}

static void test_text_prompt_only_on_stage0(void **state)
{
	struct packed p;
	open_body(0, -1, 0, 0, "Once upon a time", &p);
	expect_invalid(true, &p, NULL, 0, &stage1, "not a text prompt");
	/* no prompt and no tokens means BOS alone: text too */
	open_body(0, -1, 0, 0, NULL, &p);
	expect_invalid(true, &p, NULL, 0, &stage1, "not a text prompt");
}

/* OPEN {session 9, messages (role, content pairs), chat_template}. */
static void chat_body(const char *const *rc, size_t n, const char *tmpl, struct packed *p)
{
	Itt__ChatMessage m[4], *mp[4];
	Itt__SessionOpen o = ITT__SESSION_OPEN__INIT;
	for (size_t i = 0; i < n; i++) {
		Itt__ChatMessage init = ITT__CHAT_MESSAGE__INIT;
		m[i] = init;
		m[i].role = (char *)rc[2 * i];
		m[i].content = (char *)rc[2 * i + 1];
		mp[i] = &m[i];
	}
	o.has_session_id = 1;
	o.session_id = 9;
	o.messages = mp;
	o.n_messages = n;
	o.chat_template = (char *)tmpl;
	pack(&o.base, p);
}

/* A vocabulary of <unk>, <s>, </s>, <|im_start|>, <|im_end|> (control)
 * and the 256 byte tokens, so that any text encodes. */
static tokenizer_t *chat_vocab(void)
{
	static char names[256][8];
	struct gguf_str toks[261];
	float scores[261] = {0};
	int32_t types[261];
	const char *special[] = {"<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"};
	for (int i = 0; i < 5; i++) {
		toks[i] = (struct gguf_str){strlen(special[i]), special[i]};
		types[i] = i ? TOKENIZER_TYPE_CONTROL : TOKENIZER_TYPE_UNKNOWN;
	}
	for (int b = 0; b < 256; b++) {
		snprintf(names[b], sizeof names[b], "<0x%02X>", b);
		toks[5 + b] = (struct gguf_str){6, names[b]};
		types[5 + b] = TOKENIZER_TYPE_BYTE;
	}
	struct tokenizer_vocab v = {261, toks, scores, types, 1, 2, 0, true};
	tokenizer_t *t = NULL;
	assert_int_equal(tokenizer_new_from_vocab(&v, &t, NULL), 0);
	return t;
}

static void test_a_conversation_is_rendered_and_tokenized_with_special_tokens(void **state)
{
	struct packed p;
	struct sched_cmd *c = NULL;
	uint64_t sid = 0;
	struct itt_err err = {0};
	(void)state;
	struct sched_info info = stage0;
	info.vocab = 261;
	info.ctx_len = 256;
	info.tok = chat_vocab();
	chat_template_by_name("chatml", &info.chat, NULL);
	const char *conv[] = {"user", "hi"};
	chat_body(conv, 1, NULL, &p);
	assert_int_equal(sched_decode_open(p.buf, p.len, NULL, 0, &info, &c, &sid, &err), 0);
	assert_true(c->chat);
	assert_string_equal(c->prompt, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
	assert_int_equal(sched_prepare_open(&info, c, &err), 0);
	/* BOS, then <|im_start|> as one token; <|im_end|> ends the turn */
	assert_true(c->n_tokens > 3);
	assert_int_equal(c->tokens[0], 1);
	assert_int_equal(c->tokens[1], 3);
	bool has_end = false;
	for (uint32_t i = 0; i < c->n_tokens; i++)
		has_end |= c->tokens[i] == 4;
	assert_true(has_end);
	assert_int_equal(c->n_stop_tokens, 1);
	assert_int_equal(c->stop_tokens[0], 4);
	sched_cmd_free(&c);
	/* a named template: llama2 writes <s> itself, so no second BOS */
	const char *two[] = {"user", "hi"};
	chat_body(two, 1, "llama2", &p);
	assert_int_equal(sched_decode_open(p.buf, p.len, NULL, 0, &info, &c, &sid, &err), 0);
	assert_int_equal(sched_prepare_open(&info, c, &err), 0);
	assert_int_equal(c->tokens[0], 1);
	assert_true(c->tokens[1] != 1);
	assert_int_equal(c->n_stop_tokens, 0); /* its turn ends with EOS */
	sched_cmd_free(&c);
	/* refusals: an unknown name, turns llama2 refuses, an unknown model
	 * template, a later stage, messages with a prompt */
	chat_body(conv, 1, "jinja", &p);
	expect_invalid(true, &p, NULL, 0, &info, "chat_template");
	const char *twice[] = {"user", "a", "user", "b"};
	chat_body(twice, 2, "llama2", &p);
	expect_invalid(true, &p, NULL, 0, &info, "alternate");
	struct sched_info unknown = info;
	unknown.chat.family = CHAT_UNKNOWN;
	chat_body(conv, 1, NULL, &p);
	expect_invalid(true, &p, NULL, 0, &unknown, "not one itt recognises");
	expect_invalid(true, &p, NULL, 0, &stage1, "not a text prompt");
	const char *bad[] = {"tool", "x"};
	chat_body(bad, 1, NULL, &p);
	expect_invalid(true, &p, NULL, 0, &info, "messages[0].role");
	tokenizer_destroy((tokenizer_t **)&info.tok);
}

static void test_f32_and_f16_rows_decode(void **state)
{
	float f32[3 * DIM];
	uint16_t f16[3 * DIM];
	for (int i = 0; i < 3 * DIM; i++) {
		f32[i] = (float)(i - 5) * 0.37f;
		f16[i] = quant_fp32_to_fp16(f32[i]);
	}
	struct packed p;
	struct sched_cmd *c = NULL;
	uint64_t sid = 0;
	struct itt_err err = {0};

	open_body(3, ITT__DTYPE__F32, 3, DIM, NULL, &p);
	assert_int_equal(sched_decode_open(p.buf, p.len, f32, sizeof f32, &stage1, &c, &sid, &err),
	                 0);
	assert_non_null(c->hidden);
	assert_int_equal(c->n_tokens, 3);
	assert_memory_equal(c->hidden, f32, sizeof f32);
	assert_int_equal(c->reply_dtype, ITT__DTYPE__F32);
	sched_cmd_free(&c);

	/* F16 from an odd address: the frame need not be aligned */
	uint8_t *buf = malloc(sizeof f16 + 1);
	memcpy(buf + 1, f16, sizeof f16);
	step_body(3, ITT__DTYPE__F16, 3, DIM, &p);
	assert_int_equal(sched_decode_step(p.buf, p.len, buf + 1, sizeof f16, &stage1, &c, &sid,
	                                   &err),
	                 0);
	free(buf);
	assert_non_null(c->hidden);
	for (int i = 0; i < 3 * DIM; i++)
		assert_true(c->hidden[i] == quant_fp16_to_fp32(f16[i]));
	sched_cmd_free(&c);

	/* stage 0: tokens and no tensor, as before */
	open_body(3, -1, 0, 0, NULL, &p);
	assert_int_equal(
	    sched_decode_open(p.buf, p.len, NULL, 0, &stage0, &c, &sid, &err), 0);
	assert_null(c->hidden);
	sched_cmd_free(&c);
}

static void test_reply_dtype(void **state)
{
	Itt__SessionOpen o = ITT__SESSION_OPEN__INIT;
	int32_t toks[2] = {1, 5};
	struct packed p;
	struct sched_cmd *c = NULL;
	uint64_t sid = 0;
	struct itt_err err = {0};
	o.has_session_id = 1;
	o.session_id = 9;
	o.tokens = toks;
	o.n_tokens = 2;
	o.has_reply_dtype = 1;
	o.reply_dtype = ITT__DTYPE__F16;
	pack(&o.base, &p);
	assert_int_equal(
	    sched_decode_open(p.buf, p.len, NULL, 0, &stage0, &c, &sid, &err), 0);
	assert_int_equal(c->reply_dtype, ITT__DTYPE__F16);
	sched_cmd_free(&c);
	o.reply_dtype = (Itt__DType)9;
	pack(&o.base, &p);
	expect_invalid(true, &p, NULL, 0, &stage0, "reply_dtype");
}

static int settings(int threads, int batch, int slow, struct sched_cmd **c, struct itt_err *err)
{
	Itt__Settings m = ITT__SETTINGS__INIT;
	struct packed p;
	m.has_threads = threads >= 0;
	m.threads = (uint32_t)threads;
	m.has_batch_tokens = batch >= 0;
	m.batch_tokens = (uint32_t)batch;
	m.has_slow_ms = slow >= 0;
	m.slow_ms = (uint32_t)slow;
	pack(&m.base, &p);
	return sched_decode_settings(p.buf, p.len, 128, c, err);
}

static void test_settings_bounds(void **state)
{
	struct sched_cmd *c = NULL;
	struct itt_err err = {0};
	assert_int_equal(settings(2, 8, 5, &c, &err), 0);
	assert_true(c->kind == SCHED_CMD_SETTINGS && c->has_threads && c->has_batch_tokens &&
	            c->has_slow_ms);
	assert_true(c->set.threads == 2 && c->set.batch_tokens == 8 && c->set.slow_ms == 5);
	sched_cmd_free(&c);
	assert_int_equal(settings(-1, 128, -1, &c, &err), 0);
	assert_true(!c->has_threads && c->has_batch_tokens && !c->has_slow_ms);
	sched_cmd_free(&c);
	static const struct {
		int threads, batch, slow;
		const char *field;
	} bad[] = {{0, -1, -1, "threads"},      {65, -1, -1, "threads"},
	           {-1, 0, -1, "batch_tokens"}, {-1, 129, -1, "batch_tokens"},
	           {-1, -1, 10001, "slow_ms"},  {4, 8, 20000, "slow_ms"}};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_int_equal(settings(bad[i].threads, bad[i].batch, bad[i].slow, &c, &err),
		                 ITT__CODE__INVALID_ARGUMENT);
		assert_null(c);
		assert_non_null(strstr(err.msg, bad[i].field));
	}
}

static void test_assign_bounds(void **state)
{
	static const struct {
		const char *model;
		uint32_t first, last;
		int rc;
	} cases[] = {{"m", 0, 3, 0},
	             {"m", 2, 5, 0},
	             {"x", 0, 3, ITT__CODE__INVALID_ARGUMENT},
	             {NULL, 0, 3, ITT__CODE__INVALID_ARGUMENT},
	             {"m", 3, 3, ITT__CODE__INVALID_ARGUMENT},
	             {"m", 4, 2, ITT__CODE__INVALID_ARGUMENT},
	             {"m", 0, 6, ITT__CODE__INVALID_ARGUMENT}};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		Itt__Assign a = ITT__ASSIGN__INIT;
		struct packed p;
		struct sched_cmd *c = NULL;
		struct itt_err err = {0};
		a.model = (char *)cases[i].model;
		a.has_layer_first = a.has_layer_last = 1;
		a.layer_first = cases[i].first;
		a.layer_last = cases[i].last;
		pack(&a.base, &p);
		int rc = sched_decode_assign(p.buf, p.len, &stage0, "m", &c, &err);
		assert_int_equal(rc, cases[i].rc);
		if (rc) {
			assert_null(c);
			assert_true(err.msg[0]);
		} else {
			assert_true(c->kind == SCHED_CMD_ASSIGN && c->first == cases[i].first &&
			            c->last == cases[i].last);
			sched_cmd_free(&c);
		}
	}
}

/* OPEN {session 9, tokens [1, 2], the techniques given} on info, with a
 * tensor of `rows` rows on a stage > 0; returns the decoder's code (and the
 * command, or NULL). */
static int open_tech(const struct sched_info *info, Itt__Guidance *g, Itt__Speculative *sp,
                     Itt__EarlyExit *ee, uint32_t rows, struct sched_cmd **c, struct itt_err *err)
{
	int32_t toks[2] = {1, 2};
	float t[4 * DIM] = {0};
	struct packed p;
	uint64_t sid = 0;
	Itt__SessionOpen o = ITT__SESSION_OPEN__INIT;
	Itt__TensorInfo ti = ITT__TENSOR_INFO__INIT;
	o.has_session_id = 1;
	o.session_id = 9;
	o.tokens = toks;
	o.n_tokens = 2;
	o.guidance = g;
	o.speculative = sp;
	o.early_exit = ee;
	if (info->first > 0) {
		ti.has_dtype = ti.has_rows = ti.has_cols = 1;
		ti.dtype = ITT__DTYPE__F32;
		ti.rows = rows;
		ti.cols = DIM;
		o.hidden = &ti;
	}
	pack(&o.base, &p);
	err->msg[0] = 0;
	return sched_decode_open(p.buf, p.len, info->first > 0 ? t : NULL,
	                         info->first > 0 ? rows * DIM * sizeof(float) : 0, info, c, &sid,
	                         err);
}

static void expect_tech_invalid(const struct sched_info *info, Itt__Guidance *g,
                                Itt__Speculative *sp, Itt__EarlyExit *ee, uint32_t rows,
                                const char *needle)
{
	struct sched_cmd *c = NULL;
	struct itt_err err = {0};
	assert_int_equal(open_tech(info, g, sp, ee, rows, &c, &err), ITT__CODE__INVALID_ARGUMENT);
	assert_null(c);
	if (!strstr(err.msg, needle))
		fail_msg("reason \"%s\" lacks \"%s\"", err.msg, needle);
}

static void test_techniques_checked_against_the_worker(void **state)
{
	static const struct sched_info whole = {.vocab = 32,
	                                        .ctx_len = 64,
	                                        .dim = DIM,
	                                        .n_layers = 5,
	                                        .n_heads = 4,
	                                        .first = 0,
	                                        .last = 5,
	                                        .eos = 2,
	                                        .bos = 1};
	struct sched_cmd *c = NULL;
	struct itt_err err = {0};
	char *bad_head[] = {"9:0"}, *bad_qhead[] = {"1:4"}, *heads[] = {"1:2", "4:3"};
	uint32_t layers[] = {1, 2}, high[] = {4};

	Itt__Guidance g = ITT__GUIDANCE__INIT;
	g.has_scale = 1;
	g.scale = 2.0f;
	g.heads = bad_head;
	g.n_heads = 1;
	expect_tech_invalid(&whole, &g, NULL, NULL, 2, "no such head");
	g.heads = bad_qhead; /* 4 query heads: 0..3 */
	expect_tech_invalid(&whole, &g, NULL, NULL, 2, "no such head");
	g.heads = heads;
	g.n_heads = 2;
	g.has_blend = 1;
	g.blend = 1.5f;
	expect_tech_invalid(&whole, &g, NULL, NULL, 2, "blend");
	g.blend = 0.25f;
	g.scale = -1.0f;
	expect_tech_invalid(&whole, &g, NULL, NULL, 2, "scale");
	g.scale = 2.0f;
	/* heads: the mask of the whole model */
	assert_int_equal(open_tech(&whole, &g, NULL, NULL, 2, &c, &err), 0);
	assert_non_null(c->tech.g_mask);
	for (uint32_t i = 0; i < 5 * 4; i++)
		assert_int_equal(c->tech.g_mask[i], i == 1 * 4 + 2 || i == 4 * 4 + 3);
	assert_true(c->tech.g_blend == 0.25f && c->tech.g_scale == 2.0f);
	sched_cmd_free(&c);
	/* across stages the branch rows follow the main rows: 2 x tokens */
	expect_tech_invalid(&stage1, &g, NULL, NULL, 2, "rows");
	assert_int_equal(open_tech(&stage1, &g, NULL, NULL, 4, &c, &err), 0);
	assert_int_equal(c->hidden_rows, 4);
	sched_cmd_free(&c);
	/* scale 0: no branch, plain rows */
	g.scale = 0.0f;
	assert_int_equal(open_tech(&stage1, &g, NULL, NULL, 2, &c, &err), 0);
	assert_null(c->tech.g_mask);
	sched_cmd_free(&c);
	/* a negative prompt needs the whole model */
	Itt__Guidance neg = ITT__GUIDANCE__INIT;
	neg.has_scale = 1;
	neg.scale = 1.5f;
	neg.negative_prompt = "bad";
	expect_tech_invalid(&stage0, &neg, NULL, NULL, 2, "whole-model");
	expect_tech_invalid(&whole, &neg, NULL, NULL, 2, "no tokenizer");

	Itt__Speculative sp = ITT__SPECULATIVE__INIT;
	sp.draft = "foo";
	sp.has_max_draft = 1;
	sp.max_draft = 4;
	expect_tech_invalid(&whole, NULL, &sp, NULL, 2, "draft");
	sp.draft = "ngram";
	sp.max_draft = 0;
	expect_tech_invalid(&whole, NULL, &sp, NULL, 2, "max_draft");
	sp.max_draft = 4;
	assert_int_equal(open_tech(&stage1, NULL, &sp, NULL, 2, &c, &err), 0);
	assert_true(c->tech.spec && !c->tech.spec_exit && c->tech.spec_max == 4 &&
	            c->tech.ngram_min == 1 && c->tech.ngram_max == 3);
	sched_cmd_free(&c);
	sp.draft = "exit";
	sp.has_exit_layers = 1;
	sp.exit_layers = 5;
	expect_tech_invalid(&whole, NULL, &sp, NULL, 2, "exit_layers");
	sp.exit_layers = 2;
	expect_tech_invalid(&stage0, NULL, &sp, NULL, 2, "whole-model");
	assert_int_equal(open_tech(&whole, NULL, &sp, NULL, 2, &c, &err), 0);
	assert_true(c->tech.spec_exit && c->tech.spec_exit_layers == 2);
	sched_cmd_free(&c);

	Itt__EarlyExit ee = ITT__EARLY_EXIT__INIT;
	ee.has_threshold = 1;
	ee.threshold = 0.5f;
	ee.layers = high;
	ee.n_layers = 1;
	expect_tech_invalid(&whole, NULL, NULL, &ee, 2, "early_exit.layers");
	ee.layers = layers;
	ee.n_layers = 2;
	expect_tech_invalid(&stage1, NULL, NULL, &ee, 2, "whole-model");
	g.scale = 2.0f;
	expect_tech_invalid(&whole, &g, NULL, &ee, 2, "does not combine");
	assert_int_equal(open_tech(&whole, NULL, NULL, &ee, 2, &c, &err), 0);
	assert_true(c->tech.ee && c->tech.n_ee == 2 && c->tech.ee_layers[1] == 2 &&
	            c->tech.ee_threshold == 0.5f);
	sched_cmd_free(&c);
}

static void test_step_pos_and_branch_rows(void **state)
{
	int32_t toks[2] = {3, 4};
	float t[4 * DIM] = {0};
	struct packed p;
	struct sched_cmd *c = NULL;
	uint64_t sid = 0;
	struct itt_err err = {0};
	Itt__StepRequest r = ITT__STEP_REQUEST__INIT;
	Itt__TensorInfo ti = ITT__TENSOR_INFO__INIT;
	r.has_session_id = r.has_step = r.has_pos = 1;
	r.session_id = 9;
	r.step = 2;
	r.tokens = toks;
	r.n_tokens = 2;
	r.pos = 7;
	pack(&r.base, &p);
	assert_int_equal(
	    sched_decode_step(p.buf, p.len, NULL, 0, &stage0, &c, &sid, &err), 0);
	assert_true(c->has_pos && c->pos == 7 && c->n_tokens == 2);
	sched_cmd_free(&c);
	r.pos = 64; /* the context */
	pack(&r.base, &p);
	expect_invalid(false, &p, NULL, 0, &stage0, "pos");
	r.pos = 7;
	ti.has_dtype = ti.has_rows = ti.has_cols = 1;
	ti.dtype = ITT__DTYPE__F32;
	ti.cols = DIM;
	r.hidden = &ti;
	for (uint32_t rows = 1; rows <= 4; rows++) {
		ti.rows = rows;
		pack(&r.base, &p);
		int rc = sched_decode_step(p.buf, p.len, t, rows * DIM * sizeof(float), &stage1, &c,
		                           &sid, &err);
		if (rows == 2 || rows == 4) {
			assert_int_equal(rc, 0);
			assert_int_equal(c->hidden_rows, rows);
			sched_cmd_free(&c);
		} else {
			assert_int_equal(rc, ITT__CODE__INVALID_ARGUMENT);
			assert_null(c);
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_stage_needs_hidden_of_the_right_shape),
	    cmocka_unit_test(test_stage0_refuses_a_tensor),
	    cmocka_unit_test(test_text_prompt_only_on_stage0),
	    cmocka_unit_test(test_a_conversation_is_rendered_and_tokenized_with_special_tokens),
	    cmocka_unit_test(test_f32_and_f16_rows_decode),
	    cmocka_unit_test(test_reply_dtype),
	    cmocka_unit_test(test_settings_bounds),
	    cmocka_unit_test(test_assign_bounds),
	    cmocka_unit_test(test_techniques_checked_against_the_worker),
	    cmocka_unit_test(test_step_pos_and_branch_rows),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
