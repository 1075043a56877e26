/* validate: limits and field checks for protocol bodies. */
#include "validate.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "err.h"

void wire_limits_default(struct wire_limits *l)
{
	l->max_id_len = 64;
	l->max_name_len = 128;
	l->max_prompt_bytes = 262144;
	l->max_prompt_tokens = 65536;
	l->max_tokens_limit = 65536;
	l->max_tokens_default = 128;
	l->max_stops = 8;
	l->max_stop_len = 64;
	l->max_bias = 1024;
	l->deadline_default_ms = 300000;
	l->deadline_max_ms = 3600000;
	l->max_messages = 256;
}

/* Every check here fails INVALID_ARGUMENT with a reason naming the field. */
#define bad(err, ...) itt_err_set((err), ITT__CODE__INVALID_ARGUMENT, __VA_ARGS__)

int validate_sampling(const Itt__SamplingParams *p, uint32_t vocab, const struct wire_limits *l,
		      struct sampler_params *out, struct sampler_bias *bias_buf, size_t bias_cap,
		      struct itt_err *err)
{
	sampler_params_default(out);
	if (!p)
		return 0;
	if (p->has_temperature)
		out->temperature = p->temperature;
	if (p->has_top_k)
		out->top_k = p->top_k;
	if (p->has_top_p)
		out->top_p = p->top_p;
	if (p->has_min_p)
		out->min_p = p->min_p;
	if (p->has_typical_p)
		out->typical_p = p->typical_p;
	if (p->has_repeat_penalty)
		out->repeat_penalty = p->repeat_penalty;
	if (p->has_repeat_last_n)
		out->penalty_last_n = p->repeat_last_n;
	if (p->has_presence_penalty)
		out->presence_penalty = p->presence_penalty;
	if (p->has_frequency_penalty)
		out->frequency_penalty = p->frequency_penalty;
	if (p->has_seed)
		out->seed = p->seed;
	if (p->n_logit_bias > l->max_bias || p->n_logit_bias > bias_cap)
		return bad(err, "sampling.logit_bias has %zu entries; at most %u",
			   p->n_logit_bias, l->max_bias);
	for (size_t i = 0; i < p->n_logit_bias; i++) {
		const Itt__LogitBias *b = p->logit_bias[i];
		if (b->token < 0 || (vocab && (uint32_t)b->token >= vocab))
			return bad(err, "sampling.logit_bias[%zu].token %d is not a token id",
				   i, b->token);
		if (isnan(b->bias) || b->bias == INFINITY)
			return bad(err, "sampling.logit_bias[%zu].bias must be finite or -inf",
				   i);
		bias_buf[i].token = b->token;
		bias_buf[i].bias = b->bias;
	}
	out->bias = p->n_logit_bias ? bias_buf : NULL;
	out->n_bias = p->n_logit_bias;
	struct itt_err se = {0};
	/* vocab unknown (broker): let every token id pass the sampler check */
	if (sampler_params_validate(out, vocab ? vocab : INT32_MAX, &se) < 0)
		return bad(err, "sampling: %s", se.msg);
	return 0;
}

static int check_str(const char *s, const char *field, uint32_t lo, uint32_t hi, struct itt_err *err)
{
	size_t n = s ? strlen(s) : 0;
	if (n < lo || n > hi)
		return bad(err, "%s has %zu bytes; it must have %u..%u", field, n, lo, hi);
	return 0;
}

int validate_messages(Itt__ChatMessage *const *m, size_t n, const char *chat_template,
		      const struct wire_limits *l, struct itt_err *err)
{
	size_t total = 0;
	if (chat_template && !n)
		return bad(err, "chat_template is only valid with messages");
	if (chat_template && (!*chat_template || strlen(chat_template) > VALIDATE_MAX_TEMPLATE_NAME))
		return bad(err, "chat_template has %zu bytes; it must have 1..%d",
			   strlen(chat_template), VALIDATE_MAX_TEMPLATE_NAME);
	if (n > l->max_messages)
		return bad(err, "messages has %zu entries; at most %u", n, l->max_messages);
	for (size_t i = 0; i < n; i++) {
		const char *role = m[i]->role ? m[i]->role : "";
		if (strcmp(role, "user") && strcmp(role, "assistant") && strcmp(role, "system"))
			return bad(err,
				   "messages[%zu].role \"%.32s\" must be system, user or assistant",
				   i, role);
		if (i && !strcmp(role, "system"))
			return bad(err, "messages[%zu]: a system message may only come first", i);
		total += m[i]->content ? strlen(m[i]->content) : 0;
	}
	if (total > l->max_prompt_bytes)
		return bad(err, "messages have %zu bytes of content; at most %u", total,
			   l->max_prompt_bytes);
	return 0;
}

int validate_generate(const Itt__GenerateRequest *r, const struct wire_limits *l, uint32_t vocab,
		      struct itt_err *err)
{
	int rc;
	if ((rc = check_str(r->request_id, "request_id", 1, l->max_id_len, err)) ||
	    (rc = check_str(r->client_id, "client_id", 1, l->max_id_len, err)) ||
	    (rc = check_str(r->model, "model", 1, l->max_name_len, err)) ||
	    (rc = check_str(r->tenant, "tenant", 0, l->max_name_len, err)) ||
	    (rc = check_str(r->api_key, "api_key", 0, l->max_name_len, err)))
		return rc;
	size_t plen = r->prompt ? strlen(r->prompt) : 0;
	if (plen > l->max_prompt_bytes)
		return bad(err, "prompt has %zu bytes; at most %u", plen, l->max_prompt_bytes);
	if (plen && r->n_prompt_tokens)
		return bad(err, "prompt and prompt_tokens are exclusive");
	if (r->n_messages && (plen || r->n_prompt_tokens))
		return bad(err, "messages and %s are exclusive", plen ? "prompt" : "prompt_tokens");
	if ((rc = validate_messages(r->messages, r->n_messages, r->chat_template, l, err)))
		return rc;
	if (r->n_prompt_tokens > l->max_prompt_tokens)
		return bad(err, "prompt_tokens has %zu ids; at most %u", r->n_prompt_tokens,
			   l->max_prompt_tokens);
	for (size_t i = 0; i < r->n_prompt_tokens; i++)
		if (r->prompt_tokens[i] < 0 || (vocab && (uint32_t)r->prompt_tokens[i] >= vocab))
			return bad(err, "prompt_tokens[%zu] = %d is not a token id", i,
				   r->prompt_tokens[i]);
	if (r->has_max_tokens && (r->max_tokens < 0 || r->max_tokens > l->max_tokens_limit))
		return bad(err, "max_tokens %d out of range [0, %d]", r->max_tokens,
			   l->max_tokens_limit);
	if (r->n_stop > l->max_stops)
		return bad(err, "stop has %zu strings; at most %u", r->n_stop, l->max_stops);
	for (size_t i = 0; i < r->n_stop; i++) {
		char field[32];
		snprintf(field, sizeof field, "stop[%zu]", i);
		if ((rc = check_str(r->stop[i], field, 1, l->max_stop_len, err)))
			return rc;
	}
	if (r->has_deadline_ms && r->deadline_ms > l->deadline_max_ms)
		return bad(err, "deadline_ms %u exceeds the limit of %u", r->deadline_ms,
			   l->deadline_max_ms);
	struct sampler_params sp;
	struct sampler_bias bias[1024];
	return validate_sampling(r->sampling, vocab, l, &sp, bias, sizeof bias / sizeof bias[0], err);
}

int validate_parse_head(const char *s, uint32_t *layer, uint32_t *head)
{
	uint32_t v[2] = {0, 0};
	int part = 0, digits = 0;
	for (const char *c = s; ; c++) {
		if (*c >= '0' && *c <= '9') {
			if (++digits > 6)
				return -1;
			v[part] = v[part] * 10u + (uint32_t)(*c - '0');
		} else if (*c == ':' && part == 0 && digits) {
			part = 1;
			digits = 0;
		} else if (*c == 0 && part == 1 && digits) {
			break;
		} else {
			return -1;
		}
	}
	*layer = v[0];
	*head = v[1];
	return 0;
}

static int validate_guidance(const Itt__Guidance *g, uint32_t n_layers, uint32_t n_heads,
			     bool allow_head_set, struct itt_err *err)
{
	bool has_set = g->head_set && *g->head_set;
	bool has_neg = g->negative_prompt && *g->negative_prompt;
	if ((g->n_heads > 0) + has_set + has_neg > 1)
		return bad(err, "guidance: heads, head_set and negative_prompt are exclusive");
	if (has_set && !allow_head_set)
		return bad(err, "guidance.head_set %.64s was not expanded", g->head_set);
	if (g->has_scale && !(g->scale >= 0.0f && g->scale <= VALIDATE_MAX_SCALE))
		return bad(err, "guidance.scale must be in [0, %g], got %g",
			   (double)VALIDATE_MAX_SCALE, (double)g->scale);
	if (g->has_blend && !(g->blend >= 0.0f && g->blend <= 1.0f))
		return bad(err, "guidance.blend must be in [0, 1], got %g", (double)g->blend);
	if (g->scale > 0 && !g->n_heads && !has_set && !has_neg)
		return bad(err,
			   "guidance.scale > 0 needs heads, a head_set or a negative_prompt");
	if (has_neg && strlen(g->negative_prompt) > 262144)
		return bad(err, "guidance.negative_prompt has more than 262144 bytes");
	if (g->n_heads > VALIDATE_MAX_HEADS)
		return bad(err, "guidance.heads has %zu entries; at most %d", g->n_heads,
			   VALIDATE_MAX_HEADS);
	for (size_t i = 0; i < g->n_heads; i++) {
		uint32_t l, h;
		if (validate_parse_head(g->heads[i], &l, &h) < 0)
			return bad(err, "guidance.heads[%zu] = \"%.32s\" is not LAYER:HEAD", i,
				   g->heads[i]);
		if ((n_layers && l >= n_layers) || (n_heads && h >= n_heads))
			return bad(err,
				   "guidance.heads[%zu] = %u:%u: no such head (the model has %u "
				   "layers of %u heads)",
				   i, l, h, n_layers, n_heads);
		for (size_t j = 0; j < i; j++) {
			uint32_t l2, h2;
			if (validate_parse_head(g->heads[j], &l2, &h2) == 0 && l2 == l && h2 == h)
				return bad(err, "guidance.heads: %u:%u is listed twice", l, h);
		}
	}
	return 0;
}

static int validate_speculative(const Itt__Speculative *s, uint32_t n_layers, struct itt_err *err)
{
	const char *d = s->draft ? s->draft : "ngram";
	bool ngram = !strcmp(d, "ngram"), exitd = !strcmp(d, "exit");
	if (!ngram && !exitd)
		return bad(err, "speculative.draft must be \"ngram\" or \"exit\", got \"%.32s\"",
			   d);
	if (!s->has_max_draft || s->max_draft < 1 || s->max_draft > VALIDATE_MAX_DRAFT)
		return bad(err, "speculative.max_draft must be in [1, %d], got %u",
			   VALIDATE_MAX_DRAFT, s->has_max_draft ? s->max_draft : 0);
	if (exitd && (!s->has_exit_layers || s->exit_layers < 1 ||
		      (n_layers && s->exit_layers >= n_layers)))
		return bad(err, "speculative.exit_layers must be in [1, %u), got %u",
			   n_layers, s->exit_layers);
	uint32_t lo = s->has_ngram_min ? s->ngram_min : 1, hi = s->has_ngram_max ? s->ngram_max : 3;
	if (lo < 1 || hi < lo || hi > VALIDATE_MAX_NGRAM)
		return bad(err,
			   "speculative: need 1 <= ngram_min <= ngram_max <= %d, got %u and %u",
			   VALIDATE_MAX_NGRAM, lo, hi);
	return 0;
}

static int validate_early_exit(const Itt__EarlyExit *e, uint32_t n_layers, struct itt_err *err)
{
	if (!e->has_threshold || !(e->threshold >= 0.0f && e->threshold <= 1.0f))
		return bad(err, "early_exit.threshold must be in [0, 1]");
	if (e->n_layers < 1 || e->n_layers > VALIDATE_MAX_EXITS)
		return bad(err, "early_exit.layers has %zu entries; 1..%d", e->n_layers,
			   VALIDATE_MAX_EXITS);
	for (size_t i = 0; i < e->n_layers; i++) {
		if (i && e->layers[i] <= e->layers[i - 1])
			return bad(err, "early_exit.layers must ascend (%u after %u)",
				   e->layers[i], e->layers[i - 1]);
		if (n_layers && e->layers[i] + 1 >= n_layers)
			return bad(err,
				   "early_exit.layers[%zu] = %u: must be below %u (the last layer "
				   "is the full model)",
				   i, e->layers[i], n_layers ? n_layers - 1 : 0);
	}
	return 0;
}

int validate_techniques(const Itt__Guidance *g, const Itt__Speculative *sp,
			const Itt__EarlyExit *ee, uint32_t n_layers, uint32_t n_heads,
			bool allow_head_set, struct itt_err *err)
{
	int rc;
	if (g && (rc = validate_guidance(g, n_layers, n_heads, allow_head_set, err)))
		return rc;
	if (sp && (rc = validate_speculative(sp, n_layers, err)))
		return rc;
	if (ee && (rc = validate_early_exit(ee, n_layers, err)))
		return rc;
	return 0;
}
