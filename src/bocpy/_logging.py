"""Records logged in behaviors reach the main interpreter's logging setup.

A worker sub-interpreter has its own ``logging`` module: without help, a
behavior's ``logger.info(...)`` would be checked against the worker's
default levels and printed (or not) by the worker's last-resort handler,
whatever the script configured.  Instead:

* the main interpreter publishes the levels of its loggers (the root's and
  every logger given a level, plus ``logging.disable``) whenever they
  change; each worker applies them to its own loggers before its next
  behavior, so a worker drops exactly the records the main configuration
  would reject, and keeps every record it would accept;
* a handler on each worker's root logger pickles every record that passes
  (its message already formatted, its exception as text) and pushes it on
  a process-wide FIFO;
* in the main interpreter, a daemon thread takes records off the FIFO as
  they arrive and hands each to ``logging.getLogger(record.name).handle``,
  so the script's handlers, formats and filters apply.  ``wait()`` and
  ``quiesce()`` drain what is left before they return.  One FIFO keeps
  each worker's records in the order it logged them.

The script may configure logging at top level or in its
``if __name__ == "__main__":`` guard, before or after the runtime starts.
"""

from __future__ import annotations

import atexit
import logging
import pickle
import sys
import threading
from typing import Any

from . import _core

# ---------------------------------------------------------------------------
# Main interpreter
# ---------------------------------------------------------------------------

#: Held while records are taken off the FIFO and handled, so that the drain
#: thread and ``flush()`` never handle records out of order.
_handle_lock = threading.Lock()
_drain_thread: threading.Thread | None = None
_stopping = False
_hooked = False
_stop_registered = False

#: The level that a disabled logger gets in workers: above every level.
_OFF = logging.CRITICAL + 1


def _levels() -> dict[str, Any]:
    """The main interpreter's levels, as workers apply them."""
    manager = logging.Logger.manager
    levels: dict[str, int] = {"": logging.root.level}
    for name, logger in list(manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue  # a placeholder: no logger of that name yet
        if logger.disabled:
            levels[name] = _OFF
        elif logger.level != logging.NOTSET:
            levels[name] = logger.level
    return {"levels": levels, "disable": manager.disable}


def publish_levels() -> None:
    """Main interpreter: tell workers the levels the main loggers use now."""
    _core._set_log_levels(pickle.dumps(_levels()))


def _hook_level_changes() -> None:
    """Publish the levels again whenever the main configuration changes them.

    ``Logger.setLevel``, ``logging.disable``, ``basicConfig`` and
    ``logging.config`` all end by clearing the manager's level cache; the
    hook rides on that.
    """
    global _hooked
    if _hooked:
        return
    manager: Any = logging.Logger.manager  # _clear_cache is private: not in typeshed
    clear_cache = manager._clear_cache

    def _clear_cache_and_publish() -> None:
        clear_cache()
        try:
            publish_levels()
        except Exception:  # never break the caller's setLevel()
            pass

    manager._clear_cache = _clear_cache_and_publish
    _hooked = True


def start_main() -> None:
    """Main interpreter, as a runtime starts: publish levels, drain records."""
    global _drain_thread, _stopping, _stop_registered
    _hook_level_changes()
    publish_levels()
    if _drain_thread is None or not _drain_thread.is_alive():
        _stopping = False
        _drain_thread = threading.Thread(target=_drain_forever, name="bocpy-logging", daemon=True)
        _drain_thread.start()
        if not _stop_registered:
            atexit.register(_stop_drain)
            _stop_registered = True


def flush() -> None:
    """Main interpreter: handle every record workers have logged so far."""
    with _handle_lock:
        _handle_all(_core._log_take())


def _drain_forever() -> None:
    while not _stopping:
        if _core._log_wait(1.0):
            flush()


def _stop_drain() -> None:
    global _stopping
    _stopping = True
    _core._log_wake()
    thread = _drain_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout=5)
    flush()


def _handle_all(batch: list[bytes]) -> None:
    for data in batch:
        try:
            record = _rebuild(pickle.loads(data))
            if record.name == logging.root.name:
                logger = logging.getLogger()
            else:
                logger = logging.getLogger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        except Exception as exc:  # a handler's own errors go to handleError
            sys.stderr.write(f"bocpy: could not log a record from a behavior: {exc!r}\n")


def _rebuild(fields: dict[str, Any]) -> logging.LogRecord:
    """A record with ``fields``, as ``logging.makeLogRecord`` makes it.

    With the default record factory, the record is made without running
    ``LogRecord.__init__``, whose work (the time, the thread, the process)
    every field it sets overwrites.
    """
    if logging.getLogRecordFactory() is not logging.LogRecord:
        return logging.makeLogRecord(fields)
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(fields)
    return record


# ---------------------------------------------------------------------------
# Worker interpreters
# ---------------------------------------------------------------------------


class _ForwardHandler(logging.Handler):
    """Worker: sends each record to the main interpreter's loggers."""

    _exception_formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _core._log_forward(self._pickle(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _pickle(self, record: logging.LogRecord) -> bytes:
        fields = dict(record.__dict__)
        # The arguments and the exception may not survive pickling; their
        # text does.
        fields["msg"] = record.getMessage()
        fields["args"] = None
        if record.exc_info and not record.exc_text:
            fields["exc_text"] = self._exception_formatter.formatException(record.exc_info)
        fields["exc_info"] = None
        fields.pop("message", None)
        try:
            return pickle.dumps(fields)
        except Exception:
            # An attribute given with ``extra=`` that cannot be pickled
            # travels as its repr.
            for key, value in list(fields.items()):
                try:
                    pickle.dumps(value)
                except Exception:
                    fields[key] = repr(value)
            return pickle.dumps(fields)


_forwarder = _ForwardHandler()
#: Worker: names whose level the last sync set.
_synced: set[str] = set()


def sync_worker() -> None:
    """Worker: forward records, and apply the main interpreter's levels."""
    data = _core._log_levels()
    if data is None:
        return
    published = pickle.loads(data)
    levels: dict[str, int] = published["levels"]
    root = logging.getLogger()
    if _forwarder not in root.handlers:
        root.addHandler(_forwarder)
    for name in _synced - levels.keys():
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in levels.items():
        (logging.getLogger(name) if name else root).setLevel(level)
    _synced.clear()
    _synced.update(name for name in levels if name)
    logging.disable(published["disable"])
