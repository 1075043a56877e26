/* map: see map.h. */
#include "map.h"

#include <stdlib.h>
#include <string.h>

void map_init(struct map *m)
{
	m->slots = NULL;
	m->cap = m->n = 0;
}

void map_free(struct map *m)
{
	free(m->slots);
	map_init(m);
}

/* FNV-1a, then a 64-bit finaliser so short keys spread over the low bits. */
static uint64_t map_hash(const void *key, size_t len)
{
	const uint8_t *p = key;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}

static size_t map_find(const struct map *m, const void *key, size_t klen, uint64_t h)
{
	size_t mask = m->cap - 1;
	for (size_t i = h & mask;; i = (i + 1) & mask) {
		const struct map_slot *s = &m->slots[i];
		if (!s->key)
			return i;
		if (s->hash == h && s->klen == klen && memcmp(s->key, key, klen) == 0)
			return i;
	}
}

static int map_grow(struct map *m)
{
	size_t cap = m->cap ? m->cap * 2 : 16;
	struct map_slot *slots = calloc(cap, sizeof *slots);
	if (!slots)
		return -1;
	struct map old = *m;
	m->slots = slots;
	m->cap = cap;
	for (size_t i = 0; i < old.cap; i++) {
		if (old.slots[i].key)
			m->slots[map_find(m, old.slots[i].key, old.slots[i].klen,
			                  old.slots[i].hash)] = old.slots[i];
	}
	free(old.slots);
	return 0;
}

int map_put(struct map *m, const void *key, size_t klen, void *val)
{
	if ((m->n + 1) * 2 > m->cap && map_grow(m) < 0)
		return -1;
	uint64_t h = map_hash(key, klen);
	struct map_slot *s = &m->slots[map_find(m, key, klen, h)];
	if (!s->key) {
		s->key = key;
		s->klen = klen;
		s->hash = h;
		m->n++;
	}
	s->val = val;
	return 0;
}

void *map_get(const struct map *m, const void *key, size_t klen)
{
	if (!m->n)
		return NULL;
	const struct map_slot *s = &m->slots[map_find(m, key, klen, map_hash(key, klen))];
	return s->key ? s->val : NULL;
}

void *map_del(struct map *m, const void *key, size_t klen)
{
	if (!m->n)
		return NULL;
	size_t mask = m->cap - 1;
	size_t i = map_find(m, key, klen, map_hash(key, klen));
	if (!m->slots[i].key)
		return NULL;
	void *val = m->slots[i].val;
	/* Backward shift: move later members of the probe run into the hole
	 * when their home slot does not lie (cyclically) in (hole, j]. */
	for (size_t j = (i + 1) & mask; m->slots[j].key; j = (j + 1) & mask) {
		size_t home = m->slots[j].hash & mask;
		bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
		if (!stays) {
			m->slots[i] = m->slots[j];
			i = j;
		}
	}
	m->slots[i].key = NULL;
	m->n--;
	return val;
}

bool map_next(const struct map *m, size_t *it, void **val)
{
	while (*it < m->cap) {
		const struct map_slot *s = &m->slots[(*it)++];
		if (s->key) {
			*val = s->val;
			return true;
		}
	}
	return false;
}
