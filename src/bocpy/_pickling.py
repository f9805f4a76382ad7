"""The extended pickler bocpy falls back on when the C pickler refuses a value.

The standard pickler sends functions by reference (module + qualified
name), so it refuses lambdas and functions defined inside other functions.
bocpy can do better: behavior code already travels through its code
registry, so such a function is sent as its registry id plus its defaults
and closure values, and rebuilt in the receiving interpreter against that
interpreter's import of the defining module.

Exceptions always travel through this pickler, as a "recipe" that keeps
what the standard one loses (see :func:`_exception_recipe`): the
``__cause__``/``__context__`` chain, the traceback (as a note), and classes
whose ``__init__`` does not take back their ``args``.  An exception whose
class cannot be rebuilt in the receiving interpreter arrives as
:class:`UnrebuildableError`, which names it.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
import types
from typing import Any

from . import _core


def _loads_in_frame(data: Any, loads: Any = None) -> Any:
    """Unpickle ``data`` from inside a Python frame (see ``transfer.c``).

    The binding runs a copy of this function's code with the interpreter's
    ``__main__`` namespace as globals and ``pickle.loads`` as ``loads``, so
    that a reducer calling ``eval`` works as it does for messages.
    """
    return loads(data)


class UnrebuildableError(Exception):
    """An exception whose class could not be rebuilt in this interpreter.

    It stands in for an exception raised in another interpreter (a behavior
    on a worker, usually) when that exception's class cannot be imported or
    recreated here.  ``type_name`` is the original class (``module.QualName``),
    ``message`` its ``str()``, and ``reason`` why it could not be rebuilt;
    ``__cause__``, ``__context__`` and the notes (with the behavior's
    traceback) are those of the original.
    """

    def __init__(self, type_name: str, message: str, reason: str) -> None:
        super().__init__(
            f"{type_name}: {message} (this exception's class could not be rebuilt "
            f"in this interpreter: {reason})"
        )
        self.type_name = type_name
        self.message = message
        self.reason = reason


def _importable(func: types.FunctionType) -> bool:
    """True if pickling ``func`` by reference would find this very object."""
    module = sys.modules.get(func.__module__ or "")
    target: Any = module
    for part in func.__qualname__.split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is func


def _cell_values(func: types.FunctionType) -> tuple[tuple[Any, ...], ...] | None:
    if func.__closure__ is None:
        return None
    cells: list[tuple[Any, ...]] = []
    for cell in func.__closure__:
        try:
            cells.append((True, cell.cell_contents))
        except ValueError:  # an empty cell
            cells.append((False,))
    return tuple(cells)


def _empty_cells(func: types.FunctionType) -> tuple[tuple[bool], ...] | None:
    if func.__closure__ is None:
        return None
    return tuple((False,) for _ in func.__closure__)


def _set_function_state(func: types.FunctionType, state: tuple[Any, ...]) -> None:
    """Fill in a function rebuilt with empty cells (pickle's state setter).

    The function is created first and memoised by the pickler, and only then
    are its defaults and closure values pickled: a closure that refers back
    to the function (recursion, mutual recursion) then finds it in the memo.
    """
    defaults, kwdefaults, cells = state
    func.__defaults__ = defaults
    func.__kwdefaults__ = kwdefaults
    if cells is not None and func.__closure__ is not None:
        for cell, entry in zip(func.__closure__, cells, strict=True):
            if entry[0]:
                cell.cell_contents = entry[1]


# ----------------------------------------------------------------- exceptions

_TRACEBACK_NOTE = "Behavior traceback (most recent call last):"
_FOREIGN_TRACEBACK_NOTE = "Traceback where it was raised (most recent call last):"


def _dumps_part(obj: Any) -> bytes:
    """Pickle one part of an exception's recipe with this module's pickler.

    Called while the enclosing value is being serialised, so cowns inside
    the part join that value's blob, and are found again when it is read.
    """
    buffer = io.BytesIO()
    _Pickler(buffer, pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _builtin_base(cls: type) -> type:
    """The nearest built-in class in ``cls``'s MRO (``Exception`` at worst)."""
    for klass in cls.__mro__:
        if klass.__module__ == "builtins":
            return klass
    return BaseException


def _exception_body(exc: BaseException) -> tuple[bytes | None, list[str]]:
    """The pickled ``(how, class, reduced)`` that rebuilds ``exc``'s own state.

    ``reduced`` is what ``exc.__reduce_ex__`` gives.  ``how`` is ``"call"``
    for built-in classes and classes with their own ``__reduce__`` (rebuilt
    the standard way), else ``"new"``: ``cls.__new__(cls, *args)``, then the
    built-in base's ``__init__`` (which fills C-level fields such as
    ``OSError.errno`` from args) and the instance dict -- the class's own
    ``__init__`` is not called, so one that takes other arguments than it
    passed on (``def __init__(self, a, b)``) still rebuilds.  Parts that
    cannot be pickled are dropped in steps (the dict, then args); the second
    item lists what was dropped.  ``None`` when even the class cannot go.
    """
    cls = type(exc)
    dropped: list[str] = []
    try:
        reduced = exc.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    except Exception as err:  # a __reduce__ that raises
        reduced = (cls, exc.args, None)
        dropped.append(f"its own __reduce__ failed ({type(err).__name__}: {err})")
    if not isinstance(reduced, tuple) or len(reduced) < 2:
        reduced = (cls, exc.args, getattr(exc, "__dict__", None))
    standard_shape = reduced[0] is cls and len(reduced) <= 3
    base: Any = _builtin_base(cls)
    klass: Any = cls
    own_reduce = (
        base.__reduce__ is not klass.__reduce__ or base.__reduce_ex__ is not klass.__reduce_ex__
    )
    how = "new" if standard_shape and cls.__module__ != "builtins" and not own_reduce else "call"
    attempts: list[tuple[Any, ...]] = [reduced]
    if standard_shape:
        state = reduced[2] if len(reduced) > 2 else None
        if state:
            attempts.append((cls, reduced[1], None))
        attempts.append((cls, (str(exc),), None))
    last_error: BaseException | None = None
    for index, attempt in enumerate(attempts):
        try:
            body = _dumps_part((how, cls, attempt))
        except Exception as err:
            last_error = err
            continue
        if index >= 1:
            dropped.append(
                "its attributes could not be sent"
                + (" and its args were replaced by its message" if index == 2 else "")
                + f" ({type(last_error).__name__}: {last_error})"
            )
        return body, dropped
    # Not even the class: it cannot be pickled by reference (defined
    # inside a function, say).
    dropped.append(f"its class could not be sent ({type(last_error).__name__}: {last_error})")
    return None, dropped


def _exception_recipe(exc: BaseException) -> list[tuple[Any, ...]]:
    """Flatten ``exc`` and its ``__cause__``/``__context__`` chain into nodes.

    Node 0 is ``exc``; each node is ``(type_name, message, body, notes,
    cause, context, suppress_context)`` where ``cause``/``context`` are node
    indexes (or -1).  Indexes keep shared links shared and make cycles safe.
    """
    index: dict[int, int] = {}
    order: list[BaseException] = []

    def visit(e: BaseException) -> int:
        if id(e) not in index:
            index[id(e)] = len(order)
            order.append(e)
        return index[id(e)]

    visit(exc)
    nodes: list[tuple[Any, ...]] = []
    i = 0
    while i < len(order):
        e = order[i]
        i += 1
        cls = type(e)
        type_name = f"{cls.__module__}.{cls.__qualname__}"
        try:
            message = str(e)
        except Exception as err:
            message = f"<str() failed: {type(err).__name__}>"
        body, dropped = _exception_body(e)
        notes = [f"bocpy: when sent between interpreters, {what}" for what in dropped]
        own_notes = getattr(e, "__notes__", None) or []
        tb = e.__traceback__
        if tb is not None and not any(
            isinstance(n, str) and n.startswith(_TRACEBACK_NOTE) for n in own_notes
        ):
            notes.append(_FOREIGN_TRACEBACK_NOTE + "\n" + "".join(traceback.format_tb(tb)))
        cause = visit(e.__cause__) if isinstance(e.__cause__, BaseException) else -1
        context = visit(e.__context__) if isinstance(e.__context__, BaseException) else -1
        nodes.append((type_name, message, body, notes, cause, context, e.__suppress_context__))
    return nodes


def _construct(how: str, cls: type, reduced: tuple[Any, ...]) -> BaseException:
    """Rebuild an exception from ``_exception_body``'s parts."""
    func, args = reduced[0], reduced[1]
    state = reduced[2] if len(reduced) > 2 else None
    exc: Any = None
    if how == "new":
        try:
            exc = cls.__new__(cls, *args)
            base: Any = _builtin_base(cls)
            base.__init__(exc, *args)
        except Exception:
            exc = None  # fall back to the standard way
    if exc is None:
        exc = func(*args)
    if state:
        setstate = getattr(exc, "__setstate__", None)
        if setstate is not None:
            setstate(state)
        else:
            exc.__dict__.update(state)
    if not isinstance(exc, BaseException):
        raise TypeError(f"rebuilding gave a {type(exc).__name__}, not an exception")
    return exc


def _rebuild_exception(nodes: list[tuple[Any, ...]]) -> BaseException:
    """The receiving side of :func:`_exception_recipe`."""
    built: list[BaseException] = []
    for type_name, message, body, notes, _cause, _context, _suppress in nodes:
        exc: BaseException | None = None
        reason = "; ".join(n for n in notes if n.startswith("bocpy:")) or "unknown"
        if body is not None:
            try:
                how, cls, reduced = pickle.loads(body)
                exc = _construct(how, cls, reduced)
            except Exception as err:
                reason = f"{type(err).__name__}: {err}"
        if exc is None:
            exc = UnrebuildableError(type_name, message, reason)
        for note in notes:
            exc.add_note(note)
        built.append(exc)
    for exc, (*_, cause, context, suppress) in zip(built, nodes, strict=True):
        exc.__cause__ = built[cause] if cause >= 0 else None
        exc.__context__ = built[context] if context >= 0 else None
        exc.__suppress_context__ = suppress
    return built[0]


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException):
            return (_rebuild_exception, (_exception_recipe(obj),))
        if type(obj) is types.FunctionType and not _importable(obj):
            code_id = _core._register_code(obj)
            state = (obj.__defaults__, obj.__kwdefaults__, _cell_values(obj))
            return (
                _core._rebuild_function,
                (code_id, None, None, _empty_cells(obj)),
                state,
                None,
                None,
                _set_function_state,
            )
        return NotImplemented


def dumps(obj: Any, dispatch_table: dict[type, Any] | None = None) -> bytes:
    """Pickle ``obj``, sending local functions and lambdas by code.

    ``dispatch_table``, when given, is the pickler's: bocpy passes the one
    that moves registered buffer types (see ``<bocpy/move.h>``).
    """
    buffer = io.BytesIO()
    # The protocol is passed by position: on CPython 3.12 a C function's
    # first call with keyword arguments made in a sub-interpreter leaves a
    # tuple of that interpreter's in a process-wide cache, which the main
    # interpreter frees again at exit ("free(): invalid pointer").
    pickler = _Pickler(buffer, pickle.HIGHEST_PROTOCOL)
    if dispatch_table is not None:
        pickler.dispatch_table = dispatch_table
    pickler.dump(obj)
    return buffer.getvalue()
