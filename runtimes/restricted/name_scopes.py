"""What the transformer needs to know about the names of a guest program's scopes.

`declare_globals` makes a top-level program's module-level names globals (faster reads, same
dict); `range_loops` finds the ``for`` loops over ``range`` whose variable only the loop binds,
`range_comprehension` the comprehensions of that kind. They only read the tree they are given
(`declare_globals` adds one statement to it); the transformer decides what to do with the answers.
"""

from __future__ import annotations

import ast
from collections import Counter
from typing import cast

from RestrictedPython.transformer import copy_locations


def declare_globals(module: ast.Module) -> None:
    """Declare the names ``module`` binds or reads ``global`` in a statement of its own, placed
    after its docstring and ``__future__`` imports, so its module-level code reads them with
    ``LOAD_GLOBAL`` (cached per instruction) rather than ``LOAD_NAME`` (two dict lookups each).

    Only for a top-level program, which the executor runs with its globals as its locals: then
    both read and write the same dict, in the same order (globals, then builtins), and raise the
    same NameError. Nested scopes resolve names as before (a module-level ``global`` only changes
    how module-level code accesses them). Only the module's own scope is read (a name left out
    keeps ``LOAD_NAME``, as correct, only slower); names annotated there stay as they are
    (``x: int`` may not name a global).
    """
    names: set[str] = set()
    annotated: set[str] = set()
    pending: list[ast.AST] = list(module.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        elif isinstance(node, SCOPES):
            continue
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.partition(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotated.add(node.target.id)
        pending.extend(ast.iter_child_nodes(node))
    names -= annotated
    names.discard("*")
    if not names:
        return
    body = module.body
    start = docstring_length(body)
    while start < len(body) and isinstance(body[start], ast.ImportFrom) and cast(ast.ImportFrom, body[start]).module == "__future__":
        start += 1
    declaration = ast.Global(names=sorted(names))
    copy_locations(declaration, body[min(start, len(body) - 1)])
    body.insert(start, declaration)


def docstring_length(body: list[ast.stmt]) -> int:
    """1 when ``body`` starts with a docstring (which must stay first), else 0."""
    first = body[0] if body else None
    return int(isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str))


def _outside_body(node: ast.AST) -> list[ast.AST]:
    """The child nodes of ``node`` other than its ``body``: for a function, lambda or class, what
    runs in the enclosing scope (decorators, defaults, annotations, bases)."""
    return [child for field, value in ast.iter_fields(node) if field != "body"
            for child in (value if isinstance(value, list) else [value]) if isinstance(child, ast.AST)]


SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp, ast.SetComp, ast.DictComp,
          ast.GeneratorExp)
"""Nodes that open a scope of their own."""


def range_loops(function: ast.FunctionDef) -> frozenset[int]:
    """The ``for name in range(...)`` statements of ``function``'s own scope (by ``id``) whose
    ``name`` the function binds nowhere else: a fast local that only the loop assigns, so in the
    loop's body it holds the current element of the range the loop was started with.

    Conservative: every binding of the name in the function's own scope counts (comprehensions
    included, where a walrus binds in the function), and a ``global``/``nonlocal`` naming it
    anywhere, nested scopes included, disqualifies it (a closure that declares it ``nonlocal``
    could rebind it). Linear in the size of the tree over all the functions of a program.
    """
    candidates = _own_range_loops(function.body)
    if not candidates:
        return frozenset()
    binds: Counter[str] = Counter()
    declared: set[str] = set()
    pending: list[ast.AST] = _outside_body(function)
    pending.extend(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, _NESTED):
            # Its body binds its own names; only a ``nonlocal`` in it can rebind ours. Its
            # decorators, defaults, annotations and bases run in this scope: walked as ours.
            declared |= _nonlocal_within(node)
            if not isinstance(node, ast.Lambda):
                binds[node.name] += 1
            pending.extend(_outside_body(node))
            continue
        if isinstance(node, ast.Name):
            if not isinstance(node.ctx, ast.Load):
                binds[node.id] += 1
        elif isinstance(node, ast.arg):
            binds[node.arg] += 1
        elif isinstance(node, ast.alias):
            binds[node.asname or node.name.partition(".")[0]] += 1
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            binds[node.name] += 1
        elif isinstance(node, ast.MatchMapping) and node.rest:
            binds[node.rest] += 1
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            declared.update(node.names)
        pending.extend(ast.iter_child_nodes(node))
    return frozenset(id(loop) for loop in candidates
                     if binds[cast(ast.Name, loop.target).id] == 1 and cast(ast.Name, loop.target).id not in declared)


_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
"""Scopes whose bodies cannot bind an enclosing function's names except through ``nonlocal``."""


def _nonlocal_within(scope: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef) -> frozenset[str]:
    """Every name declared ``nonlocal`` anywhere in ``scope``'s body, nested scopes included.
    Remembered on the node, so a chain of nested functions is read once, not once per level."""
    known = getattr(scope, "_nonlocal_within", None)
    if known is not None:
        return cast(frozenset[str], known)
    names: set[str] = set()
    pending: list[ast.AST] = list(scope.body) if isinstance(scope.body, list) else [scope.body]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Nonlocal):
            names.update(node.names)
        elif isinstance(node, _NESTED):
            names |= _nonlocal_within(node)
            pending.extend(_outside_body(node))
            continue
        pending.extend(ast.iter_child_nodes(node))
    result = frozenset(names)
    setattr(scope, "_nonlocal_within", result)
    return result


def _own_range_loops(statements: list[ast.stmt]) -> list[ast.For]:
    """The ``for name in range(...)`` statements among ``statements`` and the statements nested
    in them, not entering nested function or class bodies (a ``for`` is always a statement)."""
    found: list[ast.For] = []
    pending = list(statements)
    while pending:
        statement = pending.pop()
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(statement, ast.For) and isinstance(statement.target, ast.Name) and _is_range_call(statement.iter):
            found.append(statement)
        for field in ("body", "orelse", "finalbody"):
            pending.extend(getattr(statement, field, ()))
        for handler in getattr(statement, "handlers", ()):
            pending.extend(handler.body)
        for case in getattr(statement, "cases", ()):
            pending.extend(case.body)
    return found


def range_comprehension(node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> str | None:
    """The variable of ``node``'s first ``for`` when that is ``name in range(...)``, no later
    part of ``node`` binds ``name`` (its later ``for`` targets included) and ``node`` holds no
    nested scope anywhere, its first iterable included (the transformer visits an eligible
    comprehension twice: a nested one visited twice at every level would take exponential
    time); else None."""
    first = node.generators[0]
    if not (isinstance(first.target, ast.Name) and _is_range_call(first.iter)):
        return None
    parts: list[ast.AST] = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
    for sub in (sub for part in (*parts, *first.ifs, *node.generators[1:]) for sub in ast.walk(part)):
        if isinstance(sub, SCOPES) or (isinstance(sub, ast.Name) and sub.id == first.target.id
                                       and not isinstance(sub.ctx, ast.Load)):
            return None
    if any(isinstance(sub, SCOPES) for sub in ast.walk(first.iter)):
        return None
    return first.target.id


def _is_range_call(node: ast.expr) -> bool:
    """``range(...)`` with positional arguments only, none starred."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
            and not node.keywords and not any(isinstance(arg, ast.Starred) for arg in node.args))
