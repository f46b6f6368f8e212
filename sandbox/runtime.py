"""The protocol every runtime driver implements.

A driver takes a `Job` (code, inputs, limits, the guest-visible capability names and secret
handles, and a `HostBridge` for capability calls) and returns an `Outcome`. The `Sandbox`
builds jobs and turns outcomes into `RunResult`s; drivers never see secrets, policy or the
capability functions themselves, only the bridge.

Drivers must guarantee: fresh guest state per `run`; persistent guest state per session;
every guest failure reported as an `Outcome` error, never raised; `limits` enforced as
strictly as the runtime can, with the limit named in the error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from runtimes.wire import Fault
from sandbox.limits import Limits
from sandbox.results import ErrorInfo

KNOWN_LAYERS = frozenset({
    "restricted-python", "alloc-cap",                                       # restricted
    "rlimits", "seccomp", "netns", "landlock", "userns", "uid",              # + isolation="process"
    "wasm", "wasi-no-ambient", "fuel", "epoch-deadline", "store-memory-limit",  # wasi
})
"""Every isolation layer name a driver may report in `Outcome.layers`, and a caller may require."""

CapabilityFault = Fault
"""Raised by the host bridge when a capability call fails (see `runtimes.wire.Fault`)."""


class HostBridge(Protocol):
    """How guest code reaches the host: one call per capability invocation."""

    def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run capability ``name`` with wire-format arguments; return a wire-format value.

        Raises `CapabilityFault` when the call is invalid, denied or fails. Thread-safe.
        """
        ...


def record_refusal(bridge: HostBridge, name: Any, fault: Fault) -> None:
    """Have ``bridge`` record a call the driver refused before `HostBridge.call` (a name not
    granted, a malformed payload or handle). Bridges with a ``refuse(name, reason)`` method
    record it (the `Sandbox`'s does); others are left alone. Never raises."""
    refuse = getattr(bridge, "refuse", None)
    if refuse is not None:
        try:
            refuse(name if isinstance(name, str) else repr(name), fault.message)
        except Exception:  # noqa: BLE001 - recording must not turn a refusal into a driver failure
            logging.getLogger("sandbox").exception("could not record a refused capability call")


@dataclass(frozen=True)
class SecretHandleSpec:
    """A secret handle as the guest sees it: ``secrets.<name>``, shown as ``description``."""

    name: str
    token: str
    description: str


@dataclass(frozen=True)
class Job:
    """One run, as handed to a driver."""

    run_id: str
    code: str
    limits: Limits
    bridge: HostBridge
    inputs: Mapping[str, Any] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    """Guest-visible capability names; a dotted name ``sql.query`` appears as ``sql.query``."""
    secrets: tuple[SecretHandleSpec, ...] = ()


class Outcome(BaseModel):
    """A driver's report of one run (the wire outcome of `runtimes.wire`, validated)."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    error: ErrorInfo | None = None
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    layers: tuple[str, ...] = ()


class DriverSession(Protocol):
    """Guest state that persists across runs (globals, imports, definitions)."""

    def run(self, job: Job) -> Outcome: ...

    def close(self) -> None:
        """Release the state; idempotent."""
        ...


class Driver(Protocol):
    """A runtime. One instance serves many runs, from several threads at once."""

    name: str
    isolation: str
    layers: tuple[str, ...]
    """The isolation layers this driver applies to every run (checked against ``require``)."""

    def run(self, job: Job) -> Outcome:
        """Run ``job`` with fresh guest state."""
        ...

    def open_session(self) -> DriverSession: ...

    def close(self) -> None:
        """Release workers, caches and engines; idempotent."""
        ...


def limit_error(limit: str, message: str) -> ErrorInfo:
    """The error of a run that hit ``limit``; ``type`` is the limit's name, as in every runtime."""
    return ErrorInfo(kind="limit_exceeded", type=limit, message=message, limit=limit)  # type: ignore[arg-type]


def internal_error(message: str) -> Outcome:
    """An outcome for a fault on the host side of a driver (never the guest's doing)."""
    return Outcome(ok=False, error=ErrorInfo(kind="internal", type="InternalError", message=message))
