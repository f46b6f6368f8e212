"""Policy: every capability call is decided at call time, with its context.

A `Policy` is configured once per `Sandbox`. Each run gets a `PolicyState` (``policy.start``)
that keeps that run's counts and denials; the host bridge asks it about every call after the
arguments were validated and before the capability runs::

    verdict = state.check("fs.read", {"path": "/data/a.csv"})
    if not verdict.allowed:
        raise CapabilityFault("PolicyDenied", verdict.reason,
                              terminate="policy_denied" if verdict.terminate else None)

`Policy.decide(ctx) -> Decision` is pure (allow / deny / ask, no side effects); `PolicyState`
adds what needs state: approvals for ``ask`` (sync or async callback, with a timeout that
counts as a denial), call caps and rate limits, and the escalation rule (after
``escalate_after`` denials in one run the run ends with ``policy_denied``).

Rules are Python objects (`Rule`, `Constraint`, plain callables in ``checks``) or a TOML file
(`Policy.from_toml`)::

    default = "allow"            # allow | deny | ask, for capabilities without a rule
    escalate_after = 3           # denials in one run that end the run; 0 disables
    approval_timeout = 30        # seconds; no answer in time counts as a denial

    [capabilities."fs.read"]
    max_calls = 20               # per run, per rule
    rate = "10/minute"           # per principal and rule, across runs
    args.path = { prefix = "/data/" }

    [capabilities."sql.query"]
    args.sql = { tables = ["orders", "customers"], read_only = true }

    [capabilities.send_email]
    decision = "ask"

Rules combine as deny > ask > allow: any rule that denies wins.

A call is judged as an *action*: its capability name, plus the name of the action it performs
when the capability declares one (``http.request("GET", url)`` performs ``http.get``). The
rule of each name governs it (exact name first, then the first matching glob), so a rule on
``http.get`` also holds for ``http.request("GET", ...)``. Caps (``max_calls``) and rates count
per rule: ``"http.*": Rule(max_calls=1)`` admits one call of any ``http`` capability, and a
call governed by one rule under two names counts once. Rate windows live in a `RateStore`
(in memory by default; pass ``rate_store=`` to share them between processes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import inspect
import json
import math
import os
import posixpath
import re
import threading
import time
import tomllib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, Union, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Effect = Literal["allow", "deny", "ask"]


class Principal(BaseModel):
    """The workload identity of a run: who asked, on behalf of whom, for which task.

    ``id`` names the agent or service that submitted the code (e.g. ``"agent:etl-bot"``);
    ``on_behalf_of`` the human or tenant it acts for; ``task`` the task or ticket; ``roles``
    and ``attributes`` are free-form and available to rules (and to Cedar as the principal
    entity's parents and attributes).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    id: str = Field(min_length=1)
    on_behalf_of: str | None = None
    task: str | None = None
    roles: tuple[str, ...] = ()
    attributes: dict[str, str] = Field(default_factory=dict)

    def describe(self) -> str:
        """One line for humans: ``agent:etl-bot for alice (task T-12)``."""
        text = self.id
        if self.on_behalf_of:
            text += f" for {self.on_behalf_of}"
        if self.task:
            text += f" (task {self.task})"
        return text


ANONYMOUS = Principal(id="anonymous")


@dataclass(frozen=True)
class Denial:
    """An earlier denial in the same run."""

    capability: str
    reason: str


@dataclass(frozen=True)
class CallContext:
    """Everything a policy sees about one call.

    ``calls`` counts the calls *admitted* so far in this run per capability (this one not
    included); ``denials`` lists this run's earlier denials, oldest first; ``action`` is the
    action the call performs (the capability's name unless it declares another, e.g.
    ``http.get`` for ``http.request("GET", ...)``); ``rule_calls`` counts admitted calls per
    rule key (the name or glob the rule is declared under).
    """

    run_id: str
    principal: Principal
    capability: str
    arguments: Mapping[str, Any]
    calls: Mapping[str, int]
    total_calls: int
    denials: tuple[Denial, ...]
    action: str = ""
    rule_calls: Mapping[str, int] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        """The names rules are matched against: the capability, then its action when different."""
        if self.action and self.action != self.capability:
            return (self.capability, self.action)
        return (self.capability,)


@dataclass(frozen=True)
class Decision:
    """What a policy says about a call: ``allow``, ``deny`` (``reason`` is shown to the guest)
    or ``ask`` (an approval callback decides). ``rule`` names the rule that decided."""

    effect: Effect
    reason: str = ""
    rule: str | None = None

    @classmethod
    def allow(cls, reason: str = "", rule: str | None = None) -> Decision:
        return cls("allow", reason, rule)

    @classmethod
    def deny(cls, reason: str, rule: str | None = None) -> Decision:
        return cls("deny", reason, rule)

    @classmethod
    def ask(cls, reason: str = "", rule: str | None = None) -> Decision:
        return cls("ask", reason, rule)


Approval = Literal["approved", "denied", "timeout", "unavailable", "error"]


@dataclass(frozen=True)
class Verdict:
    """The final answer for one call, after approvals, caps and escalation.

    ``decision`` is what the policy said (``ask`` included); ``approval`` what the approver
    answered when asked; ``terminate`` is True when this denial reached the escalation
    threshold and the run must end with ``policy_denied``.
    """

    allowed: bool
    decision: Effect
    reason: str
    rule: str | None = None
    approval: Approval | None = None
    terminate: bool = False


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approval callback is asked: one call, with its context and why it is asked."""

    context: CallContext
    reason: str
    rule: str | None

    @property
    def principal(self) -> Principal:
        return self.context.principal

    @property
    def capability(self) -> str:
        return self.context.capability

    @property
    def arguments(self) -> Mapping[str, Any]:
        return self.context.arguments


ApprovalAnswer = Union[bool, Decision, None]
Approver = Callable[[ApprovalRequest], Union[ApprovalAnswer, Awaitable[ApprovalAnswer]]]
"""An approval callback: returns True/False (or a `Decision`), or an awaitable of one."""

Check = Callable[[CallContext], Union[Decision, None]]
"""A Python rule: returns a `Decision`, or None for no opinion."""


# ----------------------------------------------------------------------------------------
# rules


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
        """``"10/minute"``, ``"5/s"``, ``"100/hour"``, ``"3/10s"``."""
        match = _RATE.match(text)
        if match is None or match.group(3).lower() not in _PERIODS:
            raise ValueError(f"cannot parse rate {text!r}: use e.g. '10/minute', '5/s', '3/10s', '100/hour'")
        count, multiple, unit = match.groups()
        return cls(calls=int(count), seconds=float(multiple or 1) * _PERIODS[unit.lower()])

    def __str__(self) -> str:
        return f"{self.calls}/{self.seconds:g}s"


@runtime_checkable
class RateStore(Protocol):
    """Where rate windows live: one sliding window per key (a principal and a rule).

    `admit` must be atomic per key: with many runs (or processes) admitting under one key at
    once, at most ``limit`` calls are admitted per ``window`` seconds.
    """

    def admit(self, key: str, limit: int, window: float) -> bool:
        """Count one call under ``key`` and return True when fewer than ``limit`` calls were
        admitted in the last ``window`` seconds; else return False and count nothing."""
        ...


class MemoryRateStore:
    """The default `RateStore`: sliding windows in this process's memory; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, limit: int, window: float) -> bool:
        with self._lock:
            now = self._clock()
            stamps = self._windows.setdefault(key, deque())
            while stamps and now - stamps[0] >= window:
                stamps.popleft()
            if len(stamps) >= limit:
                return False
            stamps.append(now)
            return True


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
                    raise ValueError(f"dialect {self.dialect!r} is not a SQL dialect sqlglot knows") from None
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
                    raise ValueError("an empty prefix allows everything: name a directory such as '/data/'")
        return value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from None
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


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    default: Effect = "allow"
    escalate_after: int = Field(default=3, ge=0)
    approval_timeout: float = Field(default=30.0, gt=0)
    cedar: str | None = None
    cedar_schema: str | None = None
    capabilities: dict[str, Rule] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_policy_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("policy"), dict):
            data = {**data["policy"], **{k: v for k, v in data.items() if k != "policy"}}
        return data


# ----------------------------------------------------------------------------------------
# the policy


class Policy:
    """Decides capability calls.

    Args:
        default: effect for capabilities no rule names: ``"allow"`` (default), ``"deny"`` or ``"ask"``.
        rules: `Rule` per capability name or glob (``"sql.*"``, ``"*"``); exact names win over globs.
        checks: Python rules, ``ctx -> Decision | None``, run after the capability's rule.
        approve: approval callback for ``ask`` decisions, sync or async; returns True/False or a
            `Decision`. Without one, ``ask`` is a denial.
        approval_timeout: seconds to wait for ``approve``; no answer in time is a denial.
        escalate_after: denials in one run after which the run ends with ``policy_denied``;
            0 disables escalation.
        clock: monotonic clock for the default in-memory rate store (tests inject one).
        rate_store: where rate windows live (a `RateStore`); default a `MemoryRateStore` of
            this policy. Share one between policies or processes to rate-limit across them.

    Subclass and override `decide` for a policy written entirely in Python. One `Policy`
    serves many runs and threads.
    """

    def __init__(
        self,
        *,
        default: Effect = "allow",
        rules: Mapping[str, Rule | Mapping[str, Any]] | None = None,
        checks: Iterable[Check] = (),
        approve: Approver | None = None,
        approval_timeout: float = 30.0,
        escalate_after: int = 3,
        clock: Callable[[], float] = time.monotonic,
        rate_store: RateStore | None = None,
    ) -> None:
        if default not in ("allow", "deny", "ask"):
            raise ValueError(f"default must be 'allow', 'deny' or 'ask', not {default!r}")
        if isinstance(escalate_after, bool) or not isinstance(escalate_after, int) or escalate_after < 0:
            raise ValueError(f"escalate_after must be an int >= 0 (0 disables), got {escalate_after!r}")
        if not approval_timeout > 0:
            raise ValueError(f"approval_timeout must be > 0 seconds, got {approval_timeout!r}")
        if approve is not None and not callable(approve):
            raise TypeError("approve must be a callable taking an ApprovalRequest")
        self.default: Effect = default
        self.rules: dict[str, Rule] = {}
        for name, rule in (rules or {}).items():
            self.rules[name] = rule if isinstance(rule, Rule) else Rule.model_validate(rule)
        self._globs = [(name, rule) for name, rule in self.rules.items() if any(c in name for c in "*?[")]
        self.checks = tuple(checks)
        for check in self.checks:
            if not callable(check):
                raise TypeError(f"checks must be callables ctx -> Decision | None, got {check!r}")
        self.approve = approve
        self.approval_timeout = float(approval_timeout)
        self.escalate_after = escalate_after
        if rate_store is not None and not isinstance(rate_store, RateStore):
            raise TypeError("rate_store must have admit(key, limit, window) -> bool (see sandbox.policy.RateStore)")
        self.rate_store: RateStore = rate_store if rate_store is not None else MemoryRateStore(clock)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], *, approve: Approver | None = None, **kwargs: Any) -> Policy:
        """Load a policy file (format in the module docstring). ``approve`` and other keyword
        arguments are passed on (callbacks cannot live in TOML).

        A top-level ``cedar = "file.cedar"`` (relative to the TOML file) makes it a
        `sandbox.cedar.CedarPolicy` (needs ``cedarpy``). Raises `ValueError` naming the bad key.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_mapping(data, base=path.parent, source=str(path), approve=approve, **kwargs)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        base: str | os.PathLike[str] = ".",
        source: str = "policy",
        approve: Approver | None = None,
        **kwargs: Any,
    ) -> Policy:
        """Build a policy from the parsed TOML structure (see `from_toml`)."""
        try:
            spec = _PolicyFile.model_validate(dict(data))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in exc.errors()[:5]
            )
            raise ValueError(f"{source}: {problems}") from None
        options: dict[str, Any] = {
            "default": spec.default,
            "rules": spec.capabilities,
            "approve": approve,
            "approval_timeout": spec.approval_timeout,
            "escalate_after": spec.escalate_after,
            **kwargs,
        }
        if spec.cedar is not None:
            from sandbox.cedar import CedarPolicy

            root = Path(base)
            schema = (root / spec.cedar_schema).read_text(encoding="utf-8") if spec.cedar_schema else None
            options.pop("default")
            return CedarPolicy((root / spec.cedar).read_text(encoding="utf-8"), schema=schema, **options)
        return cls(**options)

    # -- configuration checks --------------------------------------------------------------

    def validate_for(self, capabilities: Mapping[str, Any]) -> None:
        """Raise `ValueError` when a rule constrains an argument its capability does not have.

        ``capabilities`` maps names to `sandbox.Capability` objects (anything with a
        ``signature``). Rules for capabilities not granted are allowed (a policy can be shared).
        """
        for name, rule in self.rules.items():
            cap = capabilities.get(name)
            signature = getattr(cap, "signature", None)
            if signature is None:
                continue
            unknown = sorted(set(rule.args) - set(signature.parameters))
            if unknown:
                raise ValueError(
                    f"policy rule for {name!r} constrains argument(s) {unknown} that {name}"
                    f"{signature} does not have"
                )

    # -- deciding --------------------------------------------------------------------------

    def start(self, run_id: str, principal: Principal | None = None) -> PolicyState:
        """The state of one run: counts, denials and escalation."""
        return PolicyState(self, run_id, principal or ANONYMOUS)

    def rule_for(self, capability: str) -> tuple[str, Rule] | None:
        """The rule that governs ``capability``: exact name first, then the first matching glob."""
        rule = self.rules.get(capability)
        if rule is not None:
            return capability, rule
        for pattern, rule in self._globs:
            if fnmatch.fnmatchcase(capability, pattern):
                return pattern, rule
        return None

    def rules_for(self, ctx: CallContext) -> list[tuple[str, Rule]]:
        """The rules that govern a call: the rule of each of ``ctx.names``, each rule once."""
        found: dict[str, Rule] = {}
        for name in ctx.names:
            match = self.rule_for(name)
            if match is not None:
                found.setdefault(*match)
        return list(found.items())

    def base(self, ctx: CallContext) -> Decision:
        """The base effect for a call before caps, constraints and checks (Cedar overrides this):
        the strictest ``decision`` among its rules (deny > ask > allow), else the default."""
        rules = self.rules_for(ctx)
        decided = [(name, rule) for name, rule in rules if rule.decision is not None]
        if decided:
            name, rule = max(decided, key=lambda item: _STRICTNESS[item[1].decision])  # type: ignore[index]
            label = f"{ctx.capability}()" if ctx.names == (ctx.capability,) else f"{ctx.capability}() ({ctx.action})"
            reason = rule.reason or (
                f"{label} is not allowed by policy" if rule.decision == "deny"
                else f"{label} needs approval" if rule.decision == "ask" else ""
            )
            return Decision(rule.decision, reason, f"capabilities.{name}")  # type: ignore[arg-type]
        where = f"capabilities.{rules[0][0]}" if rules else "default"
        if self.default == "deny":
            return Decision.deny(f"{ctx.capability}() is not allowed by policy (default deny)", where)
        if self.default == "ask":
            return Decision.ask(f"{ctx.capability}() needs approval (default ask)", where)
        return Decision.allow(rule=where)

    def decide(self, ctx: CallContext) -> Decision:
        """Decide one call, without side effects: deny > ask > allow. Rates are not consulted
        here (they are consumed when the call is admitted, see `PolicyState.check`)."""
        decision = self.base(ctx)
        if decision.effect == "deny":
            return decision
        for name, rule in self.rules_for(ctx):
            where = f"capabilities.{name}"
            if rule.max_calls is not None and ctx.rule_calls.get(name, 0) >= rule.max_calls:
                return Decision.deny(_cap_reason(ctx, name, rule), f"{where}.max_calls")
            for arg, constraint in rule.args.items():
                if arg not in ctx.arguments:
                    return Decision.deny(f"{ctx.capability}(): policy constrains missing argument {arg!r}",
                                         f"{where}.args.{arg}")
                problem = constraint.violation(arg, ctx.arguments[arg])
                if problem is not None:
                    return Decision.deny(f"{ctx.capability}(): {problem}", f"{where}.args.{arg}")
        for check in self.checks:
            answer = check(ctx)
            if answer is None:
                continue
            if not isinstance(answer, Decision):
                raise TypeError(f"policy check {check!r} returned {type(answer).__name__}, not Decision or None")
            if answer.effect == "deny":
                return answer
            if answer.effect == "ask" and decision.effect == "allow":
                decision = answer
        return decision

    def describe(self) -> str:
        """A short text of this policy for run records and summaries."""
        parts = [f"default={self.default}", f"escalate_after={self.escalate_after}"]
        if self.rules:
            parts.append("rules=" + ",".join(sorted(self.rules)))
        if self.checks:
            parts.append(f"checks={len(self.checks)}")
        return f"{type(self).__name__}(" + " ".join(parts) + ")"


class PolicyState:
    """One run's view of a `Policy`: admitted-call counts, denials, approvals, escalation.

    Made by `Policy.start`. `check` is thread-safe; approvals run outside the lock.
    """

    def __init__(self, policy: Policy, run_id: str, principal: Principal) -> None:
        self.policy = policy
        self.run_id = run_id
        self.principal = principal
        self.calls: dict[str, int] = {}
        self.rule_calls: dict[str, int] = {}  # admitted calls per rule key
        self.total_calls = 0
        self.denials: list[Denial] = []
        self.escalated = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """Run async approval callbacks on ``loop`` (the host's loop under `Sandbox.arun`)."""
        self._loop = loop

    def context(self, capability: str, arguments: Mapping[str, Any], action: str | None = None) -> CallContext:
        with self._lock:
            return CallContext(
                run_id=self.run_id,
                principal=self.principal,
                capability=capability,
                arguments=arguments,
                calls=dict(self.calls),
                total_calls=self.total_calls,
                denials=tuple(self.denials),
                action=action or capability,
                rule_calls=dict(self.rule_calls),
            )

    def check(self, capability: str, arguments: Mapping[str, Any], action: str | None = None) -> Verdict:
        """Decide one call with validated ``arguments``; ask the approver when needed.

        ``action`` is what the call does when the capability declares it (see
        `sandbox.capabilities.Capability.action_for`); rules for it and for ``capability`` both
        hold. Never raises for a policy's own failure: a check, approver or rate store that
        raises is a denial (fail closed). An allowed call is admitted atomically against every
        governing rule's cap and rate and counted once per rule; a denied one is remembered,
        and the ``escalate_after``-th denial returns a verdict with ``terminate=True``.
        """
        if self.escalated:
            return self._deny("deny", "this run was ended by the escalation rule", "escalate_after", None)
        ctx = self.context(capability, arguments, action)
        try:
            decision = self.policy.decide(ctx)
        except Exception as exc:
            return self._deny("deny", f"policy check failed ({type(exc).__name__}); call refused", "error", None,
                              capability)
        approval: Approval | None = None
        if decision.effect == "ask":
            approval, decision = self._ask(ctx, decision)
            if decision.effect != "allow":
                return self._deny("ask", decision.reason, decision.rule, approval, capability)
        elif decision.effect == "deny":
            return self._deny("deny", decision.reason or f"{capability}() denied by policy", decision.rule, None,
                              capability)
        try:
            late = self._admit(ctx)
        except Exception as exc:
            return self._deny("deny", f"policy rate store failed ({type(exc).__name__}); call refused", "error",
                              approval, capability)
        if late is not None:
            return self._deny("deny", late.reason, late.rule, approval, capability)
        effect: Effect = "ask" if approval is not None else "allow"
        return Verdict(True, effect, decision.reason, decision.rule, approval)

    def _admit(self, ctx: CallContext) -> Decision | None:
        """Admit an allowed call: every governing rule's cap and rate must have room; then the
        call is counted once per rule (a denial if a cap or window filled meanwhile)."""
        rules = self.policy.rules_for(ctx)
        with self._lock:
            for name, rule in rules:
                if rule.max_calls is not None and self.rule_calls.get(name, 0) >= rule.max_calls:
                    return Decision.deny(_cap_reason(ctx, name, rule), f"capabilities.{name}.max_calls")
            for name, rule in rules:
                if rule.rate is not None:
                    key = json.dumps([self.principal.id, name])
                    if not self.policy.rate_store.admit(key, rule.rate.calls, rule.rate.seconds):
                        return Decision.deny(
                            f"{ctx.capability}() rate limit reached ({rule.rate.calls} per {rule.rate.seconds:g} s"
                            f" for rule {name!r})", f"capabilities.{name}.rate",
                        )
            for name, _rule in rules:
                self.rule_calls[name] = self.rule_calls.get(name, 0) + 1
            self.calls[ctx.capability] = self.calls.get(ctx.capability, 0) + 1
            self.total_calls += 1
        return None

    def note_denial(self, capability: str, reason: str) -> bool:
        """Count a denial made elsewhere (e.g. a secret's scope); True when the run must end."""
        return self._record_denial(capability, reason)

    def _deny(self, effect: Effect, reason: str, rule: str | None, approval: Approval | None,
              capability: str | None = None) -> Verdict:
        terminate = True if capability is None else self._record_denial(capability, reason)
        if terminate and capability is not None:
            reason = f"{reason}; {len(self.denials)} denials in this run: the run ends (escalate_after)"
        return Verdict(False, effect, reason, rule, approval, terminate)

    def _record_denial(self, capability: str, reason: str) -> bool:
        with self._lock:
            self.denials.append(Denial(capability, reason))
            limit = self.policy.escalate_after
            if limit and len(self.denials) >= limit:
                self.escalated = True
            return self.escalated

    def _ask(self, ctx: CallContext, decision: Decision) -> tuple[Approval, Decision]:
        approve = self.policy.approve
        if approve is None:
            return "unavailable", Decision.deny(
                f"{ctx.capability}() needs approval and no approver is configured", decision.rule
            )
        request = ApprovalRequest(ctx, decision.reason, decision.rule)
        timeout = self.policy.approval_timeout
        try:
            answer = _call_approver(approve, request, timeout, self._loop)
        except TimeoutError:
            return "timeout", Decision.deny(
                f"{ctx.capability}() needed approval; none came within {timeout:g} s", decision.rule
            )
        except Exception as exc:
            return "error", Decision.deny(
                f"{ctx.capability}() needed approval; the approver failed ({type(exc).__name__})", decision.rule
            )
        if isinstance(answer, Decision):
            if answer.effect == "allow":
                return "approved", Decision.allow(answer.reason or "approved", answer.rule or decision.rule)
            return "denied", Decision.deny(answer.reason or f"{ctx.capability}() was not approved",
                                           answer.rule or decision.rule)
        if answer is True:
            return "approved", Decision.allow("approved", decision.rule)
        return "denied", Decision.deny(f"{ctx.capability}() was not approved", decision.rule)


def coerce_policy(policy: Policy | str | os.PathLike[str] | None) -> Policy | None:
    """A `Policy` from what `Sandbox(policy=...)` accepts: a `Policy`, a TOML path, or None.

    Raises `TypeError` for anything else and `ValueError` for a missing or invalid file.
    """
    if policy is None or isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        path = Path(policy)
        if not path.is_file():
            raise ValueError(f"policy file {str(path)!r} does not exist: pass a Policy or a TOML file path")
        return Policy.from_toml(path)
    raise TypeError(f"policy must be a sandbox.policy.Policy or a TOML file path, not {type(policy).__name__}")


def coerce_principal(principal: Principal | Mapping[str, Any] | str | None) -> Principal | None:
    """A `Principal` from what `Sandbox(principal=...)` accepts: a `Principal`, a dict of its
    fields, an id string, or None. Raises `TypeError`/`ValueError` otherwise."""
    if principal is None or isinstance(principal, Principal):
        return principal
    if isinstance(principal, str):
        return Principal(id=principal)
    if isinstance(principal, Mapping):
        return Principal.model_validate(dict(principal))
    raise TypeError(f"principal must be a sandbox.policy.Principal, a dict or an id string, not {type(principal).__name__}")


def _call_approver(
    approve: Approver, request: ApprovalRequest, timeout: float, loop: asyncio.AbstractEventLoop | None
) -> ApprovalAnswer:
    """Call a sync or async approver with a deadline; raise `TimeoutError` when it passes.

    A sync approver runs on a daemon thread so a hung callback cannot hold the run past the
    timeout. An async one runs on ``loop`` when given (and running in another thread), else on
    a fresh loop in a daemon thread.
    """
    if inspect.iscoroutinefunction(approve) or inspect.iscoroutinefunction(getattr(approve, "__call__", None)):
        if loop is not None and loop.is_running() and not _on_loop(loop):
            future = asyncio.run_coroutine_threadsafe(approve(request), loop)  # type: ignore[arg-type]
            try:
                return future.result(timeout)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise TimeoutError from None
        return _on_thread(lambda: asyncio.run(_bounded(approve(request), timeout)), timeout)  # type: ignore[arg-type]

    def sync() -> ApprovalAnswer:
        answer = approve(request)
        if inspect.isawaitable(answer):
            return asyncio.run(_bounded(answer, timeout))
        return answer  # type: ignore[return-value]

    return _on_thread(sync, timeout)


async def _bounded(awaitable: Awaitable[ApprovalAnswer], timeout: float) -> ApprovalAnswer:
    return await asyncio.wait_for(awaitable, timeout)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _on_thread(func: Callable[[], ApprovalAnswer], timeout: float) -> ApprovalAnswer:
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # reported to the caller below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="sandbox-approval", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError
    if "error" in box:
        error = box["error"]
        if isinstance(error, asyncio.TimeoutError):
            raise TimeoutError
        raise error
    return box.get("value")


_STRICTNESS = {"allow": 0, "ask": 1, "deny": 2}


def _cap_reason(ctx: CallContext, name: str, rule: Rule) -> str:
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


__all__ = [
    "ANONYMOUS",
    "ApprovalRequest",
    "Approver",
    "CallContext",
    "Check",
    "Constraint",
    "Decision",
    "Denial",
    "MemoryRateStore",
    "Policy",
    "PolicyState",
    "Principal",
    "RateLimit",
    "RateStore",
    "Rule",
    "Verdict",
    "coerce_policy",
    "coerce_principal",
]
