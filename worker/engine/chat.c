/* chat: template detection by markers and rendering of each family (see
 * chat.h).  Each renderer follows its reference template line by line:
 * which contents are trimmed, where the system message goes, which
 * separators carry spaces. */
#include "chat.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char *const chat_names[CHAT_N_FAMILIES] = {
    [CHAT_UNKNOWN] = "unknown",       [CHAT_CHATML] = "chatml",
    [CHAT_LLAMA2] = "llama2",         [CHAT_LLAMA3] = "llama3",
    [CHAT_LLAMA31] = "llama3.1",      [CHAT_MISTRAL_V1] = "mistral-v1",
    [CHAT_MISTRAL_V3] = "mistral-v3", [CHAT_MISTRAL_V3_TEKKEN] = "mistral-v3-tekken",
    [CHAT_MISTRAL_V7] = "mistral-v7", [CHAT_MISTRAL_V7_TEKKEN] = "mistral-v7-tekken",
    [CHAT_GEMMA] = "gemma",           [CHAT_PHI3] = "phi3",
    [CHAT_GRANITE] = "granite",
};

/* Qwen 2.5's template writes this system turn when there is none. */
static const char chat_qwen_system[] =
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/* Llama 3.1's header: its templates' date when strftime_now is absent. */
static const char chat_llama31_header[] =
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n";

const char *chat_template_name(const struct chat_template *t)
{
	return t && t->family > CHAT_UNKNOWN && t->family < CHAT_N_FAMILIES ? chat_names[t->family]
	                                                                    : "unknown";
}

/* Families that write the BOS token's text first, whatever the markers. */
static bool chat_family_bos(enum chat_family f)
{
	return f == CHAT_LLAMA3 || f == CHAT_LLAMA31 || f == CHAT_MISTRAL_V1 ||
	       f == CHAT_MISTRAL_V3 || f == CHAT_MISTRAL_V3_TEKKEN || f == CHAT_MISTRAL_V7 ||
	       f == CHAT_MISTRAL_V7_TEKKEN || f == CHAT_GEMMA;
}

static void chat_set(struct chat_template *out, enum chat_family f)
{
	memset(out, 0, sizeof *out);
	out->family = f;
	out->bos = chat_family_bos(f);
}

int chat_template_by_name(const char *name, struct chat_template *out, struct itt_err *err)
{
	for (int f = CHAT_UNKNOWN + 1; f < CHAT_N_FAMILIES; f++)
		if (name && !strcmp(name, chat_names[f])) {
			chat_set(out, (enum chat_family)f);
			return 0;
		}
	chat_set(out, CHAT_UNKNOWN);
	return itt_err_set(err, ITT_E_NOTFOUND,
	                   "chat template \"%.*s\" is not one of chatml, llama2, llama3, llama3.1, "
	                   "mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7, "
	                   "mistral-v7-tekken, gemma, phi3, granite",
	                   CHAT_MAX_NAME, name ? name : "");
}

/* memmem of a NUL-terminated needle in text[0..len). */
static bool has(const char *text, size_t len, const char *needle)
{
	size_t n = strlen(needle);
	if (n > len)
		return false;
	for (size_t i = 0; i + n <= len; i++)
		if (text[i] == needle[0] && !memcmp(text + i, needle, n))
			return true;
	return false;
}

/* Whether the template's first output is bos_token: "{{ bos_token",
 * "{{- bos_token" or "{{bos_token" after leading blanks. */
static bool starts_with_bos(const char *text, size_t len)
{
	size_t i = 0;
	while (i < len && strchr(" \t\r\n", text[i]))
		i++;
	if (len - i < 2 || memcmp(text + i, "{{", 2))
		return false;
	i += 2;
	if (i < len && text[i] == '-')
		i++;
	while (i < len && (text[i] == ' ' || text[i] == '\t'))
		i++;
	return len - i >= 9 && !memcmp(text + i, "bos_token", 9);
}

enum chat_family chat_template_detect(const char *text, size_t len, struct chat_template *out)
{
	chat_set(out, CHAT_UNKNOWN);
	for (int f = CHAT_UNKNOWN + 1; f < CHAT_N_FAMILIES; f++)
		if (strlen(chat_names[f]) == len && !memcmp(text, chat_names[f], len)) {
			chat_set(out, (enum chat_family)f);
			return out->family;
		}
	enum chat_family f = CHAT_UNKNOWN;
	if (has(text, len, "<|im_start|>")) {
		/* Phi-4 (<|im_sep|>) and SmolVLM use the tokens differently */
		if (!has(text, len, "<|im_sep|>") && !has(text, len, "<end_of_utterance>"))
			f = CHAT_CHATML;
	} else if (has(text, len, "[SYSTEM_PROMPT]")) {
		f = has(text, len, "[SYSTEM_PROMPT] ") ? CHAT_MISTRAL_V7 : CHAT_MISTRAL_V7_TEKKEN;
	} else if (has(text, len, "[INST]")) {
		if (has(text, len, "<<SYS>>"))
			f = CHAT_LLAMA2;
		else if (has(text, len, "' [INST] '") || has(text, len, "\" [INST] \""))
			f = CHAT_MISTRAL_V1;
		else if (has(text, len, "[INST] '") || has(text, len, "[INST] \""))
			f = CHAT_MISTRAL_V3;
		else
			f = CHAT_MISTRAL_V3_TEKKEN;
	} else if (has(text, len, "<|assistant|>") && has(text, len, "<|end|>")) {
		f = CHAT_PHI3;
	} else if (has(text, len, "<start_of_turn>")) {
		f = CHAT_GEMMA;
	} else if (has(text, len, "<|start_header_id|>") && has(text, len, "<|end_header_id|>")) {
		f = has(text, len, "Cutting Knowledge Date: ") && has(text, len, "Today Date: ")
		        ? CHAT_LLAMA31
		        : CHAT_LLAMA3;
	} else if (has(text, len, "<|start_of_role|>") && has(text, len, "<|end_of_role|>")) {
		f = CHAT_GRANITE;
	}
	chat_set(out, f);
	if (f == CHAT_CHATML) {
		out->bos = starts_with_bos(text, len);
		if (has(text, len, chat_qwen_system))
			out->default_system = chat_qwen_system;
	}
	return f;
}

int chat_template_from_gguf(const gguf_t *g, struct chat_template *out, struct itt_err *err)
{
	struct gguf_str s = {0, NULL};
	chat_set(out, CHAT_UNKNOWN);
	if (gguf_find_kv(g, "tokenizer.chat_template")) {
		int rc = gguf_get_str(g, "tokenizer.chat_template", &s, err);
		if (rc < 0)
			return rc;
	}
	if (!s.len) { /* absent (or empty): the fallback */
		chat_set(out, CHAT_CHATML);
		out->fallback = true;
		return 0;
	}
	chat_template_detect(s.ptr, (size_t)s.len, out);
	return 0;
}

/* ---- rendering ------------------------------------------------------------ */

struct buf {
	char *p;
	size_t len, cap;
	bool oom;
};

static void put_n(struct buf *b, const char *s, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (!p) {
			b->oom = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

/* Appends each string argument in turn; the list ends with NULL. */
static void put(struct buf *b, ...)
{
	va_list ap;
	va_start(ap, b);
	for (const char *s; (s = va_arg(ap, const char *));)
		put_n(b, s, strlen(s));
	va_end(ap);
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Appends s without its leading and trailing white space (Jinja's trim,
 * Python's str.strip, for ASCII white space). */
static void put_trim(struct buf *b, const char *s)
{
	size_t n = strlen(s);
	while (n && is_space(*s))
		s++, n--;
	while (n && is_space(s[n - 1]))
		n--;
	put_n(b, s, n);
}

static bool role_is(const struct chat_msg *m, const char *role)
{
	return !strcmp(m->role, role);
}

/* Checks roles: each known, system only first; with alternate, the turns
 * after the system message go user, assistant, user, ... */
static int chat_check(const struct chat_template *t, const struct chat_msg *m, size_t n,
                      bool alternate, struct itt_err *err)
{
	size_t first = n && m[0].role && role_is(&m[0], "system") ? 1 : 0;
	for (size_t i = 0; i < n; i++) {
		if (!m[i].role || !m[i].content)
			return itt_err_set(err, ITT_E_INVALID, "messages[%zu] has no %s", i,
			                   m[i].role ? "content" : "role");
		if (!role_is(&m[i], "system") && !role_is(&m[i], "user") &&
		    !role_is(&m[i], "assistant"))
			return itt_err_set(err, ITT_E_INVALID,
			                   "messages[%zu].role \"%.32s\": expected system, user or "
			                   "assistant",
			                   i, m[i].role);
		if (i >= first && role_is(&m[i], "system"))
			return itt_err_set(err, ITT_E_INVALID,
			                   "messages[%zu]: a system message may only come first",
			                   i);
		if (alternate && i >= first && role_is(&m[i], "user") != ((i - first) % 2 == 0))
			return itt_err_set(
			    err, ITT_E_INVALID,
			    "messages[%zu]: the %s template needs turns that alternate "
			    "user, assistant, user, ... after the system message",
			    i, chat_template_name(t));
	}
	return 0;
}

static void render_chatml(struct buf *b, const struct chat_template *t, const struct chat_msg *m,
                          size_t n)
{
	if (t->default_system && !(n && role_is(&m[0], "system")))
		put(b, "<|im_start|>system\n", t->default_system, "<|im_end|>\n", NULL);
	for (size_t i = 0; i < n; i++)
		put(b, "<|im_start|>", m[i].role, "\n", m[i].content, "<|im_end|>\n", NULL);
	put(b, "<|im_start|>assistant\n", NULL);
}

/* Llama 2 chat: the system block joins the first turn, and each turn's
 * whole content is stripped. */
static void render_llama2(struct buf *b, const struct chat_msg *m, size_t n, const char *bos,
                          const char *eos)
{
	size_t first = n && role_is(&m[0], "system") ? 1 : 0;
	for (size_t i = first; i < n; i++) {
		struct buf c = {0};
		if (i == first && first)
			put(&c, "<<SYS>>\n", m[0].content, "\n<</SYS>>\n\n", NULL);
		put(&c, m[i].content, NULL);
		if (c.oom) {
			b->oom = true;
			free(c.p);
			return;
		}
		if (role_is(&m[i], "user")) {
			put(b, bos, "[INST] ", NULL);
			put_trim(b, c.p ? c.p : "");
			put(b, " [/INST]", NULL);
		} else {
			put(b, " ", NULL);
			put_trim(b, c.p ? c.p : "");
			put(b, " ", eos, NULL);
		}
		free(c.p);
	}
}

static void render_llama3(struct buf *b, const struct chat_template *t, const struct chat_msg *m,
                          size_t n)
{
	size_t i = 0;
	if (t->family == CHAT_LLAMA31) {
		/* the system turn always comes, with the date header */
		put(b, "<|start_header_id|>system<|end_header_id|>\n\n", chat_llama31_header, NULL);
		if (n && role_is(&m[0], "system"))
			put_trim(b, m[i++].content);
		put(b, "<|eot_id|>", NULL);
	}
	for (; i < n; i++) {
		put(b, "<|start_header_id|>", m[i].role, "<|end_header_id|>\n\n", NULL);
		put_trim(b, m[i].content);
		put(b, "<|eot_id|>", NULL);
	}
	put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n", NULL);
}

/* Mistral v1/v3/v3-tekken: the system message goes before the last user
 * turn; v1 has spaces around [INST] and [/INST], v3 after [INST] and
 * before the answer (trimmed), tekken none. */
static void render_mistral(struct buf *b, enum chat_family f, const struct chat_msg *m, size_t n,
                           const char *eos)
{
	size_t first = n && role_is(&m[0], "system") ? 1 : 0;
	const char *inst = f == CHAT_MISTRAL_V1   ? " [INST] "
	                   : f == CHAT_MISTRAL_V3 ? "[INST] "
	                                          : "[INST]";
	const char *end = f == CHAT_MISTRAL_V1 ? " [/INST]" : "[/INST]";
	for (size_t i = first; i < n; i++) {
		if (role_is(&m[i], "user")) {
			put(b, inst, NULL);
			if (first && i + 1 == n)
				put(b, m[0].content, "\n\n", NULL);
			put(b, m[i].content, end, NULL);
		} else if (f == CHAT_MISTRAL_V3) {
			put(b, " ", NULL);
			put_trim(b, m[i].content);
			put(b, eos, NULL);
		} else {
			put(b, f == CHAT_MISTRAL_V1 ? " " : "", m[i].content, eos, NULL);
		}
	}
}

static void render_mistral7(struct buf *b, bool tekken, const struct chat_msg *m, size_t n,
                            const char *eos)
{
	const char *sp = tekken ? "" : " ";
	for (size_t i = 0; i < n; i++) {
		if (role_is(&m[i], "system"))
			put(b, "[SYSTEM_PROMPT]", sp, m[i].content, "[/SYSTEM_PROMPT]", NULL);
		else if (role_is(&m[i], "user"))
			put(b, "[INST]", sp, m[i].content, "[/INST]", NULL);
		else
			put(b, sp, m[i].content, eos, NULL);
	}
}

/* Gemma: "model" for assistant; the system message (as Gemma 3 does it)
 * and a blank line start the first turn. */
static void render_gemma(struct buf *b, const struct chat_msg *m, size_t n)
{
	size_t first = n && role_is(&m[0], "system") ? 1 : 0;
	for (size_t i = first; i < n; i++) {
		put(b, "<start_of_turn>", role_is(&m[i], "assistant") ? "model" : m[i].role, "\n",
		    NULL);
		if (first && i == first)
			put(b, m[0].content, "\n\n", NULL);
		put_trim(b, m[i].content);
		put(b, "<end_of_turn>\n", NULL);
	}
	put(b, "<start_of_turn>model\n", NULL);
}

static void render_phi3(struct buf *b, const struct chat_msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (role_is(&m[i], "system") && !*m[i].content)
			continue; /* Phi-3.5 writes no empty system turn */
		put(b, "<|", m[i].role, "|>\n", m[i].content, "<|end|>\n", NULL);
	}
	put(b, "<|assistant|>\n", NULL);
}

static void render_granite(struct buf *b, const struct chat_msg *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		put(b, "<|start_of_role|>", m[i].role, "<|end_of_role|>", m[i].content,
		    "<|end_of_text|>\n", NULL);
	put(b, "<|start_of_role|>assistant<|end_of_role|>", NULL);
}

int chat_render(const struct chat_template *t, const struct chat_msg *msgs, size_t n,
                const char *bos, const char *eos, char **out, size_t *len, struct itt_err *err)
{
	struct buf b = {0};
	enum chat_family f = t ? t->family : CHAT_UNKNOWN;
	int rc;

	*out = NULL;
	*len = 0;
	if (f <= CHAT_UNKNOWN || f >= CHAT_N_FAMILIES)
		return itt_err_set(err, ITT_E_INVALID,
		                   "the model's chat template is not one itt recognises; name one "
		                   "(chat_template)");
	bos = bos ? bos : "<s>";
	eos = eos ? eos : "</s>";
	bool alternate = f == CHAT_LLAMA2 || f == CHAT_MISTRAL_V1 || f == CHAT_MISTRAL_V3 ||
	                 f == CHAT_MISTRAL_V3_TEKKEN || f == CHAT_GEMMA;
	if ((rc = chat_check(t, msgs, n, alternate, err)))
		return rc;
	/* llama2 writes BOS before every [INST] itself */
	if (t->bos && f != CHAT_LLAMA2)
		put(&b, bos, NULL);
	switch (f) {
	case CHAT_CHATML: render_chatml(&b, t, msgs, n); break;
	case CHAT_LLAMA2: render_llama2(&b, msgs, n, bos, eos); break;
	case CHAT_LLAMA3:
	case CHAT_LLAMA31: render_llama3(&b, t, msgs, n); break;
	case CHAT_MISTRAL_V1:
	case CHAT_MISTRAL_V3:
	case CHAT_MISTRAL_V3_TEKKEN: render_mistral(&b, f, msgs, n, eos); break;
	case CHAT_MISTRAL_V7:
	case CHAT_MISTRAL_V7_TEKKEN:
		render_mistral7(&b, f == CHAT_MISTRAL_V7_TEKKEN, msgs, n, eos);
		break;
	case CHAT_GEMMA: render_gemma(&b, msgs, n); break;
	case CHAT_PHI3: render_phi3(&b, msgs, n); break;
	case CHAT_GRANITE: render_granite(&b, msgs, n); break;
	default: break;
	}
	if (!b.oom && !b.p)
		put_n(&b, "", 0);
	if (b.oom) {
		free(b.p);
		return itt_err_set(err, ITT_E_NOMEM, "chat_render: out of memory");
	}
	*out = b.p;
	*len = b.len;
	return 0;
}

const char *chat_end_of_turn(const struct chat_template *t)
{
	switch (t ? t->family : CHAT_UNKNOWN) {
	case CHAT_CHATML: return "<|im_end|>";
	case CHAT_LLAMA3:
	case CHAT_LLAMA31: return "<|eot_id|>";
	case CHAT_GEMMA: return "<end_of_turn>";
	case CHAT_PHI3: return "<|end|>";
	case CHAT_GRANITE: return "<|end_of_text|>";
	default: return NULL; /* llama2, mistral: the turn ends with EOS */
	}
}

uint32_t chat_stop_tokens(const struct chat_template *t, const tokenizer_t *tok, int32_t *out)
{
	const char *eot = chat_end_of_turn(t);
	int32_t id = eot && tok ? tokenizer_token_id(tok, eot, strlen(eot)) : -1;
	if (id < 0 || id == tokenizer_eos(tok))
		return 0;
	out[0] = id;
	return 1;
}
