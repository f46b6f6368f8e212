"""`RunRecorder`: collects one run's capability calls and builds its `RunRecord`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel

from runtimes.wire import SECRET_MARKER as _SECRET_MARKER
from sandbox.audit._records import CallRecord, CallStatus, RecordOutcome, Redact, RunRecord, SecretGrant
from sandbox.audit._records import map_strings, sha256_json, sha256_text, string_redactor
from sandbox.jsontext import jsonable
from sandbox.policy import Principal, Verdict
from sandbox.results import RunResult
from sandbox.secrets import Redactor

_NAME_LIMIT = 128


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
    return map_strings(data, redact) if redact is not None else data


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
            arguments or {}, redact=string_redactor(self.redact) if self.redact is not None else None
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
