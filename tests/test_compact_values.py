"""Plain immutable values cross in bocpy's compact encoding, not as pickles.

`None`, `bool`, `int` within 64 bits, `float`, `str`, `bytes`, tuples of those
and `Cown` handles skip the pickler (binding/transfer.c), and so does a list of
those when it is the whole value (nothing inside it can alias it).  What
arrives must be exactly what unpickling would give: same type, equal value,
and for everything else (subclasses, bigger ints, lone surrogates, deep
nesting, mutable containers inside a value) the pickler as before.  Each value is checked through
every route: a cown's value set on the main thread, a capture, a result.
"""

from __future__ import annotations

import enum
import math
import struct
import sys

import pytest
from conftest import THREADS_BACKEND

import bocpy
from bocpy import Cown, when


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


class Row(tuple):
    pass


class Items(list):
    pass


VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    255,
    2**30,
    2**62,
    2**63 - 1,
    -(2**63),
    2**63,  # one past int64: pickled
    -(2**63) - 1,
    10**40,
    0.0,
    -0.0,
    1.5,
    math.inf,
    -math.inf,
    "",
    "plain",
    "héllo wörld ✓ 𝄞",
    "lone \udc80 surrogate",  # not UTF-8: pickled
    b"",
    b"\x00\xffbytes",
    (),
    (1,),
    (1, "two", 3.0, b"four", None, True, (5, (6, ())), -(2**63)),
    pytest.param(
        ((((((((((1,),),),),),),),),),),  # deeper than the compact nesting: pickled
        id="tuple nested 10 deep",
    ),
    Colour.RED,
    Text("sub"),
    Row((1, 2)),
    (1, [2, 3]),  # a mutable item: pickled
    ([2, 3],),  # a one-item tuple the pickler gets (it once lost its tuple)
    (Text("sub"),),
    [1, 2],
    [],
    [None, True, -(2**63), 2.5, "s", b"b", (1, (2,)), 2**64],  # a big int: pickled
    [1, "two", (3.0, None)],  # a list as the whole value: compact
    [[1], [2]],  # a list inside: pickled
    Items([1, 2]),
    {"a": 1},
    frozenset({1, 2}),
    1 + 2j,
]


def same(a: object, b: object) -> bool:
    """Equal, of the same type all the way down (and -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)  # type: ignore[arg-type]
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(map(same, a, b))  # type: ignore[arg-type]
    return a == b


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_value_of_a_cown_crosses_unchanged(value):
    cown = Cown(value)

    @when(cown)
    def seen(c):
        return (type(c.value).__name__, c.value)

    bocpy.wait()
    name, got = seen.unwrap()
    assert name == type(value).__name__
    assert same(got, value)
    assert same(cown.unwrap(), value)


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_capture_and_result_cross_unchanged(value):
    @when(Cown(None))
    def echo(c, v=value):
        return v

    bocpy.wait()
    assert same(echo.unwrap(), value)


def test_a_list_shared_inside_a_value_stays_shared():
    # Only a list that is the whole value is encoded compactly; one inside a
    # value keeps the pickler, so aliasing is kept as before.
    inner = [1]
    looped: list[object] = [2]
    looped.append(looped)
    cown = Cown([inner, inner])
    loop = Cown(looped)

    @when(cown, loop)
    def check(c, looping):
        v = looping.value
        return c.value[0] is c.value[1], v[1] is v, v[0]

    bocpy.wait()
    assert check.unwrap() == (True, True, 2)
    value = cown.unwrap()
    assert value == [[1], [1]] and value[0] is value[1]


def test_a_list_of_cowns_crosses_as_the_same_cowns():
    cowns = [Cown(i) for i in range(1000)]

    @when(Cown(cowns))
    def bump_all(c):
        for each in c.value:

            @when(each)
            def bump(x):
                x.value += 1

    bocpy.wait()
    bump_all.unwrap()
    assert [c.unwrap() for c in cowns] == list(range(1, 1001))


def test_float_nan_crosses():
    @when(Cown(math.nan))
    def back(c):
        return c.value

    bocpy.wait()
    assert math.isnan(back.unwrap())


def test_cown_in_a_tuple_is_the_same_cown():
    inner = Cown(41)
    outer = Cown((inner, "label"))

    @when(outer)
    def bump(o):
        inner_cown, label = o.value

        @when(inner_cown)
        def add(i):
            i.value += 1

        return label

    bocpy.wait()
    assert bump.unwrap() == "label"
    assert inner.unwrap() == 42
    assert outer.unwrap()[0] is not None


def test_defaults_only_captures_bind_like_defaults():
    """The defaults-only fast path binds what the defaults would have bound."""

    @when(Cown(0))
    def some(c, a=10, b=20, *rest):
        return (a, b, rest)

    @when(Cown(0), Cown(5))
    def all_given(c, d, a=(2, "x")):
        return (d.value, a)

    big = list(range(3))

    @when(Cown(0))
    def mutable(c, a=1, b=big):  # a list default: pickled, same binding
        b.append(a)
        return b

    bocpy.wait()
    assert some.unwrap() == (10, 20, ())
    assert all_given.unwrap() == (5, (2, "x"))
    assert mutable.unwrap() == [0, 1, 2, 1]
    # The threads backend passes captures as the objects themselves (no copy).
    assert big == ([0, 1, 2, 1] if THREADS_BACKEND else [0, 1, 2])


def test_kwonly_and_closure_captures_still_work():
    base = 7

    @when(Cown(1))
    def mixed(c, a=2, *, k=3):
        return c.value + a + k + base

    bocpy.wait()
    assert mixed.unwrap() == 13


# Plain scalars (exact int within 64 bits, float, bool) are held inside the
# cown itself, with no object and no copy (binding/bocpy.h, bocpy_cown).


@pytest.mark.parametrize("value", [7, -(2**63), 2**63 - 1, -0.0, 2.5, True, False], ids=repr)
def test_inline_scalar_through_a_chain_of_behaviors(value):
    cown = Cown(value)
    steps = []
    for _ in range(3):

        @when(cown)
        def step(c):
            before = c.value
            c.value = before  # stored back: inline again when the hold ends
            return before

        steps.append(step)
    bocpy.wait()
    assert all(same(s.unwrap(), value) for s in steps)
    assert same(cown.unwrap(), value)


def test_inline_scalar_replaced_by_an_object_and_back():
    cown = Cown(1)

    @when(cown)
    def grow(c):
        c.value = [c.value, 2]  # leaves the inline form: lives in this worker

    @when(cown)
    def shrink(c):
        c.value = sum(c.value)  # an int again

    bocpy.wait()
    assert same(cown.unwrap(), 3)


def test_refused_value_keeps_the_inline_scalar():
    cown = Cown(41)

    @when(cown)
    def bad(c):
        import threading

        c.value = threading.Lock()  # cannot cross: refused at release

    bocpy.wait()
    if THREADS_BACKEND:
        # The threads backend never pickles a cown's value, so nothing
        # refuses the lock: it replaces the inline scalar, and a scalar
        # stored after it reads back exactly (docs/backends.md).
        assert bad.unwrap() is None
        lock = cown.unwrap()
        assert type(lock).__name__ == "lock" and not lock.locked()

        @when(cown)
        def back(c):
            c.value = 41

        bocpy.wait()
        assert back.unwrap() is None
    else:
        with pytest.raises(TypeError):
            bad.unwrap()
    assert same(cown.unwrap(), 41)


def test_many_single_cown_arguments_and_groups():
    # Up to 16 single cowns store no group table; more, or any list, do.
    cowns = [Cown(i) for i in range(20)]

    @when(*cowns[:16])
    def sixteen(*cs):
        return [c.value for c in cs]

    @when(*cowns)
    def twenty(*cs):
        return [c.value for c in cs]

    @when(cowns[:3], cowns[3], cowns[4:6])
    def grouped(a, b, c):
        return [[x.value for x in a], b.value, [x.value for x in c]]

    bocpy.wait()
    assert sixteen.unwrap() == list(range(16))
    assert twenty.unwrap() == list(range(20))
    assert grouped.unwrap() == [[0, 1, 2], 3, [4, 5]]


def test_too_many_when_arguments_is_a_type_error():
    cowns = [Cown(None) for _ in range(65_536)]
    with pytest.raises(TypeError, match="at most 65535 arguments"):
        when(*cowns)(lambda *cs: None)


# A function defined inside another travels by code (as the pickler would
# send it): its registry id, defaults and closure contents, with the
# function itself allowed in its own closure -- the launcher that schedules
# its own next step (binding/transfer.c, 'g').


@pytest.fixture
def pickled_functions(monkeypatch):
    """Functions the main interpreter's pickler is asked to send (by code)."""
    from bocpy import _pickling

    seen = []
    original = _pickling._Pickler.reducer_override

    def recording(self, obj):
        if callable(obj):
            seen.append(getattr(obj, "__qualname__", obj))
        return original(self, obj)

    monkeypatch.setattr(_pickling._Pickler, "reducer_override", recording)
    return seen


def test_local_launcher_schedules_its_own_steps(pickled_functions):
    def launch(cown, left, step_by=1):
        @when(cown)
        def step(c):
            c.value += step_by
            if left > 1:
                launch(c, left - 1, step_by)

    cown = Cown(0)
    launch(cown, 50, step_by=2)
    bocpy.wait(timeout=30)

    @when(cown)
    def total(c):
        return c.value

    bocpy.wait(timeout=30)
    assert total.unwrap() == 100
    assert pickled_functions == []  # the launcher crossed without the pickler


@pytest.mark.skipif(
    THREADS_BACKEND or not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="the worker frees the launcher by its reference counts: GIL builds, "
    "the interpreters backend (binding/registry.c, break_self_reference)",
)
def test_local_launcher_steps_leave_no_cycle_behind(run_script):
    # The launcher arrives in each step's closure holding itself in its own
    # closure (the compact encoding's 'S'): a reference cycle.  The worker
    # frees it when the step is done, so no garbage waits for the cycle
    # collector (which each step here keeps off in its interpreter).
    result = run_script(
        """
        import gc, types
        from bocpy import Cown, start, wait, when

        def main():
            def launch(cown, left):
                @when(cown)
                def step(c):
                    gc.disable()
                    c.value += 1
                    if left > 1:
                        launch(c, left - 1)
                    else:
                        c.value = sum(
                            1 for f in gc.get_objects()
                            if isinstance(f, types.FunctionType)
                            and f.__qualname__ == "main.<locals>.launch"
                            and f.__closure__ is not None  # not the code's template
                        )

            cown = Cown(0)
            start(worker_count=1)
            launch(cown, 300)
            wait()

            @when(cown)
            def launchers(c):
                gc.enable()
                return c.value

            wait()
            print(launchers.unwrap())

        main()
        """
    )
    assert result.returncode == 0, result.stderr
    # The last step's own launcher is alive; without the fix, about 300.
    assert result.stdout.split() == ["1"]


@pytest.mark.skipif(
    THREADS_BACKEND,
    reason="the threads backend sends the launcher itself, not a copy: a change to it is "
    "seen by the behaviors after",
)
def test_a_reused_local_launcher_is_like_a_new_one_each_behavior():
    # The worker may reuse the launcher that arrived with the last behavior
    # of its code (binding/registry.c, keep_local): each behavior must
    # still see the launcher as sent -- its defaults, and no attribute (they
    # do not travel, as with the pickler) or default that a previous
    # behavior gave its copy after scheduling the next step.
    def launch(cown, left):
        @when(cown)
        def step(c):
            c.value.append((getattr(launch, "mark", None), launch.__defaults__))
            if left > 1:
                launch(c, left - 1)
            if left % 2:
                launch.mark = left  # this copy is then not reused
            launch.__defaults__ = (99,)

    cown = Cown([])
    launch(cown, 12)
    bocpy.wait(timeout=30)

    @when(cown)
    def seen(c):
        return c.value

    bocpy.wait(timeout=30)
    assert seen.unwrap() == [(None, None)] * 12


def test_a_local_launcher_kept_by_a_behavior_keeps_its_closure():
    # A launcher that a behavior keeps (here in its cown) is not reused nor
    # emptied when the behavior is done: it still schedules its steps.
    def launch(cown, left):
        @when(cown)
        def step(c):
            c.value["count"] += 1
            c.value.setdefault("kept", launch)
            if left > 1:
                launch(c, left - 1)

    cown = Cown({"count": 0})
    launch(cown, 5)
    bocpy.wait(timeout=30)

    @when(cown)
    def again(c):
        kept = c.value["kept"]
        cells = [cell.cell_contents for cell in kept.__closure__]
        kept(c, 3)  # schedules three more steps
        return cells == [kept]

    bocpy.wait(timeout=30)

    @when(cown)
    def count(c):
        return c.value["count"]

    bocpy.wait(timeout=30)
    assert again.unwrap() is True
    assert count.unwrap() == 8


_GRABBED: list[object] = []


@pytest.mark.skipif(
    THREADS_BACKEND,
    reason="the threads backend sends the launcher itself, not a copy: a change to it is "
    "seen by the behaviors after",
)
def test_a_kept_launcher_taken_through_gc_is_not_reused():
    # Between two behaviors the worker's kept launcher can be reached only
    # through the cycle collector's view of all objects.  A body that takes
    # it from there (and marks it) must not see the next behavior use it
    # (binding/registry.c, spare_intact).
    def launch(cown, left, tag):
        @when(cown)
        def step(c):
            c.value.append((tag, getattr(launch, "mark", None), launch in _GRABBED))
            if left > 1:
                launch(c, left - 1, tag)

    cown = Cown([])
    launch(cown, 1, "first")  # its launcher is kept when it is done

    @when(cown)
    def grab(c):
        import gc
        import types

        for f in gc.get_objects():  # (naming no launcher: this body takes none)
            if isinstance(f, types.FunctionType) and f.__qualname__.endswith(
                "through_gc_is_not_reused.<locals>.launch"
            ):
                f.mark = "set on a kept copy"
                _GRABBED.append(f)

    launch(cown, 1, "second")

    @when(cown)
    def seen(c):
        _GRABBED.clear()
        return c.value

    bocpy.wait(timeout=30)
    assert seen.unwrap() == [("first", None, False), ("second", None, False)]


def test_local_functions_in_captures_and_results_keep_their_values(pickled_functions):
    scale = 3

    def times(x, by=scale):
        return x * by

    offset = 4

    def shift(x):  # holds `times` in its closure
        return times(x) + offset

    add = lambda x, y=10: x + y  # noqa: E731 (a local lambda on purpose)

    @when(Cown(5))
    def r1(c):
        return times(c.value), times(c.value, 2)

    @when(Cown(5))
    def r2(c):
        return shift(c.value)

    @when(Cown(5))
    def r3(c):
        return add(c.value)

    @when(Cown(1))
    def made(c):
        k = c.value + 6

        def inner(x):
            return x + k

        return inner

    bocpy.wait(timeout=30)
    assert (r1.unwrap(), r2.unwrap(), r3.unwrap()) == ((15, 10), 19, 15)
    assert made.unwrap()(1) == 8
    assert pickled_functions == []


def test_one_local_function_twice_stays_one_object():
    def f():
        return 1

    g = f

    @when(Cown(0))
    def r(c):
        return f is g, f(), g()

    bocpy.wait(timeout=30)
    assert r.unwrap() == (True, 1, 1)


def test_local_functions_the_compact_way_cannot_send_still_work():
    # Keyword-only defaults, an empty cell, and two functions that refer to
    # each other go to the pickler, and arrive working.
    def kw(x, *, by=2):
        return x * by

    def is_even(n):
        return True if n == 0 else is_odd(n - 1)

    def is_odd(n):
        return False if n == 0 else is_even(n - 1)

    def later_user():
        return later

    @when(Cown(0))
    def r(c):
        try:
            late = later_user()
        except NameError:
            late = "unbound"
        return kw(3), kw(3, by=5), is_even(10), is_odd(7), late

    later = 1  # bound after @when: later_user's cell was empty then

    bocpy.wait(timeout=30)
    *values, late = r.unwrap()
    assert values == [6, 15, True, True]
    # The threads backend shares the cell itself, which may be bound by the
    # time the body runs.
    assert late == "unbound" or (THREADS_BACKEND and late == 1)


def test_a_local_function_received_twice_is_two_functions():
    # Sent by the pickler (keyword-only defaults), a local function without
    # a closure or positional defaults is rebuilt as a function of its own
    # each time, never the interpreter's shared template: an attribute set
    # on one does not show on the next (binding/module.c _rebuild_function).
    from bocpy import receive, send

    def outer():
        def kw(*, k=1):
            return k

        return kw

    kw = outer()

    def round_trip(value):
        send("compact-kw", value)
        return receive("compact-kw", 5)[1]

    first = round_trip(kw)
    first.tag = "mine"
    second = round_trip(kw)
    assert first is not second
    assert not hasattr(second, "tag")
    assert (first(), second(k=3)) == (1, 3)
