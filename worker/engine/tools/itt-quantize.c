/* itt-quantize: writes a GGUF's weight matrices in another ggml type, or in
 * one of llama.cpp's named mixes (Q4_K_M, Q5_K_M, ...).
 *
 * Contract: the per-tensor type comes from quantize_tensor_type() (the
 * rules of llama-quantize, see quantize.h and the table in --help); with
 * --pure every weight matrix gets the mix's base type (still with the
 * fallback for row lengths its blocks do not divide).  Tensors in F32, F16
 * or BF16 are converted row by row (F16/BF16 rows dequantised first);
 * 1-D tensors, norms and tensors already quantised are copied unchanged
 * and listed with the reason.  All metadata is copied; general.file_type
 * is set as llama.cpp numbers it and general.quantization_version to 2.
 * The output is streamed (one chunk of rows in memory at a time) and
 * appears atomically.  Exit codes: 0 done, 1 bad input or failure (also:
 * nothing to convert), 2 usage error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf-write.h"
#include "gguf.h"
#include "opts.h"
#include "quant.h"
#include "quantize.h"

#define CHUNK_BYTES (1u << 20) /* quantised bytes per fill call, about */
#define QNT_VERSION 2          /* ggml's GGML_QNT_VERSION: the K-quant layouts */

struct qctx {
	const uint8_t *src; /* rows of cols values of src_type, inside the mapping */
	uint32_t src_type;  /* F32, F16 or BF16 */
	uint64_t cols, rows, next;
	uint32_t type;
	size_t in_row;  /* source bytes per row */
	size_t out_row; /* quantised bytes per row */
	size_t batch;   /* rows per fill call */
	uint8_t *out;   /* shared output buffer */
	float *scratch; /* shared, for rows to convert or not 4-byte aligned */
};

static int fill_rows(void *ctx, const void **chunk, size_t *len, struct itt_err *err)
{
	struct qctx *q = ctx;
	uint64_t n = q->rows - q->next;
	if (n > q->batch)
		n = q->batch;
	for (uint64_t r = 0; r < n; r++) {
		const uint8_t *row = q->src + (q->next + r) * q->in_row;
		const float *x = (const float *)(const void *)row;
		int rc = 0;
		if (q->src_type != GGML_TYPE_F32) {
			rc = quant_dequant_row(q->src_type, row, q->scratch, q->cols);
			x = q->scratch;
		} else if ((uintptr_t)row % sizeof(float) != 0) {
			memcpy(q->scratch, row, q->cols * sizeof(float));
			x = q->scratch;
		}
		if (rc == 0)
			rc = quant_quantize_row(q->type, x, q->out + r * q->out_row, q->cols);
		if (rc)
			return itt_err_set(err, rc, "%s row of %llu values -> %s failed",
			                   ggml_type_name(q->src_type), (unsigned long long)q->cols,
			                   ggml_type_name(q->type));
	}
	q->next += n;
	*chunk = q->out;
	*len = (size_t)n * q->out_row;
	return 0;
}

struct quantize_args {
	bool sync;
	bool pure;
};

static const struct opt quantize_opts[] = {
    {"fsync", 0, OPT_FLAG, NULL, 0, 0, offsetof(struct quantize_args, sync), NULL,
     "flush the file to disk before returning"},
    {"pure", 0, OPT_FLAG, NULL, 0, 0, offsetof(struct quantize_args, pure), NULL,
     "every weight matrix in TYPE's base type: no per-tensor promotions"},
};

static const struct opt_spec quantize_spec = {
    .prog = "itt-quantize",
    .usage = "IN.gguf OUT.gguf TYPE [--pure] [--fsync]",
    .about = "\nTYPE (any case; general.file_type in brackets):\n"
             "  F16 [1]  BF16 [32]  Q8_0 [7]  Q6_K [18]  Q5_K_M [17]  Q5_K_S [16]  Q5_1 [9]\n"
             "  Q5_0 [8]  Q4_K_M [15]  Q4_K_S [14]  Q4_1 [3]  Q4_0 [2]  Q3_K_L [13]\n"
             "  Q3_K_M [12]  Q3_K_S [11]  Q2_K [10]; Q3_K, Q4_K, Q5_K mean the _M mix.\n"
             "\n"
             "Weight matrices (2-D or more, name ending in \"weight\", not a norm) in\n"
             "F32, F16 or BF16 get TYPE's base type, except as llama-quantize does\n"
             "(L = layer, n = layers, more(L) = L < n/8 or L >= 7n/8 or (L - n/8) % 3 == 2):\n"
             "  F16, BF16: every matrix in that type, no other rule\n"
             "  output.weight (token_embd.weight if the output is tied): Q6_K; Q8_0 for\n"
             "    Q8_0, or when the base type's block does not divide the row\n"
             "  attn_v:   Q2_K: Q4_K if heads/kv_heads >= 4 else Q3_K; Q3_K_M: Q5_K for\n"
             "            L < 2 else Q4_K; Q3_K_L: Q5_K; Q4_K_M, Q5_K_M: Q6_K if more(L);\n"
             "            Q4_K_S: Q5_K for L < 4\n"
             "  ffn_down: Q2_K: Q3_K; Q3_K_M: Q5_K for L < n/16 else Q4_K; Q3_K_L: Q5_K;\n"
             "            Q4_K_M, Q5_K_M: Q6_K if more(L); Q4_K_S: Q5_K for L < n/8\n"
             "  attn_output: Q2_K: Q3_K; Q3_K_M: Q4_K; Q3_K_L: Q5_K\n"
             "Rows not a multiple of 256 fall back: Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0;\n"
             "Q5_K -> Q5_1; Q6_K -> Q8_0; then F16 if 32 does not divide them either.\n"
             "(Falcon's variants of these rules apply to Falcon models.)\n"
             "1-D tensors, norms and tensors already quantised are copied unchanged.\n"
             "Metadata is copied; general.file_type and general.quantization_version\n"
             "are set.",
    .opts = quantize_opts,
    .n_opts = OPTS_N(quantize_opts),
    .epilog = "Exit status: 0 done, 1 bad input or failure, 2 usage error.",
};

static void shape_str(const struct gguf_tensor *t, char *buf, size_t cap)
{
	size_t n = 0;
	buf[0] = 0;
	for (uint32_t d = 0; d < t->n_dims && n < cap; d++)
		n += (size_t)snprintf(buf + n, cap - n, "%s%llu", d ? " x " : "",
		                      (unsigned long long)t->ne[d]);
}

/* What the mix policy needs to know of the model: its tensors, and the
 * head counts and architecture from the metadata (missing keys leave 0). */
static void model_info(const gguf_t *g, struct quantize_model *m)
{
	memset(m, 0, sizeof *m);
	char name[GGUF_MAX_NAME + 1];
	for (uint64_t i = 0; i < gguf_n_tensors(g); i++) {
		const struct gguf_tensor *t = gguf_tensor_at(g, i);
		snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
		quantize_model_add(m, name);
	}
	struct gguf_str arch;
	if (gguf_get_str(g, "general.architecture", &arch, NULL) != 0 || arch.len > 64)
		return;
	m->falcon = gguf_str_eq(arch, "falcon");
	char key[128];
	uint32_t v;
	snprintf(key, sizeof key, "%.*s.block_count", (int)arch.len, arch.ptr);
	if (gguf_get_u32(g, key, &v, NULL) == 0 && v > 0)
		m->n_layer = v;
	snprintf(key, sizeof key, "%.*s.attention.head_count", (int)arch.len, arch.ptr);
	if (gguf_get_u32(g, key, &v, NULL) == 0)
		m->n_head = m->n_head_kv = v;
	snprintf(key, sizeof key, "%.*s.attention.head_count_kv", (int)arch.len, arch.ptr);
	if (gguf_get_u32(g, key, &v, NULL) == 0)
		m->n_head_kv = v;
}

/* Bytes of a row of n values of type from the GGUF type traits; 0 when the
 * block does not divide n. */
static size_t row_bytes(uint32_t type, uint64_t n)
{
	uint32_t blck = ggml_blck_size(type), size = ggml_type_size(type);
	if (!blck || n % blck || n / blck > SIZE_MAX / size)
		return 0;
	return (size_t)(n / blck * size);
}

static int run(const char *in, const char *out, uint32_t ftype, const struct quantize_args *qa,
               struct itt_err *err)
{
	gguf_t *g = NULL;
	gguf_writer_t *w = NULL;
	struct qctx *q = NULL;
	uint32_t *types = NULL;
	const char **why = NULL;
	uint8_t *obuf = NULL;
	float *scratch = NULL;
	int rc = gguf_open(in, &g, err);
	if (rc)
		return rc;
	rc = gguf_writer_new(&w, err);
	for (uint64_t i = 0; i < gguf_n_kv(g) && rc == 0; i++) {
		const struct gguf_kv *kv = gguf_kv_at(g, i);
		if (!gguf_str_eq(kv->key, "general.file_type") &&
		    !gguf_str_eq(kv->key, "general.quantization_version"))
			rc = gguf_writer_copy_kv(w, g, kv, err);
	}
	if (rc == 0)
		rc = gguf_writer_add_u32(w, "general.quantization_version", QNT_VERSION, err);
	if (rc == 0)
		rc = gguf_writer_add_u32(w, "general.file_type", ftype, err);
	if (rc)
		goto out;

	struct quantize_model model;
	model_info(g, &model);
	model.pure = qa->pure;
	uint64_t nt = gguf_n_tensors(g);
	q = calloc(nt ? nt : 1, sizeof *q);
	types = calloc(nt ? nt : 1, sizeof *types);
	why = calloc(nt ? nt : 1, sizeof *why);
	if (!q || !types || !why) {
		rc = itt_err_set(err, ITT_E_NOMEM, "out of memory");
		goto out;
	}
	/* Choose every tensor's type and size the shared buffers for the
	 * widest row. */
	size_t obuf_bytes = 0, max_cols = 0;
	char name[GGUF_MAX_NAME + 1];
	for (uint64_t i = 0; i < nt; i++) {
		const struct gguf_tensor *t = gguf_tensor_at(g, i);
		snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
		uint32_t type =
		    quantize_tensor_type(ftype, &model, name, t->n_dims, t->ne, t->type, &why[i]);
		types[i] = type;
		if (type == t->type)
			continue;
		size_t ib = row_bytes(t->type, t->ne[0]), ob = row_bytes(type, t->ne[0]);
		if (ib == 0 || ob == 0) {
			rc = itt_err_set(err, ITT_E_UNSUPPORTED,
			                 "tensor %s: a row of %llu values does not fit %s blocks",
			                 name, (unsigned long long)t->ne[0],
			                 ggml_type_name(ob ? t->type : type));
			goto out;
		}
		size_t batch = CHUNK_BYTES / ob ? CHUNK_BYTES / ob : 1;
		if (batch * ob > obuf_bytes)
			obuf_bytes = batch * ob;
		if (t->ne[0] > max_cols)
			max_cols = (size_t)t->ne[0];
		uint64_t rows = 1;
		for (uint32_t d = 1; d < t->n_dims; d++)
			rows *= t->ne[d];
		q[i] = (struct qctx){.src = t->data,
		                     .src_type = t->type,
		                     .cols = t->ne[0],
		                     .rows = rows,
		                     .type = type,
		                     .in_row = ib,
		                     .out_row = ob,
		                     .batch = batch};
	}
	obuf = malloc(obuf_bytes ? obuf_bytes : 1);
	scratch = malloc((max_cols ? max_cols : 1) * sizeof(float));
	if (!obuf || !scratch) {
		rc = itt_err_set(err, ITT_E_NOMEM, "out of memory");
		goto out;
	}

	printf("%-32s %-18s %-6s %12s    %-6s %12s\n", "tensor", "shape", "type", "bytes", "type",
	       "bytes");
	uint64_t before = 0, after = 0, n_conv = 0;
	for (uint64_t i = 0; i < nt && rc == 0; i++) {
		const struct gguf_tensor *t = gguf_tensor_at(g, i);
		char shape[96];
		snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
		shape_str(t, shape, sizeof shape);
		if (types[i] == t->type) {
			rc = gguf_writer_add_tensor(w, name, t->n_dims, t->ne, t->type, t->data,
			                            t->size, GGUF_WRITER_BORROW, err);
			printf("%-32s %-18s %-6s %12llu    kept%s%s%s\n", name, shape,
			       ggml_type_name(t->type), (unsigned long long)t->size,
			       why[i] ? " (" : "", why[i] ? why[i] : "", why[i] ? ")" : "");
			before += t->size;
			after += t->size;
			continue;
		}
		q[i].out = obuf;
		q[i].scratch = scratch;
		rc = gguf_writer_add_tensor_fn(w, name, t->n_dims, t->ne, types[i], fill_rows,
		                               &q[i], err);
		uint64_t nb = (uint64_t)q[i].out_row * q[i].rows;
		printf("%-32s %-18s %-6s %12llu -> %-6s %12llu%s%s\n", name, shape,
		       ggml_type_name(t->type), (unsigned long long)t->size,
		       ggml_type_name(types[i]), (unsigned long long)nb, why[i] ? "  " : "",
		       why[i] ? why[i] : "");
		before += t->size;
		after += nb;
		n_conv++;
	}
	if (rc)
		goto out;
	if (n_conv == 0) {
		rc =
		    itt_err_set(err, ITT_E_UNSUPPORTED,
		                "%s: no F32/F16/BF16 weight matrix to convert (see the table)", in);
		goto out;
	}
	printf("%llu of %llu tensors converted (%s%s); tensor bytes %.2f MiB -> %.2f MiB\n",
	       (unsigned long long)n_conv, (unsigned long long)nt, quantize_ftype_name(ftype),
	       qa->pure ? ", pure" : "", before / 1048576.0, after / 1048576.0);
	rc = gguf_writer_write(w, out, qa->sync, err);
	if (rc == 0)
		printf("wrote %s: %llu bytes\n", out, (unsigned long long)gguf_writer_file_size(w));
out:
	free(obuf);
	free(scratch);
	free(q);
	free(types);
	free(why);
	gguf_writer_destroy(&w);
	gguf_close(&g);
	return rc;
}

int main(int argc, char **argv)
{
	struct quantize_args qa;
	int n_pos = 0;
	int prc = opts_parse(&quantize_spec, argc, argv, &qa, &n_pos);
	if (prc != OPTS_OK)
		return prc == OPTS_HELP ? 0 : 2;
	if (n_pos != 3) {
		opts_usage(&quantize_spec, stderr);
		return 2;
	}
	const char *pos[3] = {argv[1], argv[2], argv[3]};
	uint32_t ftype;
	if (quantize_ftype_parse(pos[2], &ftype) != 0) {
		fprintf(stderr, "itt-quantize: TYPE %s is not one of", pos[2]);
		for (size_t i = 0; quantize_ftype_names[i]; i++)
			fprintf(stderr, " %s", quantize_ftype_names[i]);
		fprintf(stderr, " (or Q3_K, Q4_K, Q5_K)\n");
		return 2;
	}
	struct itt_err err = {0};
	int rc = run(pos[0], pos[1], ftype, &qa, &err);
	if (rc) {
		fprintf(stderr, "itt-quantize: %s (%s)\n", err.msg, itt_strerror(rc));
		return 1;
	}
	return 0;
}
