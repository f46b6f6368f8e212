"""Every exception the library raises on the host. Guest failures are never raised: they are
`RunResult`s (``result.error``).

The hierarchy (catch `SandboxError` for all of them; each also subclasses the builtin a caller
would otherwise catch)::

    SandboxError
    ├── ConfigurationError (ValueError)   the host asked for something invalid; the message
    │   │                                 says what to change
    │   └── SecretInTransit               a secret's literal value would leave this process
    │                                     (e.g. in a spec shipped to another node): pass
    │                                     the secret by reference (env=, file=, provider)
    ├── Unavailable (RuntimeError)        something this host must provide is missing
    │   ├── IsolationUnavailable          a required isolation layer cannot be applied
    │   ├── GuestBuildError               the wasi guest cannot be built or loaded
    │   │                                 (`sandbox.wasi.build.WasiBuildError` subclasses it)
    │   └── SecretUnavailable             a secret's source cannot be read at run start
    ├── SandboxClosed (RuntimeError)      the sandbox or session was closed
    └── OverlayConflict (ValueError)      `Sandbox.apply` refused: a host file changed since
                                          the run, or a path is not confined

A bad field of a pydantic configuration model (`Limits`, `Secret`, `Egress`, `Constraint`, ...)
raises `pydantic.ValidationError` (also a `ValueError`) naming the field; where a validator of
ours refused the value, the `ConfigurationError` it raised is the error's ``ctx["error"]``.
Host misuse of an API (a value of the wrong type) raises the builtin `TypeError`.

`CapabilityFault` is not an error of the host: a capability raises it to make the guest's call
fail with a chosen guest exception (``TypeError``, ``ValueError``, ``PolicyDenied``,
``CapabilityError``); see `runtimes.wire.Fault`.
"""

from __future__ import annotations

from runtimes.wire import Fault as CapabilityFault

__all__ = [
    "CapabilityFault",
    "ConfigurationError",
    "GuestBuildError",
    "IsolationUnavailable",
    "OverlayConflict",
    "SandboxClosed",
    "SandboxError",
    "SecretInTransit",
    "SecretUnavailable",
    "Unavailable",
]


class SandboxError(Exception):
    """Base of every exception this library raises on the host side."""


class ConfigurationError(SandboxError, ValueError):
    """The host asked for something invalid; the message says what to change."""


class SecretInTransit(ConfigurationError):
    """A secret's literal value would be copied out of this process (pickled, shipped to a
    worker or another node); give the secret a source read where it runs instead."""


class Unavailable(SandboxError, RuntimeError):
    """Something this host must provide is missing; the message names it and how to fix it."""


class IsolationUnavailable(Unavailable):
    """A required isolation layer cannot be applied on this machine; the message names it and why."""


class GuestBuildError(Unavailable):
    """The wasi guest could not be built or loaded; the message says how to fix it."""


class SecretUnavailable(Unavailable):
    """A secret's value could not be read from its source (the message names the secret and
    the source, never a value). Raised by `Sandbox.run` before any guest code runs."""


class SandboxClosed(SandboxError, RuntimeError):
    """The sandbox or session was closed; create a new one."""


class OverlayConflict(SandboxError, ValueError):
    """`Sandbox.apply` refused: a host file changed since the run, or a path is not confined."""
