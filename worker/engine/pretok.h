/* pretok: the pre-tokenizers of byte-level BPE vocabularies, which cut text
 * into words before BPE merges inside each word.
 *
 * Each family is the regular expression (or the chain of expressions) that
 * the model's Hugging Face tokenizer.json names, as llama.cpp applies it:
 * the expressions run in order, each one cutting every piece that the
 * previous ones left into its matches and the text between them.  They are
 * written here as hand-made matchers over code points, not as a regex
 * engine; Unicode categories (\p{L}, \p{N}, \p{P}, ...) come from utf8proc,
 * and whitespace is the set llama.cpp uses (ASCII \t\n\v\f\r and space,
 * U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F,
 * U+3000).
 *
 * UTF-8 is decoded as llama.cpp decodes it (the lead byte gives the
 * length and only the continuation bytes are checked, so overlong forms and
 * surrogates pass); a byte that starts no such sequence is one code point
 * of its own, classed as U+FFFD (a symbol) but keeping its byte, so any
 * byte string can be tokenised and decoded back (llama.cpp replaces it by
 * the three bytes of U+FFFD instead). */
#ifndef ITT_PRETOK_H
#define ITT_PRETOK_H

#include <stddef.h>
#include <stdint.h>

enum pretok_kind {
	PRETOK_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
	                */
	PRETOK_LLAMA3, /* case-insensitive contractions, \p{N}{1,3}, newline runs */
	PRETOK_QWEN2,  /* as LLAMA3 with single digits */
	PRETOK_QWEN35, /* as QWEN2 with marks (\p{M}) counted as letters */
	PRETOK_STARCODER,      /* \p{N} isolated, then GPT2 */
	PRETOK_FALCON,         /* punctuation runs, GPT2, then [0-9]{3} */
	PRETOK_DEEPSEEK_LLM,   /* [\r\n], \s?Latin/Greek/...+, \s?punct+, \s+$, CJK+, \p{N}+ */
	PRETOK_DEEPSEEK_CODER, /* [\r\n], \s?\p{L}+, \s?\p{P}+, CJK+, \p{N} */
};

/* Per-name defaults that llama.cpp attaches to a pre-tokenizer name. */
#define PRETOK_F_ADD_BOS       1u /* the vocabulary adds BOS by default */
#define PRETOK_F_IGNORE_MERGES 2u /* a word that is a token is not merged */

/* The family of a tokenizer.ggml.pre name (llama.cpp's names and aliases)
 * and its PRETOK_F_* defaults in *flags; -1 for a name not supported. */
int pretok_kind_of(const char *name, size_t len, unsigned *flags);

/* A text as code points: cp[i] is the code point used for classing and
 * off[i] the byte offset where it starts in the text (off[n] = length). */
struct pretok_text {
	size_t n;
	uint32_t *cp; /* [n] */
	size_t *off;  /* [n + 1] */
};

/* Decodes len bytes into t (allocating its arrays); 0 or ITT_E_NOMEM. */
int pretok_decode(const char *s, size_t len, struct pretok_text *t);
void pretok_text_free(struct pretok_text *t);

/* Cuts t into words: *words receives the number of code points of each
 * word in order (they sum to t->n), *n_words their count; the array is
 * malloc'ed (free it).  0 or ITT_E_NOMEM. */
int pretok_split(enum pretok_kind k, const struct pretok_text *t, uint32_t **words,
                 size_t *n_words);

#endif
