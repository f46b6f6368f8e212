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

Cedar policy text can decide the base effect instead: `sandbox.policy.cedar.CedarPolicy`
(needs ``cedarpy``; imported only when used).
"""

from sandbox.policy._approval import ApprovalAnswer, ApprovalRequest, Approver
from sandbox.policy._context import (
    ANONYMOUS,
    Approval,
    CallContext,
    Check,
    Decision,
    Denial,
    Effect,
    Principal,
    Verdict,
    coerce_principal,
)
from sandbox.policy._policy import Policy, coerce_policy
from sandbox.policy._rates import MemoryRateStore, RateStore
from sandbox.policy._rules import Constraint, RateLimit, Rule
from sandbox.policy._state import PolicyState

__all__ = [
    "ANONYMOUS",
    "Approval",
    "ApprovalAnswer",
    "ApprovalRequest",
    "Approver",
    "CallContext",
    "Check",
    "Constraint",
    "Decision",
    "Denial",
    "Effect",
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
