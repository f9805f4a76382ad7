"""pyglet integration: pump pinned behaviors from pyglet's clock.

::

    import pyglet
    import bocpy.pyglet_driver

    driver = bocpy.pyglet_driver.install()      # pump() 120 times a second
    pyglet.app.run()
    driver.uninstall()

:func:`install` schedules :func:`bocpy.pump` on a pyglet clock with
``clock.schedule_interval``, so pinned behaviors (pyglet shapes, sprites,
GL state in a :class:`~bocpy.PinnedCown`) run between frames on the thread
that runs ``pyglet.app.run()``.  The latency of pinned work is one
``interval`` at most.  Give ``deadline_ms`` to bound the time one tick may
spend on pinned work and keep the frame rate.

The module is named ``pyglet_driver`` so that ``from bocpy import
pyglet_driver`` cannot shadow the real ``pyglet`` in a program's namespace.
pyglet itself is imported only when :func:`install` needs its default clock:
pass ``clock=`` (any object with ``schedule_interval`` and ``unschedule``,
such as a ``pyglet.clock.Clock``) to use another one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final, Protocol, Unpack

from . import PumpResult
from ._driver import PumpDriver, PumpOptions

__all__ = ["DEFAULT_INTERVAL", "Clock", "PygletDriver", "default_clock", "install"]

#: Seconds between two pumps by default: 120 times a second, twice a 60 Hz
#: frame, so write-backs scheduled during a frame land before the next one.
DEFAULT_INTERVAL: Final = 1 / 120


class Clock(Protocol):
    """What the driver needs of a clock (``pyglet.clock.Clock`` has it)."""

    def schedule_interval(
        self, func: Callable[..., Any], interval: float, *args: Any, **kwargs: Any
    ) -> None:
        """Call ``func(dt)`` every ``interval`` seconds."""

    def unschedule(self, func: Callable[..., Any]) -> None:
        """Stop calling ``func``."""


class _Options(PumpOptions, total=False):
    """The keywords of :class:`PygletDriver`, for :func:`install`."""

    clock: Clock | None


def default_clock() -> Clock:
    """pyglet's default clock (the one ``pyglet.app.run()`` ticks).

    Raises ``ImportError`` with a hint when pyglet is not installed.
    """
    try:
        module = importlib.import_module("pyglet.clock")
    except ImportError as error:
        raise ImportError(
            "bocpy.pyglet_driver needs pyglet for its default clock: pip install pyglet"
        ) from error
    clock: Clock = module.get_default()
    return clock


class PygletDriver(PumpDriver):
    """Calls :func:`bocpy.pump` from a pyglet clock.  Made by :func:`install`.

    ``ticks`` counts the clock's calls; ``executed`` and ``raised`` add up
    the pumps' results; ``last_result`` is the latest :class:`PumpResult`.
    """

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        clock: Clock | None = None,
        deadline_ms: float | None = None,
        max_behaviors: int | None = None,
        raise_on_error: bool = False,
    ) -> None:
        """Make a driver; :meth:`install` schedules it."""
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError(f"interval must be a number of seconds, not {interval!r}")
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        super().__init__(
            deadline_ms=deadline_ms, max_behaviors=max_behaviors, raise_on_error=raise_on_error
        )
        self.interval = float(interval)
        self._clock = clock
        self.ticks = 0
        self.last_result: PumpResult | None = None

    @property
    def clock(self) -> Clock:
        """The clock that calls the driver (pyglet's default if none was given)."""
        if self._clock is None:
            self._clock = default_clock()
        return self._clock

    @property
    def installed(self) -> bool:
        """Whether the driver is scheduled on its clock."""
        return self._installed

    def __repr__(self) -> str:
        state = "installed" if self._installed else "not installed"
        return (
            f"<bocpy.pyglet_driver.PygletDriver {state}, interval={self.interval:g}s, "
            f"ticks={self.ticks}, executed={self.executed}>"
        )

    def install(self) -> PygletDriver:
        """Schedule the pump on the clock; returns the driver itself."""
        if not self._installed:
            self.clock.schedule_interval(self._tick, self.interval)
            self._installed = True
        return self

    def uninstall(self) -> None:
        """Unschedule the pump (idempotent); queued pinned work stays queued."""
        if self._installed:
            self._installed = False
            self.clock.unschedule(self._tick)

    def _tick(self, dt: float) -> None:
        """The scheduled function: one pump.

        With ``raise_on_error=True`` a body's exception propagates to pyglet's
        clock.
        """
        self.ticks += 1
        self.last_result = self._pump_counted()


def install(interval: float = DEFAULT_INTERVAL, **options: Unpack[_Options]) -> PygletDriver:
    """Pump pinned behaviors every ``interval`` seconds of a pyglet clock.

    ``options`` are the driver's keywords: ``clock=None``,
    ``deadline_ms=None``, ``max_behaviors=None``, ``raise_on_error=False``.
    ``clock`` defaults to pyglet's default clock (``pyglet.clock``, ticked by
    ``pyglet.app.run()``).  Returns the driver; call its ``uninstall()`` to
    stop.
    """
    return PygletDriver(interval, **options).install()
