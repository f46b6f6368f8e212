"""Resource limits for one run: the `Limits` model and size parsing.

`Limits` is validated when it is built: a negative, zero, infinite or NaN limit raises
`pydantic.ValidationError` (a `ValueError`) that names the field, so bad host configuration
fails before any guest code runs.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from runtimes.wire import DEFAULT_VALUE_BYTES
from sandbox.errors import ConfigurationError

LimitName = Literal["cpu", "wall", "memory", "recursion", "value"]
"""Names a limit in `ErrorInfo.limit` when a run hits it: the guest's vocabulary
(`runtimes.guest.LIMIT_NAMES`, which every runtime reports from), spelled out for type
checkers. Output over ``max_output_bytes`` is not an error (the output is cut and
`RunResult.output_truncated` is set)."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: int | str) -> int:
    """Parse a byte count: an int, or a string such as ``"256M"``, ``"1.5GiB"``, ``"4096"``.

    Suffixes are binary (K = 1024). Raises `ConfigurationError` with the accepted forms when the text
    does not parse, and for values that are not positive.
    """
    if isinstance(value, bool):
        raise ConfigurationError("a size must be an int or a string like '256M', not a bool")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ConfigurationError(f"cannot parse size {value!r}: use bytes or a suffix K, M, G, T (e.g. '256M')")
        size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    else:
        raise ConfigurationError(f"a size must be an int or a string like '256M', not {type(value).__name__}")
    if size <= 0:
        raise ConfigurationError(f"a size must be positive, got {value!r}")
    return size


def _size(value: Any) -> Any:
    return parse_size(value) if isinstance(value, (int, str)) else value


Seconds = Annotated[float, Field(gt=0)]
Bytes = Annotated[int, BeforeValidator(_size), Field(gt=0)]


class Limits(BaseModel):
    """Hard ceilings for one run. Every field is positive and finite.

    How strictly each limit holds depends on the runtime (see README, "What each runtime
    guarantees"): wasi and process isolation enforce them outside the guest; the in-process
    restricted runtime enforces them cooperatively (tick checks and size guards).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    cpu_seconds: Seconds = 5.0
    """CPU time the guest may use. Default 5 s."""
    wall_seconds: Seconds = 10.0
    """Wall-clock time from start to result, capability calls included. Default 10 s."""
    memory_bytes: Bytes = 256 << 20
    """Memory the guest may allocate; accepts ``"256M"``-style strings. Default 256 MiB."""
    max_output_bytes: Bytes = 1 << 20
    """stdout plus stderr kept per run; the rest is dropped and the result is flagged. Default 1 MiB."""
    max_recursion_depth: Annotated[int, Field(gt=0, le=10_000)] = 500
    """Deepest guest call stack. Default 500."""
    max_value_bytes: Bytes = DEFAULT_VALUE_BYTES
    """Largest data crossing the boundary from the guest: the run's value, and each capability
    call's arguments and result. Measured as compact JSON in the wire format (shared references
    count each time they appear); at most one node per 16 bytes of it (1 048 576 at the default)
    and 100 levels of nesting. Over it the run ends with ``limit_exceeded`` / ``"value"`` (a
    capability result over it raises ``CapabilityError`` in the guest instead). The same on
    every runtime. Default 16 MiB."""

    @field_validator("cpu_seconds", "wall_seconds")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ConfigurationError("must be finite: every run needs a deadline")
        return value


DEFAULT_LIMITS = Limits.model_construct()
"""``Limits()``, made without running the validators (pydantic does not validate defaults
either), so that a sandbox without explicit limits builds no validator: the model's validator
is built on first use (``defer_build``), not when this module is imported."""
