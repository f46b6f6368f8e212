"""How long the wasi guest takes to become usable: loading the cached component, and (only when
asked, it takes 30-90 s) a first-use build from scratch into a temporary cache directory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BUILD_TIMEOUT = 900.0


def cached_load() -> dict[str, Any]:
    """Seconds to make an Engine and deserialize the cached guest (warm page cache); builds first
    if the cache is empty, and says so. Never raises: failures are reported with the reason."""
    try:
        from sandbox.wasi.build import cache_entry, load_component, make_engine
    except Exception as exc:
        return {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
    was_cached = cache_entry().artifact.is_file()
    try:
        started = time.perf_counter()
        load_component(make_engine(), quiet=True)
        seconds = time.perf_counter() - started
    except Exception as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    return {"status": "ok", "seconds": seconds, "was_cached": was_cached,
            "how": "Engine + Component.deserialize_file of the cached artifact, in this process"}


def first_use_build() -> dict[str, Any]:
    """Seconds for `python -m sandbox.wasi.build` into an empty temporary cache directory (a new
    process: componentize-py, then Wasmtime compiling the component). Never raises."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-wasi-") as cache:
        env = {**os.environ, "SANDBOX_WASI_CACHE": cache,
               "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        started = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "sandbox.wasi.build", "--quiet"], cwd=str(root), env=env,
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"the build took longer than {BUILD_TIMEOUT:.0f} s"}
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        return {"status": "failed", "reason": (done.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return {"status": "ok", "seconds": seconds,
            "how": "python -m sandbox.wasi.build into an empty temporary SANDBOX_WASI_CACHE (new process)"}


def measure(build: bool) -> dict[str, Any]:
    """The cached load time, plus the first-use build time when ``build``."""
    out: dict[str, Any] = {"cached_load": cached_load()}
    out["first_use_build"] = first_use_build() if build else {
        "status": "skipped", "reason": "not asked for: pass --wasi-build (takes 30-90 s)"}
    return out
