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
#include "clock.h"
#include "libitt.h"
#include "sig.h"

#define MIB (1024.0 * 1024.0)

/* --- small output helpers --------------------------------------------------- */

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
	fmt_clock(b, sizeof b, clock_wall_ms());
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

static json_t *json_settings(const Itt__Settings *s)
{
	if (!s)
		return json_null();
	json_t *j = json_object();
	if (s->has_threads)
		json_object_set_new(j, "threads", json_integer(s->threads));
	if (s->has_batch_tokens)
		json_object_set_new(j, "batch_tokens", json_integer(s->batch_tokens));
	if (s->has_slow_ms)
		json_object_set_new(j, "slow_ms", json_integer(s->slow_ms));
	return j;
}

static json_t *json_strings(char **v, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, cli_json_str(v[i]));
	return a;
}

static json_t *json_telemetry(const Itt__Telemetry *t)
{
	if (!t)
		return json_null();
	json_t *j = json_object();
	json_object_set_new(j, "time_ms", cli_json_u64(t->time_ms));
	json_object_set_new(j, "layer_first", json_integer(t->layer_first));
	json_object_set_new(j, "layer_last", json_integer(t->layer_last));
	json_object_set_new(j, "steps", cli_json_u64(t->steps));
	json_object_set_new(j, "rows", cli_json_u64(t->rows));
	json_object_set_new(j, "step_ms", cli_json_num(t->step_ms, "%.3f"));
	json_object_set_new(j, "rows_per_step", cli_json_num(t->rows_per_step, "%.3f"));
	json_object_set_new(j, "tokens_per_s", cli_json_num(t->tokens_per_s, "%.3f"));
	json_object_set_new(j, "busy", cli_json_num(t->busy, "%.4f"));
	json_object_set_new(j, "sessions", json_integer(t->sessions));
	json_object_set_new(j, "waiting", json_integer(t->waiting));
	json_object_set_new(j, "kv_used", json_integer(t->kv_used));
	json_object_set_new(j, "kv_blocks", json_integer(t->kv_blocks));
	json_object_set_new(j, "cpu", cli_json_num(t->cpu, "%.3f"));
	json_object_set_new(j, "rss_bytes", cli_json_u64(t->rss_bytes));
	json_object_set_new(j, "cores", json_integer(t->cores));
	json_object_set_new(j, "ms_per_row_layer",
			    t->has_ms_per_row_layer ? cli_json_num(t->ms_per_row_layer, "%.6f")
						    : json_null());
	json_object_set_new(j, "state", t->state ? cli_json_str(t->state) : json_null());
	json_object_set_new(j, "settings", json_settings(t->settings));
	return j;
}

static json_t *json_worker(const Itt__WorkerStats *w)
{
	json_t *j = json_object();
	json_object_set_new(j, "id", cli_json_str(w->id));
	json_object_set_new(j, "host", cli_json_str(w->host));
	json_object_set_new(j, "model", cli_json_str(w->model));
	json_object_set_new(j, "layer_first", json_integer(w->layer_first));
	json_object_set_new(j, "layer_last", json_integer(w->layer_last));
	json_object_set_new(j, "n_layers", json_integer(w->n_layers));
	json_object_set_new(j, "state", cli_json_str(w->state));
	json_object_set_new(j, "sessions", json_integer(w->sessions));
	json_object_set_new(j, "max_sessions", json_integer(w->max_sessions));
	json_object_set_new(j, "queue", json_integer(w->queue));
	json_object_set_new(j, "tokens_per_s", cli_json_num(w->tokens_per_s, "%.3f"));
	json_object_set_new(j, "last_heartbeat_ms", cli_json_num(w->last_heartbeat_ms, "%.1f"));
	json_object_set_new(j, "threads", json_integer(w->threads));
	json_object_set_new(j, "steps", cli_json_u64(w->steps));
	json_object_set_new(j, "pinned", json_strings(w->pinned, w->n_pinned));
	json_object_set_new(j, "telemetry", json_telemetry(w->telemetry));
	return j;
}

/* The ClusterStats message as one JSON object. */
static json_t *json_stats(const Itt__ClusterStats *st)
{
	json_t *j = json_object(), *a;
	json_object_set_new(j, "uptime_ms", cli_json_u64(st->uptime_ms));
	json_object_set_new(j, "requests", cli_json_u64(st->requests));
	json_object_set_new(j, "completed", cli_json_u64(st->completed));
	json_object_set_new(j, "failed", cli_json_u64(st->failed));
	json_object_set_new(j, "replays", cli_json_u64(st->replays));
	json_object_set_new(j, "coordinator", json_boolean(st->coordinator));
	json_object_set_new(j, "workers", a = json_array());
	for (size_t i = 0; i < st->n_workers; i++)
		json_array_append_new(a, json_worker(st->workers[i]));
	json_object_set_new(j, "models", a = json_array());
	for (size_t i = 0; i < st->n_models; i++) {
		const Itt__ModelStats *m = st->models[i];
		json_t *o = json_object();
		json_object_set_new(o, "name", cli_json_str(m->name));
		json_object_set_new(o, "queued", json_integer(m->queued));
		json_object_set_new(o, "queue_limit", json_integer(m->queue_limit));
		json_object_set_new(o, "running", json_integer(m->running));
		json_object_set_new(o, "workers", json_integer(m->workers));
		json_array_append_new(a, o);
	}
	json_object_set_new(j, "routes", a = json_array());
	for (size_t i = 0; i < st->n_routes; i++) {
		const Itt__RouteStats *r = st->routes[i];
		json_t *o = json_object();
		json_object_set_new(o, "model", cli_json_str(r->model));
		json_object_set_new(o, "worker_ids", json_strings(r->worker_ids, r->n_worker_ids));
		json_object_set_new(o, "source", cli_json_str(r->source));
		json_object_set_new(o, "sessions", json_integer(r->sessions));
		json_array_append_new(a, o);
	}
	json_object_set_new(j, "decisions", a = json_array());
	for (size_t i = 0; i < st->n_decisions; i++) {
		const Itt__Decision *d = st->decisions[i];
		json_t *o = json_object();
		json_object_set_new(o, "time_ms", cli_json_u64(d->time_ms));
		json_object_set_new(o, "target", cli_json_str(d->target));
		json_object_set_new(o, "knob", cli_json_str(d->knob));
		json_object_set_new(o, "old_value", cli_json_str(d->old_value));
		json_object_set_new(o, "new_value", cli_json_str(d->new_value));
		json_object_set_new(o, "reason", cli_json_str(d->reason));
		json_object_set_new(o, "source", cli_json_str(d->source));
		json_array_append_new(a, o);
	}
	return j;
}

/* --- itt stats ---------------------------------------------------------------- */

struct stats_opts {
	const char *broker;
	bool json, watch;
	long interval_ms, count, width; /* 0: not given */
	struct cluster_opts co;
};

#define STATS_AT(f) offsetof(struct stats_opts, f)

static const struct opt stats_opts_table[] = {
	{"broker", 0, OPT_STR, DEFAULT_BROKER, 1, 4096, STATS_AT(broker), "ENDPOINT",
	 "the broker's front end", .env = "ITT_BROKER"},
	{"json", 0, OPT_FLAG, NULL, 0, 0, STATS_AT(json), NULL,
	 "the ClusterStats message as one JSON object (a line per frame)"},
	{"width", 0, OPT_LONG, NULL, 40, 400, STATS_AT(width), "N",
	 "fit lines to N characters (default: the terminal's, else 120)"},
	{"watch", 0, OPT_FLAG, NULL, 0, 0, STATS_AT(watch), NULL,
	 "redraw the view until Ctrl-C or SIGTERM (exit 0)"},
	{"interval-ms", 0, OPT_LONG, NULL, 100, 3600000, STATS_AT(interval_ms), "N",
	 "--watch: a frame every N ms (default 1000)"},
	{"count", 0, OPT_LONG, NULL, 1, 1000000000, STATS_AT(count), "N",
	 "--watch: stop after N frames"},
	CLUSTER_CONN_OPTS(struct stats_opts, co, NULL,
			  "reply timeout (default 5000; --watch: the interval if shorter)"),
	CLUSTER_REQ_OPTS(struct stats_opts, co, OPT_HIDDEN),
};

static const struct opt_spec stats_spec = {
	.prog = "itt stats",
	.usage = "[--broker ENDPOINT] [--json] [--width N] [--watch [--interval-ms N] [--count N]]",
	.about = "\n"
		 "Asks the broker for its statistics and prints: a header (broker, uptime,\n"
		 "whether a coordinator is connected, requests, completed, failed, replays); a\n"
		 "row per worker: id, host, model, layers [first,last), state, sessions/max,\n"
		 "rows per step, mean step ms, generated tokens/s, queue (steps unanswered), KV\n"
		 "blocks used/total, CPU (cores busy), RSS MiB, threads, budget (batch_tokens)\n"
		 "and, when any worker uses it, slow_ms - a knob pinned by an operator is marked\n"
		 "'*' (e.g. 4*), a value not reported yet is '-'; the routes (model: w1 -> w2 ->\n"
		 "..., who formed them, sessions on them); a row per model; totals; and the\n"
		 "latest placement and settings decisions, newest first (time, target, knob,\n"
		 "old -> new, who, why). Lines fit --width characters: long names are cut with\n"
		 "'~' and, when still too wide, the least important columns are left out and\n"
		 "named under the table.\n"
		 "--json prints the ClusterStats message as one JSON object: uptime_ms,\n"
		 "requests, completed, failed, replays, coordinator, workers (with pinned and\n"
		 "telemetry), models, routes, decisions (oldest first).\n"
		 "--watch on a terminal draws full screen and restores the terminal on exit;\n"
		 "otherwise (or with --json, one object a line) each frame is printed in turn,\n"
		 "frames separated by a blank line. A frame the broker did not answer says so,\n"
		 "and the watch goes on.",
	.opts = stats_opts_table,
	.n_opts = OPTS_N(stats_opts_table),
	.epilog = "Exit 1 when the broker answered ERROR or nothing (with --watch: when the last\n"
		  "frame had no answer).",
};

/* The terminal's columns (0 when stdout is not a terminal) and rows (24
 * when unknown). */
static void term_size(int *columns, int *rows)
{
	struct winsize ws;
	bool ok = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0;
	*columns = ok && isatty(STDOUT_FILENO) && ws.ws_col ? ws.ws_col : 0;
	*rows = ok && ws.ws_row ? ws.ws_row : 24;
}

static int term_width(void)
{
	int columns, rows;
	term_size(&columns, &rows);
	return columns;
}

/* Sleeps until clock_mono_ms() reaches t_ms, or a stop signal. */
static void sleep_until(uint64_t t_ms)
{
	for (uint64_t now; !sig_stop && (now = clock_mono_ms()) < t_ms;)
		sleep_ms(t_ms - now < 50 ? (long)(t_ms - now) : 50);
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
	if (sig_stop) {
		itt_stats_free(&st);
		return rc;
	}
	if (wt->json) {
		if (rc)
			fprintf(stderr, "itt stats: %s: %s (broker %s)\n", itt_code_name(err.code),
				err.msg, wt->broker);
		else
			cli_json_print(json_stats(st), stdout);
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
		fmt_clock(clock, sizeof clock, clock_wall_ms());
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
		int columns, rows, r = 0;
		term_size(&columns, &rows);
		rows--;
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
	sig_stop_install();
	wt->tty = !wt->json && isatty(STDOUT_FILENO);
	if (wt->tty) /* alternate screen, cursor hidden */
		fputs("\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J", stdout);
	int rc = 0;
	uint64_t t0 = clock_mono_ms(), iv = (uint64_t)wt->interval_ms;
	for (long k = 0; !sig_stop && (wt->count <= 0 || k < wt->count); k++) {
		if (k > 0)
			sleep_until(t0 + (uint64_t)k * iv);
		if (sig_stop)
			break;
		rc = watch_frame(wt, k);
		/* after a long stall, no burst of frames to catch up */
		if (clock_mono_ms() > t0 + (uint64_t)k * iv + iv)
			t0 = clock_mono_ms() - (uint64_t)k * iv;
	}
	if (wt->tty)
		fputs("\x1b[?25h\x1b[?1049l", stdout);
	fflush(stdout);
	if (sig_stop)
		return 0;
	return rc ? 1 : 0;
}

int cmd_stats(int argc, char **argv)
{
	struct stats_opts so = {.co.timeout_ms = -1};
	int prc = opts_parse(&stats_spec, argc, argv, &so, NULL);
	if (prc != OPTS_OK)
		return cli_exit(prc);
	struct cluster_opts co = so.co;
	const char *broker = so.broker;
	bool json = so.json, watch = so.watch;
	long interval = so.interval_ms ? so.interval_ms : 1000, count = so.count, width = so.width;
	if ((so.interval_ms || so.count) && !watch) {
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
		cli_json_print(json_stats(st), stdout);
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

struct settings_opts {
	const char *broker, *reason;
	bool json, pin;
	struct cluster_opts co;
};

#define SETTINGS_AT(f) offsetof(struct settings_opts, f)
#define SETTINGS_OPTS                                                                              \
	{"broker", 0, OPT_STR, DEFAULT_BROKER, 1, 4096, SETTINGS_AT(broker), "ENDPOINT",           \
	 "the broker's front end", .env = "ITT_BROKER"},                                           \
	{"reason", 0, OPT_STR, NULL, 0, 4096, SETTINGS_AT(reason), "TEXT",                         \
	 "set, pin, unpin: sent with the change (SettingsChange.reason)"},                         \
	{"json", 0, OPT_FLAG, NULL, 0, 0, SETTINGS_AT(json), NULL, "print JSON"},                  \
	CLUSTER_CONN_OPTS(struct settings_opts, co, "5000", "how long to wait for a reply"),       \
	CLUSTER_REQ_OPTS(struct settings_opts, co, OPT_HIDDEN)

static const struct opt settings_opts_table[] = {SETTINGS_OPTS};
static const struct opt settings_set_opts_table[] = {
	SETTINGS_OPTS,
	{"pin", 0, OPT_FLAG, NULL, 0, 0, SETTINGS_AT(pin), NULL, "set: also pin the knobs set"},
};

static const char settings_about[] =
	"\nShows and changes the live settings (\"knobs\") of a cluster's workers:\n"
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
	"here (exit 2).";

static const char settings_usage[] =
	"get [WORKER] [options]\n"
	"       itt settings set WORKER KNOB=VALUE... [--pin] [options]\n"
	"       itt settings pin|unpin WORKER KNOB... [options]";

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
	json_t *arr = json ? json_array() : NULL;
	if (!json)
		printf("%-*s %7s %12s %7s  %s\n", (int)idw, "WORKER", "THREADS", "BATCH_TOKENS",
		       "SLOW_MS", "PINNED");
	for (size_t i = 0; i < st->n_workers; i++) {
		const Itt__WorkerStats *w = st->workers[i];
		if (worker && (!w->id || strcmp(w->id, worker)))
			continue;
		if (json) {
			json_t *o = json_object();
			json_object_set_new(o, "id", cli_json_str(w->id));
			json_object_set_new(o, "settings", json_settings(settings_of(w)));
			json_object_set_new(o, "pinned", json_strings(w->pinned, w->n_pinned));
			json_array_append_new(arr, o);
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
		cli_json_print(arr, stdout);
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

/* A WORKER given after knobs ("threads=2 w1"): its name is a knob's. */
static bool looks_like_knob(const char *a)
{
	const char *eq = strchr(a, '=');
	char name[64];
	if (!eq || (size_t)(eq - a) >= sizeof name)
		return false;
	memcpy(name, a, (size_t)(eq - a));
	name[eq - a] = 0;
	return itt_knob_parse(name) != 0;
}

/* KNOB=VALUE of `settings set` into ch; 0, or 2 after saying why. */
static int parse_knob_value(const char *cmd, const char *a, struct itt_settings_change *ch)
{
	const char *eq = strchr(a, '=');
	char name[64];
	if (!eq || eq == a || (size_t)(eq - a) >= sizeof name) {
		fprintf(stderr, "itt %s: expected KNOB=VALUE, got \"%s\" (knobs: %s)\n", cmd, a,
			knob_list);
		return 2;
	}
	memcpy(name, a, (size_t)(eq - a));
	name[eq - a] = 0;
	unsigned k = itt_knob_parse(name);
	long val;
	struct itt_err err = {0};
	if (!k) {
		fprintf(stderr, "itt %s: unknown knob \"%s\" (knobs: %s)\n", cmd, name, knob_list);
		return 2;
	}
	if (ch->set & k) {
		fprintf(stderr, "itt %s: knob %s given twice\n", cmd, name);
		return 2;
	}
	if (!opts_parse_long(eq + 1, -1000000000L, 4294967295L, &val)) {
		fprintf(stderr, "itt %s: %s: \"%s\" is not a whole number\n", cmd, name, eq + 1);
		return 2;
	}
	if (itt_knob_check(k, val, &err)) {
		fprintf(stderr, "itt %s: %s\n", cmd, err.msg);
		return 2;
	}
	ch->set |= k;
	if (k == ITT_KNOB_THREADS)
		ch->threads = (uint32_t)val;
	else if (k == ITT_KNOB_BATCH_TOKENS)
		ch->batch_tokens = (uint32_t)val;
	else
		ch->slow_ms = (uint32_t)val;
	return 0;
}

int cmd_settings(int argc, char **argv)
{
	struct settings_opts so = {0};
	struct opt_spec spec = {
		.prog = "itt settings",
		.usage = settings_usage,
		.about = settings_about,
		.opts = settings_set_opts_table,
		.n_opts = OPTS_N(settings_set_opts_table),
	};
	const char *sub = argc >= 2 ? argv[1] : NULL;
	if (sub && (!strcmp(sub, "--help") || !strcmp(sub, "-h"))) {
		opts_usage(&spec, stdout);
		return 0;
	}
	if (!sub) {
		fprintf(stderr, "itt settings: a subcommand is needed (get, set, pin, unpin; see "
				"--help)\n");
		return 2;
	}
	bool is_get = !strcmp(sub, "get"), is_set = !strcmp(sub, "set"),
	     is_pin = !strcmp(sub, "pin"), is_unpin = !strcmp(sub, "unpin");
	if (!is_get && !is_set && !is_pin && !is_unpin) {
		fprintf(stderr, "itt settings: unknown subcommand \"%s\" (get, set, pin, unpin)\n",
			sub);
		return 2;
	}
	char cmd[32], prog[40];
	snprintf(cmd, sizeof cmd, "settings %s", sub);
	snprintf(prog, sizeof prog, "itt %s", cmd);
	spec.prog = prog;
	if (!is_set) {
		spec.opts = settings_opts_table;
		spec.n_opts = OPTS_N(settings_opts_table);
	}
	int n_pos = 0;
	int prc = opts_parse(&spec, argc - 1, argv + 1, &so, &n_pos);
	if (prc != OPTS_OK)
		return cli_exit(prc);
	struct cluster_opts co = so.co;
	const char *broker = so.broker, *reason = so.reason, *worker = NULL;
	bool json = so.json;
	struct itt_settings_change ch = {.pin = so.pin};
	/* the positionals: WORKER, then knobs */
	char **pos = argv + 2;
	for (int i = 0; i < n_pos; i++) {
		const char *a = pos[i];
		if (!worker) {
			if (looks_like_knob(a)) {
				fprintf(stderr,
					"itt %s: WORKER comes first, then the knobs (got \"%s\")\n",
					cmd, a);
				return 2;
			}
			worker = a;
		} else if (is_get) {
			fprintf(stderr, "itt %s: one WORKER at most (got \"%s\" too)\n", cmd, a);
			return 2;
		} else if (is_set) {
			if (parse_knob_value(cmd, a, &ch))
				return 2;
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
		json_t *j = json_object();
		json_object_set_new(j, "worker_id",
				    cli_json_str(rep->worker_id ? rep->worker_id : worker));
		json_object_set_new(j, "settings", json_settings(rep->settings));
		json_object_set_new(j, "pinned", json_strings(rep->pinned, rep->n_pinned));
		cli_json_print(j, stdout);
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
