"""The workloads behind the documentation's benchmark figures; prints JSON.

``benchmarks/plots.py`` runs this script once with our bocpy and, when
given ``--reference-python``, once more with the reference implementation's
interpreter: it uses only the API both share (``Cown``, ``PinnedCown``,
``when``, ``start``, ``wait``, ``pump``), so the same code measures both.
With ``--baselines`` it also measures the same shapes of work with
``threading`` (a ``ThreadPoolExecutor``) and ``ProcessPoolExecutor``.

Each figure is the median of ``--repeats`` runs.  The last line of the
output is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from bocpy import Cown, PinnedCown, pump, start, wait, when


def spin(iterations: int) -> int:
    """CPU-bound pure Python: a loop of additions."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def nothing() -> None:
    """The smallest task there is."""


def chain(cown: Cown[int], remaining: int) -> None:
    """A behavior on ``cown`` that schedules the next one, ``remaining`` times."""

    @when(cown)
    def step(cown: Cown[int], remaining: int = remaining) -> None:
        if remaining > 0:
            chain(cown, remaining - 1)


def spin_on(cown: Cown[int], iterations: int) -> None:
    @when(cown)
    def work(cown: Cown[int], iterations: int = iterations) -> None:
        cown.value = spin(iterations)


def touch(cown: Cown[int]) -> None:
    @when(cown)
    def noop(cown: Cown[int]) -> None:
        pass


def increment(pinned: PinnedCown[int]) -> None:
    @when(pinned)
    def bump(pinned: PinnedCown[int]) -> None:
        pinned.value += 1


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- bocpy


def bocpy_chain_us(steps: int) -> float:
    """Microseconds per step of 16 self-rescheduling chains on 1 worker."""
    cowns = [Cown(0) for _ in range(16)]
    start(1)
    began = time.perf_counter()
    for cown in cowns:
        chain(cown, steps)
    wait()
    return (time.perf_counter() - began) / (16 * (steps + 1)) * 1e6


def bocpy_fan_out_rate(count: int, workers: int) -> float:
    """Behaviors per second scheduled from the main thread on distinct cowns."""
    cowns = [Cown(0) for _ in range(count)]
    start(workers)
    began = time.perf_counter()
    for cown in cowns:
        touch(cown)
    wait()
    return count / (time.perf_counter() - began)


def bocpy_cpu_seconds(units: int, iterations: int, workers: int) -> float:
    cowns = [Cown(0) for _ in range(units)]
    start(workers)
    began = time.perf_counter()
    for cown in cowns:
        spin_on(cown, iterations)
    wait()
    return time.perf_counter() - began


def bocpy_pump_rate(count: int) -> float:
    """Pinned behaviors per second that ``pump()`` runs on the main thread."""
    pinned = PinnedCown(0)
    start(1)
    for _ in range(count):
        increment(pinned)
    executed = 0
    began = time.perf_counter()
    while executed < count:
        executed += pump().executed
    elapsed = time.perf_counter() - began
    wait()
    return count / elapsed


# ------------------------------------------------------------- baselines


def paired_speedup(
    repeats: int, units: int, iterations: int, parallel: Callable[[], float]
) -> float:
    """Median over ``repeats`` of (sequential time / parallel time), run in pairs."""
    return statistics.median(
        sequential_seconds(units, iterations) / parallel() for _ in range(repeats)
    )


def sequential_seconds(units: int, iterations: int) -> float:
    """The CPU-bound work on the main thread alone: what speedups divide."""
    began = time.perf_counter()
    for _ in range(units):
        spin(iterations)
    return time.perf_counter() - began


def pool_chain_us(pool: ThreadPoolExecutor | ProcessPoolExecutor, steps: int) -> float:
    """Microseconds per dependent step: submit, wait for it, submit the next."""
    began = time.perf_counter()
    for _ in range(steps):
        pool.submit(nothing).result()
    return (time.perf_counter() - began) / steps * 1e6


def pool_fan_out_rate(pool: ThreadPoolExecutor | ProcessPoolExecutor, count: int) -> float:
    began = time.perf_counter()
    wait_futures([pool.submit(nothing) for _ in range(count)])
    return count / (time.perf_counter() - began)


def pool_cpu_seconds(
    pool: ThreadPoolExecutor | ProcessPoolExecutor, units: int, iterations: int
) -> float:
    began = time.perf_counter()
    wait_futures([pool.submit(spin, iterations) for _ in range(units)])
    return time.perf_counter() - began


def warm(pool: ProcessPoolExecutor | ThreadPoolExecutor, workers: int) -> None:
    """Start every worker before timing (process start-up is not the subject)."""
    wait_futures([pool.submit(spin, 10_000) for _ in range(workers * 4)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--baselines", action="store_true", help="also measure threading and processes"
    )
    parser.add_argument(
        "--max-workers", type=int, default=2, help="largest worker count (default 2)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    chain_steps = 5_000 // scale
    fan_out = 40_000 // scale
    pump_count = 40_000 // scale
    units, iterations = 16, 400_000 // scale
    worker_counts = list(range(1, args.max_workers + 1))

    import bocpy

    result: dict[str, object] = {"bocpy": os.path.dirname(bocpy.__file__)}
    log("chain")
    result["chain_us"] = median_of(args.repeats, lambda: bocpy_chain_us(chain_steps))
    log("fan-out")
    result["fan_out_per_s"] = {
        str(w): median_of(args.repeats, lambda w=w: bocpy_fan_out_rate(fan_out, w))
        for w in worker_counts
    }
    log("pump")
    result["pump_per_s"] = median_of(args.repeats, lambda: bocpy_pump_rate(pump_count))
    log("cpu")
    # Each speedup is the median of paired runs: the sequential work timed
    # right before the parallel run it is compared with, so that load from
    # other processes that comes and goes affects both sides alike.
    sequential = median_of(args.repeats, lambda: sequential_seconds(units, iterations))
    result["cpu_sequential_s"] = sequential
    result["cpu_speedup"] = {
        str(w): paired_speedup(
            args.repeats, units, iterations, lambda w=w: bocpy_cpu_seconds(units, iterations, w)
        )
        for w in worker_counts
    }
    if args.baselines:
        for name, kind in (("threading", ThreadPoolExecutor), ("processes", ProcessPoolExecutor)):
            log(name)
            entry: dict[str, object] = {"cpu_speedup": {}, "fan_out_per_s": {}}
            for w in worker_counts:
                with kind(max_workers=w) as pool:
                    warm(pool, w)
                    if w == 1:
                        entry["chain_us"] = median_of(
                            args.repeats, lambda pool=pool: pool_chain_us(pool, chain_steps // 5)
                        )
                    entry["fan_out_per_s"][str(w)] = median_of(  # type: ignore[index]
                        args.repeats, lambda pool=pool: pool_fan_out_rate(pool, fan_out // 4)
                    )
                    entry["cpu_speedup"][str(w)] = paired_speedup(  # type: ignore[index]
                        args.repeats,
                        units,
                        iterations,
                        lambda pool=pool: pool_cpu_seconds(pool, units, iterations),
                    )
            result[name] = entry
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
