/*
 * The scheduler: per-worker run queues, dispatch, work stealing, parking, and
 * the loop each worker thread runs.
 *
 * Every worker owns a FIFO queue (a mutex-protected intrusive list).  A
 * behavior that becomes runnable on a worker thread of its own runtime goes to
 * that worker's queue (locality: the successor of a behavior usually touches
 * the same cowns); one that becomes runnable anywhere else is spread over the
 * workers round-robin.  A worker pops its own queue in FIFO order; when that
 * is empty it tells the host (worker_idle), scans the other queues for a
 * behavior to steal for a bounded number of rounds, and then parks on a
 * condition variable until a dispatch or a stop wakes it.  The parking
 * protocol cannot lose a wake-up; the argument is next to boc__park.
 */
#define _GNU_SOURCE 1 /* PTHREAD_MUTEX_ADAPTIVE_NP, where glibc has it */
#include "boc_internal.h"

#include <time.h>

/* Steal scans the searching worker makes after running dry, pausing
 * between them; then it goes on scanning, yielding the CPU between scans,
 * until BOC__SEARCH_NS have passed since it began, before it parks.  A
 * thread that feeds the workers one behavior every few microseconds (a
 * loop of @when on the main thread) would otherwise find the worker parked
 * at nearly every dispatch and pay for a futex wake-up each time. */
#define BOC__STEAL_ROUNDS 32
#define BOC__SEARCH_NS 50000
/* In builds with yield points, the timed part of the search is this many
 * scans instead (see boc__keep_searching). */
#define BOC__SEARCH_SCANS 64

_Thread_local boc__thread_state boc__this_thread = {NULL, -1};

/* Increments an owner-only statistics counter.  Only the owning worker writes
 * it, so a relaxed load + store cannot lose an update; readers on other
 * threads only need an untorn value, which relaxed atomics give. */
static void boc__stat_bump(_Atomic(uint64_t) *counter) {
    uint64_t value = atomic_load_explicit(counter, memory_order_relaxed);
    atomic_store_explicit(counter, value + 1, memory_order_relaxed);
}

/* ----------------------------------------------------------------- queues */

void boc__queue_init(boc__queue *queue) {
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
    int rc = pthread_mutex_init(&queue->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    assert(rc == 0);
    (void)rc;
    queue->head = NULL;
    queue->tail = NULL;
    atomic_init(&queue->length, 0);
}

void boc__queue_destroy(boc__queue *queue) { pthread_mutex_destroy(&queue->lock); }

static void boc__queue_push(boc__queue *queue, boc_behavior *b) {
    b->queue_next = NULL;
    boc_yield_mutex_lock(&queue->lock);
    if (queue->head == NULL) {
        queue->head = b;
    } else {
        queue->tail->queue_next = b;
    }
    queue->tail = b;
    /* Only lock holders write `length`, so the relaxed load is exact.  The
     * store is seq_cst: it is the "I published work" half of the Dekker
     * pattern with parking workers (see boc__park). */
    size_t length = atomic_load_explicit(&queue->length, memory_order_relaxed);
    atomic_store_explicit(&queue->length, length + 1, memory_order_seq_cst);
    pthread_mutex_unlock(&queue->lock);
}

static boc_behavior *boc__queue_pop(boc__queue *queue) {
    /* Relaxed hint: skip the lock when the queue looks empty.  A stale zero
     * only delays us; before parking, a worker re-reads every length with
     * seq_cst, and a later relaxed read cannot go back to an older value. */
    if (atomic_load_explicit(&queue->length, memory_order_relaxed) == 0) {
        return NULL;
    }
    /* Yield point: the hint said non-empty, but the owner or a thief may
     * empty the queue before we lock; the locked pop must cope. */
    BOC__YIELD(QUEUE_POP);
    boc_yield_mutex_lock(&queue->lock);
    boc_behavior *b = queue->head;
    if (b != NULL) {
        queue->head = b->queue_next;
        if (queue->head == NULL) {
            queue->tail = NULL;
        }
        b->queue_next = NULL;
        /* Relaxed: a decrement never needs to wake anyone, and a parker that
         * reads the old, larger value merely skips one sleep. */
        size_t length = atomic_load_explicit(&queue->length, memory_order_relaxed);
        assert(length > 0);
        atomic_store_explicit(&queue->length, length - 1, memory_order_relaxed);
    } else {
        assert(atomic_load_explicit(&queue->length, memory_order_relaxed) == 0);
    }
    pthread_mutex_unlock(&queue->lock);
    return b;
}

/* ---------------------------------------------------------------- parking */

/*
 * Parking without lost wake-ups (a Dekker-style handshake).
 *
 * A parking worker W does, holding park_lock:
 *     (W1) parked += 1                       seq_cst
 *     (W2) read every queue length           seq_cst
 *     (W3) if all are zero (and not stopping): wait on park_cond
 * A dispatcher D does:
 *     (D1) push; length += 1                 seq_cst store
 *     (D2) read parked                       seq_cst
 *     (D3) if non-zero: lock park_lock, signal park_cond, unlock
 *
 * All four marked operations are seq_cst, so they appear in one total order.
 * If D2 reads 0, D2 precedes W1 in that order, hence D1 precedes W2, and W2
 * sees the pushed behavior: W does not sleep.  Otherwise D signals, and it
 * can only take park_lock while W is not between W1 and the atomic
 * unlock-and-sleep of W3: either W is already waiting (and is woken, or
 * another waiter is, who will run or steal the behavior), or W has not yet
 * taken park_lock (then D's unlock happens before W's lock, and W2 sees the
 * push).  In no interleaving does a behavior stay queued while every worker
 * sleeps.  Spurious wake-ups are harmless: a woken worker just scans again.
 *
 * Searching.  A worker that ran dry spins for a while (boc__find_work)
 * before it parks; while it does, it is counted in `searching`, and a
 * dispatcher that sees a searcher wakes nobody: the searcher will take the
 * work.  Waking a parked worker costs the dispatcher a futex call and the
 * woken thread a trip through the kernel, for work the searcher would have
 * found a moment later; and on a machine with fewer cores than threads, an
 * extra awake worker takes CPU from the thread that produces the work.  So
 * the dispatcher does, after D1:
 *     (D2') read searching                   seq_cst
 *     (D2..D3) only if it is zero
 * and a searcher S stops searching with:
 *     (S1) searching -= 1                    seq_cst
 *     (S2) read every queue length           seq_cst
 *     (S3) if one is non-zero, search again; else park (W1..W3)
 * If D2' read a count that includes S, D2' precedes S1 in the total order,
 * hence D1 precedes S2, and S sees the push (or someone already took it).
 * Only one worker searches at a time (a second one that runs dry parks
 * straight away): on a machine with few cores, two spinning workers starve
 * the thread that feeds them.  A searcher that finds work while more is
 * queued and a worker is parked wakes one, so that a burst pushed while it
 * searched still spreads over the workers.
 */
static bool boc__any_queued(boc_runtime *rt) {
    for (unsigned i = 0; i < rt->worker_count; i++) {
        /* seq_cst: step W2 of the handshake above. */
        if (atomic_load_explicit(&rt->workers[i].queue.length, memory_order_seq_cst) != 0) {
            return true;
        }
    }
    return false;
}

static void boc__wake_one(boc_runtime *rt) {
    /* seq_cst: step D2 of the handshake above. */
    if (atomic_load_explicit(&rt->parked, memory_order_seq_cst) == 0) {
        return;
    }
    /* Step D3.  Taking and releasing park_lock is what orders us with a
     * parker (it is either waiting already, or has not yet re-checked the
     * queues); the signal itself may come after the unlock, which spares
     * the woken worker from blocking at once on the lock we still held. */
    boc_yield_mutex_lock(&rt->park_lock);
    pthread_mutex_unlock(&rt->park_lock);
    boc_yield_cond_signal(&rt->park_cond);
}

void boc__wake_all(boc_runtime *rt) {
    boc_yield_mutex_lock(&rt->park_lock);
    boc_yield_cond_broadcast(&rt->park_cond);
    pthread_mutex_unlock(&rt->park_lock);
}

/* Sleeps until woken, unless work or a stop is already visible.  Returns
 * false when the worker should exit (stopping, and no queued work). */
static bool boc__park(boc__worker *self) {
    boc_runtime *rt = self->runtime;
    bool keep_running = true;
    boc_yield_mutex_lock(&rt->park_lock);
    /* seq_cst: step W1 of the handshake above. */
    atomic_fetch_add_explicit(&rt->parked, 1, memory_order_seq_cst);
    /* Yield point: announced (W1) but not re-checked (W2).  A dispatcher
     * that reads `parked` now will signal, and must block on park_lock until
     * we either see its push or wait on the condvar. */
    BOC__YIELD(PARK_ANNOUNCED);
    if (boc__any_queued(rt)) {
        /* A dispatch raced with us: go back and take it. */
    } else if (atomic_load_explicit(&rt->stopping, memory_order_acquire)) {
        /* Relaxed would do as well: boc_runtime_stop sets the flag before it
         * takes park_lock to broadcast, so the lock orders the two. */
        keep_running = false;
    } else {
        boc__stat_bump(&self->parks);
        /* Yield point: every queue looked empty (W2), not yet asleep (W3).
         * A push from now on sees `parked` > 0 and needs park_lock to
         * signal, which it cannot get before we wait. */
        BOC__YIELD(PARK_CHECKED);
        boc_yield_cond_wait(&rt->park_cond, &rt->park_lock, NULL);
    }
    /* Yield point: awake (or never slept) but still counted in `parked`:
     * a dispatcher may send a spare signal, which must be harmless. */
    BOC__YIELD(PARK_WOKEN);
    /* Relaxed: a dispatcher that still sees us counted only sends a spare
     * signal, and we scan every queue again before sleeping next time. */
    atomic_fetch_sub_explicit(&rt->parked, 1, memory_order_relaxed);
    pthread_mutex_unlock(&rt->park_lock);
    return keep_running;
}

/* --------------------------------------------------------------- dispatch */

void boc__dispatch(boc_behavior *b) {
    boc_runtime *rt = b->runtime;
    assert(rt != NULL);
    assert(atomic_load_explicit(&b->pending, memory_order_relaxed) == 0);
    if (b->pinned) {
        boc__pinned_push(rt, b);
        return;
    }
    if (boc__this_thread.runtime == rt) {
        boc__worker *self = &rt->workers[boc__this_thread.index];
        /* Counted before the push: once queued, `b` may be stolen and
         * completed, and a quiescence waiter must then see this count. */
        boc__stat_bump(&self->pushed_local);
        boc__queue_push(&self->queue, b);
    } else {
        /* Relaxed: the cursor only balances load; any value is correct. */
        unsigned ticket = atomic_fetch_add_explicit(&rt->next_worker, 1, memory_order_relaxed);
        boc__queue_push(&rt->workers[ticket % rt->worker_count].queue, b);
    }
    /* Yield point: pushed (D1), `parked` not yet read (D2).  A worker may
     * announce parking in between; the seq_cst handshake must make one of
     * us see the other.  Also: `b` may already be running (or freed). */
    BOC__YIELD(DISPATCH_PUSHED);
    /* seq_cst: step D2' above.  A searcher will see the push. */
    if (atomic_load_explicit(&rt->searching, memory_order_seq_cst) != 0) {
        return;
    }
    boc__wake_one(rt);
}

/* ------------------------------------------------------------ worker loop */

/* Takes one behavior from another worker's queue, scanning the victims from a
 * rotating start so that thieves do not all hammer the same queue. */
static boc_behavior *boc__steal(boc__worker *self) {
    boc_runtime *rt = self->runtime;
    unsigned count = rt->worker_count;
    unsigned start = self->steal_cursor++;
    for (unsigned i = 0; i < count; i++) {
        unsigned victim = (start + i) % count;
        if (victim == self->index) {
            continue;
        }
        /* Yield point: thieves and the victim's owner race for its oldest
         * behavior; the queue lock must hand it to exactly one. */
        BOC__YIELD(STEAL);
        boc_behavior *b = boc__queue_pop(&rt->workers[victim].queue);
        if (b != NULL) {
            boc__stat_bump(&self->steals);
            return b;
        }
    }
    return NULL;
}

/* Ends this worker's search (S1..S2 in the comment above the parking
 * code): true when some queue holds work after all. */
static bool boc__stop_searching(boc_runtime *rt) {
    /* seq_cst: step S1. */
    atomic_fetch_sub_explicit(&rt->searching, 1, memory_order_seq_cst);
    /* Yield point: no longer counted as searching, queues not yet re-read
     * (S2): a dispatch now must either be seen below or wake a parker. */
    BOC__YIELD(SEARCH_ENDED);
    return boc__any_queued(rt); /* step S2 */
}

/* Whether the searching worker scans once more before it parks, having
 * made its steal rounds: until BOC__SEARCH_NS have passed since `began`,
 * yielding the CPU before each scan.  Builds with yield points count scans
 * instead (handing the token on before each): a controlled schedule must
 * not depend on the clock, or replaying a seed could take another path. */
static bool boc__keep_searching(const struct timespec *began, unsigned *scans) {
#ifdef BOC_YIELD_POINTS
    (void)began;
    if (*scans >= BOC__SEARCH_SCANS) {
        return false;
    }
    (*scans)++;
    boc_yield_spin();
    return true;
#else
    (void)scans;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t spent =
        (int64_t)(now.tv_sec - began->tv_sec) * 1000000000 + (now.tv_nsec - began->tv_nsec);
    if (spent >= BOC__SEARCH_NS) {
        return false;
    }
    sched_yield(); /* whoever feeds us may be waiting for this core */
    return true;
#endif
}

/* Finds the next behavior for a worker whose own queue ran dry: own queue
 * (a round-robin dispatch may have refilled it), then stealing for a bounded
 * number of rounds as the one searching worker, then parking.  Returns NULL
 * when the runtime stops. */
static boc_behavior *boc__find_work(boc__worker *self) {
    boc_runtime *rt = self->runtime;
    unsigned rounds = 0;
    unsigned backoff = 0;
    bool searching = false;
    unsigned scans = 0;
    struct timespec began = {0, 0};
    for (;;) {
        boc_behavior *b = boc__queue_pop(&self->queue);
        if (b == NULL) {
            b = boc__steal(self);
        }
        if (b != NULL) {
            /* The work came while we searched, so no dispatcher woke anyone
             * for it: if more is waiting, wake a parked worker to share it
             * (stop_searching says whether any queue still holds work). */
            if (searching && boc__stop_searching(rt)) {
                boc__wake_one(rt);
            }
            return b;
        }
        /* Relaxed hint: when stopping, skip the steal rounds; boc__park
         * re-checks the flag under the park lock. */
        bool stopping = atomic_load_explicit(&rt->stopping, memory_order_relaxed);
        if (!searching && !stopping && rounds == 0) {
            /* Become the searcher, unless another worker is one.  The count
             * only chooses who spins: the seq_cst decrement and re-check in
             * stop_searching carry the wake-up argument, and a dispatcher
             * reading the count sees this increment or an older value (then
             * it wakes a parker, as without searching). */
            unsigned none = 0;
            searching = atomic_compare_exchange_strong_explicit(
                &rt->searching, &none, 1, memory_order_seq_cst, memory_order_relaxed);
        }
        if (searching && !stopping && rounds < BOC__STEAL_ROUNDS) {
            rounds++;
            boc__spin_backoff(&backoff);
            if (rounds == BOC__STEAL_ROUNDS) {
                clock_gettime(CLOCK_MONOTONIC, &began);
            }
            continue;
        }
        if (searching && !stopping && boc__keep_searching(&began, &scans)) {
            continue;
        }
        if (searching) {
            searching = false;
            if (boc__stop_searching(rt)) {
                rounds = 0;
                backoff = 0;
                scans = 0;
                continue; /* a dispatch raced with the end of our search */
            }
        }
        /* Yield point: the scans found nothing; a dispatch landing now must
         * still be seen by the park's re-check (W2) or wake us. */
        BOC__YIELD(PARK_ENTER);
        if (!boc__park(self)) {
            return NULL;
        }
        rounds = 0;
        backoff = 0;
    }
}

static void boc__worker_loop(boc__worker *self, void *context) {
    boc_runtime *rt = self->runtime;
    const boc_runtime_ops *ops = &rt->ops;
    for (;;) {
        boc_behavior *b = boc__queue_pop(&self->queue);
        if (b == NULL) {
            /* worker_idle and worker_busy strictly alternate; the worker is
             * always "busy" again before it runs a body or stops. */
            if (ops->worker_idle != NULL) {
                ops->worker_idle(rt->user, context);
            }
            b = boc__find_work(self);
            if (ops->worker_busy != NULL) {
                ops->worker_busy(rt->user, context);
            }
            if (b == NULL) {
                return;
            }
        }
        assert(!b->pinned);
        ops->run(rt->user, b, context);
        /* Yield point: the body is done but the cowns are still held, with
         * successors queued (or enqueueing) behind them. */
        BOC__YIELD(WORKER_RAN);
        /* Counted before completion, so that a thread that observes
         * quiescence (which completion may cause) also sees this count. */
        boc__stat_bump(&self->behaviors_run);
        boc_behavior_complete(b);
    }
}

void *boc__worker_main(void *arg) {
    boc__worker *self = arg;
    boc_runtime *rt = self->runtime;
    boc__this_thread.runtime = rt;
    boc__this_thread.index = (int)self->index;
    boc_yield_set_identity(BOC_YIELD_ROLE_WORKER, self->index);

    bool failed = false;
    void *context = NULL;
    if (rt->ops.worker_start != NULL) {
        context = rt->ops.worker_start(rt->user, self->index, &failed);
    }
    boc__worker_report_started(rt, failed);
    /* A worker whose start hook failed never runs and never calls
     * worker_stop: the hook cleans up after itself. */
    if (!failed) {
        boc__worker_loop(self, context);
        if (rt->ops.worker_stop != NULL) {
            rt->ops.worker_stop(rt->user, self->index, context);
        }
    }
    boc__this_thread.runtime = NULL;
    boc__this_thread.index = -1;
    return NULL;
}
