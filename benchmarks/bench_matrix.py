"""Matrix speed, side by side: bocpy.Matrix against NumPy (and the reference).

Each workload runs on the main thread with this interpreter's bocpy.Matrix
and with NumPy (pinned to one BLAS thread, so ``@`` is compared with
single-threaded BLAS).  With ``--reference-python PATH``, the same Matrix
statements also run in a subprocess of that interpreter, which must already
have the reference bocpy installed (this script never builds anything).

The sides are timed in interleaved rounds (every workload on every side,
back to back, then the next round) and the best of the rounds is kept, so a
burst of load from other processes hits all sides alike.  Printed per
workload: the best time per operation of each, and the ratios
``bocpy / numpy`` and ``bocpy / reference`` (below 1.0 means bocpy is
faster); then the issue's targets that were missed, if any.

    python benchmarks/bench_matrix.py [--reference-python PATH] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import timeit
from dataclasses import dataclass

# Before NumPy loads its BLAS: one thread, so `@` compares like with like.
# (NumPy is imported in main().)
for _var in (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_var] = "1"

#: Python-loop length of the small-vector workloads.
LOOP = 2000


@dataclass(frozen=True)
class Workload:
    """One measured operation: Matrix setup/statement and the NumPy twin."""

    name: str
    setup: str
    stmt: str
    np_setup: str
    np_stmt: str
    ops: int = 1  #: operations per statement (the loops run LOOP of them)


def _big(n: int, m: int) -> str:
    return f"a = Matrix.uniform(0.0, 1.0, ({n}, {m})); b = Matrix.uniform(0.0, 1.0, ({n}, {m}))"


def _np_big(n: int, m: int) -> str:
    return f"rng = np.random.default_rng(1); a = rng.random(({n}, {m})); b = rng.random(({n}, {m}))"


_VEC_SETUP = (
    "p = Matrix.vector([1.0, 2.0]); v = Matrix.vector([0.5, -0.25]); q = Matrix.vector([3.0, 4.0])"
)
_NP_VEC_SETUP = "p = np.array([1.0, 2.0]); v = np.array([0.5, -0.25]); q = np.array([3.0, 4.0])"

WORKLOADS = [
    Workload("add 1000x1000", _big(1000, 1000), "a + b", _np_big(1000, 1000), "a + b"),
    Workload("scale 1000x1000", _big(1000, 1000), "a * 2.5", _np_big(1000, 1000), "a * 2.5"),
    Workload("in-place add 1000x1000", _big(1000, 1000), "a += b", _np_big(1000, 1000), "a += b"),
    Workload("matmul 256x256", _big(256, 256), "a @ b", _np_big(256, 256), "a @ b"),
    Workload("matmul 1024x1024", _big(1024, 1024), "a @ b", _np_big(1024, 1024), "a @ b"),
    Workload(
        "sum axis=0 1000x1000",
        _big(1000, 1000),
        "a.sum(axis=0)",
        _np_big(1000, 1000),
        "a.sum(axis=0)",
    ),
    Workload(
        "sum axis=1 1000x1000",
        _big(1000, 1000),
        "a.sum(axis=1)",
        _np_big(1000, 1000),
        "a.sum(axis=1)",
    ),
    Workload(
        "2-vector p + v * 0.5 (loop)",
        _VEC_SETUP,
        f"for _ in range({LOOP}): r = p + v * 0.5",
        _NP_VEC_SETUP,
        f"for _ in range({LOOP}): r = p + v * 0.5",
        ops=LOOP,
    ),
    Workload(
        "2-vector (q - p).magnitude() (loop)",
        _VEC_SETUP,
        f"for _ in range({LOOP}): d = (q - p).magnitude()",
        _NP_VEC_SETUP,
        f"for _ in range({LOOP}): d = float(np.sqrt(((q - p) ** 2).sum()))",
        ops=LOOP,
    ),
    Workload(
        "2-vector p += v (loop)",
        _VEC_SETUP,
        f"for _ in range({LOOP}): p += v",
        _NP_VEC_SETUP,
        f"for _ in range({LOOP}): p += v",
        ops=LOOP,
    ),
]

#: Seconds one timed run of a workload lasts (about): short, so that the best
#: of many rounds likely includes one the machine's other load left alone.
SLICE = 0.05

#: Runs in the reference interpreter as a server: given the workloads and
#: SLICE, it calibrates each statement, then answers each index read from
#: stdin with one timed run of that statement (seconds per statement).
_SERVER = textwrap.dedent(
    """
    import json, sys, timeit
    from bocpy import Matrix

    jobs = json.loads(sys.stdin.readline())
    timers = []
    for setup, stmt in jobs["work"]:
        timer = timeit.Timer(stmt, setup, globals={"Matrix": Matrix})
        number, seconds = timer.autorange()
        timers.append((timer, max(1, round(number * jobs["slice"] / seconds))))
    print("ready", flush=True)
    for line in sys.stdin:
        timer, number = timers[int(line)]
        print(json.dumps(timer.timeit(number) / number), flush=True)
    """
)


class Local:
    """The workloads timed in this interpreter (bocpy.Matrix or NumPy)."""

    def __init__(self, pairs: list[tuple[str, str]], namespace: dict[str, object]) -> None:
        self.timers: list[tuple[timeit.Timer, int]] = []
        for setup, stmt in pairs:
            timer = timeit.Timer(stmt, setup, globals=dict(namespace))
            number, seconds = timer.autorange()
            self.timers.append((timer, max(1, round(number * SLICE / seconds))))

    def once(self, i: int) -> float:
        """One timed run of workload ``i``: seconds per statement."""
        timer, number = self.timers[i]
        return timer.timeit(number) / number

    def close(self) -> None:
        """Nothing to release."""


class Remote:
    """The Matrix workloads timed by another interpreter (the reference)."""

    def __init__(self, python: str, pairs: list[tuple[str, str]]) -> None:
        self.python = python
        self.proc = subprocess.Popen(
            [python, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._send(json.dumps({"slice": SLICE, "work": pairs}))
        if self._receive() != "ready":
            raise SystemExit(f"reference run failed ({python}): no 'ready' line")

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _receive(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise SystemExit(f"reference run failed ({self.python}):\n{self.proc.stderr.read()}")
        return line.strip()

    def once(self, i: int) -> float:
        """One timed run of workload ``i`` in the reference: seconds per statement."""
        self._send(str(i))
        seconds: float = json.loads(self._receive())
        return seconds

    def close(self) -> None:
        """Ends the reference process."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def fmt(seconds: float) -> str:
    """A time per operation with a readable unit."""
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:8.2f} us"
    return f"{seconds * 1e9:8.1f} ns"


#: The issue's targets: workload name prefix -> largest bocpy/numpy ratio.
NUMPY_TARGETS = {
    "add ": 1.2,
    "scale ": 1.2,
    "in-place add ": 1.2,
    "matmul 1024x1024": 3.0,
    "2-vector ": 1.0,
}


def main() -> None:
    """Run every workload, interleaved, and print the table and the targets."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reference-python", help="an interpreter with the reference bocpy installed"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=15,
        help=f"interleaved timed rounds of about {SLICE}s per workload and side "
        "(the best of each is kept; default 15)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, not {args.repeat}")

    import numpy as np

    from bocpy import Matrix

    sides: list[Local | Remote] = [
        Local([(w.setup, w.stmt) for w in WORKLOADS], {"Matrix": Matrix}),
        Local([(w.np_setup, w.np_stmt) for w in WORKLOADS], {"np": np}),
    ]
    if args.reference_python:
        sides.append(Remote(args.reference_python, [(w.setup, w.stmt) for w in WORKLOADS]))
    best = [[float("inf")] * len(WORKLOADS) for _ in sides]
    try:
        # Round by round, each workload on each side back to back, so that a
        # burst of load on the machine hits all sides alike.
        for _ in range(args.repeat):
            for i in range(len(WORKLOADS)):
                for s, side in enumerate(sides):
                    best[s][i] = min(best[s][i], side.once(i))
    finally:
        for side in sides:
            side.close()
    ours, numpy_times = best[0], best[1]
    ref = best[2] if args.reference_python else None

    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__} (1 BLAS thread), "
        f"best of {args.repeat} interleaved rounds"
    )
    header = f"{'workload':38} {'numpy':>11} {'bocpy':>11}"
    if ref is not None:
        header += f" {'reference':>11}"
    header += f" {'bocpy/numpy':>12}"
    if ref is not None:
        header += f" {'bocpy/ref':>10}"
    print(header)
    missed = []
    for i, w in enumerate(WORKLOADS):
        line = f"{w.name:38} {fmt(numpy_times[i] / w.ops)} {fmt(ours[i] / w.ops)}"
        if ref is not None:
            line += f" {fmt(ref[i] / w.ops)}"
        line += f" {ours[i] / numpy_times[i]:12.2f}"
        if ref is not None:
            line += f" {ours[i] / ref[i]:10.2f}"
            if ours[i] > ref[i]:
                missed.append(f"{w.name}: slower than the reference")
        print(line)
        for prefix, limit in NUMPY_TARGETS.items():
            if w.name.startswith(prefix) and ours[i] / numpy_times[i] > limit:
                missed.append(f"{w.name}: {ours[i] / numpy_times[i]:.2f}x NumPy, target {limit}x")
    print("targets: " + ("all met" if not missed else "missed: " + "; ".join(missed)))


if __name__ == "__main__":
    main()
