"""What the benchmark scripts share: command line, header, timing, samples, table.

The scripts import this module by name (``from _common import ...``): run as
``python benchmarks/bench_NAME.py``, their own folder is first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import bocpy

__all__ = ["Sample", "Table", "bench_parser", "print_header", "timed"]


def bench_parser(doc: str | None, *, workers: int, workers_help: str) -> argparse.ArgumentParser:
    """A parser with ``--quick``, ``--repeats`` and ``--workers`` (default ``workers``).

    Its description is the first line of ``doc`` (the script's ``__doc__``).
    """
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a few seconds in all, for CI smoke runs"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per measurement; the median is reported (default 3)",
    )
    parser.add_argument("--workers", type=int, default=workers, help=workers_help)
    return parser


def print_header(title: str, quick: bool, detail: str) -> None:
    """Print ``title: detail`` and the lines that say where the numbers come from.

    Those are the Python build, the platform, the cores (in the machine and
    usable by this process), bocpy's ``WORKER_COUNT`` and where bocpy was
    imported from.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    gil = "GIL enabled"
    if hasattr(sys, "_is_gil_enabled") and not sys._is_gil_enabled():
        gil = "free-threaded"
    print(f"{title}{' (--quick)' if quick else ''}: {detail}")
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}, {gil}) "
        f"on {platform.system()} {platform.machine()}"
    )
    print(
        f"cores: {os.cpu_count()} in the machine, {usable} usable by this process; "
        f"bocpy WORKER_COUNT = {bocpy.WORKER_COUNT}; bocpy from {Path(bocpy.__file__).parent}"
    )


def timed(action: Callable[[], object]) -> float:
    """Run ``action()`` and return how long it took, in seconds."""
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


@dataclass
class Sample:
    """The repeated timings of one measurement, in seconds."""

    times: list[float]

    @property
    def median(self) -> float:
        """The median of the timings, in seconds."""
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median, as a fraction (0 when the median is 0)."""
        return (max(self.times) - min(self.times)) / self.median if self.median else 0.0


class Table:
    """Prints the result table one row at a time, as measurements finish.

    ``label`` is the width of the measurement column, ``rule`` the length of
    the line under the heading, ``digits`` the decimals of the median.
    """

    def __init__(self, *, label: int, rule: int, digits: int) -> None:
        """Print the heading."""
        self.label = label
        self.digits = digits
        print(f"{'#':<3} {'measurement':<{label}} {'median':>10} {'spread':>7}  result")
        print("-" * rule)

    def row(self, key: str, label: str, sample: Sample | None, result: str) -> None:
        """Print one row: its timing columns are blank when ``sample`` is None."""
        if sample is None:
            timing = f"{'':>10} {'':>7}"
        else:
            timing = f"{sample.median:>9.{self.digits}f}s {sample.spread:>6.0%}"
        print(f"{key:<3} {label:<{self.label}} {timing}  {result}", flush=True)


def rss_bytes() -> int:
    """Resident set size of this process, from ``/proc`` (0 where there is none)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
