"""Matrix speed, side by side: bocpy.Matrix against NumPy (and the reference).

Each workload runs on the main thread with this interpreter's bocpy.Matrix
and with NumPy (pinned to one BLAS thread, so ``@`` is compared with
single-threaded BLAS).  With ``--reference-python PATH``, the same Matrix
statements also run in a subprocess of that interpreter, which must already
have the reference bocpy installed (this script never builds anything).

Printed per workload: the best time per operation of each, and the ratios
``bocpy / numpy`` and ``bocpy / reference`` (below 1.0 means bocpy is faster).

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
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
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

#: Runs in the reference interpreter: times each (setup, stmt) it is given.
_TIMER = textwrap.dedent(
    """
    import json, sys, timeit
    from bocpy import Matrix

    def best(setup, stmt, repeat):
        g = {"Matrix": Matrix}
        timer = timeit.Timer(stmt, setup, globals=g)
        number, _ = timer.autorange()
        return min(timer.repeat(repeat, number)) / number

    jobs = json.loads(sys.stdin.read())
    print(json.dumps([best(s, t, jobs["repeat"]) for s, t in jobs["work"]]))
    """
)


def best_time(setup: str, stmt: str, namespace: dict[str, object], repeat: int) -> float:
    """Best seconds per statement over ``repeat`` autoranged runs."""
    timer = timeit.Timer(stmt, setup, globals=dict(namespace))
    number, _ = timer.autorange()
    return min(timer.repeat(repeat, number)) / number


def reference_times(python: str, repeat: int) -> list[float]:
    """Times of every workload's Matrix statement run by ``python``."""
    jobs = {"repeat": repeat, "work": [(w.setup, w.stmt) for w in WORKLOADS]}
    proc = subprocess.run(
        [python, "-c", _TIMER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed ({python}):\n{proc.stderr}")
    times: list[float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return times


def fmt(seconds: float) -> str:
    """A time per operation with a readable unit."""
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:8.2f} us"
    return f"{seconds * 1e9:8.1f} ns"


def main() -> None:
    """Run every workload and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--reference-python", help="an interpreter with the reference bocpy installed"
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed runs per workload (best is kept)"
    )
    args = parser.parse_args()

    import numpy as np

    from bocpy import Matrix

    ours = [best_time(w.setup, w.stmt, {"Matrix": Matrix}, args.repeat) for w in WORKLOADS]
    numpy_times = [best_time(w.np_setup, w.np_stmt, {"np": np}, args.repeat) for w in WORKLOADS]
    ref = reference_times(args.reference_python, args.repeat) if args.reference_python else None

    print(f"python {sys.version.split()[0]}, numpy {np.__version__} (1 BLAS thread)")
    header = f"{'workload':38} {'numpy':>11} {'bocpy':>11}"
    if ref is not None:
        header += f" {'reference':>11}"
    header += f" {'bocpy/numpy':>12}"
    if ref is not None:
        header += f" {'bocpy/ref':>10}"
    print(header)
    for i, w in enumerate(WORKLOADS):
        line = f"{w.name:38} {fmt(numpy_times[i] / w.ops)} {fmt(ours[i] / w.ops)}"
        if ref is not None:
            line += f" {fmt(ref[i] / w.ops)}"
        line += f" {ours[i] / numpy_times[i]:12.2f}"
        if ref is not None:
            line += f" {ours[i] / ref[i]:10.2f}"
        print(line)


if __name__ == "__main__":
    main()
