"""Where behaviors scheduled from the main thread run, on several workers.

A dispatch from the main thread prefers an awake worker and may leave a
behavior queued behind that worker's current one without waking another
(libboc/src/sched.c, "Quiet dispatches and dozing"); a parked worker that
dozes must then take it when the current behavior turns out long.  These
programs would hang (until their gates time out) if it did not: the long
behavior only ends once the ones queued after it have run elsewhere.
"""

from __future__ import annotations

PROGRAM = """
import os, sys, time
from bocpy import Cown, start, wait, when

gate, started, extra = sys.argv[1], sys.argv[2], int(sys.argv[3])

def wait_for_file(path, limit=60.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True

start(2)

@when(Cown(0))
def long(cown, gate=gate, started=started, wait_for_file=wait_for_file):
    open(started, "w").close()
    return wait_for_file(gate)

# The long behavior is running: every dispatch below finds one worker busy
# and the other parked.
assert wait_for_file(started), "the first behavior never started"
others = []
for _ in range(extra):
    @when(Cown(0))
    def other(cown):
        return os.getpid()
    others.append(other)

@when(Cown(0))
def opener(cown, gate=gate):
    open(gate, "w").close()
    return True

wait()
print(long.unwrap(), opener.unwrap(), all(o.unwrap() == os.getpid() for o in others))
"""


def run(run_script, tmp_path, extra: int) -> str:
    proc = run_script(PROGRAM, args=[str(tmp_path / "gate"), str(tmp_path / "started"), str(extra)])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")[0]


def test_a_behavior_queued_behind_a_long_one_runs_on_the_other_worker(run_script, tmp_path):
    # One dispatch while worker A is busy: worker B must take it.
    assert run(run_script, tmp_path, 0) == "True True True"


def test_a_backlog_behind_a_long_behavior_is_drained_by_the_other_worker(run_script, tmp_path):
    # Fifty dispatches behind the busy worker, the gate opener last: the
    # other worker must run them all while the first behavior still waits.
    assert run(run_script, tmp_path, 50) == "True True True"
