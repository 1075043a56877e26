/* heads: named head sets for guidance (PROTOCOL.md, "Techniques").
 *
 * A request may name a head set instead of listing heads; the broker reads
 * NAME.heads from its --head-sets folder (at each SUBMIT: files are small
 * and may change while it runs) and replaces head_set with the heads.  The
 * format is the one `itt heads search` writes: one "L:H" per line; blank
 * lines and text after '#' are ignored.  Names are 1..64 of [A-Za-z0-9._-]
 * and do not start with '.', so a name cannot leave the folder. */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HEADS_MAX_FILE (256 * 1024)

static bool heads_name_ok(const char *n)
{
	size_t len = strlen(n);
	if (len < 1 || len > 64 || n[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = n[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

int heads_expand(const struct broker *b, Itt__Guidance *g, struct itt_err *err)
{
	char path[512], line[256];
	if (!g->head_set || !*g->head_set)
		return 0;
	if (!heads_name_ok(g->head_set))
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "guidance.head_set \"%.64s\" is not a name of 1..64 [A-Za-z0-9._-]",
		                   g->head_set);
	if (g->n_heads)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "guidance: heads and head_set are exclusive");
	if (!b->cfg.head_sets[0])
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "guidance.head_set %s: this broker has no --head-sets folder",
		                   g->head_set);
	snprintf(path, sizeof path, "%s/%s.heads", b->cfg.head_sets, g->head_set);
	FILE *f = fopen(path, "r");
	if (!f)
		return itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
		                   "guidance.head_set %s: no such head set", g->head_set);
	char **heads = NULL;
	size_t n = 0, capn = 0, total = 0;
	int code = 0, lineno = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		total += strlen(line);
		if (total > HEADS_MAX_FILE) {
			code = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			                   "head set %s: larger than %d bytes", g->head_set,
			                   HEADS_MAX_FILE);
			break;
		}
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		char *s = line, *e;
		while (*s == ' ' || *s == '\t')
			s++;
		e = s + strlen(s);
		while (e > s && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
			*--e = 0;
		if (!*s)
			continue;
		uint32_t l, h;
		if (validate_parse_head(s, &l, &h) < 0 || n >= VALIDATE_MAX_HEADS) {
			code = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT,
			                   "head set %s line %d: \"%.32s\" is not LAYER:HEAD",
			                   g->head_set, lineno, s);
			break;
		}
		if (n == capn) {
			capn = capn ? 2 * capn : 16;
			char **nh = realloc(heads, capn * sizeof *nh);
			if (!nh) {
				code = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
				break;
			}
			heads = nh;
		}
		if (!(heads[n] = strdup(s))) {
			code = itt_err_set(err, ITT__CODE__INTERNAL, "out of memory");
			break;
		}
		n++;
	}
	fclose(f);
	if (!code && n == 0)
		code = itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "head set %s lists no heads",
		                   g->head_set);
	if (code) {
		for (size_t i = 0; i < n; i++)
			free(heads[i]);
		free(heads);
		return code;
	}
	/* the unpacked message owns its fields (system allocator) */
	free(g->head_set);
	g->head_set = NULL;
	g->heads = heads;
	g->n_heads = n;
	return 0;
}
