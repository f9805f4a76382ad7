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
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from . import _core
from ._core import (
    REMOVED,
    TIMEOUT,
    Cown,
    Matrix,
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
from ._pickling import UnrebuildableError

__all__ = [
    "REMOVED",
    "TIMEOUT",
    "WORKER_COUNT",
    "Cown",
    "Matrix",
    "PinnedCown",
    "PumpResult",
    "UnrebuildableError",
    "WaitResult",
    "drain",
    "get_include",
    "get_sources",
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


def get_include() -> str:
    """Return the directory to add to a C extension's include path.

    It holds ``bocpy/move.h``, the public header through which an extension
    type's objects cross bocpy's interpreters by moving their buffer instead
    of being pickled (see ``docs/c-api.md``)::

        Extension("myext", sources=["myext.c", *bocpy.get_sources()],
                  include_dirs=[bocpy.get_include()])

    The extension does not link against bocpy: the header reaches it at run
    time through a capsule.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


def get_sources() -> list[str]:
    """Return the extra C sources an extension using ``bocpy/move.h`` compiles.

    The header is self-contained (static inline helpers only), so on every
    platform bocpy supports today the list is empty; build scripts should
    still add it, so that they keep working if a platform ever needs one.
    """
    return []


def whencall(
    func: Callable[..., T],
    args: list[Cown[Any] | list[Cown[Any]]],
    captures: list[Any] | None = None,
) -> Cown[T]:
    """Schedule ``func`` on the cowns in ``args``, like ``@when(*args)``.

    ``captures`` are extra values passed after the cowns; they are copied
    now, when the behavior is scheduled.  ``func`` may be a function, a
    bound method or classmethod (its receiver is copied now, like a
    capture, and passed first) or a staticmethod.  Returns the result cown.
    """
    given = (len(args) if isinstance(args, list) else 0) + (
        len(captures) if isinstance(captures, list) else 0
    )
    return _core.whencall(_as_behavior(func, given), args, captures)


def _as_behavior(func: Any, given: int) -> Any:
    """Make a function of a method, for ``whencall`` and ``@when``.

    A bound method (an instance's, or a classmethod bound to its class)
    becomes a function that calls the underlying function with the
    receiver first: the receiver is captured, so it is copied when the
    behavior is scheduled, and the behavior works on that copy.  A
    ``staticmethod`` object gives its function.  Anything else is returned
    as it is (and the binding says what is wrong with it, if anything).
    ``given`` is the number of arguments the behavior will receive.
    """
    if isinstance(func, staticmethod):
        return func.__func__
    if isinstance(func, classmethod):
        raise TypeError(
            f"cannot schedule the classmethod object {func.__func__.__qualname__!r} itself: "
            "schedule it through its class (whencall(MyClass.method, ...)), which binds "
            "the class as its first argument"
        )
    if not isinstance(func, types.MethodType):
        return func
    function = func.__func__
    receiver = func.__self__
    if isinstance(function, types.MethodType) or not isinstance(function, types.FunctionType):
        return func  # e.g. a method of a C type: the binding refuses it
    _check_method(function, given)

    def method_behavior(*args: Any) -> Any:
        return function(receiver, *args)

    method_behavior.__name__ = function.__name__
    method_behavior.__qualname__ = function.__qualname__
    method_behavior.__doc__ = function.__doc__
    return method_behavior


# Code flags (the values of inspect.CO_*; inspect is slow to import).
_CO_VARARGS = 0x04
_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ITERABLE_COROUTINE = 0x100
_CO_ASYNC_GENERATOR = 0x200


def _check_method(function: types.FunctionType, given: int) -> None:
    """Check that ``function`` (a method's) can take a receiver and ``given`` arguments."""
    name = function.__qualname__
    code = function.__code__
    if code.co_flags & (_CO_COROUTINE | _CO_ITERABLE_COROUTINE | _CO_ASYNC_GENERATOR):
        raise TypeError(
            f"behavior {name!r} is an 'async def' method; behaviors run to completion on a "
            "worker and cannot be awaited: define it with plain 'def'"
        )
    if code.co_flags & _CO_GENERATOR:
        raise TypeError(
            f"behavior {name!r} is a generator method (it uses 'yield'); a behavior runs "
            "once and returns its result: return a list instead"
        )
    params = code.co_argcount - 1  # the receiver's is filled
    if params < 0:
        raise TypeError(f"method {name!r} takes no parameter for its receiver")
    required = params - len(function.__defaults__ or ())
    if given < required:
        raise TypeError(
            f"behavior {name!r} has {required} parameters without defaults after its "
            f"receiver but is given {given} argument{'' if given == 1 else 's'}; give one "
            "cown (or list of cowns) per parameter, and give extra parameters default "
            "values (they are captured)"
        )
    if given > params and not code.co_flags & _CO_VARARGS:
        raise TypeError(
            f"behavior {name!r} takes {params} parameter{'' if params == 1 else 's'} after "
            f"its receiver but is given {given} arguments; add a parameter per cown (or use "
            "*args)"
        )
    kwonly = code.co_kwonlyargcount
    if kwonly > len(function.__kwdefaults__ or {}):
        raise TypeError(
            f"behavior {name!r} has keyword-only parameters without defaults; behaviors "
            "receive only their cowns, so give those parameters default values"
        )


def start(worker_count: int | None = None) -> None:
    """Start the worker pool; the first ``@when`` does this implicitly.

    Idempotent: starting a running runtime with the same worker count does
    nothing.  ``worker_count`` defaults to ``WORKER_COUNT``.
    """
    if worker_count is None:
        worker_count = WORKER_COUNT
    if _core._runtime_info()[0]:
        _core.start(worker_count, None, [])  # checks the count only
        return
    from . import _logging, _worker

    _logging.start_main()
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
    _flush_logs()
    # Exceptions left on result cowns that died unread are reported now.
    _core._report_unretrieved(False)
    if board:
        snapshot: dict[str, Any] = noticeboard().to_dict()
        return WaitResult(stats_list, snapshot) if stats else snapshot
    return stats_list if stats else None


def wait(timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False) -> Any:
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
    return _finish(_core.wait(timeout, True), stats, noticeboard)


def quiesce(timeout: float | None = None, *, stats: bool = False, noticeboard: bool = False) -> Any:
    """Block until every behavior has run, leaving the runtime running.

    Afterwards every cown can be acquired on the main thread.  Raises
    ``TimeoutError`` on timeout.  Returns as :func:`wait` does.
    """
    return _finish(_core.wait(timeout, False), stats, noticeboard)


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


def _flush_logs() -> None:
    """Hand the records behaviors logged to the main loggers before returning."""
    logs = sys.modules.get("bocpy._logging")
    if logs is not None:
        logs.flush()


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
            _core.wait(None, True)
            _flush_logs()
            return
    except KeyboardInterrupt:
        pass
    _core._cancel()
    try:
        _core.wait(5.0, True)
        _flush_logs()
    except BaseException:
        sys.stdout.flush()
        sys.stderr.write("bocpy: behaviors still running at exit; exiting without them\n")
        sys.stderr.flush()
        os._exit(1)


def _report_unretrieved_at_exit() -> None:
    """Log every exception a behavior left that nobody read (logger ``bocpy``).

    Runs last at exit, after the runtime finished: like asyncio's "exception
    was never retrieved", so that a failure nobody looked at is not silent.
    """
    _core._report_unretrieved(True)


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
    # _at_exit has finished the runtime's work and stopped it, and unread
    # exceptions are reported once nothing can read them any more.
    atexit.register(_report_unretrieved_at_exit)
    atexit.register(_close_pool_at_exit)
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork)
