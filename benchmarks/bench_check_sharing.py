"""What ``BOCPY_CHECK_SHARING=1`` costs on the threads backend (docs/backends.md).

A chain of behaviors on two cowns, one worker: ``wide`` holds a list of
``--items // 10`` lists of 10 ints, ``counter`` an int.  Each behavior
increments the counter; with the check on, every behavior first walks
``wide``'s value.  Prints microseconds per behavior.

Run from the repository root, once per setting::

    BOCPY_CHECK_SHARING=0 PYTHONPATH=src python benchmarks/bench_check_sharing.py --items 10000
    BOCPY_CHECK_SHARING=1 PYTHONPATH=src python benchmarks/bench_check_sharing.py --items 10000
"""

from __future__ import annotations

import argparse
import os
import time

import bocpy
from bocpy import Cown, wait, when


def step(wide: Cown[list[list[int]]], counter: Cown[int]) -> None:
    counter.value += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10, help="ints in the wide value (10+)")
    parser.add_argument("--behaviors", type=int, default=3000)
    args = parser.parse_args()
    if args.items < 10 or args.behaviors < 1:
        parser.error("--items must be at least 10 and --behaviors at least 1")
    bocpy.start(1, backend="threads")
    wide = Cown([list(range(10)) for _ in range(args.items // 10)])
    counter = Cown(0)
    started = time.perf_counter()
    for _ in range(args.behaviors):
        when(wide, counter)(step)
    wait()
    per = (time.perf_counter() - started) / args.behaviors * 1e6
    setting = os.environ.get("BOCPY_CHECK_SHARING") or "0"
    print(f"BOCPY_CHECK_SHARING={setting} items={args.items}: {per:.1f} us per behavior")


if __name__ == "__main__":
    main()
