/*
 * Test cases for the runtime's lifecycle and hooks: a failing worker_start
 * makes boc_runtime_start fail cleanly, the idle/busy/stop hooks follow their
 * protocol, boc_current_worker is right on every thread, the statistics add
 * up, runtimes can be created, started and stopped many times, and a worker
 * going to sleep never misses a wake-up.
 */
#include "test.h"

#include <sched.h>

typedef struct simple_payload {
    test_payload header;
    test_cown *cown; /* may be NULL */
    atomic_ulong *ran;
    /* If set, the body schedules one zero-cown child on this runtime. */
    boc_runtime *spawn_on;
} simple_payload;

static void simple_body(boc_behavior *b, void *raw);

static void schedule_simple(boc_runtime *rt, test_cown *cown, atomic_ulong *ran,
                            boc_runtime *spawn_on) {
    boc_behavior *b = test_behavior_new(simple_body, sizeof(simple_payload), &cown, cown ? 1 : 0);
    simple_payload *p = boc_behavior_payload(b);
    p->cown = cown;
    p->ran = ran;
    p->spawn_on = spawn_on;
    boc_schedule(rt, b);
}

static void simple_body(boc_behavior *b, void *raw) {
    (void)b;
    simple_payload *p = raw;
    int worker = boc_current_worker();
    ASSERT(worker >= 0);
    if (p->cown != NULL) {
        test_cown_enter(p->cown);
        p->cown->value++;
        test_cown_leave(p->cown);
    }
    if (p->spawn_on != NULL) {
        schedule_simple(p->spawn_on, NULL, p->ran, NULL);
    }
    atomic_fetch_add(p->ran, 1);
}

TEST_IMPL(worker_start_failure) {
    test_host host;
    test_host_init(&host);

    /* One of four workers fails: start returns -1 after joining them all;
     * the three that started ran their stop hooks. */
    atomic_store(&host.fail_start_index, 2);
    boc_runtime *rt = boc_runtime_new(4, &test_host_ops, &host);
    ASSERT(rt != NULL);
    ASSERT(boc_runtime_start(rt) == -1);
    ASSERT_EQ_U64(atomic_load(&host.starts), 4);
    ASSERT_EQ_U64(atomic_load(&host.stops), 3);
    ASSERT_EQ_U64(atomic_load(&host.violations), 0);
    for (int i = 0; i < 4; i++) {
        ASSERT(atomic_load(&host.worker_state[i]) ==
               (i == 2 ? TEST_WORKER_FAILED : TEST_WORKER_STOPPED));
    }
    boc_runtime_stop(rt); /* not running: no-op */

    /* The same runtime starts once the hook succeeds, and works. */
    atomic_store(&host.fail_start_index, -1);
    ASSERT(boc_runtime_start(rt) == 0);
    ASSERT_EQ_U64(atomic_load(&host.starts), 8);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    test_cown *c = test_cown_new(0);
    for (int i = 0; i < 100; i++) {
        schedule_simple(rt, c, &ran, NULL);
    }
    ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    ASSERT_EQ_U64(atomic_load(&ran), 100);
    boc_runtime_stop(rt);
    ASSERT_EQ_U64(atomic_load(&host.stops), 7);
    ASSERT_EQ_U64(atomic_load(&host.violations), 0);
    boc_runtime_free(rt);

    /* Every worker fails. */
    test_host_init(&host);
    atomic_store(&host.fail_start_index, -2);
    rt = boc_runtime_new(3, &test_host_ops, &host);
    ASSERT(rt != NULL);
    ASSERT(boc_runtime_start(rt) == -1);
    ASSERT_EQ_U64(atomic_load(&host.starts), 3);
    ASSERT_EQ_U64(atomic_load(&host.stops), 0);
    boc_runtime_free(rt);

    /* A single-worker runtime whose only worker fails. */
    test_host_init(&host);
    atomic_store(&host.fail_start_index, 0);
    rt = boc_runtime_new(1, &test_host_ops, &host);
    ASSERT(rt != NULL);
    ASSERT(boc_runtime_start(rt) == -1);
    boc_runtime_free(rt);
    test_cown_release(c);
    return 0;
}

TEST_IMPL(worker_hooks_alternate) {
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 3);
    test_cown *cowns[3] = {test_cown_new(0), test_cown_new(0), test_cown_new(0)};
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < 60; i++) {
            schedule_simple(rt, i % 4 == 3 ? NULL : cowns[i % 4], &ran, NULL);
        }
        ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
        /* Let the workers run dry and (probably) park. */
        test_sleep_ms(5);
    }
    ASSERT_EQ_U64(atomic_load(&ran), 600);
    ASSERT(atomic_load(&host.idles) >= 1);
    /* test_runtime_finish checks idle/busy/stop alternation and counts. */
    test_runtime_finish(rt, &host);
    for (int i = 0; i < 3; i++) {
        test_cown_release(cowns[i]);
    }
    return 0;
}

TEST_IMPL(current_worker_index) {
    ASSERT(boc_current_worker() == -1);
    test_host host;
    test_host_init(&host);
    /* test_host's hooks check boc_current_worker() against the worker index
     * in worker_start, run and worker_stop; simple_body checks it is >= 0. */
    boc_runtime *rt = test_runtime_start(&host, 4);
    ASSERT(boc_current_worker() == -1);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (int i = 0; i < 500; i++) {
        schedule_simple(rt, NULL, &ran, rt);
    }
    test_runtime_finish(rt, &host);
    ASSERT_EQ_U64(atomic_load(&ran), 1000);
    ASSERT(boc_current_worker() == -1);
    return 0;
}

TEST_IMPL(stats_add_up) {
    enum { WORKERS = 4, PARENTS = 500, PLAIN = 500, COWNS = 8 };
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, WORKERS);
    test_cown *cowns[COWNS];
    for (int i = 0; i < COWNS; i++) {
        cowns[i] = test_cown_new(0);
    }
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (int i = 0; i < PARENTS; i++) {
        /* Each parent's child is dispatched from a worker: a local push. */
        schedule_simple(rt, cowns[i % COWNS], &ran, rt);
    }
    for (int i = 0; i < PLAIN; i++) {
        schedule_simple(rt, NULL, &ran, NULL);
    }
    ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    const uint64_t total = 2 * PARENTS + PLAIN;
    ASSERT_EQ_U64(atomic_load(&ran), total);

    /* Exact after quiescence (each count happens before its behavior's
     * completion), and still so after the stop. */
    for (int pass = 0; pass < 2; pass++) {
        uint64_t run = 0;
        uint64_t pushed_local = 0;
        uint64_t steals = 0;
        for (unsigned i = 0; i < WORKERS; i++) {
            boc_worker_stats stats;
            boc_runtime_stats(rt, i, &stats);
            run += stats.behaviors_run;
            pushed_local += stats.pushed_local;
            steals += stats.steals;
            ASSERT(stats.steals <= stats.behaviors_run);
        }
        ASSERT_EQ_U64(run, total);
        ASSERT_EQ_U64(run, atomic_load(&host.runs));
        ASSERT(pushed_local >= PARENTS);
        ASSERT(pushed_local <= total);
        ASSERT(steals <= total);
        if (pass == 0) {
            boc_runtime_stop(rt);
        }
    }
    ASSERT_EQ_U64(atomic_load(&host.violations), 0);
    boc_runtime_free(rt);
    for (int i = 0; i < COWNS; i++) {
        ASSERT_EQ_U64(cowns[i]->value, PARENTS / COWNS + (i < PARENTS % COWNS));
        test_cown_release(cowns[i]);
    }
    return 0;
}

TEST_IMPL(start_stop_many_runtimes) {
    enum { ROUNDS = 40 };
    test_cown *c = test_cown_new(0);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (unsigned round = 0; round < ROUNDS; round++) {
        test_host host;
        test_host_init(&host);
        unsigned workers = 1 + round % 4;
        boc_runtime *rt = test_runtime_start(&host, workers);
        if (round % 5 != 0) { /* some rounds start and stop with no work */
            for (int i = 0; i < 20; i++) {
                schedule_simple(rt, i % 2 ? c : NULL, &ran, NULL);
            }
        }
        test_runtime_finish(rt, &host);
        ASSERT_EQ_U64(atomic_load(&host.starts), workers);
        ASSERT_EQ_U64(atomic_load(&host.stops), workers);
    }
    ASSERT_EQ_U64(atomic_load(&ran), 20 * (ROUNDS - ROUNDS / 5));
    ASSERT_EQ_U64(c->value, 10 * (ROUNDS - ROUNDS / 5));
    test_cown_release(c);
    return 0;
}

TEST_IMPL(restart_same_runtime) {
    enum { ROUNDS = 25, WORKERS = 3, PER_ROUND = 20 };
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = boc_runtime_new(WORKERS, &test_host_ops, &host);
    ASSERT(rt != NULL);
    test_cown *c = test_cown_new(0);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (unsigned round = 0; round < ROUNDS; round++) {
        ASSERT(boc_runtime_start(rt) == 0);
        for (int i = 0; i < PER_ROUND; i++) {
            schedule_simple(rt, c, &ran, NULL);
        }
        ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
        boc_runtime_stop(rt);
        ASSERT_EQ_U64(atomic_load(&host.starts), (round + 1) * WORKERS);
        ASSERT_EQ_U64(atomic_load(&host.stops), (round + 1) * WORKERS);
    }
    ASSERT_EQ_U64(atomic_load(&host.violations), 0);
    ASSERT_EQ_U64(atomic_load(&host.idles), atomic_load(&host.busies));
    uint64_t run = 0;
    for (unsigned i = 0; i < WORKERS; i++) {
        boc_worker_stats stats;
        boc_runtime_stats(rt, i, &stats);
        run += stats.behaviors_run;
    }
    /* Statistics accumulate over the runtime's whole life. */
    ASSERT_EQ_U64(run, ROUNDS * PER_ROUND);
    ASSERT_EQ_U64(c->value, ROUNDS * PER_ROUND);
    boc_runtime_free(rt);
    test_cown_release(c);
    return 0;
}

/*
 * The parking handshake (sched.c), one wake-up at a time.  A lone worker goes
 * idle after every behavior (steal scans, then park), and the main thread, a
 * non-worker whose dispatch only pushes and signals, schedules the next one
 * after a seeded delay, so that over the rounds the push lands at every step
 * of the worker's way to sleep.  A lost wake-up leaves the behavior queued
 * with the worker asleep, and the quiescence wait times out.
 */
TEST_IMPL(park_wakeup_handshake) {
    enum { ROUNDS = 2000 };
    test_print_seed("park_wakeup_handshake");
    test_controlled_begin();
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 1);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    uint64_t rng = test_seed ^ UINT64_C(0x7061726b);
    for (int i = 0; i < ROUNDS; i++) {
        /* Up to a few more steps than the worker takes to fall asleep (32
         * steal scans, then the park sequence); under the controlled
         * scheduler each boc_yield_spin lets the worker take one step. */
        unsigned delay = (unsigned)(test_random_next(&rng) % 48);
        for (unsigned d = 0; d < delay; d++) {
            sched_yield();
            boc_yield_spin();
        }
        schedule_simple(rt, NULL, &ran, NULL);
        ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    }
    boc_worker_stats stats;
    boc_runtime_stats(rt, 0, &stats);
    test_runtime_finish(rt, &host);
    test_controlled_end("park_wakeup_handshake");
    printf("# park_wakeup_handshake: %llu parks in %d rounds\n", (unsigned long long)stats.parks,
           ROUNDS);
    ASSERT_EQ_U64(atomic_load(&ran), ROUNDS);
    return 0;
}
