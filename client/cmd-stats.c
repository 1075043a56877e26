/* cmd-stats: the itt subcommands that show and adjust a running cluster:
 *   itt stats [--json] [--watch [--interval-ms N] [--count N]]   ClusterStats
 *   itt settings get [WORKER]                                    knobs in force
 *   itt settings set WORKER knob=value... [--pin]                SET
 *   itt settings pin|unpin WORKER knob...                        SET
 *
 * Contract: exit 0 on success; 1 when the cluster answered ERROR (printed as
 * "itt CMD: CODE: reason") or did not answer; 2 on a usage error or a change
 * refused here before it was sent.  Nothing a broker sends can crash these
 * commands: every string is printed through a width-bounded cell, and absent
 * fields print as "-".
 *
 * The table (`itt stats`, and each frame of `--watch`) fits the width it is
 * given (the terminal's on a TTY, 120 otherwise, or --width): long ids,
 * hosts and models are cut (marked with '~'), and when even that is too wide
 * the least important columns are left out (host first, then model, queue,
 * state ...).  `--watch` on a TTY draws on the alternate screen and restores
 * the terminal on Ctrl-C or SIGTERM; elsewhere it prints one frame per
 * interval, frames separated by a blank line. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "libitt.h"

#define MIB (1024.0 * 1024.0)

/* --- small output helpers --------------------------------------------------- */

static void jstr(const char *s)
{
	json_str(stdout, s ? s : "", s ? strlen(s) : 0);
}

/* A double from the wire as JSON: null when it is not finite. */
static void jnum(const char *key, double v, int prec)
{
	if (isfinite(v))
		printf("\"%s\":%.*f", key, prec, v);
	else
		printf("\"%s\":null", key);
}

static const char *or_dash(const char *s)
{
	return s && *s ? s : "-";
}

/* Copies src into dst (cap bytes) cut to at most w characters: control bytes
 * become '?', and a cut string ends in '~' (or, with `middle`, keeps its
 * head and tail around a '~', for ids whose end tells them apart). */
static void fit(char *dst, size_t cap, const char *src, int w, bool middle)
{
	if (!src)
		src = "-";
	size_t n = strlen(src);
	if (w < 1)
		w = 1;
	if ((size_t)w + 1 > cap)
		w = (int)cap - 1;
	if (n <= (size_t)w) {
		memcpy(dst, src, n + 1);
	} else if (middle && w >= 5) {
		size_t tail = (size_t)(w - 1) / 2, head = (size_t)w - 1 - tail;
		memcpy(dst, src, head);
		dst[head] = '~';
		memcpy(dst + head + 1, src + n - tail, tail);
		dst[w] = 0;
	} else {
		memcpy(dst, src, (size_t)w - 1);
		dst[w - 1] = '~';
		dst[w] = 0;
	}
	for (char *p = dst; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
}

/* Prints s cut to w characters (cells may hold UTF-8 from the wire; a cut
 * in the middle of a sequence only costs a replacement glyph). */
static void put_line(FILE *f, const char *s, int w)
{
	char buf[1024];
	fit(buf, sizeof buf, s, w, false);
	fprintf(f, "%s\n", buf);
}

static void fmt_uptime(char *out, size_t cap, uint64_t ms)
{
	uint64_t s = ms / 1000;
	if (s >= 86400)
		snprintf(out, cap, "%llud%02lluh%02llum", (unsigned long long)(s / 86400),
			 (unsigned long long)(s % 86400 / 3600), (unsigned long long)(s % 3600 / 60));
	else if (s >= 3600)
		snprintf(out, cap, "%lluh%02llum%02llus", (unsigned long long)(s / 3600),
			 (unsigned long long)(s % 3600 / 60), (unsigned long long)(s % 60));
	else if (s >= 60)
		snprintf(out, cap, "%llum%02llus", (unsigned long long)(s / 60),
			 (unsigned long long)(s % 60));
	else
		snprintf(out, cap, "%.1fs", (double)ms / 1e3);
}

/* HH:MM:SS of a Unix time in ms, local time. */
static void fmt_clock(char *out, size_t cap, uint64_t unix_ms)
{
	time_t t = (time_t)(unix_ms / 1000);
	struct tm tm;
	if (!unix_ms || !localtime_r(&t, &tm)) {
		snprintf(out, cap, "--:--:--");
		return;
	}
	strftime(out, cap, "%H:%M:%S", &tm);
}

static uint64_t unix_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static bool is_pinned(const Itt__WorkerStats *w, const char *knob)
{
	for (size_t i = 0; i < w->n_pinned; i++)
		if (w->pinned[i] && !strcmp(w->pinned[i], knob))
			return true;
	return false;
}

/* The settings in force as the worker last reported them, or NULL. */
static const Itt__Settings *settings_of(const Itt__WorkerStats *w)
{
	return w->telemetry ? w->telemetry->settings : NULL;
}

/* A knob's cell: its value ("-" when unknown), then '*' when pinned. */
static void knob_cell(char *out, size_t cap, const Itt__WorkerStats *w, const char *knob)
{
	const Itt__Settings *s = settings_of(w);
	bool has = false;
	uint32_t v = 0;
	if (!strcmp(knob, "threads")) {
		if (s && s->has_threads)
			has = true, v = s->threads;
		else if (w->has_threads && w->threads)
			has = true, v = w->threads; /* from HELLO */
	} else if (!strcmp(knob, "batch_tokens")) {
		has = s && s->has_batch_tokens, v = s ? s->batch_tokens : 0;
	} else if (!strcmp(knob, "slow_ms")) {
		has = s && s->has_slow_ms, v = s ? s->slow_ms : 0;
	}
	if (has)
		snprintf(out, cap, "%u%s", v, is_pinned(w, knob) ? "*" : "");
	else
		snprintf(out, cap, "-%s", is_pinned(w, knob) ? "*" : "");
}

/* --- the table -------------------------------------------------------------- */

enum col {
	C_ID,
	C_HOST,
	C_MODEL,
	C_LAYERS,
	C_STATE,
	C_SESS,
	C_ROWS,
	C_STEP,
	C_TOKS,
	C_QUEUE,
	C_KV,
	C_CPU,
	C_RSS,
	C_THREADS,
	C_BUDGET,
	C_SLOW,
	N_COLS
};

static const struct {
	const char *title;
	int width;    /* fixed width; for flexible columns the smallest */
	int max;      /* flexible columns: the widest they grow (0: fixed) */
	bool right;   /* right-aligned (numbers) */
	int priority; /* columns are left out lowest first when too wide */
} cols[N_COLS] = {
	[C_ID] = {"WORKER", 12, 28, false, 100},  [C_HOST] = {"HOST", 6, 16, false, 1},
	[C_MODEL] = {"MODEL", 6, 16, false, 2},   [C_LAYERS] = {"LAYERS", 7, 0, false, 90},
	[C_STATE] = {"STATE", 5, 0, false, 4},    [C_SESS] = {"SESS", 6, 0, true, 80},
	[C_ROWS] = {"ROW/ST", 6, 0, true, 60},    [C_STEP] = {"STEPms", 6, 0, true, 70},
	[C_TOKS] = {"TOK/S", 7, 0, true, 85},     [C_QUEUE] = {"Q", 3, 0, true, 3},
	[C_KV] = {"KV", 9, 0, true, 40},          [C_CPU] = {"CPU", 4, 0, true, 30},
	[C_RSS] = {"RSSMiB", 6, 0, true, 20},     [C_THREADS] = {"THR", 4, 0, true, 75},
	[C_BUDGET] = {"BUDGET", 6, 0, true, 74},  [C_SLOW] = {"SLOW", 5, 0, true, 10},
};

struct layout {
	bool on[N_COLS];
	int w[N_COLS];
};

/* A number cell; "-" when absent or not finite. */
static void num_cell(char *out, bool has, double v, int prec)
{
	if (has && isfinite(v))
		snprintf(out, 64, "%.*f", prec, v);
	else
		snprintf(out, 64, "-");
}

static void worker_cells(const Itt__WorkerStats *w, char cell[N_COLS][64])
{
	const Itt__Telemetry *t = w->telemetry;
	snprintf(cell[C_ID], 64, "%s", or_dash(w->id));
	snprintf(cell[C_HOST], 64, "%s", or_dash(w->host));
	snprintf(cell[C_MODEL], 64, "%s", or_dash(w->model));
	snprintf(cell[C_LAYERS], 64, "[%u,%u)", w->layer_first, w->layer_last);
	snprintf(cell[C_STATE], 64, "%s",
		 t && t->state && strcmp(t->state, "ready") && w->state &&
			 !strcmp(w->state, "ready") ? t->state : or_dash(w->state));
	snprintf(cell[C_SESS], 64, "%u/%u", w->sessions, w->max_sessions);
	num_cell(cell[C_ROWS], t && t->has_rows_per_step, t ? t->rows_per_step : 0, 1);
	num_cell(cell[C_STEP], t && t->has_step_ms, t ? t->step_ms : 0, 1);
	num_cell(cell[C_TOKS], true, w->tokens_per_s, 1);
	snprintf(cell[C_QUEUE], 64, "%u", w->queue);
	if (t && (t->has_kv_used || t->has_kv_blocks))
		snprintf(cell[C_KV], 64, "%u/%u", t->kv_used, t->kv_blocks);
	else
		snprintf(cell[C_KV], 64, "-");
	num_cell(cell[C_CPU], t && t->has_cpu, t ? t->cpu : 0, 2);
	if (t && t->has_rss_bytes)
		snprintf(cell[C_RSS], 64, "%.0f", (double)t->rss_bytes / MIB);
	else
		snprintf(cell[C_RSS], 64, "-");
	knob_cell(cell[C_THREADS], 64, w, "threads");
	knob_cell(cell[C_BUDGET], 64, w, "batch_tokens");
	knob_cell(cell[C_SLOW], 64, w, "slow_ms");
}

/* Chooses the columns and widths for the workers at `width` characters. */
static void plan_layout(const Itt__ClusterStats *st, int width, struct layout *L)
{
	const int flex[] = {C_ID, C_MODEL, C_HOST};
	const size_t n_flex = sizeof flex / sizeof flex[0];
	int want[N_COLS] = {0};
	bool slow = false;
	for (int c = 0; c < N_COLS; c++) {
		L->on[c] = true;
		L->w[c] = cols[c].width;
	}
	/* Flexible columns want their widest content (within their bounds)
	 * and take no more than that even at their smallest. */
	for (size_t k = 0; k < n_flex; k++) {
		int c = flex[k];
		want[c] = (int)strlen(cols[c].title);
		for (size_t i = 0; i < st->n_workers; i++) {
			const Itt__WorkerStats *w = st->workers[i];
			const char *v = c == C_ID ? w->id : c == C_HOST ? w->host : w->model;
			int n = v ? (int)strlen(v) : 1;
			if (n > want[c])
				want[c] = n;
		}
		if (want[c] > cols[c].max)
			want[c] = cols[c].max;
		if (L->w[c] > want[c])
			L->w[c] = want[c];
	}
	/* The slow_ms column only when some worker runs with it or pins it. */
	for (size_t i = 0; i < st->n_workers; i++) {
		const Itt__Settings *s = settings_of(st->workers[i]);
		slow |= (s && s->has_slow_ms && s->slow_ms) || is_pinned(st->workers[i], "slow_ms");
	}
	L->on[C_SLOW] = slow;
	int used;
	for (;;) {
		used = -1;
		for (int c = 0; c < N_COLS; c++)
			if (L->on[c])
				used += L->w[c] + 1;
		if (used <= width)
			break;
		int drop = -1;
		for (int c = 0; c < N_COLS; c++)
			if (L->on[c] && c != C_ID &&
			    (drop < 0 || cols[c].priority < cols[drop].priority))
				drop = c;
		if (drop < 0)
			break;
		L->on[drop] = false;
	}
	/* Grow the flexible columns towards their content, one character
	 * at a time each in turn, so that no one takes all the room. */
	for (bool grew = true; grew && used < width;) {
		grew = false;
		for (size_t k = 0; k < n_flex && used < width; k++) {
			int c = flex[k];
			if (L->on[c] && L->w[c] < want[c]) {
				L->w[c]++;
				used++;
				grew = true;
			}
		}
	}
}

static void print_row(FILE *f, const struct layout *L, char cell[N_COLS][64], bool header)
{
	char line[1024];
	size_t n = 0;
	bool first = true;
	for (int c = 0; c < N_COLS; c++) {
		if (!L->on[c])
			continue;
		char v[128];
		fit(v, sizeof v, cell[c], L->w[c], c == C_ID && !header);
		n += (size_t)snprintf(line + n, sizeof line - n, "%s%*s", first ? "" : " ",
				      cols[c].right ? L->w[c] : -L->w[c], v);
		first = false;
		if (n >= sizeof line)
			break;
	}
	/* no trailing blanks */
	while (n > 0 && n < sizeof line && line[n - 1] == ' ')
		line[--n] = 0;
	fprintf(f, "%s\n", line);
}

struct frame_opts {
	const char *broker;
	int width;
	size_t max_decisions; /* SIZE_MAX: all */
	bool clock;           /* the wall-clock time in the header (watch) */
};

/* Writes the human-readable view of st: header, workers, routes, models,
 * totals and the latest decisions (newest first), every line at most
 * o->width characters. */
static void render_frame(FILE *f, const Itt__ClusterStats *st, const struct frame_opts *o)
{
	char line[2048], a[64], b[64];
	int W = o->width;

	fmt_uptime(a, sizeof a, st->uptime_ms);
	fmt_clock(b, sizeof b, unix_now_ms());
	snprintf(line, sizeof line, "broker %s  up %s  coordinator %s%s%s", o->broker, a,
		 st->has_coordinator ? (st->coordinator ? "yes" : "no") : "-",
		 o->clock ? "  at " : "", o->clock ? b : "");
	put_line(f, line, W);
	snprintf(line, sizeof line, "requests %llu  completed %llu  failed %llu  replays %llu",
		 (unsigned long long)st->requests, (unsigned long long)st->completed,
		 (unsigned long long)st->failed, (unsigned long long)st->replays);
	put_line(f, line, W);
	fputc('\n', f);

	/* workers */
	struct layout L;
	plan_layout(st, W, &L);
	char cell[N_COLS][64];
	for (int c = 0; c < N_COLS; c++)
		snprintf(cell[c], sizeof cell[c], "%s", cols[c].title);
	print_row(f, &L, cell, true);
	bool any_pin = false;
	double tok_s = 0;
	uint64_t sessions = 0, ready = 0;
	for (size_t i = 0; i < st->n_workers; i++) {
		const Itt__WorkerStats *w = st->workers[i];
		worker_cells(w, cell);
		print_row(f, &L, cell, false);
		any_pin |= w->n_pinned > 0;
		tok_s += isfinite(w->tokens_per_s) ? w->tokens_per_s : 0;
		sessions += w->sessions;
		ready += w->state && strcmp(w->state, "lost");
	}
	if (!st->n_workers)
		fprintf(f, "(no workers)\n");
	if (any_pin)
		put_line(f, "* pinned by an operator (itt settings pin)", W);
	{
		size_t n = 0;
		line[0] = 0;
		for (int c = 0; c < N_COLS && n < sizeof line; c++)
			if (!L.on[c] && c != C_SLOW)
				n += (size_t)snprintf(line + n, sizeof line - n, "%s%s",
						      n ? ", " : "not shown (too narrow): ",
						      cols[c].title);
		if (line[0])
			put_line(f, line, W);
	}

	/* routes */
	fprintf(f, "\nROUTES\n");
	for (size_t i = 0; i < st->n_routes; i++) {
		const Itt__RouteStats *r = st->routes[i];
		size_t n = (size_t)snprintf(line, sizeof line, "  %s: ", or_dash(r->model));
		for (size_t k = 0; k < r->n_worker_ids && n < sizeof line; k++) {
			char id[32];
			fit(id, sizeof id, or_dash(r->worker_ids[k]), 24, true);
			n += (size_t)snprintf(line + n, sizeof line - n, "%s%s", k ? " -> " : "", id);
		}
		if (!r->n_worker_ids && n < sizeof line)
			n += (size_t)snprintf(line + n, sizeof line - n, "(empty)");
		if (n < sizeof line)
			snprintf(line + n, sizeof line - n, "  [%s, %u session%s]",
				 or_dash(r->source), r->sessions, r->sessions == 1 ? "" : "s");
		put_line(f, line, W);
	}
	if (!st->n_routes)
		fprintf(f, "  (none)\n");

	/* models */
	fprintf(f, "\n%-20s %7s %8s %8s %8s\n", "MODEL", "WORKERS", "RUNNING", "QUEUED", "LIMIT");
	for (size_t i = 0; i < st->n_models; i++) {
		const Itt__ModelStats *m = st->models[i];
		char name[24];
		fit(name, sizeof name, or_dash(m->name), 20, false);
		fprintf(f, "%-20s %7u %8u %8u %8u\n", name, m->workers, m->running, m->queued,
			m->queue_limit);
	}
	if (!st->n_models)
		fprintf(f, "(no models)\n");

	/* totals */
	snprintf(line, sizeof line, "\nTOTAL  %zu worker%s (%llu live)  %llu session%s  %.1f tok/s",
		 st->n_workers, st->n_workers == 1 ? "" : "s", (unsigned long long)ready,
		 (unsigned long long)sessions, sessions == 1 ? "" : "s", tok_s);
	fputc('\n', f);
	put_line(f, line + 1, W);

	/* decisions, newest first */
	size_t nd = st->n_decisions < o->max_decisions ? st->n_decisions : o->max_decisions;
	if (nd < st->n_decisions)
		fprintf(f, "\nDECISIONS (latest %zu of %zu)\n", nd, st->n_decisions);
	else
		fprintf(f, "\nDECISIONS\n");
	for (size_t k = 0; k < nd; k++) {
		const Itt__Decision *d = st->decisions[st->n_decisions - 1 - k];
		char target[20], knob[16], ov[24], nv[24];
		fmt_clock(a, sizeof a, d->time_ms);
		fit(target, sizeof target, or_dash(d->target), 16, true);
		fit(knob, sizeof knob, or_dash(d->knob), 12, false);
		fit(ov, sizeof ov, or_dash(d->old_value), 20, false);
		fit(nv, sizeof nv, or_dash(d->new_value), 20, false);
		snprintf(line, sizeof line, "  %s  %-16s %-12s %s -> %s  (%s) %s", a, target, knob,
			 ov, nv, or_dash(d->source), d->reason ? d->reason : "");
		put_line(f, line, W);
	}
	if (!st->n_decisions)
		fprintf(f, "  (none)\n");
}

/* --- JSON ------------------------------------------------------------------- */

static void json_settings(const Itt__Settings *s)
{
	if (!s) {
		printf("null");
		return;
	}
	printf("{");
	const char *sep = "";
	if (s->has_threads)
		printf("%s\"threads\":%u", sep, s->threads), sep = ",";
	if (s->has_batch_tokens)
		printf("%s\"batch_tokens\":%u", sep, s->batch_tokens), sep = ",";
	if (s->has_slow_ms)
		printf("%s\"slow_ms\":%u", sep, s->slow_ms);
	printf("}");
}

static void json_strings(char **v, size_t n)
{
	printf("[");
	for (size_t i = 0; i < n; i++) {
		printf("%s", i ? "," : "");
		jstr(v[i]);
	}
	printf("]");
}

static void json_telemetry(const Itt__Telemetry *t)
{
	if (!t) {
		printf("null");
		return;
	}
	printf("{\"time_ms\":%llu,\"layer_first\":%u,\"layer_last\":%u,\"steps\":%llu,"
	       "\"rows\":%llu,",
	       (unsigned long long)t->time_ms, t->layer_first, t->layer_last,
	       (unsigned long long)t->steps, (unsigned long long)t->rows);
	jnum("step_ms", t->step_ms, 3);
	putchar(',');
	jnum("rows_per_step", t->rows_per_step, 3);
	putchar(',');
	jnum("tokens_per_s", t->tokens_per_s, 3);
	putchar(',');
	jnum("busy", t->busy, 4);
	printf(",\"sessions\":%u,\"waiting\":%u,\"kv_used\":%u,\"kv_blocks\":%u,", t->sessions,
	       t->waiting, t->kv_used, t->kv_blocks);
	jnum("cpu", t->cpu, 3);
	printf(",\"rss_bytes\":%llu,\"cores\":%u,", (unsigned long long)t->rss_bytes, t->cores);
	if (t->has_ms_per_row_layer)
		jnum("ms_per_row_layer", t->ms_per_row_layer, 6);
	else
		printf("\"ms_per_row_layer\":null");
	putchar(',');
	printf("\"state\":");
	if (t->state)
		jstr(t->state);
	else
		printf("null");
	printf(",\"settings\":");
	json_settings(t->settings);
	printf("}");
}

static void print_stats_json(const Itt__ClusterStats *st)
{
	printf("{\"uptime_ms\":%llu,\"requests\":%llu,\"completed\":%llu,\"failed\":%llu,"
	       "\"replays\":%llu,\"coordinator\":%s,\"workers\":[",
	       (unsigned long long)st->uptime_ms, (unsigned long long)st->requests,
	       (unsigned long long)st->completed, (unsigned long long)st->failed,
	       (unsigned long long)st->replays, st->coordinator ? "true" : "false");
	for (size_t i = 0; i < st->n_workers; i++) {
		const Itt__WorkerStats *w = st->workers[i];
		printf("%s{\"id\":", i ? "," : "");
		jstr(w->id);
		printf(",\"host\":");
		jstr(w->host);
		printf(",\"model\":");
		jstr(w->model);
		printf(",\"layer_first\":%u,\"layer_last\":%u,\"n_layers\":%u,\"state\":",
		       w->layer_first, w->layer_last, w->n_layers);
		jstr(w->state);
		printf(",\"sessions\":%u,\"max_sessions\":%u,\"queue\":%u,", w->sessions,
		       w->max_sessions, w->queue);
		jnum("tokens_per_s", w->tokens_per_s, 3);
		putchar(',');
		jnum("last_heartbeat_ms", w->last_heartbeat_ms, 1);
		printf(",\"threads\":%u,\"steps\":%llu,\"pinned\":", w->threads,
		       (unsigned long long)w->steps);
		json_strings(w->pinned, w->n_pinned);
		printf(",\"telemetry\":");
		json_telemetry(w->telemetry);
		printf("}");
	}
	printf("],\"models\":[");
	for (size_t i = 0; i < st->n_models; i++) {
		const Itt__ModelStats *m = st->models[i];
		printf("%s{\"name\":", i ? "," : "");
		jstr(m->name);
		printf(",\"queued\":%u,\"queue_limit\":%u,\"running\":%u,\"workers\":%u}",
		       m->queued, m->queue_limit, m->running, m->workers);
	}
	printf("],\"routes\":[");
	for (size_t i = 0; i < st->n_routes; i++) {
		const Itt__RouteStats *r = st->routes[i];
		printf("%s{\"model\":", i ? "," : "");
		jstr(r->model);
		printf(",\"worker_ids\":");
		json_strings(r->worker_ids, r->n_worker_ids);
		printf(",\"source\":");
		jstr(r->source);
		printf(",\"sessions\":%u}", r->sessions);
	}
	printf("],\"decisions\":[");
	for (size_t i = 0; i < st->n_decisions; i++) {
		const Itt__Decision *d = st->decisions[i];
		printf("%s{\"time_ms\":%llu,\"target\":", i ? "," : "",
		       (unsigned long long)d->time_ms);
		jstr(d->target);
		printf(",\"knob\":");
		jstr(d->knob);
		printf(",\"old_value\":");
		jstr(d->old_value);
		printf(",\"new_value\":");
		jstr(d->new_value);
		printf(",\"reason\":");
		jstr(d->reason);
		printf(",\"source\":");
		jstr(d->source);
		printf("}");
	}
	printf("]}\n");
}

/* --- itt stats ---------------------------------------------------------------- */

static const char stats_help[] =
	"usage: itt stats [--broker ENDPOINT] [--json] [--width N] [--api-key KEY]\n"
	"                 [--timeout-ms MS] [--watch [--interval-ms N] [--count N]]\n"
	"Asks the broker (default $ITT_BROKER or " DEFAULT_BROKER ") for its statistics and\n"
	"prints: a header (broker, uptime, whether a coordinator is connected, requests,\n"
	"completed, failed, replays); a row per worker: id, host, model, layers [first,last),\n"
	"state, sessions/max, rows per step, mean step ms, generated tokens/s, queue (steps\n"
	"unanswered), KV blocks used/total, CPU (cores busy), RSS MiB, threads, budget\n"
	"(batch_tokens) and, when any worker uses it, slow_ms - a knob pinned by an operator\n"
	"is marked '*' (e.g. 4*), a value not reported yet is '-'; the routes (model: w1 ->\n"
	"w2 -> ..., who formed them, sessions on them); a row per model; totals; and the\n"
	"latest placement and settings decisions, newest first (time, target, knob,\n"
	"old -> new, who, why).  Lines fit --width characters (default: the terminal's,\n"
	"else 120; 40..400): long names are cut with '~' and, when still too wide, the\n"
	"least important columns are left out and named under the table.\n"
	"--json prints the ClusterStats message as one JSON object: uptime_ms, requests,\n"
	"completed, failed, replays, coordinator, workers (with pinned and telemetry),\n"
	"models, routes, decisions (oldest first).\n"
	"--watch redraws the view every --interval-ms (default 1000, 100..3600000) until\n"
	"Ctrl-C or SIGTERM (exit 0), or for --count N frames. On a terminal it draws full\n"
	"screen and restores the terminal on exit; otherwise (or with --json, one object a\n"
	"line) each frame is printed in turn, frames separated by a blank line. A frame\n"
	"the broker did not answer says so, and the watch goes on.\n"
	"--timeout-ms: how long to wait for a reply (default 5000; with --watch, the interval\n"
	"when shorter). The API key defaults to $ITT_API_KEY. Exit 1 when the broker answered\n"
	"ERROR or nothing (with --watch: when the last frame had no answer).\n";

static int term_width(void)
{
	struct winsize ws;
	if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col)
		return ws.ws_col;
	return 0;
}

static int term_rows(void)
{
	struct winsize ws;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row)
		return ws.ws_row;
	return 24;
}

static void sleep_until(double t_ms)
{
	while (!g_stop) {
		double left = t_ms - cli_now_ms();
		if (left <= 0)
			return;
		if (left > 50)
			left = 50;
		struct timespec ts = {0, (long)(left * 1e6)};
		nanosleep(&ts, NULL);
	}
}

struct watch {
	const char *broker;
	itt_client_t *client;
	long interval_ms, count, timeout_ms, width;
	bool json, tty;
};

/* One frame: asks for STATS and draws it (or the error).  Returns 0, or the
 * error code when the broker did not answer. */
static int watch_frame(const struct watch *wt, long frame_no)
{
	Itt__ClusterStats *st = NULL;
	struct itt_err err = {0};
	int rc = itt_stats(wt->client, &st, (int)wt->timeout_ms, &err);
	if (g_stop) {
		itt_stats_free(&st);
		return rc;
	}
	if (wt->json) {
		if (rc)
			fprintf(stderr, "itt stats: %s: %s (broker %s)\n", itt_code_name(err.code),
				err.msg, wt->broker);
		else
			print_stats_json(st);
		fflush(stdout);
		fflush(stderr);
		itt_stats_free(&st);
		return rc;
	}
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f) {
		itt_stats_free(&st);
		return ITT__CODE__INTERNAL;
	}
	int width = wt->width ? (int)wt->width : (wt->tty ? term_width() : 120);
	if (width < 40)
		width = 40;
	struct frame_opts o = {wt->broker, width, 10, true};
	if (rc) {
		char line[1024], clock[16];
		fmt_clock(clock, sizeof clock, unix_now_ms());
		snprintf(line, sizeof line, "broker %s  at %s", wt->broker, clock);
		put_line(f, line, width);
		snprintf(line, sizeof line, "no answer: %s: %s", itt_code_name(err.code),
			 err.msg);
		put_line(f, line, width);
	} else {
		render_frame(f, st, &o);
	}
	fclose(f);
	itt_stats_free(&st);
	if (wt->tty) {
		/* Home, then the frame cut to the screen's rows, each line
		 * clearing what the last frame left to its right, then clear
		 * below: no flash between frames. */
		int rows = term_rows() - 1, r = 0;
		fputs("\x1b[H", stdout);
		for (char *p = buf; *p && r < rows; r++) {
			char *nl = strchr(p, '\n');
			size_t n = nl ? (size_t)(nl - p) : strlen(p);
			fwrite(p, 1, n, stdout);
			fputs("\x1b[K\n", stdout);
			p += n + (nl ? 1 : 0);
		}
		fputs("\x1b[J", stdout);
	} else {
		if (frame_no > 0)
			fputc('\n', stdout);
		fwrite(buf, 1, len, stdout);
	}
	fflush(stdout);
	free(buf);
	return rc;
}

static int stats_watch(struct watch *wt)
{
	install_signals();
	wt->tty = !wt->json && isatty(STDOUT_FILENO);
	if (wt->tty) /* alternate screen, cursor hidden */
		fputs("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J", stdout);
	int rc = 0;
	double t0 = cli_now_ms();
	for (long k = 0; !g_stop && (wt->count <= 0 || k < wt->count); k++) {
		if (k > 0)
			sleep_until(t0 + (double)k * (double)wt->interval_ms);
		if (g_stop)
			break;
		rc = watch_frame(wt, k);
		/* after a long stall, no burst of frames to catch up */
		if (cli_now_ms() - (t0 + (double)k * (double)wt->interval_ms) > (double)wt->interval_ms)
			t0 = cli_now_ms() - (double)k * (double)wt->interval_ms;
	}
	if (wt->tty)
		fputs("\x1b[?25h\x1b[?1049l", stdout);
	fflush(stdout);
	if (g_stop)
		return 0;
	return rc ? 1 : 0;
}

int cmd_stats(int argc, char **argv)
{
	struct cluster_opts co = {.timeout_ms = -1};
	const char *broker = env_or("ITT_BROKER", DEFAULT_BROKER);
	bool json = false, watch = false, timing = false;
	long interval = 1000, count = 0, width = 0;
	argc = take_cluster_opts(argc, argv, &co, "stats");
	if (argc < 0)
		return 2;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		long *num = NULL, lo = 0, hi = 0;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(stats_help, stdout);
			return 0;
		} else if (!strcmp(a, "--json")) {
			json = true;
			continue;
		} else if (!strcmp(a, "--watch")) {
			watch = true;
			continue;
		} else if (!strcmp(a, "--broker")) {
			if (!v) {
				fprintf(stderr, "itt stats: --broker needs a value\n");
				return 2;
			}
			broker = v;
			i++;
			continue;
		} else if (!strcmp(a, "--interval-ms")) {
			num = &interval, lo = 100, hi = 3600000, timing = true;
		} else if (!strcmp(a, "--count")) {
			num = &count, lo = 1, hi = 1000000000, timing = true;
		} else if (!strcmp(a, "--width")) {
			num = &width, lo = 40, hi = 400;
		} else {
			fprintf(stderr, "itt stats: unknown option %s\n%s", a, stats_help);
			return 2;
		}
		if (!v || !cli_parse_long(v, lo, hi, num)) {
			fprintf(stderr, "itt stats: %s needs a number in %ld..%ld%s%s%s\n", a, lo, hi,
				v ? ", not \"" : "", v ? v : "", v ? "\"" : "");
			return 2;
		}
		i++;
	}
	if (timing && !watch) {
		fprintf(stderr, "itt stats: --interval-ms and --count need --watch\n");
		return 2;
	}
	if (co.timeout_ms < 0)
		co.timeout_ms = watch ? (interval < 5000 ? interval : 5000) : 5000;
	itt_client_t *c = open_client(broker, &co, "stats");
	if (!c)
		return 2;
	int rc = 0;
	if (watch) {
		struct watch wt = {broker, c, interval, count, co.timeout_ms, width, json, false};
		rc = stats_watch(&wt);
		itt_client_destroy(&c);
		return rc;
	}
	Itt__ClusterStats *st = NULL;
	struct itt_err err = {0};
	if (itt_stats(c, &st, (int)co.timeout_ms, &err)) {
		fprintf(stderr, "itt stats: %s: %s (broker %s)\n", itt_code_name(err.code),
			err.msg, broker);
		rc = 1;
	} else if (json) {
		print_stats_json(st);
	} else {
		int w = width ? (int)width : term_width();
		struct frame_opts o = {broker, w ? (w < 40 ? 40 : w) : 120, (size_t)-1, false};
		render_frame(stdout, st, &o);
	}
	itt_stats_free(&st);
	itt_client_destroy(&c);
	return rc;
}

/* --- itt settings ------------------------------------------------------------- */

static const char settings_help[] =
	"usage: itt settings get [WORKER] [--json]\n"
	"       itt settings set WORKER KNOB=VALUE... [--pin] [--reason TEXT] [--json]\n"
	"       itt settings pin WORKER KNOB...  [--reason TEXT] [--json]\n"
	"       itt settings unpin WORKER KNOB... [--reason TEXT] [--json]\n"
	"  common: [--broker ENDPOINT] [--api-key KEY] [--timeout-ms MS]\n"
	"Shows and changes the live settings (\"knobs\") of a cluster's workers:\n"
	"  threads       compute threads, 1..64\n"
	"  batch_tokens  rows per forward step (the step budget), 1..the worker's max\n"
	"  slow_ms       debug: sleep this long after each step, 0..10000\n"
	"get asks the broker for STATS and prints, per worker (or the one named), the\n"
	"settings in force as the worker last reported them ('-': not reported yet) and\n"
	"its pinned knobs. set sends SET to the broker, which passes the values to the\n"
	"worker (it applies them between two steps); --pin also pins the knobs set. pin\n"
	"pins knobs at their current values; unpin releases them. A pinned knob is never\n"
	"changed by the coordinator; pins live in the broker and survive the worker's\n"
	"re-registration. The broker's SET_REPLY (the values now requested of the worker\n"
	"and its pinned knobs) is printed, or its ERROR as \"itt settings CMD: CODE:\n"
	"reason\" (exit 1): NOT_FOUND for an unknown worker, INVALID_ARGUMENT for a value\n"
	"out of range or a pinned knob. Unknown knobs and values out of range are refused\n"
	"here (exit 2). --reason TEXT is sent with the change (SettingsChange.reason).\n"
	"The broker defaults to $ITT_BROKER or " DEFAULT_BROKER ", the key to $ITT_API_KEY,\n"
	"--timeout-ms to 5000.\n";

static const char knob_list[] = "threads, batch_tokens, slow_ms";

static void print_settings_line(const Itt__Settings *s, char **pinned, size_t n_pinned)
{
	bool any = false;
	if (s && s->has_threads)
		printf("%sthreads=%u", any ? " " : "", s->threads), any = true;
	if (s && s->has_batch_tokens)
		printf("%sbatch_tokens=%u", any ? " " : "", s->batch_tokens), any = true;
	if (s && s->has_slow_ms)
		printf("%sslow_ms=%u", any ? " " : "", s->slow_ms), any = true;
	if (!any)
		printf("(no values)");
	printf("; pinned: ");
	for (size_t i = 0; i < n_pinned; i++) {
		char v[72];
		fit(v, sizeof v, pinned[i], 64, false);
		printf("%s%s", i ? "," : "", v);
	}
	if (!n_pinned)
		printf("none");
	printf("\n");
}

static int settings_get(itt_client_t *c, const char *broker, const char *worker, bool json,
			int timeout_ms)
{
	Itt__ClusterStats *st = NULL;
	struct itt_err err = {0};
	if (itt_stats(c, &st, timeout_ms, &err)) {
		fprintf(stderr, "itt settings get: %s: %s (broker %s)\n", itt_code_name(err.code),
			err.msg, broker);
		return 1;
	}
	size_t shown = 0, idw = 6;
	for (size_t i = 0; i < st->n_workers; i++) {
		const Itt__WorkerStats *w = st->workers[i];
		size_t n = w->id ? strlen(w->id) : 1;
		if ((!worker || (w->id && !strcmp(w->id, worker))) && n > idw)
			idw = n > 40 ? 40 : n;
	}
	if (json)
		printf("[");
	else
		printf("%-*s %7s %12s %7s  %s\n", (int)idw, "WORKER", "THREADS", "BATCH_TOKENS",
		       "SLOW_MS", "PINNED");
	for (size_t i = 0; i < st->n_workers; i++) {
		const Itt__WorkerStats *w = st->workers[i];
		if (worker && (!w->id || strcmp(w->id, worker)))
			continue;
		if (json) {
			printf("%s{\"id\":", shown ? "," : "");
			jstr(w->id);
			printf(",\"settings\":");
			json_settings(settings_of(w));
			printf(",\"pinned\":");
			json_strings(w->pinned, w->n_pinned);
			printf("}");
		} else {
			char id[48], th[24], bt[24], sl[24], pins[256];
			size_t n = 0;
			fit(id, sizeof id, or_dash(w->id), (int)idw, true);
			knob_cell(th, sizeof th, w, "threads");
			knob_cell(bt, sizeof bt, w, "batch_tokens");
			knob_cell(sl, sizeof sl, w, "slow_ms");
			pins[0] = 0;
			for (size_t k = 0; k < w->n_pinned && n < sizeof pins; k++)
				n += (size_t)snprintf(pins + n, sizeof pins - n, "%s%s", k ? "," : "",
						      or_dash(w->pinned[k]));
			char pf[64];
			fit(pf, sizeof pf, w->n_pinned ? pins : "-", 60, false);
			printf("%-*s %7s %12s %7s  %s\n", (int)idw, id, th, bt, sl, pf);
		}
		shown++;
	}
	if (json)
		printf("]\n");
	int rc = 0;
	if (worker && !shown) {
		fprintf(stderr, "itt settings get: NOT_FOUND: no worker \"%s\" at %s\n", worker,
			broker);
		rc = 1;
	} else if (!json && !shown) {
		printf("(no workers)\n");
	}
	if (!json && shown)
		printf("('*': pinned; '-': not reported yet)\n");
	itt_stats_free(&st);
	return rc;
}

int cmd_settings(int argc, char **argv)
{
	struct cluster_opts co = {.timeout_ms = 5000};
	const char *broker = env_or("ITT_BROKER", DEFAULT_BROKER);
	const char *sub = NULL, *worker = NULL, *reason = NULL;
	bool json = false;
	struct itt_settings_change ch = {0};
	argc = take_cluster_opts(argc, argv, &co, "settings");
	if (argc < 0)
		return 2;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(settings_help, stdout);
			return 0;
		}
	}
	if (argc < 1) {
		fprintf(stderr, "itt settings: a subcommand is needed (get, set, pin, unpin)\n%s",
			settings_help);
		return 2;
	}
	sub = argv[0];
	bool is_get = !strcmp(sub, "get"), is_set = !strcmp(sub, "set"),
	     is_pin = !strcmp(sub, "pin"), is_unpin = !strcmp(sub, "unpin");
	if (!is_get && !is_set && !is_pin && !is_unpin) {
		fprintf(stderr, "itt settings: unknown subcommand \"%s\" (get, set, pin, unpin)\n",
			sub);
		return 2;
	}
	char cmd[32];
	snprintf(cmd, sizeof cmd, "settings %s", sub);
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--broker") || !strcmp(a, "--reason")) {
			if (!v) {
				fprintf(stderr, "itt %s: %s needs a value\n", cmd, a);
				return 2;
			}
			*(!strcmp(a, "--broker") ? &broker : &reason) = v;
			i++;
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (!strcmp(a, "--pin") && is_set) {
			ch.pin = true;
		} else if (a[0] == '-' && a[1] == '-') {
			fprintf(stderr, "itt %s: unknown option %s (see itt settings --help)\n", cmd,
				a);
			return 2;
		} else if (!worker) {
			const char *eq = strchr(a, '=');
			char name[64];
			if (eq && (size_t)(eq - a) < sizeof name) {
				memcpy(name, a, (size_t)(eq - a));
				name[eq - a] = 0;
				if (itt_knob_parse(name)) {
					fprintf(stderr,
						"itt %s: WORKER comes first, then the knobs (got "
						"\"%s\")\n",
						cmd, a);
					return 2;
				}
			}
			worker = a;
		} else if (is_get) {
			fprintf(stderr, "itt %s: one WORKER at most (got \"%s\" too)\n", cmd, a);
			return 2;
		} else if (is_set) {
			const char *eq = strchr(a, '=');
			char name[64];
			if (!eq || eq == a || (size_t)(eq - a) >= sizeof name) {
				fprintf(stderr, "itt %s: expected KNOB=VALUE, got \"%s\" (knobs: %s)\n",
					cmd, a, knob_list);
				return 2;
			}
			memcpy(name, a, (size_t)(eq - a));
			name[eq - a] = 0;
			unsigned k = itt_knob_parse(name);
			long val;
			struct itt_err err = {0};
			if (!k) {
				fprintf(stderr, "itt %s: unknown knob \"%s\" (knobs: %s)\n", cmd, name,
					knob_list);
				return 2;
			}
			if (ch.set & k) {
				fprintf(stderr, "itt %s: knob %s given twice\n", cmd, name);
				return 2;
			}
			if (!cli_parse_long(eq + 1, -1000000000L, 4294967295L, &val)) {
				fprintf(stderr, "itt %s: %s: \"%s\" is not a whole number\n", cmd, name,
					eq + 1);
				return 2;
			}
			if (itt_knob_check(k, val, &err)) {
				fprintf(stderr, "itt %s: %s\n", cmd, err.msg);
				return 2;
			}
			ch.set |= k;
			if (k == ITT_KNOB_THREADS)
				ch.threads = (uint32_t)val;
			else if (k == ITT_KNOB_BATCH_TOKENS)
				ch.batch_tokens = (uint32_t)val;
			else
				ch.slow_ms = (uint32_t)val;
		} else {
			unsigned k = itt_knob_parse(a);
			if (!k) {
				fprintf(stderr, "itt %s: unknown knob \"%s\" (knobs: %s)%s\n", cmd, a,
					knob_list,
					strchr(a, '=') && is_pin
						? "; to set and pin a value: itt settings set WORKER "
						  "KNOB=VALUE --pin"
						: "");
				return 2;
			}
			*(is_pin ? &ch.pin_knobs : &ch.unpin_knobs) |= k;
		}
	}
	if (is_get) {
		if (reason) {
			fprintf(stderr, "itt settings get: --reason applies to set, pin and unpin\n");
			return 2;
		}
		itt_client_t *c = open_client(broker, &co, cmd);
		if (!c)
			return 2;
		int rc = settings_get(c, broker, worker, json, (int)co.timeout_ms);
		itt_client_destroy(&c);
		return rc;
	}
	if (!worker) {
		fprintf(stderr, "itt %s: WORKER is required (its id, as itt stats shows it)\n", cmd);
		return 2;
	}
	if (!ch.set && !ch.pin_knobs && !ch.unpin_knobs) {
		fprintf(stderr, "itt %s: no knob given (knobs: %s)\n", cmd, knob_list);
		return 2;
	}
	ch.worker_id = worker;
	ch.reason = reason;
	itt_client_t *c = open_client(broker, &co, cmd);
	if (!c)
		return 2;
	Itt__SettingsReply *rep = NULL;
	struct itt_err err = {0};
	int code = itt_client_settings(c, &ch, &rep, (int)co.timeout_ms, &err);
	int rc = 0;
	if (code) {
		fprintf(stderr, "itt %s: %s: %s\n", cmd, itt_code_name(err.code), err.msg);
		rc = 1;
	} else if (json) {
		printf("{\"worker_id\":");
		jstr(rep->worker_id ? rep->worker_id : worker);
		printf(",\"settings\":");
		json_settings(rep->settings);
		printf(",\"pinned\":");
		json_strings(rep->pinned, rep->n_pinned);
		printf("}\n");
	} else {
		char id[72];
		fit(id, sizeof id, rep->worker_id && *rep->worker_id ? rep->worker_id : worker, 64,
		    true);
		printf("%s: ", id);
		print_settings_line(rep->settings, rep->pinned, rep->n_pinned);
	}
	itt_settings_reply_free(&rep);
	itt_client_destroy(&c);
	return rc;
}
