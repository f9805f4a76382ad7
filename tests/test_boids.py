"""The boids example: the physics step by hand, and whole runs headless.

The subprocess tests run ``python -m bocpy.examples.boids --headless`` with
small sizes in both dispatch modes and check the exit status and the
summary line; for the same seed both modes must draw the same frames.  The
in-process tests check :func:`step_cell` against small cases computed by
hand, the checks the example makes at the end of a run, and
:func:`run_headless` itself.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bocpy import Matrix, quiesce, when
from bocpy.examples.boids import (
    CellResult,
    Config,
    FrameBuffer,
    Physics,
    Simulation,
    finish,
    run_headless,
    step_cell,
)

#: The package sources, put first on the subprocesses' ``PYTHONPATH``.
SRC = Path(__file__).resolve().parents[1] / "src"
#: Seconds one run of the example may take.
TIMEOUT = 120
#: Small sizes for the subprocess runs.
SMALL = ["--boids", "60", "--cells", "4", "--workers", "2", "--frames", "12", "--seed", "7"]
#: The summary line of a successful small run; group 1 is the mean frame time.
SUMMARY = (
    r"boids: 12 frames drawn, 60 boids, mean frame time (\d+\.\d+) ms "
    r"\(headless, {mode} dispatch, 4x4 cells, 2 worker\(s\)\)"
)


def run_example(*args: str, drop_display: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the example in a fresh interpreter with ``src/`` on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    if drop_display:
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
    return subprocess.run(
        [sys.executable, "-m", "bocpy.examples.boids", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def checksum(stdout: str) -> str:
    """The frame checksum the example printed."""
    match = re.search(r"checksum ([0-9a-f]{8})", stdout)
    assert match, stdout
    return match.group(1)


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """One small headless run of the example per dispatch mode."""
    return {
        mode: run_example("--headless", "--dispatch", mode, *SMALL)
        for mode in ("coarse", "per-item")
    }


# ----------------------------------------------------------- the example, run


@pytest.mark.parametrize("mode", ["coarse", "per-item"])
def test_headless_run_passes(runs: dict[str, subprocess.CompletedProcess[str]], mode: str) -> None:
    proc = runs[mode]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(SUMMARY.format(mode=mode), proc.stdout)
    assert match, proc.stdout
    assert float(match.group(1)) > 0
    assert "check passed" in proc.stdout
    assert "CHECK FAILED" not in proc.stdout
    pinned_per_frame = re.search(r"(\d+\.\d) pinned behaviors per frame", proc.stdout)
    assert pinned_per_frame, proc.stdout
    if mode == "coarse":
        assert pinned_per_frame.group(1) == "1.0"
    else:
        assert float(pinned_per_frame.group(1)) > 1.0


def test_dispatch_modes_draw_the_same_frames(
    runs: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    assert checksum(runs["coarse"].stdout) == checksum(runs["per-item"].stdout)


def test_falls_back_to_headless_without_a_display() -> None:
    proc = run_example(*SMALL, drop_display=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "running headless" in proc.stdout
    assert re.search(SUMMARY.format(mode="coarse"), proc.stdout), proc.stdout


def test_rejects_bad_sizes() -> None:
    proc = run_example("--headless", "--boids", "0")
    assert proc.returncode == 2
    assert "at least 1 boid" in proc.stderr


# ------------------------------------------------------------ physics by hand

#: width, height, visual, protected, cohesion, alignment, separation, min, max, dt
PLAIN = Physics(
    width=100.0,
    height=100.0,
    visual_range=15.0,
    protected_range=2.0,
    cohesion=0.0,
    alignment=0.0,
    separation=0.0,
    min_speed=0.0,
    max_speed=100.0,
    dt=1.0,
)


def params(**changes: float) -> tuple[float, ...]:
    """``PLAIN`` with some fields changed, as the tuple a worker receives."""
    return replace(PLAIN, **changes).as_tuple()


def boids(*values: float) -> Matrix | None:
    """Boids as ``step_cell`` takes them: an n x 4 Matrix of x, y, vx, vy (``None``: none)."""
    return Matrix(len(values) // 4, 4, list(values)) if values else None


def cell(own: list[float], others: list[float], physics: tuple[float, ...]) -> list[float]:
    """``step_cell`` on flat lists; the new state, flattened row by row."""
    own_boids = boids(*own)
    assert own_boids is not None
    out = step_cell(own_boids, boids(*others), physics)
    assert out.shape == (own_boids.rows, 4)
    return [value for row in memoryview(out).tolist() for value in row]


def test_alignment_steers_towards_the_neighbours_velocity() -> None:
    # A at (10, 10) moving (1, 0) sees B, 10 to its right, moving (0, 1).
    # v += (mean neighbour velocity - v) * 0.5 = (1, 0) + (-0.5, 0.5).
    out = cell([10, 10, 1, 0], [20, 10, 0, 1], params(alignment=0.5))
    assert out == [10.5, 10.5, 0.5, 0.5]


def test_cohesion_pulls_towards_the_neighbours_position() -> None:
    # B is 10 to the right: v += 10 * 0.1 = (1, 0), so v = (2, 0) and x moves by 2.
    out = cell([10, 10, 1, 0], [20, 10, 0, 1], params(cohesion=0.1))
    assert out == [12.0, 10.0, 2.0, 0.0]


def test_separation_pushes_away_from_close_boids() -> None:
    # B is 1 to the right, inside the protected range: v -= 1 * 0.5.  A boid
    # that close is avoided, not followed: cohesion and alignment ignore it.
    out = cell([10, 10, 1, 0], [11, 10, 0, 1], params(separation=0.5, cohesion=0.1, alignment=0.5))
    assert out == [10.5, 10.0, 0.5, 0.0]


def test_boids_out_of_sight_are_ignored() -> None:
    out = cell([10, 10, 1, 0], [40, 10, 0, 1], params(cohesion=0.1, alignment=0.5))
    assert out == [11.0, 10.0, 1.0, 0.0]


def test_neighbours_are_seen_across_the_wrapping_edge() -> None:
    # A at x=99 and B at x=1 are 2 apart through the edge: cohesion adds
    # 2 * 0.5 = 1 to vx, and A's new x, 99 + 3 = 102, wraps to 2.
    out = cell([99, 50, 2, 0], [1, 50, 0, 0], params(cohesion=0.5))
    assert out == [2.0, 50.0, 3.0, 0.0]


def test_speed_is_clamped() -> None:
    fast = cell([50, 50, 3, 4], [], params(max_speed=2.0))
    assert fast == pytest.approx([51.2, 51.6, 1.2, 1.6])
    slow = cell([50, 50, 0.3, 0.4], [], params(min_speed=1.0))
    assert slow == pytest.approx([50.6, 50.8, 0.6, 0.8])
    still = cell([50, 50, 0, 0], [], params(min_speed=1.0))
    assert still == [51.0, 50.0, 1.0, 0.0]


def test_a_boid_does_not_see_itself_and_cell_mates_see_each_other() -> None:
    # Two boids in the same cell, 10 apart, moving towards each other's
    # velocity by alignment: each sees only the other.
    out = cell([10, 10, 1, 0, 20, 10, 0, 1], [], params(alignment=0.5))
    assert out == [10.5, 10.5, 0.5, 0.5, 20.5, 10.5, 0.5, 0.5]


def test_inputs_are_not_modified() -> None:
    own = Matrix(1, 4, [10, 10, 1, 0])
    others = Matrix(1, 4, [20, 10, 0, 1])
    step_cell(own, others, params(alignment=0.5, cohesion=0.1))
    assert repr(own) == "Matrix(1, 4, [10, 10, 1, 0])"
    assert repr(others) == "Matrix(1, 4, [20, 10, 0, 1])"


def test_a_boid_does_not_see_itself_without_a_protected_range() -> None:
    # With no protected range, a boid's own offset (0, 0) would count as a
    # visible neighbour; it must not.
    out = cell([10, 10, 1, 0], [20, 10, 0, 1], params(protected_range=0.0, alignment=0.5))
    assert out == [10.5, 10.5, 0.5, 0.5]


def test_matches_the_scalar_rules_on_a_random_crowd() -> None:
    # The Matrix version against a plain-Python transcription of the rules.
    import random

    rng = random.Random(5)
    values = [rng.uniform(0, 100) if k % 4 < 2 else rng.uniform(-3, 3) for k in range(4 * 30)]
    physics = params(
        cohesion=0.01,
        alignment=0.1,
        separation=0.2,
        protected_range=4.0,
        min_speed=1.0,
        max_speed=3.0,
    )
    got = cell(values[:40], values[40:], physics)
    assert got == pytest.approx(scalar_rules(values, 10, physics), rel=1e-12, abs=1e-12)


def scalar_rules(flat: list[float], count: int, physics: tuple[float, ...]) -> list[float]:
    """The flocking rules, one boid and one neighbour at a time (the first ``count`` move)."""
    width, height, visual, protected, coh, ali, sep, vmin, vmax, dt = physics
    rows = [flat[k : k + 4] for k in range(0, len(flat), 4)]
    out: list[float] = []
    for i in range(count):
        x, y, vx, vy = rows[i]
        close_x = close_y = sum_dx = sum_dy = sum_vx = sum_vy = 0.0
        seen = 0
        for j, (ox, oy, ovx, ovy) in enumerate(rows):
            if j == i:
                continue
            dx = (ox - x + width / 2) % width - width / 2
            dy = (oy - y + height / 2) % height - height / 2
            if dx * dx + dy * dy < protected * protected:
                close_x, close_y = close_x - dx, close_y - dy
            elif dx * dx + dy * dy < visual * visual:
                sum_dx, sum_dy, sum_vx, sum_vy = (
                    sum_dx + dx,
                    sum_dy + dy,
                    sum_vx + ovx,
                    sum_vy + ovy,
                )
                seen += 1
        if seen:
            vx += (sum_dx / seen) * coh + (sum_vx / seen - vx) * ali
            vy += (sum_dy / seen) * coh + (sum_vy / seen - vy) * ali
        vx, vy = vx + close_x * sep, vy + close_y * sep
        speed = math.hypot(vx, vy)
        if speed > vmax:
            vx, vy = vx * vmax / speed, vy * vmax / speed
        elif speed < vmin:
            vx, vy = (vx * vmin / speed, vy * vmin / speed) if speed else (vmin, 0.0)
        out += [(x + vx * dt) % width, (y + vy * dt) % height, vx, vy]
    return out


# ------------------------------------------------------- the example's checks


def test_frame_buffer_skips_and_the_checks_report_lost_boids() -> None:
    sim = Simulation(Config(boids=5, cells=2))
    sim.positions[0, 0] = math.nan
    sim.positions[1, 1] = 900.0  # y beyond the world
    buffer = FrameBuffer(sim.physics)
    assert buffer.draw(sim.world) == 3
    result = finish(sim, buffer.log, 1, [0.001], 0, "headless", [])
    assert not result.ok
    assert any("fewer than 5 boids" in failure for failure in result.failures)


def test_the_checks_report_missing_frames() -> None:
    sim = Simulation(Config(boids=5, cells=2))
    buffer = FrameBuffer(sim.physics)
    buffer.draw(sim.world)
    result = finish(sim, buffer.log, 3, [0.001], 0, "headless", [])
    assert any("1 of 3 frames drawn" in failure for failure in result.failures)


@pytest.mark.parametrize("mode", ["coarse", "per-item"])
def test_run_headless_in_process(mode: str) -> None:
    config = Config(boids=40, cells=3, workers=2, frames=5, dispatch=mode, seed=3)
    result = run_headless(config)
    assert result.ok, result.failures
    assert (result.frames, result.boids) == (5, 40)
    if mode == "coarse":
        assert result.pinned == 5
    else:
        assert result.pinned == result.cells > 5


def test_write_back_records_a_failed_cell() -> None:
    @when()
    def broken() -> CellResult:
        raise ValueError("cell physics failed")

    quiesce()
    sim = Simulation(Config(boids=5, cells=2))
    with broken:
        sim.world.store(broken)
    sim.world.finish_frame()
    assert sim.world.errors == [repr(ValueError("cell physics failed"))]
    assert sim.world.incomplete_frames == 1
    buffer = FrameBuffer(sim.physics)
    buffer.draw(sim.world)
    result = finish(sim, buffer.log, 1, [0.001], 0, "headless", [])
    assert any("1 cell(s) failed" in failure for failure in result.failures)
    assert any("missed some boids" in failure for failure in result.failures)
