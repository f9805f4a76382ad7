"""The two worker backends side by side (issue 11, docs/backends.md).

One run, one interpreter, both backends: ``interpreters`` (a sub-interpreter
per worker, values pickled between them) and ``threads`` (workers are
threads of the main interpreter; behaviors get the objects themselves).
Rows, each the median of ``--repeat`` runs:

1. trivial chain step: one cown, each behavior increments a counter and
   schedules the next (us per behavior, 1 worker);
2. fan-out: independent behaviors, one per new cown, scheduled from the
   main thread (us per behavior, scheduling and ``wait()`` included);
3. 1 MB value chain step: the chain of (1) on a cown holding a 1 MB
   ``bytearray`` whose first byte each behavior changes (us per behavior);
3b. 1 MB value, a behavior then a main-thread read, per round: the value
   goes to a worker and back to the main thread each round (pickled both
   ways on the interpreters backend; never copied on the threads backend);
4. CPU-bound speedup: a fixed pure-Python loop per behavior on independent
   cowns, 2 workers against 1 (on a GIL build the threads backend cannot
   exceed 1x: the bodies share one GIL);
5. threads backend only: the chain of (1) on a cown holding a 10 MB ``list``
   against one holding a 10-element list (no copy: the size should not
   matter);
6. threads backend only, when NumPy is importable: matrix products on
   per-cown arrays against ``ThreadPoolExecutor`` with one lock per array,
   both with 2 workers.  BLAS runs single-threaded here (the script sets
   ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` to 1
   unless already set) so the parallelism measured is the workers': with
   BLAS's own thread pool on top, two products at once oversubscribe the
   cores and both sides vary by 10x from run to run.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_backends.py [--quick] [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import sysconfig
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bocpy
from bocpy import Cown, wait, when

# Before NumPy is imported (row 6): see the module docstring.
for _blas in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas, "1")

BACKENDS = ("interpreters", "threads")


def median_of(repeat: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeat))


def step(c: Cown[Any], n: Cown[int]) -> None:
    """One link of a chain: touch the value, schedule the next link."""
    if isinstance(c.value, bytearray):
        c.value[0] = (c.value[0] + 1) % 256
    elif isinstance(c.value, list):
        c.value[0] += 1
    n.value -= 1
    if n.value > 0:
        when(c, n)(step)


def chain(backend: str, steps: int, value: Any) -> float:
    """us per step of a chain of behaviors on one cown holding `value`."""
    bocpy.start(1, backend=backend)
    c = Cown(value)
    counter = Cown(steps)
    t0 = time.perf_counter()
    when(c, counter)(step)
    wait()
    return (time.perf_counter() - t0) / steps * 1e6


def fan_out(backend: str, count: int) -> float:
    bocpy.start(1, backend=backend)
    cowns = [Cown(i) for i in range(count)]
    t0 = time.perf_counter()
    for c in cowns:

        @when(c)
        def bump(c: Cown[int]) -> None:
            c.value += 1

    wait()
    return (time.perf_counter() - t0) / count * 1e6


def round_trip(backend: str, rounds: int, value: Any) -> float:
    """us per round: a behavior changes the value, then (after quiesce) the
    main thread reads it."""
    bocpy.start(1, backend=backend)
    c = Cown(value)
    t0 = time.perf_counter()
    for _ in range(rounds):

        @when(c)
        def touch(c: Cown[Any]) -> None:
            c.value[0] = (c.value[0] + 1) % 256

        bocpy.quiesce()
        with c as v:
            v[0]
    wait()
    return (time.perf_counter() - t0) / rounds * 1e6


def cpu_bound(backend: str, workers: int, tasks: int, loop: int) -> float:
    bocpy.start(workers, backend=backend)
    cowns = [Cown(0) for _ in range(tasks)]
    t0 = time.perf_counter()
    for c in cowns:

        @when(c)
        def work(c: Cown[int], loop: int = loop) -> None:
            total = 0
            for i in range(loop):
                total += i * i % 7
            c.value = total

    wait()
    return time.perf_counter() - t0


def numpy_rows(repeat: int, quick: bool) -> list[tuple[str, str]]:
    try:
        import numpy as np
    except ImportError:
        return [("numpy workload", "skipped: numpy is not installed for this interpreter")]
    n, arrays, rounds = (64, 4, 20) if quick else (128, 8, 50)

    def bocpy_run() -> float:
        bocpy.start(2, backend="threads")
        cowns = [Cown(np.eye(n)) for _ in range(arrays)]
        t0 = time.perf_counter()
        for _ in range(rounds):
            for c in cowns:

                @when(c)
                def mul(c: Any) -> None:
                    c.value = c.value @ c.value * 0.5

        wait()
        return time.perf_counter() - t0

    def pool_run() -> float:
        values = [np.eye(n) for _ in range(arrays)]
        locks = [threading.Lock() for _ in range(arrays)]

        def mul(i: int) -> None:
            with locks[i]:
                values[i] = values[i] @ values[i] * 0.5

        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as ex:
            for f in [ex.submit(mul, i) for _ in range(rounds) for i in range(arrays)]:
                f.result()
        return time.perf_counter() - t0

    b = median_of(repeat, bocpy_run)
    p = median_of(repeat, pool_run)
    return [
        ("numpy: bocpy threads backend, 2 workers (ms)", f"{b * 1e3:.1f}"),
        ("numpy: ThreadPoolExecutor(2) + locks (ms)", f"{p * 1e3:.1f}"),
        ("numpy: bocpy / ThreadPoolExecutor time (x)", f"{b / p:.2f}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few seconds)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    steps = 500 if args.quick else 5000
    tasks, loop = (8, 20_000) if args.quick else (16, 200_000)
    ft = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"python {sys.version.split()[0]}, free-threaded build: {ft}, GIL enabled: {gil}")
    rows: list[tuple[str, str]] = []
    per: dict[str, dict[str, float]] = {b: {} for b in BACKENDS}
    for b in BACKENDS:
        r = args.repeat
        per[b]["chain"] = median_of(r, lambda b=b: chain(b, steps, 0))
        per[b]["fan"] = median_of(r, lambda b=b: fan_out(b, steps))
        per[b]["mb"] = median_of(r, lambda b=b: chain(b, steps, bytearray(1 << 20)))
        per[b]["trip"] = median_of(r, lambda b=b: round_trip(b, steps // 25, bytearray(1 << 20)))
        one = median_of(r, lambda b=b: cpu_bound(b, 1, tasks, loop))
        two = median_of(r, lambda b=b: cpu_bound(b, 2, tasks, loop))
        per[b]["speedup"] = one / two
    for key, label in (
        ("chain", "trivial chain step (us)"),
        ("fan", "fan-out, per behavior (us)"),
        ("mb", "1 MB value chain step (us)"),
        ("trip", "1 MB value, behavior + main-thread read (us)"),
        ("speedup", "CPU-bound speedup, 2 workers vs 1 (x)"),
    ):
        i, t = per["interpreters"][key], per["threads"][key]
        rows.append((f"{label}: interpreters | threads", f"{i:.1f} | {t:.1f}"))
    small = median_of(args.repeat, lambda: chain("threads", steps, list(range(10))))
    big = median_of(args.repeat, lambda: chain("threads", steps, list(range(1_310_720))))
    rows.append(("threads: 10-item list | 10 MB list chain step (us)", f"{small:.1f} | {big:.1f}"))
    rows.extend(numpy_rows(args.repeat, args.quick))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
