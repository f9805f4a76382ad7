"""A ``concurrent.futures.Executor`` whose tasks run as bocpy behaviors.

``BocExecutor`` lets code written for ``ProcessPoolExecutor`` (or 3.14's
``InterpreterPoolExecutor``) run on bocpy's worker sub-interpreters by
changing one line::

    from bocpy import BocExecutor

    with BocExecutor() as pool:
        print(list(pool.map(pow, [2, 3, 4], [5, 5, 5])))

How a task travels
------------------
``submit`` makes a ``concurrent.futures.Future`` and puts the task on a
queue kept on the submitting side.  The executor keeps at most
``2 * max_workers`` tasks *dispatched*: a dispatched task is a behavior
with no cowns whose captures are the function and its arguments (copied
when it is scheduled, as every capture is).  A task becomes ``RUNNING``
when it is dispatched -- as ``ProcessPoolExecutor`` marks the calls it
hands to its workers' queue -- so ``Future.cancel()`` succeeds exactly
for tasks that are still queued here, and a cancelled task is never
scheduled at all: its behavior does not exist.

The behavior runs the function on a worker and sends the outcome (the
value, or the exception with the worker's traceback as a note) to the
main interpreter as a bocpy message on a tag private to this executor.
One completion thread per executor receives those messages, completes
the futures (so callbacks, ``as_completed``, ``wait`` and
``asyncio.wrap_future`` see ordinary futures) and dispatches the next
queued tasks.

The executor shares the process's bocpy runtime with the rest of the
program: it starts it with ``max_workers`` workers when it is not
running, and it never tears it down (``shutdown`` only waits for this
executor's own tasks).
"""

from __future__ import annotations

import atexit
import collections
import itertools
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from . import _core

__all__ = ["BocExecutor"]

T = TypeVar("T")

#: Tasks kept dispatched per worker: enough that a worker finishing one
#: task finds the next without waiting for the main interpreter, few
#: enough that most queued tasks can still be cancelled.
_DISPATCHED_PER_WORKER = 2

#: Executor ids, unique in this process; each names its message tag.
_executor_ids = itertools.count(1)

#: Live executors, shut down (waiting for their tasks) when the program ends.
_live_executors: weakref.WeakSet[BocExecutor] = weakref.WeakSet()


# ------------------------------------------------------------- worker side


def _report(tag: str, task_id: int, ok: bool, payload: Any) -> None:
    """Send a task's outcome home; if it cannot cross, send why instead."""
    try:
        _core.send(tag, (task_id, ok, payload))
        return
    except Exception as err:
        what = "result" if ok else "exception"
        problem = f"{type(err).__name__}: {err}"
        detail = "" if ok else "\n" + "".join(traceback.format_exception(payload))
    failure = TypeError(
        f"the task's {what} ({type(payload).__qualname__}) cannot be sent back from the "
        f"bocpy worker ({problem}); return a picklable value{detail}"
    )
    _core.send(tag, (task_id, False, failure))


def _run_task(
    tag: str,
    task_id: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """The body of every task's behavior: call ``fn`` and report the outcome."""
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # SystemExit too: it belongs to the future
        exc.add_note(
            "Traceback in the bocpy worker:\n" + "".join(traceback.format_tb(exc.__traceback__))
        )
        _report(tag, task_id, False, exc.with_traceback(None))
        return
    _report(tag, task_id, True, result)


def _run_chunk(fn: Callable[..., T], chunk: tuple[tuple[Any, ...], ...]) -> list[T]:
    """One ``map`` chunk: ``fn`` over each argument tuple, in order."""
    return [fn(*args) for args in chunk]


def _chunks(
    iterables: tuple[Iterable[Any], ...], size: int
) -> Iterator[tuple[tuple[Any, ...], ...]]:
    arguments = zip(*iterables, strict=False)
    while chunk := tuple(itertools.islice(arguments, size)):
        yield chunk


def _flatten(chunk_results: Iterator[list[T]]) -> Iterator[T]:
    for results in chunk_results:
        yield from results


# --------------------------------------------------------------- main side


class _Task:
    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs


class BocExecutor(Executor):
    """Run callables as bocpy behaviors on worker sub-interpreters.

    A drop-in ``concurrent.futures.Executor``: ``submit``, ``map`` and
    ``shutdown`` behave as documented for ``ProcessPoolExecutor``, and the
    futures are real ``concurrent.futures.Future`` objects (usable with
    ``as_completed``, ``wait`` and ``asyncio.wrap_future``).  Functions,
    arguments and results cross interpreters by copy, so they must be
    picklable -- except that functions may also be lambdas or local
    functions, which bocpy ships by code.

    Args:
        max_workers: the worker count to start the bocpy runtime with when
            it is not running; ``None`` means the running runtime's count,
            else ``bocpy.WORKER_COUNT``.  At most ``2 * max_workers`` tasks
            are dispatched at once; the rest wait, cancellable, here.

    Raises:
        TypeError: ``max_workers`` is not an ``int``.
        ValueError: ``max_workers`` is below 1, or differs from the worker
            count of a runtime that is already running (the runtime is
            shared; call ``bocpy.wait()`` first or pass ``None``).
    """

    def __init__(self, max_workers: int | None = None) -> None:
        running, running_count, _ = _core._runtime_info()
        if max_workers is None:
            if running:
                max_workers = running_count
            else:
                from . import WORKER_COUNT

                max_workers = WORKER_COUNT
        elif isinstance(max_workers, bool) or not isinstance(max_workers, int):
            raise TypeError(
                f"max_workers must be an int or None, not {type(max_workers).__name__} "
                f"({max_workers!r})"
            )
        elif max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        elif running and max_workers != running_count:
            raise ValueError(
                f"the bocpy runtime is already running with {running_count} workers, so "
                f"BocExecutor(max_workers={max_workers}) cannot have its own count: pass "
                "max_workers=None to share it, or call bocpy.wait() first"
            )
        self._max_workers: int = max_workers
        self._tag = f"bocpy.executor.{next(_executor_ids)}"
        self._lock = threading.Lock()
        self._queued: collections.deque[_Task] = collections.deque()
        self._dispatched: dict[int, Future[Any]] = {}
        self._task_ids = itertools.count()
        self._shutdown = False
        self._all_done = threading.Condition(self._lock)
        self._completer: threading.Thread | None = None
        _live_executors.add(self)

    @property
    def max_workers(self) -> int:
        """The worker count this executor starts the runtime with."""
        return self._max_workers

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` as a behavior; return its future.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor has been shut down.

        A function or argument that cannot be copied to a worker does not
        raise here: the future gets the ``TypeError``, as with
        ``ProcessPoolExecutor``.
        """
        if not callable(fn):
            raise TypeError(f"submit() needs a callable, not {type(fn).__name__} ({fn!r})")
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new tasks after BocExecutor.shutdown()")
            self._queued.append(_Task(future, fn, args, kwargs))
            if self._completer is None:
                self._completer = threading.Thread(
                    target=self._complete, name=f"{self._tag}.completer", daemon=True
                )
                self._completer.start()
            self._dispatch_locked()
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like the built-in ``map``, with ``fn`` run on workers.

        The iterables are read at once; each ``chunksize`` argument tuples
        form one behavior, which cuts the per-task cost for small
        functions.  The results come back in order; ``timeout`` (seconds,
        from this call) bounds the wait for each next result and raises
        ``TimeoutError``.  An exception from ``fn`` is raised when its
        result would be returned.

        Raises:
            ValueError: ``chunksize`` is below 1.
            TypeError: ``chunksize`` is not an ``int``.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int):
            raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__}")
        if chunksize < 1:
            raise ValueError(f"chunksize must be at least 1, got {chunksize}")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunk_results = super().map(
            _run_chunk, itertools.repeat(fn), _chunks(iterables, chunksize), timeout=timeout
        )
        return _flatten(chunk_results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new tasks; optionally cancel queued ones and wait for the rest.

        With ``cancel_futures=True``, every task not yet dispatched is
        cancelled (its behavior is never scheduled).  With ``wait=True``,
        return once every other task has finished and its future is done;
        otherwise return at once (the tasks still run, and their futures
        still complete).  Calling it again is harmless.

        Raises:
            RuntimeError: ``wait=True`` from a done-callback of one of this
                executor's futures, which would wait for itself.
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._queued:
                    self._queued.popleft().future.cancel()
            if not wait:
                self._stop_completer_if_idle_locked()
                return
            if self._completer is threading.current_thread() and self._dispatched:
                raise RuntimeError(
                    "BocExecutor.shutdown(wait=True) called from a done-callback would wait "
                    "for itself; call shutdown(wait=False) there"
                )
            while self._queued or self._dispatched:
                self._all_done.wait()
            self._stop_completer_if_idle_locked()

    # The lock is held by the caller of every *_locked method.

    def _dispatch_locked(self) -> None:
        """Schedule queued tasks until ``2 * max_workers`` are dispatched."""
        limit = _DISPATCHED_PER_WORKER * self._max_workers
        while self._queued and len(self._dispatched) < limit:
            task = self._queued.popleft()
            if not task.future.set_running_or_notify_cancel():
                continue  # cancelled while queued: it never becomes a behavior
            task_id = next(self._task_ids)
            # Registered before it is scheduled: its outcome may arrive at
            # the completion thread before whencall() returns.
            self._dispatched[task_id] = task.future
            try:
                if not _core._runtime_info()[0]:
                    from . import start

                    start(self._max_workers)
                _core.whencall(_run_task, [], [self._tag, task_id, task.fn, task.args, task.kwargs])
            except Exception as err:
                del self._dispatched[task_id]
                task.future.set_exception(err)
        if not self._queued and not self._dispatched:
            self._all_done.notify_all()

    def _stop_completer_if_idle_locked(self) -> None:
        """After shutdown, end the completion thread once nothing is outstanding.

        While tasks are outstanding the completer ends itself after the
        last one (see ``_complete``); an idle one is blocked in
        ``receive`` and is sent the stop message.
        """
        if self._completer is None or self._queued or self._dispatched:
            return
        self._completer = None
        _core.send(self._tag, (None, False, None))

    def _complete(self) -> None:
        """The completion thread: finish futures as their outcomes arrive."""
        while True:
            _, (task_id, ok, payload) = _core.receive(self._tag, None, None)
            if task_id is None:
                return
            future = self._dispatched[task_id]
            # Outside the lock: done-callbacks may submit more tasks.  The
            # future is done before it leaves ``_dispatched``, so that
            # shutdown(wait=True) returns only once every future is done.
            if ok:
                future.set_result(payload)
            else:
                future.set_exception(payload)
            with self._lock:
                del self._dispatched[task_id]
                self._dispatch_locked()
                if self._shutdown and not self._queued and not self._dispatched:
                    self._completer = None
                    return


def _shutdown_at_exit() -> None:
    """Let every executor's tasks finish before bocpy's own exit handling.

    A script that died on an uncaught exception does not wait: queued tasks
    are cancelled, and bocpy's exit handling ends the rest promptly.
    """
    from . import _crashed

    for executor in list(_live_executors):
        executor.shutdown(wait=not _crashed, cancel_futures=_crashed)


if _core._is_main_interpreter():
    # Registered after bocpy's own exit handlers, so it runs before them.
    atexit.register(_shutdown_at_exit)
