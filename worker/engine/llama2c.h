/* llama2c: reader of karpathy llama2.c checkpoints and tokenizer files, and
 * their mapping onto a llama GGUF (used by itt-convert and itt-synth).
 *
 * Checkpoint ("legacy" export, version 0): seven little-endian int32
 *   dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
 * (vocab_size < 0: a separate classifier follows; > 0: the classifier is
 * the token embedding), then float32 arrays, row-major, in this order:
 *   token_embedding [vocab][dim], rms_att [L][dim], wq [L][dim][dim],
 *   wk [L][kv_dim][dim], wv [L][kv_dim][dim], wo [L][dim][dim],
 *   rms_ffn [L][dim], w1 [L][hidden][dim], w2 [L][dim][hidden],
 *   w3 [L][hidden][dim], rms_final [dim], freq_cis_real [seq_len][hd/2],
 *   freq_cis_imag [seq_len][hd/2], then wcls [vocab][dim] if not shared.
 * with hd = dim / n_heads and kv_dim = n_kv_heads * hd.  The file size
 * must equal exactly what the header implies (checked with overflow-safe
 * 64-bit arithmetic before any pointer is formed).  The file is mmapped;
 * weight pointers are valid until llama2c_close.
 *
 * Tokenizer: int32 max_token_length, then per token: float32 score, int32
 * len, len bytes; the token count comes from the checkpoint and the file
 * must end after the last token.  Tokens are converted to the GGUF "llama"
 * form: id 0 is "<unk>" (UNKNOWN), ids 1 and 2 are "<s>" and "</s>"
 * (CONTROL; llama2.c stores "\n<s>\n" and "\n</s>\n"), "<0xXX>" tokens are
 * BYTE, others NORMAL with each space turned back into U+2581 (llama2.c's
 * export replaced it with a space). */
#ifndef ITT_LLAMA2C_H
#define ITT_LLAMA2C_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "gguf-write.h"
#include "gguf.h"

/* Bounds a header must respect (beyond the file size itself). */
#define LLAMA2C_MAX_DIM       (1 << 16)
#define LLAMA2C_MAX_HIDDEN    (1 << 20)
#define LLAMA2C_MAX_LAYERS    4096
#define LLAMA2C_MAX_VOCAB     (1 << 22)
#define LLAMA2C_MAX_SEQ       (1 << 24)
#define LLAMA2C_MAX_TOKEN_LEN 4096

#define LLAMA2C_HEADER_BYTES 28

struct llama2c_config {
	int32_t dim;        /* embedding width */
	int32_t hidden_dim; /* FFN width */
	int32_t n_layers;
	int32_t n_heads;    /* query heads */
	int32_t n_kv_heads; /* key/value heads */
	int32_t vocab_size; /* positive (the sign of the file is in shared_classifier) */
	int32_t seq_len;    /* training context */
	bool shared_classifier;
	int32_t head_dim; /* dim / n_heads */
	int32_t kv_dim;   /* n_kv_heads * head_dim */
};

struct llama2c_weights {
	const float *token_embedding; /* [vocab][dim] */
	const float *rms_att;         /* [n_layers][dim] */
	const float *wq;              /* [n_layers][dim][dim] */
	const float *wk;              /* [n_layers][kv_dim][dim] */
	const float *wv;              /* [n_layers][kv_dim][dim] */
	const float *wo;              /* [n_layers][dim][dim] */
	const float *rms_ffn;         /* [n_layers][dim] */
	const float *w1;              /* [n_layers][hidden][dim] (gate) */
	const float *w2;              /* [n_layers][dim][hidden] (down) */
	const float *w3;              /* [n_layers][hidden][dim] (up) */
	const float *rms_final;       /* [dim] */
	const float *wcls;            /* [vocab][dim]; == token_embedding when shared */
};

typedef struct llama2c llama2c_t;

/* Validates a header's values (also used by itt-synth for its arguments):
 * all positive, within the bounds above, dim % n_heads == 0, n_heads %
 * n_kv_heads == 0, head_dim even.  Fills head_dim and kv_dim. */
int llama2c_check_config(struct llama2c_config *c, struct itt_err *err);
/* Bytes a checkpoint with this (checked) config must have; 0 on overflow. */
uint64_t llama2c_file_bytes(const struct llama2c_config *c);

int llama2c_open(const char *path, llama2c_t **out, struct itt_err *err);
/* A caller's buffer (4-byte aligned), which must outlive the handle. */
int llama2c_open_mem(const void *buf, size_t size, llama2c_t **out, struct itt_err *err);
void llama2c_close(llama2c_t **m);
const struct llama2c_config *llama2c_get_config(const llama2c_t *m);
const struct llama2c_weights *llama2c_get_weights(const llama2c_t *m);

/* A tokenizer in GGUF form; every array has n entries.  Each text is
 * followed by a NUL (not counted in len) but may hold NULs of its own:
 * use len. */
struct llama2c_vocab {
	uint32_t n;
	uint32_t max_token_length; /* as stored in the file */
	struct gguf_str *tokens;
	float *scores;
	int32_t *types; /* enum tokenizer_token_type */
	char *text;     /* backing store of the token texts */
};

int llama2c_vocab_load(const char *path, uint32_t n_vocab, struct llama2c_vocab **out,
                       struct itt_err *err);
int llama2c_vocab_load_mem(const void *buf, size_t size, uint32_t n_vocab,
                           struct llama2c_vocab **out, struct itt_err *err);
void llama2c_vocab_destroy(struct llama2c_vocab **v);

/* GGUF mapping.  Hyper-parameters: general.architecture "llama",
 * general.name, general.file_type 0 (all F32), llama.context_length
 * (= seq_len), embedding/feed_forward length, block_count, head counts,
 * rope.dimension_count (= head_dim), rms epsilon 1e-5, rope.freq_base 1e4. */
int llama2c_add_hparams(gguf_writer_t *w, const struct llama2c_config *c, const char *name,
                        struct itt_err *err);
/* tokenizer.ggml.{model "llama", tokens, scores, token_type, bos 1, eos 2,
 * unknown 0, add_space_prefix true}; v->n must be at least 3. */
int llama2c_add_vocab(gguf_writer_t *w, const struct llama2c_vocab *v, struct itt_err *err);
/* All tensors with their llama GGUF names, borrowed from the mapping (keep
 * m open until the write): token_embd, output_norm, output (only when the
 * classifier is separate), blk.N.{attn_q, attn_k, attn_v, attn_output,
 * attn_norm, ffn_gate (w1), ffn_down (w2), ffn_up (w3), ffn_norm}.  No
 * permutation: llama2.c rotates consecutive pairs like llama.cpp. */
int llama2c_add_tensors(gguf_writer_t *w, const llama2c_t *m, struct itt_err *err);

#endif
