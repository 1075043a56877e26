/* bench-quant: single-thread speed of the fused dequantise-and-multiply
 * kernels (quant_matmul_rows) against the machine's read bandwidth and
 * OpenBLAS on the F32 version of the same matrix.
 *
 * For each weight shape (rows x K) and type, and M = 1, 2, 4, 8, 16 (and 32
 * when QUANT_MAX_M allows) input rows, it reports the median time per call, the weight bytes
 * streamed per second (the figure that matters for memory-bound decode), the bandwidth of a plain
 * read of as many bytes (a float sum) timed right after each call, their ratio, and GFLOP/s.  The
 * paired read keeps the ratio honest on a machine whose other cores are busy; a headline read
 * bandwidth (sum of a large array) is printed first.  F32 rows compare OpenBLAS: M calls of sgemv
 * (the later ones may find the matrix in cache when it fits) and one sgemm.  Weights are cold: each
 * call uses the next of enough copies of the matrix to overflow the last-level cache (--hot: one
 * copy).  Prints a table and, last, one JSON line.  Not a test: it asserts nothing.
 *
 * Usage: bench-quant [--quick] [--hot] [--kernel auto|scalar|avx2|avx512]
 *                    [--type q4_0|q8_0|f16|bf16|f32] [--rows N] [--k N]
 *                    [--m N] [--no-blas] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gguf.h"
#include "quant.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define COLD_BYTES (256ull << 20) /* total size of the rotating copies */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
	qsort(v, n, sizeof *v, cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng = 88172645463325252ull;

static float rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((double)(rng >> 11) / 4503599627370496.0 - 1.0);
}

static void *xmalloc(size_t n)
{
	void *p = aligned_alloc(64, (n + 63) / 64 * 64);
	if (!p) {
		fprintf(stderr, "bench-quant: out of memory (%zu bytes)\n", n);
		exit(1);
	}
	return p;
}

/* ---- read bandwidth ------------------------------------------------------- */

static volatile float sink;

static float sum_floats(const float *a, size_t n)
{
	size_t i = 0;
	float s = 0.0f;
#if defined(__AVX512F__)
	__m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	for (; i + 64 <= n; i += 64) {
		s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
		s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
		s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
		s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
	}
	s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
#elif defined(__AVX2__)
	__m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
	for (; i + 32 <= n; i += 32) {
		s0 = _mm256_add_ps(s0, _mm256_load_ps(a + i));
		s1 = _mm256_add_ps(s1, _mm256_load_ps(a + i + 8));
		s2 = _mm256_add_ps(s2, _mm256_load_ps(a + i + 16));
		s3 = _mm256_add_ps(s3, _mm256_load_ps(a + i + 24));
	}
	float t[8];
	_mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
	for (int j = 0; j < 8; j++)
		s += t[j];
#else
	float acc[8] = {0};
	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			acc[j] += a[i + j];
	for (int j = 0; j < 8; j++)
		s += acc[j];
#endif
	for (; i < n; i++)
		s += a[i];
	return s;
}

/* The read probe: a large array summed in slices.  Its full-sweep median
 * is the headline read bandwidth; a slice as large as the weight matrix,
 * timed right after each kernel call, is the paired reference that makes
 * the ratio robust to what else the machine is doing. */
static float *probe;
static size_t probe_n, probe_off;

static void probe_init(size_t bytes)
{
	probe_n = bytes / sizeof(float);
	probe = xmalloc(bytes);
	for (size_t i = 0; i < probe_n; i++)
		probe[i] = (float)(i & 1023);
}

static double read_bandwidth(int reps)
{
	double t[32];
	for (int r = 0; r < reps; r++) {
		double t0 = now_s();
		sink = sum_floats(probe, probe_n);
		t[r] = now_s() - t0;
	}
	return (double)(probe_n * sizeof(float)) / median(t, (size_t)reps) / 1e9;
}

/* Sums the next slice of n floats (the same slice each time when hot). */
static void probe_slice(size_t n, int hot)
{
	if (hot || probe_off + n > probe_n)
		probe_off = 0;
	sink = sum_floats(probe + probe_off, n);
	probe_off += (n + 15) / 16 * 16;
}

/* ---- timing loop ---------------------------------------------------------------- */

enum impl { IMPL_FUSED, IMPL_SGEMV, IMPL_SGEMM };

struct run {
	enum impl impl;
	enum quant_kernel kernel;
	uint32_t type;
	uint8_t **copies;
	size_t ncopies, stride, rows, K, M;
	const float *X;
	float *Y;
};

static void run_once(const struct run *r, size_t c)
{
	const void *W = r->copies[c];
	switch (r->impl) {
	case IMPL_FUSED:
		quant_matmul_rows_kernel(r->kernel, r->type, W, r->stride, r->K, r->X, r->M, r->Y,
		                         r->rows, 0, r->rows);
		break;
	case IMPL_SGEMV:
		for (size_t m = 0; m < r->M; m++)
			cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)r->rows, (int)r->K, 1.0f, W,
			            (int)r->K, r->X + m * r->K, 1, 0.0f, r->Y + m * r->rows, 1);
		break;
	case IMPL_SGEMM:
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)r->M, (int)r->rows,
		            (int)r->K, 1.0f, r->X, (int)r->K, W, (int)r->K, 0.0f, r->Y,
		            (int)r->rows);
		break;
	}
}

struct timing {
	double call_s;  /* median seconds per call */
	double probe_s; /* median seconds to read as many bytes, paired */
};

/* Alternates calls and probe reads until budget_s has passed (at least 7
 * of each); each call uses the next copy of the weights. */
static struct timing time_run(const struct run *r, size_t bytes, int hot, double budget_s)
{
	enum { MAX_SAMPLES = 20000 };
	static double t[MAX_SAMPLES], p[MAX_SAMPLES];
	size_t n = 0, c = 0, pn = bytes / sizeof(float);
	for (int w = 0; w < 3; w++)
		run_once(r, c++ % r->ncopies);
	double start = now_s();
	while (n < MAX_SAMPLES && (n < 7 || now_s() - start < budget_s)) {
		double t0 = now_s();
		run_once(r, c++ % r->ncopies);
		double t1 = now_s();
		probe_slice(pn, hot);
		t[n] = t1 - t0;
		p[n++] = now_s() - t1;
	}
	return (struct timing){median(t, n), median(p, n)};
}

/* ---- main ------------------------------------------------------------------------- */

static const char *type_name(uint32_t type)
{
	switch (type) {
	case GGML_TYPE_F32: return "f32";
	case GGML_TYPE_F16: return "f16";
	case GGML_TYPE_BF16: return "bf16";
	case GGML_TYPE_Q8_0: return "q8_0";
	case GGML_TYPE_Q4_0: return "q4_0";
	}
	return "?";
}

struct result {
	size_t rows, K, M;
	const char *type, *impl;
	double us, gbps, probe_gbps, gflops;
};

static struct result results[512];
static size_t nresults;

static void record(size_t rows, size_t K, size_t M, const char *type, const char *impl,
                   struct timing tm, size_t wbytes)
{
	if (nresults == sizeof results / sizeof results[0])
		return;
	struct result *res = &results[nresults++];
	res->rows = rows;
	res->K = K;
	res->M = M;
	res->type = type;
	res->impl = impl;
	res->us = tm.call_s * 1e6;
	res->gbps = (double)wbytes / tm.call_s / 1e9;
	res->probe_gbps = (double)wbytes / tm.probe_s / 1e9;
	res->gflops = 2.0 * (double)M * (double)rows * (double)K / tm.call_s / 1e9;
	printf("%6zux%-5zu %-5s %-7s %3zu %10.1f %8.2f %8.2f %6.0f%% %8.2f\n", rows, K, type, impl,
	       M, res->us, res->gbps, res->probe_gbps, 100.0 * res->gbps / res->probe_gbps,
	       res->gflops);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int quick = 0, hot = 0;
	const char *only_type = NULL;
	size_t only_rows = 0, only_k = 0, only_m = 0;
	int blas = 1;
	enum quant_kernel kernel = QUANT_KERNEL_AUTO;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			quick = 1;
		} else if (!strcmp(argv[i], "--hot")) {
			hot = 1;
		} else if (!strcmp(argv[i], "--type") && i + 1 < argc) {
			only_type = argv[++i];
		} else if (!strcmp(argv[i], "--rows") && i + 1 < argc) {
			only_rows = (size_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--k") && i + 1 < argc) {
			only_k = (size_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--m") && i + 1 < argc) {
			only_m = (size_t)strtoul(argv[++i], NULL, 10);
		} else if (!strcmp(argv[i], "--no-blas")) {
			blas = 0;
		} else if (!strcmp(argv[i], "--kernel") && i + 1 < argc) {
			const char *k = argv[++i];
			kernel = QUANT_KERNEL_COUNT;
			for (int j = 0; j < QUANT_KERNEL_COUNT; j++)
				if (!strcmp(k, quant_kernel_name(j)))
					kernel = j;
			if (!quant_kernel_available(kernel)) {
				fprintf(stderr, "bench-quant: kernel %s is not built in\n", k);
				return 1;
			}
		} else {
			fprintf(stderr,
			        "usage: bench-quant [--quick] [--hot] "
			        "[--kernel auto|scalar|avx2|avx512] [--type T] [--rows N] [--k N] "
			        "[--m N] [--no-blas]\n");
			return 2;
		}
	}
	if (kernel == QUANT_KERNEL_AUTO) /* name the kernel AUTO picks */
		for (int j = QUANT_KERNEL_SCALAR; j < QUANT_KERNEL_COUNT; j++)
			if (quant_kernel_available(j))
				kernel = j;
	const char *kname = quant_kernel_name(kernel);
	openblas_set_num_threads(1);
	double budget = quick ? 0.05 : 0.25;

	probe_init(quick ? (128u << 20) : (512u << 20));
	double read_gbps = read_bandwidth(quick ? 3 : 9);
	printf("read bandwidth (1 thread, sum of %d MiB floats, median): %.2f GB/s\n",
	       quick ? 128 : 512, read_gbps);
	printf("kernel %s, weights %s\n\n", kname,
	       hot ? "hot (one copy)" : "cold (rotating copies)");
	printf("wGB/s: weight bytes per second; rdGB/s: a plain read of as many bytes, timed\n"
	       "right after each call; %%read = wGB/s / rdGB/s.  Medians.\n\n");
	printf("%12s %-5s %-7s %3s %10s %8s %8s %7s %8s\n", "rows x K", "type", "impl", "M",
	       "us/call", "wGB/s", "rdGB/s", "%read", "GFLOP/s");

	static const size_t shapes[][2] = {{768, 2048}, {2048, 768}, {768, 768}, {32000, 768}};
	static const size_t Ms[] = {1, 2, 4, 8, 16, 32};
	static const uint32_t types[] = {GGML_TYPE_Q4_0, GGML_TYPE_Q8_0, GGML_TYPE_F16,
	                                 GGML_TYPE_BF16, GGML_TYPE_F32};

	for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
		size_t rows = shapes[s][0], K = shapes[s][1];
		if ((only_rows && rows != only_rows) || (only_k && K != only_k))
			continue;
		float *Wf = xmalloc(rows * K * sizeof(float));
		for (size_t i = 0; i < rows * K; i++)
			Wf[i] = rnd();
		float *X = xmalloc(QUANT_MAX_M * K * sizeof(float));
		for (size_t i = 0; i < QUANT_MAX_M * K; i++)
			X[i] = rnd();
		float *Y = xmalloc(QUANT_MAX_M * rows * sizeof(float));

		for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
			uint32_t type = types[t];
			if (only_type && strcmp(only_type, type_name(type)))
				continue;
			size_t stride = quant_row_bytes(type, K), bytes = stride * rows;
			size_t ncopies = hot ? 1 : (size_t)(COLD_BYTES / bytes) + 1;
			uint8_t **copies = xmalloc(ncopies * sizeof *copies);
			copies[0] = xmalloc(bytes);
			for (size_t r = 0; r < rows; r++)
				quant_quantize_row(type, Wf + r * K, copies[0] + r * stride, K);
			for (size_t c = 1; c < ncopies; c++) {
				copies[c] = xmalloc(bytes);
				memcpy(copies[c], copies[0], bytes);
			}
			struct run r = {IMPL_FUSED, kernel, type, copies, ncopies, stride,
			                rows,       K,      0,    X,      Y};
			for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
				r.M = Ms[mi];
				if (r.M > QUANT_MAX_M || (only_m && r.M != only_m))
					continue;
				r.impl = IMPL_FUSED;
				record(rows, K, r.M, type_name(type), kname,
				       time_run(&r, bytes, hot, budget), bytes);
			}
			if (type == GGML_TYPE_F32 && blas) {
				for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
					r.M = Ms[mi];
					if (r.M > QUANT_MAX_M || (only_m && r.M != only_m))
						continue;
					r.impl = IMPL_SGEMV;
					record(rows, K, r.M, "f32", "sgemv",
					       time_run(&r, bytes, hot, budget), bytes);
					r.impl = IMPL_SGEMM;
					record(rows, K, r.M, "f32", "sgemm",
					       time_run(&r, bytes, hot, budget), bytes);
				}
			}
			for (size_t c = 0; c < ncopies; c++)
				free(copies[c]);
			free(copies);
		}
		free(Wf);
		free(X);
		free(Y);
		printf("\n");
	}

	printf("{\"bench\":\"quant\",\"threads\":1,\"weights\":\"%s\",\"read_gbps\":%.3f,"
	       "\"results\":[",
	       hot ? "hot" : "cold", read_gbps);
	for (size_t i = 0; i < nresults; i++) {
		const struct result *res = &results[i];
		printf("%s{\"rows\":%zu,\"k\":%zu,\"type\":\"%s\",\"impl\":\"%s\",\"m\":%zu,"
		       "\"us\":%.2f,\"gbps\":%.3f,\"read_gbps\":%.3f,\"gflops\":%.3f}",
		       i ? "," : "", res->rows, res->K, res->type, res->impl, res->M, res->us,
		       res->gbps, res->probe_gbps, res->gflops);
	}
	printf("]}\n");
	free(probe);
	return 0;
}
