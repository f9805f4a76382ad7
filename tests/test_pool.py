"""Worker interpreters kept from one runtime to the next.

``wait()`` tears the runtime down, but its workers' sub-interpreters are
kept and the next runtime's workers run in them: CPython does not give back
all of an ended interpreter's memory, so a program that calls ``wait()`` in
a loop would otherwise grow without bound.  What a user relies on:

- memory stays flat across ``start``/``wait`` cycles;
- a reused interpreter behaves like a fresh one for the script: its
  ``__main__`` globals are the script's as of this start, and nothing a
  behavior left there carries over;
- per-run statistics start from zero;
- a run with fewer workers leaves the other interpreters kept;
- ``fork()`` after ``wait()`` gives a child that works (CPython aborts a
  forked child while any sub-interpreter exists, so they are ended first).

The threads backend (``conftest.THREADS_BACKEND``) has no worker
interpreters: its workers are threads of the main interpreter, so there is
no pool.  The tests about the pool skip there; those about start/wait
cycles (statistics, memory, fork) run on both, and those about a script's
globals say what differs.
"""

from __future__ import annotations

import os
import sys

import pytest
from conftest import THREADS_BACKEND

import bocpy
from bocpy import Cown, _core, whencall

#: Appended to by behaviors: a module other than ``__main__`` keeps its state
#: in a reused interpreter, like any module in a long-lived process.
_RUNS_HERE: list[int] = []


def _interpreter_id() -> int:
    if sys.version_info >= (3, 13):
        import _interpreters

        return int(_interpreters.get_current()[0])
    import _xxsubinterpreters  # type: ignore[import-not-found]

    return int(_xxsubinterpreters.get_current())


def _where(c):
    c.value += 1
    _RUNS_HERE.append(1)
    return _interpreter_id(), len(_RUNS_HERE)


def _migrate(a, b):
    a.value, b.value = b.value, a.value


#: Marks a test about the interpreter pool, which the threads backend lacks.
pool_only = pytest.mark.skipif(
    THREADS_BACKEND,
    reason="the threads backend has no worker interpreters to keep between runs: its "
    "workers are threads of the main interpreter, started anew by each start()",
)


@pytest.fixture(autouse=True)
def _empty_pool():
    """Each test counts kept interpreters from zero, whatever ran before it."""
    bocpy.wait(timeout=30)
    _core._close_pool()


def _bump(c):
    c.value += 1


@pool_only
def test_wait_keeps_the_worker_interpreters_for_the_next_run():
    c = Cown(0)
    bocpy.start(1)
    first = whencall(_where, [c])
    bocpy.wait(timeout=30)
    assert _core._pool_size() == 1, "the stopped worker's interpreter should be kept"
    bocpy.start(1)
    assert _core._pool_size() == 0, "the new worker should take the kept interpreter"
    second = whencall(_where, [c])
    bocpy.wait(timeout=30)
    (id1, runs1), (id2, runs2) = first.unwrap(), second.unwrap()
    assert id1 != 0 and id1 == id2
    assert runs2 == runs1 + 1, "modules imported by behaviors stay imported"
    assert c.unwrap() == 2


@pool_only
def test_fewer_workers_leave_the_other_interpreters_kept():
    """Ending the surplus would not give its memory back (CPython keeps part
    of an ended interpreter's) and the next larger run would pay again."""
    bocpy.start(3)
    bocpy.wait(timeout=30)
    assert _core._pool_size() == 3
    bocpy.start(1)
    assert _core._pool_size() == 2
    c = Cown(0)
    r = whencall(_where, [c])
    bocpy.wait(timeout=30)
    assert r.unwrap()[0] != 0
    assert _core._pool_size() == 3


@pool_only
def test_more_workers_than_kept_interpreters_make_new_ones():
    bocpy.start(1)
    bocpy.wait(timeout=30)
    bocpy.start(3)
    cowns = [Cown(i) for i in range(30)]
    results = [whencall(_where, [c]) for c in cowns]
    bocpy.wait(timeout=30)
    assert all(r.unwrap()[0] != 0 for r in results)
    assert [c.unwrap() for c in cowns] == [i + 1 for i in range(30)]
    assert _core._pool_size() == 3


def test_stats_start_from_zero_in_each_run():
    def run() -> list[dict[str, int]]:
        bocpy.start(2)
        a, b = Cown([1] * 10), Cown([2] * 10)
        for _ in range(20):
            whencall(_migrate, [a, b])
        return bocpy.wait(timeout=30, stats=True)

    first, second = run(), run()
    assert sum(w["behaviors_run"] for w in first) == 20
    assert sum(w["behaviors_run"] for w in second) == 20
    received = sum(w["values_received"] for w in second)
    assert received <= 2 * 20, f"counters carried over from the last run: {second}"


@pool_only
def test_the_pool_cannot_be_closed_while_the_runtime_runs():
    bocpy.start(1)
    with pytest.raises(RuntimeError, match="wait"):
        _core._close_pool()
    bocpy.wait(timeout=30)
    _core._close_pool()
    assert _core._pool_size() == 0
    c = Cown(1)
    r = whencall(_where, [c])
    bocpy.wait(timeout=30)
    assert r.unwrap()[0] != 0 and c.unwrap() == 2


def test_a_reused_interpreter_starts_with_the_script_globals_of_this_run(run_script):
    proc = run_script(
        """
        import bocpy
        from bocpy import Cown, when

        counter = 10          # a behavior changes this global in its worker
        setting = "first"     # the main thread changes this one between runs

        def run():
            out = Cown(None)

            @when(out)
            def _(out):
                global counter
                counter += 1
                out.value = (counter, setting, "extra" in globals())

            bocpy.wait()
            with out:
                return out.value

        if __name__ == "__main__":
            bocpy.start(1)
            print(run(), flush=True)
            setting = "second"
            extra = 1
            bocpy.start(1)
            print(run(), flush=True)
            del extra
            bocpy.start(1)
            print(run(), flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    # On the threads backend behaviors run with the script's own globals:
    # the counter the behavior changes is the script's, and keeps counting.
    first, second, third = (11, 12, 13) if THREADS_BACKEND else (11, 11, 11)
    assert proc.stdout.splitlines() == [
        f"({first}, 'first', False)",
        f"({second}, 'second', True)",
        f"({third}, 'second', False)",
    ]


def test_memory_stays_flat_across_start_and_wait_cycles(run_script):
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/statm")
    proc = run_script(
        """
        import bocpy
        from bocpy import Cown, when

        def rss_mib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20

        cowns = [Cown(i) for i in range(8)]
        for cycle in range(40):
            bocpy.start(2)
            for c in cowns:
                @when(c)
                def _(c):
                    c.value = [c.value] if isinstance(c.value, int) else c.value[0]
            bocpy.wait()
            if cycle == 9:
                early = rss_mib()
        print(f"{early:.1f} {rss_mib():.1f}", flush=True)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    early, late = map(float, proc.stdout.split())
    # Fresh interpreters per run grew by about 5 MiB per worker per cycle
    # (30 cycles x 2 workers here: some 300 MiB); kept ones add nothing.
    assert late - early < 25, f"RSS grew from {early} to {late} MiB over 30 cycles"


def test_fork_after_wait_gives_a_working_child(run_script):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    proc = run_script(
        """
        import os
        import bocpy
        from bocpy import Cown, when

        c = Cown(1)

        def bump():
            @when(c)
            def _(c):
                c.value += 1
            bocpy.wait()

        bump()
        pid = os.fork()
        if pid == 0:
            bump()  # the child can run bocpy too
            with c:
                print("child", c.value, flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        bump()
        with c:
            print("parent", c.value, os.waitstatus_to_exitcode(status), flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["child 3", "parent 3 0"]


def test_fork_keeps_a_large_value_that_replaced_an_inline_scalar(run_script):
    # An int cown given a list in a behavior, then grown in place past the
    # size checked at every release: the list lives only in the worker, which
    # must hand it back when the pool closes before fork().  (It was not in
    # the worker's resident list, and the child and parent crashed reading.)
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    proc = run_script(
        """
        import os
        import bocpy
        from bocpy import Cown, when

        c = Cown(5)

        @when(c)
        def become_a_list(c):
            c.value = list(range(100_000))

        @when(c)
        def grow(c):
            c.value.append(-1)

        bocpy.wait()
        pid = os.fork()
        if pid == 0:
            with c:
                print("child", len(c.value), c.value[-1], flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        with c:
            print("parent", len(c.value), c.value[-1], os.waitstatus_to_exitcode(status))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == ["child 100001 -1", "parent 100001 -1 0"]


def test_wait_lets_go_of_what_behaviors_left_in_worker_globals(run_script):
    proc = run_script(
        """
        import bocpy
        from bocpy import when

        log = None

        @when()
        def _():
            global log
            log = open("out.txt", "w")  # never closed by the behavior
            log.write("written by a behavior")

        bocpy.wait()
        with open("out.txt") as f:
            print(repr(f.read()), flush=True)
        print(type(log).__name__, flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    if THREADS_BACKEND:
        # The behavior's global is the script's own on the threads backend:
        # the file stays open in ``log`` (its write not yet flushed), as with
        # any thread of the program.
        assert proc.stdout.splitlines() == ["''", "TextIOWrapper"]
    else:
        # The worker's globals are let go at wait(): the file is closed.
        assert proc.stdout.splitlines() == ["'written by a behavior'", "NoneType"]


@pool_only
def test_a_reused_interpreter_does_not_pile_up_the_scripts_old_code(run_script):
    """Each run's image makes new code objects for the script's functions;
    the caches of the last run's ones must go with that run."""
    proc = run_script(
        """
        import bocpy
        from bocpy import Cown, _core, when, whencall

        def leaf(c):
            c.value += 1

        def parent(c, out):
            whencall(leaf, [c])  # scheduled from the worker: the worker caches its code
            out.value = _core._code_cache_size()

        c, out = Cown(0), Cown(0)
        sizes = []
        for _ in range(20):
            bocpy.start(1)
            whencall(parent, [c, out])
            bocpy.wait()
            with out:
                sizes.append(out.value)
        with c:
            print(c.value, sizes[2], sizes[-1], _core._registry_size(), flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    count, third, last, registered = map(int, proc.stdout.split())
    assert count == 20
    assert last == third, "the worker's code cache grew with every run"
    assert registered <= 4, "equal code must keep its registry id from run to run"


@pool_only
def test_closing_the_pool_from_another_thread_while_runs_come_and_go():
    """Ending kept interpreters races with workers stopping and starting:
    each interpreter must go to exactly one of them, and none may be ended
    while a worker is still in it."""
    import threading

    c = Cown(0)
    stop = threading.Event()
    closed = refused = 0

    def closer() -> None:
        nonlocal closed, refused
        while not stop.is_set():
            try:
                _core._close_pool()
                closed += 1
            except RuntimeError:
                refused += 1

    thread = threading.Thread(target=closer)
    thread.start()
    try:
        for _ in range(30):
            for _ in range(4):
                whencall(_bump, [c])
            bocpy.wait(timeout=30)
    finally:
        stop.set()
        thread.join()
    assert c.unwrap() == 120
    assert closed > 0 and refused > 0, (closed, refused)


def test_wait_still_waits_for_threads_and_atexit_of_behaviors(run_script):
    """What ending the worker interpreters used to do inside wait() happens
    there still: threads behaviors started are joined, and their atexit
    callbacks run, before wait() returns; the script's globals stay until
    then."""
    proc = run_script(
        """
        import bocpy
        from bocpy import when

        GREETING = "hello"

        @when()
        def _():
            import atexit, threading, time

            def late():
                time.sleep(0.3)
                print("thread says", GREETING, flush=True)

            atexit.register(lambda: print("worker atexit ran", flush=True))
            threading.Thread(target=late).start()

        bocpy.wait()
        print("wait returned", flush=True)

        @when()
        def _():
            print("second run", flush=True)

        bocpy.wait()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout.splitlines()
    if THREADS_BACKEND:
        # No interpreter ends at wait() on the threads backend: the behavior's
        # thread (not a daemon, as in a worker interpreter) and its atexit
        # callback are the program's own, so Python joins the thread, then
        # runs the callback, when the program exits.  wait() does not join
        # it: an idle thread of the program's own pool, started lazily by a
        # body, ends only at exit.
        assert sorted(out) == [
            "second run",
            "thread says hello",
            "wait returned",
            "worker atexit ran",
        ]
        assert out.index("wait returned") < out.index("second run")
        assert out.index("thread says hello") < out.index("worker atexit ran")
        return
    assert out == [
        "thread says hello",
        "worker atexit ran",
        "wait returned",
        "second run",
    ]


@pool_only
def test_a_kept_interpreter_a_behavior_broke_is_replaced(run_script):
    proc = run_script(
        """
        import sys
        import bocpy
        from bocpy import Cown, when

        c = Cown(0)

        @when(c)
        def _(c):
            import sys
            del sys.modules["__main__"]  # the worker cannot bootstrap again
            c.value = 1

        bocpy.wait()

        @when(c)
        def _(c):
            c.value += 1

        bocpy.wait()
        with c:
            print("value", c.value, flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["value 2"]
