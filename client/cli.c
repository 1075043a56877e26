/* cli: shared option parsing and JSON output for the itt subcommands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double cli_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

bool cli_parse_long(const char *s, long lo, long hi, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (!*s || *end || errno || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

bool cli_parse_float(const char *s, float *out)
{
	char *end;
	errno = 0;
	float v = strtof(s, &end);
	if (!*s || *end || errno || isnan(v))
		return false;
	*out = v;
	return true;
}

int cli_parse_gen(int argc, char **argv, struct gen_opts *o, const char *cmd)
{
	memset(o, 0, sizeof *o);
	sampler_params_default(&o->sp);
	o->prompt = "";
	o->n_predict = 128;
	o->threads = 1;
	o->tech.blend = 1.0f;
	o->tech.exit_threshold = -1.0f;
	o->tech.max_draft = -1;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		long l;
		bool ok = true;
#define NEEDV()                                                                                   \
	do {                                                                                      \
		if (!v) {                                                                         \
			fprintf(stderr, "itt %s: %s needs a value\n", cmd, a);                    \
			return 2;                                                                 \
		}                                                                                 \
		i++;                                                                              \
	} while (0)
		if (!strcmp(a, "--local")) {
			NEEDV();
			o->local = v;
		} else if (!strcmp(a, "--broker")) {
			NEEDV();
			o->broker = v;
		} else if (!strcmp(a, "--model")) {
			NEEDV();
			o->model = v;
		} else if (!strcmp(a, "--prompt") || !strcmp(a, "-p")) {
			NEEDV();
			o->prompt = v;
		} else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
			NEEDV();
			ok = cli_parse_long(v, 0, 1 << 20, &l);
			o->n_predict = (int32_t)l;
		} else if (!strcmp(a, "--temperature") || !strcmp(a, "--temp")) {
			NEEDV();
			ok = cli_parse_float(v, &o->sp.temperature);
		} else if (!strcmp(a, "--top-k")) {
			NEEDV();
			ok = cli_parse_long(v, -1, 1 << 30, &l);
			o->sp.top_k = (int32_t)l;
		} else if (!strcmp(a, "--top-p")) {
			NEEDV();
			ok = cli_parse_float(v, &o->sp.top_p);
		} else if (!strcmp(a, "--min-p")) {
			NEEDV();
			ok = cli_parse_float(v, &o->sp.min_p);
		} else if (!strcmp(a, "--typical")) {
			NEEDV();
			ok = cli_parse_float(v, &o->sp.typical_p);
		} else if (!strcmp(a, "--repeat-penalty")) {
			NEEDV();
			ok = cli_parse_float(v, &o->sp.repeat_penalty);
		} else if (!strcmp(a, "--repeat-last-n")) {
			NEEDV();
			ok = cli_parse_long(v, -1, 1 << 30, &l);
			o->sp.penalty_last_n = (int32_t)l;
		} else if (!strcmp(a, "--presence-penalty")) {
			NEEDV();
			ok = cli_parse_float(v, &o->sp.presence_penalty);
		} else if (!strcmp(a, "--frequency-penalty")) {
			NEEDV();
			ok = cli_parse_float(v, &o->sp.frequency_penalty);
		} else if (!strcmp(a, "--seed")) {
			NEEDV();
			char *end;
			errno = 0;
			o->sp.seed = strtoull(v, &end, 10);
			ok = *v && !*end && !errno;
			o->seed_set = true;
		} else if (!strcmp(a, "--stop")) {
			NEEDV();
			if (o->n_stops == CLI_MAX_STOPS) {
				fprintf(stderr, "itt %s: at most %d --stop strings\n", cmd,
					CLI_MAX_STOPS);
				return 2;
			}
			o->stops[o->n_stops++] = v;
		} else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
			NEEDV();
			ok = cli_parse_long(v, 1, 256, &l);
			o->threads = (int)l;
		} else if (!strcmp(a, "--json")) {
			o->json = true;
		} else if (!strcmp(a, "--guidance-heads")) {
			NEEDV();
			o->tech.heads = v;
		} else if (!strcmp(a, "--head-set")) {
			NEEDV();
			o->tech.head_set = v;
		} else if (!strcmp(a, "--guidance-scale")) {
			NEEDV();
			ok = cli_parse_float(v, &o->tech.scale);
		} else if (!strcmp(a, "--guidance-blend")) {
			NEEDV();
			ok = cli_parse_float(v, &o->tech.blend);
		} else if (!strcmp(a, "--negative-prompt")) {
			NEEDV();
			o->tech.negative_prompt = v;
		} else if (!strcmp(a, "--early-exit")) {
			NEEDV();
			ok = cli_parse_float(v, &o->tech.exit_threshold) && o->tech.exit_threshold >= 0;
		} else if (!strcmp(a, "--exit-layers")) {
			NEEDV();
			o->tech.exit_layers = v;
		} else if (!strcmp(a, "--compare")) {
			o->tech.compare = true;
		} else if (!strcmp(a, "--speculative")) {
			NEEDV();
			o->tech.draft = v;
		} else if (!strcmp(a, "--draft")) {
			NEEDV();
			ok = cli_parse_long(v, 0, 1000000, &o->tech.max_draft);
		} else if (!strcmp(a, "--exit-draft-layers")) {
			NEEDV();
			ok = cli_parse_long(v, 1, 1000000, &o->tech.exit_draft_layers);
		} else {
			fprintf(stderr, "itt %s: unknown option %s (see itt %s --help)\n", cmd, a, cmd);
			return 2;
		}
#undef NEEDV
		if (!ok) {
			fprintf(stderr, "itt %s: bad value for %s: \"%s\"\n", cmd, a, v);
			return 2;
		}
	}
	if (o->local && (o->tech.draft || o->tech.max_draft >= 0 || o->tech.exit_draft_layers)) {
		fprintf(stderr, "itt %s: --speculative, --draft and --exit-draft-layers need "
		                "--broker\n",
		        cmd);
		return 2;
	}
	return 0;
}

/* Length of a valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	size_t len;
	unsigned min;
	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xE0) == 0xC0)
		len = 2, min = 0x80;
	else if ((s[0] & 0xF0) == 0xE0)
		len = 3, min = 0x800;
	else if ((s[0] & 0xF8) == 0xF0)
		len = 4, min = 0x10000;
	else
		return 0;
	if (len > n)
		return 0;
	unsigned cp = s[0] & (0x7F >> len);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

void json_str(FILE *f, const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	fputc('"', f);
	for (size_t i = 0; i < len;) {
		unsigned char c = p[i];
		if (c == '"' || c == '\\') {
			fputc('\\', f);
			fputc(c, f);
			i++;
		} else if (c == '\n') {
			fputs("\\n", f);
			i++;
		} else if (c == '\t') {
			fputs("\\t", f);
			i++;
		} else if (c == '\r') {
			fputs("\\r", f);
			i++;
		} else if (c < 0x20 || c == 0x7F) {
			fprintf(f, "\\u%04x", c);
			i++;
		} else if (c < 0x80) {
			fputc(c, f);
			i++;
		} else {
			size_t n = utf8_len(p + i, len - i);
			if (n == 0) {
				fputs("\\ufffd", f);
				i++;
			} else {
				fwrite(p + i, 1, n, f);
				i += n;
			}
		}
	}
	fputc('"', f);
}

void json_ids(FILE *f, const int32_t *ids, size_t n)
{
	fputc('[', f);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s%d", i ? "," : "", ids[i]);
	fputc(']', f);
}
