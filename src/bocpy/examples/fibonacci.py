"""Parallel Fibonacci: fork/join with behaviors that schedule behaviors.

``fib(n)`` is computed as a tree of behaviors.  The task for ``n`` runs on a
worker; above a threshold it *forks* -- it schedules the tasks for ``n - 1``
and ``n - 2`` (nested scheduling, from inside a behavior body) -- and
*joins* them with one more behavior on both of their result cowns, which adds
the two results.  At or below the threshold a task just computes its value
sequentially, so each behavior carries enough work to be worth scheduling.

A body cannot block waiting for its children, so a forking task returns the
result cown of its join behavior instead of a number: a task's result cown
holds either an ``int`` or a cown that will hold the answer (a promise).  The
join behavior handles that: when one of the results it owns is itself still a
promise, it schedules a new join on the promised cowns and returns that in
turn.  Every join runs only once the cowns it names have been written, so the
promises resolve bottom-up, and the main thread follows the chain after
``wait()``.

The check: the result equals a plain sequential computation of ``fib(n)``.
The example exits with status 1 if it does not.

Run it with ``python -m bocpy.examples.fibonacci [-n N] [--threshold T]
[--workers N]``.
"""

from __future__ import annotations

import sys
import time

from bocpy import Cown, start, wait, when
from bocpy.examples._common import add_workers, example_parser, per_worker, report_check

#: What a task's result cown holds: the number, or a cown promising it.
type Promise = int | Cown[Promise]


def fib_sequential(n: int) -> int:
    """Compute the ``n``-th Fibonacci number by plain (exponential) recursion."""
    if n < 2:
        return n
    return fib_sequential(n - 1) + fib_sequential(n - 2)


def as_cown(value: Promise) -> Cown[Promise]:
    """Return ``value`` itself if it is a cown, else a new cown holding it."""
    return value if isinstance(value, Cown) else Cown(value)


def join(left: Cown[Promise], right: Cown[Promise]) -> Cown[Promise]:
    """Schedule the addition of the results in ``left`` and ``right``.

    Returns the join's result cown, which will hold the sum or a promise of it.
    """

    @when(left, right)
    def add(left: Cown[Promise], right: Cown[Promise]) -> Promise:
        a, b = left.value, right.value
        if isinstance(a, Cown) or isinstance(b, Cown):
            # A child forked in turn: wait for its join, one level further down.
            return join(as_cown(a), as_cown(b))
        return a + b

    return add


def fib(n: int, threshold: int) -> Cown[Promise]:
    """Schedule the task computing the ``n``-th Fibonacci number; return its result cown."""

    @when()
    def task(n: int = n, threshold: int = threshold) -> Promise:
        if n <= threshold:
            return fib_sequential(n)
        # Fork: two child tasks, scheduled from inside this behavior; then join.
        return join(fib(n - 1, threshold), fib(n - 2, threshold))

    return task


def resolve(result: Cown[Promise]) -> int:
    """Follow a chain of promises to its number (main thread, quiescent runtime)."""
    value = result.unwrap()
    while isinstance(value, Cown):
        value = value.unwrap()
    return value


def run(n: int, threshold: int, workers: int) -> bool:
    """Compute ``fib(n)`` both ways, print a summary and return whether they agree."""
    began = time.perf_counter()
    expected = fib_sequential(n)
    sequential_time = time.perf_counter() - began

    start(workers)
    began = time.perf_counter()
    result = fib(n, threshold)
    stats = wait(stats=True) or []
    parallel_time = time.perf_counter() - began
    value = resolve(result)

    behaviors = sum(worker["behaviors_run"] for worker in stats)
    print(f"fibonacci: fib({n}) = {value} with threshold {threshold} on {workers} worker(s)")
    print(
        f"  parallel {parallel_time:.3f} s ({behaviors} behaviors: {per_worker(stats)} "
        f"per worker); sequential {sequential_time:.3f} s"
    )
    return report_check(
        value == expected, f"matches the sequential result {expected}", f"expected {expected}"
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the example and return the exit status."""
    parser = example_parser("fibonacci", "Fibonacci as a fork/join tree of nested behaviors.")
    parser.add_argument("-n", type=int, default=25, help="which Fibonacci number")
    parser.add_argument(
        "--threshold", type=int, default=15, help="compute sequentially at or below this n"
    )
    add_workers(parser)
    args = parser.parse_args(argv)
    if args.n < 0 or args.threshold < 1 or args.workers < 1:
        parser.error("need n >= 0, threshold >= 1 and at least 1 worker")
    return 0 if run(args.n, args.threshold, args.workers) else 1


if __name__ == "__main__":
    sys.exit(main())
