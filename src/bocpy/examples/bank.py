"""Concurrent bank transfers: atomic multi-cown behaviors with no locks.

Every account is a cown holding an :class:`Account`.  A transfer is a
behavior on two cowns, ``@when(src, dst)``: it runs once it owns both
accounts, so it can check the source balance and move the money as one
atomic step, while transfers between unrelated accounts run in parallel on
other workers.  There are no locks to take in the right order and no
deadlock is possible, whatever pairs the transfers pick.

Some transfers ask for more than the source holds; they change nothing and
return ``False``.  Each transfer's result cown tells whether it went through,
so after ``wait()`` the main thread counts the successes.  Money is neither
created nor destroyed, so the total balance must equal the initial total:
that is the check this example makes (it exits with status 1 if it fails).

Run it with ``python -m bocpy.examples.bank [--accounts N] [--transfers N]
[--workers N] [--seed N]``.
"""

from __future__ import annotations

import random
import sys
import time

from bocpy import Cown, start, wait, when
from bocpy.examples._common import add_workers, example_parser, report_check

#: Initial balances are drawn from this range (inclusive).
INITIAL_BALANCE = (0, 200)
#: Transfer amounts are drawn from this range (inclusive); larger than many
#: balances, so a share of the transfers fails for insufficient funds.
TRANSFER_AMOUNT = (1, 150)


class Account:
    """A bank account: its number and its balance in whole currency units."""

    def __init__(self, number: int, balance: int) -> None:
        self.number = number
        self.balance = balance

    def __repr__(self) -> str:
        return f"Account({self.number}, balance={self.balance})"


def transfer(src: Cown[Account], dst: Cown[Account], amount: int) -> Cown[bool]:
    """Schedule moving ``amount`` from ``src`` to ``dst``.

    Returns the result cown of the behavior: it will hold ``True`` if the
    money moved and ``False`` if ``src`` had insufficient funds.
    """

    @when(src, dst)
    def move(src: Cown[Account], dst: Cown[Account], amount: int = amount) -> bool:
        # This body owns both accounts: nothing else can see them change
        # until it returns, so the check and the update form one atomic step.
        if src.value.balance < amount:
            return False
        src.value.balance -= amount
        dst.value.balance += amount
        return True

    return move


def run(accounts: int, transfers: int, workers: int, seed: int) -> bool:
    """Run the simulation, print a summary and return whether the check held."""
    rng = random.Random(seed)
    balances = [rng.randint(*INITIAL_BALANCE) for _ in range(accounts)]
    initial_total = sum(balances)
    cowns = [Cown(Account(i, balance)) for i, balance in enumerate(balances)]

    start(workers)
    began = time.perf_counter()
    results: list[Cown[bool]] = []
    for _ in range(transfers):
        src, dst = rng.sample(range(accounts), 2)
        results.append(transfer(cowns[src], cowns[dst], rng.randint(*TRANSFER_AMOUNT)))
    wait()
    elapsed = time.perf_counter() - began

    # The runtime is quiescent: the main thread may now read every cown.
    outcomes = [result.unwrap() for result in results]
    succeeded = sum(1 for ok in outcomes if ok is True)
    failed = sum(1 for ok in outcomes if ok is False)
    final_total = 0
    negative = 0
    for cown in cowns:
        with cown:
            final_total += cown.value.balance
            negative += cown.value.balance < 0

    print(
        f"bank: {accounts} accounts, {transfers} transfers on {workers} worker(s) "
        f"in {elapsed:.3f} s ({transfers / elapsed:,.0f} transfers/s)"
    )
    print(f"  succeeded: {succeeded}, failed for insufficient funds: {failed}")
    print(f"  total balance: initial {initial_total}, final {final_total}")

    return report_check(
        final_total == initial_total and negative == 0 and succeeded + failed == transfers,
        "money was conserved and no balance went negative",
        f"{negative} negative balance(s), "
        f"{transfers - succeeded - failed} transfer(s) without a boolean result",
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the example and return the exit status."""
    parser = example_parser(
        "bank", "Random concurrent transfers between bank accounts held in cowns."
    )
    parser.add_argument("--accounts", type=int, default=1000, help="number of accounts")
    parser.add_argument("--transfers", type=int, default=20000, help="number of transfers")
    add_workers(parser)
    parser.add_argument("--seed", type=int, default=2023, help="random seed")
    args = parser.parse_args(argv)
    if args.accounts < 2 or args.transfers < 0 or args.workers < 1:
        parser.error("need at least 2 accounts, 0 transfers and 1 worker")
    return 0 if run(args.accounts, args.transfers, args.workers, args.seed) else 1


if __name__ == "__main__":
    sys.exit(main())
