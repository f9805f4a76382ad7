"""The runtime's lifecycle: start, wait, quiesce, stats, time-outs."""

from __future__ import annotations

import math
import os
import sys
import time

import pytest

import bocpy
from bocpy import Cown, when

STAT_KEYS = {
    "worker",
    "behaviors_run",
    "pushed_local",
    "steals",
    "parks",
    "values_received",
    "values_sent_from_here",
}


def wait_for_file(path: str, limit: float = 30.0) -> bool:
    """Block (inside a behavior) until ``path`` exists; False on time-out."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def open_gate(gate: str) -> None:
    with open(gate, "w"):
        pass


def schedule_increments(c: Cown, n: int) -> list[Cown]:
    results = []
    for _ in range(n):

        @when(c)
        def r(c):
            c.value += 1

        results.append(r)
    return results


# -------------------------------------------------------------------- start


def test_worker_count_default_is_a_positive_int():
    assert isinstance(bocpy.WORKER_COUNT, int)
    assert not isinstance(bocpy.WORKER_COUNT, bool)
    assert bocpy.WORKER_COUNT >= 1


def test_start_is_idempotent_with_the_same_count():
    bocpy.start(2)
    bocpy.start(2)
    c = Cown(0)
    schedule_increments(c, 5)
    stats = bocpy.wait(timeout=30, stats=True)
    assert len(stats) == 2
    assert c.unwrap() == 5


def test_start_without_count_uses_worker_count():
    bocpy.start()
    bocpy.start(bocpy.WORKER_COUNT)
    stats = bocpy.wait(timeout=30, stats=True)
    assert len(stats) == bocpy.WORKER_COUNT


def test_start_with_a_different_count_while_running_raises():
    bocpy.start(2)
    with pytest.raises(RuntimeError):
        bocpy.start(1)
    stats = bocpy.wait(timeout=30, stats=True)
    assert len(stats) == 2


def test_start_after_wait_may_use_a_new_count():
    bocpy.start(2)
    bocpy.wait(timeout=30)
    bocpy.start(1)
    stats = bocpy.wait(timeout=30, stats=True)
    assert len(stats) == 1


@pytest.mark.parametrize("count", [0, -1, -100])
def test_start_with_non_positive_count_raises_value_error(count):
    with pytest.raises(ValueError):
        bocpy.start(count)


@pytest.mark.parametrize("count", ["2", 2.0, True, [2]])
def test_start_with_non_int_count_raises_type_error(count):
    with pytest.raises(TypeError):
        bocpy.start(count)


def test_start_inside_a_behavior_is_an_error_on_its_result():
    @when()
    def r():
        import bocpy as inner

        inner.start(1)

    bocpy.wait(timeout=30)
    assert r.exception
    with pytest.raises(RuntimeError):
        r.unwrap()


def test_first_when_starts_the_runtime_implicitly():
    @when()
    def r():
        return "ran"

    stats = bocpy.wait(timeout=30, stats=True)
    assert len(stats) == bocpy.WORKER_COUNT
    assert r.unwrap() == "ran"


# --------------------------------------------------------------------- wait


def test_wait_returns_none():
    c = Cown(0)
    schedule_increments(c, 3)
    assert bocpy.wait(timeout=30) is None
    assert c.unwrap() == 3


def test_wait_without_any_runtime_returns_none():
    assert bocpy.wait() is None
    assert bocpy.wait(timeout=1) is None


def test_wait_stats_shape_and_behavior_count():
    bocpy.start(2)
    c, d = Cown(0), Cown(0)
    schedule_increments(c, 30)
    schedule_increments(d, 20)

    @when(c, d)
    def _(c, d):
        pass

    stats = bocpy.wait(timeout=30, stats=True)
    assert isinstance(stats, list)
    assert len(stats) == 2
    for entry in stats:
        assert isinstance(entry, dict)
        assert STAT_KEYS <= set(entry)
        for key in STAT_KEYS:
            assert isinstance(entry[key], int), key
            assert entry[key] >= 0, key
    assert sorted(entry["worker"] for entry in stats) == [0, 1]
    assert sum(entry["behaviors_run"] for entry in stats) == 51


def test_wait_stats_counts_nested_behaviors():
    bocpy.start(1)

    @when()
    def _():
        for _ in range(4):

            @when()
            def _():
                pass

    stats = bocpy.wait(timeout=30, stats=True)
    assert sum(entry["behaviors_run"] for entry in stats) == 5


def test_cowns_keep_values_after_wait_and_a_new_runtime_starts():
    c = Cown(0)
    schedule_increments(c, 4)
    bocpy.wait(timeout=30)
    with c:
        assert c.value == 4
    schedule_increments(c, 3)
    bocpy.wait(timeout=30)
    with c:
        assert c.value == 7
    bocpy.start(2)
    schedule_increments(c, 2)
    stats = bocpy.wait(timeout=30, stats=True)
    assert len(stats) == 2
    assert c.unwrap() == 9


def test_many_runtime_cycles():
    c = Cown(0)
    for _ in range(8):
        schedule_increments(c, 3)
        bocpy.wait(timeout=30)
    assert c.unwrap() == 24


def test_wait_timeout_raises_and_leaves_the_runtime_running(tmp_path):
    gate = str(tmp_path / "gate")
    c = Cown(0)

    @when(c)
    def slow(c, gate=gate):
        c.value = 1
        return wait_for_file(gate)

    try:
        with pytest.raises(TimeoutError):
            bocpy.wait(timeout=0.2)
        with pytest.raises(RuntimeError):
            c.acquire()  # still in flight

        @when(c)
        def later(c):  # the runtime still accepts work
            return c.value + 1
    finally:
        open_gate(gate)
    assert bocpy.wait(timeout=30) is None
    assert slow.unwrap() is True
    assert later.unwrap() == 2


def test_repeated_wait_timeouts_then_success(tmp_path):
    gate = str(tmp_path / "gate")

    @when()
    def slow(gate=gate):
        return wait_for_file(gate)

    try:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                bocpy.wait(timeout=0.05)
        with pytest.raises(TimeoutError):
            bocpy.quiesce(timeout=0.05)
    finally:
        open_gate(gate)
    bocpy.wait(timeout=30)
    assert slow.unwrap() is True


@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan])
def test_wait_invalid_timeout_value_raises_value_error(timeout):
    with pytest.raises(ValueError):
        bocpy.wait(timeout=timeout)
    with pytest.raises(ValueError):
        bocpy.quiesce(timeout=timeout)


@pytest.mark.parametrize("timeout", ["1", [1], object()])
def test_wait_non_number_timeout_raises_type_error(timeout):
    with pytest.raises(TypeError):
        bocpy.wait(timeout=timeout)
    with pytest.raises(TypeError):
        bocpy.quiesce(timeout=timeout)


def test_wait_invalid_timeout_with_work_in_flight_does_not_tear_down():
    c = Cown(0)
    schedule_increments(c, 3)
    with pytest.raises(ValueError):
        bocpy.wait(timeout=-1)
    bocpy.wait(timeout=30)
    assert c.unwrap() == 3


def test_wait_inside_a_behavior_is_an_error_on_its_result():
    @when()
    def r():
        import bocpy as inner

        inner.wait()

    @when()
    def q():
        import bocpy as inner

        inner.quiesce()

    bocpy.wait(timeout=30)
    for result in (r, q):
        assert result.exception
        with pytest.raises(RuntimeError):
            result.unwrap()


# ------------------------------------------------------------------ quiesce


def test_quiesce_leaves_the_runtime_running():
    bocpy.start(2)
    c = Cown(0)
    schedule_increments(c, 10)
    assert bocpy.quiesce(timeout=30) is None
    with c:
        assert c.value == 10
        c.value = 100
    schedule_increments(c, 5)
    bocpy.quiesce(timeout=30)
    assert c.unwrap() == 105
    with pytest.raises(RuntimeError):
        bocpy.start(1)  # still running with two workers


def test_quiesce_stats_shape():
    bocpy.start(2)
    c = Cown(0)
    schedule_increments(c, 12)
    stats = bocpy.quiesce(timeout=30, stats=True)
    assert isinstance(stats, list) and len(stats) == 2
    for entry in stats:
        assert STAT_KEYS <= set(entry)
    assert sum(entry["behaviors_run"] for entry in stats) >= 12
    final = bocpy.wait(timeout=30, stats=True)
    assert sum(entry["behaviors_run"] for entry in final) >= 12


def test_quiesce_timeout_raises_and_work_completes(tmp_path):
    gate = str(tmp_path / "gate")

    @when()
    def slow(gate=gate):
        return wait_for_file(gate)

    try:
        with pytest.raises(TimeoutError):
            bocpy.quiesce(timeout=0.2)
    finally:
        open_gate(gate)
    bocpy.quiesce(timeout=30)
    assert slow.unwrap() is True


def test_quiesce_then_unwrap_result_cowns():
    results = []
    for i in range(5):

        @when()
        def r(i=i):
            return i * i

        results.append(r)
    bocpy.quiesce(timeout=30)
    assert [r.unwrap() for r in results] == [0, 1, 4, 9, 16]


def test_quiesce_with_no_runtime_returns():
    assert bocpy.quiesce(timeout=5) is None


# ------------------------------------------- stdlib inside worker interpreters


def test_threads_asyncio_and_logging_in_bodies_do_not_wedge_teardown():
    @when()
    def threads():
        import threading

        out = []
        worker = threading.Thread(target=lambda: out.append("thread ran"))
        worker.start()
        worker.join()
        return out

    @when()
    def unjoined_thread():
        import threading

        threading.Thread(target=time.sleep, args=(0.2,)).start()
        return "started"

    @when()
    def executor():
        if sys.version_info < (3, 13):
            # CPython 3.12: a C function's first call with keyword arguments
            # in a sub-interpreter (here SimpleQueue.get(block=...)) leaves a
            # tuple that the main interpreter frees again at exit.
            return [1, 2, 3]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(abs, [-1, -2, 3]))

    @when()
    def event_loop():
        if sys.version_info < (3, 13):
            # CPython 3.12, as above: asyncio calls C functions with keywords.
            return 42
        import asyncio

        async def main():
            await asyncio.sleep(0.01)
            return 42

        return asyncio.run(main())

    @when()
    def logged():
        import logging

        logging.getLogger("bocpy-test").info("not shown")
        return "logged"

    bocpy.wait(timeout=60)
    assert threads.unwrap() == ["thread ran"]
    assert unjoined_thread.unwrap() == "started"
    assert executor.unwrap() == [1, 2, 3]
    assert event_loop.unwrap() == 42
    assert logged.unwrap() == "logged"
