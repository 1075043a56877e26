/* tokenizer: the vocabulary of a model, text to ids and ids to bytes.
 * tokenizer_new picks the algorithm from GGUF's tokenizer.ggml.model:
 *
 * "llama", SentencePiece-style BPE (tokenizer.c), built from
 * tokenizer.ggml.tokens, .scores, .token_type and the bos/eos/unknown ids.
 * Encoding follows llama.cpp's SPM tokenizer: spaces become U+2581, a dummy
 * prefix space is added to non-empty text (unless the file's
 * tokenizer.ggml.add_space_prefix is false), the text is split into UTF-8
 * characters, and adjacent symbols are merged greedily by the highest score
 * of the merged piece (ties: leftmost first); a symbol that is not a token
 * falls back to <0xXX> byte tokens, or to the unknown token when the vocab
 * has no byte tokens.  Decoding restores bytes, U+2581 to space, and drops
 * the leading space of the first piece after BOS.
 *
 * "gpt2", byte-level BPE (tokenizer-bpe.c): tokenizer.ggml.merges in rank
 * order, and the pre-tokenizer tokenizer.ggml.pre names (pretok.h: Llama 3,
 * Qwen2, GPT-2, DeepSeek, StarCoder, Falcon families).  Decoding gives the
 * exact bytes of each piece.
 *
 * Any other model, or a pre-tokenizer not in pretok.h, is refused with an
 * error naming it.  Special tokens (CONTROL, USER_DEFINED) are matched whole
 * in the text before either algorithm runs, as llama.cpp does (see
 * tokenizer_encode_flags). */
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

/* Flags of tokenizer_encode_flags. */
#define TOKENIZER_ADD_BOS       1u /* BOS first, if the vocabulary adds one */
#define TOKENIZER_PARSE_SPECIAL 2u /* text of control/user-defined tokens becomes those tokens */

/* Encodes len bytes of text (not necessarily NUL-terminated, may be any
 * bytes) into at most cap ids.  With TOKENIZER_ADD_BOS, BOS comes first
 * when tokenizer_add_bos() says the vocabulary adds one (otherwise the
 * flag does nothing).  With TOKENIZER_PARSE_SPECIAL, occurrences of the
 * text of CONTROL and USER_DEFINED tokens become those tokens (longest
 * first; SPM gives each text piece between them its dummy prefix, and for
 * Phi-3 models the whitespace after most of them is dropped, as llama.cpp
 * does); without it control-token text is tokenised as plain text, and
 * only byte-level BPE still matches USER_DEFINED tokens whole (SPM text is
 * encoded whole, as sentencepiece does).  *n_out receives the number of ids needed; if it exceeds cap, ITT_E_FULL
 * is returned and out holds the first cap ids. */
int tokenizer_encode_flags(const tokenizer_t *t, const char *text, size_t len, unsigned flags,
			   int32_t *out, size_t cap, size_t *n_out, struct itt_err *err);
/* tokenizer_encode_flags with TOKENIZER_ADD_BOS when bos. */
int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, bool bos, int32_t *out,
		     size_t cap, size_t *n_out, struct itt_err *err);

/* Whether encoding with TOKENIZER_ADD_BOS puts BOS first:
 * tokenizer.ggml.add_bos_token, else the tokenizer family's default (SPM
 * yes, byte-level BPE no except for the pre-tokenizers llama.cpp adds it
 * for); false when the vocab has no BOS. */
bool tokenizer_add_bos(const tokenizer_t *t);
/* The id of the token whose text is exactly text[0..len), or -1. */
int32_t tokenizer_token_id(const tokenizer_t *t, const char *text, size_t len);
/* The end-of-turn token (tokenizer.ggml.eot_token_id, or a known one such
 * as <|eot_id|> or <|im_end|>), or -1. */
int32_t tokenizer_eot(const tokenizer_t *t);
/* Whether id ends generation: eos, eot, eom and the control tokens
 * llama.cpp treats as end-of-generation (<|im_end|>, <|eot_id|>,
 * <|endoftext|>, <end_of_turn>, ...). */
bool tokenizer_is_eog(const tokenizer_t *t, int32_t id);
/* The end-of-generation ids in ascending order: writes the first cap of
 * them to out and returns how many there are. */
size_t tokenizer_eog_ids(const tokenizer_t *t, int32_t *out, size_t cap);

/* The bytes that token id contributes to the text when it follows prev
 * (prev = -1 at the start): byte tokens give their byte, control tokens
 * give nothing; SPM: U+2581 becomes a space, a leading space is dropped
 * right after BOS; byte-level BPE: each code point becomes its byte
 * (user-defined tokens give their text as stored).  Returns the number of bytes written into buf (at most cap; a
 * piece longer than cap is truncated), or a negative code for an invalid id. */
int tokenizer_decode_piece(const tokenizer_t *t, int32_t prev, int32_t id, char *buf, size_t cap);

/* The raw token string (as stored) and its type; NULL/-1 for a bad id. */
const char *tokenizer_token_text(const tokenizer_t *t, int32_t id, size_t *len);
int tokenizer_token_type(const tokenizer_t *t, int32_t id);

/* The byte b of a byte token's text "<0xXX>" (hex digits of either case),
 * or -1 when the text has another form. */
int tokenizer_byte_of_text(const char *s, size_t n);

#endif
