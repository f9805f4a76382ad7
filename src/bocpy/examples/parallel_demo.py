"""Parallel speedup for pure-Python CPU-bound work.

The task: count the primes below a limit by trial division -- a loop-heavy,
pure-Python function that threads cannot speed up under the GIL.  The range
is cut into chunks and each chunk is one behavior (no cowns are needed: the
chunks share nothing, and each returns its count in its result cown).  Higher
chunks cost more than lower ones, so the workers balance the load by taking
and stealing chunks as they go.

The demo runs the same chunks three ways and prints the wall time of each:

1. sequentially on the main thread (this is also the reference result);
2. on a runtime with 1 worker;
3. on a runtime with ``max(2, WORKER_COUNT)`` workers (or ``--workers``).

Between runs, ``wait()`` tears the runtime down so the next ``start(n)`` brings
up a fresh one with the new worker count; start-up is timed separately and is
not part of the run times.  Workers are sub-interpreters, each with its own
GIL, so on a machine with several cores the last run is faster by about the
number of workers.  The per-worker ``behaviors_run`` counters returned by
``wait(stats=True)`` show the chunks spread over all workers.

The check: both parallel runs find exactly the sequential count.  The demo
exits with status 1 if they do not.

Run it with ``python -m bocpy.examples.parallel_demo [--limit N] [--chunks N]
[--workers N]``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from bocpy import WORKER_COUNT, Cown, start, wait, when
from bocpy.examples._common import add_workers, count_primes, example_parser, report_check


def chunk_bounds(limit: int, chunks: int) -> list[tuple[int, int]]:
    """Cut ``range(limit)`` into ``chunks`` contiguous ``(lo, hi)`` pieces."""
    edges = [limit * i // chunks for i in range(chunks + 1)]
    return [(edges[i], edges[i + 1]) for i in range(chunks)]


def schedule_chunk(lo: int, hi: int) -> Cown[int]:
    """Schedule counting the primes in ``[lo, hi)``; return the result cown."""

    @when()
    def count(lo: int = lo, hi: int = hi) -> int:
        return count_primes(lo, hi)

    return count


@dataclass
class Run:
    """The outcome of one parallel run."""

    workers: int
    startup: float
    elapsed: float
    primes: int
    per_worker: list[int]


def run_parallel(bounds: list[tuple[int, int]], workers: int) -> Run:
    """Start a runtime with ``workers`` workers, count every chunk on it, tear it down."""
    began = time.perf_counter()
    start(workers)
    started = time.perf_counter()
    results = [schedule_chunk(lo, hi) for lo, hi in bounds]
    stats = wait(stats=True) or []
    elapsed = time.perf_counter() - started
    primes = sum(result.unwrap() for result in results)
    per_worker = [worker["behaviors_run"] for worker in stats]
    return Run(workers, started - began, elapsed, primes, per_worker)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the demo and return the exit status."""
    default_workers = max(2, WORKER_COUNT)
    parser = example_parser(
        "parallel_demo", "Count primes with pure-Python code on 1 worker, then on several."
    )
    parser.add_argument(
        "--limit", type=int, default=1_500_000, help="count the primes below this number"
    )
    parser.add_argument(
        "--chunks", type=int, default=48, help="number of behaviors the range is cut into"
    )
    add_workers(
        parser,
        default_workers,
        f"workers for the parallel run (default max(2, WORKER_COUNT) = {default_workers})",
    )
    args = parser.parse_args(argv)
    if args.limit < 0 or args.chunks < 1 or args.workers < 1:
        parser.error("need limit >= 0, at least 1 chunk and at least 1 worker")

    bounds = chunk_bounds(args.limit, args.chunks)
    print(
        f"parallel demo: counting primes below {args.limit:,} in {args.chunks} chunks "
        f"(WORKER_COUNT = {WORKER_COUNT})"
    )

    began = time.perf_counter()
    expected = sum(count_primes(lo, hi) for lo, hi in bounds)
    sequential = time.perf_counter() - began
    print(f"  sequential (main thread): {sequential:7.3f} s  -> {expected:,} primes")

    ok = True
    runs = [run_parallel(bounds, 1), run_parallel(bounds, args.workers)]
    for run in runs:
        verdict = "" if run.primes == expected else f"  WRONG: {run.primes:,} primes"
        ok = ok and run.primes == expected
        print(
            f"  {run.workers:2d} worker(s):             {run.elapsed:7.3f} s  "
            f"(speedup x{sequential / run.elapsed:.2f} over sequential; "
            f"start-up {run.startup:.3f} s not counted){verdict}"
        )
        print(
            "      behaviors run per worker: " + ", ".join(str(count) for count in run.per_worker)
        )

    one, many = runs
    print(f"  speedup of {many.workers} workers over 1 worker: x{one.elapsed / many.elapsed:.2f}")
    passed = f"every run found the sequential count of {expected:,} primes"
    failed = "a parallel run disagrees with the sequential count"
    return 0 if report_check(ok, passed, failed) else 1


if __name__ == "__main__":
    sys.exit(main())
