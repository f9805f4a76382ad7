"""CPU-bound scaling of bocpy by worker count, beside process and interpreter pools.

The same fixed amount of pure-Python work -- ``tasks`` calls of ``spin(n)``,
a loop of about ``--task-ms`` milliseconds each -- runs with 1, 2, 4, 8, ...
workers, up to the cores this process may use (and that count itself when it
is not a power of two).  Each line is one way of spreading the tasks:

* ``bocpy``: one behavior per task, each on its own cown, scheduled from the
  main thread; ``start(n)`` happens before the timer, ``wait()`` inside it;
* ``ProcessPoolExecutor(n)``: ``map`` with ``chunksize=1``, the pool started
  and warmed up before the timer;
* ``InterpreterPoolExecutor(n)`` (Python 3.14+): likewise, where present;
* ``reference``: the bocpy program of the first line, run by the interpreter
  that ``--reference-python`` names (one with the reference implementation
  installed), in a subprocess of this script.

Speedup is each line's 1-worker time over its n-worker time; "ideal" would be
n.  The table also prints each time relative to the sequential loop on the
main thread.  ``--json PATH`` writes every figure, and ``--plot PATH`` draws
speedup against workers with matplotlib (when it is installed).

Run it from the repository root, with bocpy installed or built in place::

    PYTHONPATH=src python benchmarks/scaling.py
    PYTHONPATH=src python benchmarks/scaling.py --max-workers 16 --json s.json --plot s.png
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

#: Tasks per worker at the largest worker count, so every worker gets the
#: same number of tasks at every count that divides the largest one.
TASKS_PER_WORKER = 8


def spin(n: int) -> int:
    """A pure-Python arithmetic loop; its cost grows linearly with ``n``."""
    total = 0
    for i in range(n):
        total = (total + i * i) % 1000003
    return total


def calibrate(task_ms: float) -> int:
    """The ``n`` for which ``spin(n)`` takes about ``task_ms`` on this thread."""
    n = 10_000
    while True:
        began = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - began
        if elapsed > 0.05:
            return max(1, int(n * task_ms / 1000 / elapsed))
        n *= 2


def worker_counts(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``, and ``limit`` itself."""
    counts = []
    n = 1
    while n <= limit:
        counts.append(n)
        n *= 2
    if counts[-1] != limit:
        counts.append(limit)
    return counts


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def best_of(repeats: int, action: Callable[[], object]) -> float:
    """The fastest of ``repeats`` runs of ``action``, in seconds.

    The minimum, not the median: on a shared machine, noise only ever adds
    time, and the figure compared here is what the work itself costs.
    """
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return min(times)


def run_bocpy(workers: int, tasks: int, n: int, repeats: int, check: bool = True) -> float:
    """Time ``tasks`` behaviors of ``spin(n)``, each on its own cown, on ``workers``.

    With ``check``, every cown is then read on the main thread to make sure
    its task ran (the reference implementation cannot read them back, so its
    run skips that).
    """
    import bocpy

    def once() -> float:
        cowns = [bocpy.Cown(0) for _ in range(tasks)]
        bocpy.start(worker_count=workers)
        began = time.perf_counter()
        for cown in cowns:

            @bocpy.when(cown)
            def task(c: Any, n: int = n) -> None:
                c.value = spin(n)

        bocpy.wait()
        elapsed = time.perf_counter() - began
        expected = spin(n)
        for cown in cowns if check else ():
            cown.acquire()
            stored = cown.value
            cown.release()
            if stored != expected:
                raise SystemExit(f"scaling: a bocpy task stored {stored!r}, not {expected!r}")
        return elapsed

    return min(once() for _ in range(repeats))


def run_pool(
    factory: Callable[[int], concurrent.futures.Executor],
    workers: int,
    tasks: int,
    n: int,
    repeats: int,
) -> float:
    """Time ``map(spin, ...)`` over ``tasks`` tasks in a pool of ``workers``."""
    with factory(workers) as pool:
        # Start every worker before the timer.
        list(pool.map(spin, [1] * workers * 4))
        return best_of(repeats, lambda: list(pool.map(spin, [n] * tasks)))


def run_reference(
    python: str, counts: Sequence[int], tasks: int, n: int, repeats: int
) -> dict[int, float]:
    """Run this script's bocpy line under ``python`` and return its times by worker count."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the reference's own bocpy, not this tree's
    command = [
        python,
        os.path.abspath(__file__),
        "--bocpy-only",
        "--counts",
        ",".join(map(str, counts)),
        "--tasks",
        str(tasks),
        "--n",
        str(n),
        "--repeats",
        str(repeats),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"reference run failed (exit {done.returncode}):\n{done.stderr}", file=sys.stderr)
        return {}
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def interpreter_pool() -> Callable[[int], concurrent.futures.Executor] | None:
    """``InterpreterPoolExecutor`` where this Python has it (3.14+), else None."""
    pool = getattr(concurrent.futures, "InterpreterPoolExecutor", None)
    if pool is None:
        return None
    return lambda workers: pool(max_workers=workers)  # type: ignore[no-any-return]


def print_table(
    counts: Sequence[int], lines: dict[str, dict[int, float]], sequential: float
) -> None:
    """Print one row per worker count: each line's time, speedup and efficiency."""
    names = list(lines)
    head = f"{'workers':>7}  " + "  ".join(f"{name:>27}" for name in names)
    print(head)
    print(" " * 9 + "  ".join(f"{'time  speedup  vs seq':>27}" for _ in names))
    print("-" * len(head))
    for count in counts:
        cells = []
        for name in names:
            times = lines[name]
            if count not in times or 1 not in times:
                cells.append(f"{'-':>27}")
                continue
            t = times[count]
            cells.append(f"{t:>8.3f}s {times[1] / t:>7.2f}x {sequential / t:>7.2f}x")
        print(f"{count:>7}  " + "  ".join(cells))


def plot(path: str, counts: Sequence[int], lines: dict[str, dict[int, float]]) -> None:
    """Draw speedup over 1 worker against workers, one line each, into ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed; no figure written", file=sys.stderr)
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(counts, counts, linestyle=":", color="grey", label="ideal")
    for name, times in lines.items():
        xs = [c for c in counts if c in times and 1 in times]
        axes.plot(xs, [times[1] / times[c] for c in xs], marker="o", label=name)
    axes.set_xlabel("workers")
    axes.set_ylabel("speedup over 1 worker")
    axes.set_xscale("log", base=2)
    axes.set_yscale("log", base=2)
    axes.set_xticks(list(counts), [str(c) for c in counts])
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, and write the JSON and plot when asked."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument(
        "--max-workers",
        type=int,
        default=usable_cores(),
        help="largest worker count (default: usable cores)",
    )
    parser.add_argument(
        "--task-ms", type=float, default=20.0, help="length of one task (default 20 ms)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per figure; the fastest counts (default 3)"
    )
    parser.add_argument(
        "--reference-python", help="an interpreter with the reference bocpy installed"
    )
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--plot", help="draw the speedups into this image (needs matplotlib)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    # Used when this script runs itself under the reference's interpreter.
    parser.add_argument("--bocpy-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bocpy_only:
        counts = [int(c) for c in args.counts.split(",")]
        times = {c: run_bocpy(c, args.tasks, args.n, args.repeats, check=False) for c in counts}
        print(json.dumps(times))
        return 0

    if args.quick:
        args.task_ms, args.repeats = 2.0, 1
    counts = worker_counts(max(1, args.max_workers))
    tasks = TASKS_PER_WORKER * counts[-1]
    n = calibrate(args.task_ms)
    sequential = best_of(args.repeats, lambda: [spin(n) for _ in range(tasks)])

    import bocpy

    print(
        f"scaling: {tasks} tasks of ~{args.task_ms:g} ms (spin({n})), "
        f"workers {', '.join(map(str, counts))}; Python {sys.version.split()[0]}; "
        f"{os.cpu_count()} cores, {usable_cores()} usable; "
        f"bocpy from {os.path.dirname(bocpy.__file__)}"
    )
    print(f"sequential on the main thread: {sequential:.3f}s")
    lines: dict[str, dict[int, float]] = {}
    lines["bocpy"] = {c: run_bocpy(c, tasks, n, args.repeats) for c in counts}
    lines["ProcessPoolExecutor"] = {
        c: run_pool(
            lambda w: concurrent.futures.ProcessPoolExecutor(max_workers=w),
            c,
            tasks,
            n,
            args.repeats,
        )
        for c in counts
    }
    factory = interpreter_pool()
    if factory is not None:
        lines["InterpreterPoolExecutor"] = {
            c: run_pool(factory, c, tasks, n, args.repeats) for c in counts
        }
    if args.reference_python:
        reference = run_reference(args.reference_python, counts, tasks, n, args.repeats)
        if reference:
            lines["reference bocpy"] = reference
    print_table(counts, lines, sequential)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "tasks": tasks,
                    "task_ms": args.task_ms,
                    "spin_n": n,
                    "cores": os.cpu_count(),
                    "usable_cores": usable_cores(),
                    "python": sys.version.split()[0],
                    "sequential_s": sequential,
                    "counts": counts,
                    "seconds": {
                        name: {str(c): t for c, t in times.items()} for name, times in lines.items()
                    },
                },
                out,
                indent=2,
            )
        print(f"figures written to {args.json}")
    if args.plot:
        plot(args.plot, counts, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
