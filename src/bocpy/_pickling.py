"""The extended pickler bocpy falls back on when the C pickler refuses a value.

The standard pickler sends functions by reference (module + qualified
name), so it refuses lambdas and functions defined inside other functions.
bocpy can do better: behavior code already travels through its code
registry, so such a function is sent as its registry id plus its defaults
and closure values, and rebuilt in the receiving interpreter against that
interpreter's import of the defining module.
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from typing import Any

from . import _core


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


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
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
