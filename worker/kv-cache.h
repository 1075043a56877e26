/* kv-cache: paged key/value storage for the layers a model instance holds.
 *
 * Memory is a pool of fixed-size blocks; each block holds block_size
 * consecutive positions of one sequence for every local layer:
 *     k, v: [n_blocks][n_layers][block_size][kv_dim]
 * A sequence owns a block table mapping position / block_size to a block.
 * Blocks carry reference counts so sequences can share a prefix's blocks
 * (copy on write is the caller's decision: kv_seq_fork shares, and a
 * sequence must not write into a block whose refcount is above one).
 *
 * Invariant: a sequence's positions [0, n_pos) have storage; forward writes
 * positions in [n_pos_before, n_pos) of the rows it computes. */
#ifndef ITT_KV_CACHE_H
#define ITT_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct kv_cache {
	uint32_t n_layers;   /* local layers */
	uint32_t kv_dim;     /* n_kv_heads * head_dim */
	uint32_t block_size; /* positions per block */
	uint32_t n_blocks;
	float *k, *v;        /* [n_blocks][n_layers][block_size][kv_dim] */
	uint32_t *free_list; /* [n_blocks] stack of free block ids */
	uint32_t n_free;
	uint32_t *refs;      /* [n_blocks] */
};

struct kv_seq {
	uint32_t *blocks; /* [cap] block ids */
	uint32_t n_blocks;
	uint32_t cap;
	uint32_t n_pos; /* positions with storage (and, after forward, content) */
};

/* Sizes the pool from a byte budget (at least one block). */
int kv_cache_init(struct kv_cache *kv, uint32_t n_layers, uint32_t kv_dim, uint32_t block_size,
		  size_t budget_bytes, struct itt_err *err);
void kv_cache_free(struct kv_cache *kv);
size_t kv_cache_block_bytes(uint32_t n_layers, uint32_t kv_dim, uint32_t block_size);

void kv_seq_init(struct kv_seq *s);
/* Ensures storage for positions [0, n_pos); ITT_E_FULL if the pool is out
 * of blocks (the sequence keeps what it had). */
int kv_seq_reserve(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos, struct itt_err *err);
/* Drops positions >= n_pos, returning whole blocks past it to the pool. */
void kv_seq_truncate(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos);
/* Returns all blocks to the pool and frees the table. */
void kv_seq_free(struct kv_cache *kv, struct kv_seq *s);
/* dst (empty) shares src's blocks for positions [0, n_pos). */
int kv_seq_fork(struct kv_cache *kv, const struct kv_seq *src, struct kv_seq *dst, uint32_t n_pos,
		struct itt_err *err);

static inline size_t kv_offset(const struct kv_cache *kv, const struct kv_seq *s, uint32_t layer,
			       uint32_t pos)
{
	uint32_t b = s->blocks[pos / kv->block_size];
	return (((size_t)b * kv->n_layers + layer) * kv->block_size + pos % kv->block_size) *
	       kv->kv_dim;
}

#endif
