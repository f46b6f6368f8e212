"""`Policy`: the configured decision for capability calls (pure, shared by many runs)."""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sandbox.errors import ConfigurationError
from sandbox.policy._approval import Approver
from sandbox.policy._context import ANONYMOUS, CallContext, Check, Decision, Effect, Principal
from sandbox.policy._files import policy_file, read_toml
from sandbox.policy._rates import MemoryRateStore, RateStore
from sandbox.policy._rules import STRICTNESS, Rule, cap_reason
from sandbox.policy._state import PolicyState


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
            raise ConfigurationError(f"default must be 'allow', 'deny' or 'ask', not {default!r}")
        if isinstance(escalate_after, bool) or not isinstance(escalate_after, int) or escalate_after < 0:
            raise ConfigurationError(f"escalate_after must be an int >= 0 (0 disables), got {escalate_after!r}")
        if not approval_timeout > 0:
            raise ConfigurationError(f"approval_timeout must be > 0 seconds, got {approval_timeout!r}")
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
        """Load a policy file (format in `sandbox.policy`'s docstring). ``approve`` and other keyword
        arguments are passed on (callbacks cannot live in TOML).

        A top-level ``cedar = "file.cedar"`` (relative to the TOML file) makes it a
        `sandbox.policy.cedar.CedarPolicy` (needs ``cedarpy``). Raises `ConfigurationError`
        naming the bad key.
        """
        path = Path(path)
        data = read_toml(path)
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
        spec = policy_file(data, source)
        options: dict[str, Any] = {
            "default": spec.default,
            "rules": spec.capabilities,
            "approve": approve,
            "approval_timeout": spec.approval_timeout,
            "escalate_after": spec.escalate_after,
            **kwargs,
        }
        if spec.cedar is not None:
            from sandbox.policy.cedar import CedarPolicy

            root = Path(base)
            schema = (root / spec.cedar_schema).read_text(encoding="utf-8") if spec.cedar_schema else None
            options.pop("default")
            return CedarPolicy((root / spec.cedar).read_text(encoding="utf-8"), schema=schema, **options)
        return cls(**options)

    # -- configuration checks --------------------------------------------------------------

    def validate_for(self, capabilities: Mapping[str, Any]) -> None:
        """Raise `ConfigurationError` when a rule constrains an argument its capability does not have.

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
                raise ConfigurationError(
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
            name, rule = max(decided, key=lambda item: STRICTNESS[item[1].decision])  # type: ignore[index]
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
                return Decision.deny(cap_reason(ctx, name, rule), f"{where}.max_calls")
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


def coerce_policy(policy: Policy | str | os.PathLike[str] | None) -> Policy | None:
    """A `Policy` from what `Sandbox(policy=...)` accepts: a `Policy`, a TOML path, or None.

    Raises `TypeError` for anything else and `ConfigurationError` for a missing or invalid file.
    """
    if policy is None or isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        path = Path(policy)
        if not path.is_file():
            raise ConfigurationError(f"policy file {str(path)!r} does not exist: pass a Policy or a TOML file path")
        return Policy.from_toml(path)
    raise TypeError(f"policy must be a sandbox.policy.Policy or a TOML file path, not {type(policy).__name__}")

