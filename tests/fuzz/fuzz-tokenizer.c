/* fuzz-tokenizer: libFuzzer target for text to ids (worker/engine/
 * tokenizer.c, tokenizer-bpe.c, pretok.c), which clients reach with any
 * bytes they send as a prompt.
 *
 * Tokenizers, built once from GGUF images made here in memory: a
 * SentencePiece vocabulary with byte tokens, one without them (<unk>
 * instead; named Phi-3, so whitespace after special tokens is dropped), and
 * one byte-level BPE vocabulary (the 256 byte tokens, merges that build a
 * few words, control and user-defined tokens) under every pre-tokenizer
 * family; plus $ITT_MODEL_DIR/stories260K.gguf's when it exists.
 *
 * Contract under test, for the input (at most FZ_MAX_TEXT bytes) and every
 * combination of TOKENIZER_ADD_BOS and TOKENIZER_PARSE_SPECIAL: encoding
 * succeeds (these vocabularies can encode any bytes); every id is in
 * [0, vocab) and the first token with its text (tokenizer_token_id); BOS
 * comes first when asked and the vocabulary adds it;
 * every id decodes, and a smaller decode buffer gets a prefix of the piece;
 * under one of the flag sets (the last byte picks it) encoding is
 * deterministic and a smaller cap gives ITT_E_FULL, the same count and a
 * prefix of the ids.  Exact bytes back (tokenizer.h,
 * pretok.h: any byte string, invalid UTF-8 included): for byte-level BPE the
 * decoded pieces are the input, with each control token's text standing for
 * it under PARSE_SPECIAL; for SentencePiece with byte tokens and U+2581
 * as a token, encoding with BOS and without PARSE_SPECIAL decodes to the
 * input when it holds no U+2581 (decoding turns that into a space).
 * Anything else traps. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

#define FZ_MAX_TEXT  4096 /* longer inputs are cut here */
#define FZ_MAX_IDS   (FZ_MAX_TEXT + 8)
#define FZ_MAX_PIECE 1024 /* longer than any token of these vocabularies */
#define FZ_MAX_TOK   16

/* ---- GGUF images ------------------------------------------------------------- */

struct img {
	unsigned char *p;
	size_t n, cap;
	uint64_t n_kv;
};

static void img_raw(struct img *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->n + n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		FUZZ_CHECK(b->p != NULL);
		b->cap = cap;
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void img_u32(struct img *b, uint32_t v)
{
	img_raw(b, &v, 4); /* GGUF is little-endian, as every host this runs on */
}

static void img_u64(struct img *b, uint64_t v)
{
	img_raw(b, &v, 8);
}

static void img_strn(struct img *b, const char *s, size_t n)
{
	img_u64(b, n);
	img_raw(b, s, n);
}

static void img_key(struct img *b, const char *key, uint32_t type)
{
	img_strn(b, key, strlen(key));
	img_u32(b, type);
	b->n_kv++;
}

static void img_begin(struct img *b)
{
	b->n = 0;
	b->n_kv = 0;
	img_raw(b, "GGUF", 4);
	img_u32(b, 3);
	img_u64(b, 0); /* tensors */
	img_u64(b, 0); /* kv count, set by img_tokenizer */
}

static void img_str_kv(struct img *b, const char *key, const char *v)
{
	img_key(b, key, GGUF_TYPE_STRING);
	img_strn(b, v, strlen(v));
}

static void img_i32_kv(struct img *b, const char *key, int32_t v)
{
	img_key(b, key, GGUF_TYPE_INT32);
	img_raw(b, &v, 4);
}

static void img_bool_kv(struct img *b, const char *key, bool v)
{
	img_key(b, key, GGUF_TYPE_BOOL);
	img_raw(b, v ? "\1" : "\0", 1);
}

/* ---- vocabularies ------------------------------------------------------------ */

struct vocab {
	uint32_t n;
	char *text[2048];
	size_t len[2048];
	float score[2048];
	int32_t type[2048];
};

/* Adds a token (a copy of s[0..n)) and returns its id. */
static int32_t voc_add(struct vocab *v, const char *s, size_t n, float score, int32_t type)
{
	FUZZ_CHECK(v->n < sizeof v->text / sizeof v->text[0]);
	v->text[v->n] = malloc(n ? n : 1);
	FUZZ_CHECK(v->text[v->n] != NULL);
	memcpy(v->text[v->n], s, n);
	v->len[v->n] = n;
	v->score[v->n] = score;
	v->type[v->n] = type;
	return (int32_t)v->n++;
}

static int32_t voc_find(const struct vocab *v, const char *s, size_t n)
{
	for (uint32_t i = 0; i < v->n; i++)
		if (v->len[i] == n && memcmp(v->text[i], s, n) == 0)
			return (int32_t)i;
	return -1;
}

static void voc_free(struct vocab *v)
{
	for (uint32_t i = 0; i < v->n; i++)
		free(v->text[i]);
	v->n = 0;
}

static void img_vocab(struct img *b, const struct vocab *v)
{
	img_key(b, "tokenizer.ggml.tokens", GGUF_TYPE_ARRAY);
	img_u32(b, GGUF_TYPE_STRING);
	img_u64(b, v->n);
	for (uint32_t i = 0; i < v->n; i++)
		img_strn(b, v->text[i], v->len[i]);
	img_key(b, "tokenizer.ggml.scores", GGUF_TYPE_ARRAY);
	img_u32(b, GGUF_TYPE_FLOAT32);
	img_u64(b, v->n);
	img_raw(b, v->score, v->n * sizeof v->score[0]);
	img_key(b, "tokenizer.ggml.token_type", GGUF_TYPE_ARRAY);
	img_u32(b, GGUF_TYPE_INT32);
	img_u64(b, v->n);
	img_raw(b, v->type, v->n * sizeof v->type[0]);
}

static tokenizer_t *img_tokenizer(struct img *b)
{
	gguf_t *g = NULL;
	tokenizer_t *t = NULL;
	struct itt_err err = {0};
	memcpy(b->p + 16, &b->n_kv, 8);
	if (gguf_open_mem(b->p, b->n, &g, &err) < 0 || tokenizer_new(g, &t, &err) < 0) {
		fprintf(stderr, "fuzz-tokenizer: %s\n", err.msg);
		__builtin_trap();
	}
	gguf_close(&g);
	return t;
}

/* Special tokens every vocabulary here has (CONTROL unless noted). */
static const char *const SPECIALS[] = {
    "<|im_start|>",      "<|im_end|>",      "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
    "<|end_header_id|>", "<start_of_turn>", "<end_of_turn>", "[INST]",     "[/INST]",
};
static const char *const USER_DEFINED[] = {"<tool>", "<think>", "</think>", "<|fim_middle|>"};

/* Pieces of the SentencePiece vocabulary, U+2581 for spaces; the score is
 * the negative index (earlier pieces merge first), with a few ties. */
#define SP "\xe2\x96\x81" /* U+2581 */
static const char *const SPM_PIECES[] = {
    SP,
    "e",
    "t",
    "a",
    "o",
    "h",
    "l",
    "r",
    "d",
    "w",
    "n",
    "i",
    "s",
    "'",
    SP "t",
    "he",
    SP "the",
    SP "a",
    "an",
    "in",
    "er",
    "ll",
    SP "h",
    SP "he",
    "hell",
    SP "hell",
    SP "hello",
    SP "w",
    "or",
    SP "wor",
    SP "world",
    "'s",
    SP SP,
    "1",
    "2",
    "12",
    "123",
    "\xe4\xbd\xa0",
    "\xe5\xa5\xbd",
    "\xe4\xbd\xa0\xe5\xa5\xbd",
    SP "\xe4\xbd\xa0",
    "\xf0\x9f\x98\x80",
    "\xc3\xa9",
    "caf",
    "caf\xc3\xa9",
    "\n",
    SP "<",
    "<t",
    "<to",
    "<too",
    SP "ing",
    "ing",
    SP "in",
};

/* SentencePiece: <unk>, <s>, </s>, then (with bytes) <0x00>..<0xFF>, the
 * pieces, the specials; two UNUSED and UNDEFINED tokens and a repeated
 * text.  phi3: named Phi-3 and no dummy prefix. */
static tokenizer_t *build_spm(struct img *b, bool bytes, bool phi3)
{
	static struct vocab v;
	char s[8];
	voc_add(&v, "<unk>", 5, 0, TOKENIZER_TYPE_UNKNOWN);
	voc_add(&v, "<s>", 3, 0, TOKENIZER_TYPE_CONTROL);
	voc_add(&v, "</s>", 4, 0, TOKENIZER_TYPE_CONTROL);
	for (int c = 0; bytes && c < 256; c++) {
		snprintf(s, sizeof s, "<0x%02X>", c);
		voc_add(&v, s, 6, 0, TOKENIZER_TYPE_BYTE);
	}
	for (size_t i = 0; i < sizeof SPM_PIECES / sizeof SPM_PIECES[0]; i++)
		voc_add(&v, SPM_PIECES[i], strlen(SPM_PIECES[i]), -(float)(i / 3 * 3),
		        TOKENIZER_TYPE_NORMAL);
	for (size_t i = 0; i < sizeof SPECIALS / sizeof SPECIALS[0]; i++)
		voc_add(&v, SPECIALS[i], strlen(SPECIALS[i]), 0, TOKENIZER_TYPE_CONTROL);
	for (size_t i = 0; i < sizeof USER_DEFINED / sizeof USER_DEFINED[0]; i++)
		voc_add(&v, USER_DEFINED[i], strlen(USER_DEFINED[i]), 0,
		        TOKENIZER_TYPE_USER_DEFINED);
	voc_add(&v, "\xe2\x96\x81unused", 9, -1, TOKENIZER_TYPE_UNUSED);
	voc_add(&v, "ld", 2, -2, TOKENIZER_TYPE_UNDEFINED);
	voc_add(&v, "he", 2, 5, TOKENIZER_TYPE_NORMAL); /* repeated: the first id wins */

	img_begin(b);
	img_str_kv(b, "tokenizer.ggml.model", "llama");
	if (phi3) {
		img_str_kv(b, "general.name", "Phi-3 mini fuzz");
		img_bool_kv(b, "tokenizer.ggml.add_space_prefix", false);
	}
	img_vocab(b, &v);
	img_i32_kv(b, "tokenizer.ggml.bos_token_id", 1);
	img_i32_kv(b, "tokenizer.ggml.eos_token_id", 2);
	img_i32_kv(b, "tokenizer.ggml.unknown_token_id", 0);
	tokenizer_t *t = img_tokenizer(b);
	voc_free(&v);
	return t;
}

/* GPT-2's bytes_to_unicode(): the UTF-8 of byte c's code point; length. */
static size_t byte_text(int c, char *s)
{
	int cp = c;
	if (!((c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff))) {
		int extra = 0;
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

/* Words the BPE merges build, byte by byte from the left. */
static const char *const BPE_WORDS[] = {
    " the",
    "the",
    " hello",
    "hello",
    " world",
    "ing",
    " a",
    "'s",
    "'re",
    "123",
    " 2024",
    "\n\n",
    "   ",
    "\xe4\xbd\xa0\xe5\xa5\xbd",
    " \xe4\xb8\x96\xe7\x95\x8c",
    "\xf0\x9f\x98\x80",
    "caf\xc3\xa9",
    " def",
    "():",
    "\t\t",
    " don",
    "'t",
    "\r\n",
    "\xc3\xa9t\xc3\xa9",
};

struct merges {
	char *m[1024];
	size_t n;
};

static void merge_add(struct merges *m, const char *l, size_t ln, const char *r, size_t rn)
{
	FUZZ_CHECK(m->n < sizeof m->m / sizeof m->m[0]);
	char *s = malloc(ln + rn + 2);
	FUZZ_CHECK(s != NULL);
	memcpy(s, l, ln);
	s[ln] = ' ';
	memcpy(s + ln + 1, r, rn);
	s[ln + 1 + rn] = '\0';
	m->m[m->n++] = s;
}

/* The byte-level BPE vocabulary: ids 0..255 the bytes, then the tokens of
 * BPE_WORDS' merges, a whole-word token no merge reaches ("Hello"), the
 * specials (and <|begin_of_text|> as BOS); merges include a repeated one,
 * one without a space and one whose result is not a token. */
static tokenizer_t *build_bpe(struct img *b, const char *pre)
{
	static struct vocab v;
	static struct merges m;
	char s[2 * 64], one[2];
	for (int c = 0; c < 256; c++)
		voc_add(&v, one, byte_text(c, one), 0, TOKENIZER_TYPE_NORMAL);
	for (size_t w = 0; w < sizeof BPE_WORDS / sizeof BPE_WORDS[0]; w++) {
		const unsigned char *word = (const unsigned char *)BPE_WORDS[w];
		size_t len = byte_text(word[0], s);
		for (size_t i = 1; word[i]; i++) {
			size_t cl = byte_text(word[i], one);
			merge_add(&m, s, len, one, cl);
			memcpy(s + len, one, cl);
			len += cl;
			if (voc_find(&v, s, len) < 0)
				voc_add(&v, s, len, 0, TOKENIZER_TYPE_NORMAL);
		}
	}
	merge_add(&m, "h", 1, "e", 1);          /* repeated pair: keeps its first rank */
	merge_add(&m, "z", 1, "z", 1);          /* "zz" is not a token */
	merge_add(&m, "\xc4\xa0", 2, "t", 1);   /* "Ġt", a second route to " the" */
	merge_add(&m, "\xc4\xa0t", 3, "he", 2); /* Ġt + he */
	merge_add(&m, "l", 1, "l", 1);
	if (voc_find(&v, "ll", 2) < 0)
		voc_add(&v, "ll", 2, 0, TOKENIZER_TYPE_NORMAL);
	voc_add(&v, "Hello", 5, 0, TOKENIZER_TYPE_NORMAL);
	for (size_t i = 0; i < sizeof SPECIALS / sizeof SPECIALS[0]; i++)
		voc_add(&v, SPECIALS[i], strlen(SPECIALS[i]), 0, TOKENIZER_TYPE_CONTROL);
	for (size_t i = 0; i < sizeof USER_DEFINED / sizeof USER_DEFINED[0]; i++)
		voc_add(&v, USER_DEFINED[i], strlen(USER_DEFINED[i]), 0,
		        TOKENIZER_TYPE_USER_DEFINED);
	int32_t bos = voc_add(&v, "<|begin_of_text|>", 17, 0, TOKENIZER_TYPE_CONTROL);
	int32_t eos = voc_find(&v, "<|endoftext|>", 13);

	img_begin(b);
	img_str_kv(b, "tokenizer.ggml.model", "gpt2");
	img_str_kv(b, "tokenizer.ggml.pre", pre);
	img_vocab(b, &v);
	img_key(b, "tokenizer.ggml.merges", GGUF_TYPE_ARRAY);
	img_u32(b, GGUF_TYPE_STRING);
	img_u64(b, m.n + 1);
	for (size_t i = 0; i < m.n; i++)
		img_strn(b, m.m[i], strlen(m.m[i]));
	img_strn(b, "nospace", 7);
	img_i32_kv(b, "tokenizer.ggml.bos_token_id", bos);
	img_i32_kv(b, "tokenizer.ggml.eos_token_id", eos);
	tokenizer_t *t = img_tokenizer(b);
	voc_free(&v);
	for (size_t i = 0; i < m.n; i++)
		free(m.m[i]);
	m.n = 0;
	return t;
}

/* ---- the tokenizers under test ----------------------------------------------- */

enum fz_kind { FZ_SPM, FZ_BPE };

static struct {
	tokenizer_t *t;
	enum fz_kind kind;
	bool exact; /* SPM: the decoded ids give back the text (see the top) */
} fz_tok[FZ_MAX_TOK];
static size_t fz_n;

static void fz_add(tokenizer_t *t, enum fz_kind kind)
{
	FUZZ_CHECK(fz_n < FZ_MAX_TOK);
	fz_tok[fz_n].t = t;
	fz_tok[fz_n].kind = kind;
	if (kind == FZ_SPM) {
		/* byte tokens for every byte, and U+2581 itself a token */
		bool exact = tokenizer_add_bos(t) && tokenizer_token_id(t, "\xe2\x96\x81", 3) >= 0;
		char s[8];
		for (int c = 0; exact && c < 256; c++) {
			snprintf(s, sizeof s, "<0x%02X>", c);
			int32_t id = tokenizer_token_id(t, s, 6);
			exact = id >= 0 && tokenizer_token_type(t, id) == TOKENIZER_TYPE_BYTE;
		}
		fz_tok[fz_n].exact = exact;
	}
	fz_n++;
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	static const char *const pres[] = {"llama-bpe",    "qwen2",          "gpt-2",
	                                   "deepseek-llm", "starcoder",      "qwen35",
	                                   "falcon",       "deepseek-coder", "dbrx"};
	struct img b = {0};
	fz_add(build_spm(&b, true, false), FZ_SPM);
	fz_add(build_spm(&b, false, true), FZ_SPM);
	for (size_t i = 0; i < sizeof pres / sizeof pres[0]; i++)
		fz_add(build_bpe(&b, pres[i]), FZ_BPE);
	free(b.p);

	const char *dir = getenv("ITT_MODEL_DIR");
	char path[4096];
	if (dir && snprintf(path, sizeof path, "%s/stories260K.gguf", dir) < (int)sizeof path) {
		gguf_t *g = NULL;
		tokenizer_t *t = NULL;
		struct itt_err err = {0};
		if (gguf_open(path, &g, &err) == 0 && tokenizer_new(g, &t, &err) == 0)
			fz_add(t, FZ_SPM);
		else
			fprintf(stderr, "fuzz-tokenizer: %s: not used (%s)\n", path, err.msg);
		gguf_close(&g);
	}
	fprintf(stderr, "fuzz-tokenizer: %zu tokenizers\n", fz_n);
	return 0;
}

/* ---- checks -------------------------------------------------------------------- */

static int32_t fz_ids[FZ_MAX_IDS], fz_ids2[FZ_MAX_IDS];
static char fz_back[4 * FZ_MAX_TEXT + 64];

/* Decodes ids[0..n) piece by piece into fz_back; control tokens give their
 * raw text when raw_control.  Checks each piece against a shorter buffer. */
static size_t fz_decode(const tokenizer_t *t, const int32_t *ids, size_t n, bool raw_control)
{
	char piece[FZ_MAX_PIECE], part[FZ_MAX_PIECE];
	size_t w = 0;
	for (size_t i = 0; i < n; i++) {
		int32_t prev = i ? ids[i - 1] : -1;
		int k = tokenizer_decode_piece(t, prev, ids[i], piece, sizeof piece);
		FUZZ_CHECK(k >= 0 && (size_t)k < sizeof piece);
		if (k > 0) {
			int j = tokenizer_decode_piece(t, prev, ids[i], part, (size_t)k - 1);
			FUZZ_CHECK(j == k - 1 && memcmp(part, piece, (size_t)j) == 0);
		}
		if (raw_control && tokenizer_token_type(t, ids[i]) == TOKENIZER_TYPE_CONTROL) {
			size_t len;
			const char *s = tokenizer_token_text(t, ids[i], &len);
			FUZZ_CHECK(s != NULL && k == 0 && len < sizeof piece);
			memcpy(piece, s, len);
			k = (int)len;
		}
		FUZZ_CHECK(w + (size_t)k <= sizeof fz_back);
		memcpy(fz_back + w, piece, (size_t)k);
		w += (size_t)k;
	}
	return w;
}

/* extra: also the checks that encode again (determinism, a smaller cap). */
static void fz_check(size_t ti, const char *text, size_t len, unsigned flags, bool extra)
{
	const tokenizer_t *t = fz_tok[ti].t;
	uint32_t nv = tokenizer_n_vocab(t);
	struct itt_err err = {0};
	size_t n = 0, n2 = 0;

	int rc = tokenizer_encode_flags(t, text, len, flags, fz_ids, FZ_MAX_IDS, &n, &err);
	if (rc != 0)
		fprintf(stderr, "fuzz-tokenizer: tokenizer %zu flags %u: %s\n", ti, flags, err.msg);
	FUZZ_CHECK(rc == 0 && n <= FZ_MAX_IDS);
	bool bos = (flags & TOKENIZER_ADD_BOS) && tokenizer_add_bos(t);
	if (bos)
		FUZZ_CHECK(n >= 1 && fz_ids[0] == tokenizer_bos(t));
	for (size_t i = 0; i < n; i++) {
		FUZZ_CHECK(fz_ids[i] >= 0 && (uint32_t)fz_ids[i] < nv);
		/* the id a text stands for: the first token with it */
		size_t tl;
		const char *tt = tokenizer_token_text(t, fz_ids[i], &tl);
		FUZZ_CHECK(tt != NULL);
		if (i > 0 || !bos)
			FUZZ_CHECK(tokenizer_token_id(t, tt, tl) == fz_ids[i]);
	}
	if (extra) {
		/* the same again, then with room for about half: a prefix and FULL */
		rc = tokenizer_encode_flags(t, text, len, flags, fz_ids2, FZ_MAX_IDS, &n2, NULL);
		FUZZ_CHECK(rc == 0 && n2 == n && memcmp(fz_ids2, fz_ids, n * sizeof *fz_ids) == 0);
		size_t cap = n / 2;
		memset(fz_ids2, 0xff, (cap + 1) * sizeof *fz_ids2);
		err = (struct itt_err){0};
		rc = tokenizer_encode_flags(t, text, len, flags, cap ? fz_ids2 : NULL, cap, &n2,
		                            &err);
		if (n > cap)
			FUZZ_CHECK(rc == ITT_E_FULL && err.code == rc && err.msg[0] != '\0');
		else
			FUZZ_CHECK(rc == 0);
		FUZZ_CHECK(n2 == n && memcmp(fz_ids2, fz_ids, cap * sizeof *fz_ids) == 0);
		FUZZ_CHECK(fz_ids2[cap] == -1); /* nothing written past the cap */
	}

	bool special = flags & TOKENIZER_PARSE_SPECIAL;
	size_t skip = bos ? 1 : 0;
	if (fz_tok[ti].kind == FZ_BPE) {
		/* every byte comes back; under PARSE_SPECIAL a control token
		 * stands for its text */
		size_t w = fz_decode(t, fz_ids + skip, n - skip, special);
		FUZZ_CHECK(w == len && memcmp(fz_back, text, len) == 0);
	} else if (fz_tok[ti].exact && bos && !special && !memmem(text, len, "\xe2\x96\x81", 3)) {
		/* after BOS the dummy prefix space is dropped */
		size_t w = fz_decode(t, fz_ids, n, false);
		FUZZ_CHECK(w == len && memcmp(fz_back, text, len) == 0);
	} else {
		(void)fz_decode(t, fz_ids, n, false);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const unsigned flags[] = {0, TOKENIZER_ADD_BOS, TOKENIZER_PARSE_SPECIAL,
	                                 TOKENIZER_ADD_BOS | TOKENIZER_PARSE_SPECIAL};
	size_t len = size < FZ_MAX_TEXT ? size : FZ_MAX_TEXT;
	/* a copy of exactly len bytes, so ASan sees any read past the text */
	char *text = malloc(len ? len : 1);
	FUZZ_CHECK(text != NULL);
	if (len)
		memcpy(text, data, len);
	/* the extra checks under one of the flag sets, which the input picks */
	size_t pick = len ? (unsigned char)text[len - 1] % 4 : 0;
	for (size_t i = 0; i < fz_n; i++)
		for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++)
			fz_check(i, text, len, flags[f], f == pick);
	free(text);
	return 0;
}
