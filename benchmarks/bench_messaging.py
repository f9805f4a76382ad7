"""Messaging and noticeboard benchmark of bocpy: send/receive latency and throughput,
notice_update commit rate, and what one notice_read costs a behavior.

One run measures, and prints as one table:

1. round-trip latency of ``send``/``receive``: a client sends a small message
   to an echo server, which sends it back; the client times each round trip
   with ``time.perf_counter_ns`` and the table gives the median and the 90th
   percentile over all round trips (a) between two worker behaviors and
   (b) between the main thread and a worker behavior.  Every receive blocks
   with no time-out, so each round trip includes two wake-ups of a sleeping
   receiver;
2. throughput of one-way streams of small messages (an ``int`` each): a
   sender sends N messages back to back, a receiver receives them; messages
   per second from the sender's first ``send`` to the receiver's last
   ``receive`` -- (a) worker to worker, (b) worker to main thread, (c) main
   thread to worker;
3. ``notice_update`` commits per second, incrementing one key: (a) from the
   main thread alone, (b) from behaviors on two workers at once (contended;
   the rate is over the time from the first behavior's start to the last
   one's end), and ``notice_write`` from the main thread for comparison;
4. the cost of one ``notice_read`` in a behavior: 16 chains of trivial
   behaviors on one worker (each behavior reschedules itself on its cown, as
   in ``bench_core.py`` line 1), whose bodies do nothing else than one
   ``notice_read`` of a present key -- with 10 and with 10,000 entries on the
   board -- or, as the baseline, no read at all.  Microseconds per behavior,
   the read's own cost (minus the baseline), and the ratio 10,000 / 10
   entries: a behavior's snapshot costs it the keys it reads, not the size of
   the board, so the ratio should be close to 1.  The three variants run
   interleaved, one run of each per round.

Lines 2-4 are repeated (3 times by default) and the median reported, with the
spread (max - min, relative to the median); line 4 does one more, uncounted,
warm-up run first.  The latency lines pool the round trips of all repeats
(the first few of each run warm up and are discarded).
Runtime start-up (``start(n)``) is never timed.

This is a script, not a test: it checks nothing and exits 0 unless something
crashes.  Run it from the repository root, with bocpy installed or built in
place::

    PYTHONPATH=src python benchmarks/bench_messaging.py            # full run
    PYTHONPATH=src python benchmarks/bench_messaging.py --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import bocpy  # installed, or on PYTHONPATH (workers import it before they see sys.path)
from bocpy import (
    WORKER_COUNT,
    Cown,
    drain,
    notice_delete,
    notice_read,
    notice_seed,
    notice_update,
    notice_write,
    receive,
    send,
    start,
    wait,
    when,
)

#: Prefix of every tag and noticeboard key this benchmark uses.
PREFIX = "bench_messaging:"
#: Independent chains in the notice_read benchmark (4).
CHAINS = 16
#: Round trips discarded at the start of each latency run.
WARM_UP = 20
#: The key read by benchmark (4).
READ_KEY = PREFIX + "target"


@dataclass(frozen=True)
class Sizes:
    round_trips: int
    stream: int
    updates: int
    read_steps: int  # per chain


FULL = Sizes(round_trips=5_000, stream=200_000, updates=200_000, read_steps=10_000)
QUICK = Sizes(round_trips=500, stream=10_000, updates=10_000, read_steps=500)


# ------------------------------------------------------------ the behaviors


def add_one(value: int) -> int:
    return value + 1


def echo_server(ping: str, pong: str) -> Cown[int]:
    """Schedule a behavior echoing ``ping`` messages to ``pong`` until it gets ``None``."""

    @when()
    def echo(ping: str = ping, pong: str = pong) -> int:
        echoed = 0
        while True:
            _, contents = receive(ping)
            if contents is None:
                return echoed
            send(pong, contents)
            echoed += 1

    return echo


def ping_client(ping: str, pong: str, count: int) -> list[int]:
    """Time ``count`` round trips through an echo server; nanoseconds each."""
    samples = []
    for i in range(count):
        began = time.perf_counter_ns()
        send(ping, i)
        receive(pong)
        samples.append(time.perf_counter_ns() - began)
    send(ping, None)  # stop the server
    return samples


def ping_behavior(ping: str, pong: str, count: int) -> Cown[list[int]]:
    @when()
    def client(ping: str = ping, pong: str = pong, count: int = count) -> list[int]:
        return ping_client(ping, pong, count)

    return client


def stream_out(tag: str, count: int) -> int:
    """Send ``count`` ints to ``tag``; return the time of the first send (ns)."""
    began = time.perf_counter_ns()
    for i in range(count):
        send(tag, i)
    return began


def stream_in(tag: str, count: int) -> int:
    """Receive ``count`` messages from ``tag``; return the time of the last one (ns)."""
    for _ in range(count):
        receive(tag)
    return time.perf_counter_ns()


def sender_behavior(tag: str, count: int) -> Cown[int]:
    @when()
    def sender(tag: str = tag, count: int = count) -> int:
        return stream_out(tag, count)

    return sender


def receiver_behavior(tag: str, count: int) -> Cown[int]:
    @when()
    def receiver(tag: str = tag, count: int = count) -> int:
        return stream_in(tag, count)

    return receiver


def updater_behavior(key: str, count: int) -> Cown[tuple[int, int]]:
    @when()
    def updater(key: str = key, count: int = count) -> tuple[int, int]:
        began = time.perf_counter_ns()
        for _ in range(count):
            notice_update(key, add_one, 0)
        return began, time.perf_counter_ns()

    return updater


def reading_chain(cown: Cown[int]) -> None:
    """A chain step that reads one noticeboard key, then reschedules itself."""

    @when(cown)
    def step(cown: Cown[int]) -> None:
        notice_read(READ_KEY)
        cown.value -= 1
        if cown.value > 0:
            reading_chain(cown)


def plain_chain(cown: Cown[int]) -> None:
    """The same chain step without the read: the baseline."""

    @when(cown)
    def step(cown: Cown[int]) -> None:
        cown.value -= 1
        if cown.value > 0:
            plain_chain(cown)


# ---------------------------------------------------------------- measuring


@dataclass
class Sample:
    values: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        return (max(self.values) - min(self.values)) / self.median if self.median else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_worker_worker(count: int, repeats: int) -> Sample:
    ping, pong = PREFIX + "ww:ping", PREFIX + "ww:pong"
    samples: list[float] = []
    for _ in range(repeats):
        start(2)
        echo_server(ping, pong)
        client = ping_behavior(ping, pong, count + WARM_UP)
        wait()
        samples += [ns / 1e3 for ns in client.unwrap()[WARM_UP:]]
    return Sample(samples)


def latency_main_worker(count: int, repeats: int) -> Sample:
    ping, pong = PREFIX + "mw:ping", PREFIX + "mw:pong"
    samples: list[float] = []
    for _ in range(repeats):
        start(1)
        echo_server(ping, pong)
        samples += [ns / 1e3 for ns in ping_client(ping, pong, count + WARM_UP)[WARM_UP:]]
        wait()
    return Sample(samples)


def throughput(direction: str, count: int, repeats: int) -> Sample:
    """Messages per second, one way; ``direction`` is ww, wm or mw."""
    tag = PREFIX + "stream:" + direction
    rates: list[float] = []
    for _ in range(repeats):
        start(2)
        if direction == "ww":
            receiver = receiver_behavior(tag, count)
            sender = sender_behavior(tag, count)
            wait()
            began, ended = sender.unwrap(), receiver.unwrap()
        elif direction == "wm":
            sender = sender_behavior(tag, count)
            ended = stream_in(tag, count)
            wait()
            began = sender.unwrap()
        else:
            receiver = receiver_behavior(tag, count)
            began = stream_out(tag, count)
            wait()
            ended = receiver.unwrap()
        rates.append(count / ((ended - began) / 1e9))
    return Sample(rates)


def update_rate_main(count: int, repeats: int, write: bool = False) -> Sample:
    key = PREFIX + "counter"
    rates: list[float] = []
    start()  # the board belongs to a run: the main thread writes while one runs
    for _ in range(repeats):
        notice_delete(key)
        began = time.perf_counter()
        if write:
            for i in range(count):
                notice_write(key, i)
        else:
            for _ in range(count):
                notice_update(key, add_one, 0)
        rates.append(count / (time.perf_counter() - began))
    wait()  # ends the run, clearing its board
    return Sample(rates)


def update_rate_workers(count: int, repeats: int) -> tuple[Sample, bool]:
    key = PREFIX + "counter"
    rates: list[float] = []
    exact = True
    for _ in range(repeats):
        start(2)  # a new run: its board starts empty (wait() clears it)
        halves = [updater_behavior(key, count // 2) for _ in range(2)]
        board = wait(noticeboard=True)
        spans = [h.unwrap() for h in halves]
        began = min(s for s, _ in spans)
        ended = max(e for _, e in spans)
        rates.append(2 * (count // 2) / ((ended - began) / 1e9))
        exact = exact and board.get(key) == 2 * (count // 2)
    return Sample(rates), exact


def fill_board(entries: int) -> list[str]:
    """Seed the next run's board with ``entries`` keys of ours, ``READ_KEY`` among them.

    The run's closing ``wait()`` clears them (the board belongs to the run).
    """
    notice_seed(READ_KEY, "the value read")
    keys = [f"{PREFIX}fill:{i:05}" for i in range(entries - 1)]
    for k in keys:
        notice_seed(k, k)
    return keys


def chain_run_us(chain, steps: int) -> float:
    """Microseconds per behavior of one run of ``CHAINS`` chains of ``steps`` steps, 1 worker."""
    cowns = [Cown(steps) for _ in range(CHAINS)]
    start(1)
    began = time.perf_counter()
    for cown in cowns:
        chain(cown)
    wait()
    return (time.perf_counter() - began) / (CHAINS * steps) * 1e6


def read_cost(steps: int, repeats: int) -> dict[str, Sample]:
    """Line 4: the baseline and the two board sizes, interleaved run by run.

    Interleaving keeps slow drifts of the machine (frequency, other load) out
    of the comparison; one extra round first warms up and is not counted.
    """
    runs: dict[str, list[float]] = {"none": [], "10": [], "10000": []}
    for round_ in range(repeats + 1):
        for name in runs:
            if name == "none":
                value = chain_run_us(plain_chain, steps)
            else:
                fill_board(int(name))
                assert len(bocpy.noticeboard()) >= int(name)
                value = chain_run_us(reading_chain, steps)
                assert len(bocpy.noticeboard()) == 0  # wait() cleared the run's board
            if round_:
                runs[name].append(value)
    return {name: Sample(values) for name, values in runs.items()}


# ------------------------------------------------------------------- report


def row(key: str, label: str, result: str) -> None:
    print(f"{key:<3} {label:<52} {result}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a few seconds in all")
    parser.add_argument("--repeats", type=int, default=3, help="runs per line (default 3)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    sizes = QUICK if args.quick else FULL
    repeats = args.repeats
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1

    print(
        f"bocpy messaging/noticeboard benchmark{' (--quick)' if args.quick else ''}: "
        f"{repeats} run(s) per line"
    )
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}) "
        f"on {platform.system()} {platform.machine()}"
    )
    print(
        f"cores: {os.cpu_count()} in the machine, {usable} usable by this process; "
        f"bocpy WORKER_COUNT = {WORKER_COUNT}; bocpy from {Path(bocpy.__file__).parent}"
    )
    if usable < 3:
        print(
            "note: fewer than 3 usable cores -- the two workers and the main thread "
            "share them, which shows in the latency lines"
        )
    print()
    print(f"{'#':<3} {'measurement':<52} result")
    print("-" * 100)

    drain([PREFIX + t for t in ("ww:ping", "ww:pong", "mw:ping", "mw:pong")])

    # (1) round-trip latency.
    for key, label, measure in (
        ("1a", "round trip, worker <-> worker", latency_worker_worker),
        ("1b", "round trip, main thread <-> worker", latency_main_worker),
    ):
        sample = measure(sizes.round_trips, repeats)
        row(
            key,
            f"{label} ({len(sample.values):,} trips)",
            f"median {sample.median:8.1f} us   p90 {sample.percentile(0.9):8.1f} us",
        )

    # (2) one-way throughput.
    for key, label, direction in (
        ("2a", "stream, worker -> worker", "ww"),
        ("2b", "stream, worker -> main thread", "wm"),
        ("2c", "stream, main thread -> worker", "mw"),
    ):
        sample = throughput(direction, sizes.stream, repeats)
        row(
            key,
            f"{label} ({sizes.stream:,} msgs)",
            f"{sample.median:>12,.0f} msgs/s  spread {sample.spread:4.0%}  "
            f"({1e6 / sample.median:.2f} us/msg)",
        )

    # (3) notice_update commits.
    sample = update_rate_main(sizes.updates, repeats)
    row(
        "3a",
        f"notice_update, main thread ({sizes.updates:,})",
        f"{sample.median:>12,.0f} commits/s  spread {sample.spread:4.0%}",
    )
    sample, exact = update_rate_workers(sizes.updates, repeats)
    row(
        "3b",
        f"notice_update, 2 workers at once ({sizes.updates:,})",
        f"{sample.median:>12,.0f} commits/s  spread {sample.spread:4.0%}  "
        f"(count exact: {'yes' if exact else 'NO'})",
    )
    sample = update_rate_main(sizes.updates, repeats, write=True)
    row(
        "3c",
        f"notice_write, main thread ({sizes.updates:,})",
        f"{sample.median:>12,.0f} writes/s   spread {sample.spread:4.0%}",
    )

    # (4) one notice_read per behavior, small vs large board.
    behaviors = CHAINS * sizes.read_steps
    samples = read_cost(sizes.read_steps, repeats)
    base = samples["none"]
    row(
        "4a",
        f"chain, no read, 1 worker ({behaviors:,} behaviors)",
        f"{base.median:8.2f} us/behavior  spread {base.spread:4.0%}",
    )
    for key, entries in (("4b", 10), ("4c", 10_000)):
        sample = samples[str(entries)]
        row(
            key,
            f"chain, 1 notice_read, {entries:,} entries on the board",
            f"{sample.median:8.2f} us/behavior  spread {sample.spread:4.0%}  "
            f"(read: +{sample.median - base.median:.2f} us)",
        )
    row(
        "4",
        "ratio 10,000 entries / 10 entries (per behavior)",
        f"x{samples['10000'].median / samples['10'].median:.2f}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
