"""A pool of warm sandboxes on Ray: process isolation, a capability over a database opened on
each worker, an env secret, a cluster-wide rate limit and one signed record chain.

    pip install 'sandbox[ray]'
    python examples/ray_pool.py

Starts a local Ray cluster (2 CPUs); on a real cluster, call ``ray.init(address="auto")``.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import ray

from sandbox import Secret, SecretValue, capability
from sandbox.audit import generate_signing_key, private_key_pem, public_key_pem
from sandbox.ray import ClusterRateStore, RaySandboxPool, RecordActor, SandboxSpec

# Secrets reach workers through their own environment (inherited from the node), never through
# Ray: a local cluster's workers inherit this process's environment.
os.environ.setdefault("WEATHER_API_KEY", "demo-" + secrets.token_hex(8))


def orders_capabilities() -> list:
    """Runs on each worker: the connection is opened there and never travels."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("create table orders (region text, amount real)")
    conn.executemany("insert into orders values (?, ?)", [("eu", 120.0), ("us", 80.5), ("eu", 42.0)])

    @capability
    def revenue(region: str) -> float:
        """Total order amount for a region."""
        return conn.execute("select coalesce(sum(amount), 0) from orders where region = ?", (region,)).fetchone()[0]

    return [revenue]


@capability
def forecast(city: str, api_key: SecretValue) -> dict:
    """A stand-in for a weather API call that needs a key (revealed only here, on the worker)."""
    key = api_key.reveal()
    return {"city": city, "temp_c": 18 + len(city) % 7, "authorised": key.startswith("demo-")}


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="sandbox-ray-"))
    key = generate_signing_key()
    (workdir / "signing.pem").write_bytes(private_key_pem(key))
    (workdir / "signing.pub").write_bytes(public_key_pem(key))

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = SandboxSpec(
            "restricted", isolation="process",
            capabilities=[forecast], factories=[orders_capabilities],
            secrets={"weather": Secret(env="WEATHER_API_KEY", capabilities=["forecast"])},
            policy={"capabilities": {"forecast": {"rate": "3/minute"}}},
        )
        records = RecordActor.start(workdir / "runs.jsonl", signing_key_file=workdir / "signing.pem")
        with RaySandboxPool(spec, size=2, num_cpus=0.5, records=records, rate_store=ClusterRateStore()) as pool:
            for info in pool.wait_ready(timeout=180):
                print(f"actor {info.index}: pid {info.pid}, layers {', '.join(info.layers['default'])}")

            result = pool.run("round(revenue('eu') - revenue('us'), 2)")
            print("revenue difference:", result.value)

            calls = pool.map(["""
try:
    r = forecast('Paris', secrets.weather)
except PolicyDenied as e:
    r = 'rate limited'
r
"""] * 5, batch_size=1)
            print("forecasts:", [c.value for c in calls])
            assert sum(isinstance(c.value, dict) for c in calls) == 3, "3 per minute across the whole pool"

            with pool.session() as session:
                session.run("seen = []")
                for city in ("Oslo", "Lima"):
                    session.run("seen.append(city)", inputs={"city": city})
                print("session state:", session.run("seen").value)
        verify = subprocess.run(
            [sys.executable, "-m", "sandbox.cli", "verify", str(workdir / "runs.jsonl"),
             "--public-key", str(workdir / "signing.pub")],
            capture_output=True, text=True,
        )
        print("sandbox verify:", (verify.stdout or verify.stderr).strip())
        return verify.returncode
    finally:
        ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
