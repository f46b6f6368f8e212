"""Read-only SQL for guest code: ``sql.query(text, params)`` over a SQLite or DuckDB file.

    from sandbox import Sandbox
    from sandbox.sql import sql_capability

    sql = sql_capability("shop.db", tables=["orders", "customers"])
    with Sandbox(capabilities=sql) as sb:
        sb.run("sql.query('SELECT count(*) AS n FROM orders')['rows'][0]['n']")

The guest gets two capabilities (the namespace is ``sql`` unless ``name=`` says otherwise):

- ``sql.query(text, params=None) -> {"columns": [...], "rows": [{column: value}, ...],
  "truncated": bool}``: one SELECT statement; ``params`` is a list (``?`` placeholders) or a
  dict (``:name``); ``columns`` are the keys of every row, in order (a repeated column name
  gets a ``_2``, ``_3`` suffix so no value is lost); ``truncated`` is True when the row cap or
  the result-bytes cap cut the result (the rows that fit are returned).
- ``sql.tables() -> {table: [column, ...]}``: the tables and columns the guest may read.

Values are JSON: BLOBs become base64 text, decimals become floats, dates and times ISO-8601
text, anything else its ``str``.

How the database stays untouched (the guards, outermost first):

SQLite
    opened through a URI with ``mode=ro`` (and ``immutable=1`` unless ``immutable=False``:
    no locks, no journal, no ``-wal``/``-shm`` files; use False when another process writes the
    database while queries run); ``SQLITE_LIMIT_ATTACHED`` is 0; extension loading stays
    disabled; a ``set_authorizer`` callback allows only SELECT, reads of allowed tables and
    columns, recursive CTEs and ordinary functions, and denies everything else (every write,
    DDL, ATTACH/DETACH, VACUUM INTO, every PRAGMA (``pragma_*`` table functions included),
    transactions, ``load_extension``, ``fts3_tokenizer``; ``json_each``/``json_tree`` are
    allowed); a progress handler stops a query at its time limit.
DuckDB (``pip install sandbox[data]``)
    ``read_only=True``, ``enable_external_access=false`` (no files, no network, no ATTACH,
    no COPY ... TO), extension install/autoload/community extensions off,
    ``memory_limit`` (``memory_bytes``), one thread, no temp directory (nothing spills next to
    the file), ``lock_configuration=true`` (a guest cannot ``SET`` any of that back); only a single
    statement of type SELECT runs (DuckDB's own parser decides); ``query()``/``query_table()``
    (which run SQL given as a string) are refused; a timer interrupts a query at its time
    limit. DuckDB has no authorizer: with a table allowlist, the table check is done by
    parsing, by sqlglot *and* by DuckDB's ``get_table_names`` (both must agree; DuckDB cannot
    list the tables of a statement with parameters, then sqlglot's check stands alone), and
    table functions other than ``range``/``generate_series``/``unnest`` are refused. When a
    table must stay secret, prefer SQLite, or a DuckDB file holding only what may be read.

With ``tables`` given, every statement is also parsed with sqlglot before it runs: more than
one statement, anything but a query, or a table not on the list is refused with a reason
(for SQLite the authorizer remains the real guard; the parse gives the clearer message).

A refusal raises ``PolicyDenied`` in the guest (``error.kind == "policy_denied"`` when
uncaught), with the reason. Every call notes in the run record (`CallRecord.detail`): the
engine, the statement's SHA-256, the tables touched, the rows returned, whether the result was
truncated, and the decision (``allow``, ``deny``, or ``error`` for a statement that was not
refused but failed: a syntax error, the time limit) with its reason.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from sandbox.capabilities import Capability, capability, record_detail
from sandbox.errors import ConfigurationError
from sandbox.runtime import CapabilityFault

Engine = Literal["sqlite", "duckdb"]
Params = list[str | int | float | bool | None] | dict[str, str | int | float | bool | None] | None

_DUCKDB_SUFFIXES = (".duckdb", ".ddb")
_SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "generateseries", "json_each", "json_tree"})
_SQLITE_SAFE_VTABS = frozenset({"json_each", "json_tree"})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "query", "query_table", "readfile", "writefile",
                               "edit", "sqlite_dbpage"})
_MAX_SQL_CHARS = 100_000
_DUCKDB_QUERY_FUNCTION = re.compile(r"\bquery(?:_table)?\s*\(", re.IGNORECASE)
_SQLITE_QUERY = re.compile(r"^\s*(?:(?:--[^\n]*(?:\n|$)|/\*.*?\*/)\s*)*(?:SELECT|WITH|VALUES)\b", re.IGNORECASE | re.DOTALL)


class SqlDenied(Exception):
    """A statement refused before or while running (becomes ``PolicyDenied`` in the guest)."""


def sql_capability(
    database: str | os.PathLike[str],
    *,
    engine: Engine | None = None,
    tables: Iterable[str] | Mapping[str, Iterable[str] | None] | None = None,
    name: str = "sql",
    max_rows: int = 1000,
    max_result_bytes: int = 1 << 20,
    timeout_seconds: float = 5.0,
    immutable: bool = True,
    memory_bytes: int = 256 << 20,
) -> list[Capability]:
    """The capabilities ``<name>.query`` and ``<name>.tables`` over one database file, read-only.

    Args:
        database: an existing SQLite or DuckDB file (missing file: `ValueError`).
        engine: ``"sqlite"`` or ``"duckdb"``; default: DuckDB for ``.duckdb``/``.ddb``, else SQLite.
        tables: the allowlist: table names, or ``{table: [columns] | None}`` (columns need
            SQLite). None allows every table.
        name: the guest namespace (``sql`` gives ``sql.query``).
        max_rows: rows returned per query at most (the rest is cut, ``truncated`` is set).
        max_result_bytes: compact-JSON bytes of the returned rows at most (same).
        timeout_seconds: a query still running after this is stopped (guest sees ``CapabilityError``).
        immutable: SQLite only: open with ``immutable=1`` (see the module docstring).
        memory_bytes: DuckDB only: its ``memory_limit`` (one thread, no spilling to disk).
            SQLite's memory is bounded by its page cache and the time limit.

    Pass the list to ``Sandbox(capabilities=[*sql_capability(...), ...])``.
    """
    db = _Database(database, engine=engine, tables=tables, max_rows=max_rows, max_result_bytes=max_result_bytes,
                   timeout_seconds=timeout_seconds, immutable=immutable, memory_bytes=memory_bytes)

    def query(text: str, params: Params = None) -> dict:
        return db.query(text, params)

    def list_tables() -> dict[str, list[str]]:
        return db.schema()

    allowed = "every table" if db.tables is None else ", ".join(sorted(db.tables))
    return [
        capability(name=f"{name}.query", description=(
            f"Run one read-only SELECT on the {db.engine} database ({allowed}). params: a list for ? "
            "placeholders or a dict for :name. Returns {'columns': [...], 'rows': [{column: value}], "
            f"'truncated': bool}} with at most {max_rows} rows. Writes and other tables raise PolicyDenied."
        ))(query),
        capability(name=f"{name}.tables", description="The tables you may query, with their columns.")(list_tables),
    ]


class _Database:
    def __init__(self, database: str | os.PathLike[str], *, engine: Engine | None,
                 tables: Iterable[str] | Mapping[str, Iterable[str] | None] | None, max_rows: int,
                 max_result_bytes: int, timeout_seconds: float, immutable: bool,
                 memory_bytes: int = 256 << 20) -> None:
        path = Path(database)
        if not path.is_file():
            raise ConfigurationError(f"database {str(path)!r} is not an existing file")
        self.path = path.resolve()
        if engine is None:
            engine = "duckdb" if path.suffix.lower() in _DUCKDB_SUFFIXES else "sqlite"
        if engine not in ("sqlite", "duckdb"):
            raise ConfigurationError(f"unknown engine {engine!r}: use 'sqlite' or 'duckdb'")
        self.engine: Engine = engine
        for label, value in (("max_rows", max_rows), ("max_result_bytes", max_result_bytes),
                             ("memory_bytes", memory_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{label} must be an int >= 1, got {value!r}")
        if not (isinstance(timeout_seconds, (int, float)) and math.isfinite(timeout_seconds) and timeout_seconds > 0):
            raise ConfigurationError(f"timeout_seconds must be a positive finite number, got {timeout_seconds!r}")
        self.max_rows, self.max_result_bytes, self.timeout = max_rows, max_result_bytes, float(timeout_seconds)
        self.immutable = immutable
        self.memory_bytes = memory_bytes
        self.tables: dict[str, frozenset[str] | None] | None = None
        if tables is not None:
            if isinstance(tables, str):
                raise ConfigurationError("tables must be a list of names or a {table: columns} mapping, not a str")
            items = tables.items() if isinstance(tables, Mapping) else ((t, None) for t in tables)
            self.tables = {}
            for table, columns in items:
                if not isinstance(table, str) or not table:
                    raise ConfigurationError(f"table names must be non-empty strings, got {table!r}")
                cols = None if columns is None else frozenset(c.lower() for c in columns)
                if cols is not None and engine != "sqlite":
                    raise ConfigurationError("column allowlists need engine='sqlite' (DuckDB has no authorizer)")
                self.tables[table.lower()] = cols
        if engine == "duckdb":
            try:
                import duckdb  # noqa: F401
            except ImportError:
                raise ConfigurationError("engine='duckdb' needs the duckdb package: pip install 'sandbox[data]'") from None
        if self.tables is not None:
            try:
                import sqlglot  # noqa: F401
            except ImportError:
                raise ConfigurationError("a table allowlist needs sqlglot: pip install 'sandbox[data]'") from None
            known = set(self._all_columns())
            missing = sorted(t for t in self.tables if t not in known)
            if missing:
                raise ConfigurationError(f"tables {missing} are not in {self.path.name}")

    # -- the guest's calls ------------------------------------------------------------------

    def query(self, text: str, params: Any) -> dict:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        record_detail(engine=self.engine, statement_sha256=digest, tables=[], rows=0, truncated=False)
        try:
            if len(text) > _MAX_SQL_CHARS:
                raise SqlDenied(f"the statement is longer than {_MAX_SQL_CHARS} characters")
            if "\x00" in text:
                raise SqlDenied("the statement contains a NUL character")
            tables: set[str] = set()
            if self.tables is not None:
                tables = self._parse_check(text)
                record_detail(tables=sorted(tables))
            if self.engine == "sqlite":
                columns, rows, truncated, touched = self._sqlite(text, params)
            else:
                columns, rows, truncated, touched = self._duckdb(text, params, tables)
        except SqlDenied as exc:
            reason = f"sql: {exc}"
            record_detail(decision="deny", reason=reason)
            raise CapabilityFault("PolicyDenied", reason) from None
        except CapabilityFault as fault:  # not refused, but did not run to the end (syntax, time, memory)
            record_detail(decision="error", reason=fault.message)
            raise
        record_detail(decision="allow", tables=sorted(touched), rows=len(rows), truncated=truncated)
        return {"columns": columns, "rows": rows, "truncated": truncated}

    def schema(self) -> dict[str, list[str]]:
        result = {}
        for table, columns in self._all_columns().items():
            if self.tables is None:
                result[table] = columns
            elif table in self.tables:
                allowed = self.tables[table]
                result[table] = [c for c in columns if allowed is None or c.lower() in allowed]
        return result

    # -- parse check (sqlglot) --------------------------------------------------------------

    def _parse_check(self, text: str) -> set[str]:
        import sqlglot
        from sqlglot import exp

        try:
            statements = [s for s in sqlglot.parse(text, dialect=self.engine) if s is not None]
        except Exception as exc:
            raise SqlDenied(f"the statement could not be parsed for the table check: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1:
            raise SqlDenied(f"one statement per query ({len(statements)} given)")
        tree = statements[0]
        if not isinstance(tree, exp.Query):
            raise SqlDenied(f"only SELECT queries are allowed, not {tree.key.upper()}")
        ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        touched: set[str] = set()
        assert self.tables is not None
        for table in tree.find_all(exp.Table):
            if not isinstance(table.this, exp.Identifier):
                func = table.this
                fname = (func.name if isinstance(func, exp.Anonymous) else func.key).lower()
                if fname not in _SAFE_TABLE_FUNCTIONS:
                    raise SqlDenied(f"table function {fname!r} is not allowed")
                continue
            name = table.name.lower()
            if not table.db and name in ctes:
                continue
            if table.catalog or (table.db and table.db.lower() not in ("main",)):
                raise SqlDenied(f"table {table.sql(dialect=self.engine)!r} is not on the allowed list")
            if name not in self.tables:
                raise SqlDenied(f"table {name!r} is not on the allowed list ({', '.join(sorted(self.tables))})")
            touched.add(name)
        for func in tree.find_all(exp.Anonymous):
            if func.name.lower() in _DENIED_FUNCTIONS:
                raise SqlDenied(f"function {func.name!r} is not allowed")
        return touched

    # -- SQLite -----------------------------------------------------------------------------

    def _sqlite_connect(self) -> sqlite3.Connection:
        flags = "mode=ro" + ("&immutable=1" if self.immutable else "")
        uri = f"file:{urllib.parse.quote(str(self.path))}?{flags}"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_SQL_LENGTH, _MAX_SQL_CHARS * 4)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(self.max_result_bytes, 1 << 16))
        return conn

    def _sqlite(self, text: str, params: Any) -> tuple[list[str], list[dict], bool, set[str]]:
        if not _SQLITE_QUERY.match(text):  # a clear message early; the authorizer is the guard
            word = (text.split() or ["an empty statement"])[0][:20]
            raise SqlDenied(f"only SELECT queries are allowed, not {word.upper()}")
        conn = self._sqlite_connect()
        denied: list[str] = []
        touched: set[str] = set()
        allowed = self.tables

        def authorize(action: int, arg1: str | None, arg2: str | None, dbname: str | None, source: str | None) -> int:
            if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_RECURSIVE:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_UPDATE and arg1 == "sqlite_master" and dbname == "main" and source is None:
                # SQLite's own check when it sets up an eponymous virtual table (json_each);
                # an UPDATE statement never gets here (refused above) and the file is read-only.
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_READ:
                table = (arg1 or "").lower()
                if dbname not in (None, "main"):
                    denied.append(f"database {dbname!r} is not readable")
                    return sqlite3.SQLITE_DENY
                if table in _SQLITE_SAFE_VTABS or (table == "sqlite_master" and arg2 == "ROWID"):
                    return sqlite3.SQLITE_OK  # json_each/json_tree, and their set-up
                if allowed is not None:
                    if table not in allowed:
                        denied.append(f"table {table!r} is not on the allowed list")
                        return sqlite3.SQLITE_DENY
                    columns = allowed[table]
                    if columns is not None and arg2 and arg2.lower() not in columns:
                        denied.append(f"column {table}.{arg2} is not on the allowed list")
                        return sqlite3.SQLITE_DENY
                touched.add(table)
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_FUNCTION:
                if (arg2 or "").lower() in _DENIED_FUNCTIONS:
                    denied.append(f"function {arg2!r} is not allowed")
                    return sqlite3.SQLITE_DENY
                return sqlite3.SQLITE_OK
            denied.append(f"{_ACTIONS.get(action, f'action {action}')} is not allowed (read-only)")
            return sqlite3.SQLITE_DENY

        deadline = time.monotonic() + self.timeout
        timed_out = []

        def progress() -> int:
            if time.monotonic() > deadline:
                timed_out.append(True)
                return 1
            return 0

        try:
            conn.set_authorizer(authorize)
            conn.set_progress_handler(progress, 1000)
            try:
                cursor = conn.execute(text, _params(params))
                columns = _unique([d[0] for d in cursor.description or ()])
                rows, truncated = self._collect(cursor, columns)
            except sqlite3.Warning as exc:  # e.g. more than one statement
                raise SqlDenied(str(exc)) from None
            except sqlite3.Error as exc:
                if denied:
                    raise SqlDenied(denied[0]) from None
                if timed_out:
                    raise CapabilityFault("CapabilityError", f"sql: the query ran longer than {self.timeout:g} s and was stopped") from None
                if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in str(exc):
                    raise SqlDenied("one statement per query") from None
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        return columns, rows, truncated, touched

    # -- DuckDB -----------------------------------------------------------------------------

    def _duckdb_connect(self) -> Any:
        import duckdb

        return duckdb.connect(str(self.path), read_only=True, config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "memory_limit": f"{max(self.memory_bytes >> 20, 16)}MiB",
            "threads": 1,
            "temp_directory": "",  # no spill files next to the database
            "lock_configuration": True,
        })

    def _duckdb(self, text: str, params: Any, parsed: set[str]) -> tuple[list[str], list[dict], bool, set[str]]:
        import duckdb

        try:
            statements = duckdb.extract_statements(text)
        except duckdb.Error as exc:
            raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {exc}") from None
        if len(statements) != 1:
            raise SqlDenied(f"one statement per query ({len(statements)} given)")
        kind = statements[0].type
        if kind != duckdb.StatementType.SELECT:
            raise SqlDenied(f"only SELECT queries are allowed, not {kind.name}")
        conn = self._duckdb_connect()
        timer = threading.Timer(self.timeout, conn.interrupt)
        try:
            try:
                if _DUCKDB_QUERY_FUNCTION.search(text):
                    raise SqlDenied("query() and query_table() are not allowed (they hide a statement from the checks)")
                try:
                    touched = {t.lower() for t in conn.get_table_names(text)}
                except duckdb.BinderException:  # DuckDB cannot list the tables of a statement with parameters:
                    touched = set(parsed)       # the sqlglot check (with an allowlist) stands alone
                if self.tables is not None:
                    ctes = self._ctes(text)
                    extra = sorted(t for t in touched - ctes if t.split(".")[-1] not in self.tables)
                    if extra:
                        raise SqlDenied(f"table {extra[0]!r} is not on the allowed list ({', '.join(sorted(self.tables))})")
                    touched -= ctes
                timer.start()
                bound = _params(params)
                cursor = conn.execute(text, bound) if bound else conn.execute(text)
                columns = _unique([d[0] for d in cursor.description or ()])
                rows, truncated = self._collect(cursor, columns)
            except duckdb.InterruptException:
                raise CapabilityFault("CapabilityError", f"sql: the query ran longer than {self.timeout:g} s and was stopped") from None
            except duckdb.PermissionException as exc:
                raise SqlDenied(str(exc).splitlines()[0]) from None
            except duckdb.Error as exc:
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
        finally:
            timer.cancel()
            conn.close()
        return columns, rows, truncated, touched

    @staticmethod
    def _ctes(text: str) -> set[str]:
        import sqlglot
        from sqlglot import exp

        try:
            return {c.alias_or_name.lower() for tree in sqlglot.parse(text, dialect="duckdb") if tree is not None
                    for c in tree.find_all(exp.CTE)}
        except Exception:
            return set()

    # -- shared -----------------------------------------------------------------------------

    def _collect(self, cursor: Any, columns: list[str]) -> tuple[list[dict], bool]:
        rows: list[dict] = []
        size = 2
        while True:
            batch = cursor.fetchmany(min(256, self.max_rows + 1 - len(rows)))
            if not batch:
                return rows, False
            for raw in batch:
                if len(rows) >= self.max_rows:
                    return rows, True
                row = {col: _jsonable(value) for col, value in zip(columns, raw)}
                size += len(json.dumps(row, separators=(",", ":"), ensure_ascii=False)) + 1
                if size > self.max_result_bytes:
                    return rows, True
                rows.append(row)

    def _all_columns(self) -> dict[str, list[str]]:
        """Every base table (and view) with its columns, read by the host without the guards."""
        if self.engine == "sqlite":
            conn = self._sqlite_connect()
            try:
                names = [r[0] for r in conn.execute(
                    "SELECT name FROM sqlite_schema WHERE type IN ('table','view') AND name NOT LIKE 'sqlite_%' ORDER BY name")]
                return {n.lower(): [r[1] for r in conn.execute("SELECT * FROM pragma_table_info(?)", (n,))] for n in names}
            finally:
                conn.close()
        conn = self._duckdb_connect()
        try:
            result: dict[str, list[str]] = {}
            for table, column in conn.execute(
                "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = current_database() "
                "AND NOT internal ORDER BY table_name, column_index"
            ).fetchall():
                result.setdefault(table.lower(), []).append(column)
            return result
        finally:
            conn.close()


_ACTIONS = {getattr(sqlite3, n): n.removeprefix("SQLITE_").replace("_", " ") for n in dir(sqlite3)
            if n.startswith("SQLITE_") and n not in ("SQLITE_OK", "SQLITE_DENY", "SQLITE_IGNORE")
            and isinstance(getattr(sqlite3, n), int) and not n.startswith("SQLITE_LIMIT")}


def _params(params: Any) -> Sequence[Any] | Mapping[str, Any]:
    if params is None:
        return ()
    if isinstance(params, (list, tuple, dict)):
        return params
    raise CapabilityFault("TypeError", "sql: params must be a list, a dict or None")


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        key = name
        while key in seen:
            seen[name] += 1
            key = f"{name}_{seen[name]}"
        seen.setdefault(key, 1)
        out.append(key)
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
