"""PinnedCown and pump(): the main-thread lane (docs: pinned-cowns.rst).

Every test checks one sentence of the pinned-cowns contract.  Pinned work is
left queued for ``pump()`` by scheduling pinned behaviors and *not* calling
``wait()``/``quiesce()``; the wake fd (``select``) or a polling ``pump()``
loop with a generous deadline gives the runtime time to queue it.  Waits for
pending calls (wake callback, watchdog) keep the main thread running Python
bytecode.  The autouse fixture below restores the pinned-lane defaults; the
conftest fixture runs ``wait()`` after every test.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import re
import select
import sys
import threading
import time

import pytest

import bocpy
from bocpy import (
    Cown,
    PinnedCown,
    PumpResult,
    pump,
    quiesce,
    set_pump_watchdog,
    set_wait_pump_poll,
    set_wake_callback,
    wait,
    wake_fd,
    when,
)

#: Generous liveness bound (seconds) for anything that should happen "soon".
LIVENESS = 15.0


# ------------------------------------------------------------------ helpers


@pytest.fixture(autouse=True)
def _restore_pinned_defaults():
    """Put the wake callback, watchdog and wait cadence back to their defaults."""
    try:
        yield
    finally:
        set_wake_callback(None)
        set_pump_watchdog(None)
        set_wait_pump_poll(50)


class Unpicklable:
    """A main-interpreter-only value: any attempt to serialise it is counted and fails."""

    reduce_calls = 0

    def __init__(self) -> None:
        self.items: list[object] = []

    def __reduce__(self):
        type(self).reduce_calls += 1
        raise TypeError("Unpicklable must never leave the main interpreter")


def readable(timeout: float = 0.0) -> bool:
    """Whether the wake fd is readable within ``timeout`` seconds."""
    fd = wake_fd()
    return bool(select.select([fd], [], [], timeout)[0])


def wait_until_queued(timeout: float = LIVENESS) -> None:
    """Block until pinned work is queued (wake fd readable), then let it settle."""
    assert readable(timeout), "pinned work never arrived on the wake fd"
    time.sleep(0.05)


def pump_until(count: int, timeout: float = LIVENESS) -> int:
    """Call pump() repeatedly until ``count`` behaviors have run in total."""
    deadline = time.monotonic() + timeout
    total = 0
    while total < count:
        total += pump().executed
        if total >= count:
            break
        assert time.monotonic() < deadline, f"only {total} of {count} pinned behaviors ran"
        time.sleep(0.005)
    return total


def spin(seconds: float) -> None:
    """Keep the main thread running bytecode (so pending calls run) for a while."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


def spin_until(predicate, timeout: float = LIVENESS) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def wait_for_file(path: str, limit: float = 30.0) -> bool:
    """Block (inside a worker behavior) until ``path`` exists; False on time-out."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def hold_until(cown: Cown, gate: str) -> Cown:
    """Keep ``cown`` busy on a worker until the file ``gate`` exists."""

    @when(cown)
    def blocker(cown, gate=gate):
        return wait_for_file(gate)

    return blocker


def open_gate(gate: str) -> None:
    with open(gate, "w"):
        pass


def result_of(cown: Cown):
    """After wait(): the value of a result cown (raises its captured exception)."""
    return cown.unwrap()


def _pinned_ident_and_id(pc, extra):
    return threading.get_ident(), id(pc.value), extra


def noop_pinned(pc: PinnedCown) -> Cown:
    @when(pc)
    def b(pc):
        return threading.get_ident()

    return b


# ===================================================== construction & value


def test_pinned_cown_is_a_cown_and_defaults_to_none():
    pc = PinnedCown()
    assert isinstance(pc, Cown)
    assert isinstance(PinnedCown(1), PinnedCown)
    with pc:
        assert pc.value is None


def test_unpicklable_value_is_never_serialised():
    Unpicklable.reduce_calls = 0
    obj = Unpicklable()
    pc = PinnedCown(obj)
    other = Cown(0)

    @when(pc)
    def alone(pc):
        pc.value.items.append("alone")

    @when(pc, other)
    def mixed(pc, other):
        other.value += 1
        pc.value.items.append("mixed")

    @when()
    def from_worker(pc=pc):
        @when(pc)
        def inner(pc):
            pc.value.items.append("worker-scheduled")

    wait()
    for r in (alone, mixed, from_worker):
        assert not r.exception, r.value
    assert Unpicklable.reduce_calls == 0
    with pc:
        assert pc.value is obj
    assert obj.items[:2] == ["alone", "mixed"]
    assert sorted(obj.items) == ["alone", "mixed", "worker-scheduled"]


def test_every_acquire_sees_the_same_object():
    obj = Unpicklable()
    pc = PinnedCown(obj)
    results = []
    for _ in range(5):

        @when(pc)
        def r(pc):
            return id(pc.value)

        results.append(r)
    wait()
    assert [result_of(r) for r in results] == [id(obj)] * 5
    with pc:
        assert pc.value is obj


def test_value_assigned_in_a_body_is_the_same_object_later():
    pc = PinnedCown(None)

    @when(pc)
    def put(pc):
        pc.value = threading.current_thread()  # not transferable at all

    @when(pc)
    def check(pc):
        return pc.value is threading.current_thread()

    wait()
    assert result_of(check) is True
    with pc:
        assert pc.value is threading.main_thread()


def test_worker_cannot_construct_a_pinned_cown():
    @when()
    def make():
        return PinnedCown([1, 2])

    wait()
    assert make.exception
    with pytest.raises(RuntimeError, match="main interpreter"):
        make.unwrap()


def test_pinned_body_may_construct_a_pinned_cown():
    @when(PinnedCown(0))
    def make(_):
        obj = Unpicklable()
        inner = PinnedCown(obj)
        obj.items.append(id(obj))

        @when(inner)
        def use(inner):
            return inner.value.items == [id(inner.value)], threading.get_ident()

        return use

    wait()
    use = result_of(make)
    assert result_of(use) == (True, threading.main_thread().ident)


def test_main_interpreter_thread_may_construct_a_pinned_cown():
    made = []
    t = threading.Thread(target=lambda: made.append(PinnedCown([7])))
    t.start()
    t.join(LIVENESS)
    assert len(made) == 1 and isinstance(made[0], PinnedCown)

    @when(made[0])
    def r(pc):
        return pc.value

    wait()
    assert result_of(r) == [7]


#: (value tag, thread ident) for every Finalised value that was freed.
FREED: list[tuple[int, int]] = []


class Finalised(Unpicklable):
    def __init__(self, tag: int) -> None:
        super().__init__()
        self.tag = tag

    def __del__(self) -> None:
        FREED.append((self.tag, threading.get_ident()))


def test_value_is_freed_on_main_thread_when_workers_drop_the_last_handles():
    FREED.clear()

    def lend(tag: int) -> Cown:
        pc = PinnedCown(Finalised(tag))

        @when()
        def w(pc=pc):  # the worker's capture outlives every main-side reference
            time.sleep(0.2)

        return w

    results = [lend(i) for i in range(5)]
    boxes = [Cown(PinnedCown(Finalised(10 + i))) for i in range(5)]
    for box in boxes:

        @when(box)
        def clear(box):
            box.value = None  # drops the only handle, on a worker

    gc.collect()
    wait()
    del results, boxes
    gc.collect()
    assert sorted(tag for tag, _ in FREED) == [0, 1, 2, 3, 4, 10, 11, 12, 13, 14]
    assert {ident for _, ident in FREED} == {threading.main_thread().ident}


# ========================================================= main-thread lane


def test_pinned_behavior_runs_on_main_thread_inside_pump():
    obj = Unpicklable()
    pc = PinnedCown(obj)

    @when(pc)
    def b(pc):
        pc.value.items.append((threading.get_ident(), id(pc.value)))

    assert pump_until(1) == 1
    # Read through the main-thread alias: the body wrote to this very object.
    assert obj.items == [(threading.main_thread().ident, id(obj))]


def test_pinned_behavior_runs_on_main_thread_inside_wait():
    obj = Unpicklable()
    pc = PinnedCown(obj)

    @when(pc)
    def b(pc):
        return threading.get_ident(), id(pc.value)

    wait()
    assert result_of(b) == (threading.main_thread().ident, id(obj))


def test_pinned_behavior_runs_inside_quiesce():
    pc = PinnedCown([])

    @when(pc)
    def b(pc):
        pc.value.append(threading.get_ident())

    quiesce(timeout=LIVENESS)
    with pc:
        assert pc.value == [threading.main_thread().ident]
    # quiesce leaves the runtime running: more pinned work still flows.
    b2 = noop_pinned(pc)
    assert pump_until(1) == 1
    wait()
    assert result_of(b2) == threading.main_thread().ident


def test_each_pinned_behavior_runs_to_completion_before_the_next_starts():
    events: list[tuple[str, int]] = []
    pcs = [PinnedCown(events) for _ in range(4)]  # four cowns, one shared object
    for i, pc in enumerate(pcs):

        @when(pc)
        def b(pc, i=i):
            pc.value.append(("start", i))
            time.sleep(0.01)
            pc.value.append(("end", i))

    wait()
    assert len(events) == 8
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert start[0] == "start" and end == ("end", start[1])


def test_mixed_set_runs_on_main_and_unpinned_mutations_persist():
    pc = PinnedCown(Unpicklable())
    c = Cown([1])

    @when(pc, c)
    def mixed(pc, c):
        c.value.append(2)
        c.value = [*c.value, 3]
        return threading.get_ident()

    @when(c)
    def later(c):
        return list(c.value), threading.get_ident()

    wait()
    assert result_of(mixed) == threading.main_thread().ident
    seen, worker_ident = result_of(later)
    assert seen == [1, 2, 3]
    assert worker_ident != threading.main_thread().ident
    with c:
        assert c.value == [1, 2, 3]


def test_mixed_group_argument_runs_on_main():
    obj = Unpicklable()
    pc = PinnedCown(obj)
    c = Cown(10)

    @when([c, pc])
    def grouped(group, obj_id=id(obj)):
        regular, pinned = group
        regular.value += 1
        return threading.get_ident(), id(pinned.value) == obj_id

    wait()
    assert result_of(grouped) == (threading.main_thread().ident, True)
    with c:
        assert c.value == 11


def test_unserialisable_store_into_regular_cown_in_pinned_body():
    pc = PinnedCown(Unpicklable())
    c = Cown([1])

    @when(c, pc)
    def store(c, pc):
        c.value = pc.value  # a regular cown's value must cross interpreters

    @when(c)
    def later(c):
        return c.value

    wait()
    assert store.exception
    with pytest.raises(TypeError):
        store.unwrap()
    assert later.unwrap() == [1]  # the cown kept its last good value
    with c:
        assert c.value == [1]


def test_whencall_with_pinned_cown_runs_on_main():
    obj = Unpicklable()
    pc = PinnedCown(obj)
    r = bocpy.whencall(_pinned_ident_and_id, [pc], [5])
    wait()
    assert result_of(r) == (threading.main_thread().ident, id(obj), 5)


def test_pinned_behavior_scheduled_from_another_main_interpreter_thread():
    pc = PinnedCown([])

    def schedule():
        @when(pc)
        def b(pc):
            pc.value.append(threading.get_ident())

    t = threading.Thread(target=schedule)
    t.start()
    t.join(LIVENESS)
    wait()
    with pc:
        assert pc.value == [threading.main_thread().ident]


def test_pinned_value_kept_alive_while_only_a_worker_holds_the_handle():
    def make() -> Cown:
        pc = PinnedCown(Unpicklable())

        @when()
        def w(pc=pc):
            time.sleep(0.3)

            @when(pc)
            def inner(p):
                return type(p.value).__name__

            return inner

        return w

    w = make()
    gc.collect()
    wait()
    assert result_of(result_of(w)) == "Unpicklable"


def test_pinned_value_kept_alive_inside_regular_cown_only():
    outer = Cown(PinnedCown(Unpicklable()))
    gc.collect()

    @when(outer)
    def w(outer):
        @when(outer.value)
        def inner(pc):
            return type(pc.value).__name__

        return inner

    wait()
    assert result_of(result_of(w)) == "Unpicklable"


def test_coarse_grained_writeback_with_star_args():
    canvas = PinnedCown(Unpicklable())
    results = []
    for i in range(4):

        @when(Cown(i))
        def compute(cell):
            return cell.value * cell.value

        results.append(compute)

    @when(*results, canvas)
    def writeback(*args):
        *cells, canvas = args
        for cell in cells:
            canvas.value.items.append(cell.value)
        return threading.get_ident()

    wait()
    assert result_of(writeback) == threading.main_thread().ident
    with canvas:
        assert canvas.value.items == [0, 1, 4, 9]


def test_main_thread_alias_is_consistent_after_pump_returns():
    obj = {"n": 0}
    pc = PinnedCown(obj)
    for _ in range(5):

        @when(pc)
        def inc(pc):
            pc.value["n"] += 1

    assert pump_until(5) == 5
    # No body holds the cown once pump() has returned: the alias is consistent.
    assert obj == {"n": 5}


def test_pinned_cown_acquirable_on_main_after_wait():
    obj = Unpicklable()
    pc = PinnedCown(obj)

    @when(pc)
    def b(pc):
        pc.value.items.append(1)

    wait()
    with pc:
        assert pc.value is obj
        assert pc.value.items == [1]
    pc.acquire()
    try:
        assert pc.value is obj
    finally:
        pc.release()


def test_pinned_cown_unwrap_returns_the_object():
    obj = Unpicklable()
    pc = PinnedCown(obj)
    noop_pinned(pc)
    wait()
    assert pc.unwrap() is obj


# ================================================================ ordering


def test_pinned_and_unpinned_behaviors_on_shared_cown_keep_order():
    pc = PinnedCown(None)
    log = Cown([])
    main_ident = threading.main_thread().ident
    for i in range(8):

        @when(log)
        def w(log, i=i):
            log.value.append(("w", i, threading.get_ident() == main_ident))

        @when(log, pc)
        def p(log, pc, i=i):
            log.value.append(("p", i, threading.get_ident() == main_ident))

    wait()
    with log:
        entries = log.value
    assert [(k, i) for k, i, _ in entries] == [(k, i) for i in range(8) for k in ("w", "p")]
    assert all(on_main for k, _, on_main in entries if k == "p")
    assert not any(on_main for k, _, on_main in entries if k == "w")


def test_pinned_behaviors_on_one_pinned_cown_run_in_order():
    pc = PinnedCown([])
    for i in range(20):

        @when(pc)
        def b(pc, i=i):
            pc.value.append(i)

    wait()
    with pc:
        assert pc.value == list(range(20))


def test_pinned_behavior_waits_for_worker_holding_shared_cown(tmp_path):
    gate = str(tmp_path / "gate")
    c = Cown("before")
    pc = PinnedCown(None)
    blocker = hold_until(c, gate)

    @when(c, pc)
    def p(c, pc):
        return c.value

    @when(c)
    def set_after(c):
        c.value = "after"

    # pump never blocks, and cannot run p while the worker holds c.
    t0 = time.monotonic()
    assert pump().executed == 0
    assert time.monotonic() - t0 < 5.0
    open_gate(gate)
    assert pump_until(1) == 1
    wait()
    assert result_of(blocker) is True
    assert result_of(p) == "before"
    with c:
        assert c.value == "after"


# ================================================================ pump()


def test_pump_result_is_a_namedtuple():
    r = pump()
    assert isinstance(r, PumpResult)
    assert isinstance(r, tuple)
    assert PumpResult._fields == ("executed", "deadline_reached", "raised")
    assert r == PumpResult(0, False, 0)
    assert bocpy.PumpResult is PumpResult and "PumpResult" in bocpy.__all__


def test_pump_without_runtime_returns_at_once():
    wait()  # nothing running
    t0 = time.monotonic()
    assert pump() == PumpResult(executed=0, deadline_reached=False, raised=0)
    assert pump(deadline_ms=5, max_behaviors=3) == (0, False, 0)
    assert time.monotonic() - t0 < 5.0


def test_pump_with_runtime_but_nothing_queued_returns_at_once():
    @when(Cown(0))
    def w(c):
        return 1

    quiesce(timeout=LIVENESS)
    t0 = time.monotonic()
    assert pump() == (0, False, 0)
    assert time.monotonic() - t0 < 5.0


def test_pump_counts_executed():
    pcs = [PinnedCown(i) for i in range(3)]
    for pc in pcs:
        noop_pinned(pc)
    wait_until_queued()
    assert pump_until(3) == 3
    assert pump() == (0, False, 0)


def test_max_behaviors_is_a_hard_count():
    pcs = [PinnedCown(i) for i in range(5)]
    for pc in pcs:
        noop_pinned(pc)
    wait_until_queued()
    spin(0.1)
    r = pump(max_behaviors=2)
    assert r == PumpResult(executed=2, deadline_reached=False, raised=0)
    r = pump(max_behaviors=1)
    assert r.executed == 1
    assert pump_until(2) == 2


def test_deadline_gates_starting_the_next_behavior():
    # Five bodies of 50 ms under a 75 ms budget: normally two run.  Asserted
    # through each body's own (start, end) times so a loaded machine, where a
    # 50 ms sleep can overrun, cannot make the test flaky.
    spans: list[tuple[int, float, float]] = []
    for i in range(5):

        @when(PinnedCown(spans))
        def b(pc, i=i):
            t = time.monotonic()
            time.sleep(0.05)
            pc.value.append((i, t, time.monotonic()))

    wait_until_queued()
    spin(0.1)
    t0 = time.monotonic()
    r = pump(deadline_ms=75)
    t1 = time.monotonic()
    assert r.deadline_reached is True and r.raised == 0
    assert 1 <= r.executed <= 3 and len(spans) == r.executed
    # A body after the first only starts while the budget lasts: the one
    # before it ended less than 75 ms after pump() began.
    first_start = spans[0][1]
    for _, _, prev_end in spans[:-1]:
        assert prev_end - first_start < 0.075
    # It did not stop before the budget was spent.
    assert t1 - t0 >= 0.075
    # The rest stayed queued and run on the next pump.
    r2 = pump()
    assert r2 == PumpResult(executed=5 - r.executed, deadline_reached=False, raised=0)
    assert sorted(i for i, _, _ in spans) == [0, 1, 2, 3, 4]


def test_deadline_does_not_interrupt_a_running_body():
    state = {"done": False}
    pc = PinnedCown(state)

    @when(pc)
    def slow(pc):
        time.sleep(0.2)
        pc.value["done"] = True

    wait_until_queued()
    r = pump(deadline_ms=1)
    assert r == PumpResult(executed=1, deadline_reached=False, raised=0)
    assert state == {"done": True}


def test_deadline_not_reached_when_queue_drains():
    pcs = [PinnedCown(i) for i in range(3)]
    for pc in pcs:
        noop_pinned(pc)
    wait_until_queued()
    spin(0.05)
    r = pump(deadline_ms=60_000)
    assert r == PumpResult(executed=3, deadline_reached=False, raised=0)


def test_deadline_not_reached_when_last_body_overruns_but_queue_drained():
    ran: list[int] = []
    for i, naptime in enumerate([0.01, 0.3]):

        @when(PinnedCown(ran))
        def b(pc, i=i, naptime=naptime):
            time.sleep(naptime)
            pc.value.append(i)

    wait_until_queued()
    spin(0.1)
    # Both start within 150 ms; the second ends past it, and then the loop
    # ends because the queue is empty, not because of the deadline.
    r = pump(deadline_ms=150)
    assert r == PumpResult(executed=2, deadline_reached=False, raised=0)
    assert sorted(ran) == [0, 1]


def test_first_body_overrunning_deadline_stops_before_the_next():
    ran: list[int] = []
    for i in range(3):

        @when(PinnedCown(ran))
        def b(pc, i=i):
            time.sleep(0.1)
            pc.value.append(i)

    wait_until_queued()
    spin(0.1)
    r = pump(deadline_ms=10)
    assert r == PumpResult(executed=1, deadline_reached=True, raised=0)
    assert len(ran) == 1
    assert pump_until(2) == 2
    assert sorted(ran) == [0, 1, 2]


def test_deadline_and_max_behaviors_together():
    for i in range(4):
        noop_pinned(PinnedCown(i))
    wait_until_queued()
    spin(0.1)
    assert pump(deadline_ms=60_000, max_behaviors=3) == PumpResult(3, False, 0)
    assert pump(deadline_ms=60_000, max_behaviors=3) == PumpResult(1, False, 0)


def test_pump_accepts_large_limits():
    noop_pinned(PinnedCown(None))
    wait_until_queued()
    max_ms = (1 << 63) // 1_000_000 - 1  # the largest deadline (the reference's)
    assert pump(deadline_ms=max_ms, max_behaviors=2**70).executed == 1
    assert pump(deadline_ms=10**12) == (0, False, 0)


def test_pump_deadline_past_the_millisecond_limit_is_an_overflow_error():
    with pytest.raises(OverflowError, match="deadline_ms"):
        pump(deadline_ms=(1 << 63) // 1_000_000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deadline_ms": 0},
        {"deadline_ms": -5},
        {"deadline_ms": -0.5},
        {"deadline_ms": 2.5},
        {"deadline_ms": float("inf")},
        {"deadline_ms": True},
        {"max_behaviors": 0},
        {"max_behaviors": -1},
        {"max_behaviors": 1.0},
        {"max_behaviors": False},
    ],
)
def test_pump_rejects_bounds_that_are_not_positive_ints(kwargs):
    """As in the reference: a TypeError, for 0 and negatives too."""
    with pytest.raises(TypeError, match="positive int"):
        pump(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deadline_ms": "10"},
        {"deadline_ms": [1]},
        {"max_behaviors": "3"},
        {"max_behaviors": object()},
    ],
)
def test_pump_rejects_non_numbers(kwargs):
    with pytest.raises(TypeError):
        pump(**kwargs)


def test_pump_rejects_bad_limits_with_work_queued():
    pc = PinnedCown(None)
    b = noop_pinned(pc)
    wait_until_queued()
    with pytest.raises(TypeError):
        pump(max_behaviors=0)
    with pytest.raises(TypeError):
        pump(deadline_ms="soon")
    # The rejected calls ran nothing.
    assert pump_until(1) == 1
    wait()
    assert result_of(b) == threading.main_thread().ident


# ------------------------------------------------------------ exceptions


def test_body_exception_lands_on_result_cown_and_is_counted():
    pcs = [PinnedCown(i) for i in range(3)]

    @when(pcs[0])
    def bad(pc):
        raise ValueError("boom")

    @when(pcs[1])
    def good(pc):
        return "ok"

    @when(pcs[2])
    def bad2(pc):
        raise KeyError("k")

    wait_until_queued()
    spin(0.05)
    total = PumpResult(0, False, 0)
    deadline = time.monotonic() + LIVENESS
    while total.executed < 3 and time.monotonic() < deadline:
        r = pump()  # default: does not raise
        total = PumpResult(total.executed + r.executed, False, total.raised + r.raised)
    assert total == (3, False, 2)
    wait()
    assert bad.exception and bad2.exception and not good.exception
    with pytest.raises(ValueError, match="boom"):
        bad.unwrap()
    with pytest.raises(KeyError):
        bad2.unwrap()
    assert good.unwrap() == "ok"


def test_raise_on_error_reraises_first_body_exception():
    pc = PinnedCown(None)

    @when(pc)
    def first(pc):
        raise ValueError("first")

    @when(pc)
    def second(pc):
        raise ValueError("second")

    @when(pc)
    def third(pc):
        return 3

    wait_until_queued()
    with pytest.raises(ValueError, match="first"):
        pump(raise_on_error=True)
    wait()
    assert first.exception
    with pytest.raises(ValueError, match="first"):
        first.unwrap()
    with pytest.raises(ValueError, match="second"):
        second.unwrap()
    assert third.unwrap() == 3


def test_raise_on_error_without_errors_returns_result():
    pc = PinnedCown(None)
    noop_pinned(pc)
    noop_pinned(pc)
    wait_until_queued()
    total = 0
    deadline = time.monotonic() + LIVENESS
    while total < 2 and time.monotonic() < deadline:
        r = pump(raise_on_error=True)
        assert r.raised == 0
        total += r.executed
    assert total == 2


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_base_exception_propagates_from_pump_and_rest_resume(exc):
    chain: list[str] = []
    side: list[str] = []
    pc = PinnedCown(chain)
    other = PinnedCown(side)

    @when(pc)
    def boom(pc, exc=exc):
        pc.value.append("boom")
        raise exc()

    @when(pc)
    def after(pc):
        pc.value.append("after")

    @when(other)
    def independent(other):
        other.value.append("independent")

    wait_until_queued()
    spin(0.05)
    with pytest.raises(exc):
        deadline = time.monotonic() + LIVENESS
        while time.monotonic() < deadline:
            pump()
            time.sleep(0.005)
    assert chain[0] == "boom"
    # Cleanup released pc; what was still queued runs on the next pump() calls.
    assert spin_until(
        lambda: pump() is not None and chain == ["boom", "after"] and side == ["independent"]
    )
    wait()
    assert boom.exception
    with pytest.raises(exc):
        boom.unwrap()
    assert not after.exception and not independent.exception


def test_keyboard_interrupt_in_pinned_body_propagates_from_wait_then_wait_finishes():
    pc = PinnedCown([])

    @when(pc)
    def boom(pc):
        pc.value.append("boom")
        raise KeyboardInterrupt

    for i in range(3):

        @when(pc)
        def after(pc, i=i):
            pc.value.append(i)

    with pytest.raises(KeyboardInterrupt):
        wait(timeout=LIVENESS)
    wait(timeout=LIVENESS)  # the queued behaviors resume in the wait-driven pump
    with pc:
        assert pc.value == ["boom", 0, 1, 2]
    assert boom.exception


def test_keyboard_interrupt_leaves_queued_behaviors_for_next_pump():
    pc = PinnedCown([])

    @when(pc)
    def boom(pc):
        raise KeyboardInterrupt

    for i in range(3):

        @when(pc)
        def after(pc, i=i):
            pc.value.append(i)

    wait_until_queued()
    with pytest.raises(KeyboardInterrupt):
        pump()
    assert pump_until(3) == 3
    wait()
    with pc:
        assert pc.value == [0, 1, 2]


# ------------------------------------------------------- reentrancy etc.


def test_pump_inside_pinned_body_raises_runtime_error():
    pc = PinnedCown(None)

    @when(pc)
    def reenter(pc):
        return pump()

    @when(pc)
    def after(pc):
        return "after"

    assert pump_until(2) == 2
    wait()
    assert reenter.exception
    with pytest.raises(RuntimeError, match="reentrant"):
        reenter.unwrap()
    assert after.unwrap() == "after"


def test_pump_inside_pinned_body_counts_as_raised():
    pc = PinnedCown(None)

    @when(pc)
    def reenter(pc):
        pump()

    wait_until_queued()
    r = pump()
    assert r == PumpResult(executed=1, deadline_reached=False, raised=1)


def test_pump_inside_worker_behavior_raises_runtime_error():
    @when()
    def w():
        return pump()

    wait()
    assert w.exception
    with pytest.raises(RuntimeError):
        w.unwrap()


@pytest.mark.parametrize("blocking", ["wait", "quiesce"])
def test_wait_or_quiesce_inside_pinned_body_raises_runtime_error(blocking):
    pc = PinnedCown(None)

    @when(pc)
    def b(pc, blocking=blocking):
        getattr(bocpy, blocking)()

    wait()
    assert b.exception
    with pytest.raises(RuntimeError):
        b.unwrap()


def test_pump_from_another_main_interpreter_thread():
    obj = Unpicklable()
    pc = PinnedCown(obj)

    @when(pc)
    def b(pc, obj_id=id(obj)):
        return threading.get_ident(), id(pc.value) == obj_id

    wait_until_queued()
    out = []

    def run():
        out.append((pump(), threading.get_ident()))

    t = threading.Thread(target=run)
    t.start()
    t.join(LIVENESS)
    assert len(out) == 1
    result, ident = out[0]
    assert result.executed == 1
    wait()
    assert result_of(b) == (ident, True)


def test_second_pumping_thread_never_overlaps_a_running_body():
    events: list[tuple] = []
    for i in range(3):

        @when(PinnedCown(events))
        def b(pc, i=i):
            pc.value.append(("start", i))
            time.sleep(0.2)  # releases the GIL: the other pumper gets to run
            pc.value.append(("end", i))

    wait_until_queued()
    spin(0.05)
    other = []

    def run():
        time.sleep(0.05)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                other.append(pump().executed)
            except RuntimeError:  # refusing a concurrent pumper is allowed too
                other.append(0)
            time.sleep(0.01)

    t = threading.Thread(target=run)
    t.start()
    mine = pump().executed
    t.join(LIVENESS)
    mine += pump_until(3 - mine - sum(other))
    assert mine + sum(other) == 3
    assert len(events) == 6
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert start[0] == "start" and end == ("end", start[1]), events


@pytest.mark.skipif(
    getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="the single-pumper CAS is for free-threaded builds",
)
def test_free_threaded_concurrent_pumpers_are_refused():
    # The events are module globals: a behavior's captures are pickled, and
    # an Event cannot be (a pinned body sees this module's globals).
    _PUMPER_STARTED.clear()
    _PUMPER_RELEASE.clear()
    pc = PinnedCown(None)

    @when(pc)
    def slow(pc):
        _PUMPER_STARTED.set()
        _PUMPER_RELEASE.wait(LIVENESS)

    wait_until_queued()
    first: list[int] = []
    t = threading.Thread(target=lambda: first.append(pump().executed))
    t.start()
    try:
        assert _PUMPER_STARTED.wait(LIVENESS)
        with pytest.raises(RuntimeError, match="only one thread at a time may pump"):
            pump()
    finally:
        _PUMPER_RELEASE.set()
        t.join(LIVENESS)
    assert first == [1]
    # The refused pumper left the lane usable: the next pump works.
    assert pump().executed == 0


_PUMPER_STARTED = threading.Event()
_PUMPER_RELEASE = threading.Event()


# ======================================================== wait / quiesce


def test_wait_runs_every_queued_pinned_behavior():
    pcs = [PinnedCown([]) for _ in range(10)]
    for pc in pcs:
        for i in range(5):

            @when(pc)
            def b(pc, i=i):
                pc.value.append(i)

    wait()
    for pc in pcs:
        with pc:
            assert pc.value == [0, 1, 2, 3, 4]


def test_wait_pumps_pinned_work_scheduled_by_workers():
    pc = PinnedCown([])
    main_ident = threading.main_thread().ident

    @when(Cown(3))
    def w(c, pc=pc):
        for i in range(c.value):

            @when(pc)
            def inner(pc, i=i):
                pc.value.append((i, threading.get_ident()))

    wait()
    assert not w.exception, w.value
    with pc:
        assert pc.value == [(0, main_ident), (1, main_ident), (2, main_ident)]


def test_wait_timeout_with_blocked_pinned_work_then_finishes(tmp_path):
    gate = str(tmp_path / "gate")
    c = Cown(0)
    pc = PinnedCown([])
    hold_until(c, gate)

    @when(c, pc)
    def p(c, pc):
        pc.value.append(threading.get_ident())

    with pytest.raises(TimeoutError):
        wait(timeout=0.3)
    open_gate(gate)
    wait()
    with pc:
        assert pc.value == [threading.main_thread().ident]


def test_each_pinned_behavior_runs_once_with_wait_and_a_pumping_thread():
    counts: dict[tuple[int, int], int] = {}
    pcs = [PinnedCown(counts) for _ in range(10)]
    stop = threading.Event()

    def pumper():
        while not stop.is_set():
            pump()
            time.sleep(0.0005)

    t = threading.Thread(target=pumper)
    t.start()
    try:

        @when()
        def w(pcs=pcs):
            for rep in range(10):
                for k, pc in enumerate(pcs):

                    @when(pc)
                    def b(pc, key=(rep, k)):
                        pc.value[key] = pc.value.get(key, 0) + 1

        wait(timeout=LIVENESS * 2)
    finally:
        stop.set()
        t.join(LIVENESS)
    assert len(counts) == 100 and set(counts.values()) == {1}


def test_quiesce_timeout_with_blocked_pinned_work_then_finishes(tmp_path):
    gate = str(tmp_path / "gate")
    c = Cown(0)
    pc = PinnedCown([])
    hold_until(c, gate)

    @when(c, pc)
    def p(c, pc):
        pc.value.append("ran")

    with pytest.raises(TimeoutError):
        quiesce(timeout=0.3)
    open_gate(gate)
    quiesce(timeout=LIVENESS)
    with pc:
        assert pc.value == ["ran"]


@pytest.mark.parametrize("poll", [1, 60_000])
def test_wait_wakes_for_pinned_work_regardless_of_poll(poll):
    set_wait_pump_poll(poll)
    pc = PinnedCown([])

    @when(Cown(0))
    def w(c, pc=pc):
        time.sleep(0.3)

        @when(pc)
        def inner(pc):
            pc.value.append("ran")

    wait(timeout=30)  # a 60 s poll must not delay a broadcast wake-up
    with pc:
        assert pc.value == ["ran"]


@pytest.mark.parametrize("bad", [0, -1, "50", None, 1.5, True])
def test_set_wait_pump_poll_takes_a_positive_int(bad):
    with pytest.raises(TypeError, match="positive int"):
        set_wait_pump_poll(bad)


def test_set_wait_pump_poll_accepts_any_positive_int():
    set_wait_pump_poll(1)
    set_wait_pump_poll(60_001)
    set_wait_pump_poll(2**62)  # the reference takes any positive int too
    set_wait_pump_poll(ms=50)
    set_wait_pump_poll()  # the default, 50


# ============================================== workers and handle travel


def test_worker_schedules_pinned_behavior_via_default_capture():
    obj = Unpicklable()
    pc = PinnedCown(obj)

    @when(Cown(0))
    def w(c, pc=pc):
        @when(pc)
        def inner(pc):
            return threading.get_ident(), id(pc.value)

        return inner

    wait()
    inner = result_of(w)
    assert result_of(inner) == (threading.main_thread().ident, id(obj))


def test_worker_schedules_pinned_behavior_via_closure():
    obj = Unpicklable()
    pc = PinnedCown(obj)

    @when()
    def w():
        @when(pc)
        def inner(p):
            p.value.items.append(threading.get_ident())

    wait()
    assert not w.exception, w.value
    with pc:
        assert pc.value.items == [threading.main_thread().ident]


def test_pinned_body_schedules_worker_behaviors():
    pc = PinnedCown(None)
    c = Cown(5)

    @when(pc)
    def p(pc, c=c):
        @when(c)
        def w(c):
            c.value *= 2
            return threading.get_ident()

        return w

    wait()
    w = result_of(p)
    assert result_of(w) != threading.main_thread().ident
    with c:
        assert c.value == 10


def test_pinned_result_cown_feeds_worker_behavior():
    pc = PinnedCown({"k": 21})

    @when(pc)
    def read(pc):
        return pc.value["k"]

    @when(read)
    def double(r):
        return r.value * 2, threading.get_ident()

    wait()
    value, ident = result_of(double)
    assert value == 42 and ident != threading.main_thread().ident


def test_pinned_handle_inside_regular_cown():
    obj = Unpicklable()
    pc = PinnedCown(obj)
    box = Cown({"handle": pc, "n": 1})

    @when(box)
    def w(box):
        handle = box.value["handle"]
        box.value["n"] += 1

        @when(handle)
        def inner(handle):
            handle.value.items.append("via box")
            return threading.get_ident()

        return inner

    wait()
    inner = result_of(w)
    assert result_of(inner) == threading.main_thread().ident
    with box:
        assert box.value["n"] == 2
        assert box.value["handle"] == pc
    with pc:
        assert pc.value is obj and obj.items == ["via box"]


def test_cown_of_pinned_cown_is_supported():
    obj = Unpicklable()
    outer = Cown(PinnedCown(obj))

    @when(outer)
    def w(outer):
        @when(outer.value)
        def inner(pc):
            return id(pc.value)

        return inner

    wait()
    assert result_of(result_of(w)) == id(obj)
    with outer:
        handle = outer.value
    assert isinstance(handle, PinnedCown)
    with handle:
        assert handle.value is obj


def test_pinned_handle_returned_from_worker_behavior():
    obj = Unpicklable()
    pc = PinnedCown(obj)

    @when()
    def w(pc=pc):
        return pc

    wait()
    handle = result_of(w)
    assert isinstance(handle, PinnedCown)
    assert handle == pc

    @when(handle)
    def use(h, obj_id=id(obj)):
        return id(h.value) == obj_id

    wait()
    assert result_of(use) is True


def test_worker_reading_pinned_value_raises():
    pc = PinnedCown(Unpicklable())

    @when()
    def w(pc=pc):
        return pc.value

    wait()
    assert w.exception
    with pytest.raises(RuntimeError):
        w.unwrap()


def test_worker_writing_pinned_value_raises():
    pc = PinnedCown("original")

    @when()
    def w(pc=pc):
        pc.value = "from worker"

    wait()
    assert w.exception
    with pytest.raises(RuntimeError):
        w.unwrap()
    with pc:
        assert pc.value == "original"


def test_worker_acquiring_pinned_cown_raises():
    pc = PinnedCown("original")

    @when()
    def w(pc=pc):
        pc.acquire()
        return pc.value

    wait()
    assert w.exception
    with pytest.raises(RuntimeError):
        w.unwrap()


def _replace_with(new, _old):
    return new


@pytest.mark.parametrize("how", ["notice_write", "notice_update"])
def test_pinned_handle_on_noticeboard(how):
    if not hasattr(bocpy, "notice_write"):
        pytest.skip("this bocpy has no noticeboard")
    pc = PinnedCown(Unpicklable())

    @when()
    def post(pc=pc, how=how):
        if how == "notice_write":
            bocpy.notice_write("canvas", pc)
        else:
            bocpy.notice_update("canvas", functools.partial(_replace_with, pc))

    board = quiesce(timeout=LIVENESS, noticeboard=True)
    assert not post.exception
    assert board["canvas"] == pc
    del pc, board
    gc.collect()  # the board keeps the handle (and so the value) alive

    @when()
    def use():
        handle = bocpy.notice_read("canvas")

        @when(handle)
        def inner(h):
            return type(h.value).__name__, threading.get_ident()

        return inner

    wait()
    assert result_of(result_of(use)) == ("Unpicklable", threading.main_thread().ident)


# ================================================================ wake fd


def test_wake_fd_is_an_int_and_quiet_when_idle():
    fd = wake_fd()
    assert isinstance(fd, int) and fd >= 0
    pump()
    assert not readable(0.05)


def test_wake_fd_readable_when_pinned_work_arrives_and_cleared_by_pump():
    pump()
    assert not readable()
    pc = PinnedCown(None)
    noop_pinned(pc)
    assert readable(LIVENESS)
    assert pump_until(1) == 1
    assert not readable()


def test_wake_fd_readable_when_worker_schedules_pinned_work():
    pump()
    pc = PinnedCown([])

    @when()
    def w(pc=pc):
        time.sleep(0.1)

        @when(pc)
        def inner(pc):
            pc.value.append(1)

    assert readable(LIVENESS)
    assert pump_until(1) == 1
    # The fd is cleared by pump().  A pump() that races the worker's signal
    # may leave one spurious (documented, benign) wake-up: the next pump()
    # finds nothing to run and clears it.
    deadline = time.monotonic() + LIVENESS
    while readable():
        assert pump().executed == 0
        assert time.monotonic() < deadline, "pump() never cleared the wake fd"
        time.sleep(0.01)
    wait()
    with pc:
        assert pc.value == [1]


def test_wake_fd_stays_readable_when_max_behaviors_leaves_work():
    pcs = [PinnedCown(i) for i in range(3)]
    for pc in pcs:
        noop_pinned(pc)
    wait_until_queued()
    spin(0.05)
    assert pump(max_behaviors=1).executed == 1
    assert readable()
    pump_until(2)
    assert not readable()


# ========================================================= wake callback


def test_wake_callback_runs_on_main_thread_when_work_arrives():
    calls = []
    set_wake_callback(lambda: calls.append(threading.get_ident()))
    pc = PinnedCown(None)

    @when()
    def w(pc=pc):
        time.sleep(0.1)

        @when(pc)
        def inner(pc):
            pass

    assert spin_until(lambda: calls, LIVENESS), "wake callback never ran"
    assert set(calls) == {threading.main_thread().ident}


def test_wake_callback_can_drive_pump():
    ran = []
    pumped = []
    set_wake_callback(lambda: pumped.append(pump()))
    pc = PinnedCown(ran)

    @when()
    def w(pc=pc):
        for i in range(3):

            @when(pc)
            def inner(pc, i=i):
                pc.value.append(i)

    assert spin_until(lambda: len(ran) == 3, LIVENESS), (ran, pumped)
    assert ran == [0, 1, 2]
    assert sum(p.executed for p in pumped) == 3


def test_wake_callback_none_removes_it():
    calls = []
    set_wake_callback(lambda: calls.append(1))
    set_wake_callback(None)
    pc = PinnedCown(None)

    @when()
    def w(pc=pc):
        @when(pc)
        def inner(pc):
            pass

    assert readable(LIVENESS)
    spin(0.5)
    assert calls == []


def test_wake_callback_replaced_by_a_new_one():
    old, new = [], []
    set_wake_callback(lambda: old.append(1))
    set_wake_callback(lambda: new.append(1))
    noop_pinned(PinnedCown(None))
    assert spin_until(lambda: new, LIVENESS)
    assert old == []


@pytest.mark.parametrize("bad", [1, "pump", object()])
def test_wake_callback_must_be_callable(bad):
    with pytest.raises(TypeError):
        set_wake_callback(bad)


# =============================================================== watchdog


def test_watchdog_silent_when_disabled(caplog):
    set_pump_watchdog(None)
    pc = PinnedCown(None)
    noop_pinned(pc)
    with caplog.at_level(logging.DEBUG, logger="bocpy"):
        wait_until_queued()
        spin(1.5)  # longer than the 1000 ms default threshold
    assert [r for r in caplog.records if r.name.startswith("bocpy")] == []


def starved_ms(message: str) -> int:
    """The queue's non-empty time, in ms, from a watchdog message."""
    found = re.search(r"(\d+) ms", message)
    assert found, message
    return int(found.group(1))


def test_watchdog_on_starve_fires_on_main_thread_without_pump():
    fired = []
    set_pump_watchdog(
        warn_ms=100,
        on_starve=lambda severity, msg: fired.append((severity, msg, threading.get_ident())),
    )
    pcs = [PinnedCown(i) for i in range(3)]
    for pc in pcs:
        noop_pinned(pc)
    wait_until_queued()
    assert spin_until(lambda: fired, LIVENESS), "on_starve never fired"
    severity, msg, ident = fired[0]
    assert ident == threading.main_thread().ident
    assert severity == 0  # the warning (as the reference documents)
    assert isinstance(msg, str)
    assert starved_ms(msg) >= 100  # the age
    assert re.search(r"\b3\b", msg), msg  # the depth


def test_watchdog_fires_again_for_a_new_starvation_episode():
    fired = []
    set_pump_watchdog(warn_ms=100, on_starve=lambda ms, msg: fired.append(ms))
    noop_pinned(PinnedCown(None))
    wait_until_queued()
    assert spin_until(lambda: len(fired) >= 1, LIVENESS)
    assert pump_until(1) == 1
    first = len(fired)
    noop_pinned(PinnedCown(None))
    wait_until_queued()
    assert spin_until(lambda: len(fired) > first, LIVENESS), "no warning for the second episode"


def test_watchdog_logs_warning_to_bocpy_logger_by_default(caplog):
    set_pump_watchdog(warn_ms=100)
    noop_pinned(PinnedCown(None))
    noop_pinned(PinnedCown(None))
    with caplog.at_level(logging.WARNING, logger="bocpy"):
        wait_until_queued()
        assert spin_until(lambda: any(r.name == "bocpy" for r in caplog.records), LIVENESS)
    rec = next(r for r in caplog.records if r.name == "bocpy")
    assert rec.levelno == logging.WARNING
    text = rec.getMessage()
    assert re.search(r"\d+\s*ms", text), text
    assert re.search(r"\b2\b", text), text


def test_watchdog_default_threshold_is_1000_ms():
    fired = []
    set_pump_watchdog(on_starve=lambda severity, msg: fired.append(starved_ms(msg)))
    noop_pinned(PinnedCown(None))
    wait_until_queued()
    assert spin_until(lambda: fired, LIVENESS)
    assert fired[0] >= 1000


def test_watchdog_disabled_with_none():
    fired = []
    set_pump_watchdog(warn_ms=100, on_starve=lambda ms, msg: fired.append(ms))
    set_pump_watchdog(warn_ms=None, on_starve=lambda ms, msg: fired.append(ms))
    noop_pinned(PinnedCown(None))
    wait_until_queued()
    spin(0.8)
    assert fired == []


def test_watchdog_ignores_unpinned_work():
    fired = []
    set_pump_watchdog(warn_ms=100, on_starve=lambda ms, msg: fired.append(ms))
    for i in range(3):

        @when(Cown(i))
        def long(c):
            time.sleep(0.3)

    spin(0.5)
    quiesce(timeout=LIVENESS)
    spin(0.3)
    assert fired == []


def test_watchdog_quiet_while_host_pumps_often():
    fired = []
    set_pump_watchdog(warn_ms=500, on_starve=lambda ms, msg: fired.append(ms))
    pc = PinnedCown(0)
    end = time.monotonic() + 1.2
    count = 0
    while time.monotonic() < end:

        @when(pc)
        def inc(pc):
            pc.value += 1

        count += 1
        pump()
        time.sleep(0.005)
    wait()
    with pc:
        assert pc.value == count
    assert fired == []


def test_watchdog_quiet_while_wait_auto_pumps():
    fired = []
    set_pump_watchdog(warn_ms=400, on_starve=lambda ms, msg: fired.append(ms))
    pc = PinnedCown([])

    @when(Cown(0))
    def w(c, pc=pc):
        for i in range(10):
            time.sleep(0.1)

            @when(pc)
            def inner(pc, i=i):
                pc.value.append(i)

    wait(timeout=LIVENESS)
    spin(0.5)  # deliver any report the watchdog may have queued
    with pc:
        assert pc.value == list(range(10))
    assert fired == []


def test_watchdog_on_starve_exception_surfaces_on_main_thread():
    class Starved(Exception):
        pass

    def on_starve(ms, msg):
        raise Starved(msg)

    set_pump_watchdog(warn_ms=100, on_starve=on_starve)
    noop_pinned(PinnedCown(None))
    wait_until_queued()
    with pytest.raises(Starved):
        spin(LIVENESS)


@pytest.mark.parametrize(
    "bad, exc",
    [
        (0, TypeError),
        (-5, TypeError),
        (2.5, TypeError),
        (True, TypeError),
        ("x", TypeError),
        ((1 << 63) // 1_000_000, OverflowError),
    ],
)
def test_watchdog_rejects_bad_warn_ms(bad, exc):
    """As in the reference: a positive int, or None."""
    with pytest.raises(exc, match="warn_ms"):
        set_pump_watchdog(warn_ms=bad)


def test_watchdog_rejects_non_callable_on_starve():
    with pytest.raises(TypeError):
        set_pump_watchdog(warn_ms=100, on_starve="not callable")
