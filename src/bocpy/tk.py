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

from typing import TYPE_CHECKING, Any, Final, Literal, Unpack

from . import wake_fd
from ._driver import PumpOptions, WakeFdDriver

if TYPE_CHECKING:
    import tkinter

__all__ = ["DEFAULT_FALLBACK_MS", "TkDriver", "install"]

#: Polling period of ``mode="after"``, in milliseconds (about one frame).
DEFAULT_FALLBACK_MS: Final = 16

#: Delay of the timer that continues a pump stopped by its budget, in ms.
_CONTINUE_MS: Final = 1

Mode = Literal["auto", "filehandler", "after"]


class _Options(PumpOptions, total=False):
    """The keywords of :class:`TkDriver`, for :func:`install`."""

    mode: Mode
    fallback_ms: int


#: The driver watching the wake fd in file-handler mode.  Tcl keeps one
#: handler per fd (per thread), so a second would silently replace the first.
_watching: dict[int, TkDriver] = {}


class TkDriver(WakeFdDriver):
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
        super().__init__(
            deadline_ms=deadline_ms, max_behaviors=max_behaviors, raise_on_error=raise_on_error
        )
        self.root = root
        self.requested_mode: Mode = mode
        self.fallback_ms = fallback_ms
        #: ``"filehandler"`` or ``"after"`` once installed; ``None`` before.
        self.mode: Literal["filehandler", "after"] | None = None
        #: Why ``mode="auto"`` fell back to ``"after"`` (``None`` if it did not).
        self.fallback_reason: str | None = None
        self._fd = -1
        self._handler_set = False
        self._after_id: str | None = None

    @property
    def installed(self) -> bool:
        """Whether the driver is installed."""
        return self._installed

    def __repr__(self) -> str:
        return self._repr("bocpy.tk.TkDriver", self.mode)

    # ------------------------------------------------------- install/remove

    def install(self) -> TkDriver:
        """Start pumping from Tk's event loop; returns the driver itself."""
        if self._installed:
            return self
        self._fd = wake_fd()
        self._installed = True
        self._calm()
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

    def _report_error(self, error: Exception) -> None:
        """Send a body's exception where Tk sends errors from callbacks.

        That is ``report_callback_exception`` of the root (``raise_on_error=True``).
        """
        tk_root: Any = self.root.nametowidget(".")  # the Tk instance
        tk_root.report_callback_exception(type(error), error, error.__traceback__)

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
        self._after_pump(result, woken=True)

    def _continue_soon(self) -> None:
        """Continue a pump stopped by its budget from ``root.after(1, ...)``.

        The file handler is off meanwhile, or Tk would never idle (redraw)
        while the fd stays readable.
        """
        self._unwatch()
        self._after(_CONTINUE_MS)

    def _rest(self, delay_ms: int) -> None:
        """Remove the file handler of a wake fd that did not clear; look again later.

        Watching it would spin Tk; see :class:`~bocpy._driver.WakeFdDriver`.
        """
        self._unwatch()
        self._after(delay_ms)

    def _on_timer(self) -> None:
        """An ``after`` timer: a poll tick, a continuation, or a rest's end."""
        self._after_id = None
        if not self._installed:
            return
        if not self._root_alive():
            self.uninstall()
            return
        if self.mode == "filehandler":
            if self._resting:
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


def install(root: tkinter.Misc, **options: Unpack[_Options]) -> TkDriver:
    """Pump pinned behaviors from ``root``'s Tk event loop; returns the driver.

    ``options`` are the driver's keywords: ``mode="auto"``,
    ``fallback_ms=DEFAULT_FALLBACK_MS``, ``deadline_ms=None``,
    ``max_behaviors=None``, ``raise_on_error=False``.  ``mode="auto"``
    watches :func:`bocpy.wake_fd` with ``root.tk.createfilehandler`` and
    falls back to ``root.after(fallback_ms, ...)`` polling where that is
    unavailable; ``mode="after"`` always polls; ``mode="filehandler"`` raises
    ``RuntimeError`` instead of falling back.  ``deadline_ms`` /
    ``max_behaviors`` bound each pump.  Call the driver's ``uninstall()`` to
    stop.
    """
    return TkDriver(root, **options).install()
