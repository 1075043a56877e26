/* quant-dot-simd.h: the AVX2 and AVX-512 VNNI kernels of quant-dot.c,
 * included there (they share its static helpers and its contract).
 *
 * Both decode one weight row at a time (once per call, whatever M) into
 * unsigned byte codes plus per-unit scales (struct drow), then take it
 * against each activation row:
 *   legacy blocks: isum_b = sum u y - off * sum y (off 128 for Q8_0's
 *     signed codes under VNNI, 8 for Q4_0, 16 for Q5_0, 0 with a minimum);
 *     the per-block lane sums of 16 blocks (8 on AVX2) are transposed
 *     into one vector of block sums, one lane per block;
 *   K-quants: per unit, maddubs (codes x q8 -> int16 pairs) and madd with
 *     the sub-block scales, reduced to one exact int; Q6_K's offset 32 and
 *     the minimums go through the activation's bsums.
 * The integers are exact, so they equal the scalar kernel's; the fma
 * sequence per accumulator lane (lane = unit % 16) and the final tree are
 * the scalar kernel's too, which is why the results agree bit for bit.
 * Rows longer than QDOT_MAX_K values take the scalar kernel. */
typedef void (*simd_rows_fn)(uint32_t type, const uint8_t *W, size_t stride, size_t K,
                             const uint8_t *Xq, size_t xstride, size_t M, float *Y, size_t ldy,
                             size_t r0, size_t r1);

#if defined(QDOT_HAVE_AVX512) || defined(QDOT_HAVE_AVX2)

#define QDOT_MAX_K 16384

/* fp16 -> fp32 with F16C (both SIMD builds have it): the same values as
 * quant_fp16_to_fp32, without a call per block. */
static inline float h2f(const uint8_t *p)
{
	return _cvtsh_ss(quant_u16_at(p));
}
#define QDOT_MAX_U (QDOT_MAX_K / 32)
#define NO_SANITIZE_QD __attribute__((no_sanitize("address", "undefined")))

/* A decoded weight row.  u is zero beyond K up to the next 512 values, and
 * the per-unit arrays beyond the last unit up to the next 16. */
struct drow {
	_Alignas(64) uint8_t u[QDOT_MAX_K + 512];
	float dw[QDOT_MAX_U + 16];  /* legacy: block d; K-quants: super-block d */
	float mw[QDOT_MAX_U + 16];  /* legacy: block m; K-quants: dmin */
	int16_t scx[QDOT_MAX_K / 2]; /* K-quants: the scale of each pair of values */
	int16_t sc16[QDOT_MAX_K / 16]; /* K-quants: scale per 16 values times -offset (Q6_K) */
	int16_t mn16[QDOT_MAX_K / 16]; /* K-quants: minimum per 16 values */
	int off_shift;                 /* legacy: off = 1 << off_shift, 0 = none */
	int has_min;
	int signed_codes;              /* AVX2 Q8_0: u holds the signed codes */
};

/* Legacy blocks into codes; off as described above. */
static void decode_legacy(uint32_t type, const uint8_t *w, size_t nb, struct drow *d, int vnni)
{
	d->has_min = type == GGML_TYPE_Q4_1 || type == GGML_TYPE_Q5_1;
	d->signed_codes = 0;
	d->off_shift = 0;
	for (size_t b = 0; b < nb; b++) {
		uint8_t *u = d->u + 32 * b;
		switch (type) {
		case GGML_TYPE_Q8_0: {
			const uint8_t *qs = w + b * 34 + 2;
			d->dw[b] = h2f(w + b * 34);
			__m256i q = _mm256_loadu_si256((const __m256i *)qs);
			if (vnni)
				q = _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80));
			_mm256_store_si256((__m256i *)u, q);
			break;
		}
		case GGML_TYPE_Q4_0:
		case GGML_TYPE_Q4_1: {
			size_t bytes = type == GGML_TYPE_Q4_0 ? sizeof(struct block_q4_0)
			                                      : sizeof(struct block_q4_1);
			const uint8_t *blk = w + b * bytes;
			size_t qoff = type == GGML_TYPE_Q4_0 ? 2 : 4;
			d->dw[b] = h2f(blk);
			if (type == GGML_TYPE_Q4_1)
				d->mw[b] = h2f(blk + 2);
			/* byte j: value j (low nibble) and j + 16 (high) */
			__m128i x = _mm_loadu_si128((const __m128i *)(blk + qoff));
			__m128i m4 = _mm_set1_epi8(15);
			_mm_store_si128((__m128i *)u, _mm_and_si128(x, m4));
			_mm_store_si128((__m128i *)(u + 16), _mm_and_si128(_mm_srli_epi16(x, 4), m4));
			break;
		}
		case GGML_TYPE_Q5_0:
		case GGML_TYPE_Q5_1: {
			size_t bytes = type == GGML_TYPE_Q5_0 ? sizeof(struct block_q5_0)
			                                      : sizeof(struct block_q5_1);
			const uint8_t *blk = w + b * bytes;
			size_t hoff = type == GGML_TYPE_Q5_0 ? 2 : 4;
			d->dw[b] = h2f(blk);
			if (type == GGML_TYPE_Q5_1)
				d->mw[b] = h2f(blk + 2);
			uint32_t h = quant_u32_at(blk + hoff);
			const uint8_t *qs = blk + hoff + 4;
			for (int j = 0; j < 16; j++) {
				u[j] = (uint8_t)((qs[j] & 15) | ((h >> j) & 1) << 4);
				u[j + 16] = (uint8_t)((qs[j] >> 4) | ((h >> (j + 16)) & 1) << 4);
			}
			break;
		}
		}
	}
	switch (type) {
	case GGML_TYPE_Q8_0:
		d->off_shift = vnni ? 7 : 0;
		d->signed_codes = !vnni;
		break;
	case GGML_TYPE_Q4_0: d->off_shift = 3; break;
	case GGML_TYPE_Q5_0: d->off_shift = 4; break;
	default: break;
	}
	size_t pad = (nb + 15) / 16 * 16;
	memset(d->u + 32 * nb, 0, 32 * (pad - nb));
	for (size_t b = nb; b < pad; b++)
		d->dw[b] = d->mw[b] = 0.0f;
}

/* K-quant super-blocks: codes via the scalar unit decoders' layout rules,
 * the pair scales, and the per-16 offset and minimum factors. */
static void decode_k(uint32_t type, const uint8_t *w, size_t nu, struct drow *d)
{
	d->has_min = type != GGML_TYPE_Q6_K;
	for (size_t i = 0; i < nu; i++) {
		uint8_t *u = d->u + 256 * i;
		int16_t *scx = d->scx + 128 * i, *sc16 = d->sc16 + 16 * i, *mn16 = d->mn16 + 16 * i;
		if (type == GGML_TYPE_Q6_K) {
			const uint8_t *blk = w + i * sizeof(struct block_q6_K);
			const uint8_t *ql = blk + offsetof(struct block_q6_K, ql);
			const uint8_t *qh = blk + offsetof(struct block_q6_K, qh);
			const int8_t *sc = (const int8_t *)(blk + offsetof(struct block_q6_K, scales));
			d->dw[i] = h2f(blk + offsetof(struct block_q6_K, d));
			d->mw[i] = 0.0f;
			for (int h = 0; h < 2; h++)
				for (int l = 0; l < 32; l++) {
					const uint8_t *q = ql + 64 * h, *hh = qh + 32 * h;
					uint8_t *o = u + 128 * h;
					o[l] = (uint8_t)((q[l] & 15) | (hh[l] & 3) << 4);
					o[l + 32] = (uint8_t)((q[l + 32] & 15) | ((hh[l] >> 2) & 3) << 4);
					o[l + 64] = (uint8_t)((q[l] >> 4) | ((hh[l] >> 4) & 3) << 4);
					o[l + 96] = (uint8_t)((q[l + 32] >> 4) | ((hh[l] >> 6) & 3) << 4);
				}
			for (int s = 0; s < 16; s++) {
				for (int p = 0; p < 8; p++)
					scx[8 * s + p] = sc[s];
				sc16[s] = (int16_t)(-32 * sc[s]);
				mn16[s] = 0;
			}
		} else {
			size_t bytes = type == GGML_TYPE_Q4_K ? sizeof(struct block_q4_K)
			                                      : sizeof(struct block_q5_K);
			const uint8_t *blk = w + i * bytes;
			const uint8_t *scp = blk + 4;
			const uint8_t *qh = blk + offsetof(struct block_q5_K, qh);
			const uint8_t *qs = blk + (type == GGML_TYPE_Q4_K
			                               ? offsetof(struct block_q4_K, qs)
			                               : offsetof(struct block_q5_K, qs));
			d->dw[i] = h2f(blk);
			d->mw[i] = h2f(blk + 2);
			for (int s = 0; s < 8; s++) {
				int sc, mn;
				quant_scale_min_k4(s, scp, &sc, &mn);
				const uint8_t *q = qs + 32 * (s / 2);
				int shift = 4 * (s % 2);
				for (int l = 0; l < 32; l++) {
					int v = (q[l] >> shift) & 15;
					if (type == GGML_TYPE_Q5_K)
						v |= ((qh[l] >> s) & 1) << 4;
					u[32 * s + l] = (uint8_t)v;
				}
				for (int p = 0; p < 16; p++)
					scx[16 * s + p] = (int16_t)sc;
				sc16[2 * s] = sc16[2 * s + 1] = 0;
				mn16[2 * s] = mn16[2 * s + 1] = (int16_t)mn;
			}
		}
	}
	size_t pad = (nu + 15) / 16 * 16;
	for (size_t i = nu; i < pad; i++)
		d->dw[i] = d->mw[i] = 0.0f;
}

/* Per activation row, once per call: the blocks' d as float (legacy: fp16
 * d; K-quants: float d), s (Q8_1) and code sums (for the offsets), padded
 * with zeros to 16 blocks. */
#define PRE_SLOTS 2048
struct act_pre {
	_Alignas(64) int8_t q[PRE_SLOTS * 32]; /* legacy: the codes, contiguous */
	int32_t sy[PRE_SLOTS];
	float dx[PRE_SLOTS];
	float sx[PRE_SLOTS];
};

static void act_precompute(uint32_t atype, const uint8_t *a, size_t nb, size_t nbp,
                           struct act_pre *p, size_t base)
{
	size_t abytes = act_block_bytes(atype);
	for (size_t b = 0; b < nbp; b++) {
		int32_t *sy = p->sy + base + b;
		float *dx = p->dx + base + b, *sx = p->sx + base + b;
		if (b >= nb) {
			memset(p->q + 32 * (base + b), 0, 32);
			*sy = 0;
			*dx = *sx = 0.0f;
			continue;
		}
		const uint8_t *blk = a + b * abytes;
		if (atype == GGML_TYPE_Q8_K) {
			memcpy(dx, blk, sizeof *dx);
			*sx = 0.0f;
			*sy = 0;
			continue;
		}
		const int8_t *qs = (const int8_t *)(blk + abytes - 32);
		memcpy(p->q + 32 * (base + b), qs, 32);
		int sum = 0;
		for (int j = 0; j < 32; j++)
			sum += qs[j];
		*sy = sum;
		*dx = h2f(blk);
		*sx = atype == GGML_TYPE_Q8_1 ? h2f(blk + 2) : 0.0f;
	}
}

/* One decoded row and one set of activation data per thread, shared by
 * the kernels (about 130 KB of thread-local storage). */
static _Thread_local struct drow tls_drow;
static _Thread_local struct act_pre tls_pre;

static int is_legacy(uint32_t type)
{
	return type == GGML_TYPE_Q8_0 || type == GGML_TYPE_Q4_0 || type == GGML_TYPE_Q4_1 ||
	       type == GGML_TYPE_Q5_0 || type == GGML_TYPE_Q5_1;
}

static int simd_type(uint32_t type)
{
	return is_legacy(type) || type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q5_K ||
	       type == GGML_TYPE_Q6_K;
}

/* The units' exact sums of one K-quant (row, activation) pair -> Y. */
static inline float scalar_k_combine(const struct drow *d, size_t nu, const float *yd,
                                     const int32_t *isum, const int32_t *summs)
{
	float acc[LANES] = {0};
	for (size_t i = 0; i < nu; i++) {
		float ad = yd[i];
		acc[i % LANES] = fmaf((float)isum[i], d->dw[i] * ad, acc[i % LANES]);
		if (d->has_min)
			acc[i % LANES] = fmaf((float)-summs[i], d->mw[i] * ad, acc[i % LANES]);
	}
	return reduce16(acc);
}

typedef float (*legacy_dot_fn)(const struct drow *d, size_t nb, const int8_t *q,
                               const int32_t *sy, const float *dx, const float *sx);
typedef float (*legacy_direct_fn)(uint32_t type, const uint8_t *w, size_t nb, const int8_t *q,
                                  const int32_t *sy, const float *dx);
typedef float (*k_dot_fn)(const struct drow *d, size_t nu, const uint8_t *a, const float *yd);

/* The rows of both instruction sets: each weight row decoded once (vnni:
 * legacy codes offset for vpdpbusd), then taken against up to PRE_SLOTS /
 * nbp precomputed activation rows at a time.  direct (may be NULL) takes
 * small M straight from the row for the types it handles (direct_m: the
 * largest M per type, 0 = never).  Inlined into each kernel with its own
 * functions, so the calls are direct. */
static inline __attribute__((always_inline)) NO_SANITIZE_QD void
simd_rows_driver(uint32_t type, const uint8_t *W, size_t stride, size_t K, const uint8_t *Xq,
                 size_t xstride, size_t M, float *Y, size_t ldy, size_t r0, size_t r1, int vnni,
                 legacy_dot_fn ldot, k_dot_fn kdot, legacy_direct_fn direct, size_t direct_m)
{
	struct drow *const dp = &tls_drow;
	struct act_pre *const pp = &tls_pre;
	int legacy = is_legacy(type);
	if (K > QDOT_MAX_K) {
		scalar_rows(dot_type_of(type), W, stride, K, Xq, xstride, M, Y, ldy, r0, r1);
		return;
	}
	uint32_t atype = quant_dot_act_type(type);
	size_t nu = K / (legacy ? 32 : QK_K), nbp = (nu + 15) / 16 * 16;
	size_t mchunk = PRE_SLOTS / nbp;
	for (size_t m0 = 0; m0 < M; m0 += mchunk) {
		size_t mc = M - m0 < mchunk ? M - m0 : mchunk;
		for (size_t m = 0; m < mc; m++)
			act_precompute(atype, Xq + (m0 + m) * xstride, nu, nbp, pp, m * nbp);
		if (direct && mc <= direct_m) {
			for (size_t r = r0; r < r1; r++)
				for (size_t m = 0; m < mc; m++) {
					size_t o = m * nbp;
					Y[(m0 + m) * ldy + r] = direct(type, W + r * stride, nu,
					                               pp->q + 32 * o, pp->sy + o, pp->dx + o);
				}
			continue;
		}
		for (size_t r = r0; r < r1; r++) {
			if (legacy)
				decode_legacy(type, W + r * stride, nu, dp, vnni);
			else
				decode_k(type, W + r * stride, nu, dp);
			for (size_t m = 0; m < mc; m++) {
				const uint8_t *a = Xq + (m0 + m) * xstride;
				size_t o = m * nbp;
				Y[(m0 + m) * ldy + r] =
				    legacy ? ldot(dp, nu, pp->q + 32 * o, pp->sy + o, pp->dx + o,
				                  pp->sx + o)
				           : kdot(dp, nu, a, pp->dx + o);
			}
		}
	}
}

#endif

/* ---- AVX-512 (F, BW, VL, VNNI) ----------------------------------------- */
#ifdef QDOT_HAVE_AVX512

static inline float avx512_reduce16(__m512 acc)
{
	__m256 t8 = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
	__m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
	__m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
	return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

/* 16 blocks' lane sums (v[j]: blocks 2j, 2j+1 in its halves) -> one int
 * per block, in block order. */
static inline __m512i avx512_transpose_sum(const __m512i v[8])
{
	__m512i w[4], x[2];
	for (int k = 0; k < 4; k++)
		w[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
		                        _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
	for (int k = 0; k < 2; k++)
		x[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(w[2 * k], w[2 * k + 1]),
		                        _mm512_unpackhi_epi64(w[2 * k], w[2 * k + 1]));
	__m512i s = _mm512_add_epi32(_mm512_shuffle_i32x4(x[0], x[1], 0x88),
	                             _mm512_shuffle_i32x4(x[0], x[1], 0xdd));
	const __m512i idx =
	    _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
	return _mm512_permutexvar_epi32(idx, s);
}

static NO_SANITIZE_QD float avx512_legacy_dot(const struct drow *d, size_t nb, const int8_t *q,
                                              const int32_t *sy, const float *dx,
                                              const float *sx)
{
	__m512 acc = _mm512_setzero_ps();
	for (size_t g = 0; g < nb; g += 16) {
		size_t n = nb - g < 16 ? nb - g : 16;
		__m512i v[8];
		for (size_t j = 0; j < 8; j++) {
			size_t b = g + 2 * j;
			if (2 * j >= n) {
				v[j] = _mm512_setzero_si512();
				continue;
			}
			/* zero beyond the last block, in q and in u */
			__m512i y = _mm512_load_si512((const void *)(q + 32 * b));
			__m512i u = _mm512_load_si512((const void *)(d->u + 32 * b));
			v[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, y);
		}
		__m512i is = avx512_transpose_sum(v);
		if (d->off_shift)
			is = _mm512_sub_epi32(is, _mm512_slli_epi32(_mm512_loadu_si512(sy + g),
			                                            (unsigned)d->off_shift));
		__m512 dw = _mm512_loadu_ps(d->dw + g);
		acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, _mm512_loadu_ps(dx + g)),
		                      acc);
		if (d->has_min)
			acc = _mm512_fmadd_ps(_mm512_loadu_ps(d->mw + g), _mm512_loadu_ps(sx + g), acc);
	}
	return avx512_reduce16(acc);
}

/* Q4_0 and Q8_0 for one or two inputs: the codes unpacked in registers
 * from the weight row itself (the decode pass costs as much as the product
 * here); the same integers and fma sequence as avx512_legacy_dot. */
static NO_SANITIZE_QD float avx512_legacy_direct(uint32_t type, const uint8_t *w, size_t nb,
                                                 const int8_t *q, const int32_t *sy,
                                                 const float *dx)
{
	const int q8 = type == GGML_TYPE_Q8_0;
	const size_t wb = q8 ? sizeof(struct block_q8_0) : sizeof(struct block_q4_0);
	const unsigned shift = q8 ? 7 : 3;
	const __m512i shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
	const __m512i m4 = _mm512_set1_epi8(15), x80 = _mm512_set1_epi8((char)0x80);
	const __m512i widx = _mm512_mullo_epi32(
	    _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
	    _mm512_set1_epi32((int)wb));
	__m512 acc = _mm512_setzero_ps();
	for (size_t g = 0; g < nb; g += 16) {
		size_t n = nb - g < 16 ? nb - g : 16;
		__m512i v[8];
		for (size_t j = 0; j < 8; j++) {
			size_t b = g + 2 * j;
			if (2 * j >= n) {
				v[j] = _mm512_setzero_si512();
				continue;
			}
			int two = 2 * j + 1 < n;
			__m512i u;
			if (q8) {
				/* signed codes + 128: unsigned for vpdpbusd */
				__m256i w0 = _mm256_loadu_si256((const __m256i *)(w + b * wb + 2));
				__m256i w1 = two ? _mm256_loadu_si256(
				                       (const __m256i *)(w + (b + 1) * wb + 2))
				                 : _mm256_set1_epi8((char)0x80);
				u = _mm512_xor_si512(
				    _mm512_inserti64x4(_mm512_castsi256_si512(w0), w1, 1), x80);
			} else {
				__m128i x0 = _mm_loadu_si128((const __m128i *)(w + b * wb + 2));
				__m128i x1 = two ? _mm_loadu_si128((const __m128i *)(w + (b + 1) * wb + 2))
				                 : _mm_setzero_si128();
				/* [x0, x0, x1, x1] >> [0, 4, 0, 4] & 15: values 0-15,
				 * 16-31 of block b, then of block b + 1 */
				__m512i z = _mm512_inserti32x4(_mm512_castsi128_si512(x0), x0, 1);
				z = _mm512_inserti32x4(_mm512_inserti32x4(z, x1, 2), x1, 3);
				u = _mm512_and_si512(_mm512_srlv_epi64(z, shifts), m4);
			}
			/* q is zero past the last block */
			__m512i y = _mm512_load_si512((const void *)(q + 32 * b));
			v[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, y);
		}
		__m512i is = avx512_transpose_sum(v);
		is = _mm512_sub_epi32(is, _mm512_slli_epi32(_mm512_loadu_si512(sy + g), shift));
		__mmask16 mk = (__mmask16)((1u << n) - 1);
		__m512i dh = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mk, widx,
		                                         w + g * wb, 1);
		__m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dh));
		acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), _mm512_mul_ps(dw, _mm512_loadu_ps(dx + g)),
		                      acc);
	}
	return avx512_reduce16(acc);
}

static NO_SANITIZE_QD float avx512_k_dot(const struct drow *d, size_t nu, const uint8_t *a,
                                         const float *yd)
{
	int32_t isum[QDOT_MAX_K / 256 + 16], summs[QDOT_MAX_K / 256 + 16];
	for (size_t i = 0; i < nu; i++) {
		const uint8_t *blk = a + i * sizeof(struct block_q8_K);
		const uint8_t *y = blk + offsetof(struct block_q8_K, qs);
		__m512i acc = _mm512_setzero_si512();
		for (int c = 0; c < 4; c++) {
			__m512i u = _mm512_load_si512((const void *)(d->u + 256 * i + 64 * c));
			__m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512((const void *)(y + 64 * c)));
			__m512i sc = _mm512_loadu_si512((const void *)(d->scx + 128 * i + 32 * c));
			acc = _mm512_add_epi32(acc, _mm512_madd_epi16(p, sc));
		}
		__m256i bs = _mm256_loadu_si256(
		    (const __m256i *)(blk + offsetof(struct block_q8_K, bsums)));
		__m256i off = _mm256_madd_epi16(
		    bs, _mm256_loadu_si256((const __m256i *)(d->sc16 + 16 * i)));
		acc = _mm512_add_epi32(acc, _mm512_zextsi256_si512(off));
		isum[i] = _mm512_reduce_add_epi32(acc);
		if (d->has_min) {
			__m256i mn = _mm256_madd_epi16(
			    bs, _mm256_loadu_si256((const __m256i *)(d->mn16 + 16 * i)));
			__m128i m4 = _mm_add_epi32(_mm256_castsi256_si128(mn),
			                           _mm256_extracti128_si256(mn, 1));
			m4 = _mm_add_epi32(m4, _mm_unpackhi_epi64(m4, m4));
			m4 = _mm_add_epi32(m4, _mm_shuffle_epi32(m4, 1));
			summs[i] = _mm_cvtsi128_si32(m4);
		}
	}
	return scalar_k_combine(d, nu, yd, isum, summs);
}

static NO_SANITIZE_QD void avx512_rows(uint32_t type, const uint8_t *W, size_t stride, size_t K,
                                       const uint8_t *Xq, size_t xstride, size_t M, float *Y,
                                       size_t ldy, size_t r0, size_t r1)
{
	/* straight from the row: Q4_0 up to 2 inputs, Q8_0 for 1 */
	size_t direct_m = type == GGML_TYPE_Q4_0 ? 2 : type == GGML_TYPE_Q8_0 ? 1 : 0;
	simd_rows_driver(type, W, stride, K, Xq, xstride, M, Y, ldy, r0, r1, 1, avx512_legacy_dot,
	                 avx512_k_dot, avx512_legacy_direct, direct_m);
}

static simd_rows_fn simd_avx512_fn(uint32_t type)
{
	return simd_type(type) ? avx512_rows : NULL;
}

#endif /* QDOT_HAVE_AVX512 */

/* ---- AVX2 (+ FMA, F16C) ------------------------------------------------ */
#ifdef QDOT_HAVE_AVX2

static inline float avx2_reduce16(__m256 lo, __m256 hi)
{
	__m256 t8 = _mm256_add_ps(lo, hi);
	__m128 t4 = _mm_add_ps(_mm256_castps256_ps128(t8), _mm256_extractf128_ps(t8, 1));
	__m128 t2 = _mm_add_ps(t4, _mm_movehl_ps(t4, t4));
	return _mm_cvtss_f32(_mm_add_ss(t2, _mm_movehdup_ps(t2)));
}

static inline __m256i avx2_hsum_pairs(__m256i p)
{
	return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

/* 8 blocks' lane sums (v[j]: block j) -> one int per block, in order. */
static inline __m256i avx2_transpose_sum(const __m256i v[8])
{
	__m256i w[4], x[2];
	for (int k = 0; k < 4; k++)
		w[k] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * k], v[2 * k + 1]),
		                        _mm256_unpackhi_epi32(v[2 * k], v[2 * k + 1]));
	for (int k = 0; k < 2; k++)
		x[k] = _mm256_add_epi32(_mm256_unpacklo_epi64(w[2 * k], w[2 * k + 1]),
		                        _mm256_unpackhi_epi64(w[2 * k], w[2 * k + 1]));
	return _mm256_add_epi32(_mm256_permute2x128_si256(x[0], x[1], 0x20),
	                        _mm256_permute2x128_si256(x[0], x[1], 0x31));
}

static NO_SANITIZE_QD float avx2_legacy_dot(const struct drow *d, size_t nb, const int8_t *q,
                                            const int32_t *sy, const float *dx, const float *sx)
{
	__m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
	for (size_t g = 0; g < nb; g += 8) {
		size_t n = nb - g < 8 ? nb - g : 8;
		__m256i v[8];
		for (size_t j = 0; j < 8; j++) {
			if (j >= n) {
				v[j] = _mm256_setzero_si256();
				continue;
			}
			size_t b = g + j;
			__m256i y = _mm256_load_si256((const __m256i *)(q + 32 * b));
			__m256i u = _mm256_load_si256((const __m256i *)(d->u + 32 * b));
			__m256i p;
			if (d->signed_codes) /* |q| x sign(y, q): Q8_0's signed codes */
				p = _mm256_maddubs_epi16(_mm256_sign_epi8(u, u), _mm256_sign_epi8(y, u));
			else
				p = _mm256_maddubs_epi16(u, y);
			v[j] = avx2_hsum_pairs(p);
		}
		__m256i is = avx2_transpose_sum(v);
		if (d->off_shift)
			is = _mm256_sub_epi32(is, _mm256_slli_epi32(
			                              _mm256_loadu_si256((const __m256i *)(sy + g)),
			                              d->off_shift));
		__m256 *ac = &acc[(g / 8) % 2];
		*ac = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is),
		                      _mm256_mul_ps(_mm256_loadu_ps(d->dw + g), _mm256_loadu_ps(dx + g)),
		                      *ac);
		if (d->has_min)
			*ac = _mm256_fmadd_ps(_mm256_loadu_ps(d->mw + g), _mm256_loadu_ps(sx + g), *ac);
	}
	return avx2_reduce16(acc[0], acc[1]);
}

static inline int32_t avx2_hsum_i32(__m256i v)
{
	__m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	x = _mm_add_epi32(x, _mm_unpackhi_epi64(x, x));
	x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 1));
	return _mm_cvtsi128_si32(x);
}

static NO_SANITIZE_QD float avx2_k_dot(const struct drow *d, size_t nu, const uint8_t *a,
                                       const float *yd)
{
	int32_t isum[QDOT_MAX_K / 256 + 16], summs[QDOT_MAX_K / 256 + 16];
	for (size_t i = 0; i < nu; i++) {
		const uint8_t *blk = a + i * sizeof(struct block_q8_K);
		const uint8_t *y = blk + offsetof(struct block_q8_K, qs);
		__m256i acc = _mm256_setzero_si256();
		for (int c = 0; c < 8; c++) {
			__m256i u = _mm256_load_si256((const __m256i *)(d->u + 256 * i + 32 * c));
			__m256i p = _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)(y + 32 * c)));
			__m256i sc = _mm256_loadu_si256((const __m256i *)(d->scx + 128 * i + 16 * c));
			acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc));
		}
		__m256i bs = _mm256_loadu_si256(
		    (const __m256i *)(blk + offsetof(struct block_q8_K, bsums)));
		acc = _mm256_add_epi32(acc, _mm256_madd_epi16(bs, _mm256_loadu_si256((const __m256i *)(d->sc16 + 16 * i))));
		isum[i] = avx2_hsum_i32(acc);
		if (d->has_min)
			summs[i] = avx2_hsum_i32(_mm256_madd_epi16(
			    bs, _mm256_loadu_si256((const __m256i *)(d->mn16 + 16 * i))));
	}
	return scalar_k_combine(d, nu, yd, isum, summs);
}

static NO_SANITIZE_QD void avx2_rows(uint32_t type, const uint8_t *W, size_t stride, size_t K,
                                     const uint8_t *Xq, size_t xstride, size_t M, float *Y,
                                     size_t ldy, size_t r0, size_t r1)
{
	simd_rows_driver(type, W, stride, K, Xq, xstride, M, Y, ldy, r0, r1, 0, avx2_legacy_dot,
	                 avx2_k_dot, NULL, 0);
}

static simd_rows_fn simd_avx2_fn(uint32_t type)
{
	return simd_type(type) ? avx2_rows : NULL;
}

#endif /* QDOT_HAVE_AVX2 */
