"""JSON text for data that may hold any guest text, lone surrogates included.

Guest strings are Python ``str``: they can hold lone surrogates (``"\\udc80"``), which UTF-8
cannot encode, so pydantic's JSON dump and a strict ``.encode("utf-8")`` refuse them. Here
they are written as JSON ``\\uXXXX`` escapes, which every JSON parser reads back as the same
code points: the text round-trips (a high surrogate followed by a low one is written as the
character the pair stands for, which is how any JSON parser reads the pair anyway).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from sandbox.tree import CONTAINERS, map_tree

_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_surrogates(text: str) -> str:
    """``text`` (JSON) with surrogate pairs joined and lone surrogates as ``\\uXXXX`` escapes;
    unchanged (and fast) when it has none. Valid only for JSON text, where a surrogate can
    appear only inside a string literal."""
    if _SURROGATE.search(text) is None:
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", joined)


def jsonable(data: Any, *, fallback: Callable[[Any], Any] | None = None) -> Any:
    """``data`` (e.g. a pydantic ``model_dump()`` in Python mode) as JSON-compatible data,
    without recursion: containers become lists and dicts, non-finite floats None (as pydantic's
    JSON does), bytes their UTF-8 text (undecodable bytes as lone surrogates), other scalars
    what pydantic's JSON serialiser makes of them (``fallback`` for those it does not know;
    without one they raise); strings are kept as they are."""
    from pydantic_core import to_jsonable_python

    def leaf(item: Any) -> Any:
        if item is None or isinstance(item, (str, bool, int)):
            return item
        if isinstance(item, float):
            return item if math.isfinite(item) else None
        if isinstance(item, (bytes, bytearray)):  # bytes that are not UTF-8 keep every byte, as lone surrogates
            return bytes(item).decode("utf-8", "surrogateescape")
        return to_jsonable_python(item, fallback=fallback)

    def build(source: Any, items: list[Any]) -> Any:
        if isinstance(source, dict):
            return {k if isinstance(k, (str, int, float, bool)) or k is None else json.dumps(k): v
                    for k, v in zip(items[0::2], items[1::2])}
        return items

    return map_tree(data, leaf, build=build) if isinstance(data, CONTAINERS) else leaf(data)


def dumps(data: Any, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON text of JSON-compatible ``data`` (compact unless ``indent``), non-ASCII as is,
    lone surrogates escaped; `ValueError` for NaN or infinity."""
    separators = (",", ":") if indent is None else (",", ": ")
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, indent=indent, sort_keys=sort_keys, separators=separators)
    return escape_surrogates(text)
