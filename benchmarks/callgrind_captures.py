"""Instructions per chain step with captures, counted by callgrind.

The chain steps of ``bench_round2.py`` (section 1) -- no captures, four
defaults, one and four closure variables, a launcher defined inside a
function -- each run under ``valgrind --tool=callgrind`` twice, with chains of
``--steps`` and three times as many steps; the difference of the two
program totals over the difference of steps is the cost of one step, with
start-up and shutdown taken out.  Instruction counts do not move with the
machine's load, unlike the timings of ``bench_round2.py``.

Each launcher is counted twice: with bocpy (16 chains on 1 worker), and as
"plain" Python, its source run again with bocpy taken out (bench_round2's
``plain_launchers``: the bodies queued and called in turn in one thread).
Plain is the Python code's own work, which a user pays with or without a
runtime: making closure cells, a defaults tuple, the function.  So three
ratios to no captures are printed: the whole step, plain, and bocpy's own
(the step minus plain).

    PYTHONPATH=src python benchmarks/callgrind_captures.py
    PYTHONPATH=src python benchmarks/callgrind_captures.py --steps 100 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import shutil
import subprocess
import sys
import tempfile

from _common import print_header

VARIANTS = ["0 captures", "4 captures", "1 closure vars", "4 closure vars", "local launcher"]


def child(variant: str, mode: str, steps: int) -> None:
    """Runs one variant's chains (inside valgrind)."""
    import bench_round2 as r2

    launchers = r2.CHAIN_LAUNCHERS + [launch for _, launch in r2.CLOSURE_LAUNCHERS]
    labels = [f"{k} captures" for k in range(len(r2.CHAIN_LAUNCHERS))]
    labels += [label for label, _ in r2.CLOSURE_LAUNCHERS]
    k = labels.index(variant)
    if mode == "plain":
        r2.time_plain_chains(r2.plain_launchers()[k], steps)
    else:
        r2.time_chains(launchers[k], steps)


def instructions(variant: str, mode: str, steps: int, workdir: str) -> int:
    """The program's total instructions for one run under callgrind."""
    out = os.path.join(workdir, f"cg.{VARIANTS.index(variant)}.{mode}.{steps}")
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        variant,
        mode,
        str(steps),
    ]
    # A fixed hash seed: str hashes decide dict probe counts, which would
    # otherwise move the totals a little between runs.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{run.stderr[-2000:]}")
    with open(out) as f:
        for line in f:
            found = re.match(r"(?:summary|totals): (\d+)", line)
            if found:
                return int(found.group(1))
    raise RuntimeError(f"no instruction total in {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per chain (and 3x that)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="valgrinds at once")
    parser.add_argument(
        "--child", nargs=3, metavar=("VARIANT", "MODE", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: nothing to count (apt-get install valgrind)")
        return 1
    if args.steps < 1 or args.jobs < 1:
        parser.error("--steps and --jobs must be at least 1")
    import bench_round2 as r2

    print_header("bocpy captures, instructions per step (callgrind)", False, "")
    chains = r2.CHAINS
    sizes = (args.steps, 3 * args.steps)
    runs = [(v, mode, n) for v in VARIANTS for mode in ("bocpy", "plain") for n in sizes]
    with tempfile.TemporaryDirectory() as workdir, cf.ThreadPoolExecutor(args.jobs) as pool:
        totals = dict(
            zip(runs, pool.map(lambda run: instructions(*run, workdir), runs), strict=True)
        )
    per_step = {
        (v, mode): (totals[v, mode, sizes[1]] - totals[v, mode, sizes[0]])
        / (chains * (sizes[1] - sizes[0]))
        for v in VARIANTS
        for mode in ("bocpy", "plain")
    }
    print(f"{chains} chains of {sizes[0]} and {sizes[1]} steps; instructions per step")
    print(
        f"   {'':>16}  {'step':>7} {'ratio':>6}  {'plain':>7} {'ratio':>6}  "
        f"{'bocpy own':>9} {'ratio':>6}"
    )
    base_step, base_plain = per_step[VARIANTS[0], "bocpy"], per_step[VARIANTS[0], "plain"]
    for v in VARIANTS:
        step, plain = per_step[v, "bocpy"], per_step[v, "plain"]
        own = step - plain
        print(
            f"   {v:>16}  {step:7,.0f} x{step / base_step:5.2f}  {plain:7,.0f} "
            f"x{plain / base_plain:5.2f}  {own:9,.0f} x{own / (base_step - base_plain):5.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
