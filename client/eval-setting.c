/* eval-setting: the settings of a scoring run (eval.h): "plain", "temp:T",
 * "guidance:heads=L:H+L:H,s=S,u=U", "guidance:set=FILE,s=S,u=U" and
 * "layer:L,s=S,u=U", parsed against the model's shape.
 *
 * Contract: eval_setting_parse fills a setting whose name is the spec, or
 * writes one message naming the spec and returns -1 (nothing to free).
 * Invariants: a guidance setting owns a mask of n_layers * n_heads bytes
 * naming at least one head, its scale and blend pass guidance.h's checks;
 * '+' separates heads inside a spec because ',' separates its parameters. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval.h"
#include "guidance.h"
#include "opts.h"

/* A finite number that is finite as a float too. */
static bool parse_float(const char *s, float *out)
{
	double d;
	if (!opts_parse_double(s, &d))
		return false;
	*out = (float)d;
	return isfinite(*out);
}

static bool parse_float_str(const char *s, size_t n, float *out)
{
	char tmp[64];
	if (n == 0 || n >= sizeof tmp)
		return false;
	memcpy(tmp, s, n);
	tmp[n] = 0;
	return parse_float(tmp, out);
}

static bool parse_u32_str(const char *s, size_t n, uint32_t *out)
{
	char tmp[32];
	long v;
	if (n == 0 || n >= sizeof tmp)
		return false;
	memcpy(tmp, s, n);
	tmp[n] = 0;
	if (!opts_parse_long(tmp, 0, 1L << 30, &v))
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
		if (!parse_float(spec + 5, &st->temp) || st->temp <= 0) {
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
