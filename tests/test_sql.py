"""Read-only SQL (`sandbox.sql`) on real SQLite and DuckDB files.

Every write route is attempted through the guest, with and without a table allowlist; each
test compares the SHA-256 of every file in the database's directory before and after.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from sandbox import Limits, Sandbox
from sandbox.audit import MemorySink
from sandbox.errors import ConfigurationError
from sandbox.sql import sql_capability

duckdb = pytest.importorskip("duckdb")
pytest.importorskip("sqlglot")


def _make_sqlite(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note BLOB);
        CREATE TABLE secrets(id INTEGER, token TEXT);
        CREATE VIEW big AS SELECT * FROM orders WHERE amount > 10;
        INSERT INTO orders(customer, amount, note) VALUES ('ann', 12.5, x'00ff'), ('bob', 3, NULL), ('ann', 40, NULL);
        INSERT INTO secrets VALUES (1, 'hunter2');
        """
    )
    conn.commit()
    conn.close()
    return path


def _make_duckdb(path: Path) -> Path:
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE orders(id INTEGER, customer VARCHAR, amount DECIMAL(10,2), day DATE)")
    conn.execute("CREATE TABLE secrets(id INTEGER, token VARCHAR)")
    conn.execute("INSERT INTO orders VALUES (1, 'ann', 12.5, '2024-01-02'), (2, 'bob', 3, '2024-01-03'), (3, 'ann', 40, NULL)")
    conn.execute("INSERT INTO secrets VALUES (1, 'hunter2')")
    conn.close()
    return path


def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(params=["sqlite", "duckdb"])
def db(request, tmp_path) -> Path:
    if request.param == "sqlite":
        return _make_sqlite(tmp_path / "shop.db")
    return _make_duckdb(tmp_path / "shop.duckdb")


def _query(sb: Sandbox, text: str):
    return sb.run(f"sql.query({text!r})")


WRITES_COMMON = [
    "DELETE FROM orders",
    "DROP TABLE orders",
    "UPDATE orders SET amount = 0",
    "INSERT INTO orders(id) VALUES (99)",
    "CREATE TABLE x(a INTEGER)",
    "CREATE TEMP TABLE x AS SELECT 1",
    "ALTER TABLE orders ADD COLUMN z INTEGER",
    "CREATE INDEX i ON orders(customer)",
    "ATTACH '{dir}/other.db' AS other",
    "BEGIN",
    "SELECT 1; DELETE FROM orders",
]
WRITES_SQLITE = [
    "VACUUM",
    "VACUUM INTO '{dir}/copy.db'",
    "PRAGMA user_version = 7",
    "PRAGMA journal_mode = WAL",
    "PRAGMA writable_schema = 1",
    "REINDEX",
    "ANALYZE",
    "REPLACE INTO orders(id) VALUES (1)",
    "SAVEPOINT s",
    "SELECT load_extension('/tmp/evil.so')",
    "CREATE TRIGGER t AFTER INSERT ON orders BEGIN DELETE FROM orders; END",
]
WRITES_DUCKDB = [
    "COPY orders TO '{dir}/out.csv'",
    "EXPORT DATABASE '{dir}/export'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "CHECKPOINT",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM query('DELETE FROM orders')",
    "CREATE SECRET s (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "PRAGMA enable_profiling",
]


def _write_routes(db: Path) -> list[str]:
    extra = WRITES_SQLITE if db.suffix == ".db" else WRITES_DUCKDB
    return [q.format(dir=db.parent) for q in WRITES_COMMON + extra]


@pytest.mark.parametrize("allowlist", [None, ["orders"]], ids=["no-allowlist", "allowlist"])
def test_every_write_route_is_denied_and_files_are_unchanged(db, allowlist):
    before = _snapshot(db.parent)
    sink = MemorySink()
    with Sandbox(capabilities=sql_capability(db, tables=allowlist), records=sink) as sb:
        for text in _write_routes(db):
            result = _query(sb, text)
            assert not result.ok, text
            assert result.error.kind == "policy_denied", (text, result.error)
            assert result.error.message.startswith("sql: "), result.error.message
    assert _snapshot(db.parent) == before
    assert len(sink.records) == len(_write_routes(db))
    for record in sink.records:
        (call,) = record.calls
        assert call.status == "denied"
        assert call.detail["decision"] == "deny"
        assert call.detail["reason"] == call.reason


def test_denied_statement_is_catchable_and_the_run_continues(db):
    with Sandbox(capabilities=sql_capability(db, tables=["orders"])) as sb:
        result = sb.run(
            "try:\n    sql.query('DROP TABLE orders')\nexcept PolicyDenied as e:\n    msg = str(e)\n"
            "[msg, sql.query('SELECT count(*) AS n FROM orders')['rows'][0]['n']]"
        )
    assert result.ok, result.error
    assert "only SELECT" in result.value[0]
    assert result.value[1] == 3


def test_select_shape_params_and_json_values(db):
    with Sandbox(capabilities=sql_capability(db)) as sb:
        result = sb.run(
            "a = sql.query('SELECT id, customer, amount FROM orders WHERE customer = ? ORDER BY id', ['ann'])\n"
            "b = sql.query('SELECT o.id, p.id FROM orders o JOIN orders p ON p.id = o.id WHERE o.id = $n'"
            " if False else 'SELECT o.id, p.id FROM orders o JOIN orders p ON p.id = o.id ORDER BY o.id LIMIT 1')\n"
            "[a, b]"
        )
    assert result.ok, result.error
    first, second = result.value
    assert first["columns"] == ["id", "customer", "amount"]
    assert [r["amount"] for r in first["rows"]] == [12.5, 40.0]
    assert first["truncated"] is False
    assert second["columns"] == ["id", "id_2"]  # a repeated name gets a suffix, no value lost
    assert second["rows"] == [{"id": 1, "id_2": 1}]


def test_sqlite_blob_and_named_params(tmp_path):
    db = _make_sqlite(tmp_path / "shop.db")
    with Sandbox(capabilities=sql_capability(db)) as sb:
        result = sb.run("sql.query('SELECT note FROM orders WHERE id = :i', {'i': 1})['rows'][0]['note']")
    assert result.ok, result.error
    assert result.value == b"\x00\xff"


def test_duckdb_decimal_and_date(tmp_path):
    db = _make_duckdb(tmp_path / "shop.duckdb")
    with Sandbox(capabilities=sql_capability(db)) as sb:
        result = sb.run("sql.query('SELECT amount, day FROM orders WHERE id = 1')['rows'][0]")
    assert result.ok, result.error
    assert result.value == {"amount": decimal.Decimal("12.50"), "day": datetime.date(2024, 1, 2)}
    assert type(result.value["amount"]) is decimal.Decimal and type(result.value["day"]) is datetime.date


def test_table_not_on_the_list(db):
    before = _snapshot(db.parent)
    with Sandbox(capabilities=sql_capability(db, tables=["orders"])) as sb:
        for text in ["SELECT * FROM secrets", "SELECT o.id FROM orders o JOIN secrets s ON s.id = o.id",
                     "SELECT (SELECT token FROM secrets) FROM orders",
                     "WITH x AS (SELECT * FROM secrets) SELECT * FROM x",
                     "SELECT * FROM orders UNION ALL SELECT id, token, 1, NULL FROM secrets"]:
            result = _query(sb, text)
            assert not result.ok and result.error.kind == "policy_denied", text
            assert "not on the allowed list" in result.error.message, (text, result.error.message)
        tables = sb.run("sql.tables()").value
        assert list(tables) == ["orders"]
        ok = _query(sb, "WITH x AS (SELECT * FROM orders) SELECT count(*) AS n FROM x")
        assert ok.ok and ok.value["rows"] == [{"n": 3}]
    assert _snapshot(db.parent) == before


def test_sqlite_authorizer_guards_without_the_parse_check(tmp_path):
    """Reads of a table off the list are refused by the authorizer itself (no sqlglot involved)."""
    from sandbox.sql._database import Database as _Database

    db = _make_sqlite(tmp_path / "shop.db")
    database = _Database(db, engine=None, tables=["orders"], max_rows=10, max_result_bytes=1 << 20,
                         timeout_seconds=5, immutable=True)
    from sandbox.sql import SqlDenied

    for text in ["SELECT token FROM secrets", "SELECT * FROM pragma_table_info('secrets')", "SELECT * FROM sqlite_master",
                 "DELETE FROM orders", "ATTACH 'x.db' AS x"]:
        with pytest.raises(SqlDenied):
            database._sqlite(text, None, time.monotonic() + 5)
    assert not Path("x.db").exists() and not (tmp_path / "x.db").exists()
    assert database._sqlite("SELECT count(*) AS n FROM orders", None, time.monotonic() + 5)[1] == [{"n": 3}]


def test_sqlite_column_allowlist(tmp_path):
    db = _make_sqlite(tmp_path / "shop.db")
    with Sandbox(capabilities=sql_capability(db, tables={"orders": ["id", "customer"]})) as sb:
        denied = _query(sb, "SELECT amount FROM orders")
        star = _query(sb, "SELECT * FROM orders")
        ok = _query(sb, "SELECT id, customer FROM orders WHERE id = 1")
        listed = sb.run("sql.tables()")
    assert denied.error.kind == "policy_denied" and "orders.amount" in denied.error.message
    assert star.error.kind == "policy_denied"
    assert ok.ok and ok.value["rows"] == [{"id": 1, "customer": "ann"}]
    assert listed.value == {"orders": ["id", "customer"]}
    with pytest.raises(ConfigurationError):
        sql_capability(_make_duckdb(tmp_path / "x.duckdb"), tables={"orders": ["id"]})


def test_row_cap_and_bytes_cap(db):
    with Sandbox(capabilities=sql_capability(db, max_rows=2)) as sb:
        capped = _query(sb, "SELECT * FROM range(100) t(i)" if db.suffix == ".duckdb" else
                        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 100) SELECT i FROM r")
    assert capped.ok, capped.error
    assert len(capped.value["rows"]) == 2 and capped.value["truncated"] is True
    with Sandbox(capabilities=sql_capability(db, max_result_bytes=200)) as sb:
        big = _query(sb, "SELECT repeat('x', 60) AS s FROM range(100) t(i)" if db.suffix == ".duckdb" else
                     "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r LIMIT 100) "
                     "SELECT printf('%.60c', 'x') AS s FROM r")
    assert big.ok, big.error
    assert 0 < len(big.value["rows"]) < 4 and big.value["truncated"] is True


def test_time_limit_stops_a_runaway_query(db):
    slow = ("SELECT count(*) FROM range(100000000000) a(i)" if db.suffix == ".duckdb" else
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r")
    with Sandbox(capabilities=sql_capability(db, timeout_seconds=0.3), limits=Limits(wall_seconds=20)) as sb:
        result = _query(sb, slow)
    assert not result.ok
    assert result.error.type == "CapabilityError"
    assert "longer than 0.3 s" in result.error.message
    assert result.usage.wall_seconds < 5


def test_run_record_notes_each_query(db):
    sink = MemorySink()
    text = "SELECT customer FROM orders WHERE amount > 5"
    with Sandbox(capabilities=sql_capability(db, tables=["orders"]), records=sink) as sb:
        result = sb.run(f"sql.query({text!r})\ntry:\n    sql.query('SELECT * FROM secrets')\nexcept PolicyDenied:\n    pass")
    assert result.ok, result.error
    (record,) = sink.records
    allowed, denied = record.calls
    assert allowed.status == "ok"
    assert allowed.detail == {
        "engine": "duckdb" if db.suffix == ".duckdb" else "sqlite",
        "statement_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "tables": ["orders"], "rows": 2, "truncated": False, "decision": "allow",
    }
    assert denied.status == "denied" and denied.detail["decision"] == "deny"
    assert "secrets" in denied.detail["reason"] and denied.detail["rows"] == 0
    assert "hunter2" not in record.model_dump_json()


def test_bad_configuration(tmp_path):
    with pytest.raises(ConfigurationError):
        sql_capability(tmp_path / "missing.db")
    db = _make_sqlite(tmp_path / "shop.db")
    with pytest.raises(ConfigurationError):
        sql_capability(db, tables=["nope"])
    with pytest.raises(ConfigurationError):
        sql_capability(db, max_rows=0)
    with pytest.raises(ConfigurationError):
        sql_capability(db, engine="postgres")  # type: ignore[arg-type]
    names = [c.name for c in sql_capability(db, name="warehouse")]
    assert names == ["warehouse.query", "warehouse.tables"]


def test_duckdb_memory_limit_and_no_spill_files(tmp_path):
    db = _make_duckdb(tmp_path / "shop.duckdb")
    before = _snapshot(tmp_path)
    with Sandbox(capabilities=sql_capability(db, memory_bytes=32 << 20), limits=Limits(wall_seconds=30)) as sb:
        result = _query(sb, "SELECT count(*) AS n FROM (SELECT i, repeat('x', 100) AS s FROM range(3000000) t(i) "
                            "ORDER BY s DESC, i)")
    assert not result.ok and result.error.type == "CapabilityError"
    assert "Out of Memory" in result.error.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.duckdb"]
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("allowlist", [None, ["orders"]], ids=["no-allowlist", "allowlist"])
def test_sqlite_json_each_works_and_pragma_functions_do_not(tmp_path, allowlist):
    db = _make_sqlite(tmp_path / "shop.db")
    before = _snapshot(tmp_path)
    with Sandbox(capabilities=sql_capability(db, tables=allowlist)) as sb:
        ok = _query(sb, "SELECT value FROM json_each('[1, 2, 3]') WHERE value > 1")
        for text in ["SELECT * FROM pragma_user_version", "SELECT * FROM pragma_table_info('secrets')",
                     "SELECT * FROM pragma_journal_mode"]:
            result = _query(sb, text)
            assert result.error.kind == "policy_denied", (text, result.error)
    assert ok.ok and ok.value["rows"] == [{"value": 2}, {"value": 3}], ok.error
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- one analysis, bounded, honest errors


@pytest.mark.parametrize("text", [
    "WITH secrets AS (SELECT * FROM secrets) SELECT * FROM secrets",
    "WITH orders AS (SELECT * FROM secrets) SELECT * FROM orders",
    "WITH a AS (SELECT 1 AS x) SELECT * FROM (WITH b AS (SELECT * FROM secrets) SELECT * FROM b)",
    "SELECT * FROM orders WHERE id IN (WITH secrets AS (SELECT id FROM secrets) SELECT id FROM secrets)",
    'SELECT * FROM "secrets"',
    'SELECT "a\'b" FROM orders UNION ALL SELECT token FROM secrets',
])
def test_cte_names_are_resolved_per_scope_and_cannot_hide_a_table(db, text):
    sink = MemorySink()
    with Sandbox(capabilities=sql_capability(db, tables=["orders"]), records=sink) as sb:
        result = _query(sb, text)
    assert not result.ok and result.error.kind == "policy_denied", (text, result)
    assert "secrets" in result.error.message
    assert "hunter2" not in result.model_dump_json() and "hunter2" not in sink.records[0].model_dump_json()


def test_ctes_that_only_read_allowed_tables_work(db):
    with Sandbox(capabilities=sql_capability(db, tables=["orders"])) as sb:
        result = _query(sb, "WITH secrets AS (SELECT customer FROM orders) SELECT count(*) AS n FROM secrets")
        recursive = _query(sb, "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 3) "
                               "SELECT count(*) AS n FROM r")
    assert result.ok and result.value["rows"] == [{"n": 3}], result.error
    assert recursive.ok and recursive.value["rows"] == [{"n": 3}], recursive.error


@pytest.mark.parametrize("allowlist", [None, ["orders"]], ids=["no-allowlist", "allowlist"])
@pytest.mark.parametrize("text, database_says", [
    ("SELEC 1", {"sqlite": "syntax error", "duckdb": "syntax error"}),
    ("SELECT * FROM orders WHERE", {"sqlite": "incomplete input", "duckdb": "syntax error"}),
])
def test_a_database_error_is_a_capability_error_not_a_denial(db, allowlist, text, database_says):
    engine = "duckdb" if db.suffix == ".duckdb" else "sqlite"
    sink = MemorySink()
    code = (
        "errors = []\n"
        "for _ in range(3):\n"
        "    try:\n"
        f"        sql.query({text!r})\n"
        "    except CapabilityError as exc:\n"
        "        errors.append(str(exc))\n"
        "[errors, sql.query('SELECT count(*) AS n FROM orders')['rows']]"
    )
    from sandbox.policy import Policy

    with Sandbox(capabilities=sql_capability(db, tables=allowlist), records=sink,
                 policy=Policy(escalate_after=2)) as sb:
        result = sb.run(code)
        uncaught = _query(sb, text)
    assert result.ok, result.error  # three failures, no escalation: they are not denials
    errors, rows = result.value
    assert len(errors) == 3 and database_says[engine] in errors[0].lower(), errors
    assert rows == [{"n": 3}]
    assert uncaught.error.kind == "guest_exception" and uncaught.error.type == "CapabilityError"
    failed = [call for call in sink.records[0].calls if call.status != "ok"]
    assert len(failed) == 3
    assert all(call.status == "failed" and call.detail["decision"] == "error" for call in failed)


def test_sqlite_printf_stops_at_the_deadline(tmp_path):
    db = _make_sqlite(tmp_path / "shop.db")
    with Sandbox(capabilities=sql_capability(db, timeout_seconds=1), limits=Limits(wall_seconds=30)) as sb:
        started = time.monotonic()
        result = _query(sb, "SELECT length(printf('%.*c', 2147483647, 'x')) AS n")
        elapsed = time.monotonic() - started
        later = _query(sb, "SELECT count(*) AS n FROM orders")
    assert not result.ok and result.error.type == "CapabilityError" and "longer than 1 s" in result.error.message
    assert elapsed < 1 + 0.5, elapsed
    assert later.ok and later.value["rows"] == [{"n": 3}]


def test_sqlite_length_limits_bound_one_value(tmp_path):
    db = _make_sqlite(tmp_path / "shop.db")
    with Sandbox(capabilities=sql_capability(db, max_result_bytes=1 << 16)) as sb:
        result = _query(sb, "SELECT length(zeroblob(100000000)) AS n")
    assert not result.ok and "too big" in result.error.message


def test_truncation_is_a_warning_or_an_error(db):
    with Sandbox(capabilities=sql_capability(db, max_rows=2)) as sb:
        cut = _query(sb, "SELECT id FROM orders ORDER BY id")
        whole = _query(sb, "SELECT id FROM orders WHERE id < 3 ORDER BY id")
    assert cut.ok and cut.value["truncated"] and len(cut.value["rows"]) == 2
    assert len(cut.warnings) == 1 and "cut to 2 rows" in cut.warnings[0] and "max_rows=2" in cut.warnings[0]
    assert whole.ok and whole.warnings == []
    with Sandbox(capabilities=sql_capability(db, max_rows=2, on_truncate="error")) as sb:
        refused = _query(sb, "SELECT id FROM orders ORDER BY id")
        fits = _query(sb, "SELECT id FROM orders WHERE id < 3 ORDER BY id")
    assert refused.error.type == "CapabilityError" and "on_truncate='error'" in refused.error.message
    assert fits.ok and fits.value["rows"] == [{"id": 1}, {"id": 2}]
    with pytest.raises(ConfigurationError):
        sql_capability(db, on_truncate="ignore")  # type: ignore[arg-type]


def test_named_parameters_work_on_both_engines(db):
    with Sandbox(capabilities=sql_capability(db, tables=["orders"])) as sb:
        result = sb.run("sql.query(\"SELECT id, ':who' AS literal FROM orders WHERE customer = :who "
                        "AND amount > :least ORDER BY id\", {'who': 'ann', 'least': 1})['rows']")
    assert result.ok, result.error
    assert result.value == [{"id": 1, "literal": ":who"}, {"id": 3, "literal": ":who"}]


def test_sql_values_keep_their_types_on_every_engine(tmp_path):
    """Dates, decimals and bytes reach the guest as values of their type, and a column named like
    the wire tag stays an ordinary key (it cannot forge a typed value)."""
    db = _make_duckdb(tmp_path / "typed.duckdb")
    code = (
        "r = sql.query(\"SELECT day, amount, '$x' AS \\\"$type\\\", 'v' AS v FROM orders WHERE id = 2\")['rows'][0]\n"
        "[type(r['day']).__name__, type(r['amount']).__name__, r['$type'], r['v'], r['day'].year]"
    )
    with Sandbox(capabilities=sql_capability(db)) as sb:
        result = sb.run(code)
    assert result.ok, result.error
    assert result.value == ["date", "Decimal", "$x", "v", 2024]
