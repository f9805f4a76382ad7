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
import collections.abc
import os
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, overload

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
    receive,
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
    "__version__",
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

# A noticeboard() view is a read-only Mapping (lazy: values are read, and
# copied, when looked up).  Each interpreter has its own view type.
collections.abc.Mapping.register(_core.NoticeboardView)

#: The installed distribution's version (PEP 440), read from its metadata
#: on first use -- see ``__getattr__`` below.
__version__: str


def _read_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("bocpy")
    except metadata.PackageNotFoundError:
        warnings.warn(
            "bocpy is not installed (no package metadata: is a source tree on PYTHONPATH?); "
            "bocpy.__version__ is '0.0.0+unknown'. Install it (pip install -e .) for the "
            "real version.",
            RuntimeWarning,
            stacklevel=3,
        )
        return "0.0.0+unknown"


def __getattr__(name: str) -> Any:
    """Compute ``__version__`` lazily: reading package metadata costs
    milliseconds, which every worker interpreter would pay at import."""
    if name == "__version__":
        version = _read_version()
        globals()["__version__"] = version
        return version
    raise AttributeError(f"module 'bocpy' has no attribute {name!r}")


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
    """Schedule ``func`` as a behavior on the cowns in ``args``, like ``@when(*args)``.

    :param func: the behavior's function; it gets one parameter per entry of
        ``args``, then the captures.
    :param args: cowns, or lists of cowns (each list is delivered as a list).
    :param captures: extra values passed after the cowns, copied now (when
        the behavior is scheduled); ``None`` for none.
    :returns: the result cown, which receives ``func``'s return value or the
        exception it raised.
    :raises TypeError: if ``args`` is not a list of cowns (or lists of cowns),
        ``captures`` is not a list, or ``func`` cannot be a behavior.
    """
    return _core.whencall(func, args, captures)


def start(worker_count: int | None = None) -> None:
    """Start the worker pool; the first ``@when`` does this implicitly.

    ``start()`` while the runtime runs does nothing, whatever its worker
    count; so does ``start(n)`` when ``n`` workers are running.

    :param worker_count: how many worker interpreters to run; ``None`` (the
        default) means :data:`WORKER_COUNT`.
    :raises TypeError: if ``worker_count`` is not an int (or ``None``).
    :raises ValueError: if ``worker_count`` is below 1 or too large.
    :raises RuntimeError: if the runtime already runs with a different worker
        count (call :func:`wait` first), or when called from a behavior.
    """
    if not _core._is_main_interpreter():
        raise RuntimeError(
            "bocpy.start() can only be called from the main interpreter, not from inside a behavior"
        )
    if _core._runtime_info()[0]:
        if worker_count is not None:
            _core.start(worker_count, None, [])  # checks the count only
        return
    if worker_count is None:
        worker_count = WORKER_COUNT
    from . import _worker

    header, values = _worker.build_bootstrap()
    _core.start(worker_count, header, values)
    _worker.refresh_main()


class WaitResult(NamedTuple):
    """What ``wait``/``quiesce`` return when asked for stats and the board."""

    #: one dict of counters per worker
    stats: list[dict[str, int]]
    #: the noticeboard as the run left it
    noticeboard: dict[str, Any]


def _finish(
    result: tuple[list[dict[str, int]], dict[str, Any] | None], stats: bool
) -> list[dict[str, int]] | dict[str, Any] | WaitResult | None:
    stats_list, board = result
    if board is not None:
        return WaitResult(stats_list, board) if stats else board
    return stats_list if stats else None


@overload
def wait(
    timeout: float | None = None,
    *,
    stats: Literal[False] = False,
    noticeboard: Literal[False] = False,
) -> None: ...
@overload
def wait(
    timeout: float | None = None,
    *,
    stats: Literal[True],
    noticeboard: Literal[False] = False,
) -> list[dict[str, int]]: ...
@overload
def wait(
    timeout: float | None = None,
    *,
    stats: Literal[False] = False,
    noticeboard: Literal[True],
) -> dict[str, Any]: ...
@overload
def wait(
    timeout: float | None = None,
    *,
    stats: Literal[True],
    noticeboard: Literal[True],
) -> WaitResult: ...
@overload
def wait(
    timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False
) -> list[dict[str, int]] | dict[str, Any] | WaitResult | None: ...
def wait(
    timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False
) -> list[dict[str, int]] | dict[str, Any] | WaitResult | None:
    """Block until every behavior has run, then end the run.

    The next ``@when`` starts a fresh runtime; existing cowns keep their
    values.  The noticeboard belongs to the run, so it is cleared (the next
    run starts with an empty board, apart from what :func:`notice_seed`
    puts there).  The workers' sub-interpreters are kept for the next run
    (see "Between runs" in the README): before this returns, the threads
    behaviors started have finished, their ``atexit`` callbacks have run and
    what they printed is flushed.  Pinned behaviors run on this thread while
    it waits.  With no runtime running it returns at once (after clearing
    the board).

    :param timeout: the most seconds to wait, or ``None`` for as long as it
        takes.
    :param stats: also return one dict of counters per worker.
    :param noticeboard: also return the board as the run left it, a dict
        (``{}`` when no runtime ran).
    :returns: ``None``; with ``stats=True`` the list of per-worker stats;
        with ``noticeboard=True`` the board; with both a
        ``WaitResult(stats, noticeboard)``.
    :raises TimeoutError: if the work is not done within ``timeout`` seconds
        (the runtime and its board stay; a later ``wait()`` finishes the job).
    :raises RuntimeError: when called from a behavior, or while the main
        thread holds cowns that behaviors wait for.
    """
    return _finish(_core.wait(timeout, True, noticeboard), stats)


@overload
def quiesce(
    timeout: float | None = None,
    *,
    stats: Literal[False] = False,
    noticeboard: Literal[False] = False,
) -> None: ...
@overload
def quiesce(
    timeout: float | None = None,
    *,
    stats: Literal[True],
    noticeboard: Literal[False] = False,
) -> list[dict[str, int]]: ...
@overload
def quiesce(
    timeout: float | None = None,
    *,
    stats: Literal[False] = False,
    noticeboard: Literal[True],
) -> dict[str, Any]: ...
@overload
def quiesce(
    timeout: float | None = None,
    *,
    stats: Literal[True],
    noticeboard: Literal[True],
) -> WaitResult: ...
@overload
def quiesce(
    timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False
) -> list[dict[str, int]] | dict[str, Any] | WaitResult | None: ...
def quiesce(
    timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False
) -> list[dict[str, int]] | dict[str, Any] | WaitResult | None:
    """Block until every behavior has run, leaving the runtime running.

    Afterwards every cown can be acquired on the main thread, and the
    noticeboard keeps its contents for the behaviors still to come.

    :param timeout: the most seconds to wait, or ``None`` for as long as it
        takes.
    :param stats: also return one dict of counters per worker.
    :param noticeboard: also return the board as it is now, a dict.
    :returns: as :func:`wait` does.
    :raises TimeoutError: if the work is not done within ``timeout`` seconds.
    :raises RuntimeError: when called from a behavior, or while the main
        thread holds cowns that behaviors wait for.
    """
    return _finish(_core.wait(timeout, False, noticeboard), stats)


def notice_seed(key: str, value: Any) -> None:
    """Write ``key`` on the noticeboard synchronously, from the main thread.

    Unlike :func:`notice_write` it also works while no runtime runs: it
    seeds the board of the next run (``wait()`` clears the board when it
    ends a run).  Once it returns, every behavior scheduled afterwards sees
    the value.

    :param key: a str without NUL characters.
    :param value: any picklable value (copied now).
    :raises TypeError: if ``key`` is not a str.
    :raises ValueError: if ``key`` contains ``"\\0"``.
    :raises RuntimeError: from any thread but the main one, or inside a
        behavior (use :func:`notice_write` there).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "notice_seed() is for the main thread; from other threads or behaviors use "
            "notice_write()"
        )
    _core.notice_seed(key, value)


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
    deadline_ms: int | None = None,
    max_behaviors: int | None = None,
    raise_on_error: bool = False,
) -> PumpResult:
    """Run queued pinned behaviors on this (the main) thread; never blocks.

    Each behavior runs to completion before the next starts.
    ``KeyboardInterrupt``, ``SystemExit`` and ``GeneratorExit`` propagate
    once the offending behavior is cleaned up; the rest stay queued.

    :param deadline_ms: stop *starting* behaviors after this many
        milliseconds; ``None`` for no limit.
    :param max_behaviors: run at most this many; ``None`` for no limit.
    :param raise_on_error: re-raise the first body exception (after it is
        stored on its result cown) instead of only counting it.
    :returns: ``PumpResult(executed, deadline_reached, raised)``.
    :raises TypeError: if a bound is not ``None`` or a positive int (bools,
        floats, ``0`` and negatives are refused).
    :raises OverflowError: if ``deadline_ms`` is past the largest supported
        number of milliseconds.
    :raises RuntimeError: outside the main interpreter, from inside a pinned
        behavior (pump is not reentrant), or while another thread pumps.
    """
    result: PumpResult = _core.pump(deadline_ms, max_behaviors, raise_on_error)
    return result


def set_pump_watchdog(
    warn_ms: int | None = 1000,
    on_starve: Callable[[int, str], object] | None = None,
) -> None:
    """Warn when pinned work waits longer than ``warn_ms`` for :func:`pump`.

    Silent until called.  The warning goes to the ``bocpy`` logger, or to
    ``on_starve(severity, message)``, which runs on the main thread (an
    exception it raises surfaces there).  ``severity`` is ``0`` for the
    warning; the message says how long the queue has been non-empty and how
    deep it is.

    :param warn_ms: the threshold in milliseconds; ``None`` disables it.
    :param on_starve: called instead of logging; ``None`` logs.
    :raises TypeError: if ``warn_ms`` is not ``None`` or a positive int, or
        ``on_starve`` is not callable.
    :raises OverflowError: if ``warn_ms`` is past the largest supported
        number of milliseconds.
    :raises RuntimeError: outside the main interpreter.
    """
    _core.set_pump_watchdog(warn_ms, on_starve)


# --------------------------------------------------------------- process exit

_crashed = False


def _note_crash(hook: Callable[..., Any]) -> Callable[..., Any]:
    def excepthook(*args: Any) -> Any:
        global _crashed
        _crashed = True
        return hook(*args)

    return excepthook


def _at_exit() -> None:
    """Finish scheduled work when a script ends; stop promptly when it died.

    A script that ends normally without calling ``wait()`` still runs its
    behaviors.  One that ends on an uncaught exception (Ctrl-C included)
    only lets running bodies finish: queued behaviors are dropped, with an
    exception on their result cowns, and if a body does not finish within a
    few seconds the process exits anyway.
    """
    if not _core._runtime_info()[0]:
        return
    try:
        if not _crashed:
            _core.wait(None, True, False)
            return
    except KeyboardInterrupt:
        pass
    _core._cancel()
    try:
        _core.wait(5.0, True, False)
    except BaseException:
        sys.stdout.flush()
        sys.stderr.write("bocpy: behaviors still running at exit; exiting without them\n")
        sys.stderr.flush()
        os._exit(1)


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
