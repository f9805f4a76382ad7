"""Measure bocpy against the reference, threading and processes; draw the figures.

The documentation's benchmark page shows PNG figures drawn from JSON data,
both committed under ``docs/benchmarks/`` so that building the docs needs
neither the reference implementation nor minutes of measuring:

    python benchmarks/plots.py --reference-python /path/to/ref/bin/python
        measure (``_plot_workloads.py`` under our bocpy, with the threading
        and process baselines, then under the reference's interpreter), write
        ``results.json``, and draw every figure
    python benchmarks/plots.py --draw-only
        redraw the figures from the committed JSON (``make plots``)

The reference is only ever *run*, in a subprocess of the interpreter you
name; this script never installs or builds it.  Without
``--reference-python`` the reference's figures are left out.  The executor
figure is drawn from ``executor.json``, written by
``benchmarks/bench_executor.py --json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
WORKLOADS = Path(__file__).resolve().parent / "_plot_workloads.py"

#: One colour per contender, the same in every figure.
COLOURS = {
    "bocpy": "#1f77b4",
    "reference": "#ff7f0e",
    "threading": "#7f7f7f",
    "processes": "#2ca02c",
    "interpreters": "#9467bd",
}


def run_workloads(python: str, env: dict[str, str], extra: list[str]) -> dict[str, Any]:
    """Run the workload script under ``python``; return its JSON line."""
    completed = subprocess.run(
        [python, str(WORKLOADS), *extra],
        env=env,
        cwd=OUT,  # not the source tree: the reference must not see src/
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(
            f"{python} {WORKLOADS.name} failed with status {completed.returncode}:\n"
            f"{completed.stderr}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def measure(reference: str | None, max_workers: int, repeats: int, quick: bool) -> dict[str, Any]:
    extra = ["--max-workers", str(max_workers), "--repeats", str(repeats)]
    if quick:
        extra.append("--quick")
    ours_env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    print("measuring bocpy, threading and processes ...", flush=True)
    data: dict[str, Any] = {
        "bocpy": run_workloads(sys.executable, ours_env, [*extra, "--baselines"])
    }
    data["threading"] = data["bocpy"].pop("threading")
    data["processes"] = data["bocpy"].pop("processes")
    if reference is not None:
        print(f"measuring the reference with {reference} ...", flush=True)
        reference_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        data["reference"] = run_workloads(reference, reference_env, extra)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    data["meta"] = {
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
        "load_average_after": load,
        "quick": quick,
        "repeats": repeats,
    }
    return data


def draw(data: dict[str, Any], executor: dict[str, Any] | None) -> list[Path]:
    """Draw every figure into ``docs/benchmarks``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = data.get("meta", {})
    load = meta.get("load_average_after")
    note = (
        f"{meta.get('machine', '?')}, Python {meta.get('python', '?')}, "
        f"median of {meta.get('repeats', '?')}, "
        f"load average {'?' if load is None else f'{load:.1f}'} after the run"
    )
    contenders = [name for name in ("bocpy", "reference", "threading", "processes") if name in data]
    written: list[Path] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(title, fontsize=12)
        fig.text(0.99, 0.01, note, ha="right", va="bottom", fontsize=7, color="#555555")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = OUT / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    def bars(ax: Any, labels: list[str], values: list[float], fmt: str) -> None:
        drawn = ax.bar(labels, values, color=[COLOURS[label] for label in labels])
        ax.bar_label(drawn, labels=[fmt.format(v) for v in values], fontsize=8)
        ax.set_ylim(0, max(values) * 1.18)

    # Chains: the cost of one dependent step.
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bars(ax, contenders, [data[name]["chain_us"] for name in contenders], "{:.1f} µs")
    ax.set_ylabel("µs per dependent step (lower is better)")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.3, top=max(data[name]["chain_us"] for name in contenders) * 4)
    save(fig, "chain.png", "Chains: each step waits for the previous one (1 worker)")

    # Fan-out: independent tiny tasks per second, by worker count.
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    counts = sorted({int(w) for name in contenders for w in data[name]["fan_out_per_s"]})
    width = 0.8 / len(contenders)
    for i, name in enumerate(contenders):
        rates = data[name]["fan_out_per_s"]
        xs = [c + (i - (len(contenders) - 1) / 2) * width for c in counts]
        ax.bar(
            xs,
            [rates.get(str(c), 0) / 1000 for c in counts],
            width,
            label=name,
            color=COLOURS[name],
        )
    ax.set_xticks(counts, [f"{c} worker{'s' if c > 1 else ''}" for c in counts])
    ax.set_ylabel("thousand tasks per second (higher is better)")
    ax.legend(fontsize=8)
    save(fig, "fan_out.png", "Fan-out: tiny independent tasks from the main thread")

    # CPU-bound speedup over the same work on one thread.
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name in contenders:
        speedups = data[name]["cpu_speedup"]
        ws = sorted(int(w) for w in speedups)
        ax.plot(ws, [speedups[str(w)] for w in ws], marker="o", label=name, color=COLOURS[name])
    ws = sorted({int(w) for name in contenders for w in data[name]["cpu_speedup"]})
    ax.plot(ws, ws, linestyle=":", color="black", label="ideal")
    ax.set_xticks(ws)
    ax.set_xlabel("workers")
    ax.set_ylabel("speedup over one thread (higher is better)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    save(fig, "cpu_speedup.png", "CPU-bound pure Python: speedup by worker count")

    # Pump rate: pinned behaviors run on the main thread per second.
    pumpers = [name for name in ("bocpy", "reference") if name in data]
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    bars(ax, pumpers, [data[name]["pump_per_s"] / 1e6 for name in pumpers], "{:.2f} M/s")
    ax.set_ylabel("million pinned behaviors per second")
    save(fig, "pump.png", "pump(): pinned behaviors drained on the main thread")

    if executor is not None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        for ax, key, unit, title in (
            (axes[0], "tiny_per_s", 1000, "tiny tasks: thousand per second"),
            (axes[1], "cpu_speedup", 1, "CPU-bound: speedup over one thread"),
        ):
            rows = executor["results"]
            labels = list(rows)
            values = [rows[label][key] / unit for label in labels]
            drawn = ax.barh(labels, values, color="#1f77b4")
            ax.bar_label(drawn, labels=[f"{v:.1f}" for v in values], fontsize=8)
            ax.set_title(title, fontsize=10)
            ax.invert_yaxis()
            ax.set_xlim(0, max(values) * 1.2)
        emeta = executor.get("meta", {})
        note = f"{emeta.get('workers', '?')} workers; " + note
        save(fig, "executor.png", "BocExecutor vs the standard executors")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--draw-only", action="store_true", help="redraw from the committed JSON")
    parser.add_argument(
        "--reference-python", metavar="PATH", help="an interpreter that imports the reference bocpy"
    )
    parser.add_argument(
        "--max-workers", type=int, default=2, help="largest worker count (default 2)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    results = OUT / "results.json"
    if args.draw_only:
        if not results.exists():
            raise SystemExit(f"{results} does not exist: run without --draw-only to measure")
        data = json.loads(results.read_text())
    else:
        data = measure(args.reference_python, args.max_workers, args.repeats, args.quick)
        results.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {results}")
    executor_path = OUT / "executor.json"
    executor = json.loads(executor_path.read_text()) if executor_path.exists() else None
    for path in draw(data, executor):
        print(f"drew {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
