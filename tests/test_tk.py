"""bocpy.tk: pumping pinned behaviors from a Tk event loop.

Tk needs an X display.  These tests use ``$DISPLAY`` when it works, else
start a private ``Xvfb`` (package ``xvfb``) for the module, else skip.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import bocpy
import bocpy.tk as bocpy_tk
from bocpy import Cown, PinnedCown, when

if importlib.util.find_spec("tkinter") is None:
    pytest.skip("tkinter is not available in this Python", allow_module_level=True)


class Lazy:
    """A module imported on first use.

    Workers import this test module to run its behaviors, and ``_tkinter``
    cannot be imported in a sub-interpreter: so tkinter is imported only by
    the tests themselves, on the main thread (bocpy.tk imports it lazily).
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


tkinter: Any = Lazy("tkinter")

#: Seconds a bounded ``root.update()`` loop may run before the test fails.
LIMIT = 30.0


def _display_works() -> bool:
    try:
        probe = tkinter.Tk()
    except tkinter.TclError:
        return False
    probe.destroy()
    return True


@pytest.fixture(scope="module")
def display() -> Iterator[str]:
    """An X display for Tk: ``$DISPLAY`` if it works, else a private Xvfb."""
    try:
        importlib.import_module("tkinter")
    except ImportError as error:
        pytest.skip(f"tkinter cannot be imported: {error}")
    if os.environ.get("DISPLAY") and _display_works():
        yield os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        pytest.skip("Tk needs a display: no working $DISPLAY and no Xvfb (apt-get install xvfb)")
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", "640x480x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end) as ready:
            number = ready.readline().strip()  # written once Xvfb accepts clients
        if not number:
            pytest.skip("Xvfb did not start")
        saved = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = f":{number}"
        try:
            yield os.environ["DISPLAY"]
        finally:
            if saved is None:
                os.environ.pop("DISPLAY", None)
            else:
                os.environ["DISPLAY"] = saved
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def root(display: str) -> Iterator[Any]:
    """A Tk root for one test; destroyed (and the wake callback reset) afterwards."""
    window = tkinter.Tk()
    window.withdraw()
    yield window
    try:
        window.destroy()
    except tkinter.TclError:
        pass
    bocpy.set_wake_callback(None)


def settle_wake_fd() -> None:
    """Start the runtime and clear the wake fd, so a test starts from quiet."""
    bocpy.start()
    bocpy.pump()


def update_until(root: Any, done: Callable[[], bool], limit: float = LIMIT) -> bool:
    """Run ``root.update()`` until ``done()`` or ``limit`` seconds; returns ``done()``."""
    deadline = time.monotonic() + limit
    while not done():
        if time.monotonic() > deadline:
            return False
        root.update()
        time.sleep(0.001)
    return True


def update_for(root: Any, seconds: float) -> None:
    """Run ``root.update()`` for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        root.update()
        time.sleep(0.001)


def events_for(root: Any, seconds: float) -> None:
    """Handle Tk events one at a time for ``seconds``.

    Unlike ``root.update()``, which returns only once no event is left, this
    returns on time even if an event source never goes quiet.
    """
    dont_wait = importlib.import_module("_tkinter").DONT_WAIT
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not root.tk.dooneevent(dont_wait):
            time.sleep(0.001)


def schedule_label_update_from_worker(label: PinnedCown[Any], text: str) -> Cown[int]:
    """A worker behavior that schedules a pinned write to ``label``."""
    seed = Cown(1)

    @when(seed)
    def on_worker(seed, label=label, text=text):
        @when(label)
        def on_main(label, text=text):
            label.value.configure(text=text)

        return seed.value

    return on_worker


class NoFileHandlers:
    """Wraps a tkapp, hiding createfilehandler (as on Windows)."""

    def __init__(self, tk: Any) -> None:
        self._tk = tk

    def __getattr__(self, name: str) -> Any:
        if name in ("createfilehandler", "deletefilehandler"):
            raise AttributeError(name)
        return getattr(self._tk, name)


@pytest.fixture
def root_without_filehandlers(root: Any) -> Iterator[Any]:
    real = root.tk
    root.tk = NoFileHandlers(real)
    yield root
    root.tk = real


# ------------------------------------------------------------------ tests


def test_filehandler_mode_pumps_work_scheduled_from_a_worker(root: Any):
    settle_wake_fd()
    label = tkinter.Label(root, text="waiting")
    driver = bocpy_tk.install(root)
    try:
        assert driver.mode == "filehandler" and driver.fallback_reason is None
        update_for(root, 0.05)
        idle_pumps = driver.pumps
        update_for(root, 0.2)  # no pinned work: a file handler does not poll
        assert driver.pumps == idle_pumps

        schedule_label_update_from_worker(PinnedCown(label), "done")
        assert update_until(root, lambda: label.cget("text") == "done")
        assert driver.executed >= 1 and driver.wakeups >= 1
        assert driver.pumps - idle_pumps <= 20  # a few spurious wake-ups at most
    finally:
        driver.uninstall()
    assert not driver.installed


def test_after_mode_polls(root: Any):
    settle_wake_fd()
    label = tkinter.Label(root, text="waiting")
    driver = bocpy_tk.install(root, mode="after", fallback_ms=5)
    try:
        assert driver.mode == "after"
        schedule_label_update_from_worker(PinnedCown(label), "polled")
        assert update_until(root, lambda: label.cget("text") == "polled")
        pumps = driver.pumps
        update_for(root, 0.1)
        assert driver.pumps > pumps  # it polls
    finally:
        driver.uninstall()
    pumps = driver.pumps
    update_for(root, 0.1)
    assert driver.pumps == pumps  # ... until uninstalled


def test_auto_falls_back_to_after_without_createfilehandler(root_without_filehandlers: Any):
    root = root_without_filehandlers
    settle_wake_fd()
    label = tkinter.Label(root, text="waiting")
    driver = bocpy_tk.install(root, fallback_ms=5)
    try:
        assert driver.mode == "after"
        assert driver.fallback_reason is not None and "createfilehandler" in driver.fallback_reason
        schedule_label_update_from_worker(PinnedCown(label), "fallback")
        assert update_until(root, lambda: label.cget("text") == "fallback")
    finally:
        driver.uninstall()


def test_filehandler_mode_refuses_to_fall_back(root_without_filehandlers: Any):
    with pytest.raises(RuntimeError, match="createfilehandler"):
        bocpy_tk.install(root_without_filehandlers, mode="filehandler")


def test_second_filehandler_driver_falls_back(root: Any):
    first = bocpy_tk.install(root)
    try:
        second = bocpy_tk.install(root)
        try:
            assert first.mode == "filehandler"
            assert second.mode == "after" and "already watches" in (second.fallback_reason or "")
        finally:
            second.uninstall()
    finally:
        first.uninstall()


def test_uninstall_stops_pumping(root: Any):
    settle_wake_fd()
    driver = bocpy_tk.install(root)
    driver.uninstall()
    driver.uninstall()  # idempotent
    log = PinnedCown([])

    @when(log)
    def note(log):
        log.value.append("ran")

    update_for(root, 0.2)
    assert driver.pumps == 0
    assert bocpy.pump().executed == 1
    with log:
        assert log.value == ["ran"]


def test_deadline_budget_lets_tk_idle(root: Any):
    settle_wake_fd()
    count = 30
    stamps = PinnedCown([])
    idle: list[float] = []
    driver = bocpy_tk.install(root, deadline_ms=1)
    try:
        for _ in range(count):

            @when(stamps)
            def slow(stamps):
                time.sleep(0.003)
                stamps.value.append(time.perf_counter())

        root.after_idle(lambda: idle.append(time.perf_counter()))
        assert update_until(root, lambda: driver.executed >= count)
        assert driver.mode == "filehandler"
        assert driver.pumps >= count // 2  # about one 3 ms behavior per pump
    finally:
        driver.uninstall()
    with stamps:
        assert len(stamps.value) == count
        assert idle and idle[0] < stamps.value[-1], "Tk never idled while pumping"


@pytest.mark.parametrize("mode", ["filehandler", "after"])
def test_raise_on_error_goes_to_report_callback_exception(root: Any, mode: str):
    settle_wake_fd()
    reported: list[BaseException] = []
    root.report_callback_exception = lambda kind, error, tb: reported.append(error)
    box = PinnedCown(0)
    driver = bocpy_tk.install(root, mode=mode, fallback_ms=5, raise_on_error=True)
    try:

        @when(box)
        def boom(box):
            raise KeyError("pinned")

        assert update_until(root, lambda: bool(reported))
        assert isinstance(reported[0], KeyError) and driver.raised == 1

        @when(box)
        def bump(box):
            box.value += 1

        assert update_until(root, lambda: driver.executed >= 2)  # it goes on
    finally:
        driver.uninstall()
    with box:
        assert box.value == 1


def test_driver_rests_on_a_wake_fd_that_stays_readable(root: Any):
    # A pinned body that schedules more pinned work leaves the wake fd
    # readable after the pump that ran both; wait() then tears the runtime
    # down, and pump() without a runtime does not clear the fd.  The file
    # handler must not spin on it, and must still pump once work arrives.
    first, second = PinnedCown(0), PinnedCown(0)

    @when(first)
    def outer(first, second=second):
        @when(second)
        def inner(second):
            second.value += 1

    bocpy.wait()
    driver = bocpy_tk.install(root)
    try:
        events_for(root, 0.3)
        assert driver.pumps <= 30
        box = PinnedCown("")

        @when(box)
        def fill(box):
            box.value = "ran"

        assert update_until(root, lambda: driver.executed >= 1)
    finally:
        driver.uninstall()
    with box:
        assert box.value == "ran"


def test_destroyed_root_uninstalls_the_driver(display: str):
    settle_wake_fd()
    first = tkinter.Tk()
    first.withdraw()
    driver = bocpy_tk.install(first)
    first.destroy()
    other = tkinter.Tk()  # the same thread's notifier still watches the fd
    other.withdraw()
    try:
        box = PinnedCown(0)

        @when(box)
        def bump(box):
            box.value += 1

        assert update_until(other, lambda: not driver.installed)
        assert driver.executed == 0  # nothing ran for a dead root
    finally:
        driver.uninstall()
        other.destroy()
    assert bocpy.pump().executed == 1


def test_invalid_arguments(root: Any):
    with pytest.raises(ValueError, match="mode"):
        bocpy_tk.install(root, mode="select")
    with pytest.raises(ValueError, match="fallback_ms"):
        bocpy_tk.install(root, fallback_ms=0)
    with pytest.raises(ValueError, match="deadline_ms"):
        bocpy_tk.install(root, deadline_ms=-1)


def test_importing_bocpy_tk_does_not_import_tkinter(run_script):
    # so that a module whose behaviors run on workers may import bocpy.tk
    proc = run_script(
        """
        import sys
        import bocpy.tk
        from bocpy import Cown, wait, when

        assert "tkinter" not in sys.modules, "bocpy.tk imported tkinter"
        c = Cown(20)

        @when(c)
        def doubled(c):
            import bocpy.tk  # a worker imports it too
            return c.value * 2

        wait()
        print(doubled.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "40"


def test_tk_example_counts_primes_from_the_event_loop(display: str):
    """``python -m bocpy.examples.tk_primes --selftest`` runs its clicks and checks them."""
    env = dict(os.environ, DISPLAY=display)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bocpy.examples.tk_primes", "--selftest", "--limit", "30000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 of 3 clicks answered" in proc.stdout
    assert "check passed" in proc.stdout
