"""PinnedCown in script mode: a real ``__main__`` in a fresh subprocess.

Covers what needs a process of its own: prints from pinned bodies, scripts
that never call ``wait()`` (pinned work still runs at exit), scripts that die
(exit promptly), a process that never called ``set_pump_watchdog`` (silent),
and the event-loop integration pattern from the guide.
"""

from __future__ import annotations

import signal
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX subprocess semantics")

#: A crashing script must be gone well within this many seconds.
PROMPT_EXIT = 30.0


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_pinned_body_prints_once_from_main_thread(run_script):
    proc = run_script(
        """
        import threading
        from bocpy import PinnedCown, when, wait

        class Widget:
            def __reduce__(self):
                raise TypeError("widgets stay on main")

        w = PinnedCown(Widget())
        for i in range(3):
            @when(w)
            def draw(w, i=i):
                on_main = threading.current_thread() is threading.main_thread()
                print(f"draw {i} main={on_main} type={type(w.value).__name__}", flush=True)

        wait()
        print("done")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == [
        "draw 0 main=True type=Widget",
        "draw 1 main=True type=Widget",
        "draw 2 main=True type=Widget",
        "done",
    ]


def test_script_without_wait_runs_pinned_behaviors_at_exit(run_script, tmp_path):
    out = tmp_path / "out.txt"
    proc = run_script(
        f"""
        from bocpy import PinnedCown, when

        log = open({str(out)!r}, "w")  # an open file handle: main-only
        sink = PinnedCown(log)
        for i in range(20):
            @when(sink)
            def write(sink, i=i):
                sink.value.write(f"{{i}}\\n")
                sink.value.flush()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().split() == [str(i) for i in range(20)]


def test_script_without_wait_runs_worker_scheduled_pinned_work_at_exit(run_script, tmp_path):
    out = tmp_path / "out.txt"
    proc = run_script(
        f"""
        import threading
        import time
        from bocpy import Cown, PinnedCown, when

        sink = PinnedCown(open({str(out)!r}, "w"))

        for i in range(4):
            @when(Cown(i))
            def compute(c, sink=sink):
                time.sleep(0.1)
                value = c.value * 10

                @when(sink)
                def write(sink, value=value):
                    main = threading.current_thread() is threading.main_thread()
                    sink.value.write(f"{{value}} {{main}}\\n")
                    sink.value.flush()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(lines(out.read_text())) == ["0 True", "10 True", "20 True", "30 True"]


def test_module_global_pinned_handle_used_by_worker_functions(run_script):
    proc = run_script(
        """
        import threading
        from bocpy import Cown, PinnedCown, when, wait

        class Canvas:
            def __init__(self):
                self.cells = []
            def __reduce__(self):
                raise TypeError("canvas stays on main")

        CANVAS = PinnedCown(Canvas())

        def schedule_draw(n):
            @when(CANVAS)
            def draw(canvas):
                canvas.value.cells.append(n)

        def main():
            for i in range(3):
                @when(Cown(i))
                def work(c):
                    schedule_draw(c.value * 2)
            wait()
            with CANVAS:
                print(sorted(CANVAS.value.cells))

        if __name__ == "__main__":
            main()
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["[0, 2, 4]"]


def test_event_loop_pattern_with_wake_fd_and_pump(run_script):
    proc = run_script(
        """
        import select
        import threading
        from bocpy import Cown, PinnedCown, pump, start, wait, wake_fd, when

        class Canvas:
            def __init__(self):
                self.frames = []
            def __reduce__(self):
                raise TypeError("GL state")

        def compute(i, frame):
            @when(Cown((i, frame)))
            def cell(c):
                i, frame = c.value
                return i * 100 + frame
            return cell

        start()
        canvas = PinnedCown(Canvas())
        fd = wake_fd()
        FRAMES, ITEMS = 5, 4
        total = 0
        for frame in range(FRAMES):
            pump()  # drain the prior frame's write-back
            results = [compute(i, frame) for i in range(ITEMS)]

            @when(*results, canvas)
            def writeback(*args):
                *cells, canvas = args
                assert threading.current_thread() is threading.main_thread()
                canvas.value.frames.append([c.value for c in cells])

            done = 0
            while done == 0:  # the host's loop: sleep on the fd, then pump
                if select.select([fd], [], [], 30)[0]:
                    done = pump().executed
                    total += done
                else:
                    raise SystemExit("no wake-up within 30 s")
        wait()
        print("pinned dispatches", total)  # one per frame, not one per item
        with canvas:
            for row in canvas.value.frames:
                print(row)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["pinned dispatches 5"] + [
        str([i * 100 + f for i in range(4)]) for f in range(5)
    ]


_WATCHDOG_SCRIPT = """
import logging
import signal
import sys
import time
from bocpy import PinnedCown, pump, set_pump_watchdog, start, wait, when

logging.basicConfig(
    stream=sys.stderr, level=logging.DEBUG, format="LOG %(name)s %(levelname)s %(message)s"
)
if {enable}:
    set_pump_watchdog(warn_ms=100)
start()
for i in range(2):
    @when(PinnedCown(i))
    def b(pc):
        pass
end = time.monotonic() + 1.5  # longer than the 1000 ms default threshold
while time.monotonic() < end:
    time.sleep(0.01)
wait()
print("done")
"""


def test_process_that_never_calls_set_pump_watchdog_is_silent(run_script):
    proc = run_script(_WATCHDOG_SCRIPT.format(enable=False))
    assert proc.returncode == 0, proc.stderr
    assert lines(proc.stdout) == ["done"]
    assert "LOG bocpy" not in proc.stderr
    assert "pinned" not in proc.stderr


def test_enabled_watchdog_warns_in_a_fresh_process(run_script):
    # Positive control for the test above: the same script does warn once enabled.
    proc = run_script(_WATCHDOG_SCRIPT.format(enable=True))
    assert proc.returncode == 0, proc.stderr
    assert "LOG bocpy WARNING" in proc.stderr


def test_uncaught_exception_after_scheduling_pinned_work_exits_promptly(run_script):
    t0 = time.monotonic()
    proc = run_script(
        """
        import time
        from bocpy import Cown, PinnedCown, when

        pc = PinnedCown([])
        for i in range(5):
            @when(pc)
            def b(pc, i=i):
                pc.value.append(i)

        @when(Cown(0))
        def w(c, pc=pc):
            time.sleep(0.2)
            @when(pc)
            def inner(pc):
                pass

        raise RuntimeError("host crashed")
        """,
        timeout=PROMPT_EXIT + 30,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "RuntimeError: host crashed" in proc.stderr
    assert elapsed < PROMPT_EXIT


def test_uncaught_exception_does_not_wait_on_a_queued_pinned_body_that_hangs(run_script, tmp_path):
    t0 = time.monotonic()
    proc = run_script(
        """
        import time
        from bocpy import PinnedCown, when

        pc = PinnedCown(None)

        @when(pc)
        def hang(pc):
            time.sleep(3600)

        raise RuntimeError("host crashed")
        """,
        timeout=PROMPT_EXIT + 30,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert "RuntimeError: host crashed" in proc.stderr
    assert elapsed < PROMPT_EXIT


def test_uncaught_exception_with_long_pinned_backlog_exits_promptly(run_script):
    t0 = time.monotonic()
    proc = run_script(
        """
        import time
        from bocpy import PinnedCown, when

        pc = PinnedCown(None)
        for i in range(400):  # 40 s of pinned work
            @when(pc)
            def slow(pc):
                time.sleep(0.1)

        raise RuntimeError("host crashed")
        """,
        timeout=PROMPT_EXIT + 60,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert "RuntimeError: host crashed" in proc.stderr
    assert elapsed < PROMPT_EXIT


def test_system_exit_from_pinned_body_keeps_status_and_runs_the_rest(run_script, tmp_path):
    out = tmp_path / "out.txt"
    proc = run_script(
        f"""
        from bocpy import PinnedCown, pump, start, when

        start()
        sink = PinnedCown(open({str(out)!r}, "w"))

        @when(sink)
        def quit(sink):
            sink.value.write("quit\\n")
            sink.value.flush()
            raise SystemExit(3)

        @when(sink)
        def after(sink):
            sink.value.write("after\\n")
            sink.value.flush()

        while True:  # propagates SystemExit(3) out of pump()
            pump()
        """
    )
    assert proc.returncode == 3, proc.stderr
    assert lines(out.read_text()) == ["quit", "after"]


@pytest.mark.parametrize("driver", ["wait", "pump"])
def test_ctrl_c_interrupts_a_pinned_body_promptly(start_script, driver):
    proc = start_script(
        f"""
        import time
        from bocpy import PinnedCown, pump, start, wait, when

        start()
        pc = PinnedCown(None)

        @when(pc)
        def forever(pc):
            print("ready", flush=True)
            while True:
                time.sleep(0.01)

        if {driver!r} == "wait":
            wait()
        else:
            while True:
                pump()
                time.sleep(0.01)
        """
    )
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=PROMPT_EXIT + 30)
    assert time.monotonic() - t0 < PROMPT_EXIT
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in err
