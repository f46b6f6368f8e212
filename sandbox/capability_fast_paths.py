"""What a `sandbox.capabilities.Capability` precomputes so that values already of the declared
type skip pydantic: exact-type parameters (`fast_parameters`, `bind_exact`, `binds_by_position`)
and results of a plain shape (`plain_shape`). Each gives what the full conversion gives, or
says None / False so the caller takes the full path.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Sequence
from typing import Any, get_args, get_origin

from runtimes.wire import MAX_INT_BITS


EXACT: tuple[type, ...] = (int, str, bool, float)
"""Annotations whose values of exactly that type validate and dump to themselves."""


def exact_ok(value: Any) -> bool:
    """For a value whose type is exactly one of `EXACT`: True when validation and the wire
    would keep it as is (an int within `MAX_INT_BITS`, a finite float)."""
    kind = type(value)
    if kind is int:
        return value.bit_length() <= MAX_INT_BITS
    if kind is float:
        return value - value == 0.0  # finite: inf - inf and nan - nan are nan
    return True


def fast_parameters(signature: inspect.Signature, hints: dict[str, Any]
                     ) -> tuple[tuple[str, type, Any], ...] | None:
    """(name, exact type, default or `inspect.Parameter.empty`) per parameter when every
    annotation is exactly one of `EXACT`; None otherwise."""
    params = []
    for param in signature.parameters.values():
        if param.kind is not param.POSITIONAL_OR_KEYWORD:
            return None  # keyword-only or variadic parameters bind by the full rules
        kind = next((t for t in EXACT if hints[param.name] is t), None)
        default = param.default
        if kind is None or not (default is param.empty or default is None or type(default) in EXACT):
            return None  # a mutable default: pydantic hands out a copy
        params.append((param.name, kind, param.default))
    return tuple(params)


def bind_exact(params: tuple[tuple[str, Any, Any], ...], names: frozenset[str], kinds: tuple[type, ...],
                args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """The arguments by name when each value has exactly its parameter's type (see
    `Capability.bind`); None when anything needs the full path (which also reports errors)."""
    if len(args) > len(params):
        return None  # too many arguments: the full path reports it
    if not all_exact(kinds, args):  # ``kinds`` is as long as ``args`` or longer: their positions
        return None
    arguments: dict[str, Any] = {name: value for (name, _kind, _default), value in zip(params, args)}
    if not kwargs and len(args) == len(params):
        return arguments
    for name, value in kwargs.items():
        if name in arguments or name not in names:
            return None
        arguments[name] = value
    result: dict[str, Any] = {}
    for name, kind, default in params:
        if name in arguments:
            value = arguments[name]
            if name in kwargs and (type(value) is not kind or not exact_ok(value)):
                return None
            result[name] = value
        elif default is inspect.Parameter.empty:
            return None
        else:
            result[name] = default
    return result


def all_exact(kinds: Sequence[Any], values: Sequence[Any]) -> bool:
    """True when each value has exactly its kind (one of `EXACT`) and `exact_ok` holds for it."""
    for kind, value in zip(kinds, values):
        # `exact_ok`, inlined: this loop runs for every argument of every call
        if type(value) is not kind or (kind is int and value.bit_length() > MAX_INT_BITS) or (
                kind is float and value - value != 0.0):
            return False
    return True


def binds_by_position(func: Callable[..., Any], params: tuple[tuple[str, type, Any], ...] | None) -> bool:
    """True when ``params`` are exact-type parameters (see `fast_parameters`) and ``func`` is a
    plain Python function whose own positional parameters are exactly their names, in order: then
    a call by position binds as the call by name does, whatever ``__signature__`` or
    ``__wrapped__`` make `inspect.signature` say."""
    if params is None or not inspect.isfunction(func):
        return False
    code = func.__code__
    names = tuple(name for name, _kind, _default in params)
    return not code.co_posonlyargcount and code.co_argcount == len(names) and code.co_varnames[:len(names)] == names


def _is_dict(value: Any) -> bool:
    return type(value) is dict


def _is_str_dict(value: Any) -> bool:
    return type(value) is dict and all(type(key) is str for key in value)


def _is_list_of_dicts(value: Any) -> bool:
    return type(value) is list and all(type(item) is dict for item in value)


def _is_list_of_str_dicts(value: Any) -> bool:
    return type(value) is list and all(_is_str_dict(item) for item in value)


_PLAIN_SHAPES: dict[str, Callable[[Any], bool]] = {
    "Any": lambda value: True,
    "None": lambda value: value is None,
    "dict": _is_dict,
    "dict[str, Any]": _is_str_dict,
    "list": lambda value: type(value) is list,
    "list[Any]": lambda value: type(value) is list,
    "list[dict]": _is_list_of_dicts,
    "list[dict[str, Any]]": _is_list_of_str_dicts,
}
"""Return types whose serializer, given a value of the shape tested (exact types), keeps each
value as it infers it (`sandbox.capabilities.Capability.dump_result`), keyed by `_shape_key`."""


def plain_shape(annotation: Any) -> Callable[[Any], bool] | None:
    """The test of `_PLAIN_SHAPES` for return type ``annotation``, or None when it has none."""
    key = _shape_key(annotation)
    return _PLAIN_SHAPES[key] if key in _PLAIN_SHAPES else None


def _shape_key(annotation: Any) -> str | None:
    """The key of ``annotation`` in `_PLAIN_SHAPES` when it is exactly one of those types (no
    ``Annotated`` metadata, no ``typing`` aliases); None otherwise."""
    plain_types = {Any: "Any", None: "None", type(None): "None", dict: "dict", list: "list"}
    try:
        if annotation in plain_types:
            return plain_types[annotation]
    except TypeError:  # unhashable
        return None
    origin, args = get_origin(annotation), get_args(annotation)
    if origin not in (dict, list) or type(annotation) is not types.GenericAlias:
        return None
    if origin is dict:
        return "dict[str, Any]" if args == (str, Any) else None
    inner = _shape_key(args[0]) if len(args) == 1 else None
    return f"list[{inner}]" if inner in ("Any", "dict", "dict[str, Any]") else None
