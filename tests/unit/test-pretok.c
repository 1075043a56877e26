/* test-pretok: the byte-level BPE pre-tokenizers (worker/engine/pretok.c).
 *
 * Each family's splits of tricky strings, worked out by hand from the
 * family's regular expression (and checked against llama.cpp's vocabulary
 * test vectors by tests/integration/test_vocab_peer.py): contractions,
 * digit groups, CJK, emoji, whitespace runs before words and at the end,
 * newlines, and bytes that are not UTF-8. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "pretok.h"

/* Splits text with family k and compares the words with the NULL-ended
 * list of expected words. */
static void check_split(enum pretok_kind k, const char *text, ...)
{
	struct pretok_text t;
	uint32_t *words = NULL;
	size_t n_words = 0;
	assert_int_equal(pretok_decode(text, strlen(text), &t), 0);
	assert_int_equal(pretok_split(k, &t, &words, &n_words), 0);
	va_list ap;
	va_start(ap, text);
	size_t i = 0, c = 0;
	for (const char *want; (want = va_arg(ap, const char *)) != NULL; i++) {
		if (i >= n_words) {
			fprintf(stderr, "split of \"%s\": only %zu words, next wanted \"%s\"\n",
			        text, n_words, want);
			fail();
		}
		size_t from = t.off[c], to = t.off[c + words[i]];
		if (to - from != strlen(want) || memcmp(text + from, want, to - from) != 0) {
			fprintf(stderr, "split of \"%s\": word %zu is \"%.*s\", wanted \"%s\"\n",
			        text, i, (int)(to - from), text + from, want);
			fail();
		}
		c += words[i];
	}
	va_end(ap);
	if (i != n_words)
		fprintf(stderr, "split of \"%s\": %zu words, wanted %zu\n", text, n_words, i);
	assert_int_equal(i, n_words);
	assert_int_equal(c, t.n);
	free(words);
	pretok_text_free(&t);
}

static void test_names_map_to_families(void **state)
{
	(void)state;
	unsigned flags = 0;
	assert_int_equal(pretok_kind_of("llama-bpe", 9, &flags), PRETOK_LLAMA3);
	assert_true(flags & PRETOK_F_ADD_BOS);
	assert_true(flags & PRETOK_F_IGNORE_MERGES);
	assert_int_equal(pretok_kind_of("qwen2", 5, &flags), PRETOK_QWEN2);
	assert_int_equal(flags, 0);
	assert_int_equal(pretok_kind_of("gpt-2", 5, NULL), PRETOK_GPT2);
	assert_int_equal(pretok_kind_of("starcoder", 9, NULL), PRETOK_STARCODER);
	assert_int_equal(pretok_kind_of("smollm", 6, NULL), PRETOK_STARCODER);
	assert_int_equal(pretok_kind_of("deepseek-llm", 12, NULL), PRETOK_DEEPSEEK_LLM);
	assert_int_equal(pretok_kind_of("deepseek-coder", 14, NULL), PRETOK_DEEPSEEK_CODER);
	assert_int_equal(pretok_kind_of("falcon", 6, NULL), PRETOK_FALCON);
	/* Unknown names, and prefixes of known ones, are not guessed. */
	assert_int_equal(pretok_kind_of("qwen", 4, NULL), -1);
	assert_int_equal(pretok_kind_of("qwen2x", 6, NULL), -1);
	assert_int_equal(pretok_kind_of("default", 7, NULL), -1);
	assert_int_equal(pretok_kind_of("", 0, NULL), -1);
}

static void test_gpt2_splits(void **state)
{
	(void)state;
	check_split(PRETOK_GPT2, "Hello world", "Hello", " world", NULL);
	check_split(PRETOK_GPT2, "it's don't we'll they're I've", "it", "'s", " don", "'t", " we",
	            "'ll", " they", "'re", " I", "'ve", NULL);
	/* Case-sensitive contractions: 'S is punctuation then a letter. */
	check_split(PRETOK_GPT2, "IT'S", "IT", "'", "S", NULL);
	/* \s+(?!\S) leaves the last space to the word after it. */
	check_split(PRETOK_GPT2, "a   b", "a", "  ", " b", NULL);
	check_split(PRETOK_GPT2, "a\n\nb", "a", "\n", "\n", "b", NULL);
	check_split(PRETOK_GPT2, "end  ", "end", "  ", NULL);
	check_split(PRETOK_GPT2, "12345 678", "12345", " 678", NULL);
	check_split(PRETOK_GPT2, "\xe6\x97\xa5\xe6\x9c\xac \xe8\xaa\x9e",
	            "\xe6\x97\xa5\xe6\x9c\xac", " \xe8\xaa\x9e", NULL);
	check_split(PRETOK_GPT2, "hi \xf0\x9f\x98\x80\xf0\x9f\x98\x80!", "hi",
	            " \xf0\x9f\x98\x80\xf0\x9f\x98\x80!", NULL);
	/* A byte that is not UTF-8 classes as a symbol but stays itself. */
	check_split(PRETOK_GPT2, "a\xff\xfe b", "a", "\xff\xfe", " b", NULL);
}

static void test_llama3_splits(void **state)
{
	(void)state;
	check_split(PRETOK_LLAMA3, "12345", "123", "45", NULL);
	check_split(PRETOK_LLAMA3, "x1234567y", "x", "123", "456", "7", "y", NULL);
	/* Case-insensitive contractions. */
	check_split(PRETOK_LLAMA3, "IT'S we'Ve", "IT", "'S", " we", "'Ve", NULL);
	/* One non-letter may lead a word: a space, or punctuation. */
	check_split(PRETOK_LLAMA3, "(hello)", "(hello", ")", NULL);
	check_split(PRETOK_LLAMA3, "Hello\n\nworld", "Hello", "\n\n", "world", NULL);
	check_split(PRETOK_LLAMA3, "  \n  x", "  \n", " ", " x", NULL);
	check_split(PRETOK_LLAMA3, "ok!!\n\nnext", "ok", "!!\n\n", "next", NULL);
	check_split(PRETOK_LLAMA3, "\t\tend", "\t", "\tend", NULL);
	check_split(PRETOK_LLAMA3, "\xe4\xbd\xa0\xe5\xa5\xbd 123", "\xe4\xbd\xa0\xe5\xa5\xbd", " ",
	            "123", NULL);
	check_split(PRETOK_LLAMA3, " \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd ok",
	            " \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd", " ok", NULL);
}

static void test_qwen2_splits_single_digits(void **state)
{
	(void)state;
	check_split(PRETOK_QWEN2, "12345", "1", "2", "3", "4", "5", NULL);
	check_split(PRETOK_QWEN2, "v2.0's", "v", "2", ".", "0", "'s", NULL);
	/* Qwen3.5 counts combining marks with letters: e + U+0301. */
	check_split(PRETOK_QWEN2, "e\xcc\x81x", "e", "\xcc\x81x", NULL);
	check_split(PRETOK_QWEN35, "e\xcc\x81x", "e\xcc\x81x", NULL);
}

static void test_starcoder_isolates_digits(void **state)
{
	(void)state;
	check_split(PRETOK_STARCODER, "abc123 x45", "abc", "1", "2", "3", " x", "4", "5", NULL);
	check_split(PRETOK_STARCODER, "a 1", "a", " ", "1", NULL);
}

static void test_deepseek_splits(void **state)
{
	(void)state;
	/* Coder: newlines alone, \s?\p{L}+, single digits; every pass cuts the
	 * matches of the earlier ones too, so the CJK run takes its characters
	 * out of " \u4f60\u597d". */
	check_split(PRETOK_DEEPSEEK_CODER, "a\nb", "a", "\n", "b", NULL);
	check_split(PRETOK_DEEPSEEK_CODER,
	            "Hi \xe4\xbd\xa0\xe5\xa5\xbd"
	            "123",
	            "Hi", " ", "\xe4\xbd\xa0\xe5\xa5\xbd", "1", "2", "3", NULL);
	check_split(PRETOK_DEEPSEEK_CODER, "Hi caf\xc3\xa9", "Hi", " caf\xc3\xa9", NULL);
	/* Text between matches stays whole: " =" (= is a symbol, not \p{P}). */
	check_split(PRETOK_DEEPSEEK_CODER, "x = (y);", "x", " =", " (", "y", ");", NULL);
	/* LLM: its own letter set, CJK runs apart, digit runs, trailing
	 * whitespace apart. */
	check_split(PRETOK_DEEPSEEK_LLM,
	            "Hi \xe4\xbd\xa0\xe5\xa5\xbd"
	            "123",
	            "Hi", " ", "\xe4\xbd\xa0\xe5\xa5\xbd", "123", NULL);
	check_split(PRETOK_DEEPSEEK_LLM, "a.\n\nb  ", "a", ".", "\n", "\n", "b", "  ", NULL);
}

static void test_falcon_splits(void **state)
{
	(void)state;
	check_split(PRETOK_FALCON, "a,b 1234", "a", ",", "b", " ", "123", "4", NULL);
	check_split(PRETOK_FALCON, "x+=y", "x", "+=", "y", NULL);
}

static void test_empty_text_has_no_words(void **state)
{
	(void)state;
	struct pretok_text t;
	uint32_t *words = (uint32_t *)&t;
	size_t n = 7;
	assert_int_equal(pretok_decode("", 0, &t), 0);
	assert_int_equal(pretok_split(PRETOK_LLAMA3, &t, &words, &n), 0);
	assert_null(words);
	assert_int_equal(n, 0);
	pretok_text_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_names_map_to_families),
	    cmocka_unit_test(test_gpt2_splits),
	    cmocka_unit_test(test_llama3_splits),
	    cmocka_unit_test(test_qwen2_splits_single_digits),
	    cmocka_unit_test(test_starcoder_isolates_digits),
	    cmocka_unit_test(test_deepseek_splits),
	    cmocka_unit_test(test_falcon_splits),
	    cmocka_unit_test(test_empty_text_has_no_words),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
