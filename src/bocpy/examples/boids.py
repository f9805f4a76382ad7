"""Boids: parallel flocking physics with one pinned write-back per frame.

A flock of boids (Craig Reynolds' "bird-oids") flies around a square world
that wraps at the edges (a torus).  Each boid steers by three rules applied
to the boids it can see: *separation* (move away from boids that are too
close), *alignment* (match the average heading of its neighbours) and
*cohesion* (move towards their average position).

The global state -- one position and one velocity per boid, two N x 2
:class:`~bocpy.Matrix` objects -- lives on the main thread: the
:class:`Simulation` keeps them as ``positions`` and ``velocities`` (what the
renderer draws: a pyglet window, or an in-memory frame buffer when
headless) and wraps the same matrices in pinned cowns, ``positions_cown``
and ``velocities_cown``, so they never leave the main interpreter; a third
pinned cown holds the :class:`World`, the write-backs' bookkeeping.  Each
frame follows the *coarse-grained dispatch pattern* of the pinned-cowns
guide:

1. The main thread sorts the boids into the cells of a grid.  For each
   non-empty cell it schedules one worker behavior, capturing a snapshot of
   the cell's boids and of the boids in the neighbouring cells (everything a
   boid can see) as Matrix values.  The workers compute the cells' physics
   in parallel with Matrix arithmetic, each in its own sub-interpreter, and
   *return* the new state of the cell's boids: every behavior's result cown
   holds ``(indices, state)``, ``state`` an n x 4 Matrix.
2. One pinned behavior, ``@when(*results, positions, velocities, world)``,
   runs on the main thread once every cell of the frame is done and writes
   all of the results back into the global matrices.  That is one pinned
   dispatch per frame, however many cells there are.

With ``--dispatch per-item`` the example instead schedules one pinned
write-back per cell (``@when(result, positions, velocities, world)``): the
same result, but the
main thread's pump queue then carries one behavior per cell per frame.  The
pinned benchmark (``benchmarks/bench_pinned.py``) compares the two.

Every cell of a frame is computed from the same snapshot, so the outcome
does not depend on the number of workers, on the dispatch mode or on the
order in which the cells run: for a given ``--seed`` the final checksum is
always the same.

With pyglet installed and a display available, the example opens a window
and drives the frames from ``pyglet.clock.schedule_interval``, calling
:func:`~bocpy.pump` at the top of every tick.  Otherwise (or with
``--headless``) it runs ``--frames`` frames without a window: each frame is
scheduled, the main thread pumps until the frame's write-back has run
(sleeping in ``select`` on :func:`~bocpy.wake_fd` in between), and the frame
is then drawn into an in-memory frame buffer.

The checks, after the last frame (the example exits with status 1 if one
fails): every frame was written back and drawn, each with every boid in it;
every position stayed finite and inside the world; the flock moved between
the first and the last frame; and the first frame matches the same physics
computed sequentially on the main thread.

Run it with ``python -m bocpy.examples.boids [--boids N] [--cells C]
[--workers N] [--frames N] [--headless] [--dispatch {coarse,per-item}]
[--seed S]``.
"""

from __future__ import annotations

import importlib
import math
import os
import random
import select
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from bocpy import WORKER_COUNT, Cown, Matrix, PinnedCown, pump, start, wait, wake_fd, when
from bocpy.examples._common import add_workers, example_parser

#: Side of the square world, in world units (also the window size in pixels).
WORLD_SIZE = 800.0
#: Side of the headless frame buffer, in pixels.
FRAME_BUFFER_SIZE = 200
#: How long the main thread waits for one frame before giving up, in seconds.
FRAME_TIMEOUT = 60.0
#: One cell's result: the global indices of its boids and their new state (n x 4).
type CellResult = tuple[list[int], Matrix]


@dataclass(frozen=True)
class Physics:
    """The flocking rules' parameters (distances in world units, speeds per frame)."""

    width: float = WORLD_SIZE
    height: float = WORLD_SIZE
    visual_range: float = 40.0  # a boid sees the boids closer than this ...
    protected_range: float = 8.0  # ... and avoids the ones closer than this
    cohesion: float = 0.0005  # pull towards the neighbours' mean position
    alignment: float = 0.05  # pull towards the neighbours' mean velocity
    separation: float = 0.05  # push away from boids inside the protected range
    min_speed: float = 3.0
    max_speed: float = 6.0
    dt: float = 1.0  # time step, in frames

    def as_tuple(self) -> tuple[float, ...]:
        """The parameters as a plain tuple, in field order, for a worker to unpack."""
        return (
            self.width,
            self.height,
            self.visual_range,
            self.protected_range,
            self.cohesion,
            self.alignment,
            self.separation,
            self.min_speed,
            self.max_speed,
            self.dt,
        )


# ------------------------------------------------------------------- physics
# Everything a worker body uses is defined at module level, so that the
# worker sub-interpreters find it when they import this module.


def step_cell(own: Matrix, others: Matrix | None, params: Sequence[float]) -> Matrix:
    """Advance the boids of one cell by one time step and return their new state.

    ``own`` (n x 4) holds the cell's boids and ``others`` (m x 4, or ``None``
    when there are none) every other boid they may see, one ``x, y, vx, vy``
    row per boid.  ``params`` is :meth:`Physics.as_tuple`.  Every boid steers
    by the boids within the visual range (measured across the wrapping
    edges), excluding itself, and moves; its position wraps into
    ``[0, width) x [0, height)``.  Returns the new ``x, y, vx, vy`` of the
    boids of ``own`` (n x 4, same order).  The inputs are not modified.

    The whole cell is computed at once with Matrix arithmetic on n x (n + m)
    matrices of offsets and masks (a row per boid of the cell, a column per
    boid it may see), which runs in any interpreter.
    """
    (
        width,
        height,
        visual_range,
        protected_range,
        cohesion,
        alignment,
        separation,
        min_speed,
        max_speed,
        dt,
    ) = params
    everyone = own if others is None else Matrix.concat([own, others])
    count, total = own.rows, everyone.rows
    x, y, vx, vy = own[:, 0], own[:, 1], own[:, 2], own[:, 3]  # n x 1 each
    # Offsets from each boid of the cell (rows) to every boid (columns).
    dx = wrap_offset(everyone[:, 0].T - x, width)
    dy = wrap_offset(everyone[:, 1].T - y, height)
    distance2 = dx * dx + dy * dy
    itself = Matrix.zeros((count, total))  # a boid does not see itself
    for i in range(count):
        itself[i, i] = 1.0
    near = Matrix.where(itself, 0.0, distance2.less(protected_range * protected_range))
    # Seen: inside the visual range but not inside the protected one.
    seen = Matrix.where(itself, 0.0, distance2.less(visual_range * visual_range))
    seen = Matrix.where(near, 0.0, seen)
    zeros = Matrix.zeros((count, total))
    close_x = -Matrix.where(near, dx, 0.0).sum(axis=1)
    close_y = -Matrix.where(near, dy, 0.0).sum(axis=1)
    sum_dx = Matrix.where(seen, dx, 0.0).sum(axis=1)
    sum_dy = Matrix.where(seen, dy, 0.0).sum(axis=1)
    sum_vx = Matrix.where(seen, zeros + everyone[:, 2].T, 0.0).sum(axis=1)
    sum_vy = Matrix.where(seen, zeros + everyone[:, 3].T, 0.0).sum(axis=1)
    neighbours = seen.sum(axis=1)
    any_seen = neighbours.greater(0.0)
    neighbours = Matrix.where(any_seen, neighbours, 1.0)  # no division by zero
    vx = vx + Matrix.where(
        any_seen, (sum_dx / neighbours) * cohesion + (sum_vx / neighbours - vx) * alignment, 0.0
    )
    vy = vy + Matrix.where(
        any_seen, (sum_dy / neighbours) * cohesion + (sum_vy / neighbours - vy) * alignment, 0.0
    )
    vx += close_x * separation
    vy += close_y * separation
    speed = (vx * vx + vy * vy).sqrt()
    fast, slow, still = speed.greater(max_speed), speed.less(min_speed), speed.less_equal(0.0)
    # Too fast: scale down to max_speed; too slow: up to min_speed (a boid
    # standing still sets off along +x).  The unused branches may divide by
    # zero; `where` discards them.
    vx, vy = (
        Matrix.where(
            fast,
            vx * max_speed / speed,
            Matrix.where(slow, Matrix.where(still, min_speed, vx * min_speed / speed), vx),
        ),
        Matrix.where(
            fast,
            vy * max_speed / speed,
            Matrix.where(slow, Matrix.where(still, 0.0, vy * min_speed / speed), vy),
        ),
    )
    x = wrap_position(x + vx * dt, width)
    y = wrap_position(y + vy * dt, height)
    return Matrix.concat([x, y, vx, vy], axis=1)


def wrap_offset(d: Matrix, size: float) -> Matrix:
    """The offsets ``d`` taken the short way round a wrapping axis of length ``size``."""
    half = size / 2.0
    return Matrix.where(d.greater(half), d - size, Matrix.where(d.less(-half), d + size, d))


def wrap_position(value: Matrix, size: float) -> Matrix:
    """:func:`wrap` applied to every element of ``value`` (an n x 1 column of positions).

    A boid moves less than the world's size per step, so each position is
    at most one ``size`` outside ``[0, size)``: adding or subtracting
    ``size`` once is what Python's ``%`` does for those values, and a sum
    that rounds up to ``size`` becomes 0.  Anything further out (a speed
    limit above the world's size) goes through :func:`wrap` one by one.
    """
    low, high = value.min(), value.max()
    if not (low >= -size and high < 2.0 * size):
        return Matrix(value.rows, 1, [wrap(value[i, 0], size) for i in range(value.rows)])
    inside = Matrix.where(
        value.less(0.0), value + size, Matrix.where(value.greater_equal(size), value - size, value)
    )
    return Matrix.where(inside.greater_equal(size), 0.0, inside)


def wrap(value: float, size: float) -> float:
    """Wrap ``value`` into ``[0, size)`` (``%`` alone can round up to ``size``)."""
    value %= size
    return 0.0 if value >= size else value


def toroidal_distance(ax: float, ay: float, bx: float, by: float, physics: Physics) -> float:
    """The shortest distance between two points of the wrapping world."""
    dx = abs(ax - bx) % physics.width
    dy = abs(ay - by) % physics.height
    return math.hypot(min(dx, physics.width - dx), min(dy, physics.height - dy))


def compute_cell(
    indices: list[int], own: Matrix, others: Matrix | None, params: tuple[float, ...]
) -> Cown[CellResult]:
    """Schedule the physics of one cell on a worker; return its result cown.

    The behavior names no cown: its inputs are captured (copied when it is
    scheduled), so the cells of a frame all run in parallel.
    """

    @when()
    def cell(
        indices: list[int] = indices,
        own: Matrix = own,
        others: Matrix | None = others,
        params: tuple[float, ...] = params,
    ) -> CellResult:
        return indices, step_cell(own, others, params)

    return cell


# --------------------------------------------------------------- world state


class World:
    """The write-backs' bookkeeping; lives on the main thread inside a :class:`PinnedCown`.

    It also aliases the global matrices (the same objects as the pinned
    ``positions`` and ``velocities`` cowns hold), which only the pinned
    write-back behaviors modify, while they hold those cowns too.  The
    renderer reads them directly on the main thread between :func:`pump`
    calls, when no pinned behavior is running.
    """

    def __init__(self, positions: Matrix, velocities: Matrix) -> None:
        self.positions = positions  # N x 2: x, y
        self.velocities = velocities  # N x 2: vx, vy
        self.frames_written = 0  # frames whose write-back has completed
        self.cells_written = 0  # per-item dispatch: cells of the current frame so far
        self.boids_written = 0  # boids written back during the current frame
        self.incomplete_frames = 0  # frames whose write-back did not cover every boid
        self.errors: list[str] = []  # exceptions found in the cells' result cowns

    @property
    def count(self) -> int:
        """The number of boids."""
        return self.positions.rows

    def store(self, cell: Cown[CellResult]) -> None:
        """Copy one cell's result (a result cown held by the caller) into the matrices.

        The caller also holds the pinned cowns of the matrices.
        """
        if cell.exception:
            self.errors.append(repr(cell.value))
            return
        indices, state = cell.value
        self.positions.put(indices, state[:, 0:2], axis=0)
        self.velocities.put(indices, state[:, 2:4], axis=0)
        self.boids_written += len(indices)

    def finish_frame(self) -> None:
        """Count a completed write-back and whether it covered every boid."""
        if self.boids_written != self.count:
            self.incomplete_frames += 1
        self.boids_written = 0
        self.frames_written += 1


def write_back_frame(
    results: list[Cown[CellResult]],
    positions: PinnedCown[Matrix],
    velocities: PinnedCown[Matrix],
    world: PinnedCown[World],
) -> Cown[int]:
    """Coarse dispatch: one pinned behavior writes back every cell of the frame."""

    @when(*results, positions, velocities, world)
    def write_back(*args: Cown[Any]) -> int:
        *cells, _positions, _velocities, world = args
        for cell in cells:
            world.value.store(cell)
        world.value.finish_frame()
        frames: int = world.value.frames_written
        return frames

    return write_back


def write_back_cell(
    result: Cown[CellResult],
    positions: PinnedCown[Matrix],
    velocities: PinnedCown[Matrix],
    world: PinnedCown[World],
    cells_in_frame: int,
) -> Cown[None]:
    """Per-item dispatch: one pinned behavior writes back one cell.

    The pinned behaviors of a frame all name ``world``, so they run in the
    order they were scheduled; the last one completes the frame.
    """

    @when(result, positions, velocities, world)
    def write_back(
        cell: Cown[CellResult],
        _positions: Cown[Matrix],
        _velocities: Cown[Matrix],
        world: Cown[World],
        cells_in_frame: int = cells_in_frame,
    ) -> None:
        world.value.store(cell)
        world.value.cells_written += 1
        if world.value.cells_written == cells_in_frame:
            world.value.cells_written = 0
            world.value.finish_frame()

    return write_back


# ---------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Config:
    """What to simulate, and how."""

    boids: int = 300
    cells: int = 8  # the grid has cells x cells cells
    workers: int = WORKER_COUNT
    frames: int | None = None  # None: 200 headless, until closed in a window
    headless: bool = False
    dispatch: str = "coarse"  # or "per-item"
    seed: int = 1


class Simulation:
    """The main thread's side of the simulation: binning, scheduling, checks.

    ``self.positions`` and ``self.positions_cown.value`` are the same Matrix
    (and likewise for the velocities, and for ``self.world`` and
    ``self.world_cown``): the first is the renderer's alias, the second the
    pinned cown the write-back behaviors acquire.  A pinned cown's value
    never moves, so the alias stays valid.
    """

    def __init__(self, config: Config, physics: Physics | None = None) -> None:
        self.config = config
        self.physics = physics or Physics()
        self.params = self.physics.as_tuple()
        rng = random.Random(config.seed)
        positions: list[float] = []
        velocities: list[float] = []
        for _ in range(config.boids):
            positions.extend(
                (rng.uniform(0, self.physics.width), rng.uniform(0, self.physics.height))
            )
            angle = rng.uniform(0.0, 2.0 * math.pi)
            speed = rng.uniform(self.physics.min_speed, self.physics.max_speed)
            velocities.extend((speed * math.cos(angle), speed * math.sin(angle)))
        self.positions = Matrix(config.boids, 2, positions)
        self.velocities = Matrix(config.boids, 2, velocities)
        self.positions_cown = PinnedCown(self.positions)
        self.velocities_cown = PinnedCown(self.velocities)
        self.world = World(self.positions, self.velocities)
        self.world_cown = PinnedCown(self.world)
        self.cell_w = self.physics.width / config.cells
        self.cell_h = self.physics.height / config.cells
        self.neighbours = self._neighbour_table()
        self.frames_scheduled = 0
        self.cells_scheduled = 0

    def _neighbour_table(self) -> list[list[int]]:
        """For each cell, the other cells holding boids its boids may see."""
        n = self.config.cells
        reach_x = math.ceil(self.physics.visual_range / self.cell_w)
        reach_y = math.ceil(self.physics.visual_range / self.cell_h)
        table: list[list[int]] = []
        for row in range(n):
            for col in range(n):
                seen = {
                    ((row + dr) % n) * n + (col + dc) % n
                    for dr in range(-reach_y, reach_y + 1)
                    for dc in range(-reach_x, reach_x + 1)
                }
                seen.discard(row * n + col)
                table.append(sorted(seen))
        return table

    def cell_of(self, x: float, y: float) -> int:
        """The index of the grid cell holding the point ``(x, y)``."""
        n = self.config.cells
        col = min(int(x / self.cell_w), n - 1)
        row = min(int(y / self.cell_h), n - 1)
        return row * n + col

    def bin(self) -> tuple[list[list[int]], list[Matrix | None]]:
        """Sort the boids into cells: per cell, their indices and states (n x 4).

        A cell without boids has no state matrix (``None``).  Main thread
        only, while no pinned behavior runs.
        """
        total = self.config.cells * self.config.cells
        indices: list[list[int]] = [[] for _ in range(total)]
        for index, (x, y) in enumerate(rows_of(self.positions)):
            indices[self.cell_of(x, y)].append(index)
        both = Matrix.concat([self.positions, self.velocities], axis=1)  # N x 4
        states = [both.take(members, axis=0) if members else None for members in indices]
        return indices, states

    def neighbourhood(self, states: list[Matrix | None], cell: int) -> Matrix | None:
        """The states of every boid in the cells next to ``cell`` (``None``: no boids)."""
        found = [state for n in self.neighbours[cell] if (state := states[n]) is not None]
        return Matrix.concat(found) if found else None

    def schedule_frame(self) -> None:
        """Schedule one frame: a worker behavior per non-empty cell, then the write-back."""
        indices, states = self.bin()
        results = [
            compute_cell(members, state, self.neighbourhood(states, cell), self.params)
            for cell, (members, state) in enumerate(zip(indices, states, strict=True))
            if state is not None
        ]
        pinned = (self.positions_cown, self.velocities_cown, self.world_cown)
        if self.config.dispatch == "coarse":
            write_back_frame(results, *pinned)
        else:
            for result in results:
                write_back_cell(result, *pinned, len(results))
        self.frames_scheduled += 1
        self.cells_scheduled += len(results)

    @property
    def frame_done(self) -> bool:
        """Whether the write-back of every scheduled frame has run."""
        return self.world.frames_written >= self.frames_scheduled

    def reference_step(self) -> tuple[Matrix, Matrix]:
        """One step of the same physics, computed sequentially on this thread.

        Returns the positions and velocities the next frame must produce.
        """
        indices, states = self.bin()
        positions, velocities = self.positions.copy(), self.velocities.copy()
        for cell, (members, own) in enumerate(zip(indices, states, strict=True)):
            if own is None:
                continue
            state = step_cell(own, self.neighbourhood(states, cell), self.params)
            positions.put(members, state[:, 0:2], axis=0)
            velocities.put(members, state[:, 2:4], axis=0)
        return positions, velocities


def rows_of(m: Matrix) -> list[list[float]]:
    """The rows of ``m`` as lists of floats (main thread: through the buffer protocol)."""
    with memoryview(m) as view:
        rows: Any = view.tolist()  # typeshed types tolist() as 1-D; this view is 2-D
    return cast("list[list[float]]", rows)


def same(a: Matrix, b: Matrix) -> bool:
    """Whether two matrices hold exactly the same numbers (NaN never matches)."""
    return a.shape == b.shape and rows_of(a) == rows_of(b)


# ----------------------------------------------------------------- rendering


@dataclass
class FrameLog:
    """What was drawn: one entry per frame, and a checksum over all of them."""

    drawn: list[int] = field(default_factory=list)  # boids drawn in each frame
    checksum: int = 0  # CRC-32 chained over every frame's pixels
    first: Matrix | None = None  # positions in the first frame drawn
    last: Matrix | None = None  # positions in the last frame drawn


def in_bounds(x: float, y: float, physics: Physics) -> bool:
    """Whether ``(x, y)`` is finite and inside the world."""
    return 0.0 <= x < physics.width and 0.0 <= y < physics.height


class FrameBuffer:
    """A headless renderer: rasterises each frame into a small grey-scale image."""

    def __init__(self, physics: Physics, size: int = FRAME_BUFFER_SIZE) -> None:
        self.physics = physics
        self.size = size
        self.pixels = bytearray(size * size)
        self.log = FrameLog()

    def draw(self, world: World) -> int:
        """Draw every boid as one pixel; log and return how many were drawn.

        A boid whose position is not finite or outside the world is not
        drawn.  Main thread only, while no pinned behavior runs.
        """
        pixels, size, physics = self.pixels, self.size, self.physics
        pixels[:] = bytes(len(pixels))
        drawn = 0
        for x, y in rows_of(world.positions):
            if not in_bounds(x, y, physics):
                continue
            col = int(x * size / physics.width)
            row = int(y * size / physics.height)
            pixels[min(row, size - 1) * size + min(col, size - 1)] = 255
            drawn += 1
        record(self.log, world, drawn, pixels)
        return drawn


def record(log: FrameLog, world: World, drawn: int, image: bytes | bytearray) -> None:
    """Log one drawn frame: its boid count, its image's checksum and its positions."""
    log.drawn.append(drawn)
    log.checksum = zlib.crc32(image, log.checksum)
    if log.first is None:
        log.first = world.positions.copy()
    log.last = world.positions.copy()


class PygletView:
    """A window renderer: each boid is a triangle pointing along its velocity."""

    def __init__(self, pyglet: Any, physics: Physics) -> None:
        self.pyglet = pyglet
        self.physics = physics
        self.window = pyglet.window.Window(
            int(physics.width), int(physics.height), caption="bocpy boids"
        )
        self.batch = pyglet.graphics.Batch()
        self.shapes: list[Any] = []
        self.log = FrameLog()
        self.window.push_handlers(on_draw=self.on_draw)

    def on_draw(self) -> None:
        """Redraw the window from the shapes of the last frame."""
        self.window.clear()
        self.batch.draw()

    def draw(self, world: World) -> int:
        """Rebuild the triangles from the world's matrices; log and return the count.

        Main thread only, while no pinned behavior runs.  The shapes are
        created afresh each frame, which works the same in every pyglet 2
        release.
        """
        for shape in self.shapes:
            shape.delete()
        self.shapes = []
        triangle = self.pyglet.shapes.Triangle
        digest = array("d")
        for (x, y), (vx, vy) in zip(
            rows_of(world.positions), rows_of(world.velocities), strict=True
        ):
            if not in_bounds(x, y, self.physics):
                continue
            speed = math.hypot(vx, vy) or 1.0
            ux, uy = vx / speed, vy / speed
            tip_x, tip_y = x + 7.0 * ux, y + 7.0 * uy
            left_x, left_y = x - 3.0 * ux - 3.0 * uy, y - 3.0 * uy + 3.0 * ux
            right_x, right_y = x - 3.0 * ux + 3.0 * uy, y - 3.0 * uy - 3.0 * ux
            self.shapes.append(
                triangle(
                    tip_x, tip_y, left_x, left_y, right_x, right_y,
                    color=(120, 200, 255), batch=self.batch,
                )
            )  # fmt: skip
            digest.extend((x, y))
        record(self.log, world, len(self.shapes), digest.tobytes())
        return len(self.shapes)


# -------------------------------------------------------------------- driver


@dataclass
class RunResult:
    """The outcome of one run of the example."""

    frames: int  # frames drawn
    boids: int
    cells: int  # non-empty cells computed, over all frames
    mean_frame_ms: float  # mean wall time per frame (schedule to drawn)
    pinned: int  # pinned behaviors run by pump() in the frame loop
    checksum: int
    mode: str  # "headless" or "window"
    failures: list[str]

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not self.failures


def optional_wake_fd() -> int | None:
    """The pinned-work wake-up descriptor, or ``None`` where there is none."""
    try:
        return wake_fd()
    except (OSError, NotImplementedError, RuntimeError):
        return None


def pump_until(done: Callable[[], bool], fd: int | None, timeout: float) -> int:
    """Pump pinned behaviors until ``done()``; return how many ran.

    Between pumps the main thread sleeps in ``select`` on the wake-up
    descriptor (readable when pinned work arrives; pumping clears it), or
    polls every half-millisecond without one.  Raises ``TimeoutError``
    after ``timeout`` seconds; an exception raised by a write-back body
    propagates.
    """
    give_up = time.monotonic() + timeout
    executed = 0
    while True:
        executed += pump(raise_on_error=True).executed
        if done():
            return executed
        if time.monotonic() > give_up:
            raise TimeoutError(f"no write-back within {timeout} s")
        if fd is None:
            time.sleep(0.0005)
        else:
            select.select([fd], [], [], 0.05)


def run_headless(config: Config, physics: Physics | None = None) -> RunResult:
    """Run the simulation for ``config.frames`` frames with a frame-buffer renderer.

    Starts the runtime with ``config.workers`` workers and tears it down
    (``wait()``) at the end.  Prints nothing.
    """
    frames = 200 if config.frames is None else config.frames
    sim = Simulation(config, physics)
    renderer = FrameBuffer(sim.physics)
    expected_positions, expected_velocities = sim.reference_step()
    start(config.workers)
    fd = optional_wake_fd()
    failures: list[str] = []
    pinned = 0
    frame_times: list[float] = []
    try:
        for frame in range(frames):
            began = time.perf_counter()
            sim.schedule_frame()
            pinned += pump_until(lambda: sim.frame_done, fd, FRAME_TIMEOUT)
            renderer.draw(sim.world)
            frame_times.append(time.perf_counter() - began)
            if frame == 0 and not (
                same(sim.positions, expected_positions)
                and same(sim.velocities, expected_velocities)
            ):
                failures.append("frame 1 differs from the sequential computation")
    except TimeoutError as error:
        failures.append(str(error))
    finally:
        wait()
    return finish(sim, renderer.log, frames, frame_times, pinned, "headless", failures)


def run_window(config: Config, pyglet: Any, view: PygletView) -> RunResult:
    """Run the simulation in ``view`` until it is closed or ``config.frames`` are drawn.

    Each clock tick first pumps (draining the previous frame's write-back),
    then, if that frame's write-back has run, draws it and schedules the next.
    """
    sim = Simulation(config, view.physics)
    expected_positions, expected_velocities = sim.reference_step()
    start(config.workers)
    failures: list[str] = []
    frame_times: list[float] = []
    counts = {"pinned": 0}
    began = [time.perf_counter()]

    def update(dt: float) -> None:
        # Drain the prior frame's write-back (a failing one raises here).
        counts["pinned"] += pump(raise_on_error=True).executed
        if not sim.frame_done:
            return  # the workers are still on it: try again next tick
        if sim.frames_scheduled:
            view.draw(sim.world)
            frame_times.append(time.perf_counter() - began[0])
            if sim.frames_scheduled == 1 and not (
                same(sim.positions, expected_positions)
                and same(sim.velocities, expected_velocities)
            ):
                failures.append("frame 1 differs from the sequential computation")
            if config.frames is not None and sim.frames_scheduled >= config.frames:
                pyglet.app.exit()
                return
        began[0] = time.perf_counter()
        sim.schedule_frame()

    pyglet.clock.schedule_interval(update, 1 / 60)
    try:
        pyglet.app.run()
    finally:
        pyglet.clock.unschedule(update)
        view.window.close()
        wait()
    drawn = len(view.log.drawn)
    return finish(sim, view.log, drawn, frame_times, counts["pinned"], "window", failures)


def finish(
    sim: Simulation,
    log: FrameLog,
    frames: int,
    frame_times: list[float],
    pinned: int,
    mode: str,
    failures: list[str],
) -> RunResult:
    """Check a finished run and build its :class:`RunResult`."""
    world, physics = sim.world, sim.physics
    if world.errors:
        failures.append(f"{len(world.errors)} cell(s) failed, first: {world.errors[0]}")
    if len(log.drawn) != frames:
        failures.append(f"{len(log.drawn)} of {frames} frames drawn")
    if world.frames_written < len(log.drawn):
        failures.append(f"{world.frames_written} write-backs for {len(log.drawn)} frames")
    if world.incomplete_frames:
        failures.append(f"{world.incomplete_frames} write-back(s) missed some boids")
    short = [n for n, drawn in enumerate(log.drawn, 1) if drawn != world.count]
    if short:
        failures.append(
            f"{len(short)} frame(s) drew fewer than {world.count} boids (first: frame {short[0]}):"
            " positions left the world or became non-finite"
        )
    if log.first is not None and log.last is not None and frames > 1:
        moved = mean_displacement(log.first, log.last, physics)
        if not moved >= physics.min_speed * physics.dt / 2:
            failures.append(f"the flock did not move (mean displacement {moved:.3g})")
    return RunResult(
        frames=len(log.drawn),
        boids=world.count,
        cells=sim.cells_scheduled,
        mean_frame_ms=1000 * sum(frame_times) / len(frame_times) if frame_times else math.nan,
        pinned=pinned,
        checksum=log.checksum,
        mode=mode,
        failures=failures,
    )


def mean_displacement(first: Matrix, last: Matrix, physics: Physics) -> float:
    """Mean distance, across the wrapping edges, between two snapshots of the positions."""
    total = sum(
        toroidal_distance(ax, ay, bx, by, physics)
        for (ax, ay), (bx, by) in zip(rows_of(first), rows_of(last), strict=True)
    )
    return total / first.rows


def load_pyglet() -> tuple[Any, str]:
    """Import pyglet if a window can be opened; return it, or ``None`` and why not."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return None, "no display"
    try:
        return importlib.import_module("pyglet"), ""
    except ImportError:
        return None, "pyglet is not installed"


def window_errors(pyglet: Any) -> tuple[type[BaseException], ...]:
    """The exceptions pyglet raises when it cannot open a window (they moved between releases)."""
    errors: list[type[BaseException]] = [ImportError, OSError]
    for module, name in (
        ("window", "NoSuchDisplayException"),
        ("display", "NoSuchDisplayException"),
        ("canvas", "NoSuchDisplayException"),
        ("window", "NoSuchConfigException"),
        ("gl", "ContextException"),
    ):
        error = getattr(getattr(pyglet, module, None), name, None)
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(errors)


def report(config: Config, result: RunResult) -> None:
    """Print the summary line and the checks' outcome."""
    print(
        f"boids: {result.frames} frames drawn, {result.boids} boids, "
        f"mean frame time {result.mean_frame_ms:.2f} ms "
        f"({result.mode}, {config.dispatch} dispatch, {config.cells}x{config.cells} cells, "
        f"{config.workers} worker(s))"
    )
    per_frame = result.pinned / result.frames if result.frames else 0.0
    cells = result.cells / result.frames if result.frames else 0.0
    print(
        f"  {cells:.1f} cell behaviors and {per_frame:.1f} pinned behaviors per frame; "
        f"checksum {result.checksum:08x}"
    )
    if result.ok:
        print("  check passed: every frame drawn with every boid in bounds, and the flock moved")
    for failure in result.failures:
        print(f"  CHECK FAILED: {failure}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the example and return the exit status."""
    parser = example_parser(
        "boids", "Flocking boids: parallel cell physics, one pinned write-back per frame."
    )
    parser.add_argument("--boids", type=int, default=300, help="number of boids (default 300)")
    parser.add_argument(
        "--cells", type=int, default=8, help="cells per side of the grid (default 8: 8x8 cells)"
    )
    add_workers(parser)
    parser.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames to run (default: 200 headless, until the window is closed otherwise)",
    )
    parser.add_argument("--headless", action="store_true", help="never open a window")
    parser.add_argument(
        "--dispatch",
        choices=("coarse", "per-item"),
        default="coarse",
        help="one pinned write-back per frame (coarse, default) or per cell (per-item)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = parser.parse_args(argv)
    if args.boids < 1 or args.cells < 1 or args.workers < 1:
        parser.error("need at least 1 boid, 1 cell and 1 worker")
    if args.frames is not None and args.frames < 1:
        parser.error("need at least 1 frame")
    config = Config(
        boids=args.boids,
        cells=args.cells,
        workers=args.workers,
        frames=args.frames,
        headless=args.headless,
        dispatch=args.dispatch,
        seed=args.seed,
    )
    pyglet, why = (None, "--headless") if config.headless else load_pyglet()
    view: PygletView | None = None
    if pyglet is not None:
        try:
            view = PygletView(pyglet, Physics())
        except window_errors(pyglet) as error:
            why = f"cannot open a window ({error})"
    if view is not None:
        result = run_window(config, pyglet, view)
    else:
        if not config.headless:
            print(f"boids: running headless: {why}")
        result = run_headless(config)
    report(config, result)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
