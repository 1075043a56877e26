/* tokenizer: construction from GGUF or arrays, SentencePiece BPE encoding
 * and piece decoding, special tokens, BOS and end-of-generation rules (see
 * tokenizer.h; byte-level BPE lives in tokenizer-bpe.c).
 *
 * Contract: a tokenizer is immutable after tokenizer_new*, so one instance
 * may be shared by threads; tokenizer_encode allocates its scratch per call.
 * Every token string, score and type is copied and validated at
 * construction (lengths, ids, types, <0xXX> form of byte tokens, finite
 * ordering of scores), so encode and decode trust them.
 *
 * Encoding: the text is normalised (spaces to U+2581, dummy prefix), cut
 * into UTF-8 characters (a byte that does not start a well-formed character
 * is a symbol of its own), and adjacent symbols are merged while some
 * adjacent pair concatenates to a mergeable token: the pair with the highest
 * score first, the leftmost among equals.  Candidate pairs sit in a binary
 * heap and are checked when popped (lazy invalidation: a pair is stale once
 * either side has changed length), so n symbols cost O(n log n).
 *
 * Which tokens take part follows SentencePiece, which trained these
 * vocabularies: merges only form NORMAL / USER_DEFINED (or UNDEFINED)
 * tokens; a final symbol emits the first token with its exact text unless
 * that is an UNKNOWN token; otherwise its bytes fall back to <0xXX> tokens
 * when the vocab has any (a missing byte gives <unk>), and without byte
 * tokens a run of such symbols gives one <unk>, as SentencePiece does.
 * Not modelled: without TOKENIZER_PARSE_SPECIAL, USER_DEFINED pieces are
 * not pre-split from SPM text (sentencepiece's own behaviour, which the
 * reference tests pin; llama.cpp splits them), and UNUSED pieces are never
 * merged into (SentencePiece merges then splits them again).
 *
 * Special tokens: with TOKENIZER_PARSE_SPECIAL (and always for USER_DEFINED
 * tokens in byte-level BPE) the text is cut at the texts of CONTROL,
 * USER_DEFINED and UNKNOWN tokens, longest token first, as llama.cpp's
 * tokenizer_st_partition does; the pieces between are encoded as text.
 * End of generation follows llama.cpp: eos, eot, eom and tokens with known
 * end-of-turn texts (which become CONTROL, as there).
 *
 * Lookup by string: open addressing over the token texts, FNV-1a hash; a
 * text that occurs twice keeps its first id (as llama.cpp does). */
#include "tokenizer.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pretok.h"
#include "tokenizer-impl.h"

#define TOKENIZER_MAX_VOCAB     (1u << 22)
#define TOKENIZER_MAX_TOKEN_LEN 65535u
#define TOKENIZER_MAX_TEXT      ((size_t)1 << 28) /* bytes per encode call */

static const char SPACE_MARK[3] = {'\xe2', '\x96', '\x81'}; /* U+2581 */

/* ---- construction -------------------------------------------------------- */

static uint64_t tok_hash(const char *s, size_t n)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)s[i];
		h *= 1099511628211ull;
	}
	return h;
}

int32_t tokenizer_lookup(const tokenizer_t *t, const char *s, size_t n)
{
	uint32_t i = (uint32_t)tok_hash(s, n) & t->mask;
	for (;;) {
		int32_t id = t->slots[i];
		if (id < 0)
			return -1;
		if (t->len[id] == n && memcmp(t->blob + t->off[id], s, n) == 0)
			return id;
		i = (i + 1) & t->mask;
	}
}

static bool tok_special_type(int type)
{
	return type == TOKENIZER_TYPE_CONTROL || type == TOKENIZER_TYPE_USER_DEFINED ||
	       type == TOKENIZER_TYPE_UNKNOWN;
}

static bool tok_mergeable(int type)
{
	return type == TOKENIZER_TYPE_NORMAL || type == TOKENIZER_TYPE_USER_DEFINED ||
	       type == TOKENIZER_TYPE_UNDEFINED;
}

static int hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int tokenizer_byte_of_text(const char *s, size_t n)
{
	if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
		return -1;
	int hi = hex_val(s[3]), lo = hex_val(s[4]);
	return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

/* Texts llama.cpp takes for end-of-turn tokens when the file names none,
 * in the order tried here. */
static const char *const EOT_TEXTS[] = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    ("<\xef\xbd\x9c"
     "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"), /* DeepSeek's; () for clang */
    "<end_of_utterance>",
};

/* Texts of the tokens llama.cpp treats as end of generation. */
static const char *const EOG_TEXTS[] = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    ("<\xef\xbd\x9c"
     "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"), /* DeepSeek's; () for clang */
};

static int32_t find_text(const tokenizer_t *t, const char *s)
{
	return tokenizer_lookup(t, s, strlen(s));
}

static int cmp_special(const void *a, const void *b, void *arg)
{
	const tokenizer_t *t = arg;
	int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
	if (t->len[x] != t->len[y])
		return t->len[x] > t->len[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Derives what depends on the special ids: the end-of-turn token when the
 * file names none, the end-of-generation set (llama.cpp's: eos, eot, eom
 * and tokens with known texts, which become CONTROL tokens as there), and
 * the list of tokens matched whole in the text, longest first.  Run again
 * whenever those ids change. */
static int tok_finish(tokenizer_t *t)
{
	free(t->eog);
	free(t->special);
	t->special = NULL;
	t->n_special = 0;
	t->eog = calloc(t->n, 1);
	if (!t->eog)
		return ITT_E_NOMEM;
	for (size_t i = 0; t->eot < 0 && i < sizeof EOT_TEXTS / sizeof EOT_TEXTS[0]; i++)
		t->eot = find_text(t, EOT_TEXTS[i]);
	int32_t end = -1;
	bool harmony = find_text(t, "<|return|>") >= 0 && find_text(t, "<|call|>") >= 0;
	for (size_t i = 0; i < sizeof EOG_TEXTS / sizeof EOG_TEXTS[0]; i++) {
		int32_t id = find_text(t, EOG_TEXTS[i]);
		if (id < 0)
			continue;
		t->eog[id] = 1;
		t->types[id] = TOKENIZER_TYPE_CONTROL;
		if (strcmp(EOG_TEXTS[i], "<|end|>") == 0)
			end = id;
	}
	if (harmony && end >= 0) /* gpt-oss: <|end|> ends a message, not the turn */
		t->eog[end] = 0;
	int32_t ids[3] = {t->eos, t->eot, t->eom};
	for (int i = 0; i < 3; i++)
		if (ids[i] >= 0)
			t->eog[ids[i]] = 1;

	uint32_t n = 0;
	for (uint32_t i = 0; i < t->n; i++)
		n += t->len[i] > 0 && tok_special_type(t->types[i]);
	t->special = malloc((n ? n : 1) * sizeof *t->special);
	if (!t->special)
		return ITT_E_NOMEM;
	for (uint32_t i = 0; i < t->n; i++)
		if (t->len[i] > 0 && tok_special_type(t->types[i]))
			t->special[t->n_special++] = (int32_t)i;
	qsort_r(t->special, t->n_special, sizeof *t->special, cmp_special, t);

	/* llama.cpp's Phi-3 rule (by model name): the whitespace after a
	 * special token is not text, except after <unk>, <s>, <|endoftext|>. */
	free(t->rstrip);
	t->rstrip = NULL;
	if (!t->strip_after)
		return 0;
	if (!(t->rstrip = calloc(t->n, 1)))
		return ITT_E_NOMEM;
	for (uint32_t i = 0; i < t->n_special; i++)
		t->rstrip[t->special[i]] = 1;
	static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
	int32_t id = find_text(t, "</s>");
	if (id >= 0)
		t->rstrip[id] = 1;
	for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
		if ((id = find_text(t, keep[i])) >= 0)
			t->rstrip[id] = 0;
	return 0;
}

static int check_special(int32_t id, uint32_t n, const char *what, struct itt_err *err)
{
	if (id == -1 || (id >= 0 && (uint32_t)id < n))
		return 0;
	return itt_err_set(err, ITT_E_RANGE, "tokenizer: %s id %d is outside [0, %u) (or -1)", what,
	                   (int)id, n);
}

int tokenizer_new_from_vocab(const struct tokenizer_vocab *v, tokenizer_t **out,
                             struct itt_err *err)
{
	if (!v || !out)
		return itt_err_set(err, ITT_E_INVALID, "tokenizer_new_from_vocab: NULL argument");
	if (v->n == 0 || v->n > TOKENIZER_MAX_VOCAB)
		return itt_err_set(err, ITT_E_RANGE, "tokenizer: vocab size %u is outside [1, %u]",
		                   v->n, TOKENIZER_MAX_VOCAB);
	if (!v->tokens)
		return itt_err_set(err, ITT_E_INVALID, "tokenizer: tokens array is NULL");
	int rc;
	if ((rc = check_special(v->bos, v->n, "bos", err)) < 0 ||
	    (rc = check_special(v->eos, v->n, "eos", err)) < 0 ||
	    (rc = check_special(v->unk, v->n, "unknown", err)) < 0)
		return rc;

	/* Validate every token before allocating anything sized by them. */
	size_t blob_size = 0;
	for (uint32_t i = 0; i < v->n; i++) {
		const struct gguf_str *s = &v->tokens[i];
		int type = v->types ? v->types[i] : TOKENIZER_TYPE_NORMAL;
		if (s->len > TOKENIZER_MAX_TOKEN_LEN)
			return itt_err_set(err, ITT_E_RANGE,
			                   "tokenizer: tokens[%u] is %llu bytes long (limit %u)", i,
			                   (unsigned long long)s->len, TOKENIZER_MAX_TOKEN_LEN);
		if (s->len > 0 && !s->ptr)
			return itt_err_set(err, ITT_E_INVALID, "tokenizer: tokens[%u] is NULL", i);
		if (type < TOKENIZER_TYPE_UNDEFINED || type > TOKENIZER_TYPE_BYTE)
			return itt_err_set(err, ITT_E_FORMAT,
			                   "tokenizer: token_type[%u] = %d is not a known type", i,
			                   type);
		if (type == TOKENIZER_TYPE_BYTE && tokenizer_byte_of_text(s->ptr, (size_t)s->len) < 0)
			return itt_err_set(err, ITT_E_FORMAT,
			                   "tokenizer: tokens[%u] has type BYTE but is not <0xXX>",
			                   i);
		if (v->scores && isnan(v->scores[i]))
			return itt_err_set(err, ITT_E_FORMAT, "tokenizer: scores[%u] is NaN", i);
		blob_size += (size_t)s->len + 1;
	}

	tokenizer_t *t = calloc(1, sizeof *t);
	if (!t)
		return itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory");
	uint32_t cap = 16;
	while (cap < 2 * v->n)
		cap *= 2;
	t->n = v->n;
	t->mask = cap - 1;
	t->blob = malloc(blob_size);
	t->off = malloc(v->n * sizeof *t->off);
	t->len = malloc(v->n * sizeof *t->len);
	t->scores = malloc(v->n * sizeof *t->scores);
	t->types = malloc(v->n);
	t->slots = malloc(cap * sizeof *t->slots);
	if (!t->blob || !t->off || !t->len || !t->scores || !t->types || !t->slots) {
		tokenizer_destroy(&t);
		return itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory for %u tokens",
		                   v->n);
	}
	t->bos = v->bos;
	t->eos = v->eos;
	t->unk = v->unk;
	t->add_space_prefix = v->add_space_prefix;
	memset(t->slots, 0xff, cap * sizeof *t->slots);
	for (int b = 0; b < 256; b++)
		t->byte_id[b] = -1;

	size_t pos = 0;
	for (uint32_t i = 0; i < v->n; i++) {
		const struct gguf_str *s = &v->tokens[i];
		size_t n = (size_t)s->len;
		t->off[i] = pos;
		t->len[i] = (uint32_t)n;
		if (n)
			memcpy(t->blob + pos, s->ptr, n);
		t->blob[pos + n] = '\0';
		pos += n + 1;
		t->scores[i] = v->scores ? v->scores[i] : 0.0f;
		t->types[i] = (uint8_t)(v->types ? v->types[i] : TOKENIZER_TYPE_NORMAL);
		if (t->types[i] == TOKENIZER_TYPE_BYTE) {
			int b = tokenizer_byte_of_text(t->blob + t->off[i], n);
			t->byte_fallback = true;
			if (t->byte_id[b] < 0)
				t->byte_id[b] = (int32_t)i;
		}
		if (n == 0)
			continue; /* no text can match an empty token: keep it out */
		if (tokenizer_lookup(t, t->blob + t->off[i], n) >= 0)
			continue; /* a repeated text: the first id wins */
		uint32_t h = (uint32_t)tok_hash(t->blob + t->off[i], n) & t->mask;
		while (t->slots[h] >= 0)
			h = (h + 1) & t->mask;
		t->slots[h] = (int32_t)i;
		if (tok_mergeable(t->types[i]) && n > t->max_merge_len)
			t->max_merge_len = (uint32_t)n;
	}
	t->eot = t->eom = -1;
	t->add_bos = t->bos >= 0;
	if (tok_finish(t) < 0) {
		tokenizer_destroy(&t);
		return itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory for %u tokens",
		                   v->n);
	}
	*out = t;
	return 0;
}

static int get_token_id(const gguf_t *g, const char *key, int32_t *id, struct itt_err *err)
{
	struct itt_err e = {0};
	int rc = gguf_get_i32(g, key, id, &e);
	if (rc == ITT_E_NOTFOUND) {
		*id = -1;
		return 0;
	}
	if (rc < 0)
		return itt_err_set(err, rc, "tokenizer: %s", e.msg);
	return 0;
}

/* An optional array key: *data is NULL when absent; else its element type
 * must be want and its length n. */
static int get_opt_arr(const gguf_t *g, const char *key, uint32_t want, uint64_t n,
                       const void **data, struct itt_err *err)
{
	struct itt_err e = {0};
	uint32_t type;
	uint64_t m;
	int rc = gguf_get_arr(g, key, &type, &m, data, &e);
	if (rc == ITT_E_NOTFOUND) {
		*data = NULL;
		return 0;
	}
	if (rc < 0)
		return itt_err_set(err, rc, "tokenizer: %s", e.msg);
	if (type != want)
		return itt_err_set(err, ITT_E_FORMAT, "tokenizer: %s holds %s, expected %s", key,
		                   gguf_type_name(type), gguf_type_name(want));
	if (m != n)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "tokenizer: %s has %llu entries but there are %llu tokens", key,
		                   (unsigned long long)m, (unsigned long long)n);
	return 0;
}

static int get_opt_bool(const gguf_t *g, const char *key, bool *v, struct itt_err *err)
{
	struct itt_err e = {0};
	int rc = gguf_get_bool(g, key, v, &e);
	if (rc == ITT_E_NOTFOUND)
		return 0;
	return rc < 0 ? itt_err_set(err, rc, "tokenizer: %s", e.msg) : 0;
}

/* What tokenizer_new_from_vocab does not know: BOS policy, end-of-turn
 * ids, and the BPE merges and pre-tokenizer. */
static int tok_configure(const gguf_t *g, tokenizer_t *t, bool is_bpe, int pre_kind,
                         unsigned pre_flags, struct itt_err *err)
{
	int rc;
	t->add_bos = is_bpe ? (pre_flags & PRETOK_F_ADD_BOS) != 0 : true;
	if ((rc = get_opt_bool(g, "tokenizer.ggml.add_bos_token", &t->add_bos, err)) < 0 ||
	    (rc = get_token_id(g, "tokenizer.ggml.eot_token_id", &t->eot, err)) < 0 ||
	    (rc = get_token_id(g, "tokenizer.ggml.eom_token_id", &t->eom, err)) < 0 ||
	    (rc = check_special(t->eot, t->n, "eot", err)) < 0 ||
	    (rc = check_special(t->eom, t->n, "eom", err)) < 0)
		return rc;
	if (t->bos < 0)
		t->add_bos = false;
	struct gguf_str name;
	struct itt_err e = {0};
	if (gguf_get_str(g, "general.name", &name, &e) == 0) {
		char low[256];
		size_t n = name.len < sizeof low - 1 ? (size_t)name.len : sizeof low - 1;
		for (size_t i = 0; i < n; i++)
			low[i] = (char)tolower((unsigned char)name.ptr[i]);
		low[n] = '\0';
		t->strip_after = strstr(low, "phi-3") || strstr(low, "phi3");
	}
	if (is_bpe && (rc = bpe_new(g, pre_kind, (pre_flags & PRETOK_F_IGNORE_MERGES) != 0, &t->bpe,
	                            err)) < 0)
		return rc;
	if (tok_finish(t) < 0)
		return itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory for %u tokens",
		                   t->n);
	return 0;
}

int tokenizer_new(const gguf_t *g, tokenizer_t **out, struct itt_err *err)
{
	if (!g || !out)
		return itt_err_set(err, ITT_E_INVALID, "tokenizer_new: NULL argument");
	struct gguf_str model;
	struct itt_err e = {0};
	int rc = gguf_get_str(g, "tokenizer.ggml.model", &model, &e);
	if (rc == ITT_E_NOTFOUND)
		return itt_err_set(err, rc, "tokenizer: key tokenizer.ggml.model is missing");
	if (rc < 0)
		return itt_err_set(err, rc, "tokenizer: %s", e.msg);
	bool is_bpe = gguf_str_eq(model, "gpt2");
	if (!is_bpe && !gguf_str_eq(model, "llama"))
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "tokenizer: tokenizer.ggml.model is \"%.*s\"; supported are "
		                   "\"llama\" (SentencePiece BPE) and \"gpt2\" (byte-level BPE)",
		                   model.len > 64 ? 64 : (int)model.len, model.ptr);
	/* Byte-level BPE: the pre-tokenizer must be one this build knows;
	 * another one's splits would give other ids without any error. */
	int pre_kind = -1;
	unsigned pre_flags = 0;
	if (is_bpe) {
		struct gguf_str pre;
		rc = gguf_get_str(g, "tokenizer.ggml.pre", &pre, &e);
		if (rc == ITT_E_NOTFOUND)
			return itt_err_set(err, ITT_E_UNSUPPORTED,
			                   "tokenizer: key tokenizer.ggml.pre is missing; a gpt2 "
			                   "tokenizer needs its pre-tokenizer named");
		if (rc < 0)
			return itt_err_set(err, rc, "tokenizer: %s", e.msg);
		pre_kind = pretok_kind_of(pre.ptr, (size_t)pre.len, &pre_flags);
		if (pre_kind < 0)
			return itt_err_set(err, ITT_E_UNSUPPORTED,
			                   "tokenizer: pre-tokenizer \"%.*s\" (tokenizer.ggml.pre) "
			                   "is not supported",
			                   pre.len > 64 ? 64 : (int)pre.len, pre.ptr);
	}

	const char *key = "tokenizer.ggml.tokens";
	uint32_t type;
	uint64_t n;
	const void *data;
	rc = gguf_get_arr(g, key, &type, &n, &data, &e);
	if (rc == ITT_E_NOTFOUND)
		return itt_err_set(err, rc, "tokenizer: key %s is missing", key);
	if (rc < 0)
		return itt_err_set(err, rc, "tokenizer: %s", e.msg);
	if (type != GGUF_TYPE_STRING)
		return itt_err_set(err, ITT_E_FORMAT, "tokenizer: %s holds %s, expected string",
		                   key, gguf_type_name(type));
	if (n == 0 || n > TOKENIZER_MAX_VOCAB)
		return itt_err_set(err, ITT_E_RANGE, "tokenizer: %s has %llu entries (limit %u)",
		                   key, (unsigned long long)n, TOKENIZER_MAX_VOCAB);

	struct tokenizer_vocab v = {.n = (uint32_t)n, .add_space_prefix = true};
	struct gguf_str *tokens = malloc(n * sizeof *tokens);
	float *scores = NULL;
	int32_t *types = NULL;
	if (!tokens)
		return itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory for %s", key);
	rc = gguf_get_str_arr(g, key, tokens, n, err);
	if (rc < 0)
		goto out;
	v.tokens = tokens;

	const void *sdata, *tdata;
	if ((rc = get_opt_arr(g, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, n, &sdata, err)) < 0 ||
	    (rc = get_opt_arr(g, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, n, &tdata, err)) < 0)
		goto out;
	/* Copied out of the file: the arrays there need not be aligned, and
	 * GGUF is little-endian like every host this runs on. */
	scores = sdata ? malloc(n * sizeof *scores) : NULL;
	types = tdata ? malloc(n * sizeof *types) : NULL;
	if ((sdata && !scores) || (tdata && !types)) {
		rc = itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory for %llu scores/types",
		                 (unsigned long long)n);
		goto out;
	}
	if (sdata) {
		memcpy(scores, sdata, n * sizeof *scores);
		v.scores = scores;
	}
	if (tdata) {
		memcpy(types, tdata, n * sizeof *types);
		v.types = types;
	}
	if ((rc = get_token_id(g, "tokenizer.ggml.bos_token_id", &v.bos, err)) < 0 ||
	    (rc = get_token_id(g, "tokenizer.ggml.eos_token_id", &v.eos, err)) < 0 ||
	    (rc = get_token_id(g, "tokenizer.ggml.unknown_token_id", &v.unk, err)) < 0)
		goto out;
	rc = gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &v.add_space_prefix, &e);
	if (rc == ITT_E_NOTFOUND) {
		v.add_space_prefix = !is_bpe;
	} else if (rc < 0) {
		rc = itt_err_set(err, rc, "tokenizer: %s", e.msg);
		goto out;
	}
	rc = tokenizer_new_from_vocab(&v, out, err);
	if (rc == 0 && (rc = tok_configure(g, *out, is_bpe, pre_kind, pre_flags, err)) < 0)
		tokenizer_destroy(out);
out:
	free(tokens);
	free(scores);
	free(types);
	return rc;
}

void tokenizer_destroy(tokenizer_t **tp)
{
	if (!tp || !*tp)
		return;
	tokenizer_t *t = *tp;
	free(t->blob);
	free(t->off);
	free(t->len);
	free(t->scores);
	free(t->types);
	free(t->slots);
	free(t->eog);
	free(t->rstrip);
	free(t->special);
	bpe_destroy(&t->bpe);
	free(t);
	*tp = NULL;
}

uint32_t tokenizer_n_vocab(const tokenizer_t *t)
{
	return t ? t->n : 0;
}

int32_t tokenizer_bos(const tokenizer_t *t)
{
	return t ? t->bos : -1;
}

int32_t tokenizer_eos(const tokenizer_t *t)
{
	return t ? t->eos : -1;
}

int32_t tokenizer_unk(const tokenizer_t *t)
{
	return t ? t->unk : -1;
}

const char *tokenizer_token_text(const tokenizer_t *t, int32_t id, size_t *len)
{
	if (!t || id < 0 || (uint32_t)id >= t->n) {
		if (len)
			*len = 0;
		return NULL;
	}
	if (len)
		*len = t->len[id];
	return t->blob + t->off[id];
}

int tokenizer_token_type(const tokenizer_t *t, int32_t id)
{
	if (!t || id < 0 || (uint32_t)id >= t->n)
		return -1;
	return t->types[id];
}

/* ---- encoding ------------------------------------------------------------ */

/* A symbol is a live span of the normalised text, in a doubly linked list;
 * a symbol merged into its left neighbour has len 0. */
struct sym {
	uint32_t start, len;
	int32_t prev, next;
};

/* A candidate merge of symbols left and its right neighbour right, valid
 * while both still have the lengths that sum to len. */
static bool pair_before(const struct tok_pair *x, const struct tok_pair *y)
{
	return x->key > y->key || (x->key == y->key && x->left < y->left);
}

int tok_pairs_push(struct tok_pairs *h, struct tok_pair p)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct tok_pair *a = realloc(h->a, cap * sizeof *a);
		if (!a)
			return ITT_E_NOMEM;
		h->a = a;
		h->cap = cap;
	}
	size_t i = h->n++;
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!pair_before(&p, &h->a[parent]))
			break;
		h->a[i] = h->a[parent];
		i = parent;
	}
	h->a[i] = p;
	return 0;
}

struct tok_pair tok_pairs_pop(struct tok_pairs *h)
{
	struct tok_pair top = h->a[0], last = h->a[--h->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && pair_before(&h->a[c + 1], &h->a[c]))
			c++;
		if (!pair_before(&h->a[c], &last))
			break;
		h->a[i] = h->a[c];
		i = c;
	}
	if (h->n)
		h->a[i] = last;
	return top;
}

/* Queues the merge of left with its right neighbour when the pair's text is
 * a mergeable token. */
static int try_pair(const tokenizer_t *t, const char *text, const struct sym *syms, struct tok_pairs *h,
                    int32_t left)
{
	if (left < 0 || syms[left].next < 0)
		return 0;
	int32_t right = syms[left].next;
	uint32_t len = syms[left].len + syms[right].len;
	if (len > t->max_merge_len)
		return 0;
	int32_t id = tokenizer_lookup(t, text + syms[left].start, len);
	if (id < 0 || !tok_mergeable(t->types[id]))
		return 0;
	return tok_pairs_push(h, (struct tok_pair){t->scores[id], left, right, len});
}

/* Length of the well-formed UTF-8 character at s[0..n) (n >= 1), or 1 for a
 * byte that does not start one (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF). */
static uint32_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	uint32_t len;
	unsigned char lo = 0x80, hi = 0xbf;
	if (c < 0x80)
		return 1;
	else if (c >= 0xc2 && c <= 0xdf)
		len = 2;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4;
	else
		return 1;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (n < len || s[1] < lo || s[1] > hi)
		return 1;
	for (uint32_t i = 2; i < len; i++)
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 1;
	return len;
}

/* SentencePiece encoding of text that holds no special token (prefix:
 * add the dummy prefix space); appends the ids to e. */
static int spm_encode(const tokenizer_t *t, const char *text, size_t len, bool prefix,
                      struct emit *e, struct itt_err *err)
{
	if (len == 0)
		return 0;
	/* Normalise: dummy prefix, each space becomes U+2581 (3 bytes). */
	size_t spaces = 0;
	for (size_t i = 0; i < len; i++)
		spaces += text[i] == ' ';
	size_t nlen = len + 2 * spaces + (prefix ? 3 : 0);
	char *norm = malloc(nlen);
	struct sym *syms = malloc(nlen * sizeof *syms);
	struct tok_pairs h = {0};
	int rc = 0;
	if (!norm || !syms) {
		rc = itt_err_set(err, ITT_E_NOMEM, "tokenizer_encode: out of memory for %zu bytes",
		                 len);
		goto out;
	}
	size_t p = 0;
	if (prefix) {
		memcpy(norm, SPACE_MARK, 3);
		p = 3;
	}
	for (size_t i = 0; i < len; i++) {
		if (text[i] == ' ') {
			memcpy(norm + p, SPACE_MARK, 3);
			p += 3;
		} else {
			norm[p++] = text[i];
		}
	}

	/* One symbol per character. */
	int32_t nsym = 0;
	for (size_t i = 0; i < nlen;) {
		uint32_t l = utf8_len((const unsigned char *)norm + i, nlen - i);
		syms[nsym] = (struct sym){(uint32_t)i, l, nsym - 1, -1};
		if (nsym > 0)
			syms[nsym - 1].next = nsym;
		nsym++;
		i += l;
	}

	/* Merge the best pair until none is left. */
	for (int32_t i = 0; i + 1 < nsym && rc == 0; i++)
		rc = try_pair(t, norm, syms, &h, i);
	while (rc == 0 && h.n > 0) {
		struct tok_pair top = tok_pairs_pop(&h);
		struct sym *l = &syms[top.left], *r = &syms[top.right];
		if (l->len == 0 || r->len == 0 || l->len + r->len != top.len)
			continue; /* stale: a side has changed since it was queued */
		l->len += r->len;
		l->next = r->next;
		if (r->next >= 0)
			syms[r->next].prev = top.left;
		r->len = 0;
		rc = try_pair(t, norm, syms, &h, l->prev);
		if (rc == 0)
			rc = try_pair(t, norm, syms, &h, top.left);
	}
	if (rc < 0) {
		rc = itt_err_set(err, rc, "tokenizer_encode: out of memory for merge candidates");
		goto out;
	}

	/* Emit: the symbol's token, else byte tokens, else <unk>. */
	bool prev_unknown = false;
	for (int32_t i = 0; i >= 0 && i < nsym; i = syms[i].next) {
		const char *s = norm + syms[i].start;
		int32_t id = tokenizer_lookup(t, s, syms[i].len);
		if (id >= 0 && t->types[id] != TOKENIZER_TYPE_UNKNOWN) {
			emit_id(e, id);
			prev_unknown = false;
			continue;
		}
		if (t->unk < 0 && !t->byte_fallback) {
			rc = itt_err_set(
			    err, ITT_E_NOTFOUND,
			    "tokenizer_encode: normalised text byte %u has no token and "
			    "the vocab has neither byte tokens nor an unknown token",
			    syms[i].start);
			goto out;
		}
		if (!t->byte_fallback) {
			if (!prev_unknown)
				emit_id(e, t->unk);
			prev_unknown = true;
			continue;
		}
		for (uint32_t k = 0; k < syms[i].len; k++) {
			int32_t b = t->byte_id[(unsigned char)s[k]];
			if (b < 0 && t->unk < 0) {
				rc = itt_err_set(
				    err, ITT_E_NOTFOUND,
				    "tokenizer_encode: byte 0x%02X has no token and the "
				    "vocab has no unknown token",
				    (unsigned char)s[k]);
				goto out;
			}
			emit_id(e, b >= 0 ? b : t->unk);
		}
		prev_unknown = false;
	}
out:
	free(norm);
	free(syms);
	free(h.a);
	return rc;
}

/* The special token (CONTROL, USER_DEFINED, UNKNOWN; only USER_DEFINED
 * without PARSE_SPECIAL) that splits text[0..len): the first one of
 * t->special from index *from on that occurs in it (so longer ones are
 * tried first, as llama.cpp does); -1 when none does. */
static int32_t find_special(const tokenizer_t *t, const char *text, size_t len, unsigned flags,
                            uint32_t *from)
{
	for (uint32_t i = *from; i < t->n_special; i++) {
		int32_t id = t->special[i];
		if (!(flags & TOKENIZER_PARSE_SPECIAL) &&
		    t->types[id] != TOKENIZER_TYPE_USER_DEFINED)
			continue;
		if (t->len[id] <= len && memmem(text, len, t->blob + t->off[id], t->len[id])) {
			*from = i;
			return id;
		}
	}
	return -1;
}

/* Encodes text[0..len): every occurrence of the first special token found
 * (left to right) becomes that token, and the text between occurrences is
 * split further by the later special tokens, then encoded as text (SPM:
 * each such fragment with its dummy prefix, as llama.cpp does). */
static int encode_fragment(const tokenizer_t *t, const char *text, size_t len, unsigned flags,
                           uint32_t from, struct emit *e, struct itt_err *err)
{
	if (len == 0)
		return 0;
	int32_t id = find_special(t, text, len, flags, &from);
	if (id < 0)
		return t->bpe ? bpe_encode(t, text, len, e, err)
		              : spm_encode(t, text, len, t->add_space_prefix, e, err);
	const char *s = t->blob + t->off[id];
	size_t n = t->len[id];
	for (;;) {
		const char *hit = len >= n ? memmem(text, len, s, n) : NULL;
		size_t left = hit ? (size_t)(hit - text) : len;
		int rc = encode_fragment(t, text, left, flags, from + 1, e, err);
		if (rc < 0 || !hit)
			return rc;
		emit_id(e, id);
		text += left + n;
		len -= left + n;
		while (t->rstrip && t->rstrip[id] && len > 0 && isspace((unsigned char)*text))
			text++, len--;
	}
}

int tokenizer_encode_flags(const tokenizer_t *t, const char *text, size_t len, unsigned flags,
                           int32_t *out, size_t cap, size_t *n_out, struct itt_err *err)
{
	if (!t || !n_out || (!text && len) || (!out && cap))
		return itt_err_set(err, ITT_E_INVALID, "tokenizer_encode: NULL argument");
	*n_out = 0;
	if (len > TOKENIZER_MAX_TEXT)
		return itt_err_set(err, ITT_E_RANGE,
		                   "tokenizer_encode: text of %zu bytes exceeds the limit of %zu",
		                   len, TOKENIZER_MAX_TEXT);
	struct emit e = {out, cap, 0};
	if ((flags & TOKENIZER_ADD_BOS) && t->add_bos)
		emit_id(&e, t->bos);
	int rc;
	/* SentencePiece text without PARSE_SPECIAL stays one piece, as
	 * sentencepiece itself encodes it (see the top of the file). */
	if (!t->bpe && !(flags & TOKENIZER_PARSE_SPECIAL))
		rc = spm_encode(t, text, len, t->add_space_prefix, &e, err);
	else
		rc = encode_fragment(t, text, len, flags, 0, &e, err);
	*n_out = e.n;
	if (rc == 0 && e.n > cap)
		rc = itt_err_set(err, ITT_E_FULL, "tokenizer_encode: %zu ids do not fit in %zu",
		                 e.n, cap);
	return rc;
}

int tokenizer_encode(const tokenizer_t *t, const char *text, size_t len, bool bos, int32_t *out,
                     size_t cap, size_t *n_out, struct itt_err *err)
{
	return tokenizer_encode_flags(t, text, len, bos ? TOKENIZER_ADD_BOS : 0, out, cap, n_out,
	                              err);
}

/* ---- decoding ------------------------------------------------------------ */

int tokenizer_decode_piece(const tokenizer_t *t, int32_t prev, int32_t id, char *buf, size_t cap)
{
	if (!t || id < 0 || (uint32_t)id >= t->n)
		return ITT_E_RANGE;
	if (!buf && cap)
		return ITT_E_INVALID;
	const char *s = t->blob + t->off[id];
	size_t n = t->len[id];
	switch (t->types[id]) {
	case TOKENIZER_TYPE_CONTROL:
	case TOKENIZER_TYPE_UNKNOWN:
	case TOKENIZER_TYPE_UNUSED: return 0;
	case TOKENIZER_TYPE_BYTE:
		if (cap == 0)
			return 0;
		buf[0] = (char)tokenizer_byte_of_text(s, n);
		return 1;
	default: break;
	}
	if (t->bpe) {
		if (t->types[id] == TOKENIZER_TYPE_USER_DEFINED) { /* stored as typed */
			size_t w = n < cap ? n : cap;
			if (w)
				memcpy(buf, s, w);
			return (int)w;
		}
		return bpe_decode_piece(t, id, buf, cap);
	}
	/* The dummy prefix space of the first piece after BOS is not text. */
	bool strip = t->add_space_prefix && t->bos >= 0 && prev == t->bos;
	size_t w = 0;
	for (size_t i = 0; i < n && w < cap;) {
		if (n - i >= 3 && memcmp(s + i, SPACE_MARK, 3) == 0) {
			i += 3;
			if (!strip)
				buf[w++] = ' ';
		} else {
			buf[w++] = s[i++];
		}
		strip = false;
	}
	return (int)w;
}

/* ---- special tokens ------------------------------------------------------ */

bool tokenizer_add_bos(const tokenizer_t *t)
{
	return t && t->add_bos;
}

int32_t tokenizer_token_id(const tokenizer_t *t, const char *text, size_t len)
{
	if (!t || (!text && len) || len == 0)
		return -1;
	return tokenizer_lookup(t, text, len);
}

int32_t tokenizer_eot(const tokenizer_t *t)
{
	return t ? t->eot : -1;
}

bool tokenizer_is_eog(const tokenizer_t *t, int32_t id)
{
	return t && id >= 0 && (uint32_t)id < t->n && t->eog[id];
}

size_t tokenizer_eog_ids(const tokenizer_t *t, int32_t *out, size_t cap)
{
	size_t n = 0;
	for (uint32_t i = 0; t && i < t->n; i++) {
		if (!t->eog[i])
			continue;
		if (n < cap)
			out[n] = (int32_t)i;
		n++;
	}
	return n;
}
