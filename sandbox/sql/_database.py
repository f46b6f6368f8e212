"""`Database`: one read-only database file behind the SQL capability. It checks each statement
(the database's own parse, then the table allowlist), runs it in a worker process under the
call's deadline, and shapes the answer (columns, rows, truncation, the call's record detail).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from sandbox.call_time import call_timeout
from sandbox.capabilities import record_detail, warn
from sandbox.errors import ConfigurationError
from sandbox.runtime import CapabilityFault
from sandbox.sql_analysis import SqlRefused, analyze
from sandbox.sql_pool import WorkerLost, WorkerPool, WorkerTimeout
from sandbox.sql_worker import ACTIONS, DENIED_FUNCTIONS, MAX_SQL_CHARS, duckdb_connect, first_line, sqlite_connect


Engine = Literal["sqlite", "duckdb"]
Params = list[str | int | float | bool | None] | dict[str, str | int | float | bool | None] | None

_DUCKDB_SUFFIXES = (".duckdb", ".ddb")
_SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "generateseries", "json_each", "json_tree"})
_DUCKDB_QUERY_FUNCTION = re.compile(r"\bquery(?:_table)?\s*\(", re.IGNORECASE)
_ANSWER_OVERHEAD = 1 << 16  # a worker's answer beyond its rows: columns, flags, an error message
OnTruncate = Literal["warn", "error"]

SqlDenied = SqlRefused  # a statement refused before or while running (becomes ``PolicyDenied``)


class Database:
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
        self._pool = WorkerPool(self._worker_config())
        self._pool.warm()

    # -- the guest's calls ------------------------------------------------------------------

    def query(self, text: str, params: Any) -> dict:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        record_detail(engine=self.engine, statement_sha256=digest, tables=[], rows=0, truncated=False)
        try:
            if len(text) > MAX_SQL_CHARS:
                raise SqlDenied(f"the statement is longer than {MAX_SQL_CHARS} characters")
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
            if fname in DENIED_FUNCTIONS:
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
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {first_line(exc)}") from None
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
                raise CapabilityFault("CapabilityError", f"sql: {type(exc).__name__}: {first_line(exc)}") from None
        finally:
            conn.close()
        if consulted[:1] != [sqlite3.SQLITE_SELECT]:
            what = ACTIONS.get(consulted[0], "this statement") if consulted else "a statement that reads nothing"
            raise SqlDenied(f"only SELECT queries are allowed, not {what}")

    # -- the worker process -------------------------------------------------------------------

    def _sqlite_connect(self) -> sqlite3.Connection:
        return sqlite_connect(str(self.path), immutable=self.immutable, max_result_bytes=self.max_result_bytes)

    def _duckdb_connect(self) -> Any:
        return duckdb_connect(str(self.path), memory_bytes=self.memory_bytes)

    def _sqlite(self, text: str, params: Any, deadline: float,
                ctes: frozenset[str] = frozenset()) -> tuple[list[str], list[dict], bool, set[str]]:
        """Run ``text`` in a worker under the authorizer; reads of ``ctes`` (CTE names that are no
        table of the database) are allowed, since SQLite reports reads of a CTE under its name."""
        return self._in_worker({"sql": text, "params": _params(params), "ctes": sorted(ctes), "parsed": []}, deadline)

    def _duckdb(self, text: str, params: Any, parsed: set[str],
                deadline: float) -> tuple[list[str], list[dict], bool, set[str]]:
        import duckdb

        kind = duckdb.extract_statements(text)[0].type  # parses: `_syntax_check` ran first
        if kind != duckdb.StatementType.SELECT:
            raise SqlDenied(f"only SELECT queries are allowed, not {kind.name}")
        if _DUCKDB_QUERY_FUNCTION.search(text):
            raise SqlDenied("query() and query_table() are not allowed (they hide a statement from the checks)")
        return self._in_worker({"sql": text, "params": _params(params), "ctes": [], "parsed": sorted(parsed)}, deadline)

    def _in_worker(self, request: dict[str, Any], deadline: float) -> tuple[list[str], list[dict], bool, set[str]]:
        """The worker's (columns, rows, truncated, tables touched) for ``request``; `SqlDenied` or
        `CapabilityFault` as the worker reports, the timeout fault at ``deadline`` (the worker
        is killed), a ``CapabilityError`` when the worker dies (e.g. past its memory limit)."""
        try:
            answer = self._pool.query({**request, "deadline": deadline}, deadline,
                                      4 * self.max_result_bytes + _ANSWER_OVERHEAD)
        except WorkerTimeout:
            raise self._too_long() from None
        except WorkerLost as exc:
            raise CapabilityFault("CapabilityError", f"sql: the query was stopped: {exc} (memory_bytes="
                                  f"{self.memory_bytes}, max_result_bytes={self.max_result_bytes})") from None
        except (RuntimeError, OSError) as exc:
            raise CapabilityFault("CapabilityError", f"sql: {exc}; try again later") from None
        if answer.get("ok"):
            return answer["columns"], answer["rows"], bool(answer["truncated"]), set(answer["touched"])
        kind, message = answer.get("kind"), str(answer.get("message", ""))
        if kind == "denied":
            raise SqlDenied(message)
        if kind == "timeout":
            raise self._too_long()
        raise CapabilityFault("CapabilityError", message or "sql: the query failed")

    def _too_long(self) -> CapabilityFault:
        return CapabilityFault("CapabilityError", f"sql: the query ran longer than {self.timeout:g} s (timeout_seconds, "
                               "or the run's remaining time if shorter) and was stopped")

    def close(self) -> None:
        """Kill this database's worker processes (a later query starts a new one)."""
        self._pool.close()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_pool"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pool = WorkerPool(self._worker_config())

    def _worker_config(self) -> dict[str, Any]:
        return {"path": str(self.path), "engine": self.engine, "max_rows": self.max_rows,
                "max_result_bytes": self.max_result_bytes, "memory_bytes": self.memory_bytes,
                "immutable": self.immutable,
                "tables": None if self.tables is None else {
                    t: None if cols is None else sorted(cols) for t, cols in self.tables.items()}}

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
