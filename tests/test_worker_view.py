"""What a user's script looks like from inside a worker.

Scripts run from a file, with ``python -c`` or from standard input; their
imports and module-level globals (picklable or not) are there in behavior
bodies; what behaviors log reaches the script's logging configuration;
methods can be scheduled.  Each test runs a small script in a subprocess,
as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import SUBPROCESS_TIMEOUT, subprocess_env

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
