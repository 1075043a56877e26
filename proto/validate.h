/* validate: field-by-field checks of protocol bodies against the limits of
 * PROTOCOL.md, shared by the broker (SUBMIT) and the worker (OPEN).  Every
 * failure returns ITT__CODE__INVALID_ARGUMENT and fills the struct itt_err
 * (when not NULL) with that code and a reason naming the field and value. */
#ifndef ITT_VALIDATE_H
#define ITT_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "itt.pb-c.h"
#include "sampling.h"

struct wire_limits {
	uint32_t max_id_len;          /* request_id, client_id: 64 */
	uint32_t max_name_len;        /* model, tenant, api_key: 128 */
	uint32_t max_prompt_bytes;    /* 262144 */
	uint32_t max_prompt_tokens;   /* 65536 */
	int32_t max_tokens_limit;     /* 65536 */
	int32_t max_tokens_default;   /* 128 */
	uint32_t max_stops;           /* 8 */
	uint32_t max_stop_len;        /* 64 */
	uint32_t max_bias;            /* 1024 */
	uint32_t deadline_default_ms; /* 300000 */
	uint32_t deadline_max_ms;     /* 3600000 */
	uint32_t max_messages;        /* chat messages: 256 */
};

void wire_limits_default(struct wire_limits *l);

/* Checks a SUBMIT body (ids, names, prompt/prompt_tokens, max_tokens,
 * stop strings, deadline, sampling).  vocab 0 skips token range checks
 * (the worker repeats them). */
int validate_generate(const Itt__GenerateRequest *r, const struct wire_limits *l, uint32_t vocab,
		      struct itt_err *err);

/* Longest chat template name (GenerateRequest.chat_template). */
#define VALIDATE_MAX_TEMPLATE_NAME 32

/* Checks a conversation (GenerateRequest.messages, SessionOpen.messages)
 * and its chat_template name (NULL: none): 1..max_messages messages, roles
 * "system" (first only), "user" or "assistant", contents of at most
 * max_prompt_bytes together, a name of 1..VALIDATE_MAX_TEMPLATE_NAME bytes
 * and only with messages.  Which names exist is the worker's to say. */
int validate_messages(Itt__ChatMessage *const *m, size_t n, const char *chat_template,
		      const struct wire_limits *l, struct itt_err *err);

/* Fills out from p (NULL: all defaults) with llama.cpp's defaults for
 * absent fields, and validates it; the bias entries are copied into
 * bias_buf (bias_cap entries), which out->bias then points to. */
int validate_sampling(const Itt__SamplingParams *p, uint32_t vocab, const struct wire_limits *l,
		      struct sampler_params *out, struct sampler_bias *bias_buf, size_t bias_cap,
		      struct itt_err *err);

/* Limits of the techniques (PROTOCOL.md, "Techniques"). */
#define VALIDATE_MAX_HEADS     4096
#define VALIDATE_MAX_SCALE     100.0f
#define VALIDATE_MAX_DRAFT     16
#define VALIDATE_MAX_NGRAM     8
#define VALIDATE_MAX_EXITS     64

/* Parses "L:H" (decimal, no spaces) into *layer, *head; -1 when malformed. */
int validate_parse_head(const char *s, uint32_t *layer, uint32_t *head);

/* Checks guidance, speculative and early_exit of a request (or of an OPEN:
 * the same messages) against the model's shape: n_layers and n_heads (0:
 * unknown, the bound checks that need it are skipped; the worker repeats
 * them).  head_set must already be expanded into heads by the broker, or
 * allow_head_set lets it through (a broker that has not expanded it yet).
 * 0, or ITT__CODE__INVALID_ARGUMENT with a reason naming the field. */
int validate_techniques(const Itt__Guidance *g, const Itt__Speculative *sp,
			const Itt__EarlyExit *ee, uint32_t n_layers, uint32_t n_heads,
			bool allow_head_set, struct itt_err *err);

#endif
