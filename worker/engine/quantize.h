/* quantize: the weight quantisers that itt-quantize needs beyond quant.c's
 * own (Q4_1, Q5_0, Q5_1 and the K-quants Q2_K..Q6_K), and the per-tensor
 * type policy of llama.cpp's named file types ("mixes" such as Q4_K_M).
 *
 * Rounding: each quantiser follows ggml's reference (no importance matrix)
 * algorithm, the one llama-quantize runs without --imatrix, so files match
 * its quality; with the same float evaluation order they match it bit for
 * bit (checked by tests/integration/test_quantize_peer.py when a peer
 * llama.cpp is present).  Block layouts are in quant.h.
 *
 * Mix policy: quantize_tensor_type() decides, for one tensor, the type the
 * file gets, with llama.cpp's rules for the dense (non-MoE) models itt runs:
 * output.weight (or token_embd.weight when the output is tied to it) in
 * Q6_K for the K mixes and the legacy 4/5-bit ones, attn_v and ffn_down
 * promoted in some layers of the _M mixes, and a fallback to a 32-block
 * type (then F16) when a row length is not a multiple of 256.  Tensors that
 * are not weight matrices (1-D, norms, names not ending in "weight") keep
 * their type. */
#ifndef ITT_QUANTIZE_H
#define ITT_QUANTIZE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* general.file_type values, numbered as llama.cpp's llama_ftype. */
enum quantize_ftype {
	QUANTIZE_FTYPE_F32 = 0,
	QUANTIZE_FTYPE_F16 = 1,
	QUANTIZE_FTYPE_Q4_0 = 2,
	QUANTIZE_FTYPE_Q4_1 = 3,
	QUANTIZE_FTYPE_Q8_0 = 7,
	QUANTIZE_FTYPE_Q5_0 = 8,
	QUANTIZE_FTYPE_Q5_1 = 9,
	QUANTIZE_FTYPE_Q2_K = 10,
	QUANTIZE_FTYPE_Q3_K_S = 11,
	QUANTIZE_FTYPE_Q3_K_M = 12,
	QUANTIZE_FTYPE_Q3_K_L = 13,
	QUANTIZE_FTYPE_Q4_K_S = 14,
	QUANTIZE_FTYPE_Q4_K_M = 15,
	QUANTIZE_FTYPE_Q5_K_S = 16,
	QUANTIZE_FTYPE_Q5_K_M = 17,
	QUANTIZE_FTYPE_Q6_K = 18,
	QUANTIZE_FTYPE_BF16 = 32,
};

/* Quantises n floats of src into dst for Q4_1, Q5_0, Q5_1 (n a multiple of
 * 32) and Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (n a multiple of 256).  dst holds
 * n / ggml_blck_size(type) * ggml_type_size(type) bytes.  Returns 0,
 * ITT_E_UNSUPPORTED for another type, ITT_E_INVALID for a bad n.
 * quant_quantize_row() forwards these types here.  Non-finite inputs give
 * defined but meaningless codes. */
int quantize_row(uint32_t type, const float *src, void *dst, size_t n);

/* The named file types: "Q4_K_M", "q4_k_m", "Q4_K" (alias of Q4_K_M, as in
 * llama-quantize; Q3_K and Q5_K likewise), "F16", "BF16", "Q8_0", ...
 * Returns 0 and sets *ftype, or ITT_E_INVALID for an unknown name. */
int quantize_ftype_parse(const char *name, uint32_t *ftype);
/* Canonical name ("Q4_K_M") or NULL for an unknown value. */
const char *quantize_ftype_name(uint32_t ftype);
/* The type most weight matrices of the mix get (Q4_K for Q4_K_M), or
 * GGML_TYPE_COUNT for an unknown value. */
uint32_t quantize_ftype_base_type(uint32_t ftype);
/* Names of the mixes in table order, NULL-terminated (for --help). */
extern const char *const quantize_ftype_names[];

/* What the policy needs to know about the whole model. */
struct quantize_model {
	uint32_t n_layer;   /* transformer blocks (ffn_down layer count) */
	uint32_t n_attn_v;  /* tensors named *attn_v.weight, attn_qkv, attn_kv_b */
	uint32_t n_head;    /* attention heads; 0 if unknown */
	uint32_t n_head_kv; /* key/value heads; 0 if unknown */
	bool has_output;    /* output.weight exists (else token_embd is tied) */
	bool falcon;        /* general.architecture is "falcon" */
	bool pure;          /* no per-tensor rules: the base type everywhere
	                       (llama-quantize --pure), still with the fallback */
};

/* Counts one tensor of the model into *m (start from a zeroed struct):
 * attn_v-like tensors, output.weight, and n_layer as the largest N of
 * "blk.N." plus one.  The caller fills n_head, n_head_kv and falcon from
 * the metadata (and may set n_layer from <arch>.block_count). */
void quantize_model_add(struct quantize_model *m, const char *name);

/* The type tensor `name` of shape ne[0..n_dims) and current type cur gets
 * in a file of type ftype.  Returns cur when the tensor is not quantised
 * (then *why, if given, says why) and sets *why to a note such as
 * "fallback: ..." or NULL otherwise (the text lives in thread-local storage,
 * valid until the thread's next call).  The layer of attn_v and
 * ffn_down tensors is the N of "blk.N." in the name: llama.cpp counts those
 * tensors in (block, name) order, which gives the same number. */
uint32_t quantize_tensor_type(uint32_t ftype, const struct quantize_model *m, const char *name,
                              uint32_t n_dims, const uint64_t *ne, uint32_t cur, const char **why);

#endif
