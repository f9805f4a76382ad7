"""Performance round 2: the four targets of issue 14, as ratios from one run.

1. captures: a self-rescheduling chain step (16 chains, 1 worker, the counter
   in the cown) with 0, 1, 2, 3 and 4 small integer captures (parameters
   with defaults), then with 1 and 4 closure variables instead, and with a
   launcher defined inside a function (its steps capture it); each ratio is
   the per-step time over the time with none (target: at most x1.30 up to
   four captures);
2. fan-out: behaviors scheduled from the main thread, each on a new cown,
   on 1 and on 2 workers (target: 2 workers not slower than 1), and, with
   ``--reference-python``, the same loop on the reference implementation
   run in a subprocess right after (target: at least x2 its rate);
3. many tiny tasks: ``BocExecutor.map(identity, range(N), chunksize=1000)``
   against ``ProcessPoolExecutor.map`` with the same chunk size (target:
   BocExecutor's time at most x1.5 of the process pool's);
4. memory, each in a fresh subprocess: RSS growth per idle ``Cown(int)``
   over 1,000,000 cowns (target 128 bytes), per behavior waiting in one
   cown's queue (target 256 bytes), and the peak RSS of a run scheduling
   one behavior on each of 1,000,000 cowns, the cowns and the result cowns
   kept in lists (target 400 MB).

Timings are the minimum of ``--repeats`` runs, the variants interleaved
(the machine is noisy; the minimum is the least disturbed run).

    PYTHONPATH=src python benchmarks/bench_round2.py
    PYTHONPATH=src python benchmarks/bench_round2.py --reference-python /tmp/ref-venv/bin/python
    PYTHONPATH=src python benchmarks/bench_round2.py --quick
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import inspect
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable

from _common import print_header

from bocpy import BocExecutor, Cown, start, wait, when

CHAINS = 16


# ------------------------------------------------------------- 1. captures


def chain0(cown: Cown[int]) -> None:
    @when(cown)
    def step(cown: Cown[int]) -> None:
        cown.value -= 1
        if cown.value > 0:
            chain0(cown)


def chain1(cown: Cown[int], a: int = 1) -> None:
    @when(cown)
    def step(cown: Cown[int], a: int = a) -> None:
        cown.value -= a
        if cown.value > 0:
            chain1(cown, a)


def chain2(cown: Cown[int], a: int = 1, b: int = 2) -> None:
    @when(cown)
    def step(cown: Cown[int], a: int = a, b: int = b) -> None:
        cown.value -= a
        if cown.value > 0:
            chain2(cown, a, b)


def chain3(cown: Cown[int], a: int = 1, b: int = 2, c: int = 3) -> None:
    @when(cown)
    def step(cown: Cown[int], a: int = a, b: int = b, c: int = c) -> None:
        cown.value -= a
        if cown.value > 0:
            chain3(cown, a, b, c)


def chain4(cown: Cown[int], a: int = 1, b: int = 2, c: int = 3, d: int = 4) -> None:
    @when(cown)
    def step(cown: Cown[int], a: int = a, b: int = b, c: int = c, d: int = d) -> None:
        cown.value -= a
        if cown.value > 0:
            chain4(cown, a, b, c, d)


CHAIN_LAUNCHERS: list[Callable[[Cown[int]], None]] = [chain0, chain1, chain2, chain3, chain4]


# The same captures as variables of the enclosing function (closure cells)
# rather than parameters with defaults: what most Python code writes.
def closure1(cown: Cown[int], a: int = 1) -> None:
    @when(cown)
    def step(cown: Cown[int]) -> None:
        cown.value -= a
        if cown.value > 0:
            closure1(cown, a)


def closure4(cown: Cown[int], a: int = 1, b: int = 2, c: int = 3, d: int = 4) -> None:
    @when(cown)
    def step(cown: Cown[int]) -> None:
        cown.value -= a
        if cown.value > 0 and b + c + d:
            closure4(cown, a, b, c, d)


def local_launcher() -> Callable[[Cown[int]], None]:
    """A launcher defined inside a function (as in a script's ``main()``).

    Its steps capture the launcher itself, a function that cannot be sent by
    name: it crosses by code with each behavior.
    """

    def launch(cown: Cown[int], a: int = 1) -> None:
        @when(cown)
        def step(cown: Cown[int]) -> None:
            cown.value -= a
            if cown.value > 0:
                launch(cown, a)

    return launch


CLOSURE_LAUNCHERS: list[tuple[str, Callable[[Cown[int]], None]]] = [
    ("1 closure vars", closure1),
    ("4 closure vars", closure4),
    ("local launcher", local_launcher()),
]


# The same launchers with bocpy taken out: their source run again with a
# `when` that queues the body and a loop that calls it, in this thread, on
# a plain object.  What a step costs there is the Python code's own work --
# building the closure cells, the defaults tuple, the function -- which no
# runtime can remove; what bocpy adds is the difference.

_PLAIN_QUEUE: collections.deque[tuple[Callable[..., None], tuple[object, ...]]] = (
    collections.deque()
)


def _plain_when(*cowns: object) -> Callable[[Callable[..., None]], None]:
    def schedule(body: Callable[..., None]) -> None:
        _PLAIN_QUEUE.append((body, cowns))

    return schedule


class _PlainCown:
    def __init__(self, value: int) -> None:
        self.value = value


def plain_launchers() -> list[Callable[[Cown[int]], None]]:
    """CHAIN_LAUNCHERS then CLOSURE_LAUNCHERS, compiled again without bocpy."""
    namespace: dict[str, object] = {"when": _plain_when, "Cown": _PlainCown}
    namespace["annotations"] = annotations
    namespace["Callable"] = Callable
    functions = [*CHAIN_LAUNCHERS, closure1, closure4, local_launcher]
    for function in functions:
        exec(compile(inspect.getsource(function), __file__, "exec"), namespace)
    launchers = [namespace[f.__name__] for f in functions]
    launchers[-1] = launchers[-1]()  # local_launcher makes the launcher
    return launchers  # type: ignore[return-value]


def time_plain_chains(launch: Callable[[Cown[int]], None], steps: int) -> float:
    """Seconds per step of the same chains, bodies called in turn, no bocpy."""
    cowns = [_PlainCown(steps) for _ in range(CHAINS)]
    began = time.perf_counter()
    for cown in cowns:
        launch(cown)  # type: ignore[arg-type]
    while _PLAIN_QUEUE:
        body, args = _PLAIN_QUEUE.popleft()
        body(*args)
    return (time.perf_counter() - began) / (CHAINS * steps)


def time_chains(launch: Callable[[Cown[int]], None], steps: int) -> float:
    """Seconds per step of CHAINS chains of ``steps`` steps on 1 worker."""
    cowns = [Cown(steps) for _ in range(CHAINS)]
    start(1)
    began = time.perf_counter()
    for cown in cowns:
        launch(cown)
    wait()
    return (time.perf_counter() - began) / (CHAINS * steps)


# -------------------------------------------------------------- 2. fan-out

FAN_OUT_SOURCE = """
import sys, time
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
wait()
print(count / (time.perf_counter() - began))
"""


def fan_out_rate(python: str, count: int, workers: int) -> float:
    """Behaviors per second of the fan-out loop run by ``python`` in a subprocess."""
    env = dict(os.environ)
    if python != sys.executable:
        env.pop("PYTHONPATH", None)  # the reference uses its own installed bocpy
    out = subprocess.run(
        [python, "-c", FAN_OUT_SOURCE, str(count), str(workers)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return float(out.stdout.split()[-1])


# ------------------------------------------------------------- 3. executor


def identity(x: int) -> int:
    return x


def time_map(executor: cf.Executor, count: int, chunksize: int) -> float:
    began = time.perf_counter()
    total = sum(executor.map(identity, range(count), chunksize=chunksize))
    elapsed = time.perf_counter() - began
    assert total == count * (count - 1) // 2
    return elapsed


# --------------------------------------------------------------- 4. memory

MEMORY_SOURCE = """
import gc, resource, sys
from bocpy import Cown, start, wait, when

def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

mode, count = sys.argv[1], int(sys.argv[2])
gc.disable()
if mode == "idle":
    holder = [None] * count  # the list is not counted
    before = rss()
    for i in range(count):
        holder[i] = Cown(i + 1000)  # ints outside the small-int cache, as users have
    print((rss() - before) / count)
elif mode == "queued":
    start(1)
    gate = Cown(0)
    gate.acquire()  # held on the main thread: every behavior waits in its queue
    before = rss()
    for _ in range(count):
        @when(gate)
        def step(c):
            c.value += 1
    per = (rss() - before) / count
    gate.release()
    wait()
    print(per)
else:
    start(1)
    cowns = [Cown(i + 1000) for i in range(count)]
    results = []
    for cown in cowns:
        @when(cown)
        def step(c):
            c.value += 1
        results.append(step)
    wait()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def memory(mode: str, count: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SOURCE, mode, str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.split()[-1])


# ------------------------------------------------------------------ main


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI smoke runs")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant (minimum kept)")
    parser.add_argument("--reference-python", help="a Python with the reference bocpy installed")
    parser.add_argument(
        "--only", choices=["captures", "fanout", "executor", "memory"], help="one section only"
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    steps = 500 if args.quick else 5_000
    fan = 5_000 if args.quick else 200_000
    tiny = 10_000 if args.quick else 100_000
    cowns = 20_000 if args.quick else 1_000_000
    print_header("bocpy round 2", args.quick, f"minimum of {args.repeats} interleaved run(s)")
    print()

    if args.only in (None, "captures"):
        launchers = CHAIN_LAUNCHERS + [launch for _, launch in CLOSURE_LAUNCHERS]
        plain = plain_launchers()
        best = [float("inf")] * len(launchers)
        best_plain = [float("inf")] * len(launchers)
        for _ in range(args.repeats):
            for k, launch in enumerate(launchers):
                best[k] = min(best[k], time_chains(launch, steps))
                best_plain[k] = min(best_plain[k], time_plain_chains(plain[k], steps))
        print(f"1. captures: chain step on 1 worker ({CHAINS} chains x {steps:,} steps)")
        print("   (plain: the same code with bocpy taken out, bodies called in turn;")
        print("    bocpy's own: the step's time minus plain's, over the same with no captures)")
        labels = [f"{k} captures" for k in range(len(CHAIN_LAUNCHERS))]
        labels += [label for label, _ in CLOSURE_LAUNCHERS]
        own_none = best[0] - best_plain[0]
        for k, (label, seconds) in enumerate(zip(labels, best, strict=True)):
            ratio = seconds / best[0]
            plain_ratio = best_plain[k] / best_plain[0]
            own_ratio = (seconds - best_plain[k]) / own_none
            mark = "" if k == 0 else f"  target <= x1.30: {verdict(ratio <= 1.30)}"
            print(
                f"   {label:>16}: {seconds * 1e6:5.2f} us/step x{ratio:.2f}  "
                f"plain {best_plain[k] * 1e6:4.2f} x{plain_ratio:.2f}  "
                f"bocpy's own x{own_ratio:.2f}{mark}"
            )
        print()

    if args.only in (None, "fanout"):
        rates = {1: 0.0, 2: 0.0}
        ref = 0.0
        for _ in range(args.repeats):
            for workers in (1, 2):
                rates[workers] = max(rates[workers], fan_out_rate(sys.executable, fan, workers))
            if args.reference_python:
                ref = max(ref, fan_out_rate(args.reference_python, fan, 2))
        print(f"2. fan-out from the main thread ({fan:,} behaviors, each on a new cown)")
        print(f"   1 worker : {rates[1]:10,.0f} behaviors/s")
        ratio = rates[2] / rates[1]
        print(
            f"   2 workers: {rates[2]:10,.0f} behaviors/s  x{ratio:.2f} of 1 worker  "
            f"target >= x1.00: {verdict(ratio >= 1.0)}"
        )
        if args.reference_python:
            ratio = rates[2] / ref
            print(
                f"   reference, 2 workers: {ref:10,.0f} behaviors/s; bocpy x{ratio:.2f}  "
                f"target >= x2.00: {verdict(ratio >= 2.0)}"
            )
        print()

    if args.only in (None, "executor"):
        chunk = 1000
        boc = proc = float("inf")
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(2, mp_context=context) as pool:
            list(pool.map(identity, range(4 * chunk), chunksize=chunk))  # start-up untimed
            with BocExecutor(2) as executor:
                list(executor.map(identity, range(4 * chunk), chunksize=chunk))
                for _ in range(args.repeats):
                    boc = min(boc, time_map(executor, tiny, chunk))
                    proc = min(proc, time_map(pool, tiny, chunk))
        wait()
        ratio = boc / proc
        print(f"3. map(identity, range({tiny:,}), chunksize={chunk}), 2 workers / processes")
        print(f"   ProcessPoolExecutor: {tiny / proc:12,.0f} tasks/s")
        print(
            f"   BocExecutor        : {tiny / boc:12,.0f} tasks/s  time x{ratio:.2f}  "
            f"target <= x1.50: {verdict(ratio <= 1.5)}"
        )
        print()

    if args.only in (None, "memory"):
        idle = memory("idle", cowns)
        queued = memory("queued", cowns)
        peak = memory("peak", cowns)
        print(f"4. memory ({cowns:,} cowns; RSS, each in a fresh process)")
        print(f"   idle Cown(int)    : {idle:7.1f} bytes  target <= 128: {verdict(idle <= 128)}")
        print(
            f"   queued behavior   : {queued:7.1f} bytes  target <= 256: {verdict(queued <= 256)}"
        )
        mb = peak / 1e6
        target = " target < 400 MB: " + verdict(mb < 400) if cowns == 1_000_000 else ""
        print(f"   one behavior each : peak RSS {mb:7.1f} MB{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
