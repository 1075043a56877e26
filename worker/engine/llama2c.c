/* llama2c: llama2.c checkpoints and tokenizers, and their GGUF form.
 *
 * Every size is computed in uint64_t with overflow checks from a header
 * that has already been bounded, and compared with the file size before a
 * weight pointer is formed; nothing from the file is trusted further. */
#include "llama2c.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tokenizer.h"

#define LLAMA2C_MAGIC_V1 0x616b3432u /* "ak42": llama2.c's newer export versions */

struct llama2c {
	struct llama2c_config cfg;
	struct llama2c_weights w;
	void *map; /* NULL for a caller's buffer */
	size_t map_size;
};

static int32_t rd_i32(const uint8_t *p)
{
	uint32_t v =
	    (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
	int32_t r;
	memcpy(&r, &v, 4);
	return r;
}

static float rd_f32(const uint8_t *p)
{
	uint32_t v =
	    (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
	float r;
	memcpy(&r, &v, 4);
	return r;
}

static int check_range(const char *field, int32_t v, int32_t max, struct itt_err *err)
{
	if (v <= 0 || v > max)
		return itt_err_set(err, ITT_E_FORMAT, "%s %d not in [1, %d]", field, v, max);
	return 0;
}

int llama2c_check_config(struct llama2c_config *c, struct itt_err *err)
{
	if (!c)
		return itt_err_set(err, ITT_E_INVALID, "llama2c_check_config: config is NULL");
	int rc;
	if ((rc = check_range("dim", c->dim, LLAMA2C_MAX_DIM, err)) ||
	    (rc = check_range("hidden_dim", c->hidden_dim, LLAMA2C_MAX_HIDDEN, err)) ||
	    (rc = check_range("n_layers", c->n_layers, LLAMA2C_MAX_LAYERS, err)) ||
	    (rc = check_range("n_heads", c->n_heads, c->dim, err)) ||
	    (rc = check_range("n_kv_heads", c->n_kv_heads, c->n_heads, err)) ||
	    (rc = check_range("vocab_size", c->vocab_size, LLAMA2C_MAX_VOCAB, err)) ||
	    (rc = check_range("seq_len", c->seq_len, LLAMA2C_MAX_SEQ, err)))
		return rc;
	if (c->dim % c->n_heads != 0)
		return itt_err_set(err, ITT_E_FORMAT, "dim %d is not a multiple of n_heads %d",
		                   c->dim, c->n_heads);
	if (c->n_heads % c->n_kv_heads != 0)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "n_heads %d is not a multiple of n_kv_heads %d", c->n_heads,
		                   c->n_kv_heads);
	c->head_dim = c->dim / c->n_heads;
	if (c->head_dim % 2 != 0)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "head_dim %d (dim / n_heads) is odd; RoPE needs pairs",
		                   c->head_dim);
	c->kv_dim = c->n_kv_heads * c->head_dim;
	return 0;
}

/* acc += a * b (* c), in floats; false on overflow. */
static bool acc3(uint64_t *acc, uint64_t a, uint64_t b, uint64_t c)
{
	uint64_t p;
	return !__builtin_mul_overflow(a, b, &p) && !__builtin_mul_overflow(p, c, &p) &&
	       !__builtin_add_overflow(*acc, p, acc);
}

uint64_t llama2c_file_bytes(const struct llama2c_config *c)
{
	uint64_t d = (uint64_t)c->dim, h = (uint64_t)c->hidden_dim, l = (uint64_t)c->n_layers;
	uint64_t v = (uint64_t)c->vocab_size, kv = (uint64_t)c->kv_dim;
	uint64_t n = 0;
	bool ok = acc3(&n, v, d, 1) &&                        /* token_embedding */
	          acc3(&n, l, d, 1) &&                        /* rms_att */
	          acc3(&n, l, d, d) &&                        /* wq */
	          acc3(&n, l, kv, d) && acc3(&n, l, kv, d) && /* wk, wv */
	          acc3(&n, l, d, d) &&                        /* wo */
	          acc3(&n, l, d, 1) &&                        /* rms_ffn */
	          acc3(&n, l, h, d) && acc3(&n, l, d, h) &&   /* w1, w2 */
	          acc3(&n, l, h, d) &&                        /* w3 */
	          acc3(&n, d, 1, 1) &&                        /* rms_final */
	          acc3(&n, 2, (uint64_t)c->seq_len, (uint64_t)c->head_dim / 2) && /* freq_cis */
	          (c->shared_classifier || acc3(&n, v, d, 1));                    /* wcls */
	uint64_t bytes;
	if (!ok || __builtin_mul_overflow(n, 4, &bytes) ||
	    __builtin_add_overflow(bytes, LLAMA2C_HEADER_BYTES, &bytes))
		return 0;
	return bytes;
}

static int parse(llama2c_t *m, const uint8_t *base, size_t size, struct itt_err *err)
{
	if (size < LLAMA2C_HEADER_BYTES)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "llama2c: file of %zu bytes is shorter than the %d-byte header",
		                   size, LLAMA2C_HEADER_BYTES);
	if ((uint32_t)rd_i32(base) == LLAMA2C_MAGIC_V1)
		return itt_err_set(err, ITT_E_UNSUPPORTED,
		                   "llama2c: magic \"ak42\" (export version >= 1) is not "
		                   "supported; export with --version 0");
	struct llama2c_config *c = &m->cfg;
	c->dim = rd_i32(base);
	c->hidden_dim = rd_i32(base + 4);
	c->n_layers = rd_i32(base + 8);
	c->n_heads = rd_i32(base + 12);
	c->n_kv_heads = rd_i32(base + 16);
	int32_t vocab = rd_i32(base + 20);
	c->seq_len = rd_i32(base + 24);
	if (vocab == INT32_MIN)
		return itt_err_set(err, ITT_E_FORMAT, "llama2c header: vocab_size %d invalid",
		                   vocab);
	c->shared_classifier = vocab > 0;
	c->vocab_size = vocab < 0 ? -vocab : vocab;
	struct itt_err e = {0};
	int rc = llama2c_check_config(c, &e);
	if (rc)
		return itt_err_set(err, rc, "llama2c header: %s", e.msg);
	uint64_t want = llama2c_file_bytes(c);
	if (want == 0)
		return itt_err_set(err, ITT_E_FORMAT, "llama2c header: sizes overflow");
	if (want != (uint64_t)size)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "llama2c: file has %zu bytes, the header (dim %d, hidden %d, "
		                   "layers %d, heads %d/%d, vocab %d%s, seq_len %d) needs %llu",
		                   size, c->dim, c->hidden_dim, c->n_layers, c->n_heads,
		                   c->n_kv_heads, c->vocab_size,
		                   c->shared_classifier ? " shared" : " separate", c->seq_len,
		                   (unsigned long long)want);

	/* The size matched, so every offset below lies inside the buffer. */
	size_t d = (size_t)c->dim, h = (size_t)c->hidden_dim, l = (size_t)c->n_layers;
	size_t v = (size_t)c->vocab_size, kv = (size_t)c->kv_dim;
	const float *p = (const float *)(base + LLAMA2C_HEADER_BYTES);
	struct llama2c_weights *w = &m->w;
	w->token_embedding = p, p += v * d;
	w->rms_att = p, p += l * d;
	w->wq = p, p += l * d * d;
	w->wk = p, p += l * kv * d;
	w->wv = p, p += l * kv * d;
	w->wo = p, p += l * d * d;
	w->rms_ffn = p, p += l * d;
	w->w1 = p, p += l * h * d;
	w->w2 = p, p += l * d * h;
	w->w3 = p, p += l * h * d;
	w->rms_final = p, p += d;
	p += 2 * (size_t)c->seq_len * (size_t)(c->head_dim / 2);
	w->wcls = c->shared_classifier ? w->token_embedding : p;
	return 0;
}

int llama2c_open_mem(const void *buf, size_t size, llama2c_t **out, struct itt_err *err)
{
	if (!out || (!buf && size))
		return itt_err_set(err, ITT_E_INVALID, "llama2c_open_mem: NULL argument");
	if ((uintptr_t)buf % 4 != 0)
		return itt_err_set(err, ITT_E_INVALID,
		                   "llama2c_open_mem: buffer not 4-byte aligned");
	llama2c_t *m = calloc(1, sizeof *m);
	if (!m)
		return itt_err_set(err, ITT_E_NOMEM, "llama2c_open_mem: out of memory");
	int rc = parse(m, buf, size, err);
	if (rc) {
		free(m);
		return rc;
	}
	*out = m;
	return 0;
}

/* Maps a whole file read-only; an empty file gives (NULL, 0). */
static int map_file(const char *path, void **map, size_t *size, struct itt_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return itt_err_set(err, ITT_E_IO, "open %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0) {
		int e = errno;
		close(fd);
		return itt_err_set(err, ITT_E_IO, "stat %s: %s", path, strerror(e));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return itt_err_set(err, ITT_E_IO, "%s is not a regular file", path);
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		close(fd);
		return itt_err_set(err, ITT_E_IO, "%s is too large to map", path);
	}
	*size = (size_t)st.st_size;
	*map = NULL;
	if (*size) {
		void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (p == MAP_FAILED) {
			int e = errno;
			close(fd);
			return itt_err_set(err, ITT_E_IO, "mmap %s: %s", path, strerror(e));
		}
		*map = p;
	}
	close(fd);
	return 0;
}

int llama2c_open(const char *path, llama2c_t **out, struct itt_err *err)
{
	if (!path || !out)
		return itt_err_set(err, ITT_E_INVALID, "llama2c_open: NULL argument");
	void *map;
	size_t size;
	int rc = map_file(path, &map, &size, err);
	if (rc)
		return rc;
	llama2c_t *m = calloc(1, sizeof *m);
	if (!m) {
		rc = itt_err_set(err, ITT_E_NOMEM, "llama2c_open: out of memory");
	} else {
		struct itt_err e = {0};
		rc = parse(m, map, size, &e);
		if (rc)
			itt_err_set(err, rc, "%s: %s", path, e.msg);
	}
	if (rc) {
		free(m);
		if (map)
			munmap(map, size);
		return rc;
	}
	m->map = map;
	m->map_size = size;
	*out = m;
	return 0;
}

void llama2c_close(llama2c_t **mp)
{
	if (!mp || !*mp)
		return;
	if ((*mp)->map)
		munmap((*mp)->map, (*mp)->map_size);
	free(*mp);
	*mp = NULL;
}

const struct llama2c_config *llama2c_get_config(const llama2c_t *m)
{
	return &m->cfg;
}

const struct llama2c_weights *llama2c_get_weights(const llama2c_t *m)
{
	return &m->w;
}

/* ---- tokenizer ---- */

void llama2c_vocab_destroy(struct llama2c_vocab **vp)
{
	if (!vp || !*vp)
		return;
	struct llama2c_vocab *v = *vp;
	free(v->tokens);
	free(v->scores);
	free(v->types);
	free(v->text);
	free(v);
	*vp = NULL;
}

int llama2c_vocab_load_mem(const void *buf, size_t size, uint32_t n_vocab,
                           struct llama2c_vocab **out, struct itt_err *err)
{
	const uint8_t *b = buf;
	if (!out || (!buf && size))
		return itt_err_set(err, ITT_E_INVALID, "llama2c_vocab_load: NULL argument");
	if (n_vocab < 3 || n_vocab > LLAMA2C_MAX_VOCAB)
		return itt_err_set(err, ITT_E_INVALID,
		                   "llama2c tokenizer: vocab size %u not in [3, %d]", n_vocab,
		                   LLAMA2C_MAX_VOCAB);
	if (size < 4)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "llama2c tokenizer: %zu bytes, no max_token_length", size);
	int32_t maxlen = rd_i32(b);
	if (maxlen <= 0 || maxlen > LLAMA2C_MAX_TOKEN_LEN)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "llama2c tokenizer: max_token_length %d not in [1, %d]", maxlen,
		                   LLAMA2C_MAX_TOKEN_LEN);

	/* First pass: validate and measure the converted text. */
	size_t off = 4, text_bytes = 0;
	for (uint32_t i = 0; i < n_vocab; i++) {
		if (size - off < 8)
			return itt_err_set(err, ITT_E_FORMAT,
			                   "llama2c tokenizer: truncated at token %u of %u (offset "
			                   "%zu)",
			                   i, n_vocab, off);
		float score = rd_f32(b + off);
		int32_t len = rd_i32(b + off + 4);
		off += 8;
		if (!isfinite(score))
			return itt_err_set(err, ITT_E_FORMAT,
			                   "llama2c tokenizer: token %u score is not finite", i);
		if (len <= 0 || len > maxlen)
			return itt_err_set(err, ITT_E_FORMAT,
			                   "llama2c tokenizer: token %u length %d not in [1, "
			                   "max_token_length %d]",
			                   i, len, maxlen);
		if ((size_t)len > size - off)
			return itt_err_set(
			    err, ITT_E_FORMAT,
			    "llama2c tokenizer: token %u (%d bytes) runs past the end "
			    "of the file",
			    i, len);
		/* a space (1 byte) may become U+2581 (3 bytes); ids 0..2 become names
		 * of up to 5 bytes; +1 for the NUL */
		text_bytes += 3 * (size_t)len + 6;
		off += (size_t)len;
	}
	if (off != size)
		return itt_err_set(err, ITT_E_FORMAT,
		                   "llama2c tokenizer: %zu bytes left after %u tokens (vocab size "
		                   "mismatch?)",
		                   size - off, n_vocab);

	struct llama2c_vocab *v = calloc(1, sizeof *v);
	if (!v)
		return itt_err_set(err, ITT_E_NOMEM, "llama2c tokenizer: out of memory");
	v->n = n_vocab;
	v->max_token_length = (uint32_t)maxlen;
	v->tokens = calloc(n_vocab, sizeof *v->tokens);
	v->scores = calloc(n_vocab, sizeof *v->scores);
	v->types = calloc(n_vocab, sizeof *v->types);
	v->text = malloc(text_bytes + 16);
	if (!v->tokens || !v->scores || !v->types || !v->text) {
		llama2c_vocab_destroy(&v);
		return itt_err_set(err, ITT_E_NOMEM, "llama2c tokenizer: out of memory");
	}

	static const char *const special[3] = {"<unk>", "<s>", "</s>"};
	static const int32_t special_type[3] = {TOKENIZER_TYPE_UNKNOWN, TOKENIZER_TYPE_CONTROL,
	                                        TOKENIZER_TYPE_CONTROL};
	char *t = v->text;
	off = 4;
	for (uint32_t i = 0; i < n_vocab; i++) {
		v->scores[i] = rd_f32(b + off);
		size_t len = (size_t)rd_i32(b + off + 4);
		const uint8_t *s = b + off + 8;
		off += 8 + len;
		char *start = t;
		if (i < 3) {
			size_t n = strlen(special[i]);
			memcpy(t, special[i], n);
			t += n;
			v->types[i] = special_type[i];
		} else if (tokenizer_byte_of_text((const char *)s, len) >= 0) {
			memcpy(t, s, len);
			t += len;
			v->types[i] = TOKENIZER_TYPE_BYTE;
		} else {
			for (size_t k = 0; k < len; k++) {
				if (s[k] == ' ') {
					memcpy(t, "\xe2\x96\x81", 3);
					t += 3;
				} else {
					*t++ = (char)s[k];
				}
			}
			v->types[i] = TOKENIZER_TYPE_NORMAL;
		}
		v->tokens[i].len = (uint64_t)(t - start);
		*t++ = 0;
	}
	/* Pointers are set once the store is complete. */
	t = v->text;
	for (uint32_t i = 0; i < n_vocab; i++) {
		v->tokens[i].ptr = t;
		t += v->tokens[i].len + 1;
	}
	*out = v;
	return 0;
}

int llama2c_vocab_load(const char *path, uint32_t n_vocab, struct llama2c_vocab **out,
                       struct itt_err *err)
{
	if (!path)
		return itt_err_set(err, ITT_E_INVALID, "llama2c_vocab_load: path is NULL");
	void *map;
	size_t size;
	int rc = map_file(path, &map, &size, err);
	if (rc)
		return rc;
	struct itt_err e = {0};
	rc = llama2c_vocab_load_mem(map, size, n_vocab, out, &e);
	if (rc)
		itt_err_set(err, rc, "%s: %s", path, e.msg);
	if (map)
		munmap(map, size);
	return rc;
}

/* ---- GGUF mapping ---- */

int llama2c_add_hparams(gguf_writer_t *w, const struct llama2c_config *c, const char *name,
                        struct itt_err *err)
{
	if (!w || !c || !name)
		return itt_err_set(err, ITT_E_INVALID, "llama2c_add_hparams: NULL argument");
	int rc;
	if ((rc = gguf_writer_add_str(w, "general.architecture", "llama", err)) ||
	    (rc = gguf_writer_add_str(w, "general.name", name, err)) ||
	    (rc = gguf_writer_add_u32(w, "general.file_type", 0, err)) ||
	    (rc = gguf_writer_add_u32(w, "llama.context_length", (uint32_t)c->seq_len, err)) ||
	    (rc = gguf_writer_add_u32(w, "llama.embedding_length", (uint32_t)c->dim, err)) ||
	    (rc = gguf_writer_add_u32(w, "llama.feed_forward_length", (uint32_t)c->hidden_dim,
	                              err)) ||
	    (rc = gguf_writer_add_u32(w, "llama.block_count", (uint32_t)c->n_layers, err)) ||
	    (rc =
	         gguf_writer_add_u32(w, "llama.attention.head_count", (uint32_t)c->n_heads, err)) ||
	    (rc = gguf_writer_add_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_kv_heads,
	                              err)) ||
	    (rc = gguf_writer_add_u32(w, "llama.rope.dimension_count", (uint32_t)c->head_dim,
	                              err)) ||
	    (rc = gguf_writer_add_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f, err)) ||
	    (rc = gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.0f, err)))
		return rc;
	return 0;
}

int llama2c_add_vocab(gguf_writer_t *w, const struct llama2c_vocab *v, struct itt_err *err)
{
	if (!w || !v)
		return itt_err_set(err, ITT_E_INVALID, "llama2c_add_vocab: NULL argument");
	if (v->n < 3)
		return itt_err_set(err, ITT_E_INVALID,
		                   "llama2c_add_vocab: %u tokens; <unk>, <s>, </s> are needed",
		                   v->n);
	int rc;
	if ((rc = gguf_writer_add_str(w, "tokenizer.ggml.model", "llama", err)) ||
	    (rc = gguf_writer_add_str_arr(w, "tokenizer.ggml.tokens", v->tokens, v->n, err)) ||
	    (rc = gguf_writer_add_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v->scores,
	                              v->n, err)) ||
	    (rc = gguf_writer_add_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v->types,
	                              v->n, err)) ||
	    (rc = gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 1, err)) ||
	    (rc = gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 2, err)) ||
	    (rc = gguf_writer_add_u32(w, "tokenizer.ggml.unknown_token_id", 0, err)) ||
	    (rc = gguf_writer_add_bool(w, "tokenizer.ggml.add_space_prefix", true, err)))
		return rc;
	return 0;
}

/* Adds a borrowed F32 tensor of [rows][cols] (rows == 0: a vector). */
static int add_f32(gguf_writer_t *w, const char *name, const float *data, uint64_t cols,
                   uint64_t rows, struct itt_err *err)
{
	uint64_t ne[2] = {cols, rows};
	uint32_t nd = rows ? 2 : 1;
	uint64_t bytes = cols * (rows ? rows : 1) * sizeof(float);
	return gguf_writer_add_tensor(w, name, nd, ne, GGML_TYPE_F32, data, bytes,
	                              GGUF_WRITER_BORROW, err);
}

int llama2c_add_tensors(gguf_writer_t *w, const llama2c_t *m, struct itt_err *err)
{
	if (!w || !m)
		return itt_err_set(err, ITT_E_INVALID, "llama2c_add_tensors: NULL argument");
	const struct llama2c_config *c = &m->cfg;
	const struct llama2c_weights *x = &m->w;
	uint64_t d = (uint64_t)c->dim, h = (uint64_t)c->hidden_dim;
	uint64_t v = (uint64_t)c->vocab_size, kv = (uint64_t)c->kv_dim;
	int rc;
	if ((rc = add_f32(w, "token_embd.weight", x->token_embedding, d, v, err)) ||
	    (rc = add_f32(w, "output_norm.weight", x->rms_final, d, 0, err)))
		return rc;
	if (!c->shared_classifier && (rc = add_f32(w, "output.weight", x->wcls, d, v, err)))
		return rc;
	for (int32_t l = 0; l < c->n_layers; l++) {
		size_t L = (size_t)l;
		struct {
			const char *suffix;
			const float *data;
			uint64_t cols, rows;
		} t[] = {
		    {"attn_q", x->wq + L * d * d, d, d},
		    {"attn_k", x->wk + L * kv * d, d, kv},
		    {"attn_v", x->wv + L * kv * d, d, kv},
		    {"attn_output", x->wo + L * d * d, d, d},
		    {"attn_norm", x->rms_att + L * d, d, 0},
		    {"ffn_gate", x->w1 + L * h * d, d, h},
		    {"ffn_down", x->w2 + L * d * h, h, d},
		    {"ffn_up", x->w3 + L * h * d, d, h},
		    {"ffn_norm", x->rms_ffn + L * d, d, 0},
		};
		for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
			char name[64];
			snprintf(name, sizeof name, "blk.%d.%s.weight", l, t[i].suffix);
			rc = add_f32(w, name, t[i].data, t[i].cols, t[i].rows, err);
			if (rc)
				return rc;
		}
	}
	return 0;
}
