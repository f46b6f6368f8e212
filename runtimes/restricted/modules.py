"""The guest's ``import``: an allowlist of stdlib modules handed out as read-only proxies.

A `ModuleProxy` exposes a module's public attributes minus modules (``json.codecs``,
``textwrap.re``), minus names listed in `_EXCLUDED` (functions that evaluate strings as code,
touch host-global state, or start processes), with mutable containers frozen. Proxies are
built once per process and shared, so they are immutable; ``random`` is the exception: each
import gets its own ``Random`` instance, so a guest's ``seed`` never touches the host's
generator or another run's.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import random as _random
import threading
import types
from collections.abc import Callable, Mapping
from typing import Any

from runtimes.restricted.guards import GUEST_MODULE, WRITABLE_PACKAGES, is_guest_object

ALLOWED_MODULES = (
    "math", "json", "re", "datetime", "collections", "collections.abc", "itertools", "functools",
    "statistics", "decimal", "fractions", "random", "string", "typing", "dataclasses", "heapq",
    "bisect", "textwrap", "enum", "base64", "hashlib", "uuid", "csv", "io", "copy", "time", "_strptime",
)
"""The issue's default allowlist plus ``copy`` (HumanEval's tests import it; it only rebuilds
objects the guest already holds, through their ``__reduce_ex__``/``__deepcopy__``), ``time``
(clocks and conversions only) and ``_strptime``, which C code imports on the guest's behalf
(``date.today()``, ``strftime`` and ``strptime`` import them through the caller's
``__import__``); guest code cannot name ``_strptime`` itself (underscore names do not compile)."""

_ONLY: Mapping[str, frozenset[str]] = {
    "io": frozenset({"StringIO", "BytesIO"}),
    # No sleep: a sleeping guest would hold the host thread past the wall-clock limit.
    "time": frozenset({
        "time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
        "process_time", "process_time_ns", "thread_time", "thread_time_ns", "gmtime", "localtime",
        "mktime", "strftime", "strptime", "asctime", "ctime", "struct_time", "timezone", "altzone",
        "daylight", "tzname",
    }),
    "_strptime": frozenset({"_strptime_datetime", "_strptime_time"}),
}
"""Modules of which exactly the listed names are exposed (private ones included)."""

OPTIONAL_MODULES = ("numpy", "pandas")
"""Heavy C-extension modules a `ProcessDriver` may add to its children's allowlist (never the
in-process runtime's: see docs/data.md, "Why numpy and pandas are not offered in-process").
Their proxies carry every public attribute; raw memory, file I/O and runaway C calls are
contained by the process layers (rlimits, seccomp, netns, Landlock), not by the guards."""

_EXCLUDED: Mapping[str, frozenset[str]] = {
    # string.Formatter.get_field walks attributes unguarded (RestrictedPython advisory).
    "string": frozenset({"Formatter"}),
    # get_type_hints/ForwardRef evaluate annotation strings with the real eval and builtins.
    "typing": frozenset({"get_type_hints", "ForwardRef"}),
    # singledispatch evaluates string annotations through get_type_hints too.
    "functools": frozenset({"singledispatch", "singledispatchmethod"}),
    # Host-global (thread or process) state; localcontext() left open in a suspended generator
    # would keep the host thread's decimal context changed after the run.
    "decimal": frozenset({
        "getcontext", "setcontext", "localcontext", "DefaultContext", "BasicContext", "ExtendedContext",
    }),
    "csv": frozenset({"field_size_limit", "register_dialect", "unregister_dialect"}),
    # getnode() (and uuid1 without a node) may run ifconfig/ip in a subprocess.
    "uuid": frozenset({"getnode", "uuid1"}),
    "random": frozenset({"SystemRandom"}),
    "copy": frozenset({"dispatch_table"}),
    # make_dataclass takes attribute names and defaults as data, so it could put any dunder
    # on a class and bypass the transformer's list of definable dunder methods.
    "dataclasses": frozenset({"make_dataclass"}),  # copyreg's process-wide table
}


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


_REPLACED: Mapping[str, Mapping[str, Any]] = {
    "functools": {
        "update_wrapper": _update_wrapper,
        "wraps": _wraps,
        "total_ordering": _guest_class_decorator("functools.total_ordering", functools.total_ordering),
    },
    "dataclasses": {"dataclass": _guest_class_decorator("dataclasses.dataclass", dataclasses.dataclass)},
}
"""Module functions that write attributes onto their arguments, replaced by guarded versions."""


class ModuleProxy:
    """A read-only view of an allowed module's public, non-module attributes."""

    def __init__(self, name: str, members: Mapping[str, Any]) -> None:
        object.__setattr__(self, "__name__", name)
        for key, value in members.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"module {self.__name__!r} is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"module {self.__name__!r} is read-only")

    def __repr__(self) -> str:
        return f"<module {self.__name__!r} (sandboxed)>"


def _freeze(value: Any) -> Any:
    if type(value) is list:
        return tuple(value)
    if type(value) is set:
        return frozenset(value)
    if type(value) is dict:
        return types.MappingProxyType(dict(value))
    return value


def _members(name: str) -> dict[str, Any]:
    module = importlib.import_module(name)
    only = _ONLY.get(name)
    excluded = _EXCLUDED.get(name, frozenset())
    members = {}
    for key in sorted(only) if only is not None else dir(module):
        if (only is None and key.startswith("_")) or key in excluded or not hasattr(module, key):
            continue
        value = getattr(module, key)
        if isinstance(value, types.ModuleType):
            continue
        members[key] = _freeze(value)
    members.update({key: value for key, value in _REPLACED.get(name, {}).items() if key in members})
    return members


class ModuleTable:
    """Builds proxies lazily and serves the guest's ``__import__``."""

    def __init__(self, allowed: tuple[str, ...] = ALLOWED_MODULES) -> None:
        self.allowed = frozenset(allowed)
        self._proxies: dict[str, ModuleProxy] = {}
        self._lock = threading.RLock()  # building a package's proxy builds its allowed submodules

    def allow(self, names: tuple[str, ...]) -> None:
        """Add `OPTIONAL_MODULES` to this table (the process zygote does so, before confinement,
        for its own children only); any other name raises `ValueError`. Their instances become
        writable by the guest, and their submodules importable (see `import_`)."""
        unknown = set(names) - set(OPTIONAL_MODULES)
        if unknown:
            raise ValueError(f"not optional modules: {sorted(unknown)}; choose from {list(OPTIONAL_MODULES)}")
        with self._lock:
            self.allowed = self.allowed | frozenset(names)
            WRITABLE_PACKAGES.update(names)

    def proxy(self, name: str) -> ModuleProxy:
        """The proxy for allowed module ``name`` (a fresh one for ``random``)."""
        if name == "random":
            return self._random()
        proxy = self._proxies.get(name)
        if proxy is None:
            with self._lock:
                proxy = self._proxies.get(name)
                if proxy is None:
                    members = _members(name)
                    prefix = name + "."
                    for sub in self.allowed:
                        if sub.startswith(prefix) and "." not in sub[len(prefix):]:
                            members[sub[len(prefix):]] = self.proxy(sub) if sub != "random" else None
                    proxy = ModuleProxy(name, members)
                    self._proxies[name] = proxy
        return proxy

    def _random(self) -> ModuleProxy:
        members = _members("random")
        generator = _random.Random()
        shared = _random._inst  # the host's hidden generator, whose bound methods the module exports
        for key, value in list(members.items()):
            if getattr(value, "__self__", None) is shared:
                members[key] = getattr(generator, key)
        return ModuleProxy("random", members)

    def import_(self, name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        """The guest's ``__import__``: raises ImportError naming the module when not allowed."""
        if level != 0:
            raise ImportError("relative imports are not allowed")
        if type(name) is str and name.partition(".")[0] in WRITABLE_PACKAGES and name not in self.allowed:
            # A submodule of an optional package: C code imports these through the caller's
            # __import__ (np.sum -> numpy._core._methods) and uses sys.modules, not the result.
            private = any(part.startswith("_") for part in name.split("."))
            importlib.import_module(name)
            return self.proxy(name) if fromlist and not private else self.proxy(name.partition(".")[0])
        if type(name) is not str or name not in self.allowed:
            allowed = ", ".join(sorted(m for m in self.allowed if not m.startswith("_")))
            raise ImportError(f"import of {name!r} is not allowed; allowed modules: {allowed}")
        if fromlist:
            return self.proxy(name)
        return self.proxy(name.split(".")[0])


MODULES = ModuleTable()
