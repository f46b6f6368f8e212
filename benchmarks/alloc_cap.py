"""Cost of the allocator cap (layer ``alloc-cap``) and of the guest ``re`` on in-process runs.

Runs the trivial run, the 10k loop and JSON 1 MB workloads on ``Sandbox("restricted")`` with
the cap on and off (a driver built with ``SANDBOX_DISABLE_ALLOC_CAP=1``), interleaved run by
run so machine load hits both alike, and prints the median of each. A regex workload runs in
the sandbox too, and the same matching is timed outside any sandbox with the stdlib ``re`` and
with the guest's ``re`` module (`regex` with a timeout per call): the cost of the ``re`` change
alone::

    python -m benchmarks.alloc_cap [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from typing import Any

from benchmarks.workloads import by_name
from runtimes.restricted import guest_re
from sandbox import Sandbox

REGEX_CODE = """\
import re
words = re.compile(r"[a-z]+")
total = 0
for line in text.splitlines():
    total += len(words.findall(line))
    total += len(re.sub(r"\\s+", " ", line))
total
"""
REGEX_TEXT = "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog   {i * 7}" for i in range(2000))


def _host_regex(module: Any, text: str) -> int:
    words = module.compile(r"[a-z]+")
    total = 0
    for line in text.splitlines():
        total += len(words.findall(line))
        total += len(module.sub(r"\s+", " ", line))
    return total


def _sandbox(cap: bool) -> Sandbox:
    previous = os.environ.pop("SANDBOX_DISABLE_ALLOC_CAP", None)
    if not cap:
        os.environ["SANDBOX_DISABLE_ALLOC_CAP"] = "1"
    try:
        return Sandbox("restricted")
    finally:
        os.environ.pop("SANDBOX_DISABLE_ALLOC_CAP", None)
        if previous is not None:
            os.environ["SANDBOX_DISABLE_ALLOC_CAP"] = previous


def _time(sandbox: Sandbox, code: str, inputs: dict | None) -> float:
    started = time.perf_counter()
    result = sandbox.run(code, inputs=inputs)
    elapsed = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"benchmark run failed: {result.error}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=0, help="runs per workload and mode (default: per workload)")
    args = parser.parse_args()
    on, off = _sandbox(True), _sandbox(False)
    assert "alloc-cap" in on.run("1").layers and "alloc-cap" not in off.run("1").layers
    rows = []
    cases = [(w.title, w.code, w.make_inputs(), args.rounds or min(w.samples, 300))
             for w in by_name(["trivial_fresh", "cpu_loop", "json_1mb"])]
    cases.append(("regex (guest re)", REGEX_CODE, {"text": REGEX_TEXT}, args.rounds or 60))
    for title, code, inputs, rounds in cases:
        times: dict[str, list[float]] = {"on": [], "off": []}
        for sandbox in (on, off):  # warm-up
            _time(sandbox, code, inputs)
        for _ in range(rounds):
            times["on"].append(_time(on, code, inputs))
            times["off"].append(_time(off, code, inputs))
        med_on, med_off = statistics.median(times["on"]), statistics.median(times["off"])
        rows.append((title, rounds, med_off, med_on))
    host: dict[str, list[float]] = {"re": [], "guest re": []}
    for _ in range(20):
        for name, module in (("re", re), ("guest re", guest_re)):
            started = time.perf_counter()
            _host_regex(module, REGEX_TEXT)
            host[name].append(time.perf_counter() - started)
    print(f"{'workload':24} {'runs':>5} {'cap off (ms)':>13} {'cap on (ms)':>12} {'cost':>7}")
    for title, rounds, med_off, med_on in rows:
        print(f"{title:24} {rounds:5d} {med_off * 1e3:13.3f} {med_on * 1e3:12.3f} {(med_on / med_off - 1) * 100:+6.1f}%")
    print(f"same matching outside a sandbox: stdlib re {statistics.median(host['re']) * 1e3:.3f} ms, "
          f"guest re (regex + timeout) {statistics.median(host['guest re']) * 1e3:.3f} ms")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    on.close()
    off.close()


if __name__ == "__main__":
    main()
