"""Worker backends: start(backend="interpreters" | "threads") (docs/backends.md).

Every program runs in a subprocess: the backend chosen by start() is the
one later implicit starts get too, so it must not leak into other tests.
The threads backend works on GIL builds as well (bodies take turns), so
these tests run on both builds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_threads_backend_runs_bodies_on_the_objects_themselves(run_script: Run) -> None:
    out = ok(
        run_script(
            """
            import threading
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(2, backend="threads")
            lock = threading.Lock()  # cannot be pickled: never copied here
            box = [lock]
            c = Cown(box)

            @when(c)
            def add(c):
                assert c.value is box  # the same object, not a copy
                with c.value[0]:
                    c.value.append(lambda x: x + 1)
                return c.value[1](41)

            wait()
            assert c.value is box and len(box) == 2
            print(add.value, bocpy._core._backend())
            """
        )
    )
    assert out.split() == ["42", "threads"]


def test_threads_backend_keeps_exclusivity_on_a_long_chain(run_script: Run) -> None:
    out = ok(
        run_script(
            """
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(4, backend="threads")
            counters = [Cown([0]) for _ in range(4)]
            for _ in range(300):
                for i in range(4):
                    @when(counters[i], counters[(i + 1) % 4])
                    def step(a, b):
                        a.value[0] += 1
                        b.value[0] += 1
            wait()
            print(sum(c.value[0] for c in counters))
            """
        )
    )
    assert out.split() == [str(300 * 4 * 2)]


def test_threads_backend_result_carries_the_exception_and_traceback(run_script: Run) -> None:
    out = ok(
        run_script(
            """
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(1, backend="threads")

            @when(Cown(0))
            def boom(c):
                raise KeyError("missing")

            wait()
            try:
                boom.unwrap()
            except KeyError as e:
                notes = "".join(getattr(e, "__notes__", []))
                print("KeyError", "Behavior traceback" in notes, e.__traceback__ is not None)
            """
        )
    )
    assert out.split() == ["KeyError", "True", "True"]


def test_bocpy_backend_environment_variable_selects_the_default(run_script: Run) -> None:
    proc = run_script(
        """
        import os
        os.environ["BOCPY_BACKEND"] = "threads"
        import bocpy
        from bocpy import Cown, wait, when

        c = Cown(1)

        @when(c)
        def f(c):
            c.value = object()  # unpicklable anywhere but here

        wait()
        print(bocpy._core._backend(), type(c.value).__name__)
        """
    )
    assert ok(proc).split() == ["threads", "object"]


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        ('bocpy.start(backend="processes")', "ValueError", "'processes'"),
        ("bocpy.start(backend=3)", "TypeError", "backend"),
        (
            'bocpy.start(2, backend="interpreters"); bocpy.start(backend="threads")',
            "RuntimeError",
            "'interpreters' backend",
        ),
    ],
)
def test_bad_backend_is_a_clear_error(run_script: Run, call: str, error: str, words: str) -> None:
    out = ok(
        run_script(
            f"""
            import bocpy
            try:
                {call}
            except Exception as e:
                print(type(e).__name__, "|", e)
            bocpy.wait()
            """
        )
    )
    name, _, message = out.partition("|")
    assert name.strip() == error, out
    assert words in message, out


def test_threads_backend_passes_captured_defaults_and_closures(run_script: Run) -> None:
    out = ok(
        run_script(
            """
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(2, backend="threads")
            c = Cown(0)

            @when(c)
            def defaults_only(c, n=5):  # @when sends the defaults alone
                c.value += n

            def make(k):
                @when(c)
                def closure(c, extra=1):
                    c.value += k * extra
                return closure

            make(100)
            wait()
            print(c.value)
            """
        )
    )
    assert out.split() == ["105"]


def test_check_sharing_names_both_cowns_of_a_shared_object(run_script: Run) -> None:
    out = ok(
        run_script(
            """
            import os
            os.environ["BOCPY_CHECK_SHARING"] = "1"
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(2, backend="threads")
            shared = [1]
            a = Cown({"k": shared})
            b = Cown([("a tuple is walked", shared)])
            atoms = Cown([1, "x", None, (2, 3), 4.5, b"y"])
            more = Cown([1, "x", None, (2, 3), 4.5, b"y"])

            class Point:
                pass

            p, q = Cown(Point()), Cown(Point())  # the class itself is not data

            @when(a, [atoms, b])
            def mixes(a, group):
                return "ran"

            @when(atoms, more, p, q, a, a)
            def fine(*cowns):  # atoms, one class, one cown listed twice
                return "ran"

            @when(Cown(shared), Cown(shared))
            def same_value(x, y):
                return "ran"

            wait()
            for result in (mixes, same_value):
                try:
                    result.unwrap()
                except RuntimeError as e:
                    print("E", e)
            print("fine", fine.unwrap())
            """
        )
    )
    lines = out.splitlines()
    assert lines[0].startswith("E BOCPY_CHECK_SHARING: behavior '__main__.mixes' did not run")
    assert "argument 0 (cown id" in lines[0] and "argument 1, item 1 of its list" in lines[0]
    assert "same 'list' object" in lines[0]
    assert "argument 0" in lines[1] and "argument 1" in lines[1], lines[1]
    assert lines[2] == "fine ran"


def test_check_sharing_is_off_by_default_and_a_bad_value_is_refused(run_script: Run) -> None:
    out = ok(
        run_script(
            """
            import os
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(2, backend="threads")
            shared = []
            a, b = Cown([shared]), Cown([shared])

            @when(a, b)
            def unchecked(a, b):
                return "ran"

            wait()
            print(unchecked.unwrap())
            os.environ["BOCPY_CHECK_SHARING"] = "yes"
            try:
                bocpy.start(2, backend="threads")
            except ValueError as e:
                print("E", e)
            """
        )
    )
    lines = out.splitlines()
    assert lines[0] == "ran"
    assert lines[1].startswith("E BOCPY_CHECK_SHARING is 'yes': set it to '1'"), lines[1]


def test_threads_backend_captures_are_the_objects_not_copies(run_script: Run) -> None:
    """Locks, lambdas and open files can be captured (on the interpreters
    backend they cannot be pickled); the snapshot is still taken at @when, so
    a closure variable rebound later does not change what a behavior sees."""
    out = ok(
        run_script(
            """
            import threading
            import bocpy
            from bocpy import Cown, PinnedCown, wait, when, whencall

            bocpy.start(2, backend="threads")
            lock = threading.Lock()

            def main():
                c = Cown(0)
                guard = threading.Lock()  # captured by the closures below
                for i in range(3):
                    double = lambda x: 2 * x

                    @when(c)
                    def step(c, f=double):
                        with guard:
                            c.value += f(i)  # i as it was at @when

                pinned = PinnedCown([])

                @when(pinned, c)
                def on_main(p, c):
                    with guard:
                        on = threading.current_thread() is threading.main_thread()
                        p.value.append((c.value, on))

                def add(c, k, box):
                    box.append(lock)
                    return k(c.value)

                box = []
                plus = whencall(add, [c], [lambda v: v + 100, box])
                wait()
                print(c.value, pinned.value, plus.unwrap(), box[0] is lock)

            main()
            """
        )
    )
    assert out.split() == ["6", "[(6,", "True)]", "106", "True"]


def test_threads_backend_refuses_main_program_calls_inside_a_behavior(run_script: Run) -> None:
    """A body runs in the main interpreter here, so the check is by thread."""
    out = ok(
        run_script(
            """
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(2, backend="threads")
            c, other = Cown(0), Cown(1)

            @when(c)
            def inside(c):
                seen = []
                for name, call in [
                    ("wait", lambda: bocpy.wait()),
                    ("start", lambda: bocpy.start()),
                    ("pump", lambda: bocpy.pump()),
                    ("acquire", lambda: other.acquire()),
                    ("read", lambda: other.value),
                ]:
                    try:
                        call()
                        seen.append(name + ":ok")
                    except RuntimeError:
                        seen.append(name + ":RuntimeError")
                return seen

            wait()
            print(" ".join(inside.unwrap()))
            """
        )
    )
    assert out.split() == [
        "wait:RuntimeError",
        "start:RuntimeError",
        "pump:RuntimeError",
        "acquire:RuntimeError",
        "read:RuntimeError",
    ]


def test_default_backend_follows_the_build_and_the_environment(tmp_path: Path) -> None:
    """Threads on a free-threaded build, interpreters on a GIL build;
    $BOCPY_BACKEND overrides both (docs/backends.md)."""
    script = tmp_path / "which.py"
    script.write_text(
        "import bocpy\n"
        "from bocpy import Cown, wait, when\n"
        "c = Cown(1)\n"
        "@when(c)\n"
        "def bump(c):\n"
        "    c.value += 1\n"
        "wait()\n"
        "print(bocpy._core._backend(), c.value)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "BOCPY_BACKEND"}
    default = "threads" if sysconfig.get_config_var("Py_GIL_DISABLED") else "interpreters"
    for chosen, expected in (
        (None, default),
        ("threads", "threads"),
        ("interpreters", "interpreters"),
    ):
        if chosen is not None:
            env["BOCPY_BACKEND"] = chosen
        proc = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [expected, "2"], (chosen, proc.stdout)


def test_threads_backend_bodies_can_use_the_programs_thread_pool(run_script: Run) -> None:
    """A body may submit to a ThreadPoolExecutor the program owns; the pool's
    thread, started lazily by the body, is not a daemon, and wait() returns
    while it idles (the pool shuts down at exit, as in any program)."""
    out = ok(
        run_script(
            """
            import threading
            from concurrent.futures import ThreadPoolExecutor
            import bocpy
            from bocpy import Cown, wait, when

            bocpy.start(2, backend="threads")
            EX = ThreadPoolExecutor(1)
            c = Cown(20)

            @when(c)
            def use_pool(c):
                c.value = EX.submit(lambda x: x + 1, c.value).result() * 2
                return [t.daemon for t in threading.enumerate() if t.name.startswith("ThreadPool")]

            wait(timeout=30)
            print(c.value, use_pool.value)
            """
        )
    )
    assert out.split() == ["42", "[False]"]


def test_threads_backend_workers_leave_no_thread_records_behind(run_script: Run) -> None:
    """Each runtime's workers are forgotten by threading when they stop
    (3.12 kept one dummy Thread per worker per runtime in threading._active)."""
    out = ok(
        run_script(
            """
            import threading
            import bocpy
            from bocpy import Cown, wait, when

            counts = []
            for run in range(5):
                bocpy.start(3, backend="threads")
                c = Cown(0)
                for _ in range(6):

                    @when(c)
                    def touch(c):
                        threading.current_thread()  # makes threading's record
                        c.value += 1

                wait()
                counts.append(
                    sum(isinstance(t, threading._DummyThread) for t in threading.enumerate())
                )
            print(counts)
            """
        )
    )
    assert out.strip() == "[0, 0, 0, 0, 0]", out


def test_threads_backend_sends_no_late_binds(run_script: Run) -> None:
    """Globals a script makes after start() are pickled for worker
    interpreters (late binds); threads-backend workers read __main__ itself,
    so @when pickles nothing -- an unpicklable new global is simply used."""
    out = ok(
        run_script(
            """
            import threading
            import bocpy
            import bocpy._bootstrap as boot
            from bocpy import Cown, wait, when

            refreshes = []
            real = boot.refresh_main
            boot.refresh_main = lambda: (refreshes.append(1), real())[1]
            bocpy.start(1, backend="threads")
            c = Cown(0)
            for i in range(5):
                globals()[f"lock{i}"] = threading.Lock()

                @when(c)
                def use(c, i=i):
                    with globals()[f"lock{i}"]:
                        c.value += 1

            wait()
            print(len(refreshes), c.value)
            """
        )
    )
    assert out.split() == ["0", "5"]
