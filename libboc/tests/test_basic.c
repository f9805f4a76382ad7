/*
 * Basic libboc test cases: cown ids and reference counts, behavior payloads,
 * argument checking, and the core scheduling guarantees on small workloads
 * (ordering on one cown, exclusivity over several, zero-cown and repeated-
 * cown behaviors, and behaviors that schedule behaviors).
 */
#include "test.h"

#include <pthread.h>
#include <string.h>

/* A payload that enters its (distinct) cowns, bumps their values and counts. */
typedef struct counting_payload {
    test_payload header;
    size_t count;
    test_cown *cowns[4];
    /* When set, cowns[0]->value must equal this before the bump (ordering). */
    bool check_order;
    uint64_t expected_value;
    atomic_ulong *ran;
} counting_payload;

static void counting_body(boc_behavior *b, void *raw) {
    (void)b;
    counting_payload *p = raw;
    for (size_t i = 0; i < p->count; i++) {
        test_cown_enter(p->cowns[i]);
    }
    if (p->check_order) {
        ASSERT_EQ_U64(p->cowns[0]->value, p->expected_value);
    }
    for (size_t i = 0; i < p->count; i++) {
        p->cowns[i]->value++;
    }
    for (size_t i = 0; i < p->count; i++) {
        test_cown_leave(p->cowns[i]);
    }
    if (p->ran != NULL) {
        atomic_fetch_add(p->ran, 1);
    }
}

/* Schedules a counting behavior.  `slots` may repeat cowns; `distinct` lists
 * each of them once (what the body enters). */
static void schedule_counting(boc_runtime *rt, test_cown *const *slots, size_t slot_count,
                              test_cown *const *distinct, size_t distinct_count,
                              atomic_ulong *ran) {
    boc_behavior *b = test_behavior_new(counting_body, sizeof(counting_payload), slots, slot_count);
    counting_payload *p = boc_behavior_payload(b);
    ASSERT(distinct_count <= 4);
    p->count = distinct_count;
    for (size_t i = 0; i < distinct_count; i++) {
        p->cowns[i] = distinct[i];
    }
    p->ran = ran;
    boc_schedule(rt, b);
}

/* ------------------------------------------------------------------ cowns */

typedef struct id_batch {
    uint64_t ids[1000];
} id_batch;

static void *make_cowns_thread(void *arg) {
    id_batch *batch = arg;
    for (size_t i = 0; i < 1000; i++) {
        test_cown *cown = test_cown_new(0);
        batch->ids[i] = cown->base.id;
        test_cown_release(cown);
    }
    return NULL;
}

static int compare_u64(const void *left, const void *right) {
    uint64_t a = *(const uint64_t *)left;
    uint64_t b = *(const uint64_t *)right;
    return (a > b) - (a < b);
}

TEST_IMPL(cown_ids_and_refcount) {
    unsigned destroyed = atomic_load(&test_cowns_destroyed);
    test_cown *a = test_cown_new(0);
    test_cown *p = test_cown_new(BOC_COWN_PINNED);
    ASSERT(a->base.id != 0);
    ASSERT(p->base.id > a->base.id);
    ASSERT(p->base.flags == BOC_COWN_PINNED);
    ASSERT(atomic_load(&a->base.refcount) == 1);
    ASSERT(atomic_load(&a->base.last) == NULL);
    boc_cown_incref(&a->base);
    ASSERT(atomic_load(&a->base.refcount) == 2);
    boc_cown_decref(&a->base);
    ASSERT(atomic_load(&a->base.refcount) == 1);
    ASSERT(atomic_load(&test_cowns_destroyed) == destroyed);
    test_cown_release(a);
    ASSERT(atomic_load(&test_cowns_destroyed) == destroyed + 1);
    test_cown_release(p);
    ASSERT(atomic_load(&test_cowns_destroyed) == destroyed + 2);

    /* Ids handed out concurrently are unique. */
    enum { THREADS = 4 };
    static id_batch batches[THREADS];
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        ASSERT(pthread_create(&threads[i], NULL, make_cowns_thread, &batches[i]) == 0);
    }
    for (int i = 0; i < THREADS; i++) {
        ASSERT(pthread_join(threads[i], NULL) == 0);
    }
    uint64_t *all = malloc(sizeof batches);
    ASSERT(all != NULL);
    memcpy(all, batches, sizeof batches);
    size_t total = THREADS * (sizeof batches[0].ids / sizeof batches[0].ids[0]);
    qsort(all, total, sizeof(uint64_t), compare_u64);
    for (size_t i = 1; i < total; i++) {
        ASSERT(all[i - 1] < all[i]);
    }
    free(all);
    return 0;
}

/* A cown that is never freed, so that boc_cown_try_incref may be called on it
 * after its count reached zero: destroy only counts, and says it ran. */
typedef struct try_cown {
    boc_cown base;
    atomic_uint destroyed;
    atomic_bool gone;
} try_cown;

static void try_cown_destroy(boc_cown *cown) {
    try_cown *c = (try_cown *)cown;
    atomic_fetch_add(&c->destroyed, 1);
    atomic_store(&c->gone, true);
}

enum { TRY_THREADS = 4, TRY_ROUNDS = 20000 };

/* Takes and drops references while the owner drops the last one.  A take
 * that starts after destroy ran must fail: seeing `gone` (seq_cst) orders
 * the decrement to zero before the take, and the count never rises from
 * zero. */
static void *try_incref_thread(void *arg) {
    try_cown *c = arg;
    for (unsigned i = 0; i < TRY_ROUNDS; i++) {
        bool gone = atomic_load(&c->gone);
        if (boc_cown_try_incref(&c->base)) {
            ASSERT(!gone);
            boc_cown_decref(&c->base);
        } else {
            ASSERT(atomic_load(&c->base.refcount) == 0);
        }
    }
    return NULL;
}

TEST_IMPL(cown_try_incref) {
    static try_cown c;
    boc_cown_init(&c.base, 0, try_cown_destroy);
    atomic_store(&c.destroyed, 0);
    atomic_store(&c.gone, false);
    ASSERT(boc_cown_try_incref(&c.base));
    ASSERT(atomic_load(&c.base.refcount) == 2);
    boc_cown_decref(&c.base);
    ASSERT(atomic_load(&c.base.refcount) == 1);

    /* Threads take and drop references while the owner drops the last one:
     * destroy runs exactly once, and nothing revives the cown after it. */
    pthread_t threads[TRY_THREADS];
    for (int i = 0; i < TRY_THREADS; i++) {
        ASSERT(pthread_create(&threads[i], NULL, try_incref_thread, &c) == 0);
    }
    boc_cown_decref(&c.base);
    for (int i = 0; i < TRY_THREADS; i++) {
        ASSERT(pthread_join(threads[i], NULL) == 0);
    }
    ASSERT(atomic_load(&c.destroyed) == 1);
    ASSERT(!boc_cown_try_incref(&c.base));
    ASSERT(atomic_load(&c.base.refcount) == 0);
    ASSERT(atomic_load(&c.destroyed) == 1);
    return 0;
}

/* -------------------------------------------------------------- behaviors */

TEST_IMPL(behavior_payload_and_discard) {
    test_cown *a = test_cown_new(0);
    test_cown *c = test_cown_new(0);
    test_cown *p = test_cown_new(BOC_COWN_PINNED);

    boc_behavior *b = boc_behavior_new(3, 100);
    ASSERT(b != NULL);
    unsigned char *payload = boc_behavior_payload(b);
    ASSERT((uintptr_t)payload % _Alignof(max_align_t) == 0);
    for (size_t i = 0; i < 100; i++) {
        ASSERT(payload[i] == 0);
    }
    memset(payload, 0xab, 100);

    boc_behavior_set_cown(b, 0, &a->base);
    boc_behavior_set_cown(b, 1, &c->base);
    boc_behavior_set_cown(b, 2, &a->base);
    ASSERT(atomic_load(&a->base.refcount) == 3);
    ASSERT(atomic_load(&c->base.refcount) == 2);
    ASSERT(!boc_behavior_is_pinned(b));
    /* Overwriting a slot drops the old cown's reference. */
    boc_behavior_set_cown(b, 1, &p->base);
    ASSERT(atomic_load(&c->base.refcount) == 1);
    ASSERT(atomic_load(&p->base.refcount) == 2);
    ASSERT(boc_behavior_is_pinned(b));
    boc_behavior_discard(b);
    ASSERT(atomic_load(&a->base.refcount) == 1);
    ASSERT(atomic_load(&p->base.refcount) == 1);

    boc_behavior *empty = boc_behavior_new(0, 0);
    ASSERT(empty != NULL);
    ASSERT(!boc_behavior_is_pinned(empty));
    boc_behavior_discard(empty);
    boc_behavior_discard(NULL);

    ASSERT(boc_behavior_new(SIZE_MAX, 0) == NULL);
    ASSERT(boc_behavior_new(1, SIZE_MAX) == NULL);

    test_cown_release(a);
    test_cown_release(c);
    test_cown_release(p);
    return 0;
}

static void nothing_body(boc_behavior *b, void *raw) {
    (void)b;
    (void)raw;
}

static void minimal_run(void *user, boc_behavior *b, void *context) {
    (void)context;
    atomic_fetch_add((atomic_ulong *)user, 1);
    test_payload *payload = boc_behavior_payload(b);
    payload->body(b, payload);
}

TEST_IMPL(runtime_new_rejects_bad_arguments) {
    test_host host;
    test_host_init(&host);
    boc_runtime_ops no_run = test_host_ops;
    no_run.run = NULL;
    ASSERT(boc_runtime_new(0, &test_host_ops, &host) == NULL);
    ASSERT(boc_runtime_new(2, &no_run, &host) == NULL);
    ASSERT(boc_runtime_new(2, NULL, &host) == NULL);
    boc_runtime_free(NULL);

    /* A runtime that is never started can be stopped and freed. */
    boc_runtime *idle = boc_runtime_new(3, &test_host_ops, &host);
    ASSERT(idle != NULL);
    ASSERT(boc_runtime_live(idle) == 0);
    ASSERT(boc_runtime_wait_quiescent(idle, 0) == 0);
    ASSERT(boc_runtime_wait_quiescent(idle, -1) == 0);
    ASSERT(boc_pinned_depth(idle) == 0);
    ASSERT(boc_pinned_nonempty_since(idle) == 0);
    ASSERT(boc_pinned_pop(idle) == NULL);
    boc_runtime_stop(idle);
    boc_runtime_free(idle);
    ASSERT(atomic_load(&host.starts) == 0);
    ASSERT(boc_current_worker() == -1);

    /* Only `run` is mandatory. */
    atomic_ulong runs;
    atomic_init(&runs, 0);
    boc_runtime_ops minimal = {.run = minimal_run};
    boc_runtime *rt = boc_runtime_new(2, &minimal, &runs);
    ASSERT(rt != NULL);
    ASSERT(boc_runtime_start(rt) == 0);
    ASSERT(boc_runtime_start(rt) == 0); /* already running: no-op */
    test_cown *c = test_cown_new(0);
    for (int i = 0; i < 10; i++) {
        boc_schedule(rt, test_behavior_new(nothing_body, sizeof(test_payload), &c, 1));
        boc_schedule(rt, test_behavior_new(nothing_body, sizeof(test_payload), NULL, 0));
    }
    ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    ASSERT(atomic_load(&runs) == 20);
    boc_runtime_free(rt); /* stops it first */
    test_cown_release(c);
    return 0;
}

/* ------------------------------------------------------------- scheduling */

TEST_IMPL(chain_order_single_cown) {
    enum { COUNT = 2000 };
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 4);
    test_cown *c = test_cown_new(0);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (uint64_t i = 0; i < COUNT; i++) {
        boc_behavior *b = test_behavior_new(counting_body, sizeof(counting_payload), &c, 1);
        counting_payload *p = boc_behavior_payload(b);
        p->count = 1;
        p->cowns[0] = c;
        p->check_order = true;
        p->expected_value = i;
        p->ran = &ran;
        boc_schedule(rt, b);
    }
    test_runtime_finish(rt, &host);
    ASSERT_EQ_U64(atomic_load(&ran), COUNT);
    ASSERT_EQ_U64(c->value, COUNT);
    ASSERT_EQ_U64(atomic_load(&host.dones), COUNT);
    test_cown_release(c);
    return 0;
}

/* Several threads schedule on one cown; each thread's behaviors must run in
 * that thread's order (checked with per-thread sequence numbers in the log). */
enum { ONE_COWN_THREADS = 3, ONE_COWN_PER_THREAD = 5000 };

typedef struct sequenced_payload {
    test_payload header;
    test_cown *cown;
    unsigned thread;
    uint64_t sequence;
} sequenced_payload;

static void sequenced_body(boc_behavior *b, void *raw) {
    (void)b;
    sequenced_payload *p = raw;
    test_cown_enter(p->cown);
    ASSERT(p->cown->log[p->thread] + 1 == p->sequence);
    p->cown->log[p->thread] = p->sequence;
    p->cown->value++;
    test_cown_leave(p->cown);
}

typedef struct one_cown_thread {
    boc_runtime *rt;
    test_cown *cown;
    unsigned thread;
} one_cown_thread;

static void *one_cown_scheduler(void *arg) {
    one_cown_thread *t = arg;
    for (uint64_t i = 1; i <= ONE_COWN_PER_THREAD; i++) {
        boc_behavior *b = test_behavior_new(sequenced_body, sizeof(sequenced_payload), &t->cown, 1);
        sequenced_payload *p = boc_behavior_payload(b);
        p->cown = t->cown;
        p->thread = t->thread;
        p->sequence = i;
        boc_schedule(t->rt, b);
    }
    return NULL;
}

TEST_IMPL(many_behaviors_one_cown) {
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 4);
    test_cown *c = test_cown_new(0);
    pthread_t threads[ONE_COWN_THREADS];
    one_cown_thread args[ONE_COWN_THREADS];
    for (unsigned i = 0; i < ONE_COWN_THREADS; i++) {
        args[i] = (one_cown_thread){rt, c, i};
        ASSERT(pthread_create(&threads[i], NULL, one_cown_scheduler, &args[i]) == 0);
    }
    for (unsigned i = 0; i < ONE_COWN_THREADS; i++) {
        ASSERT(pthread_join(threads[i], NULL) == 0);
    }
    test_runtime_finish(rt, &host);
    ASSERT_EQ_U64(c->value, ONE_COWN_THREADS * ONE_COWN_PER_THREAD);
    for (unsigned i = 0; i < ONE_COWN_THREADS; i++) {
        ASSERT_EQ_U64(c->log[i], ONE_COWN_PER_THREAD);
    }
    test_cown_release(c);
    return 0;
}

TEST_IMPL(zero_cown_behavior) {
    enum { COUNT = 1000 };
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 2);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (int i = 0; i < COUNT; i++) {
        schedule_counting(rt, NULL, 0, NULL, 0, &ran);
    }
    ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    ASSERT_EQ_U64(atomic_load(&ran), COUNT);
    /* The quiescent hook ran only if the wait above had to block (it is
     * called while a thread watches): quiescent_hook_while_watched tests
     * it. */
    test_runtime_finish(rt, &host);
    return 0;
}

TEST_IMPL(repeated_cown_in_behavior) {
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 2);
    test_cown *c = test_cown_new(0);
    test_cown *d = test_cown_new(0);
    atomic_ulong ran;
    atomic_init(&ran, 0);

    for (int round = 0; round < 100; round++) {
        test_cown *cc[] = {c, c};
        test_cown *only_c[] = {c};
        schedule_counting(rt, cc, 2, only_c, 1, &ran);
        test_cown *cdcdd[] = {c, d, c, d, d};
        test_cown *cd[] = {c, d};
        schedule_counting(rt, cdcdd, 5, cd, 2, &ran);
        test_cown *dcd[] = {d, c, d};
        schedule_counting(rt, dcd, 3, cd, 2, &ran);
    }
    test_runtime_finish(rt, &host);
    ASSERT_EQ_U64(atomic_load(&ran), 300);
    ASSERT_EQ_U64(c->value, 300);
    ASSERT_EQ_U64(d->value, 200);
    /* Every reference a repeat took has been dropped again. */
    ASSERT(atomic_load(&c->base.refcount) == 1);
    ASSERT(atomic_load(&d->base.refcount) == 1);
    test_cown_release(c);
    test_cown_release(d);
    return 0;
}

TEST_IMPL(multi_cown_exclusivity) {
    enum { COWNS = 12, COUNT = 5000 };
    test_print_seed("multi_cown_exclusivity");
    test_controlled_begin();
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 4);
    test_cown *cowns[COWNS];
    uint64_t expected[COWNS] = {0};
    for (int i = 0; i < COWNS; i++) {
        cowns[i] = test_cown_new(0);
    }
    atomic_ulong ran;
    atomic_init(&ran, 0);
    uint64_t rng = test_seed;
    for (int i = 0; i < COUNT; i++) {
        size_t want = 1 + test_random_next(&rng) % 3;
        test_cown *chosen[3];
        size_t count = 0;
        while (count < want) {
            test_cown *pick = cowns[test_random_next(&rng) % COWNS];
            bool seen = false;
            for (size_t j = 0; j < count; j++) {
                seen = seen || chosen[j] == pick;
            }
            if (!seen) {
                chosen[count++] = pick;
            }
        }
        for (size_t j = 0; j < count; j++) {
            for (int k = 0; k < COWNS; k++) {
                expected[k] += cowns[k] == chosen[j];
            }
        }
        schedule_counting(rt, chosen, count, chosen, count, &ran);
    }
    test_runtime_finish(rt, &host);
    test_controlled_end("multi_cown_exclusivity");
    ASSERT_EQ_U64(atomic_load(&ran), COUNT);
    for (int i = 0; i < COWNS; i++) {
        ASSERT_EQ_U64(cowns[i]->value, expected[i]);
        test_cown_release(cowns[i]);
    }
    return 0;
}

/* Behaviors naming many cowns (above the insertion-sort cutoff, so the
 * runtime sorts with qsort), in shuffled slot order and with repeats. */
typedef struct wide_payload {
    test_payload header;
    size_t count;
    test_cown **cowns; /* distinct; owned by the payload */
    atomic_ulong *ran;
} wide_payload;

static void wide_body(boc_behavior *b, void *raw) {
    (void)b;
    wide_payload *p = raw;
    for (size_t i = 0; i < p->count; i++) {
        test_cown_enter(p->cowns[i]);
    }
    for (size_t i = 0; i < p->count; i++) {
        p->cowns[i]->value++;
        test_cown_leave(p->cowns[i]);
    }
    free(p->cowns);
    atomic_fetch_add(p->ran, 1);
}

TEST_IMPL(large_cown_sets) {
    enum { COWNS = 24, COUNT = 300, MAX_SLOTS = 40 };
    test_print_seed("large_cown_sets");
    test_controlled_begin();
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 4);
    test_cown *cowns[COWNS];
    uint64_t expected[COWNS] = {0};
    for (int i = 0; i < COWNS; i++) {
        cowns[i] = test_cown_new(0);
    }
    atomic_ulong ran;
    atomic_init(&ran, 0);
    uint64_t rng = test_seed ^ UINT64_C(0x51de);
    for (int n = 0; n < COUNT; n++) {
        size_t slot_count = 17 + test_random_next(&rng) % (MAX_SLOTS - 16);
        test_cown *slots[MAX_SLOTS];
        bool named[COWNS] = {false};
        for (size_t i = 0; i < slot_count; i++) {
            size_t pick = test_random_next(&rng) % COWNS;
            slots[i] = cowns[pick];
            named[pick] = true;
        }
        boc_behavior *b = test_behavior_new(wide_body, sizeof(wide_payload), slots, slot_count);
        wide_payload *p = boc_behavior_payload(b);
        p->cowns = malloc(COWNS * sizeof *p->cowns);
        ASSERT(p->cowns != NULL);
        p->count = 0;
        for (int i = 0; i < COWNS; i++) {
            if (named[i]) {
                p->cowns[p->count++] = cowns[i];
                expected[i]++;
            }
        }
        p->ran = &ran;
        boc_schedule(rt, b);
    }
    test_runtime_finish(rt, &host);
    test_controlled_end("large_cown_sets");
    ASSERT_EQ_U64(atomic_load(&ran), COUNT);
    for (int i = 0; i < COWNS; i++) {
        ASSERT_EQ_U64(cowns[i]->value, expected[i]);
        ASSERT(atomic_load(&cowns[i]->base.refcount) == 1);
        test_cown_release(cowns[i]);
    }
    return 0;
}

/* A binary tree of behaviors: each node holds cown `c`, schedules one child
 * on `c` (which must wait for the parent) and one with no cowns. */
typedef struct tree_payload {
    test_payload header;
    boc_runtime *rt;
    test_cown *cown; /* NULL for the zero-cown children */
    unsigned depth;
    atomic_ulong *ran;
} tree_payload;

static void tree_body(boc_behavior *b, void *raw);

static void schedule_tree_node(boc_runtime *rt, test_cown *cown, unsigned depth,
                               atomic_ulong *ran) {
    boc_behavior *b = test_behavior_new(tree_body, sizeof(tree_payload), &cown, cown ? 1 : 0);
    tree_payload *p = boc_behavior_payload(b);
    p->rt = rt;
    p->cown = cown;
    p->depth = depth;
    p->ran = ran;
    boc_schedule(rt, b);
}

static void tree_body(boc_behavior *b, void *raw) {
    (void)b;
    tree_payload *p = raw;
    if (p->cown != NULL) {
        test_cown_enter(p->cown);
        p->cown->value++;
    }
    ASSERT(boc_current_worker() >= 0);
    if (p->depth > 0) {
        /* The first child is queued behind us on our own cown: if it ran
         * now, test_cown_enter would fail. */
        schedule_tree_node(p->rt, p->cown, p->depth - 1, p->ran);
        schedule_tree_node(p->rt, NULL, p->depth - 1, p->ran);
    }
    if (p->cown != NULL) {
        test_cown_leave(p->cown);
    }
    atomic_fetch_add(p->ran, 1);
}

TEST_IMPL(schedule_from_inside_run) {
    enum { DEPTH = 10 };
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 4);
    test_cown *c = test_cown_new(0);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    schedule_tree_node(rt, c, DEPTH, &ran);
    test_runtime_finish(rt, &host);
    ASSERT_EQ_U64(atomic_load(&ran), (UINT64_C(1) << (DEPTH + 1)) - 1);
    /* Only the chain of first children (and the root) hold c. */
    ASSERT_EQ_U64(c->value, DEPTH + 1);
    test_cown_release(c);
    return 0;
}
