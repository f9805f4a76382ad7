"""Script mode: bocpy used from a real ``__main__`` script in a subprocess.

Workers must see the script's imports, functions, classes and constants
without re-running its top-level statements; a script that ends without
``wait()`` still runs its behaviors; a crashing script exits promptly.
"""

from __future__ import annotations

import sys
import time

import pytest
from conftest import THREADS_BACKEND

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX subprocess semantics")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_guarded_script_uses_module_level_names(run_script):
    proc = run_script(
        """
        import math
        import bocpy
        from bocpy import Cown, when, wait

        SCALE = 10

        class Box:
            def __init__(self, n):
                self.n = n

        def helper(x):
            return math.isqrt(x) * SCALE

        def main():
            c = Cown(Box(49))

            @when(c)
            def r(c):
                c.value.n = helper(c.value.n)
                return type(c.value).__name__, c.value.n

            wait()
            print("result", r.unwrap())
            print("box", c.unwrap().n)

        if __name__ == "__main__":
            print("top")
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["top", "result ('Box', 70)", "box 70"]


def test_behavior_at_top_level_of_the_guard_with_enum_and_cached_helper(run_script):
    proc = run_script(
        """
        import enum
        import functools
        import os
        from bocpy import Cown, when, wait

        class Color(enum.Enum):
            RED = 1
            BLUE = 2

        @functools.lru_cache(maxsize=None)
        def costly(n):
            return n * n

        if __name__ == "__main__":
            c = Cown(Color.RED)

            @when(c)
            def r(c):
                was_red = c.value is Color.RED
                c.value = Color.BLUE
                return was_red, costly(7), os.path.basename(__file__)

            wait()
            print(r.unwrap(), c.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["(True, 49, 'script.py') Color.BLUE"]


def test_unguarded_script_runs_top_level_once(run_script):
    proc = run_script(
        """
        import bocpy
        from bocpy import Cown, when, wait

        print("top-level statement")
        LIMIT = 5

        def square(x):
            return x * x

        bocpy.start(2)
        counter = Cown(0)
        results = []
        for i in range(LIMIT):
            @when(counter)
            def r(counter, i=i):
                counter.value += square(i)
                return square(i)
            results.append(r)

        wait()
        print("results", [r.unwrap() for r in results])
        print("counter", counter.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == [
        "top-level statement",
        "results [0, 1, 4, 9, 16]",
        "counter 30",
    ]


def test_top_level_side_effects_are_not_repeated_by_workers(run_script, tmp_path):
    log = tmp_path / "top.log"
    proc = run_script(
        f"""
        import bocpy
        from bocpy import Cown, when, wait

        with open({str(log)!r}, "a") as f:
            f.write("top\\n")

        bocpy.start(2)
        c = Cown(0)
        for _ in range(50):
            @when(c)
            def _(c):
                c.value += 1

        @when()
        def nested():
            @when()
            def deeper():
                return 1
            return deeper

        wait()
        print(c.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["50"]
    assert log.read_text() == "top\n"


def test_prints_from_behaviors_appear_exactly_once(run_script):
    proc = run_script(
        """
        import bocpy
        from bocpy import Cown, when, wait

        bocpy.start(2)
        print("main says hi", flush=True)
        for i in range(6):
            @when()
            def _(i=i):
                print(f"body {i}")

        wait()  # tears the workers down: their output is flushed by now
        print("main says bye", flush=True)
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert out.count("main says hi") == 1
    assert out.count("main says bye") == 1
    assert out[0] == "main says hi" and out[-1] == "main says bye"
    assert sorted(line for line in out if line.startswith("body")) == [
        f"body {i}" for i in range(6)
    ]


def test_script_without_wait_still_runs_its_behaviors(run_script, tmp_path):
    out = tmp_path / "out.txt"
    proc = run_script(
        f"""
        from bocpy import Cown, when

        OUT = {str(out)!r}
        c = Cown([])
        for i in range(10):
            @when(c)
            def _(c, i=i):
                c.value.append(i)

        @when(c)
        def _(c, path=OUT):
            @when(c)
            def _(c, path=path):
                with open(path, "w") as f:
                    f.write(",".join(map(str, c.value)))
        print("script end")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["script end"]
    assert out.read_text() == ",".join(map(str, range(10)))


def test_prints_from_behaviors_appear_when_the_script_has_no_wait(run_script):
    # On the threads backend the bodies and the main thread share one
    # sys.stdout, and print() writes its pieces in separate calls, so a
    # print racing the bodies' prints can interleave with them, as between
    # any two Python threads (on the interpreters backend each worker has a
    # stdout of its own, flushed whole).  There the main thread prints first.
    main_first = 'print("main end")' if THREADS_BACKEND else ""
    main_last = "" if THREADS_BACKEND else 'print("main end")'
    proc = run_script(
        f"""
        from bocpy import Cown, when

        {main_first}
        c = Cown(0)
        for i in range(3):
            @when(c)
            def _(c, i=i):
                c.value += 1
                print("body", i, c.value)

        {main_last}
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert sorted(out) == ["body 0 1", "body 1 2", "body 2 3", "main end"]


def test_script_calling_sys_exit_keeps_its_status_and_runs_behaviors(run_script, tmp_path):
    out = tmp_path / "out.txt"
    proc = run_script(
        f"""
        import sys
        from bocpy import Cown, when

        @when(Cown(3))
        def _(c, path={str(out)!r}):
            with open(path, "w") as f:
                f.write(str(c.value * 2))

        sys.exit(3)
        """
    )
    assert proc.returncode == 3, proc.stderr
    assert out.read_text() == "6"


def test_uncaught_exception_exits_promptly_with_traceback(run_script):
    start = time.monotonic()
    proc = run_script(
        """
        from bocpy import Cown, when

        c = Cown(0)
        @when(c)
        def _(c):
            c.value += 1

        def fail():
            raise RuntimeError("script blew up")

        fail()
        """
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "RuntimeError: script blew up" in proc.stderr
    assert "in fail" in proc.stderr
    assert elapsed < 10, f"took {elapsed:.1f}s to exit"


def test_uncaught_exception_with_a_long_running_body_exits_promptly(run_script):
    start = time.monotonic()
    proc = run_script(
        """
        import time
        from bocpy import Cown, when

        c = Cown(0)
        @when(c)
        def _(c):
            time.sleep(30)

        for _ in range(5):
            @when(c)
            def _(c):
                time.sleep(30)

        time.sleep(0.3)
        raise ValueError("crash while busy")
        """
    )
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "ValueError: crash while busy" in proc.stderr
    assert elapsed < 15, f"took {elapsed:.1f}s to exit"


def test_behaviors_defined_in_an_imported_helper_module(run_script):
    helper = """
        import bocpy
        from bocpy import Cown, when

        FACTOR = 3

        class Tally:
            def __init__(self):
                self.items = []

        def record(tally_cown, n):
            @when(tally_cown)
            def add(tally_cown, n=n):
                tally_cown.value.items.append(n * FACTOR)
                return len(tally_cown.value.items)
            return add
        """
    proc = run_script(
        """
        from bocpy import Cown, wait
        import helper

        tally = Cown(helper.Tally())
        results = [helper.record(tally, n) for n in range(4)]
        wait()
        print([r.unwrap() for r in results])
        value = tally.unwrap()
        print(type(value).__module__, type(value).__name__, value.items)
        """,
        files={"helper.py": helper},
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["[1, 2, 3, 4]", "helper Tally [0, 3, 6, 9]"]


def test_behaviors_nested_inside_functions_in_a_script(run_script):
    proc = run_script(
        """
        from bocpy import Cown, when, wait

        def make_counter(start):
            counter = Cown(start)
            step = 5

            def bump_later():
                @when(counter)
                def bumped(counter):
                    counter.value += step
                    return counter.value
                return bumped

            return counter, bump_later

        def main():
            counter, bump_later = make_counter(10)
            first = bump_later()
            second = bump_later()
            wait()
            print(first.unwrap(), second.unwrap(), counter.unwrap())

        main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["15 20 20"]


def test_script_classes_and_exceptions_cross_to_workers(run_script):
    proc = run_script(
        """
        from dataclasses import dataclass
        from bocpy import Cown, when, wait

        @dataclass
        class Point:
            x: int
            y: int

        class ScriptError(Exception):
            pass

        p = Cown(Point(1, 2))

        @when(p)
        def moved(p):
            p.value = Point(p.value.x + 1, p.value.y + 1)
            return p.value

        @when(p)
        def failed(p):
            raise ScriptError("from script", p.value.x)

        wait()
        print(moved.unwrap())
        try:
            failed.unwrap()
        except ScriptError as err:
            print("caught", type(err).__name__, err.args)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == [
        "Point(x=2, y=3)",
        "caught ScriptError ('from script', 2)",
    ]


def test_script_argv_is_visible_to_behaviors(run_script):
    proc = run_script(
        """
        import sys
        from bocpy import when, wait

        @when()
        def r():
            import sys
            return sys.argv[1:]

        wait()
        print(r.unwrap())
        """,
        args=["alpha", "beta"],
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["['alpha', 'beta']"]


def test_script_with_unpicklable_module_global_still_works(run_script):
    proc = run_script(
        """
        import threading
        from bocpy import Cown, when, wait

        LOCK = threading.Lock()   # cannot be sent to workers; bodies do not use it
        NAMES = ["a", "b"]

        @when(Cown(0))
        def r(c):
            return NAMES + ["c"]

        wait()
        print(r.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["['a', 'b', 'c']"]


def test_top_level_result_cown_is_visible_to_later_bodies(run_script):
    proc = run_script(
        """
        from bocpy import Cown, when, wait

        counter = Cown(0)

        def bump():
            @when(counter)
            def _(counter):
                counter.value += 1

        @when()
        def driver():
            for _ in range(10):
                bump()

        @when(counter)
        def total(counter):
            return "total"

        @when()
        def report():
            @when(total)
            def seen(total):
                return total.value + " seen"
            return seen

        wait()
        print(counter.unwrap(), report.unwrap().unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["10 total seen"]


def test_globals_computed_after_the_first_behavior_are_visible(run_script):
    proc = run_script(
        """
        from bocpy import Cown, when, wait

        c = Cown(1)

        @when(c)
        def first(c):
            c.value += 1

        TABLE = dict(x=10)
        SCALE = len("abc")

        @when(c)
        def second(c):
            return c.value * TABLE["x"] * SCALE

        wait()
        print(second.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["60"]


def test_definitions_after_the_first_behavior_are_visible(run_script):
    proc = run_script(
        """
        from bocpy import Cown, when, wait

        c = Cown(1)

        @when(c)
        def first(c):
            c.value += 1

        LIMIT = 3

        def helper(x):
            return x * 10

        class Offset:
            value = 7

        @when(c)
        def second(c):
            return helper(c.value) + LIMIT + Offset.value

        wait()
        print(second.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["30"]


def test_module_run_with_dash_m_from_a_package(run_script):
    runner = """
        from dataclasses import dataclass
        from bocpy import Cown, when, wait
        from .util import scale

        @dataclass
        class Item:
            n: int

        def main():
            c = Cown(Item(2))

            @when(c)
            def r(c):
                c.value = Item(scale(c.value.n))
                return c.value

            wait()
            print("top", __name__)
            print(r.unwrap())

        if __name__ == "__main__":
            main()
        """
    proc = run_script(
        "",
        module="app.run",
        files={
            "app/__init__.py": "",
            "app/util.py": "def scale(x):\n    return x * 100\n",
            "app/run.py": runner,
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["top __main__", "Item(n=200)"]


@pytest.mark.skipif(
    sys.version_info < (3, 13),
    reason="CPython 3.12 corrupts memory when an interpreter that ran asyncio ends "
    "(reproducible with _xxsubinterpreters alone, without bocpy)",
)
def test_stdlib_threading_users_in_bodies_leave_stderr_clean(run_script):
    proc = run_script(
        """
        import sys
        from bocpy import when, wait

        @when()
        def logged():
            import logging
            logging.getLogger("bocpy-test").warning("logged from a behavior")
            return "logged"

        @when()
        def ran_asyncio():
            import asyncio

            async def main():
                await asyncio.sleep(0)
                return 42

            return asyncio.run(main())

        wait()
        print(logged.unwrap(), ran_asyncio.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["logged 42"]
    assert "Exception ignored" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "logged from a behavior" in proc.stderr


def test_globals_assigned_in_the_main_guard_are_visible(run_script):
    proc = run_script(
        """
        import sys
        from bocpy import Cown, when, wait

        def work(c):
            @when(c)
            def r(c):
                return c.value * FACTOR
            return r

        if __name__ == "__main__":
            FACTOR = int(sys.argv[1])
            r = work(Cown(2))
            wait()
            print(r.unwrap())
        """,
        args=["7"],
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["14"]


def test_globals_set_through_a_global_statement_are_visible(run_script):
    proc = run_script(
        """
        from bocpy import Cown, when, wait

        def setup():
            global CONFIG
            CONFIG = {"scale": 4}

        setup()

        @when(Cown(2))
        def r(c):
            return c.value * CONFIG["scale"]

        wait()
        print(r.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["8"]
