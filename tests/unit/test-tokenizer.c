/* test-tokenizer: the SentencePiece BPE tokenizer (worker/engine/tokenizer.c).
 *
 * Pinned ids come from tests/ref/spm_reference.py (Google's sentencepiece
 * on the same vocabularies); tests/integration/test_tokenizer_reference.py
 * compares the two on many more texts.  Small synthetic vocabularies pin
 * the rules the real ones cannot reach (equal scores, duplicates, no BOS,
 * no dummy prefix) and the validation of bad input, including GGUF images
 * built here in memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "gguf.h"
#include "testutil.h"
#include "tokenizer.h"

#define SP "\xe2\x96\x81" /* U+2581 */

/* ---- helpers --------------------------------------------------------------- */

static tokenizer_t *load_gguf(const char *file)
{
	const char *path = tu_model_path(file);
	if (!path)
		return NULL;
	gguf_t *g = NULL;
	struct itt_err err = {0};
	int rc = gguf_open(path, &g, &err);
	assert_int_equal(rc, 0);
	tokenizer_t *t = NULL;
	rc = tokenizer_new(g, &t, &err);
	if (rc)
		fprintf(stderr, "tokenizer_new: %s\n", err.msg);
	assert_int_equal(rc, 0);
	gguf_close(&g);
	assert_null(g);
	return t;
}

/* A llama2.c tokenizer file, converted as tests/tools/itt-tokenize.c does
 * (' ' back to U+2581, ids 1/2 "<s>"/"</s>" CONTROL, 0 UNKNOWN, BYTE). */
static tokenizer_t *load_llama2c(const char *file)
{
	const char *path = tu_model_path(file);
	if (!path)
		return NULL;
	size_t size;
	unsigned char *buf = tu_read_file(path, &size);
	assert_non_null(buf);
	enum { MAXTOK = 1024 };
	struct gguf_str tokens[MAXTOK];
	float scores[MAXTOK];
	int32_t types[MAXTOK];
	static char conv[MAXTOK * 64];
	size_t off = 4, c = 0;
	uint32_t n = 0;
	while (off < size) {
		int32_t len;
		assert_true(n < MAXTOK && size - off >= 8);
		memcpy(&scores[n], buf + off, 4);
		memcpy(&len, buf + off + 4, 4);
		off += 8;
		assert_true(len >= 0 && len < 16 && (size_t)len <= size - off);
		char *d = conv + c;
		for (int32_t k = 0; k < len; k++) {
			char ch = (char)buf[off + k];
			if (ch == ' ' && n > 2) {
				memcpy(conv + c, SP, 3);
				c += 3;
			} else if (ch != '\n' || n > 2) {
				conv[c++] = ch;
			}
		}
		off += (size_t)len;
		tokens[n] = (struct gguf_str){(uint64_t)(conv + c - d), d};
		types[n] = n == 0   ? TOKENIZER_TYPE_UNKNOWN
		           : n <= 2 ? TOKENIZER_TYPE_CONTROL
		           : (len == 6 && d[0] == '<' && d[1] == '0' && d[2] == 'x')
		               ? TOKENIZER_TYPE_BYTE
		               : TOKENIZER_TYPE_NORMAL;
		n++;
	}
	free(buf);
	struct tokenizer_vocab v = {n, tokens, scores, types, 1, 2, 0, true};
	tokenizer_t *t = NULL;
	struct itt_err err = {0};
	assert_int_equal(tokenizer_new_from_vocab(&v, &t, &err), 0);
	return t;
}

/* Encodes s (strlen bytes, or len when len > 0) and checks the ids. */
static void check_ids(const tokenizer_t *t, const char *s, size_t len, bool bos,
                      const int32_t *want, size_t n_want)
{
	int32_t got[256];
	size_t n = 0;
	struct itt_err err = {0};
	int rc = tokenizer_encode(t, s, len ? len : strlen(s), bos, got, 256, &n, &err);
	if (rc)
		fprintf(stderr, "encode: %s\n", err.msg);
	assert_int_equal(rc, 0);
	if (n != n_want)
		fprintf(stderr, "encode \"%s\": %zu ids, expected %zu\n", s, n, n_want);
	assert_int_equal(n, n_want);
	assert_memory_equal(got, want, n * sizeof *got);
}

#define CHECK_IDS(t, s, bos, ...)                                                                  \
	do {                                                                                       \
		static const int32_t want_[] = {__VA_ARGS__};                                      \
		check_ids(t, s, sizeof(s) - 1, bos, want_, sizeof want_ / sizeof want_[0]);        \
	} while (0)

/* decode(ids) with prev threading, into buf; the length. */
static size_t decode_all(const tokenizer_t *t, const int32_t *ids, size_t n, char *buf, size_t cap)
{
	size_t w = 0;
	int32_t prev = -1;
	for (size_t i = 0; i < n; i++) {
		int k = tokenizer_decode_piece(t, prev, ids[i], buf + w, cap - w);
		assert_true(k >= 0);
		w += (size_t)k;
		prev = ids[i];
	}
	return w;
}

static void check_roundtrip(const tokenizer_t *t, const char *s, size_t len)
{
	size_t n = 0;
	struct itt_err err = {0};
	int32_t *ids = malloc((len + 2) * sizeof *ids * 4);
	char *back = malloc(len + 16);
	assert_non_null(ids);
	assert_non_null(back);
	assert_int_equal(tokenizer_encode(t, s, len, true, ids, (len + 2) * 4, &n, &err), 0);
	assert_int_equal(ids[0], tokenizer_bos(t));
	size_t m = decode_all(t, ids, n, back, len + 16);
	assert_int_equal(m, len);
	assert_memory_equal(back, s, len);
	free(ids);
	free(back);
}

/* A tokenizer from NUL-terminated strings (NULL types: all NORMAL). */
static int make_vocab(uint32_t n, const char *const *strs, const float *scores,
                      const int32_t *types, int32_t bos, int32_t unk, bool prefix,
                      tokenizer_t **out, struct itt_err *err)
{
	struct gguf_str tokens[64];
	assert_true(n <= 64);
	for (uint32_t i = 0; i < n; i++)
		tokens[i] = (struct gguf_str){strlen(strs[i]), strs[i]};
	struct tokenizer_vocab v = {n, tokens, scores, types, bos, -1, unk, prefix};
	return tokenizer_new_from_vocab(&v, out, err);
}

/* ---- real vocabularies ------------------------------------------------------- */

static void test_stories260k_known_ids(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	assert_int_equal(tokenizer_n_vocab(t), 512);
	assert_int_equal(tokenizer_bos(t), 1);
	assert_int_equal(tokenizer_eos(t), 2);
	assert_int_equal(tokenizer_unk(t), 0);
	CHECK_IDS(t, "Once upon a time, there was a little girl named Lily.", true, 1, 403, 407,
	          261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426);
	CHECK_IDS(t, " ", true, 1, 410, 410);
	CHECK_IDS(t, "  two", true, 1, 410, 410, 259, 424, 414);
	CHECK_IDS(t, "Hello\nworld", true, 1, 346, 306, 414, 13, 424, 304, 341);
	CHECK_IDS(t, "Once upon a time", false, 403, 407, 261, 378);
	tokenizer_destroy(&t);
	assert_null(t);
}

static void test_empty_text_gives_only_bos(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	int32_t ids[4] = {-7, -7, -7, -7};
	size_t n = 99;
	assert_int_equal(tokenizer_encode(t, "", 0, true, ids, 4, &n, NULL), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ids[0], 1);
	assert_int_equal(tokenizer_encode(t, NULL, 0, false, ids, 4, &n, NULL), 0);
	assert_int_equal(n, 0);
	tokenizer_destroy(&t);
}

static void test_byte_fallback_for_unknown_characters(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	/* U+1F600 is F0 9F 98 80: byte tokens <0xXX> are ids 3 + XX here. */
	CHECK_IDS(t, "caf\xc3\xa9 \xf0\x9f\x98\x80", true, 1, 280, 412, 431, 485, 410, 243, 162,
	          155, 131);
	/* A byte that starts no UTF-8 character is a symbol of its own. */
	CHECK_IDS(t,
	          "a\xff"
	          "b",
	          true, 1, 261, 258, 430);
	char buf[8];
	size_t len;
	assert_string_equal(tokenizer_token_text(t, 0xff + 3, &len), "<0xFF>");
	assert_int_equal(len, 6);
	assert_int_equal(tokenizer_token_type(t, 0xff + 3), TOKENIZER_TYPE_BYTE);
	assert_int_equal(tokenizer_decode_piece(t, 410, 0xff + 3, buf, sizeof buf), 1);
	assert_int_equal((unsigned char)buf[0], 0xff);
	/* A byte token right after BOS keeps its byte, even a space. */
	assert_int_equal(tokenizer_decode_piece(t, 1, 0x20 + 3, buf, sizeof buf), 1);
	assert_int_equal(buf[0], ' ');
	tokenizer_destroy(&t);
}

static void test_llama2c_tok512_matches_gguf(void **state)
{
	(void)state;
	tokenizer_t *g = load_gguf("stories260K.gguf");
	tokenizer_t *t = g ? load_llama2c("tok512.bin") : NULL;
	if (!t) {
		tokenizer_destroy(&g);
		skip();
	}
	static const char text[] = "Tom and Lily went to the park. \xe2\x80\x9cLook!\xe2\x80\x9d";
	int32_t a[128], b[128];
	size_t na, nb;
	assert_int_equal(tokenizer_encode(g, text, sizeof text - 1, true, a, 128, &na, NULL), 0);
	assert_int_equal(tokenizer_encode(t, text, sizeof text - 1, true, b, 128, &nb, NULL), 0);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, na * sizeof *a);
	tokenizer_destroy(&g);
	tokenizer_destroy(&t);
}

static void test_tok105_unknown_characters_map_to_unk(void **state)
{
	(void)state;
	tokenizer_t *t = load_llama2c("tok105.bin");
	if (!t)
		skip();
	assert_int_equal(tokenizer_n_vocab(t), 105);
	CHECK_IDS(t, "Once upon a time", true, 1, 3, 34, 9, 22, 4, 3, 18, 20, 7, 9, 3, 5, 3, 6, 10,
	          16, 4);
	/* A run of unknown characters (and bad bytes) is one <unk>, as in
	 * SentencePiece. */
	CHECK_IDS(t,
	          "a\xe6\x97\xa5\xe6\x9c\xac"
	          "b",
	          true, 1, 3, 5, 0, 23);
	CHECK_IDS(t, "\xf0\x9f\x98\x80!", true, 1, 3, 0, 36);
	CHECK_IDS(t, "x\xff\xfey", true, 1, 3, 37, 0, 15);
	char buf[8];
	assert_int_equal(tokenizer_decode_piece(t, 5, 0, buf, sizeof buf), 0);
	tokenizer_destroy(&t);
}

static void test_roundtrip_restores_text(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	static const char *const texts[] = {
	    "Once upon a time, there was a little girl named Lily.",
	    " leading space",
	    "trailing spaces   ",
	    "  two  spaces  ",
	    "lines\nand\ttabs\n\n",
	    "caf\xc3\xa9 \xe2\x80\x9cquoted\xe2\x80\x9d \xf0\x9f\x98\x80 \xe6\x97\xa5\xe6\x9c\xac",
	    "bad \xff\xfe bytes \xc3",
	    "x",
	};
	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
		check_roundtrip(t, texts[i], strlen(texts[i]));
	check_roundtrip(t, "nul\0inside", 10);
	/* Not restorable by design: a literal U+2581 decodes as a space. */
	int32_t ids[16];
	size_t n;
	char back[16];
	assert_int_equal(tokenizer_encode(t, "x" SP "y", 5, true, ids, 16, &n, NULL), 0);
	assert_int_equal(decode_all(t, ids, n, back, sizeof back), 3);
	assert_memory_equal(back, "x y", 3);
	tokenizer_destroy(&t);
}

static void test_decode_drops_prefix_space_only_after_bos(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	char buf[16];
	/* 403 is "▁Once". */
	assert_int_equal(tokenizer_decode_piece(t, 1, 403, buf, sizeof buf), 4);
	assert_memory_equal(buf, "Once", 4);
	assert_int_equal(tokenizer_decode_piece(t, -1, 403, buf, sizeof buf), 5);
	assert_memory_equal(buf, " Once", 5);
	assert_int_equal(tokenizer_decode_piece(t, 261, 403, buf, sizeof buf), 5);
	/* Control tokens give nothing. */
	assert_int_equal(tokenizer_decode_piece(t, -1, 1, buf, sizeof buf), 0);
	assert_int_equal(tokenizer_decode_piece(t, 403, 2, buf, sizeof buf), 0);
	/* A short buffer truncates the piece. */
	assert_int_equal(tokenizer_decode_piece(t, -1, 403, buf, 3), 3);
	assert_memory_equal(buf, " On", 3);
	assert_int_equal(tokenizer_decode_piece(t, -1, 403, NULL, 0), 0);
	tokenizer_destroy(&t);
}

static void test_decode_invalid_id_fails(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	char buf[16];
	size_t len = 99;
	assert_true(tokenizer_decode_piece(t, -1, -1, buf, sizeof buf) < 0);
	assert_true(tokenizer_decode_piece(t, -1, 512, buf, sizeof buf) < 0);
	assert_true(tokenizer_decode_piece(t, -1, INT32_MAX, buf, sizeof buf) < 0);
	assert_true(tokenizer_decode_piece(NULL, -1, 5, buf, sizeof buf) < 0);
	assert_null(tokenizer_token_text(t, 512, &len));
	assert_int_equal(len, 0);
	assert_null(tokenizer_token_text(t, -3, NULL));
	assert_int_equal(tokenizer_token_type(t, 512), -1);
	assert_int_equal(tokenizer_token_type(t, 0), TOKENIZER_TYPE_UNKNOWN);
	tokenizer_destroy(&t);
}

static void test_small_buffer_reports_full(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	static const char text[] = "Once upon a time, there was a little girl named Lily.";
	int32_t ids[4] = {-7, -7, -7, -7};
	size_t n = 0;
	struct itt_err err = {0};
	assert_int_equal(tokenizer_encode(t, text, sizeof text - 1, true, ids, 3, &n, &err),
	                 ITT_E_FULL);
	assert_int_equal(err.code, ITT_E_FULL);
	assert_int_equal(n, 16);
	assert_int_equal(ids[0], 1);
	assert_int_equal(ids[1], 403);
	assert_int_equal(ids[2], 407);
	assert_int_equal(ids[3], -7);
	/* cap 0 and no buffer: just the count. */
	assert_int_equal(tokenizer_encode(t, text, sizeof text - 1, false, NULL, 0, &n, NULL),
	                 ITT_E_FULL);
	assert_int_equal(n, 15);
	assert_int_equal(tokenizer_encode(t, "", 0, true, NULL, 0, &n, NULL), ITT_E_FULL);
	assert_int_equal(n, 1);
	/* Bad arguments. */
	assert_int_equal(tokenizer_encode(t, NULL, 3, false, ids, 4, &n, NULL), ITT_E_INVALID);
	assert_int_equal(tokenizer_encode(t, "ab", 2, false, NULL, 4, &n, NULL), ITT_E_INVALID);
	assert_int_equal(tokenizer_encode(t, "ab", 2, false, ids, 4, NULL, NULL), ITT_E_INVALID);
	tokenizer_destroy(&t);
}

static void test_long_input_is_fast(void **state)
{
	(void)state;
	tokenizer_t *t = load_gguf("stories260K.gguf");
	if (!t)
		skip();
	static const char para[] = "Once upon a time, there was a little girl named Lily. "
	                           "She loved to play outside in the park.\n";
	size_t len = 100000, plen = sizeof para - 1;
	char *text = malloc(len);
	assert_non_null(text);
	for (size_t i = 0; i < len; i++)
		text[i] = para[i % plen];
	clock_t c0 = clock();
	check_roundtrip(t, text, len);
	memset(text, 'a', len); /* one 100 kB word */
	check_roundtrip(t, text, len);
	double s = (double)(clock() - c0) / CLOCKS_PER_SEC;
	print_message("2 x 100 kB encoded and decoded in %.3f s\n", s);
	free(text);
	tokenizer_destroy(&t);
}

/* ---- synthetic vocabularies -------------------------------------------------- */

static void test_equal_scores_merge_leftmost_first(void **state)
{
	(void)state;
	static const char *const s[] = {"<unk>", "<s>", "a", "b", "aa", "ab", "ba"};
	static const float sc[] = {0, 0, -5, -5, -1, -1, -1};
	static const int32_t ty[] = {2, 3, 1, 1, 1, 1, 1};
	tokenizer_t *t = NULL;
	assert_int_equal(make_vocab(7, s, sc, ty, 1, 0, false, &t, NULL), 0);
	CHECK_IDS(t, "aaa", false, 4, 2);
	CHECK_IDS(t, "aba", false, 5, 2);
	CHECK_IDS(t, "baa", false, 6, 2);
	CHECK_IDS(t, "abab", false, 5, 5);
	/* No dummy prefix: a space is a U+2581 with no token, and no byte
	 * tokens exist, so it is <unk>. */
	CHECK_IDS(t, "a b", true, 1, 2, 0, 3);
	/* Without the prefix, the first piece after BOS keeps its text. */
	char buf[4];
	assert_int_equal(tokenizer_decode_piece(t, 1, 2, buf, sizeof buf), 1);
	tokenizer_destroy(&t);
}

static void test_higher_score_wins_over_position(void **state)
{
	(void)state;
	static const char *const s[] = {"<unk>", "a", "b", "c", "ab", "bc", "cab", "abc"};
	static const float sc[] = {0, -9, -9, -9, -2, -1, -3, -4};
	tokenizer_t *t = NULL;
	assert_int_equal(make_vocab(8, s, sc, NULL, -1, 0, false, &t, NULL), 0);
	/* bc (-1) beats ab (-2) although ab is further left; then a + bc is
	 * the token abc. */
	CHECK_IDS(t, "abc", false, 7);
	CHECK_IDS(t, "abca", false, 7, 1);
	/* c + ab is cab (-3); ab is merged first, then bc is no longer there. */
	CHECK_IDS(t, "cab", false, 6);
	CHECK_IDS(t, "bcab", false, 5, 4);
	/* BOS requested without one in the vocab: the vocab adds none. */
	size_t n;
	int32_t ids[4];
	struct itt_err err = {0};
	assert_false(tokenizer_add_bos(t));
	assert_int_equal(tokenizer_encode(t, "a", 1, true, ids, 4, &n, &err), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ids[0], 1);
	tokenizer_destroy(&t);
}

static void test_duplicate_text_first_id_wins(void **state)
{
	(void)state;
	static const char *const s[] = {"<unk>", "x", "y", "xy", "xy", ""};
	static const int32_t ty[] = {2, 1, 1, 1, 1, 3};
	tokenizer_t *t = NULL;
	assert_int_equal(make_vocab(6, s, NULL, ty, -1, 0, false, &t, NULL), 0);
	CHECK_IDS(t, "xyxy", false, 3, 3);
	tokenizer_destroy(&t);
}

static void test_control_and_byte_tokens_are_not_merged_into(void **state)
{
	(void)state;
	/* "<s>" typed CONTROL must not be formed from "<s" + ">". */
	static const char *const s[] = {"<unk>", "<", "s", ">", "<s", "<s>", "<0x3E>"};
	static const float sc[] = {0, -5, -5, -5, -1, 0, 0};
	static const int32_t ty[] = {2, 1, 1, 1, 1, 3, 6};
	tokenizer_t *t = NULL;
	assert_int_equal(make_vocab(7, s, sc, ty, -1, 0, false, &t, NULL), 0);
	CHECK_IDS(t, "<s>", false, 4, 3);
	/* Byte fallback exists only for '>' here; others give <unk>. */
	CHECK_IDS(t, "z", false, 0);
	tokenizer_destroy(&t);
}

static void test_no_unk_and_no_bytes_fails_cleanly(void **state)
{
	(void)state;
	static const char *const s[] = {"a"};
	tokenizer_t *t = NULL;
	assert_int_equal(make_vocab(1, s, NULL, NULL, -1, -1, false, &t, NULL), 0);
	CHECK_IDS(t, "aa", false, 0, 0);
	int32_t ids[4];
	size_t n;
	struct itt_err err = {0};
	assert_int_equal(tokenizer_encode(t, "ab", 2, false, ids, 4, &n, &err), ITT_E_NOTFOUND);
	tokenizer_destroy(&t);
}

static void test_bad_vocab_rejected(void **state)
{
	(void)state;
	static const char *const s[] = {"<unk>", "<s>", "a", "<0x41>"};
	static const int32_t ty[] = {2, 3, 1, 6};
	tokenizer_t *t = NULL;
	struct itt_err err = {0};
	assert_int_equal(make_vocab(0, s, NULL, NULL, -1, -1, true, &t, &err), ITT_E_RANGE);
	assert_int_equal(make_vocab(4, s, NULL, ty, 4, 0, true, &t, &err), ITT_E_RANGE);
	assert_true(strstr(err.msg, "bos") != NULL);
	assert_int_equal(make_vocab(4, s, NULL, ty, 1, -2, true, &t, &err), ITT_E_RANGE);
	assert_true(strstr(err.msg, "unknown") != NULL);
	static const int32_t bad_type[] = {2, 3, 9, 6};
	assert_int_equal(make_vocab(4, s, NULL, bad_type, 1, 0, true, &t, &err), ITT_E_FORMAT);
	assert_true(strstr(err.msg, "token_type[2]") != NULL);
	static const int32_t bad_byte[] = {2, 3, 6, 6};
	assert_int_equal(make_vocab(4, s, NULL, bad_byte, 1, 0, true, &t, &err), ITT_E_FORMAT);
	assert_true(strstr(err.msg, "tokens[2]") != NULL);
	const float nan_scores[] = {0, 0, 0.0f / 0.0f, 0};
	assert_int_equal(make_vocab(4, s, nan_scores, ty, 1, 0, true, &t, &err), ITT_E_FORMAT);
	assert_true(strstr(err.msg, "scores[2]") != NULL);
	assert_null(t);

	struct gguf_str toks[2] = {{3, NULL}, {1, "a"}};
	struct tokenizer_vocab v = {2, toks, NULL, NULL, -1, -1, -1, true};
	assert_int_equal(tokenizer_new_from_vocab(&v, &t, &err), ITT_E_INVALID);
	toks[0] = (struct gguf_str){70000, "x"};
	assert_int_equal(tokenizer_new_from_vocab(&v, &t, &err), ITT_E_RANGE);
	v.n = (1u << 22) + 1;
	assert_int_equal(tokenizer_new_from_vocab(&v, &t, &err), ITT_E_RANGE);
	v.tokens = NULL;
	v.n = 2;
	assert_int_equal(tokenizer_new_from_vocab(&v, &t, &err), ITT_E_INVALID);
	assert_int_equal(tokenizer_new_from_vocab(NULL, &t, &err), ITT_E_INVALID);
	assert_null(t);
	tokenizer_destroy(&t);
	tokenizer_destroy(NULL);
}

/* ---- GGUF metadata ----------------------------------------------------------- */

/* A metadata-only GGUF v3 image built key by key. */
struct gb {
	unsigned char buf[4096];
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

static void gb_str(struct gb *b, const char *s)
{
	gb_u64(b, strlen(s));
	gb_raw(b, s, strlen(s));
}

static void gb_key(struct gb *b, const char *key, uint32_t type)
{
	gb_str(b, key);
	gb_u32(b, type);
	b->n_kv++;
}

static void gb_init(struct gb *b)
{
	b->n = 0;
	b->n_kv = 0;
	gb_raw(b, "GGUF", 4);
	gb_u32(b, 3);
	gb_u64(b, 0); /* tensors */
	gb_u64(b, 0); /* key/value pairs: patched by gb_open */
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

static const char *const g_tokens[] = {"<unk>", "<s>", "</s>", SP, "a", "b", SP "a", "ab"};
enum { G_N = 8 };

/* The tokenizer keys; skip names one to leave out, and the array lengths
 * and types can be spoiled. */
static void gb_vocab(struct gb *b, const char *model, const char *skip_key, uint32_t n_scores,
                     uint32_t type_elem, int64_t bos)
{
	gb_init(b);
	if (model) {
		gb_key(b, "tokenizer.ggml.model", GGUF_TYPE_STRING);
		gb_str(b, model);
	}
	gb_key(b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
	gb_u32(b, GGUF_TYPE_STRING);
	gb_u64(b, G_N);
	for (int i = 0; i < G_N; i++)
		gb_str(b, g_tokens[i]);
	if (!skip_key || strcmp(skip_key, "scores")) {
		gb_key(b, "tokenizer.ggml.scores", GGUF_TYPE_ARRAY);
		gb_u32(b, GGUF_TYPE_FLOAT32);
		gb_u64(b, n_scores);
		for (uint32_t i = 0; i < n_scores; i++) {
			float f = i < 4 ? 0.0f : -(float)i;
			gb_raw(b, &f, 4);
		}
	}
	if (!skip_key || strcmp(skip_key, "types")) {
		static const int32_t ty[G_N] = {2, 3, 3, 1, 1, 1, 1, 1};
		gb_key(b, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY);
		gb_u32(b, type_elem);
		gb_u64(b, G_N);
		gb_raw(b, ty, sizeof ty);
	}
	if (!skip_key || strcmp(skip_key, "ids")) {
		gb_key(b, "tokenizer.ggml.bos_token_id", GGUF_TYPE_UINT32);
		gb_u32(b, (uint32_t)bos);
		gb_key(b, "tokenizer.ggml.unknown_token_id", GGUF_TYPE_UINT32);
		gb_u32(b, 0);
	}
}

static void test_gguf_metadata_builds_tokenizer(void **state)
{
	(void)state;
	struct gb b;
	tokenizer_t *t = NULL;
	struct itt_err err = {0};
	gb_vocab(&b, "llama", NULL, G_N, GGUF_TYPE_INT32, 1);
	assert_int_equal(gb_open(&b, &t, &err), 0);
	assert_int_equal(tokenizer_bos(t), 1);
	assert_int_equal(tokenizer_eos(t), -1);
	assert_int_equal(tokenizer_unk(t), 0);
	CHECK_IDS(t, "ab a", true, 1, 6, 5, 6);
	/* PARSE_SPECIAL: control-token text becomes the token, and each text
	 * fragment gets its dummy prefix (as llama.cpp does); without it the
	 * text stays text. */
	int32_t ids[16];
	size_t n = 0;
	assert_int_equal(tokenizer_encode_flags(t, "a</s>b", 6, TOKENIZER_PARSE_SPECIAL, ids, 16,
	                                        &n, &err),
	                 0);
	assert_int_equal(n, 4);
	assert_int_equal(ids[0], 6);
	assert_int_equal(ids[1], 2);
	assert_int_equal(ids[2], 3);
	assert_int_equal(ids[3], 5);
	assert_int_equal(tokenizer_encode_flags(t, "a</s>b", 6, 0, ids, 16, &n, &err), 0);
	for (size_t i = 0; i < n; i++)
		assert_int_not_equal(ids[i], 2);
	/* </s> ends generation even without an eos key; SPM adds BOS. */
	assert_true(tokenizer_is_eog(t, 2));
	assert_false(tokenizer_is_eog(t, 1));
	assert_true(tokenizer_add_bos(t));
	assert_int_equal(tokenizer_token_id(t, "<s>", 3), 1);
	tokenizer_destroy(&t);
	/* llama.cpp's Phi-3 rule (by general.name): whitespace after a special
	 * token other than <s> is dropped. */
	static const int32_t spaced[] = {6, 2, 3, 3, 5}, stripped[] = {6, 2, 3, 5};
	gb_vocab(&b, "llama", NULL, G_N, GGUF_TYPE_INT32, 1);
	assert_int_equal(gb_open(&b, &t, &err), 0);
	assert_int_equal(tokenizer_encode_flags(t, "a</s> b", 7, TOKENIZER_PARSE_SPECIAL, ids, 16,
	                                        &n, &err),
	                 0);
	assert_int_equal(n, 5);
	assert_memory_equal(ids, spaced, sizeof spaced);
	tokenizer_destroy(&t);
	gb_vocab(&b, "llama", NULL, G_N, GGUF_TYPE_INT32, 1);
	gb_key(&b, "general.name", GGUF_TYPE_STRING);
	gb_str(&b, "Phi-3 mini");
	assert_int_equal(gb_open(&b, &t, &err), 0);
	assert_int_equal(tokenizer_encode_flags(t, "a</s> b", 7, TOKENIZER_PARSE_SPECIAL, ids, 16,
	                                        &n, &err),
	                 0);
	assert_int_equal(n, 4);
	assert_memory_equal(ids, stripped, sizeof stripped);
	tokenizer_destroy(&t);

	gb_vocab(&b, "llama", NULL, G_N, GGUF_TYPE_INT32, 1);
	gb_key(&b, "tokenizer.ggml.add_bos_token", GGUF_TYPE_BOOL);
	gb_raw(&b, "\0", 1);
	assert_int_equal(gb_open(&b, &t, &err), 0);
	assert_false(tokenizer_add_bos(t));
	CHECK_IDS(t, "ab a", true, 6, 5, 6);
	tokenizer_destroy(&t);

	/* add_space_prefix false; scores and types absent (0, NORMAL). */
	gb_vocab(&b, "llama", "scores", 0, GGUF_TYPE_INT32, 1);
	gb_key(&b, "tokenizer.ggml.add_space_prefix", GGUF_TYPE_BOOL);
	gb_raw(&b, "\0", 1);
	assert_int_equal(gb_open(&b, &t, &err), 0);
	CHECK_IDS(t, "ab", false, 7);
	tokenizer_destroy(&t);
	gb_vocab(&b, "llama", "types", G_N, 0, 1);
	assert_int_equal(gb_open(&b, &t, &err), 0);
	assert_int_equal(tokenizer_token_type(t, 1), TOKENIZER_TYPE_NORMAL);
	tokenizer_destroy(&t);
	gb_vocab(&b, "llama", "ids", G_N, GGUF_TYPE_INT32, 1);
	assert_int_equal(gb_open(&b, &t, &err), 0);
	assert_int_equal(tokenizer_bos(t), -1);
	tokenizer_destroy(&t);
}

static void test_gguf_bad_metadata_rejected(void **state)
{
	(void)state;
	struct gb b;
	tokenizer_t *t = NULL;
	struct itt_err err = {0};
	gb_vocab(&b, NULL, NULL, G_N, GGUF_TYPE_INT32, 1);
	assert_int_equal(gb_open(&b, &t, &err), ITT_E_NOTFOUND);
	assert_true(strstr(err.msg, "tokenizer.ggml.model") != NULL);
	gb_vocab(&b, "bert", NULL, G_N, GGUF_TYPE_INT32, 1);
	assert_int_equal(gb_open(&b, &t, &err), ITT_E_UNSUPPORTED);
	assert_true(strstr(err.msg, "\"bert\"") != NULL);
	gb_vocab(&b, "llama", NULL, G_N - 1, GGUF_TYPE_INT32, 1);
	assert_int_equal(gb_open(&b, &t, &err), ITT_E_FORMAT);
	assert_true(strstr(err.msg, "tokenizer.ggml.scores") != NULL);
	gb_vocab(&b, "llama", NULL, G_N, GGUF_TYPE_FLOAT32, 1);
	assert_int_equal(gb_open(&b, &t, &err), ITT_E_FORMAT);
	assert_true(strstr(err.msg, "tokenizer.ggml.token_type") != NULL);
	gb_vocab(&b, "llama", NULL, G_N, GGUF_TYPE_INT32, G_N);
	assert_int_equal(gb_open(&b, &t, &err), ITT_E_RANGE);
	assert_true(strstr(err.msg, "bos") != NULL);
	gb_vocab(&b, "llama", NULL, G_N, GGUF_TYPE_INT32, 0xffffffffu);
	assert_true(gb_open(&b, &t, &err) < 0);
	assert_null(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_stories260k_known_ids),
	    cmocka_unit_test(test_empty_text_gives_only_bos),
	    cmocka_unit_test(test_byte_fallback_for_unknown_characters),
	    cmocka_unit_test(test_llama2c_tok512_matches_gguf),
	    cmocka_unit_test(test_tok105_unknown_characters_map_to_unk),
	    cmocka_unit_test(test_roundtrip_restores_text),
	    cmocka_unit_test(test_decode_drops_prefix_space_only_after_bos),
	    cmocka_unit_test(test_decode_invalid_id_fails),
	    cmocka_unit_test(test_small_buffer_reports_full),
	    cmocka_unit_test(test_long_input_is_fast),
	    cmocka_unit_test(test_equal_scores_merge_leftmost_first),
	    cmocka_unit_test(test_higher_score_wins_over_position),
	    cmocka_unit_test(test_duplicate_text_first_id_wins),
	    cmocka_unit_test(test_control_and_byte_tokens_are_not_merged_into),
	    cmocka_unit_test(test_no_unk_and_no_bytes_fails_cleanly),
	    cmocka_unit_test(test_bad_vocab_rejected),
	    cmocka_unit_test(test_gguf_metadata_builds_tokenizer),
	    cmocka_unit_test(test_gguf_bad_metadata_rejected),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
