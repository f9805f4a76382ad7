"""The nbody example: accelerations by hand, and whole runs checked against NumPy.

The subprocess tests run ``python -m bocpy.examples.nbody --check`` with
small sizes, as a user would; the example compares its behaviors' result
with a sequential NumPy run and exits 1 when they differ.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bocpy import Matrix
from bocpy.examples.nbody import (
    Group,
    Params,
    accelerations,
    advance,
    check,
    initial_state,
    numpy_run,
    total_energy,
)

SRC = Path(__file__).resolve().parents[1] / "src"
TIMEOUT = 120


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the example in a fresh interpreter with ``src/`` on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    return subprocess.run(
        [sys.executable, "-m", "bocpy.examples.nbody", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_two_bodies_pull_each_other_by_hand() -> None:
    pos = Matrix(2, 3, [0.0, 0.0, 0.0, 3.0, 4.0, 0.0])
    mass = Matrix(2, 1, [2.0, 1.0])
    eps = 0.5
    acc = accelerations(pos, pos, mass, eps)
    # |r| = 5: a_0 = m_1 * (3, 4, 0) / (25 + 0.25) ** 1.5, a_1 = m_0 * -(3, 4, 0) / ...
    scale = 1.0 / (25.25**1.5)
    want = [3 * scale, 4 * scale, 0.0, -6 * scale, -8 * scale, 0.0]
    assert [acc[i, j] for i in range(2) for j in range(3)] == pytest.approx(want, rel=1e-15)
    # Momentum is conserved: m_0 a_0 + m_1 a_1 = 0.
    momentum = (acc * mass).sum(axis=0)
    assert momentum.magnitude() == pytest.approx(0.0, abs=1e-18)


def test_advance_is_semi_implicit_euler() -> None:
    pos = Matrix(2, 3, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    vel = Matrix(2, 3, [0.0, 1.0, 0.0, 0.0, -1.0, 0.0])
    mass = Matrix(2, 1, [1.0, 1.0])
    params = Params(steps=1, dt=0.1, softening=0.0 + 1e-3)
    group = Group(first=0, pos=pos.copy(), vel=vel.copy(), mass=mass)
    advance(group, pos, params)
    acc = accelerations(pos, pos, mass, params.softening)
    want_vel = vel + acc * params.dt
    want_pos = pos + want_vel * params.dt
    assert Matrix.allclose(group.vel, want_vel, rtol=0, atol=0)
    assert Matrix.allclose(group.pos, want_pos, rtol=0, atol=0)


def test_total_energy_of_two_bodies() -> None:
    pos = Matrix(2, 3, [0.0, 0.0, 0.0, 0.0, 2.0, 0.0])
    vel = Matrix(2, 3, [1.0, 0.0, 0.0, 0.0, 0.0, 3.0])
    mass = Matrix(2, 1, [2.0, 1.0])
    energy = total_energy(pos, vel, mass, 0.0)
    assert energy == pytest.approx(0.5 * 2 * 1 + 0.5 * 1 * 9 - 2 * 1 / 2.0, rel=1e-15)


@pytest.mark.parametrize(
    "args",
    [
        ["--bodies", "120", "--groups", "5", "--steps", "8", "--workers", "2"],
        ["--bodies", "7", "--groups", "7", "--steps", "3", "--workers", "1"],
    ],
)
def test_check_against_numpy_passes(args: list[str]) -> None:
    pytest.importorskip("numpy")
    proc = run_example(*args, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    bodies, groups, steps = args[1], args[3], args[5]
    assert lines[0].startswith(f"nbody: {bodies} bodies in {groups} groups, {steps} steps")
    drift = float(lines[2].rsplit("relative drift ", 1)[1].rstrip(")"))
    assert math.isfinite(drift) and drift < 1e-3, lines[2]
    assert lines[3].startswith("  check passed: matches the sequential NumPy run"), proc.stdout


def test_check_fails_on_a_state_that_drifted(capsys: pytest.CaptureFixture[str]) -> None:
    numpy = pytest.importorskip("numpy")
    params = Params(steps=3, dt=1e-3, softening=0.05)
    initial = initial_state(30, seed=3)
    pos0, vel0, mass0 = (numpy.array(m) for m in initial)
    want_pos, want_vel = numpy_run(pos0, vel0, mass0, params)
    pos, vel = Matrix.from_buffer(want_pos), Matrix.from_buffer(want_vel)
    assert check(initial, pos, vel, params, 1e-9)
    pos[4, 1] += 1e-6
    assert not check(initial, pos, vel, params, 1e-9)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("  check passed: matches the sequential NumPy run")
    assert out[1].startswith("  CHECK FAILED: differs from the sequential NumPy run by")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bodies", "0"], "--bodies must be at least 1 (got 0)"),
        (["--bodies", "4", "--groups", "5"], "--groups must be between 1 and --bodies (4), got 5"),
        (["--dt", "-1"], "--dt must be a positive number (got -1.0)"),
        (["--softening", "nan"], "--softening must be a positive number (got nan)"),
    ],
)
def test_bad_arguments_are_named(args: list[str], message: str) -> None:
    proc = run_example(*args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_help() -> None:
    proc = run_example("--help")
    assert proc.returncode == 0
    assert "--check" in proc.stdout and "--tolerance" in proc.stdout
