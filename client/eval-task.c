/* eval-task: multiple-choice task files (eval.h), one JSON object a line,
 * read with jansson, and the whole-file reader the eval commands share.
 *
 * Contract: eval_task_load keeps the items of the split asked for, in file
 * order, or fails on the first bad line with "itt CMD: FILE:LINE: reason".
 * Invariants of a loaded item: a non-empty context, 2..EVAL_MAX_CHOICES
 * non-empty choices, answer < n_choices, id >= 0 (the line's index when the
 * item names none); blank lines are skipped; a line with a NUL byte, a
 * duplicate key or text after its object is refused. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"

char *eval_read_file(const char *path, size_t *len_out)
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
		errno = EIO;
	} else if (!buf) {
		errno = ENOMEM;
	}
	fclose(f);
	if (buf) {
		buf[len] = 0;
		*len_out = len;
	}
	return buf;
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

static void item_free(struct eval_item *it)
{
	free(it->context);
	for (uint32_t c = 0; c < it->n_choices; c++)
		free(it->choices[c]);
	free(it->choices);
	memset(it, 0, sizeof *it);
}

/* One line's object into it (zeroed by the caller); 0, or -1 with a reason. */
static int item_from_json(const json_t *o, struct eval_item *it, char *why, size_t cap)
{
	const json_t *id = json_object_get(o, "id"), *split = json_object_get(o, "split");
	const json_t *ctx = json_object_get(o, "context"), *ch = json_object_get(o, "choices");
	const json_t *ans = json_object_get(o, "answer");
	it->id = -1;
	if (id && !json_is_integer(id)) {
		snprintf(why, cap, "\"id\" must be an integer");
		return -1;
	}
	it->id = id ? json_integer_value(id) : -1;
	if (split) {
		const char *s = json_string_value(split);
		if (s && !strcmp(s, "select"))
			it->split = EVAL_SPLIT_SELECT;
		else if (s && !strcmp(s, "test"))
			it->split = EVAL_SPLIT_TEST;
		else {
			snprintf(why, cap, "\"split\" must be \"select\" or \"test\"");
			return -1;
		}
	}
	if (!json_is_string(ctx)) {
		snprintf(why, cap, ctx ? "\"context\" must be a string" : "no \"context\" string");
		return -1;
	}
	if (!*json_string_value(ctx)) {
		snprintf(why, cap, "\"context\" is empty");
		return -1;
	}
	if (!json_is_array(ch)) {
		snprintf(why, cap,
		         ch ? "\"choices\" must be an array of strings" : "no \"choices\" array");
		return -1;
	}
	size_t n = json_array_size(ch);
	if (n > EVAL_MAX_CHOICES) {
		snprintf(why, cap, "more than %d choices", EVAL_MAX_CHOICES);
		return -1;
	}
	if (n < 2) {
		snprintf(why, cap, "\"choices\" needs at least 2 entries");
		return -1;
	}
	for (size_t c = 0; c < n; c++) {
		const char *s = json_string_value(json_array_get(ch, c));
		if (!s) {
			snprintf(why, cap, "\"choices\" must be an array of strings");
			return -1;
		}
		if (!*s) {
			snprintf(why, cap, "a choice is empty");
			return -1;
		}
	}
	if (!json_is_integer(ans)) {
		snprintf(why, cap, ans ? "\"answer\" must be an integer" : "no \"answer\" index");
		return -1;
	}
	long long a = json_integer_value(ans);
	if (a < 0 || a >= (long long)n) {
		snprintf(why, cap, "\"answer\" %lld is out of range for %zu choices", a, n);
		return -1;
	}
	it->answer = (uint32_t)a;
	it->context = strdup(json_string_value(ctx));
	it->choices = calloc(n, sizeof *it->choices);
	if (!it->context || !it->choices)
		goto oom;
	for (; it->n_choices < n; it->n_choices++) {
		it->choices[it->n_choices] =
		    strdup(json_string_value(json_array_get(ch, it->n_choices)));
		if (!it->choices[it->n_choices])
			goto oom;
	}
	return 0;
oom:
	snprintf(why, cap, "out of memory");
	return -1;
}

/* Parses buf[0, len) (one line) into it; 0, or -1 with a reason. */
static int parse_line(const char *buf, size_t len, struct eval_item *it, char *why, size_t cap)
{
	json_error_t jerr;
	if (memchr(buf, 0, len)) {
		snprintf(why, cap, "a NUL byte in the line");
		return -1;
	}
	json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!o) {
		snprintf(why, cap, "%s", jerr.text);
		return -1;
	}
	int rc = -1;
	if (!json_is_object(o))
		snprintf(why, cap, "a line must be a JSON object");
	else
		rc = item_from_json(o, it, why, cap);
	json_decref(o);
	return rc;
}

int eval_task_load(const char *path, enum eval_split filter, struct eval_task *t, const char *cmd)
{
	size_t len;
	char *buf = eval_read_file(path, &len);
	memset(t, 0, sizeof *t);
	if (!buf) {
		fprintf(stderr, "itt %s: cannot read %s: %s\n", cmd, path, strerror(errno));
		return -2;
	}
	size_t cap = 0, line = 0;
	int rc = 0;
	for (size_t p = 0; p < len;) {
		char *nl = memchr(buf + p, '\n', len - p);
		size_t e = nl ? (size_t)(nl - buf) : len, q = p;
		const char *s = buf + p;
		line++;
		p = e + 1;
		while (q < e && eval_is_space(buf[q]))
			q++;
		if (q == e)
			continue;
		struct eval_item it = {0};
		char why[200];
		if (parse_line(s, (size_t)(buf + e - s), &it, why, sizeof why) < 0) {
			fprintf(stderr, "itt %s: %s:%zu: %s\n", cmd, path, line, why);
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
