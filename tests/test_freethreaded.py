"""Free-threaded CPython (3.13t): the GIL stays off, shared binding state is locked.

The first test only means something on a ``Py_GIL_DISABLED`` build and is
skipped elsewhere.  The others run on every build: on a GIL build they check
the same results with the GIL serialising the threads, on a free-threaded
build they drive the locks that replaced it (the per-interpreter code caches,
the late-bind refresh, main-thread cown holds) from several threads at once.
"""

from __future__ import annotations

import subprocess
import sysconfig
import threading
from collections.abc import Callable

import pytest

from bocpy import Cown, wait, when

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

THREADS = 4


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded (Py_GIL_DISABLED) build")
def test_importing_and_running_bocpy_leaves_the_gil_disabled(
    run_script: Callable[..., subprocess.CompletedProcess[str]],
) -> None:
    proc = run_script(
        """
        import sys
        import warnings

        warnings.simplefilter("error")  # "the GIL has been enabled" is a RuntimeWarning
        import bocpy
        from bocpy import Cown, wait, when

        assert not sys._is_gil_enabled(), "importing bocpy enabled the GIL"
        c = Cown(1)

        @when(c)
        def double(c):
            c.value *= 2

        wait()
        assert c.value == 2, c.value
        assert not sys._is_gil_enabled(), "running behaviors enabled the GIL"
        print("gil off")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gil off"


def _run_threads(target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as e:  # reported below, with the thread's index
            errors.append(e)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a scheduling thread hung"
    assert not errors, errors


def test_threads_of_the_main_interpreter_schedule_behaviors_at_once() -> None:
    counters = [Cown(0) for _ in range(THREADS)]
    per_thread = 200

    def schedule(i: int) -> None:
        for _ in range(per_thread):
            # A fresh code object per thread and round: every @when both
            # looks up and fills the interpreter's code cache.
            @when(counters[i])
            def bump(c: Cown[int]) -> None:
                c.value += 1

    _run_threads(schedule)
    wait()
    assert [c.value for c in counters] == [per_thread] * THREADS


def test_threads_racing_to_acquire_one_cown_never_break_its_queue() -> None:
    c = Cown(0)
    won = [0] * THREADS
    rounds = 500

    def hammer(i: int) -> None:
        for _ in range(rounds):
            try:
                c.acquire()
            except RuntimeError as e:  # the other thread holds it right now
                assert "busy" in str(e), e
                continue
            c.value += 1
            won[i] += 1
            c.release()

    _run_threads(hammer)
    assert c.value == sum(won) > 0

    # The cown's request queue is intact: a behavior still gets it.
    @when(c)
    def after(c: Cown[int]) -> None:
        c.value = -c.value

    wait()
    assert c.value == -sum(won)
