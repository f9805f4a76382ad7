"""asyncio integration: pump pinned behaviors from an event loop, await results.

Two things live here.

A :class:`Driver` makes an asyncio event loop run bocpy's pinned behaviors
(those whose cowns include a :class:`~bocpy.PinnedCown`).  It watches
:func:`bocpy.wake_fd` with ``loop.add_reader``, so the loop sleeps until
pinned work arrives and then calls :func:`bocpy.pump` -- there is no polling.
With a ``deadline_ms`` budget a wake-up runs pinned behaviors for at most
that long; the rest continues in a later loop iteration (``loop.call_soon``),
so other callbacks and tasks keep running in between::

    async def main() -> None:
        async with bocpy.aio.driver(deadline_ms=5):
            ...

:func:`result` awaits the behavior that produces a cown and returns the
cown's value (or raises the exception its body raised), without blocking
the loop::

    @when(data)
    def total(data):
        return sum(data.value)

    print(await bocpy.aio.result(total))

It installs a driver on the running loop if there is none, so a program that
only awaits results need not install one itself.  Under the hood it
schedules one tiny pinned behavior on ``(cown, completion)``; that behavior
runs on the loop's thread, inside :func:`~bocpy.pump`, after every behavior
scheduled earlier on ``cown``, and resolves an :class:`asyncio.Future` with
the value.  The cown keeps its value: :func:`result` reads it, it does not
unwrap it.

Everything here must be used on the thread that runs the event loop, which
must belong to the main interpreter (pinned behaviors run there).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar, Unpack

from . import Cown, PinnedCown, wake_fd, whencall
from ._driver import PumpOptions, WakeFdDriver

__all__ = [
    "DEFAULT_POLL_MS",
    "Driver",
    "current",
    "driver",
    "install",
    "result",
    "uninstall",
]

#: How often a driver in ``"poll"`` mode pumps, in milliseconds.
DEFAULT_POLL_MS: Final = 10.0

T = TypeVar("T")

Mode = Literal["auto", "reader", "poll"]


class _Options(PumpOptions, total=False):
    """The keywords of :class:`Driver`, for :func:`install` and :func:`driver`."""

    mode: Mode
    poll_ms: float


#: How a driver refers to its loop: weakly where the loop allows it.
_LoopRef = Callable[[], asyncio.AbstractEventLoop | None]


class Driver(WakeFdDriver):
    """Runs bocpy's pinned behaviors from an asyncio event loop.

    ``mode`` picks how the driver learns about pinned work:

    ``"reader"``
        ``loop.add_reader(bocpy.wake_fd(), ...)``: the loop wakes exactly when
        pinned work arrives.  Needs a selector-based loop (the default on
        Linux and macOS, and uvloop).
    ``"poll"``
        pump every ``poll_ms`` milliseconds with ``loop.call_later``: for
        loops without ``add_reader`` (the Windows proactor loop).
    ``"auto"`` (the default)
        ``"reader"`` where the loop supports it, else ``"poll"``.

    Each wake-up calls ``bocpy.pump(deadline_ms, max_behaviors,
    raise_on_error)``.  When that stops with work left, the driver pumps again
    from ``loop.call_soon``, after the callbacks already due have run.  With
    ``raise_on_error=True`` a body's exception goes to the loop's exception
    handler (the driver keeps running); otherwise it stays on the behavior's
    result cown.

    A driver is installed on one loop, from the loop's thread, at a time;
    a loop has at most one driver.  The counters (``wakeups``, ``pumps``,
    ``executed``, ``raised``) say what the driver has done since it was made.
    """

    _int_only = True  # max_behaviors=True or 2.5 fails here, not at the first pump

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        deadline_ms: float | None = None,
        max_behaviors: int | None = None,
        raise_on_error: bool = False,
        mode: Mode = "auto",
        poll_ms: float = DEFAULT_POLL_MS,
    ) -> None:
        """Make a driver; :meth:`install` (or ``async with``) starts it.

        ``loop`` defaults to the loop running when the driver is installed.
        ``deadline_ms`` and ``max_behaviors`` bound one pump (``None``: run
        until the pinned queue is empty).
        """
        if mode not in ("auto", "reader", "poll"):
            raise ValueError(f"mode must be 'auto', 'reader' or 'poll', not {mode!r}")
        if not poll_ms > 0:
            raise ValueError(f"poll_ms must be > 0, got {poll_ms!r}")
        super().__init__(
            deadline_ms=deadline_ms, max_behaviors=max_behaviors, raise_on_error=raise_on_error
        )
        self._loop_ref: _LoopRef | None = None if loop is None else _ref(loop)
        self.requested_mode: Mode = mode
        self.poll_ms = poll_ms
        #: ``"reader"`` or ``"poll"`` once installed; ``None`` before.
        self.mode: Literal["reader", "poll"] | None = None
        self._automatic = False
        self._fd = -1
        self._watching = False  # the reader is registered
        self._later: asyncio.Handle | None = None  # the next scheduled pump
        self._later_is_continuation = False

    # ------------------------------------------------------------ properties

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop this driver runs on (``RuntimeError`` if it has none)."""
        loop = None if self._loop_ref is None else self._loop_ref()
        if loop is None:
            raise RuntimeError("this bocpy.aio.Driver has no event loop (it was never installed)")
        return loop

    @property
    def installed(self) -> bool:
        """Whether the driver is installed on a loop that is not closed."""
        if not self._installed:
            return False
        loop = None if self._loop_ref is None else self._loop_ref()
        return loop is not None and not loop.is_closed()

    def __repr__(self) -> str:
        return self._repr("bocpy.aio.Driver", self.mode, f"deadline_ms={self.deadline_ms}")

    # ------------------------------------------------------- install/remove

    def install(self) -> Driver:
        """Start pumping from the loop; returns the driver itself.

        Raises ``RuntimeError`` if the loop already has a driver that was
        installed explicitly (one installed automatically by :func:`result`
        is replaced), or if no loop was given and none is running.
        """
        if self._installed:
            return self
        if self._loop_ref is None:
            try:
                self._loop_ref = _ref(asyncio.get_running_loop())
            except RuntimeError:
                raise RuntimeError(
                    "bocpy.aio: no running event loop; pass the loop explicitly "
                    "(Driver(loop) / install(loop)) to install before it runs"
                ) from None
        loop = self.loop
        if loop.is_closed():
            raise RuntimeError("bocpy.aio: cannot install a driver on a closed event loop")
        existing = _registry.get(loop)
        if existing is not None and existing.installed:
            if not existing._automatic:
                raise RuntimeError(
                    f"bocpy.aio: the loop already has a driver ({existing!r}); "
                    "uninstall it first, or use bocpy.aio.current() to get it"
                )
            existing.uninstall()
        self._fd = wake_fd()
        mode = self.requested_mode
        if mode == "auto":
            mode = "reader" if self._fd >= 0 else "poll"
        if mode == "reader" and self._fd < 0:
            raise RuntimeError("bocpy.aio: bocpy.wake_fd() is unavailable; use mode='poll'")
        self._installed = True
        self._calm()
        if mode == "reader":
            try:
                self._watch()
            except NotImplementedError:
                if self.requested_mode == "reader":
                    self._installed = False
                    raise
                mode = "poll"
        self.mode = mode
        _registry.put(loop, self)
        if mode == "poll":
            self._schedule(self.poll_ms / 1000.0, continuation=False)
        return self

    def uninstall(self) -> None:
        """Stop pumping from the loop (idempotent).

        Pinned behaviors still queued stay queued: another driver,
        :func:`bocpy.pump` or :func:`bocpy.wait` runs them.
        """
        if not self._installed:
            return
        self._installed = False
        self._unwatch()
        self._cancel_later()
        loop = None if self._loop_ref is None else self._loop_ref()
        if loop is not None and _registry.get(loop) is self:
            _registry.remove(loop)

    async def __aenter__(self) -> Self:
        """Install on the running loop (see :meth:`install`)."""
        self.install()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Uninstall."""
        self.uninstall()

    # ---------------------------------------------------------------- pumping

    def _on_readable(self) -> None:
        """The wake fd is readable: pinned work arrived (or still waits)."""
        if not self._installed:
            return
        self.wakeups += 1
        if self._later is not None and self._later_is_continuation:
            return  # a continuation pump is already due: it will get there
        self._pump_once(from_wake=True)

    def _on_timer(self) -> None:
        """A scheduled pump: a continuation, a poll tick, or the end of a rest."""
        self._later = None
        if not self._installed:
            return
        if self.mode == "reader" and not self._watching:
            # A rest ends: look at the fd again.  If it is still readable the
            # reader fires at once and decides whether to rest longer.
            self._watch()
            return
        self._pump_once(from_wake=False)

    def _pump_once(self, *, from_wake: bool) -> None:
        # With raise_on_error a body's exception propagates out of this loop
        # callback, and asyncio hands it to the loop's exception handler.
        try:
            result = self.pump_now()
        finally:
            if not self._installed:
                pass
            elif self.mode == "poll" and self._later is None:
                self._schedule(self.poll_ms / 1000.0, continuation=False)
        if not self._installed:
            return
        self._after_pump(result, woken=from_wake)

    def _continue_soon(self) -> None:
        """Continue a pump stopped by its budget from ``loop.call_soon``."""
        self._cancel_later()
        self._schedule(0.0, continuation=True)

    def _rest(self, delay_ms: int) -> None:
        """Remove the reader of a wake fd that did not clear; look again later.

        See :class:`~bocpy._driver.WakeFdDriver` for why.
        """
        self._unwatch()
        self._cancel_later()
        self._schedule(delay_ms / 1000.0, continuation=False)

    # ------------------------------------------------------------- plumbing

    def _watch(self) -> None:
        self.loop.add_reader(self._fd, self._on_readable)
        self._watching = True

    def _unwatch(self) -> None:
        if not self._watching:
            return
        self._watching = False
        loop = None if self._loop_ref is None else self._loop_ref()
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)

    def _schedule(self, delay_s: float, *, continuation: bool) -> None:
        loop = self.loop
        if loop.is_closed():
            return
        if delay_s <= 0:
            self._later = loop.call_soon(self._on_timer)
        else:
            self._later = loop.call_later(delay_s, self._on_timer)
        self._later_is_continuation = continuation

    def _cancel_later(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None


# --------------------------------------------------------------- the registry


def _ref(loop: asyncio.AbstractEventLoop) -> _LoopRef:
    """A weak reference to ``loop`` where it allows one, else a strong one."""
    try:
        return weakref.ref(loop)
    except TypeError:
        return lambda: loop


class _Registry:
    """Which driver runs on which loop, without keeping closed loops alive."""

    def __init__(self) -> None:
        self._weak: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Driver] = (
            weakref.WeakKeyDictionary()
        )
        self._strong: dict[int, tuple[asyncio.AbstractEventLoop, Driver]] = {}

    def get(self, loop: asyncio.AbstractEventLoop) -> Driver | None:
        try:
            return self._weak.get(loop)
        except TypeError:
            entry = self._strong.get(id(loop))
            return entry[1] if entry is not None and entry[0] is loop else None

    def put(self, loop: asyncio.AbstractEventLoop, driver: Driver) -> None:
        try:
            self._weak[loop] = driver
        except TypeError:
            self._strong[id(loop)] = (loop, driver)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self._weak.pop(loop, None)
        except TypeError:
            self._strong.pop(id(loop), None)


_registry = _Registry()


def _resolve_loop(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    if loop is not None:
        return loop
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError("bocpy.aio: no running event loop; pass loop=") from None


# ------------------------------------------------------------ module functions


def install(loop: asyncio.AbstractEventLoop | None = None, **options: Unpack[_Options]) -> Driver:
    """Install a :class:`Driver` on ``loop`` (default: the running loop).

    ``options`` are the driver's keywords: ``deadline_ms=None``,
    ``max_behaviors=None``, ``raise_on_error=False``, ``mode="auto"``,
    ``poll_ms=DEFAULT_POLL_MS``.  Returns the driver; call its
    ``uninstall()`` (or :func:`uninstall`) to stop.  Raises ``RuntimeError``
    if the loop already has an explicitly installed driver.
    """
    return Driver(loop, **options).install()


def uninstall(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Uninstall the driver of ``loop`` (default: the running loop).

    Returns whether there was one.
    """
    found = _registry.get(_resolve_loop(loop))
    if found is None or not found.installed:
        return False
    found.uninstall()
    return True


def current(loop: asyncio.AbstractEventLoop | None = None) -> Driver | None:
    """The driver installed on ``loop`` (default: the running loop), if any."""
    found = _registry.get(_resolve_loop(loop))
    return found if found is not None and found.installed else None


def driver(**options: Unpack[_Options]) -> Driver:
    """A driver for ``async with``: installed on entry, uninstalled on exit.

    ``options`` are those of :func:`install`. ::

        async with bocpy.aio.driver(deadline_ms=5) as d:
            ...
    """
    return Driver(None, **options)


def _ensure_driver(loop: asyncio.AbstractEventLoop) -> Driver:
    found = _registry.get(loop)
    if found is not None and found.installed:
        return found
    made = Driver(loop)
    made._automatic = True
    return made.install()


# ----------------------------------------------------------------- result()


class _Completion:
    """Where a pinned completion behavior delivers a cown's value.

    Lives in a :class:`~bocpy.PinnedCown`, so it never leaves the main
    interpreter; the behavior runs on the main thread inside ``pump()``.
    """

    __slots__ = ("future", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.future = future
        self.thread = threading.get_ident()

    def deliver(self, source: Cown[Any]) -> None:
        """Read ``source`` (held by the running behavior) and resolve the future."""
        if self.future.done() or self.loop.is_closed():
            return  # the awaiting task was cancelled, or its loop is gone
        try:
            failed = source.exception
            value = source.value
        except Exception as error:  # any failure to read it goes to the awaiter
            failed, value = True, error
        if failed:
            value = _as_exception(value)
        if threading.get_ident() == self.thread:
            self._settle(failed, value)
            return
        # pump() ran on another thread (e.g. wait() on the main thread while
        # the loop runs in a second thread of the main interpreter).
        try:
            self.loop.call_soon_threadsafe(self._settle, failed, value)
        except RuntimeError:
            pass  # the loop closed meanwhile

    def _settle(self, failed: bool, value: Any) -> None:
        if self.future.done() or self.loop.is_closed():
            return
        try:
            if failed:
                self.future.set_exception(value)
            else:
                self.future.set_result(value)
        except RuntimeError:
            pass  # the loop closed while the future's callbacks were scheduled


def _as_exception(value: Any) -> BaseException:
    """``value`` as something ``Future.set_exception`` accepts."""
    if isinstance(value, StopIteration):
        error = RuntimeError(f"the behavior raised {value!r}")
        error.__cause__ = value
        return error
    if isinstance(value, BaseException):
        return value
    return RuntimeError(f"the behavior failed with a non-exception value: {value!r}")


def _complete(source: Cown[Any], sink: PinnedCown[_Completion]) -> None:
    """Pinned body of :func:`result`: hand ``source``'s value to the awaiter."""
    sink.value.deliver(source)


async def result(cown: Cown[T]) -> T:
    """Wait, without blocking the loop, for ``cown``'s value.

    Returns the value once every behavior scheduled on ``cown`` so far has
    run -- for a behavior's result cown (the name ``@when`` leaves behind),
    once that behavior has run.  If the value is an exception the body
    raised, that exception is raised here.  The cown keeps its value.

    Installs a :class:`Driver` on the running loop if it has none.  Many
    ``result()`` calls may be awaited at once (``asyncio.gather``); each
    costs one tiny pinned behavior.  Cancelling the awaiting task is safe:
    the pending behavior still runs, finds the future cancelled, and does
    nothing.
    """
    if not isinstance(cown, Cown):
        raise TypeError(
            f"bocpy.aio.result() awaits a Cown (e.g. the result cown a @when leaves "
            f"behind), not {type(cown).__name__!r}"
        )
    loop = asyncio.get_running_loop()
    _ensure_driver(loop)
    future: asyncio.Future[T] = loop.create_future()
    sink = PinnedCown(_Completion(loop, future))
    whencall(_complete, [cown, sink])
    return await future
