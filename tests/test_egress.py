"""The built-in ``http`` capability against real loopback servers (127.0.0.x only).

Every denial is checked on the wire: the listener that would have been reached records no
connection at all. Secret injection is checked by what the listener actually received.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from loopback import Listener
from sandbox import Sandbox
from sandbox.egress import Egress, EgressClient, address_refusal
from sandbox.runtime import CapabilityFault
from sandbox.secrets import Secret, SecretBroker

CANARY = "CANARY-e61b0c2f9d8a4b7c93e5f1a2d4c6b8e0"
LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for server in made:
        server.shutdown()
        server.server_close()


@pytest.fixture
def a(listeners) -> Listener:
    listeners.append(Listener("127.0.0.1"))
    return listeners[-1]


@pytest.fixture
def b(listeners) -> Listener:
    listeners.append(Listener("127.0.0.1"))
    return listeners[-1]


@pytest.fixture
def other_address(listeners) -> Listener:
    listeners.append(Listener("127.0.0.2"))
    return listeners[-1]


def client(**kwargs) -> EgressClient:
    kwargs.setdefault("schemes", ["http"])
    kwargs.setdefault("allow_networks", LOOPBACK)
    return EgressClient(Egress(**kwargs))


def denied(func, *args, **kwargs) -> CapabilityFault:
    with pytest.raises(CapabilityFault) as info:
        func(*args, **kwargs)
    assert info.value.guest_type == "PolicyDenied", info.value.message
    return info.value


def secret_value(hosts, capability="http.get", **scope):
    broker = SecretBroker({"canary": Secret(value=CANARY, capabilities=["http"], hosts=hosts, **scope)})
    return broker, broker.resolve(broker.handles[0].token, capability)


# ----------------------------------------------------------------------------- configuration


def test_egress_validation():
    with pytest.raises(ValueError, match="at least one host"):
        Egress(allow=[])
    with pytest.raises(ValueError, match="not supported"):
        Egress(allow=["x.com"], methods=["BREW"])
    with pytest.raises(ValueError, match="schemes"):
        Egress(allow=["x.com"], schemes=["ftp"])
    with pytest.raises(ValueError, match="CIDR"):
        Egress(allow=["x.com"], allow_networks=["localhost"])
    with pytest.raises(ValueError):
        Egress(allow=["https://x.com/path"])
    assert Egress(allow="X.com", methods="get").methods == ("GET",)


@pytest.mark.parametrize(
    "address, refused",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("172.16.5.4", "private"),
        ("100.64.0.1", "private"),  # CGNAT
        ("169.254.169.254", "metadata"),
        ("fe80::1", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a9fe:a9fe", "metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("fc00::1", "private"),
        ("240.0.0.1", "reserved"),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_policy(address, refused):
    reason = address_refusal(address, Egress(allow=["*"]))
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


def test_allow_private_keeps_metadata_refused():
    egress = Egress(allow=["*"], allow_private=True)
    assert address_refusal("10.0.0.1", egress) is None
    assert address_refusal("127.0.0.1", egress) is None
    assert address_refusal("169.254.169.254", egress) is not None
    assert address_refusal("169.254.169.254", Egress(allow=["*"], allow_networks=["169.254.169.254/32"])) is None


# ----------------------------------------------------------------------------- requests on the wire


def test_allowed_get(a):
    http = client(allow=["127.0.0.1"])
    response = http.request("GET", a.url("/hello"), params={"q": "1"})
    assert response["status"] == 200
    assert json.loads(response["text"])["path"] == "/hello?q=1"
    assert a.connections == 1


def test_host_not_on_the_list_is_denied_without_a_connection(a):
    fault = denied(client(allow=["api.example.com"]).request, "GET", a.url())
    assert "127.0.0.1" in fault.message and "allow=api.example.com" in fault.message
    fault = denied(client(allow=[f"127.0.0.1:{a.port + 1}"]).request, "GET", a.url())
    assert a.connections == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433", "0x7f000001"])
def test_private_addresses_are_refused_without_a_connection(a, host):
    http = EgressClient(Egress(allow=["*"], schemes=["http"]))
    fault = denied(http.request, "GET", f"http://{host}:{a.port}/")
    assert "refused" in fault.message or "resolves to" in fault.message
    assert a.connections == 0


def test_metadata_address_is_refused_before_connecting(monkeypatch):
    attempts = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: attempts.append(a) or (_ for _ in ()).throw(OSError()))
    http = EgressClient(Egress(allow=["*"], schemes=["http"], allow_private=True))
    fault = denied(http.request, "GET", "http://169.254.169.254/latest/meta-data/")
    assert "metadata" in fault.message
    assert attempts == []


def test_method_and_scheme_are_checked_before_connecting(a):
    denied(client(allow=["127.0.0.1"]).request, "POST", a.url(), body="x")
    denied(EgressClient(Egress(allow=["127.0.0.1"], allow_networks=LOOPBACK)).request, "GET", a.url())  # https only
    with pytest.raises(CapabilityFault):
        client(allow=["*"]).request("GET", f"file:///etc/passwd")
    assert a.connections == 0


def test_proxy_environment_is_ignored(a, b, monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(var, b.url())
    response = client(allow=["127.0.0.1"]).request("GET", a.url())
    assert response["status"] == 200
    assert a.connections == 1 and b.connections == 0


def test_dns_answers_are_checked_and_pinned(a, other_address):
    calls = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        # The first answer is the one checked; a later one (rebinding) would point elsewhere.
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    http = EgressClient(Egress(allow=["rebind.test"], schemes=["http"], allow_networks=LOOPBACK), resolve=resolver)
    response = http.request("GET", f"http://rebind.test:{a.port}/")
    assert response["status"] == 200
    assert calls == ["rebind.test"]  # one lookup, and the connection went to its checked answer
    assert a.connections == 1 and other_address.connections == 0
    assert a.requests[0]["headers"]["Host"] == f"rebind.test:{a.port}"

    mixed = EgressClient(
        Egress(allow=["rebind.test"], schemes=["http"], allow_networks=LOOPBACK),
        resolve=lambda host, port: ["127.0.0.1", "127.0.0.2"],
    )
    fault = denied(mixed.request, "GET", f"http://rebind.test:{a.port}/")
    assert "127.0.0.2" in fault.message
    assert a.connections == 1 and other_address.connections == 0


def test_redirects_are_rechecked_against_the_allowlist(a, b):
    http = client(allow=[f"127.0.0.1:{a.port}"])
    fault = denied(http.request, "GET", a.url(f"/redirect?to={b.url('/x')}"))
    assert "redirect" in fault.message
    assert a.connections == 1 and b.connections == 0


def test_redirects_are_rechecked_against_the_address_policy(a, other_address):
    http = client(allow=["*"])  # 127.0.0.2 is not in allow_networks
    fault = denied(http.request, "GET", a.url(f"/redirect?to={other_address.url('/x')}"))
    assert "127.0.0.2" in fault.message
    assert other_address.connections == 0


def test_redirect_limits_and_method_rewrite(a):
    http = client(allow=["127.0.0.1"], methods=["GET", "POST"], max_redirects=2)
    loop = a.url("/redirect?to=/redirect%3Fto%3D/redirect%253Fto%253D/end")
    with pytest.raises(CapabilityFault, match="max_redirects=2"):
        http.request("GET", loop)
    response = http.request("POST", a.url("/redirect?code=303&to=/after"), body="payload")
    assert json.loads(response["text"])["method"] == "GET"
    assert json.loads(response["text"])["path"] == "/after"
    response = http.request("POST", a.url("/redirect?code=307&to=/kept"), body="payload")
    assert json.loads(response["text"])["body"] == "payload"
    assert client(allow=["127.0.0.1"], max_redirects=0).request("GET", a.url("/redirect?to=/x"))["status"] == 302


def test_response_size_and_time_limits(a):
    http = client(allow=["127.0.0.1"], max_response_bytes=1000)
    assert len(http.request("GET", a.url("/big?n=1000"))["text"]) == 1000
    with pytest.raises(CapabilityFault, match="max_response_bytes=1000"):
        http.request("GET", a.url("/big?n=1001"))
    with pytest.raises(CapabilityFault, match="max_response_bytes=1000"):
        http.request("GET", a.url("/bomb"))
    http = client(allow=["127.0.0.1"], max_response_bytes=1000, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(CapabilityFault, match="timed out"):
        http.request("GET", a.url("/slow?s=3"))
    assert time.monotonic() - started < 2


def test_host_controlled_headers_cannot_be_set(a):
    http = client(allow=["127.0.0.1"])
    for header in ["Host", "Transfer-Encoding", "Proxy-Authorization"]:
        with pytest.raises(CapabilityFault, match="set by the host"):
            http.request("GET", a.url(), headers={header: "x"})
    assert a.connections == 0


# ----------------------------------------------------------------------------- secret injection


def test_secret_is_injected_only_for_hosts_in_its_scope(a):
    http = client(allow=["127.0.0.1", "localhost"])
    _, token = secret_value(["localhost"])
    response = http.request("GET", a.url(host="localhost"), auth=token)
    assert a.requests[-1]["headers"]["Authorization"] == f"Bearer {CANARY}"
    assert response["headers"]["x-echo-auth"] == f"Bearer {CANARY}"  # the bridge redacts this; see below

    _, header_token = secret_value(["localhost"])
    http.request("GET", a.url(host="localhost"), headers={"X-Api-Key": header_token})
    assert a.requests[-1]["headers"]["X-Api-Key"] == CANARY
    _, basic = secret_value(["localhost"])
    http.request("GET", a.url(host="localhost"), auth=("bot", basic))
    assert a.requests[-1]["headers"]["Authorization"].startswith("Basic ")
    connections = a.connections

    _, out_of_scope = secret_value(["localhost"])
    fault = denied(http.request, "GET", a.url(host="127.0.0.1"), headers={"X-Api-Key": out_of_scope})
    assert "secret 'canary' may not be sent to 127.0.0.1" in fault.message and "hosts=localhost" in fault.message
    _, no_hosts = secret_value([])
    denied(http.request, "GET", a.url(host="localhost"), auth=no_hosts)
    assert a.connections == connections
    assert CANARY not in "".join(r["raw"] for r in a.requests if "localhost" not in r["headers"].get("Host", ""))


def test_secret_headers_are_dropped_when_a_redirect_leaves_the_scope(a, b):
    http = client(allow=["localhost", "127.0.0.1"])
    _, token = secret_value([f"localhost:{a.port}"])
    http.request("GET", a.url(f"/redirect?to={b.url('/landing')}", host="localhost"), auth=token)
    assert a.requests[0]["headers"]["Authorization"] == f"Bearer {CANARY}"
    assert b.requests[0]["path"] == "/landing"
    assert CANARY not in b.raw() and "Authorization" not in b.requests[0]["headers"]


def test_one_call_counts_as_one_use_even_across_redirects(a):
    http = client(allow=["localhost"])
    broker, token = secret_value(["localhost"], max_uses=1)
    http.request("GET", a.url("/redirect?to=/again", host="localhost"), auth=token)
    assert [r["headers"].get("Authorization") for r in a.requests] == [f"Bearer {CANARY}"] * 2
    fault = denied(broker.resolve, broker.handles[0].token, "http.get")
    assert "max_uses=1" in fault.message


# ----------------------------------------------------------------------------- through a Sandbox


def test_http_through_the_sandbox_redacts_echoes_and_refuses_handles_as_strings(a, make_sandbox):
    sb = make_sandbox(
        egress=Egress(allow=["localhost", "127.0.0.1"], schemes=["http"], methods=["GET", "POST"], allow_networks=LOOPBACK),
        secrets={"canary": Secret(value=CANARY, capabilities=["http"], hosts=["localhost"])},
    )
    assert {"http.request", "http.get", "http.post"} <= set(sb.capabilities)
    stub = sb.describe().stub
    assert "def get(url: str" in stub and "Allowed hosts: localhost, 127.0.0.1" in stub
    local, other = a.url(host="localhost"), a.url()
    result = sb.run(f"""
import json
seen = {{}}
echoed = http.get({local!r}, auth=secrets.canary)
seen["echo"] = echoed["headers"]["x-echo-auth"]
seen["echoed_body"] = json.loads(echoed["text"])["headers"]["Authorization"]
attempts = {{
    "url": lambda: http.get(secrets.canary),
    "body": lambda: http.post({local!r}, body=secrets.canary),
    "params": lambda: http.get({local!r}, params={{"k": secrets.canary}}),
    "json": lambda: http.post({local!r}, json_body={{"k": secrets.canary}}),
    "header out of scope": lambda: http.get({other!r}, headers={{"X": secrets.canary}}),
}}
for label, call in attempts.items():
    try:
        call()
        seen[label] = "sent"
    except Exception as fault:
        seen[label] = type(fault).__name__
# A formatted handle is its description: the name goes out, never the value.
http.get({local!r} + "?k=" + repr(secrets.canary))
seen
""")
    assert result.ok, result.error
    assert result.value["echo"] == result.value["echoed_body"] == "Bearer [REDACTED:canary]"
    assert result.value["url"] == "ValueError"
    assert result.value["body"] == "ValueError"
    assert result.value["params"] == "ValueError"
    assert result.value["json"] == "CapabilityError"  # a SecretValue is not JSON
    assert result.value["header out of scope"] == "PolicyDenied"
    assert CANARY not in result.model_dump_json()
    assert len(a.requests) == 2  # the scoped call and the description-only call
    assert "canary" in a.requests[1]["path"] and CANARY not in a.requests[1]["raw"]


def test_debug_logs_of_a_request_never_carry_the_value(a, caplog):
    caplog.set_level("DEBUG")
    http = client(allow=["localhost"])
    _, token = secret_value(["localhost"])
    response = http.request("GET", a.url(host="localhost"), auth=token)
    assert response["headers"]["x-echo-auth"] == f"Bearer {CANARY}"  # the server echoed it back
    assert "receive_response_headers" in caplog.text  # httpcore traced the exchange...
    assert CANARY not in caplog.text  # ...without the value


# ----------------------------------------------------------------------------- hostile responses


def _peak_bytes(func) -> tuple[int, object]:
    """Peak Python-heap bytes allocated while ``func`` runs (zlib output is a bytes object: counted)."""
    tracemalloc.start()
    try:
        try:
            outcome: object = func()
        except CapabilityFault as fault:
            outcome = fault
        return tracemalloc.get_traced_memory()[1], outcome
    finally:
        tracemalloc.stop()


def test_stacked_content_encodings_are_refused_before_decoding(a):
    http = client(allow=["127.0.0.1"], max_response_bytes=1 << 20)
    peak, outcome = _peak_bytes(lambda: http.request("GET", a.url(f"/layers?n={256 << 20}&k=2")))
    assert isinstance(outcome, CapabilityFault) and outcome.guest_type == "CapabilityError"
    assert "2 content encodings" in outcome.message and "at most one" in outcome.message
    assert peak < 16 << 20, f"decoding allocated {peak >> 20} MiB"


def test_one_gzip_layer_is_decoded_within_the_limit_while_streaming(a):
    http = client(allow=["127.0.0.1"], max_response_bytes=1000)
    # 64 MiB of zeros, gzipped (the in-process server itself allocates about 1 MiB to make it)
    peak, outcome = _peak_bytes(lambda: http.request("GET", a.url(f"/layers?n={64 << 20}&k=1")))
    assert isinstance(outcome, CapabilityFault) and "max_response_bytes=1000" in outcome.message
    assert peak < 4 << 20, f"decoding allocated {peak >> 20} MiB"
    ok = client(allow=["127.0.0.1"], max_response_bytes=1 << 20).request("GET", a.url("/layers?n=5000&k=1"))
    assert ok["text"] == "\0" * 5000


@pytest.mark.parametrize(
    "charset, body, expected",
    [
        ("punycode", "bücher-" + "a" * 5000, None),  # not on the list: decoded as UTF-8
        ("x-user-defined", "héllo", None),
        ("utf-16", "héllo wörld", "héllo wörld"),
        ("UTF_16LE", "héllo", "héllo"),
        ("iso-8859-1", "héllo", "héllo"),
        ("windows-1252", "€uro", "€uro"),
        ("us-ascii", "plain", "plain"),
    ],
)
def test_only_listed_charsets_decode_the_text(a, charset, body, expected):
    codec = {"utf-16": "utf-16", "UTF_16LE": "utf-16-le", "iso-8859-1": "latin-1", "windows-1252": "cp1252"}.get(charset, "utf-8")
    raw = body.encode(codec)
    response = client(allow=["127.0.0.1"]).request("GET", a.url(f"/text?charset={charset}&hex={raw.hex()}"))
    assert response["text"] == (expected if expected is not None else raw.decode("utf-8", "replace"))


def test_get_and_head_carry_no_body(a):
    http = client(allow=["127.0.0.1"], methods=["GET", "HEAD", "POST"])
    for method in ("GET", "HEAD", "get"):
        with pytest.raises(CapabilityFault, match="carries no body"):
            http.request(method, a.url(), body="GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(CapabilityFault, match="carries no body"):
            http.request(method, a.url(), json_body={"x": 1})
    assert a.connections == 0
    assert http.request("POST", a.url(), body="fine")["status"] == 200


class _SmugglingServer:
    """Answers the first request on each connection, then pushes a forged second response on it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(65536)
            honest = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest"
            forged = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nFORGED"
            conn.sendall(honest + forged)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        self.sock.close()


def test_no_connection_is_reused_between_calls():
    server = _SmugglingServer()
    try:
        http = client(allow=["127.0.0.1"])
        url = f"http://127.0.0.1:{server.port}/"
        assert [http.request("GET", url)["text"] for _ in range(3)] == ["honest"] * 3
        deadline = time.monotonic() + 2
        while server.accepted < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.accepted == 3
    finally:
        server.close()


def test_the_whole_call_is_bounded_by_its_deadline(a):
    http = client(allow=["127.0.0.1"], timeout=0.5)
    started = time.monotonic()
    with pytest.raises(CapabilityFault, match="timed out"):
        http.request("GET", a.url("/slow?s=3"))
    assert time.monotonic() - started < 1.5


def test_policy_rules_hold_for_http_request_and_count_per_rule(a, make_sandbox):
    from sandbox.policy import Constraint, Policy, Rule

    egress = Egress(allow=["127.0.0.1"], schemes=["http"], methods=["GET", "POST"], allow_networks=LOOPBACK)
    rules = {"http.get": Rule(args={"url": Constraint(pattern=r".*/allowed.*")}), "http.*": Rule(max_calls=1)}
    sb = make_sandbox(egress=egress, policy=Policy(rules=rules, escalate_after=0))
    forbidden, allowed = a.url("/forbidden"), a.url("/allowed")
    result = sb.run(f"""
outcomes = []
for call in (
    lambda: http.request("GET", {forbidden!r}),  # the http.get rule holds
    lambda: http.get({allowed!r}),  # governed by the exact http.get rule only
    lambda: http.post({allowed!r}, body="x"),  # the one call http.* admits
    lambda: http.request("POST", {allowed!r}, body="x"),  # http.* again: refused
):
    try:
        outcomes.append(call()["status"])
    except Exception as fault:
        outcomes.append(type(fault).__name__)
outcomes
""")
    assert result.ok, result.error
    assert result.value == ["PolicyDenied", 200, 200, "PolicyDenied"]
    assert [r["path"] for r in a.requests] == ["/allowed", "/allowed"]
