/*
 * The list of libboc test cases, in the order the runner executes them.
 *
 * Each entry names a `TEST_IMPL(name)` defined in one of the test_*.c files.
 * The runner (runner.c) expands this list twice: once to declare the
 * functions and once to build its table, so adding a test is one line here.
 */
#ifndef BOC_TEST_LIST_H
#define BOC_TEST_LIST_H

#define TEST_LIST(X)                                                                               \
    X(cown_ids_and_refcount)                                                                       \
    X(cown_try_incref)                                                                             \
    X(behavior_payload_and_discard)                                                                \
    X(runtime_new_rejects_bad_arguments)                                                           \
    X(chain_order_single_cown)                                                                     \
    X(many_behaviors_one_cown)                                                                     \
    X(zero_cown_behavior)                                                                          \
    X(repeated_cown_in_behavior)                                                                   \
    X(multi_cown_exclusivity)                                                                      \
    X(large_cown_sets)                                                                             \
    X(schedule_from_inside_run)                                                                    \
    X(hold_blocks_queued_behaviors)                                                                \
    X(hold_fails_while_cown_busy)                                                                  \
    X(quiescence_timeout_while_held)                                                               \
    X(pinned_lane_order)                                                                           \
    X(pinned_chain_and_mixed_cowns)                                                                \
    X(pinned_from_worker)                                                                          \
    X(worker_start_failure)                                                                        \
    X(worker_hooks_alternate)                                                                      \
    X(current_worker_index)                                                                        \
    X(stats_add_up)                                                                                \
    X(start_stop_many_runtimes)                                                                    \
    X(restart_same_runtime)                                                                        \
    X(park_wakeup_handshake)                                                                       \
    X(blocks_recycled_across_threads)                                                              \
    X(quiescent_hook_while_watched)                                                                \
    X(stress_random_cown_sets)

#endif /* BOC_TEST_LIST_H */
