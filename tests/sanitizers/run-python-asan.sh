#!/usr/bin/env bash
# Runs the Python test suite against an AddressSanitizer + UBSan build of
# bocpy._core, with leak detection on.  CPython itself is not instrumented:
# the sanitizer runtime is preloaded, and PYTHONMALLOC=malloc routes every
# Python allocation through the checked allocator.  The build lives in
# build/asan-python/ (a copy of src/ and tests/, so that the suite's
# subprocesses use the same build).
#
# The binding is compiled with its assert()s on (-UNDEBUG; CPython's flags
# say -DNDEBUG), so that an invariant it breaks fails the run.
#
# Usage: tests/sanitizers/run-python-asan.sh [pytest args...]
# BOCPY_ASAN_TESTS (default: tests) names the test files or folders to run.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
py="$top/.venv/bin/python"
out="$top/build/asan-python"

rm -rf "$out"
mkdir -p "$out"
cp -r "$top/src" "$top/tests" "$out/"
rm -f "$out"/src/bocpy/_core*.so
(cd "$top" && CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g -UNDEBUG" \
    LDFLAGS="-fsanitize=address,undefined" \
    "$py" setup.py -q build_ext --force --build-lib "$out/lib" --build-temp "$out/tmp" >/dev/null)
cp "$out"/lib/bocpy/_core*.so "$out/src/bocpy/"

export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export PYTHONMALLOC=malloc
# detect_leaks: report leaks at exit (suppressing CPython's own, see the file);
# abort_on_error: a finding fails the process, and so the test that ran it.
# quarantine_size_mb=64 (default 256): freed memory waits there before reuse,
# and a million freed cowns (96-byte chunks since the compact cown layout)
# fit in 256 MB whole, so test_faults' "a second million fits in the same
# memory" could not hold under ASan; 64 MB still catches use after free of
# anything freed within the last 64 MB of frees.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1:quarantine_size_mb=64"
export LSAN_OPTIONS="suppressions=$top/tests/sanitizers/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$out/src"
cd "$out"
# The Tk tests start an X server (Xvfb), which cannot run with the sanitizer
# runtime preloaded; the plain run covers them.
# BOCPY_ASAN=1 tells tests that scale with the build (the stress test) that
# every operation costs several times more here.
export BOCPY_ASAN=1
exec "$py" -m pytest ${BOCPY_ASAN_TESTS:-tests} --ignore=tests/test_tk.py "$@"
