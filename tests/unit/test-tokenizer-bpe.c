/* test-tokenizer-bpe: byte-level BPE (worker/engine/tokenizer-bpe.c) and
 * the special-token and BOS/EOG rules of tokenizer.c, on a tiny vocabulary
 * built here as a GGUF image in memory.
 *
 * The vocabulary: ids 0..255 are the 256 byte tokens (id b is byte b,
 * written as GPT-2's bytes_to_unicode() code point), then merges
 *   h e -> 256 "he", l l -> 257 "ll", he ll -> 258 "hell",
 *   Ġ w -> 259 "Ġw", o r -> 260 "or", Ġw or -> 261 "Ġwor", ll o -> 262 "llo"
 * (rank = order, so "hello" becomes hell + o, not he + llo), and special
 * tokens 263 <|endoftext|> (CONTROL, eos), 264 <|im_end|> (CONTROL),
 * 265 <tool> (USER_DEFINED), 266 <|begin_of_text|> (CONTROL, bos),
 * 267 "hello" (a token no merge reaches, for Llama 3's ignore_merges). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "gguf.h"
#include "tokenizer.h"

enum { V_BYTES = 256, V_N = 268, V_EOT = 263, V_IM_END = 264, V_TOOL = 265, V_BOS = 266 };

static const char *const MERGES[] = {
    "h e", "l l", "he ll", "\xc4\xa0 w", "o r", "\xc4\xa0w or", "ll o",
};

/* ---- a GGUF image ------------------------------------------------------------ */

struct gb {
	unsigned char buf[1 << 15];
	size_t n;
	uint64_t n_kv;
};

static void gb_raw(struct gb *b, const void *p, size_t n)
{
	assert_true(b->n + n <= sizeof b->buf);
	memcpy(b->buf + b->n, p, n);
	b->n += n;
}

static void gb_u32(struct gb *b, uint32_t v)
{
	gb_raw(b, &v, 4);
}

static void gb_u64(struct gb *b, uint64_t v)
{
	gb_raw(b, &v, 8);
}

static void gb_strn(struct gb *b, const char *s, size_t n)
{
	gb_u64(b, n);
	gb_raw(b, s, n);
}

static void gb_key(struct gb *b, const char *key, uint32_t type)
{
	gb_strn(b, key, strlen(key));
	gb_u32(b, type);
	b->n_kv++;
}

static void gb_str_kv(struct gb *b, const char *key, const char *v)
{
	gb_key(b, key, GGUF_TYPE_STRING);
	gb_strn(b, v, strlen(v));
}

static void gb_u32_kv(struct gb *b, const char *key, uint32_t v)
{
	gb_key(b, key, GGUF_TYPE_UINT32);
	gb_u32(b, v);
}

/* bytes_to_unicode(): the UTF-8 of byte c's code point into s; length. */
static size_t byte_text(int c, char *s)
{
	int cp = c, extra = 0;
	if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff))) {
		for (int d = 0; d < c; d++)
			extra += !((d >= 0x21 && d <= 0x7e) || (d >= 0xa1 && d <= 0xac) ||
			           (d >= 0xae && d <= 0xff));
		cp = 256 + extra;
	}
	if (cp < 0x80) {
		s[0] = (char)cp;
		return 1;
	}
	s[0] = (char)(0xc0 | cp >> 6);
	s[1] = (char)(0x80 | (cp & 0x3f));
	return 2;
}

/* The vocabulary with pre-tokenizer pre (NULL: no key) and model name
 * model; with_merges false leaves the merges out. */
static void gb_vocab(struct gb *b, const char *model, const char *pre, bool with_merges)
{
	static const char *const extra[] = {
	    "he",
	    "ll",
	    "hell",
	    "\xc4\xa0w",
	    "or",
	    "\xc4\xa0wor",
	    "llo",
	    "<|endoftext|>",
	    "<|im_end|>",
	    "<tool>",
	    "<|begin_of_text|>",
	    "hello",
	};
	b->n = 0;
	b->n_kv = 0;
	gb_raw(b, "GGUF", 4);
	gb_u32(b, 3);
	gb_u64(b, 0);
	gb_u64(b, 0);
	gb_str_kv(b, "tokenizer.ggml.model", model);
	if (pre)
		gb_str_kv(b, "tokenizer.ggml.pre", pre);
	gb_key(b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
	gb_u32(b, GGUF_TYPE_STRING);
	gb_u64(b, V_N);
	for (int c = 0; c < V_BYTES; c++) {
		char s[2];
		gb_strn(b, s, byte_text(c, s));
	}
	for (int i = 0; i < V_N - V_BYTES; i++)
		gb_strn(b, extra[i], strlen(extra[i]));
	gb_key(b, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY);
	gb_u32(b, GGUF_TYPE_INT32);
	gb_u64(b, V_N);
	for (int i = 0; i < V_N; i++) {
		int32_t ty = i == V_TOOL ? TOKENIZER_TYPE_USER_DEFINED
		             : i == V_EOT || i == V_IM_END || i == V_BOS ? TOKENIZER_TYPE_CONTROL
		                                                         : TOKENIZER_TYPE_NORMAL;
		gb_raw(b, &ty, 4);
	}
	if (with_merges) {
		gb_key(b, "tokenizer.ggml.merges", GGUF_TYPE_ARRAY);
		gb_u32(b, GGUF_TYPE_STRING);
		gb_u64(b, sizeof MERGES / sizeof MERGES[0]);
		for (size_t i = 0; i < sizeof MERGES / sizeof MERGES[0]; i++)
			gb_strn(b, MERGES[i], strlen(MERGES[i]));
	}
	gb_u32_kv(b, "tokenizer.ggml.bos_token_id", V_BOS);
	gb_u32_kv(b, "tokenizer.ggml.eos_token_id", V_EOT);
}

static int gb_open(struct gb *b, tokenizer_t **t, struct itt_err *err)
{
	memcpy(b->buf + 16, &b->n_kv, 8);
	gguf_t *g = NULL;
	int rc = gguf_open_mem(b->buf, b->n, &g, err);
	if (rc)
		fprintf(stderr, "gguf_open_mem: %s\n", err->msg);
	assert_int_equal(rc, 0);
	rc = tokenizer_new(g, t, err);
	gguf_close(&g);
	return rc;
}

static tokenizer_t *open_vocab(const char *pre)
{
	struct gb *b = malloc(sizeof *b);
	assert_non_null(b);
	gb_vocab(b, "gpt2", pre, true);
	tokenizer_t *t = NULL;
	struct itt_err err = {0};
	int rc = gb_open(b, &t, &err);
	if (rc)
		fprintf(stderr, "tokenizer_new: %s\n", err.msg);
	assert_int_equal(rc, 0);
	free(b);
	return t;
}

/* ---- helpers ------------------------------------------------------------------ */

static void check_ids(const tokenizer_t *t, const char *s, size_t len, unsigned flags,
                      const int32_t *want, size_t n_want)
{
	int32_t got[256];
	size_t n = 0;
	struct itt_err err = {0};
	int rc = tokenizer_encode_flags(t, s, len, flags, got, 256, &n, &err);
	if (rc)
		fprintf(stderr, "encode: %s\n", err.msg);
	assert_int_equal(rc, 0);
	if (n != n_want || memcmp(got, want, n * sizeof *got) != 0) {
		fprintf(stderr, "encode \"%.*s\":", (int)len, s);
		for (size_t i = 0; i < n; i++)
			fprintf(stderr, " %d", (int)got[i]);
		fprintf(stderr, "\n");
	}
	assert_int_equal(n, n_want);
	assert_memory_equal(got, want, n * sizeof *got);
}

#define CHECK_IDS(t, s, flags, ...)                                                                \
	do {                                                                                       \
		static const int32_t want_[] = {__VA_ARGS__};                                      \
		check_ids(t, s, sizeof(s) - 1, flags, want_, sizeof want_ / sizeof want_[0]);      \
	} while (0)

/* Encodes then decodes piece by piece: the bytes must come back. */
static void check_roundtrip(const tokenizer_t *t, const char *s, size_t len)
{
	int32_t ids[512];
	size_t n = 0;
	assert_int_equal(tokenizer_encode_flags(t, s, len, 0, ids, 512, &n, NULL), 0);
	char back[1024];
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		int k = tokenizer_decode_piece(t, i ? ids[i - 1] : -1, ids[i], back + w,
		                               sizeof back - w);
		assert_true(k >= 0);
		w += (size_t)k;
	}
	assert_int_equal(w, len);
	assert_memory_equal(back, s, len);
}

/* ---- tests -------------------------------------------------------------------- */

static void test_merges_apply_in_rank_order(void **state)
{
	(void)state;
	tokenizer_t *t = open_vocab("gpt-2");
	/* he (0) and ll (1) first, then he+ll (2); ll+o (6) comes too late. */
	CHECK_IDS(t, "hello", 0, 258, 'o');
	/* Ġw (3) and or (4), then Ġw+or (5); l and d stay bytes. */
	CHECK_IDS(t, "hello world", 0, 258, 'o', 261, 'l', 'd');
	/* A space byte is the token of U+0120, id 32 here. */
	CHECK_IDS(t, " a", 0, ' ', 'a');
	CHECK_IDS(t, "llo", 0, 262);
	CHECK_IDS(t, "", 0);
	tokenizer_destroy(&t);
}

static void test_llama3_emits_whole_word_tokens(void **state)
{
	(void)state;
	tokenizer_t *t = open_vocab("llama-bpe");
	/* ignore_merges: "hello" is a token, so no merging happens. */
	CHECK_IDS(t, "hello", 0, 267);
	CHECK_IDS(t, "hello!", 0, 267, '!');
	/* Digits in groups of three, each group BPE'd apart. */
	CHECK_IDS(t, "12345", 0, '1', '2', '3', '4', '5');
	tokenizer_destroy(&t);
	t = open_vocab("gpt-2");
	CHECK_IDS(t, "hello", 0, 258, 'o');
	tokenizer_destroy(&t);
}

static void test_decode_restores_exact_bytes(void **state)
{
	(void)state;
	tokenizer_t *t = open_vocab("qwen2");
	static const char *const texts[] = {
	    "hello world",
	    "  two  spaces ",
	    "tab\tnew\nline\r\n",
	    "caf\xc3\xa9 na\xc3\xafve",
	    "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
	    "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
	    "x\xff\xfe\x80y",
	    "\xc3(",
	    "\xe2\x82",
	    "don't 123456",
	    "<|endoftext|> as text",
	};
	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
		check_roundtrip(t, texts[i], strlen(texts[i]));
	check_roundtrip(t, "a\0b", 3);
	/* Each byte's token decodes to that byte. */
	char c;
	for (int b = 0; b < 256; b++) {
		assert_int_equal(tokenizer_decode_piece(t, -1, b, &c, 1), 1);
		assert_int_equal((unsigned char)c, b);
	}
	/* Control tokens decode to nothing, user-defined ones to their text. */
	char buf[32];
	assert_int_equal(tokenizer_decode_piece(t, -1, V_EOT, buf, sizeof buf), 0);
	assert_int_equal(tokenizer_decode_piece(t, -1, V_TOOL, buf, sizeof buf), 6);
	assert_memory_equal(buf, "<tool>", 6);
	assert_int_equal(tokenizer_decode_piece(t, -1, 259, buf, sizeof buf), 2);
	assert_memory_equal(buf, " w", 2);
	assert_true(tokenizer_decode_piece(t, -1, V_N, buf, sizeof buf) < 0);
	tokenizer_destroy(&t);
}

static void test_special_tokens_matched_whole(void **state)
{
	(void)state;
	tokenizer_t *t = open_vocab("gpt-2");
	/* USER_DEFINED text is always one token; CONTROL text only with
	 * PARSE_SPECIAL (otherwise it is plain text). */
	CHECK_IDS(t, "a<tool>b", 0, 'a', V_TOOL, 'b');
	CHECK_IDS(t, "<|im_end|>", 0, '<', '|', 'i', 'm', '_', 'e', 'n', 'd', '|', '>');
	CHECK_IDS(t, "<|im_end|>", TOKENIZER_PARSE_SPECIAL, V_IM_END);
	CHECK_IDS(t, "hello<|im_end|>\n<|endoftext|><tool>", TOKENIZER_PARSE_SPECIAL, 258, 'o',
	          V_IM_END, '\n', V_EOT, V_TOOL);
	/* Text right after a special token starts a new word. */
	CHECK_IDS(t, "<|endoftext|> world", TOKENIZER_PARSE_SPECIAL, V_EOT, 261, 'l', 'd');
	CHECK_IDS(t, "<|im_end|><|im_end|>", TOKENIZER_PARSE_SPECIAL | TOKENIZER_ADD_BOS, V_IM_END,
	          V_IM_END);
	tokenizer_destroy(&t);
}

static void test_bos_follows_the_vocabulary(void **state)
{
	(void)state;
	/* GPT-2 and Qwen2 add no BOS by default, Llama 3 does. */
	tokenizer_t *t = open_vocab("qwen2");
	assert_false(tokenizer_add_bos(t));
	assert_int_equal(tokenizer_bos(t), V_BOS);
	CHECK_IDS(t, "hello", TOKENIZER_ADD_BOS, 258, 'o');
	int32_t ids[8];
	size_t n;
	assert_int_equal(tokenizer_encode(t, "hello", 5, true, ids, 8, &n, NULL), 0);
	assert_int_equal(n, 2);
	tokenizer_destroy(&t);
	t = open_vocab("llama-bpe");
	assert_true(tokenizer_add_bos(t));
	CHECK_IDS(t, "hello", TOKENIZER_ADD_BOS, V_BOS, 267);
	CHECK_IDS(t, "", TOKENIZER_ADD_BOS, V_BOS);
	CHECK_IDS(t, "hello", 0, 267);
	tokenizer_destroy(&t);

	/* tokenizer.ggml.add_bos_token overrides the default. */
	struct gb *b = malloc(sizeof *b);
	assert_non_null(b);
	struct itt_err err = {0};
	gb_vocab(b, "gpt2", "llama-bpe", true);
	gb_key(b, "tokenizer.ggml.add_bos_token", GGUF_TYPE_BOOL);
	gb_raw(b, "\0", 1);
	assert_int_equal(gb_open(b, &t, &err), 0);
	assert_false(tokenizer_add_bos(t));
	CHECK_IDS(t, "hello", TOKENIZER_ADD_BOS, 267);
	tokenizer_destroy(&t);
	gb_vocab(b, "gpt2", "gpt-2", true);
	gb_key(b, "tokenizer.ggml.add_bos_token", GGUF_TYPE_BOOL);
	gb_raw(b, "\1", 1);
	assert_int_equal(gb_open(b, &t, &err), 0);
	CHECK_IDS(t, "hello", TOKENIZER_ADD_BOS, V_BOS, 258, 'o');
	tokenizer_destroy(&t);
	free(b);
}

static void test_end_of_generation_tokens(void **state)
{
	(void)state;
	tokenizer_t *t = open_vocab("qwen2");
	assert_int_equal(tokenizer_eos(t), V_EOT);
	/* No eot key: the first known end-of-turn text, <|im_end|>. */
	assert_int_equal(tokenizer_eot(t), V_IM_END);
	assert_true(tokenizer_is_eog(t, V_EOT));
	assert_true(tokenizer_is_eog(t, V_IM_END));
	assert_false(tokenizer_is_eog(t, V_BOS));
	assert_false(tokenizer_is_eog(t, V_TOOL));
	assert_false(tokenizer_is_eog(t, 'a'));
	assert_false(tokenizer_is_eog(t, -1));
	assert_false(tokenizer_is_eog(t, V_N));
	assert_false(tokenizer_is_eog(NULL, 0));
	tokenizer_destroy(&t);

	struct gb *b = malloc(sizeof *b);
	assert_non_null(b);
	struct itt_err err = {0};
	gb_vocab(b, "gpt2", "qwen2", true);
	gb_u32_kv(b, "tokenizer.ggml.eot_token_id", 'z');
	assert_int_equal(gb_open(b, &t, &err), 0);
	assert_int_equal(tokenizer_eot(t), 'z');
	assert_true(tokenizer_is_eog(t, 'z'));
	assert_true(tokenizer_is_eog(t, V_IM_END));
	tokenizer_destroy(&t);
	gb_vocab(b, "gpt2", "qwen2", true);
	gb_u32_kv(b, "tokenizer.ggml.eot_token_id", V_N);
	assert_int_equal(gb_open(b, &t, &err), ITT_E_RANGE);
	assert_true(strstr(err.msg, "eot") != NULL);
	free(b);
}

static void test_token_id_lookup(void **state)
{
	(void)state;
	tokenizer_t *t = open_vocab("gpt-2");
	assert_int_equal(tokenizer_token_id(t, "<|im_end|>", 10), V_IM_END);
	assert_int_equal(tokenizer_token_id(t, "hell", 4), 258);
	assert_int_equal(tokenizer_token_id(t, "<|im_end", 8), -1);
	assert_int_equal(tokenizer_token_id(t, "", 0), -1);
	assert_int_equal(tokenizer_token_id(NULL, "a", 1), -1);
	tokenizer_destroy(&t);
}

static void test_unknown_names_refused(void **state)
{
	(void)state;
	struct gb *b = malloc(sizeof *b);
	assert_non_null(b);
	tokenizer_t *t = NULL;
	struct itt_err err = {0};
	gb_vocab(b, "gpt2", "llama-X", true);
	assert_int_equal(gb_open(b, &t, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "\"llama-X\""));
	gb_vocab(b, "gpt2", NULL, true);
	assert_int_equal(gb_open(b, &t, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "tokenizer.ggml.pre"));
	gb_vocab(b, "bert", "gpt-2", true);
	assert_int_equal(gb_open(b, &t, &err), ITT_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "\"bert\""));
	gb_vocab(b, "gpt2", "gpt-2", false);
	assert_int_equal(gb_open(b, &t, &err), ITT_E_NOTFOUND);
	assert_non_null(strstr(err.msg, "tokenizer.ggml.merges"));
	assert_null(t);
	free(b);
}

/* Every pre-tokenizer, on random byte strings made of pieces that stress
 * the matchers (scripts, marks, digits, whitespace kinds, contractions,
 * broken UTF-8): the ids decode back to the exact bytes. */
static void test_random_bytes_round_trip_every_family(void **state)
{
	(void)state;
	static const char *const pres[] = {"gpt-2",  "llama-bpe",    "qwen2",          "qwen35",
	                                   "falcon", "deepseek-llm", "deepseek-coder", "starcoder"};
	static const char *const pieces[] = {
	    "a",
	    "Z",
	    "'s",
	    "'LL",
	    " ",
	    "  ",
	    "\t",
	    "\n",
	    "\r\n",
	    "0",
	    "123",
	    "\xc3\xa9",
	    "e\xcc\x81",
	    "\xe4\xbd\xa0",
	    "\xe3\x80\x80",
	    "\xc2\xa0",
	    "\xf0\x9f\x98\x80",
	    "!",
	    "$",
	    "(",
	    "_",
	    "\xff",
	    "\x80",
	    "\xe2\x82",
	    "\xc0\xaf",
	    "\xed\xa0\x80",
	    "\x00",
	    "<tool>",
	    "hello",
	    "\xf4\x90\x80\x80",
	};
	unsigned seed = 7;
	char text[256];
	for (size_t p = 0; p < sizeof pres / sizeof pres[0]; p++) {
		tokenizer_t *t = open_vocab(pres[p]);
		for (int round = 0; round < 300; round++) {
			size_t len = 0;
			int n = (int)((seed = seed * 1103515245u + 12345u) >> 16) % 12;
			for (int k = 0; k < n; k++) {
				seed = seed * 1103515245u + 12345u;
				const char *pc =
				    pieces[(seed >> 16) % (sizeof pieces / sizeof pieces[0])];
				size_t pl = strlen(pc) ? strlen(pc) : 1; /* "\x00" is one NUL */
				memcpy(text + len, pc, pl);
				len += pl;
			}
			check_roundtrip(t, text, len);
		}
		tokenizer_destroy(&t);
	}
}

static void test_long_word_is_fast(void **state)
{
	(void)state;
	tokenizer_t *t = open_vocab("gpt-2");
	size_t len = 100000;
	char *text = malloc(len);
	int32_t *ids = malloc(len * sizeof *ids);
	assert_non_null(text);
	assert_non_null(ids);
	for (size_t i = 0; i < len; i++)
		text[i] = "hel"[i % 3]; /* one word: he l he l ... */
	size_t n = 0;
	assert_int_equal(tokenizer_encode_flags(t, text, len, 0, ids, len, &n, NULL), 0);
	assert_int_equal(n, 2 * len / 3 + 1);
	assert_int_equal(ids[0], 256);
	assert_int_equal(tokenizer_encode_flags(t, text, len, 0, ids, 3, &n, NULL), ITT_E_FULL);
	free(text);
	free(ids);
	tokenizer_destroy(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_merges_apply_in_rank_order),
	    cmocka_unit_test(test_llama3_emits_whole_word_tokens),
	    cmocka_unit_test(test_decode_restores_exact_bytes),
	    cmocka_unit_test(test_special_tokens_matched_whole),
	    cmocka_unit_test(test_bos_follows_the_vocabulary),
	    cmocka_unit_test(test_end_of_generation_tokens),
	    cmocka_unit_test(test_token_id_lookup),
	    cmocka_unit_test(test_unknown_names_refused),
	    cmocka_unit_test(test_random_bytes_round_trip_every_family),
	    cmocka_unit_test(test_long_word_is_fast),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
