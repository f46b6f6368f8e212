"""The run record (`RunRecord` and its parts) and the hashes and canonical JSON it is built on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer

from sandbox.jsontext import dumps, jsonable
from sandbox.policy import Principal
from sandbox.results import ErrorKind, Usage
from sandbox.secrets import Redactor
from sandbox.tree import map_tree

SCHEMA = "sandbox.run-record/1"

Redact = Union[Redactor, Callable[[str], str]]
"""A `sandbox.secrets.Redactor`, or a function redacting one string."""


CallStatus = Literal["ok", "denied", "failed", "invalid", "abandoned"]


class CallRecord(BaseModel):
    """One capability call as it was decided and run.

    ``status``: ``ok`` (ran and returned), ``denied`` (the policy or a secret's scope refused
    it), ``failed`` (ran and raised), ``invalid`` (unknown capability or arguments that did not
    validate, so no decision was needed), ``abandoned`` (still running at the run's deadline or
    cancel: the run stopped waiting and its result was discarded). ``decision`` is the policy's effect (``ask`` when an
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
        data = map_strings(self.to_json(), string_redactor(redact))
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


def string_redactor(redact: Redact) -> Callable[[str], str]:
    return redact.text if isinstance(redact, Redactor) else redact


def map_strings(data: Any, func: Callable[[str], str]) -> Any:
    """``data`` with ``func`` applied to every string, dict keys included (no recursion)."""
    return map_tree(data, lambda item: func(item) if isinstance(item, str) else item)
