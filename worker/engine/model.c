/* model: llama-family hyper-parameters (arch-prefixed metadata) and the
 * weights of one layer range, as views into a validated GGUF mapping.
 *
 * Every tensor the range needs is checked for presence, shape and type
 * before use; vectors (norms, biases, RoPE factors) stored in F16/BF16 are
 * converted to F32 once (they are tiny), everything else is used in place. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* The architectures this engine runs; each differs from "llama" only as
 * noted (model.h). */
static const struct {
	const char *name;
	enum model_arch arch;
	bool rope_neox;
} model_archs[] = {
    {"llama", MODEL_ARCH_LLAMA, false},
    {"qwen2", MODEL_ARCH_QWEN2, true},
};
#define MODEL_N_ARCHS (sizeof model_archs / sizeof model_archs[0])

const char *model_arch_name(enum model_arch a)
{
	for (size_t i = 0; i < MODEL_N_ARCHS; i++)
		if (model_archs[i].arch == a)
			return model_archs[i].name;
	return "?";
}

/* Metadata key "<arch>.<suffix>" (the buffer is per call site). */
static const char *akey(char *buf, size_t cap, const char *arch, const char *suffix)
{
	snprintf(buf, cap, "%s.%s", arch, suffix);
	return buf;
}

static int get_u32_req(const gguf_t *g, const char *key, uint32_t *out, struct itt_err *err)
{
	int rc = gguf_get_u32(g, key, out, err);
	if (rc == ITT_E_NOTFOUND)
		return itt_err_set(err, ITT_E_FORMAT, "metadata key %s is missing", key);
	return rc;
}

/* Optional keys: absent leaves *out (the default) as it is. */
static int get_u32_opt(const gguf_t *g, const char *key, uint32_t *out, struct itt_err *err)
{
	int rc = gguf_get_u32(g, key, out, err);
	return rc == ITT_E_NOTFOUND ? 0 : rc;
}

static int get_f32_opt(const gguf_t *g, const char *key, float *out, struct itt_err *err)
{
	int rc = gguf_get_f32(g, key, out, err);
	return rc == ITT_E_NOTFOUND ? 0 : rc;
}

/* RoPE scaling: type "none" or "linear" (llama.cpp's default when the key
 * is absent); the factor (rope.scaling.factor, or the older
 * rope.scale_linear) divides the frequencies under "linear" only. */
static int read_rope_scaling(const gguf_t *g, const char *arch, struct model_hparams *hp,
                             struct itt_err *err)
{
	char k[96];
	struct gguf_str type;
	bool linear = true;
	int rc = gguf_get_str(g, akey(k, sizeof k, arch, "rope.scaling.type"), &type, err);
	if (rc == 0) {
		if (gguf_str_eq(type, "none"))
			linear = false;
		else if (!gguf_str_eq(type, "linear"))
			return itt_err_set(err, ITT_E_UNSUPPORTED,
			                   "%s '%.*s' is not supported; supported: none, linear", k,
			                   (int)(type.len > 32 ? 32 : type.len), type.ptr);
	} else if (rc != ITT_E_NOTFOUND) {
		return rc;
	}
	float factor = 0.0f;
	rc = gguf_get_f32(g, akey(k, sizeof k, arch, "rope.scaling.factor"), &factor, err);
	if (rc == ITT_E_NOTFOUND)
		rc = get_f32_opt(g, akey(k, sizeof k, arch, "rope.scale_linear"), &factor, err);
	if (rc < 0)
		return rc;
	if (!(factor >= 0.0f) || !isfinite(factor))
		return itt_err_set(err, ITT_E_FORMAT, "%s %g invalid", k, (double)factor);
	hp->rope_scale = linear && factor != 0.0f ? 1.0f / factor : 1.0f;
	return 0;
}

int model_read_hparams(const gguf_t *g, struct model_hparams *hp, struct itt_err *err)
{
	struct gguf_str arch_s;
	char k[96], archname[16];
	int rc;

	memset(hp, 0, sizeof *hp);
	rc = gguf_get_str(g, "general.architecture", &arch_s, err);
	if (rc == ITT_E_NOTFOUND)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "metadata key general.architecture is missing");
	if (rc < 0)
		return rc;
	size_t ai = 0;
	while (ai < MODEL_N_ARCHS && !gguf_str_eq(arch_s, model_archs[ai].name))
		ai++;
	if (ai == MODEL_N_ARCHS) {
		char list[64] = "";
		for (size_t i = 0; i < MODEL_N_ARCHS; i++)
			snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
			         i ? ", " : "", model_archs[i].name);
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "architecture '%.*s' is not supported; supported: %s",
		                   (int)(arch_s.len > 64 ? 64 : arch_s.len), arch_s.ptr, list);
	}
	hp->arch = model_archs[ai].arch;
	hp->rope_neox = model_archs[ai].rope_neox;
	snprintf(archname, sizeof archname, "%s", model_archs[ai].name);
	const char *A = archname;

	if ((rc = get_u32_req(g, akey(k, sizeof k, A, "embedding_length"), &hp->dim, err)) < 0 ||
	    (rc = get_u32_req(g, akey(k, sizeof k, A, "block_count"), &hp->n_layers, err)) < 0 ||
	    (rc = get_u32_req(g, akey(k, sizeof k, A, "attention.head_count"), &hp->n_heads, err)) <
	        0 ||
	    (rc = get_u32_req(g, akey(k, sizeof k, A, "feed_forward_length"), &hp->ffn_dim, err)) <
	        0)
		return rc;
	hp->n_kv_heads = hp->n_heads;
	hp->ctx_len = 2048;
	hp->rms_eps = 1e-5f;
	hp->rope_base = 10000.0f;
	if ((rc = get_u32_opt(g, akey(k, sizeof k, A, "attention.head_count_kv"), &hp->n_kv_heads,
	                      err)) < 0 ||
	    (rc = get_u32_opt(g, akey(k, sizeof k, A, "context_length"), &hp->ctx_len, err)) < 0 ||
	    (rc = get_f32_opt(g, akey(k, sizeof k, A, "attention.layer_norm_rms_epsilon"),
	                      &hp->rms_eps, err)) < 0 ||
	    (rc = get_f32_opt(g, akey(k, sizeof k, A, "rope.freq_base"), &hp->rope_base, err)) <
	        0 ||
	    (rc = read_rope_scaling(g, A, hp, err)) < 0)
		return rc;

	if (hp->dim == 0 || hp->dim > MODEL_MAX_DIM)
		return itt_err_set(err, ITT_E_FORMAT, "%s.embedding_length %u out of range [1, %u]",
		                   A, hp->dim, MODEL_MAX_DIM);
	if (hp->n_layers == 0 || hp->n_layers > MODEL_MAX_LAYERS)
		return itt_err_set(err, ITT_E_FORMAT, "%s.block_count %u out of range [1, %u]", A,
		                   hp->n_layers, MODEL_MAX_LAYERS);
	if (hp->n_heads == 0 || hp->dim % hp->n_heads != 0)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "%s.attention.head_count %u does not divide embedding_length %u",
		                   A, hp->n_heads, hp->dim);
	if (hp->n_kv_heads == 0 || hp->n_heads % hp->n_kv_heads != 0)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "%s.attention.head_count_kv %u does not divide head_count %u", A,
		                   hp->n_kv_heads, hp->n_heads);
	hp->head_dim = hp->dim / hp->n_heads;
	if (hp->head_dim % 2 != 0)
		return itt_err_set(err, ITT_E_FORMAT, "head dimension %u is odd; RoPE needs pairs",
		                   hp->head_dim);
	uint32_t v = hp->head_dim;
	if ((rc = get_u32_opt(g, akey(k, sizeof k, A, "rope.dimension_count"), &v, err)) < 0)
		return rc;
	if (v != hp->head_dim)
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "%s %u != head dimension %u (partial RoPE)", k, v, hp->head_dim);
	v = hp->head_dim;
	if ((rc = get_u32_opt(g, akey(k, sizeof k, A, "attention.key_length"), &v, err)) < 0)
		return rc;
	if (v == hp->head_dim &&
	    (rc = get_u32_opt(g, akey(k, sizeof k, A, "attention.value_length"), &v, err)) < 0)
		return rc;
	if (v != hp->head_dim)
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "%s %u != embedding_length / head_count %u", k, v, hp->head_dim);
	v = 0;
	if ((rc = get_u32_opt(g, akey(k, sizeof k, A, "expert_count"), &v, err)) < 0)
		return rc;
	if (v != 0)
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "%s is %u; mixture-of-experts models are not supported", k, v);
	if (hp->ffn_dim == 0 || hp->ffn_dim > 16 * MODEL_MAX_DIM)
		return itt_err_set(err, ITT_E_FORMAT, "%s.feed_forward_length %u out of range", A,
		                   hp->ffn_dim);
	if (hp->ctx_len == 0)
		return itt_err_set(err, ITT_E_FORMAT, "%s.context_length is 0", A);
	if (!(hp->rms_eps > 0.0f) || !isfinite(hp->rms_eps))
		return itt_err_set(err, ITT_E_FORMAT,
		                   "%s.attention.layer_norm_rms_epsilon %g invalid", A,
		                   (double)hp->rms_eps);
	if (!(hp->rope_base > 0.0f) || !isfinite(hp->rope_base))
		return itt_err_set(err, ITT_E_FORMAT, "%s.rope.freq_base %g invalid", A,
		                   (double)hp->rope_base);

	const struct gguf_tensor *te = gguf_find_tensor(g, "token_embd.weight");
	if (!te)
		return itt_err_set(err, ITT_E_FORMAT, "tensor token_embd.weight is missing");
	if (te->n_dims != 2 || te->ne[0] != hp->dim || te->ne[1] == 0 ||
	    te->ne[1] > MODEL_MAX_VOCAB)
		return itt_err_set(
		    err, ITT_E_FORMAT,
		    "tensor token_embd.weight has shape [%llu, %llu]; expected [%u, vocab]",
		    (unsigned long long)te->ne[0],
		    (unsigned long long)(te->n_dims > 1 ? te->ne[1] : 1), hp->dim);
	hp->vocab = (uint32_t)te->ne[1];
	return 0;
}

static int load_matrix(const gguf_t *g, const char *name, uint32_t rows, uint32_t cols,
                       struct model_weight *w, uint64_t *bytes, struct itt_err *err)
{
	const struct gguf_tensor *t = gguf_find_tensor(g, name);
	if (!t)
		return itt_err_set(err, ITT_E_FORMAT, "tensor %s is missing", name);
	if (t->n_dims != 2 || t->ne[0] != cols || t->ne[1] != rows)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "tensor %s has shape [%llu, %llu] (%u dims); expected [%u, %u]",
		                   name, (unsigned long long)t->ne[0],
		                   (unsigned long long)(t->n_dims > 1 ? t->ne[1] : 1), t->n_dims,
		                   cols, rows);
	if (!quant_type_supported(t->type))
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "tensor %s has type %s, which is not supported", name,
		                   ggml_type_name(t->type));
	w->data = t->data;
	w->type = t->type;
	w->rows = rows;
	w->cols = cols;
	w->row_bytes = quant_row_bytes(t->type, cols);
	if (w->row_bytes == 0 || w->row_bytes * rows != t->size)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "tensor %s: size %llu does not match its shape", name,
		                   (unsigned long long)t->size);
	if (bytes)
		*bytes += t->size;
	return 0;
}

/* Norm vectors: F32 in place; F16/BF16 converted into the owned buffer. */
static int load_vector(const gguf_t *g, const char *name, uint32_t n, float **owned_cursor,
                       const float **out, uint64_t *bytes, struct itt_err *err)
{
	const struct gguf_tensor *t = gguf_find_tensor(g, name);
	if (!t)
		return itt_err_set(err, ITT_E_FORMAT, "tensor %s is missing", name);
	if (t->n_dims != 1 || t->ne[0] != n)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "tensor %s has %u dims, ne[0] %llu; expected [%u]", name,
		                   t->n_dims, (unsigned long long)t->ne[0], n);
	if (t->type == GGML_TYPE_F32 && ((uintptr_t)t->data % sizeof(float)) == 0) {
		*out = t->data;
	} else if (t->type == GGML_TYPE_F32 || t->type == GGML_TYPE_F16 ||
	           t->type == GGML_TYPE_BF16) {
		float *dst = *owned_cursor;
		if (t->type == GGML_TYPE_F32)
			memcpy(dst, t->data, (size_t)n * sizeof(float));
		else if (quant_dequant_row(t->type, t->data, dst, n) < 0)
			return itt_err_set(err, ITT_E_UNSUPPORTED,
			                   "tensor %s: cannot convert type %s", name,
			                   ggml_type_name(t->type));
		*owned_cursor += n;
		*out = dst;
	} else {
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "tensor %s has type %s; norms need F32/F16", name,
		                   ggml_type_name(t->type));
	}
	if (bytes)
		*bytes += t->size;
	return 0;
}

int model_open(const char *path, uint32_t first, uint32_t last, struct model **out,
               struct itt_err *err)
{
	struct model *m = calloc(1, sizeof *m);
	char name[96];
	int rc;

	if (!m)
		return itt_err_set(err, ITT_E_NOMEM, "model_open: out of memory");
	rc = gguf_open(path, &m->file, err);
	if (rc < 0)
		goto fail;
	rc = model_read_hparams(m->file, &m->hp, err);
	if (rc < 0)
		goto fail;
	const struct model_hparams *hp = &m->hp;
	if (last == 0)
		last = hp->n_layers;
	if (first >= last || last > hp->n_layers) {
		rc = itt_err_set(err, ITT_E_RANGE, "layer range [%u, %u) is not within [0, %u)",
		                 first, last, hp->n_layers);
		goto fail;
	}
	m->first = first;
	m->last = last;
	uint32_t n = last - first;
	m->layers = calloc(n, sizeof *m->layers);
	uint32_t q_dim = hp->n_heads * hp->head_dim, kv_dim = hp->n_kv_heads * hp->head_dim;
	/* Vectors converted to F32, at most: two norms and three biases per
	 * layer, the output norm and the RoPE frequency factors. */
	m->owned =
	    malloc(((size_t)n * (2 * hp->dim + q_dim + 2 * kv_dim) + hp->dim + hp->head_dim / 2) *
	           sizeof(float));
	if (!m->layers || !m->owned) {
		rc = itt_err_set(err, ITT_E_NOMEM, "model_open: out of memory for %u layers", n);
		goto fail;
	}
	float *cursor = m->owned;

	/* RoPE frequency factors (llama 3.1): every stage ropes its layers. */
	if (gguf_find_tensor(m->file, "rope_freqs.weight")) {
		rc = load_vector(m->file, "rope_freqs.weight", hp->head_dim / 2, &cursor,
		                 &m->rope_freqs, NULL, err);
		if (rc < 0)
			goto fail;
		for (uint32_t i = 0; i < hp->head_dim / 2; i++)
			if (!(m->rope_freqs[i] > 0.0f) || !isfinite(m->rope_freqs[i])) {
				rc = itt_err_set(err, ITT_E_FORMAT,
				                 "tensor rope_freqs.weight: element %u is %g; "
				                 "factors must be positive",
				                 i, (double)m->rope_freqs[i]);
				goto fail;
			}
	}
	if (gguf_find_tensor(m->file, "output.bias")) {
		rc = itt_err_set(err, ITT_E_UNSUPPORTED, "tensor output.bias is not supported");
		goto fail;
	}

	if (first == 0) {
		rc = load_matrix(m->file, "token_embd.weight", hp->vocab, hp->dim, &m->tok_embd,
		                 NULL, err);
		if (rc < 0)
			goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct model_layer *L = &m->layers[i];
		uint32_t l = first + i;
		struct {
			const char *suffix;
			struct model_weight *w;
			uint32_t rows, cols;
		} mats[] = {
		    {"attn_q", &L->wq, q_dim, hp->dim},
		    {"attn_k", &L->wk, kv_dim, hp->dim},
		    {"attn_v", &L->wv, kv_dim, hp->dim},
		    {"attn_output", &L->wo, hp->dim, q_dim},
		    {"ffn_gate", &L->w1, hp->ffn_dim, hp->dim},
		    {"ffn_down", &L->w2, hp->dim, hp->ffn_dim},
		    {"ffn_up", &L->w3, hp->ffn_dim, hp->dim},
		};
		snprintf(name, sizeof name, "blk.%u.attn_norm.weight", l);
		rc = load_vector(m->file, name, hp->dim, &cursor, &L->attn_norm, &m->weight_bytes,
		                 err);
		if (rc < 0)
			goto fail;
		snprintf(name, sizeof name, "blk.%u.ffn_norm.weight", l);
		rc = load_vector(m->file, name, hp->dim, &cursor, &L->ffn_norm, &m->weight_bytes,
		                 err);
		if (rc < 0)
			goto fail;
		/* optional Q/K/V biases (always present in qwen2 files) */
		struct {
			const char *suffix;
			const float **b;
			uint32_t n;
		} biases[] = {{"attn_q", &L->bq, q_dim},
		              {"attn_k", &L->bk, kv_dim},
		              {"attn_v", &L->bv, kv_dim}};
		for (size_t j = 0; j < sizeof biases / sizeof biases[0]; j++) {
			snprintf(name, sizeof name, "blk.%u.%s.bias", l, biases[j].suffix);
			if (!gguf_find_tensor(m->file, name))
				continue;
			rc = load_vector(m->file, name, biases[j].n, &cursor, biases[j].b,
			                 &m->weight_bytes, err);
			if (rc < 0)
				goto fail;
		}
		/* tensors of other variants, which this pass would silently ignore */
		static const char *const foreign[] = {"attn_output.bias", "ffn_gate.bias",
		                                      "ffn_up.bias",      "ffn_down.bias",
		                                      "attn_qkv.weight",  "ffn_gate_inp.weight"};
		for (size_t j = 0; j < sizeof foreign / sizeof foreign[0]; j++) {
			snprintf(name, sizeof name, "blk.%u.%s", l, foreign[j]);
			if (gguf_find_tensor(m->file, name)) {
				rc = itt_err_set(err, ITT_E_UNSUPPORTED,
				                 "tensor %s is not supported (a %s variant this "
				                 "engine does not run)",
				                 name, model_arch_name(hp->arch));
				goto fail;
			}
		}
		for (size_t j = 0; j < sizeof mats / sizeof mats[0]; j++) {
			snprintf(name, sizeof name, "blk.%u.%s.weight", l, mats[j].suffix);
			rc = load_matrix(m->file, name, mats[j].rows, mats[j].cols, mats[j].w,
			                 &m->weight_bytes, err);
			if (rc < 0)
				goto fail;
		}
	}
	if (last == hp->n_layers) {
		rc = load_vector(m->file, "output_norm.weight", hp->dim, &cursor, &m->output_norm,
		                 &m->weight_bytes, err);
		if (rc < 0)
			goto fail;
		if (gguf_find_tensor(m->file, "output.weight")) {
			rc = load_matrix(m->file, "output.weight", hp->vocab, hp->dim, &m->output,
			                 &m->weight_bytes, err);
		} else {
			m->tied_output = true;
			rc = load_matrix(m->file, "token_embd.weight", hp->vocab, hp->dim,
			                 &m->output, &m->weight_bytes, err);
		}
		if (rc < 0)
			goto fail;
	}
	*out = m;
	return 0;
fail:
	model_close(&m);
	return rc;
}

void model_close(struct model **mp)
{
	struct model *m = mp ? *mp : NULL;
	if (!m)
		return;
	gguf_close(&m->file);
	free(m->layers);
	free(m->owned);
	free(m);
	*mp = NULL;
}
