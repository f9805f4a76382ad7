"""Move benchmark of bocpy: a buffer handed from behavior to behavior costs the same at any size.

A chain of behaviors on one cown passes an object of a type registered with
``<bocpy/move.h>`` from step to step: each step reads one element and writes
one, and releasing the cown moves the buffer (detach in the interpreter that
releases it, attach in the one that acquires it next) instead of pickling a
copy.  Two such types are measured: ``bocpy.Matrix`` (a 3x4 matrix, 96
bytes, against a 1024x1024 one, 8 MB) and ``movebuf.Buffer`` (100 bytes
against 8 MB).  The per-step cost should not depend on the size (target: the
8 MB chain within 1.2x of the small one).  For contrast, the same chain with
an 8 MB ``bytearray``, which crosses by pickled copy.

``movebuf.Buffer`` comes from ``tests/move_ext/movebuf.c``, a small
downstream extension built here with setuptools against
``bocpy.get_include()``, exactly as a third-party extension would be (the
build goes to ``build/bench_move/``).  Matrix registers itself through the
same public hook.

Each line times ``--steps`` behaviors scheduled from the main thread and a
``quiesce()``; the table shows the median over ``--repeats`` runs and the
per-step cost.  The "crossed" column counts the steps that ran on another
worker than the step before (the buffer moves at every release either way).

Run it from the repository root, with bocpy installed or built in place::

    PYTHONPATH=src python benchmarks/bench_move.py            # full run
    PYTHONPATH=src python benchmarks/bench_move.py --quick    # a few seconds, for CI
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from _common import Sample, Table, bench_parser, print_header

import bocpy
from bocpy import Cown, Matrix, quiesce, wait, when

ROOT = Path(__file__).resolve().parents[1]
EXT_SOURCE = ROOT / "tests" / "move_ext" / "movebuf.c"
BUILD = ROOT / "build" / "bench_move"

SETUP_PY = """\
import json, os
from setuptools import Extension, setup

setup(name="movebuf", ext_modules=[Extension(
    "movebuf", sources=[os.environ["MOVEBUF_SOURCE"], *json.loads(os.environ["BOCPY_SOURCES"])],
    include_dirs=[os.environ["BOCPY_INCLUDE"]], extra_compile_args=["-O2"])])
"""


def build_movebuf() -> None:
    """Build the test extension into BUILD and put it on ``sys.path``."""
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "setup.py").write_text(SETUP_PY, encoding="utf-8")
    env = dict(os.environ)
    env["MOVEBUF_SOURCE"] = str(EXT_SOURCE)
    env["BOCPY_INCLUDE"] = bocpy.get_include()
    env["BOCPY_SOURCES"] = json.dumps(bocpy.get_sources())
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=BUILD,
        env=env,
        check=True,
        capture_output=True,
    )
    # Before the runtime starts: workers get the main interpreter's sys.path.
    sys.path.insert(0, str(BUILD))


def side(_: Cown[None]) -> None:
    """Keeps a worker busy for 0.2 ms (see run_chain)."""
    end = time.perf_counter() + 0.0002
    while time.perf_counter() < end:
        pass


def run_chain(value: Any, steps: int, hop: bool) -> tuple[float, int]:
    """Time ``steps`` behaviors passing ``value`` along; (seconds, steps that crossed).

    With ``hop``, each step also schedules a side behavior on a cown of its
    own, which keeps a worker busy for 0.2 ms: it lands on the step's
    worker's queue ahead of the next step, so that the next step is mostly
    stolen by another worker -- the buffer then really goes worker to
    worker.
    """
    cown = Cown(value)
    log: Cown[list[int]] = Cown([])
    began = time.perf_counter()
    for _ in range(steps):

        @when(cown, log)
        def step(cown: Cown[Any], log: Cown[list[int]]) -> None:
            buf = cown.value
            if isinstance(buf, Matrix):
                buf[0, 0] += 1.0
            else:
                buf[0] = (buf[0] + 1) & 0xFF
            log.value.append(threading.get_ident())
            if hop:
                when(Cown(None))(side)

    quiesce()
    elapsed = time.perf_counter() - began
    with log:
        threads = log.value
    crossed = sum(1 for a, b in itertools.pairwise(threads) if a != b)
    return elapsed, crossed


def main() -> None:
    """Run the chains and print the table and the ratio."""
    parser = bench_parser(__doc__, workers=2, workers_help="bocpy workers (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="behaviors per chain")
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 2000)
    build_movebuf()
    import movebuf

    print_header(
        "bocpy move benchmark",
        args.quick,
        f"chains of {steps} behaviors on one cown, {args.workers} workers",
    )
    bocpy.start(worker_count=args.workers)
    big = 8 * 1024 * 1024
    cases: list[tuple[str, str, Any, bool]] = [
        ("a", "Matrix 3x4, 96 bytes (moved)", lambda: Matrix.ones((3, 4)), False),
        ("b", "Matrix 1024x1024, 8 MB (moved)", lambda: Matrix.ones((1024, 1024)), False),
        ("c", "Buffer, 100 bytes (moved)", lambda: movebuf.Buffer(100), False),
        ("d", "Buffer, 8 MB (moved)", lambda: movebuf.Buffer(big), False),
        ("e", "bytearray, 8 MB (pickled copy)", lambda: bytearray(big), False),
        ("f", "Matrix 3x4 (moved), hopping", lambda: Matrix.ones((3, 4)), True),
        ("g", "Matrix 8 MB (moved), hopping", lambda: Matrix.ones((1024, 1024)), True),
        ("h", "Buffer, 100 bytes (moved), hopping", lambda: movebuf.Buffer(100), True),
        ("i", "Buffer, 8 MB (moved), hopping", lambda: movebuf.Buffer(big), True),
        ("j", "bytearray, 8 MB (copy), hopping", lambda: bytearray(big), True),
    ]
    run_chain(movebuf.Buffer(100), 50, True)  # warm up: workers import movebuf
    table = Table(label=36, rule=88, digits=4)
    per_step: dict[str, float] = {}
    for key, label, make, hop in cases:
        times: list[float] = []
        crossed = 0
        for _ in range(args.repeats):
            elapsed, crossed_now = run_chain(make(), steps, hop)
            times.append(elapsed)
            crossed = max(crossed, crossed_now)
        sample = Sample(times)
        per_step[key] = sample.median / steps
        table.row(
            key,
            label,
            sample,
            f"{per_step[key] * 1e6:8.1f} us/step, crossed {crossed}/{steps - 1}",
        )
    wait()
    print()
    print(
        f"Matrix 8 MB / 96 B per-step cost: {per_step['b'] / per_step['a']:.2f}x (b/a), "
        f"{per_step['g'] / per_step['f']:.2f}x hopping (g/f); target <= 1.2x"
    )
    print(
        f"Buffer 8 MB / 100 B per-step cost: {per_step['d'] / per_step['c']:.2f}x (d/c), "
        f"{per_step['i'] / per_step['h']:.2f}x hopping (i/h); target <= 1.2x"
    )
    print(
        f"pickled 8 MB / moved 8 MB Matrix: {per_step['e'] / per_step['b']:.1f}x (e/b), "
        f"{per_step['j'] / per_step['g']:.1f}x hopping (j/g)"
    )


if __name__ == "__main__":
    main()
