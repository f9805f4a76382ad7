"""bocpy: Behavior-Oriented Concurrency for Python.

Wrap shared data in cowns, schedule behaviors with ``@when(a, b)``, and
they run in parallel on worker sub-interpreters -- each with its own GIL --
with exclusive access to the cowns they name: no locks, no data races and
no deadlock, by construction::

    from bocpy import Cown, when, wait

    a, b = Cown(100), Cown(0)

    @when(a, b)
    def transfer(a, b, amount=40):
        a.value -= amount
        b.value += amount

    wait()

The runtime itself is C (``bocpy._core``); this module is the thin layer
that gives it its Python shape.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from . import _core
from ._core import (
    REMOVED,
    TIMEOUT,
    Cown,
    PinnedCown,
    drain,
    notice_delete,
    notice_read,
    notice_update,
    notice_write,
    noticeboard,
    send,
    set_tags,
    set_wait_pump_poll,
    set_wake_callback,
    wake_fd,
    when,
)

__all__ = [
    "REMOVED",
    "TIMEOUT",
    "WORKER_COUNT",
    "Cown",
    "PinnedCown",
    "PumpResult",
    "WaitResult",
    "drain",
    "notice_delete",
    "notice_read",
    "notice_seed",
    "notice_update",
    "notice_write",
    "noticeboard",
    "pump",
    "quiesce",
    "receive",
    "send",
    "set_pump_watchdog",
    "set_tags",
    "set_wait_pump_poll",
    "set_wake_callback",
    "start",
    "wait",
    "wake_fd",
    "when",
    "whencall",
]

T = TypeVar("T")


def _default_worker_count() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


#: Workers started by default: one per core the process may use, less the
#: main thread's, and at least one.
WORKER_COUNT: int = _default_worker_count()


def whencall(
    func: Callable[..., T],
    args: list[Cown[Any] | list[Cown[Any]]],
    captures: list[Any] | None = None,
) -> Cown[T]:
    """Schedule ``func`` on the cowns in ``args``, like ``@when(*args)``.

    ``captures`` are extra values passed after the cowns; they are copied
    now, when the behavior is scheduled.  Returns the result cown.
    """
    return _core.whencall(func, args, captures)


_start_lock = threading.Lock()


def start(worker_count: int | None = None) -> None:
    """Start the worker pool; the first ``@when`` does this implicitly.

    Idempotent: starting a running runtime with the same worker count does
    nothing.  ``worker_count`` defaults to ``WORKER_COUNT``.  Safe to call
    from any thread of the main interpreter, also while another thread
    starts or stops the runtime: exactly one runtime results.
    """
    if worker_count is None:
        worker_count = WORKER_COUNT
    # The binding decides, under its lifecycle lock: True when a runtime with
    # this many workers runs (after waiting out one that starts or stops),
    # False when none runs and it needs the bootstrap to start one.
    if _core.start(worker_count, None, []):
        return
    from . import _worker

    # One bootstrap at a time: building it resets what refresh_main knows.
    with _start_lock:
        if _core.start(worker_count, None, []):
            return
        header, values = _worker.build_bootstrap()
        _core.start(worker_count, header, values)
        _worker.refresh_main()


class WaitResult(NamedTuple):
    """What ``wait``/``quiesce`` return when asked for stats and the board."""

    stats: list[dict[str, int]]
    noticeboard: dict[str, Any]


def _finish(
    stats_list: list[dict[str, int]], stats: bool, board: bool
) -> list[dict[str, int]] | dict[str, Any] | WaitResult | None:
    if board:
        snapshot: dict[str, Any] = noticeboard().to_dict()
        return WaitResult(stats_list, snapshot) if stats else snapshot
    return stats_list if stats else None


def wait(
    timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False
) -> Any:
    """Block until every behavior has run, then tear the runtime down.

    The next ``@when`` starts a fresh runtime; existing cowns keep their
    values.  The workers' sub-interpreters are kept for it (see "Between
    runs" in the README): before this returns, the threads behaviors
    started have finished, their ``atexit`` callbacks have run and what
    they printed is flushed.  Pinned behaviors run on this thread while it
    waits.  Raises
    ``TimeoutError`` if the work is not done within ``timeout`` seconds (the
    runtime keeps running and a later ``wait()`` finishes the job).

    Returns ``None``; with ``stats=True`` one dict of counters per worker;
    with ``noticeboard=True`` the final noticeboard as a dict; with both a
    ``WaitResult(stats, noticeboard)``.
    """
    global _timed_out
    try:
        stats_list = _core.wait(timeout, True)
    except TimeoutError:
        _timed_out = True
        raise
    _timed_out = False
    return _finish(stats_list, stats, noticeboard)


def quiesce(
    timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False
) -> Any:
    """Block until every behavior has run, leaving the runtime running.

    Afterwards every cown can be acquired on the main thread.  Raises
    ``TimeoutError`` on timeout.  Returns as :func:`wait` does.
    """
    global _timed_out
    try:
        stats_list = _core.wait(timeout, False)
    except TimeoutError:
        _timed_out = True
        raise
    _timed_out = False
    return _finish(stats_list, stats, noticeboard)


def notice_seed(key: str, value: Any) -> None:
    """Write ``key`` synchronously, from the main thread, before or between runs."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "notice_seed() is for the main thread; from other threads or behaviors use "
            "notice_write()"
        )
    _core.notice_seed(key, value)


def receive(
    tags: str | Sequence[str],
    timeout: float = -1,
    after: Callable[[], Any] | None = None,
) -> Any:
    """Block until a message with one of ``tags`` arrives; return ``[tag, contents]``.

    Messages of one tag arrive in the order they were sent.  With
    ``timeout >= 0`` (seconds), on time-out return ``after()`` if given,
    else ``(TIMEOUT, None)``.  Ctrl-C interrupts a blocked receive.
    """
    return _core.receive(tags, None if timeout is None or timeout < 0 else timeout, after)


# ---------------------------------------------------------------- pinned cowns


class PumpResult(NamedTuple):
    """What one :func:`pump` call did."""

    #: pinned behaviors whose lifecycle (acquire, body, release) completed
    executed: int
    #: True iff the loop stopped because ``deadline_ms`` passed before the
    #: queue drained
    deadline_reached: bool
    #: pinned behaviors whose body raised an exception (it is on their
    #: result cown)
    raised: int


def pump(
    deadline_ms: float | None = None,
    max_behaviors: int | None = None,
    raise_on_error: bool = False,
) -> PumpResult:
    """Run queued pinned behaviors on this (the main) thread; never blocks.

    Each behavior runs to completion before the next starts.
    ``deadline_ms`` gates *starting* the next behavior; ``max_behaviors`` is
    a hard count.  Body exceptions land on result cowns and are counted in
    ``raised``; with ``raise_on_error=True`` the first one is re-raised.
    ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` propagate
    once the offending behavior is cleaned up; the rest stay queued.
    """
    result: PumpResult = _core.pump(deadline_ms, max_behaviors, raise_on_error)
    return result


def set_pump_watchdog(
    warn_ms: float | None = 1000,
    on_starve: Callable[[int, str], Any] | None = None,
) -> None:
    """Warn when pinned work waits longer than ``warn_ms`` for :func:`pump`.

    Silent until called.  The warning goes to the ``bocpy`` logger, or to
    ``on_starve(nonempty_ms, message)``, which runs on the main thread (an
    exception it raises surfaces there).  ``warn_ms=None`` disables it.
    """
    _core.set_pump_watchdog(warn_ms, on_starve)


# --------------------------------------------------------------- process exit

_crashed = False
#: A wait()/quiesce() timed out and no later one finished: the program was
#: told that work is stuck, so exit gives it a few seconds, not forever.
_timed_out = False
#: After an uncaught exception or Ctrl-C, how long running bodies get to
#: finish (they are interrupted at their next bytecode) before the process
#: exits without them.  A body blocked in C (a sleep) cannot be interrupted.
_EXIT_GRACE_SECONDS = 0.5
#: After a timed-out wait(): how long exit waits for the work before it
#: interrupts it.
_EXIT_AFTER_TIMEOUT_SECONDS = 3.0

_log = logging.getLogger("bocpy")


def _note_crash(hook: Callable[..., Any]) -> Callable[..., Any]:
    def excepthook(*args: Any) -> Any:
        global _crashed
        _crashed = True
        return hook(*args)

    return excepthook


def _exit_now(status: int) -> None:
    """End the process at once: workers still run in their interpreters,
    which CPython cannot finalise around."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing left to save
            pass
    os._exit(status)


def _abandon(why: str, status: int) -> None:
    """Stop the runtime's work at exit, report what did not finish, exit."""
    running = _core._running()
    live = _core._runtime_info()[2]
    if live == 0:
        # Nothing in flight: stop the idle runtime quietly.
        try:
            _core.wait(_EXIT_GRACE_SECONDS, True)
        except BaseException:  # a behavior scheduled meanwhile: report it below
            live = _core._runtime_info()[2]
        else:
            if status:
                _exit_now(status)
            return
    _core._cancel()  # queued behaviors get an exception; bodies are interrupted
    try:
        _core.wait(_EXIT_GRACE_SECONDS, True)
        finished = True
    except BaseException:  # TimeoutError, or a second Ctrl-C
        finished = False
    names = ", ".join(running) if running else "none"
    if finished:
        _log.error(
            "%s: %d behavior(s) did not finish and were dropped or interrupted at exit "
            "(running then: %s)",
            why,
            live,
            names,
        )
        if status:
            _exit_now(status)
        return
    _log.error(
        "%s: %d behavior(s) were abandoned at exit; still running: %s",
        why,
        _core._runtime_info()[2],
        ", ".join(_core._running()) or names,
    )
    _exit_now(status or 1)


def _at_exit() -> None:
    """Finish scheduled work when a script ends; stop promptly when it died.

    A script that ends normally without calling ``wait()`` still runs its
    behaviors, for as long as they take (Ctrl-C stops that).  After an
    uncaught exception (Ctrl-C included), a Ctrl-C while exit waits, or
    once a ``wait()`` has timed out and the work still does not finish
    within a few seconds, queued behaviors are dropped (with an exception
    on their result cowns), running bodies are interrupted and get
    ``_EXIT_GRACE_SECONDS`` to end, what did not finish is reported through
    the ``bocpy`` logger, and the process exits with a non-zero status.
    """
    if not _core._runtime_info()[0]:
        return
    if _crashed:
        # The traceback is already printed; Python exits with status 1.
        _abandon("bocpy: the program ended with an uncaught exception", 0)
        return
    try:
        if _timed_out:
            _core.wait(_EXIT_AFTER_TIMEOUT_SECONDS, True)
        else:
            _core.wait(None, True)
        return
    except KeyboardInterrupt:
        traceback.print_exc()
        _abandon("bocpy: interrupted while exit waited for behaviors", 130)
    except TimeoutError:
        _abandon("bocpy: a wait() timed out earlier and the work did not finish", 1)


def _close_pool_at_exit() -> None:
    """End the worker interpreters that ``wait()`` keeps for the next run."""
    try:
        _core._close_pool()
    except RuntimeError:
        pass  # workers still run (a crashed script): CPython ends them at exit


def _before_fork() -> None:
    """End idle worker interpreters: a forked child cannot survive them.

    CPython (3.12, 3.13) deletes the other interpreters in a forked child
    in a way that aborts it ("PyThreadState_Get: ... the GIL is released")
    when any sub-interpreter exists.  Between runs they are only kept to be
    reused, so they are ended here; the next run makes new ones.  While
    workers exist (the runtime runs, starts or stops) they cannot be ended:
    say so, since the child will die.
    """
    try:
        _core._close_pool()
    except RuntimeError:
        warnings.warn(
            "fork() while the bocpy runtime is running: CPython aborts a forked child "
            "of a process with live sub-interpreters; call bocpy.wait() before forking, "
            "or use the 'spawn' or 'forkserver' start method of multiprocessing",
            RuntimeWarning,
            stacklevel=2,
        )


if _core._is_main_interpreter():
    _core._set_starter(start)
    _core._set_pump_result(PumpResult)
    atexit.register(_core._stop_watchdog)
    sys.excepthook = _note_crash(sys.excepthook)
    # atexit runs these last-registered first: the pool is ended after
    # _at_exit has finished the runtime's work and stopped it.
    atexit.register(_close_pool_at_exit)
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork)
