"""What a restricted run is granted: its capabilities and secret handles, bound into the namespace.

`CallLink` is what the capability callables of one guest state call through: the current run's
host bridge, or nothing between runs (then they refuse). `install_grants` binds a run's
capabilities and handles; `capability_function` is the guest-callable for one capability.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtimes.guest import VALUE, CapabilityError, Namespace, PolicyDenied, SecretHandle, capability_globals, fault_type
from runtimes.restricted.budget import Budget, LimitExceeded, Terminated
from runtimes.wire import DEFAULT_VALUE_BYTES, Fault, ValueTooLarge, WireError, plain

_LOG = logging.getLogger("sandbox.restricted")
_MAX_CALLABLES = 256
"""Capability callables a link keeps for later runs (a fresh-run state serves many hosts' names)."""


class CallLink:
    """What the guest's capabilities of one `GuestState` (a session, or one fresh run) call
    through: the current run's host bridge and limits, or nothing between runs (then they
    refuse to reach the host). The capability callables are built once per link, in ``callables``."""

    __slots__ = ("call_host", "budget", "handle_token", "value_cap", "callables", "names", "namespace", "exposed")

    def __init__(self) -> None:
        self.call_host: Callable[[str, list, dict], Any] | None = None
        self.budget: Budget | None = None
        self.handle_token: Callable[[Any], Any] = _no_token
        self.value_cap = DEFAULT_VALUE_BYTES
        self.callables: dict[str, Callable[..., Any]] = {}
        self.names: tuple[str, ...] | None = None
        self.namespace: dict[str, Any] = {}
        """The guest globals of the capabilities ``names`` (callables and read-only namespaces)."""
        self.exposed: list[Any] = []
        """Every callable and namespace of ``namespace`` (what guest code can keep of them)."""

    def bind(self, capabilities: Sequence[str]) -> None:
        """Make ``namespace`` the globals of ``capabilities``; the same names keep the same objects
        (a session's later runs reuse its globals), and a name keeps its callable."""
        names = tuple(capabilities)
        if self.names == names:
            return

        def callable_for(name: str) -> Callable[..., Any]:
            function = self.callables.get(name)
            if function is None:
                function = self.callables[name] = capability_function(name, self)
            return function

        if len(self.callables) > _MAX_CALLABLES:
            self.callables.clear()
        self.namespace = capability_globals(names, callable_for)
        self.names = names
        self.exposed = _members(self.namespace)

    def open(self, call_host: Callable[[str, list, dict], Any], budget: Budget, value_cap: int) -> None:
        """Route calls to this run (`install_grants` sets its ``handle_token`` when the run has secret
        handles to resolve; `close` resets it)."""
        self.budget, self.value_cap, self.call_host = budget, value_cap, call_host

    def close(self) -> None:
        """The run is over: calls refuse from now on, until the next `open`."""
        self.call_host = None
        self.budget = None
        self.handle_token = _no_token

    def dismantle(self) -> None:
        """Break the cycles between the link and its callables (each refers to the link)."""
        self.close()
        self.callables.clear()
        self.namespace = {}
        self.names = None
        self.exposed = []


def _no_token(obj: Any) -> None:
    return None


def install_grants(
    guest_globals: dict[str, Any],
    secrets: Sequence[tuple[str, str, str]],
    tokens: dict[int, tuple[SecretHandle, str]],
    stale: dict[int, tuple[SecretHandle, str]],
    link: CallLink,
) -> None:
    """Put this run's capabilities (``link``'s namespace, bound by `CallLink.bind`) and secret
    handles into the namespace. The capabilities call the host through ``link`` (opened for this
    run; they refuse once it is closed)."""
    if secrets:
        handles = {}
        for name, token, description in secrets:
            handle = SecretHandle(name, description)
            handles[name] = handle
            tokens[id(handle)] = (handle, token)
        guest_globals["secrets"] = Namespace("secrets", handles)

    if tokens or stale:  # else no handle of this state exists: `_no_token` (set by `close`) answers

        def handle_token(obj: Any) -> str | None:
            entry = tokens.get(id(obj)) or stale.get(id(obj))
            return entry[1] if entry is not None and entry[0] is obj else None

        link.handle_token = handle_token

    guest_globals.update(link.namespace)


def _members(namespace: Mapping[str, Any]) -> list[Any]:
    """The values of ``namespace`` and, for each read-only `Namespace` among them, its members, recursively."""
    found: list[Any] = []
    pending = list(namespace.values())
    while pending:
        value = pending.pop()
        found.append(value)
        if type(value) is Namespace:
            pending.extend(member for key, member in vars(value).items() if key[:1] != "_")
    return found


def capability_function(name: str, link: CallLink) -> Callable[..., Any]:
    """A guest-callable for capability ``name`` that calls the host through ``link``'s current
    run: copies arguments and result as plain data within the run's value cap (arguments over
    it end the run on limit ``"value"``; a result over it raises `CapabilityError`), maps
    faults to exceptions.

    Outside a run of its link (a guest finaliser or a generator resumed after the run, a fresh
    run's capability kept past it) it never reaches the host: it raises `PolicyDenied` and logs
    the attempt on ``sandbox.restricted``.
    """

    def capability(*args: Any, **kwargs: Any) -> Any:
        call_host = link.call_host
        budget = link.budget
        if call_host is None or budget is None:
            _LOG.warning("capability %s called after its run ended: refused", name)
            raise PolicyDenied(f"{name}(): the run that was granted this capability has ended")
        value_cap = link.value_cap
        try:
            if primitives_within(args, kwargs, value_cap):  # what `plain` would return, without the walk
                wire_args, wire_kwargs = list(args), kwargs  # ``kwargs`` is this call's own dict
            else:
                wire_args, wire_kwargs = plain([list(args), kwargs], handle_token=link.handle_token,
                                               max_bytes=value_cap, check=budget.check_time)
        except ValueTooLarge as exc:
            raise budget.trip_limit(VALUE, f"{name}() arguments: {exc}") from None
        except WireError as exc:
            raise TypeError(f"{name}(): {exc}") from None
        budget.check()
        cap = budget.cap
        if cap is not None:
            cap.pause()  # the host's own allocations are not the guest's
        try:
            result = call_host(name, wire_args, wire_kwargs)
        except Fault as fault:
            exc_type = fault_type(fault.guest_type)
            if fault.terminate:
                budget.trip(Terminated(fault.terminate, fault.guest_type, fault.message))
            raise exc_type(fault.message) from None
        except (LimitExceeded, Terminated, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the host side broke (e.g. a closed channel): not the guest's doing
            budget.host_failure = exc
            stop = budget.trip(
                Terminated("internal", "InternalError", f"capability {name} failed on the host: {type(exc).__name__}")
            )
            raise stop from None
        finally:
            if cap is not None:
                cap.resume()
        if primitive_within(result, value_cap):
            return result
        try:
            return plain(result, max_bytes=value_cap, check=budget.check_time)
        except WireError as exc:
            raise CapabilityError(f"{name}() returned data that cannot reach the guest: {exc}") from None

    capability.__name__ = capability.__qualname__ = name.rsplit(".", 1)[-1]
    capability.__doc__ = f"Capability {name}: runs on the host."
    return capability


_ROOM = 64
"""`primitives_within`'s JSON size bound before any value: the brackets and separators of the call."""
_NUMBER = 24
"""The most JSON text an int of at most 64 bits or a finite float takes."""
_WORD = 5
"""The most JSON text None or a bool takes (``false``)."""


def _str_bound(text: str) -> int:
    return 12 * len(text) + 2  # quoted; a JSON escape is at most 6 bytes per UTF-16 unit


def primitives_within(args: Sequence[Any], kwargs: Mapping[str, Any], value_cap: int) -> bool:
    """True when every value is an int of at most 64 bits, a finite float, a bool, None or a
    str, and an upper bound of their JSON size is within ``value_cap``: then `plain` would
    return each value itself and raise nothing, so the walk can be skipped."""
    if len(args) + len(kwargs) > 16:
        return False
    bound = _ROOM
    values: Sequence[Any] = args
    if kwargs:
        for key in kwargs:
            if type(key) is not str:  # a str subclass: `plain` makes it a str
                return False
            bound += _str_bound(key)
        values = (*args, *kwargs.values())
    for value in values:
        kind = type(value)
        if kind is int:
            if value.bit_length() > 64:
                return False
            bound += _NUMBER
        elif kind is str:
            bound += _str_bound(value)
        elif kind is float:
            if value - value != 0.0:  # inf or nan
                return False
            bound += _NUMBER
        elif value is None or kind is bool:
            bound += _WORD
        else:
            return False
    return bound <= value_cap


def primitive_within(value: Any, value_cap: int) -> bool:
    """`primitives_within` of the one value ``value`` (a result), without building the tuple."""
    kind = type(value)
    if kind is int:
        return value.bit_length() <= 64 and _ROOM + _NUMBER <= value_cap
    if kind is str:
        return _ROOM + _str_bound(value) <= value_cap
    if kind is float:
        return value - value == 0.0 and _ROOM + _NUMBER <= value_cap
    return (value is None or kind is bool) and _ROOM + _WORD <= value_cap
