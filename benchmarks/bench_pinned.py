"""Pinned-cown benchmark of bocpy: pump throughput, wake-up latency, boids dispatch.

One run measures, and prints as one table:

a. throughput of the main-thread pump: the main thread schedules N pinned
   behaviors with trivial bodies, round-robin over 16 pinned cowns (each
   ``@when`` is one two-phase-locking enqueue; the first behavior on each cown
   is then in the pump queue and the others wait behind it in their cown's
   queue), and then ``pump()`` is timed until all N have run -- behaviors per
   second, for a plain ``pump()`` loop and for ``pump(max_behaviors=1)``
   calls (the per-call cost of pumping in small slices);
b. wake-up latency: a worker behavior reads ``time.perf_counter_ns()`` and
   schedules a pinned behavior that captures that time stamp; the pinned
   body, on the main thread, records how long after the time stamp it
   started.  The main thread waits for it (1) asleep in
   ``select.select([wake_fd()], ...)`` and then pumps -- the wake-up hook --,
   (2) in a 60 Hz polling loop (sleep 1/60 s, then pump), and (3) running
   Python code, with ``set_wake_callback(pump)`` installed.  Each worker
   behavior first sleeps a random time below 1/60 s, so that events arrive
   at a random phase of the polling loop.  Line b1' shows how long the
   worker's own ``@when`` call took in the samples of b1: the part of the
   latency spent on the worker before the main thread can be woken;
c. the boids example (``bocpy.examples.boids``) run headless in this
   process, with coarse dispatch (one pinned write-back per frame) and with
   per-item dispatch (one pinned write-back per cell), for the same sizes:
   the mean frame time, from scheduling a frame to drawing it.

Throughput and boids lines are repeated (3 times by default) and the median
reported, with the spread (max - min, relative to the median).  Latency lines
pool their samples (``perf_counter_ns`` reads the same monotonic clock in
every interpreter of the process) and report the median and the 90th
percentile; the first few samples of each line warm up and are discarded.

Targets: pump throughput of at least 480,000 behaviors/s (twice the
reference implementation's ~240,000/s) and a median wake-up latency below
100 us with the hook.

Run it from the repository root, with bocpy installed or built in place::

    PYTHONPATH=src python benchmarks/bench_pinned.py            # full run
    PYTHONPATH=src python benchmarks/bench_pinned.py --quick    # a few seconds, for CI
"""

from __future__ import annotations

import random
import select
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from _common import Sample, Table, bench_parser, print_header

# bocpy: installed, or on PYTHONPATH (workers import it before they see sys.path)
from bocpy import (
    WORKER_COUNT,
    Cown,
    PinnedCown,
    pump,
    set_wake_callback,
    start,
    wait,
    wake_fd,
    when,
)
from bocpy.examples.boids import Config, run_headless

#: Pinned cowns the throughput behaviors are spread over.
PINNED_COWNS = 16
#: Reference pump throughput (behaviors/s) and the target, twice that.
REFERENCE_PUMP_RATE = 240_000
TARGET_PUMP_RATE = 2 * REFERENCE_PUMP_RATE
#: Target median wake-up latency with the hook, in microseconds.
TARGET_LATENCY_US = 100.0
#: The polling loop's period, in seconds.
POLL_PERIOD = 1 / 60
#: Latency samples discarded at the start of each latency line.
WARM_UP_SAMPLES = 5
#: Seconds to wait for one latency sample before giving up.
SAMPLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class BoidsSize:
    """One boids configuration of part (c)."""

    boids: int
    cells: int  # per side of the grid
    frames: int


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does."""

    pump_behaviors: int  # behaviors drained in (a)
    latency_samples: int  # samples per line in (b)
    boids: tuple[BoidsSize, ...]  # configurations of (c)


FULL = Sizes(
    pump_behaviors=200_000,
    latency_samples=200,
    boids=(BoidsSize(300, 8, 120), BoidsSize(2000, 20, 30)),
)
QUICK = Sizes(
    pump_behaviors=20_000,
    latency_samples=20,
    boids=(BoidsSize(100, 4, 10), BoidsSize(400, 12, 5)),
)


# ------------------------------------------------------------------ workloads
# Everything a behavior body uses lives at module level, so that the worker
# sub-interpreters can see it.


def schedule_trivial(cown: PinnedCown[int]) -> None:
    """(a) Schedule one pinned behavior with a trivial body on ``cown``."""

    @when(cown)
    def touch(cown: PinnedCown[int]) -> None:
        cown.value += 1


def kick(sink: PinnedCown[list[int]], delay: float) -> Cown[int]:
    """(b) Schedule a worker behavior that, after ``delay`` s, schedules a pinned one.

    The worker behavior reads the clock just before it schedules the pinned
    behavior; the pinned body appends how many nanoseconds later it started
    to the list in ``sink``.  The worker behavior's result cown receives how
    many nanoseconds its own ``@when`` call took.
    """

    @when()
    def fire(sink: PinnedCown[list[int]] = sink, delay: float = delay) -> int:
        if delay > 0:
            time.sleep(delay)
        sent = time.perf_counter_ns()

        @when(sink)
        def land(sink: PinnedCown[list[int]], sent: int = sent) -> None:
            sink.value.append(time.perf_counter_ns() - sent)

        return time.perf_counter_ns() - sent

    return fire


# ---------------------------------------------------------------- measuring


def drain_rate(behaviors: int, workers: int, max_behaviors: int | None) -> tuple[float, float]:
    """(a) Queue ``behaviors`` pinned behaviors, then time pumping them all.

    Returns the seconds spent scheduling and the seconds spent pumping.
    Raises ``RuntimeError`` if the pinned cowns do not count every body.
    """
    counters = [PinnedCown(0) for _ in range(PINNED_COWNS)]
    start(workers)
    began = time.perf_counter()
    for index in range(behaviors):
        schedule_trivial(counters[index % PINNED_COWNS])
    scheduled = time.perf_counter()
    executed = 0
    while executed < behaviors:
        executed += pump(max_behaviors=max_behaviors).executed
    pumped = time.perf_counter()
    wait()
    total = 0
    for counter in counters:
        with counter:
            total += counter.value
    if total != behaviors:
        raise RuntimeError(f"pinned bodies counted {total}, expected {behaviors}")
    return scheduled - began, pumped - scheduled


#: Waits until the pinned list has ``n`` entries, pumping as its strategy says.
Waiter = Callable[[list[int], int], None]


def wait_with_hook(fd: int) -> Waiter:
    """Sleep in ``select`` on the wake-up descriptor, then pump."""

    def waiter(landed: list[int], target: int) -> None:
        give_up = time.monotonic() + SAMPLE_TIMEOUT
        while len(landed) < target:
            select.select([fd], [], [], 0.5)
            pump()
            if time.monotonic() > give_up:
                raise TimeoutError("no pinned behavior arrived")

    return waiter


def wait_polling(landed: list[int], target: int) -> None:
    """Sleep one polling period, then pump, until the sample landed."""
    give_up = time.monotonic() + SAMPLE_TIMEOUT
    while len(landed) < target:
        time.sleep(POLL_PERIOD)
        pump()
        if time.monotonic() > give_up:
            raise TimeoutError("no pinned behavior arrived")


def wait_busy(landed: list[int], target: int) -> None:
    """Run Python code until the sample landed (the wake callback pumps)."""
    give_up = time.monotonic() + SAMPLE_TIMEOUT
    spins = 0
    while len(landed) < target:
        spins += 1
        if not spins % 4096 and time.monotonic() > give_up:
            raise TimeoutError("no pinned behavior arrived")


def pump_quietly() -> None:
    """The wake callback of line b3: drain the pinned queue."""
    pump()


def latencies(samples: int, workers: int, waiter: Waiter, seed: int) -> tuple[list[int], list[int]]:
    """(b) Collect ``samples`` wake-up latencies, in nanoseconds, one at a time.

    Returns the latencies and, for each sample, how long the worker's
    ``@when`` call scheduling the pinned behavior took.  The sink's list is
    read directly on the main thread between pumps, which the pinned-cowns
    contract allows: no pinned body runs at that point.
    """
    landed: list[int] = []
    sink = PinnedCown(landed)
    rng = random.Random(seed)
    costs: list[Cown[int]] = []
    start(workers)
    try:
        for index in range(WARM_UP_SAMPLES + samples):
            costs.append(kick(sink, rng.uniform(0.0, POLL_PERIOD)))
            waiter(landed, index + 1)
    finally:
        wait()
    return landed[WARM_UP_SAMPLES:], [cost.unwrap() for cost in costs[WARM_UP_SAMPLES:]]


def percentile(values: list[int], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return float(ordered[rank])


# ------------------------------------------------------------------- report


def verdict(met: bool) -> str:
    """How a result compares with its target."""
    return "target met" if met else "BELOW TARGET"


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print the table."""
    workers_help = f"bocpy workers (default WORKER_COUNT = {WORKER_COUNT})"
    parser = bench_parser(__doc__, workers=WORKER_COUNT, workers_help=workers_help)
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.workers < 1:
        parser.error("need at least 1 repeat and at least 1 worker")
    sizes = QUICK if args.quick else FULL
    repeats, workers = args.repeats, args.workers

    print_header(
        "bocpy pinned-cown benchmark",
        args.quick,
        f"median of {repeats} run(s) per timed line, {workers} worker(s)",
    )
    print()
    table = Table(label=52, rule=110, digits=4)
    failed = False

    # (a) pump throughput.
    n = sizes.pump_behaviors
    runs = [drain_rate(n, workers, None) for _ in range(repeats)]
    scheduling = Sample([run[0] for run in runs])
    table.row(
        "a1",
        f"schedule {n:,} pinned behaviors on {PINNED_COWNS} pinned cowns",
        scheduling,
        f"{n / scheduling.median:,.0f} behaviors/s scheduled from the main thread",
    )
    draining = Sample([run[1] for run in runs])
    rate = n / draining.median
    table.row(
        "a2",
        f"pump() drains them ({n:,} behaviors)",
        draining,
        f"{rate:,.0f} behaviors/s, {draining.median / n * 1e9:.0f} ns each; "
        f"target >= {TARGET_PUMP_RATE:,}/s: {verdict(rate >= TARGET_PUMP_RATE)}",
    )
    sliced = Sample([drain_rate(n, workers, 1)[1] for _ in range(repeats)])
    table.row(
        "a3",
        f"pump(max_behaviors=1) per behavior ({n:,} calls)",
        sliced,
        f"{n / sliced.median:,.0f} behaviors/s, {sliced.median / n * 1e9:.0f} ns per call",
    )

    # (b) wake-up latency, worker to main thread.
    count = sizes.latency_samples
    hook, costs = latencies(count, workers, wait_with_hook(wake_fd()), args.seed)
    median_us = statistics.median(hook) / 1e3
    table.row(
        "b1",
        f"latency, select(wake_fd) + pump ({count} samples)",
        None,
        f"median {median_us:.1f} us, p90 {percentile(hook, 0.9) / 1e3:.1f} us; "
        f"target < {TARGET_LATENCY_US:.0f} us: {verdict(median_us < TARGET_LATENCY_US)}",
    )
    table.row(
        "b1'",
        "  b1's samples: the worker's @when call alone",
        None,
        f"median {statistics.median(costs) / 1e3:.1f} us, "
        f"p90 {percentile(costs, 0.9) / 1e3:.1f} us",
    )
    polled, _ = latencies(count, workers, wait_polling, args.seed)
    table.row(
        "b2",
        f"latency, 60 Hz polling loop ({count} samples)",
        None,
        f"median {statistics.median(polled) / 1e6:.2f} ms, "
        f"p90 {percentile(polled, 0.9) / 1e6:.2f} ms",
    )
    set_wake_callback(pump_quietly)
    try:
        busy, _ = latencies(count, workers, wait_busy, args.seed)
    finally:
        set_wake_callback(None)
    table.row(
        "b3",
        f"latency, set_wake_callback, main busy in Python ({count})",
        None,
        f"median {statistics.median(busy) / 1e3:.1f} us, p90 {percentile(busy, 0.9) / 1e3:.1f} us",
    )

    # (c) boids, coarse versus per-item pinned dispatch.
    for number, size in enumerate(sizes.boids, 1):
        frame_ms: dict[str, float] = {}
        for mode in ("coarse", "per-item"):
            config = Config(
                boids=size.boids,
                cells=size.cells,
                workers=workers,
                frames=size.frames,
                headless=True,
                dispatch=mode,
                seed=args.seed,
            )
            results = [run_headless(config) for _ in range(repeats)]
            problems = [failure for result in results for failure in result.failures]
            failed = failed or bool(problems)
            sample = Sample([result.mean_frame_ms / 1e3 for result in results])
            frame_ms[mode] = sample.median * 1e3
            last = results[-1]
            key = f"c{number}{'a' if mode == 'coarse' else 'b'}"
            table.row(
                key,
                f"boids {mode}, {size.boids} boids, {size.cells}x{size.cells} cells, "
                f"{size.frames} fr",
                sample,
                f"{frame_ms[mode]:.2f} ms/frame, {last.pinned / last.frames:.1f} pinned and "
                f"{last.cells / last.frames:.1f} cell behaviors per frame"
                + (f"; CHECK FAILED: {problems[0]}" if problems else ""),
            )
        table.row(
            f"c{number}",
            "ratio per-item / coarse frame time",
            None,
            f"x{frame_ms['per-item'] / frame_ms['coarse']:.2f}",
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
