/* heap: binary min-heap of pointers that knows each item's position.
 *
 * Contract: `less` orders items (the top is the least); each item carries a
 * size_t slot at byte offset `idx_off` where the heap keeps its index, so
 * heap_remove of an arbitrary item is O(log n).  An item not in the heap has
 * HEAP_NONE in that slot (set by heap_remove/heap_pop; set it yourself when
 * creating an item).  Items are borrowed. */
#ifndef ITT_HEAP_H
#define ITT_HEAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HEAP_NONE SIZE_MAX

typedef bool (*heap_less_fn)(const void *a, const void *b);

struct heap {
	void **items;
	size_t n, cap;
	heap_less_fn less;
	size_t idx_off;
};

void heap_init(struct heap *h, heap_less_fn less, size_t idx_off);
void heap_free(struct heap *h);
/* 0, or -1 when out of memory. */
int heap_push(struct heap *h, void *item);
void *heap_top(const struct heap *h);
void *heap_pop(struct heap *h);
/* Removes item if it is in the heap (its slot is not HEAP_NONE). */
void heap_remove(struct heap *h, void *item);
bool heap_contains(const struct heap *h, const void *item);

#endif
