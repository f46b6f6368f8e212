"""What a run returns: `RunResult`, `ErrorInfo`, `Usage`.

Guest failures are results, never host exceptions: a syntax error, an uncaught guest
exception, a limit, a policy denial, a cancellation by the host and an internal fault all come
back as a `RunResult` with ``ok=False`` and an `ErrorInfo` whose ``kind`` says which.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticSerializationError

from runtimes.wire import MAX_MESSAGE_CHARS, MAX_TYPE_CHARS, clip
from sandbox.limits import LimitName

ErrorKind = Literal["compile_error", "guest_exception", "limit_exceeded", "policy_denied", "cancelled", "internal"]


class ErrorInfo(BaseModel):
    """Why a run failed.

    ``type`` is the guest-visible exception type name (``"ZeroDivisionError"``), or the limit's
    name for ``limit_exceeded``; ``lineno`` is the line in the guest's code, when known;
    ``limit`` is set only for ``limit_exceeded``. A ``message`` longer than 16 384 characters
    or a ``type`` longer than 256 is cut and ends with ``"… [truncated]"``.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    kind: ErrorKind
    type: str
    message: str
    lineno: int | None = None
    limit: LimitName | None = None

    @field_validator("message")
    @classmethod
    def _clip_message(cls, value: str) -> str:
        return clip(value, MAX_MESSAGE_CHARS)

    @field_validator("type")
    @classmethod
    def _clip_type(cls, value: str) -> str:
        return clip(value, MAX_TYPE_CHARS)


class Usage(BaseModel):
    """Resources one run used. ``peak_memory_bytes`` is None where the runtime cannot measure it."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    capability_calls: int = 0


class FileChange(BaseModel):
    """One file the guest created, modified or deleted in a `sandbox.overlay.Overlay` scratch layer.

    ``path`` is the guest path (``mount/inner/path``, or just ``inner/path`` for a single
    mount); ``diff`` is a unified diff (``a/path`` -> ``b/path``, ``/dev/null`` for a created or
    deleted side; ``"Binary files differ"`` when the old content is not UTF-8 text);
    ``before_sha256`` is the host file's hash when the run read it (None: it did not exist);
    ``content`` is the new text (None for a deletion). `Sandbox.apply` writes ``content`` only
    if the host file still has ``before_sha256``.
    """

    model_config = ConfigDict(frozen=True, defer_build=True)

    path: str
    action: Literal["created", "modified", "deleted"]
    diff: str
    before_sha256: str | None = None
    after_sha256: str | None = None
    content: str | None = None


class RunResult(BaseModel):
    """The outcome of one `Sandbox.run`.

    ``value`` is the value of the code's last expression statement as plain data (see
    `runtimes.wire`): JSON types, and ``tuple``, ``set``, ``frozenset``, ``bytes``, ``date``,
    ``datetime``, ``time``, ``timedelta``, ``Decimal`` and ``UUID`` with their types; numpy and
    pandas scalars become Python values; any other object, a non-finite float or a huge int
    becomes its ``repr`` string; None when there is none. Its JSON form (`model_dump_json`) is
    pydantic's: dates and times ISO 8601, ``Decimal`` and ``UUID`` strings, ``bytes`` base64,
    tuples and sets arrays, ``timedelta`` an ISO 8601 duration. Over `Limits.max_value_bytes`
    the run ends with ``limit_exceeded`` / ``"value"``. ``changes`` lists the files written to the scratch layer of the run's file overlay
    (None without an overlay). ``output_truncated`` is True when stdout/stderr hit
    `Limits.max_output_bytes`. ``layers`` names the isolation layers that were actually applied.
    """

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", defer_build=True)

    ok: bool
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    error: ErrorInfo | None = None
    usage: Usage = Field(default_factory=Usage)
    run_id: str
    runtime: str
    isolation: str
    layers: tuple[str, ...] = ()
    warnings: list[str] = Field(default_factory=list)
    """Things the run should know that did not fail it, added by capabilities (e.g. a SQL
    result cut at ``max_rows``), in call order."""
    changes: tuple[FileChange, ...] | None = None
    """Files written in the run's overlay (`Sandbox(files=Overlay(...))`), not yet applied;
    None when the sandbox has no overlay. Commit them with `Sandbox.apply(result.changes)`."""
    session_reset: bool = False
    """True on the first run of a `Session` after it lost its guest state (a limit ended its
    worker or instance, or the sandbox released it); stderr then starts with a notice."""
    timings: dict[str, float] | None = None
    """Seconds spent in each phase of the run, with `Sandbox(timings=True)`; None otherwise.
    Every runtime reports the host's phases: ``prepare`` (from the checked arguments to the
    driver call: secrets, policy, bridge), ``driver`` (the driver's whole run, the guest's
    code included) and ``finish`` (redaction, file changes, building this result). Drivers
    that measure their own work add its phases, which fall inside ``driver`` (restricted:
    ``compile``, ``setup``, ``execute``, ``finish``; process: ``take``, ``channel``, the child's
    (``child.`` and ``limits``, ``program``, the restricted phases, ``report``), and ``reap``; wasi: ``take``, ``call``,
    ``decode``; all prefixed ``driver.``)."""

    def model_dump_json(self, *, indent: int | None = None, **kwargs: Any) -> str:
        """The result as JSON. Guest text may hold lone surrogates, which pydantic's JSON
        serialiser refuses: such a result is written with them as ``\\uXXXX`` escapes."""
        try:
            return super().model_dump_json(indent=indent, **kwargs)
        except PydanticSerializationError:
            from sandbox.jsontext import dumps, jsonable

            return dumps(jsonable(self.model_dump(**kwargs)), indent=indent)


_Model = TypeVar("_Model", bound=BaseModel)
_new = object.__new__
# The four slots every pydantic model instance has, set through their descriptors (cheaper
# than ``object.__setattr__`` by name).
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
_FIELDS: dict[type, tuple[int, set[str]]] = {}


def trusted(cls: type[_Model], values: dict[str, Any]) -> _Model:
    """A ``cls`` holding ``values`` as they are: for host-built data already of the field types,
    with every field given. It is what ``cls.model_construct(**values)`` builds for these plain
    frozen models (no aliases, extra fields, private attributes or post-init hook; `_plain_model`
    checks that on a class's first use), without its per-field loop, which costs several microseconds per
    model on every run. ``values`` becomes the model's ``__dict__``: pass a fresh dict. Fields
    left out get their defaults (a missing required field raises `TypeError`).

    Every model built here shares one ``model_fields_set`` per class (all fields): pydantic
    changes that set in place only when a field is assigned, which a frozen model refuses
    (`model_copy` gives the copy a set of its own first)."""
    entry = _FIELDS.get(cls)
    if entry is None:
        _plain_model(cls)
        entry = _FIELDS[cls] = (len(cls.model_fields), set(cls.model_fields))
    if len(values) != entry[0]:
        values = _complete(cls, values)
    model = _new(cls)
    _set_dict(model, values)
    _set_fields_set(model, entry[1])
    _set_extra(model, None)
    _set_private(model, None)
    return model


def _complete(cls: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    complete: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if name in values:
            complete[name] = values[name]
        elif field.is_required():
            raise TypeError(f"{cls.__name__}.{name} is required")
        else:
            complete[name] = field.get_default(call_default_factory=True, validated_data=complete)
    return complete


def _plain_model(cls: type[BaseModel]) -> None:
    """Raise `TypeError` when `trusted` would not build what ``model_construct`` builds for ``cls``."""
    aliased = [name for name, field in cls.model_fields.items() if field.alias or field.validation_alias]
    if (aliased or cls.model_config.get("extra") == "allow" or cls.__private_attributes__
            or cls.__pydantic_post_init__ or cls.__pydantic_root_model__ or not cls.model_config.get("frozen")):
        raise TypeError(f"{cls.__name__} is not a plain frozen model: build it with model_construct")

