/* cmd-local: `itt generate --local` and `itt perplexity --local`, the
 * in-process path through the engine (no broker, no worker process). */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "cli.h"
#include "clock.h"
#include "engine.h"
#include "sampler.h"
#include "guidance.h"

static int open_engine(const char *path, int threads, uint32_t kv_seqs, bool act_quant,
                       struct engine **e)
{
	struct engine_config c;
	struct itt_err err = {0};
	engine_config_default(&c);
	c.path = path;
	c.n_threads = threads;
	c.act_quant = act_quant;
	c.kv_bytes = 0; /* exactly kv_seqs sequences of the full context */
	c.kv_seqs = kv_seqs;
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

/* --- generate --local ------------------------------------------------------ */

/* A token's text as a C string in buf (cap bytes), or NULL. */
static const char *token_cstr(const tokenizer_t *tok, int32_t id, char *buf, size_t cap)
{
	size_t n = 0;
	const char *s = tokenizer_token_text(tok, id, &n);
	if (!s || n >= cap)
		return NULL;
	memcpy(buf, s, n);
	buf[n] = 0;
	return buf;
}

/* The prompt of a --chat run: o->msgs rendered with --chat-template or the
 * model's template into *text, tokenized into hist (special tokens parsed;
 * BOS unless the rendering starts with it), the end-of-turn ids into stops.
 * 0, or 2 after printing why. */
static int chat_prompt(const struct gen_opts *o, struct engine *e, struct chat_template *ct,
                       char **text, size_t *len, int32_t *hist, size_t *n_prompt, int32_t *stops,
                       uint32_t *n_stops)
{
	struct itt_err err = {0};
	char bos[128], eos[128];
	uint32_t ctx = e->model->hp.ctx_len;
	int rc = o->chat_template ? chat_template_by_name(o->chat_template, ct, &err)
	                          : chat_template_from_gguf(e->model->file, ct, &err);
	if (rc < 0) {
		fprintf(stderr, "itt generate: %s\n", err.msg);
		return 2;
	}
	struct chat_msg *m = calloc(o->n_msgs ? o->n_msgs : 1, sizeof *m);
	if (!m) {
		fprintf(stderr, "itt generate: out of memory\n");
		return 2;
	}
	for (size_t i = 0; i < o->n_msgs; i++)
		m[i] = (struct chat_msg){o->msgs[i].role, o->msgs[i].content};
	/* a model without BOS (or EOS) writes nothing where the template has it */
	const char *bt = token_cstr(e->tok, tokenizer_bos(e->tok), bos, sizeof bos);
	const char *et = token_cstr(e->tok, tokenizer_eos(e->tok), eos, sizeof eos);
	rc = chat_render(ct, m, o->n_msgs, bt ? bt : "", et ? et : "", text, len, &err);
	free(m);
	if (rc < 0) {
		fprintf(stderr, "itt generate: %s%s\n", err.msg,
		        ct->family == CHAT_UNKNOWN ? " (--chat-template NAME)" : "");
		return 2;
	}
	unsigned flags = TOKENIZER_PARSE_SPECIAL;
	if (!bt || !*bt || strncmp(*text, bt, strlen(bt)))
		flags |= TOKENIZER_ADD_BOS;
	if (tokenizer_encode_flags(e->tok, *text, *len, flags, hist, ctx, n_prompt, &err) < 0 ||
	    *n_prompt >= ctx) {
		fprintf(stderr,
		        "itt generate: the conversation of %zu tokens leaves no room in the "
		        "context of %u\n",
		        *n_prompt, ctx);
		return 2;
	}
	*n_stops = chat_stop_tokens(ct, e->tok, stops);
	return 0;
}

/* One sequence the step runs: the main one, the guidance branch (the same
 * tokens with heads perturbed, or the negative prompt then the same
 * generated tokens) or the full-model twin of an early-exit run. */
struct branch {
	struct kv_seq seq;
	int32_t *toks;                   /* [ctx]; fed up to seq.n_pos, known up to n */
	size_t n;
	const struct forward_perturb *pt; /* or NULL */
	float *logits;                   /* [vocab]: after its last token */
};

/* Feeds every known token of each branch (their rows share each batch:
 * max_rows split between them) and leaves the logits of each one's last
 * token.  ex (or NULL) applies to the batch; *exit_layer gets where the
 * first branch's last token stopped. */
static int feed(struct engine *e, struct branch *br, int nb, const struct forward_exit *ex,
                uint32_t *exit_layer, struct itt_err *err)
{
	uint32_t R = e->fwd.max_rows, V = e->model->hp.vocab, share = R / (uint32_t)nb;
	int32_t tok[ENGINE_DEFAULT_MAX_ROWS];
	uint32_t pos[ENGINE_DEFAULT_MAX_ROWS], at[ENGINE_DEFAULT_MAX_ROWS];
	struct kv_seq *seqs[ENGINE_DEFAULT_MAX_ROWS];
	uint8_t want[ENGINE_DEFAULT_MAX_ROWS];
	const struct forward_perturb *pt[ENGINE_DEFAULT_MAX_ROWS];
	bool any_pt = false;
	if (R > ENGINE_DEFAULT_MAX_ROWS)
		return itt_err_set(err, ITT_E_INVALID, "feed: %u rows per step", R);
	for (;;) {
		uint32_t n = 0, main_row = UINT32_MAX;
		int owner[2] = {-1, -1};
		for (int i = 0; i < nb; i++) {
			struct branch *b = &br[i];
			size_t left = b->n - b->seq.n_pos;
			uint32_t k = left < share ? (uint32_t)left : share;
			for (uint32_t j = 0; j < k; j++, n++) {
				tok[n] = b->toks[b->seq.n_pos + j];
				pos[n] = b->seq.n_pos + j;
				seqs[n] = &b->seq;
				want[n] = j + 1 == k && k == left;
				pt[n] = b->pt;
				any_pt |= b->pt != NULL;
				if (want[n]) {
					owner[i] = 1;
					if (i == 0)
						main_row = n;
				}
			}
		}
		if (n == 0)
			return 0;
		struct forward_exit x = {0};
		if (ex) {
			x = *ex;
			x.exited_at = at;
		}
		struct forward_batch fb = {.n_rows = n, .tokens = tok, .pos = pos, .seqs = seqs,
		                           .want_logits = want, .perturb = any_pt ? pt : NULL,
		                           .exit = ex ? &x : NULL};
		int rc = forward_run(&e->fwd, &fb, e->logits, err);
		if (rc < 0)
			return rc;
		uint32_t o = 0;
		for (int i = 0; i < nb; i++)
			if (owner[i] > 0)
				memcpy(br[i].logits, e->logits + (size_t)o++ * V, (size_t)V * sizeof(float));
		if (ex && exit_layer && main_row != UINT32_MAX)
			*exit_layer = at[main_row];
	}
}

/* The techniques of a generate --local request, checked against the model;
 * 0, or 2 after printing why. */
struct local_tech {
	int mode; /* 0 plain, 1 perturbed heads, 2 negative prompt */
	uint8_t *mask;
	uint32_t n_heads_set;
	struct forward_perturb pt;
	float scale;
	bool exit;
	uint32_t exit_layers[64], n_exit;
	struct forward_exit ex;
};

static int tech_setup(const struct gen_opts *o, const struct model *m, struct local_tech *t)
{
	const struct gen_technique *g = &o->tech;
	const struct model_hparams *hp = &m->hp;
	struct itt_err err = {0};
	int n_src = (g->heads != NULL) + (g->head_set != NULL) + (g->negative_prompt != NULL);

	memset(t, 0, sizeof *t);
	t->scale = g->scale;
	if (guidance_check_scale(g->scale, &err) < 0 || guidance_check_blend(g->blend, &err) < 0)
		goto bad;
	if (n_src > 1) {
		fprintf(stderr, "itt generate: --guidance-heads, --head-set and --negative-prompt "
		                "are exclusive\n");
		return 2;
	}
	if (g->scale > 0 && n_src == 0) {
		fprintf(stderr, "itt generate: --guidance-scale needs --guidance-heads, --head-set "
		                "or --negative-prompt\n");
		return 2;
	}
	if (g->heads || g->head_set) {
		t->mask = malloc((size_t)hp->n_layers * hp->n_heads);
		if (!t->mask) {
			fprintf(stderr, "itt generate: out of memory\n");
			return 2;
		}
		int rc = g->heads ? guidance_parse_heads(g->heads, hp->n_layers, hp->n_heads, t->mask,
		                                         &t->n_heads_set, &err)
		                  : guidance_load_head_set(g->head_set, hp->n_layers, hp->n_heads,
		                                           t->mask, &t->n_heads_set, NULL, &err);
		if (rc < 0) {
			fprintf(stderr, "itt generate: %s: %s\n",
			        g->heads ? "--guidance-heads" : "--head-set", err.msg);
			return 2;
		}
		t->pt.mask = t->mask;
		t->pt.blend = g->blend;
	}
	if (g->scale > 0)
		t->mode = g->negative_prompt ? 2 : 1;
	if (g->exit_threshold >= 0 || g->exit_layers) {
		if (g->exit_threshold < 0 || !g->exit_layers) {
			fprintf(stderr, "itt generate: --early-exit T needs --exit-layers L,... and "
			                "the other way round\n");
			return 2;
		}
		if (guidance_check_threshold(g->exit_threshold, &err) < 0 ||
		    guidance_parse_exit_layers(g->exit_layers, hp->n_layers, t->exit_layers, 64,
		                               &t->n_exit, &err) < 0)
			goto bad;
		if (t->mode) {
			fprintf(stderr, "itt generate: --early-exit does not combine with guidance "
			                "(--guidance-scale > 0) here\n");
			return 2;
		}
		t->exit = true;
		t->ex.layers = t->exit_layers;
		t->ex.n_layers = t->n_exit;
		t->ex.threshold = g->exit_threshold;
	}
	if (g->compare && !t->exit) {
		fprintf(stderr, "itt generate: --compare needs --early-exit\n");
		return 2;
	}
	return 0;
bad:
	fprintf(stderr, "itt generate: %s\n", err.msg);
	return 2;
}

int cmd_generate_local(struct gen_opts *o)
{
	struct engine *e;
	struct itt_err err = {0};
	struct local_tech t;
	int rc = 1;
	char *chat_text = NULL; /* --chat: the rendered conversation */
	struct chat_template ct = {0};
	int32_t stops[CHAT_MAX_STOP];
	uint32_t n_stops = 0;

	if (!o->seed_set)
		o->sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	bool two = (o->tech.scale > 0 && (o->tech.heads || o->tech.head_set ||
	                                  o->tech.negative_prompt)) ||
	           o->tech.compare;
	if (open_engine(o->local, o->threads, two ? 2 : 1, o->act_quant, &e))
		return 1;
	const struct model *m = e->model;
	uint32_t V = m->hp.vocab, ctx = m->hp.ctx_len, L = m->hp.n_layers;
	if (sampler_params_validate(&o->sp, V, &err) < 0) {
		fprintf(stderr, "itt generate: %s\n", err.msg);
		engine_close(&e);
		return 2;
	}
	if ((rc = tech_setup(o, m, &t)) != 0) {
		free(t.mask);
		engine_close(&e);
		return rc;
	}
	rc = 1;
	int32_t *hist = malloc((size_t)ctx * sizeof *hist);
	int32_t *neg = t.mode == 2 ? malloc((size_t)ctx * sizeof *neg) : NULL;
	float *logits = malloc((size_t)V * sizeof *logits);
	float *blogits = malloc((size_t)V * sizeof *blogits);
	float *glogits = malloc((size_t)V * sizeof *glogits);
	uint64_t *exits = calloc(L, sizeof *exits);
	size_t text_cap = 4096, text_len = 0, emitted = 0;
	char *text = malloc(text_cap);
	sampler_t *smp = NULL;
	size_t n_prompt = 0, n_neg = 0, agree = 0, n_cmp = 0;
	double cmp_ms = 0;
	uint32_t exit_layer = L - 1;
	/* br[0]: main; br[1]: guidance branch or full-model twin */
	struct branch br[2];
	memset(br, 0, sizeof br);
	kv_seq_init(&br[0].seq);
	kv_seq_init(&br[1].seq);
	int nb = t.mode ? 2 : 1;

	if (!hist || !logits || !blogits || !glogits || !exits || !text || (t.mode == 2 && !neg) ||
	    sampler_new(&o->sp, V, &smp, &err) < 0) {
		fprintf(stderr, "itt generate: %s\n", err.code ? err.msg : "out of memory");
		goto out;
	}
	/* a chat renders o->msgs into the prompt; only the reply is printed */
	const char *prompt = o->prompt;
	size_t plen = strlen(o->prompt);
	if (o->chat) {
		if ((rc = chat_prompt(o, e, &ct, &chat_text, &plen, hist, &n_prompt, stops,
		                      &n_stops)))
			goto out;
		rc = 1;
		prompt = chat_text;
	} else if (tokenizer_encode(e->tok, o->prompt, plen, true, hist, ctx, &n_prompt, &err) <
	           0) {
		fprintf(stderr, "itt generate: prompt of %zu tokens does not fit the context of %u\n",
			n_prompt, ctx);
		goto out;
	}
	if (n_prompt >= ctx) {
		fprintf(stderr, "itt generate: prompt of %zu tokens leaves no room in the context of %u\n",
			n_prompt, ctx);
		goto out;
	}
	if (n_prompt == 0) { /* nothing to predict from: a BPE vocabulary without BOS */
		fprintf(stderr, "itt generate: the prompt is empty and this vocabulary adds no BOS: "
		                "there is nothing to generate from\n");
		goto out;
	}
	if (t.mode == 2) {
		const char *np = o->tech.negative_prompt;
		if (tokenizer_encode(e->tok, np, strlen(np), true, neg, ctx, &n_neg, &err) < 0 ||
		    n_neg >= ctx) {
			fprintf(stderr, "itt generate: the negative prompt of %zu tokens leaves no room "
			                "in the context of %u\n", n_neg, ctx);
			goto out;
		}
	}
	br[0] = (struct branch){br[0].seq, hist, n_prompt, NULL, logits};
	if (t.mode == 1)
		br[1] = (struct branch){br[1].seq, hist, n_prompt, &t.pt, blogits};
	else if (t.mode == 2)
		br[1] = (struct branch){br[1].seq, neg, n_neg, NULL, blogits};
	else if (o->tech.compare)
		br[1] = (struct branch){br[1].seq, hist, n_prompt, NULL, blogits};
	if (!o->json && !o->chat) {
		fwrite(prompt, 1, plen, stdout);
		fflush(stdout);
	}
	double t0 = clock_mono_us() / 1e3;
	if (feed(e, br, nb, t.exit ? &t.ex : NULL, &exit_layer, &err) < 0) {
		fprintf(stderr, "itt generate: %s\n", err.msg);
		goto out;
	}
	double t1 = clock_mono_us() / 1e3;
	if (o->tech.compare) {
		if (feed(e, &br[1], 1, NULL, NULL, &err) < 0) {
			fprintf(stderr, "itt generate: %s\n", err.msg);
			goto out;
		}
		t1 = clock_mono_us() / 1e3; /* the twin's prompt counts as neither */
	}
	size_t n = n_prompt;
	const char *stop_reason = "length";
	/* Sampling the token at position n needs only the logits of n - 1;
	 * feeding it needs position n inside the context. */
	while (n - n_prompt < (size_t)o->n_predict) {
		const float *use = logits;
		if (t.mode) {
			guidance_combine(logits, blogits, V, t.scale, GUIDANCE_DEFAULT_CUT, glogits);
			use = glogits;
		}
		int32_t tok = sampler_sample(smp, use, hist, n, n);
		if (t.exit) {
			exits[exit_layer]++;
			if (o->tech.compare) {
				agree += sampler_sample(smp, blogits, hist, n, n) == tok;
				n_cmp++;
			}
		}
		hist[n++] = tok;
		bool eot = false;
		for (uint32_t i = 0; i < n_stops; i++)
			eot |= tok == stops[i];
		if (tokenizer_is_eog(e->tok, tok) || eot) {
			stop_reason = "eos";
			break;
		}
		char piece[256];
		int pl = tokenizer_decode_piece(e->tok, hist[n - 2], tok, piece, sizeof piece);
		if (pl > 0) {
			if (text_len + (size_t)pl + 1 > text_cap) {
				char *tx = realloc(text, text_cap = 2 * text_cap + (size_t)pl);
				if (!tx)
					goto out;
				text = tx;
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
		if (n - 1 >= ctx || (t.mode == 2 && n_neg >= ctx)) {
			stop_reason = "context";
			break;
		}
		br[0].n = n;
		if (t.mode == 2)
			neg[n_neg++] = tok;
		br[1].n = t.mode == 2 ? n_neg : n;
		if (feed(e, br, nb, t.exit ? &t.ex : NULL, &exit_layer, &err) < 0) {
			fprintf(stderr, "itt generate: %s\n", err.msg);
			goto out;
		}
		if (o->tech.compare) {
			double c0 = clock_mono_us() / 1e3;
			if (feed(e, &br[1], 1, NULL, NULL, &err) < 0) {
				fprintf(stderr, "itt generate: %s\n", err.msg);
				goto out;
			}
			cmp_ms += clock_mono_us() / 1e3 - c0;
		}
	}
	double t2 = clock_mono_us() / 1e3 - cmp_ms; /* without the full-model twin */
	size_t n_gen = n - n_prompt;
	if (o->json) {
		json_t *j = json_object(), *tm = json_object();
		json_object_set_new(j, "prompt", cli_json_text(prompt, plen));
		if (o->chat) {
			json_object_set_new(j, "messages", gen_json_messages(o));
			json_object_set_new(j, "chat_template",
			                    json_string(chat_template_name(&ct)));
		}
		json_object_set_new(j, "prompt_tokens", cli_json_ids(hist, n_prompt));
		json_object_set_new(j, "tokens", cli_json_ids(hist + n_prompt, n_gen));
		json_object_set_new(j, "text", cli_json_text(text, text_len));
		json_object_set_new(j, "stop_reason", json_string(stop_reason));
		json_object_set_new(j, "seed", cli_json_u64(o->sp.seed));
		json_object_set_new(j, "threads", json_integer(o->threads));
		json_object_set_new(tm, "prompt_ms", cli_json_num(t1 - t0, "%.3f"));
		json_object_set_new(tm, "gen_ms", cli_json_num(t2 - t1, "%.3f"));
		json_object_set_new(tm, "prompt_tok_s",
				    cli_json_num(n_prompt / ((t1 - t0) / 1e3 + 1e-12), "%.2f"));
		json_object_set_new(tm, "gen_tok_s",
				    cli_json_num(n_gen / ((t2 - t1) / 1e3 + 1e-12), "%.2f"));
		json_object_set_new(j, "timings", tm);
		if (t.mode) {
			json_t *g = json_object();
			json_object_set_new(g, "mode",
					    json_string(t.mode == 1 ? "heads" : "negative_prompt"));
			json_object_set_new(g, "scale", cli_json_num(t.scale, "%g"));
			if (t.mode == 1) {
				size_t need = guidance_format_heads(t.mask, L, m->hp.n_heads, NULL, 0);
				char *hs = malloc(need + 1);
				if (hs) {
					guidance_format_heads(t.mask, L, m->hp.n_heads, hs, need + 1);
					json_object_set_new(g, "heads", cli_json_text(hs, need));
					free(hs);
				}
				json_object_set_new(g, "blend", cli_json_num(t.pt.blend, "%g"));
			} else {
				json_object_set_new(g, "negative_prompt_tokens",
						    json_integer((json_int_t)n_neg));
			}
			json_object_set_new(j, "guidance", g);
		}
		if (t.exit) {
			uint64_t tot = 0, sum = 0;
			json_t *x = json_object(), *layers = json_array(), *ex = json_object();
			json_object_set_new(x, "threshold", cli_json_num(t.ex.threshold, "%g"));
			for (uint32_t i = 0; i < t.n_exit; i++)
				json_array_append_new(layers, json_integer(t.exit_layers[i]));
			json_object_set_new(x, "layers", layers);
			for (uint32_t l = 0; l < L; l++) {
				if (!exits[l])
					continue;
				char key[16];
				snprintf(key, sizeof key, "%u", l);
				json_object_set_new(ex, key, cli_json_u64(exits[l]));
				tot += exits[l];
				sum += exits[l] * (l + 1);
			}
			json_object_set_new(x, "exits", ex);
			json_object_set_new(x, "tokens", cli_json_u64(tot));
			double mean = tot ? (double)sum / (double)tot : 0.0;
			json_object_set_new(x, "mean_layers", cli_json_num(mean, "%.3f"));
			if (o->tech.compare) {
				double ag = n_cmp ? (double)agree / (double)n_cmp : 0.0;
				json_object_set_new(x, "agreement", cli_json_num(ag, "%.4f"));
				json_object_set_new(x, "compared", json_integer((json_int_t)n_cmp));
			}
			json_object_set_new(j, "early_exit", x);
		}
		cli_json_print(j, stdout);
	} else {
		if (text_len > emitted)
			fwrite(text + emitted, 1, text_len - emitted, stdout);
		printf("\n");
		fflush(stdout);
		fprintf(stderr, "[%zu prompt tokens in %.1f ms, %zu generated in %.1f ms (%.1f tok/s), "
				"stop: %s, seed %llu]\n",
			n_prompt, t1 - t0, n_gen, t2 - t1, n_gen / ((t2 - t1) / 1e3 + 1e-12),
			stop_reason, (unsigned long long)o->sp.seed);
		if (t.exit) {
			fprintf(stderr, "[early exit:");
			for (uint32_t l = 0; l < L; l++)
				if (exits[l])
					fprintf(stderr, " %llu after layer %u,", (unsigned long long)exits[l],
					        l);
			if (o->tech.compare)
				fprintf(stderr, " agreement with the full model %.1f%% of %zu",
				        n_cmp ? 100.0 * (double)agree / (double)n_cmp : 0.0, n_cmp);
			fprintf(stderr, "]\n");
		}
	}
	rc = 0;
out:
	kv_seq_free(&e->kv, &br[0].seq);
	kv_seq_free(&e->kv, &br[1].seq);
	sampler_destroy(&smp);
	free(hist);
	free(neg);
	free(logits);
	free(blogits);
	free(glogits);
	free(exits);
	free(text);
	free(chat_text);
	free(t.mask);
	engine_close(&e);
	return rc;
}

/* --- perplexity ---------------------------------------------------------- */

struct perplexity_opts {
	const char *model, *text;
	long max_par, threads;
	bool json;
};

#define PPL_AT(f) offsetof(struct perplexity_opts, f)

static const struct opt perplexity_opts_table[] = {
	{"local", 0, OPT_STR, NULL, 1, 4096, PPL_AT(model), "MODEL.gguf", "the model (required)"},
	{"text", 0, OPT_STR, NULL, 1, 4096, PPL_AT(text), "FILE", "the text (required)"},
	{"max-paragraphs", 0, OPT_LONG, "0", 0, 1L << 40, PPL_AT(max_par), NULL,
	 "score the first N paragraphs; 0: all"},
	{"threads", 't', OPT_LONG, "1", 1, 256, PPL_AT(threads), NULL, "compute threads"},
	{"json", 0, OPT_FLAG, NULL, 0, 0, PPL_AT(json), NULL, "print one JSON object"},
};

static const struct opt_spec perplexity_spec = {
	.prog = "itt perplexity",
	.usage = "--local MODEL.gguf --text FILE [options]",
	.about = "\n"
		 "Splits FILE on blank lines, strips each paragraph, encodes it (with BOS when\n"
		 "the vocabulary adds one) and sums -log softmax of each next token over\n"
		 "positions 0..n-2 (paragraphs longer than the model's context are truncated to\n"
		 "it). Prints paragraphs, predicted tokens, mean NLL and perplexity; exit 1 when\n"
		 "no paragraph has a token to predict.",
	.opts = perplexity_opts_table,
	.n_opts = OPTS_N(perplexity_opts_table),
};

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int cmd_perplexity(int argc, char **argv)
{
	struct perplexity_opts po = {0};
	int prc = opts_parse(&perplexity_spec, argc, argv, &po, NULL);
	if (prc != OPTS_OK)
		return cli_exit(prc);
	if (!po.model || !po.text) {
		fprintf(stderr, "itt perplexity: --local MODEL.gguf and --text FILE are required "
				"(see --help)\n");
		return 2;
	}
	const char *model = po.model, *text_path = po.text;
	long max_par = po.max_par;

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
	if (open_engine(model, (int)po.threads, 1, true, &e)) {
		free(buf);
		return 1;
	}
	uint32_t V = e->model->hp.vocab, ctx = e->model->hp.ctx_len;
	int32_t *ids = malloc((size_t)ctx * sizeof *ids);
	float *logits = malloc((size_t)ctx * V * sizeof *logits);
	double nll = 0;
	size_t n_pred = 0, n_par = 0;
	int rc = 1;
	double t0 = clock_mono_us() / 1e3;
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
	double t1 = clock_mono_us() / 1e3;
	if (n_pred == 0) {
		fprintf(stderr, "itt perplexity: no token to predict: each of the %zu paragraphs "
		        "encodes to at most one token%s\n", n_par,
		        tokenizer_add_bos(e->tok) ? "" : " (this vocabulary adds no BOS)");
		rc = 1;
		goto out;
	}
	double mean = nll / (double)n_pred;
	if (po.json) {
		json_t *j = json_object();
		json_object_set_new(j, "paragraphs", json_integer((json_int_t)n_par));
		json_object_set_new(j, "tokens", json_integer((json_int_t)n_pred));
		json_object_set_new(j, "mean_nll", cli_json_num(mean, "%.6f"));
		json_object_set_new(j, "ppl", cli_json_num(exp(mean), "%.6f"));
		json_object_set_new(j, "seconds", cli_json_num((t1 - t0) / 1e3, "%.3f"));
		json_object_set_new(j, "tokens_per_s",
				    cli_json_num(n_pred / ((t1 - t0) / 1e3), "%.1f"));
		cli_json_print(j, stdout);
	} else {
		printf("paragraphs %zu\npredicted tokens %zu\nmean NLL %.6f\nperplexity %.4f\n"
		       "time %.2f s (%.0f tokens/s)\n",
		       n_par, n_pred, mean, exp(mean), (t1 - t0) / 1e3, n_pred / ((t1 - t0) / 1e3));
	}
	rc = 0;
out:
	free(ids);
	free(logits);
	free(buf);
	engine_close(&e);
	return rc;
}
