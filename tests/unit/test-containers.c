/* test-containers: pins down the base's containers (proto/base): map
 * (borrowed keys, put replaces, backward-shift deletion keeps every other
 * key reachable after churn, cap a power of two with n * 2 <= cap,
 * iteration visits each entry once), heap (least first, each item knows
 * its index, removal of any item, HEAP_NONE once out) and list (circular,
 * an unlinked link points at itself, link_remove twice is safe, push_back
 * moves an element from another list). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heap.h"
#include "list.h"
#include "map.h"

/* ---- map ------------------------------------------------------------------ */

static void map_invariants(const struct map *m)
{
	size_t n = 0;
	assert_true((m->cap & (m->cap - 1)) == 0);
	assert_true(m->n * 2 <= m->cap);
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].key) {
			n++;
			assert_ptr_equal(map_get(m, m->slots[i].key, m->slots[i].klen),
			                 m->slots[i].val);
		}
	assert_int_equal(n, m->n);
}

static void test_map_put_get_replace_delete(void **state)
{
	(void)state;
	struct map m;
	int a = 1, b = 2, c = 3;
	map_init(&m);
	assert_null(map_get(&m, "x", 1)); /* empty, cap 0 */
	assert_null(map_del(&m, "x", 1));
	assert_int_equal(map_put(&m, "alpha", 5, &a), 0);
	assert_int_equal(map_put(&m, "alp", 3, &b), 0); /* a prefix is another key */
	assert_ptr_equal(map_get(&m, "alpha", 5), &a);
	assert_ptr_equal(map_get(&m, "alp", 3), &b);
	assert_null(map_get(&m, "alph", 4));
	assert_int_equal(map_put(&m, "alpha", 5, &c), 0); /* replaces */
	assert_int_equal(m.n, 2);
	assert_ptr_equal(map_get(&m, "alpha", 5), &c);
	assert_ptr_equal(map_del(&m, "alpha", 5), &c);
	assert_null(map_get(&m, "alpha", 5));
	assert_int_equal(m.n, 1);
	map_invariants(&m);
	/* binary keys with zero bytes, as the broker's "client\0request" */
	assert_int_equal(map_put(&m, "c\0r1", 4, &a), 0);
	assert_int_equal(map_put(&m, "c\0r2", 4, &b), 0);
	assert_ptr_equal(map_get(&m, "c\0r1", 4), &a);
	assert_ptr_equal(map_get(&m, "c\0r2", 4), &b);
	map_free(&m);
	assert_int_equal(m.cap, 0);
	assert_int_equal(m.n, 0);
}

static void test_map_keeps_every_key_reachable_through_churn(void **state)
{
	(void)state;
	enum { N = 2000 };
	static char keys[N][16];
	static int vals[N];
	static bool in[N];
	struct map m;
	map_init(&m);
	for (int i = 0; i < N; i++) {
		snprintf(keys[i], sizeof keys[i], "k%d", i);
		vals[i] = i;
	}
	uint64_t rng = 12345;
	for (int round = 0; round < 20000; round++) {
		rng = rng * 6364136223846793005ull + 1442695040888963407ull;
		int i = (int)((rng >> 33) % N);
		if (in[i]) {
			assert_ptr_equal(map_del(&m, keys[i], strlen(keys[i])), &vals[i]);
			in[i] = false;
		} else {
			assert_int_equal(map_put(&m, keys[i], strlen(keys[i]), &vals[i]), 0);
			in[i] = true;
		}
		if (round % 1000 == 0)
			map_invariants(&m);
	}
	size_t n = 0;
	for (int i = 0; i < N; i++) {
		assert_ptr_equal(map_get(&m, keys[i], strlen(keys[i])), in[i] ? &vals[i] : NULL);
		n += in[i];
	}
	assert_int_equal(m.n, n);
	map_invariants(&m);
	/* iteration visits each entry exactly once */
	static int seen[N];
	size_t it = 0, visits = 0;
	void *v;
	while (map_next(&m, &it, &v)) {
		int i = *(int *)v;
		assert_true(in[i]);
		assert_int_equal(seen[i]++, 0);
		visits++;
	}
	assert_int_equal(visits, n);
	map_free(&m);
}

/* ---- heap ----------------------------------------------------------------- */

struct item {
	int key;
	size_t idx;
};

static bool item_less(const void *a, const void *b)
{
	return ((const struct item *)a)->key < ((const struct item *)b)->key;
}

static void heap_invariants(const struct heap *h)
{
	for (size_t i = 0; i < h->n; i++) {
		const struct item *it = h->items[i];
		assert_int_equal(it->idx, i);
		if (i)
			assert_false(item_less(it, h->items[(i - 1) / 2]));
	}
}

static void test_heap_pops_least_first_and_removes_any_item(void **state)
{
	(void)state;
	enum { N = 200 };
	struct item items[N];
	struct heap h;
	heap_init(&h, item_less, offsetof(struct item, idx));
	assert_null(heap_top(&h));
	assert_null(heap_pop(&h));
	for (int i = 0; i < N; i++) {
		items[i].key = (i * 73) % N; /* a permutation of 0..N-1 */
		items[i].idx = HEAP_NONE;
		assert_int_equal(heap_push(&h, &items[i]), 0);
	}
	heap_invariants(&h);
	/* remove every key divisible by 3, wherever it sits */
	for (int i = 0; i < N; i++)
		if (items[i].key % 3 == 0) {
			assert_true(heap_contains(&h, &items[i]));
			heap_remove(&h, &items[i]);
			assert_int_equal(items[i].idx, HEAP_NONE);
			assert_false(heap_contains(&h, &items[i]));
			heap_remove(&h, &items[i]); /* not in it: nothing happens */
			heap_invariants(&h);
		}
	int last = -1;
	size_t n = h.n;
	for (size_t k = 0; k < n; k++) {
		struct item *it = heap_pop(&h);
		assert_true(it->key > last);
		assert_true(it->key % 3 != 0);
		assert_int_equal(it->idx, HEAP_NONE);
		last = it->key;
		heap_invariants(&h);
	}
	assert_int_equal(h.n, 0);
	heap_free(&h);
}

/* ---- list ----------------------------------------------------------------- */

struct elem {
	int v;
	struct link link;
};

static size_t list_len(const struct link *head)
{
	size_t n = 0;
	for (const struct link *l = head->next; l != head; l = l->next) {
		assert_ptr_equal(l->next->prev, l);
		n++;
	}
	return n;
}

static void test_list_links_unlinks_and_moves_in_constant_time(void **state)
{
	(void)state;
	struct link a, b;
	struct elem e[3];
	link_init(&a);
	link_init(&b);
	assert_true(link_empty(&a));
	for (int i = 0; i < 3; i++) {
		e[i].v = i;
		link_init(&e[i].link);
		assert_false(link_linked(&e[i].link));
		link_push_back(&a, &e[i].link);
	}
	assert_int_equal(list_len(&a), 3);
	assert_int_equal(LINK_ENTRY(a.next, struct elem, link)->v, 0);
	assert_int_equal(LINK_ENTRY(a.prev, struct elem, link)->v, 2);
	/* push_back of a linked element moves it (to the tail, or to another list) */
	link_push_back(&a, &e[0].link);
	assert_int_equal(LINK_ENTRY(a.next, struct elem, link)->v, 1);
	assert_int_equal(LINK_ENTRY(a.prev, struct elem, link)->v, 0);
	link_push_back(&b, &e[1].link);
	assert_int_equal(list_len(&a), 2);
	assert_int_equal(list_len(&b), 1);
	link_remove(&e[1].link);
	assert_false(link_linked(&e[1].link));
	link_remove(&e[1].link); /* twice is safe */
	assert_true(link_empty(&b));
	assert_int_equal(list_len(&a), 2);
	link_remove(&e[0].link);
	link_remove(&e[2].link);
	assert_true(link_empty(&a));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_map_put_get_replace_delete),
	    cmocka_unit_test(test_map_keeps_every_key_reachable_through_churn),
	    cmocka_unit_test(test_heap_pops_least_first_and_removes_any_item),
	    cmocka_unit_test(test_list_links_unlinks_and_moves_in_constant_time),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
