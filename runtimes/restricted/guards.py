"""The guest's view of objects: attribute, item and write guards, guest types, handles.

Guarantees (with the transformer, which refuses ``_names`` and ``._attributes`` in source):

* No attribute whose name starts with ``_`` is read through the guards; the only
  dunders a guest reads are `DUNDER_METHODS` on its *own* objects (instances and classes
  defined by guest code, and ``super()`` inside them) plus `DUNDER_ANY` (names and ``__class__``).
* Frames, code objects and tracebacks' links (`INSPECT_ATTRIBUTES`) and module objects are
  never returned, so ``f_globals``/``__builtins__``/``os`` cannot be reached by walking.
* ``str.format``/``format_map`` are replaced by a formatter whose fields go through the same
  guards (the ``'{0.__class__}'.format(x)`` advisory) and whose widths are size-checked.
* Only the guest's own containers and objects are written to (`Guards.write`).
* `runtimes.guest.SecretHandle` carries no token: the executor maps handle identity to token on the host side.
* An ``AttributeError`` from a guard carries in ``.obj`` at most the object the guest passed
  in, never a hidden one (refusals carry none; proxies do not delegate lookups).
"""

from __future__ import annotations

import abc
import collections
import decimal
import operator
import string
import types
from collections.abc import Callable, Mapping
from typing import Any, cast

from RestrictedPython.transformer import INSPECT_ATTRIBUTES

from runtimes.guest import not_writable
from runtimes.restricted.budget import running_budget
from runtimes.restricted.size_guards import sized_text_method

GUEST_MODULE = "__guest__"
"""``__name__`` of guest globals, hence ``__module__`` of every class and function guest code defines."""

DUNDER_METHODS = frozenset(
    "__" + name + "__"
    for name in """
    init repr str format bytes len length_hint iter next reversed contains getitem setitem delitem missing
    eq ne lt le gt ge hash bool call enter exit post_init
    add sub mul truediv floordiv mod divmod pow matmul lshift rshift and or xor
    radd rsub rmul rtruediv rfloordiv rmod rdivmod rpow rmatmul rlshift rrshift rand ror rxor
    iadd isub imul itruediv ifloordiv imod ipow imatmul ilshift irshift iand ior ixor
    neg pos abs invert int float complex index round floor ceil trunc
    """.split()
)
"""Dunder methods a guest class may define, and read on its own objects (``super().__init__``)."""

DUNDER_ANY = frozenset({"__name__", "__qualname__", "__doc__", "__module__", "__class__"})
"""Dunder attributes readable on any object: names, docs, and the type (as `guest_type` gives it)."""

_FORBIDDEN_ATTRS = frozenset(INSPECT_ATTRIBUTES) | {"f_locals", "f_trace", "tb_frame", "gi_frame", "mro_entries"}
_FORMAT_NAMES = frozenset({"format", "format_map"})
_ModuleType = types.ModuleType


def _refused(name: str, obj: Any) -> AttributeError:
    return AttributeError(f"access to attribute {name!r} of {type(obj).__name__} object is not allowed")


WRITABLE_PACKAGES: set[str] = set()
"""Packages whose instances the guest may modify (``df["b"] = ...``, ``arr[0] = 1``): empty
except in a process zygote that allowed optional modules (`ModuleTable.allow`)."""


def is_guest_object(obj: Any) -> bool:
    """True for instances of guest-defined classes and for guest-defined classes."""
    if type(obj).__module__ == GUEST_MODULE:
        return True
    return isinstance(obj, type) and obj.__dict__.get("__module__") == GUEST_MODULE


# --- type() ---------------------------------------------------------------------------------


class _GuestTypeMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, type)

    def __subclasscheck__(cls, sub: Any) -> bool:
        return isinstance(sub, type) and issubclass(sub, type)

    def __repr__(cls) -> str:
        return "<class 'type'>"


class GuestType(metaclass=_GuestTypeMeta):
    """The guest's ``type``: ``type(x)`` only; metaclasses (``type`` itself) show as this class.

    So ``type(x) is int``, ``isinstance(C, type)`` and ``type(C) is type`` behave, but the
    three-argument form (building a class from a dict, bypassing the transformer's checks on
    class bodies) raises TypeError.
    """

    def __new__(cls, *args: Any) -> Any:  # noqa: D102
        if len(args) != 1:
            raise TypeError("type() takes one argument here; define classes with a class statement")
        return guest_type(type(args[0]))


GuestType.__name__ = GuestType.__qualname__ = "type"


class HostType:
    """What the guest sees as the type of an object whose class it could not name otherwise
    (a function, a bound method, a code object, a generator, a host helper ...).

    It compares and hashes like the class and works with ``isinstance``/``issubclass``, but is
    not callable and has no attributes beyond the names: ``type(lambda: 0)`` cannot build
    functions from code objects, and ``type(print)`` leads nowhere. One view per class, so
    ``type(a) is type(b)`` holds when it would for the classes.
    """

    __slots__ = ("_kind",)
    _kind: type

    def __init__(self, kind: type) -> None:
        object.__setattr__(self, "_kind", kind)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("read-only")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self._kind.__name__} objects cannot be created here")

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self._kind)

    def __subclasscheck__(self, sub: Any) -> bool:
        return isinstance(sub, type) and issubclass(sub, self._kind)

    def __eq__(self, other: Any) -> bool:
        return other is self._kind or (type(other) is HostType and other._kind is self._kind)

    def __hash__(self) -> int:
        return hash(self._kind)

    def __repr__(self) -> str:
        return f"<class {self._kind.__qualname__!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("cannot copy a type")


_host_type_views: dict[type, HostType] = {}
_named_types: set[type] = set()
"""Classes the guest can name (its builtins and the classes its module proxies export), added
by `expose_types` as proxies are built; host-only, never handed to the guest."""


def expose_types(values: Any) -> None:
    """Record the classes among ``values`` as nameable by the guest (`guest_type` returns them)."""
    _named_types.update(value for value in values if isinstance(value, type))


def guest_type(kind: type) -> Any:
    """``type(x)`` as the guest sees it: metaclasses as `GuestType`, its own classes and the
    classes it can name as themselves, any other class as a `HostType` view."""
    if issubclass(kind, type):
        return GuestType
    if kind in _named_types or kind.__dict__.get("__module__") == GUEST_MODULE:
        return kind
    if WRITABLE_PACKAGES and str(kind.__module__).partition(".")[0] in WRITABLE_PACKAGES:
        return kind
    view = _host_type_views.get(kind)
    if view is None:
        view = _host_type_views.setdefault(kind, HostType(kind))
    return view


# --- formatting -----------------------------------------------------------------------------


class GuardedFormatter(string.Formatter):
    """``str.format`` whose field lookups go through the guards and whose widths are checked."""

    def __init__(self, getattr_: Callable[[Any, str], Any], check_widths: Callable[[str], None]) -> None:
        self._getattr = getattr_
        self._check_widths = check_widths

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        import _string  # the C helper string.Formatter itself uses

        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attr, key in rest:
            obj = self._getattr(obj, key) if is_attr else obj[key]
        return obj, first

    def format_field(self, value: Any, format_spec: str) -> Any:
        if format_spec:
            self._check_widths(format_spec)
        return format(value, format_spec)


def _format_methods(formatter: GuardedFormatter) -> tuple[Callable[..., str], Callable[..., str]]:
    def format_(template: str, /, *args: Any, **kwargs: Any) -> str:
        if not isinstance(template, str):
            raise TypeError("format() needs a str template")
        return formatter.vformat(template, args, kwargs)

    def format_map(template: str, mapping: Mapping[str, Any], /) -> str:
        if not isinstance(template, str):
            raise TypeError("format_map() needs a str template")
        return formatter.vformat(template, (), mapping)

    return format_, format_map


# --- the per-run guard set ------------------------------------------------------------------


class GuestDeque(collections.deque):
    """``collections.deque`` as the guest gets it: building or extending one from an iterator
    ticks (``deque(range(10**13), maxlen=0)`` is a C loop that allocates nothing)."""

    def __init__(self, iterable: Any = (), maxlen: Any = None) -> None:
        super().__init__(running_budget().iterate(iterable), maxlen)

    def extend(self, iterable: Any, /) -> None:
        super().extend(running_budget().iterate(iterable))

    def extendleft(self, iterable: Any, /) -> None:
        super().extendleft(running_budget().iterate(iterable))


GuestDeque.__name__ = GuestDeque.__qualname__ = "deque"
GuestDeque.__module__ = "collections"

_WRITABLE_TYPES = frozenset(
    {list, dict, set, bytearray, collections.deque, GuestDeque, collections.OrderedDict, collections.defaultdict,
     collections.Counter, decimal.Context}
)
_STR_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs", "replace", "join"})
_OTHER_SPECIAL = frozenset({"to_bytes", "register"})
"""``int.to_bytes(length)`` allocates ``length`` bytes; ``ABC.register`` edits a process-wide registry."""


class Guards:
    """The guard functions of one run, bound to its `Budget` (for size checks)."""

    def __init__(self, budget: Any) -> None:
        self.budget = budget
        self.formatter = GuardedFormatter(self.getattr_dynamic, budget.check_widths)
        self.format_, self.format_map = _format_methods(self.formatter)

    # attribute reads ---------------------------------------------------------------------

    def getattr_static(self, obj: Any, name: str) -> Any:
        """``obj.name`` as compiled (``_getattr_``): the transformer already refused the name's form."""
        value = getattr(obj, name)
        if type(value) is _ModuleType:
            raise _refused(name, obj)
        if type(value) in _WRITABLE_TYPES and _shared_storage(obj, name, value):
            return _read_only(value)
        if name in _FORMAT_NAMES or (name in _STR_WIDTH_METHODS and _is_text(obj)):
            return self._special(obj, name, value)
        if name in _OTHER_SPECIAL:
            return self._other(obj, name, value)
        return value

    def getattr_dynamic(self, obj: Any, name: Any, *default: Any) -> Any:
        """The guest's ``getattr(obj, name[, default])``: refuses ``_`` names and frame links.

        A refused name raises AttributeError even with a default, so ``getattr`` cannot be used
        to probe what exists behind the guards.
        """
        if type(name) is not str:
            raise TypeError("attribute name must be a string")
        if name[:1] == "_" or name in _FORBIDDEN_ATTRS:
            raise _refused(name, obj)
        try:
            value = getattr(obj, name)
        except AttributeError:
            if default:
                return default[0]
            raise AttributeError(f"{type(obj).__name__!r} object has no attribute {name!r}") from None
        if type(value) is _ModuleType:
            raise _refused(name, obj)
        if type(value) in _WRITABLE_TYPES and _shared_storage(obj, name, value):
            return _read_only(value)
        if name in _FORMAT_NAMES or (name in _STR_WIDTH_METHODS and _is_text(obj)):
            return self._special(obj, name, value)
        if name in _OTHER_SPECIAL:
            return self._other(obj, name, value)
        return value

    def getattr_dunder(self, obj: Any, name: str) -> Any:
        """``obj.__name__``-style reads the transformer allowed (``_getattr_dunder_``)."""
        if name in DUNDER_ANY:
            if name == "__class__":
                return guest_type(type(obj))
            value = getattr(obj._kind if type(obj) is HostType else obj, name)
            if value is None or type(value) is str:
                return value
            raise _refused(name, obj)
        if name in DUNDER_METHODS:
            if type(obj) is super:
                owner = cast(Any, obj).__thisclass__
                if owner.__dict__.get("__module__") == GUEST_MODULE:
                    return getattr(obj, name)
            elif is_guest_object(obj):
                return getattr(obj, name)
        raise _refused(name, obj)

    def hasattr_(self, obj: Any, name: Any) -> bool:
        """The guest's ``hasattr``: False for refused names."""
        try:
            self.getattr_dynamic(obj, name)
        except AttributeError:
            return False
        return True

    def _special(self, obj: Any, name: str, value: Any) -> Any:
        if name in _FORMAT_NAMES:
            if value is str.format:
                return self.format_
            if value is str.format_map:
                return self.format_map
            owner = getattr(value, "__self__", None)
            if isinstance(owner, str) and type(value) is types.BuiltinMethodType:
                method = self.format_ if name == "format" else self.format_map
                return lambda *args, **kwargs: method(owner, *args, **kwargs)
            return value
        if isinstance(obj, type):  # str.ljust(s, n): guard the call on its first argument
            budget = self.budget
            return lambda text, *args, **kwargs: sized_text_method(budget, text, name, getattr(text, name))(*args, **kwargs)
        return sized_text_method(self.budget, obj, name, value)

    def _other(self, obj: Any, name: str, value: Any) -> Any:
        if name == "register":
            unbound = isinstance(obj, type) and issubclass(obj, abc.ABCMeta)  # ABCMeta.register(Mapping, C)
            if unbound or (isinstance(obj, abc.ABCMeta) and not is_guest_object(obj)):
                raise AttributeError(f"{obj.__name__}.register() would change a registry shared with the host")
            return value
        if isinstance(obj, int) or (isinstance(obj, type) and issubclass(obj, int)):
            budget = self.budget
            bound = not isinstance(obj, type)

            def to_bytes(*args: Any, **kwargs: Any) -> bytes:
                target, rest = (obj, list(args)) if bound else (args[0], list(args[1:]))
                length = kwargs.get("length", rest[0] if rest else 1)
                length = operator.index(length)
                budget.check_count("int.to_bytes", length, 1)
                if "length" in kwargs:
                    kwargs["length"] = length
                elif rest:
                    rest[0] = length
                return int.to_bytes(cast(int, target), *rest, **kwargs)

            return to_bytes
        return value

    # writes ------------------------------------------------------------------------------

    def write(self, obj: Any) -> Any:
        """``_write_``: the target of an item or attribute store/delete, if the guest owns it."""
        kind = type(obj)
        if kind in _WRITABLE_TYPES or kind.__module__ == GUEST_MODULE:
            return obj
        if isinstance(obj, type) and obj.__dict__.get("__module__") == GUEST_MODULE:
            return obj
        if kind is types.FunctionType and obj.__module__ == GUEST_MODULE:
            return obj
        if WRITABLE_PACKAGES and not isinstance(obj, type) and \
                str(kind.__module__).partition(".")[0] in WRITABLE_PACKAGES:
            return obj
        raise not_writable(obj)

    def setattr_(self, obj: Any, name: Any, value: Any) -> None:
        """The guest's ``setattr``: public names on objects the guest owns."""
        if type(name) is not str or name[:1] == "_":
            raise AttributeError(f"cannot set attribute {name!r}")
        setattr(self.write(obj), name, value)

    def delattr_(self, obj: Any, name: Any) -> None:
        """The guest's ``delattr``: public names on objects the guest owns."""
        if type(name) is not str or name[:1] == "_":
            raise AttributeError(f"cannot delete attribute {name!r}")
        delattr(self.write(obj), name)

    def dir_(self, *obj: Any) -> list[str]:
        """The guest's ``dir(obj)``: public names only (``dir()`` without argument is refused)."""
        if len(obj) != 1:
            raise TypeError("dir() needs exactly one argument here")
        return [name for name in dir(obj[0]) if name[:1] != "_"]


def _shared_storage(obj: Any, name: str, value: Any) -> bool:
    """True when ``value``, a mutable container read as ``obj.name``, is not stored on a guest
    object or class: a class attribute of a host class (``TextWrapper.unicode_whitespace_trans``),
    reached directly or through a guest subclass, or state of a host object."""
    if WRITABLE_PACKAGES and str(type(obj).__module__).partition(".")[0] in WRITABLE_PACKAGES:
        return False
    try:
        own = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        own = None
    if type(own) is dict and own.get(name) is value:
        return not is_guest_object(obj)
    for cls in (obj if isinstance(obj, type) else type(obj)).__mro__:
        if name in cls.__dict__:
            return cls.__dict__.get("__module__") != GUEST_MODULE
    return not is_guest_object(obj)


def _read_only(value: Any) -> Any:
    """A read-only view or copy of a mutable container the guest must not change."""
    if isinstance(value, dict):
        return types.MappingProxyType(value)
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if isinstance(value, (bytearray, bytes)):
        return bytes(value)
    if isinstance(value, decimal.Context):
        return value.copy()
    return tuple(value)


_PLAIN_SUBSCRIPTED = frozenset({list, dict, tuple, str, bytes, bytearray, range, collections.deque, GuestDeque, collections.OrderedDict,
                               collections.defaultdict, collections.Counter, types.MappingProxyType})
_TYPE_ARG_ATOMS = frozenset({str, int, bool, bytes, float, type(None), type(Ellipsis)})


def getitem(obj: Any, key: Any) -> Any:
    """``obj[key]`` (``_getitem_``). Subscripting a class or a typing form goes through process-wide
    caches (``typing``'s ``_tp_cache``) that compare their keys with ``==``: there the key may
    hold only classes, typing forms and plain values, never a guest object whose ``__eq__`` or
    ``__hash__`` a later host lookup would run or be answered by."""
    kind = type(obj)
    if kind not in _PLAIN_SUBSCRIPTED and (isinstance(obj, type) or kind.__module__ == "typing"):
        _check_type_args(key)
    return obj[key]


def _check_type_args(key: Any) -> None:
    pending = [key]
    seen = 0
    while pending:
        item = pending.pop()
        seen += 1
        kind = type(item)
        if kind in _TYPE_ARG_ATOMS or isinstance(item, type) or kind.__module__ in ("typing", "types") or kind is HostType:
            if kind is types.GenericAlias:
                pending.extend(item.__args__)
            continue
        if (kind is tuple or kind is list) and seen < 1000:
            pending.extend(item)
            continue
        raise TypeError(f"subscripting a type takes classes and plain values here, not a {kind.__name__}")


def _is_text(obj: Any) -> bool:
    return isinstance(obj, (str, bytes, bytearray)) or (isinstance(obj, type) and issubclass(obj, (str, bytes, bytearray)))
