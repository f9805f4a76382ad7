/*
 * libboc: the Behavior-Oriented Concurrency runtime, in plain C11.
 *
 * This header is the whole contract between the runtime and its hosts (the
 * CPython binding in binding/, and the C tests in libboc/tests/).  libboc
 * knows nothing about Python: a behavior is an opaque payload, a set of
 * cowns and a run callback; a worker is an OS thread with start/stop hooks.
 *
 * Concepts
 * --------
 * cown      A concurrently-owned resource.  The host embeds `boc_cown` as the
 *           first member of its own struct and gives it a destroy callback.
 *           Cowns are reference counted and outlive any one runtime.
 * behavior  A unit of work that needs exclusive access to a set of cowns.
 *           It is scheduled with two-phase locking (2PL) over the cowns'
 *           MCS-style queues, in one global order (ascending cown id), with
 *           repeated cowns removed and a +1 hold so that it cannot start
 *           before every enqueue is complete.
 * runtime   A pool of worker threads, one queue per worker, work stealing,
 *           parking, a counter of live behaviors (quiescence), and the
 *           single-consumer "pinned lane" for behaviors that must run on the
 *           host's main thread.
 *
 * Guarantees
 * ----------
 * - Exclusivity: no two running behaviors hold a common cown.
 * - Ordering: if b1 is scheduled before b2 (boc_schedule of b1 returned
 *   before boc_schedule of b2 started, or both from one thread in order) and
 *   they share a cown, b1 runs before b2.
 * - No deadlock: enqueues happen in ascending cown id order.
 */
#ifndef BOC_H
#define BOC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct boc_cown boc_cown;
typedef struct boc_behavior boc_behavior;
typedef struct boc_runtime boc_runtime;
typedef struct boc_request boc_request;

/* ------------------------------------------------------------------ cowns */

/* The cown's behaviors run only on the host's main thread (pinned lane). */
#define BOC_COWN_PINNED 0x1u

/*
 * One slot in a cown's MCS queue.  A behavior owns one request per distinct
 * cown; a synchronous hold (boc_cown_try_hold) owns one on its own.
 */
struct boc_request {
    boc_cown *cown;
    /* The behavior queued directly after this request on the same cown.
     * Written once by that successor's enqueue; read by our release. */
    _Atomic(boc_behavior *) next;
    /* Set (release) when the owning behavior has finished phase 1 of 2PL,
     * i.e. it is enqueued on all of its cowns.  A successor spins on it
     * (acquire) before linking itself, so that no behavior overtakes another
     * on a later cown.  Holds start with it already set. */
    atomic_bool scheduled;
    /* NULL for a synchronous hold. */
    boc_behavior *owner;
};

struct boc_cown {
    /* Tail of the MCS queue of requests; NULL when nobody holds or waits. */
    _Atomic(boc_request *) last;
    /* Strong references.  The cown is destroyed when it reaches zero. */
    atomic_size_t refcount;
    /* Process-wide unique, strictly increasing: the global 2PL order. */
    uint64_t id;
    uint32_t flags;
    /* Called once, from whichever thread drops the last reference. */
    void (*destroy)(boc_cown *cown);
};

/* Initialise an embedded cown: refcount 1, fresh id, empty queue. */
void boc_cown_init(boc_cown *cown, uint32_t flags, void (*destroy)(boc_cown *));
void boc_cown_incref(boc_cown *cown);
/*
 * Takes a reference unless the count is already zero (the cown is being, or
 * has been, destroyed): true when a reference was taken.  For a host that
 * finds cowns through its own index (a list it unlinks a cown from in
 * destroy) rather than through a reference it owns.  The caller must keep
 * the cown's memory valid across the call, e.g. by holding the lock that
 * destroy takes to unlink it; the count never rises from zero, so destroy
 * runs once.  Memory order: relaxed, like boc_cown_incref -- a successful
 * take publishes nothing, and the reference it adds is dropped by
 * boc_cown_decref, whose release (and the last dropper's acquire fence)
 * orders this thread's uses of the cown before destroy.
 */
bool boc_cown_try_incref(boc_cown *cown);
/* Drops one reference; calls cown->destroy when it was the last one. */
void boc_cown_decref(boc_cown *cown);

/*
 * Synchronous hold, for a host thread that wants exclusive access outside a
 * behavior (the Python main thread's `Cown.acquire()`).  Succeeds only if the
 * cown is free right now (its queue is empty): returns true and the cown is
 * held through `req` until boc_cown_unhold.  Never blocks.  Behaviors
 * scheduled on the cown meanwhile queue behind the hold.
 */
bool boc_cown_try_hold(boc_cown *cown, boc_request *req);
/* True when some behavior has queued behind this hold. */
bool boc_cown_hold_contended(boc_request *req);
/* Ends a hold; a queued successor (if any) is resolved and may be dispatched. */
void boc_cown_unhold(boc_request *req);

/* -------------------------------------------------------------- behaviors */

/*
 * A new, unscheduled behavior with room for `cown_count` cowns and
 * `payload_size` bytes of host payload (zeroed, max-aligned).  Returns NULL
 * when out of memory, or when `cown_count` is over UINT32_MAX.  `cown_count`
 * may be 0.
 */
boc_behavior *boc_behavior_new(size_t cown_count, size_t payload_size);
/* Sets slot `index` (< cown_count) and takes a reference on `cown`.  The same
 * cown may be set in several slots; scheduling removes the repeats. */
void boc_behavior_set_cown(boc_behavior *b, size_t index, boc_cown *cown);
void *boc_behavior_payload(boc_behavior *b);
/* True once scheduled if any of its cowns is BOC_COWN_PINNED. */
bool boc_behavior_is_pinned(const boc_behavior *b);
/* Frees a behavior that was never scheduled (drops its cown references).
 * The host releases its own payload resources first. */
void boc_behavior_discard(boc_behavior *b);

/* --------------------------------------------------------------- runtime */

/* Host callbacks.  `user` is the pointer given to boc_runtime_new. */
typedef struct boc_runtime_ops {
    /* On the new worker thread, before it takes work.  Returns the worker's
     * context (may be NULL).  If it sets *failed to true, the runtime start
     * fails (boc_runtime_start returns -1 after joining every thread). */
    void *(*worker_start)(void *user, unsigned index, bool *failed);
    /* On the worker thread, after its last behavior, before it exits. */
    void (*worker_stop)(void *user, unsigned index, void *ctx);
    /* Runs the behavior's body on a worker thread.  The runtime completes the
     * behavior (releases cowns, calls behavior_done, frees it) afterwards. */
    void (*run)(void *user, boc_behavior *b, void *ctx);
    /* The worker found its own queue empty and is about to steal or park;
     * and the matching call when it has found work again.  Either may be
     * NULL.  (The binding releases and re-takes the interpreter's GIL here.) */
    void (*worker_idle)(void *user, void *ctx);
    void (*worker_busy)(void *user, void *ctx);
    /* Releases the host's payload resources.  Any thread; must not block. */
    void (*behavior_done)(void *user, boc_behavior *b);
    /* The pinned lane went from empty to non-empty.  Any thread; may be NULL. */
    void (*pinned_ready)(void *user);
    /* The live-behavior count reached zero while a thread watched for it
     * (boc_runtime_watch_quiescence).  Any thread; may be NULL. */
    void (*quiescent)(void *user);
} boc_runtime_ops;

typedef struct boc_worker_stats {
    uint64_t behaviors_run; /* bodies run by this worker */
    uint64_t pushed_local;  /* behaviors this worker dispatched to itself */
    uint64_t steals;        /* behaviors taken from other workers' queues */
    uint64_t parks;         /* times the worker went to sleep */
} boc_worker_stats;

/* Returns NULL on bad arguments (worker_count == 0, ops->run NULL) or OOM. */
boc_runtime *boc_runtime_new(unsigned worker_count, const boc_runtime_ops *ops, void *user);
/* Spawns the workers and returns once every worker_start hook has returned.
 * 0 on success; -1 if a thread could not be created or a hook failed (then
 * no worker is left running). */
int boc_runtime_start(boc_runtime *rt);
unsigned boc_runtime_worker_count(const boc_runtime *rt);

/*
 * Schedules `b` on `rt`: 2PL enqueue, then dispatch when every cown is
 * available.  Takes ownership of `b`.  Any thread.  The behavior counts as
 * live from now until it has completed.
 */
void boc_schedule(boc_runtime *rt, boc_behavior *b);

/* Releases the behavior's cowns (handing each to its next waiter in O(1)),
 * calls ops->behavior_done, frees it and decrements the live count.  Workers
 * call this themselves after ops->run; the host calls it for pinned
 * behaviors it has run (and for pinned behaviors it drops). */
void boc_behavior_complete(boc_behavior *b);

/* Live behaviors: scheduled and not yet completed. */
uint64_t boc_runtime_live(const boc_runtime *rt);
/* Blocks until the live count is zero or the timeout passes.  timeout_ns < 0
 * waits forever.  Returns 0 when quiescent, 1 on timeout. */
int boc_runtime_wait_quiescent(boc_runtime *rt, int64_t timeout_ns);
/* Starts (true) or ends (false) watching for quiescence: between the two,
 * every time the live count reaches zero the quiescent hook is called.  A
 * host that sleeps until that hook wakes it starts watching before it
 * checks boc_runtime_live for the first time, and ends after its last
 * sleep; then no zero is missed.  Calls nest (a count of watchers). */
void boc_runtime_watch_quiescence(boc_runtime *rt, bool watching);

/* Zeroed memory for an object that one thread makes and another may free
 * (a host's cown struct): like calloc(1, size), but small blocks are
 * recycled between threads without the allocator's arena lock.  Free with
 * boc_block_free and the same size.  Any thread. */
void *boc_block_alloc(size_t size);
void boc_block_free(void *ptr, size_t size);
/* Gives the recycled blocks that no thread holds, and the calling thread's
 * own, back to the allocator. */
void boc_blocks_trim(void);

/* Pinned lane: single consumer (the host's main thread). */
boc_behavior *boc_pinned_pop(boc_runtime *rt);
size_t boc_pinned_depth(const boc_runtime *rt);
/* Monotonic ns at which the lane last became non-empty; 0 when empty. */
uint64_t boc_pinned_nonempty_since(const boc_runtime *rt);

/* Stops and joins every worker (each calls worker_stop on its own thread).
 * Precondition: quiescent.  Idempotent. */
void boc_runtime_stop(boc_runtime *rt);
/* Frees a stopped (or never started) runtime. */
void boc_runtime_free(boc_runtime *rt);

void boc_runtime_stats(const boc_runtime *rt, unsigned index, boc_worker_stats *out);

/* Index of the calling worker thread in its runtime, or -1 off-worker. */
int boc_current_worker(void);

/* Monotonic clock in nanoseconds. */
uint64_t boc_now_ns(void);

#ifdef __cplusplus
}
#endif
#endif /* BOC_H */
