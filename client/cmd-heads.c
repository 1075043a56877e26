/* cmd-heads: `itt heads search`, greedy forward selection of attention
 * heads for perturbation guidance (after "Fine-Grained Perturbation
 * Guidance via Attention Head Selection"), on the selection split of a
 * multiple-choice task, then a side-by-side comparison on its test split
 * with the controls that tell whether the heads matter: random heads of the
 * same count, the whole layer holding most chosen heads, and temperature
 * alone.  Scoring is eval.h's (cmd-eval.c). */
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "eval.h"
#include "guidance.h"

static const char heads_help[] =
    "usage: itt heads search --local MODEL.gguf --task TASK.jsonl --out HEADSET\n"
    "                        [--max-heads K] [--scale S] [--blend U]\n"
    "                        [--objective acc|margin] [--seed S] [--bootstrap B]\n"
    "                        [--threads T] [--json]\n"
    "Greedy forward selection on the task's \"select\" items: each round adds to the\n"
    "chosen set every remaining (layer, head) in turn, scores guidance with that set\n"
    "(log_softmax(l + S (l - l_pert)), heads attending to their own position with blend\n"
    "U; no plausibility cut) and keeps the best; it stops after K heads (default 4) or\n"
    "when no candidate beats the current set (round 1: beats plain). Objective acc: the\n"
    "accuracy of the length-normalised choice, ties broken by the mean margin of the true\n"
    "choice's per-token log-likelihood over the best wrong one; margin: that margin alone.\n"
    "Defaults: S 2, U 1, objective acc, seed 1, B 1000.\n"
    "The heads go to HEADSET (one LAYER:HEAD a line, '#' comments; the file `itt eval\n"
    "--setting guidance:set=HEADSET,...` reads). Then the \"test\" items are scored side by\n"
    "side: plain, guidance with the searched heads, random heads of the same count\n"
    "(seeded), the whole layer holding most searched heads, and temperatures 0.9 and 1.1\n"
    "alone, with 95% bootstrap intervals and the paired difference from plain.\n"
    "--local only for now (the cluster protocol has no scoring request yet).\n";

/* Candidates scored per pass: bounds the logits kept per item. */
#define HEADS_GROUP 16

struct round_log {
	int candidates;
	int best; /* l * n_heads + h, -1 */
	double acc, margin;
	bool improved;
	double seconds;
};

static bool better(bool margin_obj, double a1, double m1, double a0, double m0)
{
	if (margin_obj)
		return m1 > m0;
	return a1 > a0 || (a1 == a0 && m1 > m0);
}

int cmd_heads(int argc, char **argv)
{
	if (argc < 1 || strcmp(argv[0], "search")) {
		if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
			fputs(heads_help, stdout);
			return 0;
		}
		fprintf(stderr, "itt heads: the only subcommand is search\n%s", heads_help);
		return 2;
	}
	argc--;
	argv++;
	const char *model = NULL, *task_path = NULL, *outp = NULL;
	long K = 4, seed = 1, B = 1000, threads = 1;
	float S = 2.0f, U = 1.0f;
	bool json = false, margin_obj = false;
	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(heads_help, stdout);
			return 0;
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else if (!strcmp(a, "--broker")) {
			fprintf(stderr, "itt heads search: --local only for now\n");
			return 2;
		} else if (!v) {
			fprintf(stderr, "itt heads search: %s needs a value or is unknown\n%s", a,
			        heads_help);
			return 2;
		} else if (!strcmp(a, "--local")) {
			model = argv[++i];
		} else if (!strcmp(a, "--task")) {
			task_path = argv[++i];
		} else if (!strcmp(a, "--out")) {
			outp = argv[++i];
		} else if (!strcmp(a, "--max-heads")) {
			if (!cli_parse_long(argv[++i], 1, 4096, &K)) {
				fprintf(stderr, "itt heads search: --max-heads wants 1..4096\n");
				return 2;
			}
		} else if (!strcmp(a, "--scale")) {
			if (!cli_parse_float(argv[++i], &S) || !isfinite(S) || S < 0) {
				fprintf(stderr, "itt heads search: --scale wants a number >= 0\n");
				return 2;
			}
		} else if (!strcmp(a, "--blend")) {
			if (!cli_parse_float(argv[++i], &U) || !(U >= 0 && U <= 1)) {
				fprintf(stderr,
				        "itt heads search: --blend wants a number in [0, 1]\n");
				return 2;
			}
		} else if (!strcmp(a, "--objective")) {
			const char *o = argv[++i];
			if (!strcmp(o, "acc"))
				margin_obj = false;
			else if (!strcmp(o, "margin"))
				margin_obj = true;
			else {
				fprintf(stderr,
				        "itt heads search: --objective wants acc or margin\n");
				return 2;
			}
		} else if (!strcmp(a, "--seed")) {
			if (!cli_parse_long(argv[++i], 0, LONG_MAX, &seed)) {
				fprintf(stderr, "itt heads search: --seed wants an integer >= 0\n");
				return 2;
			}
		} else if (!strcmp(a, "--bootstrap")) {
			if (!cli_parse_long(argv[++i], 0, 1000000, &B)) {
				fprintf(stderr, "itt heads search: --bootstrap wants 0..1000000\n");
				return 2;
			}
		} else if (!strcmp(a, "--threads")) {
			if (!cli_parse_long(argv[++i], 1, 256, &threads)) {
				fprintf(stderr, "itt heads search: --threads wants 1..256\n");
				return 2;
			}
		} else {
			fprintf(stderr, "itt heads search: unknown option %s\n%s", a, heads_help);
			return 2;
		}
	}
	if (!model || !task_path || !outp) {
		fprintf(stderr,
		        "itt heads search: --local MODEL, --task TASK and --out HEADSET are "
		        "required\n%s",
		        heads_help);
		return 2;
	}
	struct eval_task sel, test;
	int lrc = eval_task_load(task_path, EVAL_SPLIT_SELECT, &sel, "heads search");
	if (lrc < 0)
		return lrc == -1 ? 2 : 1;
	lrc = eval_task_load(task_path, EVAL_SPLIT_TEST, &test, "heads search");
	if (lrc < 0) {
		eval_task_free(&sel);
		return lrc == -1 ? 2 : 1;
	}
	struct engine *e = NULL;
	int rc = 1;
	uint8_t *cur = NULL, *masks = NULL;
	struct round_log *rounds = NULL;
	struct eval_setting *st = NULL;
	struct eval_branch *br = NULL;
	size_t n_st = 0;
	if (eval_open_engine(model, (int)threads, &e, "heads search"))
		goto out;
	const uint32_t NL = e->model->hp.n_layers, NH = e->model->hp.n_heads;
	const size_t NM = (size_t)NL * NH;
	cur = calloc(NM, 1);
	masks = calloc((HEADS_GROUP + 1) * NM, 1);
	rounds = calloc((size_t)K + 1, sizeof *rounds);
	st = calloc(HEADS_GROUP + 8, sizeof *st);
	br = calloc(HEADS_GROUP + 8, sizeof *br);
	if (!cur || !masks || !rounds || !st || !br) {
		fprintf(stderr, "itt heads search: out of memory\n");
		goto out;
	}
	if (!json)
		printf("heads search: %zu select items, %zu test items; %u layers x %u heads; "
		       "scale %g, blend %g, objective %s\n",
		       sel.n, test.n, NL, NH, S, U, margin_obj ? "margin" : "acc");
	fflush(stdout);
	struct eval_opts eo = {.progress = false, .cmd = "heads search"};
	double t_start = cli_now_ms();
	/* round 0: plain, the empty set */
	double cur_acc, cur_margin;
	{
		struct eval_setting plain = {.kind = EVAL_PLAIN};
		snprintf(plain.name, sizeof plain.name, "plain");
		struct eval_branch b0 = {NULL, 0};
		struct eval_scores sc;
		if (eval_run(e, &sel, &b0, 1, &plain, 1, &eo, &sc) < 0)
			goto out;
		eval_objective(&sc, &sel, 0, &cur_acc, &cur_margin);
		eval_scores_free(&sc);
	}
	if (!json)
		printf("round 0: plain: acc %.4f, margin %+.4f\n", cur_acc, cur_margin);
	const double plain_acc = cur_acc, plain_margin = cur_margin;
	int n_rounds = 0, n_chosen = 0;
	bool any_changed = false;
	while (n_chosen < K) {
		double t0 = cli_now_ms();
		int cand[4096], n_cand = 0;
		for (size_t h = 0; h < NM && n_cand < 4096; h++)
			if (!cur[h])
				cand[n_cand++] = (int)h;
		if (n_cand == 0)
			break;
		int best = -1;
		double best_acc = 0, best_margin = 0;
		for (int g0 = 0; g0 < n_cand; g0 += HEADS_GROUP) {
			int g1 = g0 + HEADS_GROUP < n_cand ? g0 + HEADS_GROUP : n_cand;
			/* setting 0 plain (branch 0), then one guidance per candidate */
			memset(st, 0, (HEADS_GROUP + 1) * sizeof *st);
			st[0].kind = EVAL_PLAIN;
			br[0] = (struct eval_branch){NULL, 0};
			for (int c = g0; c < g1; c++) {
				int k = c - g0 + 1;
				uint8_t *mk = masks + (size_t)k * NM;
				memcpy(mk, cur, NM);
				mk[cand[c]] = 1;
				st[k].kind = EVAL_GUIDANCE;
				st[k].scale = S;
				st[k].blend = U;
				st[k].branch = k;
				br[k] = (struct eval_branch){mk, U};
			}
			struct eval_scores sc;
			size_t n = (size_t)(g1 - g0 + 1);
			if (eval_run(e, &sel, br, n, st, n, &eo, &sc) < 0)
				goto out;
			size_t per = sc.n_items * sc.max_choices;
			for (size_t k = 1; k < n; k++) {
				double a, m;
				eval_objective(&sc, &sel, k, &a, &m);
				if (memcmp(sc.sum + k * per, sc.sum, per * sizeof(double)))
					any_changed = true;
				if (best < 0 || better(margin_obj, a, m, best_acc, best_margin)) {
					best = cand[g0 + (int)k - 1];
					best_acc = a;
					best_margin = m;
				}
			}
			eval_scores_free(&sc);
		}
		struct round_log *r = &rounds[n_rounds++];
		r->candidates = n_cand;
		r->best = best;
		r->acc = best_acc;
		r->margin = best_margin;
		r->improved = better(margin_obj, best_acc, best_margin, cur_acc, cur_margin);
		r->seconds = (cli_now_ms() - t0) / 1e3;
		if (!json)
			printf("round %d: %d candidates, best %u:%u: acc %.4f, margin %+.4f (%s; "
			       "%.1f s)\n",
			       n_rounds, n_cand, (unsigned)best / NH, (unsigned)best % NH, best_acc,
			       best_margin, r->improved ? "kept" : "no improvement, stop",
			       r->seconds);
		else
			fprintf(stderr,
			        "itt heads search: round %d: best %u:%u acc %.4f margin %+.4f%s\n",
			        n_rounds, (unsigned)best / NH, (unsigned)best % NH, best_acc,
			        best_margin, r->improved ? "" : " (stop)");
		fflush(stdout);
		if (!r->improved)
			break;
		cur[best] = 1;
		n_chosen++;
		cur_acc = best_acc;
		cur_margin = best_margin;
	}
	if (!any_changed)
		fprintf(stderr,
		        "itt heads search: warning: no candidate changed any score; does this "
		        "build's forward pass apply forward_batch.perturb?\n");
	char heads[2048];
	eval_mask_str(cur, NL, NH, heads, sizeof heads);
	{
		/* guidance.h's head-set file, then our provenance as comments;
		 * an empty set (no head beat plain) is a file of comments only,
		 * which readers refuse as naming no head */
		const char *base = strrchr(model, '/');
		struct itt_err e2 = {0};
		base = base ? base + 1 : model;
		if (n_chosen && guidance_save_head_set(outp, base, NL, NH, cur, &e2) < 0) {
			fprintf(stderr, "itt heads search: %s\n", e2.msg);
			goto out;
		}
		FILE *f = fopen(outp, n_chosen ? "a" : "w");
		if (f) {
			if (!n_chosen)
				fprintf(f,
				        "# itt-head-set model=%s layers=%u heads=%u\n"
				        "# empty: no head beat plain on the selection split\n",
				        base, NL, NH);
			fprintf(f,
			        "# searched by itt heads search on %s (select split, %zu items): "
			        "scale %g, blend %g, objective %s, select acc %.4f, margin %+.4f\n",
			        task_path, sel.n, S, U, margin_obj ? "margin" : "acc", cur_acc,
			        cur_margin);
		}
		bool bad = !f || ferror(f);
		if (!f || fclose(f) || bad) {
			fprintf(stderr, "itt heads search: cannot write %s\n", outp);
			goto out;
		}
	}
	if (!json)
		printf("head set: %s -> %s\n", n_chosen ? heads : "(empty: no head beat plain)",
		       outp);

	/* the test split, side by side */
	char specs[8][2200], labels[8][32];
	int ns = 0;
	snprintf(labels[ns], 32, "plain");
	snprintf(specs[ns++], sizeof specs[0], "plain");
	if (n_chosen) {
		snprintf(labels[ns], 32, "searched");
		snprintf(specs[ns++], sizeof specs[0], "guidance:heads=%s,s=%g,u=%g", heads, S, U);
		/* random heads of the same count */
		uint64_t rng = (uint64_t)seed ^ 0x4EAD5EEDull;
		uint32_t *idx = malloc(NM * sizeof *idx);
		uint8_t *rm = calloc(NM, 1);
		char rh[2048];
		if (!idx || !rm) {
			free(idx);
			free(rm);
			fprintf(stderr, "itt heads search: out of memory\n");
			goto out;
		}
		for (size_t i = 0; i < NM; i++)
			idx[i] = (uint32_t)i;
		for (int i = 0; i < n_chosen; i++) {
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
		snprintf(specs[ns++], sizeof specs[0], "guidance:heads=%s,s=%g,u=%g", rh, S, U);
		/* the layer holding most chosen heads (lowest on a tie) */
		uint32_t bl = 0, bc = 0;
		for (uint32_t l = 0; l < NL; l++) {
			uint32_t c = 0;
			for (uint32_t h = 0; h < NH; h++)
				c += cur[(size_t)l * NH + h];
			if (c > bc) {
				bc = c;
				bl = l;
			}
		}
		snprintf(labels[ns], 32, "whole layer");
		snprintf(specs[ns++], sizeof specs[0], "layer:%u,s=%g,u=%g", bl, S, U);
	}
	snprintf(labels[ns], 32, "temperature");
	snprintf(specs[ns++], sizeof specs[0], "temp:0.9");
	snprintf(labels[ns], 32, "temperature");
	snprintf(specs[ns++], sizeof specs[0], "temp:1.1");
	size_t nb = 1;
	br[0] = (struct eval_branch){NULL, 0};
	for (n_st = 0; n_st < (size_t)ns; n_st++) {
		char msg[300];
		if (eval_setting_parse(specs[n_st], NL, NH, &st[n_st], msg, sizeof msg) < 0) {
			fprintf(stderr, "itt heads search: %s\n", msg);
			goto out;
		}
		snprintf(st[n_st].name, sizeof st[n_st].name, "%.31s %.470s", labels[n_st],
		         specs[n_st]);
		if (st[n_st].kind == EVAL_GUIDANCE) {
			st[n_st].branch = (int)nb;
			br[nb++] = (struct eval_branch){st[n_st].mask, st[n_st].blend};
		}
	}
	struct eval_scores sc;
	eo.progress = !json;
	if (eval_run(e, &test, br, nb, st, n_st, &eo, &sc) < 0)
		goto out;
	struct eval_metrics m[8];
	if (eval_metrics(&sc, &test, B, (uint64_t)seed, m) < 0) {
		eval_scores_free(&sc);
		fprintf(stderr, "itt heads search: out of memory\n");
		goto out;
	}
	double total = (cli_now_ms() - t_start) / 1e3;
	if (json) {
		printf("{\"task\":");
		json_str(stdout, task_path, strlen(task_path));
		printf(",\"select_items\":%zu,\"test_items\":%zu,\"objective\":\"%s\",\"scale\":%g,"
		       "\"blend\":%g,\"seed\":%ld,\"bootstrap\":%ld,\"max_heads\":%ld,"
		       "\"round0\":{\"acc_norm\":%.6f,\"margin_norm\":%.6f},\"rounds\":[",
		       sel.n, test.n, margin_obj ? "margin" : "acc", S, U, seed, B, K, plain_acc,
		       plain_margin);
		for (int i = 0; i < n_rounds; i++)
			printf("%s{\"candidates\":%d,\"best\":\"%u:%u\",\"acc_norm\":%.6f,"
			       "\"margin_norm\":%.6f,\"kept\":%s,\"timings\":{\"seconds\":%.3f}}",
			       i ? "," : "", rounds[i].candidates, (unsigned)rounds[i].best / NH,
			       (unsigned)rounds[i].best % NH, rounds[i].acc, rounds[i].margin,
			       rounds[i].improved ? "true" : "false", rounds[i].seconds);
		printf("],\"heads\":");
		json_str(stdout, heads, strlen(heads));
		printf(",\"out\":");
		json_str(stdout, outp, strlen(outp));
		printf(",\"perturbation_changed_scores\":%s,\"test\":",
		       any_changed ? "true" : "false");
		eval_print_json_settings(stdout, st, n_st, m, &sc, nb);
		printf(",\"timings\":{\"seconds\":%.3f,\"test_seconds\":%.3f}}\n", total,
		       sc.seconds);
	} else {
		printf("\ntest split (%zu items), %ld bootstrap resamples, seed %ld:\n", test.n, B,
		       seed);
		eval_print_table(stdout, st, n_st, m, &sc, nb);
		printf("total %.1f s\n", total);
	}
	eval_scores_free(&sc);
	rc = 0;
out:
	for (size_t i = 0; i < n_st; i++)
		eval_setting_free(&st[i]);
	free(st);
	free(br);
	free(cur);
	free(masks);
	free(rounds);
	engine_close(&e);
	eval_task_free(&sel);
	eval_task_free(&test);
	return rc;
}
