"""Where run records go: `RecordSink`, and the memory, signed JSONL and OpenTelemetry sinks."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sandbox.audit._chain import tail_state, seal
from sandbox.audit._keys import key_id, load_private_key
from sandbox.audit._records import RunRecord

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


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
    """Appends records to a JSONL file as a signed hash chain (line format: `sandbox.audit`).

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
            return tail_state(fh)[1]

    def emit(self, record: RunRecord) -> None:
        with self._lock, open(self.path, "ab+") as fh:
            _lock_file(fh)
            try:
                stat = os.fstat(fh.fileno())
                if self._cache is not None and self._cache[:2] == (stat.st_ino, stat.st_size):
                    seq, prev = self._cache[2], self._cache[3]
                else:
                    seq, prev = tail_state(fh)
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
