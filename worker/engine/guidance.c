/* guidance: head lists, head-set files, guidance arithmetic and technique
 * parameter checks (see guidance.h for the formats and contracts). */
#include "guidance.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *skip_blanks(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	return p;
}

/* A decimal number of at most 9 digits at *p (before end); advances *p. */
static bool parse_uint(const char **p, const char *end, uint32_t *out)
{
	const char *s = *p;
	uint32_t v = 0, nd = 0;
	while (s < end && *s >= '0' && *s <= '9' && nd < 10) {
		v = v * 10 + (uint32_t)(*s - '0');
		s++;
		nd++;
	}
	if (nd == 0 || nd > 9)
		return false;
	*p = s;
	*out = v;
	return true;
}

/* One "L:H" item in [p, end) (blanks around allowed) into the mask.
 * where names the item's place for messages. */
static int add_head(const char *p, const char *end, uint32_t n_layers, uint32_t n_heads,
                    uint8_t *mask, uint32_t *n_set, const char *where, struct itt_err *err)
{
	uint32_t L, H;
	const char *s = skip_blanks(p, end);
	int len = (int)(end - p > 40 ? 40 : end - p);
	if (!parse_uint(&s, end, &L) || s >= end || *s != ':' || (s++, !parse_uint(&s, end, &H)) ||
	    skip_blanks(s, end) != end)
		return itt_err_set(err, ITT_E_INVALID, "%s\"%.*s\": expected LAYER:HEAD", where,
		                   len, p);
	if (L >= n_layers)
		return itt_err_set(err, ITT_E_INVALID,
		                   "%shead %u:%u: layer %u out of range (the model has %u layers)",
		                   where, L, H, L, n_layers);
	if (H >= n_heads)
		return itt_err_set(err, ITT_E_INVALID,
		                   "%shead %u:%u: unknown head %u (the model has %u heads per layer)",
		                   where, L, H, H, n_heads);
	if (mask[(size_t)L * n_heads + H])
		return itt_err_set(err, ITT_E_INVALID, "%shead %u:%u listed twice", where, L, H);
	mask[(size_t)L * n_heads + H] = 1;
	(*n_set)++;
	return 0;
}

int guidance_parse_heads(const char *spec, uint32_t n_layers, uint32_t n_heads, uint8_t *mask,
                         uint32_t *n_set, struct itt_err *err)
{
	*n_set = 0;
	memset(mask, 0, (size_t)n_layers * n_heads);
	if (!spec || !*skip_blanks(spec, spec + strlen(spec)))
		return itt_err_set(err, ITT_E_INVALID, "empty head list (expected L:H,L:H,...)");
	const char *end = spec + strlen(spec);
	for (const char *p = spec; p <= end;) {
		const char *c = memchr(p, ',', (size_t)(end - p));
		const char *e = c ? c : end;
		int rc = add_head(p, e, n_layers, n_heads, mask, n_set, "", err);
		if (rc < 0) {
			memset(mask, 0, (size_t)n_layers * n_heads);
			*n_set = 0;
			return rc;
		}
		p = e + 1;
	}
	return 0;
}

size_t guidance_format_heads(const uint8_t *mask, uint32_t n_layers, uint32_t n_heads, char *buf,
                             size_t cap)
{
	size_t len = 0;
	for (uint32_t l = 0; l < n_layers; l++)
		for (uint32_t h = 0; h < n_heads; h++) {
			if (!mask[(size_t)l * n_heads + h])
				continue;
			char item[32];
			int k = snprintf(item, sizeof item, "%s%u:%u", len ? "," : "", l, h);
			if (len + (size_t)k < cap)
				memcpy(buf + len, item, (size_t)k);
			len += (size_t)k;
		}
	if (cap)
		buf[len < cap ? len : cap - 1] = '\0';
	return len;
}

/* "key=" value of the header: the text up to the next blank. */
static bool header_field(const char *line, const char *end, const char *key, const char **val,
                         size_t *vlen)
{
	size_t kl = strlen(key);
	for (const char *p = line; p + kl <= end; p++) {
		if ((p == line || p[-1] == ' ' || p[-1] == '\t') && !memcmp(p, key, kl)) {
			const char *v = p + kl, *e = v;
			while (e < end && *e != ' ' && *e != '\t')
				e++;
			*val = v;
			*vlen = (size_t)(e - v);
			return true;
		}
	}
	return false;
}

int guidance_parse_head_set(const char *text, size_t len, uint32_t n_layers, uint32_t n_heads,
                            uint8_t *mask, uint32_t *n_set, char *name, struct itt_err *err)
{
	static const char magic[] = "itt-head-set";
	const char *p = text, *end = text + len;
	uint32_t line_no = 0;
	int rc = 0;

	*n_set = 0;
	memset(mask, 0, (size_t)n_layers * n_heads);
	if (name)
		name[0] = '\0';
	while (p < end && rc == 0) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *e = nl ? nl : end;
		const char *next = nl ? nl + 1 : end;
		line_no++;
		const char *hash = memchr(p, '#', (size_t)(e - p));
		const char *s = skip_blanks(p, e);
		if (hash) {
			/* the header is a comment: "# itt-head-set model=... layers=N heads=H" */
			const char *h = skip_blanks(hash + 1, e), *v;
			size_t ml = sizeof magic - 1, vl;
			uint32_t fl, fh;
			if ((size_t)(e - h) >= ml && !memcmp(h, magic, ml) &&
			    (e - h == (ptrdiff_t)ml || h[ml] == ' ' || h[ml] == '\t' || h[ml] == '\r')) {
				if (!header_field(h, e, "layers=", &v, &vl) ||
				    !parse_uint(&v, v + vl, &fl) ||
				    !header_field(h, e, "heads=", &v, &vl) || !parse_uint(&v, v + vl, &fh))
					return itt_err_set(err, ITT_E_INVALID,
					                   "line %u: the itt-head-set header lacks layers=N "
					                   "heads=H",
					                   line_no);
				if (fl != n_layers || fh != n_heads)
					return itt_err_set(err, ITT_E_INVALID,
					                   "line %u: the heads were chosen for a model of "
					                   "%u layers x %u heads, this one has %u x %u",
					                   line_no, fl, fh, n_layers, n_heads);
				if (name && header_field(h, e, "model=", &v, &vl)) {
					if (vl >= GUIDANCE_MAX_NAME)
						vl = GUIDANCE_MAX_NAME - 1;
					memcpy(name, v, vl);
					name[vl] = '\0';
					while (vl > 0 && name[vl - 1] == '\r')
						name[--vl] = '\0';
				}
			}
			e = hash;
		}
		while (e > s && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (s < e) {
			char where[32];
			snprintf(where, sizeof where, "line %u: ", line_no);
			rc = add_head(s, e, n_layers, n_heads, mask, n_set, where, err);
		}
		p = next;
	}
	if (rc == 0 && *n_set == 0)
		rc = itt_err_set(err, ITT_E_INVALID, "the head set lists no heads");
	if (rc < 0) {
		memset(mask, 0, (size_t)n_layers * n_heads);
		*n_set = 0;
	}
	return rc;
}

int guidance_load_head_set(const char *path, uint32_t n_layers, uint32_t n_heads, uint8_t *mask,
                           uint32_t *n_set, char *name, struct itt_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return itt_err_set(err, ITT_E_IO, "cannot open head set %s: %s", path,
		                   strerror(errno));
	/* a head set is small: one line per head */
	size_t cap = 64 + (size_t)n_layers * n_heads * 64 + 65536, len;
	char *buf = malloc(cap);
	if (!buf) {
		fclose(f);
		return itt_err_set(err, ITT_E_NOMEM, "head set %s: out of memory", path);
	}
	len = fread(buf, 1, cap, f);
	bool too_big = len == cap, bad = ferror(f);
	fclose(f);
	int rc;
	if (bad || too_big)
		rc = itt_err_set(err, bad ? ITT_E_IO : ITT_E_INVALID, "head set %s: %s", path,
		                 bad ? "read error" : "too large for a head set");
	else
		rc = guidance_parse_head_set(buf, len, n_layers, n_heads, mask, n_set, name, err);
	if (rc < 0 && rc != ITT_E_IO && !bad && !too_big) {
		/* name the file in the message */
		char msg[ITT_ERR_MSG];
		snprintf(msg, sizeof msg, "%s", err->msg);
		itt_err_set(err, rc, "head set %s: %s", path, msg);
	}
	free(buf);
	return rc;
}

int guidance_save_head_set(const char *path, const char *name, uint32_t n_layers,
                           uint32_t n_heads, const uint8_t *mask, struct itt_err *err)
{
	uint32_t n = 0;
	for (size_t i = 0; i < (size_t)n_layers * n_heads; i++)
		n += mask[i] != 0;
	if (n == 0)
		return itt_err_set(err, ITT_E_INVALID, "head set %s: no heads to save", path);
	FILE *f = fopen(path, "wb");
	if (!f)
		return itt_err_set(err, ITT_E_IO, "cannot create head set %s: %s", path,
		                   strerror(errno));
	fputs("# itt-head-set model=", f);
	for (const char *c = name && *name ? name : "unknown"; *c; c++)
		fputc(*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r' ? '_' : *c, f);
	fprintf(f, " layers=%u heads=%u\n# %u heads, one LAYER:HEAD per line\n", n_layers, n_heads,
	        n);
	for (uint32_t l = 0; l < n_layers; l++)
		for (uint32_t h = 0; h < n_heads; h++)
			if (mask[(size_t)l * n_heads + h])
				fprintf(f, "%u:%u\n", l, h);
	if (ferror(f) | (fclose(f) != 0))
		return itt_err_set(err, ITT_E_IO, "cannot write head set %s", path);
	return 0;
}

void guidance_combine(const float *l, const float *l_pert, uint32_t vocab, float scale, float cut,
                      float *out)
{
	if (scale == 0.0f) {
		if (out != l)
			memmove(out, l, (size_t)vocab * sizeof(float));
		return;
	}
	float mx = -INFINITY;
	for (uint32_t i = 0; i < vocab; i++)
		if (l[i] > mx)
			mx = l[i];
	/* p_i >= cut * p_max  <=>  l_i - max >= log(cut); cut <= 0: no cut */
	float floor_l = cut > 0.0f ? mx + logf(cut) : -INFINITY;
	for (uint32_t i = 0; i < vocab; i++) {
		float li = l[i];
		out[i] = li >= floor_l ? li + scale * (li - l_pert[i]) : -INFINITY;
	}
}

int guidance_check_scale(float s, struct itt_err *err)
{
	if (!(s >= 0.0f) || isinf(s))
		return itt_err_set(err, ITT_E_INVALID,
		                   "guidance scale %g: must be a finite number >= 0 (0: off)",
		                   (double)s);
	return 0;
}

int guidance_check_blend(float u, struct itt_err *err)
{
	if (!(u >= 0.0f && u <= 1.0f))
		return itt_err_set(err, ITT_E_INVALID,
		                   "guidance blend %g: must be in [0, 1] (1: a head attends only "
		                   "to its own position)",
		                   (double)u);
	return 0;
}

int guidance_check_threshold(float t, struct itt_err *err)
{
	if (!(t >= 0.0f && t <= 1.0f))
		return itt_err_set(err, ITT_E_INVALID,
		                   "early-exit threshold %g: must be in [0, 1] (top-1 minus top-2 "
		                   "probability)",
		                   (double)t);
	return 0;
}

int guidance_parse_exit_layers(const char *spec, uint32_t n_layers, uint32_t *layers,
                               uint32_t cap, uint32_t *n, struct itt_err *err)
{
	*n = 0;
	if (!spec || !*skip_blanks(spec, spec + strlen(spec)))
		return itt_err_set(err, ITT_E_INVALID, "empty exit-layer list (expected 1,2,3)");
	const char *end = spec + strlen(spec);
	for (const char *p = spec; p <= end;) {
		const char *c = memchr(p, ',', (size_t)(end - p));
		const char *e = c ? c : end;
		const char *s = skip_blanks(p, e);
		uint32_t L;
		if (!parse_uint(&s, e, &L) || skip_blanks(s, e) != e)
			return itt_err_set(err, ITT_E_INVALID, "exit layer \"%.*s\": not a number",
			                   (int)(e - p > 40 ? 40 : e - p), p);
		if (L + 1 >= n_layers)
			return itt_err_set(err, ITT_E_INVALID,
			                   "exit layer %u: must be below %u (the model has %u layers; "
			                   "after the last the head runs anyway)",
			                   L, n_layers ? n_layers - 1 : 0, n_layers);
		if (*n > 0 && L <= layers[*n - 1])
			return itt_err_set(err, ITT_E_INVALID,
			                   "exit layers must ascend without repeats: %u after %u", L,
			                   layers[*n - 1]);
		if (*n == cap)
			return itt_err_set(err, ITT_E_INVALID, "more than %u exit layers", cap);
		layers[(*n)++] = L;
		p = e + 1;
	}
	return 0;
}
