"""The noticeboard: notice_write/delete/update/seed/read, noticeboard() views.

The board is process-wide and outlives every runtime, so each test uses keys
with its own prefix (``key(...)``) and the autouse ``_clean_board`` fixture
deletes, after the test's behaviors have run, every key the test added.

Semantics under test (see API.md, "Noticeboard"):

* writes and deletes commit synchronously, in the order the calling thread
  makes them; ``notice_update`` is an atomic read-modify-write whose function
  runs in the caller;
* inside a behavior every read sees one snapshot, fixed at the behavior's
  first read, for the whole body -- no read-your-writes; on the main thread
  outside behaviors each read sees the board as it is now;
* keys are ``str``; values must be picklable and may hold cowns, which the
  board keeps alive.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import threading
import time

import pytest

import bocpy
from bocpy import (
    REMOVED,
    Cown,
    PinnedCown,
    WaitResult,
    notice_delete,
    notice_read,
    notice_seed,
    notice_update,
    notice_write,
    noticeboard,
    quiesce,
    receive,
    send,
    when,
)

#: Seconds a behavior waits for the test before giving up (so nothing hangs).
PATIENCE = 30


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


def add(amount, value):
    """``notice_update`` function: add ``amount`` (module level, picklable)."""
    return value + amount


def add_one(value):
    return value + 1


def increment_many(key: str, times: int) -> None:
    """Increment ``key`` ``times`` times with ``notice_update``."""
    for _ in range(times):
        notice_update(key, add_one, 0)


def run_with_limit(fn, limit: float = 10.0):
    """Run ``fn()`` on a thread; fail (instead of hanging) if it does not finish."""
    outcome: list = []

    def target():
        try:
            outcome.append(("ok", fn()))
        except BaseException as err:
            outcome.append(("raised", err))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"call still blocked after {limit}s (board lock leaked?)"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


@pytest.fixture(autouse=True)
def _fresh_run():
    """Run each test in a fresh run of two workers, then end it.

    The board belongs to a run: ``wait()`` clears it, so every test starts
    with an empty board, and the main thread may write because a runtime
    runs.  A test about other worker counts, or about the board with no
    runtime, calls ``bocpy.wait()`` first.
    """
    bocpy.wait(timeout=60)
    bocpy.start(2)
    yield
    bocpy.wait(timeout=60)


@pytest.fixture
def key(request):
    """Key factory: ``key("x")`` -> a key unique to this test."""
    prefix = f"{request.node.name}:"
    return lambda name: prefix + name


# ------------------------------------------------------------ basic access


def test_write_then_read_on_the_main_thread(key):
    notice_write(key("a"), 1)
    notice_write(key("b"), [1, 2])
    assert notice_read(key("a")) == 1
    assert notice_read(key("b")) == [1, 2]
    assert noticeboard()[key("a")] == 1


def test_write_replaces_the_previous_value(key):
    notice_write(key("a"), "first")
    notice_write(key("a"), "second")
    assert notice_read(key("a")) == "second"


def test_notice_read_default_for_a_missing_key(key):
    assert notice_read(key("missing")) is None
    assert notice_read(key("missing"), 42) == 42
    sentinel = object()
    assert notice_read(key("missing"), sentinel) is sentinel


def test_delete_removes_the_key(key):
    notice_write(key("a"), 1)
    notice_delete(key("a"))
    assert notice_read(key("a"), "gone") == "gone"
    assert key("a") not in noticeboard()


def test_deleting_a_missing_key_is_a_no_op(key):
    notice_delete(key("never"))
    assert key("never") not in noticeboard()


def test_write_after_delete_brings_the_key_back(key):
    notice_write(key("a"), 1)
    notice_delete(key("a"))
    notice_write(key("a"), 2)
    assert notice_read(key("a")) == 2


def test_write_and_delete_return_none_at_once(key):
    assert notice_write(key("a"), 1) is None
    assert notice_delete(key("a")) is None
    assert notice_update(key("a"), add_one, 0) is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -(2**80),
        2.5,
        "text ✓",
        b"\x00b",
        (1, (2,)),
        [1, [2]],
        {"a": {1}},
        frozenset({1}),
        Point(1, 2),
    ],
    ids=repr,
)
def test_values_keep_their_type_on_the_main_thread(key, value):
    notice_write(key("v"), value)
    got = notice_read(key("v"))
    assert got == value
    assert type(got) is type(value)


def test_values_keep_their_type_in_a_behavior(key):
    values = {"t": (1, 2), "l": [1, 2], "d": {"k": (3,)}, "p": Point(3, 4), "n": None}
    for name, value in values.items():
        notice_write(key(name), value)

    @when()
    def read(names=tuple(values), prefix=key("")):
        return {n: (notice_read(prefix + n), type(notice_read(prefix + n)).__name__) for n in names}

    bocpy.wait(timeout=60)
    got = read.unwrap()
    for name, value in values.items():
        assert got[name] == (value, type(value).__name__)


def test_writes_to_one_key_commit_in_program_order(key):
    @when()
    def writer(k=key("seq")):
        for i in range(1000):
            notice_write(k, i)
        notice_delete(k)
        notice_write(k, "last")

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert board[key("seq")] == "last"


# ---------------------------------------------------------------- key types


@pytest.mark.parametrize("bad", [5, b"k", None, ("k",), 1.5], ids=repr)
def test_non_str_keys_are_rejected_by_every_function(bad):
    before = noticeboard().to_dict()
    calls = [
        lambda: notice_write(bad, 1),
        lambda: notice_delete(bad),
        lambda: notice_update(bad, add_one, 0),
        lambda: notice_read(bad),
        lambda: notice_read(bad, 0),
        lambda: notice_seed(bad, 1),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="noticeboard key must be a str"):
            call()
    assert noticeboard().to_dict() == before


@pytest.mark.parametrize("bad", [5, b"k", None, ("k",), 1.5], ids=repr)
def test_a_view_treats_non_str_keys_as_absent_like_a_mapping(bad):
    """A view is a Mapping of str keys: anything else is simply not there."""
    view = noticeboard()
    assert bad not in view
    assert view.get(bad) is None and view.get(bad, 7) == 7
    with pytest.raises(KeyError):
        view[bad]


def test_keys_with_an_embedded_nul_are_refused_everywhere(key):
    """The reference refuses "\0" in keys (ValueError); so do we."""
    bad = key("a") + "\0b"
    calls = [
        lambda: notice_write(bad, 1),
        lambda: notice_delete(bad),
        lambda: notice_update(bad, add_one, 0),
        lambda: notice_read(bad),
        lambda: notice_seed(bad, 1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="NUL"):
            call()
    assert bad not in noticeboard()


def test_non_str_key_is_rejected_before_the_update_function_runs():
    called = []
    with pytest.raises(TypeError):
        notice_update(7, lambda v: called.append(v))
    assert called == []


def test_non_str_key_in_a_behavior_is_a_type_error_on_its_result():
    @when()
    def bad():
        notice_write(3, "x")

    bocpy.wait(timeout=60)
    with pytest.raises(TypeError):
        bad.unwrap()


# --------------------------------------------------------- unpicklable values


def test_unpicklable_value_is_a_type_error_at_notice_write(key):
    notice_write(key("a"), "kept")
    with pytest.raises(TypeError):
        notice_write(key("a"), threading.Lock())
    with pytest.raises(TypeError):
        notice_write(key("b"), [1, Unpicklable()])
    assert notice_read(key("a")) == "kept"
    assert key("b") not in noticeboard()


def test_unpicklable_value_in_a_behavior_is_a_type_error_on_its_result(key):
    @when()
    def bad(k=key("a")):
        notice_write(k, Unpicklable())

    @when()
    def good(k=key("b")):
        notice_write(k, "fine")

    board = bocpy.wait(timeout=60, noticeboard=True)
    with pytest.raises(TypeError):
        bad.unwrap()
    assert key("a") not in board
    assert board[key("b")] == "fine"


# ------------------------------------------------------------- notice_update


def test_update_uses_the_default_for_a_missing_key(key):
    notice_update(key("n"), add_one, 41)
    assert notice_read(key("n")) == 42


def test_update_default_default_is_none(key):
    seen = []
    notice_update(key("n"), lambda v: seen.append(v) or "set")
    assert seen == [None]
    assert notice_read(key("n")) == "set"


def test_update_sees_the_current_value(key):
    notice_write(key("n"), 10)
    notice_update(key("n"), add_one, 0)
    assert notice_read(key("n")) == 11


def test_update_accepts_lambdas_partials_and_callable_objects(key):
    class Doubler:
        def __call__(self, v):
            return 2 * v

    notice_update(key("n"), lambda v: v + 1, 0)
    notice_update(key("n"), functools.partial(add, 10))
    notice_update(key("n"), Doubler())
    assert notice_read(key("n")) == 22


def test_update_function_runs_in_the_caller(key):
    """Not a copy somewhere else: it mutates the caller's objects, on its thread."""
    calls = []

    def fn(value):
        calls.append((value, threading.get_ident()))
        return "new"

    notice_write(key("n"), "old")
    notice_update(key("n"), fn)
    assert calls == [("old", threading.get_ident())]


def test_update_returning_removed_deletes_the_key(key):
    notice_write(key("n"), 1)
    notice_update(key("n"), lambda v: REMOVED)
    assert key("n") not in noticeboard()
    assert notice_read(key("n"), "gone") == "gone"


def test_update_returning_removed_for_a_missing_key_leaves_it_missing(key):
    notice_update(key("n"), lambda v: REMOVED, 5)
    assert key("n") not in noticeboard()


def test_update_returning_removed_in_a_behavior_deletes_the_key(key):
    notice_write(key("n"), 1)
    notice_write(key("m"), 1)

    @when()
    def remove(k=key("n")):
        notice_update(k, lambda v: REMOVED)

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert key("n") not in board
    assert board[key("m")] == 1


def test_update_function_raising_propagates_and_leaves_the_value(key):
    notice_write(key("n"), 1)

    def boom(value):
        raise ZeroDivisionError("from fn")

    with pytest.raises(ZeroDivisionError, match="from fn"):
        notice_update(key("n"), boom)
    assert notice_read(key("n")) == 1
    # The board's lock was released: the next write goes through.
    run_with_limit(lambda: notice_write(key("n"), 2))
    assert run_with_limit(lambda: notice_read(key("n"))) == 2


def test_update_function_raising_in_a_behavior_lands_on_its_result(key):
    notice_write(key("n"), 1)

    @when()
    def bad(k=key("n")):
        notice_update(k, lambda v: v["missing"])

    @when()
    def later(k=key("m")):
        notice_write(k, "still works")

    board = bocpy.wait(timeout=60, noticeboard=True)
    with pytest.raises(TypeError):
        bad.unwrap()
    assert board[key("n")] == 1
    assert board[key("m")] == "still works"


def test_update_returning_an_unpicklable_value_is_a_type_error(key):
    notice_write(key("n"), 1)
    with pytest.raises(TypeError):
        notice_update(key("n"), lambda v: threading.Lock())
    assert notice_read(key("n")) == 1
    run_with_limit(lambda: notice_write(key("n"), 3))
    assert notice_read(key("n")) == 3


def test_update_needs_a_callable(key):
    with pytest.raises(TypeError):
        notice_update(key("n"), 5)
    assert key("n") not in noticeboard()


@pytest.mark.parametrize(
    "inner",
    [
        lambda k: notice_write(k + "x", 1),
        lambda k: notice_delete(k),
        lambda k: notice_update(k, add_one, 0),
        lambda k: notice_read(k),
        lambda k: noticeboard(),
        lambda k: notice_seed(k + "x", 1),
    ],
    ids=[
        "notice_write",
        "notice_delete",
        "notice_update",
        "notice_read",
        "noticeboard",
        "notice_seed",
    ],
)
def test_board_calls_inside_an_update_function_are_runtime_errors(key, inner):
    notice_write(key("n"), 1)

    def fn(value):
        inner(key("n"))
        return value + 100

    with pytest.raises(RuntimeError):
        run_with_limit(lambda: notice_update(key("n"), fn))
    assert run_with_limit(lambda: notice_read(key("n"))) == 1
    assert key("nx") not in noticeboard()


def test_board_calls_inside_an_update_function_in_a_behavior_are_runtime_errors(key):
    notice_write(key("n"), 1)

    @when()
    def nested(k=key("n")):
        def fn(value):
            notice_read(k)
            return value + 1

        try:
            notice_update(k, fn)
        except RuntimeError:
            notice_update(k, add_one)  # the board still works afterwards
            return "RuntimeError"
        return "no error"

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert nested.unwrap() == "RuntimeError"
    assert board[key("n")] == 2


def test_concurrent_updates_from_many_behaviors_on_two_workers_are_exact(key):
    bocpy.start(2)
    for _ in range(1000):

        @when(Cown(None))
        def inc(_c, k=key("count")):
            notice_update(k, lambda v: v + 1, 0)

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert board[key("count")] == 1000


def test_concurrent_updates_with_module_level_functions_and_partials_are_exact(key):
    bocpy.start(2)
    cowns = [Cown(i) for i in range(20)]
    for i in range(500):

        @when(cowns[i % 20])
        def inc(_c, k=key("count")):
            notice_update(k, add_one, 0)
            notice_update(k, functools.partial(add, 2), 0)

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert board[key("count")] == 1500


def test_concurrent_updates_from_behaviors_threads_and_main_are_exact(key):
    bocpy.start(2)
    for _ in range(20):

        @when()
        def inc(k=key("count")):
            increment_many(k, 50)

    threads = [threading.Thread(target=increment_many, args=(key("count"), 500)) for _ in range(2)]
    for t in threads:
        t.start()
    increment_many(key("count"), 500)
    for t in threads:
        t.join(60)
    board = bocpy.wait(timeout=60, noticeboard=True)
    assert board[key("count")] == 20 * 50 + 2 * 500 + 500


# ---------------------------------------------------------------- notice_seed


def test_seed_is_synchronous_on_the_main_thread(key):
    notice_seed(key("s"), {"x": 1})
    assert notice_read(key("s")) == {"x": 1}


def test_seeded_value_is_visible_to_behaviors(key):
    notice_seed(key("s"), 7)

    @when()
    def read(k=key("s")):
        return notice_read(k)

    bocpy.wait(timeout=60)
    assert read.unwrap() == 7


def test_seed_between_runs(key):
    @when()
    def first(k=key("s")):
        return notice_read(k, "absent")

    bocpy.wait(timeout=60)
    notice_seed(key("s"), "seeded")

    @when()
    def second(k=key("s")):
        return notice_read(k, "absent")

    bocpy.wait(timeout=60)
    assert first.unwrap() == "absent"
    assert second.unwrap() == "seeded"


def test_seed_inside_a_behavior_is_a_runtime_error_on_its_result(key):
    @when()
    def bad(k=key("s")):
        notice_seed(k, 1)

    board = bocpy.wait(timeout=60, noticeboard=True)
    with pytest.raises(RuntimeError):
        bad.unwrap()
    assert key("s") not in board


def test_seed_inside_a_pinned_behavior_is_a_runtime_error_on_its_result(key):
    pc = PinnedCown(0)

    @when(pc)
    def bad(pc, k=key("s")):
        notice_seed(k, 1)

    board = bocpy.wait(timeout=60, noticeboard=True)
    with pytest.raises(RuntimeError):
        bad.unwrap()
    assert key("s") not in board


# ------------------------------------------------------ noticeboard() views


def test_view_is_a_read_only_mapping(key):
    for name, value in [("b", 2), ("a", 1), ("c", 3)]:
        notice_write(key(name), value)
    view = noticeboard()
    mine = [k for k in view if k.startswith(key(""))]
    assert mine == [key("a"), key("b"), key("c")]
    assert view[key("a")] == 1
    assert view.get(key("b")) == 2
    assert view.get(key("zz")) is None
    assert view.get(key("zz"), "d") == "d"
    assert key("c") in view
    assert key("zz") not in view
    with pytest.raises(KeyError):
        view[key("zz")]
    with pytest.raises(TypeError):
        view[key("a")] = 5  # type: ignore[index]
    with pytest.raises(TypeError):
        del view[key("a")]  # type: ignore[attr-defined]
    assert notice_read(key("a")) == 1


def test_view_iterates_sorted_keys_and_agrees_with_its_methods(key):
    for i in (5, 3, 9, 1):
        notice_write(key(f"k{i}"), i * 10)
    view = noticeboard()
    keys = list(view)
    assert keys == sorted(keys)
    assert list(view.keys()) == keys
    assert len(view) == len(keys)
    assert [k for k, _ in view.items()] == keys
    assert list(view.values()) == [v for _, v in view.items()]
    d = view.to_dict()
    assert type(d) is dict
    assert list(d) == keys
    assert {k: v for k, v in d.items() if k.startswith(key(""))} == {
        key("k1"): 10,
        key("k3"): 30,
        key("k5"): 50,
        key("k9"): 90,
    }
    assert key("k9") in repr(view)


def test_len_counts_writes_and_deletes(key):
    base = len(noticeboard())
    for i in range(10):
        notice_write(key(str(i)), i)
    assert len(noticeboard()) == base + 10
    notice_write(key("3"), "again")
    notice_delete(key("4"))
    notice_delete(key("missing"))
    assert len(noticeboard()) == base + 9


def test_main_thread_each_call_sees_the_board_now(key):
    notice_write(key("a"), 1)
    view = noticeboard()
    notice_write(key("a"), 2)
    notice_write(key("new"), "n")
    notice_delete(key("a"))
    notice_write(key("a"), 3)
    assert notice_read(key("a")) == 3
    assert noticeboard()[key("a")] == 3
    assert key("new") in noticeboard()
    # ... while an older view keeps its own snapshot.
    assert view[key("a")] == 1
    assert key("new") not in view


def test_old_view_survives_many_later_commits_by_behaviors(key):
    notice_write(key("a"), "original")
    notice_write(key("gone"), "here")
    view = noticeboard()
    bocpy.start(2)
    for i in range(200):

        @when()
        def churn(k=key("a"), g=key("gone"), i=i):
            notice_write(k, i)
            notice_delete(g)
            notice_write(g, i)

    bocpy.quiesce(timeout=60)
    assert view[key("a")] == "original"
    assert view[key("gone")] == "here"
    assert view.to_dict()[key("a")] == "original"
    assert isinstance(noticeboard()[key("a")], int)
    # wait() clears the board, but not what an older view sees.
    bocpy.wait(timeout=60)
    assert key("a") not in noticeboard()
    assert view[key("a")] == "original" and view[key("gone")] == "here"


# --------------------------------------------------- snapshots in behaviors


def test_behavior_snapshot_is_fixed_at_its_first_read(key):
    """Writes by others and by the behavior itself are invisible to its reads."""
    notice_write(key("k"), "before")
    notice_write(key("doomed"), "alive")
    bocpy.start(2)

    @when()
    def reader(k=key("k"), doomed=key("doomed"), late=key("late"), tag=key("msg")):
        first = notice_read(k)
        send(tag + "ready", None)
        if receive(tag + "go", PATIENCE)[0] != tag + "go":
            return "timed out"
        notice_write(k, "mine")
        view = noticeboard()
        return {
            "first": first,
            "again": notice_read(k),
            "view": view[k],
            "fresh_call": noticeboard()[k],
            "doomed": notice_read(doomed),
            "late": notice_read(late, "absent"),
            "late_in": late in noticeboard(),
        }

    assert receive(key("msg") + "ready", PATIENCE)[0] == key("msg") + "ready"
    for i in range(50):
        notice_write(key("k"), f"main {i}")
    notice_delete(key("doomed"))
    notice_write(key("late"), "late value")
    send(key("msg") + "go", None)
    board = bocpy.wait(timeout=60, noticeboard=True)
    assert reader.unwrap() == {
        "first": "before",
        "again": "before",
        "view": "before",
        "fresh_call": "before",
        "doomed": "alive",
        "late": "absent",
        "late_in": False,
    }
    # The behavior's own write committed after the main thread's.
    assert board[key("k")] == "mine"
    assert key("doomed") not in board


def test_behavior_snapshot_is_consistent_across_keys_under_concurrent_writes(key):
    """A writer always writes k1 then k2; a snapshot never shows k2 ahead of k1.

    Live (non-snapshot) reads of k1 then k2 would, now and then, see a newer
    k2 than k1, because the writer runs in parallel between the two reads.
    """
    bocpy.start(2)
    k1, k2 = key("k1"), key("k2")
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            notice_write(k1, i)
            notice_write(k2, i)

    thread = threading.Thread(target=writer)
    thread.start()
    readers = []
    seen: set[int] = set()
    try:
        # Rounds of readers until they have seen the writer move on (on a
        # loaded machine the writer thread may get little time at first).
        for _ in range(50):
            for _ in range(200):

                @when()
                def reader(k1=k1, k2=k2):
                    a = notice_read(k1, 0)
                    spin = 0
                    for j in range(200):  # give the writer time to move on
                        spin += j
                    b = notice_read(k2, 0)
                    view = noticeboard()
                    return a, b, view.get(k1, 0), view.get(k2, 0)

                readers.append(reader)
            quiesce(timeout=60)
            for r in readers[-200:]:
                with r:
                    if not r.exception:
                        seen.add(r.value[0])
            if len(seen) > 2:
                break
            time.sleep(0.01)  # let the writer thread have the GIL
    finally:
        stop.set()
        thread.join(30)
    bocpy.wait(timeout=60)
    results = [r.unwrap() for r in readers]
    bad = [r for r in results if not (r[1] <= r[0] and r[2] == r[0] and r[3] == r[1])]
    assert bad == []
    assert len({r[0] for r in results}) > 1  # the writer really ran alongside


def test_noticeboard_view_first_in_a_behavior_fixes_the_snapshot_too(key):
    notice_write(key("k"), 1)
    bocpy.start(2)

    @when()
    def reader(k=key("k"), tag=key("msg")):
        view = noticeboard()
        send(tag + "ready", None)
        receive(tag + "go", PATIENCE)
        return view[k], notice_read(k), len(view) == len(noticeboard())

    receive(key("msg") + "ready", PATIENCE)
    notice_write(key("k"), 2)
    notice_write(key("extra"), 0)
    send(key("msg") + "go", None)
    bocpy.wait(timeout=60)
    assert reader.unwrap() == (1, 1, True)


def test_each_behavior_takes_a_fresh_snapshot(key):
    bocpy.wait(timeout=60)
    bocpy.start(1)
    c = Cown(0)
    notice_write(key("k"), 0)
    for _ in range(5):

        @when(c)
        def step(c, k=key("k")):
            seen = notice_read(k)
            notice_write(k, seen + 1)
            c.value += 1
            return seen

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert board[key("k")] == 5


def test_a_behavior_sees_writes_of_behaviors_that_ran_before_it(key):
    c = Cown(None)
    results = []
    for i in range(20):

        @when(c)
        def step(c, k=key("k"), i=i):
            previous = notice_read(k)
            notice_write(k, i)
            return previous

        results.append(step)

    bocpy.wait(timeout=60)
    assert [r.unwrap() for r in results] == [None, *range(19)]


def test_wait_clears_the_board_and_quiesce_keeps_it(key):
    """The board belongs to a run (as in the reference): quiesce() keeps it,
    wait() ends the run and clears it, so the next run starts empty."""

    @when()
    def write(k=key("k")):
        notice_write(k, "from run 1")

    bocpy.quiesce(timeout=60)
    assert notice_read(key("k")) == "from run 1"

    @when()
    def read(k=key("k")):
        return notice_read(k)

    bocpy.wait(timeout=60)
    assert read.unwrap() == "from run 1"
    assert notice_read(key("k")) is None
    assert len(noticeboard()) == 0

    @when()
    def read_again(k=key("k")):
        return notice_read(k, "absent")

    bocpy.wait(timeout=60)
    assert read_again.unwrap() == "absent"


def test_view_kept_by_a_worker_keeps_its_snapshot_after_the_behavior_ends(key):
    bocpy.wait(timeout=60)
    bocpy.start(1)  # one worker: both behaviors run in the same interpreter
    notice_write(key("k"), "old")

    @when()
    def keep(k=key("k")):
        view = noticeboard()
        _KEPT_VIEWS[k] = view
        return view[k]

    quiesce(timeout=60)
    notice_write(key("k"), "new")
    notice_write(key("k"), "newer")
    notice_delete(key("k"))
    notice_write(key("k"), "newest")

    @when()
    def later(k=key("k")):
        return _KEPT_VIEWS.pop(k)[k], notice_read(k)

    bocpy.wait(timeout=60)
    assert keep.unwrap() == "old"
    assert later.unwrap() == ("old", "newest")


#: Views kept across behaviors by the test above (per worker interpreter).
_KEPT_VIEWS: dict = {}


def test_pinned_behavior_snapshot_is_fixed_too(key):
    notice_write(key("k"), "before")
    pc = PinnedCown(0)

    @when(pc)
    def reader(pc, k=key("k")):
        first = notice_read(k)
        writer = threading.Thread(target=notice_write, args=(k, "from thread"))
        writer.start()
        writer.join()
        return first, notice_read(k), noticeboard()[k]

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert reader.unwrap() == ("before", "before", "before")
    assert board[key("k")] == "from thread"


def test_plain_threads_read_the_live_board(key):
    notice_write(key("k"), 1)
    seen = []

    def reader():
        seen.append(notice_read(key("k")))
        notice_write(key("k"), 2)
        seen.append(notice_read(key("k")))
        seen.append(noticeboard()[key("k")])

    thread = threading.Thread(target=reader)
    thread.start()
    thread.join(30)
    assert seen == [1, 2, 2]


# ------------------------------------------------ wait/quiesce(noticeboard=)


def test_wait_returns_the_final_board_as_a_dict(key):
    for i in range(200):

        @when()
        def write(k=key(str(i)), i=i):
            notice_write(k, i * i)

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert type(board) is dict
    assert {k: v for k, v in board.items() if k.startswith(key(""))} == {
        key(str(i)): i * i for i in range(200)
    }


def test_wait_board_reflects_deletes_and_updates_by_behaviors(key):
    notice_write(key("del"), 1)
    notice_write(key("upd"), 1)

    @when()
    def change(d=key("del"), u=key("upd")):
        notice_delete(d)
        notice_update(u, lambda v: v * 10)

    board = bocpy.wait(timeout=60, noticeboard=True)
    assert key("del") not in board
    assert board[key("upd")] == 10


def test_quiesce_returns_the_board_and_leaves_the_runtime_running(key):
    @when()
    def write(k=key("q")):
        notice_write(k, "quiesced")

    board = quiesce(timeout=60, noticeboard=True)
    assert board[key("q")] == "quiesced"

    @when()
    def more(k=key("q2")):
        notice_write(k, "more")

    board = quiesce(timeout=60, noticeboard=True)
    assert board[key("q2")] == "more"


def test_wait_with_stats_and_noticeboard_returns_a_wait_result(key):
    bocpy.wait(timeout=60)
    bocpy.start(1)

    @when()
    def write(k=key("w")):
        notice_write(k, "x")

    result = bocpy.wait(timeout=60, stats=True, noticeboard=True)
    assert isinstance(result, WaitResult)
    stats, board = result
    assert result.stats is stats and result.noticeboard is board
    assert isinstance(stats, list) and len(stats) == 1 and isinstance(stats[0], dict)
    assert board[key("w")] == "x"


def test_quiesce_with_stats_and_noticeboard_returns_a_wait_result(key):
    notice_write(key("w"), 1)
    result = quiesce(timeout=60, stats=True, noticeboard=True)
    assert isinstance(result, WaitResult)
    assert result.noticeboard[key("w")] == 1


def test_wait_board_without_a_runtime_is_the_current_board(key):
    notice_write(key("w"), "now")
    board = bocpy.wait(timeout=60, noticeboard=True)
    assert board[key("w")] == "now"


# ----------------------------------------------------------------- capacity


def test_ten_thousand_entries_written_by_behaviors_are_all_present(key):
    bocpy.start(2)
    for b in range(10):

        @when()
        def write(prefix=key(f"{b}:"), b=b):
            for j in range(1000):
                notice_write(f"{prefix}{j}", (b, j))

    board = bocpy.quiesce(timeout=120, noticeboard=True)
    mine = {k: v for k, v in board.items() if k.startswith(key(""))}
    assert len(mine) == 10_000
    for b in range(10):
        for j in range(1000):
            assert mine[key(f"{b}:{j}")] == (b, j)
    assert len(noticeboard()) >= 10_000
    assert notice_read(key("9:999")) == (9, 999)


def test_large_values_round_trip(key):
    big = bytes(range(256)) * 40_000  # ~10 MB
    notice_write(key("big"), big)

    @when()
    def check(k=key("big")):
        value = notice_read(k)
        return len(value), value[:256] == bytes(range(256))

    bocpy.quiesce(timeout=60)
    assert check.unwrap() == (len(big), True)
    assert notice_read(key("big")) == big


# ----------------------------------------------------------- cowns as values


def test_cown_on_the_board_can_be_scheduled_on_by_a_behavior(key):
    counter = Cown(0)
    notice_write(key("c"), {"counter": counter})
    bocpy.start(2)
    for _ in range(50):

        @when()
        def bump(k=key("c")):
            c = notice_read(k)["counter"]

            @when(c)
            def inc(c):
                c.value += 1

    bocpy.wait(timeout=60)
    assert counter.unwrap() == 50


def test_cown_read_back_is_the_same_cown(key):
    c = Cown("v")
    notice_write(key("c"), c)
    back = notice_read(key("c"))
    assert back == c
    assert hash(back) == hash(c)


def test_board_keeps_a_cown_alive_that_nothing_else_references(key):
    @when()
    def make(k=key("c")):
        notice_write(k, [Cown(["made"])])

    bocpy.quiesce(timeout=60)
    gc.collect()

    @when()
    def use(k=key("c")):
        (c,) = notice_read(k)

        @when(c)
        def append(c):
            c.value.append("used")

    bocpy.quiesce(timeout=60)
    gc.collect()
    (c,) = notice_read(key("c"))
    with c:
        assert c.value == ["made", "used"]


def test_pinned_cown_handle_on_the_board_can_be_scheduled_on_from_a_worker(key):
    pc = PinnedCown([])
    notice_write(key("p"), pc)

    @when()
    def schedule(k=key("p")):
        handle = notice_read(k)

        @when(handle)
        def on_main(handle):
            handle.value.append(threading.current_thread() is threading.main_thread())

    bocpy.wait(timeout=60)
    with pc:
        assert pc.value == [True]


# ------------------------------------------------------------------ example


def test_prime_factor_example_runs_and_verifies(run_script):
    proc = run_script(
        "",
        module="bocpy.examples.prime_factor",
        args=["--n", str(1_000_003 * 1_000_033), "--workers", "2", "--chunk", "2000"],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1000003" in proc.stdout
    assert "worker" in proc.stdout


def test_prime_factor_example_default_run(run_script):
    proc = run_script("", module="bocpy.examples.prime_factor", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout


def test_prime_factor_example_rejects_a_prime(run_script):
    proc = run_script("", module="bocpy.examples.prime_factor", args=["--n", "1000003"], timeout=60)
    assert proc.returncode != 0


def test_notice_seed_refuses_other_threads():
    """notice_seed is the main thread's synchronous write; other threads get a clear error."""
    import threading

    errors: list[BaseException] = []

    def seed_from_thread() -> None:
        try:
            bocpy.notice_seed("seed-from-thread", 1)
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=seed_from_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "main thread" in str(errors[0])
    assert bocpy.notice_read("seed-from-thread") is None
