/*
 * Test cases for the pinned lane: behaviors that name a BOC_COWN_PINNED cown
 * never reach a worker; they wait in the lane, in order, until the test's
 * main thread pops, runs and completes them; pinned_ready fires when the lane
 * becomes non-empty and boc_pinned_nonempty_since tracks that moment.
 */
#include "test.h"

typedef struct pinned_payload {
    test_payload header;
    size_t count;
    test_cown *cowns[2];
    uint64_t entry;
    atomic_ulong *ran;
    /* For behaviors that schedule a pinned behavior from a worker. */
    boc_runtime *rt;
    test_cown *pinned_target;
} pinned_payload;

/* Enters its cowns, logs `entry` in the first one; pinned ones must run on
 * the main thread (boc_current_worker() == -1). */
static void pinned_body(boc_behavior *b, void *raw) {
    pinned_payload *p = raw;
    ASSERT(boc_behavior_is_pinned(b) == (boc_current_worker() == -1));
    for (size_t i = 0; i < p->count; i++) {
        test_cown_enter(p->cowns[i]);
    }
    if (p->count > 0) {
        test_cown_log(p->cowns[0], p->entry);
    }
    for (size_t i = 0; i < p->count; i++) {
        test_cown_leave(p->cowns[i]);
    }
    atomic_fetch_add(p->ran, 1);
}

static pinned_payload *make_pinned(boc_behavior **out, test_cown *const *cowns, size_t count,
                                   uint64_t entry, atomic_ulong *ran) {
    boc_behavior *b = test_behavior_new(pinned_body, sizeof(pinned_payload), cowns, count);
    pinned_payload *p = boc_behavior_payload(b);
    p->count = count;
    for (size_t i = 0; i < count; i++) {
        p->cowns[i] = cowns[i];
    }
    p->entry = entry;
    p->ran = ran;
    *out = b;
    return p;
}

static void schedule_pinned(boc_runtime *rt, test_cown *const *cowns, size_t count, uint64_t entry,
                            atomic_ulong *ran) {
    boc_behavior *b;
    make_pinned(&b, cowns, count, entry, ran);
    boc_schedule(rt, b);
}

/* Pops the lane until `live` behaviors are done, running each on this thread. */
static void drain_pinned_until_quiescent(boc_runtime *rt) {
    uint64_t deadline = boc_now_ns() + (uint64_t)TEST_QUIESCENCE_TIMEOUT_NS;
    while (boc_runtime_live(rt) != 0) {
        ASSERT(boc_now_ns() < deadline);
        boc_behavior *b = boc_pinned_pop(rt);
        if (b != NULL) {
            test_run_pinned(b);
        } else {
            test_sleep_ms(1);
        }
    }
}

TEST_IMPL(pinned_lane_order) {
    enum { COUNT = 5 };
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 2);
    test_cown *pinned[COUNT];
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (int i = 0; i < COUNT; i++) {
        pinned[i] = test_cown_new(BOC_COWN_PINNED);
    }

    ASSERT(boc_pinned_nonempty_since(rt) == 0);
    uint64_t before = boc_now_ns();
    for (uint64_t i = 0; i < COUNT; i++) {
        schedule_pinned(rt, &pinned[i], 1, i, &ran);
    }
    /* Each was free, so each was dispatched inside boc_schedule. */
    ASSERT_EQ_U64(boc_pinned_depth(rt), COUNT);
    ASSERT_EQ_U64(atomic_load(&host.pinned_ready), 1);
    uint64_t since = boc_pinned_nonempty_since(rt);
    ASSERT(since >= before && since <= boc_now_ns());
    test_sleep_ms(10);
    ASSERT_EQ_U64(atomic_load(&ran), 0); /* no worker touched them */

    for (uint64_t i = 0; i < COUNT; i++) {
        boc_behavior *b = boc_pinned_pop(rt);
        ASSERT(b != NULL);
        pinned_payload *p = boc_behavior_payload(b);
        ASSERT_EQ_U64(p->entry, i);
        ASSERT_EQ_U64(boc_pinned_depth(rt), COUNT - 1 - i);
        ASSERT((boc_pinned_nonempty_since(rt) == 0) == (i == COUNT - 1));
        test_run_pinned(b);
    }
    ASSERT(boc_pinned_pop(rt) == NULL);
    ASSERT(boc_pinned_nonempty_since(rt) == 0);
    ASSERT_EQ_U64(atomic_load(&ran), COUNT);

    /* Refilling the lane fires the hook again and sets a new timestamp. */
    schedule_pinned(rt, &pinned[0], 1, 100, &ran);
    ASSERT_EQ_U64(atomic_load(&host.pinned_ready), 2);
    ASSERT(boc_pinned_nonempty_since(rt) >= since);
    drain_pinned_until_quiescent(rt);
    ASSERT_EQ_U64(atomic_load(&host.runs), 0);
    test_runtime_finish(rt, &host);
    ASSERT_EQ_U64(atomic_load(&host.dones), COUNT + 1);
    for (int i = 0; i < COUNT; i++) {
        test_cown_release(pinned[i]);
    }
    return 0;
}

TEST_IMPL(pinned_chain_and_mixed_cowns) {
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 2);
    test_cown *p = test_cown_new(BOC_COWN_PINNED);
    test_cown *c = test_cown_new(0);
    atomic_ulong ran;
    atomic_init(&ran, 0);

    /* A chain on one pinned cown: one at a time reaches the lane, and the
     * next one is pushed (by this thread) when the previous completes. */
    for (uint64_t i = 0; i < 3; i++) {
        schedule_pinned(rt, &p, 1, i, &ran);
    }
    ASSERT_EQ_U64(boc_pinned_depth(rt), 1);
    for (uint64_t i = 0; i < 3; i++) {
        boc_behavior *b = boc_pinned_pop(rt);
        ASSERT(b != NULL);
        ASSERT(boc_pinned_pop(rt) == NULL);
        test_run_pinned(b);
        ASSERT_EQ_U64(boc_pinned_depth(rt), i < 2 ? 1 : 0);
    }
    ASSERT_EQ_U64(atomic_load(&host.pinned_ready), 3);
    ASSERT_EQ_U64(p->log_length, 3);
    for (uint64_t i = 0; i < 3; i++) {
        ASSERT_EQ_U64(p->log[i], i);
    }

    /* A behavior on a normal and a pinned cown is pinned; a worker behavior
     * queued behind it on the normal cown waits for the main thread. */
    test_cown *cp[] = {c, p};
    schedule_pinned(rt, cp, 2, 10, &ran);
    schedule_pinned(rt, &c, 1, 11, &ran);
    ASSERT(boc_runtime_wait_quiescent(rt, 20 * 1000000) == 1);
    ASSERT_EQ_U64(atomic_load(&ran), 3);
    boc_behavior *mixed = boc_pinned_pop(rt);
    ASSERT(mixed != NULL);
    ASSERT(boc_behavior_is_pinned(mixed));
    test_run_pinned(mixed);
    ASSERT(boc_runtime_wait_quiescent(rt, TEST_QUIESCENCE_TIMEOUT_NS) == 0);
    ASSERT_EQ_U64(c->log_length, 2);
    ASSERT_EQ_U64(c->log[0], 10);
    ASSERT_EQ_U64(c->log[1], 11);
    ASSERT_EQ_U64(atomic_load(&host.runs), 1);
    test_runtime_finish(rt, &host);
    test_cown_release(p);
    test_cown_release(c);
    return 0;
}

/* Runs on a worker and schedules a pinned behavior from there. */
static void spawn_pinned_body(boc_behavior *b, void *raw) {
    (void)b;
    pinned_payload *p = raw;
    ASSERT(boc_current_worker() >= 0);
    schedule_pinned(p->rt, &p->pinned_target, 1, p->entry, p->ran);
    atomic_fetch_add(p->ran, 1);
}

TEST_IMPL(pinned_from_worker) {
    enum { COUNT = 50 };
    test_host host;
    test_host_init(&host);
    boc_runtime *rt = test_runtime_start(&host, 3);
    test_cown *p = test_cown_new(BOC_COWN_PINNED);
    test_cown *c = test_cown_new(0);
    atomic_ulong ran;
    atomic_init(&ran, 0);
    for (uint64_t i = 0; i < COUNT; i++) {
        /* All on c, so they spawn the pinned behaviors in order. */
        boc_behavior *b = test_behavior_new(spawn_pinned_body, sizeof(pinned_payload), &c, 1);
        pinned_payload *payload = boc_behavior_payload(b);
        payload->rt = rt;
        payload->pinned_target = p;
        payload->entry = i;
        payload->ran = &ran;
        boc_schedule(rt, b);
    }
    drain_pinned_until_quiescent(rt);
    ASSERT_EQ_U64(atomic_load(&ran), 2 * COUNT);
    ASSERT(atomic_load(&host.pinned_ready) >= 1);
    ASSERT_EQ_U64(p->log_length, COUNT < 64 ? COUNT : 64);
    for (uint64_t i = 0; i < p->log_length; i++) {
        ASSERT_EQ_U64(p->log[i], i);
    }
    ASSERT_EQ_U64(atomic_load(&host.runs), COUNT);
    test_runtime_finish(rt, &host);
    test_cown_release(p);
    test_cown_release(c);
    return 0;
}
