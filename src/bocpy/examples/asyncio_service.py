"""An asyncio TCP service whose requests are computed by bocpy behaviors.

The server is an ordinary ``asyncio`` line protocol on ``127.0.0.1`` (an
ephemeral port).  Its handlers never compute anything on the event loop:
each request schedules behaviors that run on bocpy's workers and awaits
their result cowns with :func:`bocpy.aio.result`, so the loop keeps serving
other connections while the workers compute.

Requests, one per line:

``primes LO HI``
    count the primes in ``[LO, HI)`` by trial division (a worker behavior),
    then count the request in the shared ``stats`` cown; replies ``ok N``.
``fail``
    a behavior that raises ``ValueError``; the handler's ``await`` raises
    the same exception, and the reply is ``error ValueError: ...``.
``stats``
    awaits the ``stats`` cown itself (after every behavior scheduled on it
    so far) and replies with its counters.

Every answered request is also appended to an audit log that lives on the
main thread in a :class:`~bocpy.PinnedCown` (a pinned behavior does it, run
by the :mod:`bocpy.aio` driver inside the event loop).

In the same program, several asyncio client tasks connect to the server and
send their requests concurrently.  The checks: every prime count equals the
one computed sequentially beforehand, the ``fail`` request answers with the
behavior's ``ValueError``, the counters and the audit log add up.  The
program prints a summary and exits with status 1 if a check fails.

Run it with ``python -m bocpy.examples.asyncio_service [--clients N]
[--requests N] [--limit N] [--workers N] [--seed N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field

import bocpy.aio
from bocpy import WORKER_COUNT, Cown, PinnedCown, start, wait, when
from bocpy.examples._common import count_primes  # trial division, pure Python


def new_stats() -> dict[str, int]:
    """The service's counters, kept in one cown."""
    return {"primes": 0, "failures": 0}


# ------------------------------------------------------------ the behaviors


def schedule_primes(lo: int, hi: int, stats: Cown[dict[str, int]]) -> Cown[int]:
    """Count primes in ``[lo, hi)`` on a worker, then count the request.

    Returns the result cown of the second behavior, which holds the count.
    """

    @when()
    def counted(lo: int = lo, hi: int = hi) -> int:
        return count_primes(lo, hi)

    @when(stats, counted)
    def recorded(stats: Cown[dict[str, int]], counted: Cown[int]) -> int:
        stats.value["primes"] += 1
        return counted.value

    return recorded


def schedule_failure(stats: Cown[dict[str, int]]) -> Cown[None]:
    """Count a failure, then raise in a behavior; returns its result cown."""

    @when(stats)
    def explode(stats: Cown[dict[str, int]]) -> None:
        stats.value["failures"] += 1
        raise ValueError("this request asked the behavior to fail")

    return explode


def schedule_audit(audit: PinnedCown[list[str]], entry: str) -> None:
    """Append ``entry`` to the main-thread audit log (a pinned behavior)."""

    @when(audit)
    def append(audit: PinnedCown[list[str]], entry: str = entry) -> None:
        audit.value.append(entry)


# --------------------------------------------------------------- the server


@dataclass
class Service:
    """The server's shared state."""

    stats: Cown[dict[str, int]] = field(default_factory=lambda: Cown(new_stats()))
    audit: PinnedCown[list[str]] = field(default_factory=lambda: PinnedCown([]))

    async def answer(self, request: str) -> str:
        """Compute the reply to one request line."""
        words = request.split()
        try:
            if len(words) == 3 and words[0] == "primes":
                lo, hi = int(words[1]), int(words[2])
                count = await bocpy.aio.result(schedule_primes(lo, hi, self.stats))
                return f"ok {count}"
            if words == ["fail"]:
                await bocpy.aio.result(schedule_failure(self.stats))
                return "ok (the behavior did not fail?)"
            if words == ["stats"]:
                counters = await bocpy.aio.result(self.stats)
                return "ok " + " ".join(f"{k}={v}" for k, v in sorted(counters.items()))
        except ValueError as error:  # raised by the behavior's body, here
            return f"error {type(error).__name__}: {error}"
        return f"error unknown request {request!r}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: one reply line per request line."""
        try:
            while line := await reader.readline():
                request = line.decode().strip()
                reply = await self.answer(request)
                schedule_audit(self.audit, f"{request} -> {reply}")
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


# --------------------------------------------------------------- the clients


async def client(port: int, requests: list[str]) -> list[str]:
    """Send ``requests`` one by one over one connection; return the replies."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    try:
        for request in requests:
            writer.write(request.encode() + b"\n")
            await writer.drain()
            replies.append((await reader.readline()).decode().strip())
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


@dataclass
class Outcome:
    """What the run found."""

    replies: int = 0
    failures: list[str] = field(default_factory=list)
    stats_reply: str = ""
    seconds: float = 0.0


async def run(
    clients: int, requests: int, limit: int, rng: random.Random, service: Service
) -> Outcome:
    """Serve, let the clients talk to the server, and check every reply."""
    plans: list[list[tuple[str, str]]] = []
    for _ in range(clients):
        plan = []
        for _ in range(requests):
            lo = rng.randrange(0, limit)
            hi = rng.randrange(lo, min(limit, lo + limit // 4) + 1)
            plan.append((f"primes {lo} {hi}", f"ok {count_primes(lo, hi)}"))
        plans.append(plan)
    plans[0].insert(len(plans[0]) // 2, ("fail", "error ValueError:"))

    outcome = Outcome()
    async with bocpy.aio.driver(deadline_ms=5):
        server = await asyncio.start_server(service.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        began = time.perf_counter()
        async with server:
            results = await asyncio.gather(
                *(client(port, [request for request, _ in plan]) for plan in plans)
            )
            outcome.seconds = time.perf_counter() - began
            stats_replies = await client(port, ["stats"])
        outcome.stats_reply = stats_replies[0]
    for plan, replies in zip(plans, results, strict=True):
        for (request, expected), reply in zip(plan, replies, strict=True):
            outcome.replies += 1
            if not reply.startswith(expected):
                outcome.failures.append(f"{request!r}: expected {expected!r}, got {reply!r}")
    expected_stats = f"ok failures=1 primes={clients * requests}"
    if outcome.stats_reply != expected_stats:
        outcome.failures.append(f"stats: expected {expected_stats!r}, got {outcome.stats_reply!r}")
    return outcome


def main(argv: list[str] | None = None) -> int:
    """Run the service and its clients; print a summary; 0 when every check passed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="concurrent client connections")
    parser.add_argument("--requests", type=int, default=6, help="prime requests per client")
    parser.add_argument("--limit", type=int, default=40_000, help="ranges lie below this")
    parser.add_argument("--workers", type=int, default=WORKER_COUNT, help="bocpy workers")
    parser.add_argument("--seed", type=int, default=1, help="random seed for the ranges")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < 1 or args.limit < 2:
        parser.error("--clients and --requests must be >= 1, and --limit >= 2")

    start(args.workers)
    service = Service()
    outcome = asyncio.run(
        run(args.clients, args.requests, args.limit, random.Random(args.seed), service)
    )
    wait()  # every behavior (the last audit entries included) has run
    audit = service.audit.unwrap()
    if len(audit) != outcome.replies + 1:  # the clients' requests and "stats"
        outcome.failures.append(f"audit log: {len(audit)} entries for {outcome.replies + 1}")

    print(
        f"asyncio_service: {args.clients} clients x {args.requests} requests (+1 failing) "
        f"on {args.workers} worker(s): {outcome.replies} replies in {outcome.seconds:.3f} s"
    )
    print(f"  stats: {outcome.stats_reply}; audit log: {len(audit)} entries")
    if outcome.failures:
        for failure in outcome.failures:
            print(f"  FAILED {failure}")
        return 1
    print("  all replies checked: OK (the failing request got the behavior's ValueError)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
