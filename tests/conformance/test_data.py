"""Data-team features on every runtime: read-only SQL, transforms, the file overlay."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from pydantic import BaseModel

from sandbox.audit import MemorySink
from sandbox.overlay import Overlay
from sandbox.sql import sql_capability

pytest.importorskip("sqlglot")


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def shop(tmp_path):
    path = tmp_path / "shop.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE orders(id INTEGER, region TEXT, amount REAL);"
        "CREATE TABLE staff(name TEXT, salary REAL);"
        "INSERT INTO orders VALUES (1, 'north', 10), (2, 'south', 5), (3, 'north', 2.5);"
        "INSERT INTO staff VALUES ('ann', 1e6);"
    )
    conn.commit()
    conn.close()
    return path


class Total(BaseModel):
    region: str
    total: float


TRANSFORM = """
def transform(rows):
    totals = {}
    for r in rows:
        totals[r["region"]] = totals.get(r["region"], 0) + float(r["amount"])
    return [{"region": k, "total": v} for k, v in sorted(totals.items())]
"""


def test_sql_reads_and_denies_on_every_runtime(make_sandbox, shop):
    before = _sha(shop)
    sink = MemorySink()
    sb = make_sandbox(capabilities=sql_capability(shop, tables=["orders"]), records=sink)
    result = sb.run(
        "r = sql.query('SELECT region, sum(amount) AS total FROM orders GROUP BY region ORDER BY region')\n"
        "denied = []\n"
        "for q in ['DELETE FROM orders', 'DROP TABLE orders', \"ATTACH 'x.db' AS x\", 'SELECT * FROM staff']:\n"
        "    try:\n"
        "        sql.query(q)\n"
        "    except PolicyDenied as e:\n"
        "        denied.append(str(e))\n"
        "[r['rows'], len(denied)]"
    )
    assert result.ok, result.error
    assert result.value == [[{"region": "north", "total": 12.5}, {"region": "south", "total": 5.0}], 4]
    uncaught = sb.run("sql.query('DELETE FROM orders')")
    assert uncaught.error.kind == "policy_denied"
    assert _sha(shop) == before
    calls = sink.records[0].calls
    assert [c.detail["decision"] for c in calls] == ["allow", "deny", "deny", "deny", "deny"]
    assert calls[0].detail["rows"] == 2 and calls[0].detail["tables"] == ["orders"]


def test_transform_list_csv_jsonl_on_every_runtime(make_sandbox, tmp_path):
    rows = [{"region": "north", "amount": 10}, {"region": "south", "amount": 5}, {"region": "north", "amount": 2.5}]
    csv_path = tmp_path / "in.csv"
    csv_path.write_text("region,amount\n" + "".join(f"{r['region']},{r['amount']}\n" for r in rows))
    jsonl_path = tmp_path / "in.jsonl"
    jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sb = make_sandbox()
    for data in (rows, csv_path, str(jsonl_path)):
        result = sb.transform(TRANSFORM, data, output_model=Total)
        assert result.ok, (data, result.run.error, result.invalid)
        assert result.input_rows == 3
        assert result.rows == [Total(region="north", total=12.5), Total(region="south", total=5.0)]
    assert rows[0] == {"region": "north", "amount": 10}  # host input untouched


def test_transform_reports_the_first_invalid_row(make_sandbox):
    sb = make_sandbox()
    code = "def transform(rows):\n    return [{'region': 'a', 'total': 1}, {'region': 'b', 'total': 'lots'}, {}]"
    result = sb.transform(code, [{"x": 1}], output_model=Total)
    assert not result.ok and result.rows is None
    assert result.invalid.index == 1
    assert result.invalid.row == {"region": "b", "total": "lots"}
    assert "total" in result.invalid.message
    not_list = sb.transform("def transform(rows):\n    return 42", [])
    assert not not_list.ok and not_list.invalid.index is None
    broken = sb.transform("def transform(rows):\n    return rows[5]", [{"a": 1}])
    assert not broken.ok and broken.invalid is None
    assert broken.run.error.kind == "guest_exception" and broken.run.error.type == "IndexError"


def test_transform_strict_refuses_coercion_and_undeclared_keys(make_sandbox):
    sb = make_sandbox()
    coerced = "def transform(rows):\n    return [{'region': 'a', 'total': '12'}]"
    assert sb.transform(coerced, [], output_model=Total).ok  # lax: "12" becomes 12.0
    strict = sb.transform(coerced, [], output_model=Total, strict=True)
    assert not strict.ok and strict.invalid.index == 0 and "total" in strict.invalid.message
    extra = sb.transform("def transform(rows):\n    return [{'region': 'a', 'total': 1.0, 'note': 'x'}]", [],
                         output_model=Total, strict=True)
    assert not extra.ok and "note" in extra.invalid.message
    exact = sb.transform("def transform(rows):\n    return [{'region': 'a', 'total': 1.5}]", [],
                         output_model=Total, strict=True)
    assert exact.ok and exact.rows == [Total(region="a", total=1.5)]
    with pytest.raises(ValueError, match="output_model"):
        sb.transform(coerced, [], strict=True)


def test_transform_checks_its_rows_like_run_checks_inputs(make_sandbox):
    """Rows that cannot cross the boundary are host misuse: a TypeError here, as for `run`'s
    inputs, never an internal run failure."""
    sb = make_sandbox()
    with pytest.raises(TypeError, match="too large"):
        sb.run("1", inputs={"a": 10**5000})
    with pytest.raises(TypeError, match="too large"):
        sb.transform("def transform(rows):\n    return rows", [{"a": 10**5000}])


def test_transform_input_limits(make_sandbox, tmp_path):
    sb = make_sandbox()
    with pytest.raises(ValueError, match="max_rows"):
        sb.transform(TRANSFORM, [{"a": 1}] * 11, max_rows=10)
    with pytest.raises(ValueError, match="max_bytes"):
        sb.transform(TRANSFORM, [{"a": "x" * 100}] * 20, max_bytes=1000)
    big = tmp_path / "big.jsonl"
    big.write_text('{"a": 1}\n' * 200)
    with pytest.raises(ValueError, match="max_bytes"):
        sb.transform(TRANSFORM, big, max_bytes=1000)
    with pytest.raises(TypeError):
        sb.transform(TRANSFORM, [{"a": object()}])
    with pytest.raises(TypeError):
        sb.transform(TRANSFORM, [{1: "non-str key"}])


def test_overlay_on_every_runtime(make_sandbox, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.csv").write_text("region,amount\nnorth,10\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret\n")
    (data / "link").symlink_to(outside)
    before = {p.name: _sha(p) for p in (data / "in.csv", outside)}
    sb = make_sandbox(files=Overlay({"data": data}))
    result = sb.run(
        "text = files.read('data/in.csv')\n"
        "files.write('data/report.csv', text + 'south,5\\n')\n"
        "refused = 0\n"
        "for p in ['../secret.txt', '/etc/passwd', 'data/link', 'data/x\\x00y']:\n"
        "    try:\n"
        "        files.read(p)\n"
        "    except PolicyDenied:\n"
        "        refused += 1\n"
        "[files.list('data'), refused]"
    )
    assert result.ok, result.error
    assert result.value == [["in.csv", "report.csv"], 4]
    (change,) = result.changes
    assert change.action == "created" and "+south,5" in change.diff
    assert not (data / "report.csv").exists()
    assert {p.name: _sha(p) for p in (data / "in.csv", outside)} == before
    sb.apply(result.changes)
    assert (data / "report.csv").read_text() == "region,amount\nnorth,10\nsouth,5\n"
