/*
 * Blocks: memory for the objects that one thread makes and another frees.
 *
 * A behavior (and its cowns) is usually made by the thread that schedules it
 * and freed by the worker that runs it.  With glibc's malloc every such free
 * goes back to the arena of the allocating thread and takes that arena's
 * lock, which the allocating thread holds for its own next allocation: a
 * loop of @when on the main thread and one worker that keeps up with it
 * collided there at nearly every behavior (perf: about 0.5 futex system
 * calls per behavior, all of them in __lll_lock_wait_private under calloc and
 * free; see benchmarks/README.md).
 *
 * So small blocks are recycled here, by size class (16 k + 24 bytes, up to
 * BOC__BLOCK_MAX):
 *   - each thread keeps a private list per class (`boc__cache`), which it
 *     allocates from and frees to without atomics, up to BOC__LOCAL_MAX
 *     blocks;
 *   - past that, a free pushes the block on the class's shared stack
 *     (`boc__returned`, a Treiber stack: compare-and-swap on the head), and
 *     an allocation that finds its private list empty takes the whole
 *     shared stack at once (an exchange with NULL).  Taking everything, never
 *     one block, means no pop ever races with another pop, so the stack has
 *     no ABA problem;
 *   - the shared stack holds at most about BOC__SHARED_BYTES per class; a
 *     free beyond that goes to free(), so a burst of frees does not pin its
 *     memory here.
 * Memory orders: a push publishes the block's link (and the block's last
 * contents are dead) with a release CAS; the exchange that takes the stack
 * is acquire, so the taker reads the links the pushers wrote.  The counts
 * next to the stacks are relaxed hints for the cap only.
 *
 * A thread's private lists are freed when it exits (a pthread key's
 * destructor); boc_blocks_trim frees the shared stacks and the calling
 * thread's lists.  Builds with
 * AddressSanitizer skip all this and call calloc and free, so that a use
 * after free is still caught at the free that made it.
 */
#include "boc_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define BOC__BLOCKS_PASS_THROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BOC__BLOCKS_PASS_THROUGH 1
#endif
#endif

/* Class k holds blocks of 16 k + 24 bytes: glibc gives a request of n bytes
 * a chunk of n + 8 rounded up to 16, so these sizes waste nothing (a cown's
 * 88 bytes stay a 96-byte chunk). */
#define BOC__BLOCK_GRAIN 16
#define BOC__BLOCK_BASE 24
#define BOC__CLASSES 32
/* Larger requests go straight to malloc. */
#define BOC__BLOCK_MAX (BOC__BLOCK_BASE + (BOC__CLASSES - 1) * BOC__BLOCK_GRAIN)
/* Blocks a thread keeps per class before frees go to the shared stack. */
#define BOC__LOCAL_MAX 64
/* About how many bytes a class's shared stack holds before frees go to
 * free(). */
#define BOC__SHARED_BYTES (256 * 1024)

/* A free block: its first word links it into a list. */
typedef struct boc__block {
    struct boc__block *next;
} boc__block;

#ifndef BOC__BLOCKS_PASS_THROUGH

typedef struct boc__cache {
    boc__block *head[BOC__CLASSES];
    unsigned count[BOC__CLASSES];
} boc__cache;

/* Each on its own cache line: pushers of one class do not slow down
 * another's. */
typedef struct boc__shared {
    alignas(BOC__CACHE_LINE) _Atomic(boc__block *) head;
    atomic_size_t count; /* a hint for the cap (see the top) */
} boc__shared;

static boc__shared boc__returned[BOC__CLASSES];

static _Thread_local boc__cache *boc__mine;
static pthread_key_t boc__cache_key;
static pthread_once_t boc__cache_once = PTHREAD_ONCE_INIT;
static bool boc__cache_key_made;

static void boc__free_list(boc__block *block);

/* The thread's exit (the key's destructor).  A block freed on this thread
 * after this (by a later destructor) makes a new cache, which glibc's next
 * destructor round frees again; only one freed in its last round (of
 * PTHREAD_DESTRUCTOR_ITERATIONS) would stay allocated.  No bocpy path frees
 * blocks from a thread-exit destructor. */
static void boc__cache_free(void *arg) {
    boc__cache *cache = arg;
    for (unsigned k = 0; k < BOC__CLASSES; k++) {
        boc__free_list(cache->head[k]);
    }
    free(cache);
    boc__mine = NULL;
}

static void boc__cache_key_init(void) {
    boc__cache_key_made = pthread_key_create(&boc__cache_key, boc__cache_free) == 0;
}

/* The calling thread's cache, made on first use; NULL when it cannot be
 * (out of memory, or no key for its destructor): then the caller uses
 * malloc and free. */
static boc__cache *boc__cache_get(void) {
    boc__cache *cache = boc__mine;
    if (cache != NULL) {
        return cache;
    }
    pthread_once(&boc__cache_once, boc__cache_key_init);
    if (!boc__cache_key_made) {
        return NULL;
    }
    cache = calloc(1, sizeof(*cache));
    if (cache == NULL) {
        return NULL;
    }
    if (pthread_setspecific(boc__cache_key, cache) != 0) {
        free(cache);
        return NULL;
    }
    boc__mine = cache;
    return cache;
}

/* The class of a request of `size` bytes, or BOC__CLASSES when too large. */
static unsigned boc__class_of(size_t size) {
    if (size <= BOC__BLOCK_BASE) {
        return 0;
    }
    if (size > BOC__BLOCK_MAX) {
        return BOC__CLASSES;
    }
    return (unsigned)((size - BOC__BLOCK_BASE + BOC__BLOCK_GRAIN - 1) / BOC__BLOCK_GRAIN);
}

static size_t boc__class_size(unsigned k) { return BOC__BLOCK_BASE + (size_t)k * BOC__BLOCK_GRAIN; }

void *boc_block_alloc(size_t size) {
    unsigned k = boc__class_of(size);
    if (k == BOC__CLASSES) {
        return calloc(1, size);
    }
    boc__cache *cache = boc__cache_get();
    if (cache == NULL) {
        /* The whole class size: a thread with a cache may recycle it. */
        return calloc(1, boc__class_size(k));
    }
    boc__block *block = cache->head[k];
    if (block == NULL) {
        /* Acquire: pairs with the pushers' release CAS, so their links
         * (and nothing older of the blocks) are what we read. */
        block = atomic_exchange_explicit(&boc__returned[k].head, NULL, memory_order_acquire);
        if (block == NULL) {
            return calloc(1, boc__class_size(k));
        }
        /* Relaxed: a hint; a push racing with this reset only makes the
         * count a little wrong until the next take. */
        atomic_store_explicit(&boc__returned[k].count, 0, memory_order_relaxed);
        /* The rest of the stack becomes our private list (counted, so
         * that our frees go to the shared stack while it holds more than
         * BOC__LOCAL_MAX; the walk costs one step per block, each of which
         * is allocated later anyway). */
        unsigned count = 0;
        for (boc__block *rest = block->next; rest != NULL; rest = rest->next) {
            count++;
        }
        cache->head[k] = block->next;
        cache->count[k] = count;
    } else {
        cache->head[k] = block->next;
        if (cache->count[k] > 0) {
            cache->count[k]--;
        }
    }
    memset(block, 0, boc__class_size(k));
    return block;
}

void boc_block_free(void *ptr, size_t size) {
    if (ptr == NULL) {
        return;
    }
    unsigned k = boc__class_of(size);
    boc__cache *cache = k < BOC__CLASSES ? boc__cache_get() : NULL;
    if (cache == NULL) {
        free(ptr);
        return;
    }
    boc__block *block = ptr;
    if (cache->count[k] < BOC__LOCAL_MAX) {
        block->next = cache->head[k];
        cache->head[k] = block;
        cache->count[k]++;
        return;
    }
    boc__shared *shared = &boc__returned[k];
    size_t cap = BOC__SHARED_BYTES / boc__class_size(k);
    /* Relaxed: a hint (see the top). */
    if (atomic_load_explicit(&shared->count, memory_order_relaxed) >= cap) {
        free(ptr);
        return;
    }
    boc__block *head = atomic_load_explicit(&shared->head, memory_order_relaxed);
    do {
        block->next = head;
        /* Release on success: the link above is visible to the taker. */
    } while (!atomic_compare_exchange_weak_explicit(&shared->head, &head, block,
                                                    memory_order_release, memory_order_relaxed));
    atomic_fetch_add_explicit(&shared->count, 1, memory_order_relaxed);
}

/* Frees a private or taken list of blocks. */
static void boc__free_list(boc__block *block) {
    while (block != NULL) {
        boc__block *next = block->next;
        free(block);
        block = next;
    }
}

void boc_blocks_trim(void) {
    boc__cache *mine = boc__mine;
    if (mine != NULL) {
        for (unsigned k = 0; k < BOC__CLASSES; k++) {
            boc__free_list(mine->head[k]);
            mine->head[k] = NULL;
            mine->count[k] = 0;
        }
    }
    for (unsigned k = 0; k < BOC__CLASSES; k++) {
        /* Acquire: as in boc_block_alloc. */
        boc__block *block =
            atomic_exchange_explicit(&boc__returned[k].head, NULL, memory_order_acquire);
        atomic_store_explicit(&boc__returned[k].count, 0, memory_order_relaxed);
        boc__free_list(block);
    }
}

#else /* BOC__BLOCKS_PASS_THROUGH */

void *boc_block_alloc(size_t size) { return calloc(1, size == 0 ? 1 : size); }

void boc_block_free(void *ptr, size_t size) {
    (void)size;
    free(ptr);
}

void boc_blocks_trim(void) {}

#endif
