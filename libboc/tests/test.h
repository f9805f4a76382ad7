/*
 * Shared declarations for the libboc C tests: the test-case macros, failure
 * reporting, and a small "test host" (runtime hooks that count and check how
 * the runtime calls them, a cown type with an exclusivity flag, and
 * behaviors whose payload starts with a body function).
 *
 * A test is `TEST_IMPL(name) { ...; return 0; }`, listed once in
 * test_list.h.  Failures call abort() via ASSERT (the runner executes each
 * case in its own child process, so an abort fails just that case), which
 * also works from worker threads.
 */
#ifndef BOC_TEST_H
#define BOC_TEST_H

#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "boc.h"
#include "boc_yield.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define TEST_IMPL(name) int test_##name(void)

#define ASSERT(cond)                                                                               \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #cond);           \
            fflush(stderr);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define ASSERT_EQ_U64(actual, expected)                                                            \
    do {                                                                                           \
        uint64_t test_actual_ = (uint64_t)(actual);                                                \
        uint64_t test_expected_ = (uint64_t)(expected);                                            \
        if (test_actual_ != test_expected_) {                                                      \
            fprintf(stderr, "%s:%d: %s == %llu, expected %s == %llu\n", __FILE__, __LINE__,        \
                    #actual, (unsigned long long)test_actual_, #expected,                          \
                    (unsigned long long)test_expected_);                                           \
            fflush(stderr);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Seed for randomised tests (--seed N or BOC_TEST_SEED; fixed default).  In
 * a yield-point build it also seeds the yield points (boc_yield.h). */
extern uint64_t test_seed;
/* argv[0] of the runner, for rerun commands. */
extern const char *test_program;
/* --controlled: run under the controlled scheduler where supported. */
extern bool test_controlled;
/* Behaviors in the stress test (--stress-behaviors; build default). */
extern uint32_t test_stress_behaviors;
/* The command line that reruns case `name` with this run's seed and options
 * (a static buffer). */
const char *test_rerun_command(const char *name);

/* Quiescence wait used by tests that expect to finish: generous, so that a
 * slow sanitizer build still passes, but bounded, so a hang fails (60 s; the
 * sweep builds use less, so a deadlock found by a sweep fails quickly). */
extern int64_t test_quiescence_timeout_ns;
#define TEST_QUIESCENCE_TIMEOUT_NS test_quiescence_timeout_ns

/* Prints the seed of seeded case `name` and how to rerun it. */
void test_print_seed(const char *name);
/* With --controlled: puts the calling (main) thread under the controlled
 * scheduler; call before creating any thread of the case.  No-op otherwise. */
void test_controlled_begin(void);
/* Ends it (after every other thread is joined) and prints the schedule's
 * summary, whose trace hash is the same on every run of the same seed. */
void test_controlled_end(const char *name);

/* Sleeps for `ms` milliseconds. */
void test_sleep_ms(unsigned ms);

/* splitmix64: small, seedable, good enough for picking test inputs. */
uint64_t test_random_next(uint64_t *state);

/* ------------------------------------------------------------- test host */

#define TEST_MAX_WORKERS 16

/* Per-worker hook state, to check that the hooks alternate properly. */
enum {
    TEST_WORKER_NONE = 0,
    TEST_WORKER_BUSY,
    TEST_WORKER_IDLE,
    TEST_WORKER_STOPPED,
    TEST_WORKER_FAILED,
};

typedef struct test_host {
    atomic_uint starts;
    atomic_uint stops;
    atomic_ulong idles;
    atomic_ulong busies;
    atomic_ulong runs;
    atomic_ulong dones;
    atomic_ulong pinned_ready;
    atomic_ulong quiescent;
    /* Worker index whose start hook fails; -1 for none, -2 for all. */
    atomic_int fail_start_index;
    /* Protocol violations seen inside hooks (checked by the test). */
    atomic_uint violations;
    atomic_int worker_state[TEST_MAX_WORKERS];
} test_host;

void test_host_init(test_host *host);
/* Hooks that count into the test_host passed as `user`. */
extern const boc_runtime_ops test_host_ops;
/* boc_runtime_new + boc_runtime_start, asserting success. */
boc_runtime *test_runtime_start(test_host *host, unsigned workers);
/* Waits (bounded) for quiescence, stops and frees; checks the hook protocol. */
void test_runtime_finish(boc_runtime *rt, test_host *host);

/* ----------------------------------------------------------------- cowns */

typedef struct test_cown {
    boc_cown base;
    /* Set with exchange on entry: entering a cown that is in use fails. */
    atomic_bool in_use;
    /* Plain data protected by the cown: written only by its behaviors, so
     * ThreadSanitizer checks the runtime's happens-before edges for us. */
    uint64_t value;
    uint64_t log_length;
    uint64_t log[64];
} test_cown;

extern atomic_uint test_cowns_destroyed;
test_cown *test_cown_new(uint32_t flags);
void test_cown_release(test_cown *cown);
/* Marks the cown in use (failing if it already was) / no longer in use. */
void test_cown_enter(test_cown *cown);
void test_cown_leave(test_cown *cown);
/* Appends to the cown's log (call only while holding the cown). */
void test_cown_log(test_cown *cown, uint64_t entry);

/* ------------------------------------------------------------- behaviors */

/* Every test behavior's payload starts with this header. */
typedef struct test_payload {
    void (*body)(boc_behavior *b, void *payload);
} test_payload;

/* A behavior with the given body and cowns (NULL-free array of `count`). */
boc_behavior *test_behavior_new(void (*body)(boc_behavior *, void *), size_t payload_size,
                                test_cown *const *cowns, size_t count);
/* Runs a popped pinned behavior on the calling (main) thread and completes it. */
void test_run_pinned(boc_behavior *b);

#endif /* BOC_TEST_H */
