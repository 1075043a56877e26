/* heap: see heap.h. */
#include "heap.h"

#include <stdlib.h>

static size_t *heap_slot(const struct heap *h, const void *item)
{
	return (size_t *)(void *)((char *)item + h->idx_off);
}

static void heap_set(struct heap *h, size_t i, void *item)
{
	h->items[i] = item;
	*heap_slot(h, item) = i;
}

static void heap_up(struct heap *h, size_t i)
{
	void *it = h->items[i];
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!h->less(it, h->items[p]))
			break;
		heap_set(h, i, h->items[p]);
		i = p;
	}
	heap_set(h, i, it);
}

static void heap_down(struct heap *h, size_t i)
{
	void *it = h->items[i];
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && h->less(h->items[c + 1], h->items[c]))
			c++;
		if (!h->less(h->items[c], it))
			break;
		heap_set(h, i, h->items[c]);
		i = c;
	}
	heap_set(h, i, it);
}

void heap_init(struct heap *h, heap_less_fn less, size_t idx_off)
{
	h->items = NULL;
	h->n = h->cap = 0;
	h->less = less;
	h->idx_off = idx_off;
}

void heap_free(struct heap *h)
{
	free(h->items);
	h->items = NULL;
	h->n = h->cap = 0;
}

int heap_push(struct heap *h, void *item)
{
	if (h->n == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 16;
		void **items = realloc(h->items, cap * sizeof *items);
		if (!items)
			return -1;
		h->items = items;
		h->cap = cap;
	}
	h->items[h->n] = item;
	heap_up(h, h->n++);
	return 0;
}

void *heap_top(const struct heap *h)
{
	return h->n ? h->items[0] : NULL;
}

bool heap_contains(const struct heap *h, const void *item)
{
	size_t i = *heap_slot(h, item);
	return i < h->n && h->items[i] == item;
}

void heap_remove(struct heap *h, void *item)
{
	if (!heap_contains(h, item))
		return;
	size_t i = *heap_slot(h, item);
	*heap_slot(h, item) = HEAP_NONE;
	void *last = h->items[--h->n];
	if (i == h->n)
		return;
	h->items[i] = last;
	*heap_slot(h, last) = i;
	heap_up(h, i);
	heap_down(h, *heap_slot(h, last));
}

void *heap_pop(struct heap *h)
{
	void *top = heap_top(h);
	if (top)
		heap_remove(h, top);
	return top;
}
