"""The process that runs the SQL capability's queries, and the engine code it shares with the host.

`sandbox.sql` starts this file as a script (``python -I sql_worker.py``: standard library
only, nothing from the host's ``sys.path``) and talks to it over its stdin/stdout in frames:
an 8-byte big-endian length, then that many bytes of UTF-8 JSON. The first frame is the
configuration (`Config` fields); the worker imports its engine, bounds itself, answers
``{"ready": true}``, then answers one frame per query frame until its stdin closes.

Bounds the worker puts on itself before it takes a query (so a query cannot grow the host):

- ``RLIMIT_AS`` and ``RLIMIT_DATA``: what the interpreter and the engine have mapped once
  loaded, plus ``memory_bytes`` plus room for one result; an allocation beyond fails (DuckDB and
  SQLite report out-of-memory, the query fails) or, at worst, the worker dies;
- ``RLIMIT_FSIZE`` 0 with ``SIGXFSZ`` ignored, and SQLite's ``temp_store=MEMORY``: no query
  writes a file (sorts stay in the bounded memory); ``RLIMIT_CORE`` 0;
- ``RLIMIT_CPU``: set before each query to the CPU already used plus the time limit plus one
  second, a backstop behind the host, which kills the worker at the call's deadline;
- ``PR_SET_PDEATHSIG`` (``SIGKILL``): the worker dies with the host.

Each query opens the database read-only itself (SQLite: ``mode=ro`` URI, limits and the
authorizer; DuckDB: ``read_only`` and the locked configuration), and the rows it sends back are
capped by ``max_rows`` and ``max_result_bytes`` before they are encoded.
"""

from __future__ import annotations

import base64
import ctypes
import datetime as _dt
import decimal
import json
import math
import os
import resource
import signal
import sqlite3
import struct
import sys
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

HEADER = struct.Struct(">Q")
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "query", "query_table", "readfile", "writefile",
                              "edit", "sqlite_dbpage"})
SQLITE_SAFE_VTABS = frozenset({"json_each", "json_tree"})
MAX_SQL_CHARS = 100_000
SQLITE_LIMITS = {  # limit -> value: bounds on the work one statement can ask for
    "SQLITE_LIMIT_ATTACHED": 0,
    "SQLITE_LIMIT_SQL_LENGTH": MAX_SQL_CHARS * 4,
    "SQLITE_LIMIT_EXPR_DEPTH": 200,
    "SQLITE_LIMIT_COMPOUND_SELECT": 100,
    "SQLITE_LIMIT_FUNCTION_ARG": 100,
    "SQLITE_LIMIT_LIKE_PATTERN_LENGTH": 1000,
    "SQLITE_LIMIT_VARIABLE_NUMBER": 1000,
    "SQLITE_LIMIT_TRIGGER_DEPTH": 1,
}
ACTIONS = {getattr(sqlite3, n): n.removeprefix("SQLITE_").replace("_", " ") for n in dir(sqlite3)
           if n.startswith("SQLITE_") and n not in ("SQLITE_OK", "SQLITE_DENY", "SQLITE_IGNORE")
           and isinstance(getattr(sqlite3, n), int) and not n.startswith("SQLITE_LIMIT")}
_SLACK = 128 << 20  # interpreter and engine working room beyond the engine's own memory and one result


class Denied(Exception):
    """The statement was refused (the host raises ``PolicyDenied``)."""


class Failed(Exception):
    """The statement ran and failed; ``str(exc)`` is the guest's ``CapabilityError`` message."""


class TooLong(Exception):
    """The statement reached its deadline."""


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:500]


def engine_error(exc: BaseException) -> Failed:
    return Failed(f"sql: {type(exc).__name__}: {first_line(exc)}")


def sqlite_connect(path: str, *, immutable: bool, max_result_bytes: int) -> sqlite3.Connection:
    """A read-only connection (``mode=ro`` URI) with `SQLITE_LIMITS` set; no authorizer yet."""
    flags = "mode=ro" + ("&immutable=1" if immutable else "")
    conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?{flags}", uri=True, check_same_thread=False,
                           isolation_level=None)
    for limit, value in SQLITE_LIMITS.items():
        conn.setlimit(getattr(sqlite3, limit), value)
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max(max_result_bytes, 1 << 16))
    return conn


def duckdb_connect(path: str, *, memory_bytes: int) -> Any:
    """A read-only DuckDB connection with external access, extensions and spilling off, one
    thread, ``memory_limit`` = ``memory_bytes``, and the configuration locked."""
    import duckdb

    return duckdb.connect(path, read_only=True, config={
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "memory_limit": f"{max(memory_bytes >> 20, 16)}MiB",
        "threads": 1,
        "temp_directory": "",  # no spill files next to the database
        "lock_configuration": True,
    })


def unique(names: list[str]) -> list[str]:
    """``names`` with a repeated name suffixed ``_2``, ``_3``, ... so every name is distinct."""
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


TAG = "$type"
"""The typed-value tag of the wire format (`runtimes.wire`): this script is standard library only,
so it writes the few tags a database value needs itself, and the host reads them with
`runtimes.wire.loads`."""


def jsonable(value: Any) -> Any:
    """``value`` as JSON data, with dates, times, decimals and bytes as wire-format tags (a column
    named like the tag is escaped as the wire format escapes dicts)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, decimal.Decimal):
        return {TAG: "decimal", "v": str(value)} if value.is_finite() else str(value)
    if isinstance(value, _dt.datetime):
        return {TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, _dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, _dt.time):
        return {TAG: "time", "v": value.isoformat()}
    if isinstance(value, _dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return escaped({str(k): jsonable(v) for k, v in value.items()})
    return str(value)


def escaped(row: dict) -> dict:
    """``row``, or its wire-format escape when one of its keys is the tag."""
    return {TAG: "dict", "v": [[k, v] for k, v in row.items()]} if TAG in row else row


def collect(cursor: Any, columns: list[str], max_rows: int, max_result_bytes: int) -> tuple[list[dict], bool]:
    """At most ``max_rows`` rows, at most ``max_result_bytes`` of compact JSON; True when cut."""
    rows: list[dict] = []
    size = 2
    while True:
        batch = cursor.fetchmany(min(256, max_rows + 1 - len(rows)))
        if not batch:
            return rows, False
        for raw in batch:
            if len(rows) >= max_rows:
                return rows, True
            row = escaped({col: jsonable(value) for col, value in zip(columns, raw)})
            size += len(json.dumps(row, separators=(",", ":"), ensure_ascii=False)) + 1
            if size > max_result_bytes:
                return rows, True
            rows.append(row)


def sqlite_authorizer(allowed: Mapping[str, frozenset[str] | None] | None, ctes: frozenset[str],
                      denied: list[str], touched: set[str]) -> Callable[..., int]:
    """The authorizer: SELECT, reads of ``allowed`` tables/columns (every table when None) and of
    ``ctes``, recursive CTEs and ordinary functions; everything else is denied, the reason
    appended to ``denied``; each table read is added to ``touched``."""
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
            if table in SQLITE_SAFE_VTABS or (table == "sqlite_master" and arg2 == "ROWID"):
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
            if (arg2 or "").lower() in DENIED_FUNCTIONS:
                denied.append(f"function {arg2!r} is not allowed")
                return sqlite3.SQLITE_DENY
            return sqlite3.SQLITE_OK
        denied.append(f"{ACTIONS.get(action, f'action {action}')} is not allowed (read-only)")
        return sqlite3.SQLITE_DENY
    return authorize


class Worker:
    """One worker's configuration and its query loop (see the module docstring)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.path: str = config["path"]
        self.engine: str = config["engine"]
        tables = config["tables"]
        self.tables: dict[str, frozenset[str] | None] | None = None if tables is None else {
            t: None if cols is None else frozenset(cols) for t, cols in tables.items()}
        self.max_rows: int = config["max_rows"]
        self.max_result_bytes: int = config["max_result_bytes"]
        self.memory_bytes: int = config["memory_bytes"]
        self.immutable: bool = config["immutable"]

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to one query frame: ``{"ok": True, columns, rows, truncated, touched}`` or
        ``{"ok": False, "kind": "denied" | "failed" | "timeout", "message": ...}``."""
        deadline = float(request["deadline"])
        used = resource.getrusage(resource.RUSAGE_SELF)
        cpu = math.ceil(used.ru_utime + used.ru_stime + max(0.0, deadline - time.monotonic()) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, resource.RLIM_INFINITY))
        try:
            if self.engine == "sqlite":
                columns, rows, truncated, touched = self.sqlite(request["sql"], request["params"], deadline,
                                                                frozenset(request["ctes"]))
            else:
                columns, rows, truncated, touched = self.duckdb(request["sql"], request["params"], set(request["parsed"]))
        except Denied as exc:
            return {"ok": False, "kind": "denied", "message": str(exc)}
        except TooLong:
            return {"ok": False, "kind": "timeout", "message": ""}
        except Failed as exc:
            return {"ok": False, "kind": "failed", "message": str(exc)}
        except MemoryError:
            return {"ok": False, "kind": "failed", "message": "sql: the query needs more memory than memory_bytes"}
        return {"ok": True, "columns": columns, "rows": rows, "truncated": truncated, "touched": sorted(touched)}

    def sqlite(self, text: str, params: Sequence[Any] | Mapping[str, Any], deadline: float,
               ctes: frozenset[str]) -> tuple[list[str], list[dict], bool, set[str]]:
        conn = sqlite_connect(self.path, immutable=self.immutable, max_result_bytes=self.max_result_bytes)
        denied: list[str] = []
        touched: set[str] = set()
        timed_out: list[bool] = []

        def progress() -> int:
            if time.monotonic() > deadline:
                timed_out.append(True)
                return 1
            return 0

        try:
            conn.execute("PRAGMA temp_store=MEMORY")  # before the authorizer, which denies every PRAGMA
            conn.set_authorizer(sqlite_authorizer(self.tables, ctes, denied, touched))
            conn.set_progress_handler(progress, 1000)
            cursor = conn.execute(text, params)
            columns = unique([d[0] for d in cursor.description or ()])
            return (columns, *collect(cursor, columns, self.max_rows, self.max_result_bytes), touched)
        except sqlite3.Warning as exc:  # e.g. more than one statement
            raise Denied(str(exc)) from None
        except sqlite3.Error as exc:
            if denied:
                raise Denied(denied[0]) from None
            if timed_out or time.monotonic() >= deadline:
                raise TooLong from None
            if isinstance(exc, sqlite3.ProgrammingError) and "one statement" in str(exc):
                raise Denied("one statement per query") from None
            raise engine_error(exc) from None
        finally:
            conn.close()

    def duckdb(self, text: str, params: Sequence[Any] | Mapping[str, Any],
               parsed: set[str]) -> tuple[list[str], list[dict], bool, set[str]]:
        import duckdb

        conn = duckdb_connect(self.path, memory_bytes=self.memory_bytes)
        try:
            try:
                touched = {t.lower() for t in conn.get_table_names(text)}
            except duckdb.BinderException:  # DuckDB cannot list the tables of a statement with parameters:
                touched = parsed            # the sqlglot check (with an allowlist) stands alone
            if self.tables is not None:  # DuckDB resolves CTEs itself: every name it lists is a table
                extra = sorted(t for t in touched if t.split(".")[-1] not in self.tables)
                if extra:
                    raise Denied(f"table {extra[0]!r} is not on the allowed list ({', '.join(sorted(self.tables))})")
            cursor = conn.execute(text, params) if params else conn.execute(text)
            columns = unique([d[0] for d in cursor.description or ()])
            return (columns, *collect(cursor, columns, self.max_rows, self.max_result_bytes), touched)
        except duckdb.InterruptException:
            raise TooLong from None
        except duckdb.PermissionException as exc:
            raise Denied(first_line(exc)) from None
        except duckdb.Error as exc:
            raise engine_error(exc) from None
        finally:
            conn.close()


def read_frame(stream: BinaryIO) -> Any:
    """The next frame from ``stream`` decoded, or None at end of input."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    return None if len(body) < size else json.loads(body)


def write_frame(stream: BinaryIO, value: Any) -> None:
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


def _vm_bytes() -> tuple[int, int]:
    """(VmSize, VmData) of this process in bytes."""
    fields: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmSize", "VmData"):
                fields[key] = int(rest.split()[0]) * 1024
    return fields["VmSize"], fields["VmData"]


def _bound_self(parent: int, memory_bytes: int, max_result_bytes: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the host died before the line above
        os._exit(1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    headroom = 2 * memory_bytes + 8 * max_result_bytes + _SLACK
    size, data = _vm_bytes()
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
    resource.setrlimit(resource.RLIMIT_DATA, (data + headroom, data + headroom))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main() -> None:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the pipe
    config = read_frame(stdin)
    if config is None:
        return
    worker = Worker(config)
    if worker.engine == "duckdb":
        import duckdb  # noqa: F401  (loaded before the limits are measured)
    _bound_self(int(config["parent"]), worker.memory_bytes, worker.max_result_bytes)
    write_frame(stdout, {"ready": True})
    while (request := read_frame(stdin)) is not None:
        write_frame(stdout, worker.run(request))


if __name__ == "__main__":
    main()
