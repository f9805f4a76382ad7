"""bocpy.Matrix crosses interpreters by move, through the public move hook.

A Matrix that is a cown's value hands its buffer over when the cown is
created or released; the Matrix left behind is stale and every use of it
raises RuntimeError.  Captures, messages, the noticeboard and behavior
results copy.  `_core._matrix_address` (private) shows where a Matrix's
numbers live, in any interpreter, so these tests can see that nothing was
copied.

The threads backend (``conftest.THREADS_BACKEND``) moves nothing: a cown
holds the Matrix itself, which stays usable where it was made, and captures
and results are the objects themselves (messages and the noticeboard still
copy).  The in-process tests say what differs there; the scripts about moves
and copies between worker interpreters start the "interpreters" backend
explicitly, so that they check its guarantee on every build.
"""

from __future__ import annotations

import pytest
from conftest import THREADS_BACKEND

import bocpy
from bocpy import Cown, Matrix

STALE = "was moved to another behavior/interpreter"


def test_matrix_is_registered_through_the_move_hook() -> None:
    assert "bocpy.Matrix" in bocpy._core._move_types()


def test_putting_a_matrix_in_a_cown_leaves_a_stale_reference() -> None:
    m = Matrix(2, 2, [1, 2, 3, 4])
    c = Cown(m)
    if THREADS_BACKEND:
        # Nothing moves on the threads backend: the cown holds ``m`` itself,
        # which stays usable (holding the cown is what makes a use safe).
        assert m.acquired is True and m.sum() == 10
        with c as value:
            assert value is m
        assert c.unwrap() is m and m.sum() == 10
        return
    assert m.acquired is False
    for use in (
        m.sum,
        m.copy,
        lambda: m[0, 0],
        lambda: m + 1,
        lambda: memoryview(m),
        lambda: list(m),
        lambda: m.x,
    ):
        with pytest.raises(RuntimeError, match=STALE):
            use()
    assert repr(m) == "Matrix(<moved to another interpreter>)"
    with c as value:
        assert value.sum() == 10
        kept = value
    # The release moved the buffer back into the cown: `kept` is stale.
    with pytest.raises(RuntimeError, match="reach it through the cown that holds it now"):
        kept.sum()
    assert c.unwrap().sum() == 10


def test_a_live_buffer_export_refuses_the_move_and_leaves_the_matrix_usable() -> None:
    m = Matrix(2, 3, list(range(6)))
    view = memoryview(m)
    if THREADS_BACKEND:
        # No move on the threads backend, so a live view refuses nothing: the
        # cown holds ``m`` and the view still reads it.
        c = Cown(m)
        assert m.acquired and view[0, 1] == 1.0
        view.release()
        assert c.unwrap() is m and m.sum() == 15
        return
    with pytest.raises(BufferError, match="release the view first"):
        Cown(m)
    assert m.acquired and view[0, 1] == 1.0 and m.sum() == 15
    view.release()
    c = Cown(m)
    assert not m.acquired
    assert c.unwrap().sum() == 15


def test_a_value_that_cannot_cross_restores_every_matrix_in_it() -> None:
    import threading

    a, b = Matrix.ones((2, 2)), Matrix.zeros((3, 1))
    if THREADS_BACKEND:
        # The threads backend neither pickles nor moves: the value is accepted
        # as it is, and both matrices stay usable.
        c = Cown([a, b, threading.Lock()])
        assert a.acquired and b.acquired
        assert a.sum() == 4 and b.shape == (3, 1)
        first, second, _ = c.unwrap()
        assert first is a and second is b
        return
    with pytest.raises(TypeError):
        Cown([a, b, threading.Lock()])
    assert a.acquired and b.acquired
    assert a.sum() == 4 and b.shape == (3, 1)


def test_main_thread_round_trip_keeps_the_same_buffer() -> None:
    numpy = pytest.importorskip("numpy")
    m = Matrix.uniform(size=(300, 300))
    expected = numpy.array(m)
    address = numpy.asarray(m).__array_interface__["data"][0]
    assert bocpy._core._matrix_address(m) == address
    c = Cown([m, {"same": m}])
    with c as value:
        moved, inner = value[0], value[1]["same"]
        assert moved is inner  # identity survives the move
        assert numpy.asarray(moved).__array_interface__["data"][0] == address
        assert numpy.array_equal(numpy.asarray(moved), expected)


def test_private_address_helper_checks_its_argument() -> None:
    with pytest.raises(TypeError, match="needs a Matrix, not 'list'"):
        bocpy._core._matrix_address([1, 2])  # type: ignore[arg-type]


def test_chain_of_behaviors_moves_the_matrix_worker_to_worker(run_script) -> None:
    proc = run_script(
        """
        import threading, time
        import bocpy
        from bocpy import Cown, Matrix, when, wait
        from bocpy._core import _matrix_address

        # About moves between worker interpreters: that backend, on every build.
        bocpy.start(worker_count=4, backend="interpreters")
        m = Matrix.zeros((1000, 1000))   # 8 MB
        address = _matrix_address(m)
        c = Cown(m)
        try:
            m.sum()
            print("NOT STALE")
        except RuntimeError as err:
            print("main stale:", err)

        STASH = []   # per worker: the Matrix objects it saw in earlier steps
        log = Cown([])
        STEPS = 24
        for i in range(STEPS):
            @when(c, log)
            def step(c, log, i=i):
                value = c.value
                checked = 0
                for old in STASH:
                    try:
                        old.sum()
                        raise AssertionError("a stale Matrix was readable")
                    except RuntimeError as err:
                        assert "was moved to another behavior/interpreter" in str(err)
                        checked += 1
                STASH.append(value)
                log.value.append(
                    (i, threading.get_ident(), _matrix_address(value), value[0, 0], checked)
                )
                value[0, 0] = i + 1
                value += 1.0          # in place: the same block
                @when(Cown(None))
                def nap(_):
                    time.sleep(0.005)  # keep this worker busy: the next step moves on
        wait()
        rows = log.unwrap()
        assert [r[0] for r in rows] == list(range(STEPS)), rows
        assert all(r[2] == address for r in rows), "the Matrix was copied"
        assert [r[3] for r in rows] == [0.0] + [i + 2.0 for i in range(STEPS - 1)], rows
        print("workers:", len({r[1] for r in rows}))
        print("stale checks:", sum(r[4] for r in rows))
        final = c.unwrap()
        assert _matrix_address(final) == address
        assert final[0, 0] == STEPS + 1.0 and final[999, 999] == STEPS
        print("ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("main stale: this bocpy.Matrix was moved to another")
    assert int(lines[1].split(":")[1]) >= 2, proc.stdout
    assert int(lines[2].split(":")[1]) >= 1, proc.stdout
    assert lines[3] == "ok"


def test_a_matrix_put_in_a_new_cown_inside_a_behavior_is_stale_there(run_script) -> None:
    proc = run_script(
        """
        from bocpy import Cown, Matrix, when, wait

        @when(Cown(None))
        def inner(_):
            m = Matrix.ones((4, 4))
            d = Cown(m)
            try:
                m.sum()
                return "readable"
            except RuntimeError as err:
                return str(err)

        wait()
        print(inner.unwrap())
        """
    )
    assert proc.returncode == 0, proc.stderr
    if THREADS_BACKEND:
        # No move on the threads backend: the body's Matrix stays usable.
        assert proc.stdout == "readable\n"
        return
    assert proc.stdout.startswith("this bocpy.Matrix was moved to another behavior/interpreter")


@pytest.mark.parametrize("workers", [1, 2])
def test_returning_a_cowns_matrix_sends_a_copy(run_script, workers: int) -> None:
    # With one worker, `chained` reads the result in the interpreter that
    # made it: it must get the copy, not the object whose buffer moved.  The
    # copy is the interpreters backend's guarantee, so the script starts it
    # on every build (on the threads backend a result is the object itself,
    # shared with the cown: see test_captures_messages_and_the_noticeboard_copy).
    proc = run_script(
        f"""
        import bocpy
        from bocpy import Cown, Matrix, when, wait
        from bocpy._core import _matrix_address

        bocpy.start(worker_count={workers}, backend="interpreters")
        m = Matrix.vector([1.0, 2.0, 3.0])
        address = _matrix_address(m)
        c = Cown(m)

        @when(c)
        def whole(c):
            c.value *= 2
            return c.value

        @when(c)
        def inside(c):
            return [c.value, c.value.sum()]

        @when(whole)
        def chained(r):
            return r.value.sum()

        @when(c)
        def later(c):
            c.value += 1
            return _matrix_address(c.value)

        wait()
        got = whole.unwrap()
        print(repr(got), _matrix_address(got) != address)
        pair = inside.unwrap()
        print(repr(pair[0]), pair[1])
        print(chained.unwrap())
        print(later.unwrap() == address)
        print(repr(c.unwrap()))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "Matrix(1, 3, [2, 4, 6]) True",
        "Matrix(1, 3, [2, 4, 6]) 12.0",
        "12.0",
        "True",
        "Matrix(1, 3, [3, 5, 7])",
    ]


def test_captures_messages_and_the_noticeboard_copy(run_script) -> None:
    proc = run_script(
        """
        from bocpy import (Cown, Matrix, notice_read, notice_seed, receive, send,
                           wait, when)
        from bocpy._core import _matrix_address

        m = Matrix.vector([1.0, 2.0])
        address = _matrix_address(m)
        notice_seed("m", m)
        send("m", m)
        out = Cown(None)

        @when(out)
        def use(out):
            seen = notice_read("m")
            out.value = (m.sum(), seen.sum(), _matrix_address(m) != address)

        wait()
        print(out.unwrap())
        tag, got = receive("m", 10)
        print(repr(got), _matrix_address(got) != address)
        m[0, 0] = 5          # still ours: nothing above moved it
        print(repr(m), m.acquired)
        """
    )
    assert proc.returncode == 0, proc.stderr
    # The threads backend does not copy captures: the body's ``m`` is the
    # script's own Matrix (same address).  Messages and the noticeboard copy
    # on both backends.
    assert proc.stdout.splitlines() == [
        f"(3.0, 3.0, {not THREADS_BACKEND})",
        "Matrix(1, 2, [1, 2]) True",
        "Matrix(1, 2, [5, 2]) True",
    ]


def test_dropped_cowns_free_their_moved_matrices(run_script) -> None:
    # Payloads in transit when their cown dies are freed by the type's
    # free_payload (bocpy_matrix_buffer_free); ASan checks the frees.
    proc = run_script(
        """
        import gc
        from bocpy import Cown, Matrix, when, wait

        for i in range(20):
            c = Cown(Matrix.ones((64, 64)))

            @when(c)
            def touch(c):
                c.value += 1

        del c
        wait()
        gc.collect()
        print("done")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
