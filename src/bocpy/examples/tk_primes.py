"""A Tk window whose button counts primes on the workers, without freezing.

Run it with ``python -m bocpy.examples.tk_primes`` (it needs a display).
Each click splits the range into chunks and schedules one worker behavior
per chunk; a single pinned behavior -- it requests every chunk's result
cown *and* the window's ``PinnedCown`` -- adds the counts up and writes the
answer into the label on the main thread.  ``bocpy.tk.install`` pumps those
pinned behaviors from Tk's own event loop when the wake-up fd turns
readable, so the window stays responsive and nothing polls.

``--selftest`` clicks the button a few times by itself, checks every answer
against a sequential count, and exits (0 when all answers were right).
Workers never import tkinter (it cannot load in a sub-interpreter): the
module only imports it inside :func:`main`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bocpy import Cown, PinnedCown, start, wait, when
from bocpy.examples._common import add_workers, count_primes, example_parser, report_check


class Window:
    """The main-thread state the pinned write-back touches: widgets and answers."""

    def __init__(self, label: Any) -> None:
        self.label = label
        self.answers: list[tuple[int, int]] = []  # (limit, primes found)


def count_chunk(lo: int, hi: int) -> Cown[int]:
    """A worker behavior counting the primes in ``[lo, hi)``."""

    @when()
    def counted() -> int:
        return count_primes(lo, hi)

    return counted


def count_below(limit: int, chunks: int, window: PinnedCown[Window], started: float) -> None:
    """Schedule one click's work: the chunks, then the pinned write-back."""
    step = max(1, limit // chunks)
    results = [count_chunk(lo, min(lo + step, limit)) for lo in range(0, limit, step)]

    @when(*results, window)
    def show(*args: Cown[Any]) -> None:
        *parts, win = args
        total = sum(part.value for part in parts)
        seconds = time.perf_counter() - started
        win.value.answers.append((limit, total))
        win.value.label.configure(text=f"{total:,} primes below {limit:,} ({seconds:.2f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = example_parser("tk_primes", __doc__ or "")
    parser.add_argument("--limit", type=int, default=200_000, help="count primes below this")
    parser.add_argument("--chunks", type=int, default=16, help="worker behaviors per click")
    parser.add_argument("--selftest", action="store_true", help="click by itself, then check")
    parser.add_argument("--clicks", type=int, default=3, help="clicks in --selftest mode")
    add_workers(parser)
    args = parser.parse_args(argv)

    import tkinter  # here, not at the top: workers import this module too

    from bocpy import tk as bocpy_tk

    try:
        root = tkinter.Tk()
    except tkinter.TclError as error:
        print(
            f"tk_primes needs a display ({error}); try: xvfb-run python -m "
            "bocpy.examples.tk_primes --selftest",
            file=sys.stderr,
        )
        return 2
    root.title("bocpy: primes on all cores")
    label = tkinter.Label(root, text="press Count", width=48)
    label.pack(padx=12, pady=8)
    window = PinnedCown(Window(label))
    clicks = [0]

    def click() -> None:
        clicks[0] += 1
        limit = args.limit + clicks[0]  # a different answer per click
        count_below(limit, args.chunks, window, time.perf_counter())

    tkinter.Button(root, text="Count", command=click).pack(pady=8)
    start(args.workers)
    driver = bocpy_tk.install(root)

    if args.selftest:
        for i in range(args.clicks):
            root.after(10 * i, click)
        deadline = time.monotonic() + 120
        while driver.executed < args.clicks and time.monotonic() < deadline:
            root.update()
            time.sleep(0.005)
        driver.uninstall()
        wait()  # every behavior has run: the window's cown can be read
        with window:
            answers = list(window.value.answers)
        root.destroy()
        expected = [(limit, count_primes(0, limit)) for limit, _ in answers]
        ok = len(answers) == args.clicks and answers == expected
        print(
            f"tk_primes: {len(answers)} of {args.clicks} clicks answered by pinned "
            f"write-backs, pumped from Tk ({driver.mode} mode)"
        )
        return (
            0
            if report_check(
                ok,
                "every answer matches a sequential count",
                f"answers {answers} differ from {expected}",
            )
            else 1
        )

    root.protocol("WM_DELETE_WINDOW", root.destroy)
    root.mainloop()
    driver.uninstall()
    wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
