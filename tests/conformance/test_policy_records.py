"""Policy at call time and run records, pinned on every runtime (`tests.conftest.RUNTIMES`).

Approval denials are catchable guest errors, escalation ends the run with `policy_denied`,
rate limits and caps hold, and every runtime emits records of the same shape that verify.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sandbox import capability
from sandbox.audit import JsonlSink, MemorySink, RunRecord, generate_signing_key, verify
from sandbox.policy import Constraint, Decision, Policy, Principal, Rule
from sandbox.secrets import Secret, SecretValue


@capability
def read_file(path: str) -> str:
    """Read a file under /data."""
    return f"contents of {path}"


@capability
def send(to: str, body: str = "") -> str:
    """Send a message."""
    return f"sent to {to}"


@capability(name="sql.query")
def sql_query(sql: str) -> list:
    """Run a read-only query."""
    return [[1]]


CAPS = [read_file, send, sql_query]
AGENT = Principal(id="agent:etl", on_behalf_of="alice", task="T-7")


def test_approval_callback_that_denies_is_a_catchable_error(make_sandbox):
    asked = []

    def approve(request):
        asked.append((request.principal.id, request.capability, dict(request.arguments)))
        return False

    policy = Policy(rules={"send": Rule(decision="ask")}, approve=approve)
    sb = make_sandbox(capabilities=CAPS, policy=policy, principal=AGENT)
    code = (
        "try:\n    send('bob', body='hi')\n    r = 'sent'\n"
        "except PolicyDenied as e:\n    r = ('denied', str(e), isinstance(e, PermissionError))\nr"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert result.value[0] == "denied" and "not approved" in result.value[1] and result.value[2] is True
    assert asked == [("agent:etl", "send", {"to": "bob", "body": "hi"})]
    uncaught = sb.run("send('bob')")
    assert (uncaught.error.kind, uncaught.error.type) == ("policy_denied", "PolicyDenied")


def test_async_approver_that_approves(make_sandbox):
    async def approve(request):
        return Decision.allow("ok by on-call")

    sb = make_sandbox(capabilities=CAPS, policy=Policy(default="ask", approve=approve))
    result = sb.run("send('team')")
    assert result.ok, result.error
    assert result.value == "sent to team"


def test_escalation_ends_the_run_after_n_denials(make_sandbox):
    sink = MemorySink()
    policy = Policy(rules={"read_file": Rule(args={"path": Constraint(prefix="/data/")})}, escalate_after=3)
    sb = make_sandbox(capabilities=CAPS, policy=policy, records=sink)
    code = (
        "seen = []\n"
        "for p in ['/data/a', '/etc/passwd', '/root/.ssh/id_rsa', '/data/../etc/shadow', '/proc/self/environ']:\n"
        "    try:\n        seen.append(read_file(p))\n"
        "    except BaseException as e:\n        seen.append('denied')\n"
        "seen"
    )
    result = sb.run(code)
    assert not result.ok
    assert (result.error.kind, result.error.type) == ("policy_denied", "PolicyDenied")
    assert "3 denials" in result.error.message
    record = sink.records[-1]
    assert [c.status for c in record.calls] == ["ok", "denied", "denied", "denied"]
    assert record.outcome.kind == "policy_denied"
    # the next run starts with a clean slate
    assert sb.run("read_file('/data/b')").ok


def test_rate_limit_and_call_cap(make_sandbox):
    policy = Policy(rules={"send": Rule(rate="2/minute"), "read_file": Rule(max_calls=1)}, escalate_after=0)
    sb = make_sandbox(capabilities=CAPS, policy=policy, principal=AGENT)
    code = (
        "out = []\nfor i in range(3):\n    try:\n        out.append(send('x'))\n"
        "    except PolicyDenied as e:\n        out.append(str(e))\nout"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert result.value[:2] == ["sent to x", "sent to x"] and "rate limit" in result.value[2]
    again = sb.run("send('x')")  # the window spans runs of the same principal
    assert again.error.kind == "policy_denied" and "rate limit" in again.error.message
    capped = sb.run("read_file('/a')\nread_file('/b')")
    assert capped.error.kind == "policy_denied" and "at most 1" in capped.error.message


def test_sql_table_constraint(make_sandbox):
    rule = Rule(args={"sql": Constraint(tables=["orders"], read_only=True)})
    sb = make_sandbox(capabilities=CAPS, policy=Policy(rules={"sql.query": rule}))
    assert sb.run("sql.query('select * from orders')").value == [[1]]
    denied = sb.run("sql.query('select * from users')")
    assert denied.error.kind == "policy_denied" and "users" in denied.error.message


def test_policy_from_toml_path(make_sandbox, tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text('default = "deny"\n[capabilities.read_file]\ndecision = "allow"\n')
    sb = make_sandbox(capabilities=CAPS, policy=path)
    assert sb.run("read_file('/data/a')").ok
    assert sb.run("send('x')").error.kind == "policy_denied"


RECORD_KEYS = {
    "schema", "run_id", "session_id", "started_at", "finished_at", "principal", "code_sha256", "code_bytes",
    "runtime", "isolation", "layers", "limits", "capabilities", "policy", "secrets", "calls", "usage", "outcome",
    "stdout_sha256", "stderr_sha256", "value_sha256",
}
CALL_KEYS = {"seq", "capability", "arguments", "status", "decision", "approval", "reason", "rule", "error",
             "duration_seconds"}


def test_records_have_the_same_shape_on_every_runtime(make_sandbox, runtime):
    sink = MemorySink()
    policy = Policy(rules={"read_file": Rule(args={"path": Constraint(prefix="/data/")})})
    sb = make_sandbox(capabilities=CAPS, policy=policy, principal=AGENT, records=sink)
    code = (
        "print('hello')\nread_file('/data/a')\n"
        "try:\n    read_file('/etc/passwd')\nexcept PolicyDenied:\n    pass\n"
        "try:\n    send(1, 2, 3)\nexcept TypeError:\n    pass\n"
        "{'n': 42}"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert len(sink.records) == 1
    record = sink.records[0]
    data = record.to_json()
    assert set(data) == RECORD_KEYS
    assert all(set(call) == CALL_KEYS for call in data["calls"])
    assert data["schema"] == "sandbox.run-record/1"
    assert data["run_id"] == result.run_id
    assert (data["runtime"], data["isolation"]) == (result.runtime, result.isolation)
    assert tuple(data["layers"]) == result.layers
    assert data["principal"]["id"] == "agent:etl" and data["principal"]["task"] == "T-7"
    assert data["capabilities"] == ["read_file", "send", "sql.query"]
    import hashlib

    assert data["code_sha256"] == hashlib.sha256(code.encode()).hexdigest()
    assert data["stdout_sha256"] == hashlib.sha256(b"hello\n").hexdigest()
    assert data["value_sha256"] == hashlib.sha256(b'{"n":42}').hexdigest()
    calls = [(c["capability"], c["status"], c["decision"]) for c in data["calls"]]
    assert calls == [("read_file", "ok", "allow"), ("read_file", "denied", "deny"), ("send", "invalid", None)]
    assert data["calls"][0]["arguments"] == {"path": "'/data/a'"}
    assert "/data/" in data["calls"][1]["reason"]
    assert data["usage"]["capability_calls"] == result.usage.capability_calls
    assert data["outcome"] == {"ok": True, "kind": None, "type": None, "message": None, "limit": None,
                               "lineno": None, "output_truncated": False}
    assert data["limits"]["cpu_seconds"] == sb.limits.cpu_seconds


def test_records_without_a_policy_and_from_failed_runs(make_sandbox):
    sink = MemorySink()
    sb = make_sandbox(capabilities=CAPS, records=sink)
    sb.run("read_file('/x')")
    sb.run("1/0")
    sb.run("x = (")
    kinds = [(r.outcome.ok, r.outcome.kind) for r in sink.records]
    assert kinds == [(True, None), (False, "guest_exception"), (False, "compile_error")]
    assert sink.records[0].principal is None and sink.records[0].calls[0].decision is None
    assert sink.records[0].calls[0].status == "ok"


def test_session_runs_emit_records(make_sandbox):
    sink = MemorySink()
    sb = make_sandbox(capabilities=CAPS, records=sink, principal=AGENT)
    with sb.session() as session:
        session.run("a = read_file('/data/a')")
        session.run("a")
    assert len(sink.records) == 2
    first, second = sink.records
    assert first.session_id is not None and first.session_id == second.session_id
    assert [len(first.calls), len(second.calls)] == [1, 0]


def test_signed_records_verify_and_catch_tampering(make_sandbox, tmp_path: Path):
    key = generate_signing_key()
    path = tmp_path / "runs.jsonl"
    sb = make_sandbox(capabilities=CAPS, records=JsonlSink(path, signing_key=key), principal=AGENT)
    for n in range(3):
        sb.run(f"read_file('/data/{n}')")
    assert verify(path, key.public_key()).ok
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    RunRecord.model_validate(entry["record"])
    lines[1] = lines[1].replace('"ok":true', '"ok":false', 1)
    path.write_text("\n".join(lines) + "\n")
    report = verify(path, key.public_key())
    assert not report.ok and report.bad_line == 2


def test_bad_policy_configuration_raises_at_construction(make_sandbox):
    with pytest.raises(ValueError, match="file"):
        make_sandbox(capabilities=CAPS, policy=Policy(rules={"read_file": Rule(args={"file": Constraint(one_of=[1])})}))
    with pytest.raises(ValueError, match="policy file"):
        make_sandbox(capabilities=CAPS, policy="no-such-policy.toml")
    with pytest.raises(TypeError):
        make_sandbox(capabilities=CAPS, policy=42)
    with pytest.raises(TypeError):
        make_sandbox(capabilities=CAPS, records=object())


CANARY = "CANARY-policy-records-7f3a9e1b5c2d4f60"


@capability
def leaky(token: SecretValue, note: str = "") -> str:
    """Returns the value it was handed (a careless capability)."""
    return token.reveal()


def test_records_carry_secret_scopes_never_values_and_scope_denials_escalate(make_sandbox, tmp_path: Path):
    key = generate_signing_key()
    path = tmp_path / "runs.jsonl"
    secret = Secret(value=CANARY, capabilities=["leaky"], ttl=60, max_uses=5)
    sb = make_sandbox(
        capabilities=[leaky, send], secrets={"api": secret}, policy=Policy(escalate_after=2), principal=AGENT,
        records=JsonlSink(path, signing_key=key),
    )
    leaked = sb.run(f"x = leaky(secrets.api, note={CANARY!r})\nprint(x)\nx")
    assert leaked.ok, leaked.error
    code = "for i in range(5):\n    try:\n        send(secrets.api)\n    except PolicyDenied:\n        pass\n'done'"
    ended = sb.run(code)  # the handle is out of send()'s scope: two denials end the run
    assert ended.error.kind == "policy_denied"
    text = path.read_text()
    assert CANARY not in text
    assert verify(path, key.public_key()).ok
    first, second = [RunRecord.model_validate(json.loads(line)["record"]) for line in text.splitlines()]
    assert [(s.name, s.capabilities, s.ttl_seconds, s.max_uses) for s in first.secrets] == [("api", ("leaky",), 60.0, 5)]
    assert first.calls[0].arguments["token"] == "<secret:api>"
    assert "[REDACTED:api]" in first.calls[0].arguments["note"]
    assert [c.status for c in second.calls] == ["denied", "denied"]
    assert "api" in second.calls[0].reason
