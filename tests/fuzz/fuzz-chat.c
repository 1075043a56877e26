/* fuzz-chat: libFuzzer target for chat templates (worker/engine/chat.c):
 * a model's template text is recognised by its markers, and clients send
 * the messages that are rendered.
 *
 * Input: byte 0 gives the number of messages (bits 0-2), whether missing
 * contents are NULL rather than empty (bit 3) and the BOS/EOS texts (bits
 * 6-7); bytes 1-2 give each message's role (2 bits each: system, user,
 * assistant, or the invalid role that bits 14-15 pick, NULL among them);
 * the rest, cut at NUL bytes, is the template text and then the contents.
 * At most FZ_MAX_INPUT bytes are used.
 *
 * Contract under test: detection of any bytes (the whole input, NULs
 * included, and the template text) gives a family in range whose name
 * chat_template_by_name maps back; chat_template_by_name accepts exactly the
 * family names; rendering, for every family and the detected template,
 * either fails with ITT_E_INVALID, a reason and no output, or gives a
 * NUL-terminated text without inner NULs, of bounded length, that starts
 * with BOS when the template writes it, ends with the family's generation
 * prompt and holds every user content (trimmed where the family trims), and
 * the same bytes when rendered again; it fails exactly when a role is
 * unknown, a system message is not first, or (llama2, mistral v1-v3, gemma)
 * the turns do not alternate; an unknown family always fails. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

#define FZ_MAX_INPUT 8192
#define FZ_MAX_MSGS  7

static const char *const FZ_BAD_ROLES[] = {"tool", "", "System ", NULL};

/* BOS/EOS pairs by the top bits of byte 0 (NULL: chat_render's default). */
static const char *const FZ_BOS[] = {NULL, "<s>", "<|begin_of_text|>", ""};
static const char *const FZ_EOS[] = {NULL, "</s>", "<|eot_id|>", ""};

static bool fz_valid_role(const char *r)
{
	return !strcmp(r, "system") || !strcmp(r, "user") || !strcmp(r, "assistant");
}

static bool fz_alternates(enum chat_family f)
{
	return f == CHAT_LLAMA2 || f == CHAT_MISTRAL_V1 || f == CHAT_MISTRAL_V3 ||
	       f == CHAT_MISTRAL_V3_TEKKEN || f == CHAT_GEMMA;
}

/* Whether chat.h's rules accept the conversation under family f. */
static bool fz_acceptable(enum chat_family f, const struct chat_msg *m, size_t n)
{
	size_t first = n && m[0].role && !strcmp(m[0].role, "system") ? 1 : 0;
	if (f <= CHAT_UNKNOWN || f >= CHAT_N_FAMILIES)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!m[i].role || !m[i].content || !fz_valid_role(m[i].role))
			return false;
		if (i >= first && !strcmp(m[i].role, "system"))
			return false;
		if (fz_alternates(f) && i >= first &&
		    (strcmp(m[i].role, "user") == 0) != ((i - first) % 2 == 0))
			return false;
	}
	return true;
}

/* The generation prompt the family ends with ("" for those without). */
static const char *fz_suffix(enum chat_family f)
{
	switch (f) {
	case CHAT_CHATML: return "<|im_start|>assistant\n";
	case CHAT_LLAMA3:
	case CHAT_LLAMA31: return "<|start_header_id|>assistant<|end_header_id|>\n\n";
	case CHAT_GEMMA: return "<start_of_turn>model\n";
	case CHAT_PHI3: return "<|assistant|>\n";
	case CHAT_GRANITE: return "<|start_of_role|>assistant<|end_of_role|>";
	default: return "";
	}
}

/* Families that write a user content stripped of ASCII white space. */
static bool fz_trims(enum chat_family f)
{
	return f == CHAT_LLAMA2 || f == CHAT_LLAMA3 || f == CHAT_LLAMA31 || f == CHAT_GEMMA;
}

static bool fz_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static void fz_render(const struct chat_template *t, const struct chat_msg *m, size_t n,
                      const char *bos, const char *eos)
{
	struct itt_err err = {0};
	char *out = (char *)1, *again = NULL;
	size_t len = 1, len2 = 0;
	int rc = chat_render(t, m, n, bos, eos, &out, &len, &err);
	if (!fz_acceptable(t->family, m, n)) {
		FUZZ_CHECK(rc == ITT_E_INVALID && err.code == rc && err.msg[0] != '\0');
		FUZZ_CHECK(out == NULL && len == 0);
		FUZZ_CHECK(memchr(err.msg, '\0', sizeof err.msg) != NULL);
		return;
	}
	FUZZ_CHECK(rc == 0 && out != NULL);

	/* bounded: every content at most twice, plus markers per turn */
	const char *b = bos ? bos : "<s>", *e = eos ? eos : "</s>";
	size_t bound = 256 + strlen(b) + strlen(e), total = 0;
	for (size_t i = 0; i < n; i++)
		total += strlen(m[i].content);
	bound += 2 * total + n * (256 + strlen(b) + strlen(e));
	FUZZ_CHECK(len <= bound && out[len] == '\0' && strlen(out) == len);

	if (t->bos && t->family != CHAT_LLAMA2)
		FUZZ_CHECK(len >= strlen(b) && !memcmp(out, b, strlen(b)));
	const char *suffix = fz_suffix(t->family);
	size_t sl = strlen(suffix);
	FUZZ_CHECK(len >= sl && !memcmp(out + len - sl, suffix, sl));
	for (size_t i = 0; i < n; i++) {
		if (strcmp(m[i].role, "user") != 0)
			continue;
		const char *s = m[i].content;
		size_t cl = strlen(s);
		if (fz_trims(t->family)) {
			while (cl && fz_space(*s))
				s++, cl--;
			while (cl && fz_space(s[cl - 1]))
				cl--;
		}
		FUZZ_CHECK(cl == 0 || memmem(out, len, s, cl) != NULL);
	}

	rc = chat_render(t, m, n, bos, eos, &again, &len2, NULL);
	FUZZ_CHECK(rc == 0 && len2 == len && !memcmp(again, out, len + 1));
	free(again);
	free(out);
}

/* Detects text[0..len) and checks what came back. */
static enum chat_family fz_detect(const char *text, size_t len, struct chat_template *t)
{
	struct chat_template t2, byname;
	enum chat_family f = chat_template_detect(text, len, t);
	FUZZ_CHECK(f >= CHAT_UNKNOWN && f < CHAT_N_FAMILIES && f == t->family);
	FUZZ_CHECK(chat_template_detect(text, len, &t2) == f && t2.bos == t->bos &&
	           t2.default_system == t->default_system && !t2.fallback);
	const char *name = chat_template_name(t);
	FUZZ_CHECK(name != NULL && strlen(name) <= CHAT_MAX_NAME);
	if (f == CHAT_UNKNOWN)
		FUZZ_CHECK(!strcmp(name, "unknown"));
	else
		FUZZ_CHECK(chat_template_by_name(name, &byname, NULL) == 0 && byname.family == f);
	return f;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct chat_template t;
	struct itt_err err = {0};
	if (size < 3)
		return 0;
	size = size < FZ_MAX_INPUT ? size : FZ_MAX_INPUT;

	/* the whole input as a template, NULs and all (an exact-size copy) */
	char *whole = malloc(size);
	FUZZ_CHECK(whole != NULL);
	memcpy(whole, data, size);
	fz_detect(whole, size, &t);
	free(whole);

	size_t n = data[0] % (FZ_MAX_MSGS + 1);
	const char *missing = data[0] & 8 ? NULL : "";
	const char *bos = FZ_BOS[data[0] >> 6], *eos = FZ_EOS[data[0] >> 6];
	unsigned roles = data[1] | (unsigned)data[2] << 8;

	/* the rest, NUL-terminated, cut at its NULs */
	size_t rest = size - 3;
	char *buf = malloc(rest + 1);
	FUZZ_CHECK(buf != NULL);
	memcpy(buf, data + 3, rest);
	buf[rest] = '\0';
	const char *tmpl = buf, *p = buf + strlen(buf);
	struct chat_msg msgs[FZ_MAX_MSGS];
	for (size_t i = 0; i < n; i++) {
		unsigned r = roles >> (2 * i) & 3;
		msgs[i].role = r == 0   ? "system"
		               : r == 1 ? "user"
		               : r == 2 ? "assistant"
		                        : FZ_BAD_ROLES[(roles >> 14) % 4];
		if (p < buf + rest) {
			msgs[i].content = ++p;
			p += strlen(p);
		} else {
			msgs[i].content = missing;
		}
	}

	/* the template text: detection, and as a name */
	enum chat_family f = fz_detect(tmpl, strlen(tmpl), &t);
	fz_render(&t, msgs, n, bos, eos);
	struct chat_template byname;
	err = (struct itt_err){0};
	if (chat_template_by_name(tmpl, &byname, &err) == 0) {
		FUZZ_CHECK(!strcmp(chat_template_name(&byname), tmpl) && byname.family == f);
	} else {
		FUZZ_CHECK(err.code == ITT_E_NOTFOUND && err.msg[0] != '\0');
		FUZZ_CHECK(byname.family == CHAT_UNKNOWN);
		fz_render(&byname, msgs, n, bos, eos);
	}

	/* every family by its name */
	for (int k = CHAT_UNKNOWN + 1; k < CHAT_N_FAMILIES; k++) {
		struct chat_template named = {.family = (enum chat_family)k};
		const char *name = chat_template_name(&named);
		FUZZ_CHECK(chat_template_by_name(name, &named, NULL) == 0 &&
		           named.family == (enum chat_family)k);
		fz_render(&named, msgs, n, bos, eos);
		if (k == CHAT_CHATML) { /* as detection can set it up */
			named.bos = true;
			named.default_system = "You are a fuzzer.";
			fz_render(&named, msgs, n, bos, eos);
		}
	}
	free(buf);
	return 0;
}
