"""Shared fixtures for the bocpy test suite.

Every test runs against a clean runtime: after each test the autouse
``_runtime_teardown`` fixture calls ``bocpy.wait(timeout=60)``, which runs
whatever the test left scheduled and tears the runtime down, and fails the
test if that does not finish in time.

Tests that need a real ``__main__`` script, a fresh process, signals or
process exit use the ``run_script`` / ``start_script`` fixtures: they write
a small script into ``tmp_path`` and run it with this interpreter, with
``src/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import bocpy

#: The package sources, put first on the subprocesses' ``PYTHONPATH``.
SRC = Path(__file__).resolve().parents[1] / "src"

#: Whether this run's implicit starts use the threads backend ($BOCPY_BACKEND,
#: else the build's default): values are never copied there.
THREADS_BACKEND = bocpy._core._backend() == "threads"

#: Why a test about copying a cown's value does not apply on that backend.
NO_COPY_ON_THREADS = (
    "the threads backend never copies (pickles) a cown's value, so nothing refuses an "
    "unpicklable one (docs/backends.md)"
)

#: Seconds a subprocess may run before the test gives up on it.
SUBPROCESS_TIMEOUT = 60


def subprocess_env() -> dict[str, str]:
    """The environment for a script subprocess: ``src/`` first on the path."""
    env = dict(os.environ)
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + existing if existing else "")
    env.pop("PYTHONUNBUFFERED", None)
    env.pop("PYTHONSTARTUP", None)
    return env


def _release_cowns_left_acquired() -> int:
    """Release every cown the main thread still holds; return how many.

    Only used to recover after a test failed while holding a cown, so that
    the failure does not spill into the tests after it.  Cowns are not
    tracked by the garbage collector themselves, so look at what tracked
    objects (frames kept by tracebacks, dicts, lists, cells) refer to.
    """
    released = 0
    for holder in gc.get_objects():
        for obj in gc.get_referents(holder):
            if isinstance(obj, bocpy.Cown) and obj.acquired:
                obj.release()
                released += 1
    return released


@pytest.fixture(autouse=True)
def _runtime_teardown():
    """Run each test on a fresh runtime and leave none behind."""
    yield
    try:
        bocpy.wait(timeout=60)
    except TimeoutError:
        pytest.fail("bocpy.wait(timeout=60) timed out tearing the runtime down after the test")
    except RuntimeError as err:
        released = _release_cowns_left_acquired()
        bocpy.wait(timeout=60)
        pytest.fail(f"the test left {released} cown(s) acquired; bocpy.wait() raised: {err}")


def write_script(directory: Path, source: str, name: str = "script.py") -> Path:
    """Write dedented ``source`` to ``directory / name`` and return its path."""
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


@pytest.fixture
def run_script(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a script (source text) in a subprocess; returns the completed process.

    ``files`` maps extra file names (e.g. helper modules, ``pkg/mod.py``) to
    their source, all written next to the script.  The script runs with
    ``tmp_path`` as its working directory.  With ``module``, ``source`` is
    ignored and ``python -m module`` runs instead.
    """

    def run(
        source: str,
        *,
        files: dict[str, str] | None = None,
        timeout: float = SUBPROCESS_TIMEOUT,
        args: list[str] | None = None,
        module: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        for name, text in (files or {}).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            write_script(tmp_path, text, name)
        if module is None:
            command = [str(write_script(tmp_path, source))]
        else:
            command = ["-m", module]
        return subprocess.run(
            [sys.executable, *command, *(args or [])],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def start_script(tmp_path: Path):
    """Start a script (source text) in a subprocess with piped stdout/stderr.

    Returns the ``Popen``; the fixture kills it at teardown if it still runs.
    """
    procs: list[subprocess.Popen[str]] = []

    def start(source: str) -> subprocess.Popen[str]:
        path = write_script(tmp_path, source)
        proc = subprocess.Popen(
            [sys.executable, str(path)],
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # A shell that started pytest in the background may have set
            # SIGINT to "ignore", which children inherit; give the script the
            # default disposition so Python installs its KeyboardInterrupt
            # handler.
            preexec_fn=_default_sigint,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=SUBPROCESS_TIMEOUT)


class LineReader:
    """Collects a process's stdout lines on a thread, readable with time-outs."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {text!r} line within {timeout}s; saw {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"stdout closed before {text!r}; saw {self.seen}")
            self.seen.append(line)
            if line == text:
                return

    def rest(self, timeout: float = 10.0) -> list[str]:
        self.thread.join(timeout)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.seen
            if line is not None:
                self.seen.append(line)
