"""The guest's builtins on the restricted runtime: the run-independent base set, and the
functions that allocate in proportion to an argument, wrapped with the run's size checks.

Every builtin reaches the guest as a plain function, never a bound method, so nothing that walks
objects for it can reach the host object behind it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from runtimes.guest import EXCEPTIONS, PLAIN_BUILTINS, CapabilityError, PolicyDenied
from runtimes.restricted.guards import GuestType, expose_types


def base_builtins() -> dict[str, Any]:
    """The run-independent part of the guest's builtins (per-run functions are added on top)."""
    result: dict[str, Any] = {name: getattr(builtins, name) for name in PLAIN_BUILTINS + EXCEPTIONS}
    result.update(
        {
            "__build_class__": builtins.__build_class__,
            "None": None, "True": True, "False": False,
            "Ellipsis": Ellipsis, "NotImplemented": NotImplemented,
            "type": GuestType,
            "PolicyDenied": PolicyDenied,
            "CapabilityError": CapabilityError,
        }
    )
    expose_types(result.values())
    return result


def plain_function(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``method`` as a plain function named ``name``: the guest gets functions, never bound
    methods, so nothing that walks objects for it (``copy.deepcopy``, ``__reduce_ex__``) can
    reach the host object behind a builtin. The closure cell is unreachable from guest code."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = getattr(method, "__doc__", None)
    return call


def sized_builtins(budget: Any) -> dict[str, Callable[..., Any]]:
    """Builtin functions that allocate in proportion to an argument, wrapped with size checks.

    Types (``list``, ``bytes`` ...) stay the real types so ``isinstance`` works; the
    transformer guards their constructor calls instead (``list(_sized_(x))``).
    """

    iterate = budget.iterate

    def sorted_(iterable: Any, /, *, key: Any = None, reverse: bool = False) -> list:
        budget.check_materialise(iterable)
        return sorted(iterate(iterable), key=key, reverse=reverse)

    def pow_(base: Any, exp: Any, mod: Any = None) -> Any:
        return budget.pow(base, exp, mod)

    def sum_(iterable: Any, /, start: Any = 0) -> Any:
        return sum(iterate(iterable), start)

    def any_(iterable: Any, /) -> bool:
        return any(iterate(iterable))

    def all_(iterable: Any, /) -> bool:
        return all(iterate(iterable))

    def extreme(real: Callable[..., Any]) -> Callable[..., Any]:
        def pick(*args: Any, **kwargs: Any) -> Any:
            if len(args) == 1:
                return real(iterate(args[0]), **kwargs)
            return real(*args, **kwargs)
        return pick

    def next_(iterator: Any, *default: Any) -> Any:
        budget.check_nesting(iterator)
        return next(iterator, *default)

    def iter_(source: Any, *sentinel: Any) -> Any:
        if sentinel:  # calls source until it returns the sentinel: possibly forever
            return budget.endless(iter(source, *sentinel))
        return iter(source)

    functions: dict[str, Callable[..., Any]] = {"sorted": sorted_, "pow": pow_, "sum": sum_, "any": any_, "all": all_,
                 "min": extreme(min), "max": extreme(max), "next": next_, "iter": iter_}
    for name, function in functions.items():
        function.__name__ = function.__qualname__ = name
    functions["format"] = plain_function(budget.format, "format")
    return functions
