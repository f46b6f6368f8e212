"""sandbox: run agent-generated Python inside a boundary the host controls.

    from sandbox import Sandbox, Limits, capability

    @capability
    def get_weather(city: str) -> dict: ...

    with Sandbox(limits=Limits(cpu_seconds=1), capabilities=[get_weather]) as sb:
        result = sb.run("get_weather('Paris')['temp']")
"""

from sandbox.capabilities import ApiDescription, Capability, capability
from sandbox.egress import Egress
from sandbox.errors import ConfigurationError, GuestBuildError, IsolationUnavailable, SandboxClosed, SandboxError
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, RunResult, Usage
from sandbox.sandbox import Sandbox, Session
from sandbox.secrets import Secret, SecretUnavailable, SecretValue

__all__ = [
    "ApiDescription",
    "Capability",
    "ConfigurationError",
    "Egress",
    "ErrorInfo",
    "GuestBuildError",
    "IsolationUnavailable",
    "Limits",
    "RunResult",
    "Sandbox",
    "SandboxClosed",
    "SandboxError",
    "Secret",
    "SecretUnavailable",
    "SecretValue",
    "Session",
    "Usage",
    "capability",
]
