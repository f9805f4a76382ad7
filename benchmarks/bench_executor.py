"""BocExecutor against ProcessPoolExecutor (and InterpreterPoolExecutor on 3.14).

The same tasks on each executor, each warmed up first (every worker has
run a task, so process and interpreter start-up is not timed):

* tiny tasks: ``--tiny`` calls of a function that returns its argument,
  submitted one by one and waited for together (tasks per second); and the
  same through ``map(..., chunksize=100)``;
* CPU-bound: ``--units`` calls of a pure-Python loop of ~20 ms each
  (speedup over running them one after the other on the main thread).

Prints a table with ratios against ``ProcessPoolExecutor``; ``--json PATH``
also writes the figures (``benchmarks/plots.py`` draws them).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bocpy import BocExecutor


def identity(x: int) -> int:
    return x


def spin(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return total


def sequential_seconds(units: int, iterations: int) -> float:
    """The CPU-bound tasks one after the other on the main thread."""
    return timed(lambda: [spin(iterations) for _ in range(units)])


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def executors(workers: int) -> dict[str, Callable[[], cf.Executor]]:
    found: dict[str, Callable[[], cf.Executor]] = {
        "BocExecutor": lambda: BocExecutor(max_workers=workers),
        # forkserver (3.14's default): forking a process that runs bocpy's
        # sub-interpreters kills the child (see the README's limitations).
        "ProcessPoolExecutor": lambda: cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("forkserver")
        ),
    }
    interpreter_pool = getattr(cf, "InterpreterPoolExecutor", None)
    if interpreter_pool is not None:
        found["InterpreterPoolExecutor"] = lambda: interpreter_pool(max_workers=workers)
    found["ThreadPoolExecutor"] = lambda: cf.ThreadPoolExecutor(max_workers=workers)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers per executor (default 2)")
    parser.add_argument("--tiny", type=int, default=5000, help="tiny tasks per run (default 5000)")
    parser.add_argument(
        "--units", type=int, default=16, help="CPU-bound tasks per run (default 16)"
    )
    parser.add_argument("--iterations", type=int, default=400_000, help="loop length of a CPU task")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median counts")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.tiny, args.units, args.iterations, args.repeats = 500, 4, 40_000, 1

    print(
        f"bench_executor: {args.workers} workers; Python {platform.python_version()}, "
        f"{os.cpu_count()} cores",
        flush=True,
    )
    results: dict[str, dict[str, float]] = {}
    for name, make in executors(args.workers).items():
        with make() as pool:
            cf.wait([pool.submit(spin, 10_000) for _ in range(4 * args.workers)])
            tiny = median_of(
                args.repeats,
                lambda pool=pool: timed(
                    lambda: cf.wait([pool.submit(identity, i) for i in range(args.tiny)])
                ),
            )
            chunked = median_of(
                args.repeats,
                lambda pool=pool: timed(
                    lambda: list(pool.map(identity, range(args.tiny * 4), chunksize=100))
                ),
            )
            # Paired with the sequential run just before it, so that load
            # from other processes affects both sides alike.
            cpu_speedup = statistics.median(
                sequential_seconds(args.units, args.iterations)
                / timed(
                    lambda pool=pool: cf.wait(
                        [pool.submit(spin, args.iterations) for _ in range(args.units)]
                    )
                )
                for _ in range(args.repeats)
            )
        results[name] = {
            "tiny_per_s": args.tiny / tiny,
            "map_chunked_per_s": args.tiny * 4 / chunked,
            "cpu_speedup": cpu_speedup,
        }
        row = results[name]
        print(
            f"  {name:<24} tiny {row['tiny_per_s']:>10,.0f}/s   map(chunksize=100) "
            f"{row['map_chunked_per_s']:>10,.0f}/s   CPU-bound x{row['cpu_speedup']:.2f}",
            flush=True,
        )
    base = results["ProcessPoolExecutor"]
    for name, row in results.items():
        if name == "ProcessPoolExecutor":
            continue
        print(
            f"{name} / ProcessPoolExecutor: tiny x{row['tiny_per_s'] / base['tiny_per_s']:.1f}, "
            f"map(chunksize=100) x{row['map_chunked_per_s'] / base['map_chunked_per_s']:.1f}, "
            f"CPU-bound x{row['cpu_speedup'] / base['cpu_speedup']:.2f}"
        )
    if args.json is not None:
        meta: dict[str, Any] = {
            "workers": args.workers,
            "python": platform.python_version(),
            "tiny": args.tiny,
            "units": args.units,
            "iterations": args.iterations,
            "repeats": args.repeats,
        }
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
