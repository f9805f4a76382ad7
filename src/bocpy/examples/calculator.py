"""A calculator service driven by messages: ``send`` requests, ``receive`` replies.

The service is a pool of long-running behaviors, one per worker.  Each one
loops on ``receive(["calc", "stop"])``: a ``"calc"`` message is a request
``(op, a, b, reply_tag)``, which it answers by sending ``("ok", result,
server)`` or ``("error", message, server)`` to ``reply_tag``; a ``"stop"``
message ends the loop, and the behavior returns how many requests it served.
A server that hears nothing for ``--idle-timeout`` seconds stops by itself
(``receive`` with a ``timeout`` and an ``after`` callback), so a client that
dies cannot leave the service running forever.

The client is the main thread.  It sends requests in windows of ``--window``
at a time -- each with its own reply tag, ``"reply:<slot>"`` -- and then
collects the window's replies one request at a time with a *selective*
receive on that request's tag, so it gets each answer no matter which server
computed it or in which order they finished.  Reply tags are reused from one
window to the next: the runtime keeps every tag it has ever seen, so a
long-running client should draw its reply tags from a bounded set rather
than invent a new one per request.  The first window is sent before the
service even starts: messages wait in their queue until someone receives
them.  The requests mix the four operations with random operands, including
divisors of zero and an unknown operator, which the service answers with
error replies.

The check: every reply arrives, every result equals the client's own
computation, and exactly the requests that should fail get an error reply.
The example exits with status 1 if not.

Run it with ``python -m bocpy.examples.calculator [--requests N] [--window W]
[--servers K] [--seed S] [--idle-timeout SECONDS]``.
"""

from __future__ import annotations

import argparse
import operator
import random
import sys
import time
from typing import Any

from bocpy import TIMEOUT, WORKER_COUNT, Cown, receive, send, set_tags, start, wait, when

#: The service's operations.
OPERATIONS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
#: Seconds the client waits for one reply before declaring it lost.
REPLY_TIMEOUT = 30.0


def calculate(op: str, a: float, b: float) -> tuple[str, object]:
    """The service's answer to one request: ``("ok", value)`` or ``("error", text)``."""
    function = OPERATIONS.get(op)
    if function is None:
        return "error", f"unknown operation {op!r}"
    try:
        return "ok", function(a, b)
    except ArithmeticError as err:
        return "error", f"{type(err).__name__}: {err}"


def idle() -> list[Any]:
    """What ``receive`` returns when a server has been idle for too long."""
    return ["stop", "idle"]


def start_server(index: int, idle_timeout: float) -> Cown[tuple[int, str]]:
    """Schedule server ``index``; its result cown will hold ``(served, why it stopped)``."""

    @when()
    def server(index: int = index, idle_timeout: float = idle_timeout) -> tuple[int, str]:
        served = 0
        while True:
            tag, contents = receive(["calc", "stop"], idle_timeout, idle)
            if tag == "stop":
                return served, contents
            op, a, b, reply_to = contents
            status, value = calculate(op, a, b)
            send(reply_to, (status, value, index))
            served += 1

    return server


def expected_answer(op: str, a: int, b: int) -> tuple[str, object]:
    """The client's own computation, independent of the service's."""
    if op == "+":
        return "ok", a + b
    if op == "-":
        return "ok", a - b
    if op == "*":
        return "ok", a * b
    if op == "/":
        return ("error", None) if b == 0 else ("ok", a / b)
    return "error", None


def make_requests(count: int, rng: random.Random) -> list[tuple[str, int, int]]:
    """``count`` random requests; about one in eight divides by zero, one is unknown."""
    requests = []
    for _ in range(count):
        op = rng.choice("+-*/")
        a = rng.randint(-1000, 1000)
        b = 0 if op == "/" and rng.random() < 0.5 else rng.randint(-1000, 1000)
        requests.append((op, a, b))
    requests[len(requests) // 2] = ("^", 2, 10)  # not an operation the service knows
    return requests


def reply_tag(number: int, window: int) -> str:
    """The reply tag of request ``number``: one of ``window`` tags, reused."""
    return f"reply:{number % window}"


def send_window(window: list[tuple[int, tuple[str, int, int]]], size: int) -> None:
    """Send one window of numbered requests to the service."""
    for number, (op, a, b) in window:
        send("calc", (op, a, b, reply_tag(number, size)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bocpy.examples.calculator",
        description="A calculator service on worker behaviors, driven by send/receive.",
    )
    parser.add_argument("--requests", type=int, default=200, help="requests the client sends")
    parser.add_argument(
        "--window", type=int, default=64, help="requests in flight at once (reply tags used)"
    )
    parser.add_argument(
        "--servers", type=int, default=max(2, WORKER_COUNT), help="server behaviors (= workers)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of the requests")
    parser.add_argument(
        "--idle-timeout", type=float, default=60.0, help="seconds before an idle server stops"
    )
    args = parser.parse_args(argv)
    if min(args.requests, args.window, args.servers) < 1 or args.idle_timeout <= 0:
        parser.error("--requests, --window, --servers and --idle-timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = make_requests(args.requests, random.Random(args.seed))
    set_tags(["calc", "stop"])  # fresh, empty queues for the service
    numbered = list(enumerate(requests))
    windows = [numbered[i : i + args.window] for i in range(0, len(numbered), args.window)]
    began = time.perf_counter()
    send_window(windows[0], args.window)  # queued until a server receives them
    # Each server occupies a worker for as long as it runs, so give each its own.
    start(args.servers)
    servers = [start_server(i, args.idle_timeout) for i in range(args.servers)]

    failures: list[str] = []
    errors = 0
    served_by = [0] * args.servers
    for i, window in enumerate(windows):
        if i > 0:
            send_window(window, args.window)
        for number, (op, a, b) in window:
            tag, reply = receive(reply_tag(number, args.window), REPLY_TIMEOUT)
            if tag == TIMEOUT:
                failures.append(f"request {number} ({a} {op} {b}): no reply")
                continue
            status, value, server = reply
            served_by[server] += 1
            want_status, want_value = expected_answer(op, a, b)
            if status != want_status or (status == "ok" and value != want_value):
                failures.append(f"request {number} ({a} {op} {b}): got {status} {value!r}")
            if status == "error":
                errors += 1
            if number < 3 or (status == "error" and errors <= 3):
                print(f"  {a} {op} {b} -> {status}: {value} (server {server})")
    elapsed = time.perf_counter() - began

    for _ in servers:
        send("stop", "client done")
    wait()
    stopped = [server.unwrap() for server in servers]

    print(
        f"{len(requests)} requests, {len(requests) - errors} results and {errors} error replies "
        f"in {elapsed * 1000:.1f} ms (worker start-up included)"
    )
    for i, (served, why) in enumerate(stopped):
        print(f"  server {i}: served {served} (replies seen: {served_by[i]}), stopped: {why}")
    if sum(served for served, _ in stopped) != len(requests):
        failures.append("the servers' counts do not add up to the number of requests")
    if any(why != "client done" for _, why in stopped):
        failures.append("a server stopped before the client was done")
    if failures:
        for failure in failures:
            print("FAILED:", failure)
        return 1
    print("verified: every reply matches the client's own computation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
