"""The rule language: `Rule` per capability (or glob), its `RateLimit` and argument `Constraint`s."""

from __future__ import annotations

import math
import os
import posixpath
import re
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sandbox.errors import ConfigurationError
from sandbox.policy._context import CallContext, Effect

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$", re.IGNORECASE)
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "minutes": 60.0, "h": 3600.0, "hour": 3600.0, "hours": 3600.0, "d": 86400.0, "day": 86400.0,
            "days": 86400.0}


class RateLimit(BaseModel):
    """At most ``calls`` admitted calls per ``seconds`` (sliding window), per principal."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    calls: int = Field(gt=0)
    seconds: float = Field(gt=0)

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"10/minute"``, ``"5/s"``, ``"100/hour"``, ``"3/10s"``; `ConfigurationError` for other text."""
        match = _RATE.match(text)
        if match is None or match.group(3).lower() not in _PERIODS:
            raise ConfigurationError(f"cannot parse rate {text!r}: use e.g. '10/minute', '5/s', '3/10s', '100/hour'")
        count, multiple, unit = match.groups()
        return cls(calls=int(count), seconds=float(multiple or 1) * _PERIODS[unit.lower()])

    def __str__(self) -> str:
        return f"{self.calls}/{self.seconds:g}s"


class Constraint(BaseModel):
    """Constraints on one argument; every field set must hold.

    - ``prefix``: the value, normalised as a POSIX path (``..`` resolved), lies under one of
      these prefixes;
    - ``one_of``: the value equals one of these;
    - ``pattern``: the string value fully matches this regular expression;
    - ``min`` / ``max``: numeric bounds, inclusive (NaN and infinities never satisfy them);
    - ``max_length``: longest string, list or dict;
    - ``tables``: a SQL text reads or writes only these tables (``schema.table`` or ``table``)
      and uses no table functions; ``read_only``: a SQL text is a single query (no writes). Both
      use `sandbox.sql_analysis.analyze`, the same analysis as the SQL capability: SQL it cannot
      parse or classify is refused, CTE names are resolved per scope. Without ``read_only`` a
      single INSERT, UPDATE, DELETE or MERGE is also accepted. ``dialect`` names the SQL dialect
      (sqlglot's names, e.g. ``"sqlite"``, ``"duckdb"``, ``"postgres"``); None (default) checks
      the text as SQLite *and* as DuckDB, and both must pass. Needs ``sqlglot``;
    - ``check``: a Python callable ``value -> bool`` (not loadable from TOML).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True)

    prefix: tuple[str, ...] | None = None
    one_of: tuple[Any, ...] | None = None
    pattern: str | None = None
    min: float | None = None
    max: float | None = None
    max_length: int | None = Field(default=None, ge=0)
    tables: tuple[str, ...] | None = None
    read_only: bool = False
    dialect: str | None = None
    check: Callable[[Any], bool] | None = None

    @model_validator(mode="after")
    def _sql_needs_sqlglot(self) -> Constraint:
        if self.tables is not None or self.read_only or self.dialect is not None:
            from sandbox.sql_analysis import require_sqlglot

            require_sqlglot("Constraint(tables=..., read_only=..., dialect=...)")
            if self.dialect is not None:
                from sqlglot.dialects.dialect import Dialect

                try:
                    Dialect.get_or_raise(self.dialect)
                except ValueError:
                    raise ConfigurationError(f"dialect {self.dialect!r} is not a SQL dialect sqlglot knows") from None
        return self

    @field_validator("prefix", "tables", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("prefix")
    @classmethod
    def _absolute(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None:
            for prefix in value:
                if not prefix:
                    raise ConfigurationError("an empty prefix allows everything: name a directory such as '/data/'")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ConfigurationError(f"pattern {value!r} is not a valid regular expression: {exc}") from None
        return value

    def violation(self, name: str, value: Any) -> str | None:
        """Why ``value`` breaks this constraint, or None when it holds."""
        if self.prefix is not None:
            text = os.fspath(value) if isinstance(value, os.PathLike) else value
            if not isinstance(text, str) or "\x00" in text:
                return f"argument {name!r} must be a path under {_either(self.prefix)}"
            normal = posixpath.normpath(text) if text else text
            if not any(_under(normal, prefix) for prefix in self.prefix):
                return f"argument {name!r} must be a path under {_either(self.prefix)}, got {_short(text)}"
        if self.one_of is not None and value not in self.one_of:
            return f"argument {name!r} must be one of {_either(self.one_of)}, got {_short(value)}"
        if self.pattern is not None and (not isinstance(value, str) or re.fullmatch(self.pattern, value) is None):
            return f"argument {name!r} must match {self.pattern!r}, got {_short(value)}"
        if self.min is not None or self.max is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"argument {name!r} must be a number"
            if isinstance(value, float) and not math.isfinite(value):
                return f"argument {name!r} must be a finite number, got {value!r}"
            if self.min is not None and value < self.min:
                return f"argument {name!r} must be >= {self.min:g}, got {value!r}"
            if self.max is not None and value > self.max:
                return f"argument {name!r} must be <= {self.max:g}, got {value!r}"
        if self.max_length is not None:
            try:
                size = len(value)
            except TypeError:
                return f"argument {name!r} has no length"
            if size > self.max_length:
                return f"argument {name!r} is longer than {self.max_length}"
        if self.tables is not None or self.read_only:
            problem = self._sql_violation(name, value)
            if problem is not None:
                return problem
        if self.check is not None:
            try:
                ok = bool(self.check(value))
            except Exception as exc:
                return f"argument {name!r} failed the check: {type(exc).__name__}"
            if not ok:
                return f"argument {name!r} failed the check {getattr(self.check, '__name__', 'check')}"
        return None

    def _sql_violation(self, name: str, value: Any) -> str | None:
        from sandbox.sql_analysis import SqlRefused, analyze

        if not isinstance(value, str):
            return f"argument {name!r} must be SQL text"
        for dialect in (self.dialect,) if self.dialect is not None else ("sqlite", "duckdb"):
            try:
                found = analyze(value, dialect, read_only=self.read_only)
            except SqlRefused as exc:
                return f"argument {name!r}: {exc}"
            if self.tables is not None:
                if found.table_functions:
                    return (f"argument {name!r} uses table function(s) {', '.join(sorted(found.table_functions))}; "
                            f"allowed tables: {', '.join(self.tables)}")
                allowed = {t.lower() for t in self.tables}
                bare = {t.rsplit(".", 1)[-1] for t in allowed}
                extra = sorted(t for t in found.tables if t not in allowed and t not in bare)
                if extra:
                    return f"argument {name!r} names table(s) {', '.join(extra)}; allowed: {', '.join(self.tables)}"
        return None


class Rule(BaseModel):
    """The rule for one capability (or a glob of them, e.g. ``"sql.*"``).

    ``decision`` is the base effect (default: the policy's ``default``); ``max_calls`` caps
    the calls this rule admits per run (all the capabilities it governs together); ``rate``
    limits the calls it admits per principal over time, across runs (``"10/minute"`` or a
    `RateLimit`); ``args`` maps argument names to `Constraint`s;
    ``reason`` is shown to the guest when ``decision`` is ``deny``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    decision: Effect | None = None
    max_calls: int | None = Field(default=None, ge=0)
    rate: RateLimit | None = None
    args: dict[str, Constraint] = Field(default_factory=dict)
    reason: str | None = None

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        return RateLimit.parse(value) if isinstance(value, str) else value


STRICTNESS = {"allow": 0, "ask": 1, "deny": 2}
"""How strict each effect is: the strictest among a call's rules decides."""


def cap_reason(ctx: CallContext, name: str, rule: Rule) -> str:
    """The denial text when ``rule`` (declared under ``name``) has admitted its ``max_calls``."""
    scope = "" if name == ctx.capability else f" (rule {name!r}, counted for every call it governs)"
    return f"{ctx.capability}() may be called at most {rule.max_calls} time(s) per run{scope}"


def _under(path: str, prefix: str) -> bool:
    if not path:
        return False
    base = posixpath.normpath(prefix)
    if path == base:
        return True
    return path.startswith(base if base.endswith("/") else base + "/")


def _either(values: Iterable[Any]) -> str:
    return ", ".join(repr(v) for v in values)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

