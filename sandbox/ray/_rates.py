"""Per-principal rates, caps and budgets for a whole cluster: one `RateStore`.

Each worker's policy keeps per-run counts itself; anything counted *across* runs (a rate
such as ``"10/minute"`` per principal) must be counted in one place, or it multiplies by the
number of workers. `RateStore` is the protocol (one atomic `admit` call); `ClusterRateStore`
implements it with a named Ray actor, so any worker that knows the name reaches the same
counts. Another store (Redis) can implement the same protocol.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol, runtime_checkable

import ray


@runtime_checkable
class RateStore(Protocol):
    """Counts admitted calls per key over sliding windows, for every worker at once."""

    def admit(self, key: str, calls: int, seconds: float) -> bool:
        """Atomically: when fewer than ``calls`` were admitted for ``key`` in the last
        ``seconds``, admit one more and return True; otherwise return False."""
        ...


class _Windows:
    """The actor behind `ClusterRateStore`: sliding windows of admission times per key."""

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {}

    def admit(self, key: str, calls: int, seconds: float) -> bool:
        # An actor runs one call at a time (max_concurrency=1): check and admit are atomic.
        now = time.monotonic()
        window = self._windows.setdefault(key, deque())
        while window and now - window[0] >= seconds:
            window.popleft()
        if len(window) >= calls:
            return False
        window.append(now)
        return True


class ClusterRateStore:
    """A `RateStore` shared by the cluster: a named Ray actor.

    Made on the driver (which owns the actor); picklable, so it travels to the workers with
    its actor handle. Instances with the same ``name`` and ``namespace`` share one actor and
    its counts. Each `admit` is one actor call (about 1 ms).
    """

    def __init__(self, name: str = "sandbox-rates", *, namespace: str | None = None) -> None:
        self.name = name
        self._actor = ray.remote(_Windows).options(
            name=name, namespace=namespace, get_if_exists=True, num_cpus=0, max_concurrency=1,
        ).remote()

    def admit(self, key: str, calls: int, seconds: float) -> bool:
        return bool(ray.get(self._actor.admit.remote(key, calls, seconds)))

    def close(self) -> None:
        """Stop the actor (the counts are lost)."""
        ray.kill(self._actor)
