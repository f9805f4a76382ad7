"""The public C hook through which extension types cross interpreters by move.

A downstream extension (``tests/move_ext/movebuf.c``, a type owning a
malloc'd buffer) is built against ``bocpy.get_include()`` with setuptools,
exactly as a third party would, and registers itself through
``<bocpy/move.h>``.  User scripts then put its objects in cowns and pass
them between the main interpreter and worker interpreters: the buffer moves
(its address never changes), the object left behind is stale and says so,
and a buffer nobody attached is freed.

Moves happen only between interpreters, so the scripts run on the
"interpreters" backend on every build (``BOCPY_BACKEND`` in their
environment: a free-threaded build would otherwise pick "threads").
``test_the_threads_backend_moves_nothing`` says what the threads backend
does instead: the object stays live where it is, never moved or copied.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SUBPROCESS_TIMEOUT

import bocpy

EXT_SOURCE = Path(__file__).resolve().parent / "move_ext" / "movebuf.c"

SETUP_PY = """\
import json, os
from setuptools import Extension, setup

setup(
    name="movebuf",
    ext_modules=[
        Extension(
            "movebuf",
            sources=["movebuf.c", *json.loads(os.environ["BOCPY_SOURCES"])],
            include_dirs=[os.environ["BOCPY_INCLUDE"]],
            extra_compile_args=["-Wall", "-Werror", "-Wno-unused-parameter"],
        )
    ],
)
"""


@pytest.fixture(scope="module")
def movebuf_so(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the test extension once; the path of its shared object."""
    build = tmp_path_factory.mktemp("movebuf")
    shutil.copy(EXT_SOURCE, build / "movebuf.c")
    (build / "setup.py").write_text(SETUP_PY, encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        # The compiler must not run under the sanitizer suite's preloads.
        if key not in ("LD_PRELOAD", "ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS")
    }
    env["BOCPY_INCLUDE"] = bocpy.get_include()
    env["BOCPY_SOURCES"] = json.dumps(bocpy.get_sources())
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=build,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (so,) = build.glob("movebuf*.so")
    return so


@pytest.fixture
def run_with_ext(run_script, tmp_path: Path, movebuf_so: Path):
    """run_script, with the built extension importable by the script.

    Every implicit start of the script uses ``backend`` (default: the
    interpreters backend, where moves happen).
    """
    shutil.copy(movebuf_so, tmp_path / movebuf_so.name)

    def run(source: str, *, backend: str = "interpreters") -> subprocess.CompletedProcess[str]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("BOCPY_BACKEND", backend)  # read by the subprocess only
            proc = run_script(source, timeout=SUBPROCESS_TIMEOUT)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    return run


def test_get_include_holds_the_header() -> None:
    header = Path(bocpy.get_include()) / "bocpy" / "move.h"
    assert header.is_file()
    text = header.read_text(encoding="utf-8")
    assert "#define BOCPY_MOVE_ABI_VERSION" in text
    assert "BocPyMove_Register" in text
    assert bocpy.get_sources() == []
    assert "get_include" in bocpy.__all__ and "get_sources" in bocpy.__all__


def test_capsule_is_published_in_every_interpreter() -> None:
    assert type(bocpy._core._C_API).__name__ == "PyCapsule"
    assert "bocpy._core._C_API" in repr(bocpy._core._C_API)


def test_chain_of_behaviors_moves_the_buffer_worker_to_worker(run_with_ext) -> None:
    proc = run_with_ext(
        """
        import threading, time
        import bocpy
        from bocpy import Cown, when, wait
        import movebuf

        bocpy.start(worker_count=4)  # BOCPY_BACKEND: interpreters
        buf = movebuf.Buffer(1_000_000, 7)
        address = buf.address
        c = Cown(buf)
        try:
            buf.checksum()
            print("NOT STALE")
        except RuntimeError as err:
            print("main stale:", err)

        STASH = []   # each worker's own copy: buffers it saw in earlier steps
        log = Cown([])
        STEPS = 24
        for i in range(STEPS):
            @when(c, log)
            def step(c, log, i=i):
                b = c.value
                checked = 0
                for old in STASH:
                    try:
                        old.get(0)
                        raise AssertionError("a stale Buffer was readable")
                    except RuntimeError as err:
                        assert "was moved to another behavior/interpreter" in str(err)
                        checked += 1
                STASH.append(b)
                log.value.append((i, threading.get_ident(), b.address, b.get(0), checked))
                b.set(0, i)
                # Keep this worker busy so that the next step is likely to
                # be stolen by another one.
                @when(Cown(None))
                def nap(_):
                    time.sleep(0.005)
        wait()
        with log:
            rows = log.value
        assert [r[0] for r in rows] == list(range(STEPS)), rows
        assert all(r[2] == address for r in rows), "the buffer was copied"
        assert [r[3] for r in rows] == [7] + list(range(STEPS - 1)), rows
        print("workers:", len({r[1] for r in rows}))
        print("stale checks:", sum(r[4] for r in rows))
        with c:
            assert c.value.address == address
            assert c.value.checksum() == 7 * (1_000_000 - 1) + STEPS - 1
        print("live:", movebuf.live_buffers())
        """
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("main stale: this movebuf.Buffer was moved to another")
    assert "reach it through the cown that holds it now" in lines[0]
    workers = int(lines[1].split(":")[1])
    assert workers >= 2, proc.stdout
    # 24 steps on at most 4 workers: some worker ran several, and found its
    # earlier references stale.
    assert int(lines[2].split(":")[1]) > 0, proc.stdout
    assert lines[3] == "live: 1", proc.stdout


def test_main_thread_hold_moves_in_and_out(run_with_ext) -> None:
    proc = run_with_ext(
        """
        from bocpy import Cown
        import movebuf

        c = Cown(movebuf.Buffer(64, 1))
        with c:
            held = c.value
            first = held.address
            held.set(3, 9)
        # Released: the cown took the buffer back; `held` is stale.
        assert held.stale
        try:
            held.checksum()
            raise AssertionError("stale read")
        except RuntimeError:
            pass
        with c:
            assert c.value.address == first
            assert c.value.get(3) == 9
        value = c.unwrap()   # taking the value out leaves a live object
        assert value.address == first and not value.stale
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_containers_move_their_buffers(run_with_ext) -> None:
    proc = run_with_ext(
        """
        from bocpy import Cown, when, wait
        import movebuf

        x, y = movebuf.Buffer(100, 1), movebuf.Buffer(200, 2)
        ax, ay = x.address, y.address
        c = Cown({"x": x, "more": [y, 3, "text"], "again": x})
        assert x.stale and y.stale

        @when(c)
        def look(c):
            v = c.value
            return (v["x"].address, v["more"][0].address, v["again"] is v["x"],
                    v["more"][1:], v["x"].checksum() + v["more"][0].checksum())
        wait()
        got = look.unwrap()
        assert got == (ax, ay, True, [3, "text"], 100 + 400), got
        with c:
            assert c.value["x"].address == ax

        # A lambda makes the C pickler give up half way; bocpy's extended
        # pickler retries, and the buffer still moves (exactly once).
        z = movebuf.Buffer(10, 2)
        az = z.address
        d = Cown([lambda: 41, z])
        assert z.stale

        @when(d)
        def call(d):
            fn, buf = d.value
            return (fn() + 1, buf.address, buf.checksum())
        wait()
        assert call.unwrap() == (42, az, 20)
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_a_move_that_fails_leaves_every_object_usable(run_with_ext) -> None:
    proc = run_with_ext(
        """
        import threading
        from bocpy import Cown
        import movebuf

        # Something else in the value cannot cross: nothing moves.
        z = movebuf.Buffer(10, 3)
        address = z.address
        try:
            Cown([z, threading.Lock()])
            raise AssertionError("a lock crossed")
        except TypeError as err:
            assert "cannot send a value of type 'list'" in str(err), err
        assert not z.stale and z.address == address and z.checksum() == 30

        # A buffer exported to a memoryview must not move.
        w = movebuf.Buffer(10, 4)
        view = memoryview(w)
        try:
            Cown(w)
            raise AssertionError("moved under a memoryview")
        except BufferError as err:
            assert "memoryview" in str(err)
        try:
            Cown({"w": w})
            raise AssertionError("moved under a memoryview")
        except TypeError as err:
            assert "BufferError" in str(err)
        assert not w.stale and w.checksum() == 40
        view.release()
        c = Cown(w)
        assert w.stale
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_paths_that_copy_still_copy(run_with_ext) -> None:
    proc = run_with_ext(
        """
        import pickle
        import bocpy
        from bocpy import Cown, when, wait
        import movebuf

        p = movebuf.Buffer(5, 9)
        q = pickle.loads(pickle.dumps(p))
        assert q.checksum() == 45 and q.address != p.address and not p.stale

        cap = movebuf.Buffer(5, 1)
        bocpy.notice_seed("buf", cap)

        @when(Cown(None))
        def use(_, cap=cap):
            return (cap.checksum(), bocpy.notice_read("buf").checksum())
        wait()
        assert use.unwrap() == (5, 5)
        assert not cap.stale   # captures and the noticeboard copy

        # A behavior's result is copied before its cowns take their values
        # back: returning the cown's own object sends a copy, and the cown
        # keeps (and moves) the original buffer.
        c = Cown(movebuf.Buffer(3, 1))

        @when(c)
        def give(c):
            return c.value

        @when(c)
        def where(c):
            return c.value.address
        wait()
        got = give.unwrap()
        assert got.checksum() == 3 and not got.stale
        with c:
            assert c.value.address == where.unwrap() != got.address
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_the_threads_backend_moves_nothing(run_with_ext) -> None:
    # No interpreter boundary to cross: the cown holds the object itself,
    # which stays live on the main thread and in behaviors, and a behavior
    # can give it back as its result (the same object, no copy).
    proc = run_with_ext(
        """
        from bocpy import Cown, when, wait
        import movebuf

        buf = movebuf.Buffer(64, 2)
        address = buf.address
        c = Cown({"buf": buf})
        assert not buf.stale and buf.checksum() == 128

        @when(c)
        def touch(c):
            b = c.value["buf"]
            b.set(0, 5)
            return b is buf, b.address == address

        @when(c)
        def give(c):
            return c.value["buf"]
        wait()
        assert touch.unwrap() == (True, True)
        assert give.unwrap() is buf and not buf.stale
        assert buf.get(0) == 5 and buf.checksum() == 131
        with c:
            assert c.value["buf"] is buf
        print("ok", movebuf.live_buffers())
        """,
        backend="threads",
    )
    assert proc.stdout.strip() == "ok 1"


def test_a_buffer_never_attached_is_freed(run_with_ext) -> None:
    # Under the ASan suite the cown still alive at exit must not leak either.
    proc = run_with_ext(
        """
        import gc
        import movebuf
        from bocpy import Cown

        base = movebuf.live_buffers()
        c = Cown([movebuf.Buffer(1000), movebuf.Buffer(10)])
        assert movebuf.live_buffers() == base + 2
        del c
        gc.collect()
        assert movebuf.live_buffers() == base, movebuf.live_buffers()
        kept = Cown(movebuf.Buffer(4096))   # still held when the process exits
        print("ok")
        """
    )
    assert proc.stdout.strip() == "ok"


def test_registration_checks_its_arguments(run_with_ext) -> None:
    proc = run_with_ext(
        """
        import bocpy
        import movebuf

        def error(how):
            try:
                movebuf.register_broken(how)
            except Exception as err:
                return f"{type(err).__name__}: {err}"
            return "ok"

        print(error("abi"))
        print(error("missing"))
        print(error("not-a-type"))
        print(error("other-callbacks"))
        print(error("again"))
        print(bocpy._core._move_types())
        """
    )
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ValueError: BocPyMove_Register(movebuf.Buffer): the BocPyMoveType")
    assert "ABI version 2, this bocpy speaks 1" in lines[0]
    assert lines[1].startswith("ValueError: ") and "'restore' callback is NULL" in lines[1]
    assert lines[2] == "TypeError: BocPyMove_Register() needs a type object, not 'module'"
    assert lines[3].startswith("ValueError: a different extension already registered")
    assert lines[4] == "ok"
    assert lines[5] == "['bocpy.Matrix', 'movebuf.Buffer']"  # Matrix registers at import
