"""The restricted guest's whole reachable surface, compared with a reviewed snapshot.

Every builtin, every name of every allowed module proxy, and the public attributes of every
class reachable from those (transitively, each class once) are listed with the kind of value
they are, in `restricted_surface.txt`. A name that appears or disappears fails the test until
the change is reviewed and the snapshot regenerated::

    python -m tests.test_restricted_surface      # rewrite tests/restricted_surface.txt

The walk also asserts that nothing reachable is a module, a code object, a frame, a generator
or coroutine, a cell, or a bound method of a host object other than the guest's own stdlib
objects (a `Random` generator of the guest's own): such values are what escapes are built from.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from runtimes.restricted import GuestState, execute
from runtimes.restricted.modules import ALLOWED_MODULES, MODULES, SURFACE

SNAPSHOT = Path(__file__).with_name("restricted_surface.txt")
LIMITS = {"cpu_seconds": 2.0, "wall_seconds": 5.0, "memory_bytes": 64 << 20, "max_output_bytes": 1 << 16, "max_recursion_depth": 200}
_FORBIDDEN_KINDS = (
    types.ModuleType, types.CodeType, types.FrameType, types.TracebackType, types.GeneratorType,
    types.CoroutineType, types.CellType,
)
_BOUND_OK = frozenset({"random.Random"})
"""Classes whose bound methods the guest may hold (each import of ``random`` gets its own generator)."""


def _guest_builtins() -> dict[str, Any]:
    state = GuestState()
    result = execute("1", limits=LIMITS, call_host=lambda *a: None, capabilities=["cap.call"], secrets=[("key", "t", "d")], state=state)
    assert result["ok"], result
    return dict(state.builtins)


def _public(obj: Any) -> list[str]:
    try:
        names = dir(obj)
    except Exception:  # noqa: BLE001 - an object without a usable dir() has no listed surface
        return []
    return sorted(name for name in names if not name.startswith("_"))


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return "class"
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def walk() -> Iterator[tuple[str, Any]]:
    """(path, value) for every name the guest can reach, classes expanded once each."""
    roots: list[tuple[str, Any]] = [(f"builtins.{name}", value) for name, value in sorted(_guest_builtins().items())]
    for module in sorted(ALLOWED_MODULES):
        proxy = MODULES.proxy(module)
        roots += [(f"{module}.{name}", getattr(proxy, name)) for name in _public(proxy)]
    seen: set[int] = set()
    pending = list(reversed(roots))
    while pending:
        path, value = pending.pop()
        yield path, value
        if not isinstance(value, type) or id(value) in seen:
            continue
        seen.add(id(value))
        children = []
        for name in _public(value):
            try:
                child = inspect.getattr_static(value, name)
            except AttributeError:
                continue
            children.append((f"{path}.{name}", child))
        pending.extend(reversed(children))


def render() -> str:
    return "".join(f"{path} {_kind(value)}\n" for path, value in walk())


def test_every_allowed_module_has_a_reviewed_surface() -> None:
    assert set(ALLOWED_MODULES) == set(SURFACE)


def test_surface_matches_the_reviewed_snapshot() -> None:
    current = render().splitlines()
    reviewed = SNAPSHOT.read_text().splitlines()
    added = sorted(set(current) - set(reviewed))
    removed = sorted(set(reviewed) - set(current))
    assert not added and not removed, (
        f"the guest's surface changed: {len(added)} new, {len(removed)} gone; review, then run "
        f"python -m tests.test_restricted_surface\nnew: {added[:40]}\ngone: {removed[:40]}"
    )


def test_nothing_reachable_is_an_escape_primitive() -> None:
    problems = []
    for path, value in walk():
        if isinstance(value, _FORBIDDEN_KINDS):
            problems.append(f"{path}: {type(value).__name__}")
        owner = getattr(value, "__self__", None)
        if isinstance(value, (types.MethodType, types.BuiltinMethodType)) and owner is not None and not isinstance(owner, (type, types.ModuleType)):
            owner_kind = f"{type(owner).__module__}.{type(owner).__qualname__}"
            if owner_kind not in _BOUND_OK and type(owner).__module__ != "builtins":
                problems.append(f"{path}: bound to a {owner_kind}")
        module = getattr(value, "__module__", None)
        if callable(value) and type(value) is types.FunctionType and str(module).startswith(("sandbox", "tests")):
            problems.append(f"{path}: host function from {module}")
    assert not problems, problems


if __name__ == "__main__":
    SNAPSHOT.write_text(render())
    print(f"wrote {SNAPSHOT} ({sum(1 for _ in walk())} names)", file=sys.stderr)
