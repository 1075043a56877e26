/* cmd-eval: the `itt eval` command line: `itt eval --local` (multiple-choice
 * scoring by log-likelihood under one or several settings, side by side,
 * with bootstrap intervals; or perplexity through cmd-local.c's code) and
 * `itt eval make-cloze` (eval-cloze.c).  The scoring itself is eval.h's.
 *
 * Contract: one option table per command drives parsing, defaults and
 * --help; a usage error is one line on stderr and exit status 2, a failure
 * to read, load or write exit status 1.
 * Only the in-process engine is supported: the wire protocol has no scoring
 * request yet, so --broker is refused. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "eval.h"
#include "opts.h"

int eval_parse_argv(const struct opt_spec *spec, int argc, char **argv, void *out)
{
	/* opts_parse reads argv[1..): put the command's name in front */
	char **av = malloc(((size_t)argc + 2) * sizeof *av);
	if (!av) {
		fprintf(stderr, "%s: out of memory\n", spec->prog);
		return 1;
	}
	av[0] = (char *)spec->prog;
	memcpy(av + 1, argv, (size_t)argc * sizeof *av);
	av[argc + 1] = NULL;
	int rc = opts_parse(spec, argc + 1, av, out, NULL);
	free(av);
	return rc == OPTS_OK ? -1 : rc == OPTS_HELP ? 0 : 2;
}

/* ---- itt eval make-cloze ------------------------------------------------ */

#define CLOZE_AT(f) offsetof(struct eval_cloze_opts, f)

static const struct opt cloze_opts[] = {
    {"data", 0, OPT_STR, NULL, 0, 1e9, CLOZE_AT(data), "FILE",
     "plain text, paragraphs separated by blank lines (required)"},
    {"out", 0, OPT_STR, NULL, 0, 1e9, CLOZE_AT(out), "TASK.jsonl", "the task written (required)"},
    {"seed", 0, OPT_LONG, "1", 0, (double)LONG_MAX, CLOZE_AT(seed), "S",
     "the whole task is a pure function of FILE and S"},
    {"choices", 0, OPT_LONG, "4", 2, 16, CLOZE_AT(choices), "K", "choices per item"},
    {"n", 0, OPT_LONG, "0", 0, 1L << 30, CLOZE_AT(n), "N",
     "items in all, round(F*N) of them selection (0: every usable one)"},
    {"split-at", 0, OPT_FLOAT, "0.5", 0, 1, CLOZE_AT(split_at), "F",
     "fraction of the paragraphs (and of N) for the selection split"},
};

static const struct opt_spec cloze_spec = {
    .prog = "itt eval make-cloze",
    .usage = "--data FILE --out TASK.jsonl [--seed S] [--choices K] [--n N] [--split-at F]",
    .about = "Builds a multiple-choice cloze task from plain text (paragraphs separated by blank\n"
             "lines, such as ../shared/data/tinystories-valid.dev.txt). An item is a paragraph of\n"
             "at least 2 sentences: the context is its text up to a sentence boundary (chosen at\n"
             "random), the true answer the next sentence (4 to 40 words), and K-1 distractors are\n"
             "sentences of other paragraphs (at least 10 paragraphs away, so from other stories)\n"
             "of similar length (2/3 to 3/2 of the answer's bytes when one can be found), all\n"
             "distinct; the choices are shuffled.\n"
             "The paragraphs are first divided, by a seeded permutation, into a selection part\n"
             "(fraction F, default 0.5) and a test part; items and their distractors come from\n"
             "their own part only, so the two splits share no paragraph (a sentence the data\n"
             "repeats, such as a story's first line, may occur in both). One file, one\n"
             "JSON object a line, selection items first:\n"
             "  {\"id\": PARAGRAPH, \"split\": \"select\"|\"test\", \"context\": \"...\",\n"
             "   \"choices\": [\"...\", ...], \"answer\": INDEX}",
    .opts = cloze_opts,
    .n_opts = OPTS_N(cloze_opts),
    .epilog = "Exit status: 0 done, 1 cannot read or write, 2 usage error or too little text.",
};

static int cmd_make_cloze(int argc, char **argv)
{
	struct eval_cloze_opts o = {0};
	int rc = eval_parse_argv(&cloze_spec, argc, argv, &o);
	if (rc >= 0)
		return rc;
	if (!o.data || !o.out) {
		fprintf(stderr,
		        "itt eval make-cloze: --data FILE and --out TASK.jsonl are required (see "
		        "--help)\n");
		return 2;
	}
	return eval_make_cloze(&o);
}

/* ---- itt eval ----------------------------------------------------------- */

struct eval_cmd {
	const char *model, *task, *scores, *perplexity;
	const char *split_name;
	enum eval_split split;
	const char *specs[EVAL_MAX_SETTINGS];
	int n_specs;
	long bootstrap, seed, threads;
	long n_paragraphs; /* -1: not given */
	bool json, recompute;
};

static int parse_split(void *out, const char *v, char *why, size_t cap)
{
	struct eval_cmd *c = out;
	static const enum eval_split splits[] = {EVAL_SPLIT_SELECT, EVAL_SPLIT_TEST,
	                                         EVAL_SPLIT_ALL};
	for (size_t i = 0; i < sizeof splits / sizeof splits[0]; i++)
		if (!strcmp(v, eval_split_name(splits[i]))) {
			c->split = splits[i];
			c->split_name = eval_split_name(splits[i]);
			return 0;
		}
	snprintf(why, cap, "expected select, test or all");
	return -1;
}

/* Repeatable: one row of the table per --setting (checked against the
 * model once it is loaded). */
static int add_setting(void *out, const char *v, char *why, size_t cap)
{
	struct eval_cmd *c = out;
	if (c->n_specs == EVAL_MAX_SETTINGS) {
		snprintf(why, cap, "at most %d settings", EVAL_MAX_SETTINGS);
		return -1;
	}
	c->specs[c->n_specs++] = v;
	return 0;
}

int eval_refuse_broker(void *out, const char *v, char *why, size_t cap)
{
	(void)out;
	(void)v;
	snprintf(why, cap, "--local only for now (the protocol has no scoring request yet)");
	return -1;
}

#define EVAL_AT(f) offsetof(struct eval_cmd, f)

static const struct opt eval_cmd_opts[] = {
    {"local", 0, OPT_STR, NULL, 0, 1e9, EVAL_AT(model), "MODEL.gguf",
     "the model, run in this process (required)"},
    {"task", 0, OPT_STR, NULL, 0, 1e9, EVAL_AT(task), "TASK.jsonl",
     "the multiple-choice task (or --perplexity)"},
    {"split", 0, OPT_FN, "all", 0, 0, 0, "select|test|all", "the items scored", parse_split},
    {"setting", 0, OPT_FN, NULL, 0, 0, 0, "SPEC",
     "a row of the table, repeatable (default plain; see below)", add_setting},
    {"bootstrap", 0, OPT_LONG, "1000", 0, 1000000, EVAL_AT(bootstrap), "B",
     "bootstrap resamples of the items"},
    {"seed", 0, OPT_LONG, "1", 0, (double)LONG_MAX, EVAL_AT(seed), "S", "the bootstrap's seed"},
    {"threads", 0, OPT_LONG, "1", 1, 256, EVAL_AT(threads), "T", "engine threads"},
    {"recompute", 0, OPT_FLAG, NULL, 0, 0, EVAL_AT(recompute), NULL,
     "context + choice run for every choice (no KV fork; for measuring)"},
    {"scores", 0, OPT_STR, NULL, 0, 1e9, EVAL_AT(scores), "FILE",
     "a JSON line per item and setting: choices' log p sums, token counts"},
    {"json", 0, OPT_FLAG, NULL, 0, 0, EVAL_AT(json), NULL,
     "one JSON object (only its \"timings\" differ between two runs)"},
    {"perplexity", 0, OPT_STR, NULL, 0, 1e9, EVAL_AT(perplexity), "FILE",
     "run `itt perplexity` on FILE (the same code) instead of a task"},
    {"n-paragraphs", 0, OPT_LONG, NULL, 0, (double)(1L << 40), EVAL_AT(n_paragraphs), "N",
     "with --perplexity: at most N paragraphs (absent: all)"},
    {"broker", 0, OPT_FN, NULL, 0, 0, 0, "ENDPOINT",
     "refused: the cluster protocol has no scoring request yet", eval_refuse_broker},
};

static const struct opt_spec eval_cmd_spec = {
    .prog = "itt eval",
    .usage = "--local MODEL.gguf --task TASK.jsonl [--split select|test|all]\n"
             "                [--setting SPEC]... [--bootstrap B] [--seed S] [--threads T]\n"
             "                [--recompute] [--scores FILE] [--json]\n"
             "       itt eval --local MODEL.gguf --perplexity FILE [--n-paragraphs N] "
             "[--threads T]\n"
             "                [--json]\n"
             "       itt eval make-cloze --data FILE --out TASK.jsonl ...   (see --help there)",
    .about = "Multiple-choice scoring by log-likelihood: for every item each choice gets the sum\n"
             "of log p(choice tokens | context) and that sum per token (\"norm\"); the chosen\n"
             "answer is the best by each, and accuracy comes with a 95% percentile bootstrap\n"
             "interval over the items (B resamples, seeded by --seed; the same resamples for\n"
             "every setting, so \"d norm\" is a paired difference from the first setting).\n"
             "Tokenization is joint: context with BOS, then context + \" \" + choice encoded the\n"
             "same way; the choice's tokens are those after the context's (the space is the\n"
             "\"▁\" of the choice's first piece, as in running text).",
    .opts = eval_cmd_opts,
    .n_opts = OPTS_N(eval_cmd_opts),
    .epilog =
        "Settings (default plain; several --setting give one row each, side by side):\n"
        "  plain                        the model's distribution\n"
        "  temp:T                       log_softmax(l / T), a temperature-only control\n"
        "  guidance:heads=L:H+L:H,s=S,u=U  attention-head perturbation guidance:\n"
        "                               log_softmax(l + s (l - l_pert)), l_pert from a second\n"
        "                               branch in which heads L:H attend to their own position\n"
        "                               (blend u: (1-u) A + u I); s >= 0 (default 2), u in\n"
        "                               [0, 1] (default 1). No plausibility cut in scoring (it\n"
        "                               would give choices -inf).\n"
        "  guidance:set=FILE,s=S,u=U    the same with a head-set file (itt heads search --out)\n"
        "  layer:L,s=S,u=U              every head of layer L perturbed (whole-layer control)\n"
        "All settings share one pass: the plain branch once, one perturbed branch per\n"
        "guidance setting, in the same batches. The context runs once per branch and is\n"
        "forked in the KV cache into one sequence per choice. tok/s is choice tokens per\n"
        "second of the forward time attributed to the setting by its rows.\n"
        "--local only for now: the cluster protocol has no scoring request yet, so there is\n"
        "no --broker path.\n"
        "Exit status: 0 done, 1 cannot load or write, 2 usage error or bad task.",
};

/* One line per item and setting: the choices' log-likelihood sums (all 17
 * digits) and token counts, for checking against another implementation. */
static int write_scores(const char *path, const struct eval_task *t, const struct eval_setting *st,
                        size_t n_st, const struct eval_scores *s)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -1;
	uint32_t K = s->max_choices;
	int rc = 0;
	for (size_t i = 0; i < t->n && rc == 0; i++)
		for (size_t si = 0; si < n_st && rc == 0; si++) {
			const struct eval_item *it = &t->items[i];
			json_t *sum = json_array(), *n_tok = json_array();
			for (uint32_t c = 0; c < it->n_choices; c++) {
				json_array_append_new(sum,
				                      json_real(s->sum[(si * t->n + i) * K + c]));
				json_array_append_new(n_tok, json_integer(s->n_tok[i * K + c]));
			}
			json_t *line =
			    json_pack("{sIsosIsoso}", "id", (json_int_t)it->id, "setting",
			              cli_json_text(st[si].name, strlen(st[si].name)), "answer",
			              (json_int_t)it->answer, "sum", sum, "n_tok", n_tok);
			/* every digit: the sums are compared with another implementation */
			if (!line ||
			    json_dumpf(line, f, JSON_COMPACT | JSON_REAL_PRECISION(17)) < 0 ||
			    fputc('\n', f) == EOF)
				rc = -1;
			json_decref(line);
		}
	bool bad = ferror(f) != 0;
	return fclose(f) == 0 && !bad && rc == 0 ? 0 : -1;
}

/* --perplexity: the same run as `itt perplexity --local M --text FILE`
 * (cmd_perplexity's argv[0] is the command's name). */
static int run_perplexity(const struct eval_cmd *c)
{
	char nb[32], tb[32];
	char *av[12];
	int ac = 0;
	if (c->task || c->n_specs) {
		fprintf(stderr, "itt eval: --perplexity does not take --task or --setting\n");
		return 2;
	}
	av[ac++] = "perplexity";
	av[ac++] = "--local";
	av[ac++] = (char *)c->model;
	av[ac++] = "--text";
	av[ac++] = (char *)c->perplexity;
	snprintf(tb, sizeof tb, "%ld", c->threads);
	av[ac++] = "--threads";
	av[ac++] = tb;
	if (c->n_paragraphs >= 0) {
		snprintf(nb, sizeof nb, "%ld", c->n_paragraphs);
		av[ac++] = "--max-paragraphs";
		av[ac++] = nb;
	}
	if (c->json)
		av[ac++] = "--json";
	av[ac] = NULL;
	return cmd_perplexity(ac, av);
}

/* The run's JSON: its parameters, the settings' rows, the timings. */
static int print_json(const struct eval_cmd *c, const struct eval_task *task,
                      const struct eval_setting *st, size_t n_st, const struct eval_metrics *m,
                      const struct eval_scores *sc, size_t n_branches)
{
	double secs = sc->seconds > 0 ? sc->seconds : 1e-9;
	json_t *j = json_pack(
	    "{sosssIsIsIsssbsIsIsIsIsos{sososI}}", "task", cli_json_text(c->task, strlen(c->task)),
	    "split", c->split_name, "items", (json_int_t)task->n, "bootstrap",
	    (json_int_t)c->bootstrap, "seed", (json_int_t)c->seed, "tokenization", "joint",
	    "prefix_share", !c->recompute, "scored_tokens", (json_int_t)sc->scored_tokens,
	    "forward_rows", (json_int_t)sc->forward_rows, "branches", (json_int_t)n_branches,
	    "boundary_mismatch", (json_int_t)sc->boundary_mismatch, "settings",
	    eval_json_settings(st, n_st, m, sc), "timings", "seconds",
	    cli_json_num(sc->seconds, "%.3f"), "rows_per_s",
	    cli_json_num((double)sc->forward_rows / secs, "%.1f"), "threads",
	    (json_int_t)c->threads);
	return cli_json_print(j, stdout);
}

/* Scores the task under the settings and prints the table or the JSON. */
static int run_task(const struct eval_cmd *c)
{
	struct eval_task task;
	int lrc = eval_task_load(c->task, c->split, &task, "eval");
	if (lrc < 0)
		return lrc == -1 ? 2 : 1;
	struct engine *e = NULL;
	if (eval_open_engine(c->model, (int)c->threads, &e, "eval")) {
		eval_task_free(&task);
		return 1;
	}
	const struct model_hparams *hp = &e->model->hp;
	struct eval_setting st[EVAL_MAX_SETTINGS];
	struct eval_branch br[EVAL_MAX_SETTINGS + 1];
	struct eval_metrics m[EVAL_MAX_SETTINGS];
	struct eval_scores sc;
	size_t nb = 1, n_st = 0;
	int rc = 2;
	br[0] = (struct eval_branch){NULL, 0};
	for (; n_st < (size_t)c->n_specs; n_st++) {
		char msg[300];
		if (eval_setting_parse(c->specs[n_st], hp->n_layers, hp->n_heads, &st[n_st], msg,
		                       sizeof msg) < 0) {
			fprintf(stderr, "itt eval: %s\n", msg);
			goto out;
		}
		if (st[n_st].kind == EVAL_GUIDANCE) {
			st[n_st].branch = (int)nb;
			br[nb++] = (struct eval_branch){st[n_st].mask, st[n_st].blend};
		}
	}
	struct eval_opts eo = {.recompute = c->recompute, .progress = !c->json, .cmd = "eval"};
	rc = 1;
	if (eval_run(e, &task, br, nb, st, n_st, &eo, &sc) < 0)
		goto out;
	if (eval_metrics(&sc, &task, c->bootstrap, (uint64_t)c->seed, m) < 0) {
		fprintf(stderr, "itt eval: out of memory\n");
	} else if (c->scores && write_scores(c->scores, &task, st, n_st, &sc) < 0) {
		fprintf(stderr, "itt eval: cannot write %s\n", c->scores);
	} else if (c->json) {
		if (print_json(c, &task, st, n_st, m, &sc, nb) == 0)
			rc = 0;
		else
			fprintf(stderr, "itt eval: writing the JSON failed\n");
	} else {
		printf("task %s, split %s: %zu items; %ld bootstrap resamples, seed %ld; %s\n",
		       c->task, c->split_name, task.n, c->bootstrap, c->seed,
		       c->recompute ? "context recomputed per choice" : "context shared (KV fork)");
		eval_print_table(stdout, st, n_st, m, &sc, nb);
		rc = 0;
	}
	eval_scores_free(&sc);
out:
	for (size_t i = 0; i < n_st; i++)
		eval_setting_free(&st[i]);
	engine_close(&e);
	eval_task_free(&task);
	return rc;
}

int cmd_eval(int argc, char **argv)
{
	if (argc >= 1 && !strcmp(argv[0], "make-cloze"))
		return cmd_make_cloze(argc - 1, argv + 1);
	struct eval_cmd c = {.n_paragraphs = -1};
	int rc = eval_parse_argv(&eval_cmd_spec, argc, argv, &c);
	if (rc >= 0)
		return rc;
	if (!c.model) {
		fprintf(stderr,
		        "itt eval: --local MODEL.gguf is required (--local only for now; see "
		        "--help)\n");
		return 2;
	}
	if (c.perplexity)
		return run_perplexity(&c);
	if (!c.task) {
		fprintf(stderr, "itt eval: --task TASK.jsonl (or --perplexity FILE) is required\n");
		return 2;
	}
	if (c.n_paragraphs >= 0) {
		fprintf(stderr, "itt eval: --n-paragraphs goes with --perplexity\n");
		return 2;
	}
	if (c.n_specs == 0)
		c.specs[c.n_specs++] = "plain";
	return run_task(&c);
}
