"""Small pieces several examples share: prime counting and the command-line scaffolding.

Everything here is plain Python that worker sub-interpreters can import: the
prime functions run inside behaviors.
"""

from __future__ import annotations

import argparse

from bocpy import WORKER_COUNT

__all__ = [
    "add_workers",
    "count_primes",
    "example_parser",
    "is_prime",
    "per_worker",
    "report_check",
]


def is_prime(n: int) -> bool:
    """Tell whether ``n`` is prime, by trial division with odd divisors."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def count_primes(lo: int, hi: int) -> int:
    """Count the primes ``p`` with ``lo <= p < hi`` (pure Python, CPU-bound)."""
    count = 0
    for n in range(lo, hi):
        if is_prime(n):
            count += 1
    return count


def example_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of ``python -m bocpy.examples.NAME``."""
    return argparse.ArgumentParser(prog=f"python -m bocpy.examples.{name}", description=description)


def add_workers(
    parser: argparse.ArgumentParser, default: int = WORKER_COUNT, help_text: str | None = None
) -> None:
    """Add ``--workers N``, the number of bocpy workers (``WORKER_COUNT`` by default)."""
    parser.add_argument(
        "--workers",
        type=int,
        default=default,
        help=help_text or f"worker count (default {default})",
    )


def per_worker(stats: list[dict[str, int]]) -> str:
    """How many behaviors each worker ran, from ``wait(stats=True)``: ``"12, 9, 14"``."""
    return ", ".join(str(worker["behaviors_run"]) for worker in stats)


def report_check(ok: bool, passed: str, failed: str) -> bool:
    """Print the line that says how an example's check went; return ``ok``."""
    print(f"  check passed: {passed}" if ok else f"  CHECK FAILED: {failed}")
    return ok
