"""What a user's script looks like from inside a worker.

Scripts run from a file, with ``python -c`` or from standard input; their
imports and module-level globals (picklable or not) are there in behavior
bodies; what behaviors log reaches the script's logging configuration;
methods can be scheduled.  Each test runs a small script in a subprocess,
as a user would.

On the threads backend (``conftest.THREADS_BACKEND``) there are no worker
interpreters: bodies run in the main interpreter with the script's own
globals, so nothing is re-imported, re-run or sent, and a method's receiver
is the object itself.  The tests say what differs there.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import SUBPROCESS_TIMEOUT, THREADS_BACKEND, subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX subprocess semantics")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def run_inline(source: str, *, stdin: bool, tmp_path) -> subprocess.CompletedProcess[str]:
    """Run ``source`` with ``python -c`` or (``stdin``) ``python -``."""
    source = textwrap.dedent(source)
    if stdin:
        command, text = [sys.executable, "-"], source
    else:
        command, text = [sys.executable, "-c", source], None
    return subprocess.run(
        command,
        input=text,
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


# ---------------------------------------------------------------- logging


def test_behavior_logs_go_through_the_main_guard_configuration(run_script):
    # The sketches idiom: logging configured inside main(), loggers fetched
    # by name inside behaviors, INFO records expected.
    proc = run_script(
        """
        import logging
        import sys
        from bocpy import Cown, when, wait

        def report(logger, n):
            logger.info("step %d", n)

        def main():
            logging.basicConfig(
                level=logging.INFO, stream=sys.stdout, format="%(levelname)s|%(name)s|%(message)s"
            )
            c = Cown(0)

            @when(c)
            def _(c):
                logger = logging.getLogger("shop")
                for n in range(50):
                    report(logger, n)
                logger.debug("hidden")
                logging.getLogger("shop").warning("done")

            wait()
            print("after wait")

        if __name__ == "__main__":
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    expected = [f"INFO|shop|step {n}" for n in range(50)]
    assert lines(proc.stdout) == [*expected, "WARNING|shop|done", "after wait"]
    assert "hidden" not in proc.stdout + proc.stderr


def test_behavior_logs_follow_top_level_configuration_and_levels(run_script):
    # Configured at top level, with a handler level, a per-logger level and
    # a logger that is quieter than the root.
    proc = run_script(
        """
        import logging
        import sys
        from bocpy import Cown, when, wait

        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s:%(message)s")
        logging.getLogger("quiet").setLevel(logging.ERROR)
        log = logging.getLogger(__name__)

        @when()
        def _():
            log.debug("main debug")
            logging.getLogger("quiet").warning("quiet warning")
            logging.getLogger("quiet").error("quiet error")
            logging.getLogger("quiet.child").info("child info")
            logging.getLogger("loud").debug("loud debug")
            try:
                1 / 0
            except ZeroDivisionError:
                log.exception("failed")

        wait()
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert out[:4] == [
        "__main__:main debug",
        "quiet:quiet error",
        "loud:loud debug",
        "__main__:failed",
    ]
    assert out[4] == "Traceback (most recent call last):"
    assert out[-1] == "ZeroDivisionError: division by zero"
    assert "quiet warning" not in proc.stdout and "child info" not in proc.stdout


def test_level_changes_after_start_reach_workers(run_script):
    proc = run_script(
        """
        import logging
        import sys
        from bocpy import Cown, when, wait, quiesce

        logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
        c = Cown(0)

        def log_all(tag):
            for level in (logging.DEBUG, logging.INFO, logging.WARNING):
                logging.getLogger("app").log(level, tag)

        @when(c)
        def _(c):
            log_all("first")

        quiesce()
        logging.getLogger("app").setLevel(logging.DEBUG)

        @when(c)
        def _(c):
            log_all("second")

        quiesce()
        logging.disable(logging.INFO)

        @when(c)
        def _(c):
            log_all("third")

        wait()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == [
        "WARNING first",
        "DEBUG second",
        "INFO second",
        "WARNING second",
        "WARNING third",
    ]


def test_records_from_many_workers_keep_their_order_and_none_is_lost(run_script):
    proc = run_script(
        """
        import logging
        import sys
        from bocpy import Cown, when, wait, start

        def main():
            start(4)
            logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
            for w in range(8):
                c = Cown(w)

                @when(c)
                def _(c):
                    for i in range(200):
                        logging.info("%d %d", c.value, i)

            wait()
            print("end")

        if __name__ == "__main__":
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    assert out[-1] == "end"
    seen: dict[int, list[int]] = {}
    for line in out[:-1]:
        w, i = map(int, line.split())
        seen.setdefault(w, []).append(i)
    assert seen == {w: list(range(200)) for w in range(8)}


def test_unconfigured_logging_prints_warnings_once_like_a_plain_script(run_script):
    proc = run_script(
        """
        import logging
        from bocpy import when, wait

        @when()
        def _():
            logging.getLogger("x").info("info is below the default level")
            logging.getLogger("x").warning("a warning")

        wait()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stderr) == ["a warning"]


def test_records_logged_without_wait_are_printed_at_exit(run_script):
    proc = run_script(
        """
        import logging
        import sys
        from bocpy import when

        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")

        @when()
        def _():
            logging.info("from a script that never waits")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["from a script that never waits"]


# ------------------------------------------------ python -c and standard input

INLINE_SCRIPT = """
import math
import os.path as osp
import threading
from bocpy import *

LOCK = threading.Lock()
c = Cown(16)

@when(c)
def root(c):
    return math.sqrt(c.value), osp.basename("/a/b.txt")

@when(c)
def locked(c):
    with LOCK:
        return "locked"

wait()
print(root.unwrap())
try:
    print(locked.unwrap())
except NameError as err:
    print("NameError:", err)
"""


def test_python_c_scripts_use_their_imports_and_globals(tmp_path):
    proc = run_inline(INLINE_SCRIPT, stdin=False, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["(4.0, 'b.txt')", "locked"]


def test_python_c_with_grouped_options(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-X",
            "dev",
            "-Bc",
            "import math; from bocpy import *\n"
            "@when()\ndef f():\n    return math.factorial(5)\n"
            "wait(); print(f.unwrap())",
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["120"]


def test_scripts_from_standard_input_use_their_imports(tmp_path):
    # Read from a pipe, the source is gone: modules are re-imported, and a
    # global that cannot be pickled gets a NameError that says why.
    proc = run_inline(INLINE_SCRIPT, stdin=True, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    if THREADS_BACKEND:
        # No worker interpreter: the body uses the script's own LOCK.
        assert out == ["(4.0, 'b.txt')", "locked"]
        return
    assert out[0] == "(4.0, 'b.txt')"
    assert out[1].startswith("NameError: name 'LOCK' is not defined in this worker")
    assert "cannot pickle '_thread.lock' object" in out[1]
    assert "no source file" in out[1]


# --------------------------------------------- globals that cannot be pickled


def test_unpicklable_globals_are_recreated_in_workers(run_script):
    proc = run_script(
        """
        import logging
        import re
        import sys
        import threading
        from bocpy import Cown, when, wait

        PATTERN = "ab+"
        LOCK = threading.Lock()
        RLOCK: threading.RLock = threading.RLock()
        log = logging.getLogger(__name__)
        WORD = re.compile(PATTERN, re.I | re.M)
        WORDS = [re.compile(p, re.I) for p in ("x", "y")]
        LOCKS = {name: threading.Lock() for name in ("a", "b")}

        def main():
            logging.basicConfig(
                level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s"
            )
            c = Cown("ABBB")

            @when(c)
            def check(c):
                with LOCK, RLOCK, LOCKS["a"]:
                    log.info("matched %s", WORD.fullmatch(c.value).group())
                return bool(WORDS[1].match("Y")), WORD.flags & re.I != 0

            wait()
            print(check.unwrap())

        if __name__ == "__main__":
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["__main__ matched ABBB", "(True, True)"]


def test_globals_that_cannot_reach_workers_raise_a_name_error_that_says_why(run_script):
    proc = run_script(
        """
        import threading
        from bocpy import when, wait

        STREAM = open(__file__)
        with open(__file__) as f:
            IN_WITH = threading.Lock()
        FAILS = threading.Lock() if STREAM.closed else threading.Lock()

        def use(name):
            return globals()[name] if name == "x" else eval(name)

        def main():
            global LATE
            LATE = threading.Lock()

            @when()
            def stream():
                return STREAM.name

            @when()
            def in_with():
                return IN_WITH

            @when()
            def late():
                return LATE

            @when()
            def plain_typo():
                return NOT_A_GLOBAL

            wait()
            for result in (stream, in_with, late, plain_typo):
                try:
                    result.unwrap()
                except NameError as err:
                    print(err)
            STREAM.close()

        if __name__ == "__main__":
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    if THREADS_BACKEND:
        # Bodies run with the script's own globals on the threads backend:
        # nothing has to reach a worker, so only the real typo fails.
        assert out == ["name 'NOT_A_GLOBAL' is not defined"]
        return
    assert len(out) == 4, out
    prefix = "name '{0}' is not defined in this worker: the script's global '{0}' could not be sent"
    assert out[0].startswith(prefix.format("STREAM"))
    assert "cannot pickle 'TextIOWrapper'" in out[0]
    assert "line 5" in out[0] and "'open'" in out[0]
    assert out[1].startswith(prefix.format("IN_WITH"))
    assert "top-level 'with' block (line 6)" in out[1]
    assert out[2].startswith(prefix.format("LATE"))
    assert "'if __name__ == \"__main__\":' block" in out[2]
    assert out[3] == "name 'NOT_A_GLOBAL' is not defined"


def test_rerun_that_fails_in_the_worker_is_explained(run_script):
    proc = run_script(
        """
        import threading
        from bocpy import when, wait

        class Guard:
            ready = False  # set by the script's top level, which workers do not run

            def __init__(self):
                if not Guard.ready:
                    raise RuntimeError("Guard.ready is not set")
                self.lock = threading.Lock()

        Guard.ready = True
        GUARD = Guard()

        def main():
            @when()
            def uses_guard():
                return GUARD.lock.locked()

            wait()
            try:
                print("locked:", uses_guard.unwrap())
            except NameError as err:
                print(err)

        if __name__ == "__main__":
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    if THREADS_BACKEND:
        # No worker re-runs the script on the threads backend: the body uses
        # the script's own GUARD.
        assert out == ["locked: False"]
        return
    assert len(out) == 1, out
    assert out[0].startswith("name 'GUARD' is not defined in this worker")
    assert out[0].endswith(
        "re-running its assignment (line 14) in the worker failed "
        "(RuntimeError: Guard.ready is not set)"
    )


# ------------------------------------------------------------------ methods


def test_whencall_and_when_accept_methods(run_script):
    proc = run_script(
        """
        from bocpy import Cown, wait, when, whencall

        class Account:
            rate = 2

            def __init__(self, bonus):
                self.bonus = bonus
                self.calls = 0

            def deposit(self, balance, amount, note="deposit"):
                # On the behavior's copy of the receiver (interpreters
                # backend) or on the receiver itself (threads backend).
                self.calls += 1
                balance.value += amount + self.bonus
                return note, self.calls

            def audit(self, balance):
                return balance.value + self.bonus

            @classmethod
            def interest(cls, balance):
                balance.value *= cls.rate
                return cls.__name__

            @staticmethod
            def fee(balance, amount=1):
                balance.value -= amount
                return amount

        def main():
            balance = Cown(0)
            account = Account(bonus=5)
            results = [
                whencall(account.deposit, [balance], [10]),
                whencall(account.deposit, [balance], [1, "second"]),
                whencall(Account.interest, [balance], []),
                whencall(account.interest, [balance]),
                whencall(Account.fee, [balance], [3]),
                whencall(account.fee, [balance], []),
                whencall(Account.__dict__["fee"], [balance]),
                when(balance)(account.audit),
            ]
            for bad in (
                lambda: whencall(account.deposit, [balance], []),
                lambda: when(balance)(account.deposit),
                lambda: whencall(Account.__dict__["interest"], [balance]),
            ):
                try:
                    bad()
                except TypeError as err:
                    print("TypeError:", err)
            wait()
            for result in results:
                print(result.unwrap())
            print(balance.unwrap(), account.calls)

        if __name__ == "__main__":
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = lines(proc.stdout)
    missing = (
        "TypeError: behavior 'Account.deposit' has 2 parameters without defaults after its "
        "receiver but is given 1 argument;"
    )
    assert out[0].startswith(missing)
    assert out[1].startswith(missing)
    assert out[2].startswith("TypeError: cannot schedule the classmethod object 'Account.interest'")
    # The threads backend never copies: both deposits count on ``account``
    # itself, which the main thread then sees.
    assert out[3:] == [
        "('deposit', 1)",
        f"('second', {2 if THREADS_BACKEND else 1})",
        "Account",
        "Account",
        "3",
        "1",
        "1",
        "84",
        f"79 {2 if THREADS_BACKEND else 0}",
    ]


def test_statements_below_the_start_never_run_in_workers(run_script):
    # ``tag, got = receive(...)`` after wait() names only an import and
    # literals, but its names do not exist when the image is built: workers
    # must not run it (each would take a message meant for the main thread).
    proc = run_script(
        """
        from bocpy import Cown, receive, send, wait, when

        send("m", "for main")
        c = Cown(0)

        @when(c)
        def step(c):
            c.value += 1

        wait()
        tag, got = receive("m", 5)
        print(tag, got)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["m", "for", "main"]


def test_a_global_list_of_cowns_made_after_start_reaches_workers(run_script):
    # Sent as a late bind (compact encoding: a list as the whole value); the
    # worker's copy holds the same cowns, and globals() finds it too.
    proc = run_script(
        """
        from bocpy import Cown, start, wait, when

        start(1)
        COWNS = [Cown(i) for i in range(10_000)]
        ODD = [Cown(1), "one", 1.5, None]

        @when(Cown(0))
        def bump_all(c):
            for each in COWNS:

                @when(each)
                def bump(x):
                    x.value += 1

            return len(globals()["COWNS"]), type(ODD).__name__, ODD[1:]

        wait()
        print(bump_all.unwrap())
        print(sum(c.unwrap() for c in COWNS))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["(10000, 'list', ['one', 1.5, None])", str(sum(range(1, 10_001)))]
