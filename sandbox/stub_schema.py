"""The JSON Schema the code-mode stub (`sandbox.stub`) is rendered from, and how the types
JSON cannot name (dates, decimals, UUIDs, bytes, tuples, sets) cross the boundary.

Each capability's arguments are described in validation mode (what the guest may pass) and its
result in serialization mode (what the guest receives), all in one generation so that shared
types get one definition. Whether a type JSON cannot name reaches the guest as itself is
probed through the real conversion path (`Capability.dump_result` and the wire format), not
assumed, so the stub follows the boundary when it learns to carry more types.
"""

from __future__ import annotations

import datetime
import decimal
import functools
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode

from runtimes.wire import plain

if TYPE_CHECKING:
    from sandbox.capabilities import Capability

_SAMPLES: dict[str, tuple[Any, Any]] = {
    "date": (datetime.date(2000, 1, 2), datetime.date),
    "datetime": (datetime.datetime(2000, 1, 2, 3, 4, 5), datetime.datetime),
    "time": (datetime.time(3, 4, 5), datetime.time),
    "timedelta": (datetime.timedelta(seconds=5), datetime.timedelta),
    "Decimal": (decimal.Decimal("1.5"), decimal.Decimal),
    "UUID": (uuid.UUID(int=1), uuid.UUID),
    "bytes": (b"x", bytes),
    "tuple": ((1, 2), tuple[int, ...]),
    "set": ({1}, set[int]),
    "frozenset": (frozenset({1}), frozenset[int]),
}
"""A sample of each Python type JSON cannot name, to probe how it crosses the boundary."""


class StubSchema(GenerateJsonSchema):
    """pydantic's JSON Schema, with three changes for the stub: types JSON cannot name carry an
    ``x-python`` marker; in serialization mode every model field is required (a dumped model
    has all of them) and keys are field names, not aliases (`Capability.dump_result` dumps by
    name); types without a JSON Schema render as ``Any``."""

    @property
    def by_alias(self) -> bool:
        return bool(self._by_alias) and self.mode == "validation"

    @by_alias.setter
    def by_alias(self, value: bool) -> None:
        self._by_alias = value

    def field_is_required(self, field: Any, total: bool) -> bool:
        if self.mode == "serialization" and field["type"] != "typed-dict-field":
            return not field.get("serialization_exclude")
        return super().field_is_required(field, total)

    def handle_invalid_for_json_schema(self, schema: Any, error_info: str) -> dict[str, Any]:
        return {}


def _marking(kind: str, method: str) -> Any:
    base = getattr(GenerateJsonSchema, method)

    def mark(self: GenerateJsonSchema, schema: Any) -> dict[str, Any]:
        result = dict(base(self, schema))
        result["x-python"] = kind
        return result

    return mark


for _kind, _method in (("date", "date_schema"), ("datetime", "datetime_schema"), ("time", "time_schema"),
                       ("timedelta", "timedelta_schema"), ("Decimal", "decimal_schema"), ("UUID", "uuid_schema"),
                       ("bytes", "bytes_schema"), ("tuple", "tuple_schema"), ("set", "set_schema"),
                       ("frozenset", "frozenset_schema")):
    setattr(StubSchema, _method, _marking(_kind, _method))


@functools.cache
def carried(kind: str, direction: str) -> bool:
    """True when the boundary carries ``kind`` as itself in ``direction`` ("arg": the guest can
    pass one; "result": the guest receives one), probed through the real conversion path."""
    from sandbox.capabilities import Capability

    sample, annotation = _SAMPLES[kind]
    try:
        if direction == "arg":
            plain(sample)
            return True

        def probe() -> Any:
            return sample

        probe.__annotations__ = {"return": annotation}
        return type(plain(Capability(probe, name="probe").dump_result(sample))) is type(sample)
    except Exception:  # refused by the wire or the dump: it crosses in its JSON form
        return False


def capability_schemas(
    capabilities: Iterable[Capability],
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any]]:
    """For every capability (by name): the JSON Schema object of its arguments, of its result,
    and the shared definitions they refer to (``$defs``, keyed as pydantic names them)."""
    inputs: list[tuple[tuple[str, str], JsonSchemaMode, TypeAdapter[Any]]] = []
    for cap in capabilities:
        inputs.append(((cap.name, "arg"), "validation", TypeAdapter(cap.arguments_model)))
        inputs.append(((cap.name, "result"), "serialization", TypeAdapter(cap.return_type)))
    schemas, defs = TypeAdapter.json_schemas(inputs, schema_generator=StubSchema)
    definitions: dict[str, Any] = dict(defs.get("$defs", {}))
    arguments: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for ((name, direction), _mode), schema in schemas.items():
        if direction == "arg":  # the arguments model itself is not a type the guest sees
            arguments[name] = definitions.pop(ref_name(schema["$ref"]))
        else:
            results[name] = schema
    return arguments, results, definitions


def ref_name(ref: str) -> str:
    """The definition key of a ``$ref`` (``#/$defs/Order`` -> ``Order``)."""
    return ref.rsplit("/", 1)[-1]
