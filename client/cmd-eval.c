/* cmd-eval: `itt eval make-cloze` (a multiple-choice cloze task built from
 * plain text), `itt eval --local` (multiple-choice scoring by
 * log-likelihood under one or several settings, side by side, with
 * bootstrap intervals; or perplexity through cmd-local.c's code) and the
 * scoring core that `itt heads search` shares (eval.h).
 *
 * Only the in-process engine is supported: the wire protocol has no scoring
 * request yet, so there is no --broker path. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "eval.h"
#include "guidance.h"

/* ---- small helpers ------------------------------------------------------ */

static char *read_file(const char *path, size_t *len_out)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 16, len = 0, r;
	char *buf = malloc(cap + 1);
	while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
		len += r;
		if (len == cap) {
			char *b2 = realloc(buf, (cap *= 2) + 1);
			if (!b2)
				free(buf);
			buf = b2;
		}
	}
	if (buf && ferror(f)) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	if (buf) {
		buf[len] = 0;
		*len_out = len;
	}
	return buf;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

const char *eval_split_name(enum eval_split s)
{
	switch (s) {
	case EVAL_SPLIT_SELECT: return "select";
	case EVAL_SPLIT_TEST: return "test";
	case EVAL_SPLIT_ALL: return "all";
	default: return "none";
	}
}

/* ---- a small JSON reader for task lines ------------------------------- */

struct jp {
	const char *p, *end;
	char err[160];
};

static void jp_ws(struct jp *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r' || *j->p == '\n'))
		j->p++;
}

static int jp_fail(struct jp *j, const char *what)
{
	if (!j->err[0])
		snprintf(j->err, sizeof j->err, "%s", what);
	return -1;
}

static int hex4(const char *p, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	} else if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	} else if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* A string; *out is malloc'ed and NUL-terminated (NULL: skip it). */
static int jp_string(struct jp *j, char **out)
{
	if (j->p >= j->end || *j->p != '"')
		return jp_fail(j, "expected a string");
	j->p++;
	/* the decoded text is never longer than the escaped one */
	const char *q = j->p;
	char *buf = out ? malloc((size_t)(j->end - q) + 1) : NULL;
	size_t n = 0;
	if (out && !buf)
		return jp_fail(j, "out of memory");
	while (j->p < j->end && *j->p != '"') {
		unsigned char c = (unsigned char)*j->p;
		if (c < 0x20) {
			free(buf);
			return jp_fail(j, "control character in a string");
		}
		if (c != '\\') {
			if (buf)
				buf[n++] = (char)c;
			j->p++;
			continue;
		}
		if (j->end - j->p < 2) {
			free(buf);
			return jp_fail(j, "unterminated escape");
		}
		char e = j->p[1];
		j->p += 2;
		char lit = 0;
		switch (e) {
		case '"': lit = '"'; break;
		case '\\': lit = '\\'; break;
		case '/': lit = '/'; break;
		case 'b': lit = '\b'; break;
		case 'f': lit = '\f'; break;
		case 'n': lit = '\n'; break;
		case 'r': lit = '\r'; break;
		case 't': lit = '\t'; break;
		case 'u': {
			unsigned cp, lo;
			if (j->end - j->p < 4 || hex4(j->p, &cp) < 0) {
				free(buf);
				return jp_fail(j, "bad \\u escape");
			}
			j->p += 4;
			if (cp >= 0xD800 && cp < 0xDC00) {
				if (j->end - j->p >= 6 && j->p[0] == '\\' && j->p[1] == 'u' &&
				    hex4(j->p + 2, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
					j->p += 6;
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
				} else {
					cp = 0xFFFD;
				}
			} else if (cp >= 0xDC00 && cp < 0xE000) {
				cp = 0xFFFD;
			}
			if (buf)
				n += put_utf8(buf + n, cp);
			continue;
		}
		default: free(buf); return jp_fail(j, "bad escape in a string");
		}
		if (buf)
			buf[n++] = lit;
	}
	if (j->p >= j->end) {
		free(buf);
		return jp_fail(j, "unterminated string");
	}
	j->p++;
	if (buf) {
		buf[n] = 0;
		*out = buf;
	}
	return 0;
}

/* An integer (no fraction, no exponent). */
static int jp_int(struct jp *j, long long *out)
{
	const char *s = j->p;
	bool neg = false;
	if (s < j->end && *s == '-') {
		neg = true;
		s++;
	}
	if (s >= j->end || *s < '0' || *s > '9')
		return jp_fail(j, "expected an integer");
	long long v = 0;
	while (s < j->end && *s >= '0' && *s <= '9') {
		if (v > (LLONG_MAX - 9) / 10)
			return jp_fail(j, "integer out of range");
		v = v * 10 + (*s++ - '0');
	}
	if (s < j->end && (*s == '.' || *s == 'e' || *s == 'E'))
		return jp_fail(j, "expected an integer, not a fraction");
	j->p = s;
	*out = neg ? -v : v;
	return 0;
}

static int jp_skip(struct jp *j, int depth)
{
	if (depth > 64)
		return jp_fail(j, "nested too deep");
	jp_ws(j);
	if (j->p >= j->end)
		return jp_fail(j, "expected a value");
	char c = *j->p;
	if (c == '"')
		return jp_string(j, NULL);
	if (c == '{' || c == '[') {
		char close = c == '{' ? '}' : ']';
		j->p++;
		jp_ws(j);
		if (j->p < j->end && *j->p == close) {
			j->p++;
			return 0;
		}
		for (;;) {
			if (c == '{') {
				jp_ws(j);
				if (jp_string(j, NULL) < 0)
					return -1;
				jp_ws(j);
				if (j->p >= j->end || *j->p != ':')
					return jp_fail(j, "expected ':'");
				j->p++;
			}
			if (jp_skip(j, depth + 1) < 0)
				return -1;
			jp_ws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == close) {
				j->p++;
				return 0;
			}
			return jp_fail(j, "expected ',' or a closing bracket");
		}
	}
	static const char *const words[] = {"true", "false", "null"};
	for (int i = 0; i < 3; i++) {
		size_t l = strlen(words[i]);
		if ((size_t)(j->end - j->p) >= l && !memcmp(j->p, words[i], l)) {
			j->p += l;
			return 0;
		}
	}
	if (c == '-' || (c >= '0' && c <= '9')) {
		char *endp;
		errno = 0;
		(void)strtod(j->p, &endp);
		if (endp == j->p || endp > j->end)
			return jp_fail(j, "bad number");
		j->p = endp;
		return 0;
	}
	return jp_fail(j, "unexpected character");
}

static void item_free(struct eval_item *it)
{
	free(it->context);
	for (uint32_t c = 0; c < it->n_choices; c++)
		free(it->choices[c]);
	free(it->choices);
	memset(it, 0, sizeof *it);
}

#define EVAL_MAX_CHOICES 64

/* Parses one line into it (zeroed by the caller). */
static int parse_item(struct jp *j, struct eval_item *it)
{
	bool have_ctx = false, have_choices = false, have_answer = false;
	long long answer = -1;
	jp_ws(j);
	if (j->p >= j->end || *j->p != '{')
		return jp_fail(j, "a line must be a JSON object");
	j->p++;
	jp_ws(j);
	if (j->p < j->end && *j->p == '}') {
		j->p++;
	} else {
		for (;;) {
			char *key = NULL;
			jp_ws(j);
			if (jp_string(j, &key) < 0)
				return -1;
			jp_ws(j);
			if (j->p >= j->end || *j->p != ':') {
				free(key);
				return jp_fail(j, "expected ':'");
			}
			j->p++;
			jp_ws(j);
			int rc = 0;
			if (!strcmp(key, "context")) {
				free(it->context);
				it->context = NULL;
				rc = jp_string(j, &it->context);
				have_ctx = rc == 0;
			} else if (!strcmp(key, "answer")) {
				rc = jp_int(j, &answer);
				have_answer = rc == 0;
			} else if (!strcmp(key, "id")) {
				rc = jp_int(j, &it->id);
			} else if (!strcmp(key, "split")) {
				char *s = NULL;
				rc = jp_string(j, &s);
				if (rc == 0) {
					if (!strcmp(s, "select"))
						it->split = EVAL_SPLIT_SELECT;
					else if (!strcmp(s, "test"))
						it->split = EVAL_SPLIT_TEST;
					else
						rc = jp_fail(
						    j, "\"split\" must be \"select\" or \"test\"");
				}
				free(s);
			} else if (!strcmp(key, "choices")) {
				if (have_choices) {
					free(key);
					return jp_fail(j, "\"choices\" given twice");
				}
				if (j->p >= j->end || *j->p != '[') {
					free(key);
					return jp_fail(j,
					               "\"choices\" must be an array of strings");
				}
				j->p++;
				it->choices = calloc(EVAL_MAX_CHOICES, sizeof *it->choices);
				if (!it->choices)
					rc = jp_fail(j, "out of memory");
				jp_ws(j);
				if (rc == 0 && j->p < j->end && *j->p == ']') {
					j->p++;
				} else {
					while (rc == 0) {
						jp_ws(j);
						if (it->n_choices == EVAL_MAX_CHOICES) {
							rc = jp_fail(j, "more than 64 choices");
							break;
						}
						rc = jp_string(j, &it->choices[it->n_choices]);
						if (rc < 0)
							break;
						it->n_choices++;
						jp_ws(j);
						if (j->p < j->end && *j->p == ',') {
							j->p++;
							continue;
						}
						if (j->p < j->end && *j->p == ']') {
							j->p++;
							break;
						}
						rc = jp_fail(j,
						             "expected ',' or ']' in \"choices\"");
					}
				}
				have_choices = rc == 0;
			} else {
				rc = jp_skip(j, 0);
			}
			free(key);
			if (rc < 0)
				return -1;
			jp_ws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == '}') {
				j->p++;
				break;
			}
			return jp_fail(j, "expected ',' or '}'");
		}
	}
	jp_ws(j);
	if (j->p != j->end)
		return jp_fail(j, "text after the object");
	if (!have_ctx)
		return jp_fail(j, "no \"context\" string");
	if (!it->context[0])
		return jp_fail(j, "\"context\" is empty");
	if (!have_choices)
		return jp_fail(j, "no \"choices\" array");
	if (it->n_choices < 2)
		return jp_fail(j, "\"choices\" needs at least 2 entries");
	for (uint32_t c = 0; c < it->n_choices; c++)
		if (!it->choices[c][0])
			return jp_fail(j, "a choice is empty");
	if (!have_answer)
		return jp_fail(j, "no \"answer\" index");
	if (answer < 0 || answer >= (long long)it->n_choices) {
		snprintf(j->err, sizeof j->err, "\"answer\" %lld is out of range for %u choices",
		         answer, it->n_choices);
		return -1;
	}
	it->answer = (uint32_t)answer;
	return 0;
}

int eval_task_load(const char *path, enum eval_split filter, struct eval_task *t, const char *cmd)
{
	size_t len;
	char *buf = read_file(path, &len);
	memset(t, 0, sizeof *t);
	if (!buf) {
		fprintf(stderr, "itt %s: cannot read %s: %s\n", cmd, path, strerror(errno));
		return -2;
	}
	size_t cap = 0, line = 0;
	int rc = 0;
	for (size_t p = 0; p < len;) {
		char *nl = memchr(buf + p, '\n', len - p);
		size_t e = nl ? (size_t)(nl - buf) : len;
		line++;
		const char *s = buf + p, *end = buf + e;
		p = e + 1;
		const char *q = s;
		while (q < end && is_space(*q))
			q++;
		if (q == end)
			continue;
		if (memchr(s, 0, (size_t)(end - s))) {
			fprintf(stderr, "itt %s: %s:%zu: a NUL byte in the line\n", cmd, path,
			        line);
			rc = -1;
			break;
		}
		struct jp j = {.p = s, .end = end};
		struct eval_item it = {.id = -1};
		if (parse_item(&j, &it) < 0) {
			fprintf(stderr, "itt %s: %s:%zu: %s\n", cmd, path, line, j.err);
			item_free(&it);
			rc = -1;
			break;
		}
		if (filter != EVAL_SPLIT_ALL && it.split != filter) {
			item_free(&it);
			continue;
		}
		if (it.id < 0)
			it.id = (long long)line - 1;
		if (t->n == cap) {
			struct eval_item *n2 =
			    realloc(t->items, (cap = cap ? 2 * cap : 64) * sizeof *n2);
			if (!n2) {
				item_free(&it);
				fprintf(stderr, "itt %s: out of memory\n", cmd);
				rc = -2;
				break;
			}
			t->items = n2;
		}
		t->items[t->n++] = it;
	}
	free(buf);
	if (rc == 0 && t->n == 0) {
		fprintf(stderr, "itt %s: %s has no items%s%s\n", cmd, path,
		        filter == EVAL_SPLIT_ALL ? "" : " of split ",
		        filter == EVAL_SPLIT_ALL ? "" : eval_split_name(filter));
		rc = -1;
	}
	if (rc)
		eval_task_free(t);
	return rc;
}

void eval_task_free(struct eval_task *t)
{
	for (size_t i = 0; i < t->n; i++)
		item_free(&t->items[i]);
	free(t->items);
	memset(t, 0, sizeof *t);
}

/* ---- settings ----------------------------------------------------------- */

static bool parse_float_str(const char *s, size_t n, float *out)
{
	char tmp[64];
	if (n == 0 || n >= sizeof tmp)
		return false;
	memcpy(tmp, s, n);
	tmp[n] = 0;
	return cli_parse_float(tmp, out) && isfinite(*out);
}

static bool parse_u32_str(const char *s, size_t n, uint32_t *out)
{
	char tmp[32];
	long v;
	if (n == 0 || n >= sizeof tmp)
		return false;
	memcpy(tmp, s, n);
	tmp[n] = 0;
	if (!cli_parse_long(tmp, 0, 1L << 30, &v))
		return false;
	*out = (uint32_t)v;
	return true;
}

void eval_mask_str(const uint8_t *mask, uint32_t n_layers, uint32_t n_heads, char *buf, size_t cap)
{
	size_t n = 0;
	buf[0] = 0;
	for (uint32_t l = 0; l < n_layers; l++)
		for (uint32_t h = 0; h < n_heads; h++)
			if (mask[(size_t)l * n_heads + h] && n < cap) {
				int w = snprintf(buf + n, cap - n, "%s%u:%u", n ? "+" : "", l, h);
				n += w > 0 ? (size_t)w : 0;
			}
}

void eval_setting_free(struct eval_setting *st)
{
	free(st->mask);
	st->mask = NULL;
}

/* key=value parameters after the kind: s=, u=, heads=, set= */
int eval_setting_parse(const char *spec, uint32_t n_layers, uint32_t n_heads,
                       struct eval_setting *st, char *msg, size_t cap)
{
	memset(st, 0, sizeof *st);
	snprintf(st->name, sizeof st->name, "%s", spec);
	if (!strcmp(spec, "plain")) {
		st->kind = EVAL_PLAIN;
		return 0;
	}
	if (!strncmp(spec, "temp:", 5)) {
		st->kind = EVAL_TEMP;
		if (!cli_parse_float(spec + 5, &st->temp) || !isfinite(st->temp) || st->temp <= 0) {
			snprintf(msg, cap, "setting \"%s\": the temperature must be a number > 0",
			         spec);
			return -1;
		}
		return 0;
	}
	bool layer = !strncmp(spec, "layer:", 6);
	if (!layer && strncmp(spec, "guidance:", 9)) {
		snprintf(
		    msg, cap,
		    "unknown setting \"%s\" (want plain, temp:T, guidance:heads=L:H+...,s=S,u=U, "
		    "guidance:set=FILE,s=S,u=U or layer:L,s=S,u=U)",
		    spec);
		return -1;
	}
	size_t nm = (size_t)n_layers * n_heads;
	st->kind = EVAL_GUIDANCE;
	st->scale = 2.0f;
	st->blend = 1.0f;
	st->mask = calloc(nm ? nm : 1, 1);
	if (!st->mask) {
		snprintf(msg, cap, "out of memory");
		return -1;
	}
	const char *p = spec + (layer ? 6 : 9);
	bool have_heads = false;
	if (layer) {
		const char *c = strchr(p, ',');
		size_t n = c ? (size_t)(c - p) : strlen(p);
		uint32_t l;
		if (!parse_u32_str(p, n, &l)) {
			snprintf(msg, cap, "setting \"%s\": bad layer \"%.*s\"", spec, (int)n, p);
			goto fail;
		}
		if (l >= n_layers) {
			snprintf(msg, cap, "setting \"%s\": unknown layer %u (the model has %u)",
			         spec, l, n_layers);
			goto fail;
		}
		memset(st->mask + (size_t)l * n_heads, 1, n_heads);
		have_heads = true;
		p += n;
		if (*p == ',')
			p++;
	}
	while (*p) {
		const char *c = strchr(p, ',');
		size_t n = c ? (size_t)(c - p) : strlen(p);
		const char *eq = memchr(p, '=', n);
		if (!eq) {
			snprintf(msg, cap, "setting \"%s\": \"%.*s\" is not key=value", spec,
			         (int)n, p);
			goto fail;
		}
		size_t kl = (size_t)(eq - p), vl = n - kl - 1;
		const char *v = eq + 1;
		if (kl == 1 && p[0] == 's') {
			struct itt_err e2 = {0};
			if (!parse_float_str(v, vl, &st->scale)) {
				snprintf(msg, cap, "setting \"%s\": s wants a number", spec);
				goto fail;
			}
			if (guidance_check_scale(st->scale, &e2) < 0) {
				snprintf(msg, cap, "setting \"%s\": %s", spec, e2.msg);
				goto fail;
			}
		} else if (kl == 1 && p[0] == 'u') {
			struct itt_err e2 = {0};
			if (!parse_float_str(v, vl, &st->blend)) {
				snprintf(msg, cap, "setting \"%s\": u wants a number", spec);
				goto fail;
			}
			if (guidance_check_blend(st->blend, &e2) < 0) {
				snprintf(msg, cap, "setting \"%s\": %s", spec, e2.msg);
				goto fail;
			}
		} else if (!layer && kl == 5 && !memcmp(p, "heads", 5)) {
			/* '+' separates heads here (',' separates parameters) */
			char *list = malloc(vl + 1);
			uint32_t n_set;
			struct itt_err e2 = {0};
			if (!list) {
				snprintf(msg, cap, "out of memory");
				goto fail;
			}
			for (size_t q = 0; q < vl; q++)
				list[q] = v[q] == '+' ? ',' : v[q];
			list[vl] = 0;
			int prc =
			    guidance_parse_heads(list, n_layers, n_heads, st->mask, &n_set, &e2);
			free(list);
			if (prc < 0) {
				snprintf(msg, cap, "setting \"%s\": %s", spec, e2.msg);
				goto fail;
			}
			have_heads = true;
		} else if (!layer && kl == 3 && !memcmp(p, "set", 3)) {
			char path[1024];
			uint32_t n_set;
			struct itt_err e2 = {0};
			if (vl == 0 || vl >= sizeof path) {
				snprintf(msg, cap, "setting \"%s\": bad set= file name", spec);
				goto fail;
			}
			memcpy(path, v, vl);
			path[vl] = 0;
			if (guidance_load_head_set(path, n_layers, n_heads, st->mask, &n_set, NULL,
			                           &e2) < 0) {
				snprintf(msg, cap, "setting \"%s\": %s", spec, e2.msg);
				goto fail;
			}
			have_heads = true;
		} else {
			snprintf(msg, cap, "setting \"%s\": unknown parameter \"%.*s\"", spec,
			         (int)kl, p);
			goto fail;
		}
		p += n;
		if (*p == ',')
			p++;
	}
	if (!have_heads) {
		snprintf(msg, cap, "setting \"%s\": name the heads (heads=L:H+L:H or set=FILE)",
		         spec);
		goto fail;
	}
	for (size_t i = 0; i < nm; i++)
		st->n_heads_set += st->mask[i];
	return 0;
fail:
	eval_setting_free(st);
	return -1;
}

/* ---- the engine and the scoring core ----------------------------------- */

int eval_open_engine(const char *path, int threads, struct engine **e, const char *cmd)
{
	struct engine_config c;
	struct itt_err err = {0};
	engine_config_default(&c);
	c.path = path;
	c.n_threads = threads;
	c.max_rows = ENGINE_DEFAULT_MAX_ROWS;
	c.kv_bytes = ENGINE_DEFAULT_KV_BYTES;
	if (engine_open(&c, e, &err) < 0) {
		fprintf(stderr, "itt %s: cannot load %s: %s: %s\n", cmd, path,
		        itt_strerror(err.code), err.msg);
		return 1;
	}
	if (!(*e)->tok) {
		fprintf(stderr, "itt %s: %s has no tokenizer in its metadata\n", cmd, path);
		engine_close(e);
		return 1;
	}
	if (!model_is_first((*e)->model) || !model_is_last((*e)->model)) {
		fprintf(stderr, "itt %s: %s: scoring needs the whole model\n", cmd, path);
		engine_close(e);
		return 1;
	}
	return 0;
}

/* One tokenized item: the context and, per choice, the choice's tokens. */
struct tok_item {
	int32_t *ctx;
	uint32_t n_ctx;
	int32_t *ch[EVAL_MAX_CHOICES];
	uint32_t n_ch[EVAL_MAX_CHOICES];
	bool mismatch;
};

static void tok_item_free(struct tok_item *ti)
{
	free(ti->ctx);
	for (int c = 0; c < EVAL_MAX_CHOICES; c++)
		free(ti->ch[c]);
	memset(ti, 0, sizeof *ti);
}

static int encode_alloc(const tokenizer_t *tok, const char *s, size_t len, int32_t **out, size_t *n)
{
	struct itt_err err = {0};
	size_t cap = len + 2;
	int32_t *ids = malloc(cap * sizeof *ids);
	if (!ids)
		return -1;
	if (tokenizer_encode(tok, s, len, true, ids, cap, n, &err) < 0) {
		free(ids);
		return -1;
	}
	*out = ids;
	return 0;
}

static int tokenize_item(const tokenizer_t *tok, const struct eval_item *it, uint32_t ctx_len,
                         struct tok_item *ti, char *msg, size_t cap)
{
	size_t nc, lc = strlen(it->context);
	memset(ti, 0, sizeof *ti);
	if (encode_alloc(tok, it->context, lc, &ti->ctx, &nc) < 0)
		goto oom;
	char *joint = NULL;
	for (uint32_t c = 0; c < it->n_choices; c++) {
		size_t la = strlen(it->choices[c]), nj;
		int32_t *ids;
		char *j2 = realloc(joint, lc + la + 2);
		if (!j2)
			goto oom_j;
		joint = j2;
		memcpy(joint, it->context, lc);
		joint[lc] = ' ';
		memcpy(joint + lc + 1, it->choices[c], la);
		if (encode_alloc(tok, joint, lc + 1 + la, &ids, &nj) < 0)
			goto oom_j;
		size_t k = 0;
		while (k < nc && k < nj && ids[k] == ti->ctx[k])
			k++;
		if (k < nc)
			ti->mismatch = true;
		if (k == 0)
			k = 1; /* never score BOS */
		if (nj <= k) {
			snprintf(msg, cap, "choice %u encodes to no tokens after the context", c);
			free(ids);
			free(joint);
			return -1;
		}
		if (nj > ctx_len) {
			snprintf(msg, cap, "context + choice %u is %zu tokens, over the model's %u",
			         c, nj, ctx_len);
			free(ids);
			free(joint);
			return -1;
		}
		/* the shared part is the common prefix of every choice */
		if (k < nc)
			nc = k;
		ti->ch[c] = ids; /* the whole joint encoding for now */
		ti->n_ch[c] = (uint32_t)nj;
	}
	free(joint);
	/* cut every choice at the common context length nc */
	for (uint32_t c = 0; c < it->n_choices; c++) {
		uint32_t m = ti->n_ch[c] - (uint32_t)nc;
		memmove(ti->ch[c], ti->ch[c] + nc, m * sizeof(int32_t));
		ti->n_ch[c] = m;
	}
	ti->n_ctx = (uint32_t)nc;
	return 0;
oom_j:
	free(joint);
oom:
	snprintf(msg, cap, "out of memory or bad text while tokenizing");
	return -1;
}

/* A batch being filled; flushed through forward_run when full. */
struct rowbuf {
	struct engine *e;
	uint32_t n, max;
	int32_t *tok;
	uint32_t *pos;
	struct kv_seq **seqs;
	uint8_t *want;
	const struct forward_perturb **pert;
	float **dest; /* where each wanted row's logits go */
	uint64_t rows;
	bool any_pert;
};

static int rowbuf_flush(struct rowbuf *rb, struct itt_err *err)
{
	if (rb->n == 0)
		return 0;
	struct forward_batch b = {
	    .n_rows = rb->n,
	    .tokens = rb->tok,
	    .pos = rb->pos,
	    .seqs = rb->seqs,
	    .want_logits = rb->want,
	    .perturb = rb->any_pert ? rb->pert : NULL,
	};
	bool any = false;
	for (uint32_t i = 0; i < rb->n; i++)
		any |= rb->want[i] != 0;
	if (!any) /* forward_run wants at least one output row on the last stage */
		rb->want[rb->n - 1] = 1;
	int rc = forward_run(&rb->e->fwd, &b, rb->e->logits, err);
	if (rc < 0)
		return rc;
	uint32_t V = rb->e->model->hp.vocab, o = 0;
	for (uint32_t i = 0; i < rb->n; i++) {
		if (!rb->want[i])
			continue;
		if (rb->dest[i])
			memcpy(rb->dest[i], rb->e->logits + (size_t)o * V, V * sizeof(float));
		o++;
	}
	rb->rows += rb->n;
	rb->n = 0;
	rb->any_pert = false;
	return 0;
}

static int rowbuf_add(struct rowbuf *rb, int32_t tok, uint32_t pos, struct kv_seq *s,
                      const struct forward_perturb *p, float *dest, struct itt_err *err)
{
	if (rb->n == rb->max) {
		int rc = rowbuf_flush(rb, err);
		if (rc < 0)
			return rc;
	}
	uint32_t i = rb->n++;
	rb->tok[i] = tok;
	rb->pos[i] = pos;
	rb->seqs[i] = s;
	rb->want[i] = dest != NULL;
	rb->pert[i] = p;
	rb->dest[i] = dest;
	rb->any_pert |= p != NULL;
	return 0;
}

/* log softmax(x)[tok] in double; identical inputs give identical outputs. */
static double log_prob(const float *x, uint32_t V, int32_t tok)
{
	double mx = x[0], s = 0;
	for (uint32_t j = 1; j < V; j++)
		mx = x[j] > mx ? x[j] : mx;
	for (uint32_t j = 0; j < V; j++)
		s += exp((double)x[j] - mx);
	return (double)x[tok] - mx - log(s);
}

void eval_scores_free(struct eval_scores *s)
{
	free(s->sum);
	free(s->n_tok);
	memset(s, 0, sizeof *s);
}

int eval_run(struct engine *e, const struct eval_task *t, const struct eval_branch *branches,
             size_t n_branches, const struct eval_setting *settings, size_t n_settings,
             const struct eval_opts *o, struct eval_scores *out)
{
	const struct model_hparams *hp = &e->model->hp;
	uint32_t V = hp->vocab, K = 0;
	struct itt_err err = {0};
	int rc = -1;
	memset(out, 0, sizeof *out);
	for (size_t i = 0; i < t->n; i++)
		K = t->items[i].n_choices > K ? t->items[i].n_choices : K;
	out->n_items = t->n;
	out->n_settings = n_settings;
	out->max_choices = K;
	out->sum = calloc(n_settings * t->n * K, sizeof *out->sum);
	out->n_tok = calloc(t->n * K, sizeof *out->n_tok);

	struct rowbuf rb = {.e = e, .max = e->fwd.max_rows};
	rb.tok = malloc(rb.max * sizeof *rb.tok);
	rb.pos = malloc(rb.max * sizeof *rb.pos);
	rb.seqs = malloc(rb.max * sizeof *rb.seqs);
	rb.want = malloc(rb.max);
	rb.pert = malloc(rb.max * sizeof *rb.pert);
	rb.dest = malloc(rb.max * sizeof *rb.dest);
	struct forward_perturb *pert = calloc(n_branches, sizeof *pert);
	/* sequences: per branch, the context and one per choice */
	struct kv_seq *seqs = malloc(n_branches * (K + 1) * sizeof *seqs);
	float *lg = NULL, *z = malloc(V * sizeof *z);
	size_t lg_cap = 0;
	struct tok_item ti;
	memset(&ti, 0, sizeof ti);
	if (!out->sum || !out->n_tok || !rb.tok || !rb.pos || !rb.seqs || !rb.want || !rb.pert ||
	    !rb.dest || !pert || !seqs || !z) {
		fprintf(stderr, "itt %s: out of memory\n", o->cmd);
		goto done;
	}
	for (size_t b = 0; b < n_branches * (K + 1); b++)
		kv_seq_init(&seqs[b]);
	for (size_t b = 0; b < n_branches; b++) {
		pert[b].mask = branches[b].mask;
		pert[b].blend = branches[b].blend;
	}
	double t0 = cli_now_ms(), last_note = t0;
	for (size_t i = 0; i < t->n; i++) {
		const struct eval_item *it = &t->items[i];
		char msg[200];
		if (tokenize_item(e->tok, it, hp->ctx_len, &ti, msg, sizeof msg) < 0) {
			fprintf(stderr, "itt %s: item %lld: %s\n", o->cmd, it->id, msg);
			goto done;
		}
		out->boundary_mismatch += ti.mismatch;
		/* logits slots of one branch: choice c's token j at off[c] + j */
		uint32_t off[EVAL_MAX_CHOICES], S = 0;
		for (uint32_t c = 0; c < it->n_choices; c++) {
			off[c] = S;
			S += ti.n_ch[c];
			out->n_tok[i * K + c] = ti.n_ch[c];
		}
		size_t need = n_branches * (size_t)S * V;
		if (need > lg_cap) {
			free(lg);
			lg = malloc(need * sizeof *lg);
			lg_cap = lg ? need : 0;
			if (!lg) {
				fprintf(stderr, "itt %s: out of memory for logits\n", o->cmd);
				goto done;
			}
		}
		/* branches go through in groups small enough for the KV cache */
		uint32_t bs = e->kv.block_size, maxm = 0;
		for (uint32_t c = 0; c < it->n_choices; c++)
			maxm = ti.n_ch[c] > maxm ? ti.n_ch[c] : maxm;
		uint64_t per_branch =
		    (uint64_t)(it->n_choices + 1) * ((ti.n_ctx + maxm + bs - 1) / bs + 1);
		uint64_t avail = kv_cache_available(&e->kv);
		size_t group = per_branch ? (size_t)(avail / per_branch) : n_branches;
		if (group == 0) {
			fprintf(stderr, "itt %s: item %lld: the KV cache is too small for it\n",
			        o->cmd, it->id);
			goto done;
		}
		for (size_t g0 = 0; g0 < n_branches; g0 += group) {
			size_t g1 = g0 + group < n_branches ? g0 + group : n_branches;
			int frc = 0;
			if (!o->recompute) {
				/* the context once per branch; its last row predicts
				 * every choice's first token */
				for (size_t b = g0; b < g1 && frc == 0; b++) {
					const struct forward_perturb *p =
					    branches[b].mask ? &pert[b] : NULL;
					float *base = lg + b * (size_t)S * V;
					for (uint32_t q = 0; q < ti.n_ctx && frc == 0; q++)
						frc = rowbuf_add(
						    &rb, ti.ctx[q], q, &seqs[b * (K + 1)], p,
						    q + 1 == ti.n_ctx ? base : NULL, &err);
				}
				if (frc == 0)
					frc = rowbuf_flush(&rb, &err);
				for (size_t b = g0; b < g1 && frc == 0; b++) {
					const struct forward_perturb *p =
					    branches[b].mask ? &pert[b] : NULL;
					float *base = lg + b * (size_t)S * V;
					for (uint32_t c = 0; c < it->n_choices && frc == 0; c++) {
						struct kv_seq *sq = &seqs[b * (K + 1) + 1 + c];
						if (c > 0)
							memcpy(base + (size_t)off[c] * V, base,
							       V * sizeof(float));
						frc = kv_seq_fork(&e->kv, &seqs[b * (K + 1)], sq,
						                  ti.n_ctx, &err);
						for (uint32_t j = 0; j + 1 < ti.n_ch[c] && frc == 0;
						     j++)
							frc = rowbuf_add(
							    &rb, ti.ch[c][j], ti.n_ctx + j, sq, p,
							    base + (size_t)(off[c] + j + 1) * V,
							    &err);
					}
				}
			} else {
				for (size_t b = g0; b < g1 && frc == 0; b++) {
					const struct forward_perturb *p =
					    branches[b].mask ? &pert[b] : NULL;
					float *base = lg + b * (size_t)S * V;
					for (uint32_t c = 0; c < it->n_choices && frc == 0; c++) {
						struct kv_seq *sq = &seqs[b * (K + 1) + 1 + c];
						uint32_t n = ti.n_ctx + ti.n_ch[c] - 1;
						for (uint32_t q = 0; q < n && frc == 0; q++) {
							int32_t tk = q < ti.n_ctx
							                 ? ti.ctx[q]
							                 : ti.ch[c][q - ti.n_ctx];
							float *d =
							    q + 1 >= ti.n_ctx
							        ? base + (size_t)(off[c] + q + 1 -
							                          ti.n_ctx) *
							                     V
							        : NULL;
							frc =
							    rowbuf_add(&rb, tk, q, sq, p, d, &err);
						}
					}
				}
			}
			if (frc == 0)
				frc = rowbuf_flush(&rb, &err);
			for (size_t b = g0; b < g1; b++)
				for (uint32_t c = 0; c <= K; c++)
					kv_seq_free(&e->kv, &seqs[b * (K + 1) + c]);
			if (frc < 0) {
				fprintf(stderr, "itt %s: item %lld: %s\n", o->cmd, it->id, err.msg);
				goto done;
			}
		}
		/* the settings' log probabilities */
		for (size_t si = 0; si < n_settings; si++) {
			const struct eval_setting *st = &settings[si];
			const float *l0 = lg;
			const float *lp =
			    st->kind == EVAL_GUIDANCE ? lg + (size_t)st->branch * S * V : NULL;
			for (uint32_t c = 0; c < it->n_choices; c++) {
				double sum = 0;
				for (uint32_t j = 0; j < ti.n_ch[c]; j++) {
					size_t slot = (size_t)(off[c] + j) * V;
					const float *l = l0 + slot;
					const float *x = l;
					if (st->kind == EVAL_TEMP) {
						for (uint32_t v = 0; v < V; v++)
							z[v] = l[v] / st->temp;
						x = z;
					} else if (st->kind == EVAL_GUIDANCE) {
						/* cut 0: no plausibility cut when scoring */
						guidance_combine(l, lp + slot, V, st->scale, 0.0f,
						                 z);
						x = z;
					}
					sum += log_prob(x, V, ti.ch[c][j]);
				}
				out->sum[(si * t->n + i) * K + c] = sum;
			}
		}
		for (uint32_t c = 0; c < it->n_choices; c++)
			out->scored_tokens += ti.n_ch[c];
		out->rows_per_branch += o->recompute ? 0 : ti.n_ctx;
		for (uint32_t c = 0; c < it->n_choices; c++)
			out->rows_per_branch +=
			    o->recompute ? ti.n_ctx + ti.n_ch[c] - 1 : ti.n_ch[c] - 1;
		tok_item_free(&ti);
		double now = cli_now_ms();
		if (o->progress && now - last_note > 5000) {
			fprintf(stderr, "itt %s: %zu/%zu items, %.0f s\n", o->cmd, i + 1, t->n,
			        (now - t0) / 1e3);
			last_note = now;
		}
	}
	out->forward_rows = rb.rows;
	out->seconds = (cli_now_ms() - t0) / 1e3;
	rc = 0;
done:
	tok_item_free(&ti);
	free(rb.tok);
	free(rb.pos);
	free(rb.seqs);
	free(rb.want);
	free(rb.pert);
	free(rb.dest);
	free(pert);
	free(seqs);
	free(lg);
	free(z);
	if (rc)
		eval_scores_free(out);
	return rc;
}

/* ---- metrics ------------------------------------------------------------ */

/* Per item of setting si: correct by sum, by norm, the norm margin, the
 * true choice's norm score. */
static void item_outcome(const struct eval_scores *s, const struct eval_task *t, size_t si,
                         size_t i, bool *ok_sum, bool *ok_norm, double *margin, double *ll_true)
{
	const struct eval_item *it = &t->items[i];
	uint32_t K = s->max_choices, best_s = 0, best_n = 0;
	const double *sum = s->sum + (si * s->n_items + i) * K;
	const uint32_t *nt = s->n_tok + i * K;
	double wrong = -INFINITY;
	for (uint32_t c = 0; c < it->n_choices; c++) {
		if (sum[c] > sum[best_s])
			best_s = c;
		if (sum[c] / nt[c] > sum[best_n] / nt[best_n])
			best_n = c;
		if (c != it->answer && sum[c] / nt[c] > wrong)
			wrong = sum[c] / nt[c];
	}
	*ok_sum = best_s == it->answer;
	*ok_norm = best_n == it->answer;
	*ll_true = sum[it->answer] / nt[it->answer];
	*margin = *ll_true - wrong;
}

void eval_objective(const struct eval_scores *s, const struct eval_task *t, size_t setting,
                    double *acc_norm, double *margin_norm)
{
	double acc = 0, mar = 0;
	for (size_t i = 0; i < s->n_items; i++) {
		bool a, b;
		double m, l;
		item_outcome(s, t, setting, i, &a, &b, &m, &l);
		acc += b;
		mar += m;
	}
	*acc_norm = s->n_items ? acc / (double)s->n_items : NAN;
	*margin_norm = s->n_items ? mar / (double)s->n_items : NAN;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The q-quantile of sorted x[n] (linear between order statistics). */
static double quantile(const double *x, size_t n, double q)
{
	if (n == 0)
		return NAN;
	double h = q * (double)(n - 1);
	size_t lo = (size_t)h;
	if (lo + 1 >= n)
		return x[n - 1];
	return x[lo] + (h - (double)lo) * (x[lo + 1] - x[lo]);
}

int eval_metrics(const struct eval_scores *s, const struct eval_task *t, long B, uint64_t seed,
                 struct eval_metrics *m)
{
	size_t N = s->n_items, S = s->n_settings;
	uint8_t *ok_s = malloc(S * N + 1), *ok_n = malloc(S * N + 1);
	double *boot = malloc(((size_t)B * 3 * S + 1) * sizeof *boot);
	uint32_t *idx = malloc((N + 1) * sizeof *idx);
	if (!ok_s || !ok_n || !boot || !idx) {
		free(ok_s);
		free(ok_n);
		free(boot);
		free(idx);
		return -1;
	}
	for (size_t si = 0; si < S; si++) {
		struct eval_metrics *e = &m[si];
		memset(e, 0, sizeof *e);
		double as = 0, an = 0, mar = 0, ll = 0;
		for (size_t i = 0; i < N; i++) {
			bool a, b;
			double mg, l;
			item_outcome(s, t, si, i, &a, &b, &mg, &l);
			ok_s[si * N + i] = a;
			ok_n[si * N + i] = b;
			as += a;
			an += b;
			mar += mg;
			ll += l;
		}
		e->acc_sum = as / (double)N;
		e->acc_norm = an / (double)N;
		e->margin_norm = mar / (double)N;
		e->ll_true_norm = ll / (double)N;
		e->d_norm = e->acc_norm - m[0].acc_norm;
	}
	/* the same resamples for every setting: paired differences */
	uint64_t rng = seed ^ 0xB00757A9ull;
	for (long b = 0; b < B; b++) {
		for (size_t i = 0; i < N; i++)
			idx[i] = (uint32_t)eval_rng_below(&rng, N);
		double base = 0;
		for (size_t si = 0; si < S; si++) {
			double as = 0, an = 0;
			for (size_t i = 0; i < N; i++) {
				as += ok_s[si * N + idx[i]];
				an += ok_n[si * N + idx[i]];
			}
			as /= (double)N;
			an /= (double)N;
			if (si == 0)
				base = an;
			boot[(0 * S + si) * (size_t)B + (size_t)b] = as;
			boot[(1 * S + si) * (size_t)B + (size_t)b] = an;
			boot[(2 * S + si) * (size_t)B + (size_t)b] = an - base;
		}
	}
	for (size_t si = 0; si < S; si++) {
		double *v[3];
		for (int k = 0; k < 3; k++) {
			v[k] = boot + ((size_t)k * S + si) * (size_t)B;
			qsort(v[k], (size_t)B, sizeof(double), cmp_double);
		}
		struct eval_metrics *e = &m[si];
		e->acc_sum_lo = quantile(v[0], (size_t)B, 0.025);
		e->acc_sum_hi = quantile(v[0], (size_t)B, 0.975);
		e->acc_norm_lo = quantile(v[1], (size_t)B, 0.025);
		e->acc_norm_hi = quantile(v[1], (size_t)B, 0.975);
		e->d_norm_lo = quantile(v[2], (size_t)B, 0.025);
		e->d_norm_hi = quantile(v[2], (size_t)B, 0.975);
	}
	free(ok_s);
	free(ok_n);
	free(boot);
	free(idx);
	return 0;
}

static int setting_branches(const struct eval_setting *st)
{
	return st->kind == EVAL_GUIDANCE ? 2 : 1;
}

/* Scored tokens per second of the forward time attributed to the setting
 * by its share of the rows (plain and temp: one branch; guidance: two). */
static double setting_tok_s(const struct eval_setting *st, const struct eval_scores *s)
{
	if (!s->forward_rows || s->seconds <= 0)
		return NAN;
	double t = s->seconds * (double)(setting_branches(st) * s->rows_per_branch) /
	           (double)s->forward_rows;
	return (double)s->scored_tokens / t;
}

static void ci(FILE *f, double v, double lo, double hi, bool sign)
{
	char a[80];
	if (isnan(lo))
		snprintf(a, sizeof a, sign ? "%+.3f" : "%.3f", v);
	else
		snprintf(a, sizeof a, sign ? "%+.3f [%+.3f, %+.3f]" : "%.3f [%.3f, %.3f]", v, lo,
		         hi);
	fprintf(f, "  %-24s", a);
}

void eval_print_table(FILE *f, const struct eval_setting *st, size_t n,
                      const struct eval_metrics *m, const struct eval_scores *s,
                      size_t n_branches_used)
{
	int w = 7;
	for (size_t i = 0; i < n; i++) {
		int l = (int)strlen(st[i].name);
		w = l > w ? l : w;
	}
	w = w > 64 ? 64 : w;
	char dh[80];
	snprintf(dh, sizeof dh, "d norm vs row 1");
	fprintf(f, "%-*s  %-24s  %-24s  %-24s  %10s\n", w, "setting", "acc sum [95% CI]",
	        "acc norm [95% CI]", dh, "tok/s");
	for (size_t i = 0; i < n; i++) {
		fprintf(f, "%-*.*s", w, w, st[i].name);
		ci(f, m[i].acc_sum, m[i].acc_sum_lo, m[i].acc_sum_hi, false);
		ci(f, m[i].acc_norm, m[i].acc_norm_lo, m[i].acc_norm_hi, false);
		if (i == 0)
			fprintf(f, "  %-24s", "-");
		else
			ci(f, m[i].d_norm, m[i].d_norm_lo, m[i].d_norm_hi, true);
		fprintf(f, "  %10.0f\n", setting_tok_s(&st[i], s));
	}
	fprintf(f,
	        "%zu items, %llu choice tokens scored; %llu forward rows (%zu branches) in %.2f s "
	        "(%.0f rows/s)\n",
	        s->n_items, (unsigned long long)s->scored_tokens,
	        (unsigned long long)s->forward_rows, n_branches_used, s->seconds,
	        (double)s->forward_rows / (s->seconds > 0 ? s->seconds : 1e-9));
	if (s->boundary_mismatch)
		fprintf(f, "%zu items: the joint encoding changed the context's last tokens\n",
		        s->boundary_mismatch);
	fprintf(f, "tok/s: choice tokens per second of the time attributed to the setting by its "
	           "rows (guidance runs two branches)\n");
}

static void json_num(FILE *f, double v)
{
	if (isfinite(v))
		fprintf(f, "%.6g", v);
	else
		fputs("null", f);
}

void eval_print_json_settings(FILE *f, const struct eval_setting *st, size_t n,
                              const struct eval_metrics *m, const struct eval_scores *s,
                              size_t n_branches)
{
	static const char *const kinds[] = {"plain", "temp", "guidance"};
	fputc('[', f);
	for (size_t i = 0; i < n; i++) {
		const struct eval_metrics *e = &m[i];
		fprintf(f, "%s{\"name\":", i ? "," : "");
		json_str(f, st[i].name, strlen(st[i].name));
		fprintf(f, ",\"kind\":\"%s\"", kinds[st[i].kind]);
		if (st[i].kind == EVAL_TEMP) {
			fputs(",\"temp\":", f);
			json_num(f, st[i].temp);
		}
		if (st[i].kind == EVAL_GUIDANCE) {
			fprintf(f, ",\"n_heads\":%u,\"scale\":", st[i].n_heads_set);
			json_num(f, st[i].scale);
			fputs(",\"blend\":", f);
			json_num(f, st[i].blend);
		}
		const double v[] = {e->acc_sum,  e->acc_sum_lo,  e->acc_sum_hi,
		                    e->acc_norm, e->acc_norm_lo, e->acc_norm_hi,
		                    e->d_norm,   e->d_norm_lo,   e->d_norm_hi};
		static const char *const k[] = {"acc_sum", "acc_norm", "d_norm_vs_first"};
		for (int q = 0; q < 3; q++) {
			fprintf(f, ",\"%s\":", k[q]);
			json_num(f, v[3 * q]);
			fprintf(f, ",\"%s_ci\":[", k[q]);
			json_num(f, v[3 * q + 1]);
			fputc(',', f);
			json_num(f, v[3 * q + 2]);
			fputc(']', f);
		}
		fputs(",\"margin_norm\":", f);
		json_num(f, e->margin_norm);
		fputs(",\"ll_true_norm\":", f);
		json_num(f, e->ll_true_norm);
		fputs(",\"timings\":{\"tok_s\":", f);
		json_num(f, setting_tok_s(&st[i], s));
		fputs("}}", f);
	}
	fputc(']', f);
	(void)n_branches;
}

/* ---- make-cloze --------------------------------------------------------- */

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
		if (n < p.b && !is_space(buf[n]))
			continue;
		while (n < p.b && is_space(buf[n]))
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
		while (e > s && is_space(buf[e - 1]))
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
		bool sp = is_space(buf[i]);
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

static const char make_cloze_help[] =
    "usage: itt eval make-cloze --data FILE --out TASK.jsonl [--seed S] [--choices K]\n"
    "                           [--n N] [--split-at F]\n"
    "Builds a multiple-choice cloze task from plain text (paragraphs separated by blank\n"
    "lines, such as ../shared/data/tinystories-valid.dev.txt). An item is a paragraph of\n"
    "at least 2 sentences: the context is its text up to a sentence boundary (chosen at\n"
    "random), the true answer the next sentence (4 to 40 words), and K-1 distractors are\n"
    "sentences of other paragraphs (at least 10 paragraphs away, so from other stories)\n"
    "of similar length (2/3 to 3/2 of the answer's bytes when one can be found), all\n"
    "distinct; the choices are shuffled.\n"
    "The paragraphs are first divided, by a seeded permutation, into a selection part\n"
    "(fraction F, default 0.5) and a test part; items and their distractors come from\n"
    "their own part only, so the two splits share no paragraph (a sentence the data\n"
    "repeats, such as a story's first line, may occur in both). One file, one\n"
    "JSON object a line, selection items first:\n"
    "  {\"id\": PARAGRAPH, \"split\": \"select\"|\"test\", \"context\": \"...\",\n"
    "   \"choices\": [\"...\", ...], \"answer\": INDEX}\n"
    "  --seed S     (default 1) the whole task is a pure function of FILE and S\n"
    "  --choices K  choices per item, 2..16 (default 4)\n"
    "  --n N        items in all (default 0: every usable paragraph); round(F*N) of them\n"
    "               are selection items\n"
    "  --split-at F fraction of the paragraphs (and of N) for the selection split, in [0, 1]\n";

static int cmd_make_cloze(int argc, char **argv)
{
	const char *data = NULL, *outp = NULL;
	long seed = 1, K = 4, N = 0;
	float F = 0.5f;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(make_cloze_help, stdout);
			return 0;
		} else if (!v) {
			fprintf(stderr, "itt eval make-cloze: %s needs a value or is unknown\n", a);
			return 2;
		} else if (!strcmp(a, "--data")) {
			data = argv[++i];
		} else if (!strcmp(a, "--out")) {
			outp = argv[++i];
		} else if (!strcmp(a, "--seed")) {
			if (!cli_parse_long(argv[++i], 0, LONG_MAX, &seed)) {
				fprintf(stderr,
				        "itt eval make-cloze: --seed wants an integer >= 0\n");
				return 2;
			}
		} else if (!strcmp(a, "--choices")) {
			if (!cli_parse_long(argv[++i], 2, 16, &K)) {
				fprintf(stderr, "itt eval make-cloze: --choices wants 2..16\n");
				return 2;
			}
		} else if (!strcmp(a, "--n")) {
			if (!cli_parse_long(argv[++i], 0, 1L << 30, &N)) {
				fprintf(stderr, "itt eval make-cloze: --n wants an integer >= 0\n");
				return 2;
			}
		} else if (!strcmp(a, "--split-at")) {
			if (!cli_parse_float(argv[++i], &F) || !(F >= 0 && F <= 1)) {
				fprintf(
				    stderr,
				    "itt eval make-cloze: --split-at wants a number in [0, 1]\n");
				return 2;
			}
		} else {
			fprintf(stderr, "itt eval make-cloze: unknown option %s\n%s", a,
			        make_cloze_help);
			return 2;
		}
	}
	if (!data || !outp) {
		fprintf(stderr,
		        "itt eval make-cloze: --data FILE and --out TASK.jsonl are required\n%s",
		        make_cloze_help);
		return 2;
	}
	size_t len;
	char *buf = read_file(data, &len);
	if (!buf) {
		fprintf(stderr, "itt eval make-cloze: cannot read %s: %s\n", data, strerror(errno));
		return 1;
	}
	int rc = 1;
	struct para *ps = NULL;
	size_t np = 0, pcap = 0;
	uint32_t *perm = NULL, *items = NULL;
	FILE *f = NULL;
	/* paragraphs: split on lines that are empty or blank */
	for (size_t p = 0; p < len;) {
		size_t start = p, end;
		for (;;) {
			char *nl = memchr(buf + p, '\n', len - p);
			if (!nl) {
				end = p = len;
				break;
			}
			size_t q = (size_t)(nl - buf) + 1;
			size_t r = q;
			while (r < len && buf[r] != '\n' && is_space(buf[r]))
				r++;
			if (r >= len || buf[r] == '\n') {
				end = (size_t)(nl - buf);
				p = r < len ? r + 1 : len;
				break;
			}
			p = q;
		}
		while (start < end && is_space(buf[start]))
			start++;
		while (end > start && is_space(buf[end - 1]))
			end--;
		if (end == start)
			continue;
		if (memchr(buf + start, 0, end - start))
			continue; /* binary junk: not text */
		if (np == pcap) {
			struct para *p2 = realloc(ps, (pcap = pcap ? 2 * pcap : 1024) * sizeof *p2);
			if (!p2)
				goto oom;
			ps = p2;
		}
		memset(&ps[np], 0, sizeof ps[np]);
		ps[np].text = (struct span){start, end};
		if (split_sentences(buf, ps[np].text, &ps[np]) < 0) {
			np++;
			goto oom;
		}
		np++;
	}
	if (np == 0) {
		fprintf(stderr, "itt eval make-cloze: %s has no text\n", data);
		rc = 2;
		goto out;
	}
	/* a seeded permutation of the paragraphs: the first round(F * np) are
	 * the selection part */
	uint64_t rng = (uint64_t)seed;
	perm = malloc(np * sizeof *perm);
	items = malloc(np * sizeof *items);
	if (!perm || !items)
		goto oom;
	for (size_t i = 0; i < np; i++)
		perm[i] = (uint32_t)i;
	for (size_t i = np - 1; i > 0; i--) {
		size_t j = (size_t)eval_rng_below(&rng, i + 1);
		uint32_t x = perm[i];
		perm[i] = perm[j];
		perm[j] = x;
	}
	size_t n_sel_par = (size_t)llround((double)F * (double)np);
	for (size_t r = 0; r < np; r++)
		ps[perm[r]].pool = r < n_sel_par ? EVAL_SPLIT_SELECT : EVAL_SPLIT_TEST;
	/* eligible paragraphs, per part, in permutation order */
	size_t n_elig[3] = {0, 0, 0};
	for (size_t r = 0; r < np; r++) {
		const struct para *p = &ps[perm[r]];
		bool ok = false;
		for (uint32_t k = 1; k < p->n_sent && !ok; k++)
			ok = usable(buf, p->sent[k]);
		n_elig[p->pool] += ok;
	}
	size_t want_sel, want_test;
	if (N == 0) {
		want_sel = n_elig[EVAL_SPLIT_SELECT];
		want_test = n_elig[EVAL_SPLIT_TEST];
	} else {
		want_sel = (size_t)llround((double)F * (double)N);
		want_test = (size_t)N - want_sel;
	}
	if (want_sel > n_elig[EVAL_SPLIT_SELECT] || want_test > n_elig[EVAL_SPLIT_TEST]) {
		fprintf(
		    stderr,
		    "itt eval make-cloze: %s has %zu usable paragraphs in the selection part and "
		    "%zu in the test part; asked for %zu and %zu (lower --n or move --split-at)\n",
		    data, n_elig[EVAL_SPLIT_SELECT], n_elig[EVAL_SPLIT_TEST], want_sel, want_test);
		rc = 2;
		goto out;
	}
	if (want_sel + want_test == 0) {
		fprintf(stderr, "itt eval make-cloze: %s has no paragraph of 2 or more sentences\n",
		        data);
		rc = 2;
		goto out;
	}
	f = fopen(outp, "w");
	if (!f) {
		fprintf(stderr, "itt eval make-cloze: cannot write %s: %s\n", outp,
		        strerror(errno));
		goto out;
	}
	size_t written[3] = {0, 0, 0}, relaxed = 0;
	for (int part = EVAL_SPLIT_SELECT; part <= EVAL_SPLIT_TEST; part++) {
		size_t want = part == EVAL_SPLIT_SELECT ? want_sel : want_test;
		/* this part's paragraphs with a usable sentence: distractor pool */
		size_t n_pool = 0;
		for (size_t r = 0; r < np; r++) {
			const struct para *p = &ps[perm[r]];
			bool any = false;
			for (uint32_t k = 0; k < p->n_sent && !any; k++)
				any = usable(buf, p->sent[k]);
			if (p->pool == part && any)
				items[n_pool++] = perm[r];
		}
		for (size_t r = 0; r < np && written[part] < want; r++) {
			uint32_t pi = perm[r];
			const struct para *p = &ps[pi];
			if (p->pool != part)
				continue;
			uint32_t cand[256], nc = 0;
			for (uint32_t k = 1; k < p->n_sent && nc < 256; k++)
				if (usable(buf, p->sent[k]))
					cand[nc++] = k;
			if (nc == 0)
				continue;
			uint32_t k = cand[eval_rng_below(&rng, nc)];
			struct span ans = p->sent[k];
			struct span ch[16];
			ch[0] = ans;
			size_t alen = ans.b - ans.a;
			uint32_t got = 1;
			for (int tries = 0; got < (uint32_t)K && tries < 4000; tries++) {
				uint32_t qi = items[eval_rng_below(&rng, n_pool)];
				if ((qi > pi ? qi - pi : pi - qi) < 10)
					continue;
				const struct para *q = &ps[qi];
				struct span s = q->sent[eval_rng_below(&rng, q->n_sent)];
				if (!usable(buf, s))
					continue;
				size_t sl = s.b - s.a;
				if (tries < 2000 && (3 * sl < 2 * alen || 2 * sl > 3 * alen))
					continue;
				bool dup = false;
				for (uint32_t c = 0; c < got && !dup; c++)
					dup = same_text(buf, s, ch[c]);
				if (dup)
					continue;
				relaxed += tries >= 2000;
				ch[got++] = s;
			}
			if (got < (uint32_t)K) {
				fprintf(stderr,
				        "itt eval make-cloze: too few distinct sentences in the %s "
				        "part "
				        "for %ld choices\n",
				        eval_split_name(part), K);
				rc = 2;
				goto out;
			}
			/* shuffle the choices; the answer goes where index 0 lands */
			uint32_t order[16];
			for (uint32_t c = 0; c < (uint32_t)K; c++)
				order[c] = c;
			for (uint32_t c = (uint32_t)K - 1; c > 0; c--) {
				uint32_t j = (uint32_t)eval_rng_below(&rng, c + 1);
				uint32_t x = order[c];
				order[c] = order[j];
				order[j] = x;
			}
			uint32_t answer = 0;
			fprintf(f, "{\"id\":%u,\"split\":\"%s\",\"context\":", pi,
			        eval_split_name(part));
			size_t ce = p->sent[k - 1].b;
			json_str(f, buf + p->text.a, ce - p->text.a);
			fputs(",\"choices\":[", f);
			for (uint32_t c = 0; c < (uint32_t)K; c++) {
				struct span s = ch[order[c]];
				if (order[c] == 0)
					answer = c;
				if (c)
					fputc(',', f);
				json_str(f, buf + s.a, s.b - s.a);
			}
			fprintf(f, "],\"answer\":%u}\n", answer);
			written[part]++;
		}
	}
	if (fflush(f) || ferror(f)) {
		fprintf(stderr, "itt eval make-cloze: writing %s failed\n", outp);
		goto out;
	}
	fprintf(stderr,
	        "itt eval make-cloze: %zu paragraphs; wrote %zu select + %zu test items of %ld "
	        "choices to %s (seed %ld; %zu distractors outside the length band)\n",
	        np, written[EVAL_SPLIT_SELECT], written[EVAL_SPLIT_TEST], K, outp, seed, relaxed);
	rc = 0;
	goto out;
oom:
	fprintf(stderr, "itt eval make-cloze: out of memory\n");
out:
	if (f && fclose(f) && rc == 0) {
		fprintf(stderr, "itt eval make-cloze: writing %s failed\n", outp);
		rc = 1;
	}
	for (size_t i = 0; i < np; i++)
		free(ps[i].sent);
	free(ps);
	free(perm);
	free(items);
	free(buf);
	return rc;
}

/* ---- itt eval ----------------------------------------------------------- */

static const char eval_help[] =
    "usage: itt eval --local MODEL.gguf --task TASK.jsonl [--split select|test|all]\n"
    "                [--setting SPEC]... [--bootstrap B] [--seed S] [--threads T]\n"
    "                [--recompute] [--scores FILE] [--json]\n"
    "       itt eval --local MODEL.gguf --perplexity FILE [--n-paragraphs N] [--threads T]\n"
    "                [--json]\n"
    "       itt eval make-cloze --data FILE --out TASK.jsonl ...   (see --help there)\n"
    "Multiple-choice scoring by log-likelihood: for every item each choice gets the sum\n"
    "of log p(choice tokens | context) and that sum per token (\"norm\"); the chosen\n"
    "answer is the best by each, and accuracy comes with a 95% percentile bootstrap\n"
    "interval over the items (B resamples, default 1000, seeded by --seed, default 1;\n"
    "the same resamples for every setting, so \"d norm\" is a paired difference from\n"
    "the first setting).\n"
    "Tokenization is joint: context with BOS, then context + \" \" + choice encoded the\n"
    "same way; the choice's tokens are those after the context's (the space is the\n"
    "\"▁\" of the choice's first piece, as in running text).\n"
    "Settings (default plain; several --setting give one row each, side by side):\n"
    "  plain                        the model's distribution\n"
    "  temp:T                       log_softmax(l / T), a temperature-only control\n"
    "  guidance:heads=L:H+L:H,s=S,u=U  attention-head perturbation guidance:\n"
    "                               log_softmax(l + s (l - l_pert)), l_pert from a second\n"
    "                               branch in which heads L:H attend to their own position\n"
    "                               (blend u: (1-u) A + u I); s >= 0 (default 2), u in\n"
    "                               [0, 1] (default 1). No plausibility cut in scoring (it\n"
    "                               would give choices -inf).\n"
    "  guidance:set=FILE,s=S,u=U    the same with a head-set file (itt heads search --out)\n"
    "  layer:L,s=S,u=U              every head of layer L perturbed (whole-layer control)\n"
    "All settings share one pass: the plain branch once, one perturbed branch per\n"
    "guidance setting, in the same batches. The context runs once per branch and is\n"
    "forked in the KV cache into one sequence per choice; --recompute runs context +\n"
    "choice for every choice instead (for measuring). tok/s is choice tokens per second\n"
    "of the forward time attributed to the setting by its rows.\n"
    "--scores FILE writes one JSON line per item and setting: the choices' sums of log p\n"
    "and token counts.\n"
    "--json prints one object; its \"timings\" members are the only ones that change\n"
    "between two runs of the same command.\n"
    "--perplexity runs `itt perplexity` on FILE (the same code).\n"
    "--local only for now: the cluster protocol has no scoring request yet, so there is\n"
    "no --broker path.\n";

/* One line per item and setting: the choices' log-likelihood sums and
 * token counts (for checking against another implementation). */
static int write_scores(const char *path, const struct eval_task *t, const struct eval_setting *st,
                        size_t n_st, const struct eval_scores *s)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	uint32_t K = s->max_choices;
	for (size_t i = 0; i < t->n; i++)
		for (size_t si = 0; si < n_st; si++) {
			fprintf(f, "{\"id\":%lld,\"setting\":", t->items[i].id);
			json_str(f, st[si].name, strlen(st[si].name));
			fprintf(f, ",\"answer\":%u,\"sum\":[", t->items[i].answer);
			for (uint32_t c = 0; c < t->items[i].n_choices; c++)
				fprintf(f, "%s%.17g", c ? "," : "",
				        s->sum[(si * t->n + i) * K + c]);
			fputs("],\"n_tok\":[", f);
			for (uint32_t c = 0; c < t->items[i].n_choices; c++)
				fprintf(f, "%s%u", c ? "," : "", s->n_tok[i * K + c]);
			fputs("]}\n", f);
		}
	bool bad = ferror(f) != 0;
	return fclose(f) == 0 && !bad ? 0 : -1;
}

int cmd_eval(int argc, char **argv)
{
	if (argc >= 1 && !strcmp(argv[0], "make-cloze"))
		return cmd_make_cloze(argc - 1, argv + 1);
	const char *model = NULL, *task_path = NULL, *ppl = NULL, *split_s = "all";
	const char *scores_path = NULL;
	const char *specs[64];
	int n_specs = 0;
	long B = 1000, seed = 1, threads = 1, npar = -1;
	bool json = false, recompute = false;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(eval_help, stdout);
			return 0;
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (!strcmp(a, "--recompute")) {
			recompute = true;
		} else if (!strcmp(a, "--broker")) {
			fprintf(stderr,
			        "itt eval: --local only for now (the protocol has no scoring "
			        "request yet)\n");
			return 2;
		} else if (!v) {
			fprintf(stderr, "itt eval: %s needs a value or is unknown\n%s", a,
			        eval_help);
			return 2;
		} else if (!strcmp(a, "--local")) {
			model = argv[++i];
		} else if (!strcmp(a, "--task")) {
			task_path = argv[++i];
		} else if (!strcmp(a, "--scores")) {
			scores_path = argv[++i];
		} else if (!strcmp(a, "--perplexity")) {
			ppl = argv[++i];
		} else if (!strcmp(a, "--split")) {
			split_s = argv[++i];
		} else if (!strcmp(a, "--setting")) {
			if (n_specs == 64) {
				fprintf(stderr, "itt eval: at most 64 settings\n");
				return 2;
			}
			specs[n_specs++] = argv[++i];
		} else if (!strcmp(a, "--bootstrap")) {
			if (!cli_parse_long(argv[++i], 0, 1000000, &B)) {
				fprintf(stderr, "itt eval: --bootstrap wants 0..1000000\n");
				return 2;
			}
		} else if (!strcmp(a, "--seed")) {
			if (!cli_parse_long(argv[++i], 0, LONG_MAX, &seed)) {
				fprintf(stderr, "itt eval: --seed wants an integer >= 0\n");
				return 2;
			}
		} else if (!strcmp(a, "--threads")) {
			if (!cli_parse_long(argv[++i], 1, 256, &threads)) {
				fprintf(stderr, "itt eval: --threads wants 1..256\n");
				return 2;
			}
		} else if (!strcmp(a, "--n-paragraphs")) {
			if (!cli_parse_long(argv[++i], 0, 1L << 40, &npar)) {
				fprintf(stderr, "itt eval: --n-paragraphs wants an integer >= 0\n");
				return 2;
			}
		} else {
			fprintf(stderr, "itt eval: unknown option %s\n%s", a, eval_help);
			return 2;
		}
	}
	if (!model) {
		fprintf(stderr,
		        "itt eval: --local MODEL.gguf is required (--local only for now)\n%s",
		        eval_help);
		return 2;
	}
	if (ppl) {
		if (task_path || n_specs) {
			fprintf(stderr,
			        "itt eval: --perplexity does not take --task or --setting\n");
			return 2;
		}
		char nb[32], tb[32];
		char *av[10];
		int ac = 0;
		av[ac++] = "--local";
		av[ac++] = (char *)model;
		av[ac++] = "--text";
		av[ac++] = (char *)ppl;
		snprintf(tb, sizeof tb, "%ld", threads);
		av[ac++] = "--threads";
		av[ac++] = tb;
		if (npar >= 0) {
			snprintf(nb, sizeof nb, "%ld", npar);
			av[ac++] = "--max-paragraphs";
			av[ac++] = nb;
		}
		if (json)
			av[ac++] = "--json";
		av[ac] = NULL;
		return cmd_perplexity(ac, av);
	}
	if (!task_path) {
		fprintf(stderr, "itt eval: --task TASK.jsonl (or --perplexity FILE) is required\n");
		return 2;
	}
	if (npar >= 0) {
		fprintf(stderr, "itt eval: --n-paragraphs goes with --perplexity\n");
		return 2;
	}
	enum eval_split split;
	if (!strcmp(split_s, "select"))
		split = EVAL_SPLIT_SELECT;
	else if (!strcmp(split_s, "test"))
		split = EVAL_SPLIT_TEST;
	else if (!strcmp(split_s, "all"))
		split = EVAL_SPLIT_ALL;
	else {
		fprintf(stderr, "itt eval: --split wants select, test or all\n");
		return 2;
	}
	if (n_specs == 0)
		specs[n_specs++] = "plain";
	struct eval_task task;
	int lrc = eval_task_load(task_path, split, &task, "eval");
	if (lrc < 0)
		return lrc == -1 ? 2 : 1;
	struct engine *e = NULL;
	if (eval_open_engine(model, (int)threads, &e, "eval")) {
		eval_task_free(&task);
		return 1;
	}
	const struct model_hparams *hp = &e->model->hp;
	struct eval_setting st[64];
	struct eval_branch br[65];
	size_t nb = 1;
	int rc = 2;
	int n_st = 0;
	br[0] = (struct eval_branch){NULL, 0};
	for (; n_st < n_specs; n_st++) {
		char msg[300];
		if (eval_setting_parse(specs[n_st], hp->n_layers, hp->n_heads, &st[n_st], msg,
		                       sizeof msg) < 0) {
			fprintf(stderr, "itt eval: %s\n", msg);
			goto out;
		}
		if (st[n_st].kind == EVAL_GUIDANCE) {
			st[n_st].branch = (int)nb;
			br[nb++] = (struct eval_branch){st[n_st].mask, st[n_st].blend};
		}
	}
	struct eval_opts eo = {.recompute = recompute, .progress = !json, .cmd = "eval"};
	struct eval_scores sc;
	rc = 1;
	if (eval_run(e, &task, br, nb, st, (size_t)n_st, &eo, &sc) < 0)
		goto out;
	struct eval_metrics m[64];
	if (eval_metrics(&sc, &task, B, (uint64_t)seed, m) < 0) {
		fprintf(stderr, "itt eval: out of memory\n");
		eval_scores_free(&sc);
		goto out;
	}
	if (scores_path && write_scores(scores_path, &task, st, (size_t)n_st, &sc) < 0) {
		fprintf(stderr, "itt eval: cannot write %s\n", scores_path);
		eval_scores_free(&sc);
		goto out;
	}
	if (json) {
		printf("{\"task\":");
		json_str(stdout, task_path, strlen(task_path));
		printf(",\"split\":\"%s\",\"items\":%zu,\"bootstrap\":%ld,\"seed\":%ld,"
		       "\"tokenization\":\"joint\",\"prefix_share\":%s,\"scored_tokens\":%llu,"
		       "\"forward_rows\":%llu,\"branches\":%zu,\"boundary_mismatch\":%zu,"
		       "\"settings\":",
		       split_s, task.n, B, seed, recompute ? "false" : "true",
		       (unsigned long long)sc.scored_tokens, (unsigned long long)sc.forward_rows,
		       nb, sc.boundary_mismatch);
		eval_print_json_settings(stdout, st, (size_t)n_st, m, &sc, nb);
		printf(",\"timings\":{\"seconds\":%.3f,\"rows_per_s\":%.1f,\"threads\":%ld}}\n",
		       sc.seconds, (double)sc.forward_rows / (sc.seconds > 0 ? sc.seconds : 1e-9),
		       threads);
	} else {
		printf("task %s, split %s: %zu items; %ld bootstrap resamples, seed %ld; %s\n",
		       task_path, split_s, task.n, B, seed,
		       recompute ? "context recomputed per choice" : "context shared (KV fork)");
		eval_print_table(stdout, st, (size_t)n_st, m, &sc, nb);
	}
	eval_scores_free(&sc);
	rc = 0;
out:
	for (int i = 0; i < n_st; i++)
		eval_setting_free(&st[i]);
	engine_close(&e);
	eval_task_free(&task);
	return rc;
}
