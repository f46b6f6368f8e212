"""sandbox: run agent-generated Python inside a boundary the host controls.

    from sandbox import Sandbox, Limits, capability

    @capability
    def get_weather(city: str) -> dict: ...

    with Sandbox(limits=Limits(cpu_seconds=1), capabilities=[get_weather]) as sb:
        result = sb.run("get_weather('Paris')['temp']")

Every public name is importable from here. Only the exceptions (`sandbox.errors`) are loaded
with the package; the rest is imported on first access (PEP 562), so ``import sandbox`` does
not pay for pydantic models, httpx, Wasmtime or cryptography a program never touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sandbox import errors as _errors
from sandbox.errors import (
    CapabilityFault,
    ConfigurationError,
    GuestBuildError,
    IsolationUnavailable,
    OverlayConflict,
    SandboxClosed,
    SandboxError,
    SecretInTransit,
    SecretUnavailable,
    Unavailable,
)

_LAZY = {
    "ApiDescription": "sandbox.capabilities",
    "Capability": "sandbox.capabilities",
    "capability": "sandbox.capabilities",
    "record_detail": "sandbox.capabilities",
    "Egress": "sandbox.egress",
    "Limits": "sandbox.limits",
    "ErrorInfo": "sandbox.results",
    "FileChange": "sandbox.results",
    "RunResult": "sandbox.results",
    "Usage": "sandbox.results",
    "OutputChunk": "sandbox.handles",
    "RunHandle": "sandbox.handles",
    "remaining_time": "sandbox.capabilities",
    "Sandbox": "sandbox.sandbox",
    "Session": "sandbox.sandbox",
    "Secret": "sandbox.secrets",
    "SecretValue": "sandbox.secrets",
    "Policy": "sandbox.policy",
    "Principal": "sandbox.policy",
    "Rule": "sandbox.policy",
    "JsonlSink": "sandbox.audit",
    "MemorySink": "sandbox.audit",
    "RunRecord": "sandbox.audit",
    "Overlay": "sandbox.overlay",
    "sql_capability": "sandbox.sql",
    "TransformResult": "sandbox.transform",
}
"""Public name -> the module that defines it, imported on first access."""

__all__ = sorted([*_errors.__all__, *_LAZY])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from sandbox.audit import JsonlSink, MemorySink, RunRecord
    from sandbox.capabilities import ApiDescription, Capability, capability, record_detail, remaining_time
    from sandbox.handles import OutputChunk, RunHandle
    from sandbox.egress import Egress
    from sandbox.limits import Limits
    from sandbox.overlay import Overlay
    from sandbox.policy import Policy, Principal, Rule
    from sandbox.results import ErrorInfo, FileChange, RunResult, Usage
    from sandbox.sandbox import Sandbox, Session
    from sandbox.secrets import Secret, SecretValue
    from sandbox.sql import sql_capability
    from sandbox.transform import TransformResult
