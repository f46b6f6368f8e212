"""Host side of secrets: configuration, the per-run broker, `SecretValue`, redaction, and the
`Sandbox` integration through real runtimes (restricted, in-process and in confined child
processes). `tests/conformance/test_secrets.py` checks the guest-facing guarantees on every runtime."""

from __future__ import annotations

import base64
import copy
import json
import pickle
import time
import urllib.parse
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from runtimes.wire import SECRET_MARKER
from sandbox import Limits, Sandbox, capability
from sandbox.runtime import CapabilityFault
from sandbox.secrets import Redactor, Secret, SecretBroker, SecretUnavailable, SecretValue, host_matches, normalize_host_pattern

CANARY = "CANARY-7f3a9c1e5b2d4f60a8e1c3b5d7f9a2c4"


def encodings(value: str) -> dict[str, str]:
    data = value.encode()
    return {
        "plain": value,
        "base64": base64.b64encode(data).decode(),
        "base64url": base64.urlsafe_b64encode(data).decode(),
        "base64-nopad": base64.b64encode(data).decode().rstrip("="),
        "hex": data.hex(),
        "HEX": data.hex().upper(),
        "percent": urllib.parse.quote(value, safe=""),
        "percent-plus": urllib.parse.quote_plus(value),
        "json": json.dumps(value)[1:-1],
    }


def assert_clean(text: str, value: str = CANARY) -> None:
    for form, encoded in encodings(value).items():
        assert encoded not in text, f"{form} form of the secret leaked: {text!r}"


# ----------------------------------------------------------------------------- configuration


def test_secret_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one source"):
        Secret(capabilities=["x"])
    with pytest.raises(ValueError, match="exactly one source"):
        Secret(value="a", env="B", capabilities=["x"])


def test_secret_needs_capabilities():
    with pytest.raises(ValueError, match="capabilities="):
        Secret(value="abcdefgh")


@pytest.mark.parametrize("pattern", ["http://x.com", "a..b", "*x.com", "x.*.com", "[::1", "host:0", "1.2.3.4:99999", ""])
def test_bad_host_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        normalize_host_pattern(pattern)


def test_bad_scope_values_are_refused():
    with pytest.raises(ValueError):
        Secret(value="abcdefgh", capabilities=["x"], ttl=0)
    with pytest.raises(ValueError):
        Secret(value="abcdefgh", capabilities=["x"], max_uses=0)
    with pytest.raises(ValueError):
        Secret(value="abcdefgh", capabilities=["not a name"])


@pytest.mark.parametrize("bad", [
    {"capabilities": []},                                   # the model check fails
    {"capabilities": ["x"], "env": "E"},                    # two sources
    {"capabilities": ["x"], "ttl": -1},                     # a field fails
    {"capabilities": ["not a name"]},
    {"capabilities": ["x"], "hosts": ["http://bad/"]},
    {"capabilities": ["x"], "surprise": 1},                 # extra field
    {"capabilities": ["x"], "as_list": True},               # the value has the wrong type
    {"capabilities": ["x"], "as_bytes": True},
])
def test_validation_errors_never_carry_the_value(bad):
    from pydantic import ValidationError

    bad = dict(bad)
    value: Any = [CANARY] if bad.pop("as_list", False) else CANARY.encode() if bad.pop("as_bytes", False) else CANARY
    with pytest.raises(ValidationError) as info:
        Secret(value=value, **bad)
    exc = info.value
    for text in (str(exc), repr(exc), exc.json(), repr(exc.errors()), json.dumps(exc.errors(), default=str)):
        assert_clean(text)
    with pytest.raises(ValidationError) as info:
        Secret.model_validate({"value": value, **bad})
    assert_clean(repr(info.value.errors()) + str(info.value))


def test_secret_repr_hides_the_value():
    secret = Secret(value=CANARY, capabilities=["x"])
    assert_clean(repr(secret))
    assert_clean(str(secret.model_dump()))


def test_host_patterns():
    patterns = [normalize_host_pattern(p) for p in ["API.GitHub.com.", "*.example.org", "127.0.0.1:8080", "[::1]"]]
    assert patterns == ["api.github.com", "*.example.org", "127.0.0.1:8080", "[::1]"]
    assert host_matches("api.github.com", 443, patterns)
    assert host_matches("API.GITHUB.COM.", 443, patterns)
    assert not host_matches("github.com", 443, patterns)
    assert host_matches("a.b.example.org", 80, patterns)
    assert not host_matches("example.org", 80, patterns)
    assert not host_matches("evilexample.org", 80, patterns)
    assert host_matches("127.0.0.1", 8080, patterns)
    assert not host_matches("127.0.0.1", 8081, patterns)
    assert host_matches("::1", 1, patterns)
    assert host_matches("anything", 1, ["*"])


@capability
def use(token: SecretValue) -> str:
    """Reveals the secret and reports its length (never the value)."""
    return f"{token.name}:{len(token.reveal())}"


@capability
def leak(token: SecretValue) -> str:
    """A careless capability that returns the value itself."""
    return token.reveal()


@capability
def leak_encoded(token: SecretValue, form: str) -> dict:
    """A careless capability that returns an encoded form of the value."""
    return {form: encodings(token.reveal())[form]}


@capability
def leak_in_error(token: SecretValue) -> str:
    """A careless capability whose exception message holds the value."""
    raise RuntimeError(f"failed with {token.reveal()}")


@capability
def leak_in_fault(token: SecretValue) -> str:
    """A careless capability whose fault message holds the value."""
    raise CapabilityFault("ValueError", f"bad token {token.reveal()}")


@capability
def leak_halves(token: SecretValue) -> list[str]:
    """Returns the value in two pieces that are each below the redactor's radar."""
    value = token.reveal()
    return [value[:20], value[20:]]


@capability
def echo(x: Any) -> Any:
    """Echoes its argument."""
    return x


@capability
def text_only(s: str) -> str:
    """Takes a string."""
    return s


@capability
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


CAPS = [use, leak, leak_encoded, leak_in_error, leak_in_fault, leak_halves, echo, text_only, nap]
LEAKERS = ["use", "leak", "leak_encoded", "leak_in_error", "leak_in_fault", "leak_halves"]


def test_sandbox_validates_secrets():
    with pytest.raises(ValueError, match="not starting with '_'"):
        Sandbox(capabilities=[use], secrets={"_x": Secret(value="abcdefgh", capabilities=["use"])})
    with pytest.raises(ValueError, match="not a keyword"):
        Sandbox(capabilities=[use], secrets={"class": Secret(value="abcdefgh", capabilities=["use"])})
    with pytest.raises(TypeError, match="sandbox.Secret"):
        Sandbox(capabilities=[use], secrets={"x": "abcdefgh"})
    with pytest.raises(ValueError, match="does not grant"):
        Sandbox(capabilities=[use], secrets={"x": Secret(value="abcdefgh", capabilities=["deploy"])})
    with pytest.raises(ValueError, match="egress=Egress"):
        Sandbox(capabilities=[use], secrets={"x": Secret(value="abcdefgh", capabilities=["http"])})


def test_describe_and_repr_list_secret_names_only():
    sb = Sandbox(capabilities=[use], secrets={"github": Secret(value=CANARY, capabilities=["use"])})
    stub = sb.describe().stub
    assert "github: SecretHandle" in stub
    assert "secrets=['github']" in repr(sb)
    assert_clean(stub + repr(sb) + json.dumps(sb.describe().tools))


# ----------------------------------------------------------------------------- sources, just in time


def test_sources_are_read_at_each_run_start(monkeypatch, tmp_path):
    calls = []

    def provider() -> str:
        calls.append(1)
        return f"provided-{len(calls)}-abcdefgh"

    values: list[dict[str, str]] = []

    @capability
    def grab(p: SecretValue, f: SecretValue, e: SecretValue) -> None:
        """Reveals each value on the host (outputs would show only [REDACTED:...])."""
        values.append({value.name: value.reveal() for value in (p, f, e)})

    path = tmp_path / "token"
    path.write_text("from-file-abcdefgh\n")
    monkeypatch.setenv("SANDBOX_TEST_TOKEN", "env-one-abcdefgh")
    with Sandbox(
        capabilities=[grab],
        secrets={
            "p": Secret(provider=provider, capabilities=["grab"]),
            "f": Secret(file=path, capabilities=["grab"]),
            "e": Secret(env="SANDBOX_TEST_TOKEN", capabilities=["grab"]),
        },
    ) as sb:
        assert calls == []  # nothing read at construction
        code = "grab(secrets.p, secrets.f, secrets.e)"
        assert sb.run(code).ok
        monkeypatch.setenv("SANDBOX_TEST_TOKEN", "env-two-abcdefgh")
        path.write_text("rotated-file-abcdefgh")
        assert sb.run(code).ok
    assert values[0] == {"p": "provided-1-abcdefgh", "f": "from-file-abcdefgh", "e": "env-one-abcdefgh"}
    assert values[1] == {"p": "provided-2-abcdefgh", "f": "rotated-file-abcdefgh", "e": "env-two-abcdefgh"}


def test_unreadable_source_raises_naming_secret_and_source(monkeypatch, tmp_path):
    monkeypatch.delenv("SANDBOX_TEST_MISSING", raising=False)

    def failing() -> str:
        raise RuntimeError(f"backend said {CANARY}")

    sb = Sandbox(capabilities=[use], secrets={"gh": Secret(env="SANDBOX_TEST_MISSING", capabilities=["use"])})
    with pytest.raises(SecretUnavailable, match="'gh': environment variable SANDBOX_TEST_MISSING is not set"):
        sb.run("1")
    sb = Sandbox(capabilities=[use], secrets={"gh": Secret(provider=failing, capabilities=["use"])})
    with pytest.raises(SecretUnavailable) as info:
        sb.run("1")
    assert "RuntimeError" in str(info.value)
    assert_clean(str(info.value))
    sb = Sandbox(capabilities=[use], secrets={"gh": Secret(file=tmp_path / "nope", capabilities=["use"])})
    with pytest.raises(SecretUnavailable, match="file"):
        sb.run("1")


# ----------------------------------------------------------------------------- broker


def broker(**scope: Any) -> tuple[SecretBroker, str]:
    scope.setdefault("capabilities", ["use"])
    b = SecretBroker({"canary": Secret(value=CANARY, **scope)})
    return b, b.handles[0].token


def test_tokens_are_unguessable_and_per_run():
    b1, t1 = broker()
    b2, t2 = broker()
    assert t1 != t2 and len(t1) >= 43
    assert CANARY not in t1
    description = b1.handles[0].description
    assert "canary" in description and "capabilities=use" in description
    assert_clean(description)


def test_resolve_checks_capability_scope_with_namespaces():
    b, token = broker(capabilities=["use", "http"])
    assert b.resolve(token, "use").reveal() == CANARY
    assert b.resolve(token, "http.get").name == "canary"
    with pytest.raises(CapabilityFault) as info:
        b.resolve(token, "echo")
    assert info.value.guest_type == "PolicyDenied"
    assert "'canary'" in info.value.message and "capability 'echo'" in info.value.message
    assert "capabilities=use,http" in info.value.message
    with pytest.raises(CapabilityFault):
        b.resolve(token, "httpx")


def test_ttl_expires():
    b, token = broker(ttl=0.05)
    b.resolve(token, "use").reveal()
    time.sleep(0.08)
    with pytest.raises(CapabilityFault, match=r"'canary': handle expired \(rule: ttl=0.05s"):
        b.resolve(token, "use")


def test_max_uses_counts_reveals_not_resolutions():
    b, token = broker(max_uses=2)
    first = b.resolve(token, "use")
    unused = b.resolve(token, "use")  # resolved but never revealed: no use
    assert first.reveal() == CANARY
    assert first.reveal() == CANARY  # the same SecretValue counts once
    assert b.resolve(token, "use").reveal() == CANARY
    with pytest.raises(CapabilityFault, match=r"'canary': handle used up \(rule: max_uses=2\)"):
        b.resolve(token, "use")
    with pytest.raises(CapabilityFault, match="used up"):
        unused.reveal()


def test_revoked_handles_are_dead_and_named():
    b, token = broker()
    kept = b.resolve(token, "use")
    b.revoke()
    with pytest.raises(CapabilityFault, match="'canary': handle revoked"):
        b.resolve(token, "use")
    with pytest.raises(CapabilityFault, match="revoked"):
        kept.reveal()
    other, _ = broker()
    with pytest.raises(CapabilityFault, match="'canary': handle revoked") as info:
        other.resolve(token, "use")  # a smuggled handle from an ended run
    assert info.value.guest_type == "PolicyDenied"


def test_unknown_and_malformed_handles_are_denied():
    b, token = broker()
    for forged in ["guess", 0, None, token[:-1]]:
        with pytest.raises(CapabilityFault, match="unknown secret handle"):
            b.resolve_arguments("use", [{SECRET_MARKER: forged}], {})
    with pytest.raises(CapabilityFault, match="malformed"):
        b.resolve_arguments("use", [{SECRET_MARKER: token, "x": 1}], {})
    args, kwargs = b.resolve_arguments("use", [[{"a": {SECRET_MARKER: token}}]], {"k": {SECRET_MARKER: token}})
    assert isinstance(args[0][0]["a"], SecretValue) and isinstance(kwargs["k"], SecretValue)


def test_secret_value_is_opaque_on_the_host():
    b, token = broker(hosts=["api.example.com"])
    value = b.resolve(token, "use")
    assert repr(value) == str(value) == "SecretValue('canary')"
    assert f"{value}" == "SecretValue('canary')"
    with pytest.raises(TypeError):
        pickle.dumps(value)
    assert copy.deepcopy(value) is value
    assert value.allows_host("API.example.com", 443) and not value.allows_host("example.com")
    with pytest.raises(CapabilityFault, match=r"may not be sent to evil.com \(rule: hosts=api.example.com\)"):
        value.reveal_for("evil.com")
    assert value.reveal_for("api.example.com") == CANARY


def test_pydantic_accepts_only_broker_made_values():
    b, token = broker()
    with pytest.raises(CapabilityFault) as info:
        use.bind(["a plain string"], {})
    assert info.value.guest_type == "ValueError"
    with pytest.raises(CapabilityFault) as info:
        text_only.bind([b.resolve(token, "use")], {})
    assert info.value.guest_type == "ValueError"
    assert_clean(info.value.message)
    assert use.tool_schema()["parameters"]["properties"]["token"]["title"] == "SecretHandle"


# ----------------------------------------------------------------------------- sandbox integration


noted: list[Any] = []


@capability
def note(x: Any) -> None:
    """Keeps what the guest holds on the host, as it crossed the boundary (no result redaction)."""
    noted.append(x)


@pytest.fixture
def tokens(monkeypatch) -> list[str]:
    """Every handle token issued during the test, in order (what a leak of host logs would give)."""
    import sandbox.secrets._broker as broker_module

    issued: list[str] = []
    original = broker_module.new_token

    def record() -> str:
        issued.append(original())
        return issued[-1]

    monkeypatch.setattr(broker_module, "new_token", record)
    return issued


def forged(token: str) -> str:
    """Guest code passing a raw wire handle built from ``token``."""
    return f"use({{{SECRET_MARKER!r}: {token!r}}})"


def run_guest(make_sandbox, code, *, scope_caps=("use", *LEAKERS[1:]), limits=None, **secret_kwargs):
    noted.clear()
    sb = make_sandbox(capabilities=[*CAPS, note], limits=limits or Limits(),
                      secrets={"canary": Secret(value=CANARY, capabilities=list(scope_caps), **secret_kwargs)})
    return sb.run(code)


def assert_result_clean(result) -> None:
    assert_clean(result.model_dump_json())
    assert_clean(repr(result))


def test_handle_in_a_capability_outside_the_scope_is_denied(make_sandbox):
    result = run_guest(make_sandbox, "echo(secrets.canary)")
    assert result.error.kind == "policy_denied"
    assert "secret 'canary' may not be used by capability 'echo'" in result.error.message


def test_allowed_use(make_sandbox):
    result = run_guest(make_sandbox, "use(secrets.canary)")
    assert result.ok and result.value == f"canary:{len(CANARY)}"


@pytest.mark.parametrize("form", list(encodings(CANARY)))
def test_capability_results_are_redacted_before_the_guest_sees_them(make_sandbox, form):
    code = (f"received = [leak(secrets.canary), leak_encoded(secrets.canary, {form!r})]\n"
            "print(received)\nnote(received)\nreceived")
    result = run_guest(make_sandbox, code)
    assert result.ok, result.error
    received = noted[0]
    assert received[0] == "[REDACTED:canary]"
    assert received[1] == {form: "[REDACTED:canary]"}
    assert_result_clean(result)


@pytest.mark.parametrize("cap", ["leak_in_error", "leak_in_fault"])
def test_fault_messages_are_redacted(make_sandbox, cap):
    result = run_guest(make_sandbox, f"try:\n    {cap}(secrets.canary)\nexcept Exception as e:\n    note(str(e))\n    raise")
    seen = noted
    assert "[REDACTED:canary]" in seen[0]
    assert_clean(seen[0])
    assert_result_clean(result)


SPLIT_HALVES = f"a, b = leak_halves(secrets.canary)\nassert a + b == {CANARY!r}  # each half slips past result redaction...\n"


def test_values_split_across_prints_are_redacted(make_sandbox):
    code = SPLIT_HALVES + "print(a, end='')\nprint(b)  # ...but the whole output is redacted\n{'k': [a + b], a + b: 1}"
    result = run_guest(make_sandbox, code)
    assert result.stdout == "[REDACTED:canary]\n"
    assert result.value == {"k": ["[REDACTED:canary]"], "[REDACTED:canary]": 1}
    assert_result_clean(result)


def test_values_split_across_writes_to_stderr_are_redacted():
    """Only the wasi guest has a stderr stream, and guest code reaches it only past the shared
    import allowlist (which on wasi is not the boundary): the redaction on the host must hold."""
    from sandbox.errors import Unavailable

    try:
        from conformance.runtime_differences import WASI_UNGATED  # type: ignore[import-not-found]
    except ImportError:
        from tests.conformance.runtime_differences import WASI_UNGATED

    try:
        sb = Sandbox("wasi", capabilities=CAPS, secrets={"canary": Secret(value=CANARY, capabilities=["leak_halves"])})
    except Unavailable as exc:
        pytest.skip(f"wasi is not available here: {exc}")
    with sb:
        result = sb.run(WASI_UNGATED + SPLIT_HALVES
                        + "import base64, sys\nprint(base64.b64encode((a + b).encode()).decode(), file=sys.stderr)")
    assert result.stderr == "[REDACTED:canary]\n"
    assert_result_clean(result)


def test_error_messages_are_redacted(make_sandbox):
    result = run_guest(make_sandbox, SPLIT_HALVES + "raise ValueError('the key is ' + a + b)")
    assert result.error.message == "the key is [REDACTED:canary]"
    assert_result_clean(result)


def test_truncation_cannot_cut_a_value_in_half(make_sandbox):
    result = run_guest(make_sandbox, SPLIT_HALVES + "print('x' * 10 + a + b)", limits=Limits(max_output_bytes=30))
    assert result.output_truncated
    assert CANARY[:12] not in result.stdout
    assert result.stdout.startswith("x" * 10) and "[REDACTED:canary]" in result.stdout


def test_ttl_and_uses_through_the_sandbox(make_sandbox):
    code = "use(secrets.canary)\nnap(0.1)\nuse(secrets.canary)"
    result = run_guest(make_sandbox, code, ttl=0.05)
    assert result.error.kind == "policy_denied" and "ttl=0.05s" in result.error.message

    result = run_guest(make_sandbox, code, max_uses=1)
    assert result.error.kind == "policy_denied" and "max_uses=1" in result.error.message


def test_handles_die_with_their_run_in_a_session_and_across_sessions(make_sandbox, tokens):
    sb = make_sandbox(capabilities=CAPS, secrets={"canary": Secret(value=CANARY, capabilities=["use"])})
    with sb.session() as session:
        assert session.run("h = secrets.canary\nuse(secrets.canary)").ok
        result = session.run("use(h)")  # the handle kept from the first run
        assert result.error.kind == "policy_denied"
        assert "secret 'canary': handle revoked" in result.error.message
        assert session.run("use(secrets.canary)").ok  # this run's own handle works
        token = tokens[-1]
    with sb.session() as other:
        result = other.run(forged(token))  # forged from a leaked token
    # A marker the guest made itself is not a handle on any runtime: the token never reaches the host.
    assert result.error.kind == "guest_exception" and result.error.type == "TypeError"
    assert "not a secret handle" in result.error.message


def test_concurrent_runs_cannot_use_each_others_handles(tokens):
    runs: list[Sandbox] = []

    @capability
    def nested() -> str:
        """Starts another run while the calling run is live, with the calling run's token."""
        inner = runs[0].run(forged(tokens[-1]))
        return inner.error.message

    with Sandbox(capabilities=[*CAPS, nested], secrets={"canary": Secret(value=CANARY, capabilities=["use"])}) as sb:
        runs.append(sb)
        result = sb.run("nested()")
    assert "not a secret handle" in result.value  # a token is never accepted from guest code
    assert CANARY not in result.value


def _crash_with_value_in_message(job):
    raise RuntimeError(f"driver crashed holding {CANARY}")


def _crash_with_value_in_context(job):
    try:
        raise KeyError(CANARY)
    except KeyError:
        raise RuntimeError("driver crashed")  # the KeyError rides along as __context__


@pytest.mark.parametrize("crash", [_crash_with_value_in_message, _crash_with_value_in_context])
def test_logs_never_carry_the_value(monkeypatch, caplog, crash):
    caplog.set_level("DEBUG")

    class Boom:
        name, isolation = "boom", "none"
        run = staticmethod(crash)

        def close(self):
            pass

    monkeypatch.setattr("sandbox.sandbox._make_driver", lambda *a, **k: Boom())
    sb = Sandbox(capabilities=[use], secrets={"canary": Secret(value=CANARY, capabilities=["use"])})
    result = sb.run("")
    assert result.error.kind == "internal"
    assert_result_clean(result)
    assert "driver crashed" in caplog.text
    assert_clean(caplog.text)
    assert_clean("".join(r.exc_text or "" for r in caplog.records))


def test_driver_tracebacks_are_kept_when_they_hold_no_secret(monkeypatch, caplog):
    class Boom:
        name, isolation = "boom", "none"

        def run(self, job):
            raise RuntimeError("plain failure")

        def close(self):
            pass

    monkeypatch.setattr("sandbox.sandbox._make_driver", lambda *a, **k: Boom())
    sb = Sandbox(capabilities=[use], secrets={"canary": Secret(value=CANARY, capabilities=["use"])})
    sb.run("")
    assert any(r.exc_info for r in caplog.records)


# ----------------------------------------------------------------------------- redaction properties

VALUES = st.text(min_size=8, max_size=48).filter(lambda v: v.strip() == v and "\x00" not in v)
TOKEN_VALUES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~+/=", min_size=8, max_size=64)
SURROUNDINGS = st.text(max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(VALUES, TOKEN_VALUES), before=SURROUNDINGS, after=SURROUNDINGS, form=st.sampled_from(list(encodings("x"))))
def test_every_encoded_form_is_redacted(value, before, after, form):
    redactor = Redactor({"s": value})
    encoded = encodings(value)[form]
    out = redactor.text(before + encoded + after)
    assert encoded not in out
    assert value not in out
    assert "[REDACTED:s]" in out


@settings(max_examples=200, deadline=None)
@given(value=st.one_of(VALUES, TOKEN_VALUES), data=st.data(), upper=st.booleans())
def test_any_subset_of_percent_encoded_characters_is_redacted(value, data, upper):
    encoded = []
    for char in value:
        if data.draw(st.booleans()):
            piece = "".join(f"%{b:02X}" for b in char.encode())
            encoded.append(piece if upper else piece.lower())
        else:
            encoded.append(char)
    out = Redactor({"s": value}).text("q=" + "".join(encoded) + "&x=1")
    assert out == "q=[REDACTED:s]&x=1"


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(VALUES, TOKEN_VALUES), prefix=st.binary(max_size=12), suffix=st.binary(max_size=12), url=st.booleans())
def test_base64_of_a_larger_blob_hides_the_value_at_every_alignment(value, prefix, suffix, url):
    data = value.encode()
    blob = prefix + data + suffix
    encoded = (base64.urlsafe_b64encode if url else base64.b64encode)(blob).decode()
    out = Redactor({"s": value}).text(encoded)
    # Characters whose 6 bits all come from the value, computed from this very encoding:
    first = -(-8 * len(prefix) // 6)
    last = 8 * (len(prefix) + len(data)) // 6
    core = encoded[first:last]
    assert core not in out
    # And no window of the output decodes to the value.
    for piece in out.split("[REDACTED:s]"):
        for start in range(4):
            chunk = piece[start:]
            chunk = chunk[: len(chunk) // 4 * 4]
            try:
                decoded = base64.b64decode(chunk, altchars=b"-_" if url else None)
            except Exception:
                continue
            assert data not in decoded


@settings(max_examples=200, deadline=None)
@given(value=TOKEN_VALUES, cut=st.integers(min_value=1, max_value=7), noise=SURROUNDINGS)
def test_split_writes_are_caught_when_the_whole_output_is_redacted(value, cut, noise):
    pieces = [noise, value[:cut], value[cut:], noise]
    out = Redactor({"s": value}).text("".join(pieces))
    assert value not in out


@settings(max_examples=200, deadline=None)
@given(value=VALUES, text=st.text(max_size=200))
def test_redaction_is_idempotent_and_leaves_other_text_alone(value, text):
    redactor = Redactor({"s": value})
    once = redactor.text(text)
    assert redactor.text(once) == once
    assume(not set(value) & set(text) and "%" not in text)
    assert once == text


@settings(max_examples=100, deadline=None)
@given(values=st.lists(TOKEN_VALUES, min_size=2, max_size=4, unique=True), data=st.data())
def test_several_secrets_are_each_named(values, data):
    names = [f"s{i}" for i in range(len(values))]
    redactor = Redactor(dict(zip(names, values)))
    order = data.draw(st.permutations(range(len(values))))
    text = " | ".join(values[i] for i in order)
    out = redactor.text(text)
    for value in values:
        assume(not any(value != other and value in other for other in values))
        assert value not in out
    for name in names:
        assert f"[REDACTED:{name}]" in out


# ----------------------------------------------------------------------------- no depth cutoff, linear cost


def nested(depth: int, leaf: Any) -> Any:
    data = leaf
    for i in range(depth):
        data = [data] if i % 2 else {"k": data}
    return data


def innermost(data: Any) -> Any:
    while isinstance(data, list) or isinstance(data, dict) and "k" in data:
        data = data[0] if isinstance(data, list) else data["k"]
    return data


@pytest.mark.parametrize("depth", [111, 5_000, 200_000])
def test_redaction_has_no_depth_cutoff(depth):
    redactor = Redactor({"canary": CANARY})
    out = redactor.value(nested(depth, f"token={CANARY}"))
    assert innermost(out) == "token=[REDACTED:canary]"
    key_deep = redactor.value(nested(depth, {CANARY: base64.b64encode(CANARY.encode())}))
    assert innermost(key_deep) == {"[REDACTED:canary]": b"[REDACTED:canary]"}


def test_handles_resolve_at_any_depth():
    b, token = broker()
    args, _ = b.resolve_arguments("use", [nested(5_000, {SECRET_MARKER: token})], {})
    assert isinstance(innermost(args[0]), SecretValue)
    with pytest.raises(CapabilityFault, match="malformed"):
        b.resolve_arguments("use", [nested(5_000, {SECRET_MARKER: token, "x": 1})], {})


def test_every_scalar_kind_is_redacted_and_types_are_kept():
    pin = "4711084215"
    redactor = Redactor({"pin": pin})
    data = {
        "int": int(pin), "float": float(pin), "neg": -int(pin), "in a key": {int(pin): 1},
        "bytes": b"pin=" + pin.encode(), "tuple": (pin, 1), "set": {pin, "x"}, "frozen": frozenset({pin}),
        "hex bytes": pin.encode().hex().encode(), "keep": [1, 2.5, True, None, "plain", b"\xff\xfe"],
    }
    out = redactor.value(data)
    assert out["int"] == out["neg"][1:] == "[REDACTED:pin]" and out["float"].startswith("[REDACTED:pin]")
    assert out["in a key"] == {"[REDACTED:pin]": 1}
    assert out["bytes"] == b"pin=[REDACTED:pin]" and out["hex bytes"] == b"[REDACTED:pin]"
    assert out["tuple"] == ("[REDACTED:pin]", 1) and out["set"] == {"[REDACTED:pin]", "x"}
    assert out["frozen"] == frozenset({"[REDACTED:pin]"})
    assert out["keep"] == [1, 2.5, True, None, "plain", b"\xff\xfe"]
    assert pin not in repr(out)


def test_shared_and_cyclic_structures_end():
    redactor = Redactor({"canary": CANARY})
    shared: list[Any] = [CANARY]
    for _ in range(60):  # 2**60 paths, 61 distinct lists
        shared = [shared, shared]
    out = redactor.value(shared)
    assert innermost(out) == "[REDACTED:canary]"
    loop: list[Any] = [CANARY]
    loop.append(loop)
    assert redactor.value(loop)[0] == "[REDACTED:canary]"


def test_nothing_to_redact_returns_the_same_object():
    data = {"rows": [{"id": i, "name": f"n{i}", "pct": "%20"} for i in range(1000)]}
    assert Redactor({"canary": CANARY}).value(data) is data


@pytest.mark.parametrize("value", [CANARY, "4711 0815 2342"])  # the second one's forms can hide in numbers
def test_large_values_redact_in_linear_time(value):
    # A large, secret-free value of the kind a guest returns. The old walk cost about 40x a
    # list comprehension over the same items; linear work costs a few times one. Each side
    # takes its best of two runs, so a load spike on this shared machine does not decide it.
    data = list(range(1_500_000)) + [f"row {i} 100%" for i in range(500_000)]
    redactor = Redactor({"s": value})

    def best(work: Any) -> float:
        times = []
        for _ in range(2):
            started = time.perf_counter()
            out = work()
            times.append(time.perf_counter() - started)
        assert out is not None
        return min(times)

    baseline = best(lambda: [str(item) for item in data])
    assert redactor.value(data) is data
    assert best(lambda: redactor.value(data)) < 15 * baseline
