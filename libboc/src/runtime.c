/*
 * The runtime object: creation, starting and stopping the worker threads,
 * the live-behavior count and quiescence waits, statistics, and the clock.
 *
 * Start-up is a handshake: boc_runtime_start creates every worker thread and
 * then waits until each has reported that its worker_start hook returned; if
 * any hook (or thread creation) failed, it stops and joins the threads it made
 * and returns -1.  Stopping sets a flag, wakes every parked worker and joins
 * them all; each worker calls worker_stop on its own thread first.  A stopped
 * runtime may be started again.
 *
 * Quiescence: `live` counts behaviors from boc_schedule until their
 * completion.  The completion that brings it to zero wakes every thread in
 * boc_runtime_wait_quiescent and then calls the host's quiescent hook.
 */
#include "boc_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Upper bound on worker_count accepted by boc_runtime_new. */
#define BOC__MAX_WORKERS 65536u

uint64_t boc_now_ns(void) {
    struct timespec now;
    int rc = clock_gettime(CLOCK_MONOTONIC, &now);
    assert(rc == 0);
    (void)rc;
    return (uint64_t)now.tv_sec * UINT64_C(1000000000) + (uint64_t)now.tv_nsec;
}

int boc_current_worker(void) { return boc__this_thread.index; }

/* ------------------------------------------------------------- lifecycle */

/* Creates the quiescence condvar on CLOCK_MONOTONIC, so that timed waits are
 * not disturbed by wall-clock changes. */
static int boc__monotonic_cond_init(pthread_cond_t *cond) {
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        return -1;
    }
    int rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (rc == 0) {
        rc = pthread_cond_init(cond, &attr);
    }
    pthread_condattr_destroy(&attr);
    return rc == 0 ? 0 : -1;
}

boc_runtime *boc_runtime_new(unsigned worker_count, const boc_runtime_ops *ops, void *user) {
    if (worker_count == 0 || ops == NULL || ops->run == NULL) {
        return NULL;
    }
    /* A sanity cap (far above any real machine) that also keeps the worker
     * array's size and the int worker index from overflowing. */
    if (worker_count > BOC__MAX_WORKERS) {
        return NULL;
    }
    /* Both sizes are multiples of the cache line, because the structs contain
     * cache-line-aligned members: aligned_alloc requires that. */
    boc_runtime *rt = aligned_alloc(alignof(boc_runtime), sizeof(boc_runtime));
    if (rt == NULL) {
        return NULL;
    }
    memset(rt, 0, sizeof *rt);
    rt->workers = aligned_alloc(alignof(boc__worker), worker_count * sizeof(boc__worker));
    if (rt->workers == NULL) {
        free(rt);
        return NULL;
    }
    memset(rt->workers, 0, worker_count * sizeof(boc__worker));

    /* Synchronisation objects: default mutexes and condvars cannot fail to
     * initialise on the platforms we support except on resource exhaustion;
     * treat that like out-of-memory. */
    int failures = 0;
    failures += pthread_mutex_init(&rt->park_lock, NULL) != 0;
    failures += pthread_cond_init(&rt->park_cond, NULL) != 0;
    failures += pthread_mutex_init(&rt->start_lock, NULL) != 0;
    failures += pthread_cond_init(&rt->start_cond, NULL) != 0;
    failures += pthread_mutex_init(&rt->quiescence_lock, NULL) != 0;
    failures += boc__monotonic_cond_init(&rt->quiescence_cond) != 0;
    if (failures != 0) {
        free(rt->workers);
        free(rt);
        return NULL;
    }

    rt->ops = *ops;
    rt->user = user;
    rt->worker_count = worker_count;
    rt->state = BOC__RUNTIME_NEW;
    rt->threads_created = 0;
    atomic_init(&rt->next_worker, 0);
    atomic_init(&rt->parked, 0);
    atomic_init(&rt->searching, 0);
    atomic_init(&rt->quiescence_watchers, 0);
    atomic_init(&rt->stopping, false);
    rt->workers_reported = 0;
    rt->worker_start_failed = false;
    atomic_init(&rt->live, 0);
    boc__pinned_init(&rt->pinned);

    for (unsigned i = 0; i < worker_count; i++) {
        boc__worker *worker = &rt->workers[i];
        boc__queue_init(&worker->queue);
        worker->runtime = rt;
        worker->index = i;
        worker->steal_cursor = i + 1;
        atomic_init(&worker->behaviors_run, 0);
        atomic_init(&worker->pushed_local, 0);
        atomic_init(&worker->steals, 0);
        atomic_init(&worker->parks, 0);
    }
    return rt;
}

unsigned boc_runtime_worker_count(const boc_runtime *rt) {
    assert(rt != NULL);
    return rt->worker_count;
}

void boc__worker_report_started(boc_runtime *rt, bool failed) {
    boc_yield_mutex_lock(&rt->start_lock);
    rt->workers_reported++;
    if (failed) {
        rt->worker_start_failed = true;
    }
    boc_yield_cond_broadcast(&rt->start_cond);
    pthread_mutex_unlock(&rt->start_lock);
}

/* Tells every created worker thread to exit and joins them all. */
static void boc__stop_threads(boc_runtime *rt) {
    /* Release (ordered before the broadcast's lock): a parking worker reads
     * the flag under park_lock, so it either sees it or is already waiting
     * and receives the broadcast. */
    atomic_store_explicit(&rt->stopping, true, memory_order_release);
    boc__wake_all(rt);
    for (unsigned i = 0; i < rt->threads_created; i++) {
        int rc = boc_yield_thread_join(rt->workers[i].thread);
        assert(rc == 0);
        (void)rc;
    }
    rt->threads_created = 0;
}

int boc_runtime_start(boc_runtime *rt) {
    assert(rt != NULL);
    if (rt->state == BOC__RUNTIME_RUNNING) {
        return 0;
    }
    assert(rt->threads_created == 0);
    /* Relaxed: no worker thread exists yet; pthread_create orders this store
     * before everything the new threads do. */
    atomic_store_explicit(&rt->stopping, false, memory_order_relaxed);
    boc_yield_mutex_lock(&rt->start_lock);
    rt->workers_reported = 0;
    rt->worker_start_failed = false;
    pthread_mutex_unlock(&rt->start_lock);

    bool create_failed = false;
    for (unsigned i = 0; i < rt->worker_count; i++) {
        if (boc_yield_thread_create(&rt->workers[i].thread, boc__worker_main, &rt->workers[i]) !=
            0) {
            create_failed = true;
            break;
        }
        rt->threads_created++;
    }

    boc_yield_mutex_lock(&rt->start_lock);
    while (rt->workers_reported < rt->threads_created) {
        boc_yield_cond_wait(&rt->start_cond, &rt->start_lock, NULL);
    }
    bool failed = create_failed || rt->worker_start_failed;
    pthread_mutex_unlock(&rt->start_lock);

    if (failed) {
        boc__stop_threads(rt);
        rt->state = BOC__RUNTIME_STOPPED;
        return -1;
    }
    rt->state = BOC__RUNTIME_RUNNING;
    return 0;
}

void boc_runtime_stop(boc_runtime *rt) {
    assert(rt != NULL);
    if (rt->state != BOC__RUNTIME_RUNNING) {
        return;
    }
    /* A worker cannot join itself. */
    assert(boc__this_thread.runtime != rt && "boc_runtime_stop called on one of its workers");
    boc__stop_threads(rt);
    rt->state = BOC__RUNTIME_STOPPED;
}

void boc_runtime_free(boc_runtime *rt) {
    if (rt == NULL) {
        return;
    }
    boc_runtime_stop(rt);
    assert(rt->threads_created == 0);
    for (unsigned i = 0; i < rt->worker_count; i++) {
        boc__queue_destroy(&rt->workers[i].queue);
    }
    boc__pinned_destroy(&rt->pinned);
    /* The workers are gone; what they freed to the shared stacks (see
     * blocks.c) goes back to malloc. */
    boc_blocks_trim();
    pthread_mutex_destroy(&rt->park_lock);
    pthread_cond_destroy(&rt->park_cond);
    pthread_mutex_destroy(&rt->start_lock);
    pthread_cond_destroy(&rt->start_cond);
    pthread_mutex_destroy(&rt->quiescence_lock);
    pthread_cond_destroy(&rt->quiescence_cond);
    free(rt->workers);
    free(rt);
}

/* ------------------------------------------------------------ quiescence */

void boc__live_increment(boc_runtime *rt) {
    /* Relaxed: the increment is sequenced before anything that could lead to
     * this behavior's decrement, so the count never dips below the truth; and
     * it publishes nothing (waiters care only about reaching zero). */
    atomic_fetch_add_explicit(&rt->live, 1, memory_order_relaxed);
}

void boc__live_decrement(boc_runtime *rt) {
    /* Release: the completed behavior (and all its effects) happens before a
     * waiter that acquires the zero.  Acquire: the thread reaching zero calls
     * the quiescent hook after every other completion. */
    /* Yield point: the behavior is complete but still counted; a waiter
     * must not return before this decrement. */
    BOC__YIELD(LIVE_DECREMENT);
    uint64_t before = atomic_fetch_sub_explicit(&rt->live, 1, memory_order_acq_rel);
    assert(before > 0);
    if (before != 1) {
        return;
    }
    /* Yield point: the count is zero but nobody is woken yet; a waiter that
     * checks now, or is about to sleep, must not miss it. */
    BOC__YIELD(LIVE_ZERO);
    /* Nobody watching, nobody to wake (the common case while a producer
     * feeds a worker that keeps up).  No lost wake-up, by the seq_cst
     * fences (a Dekker pattern): a watcher W does
     *     (W1) quiescence_watchers += 1; (W2) fence; (W3) read `live`
     * and we did (D1) the decrement to zero above, then do (D2) fence;
     * (D3) read quiescence_watchers.  The fences are totally ordered.  If
     * W2 comes first, D3 sees W1 and we wake W.  If D2 comes first, W3
     * sees D1 (or a later increment, whose own decrement then comes after
     * W2 and sees W1): W does not sleep through this zero. */
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&rt->quiescence_watchers, memory_order_relaxed) == 0) {
        return;
    }
    /* No lost wake-up: a waiter checks `live` while holding quiescence_lock
     * and sleeps atomically with releasing it.  We reached zero before taking
     * the lock, so either the waiter's check comes after our unlock (and sees
     * zero), or it is already asleep when we broadcast. */
    boc_yield_mutex_lock(&rt->quiescence_lock);
    boc_yield_cond_broadcast(&rt->quiescence_cond);
    pthread_mutex_unlock(&rt->quiescence_lock);
    if (rt->ops.quiescent != NULL) {
        rt->ops.quiescent(rt->user);
    }
}

void boc_runtime_watch_quiescence(boc_runtime *rt, bool watching) {
    assert(rt != NULL);
    if (watching) {
        /* W1 and W2 of the argument in boc__live_decrement: the caller's
         * next read of `live` comes after the fence. */
        atomic_fetch_add_explicit(&rt->quiescence_watchers, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst);
    } else {
        /* Relaxed: once the watcher stops looking, a spare wake-up or a
         * missing one are both harmless. */
        unsigned before =
            atomic_fetch_sub_explicit(&rt->quiescence_watchers, 1, memory_order_relaxed);
        assert(before > 0);
        (void)before;
    }
}

uint64_t boc_runtime_live(const boc_runtime *rt) {
    assert(rt != NULL);
    /* Acquire: a caller that reads zero sees every completed behavior. */
    return atomic_load_explicit(&rt->live, memory_order_acquire);
}

int boc_runtime_wait_quiescent(boc_runtime *rt, int64_t timeout_ns) {
    assert(rt != NULL);
    /* Acquire throughout: returning 0 must make every completed behavior's
     * effects visible to the caller (pairs with boc__live_decrement). */
    if (atomic_load_explicit(&rt->live, memory_order_acquire) == 0) {
        return 0;
    }
    if (timeout_ns == 0) {
        return 1;
    }
    struct timespec deadline = {0, 0};
    if (timeout_ns > 0) {
        uint64_t at = boc_now_ns() + (uint64_t)timeout_ns;
        deadline.tv_sec = (time_t)(at / UINT64_C(1000000000));
        deadline.tv_nsec = (long)(at % UINT64_C(1000000000));
    }
    int result = 0;
    /* Yield point: we saw a non-zero count without the lock; the last
     * completion may happen now, and the re-check under the lock must see
     * it (or its broadcast must find us asleep). */
    BOC__YIELD(QUIESCENCE_WAIT);
    boc_runtime_watch_quiescence(rt, true);
    boc_yield_mutex_lock(&rt->quiescence_lock);
    while (atomic_load_explicit(&rt->live, memory_order_acquire) != 0) {
        if (timeout_ns < 0) {
            boc_yield_cond_wait(&rt->quiescence_cond, &rt->quiescence_lock, NULL);
        } else if (boc_yield_cond_wait(&rt->quiescence_cond, &rt->quiescence_lock, &deadline) ==
                   ETIMEDOUT) {
            result = atomic_load_explicit(&rt->live, memory_order_acquire) == 0 ? 0 : 1;
            break;
        }
    }
    pthread_mutex_unlock(&rt->quiescence_lock);
    boc_runtime_watch_quiescence(rt, false);
    return result;
}

/* ------------------------------------------------------------ statistics */

void boc_runtime_stats(const boc_runtime *rt, unsigned index, boc_worker_stats *out) {
    assert(rt != NULL && out != NULL);
    assert(index < rt->worker_count);
    const boc__worker *worker = &rt->workers[index];
    /* Relaxed: each counter is a snapshot; after boc_runtime_stop (join) or a
     * quiescence wait the values are exact, those events supplying the
     * ordering. */
    out->behaviors_run = atomic_load_explicit(&worker->behaviors_run, memory_order_relaxed);
    out->pushed_local = atomic_load_explicit(&worker->pushed_local, memory_order_relaxed);
    out->steals = atomic_load_explicit(&worker->steals, memory_order_relaxed);
    out->parks = atomic_load_explicit(&worker->parks, memory_order_relaxed);
}
