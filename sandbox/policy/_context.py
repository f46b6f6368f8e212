"""Who a run is for and what a policy sees and says about one call: `Principal`, `CallContext`,
`Decision`, `Verdict` (immutable values)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

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


Check = Callable[[CallContext], Union[Decision, None]]
"""A Python rule: returns a `Decision`, or None for no opinion."""


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

