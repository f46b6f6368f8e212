"""Run records: evidence of what each run was allowed to do and what it did.

Every run can emit one `RunRecord` (pydantic) to a `RecordSink`. No secret value is ever put
in a record: secret handles appear by name and scope, arguments as a short redacted summary,
output and value only as SHA-256 hashes.

`JsonlSink` appends records to a JSONL file as a hash chain: each line carries its sequence
number, the hash of the previous line and its own hash, and, when the host supplies an
Ed25519 key, a signature. `verify` checks a file offline and names the first bad line: an
altered byte, a deleted line and two swapped lines are all caught. (Cutting lines off the
*end* leaves a valid shorter chain: keep the last ``head`` hash elsewhere and pass it as
``expected_head`` to detect that too.)

Line format (one JSON object per line, keys sorted, no spaces)::

    {"hash": sha256(body), "key": key_id | null, "prev": hash of the line before ("0"*64 first),
     "record": {...RunRecord...}, "seq": 0, 1, 2, ..., "sig": base64(Ed25519(body)) | null}

where ``body`` is the canonical JSON of ``{"prev", "record", "seq"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Union, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from runtimes.wire import SECRET_MARKER as _SECRET_MARKER
from sandbox.jsontext import dumps, jsonable
from sandbox.policy import Principal, Verdict
from sandbox.results import ErrorKind, RunResult, Usage
from sandbox.secrets import Redactor
from sandbox.tree import map_tree

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEMA = "sandbox.run-record/1"
_NAME_LIMIT = 128
GENESIS = "0" * 64

Redact = Union[Redactor, Callable[[str], str]]
"""A `sandbox.secrets.Redactor`, or a function redacting one string."""


# ----------------------------------------------------------------------------------------
# the record


CallStatus = Literal["ok", "denied", "failed", "invalid"]


class CallRecord(BaseModel):
    """One capability call as it was decided and run.

    ``status``: ``ok`` (ran and returned), ``denied`` (the policy or a secret's scope refused
    it), ``failed`` (ran and raised), ``invalid`` (unknown capability or arguments that did not
    validate, so no decision was needed). ``decision`` is the policy's effect (``ask`` when an
    approver was consulted, with its answer in ``approval``), None when no policy was asked.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    capability: str
    arguments: dict[str, str] = Field(default_factory=dict)
    status: CallStatus
    decision: Literal["allow", "deny", "ask"] | None = None
    approval: str | None = None
    reason: str = ""
    rule: str | None = None
    error: str | None = None
    duration_seconds: float = 0.0
    detail: dict[str, Any] | None = None
    """Capability-specific evidence (`sandbox.capabilities.record_detail`), e.g. for ``sql.query``
    the statement hash, tables touched, rows returned and the decision. None when not given,
    and then left out of the JSON, so records of other calls keep their exact shape."""

    @model_serializer(mode="wrap")
    def _drop_empty_detail(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("detail", 0) is None:
            del data["detail"]
        return data


class SecretGrant(BaseModel):
    """A secret handle issued to a run: its name and scope, never its value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    capabilities: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    ttl_seconds: float | None = None
    max_uses: int | None = None


class RecordOutcome(BaseModel):
    """How the run ended (the `RunResult` error, redacted)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ok: bool
    kind: ErrorKind | None = None
    type: str | None = None
    message: str | None = None
    limit: str | None = None
    lineno: int | None = None
    output_truncated: bool = False


class RunRecord(BaseModel):
    """The evidence of one run. Same shape for every runtime."""

    schema_: str = Field(default=SCHEMA, alias="schema")
    run_id: str
    session_id: str | None = None
    started_at: datetime
    finished_at: datetime
    principal: Principal | None = None
    code_sha256: str
    code_bytes: int
    runtime: str
    isolation: str
    layers: tuple[str, ...] = ()
    limits: dict[str, Any] = Field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    policy: str | None = None
    secrets: tuple[SecretGrant, ...] = ()
    calls: tuple[CallRecord, ...] = ()
    usage: Usage = Field(default_factory=Usage)
    outcome: RecordOutcome
    stdout_sha256: str
    stderr_sha256: str
    value_sha256: str

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """JSON-compatible data (``schema`` key spelled as in files); any guest text, lone
        surrogates included, is kept as it is."""
        return jsonable(self.model_dump(by_alias=True))

    def redacted(self, redact: Redact) -> RunRecord:
        """A copy with ``redact`` applied to every string and dict key, and, in the free-form
        ``detail`` of calls, to numbers too when ``redact`` is a `sandbox.secrets.Redactor`."""
        data = _map_strings(self.to_json(), _string_redactor(redact))
        if isinstance(redact, Redactor):
            for call in data["calls"]:
                if call.get("detail") is not None:
                    call["detail"] = redact.value(call["detail"])
        return RunRecord.model_validate(data)

    @property
    def denied_calls(self) -> list[CallRecord]:
        return [c for c in self.calls if c.status == "denied"]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def sha256_json(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces; values JSON does not
    know as `sandbox.jsontext.jsonable` makes them, else their ``repr``). Never raises."""
    return hashlib.sha256(canonical(jsonable(value, fallback=repr))).hexdigest()


def canonical(value: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace, UTF-8, no NaN; lone surrogates (from
    guest text) as ``\\uXXXX`` escapes, so the bytes are valid UTF-8 and parse back to data
    whose canonical bytes are the same."""
    return dumps(value, sort_keys=True).encode("utf-8")


def summarize_arguments(
    arguments: Mapping[str, Any], *, redact: Callable[[str], str] | None = None, limit: int = 64
) -> dict[str, str]:
    """A short, redacted text per argument for records: never a full payload.

    Strings longer than ``limit`` are cut with their length noted; containers show their size;
    secret handles show as ``<secret>`` (or ``<secret:name>`` when the host gives the name).
    """
    out: dict[str, str] = {}
    for name, value in arguments.items():
        text = _summary(value, limit)
        out[str(name)] = redact(text) if redact is not None else text
    return out


def _summary(value: Any, limit: int) -> str:
    if isinstance(value, dict) and _SECRET_MARKER in value:
        return "<secret>"
    if type(value).__name__ == "SecretValue" and isinstance(getattr(value, "name", None), str):
        return f"<secret:{value.name}>"  # sandbox.secrets.SecretValue (never revealed here)
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return repr(value[:limit]) + f"...({len(value)} chars)"
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        kind = type(value).__name__
        try:
            text = repr(value)
        except Exception:
            text = ""
        if text and len(text) <= limit and _SECRET_MARKER not in text:
            return text
        return f"<{kind} of {len(value)}>"
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def _detail(detail: Mapping[str, Any], redact: Redact | None) -> dict[str, Any]:
    """Capability detail as JSON data (values JSON does not know become their ``str``), redacted."""
    data = jsonable(dict(detail), fallback=str)
    if isinstance(redact, Redactor):
        return redact.value(data)
    return _map_strings(data, redact) if redact is not None else data


def _string_redactor(redact: Redact) -> Callable[[str], str]:
    return redact.text if isinstance(redact, Redactor) else redact


def _map_strings(data: Any, func: Callable[[str], str]) -> Any:
    """``data`` with ``func`` applied to every string, dict keys included (no recursion)."""
    return map_tree(data, lambda item: func(item) if isinstance(item, str) else item)


class RunRecorder:
    """Collects one run's calls (thread-safe) and builds its `RunRecord` at the end.

    The host bridge calls `call` once per capability call; the sandbox calls `finish` with
    the `RunResult`.
    """

    def __init__(
        self,
        *,
        run_id: str,
        code: str,
        runtime: str,
        isolation: str,
        principal: Principal | None = None,
        session_id: str | None = None,
        limits: Mapping[str, Any] | BaseModel | None = None,
        capabilities: Iterable[str] = (),
        policy: str | None = None,
        secrets: Iterable[SecretGrant] = (),
        redact: Redact | None = None,
    ) -> None:
        self.started_at = datetime.now(timezone.utc)
        self.run_id = run_id
        self.session_id = session_id
        self.code_sha256 = sha256_text(code)
        self.code_bytes = len(code.encode("utf-8", "surrogatepass"))
        self.runtime = runtime
        self.isolation = isolation
        self.principal = principal
        if isinstance(limits, BaseModel):
            limits = limits.model_dump(mode="json")
        self.limits = dict(limits or {})
        self.capabilities = tuple(sorted(capabilities))
        self.policy = policy
        self.secrets: list[SecretGrant] = list(secrets)
        self.redact = redact
        self._calls: list[CallRecord] = []
        self._lock = threading.Lock()

    def call(
        self,
        capability: str,
        arguments: Mapping[str, Any] | None,
        status: CallStatus,
        *,
        verdict: Verdict | None = None,
        reason: str | None = None,
        error: str | None = None,
        duration: float = 0.0,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Record one call. ``arguments`` are summarised and redacted here; ``reason`` defaults
        to the verdict's (give it for denials made elsewhere, e.g. a secret's scope)."""
        summary = summarize_arguments(
            arguments or {}, redact=_string_redactor(self.redact) if self.redact is not None else None
        )
        if len(capability) > _NAME_LIMIT:  # a name the guest chose, for a call that was refused
            capability = capability[:_NAME_LIMIT] + f"...({len(capability)} chars)"
        with self._lock:
            self._calls.append(
                CallRecord(
                    seq=len(self._calls),
                    capability=capability,
                    arguments=summary,
                    status=status,
                    decision=verdict.decision if verdict is not None else None,
                    approval=verdict.approval if verdict is not None else None,
                    reason=reason if reason is not None else verdict.reason if verdict is not None else "",
                    rule=verdict.rule if verdict is not None else None,
                    error=error,
                    duration_seconds=duration,
                    detail=_detail(detail, self.redact) if detail else None,
                )
            )

    def finish(self, result: RunResult) -> RunRecord:
        """The record of the finished run (redacted when the recorder has a redactor)."""
        err = result.error
        with self._lock:
            calls = tuple(self._calls)
            secrets = tuple(self.secrets)
        record = RunRecord(
            run_id=self.run_id,
            session_id=self.session_id,
            started_at=self.started_at,
            finished_at=datetime.now(timezone.utc),
            principal=self.principal,
            code_sha256=self.code_sha256,
            code_bytes=self.code_bytes,
            runtime=self.runtime,
            isolation=self.isolation,
            layers=tuple(result.layers),
            limits=self.limits,
            capabilities=self.capabilities,
            policy=self.policy,
            secrets=secrets,
            calls=calls,
            usage=result.usage,
            outcome=RecordOutcome(
                ok=result.ok,
                kind=err.kind if err else None,
                type=err.type if err else None,
                message=err.message if err else None,
                limit=err.limit if err else None,
                lineno=err.lineno if err else None,
                output_truncated=result.output_truncated,
            ),
            stdout_sha256=sha256_text(result.stdout),
            stderr_sha256=sha256_text(result.stderr),
            value_sha256=sha256_json(result.value),
        )
        return record.redacted(self.redact) if self.redact is not None else record


# ----------------------------------------------------------------------------------------
# sinks


@runtime_checkable
class RecordSink(Protocol):
    """Where run records go. `emit` is called once per run, possibly from several threads."""

    def emit(self, record: RunRecord) -> None: ...


class MemorySink:
    """Keeps records in a list (tests, or hosts that forward records themselves)."""

    def __init__(self) -> None:
        self.records: list[RunRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: RunRecord) -> None:
        with self._lock:
            self.records.append(record)


class JsonlSink:
    """Appends records to a JSONL file as a signed hash chain (see the module docstring).

    Args:
        path: the file; created if missing, appended to (continuing its chain) if present.
        signing_key: an Ed25519 private key (a `cryptography` key object, PEM bytes/text, raw
            32 bytes, or a path to a PEM file). Without one, lines carry no signature and
            `verify` with a public key rejects them.
        fsync: call ``os.fsync`` after each line (durability over speed).

    Safe across threads and processes: each append holds an exclusive ``flock`` on the file
    and continues from the line actually last in it.
    """

    def __init__(self, path: str | os.PathLike[str], *, signing_key: Any = None, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._key: Ed25519PrivateKey | None = load_private_key(signing_key) if signing_key is not None else None
        self.key_id = key_id(self._key.public_key()) if self._key is not None else None
        self._lock = threading.Lock()
        self._cache: tuple[int, int, int, str] | None = None  # (inode, size, next seq, head)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab"):
            pass

    @property
    def head(self) -> str:
        """Hash of the last line in the file (``GENESIS`` when empty): anchor it elsewhere."""
        with open(self.path, "rb") as fh:
            return _tail_state(fh)[1]

    def emit(self, record: RunRecord) -> None:
        with self._lock, open(self.path, "ab+") as fh:
            _lock_file(fh)
            try:
                stat = os.fstat(fh.fileno())
                if self._cache is not None and self._cache[:2] == (stat.st_ino, stat.st_size):
                    seq, prev = self._cache[2], self._cache[3]
                else:
                    seq, prev = _tail_state(fh)
                line, digest = seal(record.to_json(), seq=seq, prev=prev, key=self._key)
                fh.seek(0, os.SEEK_END)
                fh.write(line + b"\n")
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
                self._cache = (stat.st_ino, os.fstat(fh.fileno()).st_size, seq + 1, digest)
            finally:
                _unlock_file(fh)


class OtelSink:
    """Exports each record as an OpenTelemetry span ``sandbox.run`` (optional: needs
    ``opentelemetry-api``; configure an SDK exporter in the host as usual).

    The span covers the run (start/end from the record) and carries attributes
    ``sandbox.run_id``, ``sandbox.principal``, ``sandbox.runtime``, ``sandbox.outcome`` ...;
    each capability call is a span event ``sandbox.call`` with its decision and reason.
    Pass ``tracer`` to use a specific tracer.
    """

    def __init__(self, tracer: Any = None) -> None:
        if tracer is None:
            try:
                from opentelemetry import trace
            except ImportError:  # pragma: no cover - depends on the environment
                raise ImportError("OtelSink needs opentelemetry-api: pip install opentelemetry-api") from None
            tracer = trace.get_tracer("sandbox")
        self.tracer = tracer

    def emit(self, record: RunRecord) -> None:
        start = int(record.started_at.timestamp() * 1e9)
        end = int(record.finished_at.timestamp() * 1e9)
        o = record.outcome
        attributes: dict[str, Any] = {
            "sandbox.run_id": record.run_id,
            "sandbox.principal": record.principal.id if record.principal else "anonymous",
            "sandbox.runtime": record.runtime,
            "sandbox.isolation": record.isolation,
            "sandbox.layers": list(record.layers),
            "sandbox.code_sha256": record.code_sha256,
            "sandbox.capabilities": list(record.capabilities),
            "sandbox.secrets": [s.name for s in record.secrets],
            "sandbox.calls": len(record.calls),
            "sandbox.denied_calls": len(record.denied_calls),
            "sandbox.outcome": "ok" if o.ok else str(o.kind),
        }
        if record.principal is not None:
            if record.principal.on_behalf_of:
                attributes["sandbox.on_behalf_of"] = record.principal.on_behalf_of
            if record.principal.task:
                attributes["sandbox.task"] = record.principal.task
        if record.session_id:
            attributes["sandbox.session_id"] = record.session_id
        span = self.tracer.start_span("sandbox.run", start_time=start, attributes=attributes)
        try:
            for call in record.calls:
                event = {"capability": call.capability, "status": call.status,
                         "duration_seconds": call.duration_seconds}
                for name in ("decision", "approval", "reason", "rule", "error"):
                    value = getattr(call, name)
                    if value:
                        event[name] = value
                span.add_event("sandbox.call", attributes=event)
            if not o.ok:
                try:
                    from opentelemetry.trace import Status, StatusCode

                    span.set_status(Status(StatusCode.ERROR, f"{o.kind}: {o.type}"))
                except ImportError:  # pragma: no cover
                    pass
        finally:
            span.end(end_time=end)


def check_sink(sink: Any) -> RecordSink | None:
    """``sink`` if it is None or has a callable ``emit``; `TypeError` otherwise."""
    if sink is None or callable(getattr(sink, "emit", None)):
        return sink
    raise TypeError(f"records must be a RecordSink (an object with emit(record)), not {type(sink).__name__}")


def secret_grants(secrets: Mapping[str, Any]) -> list[SecretGrant]:
    """`SecretGrant`s (name and scope, never the value) for ``{name: sandbox.Secret}``."""
    return [
        SecretGrant(
            name=name,
            capabilities=tuple(getattr(secret, "capabilities", ())),
            hosts=tuple(getattr(secret, "hosts", ())),
            ttl_seconds=getattr(secret, "ttl", None),
            max_uses=getattr(secret, "max_uses", None),
        )
        for name, secret in secrets.items()
    ]


def seal(record: Mapping[str, Any], *, seq: int, prev: str, key: Ed25519PrivateKey | None) -> tuple[bytes, str]:
    """One chained, signed JSONL line (without the newline) and its hash."""
    body = canonical({"prev": prev, "record": record, "seq": seq})
    digest = hashlib.sha256(body).hexdigest()
    signature = base64.b64encode(key.sign(body)).decode("ascii") if key is not None else None
    kid = key_id(key.public_key()) if key is not None else None
    line = canonical({"hash": digest, "key": kid, "prev": prev, "record": record, "seq": seq, "sig": signature})
    return line, digest


def _tail_state(fh: Any) -> tuple[int, str]:
    """(next seq, hash of the last line) of an open binary file."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return 0, GENESIS
    position, chunk, data = end, 4096, b""
    while position > 0:
        step = min(chunk, position)
        position -= step
        fh.seek(position)
        data = fh.read(step) + data
        if data.rstrip(b"\n").count(b"\n") >= 1:
            break
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        entry = json.loads(last)
        return int(entry["seq"]) + 1, str(entry["hash"])
    except Exception:
        raise ValueError(f"{getattr(fh, 'name', 'record file')}: the last line is not a record; run `sandbox verify`") from None


def _lock_file(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)


def _unlock_file(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------
# keys


def generate_signing_key() -> Ed25519PrivateKey:
    """A new Ed25519 private key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM of a private key (unencrypted: protect the file)."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM of the public half."""
    from cryptography.hazmat.primitives import serialization

    public = key.public_key() if hasattr(key, "private_bytes") else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 of the raw public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(key: Any) -> Ed25519PrivateKey:
    """An Ed25519 private key from a key object, PEM, raw 32 bytes, hex/base64 text, or a file path."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    data = _key_bytes(key)
    if b"-----BEGIN" in data:
        loaded = serialization.load_pem_private_key(data, password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("the signing key must be an Ed25519 private key")
        return loaded
    return Ed25519PrivateKey.from_private_bytes(_raw32(data, "private"))


def load_public_key(key: Any) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM, OpenSSH line, raw 32 bytes, hex/base64 text,
    or a file path holding one of these."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    data = _key_bytes(key)
    if b"-----BEGIN" in data:
        loaded: Any = serialization.load_pem_public_key(data)
    elif data.strip().startswith(b"ssh-ed25519 "):
        loaded = serialization.load_ssh_public_key(data.strip())
    else:
        loaded = Ed25519PublicKey.from_public_bytes(_raw32(data, "public"))
    if not isinstance(loaded, Ed25519PublicKey):
        raise ValueError("the public key must be an Ed25519 key")
    return loaded


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, os.PathLike):
        return Path(key).read_bytes()
    if isinstance(key, str):
        text = key.strip()
        if "-----BEGIN" not in text and not text.startswith("ssh-") and len(text) < 4096 and Path(text).is_file():
            return Path(text).read_bytes()
        return text.encode("ascii")
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    raise TypeError(f"cannot use {type(key).__name__} as an Ed25519 key")


def _raw32(data: bytes, which: str) -> bytes:
    if len(data) == 32:
        return data
    text = data.strip()
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            raw = decode(text.decode("ascii"))  # type: ignore[operator]
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if len(raw) == 32:
            return raw
    raise ValueError(f"cannot read an Ed25519 {which} key: use PEM, 32 raw bytes, or their hex/base64")


# ----------------------------------------------------------------------------------------
# verification


@dataclass(frozen=True)
class VerifyReport:
    """The result of `verify`. ``bad_line`` is 1-based; ``head`` the hash of the last good line."""

    ok: bool
    records: int
    head: str
    bad_line: int | None = None
    run_id: str | None = None
    problem: str | None = None
    signed: int = 0
    """Good lines that carry a signature."""
    key_id: str | None = None
    """The key whose signatures were checked; None when none were (no key given)."""

    @property
    def signatures(self) -> Literal["verified", "unsigned", "unchecked"]:
        """``verified`` with a key (every line signed by it), ``unsigned`` when no line carries
        a signature, ``unchecked`` when lines are signed but no key was given."""
        if self.key_id is not None:
            return "verified"
        return "unsigned" if self.signed == 0 else "unchecked"

    def __str__(self) -> str:
        if self.ok:
            trust = {
                "verified": f"signatures verified (key {self.key_id})",
                "unsigned": "unsigned",
                "unchecked": f"{self.signed} signed record(s), signatures not checked (no public key given)",
            }[self.signatures]
            return f"ok: {self.records} record(s), chain intact, {trust}, head {self.head}"
        run = f" (run {self.run_id})" if self.run_id else ""
        return printable(f"bad record at line {self.bad_line}{run}: {self.problem}")


def verify(
    path: str | os.PathLike[str], public_key: Any | None, *, expected_head: str | None = None
) -> VerifyReport:
    """Check a JSONL record file: canonical form, hashes, the chain and (with a key) signatures.

    Returns a `VerifyReport` naming the first bad line: one whose bytes were altered, that
    follows a removed line, or that is out of order. ``public_key=None`` checks the chain
    only (and accepts unsigned lines). ``expected_head`` also detects lines cut off the end.
    """
    key = load_public_key(public_key) if public_key is not None else None
    kid = key_id(key) if key is not None else None
    prev, count, signed = GENESIS, 0, 0
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        def bad(problem: str, run_id: str | None = None) -> VerifyReport:
            return VerifyReport(False, count, prev, number, run_id, problem, signed, kid)

        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return bad("not a valid JSON line (altered or truncated)")
        if not isinstance(entry, dict) or set(entry) != {"hash", "key", "prev", "record", "seq", "sig"}:
            return bad("not a run-record line (unexpected fields)")
        record = entry["record"]
        run_id = record.get("run_id") if isinstance(record, dict) else None
        run_id = run_id if isinstance(run_id, str) else None
        try:
            exact = canonical(entry) == raw
        except ValueError:
            exact = False
        if not exact:
            return bad("bytes differ from the canonical form (altered)", run_id)
        body = canonical({"prev": entry["prev"], "record": record, "seq": entry["seq"]})
        if hashlib.sha256(body).hexdigest() != entry["hash"]:
            return bad("content does not match its hash (altered)", run_id)
        if entry["seq"] != count:
            return bad(f"sequence number {entry['seq']!r} where {count} was expected: "
                       "a record before it was removed or records were reordered", run_id)
        if entry["prev"] != prev:
            return bad("does not chain to the line before it: a record was removed or reordered", run_id)
        if key is not None:
            if not isinstance(entry["sig"], str):
                return bad("unsigned", run_id)
            if entry["key"] != kid:
                return bad(f"signed by key {entry['key']!r}, not by the given key {kid}", run_id)
            try:
                key.verify(base64.b64decode(entry["sig"], validate=True), body)
            except Exception:
                return bad("signature does not verify", run_id)
        try:
            RunRecord.model_validate(record)
        except Exception:
            return bad("record does not have the run-record shape", run_id)
        prev, count = entry["hash"], count + 1
        signed += entry["sig"] is not None
    if expected_head is not None and prev != expected_head:
        return VerifyReport(False, count, prev, count + 1, None,
                            f"the chain ends at {prev[:16]}..., not at the expected head {expected_head[:16]}...: "
                            "records were removed from the end")
    return VerifyReport(True, count, prev, signed=signed, key_id=kid)


# ----------------------------------------------------------------------------------------
# reading and summaries


def read_records(path: str | os.PathLike[str]) -> Iterator[RunRecord]:
    """The records in a JSONL file (chained lines or bare records), without verifying them."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                data = json.loads(line)
                yield RunRecord.model_validate(data["record"] if "record" in data and "seq" in data else data)


def summarize(record: RunRecord) -> str:
    """A readable summary of one run: who, what was allowed, what was called, what was denied."""
    r = record
    who = r.principal.describe() if r.principal else "anonymous"
    layers = ", ".join(r.layers) or "none"
    lines = [
        f"run {r.run_id}  {r.started_at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        + (f"  session {r.session_id}" if r.session_id else ""),
        f"  who:      {who}",
        f"  where:    {r.runtime} (isolation {r.isolation}; layers {layers})",
        f"  code:     sha256 {r.code_sha256[:16]}... ({r.code_bytes} bytes)",
        f"  allowed:  {', '.join(r.capabilities) or 'no capabilities'}" + (f"  under {r.policy}" if r.policy else ""),
    ]
    if r.secrets:
        parts = []
        for s in r.secrets:
            scope = []
            if s.capabilities:
                scope.append("for " + ",".join(s.capabilities))
            if s.hosts:
                scope.append("to " + ",".join(s.hosts))
            if s.ttl_seconds is not None:
                scope.append(f"ttl {s.ttl_seconds:g}s")
            if s.max_uses is not None:
                scope.append(f"{s.max_uses} uses")
            parts.append(s.name + (f" ({'; '.join(scope)})" if scope else ""))
        lines.append(f"  secrets:  {', '.join(parts)}")
    denied = len(r.denied_calls)
    lines.append(f"  called:   {len(r.calls)} call(s), {denied} denied")
    marks = {"ok": "+", "denied": "x", "failed": "!", "invalid": "?"}
    for c in r.calls:
        args = ", ".join(f"{k}={v}" for k, v in c.arguments.items())
        line = f"    {marks[c.status]} {c.capability}({args})  {c.status}"
        if c.approval:
            line += f" [approval: {c.approval}]"
        if c.status in ("denied", "failed", "invalid") and (c.reason or c.error):
            line += f": {c.reason or c.error}"
        line += f"  {c.duration_seconds * 1000:.1f} ms"
        lines.append(line)
    o = r.outcome
    if o.ok:
        outcome = "ok"
    else:
        outcome = f"{o.kind}" + (f" [{o.limit}]" if o.limit else "") + f": {o.type}: {o.message}"
    lines.append(f"  outcome:  {outcome}" + ("  (output truncated)" if o.output_truncated else ""))
    u = r.usage
    memory = f", peak {u.peak_memory_bytes / (1 << 20):.1f} MiB" if u.peak_memory_bytes else ""
    lines.append(f"  usage:    wall {u.wall_seconds:.3f}s, cpu {u.cpu_seconds:.3f}s{memory}")
    return "\n".join(map(printable, lines))


def printable(text: str) -> str:
    """``text`` safe to show on one terminal line: every character that is not printable
    (newlines, ESC and so ANSI sequences, other controls, bidi overrides and other format
    characters, line separators, lone surrogates) becomes its backslash escape."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def summarize_file(path: str | os.PathLike[str], *, run_id: str | None = None) -> str:
    """`summarize` for every record in a file (or only ``run_id``, a prefix is enough)."""
    parts = [summarize(r) for r in read_records(path) if run_id is None or r.run_id.startswith(run_id)]
    return "\n\n".join(parts)


__all__ = [
    "CallRecord",
    "GENESIS",
    "JsonlSink",
    "MemorySink",
    "OtelSink",
    "RecordOutcome",
    "RecordSink",
    "RunRecord",
    "RunRecorder",
    "SecretGrant",
    "check_sink",
    "secret_grants",
    "VerifyReport",
    "generate_signing_key",
    "load_private_key",
    "load_public_key",
    "private_key_pem",
    "public_key_pem",
    "read_records",
    "summarize",
    "summarize_arguments",
    "summarize_file",
    "verify",
]
