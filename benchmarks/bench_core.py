"""Core performance benchmark of bocpy: scheduling cost, value transfer, parallel speedup.

One run measures, and prints as one table:

1. trivial chain steps on 1 worker: 16 cowns, each holding a counter; each
   behavior decrements its cown's counter and reschedules itself on the same
   cown while the counter is positive -- the per-behavior cost of the runtime;
2. the same chain shape with a value the body does not modify: an ``int``
   versus a 1 MB ``bytes`` object -- values that stay on one worker are not
   re-serialised, so the two should cost about the same per step;
3. CPU-bound chain steps (a fixed pure-Python loop of about 1 ms per body) on
   1 and on 2 workers, and the speedup;
4. fan-out: many independent behaviors scheduled from the main thread, each on
   a new cown with a trivial body, in behaviors per second (scheduling,
   running and ``wait()`` included);
5. the CPU-bound work of (3) done sequentially, with 2 threads
   (``threading.Thread``) and with ``ProcessPoolExecutor(2)``, for comparison with bocpy;
6. ``start(n)``, one trivial behavior and ``wait()``, as a program that runs
   in bursts does it: with the worker interpreters ``wait()`` keeps for the
   next run, and with fresh ones (the pool ended before each start, as every
   run did before the pool existed), in ms per cycle and RSS growth per cycle.

Row (2c) is the chain of (2) with a small list the body appends to in
place: such a value is pickled at every release, to check it can still
cross, so it shows what that check costs per step.

Every measurement is repeated (3 times by default) and the median reported,
with the spread (max - min, relative to the median).  Runtime start-up
(``start(n)``, which creates the worker sub-interpreters) and process-pool
start-up happen before the timer; ``wait()``, which runs the remaining work
and tears the runtime down, is inside it.

Run it from the repository root, with bocpy installed or built in place::

    PYTHONPATH=src python benchmarks/bench_core.py            # full run
    PYTHONPATH=src python benchmarks/bench_core.py --quick    # a few seconds, for CI

See ``benchmarks/README.md`` for what each line means.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import _common
from _common import Table, bench_parser, print_header, rss_bytes, timed

# bocpy: installed, or on PYTHONPATH (workers import it before they see sys.path)
from bocpy import Cown, _core, start, wait, when

#: Number of independent chains in the chain benchmarks (1), (2) and (3).
CHAINS = 16
#: Size of the payload in benchmark (2).
PAYLOAD_BYTES = 1 << 20
#: Target duration of one unit of CPU-bound work, in seconds.
WORK_UNIT_SECONDS = 0.001


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    chain_steps: int  # steps per chain in (1) and (2)
    cpu_steps: int  # steps per chain in (3) and (5)
    fanout: int  # behaviors in (4)
    cycles: int  # start/wait cycles in (6)


FULL = Sizes(chain_steps=25_000, cpu_steps=150, fanout=200_000, cycles=100)
QUICK = Sizes(chain_steps=1_000, cpu_steps=8, fanout=5_000, cycles=10)


# ------------------------------------------------------------------ workloads
# Everything a behavior body uses lives at module level, so that the worker
# sub-interpreters can see it.


def spin(iterations: int) -> int:
    """Run a fixed pure-Python, CPU-bound workload (it holds the GIL throughout)."""
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


def spin_many(units: int, iterations: int) -> int:
    """Run ``units`` units of :func:`spin` back to back."""
    total = 0
    for _ in range(units):
        total += spin(iterations)
    return total


def calibrate() -> int:
    """Return the ``spin`` iteration count that takes about ``WORK_UNIT_SECONDS``."""
    iterations = 20_000
    while True:
        best = min(timed(functools.partial(spin, iterations)) for _ in range(5))
        if best >= 0.02:
            return max(1, round(iterations * WORK_UNIT_SECONDS / best))
        iterations *= 2


def countdown_chain(cown: Cown[int]) -> None:
    """(1) Schedule one step on ``cown``; the step reschedules itself while its counter > 0."""

    @when(cown)
    def step(cown: Cown[int]) -> None:
        cown.value -= 1
        if cown.value > 0:
            countdown_chain(cown)


def untouched_chain(cown: Cown[object], remaining: int) -> None:
    """(2) Schedule a chain of ``remaining`` steps on ``cown`` that leave its value alone."""

    @when(cown)
    def step(cown: Cown[object], remaining: int = remaining) -> None:
        if remaining > 1:
            untouched_chain(cown, remaining - 1)


def append_chain(cown: Cown[list[int]], remaining: int) -> None:
    """(2c) Schedule a chain of ``remaining`` steps on ``cown``, each appending in place."""

    @when(cown)
    def step(cown: Cown[list[int]], remaining: int = remaining) -> None:
        cown.value.append(remaining)
        if len(cown.value) > 8:
            cown.value.clear()
        if remaining > 1:
            append_chain(cown, remaining - 1)


def cpu_chain(cown: Cown[int], remaining: int, iterations: int) -> None:
    """(3) Schedule a chain of ``remaining`` steps on ``cown``, each one unit of CPU work."""

    @when(cown)
    def step(cown: Cown[int], remaining: int = remaining, iterations: int = iterations) -> None:
        cown.value += spin(iterations) & 1
        if remaining > 1:
            cpu_chain(cown, remaining - 1, iterations)


def fan_out(count: int) -> None:
    """(4) Schedule ``count`` independent trivial behaviors, each on a new cown."""
    for _ in range(count):

        @when(Cown(0))
        def touch(cown: Cown[int]) -> None:
            cown.value += 1


def warm_up_process(seconds: float) -> int:
    """Keep a pool process busy for a moment and return its process id."""
    time.sleep(seconds)
    return os.getpid()


def warm_up_pool(pool: ProcessPoolExecutor, processes: int) -> None:
    """Return once ``processes`` distinct pool processes have started and run a task."""
    seen: set[int] = set()
    for _ in range(20):
        seen.update(pool.map(warm_up_process, [0.1] * processes))
        if len(seen) >= processes:
            return


# ---------------------------------------------------------------- measuring


@dataclass
class Sample(_common.Sample):
    """The repeated timings of one measurement, plus worker counters from its last run."""

    stats: list[dict[str, int]] = field(default_factory=list)

    def total(self, counter: str) -> int:
        """Sum a counter from ``wait(stats=True)`` over the workers of the last run."""
        return sum(worker.get(counter, 0) for worker in self.stats)


#: Prepares one run of a bocpy measurement (untimed) and returns the action to time.
Setup = Callable[[], Callable[[], None]]


def measure_bocpy(workers: int, setup: Setup, repeats: int) -> Sample:
    """Time ``setup()()`` plus ``wait()`` on a freshly started runtime, ``repeats`` times.

    ``setup()`` (building cowns) and ``start(workers)`` run before the timer.
    """
    times: list[float] = []
    stats: list[dict[str, int]] = []
    for _ in range(repeats):
        action = setup()
        start(workers)
        began = time.perf_counter()
        action()
        stats = wait(stats=True) or []
        times.append(time.perf_counter() - began)
    return Sample(times, stats)


def chains(initial: object, launch: Callable[[Cown[Any]], None]) -> Setup:
    """Return a setup making ``CHAINS`` cowns of ``initial``; its action launches each."""

    def setup() -> Callable[[], None]:
        cowns = [Cown(initial) for _ in range(CHAINS)]

        def action() -> None:
            for cown in cowns:
                launch(cown)

        return action

    return setup


def measure_plain(action: Callable[[], object], repeats: int) -> Sample:
    """Time ``action()`` ``repeats`` times."""
    return Sample([timed(action) for _ in range(repeats)])


def run_threads(total_units: int, iterations: int, threads: int) -> None:
    """Split ``total_units`` units of work over ``threads`` threads and join them."""
    shares = [total_units * i // threads for i in range(threads + 1)]
    pool = [
        threading.Thread(target=spin_many, args=(shares[i + 1] - shares[i], iterations))
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def run_processes(pool: ProcessPoolExecutor, total_units: int, iterations: int) -> None:
    """Run ``total_units`` units of work as pool tasks, in chunks of ``CHAINS`` units."""
    batches = [CHAINS] * (total_units // CHAINS)
    if total_units % CHAINS:
        batches.append(total_units % CHAINS)
    for _ in pool.map(spin_many, batches, [iterations] * len(batches)):
        pass


# ------------------------------------------------------------------- report


def per_step_us(sample: Sample, steps: int) -> float:
    """Median microseconds per step."""
    return sample.median / steps * 1e6


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print the table."""
    workers_help = "workers (threads, processes) for the parallel rows (default 2)"
    parser = bench_parser(__doc__, workers=2, workers_help=workers_help)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.workers < 2:
        parser.error("need at least 1 repeat and at least 2 workers")
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats
    parallel = args.workers

    print_header("bocpy core benchmark", args.quick, f"median of {repeats} run(s) per line")
    iterations = calibrate()
    print(
        f"CPU work unit: spin({iterations:,}), calibrated to about "
        f"{WORK_UNIT_SECONDS * 1e3:.0f} ms on the main thread"
    )
    print()
    table = Table(label=46, rule=100, digits=3)

    # (1) trivial chain, counter in the cown.
    steps = CHAINS * sizes.chain_steps
    sample = measure_bocpy(1, chains(sizes.chain_steps, countdown_chain), repeats)
    table.row(
        "1",
        f"chain, counter in cown, 1 worker ({steps:,} st)",
        sample,
        f"{per_step_us(sample, steps):.2f} us/step, {steps / sample.median:,.0f} steps/s",
    )

    # (2) the same chain shape, unmodified int value vs 1 MB bytes value.
    payload = bytes(PAYLOAD_BYTES)
    per_value: dict[str, float] = {}
    values: list[tuple[str, str, object]] = [("2a", "int", 0), ("2b", "1 MB bytes", payload)]
    for key, name, value in values:
        setup = chains(value, lambda c: untouched_chain(c, sizes.chain_steps))
        sample = measure_bocpy(1, setup, repeats)
        per_value[key] = per_step_us(sample, steps)
        table.row(
            key,
            f"chain, {name} value, 1 worker ({steps:,} st)",
            sample,
            f"{per_value[key]:.2f} us/step; values copied into workers: "
            f"{sample.total('values_received')}",
        )
    table.row(
        "2", "ratio 1 MB bytes / int", None, f"x{per_value['2b'] / per_value['2a']:.2f} per step"
    )
    sample = measure_bocpy(1, chains([], lambda c: append_chain(c, sizes.chain_steps)), repeats)
    in_place = per_step_us(sample, steps)
    table.row(
        "2c",
        f"chain, small list changed in place ({steps:,} st)",
        sample,
        f"{in_place:.2f} us/step, x{in_place / per_value['2a']:.2f} of 2a (checked at release)",
    )

    # (3) CPU-bound chain on 1 and on `parallel` workers.
    units = CHAINS * sizes.cpu_steps
    cpu: dict[int, Sample] = {}
    for key, workers in (("3a", 1), ("3b", parallel)):
        setup = chains(0, lambda c: cpu_chain(c, sizes.cpu_steps, iterations))
        cpu[workers] = sample = measure_bocpy(workers, setup, repeats)
        spread_over = ", ".join(str(w["behaviors_run"]) for w in sample.stats)
        table.row(
            key,
            f"CPU chain, {workers} worker(s) ({units:,} x ~1 ms)",
            sample,
            f"{per_step_us(sample, units) / 1e3:.3f} ms/step; per worker: {spread_over}",
        )
    table.row(
        "3",
        f"speedup {parallel} workers / 1 worker",
        None,
        f"x{cpu[1].median / cpu[parallel].median:.2f}",
    )

    # (4) fan-out from the main thread.
    for key, workers in (("4a", 1), ("4b", parallel)):
        sample = measure_bocpy(workers, lambda: lambda: fan_out(sizes.fanout), repeats)
        table.row(
            key,
            f"fan-out, {workers} worker(s) ({sizes.fanout:,} behaviors)",
            sample,
            f"{sizes.fanout / sample.median:,.0f} behaviors/s, "
            f"{per_step_us(sample, sizes.fanout):.2f} us/behavior",
        )

    # (5) the CPU-bound work of (3) without bocpy.
    sequential = measure_plain(lambda: spin_many(units, iterations), repeats)
    table.row("5a", f"sequential, main thread ({units:,} x ~1 ms)", sequential, "x1.00")
    threads = measure_plain(lambda: run_threads(units, iterations, parallel), repeats)
    table.row(
        "5b",
        f"threading.Thread x{parallel}",
        threads,
        f"x{sequential.median / threads.median:.2f} vs sequential",
    )
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(parallel, mp_context=context) as pool:
        warm_up_pool(pool, parallel)  # process start-up is not timed
        processes = measure_plain(lambda: run_processes(pool, units, iterations), repeats)
    table.row(
        "5c",
        f"ProcessPoolExecutor({parallel})",
        processes,
        f"x{sequential.median / processes.median:.2f} vs sequential",
    )
    for key, workers in (("5d", 1), ("5e", parallel)):
        table.row(
            key,
            f"bocpy, {workers} worker(s) (row 3{'a' if workers == 1 else 'b'})",
            cpu[workers],
            f"x{sequential.median / cpu[workers].median:.2f} vs sequential",
        )

    # (6) start/wait cycles: kept interpreters against fresh ones.
    cycles = sizes.cycles
    for key, fresh in (("6a", False), ("6b", True)):
        sample, growth = measure_cycles(parallel, cycles, fresh, repeats)
        kind = "fresh" if fresh else "kept"
        table.row(
            key,
            f"start({parallel})/wait() x{cycles}, {kind} interpreters",
            sample,
            f"{sample.median / cycles * 1e3:.2f} ms/cycle, RSS {growth / 2**10:+.0f} KiB/cycle",
        )
    return 0


def one_behavior(cown: Cown[int]) -> None:
    """(6) The work of one cycle."""

    @when(cown)
    def touch(cown: Cown[int]) -> None:
        cown.value += 1


def measure_cycles(workers: int, cycles: int, fresh: bool, repeats: int) -> tuple[Sample, float]:
    """Time ``cycles`` start/one behavior/wait cycles; also the RSS growth per cycle."""
    cown = Cown(0)
    times: list[float] = []
    growth = 0.0
    for _ in range(repeats):
        _core._close_pool()
        start(workers)  # the first start is not timed: the pool is filled once
        wait()
        before = rss_bytes()
        began = time.perf_counter()
        for _ in range(cycles):
            if fresh:
                _core._close_pool()
            start(workers)
            one_behavior(cown)
            wait()
        times.append(time.perf_counter() - began)
        growth = (rss_bytes() - before) / cycles
    return Sample(times), growth


if __name__ == "__main__":
    sys.exit(main())
