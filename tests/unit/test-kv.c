/* test-kv: the paged KV cache without a model: pool accounting, forks and
 * reference counts, truncation, copy on write, F16 rows, and the prefix
 * index (hits, misses, token verification behind the hash, LRU eviction of
 * idle blocks, leaves before parents). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kv-cache.h"
#include "quant.h"

#define LAYERS 2
#define KV_DIM 8
#define BS     16

static void init_pool(struct kv_cache *kv, enum kv_type type, uint32_t n_blocks)
{
	struct itt_err err = {0};
	size_t bb = kv_block_bytes(type, LAYERS, KV_DIM, BS);
	assert_int_equal(kv_cache_init(kv, type, LAYERS, KV_DIM, BS, n_blocks * bb, &err), 0);
	assert_int_equal(kv->n_blocks, n_blocks);
}

/* Every block is free, or referenced by exactly the holders counted. */
static void check_accounting(const struct kv_cache *kv)
{
	uint32_t free_refs = 0, idle = 0, indexed = 0;
	for (uint32_t b = 0; b < kv->n_blocks; b++) {
		free_refs += kv->refs[b] == 0;
		indexed += kv->ent[b].indexed;
		idle += kv->ent[b].indexed && kv->refs[b] == 1;
	}
	assert_int_equal(free_refs, kv->n_free);
	assert_int_equal(idle, kv->n_idle);
	assert_int_equal(indexed, kv->n_indexed);
	assert_int_equal(kv_cache_available(kv), kv->n_free + kv->n_idle);
}

/* Writes a recognisable float at every (layer, pos, j) of s, F32 pools. */
static void fill(struct kv_cache *kv, struct kv_seq *s, uint32_t from, uint32_t to, float tag)
{
	for (uint32_t l = 0; l < LAYERS; l++)
		for (uint32_t p = from; p < to; p++)
			for (uint32_t j = 0; j < KV_DIM; j++) {
				float x = tag + (float)(l * 10000 + p * 10 + j);
				((float *)kv->k)[kv_offset(kv, s, l, p) + j] = x;
				((float *)kv->v)[kv_offset(kv, s, l, p) + j] = -x;
			}
}

static bool holds(struct kv_cache *kv, struct kv_seq *s, uint32_t from, uint32_t to, float tag)
{
	for (uint32_t l = 0; l < LAYERS; l++)
		for (uint32_t p = from; p < to; p++)
			for (uint32_t j = 0; j < KV_DIM; j++) {
				float x = tag + (float)(l * 10000 + p * 10 + j);
				if (((float *)kv->k)[kv_offset(kv, s, l, p) + j] != x ||
				    ((float *)kv->v)[kv_offset(kv, s, l, p) + j] != -x)
					return false;
			}
	return true;
}

static void pool_accounting(void **state)
{
	struct kv_cache kv;
	struct itt_err err = {0};
	init_pool(&kv, KV_TYPE_F32, 4);
	/* F16 halves the block: the same budget holds twice the blocks */
	struct kv_cache h;
	size_t bb = kv_block_bytes(KV_TYPE_F32, LAYERS, KV_DIM, BS);
	assert_int_equal(kv_block_bytes(KV_TYPE_F16, LAYERS, KV_DIM, BS) * 2, bb);
	assert_int_equal(kv_cache_block_bytes(LAYERS, KV_DIM, BS), bb);
	assert_int_equal(kv_cache_init(&h, KV_TYPE_F16, LAYERS, KV_DIM, BS, 4 * bb, &err), 0);
	assert_int_equal(h.n_blocks, 8);
	kv_cache_free(&h);
	assert_int_equal(kv_cache_init(&h, KV_TYPE_F32, LAYERS, KV_DIM, 0, bb, &err),
	                 ITT_E_INVALID);
	assert_int_equal(kv_cache_init(&h, (enum kv_type)7, LAYERS, KV_DIM, BS, bb, &err),
	                 ITT_E_INVALID);
	assert_int_equal(kv_type_parse("f16"), KV_TYPE_F16);
	assert_int_equal(kv_type_parse("f32"), KV_TYPE_F32);
	assert_int_equal(kv_type_parse("q8"), -1);
	assert_int_equal(kv_type_parse(NULL), -1);

	struct kv_seq a, b;
	kv_seq_init(&a);
	kv_seq_init(&b);
	assert_int_equal(kv_seq_reserve(&kv, &a, 17, &err), 0); /* 2 blocks */
	assert_int_equal(a.n_blocks, 2);
	assert_int_equal(a.n_pos, 17);
	assert_int_equal(kv.n_free, 2);
	assert_int_equal(kv_seq_reserve(&kv, &b, 48, &err), ITT_E_FULL); /* 3 > 2 */
	assert_int_equal(b.n_blocks, 0);
	assert_int_equal(b.n_pos, 0);
	assert_int_equal(kv.n_free, 2);
	assert_int_equal(kv_seq_reserve(&kv, &b, 32, &err), 0);
	assert_int_equal(kv.n_free, 0);
	/* reserving what it has takes nothing */
	assert_int_equal(kv_seq_reserve(&kv, &a, 30, &err), 0);
	assert_int_equal(a.n_pos, 30);
	check_accounting(&kv);
	kv_seq_free(&kv, &a);
	assert_int_equal(kv.n_free, 2);
	assert_null(a.blocks);
	kv_seq_free(&kv, &b);
	assert_int_equal(kv.n_free, 4);
	check_accounting(&kv);
	kv_cache_free(&kv);
}

static void prepare_allocates_ahead_without_moving_n_pos(void **state)
{
	struct kv_cache kv;
	struct itt_err err = {0};
	init_pool(&kv, KV_TYPE_F32, 4);
	struct kv_seq a;
	kv_seq_init(&a);
	assert_int_equal(kv_seq_prepare_cost(&kv, &a, 0, 40), 3);
	assert_int_equal(kv_seq_prepare(&kv, &a, 0, 40, &err), 0);
	assert_int_equal(a.n_blocks, 3);
	assert_int_equal(a.n_pos, 0);
	assert_int_equal(kv_seq_prepare_cost(&kv, &a, 0, 40), 0);
	assert_int_equal(kv_seq_prepare(&kv, &a, 40, 80, &err), ITT_E_FULL); /* 2 more, 1 free */
	assert_int_equal(a.n_blocks, 3);
	/* truncation returns blocks given ahead */
	kv_seq_truncate(&kv, &a, 0);
	assert_int_equal(a.n_blocks, 0);
	assert_int_equal(kv.n_free, 4);
	kv_seq_free(&kv, &a);
	kv_cache_free(&kv);
}

static void fork_shares_blocks_and_counts_references(void **state)
{
	struct kv_cache kv;
	struct itt_err err = {0};
	init_pool(&kv, KV_TYPE_F32, 6);
	struct kv_seq a, b, c;
	kv_seq_init(&a);
	kv_seq_init(&b);
	kv_seq_init(&c);
	assert_int_equal(kv_seq_reserve(&kv, &a, 40, &err), 0);
	fill(&kv, &a, 0, 40, 0.5f);
	assert_int_equal(kv_seq_fork(&kv, &a, &b, 40, &err), 0);
	assert_int_equal(kv_seq_fork(&kv, &a, &c, 16, &err), 0);
	assert_int_equal(kv_seq_fork(&kv, &a, &c, 16, &err), ITT_E_INVALID); /* not empty */
	assert_int_equal(kv_seq_fork(&kv, &b, &c, 41, &err), ITT_E_INVALID);
	assert_int_equal(kv.n_free, 3);
	assert_int_equal(kv.refs[a.blocks[0]], 3);
	assert_int_equal(kv.refs[a.blocks[1]], 2);
	assert_int_equal(kv.refs[a.blocks[2]], 2);
	assert_int_equal(c.n_blocks, 1);
	assert_true(holds(&kv, &b, 0, 40, 0.5f));
	check_accounting(&kv);
	/* freeing the source keeps the shared blocks alive */
	kv_seq_free(&kv, &a);
	assert_int_equal(kv.n_free, 3);
	assert_true(holds(&kv, &b, 0, 40, 0.5f));
	/* truncating a sharer drops only its own references */
	kv_seq_truncate(&kv, &b, 17);
	assert_int_equal(b.n_blocks, 2);
	assert_int_equal(b.n_pos, 17);
	assert_int_equal(kv.n_free, 4);
	kv_seq_truncate(&kv, &b, 30); /* longer than it has: nothing changes */
	assert_int_equal(b.n_pos, 17);
	assert_int_equal(b.n_blocks, 2);
	kv_seq_truncate(&kv, &b, 16);
	assert_int_equal(b.n_blocks, 1);
	assert_int_equal(kv.refs[b.blocks[0]], 2);
	kv_seq_truncate(&kv, &b, 0);
	assert_int_equal(b.n_blocks, 0);
	assert_int_equal(kv.refs[c.blocks[0]], 1);
	kv_seq_free(&kv, &b);
	kv_seq_free(&kv, &c);
	assert_int_equal(kv.n_free, 6);
	check_accounting(&kv);
	kv_cache_free(&kv);
}

static void copy_on_write_never_touches_a_shared_block(void **state)
{
	struct kv_cache kv;
	struct itt_err err = {0};
	init_pool(&kv, KV_TYPE_F32, 5);
	struct kv_seq a, b;
	kv_seq_init(&a);
	kv_seq_init(&b);
	assert_int_equal(kv_seq_reserve(&kv, &a, 20, &err), 0);
	fill(&kv, &a, 0, 20, 0.25f);
	/* b shares a's full block 0 and its partial block 1 (positions 16..19) */
	assert_int_equal(kv_seq_fork(&kv, &a, &b, 20, &err), 0);
	uint32_t shared1 = a.blocks[1];
	assert_int_equal(kv_seq_prepare_cost(&kv, &b, 20, 21), 1);
	assert_int_equal(kv_seq_prepare_cost(&kv, &b, 20, 33), 2); /* copy + one new */
	assert_int_equal(kv_seq_prepare_cost(&kv, &b, 0, 21), 2);  /* both shared */
	assert_int_equal(kv_seq_prepare(&kv, &b, 20, 21, &err), 0);
	assert_int_not_equal(b.blocks[1], shared1);
	assert_int_equal(b.blocks[0], a.blocks[0]);
	assert_int_equal(kv.refs[shared1], 1);
	assert_int_equal(kv.refs[b.blocks[1]], 1);
	assert_int_equal(kv.refs[a.blocks[0]], 2);
	assert_int_equal(kv.stats.copied, 1);
	assert_int_equal(b.n_pos, 20);
	/* the copy holds the shared content; writing it leaves a's intact */
	assert_true(holds(&kv, &b, 0, 20, 0.25f));
	kv_seq_reserve(&kv, &b, 21, &err);
	fill(&kv, &b, 16, 21, 9.0f);
	assert_true(holds(&kv, &a, 0, 20, 0.25f));
	assert_true(holds(&kv, &b, 16, 21, 9.0f));
	/* a private block is not copied again */
	assert_int_equal(kv_seq_prepare(&kv, &b, 21, 22, &err), 0);
	assert_int_equal(kv.stats.copied, 1);
	/* no block to copy into: ITT_E_FULL, the sequence unchanged */
	struct kv_seq c;
	kv_seq_init(&c);
	assert_int_equal(kv_seq_reserve(&kv, &c, 32, &err), 0); /* the last 2 blocks */
	assert_int_equal(kv.n_free, 0);
	uint32_t before = b.blocks[0];
	assert_int_equal(kv_seq_prepare(&kv, &b, 0, 1, &err), ITT_E_FULL);
	assert_int_equal(b.blocks[0], before);
	check_accounting(&kv);
	kv_seq_free(&kv, &a);
	kv_seq_free(&kv, &b);
	kv_seq_free(&kv, &c);
	assert_int_equal(kv.n_free, 5);
	kv_cache_free(&kv);
}

static void f16_rows_round_like_quant(void **state)
{
	float src[37], back[37];
	uint16_t h[37];
	for (int i = 0; i < 37; i++)
		src[i] = (i % 2 ? -1.0f : 1.0f) * (float)i * 0.3712f + 1e-6f * (float)i;
	src[5] = 65519.0f; /* rounds to the largest half */
	src[6] = 1e-7f;    /* subnormal */
	src[7] = 70000.0f; /* overflows to infinity */
	kv_fp16_from_fp32(h, src, 37);
	kv_fp16_to_fp32(back, h, 37);
	for (int i = 0; i < 37; i++) {
		assert_int_equal(h[i], quant_fp32_to_fp16(src[i]));
		assert_true(back[i] == quant_fp16_to_fp32(h[i]));
	}
	struct kv_cache kv;
	struct itt_err err = {0};
	init_pool(&kv, KV_TYPE_F16, 2);
	assert_int_equal(kv.elt, 2);
	struct kv_seq a;
	kv_seq_init(&a);
	assert_int_equal(kv_seq_reserve(&kv, &a, 3, &err), 0);
	kv_store(&kv, kv.k, kv_offset(&kv, &a, 1, 2), src, KV_DIM);
	const uint16_t *row = (const uint16_t *)kv.k + kv_offset(&kv, &a, 1, 2);
	for (int j = 0; j < KV_DIM; j++)
		assert_int_equal(row[j], h[j]);
	kv_seq_free(&kv, &a);
	kv_cache_free(&kv);
}

static void tokens_of(int32_t *t, uint32_t n, int32_t base)
{
	for (uint32_t i = 0; i < n; i++)
		t[i] = base + (int32_t)((i * 7) % 50);
}

/* A sequence of n positions holding tokens t (content: tag). */
static void computed(struct kv_cache *kv, struct kv_seq *s, uint32_t n, float tag)
{
	struct itt_err err = {0};
	kv_seq_init(s);
	assert_int_equal(kv_seq_reserve(kv, s, n, &err), 0);
	fill(kv, s, 0, n, tag);
}

static void prefix_index_hits_misses_and_verifies(void **state)
{
	struct kv_cache kv;
	init_pool(&kv, KV_TYPE_F32, 12);
	int32_t t[64], u[64];
	tokens_of(t, 64, 3);
	struct kv_seq a, b, c;
	computed(&kv, &a, 50, 0.5f); /* 3 full blocks and a partial one */
	assert_int_equal(kv_prefix_insert(&kv, &a, t, 50), 3);
	assert_int_equal(kv.n_indexed, 3);
	assert_int_equal(kv.n_idle, 0);
	assert_int_equal(kv_prefix_insert(&kv, &a, t, 50), 0); /* once only */
	for (int i = 0; i < 3; i++)
		assert_int_equal(kv.refs[a.blocks[i]], 2);
	assert_int_equal(kv.refs[a.blocks[3]], 1);
	check_accounting(&kv);

	/* whole blocks only, within max_pos */
	uint32_t idle = 9;
	assert_int_equal(kv_prefix_peek(&kv, t, 47, &idle), 2);
	assert_int_equal(idle, 0);
	kv_seq_init(&b);
	assert_int_equal(kv_prefix_match(&kv, t, 47, &b), 32);
	assert_int_equal(b.n_pos, 32);
	assert_int_equal(b.blocks[0], a.blocks[0]);
	assert_int_equal(b.blocks[1], a.blocks[1]);
	assert_true(holds(&kv, &b, 0, 32, 0.5f));
	assert_int_equal(kv_prefix_match(&kv, t, 47, &b), 0); /* b not empty */
	kv_seq_free(&kv, &b);
	kv_seq_init(&b);
	assert_int_equal(kv_prefix_match(&kv, t, 64, &b), 48);
	kv_seq_free(&kv, &b);

	/* a different token in block 1: only block 0 matches */
	memcpy(u, t, sizeof u);
	u[20] += 1;
	kv_seq_init(&b);
	assert_int_equal(kv_prefix_match(&kv, u, 64, &b), 16);
	kv_seq_free(&kv, &b);
	/* a different first block: a miss, even with the same later blocks */
	memcpy(u, t, sizeof u);
	u[0] += 1;
	kv_seq_init(&b);
	assert_int_equal(kv_prefix_match(&kv, u, 64, &b), 0);
	assert_int_equal(b.n_blocks, 0);
	kv_seq_free(&kv, &b);
	assert_int_equal(kv.stats.lookups, 4);
	assert_int_equal(kv.stats.hits, 3);
	assert_int_equal(kv.stats.hit_blocks, 2 + 3 + 1);

	/* the hash is not trusted alone: an entry whose stored tokens differ
	 * (as after a collision) is not a hit */
	uint32_t b1 = a.blocks[1];
	kv.ent_tokens[(size_t)b1 * BS + 5] ^= 1;
	kv_seq_init(&b);
	assert_int_equal(kv_prefix_match(&kv, t, 64, &b), 16);
	kv_seq_free(&kv, &b);
	kv.ent_tokens[(size_t)b1 * BS + 5] ^= 1;

	/* the same content computed by another sequence is not indexed twice */
	computed(&kv, &c, 40, 0.5f);
	assert_int_equal(kv_prefix_insert(&kv, &c, t, 40), 0);
	assert_int_equal(kv.n_indexed, 3);
	/* a sequence that shares a's first block and diverges adds a branch */
	memcpy(u, t, sizeof u);
	u[40] += 1;
	kv_seq_free(&kv, &c);
	kv_seq_init(&c);
	assert_int_equal(kv_prefix_match(&kv, u, 48, &c), 32);
	struct itt_err err = {0};
	assert_int_equal(kv_seq_reserve(&kv, &c, 48, &err), 0);
	assert_int_equal(kv_prefix_insert(&kv, &c, u, 48), 1);
	assert_int_equal(kv.ent[c.blocks[2]].parent, a.blocks[1]);
	assert_int_equal(kv.ent[a.blocks[1]].n_child, 2);
	check_accounting(&kv);

	/* sequences gone: their indexed blocks are idle, and count as available */
	kv_seq_free(&kv, &a);
	kv_seq_free(&kv, &c);
	assert_int_equal(kv.n_idle, 4);
	assert_int_equal(kv_cache_available(&kv), 12);
	assert_int_equal(kv_prefix_peek(&kv, t, 64, &idle), 3);
	assert_int_equal(idle, 3);
	check_accounting(&kv);
	kv_prefix_clear(&kv);
	assert_int_equal(kv.n_free, 12);
	assert_int_equal(kv.n_indexed, 0);
	assert_int_equal(kv_prefix_peek(&kv, t, 64, &idle), 0);
	check_accounting(&kv);
	kv_cache_free(&kv);
}

static void idle_blocks_are_evicted_lru_leaves_first(void **state)
{
	struct kv_cache kv;
	struct itt_err err = {0};
	init_pool(&kv, KV_TYPE_F32, 6);
	int32_t ta[32], tb[32];
	tokens_of(ta, 32, 3);
	tokens_of(tb, 32, 100);
	struct kv_seq a, b, x;
	computed(&kv, &a, 32, 1.0f);
	assert_int_equal(kv_prefix_insert(&kv, &a, ta, 32), 2);
	computed(&kv, &b, 32, 2.0f);
	assert_int_equal(kv_prefix_insert(&kv, &b, tb, 32), 2);
	kv_seq_free(&kv, &a);
	kv_seq_free(&kv, &b);
	assert_int_equal(kv.n_idle, 4);
	assert_int_equal(kv.n_free, 2);
	/* use chain A again: B is now the least recently used */
	kv_seq_init(&x);
	assert_int_equal(kv_prefix_match(&kv, ta, 32, &x), 32);
	assert_int_equal(kv.n_idle, 2); /* A's blocks are in use */
	kv_seq_free(&kv, &x);
	/* one eviction: B's leaf goes, its first block stays matchable */
	assert_int_equal(kv_prefix_evict(&kv, 1), 1);
	uint32_t idle;
	assert_int_equal(kv_prefix_peek(&kv, tb, 32, &idle), 1);
	assert_int_equal(kv_prefix_peek(&kv, ta, 32, &idle), 2);
	check_accounting(&kv);
	/* a sequence needing 4 blocks takes the 3 free ones and evicts B's
	 * first block, leaving chain A whole */
	kv_seq_init(&x);
	assert_int_equal(kv_seq_reserve(&kv, &x, 64, &err), 0);
	assert_int_equal(kv_prefix_peek(&kv, tb, 32, &idle), 0);
	assert_int_equal(kv_prefix_peek(&kv, ta, 32, &idle), 2);
	assert_int_equal(kv.stats.evicted, 2);
	check_accounting(&kv);
	/* blocks in use are never evicted; more than available is refused */
	struct kv_seq y;
	kv_seq_init(&y);
	assert_int_equal(kv_prefix_match(&kv, ta, 32, &y), 32);
	assert_int_equal(kv_cache_available(&kv), 0);
	assert_int_equal(kv_prefix_evict(&kv, 5), 0);
	struct kv_seq z;
	kv_seq_init(&z);
	assert_int_equal(kv_seq_reserve(&kv, &z, 1, &err), ITT_E_FULL);
	kv_seq_free(&kv, &y);
	/* with the user gone, A goes too, leaf first */
	assert_int_equal(kv_seq_reserve(&kv, &z, 17, &err), 0);
	assert_int_equal(kv.n_indexed, 0);
	check_accounting(&kv);
	kv_seq_free(&kv, &x);
	kv_seq_free(&kv, &z);
	assert_int_equal(kv.n_free, 6);
	kv_cache_free(&kv);
}

static void chain_keys_depend_on_the_whole_prefix(void **state)
{
	struct kv_cache kv;
	init_pool(&kv, KV_TYPE_F32, 1);
	int32_t t[48], u[48];
	uint64_t kt[3], ku[3];
	tokens_of(t, 48, 3);
	memcpy(u, t, sizeof u);
	u[0] = 499;
	kv_prefix_keys(&kv, t, 3, kt);
	kv_prefix_keys(&kv, u, 3, ku);
	/* block 1 and 2 hold the same tokens, yet their keys differ */
	assert_true(kt[0] != ku[0]);
	assert_true(kt[1] != ku[1]);
	assert_true(kt[2] != ku[2]);
	kv_prefix_keys(&kv, t, 3, ku);
	assert_memory_equal(kt, ku, sizeof kt);
	kv_cache_free(&kv);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(pool_accounting),
	    cmocka_unit_test(prepare_allocates_ahead_without_moving_n_pos),
	    cmocka_unit_test(fork_shares_blocks_and_counts_references),
	    cmocka_unit_test(copy_on_write_never_touches_a_shared_block),
	    cmocka_unit_test(f16_rows_round_like_quant),
	    cmocka_unit_test(prefix_index_hits_misses_and_verifies),
	    cmocka_unit_test(idle_blocks_are_evicted_lru_leaves_first),
	    cmocka_unit_test(chain_keys_depend_on_the_whole_prefix),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
