"""How long a capability call may take: its own configured timeout, capped by the run's remaining time.

Capabilities that wait on something outside the host (the network, a database) call
`call_timeout` once per call and use the answer as their deadline, so a call never outlives
the run that made it.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable

_CALL_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("sandbox_call_deadline", default=None)


def run_remaining() -> float | None:
    """Seconds left in the wall budget of the run whose capability call is executing, or None
    outside a call made by a sandbox run (also `sandbox.capabilities.remaining_time`).

    At the run's deadline the call is abandoned (the run stops waiting for it, discards its
    result and ends with ``limit_exceeded`` / ``wall``), so waiting longer is pointless. The
    value can be 0 or negative when the time is already spent.
    """
    deadline = _CALL_DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


set_call_deadline: Callable[[float | None], contextvars.Token] = _CALL_DEADLINE.set
"""``set_call_deadline(deadline)``: make `run_remaining` count down to ``deadline`` (a
`time.monotonic` instant) in this context (host bridge use); returns the token to reset it with.
The context variable's own ``set`` (a capability call makes no Python call for it)."""


def call_timeout(configured: float) -> float:
    """``min(configured, time left in the current run)``; ``configured`` outside a run.

    The result can be 0 or negative when the run's time is already spent: callers treat that
    as an immediate timeout.
    """
    remaining = run_remaining()
    return configured if remaining is None else min(configured, remaining)
