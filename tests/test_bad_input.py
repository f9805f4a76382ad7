"""Every public function of bocpy, called with wrong types and values.

Property-based (hypothesis): each public function gets ints (negative,
huge), floats (nan, inf), strings (empty, NUL, lone surrogates), bytes,
None, bools, lists, dicts, tuples, plain objects, unpicklable objects,
lambdas, builtins and cowns.  Each call must either work or raise a clear
``TypeError``/``ValueError``/``RuntimeError`` with a message -- never another
exception type, never a crash -- and the runtime must not be wedged
afterwards: a trivial behavior still runs and ``wait(timeout=30)`` returns
(checked after every example that touched the runtime, and after every
test by the ``_alive_afterwards`` fixture).

Deterministic regression tests at the end pin the bugs these properties
found (a lone-surrogate tag crashed the process; huge ints raised
OverflowError; huge time-outs expired at once), each run so that a crash
fails the test instead of the whole session.

Deterministic tests also check that messages name the offending value or
type for representative cases.
"""

from __future__ import annotations

import copy
import functools
import math
import pickle
import struct
import subprocess
import sys
import textwrap

import pytest
from conftest import NO_COPY_ON_THREADS, THREADS_BACKEND, subprocess_env
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from test_faults import (
    BODIES,
    Opaque,
    RefusesPickling,
    _async_function,
    _bad_calls_in_a_behavior,
    _generator_function,
    _inc_return,
    _kwonly_without_default,
    _one_param,
    _returns_removed,
    _returns_unpicklable,
    _returns_wrapped,
    _sleep_then_return,
)

import bocpy
from bocpy import (
    TIMEOUT,
    Cown,
    PinnedCown,
    PumpResult,
    WaitResult,
    drain,
    notice_delete,
    notice_read,
    notice_seed,
    notice_update,
    notice_write,
    noticeboard,
    pump,
    quiesce,
    receive,
    send,
    set_pump_watchdog,
    set_tags,
    set_wait_pump_poll,
    set_wake_callback,
    wait,
    when,
    whencall,
)

#: What a bad input may raise.  UnicodeEncodeError (a lone surrogate in a
#: key) is a ValueError, KeyError is not allowed except where a mapping's
#: __getitem__ is used.
#: OverflowError: a millisecond bound past the limit (as in the reference).
ALLOWED = (TypeError, ValueError, RuntimeError, OverflowError)

FAST = settings(
    max_examples=500,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FEW = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# ------------------------------------------------------------------ values


CALLABLES_AND_NOT = [
    *BODIES,
    functools.partial(_one_param),
    Opaque().method,
    abs,
    len,
    Opaque,
    5,
    None,
    "not callable",
]

special_ints = st.sampled_from(
    [0, 1, -1, 2, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 2**100, -(2**100), 10**400]
)
special_floats = st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e300, -1e300, 5e-324, -0.0, 0.5, 1e11]
)
special_strs = st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", "x\udfff", "é", "\U0001f980", "k" * 300]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    special_ints,
    st.floats(),
    special_floats,
    st.text(max_size=8),
    special_strs,
    st.binary(max_size=8),
    st.complex_numbers(allow_nan=True),
    st.sampled_from([Opaque(), object(), RefusesPickling("bad input"), Ellipsis, int, type]),
    st.sampled_from(CALLABLES_AND_NOT),
)
values = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.tuples(kids, kids),
        st.dictionaries(st.text(max_size=3), kids, max_size=3),
    ),
    max_leaves=6,
)
cowns = st.one_of(st.builds(Cown, st.integers(-3, 3)), st.builds(PinnedCown, st.integers(-3, 3)))
when_args = st.one_of(cowns, st.lists(cowns, max_size=3), values)
#: Argument lists for @when/whencall: half of them valid cowns and groups.
when_arg_lists = st.one_of(
    st.lists(st.one_of(cowns, st.lists(cowns, max_size=3)), max_size=3),
    st.lists(when_args, max_size=3),
)
str_tags = st.one_of(st.text(max_size=6), special_strs)
tag_args = st.one_of(str_tags, st.lists(str_tags, max_size=3), st.tuples(str_tags), values)


# ----------------------------------------------------------------- helpers


def call(fn, *args, **kwargs):
    """Call ``fn``; return ``(result, None)`` or ``(None, allowed_exception)``.

    Any other exception propagates (and fails the property).
    """
    try:
        return fn(*args, **kwargs), None
    except ALLOWED as err:
        assert str(err), f"{type(err).__name__} without a message"
        return None, err


def plain(value: object) -> bool:
    """Values whose copy compares equal to the original."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return True
    if isinstance(value, float):
        return not math.isnan(value)
    if isinstance(value, complex):
        return not (math.isnan(value.real) or math.isnan(value.imag))
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(plain(v) for v in value.values())
    return False


def alive(tear_down: bool = False) -> None:
    """A trivial behavior runs; quiesce() (or wait()) returns within 30 s."""
    c = Cown(1)
    r = whencall(_inc_return, [c])  # defined in test_faults: workers cannot import this module
    (wait if tear_down else quiesce)(timeout=30)
    assert r.unwrap() == 2
    assert c.unwrap() == 2


@pytest.fixture(autouse=True)
def _alive_afterwards():
    """Reset the pinned-lane settings; the runtime must not be wedged after the test.

    The closing ``wait()`` also clears the noticeboard (it belongs to the run).
    """
    try:
        yield
    finally:
        set_wake_callback(None)
        set_pump_watchdog(None)
        set_wait_pump_poll(50)
    alive(tear_down=True)


# ---------------------------------------------------------------- cowns


def same_or_inline(got: object, value: object) -> bool:
    """The object itself; or, for a value a cown keeps inline (an exact int
    within 64 bits, a float: rebuilt at each read, see bocpy_cown in
    binding/bocpy.h), an equal object of the same type."""
    if got is value:
        return True
    if type(value) is int and -(2**63) <= value < 2**63:
        return type(got) is int and got == value
    if type(value) is float:
        return type(got) is float and struct.pack("<d", got) == struct.pack("<d", value)
    return False


@FAST
@given(value=values)
def test_cown_construction_and_methods(value):
    c, err = call(Cown, value)
    if err is not None:
        assert isinstance(err, TypeError)
        return
    assert c.acquired is False and c.exception is False
    assert isinstance(hash(c), int) and "Cown" in repr(c)
    assert copy.copy(c) is c and copy.deepcopy(c) is c
    # Nobody holds or awaits it: the main thread may read it, not write it.
    assert type(c.value) is type(value)
    with pytest.raises(RuntimeError):
        c.value = value
    with pytest.raises(TypeError):
        del c.value
    with pytest.raises(TypeError):
        pickle.dumps(c)
    with pytest.raises(RuntimeError):
        c.release()
    assert (c == value) is (value is c)
    if not isinstance(value, Cown):
        with pytest.raises(TypeError):
            c < value  # noqa: B015
    with c:
        assert c.acquired is True
        assert same_or_inline(c.value, value)
    assert same_or_inline(c.unwrap(), value)
    with c:
        assert c.value is None


@FAST
@given(value=values, args=st.lists(values, max_size=3))
def test_pinned_cown_and_cown_methods_with_arguments(value, args):
    p = PinnedCown(value)  # any value: it never leaves the main interpreter
    for method in ("acquire", "release", "unwrap"):
        if args:
            with pytest.raises(TypeError):
                getattr(p, method)(*args)
    _, err = call(p.__exit__, *args)
    assert isinstance(err, RuntimeError)  # not held
    with p:
        assert p.value is value
        _, err = call(p.acquire)
        assert isinstance(err, RuntimeError)
    alive()


# --------------------------------------------------------- when / whencall


@FAST
@given(args=when_arg_lists, fn=st.sampled_from(CALLABLES_AND_NOT))
def test_when_decorator(args, fn):
    decorator, err = call(when, *args)
    if err is not None:
        assert isinstance(err, TypeError)
        event("when(...) refused the arguments")
        return
    result, err = call(decorator, fn)
    if err is not None:
        assert isinstance(err, TypeError)
        event("when(...)(fn) refused the function")
    else:
        assert isinstance(result, Cown)
        event("scheduled")
    quiesce(timeout=30)
    if result is not None:
        try:
            result.unwrap()
        except Exception:
            pass
    alive()


@FAST
@given(
    fn=st.sampled_from(CALLABLES_AND_NOT),
    args=st.one_of(when_arg_lists, values),
    captures=st.one_of(st.none(), st.lists(values, max_size=2), values),
)
def test_whencall(fn, args, captures):
    result, err = call(whencall, fn, args, captures)
    if err is not None:
        assert isinstance(err, TypeError)
        event("refused")
    else:
        assert isinstance(result, Cown)
        event("scheduled")
    quiesce(timeout=30)
    if result is not None:
        try:
            result.unwrap()
        except Exception:
            pass
    alive()


# ---------------------------------------------------------------- lifecycle


@FEW
@given(count=st.one_of(values, special_ints, st.integers(-5, 5)))
def test_start(count):
    # A valid large count would start that many sub-interpreters: not a bad input.
    assume(not (isinstance(count, int) and not isinstance(count, bool) and 3 <= count <= 1024))
    _, err = call(bocpy.start, count)
    if err is not None and not isinstance(err, RuntimeError):  # RuntimeError: other count running
        if isinstance(count, int) and not isinstance(count, bool):
            assert isinstance(err, ValueError) and str(count) in str(err)
        elif count is not None:
            assert isinstance(err, TypeError) and type(count).__name__ in str(err)
    alive()


@FEW
@given(
    which=st.sampled_from(["wait", "quiesce"]),
    timeout=st.one_of(values, special_floats, st.floats(0, 0.05)),
    stats=st.one_of(st.booleans(), scalars),
    board=st.one_of(st.booleans(), scalars),
)
def test_wait_and_quiesce(which, timeout, stats, board):
    function = wait if which == "wait" else quiesce
    result, err = call(function, timeout, stats=stats, noticeboard=board)
    if err is None:
        if stats and board:
            assert isinstance(result, WaitResult)
        elif board:
            assert isinstance(result, dict)
        elif stats:
            assert isinstance(result, list) and all(isinstance(d, dict) for d in result)
        else:
            assert result is None
    alive()


@FAST
@given(
    deadline=st.one_of(st.none(), values, special_floats),
    most=st.one_of(st.none(), values, special_ints),
    raise_on_error=scalars,
)
def test_pump(deadline, most, raise_on_error):
    result, err = call(pump, deadline, most, raise_on_error)
    if err is None:
        assert isinstance(result, PumpResult)
        assert result.executed >= 0 and result.raised >= 0


@FAST
@given(
    warn=st.one_of(st.none(), values, special_floats), on_starve=st.sampled_from(CALLABLES_AND_NOT)
)
def test_set_pump_watchdog(warn, on_starve):
    try:
        call(set_pump_watchdog, warn, on_starve)
    finally:
        set_pump_watchdog(None)


@FAST
@given(ms=st.one_of(values, special_ints, st.integers(-5, 70000)))
def test_set_wait_pump_poll(ms):
    try:
        _, err = call(set_wait_pump_poll, ms)
        if isinstance(ms, int) and not isinstance(ms, bool):
            assert (err is None) == (ms >= 1)
    finally:
        set_wait_pump_poll(50)


@FAST
@given(callback=st.one_of(st.sampled_from(CALLABLES_AND_NOT), values))
def test_set_wake_callback(callback):
    try:
        _, err = call(set_wake_callback, callback)
        assert (err is None) == (callback is None or callable(callback))
    finally:
        set_wake_callback(None)


# ---------------------------------------------------------------- noticeboard


@FAST
@given(key=st.one_of(str_tags, values), value=values)
def test_notice_write_seed_delete_read(key, value):
    bocpy.start()  # notice_write needs a run (notice_seed does not)
    _, err = call(notice_seed, key, value)
    if err is None:
        if plain(value):
            assert notice_read(key) == value
        assert key in noticeboard()
    _, err_write = call(notice_write, key, value)
    assert (err_write is None) == (err is None)
    _, err = call(notice_delete, key)
    sentinel = object()
    got, err_read = call(notice_read, key, sentinel)
    if err_read is None:
        assert got is sentinel
    view = noticeboard()
    _, err_get = call(view.get, key)
    assert err_get is None  # a view is a Mapping: an invalid key is just absent
    if isinstance(key, str) and err_read is None:
        with pytest.raises(KeyError):
            view[key]
    assert isinstance(len(view), int) and isinstance(view.to_dict(), dict)
    _, err_in = call(view.__contains__, key)
    assert err_in is None or isinstance(key, str)


UPDATE_FUNCTIONS = [
    lambda x: x,
    lambda *a: len(a),
    lambda: 1,
    _one_param,
    _returns_removed,
    _returns_unpicklable,
    _returns_wrapped,
    functools.partial(_one_param),
    abs,
    5,
    None,
    "not callable",
]


@FAST
@given(
    key=st.one_of(str_tags, values),
    fn=st.sampled_from(UPDATE_FUNCTIONS),
    default=values,
    seed=st.one_of(st.none(), st.integers()),
)
def test_notice_update(key, fn, default, seed):
    bocpy.start()  # notice_update and notice_delete need a run
    if seed is not None:
        call(notice_seed, key, seed)
    call(notice_update, key, fn, default)
    call(notice_delete, key)
    alive()


@FAST
@given(args=st.lists(values, min_size=1, max_size=2))
def test_noticeboard_takes_no_arguments(args):
    with pytest.raises(TypeError):
        noticeboard(*args)


# ------------------------------------------------------------------ messaging

_SEEN_TAGS: set[str] = set()


def _forget_tags() -> None:
    if _SEEN_TAGS:
        drain(sorted(_SEEN_TAGS))
        _SEEN_TAGS.clear()


@FAST
@given(tag=st.one_of(str_tags, values), contents=values)
def test_send_and_receive(tag, contents):
    _, err = call(send, tag, contents)
    if err is None:
        _SEEN_TAGS.add(tag)
        got = receive(tag, timeout=0)
        assert isinstance(got, list) and got[0] == tag
        if plain(contents):
            assert got[1] == contents
            assert type(got[1]) is type(contents)
    _forget_tags()


@FAST
@given(
    tags=tag_args,
    timeout=st.one_of(st.just(0), st.floats(0, 0.01), values),
    after=st.one_of(st.none(), st.sampled_from(CALLABLES_AND_NOT)),
)
def test_receive_with_bad_arguments(tags, timeout, after):
    # A negative or infinite (or None) time-out blocks until a message comes:
    # that is not a bad input, and would hang the test.
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    assume(timeout is not None and not (number and (timeout < 0 or timeout > 0.01)))
    assume(not (isinstance(timeout, bool) and timeout))
    result, err = call(receive, tags, timeout, after)
    if err is None and after is None:
        assert result == (TIMEOUT, None)


@FAST
@given(tags=tag_args, which=st.sampled_from(["drain", "set_tags"]))
def test_drain_and_set_tags(tags, which):
    _, err = call(drain if which == "drain" else set_tags, tags)
    if err is not None and isinstance(tags, (list, tuple)) and not tags:
        assert isinstance(err, ValueError)


# ------------------------------------------ bad input inside behaviors


@FEW
@given(
    bad=st.one_of(
        st.integers(-(2**62), 2**62),
        st.floats(),
        st.none(),
        st.binary(max_size=4),
        st.sampled_from([Opaque(), [1], {"a": 1}]),
    )
)
def test_bad_calls_inside_a_behavior_raise_there_and_the_behavior_finishes(bad):
    c = Cown(0)
    r = whencall(_bad_calls_in_a_behavior, [c], [bad])
    quiesce(timeout=30)
    outcomes = r.unwrap()  # raises if anything other than the allowed types escaped
    assert set(outcomes) >= {"send", "wait", "start", "PinnedCown"}
    # Lifecycle and main-thread-only functions are refused inside a behavior.
    for name in ("wait", "quiesce", "pump", "start", "notice_seed", "set_tags", "PinnedCown"):
        assert outcomes[name] in ("RuntimeError", "TypeError", "ValueError"), (name, outcomes)
    assert c.unwrap() == 1


# ------------------------------------------------- messages name the culprit


@pytest.mark.parametrize(
    "attempt, error, names",
    [
        (lambda: when(5), TypeError, ["int", "5"]),
        (lambda: when([Cown(1), "x"]), TypeError, ["str", "item 1"]),
        (lambda: whencall(abs, []), TypeError, ["builtin_function_or_method"]),
        (lambda: whencall(_one_param, [Cown(1)], "abc"), TypeError, ["str"]),
        (lambda: whencall(_one_param, {"a": 1}), TypeError, ["dict"]),
        (lambda: when()(_one_param), TypeError, ["_one_param"]),
        (lambda: when(Cown(1))(_kwonly_without_default), TypeError, ["_kwonly_without_default"]),
        (
            lambda: when(Cown(1))(_generator_function),
            TypeError,
            ["_generator_function", "generator"],
        ),
        (lambda: when(Cown(1))(_async_function), TypeError, ["_async_function", "async"]),
        pytest.param(
            lambda: Cown(RefusesPickling("bad input")),
            TypeError,
            ["RefusesPickling"],
            marks=pytest.mark.skipif(THREADS_BACKEND, reason=NO_COPY_ON_THREADS),
        ),
        (lambda: bocpy.start(0), ValueError, ["0"]),
        (lambda: bocpy.start("two"), TypeError, ["str"]),
        (lambda: wait(timeout=-1), ValueError, ["-1"]),
        (lambda: quiesce(timeout=math.nan), ValueError, ["nan"]),
        (lambda: wait(timeout="soon"), TypeError, ["str"]),
        (lambda: pump(deadline_ms="soon"), TypeError, ["str", "deadline_ms"]),
        (lambda: pump(max_behaviors=-3), TypeError, ["-3", "max_behaviors"]),
        (lambda: pump(max_behaviors=1.5), TypeError, ["float", "max_behaviors"]),
        (lambda: set_wait_pump_poll(0), TypeError, ["0"]),
        (lambda: set_wait_pump_poll(2.5), TypeError, ["float"]),
        (lambda: set_pump_watchdog(-5), TypeError, ["-5", "warn_ms"]),
        (lambda: set_pump_watchdog(100, 5), TypeError, ["int", "on_starve"]),
        (lambda: set_wake_callback(5), TypeError, ["int"]),
        (lambda: notice_write(7, 1), TypeError, ["int", "7"]),
        (lambda: notice_write("k", RefusesPickling("bad input")), TypeError, ["RefusesPickling"]),
        (lambda: notice_update("k", 5), TypeError, ["int"]),
        (lambda: notice_read(b"k"), TypeError, ["bytes"]),
        (lambda: send(b"t", 1), TypeError, ["bytes"]),
        (lambda: send("t", RefusesPickling("bad input")), TypeError, ["RefusesPickling"]),
        (lambda: receive(["t", 5], timeout=0), TypeError, ["int"]),
        (lambda: receive("t", timeout="x"), TypeError, ["str"]),
        (lambda: receive("t", timeout=0, after=5), TypeError, ["int"]),
        (lambda: receive([], timeout=0), RuntimeError, ["at least one"]),
        (lambda: notice_write("k\0", 1), ValueError, ["NUL", "k\\x00"]),
        (lambda: set_tags(7), TypeError, ["int"]),
    ],
    ids=lambda value: None,
)
def test_messages_name_the_offending_value_or_type(attempt, error, names):
    bocpy.start()  # so that notice_write gets as far as its arguments
    with pytest.raises(error) as info:
        attempt()
    for name in names:
        assert name in str(info.value), f"{name!r} not in {str(info.value)!r}"


# ------------------------------------------------------- regression tests
#
# Bugs the properties above found.  Each is pinned here deterministically.


@pytest.mark.parametrize(
    "call_source", ['receive("\\ud800", timeout=0)', 'drain("\\ud800")', 'set_tags("\\ud800")']
)
def test_lone_surrogate_tag_does_not_crash(call_source, tmp_path):
    """A single str tag with a lone surrogate used to crash (SIGSEGV) the process.

    Run in a subprocess so that a regression fails this test, not the session.
    """
    script = tmp_path / "surrogate.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from bocpy import receive, drain, set_tags
            try:
                {call_source}
                print("worked")
            except ValueError as err:
                print("ValueError", type(err).__name__)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"crashed with return code {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.split()[0] in ("worked", "ValueError")


@pytest.mark.parametrize(
    "attempt",
    [
        lambda: bocpy.start(2**64),
        lambda: bocpy.start(-(2**64)),
        lambda: wait(timeout=10**400),
        lambda: quiesce(timeout=10**400),
        lambda: receive("t", timeout=10**400),
    ],
    ids=[
        "start",
        "start-negative",
        "wait",
        "quiesce",
        "receive",
    ],
)
def test_huge_int_is_a_value_error_naming_it(attempt):
    """Ints too large for C used to raise OverflowError (and wait() said "not 'int'")."""
    try:
        with pytest.raises(ValueError) as info:
            attempt()
        assert "18446744073709551616" in str(info.value) or "1000000000" in str(info.value)
        assert "not 'int'" not in str(info.value)
    finally:
        set_wait_pump_poll(50)
        set_pump_watchdog(None)


@pytest.mark.parametrize(
    "attempt",
    [lambda: pump(deadline_ms=10**400), lambda: set_pump_watchdog(10**400)],
    ids=["pump-deadline", "set_pump_watchdog"],
)
def test_huge_millisecond_bound_is_an_overflow_error_naming_it(attempt):
    """As in the reference: past the millisecond limit is an OverflowError."""
    try:
        with pytest.raises(OverflowError) as info:
            attempt()
        assert "1000000000" in str(info.value) and "milliseconds" in str(info.value)
    finally:
        set_pump_watchdog(None)


def test_huge_counts_are_no_bound():
    """A count too large for C bounds nothing (the reference takes any int)."""
    try:
        assert pump(max_behaviors=10**400).executed == 0
        set_wait_pump_poll(2**64)
    finally:
        set_wait_pump_poll(50)


@pytest.mark.parametrize("which", ["wait", "quiesce"])
@pytest.mark.parametrize("timeout", [1e11, 1e300, 2**70])
def test_a_very_long_timeout_still_waits(which, timeout):
    """A finite time-out above ~1.8e10 s used to overflow and expire at once."""
    r = whencall(_sleep_then_return, [], [0.3])
    try:
        (wait if which == "wait" else quiesce)(timeout=timeout)
    finally:
        wait(timeout=30)
    assert r.unwrap() == "slept"
