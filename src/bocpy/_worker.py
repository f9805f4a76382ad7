"""What a worker interpreter needs from the main one, and how it gets it.

The main interpreter builds a *bootstrap* when the runtime starts: its
``sys.argv`` (the binding copies ``sys.path`` itself), and an image of the
``__main__`` module (see ``_main_image``) whose bind values travel as
separate blobs.  Each worker
applies it to its own ``__main__`` before it runs any behavior, so behavior
bodies defined in a script see the script's imports, functions, classes and
constants -- without the script's top-level statements ever running again.
"""

from __future__ import annotations

import atexit
import gc
import marshal
import sys
import threading
import traceback
from typing import Any

from . import _core, _logging, _main_image

#: Warnings from applying the ``__main__`` image in this worker (for debugging).
image_warnings: list[str] = []

#: Main interpreter: the ``__main__`` globals workers already know about.
_known_main_names: set[str] = set()

#: Main interpreter: globals that do not reach workers, and why.
_unsent: dict[str, str] = {}
# Free-threaded builds: @when on several threads may refresh at once; one
# refresh at a time keeps _known_main_names and _unsent consistent and sends
# each global once.
_refresh_lock = threading.Lock()

#: The global under which late reasons reach a worker's ``__main__``.
UNSENT_NAME = "__bocpy_unsent__"

#: Worker interpreter: globals of the script this worker lacks, and why.
_missing: dict[str, str] = {}


def build_bootstrap() -> tuple[dict[str, Any], list[Any]]:
    """Main interpreter: the bootstrap header and the bind values it refers to."""
    main = sys.modules.get("__main__")
    steps: list[tuple[Any, ...]] = []
    values: list[Any] = []
    report = _main_image.ImageReport()
    _known_main_names.clear()
    _unsent.clear()
    if main is not None:
        image = _main_image.build_image(
            main, _core._is_transferable, source=_command_source(main), report=report
        )
        if not image:
            image = _sourceless_imports(main)
            report.unsent.update(_sourceless_unsent(main))
        for step in image:
            if step[0] == "bind":
                _known_main_names.add(step[1])
                values.append(step[2])
                steps.append(("bind", step[1], len(values) - 1))
            else:
                steps.append(step)
    _known_main_names.update(report.unsent, report.rerun)
    _unsent.update(report.unsent)
    # sys.path travels separately (the binding sets it before importing bocpy).
    header = {
        "argv": list(sys.argv),
        "steps": steps,
        "unsent": dict(report.unsent),
        "rerun": dict(report.rerun),
    }
    return header, values


def _command_source(main: Any) -> tuple[str, str] | None:
    """``("<string>", code)`` when the script is ``python -c code``, else ``None``.

    The code of ``-c`` is in ``sys.orig_argv``: it is the argument of the
    first ``-c`` option (possibly grouped with other one-letter options).
    """
    if getattr(main, "__file__", None) is not None or sys.argv[:1] != ["-c"]:
        return None
    argv = list(getattr(sys, "orig_argv", []))[1:]
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return None  # a script, or standard input
        if arg.startswith("--"):
            i += 2 if arg in ("--check-hash-based-pycs",) else 1
            continue
        for position in range(1, len(arg)):
            option = arg[position]
            rest = arg[position + 1 :]
            if option == "c":
                code = rest if rest else (argv[i + 1] if i + 1 < len(argv) else None)
                return None if code is None else ("<string>", code)
            if option in "WX":
                i += 0 if rest else 1  # the value is the rest, or the next argument
                break
            if option == "m":
                return None
        i += 1
    return None


def _sourceless_imports(main: Any) -> list[tuple[Any, ...]]:
    """Image steps that import, in a worker, the modules ``main`` has as globals.

    For a script read from standard input (or the REPL) there is no source
    to filter; its modules are re-imported by name.  A module that fails to
    import in a worker is skipped.
    """
    lines: list[str] = []
    for name, value in list(vars(main).items()):
        real = getattr(value, "__name__", None)
        if not isinstance(value, type(sys)) or not isinstance(real, str):
            continue
        if name.startswith("__") or not name.isidentifier():
            continue
        if not all(part.isidentifier() for part in real.split(".")):
            continue
        statement = f"import {real}" if name == real else f"import {real} as {name}"
        lines.append(f"try:\n    {statement}\nexcept Exception:\n    pass\n")
    if not lines:
        return []
    code = compile("".join(lines), "<bocpy: modules of __main__>", "exec")
    return [("exec", code.co_filename, marshal.dumps(code))]


def _sourceless_unsent(main: Any) -> dict[str, str]:
    """Why each untransferable global of a sourceless script cannot reach workers."""
    unsent: dict[str, str] = {}
    for name, value in list(vars(main).items()):
        if name.startswith("__") or isinstance(value, type(sys)):
            continue
        if not _core._is_transferable(value):
            unsent[name] = (
                f"its value, a {type(value).__name__!r}, cannot be sent "
                f"({_main_image._pickling_error(value)}), and the script has no source "
                "file whose assignment workers could re-run"
            )
    return unsent


def refresh_main() -> None:
    """Main interpreter: send workers the ``__main__`` globals made since start.

    The image holds what the script's top level assigns; globals made any
    other way (in the ``__main__`` guard, through a ``global`` statement, or
    after the first ``@when``) are sent from here.  Called once the runtime
    has started, and by the binding whenever ``__main__``'s namespace grows.
    A global that cannot be sent is recorded, so that a worker's
    ``NameError`` for it says why.
    """
    with _refresh_lock:
        _refresh_main_locked()


def _refresh_main_locked() -> None:
    main = sys.modules.get("__main__")
    if main is None:
        return
    unsent = len(_unsent)
    for name in list(main.__dict__.keys() - _known_main_names):
        _known_main_names.add(name)
        value = main.__dict__[name]
        if name.startswith("__") or isinstance(value, type(sys)):
            continue  # dunders, and modules (the image imported those)
        if _core._is_transferable(value):
            _core._add_late_bind(name, value)
        else:
            _unsent[name] = (
                f"its value, a {type(value).__name__!r}, cannot be sent "
                f"({_main_image._pickling_error(value)}), and it was not assigned by a "
                "top-level statement that workers could re-run (it was assigned in the "
                "'if __name__ == \"__main__\":' block, in a function, or after the "
                "runtime started)"
            )
    if len(_unsent) != unsent:
        _core._add_late_bind(UNSENT_NAME, dict(_unsent))


def explain_name_error(exc: BaseException) -> None:
    """Worker: say why a ``NameError`` for one of the script's globals happened.

    Called by the binding for an exception a behavior raised.  When the
    missing name is a global of the script that could not be sent to
    workers, the message names it and gives the reason.
    """
    if type(exc) is not NameError:
        return
    name = getattr(exc, "name", None)
    main = sys.modules.get("__main__")
    if not isinstance(name, str) or main is None:
        return
    namespace = main.__dict__
    late = namespace.get(UNSENT_NAME)
    reason = _missing.get(name) or (late.get(name) if isinstance(late, dict) else None)
    if reason is None:
        return
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and tb.tb_frame.f_globals is not namespace:
        return  # a name missing from another module
    exc.args = (
        f"name {name!r} is not defined in this worker: the script's global {name!r} "
        f"could not be sent to worker interpreters: {reason}",
    )


#: Worker interpreter: its ``__main__`` namespace as it was when new.
_pristine_main: dict[str, Any] | None = None


def _reset_main() -> None:
    """Worker interpreter: put ``__main__`` back as it was when new.

    The binding's code caches go too: they hold the code objects of the
    script's functions as this run's image made them, and the next image
    makes new ones.
    """
    if _pristine_main is not None:
        namespace = sys.modules["__main__"].__dict__
        namespace.clear()
        namespace.update(_pristine_main)
        _core._forget_code()


def bootstrap() -> None:
    """Worker interpreter: adopt the main interpreter's paths and ``__main__``.

    Runs each time a runtime starts a worker in this interpreter.  Worker
    interpreters outlive their runtime (the binding keeps them for the next
    one); ``shutdown`` put ``__main__`` back as it was when the interpreter
    was new, so the image gives the script's globals their values as of
    this start, exactly as in a fresh interpreter, and nothing a behavior
    left there carries over.  Other modules stay
    imported, with whatever state they hold, as in any long-lived process.
    """
    global _pristine_main
    main = sys.modules["__main__"]
    if _pristine_main is None:
        _pristine_main = dict(main.__dict__)
    header = _core._bootstrap_header()
    if header is None:
        return
    sys.argv[:] = header["argv"]
    sync_logging()
    image_warnings[:] = _main_image.apply_image(
        header["steps"], main.__dict__, load=_core._bootstrap_value
    )
    _missing.clear()
    _missing.update(header.get("unsent", {}))
    for name, line in header.get("rerun", {}).items():
        if name not in main.__dict__:
            prefix = f"line {line}: "
            failure = next((w[len(prefix) :] for w in image_warnings if w.startswith(prefix)), None)
            _missing[name] = (
                f"its value cannot be pickled, and re-running its assignment (line {line}) "
                f"in the worker failed ({failure or 'it did not assign it'})"
            )


def sync_logging() -> None:
    """Worker: send logged records to the main interpreter, at its levels.

    Runs at bootstrap, and (from the binding) before a behavior whenever
    the main interpreter's levels changed.
    """
    _logging.sync_worker()


def shutdown() -> None:
    """Worker interpreter, as its worker thread stops: leave nothing behind.

    The interpreter is kept for the next runtime rather than ended, so this
    does what ending it used to do for ``wait()``: it waits for the threads
    behaviors started, runs the ``atexit`` callbacks they registered, puts
    ``__main__`` back as it was when the interpreter was new (letting go of
    the cowns, files and memory the script's image and the behaviors left
    there), collects garbage and flushes what behaviors printed.  Each step
    runs even if an earlier one failed.
    """
    for step in (_join_threads, _run_atexit, _drop_dummy_thread, _reset_main, gc.collect, _flush):
        try:
            step()
        except Exception:  # reported, and the worker still stops cleanly
            traceback.print_exc()


def _join_threads() -> None:
    """Wait for the threads behaviors started (workers allow no daemons)."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    # Neither this thread nor the interpreter's "main" thread (in a
    # sub-interpreter it stands for the process's main thread) was started
    # by a behavior, and neither was a dummy made for a foreign thread.
    skip = (threading.current_thread(), threading.main_thread())
    for thread in threading.enumerate():
        dummy = isinstance(thread, threading._DummyThread)
        if thread not in skip and not thread.daemon and not dummy:
            thread.join()


def _run_atexit() -> None:
    """Run, once, the ``atexit`` callbacks behaviors registered here."""
    atexit._run_exitfuncs()
    atexit._clear()


def _drop_dummy_thread() -> None:
    """Forget the dummy ``Thread`` that ``threading`` made for this thread.

    A behavior that used ``threading`` (directly, or through ``logging`` or
    ``asyncio``) leaves one for the worker thread.  Dropping the reference
    now removes it from ``threading``'s table, so a kept interpreter does
    not collect one per runtime; it also avoids a clean-up that, on CPython
    before 3.13.3 (gh-130522), runs after an ending interpreter has started
    to go and prints an ignored ``TypeError``.
    """
    threading = sys.modules.get("threading")
    info = getattr(threading, "_thread_local_info", None)
    if info is not None and hasattr(info, "_track_dummy_thread_ref"):
        del info._track_dummy_thread_ref


def _flush() -> None:
    """``wait()`` promises that what behaviors printed is out when it returns."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
