/* itt-dump-logits: runs one sequence through the engine and writes the raw
 * float32 output of every position, for comparison with the NumPy reference.
 *
 *   itt-dump-logits MODEL.gguf --tokens 1,2,3 [--layers A:B] [--hidden-in FILE]
 *                   [--threads T] [--batch N] [--perturb L:H,... [--blend U]]
 *                   [--stop-layer K] [--exit-layers L,... --exit-threshold T
 *                   [--exited-out FILE]] [--act-quant on|off] --out FILE
 *
 * Output is [n_tokens][vocab] logits on a last stage and [n_tokens][dim]
 * residual stream otherwise.  --batch N feeds the tokens N rows at a time
 * (default: all at once), so batched and one-at-a-time runs can be compared.
 * The techniques of forward.h apply to every row: --perturb the listed heads
 * (blend U, default 1), --stop-layer a draft pass over layers [first, K),
 * --exit-layers/--exit-threshold early exit, with the layer each token
 * stopped after written to --exited-out as one comma-separated line.
 * --act-quant sets engine_config.act_quant (default on). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "guidance.h"

static int usage(void)
{
	fprintf(stderr, "usage: itt-dump-logits MODEL.gguf --tokens IDS [--layers A:B] "
			"[--hidden-in FILE] [--threads T] [--batch N] [--perturb L:H,... "
			"[--blend U]] [--stop-layer K] [--exit-layers L,... --exit-threshold T "
			"[--exited-out FILE]] [--act-quant on|off] --out FILE\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *path = NULL, *out_path = NULL, *hidden_path = NULL, *tok_arg = NULL;
	const char *perturb_arg = NULL, *exit_arg = NULL, *exited_path = NULL;
	unsigned first = 0, last = 0, batch = 0, stop_layer = 0;
	float blend = 1.0f, threshold = -1.0f;
	int threads = 1, act_quant = 1;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--tokens") && v)
			tok_arg = argv[++i];
		else if (!strcmp(a, "--layers") && v) {
			if (sscanf(argv[++i], "%u:%u", &first, &last) != 2)
				return usage();
		} else if (!strcmp(a, "--hidden-in") && v)
			hidden_path = argv[++i];
		else if (!strcmp(a, "--out") && v)
			out_path = argv[++i];
		else if (!strcmp(a, "--threads") && v)
			threads = atoi(argv[++i]);
		else if (!strcmp(a, "--batch") && v)
			batch = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--perturb") && v)
			perturb_arg = argv[++i];
		else if (!strcmp(a, "--blend") && v)
			blend = strtof(argv[++i], NULL);
		else if (!strcmp(a, "--stop-layer") && v)
			stop_layer = (unsigned)atoi(argv[++i]);
		else if (!strcmp(a, "--exit-layers") && v)
			exit_arg = argv[++i];
		else if (!strcmp(a, "--exit-threshold") && v)
			threshold = strtof(argv[++i], NULL);
		else if (!strcmp(a, "--exited-out") && v)
			exited_path = argv[++i];
		else if (!strcmp(a, "--act-quant") && v) {
			const char *q = argv[++i];
			if (strcmp(q, "on") && strcmp(q, "off"))
				return usage();
			act_quant = !strcmp(q, "on");
		}
		else if (a[0] != '-' && !path)
			path = a;
		else
			return usage();
	}
	if (!path || !out_path || !tok_arg)
		return usage();

	size_t n = 0, cap = 16;
	int32_t *tokens = malloc(cap * sizeof *tokens);
	for (const char *p = tok_arg; *p;) {
		char *end;
		errno = 0;
		long t = strtol(p, &end, 10);
		if (end == p || errno) {
			fprintf(stderr, "itt-dump-logits: bad token list at \"%s\"\n", p);
			return 2;
		}
		if (n == cap)
			tokens = realloc(tokens, (cap *= 2) * sizeof *tokens);
		tokens[n++] = (int32_t)t;
		p = *end == ',' ? end + 1 : end;
	}

	struct engine_config c;
	engine_config_default(&c);
	c.path = path;
	c.first = first;
	c.last = last;
	c.n_threads = threads;
	c.act_quant = act_quant;
	c.max_rows = batch ? batch : (uint32_t)n;
	struct itt_err err = {0};
	struct engine *e;
	if (engine_open(&c, &e, &err) < 0) {
		fprintf(stderr, "itt-dump-logits: %s: %s\n", itt_strerror(err.code), err.msg);
		return 1;
	}
	const struct model *m = e->model;
	size_t width = model_is_last(m) ? m->hp.vocab : m->hp.dim;
	float *hidden = NULL;
	if (!model_is_first(m)) {
		size_t want = n * m->hp.dim * sizeof(float);
		FILE *f = hidden_path ? fopen(hidden_path, "rb") : NULL;
		hidden = malloc(want);
		if (!f || fread(hidden, 1, want, f) != want) {
			fprintf(stderr, "itt-dump-logits: need --hidden-in with %zu bytes\n", want);
			return 1;
		}
		fclose(f);
	}
	/* techniques */
	const struct model_hparams *hp = &m->hp;
	uint8_t *mask = NULL;
	struct forward_perturb pert = {NULL, blend};
	const struct forward_perturb **prow = NULL;
	if (perturb_arg) {
		uint32_t n_set;
		mask = malloc((size_t)hp->n_layers * hp->n_heads);
		prow = malloc(n * sizeof *prow);
		if (guidance_parse_heads(perturb_arg, hp->n_layers, hp->n_heads, mask, &n_set,
		                         &err) < 0) {
			fprintf(stderr, "itt-dump-logits: --perturb: %s\n", err.msg);
			return 2;
		}
		pert.mask = mask;
		for (size_t i = 0; i < n; i++)
			prow[i] = &pert;
	}
	uint32_t exit_layers[64], n_exit = 0, *exited = malloc(n * sizeof *exited);
	struct forward_exit ex = {exit_layers, 0, threshold, NULL};
	if (exit_arg) {
		if (guidance_parse_exit_layers(exit_arg, hp->n_layers, exit_layers, 64, &n_exit,
		                               &err) < 0 ||
		    guidance_check_threshold(threshold, &err) < 0) {
			fprintf(stderr, "itt-dump-logits: %s\n", err.msg);
			return 2;
		}
		ex.n_layers = n_exit;
	}
	float *out = malloc(n * width * sizeof(float));
	uint32_t *pos = malloc(n * sizeof *pos);
	struct kv_seq seq, **seqs = malloc(n * sizeof *seqs);
	kv_seq_init(&seq);
	for (size_t i = 0; i < n; i++) {
		pos[i] = (uint32_t)i;
		seqs[i] = &seq;
	}
	for (size_t done = 0; done < n;) {
		uint32_t k = (uint32_t)(n - done < c.max_rows ? n - done : c.max_rows);
		struct forward_batch b = {.n_rows = k, .tokens = tokens + done, .hidden = hidden ? hidden + done * m->hp.dim : NULL, .pos = pos + done, .seqs = seqs + done, .want_logits = NULL};
		b.perturb = prow ? prow + done : NULL;
		b.stop_layer = stop_layer;
		ex.exited_at = exited + done;
		b.exit = exit_arg ? &ex : NULL;
		if (forward_run(&e->fwd, &b, out + done * width, &err) < 0) {
			fprintf(stderr, "itt-dump-logits: %s: %s\n", itt_strerror(err.code), err.msg);
			return 1;
		}
		done += k;
	}
	FILE *f = fopen(out_path, "wb");
	if (!f || fwrite(out, sizeof(float), n * width, f) != n * width || fclose(f) != 0) {
		fprintf(stderr, "itt-dump-logits: cannot write %s\n", out_path);
		return 1;
	}
	if (exited_path) {
		FILE *xf = fopen(exited_path, "w");
		for (size_t i = 0; xf && i < n; i++)
			fprintf(xf, "%s%u", i ? "," : "", exit_arg ? exited[i] : m->last - 1);
		if (!xf || fprintf(xf, "\n") < 0 || fclose(xf) != 0) {
			fprintf(stderr, "itt-dump-logits: cannot write %s\n", exited_path);
			return 1;
		}
	}
	kv_seq_free(&e->kv, &seq);
	engine_close(&e);
	free(mask);
	free(prow);
	free(exited);
	free(out);
	free(pos);
	free(seqs);
	free(hidden);
	free(tokens);
	return 0;
}
