"""`PolicyState`: one run's counts, denials, approvals and escalation under a `Policy`."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sandbox.policy._approval import ApprovalRequest, call_approver
from sandbox.policy._context import Approval, CallContext, Decision, Denial, Effect, Principal, Verdict
from sandbox.policy._rules import cap_reason

if TYPE_CHECKING:
    from sandbox.policy._policy import Policy


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
                    return Decision.deny(cap_reason(ctx, name, rule), f"capabilities.{name}.max_calls")
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
            answer = call_approver(approve, request, timeout, self._loop)
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

