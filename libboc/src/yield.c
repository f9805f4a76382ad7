/*
 * Seeded yield points and the controlled scheduler (see boc_yield.h for what
 * they are and how deterministic each mode is).  Everything here is compiled
 * only with -DBOC_YIELD_POINTS.
 *
 * Seeded mode keeps all of its state in thread-locals (plus a seed and a
 * generation counter read with relaxed/acquire loads), so it adds no
 * happens-before edge that could hide a data race from ThreadSanitizer.
 *
 * Controlled mode keeps its state in one struct protected by one mutex.  A
 * registered thread runs only while `current` names its slot; it waits on its
 * own condition variable otherwise.  Every decision (whether to switch, to
 * whom, which waiter a signal wakes) is drawn from a single PRNG that only
 * the running thread touches, so the sequence of decisions, and hence the
 * schedule, depends on the seed alone.
 */
#include "boc_internal.h"

#ifdef BOC_YIELD_POINTS

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

_Static_assert(BOC_YIELD_SITE_COUNT <= 32, "site masks are 32 bits wide");

#define BOC__YIELD_SITE_NAME(name) #name,
static const char *const boc__yield_site_names[] = {BOC_YIELD_SITES(BOC__YIELD_SITE_NAME)};
#undef BOC__YIELD_SITE_NAME

/* splitmix64's output function and generator. */
static uint64_t boc__mix(uint64_t z) {
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static uint64_t boc__random(uint64_t *state) {
    *state += UINT64_C(0x9e3779b97f4a7c15);
    return boc__mix(*state);
}

/* ------------------------------------------------------------ seeded mode */

static _Atomic(uint64_t) boc__yield_seed = 0;
/* Bumped by every boc_yield_set_seed; a thread whose stream was seeded under
 * an older generation reseeds at its next yield point.  Starts at 1 so that a
 * zeroed thread-local means "never seeded". */
static atomic_uint boc__yield_generation = 1;
/* Index source for threads that never named themselves. */
static atomic_uint boc__yield_anonymous = 0;

/* What a seed asks the yield points to do ("swarm" testing: each seed turns
 * some sites off and picks its own mix of delays). */
typedef struct boc__yield_profile {
    uint32_t site_mask;   /* sites that may act */
    unsigned act_shift;   /* a site acts with probability 2^-act_shift */
    unsigned yield_share; /* out of 8 actions, how many are sched_yield */
    unsigned spin_bits;   /* spins last up to 2^spin_bits pauses */
    bool sleeps;          /* whether 1 action in 64 is a short nanosleep */
} boc__yield_profile;

typedef struct boc__yield_thread {
    unsigned generation;
    bool named;
    unsigned role;
    unsigned index;
    uint64_t rng;
    boc__yield_profile profile;
} boc__yield_thread;

static _Thread_local boc__yield_thread boc__yield_self;

static boc__yield_profile boc__yield_profile_of(uint64_t seed) {
    static const unsigned act_shifts[] = {1, 2, 3, 4, 6};
    static const unsigned yield_shares[] = {1, 4, 6, 8};
    uint64_t state = seed ^ UINT64_C(0x796965646d6f6465);
    boc__yield_profile p;
    /* Each site is active with probability 3/4. */
    p.site_mask = (uint32_t)(boc__random(&state) | boc__random(&state));
    /* SPIN is where a thread already waits on another: keep it active, a
     * delay there never opens a new window but lengthens existing ones. */
    p.site_mask |= UINT32_C(1) << BOC_YIELD_SITE_SPIN;
    uint64_t r = boc__random(&state);
    p.act_shift = act_shifts[r % 5];
    p.yield_share = yield_shares[(r >> 8) % 4];
    p.spin_bits = 4 + (unsigned)((r >> 16) % 7);
    p.sleeps = ((r >> 24) % 4) == 0;
    return p;
}

static void boc__yield_reseed(boc__yield_thread *t, unsigned generation) {
    uint64_t seed = atomic_load_explicit(&boc__yield_seed, memory_order_relaxed);
    if (!t->named) {
        t->named = true;
        t->role = 3; /* anonymous */
        t->index = atomic_fetch_add_explicit(&boc__yield_anonymous, 1, memory_order_relaxed);
    }
    t->generation = generation;
    t->profile = boc__yield_profile_of(seed);
    t->rng = seed ^ boc__mix(((uint64_t)t->role << 32 | t->index) + UINT64_C(0x7468726561642121));
}

static int boc__ctl_self_slot(void);
static void boc__ctl_yield(int self, boc_yield_site site, bool must_switch);

void boc_yield_point(boc_yield_site site) {
    int self = boc__ctl_self_slot();
    if (self >= 0) {
        /* A spin-wait cannot progress until another thread runs. */
        boc__ctl_yield(self, site, site == BOC_YIELD_SITE_SPIN);
        return;
    }
    boc__yield_thread *t = &boc__yield_self;
    /* Acquire pairs with boc_yield_set_seed's release increment, so the seed
     * read in reseed is the one of this generation. */
    unsigned generation = atomic_load_explicit(&boc__yield_generation, memory_order_acquire);
    if (t->generation != generation) {
        boc__yield_reseed(t, generation);
    }
    if ((t->profile.site_mask & (UINT32_C(1) << site)) == 0) {
        return;
    }
    uint64_t r = boc__random(&t->rng);
    if ((r & ((UINT64_C(1) << t->profile.act_shift) - 1)) != 0) {
        return;
    }
    r >>= 8;
    unsigned kind = (unsigned)(r & 63);
    r >>= 6;
    if (t->profile.sleeps && kind == 0) {
        struct timespec delay = {0, 1000 + (long)(r % 20000)};
        nanosleep(&delay, NULL);
    } else if ((kind & 7) < t->profile.yield_share) {
        sched_yield();
    } else {
        uint64_t spins = r & ((UINT64_C(1) << t->profile.spin_bits) - 1);
        for (uint64_t i = 0; i < spins; i++) {
            boc__cpu_relax();
        }
    }
}

bool boc_yield_enabled(void) { return true; }

void boc_yield_set_seed(uint64_t seed) {
    atomic_store_explicit(&boc__yield_seed, seed, memory_order_relaxed);
    atomic_fetch_add_explicit(&boc__yield_generation, 1, memory_order_release);
}

void boc_yield_set_identity(unsigned role, unsigned index) {
    boc__yield_thread *t = &boc__yield_self;
    t->named = true;
    t->role = role;
    t->index = index;
    t->generation = 0; /* reseed at the next yield point */
}

void boc_yield_here(void) { boc_yield_point(BOC_YIELD_SITE_HOST); }

void boc_yield_spin(void) { boc_yield_point(BOC_YIELD_SITE_SPIN); }

/* -------------------------------------------------------- controlled mode */

#define BOC__CTL_MAX_THREADS 64
/* A schedule this long is taken to be a livelock (a spin-wait whose awaited
 * thread never runs again).  The sweep's controlled runs take well under a
 * million steps; the default stress test, a few million. */
#define BOC__CTL_STEP_LIMIT (UINT64_C(1) << 26)

typedef enum boc__ctl_state {
    BOC__CTL_STARTING, /* created, not yet registered */
    BOC__CTL_RUNNABLE,
    BOC__CTL_WAIT_COND, /* in boc_yield_cond_wait on `wait_on` */
    BOC__CTL_WAIT_JOIN, /* in boc_yield_thread_join of slot `wait_on` */
    BOC__CTL_DONE,
} boc__ctl_state;

static const char *const boc__ctl_state_names[] = {"starting", "runnable", "waiting on a condvar",
                                                   "joining", "done"};

typedef struct boc__ctl_thread {
    pthread_cond_t wake;
    boc__ctl_state state;
    const void *wait_on;
    bool timed;     /* a timed condvar wait */
    bool timed_out; /* woken by virtual time, not by a signal */
    bool has_handle;
    pthread_t handle;
    boc_yield_site last_site;
} boc__ctl_thread;

static struct {
    pthread_mutex_t lock;
    bool active;
    unsigned count;   /* slots in use */
    unsigned current; /* the slot holding the token */
    unsigned switch_shift;
    uint64_t seed;
    uint64_t rng;
    uint64_t steps;
    uint64_t switches;
    uint64_t hash;
    boc__ctl_thread threads[BOC__CTL_MAX_THREADS];
} boc__ctl = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The calling thread's slot, or -1 when it does not take part. */
static _Thread_local int boc__ctl_slot = -1;

static int boc__ctl_self_slot(void) { return boc__ctl_slot; }

/* Prints why, and every thread's state.  Lock held. */
static void boc__ctl_report(const char *why) {
    fprintf(stderr, "controlled scheduler (seed %llu, step %llu): %s\n",
            (unsigned long long)boc__ctl.seed, (unsigned long long)boc__ctl.steps, why);
    for (unsigned i = 0; i < boc__ctl.count; i++) {
        const boc__ctl_thread *t = &boc__ctl.threads[i];
        fprintf(stderr, "  thread %u%s: %s, last yield point %s\n", i,
                i == boc__ctl.current ? " (running)" : "", boc__ctl_state_names[t->state],
                boc__yield_site_names[t->last_site]);
    }
    fflush(stderr);
}

static void boc__ctl_fail(const char *why) {
    boc__ctl_report(why);
    abort();
}

/* Records one decision in the trace.  Lock held. */
static void boc__ctl_note(int self, boc_yield_site site, int choice) {
    boc__ctl.threads[self].last_site = site;
    boc__ctl.steps++;
    uint64_t event = (uint64_t)(unsigned)self | (uint64_t)site << 8 | (uint64_t)(choice + 1) << 16;
    boc__ctl.hash = boc__mix(boc__ctl.hash ^ event) + boc__ctl.steps;
    if (boc__ctl.steps > BOC__CTL_STEP_LIMIT) {
        boc__ctl_fail("step limit reached (livelock?)");
    }
}

/* A runnable thread other than `self`, chosen by the PRNG; -1 if none.  Lock
 * held. */
static int boc__ctl_pick_other(int self) {
    unsigned runnable = 0;
    for (unsigned i = 0; i < boc__ctl.count; i++) {
        runnable += (int)i != self && boc__ctl.threads[i].state == BOC__CTL_RUNNABLE;
    }
    if (runnable == 0) {
        return -1;
    }
    uint64_t k = boc__random(&boc__ctl.rng) % runnable;
    for (unsigned i = 0; i < boc__ctl.count; i++) {
        if ((int)i != self && boc__ctl.threads[i].state == BOC__CTL_RUNNABLE && k-- == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* Gives the token to `next` and, unless `self` is done, waits for it to come
 * back.  Lock held (released while waiting). */
static void boc__ctl_hand_to(int self, int next) {
    boc__ctl.current = (unsigned)next;
    boc__ctl.switches++;
    pthread_cond_signal(&boc__ctl.threads[next].wake);
    if (boc__ctl.threads[self].state == BOC__CTL_DONE) {
        return;
    }
    while (boc__ctl.current != (unsigned)self) {
        pthread_cond_wait(&boc__ctl.threads[self].wake, &boc__ctl.lock);
    }
}

/* `self` has stopped being runnable (waiting or done): hands the token to a
 * runnable thread.  With none, virtual time passes: the lowest timed waiter
 * times out (possibly `self`); with no timed waiter either, every thread is
 * blocked for good.  Lock held. */
static void boc__ctl_block(int self, boc_yield_site site) {
    int next = boc__ctl_pick_other(self);
    if (next < 0) {
        boc__ctl_report("every thread is blocked; a timed wait (if any) times out");
        for (unsigned i = 0; i < boc__ctl.count && next < 0; i++) {
            boc__ctl_thread *t = &boc__ctl.threads[i];
            if (t->state == BOC__CTL_WAIT_COND && t->timed) {
                t->state = BOC__CTL_RUNNABLE;
                t->timed_out = true;
                next = (int)i;
            }
        }
    }
    boc__ctl_note(self, site, next);
    if (next < 0) {
        boc__ctl_fail("deadlock: every thread is blocked");
    }
    if (next != self) {
        boc__ctl_hand_to(self, next);
    }
}

static void boc__ctl_yield(int self, boc_yield_site site, bool must_switch) {
    pthread_mutex_lock(&boc__ctl.lock);
    int next = -1;
    if (must_switch ||
        (boc__random(&boc__ctl.rng) & ((UINT64_C(1) << boc__ctl.switch_shift) - 1)) == 0) {
        next = boc__ctl_pick_other(self);
    }
    boc__ctl_note(self, site, next);
    if (next >= 0) {
        boc__ctl_hand_to(self, next);
    } else if (site == BOC_YIELD_SITE_LOCK_BUSY) {
        /* The lock's holder is not runnable, so it will never unlock. */
        boc__ctl_fail("deadlock: a mutex is held by a blocked thread");
    }
    pthread_mutex_unlock(&boc__ctl.lock);
}

bool boc_yield_controlled_begin(void) {
    static const unsigned switch_shifts[] = {1, 2, 3, 4, 6};
    pthread_mutex_lock(&boc__ctl.lock);
    if (boc__ctl.active || boc__ctl_slot >= 0) {
        pthread_mutex_unlock(&boc__ctl.lock);
        return false;
    }
    uint64_t seed = atomic_load_explicit(&boc__yield_seed, memory_order_relaxed);
    boc__ctl.active = true;
    boc__ctl.seed = seed;
    boc__ctl.rng = seed ^ UINT64_C(0x636f6e74726f6c21);
    /* The seed also picks how often a yield point switches threads: from 1
     * in 2 (fine-grained) to 1 in 64 (long runs of one thread). */
    boc__ctl.switch_shift = switch_shifts[boc__random(&boc__ctl.rng) % 5];
    boc__ctl.steps = 0;
    boc__ctl.switches = 0;
    boc__ctl.hash = boc__mix(seed);
    boc__ctl.count = 1;
    boc__ctl.current = 0;
    boc__ctl_thread *t = &boc__ctl.threads[0];
    pthread_cond_init(&t->wake, NULL);
    t->state = BOC__CTL_RUNNABLE;
    t->wait_on = NULL;
    t->timed = false;
    t->timed_out = false;
    t->has_handle = false;
    t->last_site = BOC_YIELD_SITE_HOST;
    pthread_mutex_unlock(&boc__ctl.lock);
    boc__ctl_slot = 0;
    return true;
}

void boc_yield_controlled_end(boc_yield_schedule *out) {
    int self = boc__ctl_slot;
    pthread_mutex_lock(&boc__ctl.lock);
    if (!boc__ctl.active || self < 0) {
        boc__ctl_fail("controlled_end without controlled_begin on this thread");
    }
    for (unsigned i = 0; i < boc__ctl.count; i++) {
        if ((int)i != self && boc__ctl.threads[i].state != BOC__CTL_DONE) {
            boc__ctl_fail("controlled_end while other threads take part");
        }
    }
    if (out != NULL) {
        out->steps = boc__ctl.steps;
        out->switches = boc__ctl.switches;
        out->trace_hash = boc__ctl.hash;
    }
    for (unsigned i = 0; i < boc__ctl.count; i++) {
        pthread_cond_destroy(&boc__ctl.threads[i].wake);
    }
    boc__ctl.count = 0;
    boc__ctl.active = false;
    pthread_mutex_unlock(&boc__ctl.lock);
    boc__ctl_slot = -1;
}

typedef struct boc__ctl_start {
    void *(*start)(void *);
    void *arg;
    int slot;
    int creator;
} boc__ctl_start;

/* Entry point of a thread created by a registered thread: registers, waits
 * for the token, runs, and on return passes the token on for good. */
static void *boc__ctl_trampoline(void *raw) {
    boc__ctl_start start = *(boc__ctl_start *)raw;
    free(raw);
    boc__ctl_slot = start.slot;
    pthread_mutex_lock(&boc__ctl.lock);
    boc__ctl.threads[start.slot].state = BOC__CTL_RUNNABLE;
    pthread_cond_signal(&boc__ctl.threads[start.creator].wake);
    while (boc__ctl.current != (unsigned)start.slot) {
        pthread_cond_wait(&boc__ctl.threads[start.slot].wake, &boc__ctl.lock);
    }
    pthread_mutex_unlock(&boc__ctl.lock);

    void *result = start.start(start.arg);

    pthread_mutex_lock(&boc__ctl.lock);
    boc__ctl_thread *self = &boc__ctl.threads[start.slot];
    self->state = BOC__CTL_DONE;
    for (unsigned i = 0; i < boc__ctl.count; i++) {
        boc__ctl_thread *t = &boc__ctl.threads[i];
        if (t->state == BOC__CTL_WAIT_JOIN && t->wait_on == self) {
            t->state = BOC__CTL_RUNNABLE;
        }
    }
    boc__ctl_block(start.slot, BOC_YIELD_SITE_HOST);
    pthread_mutex_unlock(&boc__ctl.lock);
    boc__ctl_slot = -1;
    return result;
}

int boc_yield_thread_create(pthread_t *thread, void *(*start)(void *), void *arg) {
    int self = boc__ctl_slot;
    if (self < 0) {
        return pthread_create(thread, NULL, start, arg);
    }
    boc__ctl_start *info = malloc(sizeof *info);
    if (info == NULL) {
        return EAGAIN;
    }
    pthread_mutex_lock(&boc__ctl.lock);
    if (boc__ctl.count == BOC__CTL_MAX_THREADS) {
        boc__ctl_fail("too many threads");
    }
    int slot = (int)boc__ctl.count++;
    boc__ctl_thread *t = &boc__ctl.threads[slot];
    pthread_cond_init(&t->wake, NULL);
    t->state = BOC__CTL_STARTING;
    t->wait_on = NULL;
    t->timed = false;
    t->timed_out = false;
    t->has_handle = false;
    t->last_site = BOC_YIELD_SITE_HOST;
    pthread_mutex_unlock(&boc__ctl.lock);

    *info = (boc__ctl_start){start, arg, slot, self};
    int rc = pthread_create(thread, NULL, boc__ctl_trampoline, info);

    pthread_mutex_lock(&boc__ctl.lock);
    if (rc != 0) {
        t->state = BOC__CTL_DONE;
        free(info);
    } else {
        t->handle = *thread;
        t->has_handle = true;
        /* Wait (keeping the token) until the child is registered, so that the
         * set of runnable threads does not depend on OS timing. */
        while (t->state == BOC__CTL_STARTING) {
            pthread_cond_wait(&boc__ctl.threads[self].wake, &boc__ctl.lock);
        }
    }
    pthread_mutex_unlock(&boc__ctl.lock);
    return rc;
}

int boc_yield_thread_join(pthread_t thread) {
    int self = boc__ctl_slot;
    if (self >= 0) {
        pthread_mutex_lock(&boc__ctl.lock);
        /* Newest first: a joined thread's id may be reused by a later one. */
        for (unsigned i = boc__ctl.count; i-- > 0;) {
            boc__ctl_thread *t = &boc__ctl.threads[i];
            if (t->has_handle && pthread_equal(t->handle, thread)) {
                if (t->state != BOC__CTL_DONE) {
                    boc__ctl_thread *me = &boc__ctl.threads[self];
                    me->state = BOC__CTL_WAIT_JOIN;
                    me->wait_on = t;
                    me->timed = false;
                    boc__ctl_block(self, BOC_YIELD_SITE_HOST);
                }
                break;
            }
        }
        pthread_mutex_unlock(&boc__ctl.lock);
    }
    /* The thread has passed the token on; it only has to exit now. */
    return pthread_join(thread, NULL);
}

void boc_yield_mutex_lock(pthread_mutex_t *mutex) {
    int self = boc__ctl_slot;
    if (self < 0) {
        pthread_mutex_lock(mutex);
        return;
    }
    /* Never block holding the token: let the holder run until it unlocks. */
    while (pthread_mutex_trylock(mutex) != 0) {
        boc__ctl_yield(self, BOC_YIELD_SITE_LOCK_BUSY, true);
    }
}

int boc_yield_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex,
                        const struct timespec *deadline) {
    int self = boc__ctl_slot;
    if (self < 0) {
        return deadline == NULL ? pthread_cond_wait(cond, mutex)
                                : pthread_cond_timedwait(cond, mutex, deadline);
    }
    pthread_mutex_lock(&boc__ctl.lock);
    boc__ctl_thread *me = &boc__ctl.threads[self];
    me->state = BOC__CTL_WAIT_COND;
    me->wait_on = cond;
    me->timed = deadline != NULL;
    me->timed_out = false;
    /* Atomic with starting to wait, as with pthread_cond_wait: nobody else
     * runs until we hand the token on. */
    pthread_mutex_unlock(mutex);
    boc__ctl_block(self, BOC_YIELD_SITE_HOST);
    bool timed_out = me->timed_out;
    pthread_mutex_unlock(&boc__ctl.lock);
    boc_yield_mutex_lock(mutex);
    return timed_out ? ETIMEDOUT : 0;
}

/* Wakes one (or every) registered waiter on `cond`, if the caller takes part
 * in the schedule; which waiter a signal wakes is drawn from the PRNG. */
static void boc__ctl_wake(pthread_cond_t *cond, bool all) {
    int self = boc__ctl_slot;
    if (self < 0) {
        return;
    }
    pthread_mutex_lock(&boc__ctl.lock);
    unsigned waiters = 0;
    for (unsigned i = 0; i < boc__ctl.count; i++) {
        const boc__ctl_thread *t = &boc__ctl.threads[i];
        waiters += t->state == BOC__CTL_WAIT_COND && t->wait_on == cond;
    }
    int chosen = -1;
    if (waiters > 0) {
        uint64_t k = all ? 0 : boc__random(&boc__ctl.rng) % waiters;
        for (unsigned i = 0; i < boc__ctl.count; i++) {
            boc__ctl_thread *t = &boc__ctl.threads[i];
            if (t->state == BOC__CTL_WAIT_COND && t->wait_on == cond && (all || k-- == 0)) {
                t->state = BOC__CTL_RUNNABLE;
                chosen = (int)i;
                if (!all) {
                    break;
                }
            }
        }
    }
    boc__ctl_note(self, BOC_YIELD_SITE_HOST, chosen);
    pthread_mutex_unlock(&boc__ctl.lock);
}

void boc_yield_cond_signal(pthread_cond_t *cond) {
    boc__ctl_wake(cond, false);
    /* Also any thread waiting outside the schedule (none while it runs). */
    pthread_cond_signal(cond);
}

void boc_yield_cond_broadcast(pthread_cond_t *cond) {
    boc__ctl_wake(cond, true);
    pthread_cond_broadcast(cond);
}

#else

/* ISO C forbids an empty translation unit. */
typedef int boc__yield_points_disabled;

#endif /* BOC_YIELD_POINTS */
