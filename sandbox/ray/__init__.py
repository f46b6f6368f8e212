"""Scale out on Ray: warm sandbox pools across a cluster (``pip install 'sandbox[ray]'``).

    from sandbox.ray import RaySandboxPool, SandboxSpec

    spec = SandboxSpec("restricted", isolation="process", capabilities=[get_weather])
    with RaySandboxPool(spec, size=4) as pool:
        result = pool.run("get_weather('Paris')['temp']")

See docs/scale-out.md: which runtime to use on a cluster, and where secrets, policy, records
and capabilities live.
"""

from sandbox.ray._capability_host import CapabilityHost
from sandbox.ray._data import TransformFailed, transform_batches
from sandbox.ray._pool import PoolSession, PoolStats, RaySandboxPool
from sandbox.ray._rates import ClusterRateStore
from sandbox.ray._records import RecordActor
from sandbox.ray._spec import SandboxSpec
from sandbox.ray._worker import WorkerInfo
from sandbox.errors import SecretInTransit

__all__ = [
    "CapabilityHost",
    "ClusterRateStore",
    "PoolSession",
    "PoolStats",
    "RaySandboxPool",
    "RecordActor",
    "SandboxSpec",
    "SecretInTransit",
    "TransformFailed",
    "WorkerInfo",
    "transform_batches",
]
