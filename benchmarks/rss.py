"""Child-process probe: cold start, peak RSS and memory per live session of one subject.

Run as ``python -m benchmarks.rss SUBJECT --started EPOCH``; prints one JSON line. The
parent passes the wall-clock time at which it launched this process, so ``first_result_seconds``
is process start to the first correct result of the trivial snippet (interpreter start-up,
imports, subject set-up, first run). ``baseline`` measures the harness alone.

Memory: ``host_peak_rss`` is this process's peak RSS (``VmHWM``); ``workers_pss`` is the
summed proportional set size of live descendant processes (Monty workers, the confinement
zygote and its children), so pages they share by fork are not counted twice. Per-session
memory is the growth of host RSS + workers' PSS while ``sessions`` sessions are open, divided
by their number.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any


def _workers_pss() -> int:
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            info = child.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.Error, OSError):
            continue
    return total


def _host_peak_rss() -> int:
    """Peak RSS of this process since its exec (VmHWM; ru_maxrss would include the parent's peak,
    which Linux carries over a fork)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _host_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rss")
    parser.add_argument("subject")
    parser.add_argument("--started", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=4)
    args = parser.parse_args(argv)
    started = args.started or time.time()

    from benchmarks.subjects import Unavailable, by_name
    from benchmarks.workloads import CPU_LOOP, TRIVIAL

    out: dict[str, Any] = {"status": "ok"}
    subject = None
    if args.subject != "baseline":
        subject = by_name([args.subject], workers=args.workers)[0]
        try:
            subject.setup()
            value = subject.run(TRIVIAL)
        except Unavailable as exc:
            print(json.dumps({"status": "skipped", "reason": str(exc)}))
            return 0
        if value != 2:
            print(json.dumps({"status": "failed", "reason": f"first result {value!r}"}))
            return 0
    out["first_result_seconds"] = time.time() - started
    if subject is not None:
        for _ in range(20):
            subject.run(TRIVIAL)
        for _ in range(3):
            subject.run(CPU_LOOP)
        if "session" in subject.features:
            count = min(args.sessions, args.workers) if subject.name == "restricted+process" else args.sessions
            before = _host_rss() + _workers_pss()
            sessions = [subject.open_session() for _ in range(count)]
            for s in sessions:
                s.run("x = list(range(100))\nlen(x)")
            after = _host_rss() + _workers_pss()
            out["live_sessions"] = count
            out["rss_per_live_session"] = (after - before) / count
            out["workers_pss_with_sessions"] = _workers_pss()
            for s in sessions:
                s.close()
    out["host_peak_rss"] = _host_peak_rss()
    out["host_rss"] = _host_rss()
    out["workers_pss"] = _workers_pss()
    if subject is not None:
        subject.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
