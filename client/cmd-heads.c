/* cmd-heads: `itt heads search`, greedy forward selection of attention
 * heads for perturbation guidance (after "Fine-Grained Perturbation
 * Guidance via Attention Head Selection"), on the selection split of a
 * multiple-choice task, then a side-by-side comparison on its test split
 * with the controls that tell whether the heads matter: random heads of the
 * same count, the whole layer holding most chosen heads, and temperature
 * alone.  Scoring is eval.h's.
 *
 * Contract: the head set, the rounds and the test table are a pure function
 * of the model, the task and the options (the JSON differs between two runs
 * only in "timings"); the head-set file is guidance.h's format followed by
 * our provenance as comments.
 * Invariants: a round scores every remaining head against the current set
 * and keeps the best only if it beats the set (round 1: beats plain); the
 * test split is never seen by the search. */
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "cli.h"
#include "eval.h"
#include "guidance.h"
#include "opts.h"

/* Candidates scored per pass: bounds the logits kept per item. */
#define HEADS_GROUP 16
/* Rows of the test table: plain, searched, random, whole layer, 2 temperatures. */
#define HEADS_TEST_ROWS 6

struct heads_cmd {
	const char *model, *task, *out;
	long max_heads, seed, bootstrap, threads;
	float scale, blend;
	bool margin_obj; /* --objective margin */
	bool json;
};

static int parse_objective(void *out, const char *v, char *why, size_t cap)
{
	struct heads_cmd *c = out;
	if (strcmp(v, "acc") && strcmp(v, "margin")) {
		snprintf(why, cap, "expected acc or margin");
		return -1;
	}
	c->margin_obj = !strcmp(v, "margin");
	return 0;
}

#define HEADS_AT(f) offsetof(struct heads_cmd, f)

static const struct opt heads_opts[] = {
    {"local", 0, OPT_STR, NULL, 0, 1e9, HEADS_AT(model), "MODEL.gguf",
     "the model, run in this process (required)"},
    {"task", 0, OPT_STR, NULL, 0, 1e9, HEADS_AT(task), "TASK.jsonl",
     "a task with \"select\" and \"test\" items (required)"},
    {"out", 0, OPT_STR, NULL, 0, 1e9, HEADS_AT(out), "HEADSET", "the head-set file (required)"},
    {"max-heads", 0, OPT_LONG, "4", 1, 4096, HEADS_AT(max_heads), "K", "heads at most"},
    {"scale", 0, OPT_FLOAT, "2", 0, INFINITY, HEADS_AT(scale), "S", "guidance scale s"},
    {"blend", 0, OPT_FLOAT, "1", 0, 1, HEADS_AT(blend), "U", "perturbation blend u"},
    {"objective", 0, OPT_FN, "acc", 0, 0, 0, "acc|margin", "what a round maximises",
     parse_objective},
    {"seed", 0, OPT_LONG, "1", 0, (double)LONG_MAX, HEADS_AT(seed), "S",
     "seed of the random heads and the bootstrap"},
    {"bootstrap", 0, OPT_LONG, "1000", 0, 1000000, HEADS_AT(bootstrap), "B",
     "bootstrap resamples of the test items"},
    {"threads", 0, OPT_LONG, "1", 1, 256, HEADS_AT(threads), "T", "engine threads"},
    {"json", 0, OPT_FLAG, NULL, 0, 0, HEADS_AT(json), NULL,
     "one JSON object (only its \"timings\" differ between two runs)"},
    {"broker", 0, OPT_FN, NULL, 0, 0, 0, "ENDPOINT",
     "refused: the cluster protocol has no scoring request yet", eval_refuse_broker},
};

static const struct opt_spec heads_spec = {
    .prog = "itt heads search",
    .usage = "--local MODEL.gguf --task TASK.jsonl --out HEADSET\n"
             "                        [--max-heads K] [--scale S] [--blend U]\n"
             "                        [--objective acc|margin] [--seed S] [--bootstrap B]\n"
             "                        [--threads T] [--json]",
    .about =
        "Greedy forward selection on the task's \"select\" items: each round adds to the\n"
        "chosen set every remaining (layer, head) in turn, scores guidance with that set\n"
        "(log_softmax(l + S (l - l_pert)), heads attending to their own position with blend\n"
        "U; no plausibility cut) and keeps the best; it stops after K heads or when no\n"
        "candidate beats the current set (round 1: beats plain). Objective acc: the\n"
        "accuracy of the length-normalised choice, ties broken by the mean margin of the true\n"
        "choice's per-token log-likelihood over the best wrong one; margin: that margin alone.",
    .opts = heads_opts,
    .n_opts = OPTS_N(heads_opts),
    .epilog =
        "The heads go to HEADSET (one LAYER:HEAD a line, '#' comments; the file `itt eval\n"
        "--setting guidance:set=HEADSET,...` reads). Then the \"test\" items are scored side by\n"
        "side: plain, guidance with the searched heads, random heads of the same count\n"
        "(seeded), the whole layer holding most searched heads, and temperatures 0.9 and 1.1\n"
        "alone, with 95% bootstrap intervals and the paired difference from plain.\n"
        "--local only for now (the cluster protocol has no scoring request yet).",
};

struct round_log {
	int candidates;
	int best; /* l * n_heads + h, -1 */
	double acc, margin;
	bool improved;
	double seconds;
};

/* The state of a search. */
struct search {
	const struct heads_cmd *c;
	struct engine *e;
	const struct eval_task *sel;
	uint32_t NL, NH;
	size_t NM;
	uint8_t *cur;             /* [NL][NH]: the chosen heads */
	uint8_t *masks;           /* [HEADS_GROUP + 1][NL][NH]: a pass's candidates */
	struct eval_setting *st;  /* [HEADS_GROUP + 8] */
	struct eval_branch *br;   /* [HEADS_GROUP + 8] */
	struct round_log *rounds; /* [max_heads + 1] */
	int n_rounds, n_chosen;
	double plain_acc, plain_margin; /* round 0 */
	double acc, margin;             /* of the current set */
	bool any_changed;               /* some candidate's scores differ from plain's */
};

static bool better(bool margin_obj, double a1, double m1, double a0, double m0)
{
	if (margin_obj)
		return m1 > m0;
	return a1 > a0 || (a1 == a0 && m1 > m0);
}

static const struct eval_opts search_eo = {.progress = false, .cmd = "heads search"};

/* Round 0: plain, the empty set. */
static int search_plain(struct search *s)
{
	struct eval_setting plain = {.kind = EVAL_PLAIN};
	struct eval_branch b0 = {NULL, 0};
	struct eval_scores sc;
	snprintf(plain.name, sizeof plain.name, "plain");
	if (eval_run(s->e, s->sel, &b0, 1, &plain, 1, &search_eo, &sc) < 0)
		return -1;
	eval_objective(&sc, s->sel, 0, &s->acc, &s->margin);
	eval_scores_free(&sc);
	s->plain_acc = s->acc;
	s->plain_margin = s->margin;
	return 0;
}

/* One round: every remaining head added to the set in turn, in passes of
 * HEADS_GROUP candidates beside plain.  Fills the round's log; -1 on error. */
static int search_round(struct search *s, struct round_log *r)
{
	const struct heads_cmd *c = s->c;
	int cand[4096], n_cand = 0;
	double t0 = clock_mono_s();
	for (size_t h = 0; h < s->NM && n_cand < 4096; h++)
		if (!s->cur[h])
			cand[n_cand++] = (int)h;
	r->candidates = n_cand;
	r->best = -1;
	for (int g0 = 0; g0 < n_cand; g0 += HEADS_GROUP) {
		int g1 = g0 + HEADS_GROUP < n_cand ? g0 + HEADS_GROUP : n_cand;
		struct eval_setting *st = s->st;
		/* setting 0 plain (branch 0), then one guidance per candidate */
		memset(st, 0, (HEADS_GROUP + 1) * sizeof *st);
		st[0].kind = EVAL_PLAIN;
		s->br[0] = (struct eval_branch){NULL, 0};
		for (int i = g0; i < g1; i++) {
			int k = i - g0 + 1;
			uint8_t *mk = s->masks + (size_t)k * s->NM;
			memcpy(mk, s->cur, s->NM);
			mk[cand[i]] = 1;
			st[k].kind = EVAL_GUIDANCE;
			st[k].scale = c->scale;
			st[k].blend = c->blend;
			st[k].branch = k;
			s->br[k] = (struct eval_branch){mk, c->blend};
		}
		struct eval_scores sc;
		size_t n = (size_t)(g1 - g0 + 1);
		if (eval_run(s->e, s->sel, s->br, n, st, n, &search_eo, &sc) < 0)
			return -1;
		size_t per = sc.n_items * sc.max_choices;
		for (size_t k = 1; k < n; k++) {
			double a, m;
			eval_objective(&sc, s->sel, k, &a, &m);
			if (memcmp(sc.sum + k * per, sc.sum, per * sizeof(double)))
				s->any_changed = true;
			if (r->best < 0 || better(c->margin_obj, a, m, r->acc, r->margin)) {
				r->best = cand[g0 + (int)k - 1];
				r->acc = a;
				r->margin = m;
			}
		}
		eval_scores_free(&sc);
	}
	r->improved = better(c->margin_obj, r->acc, r->margin, s->acc, s->margin);
	r->seconds = clock_mono_s() - t0;
	return 0;
}

/* Rounds until max_heads heads or no improvement, with a line each. */
static int search_run(struct search *s)
{
	const struct heads_cmd *c = s->c;
	const uint32_t NH = s->NH;
	while (s->n_chosen < c->max_heads) {
		struct round_log *r = &s->rounds[s->n_rounds];
		if (search_round(s, r) < 0)
			return -1;
		if (r->candidates == 0)
			break;
		s->n_rounds++;
		if (!c->json)
			printf("round %d: %d candidates, best %u:%u: acc %.4f, margin %+.4f (%s; "
			       "%.1f s)\n",
			       s->n_rounds, r->candidates, (unsigned)r->best / NH,
			       (unsigned)r->best % NH, r->acc, r->margin,
			       r->improved ? "kept" : "no improvement, stop", r->seconds);
		else
			fprintf(stderr,
			        "itt heads search: round %d: best %u:%u acc %.4f margin %+.4f%s\n",
			        s->n_rounds, (unsigned)r->best / NH, (unsigned)r->best % NH, r->acc,
			        r->margin, r->improved ? "" : " (stop)");
		fflush(stdout);
		if (!r->improved)
			break;
		s->cur[r->best] = 1;
		s->n_chosen++;
		s->acc = r->acc;
		s->margin = r->margin;
	}
	if (!s->any_changed)
		fprintf(stderr,
		        "itt heads search: warning: no candidate changed any score; does this "
		        "build's forward pass apply forward_batch.perturb?\n");
	return 0;
}

/* guidance.h's head-set file, then our provenance as comments; an empty
 * set (no head beat plain) is a file of comments only, which readers
 * refuse as naming no head. */
static int write_head_set(const struct search *s)
{
	const struct heads_cmd *c = s->c;
	const char *base = strrchr(c->model, '/');
	struct itt_err e2 = {0};
	base = base ? base + 1 : c->model;
	if (s->n_chosen && guidance_save_head_set(c->out, base, s->NL, s->NH, s->cur, &e2) < 0) {
		fprintf(stderr, "itt heads search: %s\n", e2.msg);
		return -1;
	}
	FILE *f = fopen(c->out, s->n_chosen ? "a" : "w");
	if (f) {
		if (!s->n_chosen)
			fprintf(f,
			        "# itt-head-set model=%s layers=%u heads=%u\n"
			        "# empty: no head beat plain on the selection split\n",
			        base, s->NL, s->NH);
		fprintf(f,
		        "# searched by itt heads search on %s (select split, %zu items): "
		        "scale %g, blend %g, objective %s, select acc %.4f, margin %+.4f\n",
		        c->task, s->sel->n, c->scale, c->blend, c->margin_obj ? "margin" : "acc",
		        s->acc, s->margin);
	}
	bool bad = !f || ferror(f);
	if (!f || fclose(f) || bad) {
		fprintf(stderr, "itt heads search: cannot write %s\n", c->out);
		return -1;
	}
	return 0;
}

/* The test table's settings: their specs and labels; the row count, or -1
 * when out of memory. */
static int test_specs(const struct search *s, const char *heads, char specs[][2200],
                      char labels[][32])
{
	const struct heads_cmd *c = s->c;
	const float S = c->scale, U = c->blend;
	const uint32_t NL = s->NL, NH = s->NH;
	const size_t NM = s->NM;
	int ns = 0;
	snprintf(labels[ns], 32, "plain");
	snprintf(specs[ns++], 2200, "plain");
	if (s->n_chosen) {
		snprintf(labels[ns], 32, "searched");
		snprintf(specs[ns++], 2200, "guidance:heads=%s,s=%g,u=%g", heads, S, U);
		/* random heads of the same count */
		uint64_t rng = (uint64_t)c->seed ^ 0x4EAD5EEDull;
		uint32_t *idx = malloc(NM * sizeof *idx);
		uint8_t *rm = calloc(NM, 1);
		char rh[2048];
		if (!idx || !rm) {
			free(idx);
			free(rm);
			return -1;
		}
		for (size_t i = 0; i < NM; i++)
			idx[i] = (uint32_t)i;
		for (int i = 0; i < s->n_chosen; i++) {
			size_t j = (size_t)i + (size_t)eval_rng_below(&rng, NM - (size_t)i);
			uint32_t x = idx[i];
			idx[i] = idx[j];
			idx[j] = x;
			rm[idx[i]] = 1;
		}
		eval_mask_str(rm, NL, NH, rh, sizeof rh);
		free(idx);
		free(rm);
		snprintf(labels[ns], 32, "random");
		snprintf(specs[ns++], 2200, "guidance:heads=%s,s=%g,u=%g", rh, S, U);
		/* the layer holding most chosen heads (lowest on a tie) */
		uint32_t bl = 0, bc = 0;
		for (uint32_t l = 0; l < NL; l++) {
			uint32_t n = 0;
			for (uint32_t h = 0; h < NH; h++)
				n += s->cur[(size_t)l * NH + h];
			if (n > bc) {
				bc = n;
				bl = l;
			}
		}
		snprintf(labels[ns], 32, "whole layer");
		snprintf(specs[ns++], 2200, "layer:%u,s=%g,u=%g", bl, S, U);
	}
	snprintf(labels[ns], 32, "temperature");
	snprintf(specs[ns++], 2200, "temp:0.9");
	snprintf(labels[ns], 32, "temperature");
	snprintf(specs[ns++], 2200, "temp:1.1");
	return ns;
}

/* The search's JSON: parameters, rounds, the heads, the test rows. */
static int print_json(const struct search *s, const char *heads, const struct eval_task *test,
                      const struct eval_setting *st, size_t n_st, const struct eval_metrics *m,
                      const struct eval_scores *sc, double total)
{
	const struct heads_cmd *c = s->c;
	json_t *rounds = json_array();
	for (int i = 0; i < s->n_rounds; i++) {
		const struct round_log *r = &s->rounds[i];
		char best[32];
		snprintf(best, sizeof best, "%u:%u", (unsigned)r->best / s->NH,
		         (unsigned)r->best % s->NH);
		json_array_append_new(
		    rounds, json_pack("{sisssososbs{so}}", "candidates", r->candidates, "best",
		                      best, "acc_norm", cli_json_num(r->acc, "%.6f"), "margin_norm",
		                      cli_json_num(r->margin, "%.6f"), "kept", r->improved,
		                      "timings", "seconds", cli_json_num(r->seconds, "%.3f")));
	}
	if (json_array_size(rounds) != (size_t)s->n_rounds) {
		json_decref(rounds);
		return -1;
	}
	json_t *j = json_pack(
	    "{sosIsIsssososIsIsIs{soso}sosososbsos{soso}}", "task",
	    cli_json_text(c->task, strlen(c->task)), "select_items", (json_int_t)s->sel->n,
	    "test_items", (json_int_t)test->n, "objective", c->margin_obj ? "margin" : "acc",
	    "scale", cli_json_num(c->scale, "%g"), "blend", cli_json_num(c->blend, "%g"), "seed",
	    (json_int_t)c->seed, "bootstrap", (json_int_t)c->bootstrap, "max_heads",
	    (json_int_t)c->max_heads, "round0", "acc_norm", cli_json_num(s->plain_acc, "%.6f"),
	    "margin_norm", cli_json_num(s->plain_margin, "%.6f"), "rounds", rounds, "heads",
	    cli_json_text(heads, strlen(heads)), "out", cli_json_text(c->out, strlen(c->out)),
	    "perturbation_changed_scores", s->any_changed, "test",
	    eval_json_settings(st, n_st, m, sc), "timings", "seconds", cli_json_num(total, "%.3f"),
	    "test_seconds", cli_json_num(sc->seconds, "%.3f"));
	return cli_json_print(j, stdout);
}

/* The test split, side by side; prints the table or the JSON. */
static int run_test(struct search *s, const struct eval_task *test, double t_start)
{
	const struct heads_cmd *c = s->c;
	char heads[2048], specs[HEADS_TEST_ROWS][2200], labels[HEADS_TEST_ROWS][32];
	struct eval_setting *st = s->st;
	struct eval_metrics m[HEADS_TEST_ROWS];
	struct eval_scores sc;
	size_t nb = 1, n_st = 0;
	int rc = 1;
	eval_mask_str(s->cur, s->NL, s->NH, heads, sizeof heads);
	if (write_head_set(s) < 0)
		return 1;
	if (!c->json)
		printf("head set: %s -> %s\n", s->n_chosen ? heads : "(empty: no head beat plain)",
		       c->out);
	int ns = test_specs(s, heads, specs, labels);
	if (ns < 0) {
		fprintf(stderr, "itt heads search: out of memory\n");
		return 1;
	}
	s->br[0] = (struct eval_branch){NULL, 0};
	for (; n_st < (size_t)ns; n_st++) {
		char msg[300];
		if (eval_setting_parse(specs[n_st], s->NL, s->NH, &st[n_st], msg, sizeof msg) < 0) {
			fprintf(stderr, "itt heads search: %s\n", msg);
			goto out;
		}
		snprintf(st[n_st].name, sizeof st[n_st].name, "%.31s %.470s", labels[n_st],
		         specs[n_st]);
		if (st[n_st].kind == EVAL_GUIDANCE) {
			st[n_st].branch = (int)nb;
			s->br[nb++] = (struct eval_branch){st[n_st].mask, st[n_st].blend};
		}
	}
	struct eval_opts eo = {.progress = !c->json, .cmd = "heads search"};
	if (eval_run(s->e, test, s->br, nb, st, n_st, &eo, &sc) < 0)
		goto out;
	if (eval_metrics(&sc, test, c->bootstrap, (uint64_t)c->seed, m) < 0) {
		fprintf(stderr, "itt heads search: out of memory\n");
	} else if (c->json) {
		if (print_json(s, heads, test, st, n_st, m, &sc, clock_mono_s() - t_start) == 0)
			rc = 0;
		else
			fprintf(stderr, "itt heads search: writing the JSON failed\n");
	} else {
		double total = clock_mono_s() - t_start;
		printf("\ntest split (%zu items), %ld bootstrap resamples, seed %ld:\n", test->n,
		       c->bootstrap, c->seed);
		eval_print_table(stdout, st, n_st, m, &sc, nb);
		printf("total %.1f s\n", total);
		rc = 0;
	}
	eval_scores_free(&sc);
out:
	for (size_t i = 0; i < n_st; i++)
		eval_setting_free(&st[i]);
	return rc;
}

int cmd_heads(int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "search")) {
		if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
			opts_usage(&heads_spec, stdout);
			return 0;
		}
		fprintf(stderr,
		        "itt heads: the only subcommand is search (see itt heads --help)\n");
		return 2;
	}
	struct heads_cmd c = {0};
	int rc = eval_parse_argv(&heads_spec, argc - 1, argv + 1, &c);
	if (rc >= 0)
		return rc;
	if (!c.model || !c.task || !c.out) {
		fprintf(stderr,
		        "itt heads search: --local MODEL, --task TASK and --out HEADSET are "
		        "required (see --help)\n");
		return 2;
	}
	struct eval_task sel, test;
	int lrc = eval_task_load(c.task, EVAL_SPLIT_SELECT, &sel, "heads search");
	if (lrc < 0)
		return lrc == -1 ? 2 : 1;
	lrc = eval_task_load(c.task, EVAL_SPLIT_TEST, &test, "heads search");
	if (lrc < 0) {
		eval_task_free(&sel);
		return lrc == -1 ? 2 : 1;
	}
	struct search s = {.c = &c, .sel = &sel};
	rc = 1;
	if (eval_open_engine(c.model, (int)c.threads, &s.e, "heads search"))
		goto out;
	s.NL = s.e->model->hp.n_layers;
	s.NH = s.e->model->hp.n_heads;
	s.NM = (size_t)s.NL * s.NH;
	s.cur = calloc(s.NM, 1);
	s.masks = calloc((HEADS_GROUP + 1) * s.NM, 1);
	s.rounds = calloc((size_t)c.max_heads + 1, sizeof *s.rounds);
	s.st = calloc(HEADS_GROUP + 8, sizeof *s.st);
	s.br = calloc(HEADS_GROUP + 8, sizeof *s.br);
	if (!s.cur || !s.masks || !s.rounds || !s.st || !s.br) {
		fprintf(stderr, "itt heads search: out of memory\n");
		goto out;
	}
	if (!c.json)
		printf("heads search: %zu select items, %zu test items; %u layers x %u heads; "
		       "scale %g, blend %g, objective %s\n",
		       sel.n, test.n, s.NL, s.NH, c.scale, c.blend,
		       c.margin_obj ? "margin" : "acc");
	fflush(stdout);
	double t_start = clock_mono_s();
	if (search_plain(&s) < 0)
		goto out;
	if (!c.json)
		printf("round 0: plain: acc %.4f, margin %+.4f\n", s.acc, s.margin);
	if (search_run(&s) < 0)
		goto out;
	rc = run_test(&s, &test, t_start);
out:
	free(s.st);
	free(s.br);
	free(s.cur);
	free(s.masks);
	free(s.rounds);
	engine_close(&s.e);
	eval_task_free(&sel);
	eval_task_free(&test);
	return rc;
}
