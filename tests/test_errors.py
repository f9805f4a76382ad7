"""Exceptions raised in behavior bodies are values on the result cown."""

from __future__ import annotations

import threading

import pytest
from conftest import THREADS_BACKEND

import bocpy
from bocpy import Cown, when


class AppError(Exception):
    """An exception type defined in this (test) module."""


def raise_from_helper(message: str) -> None:
    raise LookupError(message)


def test_exception_lands_on_the_result_cown():
    c = Cown(1)

    @when(c)
    def r(c):
        raise KeyError("missing")

    bocpy.wait(timeout=30)
    assert r.exception is True
    with pytest.raises(KeyError) as info:
        r.unwrap()
    assert info.value.args == ("missing",)


def test_exception_of_a_module_class_keeps_its_type_and_args():
    @when()
    def r():
        raise AppError("custom", {"detail": 1})

    bocpy.wait(timeout=30)
    with pytest.raises(AppError) as info:
        r.unwrap()
    assert type(info.value) is AppError
    assert info.value.args == ("custom", {"detail": 1})


def test_traceback_note_names_the_body_and_the_helper():
    @when()
    def failing_body():
        raise_from_helper("deep")

    bocpy.wait(timeout=30)
    with pytest.raises(LookupError) as info:
        failing_body.unwrap()
    notes = [
        note
        for note in getattr(info.value, "__notes__", [])
        if note.startswith("Behavior traceback")
    ]
    assert len(notes) == 1
    assert "failing_body" in notes[0]
    assert "raise_from_helper" in notes[0]


def test_worker_survives_exceptions_and_later_behaviors_run():
    bocpy.start(1)
    c = Cown(0)
    results = []
    for i in range(20):

        @when(c)
        def r(c, i=i):
            c.value += 1
            if i % 2:
                raise ValueError(i)
            return i

        results.append(r)

    bocpy.wait(timeout=30)
    assert c.unwrap() == 20
    for i, r in enumerate(results):
        if i % 2:
            assert r.exception
            with pytest.raises(ValueError) as info:
                r.unwrap()
            assert info.value.args == (i,)
        else:
            assert not r.exception
            assert r.unwrap() == i


def test_changes_made_before_the_exception_are_kept_in_order():
    c = Cown([])

    @when(c)
    def first(c):
        c.value.append("first")
        raise RuntimeError("after append")

    @when(c)
    def second(c):
        c.value.append("second")
        return list(c.value)

    bocpy.wait(timeout=30)
    assert first.exception
    # As in plain Python, what the body did before raising stays done.
    assert second.unwrap() == ["first", "second"]
    assert c.unwrap() == ["first", "second"]


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_base_exceptions_in_a_body_land_on_the_result_cown(exc_type):
    bocpy.start(1)

    @when()
    def r():
        raise exc_type(7)

    @when()
    def after():
        return "alive"

    bocpy.wait(timeout=30)
    assert r.exception
    with pytest.raises(exc_type) as info:
        r.unwrap()
    assert info.value.args == (7,)
    assert after.unwrap() == "alive"


def test_system_exit_in_a_body_does_not_stop_the_runtime():
    bocpy.start(2)
    c = Cown(0)
    exits = []
    for _ in range(10):

        @when(c)
        def r(c):
            c.value += 1
            raise SystemExit(0)

        exits.append(r)
    bocpy.wait(timeout=30)
    assert c.unwrap() == 10
    assert all(r.exception for r in exits)


def test_a_later_behavior_can_inspect_a_failed_result():
    @when()
    def failed():
        raise ValueError("inspect me")

    @when(failed)
    def inspect(failed):
        return failed.exception, type(failed.value).__name__, failed.value.args

    bocpy.wait(timeout=30)
    assert inspect.unwrap() == (True, "ValueError", ("inspect me",))
    assert failed.exception


def test_exception_that_cannot_cross_still_marks_the_result():
    @when()
    def r():
        raise AppError(threading.Lock())

    @when()
    def after():
        return 1

    bocpy.wait(timeout=30)
    assert r.exception
    with pytest.raises(Exception):
        r.unwrap()
    assert not r.exception
    assert after.unwrap() == 1


def test_infinite_recursion_in_a_body_lands_on_the_result():
    bocpy.start(1)

    @when()
    def r():
        def down(n):
            return down(n + 1)

        return down(0)

    @when()
    def after():
        return "alive"

    bocpy.wait(timeout=60)
    with pytest.raises(RecursionError):
        r.unwrap()
    assert after.unwrap() == "alive"


def test_deep_recursion_within_the_limit_works_in_a_body():
    @when()
    def r():
        def depth(n):
            return 0 if n == 0 else 1 + depth(n - 1)

        return depth(800)

    bocpy.wait(timeout=30)
    assert r.unwrap() == 800


class NeedsTwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


def test_exception_that_cannot_be_rebuilt_still_marks_the_result():
    @when()
    def r():
        raise NeedsTwoArgs("a", "b")

    @when()
    def after():
        return 2

    bocpy.wait(timeout=30)
    assert r.exception
    with pytest.raises(Exception):
        r.unwrap()
    assert after.unwrap() == 2


def test_returning_a_too_deep_structure_is_an_exception_on_the_result():
    @when()
    def r():
        nested = []
        for _ in range(100_000):
            nested = [nested]
        return nested

    @when()
    def after():
        return 3

    bocpy.wait(timeout=60)
    if THREADS_BACKEND:
        # The threads backend stores a result as returned (no pickling), so
        # no depth limit applies: the result is the structure itself.
        assert not r.exception
        nested, depth = r.unwrap(), 0
        while nested:
            (nested,) = nested
            depth += 1
        assert depth == 100_000
    else:
        assert r.exception
        with pytest.raises(Exception):
            r.unwrap()
    assert after.unwrap() == 3


def test_changes_before_exceptions_persist_as_the_cown_moves_between_workers():
    bocpy.start(2)
    c = Cown([])
    partners = [Cown(0), Cown(0)]
    results = []
    for i in range(30):

        @when(c, partners[i % 2])
        def r(c, partner, i=i):
            c.value.append(i)
            partner.value += 1
            if i % 3 == 0:
                raise RuntimeError(i)

        results.append(r)

    bocpy.wait(timeout=60)
    assert c.unwrap() == list(range(30))
    assert [partner.unwrap() for partner in partners] == [15, 15]
    assert [r.exception for r in results] == [i % 3 == 0 for i in range(30)]
