"""Walks over JSON-like data (lists, tuples, dicts, sets, frozensets and scalars) that need no
recursion: any depth, linear time, shared containers walked once, cycles cut."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

CONTAINERS = (list, tuple, dict, set, frozenset)
DESCEND = object()
"""Returned by a `map_tree` ``node`` hook: walk into this dict as usual."""
CYCLE = "<cycle>"
"""Put where a container contains itself (JSON-like data never does, but a walk must end)."""
_PENDING = object()


def identity(item: Any) -> Any:
    return item


def same_types(source: Any, items: list[Any]) -> Any:
    """A container of ``source``'s plain type holding ``items`` (a dict's come as key, value, ...)."""
    if isinstance(source, dict):
        return dict(zip(items[0::2], items[1::2]))
    if isinstance(source, list):
        return items
    return (tuple if isinstance(source, tuple) else set if isinstance(source, set) else frozenset)(items)


def map_tree(
    data: Any,
    leaf: Callable[[Any], Any],
    node: Callable[[dict], Any] | None = None,
    build: Callable[[Any, list[Any]], Any] = same_types,
) -> Any:
    """``data`` rebuilt with ``leaf`` applied to every non-container, without recursion.

    Containers are lists, tuples, dicts (keys and values), sets and frozensets; ``build``
    makes each one from its mapped items (default: `same_types`). ``node`` may replace a whole
    dict (it returns `DESCEND` to walk into it instead). A container reached twice is rebuilt
    once and the result shared, so the cost is linear in the number of distinct nodes; a
    container inside itself becomes `CYCLE`. Exceptions from the hooks propagate.
    """
    done: dict[int, Any] = {}
    stack: list[tuple[Any, Iterator[Any], list[Any]]] = []

    def visit(item: Any) -> Any:
        """The mapped item, or `_PENDING` after pushing a container to walk."""
        if not isinstance(item, CONTAINERS):
            return leaf(item)
        key = id(item)
        if key in done:
            mapped = done[key]
            return CYCLE if mapped is _PENDING else mapped
        if node is not None and isinstance(item, dict):
            replaced = node(item)
            if replaced is not DESCEND:
                done[key] = replaced
                return replaced
        done[key] = _PENDING
        children = itertools.chain.from_iterable(item.items()) if isinstance(item, dict) else iter(item)
        stack.append((item, children, []))
        return _PENDING

    result = visit(data)
    while stack:
        source, children, built = stack[-1]
        for child in children:
            mapped = visit(child)
            if mapped is _PENDING:
                break
            built.append(mapped)
        else:
            stack.pop()
            result = build(source, built)
            done[id(source)] = result
            if stack:
                stack[-1][2].append(result)
    return result
