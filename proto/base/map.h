/* map: open-addressing hash map from byte strings to pointers.
 *
 * Contract: keys are borrowed, not copied: the caller keeps a key's bytes
 * alive and unchanged while it is in the map (the broker points keys into
 * the objects they index).  map_put replaces the value of an equal key
 * (and then keeps the old key pointer).  Linear probing with backward-shift
 * deletion, so there are no tombstones and lookups stay short after churn.
 * Invariants: cap is 0 or a power of two; n * 2 <= cap. */
#ifndef ITT_MAP_H
#define ITT_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct map_slot {
	const void *key; /* NULL: empty */
	size_t klen;
	uint64_t hash;
	void *val;
};

struct map {
	struct map_slot *slots;
	size_t cap;
	size_t n;
};

void map_init(struct map *m);
void map_free(struct map *m);
/* 0, or -1 when out of memory (the map is unchanged). */
int map_put(struct map *m, const void *key, size_t klen, void *val);
void *map_get(const struct map *m, const void *key, size_t klen);
/* Removes the key; returns its value or NULL when absent. */
void *map_del(struct map *m, const void *key, size_t klen);
/* Iteration: start with *it = 0; returns false at the end.  The map must
 * not change during an iteration. */
bool map_next(const struct map *m, size_t *it, void **val);

#endif
