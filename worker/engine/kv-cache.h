/* kv-cache: paged key/value storage for the layers a model instance holds,
 * and the prefix index that lets sequences with a common prompt prefix share
 * its blocks.
 *
 * Memory is a pool of fixed-size blocks; each block holds block_size
 * consecutive positions of one sequence for every local layer:
 *     k, v: [n_blocks][n_layers][block_size][kv_dim] of F32 or F16
 * A sequence owns a block table mapping position / block_size to a block.
 * Blocks carry reference counts so sequences share a prefix's blocks
 * (kv_seq_fork) and the prefix index keeps blocks alive after their
 * sequences end.  Copy on write: nobody writes into a block whose refcount
 * is above one; kv_seq_prepare copies such a block first.
 *
 * Prefix index.  A full block of a sequence is known by a key, a hash chain
 * over the tokens it holds: key(i) = H(key(i - 1), tokens of block i), with
 * a fixed seed for block 0.  An entry is a block (at most one entry per
 * block), its key, its parent entry (block i - 1 of the same chain) and its
 * tokens; a lookup walks the chain from block 0 and accepts an entry only if
 * the key, the parent and every token match, so a hash collision cannot
 * share the wrong block.  The index holds one reference on each entry's
 * block.  A block only the index references is "idle": kv_seq_prepare and
 * kv_seq_reserve evict idle blocks, least recently used first and children
 * before their parents, when the free list runs dry, so idle blocks count
 * as available (kv_cache_available).
 *
 * Invariants: refs[b] == 0 iff b is on the free list; an indexed block has
 * refs >= 1 and n_idle counts the indexed blocks with refs == 1; a
 * sequence's positions [0, n_pos) have storage (its table may hold blocks
 * beyond n_pos, allocated ahead by kv_seq_prepare); forward writes
 * positions in [n_pos_before, n_pos) of the rows it computes. */
#ifndef ITT_KV_CACHE_H
#define ITT_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Element type of the stored K and V rows. */
enum kv_type {
	KV_TYPE_F32 = 0,
	KV_TYPE_F16 = 1,
};

#define KV_NONE UINT32_MAX

/* Prefix index entry of one block (ent[] is indexed by block id). */
struct kv_entry {
	uint64_t key;     /* H(parent's key, this block's tokens) */
	uint32_t parent;  /* block of the previous entry of the chain, KV_NONE for block 0 */
	uint32_t n_child; /* entries whose parent this is */
	uint32_t hnext;   /* next entry in the same hash bucket */
	uint32_t newer;   /* LRU list: towards the most recently used */
	uint32_t older;   /* LRU list: towards the least recently used */
	bool indexed;
};

struct kv_stats {
	uint64_t lookups;    /* kv_prefix_match calls */
	uint64_t hits;       /* of them, those that shared at least one block */
	uint64_t hit_blocks; /* blocks shared by lookups */
	uint64_t inserted;   /* blocks entered into the index */
	uint64_t evicted;    /* idle blocks evicted from the index */
	uint64_t copied;     /* blocks copied on write */
};

struct kv_cache {
	enum kv_type type;
	uint32_t n_layers;   /* local layers */
	uint32_t kv_dim;     /* n_kv_heads * head_dim */
	uint32_t block_size; /* positions per block */
	uint32_t n_blocks;
	size_t elt;          /* bytes per element: 4 (F32) or 2 (F16) */
	void *k, *v;         /* [n_blocks][n_layers][block_size][kv_dim] of type */
	uint32_t *free_list; /* [n_blocks] stack of free block ids */
	uint32_t n_free;
	uint32_t *refs; /* [n_blocks] */

	/* prefix index */
	struct kv_entry *ent; /* [n_blocks] */
	int32_t *ent_tokens;  /* [n_blocks][block_size] tokens of each indexed block */
	uint32_t *buckets;    /* [n_buckets] first entry per hash bucket, KV_NONE */
	uint32_t n_buckets;   /* a power of two */
	uint32_t lru_newest, lru_oldest;
	uint32_t n_indexed; /* entries */
	uint32_t n_idle;    /* entries whose block only the index references */
	struct kv_stats stats;
};

struct kv_seq {
	uint32_t *blocks; /* [cap] block ids */
	uint32_t n_blocks;
	uint32_t cap;
	uint32_t n_pos; /* positions with storage (and, after forward, content) */
};

/* "f32" / "f16" <-> type; parse returns -1 for anything else. */
const char *kv_type_name(enum kv_type t);
int kv_type_parse(const char *name);
size_t kv_type_size(enum kv_type t);

/* Sizes the pool from a byte budget (at least one block). */
int kv_cache_init(struct kv_cache *kv, enum kv_type type, uint32_t n_layers, uint32_t kv_dim,
                  uint32_t block_size, size_t budget_bytes, struct itt_err *err);
void kv_cache_free(struct kv_cache *kv);
/* Bytes of one block (K and V) of the given type. */
size_t kv_block_bytes(enum kv_type type, uint32_t n_layers, uint32_t kv_dim, uint32_t block_size);
/* Bytes of one F32 block (the default type). */
size_t kv_cache_block_bytes(uint32_t n_layers, uint32_t kv_dim, uint32_t block_size);
/* Blocks a sequence can still get: free ones and idle ones (evictable). */
uint32_t kv_cache_available(const struct kv_cache *kv);

void kv_seq_init(struct kv_seq *s);
/* Ensures storage for positions [0, n_pos) and raises s->n_pos to n_pos;
 * ITT_E_FULL if the pool is out of blocks (the sequence keeps what it had). */
int kv_seq_reserve(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos, struct itt_err *err);
/* Makes positions [from, to) writable without changing s->n_pos: blocks up
 * to position `to` are allocated, and every block of the range that is
 * shared (refcount > 1) is replaced by a private copy.  ITT_E_FULL if the
 * pool runs out (what was done stays done; the sequence stays valid). */
int kv_seq_prepare(struct kv_cache *kv, struct kv_seq *s, uint32_t from, uint32_t to,
                   struct itt_err *err);
/* Blocks kv_seq_prepare(from, to) would take from the pool. */
uint32_t kv_seq_prepare_cost(const struct kv_cache *kv, const struct kv_seq *s, uint32_t from,
                             uint32_t to);
/* Drops positions >= n_pos, returning whole blocks past it to the pool
 * (also blocks allocated ahead).  Does nothing when n_pos >= s->n_pos. */
void kv_seq_truncate(struct kv_cache *kv, struct kv_seq *s, uint32_t n_pos);
/* Returns all blocks to the pool and frees the table. */
void kv_seq_free(struct kv_cache *kv, struct kv_seq *s);
/* dst (empty) shares src's blocks for positions [0, n_pos). */
int kv_seq_fork(struct kv_cache *kv, const struct kv_seq *src, struct kv_seq *dst, uint32_t n_pos,
                struct itt_err *err);

/* Chain keys of the first n_blocks full blocks of tokens (the caller makes
 * sure tokens holds n_blocks * block_size of them). */
void kv_prefix_keys(const struct kv_cache *kv, const int32_t *tokens, uint32_t n_blocks,
                    uint64_t *keys);
/* Forks into dst (empty) the longest run of indexed blocks that matches
 * tokens[0, max_pos), whole blocks only; returns the positions shared (a
 * multiple of block_size; 0 on a miss or when dst is not empty).  Counts a
 * lookup (and a hit). */
uint32_t kv_prefix_match(struct kv_cache *kv, const int32_t *tokens, uint32_t max_pos,
                         struct kv_seq *dst);
/* Like kv_prefix_match without forking or counting: the blocks a match
 * would share, and in *idle how many of them are idle now. */
uint32_t kv_prefix_peek(const struct kv_cache *kv, const int32_t *tokens, uint32_t max_pos,
                        uint32_t *idle);
/* Enters s's full blocks holding tokens[0, n) (n <= s->n_pos) into the
 * index, chain by chain from block 0; a block whose content is indexed
 * already (in another block) is skipped.  Returns the blocks added. */
uint32_t kv_prefix_insert(struct kv_cache *kv, const struct kv_seq *s, const int32_t *tokens,
                          uint32_t n);
/* Evicts up to n idle blocks (LRU, leaves first); returns how many. */
uint32_t kv_prefix_evict(struct kv_cache *kv, uint32_t n);
/* Forgets every entry (idle blocks return to the pool). */
void kv_prefix_clear(struct kv_cache *kv);

/* Element offset of (layer, pos) of a sequence in k / v. */
static inline size_t kv_offset(const struct kv_cache *kv, const struct kv_seq *s, uint32_t layer,
                               uint32_t pos)
{
	uint32_t b = s->blocks[pos / kv->block_size];
	return (((size_t)b * kv->n_layers + layer) * kv->block_size + pos % kv->block_size) *
	       kv->kv_dim;
}

/* n floats -> n elements of kv's type at element offset off of base (k or v). */
void kv_store(const struct kv_cache *kv, void *base, size_t off, const float *src, size_t n);
/* Half precision rows, vectorised with F16C where the build has it; the
 * rounding is quant_fp32_to_fp16's (nearest even). */
void kv_fp16_from_fp32(uint16_t *dst, const float *src, size_t n);
void kv_fp16_to_fp32(float *dst, const uint16_t *src, size_t n);

#endif
