/* tokenizer-bpe: byte-level BPE ("gpt2" tokenizer model), as GPT-2,
 * Llama 3, Qwen2, DeepSeek, StarCoder and Falcon vocabularies use it.
 *
 * Encoding a text without special tokens: the pre-tokenizer (pretok.h)
 * cuts it into words; each byte of a word becomes the code point GPT-2's
 * bytes_to_unicode() assigns it (printable Latin-1 bytes stand for
 * themselves, the other 68 bytes for U+0100..U+0143, in byte order), so a
 * word is a string of those code points in UTF-8; its symbols (one per
 * byte) are merged pairwise, always the adjacent pair whose merge
 * "left right" comes first in tokenizer.ggml.merges (rank = index; the
 * leftmost pair among equal ranks), until no adjacent pair has a merge.
 * Each final symbol is a token; one that is not (a vocabulary without the
 * result of one of its merges) falls back to the tokens of its single
 * bytes, then to the unknown token, else is dropped as llama.cpp does.
 * With ignore_merges (Llama 3), a word that is itself a token is emitted
 * whole without merging.
 *
 * Decoding maps each code point of a NORMAL token back to its byte; a code
 * point outside the table (not produced by the encoder) is copied as
 * UTF-8.  Merges are copied at construction, so the GGUF may be closed.
 *
 * Lookup of a pair: open addressing over merge indices, FNV-1a of
 * left 0xFF right (0xFF never occurs in UTF-8); a repeated pair keeps its
 * first rank.  The merge loop is the SPM one (tokenizer.c) with ranks for
 * scores: a binary heap of candidate pairs, checked when popped. */
#include <stdlib.h>
#include <string.h>

#include "pretok.h"
#include "tokenizer-impl.h"

#define BPE_MAX_MERGES    (1u << 24)       /* merges per vocabulary (GPT-2 has 50k); */
                                           /* ranks stay exact as tok_pair float keys */
#define BPE_MAX_MERGE_LEN (2 * 65535u + 1) /* two tokens of tokenizer.c's limit */

struct bpe {
	int kind; /* enum pretok_kind */
	bool ignore_merges;
	uint32_t n_merges;
	char *blob;      /* each merge's left then right text, no separators */
	size_t *off;     /* [n_merges] start of merge i's left text */
	uint32_t *llen;  /* [n_merges] bytes of the left text */
	uint32_t *rlen;  /* [n_merges] bytes of the right text */
	uint32_t *rank;  /* [n_merges] index in tokenizer.ggml.merges */
	uint32_t *slots; /* [mask + 1] merge index + 1, 0 = empty */
	uint32_t mask;
	char byte_utf8[256][2]; /* UTF-8 of each byte's code point */
	uint8_t byte_len[256];  /* 1 or 2 */
	int16_t cp_byte[0x144]; /* code point to byte, -1 when none */
};

/* ---- construction -------------------------------------------------------- */

static uint64_t pair_hash(const char *l, size_t ln, const char *r, size_t rn)
{
	uint64_t h = 1469598103934665603ull;
	for (size_t i = 0; i < ln; i++)
		h = (h ^ (unsigned char)l[i]) * 1099511628211ull;
	h = (h ^ 0xffu) * 1099511628211ull;
	for (size_t i = 0; i < rn; i++)
		h = (h ^ (unsigned char)r[i]) * 1099511628211ull;
	return h;
}

/* The rank of merge "l r", or -1. */
static int32_t pair_rank(const struct bpe *b, const char *l, size_t ln, const char *r, size_t rn)
{
	uint32_t i = (uint32_t)pair_hash(l, ln, r, rn) & b->mask;
	for (;;) {
		uint32_t m = b->slots[i];
		if (m == 0)
			return -1;
		m--;
		const char *s = b->blob + b->off[m];
		if (b->llen[m] == ln && b->rlen[m] == rn && memcmp(s, l, ln) == 0 &&
		    memcmp(s + ln, r, rn) == 0)
			return (int32_t)b->rank[m];
		i = (i + 1) & b->mask;
	}
}

/* GPT-2's bytes_to_unicode(). */
static void byte_table(struct bpe *b)
{
	for (int c = 0; c < 0x144; c++)
		b->cp_byte[c] = -1;
	int extra = 0;
	for (int c = 0; c < 256; c++) {
		bool printable = (c >= 0x21 && c <= 0x7e) || (c >= 0xa1 && c <= 0xac) ||
		                 (c >= 0xae && c <= 0xff);
		int cp = printable ? c : 256 + extra++;
		b->cp_byte[cp] = (int16_t)c;
		if (cp < 0x80) {
			b->byte_utf8[c][0] = (char)cp;
			b->byte_len[c] = 1;
		} else {
			b->byte_utf8[c][0] = (char)(0xc0 | cp >> 6);
			b->byte_utf8[c][1] = (char)(0x80 | (cp & 0x3f));
			b->byte_len[c] = 2;
		}
	}
}

void bpe_destroy(struct bpe **bp)
{
	if (!bp || !*bp)
		return;
	struct bpe *b = *bp;
	free(b->blob);
	free(b->off);
	free(b->llen);
	free(b->rlen);
	free(b->rank);
	free(b->slots);
	free(b);
	*bp = NULL;
}

int bpe_new(const gguf_t *g, int kind, bool ignore_merges, struct bpe **out, struct itt_err *err)
{
	const char *key = "tokenizer.ggml.merges";
	struct itt_err e = {0};
	uint32_t type;
	uint64_t n;
	const void *data;
	int rc = gguf_get_arr(g, key, &type, &n, &data, &e);
	if (rc == ITT_E_NOTFOUND)
		return itt_err_set(err, rc,
		                   "tokenizer: key %s is missing (a gpt2 tokenizer needs it)", key);
	if (rc < 0)
		return itt_err_set(err, rc, "tokenizer: %s", e.msg);
	if (type != GGUF_TYPE_STRING)
		return itt_err_set(err, ITT_E_FORMAT, "tokenizer: %s holds %s, expected string",
		                   key, gguf_type_name(type));
	if (n > BPE_MAX_MERGES)
		return itt_err_set(err, ITT_E_RANGE, "tokenizer: %s has %llu entries (limit %u)",
		                   key, (unsigned long long)n, BPE_MAX_MERGES);
	struct gguf_str *m = malloc((n ? n : 1) * sizeof *m);
	struct bpe *b = calloc(1, sizeof *b);
	if (!m || !b) {
		free(m);
		free(b);
		return itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory for %s", key);
	}
	if ((rc = gguf_get_str_arr(g, key, m, n, err)) < 0) {
		free(m);
		free(b);
		return rc;
	}
	b->kind = kind;
	b->ignore_merges = ignore_merges;
	byte_table(b);
	size_t blob = 0;
	for (uint64_t i = 0; i < n; i++)
		blob += (size_t)m[i].len;
	uint32_t cap = 16;
	while (cap < 2 * n)
		cap *= 2;
	b->mask = cap - 1;
	b->blob = malloc(blob ? blob : 1);
	b->off = malloc((n ? n : 1) * sizeof *b->off);
	b->llen = malloc((n ? n : 1) * sizeof *b->llen);
	b->rlen = malloc((n ? n : 1) * sizeof *b->rlen);
	b->rank = malloc((n ? n : 1) * sizeof *b->rank);
	b->slots = calloc(cap, sizeof *b->slots);
	if (!b->blob || !b->off || !b->llen || !b->rlen || !b->rank || !b->slots) {
		free(m);
		bpe_destroy(&b);
		return itt_err_set(err, ITT_E_NOMEM, "tokenizer: out of memory for %llu merges",
		                   (unsigned long long)n);
	}
	size_t pos = 0;
	for (uint64_t i = 0; i < n; i++) {
		/* "left right": the first space after the first byte splits it
		 * (a merge's left side may itself be a lone space). */
		const char *s = m[i].ptr;
		size_t len = (size_t)m[i].len;
		const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
		uint32_t idx = b->n_merges;
		if (!sp || len > BPE_MAX_MERGE_LEN)
			continue; /* no pair, or longer than two tokens: never applies */
		size_t ln = (size_t)(sp - s), rn = len - ln - 1;
		if (pair_rank(b, s, ln, sp + 1, rn) >= 0)
			continue; /* a repeated pair keeps its first rank */
		b->off[idx] = pos;
		b->llen[idx] = (uint32_t)ln;
		b->rlen[idx] = (uint32_t)rn;
		b->rank[idx] = (uint32_t)i;
		memcpy(b->blob + pos, s, ln);
		memcpy(b->blob + pos + ln, sp + 1, rn);
		pos += ln + rn;
		uint32_t h = (uint32_t)pair_hash(s, ln, sp + 1, rn) & b->mask;
		while (b->slots[h])
			h = (h + 1) & b->mask;
		b->slots[h] = idx + 1;
		b->n_merges++;
	}
	free(m);
	*out = b;
	return 0;
}

/* ---- encoding ------------------------------------------------------------ */

/* A symbol: a live span of the encoded word, in a doubly linked list; one
 * merged into its left neighbour has len 0. */
struct bsym {
	uint32_t start, len;
	int32_t prev, next;
};

/* A candidate merge of left with its right neighbour, valid while both
 * still have the lengths that sum to len. */
static int try_merge(const struct bpe *b, const char *w, const struct bsym *syms, struct tok_pairs *h,
                     int32_t left)
{
	if (left < 0 || syms[left].next < 0)
		return 0;
	int32_t right = syms[left].next;
	const struct bsym *l = &syms[left], *r = &syms[right];
	int32_t rank = pair_rank(b, w + l->start, l->len, w + r->start, r->len);
	if (rank < 0)
		return 0;
	return tok_pairs_push(h, (struct tok_pair){-(float)rank, left, right, l->len + r->len});
}

/* Scratch of one encode call, sized for the longest word. */
struct bwork {
	char *w; /* the encoded word */
	struct bsym *syms;
	struct tok_pairs heap;
};

/* BPE of one word of n bytes; appends its ids to e. */
static int encode_word(const tokenizer_t *t, struct bwork *k, const unsigned char *s, size_t n,
                       struct emit *e)
{
	const struct bpe *b = t->bpe;
	size_t wl = 0;
	int32_t nsym = (int32_t)n;
	for (size_t i = 0; i < n; i++) {
		k->syms[i] = (struct bsym){(uint32_t)wl, b->byte_len[s[i]], (int32_t)i - 1,
		                           i + 1 < n ? (int32_t)i + 1 : -1};
		memcpy(k->w + wl, b->byte_utf8[s[i]], b->byte_len[s[i]]);
		wl += b->byte_len[s[i]];
	}
	if (b->ignore_merges) {
		int32_t id = tokenizer_lookup(t, k->w, wl);
		if (id >= 0) {
			emit_id(e, id);
			return 0;
		}
	}
	int rc = 0;
	k->heap.n = 0;
	for (int32_t i = 0; i + 1 < nsym && rc == 0; i++)
		rc = try_merge(b, k->w, k->syms, &k->heap, i);
	while (rc == 0 && k->heap.n > 0) {
		struct tok_pair top = tok_pairs_pop(&k->heap);
		struct bsym *l = &k->syms[top.left], *r = &k->syms[top.right];
		if (l->len == 0 || r->len == 0 || l->len + r->len != top.len)
			continue; /* stale: a side has changed since it was queued */
		l->len += r->len;
		l->next = r->next;
		if (r->next >= 0)
			k->syms[r->next].prev = top.left;
		r->len = 0;
		rc = try_merge(b, k->w, k->syms, &k->heap, l->prev);
		if (rc == 0)
			rc = try_merge(b, k->w, k->syms, &k->heap, top.left);
	}
	if (rc < 0)
		return rc;
	for (int32_t i = 0; i >= 0 && i < nsym; i = k->syms[i].next) {
		const char *sym = k->w + k->syms[i].start;
		uint32_t len = k->syms[i].len;
		int32_t id = tokenizer_lookup(t, sym, len);
		if (id >= 0) {
			emit_id(e, id);
			continue;
		}
		/* Not a token: its characters one by one (each is one byte). */
		for (uint32_t c = 0; c < len;) {
			uint32_t cl = ((unsigned char)sym[c] & 0xe0) == 0xc0 && c + 1 < len ? 2 : 1;
			id = tokenizer_lookup(t, sym + c, cl);
			if (id < 0)
				id = t->unk;
			if (id >= 0)
				emit_id(e, id);
			c += cl;
		}
	}
	return 0;
}

int bpe_encode(const tokenizer_t *t, const char *text, size_t len, struct emit *e,
               struct itt_err *err)
{
	if (len == 0)
		return 0;
	struct pretok_text pt;
	uint32_t *words = NULL;
	size_t n_words = 0;
	struct bwork k = {0};
	int rc = pretok_decode(text, len, &pt);
	if (rc == 0)
		rc = pretok_split((enum pretok_kind)t->bpe->kind, &pt, &words, &n_words);
	size_t longest = 0;
	for (size_t i = 0, c = 0; rc == 0 && i < n_words; c += words[i++]) {
		size_t bytes = pt.off[c + words[i]] - pt.off[c];
		if (bytes > longest)
			longest = bytes;
	}
	if (rc == 0) {
		k.w = malloc(2 * longest + 1);
		k.syms = malloc((longest + 1) * sizeof *k.syms);
		if (!k.w || !k.syms)
			rc = ITT_E_NOMEM;
	}
	for (size_t i = 0, c = 0; rc == 0 && i < n_words; c += words[i++]) {
		size_t from = pt.off[c], to = pt.off[c + words[i]];
		rc = encode_word(t, &k, (const unsigned char *)text + from, to - from, e);
	}
	if (rc < 0)
		rc = itt_err_set(err, rc, "tokenizer_encode: out of memory for %zu bytes of text",
		                 len);
	pretok_text_free(&pt);
	free(words);
	free(k.w);
	free(k.syms);
	free(k.heap.a);
	return rc;
}

/* ---- decoding ------------------------------------------------------------ */

int bpe_decode_piece(const tokenizer_t *t, int32_t id, char *buf, size_t cap)
{
	const struct bpe *b = t->bpe;
	const unsigned char *s = (const unsigned char *)t->blob + t->off[id];
	size_t n = t->len[id], w = 0;
	for (size_t i = 0; i < n && w < cap;) {
		/* Code points below U+0144 are at most two bytes long. */
		uint32_t cp = s[i];
		size_t cl = 1;
		if ((s[i] & 0xe0) == 0xc0 && i + 1 < n && (s[i + 1] & 0xc0) == 0x80) {
			cp = (uint32_t)(s[i] & 0x1f) << 6 | (s[i + 1] & 0x3f);
			cl = 2;
		}
		if (cp < 0x144 && b->cp_byte[cp] >= 0 && (cl == 2 || cp < 0x80)) {
			buf[w++] = (char)b->cp_byte[cp];
		} else {
			/* Not a byte's code point: copy the bytes as they are. */
			if (cl == 1 && s[i] >= 0x80) {
				size_t more = 0;
				while (i + 1 + more < n && more < 3 &&
				       (s[i + 1 + more] & 0xc0) == 0x80)
					more++;
				cl += more;
			}
			for (size_t j = 0; j < cl && w < cap; j++)
				buf[w++] = (char)s[i + j];
		}
		i += cl;
	}
	return (int)w;
}
