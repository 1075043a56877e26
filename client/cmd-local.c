/* cmd-local: `itt generate --local` and `itt perplexity --local`, the
 * in-process path through the engine (no broker, no worker process). */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"

static int open_engine(const char *path, int threads, struct engine **e)
{
	struct engine_config c;
	struct itt_err err = {0};
	engine_config_default(&c);
	c.path = path;
	c.n_threads = threads;
	c.kv_bytes = 0; /* exactly one sequence of the full context */
	if (engine_open(&c, e, &err) < 0) {
		fprintf(stderr, "itt: cannot load %s: %s: %s\n", path, itt_strerror(err.code), err.msg);
		return 1;
	}
	if (!(*e)->tok) {
		fprintf(stderr, "itt: %s has no tokenizer in its metadata\n", path);
		engine_close(e);
		return 1;
	}
	return 0;
}

int cmd_generate_local(struct gen_opts *o)
{
	struct engine *e;
	struct itt_err err = {0};
	int rc = 1;

	if (!o->seed_set)
		o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	if (open_engine(o->local, o->threads, &e))
		return 1;
	const struct model *m = e->model;
	uint32_t V = m->hp.vocab, ctx = m->hp.ctx_len;
	if (sampler_params_validate(&o->sp, V, &err) < 0) {
		fprintf(stderr, "itt generate: %s\n", err.msg);
		engine_close(&e);
		return 2;
	}
	int32_t *hist = malloc((size_t)ctx * sizeof *hist);
	float *logits = malloc((size_t)V * sizeof *logits);
	size_t text_cap = 4096, text_len = 0, emitted = 0;
	char *text = malloc(text_cap);
	sampler_t *smp = NULL;
	size_t n_prompt = 0;
	struct kv_seq seq;
	kv_seq_init(&seq);

	if (!hist || !logits || !text || sampler_new(&o->sp, V, &smp, &err) < 0) {
		fprintf(stderr, "itt generate: %s\n", err.code ? err.msg : "out of memory");
		goto out;
	}
	size_t plen = strlen(o->prompt);
	if (tokenizer_encode(e->tok, o->prompt, plen, true, hist, ctx, &n_prompt, &err) < 0) {
		fprintf(stderr, "itt generate: prompt of %zu tokens does not fit the context of %u\n",
			n_prompt, ctx);
		goto out;
	}
	if (n_prompt >= ctx) {
		fprintf(stderr, "itt generate: prompt of %zu tokens leaves no room in the context of %u\n",
			n_prompt, ctx);
		goto out;
	}
	if (!o->json) {
		fwrite(o->prompt, 1, plen, stdout);
		fflush(stdout);
	}
	double t0 = cli_now_ms();
	if (engine_prefill(e, &seq, hist, (uint32_t)n_prompt, NULL, logits, &err) < 0) {
		fprintf(stderr, "itt generate: %s\n", err.msg);
		goto out;
	}
	double t1 = cli_now_ms();
	size_t n = n_prompt;
	const char *stop_reason = "length";
	/* Sampling the token at position n needs only the logits of n - 1;
	 * feeding it needs position n inside the context. */
	while (n - n_prompt < (size_t)o->n_predict) {
		int32_t tok = sampler_sample(smp, logits, hist, n, n);
		hist[n++] = tok;
		if (tok == tokenizer_eos(e->tok)) {
			stop_reason = "eos";
			break;
		}
		char piece[256];
		int pl = tokenizer_decode_piece(e->tok, hist[n - 2], tok, piece, sizeof piece);
		if (pl > 0) {
			if (text_len + (size_t)pl + 1 > text_cap) {
				char *t = realloc(text, text_cap = 2 * text_cap + (size_t)pl);
				if (!t)
					goto out;
				text = t;
			}
			memcpy(text + text_len, piece, (size_t)pl);
			text_len += (size_t)pl;
		}
		size_t safe, hit = sampler_find_stop(text, text_len, o->stops, (size_t)o->n_stops,
						     &safe);
		bool stopped = hit < text_len;
		if (stopped) {
			text_len = hit;
			safe = hit;
			stop_reason = "stop";
		}
		if (!o->json && safe > emitted) {
			fwrite(text + emitted, 1, safe - emitted, stdout);
			fflush(stdout);
			emitted = safe;
		}
		if (stopped)
			break;
		if (n - n_prompt >= (size_t)o->n_predict)
			break;
		if (n - 1 >= ctx) {
			stop_reason = "context";
			break;
		}
		int32_t cur = tok;
		uint32_t pos = (uint32_t)n - 1;
		struct kv_seq *sp = &seq;
		struct forward_batch b = {.n_rows = 1, .tokens = &cur, .hidden = NULL, .pos = &pos, .seqs = &sp, .want_logits = NULL};
		if (forward_run(&e->fwd, &b, logits, &err) < 0) {
			fprintf(stderr, "itt generate: %s\n", err.msg);
			goto out;
		}
	}
	double t2 = cli_now_ms();
	size_t n_gen = n - n_prompt;
	if (o->json) {
		printf("{\"prompt\":");
		json_str(stdout, o->prompt, plen);
		printf(",\"prompt_tokens\":");
		json_ids(stdout, hist, n_prompt);
		printf(",\"tokens\":");
		json_ids(stdout, hist + n_prompt, n_gen);
		printf(",\"text\":");
		json_str(stdout, text, text_len);
		printf(",\"stop_reason\":\"%s\",\"seed\":%llu,\"threads\":%d,"
		       "\"timings\":{\"prompt_ms\":%.3f,\"gen_ms\":%.3f,\"prompt_tok_s\":%.2f,"
		       "\"gen_tok_s\":%.2f}}\n",
		       stop_reason, (unsigned long long)o->sp.seed, o->threads, t1 - t0, t2 - t1,
		       n_prompt / ((t1 - t0) / 1e3 + 1e-12),
		       n_gen / ((t2 - t1) / 1e3 + 1e-12));
	} else {
		if (text_len > emitted)
			fwrite(text + emitted, 1, text_len - emitted, stdout);
		printf("\n");
		fflush(stdout);
		fprintf(stderr, "[%zu prompt tokens in %.1f ms, %zu generated in %.1f ms (%.1f tok/s), "
				"stop: %s, seed %llu]\n",
			n_prompt, t1 - t0, n_gen, t2 - t1, n_gen / ((t2 - t1) / 1e3 + 1e-12),
			stop_reason, (unsigned long long)o->sp.seed);
	}
	rc = 0;
out:
	kv_seq_free(&e->kv, &seq);
	sampler_destroy(&smp);
	free(hist);
	free(logits);
	free(text);
	engine_close(&e);
	return rc;
}

/* --- perplexity ---------------------------------------------------------- */

static const char perplexity_help[] =
	"usage: itt perplexity --local MODEL.gguf --text FILE [--max-paragraphs N] [--threads T] "
	"[--json]\n"
	"Splits FILE on blank lines, strips each paragraph, encodes it with BOS and sums\n"
	"-log softmax of each next token over positions 0..n-2 (paragraphs longer than the\n"
	"model's context are truncated to it). Prints paragraphs, predicted tokens, mean NLL\n"
	"and perplexity.\n";

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int cmd_perplexity(int argc, char **argv)
{
	const char *model = NULL, *text_path = NULL;
	long max_par = 0, threads = 1;
	bool json = false;

	for (int i = 0; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(perplexity_help, stdout);
			return 0;
		} else if (!strcmp(a, "--local") && v) {
			model = argv[++i];
		} else if (!strcmp(a, "--text") && v) {
			text_path = argv[++i];
		} else if (!strcmp(a, "--max-paragraphs") && v) {
			if (!cli_parse_long(argv[++i], 0, 1L << 40, &max_par))
				goto bad;
		} else if (!strcmp(a, "--threads") && v) {
			if (!cli_parse_long(argv[++i], 1, 256, &threads))
				goto bad;
		} else if (!strcmp(a, "--json")) {
			json = true;
		} else {
			goto bad;
		}
	}
	if (!model || !text_path)
		goto bad;

	FILE *f = fopen(text_path, "rb");
	if (!f) {
		fprintf(stderr, "itt perplexity: cannot open %s\n", text_path);
		return 1;
	}
	size_t cap = 1 << 16, len = 0, r;
	char *buf = malloc(cap);
	while (buf && (r = fread(buf + len, 1, cap - len, f)) > 0) {
		len += r;
		if (len == cap) {
			char *b2 = realloc(buf, cap *= 2);
			if (!b2) {
				free(buf);
				buf = NULL;
			}
			buf = b2;
		}
	}
	fclose(f);
	if (!buf) {
		fprintf(stderr, "itt perplexity: out of memory reading %s\n", text_path);
		return 1;
	}

	struct engine *e;
	if (open_engine(model, (int)threads, &e)) {
		free(buf);
		return 1;
	}
	uint32_t V = e->model->hp.vocab, ctx = e->model->hp.ctx_len;
	int32_t *ids = malloc((size_t)ctx * sizeof *ids);
	float *logits = malloc((size_t)ctx * V * sizeof *logits);
	double nll = 0;
	size_t n_pred = 0, n_par = 0;
	int rc = 1;
	double t0 = cli_now_ms();
	struct itt_err err = {0};
	if (!ids || !logits) {
		fprintf(stderr, "itt perplexity: out of memory\n");
		goto out;
	}
	/* Paragraphs: runs of text separated by lines that are empty or blank. */
	for (size_t p = 0; p < len && (max_par == 0 || (long)n_par < max_par);) {
		size_t start = p, end = p;
		/* find a blank line: "\n" followed by optional spaces and "\n" */
		for (;;) {
			char *nl = memchr(buf + end, '\n', len - end);
			if (!nl) {
				end = len;
				break;
			}
			size_t q = (size_t)(nl - buf) + 1;
			while (q < len && buf[q] != '\n' && is_space(buf[q]))
				q++;
			if (q >= len || buf[q] == '\n') {
				end = (size_t)(nl - buf);
				break;
			}
			end = q;
		}
		p = end < len ? end + 1 : len;
		while (start < end && is_space(buf[start]))
			start++;
		while (end > start && is_space(buf[end - 1]))
			end--;
		if (end == start)
			continue;
		size_t n = 0;
		int trc = tokenizer_encode(e->tok, buf + start, end - start, true, ids, ctx, &n, &err);
		if (trc < 0 && trc != ITT_E_FULL) {
			fprintf(stderr, "itt perplexity: %s\n", err.msg);
			goto out;
		}
		if (n > ctx)
			n = ctx;
		n_par++;
		if (n < 2)
			continue;
		struct kv_seq seq;
		kv_seq_init(&seq);
		if (engine_prefill(e, &seq, ids, (uint32_t)(n - 1), logits, NULL, &err) < 0) {
			fprintf(stderr, "itt perplexity: %s\n", err.msg);
			kv_seq_free(&e->kv, &seq);
			goto out;
		}
		kv_seq_free(&e->kv, &seq);
		for (size_t i = 0; i + 1 < n; i++) {
			const float *l = logits + i * V;
			double mx = l[0], s = 0;
			for (uint32_t j = 1; j < V; j++)
				mx = l[j] > mx ? l[j] : mx;
			for (uint32_t j = 0; j < V; j++)
				s += exp((double)l[j] - mx);
			nll += -((double)l[ids[i + 1]] - mx - log(s));
		}
		n_pred += n - 1;
	}
	double t1 = cli_now_ms();
	double mean = n_pred ? nll / (double)n_pred : NAN;
	if (json)
		printf("{\"paragraphs\":%zu,\"tokens\":%zu,\"mean_nll\":%.6f,\"ppl\":%.6f,"
		       "\"seconds\":%.3f,\"tokens_per_s\":%.1f}\n",
		       n_par, n_pred, mean, exp(mean), (t1 - t0) / 1e3, n_pred / ((t1 - t0) / 1e3));
	else
		printf("paragraphs %zu\npredicted tokens %zu\nmean NLL %.6f\nperplexity %.4f\n"
		       "time %.2f s (%.0f tokens/s)\n",
		       n_par, n_pred, mean, exp(mean), (t1 - t0) / 1e3, n_pred / ((t1 - t0) / 1e3));
	rc = 0;
out:
	free(ids);
	free(logits);
	free(buf);
	engine_close(&e);
	return rc;
bad:
	fputs(perplexity_help, stderr);
	return 2;
}
