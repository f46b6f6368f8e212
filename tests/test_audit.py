"""`sandbox.audit`: run records, the signed hash-chained JSONL sink, `verify`, summaries, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sandbox.audit import (
    GENESIS,
    JsonlSink,
    MemorySink,
    RecordSink,
    RunRecord,
    RunRecorder,
    SecretGrant,
    generate_signing_key,
    load_private_key,
    load_public_key,
    private_key_pem,
    public_key_pem,
    read_records,
    summarize,
    summarize_arguments,
    verify,
)
from sandbox.errors import ConfigurationError
from sandbox.policy import Principal, Verdict
from sandbox.results import ErrorInfo, RunResult, Usage

CANARY = "sk-canary-5f1e2d"


def make_record(n: int = 0, *, redact=None) -> RunRecord:
    recorder = RunRecorder(
        run_id=f"run{n:04d}",
        code=f"x = {n}\nprint(x)",
        runtime="restricted",
        isolation="none",
        principal=Principal(id="agent:etl", on_behalf_of="alice", task="T-12"),
        limits={"cpu_seconds": 1.0},
        capabilities=["fs.read", "get_weather"],
        policy="Policy(default=allow)",
        secrets=[SecretGrant(name="github", capabilities=("http",), hosts=("api.github.com",), ttl_seconds=60,
                             max_uses=3)],
        redact=redact,
    )
    recorder.call("get_weather", {"city": "Paris"}, "ok", verdict=Verdict(True, "allow", "", "default"),
                  duration=0.002)
    recorder.call("fs.read", {"path": "/etc/passwd", "token": CANARY}, "denied",
                  verdict=Verdict(False, "deny", "argument 'path' must be under '/data/'", "capabilities.fs.read"),
                  duration=0.0001)
    result = RunResult(
        ok=False,
        stdout=f"{n}\n",
        value=[n, 1.5],
        error=ErrorInfo(kind="policy_denied", type="PolicyDenied", message=f"denied with {CANARY}"),
        usage=Usage(wall_seconds=0.01, cpu_seconds=0.005, capability_calls=2),
        run_id=f"run{n:04d}",
        runtime="restricted",
        isolation="none",
        layers=("restricted-python",),
    )
    return recorder.finish(result)


def redact(text: str) -> str:
    return text.replace(CANARY, "[REDACTED:github]")


@pytest.fixture(scope="module")
def key():
    return generate_signing_key()


def write_records(path: Path, key, count: int = 5) -> JsonlSink:
    sink = JsonlSink(path, signing_key=key)
    for n in range(count):
        sink.emit(make_record(n, redact=redact))
    return sink


def test_record_shape_and_hashes():
    record = make_record(7)
    data = record.to_json()
    assert data["schema"] == "sandbox.run-record/1"
    assert data["principal"] == {"id": "agent:etl", "on_behalf_of": "alice", "task": "T-12", "roles": [],
                                 "attributes": {}}
    assert len(data["code_sha256"]) == 64 and data["code_bytes"] == len("x = 7\nprint(x)")
    assert data["secrets"] == [{"name": "github", "capabilities": ["http"], "hosts": ["api.github.com"],
                                "ttl_seconds": 60.0, "max_uses": 3}]
    assert [c["status"] for c in data["calls"]] == ["ok", "denied"]
    assert data["calls"][1]["reason"] == "argument 'path' must be under '/data/'"
    assert data["outcome"]["kind"] == "policy_denied"
    assert data["layers"] == ["restricted-python"]
    assert RunRecord.model_validate(data) == record
    assert set(data) >= {"run_id", "started_at", "finished_at", "stdout_sha256", "stderr_sha256", "value_sha256",
                         "usage", "limits", "capabilities", "isolation", "runtime"}


def test_redaction_reaches_every_field():
    record = make_record(1, redact=redact)
    assert CANARY not in json.dumps(record.to_json())
    assert "[REDACTED:github]" in record.calls[1].arguments["token"]
    assert "[REDACTED:github]" in (record.outcome.message or "")


def test_argument_summary_is_short():
    summary = summarize_arguments(
        {"s": "x" * 500, "n": 3, "rows": list(range(1000)), "h": {"__sandbox_secret_handle__": "tok"}, "b": b"ab"}
    )
    assert summary["s"].endswith("...(500 chars)") and len(summary["s"]) < 100
    assert summary == {**summary, "n": "3", "rows": "<list of 1000>", "h": "<secret>", "b": "<2 bytes>"}


def test_memory_sink_is_a_record_sink():
    sink = MemorySink()
    assert isinstance(sink, RecordSink)
    sink.emit(make_record())
    assert len(sink.records) == 1


def test_jsonl_chain_verifies(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    sink = write_records(path, key)
    report = verify(path, key.public_key())
    assert report.ok and report.records == 5 and report.head == sink.head
    lines = path.read_bytes().splitlines()
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert first["prev"] == GENESIS and first["seq"] == 0
    assert second["prev"] == first["hash"] and second["seq"] == 1
    assert [r.run_id for r in read_records(path)] == [f"run{n:04d}" for n in range(5)]
    assert CANARY not in path.read_text()


def test_a_second_sink_continues_the_chain(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, key, 2)
    write_records(path, key, 2)
    assert verify(path, key.public_key()).records == 4


def test_concurrent_emits_keep_the_chain(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    sinks = [JsonlSink(path, signing_key=key) for _ in range(2)]

    def worker(sink):
        for n in range(10):
            sink.emit(make_record(n))

    threads = [threading.Thread(target=worker, args=(sinks[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = verify(path, key.public_key())
    assert report.ok and report.records == 40, report


def test_verify_catches_an_altered_byte(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, key)
    data = bytearray(path.read_bytes())
    lines = data.split(b"\n")
    target = sum(len(line) + 1 for line in lines[:2]) + lines[2].index(b'"code_bytes":') + len(b'"code_bytes":')
    data[target] = ord("9") if data[target] != ord("9") else ord("8")
    path.write_bytes(bytes(data))
    report = verify(path, key.public_key())
    assert not report.ok and report.bad_line == 3 and report.run_id == "run0002"
    assert "altered" in report.problem


@pytest.mark.parametrize("offset", [5, 40, 120, 300, -30, -3])
def test_verify_catches_any_altered_byte(tmp_path: Path, key, offset):
    path = tmp_path / "records.jsonl"
    write_records(path, key, 3)
    data = bytearray(path.read_bytes())
    second = data.index(b"\n") + 1
    end = data.index(b"\n", second)
    index = second + offset if offset >= 0 else end + offset
    data[index] = data[index] ^ 0x01
    path.write_bytes(bytes(data))
    report = verify(path, key.public_key())
    assert not report.ok and report.bad_line == 2


def test_verify_catches_a_deleted_line(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, key)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    report = verify(path, key.public_key())
    assert not report.ok and report.bad_line == 3 and report.run_id == "run0003"
    assert "removed" in report.problem


def test_verify_catches_a_deleted_first_line(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, key)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[1:]))
    assert verify(path, key.public_key()).bad_line == 1


def test_verify_catches_swapped_lines(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, key)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    report = verify(path, key.public_key())
    assert not report.ok and report.bad_line == 2 and report.run_id == "run0002"


def test_verify_catches_a_cut_tail_with_expected_head(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    sink = write_records(path, key)
    head = sink.head
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:-1]))
    assert verify(path, key.public_key()).ok  # a shorter chain is still a chain...
    report = verify(path, key.public_key(), expected_head=head)  # ...unless the head was anchored
    assert not report.ok and "removed from the end" in report.problem


def test_verify_rejects_a_resealed_chain_with_another_key(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, generate_signing_key())
    report = verify(path, key.public_key())
    assert not report.ok and report.bad_line == 1 and "key" in report.problem


def test_verify_rejects_unsigned_records_when_a_key_is_given(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    sink = JsonlSink(path)
    sink.emit(make_record())
    assert verify(path, None).ok
    report = verify(path, key.public_key())
    assert not report.ok and report.problem == "unsigned"


def test_verify_catches_a_forged_signature(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, key, 2)
    lines = path.read_bytes().splitlines()
    entry = json.loads(lines[1])
    entry["record"]["principal"]["id"] = "agent:someone-else"
    from sandbox.audit import canonical, seal

    line, _ = seal(entry["record"], seq=1, prev=entry["prev"], key=None)
    forged = json.loads(line)
    forged["sig"], forged["key"] = entry["sig"], entry["key"]  # reuse the old signature
    lines[1] = canonical(forged)
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify(path, key.public_key())
    assert not report.ok and report.bad_line == 2 and "signature" in report.problem


def test_key_loading_forms(tmp_path: Path, key):
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pem_file = tmp_path / "k.pub"
    pem_file.write_bytes(public_key_pem(key))
    for form in (public_key_pem(key), raw, raw.hex(), ssh, pem_file, str(pem_file), key):
        assert load_public_key(form) == key.public_key()
    private_file = tmp_path / "k.pem"
    private_file.write_bytes(private_key_pem(key))
    assert load_private_key(private_file).public_key() == key.public_key()
    with pytest.raises(ConfigurationError, match="use PEM, 32 raw bytes"):
        load_public_key(b"not a key")
    with pytest.raises(ConfigurationError, match="use PEM, 32 raw bytes"):
        load_private_key("00" * 31)


def test_a_record_file_that_does_not_end_in_a_record_is_refused(tmp_path: Path):
    path = tmp_path / "runs.jsonl"
    JsonlSink(path).emit(make_record(0))
    with path.open("ab") as fh:
        fh.write(b"not a record\n")
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match="sandbox verify"):
        JsonlSink(path).emit(make_record(1))
    assert path.read_bytes() == before
    assert not verify(path, None).ok and verify(path, None).bad_line == 2


def test_summary_is_readable():
    text = summarize(make_record(3, redact=redact))
    assert "agent:etl for alice (task T-12)" in text
    assert "fs.read, get_weather" in text
    assert "github (for http; to api.github.com; ttl 60s; 3 uses)" in text
    assert "2 call(s), 1 denied" in text
    assert "x fs.read(path='/etc/passwd'" in text and "must be under '/data/'" in text
    assert "policy_denied: PolicyDenied" in text
    assert CANARY not in text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_verify_and_audit(tmp_path: Path, key):
    path = tmp_path / "records.jsonl"
    write_records(path, key, 3)
    pub = tmp_path / "key.pub"
    pub.write_bytes(public_key_pem(key))
    ok = cli("verify", str(path), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert "3 record(s)" in ok.stdout
    summary = cli("audit", str(path))
    assert summary.returncode == 0 and summary.stdout.count("run run000") == 3
    assert "1 denied" in summary.stdout
    lines = path.read_bytes().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    path.write_bytes(b"".join(lines))
    bad = cli("verify", str(path), "--public-key", str(pub))
    assert bad.returncode == 1
    assert "line 1" in bad.stderr and "run0001" in bad.stderr
    unkeyed = cli("verify", str(path))  # without a key the chain is still checked
    assert unkeyed.returncode == 1 and "line 1" in unkeyed.stderr


def test_otel_sink_exports_a_span_per_run():
    from sandbox.audit import OtelSink

    class Span:
        def __init__(self, name, start_time, attributes):
            self.name, self.start, self.attributes, self.events, self.status, self.end_time = (
                name, start_time, attributes, [], None, None)

        def add_event(self, name, attributes):
            self.events.append((name, attributes))

        def set_status(self, status):
            self.status = status

        def end(self, end_time):
            self.end_time = end_time

    class Tracer:
        spans: list = []

        def start_span(self, name, start_time, attributes):
            span = Span(name, start_time, attributes)
            self.spans.append(span)
            return span

    tracer = Tracer()
    OtelSink(tracer).emit(make_record(2, redact=redact))
    (span,) = tracer.spans
    assert span.name == "sandbox.run" and span.attributes["sandbox.run_id"] == "run0002"
    assert span.attributes["sandbox.denied_calls"] == 1 and span.attributes["sandbox.outcome"] == "policy_denied"
    assert [e[1]["status"] for e in span.events] == ["ok", "denied"]
    assert span.end_time >= span.start
    assert CANARY not in repr(span.attributes) + repr(span.events)


def test_cli_run_with_policy(tmp_path: Path):
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "deny"\nescalate_after = 2\n')
    script = tmp_path / "job.py"
    script.write_text("6 * 7\n")
    useless = cli("run", "--policy", str(policy), str(script))  # no capability for it to decide
    assert useless.returncode == 2 and "--capabilities" in useless.stderr
    ok = cli("run", "--capabilities", "examples.mcp_tools:get_weather", "--policy", str(policy), str(script))
    assert ok.returncode == 0 and ok.stdout == "42\n", ok.stderr
    script.write_text("get_weather('Paris')\n")
    denied = cli("run", "--capabilities", "examples.mcp_tools:get_weather", "--policy", str(policy), str(script))
    assert denied.returncode == 1 and "policy_denied" in denied.stderr, denied.stderr  # the policy applies
    policy.write_text('default = "sometimes"\n')
    bad = cli("run", "--capabilities", "examples.mcp_tools:get_weather", "--policy", str(policy), str(script))
    assert bad.returncode == 2 and "default" in bad.stderr


def test_optional_dependencies_are_imported_lazily():
    code = (
        "import sys, sandbox\n"
        "print(sorted(m for m in ('sandbox.policy', 'sandbox.audit', 'sandbox.policy.cedar', 'cedarpy') if m in sys.modules))\n"
        "before = 'cryptography' in sys.modules\n"
        "import sandbox.policy, sandbox.audit\n"
        "print('cedarpy' in sys.modules, before or 'cryptography' not in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["[]", "False True"], out.stderr


# ----------------------------------------------------------------------------- records survive any guest text

JOINED = "\U000103ff"  # what the surrogate pair below stands for, and how any JSON parser reads it back
HOSTILE = "bad\udc80 \ud800\udfff\ud83d \x1b[2J\x1b[31mred\r\n  who:      agent:root\nrun forged  2020-01-01\u202e\x00"


def test_lone_surrogates_round_trip_through_a_signed_chain(tmp_path: Path, key):
    path = tmp_path / "runs.jsonl"
    sink = JsonlSink(path, signing_key=key)
    recorder = RunRecorder(run_id="r1", code="x\udc80", runtime="restricted", isolation="none")
    recorder.call("cap", {"a": HOSTILE}, "failed", error=HOSTILE, detail={HOSTILE: [HOSTILE, 1]})
    result = RunResult(ok=False, stdout=HOSTILE, value={HOSTILE: HOSTILE}, run_id="r1", runtime="restricted",
                       isolation="none", error=ErrorInfo(kind="guest_exception", type=HOSTILE, message=HOSTILE))
    record = recorder.finish(result)
    sink.emit(record)
    sink.emit(make_record(2))  # an honest record after it must verify too
    data = path.read_bytes()
    data.decode("utf-8")  # strict: the file is valid UTF-8
    report = verify(path, key.public_key())
    assert report.ok and report.records == 2, report
    back = next(read_records(path))
    assert back.outcome.message == HOSTILE.replace("\ud800\udfff", JOINED)
    assert back.calls[0].detail == {back.outcome.message: [back.outcome.message, 1]}
    assert json.loads(result.model_dump_json())["stdout"] == HOSTILE.replace("\ud800\udfff", JOINED)


def test_summary_escapes_control_characters_so_guest_text_cannot_forge_lines():
    recorder = RunRecorder(run_id="r1", code="", runtime="restricted", isolation="none")
    recorder.call(HOSTILE, {}, "invalid", error=HOSTILE)
    result = RunResult(ok=False, run_id="r1", runtime="restricted", isolation="none",
                       error=ErrorInfo(kind="guest_exception", type=HOSTILE, message=HOSTILE))
    text = summarize(recorder.finish(result))
    lines = text.split("\n")
    assert len(lines) == 9 and sum(line.startswith("run ") for line in lines) == 1
    assert sum(line.startswith("  who:") for line in lines) == 1
    assert all(line.isprintable() for line in lines), lines
    assert "\\x1b[2J" in text and "\\u202e" in text and "\\udc80" in text


def test_unsigned_chains_verify_and_say_so(tmp_path: Path, key):
    path = tmp_path / "runs.jsonl"
    sink = JsonlSink(path)
    for n in range(3):
        sink.emit(make_record(n))
    report = verify(path, None)
    assert report.ok and report.signatures == "unsigned" and "unsigned" in str(report)
    assert not verify(path, key.public_key()).ok  # a key demands signatures
    signed = tmp_path / "signed.jsonl"
    write_records(signed, key, 2)
    assert verify(signed, None).signatures == "unchecked"
    assert verify(signed, key.public_key()).signatures == "verified"


def test_hostile_guest_text_keeps_every_record_verifiable(make_sandbox, tmp_path: Path, key):
    path = tmp_path / "runs.jsonl"
    sb = make_sandbox(records=JsonlSink(path, signing_key=key), principal="agent:etl")
    results = [
        sb.run(f"print({HOSTILE!r})\nraise ValueError({HOSTILE!r})"),
        sb.run(f"{{{HOSTILE!r}: [{HOSTILE!r}]}}"),
        sb.run("1 + 1"),
    ]
    for result in results:
        json.loads(result.model_dump_json())  # never raises, whatever the guest wrote
    assert results[2].ok and results[2].value == 2
    report = verify(path, key.public_key())
    assert report.ok and report.records == 3, report
    summary = cli("audit", str(path))
    assert summary.returncode == 0, summary.stderr
    lines = summary.stdout.splitlines()
    assert sum(line.startswith("run ") for line in lines) == 3
    assert sum(line.startswith("  who:") for line in lines) == 3 and "agent:root" not in "".join(
        line for line in lines if line.startswith("  who:"))
    assert "\x1b" not in summary.stdout and "\u202e" not in summary.stdout


def test_wasi_refused_raw_host_calls_are_recorded():
    from sandbox import Sandbox, capability

    @capability
    def echo(x: str) -> str:
        return x

    try:
        from conformance.runtime_differences import WASI_UNGATED  # type: ignore[import-not-found]
    except ImportError:
        from tests.conformance.runtime_differences import WASI_UNGATED

    sink = MemorySink()
    code = WASI_UNGATED + (
        "from wit_world.imports import host\n"
        "[host.call('not_granted', '[[], {}]')[:1] != '!', host.call_with_handles('echo', 'not json', [])[0],\n"
        " host.call('echo', '[1, 2, 3]')[:1] != '!', host.call_with_handles('echo', '[[{\"__sandbox_secret_handle__\": 5}], {}]', [])[0],\n"
        " host.call('echo', '[[\"ok\"], {}]')[:1] != '!']"
    )
    with Sandbox("wasi", capabilities=[echo], records=sink) as sb:
        result = sb.run(code)
    assert result.ok and result.value == [False, False, False, False, True], result
    (record,) = sink.records
    assert [(c.capability, c.status) for c in record.calls] == [
        ("not_granted", "invalid"), ("echo", "invalid"), ("echo", "invalid"), ("echo", "invalid"), ("echo", "ok")]
    assert "not_granted" in (record.calls[0].error or "") and "malformed" in (record.calls[2].error or "")


def test_records_are_built_for_values_json_does_not_know(tmp_path: Path):
    import datetime
    import decimal

    value = [b"\xff\x00", float("nan"), datetime.date(2026, 1, 2), decimal.Decimal("1.10"), {3}, (1,), object()]
    recorder = RunRecorder(run_id="r1", code="", runtime="restricted", isolation="none")
    recorder.call("cap", {}, "ok", detail={"when": datetime.date(2026, 1, 2), "rows": float("inf"), "raw": b"\xff"})
    record = recorder.finish(RunResult(ok=True, value=value, run_id="r1", runtime="restricted", isolation="none"))
    assert len(record.value_sha256) == 64 and record.calls[0].detail == {"when": "2026-01-02", "rows": None, "raw": "\udcff"}
    sink = JsonlSink(tmp_path / "runs.jsonl")
    sink.emit(record)
    assert verify(tmp_path / "runs.jsonl", None).ok
