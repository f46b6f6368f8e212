"""Per-principal rates for a whole cluster: one `sandbox.policy.RateStore` for every worker.

Each worker's policy keeps per-run counts itself; anything counted *across* runs (a rate such
as ``"10/minute"`` per principal) must be counted in one place, or it multiplies by the number
of workers. `ClusterRateStore` puts a `MemoryRateStore` in one named Ray actor: any worker
holding it (or any driver naming it) reaches the same windows. Anything else with
``admit(key, limit, window) -> bool`` (Redis, say) can take its place.
"""

from __future__ import annotations

import ray

from sandbox.policy import MemoryRateStore


class ClusterRateStore:
    """A `sandbox.policy.RateStore` shared by the cluster: a named Ray actor.

    Made on the driver (which owns the actor); picklable, so it travels to the workers with
    its actor handle. Instances with the same ``name`` and ``namespace`` share one actor and
    its windows. The actor serves one call at a time, so `admit` is atomic; each call costs
    one actor round trip (about 1 ms).
    """

    def __init__(self, name: str = "sandbox-rates", *, namespace: str | None = None) -> None:
        self.name = name
        self._actor = ray.remote(MemoryRateStore).options(
            name=name, namespace=namespace, get_if_exists=True, num_cpus=0, max_concurrency=1,
        ).remote()

    def admit(self, key: str, limit: int, window: float) -> bool:
        """Count one call under ``key`` when fewer than ``limit`` were admitted in the last ``window`` s."""
        return bool(ray.get(self._actor.admit.remote(key, limit, window)))

    def close(self) -> None:
        """Stop the actor (the windows are lost)."""
        ray.kill(self._actor)
