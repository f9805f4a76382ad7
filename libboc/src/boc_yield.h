/*
 * Seeded yield points and the controlled scheduler: a deterministic-testing
 * aid for libboc's concurrency protocols.  Compiled in only with
 * -DBOC_YIELD_POINTS (the `sweep` and `sweep-tsan` build variants); without
 * it every hook below is a macro or an inline pass-through to pthreads, and
 * BOC__YIELD(site) expands to nothing, so production builds pay nothing.
 *
 * The runtime calls BOC__YIELD(site) at the points where its protocols are
 * most sensitive to interleaving (each call site explains the invariant it
 * probes).  What a yield point does depends on the mode:
 *
 * Seeded mode (the default once compiled in).  Every thread owns a PRNG
 * seeded from (global seed, thread role, thread index); workers are
 * (BOC_YIELD_ROLE_WORKER, worker index), test threads name themselves with
 * boc_yield_set_identity.  At each yield point the thread draws from its PRNG
 * whether to do nothing, sched_yield(), spin for a random number of pause
 * instructions, or (rarely) nanosleep for a few microseconds.  The seed also
 * picks a "swarm" profile: which sites are active, how often they fire and
 * which kind of delay dominates, so that different seeds stress different
 * windows.  HOW DETERMINISTIC: the threads are still real OS threads and the
 * kernel still interleaves them, so a seed does NOT name one schedule; it
 * names a reproducible *distribution* of schedules (the same delays injected
 * at the same points in each thread's own sequence of events), which makes a
 * failure found under a seed very likely, not certain, to recur under it.
 * Works together with ThreadSanitizer: the yield points add no
 * synchronisation (thread-local state only), so they hide no race.
 *
 * Controlled mode (boc_yield_controlled_begin .. _end, opt-in per test).
 * Exactly one registered thread runs at a time: it holds a turn token, and at
 * each yield point a global PRNG seeded from the seed decides whether to hand
 * the token on and to which runnable thread.  The runtime's blocking points
 * are routed through the scheduler: mutexes are taken with trylock (a busy
 * lock hands the token on), condition waits and joins block in the scheduler
 * and wake deterministically when signalled, thread creation registers the
 * child before the creator continues, and a thread that ends passes the token
 * on.  Given the seed (and the test's inputs) the execution is then a pure
 * function of the seed: the same seed replays the same schedule exactly; the
 * trace hash printed by the tests checks that.  A state where every thread is
 * blocked is detected at once: a timed wait then times out (virtual time),
 * otherwise the scheduler reports a deadlock and aborts.  Limits: only threads
 * created with boc_yield_thread_create (by a registered thread) take part; a
 * thread that spins without reaching a yield point, or blocks in an unwrapped
 * call, stalls the schedule; and since hand-offs go through a mutex, every
 * execution is sequentially consistent, so weak-memory-order bugs are left to
 * the seeded mode under ThreadSanitizer.
 */
#ifndef BOC_YIELD_H
#define BOC_YIELD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Roles that seed a thread's PRNG stream (together with an index). */
enum {
    BOC_YIELD_ROLE_MAIN = 0,   /* the test's main thread */
    BOC_YIELD_ROLE_WORKER = 1, /* a runtime worker; index = worker index */
    BOC_YIELD_ROLE_HOST = 2,   /* a thread created by the host / test */
};

/* The yield-point sites; the comment at each use explains what it probes. */
#define BOC_YIELD_SITES(X)                                                                         \
    X(ENQUEUE_SWAPPED)                                                                             \
    X(ENQUEUE_LINKED)                                                                              \
    X(PHASE1_DONE)                                                                                 \
    X(PHASE2_MARKED)                                                                               \
    X(SCHEDULE_RESOLVE)                                                                            \
    X(RESOLVE)                                                                                     \
    X(RELEASE_NO_NEXT)                                                                             \
    X(RELEASE_CAS_FAILED)                                                                          \
    X(HOLD_TRY)                                                                                    \
    X(SPIN)                                                                                        \
    X(DISPATCH_PUSHED)                                                                             \
    X(QUEUE_POP)                                                                                   \
    X(STEAL)                                                                                       \
    X(PARK_ENTER)                                                                                  \
    X(SEARCH_ENDED)                                                                                \
    X(PARK_ANNOUNCED)                                                                              \
    X(PARK_CHECKED)                                                                                \
    X(PARK_WOKEN)                                                                                  \
    X(WORKER_RAN)                                                                                  \
    X(PINNED_PUSHED)                                                                               \
    X(PINNED_POP)                                                                                  \
    X(LIVE_DECREMENT)                                                                              \
    X(LIVE_ZERO)                                                                                   \
    X(QUIESCENCE_WAIT)                                                                             \
    X(LOCK_BUSY)                                                                                   \
    X(HOST)

#define BOC__YIELD_SITE_ENUM(name) BOC_YIELD_SITE_##name,
typedef enum boc_yield_site {
    BOC_YIELD_SITES(BOC__YIELD_SITE_ENUM) BOC_YIELD_SITE_COUNT
} boc_yield_site;
#undef BOC__YIELD_SITE_ENUM

/* A controlled run's summary (see boc_yield_controlled_end). */
typedef struct boc_yield_schedule {
    uint64_t steps;      /* yield points passed */
    uint64_t switches;   /* token hand-offs */
    uint64_t trace_hash; /* hash of the (thread, site, choice) sequence */
} boc_yield_schedule;

#ifdef BOC_YIELD_POINTS

/* A yield point in the runtime.  Compiles to nothing without the option. */
#define BOC__YIELD(site) boc_yield_point(BOC_YIELD_SITE_##site)

void boc_yield_point(boc_yield_site site);

/* True: this build has yield points. */
bool boc_yield_enabled(void);
/* Sets the global seed.  Call before starting the threads of a test. */
void boc_yield_set_seed(uint64_t seed);
/* Names the calling thread's PRNG stream.  A thread that never calls this
 * (nor is a worker) gets an index in order of first use, which is not
 * reproducible. */
void boc_yield_set_identity(unsigned role, unsigned index);
/* A yield point for host code (e.g. inside a test behavior's body). */
void boc_yield_here(void);
/* One step of a host spin-wait or delay loop: like the runtime's own
 * spin-waits, it always hands the token on in controlled mode, so each call
 * lets another thread take one step. */
void boc_yield_spin(void);

/* Controlled mode, on the calling thread (which must be the only thread that
 * runs the code under test so far).  begin returns false if controlled mode
 * is already active.  end requires every other registered thread to have
 * ended and fills `out` (may be NULL). */
bool boc_yield_controlled_begin(void);
void boc_yield_controlled_end(boc_yield_schedule *out);

/* Blocking operations, routed through the controlled scheduler when the
 * calling thread takes part in it; plain pthread calls otherwise. */
int boc_yield_thread_create(pthread_t *thread, void *(*start)(void *), void *arg);
int boc_yield_thread_join(pthread_t thread);
void boc_yield_mutex_lock(pthread_mutex_t *mutex);
/* `deadline` (CLOCK_MONOTONIC for the runtime's timed condvar) may be NULL.
 * Returns 0 or ETIMEDOUT. */
int boc_yield_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex,
                        const struct timespec *deadline);
void boc_yield_cond_signal(pthread_cond_t *cond);
void boc_yield_cond_broadcast(pthread_cond_t *cond);

#else /* !BOC_YIELD_POINTS */

#define BOC__YIELD(site) ((void)0)

static inline bool boc_yield_enabled(void) { return false; }
static inline void boc_yield_set_seed(uint64_t seed) { (void)seed; }
static inline void boc_yield_set_identity(unsigned role, unsigned index) {
    (void)role;
    (void)index;
}
static inline void boc_yield_here(void) {}
static inline void boc_yield_spin(void) {}
static inline bool boc_yield_controlled_begin(void) { return false; }
static inline void boc_yield_controlled_end(boc_yield_schedule *out) {
    if (out != NULL) {
        out->steps = 0;
        out->switches = 0;
        out->trace_hash = 0;
    }
}
static inline int boc_yield_thread_create(pthread_t *thread, void *(*start)(void *), void *arg) {
    return pthread_create(thread, NULL, start, arg);
}
static inline int boc_yield_thread_join(pthread_t thread) { return pthread_join(thread, NULL); }
static inline void boc_yield_mutex_lock(pthread_mutex_t *mutex) { pthread_mutex_lock(mutex); }
static inline int boc_yield_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex,
                                      const struct timespec *deadline) {
    if (deadline == NULL) {
        return pthread_cond_wait(cond, mutex);
    }
    return pthread_cond_timedwait(cond, mutex, deadline);
}
static inline void boc_yield_cond_signal(pthread_cond_t *cond) { pthread_cond_signal(cond); }
static inline void boc_yield_cond_broadcast(pthread_cond_t *cond) { pthread_cond_broadcast(cond); }

#endif /* BOC_YIELD_POINTS */

#ifdef __cplusplus
}
#endif
#endif /* BOC_YIELD_H */
