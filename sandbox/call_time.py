"""How long a capability call may take: its own configured timeout, capped by the run's remaining time.

Capabilities that wait on something outside the host (the network, a database) call
`call_timeout` once per call and use the answer as their deadline, so a call never outlives
the run that made it.
"""

from __future__ import annotations


def run_remaining() -> float | None:
    """Seconds left in the current run's wall budget, or None outside a run (or when unknown)."""
    return None


def call_timeout(configured: float) -> float:
    """``min(configured, time left in the current run)``; ``configured`` outside a run.

    The result can be 0 or negative when the run's time is already spent: callers treat that
    as an immediate timeout.
    """
    remaining = run_remaining()
    return configured if remaining is None else min(configured, remaining)
