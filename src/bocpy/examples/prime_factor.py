"""Parallel Pollard's rho: several searches race, a noticeboard flag stops them all.

``n`` is a semiprime -- by default the product of two random 10-digit primes.
Pollard's rho finds a factor of ``n`` by iterating ``x -> x*x + c (mod n)``
until ``gcd(|x - y|, n)`` reveals one; how long that takes depends on the
starting point and on ``c``, so several independent searches (each with its
own ``x0`` and ``c``) run at once on the worker pool and the first to succeed
wins.

Each search is a cown holding its state, and it runs in bounded *chunks*:
one behavior runs ``--chunk`` steps of rho and then reschedules itself on the
same cown.  The noticeboard is the stop flag.  The winning search publishes
``(factor, search, worker thread)`` under the key ``"factor"``; every chunk
starts by reading that key and stops its search if it is set.  The check has
to happen once per chunk, in a fresh behavior: a behavior's view of the
noticeboard is a snapshot, fixed at its first read for the rest of its body,
so a single long-running behavior would never see the flag appear.  (The
flag is set with ``notice_update`` so that, should two searches succeed at
the same moment, the first commit wins and the second leaves it alone.)

The check: the published factor ``p`` satisfies ``1 < p < n`` and
``p * (n // p) == n``.  The example exits with status 1 if no factor was
found or the check fails.

Run it with ``python -m bocpy.examples.prime_factor [--n N | --digits D]
[--seed S] [--searches K] [--workers W] [--chunk STEPS] [--max-steps STEPS]``.
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import sys
import threading
import time
from dataclasses import dataclass, field

from bocpy import WORKER_COUNT, Cown, notice_read, notice_update, start, wait, when

#: The noticeboard key the winning search publishes its factor under.
FACTOR_KEY = "factor"
#: Steps between two gcd computations (the product of differences is batched).
GCD_BATCH = 128


@dataclass
class Search:
    """The state of one rho search; lives in a cown, one chunk at a time."""

    index: int
    c: int
    x: int
    y: int
    steps: int = 0
    chunks: int = 0
    restarts: int = 0
    outcome: str = "running"
    threads: set[int] = field(default_factory=set)


def is_probable_prime(n: int) -> bool:
    """Miller-Rabin with the first twelve prime bases (exact below 3.3e24)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in bases:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def random_prime(digits: int, rng: random.Random) -> int:
    """A random prime with exactly ``digits`` decimal digits."""
    while True:
        candidate = rng.randrange(10 ** (digits - 1), 10**digits) | 1
        if is_probable_prime(candidate):
            return candidate


def rho_chunk(n: int, c: int, x: int, y: int, steps: int) -> tuple[int, int, int, int]:
    """Run up to ``steps`` steps of Floyd's rho for ``x -> x*x + c``.

    Returns ``(g, x, y, done)``: ``g`` is 1 if nothing was found, a proper
    factor of ``n``, or ``n`` itself if this ``c`` failed (the cycle closed
    without splitting ``n``); ``done`` is the number of steps taken.
    """
    done = 0
    while done < steps:
        batch = min(GCD_BATCH, steps - done)
        x0, y0 = x, y
        q = 1
        for _ in range(batch):
            x = (x * x + c) % n
            y = (y * y + c) % n
            y = (y * y + c) % n
            q = q * abs(x - y) % n
        g = math.gcd(q, n)
        if g == 1:
            done += batch
            continue
        if g == n:
            # The product hides which step split n: redo the batch one step at a time.
            x, y = x0, y0
            for _ in range(batch):
                x = (x * x + c) % n
                y = (y * y + c) % n
                y = (y * y + c) % n
                done += 1
                g = math.gcd(abs(x - y), n)
                if g != 1:
                    break
            return g, x, y, done
        return g, x, y, done + batch
    return 1, x, y, done


def first_wins(
    found: tuple[int, int, int], current: tuple[int, int, int] | None
) -> tuple[int, int, int]:
    """``notice_update`` function: keep an existing factor, else publish ``found``."""
    return found if current is None else current


def schedule_chunk(search: Cown[Search], n: int, chunk: int, max_steps: int) -> None:
    """Schedule the next chunk of ``search``; the chunk reschedules itself."""

    @when(search)
    def run_chunk(
        search: Cown[Search], n: int = n, chunk: int = chunk, max_steps: int = max_steps
    ) -> None:
        s = search.value
        s.chunks += 1
        s.threads.add(threading.get_native_id())
        # A fresh behavior, so a fresh snapshot: this sees a flag set by any
        # chunk that finished before this one started.
        if notice_read(FACTOR_KEY) is not None:
            s.outcome = "stopped"
            return
        if s.steps >= max_steps:
            s.outcome = "gave up"
            return
        g, s.x, s.y, done = rho_chunk(n, s.c, s.x, s.y, min(chunk, max_steps - s.steps))
        s.steps += done
        if g == n:
            # This c failed: restart with another one.
            s.restarts += 1
            s.c = (s.c * 6364136223846793005 + 1442695040888963407) % (n - 3) + 1
            s.x = s.y = (s.x + s.index + 1) % n
        elif g != 1:
            notice_update(
                FACTOR_KEY,
                functools.partial(first_wins, (g, s.index, threading.get_native_id())),
            )
            s.outcome = "found"
            return
        schedule_chunk(search, n, chunk, max_steps)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bocpy.examples.prime_factor",
        description="Factor a semiprime with Pollard's rho on several workers.",
    )
    parser.add_argument("--n", type=int, default=None, help="the number to factor")
    parser.add_argument(
        "--digits", type=int, default=10, help="digits of each random prime when --n is not given"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (primes and searches)")
    parser.add_argument("--searches", type=int, default=None, help="parallel rho searches")
    parser.add_argument(
        "--workers", type=int, default=max(2, WORKER_COUNT), help="worker interpreters"
    )
    parser.add_argument("--chunk", type=int, default=2_000, help="rho steps per behavior")
    parser.add_argument(
        "--max-steps", type=int, default=50_000_000, help="steps after which a search gives up"
    )
    args = parser.parse_args(argv)
    if args.n is not None:
        if args.n < 4:
            parser.error("--n must be at least 4")
        if is_probable_prime(args.n):
            parser.error(f"--n {args.n} is prime: it has no proper factor")
        small = next((p for p in range(2, 100) if args.n % p == 0), None)
        if small is not None:
            parser.error(f"--n {args.n} is divisible by {small}: trial division is enough")
    if args.digits < 2:
        parser.error("--digits must be at least 2")
    for name in ("workers", "chunk", "max_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.searches is None:
        args.searches = 2 * args.workers
    if args.searches < 1:
        parser.error("--searches must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    if args.n is None:
        p, q = random_prime(args.digits, rng), random_prime(args.digits, rng)
        n = p * q
        print(f"n = {n} (= {p} * {q}, generated with seed {args.seed})")
    else:
        n = args.n
        print(f"n = {n}")
    print(f"{args.searches} rho searches on {args.workers} workers, {args.chunk} steps per chunk")

    start(args.workers)  # a new run starts with an empty noticeboard
    searches = []
    for i in range(args.searches):
        x0 = rng.randrange(2, n)
        c = rng.randrange(1, n - 2)
        searches.append(Cown(Search(index=i, c=c, x=x0, y=x0)))
    began = time.perf_counter()
    for search in searches:
        schedule_chunk(search, n, args.chunk, args.max_steps)
    board = wait(noticeboard=True)
    elapsed = time.perf_counter() - began

    states = [search.unwrap() for search in searches]
    threads = sorted({t for s in states for t in s.threads})
    worker_name = {t: f"worker thread {i + 1}" for i, t in enumerate(threads)}
    for s in states:
        ran_on = ", ".join(worker_name[t] for t in sorted(s.threads))
        print(
            f"  search {s.index}: {s.outcome:8} after {s.chunks} chunks, {s.steps} steps, "
            f"{s.restarts} restarts (ran on {ran_on})"
        )

    found = board.get(FACTOR_KEY)
    if found is None:
        print(f"FAILED: no factor found in {elapsed:.2f}s")
        return 1
    factor, index, thread = found
    if not (1 < factor < n and factor * (n // factor) == n):
        print(f"FAILED: {factor} is not a proper factor of {n}")
        return 1
    factor, cofactor = sorted((factor, n // factor))
    print(
        f"factor {factor} found by search {index} on {worker_name.get(thread, thread)} "
        f"in {elapsed:.2f}s"
    )
    print(f"verified: {factor} * {cofactor} == {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
