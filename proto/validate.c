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
}

static int bad(char *reason, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *reason, size_t cap, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, cap, fmt, ap);
	va_end(ap);
	return ITT__CODE__INVALID_ARGUMENT;
}

int validate_sampling(const Itt__SamplingParams *p, uint32_t vocab, const struct wire_limits *l,
		      struct sampler_params *out, struct sampler_bias *bias_buf, size_t bias_cap,
		      char *reason, size_t cap)
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
		return bad(reason, cap, "sampling.logit_bias has %zu entries; at most %u",
			   p->n_logit_bias, l->max_bias);
	for (size_t i = 0; i < p->n_logit_bias; i++) {
		const Itt__LogitBias *b = p->logit_bias[i];
		if (b->token < 0 || (vocab && (uint32_t)b->token >= vocab))
			return bad(reason, cap, "sampling.logit_bias[%zu].token %d is not a token id",
				   i, b->token);
		if (isnan(b->bias) || b->bias == INFINITY)
			return bad(reason, cap, "sampling.logit_bias[%zu].bias must be finite or -inf",
				   i);
		bias_buf[i].token = b->token;
		bias_buf[i].bias = b->bias;
	}
	out->bias = p->n_logit_bias ? bias_buf : NULL;
	out->n_bias = p->n_logit_bias;
	struct itt_err err = {0};
	/* vocab unknown (broker): let every token id pass the sampler check */
	if (sampler_params_validate(out, vocab ? vocab : INT32_MAX, &err) < 0)
		return bad(reason, cap, "sampling: %s", err.msg);
	return 0;
}

static int check_str(const char *s, const char *field, uint32_t lo, uint32_t hi, char *reason,
		     size_t cap)
{
	size_t n = s ? strlen(s) : 0;
	if (n < lo || n > hi)
		return bad(reason, cap, "%s has %zu bytes; it must have %u..%u", field, n, lo, hi);
	return 0;
}

int validate_generate(const Itt__GenerateRequest *r, const struct wire_limits *l, uint32_t vocab,
		      char *reason, size_t cap)
{
	int rc;
	if ((rc = check_str(r->request_id, "request_id", 1, l->max_id_len, reason, cap)) ||
	    (rc = check_str(r->client_id, "client_id", 1, l->max_id_len, reason, cap)) ||
	    (rc = check_str(r->model, "model", 1, l->max_name_len, reason, cap)) ||
	    (rc = check_str(r->tenant, "tenant", 0, l->max_name_len, reason, cap)) ||
	    (rc = check_str(r->api_key, "api_key", 0, l->max_name_len, reason, cap)))
		return rc;
	size_t plen = r->prompt ? strlen(r->prompt) : 0;
	if (plen > l->max_prompt_bytes)
		return bad(reason, cap, "prompt has %zu bytes; at most %u", plen, l->max_prompt_bytes);
	if (plen && r->n_prompt_tokens)
		return bad(reason, cap, "prompt and prompt_tokens are exclusive");
	if (r->n_prompt_tokens > l->max_prompt_tokens)
		return bad(reason, cap, "prompt_tokens has %zu ids; at most %u", r->n_prompt_tokens,
			   l->max_prompt_tokens);
	for (size_t i = 0; i < r->n_prompt_tokens; i++)
		if (r->prompt_tokens[i] < 0 || (vocab && (uint32_t)r->prompt_tokens[i] >= vocab))
			return bad(reason, cap, "prompt_tokens[%zu] = %d is not a token id", i,
				   r->prompt_tokens[i]);
	if (r->has_max_tokens && (r->max_tokens < 0 || r->max_tokens > l->max_tokens_limit))
		return bad(reason, cap, "max_tokens %d out of range [0, %d]", r->max_tokens,
			   l->max_tokens_limit);
	if (r->n_stop > l->max_stops)
		return bad(reason, cap, "stop has %zu strings; at most %u", r->n_stop, l->max_stops);
	for (size_t i = 0; i < r->n_stop; i++) {
		char field[32];
		snprintf(field, sizeof field, "stop[%zu]", i);
		if ((rc = check_str(r->stop[i], field, 1, l->max_stop_len, reason, cap)))
			return rc;
	}
	if (r->has_deadline_ms && r->deadline_ms > l->deadline_max_ms)
		return bad(reason, cap, "deadline_ms %u exceeds the limit of %u", r->deadline_ms,
			   l->deadline_max_ms);
	struct sampler_params sp;
	struct sampler_bias bias[1024];
	return validate_sampling(r->sampling, vocab, l, &sp, bias, sizeof bias / sizeof bias[0],
				 reason, cap);
}
