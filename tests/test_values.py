"""Values that cross between interpreters: copying, classes, nested cowns.

On the threads backend (``conftest.THREADS_BACKEND``) a value never crosses:
a cown holds the object itself, results are stored as returned, and nothing
is pickled or rebuilt.  The tests about copying assert that instead
(docs/backends.md).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import fractions
import itertools
import sys
import threading

import pytest
from conftest import THREADS_BACKEND

import bocpy
from bocpy import Cown, when


class Account:
    def __init__(self, owner: str, balance: int) -> None:
        self.owner = owner
        self.balance = balance

    def deposit(self, amount: int) -> None:
        self.balance += amount


@dataclasses.dataclass
class Point:
    x: int
    y: int


Pair = collections.namedtuple("Pair", "left right")


@pytest.fixture(autouse=True, params=[1, 2], ids=["1worker", "2workers"])
def workers(request):
    """Run every test here with one worker and with two.

    With two workers a cown's value also moves from worker to worker, not
    only between a worker and the main interpreter.
    """
    bocpy.start(request.param)
    return request.param


def double_value(x):
    return 2 * x


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


ROUND_TRIP_VALUES = [
    None,
    True,
    0,
    -(2**100),
    3.5,
    complex(1, -2),
    "text ✓",
    b"\x00bytes",
    bytearray(b"ba"),
    (1, (2, 3)),
    [1, [2, [3]]],
    {"a": {"b": [1]}},
    {1, 2, 3},
    frozenset({"x"}),
    range(3, 9, 2),
    decimal.Decimal("1.10"),
    fractions.Fraction(3, 7),
    # CPython 3.12's _datetime cannot load in an isolated sub-interpreter,
    # whose pure-Python datetime objects then never equal the main ones.
    *(
        [datetime.date(2024, 2, 29), datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.UTC)]
        if sys.version_info >= (3, 13)
        else []
    ),
    collections.OrderedDict(b=1, a=2),
    collections.Counter("hello"),
    Point(1, 2),
    Pair(1, "r"),
    Point,  # a class, by reference
    double_value,  # a module-level function, by reference
]


def test_picklable_values_round_trip_through_a_worker():
    cowns = [Cown(value) for value in ROUND_TRIP_VALUES]
    results = []
    for cown in cowns:

        @when(cown)
        def r(c):
            return c.value, type(c.value).__name__

        results.append(r)

    bocpy.wait(timeout=30)
    for value, cown, r in zip(ROUND_TRIP_VALUES, cowns, results, strict=True):
        got, type_name = r.unwrap()
        assert got == value, value
        assert type(got) is type(value), value
        assert type_name == type(value).__name__, value
        assert cown.unwrap() == value, value


def test_instances_of_test_module_classes_are_usable_in_bodies():
    alice = Cown(Account("alice", 10))

    @when(alice)
    def r(alice):
        alice.value.deposit(5)
        return isinstance(alice.value, Account), alice.value.balance

    bocpy.wait(timeout=30)
    assert r.unwrap() == (True, 15)
    account = alice.unwrap()
    assert isinstance(account, Account)
    assert (account.owner, account.balance) == ("alice", 15)


def test_body_can_create_values_of_module_classes():
    c = Cown(None)

    @when(c)
    def r(c):
        c.value = Point(3, 4)

    bocpy.wait(timeout=30)
    assert r.unwrap() is None
    assert c.unwrap() == Point(3, 4)


def test_worker_sees_value_as_stored_not_later_mutations():
    data = [1, 2]
    c = Cown(data)
    data.append(3)

    @when(c)
    def r(c):
        return list(c.value)

    bocpy.wait(timeout=30)
    # The threads backend does not copy the value at Cown(): the cown holds
    # ``data`` itself, so the worker sees the append made after it.
    assert r.unwrap() == ([1, 2, 3] if THREADS_BACKEND else [1, 2])


def test_value_is_carried_across_many_behaviors_and_workers():
    c = Cown({"count": 0, "seen": []})
    for i in range(200):

        @when(c)
        def _(c, i=i):
            c.value["count"] += 1
            c.value["seen"].append(i)

    bocpy.wait(timeout=60)
    value = c.unwrap()
    assert value["count"] == 200
    assert value["seen"] == list(range(200))


def test_value_stored_by_a_behavior_is_visible_on_main_thread():
    c = Cown(0)

    @when(c)
    def _(c):
        c.value = {"new": [1, 2, 3]}

    bocpy.wait(timeout=30)
    with c:
        assert c.value == {"new": [1, 2, 3]}


# ----------------------------------------------------------- cowns in values


def test_cown_inside_a_cown_keeps_identity():
    inner = Cown(5)
    outer = Cown(inner)

    @when(outer)
    def r(outer):
        nested = outer.value

        @when(nested)
        def bump(nested):
            nested.value += 1

        return nested

    bocpy.wait(timeout=30)
    assert r.unwrap() == inner
    assert inner.unwrap() == 6
    got = outer.unwrap()
    assert got == inner


def test_list_of_cowns_as_a_value():
    cowns = [Cown(i) for i in range(5)]
    holder = Cown(cowns)

    @when(holder)
    def r(holder):
        @when(holder.value)
        def double_all(group):
            for cown in group:
                cown.value *= 2

        return holder.value

    bocpy.wait(timeout=30)
    assert r.unwrap() == cowns
    assert [cown.unwrap() for cown in cowns] == [0, 2, 4, 6, 8]


def test_dict_with_cowns_as_a_value():
    accounts = {"a": Cown(10), "b": Cown(0)}
    bank = Cown(accounts)

    @when(bank)
    def r(bank):
        a, b = bank.value["a"], bank.value["b"]

        @when(a, b)
        def move(a, b):
            a.value -= 4
            b.value += 4

        return sorted(bank.value)

    bocpy.wait(timeout=30)
    assert r.unwrap() == ["a", "b"]
    assert accounts["a"].unwrap() == 6
    assert accounts["b"].unwrap() == 4
    with bank:
        assert bank.value["a"] == accounts["a"]


def test_cown_created_in_a_behavior_is_usable_after_wait():
    @when()
    def maker():
        return [Cown("made"), {"k": Cown([1])}]

    bocpy.wait(timeout=30)
    first, mapping = maker.unwrap()
    assert isinstance(first, Cown)
    assert first.unwrap() == "made"
    assert mapping["k"].unwrap() == [1]


def test_inner_cown_set_by_behavior_is_reachable_only_through_container():
    outer = Cown(None)

    @when(outer)
    def _(outer):
        inner = Cown(0)
        outer.value = {"inner": inner}

        @when(inner)
        def _(inner):
            inner.value = "set by nested"

    bocpy.wait(timeout=30)
    with outer:
        inner = outer.value["inner"]
    inner.acquire()
    try:
        assert inner.value == "set by nested"
    finally:
        inner.release()


# ------------------------------------------------------ unpicklable values


def test_storing_an_unpicklable_value_lands_on_the_result_cown():
    c = Cown("good")

    @when(c)
    def bad(c):
        c.value = threading.Lock()

    @when(c)
    def after(c):
        return c.value

    bocpy.wait(timeout=30)
    if THREADS_BACKEND:
        # Nothing is pickled at release on the threads backend: the lock is
        # the cown's value from then on.
        assert bad.unwrap() is None
        lock = after.unwrap()
        assert type(lock) is type(threading.Lock())
        assert c.unwrap() is lock
        return
    assert bad.exception
    with pytest.raises(TypeError, match="lock"):
        bad.unwrap()
    assert after.unwrap() == "good"
    assert c.unwrap() == "good"


def test_storing_unpicklable_keeps_the_last_good_value():
    c = Cown(0)

    @when(c)
    def _(c):
        c.value = 1

    @when(c)
    def bad(c):
        c.value = 2
        c.value = [Unpicklable()]

    @when(c)
    def last(c):
        if THREADS_BACKEND:
            return c.value
        c.value += 10

    bocpy.wait(timeout=30)
    if THREADS_BACKEND:
        # No pickling at release on the threads backend: the store stands and
        # the next behavior gets that very list.
        assert bad.unwrap() is None
        stored = last.unwrap()
        assert [type(x) for x in stored] == [Unpicklable]
        assert c.unwrap() is stored
        return
    assert bad.exception
    with pytest.raises(TypeError):
        bad.unwrap()
    assert c.unwrap() == 11


def test_returning_an_unpicklable_value_is_an_exception_on_the_result():
    c = Cown(1)

    @when(c)
    def bad(c):
        c.value = 2
        return threading.Lock()

    @when()
    def other():
        return "still runs"

    bocpy.wait(timeout=30)
    if THREADS_BACKEND:
        # Results are stored as returned on the threads backend: the result
        # is the lock itself, and the store to the cown stands.
        assert type(bad.unwrap()) is type(threading.Lock())
        assert c.unwrap() == 2
    else:
        assert bad.exception
        with pytest.raises(TypeError, match="lock"):
            bad.unwrap()
    assert other.unwrap() == "still runs"


def test_unpicklable_value_in_one_of_several_cowns():
    a, b = Cown("a0"), Cown("b0")

    @when(a, b)
    def bad(a, b):
        a.value = "a1"
        b.value = threading.Lock()

    @when(a, b)
    def after(a, b):
        return a.value, b.value

    bocpy.wait(timeout=30)
    if THREADS_BACKEND:
        # No pickling at release on the threads backend: both stores stand.
        assert bad.unwrap() is None
        a_value, b_value = after.unwrap()
        assert a_value == "a1" and type(b_value) is type(threading.Lock())
        return
    assert bad.exception
    with pytest.raises(TypeError):
        bad.unwrap()
    _, b_value = after.unwrap()
    assert b_value == "b0"


def test_unpicklable_value_used_only_inside_a_body_is_fine():
    c = Cown(0)

    @when(c)
    def r(c):
        lock = threading.Lock()
        with lock:
            c.value += 1
        return "ok"

    bocpy.wait(timeout=30)
    assert r.unwrap() == "ok"
    assert c.unwrap() == 1


# ------------------------------------------------ values that fail to rebuild


def explode():
    raise ValueError("cannot be rebuilt here")


class Fragile:
    """Pickles fine, but cannot be unpickled anywhere."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self):
        return (explode, ())


def test_value_that_fails_to_rebuild_on_a_worker_is_an_exception_on_the_result():
    fragile = Fragile("original")
    c = Cown(fragile)

    @when(c)
    def r(c):
        return "ran"

    @when()
    def other():
        return "other ran"

    bocpy.wait(timeout=30)
    if THREADS_BACKEND:
        # Nothing is rebuilt on the threads backend: the body gets the object
        # itself, so it runs.
        assert r.unwrap() == "ran"
    else:
        assert r.exception
        with pytest.raises(Exception):
            r.unwrap()
    assert other.unwrap() == "other ran"
    with c:
        assert c.value is fragile  # the cown keeps its last good value


def test_capture_that_fails_to_rebuild_on_a_worker_is_an_exception_on_the_result():
    c = Cown(1)

    @when(c)
    def r(c, thing=Fragile("captured")):
        c.value = 2
        return "ran"

    @when(c)
    def after(c):
        return c.value

    bocpy.wait(timeout=30)
    if THREADS_BACKEND:
        # Captures are the objects themselves on the threads backend: nothing
        # is rebuilt, so the body runs and its store stands.
        assert r.unwrap() == "ran"
        assert after.unwrap() == 2
        return
    assert r.exception
    with pytest.raises(Exception):
        r.unwrap()
    assert after.unwrap() == 1


# ------------------------------------------------------------ shapes and size


def test_large_value_round_trips():
    blob = bytes(range(256)) * (32 * 1024)  # 8 MiB
    c = Cown(blob)

    @when(c)
    def r(c):
        c.value = c.value + b"!"
        return len(c.value)

    bocpy.wait(timeout=60)
    assert r.unwrap() == len(blob) + 1
    value = c.unwrap()
    assert value[:-1] == blob and value[-1:] == b"!"


def test_large_group_of_cowns():
    cowns = [Cown(i) for i in range(1000)]

    @when(cowns)
    def r(group):
        for cown in group:
            cown.value += 1
        return sum(cown.value for cown in group)

    bocpy.wait(timeout=60)
    assert r.unwrap() == sum(range(1, 1001))
    assert cowns[999].unwrap() == 1000


def test_lambda_inside_a_value_travels():
    offset = 5
    c = Cown({"fn": lambda x: x + offset, "n": 1})

    @when(c)
    def r(c):
        return c.value["fn"](c.value["n"])

    bocpy.wait(timeout=30)
    assert r.unwrap() == 6


def test_cown_containing_itself():
    c = Cown(None)

    @when(c)
    def _(c):
        c.value = [c, "tail"]

    @when(c)
    def r(c):
        return c.value[0] == c

    bocpy.wait(timeout=30)
    assert r.unwrap() is True
    value = c.unwrap()
    assert value[0] == c and value[1] == "tail"


def test_cowns_only_reachable_through_a_container_stay_alive():
    import gc

    holder = Cown([Cown(i) for i in range(5)])
    gc.collect()

    @when(holder)
    def _(holder):
        @when(holder.value)
        def _(group):
            for cown in group:
                cown.value *= 3

    bocpy.wait(timeout=30)
    gc.collect()
    with holder:
        inner = holder.value
    assert [cown.unwrap() for cown in inner] == [0, 3, 6, 9, 12]


def schedule_on_captured_temporary() -> Cown:
    temporary = Cown("only captured")

    @when()
    def r(temporary=temporary):
        @when(temporary)
        def rr(temporary):
            return temporary.value + "!"

        return rr

    return r


def test_cown_only_referenced_by_a_capture_stays_alive():
    import gc

    r = schedule_on_captured_temporary()
    gc.collect()
    bocpy.wait(timeout=30)
    assert r.unwrap().unwrap() == "only captured!"


def test_cowns_created_on_workers_are_ordered_by_creation():
    @when()
    def made():
        return [Cown(i) for i in range(10)]

    bocpy.wait(timeout=30)
    worker_cowns = made.unwrap()
    later = [Cown("x"), Cown("y")]
    everything = worker_cowns + later
    assert sorted(reversed(everything)) == everything
    assert all(x < y for x, y in itertools.pairwise(everything))
    assert len(set(everything)) == 12


def test_in_place_mutation_on_the_main_thread_is_seen_by_workers():
    class_free = Cown([1])
    account = Cown(Account("bob", 0))
    with class_free:
        class_free.value.append(2)
    account.acquire()
    account.value.deposit(5)
    account.release()

    @when(class_free, account)
    def r(items, account):
        items.value.append(3)
        return list(items.value), account.value.balance

    bocpy.quiesce(timeout=30)
    with class_free:
        class_free.value.append(4)

    @when(class_free)
    def r2(items):
        return list(items.value)

    bocpy.wait(timeout=30)
    assert r.unwrap() == ([1, 2, 3], 5)
    assert r2.unwrap() == [1, 2, 3, 4]


def test_storing_an_unpicklable_value_on_the_main_thread_fails_by_release():
    c = Cown(1)
    if THREADS_BACKEND:
        # The threads backend never pickles at release: the lock stored on
        # the main thread is the value a behavior then gets.
        lock = threading.Lock()
        with c:
            c.value = lock
        assert not c.acquired

        @when(c)
        def got(c):
            return c.value is lock

        bocpy.wait(timeout=30)
        assert got.unwrap() is True
        return
    with pytest.raises(TypeError, match="lock"):
        with c:
            c.value = threading.Lock()
    assert not c.acquired
    with c:
        assert c.value == 1

    @when(c)
    def r(c):
        return c.value

    bocpy.wait(timeout=30)
    assert r.unwrap() == 1


def test_unpicklable_value_replaced_before_the_body_ends_is_fine():
    c = Cown(1)

    @when(c)
    def r(c):
        c.value = threading.Lock()
        c.value = 2
        return "ok"

    bocpy.wait(timeout=30)
    assert r.unwrap() == "ok"
    assert c.unwrap() == 2


def test_in_place_changes_follow_the_cown_between_workers():
    bocpy.wait(timeout=30)
    bocpy.start(2)
    c = Cown({"log": []})
    others = [Cown(0) for _ in range(4)]
    for i in range(200):
        # Alternate the partner cown so the behaviors spread over workers.
        @when(c, others[i % 4])
        def _(c, other, i=i):
            c.value["log"].append(i)  # in place: no assignment to c.value
            other.value += 1

    bocpy.wait(timeout=60)
    assert c.unwrap()["log"] == list(range(200))
    assert [other.unwrap() for other in others] == [50] * 4
