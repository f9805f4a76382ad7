/*
 * Private data structures and helpers shared by the libboc source files.
 *
 * Nothing here is part of the public contract (include/boc.h).  It defines the
 * concrete layout of a behavior, a worker and a runtime, the thread-local
 * "which worker am I" record, and the small set of boc__ functions through
 * which the files call each other:
 *   cown.c      ids, reference counts, synchronous holds, releasing a request;
 *   behavior.c  allocation, 2PL scheduling, resolution and completion;
 *   sched.c     worker queues, dispatch, stealing, parking, the worker loop;
 *   pinned.c    the single-consumer lane for main-thread-only behaviors;
 *   runtime.c   lifecycle, quiescence, stats, clock;
 *   yield.c     seeded yield points and the controlled scheduler (testing
 *               only; see boc_yield.h).
 * Blocking pthread calls go through the boc_yield_* wrappers of boc_yield.h:
 * plain pthread calls normally, routed through the controlled scheduler in a
 * -DBOC_YIELD_POINTS build.
 * Every source file includes this header first, so the feature-test macro
 * below is seen before any system header.
 */
#ifndef BOC_INTERNAL_H
#define BOC_INTERNAL_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "boc.h"
#include "boc_yield.h"

#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Size of a cache line on the targets we care about; hot structures that are
 * written by different threads are aligned to it to avoid false sharing. */
#define BOC__CACHE_LINE 64

/* ------------------------------------------------------------ behaviors */

struct boc_behavior {
    /* The runtime it was scheduled on; NULL until boc_schedule. */
    boc_runtime *runtime;
    /* Link in a worker queue or in the pinned lane.  Only touched while
     * holding the lock of the queue the behavior is in. */
    boc_behavior *queue_next;
    /* 2PL resolution count: distinct cowns not yet handed to us, plus the
     * scheduler's own +1 hold.  Whoever brings it to zero dispatches. */
    atomic_size_t pending;
    /* Number of slots given to boc_behavior_new (at most UINT32_MAX: 32
     * bits keep the header at 40 bytes, see boc__payload_offset). */
    uint32_t slot_count;
    /* Number of distinct cowns; valid once scheduled (requests[0..n) are then
     * sorted by strictly ascending cown id). */
    uint32_t request_count;
    /* Set by boc_schedule (by the scheduling thread, before the behavior is
     * published to any other thread). */
    bool scheduled;
    bool pinned;
    /* The size given to boc_block_alloc (for boc_block_free). */
    uint32_t alloc_size;
    /* Then the requests, and the host payload: max-aligned,
     * zero-initialised, at boc__payload_offset(slot_count) (computed, not
     * stored: 8 bytes of every behavior). */
    boc_request requests[];
};

/* Drops `amount` from b->pending; dispatches b if that brought it to zero. */
void boc__behavior_resolve(boc_behavior *b, size_t amount);

/* ----------------------------------------------------------------- cowns */

/* Gives up the cown named by `req` (a behavior's request or a hold): hands it
 * to the next queued behavior, or marks the cown free if nobody waits. */
void boc__request_release(boc_request *req);

/* ------------------------------------------------------------ scheduling */

/* A worker's run queue: a mutex-protected intrusive FIFO. */
typedef struct boc__queue {
    pthread_mutex_t lock;
    /* Oldest queued behavior; NULL when empty.  Protected by `lock`. */
    boc_behavior *head;
    /* Newest queued behavior; meaningful only when head != NULL. */
    boc_behavior *tail;
    /* Number of queued behaviors.  Written only under `lock`; read without it
     * as a hint by thieves and (seq_cst) by a worker about to park. */
    atomic_size_t length;
} boc__queue;

typedef struct boc__worker {
    /* Touched by the owner, by thieves and by dispatchers. */
    alignas(BOC__CACHE_LINE) boc__queue queue;
    boc_runtime *runtime;
    unsigned index;
    pthread_t thread;
    /* Owner-only: where the next steal scan starts. */
    unsigned steal_cursor;
    /* Statistics.  Each is written only by the worker's own thread (so a
     * relaxed load + store is an exact increment) and may be read by any
     * thread at any time (hence atomic). */
    alignas(BOC__CACHE_LINE) _Atomic(uint64_t) behaviors_run;
    _Atomic(uint64_t) pushed_local;
    _Atomic(uint64_t) steals;
    _Atomic(uint64_t) parks;
} boc__worker;

/* What the calling thread is, for boc_current_worker and local dispatch. */
typedef struct boc__thread_state {
    boc_runtime *runtime; /* NULL off-worker */
    int index;            /* -1 off-worker */
} boc__thread_state;

extern _Thread_local boc__thread_state boc__this_thread;

void boc__queue_init(boc__queue *queue);
void boc__queue_destroy(boc__queue *queue);
/* Hands a behavior whose pending count reached zero to whoever runs it. */
void boc__dispatch(boc_behavior *b);
/* Wakes every parked worker (used when stopping). */
void boc__wake_all(boc_runtime *rt);
/* pthread entry point of a worker thread; `arg` is its boc__worker. */
void *boc__worker_main(void *arg);

/* ------------------------------------------------------------ pinned lane */

typedef struct boc__pinned_lane {
    pthread_mutex_t lock;
    /* FIFO of pinned behaviors; protected by `lock`. */
    boc_behavior *head;
    boc_behavior *tail;
    /* Written only under `lock`; readable by anyone. */
    atomic_size_t depth;
    _Atomic(uint64_t) nonempty_since;
#ifndef NDEBUG
    /* Set while a consumer is inside boc_pinned_pop: catches two consumers. */
    atomic_flag consumer_active;
#endif
} boc__pinned_lane;

void boc__pinned_init(boc__pinned_lane *lane);
void boc__pinned_destroy(boc__pinned_lane *lane);
void boc__pinned_push(boc_runtime *rt, boc_behavior *b);

/* ---------------------------------------------------------------- runtime */

typedef enum boc__runtime_state {
    BOC__RUNTIME_NEW,
    BOC__RUNTIME_RUNNING,
    BOC__RUNTIME_STOPPED,
} boc__runtime_state;

struct boc_runtime {
    boc_runtime_ops ops;
    void *user;
    unsigned worker_count;
    boc__worker *workers;
    /* Lifecycle; only touched by the host thread that starts and stops. */
    boc__runtime_state state;
    unsigned threads_created;

    /* Round-robin cursor for dispatches from non-worker threads. */
    alignas(BOC__CACHE_LINE) atomic_uint next_worker;

    /* Parking (see the Dekker argument in sched.c). */
    alignas(BOC__CACHE_LINE) pthread_mutex_t park_lock;
    pthread_cond_t park_cond;
    /* Workers inside the park protocol (between announcing and waking). */
    atomic_uint parked;
    /* Workers scanning for work before they park (see boc__find_work):
     * while one is, a dispatch wakes nobody. */
    atomic_uint searching;
    atomic_bool stopping;

    /* Start-up handshake: the starter waits until every worker_start hook
     * has returned.  Both fields are protected by start_lock. */
    pthread_mutex_t start_lock;
    pthread_cond_t start_cond;
    unsigned workers_reported;
    bool worker_start_failed;

    /* Quiescence: live behaviors, and a condvar (CLOCK_MONOTONIC) for those
     * waiting for the count to reach zero. */
    alignas(BOC__CACHE_LINE) _Atomic(uint64_t) live;
    /* Threads watching for quiescence (boc_runtime_watch_quiescence, and
     * boc_runtime_wait_quiescent while it blocks).  Only while one does is
     * the quiescent hook called and the condvar broadcast: a producer fed
     * by a worker that keeps up brings `live` to zero at nearly every
     * behavior, and the hook's wake-up is a system call.  The Dekker
     * argument is at boc__live_decrement. */
    atomic_uint quiescence_watchers;
    pthread_mutex_t quiescence_lock;
    pthread_cond_t quiescence_cond;

    alignas(BOC__CACHE_LINE) boc__pinned_lane pinned;
};

/* Called by each worker thread once its worker_start hook has returned. */
void boc__worker_report_started(boc_runtime *rt, bool failed);
void boc__live_increment(boc_runtime *rt);
void boc__live_decrement(boc_runtime *rt);

/* ------------------------------------------------------------ spin waits */

/* Tells the CPU we are in a spin-wait loop. */
static inline void boc__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#endif
}

/* One step of a short spin-wait: pause for the first few rounds, then yield
 * the CPU, because the thread we wait for may be descheduled (there can be
 * more runnable threads than cores). */
static inline void boc__spin_backoff(unsigned *rounds) {
    /* Yield point: every spin-wait waits for another thread's progress, so it
     * is where a controlled schedule must hand the token on; in seeded mode a
     * delay here stretches the window the other thread is racing through. */
    BOC__YIELD(SPIN);
    if (*rounds < 64) {
        *rounds += 1;
        boc__cpu_relax();
    } else {
        sched_yield();
    }
}

#endif /* BOC_INTERNAL_H */
