"""Dining philosophers: deadlock freedom by construction.

``N`` philosophers sit around a table with one fork between each pair of
neighbours.  To eat, a philosopher needs both forks beside it.  With locks,
every philosopher picking up the left fork first deadlocks; the classic
fixes (a global lock order, a waiter, a ticket) are all up to the programmer.

Here each fork is a cown that counts its uses, and each philosopher is a cown
that counts its meals.  A meal is one behavior ``@when(philosopher, left,
right)``: it runs only once it owns all three at once, and the runtime
acquires cowns in one global order, so no philosopher ever holds one fork
while waiting for the other.  At the end of each meal the body schedules the
philosopher's next meal -- behaviors may schedule behaviors -- until it has
eaten ``K`` times.  Neighbours compete for the fork they share; philosophers
that share no fork eat in parallel.

The check: every philosopher ate exactly ``K`` times and every fork was used
exactly ``2K`` times (once for each meal of either neighbour).  The example
exits with status 1 if it fails.

Run it with ``python -m bocpy.examples.dining_philosophers [--philosophers N]
[--meals K] [--workers N]``.
"""

from __future__ import annotations

import sys
import time

from bocpy import Cown, start, wait, when
from bocpy.examples._common import add_workers, example_parser, per_worker, report_check


class Philosopher:
    """A philosopher's seat number and how many meals it has had so far."""

    def __init__(self, seat: int, appetite: int) -> None:
        self.seat = seat
        self.appetite = appetite
        self.meals = 0

    def __repr__(self) -> str:
        return f"Philosopher({self.seat}, meals={self.meals}/{self.appetite})"


def dine(philosopher: Cown[Philosopher], left: Cown[int], right: Cown[int]) -> None:
    """Schedule the next meal of ``philosopher``, who eats with ``left`` and ``right``.

    Called from the main thread for the first meal and from the meal's own
    body for each following one.
    """

    @when(philosopher, left, right)
    def eat(philosopher: Cown[Philosopher], left: Cown[int], right: Cown[int]) -> None:
        # This body owns the philosopher and both forks.
        left.value += 1
        right.value += 1
        philosopher.value.meals += 1
        if philosopher.value.meals < philosopher.value.appetite:
            dine(philosopher, left, right)


def run(philosophers: int, meals: int, workers: int) -> bool:
    """Seat the table, let everyone eat, print a summary and return whether the check held."""
    forks = [Cown(0) for _ in range(philosophers)]
    diners = [Cown(Philosopher(seat, meals)) for seat in range(philosophers)]

    start(workers)
    began = time.perf_counter()
    for seat, diner in enumerate(diners):
        # Fork ``seat`` is on the philosopher's left, fork ``seat + 1`` on its right.
        dine(diner, forks[seat], forks[(seat + 1) % philosophers])
    stats = wait(stats=True) or []
    elapsed = time.perf_counter() - began

    eaten = [diner.unwrap().meals for diner in diners]
    uses = [fork.unwrap() for fork in forks]
    total_meals = sum(eaten)
    print(
        f"dining philosophers: {philosophers} philosophers x {meals} meals on {workers} "
        f"worker(s) in {elapsed:.3f} s ({total_meals / elapsed:,.0f} meals/s)"
    )
    print(
        f"  meals per philosopher: min {min(eaten)}, max {max(eaten)}; "
        f"uses per fork: min {min(uses)}, max {max(uses)}"
    )
    print(f"  behaviors per worker: {per_worker(stats)}")
    return report_check(
        all(count == meals for count in eaten) and all(count == 2 * meals for count in uses),
        f"everyone ate {meals} times and every fork was used {2 * meals} times, with no deadlock",
        f"meals {eaten}, fork uses {uses}",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the example and return the exit status."""
    parser = example_parser(
        "dining_philosophers",
        "Dining philosophers with forks as cowns: no deadlock by construction.",
    )
    parser.add_argument("--philosophers", type=int, default=5, help="number of philosophers")
    parser.add_argument("--meals", type=int, default=1000, help="meals each philosopher eats")
    add_workers(parser)
    args = parser.parse_args(argv)
    if args.philosophers < 2 or args.meals < 1 or args.workers < 1:
        parser.error("need at least 2 philosophers, 1 meal and 1 worker")
    return 0 if run(args.philosophers, args.meals, args.workers) else 1


if __name__ == "__main__":
    sys.exit(main())
