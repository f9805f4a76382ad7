/*
 * The pinned lane: a multi-producer, single-consumer FIFO of behaviors that
 * must run on the host's main thread (those naming a BOC_COWN_PINNED cown).
 *
 * Any thread may push (whichever thread resolved the behavior's last cown);
 * only the host's main thread pops, runs the body itself and then calls
 * boc_behavior_complete.  When the lane goes from empty to non-empty the
 * pusher records the time (boc_pinned_nonempty_since, so the host can tell
 * how long the main thread has kept pinned work waiting) and calls the
 * host's pinned_ready hook, outside the lane's lock.  The lane is a plain
 * mutex-protected list: pinned work is rare and runs on a single thread, so a
 * lock-free queue would buy nothing.
 */
#include "boc_internal.h"

void boc__pinned_init(boc__pinned_lane *lane) {
    int rc = pthread_mutex_init(&lane->lock, NULL);
    assert(rc == 0);
    (void)rc;
    lane->head = NULL;
    lane->tail = NULL;
    atomic_init(&lane->depth, 0);
    atomic_init(&lane->nonempty_since, 0);
#ifndef NDEBUG
    atomic_flag_clear_explicit(&lane->consumer_active, memory_order_relaxed);
#endif
}

void boc__pinned_destroy(boc__pinned_lane *lane) { pthread_mutex_destroy(&lane->lock); }

void boc__pinned_push(boc_runtime *rt, boc_behavior *b) {
    boc__pinned_lane *lane = &rt->pinned;
    assert(b->pinned);
    b->queue_next = NULL;
    boc_yield_mutex_lock(&lane->lock);
    bool became_nonempty = lane->head == NULL;
    if (became_nonempty) {
        lane->head = b;
        uint64_t now = boc_now_ns();
        assert(now != 0);
        /* Relaxed: the timestamp is informational; the lane's contents are
         * published by the lock, not by this value. */
        atomic_store_explicit(&lane->nonempty_since, now, memory_order_relaxed);
    } else {
        lane->tail->queue_next = b;
    }
    lane->tail = b;
    /* Only lock holders write `depth`; relaxed readers get a snapshot. */
    size_t depth = atomic_load_explicit(&lane->depth, memory_order_relaxed);
    atomic_store_explicit(&lane->depth, depth + 1, memory_order_relaxed);
    pthread_mutex_unlock(&lane->lock);

    /* Yield point: the lane is non-empty, pinned_ready not yet called; the
     * consumer may pop, run and complete `b` first, so the hook must not
     * rely on finding it. */
    BOC__YIELD(PINNED_PUSHED);
    if (became_nonempty && rt->ops.pinned_ready != NULL) {
        rt->ops.pinned_ready(rt->user);
    }
}

boc_behavior *boc_pinned_pop(boc_runtime *rt) {
    assert(rt != NULL);
    boc__pinned_lane *lane = &rt->pinned;
#ifndef NDEBUG
    bool other_consumer =
        atomic_flag_test_and_set_explicit(&lane->consumer_active, memory_order_relaxed);
    assert(!other_consumer && "the pinned lane has a single consumer");
#endif
    /* Yield point: producers race with the consumer for the lane's lock;
     * the pop must see either all or none of a push. */
    BOC__YIELD(PINNED_POP);
    boc_yield_mutex_lock(&lane->lock);
    boc_behavior *b = lane->head;
    if (b != NULL) {
        lane->head = b->queue_next;
        b->queue_next = NULL;
        if (lane->head == NULL) {
            lane->tail = NULL;
            /* Relaxed: see boc__pinned_push. */
            atomic_store_explicit(&lane->nonempty_since, 0, memory_order_relaxed);
        }
        size_t depth = atomic_load_explicit(&lane->depth, memory_order_relaxed);
        assert(depth > 0);
        atomic_store_explicit(&lane->depth, depth - 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&lane->lock);
#ifndef NDEBUG
    atomic_flag_clear_explicit(&lane->consumer_active, memory_order_relaxed);
#endif
    return b;
}

size_t boc_pinned_depth(const boc_runtime *rt) {
    assert(rt != NULL);
    /* Relaxed: a snapshot; the caller synchronises through boc_pinned_pop. */
    return atomic_load_explicit(&rt->pinned.depth, memory_order_relaxed);
}

uint64_t boc_pinned_nonempty_since(const boc_runtime *rt) {
    assert(rt != NULL);
    /* Relaxed: an informational timestamp (see boc__pinned_push). */
    return atomic_load_explicit(&rt->pinned.nonempty_since, memory_order_relaxed);
}
