"""One reading of a SQL statement (sqlglot), shared by the policy and the SQL capability.

`analyze` parses a text as exactly one statement of one dialect and says which base tables it
reads, which functions it calls and which table functions it uses. It refuses (`SqlRefused`)
whatever it cannot parse or classify: more than one statement, anything but a query (DML,
DDL, commands, ``SELECT ... INTO``, a data-modifying CTE), a table reference that belongs to
no scope. Table names are resolved per scope: a name is a CTE only where that CTE is
visible, so ``WITH secret AS (SELECT * FROM secret) SELECT * FROM secret`` reads the base
table ``secret``. Identifiers are compared unquoted and lower-cased (what SQLite and DuckDB
do), so a quote inside an identifier is part of a name, never SQL.

Needs the optional ``sqlglot`` dependency (``pip install 'sandbox[data]'``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SqlAnalysis", "SqlRefused", "analyze", "require_sqlglot"]


class SqlRefused(Exception):
    """The statement is refused: it could not be parsed or classified, or is not a single query."""


@dataclass(frozen=True)
class SqlAnalysis:
    """What one query reads.

    ``tables``: base tables read, lower-cased, qualified as written (``"orders"``,
    ``"main.orders"``, ``"db.main.orders"``); ``functions``: names of the scalar and aggregate
    functions sqlglot does not know (``exp.Anonymous``), lower-cased; ``table_functions``: names
    of the functions used as tables (``range``, ``json_each``), lower-cased; ``ctes``: the names
    the statement defines with ``WITH``, lower-cased.
    """

    tables: frozenset[str]
    functions: frozenset[str]
    table_functions: frozenset[str]
    ctes: frozenset[str] = frozenset()


def require_sqlglot(what: str) -> None:
    """Raise `ImportError` naming ``what`` when sqlglot is not installed."""
    try:
        import sqlglot  # noqa: F401
    except ImportError:
        raise ImportError(f"{what} needs sqlglot: pip install 'sandbox[data]'") from None


def analyze(text: str, dialect: str | None, *, read_only: bool = True) -> SqlAnalysis:
    """Read ``text`` as one query of ``dialect`` (``"sqlite"``, ``"duckdb"``, None: sqlglot's own).

    With ``read_only=False``, one ``INSERT``/``UPDATE``/``DELETE``/``MERGE`` is accepted too; its
    ``tables`` are then every table name the statement mentions (CTE names included: a
    conservative superset). Raises `SqlRefused` with a one-line reason for anything it does not
    accept.
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.optimizer.scope import traverse_scope

    try:
        statements = [s for s in sqlglot.parse(text, dialect=dialect) if s is not None]
    except SqlglotError as exc:
        raise SqlRefused(f"the statement could not be parsed: {_first_line(exc)}") from None
    except RecursionError:
        raise SqlRefused("the statement is nested too deeply to be checked") from None
    if len(statements) != 1:
        raise SqlRefused(f"one statement per query ({len(statements)} given)")
    tree = statements[0]
    if not read_only and isinstance(tree, (exp.Insert, exp.Update, exp.Delete, exp.Merge)):
        for node in tree.walk():
            if isinstance(node, exp.DML):
                continue
            if isinstance(node, (exp.Command, exp.DDL, exp.Pragma, exp.Set, exp.Attach, exp.Detach, exp.Copy)):
                raise SqlRefused(f"the statement could not be classified: it contains {node.key.upper()}")
        named = list(tree.find_all(exp.Table))
        return SqlAnalysis(
            tables=frozenset(".".join(p for p in (t.catalog, t.db, t.name) if p).lower()
                             for t in named if isinstance(t.this, exp.Identifier)),
            functions=frozenset(f.name.lower() for f in tree.find_all(exp.Anonymous)),
            table_functions=frozenset((t.this.name if isinstance(t.this, exp.Anonymous) else t.this.key).lower()
                                      for t in named if not isinstance(t.this, exp.Identifier)),
        )
    if not isinstance(tree, exp.Query):
        raise SqlRefused(f"only {'' if read_only else 'INSERT, UPDATE, DELETE, MERGE and '}SELECT statements "
                         f"are allowed, not {tree.key.upper()}")
    for node in tree.walk():
        if isinstance(node, (exp.DML, exp.DDL, exp.Command, exp.Into, exp.Pragma, exp.Set, exp.Use,
                             exp.Transaction, exp.Commit, exp.Rollback, exp.Attach, exp.Detach, exp.Copy,
                             exp.Lock)):
            raise SqlRefused(f"only read-only queries are allowed; found {node.key.upper()}")
    try:
        scopes = list(traverse_scope(tree))
    except (SqlglotError, RecursionError) as exc:
        raise SqlRefused(f"the statement's tables could not be resolved: {_first_line(exc)}") from None

    tables: set[str] = set()
    table_functions: set[str] = set()
    placed: set[int] = set()
    for scope in scopes:
        for table in scope.tables:
            placed.add(id(table))
            if not isinstance(table.this, exp.Identifier):
                func = table.this
                table_functions.add((func.name if isinstance(func, exp.Anonymous) else func.key).lower())
                continue
            if not table.db and not table.catalog and table.name in scope.cte_sources:
                continue  # a CTE visible in this scope
            parts = [p for p in (table.catalog, table.db, table.name) if p]
            tables.add(".".join(parts).lower())
    unplaced = [t for t in tree.find_all(exp.Table) if id(t) not in placed]
    if unplaced:
        raise SqlRefused(f"table reference {unplaced[0].sql(dialect=dialect)!r} could not be resolved")
    functions = {f.name.lower() for f in tree.find_all(exp.Anonymous)}
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    return SqlAnalysis(frozenset(tables), frozenset(functions), frozenset(table_functions), frozenset(ctes))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
