/* itt-quantize: converts the weight matrices of a GGUF to F16, Q8_0 or Q4_0.
 *
 * Contract: every 2-D F32 tensor whose row length fits the type's block
 * (32 for Q8_0/Q4_0; any for F16) is converted row by row with
 * quant_quantize_row; every other tensor (norms, other shapes, tensors that
 * are not F32) is copied unchanged and listed with the reason.  All metadata
 * is copied; general.file_type is set as in llama.cpp (F16 = 1, Q4_0 = 2,
 * Q8_0 = 7).  The output is streamed (one chunk of rows in memory at a
 * time) and appears atomically.  Exit codes: 0 done, 1 bad input or
 * failure (also: nothing to convert), 2 usage error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gguf-write.h"
#include "opts.h"
#include "gguf.h"
#include "quant.h"

#define CHUNK_BYTES (1u << 20) /* quantised bytes per fill call, about */

struct qctx {
	const uint8_t *src; /* rows of cols F32 values, inside the mapping */
	uint64_t cols, rows, next;
	uint32_t type;
	size_t out_row; /* quantised bytes per row */
	size_t batch;   /* rows per fill call */
	uint8_t *out;   /* shared output buffer */
	float *scratch; /* shared, for rows not 4-byte aligned */
};

static int fill_rows(void *ctx, const void **chunk, size_t *len, struct itt_err *err)
{
	struct qctx *q = ctx;
	uint64_t n = q->rows - q->next;
	if (n > q->batch)
		n = q->batch;
	for (uint64_t r = 0; r < n; r++) {
		const uint8_t *row = q->src + (q->next + r) * q->cols * sizeof(float);
		const float *x = (const float *)(const void *)row;
		if ((uintptr_t)row % sizeof(float) != 0) {
			memcpy(q->scratch, row, q->cols * sizeof(float));
			x = q->scratch;
		}
		int rc = quant_quantize_row(q->type, x, q->out + r * q->out_row, q->cols);
		if (rc)
			return itt_err_set(err, rc, "quant_quantize_row(%s, %llu values) failed",
			                   ggml_type_name(q->type), (unsigned long long)q->cols);
	}
	q->next += n;
	*chunk = q->out;
	*len = (size_t)n * q->out_row;
	return 0;
}

struct quantize_args {
	bool sync;
};

static const struct opt quantize_opts[] = {
    {"fsync", 0, OPT_FLAG, NULL, 0, 0, offsetof(struct quantize_args, sync), NULL,
     "flush the file to disk before returning"},
};

static const struct opt_spec quantize_spec = {
    .prog = "itt-quantize",
    .usage = "IN.gguf OUT.gguf TYPE [--fsync]",
    .about = "\nTYPE is f16, q8_0 or q4_0.  Every 2-D F32 tensor whose row length is a\n"
             "multiple of 32 (any row length for f16) becomes TYPE; 1-D tensors (norms)\n"
             "and everything else are copied unchanged.  Metadata is copied and\n"
             "general.file_type is set (f16 1, q4_0 2, q8_0 7).",
    .opts = quantize_opts,
    .n_opts = OPTS_N(quantize_opts),
    .epilog = "Exit status: 0 done, 1 bad input or failure, 2 usage error.",
};

static int parse_type(const char *s, uint32_t *type, uint32_t *ftype)
{
	if (strcasecmp(s, "f16") == 0)
		*type = GGML_TYPE_F16, *ftype = 1;
	else if (strcasecmp(s, "q4_0") == 0)
		*type = GGML_TYPE_Q4_0, *ftype = 2;
	else if (strcasecmp(s, "q8_0") == 0)
		*type = GGML_TYPE_Q8_0, *ftype = 7;
	else
		return -1;
	return 0;
}

static void shape_str(const struct gguf_tensor *t, char *buf, size_t cap)
{
	size_t n = 0;
	buf[0] = 0;
	for (uint32_t d = 0; d < t->n_dims && n < cap; d++)
		n += (size_t)snprintf(buf + n, cap - n, "%s%llu", d ? " x " : "",
		                      (unsigned long long)t->ne[d]);
}

/* Why tensor t stays as it is, or NULL if it is converted to type. */
static const char *keep_reason(const struct gguf_tensor *t, uint32_t type)
{
	if (t->type != GGML_TYPE_F32)
		return "not F32";
	if (t->n_dims == 1)
		return "1-D";
	if (t->n_dims != 2)
		return "not 2-D";
	if (type != GGML_TYPE_F16 && t->ne[0] % QK8_0 != 0)
		return "row length not a multiple of 32";
	return NULL;
}

static int run(const char *in, const char *out, uint32_t type, uint32_t ftype, bool sync,
               struct itt_err *err)
{
	gguf_t *g = NULL;
	gguf_writer_t *w = NULL;
	struct qctx *q = NULL;
	uint8_t *obuf = NULL;
	float *scratch = NULL;
	int rc = gguf_open(in, &g, err);
	if (rc)
		return rc;
	rc = gguf_writer_new(&w, err);
	for (uint64_t i = 0; i < gguf_n_kv(g) && rc == 0; i++) {
		const struct gguf_kv *kv = gguf_kv_at(g, i);
		if (!gguf_str_eq(kv->key, "general.file_type"))
			rc = gguf_writer_copy_kv(w, g, kv, err);
	}
	if (rc == 0)
		rc = gguf_writer_add_u32(w, "general.file_type", ftype, err);
	if (rc)
		goto out;

	uint64_t nt = gguf_n_tensors(g);
	q = calloc(nt ? nt : 1, sizeof *q);
	if (!q) {
		rc = itt_err_set(err, ITT_E_NOMEM, "out of memory");
		goto out;
	}
	/* Size the shared buffers for the widest row. */
	size_t obuf_bytes = 0, max_cols = 0;
	for (uint64_t i = 0; i < nt; i++) {
		const struct gguf_tensor *t = gguf_tensor_at(g, i);
		if (keep_reason(t, type))
			continue;
		size_t ob = quant_row_bytes(type, (size_t)t->ne[0]);
		if (ob == 0) {
			rc = itt_err_set(err, ITT_E_UNSUPPORTED,
			                 "tensor %.*s: quant_row_bytes(%s) "
			                 "gives 0",
			                 (int)t->name.len, t->name.ptr, ggml_type_name(type));
			goto out;
		}
		size_t batch = CHUNK_BYTES / ob ? CHUNK_BYTES / ob : 1;
		if (batch * ob > obuf_bytes)
			obuf_bytes = batch * ob;
		if (t->ne[0] > max_cols)
			max_cols = (size_t)t->ne[0];
		q[i] = (struct qctx){.src = t->data,
		                     .cols = t->ne[0],
		                     .rows = t->ne[1],
		                     .type = type,
		                     .out_row = ob,
		                     .batch = batch};
	}
	obuf = malloc(obuf_bytes ? obuf_bytes : 1);
	scratch = malloc((max_cols ? max_cols : 1) * sizeof(float));
	if (!obuf || !scratch) {
		rc = itt_err_set(err, ITT_E_NOMEM, "out of memory");
		goto out;
	}

	printf("%-32s %-16s %-6s %12s    %-6s %12s\n", "tensor", "shape", "type", "bytes", "type",
	       "bytes");
	uint64_t before = 0, after = 0, n_conv = 0;
	for (uint64_t i = 0; i < nt && rc == 0; i++) {
		const struct gguf_tensor *t = gguf_tensor_at(g, i);
		char name[GGUF_MAX_NAME + 1], shape[96];
		snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
		shape_str(t, shape, sizeof shape);
		const char *why = keep_reason(t, type);
		if (why) {
			rc = gguf_writer_add_tensor(w, name, t->n_dims, t->ne, t->type, t->data,
			                            t->size, GGUF_WRITER_BORROW, err);
			printf("%-32s %-16s %-6s %12llu    kept (%s)\n", name, shape,
			       ggml_type_name(t->type), (unsigned long long)t->size, why);
			before += t->size;
			after += t->size;
			continue;
		}
		q[i].out = obuf;
		q[i].scratch = scratch;
		rc = gguf_writer_add_tensor_fn(w, name, t->n_dims, t->ne, type, fill_rows, &q[i],
		                               err);
		uint64_t nb = (uint64_t)q[i].out_row * q[i].rows;
		printf("%-32s %-16s %-6s %12llu -> %-6s %12llu\n", name, shape,
		       ggml_type_name(t->type), (unsigned long long)t->size, ggml_type_name(type),
		       (unsigned long long)nb);
		before += t->size;
		after += nb;
		n_conv++;
	}
	if (rc)
		goto out;
	if (n_conv == 0) {
		rc = itt_err_set(err, ITT_E_UNSUPPORTED,
		                 "%s: no 2-D F32 tensor to convert (see the table)", in);
		goto out;
	}
	printf("%llu of %llu tensors converted to %s; tensor bytes %.2f MiB -> %.2f MiB\n",
	       (unsigned long long)n_conv, (unsigned long long)nt, ggml_type_name(type),
	       before / 1048576.0, after / 1048576.0);
	rc = gguf_writer_write(w, out, sync, err);
	if (rc == 0)
		printf("wrote %s: %llu bytes\n", out, (unsigned long long)gguf_writer_file_size(w));
out:
	free(obuf);
	free(scratch);
	free(q);
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
	bool sync = qa.sync;
	uint32_t type, ftype;
	if (parse_type(pos[2], &type, &ftype) != 0) {
		fprintf(stderr, "itt-quantize: TYPE %s is not one of f16, q8_0, q4_0\n", pos[2]);
		return 2;
	}
	struct itt_err err = {0};
	int rc = run(pos[0], pos[1], type, ftype, sync, &err);
	if (rc) {
		fprintf(stderr, "itt-quantize: %s (%s)\n", err.msg, itt_strerror(rc));
		return 1;
	}
	return 0;
}
