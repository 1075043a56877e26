/* eval-report: what a scoring run means: per-setting accuracy (by the sum
 * and by the per-token "norm" score), percentile-bootstrap intervals, the
 * paired difference from the first setting, the heads-search objective, and
 * their side-by-side table and JSON.
 *
 * Contract: everything here is a pure function of the scores, the task and
 * the seed (the bootstrap draws the same resamples for every setting, so
 * differences are paired); only the "timings" members depend on the clock.
 * Invariants: ties go to the lower choice index; JSON numbers are rounded as
 * "%.6g" (cli_json_num), so they read back exactly as the table's digits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "eval.h"

/* Per item of setting si: correct by sum, by norm, the norm margin, the
 * true choice's norm score. */
static void item_outcome(const struct eval_scores *s, const struct eval_task *t, size_t si,
                         size_t i, bool *ok_sum, bool *ok_norm, double *margin, double *ll_true)
{
	const struct eval_item *it = &t->items[i];
	uint32_t K = s->max_choices, best_s = 0, best_n = 0;
	const double *sum = s->sum + (si * s->n_items + i) * K;
	const uint32_t *nt = s->n_tok + i * K;
	double wrong = -INFINITY;
	for (uint32_t c = 0; c < it->n_choices; c++) {
		if (sum[c] > sum[best_s])
			best_s = c;
		if (sum[c] / nt[c] > sum[best_n] / nt[best_n])
			best_n = c;
		if (c != it->answer && sum[c] / nt[c] > wrong)
			wrong = sum[c] / nt[c];
	}
	*ok_sum = best_s == it->answer;
	*ok_norm = best_n == it->answer;
	*ll_true = sum[it->answer] / nt[it->answer];
	*margin = *ll_true - wrong;
}

void eval_objective(const struct eval_scores *s, const struct eval_task *t, size_t setting,
                    double *acc_norm, double *margin_norm)
{
	double acc = 0, mar = 0;
	for (size_t i = 0; i < s->n_items; i++) {
		bool a, b;
		double m, l;
		item_outcome(s, t, setting, i, &a, &b, &m, &l);
		acc += b;
		mar += m;
	}
	*acc_norm = s->n_items ? acc / (double)s->n_items : NAN;
	*margin_norm = s->n_items ? mar / (double)s->n_items : NAN;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The q-quantile of sorted x[n] (linear between order statistics). */
static double quantile(const double *x, size_t n, double q)
{
	if (n == 0)
		return NAN;
	double h = q * (double)(n - 1);
	size_t lo = (size_t)h;
	if (lo + 1 >= n)
		return x[n - 1];
	return x[lo] + (h - (double)lo) * (x[lo + 1] - x[lo]);
}

int eval_metrics(const struct eval_scores *s, const struct eval_task *t, long B, uint64_t seed,
                 struct eval_metrics *m)
{
	size_t N = s->n_items, S = s->n_settings;
	uint8_t *ok_s = malloc(S * N + 1), *ok_n = malloc(S * N + 1);
	double *boot = malloc(((size_t)B * 3 * S + 1) * sizeof *boot);
	uint32_t *idx = malloc((N + 1) * sizeof *idx);
	if (!ok_s || !ok_n || !boot || !idx) {
		free(ok_s);
		free(ok_n);
		free(boot);
		free(idx);
		return -1;
	}
	for (size_t si = 0; si < S; si++) {
		struct eval_metrics *e = &m[si];
		memset(e, 0, sizeof *e);
		double as = 0, an = 0, mar = 0, ll = 0;
		for (size_t i = 0; i < N; i++) {
			bool a, b;
			double mg, l;
			item_outcome(s, t, si, i, &a, &b, &mg, &l);
			ok_s[si * N + i] = a;
			ok_n[si * N + i] = b;
			as += a;
			an += b;
			mar += mg;
			ll += l;
		}
		e->acc_sum = as / (double)N;
		e->acc_norm = an / (double)N;
		e->margin_norm = mar / (double)N;
		e->ll_true_norm = ll / (double)N;
		e->d_norm = e->acc_norm - m[0].acc_norm;
	}
	/* the same resamples for every setting: paired differences */
	uint64_t rng = seed ^ 0xB00757A9ull;
	for (long b = 0; b < B; b++) {
		for (size_t i = 0; i < N; i++)
			idx[i] = (uint32_t)eval_rng_below(&rng, N);
		double base = 0;
		for (size_t si = 0; si < S; si++) {
			double as = 0, an = 0;
			for (size_t i = 0; i < N; i++) {
				as += ok_s[si * N + idx[i]];
				an += ok_n[si * N + idx[i]];
			}
			as /= (double)N;
			an /= (double)N;
			if (si == 0)
				base = an;
			boot[(0 * S + si) * (size_t)B + (size_t)b] = as;
			boot[(1 * S + si) * (size_t)B + (size_t)b] = an;
			boot[(2 * S + si) * (size_t)B + (size_t)b] = an - base;
		}
	}
	for (size_t si = 0; si < S; si++) {
		double *v[3];
		for (int k = 0; k < 3; k++) {
			v[k] = boot + ((size_t)k * S + si) * (size_t)B;
			qsort(v[k], (size_t)B, sizeof(double), cmp_double);
		}
		struct eval_metrics *e = &m[si];
		e->acc_sum_lo = quantile(v[0], (size_t)B, 0.025);
		e->acc_sum_hi = quantile(v[0], (size_t)B, 0.975);
		e->acc_norm_lo = quantile(v[1], (size_t)B, 0.025);
		e->acc_norm_hi = quantile(v[1], (size_t)B, 0.975);
		e->d_norm_lo = quantile(v[2], (size_t)B, 0.025);
		e->d_norm_hi = quantile(v[2], (size_t)B, 0.975);
	}
	free(ok_s);
	free(ok_n);
	free(boot);
	free(idx);
	return 0;
}

static int setting_branches(const struct eval_setting *st)
{
	return st->kind == EVAL_GUIDANCE ? 2 : 1;
}

/* Scored tokens per second of the forward time attributed to the setting
 * by its share of the rows (plain and temp: one branch; guidance: two). */
static double setting_tok_s(const struct eval_setting *st, const struct eval_scores *s)
{
	if (!s->forward_rows || s->seconds <= 0)
		return NAN;
	double t = s->seconds * (double)(setting_branches(st) * s->rows_per_branch) /
	           (double)s->forward_rows;
	return (double)s->scored_tokens / t;
}

static void ci(FILE *f, double v, double lo, double hi, bool sign)
{
	char a[80];
	if (isnan(lo))
		snprintf(a, sizeof a, sign ? "%+.3f" : "%.3f", v);
	else
		snprintf(a, sizeof a, sign ? "%+.3f [%+.3f, %+.3f]" : "%.3f [%.3f, %.3f]", v, lo,
		         hi);
	fprintf(f, "  %-24s", a);
}

void eval_print_table(FILE *f, const struct eval_setting *st, size_t n,
                      const struct eval_metrics *m, const struct eval_scores *s,
                      size_t n_branches_used)
{
	int w = 7;
	for (size_t i = 0; i < n; i++) {
		int l = (int)strlen(st[i].name);
		w = l > w ? l : w;
	}
	w = w > 64 ? 64 : w;
	char dh[80];
	snprintf(dh, sizeof dh, "d norm vs row 1");
	fprintf(f, "%-*s  %-24s  %-24s  %-24s  %10s\n", w, "setting", "acc sum [95% CI]",
	        "acc norm [95% CI]", dh, "tok/s");
	for (size_t i = 0; i < n; i++) {
		fprintf(f, "%-*.*s", w, w, st[i].name);
		ci(f, m[i].acc_sum, m[i].acc_sum_lo, m[i].acc_sum_hi, false);
		ci(f, m[i].acc_norm, m[i].acc_norm_lo, m[i].acc_norm_hi, false);
		if (i == 0)
			fprintf(f, "  %-24s", "-");
		else
			ci(f, m[i].d_norm, m[i].d_norm_lo, m[i].d_norm_hi, true);
		fprintf(f, "  %10.0f\n", setting_tok_s(&st[i], s));
	}
	fprintf(f,
	        "%zu items, %llu choice tokens scored; %llu forward rows (%zu branches) in %.2f s "
	        "(%.0f rows/s)\n",
	        s->n_items, (unsigned long long)s->scored_tokens,
	        (unsigned long long)s->forward_rows, n_branches_used, s->seconds,
	        (double)s->forward_rows / (s->seconds > 0 ? s->seconds : 1e-9));
	if (s->boundary_mismatch)
		fprintf(f, "%zu items: the joint encoding changed the context's last tokens\n",
		        s->boundary_mismatch);
	fprintf(f, "tok/s: choice tokens per second of the time attributed to the setting by its "
	           "rows (guidance runs two branches)\n");
}

/* ---- JSON --------------------------------------------------------------- */

/* Sets o[key] = v (taking v); false when either is NULL. */
static bool put(json_t *o, const char *key, json_t *v)
{
	return json_object_set_new(o, key, v) == 0;
}

/* name, kind, the kind's parameters, the accuracies with their intervals,
 * the margins and the throughput, per setting. */
json_t *eval_json_settings(const struct eval_setting *st, size_t n, const struct eval_metrics *m,
                           const struct eval_scores *s)
{
	static const char *const kinds[] = {"plain", "temp", "guidance"};
	static const char *const k[] = {"acc_sum", "acc_norm", "d_norm_vs_first"};
	json_t *arr = json_array();
	bool ok = arr != NULL;
	for (size_t i = 0; ok && i < n; i++) {
		const struct eval_metrics *e = &m[i];
		const double v[] = {e->acc_sum,  e->acc_sum_lo,  e->acc_sum_hi,
		                    e->acc_norm, e->acc_norm_lo, e->acc_norm_hi,
		                    e->d_norm,   e->d_norm_lo,   e->d_norm_hi};
		json_t *o = json_object();
		ok &= put(o, "name", cli_json_text(st[i].name, strlen(st[i].name)));
		ok &= put(o, "kind", json_string(kinds[st[i].kind]));
		if (st[i].kind == EVAL_TEMP)
			ok &= put(o, "temp", cli_json_num(st[i].temp, "%.6g"));
		if (st[i].kind == EVAL_GUIDANCE) {
			ok &= put(o, "n_heads", json_integer(st[i].n_heads_set));
			ok &= put(o, "scale", cli_json_num(st[i].scale, "%.6g"));
			ok &= put(o, "blend", cli_json_num(st[i].blend, "%.6g"));
		}
		for (int q = 0; q < 3; q++) {
			char ci[32];
			snprintf(ci, sizeof ci, "%s_ci", k[q]);
			ok &= put(o, k[q], cli_json_num(v[3 * q], "%.6g"));
			ok &= put(o, ci,
			          json_pack("[oo]", cli_json_num(v[3 * q + 1], "%.6g"),
			                    cli_json_num(v[3 * q + 2], "%.6g")));
		}
		ok &= put(o, "margin_norm", cli_json_num(e->margin_norm, "%.6g"));
		ok &= put(o, "ll_true_norm", cli_json_num(e->ll_true_norm, "%.6g"));
		ok &=
		    put(o, "timings",
		        json_pack("{so}", "tok_s", cli_json_num(setting_tok_s(&st[i], s), "%.6g")));
		ok &= json_array_append_new(arr, o) == 0;
	}
	if (!ok) {
		json_decref(arr);
		return NULL;
	}
	return arr;
}
