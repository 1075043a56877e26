/* kv-cache: the block pool, per-sequence block tables, copy on write and
 * the prefix index (see kv-cache.h for the layout and the invariants).
 *
 * Every change of a reference count goes through block_ref / block_release
 * so that n_idle (indexed blocks nobody but the index holds) stays exact;
 * block_alloc evicts idle blocks when the free list is empty. */
#include "kv-cache.h"

#include <stdlib.h>
#include <string.h>

#include "quant.h"

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define KV_F16C 1
#endif

/* ---- types and half precision rows ------------------------------------ */

const char *kv_type_name(enum kv_type t)
{
	return t == KV_TYPE_F16 ? "f16" : "f32";
}

int kv_type_parse(const char *name)
{
	if (name && !strcmp(name, "f32"))
		return KV_TYPE_F32;
	if (name && !strcmp(name, "f16"))
		return KV_TYPE_F16;
	return -1;
}

size_t kv_type_size(enum kv_type t)
{
	return t == KV_TYPE_F16 ? sizeof(uint16_t) : sizeof(float);
}

void kv_fp16_from_fp32(uint16_t *dst, const float *src, size_t n)
{
	size_t i = 0;
#ifdef KV_F16C
	for (; i + 8 <= n; i += 8)
		_mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
		                                                       _MM_FROUND_TO_NEAREST_INT));
#endif
	for (; i < n; i++)
		dst[i] = quant_fp32_to_fp16(src[i]);
}

void kv_fp16_to_fp32(float *dst, const uint16_t *src, size_t n)
{
	size_t i = 0;
#ifdef KV_F16C
	for (; i + 8 <= n; i += 8)
		_mm256_storeu_ps(dst + i,
		                 _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#endif
	for (; i < n; i++)
		dst[i] = quant_fp16_to_fp32(src[i]);
}

void kv_store(const struct kv_cache *kv, void *base, size_t off, const float *src, size_t n)
{
	if (kv->type == KV_TYPE_F16)
		kv_fp16_from_fp32((uint16_t *)base + off, src, n);
	else
		memcpy((float *)base + off, src, n * sizeof(float));
}

/* ---- the pool ----------------------------------------------------------- */

size_t kv_block_bytes(enum kv_type type, uint32_t n_layers, uint32_t kv_dim, uint32_t block_size)
{
	return 2 * (size_t)n_layers * block_size * kv_dim * kv_type_size(type);
}

size_t kv_cache_block_bytes(uint32_t n_layers, uint32_t kv_dim, uint32_t block_size)
{
	return kv_block_bytes(KV_TYPE_F32, n_layers, kv_dim, block_size);
}

int kv_cache_init(struct kv_cache *kv, enum kv_type type, uint32_t n_layers, uint32_t kv_dim,
                  uint32_t block_size, size_t budget_bytes, struct itt_err *err)
{
	memset(kv, 0, sizeof *kv);
	if (type != KV_TYPE_F32 && type != KV_TYPE_F16)
		return itt_err_set(err, ITT_E_INVALID, "kv_cache_init: unknown element type %d",
		                   (int)type);
	if (n_layers == 0 || kv_dim == 0 || block_size == 0 || block_size > 4096 ||
	    kv_dim > (1u << 20) || n_layers > 4096)
		return itt_err_set(err, ITT_E_INVALID,
		                   "kv_cache_init: bad shape (%u layers, kv_dim %u, block %u)",
		                   n_layers, kv_dim, block_size);
	size_t bb = kv_block_bytes(type, n_layers, kv_dim, block_size);
	size_t n = budget_bytes / bb;
	if (n == 0)
		n = 1;
	if (n > UINT32_MAX / 4)
		n = UINT32_MAX / 4;
	kv->type = type;
	kv->elt = kv_type_size(type);
	kv->n_layers = n_layers;
	kv->kv_dim = kv_dim;
	kv->block_size = block_size;
	kv->n_blocks = (uint32_t)n;
	kv->n_buckets = 16;
	while (kv->n_buckets < n)
		kv->n_buckets *= 2;
	kv->k = malloc(n * (bb / 2));
	kv->v = malloc(n * (bb / 2));
	kv->free_list = malloc(n * sizeof *kv->free_list);
	kv->refs = calloc(n, sizeof *kv->refs);
	kv->ent = calloc(n, sizeof *kv->ent);
	kv->ent_tokens = malloc(n * block_size * sizeof *kv->ent_tokens);
	kv->buckets = malloc((size_t)kv->n_buckets * sizeof *kv->buckets);
	if (!kv->k || !kv->v || !kv->free_list || !kv->refs || !kv->ent || !kv->ent_tokens ||
	    !kv->buckets) {
		kv_cache_free(kv);
		return itt_err_set(err, ITT_E_NOMEM,
		                   "kv_cache_init: cannot allocate %zu blocks of %zu bytes", n, bb);
	}
	for (uint32_t i = 0; i < kv->n_blocks; i++)
		kv->free_list[i] = kv->n_blocks - 1 - i; /* block 0 is handed out first */
	kv->n_free = kv->n_blocks;
	for (uint32_t i = 0; i < kv->n_buckets; i++)
		kv->buckets[i] = KV_NONE;
	kv->lru_newest = kv->lru_oldest = KV_NONE;
	return 0;
}

void kv_cache_free(struct kv_cache *kv)
{
	free(kv->k);
	free(kv->v);
	free(kv->free_list);
	free(kv->refs);
	free(kv->ent);
	free(kv->ent_tokens);
	free(kv->buckets);
	memset(kv, 0, sizeof *kv);
}

uint32_t kv_cache_available(const struct kv_cache *kv)
{
	return kv->n_free + kv->n_idle;
}

static void block_ref(struct kv_cache *kv, uint32_t b)
{
	if (kv->ent[b].indexed && kv->refs[b] == 1)
		kv->n_idle--;
	kv->refs[b]++;
}

static void block_release(struct kv_cache *kv, uint32_t b)
{
	if (kv->refs[b] == 0)
		return;
	if (--kv->refs[b] == 0)
		kv->free_list[kv->n_free++] = b;
	else if (kv->refs[b] == 1 && kv->ent[b].indexed)
		kv->n_idle++;
}

/* Makes at least n blocks free, evicting idle ones; false if it cannot. */
static bool pool_make_free(struct kv_cache *kv, uint32_t n)
{
	if (kv->n_free < n)
		kv_prefix_evict(kv, n - kv->n_free);
	return kv->n_free >= n;
}

/* A free block with refcount 1 (the caller made sure one is free). */
static uint32_t block_take(struct kv_cache *kv)
{
	uint32_t b = kv->free_list[--kv->n_free];
	kv->refs[b] = 1;
	return b;
}

static size_t block_elems(const struct kv_cache *kv)
{
	return (size_t)kv->n_layers * kv->block_size * kv->kv_dim;
}

/* ---- sequences ---------------------------------------------------------- */

void kv_seq_init(struct kv_seq *s)
{
	memset(s, 0, sizeof *s);
}

static int seq_grow(struct kv_seq *s, uint32_t need, struct itt_err *err)
{
	if (need <= s->cap)
		return 0;
	uint32_t cap = s->cap ? s->cap : 8;
	while (cap < need)
		cap *= 2;
	uint32_t *b = realloc(s->blocks, (size_t)cap * sizeof *b);
	if (!b)
		return itt_err_set(err, ITT_E_NOMEM, "kv_seq: out of memory for %u blocks", cap);
	s->blocks = b;
	s->cap = cap;
	return 0;
}

static uint32_t blocks_for(const struct kv_cache *kv, uint32_t n_pos)
{
	return (uint32_t)(((uint64_t)n_pos + kv->block_size - 1) / kv->block_size);
}

/* Allocates the table's blocks up to position n_pos. */
static int seq_extend(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos, struct itt_err *err)
{
	uint32_t need = blocks_for(kv, n_pos);
	if (need <= s->n_blocks)
		return 0;
	uint32_t more = need - s->n_blocks;
	if (more > kv_cache_available(kv) || !pool_make_free(kv, more))
		return itt_err_set(err, ITT_E_FULL,
		                   "kv cache full: %u more blocks needed, %u free (%u idle) of %u",
		                   more, kv->n_free, kv->n_idle, kv->n_blocks);
	int rc = seq_grow(s, need, err);
	if (rc < 0)
		return rc;
	while (s->n_blocks < need)
		s->blocks[s->n_blocks++] = block_take(kv);
	return 0;
}

int kv_seq_reserve(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos, struct itt_err *err)
{
	int rc = seq_extend(kv, s, n_pos, err);
	if (rc < 0)
		return rc;
	if (n_pos > s->n_pos)
		s->n_pos = n_pos;
	return 0;
}

uint32_t kv_seq_prepare_cost(const struct kv_cache *kv, const struct kv_seq *s, uint32_t from,
                             uint32_t to)
{
	uint32_t need = blocks_for(kv, to), cost = need > s->n_blocks ? need - s->n_blocks : 0;
	uint32_t end = need < s->n_blocks ? need : s->n_blocks;
	for (uint32_t i = from / kv->block_size; from < to && i < end; i++)
		cost += kv->refs[s->blocks[i]] > 1;
	return cost;
}

int kv_seq_prepare(struct kv_cache *kv, struct kv_seq *s, uint32_t from, uint32_t to,
                   struct itt_err *err)
{
	if (kv_seq_prepare_cost(kv, s, from, to) > kv_cache_available(kv))
		return itt_err_set(err, ITT_E_FULL,
		                   "kv cache full: positions [%u, %u) need %u blocks, %u free "
		                   "(%u idle) of %u",
		                   from, to, kv_seq_prepare_cost(kv, s, from, to), kv->n_free,
		                   kv->n_idle, kv->n_blocks);
	uint32_t end = blocks_for(kv, to);
	if (end > s->n_blocks)
		end = s->n_blocks;
	/* Copy on write: shared blocks of the range become private copies. */
	for (uint32_t i = from / kv->block_size; from < to && i < end; i++) {
		uint32_t b = s->blocks[i];
		if (kv->refs[b] <= 1)
			continue;
		if (!pool_make_free(kv, 1))
			return itt_err_set(err, ITT_E_FULL,
			                   "kv cache full: no block to copy block %u into", b);
		uint32_t c = block_take(kv);
		size_t off = (size_t)c * block_elems(kv) * kv->elt;
		size_t src = (size_t)b * block_elems(kv) * kv->elt;
		memcpy((char *)kv->k + off, (char *)kv->k + src, block_elems(kv) * kv->elt);
		memcpy((char *)kv->v + off, (char *)kv->v + src, block_elems(kv) * kv->elt);
		s->blocks[i] = c;
		block_release(kv, b);
		kv->stats.copied++;
	}
	return seq_extend(kv, s, to, err);
}

void kv_seq_truncate(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos)
{
	if (n_pos < s->n_pos)
		s->n_pos = n_pos;
	uint32_t keep = blocks_for(kv, s->n_pos);
	while (s->n_blocks > keep)
		block_release(kv, s->blocks[--s->n_blocks]);
}

void kv_seq_free(struct kv_cache *kv, struct kv_seq *s)
{
	while (s->n_blocks > 0)
		block_release(kv, s->blocks[--s->n_blocks]);
	free(s->blocks);
	kv_seq_init(s);
}

int kv_seq_fork(struct kv_cache *kv, const struct kv_seq *src, struct kv_seq *dst, uint32_t n_pos,
                struct itt_err *err)
{
	if (n_pos > src->n_pos)
		return itt_err_set(err, ITT_E_INVALID, "kv_seq_fork: %u positions, source has %u",
		                   n_pos, src->n_pos);
	if (dst->n_blocks)
		return itt_err_set(err, ITT_E_INVALID, "kv_seq_fork: the destination is not empty");
	uint32_t nb = blocks_for(kv, n_pos);
	int rc = seq_grow(dst, nb, err);
	if (rc < 0)
		return rc;
	for (uint32_t i = 0; i < nb; i++) {
		dst->blocks[i] = src->blocks[i];
		block_ref(kv, src->blocks[i]);
	}
	dst->n_blocks = nb;
	dst->n_pos = n_pos;
	return 0;
}

/* ---- the prefix index --------------------------------------------------- */

#define KV_ROOT_KEY 0x6b762d7072656678ULL

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* FNV-1a over the token ids, seeded by the parent's key, then mixed. */
static uint64_t block_key(uint64_t parent_key, const int32_t *t, uint32_t n)
{
	uint64_t h = parent_key ^ 0xcbf29ce484222325ULL;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t u = (uint32_t)t[i];
		for (int byte = 0; byte < 4; byte++, u >>= 8)
			h = (h ^ (u & 0xff)) * 0x100000001b3ULL;
	}
	return mix64(h);
}

void kv_prefix_keys(const struct kv_cache *kv, const int32_t *tokens, uint32_t n_blocks,
                    uint64_t *keys)
{
	uint64_t key = KV_ROOT_KEY;
	for (uint32_t i = 0; i < n_blocks; i++)
		keys[i] = key = block_key(key, tokens + (size_t)i * kv->block_size, kv->block_size);
}

/* The entry with this key, parent and tokens, or KV_NONE. */
static uint32_t entry_find(const struct kv_cache *kv, uint64_t key, uint32_t parent,
                           const int32_t *tokens)
{
	size_t bs = kv->block_size;
	for (uint32_t e = kv->buckets[key & (kv->n_buckets - 1)]; e != KV_NONE;
	     e = kv->ent[e].hnext)
		if (kv->ent[e].key == key && kv->ent[e].parent == parent &&
		    !memcmp(kv->ent_tokens + e * bs, tokens, bs * sizeof *tokens))
			return e;
	return KV_NONE;
}

static void lru_unlink(struct kv_cache *kv, uint32_t e)
{
	struct kv_entry *x = &kv->ent[e];
	if (x->newer != KV_NONE)
		kv->ent[x->newer].older = x->older;
	else
		kv->lru_newest = x->older;
	if (x->older != KV_NONE)
		kv->ent[x->older].newer = x->newer;
	else
		kv->lru_oldest = x->newer;
	x->newer = x->older = KV_NONE;
}

static void lru_push_newest(struct kv_cache *kv, uint32_t e)
{
	struct kv_entry *x = &kv->ent[e];
	x->older = kv->lru_newest;
	x->newer = KV_NONE;
	if (kv->lru_newest != KV_NONE)
		kv->ent[kv->lru_newest].newer = e;
	kv->lru_newest = e;
	if (kv->lru_oldest == KV_NONE)
		kv->lru_oldest = e;
}

/* Marks a chain used, from its last entry back to block 0, so that parents
 * end up more recently used than their children (eviction then finds
 * leaves first). */
static void lru_touch_chain(struct kv_cache *kv, uint32_t last)
{
	for (uint32_t e = last; e != KV_NONE; e = kv->ent[e].parent) {
		lru_unlink(kv, e);
		lru_push_newest(kv, e);
	}
}

/* Walks the chain of tokens[0, max_pos); fills chain[] (when not NULL)
 * with the matching entries and returns their count. */
static uint32_t prefix_walk(const struct kv_cache *kv, const int32_t *tokens, uint32_t max_pos,
                            uint32_t *idle, struct kv_seq *fork, struct itt_err *err)
{
	uint32_t nb = max_pos / kv->block_size, parent = KV_NONE, i;
	uint64_t key = KV_ROOT_KEY;
	if (idle)
		*idle = 0;
	for (i = 0; i < nb; i++) {
		const int32_t *t = tokens + (size_t)i * kv->block_size;
		key = block_key(key, t, kv->block_size);
		uint32_t e = entry_find(kv, key, parent, t);
		if (e == KV_NONE)
			break;
		if (idle && kv->refs[e] == 1)
			(*idle)++;
		if (fork) {
			if (seq_grow(fork, i + 1, err) < 0)
				break;
			fork->blocks[i] = e;
		}
		parent = e;
	}
	return i;
}

uint32_t kv_prefix_peek(const struct kv_cache *kv, const int32_t *tokens, uint32_t max_pos,
                        uint32_t *idle)
{
	return prefix_walk(kv, tokens, max_pos, idle, NULL, NULL);
}

uint32_t kv_prefix_match(struct kv_cache *kv, const int32_t *tokens, uint32_t max_pos,
                         struct kv_seq *dst)
{
	struct itt_err err = {0};
	if (dst->n_blocks || dst->n_pos)
		return 0;
	kv->stats.lookups++;
	uint32_t n = prefix_walk(kv, tokens, max_pos, NULL, dst, &err);
	for (uint32_t i = 0; i < n; i++)
		block_ref(kv, dst->blocks[i]);
	dst->n_blocks = n;
	dst->n_pos = n * kv->block_size;
	if (n) {
		lru_touch_chain(kv, dst->blocks[n - 1]);
		kv->stats.hits++;
		kv->stats.hit_blocks += n;
	}
	return n * kv->block_size;
}

uint32_t kv_prefix_insert(struct kv_cache *kv, const struct kv_seq *s, const int32_t *tokens,
                          uint32_t n)
{
	uint32_t bs = kv->block_size, nb = (n < s->n_pos ? n : s->n_pos) / bs;
	uint32_t parent = KV_NONE, added = 0;
	uint64_t key = KV_ROOT_KEY;
	if (nb > s->n_blocks)
		nb = s->n_blocks;
	for (uint32_t i = 0; i < nb; i++) {
		const int32_t *t = tokens + (size_t)i * bs;
		key = block_key(key, t, bs);
		uint32_t e = entry_find(kv, key, parent, t);
		if (e == KV_NONE) {
			uint32_t b = s->blocks[i];
			if (kv->ent[b].indexed || kv->refs[b] == 0)
				break; /* indexed under another chain: leave it */
			struct kv_entry *x = &kv->ent[b];
			uint32_t bucket = (uint32_t)(key & (kv->n_buckets - 1));
			x->key = key;
			x->parent = parent;
			x->n_child = 0;
			x->hnext = kv->buckets[bucket];
			x->newer = x->older = KV_NONE;
			kv->buckets[bucket] = b;
			memcpy(kv->ent_tokens + (size_t)b * bs, t, bs * sizeof *t);
			if (parent != KV_NONE)
				kv->ent[parent].n_child++;
			kv->refs[b]++; /* the index's reference; s holds one, so not idle */
			x->indexed = true;
			lru_push_newest(kv, b);
			kv->n_indexed++;
			kv->stats.inserted++;
			added++;
			e = b;
		}
		parent = e;
	}
	if (parent != KV_NONE)
		lru_touch_chain(kv, parent);
	return added;
}

/* Removes an idle leaf entry and frees its block. */
static void entry_evict(struct kv_cache *kv, uint32_t e)
{
	struct kv_entry *x = &kv->ent[e];
	uint32_t *link = &kv->buckets[x->key & (kv->n_buckets - 1)];
	while (*link != e)
		link = &kv->ent[*link].hnext;
	*link = x->hnext;
	lru_unlink(kv, e);
	if (x->parent != KV_NONE)
		kv->ent[x->parent].n_child--;
	x->indexed = false;
	kv->n_indexed--;
	kv->n_idle--;
	kv->refs[e] = 0;
	kv->free_list[kv->n_free++] = e;
	kv->stats.evicted++;
}

uint32_t kv_prefix_evict(struct kv_cache *kv, uint32_t n)
{
	uint32_t done = 0;
	/* Oldest first; an eviction may turn a (usually newer) parent into a
	 * leaf, which the same pass meets later; repeat while passes help. */
	for (bool progress = true; done < n && progress;) {
		progress = false;
		for (uint32_t e = kv->lru_oldest; e != KV_NONE && done < n;) {
			uint32_t next = kv->ent[e].newer;
			if (kv->refs[e] == 1 && kv->ent[e].n_child == 0) {
				entry_evict(kv, e);
				done++;
				progress = true;
			}
			e = next;
		}
	}
	return done;
}

void kv_prefix_clear(struct kv_cache *kv)
{
	for (uint32_t b = 0; b < kv->n_blocks; b++) {
		if (!kv->ent[b].indexed)
			continue;
		kv->ent[b].indexed = false;
		if (--kv->refs[b] == 0)
			kv->free_list[kv->n_free++] = b;
	}
	for (uint32_t i = 0; i < kv->n_buckets; i++)
		kv->buckets[i] = KV_NONE;
	kv->lru_newest = kv->lru_oldest = KV_NONE;
	kv->n_indexed = 0;
	kv->n_idle = 0;
}
