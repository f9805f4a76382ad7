"""A small lint of the binding's C sources for C-API and locking mistakes.

In the spirit of msgspec's ``tests/unit/test_cpylint.py``: cheap textual
checks, per function, for mistakes that crash or hang only on rare paths
(and so slip past tests that exercise the common ones):

* every ``Py_BEGIN_ALLOW_THREADS`` is closed by a ``Py_END_ALLOW_THREADS``
  in the same function, in order, never nested;
* a function that locks a mutex also unlocks it, and the other way round,
  and every ``return`` between a lock and its last unlock comes after an
  unlock of that mutex (since the lock it follows) (an early return that keeps a lock
  held hangs the next thread that takes it);
* a ``tp_traverse``/``m_traverse`` function visits every object its
  ``tp_clear``/``m_clear`` partner clears (else the collector cannot see
  the references that keep a cycle alive).

The checks are textual, not a C parser: they rely on the sources being
clang-formatted (one function per top-level brace block).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BINDING = Path(__file__).resolve().parents[1] / "binding"
SOURCES = sorted(BINDING.glob("*.c"))

# The ASan runner copies the tests without the C sources; the plain run lints.
pytestmark = pytest.mark.skipif(
    not BINDING.is_dir(), reason="binding/ is not beside this copy of the tests"
)

#: Functions that take a lock for their caller (by design) -> the mutex.
LOCK_WRAPPERS = {"lc_lock_acquire": "lc_lock", "lock_channels": "channels_lock"}

_FUNCTION = re.compile(r"^[A-Za-z_][\w \*]*?\b(\w+)\([^;{]*\)\s*\{", re.M)
_LOCK = re.compile(r"pthread_mutex_lock\(&(\w+)\)|\b(" + "|".join(LOCK_WRAPPERS) + r")\(\)")
_UNLOCK = re.compile(r"pthread_mutex_unlock\(&(\w+)\)")
_RETURN = re.compile(r"\breturn\b")


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)


def functions(path: Path) -> list[tuple[str, str]]:
    """(name, body) of every function definition in ``path``."""
    text = _strip_comments(path.read_text(encoding="utf-8"))
    found = []
    for match in _FUNCTION.finditer(text):
        depth, i = 0, match.end() - 1
        while True:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        found.append((match.group(1), text[match.end() : i]))
    return found


def _all_functions() -> list[tuple[str, str, str]]:
    return [(path.name, name, body) for path in SOURCES for name, body in functions(path)]


def test_the_lint_sees_the_binding():
    names = {name for _, name, _ in _all_functions()}
    assert {"bocpy_whencall", "bocpy_wait", "bocpy_runtime_pin", "core_traverse"} <= names


def allow_threads_problems(path: Path) -> list[str]:
    problems = []
    for name, body in functions(path):
        depth = 0
        for token in re.findall(r"Py_(BEGIN|END)_ALLOW_THREADS", body):
            depth += 1 if token == "BEGIN" else -1
            if depth not in (0, 1):
                problems.append(f"{path.name}:{name}: nested or unopened ALLOW_THREADS")
                break
        else:
            if depth != 0:
                problems.append(f"{path.name}:{name}: Py_BEGIN_ALLOW_THREADS without its END")
    return problems


def lock_problems(path: Path) -> list[str]:
    problems = []
    for name, body in functions(path):
        if name in LOCK_WRAPPERS:
            continue
        locks: dict[str, list[int]] = {}
        for match in _LOCK.finditer(body):
            mutex = match.group(1) or LOCK_WRAPPERS[match.group(2)]
            locks.setdefault(mutex, []).append(match.start())
        unlocks: dict[str, list[int]] = {}
        for match in _UNLOCK.finditer(body):
            unlocks.setdefault(match.group(1), []).append(match.start())
        if set(locks) != set(unlocks):
            problems.append(
                f"{path.name}:{name}: locks {sorted(locks)} but unlocks {sorted(unlocks)}"
            )
            continue
        for mutex, positions in locks.items():
            for ret in _RETURN.finditer(body, positions[0], unlocks[mutex][-1]):
                taken = max(p for p in positions if p < ret.start())
                if f"pthread_mutex_unlock(&{mutex})" not in body[taken : ret.start()]:
                    problems.append(f"{path.name}:{name}: a return may keep {mutex} locked")
    return problems


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_allow_threads_blocks_are_paired(path):
    assert allow_threads_problems(path) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_locks_are_released_on_every_return(path):
    assert lock_problems(path) == []


BAD_SOURCE = """
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;

static int keeps_lock(int x) {
    pthread_mutex_lock(&m);
    if (x) {
        return -1; /* still locked */
    }
    pthread_mutex_unlock(&m);
    return 0;
}

static void never_unlocks(void) {
    pthread_mutex_lock(&m);
}

static void unclosed(void) {
    Py_BEGIN_ALLOW_THREADS
        sleep(1);
}
"""


def test_the_lint_finds_planted_mistakes(tmp_path):
    bad = tmp_path / "bad.c"
    bad.write_text(BAD_SOURCE, encoding="utf-8")
    assert lock_problems(bad) == [
        "bad.c:keeps_lock: a return may keep m locked",
        "bad.c:never_unlocks: locks ['m'] but unlocks []",
    ]
    assert allow_threads_problems(bad) == ["bad.c:unclosed: Py_BEGIN_ALLOW_THREADS without its END"]


def _pairs() -> list[tuple[str, str, str, str]]:
    pairs = []
    for path in SOURCES:
        bodies = dict(functions(path))
        for name in bodies:
            if name.endswith("_traverse"):
                partner = name[: -len("_traverse")] + "_clear"
                if partner in bodies:
                    pairs.append((path.name, name, bodies[name], bodies[partner]))
    return pairs


def test_traverse_functions_have_clear_partners():
    assert _pairs(), "no tp_traverse/tp_clear pair found: the lint is looking in the wrong place"


@pytest.mark.parametrize("pair", _pairs(), ids=lambda p: f"{p[0]}:{p[1]}")
def test_traverse_visits_what_clear_clears(pair):
    filename, name, traverse, clear = pair
    visited = set(re.findall(r"Py_VISIT\(([^;]+)\);", traverse))
    cleared = set(re.findall(r"Py_CLEAR\(([^;]+)\);", clear))
    missing = sorted(cleared - visited)
    assert not missing, f"{filename}:{name} does not visit {missing}, which its clear clears"
