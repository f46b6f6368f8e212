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

from sandbox.sql._capability import sql_capability
from sandbox.sql._database import Engine, OnTruncate, Params, SqlDenied

__all__ = ["Engine", "OnTruncate", "Params", "SqlDenied", "sql_capability"]
