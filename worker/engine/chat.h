/* chat: chat templates without a Jinja engine.  A GGUF's
 * tokenizer.chat_template (a Jinja program) is recognised by distinctive
 * markers in its text, as llama.cpp's llm_chat_detect_template does, and the
 * conversation is rendered by C code that writes exactly the text the
 * template writes for a list of {role, content} messages with
 * add_generation_prompt (checked against jinja2 on the real templates by
 * tests/integration/test_chat_templates.py).
 *
 * Families (chat_template_name, the names --chat-template takes):
 *   chatml             <|im_start|>ROLE\nCONTENT<|im_end|>\n ... (Qwen and many others)
 *   llama2             <s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] A </s> (Llama 2 chat)
 *   llama3             <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT<|eot_id|>
 *   llama3.1           llama3 with the "Cutting Knowledge Date" system header (3.1-3.3)
 *   mistral-v1         <s> [INST] U [/INST] A</s>
 *   mistral-v3         <s>[INST] U[/INST] A</s>
 *   mistral-v3-tekken  <s>[INST]U[/INST]A</s>     (Nemo; v1-v3: the system message
 *                                                  opens the last user turn)
 *   mistral-v7         <s>[SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] U[/INST] A</s>
 *   mistral-v7-tekken  the same without the spaces (Mistral Small 3, Devstral)
 *   gemma              <start_of_turn>user\nU<end_of_turn>\n (system joins the first turn)
 *   phi3               <|user|>\nU<|end|>\n
 *   granite            <|start_of_role|>ROLE<|end_of_role|>CONTENT<|end_of_text|>\n
 *
 * What is not reproduced: tools, multimodal content, "thinking" switches,
 * and the default system prompts some models insert when the conversation
 * has none (Qwen 2.5's is; Llama 3.1's date header is, with the templates'
 * own default date "26 Jul 2024", so that a conversation renders the same
 * every day).
 *
 * Fallback (chat_template_from_gguf): a model without a chat template (or
 * with an empty one) renders as chatml (as llama.cpp does); a template that
 * is present but not recognised is refused (family CHAT_UNKNOWN,
 * chat_render fails) unless the request names a template: guessing would
 * silently give a model a format it was not trained on.
 *
 * Roles are "system", "user" and "assistant"; a system message may only be
 * the first.  Families whose templates insist on alternation (llama2,
 * mistral-*, gemma) refuse a conversation whose turns after the system
 * message do not alternate user, assistant, user, ... (as their templates
 * raise an exception). */
#ifndef ITT_CHAT_H
#define ITT_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"
#include "tokenizer.h"

enum chat_family {
	CHAT_UNKNOWN = 0,
	CHAT_CHATML,
	CHAT_LLAMA2,
	CHAT_LLAMA3,
	CHAT_LLAMA31,
	CHAT_MISTRAL_V1,
	CHAT_MISTRAL_V3,
	CHAT_MISTRAL_V3_TEKKEN,
	CHAT_MISTRAL_V7,
	CHAT_MISTRAL_V7_TEKKEN,
	CHAT_GEMMA,
	CHAT_PHI3,
	CHAT_GRANITE,
	CHAT_N_FAMILIES
};

/* Longest template name, without the NUL. */
#define CHAT_MAX_NAME 32

/* A recognised template: its family and the variations within it that the
 * markers tell apart. */
struct chat_template {
	enum chat_family family;
	bool bos;                   /* the text starts with the BOS token's text */
	const char *default_system; /* static text used when there is no system message, or NULL */
	bool fallback;              /* chosen because the model has no template */
};

struct chat_msg {
	const char *role; /* "system", "user" or "assistant" */
	const char *content;
};

/* The family's name ("chatml"), or "unknown". */
const char *chat_template_name(const struct chat_template *t);

/* The template called name (one of the families above); ITT_E_NOTFOUND
 * with a reason listing the names otherwise. */
int chat_template_by_name(const char *name, struct chat_template *out, struct itt_err *err);

/* Recognises a template by its text (len bytes); a text that is itself a
 * family's name counts as that template.  Returns the family (CHAT_UNKNOWN
 * when nothing matches) and fills *out. */
enum chat_family chat_template_detect(const char *text, size_t len, struct chat_template *out);

/* The model's template from g's tokenizer.chat_template: detected when
 * present (CHAT_UNKNOWN when unrecognised), chatml with fallback set when
 * absent or empty.  Returns 0, or an error (and CHAT_UNKNOWN) when the key
 * is not a string. */
int chat_template_from_gguf(const gguf_t *g, struct chat_template *out, struct itt_err *err);

/* Renders msgs[0..n) with the generation prompt into a new NUL-terminated
 * string *out (*len bytes, caller frees).  bos/eos: the texts of the
 * model's BOS and EOS tokens (the templates write them; NULL: "<s>" and
 * "</s>").  ITT_E_INVALID with a reason for an unknown family, a bad role,
 * a misplaced system message or turns a family refuses; ITT_E_NOMEM. */
int chat_render(const struct chat_template *t, const struct chat_msg *msgs, size_t n,
                const char *bos, const char *eos, char **out, size_t *len, struct itt_err *err);

/* The text of the token that ends an assistant turn ("<|im_end|>"), or NULL
 * when it is the model's EOS. */
const char *chat_end_of_turn(const struct chat_template *t);

/* Longest list of stop tokens chat_stop_tokens writes. */
#define CHAT_MAX_STOP 2

/* The tokens that end the assistant's turn under template t in tok's
 * vocabulary, besides EOS: the end-of-turn token when it is in the
 * vocabulary and is not EOS.  Returns how many it wrote into out[0..). */
uint32_t chat_stop_tokens(const struct chat_template *t, const tokenizer_t *tok, int32_t *out);

#endif
