/*
 * strtable.c: a string-keyed hash table (open addressing, linear probing),
 * shared by the noticeboard (key -> versions) and messaging (tag ->
 * channel).  Keys are byte strings with a length, so "a\0b" and "a" are
 * different keys.  Not thread-safe: each user guards its table with its own
 * lock.  Entries are never removed (boards and channels are few compared to
 * their traffic), so probing needs no tombstones.
 */
#include "bocpy.h"

#include <string.h>

static uint64_t hash_bytes(const char *key, size_t len) {
    /* FNV-1a: cheap, and good enough for keys people choose. */
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)key[i]) * 0x100000001b3ULL;
    }
    return h;
}

static bool slot_matches(const bocpy_strtable_slot *s, const char *key, size_t len, uint64_t h) {
    return s->hash == h && s->len == len && memcmp(s->key, key, len) == 0;
}

static int grow(bocpy_strtable *t) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    bocpy_strtable_slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL) {
        return -1;
    }
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].key != NULL) {
            size_t j = t->slots[i].hash & (cap - 1);
            while (slots[j].key != NULL) {
                j = (j + 1) & (cap - 1);
            }
            slots[j] = t->slots[i];
        }
    }
    free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

bocpy_strtable_slot *bocpy_strtable_find(bocpy_strtable *t, const char *key, size_t len,
                                         bool create) {
    uint64_t h = hash_bytes(key, len);
    if (t->cap > 0) {
        for (size_t i = h & (t->cap - 1); t->slots[i].key != NULL; i = (i + 1) & (t->cap - 1)) {
            if (slot_matches(&t->slots[i], key, len, h)) {
                return &t->slots[i];
            }
        }
    }
    if (!create) {
        return NULL;
    }
    /* Keep the load at most 1/2 so that probes stay short. */
    if (2 * (t->used + 1) > t->cap && grow(t) < 0) {
        return NULL;
    }
    size_t i = h & (t->cap - 1);
    while (t->slots[i].key != NULL) {
        i = (i + 1) & (t->cap - 1);
    }
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        return NULL;
    }
    memcpy(copy, key, len);
    copy[len] = '\0';
    t->slots[i] = (bocpy_strtable_slot){.key = copy, .len = len, .hash = h, .value = NULL};
    t->used++;
    return &t->slots[i];
}
