/*
 * Test cases for the recycled blocks (blocks.c) and for quiescence watching:
 * a block made on one thread and freed on another comes back zeroed and of
 * the size asked for, under ThreadSanitizer too; and the quiescent hook runs
 * while a thread watches, and only then.
 */
#include "test.h"

#include <pthread.h>
#include <string.h>

/* Sizes around each class edge (16 k + 24), the largest recycled size
 * (520), and sizes that go straight to malloc. */
static const size_t block_sizes[] = {0, 1, 8, 24, 25, 40, 41, 88, 89, 200, 519, 520, 521, 4096};
#define BLOCK_SIZE_COUNT (sizeof(block_sizes) / sizeof(block_sizes[0]))
#define BLOCKS_PER_ROUND 2000
#define BLOCK_ROUNDS 20

typedef struct block_handoff {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned char *blocks[BLOCKS_PER_ROUND];
    size_t sizes[BLOCKS_PER_ROUND];
    bool full; /* the maker filled `blocks`; the freer has not emptied it */
    bool done; /* no more rounds */
} block_handoff;

static bool block_is_zero(const unsigned char *block, size_t size) {
    for (size_t i = 0; i < size; i++) {
        if (block[i] != 0) {
            return false;
        }
    }
    return true;
}

/* The freeing thread: checks each block still holds its maker's pattern,
 * then frees it. */
static void *block_freer(void *arg) {
    block_handoff *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->lock);
        while (!h->full && !h->done) {
            pthread_cond_wait(&h->cond, &h->lock);
        }
        if (!h->full) {
            pthread_mutex_unlock(&h->lock);
            return NULL;
        }
        for (size_t i = 0; i < BLOCKS_PER_ROUND; i++) {
            unsigned char mark = (unsigned char)(i * 7 + 1);
            for (size_t j = 0; j < h->sizes[i]; j++) {
                ASSERT(h->blocks[i][j] == mark);
            }
            boc_block_free(h->blocks[i], h->sizes[i]);
            h->blocks[i] = NULL;
        }
        h->full = false;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
    }
}

TEST_IMPL(blocks_recycled_across_threads) {
    block_handoff h;
    ASSERT(pthread_mutex_init(&h.lock, NULL) == 0);
    ASSERT(pthread_cond_init(&h.cond, NULL) == 0);
    h.full = false;
    h.done = false;
    pthread_t freer;
    ASSERT(pthread_create(&freer, NULL, block_freer, &h) == 0);
    for (unsigned round = 0; round < BLOCK_ROUNDS; round++) {
        pthread_mutex_lock(&h.lock);
        while (h.full) {
            pthread_cond_wait(&h.cond, &h.lock);
        }
        for (size_t i = 0; i < BLOCKS_PER_ROUND; i++) {
            size_t size = block_sizes[(i + round) % BLOCK_SIZE_COUNT];
            unsigned char *block = boc_block_alloc(size);
            ASSERT(block != NULL);
            /* Zeroed, like calloc, also when it was the other thread's. */
            ASSERT(block_is_zero(block, size));
            memset(block, (int)(unsigned char)(i * 7 + 1), size);
            h.blocks[i] = block;
            h.sizes[i] = size;
        }
        h.full = true;
        pthread_cond_broadcast(&h.cond);
        pthread_mutex_unlock(&h.lock);
        if (round == BLOCK_ROUNDS / 2) {
            boc_blocks_trim(); /* while the other thread may be freeing */
        }
    }
    pthread_mutex_lock(&h.lock);
    h.done = true;
    pthread_cond_broadcast(&h.cond);
    pthread_mutex_unlock(&h.lock);
    ASSERT(pthread_join(freer, NULL) == 0);

    /* This thread frees and reuses its own blocks too. */
    for (unsigned i = 0; i < 3 * BLOCKS_PER_ROUND; i++) {
        size_t size = block_sizes[i % BLOCK_SIZE_COUNT];
        unsigned char *block = boc_block_alloc(size);
        ASSERT(block != NULL && block_is_zero(block, size));
        memset(block, 0xAB, size);
        boc_block_free(block, size);
    }
    boc_block_free(NULL, 16); /* like free(NULL) */
    boc_blocks_trim();
    pthread_cond_destroy(&h.cond);
    pthread_mutex_destroy(&h.lock);
    return 0;
}

/* ------------------------------------------------------ quiescence watch */

typedef struct nap_payload {
    test_payload header;
    unsigned ms;
} nap_payload;

static void nap_body(boc_behavior *b, void *raw) {
    (void)b;
    nap_payload *p = raw;
    if (p->ms > 0) {
        test_sleep_ms(p->ms);
    }
}

static void schedule_nap(boc_runtime *rt, unsigned ms) {
    boc_behavior *b = test_behavior_new(nap_body, sizeof(nap_payload), NULL, 0);
    nap_payload *p = boc_behavior_payload(b);
    p->ms = ms;
    boc_schedule(rt, b);
}

/* Polls (bounded) until the live count is zero. */
static void spin_until_quiescent(boc_runtime *rt) {
    for (unsigned i = 0; boc_runtime_live(rt) != 0; i++) {
        ASSERT(i < 60000); /* 60 s */
        test_sleep_ms(1);
    }
}

TEST_IMPL(quiescent_hook_while_watched) {
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 2);

    /* Nobody watches: the count reaches zero after every behavior, and the
     * hook (a system call in the binding) is not called. */
    for (unsigned i = 0; i < 50; i++) {
        schedule_nap(rt, 0);
        spin_until_quiescent(rt);
    }
    ASSERT_EQ_U64(atomic_load(&host.quiescent), 0);
    /* A worker that brought the count to zero just before we start to
     * watch may still read the watcher count after: a spare call, which
     * the contract allows but would throw the counts below off by one.
     * Joining the workers (stop, start again) rules it out. */
    boc_runtime_stop(rt);
    ASSERT(boc_runtime_start(rt) == 0);

    /* Watching: every zero calls it, once.  The hook runs right after the
     * count reaches zero, so wait for it a little. */
    boc_runtime_watch_quiescence(rt, true);
    for (unsigned i = 1; i <= 5; i++) {
        schedule_nap(rt, 2);
        spin_until_quiescent(rt);
        for (unsigned t = 0; atomic_load(&host.quiescent) < i; t++) {
            ASSERT(t < 60000);
            test_sleep_ms(1);
        }
        ASSERT_EQ_U64(atomic_load(&host.quiescent), i);
    }
    /* Nested watches count. */
    boc_runtime_watch_quiescence(rt, true);
    boc_runtime_watch_quiescence(rt, false);
    schedule_nap(rt, 0);
    spin_until_quiescent(rt);
    for (unsigned t = 0; atomic_load(&host.quiescent) < 6; t++) {
        ASSERT(t < 60000);
        test_sleep_ms(1);
    }
    boc_runtime_watch_quiescence(rt, false);
    for (unsigned i = 0; i < 20; i++) {
        schedule_nap(rt, 0);
        spin_until_quiescent(rt);
    }
    ASSERT_EQ_U64(atomic_load(&host.quiescent), 6);

    /* A blocking wait watches by itself: it is woken by the zero, well
     * before its timeout (a lost wake-up would return only at the
     * timeout, with 0 as well, so the time is what shows it). */
    schedule_nap(rt, 100);
    uint64_t began = boc_now_ns();
    ASSERT(boc_runtime_wait_quiescent(rt, INT64_C(20000000000)) == 0);
    ASSERT(boc_now_ns() - began < UINT64_C(5000000000));
    test_runtime_finish(rt, &host);
    return 0;
}
