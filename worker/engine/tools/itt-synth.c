/* itt-synth: writes a random-weight llama-family GGUF (F32) of a chosen
 * shape and architecture variant.
 *
 * Variants (model.h): --arch llama or qwen2 (metadata keys prefixed with
 * the arch; qwen2 implies Q/K/V biases and NeoX RoPE in the readers),
 * --qkv-bias on llama too, --tied (no output.weight), --kv-heads (GQA),
 * --rope-base, --rope-scale F (rope.scaling.type "linear", factor F),
 * --rope-freqs (a rope_freqs.weight tensor, [head_dim/2] factors rising
 * from 1 to 8 like llama 3.1's), --rms-eps.  With the defaults the file is
 * the plain llama one it always was, byte for byte.
 *
 * A real vocabulary: --vocab-from FILE.gguf copies every tokenizer.* key of
 * another GGUF (llama.cpp's vocab-only ggml-vocab-*.gguf, or any model),
 * in that file's order, and sizes token_embd/output to its token count
 * (--vocab is then ignored).  --chat-template TEXT or --chat-template-from
 * FILE sets tokenizer.chat_template (replacing a copied one).
 *
 * Contract: the same arguments give the same file, byte for byte.  Weights
 * are generated while the file is written (one chunk in memory), from a
 * per-tensor splitmix64 stream: a sum of four uniforms, scaled to a
 * standard deviation of 0.02 for the embedding and 1/sqrt(fan_in) for the
 * projections (the residual outputs attn_output and ffn_down further by
 * 1/sqrt(2 * layers), so activations stay bounded through the layers);
 * biases have a standard deviation of 0.5 (so they matter); norm weights
 * are 1.  The metadata holds a valid SentencePiece-style
 * tokenizer: <unk>, <s>, </s>, the 256 <0xXX> byte tokens, U+2581 and the
 * printable ASCII characters, then distinct pseudo-random lowercase words
 * as chains of prefixes ("\u2581w", "\u2581wo", ... and "wo", ...) with
 * decreasing scores until the vocab is full (unless --vocab-from).
 * Exit codes: 0 done, 1 failure, 2 usage error (bad arguments). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gguf-write.h"
#include "llama2c.h"
#include "opts.h"
#include "tokenizer.h"

#define SYNTH_MIN_VOCAB  259          /* specials + 256 byte tokens */
#define SYNTH_MAX_PARAMS (1ull << 33) /* 32 GiB of F32 */
#define SYNTH_CHUNK      16384        /* floats per fill call */
#define SYNTH_MAX_WORD   10
#define SYNTH_MAX_TMPL   (1 << 20) /* bytes of a chat template */

struct synth_args {
	long dim, layers, heads, kv_heads, ffn, vocab, ctx;
	uint64_t seed;
	bool tied, qkv_bias, rope_freqs;
	const char *arch;
	double rope_base, rope_scale, rms_eps;
	const char *out;
	const char *name;
	const char *vocab_from;         /* or NULL: the built-in vocabulary */
	const char *chat_template;      /* --chat-template TEXT, or NULL */
	const char *chat_template_from; /* --chat-template-from FILE, or NULL */
};

/* ---- random numbers ---- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Approximately N(0, 1): four 16-bit uniforms summed (Irwin-Hall), centred
 * and scaled to unit variance; bounded by +-2*sqrt(3). */
static float gauss(uint64_t *s)
{
	uint64_t r = splitmix64(s);
	int32_t u = (int32_t)(r & 0xffff) + (int32_t)((r >> 16) & 0xffff) +
	            (int32_t)((r >> 32) & 0xffff) + (int32_t)(r >> 48);
	return (float)(u - 131070) * (1.7320508f / 65536.0f);
}

/* ---- weights ---- */

struct gen {
	uint64_t state;
	float std; /* 0: constant value */
	float value;
	bool ramp;     /* rope factors: 1 + 7 (i / (n - 1))^2, i = 0..n-1 */
	uint64_t n;    /* floats in all */
	uint64_t left; /* floats still to produce */
	float *buf;    /* shared, SYNTH_CHUNK floats */
};

static int fill_weights(void *ctx, const void **chunk, size_t *len, struct itt_err *err)
{
	struct gen *g = ctx;
	size_t n = g->left < SYNTH_CHUNK ? (size_t)g->left : SYNTH_CHUNK;
	if (g->ramp) {
		for (size_t i = 0; i < n; i++) {
			double x =
			    g->n > 1 ? (double)(g->n - g->left + i) / (double)(g->n - 1) : 0.0;
			g->buf[i] = (float)(1.0 + 7.0 * x * x);
		}
	} else if (g->std == 0.0f) {
		for (size_t i = 0; i < n; i++)
			g->buf[i] = g->value;
	} else {
		for (size_t i = 0; i < n; i++)
			g->buf[i] = g->std * gauss(&g->state);
	}
	g->left -= n;
	*chunk = g->buf;
	*len = n * sizeof(float);
	return 0;
}

/* ---- tokenizer ---- */

struct vocab_build {
	struct llama2c_vocab v;
	uint32_t cap;
	char *store; /* texts, NUL-separated */
	size_t *off; /* offset of each text in store (store moves while growing) */
	size_t used, store_cap;
	uint32_t *hash; /* open addressing: id + 1, 0 = empty */
	uint32_t hash_cap;
	float next_score;
};

static uint32_t fnv1a(const char *s, size_t n)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 16777619u;
	return h;
}

/* Slot of text in the hash: the slot holding it, or the empty one where it
 * would go. */
static uint32_t *vb_slot(struct vocab_build *b, const char *s, size_t n)
{
	uint32_t i = fnv1a(s, n) & (b->hash_cap - 1);
	for (;;) {
		uint32_t *slot = &b->hash[i];
		if (*slot == 0)
			return slot;
		uint32_t id = *slot - 1;
		if (b->v.tokens[id].len == n && memcmp(b->store + b->off[id], s, n) == 0)
			return slot;
		i = (i + 1) & (b->hash_cap - 1);
	}
}

/* Adds a token unless it exists; returns 1 if added, 0 if present, <0 on
 * allocation failure. */
static int vb_add(struct vocab_build *b, const char *s, size_t n, int32_t type, float score)
{
	uint32_t *slot = vb_slot(b, s, n);
	if (*slot)
		return 0;
	if (b->used + n + 1 > b->store_cap) {
		size_t cap = b->store_cap * 2 + n + 1;
		char *p = realloc(b->store, cap);
		if (!p)
			return ITT_E_NOMEM;
		b->store = p;
		b->store_cap = cap;
	}
	uint32_t id = b->v.n++;
	memcpy(b->store + b->used, s, n);
	b->store[b->used + n] = 0;
	b->v.tokens[id].len = n;
	b->off[id] = b->used;
	b->v.scores[id] = score;
	b->v.types[id] = type;
	b->used += n + 1;
	*slot = id + 1;
	return 1;
}

static int vb_add_normal(struct vocab_build *b, const char *s, size_t n)
{
	int rc = vb_add(b, s, n, TOKENIZER_TYPE_NORMAL, b->next_score);
	if (rc == 1)
		b->next_score -= 1.0f;
	return rc;
}

/* A letter, skewed towards the frequent ones of English. */
static char letter(uint64_t *s)
{
	static const char order[] = "etaoinshrdlcumwfgypbvkjxqz";
	uint64_t r = splitmix64(s);
	uint32_t a = (uint32_t)(r % 26), c = (uint32_t)((r >> 32) % 26);
	return order[a < c ? a : c];
}

static int build_vocab(struct vocab_build *b, uint32_t n, uint64_t seed)
{
	b->cap = n;
	b->v.tokens = calloc(n, sizeof *b->v.tokens);
	b->v.scores = calloc(n, sizeof *b->v.scores);
	b->v.types = calloc(n, sizeof *b->v.types);
	b->off = calloc(n, sizeof *b->off);
	b->hash_cap = 1;
	while (b->hash_cap < 2 * n)
		b->hash_cap *= 2;
	b->hash = calloc(b->hash_cap, sizeof *b->hash);
	b->store_cap = (size_t)n * 8;
	b->store = malloc(b->store_cap);
	if (!b->v.tokens || !b->v.scores || !b->v.types || !b->off || !b->hash || !b->store)
		return ITT_E_NOMEM;

	int rc = 0;
	rc |= vb_add(b, "<unk>", 5, TOKENIZER_TYPE_UNKNOWN, 0.0f);
	rc |= vb_add(b, "<s>", 3, TOKENIZER_TYPE_CONTROL, 0.0f);
	rc |= vb_add(b, "</s>", 4, TOKENIZER_TYPE_CONTROL, 0.0f);
	for (int i = 0; i < 256; i++) {
		char t[8];
		snprintf(t, sizeof t, "<0x%02X>", i);
		rc |= vb_add(b, t, 6, TOKENIZER_TYPE_BYTE, 0.0f);
	}
	if (rc < 0)
		return ITT_E_NOMEM;
	if (b->v.n < n && vb_add_normal(b, "\xe2\x96\x81", 3) < 0)
		return ITT_E_NOMEM;
	for (int c = 0x21; c < 0x7f && b->v.n < n; c++) {
		char t = (char)c;
		if (vb_add_normal(b, &t, 1) < 0)
			return ITT_E_NOMEM;
	}
	uint64_t s = seed ^ 0x746f6b656e73ull; /* "tokens" */
	while (b->v.n < n) {
		char word[3 + SYNTH_MAX_WORD];
		size_t len = 2 + (size_t)(splitmix64(&s) % (SYNTH_MAX_WORD - 1));
		memcpy(word, "\xe2\x96\x81", 3);
		for (size_t i = 0; i < len; i++)
			word[3 + i] = letter(&s);
		/* "\u2581" + prefixes, then the bare prefixes of two letters or more */
		for (size_t k = 1; k <= len && b->v.n < n; k++)
			if (vb_add_normal(b, word, 3 + k) < 0)
				return ITT_E_NOMEM;
		for (size_t k = 2; k <= len && b->v.n < n; k++)
			if (vb_add_normal(b, word + 3, k) < 0)
				return ITT_E_NOMEM;
	}
	for (uint32_t i = 0; i < b->v.n; i++)
		b->v.tokens[i].ptr = b->store + b->off[i];
	return 0;
}

static void free_vocab(struct vocab_build *b)
{
	free(b->v.tokens);
	free(b->v.scores);
	free(b->v.types);
	free(b->off);
	free(b->hash);
	free(b->store);
}

/* ---- a vocabulary from another file ---- */

static bool is_tokenizer_key(const struct gguf_kv *kv)
{
	return kv->key.len > 10 && memcmp(kv->key.ptr, "tokenizer.", 10) == 0;
}

/* Opens path and checks that it holds a tokenizer: tokenizer.ggml.model a
 * string and tokenizer.ggml.tokens a non-empty array of strings of at most
 * LLAMA2C_MAX_VOCAB.  Sets *g and *n_vocab. */
static int vocab_open(const char *path, gguf_t **g, uint32_t *n_vocab, struct itt_err *err)
{
	struct itt_err e = {0};
	int rc = gguf_open(path, g, &e);
	if (rc)
		return itt_err_set(err, rc, "--vocab-from %s: %s", path, e.msg);
	const struct gguf_kv *model = gguf_find_kv(*g, "tokenizer.ggml.model");
	const struct gguf_kv *toks = gguf_find_kv(*g, "tokenizer.ggml.tokens");
	if (!model || !toks) {
		rc = itt_err_set(err, ITT_E_FORMAT, "--vocab-from %s: no %s (not a vocabulary)",
		                 path, model ? "tokenizer.ggml.tokens" : "tokenizer.ggml.model");
	} else if (model->type != GGUF_TYPE_STRING) {
		rc = itt_err_set(err, ITT_E_FORMAT,
		                 "--vocab-from %s: tokenizer.ggml.model is a %s, not a string",
		                 path, gguf_type_name(model->type));
	} else if (toks->type != GGUF_TYPE_ARRAY || toks->arr_type != GGUF_TYPE_STRING ||
	           toks->arr_n == 0 || toks->arr_n > LLAMA2C_MAX_VOCAB) {
		rc =
		    itt_err_set(err, ITT_E_FORMAT,
		                "--vocab-from %s: tokenizer.ggml.tokens is not an array of 1 to %d "
		                "strings",
		                path, LLAMA2C_MAX_VOCAB);
	} else {
		*n_vocab = (uint32_t)toks->arr_n;
		return 0;
	}
	gguf_close(g);
	return rc;
}

/* Every tokenizer.* key of g, in g's order. */
static int vocab_copy(gguf_writer_t *w, const gguf_t *g, struct itt_err *err)
{
	for (uint64_t i = 0; i < gguf_n_kv(g); i++) {
		const struct gguf_kv *kv = gguf_kv_at(g, i);
		int rc;
		if (is_tokenizer_key(kv) && (rc = gguf_writer_copy_kv(w, g, kv, err)))
			return rc;
	}
	return 0;
}

/* The whole of a text file into a new NUL-terminated string (at most
 * SYNTH_MAX_TMPL bytes, no NUL inside). */
static int read_text(const char *path, char **out, size_t *len, struct itt_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return itt_err_set(err, ITT_E_IO, "--chat-template-from %s: %s", path,
		                   strerror(errno));
	char *buf = malloc(SYNTH_MAX_TMPL + 1);
	size_t n = buf ? fread(buf, 1, SYNTH_MAX_TMPL + 1, f) : 0;
	int bad = !buf ? ITT_E_NOMEM : ferror(f) ? ITT_E_IO : 0;
	fclose(f);
	if (!bad && n > SYNTH_MAX_TMPL)
		bad = ITT_E_RANGE;
	if (!bad && memchr(buf, 0, n))
		bad = ITT_E_FORMAT;
	if (bad) {
		free(buf);
		return itt_err_set(err, bad, "--chat-template-from %s: %s", path,
		                   bad == ITT_E_RANGE    ? "larger than 1 MiB"
		                   : bad == ITT_E_FORMAT ? "holds a NUL byte (not a text file)"
		                   : bad == ITT_E_NOMEM  ? "out of memory"
		                                         : "read error");
	}
	buf[n] = 0;
	*out = buf;
	*len = n;
	return 0;
}

/* ---- arguments ---- */

static int synth_parse_seed(void *out, const char *v, char *reason, size_t cap)
{
	struct synth_args *a = out;
	char *end;
	errno = 0;
	if (*v == '-' || (a->seed = strtoull(v, &end, 10), errno) || end == v || *end) {
		snprintf(reason, cap, "expected an unsigned integer");
		return -1;
	}
	return 0;
}

#define SYNTH_AT(f) offsetof(struct synth_args, f)

/* Bounds that depend on other flags (heads <= dim, kv_heads <= heads) are
 * checked after parsing. */
static const struct opt synth_opts[] = {
    {"dim", 0, OPT_LONG, "768", 1, LLAMA2C_MAX_DIM, SYNTH_AT(dim), NULL, "embedding width"},
    {"layers", 0, OPT_LONG, "12", 1, LLAMA2C_MAX_LAYERS, SYNTH_AT(layers), NULL, "blocks"},
    {"heads", 0, OPT_LONG, "12", 1, LLAMA2C_MAX_DIM, SYNTH_AT(heads), NULL,
     "query heads; dim must be a multiple, head_dim even"},
    {"kv-heads", 0, OPT_LONG, "12", 1, LLAMA2C_MAX_DIM, SYNTH_AT(kv_heads), NULL,
     "key/value heads; must divide heads"},
    {"ffn", 0, OPT_LONG, "2048", 1, LLAMA2C_MAX_HIDDEN, SYNTH_AT(ffn), NULL, "FFN width"},
    {"vocab", 0, OPT_LONG, "32000", SYNTH_MIN_VOCAB, LLAMA2C_MAX_VOCAB, SYNTH_AT(vocab), NULL,
     "tokens"},
    {"ctx", 0, OPT_LONG, "2048", 1, LLAMA2C_MAX_SEQ, SYNTH_AT(ctx), NULL, "llama.context_length"},
    {"seed", 0, OPT_FN, "1", 0, 0, 0, NULL, "random seed", synth_parse_seed},
    {"tied", 0, OPT_FLAG, NULL, 0, 0, SYNTH_AT(tied), NULL,
     "no output.weight: the head is the token embedding"},
    {"name", 0, OPT_STR, "itt-synth", 1, 255, SYNTH_AT(name), "NAME", "general.name"},
    {"arch", 0, OPT_STR, "llama", 1, 15, SYNTH_AT(arch), "ARCH",
     "general.architecture: llama or qwen2 (qwen2 implies --qkv-bias)"},
    {"qkv-bias", 0, OPT_FLAG, NULL, 0, 0, SYNTH_AT(qkv_bias), NULL,
     "write blk.N.attn_{q,k,v}.bias"},
    {"rope-base", 0, OPT_DOUBLE, "10000", 1e-3, 1e12, SYNTH_AT(rope_base), "B",
     "<arch>.rope.freq_base"},
    {"rope-scale", 0, OPT_DOUBLE, "0", 0, 1e6, SYNTH_AT(rope_scale), "F",
     "linear RoPE scaling factor (rope.scaling.type linear); 0: none written"},
    {"rope-freqs", 0, OPT_FLAG, NULL, 0, 0, SYNTH_AT(rope_freqs), NULL,
     "write rope_freqs.weight (llama 3.1-style frequency divisors, 1..8)"},
    {"rms-eps", 0, OPT_DOUBLE, "1e-5", 1e-12, 1, SYNTH_AT(rms_eps), "E",
     "<arch>.attention.layer_norm_rms_epsilon"},
    {"vocab-from", 0, OPT_STR, NULL, 1, 4096, SYNTH_AT(vocab_from), "FILE.gguf",
     "copy FILE's tokenizer.* keys (llama.cpp's ggml-vocab-*.gguf); its size replaces --vocab"},
    {"chat-template", 0, OPT_STR, NULL, 0, SYNTH_MAX_TMPL, SYNTH_AT(chat_template), "TEXT",
     "tokenizer.chat_template (replaces a copied one)"},
    {"chat-template-from", 0, OPT_STR, NULL, 1, 4096, SYNTH_AT(chat_template_from), "FILE",
     "tokenizer.chat_template from a text file (e.g. a .jinja)"},
};

static const struct opt_spec synth_spec = {
    .prog = "itt-synth",
    .usage = "OUT.gguf [options]",
    .about = "\nWrites a llama GGUF with deterministic random F32 weights and a valid\n"
             "SentencePiece-style tokenizer, or a real vocabulary (--vocab-from).",
    .opts = synth_opts,
    .n_opts = OPTS_N(synth_opts),
    .epilog = "Exit status: 0 done, 1 failure, 2 usage error.",
};

/* OPTS_OK, OPTS_HELP or OPTS_ERROR (a line on stderr). */
static int parse_args(int argc, char **argv, struct synth_args *a)
{
	int n_pos = 0;
	*a = (struct synth_args){0};
	int rc = opts_parse(&synth_spec, argc, argv, a, &n_pos);
	if (rc != OPTS_OK)
		return rc;
	if (n_pos != 1) {
		fprintf(stderr, "itt-synth: %s (try --help)\n",
		        n_pos ? "one OUT.gguf expected" : "OUT.gguf is missing");
		return OPTS_ERROR;
	}
	a->out = argv[1];
	if (strcmp(a->arch, "llama") != 0 && strcmp(a->arch, "qwen2") != 0) {
		fprintf(stderr, "itt-synth: --arch %s: expected llama or qwen2\n", a->arch);
		return OPTS_ERROR;
	}
	if (strcmp(a->arch, "qwen2") == 0)
		a->qkv_bias = true;
	if (a->chat_template && a->chat_template_from) {
		fprintf(stderr,
		        "itt-synth: --chat-template and --chat-template-from are exclusive\n");
		return OPTS_ERROR;
	}
	if (a->heads > a->dim || a->kv_heads > a->heads) {
		fprintf(stderr, "itt-synth: --heads must be <= --dim and --kv-heads <= --heads\n");
		return OPTS_ERROR;
	}
	if (a->dim % a->heads != 0) {
		fprintf(stderr, "itt-synth: --dim %ld is not a multiple of --heads %ld\n", a->dim,
		        a->heads);
		return OPTS_ERROR;
	}
	if (a->heads % a->kv_heads != 0) {
		fprintf(stderr, "itt-synth: --heads %ld is not a multiple of --kv-heads %ld\n",
		        a->heads, a->kv_heads);
		return OPTS_ERROR;
	}
	if ((a->dim / a->heads) % 2 != 0) {
		fprintf(stderr, "itt-synth: head_dim %ld (--dim / --heads) must be even\n",
		        a->dim / a->heads);
		return OPTS_ERROR;
	}
	return OPTS_OK;
}

/* ---- the model ---- */

/* The hyper-parameters under "<arch>." keys: the keys and order of
 * llama2c_add_hparams, then the RoPE scaling keys when asked for. */
static int add_hparams(gguf_writer_t *w, const struct synth_args *a, const struct llama2c_config *c,
                       struct itt_err *err)
{
	char k[96];
	const char *A = a->arch;
#define SYNTH_KEY(suffix) (snprintf(k, sizeof k, "%s.%s", A, suffix), k)
	int rc;
	if ((rc = gguf_writer_add_str(w, "general.architecture", A, err)) ||
	    (rc = gguf_writer_add_str(w, "general.name", a->name, err)) ||
	    (rc = gguf_writer_add_u32(w, "general.file_type", 0, err)) ||
	    (rc = gguf_writer_add_u32(w, SYNTH_KEY("context_length"), (uint32_t)c->seq_len, err)) ||
	    (rc = gguf_writer_add_u32(w, SYNTH_KEY("embedding_length"), (uint32_t)c->dim, err)) ||
	    (rc = gguf_writer_add_u32(w, SYNTH_KEY("feed_forward_length"), (uint32_t)c->hidden_dim,
	                              err)) ||
	    (rc = gguf_writer_add_u32(w, SYNTH_KEY("block_count"), (uint32_t)c->n_layers, err)) ||
	    (rc = gguf_writer_add_u32(w, SYNTH_KEY("attention.head_count"), (uint32_t)c->n_heads,
	                              err)) ||
	    (rc = gguf_writer_add_u32(w, SYNTH_KEY("attention.head_count_kv"),
	                              (uint32_t)c->n_kv_heads, err)) ||
	    (rc = gguf_writer_add_u32(w, SYNTH_KEY("rope.dimension_count"), (uint32_t)c->head_dim,
	                              err)) ||
	    (rc = gguf_writer_add_f32(w, SYNTH_KEY("attention.layer_norm_rms_epsilon"),
	                              (float)a->rms_eps, err)) ||
	    (rc = gguf_writer_add_f32(w, SYNTH_KEY("rope.freq_base"), (float)a->rope_base, err)))
		return rc;
	if (a->rope_scale > 0.0 &&
	    ((rc = gguf_writer_add_str(w, SYNTH_KEY("rope.scaling.type"), "linear", err)) ||
	     (rc = gguf_writer_add_f32(w, SYNTH_KEY("rope.scaling.factor"), (float)a->rope_scale,
	                               err))))
		return rc;
#undef SYNTH_KEY
	return 0;
}

struct tensor_spec {
	char name[64];
	uint64_t cols, rows; /* rows 0: a vector */
	float std;           /* 0: all ones */
};

static int synth(const struct synth_args *a, struct itt_err *err)
{
	gguf_t *vg = NULL; /* --vocab-from */
	uint32_t n_vocab = (uint32_t)a->vocab;
	char *tmpl = NULL; /* --chat-template-from */
	size_t tmpl_len = 0;
	int rc = 0;
	if ((a->vocab_from && (rc = vocab_open(a->vocab_from, &vg, &n_vocab, err))) ||
	    (a->chat_template_from &&
	     (rc = read_text(a->chat_template_from, &tmpl, &tmpl_len, err)))) {
		gguf_close(&vg);
		return rc;
	}
	struct llama2c_config c = {.dim = (int32_t)a->dim,
	                           .hidden_dim = (int32_t)a->ffn,
	                           .n_layers = (int32_t)a->layers,
	                           .n_heads = (int32_t)a->heads,
	                           .n_kv_heads = (int32_t)a->kv_heads,
	                           .vocab_size = (int32_t)n_vocab,
	                           .seq_len = (int32_t)a->ctx,
	                           .shared_classifier = a->tied};
	rc = llama2c_check_config(&c, err);
	if (rc) {
		gguf_close(&vg);
		free(tmpl);
		return rc;
	}
	uint64_t d = (uint64_t)c.dim, h = (uint64_t)c.hidden_dim, v = (uint64_t)c.vocab_size;
	uint64_t kv = (uint64_t)c.kv_dim, L = (uint64_t)c.n_layers;
	uint64_t per_layer = 2 * d * d + 2 * kv * d + 3 * h * d + 2 * d;
	if (a->qkv_bias)
		per_layer += d + 2 * kv;
	uint64_t params = v * d * (a->tied ? 1 : 2) + d + L * per_layer +
	                  (a->rope_freqs ? (uint64_t)c.head_dim / 2 : 0);
	printf("parameters: %" PRIu64 " (%.1f M), %.1f MiB as F32\n", params, params / 1e6,
	       params * 4.0 / 1048576.0);
	if (params > SYNTH_MAX_PARAMS) {
		gguf_close(&vg);
		free(tmpl);
		return itt_err_set(err, ITT_E_RANGE, "%" PRIu64 " parameters exceed the limit %llu",
		                   params, (unsigned long long)SYNTH_MAX_PARAMS);
	}

	size_t n_t = 3 + 12 * (size_t)L + 1;
	struct tensor_spec *ts = calloc(n_t, sizeof *ts);
	struct gen *gens = calloc(n_t, sizeof *gens);
	float *buf = malloc(SYNTH_CHUNK * sizeof(float));
	struct vocab_build vb = {0};
	gguf_writer_t *w = NULL;
	if (!ts || !gens || !buf) {
		rc = itt_err_set(err, ITT_E_NOMEM, "out of memory");
		goto out;
	}
	float s_in = 1.0f / sqrtf((float)d), s_res = 1.0f / sqrtf(2.0f * (float)L);
	size_t k = 0;
	ts[k++] = (struct tensor_spec){"token_embd.weight", d, v, 0.02f};
	ts[k++] = (struct tensor_spec){"output_norm.weight", d, 0, 0.0f};
	if (!a->tied)
		ts[k++] = (struct tensor_spec){"output.weight", d, v, s_in};
	for (uint64_t l = 0; l < L; l++) {
		struct {
			const char *suffix;
			uint64_t cols, rows;
			float std;
		} lt[] = {
		    {"attn_q", d, d, s_in},
		    {"attn_k", d, kv, s_in},
		    {"attn_v", d, kv, s_in},
		    {"attn_output", d, d, s_in * s_res},
		    {"attn_norm", d, 0, 0.0f},
		    {"ffn_gate", d, h, s_in},
		    {"ffn_down", h, d, s_res / sqrtf((float)h)},
		    {"ffn_up", d, h, s_in},
		    {"ffn_norm", d, 0, 0.0f},
		};
		for (size_t i = 0; i < sizeof lt / sizeof lt[0]; i++) {
			struct tensor_spec *t = &ts[k++];
			snprintf(t->name, sizeof t->name, "blk.%" PRIu64 ".%s.weight", l,
			         lt[i].suffix);
			t->cols = lt[i].cols;
			t->rows = lt[i].rows;
			t->std = lt[i].std;
		}
	}
	/* The variants' extra tensors come last, so the others are the same
	 * with or without them. */
	for (uint64_t l = 0; a->qkv_bias && l < L; l++) {
		static const char *const sfx[] = {"attn_q", "attn_k", "attn_v"};
		for (size_t i = 0; i < 3; i++) {
			struct tensor_spec *t = &ts[k++];
			snprintf(t->name, sizeof t->name, "blk.%" PRIu64 ".%s.bias", l, sfx[i]);
			t->cols = i == 0 ? d : kv;
			t->rows = 0;
			t->std = 0.5f;
		}
	}
	size_t rope_freqs_at = k;
	if (a->rope_freqs)
		ts[k++] =
		    (struct tensor_spec){"rope_freqs.weight", (uint64_t)c.head_dim / 2, 0, 0.0f};

	if (!vg && (rc = build_vocab(&vb, (uint32_t)v, a->seed))) {
		rc = itt_err_set(err, rc, "building the vocabulary: out of memory");
		goto out;
	}
	if ((rc = gguf_writer_new(&w, err)) || (rc = add_hparams(w, a, &c, err)) ||
	    (rc = vg ? vocab_copy(w, vg, err) : llama2c_add_vocab(w, &vb.v, err)))
		goto out;
	if (a->chat_template || tmpl) {
		const char *t = tmpl ? tmpl : a->chat_template;
		rc = gguf_writer_add_str_n(w, "tokenizer.chat_template", t,
		                           tmpl ? tmpl_len : strlen(t), err);
		if (rc)
			goto out;
	}
	uint64_t seed_mix = splitmix64(&(uint64_t){a->seed});
	for (size_t i = 0; i < k; i++) {
		uint64_t ne[2] = {ts[i].cols, ts[i].rows};
		uint64_t s = seed_mix ^ (0x9e3779b97f4a7c15ull * (i + 1));
		gens[i] = (struct gen){.state = splitmix64(&s),
		                       .std = ts[i].std,
		                       .value = 1.0f,
		                       .ramp = a->rope_freqs && i == rope_freqs_at,
		                       .left = ts[i].cols * (ts[i].rows ? ts[i].rows : 1),
		                       .buf = buf};
		gens[i].n = gens[i].left;
		rc = gguf_writer_add_tensor_fn(w, ts[i].name, ts[i].rows ? 2 : 1, ne, GGML_TYPE_F32,
		                               fill_weights, &gens[i], err);
		if (rc)
			goto out;
	}
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	rc = gguf_writer_write(w, a->out, false, err);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	if (rc == 0)
		printf("wrote %s: %zu tensors, vocab %u, %" PRIu64 " bytes in %.2f s\n", a->out, k,
		       n_vocab, gguf_writer_file_size(w),
		       (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9);
out:
	gguf_writer_destroy(&w);
	gguf_close(&vg);
	free(tmpl);
	free_vocab(&vb);
	free(buf);
	free(gens);
	free(ts);
	return rc;
}

int main(int argc, char **argv)
{
	struct synth_args a;
	int prc = parse_args(argc, argv, &a);
	if (prc != OPTS_OK)
		return prc == OPTS_HELP ? 0 : 2;
	struct itt_err err = {0};
	int rc = synth(&a, &err);
	if (rc) {
		fprintf(stderr, "itt-synth: %s (%s)\n", err.msg, itt_strerror(rc));
		return 1;
	}
	return 0;
}
