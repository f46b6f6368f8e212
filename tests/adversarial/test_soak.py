"""Load and soak: many mixed runs over threads and every runtime, and the host does not degrade.

``SANDBOX_SOAK_RUNS`` runs in total (default 300 in the normal test run; ``make soak`` runs
10,000), spread round-robin over every runtime in ``RUNTIMES`` and submitted from
``SANDBOX_SOAK_THREADS`` threads (default 4). The mix, per runtime:

* ``ok``      -- compute and a capability call, checked value;
* ``error``   -- a guest exception or a syntax error;
* ``limit``   -- a busy loop on a sandbox with a tight CPU limit;
* ``denied``  -- a secret handed to a capability outside its scope (``policy_denied``);
* ``escape``  -- a quick attack from the corpus (not a resource case), expected to fail as the
  corpus says, leaking nothing.

Asserted: every submitted run comes back exactly once with the outcome of its kind, nothing
raises on the host, no result carries a canary, and the host's fds, threads, descendants and
RSS are back within the stated bounds after the last run (`detectors`).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from sandbox import Limits, Sandbox, capability
from sandbox.secrets import Secret, SecretValue

from .conftest import echo, make_sandbox, runtime_id, use_secret
from .corpus import load, outcome_problem
from .detectors import CANARY_SECRET, RSS_SUITE_BOUND, SECRET_NAME, Environment, Resources, find_leaks, resource_violations

try:
    from conftest import RUNTIMES  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover
    from tests.conftest import RUNTIMES

RUNS = int(os.environ.get("SANDBOX_SOAK_RUNS", "300"))
THREADS = int(os.environ.get("SANDBOX_SOAK_THREADS", "4"))
NORMAL = Limits(cpu_seconds=1.0, wall_seconds=5.0, memory_bytes=128 << 20, max_output_bytes=64 << 10, max_recursion_depth=200)
TIGHT = Limits(cpu_seconds=0.05, wall_seconds=1.0, memory_bytes=128 << 20, max_output_bytes=64 << 10, max_recursion_depth=200)
KINDS = ("ok", "ok", "ok", "error", "limit", "denied", "escape", "escape")
"""Weights: mostly ordinary runs, as an agent host would see, with every failure mode mixed in."""

ERROR_CODES = ("1 / 0", "raise ValueError('boom')", "def f(:\n    pass", "[][1]", "undefined_name")
ESCAPE_CATEGORIES = {"dunder-walk", "import", "format-string", "frames", "exceptions", "guard-shadowing", "secrets", "filesystem", "network", "process"}


@capability
def echo_secret(token: SecretValue) -> int:
    """Outside the canary secret's scope: every call with the handle is denied."""
    return len(token.reveal())


@dataclass(frozen=True)
class Job:
    index: int
    runtime: str
    kind: str
    code: str
    expectation: str = ""


def _jobs(runtimes: list[str], env: Environment) -> list[Job]:
    rng = random.Random(1234)
    escapes = [c for c in load() if c.category in ESCAPE_CATEGORIES]
    jobs = []
    for index in range(RUNS):
        runtime = runtimes[index % len(runtimes)]
        kind = KINDS[rng.randrange(len(KINDS))]
        if kind == "ok":
            n = rng.randrange(10, 200)
            code = f"total = sum(i * i for i in range({n}))\nechoed = echo(str(total))\nprint(echoed)\nint(echoed)"
            jobs.append(Job(index, runtime, kind, code, str(sum(i * i for i in range(n)))))
        elif kind == "error":
            jobs.append(Job(index, runtime, kind, rng.choice(ERROR_CODES)))
        elif kind == "limit":
            jobs.append(Job(index, runtime, kind, "while True:\n    pass"))
        elif kind == "denied":
            jobs.append(Job(index, runtime, kind, "echo_secret(secrets.canary)"))
        else:
            # Known, reported escapes (xfail in the corpus) are left out: the soak is about load.
            case = rng.choice([c for c in escapes if c.expectation(runtime) in ("refused", "blocked") and runtime not in c.xfail])
            jobs.append(Job(index, runtime, kind, env.substitute(case.code), case.expectation(runtime)))
    return jobs


def _problem(job: Job, result) -> str | None:
    if job.kind == "ok":
        if not result.ok or str(result.value) != job.expectation or job.expectation not in result.stdout:
            return f"expected ok {job.expectation}, got ok={result.ok} value={result.value!r} error={result.error}"
    elif job.kind == "error":
        if result.ok or result.error.kind not in ("guest_exception", "compile_error"):
            return f"expected a guest error, got {result.error}"
    elif job.kind == "limit":
        if result.ok or result.error.kind != "limit_exceeded":
            return f"expected limit_exceeded, got {result.error}"
    elif job.kind == "denied":
        if result.ok or result.error.kind != "policy_denied":
            return f"expected policy_denied, got ok={result.ok} {result.error}"
    else:
        return outcome_problem(job.expectation, result)
    return None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_soak_mixed_runs_over_threads_and_runtimes(adv_env: Environment) -> None:
    runtimes = [r.values[0] for r in RUNTIMES]
    ids = [runtime_id(r) for r in runtimes]
    normal: dict[str, Sandbox] = {}
    tight: dict[str, Sandbox] = {}
    denied: dict[str, Sandbox] = {}
    try:
        for rt, rid in zip(runtimes, ids):
            extra = {"workers": 2} if rt[1] == "process" else {}
            normal[rid] = make_sandbox(rt, NORMAL, **extra)
            tight[rid] = make_sandbox(rt, TIGHT, **extra)
            denied[rid] = Sandbox(
                rt[0],  # type: ignore[arg-type]
                isolation=rt[1],  # type: ignore[arg-type]
                limits=NORMAL,
                capabilities=[echo, use_secret, echo_secret],
                secrets={SECRET_NAME: Secret(value=CANARY_SECRET, capabilities=["use_secret"])},
                **extra,
            )
        # Warm every sandbox (lazy pools, threads and caches) before the baseline.
        for rid in ids:
            for _ in range(3):
                assert normal[rid].run("echo('1')").ok
                assert tight[rid].run("1").ok
                assert denied[rid].run("1").ok
            tight[rid].run("while True:\n    pass")
        baseline = Resources.take()
        jobs = _jobs(ids, adv_env)

        def run(job: Job):
            sb = {"limit": tight, "denied": denied}.get(job.kind, normal)[job.runtime]
            try:
                return job, sb.run(job.code), None
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                return job, None, f"{type(exc).__name__}: {exc}"

        started = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            outcomes = list(pool.map(run, jobs))
        elapsed = time.monotonic() - started

        seen = Counter(job.index for job, _, _ in outcomes)
        assert len(outcomes) == len(jobs) and all(seen[j.index] == 1 for j in jobs), "a run was lost or duplicated"
        problems = []
        by = Counter()
        for job, result, host_error in outcomes:
            by[(job.runtime, job.kind)] += 1
            if host_error:
                problems.append(f"#{job.index} {job.runtime} {job.kind}: host exception {host_error}")
                continue
            leaks = find_leaks(result.model_dump_json())
            if leaks:
                problems.append(f"#{job.index} {job.runtime} {job.kind}: leaked {leaks}")
            problem = _problem(job, result)
            if problem:
                problems.append(f"#{job.index} {job.runtime} {job.kind}: {problem}\n{job.code[:300]}")
        problems += adv_env.violations()
        summary = ", ".join(f"{rid}: " + " ".join(f"{k}={by[(rid, k)]}" for k in sorted(set(KINDS))) for rid in ids)
        print(f"\nsoak: {len(jobs)} runs in {elapsed:.1f} s over {THREADS} threads ({summary})")
        assert not problems, "\n".join(problems[:20]) + (f"\n... {len(problems)} problems" if len(problems) > 20 else "")
        assert sum(by.values()) == RUNS
        growth = resource_violations(baseline, rss_bound=RSS_SUITE_BOUND, settle=5.0)
        assert not growth, f"after {RUNS} runs: {growth}"
    finally:
        for group in (normal, tight, denied):
            for sb in group.values():
                sb.close()
