"""bocpy.pyglet_driver: pumping pinned behaviors from a pyglet clock.

No display is needed: the tests tick pyglet clocks by hand.  They skip when
pyglet is not installed (``pip install pyglet``), except the one that checks
the error message for that case.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

import bocpy
import bocpy.pyglet_driver
from bocpy import Cown, PinnedCown, when

#: Seconds a bounded ticking loop may run before the test fails.
LIMIT = 30.0


@pytest.fixture
def pyglet_clock() -> Any:
    """The ``pyglet.clock`` module (skips the test without pyglet)."""
    return pytest.importorskip(
        "pyglet.clock", reason="pyglet is not installed (pip install pyglet)"
    )


class FakeTime:
    """A time function for a ``pyglet.clock.Clock`` that advances on demand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tick_until(clock: Any, fake: FakeTime, step: float, done: Callable[[], bool]) -> bool:
    """Advance ``fake`` by ``step`` and tick ``clock`` until ``done()`` (bounded)."""
    deadline = time.monotonic() + LIMIT
    while not done():
        if time.monotonic() > deadline:
            return False
        fake.now += step
        clock.tick()
        time.sleep(0.001)
    return True


def schedule_pinned_from_worker(box: PinnedCown[list[str]], text: str) -> Cown[int]:
    """A worker behavior that schedules a pinned append to ``box``."""
    seed = Cown(1)

    @when(seed)
    def on_worker(seed, box=box, text=text):
        @when(box)
        def on_main(box, text=text):
            box.value.append(text)

        return seed.value

    return on_worker


def test_clock_driven_pump_runs_work_scheduled_from_a_worker(pyglet_clock: Any):
    fake = FakeTime()
    clock = pyglet_clock.Clock(time_function=fake)
    driver = bocpy.pyglet_driver.install(1 / 60, clock=clock)
    try:
        assert driver.installed and driver.clock is clock
        box: PinnedCown[list[str]] = PinnedCown([])
        schedule_pinned_from_worker(box, "drawn")
        assert tick_until(clock, fake, 1 / 60, lambda: driver.executed >= 1)
        assert driver.ticks >= 1
    finally:
        driver.uninstall()
    with box:
        assert box.value == ["drawn"]


def test_ticks_follow_the_interval(pyglet_clock: Any):
    fake = FakeTime()
    clock = pyglet_clock.Clock(time_function=fake)
    driver = bocpy.pyglet_driver.install(0.1, clock=clock)
    try:
        for _ in range(10):
            fake.now += 0.05
            clock.tick()
        assert 4 <= driver.ticks <= 6  # one tick per 0.1 s of clock time
    finally:
        driver.uninstall()


def test_default_clock(pyglet_clock: Any):
    driver = bocpy.pyglet_driver.install(1 / 240)
    try:
        assert driver.clock is pyglet_clock.get_default()
        box: PinnedCown[list[str]] = PinnedCown([])
        schedule_pinned_from_worker(box, "default")
        deadline = time.monotonic() + LIMIT
        while driver.executed == 0 and time.monotonic() < deadline:
            time.sleep(1 / 240)
            pyglet_clock.tick()
        assert driver.executed >= 1
    finally:
        driver.uninstall()
    with box:
        assert box.value == ["default"]


def test_uninstall_stops_pumping(pyglet_clock: Any):
    bocpy.start()
    bocpy.pump()
    fake = FakeTime()
    clock = pyglet_clock.Clock(time_function=fake)
    driver = bocpy.pyglet_driver.install(0.01, clock=clock)
    driver.uninstall()
    driver.uninstall()  # idempotent
    assert not driver.installed
    log: PinnedCown[list[str]] = PinnedCown([])

    @when(log)
    def note(log):
        log.value.append("ran")

    for _ in range(20):
        fake.now += 0.01
        clock.tick()
    assert driver.ticks == 0
    assert bocpy.pump().executed == 1
    with log:
        assert log.value == ["ran"]


def test_deadline_budget_spreads_work_over_ticks(pyglet_clock: Any):
    bocpy.start()
    bocpy.pump()
    fake = FakeTime()
    clock = pyglet_clock.Clock(time_function=fake)
    count = 20
    stamps: PinnedCown[list[float]] = PinnedCown([])
    for _ in range(count):

        @when(stamps)
        def slow(stamps):
            time.sleep(0.003)
            stamps.value.append(time.perf_counter())

    driver = bocpy.pyglet_driver.install(1 / 60, clock=clock, deadline_ms=1)
    try:
        fake.now += 1 / 60
        clock.tick()
        assert driver.last_result is not None and driver.last_result.deadline_reached
        assert driver.executed < count
        assert tick_until(clock, fake, 1 / 60, lambda: driver.executed >= count)
        assert driver.ticks >= count // 2
    finally:
        driver.uninstall()


def test_raise_on_error_propagates_from_the_tick(pyglet_clock: Any):
    fake = FakeTime()
    clock = pyglet_clock.Clock(time_function=fake)
    box = PinnedCown(0)

    @when(box)
    def boom(box):
        raise KeyError("pinned")

    driver = bocpy.pyglet_driver.install(0.01, clock=clock, raise_on_error=True)
    try:
        deadline = time.monotonic() + LIMIT
        with pytest.raises(KeyError, match="pinned"):
            while time.monotonic() < deadline:
                fake.now += 0.01
                clock.tick()
                time.sleep(0.001)
        assert driver.raised == 1
    finally:
        driver.uninstall()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="interval"):
        bocpy.pyglet_driver.PygletDriver(0)
    with pytest.raises(TypeError, match="interval"):
        bocpy.pyglet_driver.PygletDriver("fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="deadline_ms"):
        bocpy.pyglet_driver.PygletDriver(deadline_ms=0)
    with pytest.raises(ValueError, match="max_behaviors"):
        bocpy.pyglet_driver.PygletDriver(max_behaviors=0)


def test_missing_pyglet_is_explained(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "pyglet.clock", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install pyglet"):
        bocpy.pyglet_driver.install()
