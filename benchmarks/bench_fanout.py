"""Fan-out from the main thread on 1 worker against 2, run interleaved.

Each run is a fresh subprocess that starts a runtime, schedules ``--count``
behaviors from the main thread (each on a new cown, as in row 2 of
``bench_round2.py`` and rows 4a/4b of ``bench_core.py``), waits, and prints
its rate with the runtime's per-worker counters.  Each round runs every
configuration (1 and 2 workers, per tree) once, in a fresh random order
(``--seed``), ``--pairs`` rounds, so that a change in the machine's load hits
all sides alike and no configuration always follows the same other one (a
fixed order showed a 15 % difference between two identical builds); the
script prints the median of the per-pair ratios (2 workers / 1 worker) and
the worst pair.

``--load N`` keeps N busy-looping processes running beside the runs, each
pinned to one core (round-robin over the usable cores), to show what happens
when the machine is not quiet.  ``--tree NAME=PATH`` (repeatable) runs every
pair once per source tree (``PATH`` goes first on ``PYTHONPATH``), in the
same interleaved order, to compare builds side by side; by default the
bocpy that this Python imports is measured.

A script, not a test: it prints figures and exits 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from typing import Any

RUN_SOURCE = """
import json, sys, time
from bocpy import Cown, start, wait, when

def fan_out(count):
    for _ in range(count):
        @when(Cown(0))
        def touch(cown):
            cown.value += 1

count, workers = int(sys.argv[1]), int(sys.argv[2])
start(workers)
began = time.perf_counter()
fan_out(count)
scheduled = time.perf_counter() - began
stats = wait(stats=True)
elapsed = time.perf_counter() - began
print(json.dumps({
    "rate": count / elapsed,
    "scheduled_s": scheduled,
    "drain_s": elapsed - scheduled,
    "steals": sum(w["steals"] for w in stats),
    "parks": sum(w["parks"] for w in stats),
    "run": [w["behaviors_run"] for w in stats],
}))
"""


def run_once(pythonpath: str | None, count: int, workers: int) -> dict[str, Any]:
    """One fan-out run in a fresh interpreter; its JSON summary."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", RUN_SOURCE, str(count), str(workers)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    return result


def start_load(count: int) -> list[subprocess.Popen[bytes]]:
    """Starts `count` busy loops, each pinned to one usable core."""
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for k in range(count):
        proc = subprocess.Popen(
            [sys.executable, "-c", "while True: pass"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.sched_setaffinity(proc.pid, {cores[k % len(cores)]})
        procs.append(proc)
    return procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10, help="1-worker/2-worker pairs (10)")
    parser.add_argument("--count", type=int, default=200_000, help="behaviors per run")
    parser.add_argument("--load", type=int, default=0, help="pinned busy loops beside the runs")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a source tree to measure (repeatable); PATH goes first on PYTHONPATH",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the run order (1)")
    args = parser.parse_args()
    if args.pairs < 1 or args.count < 1 or args.load < 0:
        parser.error("--pairs and --count must be at least 1, --load at least 0")
    trees: list[tuple[str, str | None]] = []
    for spec in args.tree:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--tree {spec!r}: expected NAME=PATH, e.g. new=src")
        trees.append((name, os.path.abspath(path)))
    if not trees:
        trees.append(("bocpy", None))

    rng = random.Random(args.seed)
    load = start_load(args.load)
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {1: [], 2: []} for name, _ in trees
    }
    try:
        order = [(name, path, workers) for name, path in trees for workers in (1, 2)]
        for _ in range(args.pairs):
            # A fresh random order every round, so that no configuration
            # always runs right after the same other one.
            rng.shuffle(order)
            for name, path, workers in order:
                results[name][workers].append(run_once(path, args.count, workers))
    finally:
        for proc in load:
            proc.kill()
            proc.wait()

    print(
        f"fan-out from the main thread: {args.count:,} behaviors, {args.pairs} interleaved "
        f"pairs, {args.load} pinned busy loop(s) beside, {len(os.sched_getaffinity(0))} usable "
        "cores"
    )
    for name, _ in trees:
        one, two = results[name][1], results[name][2]
        ratios = [float(b["rate"]) / float(a["rate"]) for a, b in zip(one, two, strict=True)]
        rate1 = statistics.median(float(r["rate"]) for r in one)
        rate2 = statistics.median(float(r["rate"]) for r in two)
        steals = statistics.median(int(r["steals"]) for r in two)
        parks = statistics.median(int(r["parks"]) for r in two)
        print(
            f"  {name:>8}: 1 worker {rate1:10,.0f}/s  2 workers {rate2:10,.0f}/s  "
            f"ratio 2w/1w median x{statistics.median(ratios):.2f} "
            f"(worst x{min(ratios):.2f}, best x{max(ratios):.2f}); "
            f"2w medians: steals {steals:,.0f}, parks {parks:,.0f}"
        )


if __name__ == "__main__":
    main()
