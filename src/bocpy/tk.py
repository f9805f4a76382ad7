"""Tk integration: run pinned behaviors from a Tk main loop.

::

    root = tkinter.Tk()
    label = PinnedCown(tkinter.Label(root))
    driver = bocpy.tk.install(root)
    ...                      # workers schedule @when(result, label) write-backs
    root.mainloop()
    driver.uninstall()

By default (``mode="auto"``) the driver registers :func:`bocpy.wake_fd` with
``root.tk.createfilehandler``, so Tk wakes up exactly when pinned work
arrives and the driver calls :func:`bocpy.pump`.  Where Tk has no file
handlers (Windows) or refuses one (a threaded Tcl called from another
thread), it falls back to polling: ``pump()`` every ``fallback_ms``
milliseconds with ``root.after``.  ``mode="after"`` forces polling and
``mode="filehandler"`` forbids the fallback.

With a ``deadline_ms`` budget a wake-up runs pinned behaviors for at most
that long; the rest runs from a ``root.after(1, ...)`` timer, which leaves Tk
time to redraw (Tk's idle work, redraws included, waits while a file handler
keeps firing).

Use the driver from the thread that created ``root``; that thread must
belong to the main interpreter (pinned behaviors run there), as Tk requires
anyway.

This module imports :mod:`tkinter` only when a driver is made: ``_tkinter``
cannot be loaded in a sub-interpreter, and a module whose behaviors run on
workers is imported by them, so ``import bocpy.tk`` must stay harmless there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from . import PumpResult, pump, wake_fd

if TYPE_CHECKING:
    import tkinter

__all__ = ["DEFAULT_FALLBACK_MS", "TkDriver", "install"]

#: Polling period of ``mode="after"``, in milliseconds (about one frame).
DEFAULT_FALLBACK_MS: Final = 16

#: Delay of the timer that continues a pump stopped by its budget, in ms.
_CONTINUE_MS: Final = 1

#: Longest pause (ms) between looks at a wake fd that stays readable although
#: ``pump()`` finds nothing to run (see :meth:`TkDriver._rest`).
_REST_MAX_MS: Final = 50

Mode = Literal["auto", "filehandler", "after"]

#: The driver watching the wake fd in file-handler mode.  Tcl keeps one
#: handler per fd (per thread), so a second would silently replace the first.
_watching: dict[int, TkDriver] = {}


class TkDriver:
    """Runs bocpy's pinned behaviors from a Tk event loop.

    Made by :func:`install`.  ``mode`` is ``"filehandler"`` or ``"after"``:
    how it ended up pumping.  The counters (``wakeups``, ``pumps``,
    ``executed``, ``raised``) say what it has done.
    """

    def __init__(
        self,
        root: tkinter.Misc,
        *,
        mode: Mode = "auto",
        fallback_ms: int = DEFAULT_FALLBACK_MS,
        deadline_ms: float | None = None,
        max_behaviors: int | None = None,
        raise_on_error: bool = False,
    ) -> None:
        """Make a driver for ``root`` (any widget of the Tk application)."""
        if mode not in ("auto", "filehandler", "after"):
            raise ValueError(f"mode must be 'auto', 'filehandler' or 'after', not {mode!r}")
        if isinstance(fallback_ms, bool) or not isinstance(fallback_ms, int) or fallback_ms < 1:
            raise ValueError(f"fallback_ms must be an int >= 1, got {fallback_ms!r}")
        if deadline_ms is not None and not deadline_ms > 0:
            raise ValueError(f"deadline_ms must be > 0 or None, got {deadline_ms!r}")
        if max_behaviors is not None and max_behaviors < 1:
            raise ValueError(f"max_behaviors must be >= 1 or None, got {max_behaviors!r}")
        self.root = root
        self.requested_mode: Mode = mode
        self.fallback_ms = fallback_ms
        self.deadline_ms = deadline_ms
        self.max_behaviors = max_behaviors
        self.raise_on_error = raise_on_error
        #: ``"filehandler"`` or ``"after"`` once installed; ``None`` before.
        self.mode: Literal["filehandler", "after"] | None = None
        #: Why ``mode="auto"`` fell back to ``"after"`` (``None`` if it did not).
        self.fallback_reason: str | None = None
        self.wakeups = 0
        self.pumps = 0
        self.executed = 0
        self.raised = 0
        self._installed = False
        self._fd = -1
        self._handler_set = False
        self._after_id: str | None = None
        self._empty_wakes = 0
        self._rest_ms = 0

    @property
    def installed(self) -> bool:
        """Whether the driver is installed."""
        return self._installed

    def __repr__(self) -> str:
        state = f"installed, mode={self.mode}" if self._installed else "not installed"
        return (
            f"<bocpy.tk.TkDriver {state}, wakeups={self.wakeups}, pumps={self.pumps}, "
            f"executed={self.executed}>"
        )

    # ------------------------------------------------------- install/remove

    def install(self) -> TkDriver:
        """Start pumping from Tk's event loop; returns the driver itself."""
        if self._installed:
            return self
        self._fd = wake_fd()
        self._installed = True
        self._empty_wakes = 0
        self._rest_ms = 0
        mode: Literal["filehandler", "after"] = "after"
        if self.requested_mode != "after":
            reason = self._try_filehandler()
            if reason is None:
                mode = "filehandler"
            elif self.requested_mode == "filehandler":
                self._installed = False
                raise RuntimeError(f"bocpy.tk: cannot watch the wake fd: {reason}")
            else:
                self.fallback_reason = reason
        self.mode = mode
        if mode == "after":
            self._after(self.fallback_ms)
        return self

    def uninstall(self) -> None:
        """Stop pumping (idempotent); queued pinned work stays queued."""
        if not self._installed:
            return
        self._installed = False
        self._unwatch()
        self._cancel_after()

    def _try_filehandler(self) -> str | None:
        """Register the file handler; on failure say why (``None``: it worked)."""
        import tkinter

        if self._fd < 0:
            return "bocpy.wake_fd() is unavailable on this platform"
        tk = self.root.tk
        if not hasattr(tk, "createfilehandler"):
            return "this Tk has no createfilehandler (Windows)"
        other = _watching.get(self._fd)
        if other is not None and other is not self and other._installed:
            return f"another driver ({other!r}) already watches the wake fd"
        try:
            self._watch()
        except (RuntimeError, tkinter.TclError) as error:
            return f"createfilehandler failed: {error}"
        return None

    # ---------------------------------------------------------------- pumping

    def pump_now(self) -> PumpResult:
        """Run one pump with this driver's limits, now, and count it.

        With ``raise_on_error=True`` a body's exception propagates from here.
        """
        self.pumps += 1
        try:
            result = pump(self.deadline_ms, self.max_behaviors, self.raise_on_error)
        except Exception:
            # raise_on_error: a body raised (behaviors run before it in the
            # same pump are not counted)
            self.executed += 1
            self.raised += 1
            raise
        self.executed += result.executed
        self.raised += result.raised
        return result

    def _stopped_early(self, result: PumpResult) -> bool:
        if result.deadline_reached:
            return True
        return self.max_behaviors is not None and result.executed >= self.max_behaviors

    def _pump_reporting(self) -> PumpResult | None:
        """:meth:`pump_now`, handing a body's exception to Tk (``None`` then).

        With ``raise_on_error=True`` the exception goes where Tk sends errors
        from callbacks: ``report_callback_exception`` of the root.
        """
        try:
            return self.pump_now()
        except Exception as error:
            tk_root: Any = self.root.nametowidget(".")  # the Tk instance
            tk_root.report_callback_exception(type(error), error, error.__traceback__)
            return None

    def _root_alive(self) -> bool:
        import tkinter

        try:
            return bool(self.root.winfo_exists())
        except tkinter.TclError:
            return False

    def _on_readable(self, fd: Any, mask: Any) -> None:
        """Tk's file handler: the wake fd is readable."""
        if not self._installed:
            return
        if not self._root_alive():
            self.uninstall()
            return
        self.wakeups += 1
        result = self._pump_reporting()
        if result is None:
            return  # the fd stays readable if work is left: Tk calls again
        if self._stopped_early(result):
            # Keep the rest off the file handler, or Tk would never idle
            # (redraw) while the fd stays readable.
            self._empty_wakes = 0
            self._rest_ms = 0
            self._unwatch()
            self._after(_CONTINUE_MS)
        elif result.executed > 0:
            self._empty_wakes = 0
            self._rest_ms = 0
        else:
            self._empty_wakes += 1
            if self._empty_wakes >= 2:
                self._rest()

    def _rest(self) -> None:
        """Stop watching a wake fd that stays readable with nothing to pump.

        ``pump()`` clears the fd, so two wake-ups in a row that find nothing
        mean it did not clear (no runtime is running, the signalling thread
        has not yet marked the fd armed, or another thread is pumping);
        watching it would spin Tk.  Look again after a pause that doubles up
        to 50 ms, until a pump runs something.
        """
        self._unwatch()
        self._rest_ms = min(_REST_MAX_MS, max(1, self._rest_ms * 2))
        self._after(self._rest_ms)

    def _on_timer(self) -> None:
        """An ``after`` timer: a poll tick, a continuation, or a rest's end."""
        self._after_id = None
        if not self._installed:
            return
        if not self._root_alive():
            self.uninstall()
            return
        if self.mode == "filehandler":
            if self._empty_wakes >= 2:
                self._watch()  # a rest ends: the handler fires if still readable
                return
            result = self._pump_reporting()  # continuing a pump stopped early
            if not self._installed:
                return  # a pinned body uninstalled the driver
            if result is not None and self._stopped_early(result):
                self._after(_CONTINUE_MS)
            else:
                self._watch()
            return
        result = self._pump_reporting()
        if not self._installed:
            return  # a pinned body uninstalled the driver
        if result is not None and self._stopped_early(result):
            self._after(_CONTINUE_MS)
        else:
            self._after(self.fallback_ms)

    # ------------------------------------------------------------- plumbing

    def _watch(self) -> None:
        import tkinter

        if self._handler_set:
            return
        self.root.tk.createfilehandler(self._fd, tkinter.READABLE, self._on_readable)
        self._handler_set = True
        _watching[self._fd] = self

    def _unwatch(self) -> None:
        import tkinter

        if not self._handler_set:
            return
        self._handler_set = False
        if _watching.get(self._fd) is self:
            del _watching[self._fd]
        try:
            self.root.tk.deletefilehandler(self._fd)
        except (RuntimeError, tkinter.TclError):
            pass

    def _after(self, ms: int) -> None:
        import tkinter

        try:
            self._after_id = self.root.after(ms, self._on_timer)
        except tkinter.TclError:
            self._after_id = None  # the application is gone

    def _cancel_after(self) -> None:
        import tkinter

        if self._after_id is None:
            return
        after_id, self._after_id = self._after_id, None
        try:
            self.root.after_cancel(after_id)
        except tkinter.TclError:
            pass


def install(
    root: tkinter.Misc,
    *,
    mode: Mode = "auto",
    fallback_ms: int = DEFAULT_FALLBACK_MS,
    deadline_ms: float | None = None,
    max_behaviors: int | None = None,
    raise_on_error: bool = False,
) -> TkDriver:
    """Pump pinned behaviors from ``root``'s Tk event loop; returns the driver.

    ``mode="auto"`` watches :func:`bocpy.wake_fd` with
    ``root.tk.createfilehandler`` and falls back to ``root.after(fallback_ms,
    ...)`` polling where that is unavailable; ``mode="after"`` always polls;
    ``mode="filehandler"`` raises ``RuntimeError`` instead of falling back.
    ``deadline_ms`` / ``max_behaviors`` bound each pump.  Call the driver's
    ``uninstall()`` to stop.
    """
    return TkDriver(
        root,
        mode=mode,
        fallback_ms=fallback_ms,
        deadline_ms=deadline_ms,
        max_behaviors=max_behaviors,
        raise_on_error=raise_on_error,
    ).install()
