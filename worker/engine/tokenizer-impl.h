/* tokenizer-impl: what tokenizer.c (construction, SPM, special tokens) and
 * tokenizer-bpe.c (byte-level BPE) share.  Not part of the engine's API:
 * only those two files include it. */
#ifndef ITT_TOKENIZER_IMPL_H
#define ITT_TOKENIZER_IMPL_H

#include "tokenizer.h"

struct bpe; /* tokenizer-bpe.c */

struct tokenizer {
	uint32_t n;
	char *blob;             /* every token text, each followed by a NUL */
	size_t *off;            /* [n] start of token i in blob */
	uint32_t *len;          /* [n] bytes of token i */
	float *scores;          /* [n] */
	uint8_t *types;         /* [n] enum tokenizer_token_type */
	int32_t *slots;         /* [mask + 1] hash table of ids, -1 = empty */
	uint32_t mask;          /* table size - 1 (a power of two minus one) */
	uint32_t max_merge_len; /* longest mergeable token, bytes */
	int32_t bos, eos, unk;
	int32_t eot, eom; /* end of turn / of message, or -1 */
	bool add_space_prefix;
	bool add_bos;         /* TOKENIZER_ADD_BOS puts BOS first */
	bool byte_fallback;   /* the vocab has byte tokens */
	int32_t byte_id[256]; /* first <0xXX> token of each byte, or -1 */
	uint8_t *eog;         /* [n] 1 for the tokens that end generation */
	bool strip_after;     /* Phi-3: whitespace after special tokens is dropped */
	uint8_t *rstrip;      /* [n] 1: drop the whitespace after it; NULL: none */
	int32_t *special;     /* CONTROL, USER_DEFINED, UNKNOWN ids, longest text first */
	uint32_t n_special;
	struct bpe *bpe; /* byte-level BPE state, NULL for SentencePiece */
};

/* Candidate merges of adjacent symbols, both encoders': the pair with the
 * highest key comes out first, the leftmost among equal keys (SPM's key
 * is the merged piece's score, byte-level BPE's the negated merge rank,
 * exact in a float up to 2^24 merges). */
struct tok_pair {
	float key;
	int32_t left, right;
	uint32_t len;
};

struct tok_pairs {
	struct tok_pair *a;
	size_t n, cap;
};

int tok_pairs_push(struct tok_pairs *h, struct tok_pair p); /* 0 or ITT_E_NOMEM */
struct tok_pair tok_pairs_pop(struct tok_pairs *h);          /* h->n > 0 */

/* Ids collected by an encoder: counted past cap, stored up to it. */
struct emit {
	int32_t *out;
	size_t cap, n;
};

static inline void emit_id(struct emit *e, int32_t id)
{
	if (e->n < e->cap)
		e->out[e->n] = id;
	e->n++;
}

/* The first id whose text is s[0..n), or -1. */
int32_t tokenizer_lookup(const tokenizer_t *t, const char *s, size_t n);

/* Byte-level BPE (tokenizer-bpe.c).  bpe_new reads tokenizer.ggml.merges
 * from g for the pre-tokenizer kind (enum pretok_kind; ignore_merges: a
 * word that is a token is emitted whole, as for Llama 3); bpe_encode appends
 * the ids of text that holds no special token; bpe_decode_piece is
 * tokenizer_decode_piece for a NORMAL token. */
int bpe_new(const gguf_t *g, int kind, bool ignore_merges, struct bpe **out, struct itt_err *err);
void bpe_destroy(struct bpe **b);
int bpe_encode(const tokenizer_t *t, const char *text, size_t len, struct emit *e,
               struct itt_err *err);
int bpe_decode_piece(const tokenizer_t *t, int32_t id, char *buf, size_t cap);

#endif
