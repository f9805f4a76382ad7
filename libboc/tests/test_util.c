/*
 * The test host shared by the libboc test cases: runtime hooks that count
 * every call and check the calling protocol (which thread, in which order),
 * a cown type with an exclusivity flag and cown-protected data, and helpers
 * to build behaviors whose payload starts with a body function.
 */
#include "test.h"

#include <string.h>
#include <time.h>

void test_sleep_ms(unsigned ms) {
    struct timespec delay = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&delay, &delay) != 0) {
        /* interrupted: sleep for the remainder */
    }
}

uint64_t test_random_next(uint64_t *state) {
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

void test_print_seed(const char *name) {
    printf("# %s seed: %llu (rerun: %s)\n", name, (unsigned long long)test_seed,
           test_rerun_command(name));
    fflush(stdout);
}

void test_controlled_begin(void) {
    if (test_controlled) {
        ASSERT(boc_yield_controlled_begin());
    }
}

void test_controlled_end(const char *name) {
    if (!test_controlled) {
        return;
    }
    boc_yield_schedule schedule;
    boc_yield_controlled_end(&schedule);
    printf("# %s controlled schedule: %llu steps, %llu switches, trace %016llx\n", name,
           (unsigned long long)schedule.steps, (unsigned long long)schedule.switches,
           (unsigned long long)schedule.trace_hash);
    fflush(stdout);
}

/* ------------------------------------------------------------- test host */

void test_host_init(test_host *host) {
    memset(host, 0, sizeof *host);
    atomic_init(&host->starts, 0);
    atomic_init(&host->stops, 0);
    atomic_init(&host->idles, 0);
    atomic_init(&host->busies, 0);
    atomic_init(&host->runs, 0);
    atomic_init(&host->dones, 0);
    atomic_init(&host->pinned_ready, 0);
    atomic_init(&host->quiescent, 0);
    atomic_init(&host->fail_start_index, -1);
    atomic_init(&host->violations, 0);
    for (int i = 0; i < TEST_MAX_WORKERS; i++) {
        atomic_init(&host->worker_state[i], TEST_WORKER_NONE);
    }
}

static void host_violation(test_host *host, const char *what) {
    fprintf(stderr, "hook protocol violation: %s\n", what);
    atomic_fetch_add(&host->violations, 1);
}

/* Moves a worker's hook state from `expected` to `next`, noting violations. */
static void host_transition(test_host *host, atomic_int *state, int expected, int next,
                            const char *what) {
    int previous = atomic_exchange(state, next);
    if (previous != expected) {
        host_violation(host, what);
    }
}

static unsigned host_worker_of(test_host *host, void *context) {
    return (unsigned)((atomic_int *)context - host->worker_state);
}

static void *host_worker_start(void *user, unsigned index, bool *failed) {
    test_host *host = user;
    atomic_fetch_add(&host->starts, 1);
    if (index >= TEST_MAX_WORKERS || boc_current_worker() != (int)index) {
        host_violation(host, "worker_start: bad index or boc_current_worker");
        return NULL;
    }
    atomic_int *state = &host->worker_state[index];
    int previous = atomic_load(state);
    if (previous == TEST_WORKER_BUSY || previous == TEST_WORKER_IDLE) {
        host_violation(host, "worker_start on a running worker");
    }
    int fail = atomic_load(&host->fail_start_index);
    if (fail == -2 || fail == (int)index) {
        atomic_store(state, TEST_WORKER_FAILED);
        *failed = true;
        return NULL;
    }
    atomic_store(state, TEST_WORKER_BUSY);
    return state;
}

static void host_worker_stop(void *user, unsigned index, void *context) {
    test_host *host = user;
    atomic_fetch_add(&host->stops, 1);
    if (context != &host->worker_state[index] || boc_current_worker() != (int)index) {
        host_violation(host, "worker_stop: wrong context or thread");
        return;
    }
    host_transition(host, context, TEST_WORKER_BUSY, TEST_WORKER_STOPPED,
                    "worker_stop while not busy");
}

static void host_run(void *user, boc_behavior *b, void *context) {
    test_host *host = user;
    atomic_fetch_add(&host->runs, 1);
    if (boc_behavior_is_pinned(b)) {
        host_violation(host, "pinned behavior run on a worker");
    }
    if (context == NULL || boc_current_worker() != (int)host_worker_of(host, context)) {
        host_violation(host, "run: wrong context or thread");
    } else if (atomic_load((atomic_int *)context) != TEST_WORKER_BUSY) {
        host_violation(host, "run while not busy");
    }
    test_payload *payload = boc_behavior_payload(b);
    payload->body(b, payload);
}

static void host_worker_idle(void *user, void *context) {
    test_host *host = user;
    atomic_fetch_add(&host->idles, 1);
    host_transition(host, context, TEST_WORKER_BUSY, TEST_WORKER_IDLE, "idle while not busy");
}

static void host_worker_busy(void *user, void *context) {
    test_host *host = user;
    atomic_fetch_add(&host->busies, 1);
    host_transition(host, context, TEST_WORKER_IDLE, TEST_WORKER_BUSY, "busy while not idle");
}

static void host_behavior_done(void *user, boc_behavior *b) {
    test_host *host = user;
    (void)b;
    atomic_fetch_add(&host->dones, 1);
}

static void host_pinned_ready(void *user) {
    test_host *host = user;
    atomic_fetch_add(&host->pinned_ready, 1);
}

static void host_quiescent(void *user) {
    test_host *host = user;
    atomic_fetch_add(&host->quiescent, 1);
}

const boc_runtime_ops test_host_ops = {
    .worker_start = host_worker_start,
    .worker_stop = host_worker_stop,
    .run = host_run,
    .worker_idle = host_worker_idle,
    .worker_busy = host_worker_busy,
    .behavior_done = host_behavior_done,
    .pinned_ready = host_pinned_ready,
    .quiescent = host_quiescent,
};

boc_runtime *test_runtime_start(test_host *host, unsigned workers) {
    ASSERT(workers <= TEST_MAX_WORKERS);
    boc_runtime *rt = boc_runtime_new(workers, &test_host_ops, host);
    ASSERT(rt != NULL);
    ASSERT(boc_runtime_worker_count(rt) == workers);
    ASSERT(boc_runtime_start(rt) == 0);
    return rt;
}

void test_runtime_finish(boc_runtime *rt, test_host *host) {
    ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    ASSERT_EQ_U64(boc_runtime_live(rt), 0);
    unsigned workers = boc_runtime_worker_count(rt);
    boc_runtime_stop(rt);
    boc_runtime_stop(rt); /* idempotent */
    ASSERT_EQ_U64(atomic_load(&host->violations), 0);
    ASSERT_EQ_U64(atomic_load(&host->starts), atomic_load(&host->stops));
    ASSERT_EQ_U64(atomic_load(&host->idles), atomic_load(&host->busies));
    for (unsigned i = 0; i < workers; i++) {
        ASSERT(atomic_load(&host->worker_state[i]) == TEST_WORKER_STOPPED);
    }
    boc_runtime_free(rt);
}

/* ----------------------------------------------------------------- cowns */

atomic_uint test_cowns_destroyed;

static void test_cown_destroy(boc_cown *base) {
    test_cown *cown = (test_cown *)base;
    ASSERT(!atomic_load(&cown->in_use));
    atomic_fetch_add(&test_cowns_destroyed, 1);
    free(cown);
}

test_cown *test_cown_new(uint32_t flags) {
    test_cown *cown = calloc(1, sizeof *cown);
    ASSERT(cown != NULL);
    boc_cown_init(&cown->base, flags, test_cown_destroy);
    atomic_init(&cown->in_use, false);
    return cown;
}

void test_cown_release(test_cown *cown) { boc_cown_decref(&cown->base); }

void test_cown_enter(test_cown *cown) {
    bool was_in_use = atomic_exchange(&cown->in_use, true);
    ASSERT(!was_in_use);
    /* Yield point inside the body: a behavior wrongly admitted to this cown
     * now would find it in use (in controlled mode, bodies are otherwise
     * atomic, so the exclusivity check could never fire). */
    boc_yield_here();
}

void test_cown_leave(test_cown *cown) { atomic_store(&cown->in_use, false); }

void test_cown_log(test_cown *cown, uint64_t entry) {
    ASSERT(cown->log_length < sizeof cown->log / sizeof cown->log[0]);
    cown->log[cown->log_length++] = entry;
}

/* ------------------------------------------------------------- behaviors */

boc_behavior *test_behavior_new(void (*body)(boc_behavior *, void *), size_t payload_size,
                                test_cown *const *cowns, size_t count) {
    ASSERT(payload_size >= sizeof(test_payload));
    boc_behavior *b = boc_behavior_new(count, payload_size);
    ASSERT(b != NULL);
    test_payload *payload = boc_behavior_payload(b);
    payload->body = body;
    for (size_t i = 0; i < count; i++) {
        boc_behavior_set_cown(b, i, &cowns[i]->base);
    }
    return b;
}

void test_run_pinned(boc_behavior *b) {
    ASSERT(boc_behavior_is_pinned(b));
    ASSERT(boc_current_worker() == -1);
    test_payload *payload = boc_behavior_payload(b);
    payload->body(b, payload);
    boc_behavior_complete(b);
}
