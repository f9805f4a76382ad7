"""The public API accepts what the reference bocpy accepts (issue 9, points 4-11).

Each point has a user script run in a subprocess, as a program written for
the reference would run, plus in-process checks where they are natural:

* keyword arguments everywhere the reference takes them, and signatures that
  match it (point 4);
* ``start()`` while running is a no-op; ``start(n)`` with another count is
  refused (5);
* ``set_tags([])``, ``drain([])``, ``receive([])`` (6);
* the noticeboard belongs to a run: ``wait()`` clears it, ``quiesce()`` keeps
  it, writes with no runtime point to ``notice_seed``, which seeds the next
  run (7);
* ``noticeboard()`` is a ``collections.abc.Mapping``; ``repr(REMOVED)``; key
  checks (8); reading a view inside a ``notice_update`` function is refused
  and leaves the board usable (issue 12, item 4);
* bounds of ``pump``/``set_pump_watchdog``/``set_wait_pump_poll`` (9);
* ``on_starve(severity, message)`` (10);
* ``bocpy.__version__`` (11).
"""

from __future__ import annotations

import collections.abc
import importlib.metadata
import inspect
import re
import shutil
import subprocess
import sys
import warnings

import pytest
from conftest import SRC, subprocess_env

import bocpy
from bocpy import (
    REMOVED,
    drain,
    notice_read,
    notice_update,
    notice_write,
    noticeboard,
    pump,
    receive,
    send,
    set_pump_watchdog,
    set_tags,
    set_wait_pump_poll,
)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    """The script's stdout, once it exited 0 (else fail with its stderr)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# ------------------------------------------------ point 4: keyword arguments

#: Every public callable's parameters: (name, kind, default), as the reference
#: takes them (its runtime accepts these names by keyword, except send/drain/
#: set_tags/receive's first parameter, which its stubs document by name and
#: which we accept by keyword too).
P, K = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
EXPECTED = {
    "notice_write": [("key", P, None), ("value", P, None)],
    "notice_delete": [("key", P, None)],
    "notice_update": [("key", P, None), ("fn", P, None), ("default", P, "None")],
    "notice_read": [("key", P, None), ("default", P, "None")],
    "notice_seed": [("key", P, None), ("value", P, None)],
    "noticeboard": [],
    "send": [("tag", P, None), ("contents", P, None)],
    "receive": [("tags", P, None), ("timeout", P, "-1"), ("after", P, "None")],
    "drain": [("tags", P, None)],
    "set_tags": [("tags", P, None)],
    "set_wait_pump_poll": [("ms", P, "50")],
    "set_pump_watchdog": [("warn_ms", P, "1000"), ("on_starve", P, "None")],
    "pump": [
        ("deadline_ms", P, "None"),
        ("max_behaviors", P, "None"),
        ("raise_on_error", P, "False"),
    ],
    # backend= is ours (issue 11, docs/backends.md), keyword-only so that the
    # reference's positional use is unchanged.
    "start": [("worker_count", P, "None"), ("backend", K, "None")],
    "wait": [("timeout", P, "None"), ("stats", K, "False"), ("noticeboard", K, "False")],
    "quiesce": [("timeout", P, "None"), ("stats", K, "False"), ("noticeboard", K, "False")],
    "whencall": [("func", P, None), ("args", P, None), ("captures", P, "None")],
}


def _shape(func: object) -> list[tuple[str, object, str | None]]:
    shape = []
    for p in inspect.signature(func).parameters.values():  # type: ignore[arg-type]
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        shape.append((p.name, p.kind, default))
    return shape


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_signature_matches_the_reference(name):
    assert _shape(getattr(bocpy, name)) == EXPECTED[name]


def test_every_public_callable_has_a_docstring_with_parameters_and_raises():
    for name in bocpy.__all__:
        obj = getattr(bocpy, name)
        if not callable(obj) or isinstance(obj, type):
            continue
        doc = inspect.getdoc(obj) or ""
        assert len(doc) > 40, f"{name} has no real docstring"
        if EXPECTED.get(name):
            assert ":param" in doc, f"{name}'s docstring does not describe its parameters"


KEYWORDS_SCRIPT = """
import bocpy
from bocpy import (Cown, when, wait, quiesce, start, notice_write, notice_read, notice_update,
                   notice_delete, notice_seed, noticeboard, send, receive, drain, set_tags,
                   set_wait_pump_poll, set_pump_watchdog, pump, TIMEOUT)


def add(x):
    return x + 1


start(worker_count=2)
notice_seed(key="seeded", value=1)
notice_write(key="k", value=10)
notice_update("k", add, default=0)
notice_update(key="n", fn=add, default=41)
assert notice_read(key="k") == 11 and notice_read("n") == 42
assert notice_read("missing", default="d") == "d"
notice_delete(key="k")
assert notice_read("k") is None


@when()
def in_a_behavior():
    notice_update("counter", add, default=0)  # the spelling the reference documents
    notice_write(key="w", value="from a behavior")
    return notice_read("counter", default=None)


quiesce()
assert in_a_behavior.unwrap() == 1 and notice_read("w") == "from a behavior"

send(tag="t", contents=[1, 2])
assert list(receive("t", timeout=0)) == ["t", [1, 2]]
assert receive(["t"], timeout=0, after=lambda: "late") == "late"
send("t", 3)
drain(tags="t")
set_tags(tags=["t"])
set_wait_pump_poll(ms=20)
set_wait_pump_poll()
set_pump_watchdog(warn_ms=500, on_starve=None)
set_pump_watchdog(warn_ms=None)
assert pump(deadline_ms=5, max_behaviors=3, raise_on_error=True) == (0, False, 0)
board = wait(timeout=60, noticeboard=True)
assert board["counter"] == 1, board
print("keywords ok")
"""


def test_keyword_arguments_as_the_reference_takes_them(run_script):
    assert ok(run_script(KEYWORDS_SCRIPT)).strip() == "keywords ok"


def test_unknown_and_duplicate_keywords_are_type_errors():
    with pytest.raises(TypeError, match="unexpected keyword argument 'name'"):
        notice_write(name="k", value=1)
    with pytest.raises(TypeError, match="multiple values for argument 'key'"):
        notice_read("k", key="k")
    with pytest.raises(TypeError, match="missing required argument 'fn'"):
        notice_update("k")
    with pytest.raises(TypeError, match="at most 2 arguments"):
        send("t", 1, 2)


# ---------------------------------------------------------- point 5: start()

START_SCRIPT = """
import bocpy
bocpy.start(bocpy.WORKER_COUNT + 1)
bocpy.start()  # running: a no-op, whatever the count
bocpy.start(worker_count=None)
bocpy.start(bocpy.WORKER_COUNT + 1)  # the same explicit count: a no-op
try:
    bocpy.start(bocpy.WORKER_COUNT + 2)
except RuntimeError as err:
    print("refused:", err)
assert bocpy._core._runtime_info()[1] == bocpy.WORKER_COUNT + 1
bocpy.wait()
"""


def test_start_without_a_count_while_running_is_a_no_op(run_script):
    out = ok(run_script(START_SCRIPT))
    assert "refused:" in out and "wait()" in out, out


# ------------------------------------------------------- point 6: messaging

MESSAGING_SCRIPT = """
from bocpy import send, receive, drain, set_tags, TIMEOUT
send("a", 1)
drain([])  # does nothing
assert receive("a", 0) == ["a", 1]
send("a", 2)
send("b", 3)
set_tags([])  # clears every queue, back to automatic tags
assert receive(["a", "b"], 0) == (TIMEOUT, None)
send("c", 4)
assert receive("c", 0) == ["c", 4]
try:
    receive([])
except RuntimeError as err:
    print("receive([]):", err)
"""


def test_set_tags_drain_and_receive_with_no_tags(run_script):
    assert "receive([]): " in ok(run_script(MESSAGING_SCRIPT))


def test_set_tags_clears_every_queue_in_process():
    send("api-compat-x", 1)
    set_tags(["api-compat-y"])
    assert receive("api-compat-x", 0) == (bocpy.TIMEOUT, None)
    drain(())


# ---------------------------------------------- point 7: noticeboard lifetime

LIFETIME_SCRIPT = """
from bocpy import (notice_write, notice_update, notice_delete, notice_seed, notice_read,
                   noticeboard, quiesce, wait, when)

assert wait(noticeboard=True) == {}  # no runtime ever started
for attempt in (lambda: notice_write("k", 1), lambda: notice_update("k", abs, 0),
                lambda: notice_delete("k")):
    try:
        attempt()
    except RuntimeError as err:
        assert "notice_seed" in str(err), err
    else:
        raise AssertionError("a write with no runtime was accepted")

notice_seed("config", {"scale": 3})  # seeds the next run's board


@when()
def first():
    notice_write("result", notice_read("config")["scale"] * 2)


assert quiesce(noticeboard=True) == {"config": {"scale": 3}, "result": 6}


@when()
def second():
    return notice_read("result")  # quiesce() kept the board


final = wait(noticeboard=True)
assert second.unwrap() == 6 and final == {"config": {"scale": 3}, "result": 6}, final
assert len(noticeboard()) == 0 and notice_read("result") is None  # wait() cleared it


@when()
def next_run():
    return dict(noticeboard())  # the next run starts with an empty board


wait()
assert next_run.unwrap() == {}
print("lifetime ok")
"""


def test_the_board_belongs_to_a_run(run_script):
    assert ok(run_script(LIFETIME_SCRIPT)).strip() == "lifetime ok"


def test_wait_noticeboard_with_no_runtime_is_empty():
    bocpy.wait()
    assert bocpy.wait(noticeboard=True) == {}
    assert bocpy.wait(stats=True, noticeboard=True) == bocpy.WaitResult([], {})


# ------------------------------------------- point 8: Mapping, REMOVED, keys

MAPPING_SCRIPT = """
import collections.abc
from bocpy import REMOVED, notice_read, notice_write, noticeboard, start, wait, when

start()
notice_write("a", 1)
notice_write("b", [2])
view = noticeboard()
assert isinstance(view, collections.abc.Mapping)
assert view == {"a": 1, "b": [2]} and dict(view) == {"a": 1, "b": [2]}
assert set(view.keys()) == {"a", "b"} and ("b", [2]) in view.items()
assert sorted(map(str, view.values())) == ["1", "[2]"]
assert repr(REMOVED) == "REMOVED"
for bad, exc, text in ((5, TypeError, "noticeboard key must be a str"),
                       ("a\\0b", ValueError, "NUL")):
    try:
        notice_read(bad)
    except exc as err:
        assert text in str(err), err
    else:
        raise AssertionError(bad)


@when()
def inside():
    return isinstance(noticeboard(), collections.abc.Mapping)


wait()
assert inside.unwrap() is True
print("mapping ok")
"""


def test_noticeboard_is_a_mapping(run_script):
    assert ok(run_script(MAPPING_SCRIPT)).strip() == "mapping ok"


def test_noticeboard_view_mapping_protocol_in_process():
    bocpy.start()
    notice_write("api-compat-m", 5)
    view = noticeboard()
    assert isinstance(view, collections.abc.Mapping)
    assert view == {"api-compat-m": 5} and view != {"api-compat-m": 6}
    assert view.get("api-compat-m") == 5 and view.get(7, "d") == "d"
    assert list(view) == ["api-compat-m"] and len(view) == 1
    assert repr(REMOVED) == "REMOVED"


UPDATE_VIEW_SCRIPT = """
import threading
from bocpy import noticeboard, notice_update, notice_write, notice_read, start, wait

start()
notice_write("other", 1)
view = noticeboard()


def peek(current):
    return view["other"] + (current or 0)  # reads a view while the board is locked


try:
    notice_update("k", peek, 0)
except RuntimeError as err:
    print("refused:", err)
assert notice_read("k") is None  # nothing was written

# The board is still usable from every thread (the lock was not corrupted).
done = []
writer = threading.Thread(target=lambda: (notice_write("t", 2), done.append(1)))
writer.start()
writer.join(10)
assert done == [1], "a writer blocked: the board lock was corrupted"
notice_update("k", lambda v: v + 1, 0)
assert notice_read("k") == 1 and notice_read("t") == 2
wait()
"""


def test_reading_a_view_inside_notice_update_is_refused_and_harmless(run_script):
    """Issue 12 item 4: this read used to unlock the writer's lock."""
    out = ok(run_script(UPDATE_VIEW_SCRIPT, timeout=30))
    assert "refused:" in out and "notice_update" in out and "view" in out, out


# ------------------------------------------------ point 9: bound validation

BOUNDS_SCRIPT = """
from bocpy import pump, set_pump_watchdog, set_wait_pump_poll, start, wait

start()
LIMIT = (1 << 63) // 1_000_000 - 1
cases = []
for bad in (0, -1, 1.5, True):
    cases += [lambda: pump(deadline_ms=bad), lambda: pump(max_behaviors=bad),
              lambda: set_pump_watchdog(warn_ms=bad), lambda: set_wait_pump_poll(bad)]
for case in cases:
    try:
        case()
    except TypeError:
        pass
    else:
        raise AssertionError("accepted a bound that is not a positive int")
for case in (lambda: pump(deadline_ms=LIMIT + 1), lambda: set_pump_watchdog(warn_ms=LIMIT + 1)):
    try:
        case()
    except OverflowError:
        pass
    else:
        raise AssertionError("accepted a bound past the millisecond limit")
pump(deadline_ms=LIMIT)
set_pump_watchdog(warn_ms=LIMIT)
set_pump_watchdog(None)
wait()
print("bounds ok")
"""


def test_bounds_are_positive_ints(run_script):
    assert ok(run_script(BOUNDS_SCRIPT)).strip() == "bounds ok"


@pytest.mark.parametrize("bad", [0, -3, 2.0, False])
def test_bad_bounds_in_process(bad):
    bocpy.start()
    for attempt in (
        lambda: pump(deadline_ms=bad),
        lambda: pump(max_behaviors=bad),
        lambda: set_pump_watchdog(warn_ms=bad),
        lambda: set_wait_pump_poll(bad),
    ):
        with pytest.raises(TypeError, match="positive int"):
            attempt()


# --------------------------------------------- point 10: on_starve severity

STARVE_SCRIPT = """
import time
from bocpy import PinnedCown, set_pump_watchdog, wait, when

calls = []
set_pump_watchdog(warn_ms=50, on_starve=lambda severity, message: calls.append((severity, message)))
pc = PinnedCown(0)


@when(pc)
def on_main(pc):
    pc.value += 1


end = time.monotonic() + 20
while not calls and time.monotonic() < end:
    time.sleep(0.001)  # busy elsewhere, never pumping: the warning runs here
set_pump_watchdog(None)
wait()
severity, message = calls[0]
print(severity, "|", message)
"""


def test_on_starve_gets_severity_and_message(run_script):
    out = ok(run_script(STARVE_SCRIPT))
    severity, message = out.split(" | ", 1)
    assert severity == "0", out
    assert re.search(r"\d+ ms", message) and "depth 1" in message, message


# ----------------------------------------------------- point 11: __version__


PEP440 = re.compile(
    r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9]+(\.[a-z0-9]+)*)?$"
)


def test_version_is_pep_440_from_the_package_metadata():
    assert "__version__" in bocpy.__all__
    assert bocpy.__version__ == importlib.metadata.version("bocpy")
    assert PEP440.match(bocpy.__version__), bocpy.__version__


def test_version_without_metadata_falls_back_with_a_runtime_warning(tmp_path):
    """A source tree on PYTHONPATH and no installed metadata (``python -S``).

    The package is copied on its own into an empty folder: ``src/`` itself
    may hold a ``bocpy.egg-info`` left by a build, which is metadata.
    """
    shutil.copytree(SRC / "bocpy", tmp_path / "bocpy", ignore=shutil.ignore_patterns("__pycache__"))
    script = (
        "import warnings\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    import bocpy\n"
        "    version = bocpy.__version__\n"
        "print(version)\n"
        "print([str(w.category.__name__) + ': ' + str(w.message) for w in caught])\n"
    )
    env = subprocess_env()
    env["PYTHONPATH"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-S", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = ok(proc).splitlines()
    assert out[0] == "0.0.0+unknown"
    assert "RuntimeWarning" in out[1] and "0.0.0+unknown" in out[1], out


def test_version_lookup_warns_nothing_when_installed():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PEP440.match(bocpy.__version__)
