"""Gravitational N-body simulation: Matrix arithmetic in behaviors, state that moves.

``N`` bodies attract each other by Newtonian gravity (G = 1) with Plummer
softening ``eps``: the acceleration of body ``i`` is::

    a_i = sum over j of  m_j (r_j - r_i) / (|r_j - r_i|^2 + eps^2) ** 1.5

and each step advances every body by semi-implicit (symplectic) Euler::

    v += dt * a(r)
    r += dt * v

The bodies are split into ``--groups`` groups; each group is a cown holding a
:class:`Group`: its bodies' positions and velocities (``bocpy.Matrix``, n x 3)
and the masses of every body (N x 1).  A step is two kinds of behavior:

- ``gather`` holds every group for a moment and concatenates their positions
  into one N x 3 snapshot of the whole system;
- one ``advance`` behavior per group, which gets that snapshot as a capture
  and computes its bodies' accelerations, velocities and positions -- the
  O(N^2) work, all of it Matrix arithmetic on a worker.

``gather`` schedules the advances and then the next step's ``gather``, which
waits for them (it needs every group), so the whole run is driven by the
behaviors themselves and the main thread only waits.  NumPy is not needed
(it does not load in worker sub-interpreters); the groups' matrices cross
between workers by move, not copy, as each group passes from one behavior
to the next.

``--check`` then runs the same integration sequentially on the main thread
with NumPy (an independent, vectorised formulation that sums in a different
order) from the same initial state, and compares the final positions and
velocities: they must agree within ``--tolerance`` (default 1e-9) relative to
the largest position or velocity component.  Only rounding separates the
two, but the system is chaotic and rounding differences grow with the number
of steps, so keep ``--steps`` modest when checking.  The example also
reports the relative drift of the total energy, which a symplectic
integrator keeps small.

Run it with ``python -m bocpy.examples.nbody [--bodies N] [--groups G]
[--steps S] [--dt DT] [--softening EPS] [--seed SEED] [--workers W]
[--check [--tolerance TOL]]``; it exits with status 1 when the check fails.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

from bocpy import WORKER_COUNT, Cown, Matrix, start, wait, when

from ._common import add_workers, example_parser, report_check

__all__ = [
    "Group",
    "Params",
    "accelerations",
    "advance",
    "check",
    "initial_state",
    "main",
    "numpy_run",
    "total_energy",
]


@dataclass
class Group:
    """The state of one group of bodies; lives in a cown, moved step to step."""

    #: Index of its first body in the whole system.
    first: int
    #: Positions of its bodies, n x 3.
    pos: Matrix
    #: Velocities of its bodies, n x 3.
    vel: Matrix
    #: The mass of every body in the system, N x 1 (constant).
    mass: Matrix


@dataclass(frozen=True)
class Params:
    """The integration parameters, shared by every behavior."""

    steps: int
    dt: float
    softening: float


def accelerations(pos: Matrix, everyone: Matrix, mass: Matrix, softening: float) -> Matrix:
    """The gravitational accelerations (n x 3) of the bodies at ``pos`` (n x 3).

    ``everyone`` (N x 3) and ``mass`` (N x 1) describe every body in the
    system, including those at ``pos`` (a body's pull on itself is zero:
    its offset is zero).
    """
    eps2 = softening * softening
    acc = Matrix.zeros((pos.rows, 3))
    for i in range(pos.rows):
        d = everyone - pos[i]  # offsets to every body, N x 3
        r2 = d.magnitude_squared(axis=1)  # N x 1
        r2 += eps2
        r3 = r2.sqrt()
        r3 *= r2  # (r^2 + eps^2) ** 1.5
        d *= mass / r3
        acc[i] = d.sum(axis=0)
    return acc


def advance(group: Group, everyone: Matrix, params: Params) -> None:
    """One semi-implicit Euler step of ``group`` in the field of ``everyone``."""
    acc = accelerations(group.pos, everyone, group.mass, params.softening)
    group.vel.scaled_add(params.dt, acc, in_place=True)  # v += dt * a
    group.pos.scaled_add(params.dt, group.vel, in_place=True)  # r += dt * v


def schedule_step(groups: list[Cown[Group]], step: int, params: Params) -> None:
    """Schedule step ``step``: a gather, the advances, then the next step."""

    @when(groups)
    def gather(groups: list[Cown[Group]], step: int = step, params: Params = params) -> None:
        everyone = Matrix.concat([g.value.pos for g in groups])
        for group in groups:

            @when(group)
            def advance_group(
                group: Cown[Group], everyone: Matrix = everyone, params: Params = params
            ) -> None:
                advance(group.value, everyone, params)

        if step + 1 < params.steps:
            schedule_step(groups, step + 1, params)


def initial_state(bodies: int, seed: int) -> tuple[Matrix, Matrix, Matrix]:
    """Positions, velocities (N x 3) and masses (N x 1) of a random cluster."""
    Matrix.seed(seed)
    pos = Matrix.uniform(-1.0, 1.0, size=(bodies, 3))
    vel = Matrix.normal(0.0, 0.1, size=(bodies, 3))
    mass = Matrix.uniform(0.5, 1.5, size=(bodies, 1))
    mass /= bodies  # a total mass of about 1
    return pos, vel, mass


def total_energy(pos: Matrix, vel: Matrix, mass: Matrix, softening: float) -> float:
    """Kinetic plus (softened) potential energy of the system."""
    kinetic = 0.5 * float((mass * vel.magnitude_squared(axis=1)).sum())
    eps2 = softening * softening
    potential = 0.0
    for i in range(pos.rows - 1):
        rest = pos[i + 1 :]
        d = rest - pos[i]
        r2 = d.magnitude_squared(axis=1)
        r2 += eps2
        potential -= mass[i, 0] * float((mass[i + 1 :] / r2.sqrt()).sum())
    return kinetic + potential


def numpy_run(pos: Any, vel: Any, mass: Any, params: Params) -> tuple[Any, Any]:
    """The same integration, sequential and vectorised with NumPy (main thread only).

    Takes and returns NumPy arrays (N x 3 positions and velocities, N x 1
    masses).  The accelerations are computed for blocks of bodies at once
    from an (n x N x 3) array of offsets, so the sums run in another order
    than the Matrix version's.
    """
    import numpy  # only on the main thread: it does not load in workers

    pos, vel = pos.copy(), vel.copy()
    m = mass.reshape(1, -1)
    eps2 = params.softening * params.softening
    block = 256
    for _ in range(params.steps):
        acc = numpy.empty_like(pos)
        for lo in range(0, len(pos), block):
            d = pos[None, :, :] - pos[lo : lo + block, None, :]
            r2 = numpy.einsum("ijk,ijk->ij", d, d) + eps2
            acc[lo : lo + block] = numpy.einsum("ij,ijk->ik", m / (r2 * numpy.sqrt(r2)), d)
        vel += params.dt * acc
        pos += params.dt * vel
    return pos, vel


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = example_parser("nbody", "Gravitational N-body simulation with Matrix in behaviors.")
    parser.add_argument("--bodies", type=int, default=1000, help="number of bodies (default 1000)")
    parser.add_argument(
        "--groups",
        type=int,
        default=None,
        help="groups of bodies, one cown each (default 2x workers)",
    )
    parser.add_argument("--steps", type=int, default=20, help="time steps (default 20)")
    parser.add_argument("--dt", type=float, default=1e-3, help="time step (default 0.001)")
    parser.add_argument(
        "--softening", type=float, default=0.05, help="Plummer softening length (default 0.05)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    add_workers(parser, default=max(2, WORKER_COUNT))
    parser.add_argument(
        "--check", action="store_true", help="compare with a sequential NumPy run at the end"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=1e-9,
        help="--check: largest allowed difference, relative to the largest component "
        "(default 1e-9)",
    )
    args = parser.parse_args(argv)
    for name in ("bodies", "steps", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.groups is None:
        args.groups = min(args.bodies, 2 * args.workers)
    if not 1 <= args.groups <= args.bodies:
        parser.error(f"--groups must be between 1 and --bodies ({args.bodies}), got {args.groups}")
    if not (args.dt > 0 and math.isfinite(args.dt)):
        parser.error(f"--dt must be a positive number (got {args.dt})")
    if not (args.softening > 0 and math.isfinite(args.softening)):
        parser.error(f"--softening must be a positive number (got {args.softening})")
    if not args.tolerance > 0:
        parser.error(f"--tolerance must be positive (got {args.tolerance})")
    return args


def check(
    initial: tuple[Matrix, Matrix, Matrix], pos: Matrix, vel: Matrix, params: Params, tol: float
) -> bool:
    """Compare the final state with a sequential NumPy run; print and return the verdict."""
    try:
        import numpy  # optional, main thread only
    except ImportError:
        print("  CHECK FAILED: --check needs NumPy (pip install numpy)")
        return False
    began = time.perf_counter()
    pos0, vel0, mass0 = (numpy.array(m) for m in initial)
    want_pos, want_vel = numpy_run(pos0, vel0, mass0, params)
    elapsed = time.perf_counter() - began
    got_pos, got_vel = numpy.asarray(pos), numpy.asarray(vel)
    scale = max(float(numpy.abs(want_pos).max()), float(numpy.abs(want_vel).max()), 1e-300)
    error = max(
        float(numpy.abs(got_pos - want_pos).max()), float(numpy.abs(got_vel - want_vel).max())
    )
    relative = error / scale
    return report_check(
        relative <= tol,
        f"matches the sequential NumPy run (took {elapsed:.2f}s) within {relative:.1e} "
        f"relative (tolerance {tol:.0e})",
        f"differs from the sequential NumPy run by {relative:.1e} relative (tolerance {tol:.0e})",
    )


def main(argv: list[str] | None = None) -> int:
    """Run the simulation; with ``--check``, compare it with NumPy.  Returns the exit status."""
    args = parse_args(argv)
    params = Params(steps=args.steps, dt=args.dt, softening=args.softening)
    initial = initial_state(args.bodies, args.seed)
    pos, vel, mass = initial
    energy_before = total_energy(pos, vel, mass, params.softening)

    # Split the bodies into groups of nearly equal size; each is a cown.
    bounds = [args.bodies * g // args.groups for g in range(args.groups + 1)]
    groups = [
        Cown(
            Group(
                first=lo,
                pos=pos[lo:hi],  # slicing copies: the cown gets its own matrices
                vel=vel[lo:hi],
                mass=mass.copy(),
            )
        )
        for lo, hi in itertools.pairwise(bounds)
    ]
    print(
        f"nbody: {args.bodies} bodies in {args.groups} groups, {args.steps} steps of "
        f"dt={args.dt:g}, softening {args.softening:g}, {args.workers} workers"
    )
    start(args.workers)
    began = time.perf_counter()
    schedule_step(groups, 0, params)
    stats = wait(stats=True)
    elapsed = time.perf_counter() - began

    finished = [g.unwrap() for g in groups]
    final_pos = Matrix.concat([g.pos for g in finished])
    final_vel = Matrix.concat([g.vel for g in finished])
    energy_after = total_energy(final_pos, final_vel, mass, params.softening)
    drift = abs(energy_after - energy_before) / abs(energy_before)
    interactions = args.bodies * args.bodies * args.steps
    print(
        f"  {elapsed:.2f}s, {elapsed / args.steps * 1e3:.1f} ms/step, "
        f"{interactions / elapsed / 1e6:.1f} M interactions/s; "
        f"behaviors per worker: {', '.join(str(w['behaviors_run']) for w in stats or [])}"
    )
    print(f"  energy {energy_before:.6f} -> {energy_after:.6f} (relative drift {drift:.1e})")
    if args.check and not check(initial, final_pos, final_vel, params, args.tolerance):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
