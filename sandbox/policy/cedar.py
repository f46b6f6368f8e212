"""Cedar policies deciding capability calls (optional: ``pip install sandbox[cedar]``, i.e. cedarpy).

Teams that already write Cedar can use their policy text unchanged. Each call becomes a
Cedar request:

- principal: ``Agent::"<Principal.id>"`` (type configurable), an entity whose attributes are
  ``on_behalf_of``, ``task`` and the principal's ``attributes``, and whose parents are
  ``Role::"<role>"`` for each of its ``roles`` (so ``principal in Role::"analyst"`` works);
- action: ``Action::"<capability name>"``, e.g. ``Action::"sql.query"``; a call whose
  capability declares an action (``http.request("GET", ...)`` performs ``http.get``) is asked
  under both names, and both must be allowed;
- resource: ``Resource::"<target>"``, the target taken from the arguments: the argument named
  in ``resource_args`` for that capability, else the first of ``path``, ``url``, ``table``,
  ``resource``, ``target``, ``key``, ``name`` present, else the first string argument, else
  the capability name;
- context: ``{"args": {...}, "calls": <admitted calls of this capability in the run>,
  "total_calls": n, "denials": n, "run_id": "...", "task": "...", "on_behalf_of": "..."}``
  (floats become decimal strings and nulls are dropped: Cedar has neither).

Example::

    permit(principal, action == Action::"get_weather", resource);
    forbid(principal, action == Action::"fs.delete", resource);
    permit(principal in Role::"analyst", action == Action::"sql.query", resource)
      when { context.calls < 10 };

Cedar's answer is the base effect; `sandbox.policy.Policy` features (rules with caps, rate
limits and argument constraints, Python checks, approvals, escalation) apply on top. Policies
whose ``@id`` is listed in ``ask`` turn an *allow* they determine into *ask* (an approver
decides). Errors in evaluation deny (fail closed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.errors import ConfigurationError
from sandbox.policy._context import CallContext, Decision
from sandbox.policy._policy import Policy

_TARGET_ARGS = ("path", "url", "table", "resource", "target", "key", "name")


def _cedarpy() -> Any:
    try:
        import cedarpy
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("Cedar policies need cedarpy: pip install 'sandbox[cedar]' (or cedarpy==4.12.2)") from None
    return cedarpy


class CedarPolicy(Policy):
    """A `Policy` whose base decision comes from Cedar policy text.

    Args:
        policies: Cedar policy text. Parsed at construction; a parse error raises
            `ConfigurationError`.
        schema: optional Cedar schema (text or JSON dict); when given the policies are validated
            against it at construction and requests are validated at call time.
        entities: extra Cedar entities (JSON list form), e.g. roles with their own parents.
        resource_args: capability name -> the argument whose value is the resource id.
        principal_type / resource_type: Cedar entity types (default ``Agent``, ``Resource``).
        ask: ``@id`` values of permit policies whose allow means "ask the approver".
        **options: `Policy` options (``rules``, ``checks``, ``approve``, ``approval_timeout``,
            ``escalate_after``).
    """

    def __init__(
        self,
        policies: str,
        *,
        schema: str | Mapping[str, Any] | None = None,
        entities: Iterable[Mapping[str, Any]] = (),
        resource_args: Mapping[str, str] | None = None,
        principal_type: str = "Agent",
        resource_type: str = "Resource",
        ask: Iterable[str] = (),
        **options: Any,
    ) -> None:
        options.setdefault("default", "deny")
        super().__init__(**options)
        cedarpy = _cedarpy()
        self._cedar = cedarpy
        try:
            self._policies = cedarpy.PolicySet.from_str(policies)
        except ValueError as exc:
            raise ConfigurationError(f"Cedar policies do not parse: {exc}") from None
        self._schema = None
        if schema is not None:
            self._schema = schema if isinstance(schema, str) else dict(schema)
            result = cedarpy.validate_policies(policies, self._schema)
            if not result.validation_passed:
                errors = "; ".join(str(e) for e in result.errors)
                raise ConfigurationError(f"Cedar policies do not validate against the schema: {errors}")
        self.text = policies
        self._entities = [dict(e) for e in entities]
        self.resource_args = dict(resource_args or {})
        self.principal_type = principal_type
        self.resource_type = resource_type
        self.ask_ids = frozenset(ask)

    def target(self, ctx: CallContext) -> str:
        """The resource id for a call (see the module docstring)."""
        args = ctx.arguments
        chosen = self.resource_args.get(ctx.capability)
        if chosen is not None and chosen in args:
            return _text(args[chosen])
        for name in _TARGET_ARGS:
            if name in args and args[name] is not None:
                return _text(args[name])
        for value in args.values():
            if isinstance(value, str):
                return value
        return ctx.capability

    def request(self, ctx: CallContext, action: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The Cedar request and entities for one call, asked as ``action`` (default: the capability)."""
        p = ctx.principal
        principal = {"type": self.principal_type, "id": p.id}
        attrs: dict[str, Any] = {k: v for k, v in p.attributes.items()}
        if p.on_behalf_of is not None:
            attrs["on_behalf_of"] = p.on_behalf_of
        if p.task is not None:
            attrs["task"] = p.task
        entities: list[dict[str, Any]] = [
            {"uid": principal, "attrs": attrs, "parents": [{"type": "Role", "id": r} for r in p.roles]},
            *({"uid": {"type": "Role", "id": r}, "attrs": {}, "parents": []} for r in p.roles),
            *self._entities,
        ]
        context: dict[str, Any] = {
            "args": _cedar_value(dict(ctx.arguments)),
            "calls": ctx.calls.get(ctx.capability, 0),
            "total_calls": ctx.total_calls,
            "denials": len(ctx.denials),
            "run_id": ctx.run_id,
        }
        if p.task is not None:
            context["task"] = p.task
        if p.on_behalf_of is not None:
            context["on_behalf_of"] = p.on_behalf_of
        request = {
            "principal": principal,
            "action": {"type": "Action", "id": action or ctx.capability},
            "resource": {"type": self.resource_type, "id": self.target(ctx)},
            "context": context,
        }
        return request, _dedupe(entities)

    def base(self, ctx: CallContext) -> Decision:
        """Cedar's answer for each of the call's names, the strictest wins: Allow -> allow (or
        ask), Deny -> deny naming the determining policies."""
        answers = [self._answer(ctx, name) for name in ctx.names]
        return max(answers, key=lambda d: ("allow", "ask", "deny").index(d.effect))

    def _answer(self, ctx: CallContext, action: str) -> Decision:
        request, entities = self.request(ctx, action)
        try:
            result = self._cedar.is_authorized(request, self._policies, entities, schema=self._schema)
        except Exception as exc:
            return Decision.deny(f"{ctx.capability}(): Cedar evaluation failed ({type(exc).__name__})", "cedar")
        diagnostics = result.diagnostics
        names = diagnostics.id_annotations_by_reason
        reasons = [names.get(r, r) for r in diagnostics.reasons]
        rule = "cedar:" + ",".join(reasons) if reasons else "cedar"
        if result.allowed:
            if any(rule.decision in ("deny", "ask") for _name, rule in self.rules_for(ctx)):
                return super().base(ctx)  # a Python rule may only narrow what Cedar allows
            if any(r in self.ask_ids for r in reasons):
                return Decision.ask(f"{ctx.capability}() needs approval (Cedar policy {', '.join(reasons)})", rule)
            return Decision.allow(rule=rule)
        if diagnostics.errors:
            return Decision.deny(f"{ctx.capability}() denied: the Cedar policy could not be evaluated", "cedar:error")
        if reasons:
            return Decision.deny(f"{ctx.capability}() forbidden by Cedar policy {', '.join(reasons)}", rule)
        return Decision.deny(f"{ctx.capability}() is not permitted by any Cedar policy", "cedar")

    def describe(self) -> str:
        return super().describe().replace("CedarPolicy(", f"CedarPolicy(cedar={len(self.text)} chars ", 1)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _cedar_value(value: Any) -> Any:
    """JSON data as Cedar accepts it: no nulls, no floats (they become strings)."""
    if isinstance(value, bool) or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _cedar_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_cedar_value(v) for v in value if v is not None]
    if value is None:
        return ""
    return str(value)


def _dedupe(entities: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    out = []
    for entity in entities:
        uid = entity.get("uid", {})
        key = (str(uid.get("type")), str(uid.get("id")))
        if key not in seen:
            seen.add(key)
            out.append(entity)
    return out


__all__ = ["CedarPolicy"]
