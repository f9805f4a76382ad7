"""Tests for the ``__main__`` image of :mod:`bocpy._bootstrap`.

Each test writes a small script into ``tmp_path``, runs it for real as a
``__main__`` module object, builds its image, ships the image through pickle
(as a stand-in for the transfer to a worker) and replays it into a fresh
namespace.
"""

import marshal
import pickle
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import pytest

from bocpy import _bootstrap

apply_image = _bootstrap.apply_image
build_image = _bootstrap.build_image


def picklable(value: object) -> bool:
    """Transferability stand-in: the value survives ``pickle.dumps``."""
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def run_script(
    tmp_path: Path, source: str, name: str = "script.py", package: str | None = None
) -> types.ModuleType:
    """Write ``source`` to ``tmp_path / name`` and execute it as ``__main__``."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    module = types.ModuleType("__main__")
    module.__file__ = str(path)
    if package is not None:
        module.__package__ = package
    code = compile(path.read_text(encoding="utf-8"), str(path), "exec")
    exec(code, module.__dict__)
    return module


def transfer(image: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Simulate sending the image to another interpreter."""
    return pickle.loads(pickle.dumps(image))


def replay(module: types.ModuleType) -> tuple[dict[str, Any], list[str]]:
    """Build the image of ``module`` and apply it to a fresh namespace."""
    image = transfer(build_image(module, picklable))
    namespace: dict[str, Any] = {}
    warnings = apply_image(image, namespace)
    return namespace, warnings


def line_of(module: types.ModuleType, needle: str) -> int:
    """1-based line number of the first source line containing ``needle``."""
    lines = Path(module.__file__).read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


def test_definitions_imports_and_constants(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        import os
        import collections.abc
        from functools import partial as _partial
        import threading

        LIMIT = 10
        DOUBLE = LIMIT * 2
        NAMES = ("a", "b")
        TABLE = {"x": [1, 2, 3]}
        LABEL = f"limit={LIMIT}"
        first, *rest = 1, 2, 3
        COUNT: int = 5
        COUNT += 1
        LOCK = threading.Lock()          # not transferable, calls an import: re-run
        STREAM = open(__file__)          # not transferable, calls open(): skipped

        def helper(x):
            return x + LIMIT

        async def ahelper():
            return 1

        class Point:
            def norm(self):
                return helper(0)

        ALIAS = helper                   # not transferable, constant: exec
        square = lambda x: x * x         # lambda: exec
        type Vector = list[float]
        """,
    )
    namespace, warnings = replay(module)

    assert warnings == []
    assert namespace["__name__"] == "__main__"
    assert namespace["__file__"] == module.__file__
    assert namespace["os"] is sys.modules["os"]
    assert namespace["collections"] is sys.modules["collections"]
    assert namespace["_partial"] is sys.modules["functools"].partial
    assert namespace["LIMIT"] == 10
    assert namespace["DOUBLE"] == 20
    assert namespace["NAMES"] == ("a", "b")
    assert namespace["TABLE"] == {"x": [1, 2, 3]}
    assert namespace["LABEL"] == "limit=10"
    assert (namespace["first"], namespace["rest"]) == (1, [2, 3])
    assert namespace["COUNT"] == 6
    assert isinstance(namespace["LOCK"], type(module.LOCK))
    assert namespace["LOCK"] is not module.LOCK
    assert "STREAM" not in namespace
    module.STREAM.close()
    assert namespace["helper"](1) == 11
    assert namespace["helper"].__module__ == "__main__"
    assert namespace["helper"].__globals__ is namespace
    assert namespace["ALIAS"] is namespace["helper"]
    assert namespace["square"](3) == 9
    assert namespace["Point"]().norm() == 10
    assert namespace["Point"].__module__ == "__main__"
    assert namespace["Vector"].__value__ == list[float]
    assert "ahelper" in namespace


def test_top_level_code_is_not_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = run_script(
        tmp_path,
        """
        \"\"\"Docstring.\"\"\"
        print("top level")

        def main():
            print("main ran")

        if True:
            print("in if")
            VALUE = 1

        for i in range(2):
            print("loop", i)
            LAST = i

        with open(__file__) as f:
            SOURCE_LEN = len(f.read())

        main()
        """,
    )
    assert capsys.readouterr().out == "top level\nin if\nloop 0\nloop 1\nmain ran\n"

    namespace, warnings = replay(module)

    assert warnings == []
    assert capsys.readouterr().out == ""
    assert namespace["VALUE"] == 1
    # Names assigned in skipped blocks are bound from the main module.
    assert namespace["LAST"] == 1
    assert namespace["SOURCE_LEN"] == module.SOURCE_LEN
    assert "i" not in namespace
    assert "f" not in namespace
    namespace["main"]()
    assert capsys.readouterr().out == "main ran\n"


def test_when_decorated_definitions_are_bound_not_rerun(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        import types

        class Recorder:
            calls = 0

        def when(*cowns):
            def decorator(fn):
                Recorder.calls += 1
                return ("cown", fn.__name__, cowns)
            return decorator

        bocpy = types.SimpleNamespace(when=when)

        @when(1)
        def behavior():
            return "ran"

        @bocpy.when(1, 2)
        def other():
            return "ran"

        if True:
            @when(3)
            def nested():
                return "ran"
        """,
    )
    assert module.Recorder.calls == 3

    namespace, warnings = replay(module)

    assert warnings == []
    assert namespace["Recorder"].calls == 0
    assert namespace["behavior"] == ("cown", "behavior", (1,))
    assert namespace["other"] == ("cown", "other", (1, 2))
    assert namespace["nested"] == ("cown", "nested", (3,))


def test_when_result_not_transferable_is_left_out(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        import threading

        def when(*cowns):
            return lambda fn: threading.Lock()

        @when()
        def behavior():
            pass
        """,
    )
    namespace, warnings = replay(module)
    assert warnings == []
    assert "behavior" not in namespace
    assert callable(namespace["when"])


def test_main_guard_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = run_script(
        tmp_path,
        """
        def work():
            return 1

        if __name__ == "__main__":
            print("guarded")
            GUARDED = work()
        else:
            import json
            print("else branch")

        if "__main__" == __name__:
            print("guarded again")

        if __name__ != "__main__":
            import decimal
        else:
            print("not-main else")
        """,
    )
    assert capsys.readouterr().out == "guarded\nguarded again\nnot-main else\n"

    namespace, warnings = replay(module)

    assert warnings == []
    assert capsys.readouterr().out == ""
    assert "GUARDED" not in namespace
    assert namespace["json"] is sys.modules["json"]
    assert namespace["decimal"] is sys.modules["decimal"]
    assert namespace["work"]() == 1


def test_conditional_imports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = run_script(
        tmp_path,
        """
        import sys

        try:
            import bocpy_no_such_module_xyz as fast
        except ImportError:
            print("no fast module")
            fast = None

        try:
            import json
        except ImportError:
            json = None

        if sys.version_info >= (3, 12):
            from os import path as ospath
        else:
            ospath = None

        try:
            from bocpy_no_such_module_xyz import thing
        except ImportError:
            def thing():
                return "fallback"
        finally:
            pass
        """,
    )
    assert capsys.readouterr().out == "no fast module\n"

    namespace, warnings = replay(module)

    assert warnings == []
    assert capsys.readouterr().out == ""
    assert namespace["fast"] is None
    assert namespace["json"] is sys.modules["json"]
    assert namespace["ospath"] is sys.modules["os"].path
    assert namespace["thing"]() == "fallback"


def test_failing_step_warns_and_later_steps_apply(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        handle = open(__file__)
        ALIAS = handle

        def after():
            return "after"

        AFTER = 1
        """,
    )
    namespace, warnings = replay(module)

    module.handle.close()
    line = line_of(module, "ALIAS = handle")
    assert warnings == [f"line {line}: NameError: name 'handle' is not defined"]
    assert namespace["after"]() == "after"
    assert namespace["AFTER"] == 1
    assert "ALIAS" not in namespace


def test_failed_exec_step_is_retried_at_the_end() -> None:
    code = compile("Y = X + 1", "fake.py", "exec")
    image = [("exec", "fake.py", marshal.dumps(code)), ("bind", "X", 41)]
    namespace: dict[str, Any] = {}
    assert apply_image(image, namespace) == []
    assert namespace["Y"] == 42


def test_warning_reports_failing_line_and_malformed_steps() -> None:
    code = compile("\n\nA = 1\nB = missing\n", "fake.py", "exec")
    image = [("exec", "fake.py", marshal.dumps(code)), ("bogus",), ("bind", "C", 3)]
    namespace: dict[str, Any] = {}
    warnings = apply_image(image, namespace)
    assert warnings[0] == "line 4: NameError: name 'missing' is not defined"
    assert warnings[1].startswith("malformed step")
    assert len(warnings) == 2
    assert namespace["A"] == 1
    assert namespace["C"] == 3


def test_name_stays_main(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        import types as __name__
        CONSTANT = 1
        """,
    )
    image = build_image(module, picklable)
    assert all(step[1] != "__name__" for step in image if step[0] == "bind")
    namespace: dict[str, Any] = {"__name__": "__main__"}
    apply_image(transfer(image), namespace)
    assert namespace["__name__"] == "__main__"
    assert namespace["CONSTANT"] == 1
    assert apply_image([("bind", "__name__", "x")], namespace) != []
    assert namespace["__name__"] == "__main__"


def test_future_annotations_are_honoured(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        from __future__ import annotations

        def f(x: Undefined) -> AlsoUndefined:
            return x

        class C:
            field: NotDefinedEither

        value: Missing = 3
        """,
    )
    namespace, warnings = replay(module)
    assert warnings == []
    assert namespace["f"].__annotations__ == {
        "x": "Undefined",
        "return": "AlsoUndefined",
    }
    assert namespace["C"].__annotations__ == {"field": "NotDefinedEither"}
    assert namespace["value"] == 3


def test_no_source_gives_empty_image(tmp_path: Path) -> None:
    assert build_image(types.ModuleType("__main__"), picklable) == []

    missing = types.ModuleType("__main__")
    missing.__file__ = str(tmp_path / "missing.py")
    assert build_image(missing, picklable) == []

    broken = types.ModuleType("__main__")
    (tmp_path / "broken.py").write_text("def f(:\n", encoding="utf-8")
    broken.__file__ = str(tmp_path / "broken.py")
    assert build_image(broken, picklable) == []

    not_a_path = types.ModuleType("__main__")
    not_a_path.__file__ = None  # type: ignore[assignment]
    assert build_image(not_a_path, picklable) == []


def test_line_numbers_match_the_source(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        import os

        X = 1


        def f():
            return os.sep


        class K:

            def method(self):
                raise ValueError("boom")
        """,
    )
    image = build_image(module, picklable)
    namespace: dict[str, Any] = {}
    assert apply_image(transfer(image), namespace) == []

    assert namespace["f"].__code__.co_firstlineno == line_of(module, "def f")
    assert namespace["f"].__code__.co_filename == module.__file__
    method = namespace["K"].method
    assert method.__code__.co_firstlineno == line_of(module, "def method")
    with pytest.raises(ValueError, match="boom") as info:
        namespace["K"]().method()
    assert info.traceback[-1].lineno + 1 == line_of(module, "raise ValueError")

    exec_lines = [
        min(line for _, _, line in marshal.loads(step[2]).co_lines() if line)
        for step in image
        if step[0] == "exec"
    ]
    assert exec_lines == [line_of(module, "import os"), 7, 11]


def test_every_exec_step_marshal_round_trips(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        from __future__ import annotations
        import sys
        try:
            import json
        except ImportError:
            json = None
        if sys.platform:
            from os import sep
        def f(a: int = 1) -> int:
            return a
        class C:
            pass
        lam = lambda: 1
        """,
    )
    image = build_image(module, picklable)
    exec_steps = [step for step in image if step[0] == "exec"]
    assert exec_steps
    for kind, filename, code_bytes in exec_steps:
        assert kind == "exec"
        assert filename == module.__file__
        assert isinstance(code_bytes, bytes)
        code = marshal.loads(code_bytes)
        assert isinstance(code, types.CodeType)
        assert code.co_filename == module.__file__
        assert marshal.loads(marshal.dumps(code)) == code
    for step in image:
        assert step[0] in {"exec", "bind"}
        assert len(step) == 3


def test_binds_are_in_source_order(tmp_path: Path) -> None:
    module = run_script(
        tmp_path,
        """
        import math
        A = math.floor(1.5)
        def g():
            return A
        B = math.ceil(1.5)
        """,
    )
    image = build_image(module, picklable)
    kinds = [(step[0], step[1] if step[0] == "bind" else None) for step in image]
    assert kinds == [
        ("bind", "__file__"),
        ("exec", None),
        ("bind", "A"),
        ("exec", None),
        ("bind", "B"),
    ]
    namespace: dict[str, Any] = {}
    assert apply_image(transfer(image), namespace) == []
    assert (namespace["A"], namespace["B"], namespace["g"]()) == (1, 2, 1)


def test_relative_imports_with_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = "bocpy_test_pkg_main_image"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / package / "helper.py").write_text("VALUE = 7\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = run_script(
            tmp_path,
            "from .helper import VALUE as v\n",
            name=f"{package}/main.py",
            package=package,
        )
        namespace, warnings = replay(module)
        assert warnings == []
        assert namespace["__package__"] == package
        assert namespace["v"] == 7
    finally:
        for name in [n for n in sys.modules if n.startswith(package)]:
            del sys.modules[name]


def test_failing_is_transferable_counts_as_false(tmp_path: Path) -> None:
    module = run_script(tmp_path, "X = 1\nY = id(X)\n")

    def explode(value: object) -> bool:
        raise RuntimeError(value)

    image = build_image(module, explode)
    namespace: dict[str, Any] = {}
    assert apply_image(image, namespace) == []
    assert namespace["X"] == 1
    assert "Y" not in namespace
