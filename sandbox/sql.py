"""Read-only SQL for guest code: ``sql.query(text, params)`` over a SQLite or DuckDB file.

    from sandbox import Sandbox
    from sandbox.sql import sql_capability

    sql = sql_capability("shop.db", tables=["orders", "customers"])
    with Sandbox(capabilities=sql) as sb:
        sb.run("sql.query('SELECT count(*) AS n FROM orders')['rows'][0]['n']")

The guest gets two capabilities (the namespace is ``sql`` unless ``name=`` says otherwise):

- ``sql.query(text, params=None) -> {"columns": [...], "rows": [{column: value}, ...],
  "truncated": bool}``: one SELECT statement; ``params`` is a list (``?`` placeholders) or a
  dict (``:name``, on both engines; DuckDB's ``$name`` works too); ``columns`` are the keys of
  every row, in order (a repeated column name gets a ``_2``, ``_3`` suffix so no value is
  lost); ``truncated`` is True when the row cap or the result-bytes cap cut the result. A cut
  is never silent: the run gets a warning in `RunResult.warnings` (``on_truncate="warn"``,
  the default, returns the rows that fit), or the call fails (``on_truncate="error"``).
- ``sql.tables() -> {table: [column, ...]}``: the tables and columns the guest may read.

Values are JSON: BLOBs become base64 text, decimals become floats, dates and times ISO-8601
text, anything else its ``str``.

How the database stays untouched (the guards, outermost first):

SQLite
    opened through a URI with ``mode=ro`` (and ``immutable=1`` unless ``immutable=False``:
    no locks, no journal, no ``-wal``/``-shm`` files; use False when another process writes the
    database while queries run); ``SQLITE_LIMIT_ATTACHED`` is 0; extension loading stays
    disabled; ``setlimit`` bounds string and blob length, expression depth, compound selects,
    function arguments, LIKE patterns and bound variables; a ``set_authorizer`` callback allows only SELECT, reads of allowed tables and
    columns, recursive CTEs and ordinary functions, and denies everything else (every write,
    DDL, ATTACH/DETACH, VACUUM INTO, every PRAGMA (``pragma_*`` table functions included),
    transactions, ``load_extension``, ``fts3_tokenizer``; ``json_each``/``json_tree`` are
    allowed); a progress handler, and a timer thread calling ``interrupt()``, stop a query at its
    deadline.
DuckDB (``pip install sandbox[data]``)
    ``read_only=True``, ``enable_external_access=false`` (no files, no network, no ATTACH,
    no COPY ... TO), extension install/autoload/community extensions off,
    ``memory_limit`` (``memory_bytes``), one thread, no temp directory (nothing spills next to
    the file), ``lock_configuration=true`` (a guest cannot ``SET`` any of that back); only a single
    statement of type SELECT runs (DuckDB's own parser decides); ``query()``/``query_table()``
    (which run SQL given as a string) are refused; a timer interrupts a query at its time
    limit. DuckDB has no authorizer: with a table allowlist, the table check is done by
    parsing, by `sandbox.sql_analysis` (sqlglot, CTE names resolved per scope) *and* by
    DuckDB's ``get_table_names`` (every table either lists must be allowed; DuckDB cannot list
    the tables of a statement with parameters, then the sqlglot check stands alone), and table
    functions other than ``range``/``generate_series``/``unnest`` are refused. When a table must
    stay secret, prefer SQLite, or a DuckDB file holding only what may be read.

Every statement is first parsed by the database itself (SQLite prepares it under an
authorizer that denies everything, so nothing runs; DuckDB extracts its statements): a
statement the database cannot parse (a typo, an incomplete ``WHERE``) fails with the
database's message as ``CapabilityError``, recorded as ``error``, not as a denial. With
``tables`` given, the statement is then read by `sandbox.sql_analysis.analyze` (the same
analysis as the policy's ``Constraint(tables=..., read_only=...)``): more than one statement,
anything but a query, a table not on the list, or a statement it cannot parse or classify is
refused with a reason (for SQLite the authorizer remains the real guard).

The call's deadline is ``min(timeout_seconds, the run's remaining time)``. The statement runs
on a worker thread: at the deadline it is interrupted, and the call returns at once even when
a single SQL function ignores interrupts (the worker is abandoned, and finishes on its own;
at most two abandoned workers per database, beyond that calls fail until one finishes).

A refusal raises ``PolicyDenied`` in the guest (``error.kind == "policy_denied"`` when
uncaught), with the reason. Every call notes in the run record (`CallRecord.detail`): the
engine, the statement's SHA-256, the tables touched, the rows returned, whether the result was
truncated, and the decision (``allow``, ``deny``, or ``error`` for a statement that was not
refused but failed: a syntax error, the time limit) with its reason.
"""

from __future__ import annotations

import base64
import contextlib
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

from sandbox.call_time import call_timeout
from sandbox.capabilities import Capability, capability, record_detail, warn
from sandbox.errors import ConfigurationError
from sandbox.runtime import CapabilityFault
from sandbox.sql_analysis import SqlRefused, analyze

Engine = Literal["sqlite", "duckdb"]
Params = list[str | int | float | bool | None] | dict[str, str | int | float | bool | None] | None

_DUCKDB_SUFFIXES = (".duckdb", ".ddb")
_SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "generateseries", "json_each", "json_tree"})
_SQLITE_SAFE_VTABS = frozenset({"json_each", "json_tree"})
_DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "query", "query_table", "readfile", "writefile",
                               "edit", "sqlite_dbpage"})
_MAX_SQL_CHARS = 100_000
_DUCKDB_QUERY_FUNCTION = re.compile(r"\bquery(?:_table)?\s*\(", re.IGNORECASE)
_SQLITE_LIMITS = {  # limit -> value: bounds on the work one statement can ask for
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_SQL_LENGTH": _MAX_SQL_CHARS * 4,
    "SQLITE_LIMIT_EXPR_DEPTH": 200,
    "SQLITE_LIMIT_COMPOUND_SELECT": 100,
    "SQLITE_LIMIT_FUNCTION_ARG": 100,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 1000,
    "SQLITE_LIMIT_VARIABLE_NUMBER": 1000,
    "SQLITE_LIMIT_TRIGGER_DEPTH": 1,
}
_MAX_ABANDONED = 2
OnTruncate = Literal["warn", "error"]

SqlDenied = SqlRefused  # a statement refused before or while running (becomes ``PolicyDenied``)


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
    on_truncate: OnTruncate = "warn",
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
        on_truncate: ``"warn"`` (default): a cut result is returned and the run gets a warning in
            `RunResult.warnings`; ``"error"``: a query whose result would be cut fails with
            ``CapabilityError`` instead.
        timeout_seconds: a query still running after this (or after the run's remaining time,
            if shorter) is stopped (guest sees ``CapabilityError``).
        immutable: SQLite only: open with ``immutable=1`` (see the module docstring).
        memory_bytes: DuckDB only: its ``memory_limit`` (one thread, no spilling to disk).
            SQLite's memory is bounded by its page cache and the time limit.

    Pass the list to ``Sandbox(capabilities=[*sql_capability(...), ...])``.
    """
    db = _Database(database, engine=engine, tables=tables, max_rows=max_rows, max_result_bytes=max_result_bytes,
                   timeout_seconds=timeout_seconds, immutable=immutable, memory_bytes=memory_bytes,
                   on_truncate=on_truncate)

    def query(text: str, params: Params = None) -> dict:
        return db.query(text, params)

    def list_tables() -> dict[str, list[str]]:
        return db.schema()

    allowed = "every table" if db.tables is None else ", ".join(sorted(db.tables))
    return [
        capability(name=f"{name}.query", description=(
            f"Run one read-only SELECT on the {db.engine} database ({allowed}). params: a list for ? "
            "placeholders or a dict for :name. Returns {'columns': [...], 'rows': [{column: value}], "
            f"'truncated': bool}} with at most {max_rows} rows"
            + (" (more is an error)" if on_truncate == "error" else "")
            + ". Writes and other tables raise PolicyDenied; SQL errors raise CapabilityError with the database's message."
        ))(query),
        capability(name=f"{name}.tables", description="The tables you may query, with their columns.")(list_tables),
    ]


class _Database:
    def __init__(self, database: str | os.PathLike[str], *, engine: Engine | None,
                 tables: Iterable[str] | Mapping[str, Iterable[str] | None] | None, max_rows: int,
                 max_result_bytes: int, timeout_seconds: float, immutable: bool,
                 memory_bytes: int = 256 << 20, on_truncate: OnTruncate = "warn") -> None:
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
        if on_truncate not in ("warn", "error"):
            raise ConfigurationError(f"on_truncate must be 'warn' or 'error', got {on_truncate!r}")
        self.on_truncate = on_truncate
        self.immutable = immutable
        self.memory_bytes = memory_bytes
        self._abandoned = 0  # workers left running past their deadline, not yet finished
        self._abandoned_lock = threading.Lock()
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
            self._existing = frozenset(known)
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
            deadline = time.monotonic() + call_timeout(self.timeout)
            if self.engine == "duckdb":
                text = _duckdb_named_params(text, params)
            self._syntax_check(text)
            tables: set[str] = set()
            ctes: frozenset[str] = frozenset()
            if self.tables is not None:
                tables, ctes = self._parse_check(text)
                record_detail(tables=sorted(tables))
            if self.engine == "sqlite":
                columns, rows, truncated, touched = self._sqlite(text, params, deadline, ctes)
            else:
                columns, rows, truncated, touched = self._duckdb(text, params, tables, deadline)
            if truncated:
                cut = f"sql: the result was cut to {len(rows)} rows (max_rows={self.max_rows}, max_result_bytes={self.max_result_bytes})"
                if self.on_truncate == "error":
                    raise CapabilityFault("CapabilityError", f"{cut}; the query was refused (on_truncate='error'): "
                                          "aggregate in SQL or add a LIMIT")
                warn(cut)
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

    def _parse_check(self, text: str) -> tuple[set[str], frozenset[str]]:
        """The allowed tables ``text`` reads and the names of its CTEs that are not tables of the
        database (see `sandbox.sql_analysis.analyze`); `SqlDenied` otherwise."""
        assert self.tables is not None
        found = analyze(text, self.engine)
        for fname in sorted(found.table_functions):
            if fname not in _SAFE_TABLE_FUNCTIONS:
                raise SqlDenied(f"table function {fname!r} is not allowed")
        for fname in sorted(found.functions):
            if fname in _DENIED_FUNCTIONS:
                raise SqlDenied(f"function {fname!r} is not allowed")
        touched: set[str] = set()
        for table in sorted(found.tables):
            *schema, name = table.split(".")
            if schema not in ([], ["main"]):
                raise SqlDenied(f"table {table!r} is not on the allowed list")
            if name not in self.tables:
                raise SqlDenied(f"table {name!r} is not on the allowed list ({', '.join(sorted(self.tables))})")
            touched.add(name)
        return touched, found.ctes - self._existing

    def _syntax_check(self, text: str) -> None:
        """Let the database parse ``text`` without running it: `CapabilityFault` (``CapabilityError``,
        with the database's message) when it cannot; `SqlDenied` for more than one statement and,
        on SQLite, for a statement whose first step is not a SELECT."""
        if self.engine == "duckdb":
            import duckdb

            try:
                statements = duckdb.extract_statements(text)
            except duckdb.Error as exc:
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {_first_line(exc)}") from None
            if len(statements) != 1:
                raise SqlDenied(f"one statement per query ({len(statements)} given)")
            return
        conn = self._sqlite_connect()
        consulted: list[int] = []  # the authorizer denies the first step, so this holds at most one action
        try:
            def deny_all(action: int, *args: Any) -> int:
                consulted.append(action)
                return sqlite3.SQLITE_DENY

            conn.set_authorizer(deny_all)
            conn.execute(text)
        except sqlite3.ProgrammingError as exc:
            if "one statement" in str(exc):
                raise SqlDenied("one statement per query") from None
        except sqlite3.Warning as exc:
            raise SqlDenied(str(exc)) from None
        except sqlite3.Error as exc:
            if not consulted:  # it failed before SQLite understood the statement: a syntax error
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {_first_line(exc)}") from None
        finally:
            conn.close()
        if consulted[:1] != [sqlite3.SQLITE_SELECT]:
            what = _ACTIONS.get(consulted[0], "this statement") if consulted else "a statement that reads nothing"
            raise SqlDenied(f"only SELECT queries are allowed, not {what}")

    # -- SQLite -----------------------------------------------------------------------------

    def _sqlite_connect(self) -> sqlite3.Connection:
        flags = "mode=ro" + ("&immutable=1" if self.immutable else "")
        uri = f"file:{urllib.parse.quote(str(self.path))}?{flags}"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        for limit, value in _SQLITE_LIMITS.items():
            conn.setlimit(getattr(sqlite3, limit), value)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(self.max_result_bytes, 1 << 16))
        return conn

    def _sqlite(self, text: str, params: Any, deadline: float,
                ctes: frozenset[str] = frozenset()) -> tuple[list[str], list[dict], bool, set[str]]:
        """Run ``text`` under the authorizer; reads of ``ctes`` (CTE names that are no table of
        the database) are allowed, since SQLite reports reads of a CTE under its name."""
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
                if table in ctes:
                    return sqlite3.SQLITE_OK
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

        timed_out: list[bool] = []

        def progress() -> int:
            if time.monotonic() > deadline:
                timed_out.append(True)
                return 1
            return 0

        def work() -> tuple[list[str], list[dict], bool]:
            try:
                cursor = conn.execute(text, bound)
                columns = _unique([d[0] for d in cursor.description or ()])
                return (columns, *self._collect(cursor, columns))
            except sqlite3.Warning as exc:  # e.g. more than one statement
                raise SqlDenied(str(exc)) from None
            except sqlite3.Error as exc:
                if denied:
                    raise SqlDenied(denied[0]) from None
                if timed_out or time.monotonic() >= deadline:
                    raise self._too_long() from None
                if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in str(exc):
                    raise SqlDenied("one statement per query") from None
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {_first_line(exc)}") from None

        try:
            bound = _params(params)
            conn.set_authorizer(authorize)
            conn.set_progress_handler(progress, 1000)
        except BaseException:
            conn.close()
            raise
        columns, rows, truncated = self._bounded(work, conn, deadline)
        return columns, rows, truncated, touched

    def _too_long(self) -> CapabilityFault:
        return CapabilityFault("CapabilityError", f"sql: the query ran longer than {self.timeout:g} s (timeout_seconds, "
                               "or the run's remaining time if shorter) and was stopped")

    def _bounded(self, work: Any, conn: Any, deadline: float) -> Any:
        """Run ``work()`` on a worker thread that owns ``conn`` (closed when it ends); return its
        result, or interrupt ``conn`` at ``deadline`` and raise the timeout fault without waiting
        for a statement that ignores the interrupt."""
        with self._abandoned_lock:
            if self._abandoned >= _MAX_ABANDONED:
                conn.close()
                raise CapabilityFault("CapabilityError", "sql: earlier queries that ran past their deadline are still "
                                      "stopping; try again later")
        box: dict[str, Any] = {}
        done = threading.Event()

        def target() -> None:
            try:
                box["value"] = work()
            except BaseException as exc:  # handed to the caller below
                box["error"] = exc
            finally:
                with contextlib.suppress(Exception):
                    conn.close()
                with self._abandoned_lock:
                    done.set()
                    if box.get("abandoned"):
                        self._abandoned -= 1

        threading.Thread(target=target, name="sandbox-sql", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            with contextlib.suppress(Exception):
                conn.interrupt()
            if not done.wait(0.1):
                with self._abandoned_lock:
                    if not done.is_set():
                        box["abandoned"] = True
                        self._abandoned += 1
                        raise self._too_long()
        if "error" in box:
            raise box["error"]
        return box["value"]

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

    def _duckdb(self, text: str, params: Any, parsed: set[str],
                deadline: float) -> tuple[list[str], list[dict], bool, set[str]]:
        import duckdb

        kind = duckdb.extract_statements(text)[0].type  # parses: `_syntax_check` ran first
        if kind != duckdb.StatementType.SELECT:
            raise SqlDenied(f"only SELECT queries are allowed, not {kind.name}")
        if _DUCKDB_QUERY_FUNCTION.search(text):
            raise SqlDenied("query() and query_table() are not allowed (they hide a statement from the checks)")
        bound = _params(params)
        conn = self._duckdb_connect()
        try:
            try:
                touched = {t.lower() for t in conn.get_table_names(text)}
            except duckdb.BinderException:  # DuckDB cannot list the tables of a statement with parameters:
                touched = set(parsed)       # the sqlglot check (with an allowlist) stands alone
            except duckdb.PermissionException as exc:
                raise SqlDenied(_first_line(exc)) from None
            except duckdb.Error as exc:
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {_first_line(exc)}") from None
            if self.tables is not None:  # DuckDB resolves CTEs itself: every name it lists is a table
                extra = sorted(t for t in touched if t.split(".")[-1] not in self.tables)
                if extra:
                    raise SqlDenied(f"table {extra[0]!r} is not on the allowed list ({', '.join(sorted(self.tables))})")
        except BaseException:
            conn.close()
            raise

        def work() -> tuple[list[str], list[dict], bool]:
            try:
                cursor = conn.execute(text, bound) if bound else conn.execute(text)
                columns = _unique([d[0] for d in cursor.description or ()])
                return (columns, *self._collect(cursor, columns))
            except duckdb.InterruptException:
                raise self._too_long() from None
            except duckdb.PermissionException as exc:
                raise SqlDenied(_first_line(exc)) from None
            except duckdb.Error as exc:
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {_first_line(exc)}") from None

        columns, rows, truncated = self._bounded(work, conn, deadline)
        return columns, rows, truncated, touched

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


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:500]


def _duckdb_named_params(text: str, params: Any) -> str:
    """``text`` with each ``:name`` placeholder whose name is a key of ``params`` written as
    DuckDB's ``$name`` (found by sqlglot's tokenizer, so strings, comments and ``::`` casts are
    left alone); ``text`` itself when ``params`` is not a dict."""
    if not isinstance(params, dict) or not params or ":" not in text:
        return text
    try:
        from sqlglot.dialects.duckdb import DuckDB
        from sqlglot.tokens import TokenType

        tokens = DuckDB().tokenize(text)
    except Exception:
        return text  # the database's parser reports the error
    out, last = [], 0
    for colon, name in zip(tokens, tokens[1:]):
        if (colon.token_type == TokenType.COLON and name.start == colon.end + 1 and name.text in params
                and name.token_type not in (TokenType.STRING, TokenType.NUMBER)):
            out.append(text[last:colon.start] + "$")
            last = colon.end + 1
    return "".join(out) + text[last:]


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
