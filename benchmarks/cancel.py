"""Cancel latency per runtime: from `RunHandle.cancel()` to the `RunResult` being available.

    python -m benchmarks.cancel                 # 100 cancels per runtime and guest state
    python -m benchmarks.cancel --n 30 --out /tmp/cancel.json

For each runtime (restricted, restricted+process, wasi) and each place the guest can be when
it is cancelled (a busy Python loop, a capability call blocked on the host, a sleep where the
runtime has one), a run is started, left running for 20-60 ms, cancelled, and the time until
`handle.result()` returns is measured. Target: p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from benchmarks.stats import summarise
from sandbox import Limits, Sandbox, capability

RUNTIMES = {
    "restricted": {"runtime": "restricted"},
    "restricted+process": {"runtime": "restricted", "isolation": "process"},
    "wasi": {"runtime": "wasi"},
}

GUESTS = {
    "busy-loop": "x = 0\nwhile True:\n    x += 1",
    "capability-call": "block(3600)",
    "sleep": "import time\ntime.sleep(3600)",
}


@capability
def block(seconds: float) -> float:
    """Blocks on the host (the run abandons it when cancelled)."""
    time.sleep(min(seconds, 5))
    return seconds


def measure(sb: Sandbox, code: str, n: int, rng: random.Random) -> list[float]:
    """Latencies (s) of ``n`` cancels of ``code`` on ``sb``; every result must be ``cancelled``."""
    samples = []
    for _ in range(n):
        handle = sb.start(code)
        time.sleep(rng.uniform(0.02, 0.06))
        started = time.perf_counter()
        handle.cancel()
        result = handle.result(timeout=30)
        samples.append(time.perf_counter() - started)
        if result.error is None or result.error.kind != "cancelled":
            raise AssertionError(f"expected a cancelled run, got {result.error}")
    return samples


def run(n: int, runtimes: list[str]) -> dict[str, Any]:
    rng = random.Random(0)
    report: dict[str, Any] = {"n": n, "unit": "seconds", "results": {}}
    for name in runtimes:
        limits = Limits(wall_seconds=3600, cpu_seconds=3600)
        with Sandbox(**RUNTIMES[name], limits=limits, capabilities=[block]) as sb:
            sb.run("1")  # warm up
            for guest, code in GUESTS.items():
                if guest == "sleep" and name != "wasi":
                    continue  # the restricted runtime offers no sleep
                stats = summarise(measure(sb, code, n, rng))
                report["results"][f"{name}/{guest}"] = stats
                print(f"{name:>20} {guest:<16} median {stats['median'] * 1000:7.2f} ms   "
                      f"p99 {stats['p99'] * 1000:7.2f} ms   max {stats['max'] * 1000:7.2f} ms")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cancel")
    parser.add_argument("--n", type=int, default=100, help="cancels per runtime and guest state")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cancel.json")
    args = parser.parse_args(argv)
    report = run(args.n, [name for name in args.runtimes.split(",") if name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
