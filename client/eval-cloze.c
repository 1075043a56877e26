/* eval-cloze: `itt eval make-cloze`, a multiple-choice cloze task built
 * from plain text (paragraphs separated by blank lines).
 *
 * An item is a paragraph of at least 2 sentences: the context is its text
 * up to a sentence boundary (chosen at random), the answer the next
 * sentence (4 to 40 words), and K-1 distractors are sentences of paragraphs
 * at least 10 paragraphs away, of similar length when one can be found; the
 * choices are shuffled.
 * Contract: the task file is a pure function of the text and the options;
 * the paragraphs are first divided by a seeded permutation into a selection
 * and a test part, and items and their distractors come from their own part
 * only, so the splits share no paragraph.
 * Invariants: every item has K distinct choices; selection items come
 * first; one JSON object a line, written through jansson. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "eval.h"

struct span {
	size_t a, b; /* [a, b) in the text */
};

struct para {
	struct span text;
	struct span *sent;
	uint32_t n_sent;
	int pool; /* EVAL_SPLIT_SELECT or EVAL_SPLIT_TEST */
};

static bool is_upper(char c)
{
	return c >= 'A' && c <= 'Z';
}

/* Sentences of buf[a, b): a boundary follows '.', '!' or '?' (and any
 * closing quotes or brackets) when white space and then an upper-case
 * letter (or a quote before one) come next. */
static int split_sentences(const char *buf, struct span p, struct para *out)
{
	size_t cap = 8, s = p.a;
	out->sent = malloc(cap * sizeof *out->sent);
	out->n_sent = 0;
	if (!out->sent)
		return -1;
	for (size_t i = p.a; i < p.b; i++) {
		char c = buf[i];
		if (c != '.' && c != '!' && c != '?')
			continue;
		size_t e = i + 1;
		while (e < p.b && (buf[e] == '"' || buf[e] == '\'' || buf[e] == ')'))
			e++;
		size_t n = e;
		if (n < p.b && !eval_is_space(buf[n]))
			continue;
		while (n < p.b && eval_is_space(buf[n]))
			n++;
		if (n < p.b) {
			size_t u = n;
			if (buf[u] == '"' || buf[u] == '\'')
				u++;
			if (u >= p.b || !is_upper(buf[u]))
				continue;
		}
		if (out->n_sent == cap) {
			struct span *s2 = realloc(out->sent, (cap *= 2) * sizeof *s2);
			if (!s2)
				return -1;
			out->sent = s2;
		}
		out->sent[out->n_sent++] = (struct span){s, e};
		s = n;
		i = n ? n - 1 : 0;
	}
	if (s < p.b) {
		size_t e = p.b;
		while (e > s && eval_is_space(buf[e - 1]))
			e--;
		if (e > s) {
			if (out->n_sent == cap) {
				struct span *s2 = realloc(out->sent, (cap + 1) * sizeof *s2);
				if (!s2)
					return -1;
				out->sent = s2;
			}
			out->sent[out->n_sent++] = (struct span){s, e};
		}
	}
	return 0;
}

static uint32_t n_words(const char *buf, struct span s)
{
	uint32_t n = 0;
	bool in = false;
	for (size_t i = s.a; i < s.b; i++) {
		bool sp = eval_is_space(buf[i]);
		n += !sp && !in;
		in = !sp;
	}
	return n;
}

/* A sentence usable as an answer or a distractor. */
static bool usable(const char *buf, struct span s)
{
	uint32_t w = n_words(buf, s);
	return w >= 4 && w <= 40;
}

static bool same_text(const char *buf, struct span x, struct span y)
{
	return x.b - x.a == y.b - y.a && !memcmp(buf + x.a, buf + y.a, x.b - x.a);
}

/* The text, its paragraphs and the state of one build. */
struct cloze {
	const char *buf;
	size_t len;
	struct para *ps;
	size_t np;
	uint32_t *perm; /* a seeded permutation of the paragraphs */
	uint32_t *pool; /* the distractor pool of the part being written */
	uint64_t rng;
	size_t relaxed; /* distractors outside the length band */
};

/* Paragraphs: runs of text separated by lines that are empty or blank,
 * trimmed; binary junk (a NUL byte) is not text.  -1: out of memory. */
static int cloze_paragraphs(struct cloze *c)
{
	const char *buf = c->buf;
	size_t len = c->len, cap = 0;
	for (size_t p = 0; p < len;) {
		size_t start = p, end;
		for (;;) {
			char *nl = memchr(buf + p, '\n', len - p);
			if (!nl) {
				end = p = len;
				break;
			}
			size_t q = (size_t)(nl - buf) + 1, r = q;
			while (r < len && buf[r] != '\n' && eval_is_space(buf[r]))
				r++;
			if (r >= len || buf[r] == '\n') {
				end = (size_t)(nl - buf);
				p = r < len ? r + 1 : len;
				break;
			}
			p = q;
		}
		while (start < end && eval_is_space(buf[start]))
			start++;
		while (end > start && eval_is_space(buf[end - 1]))
			end--;
		if (end == start || memchr(buf + start, 0, end - start))
			continue;
		if (c->np == cap) {
			struct para *p2 = realloc(c->ps, (cap = cap ? 2 * cap : 1024) * sizeof *p2);
			if (!p2)
				return -1;
			c->ps = p2;
		}
		struct para *pa = &c->ps[c->np++];
		memset(pa, 0, sizeof *pa);
		pa->text = (struct span){start, end};
		if (split_sentences(buf, pa->text, pa) < 0)
			return -1;
	}
	return 0;
}

/* The first round(F * np) paragraphs of a seeded permutation are the
 * selection part, the rest the test part.  -1: out of memory. */
static int cloze_divide(struct cloze *c, float F)
{
	c->perm = malloc(c->np * sizeof *c->perm);
	c->pool = malloc(c->np * sizeof *c->pool);
	if (!c->perm || !c->pool)
		return -1;
	for (size_t i = 0; i < c->np; i++)
		c->perm[i] = (uint32_t)i;
	for (size_t i = c->np - 1; i > 0; i--) {
		size_t j = (size_t)eval_rng_below(&c->rng, i + 1);
		uint32_t x = c->perm[i];
		c->perm[i] = c->perm[j];
		c->perm[j] = x;
	}
	size_t n_sel = (size_t)llround((double)F * (double)c->np);
	for (size_t r = 0; r < c->np; r++)
		c->ps[c->perm[r]].pool = r < n_sel ? EVAL_SPLIT_SELECT : EVAL_SPLIT_TEST;
	return 0;
}

/* Has the paragraph a usable sentence at index `from` or later? */
static bool has_usable(const char *buf, const struct para *p, uint32_t from)
{
	for (uint32_t k = from; k < p->n_sent; k++)
		if (usable(buf, p->sent[k]))
			return true;
	return false;
}

/* One item: its context, the K choices in ch shuffled, the answer's index. */
static int cloze_write_item(FILE *f, struct cloze *c, uint32_t pi, int part, uint32_t k,
                            const struct span *ch, uint32_t K)
{
	const struct para *p = &c->ps[pi];
	uint32_t order[16], answer = 0;
	/* shuffle the choices; the answer goes where index 0 lands */
	for (uint32_t i = 0; i < K; i++)
		order[i] = i;
	for (uint32_t i = K - 1; i > 0; i--) {
		uint32_t j = (uint32_t)eval_rng_below(&c->rng, i + 1), x = order[i];
		order[i] = order[j];
		order[j] = x;
	}
	json_t *choices = json_array();
	for (uint32_t i = 0; i < K; i++) {
		struct span s = ch[order[i]];
		if (order[i] == 0)
			answer = i;
		json_array_append_new(choices, cli_json_text(c->buf + s.a, s.b - s.a));
	}
	if (json_array_size(choices) != K) {
		json_decref(choices);
		return -1;
	}
	size_t ce = p->sent[k - 1].b;
	json_t *item =
	    json_pack("{sIsssososI}", "id", (json_int_t)pi, "split", eval_split_name(part),
	              "context", cli_json_text(c->buf + p->text.a, ce - p->text.a), "choices",
	              choices, "answer", (json_int_t)answer);
	return cli_json_print(item, f);
}

/* Writes `want` items of one part; 0, 2 when the part has too few distinct
 * sentences, -1 when writing fails. */
static int cloze_part(struct cloze *c, FILE *f, int part, size_t want, uint32_t K, size_t *written)
{
	const char *buf = c->buf;
	size_t n_pool = 0;
	/* this part's paragraphs with a usable sentence: the distractor pool */
	for (size_t r = 0; r < c->np; r++) {
		const struct para *p = &c->ps[c->perm[r]];
		if (p->pool == part && has_usable(buf, p, 0))
			c->pool[n_pool++] = c->perm[r];
	}
	for (size_t r = 0; r < c->np && *written < want; r++) {
		uint32_t pi = c->perm[r];
		const struct para *p = &c->ps[pi];
		if (p->pool != part)
			continue;
		uint32_t cand[256], nc = 0;
		for (uint32_t k = 1; k < p->n_sent && nc < 256; k++)
			if (usable(buf, p->sent[k]))
				cand[nc++] = k;
		if (nc == 0)
			continue;
		uint32_t k = cand[eval_rng_below(&c->rng, nc)];
		struct span ch[16];
		ch[0] = p->sent[k];
		size_t alen = ch[0].b - ch[0].a;
		uint32_t got = 1;
		/* the first 2000 tries keep to 2/3..3/2 of the answer's bytes */
		for (int tries = 0; got < K && tries < 4000; tries++) {
			uint32_t qi = c->pool[eval_rng_below(&c->rng, n_pool)];
			if ((qi > pi ? qi - pi : pi - qi) < 10)
				continue;
			const struct para *q = &c->ps[qi];
			struct span s = q->sent[eval_rng_below(&c->rng, q->n_sent)];
			if (!usable(buf, s))
				continue;
			size_t sl = s.b - s.a;
			if (tries < 2000 && (3 * sl < 2 * alen || 2 * sl > 3 * alen))
				continue;
			bool dup = false;
			for (uint32_t i = 0; i < got && !dup; i++)
				dup = same_text(buf, s, ch[i]);
			if (dup)
				continue;
			c->relaxed += tries >= 2000;
			ch[got++] = s;
		}
		if (got < K) {
			fprintf(
			    stderr,
			    "itt eval make-cloze: too few distinct sentences in the %s part for "
			    "%u choices\n",
			    eval_split_name(part), K);
			return 2;
		}
		if (cloze_write_item(f, c, pi, part, k, ch, K) < 0)
			return -1;
		(*written)++;
	}
	return 0;
}

int eval_make_cloze(const struct eval_cloze_opts *o)
{
	struct cloze c = {.rng = (uint64_t)o->seed};
	char *buf = eval_read_file(o->data, &c.len);
	FILE *f = NULL;
	int rc = 1;
	if (!buf) {
		fprintf(stderr, "itt eval make-cloze: cannot read %s: %s\n", o->data,
		        strerror(errno));
		return 1;
	}
	c.buf = buf;
	if (cloze_paragraphs(&c) < 0)
		goto oom;
	if (c.np == 0) {
		fprintf(stderr, "itt eval make-cloze: %s has no text\n", o->data);
		rc = 2;
		goto out;
	}
	if (cloze_divide(&c, o->split_at) < 0)
		goto oom;
	/* eligible paragraphs (a usable sentence after the first), per part */
	size_t n_elig[3] = {0, 0, 0}, want[3];
	for (size_t r = 0; r < c.np; r++)
		n_elig[c.ps[r].pool] += has_usable(buf, &c.ps[r], 1);
	if (o->n == 0) {
		want[EVAL_SPLIT_SELECT] = n_elig[EVAL_SPLIT_SELECT];
		want[EVAL_SPLIT_TEST] = n_elig[EVAL_SPLIT_TEST];
	} else {
		want[EVAL_SPLIT_SELECT] = (size_t)llround((double)o->split_at * (double)o->n);
		want[EVAL_SPLIT_TEST] = (size_t)o->n - want[EVAL_SPLIT_SELECT];
	}
	if (want[EVAL_SPLIT_SELECT] > n_elig[EVAL_SPLIT_SELECT] ||
	    want[EVAL_SPLIT_TEST] > n_elig[EVAL_SPLIT_TEST]) {
		fprintf(stderr,
		        "itt eval make-cloze: %s has %zu usable paragraphs in the selection part "
		        "and %zu in the test part; asked for %zu and %zu (lower --n or move "
		        "--split-at)\n",
		        o->data, n_elig[EVAL_SPLIT_SELECT], n_elig[EVAL_SPLIT_TEST],
		        want[EVAL_SPLIT_SELECT], want[EVAL_SPLIT_TEST]);
		rc = 2;
		goto out;
	}
	if (want[EVAL_SPLIT_SELECT] + want[EVAL_SPLIT_TEST] == 0) {
		fprintf(stderr, "itt eval make-cloze: %s has no paragraph of 2 or more sentences\n",
		        o->data);
		rc = 2;
		goto out;
	}
	f = fopen(o->out, "w");
	if (!f) {
		fprintf(stderr, "itt eval make-cloze: cannot write %s: %s\n", o->out,
		        strerror(errno));
		goto out;
	}
	size_t written[3] = {0, 0, 0};
	bool bad = false;
	for (int part = EVAL_SPLIT_SELECT; part <= EVAL_SPLIT_TEST; part++) {
		int prc = cloze_part(&c, f, part, want[part], (uint32_t)o->choices, &written[part]);
		if (prc == 2) {
			rc = 2;
			goto out;
		}
		if (prc < 0) {
			bad = true;
			break;
		}
	}
	if (bad || fflush(f) || ferror(f)) {
		fprintf(stderr, "itt eval make-cloze: writing %s failed\n", o->out);
		goto out;
	}
	fprintf(stderr,
	        "itt eval make-cloze: %zu paragraphs; wrote %zu select + %zu test items of %ld "
	        "choices to %s (seed %ld; %zu distractors outside the length band)\n",
	        c.np, written[EVAL_SPLIT_SELECT], written[EVAL_SPLIT_TEST], o->choices, o->out,
	        o->seed, c.relaxed);
	rc = 0;
	goto out;
oom:
	fprintf(stderr, "itt eval make-cloze: out of memory\n");
out:
	if (f && fclose(f) && rc == 0) {
		fprintf(stderr, "itt eval make-cloze: writing %s failed\n", o->out);
		rc = 1;
	}
	for (size_t i = 0; i < c.np; i++)
		free(c.ps[i].sent);
	free(c.ps);
	free(c.perm);
	free(c.pool);
	free(buf);
	return rc;
}
