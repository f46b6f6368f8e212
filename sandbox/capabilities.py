"""Capabilities: typed host functions the guest may call.

`@capability` turns a fully type-hinted function into a `Capability`. At call time its
arguments are bound to the signature and validated by pydantic; its return value is dumped
to plain data (`runtimes.wire.plain`: JSON types plus dates, times, Decimal, UUID, bytes,
tuples and sets), so no host object ever reaches the guest. The same declaration
renders a Python stub (code mode) and a JSON tool schema (tool mode).
"""

from __future__ import annotations

import contextvars
import inspect
import keyword
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model
from pydantic_core import to_jsonable_python

from runtimes.wire import plain
from sandbox.capability_fast_paths import (
    EXACT, all_exact, bind_exact, binds_by_position, exact_ok, fast_parameters, plain_shape,
)
from sandbox.call_time import run_remaining
from sandbox.errors import ConfigurationError
from sandbox.runtime import CapabilityFault

_CALL_DETAIL: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("sandbox_call_detail", default=None)


def record_detail(**detail: Any) -> None:
    """Attach capability-specific detail (JSON-compatible) to the run record of the current call.

    Call it from inside a capability function (e.g. the SQL capability notes the statement
    hash, tables touched and rows returned); it lands in `sandbox.audit.CallRecord.detail`.
    Outside a call made by a sandbox run it does nothing.
    """
    bucket = _CALL_DETAIL.get()
    if bucket is not None:
        bucket.update(detail)


def warn(message: str) -> None:
    """Add a warning to the current run: it lands in `RunResult.warnings` (and in the call's
    record, under ``detail["warnings"]``). Call it from inside a capability function, e.g. when
    a result was cut. Outside a call made by a sandbox run it does nothing."""
    bucket = _CALL_DETAIL.get()
    if bucket is not None:
        bucket.setdefault("warnings", []).append(str(message))


open_call_detail: Callable[[dict[str, Any]], contextvars.Token] = _CALL_DETAIL.set
"""``open_call_detail(bucket)``: collect `record_detail` and `warn` of the call running in this
context into ``bucket`` (host bridge use, in a context copied for that call alone, so it needs no
reset). The context variable's own ``set`` (a capability call makes no Python call for it)."""


remaining_time = run_remaining
"""Seconds left in the wall budget of the run whose capability call is executing, or None
outside a call made by a sandbox run (see `sandbox.call_time`). A capability that waits on
something must not wait longer: at the deadline the call is abandoned and the run ends."""


MAX_NAME_LENGTH = 200
"""Longest capability name; runtimes read a guest's call name no further than this."""
CAPABILITY_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")
_RESERVED = frozenset({"secrets", "print", "PolicyDenied", "CapabilityError"})


def check_capability_name(name: str) -> None:
    """Raise `ConfigurationError` (saying what to change) unless ``name`` is a valid capability
    name: identifiers joined by dots, no keyword, at most `MAX_NAME_LENGTH` characters, not reserved."""
    if not CAPABILITY_NAME.match(name) or any(keyword.iskeyword(part) for part in name.split(".")):
        raise ConfigurationError(
            f"capability name {name!r} is not valid: use identifiers joined by dots, e.g. 'sql.query'"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(f"capability name {name[:40]!r}... is longer than {MAX_NAME_LENGTH} "
                                 "characters: choose a shorter name")
    if name.split(".")[0] in _RESERVED or name.startswith("_"):
        raise ConfigurationError(f"capability name {name!r} is reserved: choose another name")


class Capability:
    """A host function exposed to guest code under ``name``.

    Calling the object calls the function directly (host side, no validation). A guest call
    goes through `bind` (validates the arguments) and `call_bound` / `dump_result` (converts
    the result to JSON-compatible data), or through `invoke` (the two in one, with a by-position
    call for arguments already of their exact declared types) when nothing needs the bound
    arguments.
    """

    def __init__(self, func: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                 action: Callable[[Mapping[str, Any]], str] | None = None) -> None:
        if not callable(func):
            raise TypeError(f"@capability needs a function, got {type(func).__name__}")
        self.func = func
        self.name: str = name or str(getattr(func, "__name__", ""))
        check_capability_name(self.name)
        self.description = inspect.cleandoc(description or func.__doc__ or "")
        self.action = action
        self.release: Callable[[], None] | None = None
        """Called by `Sandbox.close` to free what the capability holds (processes, connections);
        the capability must still work afterwards (it may re-acquire them)."""
        self.signature = inspect.signature(func)
        self.is_async = inspect.iscoroutinefunction(func)
        hints = _hints(func, self.name)
        fields: dict[str, Any] = {}
        for param in self.signature.parameters.values():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(
                    f"capability {self.name!r}: *{param.name} is not supported; declare each parameter with a type"
                )
            if param.kind == param.POSITIONAL_ONLY:
                raise TypeError(
                    f"capability {self.name!r}: positional-only parameter {param.name!r} is not supported "
                    "(calls pass arguments by name); remove the '/'"
                )
            if param.name not in hints:
                raise TypeError(
                    f"capability {self.name!r}: parameter {param.name!r} has no type hint; "
                    "annotate every parameter so calls can be validated"
                )
            default = ... if param.default is param.empty else param.default
            fields[param.name] = (hints[param.name], default)
        if "return" not in hints:
            raise TypeError(f"capability {self.name!r}: add a return type hint (use '-> None' if it returns nothing)")
        self.return_type = hints["return"]
        self.arguments_model: type[BaseModel] = create_model(
            f"{self.name.replace('.', '_')}_arguments", __config__=ConfigDict(extra="forbid"), **fields
        )
        self._result = TypeAdapter(self.return_type)
        self._plain_shape = plain_shape(self.return_type)
        self._names = tuple(self.signature.parameters)
        self._all_positional = all(p.kind is p.POSITIONAL_OR_KEYWORD for p in self.signature.parameters.values())
        """Every parameter may be passed by position: arguments for all of them, by position, bind in order."""
        self._fast_params = fast_parameters(self.signature, hints)
        self._fast_names = frozenset(p[0] for p in self._fast_params) if self._fast_params is not None else frozenset()
        self._fast_result = next((t for t in EXACT if self.return_type is t), None)
        self._fast_kinds = tuple(p[1] for p in self._fast_params) if self._fast_params is not None else ()
        overridden = type(self).bind is not Capability.bind or type(self).call_bound is not Capability.call_bound
        self._positional = None if overridden or not binds_by_position(func, self._fast_params) else self._fast_kinds
        self._positional_func = func
        """The function ``_positional`` was worked out for: a copy given another ``func`` binds by name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Capability {self.name}{self.signature}>"

    def bind(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind and validate guest arguments; return them by parameter name.

        Raises `CapabilityFault` ``TypeError`` for arity or unknown keywords and ``ValueError``
        for values that fail validation, with pydantic's message.

        When every parameter is annotated exactly ``int``, ``str``, ``bool`` or ``float`` and
        every value passed is of exactly that type (a float finite, an int within the wire's
        size), validation would return the values unchanged: they are bound without it. Any
        other call, errors included, takes the full path.
        """
        fast = self._fast_params
        if fast is not None and len(args) <= len(fast):
            arguments = bind_exact(fast, self._fast_names, self._fast_kinds, args, kwargs)
            if arguments is not None:
                return arguments
        names = self._names
        if self._all_positional and not kwargs and len(args) == len(names):
            given = dict(zip(names, args))  # what the signature binds them to
        else:
            try:
                given = dict(self.signature.bind(*args, **kwargs).arguments)
            except TypeError as exc:
                raise CapabilityFault("TypeError", f"{self.name}(): {exc}") from None
        try:
            model = self.arguments_model.model_validate(given)
        except ValidationError as exc:
            raise CapabilityFault("ValueError", f"{self.name}(): invalid arguments: {_summarise(exc)}") from None
        return {name: getattr(model, name) for name in names}

    def action_for(self, arguments: Mapping[str, Any]) -> str:
        """The action a call with validated ``arguments`` performs, for policy rules: what the
        ``action`` callable given at construction returns (``http.request`` maps
        ``method="GET"`` to ``"http.get"``), else the capability's name."""
        if self.action is None:
            return self.name
        return str(self.action(arguments))

    def call_bound(self, arguments: dict[str, Any]) -> Any:
        """Call the function with validated arguments and return its result as plain data.

        A coroutine function runs to completion on a fresh event loop when called from a
        thread that has none running (see `Sandbox.arun` for running on the host's loop).
        The function's own exceptions propagate; a result that cannot be dumped raises
        `CapabilityFault` ``CapabilityError``.
        """
        return self._converted(self.func(**arguments))

    def invoke(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """``call_bound(bind(args, kwargs))``, for a caller that needs no bound arguments (no
        policy to ask, no record to write): the same result, the same faults and exceptions.

        A call that passes every parameter by position, each of exactly its declared
        ``int``/``str``/``bool``/``float`` type (see `bind`), calls the function with those
        values as they are; this needs a plain function whose own parameters are the
        signature's, in order (so passing by position is passing by name), and a class that
        keeps `bind` and `call_bound` as they are here (a subclass that overrides either always
        goes through both).
        """
        kinds = self._positional
        if (kinds is not None and not kwargs and len(args) == len(kinds) and self.func is self._positional_func
                and all_exact(kinds, args)):
            return self._converted(self.func(*args))
        return self.call_bound(self.bind(args, kwargs))

    def _converted(self, result: Any) -> Any:
        """The function's ``result`` as plain data (see `call_bound`): awaited first when it is
        awaitable, then `dump_result` (a subclass's own included)."""
        if inspect.isawaitable(result):
            import asyncio

            result = asyncio.run(_await(result))
        return self.dump_result(result)

    def dump_result(self, result: Any) -> Any:
        """Convert a host result to plain data through the declared return type: typed values
        (dates, Decimal, UUID, bytes, tuples, sets) keep their type, numpy/pandas scalars become
        Python values, anything else takes its pydantic JSON form (an enum its value, a path its text).
        A result of exactly the declared ``int``/``str``/``bool``/finite ``float`` type is
        returned as is (what the conversion would return). For a declared ``Any``, ``None``,
        ``dict``, ``list``, ``dict[str, Any]``, ``list[Any]``, ``list[dict]`` or
        ``list[dict[str, Any]]`` and a result of that shape (exact types), the declared type's
        serializer keeps every value as it infers it: the result is copied by `plain` alone, and
        when `plain` refuses something in it, the conversion above decides."""
        kind = self._fast_result
        if kind is not None and type(result) is kind and exact_ok(result):
            return result
        shape = self._plain_shape
        if shape is not None and shape(result):
            try:
                return plain(result)
            except Exception:  # noqa: BLE001 - something plain refuses: the declared type's conversion decides
                pass
        try:
            return plain(self._result.dump_python(result, mode="python"), default=to_jsonable_python)
        except Exception as exc:  # pydantic raises several types for unserialisable values
            raise CapabilityFault(
                "CapabilityError", f"{self.name}() returned a value that does not match its declared return type: {exc}"
            ) from None

    def stub(self) -> str:
        """A Python stub of this capability for an LLM prompt: signature and docstring (see
        `sandbox.stub`; `describe` also defines the types it names)."""
        from sandbox.stub import render_function

        return render_function(self)

    def tool_schema(self) -> dict[str, Any]:
        """A JSON tool schema (name, description, JSON Schema of the parameters) for tool mode."""
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        return {"name": self.name, "description": self.description, "parameters": schema}


@overload
def capability(func: Callable[..., Any], /) -> Capability: ...
@overload
def capability(*, name: str | None = None, description: str | None = None) -> Callable[[Callable[..., Any]], Capability]: ...
def capability(
    func: Callable[..., Any] | None = None, /, *, name: str | None = None, description: str | None = None
) -> Capability | Callable[[Callable[..., Any]], Capability]:
    """Declare a host function as a capability: ``@capability`` or ``@capability(name="sql.query")``.

    Every parameter and the return value need type hints (raises `TypeError` otherwise);
    ``*args``/``**kwargs`` are refused. ``name`` defaults to the function's name; dotted names
    appear in the guest as attributes of a namespace (``sql.query(...)``).
    """
    if func is not None:
        return Capability(func, name=name, description=description)
    return lambda f: Capability(f, name=name, description=description)


def collect(capabilities: Iterable[Capability | Callable[..., Any]]) -> dict[str, Capability]:
    """Index capabilities by name, wrapping plain functions; raise `ConfigurationError` (a `ValueError`) on duplicates."""
    result: dict[str, Capability] = {}
    for item in capabilities:
        cap = item if isinstance(item, Capability) else Capability(item)
        if cap.name in result:
            raise ConfigurationError(f"two capabilities are named {cap.name!r}: rename one with @capability(name=...)")
        result[cap.name] = cap
    names = set(result)
    for cap_name in names:
        prefix = cap_name + "."
        if any(other.startswith(prefix) for other in names):
            raise ConfigurationError(f"capability {cap_name!r} clashes with the namespace of another capability")
    return result


class ApiDescription(BaseModel):
    """The guest API of a sandbox: a Python stub for code mode, JSON tool schemas for tool mode,
    and the modules guest code may import."""

    model_config = ConfigDict(defer_build=True)

    stub: str
    tools: list[dict[str, Any]]
    modules: list[str] = []
    """The import allowlist of the sandbox's runtime (public names), for the code-mode prompt."""


def describe(
    capabilities: dict[str, Capability], secret_names: Iterable[str] = (), modules: Iterable[str] = ()
) -> ApiDescription:
    """Render the guest-visible API (see `sandbox.stub`): one stub defining the types the
    capabilities use, namespaces as nested classes, the secret handles by name."""
    from sandbox.stub import render_api

    return ApiDescription(
        stub=render_api(capabilities, secret_names),
        tools=[c.tool_schema() for c in capabilities.values()],
        modules=list(modules),
    )


def _hints(func: Callable[..., Any], name: str) -> dict[str, Any]:
    try:
        return get_type_hints(func, include_extras=True)  # keeps Annotated constraints, so they are validated
    except Exception as exc:
        raise TypeError(f"capability {name!r}: cannot resolve its type hints: {exc}") from None


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


async def _await(awaitable: Any) -> Any:
    return await awaitable
