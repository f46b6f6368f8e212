"""`sandbox.policy`: decisions at call time, approvals, caps, rate limits, constraints, escalation, TOML."""

from __future__ import annotations

import ast
import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sandbox.policy
from sandbox.errors import ConfigurationError
from sandbox.policy import (
    CallContext,
    Constraint,
    Decision,
    Policy,
    Principal,
    RateLimit,
    Rule,
    coerce_policy,
)

BOT = Principal(id="agent:etl", on_behalf_of="alice", task="T-12", roles=("analyst",))


def check(policy: Policy, capability: str, **arguments):
    return policy.start("run-1", BOT).check(capability, arguments)


def test_principal_is_validated_and_described():
    assert BOT.describe() == "agent:etl for alice (task T-12)"
    with pytest.raises(ValueError):
        Principal(id="")
    with pytest.raises(ValueError):
        Principal(id="x", unknown=1)


def test_default_allow_deny_ask():
    assert check(Policy(), "anything").allowed
    denied = check(Policy(default="deny"), "anything")
    assert not denied.allowed and denied.decision == "deny" and "anything()" in denied.reason
    asked = check(Policy(default="ask"), "anything")
    assert not asked.allowed and asked.approval == "unavailable" and "no approver" in asked.reason


def test_rule_decision_and_reason_shown_to_guest():
    policy = Policy(rules={"fs.delete": Rule(decision="deny", reason="deleting files is never allowed")})
    verdict = check(policy, "fs.delete", path="/tmp/x")
    assert (verdict.allowed, verdict.reason, verdict.rule) == (False, "deleting files is never allowed",
                                                                "capabilities.fs.delete")
    assert check(policy, "fs.read", path="/tmp/x").allowed


def test_glob_rules_and_exact_names_win():
    policy = Policy(rules={"sql.*": {"decision": "deny"}, "sql.query": {"decision": "allow"}})
    assert check(policy, "sql.query", sql="select 1").allowed
    assert not check(policy, "sql.execute", sql="drop table t").allowed


def test_call_cap_is_per_run():
    policy = Policy(rules={"add": Rule(max_calls=2)}, escalate_after=0)
    state = policy.start("r1", BOT)
    assert [state.check("add", {}).allowed for _ in range(3)] == [True, True, False]
    assert "at most 2" in state.check("add", {}).reason
    assert policy.start("r2", BOT).check("add", {}).allowed


def test_rate_limit_sliding_window_per_principal_across_runs():
    now = [1000.0]
    policy = Policy(rules={"send": Rule(rate="2/minute")}, clock=lambda: now[0], escalate_after=0)
    assert policy.start("r1", BOT).check("send", {}).allowed
    assert policy.start("r2", BOT).check("send", {}).allowed
    limited = policy.start("r3", BOT).check("send", {})
    assert not limited.allowed and "rate limit" in limited.reason and limited.rule == "capabilities.send.rate"
    assert policy.start("r4", Principal(id="other")).check("send", {}).allowed
    now[0] += 60.5
    assert policy.start("r5", BOT).check("send", {}).allowed


def test_rate_parsing():
    assert RateLimit.parse("10/minute") == RateLimit(calls=10, seconds=60)
    assert RateLimit.parse("3/10s") == RateLimit(calls=3, seconds=10)
    assert RateLimit.parse("100 / hour").seconds == 3600
    with pytest.raises(ConfigurationError, match="cannot parse rate"):
        RateLimit.parse("often")


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("/data/a.csv", True),
        ("/data", True),
        ("/data/sub/../b.csv", True),
        ("/data/../etc/passwd", False),
        ("/database/x", False),
        ("relative/data", False),
        ("", False),
        ("/data/\x00x", False),
    ],
)
def test_path_prefix_constraint(path, ok):
    policy = Policy(rules={"fs.read": Rule(args={"path": Constraint(prefix="/data/")})}, escalate_after=0)
    verdict = check(policy, "fs.read", path=path)
    assert verdict.allowed is ok
    if not ok:
        assert "'path'" in verdict.reason and verdict.rule == "capabilities.fs.read.args.path"


def test_sql_table_list_and_read_only():
    rule = Rule(args={"sql": Constraint(tables=["orders", "sales.customers"], read_only=True)})
    policy = Policy(rules={"sql.query": rule}, escalate_after=0)
    assert check(policy, "sql.query", sql="SELECT * FROM orders o JOIN customers c ON o.c = c.id").allowed
    assert check(policy, "sql.query", sql="with t as (select 1) select * from t, orders").allowed
    assert check(policy, "sql.query", sql="select 'from users' as s from orders -- join users").allowed
    denied = check(policy, "sql.query", sql="select * from orders join users on 1=1")
    assert not denied.allowed and "users" in denied.reason
    assert not check(policy, "sql.query", sql="select 1 from orders; drop table orders").allowed
    assert not check(policy, "sql.query", sql="delete from orders").allowed
    assert not check(policy, "sql.query", sql="update orders set x = 1").allowed


def test_sql_analysis_names_tables_not_strings_comments_or_ctes():
    from sandbox.sql_analysis import analyze

    sql = 'WITH z AS (SELECT 1) SELECT a FROM "Sales"."Orders", b LEFT JOIN [c] ON x /* from hidden */ WHERE s = \'from z\''
    assert analyze(sql, "sqlite").tables == {"sales.orders", "b", "c"}


def test_other_constraints():
    policy = Policy(
        rules={
            "pick": Rule(args={
                "color": Constraint(one_of=["red", "blue"]),
                "n": Constraint(min=1, max=10),
                "code": Constraint(pattern=r"[A-Z]{3}", max_length=3),
                "even": Constraint(check=lambda v: v % 2 == 0),
            })
        },
        escalate_after=0,
    )
    good = {"color": "red", "n": 5, "code": "ABC", "even": 2}
    assert check(policy, "pick", **good).allowed
    for bad in ({"color": "green"}, {"n": 11}, {"n": 0}, {"n": True}, {"code": "abc"}, {"even": 3}):
        verdict = check(policy, "pick", **{**good, **bad})
        assert not verdict.allowed, bad
        assert repr(next(iter(bad))) in verdict.reason


def test_missing_constrained_argument_fails_closed():
    policy = Policy(rules={"fs.read": Rule(args={"path": Constraint(prefix="/data")})})
    assert not check(policy, "fs.read", file="/data/x").allowed


def test_python_checks_deny_overrides_and_context():
    seen: list[CallContext] = []

    def no_night_shift(ctx: CallContext) -> Decision | None:
        seen.append(ctx)
        if ctx.arguments.get("amount", 0) > 100:
            return Decision.ask("large amounts need a human")
        if ctx.principal.on_behalf_of != "alice":
            return Decision.deny("only for alice", "owner")
        return None

    policy = Policy(checks=[no_night_shift], approve=lambda req: req.arguments["amount"] < 1000)
    state = policy.start("r", BOT)
    assert state.check("pay", {"amount": 5}).allowed
    assert state.check("pay", {"amount": 500}).approval == "approved"
    assert not state.check("pay", {"amount": 5000}).allowed
    last = seen[-1]
    assert (last.run_id, last.capability, last.calls, last.total_calls) == ("r", "pay", {"pay": 2}, 2)
    assert [d.capability for d in last.denials] == []
    other = policy.start("r2", Principal(id="x", on_behalf_of="mallory")).check("pay", {"amount": 1})
    assert (other.allowed, other.reason, other.rule) == (False, "only for alice", "owner")


def test_a_failing_check_denies():
    def broken(ctx):
        raise RuntimeError("bug")

    verdict = check(Policy(checks=[broken]), "x")
    assert not verdict.allowed and "failed" in verdict.reason


def test_approval_sync_approve_and_deny_and_decision():
    asked = []

    def approver(request):
        asked.append((request.principal.id, request.capability, dict(request.arguments), request.reason))
        if request.arguments["to"] == "boss":
            return Decision.deny("not the boss")
        return request.arguments["to"] == "team"

    policy = Policy(rules={"send": Rule(decision="ask", reason="mail needs approval")}, approve=approver,
                    escalate_after=0)
    ok = check(policy, "send", to="team")
    assert (ok.allowed, ok.decision, ok.approval) == (True, "ask", "approved")
    no = check(policy, "send", to="world")
    assert (no.allowed, no.approval) == (False, "denied") and "not approved" in no.reason
    boss = check(policy, "send", to="boss")
    assert (boss.allowed, boss.reason) == (False, "not the boss")
    assert asked[0] == ("agent:etl", "send", {"to": "team"}, "mail needs approval")


def test_approval_timeout_is_a_denial_sync_and_async():
    def slow(request):
        time.sleep(3)
        return True

    async def aslow(request):
        await asyncio.sleep(3)
        return True

    for approver in (slow, aslow):
        policy = Policy(default="ask", approve=approver, approval_timeout=0.1)
        started = time.perf_counter()
        verdict = check(policy, "x")
        assert time.perf_counter() - started < 1.5
        assert (verdict.allowed, verdict.approval) == (False, "timeout")
        assert "0.1 s" in verdict.reason


def test_async_approver_on_fresh_loop_and_on_host_loop():
    async def approve(request):
        await asyncio.sleep(0)
        return True

    assert check(Policy(default="ask", approve=approve), "x").approval == "approved"

    async def host() -> str | None:
        loop = asyncio.get_running_loop()
        state = Policy(default="ask", approve=approve).start("r", BOT)
        state.bind_loop(loop)
        verdict = await asyncio.to_thread(state.check, "x", {})
        return verdict.approval

    assert asyncio.run(host()) == "approved"


def test_approver_that_raises_denies():
    def boom(request):
        raise RuntimeError("down")

    verdict = check(Policy(default="ask", approve=boom), "x")
    assert (verdict.allowed, verdict.approval) == (False, "error")


def test_escalation_after_n_denials():
    policy = Policy(rules={"bad": Rule(decision="deny")}, escalate_after=3)
    state = policy.start("r", BOT)
    verdicts = [state.check("bad", {}) for _ in range(3)]
    assert [v.terminate for v in verdicts] == [False, False, True]
    assert "3 denials" in verdicts[-1].reason
    assert state.escalated
    after = state.check("good", {})
    assert not after.allowed and after.terminate
    assert len(state.denials) == 3


def test_escalation_counts_outside_denials_and_can_be_disabled():
    state = Policy(escalate_after=2).start("r", BOT)
    assert state.note_denial("http", "secret scope") is False
    assert state.note_denial("http", "secret scope") is True
    off = Policy(rules={"bad": Rule(decision="deny")}, escalate_after=0).start("r", BOT)
    assert not any(off.check("bad", {}).terminate for _ in range(10))


def test_counts_are_thread_safe():
    policy = Policy(rules={"x": Rule(max_calls=50)}, escalate_after=0)
    state = policy.start("r", BOT)
    results: list[bool] = []

    def worker():
        for _ in range(20):
            results.append(state.check("x", {}).allowed)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 50 and state.calls["x"] == 50


def test_bad_configuration_raises(tmp_path: Path):
    with pytest.raises(ConfigurationError, match="default"):
        Policy(default="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="escalate_after"):
        Policy(escalate_after=-1)
    with pytest.raises(ConfigurationError, match="approval_timeout"):
        Policy(approval_timeout=0)
    with pytest.raises(ConfigurationError, match="does not exist"):
        coerce_policy(tmp_path / "missing.toml")
    with pytest.raises(ValueError):
        Rule(rate="fast")
    with pytest.raises(ValueError):
        Constraint(pattern="(")
    with pytest.raises(ValueError):
        Constraint(prefix="")


def test_validate_for_checks_argument_names():
    from sandbox import capability

    @capability
    def read(path: str) -> str:
        return path

    Policy(rules={"read": Rule(args={"path": Constraint(prefix="/d")})}).validate_for({"read": read})
    Policy(rules={"other": Rule(args={"zzz": Constraint(prefix="/d")})}).validate_for({"read": read})
    with pytest.raises(ConfigurationError, match="file"):
        Policy(rules={"read": Rule(args={"file": Constraint(prefix="/d")})}).validate_for({"read": read})


POLICY_TOML = """
default = "deny"
escalate_after = 2
approval_timeout = 5

[capabilities.get_weather]
decision = "allow"
max_calls = 3
rate = "10/minute"

[capabilities."fs.read"]
decision = "allow"
args.path = { prefix = "/data/" }

[capabilities."sql.query"]
decision = "allow"
[capabilities."sql.query".args.sql]
tables = ["orders"]
read_only = true

[capabilities.send_email]
decision = "ask"
"""


def test_from_toml(tmp_path: Path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY_TOML)
    policy = Policy.from_toml(path, approve=lambda r: True)
    assert (policy.default, policy.escalate_after, policy.approval_timeout) == ("deny", 2, 5.0)
    assert policy.rules["get_weather"].rate == RateLimit(calls=10, seconds=60)
    state = policy.start("r", BOT)
    assert state.check("get_weather", {"city": "Paris"}).allowed
    assert state.check("fs.read", {"path": "/data/x"}).allowed
    assert state.check("sql.query", {"sql": "select * from orders"}).allowed
    assert state.check("send_email", {"to": "x"}).approval == "approved"
    assert not state.check("fs.read", {"path": "/etc/passwd"}).allowed
    assert state.check("unknown", {}).terminate  # default deny, second denial


def test_from_toml_accepts_a_policy_table(tmp_path: Path):
    path = tmp_path / "p.toml"
    path.write_text('[policy]\ndefault = "deny"\nescalate_after = 0\n')
    assert Policy.from_toml(path).default == "deny"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('default = "sometimes"', "default"),
        ("escalate_afterr = 3", "escalate_afterr"),
        ('[capabilities.x]\nmax_call = 3', "max_call"),
        ('[capabilities.x]\nrate = "quickly"', "rate"),
        ('[capabilities.x]\nargs.path = { prefixx = "/a" }', "prefixx"),
        ("default = ", "TOML"),
    ],
)
def test_from_toml_errors_name_the_key(tmp_path: Path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        Policy.from_toml(path)


def test_subclassing_decide():
    class OnlyReads(Policy):
        def decide(self, ctx):
            if ctx.capability.endswith(".read"):
                return Decision.allow()
            return Decision.deny(f"{ctx.capability} is not a read")

    assert check(OnlyReads(), "fs.read").allowed
    assert check(OnlyReads(), "fs.write").reason == "fs.write is not a read"


# ----------------------------------------------------------------------------- one SQL analysis, per-rule counts, actions


@pytest.mark.parametrize("sql", [
    """SELECT "a'b" FROM orders; DELETE FROM secret WHERE 'c' = 'c'""",
    """SELECT "it's" FROM orders UNION SELECT token FROM secret WHERE 'x' = 'x'""",
    """SELECT * FROM orders WHERE "a'" = 1 UNION SELECT * FROM secret WHERE ''=''""",
    "WITH secret AS (SELECT * FROM secret) SELECT * FROM secret",
    "WITH orders AS (SELECT * FROM secret) SELECT * FROM orders",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * INTO copy FROM orders",
    "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x",
    "SELEC * FROM orders",
    "PRAGMA table_info(orders)",
])
def test_sql_constraint_refuses_what_the_shared_analysis_refuses(sql):
    policy = Policy(rules={"sql.query": Rule(args={"sql": Constraint(tables=["orders"], read_only=True)})},
                    escalate_after=0)
    verdict = check(policy, "sql.query", sql=sql)
    assert not verdict.allowed, sql
    assert verdict.rule == "capabilities.sql.query.args.sql"


def test_sql_constraint_without_read_only_admits_writes_to_listed_tables_only():
    policy = Policy(rules={"sql.run": Rule(args={"sql": Constraint(tables=["orders"])})}, escalate_after=0)
    assert check(policy, "sql.run", sql="INSERT INTO orders(id) VALUES (1)").allowed
    assert not check(policy, "sql.run", sql="INSERT INTO orders SELECT * FROM secret").allowed
    assert not check(policy, "sql.run", sql='DELETE FROM "secret"').allowed
    assert not check(policy, "sql.run", sql="DROP TABLE orders").allowed
    with pytest.raises(ValueError, match="dialect"):
        Constraint(tables=["orders"], dialect="no-such-sql")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_fail_numeric_bounds(bad):
    policy = Policy(rules={"pay": Rule(args={"amount": Constraint(min=0, max=100)})}, escalate_after=0)
    verdict = check(policy, "pay", amount=bad)
    assert not verdict.allowed and "finite" in verdict.reason
    assert check(policy, "pay", amount=10**30).allowed is False
    assert check(policy, "pay", amount=50.5).allowed


def test_a_glob_rule_counts_every_capability_it_governs():
    policy = Policy(rules={"http.*": Rule(max_calls=1)}, escalate_after=0)
    state = policy.start("r", BOT)
    assert state.check("http.get", {"url": "u"}).allowed
    second = state.check("http.post", {"url": "u"})
    assert not second.allowed and second.rule == "capabilities.http.*.max_calls"
    assert not state.check("http.request", {"method": "GET", "url": "u"}).allowed
    assert state.rule_calls == {"http.*": 1}


def test_one_action_under_two_names_is_governed_and_counted_once():
    policy = Policy(rules={"http.get": Rule(max_calls=1, args={"url": Constraint(pattern=r"https://ok\.example/.*")})},
                    escalate_after=0)
    state = policy.start("r", BOT)
    bad = state.check("http.request", {"method": "GET", "url": "https://evil.example/"}, "http.get")
    assert not bad.allowed and bad.rule == "capabilities.http.get.args.url"
    assert state.check("http.request", {"method": "GET", "url": "https://ok.example/a"}, "http.get").allowed
    again = state.check("http.get", {"url": "https://ok.example/b"})
    assert not again.allowed and again.rule == "capabilities.http.get.max_calls"
    assert state.check("http.request", {"method": "POST", "url": "https://evil.example/"}, "http.post").allowed

    deny = Policy(rules={"http.get": Rule(decision="deny"), "http.request": Rule(max_calls=5)})
    verdict = deny.start("r", BOT).check("http.request", {"method": "GET", "url": "x"}, "http.get")
    assert not verdict.allowed and verdict.rule == "capabilities.http.get"


def test_rates_count_per_rule_in_a_pluggable_store():
    calls: list[tuple[str, int, float]] = []

    class Store:
        def __init__(self) -> None:
            self.used: dict[str, int] = {}

        def admit(self, key: str, limit: int, window: float) -> bool:
            calls.append((key, limit, window))
            if self.used.get(key, 0) >= limit:
                return False
            self.used[key] = self.used.get(key, 0) + 1
            return True

    policy = Policy(rules={"http.*": Rule(rate="2/minute")}, rate_store=Store(), escalate_after=0)
    assert policy.start("r1", BOT).check("http.get", {}).allowed
    assert policy.start("r2", BOT).check("http.post", {}).allowed
    limited = policy.start("r3", BOT).check("http.request", {"method": "GET"}, "http.get")
    assert not limited.allowed and limited.rule == "capabilities.http.*.rate"
    assert {key for key, _, _ in calls} == {'["agent:etl", "http.*"]'} and calls[0][1:] == (2, 60.0)
    with pytest.raises(TypeError, match="rate_store"):
        Policy(rate_store=object())  # type: ignore[arg-type]

    class Broken:
        def admit(self, key: str, limit: int, window: float) -> bool:
            raise ConnectionError("store down")

    refused = Policy(rules={"x": Rule(rate="1/s")}, rate_store=Broken()).start("r", BOT).check("x", {})
    assert not refused.allowed and "rate store failed" in refused.reason


def test_validation_errors_do_not_echo_their_input():
    canary = "CANARY-policy-5d1e"
    for build in (
        lambda: Principal(id="x", attributes={"token": [canary]}),
        lambda: Constraint(one_of=canary, min=canary),
        lambda: Rule(max_calls=canary),
    ):
        with pytest.raises(ValueError) as info:
            build()
        assert canary not in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        Policy.from_mapping({"capabilities": {"x": {"max_calls": canary}}})
    assert canary not in str(info.value)


def test_the_policy_core_never_imports_cedar_at_module_level():
    package = Path(sandbox.policy.__file__).parent
    for module in sorted(package.glob("*.py")):
        if module.name == "cedar.py":
            continue
        tree = ast.parse(module.read_text())
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                assert "cedar" not in (node.module or ""), module.name
            if isinstance(node, ast.Import):
                assert not any("cedar" in alias.name for alias in node.names), module.name
    first = "import sys, sandbox.policy.cedar as c; print(c.CedarPolicy.__mro__[1].__module__, 'cedarpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=60,
                         cwd=Path(sandbox.policy.__file__).parents[2])
    assert out.returncode == 0 and out.stdout.split() == ["sandbox.policy._policy", "False"], out.stderr
