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
import sys
import traceback
from typing import Any

from . import _core, _logging, _main_image

#: Warnings from applying the ``__main__`` image in this worker (for debugging).
image_warnings: list[str] = []

#: Main interpreter: the ``__main__`` globals workers already know about.
_known_main_names: set[str] = set()


def build_bootstrap() -> tuple[dict[str, Any], list[Any]]:
    """Main interpreter: the bootstrap header and the bind values it refers to."""
    main = sys.modules.get("__main__")
    steps: list[tuple[Any, ...]] = []
    values: list[Any] = []
    _known_main_names.clear()
    if main is not None:
        for step in _main_image.build_image(main, _core._is_transferable):
            if step[0] == "bind":
                _known_main_names.add(step[1])
                values.append(step[2])
                steps.append(("bind", step[1], len(values) - 1))
            else:
                steps.append(step)
    # sys.path travels separately (the binding sets it before importing bocpy).
    header = {"argv": list(sys.argv), "steps": steps}
    return header, values


def refresh_main() -> None:
    """Main interpreter: send workers the ``__main__`` globals made since start.

    The image holds what the script's top level assigns; globals made any
    other way (in the ``__main__`` guard, through a ``global`` statement, or
    after the first ``@when``) are sent from here.  Called once the runtime
    has started, and by the binding whenever ``__main__``'s namespace grows.
    """
    main = sys.modules.get("__main__")
    if main is None:
        return
    for name in list(main.__dict__.keys() - _known_main_names):
        _known_main_names.add(name)
        value = main.__dict__[name]
        if name.startswith("__") or isinstance(value, type(sys)):
            continue  # dunders, and modules (the image imported those)
        if _core._is_transferable(value):
            _core._add_late_bind(name, value)


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
