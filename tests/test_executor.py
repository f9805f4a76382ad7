"""BocExecutor: the ``concurrent.futures.Executor`` contract on bocpy workers.

Tasks that must stay running while a test looks at the queue block on a
bocpy message ("the gate") instead of sleeping, so no test depends on
timing: the test opens the gate with ``send`` when it is done looking.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading

import pytest
from conftest import THREADS_BACKEND

import bocpy
from bocpy import TIMEOUT, BocExecutor, receive, send

GATE = "test_executor.gate"
PROBE = "test_executor.probe"


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, *, scale: int = 1) -> int:
    return (x + y) * scale


def fail(message: str) -> None:
    raise ValueError(message)


def wait_for_gate() -> str:
    receive(GATE)
    return "opened"


def probe(value: int) -> int:
    send(PROBE, value)
    return value


def make_lock() -> object:
    return threading.Lock()


def drain_probes() -> list[int]:
    seen = []
    while True:
        tag, value = receive(PROBE, 0)
        if tag == TIMEOUT:
            return seen
        seen.append(value)


@pytest.fixture
def executor():
    ex = BocExecutor(max_workers=2)
    yield ex
    ex.shutdown(wait=True, cancel_futures=True)


def test_submit_returns_a_future_with_the_result(executor):
    future = executor.submit(add, 2, 3, scale=10)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 50
    assert future.done() and not future.cancelled()


def test_lambdas_and_local_functions_run(executor):
    offset = 7

    def shifted(x):
        return x + offset

    assert executor.submit(shifted, 1).result(timeout=30) == 8
    assert executor.submit(lambda: "λ").result(timeout=30) == "λ"


def test_an_exception_reaches_the_future_with_the_worker_traceback(executor):
    future = executor.submit(fail, "no such account")
    with pytest.raises(ValueError, match="no such account") as info:
        future.result(timeout=30)
    assert isinstance(future.exception(), ValueError)
    assert any("Traceback in the bocpy worker" in note for note in info.value.__notes__)
    assert any("in fail" in note for note in info.value.__notes__)


@pytest.mark.skipif(
    THREADS_BACKEND, reason="only the interpreters backend pickles arguments (see the test below)"
)
def test_a_value_that_cannot_cross_fails_the_future_not_the_caller(executor):
    unpicklable_argument = executor.submit(square, threading.Lock())
    with pytest.raises(TypeError, match="cannot"):
        unpicklable_argument.result(timeout=30)
    unpicklable_result = executor.submit(make_lock)
    with pytest.raises(TypeError, match="cannot be sent back"):
        unpicklable_result.result(timeout=30)
    # The executor still works afterwards.
    assert executor.submit(square, 4).result(timeout=30) == 16


@pytest.mark.skipif(not THREADS_BACKEND, reason="the interpreters backend pickles arguments")
def test_arguments_pass_as_they_are_on_threads_results_still_cross(executor):
    """The threads backend copies no argument: one that could not cross to a
    sub-interpreter reaches the task as the very same object.  The outcome
    still comes home as a message, which both backends pickle, so a result
    that cannot be pickled fails its future, not the caller."""
    lock = threading.Lock()
    assert executor.submit(lambda held: str(held is lock), lock).result(timeout=30) == "True"
    with pytest.raises(TypeError, match="unsupported operand"):
        executor.submit(square, lock).result(timeout=30)
    with pytest.raises(TypeError, match="cannot be sent back"):
        executor.submit(make_lock).result(timeout=30)
    # The executor still works afterwards.
    assert executor.submit(square, 4).result(timeout=30) == 16


def test_result_timeout_raises_and_the_task_still_finishes(executor):
    future = executor.submit(wait_for_gate)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.05)
    send(GATE, None)
    assert future.result(timeout=30) == "opened"


def test_cancel_removes_a_queued_task_so_it_never_runs():
    executor = BocExecutor(max_workers=1)
    # One worker keeps two tasks dispatched: both block on the gate, so
    # every later task stays queued in the executor.
    blockers = [executor.submit(wait_for_gate) for _ in range(2)]
    queued = [executor.submit(probe, i) for i in range(5)]
    assert all(f.running() for f in blockers)
    assert not any(f.running() for f in queued)
    assert [f.cancel() for f in queued[:3]] == [True, True, True]
    assert all(f.cancelled() for f in queued[:3])
    assert not any(f.cancel() for f in blockers)  # dispatched: too late
    send(GATE, None)
    send(GATE, None)
    assert [f.result(timeout=30) for f in queued[3:]] == [3, 4]
    executor.shutdown(wait=True)
    assert sorted(drain_probes()) == [3, 4]
    with pytest.raises(cf.CancelledError):
        queued[0].result()


def test_shutdown_waits_for_every_task_and_refuses_new_ones():
    executor = BocExecutor(max_workers=2)
    futures = [executor.submit(square, i) for i in range(50)]
    executor.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [i * i for i in range(50)]
    with pytest.raises(RuntimeError, match=r"after BocExecutor\.shutdown"):
        executor.submit(square, 1)
    executor.shutdown()  # a second call is harmless


def test_shutdown_cancel_futures_cancels_only_the_queued_ones():
    executor = BocExecutor(max_workers=1)
    blockers = [executor.submit(wait_for_gate) for _ in range(2)]
    queued = [executor.submit(probe, i) for i in range(4)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    send(GATE, None)
    send(GATE, None)
    assert [f.result(timeout=30) for f in blockers] == ["opened", "opened"]
    executor.shutdown(wait=True)
    assert drain_probes() == []


def test_shutdown_without_waiting_still_completes_the_futures():
    executor = BocExecutor(max_workers=2)
    futures = [executor.submit(square, i) for i in range(20)]
    executor.shutdown(wait=False)
    done, not_done = cf.wait(futures, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in done) == sorted(i * i for i in range(20))


def test_the_context_manager_shuts_down_and_waits():
    with BocExecutor(max_workers=2) as executor:
        futures = [executor.submit(square, i) for i in range(10)]
    assert all(f.done() for f in futures)


def test_as_completed_and_wait(executor):
    futures = [executor.submit(square, i) for i in range(30)]
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=30)) == sorted(
        i * i for i in range(30)
    )
    failing = [executor.submit(fail, "first"), executor.submit(wait_for_gate)]
    done, not_done = cf.wait(failing, timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert failing[0] in done and failing[1] in not_done
    send(GATE, None)
    assert failing[1].result(timeout=30) == "opened"


def test_asyncio_wrap_future(executor):
    async def main() -> list[int]:
        futures = [asyncio.wrap_future(executor.submit(square, i)) for i in range(5)]
        return await asyncio.gather(*futures)

    assert asyncio.run(main()) == [0, 1, 4, 9, 16]


def test_run_in_executor(executor):
    async def main() -> int:
        return await asyncio.get_running_loop().run_in_executor(executor, square, 12)

    assert asyncio.run(main()) == 144


def test_done_callbacks_may_submit_more_tasks(executor):
    second: list[cf.Future[int]] = []
    ready = threading.Event()

    def chain(future: cf.Future[int]) -> None:
        second.append(executor.submit(square, future.result()))
        ready.set()

    executor.submit(square, 3).add_done_callback(chain)
    assert ready.wait(30)
    assert second[0].result(timeout=30) == 81


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_map_keeps_order_with_any_chunksize(executor, chunksize):
    xs = list(range(37))
    assert list(executor.map(add, xs, xs, chunksize=chunksize)) == [2 * x for x in xs]


def test_map_stops_at_the_shortest_iterable(executor):
    assert list(executor.map(add, [1, 2, 3], [10, 20], chunksize=2)) == [11, 22]


def test_map_raises_the_exception_in_place(executor):
    results = executor.map(fail, ["a", "b"], chunksize=2)
    with pytest.raises(ValueError, match="a"):
        next(results)


def test_map_timeout(executor):
    results = executor.map(lambda _: wait_for_gate(), [0], timeout=0.05)
    with pytest.raises(TimeoutError):
        next(results)
    send(GATE, None)


@pytest.mark.parametrize(
    ("chunksize", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError)]
)
def test_map_rejects_a_bad_chunksize(executor, chunksize, error):
    with pytest.raises(error, match="chunksize"):
        executor.map(square, [1], chunksize=chunksize)


@pytest.mark.parametrize(("count", "error"), [(0, ValueError), ("2", TypeError), (True, TypeError)])
def test_bad_max_workers(count, error):
    with pytest.raises(error, match="max_workers"):
        BocExecutor(max_workers=count)


def test_submit_rejects_a_non_callable(executor):
    with pytest.raises(TypeError, match="callable"):
        executor.submit(42)


def test_a_running_runtime_is_shared():
    bocpy.start(2)
    with pytest.raises(ValueError, match="already running with 2 workers"):
        BocExecutor(max_workers=1)
    with BocExecutor() as executor:
        assert executor.max_workers == 2
        assert executor.submit(square, 5).result(timeout=30) == 25


def test_tasks_continue_across_bocpy_wait():
    executor = BocExecutor(max_workers=2)
    assert executor.submit(square, 2).result(timeout=30) == 4
    bocpy.wait()  # ends the runtime; the next task starts a fresh one
    assert executor.submit(square, 3).result(timeout=30) == 9
    executor.shutdown()


def test_a_user_script_switches_from_process_pool_by_one_line(run_script):
    result = run_script(
        """
        import math
        from concurrent.futures import as_completed
        from bocpy import BocExecutor as PoolExecutor   # was ProcessPoolExecutor

        def is_prime(n):
            if n < 2:
                return False
            return all(n % d for d in range(2, math.isqrt(n) + 1))

        if __name__ == "__main__":
            with PoolExecutor(max_workers=2) as pool:
                flags = list(pool.map(is_prime, range(1000), chunksize=50))
                futures = {pool.submit(is_prime, n): n for n in (97, 100)}
                found = sorted(futures[f] for f in as_completed(futures) if f.result())
            print(sum(flags), found)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "168 [97]"
    assert result.stderr == ""


def test_a_script_that_never_shuts_down_still_gets_its_results(run_script):
    result = run_script(
        """
        from bocpy import BocExecutor

        def report(x):
            print("task", x, flush=True)
            return x

        pool = BocExecutor(max_workers=2)
        futures = [pool.submit(report, i) for i in range(6)]
        futures[-1].add_done_callback(lambda f: print("callback", f.result(), flush=True))
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(line for line in lines if line.startswith("task")) == [
        f"task {i}" for i in range(6)
    ]
    assert "callback 5" in lines


def test_a_script_that_dies_does_not_wait_for_its_tasks(run_script):
    result = run_script(
        """
        from bocpy import BocExecutor, receive, send

        def stuck():
            send("started", None)
            receive("never sent")

        pool = BocExecutor(max_workers=1)
        running = pool.submit(stuck)
        queued = [pool.submit(print, "must not run") for _ in range(3)]
        receive("started")  # the stuck task's body is running now
        raise RuntimeError("the script gives up")
        """
    )
    # The queued tasks were cancelled, the stuck one abandoned after a few
    # seconds, and the report went through the bocpy logger.
    assert result.returncode == 1, result.stderr
    assert "must not run" not in result.stdout
    assert "the script gives up" in result.stderr
    assert "bocpy: the program ended with an uncaught exception" in result.stderr
    assert "abandoned at exit; still running: worker 0: bocpy.executor._run_task" in result.stderr
