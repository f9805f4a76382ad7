#!/usr/bin/env python3
"""Soak bocpy: mixed workloads in repeated start(n)/wait() cycles, invariants checked.

Not a test and not a benchmark of speed: it runs for ``--minutes`` (default
10) and, every cycle, starts a fresh runtime (``start(n)``, n rotating),
schedules a mix of work, ``wait()``s for it and checks that nothing was lost:

* chains: nested scheduling, each behavior scheduling the next on one cown
  (order and length checked);
* fan-out: a behavior creates cowns and schedules one child per cown (every
  child's value checked, through the parent's value);
* transfers: random 2- and 3-cown transfers (groups) among accounts, with a
  conserved total and exact per-account balances;
* pinned: a PinnedCown counter bumped by pinned behaviors scheduled from main
  and from worker behaviors (checked against the number scheduled);
* noticeboard: ``notice_update`` increments of one counter (checked exactly)
  and ``notice_write`` of per-slot keys (all present, current cycle);
* messages: behaviors send sequences, main receives them all (count, per-sender
  order, nothing extra);
* injected faults: bodies that raise, bodies that store an unpicklable value
  (the cown must keep its last good value), bodies that return one -- each
  counted and checked on its result cown.

After each cycle it records the process RSS (``VmRSS`` from
``/proc/self/status``).  At the end it prints a summary table and fails if
the median RSS of the last quarter of cycles exceeds the median of the first
quarter by more than 20 % + 20 MB.  Exit status: 0 when every invariant held,
1 otherwise.

``--mode wait`` (the default) tears the runtime down every cycle, so every
cycle starts and stops ``n`` workers (in the worker sub-interpreters that
``wait()`` keeps for the next runtime, made anew only when ``n`` exceeds
all earlier counts); ``--mode quiesce`` starts the runtime once and ends
each cycle with ``quiesce()``, which keeps the same workers -- running both
tells a leak of runtime start/stop from one of the work itself.

    PYTHONPATH=src python benchmarks/soak.py --minutes 1
    PYTHONPATH=src python benchmarks/soak.py --minutes 1 --mode quiesce
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

from _common import rss_bytes

import bocpy
from bocpy import (
    TIMEOUT,
    WORKER_COUNT,
    Cown,
    PinnedCown,
    notice_read,
    notice_seed,
    notice_update,
    notice_write,
    receive,
    send,
    whencall,
)

MSG_TAG = "soak:messages"
COUNTER_KEY = "soak:counter"
SLOT_KEY = "soak:slot:{}"


class InjectedFault(Exception):
    """Raised on purpose by some bodies."""


class Unpicklable:
    """A value that cannot cross interpreters."""

    def __reduce__(self):
        raise TypeError("soak: deliberately unpicklable")


# ------------------------------------------------------------------- bodies


def chain_step(log, n):
    log.value.append(n)
    if n > 0:
        whencall(chain_step, [log], [n - 1])


def fan_root(root, width):
    kids = [Cown(None) for _ in range(width)]
    root.value = kids
    for i, kid in enumerate(kids):
        whencall(fan_leaf, [kid], [i])


def fan_leaf(kid, i):
    kid.value = i * i


def transfer(group, deltas, fail):
    if fail:
        raise InjectedFault(fail)
    for account, delta in zip(group, deltas, strict=True):
        account.value += delta
    return sum(abs(d) for d in deltas)


def pinned_bump(counter):
    counter.value += 1


def worker_then_pinned(c, counter):
    c.value += 1
    whencall(pinned_bump, [counter])


def incr(value):
    return value + 1


def note(c, slot, cycle):
    notice_update(COUNTER_KEY, incr, 0)
    notice_write(SLOT_KEY.format(slot), (cycle, slot))
    c.value += 1


def sender(c, who, count, cycle):
    for seq in range(count):
        send(MSG_TAG, (cycle, who, seq))
    c.value += 1


def store_unpicklable(c):
    c.value = Unpicklable()


def return_unpicklable(c):
    c.value += 1
    return Unpicklable()


# ------------------------------------------------------------------ helpers


class Totals:
    def __init__(self) -> None:
        self.cycles = 0
        self.behaviors = 0
        self.messages = 0
        self.updates = 0
        self.writes = 0
        self.faults_raise = 0
        self.faults_store = 0
        self.faults_return = 0
        self.failures: list[str] = []
        self.rss: list[int] = []
        self.interpreters: list[int] = []  # workers started so far, per cycle
        self.stats_base = 0

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(f"cycle {self.cycles}: {what}")


def exception_of(result: Cown) -> BaseException | None:
    if not result.exception:
        return None
    try:
        result.unwrap()
    except BaseException as err:
        return err
    return None


# -------------------------------------------------------------------- cycle


def run_cycle(
    cycle: int, workers: int, rng: random.Random, scale: float, totals: Totals, mode: str
) -> None:
    def n(base: int) -> int:
        return max(1, int(base * scale))

    bocpy.start(workers)  # in quiesce mode: already running with this count, a no-op
    behaviors = 0

    # chains
    chain_depth = n(200)
    log = Cown([])
    whencall(chain_step, [log], [chain_depth])
    behaviors += chain_depth + 1

    # fan-out
    width = n(100)
    root = Cown(None)
    whencall(fan_root, [root], [width])
    behaviors += 1 + width

    # transfers with a conserved total (some injected to raise)
    n_accounts, n_transfers = n(24), n(300)
    accounts = [Cown(1000) for _ in range(n_accounts)]
    expected = [1000] * n_accounts
    transfers = []
    for i in range(n_transfers):
        members = rng.sample(range(n_accounts), rng.choice((2, 3)))
        amounts = [rng.randint(1, 50) for _ in members[1:]]
        deltas = [-sum(amounts), *amounts]
        fail = f"injected {cycle}/{i}" if rng.random() < 0.05 else None
        if fail is None:
            for m, d in zip(members, deltas, strict=True):
                expected[m] += d
        group = [accounts[m] for m in members]
        transfers.append((whencall(transfer, [group], [deltas, fail]), deltas, fail))
    behaviors += n_transfers

    # pinned: from main and from workers
    counter = PinnedCown(0)
    from_main, from_workers = n(40), n(20)
    relay = Cown(0)
    for _ in range(from_main):
        whencall(pinned_bump, [counter])
    for _ in range(from_workers):
        whencall(worker_then_pinned, [relay], [counter])
    behaviors += from_main + 2 * from_workers

    # noticeboard
    notice_seed(COUNTER_KEY, 0)
    n_notes = n(100)
    noted = Cown(0)
    slots = min(n_notes, 50)
    for i in range(n_notes):
        whencall(note, [noted], [i % slots, cycle])
    behaviors += n_notes

    # messages
    senders, per_sender = n(20), n(10)
    sent = Cown(0)
    for who in range(senders):
        whencall(sender, [sent], [who, per_sender, cycle])
    behaviors += senders

    # injected unpicklable stores and returns
    n_bad = n(10)
    keepers = [Cown((cycle, i)) for i in range(n_bad)]
    stores = [whencall(store_unpicklable, [k]) for k in keepers]
    bumped = Cown(0)
    returns = [whencall(return_unpicklable, [bumped]) for _ in range(n_bad)]
    behaviors += 2 * n_bad

    finish = bocpy.wait if mode == "wait" else bocpy.quiesce
    try:
        result = finish(timeout=120, stats=True, noticeboard=True)
    except TimeoutError as err:
        totals.check(False, f"{mode}(timeout=120) timed out: {err}")
        bocpy.wait()
        return
    board = result.noticeboard

    # ---- checks
    totals.check(log.unwrap() == list(range(chain_depth, -1, -1)), "chain order/length")

    kids = root.unwrap()
    totals.check(isinstance(kids, list) and len(kids) == width, "fan-out children list")
    if isinstance(kids, list):
        totals.check([k.unwrap() for k in kids] == [i * i for i in range(width)], "fan-out values")

    raised = 0
    for r, deltas, fail in transfers:
        err = exception_of(r)
        if fail is None:
            totals.check(
                err is None and r.unwrap() == sum(abs(d) for d in deltas), "transfer result"
            )
        else:
            raised += 1
            totals.check(isinstance(err, InjectedFault) and err.args == (fail,), "injected raise")
    balances = [a.unwrap() for a in accounts]
    totals.check(sum(balances) == 1000 * n_accounts, f"conserved total {sum(balances)}")
    totals.check(balances == expected, "per-account balances")

    totals.check(counter.unwrap() == from_main + from_workers, "pinned counter")
    totals.check(relay.unwrap() == from_workers, "relay counter")

    totals.check(board.get(COUNTER_KEY) == n_notes, f"noticeboard counter {board.get(COUNTER_KEY)}")
    # The board belongs to the run: wait() clears it, quiesce() keeps it.
    kept = n_notes if mode == "quiesce" else None
    totals.check(notice_read(COUNTER_KEY) == kept, "noticeboard counter (notice_read)")
    totals.check(
        all(board.get(SLOT_KEY.format(s)) == (cycle, s) for s in range(slots)), "noticeboard slots"
    )
    totals.check(noted.unwrap() == n_notes, "note behaviors")

    got: dict[int, list[int]] = {}
    received = 0
    while True:
        tag, body = receive(MSG_TAG, timeout=0)
        if tag == TIMEOUT:
            break
        received += 1
        c, who, seq = body
        totals.check(c == cycle, "message from another cycle")
        got.setdefault(who, []).append(seq)
    totals.check(received == senders * per_sender, f"messages received {received}")
    totals.check(
        all(got.get(w) == list(range(per_sender)) for w in range(senders)),
        "per-sender message order",
    )
    totals.check(sent.unwrap() == senders, "sender behaviors")

    for i, (k, r) in enumerate(zip(keepers, stores, strict=True)):
        err = exception_of(r)
        totals.check(
            isinstance(err, TypeError) and "Unpicklable" in str(err), "unpicklable store error"
        )
        totals.check(k.unwrap() == (cycle, i), "cown kept its last good value")
    for r in returns:
        err = exception_of(r)
        totals.check(
            isinstance(err, TypeError) and "Unpicklable" in str(err), "unpicklable return error"
        )
    totals.check(bumped.unwrap() == n_bad, "bodies returning unpicklable values ran")

    worker_behaviors = behaviors - (from_main + from_workers)  # pinned ones run on main
    ran_total = sum(s["behaviors_run"] for s in result.stats)
    ran = ran_total - totals.stats_base  # quiesce mode: counters keep running
    totals.stats_base = ran_total if mode == "quiesce" else 0
    totals.check(
        ran == worker_behaviors, f"stats: {ran} worker behaviors run, expected {worker_behaviors}"
    )

    totals.behaviors += behaviors
    totals.messages += received
    totals.updates += n_notes
    totals.writes += n_notes
    totals.faults_raise += raised
    totals.faults_store += n_bad
    totals.faults_return += n_bad


# --------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload size")
    parser.add_argument(
        "--rss-limit-mb",
        type=float,
        default=4096,
        help="stop early (and fail) once RSS exceeds this many MiB (default 4096)",
    )
    parser.add_argument(
        "--mode",
        choices=("wait", "quiesce"),
        default="wait",
        help="end each cycle with wait() (fresh runtime per cycle, default) or quiesce()",
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=None,
        help="worker counts to rotate through (default: 1, WORKER_COUNT, WORKER_COUNT + 1)",
    )
    args = parser.parse_args(argv)
    worker_counts = args.workers or sorted({1, WORKER_COUNT, WORKER_COUNT + 1})
    if args.mode == "quiesce":
        worker_counts = worker_counts[-1:]  # one runtime for the whole run
    started_interpreters = 0
    rng = random.Random(args.seed)
    totals = Totals()
    started = time.monotonic()
    deadline = started + args.minutes * 60
    while time.monotonic() < deadline or totals.cycles < 4:
        workers = worker_counts[totals.cycles % len(worker_counts)]
        if args.mode == "wait" or totals.cycles == 0:
            started_interpreters += workers
        try:
            run_cycle(totals.cycles, workers, rng, args.scale, totals, args.mode)
        except Exception as err:
            totals.check(False, f"unexpected {type(err).__name__}: {err}")
            try:
                bocpy.wait(timeout=120)
            except BaseException as again:
                totals.check(False, f"could not recover: {again!r}")
                break
        totals.rss.append(rss_bytes())
        totals.interpreters.append(started_interpreters)
        totals.cycles += 1
        if totals.rss[-1] > args.rss_limit_mb * 2**20:
            totals.failures.append(
                f"stopped after {totals.cycles} cycles: RSS {totals.rss[-1] / 2**20:.0f} MiB "
                f"exceeds --rss-limit-mb {args.rss_limit_mb:.0f}"
            )
            break
    elapsed = time.monotonic() - started
    if args.mode == "quiesce":
        bocpy.wait(timeout=120)

    rss = totals.rss
    quarter = max(1, len(rss) // 4)
    first_q, last_q = statistics.median(rss[:quarter]), statistics.median(rss[-quarter:])
    limit = first_q * 1.2 + 20 * 2**20
    rss_ok = last_q <= limit
    if not rss_ok:
        totals.failures.append(
            f"RSS grew: last-quarter median {last_q / 2**20:.1f} MiB > "
            f"first-quarter median {first_q / 2**20:.1f} MiB * 1.2 + 20 MiB"
        )

    mib = 2**20
    # Least-squares slope of RSS over the second half of the run (past warm-up).
    half = len(rss) // 2
    xs, ys = list(range(half, len(rss))), rss[half:]
    per_cycle = 0.0
    if len(xs) > 1:
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        var = sum((x - mx) ** 2 for x in xs)
        cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
        per_cycle = cov / var if var else 0.0
    interps = totals.interpreters[-1] - totals.interpreters[half] if len(rss) > 1 else 0
    per_interp = (ys[-1] - ys[0]) / interps if interps else 0.0
    faults = totals.faults_raise + totals.faults_store + totals.faults_return
    rows = [
        ("duration", f"{elapsed:.1f} s"),
        (
            f"cycles (start/{args.mode})",
            f"{totals.cycles}  (worker counts {worker_counts}; "
            f"{started_interpreters} worker starts)",
        ),
        ("behaviors run", f"{totals.behaviors}"),
        ("messages sent/received", f"{totals.messages}"),
        ("noticeboard updates", f"{totals.updates} notice_update + {totals.writes} notice_write"),
        (
            "faults injected",
            f"{faults}  ({totals.faults_raise} raise, {totals.faults_store} unpicklable store, "
            f"{totals.faults_return} unpicklable return)",
        ),
        (
            "RSS first / last / max",
            f"{rss[0] / mib:.1f} / {rss[-1] / mib:.1f} / {max(rss) / mib:.1f} MiB",
        ),
        (
            "RSS median first/last quarter",
            f"{first_q / mib:.1f} / {last_q / mib:.1f} MiB (limit {limit / mib:.1f})"
            f" {'ok' if rss_ok else 'GREW'}",
        ),
        (
            "RSS growth, second half",
            f"{per_cycle / 1024:.0f} KiB/cycle"
            + (f", {per_interp / mib:.2f} MiB per worker start" if interps else ""),
        ),
        ("invariant failures", f"{len(totals.failures)}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("bocpy soak")
    print("-" * (width + 50))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("-" * (width + 50))
    for failure in totals.failures[:20]:
        print("FAIL", failure)
    if len(totals.failures) > 20:
        print(f"... and {len(totals.failures) - 20} more")
    print("RESULT", "ok: nothing lost" if not totals.failures else "FAILED")
    sys.stdout.flush()
    return 0 if not totals.failures else 1


if __name__ == "__main__":
    sys.exit(main())
