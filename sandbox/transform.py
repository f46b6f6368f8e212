"""Bounded transforms: run a generated ``def transform(rows): ...`` over rows, validate the output.

    from pydantic import BaseModel
    from sandbox import Sandbox

    class Out(BaseModel):
        region: str
        total: float

    code = '''
    def transform(rows):
        totals = {}
        for r in rows:
            totals[r["region"]] = totals.get(r["region"], 0) + float(r["amount"])
        return [{"region": k, "total": v} for k, v in sorted(totals.items())]
    '''
    with Sandbox() as sb:
        result = sb.transform(code, "sales.csv", output_model=Out)
        result.ok, result.rows, result.invalid, result.run

Input (``data``): a list of dicts (str keys; values plain data as `runtimes.wire` defines it:
JSON types, dates, times, ``Decimal``, ``UUID``, bytes, tuples, sets, numpy/pandas scalars),
or the path of a CSV
file (``.csv``: header row, every value a str, a missing field None) or a JSON Lines file
(``.jsonl``/``.ndjson``: one JSON object per line). Bad input is the host's mistake and raises
`ConfigurationError` (a `ValueError`)/`TypeError` before anything runs.

Input-size limits (keyword arguments of `Sandbox.transform`): ``max_rows`` (default 100 000)
and ``max_bytes`` (default 8 MiB, measured as compact JSON; a file is checked by its size
before it is read). Over either: `ConfigurationError`. The guest still runs under the sandbox's
`Limits`: its memory limit must hold the rows as Python objects, in and out, about 15-20
times ``max_bytes`` (measured: 100 000 small rows, 7 MiB of JSON, peak 142 MB in a confined
child; they fit the default 256 MiB on every runtime). Raise ``memory_bytes`` with ``max_bytes``.
The output crosses back the same way, within `Limits.max_value_bytes` (default 16 MiB) on every
runtime.

Copies: the host makes one pass over list input that checks and measures it without copying
it; CSV and JSON Lines are parsed straight into rows. The rows then cross into the guest once:
the in-process restricted runtime copies them into guest globals (so the guest cannot touch
host objects); ``isolation="process"`` serialises them once into the child's pipe; wasi
serialises them once into the component. `Sandbox.run`'s own input copy is skipped.

The guest's code runs as a normal `Sandbox.run` (same limits, capabilities, policy, records,
overlay), then ``transform(rows)`` is called on the input. Its return value must be a list of
dicts; with ``output_model`` (a pydantic model) every row is validated and the first invalid
one is reported with its index, its content and pydantic's message.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError

from runtimes.wire import WireError, dumps, encode
from sandbox.errors import ConfigurationError
from sandbox.results import RunResult

if TYPE_CHECKING:
    from sandbox.sandbox import Sandbox

DEFAULT_MAX_ROWS = 100_000
DEFAULT_MAX_BYTES = 8 << 20
ENTRY = "transform"
_INPUT = "transform_input_rows"  # a name generated code is unlikely to assign


class InvalidRow(BaseModel):
    """Why the transform's output was rejected.

    ``index`` is the position of the first invalid row (None when the output as a whole is
    wrong, e.g. not a list); ``row`` is that row as returned; ``message`` says what is wrong.
    """

    model_config = ConfigDict(frozen=True)

    index: int | None
    message: str
    row: Any = None


class TransformResult(BaseModel):
    """The outcome of `Sandbox.transform`.

    ``ok`` is True when the run succeeded and every output row is valid. ``rows`` holds the
    output: dicts, or instances of ``output_model`` when one was given; None when not ok.
    ``invalid`` describes the first invalid row (None when the run itself failed: see
    ``run.error``). ``run`` is the underlying `RunResult` (stdout, usage, run id, changes).
    ``input_rows`` counts the rows the guest received.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, ser_json_bytes="base64")

    ok: bool
    rows: list[Any] | None = None
    invalid: InvalidRow | None = None
    input_rows: int
    run: RunResult


def load_rows(data: Any, *, max_rows: int = DEFAULT_MAX_ROWS, max_bytes: int = DEFAULT_MAX_BYTES) -> list[dict]:
    """The input rows of a transform, checked against the limits (see the module docstring)."""
    for label, value in (("max_rows", max_rows), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{label} must be an int >= 1, got {value!r}")
    if isinstance(data, (str, os.PathLike)):
        return _read_file(Path(data), max_rows, max_bytes)
    if not isinstance(data, list):
        raise TypeError(f"data must be a list of dicts or a .csv/.jsonl path, not {type(data).__name__}")
    if len(data) > max_rows:
        raise ConfigurationError(f"the input has {len(data)} rows; the limit is max_rows={max_rows}")
    size = 2
    for index, row in enumerate(data):
        if not isinstance(row, dict):
            raise TypeError(f"row {index} is a {type(row).__name__}, not a dict")
        size += _measure(row, f"row {index}", 0) + 1
        if size > max_bytes:
            raise ConfigurationError(f"the input is larger than max_bytes={max_bytes} (as JSON) by row {index}")
    return data


def run_transform(
    sandbox: Sandbox,
    code: str,
    data: Any,
    *,
    output_model: type[BaseModel] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    strict: bool = False,
) -> TransformResult:
    if not isinstance(code, str):
        raise TypeError(f"code must be str, not {type(code).__name__}")
    if output_model is not None and not (isinstance(output_model, type) and issubclass(output_model, BaseModel)):
        raise TypeError("output_model must be a pydantic BaseModel subclass")
    if strict and output_model is None:
        raise ConfigurationError("transform(strict=True) needs an output_model to be strict about")
    rows = load_rows(data, max_rows=max_rows, max_bytes=max_bytes)
    program = f"{code.rstrip()}\n\n{ENTRY}({_INPUT})\n"
    run = sandbox.run(program, inputs={_INPUT: rows})
    if not run.ok:
        return TransformResult(ok=False, input_rows=len(rows), run=run)
    invalid, out = validate_rows(run.value, output_model, strict=strict)
    return TransformResult(ok=invalid is None, rows=out if invalid is None else None, invalid=invalid,
                           input_rows=len(rows), run=run)


def validate_rows(
    value: Any, output_model: type[BaseModel] | None, *, strict: bool = False
) -> tuple[InvalidRow | None, list[Any]]:
    """(first problem or None, validated rows); ``strict``: no coercion and no undeclared keys."""
    if not isinstance(value, list):
        shown = value if isinstance(value, (str, int, float, bool)) or value is None else type(value).__name__
        return InvalidRow(index=None, message=f"transform() must return a list of dicts, got {shown!r}"), []
    out: list[Any] = []
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            return InvalidRow(index=index, message=f"row {index} is not a dict", row=row), []
        if output_model is None:
            out.append(row)
            continue
        if strict:
            extra = sorted(str(key) for key in row if key not in output_model.model_fields)
            if extra:
                return InvalidRow(index=index, message=f"row {index}: undeclared keys {extra[:5]}", row=row), []
        try:
            out.append(output_model.model_validate(row, strict=strict))
        except ValidationError as exc:
            parts = [f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors()[:5]]
            return InvalidRow(index=index, message=f"row {index}: " + "; ".join(parts), row=row), []
    return None, out


def _read_file(path: Path, max_rows: int, max_bytes: int) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ConfigurationError(f"{str(path)!r}: read rows from a .csv, .jsonl or .ndjson file")
    if not path.is_file():
        raise ConfigurationError(f"{str(path)!r} is not an existing file")
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigurationError(f"{str(path)!r} is {size} bytes; the limit is max_bytes={max_bytes}")
    rows: list[dict] = []
    with open(path, newline="" if suffix == ".csv" else None, encoding="utf-8") as fh:
        if suffix == ".csv":
            for row in csv.DictReader(fh):
                if None in row:
                    raise ConfigurationError(f"{str(path)!r}: row {len(rows)} has more fields than the header")
                rows.append(row)
                if len(rows) > max_rows:
                    raise ConfigurationError(f"{str(path)!r} has more than max_rows={max_rows} rows")
        else:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigurationError(f"{str(path)!r} line {lineno}: not JSON: {exc.msg}") from None
                if not isinstance(row, dict):
                    raise ConfigurationError(f"{str(path)!r} line {lineno}: a row must be a JSON object")
                _measure(row, f"line {lineno}", 0)  # NaN/Infinity are not JSON data
                rows.append(row)
                if len(rows) > max_rows:
                    raise ConfigurationError(f"{str(path)!r} has more than max_rows={max_rows} rows")
    return rows


def _measure(value: Any, where: str, depth: int) -> int:
    """Approximate compact-JSON (wire format) size of ``value``; raises `TypeError` for anything
    that is not plain data."""
    if depth > 100:
        raise TypeError(f"{where}: nested deeper than 100 levels")
    if value is None or value is True or value is False:
        return 5
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, int):
        return 20
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where}: {value!r} is not JSON-compatible")
        return 24
    if isinstance(value, (list, tuple)):
        return 2 + sum(_measure(item, where, depth + 1) + 1 for item in value)
    if isinstance(value, dict):
        total = 2
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: keys must be str, not {type(key).__name__}")
            total += len(key) + 4 + _measure(item, where, depth + 1)
        return total
    try:
        return len(dumps(encode(value)))
    except WireError:
        raise TypeError(f"{where}: a {type(value).__name__} is not plain data") from None
