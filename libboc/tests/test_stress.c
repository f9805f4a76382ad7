/*
 * The seeded stress test: by default 132,000 behaviors (over 100,000 from the
 * host threads alone) over random sets of 1-4 cowns (repeats allowed) drawn
 * from 64, scheduled by several host threads and by running behaviors, on 4
 * workers, while the main thread takes and releases synchronous holds on
 * random cowns.  --stress-behaviors N scales it (the sweep builds default to
 * fewer, see the Makefile); --controlled runs it under the controlled
 * scheduler, where the seed fixes the whole interleaving.
 *
 * It checks
 *   - exclusivity: each cown has an "in use" flag set with exchange on entry
 *     (by behaviors and by holds); finding it set is a failure;
 *   - ordering: every behavior carries the id of the thread that scheduled it
 *     and that thread's sequence number; each cown remembers, per scheduling
 *     thread, the last sequence number that ran on it, which must increase;
 *   - every behavior ran exactly once, each cown ran exactly as many
 *     behaviors as named it, and the live count returns to zero.
 * Per-cown bookkeeping is plain (non-atomic) data protected by the cown, so a
 * ThreadSanitizer build also checks the runtime's happens-before edges.
 * The seed comes from --seed N or BOC_TEST_SEED (see runner.c); in a
 * yield-point build it also drives the yield points, each thread of the test
 * taking its own PRNG stream (boc_yield_set_identity).
 */
#include "test.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>

enum {
    STRESS_COWNS = 64,
    STRESS_WORKERS = 4,
    STRESS_HOST_THREADS = 3,
    /* Of every 132 behaviors, 102 come from the host threads and up to 30
     * are children scheduled by running behaviors. */
    STRESS_SHARE_TOTAL = 132,
    STRESS_SHARE_CHILDREN = 30,
    /* Scheduling threads: the host threads, then one per worker. */
    STRESS_SCHEDULERS = STRESS_HOST_THREADS + STRESS_WORKERS,
    STRESS_MAX_SET = 4,
    STRESS_MIN_HOLDS = 200,
    /* Hold attempts after the host threads are done (controlled mode). */
    STRESS_CONTROLLED_HOLD_ATTEMPTS = 100000,
};

typedef struct stress_cown {
    boc_cown base;
    atomic_bool in_use;
    /* Protected by the cown. */
    uint64_t last_sequence[STRESS_SCHEDULERS];
    uint64_t runs;
    /* Behaviors scheduled that name this cown (counted when scheduling). */
    atomic_ulong expected_runs;
} stress_cown;

typedef struct stress_state {
    boc_runtime *rt;
    stress_cown *cowns[STRESS_COWNS];
    uint32_t per_host_thread;
    uint32_t capacity;
    atomic_uint next_id;
    atomic_long child_budget;
    atomic_uchar *ran; /* [capacity] */
    atomic_ulong failures;
    atomic_ulong holds;
    atomic_uint hosts_done;
    /* Written only by the owning worker thread (from inside behaviors). */
    uint64_t worker_sequence[STRESS_WORKERS];
} stress_state;

typedef struct stress_payload {
    test_payload header;
    stress_state *state;
    uint32_t id;
    uint32_t scheduler;
    uint64_t sequence;
    uint64_t rng;
    uint32_t count; /* distinct cowns */
    uint8_t cowns[STRESS_MAX_SET];
} stress_payload;

static void stress_fail(stress_state *state, const char *what, const stress_payload *p) {
    if (atomic_fetch_add(&state->failures, 1) < 10) {
        fprintf(stderr, "stress failure: %s (behavior %u, scheduler %u, sequence %llu)\n", what,
                p ? p->id : 0, p ? p->scheduler : 0, p ? (unsigned long long)p->sequence : 0ULL);
    }
}

static void stress_cown_destroy(boc_cown *base) { free(base); }

static void stress_body(boc_behavior *b, void *raw);

/* Schedules one behavior over a random set of cowns from thread `scheduler`
 * with its next sequence number.  `rng` drives the choices. */
static void stress_schedule(stress_state *state, uint32_t scheduler, uint64_t sequence,
                            uint64_t *rng) {
    uint32_t id = atomic_fetch_add(&state->next_id, 1);
    ASSERT(id < state->capacity);
    size_t slots = 1 + test_random_next(rng) % STRESS_MAX_SET;
    uint8_t picks[STRESS_MAX_SET];
    for (size_t i = 0; i < slots; i++) {
        picks[i] = (uint8_t)(test_random_next(rng) % STRESS_COWNS);
    }
    boc_behavior *b = boc_behavior_new(slots, sizeof(stress_payload));
    ASSERT(b != NULL);
    stress_payload *p = boc_behavior_payload(b);
    p->header.body = stress_body;
    p->state = state;
    p->id = id;
    p->scheduler = scheduler;
    p->sequence = sequence;
    p->rng = test_random_next(rng);
    p->count = 0;
    for (size_t i = 0; i < slots; i++) {
        boc_behavior_set_cown(b, i, &state->cowns[picks[i]]->base);
        bool repeat = false;
        for (uint32_t j = 0; j < p->count; j++) {
            repeat = repeat || p->cowns[j] == picks[i];
        }
        if (!repeat) {
            p->cowns[p->count++] = picks[i];
            atomic_fetch_add(&state->cowns[picks[i]]->expected_runs, 1);
        }
    }
    boc_schedule(state->rt, b);
}

static void stress_body(boc_behavior *b, void *raw) {
    (void)b;
    stress_payload *p = raw;
    stress_state *state = p->state;
    if (atomic_fetch_add(&state->ran[p->id], 1) != 0) {
        stress_fail(state, "ran twice", p);
    }
    for (uint32_t i = 0; i < p->count; i++) {
        if (atomic_exchange(&state->cowns[p->cowns[i]]->in_use, true)) {
            stress_fail(state, "cown already in use", p);
            return; /* the data below would race */
        }
    }
    /* Yield point inside the body, all cowns marked in use: a behavior
     * wrongly admitted to one of them now would see the mark (and under the
     * controlled scheduler a body is otherwise atomic). */
    boc_yield_here();
    for (uint32_t i = 0; i < p->count; i++) {
        stress_cown *cown = state->cowns[p->cowns[i]];
        if (cown->last_sequence[p->scheduler] >= p->sequence) {
            stress_fail(state, "out of order on a cown", p);
        }
        cown->last_sequence[p->scheduler] = p->sequence;
        cown->runs++;
    }

    /* Sometimes schedule a child from here (this worker is its scheduler). */
    uint64_t rng = p->rng;
    if (test_random_next(&rng) % 3 == 0 && atomic_fetch_sub(&state->child_budget, 1) > 0) {
        int worker = boc_current_worker();
        ASSERT(worker >= 0 && worker < STRESS_WORKERS);
        uint64_t sequence = ++state->worker_sequence[worker];
        stress_schedule(state, STRESS_HOST_THREADS + (uint32_t)worker, sequence, &rng);
    }

    for (uint32_t i = 0; i < p->count; i++) {
        atomic_store(&state->cowns[p->cowns[i]]->in_use, false);
    }
}

typedef struct stress_thread {
    stress_state *state;
    uint32_t scheduler;
} stress_thread;

static void *stress_host_thread(void *arg) {
    stress_thread *t = arg;
    boc_yield_set_identity(BOC_YIELD_ROLE_HOST, t->scheduler);
    uint64_t rng = test_seed ^ (UINT64_C(0x1000193) * (t->scheduler + 1));
    for (uint64_t sequence = 1; sequence <= t->state->per_host_thread; sequence++) {
        stress_schedule(t->state, t->scheduler, sequence, &rng);
    }
    atomic_fetch_add(&t->state->hosts_done, 1);
    return NULL;
}

TEST_IMPL(stress_random_cown_sets) {
    test_print_seed("stress_random_cown_sets");
    uint32_t behaviors = test_stress_behaviors;
    uint32_t children =
        (uint32_t)((uint64_t)behaviors * STRESS_SHARE_CHILDREN / STRESS_SHARE_TOTAL);
    stress_state *state = calloc(1, sizeof *state);
    ASSERT(state != NULL);
    state->per_host_thread = (behaviors - children) / STRESS_HOST_THREADS;
    state->capacity = STRESS_HOST_THREADS * state->per_host_thread + children;
    state->ran = calloc(state->capacity, sizeof *state->ran);
    ASSERT(state->ran != NULL);
    atomic_init(&state->next_id, 0);
    atomic_init(&state->child_budget, (long)children);
    atomic_init(&state->failures, 0);
    atomic_init(&state->holds, 0);
    atomic_init(&state->hosts_done, 0);
    for (size_t i = 0; i < state->capacity; i++) {
        atomic_init(&state->ran[i], 0);
    }
    for (int i = 0; i < STRESS_COWNS; i++) {
        stress_cown *cown = calloc(1, sizeof *cown);
        ASSERT(cown != NULL);
        boc_cown_init(&cown->base, 0, stress_cown_destroy);
        atomic_init(&cown->in_use, false);
        atomic_init(&cown->expected_runs, 0);
        state->cowns[i] = cown;
    }

    /* From here to test_controlled_end, with --controlled, exactly one of
     * the test's threads runs at a time, in the order the seed dictates. */
    test_controlled_begin();
    boc_yield_set_identity(BOC_YIELD_ROLE_MAIN, 0);
    test_host host;
    test_host_init(&host);
    state->rt = test_runtime_start(&host, STRESS_WORKERS);
    uint64_t started = boc_now_ns();

    pthread_t threads[STRESS_HOST_THREADS];
    stress_thread args[STRESS_HOST_THREADS];
    for (uint32_t i = 0; i < STRESS_HOST_THREADS; i++) {
        args[i] = (stress_thread){state, i};
        ASSERT(boc_yield_thread_create(&threads[i], stress_host_thread, &args[i]) == 0);
    }

    /* Meanwhile, take synchronous holds on random cowns, until the host
     * threads are done and some holds have succeeded (most attempts fail
     * while the cowns are busy), or give up: at a deadline, or under the
     * controlled scheduler (where time must not steer the schedule) after a
     * fixed number of attempts, so that a deadlock is reported quickly. */
    uint64_t rng = test_seed ^ UINT64_C(0xfeedface);
    uint64_t hold_deadline = boc_now_ns() + (uint64_t)TEST_QUIESCENCE_TIMEOUT_NS / 2;
    uint32_t attempts_after_hosts = 0;
    for (int i = 0; atomic_load(&state->hosts_done) < STRESS_HOST_THREADS ||
                    (atomic_load(&state->holds) < STRESS_MIN_HOLDS &&
                     (test_controlled ? attempts_after_hosts++ < STRESS_CONTROLLED_HOLD_ATTEMPTS
                                      : boc_now_ns() < hold_deadline));
         i++) {
        stress_cown *cown = state->cowns[test_random_next(&rng) % STRESS_COWNS];
        boc_request hold;
        if (boc_cown_try_hold(&cown->base, &hold)) {
            if (atomic_exchange(&cown->in_use, true)) {
                stress_fail(state, "held cown already in use", NULL);
            }
            atomic_fetch_add(&state->holds, 1);
            atomic_store(&cown->in_use, false);
            boc_cown_unhold(&hold);
        }
        if (i % 16 == 0) {
            sched_yield();
        }
    }

    for (uint32_t i = 0; i < STRESS_HOST_THREADS; i++) {
        ASSERT(boc_yield_thread_join(threads[i]) == 0);
    }
    ASSERT(boc_runtime_wait_quiescent(state->rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    ASSERT_EQ_U64(boc_runtime_live(state->rt), 0);
    uint64_t elapsed_ms = (boc_now_ns() - started) / 1000000;

    uint32_t total = atomic_load(&state->next_id);
    uint64_t steals = 0;
    uint64_t run = 0;
    for (unsigned i = 0; i < STRESS_WORKERS; i++) {
        boc_worker_stats stats;
        boc_runtime_stats(state->rt, i, &stats);
        steals += stats.steals;
        run += stats.behaviors_run;
    }
    printf("# stress: %u behaviors, %lu holds, %llu steals, %llu ms\n", total,
           atomic_load(&state->holds), (unsigned long long)steals, (unsigned long long)elapsed_ms);
    ASSERT_EQ_U64(atomic_load(&state->failures), 0);
    ASSERT(total >= STRESS_HOST_THREADS * state->per_host_thread);
    ASSERT(behaviors < 132000 || total >= 100000);
    ASSERT_EQ_U64(run, total);
    for (uint32_t i = 0; i < total; i++) {
        ASSERT(atomic_load(&state->ran[i]) == 1);
    }
    for (int i = 0; i < STRESS_COWNS; i++) {
        ASSERT_EQ_U64(state->cowns[i]->runs, atomic_load(&state->cowns[i]->expected_runs));
        ASSERT(atomic_load(&state->cowns[i]->base.refcount) == 1);
    }
    test_runtime_finish(state->rt, &host);
    test_controlled_end("stress_random_cown_sets");
    ASSERT_EQ_U64(atomic_load(&host.dones), total);
    for (int i = 0; i < STRESS_COWNS; i++) {
        boc_cown_decref(&state->cowns[i]->base);
    }
    free(state->ran);
    free(state);
    return 0;
}
