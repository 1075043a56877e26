/* cmd-bench-serve: `itt bench serve`, a closed-loop load generator that
 * measures a cluster as its clients see it, over the real protocol.
 *
 * C client threads each own an itt_client_t and keep exactly one stream open:
 * a client submits its next request as soon as the previous one ended.  Every
 * request is P prompt token ids (BOS, then pseudo-random ids in [3, vocab)
 * drawn from (seed, client, request index)) and asks for G tokens.  The
 * protocol has no "ignore EOS", so a request may end early (stop reason other
 * than "length"); such requests are counted and reported, and tokens are
 * counted as they arrive, never assumed.
 *
 * Phases: requests submitted in the first --warmup seconds are not measured;
 * client i makes its first submission at i/C of the warmup (a ramp, so that
 * equal-length requests do not run in lockstep).  Then either --duration S
 * (requests submitted until warmup + S are measured; the window ends at
 * warmup + S) or --requests N (the first N submitted after the warmup are
 * measured; the window ends when the last of them ends).
 * Requests in flight at the end are drained, not cancelled, so every measured
 * request has complete latencies; tokens arriving after the window are not
 * counted in the throughput.
 *
 * Figures: aggregate generated tokens/s = tokens that arrived inside the
 * window / its length; TTFT = submit to first token, per measured request;
 * TPOT = (last token time - first token time) / (tokens - 1), per measured
 * request with at least two tokens; percentiles interpolate linearly between
 * order statistics.  Errors are counted by code over the whole run, warmup
 * included.  Times are taken when the client thread reads an event, so they
 * include the load generator's own scheduling delay.
 *
 * The vocabulary size, needed to draw valid ids, is not in STATS: it is found
 * by probing the broker's validation of prompt_tokens (ids >= vocab are
 * refused with INVALID_ARGUMENT) unless --vocab is given, which one probe
 * then checks.
 *
 * Exit: 0 when a measured request completed or tokens arrived in the window,
 * 1 when nothing did or the cluster refused the probes, 2 on a usage error,
 * 130 after SIGINT or SIGTERM (the results so far are still printed). */
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "clock.h"
#include "libitt.h"
#include "sig.h"

#define SERVE_MAX_CLIENTS 4096
#define SERVE_N_CODES     16 /* slot per Itt__Code; larger codes share the last */
#define SERVE_BOS         1
#define SERVE_FIRST_ID    3 /* ids 0..2 are <unk>, BOS and EOS in llama vocabularies */
#define SERVE_MAX_PROBE   (1l << 30)
#define SERVE_REASON      640 /* holds an itt_error reason (512) and a code name */

struct serve_opts {
	const char *broker, *model, *api_key;
	long clients, n_prompt, n_gen, requests, vocab, timeout_ms, seed;
	double duration_s, warmup_s;
	float temperature; /* NAN: the cluster's */
	bool temperature_set, json;
};

#define SERVE_AT(f) offsetof(struct serve_opts, f)

static const struct opt serve_opts_table[] = {
	{"broker", 0, OPT_STR, NULL, 1, 4096, SERVE_AT(broker), "ENDPOINT",
	 "the cluster's front end (required)"},
	{"model", 0, OPT_STR, NULL, 1, 4096, SERVE_AT(model), "NAME", "the model (required)"},
	{"clients", 0, OPT_LONG, "1", 1, SERVE_MAX_CLIENTS, SERVE_AT(clients), "C",
	 "client threads, each with one request at a time"},
	{"prompt-tokens", 0, OPT_LONG, "32", 1, 65536, SERVE_AT(n_prompt), "P",
	 "prompt ids of a request: BOS, then pseudo-random ids in [3, vocab)"},
	{"gen-tokens", 0, OPT_LONG, "64", 1, 65536, SERVE_AT(n_gen), "G",
	 "tokens a request asks for"},
	{"duration", 0, OPT_DOUBLE, NULL, 0, 86400, SERVE_AT(duration_s), "S",
	 "measure what is submitted in S s after the warmup (default 10)",
	 .flags = OPT_LO_OPEN},
	{"requests", 0, OPT_LONG, NULL, 1, 100000000, SERVE_AT(requests), "N",
	 "measure the next N requests after the warmup instead"},
	{"warmup", 0, OPT_DOUBLE, "2", 0, 86400, SERVE_AT(warmup_s), "S",
	 "seconds not measured; clients start spread over them"},
	{"seed", 0, OPT_LONG, "1", 0, (double)LONG_MAX, SERVE_AT(seed), "S",
	 "seed of the prompt ids and sampling seeds"},
	{"temperature", 0, OPT_FLOAT, NULL, CLI_ANY_LO, CLI_ANY_HI, SERVE_AT(temperature), "T",
	 "sampling temperature (default: the cluster's, 0.8)"},
	{"vocab", 0, OPT_LONG, NULL, SERVE_FIRST_ID + 1, SERVE_MAX_PROBE, SERVE_AT(vocab), "V",
	 "the model's vocabulary size (default: probed at the broker)"},
	{"api-key", 0, OPT_STR, NULL, 0, 4096, SERVE_AT(api_key), "KEY", "the broker's API key",
	 .env = "ITT_API_KEY"},
	{"timeout-ms", 0, OPT_LONG, "30000", 100, 86400000, SERVE_AT(timeout_ms), "MS",
	 "a request fails UNAVAILABLE after this much broker silence"},
	{"json", 0, OPT_FLAG, NULL, 0, 0, SERVE_AT(json), NULL, "print one JSON object"},
};

static const struct opt_spec serve_spec = {
	.prog = "itt bench serve",
	.usage = "--broker ENDPOINT --model NAME [options]",
	.about = "\n"
		 "A closed-loop load generator: C client threads, each with its own connection\n"
		 "and one request at a time, submit the next request as soon as the previous\n"
		 "ends. Requests that end before G tokens (end of sequence, context) are counted\n"
		 "as early. Clients start spread over the warmup, whose requests are not\n"
		 "measured; then either --duration S seconds or the next --requests N are, and\n"
		 "requests in flight at the end are drained. Reports requests completed,\n"
		 "aggregate generated tokens/s over the measured window, time to first token and\n"
		 "time per output token (p50, p90, p99, mean; ms), and errors by code, with the\n"
		 "workers serving the model (from STATS) and this machine. --json prints one\n"
		 "object instead of the table.",
	.opts = serve_opts_table,
	.n_opts = OPTS_N(serve_opts_table),
	.epilog = "Exit status: 0 when requests completed or tokens arrived in the window, 1 when\n"
		  "nothing did, 2 on bad arguments, 130 after SIGINT or SIGTERM.",
};

/* One request's outcome; times are absolute monotonic milliseconds. */
struct serve_rec {
	double t_submit, t_first, t_last, t_end; /* t_end: the final event read */
	uint32_t n_tokens;
	int code; /* 0: DONE, else the ERROR's code */
	bool measured, early;
};

/* A chunk's arrival: for the window's token count. */
struct serve_tick {
	double t;
	uint32_t n;
};

struct serve;

struct serve_client {
	struct serve *sv;
	int index;
	pthread_t thread;
	struct serve_rec *recs;
	size_t n_recs, cap_recs;
	struct serve_tick *ticks;
	size_t n_ticks, cap_ticks;
	long errors[SERVE_N_CODES];
	char last_error[SERVE_REASON];
	bool oom;
};

struct serve {
	const struct serve_opts *o;
	double t_start, t_warm, t_stop; /* t_stop: end of submissions (duration mode) */
	atomic_long measured_left;      /* requests mode: measured submissions still to make */
	struct serve_client *clients;
};

/* splitmix64: the ids and seeds of a request depend only on its inputs. */
static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static int code_slot(int code)
{
	return code >= 0 && code < SERVE_N_CODES ? code : SERVE_N_CODES - 1;
}

static bool grow(void **p, size_t *cap, size_t need, size_t elem)
{
	if (need <= *cap)
		return true;
	size_t cap2 = *cap ? 2 * *cap : 256;
	while (cap2 < need)
		cap2 *= 2;
	void *q = realloc(*p, cap2 * elem);
	if (!q)
		return false;
	*p = q;
	*cap = cap2;
	return true;
}

static itt_client_t *serve_connect(const struct serve_opts *o, const char *client_id,
                                   struct itt_err *err)
{
	struct itt_client_options opt;
	itt_client_options_default(&opt);
	opt.api_key = o->api_key;
	opt.client_id = client_id;
	opt.give_up_ms = (int)o->timeout_ms;
	opt.linger_ms = 0;
	return itt_client_new(o->broker, &opt, err);
}

/* Runs one request to its end.  Returns the final code (0: DONE) and fills
 * rec; every chunk with tokens is logged in c->ticks when c is not NULL. */
static int serve_run_one(itt_client_t *cl, struct serve_client *c, const struct itt_request *req,
                         struct serve_rec *rec, char *why, size_t why_cap)
{
	struct itt_err err = {0};
	rec->t_submit = clock_mono_us() / 1e3;
	rec->t_first = rec->t_last = 0;
	rec->n_tokens = 0;
	rec->early = false;
	itt_stream_t *s = itt_submit(cl, req, &err);
	if (!s) {
		snprintf(why, why_cap, "%s", err.msg);
		rec->t_end = rec->t_submit;
		return rec->code = err.code ? err.code : ITT__CODE__INTERNAL;
	}
	struct stream_wait wait = {0};
	rec->code = ITT__CODE__INTERNAL;
	for (;;) {
		struct itt_event ev;
		int r = stream_next_or_cancel(s, &ev, &wait);
		if (r < 0)
			break;
		if (r == 0) {
			rec->code = ITT__CODE__CANCELLED;
			snprintf(why, why_cap, "interrupted");
			break;
		}
		double t = clock_mono_us() / 1e3;
		if (ev.type == ITT_EVENT_CHUNK) {
			if (!ev.n_tokens)
				continue; /* held-back text only */
			if (!rec->n_tokens)
				rec->t_first = t;
			rec->t_last = t;
			rec->n_tokens += (uint32_t)ev.n_tokens;
			if (c) {
				if (!grow((void **)&c->ticks, &c->cap_ticks, c->n_ticks + 1,
				          sizeof *c->ticks)) {
					c->oom = true;
					continue;
				}
				c->ticks[c->n_ticks++] =
				    (struct serve_tick){t, (uint32_t)ev.n_tokens};
			}
		} else if (ev.type == ITT_EVENT_DONE) {
			rec->code = 0;
			rec->early = strcmp(ev.stop_reason, "length") != 0;
			break;
		} else if (ev.type == ITT_EVENT_ERROR) {
			rec->code = ev.code;
			snprintf(why, why_cap, "%s", ev.reason ? ev.reason : "");
			break;
		}
	}
	rec->t_end = clock_mono_us() / 1e3;
	itt_stream_destroy(&s);
	return rec->code;
}

/* Fills ids[0..n) for request k of client ci and returns its sampling seed. */
static uint64_t serve_prompt(const struct serve_opts *o, int ci, uint64_t k, int32_t *ids)
{
	uint64_t h = mix64((uint64_t)o->seed ^ mix64(((uint64_t)ci << 40) ^ k));
	uint64_t span = (uint64_t)o->vocab - SERVE_FIRST_ID;
	ids[0] = SERVE_BOS;
	for (long i = 1; i < o->n_prompt; i++) {
		h = mix64(h);
		ids[i] = (int32_t)(SERVE_FIRST_ID + h % span);
	}
	return mix64(h + 1);
}

static void *serve_client_main(void *arg)
{
	struct serve_client *c = arg;
	struct serve *sv = c->sv;
	const struct serve_opts *o = sv->o;
	char id[64];
	struct itt_err err = {0};
	snprintf(id, sizeof id, "bench-%ld-%d", (long)getpid(), c->index);
	itt_client_t *cl = serve_connect(o, id, &err);
	if (!cl) {
		c->errors[code_slot(err.code)]++;
		snprintf(c->last_error, sizeof c->last_error, "%s: %s", itt_code_name(err.code),
		         err.msg);
		return NULL;
	}
	int32_t *ids = malloc((size_t)o->n_prompt * sizeof *ids);
	if (!ids) {
		c->oom = true;
		itt_client_destroy(&cl);
		return NULL;
	}
	/* Ramp-up: client i starts at i/C of the warmup, so that equal-length
	 * requests do not start and end in lockstep waves. */
	double t_first = sv->t_start + o->warmup_s * 1e3 * c->index / (double)o->clients;
	while (!sig_stop && clock_mono_us() / 1e3 < t_first)
		sleep_ms(10);
	for (uint64_t k = 0; !sig_stop; k++) {
		double now = clock_mono_us() / 1e3;
		if (o->requests == 0 && now >= sv->t_stop)
			break;
		bool measured = now >= sv->t_warm;
		if (measured && o->requests > 0 && atomic_fetch_sub(&sv->measured_left, 1) <= 0)
			break;
		if (!grow((void **)&c->recs, &c->cap_recs, c->n_recs + 1, sizeof *c->recs)) {
			c->oom = true;
			break;
		}
		struct itt_request req;
		itt_request_init(&req);
		req.model = o->model;
		req.prompt_tokens = ids;
		req.n_prompt_tokens = (size_t)o->n_prompt;
		req.max_tokens = (int32_t)o->n_gen;
		req.sampling.seed = serve_prompt(o, c->index, k, ids);
		req.sampling.set = ITT_SAMPLING_SEED;
		if (o->temperature_set) {
			req.sampling.temperature = o->temperature;
			req.sampling.set |= ITT_SAMPLING_TEMPERATURE;
		}
		struct serve_rec *rec = &c->recs[c->n_recs++];
		char why[SERVE_REASON] = "";
		int code = serve_run_one(cl, c, &req, rec, why, sizeof why);
		rec->measured = measured;
		if (code && !(sig_stop && code == ITT__CODE__CANCELLED)) {
			c->errors[code_slot(code)]++;
			snprintf(c->last_error, sizeof c->last_error, "%s: %s", itt_code_name(code),
			         why);
			/* A refused request must not turn the loop into a spin. */
			sleep_ms(code == ITT__CODE__OVERLOADED ? 50 : 200);
		}
	}
	free(ids);
	itt_client_destroy(&cl);
	return NULL;
}

/* --- before the run: vocabulary and workers ---------------------------------- */

/* Submits a one-token prompt [id] that generates nothing.  Returns 1 when
 * the broker accepted the id, 0 when it refused it as INVALID_ARGUMENT, -1
 * (why set) for any other error. */
static int serve_probe_id(itt_client_t *cl, const struct serve_opts *o, int32_t id, char *why,
                          size_t cap)
{
	struct itt_request req;
	struct serve_rec rec;
	char reason[SERVE_REASON] = "";
	itt_request_init(&req);
	req.model = o->model;
	req.prompt_tokens = &id;
	req.n_prompt_tokens = 1;
	req.max_tokens = 0;
	req.sampling.set = ITT_SAMPLING_SEED;
	req.sampling.seed = 1;
	int code = serve_run_one(cl, NULL, &req, &rec, reason, sizeof reason);
	if (!code)
		return 1;
	if (code == ITT__CODE__INVALID_ARGUMENT && strstr(reason, "prompt_tokens"))
		return 0;
	snprintf(why, cap, "%s: %s", itt_code_name(code), reason);
	return -1;
}

/* The largest id the broker accepts, plus one: exponential, then binary
 * search.  Returns the vocabulary size, or -1 (why set). */
static long serve_probe_vocab(itt_client_t *cl, const struct serve_opts *o, char *why, size_t cap)
{
	long ok = 0, bad = 1; /* ok is accepted, bad refused, once found */
	int r;
	for (;;) {
		if ((r = serve_probe_id(cl, o, (int32_t)bad, why, cap)) < 0)
			return -1;
		if (!r)
			break;
		ok = bad;
		if (bad >= SERVE_MAX_PROBE) {
			snprintf(why, cap, "the broker accepts token id %ld; give --vocab", bad);
			return -1;
		}
		bad *= 2;
	}
	while (bad - ok > 1) {
		long mid = ok + (bad - ok) / 2;
		if ((r = serve_probe_id(cl, o, (int32_t)mid, why, cap)) < 0)
			return -1;
		if (r)
			ok = mid;
		else
			bad = mid;
	}
	return ok + 1;
}

/* --- after the run: figures -------------------------------------------------- */

/* {"n":..,"p50":..,"p90":..,"p99":..,"mean":..} (ms) */
static json_t *json_dist(const struct dist *d)
{
	json_t *j = json_object();
	json_object_set_new(j, "n", json_integer((json_int_t)d->n));
	json_object_set_new(j, "p50", cli_json_num(d->p50, "%.3f"));
	json_object_set_new(j, "p90", cli_json_num(d->p90, "%.3f"));
	json_object_set_new(j, "p99", cli_json_num(d->p99, "%.3f"));
	json_object_set_new(j, "mean", cli_json_num(d->mean, "%.3f"));
	return j;
}

static void table_dist(const char *name, const struct dist *d)
{
	if (!d->n) {
		printf("%-10s %10s %10s %10s %10s %8s\n", name, "-", "-", "-", "-", "0");
		return;
	}
	printf("%-10s %10.2f %10.2f %10.2f %10.2f %8zu\n", name, d->p50, d->p90, d->p99, d->mean,
	       d->n);
}

/* --- the command ------------------------------------------------------------- */

/* OPTS_OK, OPTS_HELP or OPTS_ERROR (a line on stderr). */
static int serve_parse(int argc, char **argv, struct serve_opts *o)
{
	memset(o, 0, sizeof *o);
	o->temperature = NAN;
	int rc = opts_parse(&serve_spec, argc, argv, o, NULL);
	if (rc != OPTS_OK)
		return rc;
	const char *why = NULL;
	if (!o->broker || !o->model)
		why = "--broker ENDPOINT and --model NAME are required";
	else if (o->duration_s > 0 && o->requests)
		why = "--duration and --requests are exclusive";
	if (why) {
		fprintf(stderr, "itt bench serve: %s (see --help)\n", why);
		return OPTS_ERROR;
	}
	o->temperature_set = !isnan(o->temperature);
	if (!o->requests && !(o->duration_s > 0))
		o->duration_s = 10;
	return OPTS_OK;
}

/* The live workers of the model in STATS: the first cap in out[]; returns
 * how many there are. */
static size_t serve_workers(const Itt__ClusterStats *st, const char *model,
                            const Itt__WorkerStats **out, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; st && i < st->n_workers; i++) {
		const Itt__WorkerStats *w = st->workers[i];
		if (!w->model || strcmp(w->model, model) || (w->state && !strcmp(w->state, "lost")))
			continue;
		if (n < cap)
			out[n] = w;
		n++;
	}
	return n;
}

int cmd_bench_serve(int argc, char **argv)
{
	struct serve_opts o;
	int rc = serve_parse(argc, argv, &o);
	if (rc != OPTS_OK)
		return cli_exit(rc);

	struct itt_err err = {0};
	itt_client_t *probe = serve_connect(&o, NULL, &err);
	if (!probe) {
		fprintf(stderr, "itt bench serve: %s: %s\n", itt_code_name(err.code), err.msg);
		return 2;
	}
	Itt__ClusterStats *st = NULL;
	if (itt_stats(probe, &st, 5000, &err)) {
		fprintf(stderr, "itt bench serve: STATS: %s: %s (broker %s)\n",
		        itt_code_name(err.code), err.msg, o.broker);
		itt_client_destroy(&probe);
		return 1;
	}
	const Itt__WorkerStats *workers[64];
	size_t n_workers = serve_workers(st, o.model, workers, 64);
	size_t shown = n_workers < 64 ? n_workers : 64;
	long threads_total = 0;
	for (size_t i = 0; i < shown; i++)
		threads_total += workers[i]->threads;

	/* The vocabulary: probed, or the given one checked with its largest id. */
	char why[SERVE_REASON] = "";
	bool probed = !o.vocab;
	if (probed) {
		o.vocab = serve_probe_vocab(probe, &o, why, sizeof why);
		if (o.vocab < 0) {
			fprintf(stderr, "itt bench serve: probing model %s: %s\n", o.model, why);
			rc = 1;
			goto out_stats;
		}
		if (o.vocab <= SERVE_FIRST_ID) {
			fprintf(stderr, "itt bench serve: model %s has a vocabulary of %ld ids\n",
			        o.model, o.vocab);
			rc = 1;
			goto out_stats;
		}
	} else {
		int r = serve_probe_id(probe, &o, (int32_t)(o.vocab - 1), why, sizeof why);
		if (r <= 0) {
			if (r == 0)
				fprintf(stderr,
				        "itt bench serve: --vocab %ld: the broker refuses token id "
				        "%ld for model %s (a smaller vocabulary)\n",
				        o.vocab, o.vocab - 1, o.model);
			else
				fprintf(stderr, "itt bench serve: probing model %s: %s\n", o.model,
				        why);
			rc = r == 0 ? 2 : 1;
			goto out_stats;
		}
	}

	sig_stop_install();

	struct serve sv = {.o = &o};
	sv.clients = calloc((size_t)o.clients, sizeof *sv.clients);
	if (!sv.clients) {
		fprintf(stderr, "itt bench serve: out of memory\n");
		rc = 1;
		goto out_stats;
	}
	sv.t_start = clock_mono_us() / 1e3;
	sv.t_warm = sv.t_start + o.warmup_s * 1e3;
	sv.t_stop = sv.t_warm + o.duration_s * 1e3;
	atomic_init(&sv.measured_left, o.requests);
	long started = 0;
	for (long i = 0; i < o.clients; i++) {
		struct serve_client *c = &sv.clients[i];
		c->sv = &sv;
		c->index = (int)i;
		if (pthread_create(&c->thread, NULL, serve_client_main, c)) {
			fprintf(stderr, "itt bench serve: cannot start client thread %ld\n", i);
			sig_stop = SIGTERM;
			break;
		}
		started++;
	}
	for (long i = 0; i < started; i++)
		pthread_join(sv.clients[i].thread, NULL);
	double t_end_run = clock_mono_us() / 1e3;

	/* The window, and what fell into it. */
	double w_lo = sv.t_warm, w_hi = o.requests ? sv.t_warm : sv.t_stop;
	size_t n_meas = 0, n_done = 0, n_early = 0;
	long errors[SERVE_N_CODES] = {0}, n_errors = 0;
	const char *last_error = NULL;
	bool oom = false;
	for (long i = 0; i < started; i++) {
		struct serve_client *c = &sv.clients[i];
		oom |= c->oom;
		for (int k = 0; k < SERVE_N_CODES; k++) {
			errors[k] += c->errors[k];
			n_errors += c->errors[k];
		}
		if (c->last_error[0])
			last_error = c->last_error;
		for (size_t r = 0; r < c->n_recs; r++) {
			const struct serve_rec *rec = &c->recs[r];
			if (!rec->measured)
				continue;
			n_meas++;
			if (o.requests && rec->t_end > w_hi)
				w_hi = rec->t_end;
			if (rec->code)
				continue;
			n_done++;
			n_early += rec->early;
		}
	}
	if (sig_stop && !o.requests)
		w_hi = t_end_run < w_hi ? t_end_run : w_hi;
	double *ttft = malloc((n_done + 1) * sizeof *ttft);
	double *tpot = malloc((n_done + 1) * sizeof *tpot);
	if (!ttft || !tpot) {
		fprintf(stderr, "itt bench serve: out of memory\n");
		free(ttft);
		free(tpot);
		rc = 1;
		goto out_clients;
	}
	size_t n_ttft = 0, n_tpot = 0;
	uint64_t window_tokens = 0, measured_tokens = 0;
	for (long i = 0; i < started; i++) {
		struct serve_client *c = &sv.clients[i];
		for (size_t r = 0; r < c->n_recs; r++) {
			const struct serve_rec *rec = &c->recs[r];
			if (!rec->measured || rec->code)
				continue;
			measured_tokens += rec->n_tokens;
			if (rec->n_tokens)
				ttft[n_ttft++] = rec->t_first - rec->t_submit;
			if (rec->n_tokens > 1)
				tpot[n_tpot++] = (rec->t_last - rec->t_first) / (rec->n_tokens - 1);
		}
		for (size_t k = 0; k < c->n_ticks; k++)
			if (c->ticks[k].t >= w_lo && c->ticks[k].t <= w_hi)
				window_tokens += c->ticks[k].n;
	}
	double window_s = (w_hi - w_lo) / 1e3;
	double tok_s = window_s > 0 ? (double)window_tokens / window_s : NAN;
	double req_s = window_s > 0 ? (double)n_done / window_s : NAN;
	struct dist d_ttft = dist_of(ttft, n_ttft), d_tpot = dist_of(tpot, n_tpot);

	char cpu[256];
	cpu_name(cpu, sizeof cpu);
	long cores = sysconf(_SC_NPROCESSORS_ONLN);
	if (o.json) {
		json_t *j = json_object(), *mach = json_object(), *ws = json_array();
		json_t *errs = json_object();
		json_object_set_new(j, "bench", json_string("serve"));
		json_object_set_new(j, "broker", cli_json_str(o.broker));
		json_object_set_new(j, "model", cli_json_str(o.model));
		json_object_set_new(mach, "cpu", cli_json_str(cpu));
		json_object_set_new(mach, "cores", json_integer(cores));
		json_object_set_new(j, "machine", mach);
		for (size_t i = 0; i < shown; i++) {
			json_t *w = json_object();
			json_object_set_new(w, "id", cli_json_str(workers[i]->id));
			json_object_set_new(w, "host", cli_json_str(workers[i]->host));
			json_object_set_new(w, "threads", json_integer(workers[i]->threads));
			json_object_set_new(w, "max_sessions",
					    json_integer(workers[i]->max_sessions));
			json_array_append_new(ws, w);
		}
		json_object_set_new(j, "workers", ws);
		json_object_set_new(j, "n_workers", json_integer((json_int_t)n_workers));
		json_object_set_new(j, "worker_threads", json_integer(threads_total));
		json_object_set_new(j, "clients", json_integer(o.clients));
		json_object_set_new(j, "prompt_tokens", json_integer(o.n_prompt));
		json_object_set_new(j, "gen_tokens", json_integer(o.n_gen));
		json_object_set_new(j, "vocab", json_integer(o.vocab));
		json_object_set_new(j, "vocab_probed", json_boolean(probed));
		json_object_set_new(j, "seed", json_integer(o.seed));
		json_object_set_new(j, "temperature", cli_json_num(o.temperature, "%.3f"));
		json_object_set_new(j, "warmup_s", cli_json_num(o.warmup_s, "%.3f"));
		json_object_set_new(j, "duration_s",
				    cli_json_num(o.requests ? NAN : o.duration_s, "%.3f"));
		json_object_set_new(j, "requests",
				    o.requests ? json_integer(o.requests) : json_null());
		json_object_set_new(j, "window_s", cli_json_num(window_s, "%.3f"));
		json_object_set_new(j, "requests_measured", json_integer((json_int_t)n_meas));
		json_object_set_new(j, "requests_completed", json_integer((json_int_t)n_done));
		json_object_set_new(j, "requests_early", json_integer((json_int_t)n_early));
		json_object_set_new(j, "measured_tokens", cli_json_u64(measured_tokens));
		json_object_set_new(j, "window_tokens", cli_json_u64(window_tokens));
		json_object_set_new(j, "tokens_per_s", cli_json_num(tok_s, "%.3f"));
		json_object_set_new(j, "requests_per_s", cli_json_num(req_s, "%.3f"));
		json_object_set_new(j, "ttft_ms", json_dist(&d_ttft));
		json_object_set_new(j, "tpot_ms", json_dist(&d_tpot));
		json_object_set_new(j, "errors_total", json_integer(n_errors));
		for (int k = 0; k < SERVE_N_CODES; k++)
			if (errors[k])
				json_object_set_new(errs, itt_code_name(k),
						    json_integer(errors[k]));
		json_object_set_new(j, "errors", errs);
		json_object_set_new(j, "last_error",
				    last_error ? cli_json_str(last_error) : json_null());
		json_object_set_new(j, "interrupted", json_boolean(sig_stop));
		cli_json_print(j, stdout);
	} else {
		printf("bench serve  model %s at %s\n", o.model, o.broker);
		printf("machine      %s, %ld cores (this load generator)\n", cpu, cores);
		printf("workers      %zu serving %s, %ld threads in all", n_workers, o.model,
		       threads_total);
		for (size_t i = 0; i < shown; i++)
			printf("%s%s (%s, %u threads, %u sessions max)", i ? "; " : ": ",
			       workers[i]->id ? workers[i]->id : "-",
			       workers[i]->host ? workers[i]->host : "-", workers[i]->threads,
			       workers[i]->max_sessions);
		printf("\n");
		printf("load         %ld client%s, closed loop; %ld prompt tokens (BOS + ids < "
		       "%ld%s), "
		       "%ld generated; seed %llu; temperature ",
		       o.clients, o.clients == 1 ? "" : "s", o.n_prompt, o.vocab,
		       probed ? ", probed" : "", o.n_gen, (unsigned long long)o.seed);
		if (o.temperature_set)
			printf("%g\n", o.temperature);
		else
			printf("default\n");
		if (o.requests)
			printf("window       %.2f s: %ld requests after %.1f s warmup\n", window_s,
			       o.requests, o.warmup_s);
		else
			printf("window       %.2f s after %.1f s warmup\n", window_s, o.warmup_s);
		printf("\nrequests     %zu completed of %zu measured (%zu ended early), %.2f/s\n",
		       n_done, n_meas, n_early, req_s);
		printf("tokens       %llu generated in the window: %.1f tok/s aggregate, "
		       "%.1f tok/s per client\n",
		       (unsigned long long)window_tokens, tok_s, tok_s / (double)o.clients);
		printf("\n%-10s %10s %10s %10s %10s %8s\n", "ms", "p50", "p90", "p99", "mean", "n");
		table_dist("TTFT", &d_ttft);
		table_dist("TPOT", &d_tpot);
		printf("\nerrors       ");
		if (!n_errors)
			printf("none");
		for (int k = 0, first = 1; k < SERVE_N_CODES; k++)
			if (errors[k]) {
				printf("%s%s %ld", first ? "" : ", ", itt_code_name(k), errors[k]);
				first = 0;
			}
		printf("\n");
		if (last_error)
			printf("last error   %s\n", last_error);
		if (sig_stop)
			printf("interrupted  by signal %d; the figures cover what had ended\n",
			       (int)sig_stop);
	}
	fflush(stdout);
	if (oom)
		fprintf(stderr, "itt bench serve: out of memory while recording; figures are "
		                "incomplete\n");
	if (n_errors && last_error)
		fprintf(stderr, "itt bench serve: %ld errors; last %s\n", n_errors, last_error);
	rc = sig_stop ? 130 : n_done || window_tokens ? 0 : 1;
	if (!n_done && !sig_stop)
		fprintf(stderr, "itt bench serve: no measured request completed%s\n",
		        window_tokens ? " (requests outlast the warmup and window; lengthen them)"
		                      : "");
	free(ttft);
	free(tpot);
out_clients:
	for (long i = 0; i < o.clients; i++) {
		free(sv.clients[i].recs);
		free(sv.clients[i].ticks);
	}
	free(sv.clients);
out_stats:
	itt_stats_free(&st);
	itt_client_destroy(&probe);
	return rc;
}
