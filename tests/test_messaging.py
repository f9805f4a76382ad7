"""Messaging: send/receive/drain/set_tags across threads, workers and runtimes.

Queues are process-wide and outlive every runtime, so each test uses tags
with its own prefix (``tag(...)``); the ``tag`` fixture drains them after the
test's behaviors have run.  Behaviors that receive always pass a time-out
(``PATIENCE``) so that a bug makes a test fail instead of hanging; the main
thread uses ``receive_or_fail``, which does the same.

Semantics under test (see API.md, "Messaging"):

* ``send(tag, contents)`` enqueues; ``receive(tags, timeout=-1, after=None)``
  returns ``[tag, contents]``, FIFO per tag, and on time-out ``after()`` or
  ``(TIMEOUT, None)``;
* usable from the main thread, worker behaviors and plain threads; no lost
  wake-ups; contents keep their type (a cown arrives as the same cown);
* tags are ``str``; ``receive([])`` is a ``RuntimeError``, ``drain([])`` does
  nothing (as in the reference);
* ``drain`` discards; ``set_tags`` (main interpreter only) clears every queue,
  ``set_tags([])`` included;
* a receive blocked on the main thread is interruptible by Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import LineReader

import bocpy
from bocpy import TIMEOUT, Cown, PinnedCown, drain, receive, send, set_tags, when

#: Seconds any receive in a test waits before the test gives up on it.
PATIENCE = 30.0


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Unpicklable:
    def __reduce__(self):
        raise TypeError("Unpicklable refuses to be pickled")


def receive_or_fail(tags, timeout: float = PATIENCE):
    """``receive`` that fails the test instead of blocking forever."""
    message = receive(tags, timeout)
    assert message[0] != TIMEOUT, f"no message on {tags!r} within {timeout}s"
    return message


def assert_empty(tags) -> None:
    assert receive(tags, 0) == (TIMEOUT, None)


def produce(tag: str, producer: int, count: int) -> None:
    """Send ``count`` messages ``(producer, seq)`` to ``tag``."""
    for seq in range(count):
        send(tag, (producer, seq))


def consume_until_stop(work: str, stop: str, out: str) -> int:
    """Receive from ``work`` until ``stop``; report each item to ``out``."""
    seen = 0
    while True:
        tag, item = receive([stop, work], PATIENCE)
        if tag != work:
            return seen if tag == stop else -1
        send(out, item)
        seen += 1


@pytest.fixture
def tag(request):
    """Tag factory: ``tag("x")`` -> a tag unique to this test; drained afterwards."""
    prefix = f"{request.node.name}:"
    made: set[str] = set()

    def make(name: str) -> str:
        made.add(prefix + name)
        return prefix + name

    yield make
    bocpy.wait(timeout=60)
    if made:
        drain(sorted(made))


# ------------------------------------------------------------------- basics


def test_send_then_receive_returns_a_tag_contents_list(tag):
    send(tag("a"), 42)
    message = receive(tag("a"))
    assert message == [tag("a"), 42]
    assert type(message) is list


def test_send_returns_none(tag):
    assert send(tag("a"), 1) is None


def test_fifo_per_tag(tag):
    for i in range(1000):
        send(tag("a"), i)
    assert [receive(tag("a"))[1] for _ in range(1000)] == list(range(1000))
    assert_empty(tag("a"))


def test_interleaved_tags_keep_their_own_order(tag):
    for i in range(100):
        send(tag("a"), ("a", i))
        send(tag("b"), ("b", i))
    got = {"a": [], "b": []}
    for _ in range(200):
        t, (name, i) = receive([tag("a"), tag("b")])
        assert t == tag(name)
        got[name].append(i)
    assert got == {"a": list(range(100)), "b": list(range(100))}


def test_receive_only_takes_the_requested_tags(tag):
    send(tag("other"), "not for you")
    send(tag("mine"), "yours")
    assert receive(tag("mine")) == [tag("mine"), "yours"]
    assert_empty(tag("mine"))
    assert receive(tag("other"), 0) == [tag("other"), "not for you"]


def test_a_str_is_one_tag_not_a_sequence_of_characters(tag):
    t = tag("abc")
    send(t[0], "first char")  # a one-letter tag, shared with nothing else here
    try:
        assert receive(t, 0) == (TIMEOUT, None)
    finally:
        drain(t[0])


def test_receive_accepts_a_list_or_a_tuple_of_tags(tag):
    send(tag("b"), 1)
    assert receive([tag("a"), tag("b")]) == [tag("b"), 1]
    send(tag("a"), 2)
    assert receive((tag("a"), tag("b"))) == [tag("a"), 2]


def test_a_message_is_delivered_once(tag):
    send(tag("a"), "only")
    assert receive(tag("a"), 0) == [tag("a"), "only"]
    assert receive(tag("a"), 0) == (TIMEOUT, None)


# ----------------------------------------------------------------- time-outs


def test_timeout_returns_the_timeout_pair(tag):
    began = time.monotonic()
    result = receive(tag("never"), 0.2)
    elapsed = time.monotonic() - began
    assert result == (TIMEOUT, None)
    assert result[0] == TIMEOUT
    assert elapsed >= 0.19  # it did wait (not a performance bound)


def test_timeout_zero_polls(tag):
    assert receive(tag("a"), 0) == (TIMEOUT, None)
    send(tag("a"), "here")
    assert receive(tag("a"), 0) == [tag("a"), "here"]


def test_timeout_calls_after_and_returns_its_result(tag):
    calls = []

    def after():
        calls.append(1)
        return "after result"

    assert receive(tag("a"), 0.05, after) == "after result"
    assert receive(tag("a"), timeout=0, after=lambda: ["custom", 1]) == ["custom", 1]
    assert calls == [1]


def test_after_is_not_called_when_a_message_arrives(tag):
    send(tag("a"), 1)
    calls = []
    assert receive(tag("a"), 1, lambda: calls.append(1)) == [tag("a"), 1]
    assert calls == []


def test_after_raising_propagates(tag):
    def after():
        raise LookupError("after failed")

    with pytest.raises(LookupError, match="after failed"):
        receive(tag("a"), 0, after)


def test_timeout_constant_is_a_str():
    assert isinstance(TIMEOUT, str)


@pytest.mark.parametrize("timeout", [-1, -5, -math.inf], ids=repr)
def test_negative_timeout_blocks_until_a_message(tag, timeout):
    timer = threading.Timer(0.3, send, args=(tag("a"), "late"))
    timer.start()
    try:
        assert receive(tag("a"), timeout) == [tag("a"), "late"]
    finally:
        timer.join()


def test_timeout_waits_for_a_message_that_arrives_in_time(tag):
    timer = threading.Timer(0.2, send, args=(tag("a"), "in time"))
    timer.start()
    try:
        assert receive(tag("a"), PATIENCE) == [tag("a"), "in time"]
    finally:
        timer.join()


@pytest.mark.parametrize("timeout", [math.inf, 1e12, 1.8e10, 1e10], ids=repr)
def test_huge_timeout_waits_for_the_message(tag, timeout):
    timer = threading.Timer(0.3, send, args=(tag("a"), "late"))
    timer.start()
    try:
        assert receive(tag("a"), timeout) == [tag("a"), "late"]
    finally:
        timer.join()
        drain(tag("a"))


# ------------------------------------------------------------------ contents


@pytest.mark.parametrize(
    "contents",
    [
        None,
        0,
        -(2**90),
        1.5,
        "str ✓",
        b"\x00bytes",
        bytearray(b"ba"),
        [1, [2, 3]],
        (1, (2, 3)),
        {"k": [1, (2,)]},
        {1, 2},
        frozenset({3}),
        Point(1, 2),
        [],
        (),
    ],
    ids=repr,
)
def test_contents_keep_their_type(tag, contents):
    send(tag("a"), contents)
    _, got = receive(tag("a"))
    assert got == contents
    assert type(got) is type(contents)


def test_contents_are_copies(tag):
    payload = [1, 2]
    send(tag("a"), payload)
    payload.append(3)
    assert receive(tag("a"))[1] == [1, 2]


def test_contents_keep_their_type_through_a_worker(tag):
    send(tag("in"), ([1, 2], (3, 4), {"d": {5}}, Point(6, 7)))

    @when()
    def echo(t_in=tag("in"), t_out=tag("out")):
        _, contents = receive(t_in, PATIENCE)
        send(t_out, [type(x).__name__ for x in contents])
        send(t_out, contents)

    assert receive_or_fail(tag("out"))[1] == ["list", "tuple", "dict", "Point"]
    _, got = receive_or_fail(tag("out"))
    assert type(got) is tuple
    assert got == ([1, 2], (3, 4), {"d": {5}}, Point(6, 7))
    assert [type(x) for x in got] == [list, tuple, dict, Point]


def test_unpicklable_contents_are_a_type_error_at_send(tag):
    with pytest.raises(TypeError):
        send(tag("a"), threading.Lock())
    with pytest.raises(TypeError):
        send(tag("a"), [1, Unpicklable()])
    assert_empty(tag("a"))


def test_unpicklable_contents_in_a_behavior_are_a_type_error_on_its_result(tag):
    @when()
    def bad(t=tag("a")):
        send(t, Unpicklable())

    bocpy.wait(timeout=60)
    with pytest.raises(TypeError):
        bad.unwrap()
    assert_empty(tag("a"))


def test_a_cown_arrives_as_the_same_cown(tag):
    c = Cown(10)
    send(tag("a"), c)
    _, got = receive(tag("a"))
    assert isinstance(got, Cown)
    assert got == c
    assert hash(got) == hash(c)

    @when(got)
    def inc(got):
        got.value += 1

    bocpy.wait(timeout=60)
    assert c.unwrap() == 11


def test_a_cown_sent_by_a_behavior_is_the_same_cown(tag):
    c = Cown([])

    @when()
    def sender(t=tag("a"), c=c):
        send(t, {"cown": c})

    _, got = receive_or_fail(tag("a"))
    assert got["cown"] == c

    @when(got["cown"])
    def append(x):
        x.value.append("from main's copy")

    bocpy.wait(timeout=60)
    assert c.unwrap() == ["from main's copy"]


def test_a_queued_message_keeps_its_cown_alive(tag):
    import gc

    c = Cown("kept")
    cid = c._id
    send(tag("a"), c)
    del c
    gc.collect()
    _, got = receive(tag("a"))
    assert got._id == cid
    with got:
        assert got.value == "kept"


def test_a_cown_received_in_a_behavior_can_be_scheduled_on(tag):
    counter = Cown(0)
    bocpy.start(2)

    @when()
    def receiver(t=tag("a")):
        for _ in range(10):
            kind, c = receive(t, PATIENCE)
            if kind != t:
                return "timed out"

            @when(c)
            def inc(c):
                c.value += 1

        return "ok"

    for _ in range(10):
        send(tag("a"), counter)
    bocpy.wait(timeout=60)
    assert receiver.unwrap() == "ok"
    assert counter.unwrap() == 10


def test_a_pinned_cown_handle_can_travel_by_message(tag):
    pc = PinnedCown([])
    send(tag("a"), pc)

    @when()
    def schedule(t=tag("a")):
        kind, handle = receive(t, PATIENCE)

        @when(handle)
        def on_main(handle):
            handle.value.append(threading.current_thread() is threading.main_thread())

        return kind

    bocpy.wait(timeout=60)
    assert schedule.unwrap() == tag("a")
    with pc:
        assert pc.value == [True]


# ---------------------------------------------------------------- tag types


@pytest.mark.parametrize("bad", [5, b"t", None, 1.0, object()], ids=repr)
def test_non_str_tag_is_a_type_error_for_send(bad):
    with pytest.raises(TypeError):
        send(bad, 1)


@pytest.mark.parametrize("bad", [5, b"t", None, [5], ["ok", 5], ("ok", b"t")], ids=repr)
@pytest.mark.parametrize("function", ["receive", "drain", "set_tags"])
def test_non_str_tags_are_a_type_error(bad, function):
    call = {
        "receive": lambda: receive(bad, 0),
        "drain": lambda: drain(bad),
        "set_tags": lambda: set_tags(bad),
    }[function]
    with pytest.raises(TypeError):
        call()


@pytest.mark.parametrize("empty", [[], ()], ids=repr)
def test_receive_with_no_tags_is_a_runtime_error(empty):
    with pytest.raises(RuntimeError, match="at least one tag"):
        receive(empty, 0)
    with pytest.raises(RuntimeError, match="at least one tag"):
        receive(empty)  # would otherwise block forever


@pytest.mark.parametrize("empty", [[], ()], ids=repr)
def test_drain_of_no_tags_does_nothing(empty, tag):
    send(tag("a"), 1)
    assert drain(empty) is None
    assert receive(tag("a"), 0) == [tag("a"), 1]


@pytest.mark.parametrize("empty", [[], ()], ids=repr)
def test_set_tags_of_no_tags_clears_every_queue(empty, tag):
    send(tag("a"), 1)
    send(tag("b"), 2)
    assert set_tags(empty) is None
    assert_empty([tag("a"), tag("b")])
    send(tag("c"), 3)  # tags are still made on first use
    assert receive(tag("c"), 0) == [tag("c"), 3]


def test_non_str_tag_in_a_behavior_is_a_type_error_on_its_result():
    @when()
    def bad():
        send(1, "x")

    bocpy.wait(timeout=60)
    with pytest.raises(TypeError):
        bad.unwrap()


def test_tags_with_an_embedded_nul_are_distinct_tags(tag):
    send(tag("x") + "\0y", "for x-nul-y")
    try:
        assert receive(tag("x"), 0) == (TIMEOUT, None)
        assert receive(tag("x") + "\0y", 0) == [tag("x") + "\0y", "for x-nul-y"]
    finally:
        drain([tag("x"), tag("x") + "\0y"])


def test_after_must_be_callable(tag):
    with pytest.raises(TypeError):
        receive(tag("a"), 0, after=5)


def test_a_thousand_distinct_tags(tag):
    tags = [tag(f"t{i}") for i in range(1500)]
    for i, t in enumerate(tags):
        send(t, i)
    # Each by its own tag, in reverse order of sending...
    for i in range(1499, 749, -1):
        assert receive(tags[i], 0) == [tags[i], i]
    # ... and the rest through one receive naming all 1,500 tags.
    got = sorted(receive(tags, 0)[1] for _ in range(750))
    assert got == list(range(750))
    assert_empty(tags)


def test_a_thousand_distinct_tags_from_behaviors(tag):
    bocpy.start(2)
    for b in range(4):

        @when()
        def sender(prefix=tag(""), b=b):
            for i in range(300):
                send(f"{prefix}{b}:{i}", (b, i))

    bocpy.wait(timeout=60)
    for b in range(4):
        for i in range(300):
            assert receive(tag(f"{b}:{i}"), 0) == [tag(f"{b}:{i}"), (b, i)]


# ------------------------------------------------------------ drain, set_tags


def test_drain_discards_only_the_named_tags(tag):
    for i in range(5):
        send(tag("a"), i)
        send(tag("b"), i)
        send(tag("c"), i)
    drain(tag("a"))
    drain([tag("b")])
    assert_empty([tag("a"), tag("b")])
    assert [receive(tag("c"), 0)[1] for _ in range(5)] == list(range(5))


def test_drain_of_unknown_tags_is_harmless(tag):
    drain([tag("never used"), tag("nor this")])
    send(tag("never used"), 1)
    assert receive(tag("never used"), 0) == [tag("never used"), 1]


def test_drain_then_send_again(tag):
    send(tag("a"), "old")
    drain(tag("a"))
    send(tag("a"), "new")
    assert receive(tag("a"), 0) == [tag("a"), "new"]


def test_drain_from_a_behavior(tag):
    for i in range(5):
        send(tag("a"), i)

    @when()
    def drainer(t=tag("a")):
        drain([t])

    bocpy.wait(timeout=60)
    assert_empty(tag("a"))


def test_set_tags_clears_every_queue_and_accepts_new_tags(tag):
    """As in the reference: every queue is cleared, named or not."""
    send(tag("a"), 1)
    send(tag("b"), 2)
    send(tag("other"), 3)
    set_tags([tag("a"), tag("b"), tag("new")])
    assert_empty([tag("a"), tag("b"), tag("new"), tag("other")])
    send(tag("new"), 4)
    assert receive(tag("new"), 0) == [tag("new"), 4]


def test_set_tags_with_a_single_str(tag):
    send(tag("a"), 1)
    set_tags(tag("a"))
    assert_empty(tag("a"))


def test_set_tags_in_a_behavior_is_a_runtime_error(tag):
    send(tag("a"), "survives")

    @when()
    def bad(t=tag("a")):
        set_tags([t])

    bocpy.wait(timeout=60)
    with pytest.raises(RuntimeError):
        bad.unwrap()
    assert receive(tag("a"), 0) == [tag("a"), "survives"]


# ------------------------------------------------------- threads and workers


def test_behavior_receives_from_main_and_replies(tag):
    @when()
    def service(t_in=tag("req"), t_out=tag("rep")):
        for _ in range(3):
            kind, x = receive(t_in, PATIENCE)
            if kind != t_in:
                return "timed out"
            send(t_out, x * 2)
        return "done"

    for x in (1, 2, 3):
        send(tag("req"), x)
        assert receive_or_fail(tag("rep")) == [tag("rep"), x * 2]
    bocpy.wait(timeout=60)
    assert service.unwrap() == "done"


def test_ping_pong_between_two_workers(tag):
    bocpy.start(2)
    a, b = Cown(None), Cown(None)

    @when(a)
    def ponger(_a, ping=tag("ping"), pong=tag("pong")):
        for _ in range(200):
            kind, n = receive(ping, PATIENCE)
            if kind != ping:
                return "timed out"
            send(pong, n + 1)
        return "ok"

    @when(b)
    def pinger(_b, ping=tag("ping"), pong=tag("pong")):
        n = 0
        for _ in range(200):
            send(ping, n)
            kind, n = receive(pong, PATIENCE)
            if kind != pong:
                return "timed out"
        return n

    bocpy.wait(timeout=120)
    assert ponger.unwrap() == "ok"
    assert pinger.unwrap() == 200


def test_plain_thread_blocked_without_timeout_wakes_on_send(tag):
    got = queue.Queue()

    def receiver():
        got.put(receive(tag("a")))

    thread = threading.Thread(target=receiver, daemon=True)
    thread.start()
    time.sleep(0.2)  # let it block
    send(tag("a"), "wake up")
    thread.join(PATIENCE)
    assert not thread.is_alive(), "receiver thread never woke up"
    assert got.get_nowait() == [tag("a"), "wake up"]


def test_plain_threads_and_behaviors_talk_both_ways(tag):
    bocpy.start(2)

    @when()
    def worker_side(t_in=tag("to worker"), t_out=tag("to thread")):
        total = 0
        for _ in range(50):
            kind, x = receive(t_in, PATIENCE)
            if kind != t_in:
                return -1
            total += x
            send(t_out, x)
        return total

    received = []

    def thread_side():
        for i in range(50):
            send(tag("to worker"), i)
            received.append(receive(tag("to thread"), PATIENCE)[1])

    thread = threading.Thread(target=thread_side)
    thread.start()
    thread.join(60)
    bocpy.wait(timeout=60)
    assert received == list(range(50))
    assert worker_side.unwrap() == sum(range(50))


def test_several_receivers_on_one_tag_each_message_is_delivered_exactly_once(tag):
    bocpy.start(2)
    work, stop, out = tag("work"), tag("stop"), tag("out")
    consumers = []
    for _ in range(2):

        @when()
        def consumer(work=work, stop=stop, out=out):
            return consume_until_stop(work, stop, out)

        consumers.append(consumer)
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda: counts.append(consume_until_stop(work, stop, out)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    producers = [threading.Thread(target=produce, args=(work, p, 2000)) for p in range(2)]
    for p in producers:
        p.start()
    for p in producers:
        p.join(60)
    items = [receive_or_fail(out)[1] for _ in range(4000)]
    for _ in range(5):
        send(stop, None)
    for t in threads:
        t.join(60)
    bocpy.wait(timeout=60)
    assert sorted(items) == sorted((p, s) for p in range(2) for s in range(2000))
    totals = counts + [c.unwrap() for c in consumers]
    assert -1 not in totals
    assert sum(totals) == 4000
    assert_empty([work, out])


def test_no_lost_wakeups_with_many_producers_and_the_main_thread_receiving(tag):
    """100,000 messages from 2 worker behaviors and 2 plain threads, all received."""
    per_producer = 25_000
    stress = tag("stress")
    bocpy.start(2)
    for p in range(2):

        @when()
        def producer(stress=stress, p=p, n=per_producer):
            produce(stress, p, n)

    threads = [threading.Thread(target=produce, args=(stress, p, per_producer)) for p in (2, 3)]
    for t in threads:
        t.start()
    # A watchdog so that a lost message fails the test instead of hanging it.
    watchdog = threading.Timer(120, send, args=(stress, ("watchdog", 0)))
    watchdog.daemon = True
    watchdog.start()
    next_seq = [0, 0, 0, 0]
    try:
        for _ in range(4 * per_producer):
            t, (p, seq) = receive(stress)  # no time-out: must wake for every message
            assert p != "watchdog", f"stuck after {sum(next_seq)} messages: {next_seq}"
            assert seq == next_seq[p], "per-producer order broken"
            next_seq[p] += 1
    finally:
        watchdog.cancel()
    for t in threads:
        t.join(60)
    bocpy.wait(timeout=60)
    assert next_seq == [per_producer] * 4
    assert_empty(stress)


def test_receiver_blocked_in_a_behavior_wakes_for_each_of_many_messages(tag):
    bocpy.start(2)

    @when()
    def receiver(t=tag("a"), n=5000):
        for i in range(n):
            kind, x = receive(t)  # no time-out
            if x != i:
                return f"expected {i}, got {x}"
        return "ok"

    # Paced so that the receiver blocks between messages again and again.
    for i in range(5000):
        send(tag("a"), i)
        if i % 100 == 0:
            time.sleep(0.001)
    bocpy.wait(timeout=120)
    assert receiver.unwrap() == "ok"


def test_blocked_receivers_are_woken_by_send_not_by_polling(tag):
    """A liveness bound, not a performance one.

    A blocked ``receive`` may re-check its queue now and then (the runtime
    wakes it every few tens of milliseconds so that Ctrl-C gets through), so
    a send that failed to wake the receiver would still be noticed --
    eventually.  That would hide lost wake-ups from every test above.  Here
    800 blocking receives in a row (400 round trips between the main thread
    and a worker) must finish within 10 s: around a millisecond is normal,
    while relying on periodic re-checks costs tens of milliseconds per
    receive, i.e. well over 10 s in all.
    """
    ping, pong = tag("ping"), tag("pong")
    bocpy.start(1)

    @when()
    def echo(ping=ping, pong=pong):
        while True:
            kind, n = receive(ping, PATIENCE)
            if kind != ping or n is None:
                return kind
            send(pong, n)

    send(ping, -1)
    assert receive_or_fail(pong)[1] == -1  # the worker is up and echoing
    began = time.monotonic()
    for i in range(400):
        send(ping, i)
        assert receive(pong, PATIENCE) == [pong, i]
    elapsed = time.monotonic() - began
    send(ping, None)
    bocpy.wait(timeout=60)
    assert echo.unwrap() == ping
    assert elapsed < 10, f"400 round trips took {elapsed:.1f}s: receivers are not woken by send"


def test_receive_timeout_in_a_behavior(tag):
    @when()
    def waiter(t=tag("a")):
        return receive(t, 0.05), receive(t, 0, lambda: "after in worker")

    bocpy.wait(timeout=60)
    assert waiter.unwrap() == ((TIMEOUT, None), "after in worker")


# ---------------------------------------------- messages outlive the runtime


def test_messages_sent_before_the_runtime_starts_reach_a_behavior(tag):
    send(tag("a"), "sent before start")

    @when()
    def receiver(t=tag("a")):
        return receive(t, PATIENCE)

    bocpy.wait(timeout=60)
    assert receiver.unwrap() == [tag("a"), "sent before start"]


def test_messages_survive_wait_and_restart(tag):
    @when()
    def sender(t=tag("a")):
        for i in range(3):
            send(t, i)

    bocpy.wait(timeout=60)  # tears the runtime down
    assert receive(tag("a"), 0) == [tag("a"), 0]

    @when()
    def receiver(t=tag("a")):
        return receive(t, PATIENCE)[1], receive(t, PATIENCE)[1]

    bocpy.wait(timeout=60)
    assert receiver.unwrap() == (1, 2)
    bocpy.start(1)
    send(tag("b"), "across")
    bocpy.wait(timeout=60)
    bocpy.start(2)
    assert receive(tag("b"), 0) == [tag("b"), "across"]


def test_pinned_behavior_can_send_and_receive(tag):
    pc = PinnedCown(None)
    send(tag("in"), "to main lane")

    @when(pc)
    def pinned(pc, t_in=tag("in"), t_out=tag("out")):
        kind, x = receive(t_in, PATIENCE)
        send(t_out, x.upper())
        return kind

    bocpy.wait(timeout=60)
    assert pinned.unwrap() == tag("in")
    assert receive(tag("out"), 0) == [tag("out"), "TO MAIN LANE"]


# --------------------------------------------------------------- Ctrl-C


CTRL_C_SCRIPTS = {
    "no runtime": """
        from bocpy import receive
        print("ready", flush=True)
        receive("never")
        print("receive returned", flush=True)
        """,
    "runtime running": """
        from bocpy import Cown, receive, start, when
        start(1)

        @when(Cown(0))
        def _(c):
            return 1

        print("ready", flush=True)
        receive(["never", "nor this"])
        print("receive returned", flush=True)
        """,
}


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
@pytest.mark.parametrize("script", sorted(CTRL_C_SCRIPTS))
def test_ctrl_c_interrupts_a_blocked_receive_on_the_main_thread(start_script, script):
    proc = start_script(CTRL_C_SCRIPTS[script])
    reader = LineReader(proc)
    reader.wait_for("ready")
    time.sleep(0.5)  # let it block in receive()
    assert proc.poll() is None, "script ended before it was interrupted"
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("receive() not interrupted within 10s of SIGINT")
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    assert proc.returncode != 0
    assert "KeyboardInterrupt" in stderr
    assert "Traceback" in stderr
    assert "receive returned" not in reader.seen


@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
def test_ctrl_c_in_receive_can_be_caught_and_receive_still_works(start_script):
    proc = start_script(
        """
        import os
        from bocpy import receive, send
        try:
            print("ready", flush=True)
            receive("never")
        except KeyboardInterrupt:
            print("caught", flush=True)
        send("after", 1)
        print(receive("after", 5), flush=True)
        os._exit(0)
        """
    )
    reader = LineReader(proc)
    reader.wait_for("ready")
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    reader.wait_for("caught", timeout=10)
    reader.wait_for("['after', 1]", timeout=10)
    assert proc.wait(timeout=10) == 0


# ------------------------------------------------------------------ example


def test_calculator_example_runs_and_verifies(run_script):
    proc = run_script(
        "", module="bocpy.examples.calculator", args=["--requests", "300", "--servers", "2"]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout
    assert "ZeroDivisionError" in proc.stdout
    assert "300 requests" in proc.stdout


def test_calculator_example_default_run(run_script):
    proc = run_script("", module="bocpy.examples.calculator")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error replies" in proc.stdout
