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
import logging
import os
import sys
import sysconfig
import threading
import traceback
import types
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar, overload

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
    receive,
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
    "BocExecutor",
    "BocpyWarning",
    "Cown",
    "Matrix",
    "PinnedCown",
    "PumpResult",
    "UnrebuildableError",
    "WaitResult",
    "__version__",
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


#: Where bocpy reports what it cannot raise (see "Diagnostics" in the docs).
_log = logging.getLogger("bocpy")


class BocpyWarning(RuntimeWarning):
    """The category of every warning bocpy issues (filter it with ``warnings``)."""


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
    """Schedule ``func`` as a behavior on the cowns in ``args``, like ``@when(*args)``.

    :param func: the behavior's function; it gets one parameter per entry of
        ``args``, then the captures.  A function, a bound method or
        classmethod (its receiver is copied now, like a capture, and passed
        first) or a staticmethod.
    :param args: cowns, or lists of cowns (each list is delivered as a list).
    :param captures: extra values passed after the cowns, copied now (when
        the behavior is scheduled); ``None`` for none.
    :returns: the result cown, which receives ``func``'s return value or the
        exception it raised.
    :raises TypeError: if ``args`` is not a list of cowns (or lists of cowns),
        ``captures`` is not a list, or ``func`` cannot be a behavior.
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


_start_lock = threading.Lock()


def _default_backend() -> str:
    """``$BOCPY_BACKEND`` when set; else ``"threads"`` on a free-threaded
    build (``Py_GIL_DISABLED``), where its bodies run in parallel without
    copying, and ``"interpreters"`` on a GIL build, where only
    sub-interpreters run in parallel.  docs/backends.md."""
    chosen = os.environ.get("BOCPY_BACKEND")
    if chosen:
        return chosen
    return "threads" if sysconfig.get_config_var("Py_GIL_DISABLED") else "interpreters"


# Cowns made before the first start follow the default backend's rules.
if _core._is_main_interpreter():
    _core._set_backend(_default_backend())


def start(worker_count: int | None = None, *, backend: str | None = None) -> None:
    """Start the worker pool; the first ``@when`` does this implicitly.

    ``start()`` while the runtime runs does nothing, whatever its worker
    count; so does ``start(n)`` when ``n`` workers are running.

    :param worker_count: how many worker interpreters to run; ``None`` (the
        default) means :data:`WORKER_COUNT`.
    :param backend: how workers run behaviors: ``"interpreters"`` (a
        sub-interpreter per worker; values are copied between them) or
        ``"threads"`` (workers are threads of the main interpreter and
        behaviors get their cowns' objects themselves; parallel on a
        free-threaded build).  ``None`` means ``$BOCPY_BACKEND`` if set, else
        ``"threads"`` on a free-threaded build and ``"interpreters"`` on a
        GIL build.  See docs/backends.md.
    :raises TypeError: if ``worker_count`` is not an int (or ``None``), or
        ``backend`` is not a str (or ``None``).
    :raises ValueError: if ``worker_count`` is below 1 or too large, or
        ``backend`` is not ``"interpreters"`` or ``"threads"``.
    :raises RuntimeError: if the runtime already runs with a different worker
        count or backend (call :func:`wait` first), or when called from a
        behavior.

    Safe to call from any thread of the main interpreter, also while
    another thread starts or stops the runtime: exactly one runtime results.
    """
    if not _core._is_main_interpreter():
        raise RuntimeError(
            "bocpy.start() can only be called from the main interpreter, not from inside a behavior"
        )
    # Checks the name, and refuses a different backend while one runs.
    _core._set_backend(_default_backend() if backend is None else backend)
    threads = _core._backend() == "threads"
    if _core._runtime_info()[0]:
        if worker_count is not None:
            _core.start(worker_count, None, [])  # checks the count only
        return
    if worker_count is None:
        worker_count = WORKER_COUNT
    # The binding decides, under its lifecycle lock: True when a runtime with
    # this many workers runs (after waiting out one that starts or stops),
    # False when none runs and it needs the bootstrap to start one.
    if _core.start(worker_count, None, []):
        return
    from . import _bootstrap, _logging

    # One bootstrap at a time: building it resets what refresh_main knows.
    with _start_lock:
        if _core.start(worker_count, None, []):
            return
        _logging.start_main()
        if threads:
            # Workers run in this interpreter: no script image to send.
            _core.start(worker_count, (), [])
            return
        header, values = _bootstrap.build_bootstrap()
        _core.start(worker_count, header, values)
        _bootstrap.refresh_main()


class WaitResult(NamedTuple):
    """What ``wait``/``quiesce`` return when asked for stats and the board."""

    #: one dict of counters per worker
    stats: list[dict[str, int]]
    #: the noticeboard as the run left it
    noticeboard: dict[str, Any]


def _finish(
    result: tuple[list[dict[str, int]], dict[str, Any] | None], stats: bool
) -> list[dict[str, int]] | dict[str, Any] | WaitResult | None:
    _flush_logs()
    # Exceptions left on result cowns that died unread are reported now.
    _core._report_unretrieved(False)
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
    global _timed_out
    try:
        result = _core.wait(timeout, True, noticeboard)
    except TimeoutError:
        _timed_out = True
        raise
    _timed_out = False
    return _finish(result, stats)


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
    global _timed_out
    try:
        result = _core.wait(timeout, False, noticeboard)
    except TimeoutError:
        _timed_out = True
        raise
    _timed_out = False
    return _finish(result, stats)


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


def _flush_logs() -> None:
    """Hand the records behaviors logged to the main loggers before returning."""
    logs = sys.modules.get("bocpy._logging")
    # Another thread may be importing the module right now: its records wait
    # for the next flush rather than touching a half-initialised module.
    if logs is not None and not getattr(logs.__spec__, "_initializing", False):
        logs.flush()


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
        _flush_logs()
        return
    except KeyboardInterrupt:
        traceback.print_exc()
        _abandon("bocpy: interrupted while exit waited for behaviors", 130)
    except TimeoutError:
        _abandon("bocpy: a wait() timed out earlier and the work did not finish", 1)


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
            BocpyWarning,
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

# Imported last: its exit handler must run before the ones above (atexit
# runs the last-registered first), so an executor's tasks finish first.
from .executor import BocExecutor  # noqa: E402
