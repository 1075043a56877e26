/* model: a llama-family model, or one layer range of it, from GGUF.
 *
 * Architectures (general.architecture): "llama" and "qwen2", which differ
 * only in the RoPE pairing (llama rotates consecutive pairs, qwen2 the NeoX
 * halves) and in qwen2 always carrying Q/K/V biases; every other name is
 * refused by name.  Hyper-parameters come from "<arch>." metadata keys;
 * the variants covered are grouped-query attention (any head_count_kv
 * dividing head_count), tied output (no output.weight: the head is the
 * token embedding), optional Q/K/V biases (blk.N.attn_{q,k,v}.bias),
 * RoPE base, linear RoPE scaling (rope.scaling.type "linear"/"none" with
 * rope.scaling.factor) and per-frequency factors (rope_freqs.weight,
 * [head_dim/2], llama 3.1), which divide the frequencies.  Refused: partial
 * RoPE (rope.dimension_count != head_dim), other scaling types, experts,
 * key_length != head_dim, and biases the forward pass does not apply.
 *
 * Weights are pointers into the read-only mapping (no copy), so loading
 * touches only the pages of the tensors the range uses: the token embedding
 * on the first stage (first == 0), the output norm and head on the last
 * (last == n_layers), rope_freqs on every stage, and the layers in
 * [first, last).  Matrices are row-major [rows][cols] with y = W x,
 * rows = outputs, cols = inputs (GGUF ne = [cols, rows]).
 *
 * Lifetime: the model owns its gguf handle; everything it points to lives
 * until model_close. */
#ifndef ITT_MODEL_H
#define ITT_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf.h"

#define MODEL_MAX_LAYERS 4096
#define MODEL_MAX_DIM    (1u << 16)
#define MODEL_MAX_VOCAB  (1u << 22)

enum model_arch {
	MODEL_ARCH_LLAMA = 0,
	MODEL_ARCH_QWEN2 = 1,
};

/* The architecture's GGUF name ("llama", "qwen2"). */
const char *model_arch_name(enum model_arch a);

struct model_hparams {
	enum model_arch arch;
	bool rope_neox;      /* rotate (i, i + head_dim/2) instead of (2i, 2i+1) */
	uint32_t dim;        /* embedding width */
	uint32_t n_layers;   /* in the whole model */
	uint32_t n_heads;    /* query heads */
	uint32_t n_kv_heads; /* key/value heads (grouped-query attention) */
	uint32_t head_dim;   /* dim / n_heads */
	uint32_t ffn_dim;    /* hidden width of the SwiGLU FFN */
	uint32_t vocab;      /* rows of the token embedding */
	uint32_t ctx_len;    /* <arch>.context_length */
	float rms_eps;       /* <arch>.attention.layer_norm_rms_epsilon */
	float rope_base;     /* <arch>.rope.freq_base, default 10000 */
	float rope_scale;    /* frequency multiplier: 1 / <arch>.rope.scaling.factor
	                      * under linear scaling, else 1 */
};

/* A weight matrix in one of the loadable element types. */
struct model_weight {
	const void *data; /* [rows][cols] elements of type; rows row_bytes apart */
	uint32_t type;    /* a GGML_TYPE_* that quant_type_supported() accepts */
	uint32_t rows;    /* outputs */
	uint32_t cols;    /* inputs */
	size_t row_bytes;
};

struct model_layer {
	const float *attn_norm; /* [dim] */
	const float *bq;        /* [n_heads * head_dim] or NULL */
	const float *bk;        /* [n_kv_heads * head_dim] or NULL */
	const float *bv;        /* [n_kv_heads * head_dim] or NULL */
	struct model_weight wq; /* [n_heads * head_dim][dim] */
	struct model_weight wk; /* [n_kv_heads * head_dim][dim] */
	struct model_weight wv; /* [n_kv_heads * head_dim][dim] */
	struct model_weight wo; /* [dim][n_heads * head_dim] */
	const float *ffn_norm;  /* [dim] */
	struct model_weight w1; /* gate [ffn_dim][dim] */
	struct model_weight w2; /* down [dim][ffn_dim] */
	struct model_weight w3; /* up   [ffn_dim][dim] */
};

struct model {
	struct model_hparams hp;
	uint32_t first, last;         /* layer range [first, last) */
	struct model_weight tok_embd; /* [vocab][dim]; data NULL unless first == 0 */
	const float *output_norm;     /* [dim]; NULL unless last == n_layers */
	struct model_weight output;   /* [vocab][dim]; data NULL unless last == n_layers */
	bool tied_output;             /* output is token_embd */
	const float *rope_freqs;      /* [head_dim / 2] frequency divisors, or NULL */
	struct model_layer *layers;   /* [last - first] */
	gguf_t *file;
	float *owned;          /* norm vectors converted to F32 */
	uint64_t weight_bytes; /* bytes of the weights this range reads per token */
};

/* Opens path and loads layers [first, last); last == 0 means n_layers.
 * Errors name the key or tensor (missing, wrong shape, unsupported type). */
int model_open(const char *path, uint32_t first, uint32_t last, struct model **out,
               struct itt_err *err);
void model_close(struct model **m);

/* Reads the hyper-parameters only (used by model_open and by tools). */
int model_read_hparams(const gguf_t *g, struct model_hparams *hp, struct itt_err *err);

static inline bool model_is_first(const struct model *m)
{
	return m->first == 0;
}

static inline bool model_is_last(const struct model *m)
{
	return m->last == m->hp.n_layers;
}

#endif
