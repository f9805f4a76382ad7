#!/bin/sh
# Seed sweep for libboc's concurrency tests (run by `make sweep`).
#
# For every seed in SEEDS:
#   - SWEEP_BIN (yield points, seeded mode) runs SWEEP_TESTS (all when empty);
#   - SWEEP_BIN --controlled runs CONTROLLED_TESTS under the controlled
#     scheduler, where the seed fixes the whole interleaving.
# The first passing controlled run is replayed and must print the same trace
# hashes (the schedule really is a function of the seed).  For every seed in
# TSAN_SEEDS, SWEEP_TSAN_BIN (ThreadSanitizer + seeded yield points) runs
# TSAN_TESTS, with TSAN_PREFIX (environment and setarch) in front.
#
# Every failing case is reported with the exact command that reruns it.  The
# sweep stops after SWEEP_MAX_FAILURES failed runs (0: never; a deadlock costs
# the build's quiescence timeout per run) and exits non-zero on any failure.

: "${SEEDS:=1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20}"
: "${TSAN_SEEDS:=1 2 3 4}"
: "${SWEEP_TESTS:=}"
: "${CONTROLLED_TESTS:=multi_cown_exclusivity large_cown_sets park_wakeup_handshake stress_random_cown_sets}"
: "${TSAN_TESTS:=$CONTROLLED_TESTS}"
: "${SWEEP_BIN:=build/sweep/boc_tests}"
: "${SWEEP_TSAN_BIN:=build/sweep-tsan/boc_tests}"
: "${TSAN_PREFIX:=}"
: "${SWEEP_MAX_FAILURES:=3}"

log=$(mktemp "${TMPDIR:-/tmp}/boc-sweep.XXXXXX") || exit 2
trap 'rm -f "$log" "$log.replay"' EXIT

now_ms() { date +%s%3N; }

sweep_start=$(now_ms)
runs=0
failures=0

# run LABEL PREFIX COMMAND...: runs the command (PREFIX is evaluated as
# environment assignments and wrappers), reports a failure with its rerun
# commands.  The output stays in $log.
run() {
    label=$1
    prefix=$2
    shift 2
    runs=$((runs + 1))
    started=$(now_ms)
    eval "$prefix \"\$@\"" >"$log" 2>&1
    rc=$?
    elapsed=$(($(now_ms) - started))
    if [ "$rc" -eq 0 ]; then
        printf 'ok   %-40s %6d ms\n' "$label" "$elapsed"
        return 0
    fi
    failures=$((failures + 1))
    printf 'FAIL %-40s %6d ms (exit status %d)\n' "$label" "$elapsed" "$rc"
    echo "---- last lines of its output:"
    grep -v '^ok \|^# .* seed: \|controlled schedule' "$log" | tail -n 15 | sed 's/^/    /'
    echo "---- reproduce with:"
    if grep -q '^#   reproduce: ' "$log"; then
        grep '^#   reproduce: ' "$log" | sed "s|^#   reproduce: |    ${prefix:+$prefix }|"
    else
        echo "    ${prefix:+$prefix }$*"
    fi
    return 1
}

# Stops the sweep once SWEEP_MAX_FAILURES runs have failed.
check_limit() {
    if [ "$SWEEP_MAX_FAILURES" -gt 0 ] && [ "$failures" -ge "$SWEEP_MAX_FAILURES" ]; then
        echo "sweep: stopping after $failures failed runs of $runs" \
            "(SWEEP_MAX_FAILURES=$SWEEP_MAX_FAILURES; 0 runs every seed)"
        exit 1
    fi
}

first_seed=
for seed in $SEEDS; do
    # shellcheck disable=SC2086
    run "seeded     --seed $seed" "" "$SWEEP_BIN" --seed "$seed" $SWEEP_TESTS
    check_limit
    # shellcheck disable=SC2086
    if run "controlled --seed $seed" "" "$SWEEP_BIN" --controlled --seed "$seed" \
        $CONTROLLED_TESTS && [ -z "$first_seed" ]; then
        first_seed=$seed
        grep 'controlled schedule' "$log" >"$log.replay"
    fi
    check_limit
done

if [ -n "$first_seed" ]; then
    # shellcheck disable=SC2086
    if run "controlled replay --seed $first_seed" "" "$SWEEP_BIN" --controlled \
        --seed "$first_seed" $CONTROLLED_TESTS; then
        if grep 'controlled schedule' "$log" | cmp -s - "$log.replay"; then
            echo "     (replay of seed $first_seed: identical schedules)"
        else
            failures=$((failures + 1))
            echo "FAIL controlled replay of seed $first_seed gave a different schedule:"
            sed 's/^/    first:  /' "$log.replay"
            grep 'controlled schedule' "$log" | sed 's/^/    replay: /'
        fi
    fi
    check_limit
fi

for seed in $TSAN_SEEDS; do
    # shellcheck disable=SC2086
    run "tsan       --seed $seed" "$TSAN_PREFIX" "$SWEEP_TSAN_BIN" --seed "$seed" $TSAN_TESTS
    check_limit
done

elapsed=$((($(now_ms) - sweep_start) / 1000))
if [ "$failures" -ne 0 ]; then
    echo "sweep: $failures of $runs runs FAILED (${elapsed} s)"
    exit 1
fi
echo "sweep: all $runs runs passed (${elapsed} s)"
