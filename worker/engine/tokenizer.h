/* tokenizer: SentencePiece-style BPE ("llama" tokenizer model) built from
 * GGUF metadata: tokenizer.ggml.tokens, .scores, .token_type, and the
 * bos/eos/unknown token ids.
 *
 * Encoding follows llama.cpp's SPM tokenizer: spaces become U+2581, a dummy
 * prefix space is added to non-empty text (unless the file's
 * tokenizer.ggml.add_space_prefix is false), the text is split into UTF-8
 * characters, and adjacent symbols are merged greedily by the highest score
 * of the merged piece (ties: leftmost first); a symbol that is not a token
 * falls back to <0xXX> byte tokens, or to the unknown token when the vocab
 * has no byte tokens.  Decoding restores bytes, U+2581 to space, and drops
 * the leading space of the first piece after BOS. */
#ifndef ITT_TOKENIZER_H
#define ITT_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"

enum tokenizer_token_type {
	TOKENIZER_TYPE_UNDEFINED = 0,
	TOKENIZER_TYPE_NORMAL = 1,
	TOKENIZER_TYPE_UNKNOWN = 2,
	TOKENIZER_TYPE_CONTROL = 3,
	TOKENIZER_TYPE_USER_DEFINED = 4,
	TOKENIZER_TYPE_UNUSED = 5,
	TOKENIZER_TYPE_BYTE = 6,
};

typedef struct tokenizer tokenizer_t;

/* Builds the tokenizer from g's metadata (copies what it needs; g may be
 * closed afterwards).  Errors name the offending key. */
int tokenizer_new(const gguf_t *g, tokenizer_t **out, struct itt_err *err);
/* Builds it from arrays (as read from a llama2.c tokenizer file, say):
 * n tokens with their bytes, scores and types (enum tokenizer_token_type);
 * ids of bos/eos/unk or -1.  Everything is copied. */
struct tokenizer_vocab {
	uint32_t n;
	const struct gguf_str *tokens;
	const float *scores;
	const int32_t *types;
	int32_t bos, eos, unk;
	bool add_space_prefix;
};
int tokenizer_new_from_vocab(const struct tokenizer_vocab *v, tokenizer_t **out,
			     struct itt_err *err);
void tokenizer_destroy(tokenizer_t **t);

uint32_t tokenizer_n_vocab(const tokenizer_t *t);
int32_t tokenizer_bos(const tokenizer_t *t); /* -1 if none */
int32_t tokenizer_eos(const tokenizer_t *t);
int32_t tokenizer_unk(const tokenizer_t *t);

/* Encodes len bytes of text (not necessarily NUL-terminated, may be any
 * bytes) into at most cap ids; with bos, BOS comes first.  *n_out receives
 * the number of ids needed; if it exceeds cap, ITT_E_FULL is returned and
 * out holds the first cap ids. */
int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, bool bos, int32_t *out,
		     size_t cap, size_t *n_out, struct itt_err *err);

/* The bytes that token id contributes to the text when it follows prev
 * (prev = -1 at the start): byte tokens give their byte, U+2581 becomes a
 * space, a leading space is dropped right after BOS, control tokens give
 * nothing.  Returns the number of bytes written into buf (at most cap; a
 * piece longer than cap is truncated), or a negative code for an invalid id. */
int tokenizer_decode_piece(const tokenizer_t *t, int32_t prev, int32_t id, char *buf, size_t cap);

/* The raw token string (as stored) and its type; NULL/-1 for a bad id. */
const char *tokenizer_token_text(const tokenizer_t *t, int32_t id, size_t *len);
int tokenizer_token_type(const tokenizer_t *t, int32_t id);

/* The byte b of a byte token's text "<0xXX>" (hex digits of either case),
 * or -1 when the text has another form. */
int tokenizer_byte_of_text(const char *s, size_t n);

#endif
