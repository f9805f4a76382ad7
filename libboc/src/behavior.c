/*
 * Behaviors: allocation, two-phase-locking (2PL) scheduling over the cowns'
 * MCS queues, resolution, and completion.
 *
 * boc_schedule follows the BoC paper (OOPSLA 2023):
 *   - the requests are sorted by cown id and repeated cowns are removed, so
 *     every behavior enqueues in one global order and never waits on itself;
 *   - `pending` starts at (distinct cowns + 1); the +1 is the scheduler's own
 *     hold, which stops the behavior from being dispatched (and freed) while
 *     the scheduler is still enqueueing it;
 *   - phase 1 enqueues on each cown in ascending id: swap the tail; if it was
 *     NULL the cown is ours, otherwise wait until the predecessor has itself
 *     finished phase 1 (its `scheduled` flag) and link behind it;
 *   - phase 2 marks every request `scheduled`, letting successors link;
 *   - finally the scheduler drops its hold (and the cowns it got at once).
 * Waiting for the predecessor's phase 1 is what stops a later behavior from
 * overtaking an earlier one on a higher cown, and so keeps the order (and
 * deadlock freedom) of the paper.
 */
#include "boc_internal.h"

#include <stdlib.h>

/* Above this many requests, sort with qsort instead of insertion sort. */
#define BOC__INSERTION_SORT_MAX 16

/* Where the payload of a behavior with `slot_count` slots starts: after the
 * requests, rounded up to max_align_t. */
static size_t boc__payload_offset(size_t slot_count) {
    const size_t align = alignof(max_align_t);
    size_t header = sizeof(boc_behavior) + slot_count * sizeof(boc_request);
    return (header + align - 1) / align * align;
}

boc_behavior *boc_behavior_new(size_t cown_count, size_t payload_size) {
    const size_t align = alignof(max_align_t);
    if (cown_count > UINT32_MAX ||
        cown_count > (SIZE_MAX - sizeof(boc_behavior) - align) / sizeof(boc_request)) {
        return NULL;
    }
    size_t payload_offset = boc__payload_offset(cown_count);
    if (payload_offset > UINT32_MAX || payload_size > UINT32_MAX - payload_offset) {
        return NULL;
    }
    /* A behavior is usually freed by another thread than the one making it:
     * boc_block_alloc.  Its result, like calloc's, is aligned for
     * max_align_t, and so is the payload offset; it also zeroes the
     * payload. */
    size_t size = payload_offset + payload_size;
    boc_behavior *b = boc_block_alloc(size);
    if (b == NULL) {
        return NULL;
    }
    b->alloc_size = (uint32_t)size;
    b->runtime = NULL;
    b->queue_next = NULL;
    atomic_init(&b->pending, 0);
    b->slot_count = (uint32_t)cown_count;
    b->request_count = 0;
    b->scheduled = false;
    b->pinned = false;
    for (size_t i = 0; i < cown_count; i++) {
        boc_request *req = &b->requests[i];
        req->cown = NULL;
        atomic_init(&req->next, NULL);
        atomic_init(&req->scheduled, false);
        req->owner = b;
    }
    return b;
}

void boc_behavior_set_cown(boc_behavior *b, size_t index, boc_cown *cown) {
    assert(b != NULL && cown != NULL);
    assert(!b->scheduled);
    assert(index < b->slot_count);
    boc_cown_incref(cown);
    boc_cown *previous = b->requests[index].cown;
    b->requests[index].cown = cown;
    if (previous != NULL) {
        boc_cown_decref(previous);
    }
}

void *boc_behavior_payload(boc_behavior *b) {
    assert(b != NULL);
    return (unsigned char *)b + boc__payload_offset(b->slot_count);
}

bool boc_behavior_is_pinned(const boc_behavior *b) {
    assert(b != NULL);
    if (b->scheduled) {
        return b->pinned;
    }
    for (size_t i = 0; i < b->slot_count; i++) {
        const boc_cown *cown = b->requests[i].cown;
        if (cown != NULL && (cown->flags & BOC_COWN_PINNED) != 0) {
            return true;
        }
    }
    return false;
}

void boc_behavior_discard(boc_behavior *b) {
    if (b == NULL) {
        return;
    }
    assert(!b->scheduled);
    for (size_t i = 0; i < b->slot_count; i++) {
        if (b->requests[i].cown != NULL) {
            boc_cown_decref(b->requests[i].cown);
        }
    }
    boc_block_free(b, b->alloc_size);
}

static int boc__request_compare(const void *left, const void *right) {
    uint64_t a = ((const boc_request *)left)->cown->id;
    uint64_t b = ((const boc_request *)right)->cown->id;
    return (a > b) - (a < b);
}

/* Sorts the slots by cown id, removes repeated cowns (dropping the extra
 * references they took), initialises each remaining request and works out
 * whether the behavior is pinned.  Runs before `b` is visible to any other
 * thread, so plain accesses suffice. */
static void boc__requests_prepare(boc_behavior *b) {
    boc_request *requests = b->requests;
    size_t count = b->slot_count;
    for (size_t i = 0; i < count; i++) {
        assert(requests[i].cown != NULL && "every cown slot must be set before scheduling");
    }

    if (count > BOC__INSERTION_SORT_MAX) {
        qsort(requests, count, sizeof(boc_request), boc__request_compare);
    } else {
        for (size_t i = 1; i < count; i++) {
            boc_cown *moving = requests[i].cown;
            size_t j = i;
            while (j > 0 && requests[j - 1].cown->id > moving->id) {
                requests[j].cown = requests[j - 1].cown;
                j--;
            }
            requests[j].cown = moving;
        }
    }

    size_t distinct = 0;
    bool pinned = false;
    for (size_t i = 0; i < count; i++) {
        boc_cown *cown = requests[i].cown;
        if (distinct > 0 && requests[distinct - 1].cown == cown) {
            /* A repeat: the kept slot still holds a reference, so this drop
             * can never be the last one. */
            boc_cown_decref(cown);
            continue;
        }
        boc_request *req = &requests[distinct++];
        req->cown = cown;
        req->owner = b;
        atomic_store_explicit(&req->next, NULL, memory_order_relaxed);
        atomic_store_explicit(&req->scheduled, false, memory_order_relaxed);
        pinned = pinned || (cown->flags & BOC_COWN_PINNED) != 0;
    }
    for (size_t i = 1; i < distinct; i++) {
        /* Ids are unique, so after removing repeats they strictly increase. */
        assert(requests[i - 1].cown->id < requests[i].cown->id);
    }
    b->request_count = (uint32_t)distinct; /* distinct <= slot_count */
    b->pinned = pinned;
}

void boc_schedule(boc_runtime *rt, boc_behavior *b) {
    assert(rt != NULL && b != NULL);
    assert(!b->scheduled && "a behavior can be scheduled only once");
    b->runtime = rt;
    b->scheduled = true;
    boc__requests_prepare(b);
    size_t count = b->request_count;

    /* Live from now: counted before anything can dispatch (and complete) it. */
    boc__live_increment(rt);
    /* Relaxed: the count reaches other threads only through a request's
     * `next` link or a queue, both published with release below. */
    atomic_store_explicit(&b->pending, count + 1, memory_order_relaxed);

    /* Phase 1: enqueue on every cown, in ascending id order. */
    size_t acquired_now = 0;
    for (size_t i = 0; i < count; i++) {
        boc_request *req = &b->requests[i];
        /* acq_rel: release publishes our request's initialised fields to the
         * next enqueuer (which reads them through this pointer) and to the
         * owner of the previous tail; acquire makes the previous tail's fields
         * visible to us, or, when the tail was NULL, pairs with the last
         * owner's releasing CAS so that its work on the cown is visible. */
        boc_request *prev = atomic_exchange_explicit(&req->cown->last, req, memory_order_acq_rel);
        /* Yield point: we are the tail but not yet linked behind `prev`, so a
         * releasing owner that finds `next` NULL sees its tail CAS fail and
         * must spin until we link (cown.c); and when prev is NULL we hold this
         * cown while still unqueued on the later ones. */
        BOC__YIELD(ENQUEUE_SWAPPED);
        if (prev == NULL) {
            acquired_now++;
            continue;
        }
        /* The predecessor cannot complete (and free `prev`) before we link:
         * either it has not dropped its own +1 hold yet (scheduled is false),
         * or it will find the tail swapped on release and wait for our link.
         * Acquire pairs with its phase-2 release store: its phase-1 exchanges
         * on all its cowns happen before our later exchanges, so on every
         * shared cown it stays ahead of us. */
        unsigned rounds = 0;
        while (!atomic_load_explicit(&prev->scheduled, memory_order_acquire)) {
            boc__spin_backoff(&rounds);
        }
        assert(atomic_load_explicit(&prev->next, memory_order_relaxed) == NULL);
        /* Release publishes b (its pending count) to the predecessor's
         * releasing thread, which loads `next` with acquire. */
        atomic_store_explicit(&prev->next, b, memory_order_release);
        /* Yield point: linked here, not yet enqueued on our later cowns.  A
         * behavior that overtook us on one of those now would deadlock with
         * us; the `scheduled` spin above is what stops that. */
        BOC__YIELD(ENQUEUE_LINKED);
    }

    /* Yield point: enqueued everywhere, nothing marked yet; successors on
     * any of our cowns are spinning on `scheduled`. */
    BOC__YIELD(PHASE1_DONE);

    /* Phase 2: we are enqueued everywhere; successors may now link. */
    for (size_t i = 0; i < count; i++) {
        /* Release pairs with a successor's acquire spin (see above). */
        atomic_store_explicit(&b->requests[i].scheduled, true, memory_order_release);
        /* Yield point: some requests marked, others not.  Successors on the
         * marked ones link now and may even be released to, while we still
         * hold our +1, so `b` must stay undispatched (and alive). */
        BOC__YIELD(PHASE2_MARKED);
    }

    /* Yield point: the predecessors may have resolved all of our cowns
     * already; only the +1 hold stops `b` from running yet. */
    BOC__YIELD(SCHEDULE_RESOLVE);

    /* Drop the +1 hold together with the cowns that were free.  From here on
     * `b` may run and be freed by another thread: do not touch it again. */
    boc__behavior_resolve(b, acquired_now + 1);
}

void boc__behavior_resolve(boc_behavior *b, size_t amount) {
    assert(amount > 0);
    /* Yield point: the scheduler dropping its hold and the owners releasing
     * our cowns race to bring `pending` to zero; exactly one dispatches. */
    BOC__YIELD(RESOLVE);
    /* acq_rel: every resolver releases what it did before (the previous
     * owner's body, the scheduler's enqueues) and the one that reaches zero
     * acquires all of it before dispatching; RMWs on one object form a
     * release sequence, so earlier decrements are covered too. */
    size_t before = atomic_fetch_sub_explicit(&b->pending, amount, memory_order_acq_rel);
    assert(before >= amount);
    if (before == amount) {
        boc__dispatch(b);
    }
}

void boc_behavior_complete(boc_behavior *b) {
    assert(b != NULL && b->scheduled);
    assert(atomic_load_explicit(&b->pending, memory_order_relaxed) == 0);
    boc_runtime *rt = b->runtime;
    size_t count = b->request_count;
    for (size_t i = 0; i < count; i++) {
        boc__request_release(&b->requests[i]);
    }
    if (rt->ops.behavior_done != NULL) {
        rt->ops.behavior_done(rt->user, b);
    }
    for (size_t i = 0; i < count; i++) {
        boc_cown_decref(b->requests[i].cown);
    }
    boc_block_free(b, b->alloc_size);
    boc__live_decrement(rt);
}
