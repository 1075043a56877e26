/* itt-dequant: writes tensors of a GGUF file dequantised by the engine, as
 * raw little-endian float32, for comparison with another implementation.
 *
 *   itt-dequant MODEL.gguf --out-dir DIR [--rows N] [--check-matmul] NAME...
 *
 * For each tensor NAME (any shape; rows are ne[0] values long) the first N
 * rows (default: all) go to DIR/NAME.f32 through quant_dequant_row, and a
 * line "NAME TYPE ne0 rows" is printed.  --check-matmul also multiplies
 * those rows with 3 fixed input vectors through quant_matmul_rows, once on
 * the tensor as stored and once on the dequantised rows as F32, and fails
 * unless the two agree bit for bit (what quant.h promises for every type).
 * Exit status 1 on any error, named on stderr. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

#define CHECK_M 3

static int usage(void)
{
	fprintf(stderr, "usage: itt-dequant MODEL.gguf --out-dir DIR [--rows N] [--check-matmul] "
	                "NAME...\n");
	return 2;
}

/* Both products of rows [0, n) with CHECK_M inputs; 0 if they are equal. */
static int check_matmul(const struct gguf_tensor *t, size_t cols, size_t row_bytes, size_t n,
                        const float *rows)
{
	float *X = malloc(CHECK_M * cols * sizeof(float));
	float *Yq = malloc(CHECK_M * n * sizeof(float)), *Yf = malloc(CHECK_M * n * sizeof(float));
	int rc = -1;
	if (!X || !Yq || !Yf) {
		fprintf(stderr, "itt-dequant: out of memory\n");
		goto out;
	}
	for (size_t i = 0; i < CHECK_M * cols; i++)
		X[i] = sinf((float)i * 0.37f);
	int a = quant_matmul_rows(t->type, t->data, row_bytes, cols, X, CHECK_M, Yq, n, 0, n);
	int b = quant_matmul_rows(GGML_TYPE_F32, rows, cols * sizeof(float), cols, X, CHECK_M, Yf,
	                          n, 0, n);
	if (a < 0 || b < 0) {
		fprintf(stderr, "itt-dequant: %.*s: quant_matmul_rows failed (%d, %d)\n",
		        (int)t->name.len, t->name.ptr, a, b);
		goto out;
	}
	for (size_t i = 0; i < CHECK_M * n; i++)
		if (memcmp(&Yq[i], &Yf[i], sizeof(float))) {
			fprintf(stderr,
			        "itt-dequant: %.*s: matmul of the %s rows differs from F32 on the "
			        "dequantised rows at input %zu row %zu: %.9g vs %.9g\n",
			        (int)t->name.len, t->name.ptr, ggml_type_name(t->type), i / n,
			        i % n, Yq[i], Yf[i]);
			goto out;
		}
	rc = 0;
out:
	free(X);
	free(Yq);
	free(Yf);
	return rc;
}

static int dump(const gguf_t *g, const char *name, const char *dir, size_t max_rows, int check)
{
	const struct gguf_tensor *t = gguf_find_tensor(g, name);
	if (!t) {
		fprintf(stderr, "itt-dequant: no tensor %s\n", name);
		return -1;
	}
	if (!quant_type_supported(t->type)) {
		fprintf(stderr, "itt-dequant: %s: type %s is not supported\n", name,
		        ggml_type_name(t->type));
		return -1;
	}
	size_t cols = (size_t)t->ne[0], nrows = 1;
	for (uint32_t d = 1; d < t->n_dims; d++)
		nrows *= (size_t)t->ne[d]; /* the reader checked the product against the size */
	size_t row_bytes = quant_row_bytes(t->type, cols);
	if (row_bytes == 0 || row_bytes * nrows != t->size) {
		fprintf(stderr,
		        "itt-dequant: %s: %zu rows of %zu %s values do not make %llu bytes\n", name,
		        nrows, cols, ggml_type_name(t->type), (unsigned long long)t->size);
		return -1;
	}
	size_t n = max_rows && max_rows < nrows ? max_rows : nrows;
	float *buf = malloc(n * cols * sizeof(float));
	char path[4096];
	if (!buf) {
		fprintf(stderr, "itt-dequant: %s: out of memory for %zu x %zu floats\n", name, n,
		        cols);
		return -1;
	}
	int rc = 0;
	for (size_t r = 0; r < n && rc == 0; r++)
		rc = quant_dequant_row(t->type, (const uint8_t *)t->data + r * row_bytes,
		                       buf + r * cols, cols);
	if (rc < 0)
		fprintf(stderr, "itt-dequant: %s: quant_dequant_row failed (%d)\n", name, rc);
	if (rc == 0 && snprintf(path, sizeof path, "%s/%s.f32", dir, name) >= (int)sizeof path) {
		fprintf(stderr, "itt-dequant: %s: output path too long\n", name);
		rc = -1;
	}
	if (rc == 0) {
		FILE *f = fopen(path, "wb");
		if (!f || fwrite(buf, sizeof(float), n * cols, f) != n * cols) {
			fprintf(stderr, "itt-dequant: cannot write %s\n", path);
			rc = -1;
		}
		if (f && fclose(f) != 0 && rc == 0) {
			fprintf(stderr, "itt-dequant: cannot write %s\n", path);
			rc = -1;
		}
	}
	if (rc == 0 && check)
		rc = check_matmul(t, cols, row_bytes, n, buf);
	if (rc == 0)
		printf("%s %s %zu %zu\n", name, ggml_type_name(t->type), cols, n);
	free(buf);
	return rc;
}

int main(int argc, char **argv)
{
	const char *path = NULL, *dir = NULL;
	size_t max_rows = 0;
	int check = 0, first_name = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--out-dir") && i + 1 < argc) {
			dir = argv[++i];
		} else if (!strcmp(argv[i], "--rows") && i + 1 < argc) {
			char *end;
			max_rows = strtoull(argv[++i], &end, 10);
			if (*end || max_rows == 0)
				return usage();
		} else if (!strcmp(argv[i], "--check-matmul")) {
			check = 1;
		} else if (argv[i][0] == '-') {
			return usage();
		} else if (!path) {
			path = argv[i];
		} else {
			first_name = i;
			break;
		}
	}
	if (!path || !dir || !first_name)
		return usage();

	struct itt_err err = {0};
	gguf_t *g = NULL;
	if (gguf_open(path, &g, &err) < 0) {
		fprintf(stderr, "itt-dequant: %s: %s\n", path, err.msg);
		return 1;
	}
	int rc = 0;
	for (int i = first_name; i < argc && rc == 0; i++)
		rc = dump(g, argv[i], dir, max_rows, check);
	gguf_close(&g);
	return rc == 0 ? 0 : 1;
}
