"""Guarded replacements for stdlib functions the guest's module proxies offer.

Each replaces a function that, as shipped, would let guest data choose what host code reads or
writes: attribute names (``functools.update_wrapper``), the target class of a decorator
(``dataclass(json.JSONEncoder)``), a module to write into (``module=``), a memo dict that
returns every object the walk visited (``copy.deepcopy``), class bodies given as data (the
Enum, NamedTuple and TypedDict functional forms), or process-wide registries and caches
(``typing.overload``, the ``_strptime`` cache keyed by guest ``str`` subclasses).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import enum
import functools
import itertools
import time
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import _strptime

from runtimes.restricted.budget import running_budget
from runtimes.restricted.guards import GUEST_MODULE, GuestDeque, is_guest_object


def _guest_owned(obj: Any) -> bool:
    """True for classes and functions the guest defined (never for host objects)."""
    if type(obj) is types.FunctionType:
        return obj.__module__ == GUEST_MODULE
    return isinstance(obj, type) and is_guest_object(obj)


def _refuse_host_target(func_name: str, target: Any) -> TypeError:
    what = getattr(target, "__qualname__", None) or type(target).__name__
    return TypeError(f"{func_name}() applies only to classes and functions defined by the guest, not {what!s:.60}")


def _update_wrapper(wrapper: Any, wrapped: Any, assigned: Any = None, updated: Any = None) -> Any:
    """``functools.update_wrapper`` for guests: copies ``__name__``, ``__qualname__`` and
    ``__doc__`` (strings only) onto a guest function. The guest cannot choose the attribute
    names: the real function reads and writes any names it is given with unguarded
    getattr/setattr (``updated=('__globals__',)`` would hand the guest the host's builtins)."""
    if assigned is not None or updated is not None:
        raise TypeError("functools.update_wrapper(): choosing the attributes to copy is not allowed in the sandbox")
    if not _guest_owned(wrapper):
        raise _refuse_host_target("functools.update_wrapper", wrapper)
    for attr in ("__name__", "__qualname__", "__doc__"):
        value = getattr(wrapped, attr, None)
        if type(value) is str or (attr == "__doc__" and value is None):
            setattr(wrapper, attr, value)
    return wrapper


def _wraps(wrapped: Any, assigned: Any = None, updated: Any = None) -> Callable[[Any], Any]:
    """``functools.wraps`` for guests (see `_update_wrapper`)."""
    if assigned is not None or updated is not None:
        raise TypeError("functools.wraps(): choosing the attributes to copy is not allowed in the sandbox")
    return lambda wrapper: _update_wrapper(wrapper, wrapped)


def _guest_class_decorator(name: str, decorator: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a class decorator that sets attributes on its argument so it only touches guest
    classes (``dataclass(json.JSONEncoder)`` would rewrite a host class for every later run).
    Supports both ``@deco`` and ``@deco(**options)``."""

    @functools.wraps(decorator)
    def guarded(cls: Any = None, /, **options: Any) -> Any:
        if cls is None:
            return lambda target: guarded(target, **options)
        if not _guest_owned(cls):
            raise _refuse_host_target(name, cls)
        return decorator(cls, **options)

    return guarded


def _copy(x: Any, /) -> Any:
    """``copy.copy`` without a memo or dispatch choice."""
    return copy.copy(x)


def _deepcopy(x: Any, memo: Any = None, /) -> Any:
    """``copy.deepcopy`` with a memo of its own: the memo maps every object the walk visited to
    its copy, so a guest-held memo would hand back the originals (host objects included)."""
    if memo is not None:
        raise TypeError("copy.deepcopy(): a memo argument is not allowed in the sandbox")
    return copy.deepcopy(x, {})


def _namedtuple(typename: Any, field_names: Any, *, rename: bool = False, defaults: Any = None, module: Any = None) -> type:
    """``collections.namedtuple`` whose class always belongs to the guest (no ``module=``)."""
    if module is not None:
        raise TypeError("namedtuple(): module= is not allowed in the sandbox")
    return collections.namedtuple(typename, field_names, rename=rename, defaults=defaults, module=GUEST_MODULE)


def _class_form_only(name: str, base: type) -> Callable[..., Any]:
    """``typing.NamedTuple``/``TypedDict`` for class statements only; the functional form builds a
    class from data and takes ``module=``."""

    def functional(*args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"typing.{name}(...) is not allowed in the sandbox; use a class statement")

    functional.__name__ = functional.__qualname__ = name
    functional.__mro_entries__ = lambda bases: (base,)  # type: ignore[attr-defined]
    return functional


def _overload(func: Any) -> Any:
    """``typing.overload`` without the process-wide registry (``get_overloads`` is not offered)."""
    return typing._overload_dummy  # type: ignore[attr-defined]


class _GuestEnumType(enum.EnumType):
    """The metaclass of the guest's Enum bases: lookups (``Color(1)``) only; the functional form
    (``Enum('Name', 'a b', module=...)``) builds a class from data, with any dunder, under any
    module name."""

    def __call__(cls, value: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise TypeError("the functional Enum API is not allowed in the sandbox; use a class statement")
        return super().__call__(value)


class Enum(enum.Enum, metaclass=_GuestEnumType):
    """`enum.Enum` for guests (see `_GuestEnumType`)."""


class IntEnum(enum.IntEnum, metaclass=_GuestEnumType):
    """`enum.IntEnum` for guests (see `_GuestEnumType`)."""


class StrEnum(enum.StrEnum, metaclass=_GuestEnumType):
    """`enum.StrEnum` for guests (see `_GuestEnumType`)."""


class Flag(enum.Flag, metaclass=_GuestEnumType):
    """`enum.Flag` for guests (see `_GuestEnumType`)."""


class IntFlag(enum.IntFlag, metaclass=_GuestEnumType):
    """`enum.IntFlag` for guests (see `_GuestEnumType`)."""


def exact_str(value: Any) -> Any:
    """``value`` as an exact ``str`` when it is a ``str`` subclass (a copy its methods cannot
    answer for); anything else unchanged. Host caches keyed by strings stay free of guest objects."""
    if type(value) is str or not isinstance(value, str):
        return value
    return str.__getitem__(value, slice(None))


def _strptime_datetime(cls: Any, data_string: Any, format: Any = "%a %b %d %H:%M:%S %Y") -> Any:
    return _strptime._strptime_datetime(cls, exact_str(data_string), exact_str(format))


def _strptime_time(data_string: Any, format: Any = "%a %b %d %H:%M:%S %Y") -> Any:
    return _strptime._strptime_time(exact_str(data_string), exact_str(format))


def _time_strptime(data_string: Any, format: Any = "%a %b %d %H:%M:%S %Y") -> Any:
    return time.strptime(exact_str(data_string), exact_str(format))


def _count(start: Any = 0, step: Any = 1) -> Any:
    return running_budget().endless(itertools.count(start, step))


def _cycle(iterable: Any, /) -> Any:
    return running_budget().endless(itertools.cycle(iterable))


def _repeat(obj: Any, *times: Any) -> Any:
    if times:
        return itertools.repeat(obj, *times)
    return running_budget().endless(itertools.repeat(obj))


for _function, _name in ((_count, "count"), (_cycle, "cycle"), (_repeat, "repeat")):
    _function.__name__ = _function.__qualname__ = _name


REPLACED: Mapping[str, Mapping[str, Any]] = {
    "functools": {
        "update_wrapper": _update_wrapper,
        "wraps": _wraps,
        "total_ordering": _guest_class_decorator("functools.total_ordering", functools.total_ordering),
    },
    "dataclasses": {"dataclass": _guest_class_decorator("dataclasses.dataclass", dataclasses.dataclass)},
    "copy": {"copy": _copy, "deepcopy": _deepcopy},
    "collections": {"namedtuple": _namedtuple, "deque": GuestDeque},
    "itertools": {"count": _count, "cycle": _cycle, "repeat": _repeat},
    "typing": {
        "NamedTuple": _class_form_only("NamedTuple", typing._NamedTuple),  # type: ignore[attr-defined]
        "TypedDict": _class_form_only("TypedDict", typing._TypedDict),
        "overload": _overload,
    },
    "enum": {"Enum": Enum, "IntEnum": IntEnum, "StrEnum": StrEnum, "Flag": Flag, "IntFlag": IntFlag},
    "_strptime": {"_strptime_datetime": _strptime_datetime, "_strptime_time": _strptime_time},
    "time": {"strptime": _time_strptime},
}
"""Module functions replaced by guarded versions (see the module docstring)."""
