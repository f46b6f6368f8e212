"""`python -m benchmarks.ray_pool`: what running through a `RaySandboxPool` costs.

Measures, on a local Ray cluster (``num_cpus`` = this machine's CPUs):

- per-run overhead through the pool: one run per actor call, and ``--batch`` runs per call
  (`RaySandboxPool.map`), each against the same runs on a local `Sandbox`;
- throughput (runs/s) of the pool (``--size`` actors, batched) against a local `Sandbox`
  running the same runs one after another (10 x ``--runs`` runs each);
- cold start per runtime: from creating a one-actor pool to the first result.

Writes ``benchmarks/results/ray_pool.json`` (or ``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.machine import describe
from benchmarks.stats import summarise

RUNTIMES = {"restricted": ("restricted", None), "restricted+process": ("restricted", "process"), "wasi": ("wasi", None)}
CODE = "1 + 1"


def _latencies(run: Any, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        result = run(CODE)
        samples.append(time.perf_counter() - started)
        assert result.ok, result.error
    return samples


def measure(runs: int, batch: int, size: int, cold_repeats: int) -> dict[str, Any]:
    """Every measurement, as a JSON-ready dict (seconds)."""
    import ray

    from sandbox import Sandbox
    from sandbox.ray import RaySandboxPool, SandboxSpec

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    out: dict[str, Any] = {"machine": describe(), "runs": runs, "batch": batch, "size": size, "runtimes": {},
                           "load_1min": [os.getloadavg()[0]]}
    try:
        for label, (runtime, isolation) in RUNTIMES.items():
            spec = SandboxSpec(runtime, isolation=isolation)
            cold = []
            for _ in range(cold_repeats):
                started = time.perf_counter()
                with RaySandboxPool(spec, size=1, num_cpus=0.5) as one:
                    assert one.run(CODE).ok
                    cold.append(time.perf_counter() - started)
            with Sandbox(runtime, isolation=isolation) as local:  # type: ignore[arg-type]
                local.run(CODE)
                local_single = _latencies(lambda code: local.run(code), runs)
                started = time.perf_counter()
                for _ in range(runs * 10):
                    local.run(CODE)
                local_rate = runs * 10 / (time.perf_counter() - started)
            with RaySandboxPool(spec, size=size, num_cpus=0.5, max_concurrency=2) as pool:
                pool.wait_ready(timeout=300)
                pool.map([CODE] * size * 4, batch_size=1)  # warm every actor
                pool_single = _latencies(lambda code: pool.run(code), runs)
                started = time.perf_counter()
                results = pool.map([CODE] * runs * 10, batch_size=batch)
                batched_rate = len(results) / (time.perf_counter() - started)
                assert all(r.ok for r in results)
            single, local_s = summarise(pool_single), summarise(local_single)
            out["runtimes"][label] = {
                "cold_start": summarise(cold),
                "local_single": local_s,
                "pool_single": single,
                "overhead_single": single["median"] - local_s["median"],
                "pool_batched_per_run": 1 / batched_rate,
                "overhead_batched": 1 / batched_rate - local_s["median"],
                "local_runs_per_s": local_rate,
                "pool_runs_per_s": batched_rate,
            }
    finally:
        ray.shutdown()
    out["load_1min"].append(os.getloadavg()[0])
    return out


def table(data: dict[str, Any]) -> str:
    """The Markdown table the README shows."""
    lines = [
        f"| runtime | local run | pool run (1 per call) | pool run ({data['batch']} per call) | "
        f"local runs/s | pool runs/s ({data['size']} actors, batched) | cold start to first result |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in data["runtimes"].items():
        lines.append(
            f"| {label} | {r['local_single']['median'] * 1e3:.2f} ms | {r['pool_single']['median'] * 1e3:.2f} ms "
            f"(+{r['overhead_single'] * 1e3:.2f}) | {r['pool_batched_per_run'] * 1e3:.3f} ms | "
            f"{r['local_runs_per_s']:,.0f} | {r['pool_runs_per_s']:,.0f} | {r['cold_start']['median']:.2f} s |"
        )
    start, end = data["load_1min"]
    lines.append(f"\n1-minute load {start:.1f} at the start, {end:.1f} at the end, on {os.cpu_count()} CPUs.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_pool", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per latency sample set (default 200)")
    parser.add_argument("--batch", type=int, default=50, help="runs per actor call when batched (default 50)")
    parser.add_argument("--size", type=int, default=2, help="actors in the pool (default 2)")
    parser.add_argument("--cold", type=int, default=3, help="cold starts per runtime (default 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_pool.json")
    args = parser.parse_args(argv)
    data = measure(args.runs, args.batch, args.size, args.cold)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(table(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
