"""bocpy.aio: the asyncio driver (wake fd -> pump) and ``await result(cown)``."""

from __future__ import annotations

import asyncio
import os
import select
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import bocpy
import bocpy.aio
from bocpy import Cown, PinnedCown, when

#: Seconds any single await in these tests may take before the test fails.
LIMIT = 30.0


@pytest.fixture(autouse=True)
def _clean_loop_state() -> Iterator[None]:
    """Leave no wake callback behind (the drivers uninstall in each test)."""
    yield
    bocpy.set_wake_callback(None)


def run(coro: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``coro()`` on a fresh event loop, bounded by ``LIMIT`` seconds."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro(), LIMIT)

    return asyncio.run(bounded())


def settle_wake_fd() -> None:
    """Start the runtime and clear the wake fd, so a test starts from quiet."""
    bocpy.start()
    bocpy.pump()


def fd_readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def wait_for_file(path: str, limit: float = LIMIT) -> bool:
    """Block (inside a behavior) until ``path`` exists; False on time-out."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def open_gate(path: Path) -> None:
    path.write_text("open")


def square(x: int) -> int:
    return x * x


# ------------------------------------------------------------ the driver


def test_driver_sleeps_until_pinned_work_arrives_then_pumps_it():
    settle_wake_fd()

    async def main() -> tuple[int, int, int]:
        async with bocpy.aio.driver() as driver:
            assert driver.installed and driver.mode == "reader"
            assert bocpy.aio.current() is driver
            await asyncio.sleep(0.05)
            idle_pumps = driver.pumps
            await asyncio.sleep(0.25)  # nothing to do: the loop must not pump
            assert driver.pumps == idle_pumps, "the driver pumped without being woken"

            event = asyncio.Event()
            flag = PinnedCown(event)
            seed = Cown(20)

            @when(seed)
            def on_worker(seed, flag=flag):
                # A worker schedules pinned work: only the wake fd tells the loop.
                @when(flag)
                def on_main(flag):
                    flag.value.set()

                return seed.value + 1

            await event.wait()
            return driver.wakeups, driver.pumps - idle_pumps, driver.executed

    wakeups, pumps, executed = run(main)
    assert executed >= 1
    # A few spurious wake-ups are allowed (the fd can stay readable a moment
    # after the work ran); a spinning loop would pump thousands of times.
    assert 1 <= pumps <= 20 and wakeups <= 20, (pumps, wakeups)


def test_uninstall_stops_pumping():
    settle_wake_fd()
    log = PinnedCown([])

    async def main() -> None:
        driver = bocpy.aio.install()
        driver.uninstall()
        assert not driver.installed and bocpy.aio.current() is None
        driver.uninstall()  # idempotent

        @when(log)
        def note(log):
            log.value.append("ran")

        await asyncio.sleep(0.2)

    run(main)
    assert fd_readable(bocpy.wake_fd())  # the work is still waiting
    assert bocpy.pump().executed == 1  # ... until someone pumps
    bocpy.quiesce()
    with log:
        assert log.value == ["ran"]


def test_module_level_uninstall_and_double_install():
    async def main() -> None:
        driver = bocpy.aio.install()
        with pytest.raises(RuntimeError, match="already has a driver"):
            bocpy.aio.install()
        assert driver.install() is driver  # idempotent
        assert bocpy.aio.uninstall() is True
        assert bocpy.aio.uninstall() is False
        assert bocpy.aio.current() is None

    run(main)


def test_install_needs_a_loop_when_none_is_running():
    with pytest.raises(RuntimeError, match="no running event loop"):
        bocpy.aio.install()


def test_install_before_the_loop_runs():
    settle_wake_fd()
    loop = asyncio.new_event_loop()
    try:
        driver = bocpy.aio.install(loop)
        box = PinnedCown([])

        @when(box)
        def fill(box):
            box.value.append(1)

        async def until_filled() -> None:
            while driver.executed == 0:
                await asyncio.sleep(0.005)

        loop.run_until_complete(asyncio.wait_for(until_filled(), LIMIT))
        driver.uninstall()
    finally:
        loop.close()
    with box:
        assert box.value == [1]


def test_poll_mode_pumps_too():
    settle_wake_fd()

    async def main() -> str:
        async with bocpy.aio.driver(mode="poll", poll_ms=5) as driver:
            assert driver.mode == "poll"
            box = PinnedCown("")

            @when(box)
            def fill(box):
                box.value = "polled"

            return await bocpy.aio.result(box)

    assert run(main) == "polled"


def test_deadline_budget_keeps_the_loop_responsive():
    settle_wake_fd()
    stamps = PinnedCown([])
    count = 40

    async def main() -> tuple[list[float], list[float], Any]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.perf_counter())
                await asyncio.sleep(0)

        async with bocpy.aio.driver(deadline_ms=1) as driver:
            task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            for _ in range(count):

                @when(stamps)
                def slow(stamps):
                    time.sleep(0.003)
                    stamps.value.append(time.perf_counter())

            last = await bocpy.aio.result(stamps)
            stop.set()
            await task
            return ticks, list(last), driver

    ticks, pinned, driver = run(main)
    assert len(pinned) == count
    first, end = pinned[0], pinned[-1]
    between = [t for t in ticks if first < t < end]
    # Each pump ran at most ~one 3 ms behavior, and the ticker ran in between.
    assert driver.pumps >= count // 2
    assert len(between) >= count // 4, (len(between), driver)


def test_max_behaviors_budget_continues_with_call_soon():
    settle_wake_fd()
    box = PinnedCown(0)

    async def main() -> tuple[int, int]:
        async with bocpy.aio.driver(max_behaviors=2) as driver:
            for _ in range(10):

                @when(box)
                def bump(box):
                    box.value += 1

            value = await bocpy.aio.result(box)
            return value, driver.pumps

    value, pumps = run(main)
    assert value == 10
    assert pumps >= 5


def test_driver_rests_on_a_wake_fd_that_stays_readable():
    # A pinned body that schedules more pinned work leaves the wake fd
    # readable after the pump that ran both; wait() then tears the runtime
    # down, and pump() without a runtime does not clear the fd.  The driver
    # must not spin on it, and must still pump once work arrives.
    first, second = PinnedCown(0), PinnedCown(0)

    @when(first)
    def outer(first, second=second):
        @when(second)
        def inner(second):
            second.value += 1

    bocpy.wait()
    stuck = fd_readable(bocpy.wake_fd())

    async def main() -> tuple[int, int]:
        async with bocpy.aio.driver() as driver:
            await asyncio.sleep(0.3)
            idle_pumps = driver.pumps
            box = PinnedCown("")

            @when(box)
            def fill(box):
                box.value = "ran"

            assert await bocpy.aio.result(box) == "ran"
            return idle_pumps, driver.pumps

    idle_pumps, _ = run(main)
    # Without resting, a stuck fd means one pump per loop iteration (tens of
    # thousands in 0.3 s); resting backs off to one every 50 ms.
    assert idle_pumps <= 30, (stuck, idle_pumps)


def test_raise_on_error_reports_to_the_loop_exception_handler():
    settle_wake_fd()
    box = PinnedCown(0)

    async def main() -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: seen.append(ctx))
        async with bocpy.aio.driver(raise_on_error=True) as driver:

            @when(box)
            def boom(box):
                raise KeyError("pinned")

            while driver.raised == 0:
                await asyncio.sleep(0.005)
            # the driver keeps working after the error
            assert await bocpy.aio.result(box) == 0
        return seen

    seen = run(main)
    assert any(isinstance(ctx.get("exception"), KeyError) for ctx in seen), seen


def test_invalid_arguments():
    with pytest.raises(ValueError, match="mode"):
        bocpy.aio.Driver(mode="select")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadline_ms"):
        bocpy.aio.Driver(deadline_ms=0)
    with pytest.raises(ValueError, match="max_behaviors"):
        bocpy.aio.Driver(max_behaviors=0)
    with pytest.raises(ValueError, match="poll_ms"):
        bocpy.aio.Driver(poll_ms=-1)


# --------------------------------------------------------------- result()


def test_result_returns_the_value_and_installs_a_driver():
    async def main() -> tuple[int, bool]:
        assert bocpy.aio.current() is None
        base = Cown(7)

        @when(base)
        def squared(base):
            return square(base.value)

        value = await bocpy.aio.result(squared)
        return value, bocpy.aio.current() is not None

    value, installed = run(main)
    assert value == 49
    assert installed


def test_a_driver_on_a_closed_loop_is_not_installed():
    async def main() -> bocpy.aio.Driver:
        await bocpy.aio.result(Cown(0))
        found = bocpy.aio.current()
        assert found is not None and found.installed
        return found

    assert not run(main).installed


def test_result_leaves_the_value_in_the_cown():
    async def main() -> tuple[list[int], list[int]]:
        @when()
        def made():
            return [1, 2, 3]

        return await bocpy.aio.result(made), await bocpy.aio.result(made)

    first, again = run(main)
    assert first == again == [1, 2, 3]


def test_result_waits_for_every_behavior_scheduled_on_the_cown():
    async def main() -> int:
        counter = Cown(0)
        for _ in range(25):

            @when(counter)
            def bump(counter):
                counter.value += 1

        return await bocpy.aio.result(counter)

    assert run(main) == 25


def test_result_raises_the_body_exception():
    async def main() -> None:
        @when()
        def broken():
            raise ValueError("from the body")

        with pytest.raises(ValueError, match="from the body"):
            await bocpy.aio.result(broken)

        # and again: the cown keeps the exception
        with pytest.raises(ValueError, match="from the body"):
            await bocpy.aio.result(broken)

    run(main)


def test_result_of_a_pinned_cown_is_the_object_itself():
    marker = object()
    pinned = PinnedCown(marker)

    async def main() -> object:
        return await bocpy.aio.result(pinned)

    assert run(main) is marker


def test_explicit_driver_replaces_the_automatic_one():
    async def main() -> None:
        await bocpy.aio.result(Cown(1))
        automatic = bocpy.aio.current()
        assert automatic is not None
        async with bocpy.aio.driver(deadline_ms=2) as explicit:
            assert not automatic.installed
            assert bocpy.aio.current() is explicit
            assert await bocpy.aio.result(Cown(2)) == 2
        assert bocpy.aio.current() is None
        assert await bocpy.aio.result(Cown(3)) == 3  # installs a new automatic one

    run(main)


def test_result_rejects_non_cowns():
    async def main() -> None:
        with pytest.raises(TypeError, match="awaits a Cown"):
            await bocpy.aio.result(42)  # type: ignore[arg-type]

    run(main)


def test_gather_many_results():
    n = 200

    async def main() -> list[Any]:
        cowns = []
        for i in range(n):
            source = Cown(i)

            @when(source)
            def job(source):
                if source.value % 50 == 49:
                    raise ArithmeticError(f"job {source.value}")
                return square(source.value)

            cowns.append(job)
        return await asyncio.gather(*(bocpy.aio.result(c) for c in cowns), return_exceptions=True)

    results = run(main)
    for i, got in enumerate(results):
        if i % 50 == 49:
            assert isinstance(got, ArithmeticError) and str(got) == f"job {i}"
        else:
            assert got == i * i


def test_cancelling_the_awaiting_task_is_safe(tmp_path: Path):
    gate = tmp_path / "gate"

    async def main() -> tuple[bool, int]:
        held = Cown(5)

        @when(held)
        def blocked(held, gate=str(gate)):
            wait_for_file(gate)
            return held.value * 3

        waiter = asyncio.create_task(bocpy.aio.result(blocked))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

        # a timeout cancels the same way
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(bocpy.aio.result(blocked), 0.05)

        open_gate(gate)
        # the runtime and the driver go on: the value arrives for a new await
        value = await bocpy.aio.result(blocked)
        return waiter.cancelled(), value

    cancelled, value = run(main)
    assert cancelled
    assert value == 15


def test_loop_ends_while_a_result_is_pending(tmp_path: Path):
    gate = tmp_path / "gate"

    @when()
    def slow(gate=str(gate)):
        return wait_for_file(gate)

    async def main() -> None:
        asyncio.get_running_loop().create_task(bocpy.aio.result(slow))
        await asyncio.sleep(0.05)  # asyncio.run cancels the pending task

    asyncio.run(main())
    open_gate(gate)
    bocpy.quiesce()  # runs the completion, whose loop is closed: no error
    assert run(lambda: bocpy.aio.result(slow)) is True


# ---------------------------------------------------------------- example


def test_asyncio_service_example_exits_zero(run_script):
    proc = run_script("", module="bocpy.examples.asyncio_service", args=["--requests", "4"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all replies checked: OK" in proc.stdout
