/* list: intrusive circular doubly-linked lists for the broker's orderings.
 *
 * Contract: a list head is a struct link whose prev/next point at itself when
 * empty; an element embeds a struct link and is found back with LINK_ENTRY.
 * Invariants: an element is on at most one list per embedded link; an
 * unlinked link points at itself, so link_remove is safe to call twice.
 * Every operation is O(1), which is what keeps "move to the tail on each
 * message" expiry orders cheap with thousands of peers. */
#ifndef ITT_LIST_H
#define ITT_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct link {
	struct link *prev, *next;
};

#define LINK_ENTRY(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

static inline void link_init(struct link *l)
{
	l->prev = l->next = l;
}

static inline bool link_empty(const struct link *head)
{
	return head->next == head;
}

static inline bool link_linked(const struct link *l)
{
	return l->next != l;
}

static inline void link_remove(struct link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	link_init(l);
}

/* Appends l (unlinked first if it is on a list) at the tail of head. */
static inline void link_push_back(struct link *head, struct link *l)
{
	if (link_linked(l))
		link_remove(l);
	l->prev = head->prev;
	l->next = head;
	head->prev->next = l;
	head->prev = l;
}

#endif
