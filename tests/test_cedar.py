"""`sandbox.policy.cedar`: real Cedar policy text deciding capability calls (needs cedarpy)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("cedarpy")

from sandbox.errors import ConfigurationError  # noqa: E402
from sandbox.policy.cedar import CedarPolicy  # noqa: E402
from sandbox.policy import Policy, Principal, Rule  # noqa: E402

POLICIES = """
// Weather is public.
@id("weather-for-everyone")
permit(principal, action == Action::"get_weather", resource);

// Nobody deletes files, whatever other policy says.
@id("never-delete")
forbid(principal, action == Action::"fs.delete", resource);
@id("files-for-everyone")
permit(principal, action in [Action::"fs.read", Action::"fs.delete"], resource);

// Analysts may query two tables, at most 2 times per run, with small limits.
@id("analyst-sql")
permit(principal in Role::"analyst", action == Action::"sql.query", resource)
when { resource in [Resource::"orders", Resource::"customers"] }
when { context.calls < 2 && context.args.limit <= 100 };

// Mail only on behalf of alice, and a human approves it.
@id("mail-needs-approval")
permit(principal, action == Action::"send_email", resource)
when { principal has on_behalf_of && principal.on_behalf_of == "alice" };
"""

ALICE_ANALYST = Principal(id="agent:etl", on_behalf_of="alice", task="T-1", roles=("analyst",))


def test_one_capability_allowed_another_forbidden():
    policy = CedarPolicy(POLICIES)
    state = policy.start("r", ALICE_ANALYST)
    allowed = state.check("get_weather", {"city": "Paris"})
    assert allowed.allowed and allowed.rule == "cedar:weather-for-everyone"
    forbidden = state.check("fs.delete", {"path": "/tmp/x"})
    assert not forbidden.allowed
    assert forbidden.reason == "fs.delete() forbidden by Cedar policy never-delete"
    assert state.check("fs.read", {"path": "/tmp/x"}).allowed


def test_no_matching_permit_denies():
    verdict = CedarPolicy(POLICIES).start("r", ALICE_ANALYST).check("shell.exec", {"cmd": "ls"})
    assert not verdict.allowed and "not permitted by any Cedar policy" in verdict.reason


def test_principal_roles_resource_and_context():
    policy = CedarPolicy(POLICIES, resource_args={"sql.query": "table"}, escalate_after=0)
    state = policy.start("r", ALICE_ANALYST)
    assert state.check("sql.query", {"table": "orders", "limit": 10}).allowed
    assert not state.check("sql.query", {"table": "users", "limit": 10}).allowed
    assert not state.check("sql.query", {"table": "orders", "limit": 1000}).allowed
    assert state.check("sql.query", {"table": "customers", "limit": 1}).allowed
    third = state.check("sql.query", {"table": "orders", "limit": 1})  # context.calls == 2
    assert not third.allowed
    guest = Principal(id="agent:guest")
    assert not policy.start("r2", guest).check("sql.query", {"table": "orders", "limit": 1}).allowed


def test_ask_annotation_calls_the_approver():
    answers = []

    def approve(request):
        answers.append(request.capability)
        return request.arguments["to"].endswith("@example.com")

    policy = CedarPolicy(POLICIES, ask=["mail-needs-approval"], approve=approve, escalate_after=0)
    state = policy.start("r", ALICE_ANALYST)
    ok = state.check("send_email", {"to": "bob@example.com"})
    assert (ok.allowed, ok.decision, ok.approval) == (True, "ask", "approved")
    assert not state.check("send_email", {"to": "eve@evil.test"}).allowed
    mallory = policy.start("r2", Principal(id="agent:etl", on_behalf_of="mallory"))
    assert mallory.check("send_email", {"to": "bob@example.com"}).approval is None  # Cedar denied first
    assert answers == ["send_email", "send_email"]


def test_python_rules_narrow_cedar_and_escalation_applies():
    policy = CedarPolicy(POLICIES, rules={"get_weather": Rule(max_calls=1)}, escalate_after=2)
    state = policy.start("r", ALICE_ANALYST)
    assert state.check("get_weather", {"city": "Paris"}).allowed
    capped = state.check("get_weather", {"city": "Oslo"})
    assert not capped.allowed and "at most 1" in capped.reason
    assert state.check("fs.delete", {"path": "/x"}).terminate


def test_floats_and_nulls_in_arguments_do_not_break_evaluation():
    verdict = CedarPolicy(POLICIES).start("r", ALICE_ANALYST).check(
        "get_weather", {"city": "Paris", "ratio": 0.5, "when": None, "tags": [1.5, None]}
    )
    assert verdict.allowed


def test_schema_validation_and_parse_errors():
    with pytest.raises(ConfigurationError, match="do not parse"):
        CedarPolicy("permit(principal, action, resource")
    schema = """
    entity Role;
    entity Agent in [Role] { on_behalf_of?: String, task?: String };
    entity Resource;
    action "get_weather" appliesTo { principal: Agent, resource: Resource, context: {} };
    """
    CedarPolicy('permit(principal, action == Action::"get_weather", resource);', schema=schema)
    with pytest.raises(ConfigurationError, match="schema"):
        CedarPolicy('permit(principal, action == Action::"nope", resource);', schema=schema)


def test_from_toml_loads_cedar(tmp_path: Path):
    (tmp_path / "agents.cedar").write_text(POLICIES)
    (tmp_path / "policy.toml").write_text('cedar = "agents.cedar"\nescalate_after = 5\n')
    policy = Policy.from_toml(tmp_path / "policy.toml")
    assert isinstance(policy, CedarPolicy) and policy.escalate_after == 5
    state = policy.start("r", ALICE_ANALYST)
    assert state.check("get_weather", {"city": "Paris"}).allowed
    assert not state.check("fs.delete", {"path": "/x"}).allowed



def test_a_call_is_asked_under_its_action_too():
    policy = CedarPolicy("""
permit(principal, action in [Action::"http.request", Action::"http.get", Action::"http.post"], resource);
@id("no-get") forbid(principal, action == Action::"http.get", resource);
""")
    state = policy.start("r", ALICE_ANALYST)
    via_request = state.check("http.request", {"method": "GET", "url": "https://x/"}, "http.get")
    assert not via_request.allowed and "no-get" in via_request.reason
    assert state.check("http.request", {"method": "POST", "url": "https://x/"}, "http.post").allowed
