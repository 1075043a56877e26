/* kv-cache: the block pool and per-sequence block tables. */
#include "kv-cache.h"

#include <stdlib.h>
#include <string.h>

size_t kv_cache_block_bytes(uint32_t n_layers, uint32_t kv_dim, uint32_t block_size)
{
	return 2 * (size_t)n_layers * block_size * kv_dim * sizeof(float);
}

int kv_cache_init(struct kv_cache *kv, uint32_t n_layers, uint32_t kv_dim, uint32_t block_size,
		  size_t budget_bytes, struct itt_err *err)
{
	memset(kv, 0, sizeof *kv);
	if (n_layers == 0 || kv_dim == 0 || block_size == 0 || block_size > 4096)
		return itt_err_set(err, ITT_E_INVALID, "kv_cache_init: bad shape (%u layers, kv_dim %u, block %u)",
				   n_layers, kv_dim, block_size);
	size_t bb = kv_cache_block_bytes(n_layers, kv_dim, block_size);
	size_t n = budget_bytes / bb;
	if (n == 0)
		n = 1;
	if (n > UINT32_MAX / 2)
		n = UINT32_MAX / 2;
	kv->n_layers = n_layers;
	kv->kv_dim = kv_dim;
	kv->block_size = block_size;
	kv->n_blocks = (uint32_t)n;
	size_t floats = n * (bb / 2 / sizeof(float));
	kv->k = malloc(floats * sizeof(float));
	kv->v = malloc(floats * sizeof(float));
	kv->free_list = malloc(n * sizeof *kv->free_list);
	kv->refs = calloc(n, sizeof *kv->refs);
	if (!kv->k || !kv->v || !kv->free_list || !kv->refs) {
		kv_cache_free(kv);
		return itt_err_set(err, ITT_E_NOMEM, "kv_cache_init: cannot allocate %zu blocks of %zu bytes",
				   n, bb);
	}
	for (uint32_t i = 0; i < kv->n_blocks; i++)
		kv->free_list[i] = kv->n_blocks - 1 - i; /* block 0 is handed out first */
	kv->n_free = kv->n_blocks;
	return 0;
}

void kv_cache_free(struct kv_cache *kv)
{
	free(kv->k);
	free(kv->v);
	free(kv->free_list);
	free(kv->refs);
	memset(kv, 0, sizeof *kv);
}

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

int kv_seq_reserve(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos, struct itt_err *err)
{
	uint32_t need = (uint32_t)(((uint64_t)n_pos + kv->block_size - 1) / kv->block_size);
	if (need > s->n_blocks) {
		if (need - s->n_blocks > kv->n_free)
			return itt_err_set(err, ITT_E_FULL,
					   "kv cache full: %u more blocks needed, %u free of %u",
					   need - s->n_blocks, kv->n_free, kv->n_blocks);
		int rc = seq_grow(s, need, err);
		if (rc < 0)
			return rc;
		while (s->n_blocks < need) {
			uint32_t b = kv->free_list[--kv->n_free];
			kv->refs[b] = 1;
			s->blocks[s->n_blocks++] = b;
		}
	}
	if (n_pos > s->n_pos)
		s->n_pos = n_pos;
	return 0;
}

static void block_release(struct kv_cache *kv, uint32_t b)
{
	if (kv->refs[b] > 0 && --kv->refs[b] == 0)
		kv->free_list[kv->n_free++] = b;
}

void kv_seq_truncate(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos)
{
	if (n_pos >= s->n_pos)
		return;
	uint32_t keep = (n_pos + kv->block_size - 1) / kv->block_size;
	while (s->n_blocks > keep)
		block_release(kv, s->blocks[--s->n_blocks]);
	s->n_pos = n_pos;
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
		return itt_err_set(err, ITT_E_INVALID, "kv_seq_fork: %u positions, source has %u", n_pos,
				   src->n_pos);
	uint32_t nb = (n_pos + kv->block_size - 1) / kv->block_size;
	int rc = seq_grow(dst, nb, err);
	if (rc < 0)
		return rc;
	for (uint32_t i = 0; i < nb; i++) {
		dst->blocks[i] = src->blocks[i];
		kv->refs[src->blocks[i]]++;
	}
	dst->n_blocks = nb;
	dst->n_pos = n_pos;
	return 0;
}
