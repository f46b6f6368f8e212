"""Typed values cross the boundary with their types, on every runtime: as inputs, as the run's
value, as capability arguments and as capability results (the wire format of `runtimes.wire`)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from runtimes import wire
from sandbox import Sandbox
from sandbox.capabilities import capability

PARIS = dt.timezone(dt.timedelta(hours=1), "CET")

TYPED: list[tuple[str, Any]] = [
    ("date", dt.date(2024, 1, 2)),
    ("datetime_aware", dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=PARIS)),
    ("datetime_utc", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
    ("datetime_naive", dt.datetime(2024, 1, 2, 3, 4, 5)),
    ("time", dt.time(23, 59, 58, 1)),
    ("time_aware", dt.time(12, 0, tzinfo=dt.timezone.utc)),
    ("timedelta", dt.timedelta(days=-2, seconds=5, microseconds=7)),
    ("decimal", Decimal("1.10")),
    ("decimal_exp", Decimal("-1.5E+30")),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("bytes", b"\x00\xffbin\n"),
    ("tuple", (1, "a", (2.5, None))),
    ("set", {1, 2, 3}),
    ("frozenset", frozenset({"a", "b"})),
    ("nested", {"rows": [{"day": dt.date(2024, 2, 29), "amount": Decimal("3.00"), "tags": ("x",)}]}),
    ("looks_like_a_tag", {"$type": "date", "v": "2024-01-01"}),
    ("looks_like_an_escape", {"$type": "dict", "v": [["a", 1]]}),
    ("plain", {"i": 1, "f": 1.5, "s": "é\u2028", "n": None, "l": [True, False]}),
]
IDS = [name for name, _ in TYPED]
VALUES = [value for _, value in TYPED]


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.utcoffset() == b.utcoffset()
    return a == b


@capability
def echo(value: Any) -> Any:
    """Return ``value`` as it arrived."""
    return value


@capability
def kinds(value: Any) -> str:
    """The type name of ``value`` as the host received it."""
    return type(value).__name__


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_typed_round_trip(make_sandbox, value):
    sb = make_sandbox(capabilities=[echo, kinds])
    # input -> guest value
    result = sb.run("x", inputs={"x": value})
    assert result.ok, result.error
    assert _same(result.value, value)
    # the guest sees the type, and passes it to a capability that sees it too and returns it
    result = sb.run("[type(x).__name__, kinds(x), echo(x), echo(value=x) == x]", inputs={"x": value})
    assert result.ok, result.error
    name = type(value).__name__
    assert result.value[:2] == [name, name]
    assert _same(result.value[2], value)
    assert result.value[3] is True
    json.loads(result.model_dump_json())


def test_typed_values_made_by_the_guest(make_sandbox):
    sb = make_sandbox()
    code = (
        "import datetime, decimal, uuid\n"
        "[datetime.date(2024, 1, 2), datetime.datetime(2024, 1, 2, 3, tzinfo=datetime.timezone.utc),"
        " datetime.time(4, 5), datetime.timedelta(hours=1), decimal.Decimal('1.10'),"
        " uuid.UUID(int=7), b'ab', (1, 2), {3}, frozenset([4]), {'$type': 'uuid', 'v': 'not-a-uuid'}]"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert _same(result.value, [
        dt.date(2024, 1, 2), dt.datetime(2024, 1, 2, 3, tzinfo=dt.timezone.utc), dt.time(4, 5),
        dt.timedelta(hours=1), Decimal("1.10"), uuid.UUID(int=7), b"ab", (1, 2), {3}, frozenset([4]),
        {"$type": "uuid", "v": "not-a-uuid"},
    ])
    dumped = json.loads(result.model_dump_json())["value"]
    assert dumped[:7] == ["2024-01-02", "2024-01-02T03:00:00Z", "04:05:00", "PT1H", "1.10",
                          "00000000-0000-0000-0000-000000000007", "YWI="]
    assert dumped[7:10] == [[1, 2], [3], [4]]


def test_guest_subclasses_become_plain_values(make_sandbox):
    sb = make_sandbox(capabilities=[kinds])
    code = (
        "import datetime\n"
        "class D(datetime.date):\n"
        "    def isoformat(self):\n"
        "        return 'forged'\n"
        "d = D(2024, 1, 2)\n"
        "[kinds(d), d]"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert result.value == ["date", dt.date(2024, 1, 2)] and type(result.value[1]) is dt.date


def test_unsupported_values_keep_their_repr_as_the_value_and_are_refused_as_arguments(make_sandbox):
    sb = make_sandbox(capabilities=[echo])
    result = sb.run("[complex(1, 2), float('nan'), 2 ** 20000]")
    assert result.ok and result.value[0] == "(1+2j)" and result.value[1] == "nan"
    assert result.value[2] == "<int of 20001 bits>"
    result = sb.run("try:\n    echo(complex(1, 2))\nexcept TypeError as e:\n    r = str(e)\nr")
    assert result.ok and "complex" in result.value


class Row(BaseModel):
    day: dt.date
    amount: Decimal
    at: dt.datetime


def test_transform_with_typed_rows_and_output_model(make_sandbox):
    sb = make_sandbox()
    rows = [{"day": dt.date(2024, 1, i), "amount": Decimal(f"{i}.50"),
             "at": dt.datetime(2024, 1, i, 12, tzinfo=dt.timezone.utc)} for i in range(1, 4)]
    code = (
        "import datetime\n"
        "def transform(rows):\n"
        "    return [{'day': r['day'] + datetime.timedelta(days=1), 'amount': r['amount'] * 2, 'at': r['at']}\n"
        "            for r in rows]\n"
    )
    result = sb.transform(code, rows, output_model=Row)
    assert result.ok, (result.invalid, result.run.error)
    assert result.rows[0] == Row(day=dt.date(2024, 1, 2), amount=Decimal("3.00"), at=rows[0]["at"])
    json.loads(result.model_dump_json())


def test_numpy_and_pandas_scalars_become_python_values():
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")
    with Sandbox(isolation="process", modules=("numpy", "pandas")) as sb:
        result = sb.run(
            "import numpy as np\nimport pandas as pd\n"
            "[np.int64(3), np.float32(0.5), np.bool_(True), pd.Timestamp('2024-01-02 03:04:05'),"
            " pd.Timedelta(seconds=3), np.array([1, 2]).sum()]"
        )
    assert result.ok, result.error
    assert _same(result.value, [3, 0.5, True, dt.datetime(2024, 1, 2, 3, 4, 5), dt.timedelta(seconds=3), 3])
    # host-side numpy/pandas inputs are accepted the same way
    value = wire.plain({"n": np.int64(5), "t": pd.Timestamp("2024-01-02", tz="UTC")})
    assert _same(value, {"n": 5, "t": dt.datetime(2024, 1, 2, tzinfo=dt.timezone.utc)})


def test_forged_tags_from_a_guest_are_refused_or_typed_never_objects():
    for text in ['{"$type": "os", "v": "x"}', '{"$type": "date", "v": "2024-01-01", "x": 1}',
                 '{"$type": "decimal", "v": "1e999999"}', '{"$type": "set", "v": [[1]]}',
                 '{"$type": "bytes", "v": "***"}', '{"$type": "timedelta", "v": [1e300, 0, 0]}']:
        with pytest.raises(wire.WireError):
            wire.loads_bounded(text, max_bytes=1000)
    assert wire.loads_bounded('{"$type": "dict", "v": [["$type", "x"]]}', max_bytes=1000) == {"$type": "x"}
