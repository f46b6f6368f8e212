"""Secrets and egress on every runtime: a canary secret never leaves the host.

Each exfiltration attempt runs as its own guest program (so a compile-time refusal in one
runtime does not hide the others) and the whole `RunResult`, the logs and the process's own
stdout/stderr are searched for the canary in every encoding the redactor promises to catch,
and for the handle tokens. Network attempts are made against a real loopback listener, which
must record no connection (or, for allowed requests, never the value).
"""

from __future__ import annotations

import base64
import logging
import urllib.parse

import pytest

import sandbox.secrets._broker as secrets_module  # where SecretBroker looks up new_token
from loopback import Listener
from sandbox import capability
from sandbox.egress import Egress
from sandbox.secrets import Secret, SecretValue

CANARY = "CANARY-5d1e9b7a3c0f4e2d8b6a9c1e3f5d7b90"
LOOPBACK = ["127.0.0.1/32"]

revealed: list[str] = []


@capability
def leak(token: SecretValue) -> str:
    """A careless capability: returns the value it was handed."""
    revealed.append(token.name)
    return token.reveal()


@capability
def leak_halves(token: SecretValue) -> list:
    """Returns the value in two halves, each too short to be recognised on its own."""
    value = token.reveal()
    return [value[:18], value[18:]]


@capability
def leak_in_error(token: SecretValue) -> str:
    """Fails with the value in its message."""
    raise RuntimeError("upstream rejected " + token.reveal())


@capability
def leak_deep(token: SecretValue, depth: int) -> list:
    """Returns the value ``depth`` lists deep, next to its bytes under a dict key."""
    value = token.reveal()
    data: list = [value, {value: value.encode().hex()}]
    for _ in range(depth):
        data = [data]
    return data


@capability
def use(token: SecretValue) -> int:
    """A well-behaved capability: uses the value, returns its length."""
    revealed.append(token.name)
    return len(token.reveal())


@capability
def echo(x: str) -> str:
    """Echoes a string; not in the secret's scope."""
    return x


@capability
def nap(seconds: float) -> float:
    """Sleeps on the host."""
    import time

    time.sleep(seconds)
    return seconds


SCOPED = ["leak", "leak_halves", "leak_deep", "leak_in_error", "use", "http"]


def encodings(value: str) -> dict[str, str]:
    data = value.encode()
    return {
        "plain": value,
        "base64": base64.b64encode(data).decode().rstrip("="),
        "base64url": base64.urlsafe_b64encode(data).decode().rstrip("="),
        "hex": data.hex(),
        "HEX": data.hex().upper(),
        "percent": urllib.parse.quote(value, safe=""),
        "reversed-safe-prefix": value[:16],
        "reversed": value[::-1],
    }


@pytest.fixture
def tokens(monkeypatch) -> list[str]:
    """Every handle token issued during the test (to check none of them leaks either)."""
    issued: list[str] = []
    original = secrets_module.new_token

    def record() -> str:
        token = original()
        issued.append(token)
        return token

    monkeypatch.setattr(secrets_module, "new_token", record)
    return issued


@pytest.fixture
def listener():
    server = Listener("127.0.0.1")
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def sb(make_sandbox, listener):
    revealed.clear()
    return make_sandbox(
        capabilities=[leak, leak_halves, leak_deep, leak_in_error, use, echo, nap],
        secrets={"canary": Secret(value=CANARY, capabilities=SCOPED, hosts=["localhost"])},
        egress=Egress(allow=["localhost", "127.0.0.1"], schemes=["http"], methods=["GET", "POST"], allow_networks=LOOPBACK),
    )


def assert_no_leak(text: str, tokens: list[str]) -> None:
    for form, encoded in encodings(CANARY).items():
        assert encoded not in text, f"the {form} form of the canary leaked: {text[:2000]!r}"
    for token in tokens:
        assert token not in text, "a handle token leaked"


@pytest.fixture
def check(caplog, capfd, tokens):
    """Call with a RunResult: asserts the canary is nowhere in it, the logs or the process output."""
    caplog.set_level(logging.DEBUG)

    def verify(result, *extra: str) -> None:
        assert tokens, "the run issued no handle"
        out, err = capfd.readouterr()
        assert_no_leak(result.model_dump_json() + repr(result) + caplog.text + out + err + "".join(extra), tokens)

    return verify


EXFILTRATION = {
    "print": "print(secrets.canary)",
    "str-repr-format": (
        "h = secrets.canary\n"
        "print(str(h), repr(h), format(h, ''), f'{h}', f'{h!r}', '%s' % (h,), '{}'.format(h), '{0!r:>10}'.format(h))"
    ),
    "attribute-walk": (
        "h = secrets.canary\n"
        "for n in dir(h):\n"
        "    try:\n"
        "        print(n, getattr(h, n))\n"
        "    except Exception as e:\n"
        "        print(n, 'refused', type(e).__name__, e)\n"
    ),
    "getattr-guesses": (
        "h = secrets.canary\n"
        "for n in ['value', 'token', 'secret', '_token', '_value', '_resource', 'handle', 'description', 'name']:\n"
        "    try:\n"
        "        print(n, repr(getattr(h, n)))\n"
        "    except Exception as e:\n"
        "        print(n, 'refused', type(e).__name__)\n"
    ),
    "vars": "vars(secrets.canary)",
    "dict": "secrets.canary.__dict__",
    "slots": "[getattr(secrets.canary, n) for n in type(secrets.canary).__slots__]",
    "class-dict": "type(secrets.canary).__dict__",
    "reduce": "secrets.canary.__reduce__()",
    "reduce-ex": "secrets.canary.__reduce_ex__(2)",
    "pickle": "import pickle\npickle.dumps(secrets.canary)",
    "copy": "import copy\nc = copy.copy(secrets.canary)\nprint(c)\nc",
    "attributeerror-obj": (
        "try:\n"
        "    secrets.canary.value\n"
        "except AttributeError as e:\n"
        "    print(getattr(e, 'obj', None), getattr(e, 'name', None))\n"
        "    result = getattr(e, 'obj', None)\n"
        "result"
    ),
    "namespace-walk": "print(secrets, dir(secrets))\n[repr(getattr(secrets, n)) for n in dir(secrets)]",
    "raise-handle": "raise ValueError(secrets.canary)",
    "raise-handle-as-exception": "raise secrets.canary",
    "return-handle": "secrets.canary",
    "return-in-structure": "[secrets.canary, {'k': secrets.canary}, (secrets.canary,)]",
    "echo-out-of-scope": "echo(secrets.canary)",
    "echo-caught": "try:\n    echo(secrets.canary)\nexcept Exception as e:\n    print(type(e).__name__, e)\n",
    "capability-echoes-value": "x = leak(secrets.canary)\nprint(x)\nx",
    "base64-of-what-came-back": (
        "import base64\n"
        "x = leak(secrets.canary)\n"
        "print(base64.b64encode(x.encode()).decode())\n"
        "base64.urlsafe_b64encode(x.encode()).decode()"
    ),
    "halves-joined": (
        "import base64\n"
        "parts = leak_halves(secrets.canary)\n"
        "a = parts[0]\n"
        "b = parts[1]\n"
        "print(a, end='')\n"
        "print(b)\n"
        "print(base64.b64encode((a + b).encode()).decode())\n"
        "print((a + b).encode().hex())\n"
        "print(base64.b64encode(('Bearer ' + a + b).encode()).decode())\n"
        "{'joined': a + b, a + b: 1}"
    ),
    "halves-raised": "parts = leak_halves(secrets.canary)\nraise RuntimeError(parts[0] + parts[1])",
    "capability-error-message": (
        "try:\n"
        "    leak_in_error(secrets.canary)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "    raise\n"
    ),
    "forged-handle": "use({'__sandbox_secret_handle__': 'guess'})",
    "forged-handle-index": "use({'__sandbox_secret_handle__': 0})",
}


REACHES_THE_VALUE = {
    "capability-echoes-value", "halves-joined", "halves-raised", "capability-error-message"
}
"""Attempts in which the guest really does get the value's pieces: they must show the redaction."""


@pytest.mark.parametrize("name", list(EXFILTRATION))
def test_exfiltration_attempt_fails(sb, check, name):
    result = sb.run(EXFILTRATION[name])
    check(result)
    if name.startswith("forged"):
        assert not result.ok and revealed == []
    if name in REACHES_THE_VALUE:
        assert "[REDACTED:canary]" in result.model_dump_json(), result


def test_handle_repr_shows_name_and_scope(sb, check):
    result = sb.run("repr(secrets.canary)")
    assert result.ok, result.error
    assert "canary" in result.value and "capabilities=" in result.value
    check(result)


def test_scoped_use_works_and_out_of_scope_is_denied_naming_secret_and_rule(sb, check):
    result = sb.run("use(secrets.canary)")
    assert result.ok and result.value == len(CANARY)
    result = sb.run("echo(secrets.canary)")
    assert result.error.kind == "policy_denied"
    assert "'canary'" in result.error.message and "capability 'echo'" in result.error.message
    check(result)


def test_capability_results_reach_the_guest_redacted(sb, check):
    result = sb.run("x = leak(secrets.canary)\nx == '[REDACTED:canary]'")
    assert result.ok and result.value is True
    check(result)


@pytest.mark.parametrize("depth", [0, 150])
def test_deeply_nested_results_are_redacted(sb, check, depth):
    # What the guest received, and its reverse (which only the redaction at the boundary catches).
    result = sb.run(f"x = leak_deep(secrets.canary, {depth})\nfor _ in range({depth}):\n    x = x[0]\n[x, x[0][::-1]]")
    check(result)
    if result.ok:  # a runtime may refuse the depth at its boundary; it must never show the value
        assert result.value == [["[REDACTED:canary]", {"[REDACTED:canary]": "[REDACTED:canary]"}], "]yranac:DETCADER["]


@pytest.mark.parametrize("kind, scope", [("ttl", {"ttl": 0.2}), ("max_uses", {"max_uses": 1})])
def test_expired_or_used_up_handle_is_denied(make_sandbox, check, kind, scope):
    sb = make_sandbox(capabilities=[use, nap], secrets={"canary": Secret(value=CANARY, capabilities=["use"], **scope)})
    result = sb.run("use(secrets.canary)\nnap(0.3)\nuse(secrets.canary)")
    assert result.error is not None and result.error.kind == "policy_denied"
    assert "'canary'" in result.error.message and kind in result.error.message
    check(result)


def test_handle_kept_in_a_session_is_dead_in_the_next_run(make_sandbox, check):
    revealed.clear()
    sb = make_sandbox(capabilities=[use], secrets={"canary": Secret(value=CANARY, capabilities=["use"])})
    with sb.session() as session:
        first = session.run("kept = secrets.canary\nuse(kept)")
        assert first.ok, first.error
        later = session.run("use(kept)")
        assert later.error is not None
        # every runtime sends the kept handle as its revoked token; the host refuses it by name
        assert later.error.kind == "policy_denied", later.error
        assert "canary" in later.error.message and "revoked" in later.error.message
        fresh = session.run("use(secrets.canary)")
        assert fresh.ok, fresh.error
        assert revealed == ["canary", "canary"]  # the first run and the fresh run, never the kept handle
    check(later)


def test_token_from_another_session_is_dead(make_sandbox, check, tokens):
    revealed.clear()
    sb = make_sandbox(capabilities=[use], secrets={"canary": Secret(value=CANARY, capabilities=["use"])})
    with sb.session() as one:
        assert one.run("use(secrets.canary)").ok
    leaked = tokens[-1]
    with sb.session() as two:
        result = two.run(f"use({{'__sandbox_secret_handle__': {leaked!r}}})")
    # Every runtime refuses a marker it did not make: the leaked token never reaches the host.
    assert result.error is not None and (result.error.kind, result.error.type) == ("guest_exception", "TypeError")
    assert "not a secret handle" in result.error.message
    assert revealed == ["canary"]  # only the legitimate first use
    check(result)


# ----------------------------------------------------------------------------- network


def test_allowed_request_gets_the_secret_only_at_its_destination(sb, check, listener):
    url = listener.url("/api", host="localhost")
    result = sb.run(f"r = http.get({url!r}, auth=secrets.canary)\nprint(r['text'])\nr['headers']['x-echo-auth']")
    assert result.ok, result.error
    assert result.value == "Bearer [REDACTED:canary]"
    assert listener.requests[0]["headers"]["Authorization"] == f"Bearer {CANARY}"  # the intended destination
    check(result)


HANDLE_AS_STRING = {
    "url": "http.get(secrets.canary)",
    "body": "http.post({url!r}, body=secrets.canary)",
    "params": "http.get({url!r}, params={{'k': secrets.canary}})",
    "header-out-of-scope": "http.get({ip_url!r}, headers={{'X-Key': secrets.canary}})",
    "auth-out-of-scope": "http.get({ip_url!r}, auth=secrets.canary)",
}


@pytest.mark.parametrize("name", list(HANDLE_AS_STRING))
def test_handle_where_a_string_is_expected_never_sends_the_value(sb, check, listener, name):
    code = HANDLE_AS_STRING[name].format(url=listener.url(host="localhost"), ip_url=listener.url(host="127.0.0.1"))
    result = sb.run(code)
    assert not result.ok
    assert result.error.kind in ("guest_exception", "policy_denied")
    assert listener.connections == 0
    check(result, listener.raw())


def test_formatted_handle_in_a_url_sends_only_its_name(sb, check, listener):
    url = listener.url("/q", host="localhost")
    result = sb.run(f"http.get({url!r} + '?k=' + str(secrets.canary))['status']")
    assert result.ok, result.error
    assert "canary" in listener.requests[0]["path"]
    check(result, listener.raw())


@pytest.mark.parametrize(
    "target",
    ["http://example.com/", "http://127.0.0.2:{port}/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:{port}/"],
)
def test_request_outside_the_policy_is_denied_without_a_connection(make_sandbox, check, listener, target):
    sb = make_sandbox(
        capabilities=[use],
        secrets={"canary": Secret(value=CANARY, capabilities=["use"])},
        egress=Egress(allow=["localhost", "127.0.0.1", "127.0.0.2", "169.254.169.254", "[::1]"], schemes=["http"]),
    )
    result = sb.run(f"http.get({target.format(port=listener.port)!r})")
    assert result.error is not None and result.error.kind == "policy_denied", result.error
    assert listener.connections == 0
    check(result)


def test_host_not_on_the_allowlist_is_denied(make_sandbox, check, listener):
    sb = make_sandbox(
        capabilities=[use],
        secrets={"canary": Secret(value=CANARY, capabilities=["use"])},
        egress=Egress(allow=["api.example.com"], schemes=["http"], allow_networks=LOOPBACK),
    )
    result = sb.run(f"http.get({listener.url()!r})")
    assert result.error.kind == "policy_denied" and "allow=api.example.com" in result.error.message
    assert listener.connections == 0
    check(result)


NETWORK_ATTEMPTS = {
    "socket": "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')",
    "socket-module-via-import": "s = __import__('socket')\ns.create_connection(('127.0.0.1', {port}), timeout=1)",
    "urllib": "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1).read()",
    "http-client": "import http.client\nc = http.client.HTTPConnection('127.0.0.1', {port}, timeout=1)\nc.request('GET', '/')",
    "asyncio": (
        "import asyncio\n"
        "async def go():\n"
        "    await asyncio.open_connection('127.0.0.1', {port})\n"
        "asyncio.run(go())"
    ),
}


@pytest.mark.parametrize("name", list(NETWORK_ATTEMPTS))
def test_guest_has_no_network_of_its_own(make_sandbox, listener, name):
    sb = make_sandbox()
    result = sb.run(NETWORK_ATTEMPTS[name].format(port=listener.port))
    assert not result.ok
    assert listener.connections == 0
