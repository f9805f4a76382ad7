/*
 * Cowns: identity, reference counting, and the release half of the MCS-style
 * queue that every cown carries.
 *
 * A cown's queue is a singly linked list of requests (boc_request), each
 * owned by a behavior or by a synchronous hold.  `cown->last` is the tail;
 * the head is the request that currently owns the cown.  Enqueueing (in
 * behavior.c) swaps the tail and then links the predecessor's `next`;
 * releasing (here) either swings the tail back to NULL when nobody waits or
 * hands the cown to the linked successor.  A synchronous hold is a request
 * with no behavior that is only ever installed on an empty queue.
 */
#include "boc_internal.h"

/* Source of cown ids; starts at 1 so that 0 is never a valid id. */
static _Atomic(uint64_t) boc__next_cown_id = 1;

void boc_cown_init(boc_cown *cown, uint32_t flags, void (*destroy)(boc_cown *)) {
    assert(cown != NULL);
    atomic_init(&cown->last, NULL);
    atomic_init(&cown->refcount, 1);
    /* Relaxed is enough: the atomic read-modify-write alone makes every id
     * unique and gives them one increasing order; no other memory is
     * published through this counter (the cown itself reaches other threads
     * through whatever hands them the pointer). */
    cown->id = atomic_fetch_add_explicit(&boc__next_cown_id, 1, memory_order_relaxed);
    assert(cown->id != 0);
    cown->flags = flags;
    cown->destroy = destroy;
}

void boc_cown_incref(boc_cown *cown) {
    /* Relaxed: the caller already owns a reference, so the count cannot reach
     * zero concurrently, and taking a reference publishes nothing. */
    size_t before = atomic_fetch_add_explicit(&cown->refcount, 1, memory_order_relaxed);
    assert(before > 0);
    (void)before;
}

bool boc_cown_try_incref(boc_cown *cown) {
    /* Relaxed, on success and failure: every change of the count is an
     * atomic read-modify-write, so they form one modification order; a
     * successful CAS from n > 0 puts our increment before the decrement
     * that reaches zero, so destroy cannot start until we drop ours (its
     * release and the acquire fence in decref order our uses first).  A
     * failed take reads zero and touches nothing more.  Nothing else is
     * published through the count. */
    size_t n = atomic_load_explicit(&cown->refcount, memory_order_relaxed);
    while (n > 0) {
        if (atomic_compare_exchange_weak_explicit(&cown->refcount, &n, n + 1, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            return true;
        }
    }
    return false;
}

void boc_cown_decref(boc_cown *cown) {
    /* Release: every use of the cown by this thread happens before the drop.
     * The thread that drops the last reference adds an acquire fence so that
     * all those uses (from every thread) happen before destroy. */
    size_t before = atomic_fetch_sub_explicit(&cown->refcount, 1, memory_order_release);
    assert(before > 0);
    if (before == 1) {
        atomic_thread_fence(memory_order_acquire);
        /* Nobody can be queued on a cown that nobody references. */
        assert(atomic_load_explicit(&cown->last, memory_order_relaxed) == NULL);
        if (cown->destroy != NULL) {
            cown->destroy(cown);
        }
    }
}

void boc__request_release(boc_request *req) {
    boc_cown *cown = req->cown;
    /* Acquire pairs with the successor's release store of `next`, so that the
     * successor's initialisation (its pending count) is visible to us before
     * we resolve it. */
    boc_behavior *next = atomic_load_explicit(&req->next, memory_order_acquire);
    if (next == NULL) {
        /* Yield point: we saw no successor; one may swap the tail now, so the
         * CAS below fails although `next` is still NULL. */
        BOC__YIELD(RELEASE_NO_NEXT);
        boc_request *expected = req;
        /* If we are still the tail, nobody waits: the cown becomes free.
         * Release on success publishes everything done under the cown to the
         * next acquirer, whose exchange (acq_rel) or hold CAS reads this NULL.
         * On failure we learn only that someone swapped the tail; the value
         * itself is not used, so relaxed is enough. */
        if (atomic_compare_exchange_strong_explicit(&cown->last, &expected, NULL,
                                                    memory_order_release, memory_order_relaxed)) {
            return;
        }
        /* A successor swapped the tail after our load of `next` but has not
         * linked itself yet.  It only waits for our `scheduled` flag, which is
         * long set, so the link is imminent.  Acquire as above. */
        /* Yield point: between the failed CAS and the spin; the successor
         * may be descheduled right before linking. */
        BOC__YIELD(RELEASE_CAS_FAILED);
        unsigned rounds = 0;
        while ((next = atomic_load_explicit(&req->next, memory_order_acquire)) == NULL) {
            boc__spin_backoff(&rounds);
        }
    }
    /* The successor now owns the cown; our release of it happens before its
     * body through the acq_rel decrement of its pending count. */
    boc__behavior_resolve(next, 1);
}

bool boc_cown_try_hold(boc_cown *cown, boc_request *req) {
    assert(cown != NULL && req != NULL);
    req->cown = cown;
    req->owner = NULL;
    /* Relaxed: `req` is not yet visible to any other thread; the CAS below
     * publishes these stores. */
    atomic_store_explicit(&req->next, NULL, memory_order_relaxed);
    /* A hold never enqueues on several cowns, so it is born "scheduled":
     * successors may link behind it at once. */
    atomic_store_explicit(&req->scheduled, true, memory_order_relaxed);
    boc_request *expected = NULL;
    /* Yield point: the hold's CAS races with enqueuers' exchanges; only one
     * of them may find the queue empty. */
    BOC__YIELD(HOLD_TRY);
    /* Success: acquire pairs with the previous owner's releasing CAS, so its
     * work on the cown is visible to the holder; release publishes `req`'s
     * fields to successors, which read them after their exchange (acq_rel).
     * Failure: the cown is busy; the observed tail is not used (relaxed). */
    if (!atomic_compare_exchange_strong_explicit(&cown->last, &expected, req, memory_order_acq_rel,
                                                 memory_order_relaxed)) {
        return false;
    }
    /* The hold keeps the cown alive until boc_cown_unhold. */
    boc_cown_incref(cown);
    return true;
}

bool boc_cown_hold_contended(boc_request *req) {
    assert(req != NULL && req->owner == NULL);
    /* Relaxed: the answer is advisory and no data is read through it.  A
     * successor is visible either once linked (`next`) or, before that, as
     * soon as it has swapped the cown's tail away from us. */
    if (atomic_load_explicit(&req->next, memory_order_relaxed) != NULL) {
        return true;
    }
    return atomic_load_explicit(&req->cown->last, memory_order_relaxed) != req;
}

void boc_cown_unhold(boc_request *req) {
    assert(req != NULL && req->owner == NULL);
    boc_cown *cown = req->cown;
    boc__request_release(req);
    boc_cown_decref(cown);
}
