"""Ctrl-C (SIGINT) interrupts wait() and quiesce() promptly.

Each test starts a script that schedules a body that will not finish soon,
prints ``ready`` and blocks in ``wait()``/``quiesce()``; the test then sends
SIGINT and checks how the script reacts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import LineReader

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


def interrupt_after_ready(
    start_script, source: str
) -> tuple[subprocess.Popen[str], LineReader, float]:
    """Start ``source``, wait for ``ready``, let it block, then send SIGINT.

    Returns the process, its line reader, and the monotonic time of the signal.
    """
    proc = start_script(source)
    reader = LineReader(proc)
    reader.wait_for("ready")
    time.sleep(0.5)  # let the script enter wait()/quiesce()
    assert proc.poll() is None, "script ended before it was interrupted"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    return proc, reader, sent


def finish(proc: subprocess.Popen[str], limit: float) -> tuple[int, str]:
    """Wait up to ``limit`` seconds for the process; kill it and fail if it hangs."""
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"process still running {limit}s after SIGINT")
    assert proc.stderr is not None
    return proc.returncode, proc.stderr.read()


def test_ctrl_c_interrupts_wait_and_the_process_exits(start_script):
    proc, reader, sent = interrupt_after_ready(
        start_script,
        """
        import time
        from bocpy import Cown, when, wait

        @when(Cown(0))
        def _(c):
            time.sleep(30)

        print("ready", flush=True)
        wait()
        print("wait returned", flush=True)
        """,
    )
    rc, stderr = finish(proc, 15)
    assert time.monotonic() - sent < 15
    assert rc != 0
    assert "KeyboardInterrupt" in stderr
    assert "wait returned" not in reader.rest()


def test_keyboard_interrupt_is_raised_from_wait_promptly(start_script):
    proc, reader, sent = interrupt_after_ready(
        start_script,
        """
        import os
        import time
        import traceback
        from bocpy import Cown, when, wait

        @when(Cown(0))
        def _(c):
            time.sleep(30)

        try:
            print("ready", flush=True)
            wait()
            print("wait returned", flush=True)
        except KeyboardInterrupt as err:
            frames = [frame.name for frame in traceback.extract_tb(err.__traceback__)]
            print("caught in", frames[-1], flush=True)
        os._exit(0)
        """,
    )
    reader.wait_for("caught in wait", timeout=10)
    assert time.monotonic() - sent < 10
    rc, _ = finish(proc, 15)
    assert rc == 0


def test_ctrl_c_interrupts_quiesce_with_a_busy_body(start_script):
    proc, reader, sent = interrupt_after_ready(
        start_script,
        """
        from bocpy import Cown, when, quiesce

        @when(Cown(0))
        def _(c):
            while True:   # never yields: only process exit can end it
                pass

        print("ready", flush=True)
        try:
            quiesce()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            raise
        """,
    )
    reader.wait_for("interrupted", timeout=10)
    rc, stderr = finish(proc, 15)
    assert time.monotonic() - sent < 15
    assert rc != 0
    assert "KeyboardInterrupt" in stderr


def test_wait_after_an_interrupted_wait_finishes_the_work(start_script, tmp_path):
    gate = tmp_path / "gate"
    proc, reader, _ = interrupt_after_ready(
        start_script,
        f"""
        import os
        import time
        from bocpy import Cown, when, wait

        GATE = {str(gate)!r}

        c = Cown(0)

        @when(c)
        def slow(c, gate=GATE):
            deadline = time.monotonic() + 30
            while not os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
            c.value = 1
            return os.path.exists(gate)

        @when(c)
        def after(c):
            c.value += 1
            return c.value

        print("ready", flush=True)
        try:
            wait()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        open(GATE, "w").close()
        wait(timeout=30)
        print("results", slow.unwrap(), after.unwrap(), c.unwrap(), flush=True)
        """,
    )
    reader.wait_for("interrupted", timeout=10)
    rc, stderr = finish(proc, 30)
    assert rc == 0, stderr
    assert reader.rest()[-1] == "results True 2 2"


def test_ctrl_c_during_the_implicit_wait_at_exit(start_script):
    """A script that ends without wait() waits at exit; Ctrl-C stops that too."""
    proc, reader, sent = interrupt_after_ready(
        start_script,
        """
        import time
        from bocpy import Cown, when

        @when(Cown(0))
        def _(c):
            time.sleep(30)

        print("ready", flush=True)
        """,
    )
    rc, _ = finish(proc, 15)
    assert time.monotonic() - sent < 15
    assert rc != 0


def test_ctrl_c_while_the_main_thread_is_scheduling(start_script):
    proc, reader, sent = interrupt_after_ready(
        start_script,
        """
        from bocpy import Cown, when

        c = Cown(0)
        n = 0
        while True:
            @when(c)
            def _(c):
                c.value += 1
            n += 1
            if n == 2000:
                print("ready", flush=True)
        """,
    )
    rc, stderr = finish(proc, 15)
    assert time.monotonic() - sent < 15
    assert rc != 0
    assert "KeyboardInterrupt" in stderr
