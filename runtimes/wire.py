"""The wire format shared by every runtime and the host.

An *outcome* is a plain dict, JSON-serialisable, built by `outcome()`::

    {"ok": bool, "value": <json>, "stdout": str, "stderr": str, "output_truncated": bool,
     "error": None | {"kind", "type", "message", "lineno", "limit"},
     "cpu_seconds": float | None, "peak_memory_bytes": int | None}

A *capability fault* is what the host answers instead of a value when a call fails:
``{"type": GuestErrorType, "message": str, "terminate": None | ErrorKind}``. The runtime
raises the named guest exception; when ``terminate`` is set the run must end with that error
kind whatever the guest catches (escalation after repeated denials).

A *secret handle* crosses the boundary as ``{SECRET_MARKER: token}``; the token is opaque and
only means something to the host that issued it, for the run it was issued to.

This module is pure Python with no third-party imports: the wasi guest and the confined
worker import it too.
"""

from __future__ import annotations

import math
from typing import Any

SECRET_MARKER = "__sandbox_secret_handle__"

MAX_INT_BITS = 14_000
"""Larger ints cannot be turned into decimal text (Python's 4300-digit limit), so neither JSON
nor redaction could handle them: `to_wire` refuses them, `to_result_value` describes them."""

GUEST_ERROR_TYPES = ("TypeError", "ValueError", "PolicyDenied", "CapabilityError")
"""Exception types a capability fault may name. `PolicyDenied` subclasses `PermissionError`,
`CapabilityError` subclasses `Exception`; runtimes define both for the guest."""


class Fault(Exception):
    """A capability call failed: the guest sees ``guest_type`` raised with ``message``.

    ``guest_type`` is one of `GUEST_ERROR_TYPES`. When ``terminate`` is an error kind the run
    must end with that kind whatever the guest catches.
    """

    def __init__(self, guest_type: str, message: str, *, terminate: str | None = None) -> None:
        super().__init__(message)
        self.guest_type = guest_type if guest_type in GUEST_ERROR_TYPES else "CapabilityError"
        self.message = message
        self.terminate = terminate

    def to_wire(self) -> dict:
        return {"type": self.guest_type, "message": self.message, "terminate": self.terminate}

    @classmethod
    def from_wire(cls, data: dict) -> "Fault":
        return cls(str(data.get("type")), str(data.get("message")), terminate=data.get("terminate"))


class WireError(TypeError):
    """A value cannot cross the boundary (not JSON-compatible)."""


def to_wire(value: Any, *, depth: int = 0, handle_token: Any = None) -> Any:
    """Copy ``value`` into plain JSON-compatible data, strictly.

    Accepts None, bool, int, float (finite), str, list/tuple, and dicts with str keys; a secret
    handle becomes ``{SECRET_MARKER: token}`` through ``handle_token(obj)``, which returns None
    for objects that are not handles. Anything else raises `WireError` naming the type, so a
    guest cannot hand the host an object with behaviour. Subclasses of the builtins are
    converted to the builtin itself. Depth is capped at 100.
    """
    if depth > 100:
        raise WireError("value nested deeper than 100 levels cannot cross the boundary")
    if value is None or value is True or value is False:
        return value
    kind = type(value)
    if kind is int or (isinstance(value, int) and not isinstance(value, bool)):
        if value.bit_length() > MAX_INT_BITS:
            raise WireError(f"an int of {value.bit_length()} bits is too large to cross the boundary")
        return int(value)
    if isinstance(value, float):
        value = float(value)
        if not math.isfinite(value):
            raise WireError(f"{value!r} is not JSON-compatible")
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_wire(item, depth=depth + 1, handle_token=handle_token) for item in value]
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise WireError(f"dict keys must be str to cross the boundary, not {type(key).__name__}")
            result[str(key)] = to_wire(item, depth=depth + 1, handle_token=handle_token)
        return result
    if handle_token is not None:
        token = handle_token(value)
        if token is not None:
            return {SECRET_MARKER: token}
    raise WireError(f"a {kind.__name__} cannot cross the boundary: pass JSON-compatible data")


def to_result_value(value: Any, *, depth: int = 0) -> Any:
    """Convert a guest's final value to JSON-compatible data, leniently.

    Like `to_wire`, but sets and frozensets become sorted lists (insertion order when the
    items do not sort), non-finite floats and anything else become their ``repr`` string.
    Never raises for ordinary objects; a ``repr`` that raises gives ``"<unrepresentable T>"``.
    """
    if depth > 100:
        return "<nested too deep>"
    if value is None or isinstance(value, bool):
        return None if value is None else bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value) if value.bit_length() <= MAX_INT_BITS else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [to_result_value(item, depth=depth + 1) for item in value]
    if isinstance(value, (set, frozenset)):
        items = list(value)
        try:
            items.sort()
        except TypeError:
            pass
        return [to_result_value(item, depth=depth + 1) for item in items]
    if isinstance(value, dict):
        return {
            (key if isinstance(key, str) else _safe_repr(key)): to_result_value(item, depth=depth + 1)
            for key, item in value.items()
        }
    return _safe_repr(value)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # a guest __repr__ may raise anything
        return f"<unrepresentable {type(value).__name__}>"


def error(kind: str, type_: str, message: str, *, lineno: int | None = None, limit: str | None = None) -> dict:
    """An error entry for an outcome."""
    return {"kind": kind, "type": type_, "message": message, "lineno": lineno, "limit": limit}


def outcome(
    *,
    value: Any = None,
    stdout: str = "",
    stderr: str = "",
    output_truncated: bool = False,
    error: dict | None = None,
    cpu_seconds: float | None = None,
    peak_memory_bytes: int | None = None,
) -> dict:
    """An outcome dict; ``ok`` is True exactly when ``error`` is None."""
    return {
        "ok": error is None,
        "value": value if error is None else None,
        "stdout": stdout,
        "stderr": stderr,
        "output_truncated": output_truncated,
        "error": error,
        "cpu_seconds": cpu_seconds,
        "peak_memory_bytes": peak_memory_bytes,
    }
