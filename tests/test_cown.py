"""Cown objects on the main thread: construction, holding, unwrap, identity."""

from __future__ import annotations

import copy
import itertools
import os
import pickle
import random
import threading
import time
import typing

import pytest
from conftest import THREADS_BACKEND

import bocpy
from bocpy import Cown, when, whencall


def wait_for_file(path: str, limit: float = 30.0) -> bool:
    """Block (inside a behavior) until ``path`` exists; False on time-out."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# ------------------------------------------------------------- construction


def test_default_value_is_none():
    c = Cown()
    with c:
        assert c.value is None


def test_value_keyword_argument():
    c = Cown(value=[5])
    assert c.unwrap() == [5]


def test_value_is_reachable_between_acquire_and_release():
    c = Cown({"a": 1})
    c.acquire()
    try:
        assert c.value == {"a": 1}
        c.value = [1, 2, 3]
        assert c.value == [1, 2, 3]
    finally:
        c.release()
    with c:
        assert c.value == [1, 2, 3]


def _take_the_lock(c):
    lock = c.value if not isinstance(c.value, dict) else c.value["key"][1]
    with lock:
        return lock.locked()


def test_unpicklable_value_is_rejected_at_construction_naming_the_type():
    lock = threading.Lock()
    if THREADS_BACKEND:
        # The threads backend never pickles a cown's value: the lock is
        # accepted and a behavior uses that very lock (docs/backends.md).
        c = Cown(lock)
        r = whencall(_take_the_lock, [c])
        bocpy.wait(timeout=30)
        assert r.value is True
        assert c.value is lock and not lock.locked()
        return
    with pytest.raises(TypeError, match="lock"):
        Cown(lock)


def test_unpicklable_value_nested_in_container_is_rejected():
    value = {"key": [1, threading.Lock()]}
    if THREADS_BACKEND:
        # As above: no pickling, so a lock nested in a container is accepted
        # and the cown holds the container itself, not a copy.
        c = Cown(value)
        r = whencall(_take_the_lock, [c])
        bocpy.wait(timeout=30)
        assert r.value is True
        assert c.value is value
        return
    with pytest.raises(TypeError, match="lock"):
        Cown(value)


# ---------------------------------------------------------- holding a cown


def _hold_until_told(c, tag):
    bocpy.send(tag + "-held", None)
    bocpy.receive(tag)
    return c.value


def test_value_get_while_a_behavior_holds_the_cown_raises_with_a_hint():
    c = Cown(1)
    assert c.value == 1  # nobody holds or awaits it: the main thread may read it
    r = whencall(_hold_until_told, [c], ["test-cown-hold"])
    bocpy.receive("test-cown-hold-held")
    try:
        with pytest.raises(RuntimeError, match="a behavior holds the cown or waits for it"):
            c.value  # noqa: B018
    finally:
        bocpy.send("test-cown-hold", None)
    bocpy.wait(timeout=30)
    assert (r.value, c.value) == (1, 1)


def test_value_set_without_holding_raises():
    c = Cown(1)
    with pytest.raises(RuntimeError, match="acquire"):
        c.value = 2
    with c:
        assert c.value == 1


def test_acquired_flag_tracks_acquire_and_release():
    c = Cown(0)
    assert c.acquired is False
    c.acquire()
    assert c.acquired is True
    c.release()
    assert c.acquired is False


def test_with_statement_holds_and_releases():
    c = Cown(3)
    with c as held:
        assert c.acquired
        assert held == 3  # `with cown as v:` binds the value
        c.value += 1
    assert not c.acquired
    with c:
        assert c.value == 4


def test_with_statement_releases_on_exception():
    c = Cown(3)
    with pytest.raises(ZeroDivisionError):
        with c:
            1 / 0  # noqa: B018
    assert not c.acquired
    c.acquire()  # would raise if still held
    c.release()


def test_acquire_twice_raises():
    c = Cown(1)
    c.acquire()
    try:
        with pytest.raises(RuntimeError):
            c.acquire()
        assert c.acquired
        assert c.value == 1
    finally:
        c.release()


def test_release_without_acquire_raises():
    c = Cown(1)
    with pytest.raises(RuntimeError):
        c.release()
    assert not c.acquired


def test_value_set_on_main_thread_is_seen_by_behaviors():
    c = Cown(1)
    with c:
        c.value = 41

    @when(c)
    def r(c):
        c.value += 1
        return c.value

    bocpy.wait(timeout=30)
    assert r.unwrap() == 42
    with c:
        assert c.value == 42


def test_behavior_cannot_touch_a_cown_it_did_not_request():
    a, b = Cown(1), Cown(2)

    @when(a)
    def r(a, other=b):
        return other.value

    bocpy.wait(timeout=30)
    assert r.exception
    with pytest.raises(RuntimeError):
        r.unwrap()
    with b:
        assert b.value == 2


# ------------------------------------------------------------------ unwrap


def test_unwrap_returns_value_and_leaves_none():
    c = Cown([1, 2])
    assert c.unwrap() == [1, 2]
    with c:
        assert c.value is None
    assert c.unwrap() is None


def test_unwrap_reraises_captured_exception_and_clears_it():
    @when()
    def boom():
        raise ValueError("bad thing", 17)

    bocpy.wait(timeout=30)
    assert boom.exception is True
    with pytest.raises(ValueError) as info:
        boom.unwrap()
    assert info.value.args == ("bad thing", 17)
    notes = getattr(info.value, "__notes__", [])
    assert any(note.startswith("Behavior traceback") for note in notes), notes
    assert boom.exception is False
    assert boom.unwrap() is None


def test_exception_flag_false_for_ordinary_values():
    @when()
    def fine():
        return ValueError("returned, not raised")

    bocpy.wait(timeout=30)
    c = Cown(5)
    assert c.exception is False
    assert fine.exception is False
    value = fine.unwrap()
    assert isinstance(value, ValueError)
    assert value.args == ("returned, not raised",)


def test_unwrap_and_acquire_while_behaviors_in_flight_raise(tmp_path):
    gate = str(tmp_path / "gate")
    busy, idle = Cown(0), Cown(1)

    @when(busy)
    def slow(busy, gate=gate):
        return wait_for_file(gate)

    try:
        with pytest.raises(RuntimeError):
            idle.unwrap()
        with pytest.raises(RuntimeError):
            idle.acquire()
        assert not idle.acquired
        with pytest.raises(RuntimeError):
            slow.unwrap()
    finally:
        open(gate, "w").close()
    bocpy.wait(timeout=30)
    assert slow.unwrap() is True
    assert idle.unwrap() == 1


# ------------------------------------------------------ identity and order


def test_cowns_are_hashable_and_compare_by_identity():
    a, b = Cown(1), Cown(1)
    assert a == a
    assert a != b
    assert len({a, b, a}) == 2
    table = {a: "a", b: "b"}
    assert table[a] == "a" and table[b] == "b"


def test_cowns_are_totally_ordered_in_creation_order():
    cowns = [Cown(i) for i in range(30)]
    shuffled = cowns[:]
    random.Random(1).shuffle(shuffled)
    assert sorted(shuffled) == cowns
    for x, y in itertools.pairwise(cowns):
        assert x < y and y > x and x <= y and y >= x
        assert not (y < x)
    assert cowns[0] <= cowns[0] and cowns[0] >= cowns[0]


def test_cown_identity_survives_a_round_trip_through_a_behavior():
    c = Cown("payload")

    @when()
    def back(c=c):
        return c

    bocpy.wait(timeout=30)
    returned = back.unwrap()
    assert isinstance(returned, Cown)
    assert returned == c
    assert hash(returned) == hash(c)
    assert not (returned < c) and not (c < returned)
    with returned:
        assert returned.value == "payload"


def test_repr_shows_value_only_when_held():
    c = Cown("text")
    assert "not acquired" in repr(c)
    with c:
        assert repr(c) == "Cown('text')"
    c2 = Cown([1, 2])
    with c2:
        assert repr(c2) == "Cown([1, 2])"
    assert "not acquired" in repr(c2)


def test_generic_subscription_works():
    alias = Cown[int]
    assert typing.get_origin(alias) is Cown
    assert typing.get_args(alias) == (int,)

    def f(c: Cown[list[str]]) -> Cown[int]:  # annotations evaluate fine
        return c

    assert f.__annotations__


def test_copy_returns_the_same_cown():
    c = Cown([1])
    assert copy.copy(c) is c


def test_pickling_a_cown_outside_bocpy_raises_type_error():
    c = Cown(1)
    with pytest.raises(TypeError):
        pickle.dumps(c)
    with pytest.raises(TypeError):
        pickle.dumps([c])


def test_cowns_as_dict_keys_survive_transfer():
    a, b = Cown(1), Cown(2)
    holder = Cown({a: "A", b: "B"})

    @when(holder)
    def r(holder, a=a, b=b):
        return holder.value[a], holder.value[b], a in set(holder.value)

    @when(a)
    def keyed(a):
        return {a: "from worker"}

    bocpy.wait(timeout=30)
    assert r.unwrap() == ("A", "B", True)
    assert keyed.unwrap()[a] == "from worker"
    with holder:
        assert holder.value[b] == "B"


def test_comparison_with_non_cowns():
    c = Cown(5)
    assert (c == 5) is False
    assert (c != 5) is True
    assert c != None  # noqa: E711
    with pytest.raises(TypeError):
        c < 5  # noqa: B015
    with pytest.raises(TypeError):
        sorted([c, 5])


def test_generic_alias_can_construct():
    c = Cown[int](5)
    assert isinstance(c, Cown)
    assert c.unwrap() == 5


def test_repr_acquired_and_exception_inside_a_behavior():
    c = Cown(5)

    @when(c)
    def r(c):
        before = (repr(c), c.acquired, c.exception)
        c.value = ValueError("stored, not raised")
        return before, repr(c), c.exception

    bocpy.wait(timeout=30)
    assert r.unwrap() == (
        ("Cown(5)", True, False),
        "Cown(ValueError('stored, not raised'))",
        False,
    )
    assert c.exception is False
    assert isinstance(c.unwrap(), ValueError)


def test_with_statement_while_behaviors_in_flight_raises(tmp_path):
    gate = str(tmp_path / "gate")
    c = Cown(0)

    @when()
    def slow(gate=gate):
        return wait_for_file(gate)

    try:
        with pytest.raises(RuntimeError):
            with c:
                pass
        assert not c.acquired
    finally:
        open(gate, "w").close()
    bocpy.wait(timeout=30)
    with c:
        assert c.value == 0
