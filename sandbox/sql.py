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

Values keep their type (the wire format's typed values): BLOBs are ``bytes``, decimals
``Decimal``, dates and times ``date``/``time``/``datetime``; anything else unknown is its ``str``.

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
    allowed); ``temp_store=MEMORY``; a progress handler stops a query at its deadline.
DuckDB (``pip install sandbox[data]``)
    ``read_only=True``, ``enable_external_access=false`` (no files, no network, no ATTACH,
    no COPY ... TO), extension install/autoload/community extensions off,
    ``memory_limit`` (``memory_bytes``), one thread, no temp directory (nothing spills next to
    the file), ``lock_configuration=true`` (a guest cannot ``SET`` any of that back); only a single
    statement of type SELECT runs (DuckDB's own parser decides); ``query()``/``query_table()``
    (which run SQL given as a string) are refused. DuckDB has no authorizer: with a table allowlist, the table check is done by
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

Where a query runs: in a worker process (`sandbox.sql_worker`, started and killed by
`sandbox.sql_pool`), never in the host. The worker opens the file itself (the guards above),
bounds its own memory (``RLIMIT_AS``/``RLIMIT_DATA``: what the interpreter and engine map, plus
twice ``memory_bytes``, plus room for one result), writes no file (``RLIMIT_FSIZE`` 0, SQLite's
``temp_store=MEMORY``: a huge sort runs out of memory instead of filling the disk), has a CPU
backstop, and dies with the host (``PR_SET_PDEATHSIG``). It sends back at most ``max_rows``
rows and ``max_result_bytes`` of JSON; the host reads a length header first and refuses an
answer longer than the cap before reading it. A query that allocates gigabytes (a huge
``repeat``, a huge list) fails in the worker with the engine's out-of-memory error, or the
worker dies and the call fails with ``CapabilityError``; the host's memory does not grow.

The call's deadline is ``min(timeout_seconds, the run's remaining time)``: SQLite's progress
handler stops the statement there, and the host kills (``SIGKILL``) and reaps a worker that
has not answered by then, whatever the engine is doing, so the call returns at its deadline and
nothing keeps running. A killed or failed worker is replaced at once, in the background.

Why a warm worker per database rather than a process per call: starting the worker (an
interpreter, plus importing DuckDB) costs about 0.15 s for SQLite and 0.5-1.2 s for DuckDB on
a loaded 2-core machine, which a process per call would add to every query; a warm worker adds
about 2 ms per SQLite query (pipe round trip and JSON) and nothing measurable for DuckDB
(whose per-query connect dominates). Forking the host per call is ruled out: the host is
multi-threaded. So `sql_capability` starts one worker when it is made, keeps one idle worker
warm, starts more (up to four) for concurrent calls, and ``Sandbox.close()`` kills them all
(`Capability.release`); a capability used again afterwards starts a new one. Each query opens
its own connection in the worker, as before, so nothing carries over from one query to the next.

A refusal raises ``PolicyDenied`` in the guest (``error.kind == "policy_denied"`` when
uncaught), with the reason. Every call notes in the run record (`CallRecord.detail`): the
engine, the statement's SHA-256, the tables touched, the rows returned, whether the result was
truncated, and the decision (``allow``, ``deny``, or ``error`` for a statement that was not
refused but failed: a syntax error, the time limit) with its reason.
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
from sandbox.capabilities import Capability, capability, record_detail, warn
from sandbox.errors import ConfigurationError
from sandbox.runtime import CapabilityFault
from sandbox.sql_analysis import SqlRefused, analyze
from sandbox.sql_pool import WorkerLost, WorkerPool, WorkerTimeout
from sandbox.sql_worker import (ACTIONS, DENIED_FUNCTIONS, MAX_SQL_CHARS, duckdb_connect, first_line,
                                sqlite_connect)

Engine = Literal["sqlite", "duckdb"]
Params = list[str | int | float | bool | None] | dict[str, str | int | float | bool | None] | None

_DUCKDB_SUFFIXES = (".duckdb", ".ddb")
_SAFE_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "generateseries", "json_each", "json_tree"})
_DUCKDB_QUERY_FUNCTION = re.compile(r"\bquery(?:_table)?\s*\(", re.IGNORECASE)
_ANSWER_OVERHEAD = 1 << 16  # a worker's answer beyond its rows: columns, flags, an error message
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
        memory_bytes: DuckDB's ``memory_limit`` (one thread, no spilling to disk); the worker
            process running the queries (either engine) may use twice this beyond what the
            interpreter and engine map, plus room for one result (see the module docstring).

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
    made = [
        capability(name=f"{name}.query", description=(
            f"Run one read-only SELECT on the {db.engine} database ({allowed}). params: a list for ? "
            "placeholders or a dict for :name. Returns {'columns': [...], 'rows': [{column: value}], "
            f"'truncated': bool}} with at most {max_rows} rows"
            + (" (more is an error)" if on_truncate == "error" else "")
            + ". Writes and other tables raise PolicyDenied; SQL errors raise CapabilityError with the database's message."
        ))(query),
        capability(name=f"{name}.tables", description="The tables you may query, with their columns.")(list_tables),
    ]
    for cap in made:
        cap.release = db.close  # a Sandbox's close() stops the worker processes
    return made


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
