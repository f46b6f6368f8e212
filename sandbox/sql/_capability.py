"""`sql_capability`: the guest-facing ``<name>.query`` and ``<name>.tables`` capabilities over one
`Database`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from sandbox.capabilities import Capability, capability
from sandbox.sql._database import Database, Engine, OnTruncate, Params


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
        database: an existing SQLite or DuckDB file (missing file: `ConfigurationError`).
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
    db = Database(database, engine=engine, tables=tables, max_rows=max_rows, max_result_bytes=max_result_bytes,
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
