/* quant-dot: activation quantisers (Q8_0, Q8_1, Q8_K) and integer block
 * products of quantised weights with them.  Contract and rounding rules:
 * quant-dot.h.
 *
 * Structure: the scalar kernel (the reference) decodes one unit of weight
 * codes into small integers in value order (code j multiplies activation
 * j), forms the exact integer sums, and combines them into accumulator lane
 * u % 16 with fmaf.  The SIMD kernels (quant-dot-simd.h: AVX2, and
 * AVX-512 with VNNI, for Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K;
 * Q2_K and Q3_K take the scalar kernel) compute the same integers (integer
 * arithmetic has no rounding to differ in) and the same fma sequence per
 * lane, which is why all kernels agree bit for bit.  fmaf is explicit
 * everywhere a product is added: the build is gnu11, where the compiler may
 * otherwise contract a * b + c on its own.
 *
 * Selection is at compile time, as in quant.c.  The SIMD kernels keep a
 * decoded weight row and per-call activation data in thread-local buffers
 * (about 130 KB per thread that calls them), so they allocate nothing. */
#include "quant-dot.h"

#include <math.h>
#include <string.h>

#include "err.h"
#include "gguf.h"
#include "quant-dequant.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) &&               \
    defined(__AVX512VL__) && defined(__FMA__)
#define QDOT_HAVE_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define QDOT_HAVE_AVX2 1
#endif
#if defined(QDOT_HAVE_AVX512) || defined(QDOT_HAVE_AVX2)
#include <immintrin.h>
#endif

#define LANES 16

/* ---- types ----------------------------------------------------------- */

uint32_t quant_dot_act_type(uint32_t wtype)
{
	switch (wtype) {
	case GGML_TYPE_Q4_0:
	case GGML_TYPE_Q5_0:
	case GGML_TYPE_Q8_0: return GGML_TYPE_Q8_0;
	case GGML_TYPE_Q4_1:
	case GGML_TYPE_Q5_1: return GGML_TYPE_Q8_1;
	case GGML_TYPE_Q2_K:
	case GGML_TYPE_Q3_K:
	case GGML_TYPE_Q4_K:
	case GGML_TYPE_Q5_K:
	case GGML_TYPE_Q6_K: return GGML_TYPE_Q8_K;
	default: return 0;
	}
}

static size_t act_block_elems(uint32_t atype)
{
	return atype == GGML_TYPE_Q8_K ? QK_K : 32;
}

static size_t act_block_bytes(uint32_t atype)
{
	switch (atype) {
	case GGML_TYPE_Q8_0: return sizeof(struct block_q8_0);
	case GGML_TYPE_Q8_1: return sizeof(struct block_q8_1);
	case GGML_TYPE_Q8_K: return sizeof(struct block_q8_K);
	default: return 0;
	}
}

size_t quant_dot_act_row_bytes(uint32_t wtype, size_t K)
{
	uint32_t at = quant_dot_act_type(wtype);
	if (!at || K % act_block_elems(at) != 0)
		return 0;
	return K / act_block_elems(at) * act_block_bytes(at);
}

/* ---- activation quantisers ------------------------------------------- */

/* Round half to even of |v| < 2^22, ggml's nearest_int (its Q8_K
 * quantiser's rounding). */
static inline int nearest_int(float v)
{
	float t = v + 12582912.f;
	int32_t i;
	memcpy(&i, &t, sizeof i);
	return (i & 0x007fffff) - 0x00400000;
}

/* Q8_0 / Q8_1 block of 32 (x86 ggml arithmetic); returns the code sum. */
static int quantize_block_q8(const float *x, float *d_out, int8_t *qs)
{
	float amax = 0.0f;
	for (int j = 0; j < 32; j++) {
		float a = fabsf(x[j]);
		amax = a > amax ? a : amax;
	}
	float d = amax / 127.f;
	float id = amax != 0.0f ? 127.f / amax : 0.0f;
	int sum = 0;
	for (int j = 0; j < 32; j++) {
		/* the product rounded first, then to nearest even (rintf in the
		 * default rounding mode), as _mm256_mul_ps + _mm256_round_ps: no
		 * fma contraction can merge the two */
		int q = (int)rintf(x[j] * id);
		qs[j] = (int8_t)q;
		sum += q;
	}
	*d_out = d;
	return sum;
}

static void quantize_q8_0(const float *x, uint8_t *y, size_t K)
{
	for (size_t b = 0; b < K / 32; b++, x += 32, y += sizeof(struct block_q8_0)) {
		float d;
		int8_t qs[32];
		quantize_block_q8(x, &d, qs);
		uint16_t h = quant_fp32_to_fp16(d);
		y[0] = (uint8_t)h;
		y[1] = (uint8_t)(h >> 8);
		memcpy(y + offsetof(struct block_q8_0, qs), qs, 32);
	}
}

static void quantize_q8_1(const float *x, uint8_t *y, size_t K)
{
	for (size_t b = 0; b < K / 32; b++, x += 32, y += sizeof(struct block_q8_1)) {
		float d;
		int8_t qs[32];
		int sum = quantize_block_q8(x, &d, qs);
		uint16_t h = quant_fp32_to_fp16(d);
		/* ggml: FP32_TO_FP16(d * sum), the product in float */
		uint16_t s = quant_fp32_to_fp16(d * (float)sum);
		y[0] = (uint8_t)h;
		y[1] = (uint8_t)(h >> 8);
		y[2] = (uint8_t)s;
		y[3] = (uint8_t)(s >> 8);
		memcpy(y + offsetof(struct block_q8_1, qs), qs, 32);
	}
}

static void quantize_q8_K(const float *x, uint8_t *yb, size_t K)
{
	for (size_t b = 0; b < K / QK_K; b++, x += QK_K, yb += sizeof(struct block_q8_K)) {
		struct block_q8_K y;
		float amax = 0.0f, max = 0.0f;
		for (int j = 0; j < QK_K; j++) {
			float ax = fabsf(x[j]);
			if (ax > amax) {
				amax = ax;
				max = x[j];
			}
		}
		memset(&y, 0, sizeof y);
		if (amax != 0.0f) {
			float iscale = -127.f / max;
			for (int j = 0; j < QK_K; j++) {
				int v = nearest_int(iscale * x[j]);
				y.qs[j] = (int8_t)(v < 127 ? v : 127);
			}
			for (int j = 0; j < QK_K / 16; j++) {
				int sum = 0;
				for (int i = 0; i < 16; i++)
					sum += y.qs[16 * j + i];
				y.bsums[j] = (int16_t)sum;
			}
			y.d = 1 / iscale;
		}
		/* the struct has no padding (static assert) and the host is
		 * little-endian like the format */
		memcpy(yb, &y, sizeof y);
	}
}

int quant_dot_quantize_row(uint32_t wtype, const float *x, void *dst, size_t K)
{
	uint32_t at = quant_dot_act_type(wtype);
	if (!at)
		return ITT_E_UNSUPPORTED;
	if (K % act_block_elems(at) != 0)
		return ITT_E_INVALID;
	switch (at) {
	case GGML_TYPE_Q8_0: quantize_q8_0(x, dst, K); break;
	case GGML_TYPE_Q8_1: quantize_q8_1(x, dst, K); break;
	default: quantize_q8_K(x, dst, K); break;
	}
	return 0;
}

int quant_dot_dequantize_row(uint32_t wtype, const void *xq, float *y, size_t K)
{
	uint32_t at = quant_dot_act_type(wtype);
	if (!at)
		return ITT_E_UNSUPPORTED;
	size_t n = act_block_elems(at), bytes = act_block_bytes(at);
	if (K % n != 0)
		return ITT_E_INVALID;
	const uint8_t *p = xq;
	for (size_t b = 0; b < K / n; b++, p += bytes, y += n) {
		float d;
		if (at == GGML_TYPE_Q8_K)
			memcpy(&d, p, sizeof d);
		else
			d = quant_fp16_at(p);
		const int8_t *qs = (const int8_t *)(p + bytes - n - (at == GGML_TYPE_Q8_K ? 32 : 0));
		for (size_t j = 0; j < n; j++)
			y[j] = d * (float)qs[j];
	}
	return 0;
}

/* ---- scalar kernel ----------------------------------------------------
 *
 * Each unit function returns the updated accumulator lane. */

typedef float (*unit_fn)(const uint8_t *w, const uint8_t *a, float acc);

static inline int dot32(const int8_t *q, const int8_t *a)
{
	int s = 0;
	for (int j = 0; j < 32; j++)
		s += q[j] * a[j];
	return s;
}

static float unit_q8_0(const uint8_t *w, const uint8_t *a, float acc)
{
	int isum = dot32((const int8_t *)(w + 2), (const int8_t *)(a + 2));
	return fmaf((float)isum, quant_fp16_at(w) * quant_fp16_at(a), acc);
}

/* Codes of the legacy 4/5-bit blocks in value order. */
static inline void codes_nibbles(const uint8_t *qs, int8_t *q, int offset)
{
	for (int j = 0; j < 16; j++) {
		q[j] = (int8_t)((qs[j] & 15) - offset);
		q[j + 16] = (int8_t)((qs[j] >> 4) - offset);
	}
}

static inline void codes_fifth_bit(const uint8_t *qh, int8_t *q, int offset)
{
	uint32_t h = quant_u32_at(qh);
	for (int j = 0; j < 32; j++)
		q[j] = (int8_t)(q[j] + (int)((h >> j) & 1) * 16 - offset);
}

static float unit_q4_0(const uint8_t *w, const uint8_t *a, float acc)
{
	int8_t q[32];
	codes_nibbles(w + offsetof(struct block_q4_0, qs), q, 8);
	int isum = dot32(q, (const int8_t *)(a + 2));
	return fmaf((float)isum, quant_fp16_at(w) * quant_fp16_at(a), acc);
}

static float unit_q5_0(const uint8_t *w, const uint8_t *a, float acc)
{
	int8_t q[32];
	codes_nibbles(w + offsetof(struct block_q5_0, qs), q, 0);
	codes_fifth_bit(w + offsetof(struct block_q5_0, qh), q, 16);
	int isum = dot32(q, (const int8_t *)(a + 2));
	return fmaf((float)isum, quant_fp16_at(w) * quant_fp16_at(a), acc);
}

static float unit_q4_1(const uint8_t *w, const uint8_t *a, float acc)
{
	int8_t q[32];
	codes_nibbles(w + offsetof(struct block_q4_1, qs), q, 0);
	int isum = dot32(q, (const int8_t *)(a + offsetof(struct block_q8_1, qs)));
	acc = fmaf((float)isum, quant_fp16_at(w) * quant_fp16_at(a), acc);
	return fmaf(quant_fp16_at(w + 2), quant_fp16_at(a + 2), acc);
}

static float unit_q5_1(const uint8_t *w, const uint8_t *a, float acc)
{
	int8_t q[32];
	codes_nibbles(w + offsetof(struct block_q5_1, qs), q, 0);
	codes_fifth_bit(w + offsetof(struct block_q5_1, qh), q, 0);
	int isum = dot32(q, (const int8_t *)(a + offsetof(struct block_q8_1, qs)));
	acc = fmaf((float)isum, quant_fp16_at(w) * quant_fp16_at(a), acc);
	return fmaf(quant_fp16_at(w + 2), quant_fp16_at(a + 2), acc);
}

/* K-quants: codes q[256] in value order, nsub sub-blocks of 256 / nsub
 * values with integer scales sc[] and minimums mn[] (0 when none). */
struct kunit {
	int8_t q[QK_K];
	int sc[16], mn[16];
	int nsub, has_min;
	float d, dmin;
};

static float kunit_combine(const struct kunit *u, const uint8_t *a, float acc)
{
	const int8_t *aq = (const int8_t *)(a + offsetof(struct block_q8_K, qs));
	float ad;
	memcpy(&ad, a, sizeof ad);
	int len = QK_K / u->nsub, isum = 0, summs = 0;
	for (int s = 0; s < u->nsub; s++) {
		int dot = 0;
		for (int l = 0; l < len; l++)
			dot += u->q[s * len + l] * aq[s * len + l];
		isum += u->sc[s] * dot;
	}
	for (int j = 0; j < QK_K / 16; j++) {
		int bs = (int16_t)quant_u16_at(a + offsetof(struct block_q8_K, bsums) + 2 * j);
		summs += bs * u->mn[j * u->nsub / 16];
	}
	acc = fmaf((float)isum, u->d * ad, acc);
	if (u->has_min)
		acc = fmaf((float)-summs, u->dmin * ad, acc);
	return acc;
}

static float unit_q2_K(const uint8_t *w, const uint8_t *a, float acc)
{
	struct kunit u = {.nsub = 16, .has_min = 1};
	const uint8_t *sc = w + offsetof(struct block_q2_K, scales);
	const uint8_t *qs = w + offsetof(struct block_q2_K, qs);
	u.d = quant_fp16_at(w + offsetof(struct block_q2_K, d));
	u.dmin = quant_fp16_at(w + offsetof(struct block_q2_K, dmin));
	for (int s = 0; s < 16; s++) {
		u.sc[s] = sc[s] & 15;
		u.mn[s] = sc[s] >> 4;
		const uint8_t *q = qs + 32 * (s / 8) + 16 * (s % 2);
		int shift = 2 * ((s % 8) / 2);
		for (int l = 0; l < 16; l++)
			u.q[16 * s + l] = (int8_t)((q[l] >> shift) & 3);
	}
	return kunit_combine(&u, a, acc);
}

static float unit_q3_K(const uint8_t *w, const uint8_t *a, float acc)
{
	struct kunit u = {.nsub = 16};
	const uint8_t *hm = w + offsetof(struct block_q3_K, hmask);
	const uint8_t *qs = w + offsetof(struct block_q3_K, qs);
	const uint8_t *sc = w + offsetof(struct block_q3_K, scales);
	u.d = quant_fp16_at(w + offsetof(struct block_q3_K, d));
	for (int s = 0; s < 16; s++) {
		int lo = s < 8 ? sc[s] & 15 : sc[s - 8] >> 4;
		int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
		u.sc[s] = (lo | hi << 4) - 32;
		const uint8_t *q = qs + 32 * (s / 8) + 16 * (s % 2);
		const uint8_t *h = hm + 16 * (s % 2);
		int shift = 2 * ((s % 8) / 2);
		uint8_t bit = (uint8_t)(1u << (4 * (s / 8) + (s % 8) / 2));
		for (int l = 0; l < 16; l++)
			u.q[16 * s + l] = (int8_t)(((q[l] >> shift) & 3) - ((h[l] & bit) ? 0 : 4));
	}
	return kunit_combine(&u, a, acc);
}

static float unit_q4_K(const uint8_t *w, const uint8_t *a, float acc)
{
	struct kunit u = {.nsub = 8, .has_min = 1};
	const uint8_t *sc = w + offsetof(struct block_q4_K, scales);
	const uint8_t *qs = w + offsetof(struct block_q4_K, qs);
	u.d = quant_fp16_at(w + offsetof(struct block_q4_K, d));
	u.dmin = quant_fp16_at(w + offsetof(struct block_q4_K, dmin));
	for (int s = 0; s < 8; s++) {
		quant_scale_min_k4(s, sc, &u.sc[s], &u.mn[s]);
		const uint8_t *q = qs + 32 * (s / 2);
		int shift = 4 * (s % 2);
		for (int l = 0; l < 32; l++)
			u.q[32 * s + l] = (int8_t)((q[l] >> shift) & 15);
	}
	return kunit_combine(&u, a, acc);
}

static float unit_q5_K(const uint8_t *w, const uint8_t *a, float acc)
{
	struct kunit u = {.nsub = 8, .has_min = 1};
	const uint8_t *sc = w + offsetof(struct block_q5_K, scales);
	const uint8_t *qh = w + offsetof(struct block_q5_K, qh);
	const uint8_t *qs = w + offsetof(struct block_q5_K, qs);
	u.d = quant_fp16_at(w + offsetof(struct block_q5_K, d));
	u.dmin = quant_fp16_at(w + offsetof(struct block_q5_K, dmin));
	for (int s = 0; s < 8; s++) {
		quant_scale_min_k4(s, sc, &u.sc[s], &u.mn[s]);
		const uint8_t *q = qs + 32 * (s / 2);
		int shift = 4 * (s % 2);
		for (int l = 0; l < 32; l++)
			u.q[32 * s + l] =
			    (int8_t)(((q[l] >> shift) & 15) | ((qh[l] >> s) & 1) << 4);
	}
	return kunit_combine(&u, a, acc);
}

static float unit_q6_K(const uint8_t *w, const uint8_t *a, float acc)
{
	struct kunit u = {.nsub = 16};
	const uint8_t *ql = w + offsetof(struct block_q6_K, ql);
	const uint8_t *qh = w + offsetof(struct block_q6_K, qh);
	const uint8_t *sc = w + offsetof(struct block_q6_K, scales);
	u.d = quant_fp16_at(w + offsetof(struct block_q6_K, d));
	for (int h = 0; h < 2; h++)
		for (int k = 0; k < 4; k++)
			for (int s = 0; s < 2; s++) {
				u.sc[8 * h + 2 * k + s] = (int8_t)sc[8 * h + 2 * k + s];
				const uint8_t *lo = ql + 64 * h + 32 * (k % 2) + 16 * s;
				const uint8_t *hi = qh + 32 * h + 16 * s;
				int shift = 4 * (k / 2);
				int8_t *out = u.q + 128 * h + 32 * k + 16 * s;
				for (int l = 0; l < 16; l++)
					out[l] = (int8_t)((((lo[l] >> shift) & 15) |
					                   ((hi[l] >> (2 * k)) & 3) << 4) -
					                  32);
			}
	return kunit_combine(&u, a, acc);
}

struct dot_type {
	uint32_t type;
	size_t elems, wbytes, abytes;
	unit_fn unit;
};

static const struct dot_type dot_types[] = {
    {GGML_TYPE_Q8_0, 32, sizeof(struct block_q8_0), sizeof(struct block_q8_0), unit_q8_0},
    {GGML_TYPE_Q4_0, 32, sizeof(struct block_q4_0), sizeof(struct block_q8_0), unit_q4_0},
    {GGML_TYPE_Q5_0, 32, sizeof(struct block_q5_0), sizeof(struct block_q8_0), unit_q5_0},
    {GGML_TYPE_Q4_1, 32, sizeof(struct block_q4_1), sizeof(struct block_q8_1), unit_q4_1},
    {GGML_TYPE_Q5_1, 32, sizeof(struct block_q5_1), sizeof(struct block_q8_1), unit_q5_1},
    {GGML_TYPE_Q2_K, QK_K, sizeof(struct block_q2_K), sizeof(struct block_q8_K), unit_q2_K},
    {GGML_TYPE_Q3_K, QK_K, sizeof(struct block_q3_K), sizeof(struct block_q8_K), unit_q3_K},
    {GGML_TYPE_Q4_K, QK_K, sizeof(struct block_q4_K), sizeof(struct block_q8_K), unit_q4_K},
    {GGML_TYPE_Q5_K, QK_K, sizeof(struct block_q5_K), sizeof(struct block_q8_K), unit_q5_K},
    {GGML_TYPE_Q6_K, QK_K, sizeof(struct block_q6_K), sizeof(struct block_q8_K), unit_q6_K},
};

static const struct dot_type *dot_type_of(uint32_t type)
{
	for (size_t i = 0; i < sizeof dot_types / sizeof dot_types[0]; i++)
		if (dot_types[i].type == type)
			return &dot_types[i];
	return NULL;
}

/* The fixed reduction of the 16 lanes (the SIMD kernels' order). */
static inline float reduce16(const float *acc)
{
	float t8[8], t4[4], t2[2];
	for (int i = 0; i < 8; i++)
		t8[i] = acc[i] + acc[i + 8];
	for (int i = 0; i < 4; i++)
		t4[i] = t8[i] + t8[i + 4];
	for (int i = 0; i < 2; i++)
		t2[i] = t4[i] + t4[i + 2];
	return t2[0] + t2[1];
}

static void scalar_rows(const struct dot_type *dt, const uint8_t *W, size_t stride, size_t K,
                        const uint8_t *Xq, size_t xstride, size_t M, float *Y, size_t ldy,
                        size_t r0, size_t r1)
{
	size_t nu = K / dt->elems;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *w = W + r * stride;
		for (size_t m = 0; m < M; m++) {
			const uint8_t *a = Xq + m * xstride;
			float acc[LANES] = {0};
			for (size_t u = 0; u < nu; u++)
				acc[u % LANES] =
				    dt->unit(w + u * dt->wbytes, a + u * dt->abytes, acc[u % LANES]);
			Y[m * ldy + r] = reduce16(acc);
		}
	}
}

#include "quant-dot-simd.h"

int quant_dot_kernel_has_type(enum quant_kernel kernel, uint32_t type)
{
	switch (kernel) {
	case QUANT_KERNEL_SCALAR: return dot_type_of(type) != NULL;
#ifdef QDOT_HAVE_AVX2
	case QUANT_KERNEL_AVX2: return simd_avx2_fn(type) != NULL;
#endif
#ifdef QDOT_HAVE_AVX512
	case QUANT_KERNEL_AVX512: return simd_avx512_fn(type) != NULL;
#endif
	default: return 0;
	}
}

static int dot_kernel_available(enum quant_kernel kernel)
{
	switch (kernel) {
	case QUANT_KERNEL_AUTO:
	case QUANT_KERNEL_SCALAR: return 1;
#ifdef QDOT_HAVE_AVX2
	case QUANT_KERNEL_AVX2: return 1;
#endif
#ifdef QDOT_HAVE_AVX512
	case QUANT_KERNEL_AVX512: return 1;
#endif
	default: return 0;
	}
}

int quant_dot_rows_kernel(enum quant_kernel kernel, uint32_t type, const void *W,
                          size_t row_stride, size_t K, const void *Xq, size_t xq_row_bytes,
                          size_t M, float *Y, size_t ldy, size_t r0, size_t r1)
{
	const struct dot_type *dt = dot_type_of(type);
	if (!dt || !dot_kernel_available(kernel))
		return ITT_E_UNSUPPORTED;
	if (M == 0 || r0 > r1 || K % dt->elems != 0)
		return ITT_E_INVALID;
	if (r0 == r1)
		return 0;
	size_t rb = quant_row_bytes(type, K), ab = quant_dot_act_row_bytes(type, K);
	if ((r1 - r0 > 1 && row_stride < rb) || (M > 1 && xq_row_bytes < ab) || !W || !Xq || !Y ||
	    (M > 1 && ldy < r1))
		return ITT_E_INVALID;
	if (kernel == QUANT_KERNEL_AUTO) {
#if defined(QDOT_HAVE_AVX512)
		kernel = QUANT_KERNEL_AVX512;
#elif defined(QDOT_HAVE_AVX2)
		kernel = QUANT_KERNEL_AVX2;
#else
		kernel = QUANT_KERNEL_SCALAR;
#endif
	}
	simd_rows_fn fn = NULL;
#ifdef QDOT_HAVE_AVX512
	if (kernel == QUANT_KERNEL_AVX512)
		fn = simd_avx512_fn(type);
#endif
#ifdef QDOT_HAVE_AVX2
	if (kernel == QUANT_KERNEL_AVX2)
		fn = simd_avx2_fn(type);
#endif
	if (fn)
		fn(type, W, row_stride, K, Xq, xq_row_bytes, M, Y, ldy, r0, r1);
	else
		scalar_rows(dt, W, row_stride, K, Xq, xq_row_bytes, M, Y, ldy, r0, r1);
	return 0;
}

int quant_dot_rows(uint32_t type, const void *W, size_t row_stride, size_t K, const void *Xq,
                   size_t xq_row_bytes, size_t M, float *Y, size_t ldy, size_t r0, size_t r1)
{
	return quant_dot_rows_kernel(QUANT_KERNEL_AUTO, type, W, row_stride, K, Xq, xq_row_bytes,
	                             M, Y, ldy, r0, r1);
}
