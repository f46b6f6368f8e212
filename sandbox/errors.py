"""Host-side exceptions. Guest failures are never raised: they are `RunResult`s.

These are raised for the host's own mistakes or environment: bad configuration (also a
`ValueError`, so callers can catch the builtin), a required isolation layer that this machine
cannot apply, a guest image that cannot be built.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every exception this library raises on the host side."""


class ConfigurationError(SandboxError, ValueError):
    """The host asked for something invalid; the message says what to change."""


class IsolationUnavailable(SandboxError, RuntimeError):
    """A required isolation layer cannot be applied on this machine; the message names it and why."""


class GuestBuildError(SandboxError, RuntimeError):
    """The wasi guest could not be built or loaded; the message says how to fix it."""


class SandboxClosed(SandboxError, RuntimeError):
    """The sandbox or session was closed; create a new one."""
