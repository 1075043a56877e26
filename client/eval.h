/* eval: multiple-choice scoring by log-likelihood through the in-process
 * engine, shared by `itt eval` (cmd-eval.c) and `itt heads search`
 * (cmd-heads.c).  The module's files, one job each:
 *     eval-task.c     task files (JSONL through jansson) and whole-file reads
 *     eval-setting.c  setting specs ("plain", "temp:T", "guidance:...")
 *     eval-score.c    the engine and the scoring loop (eval_run)
 *     eval-report.c   accuracy, bootstrap intervals, the table and the JSON
 *     eval-cloze.c    a cloze task built from plain text (make-cloze)
 *
 * A task is a JSONL file, one item a line:
 *     {"id": N, "split": "select"|"test", "context": "...",
 *      "choices": ["...", ...], "answer": INDEX}
 * Each choice is scored as the sum of log p(choice tokens | context), and
 * as that sum divided by the choice's token count ("norm").
 *
 * Tokenization is joint: the context is encoded with BOS (and the
 * SentencePiece dummy-prefix space), the string context + " " + choice is
 * encoded the same way, and the choice's tokens are those past the
 * context's; the space before the choice thus belongs to its first piece
 * ("▁word"), as in running text.  When the joint encoding does not start
 * with the context's own tokens (a merge across the boundary), the choice
 * starts where the two first differ, and the item counts as a boundary
 * mismatch.
 *
 * A run computes several "branches" per item: branch 0 is the plain model,
 * every other one a perturbed copy (forward_batch.perturb: an attention-head
 * mask and a blend u) run in the same batches with its own KV sequences.
 * A "setting" turns the logits of one or two branches into log
 * probabilities:
 *     plain       log_softmax(l)
 *     temp:T      log_softmax(l / T)
 *     guidance    log_softmax(l + s (l - l_pert)), no plausibility cut (a
 *                 cut would make a choice's token -inf; scoring needs every
 *                 token's probability).
 * The context is computed once per branch and forked (kv_seq_fork) into one
 * sequence per choice, unless prefix sharing is off (recompute: every
 * choice runs context + choice from position 0).
 *
 * Invariants: results are a pure function of the model, the task, the
 * settings and the seed (the JSON differs between two runs only in its
 * "timings" members); errors are printed as one line "itt CMD: ..." by the
 * function that finds them. */
#ifndef ITT_EVAL_H
#define ITT_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "engine.h"

#define EVAL_MAX_CHOICES  64 /* per item */
#define EVAL_MAX_SETTINGS 64 /* per run of itt eval */

enum eval_split {
	EVAL_SPLIT_NONE = 0, /* the item names no split */
	EVAL_SPLIT_SELECT = 1,
	EVAL_SPLIT_TEST = 2,
	EVAL_SPLIT_ALL = 3, /* a filter: every item */
};

struct eval_item {
	long long id;
	enum eval_split split;
	char *context;
	char **choices;
	uint32_t n_choices;
	uint32_t answer;
};

struct eval_task {
	struct eval_item *items;
	size_t n;
};

/* Loads a task file; on error prints "itt CMD: FILE:LINE: reason" and
 * returns -1 (a usage-class error: exit 2), or -2 when the file cannot be
 * read (exit 1).  Only items of split filter are kept (EVAL_SPLIT_ALL: all). */
int eval_task_load(const char *path, enum eval_split filter, struct eval_task *t, const char *cmd);
void eval_task_free(struct eval_task *t);
const char *eval_split_name(enum eval_split s);

/* The whole file, NUL-terminated (the NUL not counted in *len); NULL with
 * errno set when it cannot be read. */
char *eval_read_file(const char *path, size_t *len);

/* C's isspace for the "C" locale, without the locale. */
static inline bool eval_is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* A perturbed branch: mask [n_layers][n_heads], owned by the caller. */
struct eval_branch {
	const uint8_t *mask; /* NULL: the plain model */
	float blend;
};

enum eval_kind {
	EVAL_PLAIN = 0,
	EVAL_TEMP,
	EVAL_GUIDANCE,
};

struct eval_setting {
	char name[512];
	enum eval_kind kind;
	float temp;    /* EVAL_TEMP */
	float scale;   /* EVAL_GUIDANCE: s >= 0 */
	float blend;   /* EVAL_GUIDANCE: u in [0, 1] */
	uint8_t *mask; /* EVAL_GUIDANCE: [n_layers][n_heads], owned */
	uint32_t n_heads_set;
	int branch; /* EVAL_GUIDANCE: index of its perturbed branch */
};

/* Parses SPEC ("plain", "temp:T", "guidance:heads=L:H+L:H,s=S,u=U",
 * "guidance:set=FILE,s=S,u=U", "layer:L,s=S,u=U") against the model's
 * shape; on error writes a message into msg and returns -1. */
int eval_setting_parse(const char *spec, uint32_t n_layers, uint32_t n_heads,
                       struct eval_setting *st, char *msg, size_t cap);
void eval_setting_free(struct eval_setting *st);
/* The heads of a mask as "L:H+L:H" (at most cap bytes), the form of a
 * guidance:heads= setting.  Head-set files are guidance.h's. */
void eval_mask_str(const uint8_t *mask, uint32_t n_layers, uint32_t n_heads, char *buf, size_t cap);

/* Scores of a run. */
struct eval_scores {
	size_t n_items, n_settings;
	uint32_t max_choices;
	/* [n_settings][n_items][max_choices] */
	double *sum;     /* sum of log p of the choice's tokens */
	uint32_t *n_tok; /* [n_items][max_choices] tokens per choice (setting-independent) */
	/* per run */
	uint64_t forward_rows;    /* rows run through forward_run */
	uint64_t rows_per_branch; /* rows of one branch (all branches equal) */
	uint64_t scored_tokens;   /* choice tokens scored (per setting) */
	size_t boundary_mismatch; /* items whose joint encoding changed the context */
	double seconds;
};

struct eval_opts {
	bool recompute; /* no prefix sharing */
	bool progress;  /* a line on stderr now and then */
	const char *cmd;
};

/* Scores every item of t under every setting; branches[0] must be plain.
 * Returns 0, or -1 after printing an error. */
int eval_run(struct engine *e, const struct eval_task *t, const struct eval_branch *branches,
             size_t n_branches, const struct eval_setting *settings, size_t n_settings,
             const struct eval_opts *o, struct eval_scores *out);
void eval_scores_free(struct eval_scores *s);

/* Accuracy and intervals of one setting. */
struct eval_metrics {
	double acc_sum, acc_sum_lo, acc_sum_hi;
	double acc_norm, acc_norm_lo, acc_norm_hi;
	double d_norm, d_norm_lo, d_norm_hi; /* acc_norm minus the first setting's, paired */
	double margin_norm;                  /* mean of norm(true) - max norm(wrong) */
	double ll_true_norm;                 /* mean per-token log p of the true choice */
};

/* Fills m[n_settings]: percentile bootstrap with B resamples of the items
 * (the same resamples for every setting, so differences are paired). */
int eval_metrics(const struct eval_scores *s, const struct eval_task *t, long B, uint64_t seed,
                 struct eval_metrics *m);

/* The objective of heads search: accuracy (norm) and mean margin (norm). */
void eval_objective(const struct eval_scores *s, const struct eval_task *t, size_t setting,
                    double *acc_norm, double *margin_norm);

/* Prints the side-by-side table. */
void eval_print_table(FILE *f, const struct eval_setting *st, size_t n,
                      const struct eval_metrics *m, const struct eval_scores *s,
                      size_t n_branches_used);
/* The "settings" JSON array (a new reference; NULL when out of memory);
 * numbers rounded as the table's "%.6g" (cli_json_num). */
json_t *eval_json_settings(const struct eval_setting *st, size_t n, const struct eval_metrics *m,
                           const struct eval_scores *s);

/* make-cloze: builds a cloze task from plain text (eval-cloze.c). */
struct eval_cloze_opts {
	const char *data;  /* plain text, paragraphs separated by blank lines */
	const char *out;   /* the task file written */
	long seed;         /* the task is a pure function of data and seed */
	long choices;      /* 2..16 */
	long n;            /* items in all; 0: every usable paragraph */
	float split_at;    /* the selection part's share, in [0, 1] */
};

/* The exit status: 0, 1 (cannot read or write), 2 (the data cannot give
 * the task asked for); errors are printed. */
int eval_make_cloze(const struct eval_cloze_opts *o);

/* Parses argv[0..argc) (the arguments after the command's words) with spec
 * into out; -1 to go on, else the exit status (0 after --help, 2 after a
 * one-line error). */
struct opt_spec;
int eval_parse_argv(const struct opt_spec *spec, int argc, char **argv, void *out);
/* The opt_fn of a --broker row: refuses it (scoring is --local only, the
 * cluster protocol has no scoring request yet). */
int eval_refuse_broker(void *out, const char *v, char *why, size_t cap);

/* Opens the engine for scoring (max_rows rows per step, a KV budget for
 * many sequences); 1 after printing an error. */
int eval_open_engine(const char *path, int threads, struct engine **e, const char *cmd);

/* splitmix64 */
static inline uint64_t eval_rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0, without modulo bias. */
static inline uint64_t eval_rng_below(uint64_t *s, uint64_t n)
{
	uint64_t lim = UINT64_MAX - UINT64_MAX % n, r;
	do
		r = eval_rng_next(s);
	while (r >= lim);
	return r % n;
}

#endif
