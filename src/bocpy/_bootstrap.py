"""Make a worker interpreter's ``__main__`` look like the script's.

This is the Python side of ``binding/bootstrap.c``; the two together are
the bootstrap of worker interpreters.  A behavior defined in a script
refers to the script's imports, functions, classes and constants, so every
worker needs a ``__main__`` that provides them -- without the script's
top-level statements ever running again.  The steps, and the interpreter
each runs in:

1. *Main interpreter*, as the runtime starts (``bocpy.start``):
   :func:`build_bootstrap` builds an *image* of ``__main__``
   (:func:`build_image`, described below) plus ``sys.argv``; the binding
   stores it, serialised, with a copy of ``sys.path``.
2. *Each worker interpreter*, on its worker thread, before it runs any
   behavior: the binding adopts that ``sys.path``, imports bocpy and calls
   :func:`bootstrap`, which replays the image (:func:`apply_image`) into
   the worker's ``__main__`` and hooks the worker's logging to the main
   interpreter's (:func:`sync_logging`).
3. *Main interpreter*, once the runtime has started and on each ``@when``
   that finds ``__main__`` grown: :func:`refresh_main` sends the globals
   the image could not know about (made in the ``__main__`` guard, or after
   the start) as *late binds*, which each worker sets in its ``__main__``
   before its next behavior.
4. *Worker interpreter*, when a behavior raises ``NameError`` for a global
   of the script that could not be sent: :func:`explain_name_error` says
   why.  When its worker thread stops, :func:`shutdown` puts ``__main__``
   back as it was, for the next runtime that reuses the interpreter.

The image
---------

Re-running the script (``python script.py`` or ``python -m pkg.mod``) in a
worker is not an option: its top-level statements (prints, scheduling of
behaviors, creation of resources, the body of an
``if __name__ == "__main__":`` guard or, in unguarded scripts, the whole
program) must run exactly once, in the main interpreter.  So the main
interpreter builds an *image* of the main module (:func:`build_image`) and
each worker replays it (:func:`apply_image`).  An image is an ordered list
of steps:

``("exec", filename, code_bytes)``
    ``marshal.dumps`` of a code object compiled from one *filtered* top-level
    statement of the script.  Filtering keeps only definitions (imports,
    ``def``, ``class``, ``type`` aliases, constant assignments, and ``if`` /
    ``try`` blocks reduced to those), so executing the step re-creates names
    without re-running the program.  Code is compiled with the script's real
    filename and line numbers, and with the script's ``from __future__``
    flags.

``("bind", name, value)``
    Bind ``name`` to ``value``, a value taken from the main module's
    ``__dict__`` when the image was built.  Used for names assigned by
    top-level code that cannot or must not be re-run (results of calls,
    cowns returned by ``@when``-decorated functions, ...), provided the
    value can be transferred to another interpreter.

The image always starts with a bind of ``__file__`` (and of ``__package__``
when the script was run with ``-m`` from a package), so the caller does not
need to set them.  ``__name__`` is never bound: :func:`apply_image` keeps it
at ``"__main__"``.

Known, accepted differences from the main interpreter:

* a bind carries the *final* value of a name at build time, placed at the
  position of the name's first assignment (binds for names assigned inside
  a kept ``if``/``try`` block are placed just before that block);
* names assigned inside skipped top-level ``with``/``for``/``while``/``match``
  blocks are bound when transferable; names assigned only inside the body of
  the ``__main__`` guard are not;
* decorators, default arguments, class bodies and the tests of top-level
  ``if`` statements are evaluated again in the worker;
* the ``else`` branch of an ``if __name__ == "__main__":`` guard (the branch
  that did *not* run in the main interpreter) is filtered and kept.
"""

import __future__

import ast
import atexit
import gc
import marshal
import sys
import tokenize
import traceback
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _core, _logging

#: Decorator names that schedule a behavior when the decorated function is
#: defined.  A top-level ``def``/``class`` decorated with ``@when(...)`` or
#: ``@anything.when(...)`` is never re-executed in a worker.
SCHEDULING_DECORATORS: frozenset[str] = frozenset({"when"})

#: Names that an image never assigns, whatever the script does with them.
_PROTECTED_NAMES: frozenset[str] = frozenset(
    {
        "__name__",
        "__builtins__",
        "__spec__",
        "__loader__",
        "__cached__",
        "__file__",
        "__package__",
    }
)

#: Nodes whose presence in an expression means evaluating it runs code that
#: the filter must not repeat.
_SIDE_EFFECT_NODES: tuple[type[ast.AST], ...] = (
    ast.Call,
    ast.Await,
    ast.Yield,
    ast.YieldFrom,
    ast.NamedExpr,
)

#: Top-level statements that are skipped, but whose assigned names are bound.
_SKIPPED_BLOCKS: tuple[type[ast.stmt], ...] = (
    ast.With,
    ast.AsyncWith,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.Match,
)

#: Statements kept as they are.
_KEPT_STATEMENTS: tuple[type[ast.stmt], ...] = (
    ast.Import,
    ast.ImportFrom,
    ast.TypeAlias,
)


Step = tuple[Any, ...]
"""One image step: ``("exec", filename, code_bytes)`` or ``("bind", name, value)``."""


@dataclass(frozen=True)
class _Bind:
    """Marker produced by the filter: bind ``name`` from the main module."""

    name: str


_Item = ast.stmt | _Bind


# --------------------------------------------------------------------------
# Building (main interpreter)
# --------------------------------------------------------------------------


@dataclass
class ImageReport:
    """What an image leaves out or re-runs, for explaining a worker's ``NameError``.

    ``unsent`` maps a global that workers will not have to the reason.
    ``rerun`` maps a global whose assignment workers re-run (its value
    could not be sent) to the line of that assignment: if re-running it
    fails there, the worker says so.
    """

    unsent: dict[str, str] = field(default_factory=dict)
    rerun: dict[str, int] = field(default_factory=dict)


def build_image(
    module: types.ModuleType,
    is_transferable: Callable[[object], bool],
    *,
    source: tuple[str, str] | None = None,
    report: ImageReport | None = None,
) -> list[Step]:
    """Build the image of ``module`` (normally ``sys.modules["__main__"]``).

    Runs in the main interpreter, after (part of) the script has executed.

    :param module: The main module.  Its source is read from ``__file__``
        (falling back to the module's loader).
    :param is_transferable: Predicate telling whether a value can be sent to
        a worker interpreter.  An exception raised by it counts as ``False``.
    :param source: ``(filename, text)`` of a script that has no file (the
        code given to ``python -c``); used instead of ``__file__``.
    :param report: Filled with what workers will lack and why, and with
        the assignments they re-run (see :class:`ImageReport`).
    :return: The ordered list of steps; it starts with a bind of
        ``__file__`` (when the module has one, and of ``__package__`` when
        it is a non-empty string).  Empty if the module has no usable
        source: no ``__file__`` (REPL, stdin, frozen) and no ``source``,
        unreadable file, or a syntax error.
    """
    filename = getattr(module, "__file__", None)
    text: str | None
    if source is not None:
        filename, text = source
    elif isinstance(filename, str):
        text = _read_source(module, filename)
    else:
        return []
    if text is None:
        return []
    global _last_parse
    if _last_parse is not None and (_last_parse.filename, _last_parse.source) == (filename, text):
        parsed = _last_parse
    else:
        try:
            tree = ast.parse(text, filename)
        except (SyntaxError, ValueError, RecursionError):
            return []
        parsed = _last_parse = _Parsed(filename, text, tree, _future_flags(tree))

    builder = _Builder(
        namespace=vars(module),
        is_transferable=is_transferable,
        parsed=parsed,
        report=report if report is not None else ImageReport(),
    )
    tree = parsed.tree
    steps: list[Step] = []
    if source is None:
        steps.append(("bind", "__file__", filename))
    package = getattr(module, "__package__", None)
    if isinstance(package, str) and package:
        steps.append(("bind", "__package__", package))
    steps.extend(builder.build(tree.body))
    return steps


def _read_source(module: types.ModuleType, filename: str) -> str | None:
    """Return the source of ``module``, or ``None`` if it cannot be read."""
    try:
        with tokenize.open(filename) as stream:
            return stream.read()
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        pass
    # Zip applications and other loaders: ask the loader.
    spec = getattr(module, "__spec__", None)
    loader = getattr(spec, "loader", None) or getattr(module, "__loader__", None)
    get_source = getattr(loader, "get_source", None)
    if get_source is None:
        return None
    name = getattr(spec, "name", None) or module.__name__
    try:
        source = get_source(name)
    except Exception:
        return None
    return source if isinstance(source, str) else None


def _future_flags(tree: ast.Module) -> int:
    """Return the compiler flags of the ``from __future__`` imports in ``tree``."""
    flags = 0
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                feature = getattr(__future__, alias.name, None)
                flags |= getattr(feature, "compiler_flag", 0)
    return flags


@dataclass
class _Parsed:
    """A script parsed once, and its statements compiled once, for every start.

    A program that calls ``wait()`` and schedules again starts a runtime,
    and builds an image, each time; parsing and compiling dominate that
    cost, and the script rarely changes.  Compiled statements are keyed by
    the identity of their node in ``tree``, which this object keeps alive;
    statements the filter rebuilds (inside ``if``/``try``) are new nodes
    each time and are simply compiled again.
    """

    filename: str  # code objects carry it (co_filename)
    source: str
    tree: ast.Module
    flags: int
    compiled: dict[int, bytes | None] = field(default_factory=dict)
    #: Identities of the tree's statements: only these are cached, since a
    #: node the filter builds dies after the build and its id may be reused.
    nodes: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.nodes = frozenset(id(node) for node in ast.walk(self.tree))

    def marshalled(self, node: ast.stmt) -> bytes | None:
        """The marshalled code of ``node``, compiled once if it is the tree's own."""
        cacheable = id(node) in self.nodes
        if cacheable and id(node) in self.compiled:
            return self.compiled[id(node)]
        code = self._compile(node)
        marshalled = None if code is None else marshal.dumps(code)
        if cacheable:
            self.compiled[id(node)] = marshalled
        return marshalled

    def _compile(self, node: ast.stmt) -> types.CodeType | None:
        """Compile one (filtered) statement, keeping its line numbers."""
        module = ast.Module(body=[node], type_ignores=[])
        ast.fix_missing_locations(module)
        try:
            code: types.CodeType = compile(
                module, self.filename, "exec", flags=self.flags, dont_inherit=True
            )
            return code
        except (SyntaxError, ValueError, TypeError):
            return None


#: The last script parsed by ``build_image`` (normally the only one).
_last_parse: _Parsed | None = None


@dataclass
class _Builder:
    """Filters the statements of one module and turns them into steps."""

    namespace: dict[str, Any]
    is_transferable: Callable[[object], bool]
    parsed: _Parsed
    report: ImageReport
    _bound: set[str] = field(default_factory=set)
    _transferable: dict[str, bool] = field(default_factory=dict)
    #: Names the image defines by running statements: imports, functions,
    #: classes, and assignments it keeps.
    _defined: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._defined.update(_definitions(self.parsed.tree.body))

    # -- steps --------------------------------------------------------------

    def build(self, body: list[ast.stmt]) -> list[Step]:
        """Return the steps for the top-level statements ``body``."""
        steps: list[Step] = []
        for node in body:
            for item in self._filter_stmt(node):
                if isinstance(item, _Bind):
                    steps.append(("bind", item.name, self.namespace[item.name]))
                else:
                    marshalled = self.parsed.marshalled(item)
                    if marshalled is not None:
                        steps.append(("exec", self.parsed.filename, marshalled))
        return steps

    # -- binds --------------------------------------------------------------

    def _bindable(self, name: str) -> bool:
        """Whether ``name`` exists in the main module and can be transferred."""
        if name in _PROTECTED_NAMES or name not in self.namespace:
            return False
        if name not in self._transferable:
            try:
                ok = bool(self.is_transferable(self.namespace[name]))
            except Exception:
                ok = False
            self._transferable[name] = ok
        return self._transferable[name]

    def _binds(self, names: Iterable[str]) -> list[_Item]:
        """Return bind markers for the bindable ``names`` not yet bound."""
        items: list[_Item] = []
        for name in names:
            if name not in self._bound and self._bindable(name):
                self._bound.add(name)
                self._defined.add(name)
                items.append(_Bind(name))
        return items

    # -- filtering ----------------------------------------------------------

    def _filter_stmt(self, node: ast.stmt) -> list[_Item]:
        """Filter one statement into kept statements and binds, in order."""
        if isinstance(node, _KEPT_STATEMENTS):
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                return []  # applied as a compile flag to every step
            return [node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if any(_is_scheduling(d) for d in node.decorator_list):
                return self._binds([node.name])
            return [node]
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            return self._filter_assignment(node)
        if isinstance(node, ast.If):
            return self._filter_if(node)
        if isinstance(node, (ast.Try, ast.TryStar)):
            return self._filter_try(node)
        if isinstance(node, _SKIPPED_BLOCKS):
            names = _assigned_names(node)
            for name in names:
                if name in self.namespace and not self._bindable(name):
                    value = self.namespace[name]
                    self.report.unsent.setdefault(
                        name,
                        f"its value, a {type(value).__name__!r}, cannot be sent "
                        f"({_pickling_error(value)}), and it is assigned inside a top-level "
                        f"'{type(node).__name__.lower()}' block (line {node.lineno}), which "
                        "workers do not run",
                    )
            return self._binds(names)
        # Expressions (calls, docstrings), del, global, assert, raise, ...
        return []

    def _filter_block(self, body: list[ast.stmt]) -> tuple[list[ast.stmt], list[_Item]]:
        """Filter a nested block; binds are hoisted out of it."""
        kept: list[ast.stmt] = []
        binds: list[_Item] = []
        for node in body:
            for item in self._filter_stmt(node):
                if isinstance(item, _Bind):
                    binds.append(item)
                else:
                    kept.append(item)
        return kept, binds

    def _filter_assignment(self, node: ast.Assign | ast.AnnAssign | ast.AugAssign) -> list[_Item]:
        """Filter a top-level assignment.

        Names with a transferable value are bound.  If some names are not,
        the statement is executed instead when it is a constant expression
        assigning plain names only.
        """
        if isinstance(node, ast.Assign):
            targets = node.targets
        else:
            targets = [node.target]
        value = node.value
        if value is None:  # bare annotation ``x: int``
            return []
        names: list[str] = []
        plain = True
        for target in targets:
            plain &= _collect_target_names(target, names)
        walrus = [n.target.id for n in ast.walk(value) if isinstance(n, ast.NamedExpr)]
        expressions: list[ast.expr] = [value]
        if isinstance(node, ast.AnnAssign) and not (
            self.parsed.flags & __future__.annotations.compiler_flag
        ):
            expressions.append(node.annotation)

        items: list[_Item] = []
        unbindable = [n for n in names if not self._bindable(n)]
        # Only a value that exists in the main module (and cannot be sent)
        # is re-created by re-running its assignment.  A name the script has
        # not assigned yet -- a statement below the point where the image is
        # built, such as ``tag, got = receive(...)`` after ``wait()`` --
        # must not run in workers: its call would happen once per worker.
        rerun = (
            unbindable
            and all(n in self.namespace for n in unbindable)
            and plain
            and not _PROTECTED_NAMES.intersection(names)
            and not isinstance(node, ast.AugAssign)
            and all(self._rerunnable(e) for e in expressions)
        )
        if rerun or (
            unbindable
            and plain
            and not _PROTECTED_NAMES.intersection(names)
            and all(_is_constant_expression(e) for e in expressions)
        ):
            items.append(node)
            self._defined.update(names)
            for name in unbindable:
                self.report.rerun[name] = node.lineno
                self.report.unsent.pop(name, None)
        else:
            for name in unbindable:
                if name in self.namespace and name not in self._bound:
                    self.report.unsent[name] = self._why_not_rerun(node, name)
        items.extend(self._binds(names + walrus))
        return items

    def _rerunnable(self, expression: ast.expr) -> bool:
        """Whether ``expression`` only uses imports, functions, classes and literals.

        Such an expression may call things (``threading.Lock()``,
        ``logging.getLogger(__name__)``, ``re.compile("x", re.I)``): a
        worker evaluates it again when its value cannot be sent.
        """
        return not _unknown_names(expression, self._defined)

    def _why_not_rerun(self, node: ast.stmt, name: str) -> str:
        """Why the global ``name`` assigned by ``node`` does not reach workers."""
        value = self.namespace[name]
        why = f"its value, a {type(value).__name__!r}, cannot be sent ({_pickling_error(value)})"
        value_node = getattr(node, "value", None)
        unknown = _unknown_names(value_node, self._defined) if value_node is not None else []
        if isinstance(node, ast.AugAssign):
            rerun = "an augmented assignment is not re-run in workers"
        elif unknown:
            rerun = (
                f"its assignment (line {node.lineno}) is not re-run in workers because it "
                f"uses {', '.join(repr(n) for n in unknown)}, not only imports, functions, "
                "classes and literals"
            )
        else:
            rerun = f"its assignment (line {node.lineno}) cannot be re-run in workers"
        return f"{why}, and {rerun}"

    def _filter_if(self, node: ast.If) -> list[_Item]:
        """Filter an ``if``; a ``__main__`` guard keeps only its other branch."""
        guard = _main_guard_branch(node.test)
        if guard is not None:
            other = node.orelse if guard else node.body
            items: list[_Item] = []
            for child in other:
                items.extend(self._filter_stmt(child))
            return items
        body, binds = self._filter_block(node.body)
        orelse, else_binds = self._filter_block(node.orelse)
        binds += else_binds
        if not body and not orelse:
            return binds
        new = ast.If(test=node.test, body=body or _pass(node), orelse=orelse)
        return [*binds, ast.copy_location(new, node)]

    def _filter_try(self, node: ast.Try | ast.TryStar) -> list[_Item]:
        """Filter a ``try`` (or ``try*``) statement, block by block."""
        body, binds = self._filter_block(node.body)
        handlers: list[ast.ExceptHandler] = []
        any_kept = bool(body)
        for handler in node.handlers:
            kept, handler_binds = self._filter_block(handler.body)
            binds += handler_binds
            any_kept |= bool(kept)
            new_handler = ast.ExceptHandler(
                type=handler.type, name=handler.name, body=kept or _pass(handler)
            )
            handlers.append(ast.copy_location(new_handler, handler))
        orelse, else_binds = self._filter_block(node.orelse)
        final, final_binds = self._filter_block(node.finalbody)
        binds += else_binds + final_binds
        if not (any_kept or orelse or final):
            return binds
        new = type(node)(
            body=body or _pass(node),
            handlers=handlers,
            orelse=orelse,
            finalbody=final,
        )
        return [*binds, ast.copy_location(new, node)]


#: Builtins a re-run assignment may call: they only compute.  Others
#: (``open``, ``print``, ``input``, ``exec``, ...) act on the world.
_PURE_BUILTINS: frozenset[str] = frozenset(
    {
        "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable",
        "chr", "complex", "dict", "divmod", "enumerate", "filter", "float", "format",
        "frozenset", "getattr", "hasattr", "hash", "hex", "int", "isinstance",
        "issubclass", "iter", "len", "list", "map", "max", "min", "next", "object",
        "oct", "ord", "pow", "property", "range", "repr", "reversed", "round", "set",
        "slice", "sorted", "str", "sum", "tuple", "type", "zip", "True", "False",
        "None", "Ellipsis", "NotImplemented", "classmethod", "staticmethod",
    }
)  # fmt: skip

#: Module globals that every worker's ``__main__`` has.
_MODULE_DUNDERS: frozenset[str] = frozenset({"__name__", "__file__", "__doc__"})


def _definitions(body: list[ast.stmt]) -> set[str]:
    """Names bound by the imports, ``def`` and ``class`` statements of ``body``.

    Blocks of top-level ``if`` and ``try`` statements count (their
    definitions are kept); ``@when``-decorated definitions do not.
    """
    names: set[str] = set()
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name != "*":
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not any(_is_scheduling(d) for d in node.decorator_list):
                names.add(node.name)
        elif isinstance(node, ast.If):
            names |= _definitions(node.body) | _definitions(node.orelse)
        elif isinstance(node, (ast.Try, ast.TryStar)):
            names |= _definitions(node.body) | _definitions(node.orelse)
            names |= _definitions(node.finalbody)
            for handler in node.handlers:
                names |= _definitions(handler.body)
    return names


def _unknown_names(expression: ast.AST, defined: set[str]) -> list[str]:
    """Names ``expression`` reads that are not ``defined``, pure builtins or its own.

    Its own names are the parameters of its lambdas and the targets of its
    comprehensions.  Walruses, ``await`` and ``yield`` count as unknown.
    """
    local: set[str] = set()
    for node in ast.walk(expression):
        if isinstance(node, ast.Lambda):
            arguments = node.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
                local.add(arg.arg)
            for extra in (arguments.vararg, arguments.kwarg):
                if extra is not None:
                    local.add(extra.arg)
        elif isinstance(node, ast.comprehension):
            names: list[str] = []
            _collect_target_names(node.target, names)
            local.update(names)
    unknown: list[str] = []
    for node in ast.walk(expression):
        if isinstance(node, (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            return [f"<{type(node).__name__.lower()}>"]
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            name = node.id
            known = name in defined or name in local or name in _MODULE_DUNDERS
            if not known and name not in _PURE_BUILTINS and name not in unknown:
                unknown.append(name)
    return unknown


def _pickling_error(value: object) -> str:
    """The error pickling ``value`` raises, as ``Type: message``."""
    import pickle

    try:
        pickle.dumps(value)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "it cannot cross to another interpreter"


def _pass(node: ast.AST) -> list[ast.stmt]:
    """Return a block made of one ``pass`` located at ``node``."""
    return [ast.copy_location(ast.Pass(), node)]


def _is_scheduling(decorator: ast.expr) -> bool:
    """Whether ``decorator`` is ``when(...)``, ``x.when(...)`` (or bare ``when``)."""
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Name):
        return target.id in SCHEDULING_DECORATORS
    if isinstance(target, ast.Attribute):
        return target.attr in SCHEDULING_DECORATORS
    return False


def _main_guard_branch(test: ast.expr) -> bool | None:
    """Classify an ``if`` test against ``__name__ == "__main__"``.

    :return: ``True`` for ``__name__ == "__main__"`` (either order),
        ``False`` for ``__name__ != "__main__"``, ``None`` otherwise.
    """
    if not (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], (ast.Eq, ast.NotEq))
    ):
        return None
    sides = (test.left, test.comparators[0])
    has_name = any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides)
    has_main = any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)
    if not (has_name and has_main):
        return None
    return isinstance(test.ops[0], ast.Eq)


def _collect_target_names(target: ast.expr, names: list[str]) -> bool:
    """Append the plain names assigned by ``target`` to ``names``.

    :return: ``True`` if ``target`` assigns plain names only (no attribute
        or subscript targets).
    """
    if isinstance(target, ast.Name):
        names.append(target.id)
        return True
    if isinstance(target, ast.Starred):
        return _collect_target_names(target.value, names)
    if isinstance(target, (ast.Tuple, ast.List)):
        plain = True
        for element in target.elts:
            plain &= _collect_target_names(element, names)
        return plain
    return False


def _assigned_names(node: ast.AST) -> list[str]:
    """Names assigned by assignments and walruses in ``node``.

    Function and class bodies are not entered: their names are local.
    """
    names: list[str] = []
    for child in _walk_module_scope(node):
        if isinstance(child, ast.Assign):
            for target in child.targets:
                _collect_target_names(target, names)
        elif isinstance(child, (ast.AnnAssign, ast.AugAssign)):
            if child.value is not None or isinstance(child, ast.AugAssign):
                _collect_target_names(child.target, names)
        elif isinstance(child, ast.NamedExpr):
            names.append(child.target.id)
    return names


def _walk_module_scope(node: ast.AST) -> Iterator[ast.AST]:
    """Like :func:`ast.walk`, without entering nested scopes' bodies."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        yield from _walk_module_scope(child)


def _is_constant_expression(node: ast.AST) -> bool:
    """Whether evaluating ``node`` calls nothing.

    Literals, names, attributes, subscripts, operators, containers,
    comprehensions and f-strings qualify as long as they contain no call,
    ``await``, ``yield`` or walrus.  A ``lambda`` qualifies if its default
    values do: its body only runs when it is called.
    """
    if isinstance(node, _SIDE_EFFECT_NODES):
        return False
    if isinstance(node, ast.Lambda):
        defaults = [*node.args.defaults, *node.args.kw_defaults]
        return all(d is None or _is_constant_expression(d) for d in defaults)
    return all(_is_constant_expression(c) for c in ast.iter_child_nodes(node))


# --------------------------------------------------------------------------
# Applying (worker interpreter)
# --------------------------------------------------------------------------


def apply_image(
    image: list[Step],
    namespace: dict[str, Any],
    load: Callable[[Any], Any] | None = None,
) -> list[str]:
    """Replay ``image`` into ``namespace`` (a worker's ``__main__`` dict).

    Steps run in order.  A failing step is skipped without aborting the
    rest; failed steps are retried once, in order, after the first pass
    (they may depend on a name provided by a later step).  With ``load``,
    each bind's value is passed through it when the bind is applied: the
    worker unpickles bind values one at a time, at their place in the
    image, so a value of a class the script defines finds that class.
    ``namespace["__name__"]`` is set to ``"__main__"`` first and restored
    after any step that changes it.

    :return: One warning per step that still failed, such as
        ``"line 12: NameError: name 'x' is not defined"``.
    """
    namespace["__name__"] = "__main__"
    failed: list[tuple[int, Step, str]] = []
    for index, step in enumerate(image):
        error = _apply_step(step, namespace, load)
        if error is not None:
            failed.append((index, step, error))

    warnings: list[str] = []
    for index, step, error in failed:
        if _step_kind(step) is not None:
            error = _apply_step(step, namespace, load)
            if error is None:
                continue
        warnings.append(error or f"step {index}: failed")
    return warnings


def _step_kind(step: object) -> str | None:
    """Return the kind of ``step`` (``"exec"``/``"bind"``) if well formed."""
    if isinstance(step, tuple) and len(step) == 3 and step[0] in ("exec", "bind"):
        return str(step[0])
    return None


def _apply_step(
    step: Step, namespace: dict[str, Any], load: Callable[[Any], Any] | None = None
) -> str | None:
    """Apply one step; return a warning string on failure, else ``None``."""
    kind = _step_kind(step)
    try:
        if kind == "bind":
            _, name, value = step
            if name in _PROTECTED_NAMES - {"__file__", "__package__"}:
                return f"bind {name!r}: refusing to bind a protected name"
            namespace[name] = load(value) if load is not None else value
            return None
        if kind != "exec":
            return f"malformed step: {step!r:.60}"
        _, filename, code_bytes = step
        code = marshal.loads(code_bytes)
    except Exception as exc:
        return f"{_describe(step)}: {type(exc).__name__}: {exc}"

    if not isinstance(code, types.CodeType):
        return f"{filename}: step is not a code object"
    try:
        exec(code, namespace)
    except (Exception, SystemExit) as exc:
        return f"line {_failing_line(exc, code)}: {type(exc).__name__}: {exc}"
    finally:
        if namespace.get("__name__") != "__main__":
            namespace["__name__"] = "__main__"
    return None


def _describe(step: object) -> str:
    """Short description of a step for warnings about malformed steps."""
    if isinstance(step, tuple) and len(step) == 3 and step[0] == "bind":
        return f"bind {step[1]!r}"
    return "exec step"


def _failing_line(exc: BaseException, code: types.CodeType) -> int | str:
    """Line of the step's statement that raised ``exc``."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code and tb.tb_lineno is not None:
            return tb.tb_lineno
        tb = tb.tb_next
    lines = [line for _, _, line in code.co_lines() if line is not None]
    return min(lines) if lines else "?"


# --------------------------------------------------------------------------
# The bootstrap of a worker (main interpreter, then each worker)
# --------------------------------------------------------------------------

#: Warnings from applying the ``__main__`` image in this worker (for debugging).
image_warnings: list[str] = []

#: Main interpreter: the ``__main__`` globals workers already know about.
_known_main_names: set[str] = set()

#: Main interpreter: globals that do not reach workers, and why.
_unsent: dict[str, str] = {}

#: The global under which late reasons reach a worker's ``__main__``.
UNSENT_NAME = "__bocpy_unsent__"

#: Worker interpreter: globals of the script this worker lacks, and why.
_missing: dict[str, str] = {}


def build_bootstrap() -> tuple[dict[str, Any], list[Any]]:
    """Main interpreter: the bootstrap header and the bind values it refers to."""
    main = sys.modules.get("__main__")
    steps: list[tuple[Any, ...]] = []
    values: list[Any] = []
    report = ImageReport()
    _known_main_names.clear()
    _unsent.clear()
    if main is not None:
        image = build_image(
            main, _core._is_transferable, source=_command_source(main), report=report
        )
        if not image:
            image = _sourceless_imports(main)
            report.unsent.update(_sourceless_unsent(main))
        for step in image:
            if step[0] == "bind":
                _known_main_names.add(step[1])
                values.append(step[2])
                steps.append(("bind", step[1], len(values) - 1))
            else:
                steps.append(step)
    _known_main_names.update(report.unsent, report.rerun)
    _unsent.update(report.unsent)
    # sys.path travels separately (the binding sets it before importing bocpy).
    header = {
        "argv": list(sys.argv),
        "steps": steps,
        "unsent": dict(report.unsent),
        "rerun": dict(report.rerun),
    }
    return header, values


def _command_source(main: Any) -> tuple[str, str] | None:
    """``("<string>", code)`` when the script is ``python -c code``, else ``None``.

    The code of ``-c`` is in ``sys.orig_argv``: it is the argument of the
    first ``-c`` option (possibly grouped with other one-letter options).
    """
    if getattr(main, "__file__", None) is not None or sys.argv[:1] != ["-c"]:
        return None
    argv = list(getattr(sys, "orig_argv", []))[1:]
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            return None  # a script, or standard input
        if arg.startswith("--"):
            i += 2 if arg in ("--check-hash-based-pycs",) else 1
            continue
        for position in range(1, len(arg)):
            option = arg[position]
            rest = arg[position + 1 :]
            if option == "c":
                code = rest if rest else (argv[i + 1] if i + 1 < len(argv) else None)
                return None if code is None else ("<string>", code)
            if option in "WX":
                i += 0 if rest else 1  # the value is the rest, or the next argument
                break
            if option == "m":
                return None
        i += 1
    return None


def _sourceless_imports(main: Any) -> list[tuple[Any, ...]]:
    """Image steps that import, in a worker, the modules ``main`` has as globals.

    For a script read from standard input (or the REPL) there is no source
    to filter; its modules are re-imported by name.  A module that fails to
    import in a worker is skipped.
    """
    lines: list[str] = []
    for name, value in list(vars(main).items()):
        real = getattr(value, "__name__", None)
        if not isinstance(value, type(sys)) or not isinstance(real, str):
            continue
        if name.startswith("__") or not name.isidentifier():
            continue
        if not all(part.isidentifier() for part in real.split(".")):
            continue
        statement = f"import {real}" if name == real else f"import {real} as {name}"
        lines.append(f"try:\n    {statement}\nexcept Exception:\n    pass\n")
    if not lines:
        return []
    code = compile("".join(lines), "<bocpy: modules of __main__>", "exec")
    return [("exec", code.co_filename, marshal.dumps(code))]


def _sourceless_unsent(main: Any) -> dict[str, str]:
    """Why each untransferable global of a sourceless script cannot reach workers."""
    unsent: dict[str, str] = {}
    for name, value in list(vars(main).items()):
        if name.startswith("__") or isinstance(value, type(sys)):
            continue
        if not _core._is_transferable(value):
            unsent[name] = (
                f"its value, a {type(value).__name__!r}, cannot be sent "
                f"({_pickling_error(value)}), and the script has no source "
                "file whose assignment workers could re-run"
            )
    return unsent


def refresh_main() -> None:
    """Main interpreter: send workers the ``__main__`` globals made since start.

    The image holds what the script's top level assigns; globals made any
    other way (in the ``__main__`` guard, through a ``global`` statement, or
    after the first ``@when``) are sent from here.  Called once the runtime
    has started, and by the binding whenever ``__main__``'s namespace grows.
    A global that cannot be sent is recorded, so that a worker's
    ``NameError`` for it says why.
    """
    main = sys.modules.get("__main__")
    if main is None:
        return
    unsent = len(_unsent)
    for name in list(main.__dict__.keys() - _known_main_names):
        _known_main_names.add(name)
        value = main.__dict__[name]
        if name.startswith("__") or isinstance(value, type(sys)):
            continue  # dunders, and modules (the image imported those)
        if _core._is_transferable(value):
            _core._add_late_bind(name, value)
        else:
            _unsent[name] = (
                f"its value, a {type(value).__name__!r}, cannot be sent "
                f"({_pickling_error(value)}), and it was not assigned by a "
                "top-level statement that workers could re-run (it was assigned in the "
                "'if __name__ == \"__main__\":' block, in a function, or after the "
                "runtime started)"
            )
    if len(_unsent) != unsent:
        _core._add_late_bind(UNSENT_NAME, dict(_unsent))


def explain_name_error(exc: BaseException) -> None:
    """Worker: say why a ``NameError`` for one of the script's globals happened.

    Called by the binding for an exception a behavior raised.  When the
    missing name is a global of the script that could not be sent to
    workers, the message names it and gives the reason.
    """
    if type(exc) is not NameError:
        return
    name = getattr(exc, "name", None)
    main = sys.modules.get("__main__")
    if not isinstance(name, str) or main is None:
        return
    namespace = main.__dict__
    late = namespace.get(UNSENT_NAME)
    reason = _missing.get(name) or (late.get(name) if isinstance(late, dict) else None)
    if reason is None:
        return
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is not None and tb.tb_frame.f_globals is not namespace:
        return  # a name missing from another module
    exc.args = (
        f"name {name!r} is not defined in this worker: the script's global {name!r} "
        f"could not be sent to worker interpreters: {reason}",
    )


#: Worker interpreter: its ``__main__`` namespace as it was when new.
_pristine_main: dict[str, Any] | None = None


def _reset_main() -> None:
    """Worker interpreter: put ``__main__`` back as it was when new.

    The binding's code caches go too: they hold the code objects of the
    script's functions as this run's image made them, and the next image
    makes new ones.
    """
    if _pristine_main is not None:
        namespace = sys.modules["__main__"].__dict__
        namespace.clear()
        namespace.update(_pristine_main)
        _core._forget_code()


def bootstrap() -> None:
    """Worker interpreter: adopt the main interpreter's paths and ``__main__``.

    Runs each time a runtime starts a worker in this interpreter.  Worker
    interpreters outlive their runtime (the binding keeps them for the next
    one); ``shutdown`` put ``__main__`` back as it was when the interpreter
    was new, so the image gives the script's globals their values as of
    this start, exactly as in a fresh interpreter, and nothing a behavior
    left there carries over.  Other modules stay
    imported, with whatever state they hold, as in any long-lived process.
    """
    global _pristine_main
    main = sys.modules["__main__"]
    if _pristine_main is None:
        _pristine_main = dict(main.__dict__)
    header = _core._bootstrap_header()
    if header is None:
        return
    sys.argv[:] = header["argv"]
    sync_logging()
    image_warnings[:] = apply_image(header["steps"], main.__dict__, load=_core._bootstrap_value)
    _missing.clear()
    _missing.update(header.get("unsent", {}))
    for name, line in header.get("rerun", {}).items():
        if name not in main.__dict__:
            prefix = f"line {line}: "
            failure = next((w[len(prefix) :] for w in image_warnings if w.startswith(prefix)), None)
            _missing[name] = (
                f"its value cannot be pickled, and re-running its assignment (line {line}) "
                f"in the worker failed ({failure or 'it did not assign it'})"
            )


def sync_logging() -> None:
    """Worker: send logged records to the main interpreter, at its levels.

    Runs at bootstrap, and (from the binding) before a behavior whenever
    the main interpreter's levels changed.
    """
    _logging.sync_worker()


def shutdown() -> None:
    """Worker interpreter, as its worker thread stops: leave nothing behind.

    The interpreter is kept for the next runtime rather than ended, so this
    does what ending it used to do for ``wait()``: it waits for the threads
    behaviors started, runs the ``atexit`` callbacks they registered, puts
    ``__main__`` back as it was when the interpreter was new (letting go of
    the cowns, files and memory the script's image and the behaviors left
    there), collects garbage and flushes what behaviors printed.  Each step
    runs even if an earlier one failed.
    """
    for step in (_join_threads, _run_atexit, _drop_dummy_thread, _reset_main, gc.collect, _flush):
        try:
            step()
        except Exception:  # reported, and the worker still stops cleanly
            traceback.print_exc()


def _join_threads() -> None:
    """Wait for the threads behaviors started (workers allow no daemons)."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    # Neither this thread nor the interpreter's "main" thread (in a
    # sub-interpreter it stands for the process's main thread) was started
    # by a behavior, and neither was a dummy made for a foreign thread.
    skip = (threading.current_thread(), threading.main_thread())
    for thread in threading.enumerate():
        dummy = isinstance(thread, threading._DummyThread)
        if thread not in skip and not thread.daemon and not dummy:
            thread.join()


def _run_atexit() -> None:
    """Run, once, the ``atexit`` callbacks behaviors registered here."""
    atexit._run_exitfuncs()
    atexit._clear()


def _drop_dummy_thread() -> None:
    """Forget the dummy ``Thread`` that ``threading`` made for this thread.

    A behavior that used ``threading`` (directly, or through ``logging`` or
    ``asyncio``) leaves one for the worker thread.  Dropping the reference
    now removes it from ``threading``'s table, so a kept interpreter does
    not collect one per runtime; it also avoids a clean-up that, on CPython
    before 3.13.3 (gh-130522), runs after an ending interpreter has started
    to go and prints an ignored ``TypeError``.
    """
    threading = sys.modules.get("threading")
    info = getattr(threading, "_thread_local_info", None)
    if info is not None and hasattr(info, "_track_dummy_thread_ref"):
        del info._track_dummy_thread_ref


def _flush() -> None:
    """``wait()`` promises that what behaviors printed is out when it returns."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
