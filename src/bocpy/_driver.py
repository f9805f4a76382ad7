"""The pump logic that the event-loop drivers share (private).

:mod:`bocpy.aio`, :mod:`bocpy.tk` and :mod:`bocpy.pyglet_driver` each run
pinned behaviors by calling :func:`bocpy.pump` from a host loop.  What differs
between them is how the host calls back (a reader, a file handler, a clock)
and where a body's exception goes; what is the same lives here:

* :class:`PumpDriver` -- the budget every driver takes (``deadline_ms``,
  ``max_behaviors``, ``raise_on_error``), its validation, one pump with that
  budget, the ``executed`` / ``raised`` totals, and whether a pump stopped
  early with work left;
* :class:`WakeFdDriver` -- for drivers woken by :func:`bocpy.wake_fd`: the
  ``wakeups`` / ``pumps`` counters, :meth:`~WakeFdDriver.pump_now`, a pump
  that reports a body's exception through a host hook, and the decision that
  follows a pump (continue soon, carry on, or back off from a wake fd that
  stays readable with nothing to run).
"""

from __future__ import annotations

import math
from typing import ClassVar, Final, TypedDict, Unpack

from . import PumpResult, pump

__all__ = ["REST_MAX_MS", "PumpDriver", "PumpOptions", "WakeFdDriver", "check_budget"]

#: Longest pause, in milliseconds, between two looks at a wake fd that stays
#: readable although :func:`bocpy.pump` finds nothing to run.
REST_MAX_MS: Final = 50

#: Wake-ups in a row that run nothing before a driver stops watching the fd.
_EMPTY_WAKES_TO_REST: Final = 2


class PumpOptions(TypedDict, total=False):
    """The budget keywords every driver takes and passes to each pump."""

    deadline_ms: float | None
    max_behaviors: int | None
    raise_on_error: bool


def check_budget(
    deadline_ms: float | None, max_behaviors: int | None, *, int_only: bool = False
) -> None:
    """Raise ``ValueError`` (or ``TypeError``) for a budget no pump accepts.

    With ``int_only`` a ``max_behaviors`` that is not an ``int`` (``bool``
    included) is refused here rather than by the first pump.
    """
    if deadline_ms is not None and not deadline_ms > 0:
        raise ValueError(f"deadline_ms must be > 0 or None, got {deadline_ms!r}")
    if (
        int_only
        and max_behaviors is not None
        and (isinstance(max_behaviors, bool) or not isinstance(max_behaviors, int))
    ):
        raise TypeError(f"max_behaviors must be an int or None, not {max_behaviors!r}")
    if max_behaviors is not None and max_behaviors < 1:
        raise ValueError(f"max_behaviors must be >= 1 or None, got {max_behaviors!r}")


#: The largest deadline pump() takes (its nanoseconds fit an int64).
_MAX_MS: Final = (1 << 63) // 1_000_000 - 1


def _whole_ms(deadline_ms: float | None) -> int | None:
    """A driver's deadline (any positive number) as pump() takes it: whole ms.

    Rounded up, so a fraction of a millisecond still lets one behavior start.
    """
    if deadline_ms is None:
        return None
    if deadline_ms >= _MAX_MS:
        return _MAX_MS
    return max(1, math.ceil(deadline_ms))


class PumpDriver:
    """A pump budget and the totals of what the driver's pumps ran.

    ``deadline_ms`` and ``max_behaviors`` bound one pump (``None``: run until
    the pinned queue is empty); ``raise_on_error`` makes a body's exception
    propagate from the pump instead of staying on the behavior's result cown.
    ``executed`` and ``raised`` add up the pumps' results.
    """

    #: Refuse a ``max_behaviors`` that is not an ``int`` when the driver is
    #: made (see :func:`check_budget`).
    _int_only: ClassVar[bool] = False

    def __init__(self, **budget: Unpack[PumpOptions]) -> None:
        """Check the budget (see :func:`check_budget`) and zero the totals.

        A keyword left out means no limit (``raise_on_error``: ``False``).
        """
        deadline_ms = budget.get("deadline_ms")
        max_behaviors = budget.get("max_behaviors")
        check_budget(deadline_ms, max_behaviors, int_only=self._int_only)
        self.deadline_ms = deadline_ms
        self.max_behaviors = max_behaviors
        self.raise_on_error = budget.get("raise_on_error", False)
        self.executed = 0
        self.raised = 0
        self._installed = False

    def _pump_counted(self) -> PumpResult:
        """Run one pump with the budget and add its result to the totals.

        With ``raise_on_error=True`` a body's exception propagates from here.
        """
        try:
            result = pump(_whole_ms(self.deadline_ms), self.max_behaviors, self.raise_on_error)
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
        """Whether ``result`` says the pump left work it was not allowed to run."""
        if result.deadline_reached:
            return True
        return self.max_behaviors is not None and result.executed >= self.max_behaviors


class WakeFdDriver(PumpDriver):
    """A :class:`PumpDriver` that a host loop calls when the wake fd is readable.

    The counters ``wakeups`` (calls because the fd was readable) and
    ``pumps`` (pumps run) say what the driver has done.  A subclass provides
    the host's side: :meth:`_continue_soon`, :meth:`_rest` and, where it
    catches a body's exception itself, :meth:`_report_error`.

    Backing off: ``pump()`` clears the wake fd, so a second wake-up in a row
    that runs nothing means the fd did not clear -- no runtime is running
    (``wait()`` tore it down right after a wake-up), the thread that
    signalled has not yet marked the fd armed (``pump()`` reads it only
    then), or another thread is pumping.  Watching it would spin the host
    loop, so the driver stops watching and looks again after a pause that
    doubles from 1 ms up to :data:`REST_MAX_MS`, until a pump runs something.
    """

    def __init__(self, **budget: Unpack[PumpOptions]) -> None:
        """Check the budget and zero the counters."""
        super().__init__(**budget)
        self.wakeups = 0
        self.pumps = 0
        self._empty_wakes = 0
        self._rest_ms = 0

    def _repr(self, name: str, mode: str | None, *details: str) -> str:
        """A ``repr``: the driver's ``name``, state, ``details`` and counters."""
        state = f"installed, mode={mode}" if self._installed else "not installed"
        counters = f"wakeups={self.wakeups}, pumps={self.pumps}, executed={self.executed}"
        return f"<{name} {state}, {', '.join((*details, counters))}>"

    def pump_now(self) -> PumpResult:
        """Run one pump with this driver's limits, now, and count it.

        With ``raise_on_error=True`` a body's exception propagates from here.
        """
        self.pumps += 1
        return self._pump_counted()

    def _pump_reporting(self) -> PumpResult | None:
        """:meth:`pump_now`, handing a body's exception to :meth:`_report_error`.

        Returns ``None`` when the hook took the exception.
        """
        try:
            return self.pump_now()
        except Exception as error:
            self._report_error(error)
            return None

    def _report_error(self, error: Exception) -> None:
        """Hand a body's exception (``raise_on_error=True``) to the host.

        Hosts that report what their callbacks raise (asyncio) need no hook:
        they call :meth:`pump_now` and let the exception propagate.
        """
        raise NotImplementedError

    # ------------------------------------------------------------ backing off

    @property
    def _resting(self) -> bool:
        """Whether the driver stopped watching a fd that did not clear."""
        return self._empty_wakes >= _EMPTY_WAKES_TO_REST

    def _calm(self) -> None:
        """Forget earlier empty wake-ups: the next rest starts at 1 ms again."""
        self._empty_wakes = 0
        self._rest_ms = 0

    def _after_pump(self, result: PumpResult, *, woken: bool) -> None:
        """Decide what follows a pump that the wake fd (``woken``) or a timer started.

        A pump stopped by its budget continues soon (:meth:`_continue_soon`);
        one that ran something, or that a timer started, is normal; a second
        wake-up in a row that ran nothing rests (:meth:`_rest`).
        """
        if self._stopped_early(result):
            self._calm()
            self._continue_soon()
        elif result.executed > 0 or not woken:
            self._calm()
        else:
            self._empty_wakes += 1
            if self._resting:
                self._rest_ms = min(REST_MAX_MS, max(1, self._rest_ms * 2))
                self._rest(self._rest_ms)

    def _continue_soon(self) -> None:
        """Pump again from a fresh host callback, after the host's due events."""
        raise NotImplementedError

    def _rest(self, delay_ms: int) -> None:
        """Stop watching the wake fd; look again in ``delay_ms`` milliseconds."""
        raise NotImplementedError
