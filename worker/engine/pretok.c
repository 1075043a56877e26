/* pretok: byte-level BPE pre-tokenizers as hand-written matchers (see
 * pretok.h).
 *
 * Every family is a chain of passes; a pass cuts each piece [b, e) of the
 * previous pass into smaller pieces and never looks across a piece's ends
 * (a look-ahead at e sees "nothing", as a regex run on the piece alone
 * would).  Two kinds of pass exist:
 *
 * - the GPT-2 and Llama 3 / Qwen2 expressions, whose alternatives are tried
 *   in order at each position (the matchers follow the alternatives one by
 *   one, including the back-off of \s+(?!\S) by one space before a
 *   non-space);
 * - simple expressions of the form \s?X+, X+, X or XXX over one character
 *   class X: the leftmost match is taken, and both the matches and the text
 *   between them become pieces (llama.cpp's std::regex split).
 *
 * Classes: \p{L}, \p{N}, \p{P}, \p{S}, \p{M} are Unicode general categories
 * (utf8proc); whitespace is the fixed set of pretok.h, and a whitespace
 * code point belongs to no other class (llama.cpp maps non-ASCII
 * whitespace to \v before running a regex, so a bracket range such as
 * U+3000..U+3002 never sees U+3000). */
#include "pretok.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "err.h"

enum {
	CL_IN = 1, /* set for every code point: "inside the piece" */
	CL_LETTER = 2,
	CL_NUMBER = 4,
	CL_PUNCT = 8,
	CL_SYMBOL = 16,
	CL_MARK = 32,
	CL_WS = 64,
};

#define INVALID_CP 0xfffdu /* classes a byte that starts no character */

/* ---- names ------------------------------------------------------------------ */

static const struct {
	const char *name;
	enum pretok_kind kind;
	unsigned flags;
} PRETOK_NAMES[] = {
    {"gpt-2", PRETOK_GPT2, 0},
    {"phi-2", PRETOK_GPT2, 0},
    {"mpt", PRETOK_GPT2, 0},
    {"olmo", PRETOK_GPT2, 0},
    {"jais", PRETOK_GPT2, 0},
    {"llama3", PRETOK_LLAMA3, PRETOK_F_ADD_BOS | PRETOK_F_IGNORE_MERGES},
    {"llama-v3", PRETOK_LLAMA3, PRETOK_F_ADD_BOS | PRETOK_F_IGNORE_MERGES},
    {"llama-bpe", PRETOK_LLAMA3, PRETOK_F_ADD_BOS | PRETOK_F_IGNORE_MERGES},
    {"falcon3", PRETOK_LLAMA3, PRETOK_F_ADD_BOS | PRETOK_F_IGNORE_MERGES},
    {"dbrx", PRETOK_LLAMA3, 0},
    {"smaug-bpe", PRETOK_LLAMA3, 0},
    {"qwen2", PRETOK_QWEN2, 0},
    {"deepseek-r1-qwen", PRETOK_QWEN2, 0},
    {"stablelm2", PRETOK_QWEN2, 0},
    {"megrez", PRETOK_QWEN2, 0},
    {"qwen35", PRETOK_QWEN35, 0},
    {"starcoder", PRETOK_STARCODER, 0},
    {"refact", PRETOK_STARCODER, 0},
    {"command-r", PRETOK_STARCODER, 0},
    {"smollm", PRETOK_STARCODER, 0},
    {"codeshell", PRETOK_STARCODER, 0},
    {"exaone", PRETOK_STARCODER, 0},
    {"minerva-7b", PRETOK_STARCODER, 0},
    {"falcon", PRETOK_FALCON, 0},
    {"deepseek-llm", PRETOK_DEEPSEEK_LLM, 0},
    {"deepseek-coder", PRETOK_DEEPSEEK_CODER, 0},
};

int pretok_kind_of(const char *name, size_t len, unsigned *flags)
{
	for (size_t i = 0; i < sizeof PRETOK_NAMES / sizeof PRETOK_NAMES[0]; i++) {
		if (strlen(PRETOK_NAMES[i].name) == len &&
		    memcmp(PRETOK_NAMES[i].name, name, len) == 0) {
			if (flags)
				*flags = PRETOK_NAMES[i].flags;
			return (int)PRETOK_NAMES[i].kind;
		}
	}
	return -1;
}

/* ---- code points ------------------------------------------------------------ */

/* Like llama.cpp's decoder: the lead byte gives the length and only the
 * continuation bytes are checked (so overlong forms and surrogates decode);
 * anything else is one invalid byte. */
static size_t decode_one(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t len;
	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if ((c & 0xe0) == 0xc0)
		len = 2, *cp = c & 0x1fu;
	else if ((c & 0xf0) == 0xe0)
		len = 3, *cp = c & 0x0fu;
	else if ((c & 0xf8) == 0xf0)
		len = 4, *cp = c & 0x07u;
	else
		len = 0;
	if (len == 0 || n < len) {
		*cp = INVALID_CP;
		return 1;
	}
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			*cp = INVALID_CP;
			return 1;
		}
		*cp = *cp << 6 | (s[i] & 0x3fu);
	}
	return len;
}

int pretok_decode(const char *s, size_t len, struct pretok_text *t)
{
	memset(t, 0, sizeof *t);
	t->cp = malloc((len ? len : 1) * sizeof *t->cp);
	t->off = malloc((len + 1) * sizeof *t->off);
	if (!t->cp || !t->off) {
		pretok_text_free(t);
		return ITT_E_NOMEM;
	}
	size_t i = 0;
	while (i < len) {
		t->off[t->n] = i;
		i += decode_one((const unsigned char *)s + i, len - i, &t->cp[t->n]);
		t->n++;
	}
	t->off[t->n] = len;
	return 0;
}

void pretok_text_free(struct pretok_text *t)
{
	free(t->cp);
	free(t->off);
	t->cp = NULL;
	t->off = NULL;
	t->n = 0;
}

static bool is_space(uint32_t c)
{
	if ((c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
	    (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
	    c == 0x205f || c == 0x3000)
		return true;
	return false;
}

static uint8_t class_of(uint32_t c)
{
	if (is_space(c))
		return CL_IN | CL_WS;
	if (c > 0x10ffff)
		return CL_IN;
	switch (utf8proc_category((utf8proc_int32_t)c)) {
	case UTF8PROC_CATEGORY_LU:
	case UTF8PROC_CATEGORY_LL:
	case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_LO: return CL_IN | CL_LETTER;
	case UTF8PROC_CATEGORY_MN:
	case UTF8PROC_CATEGORY_MC:
	case UTF8PROC_CATEGORY_ME: return CL_IN | CL_MARK;
	case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_NO: return CL_IN | CL_NUMBER;
	case UTF8PROC_CATEGORY_PC:
	case UTF8PROC_CATEGORY_PD:
	case UTF8PROC_CATEGORY_PS:
	case UTF8PROC_CATEGORY_PE:
	case UTF8PROC_CATEGORY_PI:
	case UTF8PROC_CATEGORY_PF:
	case UTF8PROC_CATEGORY_PO: return CL_IN | CL_PUNCT;
	case UTF8PROC_CATEGORY_SM:
	case UTF8PROC_CATEGORY_SC:
	case UTF8PROC_CATEGORY_SK:
	case UTF8PROC_CATEGORY_SO: return CL_IN | CL_SYMBOL;
	default: return CL_IN;
	}
}

/* ---- pieces ----------------------------------------------------------------- */

struct pieces {
	uint32_t *len;
	size_t n, cap;
	bool nomem;
};

static void piece_add(struct pieces *p, size_t len)
{
	if (len == 0 || p->nomem)
		return;
	if (p->n == p->cap) {
		size_t cap = p->cap ? 2 * p->cap : 64;
		uint32_t *a = realloc(p->len, cap * sizeof *a);
		if (!a) {
			p->nomem = true;
			return;
		}
		p->len = a;
		p->cap = cap;
	}
	p->len[p->n++] = (uint32_t)len;
}

/* One piece [b, e) being cut: code points, their classes, and where the
 * last cut was made. */
struct cut {
	const uint32_t *cp;
	const uint8_t *cls;
	size_t b, e, last;
	struct pieces *out;
};

static uint8_t fl(const struct cut *c, size_t i)
{
	return i < c->e ? c->cls[i] : 0;
}

static uint32_t cp_at(const struct cut *c, size_t i)
{
	return i < c->e ? c->cp[i] : UINT32_MAX;
}

static void cut_at(struct cut *c, size_t end)
{
	piece_add(c->out, end - c->last);
	c->last = end;
}

static uint32_t ascii_lower(uint32_t c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* 's 't 'm 'd (2 code points) or 're 've 'll (3) at pos, else 0. */
static size_t contraction(const struct cut *c, size_t pos, bool any_case)
{
	if (cp_at(c, pos) != '\'' || pos + 1 >= c->e)
		return 0;
	uint32_t a = cp_at(c, pos + 1), b = cp_at(c, pos + 2);
	if (any_case)
		a = ascii_lower(a), b = ascii_lower(b);
	if (a == 's' || a == 't' || a == 'm' || a == 'd')
		return 2;
	if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
		return 3;
	return 0;
}

/* The whitespace alternatives every family ends with: \s+(?!\S) gives
 * the run less its last space when a non-space follows, else \s+. */
static size_t space_run(const struct cut *c, size_t pos)
{
	size_t n = 0;
	while (fl(c, pos + n) & CL_WS)
		n++;
	if (n > 1 && pos + n < c->e)
		return n - 1;
	return n;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void pass_gpt2(struct cut *c)
{
	const uint8_t LN = CL_LETTER | CL_NUMBER, WLN = CL_WS | CL_LETTER | CL_NUMBER;
	size_t pos = c->b;
	while (pos < c->e) {
		size_t k = contraction(c, pos, false);
		if (k) {
			cut_at(c, pos += k);
			continue;
		}
		bool sp = c->cp[pos] == ' ';
		uint8_t f = sp ? fl(c, pos + 1) : c->cls[pos];
		if (f & LN) { /* ?\p{L}+ or ?\p{N}+ */
			uint8_t want = f & LN;
			pos += sp;
			while (fl(c, pos) & want)
				pos++;
			cut_at(c, pos);
			continue;
		}
		if ((f & CL_IN) && !(f & WLN)) { /* ?[^\s\p{L}\p{N}]+ */
			pos += sp;
			while ((fl(c, pos) & CL_IN) && !(fl(c, pos) & WLN))
				pos++;
			cut_at(c, pos);
			continue;
		}
		size_t n = space_run(c, pos);
		cut_at(c, pos += n ? n : 1);
	}
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 * | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * (Qwen2: \p{N} instead of \p{N}{1,3}; Qwen3.5 also [\p{L}\p{M}] for
 * \p{L}, letters = CL_LETTER | CL_MARK). */
static void pass_llama3(struct cut *c, size_t max_digits, uint8_t letters)
{
	const uint8_t WLN = CL_WS | letters | CL_NUMBER;
	size_t pos = c->b;
	while (pos < c->e) {
		uint32_t cp = c->cp[pos];
		uint8_t f = c->cls[pos];
		size_t k = contraction(c, pos, true);
		if (k) {
			cut_at(c, pos += k);
			continue;
		}
		if (cp != '\r' && cp != '\n' && !(f & CL_NUMBER) &&
		    ((f & letters) || (fl(c, pos + 1) & letters))) {
			pos++;
			while (fl(c, pos) & letters)
				pos++;
			cut_at(c, pos);
			continue;
		}
		if (f & CL_NUMBER) {
			size_t n = 0;
			while (n < max_digits && (fl(c, pos) & CL_NUMBER))
				pos++, n++;
			cut_at(c, pos);
			continue;
		}
		uint8_t f2 = cp == ' ' ? fl(c, pos + 1) : f;
		if (!(f2 & WLN)) { /* ?[^\s\p{L}\p{N}]+[\r\n]* */
			pos += cp == ' ';
			while ((fl(c, pos) & CL_IN) && !(fl(c, pos) & WLN))
				pos++;
			while (cp_at(c, pos) == '\r' || cp_at(c, pos) == '\n')
				pos++;
			cut_at(c, pos);
			continue;
		}
		/* \s*[\r\n]+: the longest space run that ends in \r or \n. */
		size_t n = 0, end_rn = 0;
		while (fl(c, pos + n) & CL_WS) {
			if (c->cp[pos + n] == '\r' || c->cp[pos + n] == '\n')
				end_rn = n + 1;
			n++;
		}
		if (end_rn) {
			cut_at(c, pos += end_rn);
			continue;
		}
		n = space_run(c, pos);
		cut_at(c, pos += n ? n : 1);
	}
}

/* ---- single-class expressions ----------------------------------------------- */

struct range {
	uint32_t lo, hi;
};

static bool in_ranges(const struct range *r, size_t n, uint32_t c)
{
	for (size_t i = 0; i < n; i++)
		if (c >= r[i].lo && c <= r[i].hi)
			return true;
	return false;
}

/* deepseek-llm's letters: the bracket of its second expression. */
static const struct range DS_LETTERS[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xB5, 0xB5},       {0xC0, 0xD6},
    {0xD8, 0xF6},       {0xF8, 0x1BA},      {0x1BC, 0x1BF},     {0x1C4, 0x293},
    {0x295, 0x2AF},     {0x370, 0x373},     {0x376, 0x377},     {0x37B, 0x37D},
    {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},
    {0x38E, 0x3A1},     {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},
    {0x531, 0x556},     {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
    {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
    {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

/* deepseek-llm's punctuation: [!-/:-~！-／：-～‘-‟　-。] */
static const struct range DS_PUNCT[] = {
    {0x21, 0x2F},     {0x3A, 0x7E},     {0xFF01, 0xFF0F},
    {0xFF1A, 0xFF5E}, {0x2018, 0x201F}, {0x3000, 0x3002},
};

/* The deepseek families' CJK run: [一-龥ࠀ-一가-퟿] */
static const struct range DS_CJK[] = {{0x4E00, 0x9FA5}, {0x0800, 0x4E00}, {0xAC00, 0xD7FF}};

enum xclass {
	X_NEWLINE,   /* [\r\n] */
	X_LETTER,    /* \p{L} */
	X_NUMBER,    /* \p{N} */
	X_PUNCT,     /* \p{P} */
	X_FALCON,    /* [\p{P}\$\+<=>\^~\|`] */
	X_DIGIT,     /* [0-9] */
	X_DS_LETTER, /* DS_LETTERS */
	X_DS_PUNCT,  /* DS_PUNCT */
	X_CJK,       /* DS_CJK */
};

static bool in_class(const struct cut *c, size_t i, enum xclass x)
{
	if (i >= c->e)
		return false;
	uint32_t cp = c->cp[i];
	uint8_t f = c->cls[i];
	if (f & CL_WS) /* whitespace belongs to no bracket (see the top) */
		return x == X_NEWLINE && (cp == '\r' || cp == '\n');
	switch (x) {
	case X_NEWLINE: return false;
	case X_LETTER: return f & CL_LETTER;
	case X_NUMBER: return f & CL_NUMBER;
	case X_PUNCT: return f & CL_PUNCT;
	case X_FALCON: return (f & CL_PUNCT) || (cp < 0x80 && strchr("$+<=>^~|`", (int)cp) && cp);
	case X_DIGIT: return cp >= '0' && cp <= '9';
	case X_DS_LETTER:
		return in_ranges(DS_LETTERS, sizeof DS_LETTERS / sizeof DS_LETTERS[0], cp);
	case X_DS_PUNCT: return in_ranges(DS_PUNCT, sizeof DS_PUNCT / sizeof DS_PUNCT[0], cp);
	case X_CJK: return in_ranges(DS_CJK, sizeof DS_CJK / sizeof DS_CJK[0], cp);
	}
	return false;
}

enum xform {
	XF_ONE,      /* X */
	XF_RUN,      /* X+ */
	XF_SP_RUN,   /* \s?X+ */
	XF_THREE,    /* XXX */
	XF_TRAIL_WS, /* \s+$ (X unused) */
};

/* Cuts the piece at every leftmost match of the expression: the text
 * before a match and the match are pieces of their own. */
static void pass_class(struct cut *c, enum xform form, enum xclass x)
{
	if (form == XF_TRAIL_WS) {
		size_t p = c->e;
		while (p > c->b && (c->cls[p - 1] & CL_WS))
			p--;
		cut_at(c, p);
		return;
	}
	size_t pos = c->b;
	while (pos < c->e) {
		size_t start = pos, end = pos;
		if (form == XF_SP_RUN && (c->cls[pos] & CL_WS) && in_class(c, pos + 1, x))
			end = pos + 1;
		if (in_class(c, end, x)) {
			if (form == XF_ONE) {
				end++;
			} else if (form == XF_THREE) {
				end = in_class(c, end + 1, x) && in_class(c, end + 2, x) ? end + 3
				                                                         : start;
			} else {
				while (in_class(c, end, x))
					end++;
			}
		} else {
			end = start;
		}
		if (end == start) {
			pos++;
			continue;
		}
		cut_at(c, start);
		cut_at(c, end);
		pos = end;
	}
}

/* ---- families --------------------------------------------------------------- */

struct pass {
	enum { P_GPT2, P_LLAMA3, P_QWEN2, P_QWEN35, P_CLASS } kind;
	enum xform form;
	enum xclass x;
};

#define MAX_PASSES 6

static const struct {
	size_t n;
	struct pass p[MAX_PASSES];
} FAMILIES[] = {
    [PRETOK_GPT2] = {1, {{P_GPT2}}},
    [PRETOK_LLAMA3] = {1, {{P_LLAMA3}}},
    [PRETOK_QWEN2] = {1, {{P_QWEN2}}},
    [PRETOK_QWEN35] = {1, {{P_QWEN35}}},
    [PRETOK_STARCODER] = {2, {{P_CLASS, XF_ONE, X_NUMBER}, {P_GPT2}}},
    [PRETOK_FALCON] = {3, {{P_CLASS, XF_RUN, X_FALCON}, {P_GPT2}, {P_CLASS, XF_THREE, X_DIGIT}}},
    [PRETOK_DEEPSEEK_LLM] = {6,
                             {{P_CLASS, XF_ONE, X_NEWLINE},
                              {P_CLASS, XF_SP_RUN, X_DS_LETTER},
                              {P_CLASS, XF_SP_RUN, X_DS_PUNCT},
                              {P_CLASS, XF_TRAIL_WS, X_NEWLINE},
                              {P_CLASS, XF_RUN, X_CJK},
                              {P_CLASS, XF_RUN, X_NUMBER}}},
    [PRETOK_DEEPSEEK_CODER] = {5,
                               {{P_CLASS, XF_ONE, X_NEWLINE},
                                {P_CLASS, XF_SP_RUN, X_LETTER},
                                {P_CLASS, XF_SP_RUN, X_PUNCT},
                                {P_CLASS, XF_RUN, X_CJK},
                                {P_CLASS, XF_ONE, X_NUMBER}}},
};

int pretok_split(enum pretok_kind k, const struct pretok_text *t, uint32_t **words, size_t *n_words)
{
	*words = NULL;
	*n_words = 0;
	if (t->n == 0)
		return 0;
	uint8_t *cls = malloc(t->n);
	struct pieces cur = {0}, next = {0};
	if (!cls)
		return ITT_E_NOMEM;
	for (size_t i = 0; i < t->n; i++)
		cls[i] = class_of(t->cp[i]);
	piece_add(&cur, t->n);
	for (size_t pi = 0; pi < FAMILIES[k].n && !cur.nomem; pi++) {
		const struct pass *p = &FAMILIES[k].p[pi];
		size_t b = 0;
		next.n = 0;
		for (size_t i = 0; i < cur.n; i++) {
			struct cut c = {t->cp, cls, b, b + cur.len[i], b, &next};
			switch (p->kind) {
			case P_GPT2: pass_gpt2(&c); break;
			case P_LLAMA3: pass_llama3(&c, 3, CL_LETTER); break;
			case P_QWEN2: pass_llama3(&c, 1, CL_LETTER); break;
			case P_QWEN35: pass_llama3(&c, 1, CL_LETTER | CL_MARK); break;
			case P_CLASS: pass_class(&c, p->form, p->x); break;
			}
			cut_at(&c, c.e); /* whatever is left after the last match */
			b = c.e;
		}
		struct pieces tmp = cur;
		cur = next;
		next = tmp;
		cur.nomem |= next.nomem;
	}
	free(cls);
	free(next.len);
	if (cur.nomem) {
		free(cur.len);
		return ITT_E_NOMEM;
	}
	*words = cur.len;
	*n_words = cur.n;
	return 0;
}
