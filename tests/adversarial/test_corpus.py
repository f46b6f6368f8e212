"""Every escape in `corpus.jsonl`, on every runtime in ``RUNTIMES``: the attack fails and the host
is intact (see `corpus` for the expected outcomes and `detectors` for what "intact" means)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sandbox import Sandbox

try:  # the conformance package, as pytest imports it (rootdir-relative)
    from conformance.runtime_differences import WASI_UNGATED  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - imported as tests.adversarial
    from tests.conformance.runtime_differences import WASI_UNGATED

from . import tally
from .conftest import CASE_LIMITS, make_sandbox, runtime_id
from .corpus import WALL_SLACK, Case, load, outcome_problem
from .detectors import (
    RSS_SUITE_BOUND,
    Environment,
    Resources,
    find_leaks,
    host_state,
    resource_violations,
    state_violations,
)

CASES = load()
HEALTH_CODE = "sum(i * i for i in range(100))"
HEALTH_VALUE = 328350


@dataclass
class Harness:
    runtime: tuple[str, str | None]
    id: str
    sandbox: Sandbox
    env: Environment
    baseline: Resources

    def healthy(self) -> str | None:
        result = self.sandbox.run(HEALTH_CODE)
        if not (result.ok and result.value == HEALTH_VALUE):
            return f"host no longer answers a normal run: {result.error}"
        return None


@pytest.fixture(scope="module")
def harness(adv_runtime: tuple[str, str | None], adv_env: Environment) -> Iterator[Harness]:
    sandbox = make_sandbox(adv_runtime)
    try:
        # Warm up: start lazy helpers (pool, epoch thread, caches) before the baseline.
        for _ in range(3):
            assert sandbox.run(HEALTH_CODE).value == HEALTH_VALUE
        sandbox.run("while True:\n    pass")
        sandbox.run("1 / 0")
        harness = Harness(adv_runtime, runtime_id(adv_runtime), sandbox, adv_env, Resources.take())
        yield harness
        problems = resource_violations(harness.baseline, rss_bound=RSS_SUITE_BOUND, settle=5.0)
        assert not problems, f"{harness.id}: after the whole corpus: {problems}"
    finally:
        sandbox.close()


def _ids(case: Case) -> str:
    return case.id


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # guest finalizers stopped by the budget
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_escape_fails(request: pytest.FixtureRequest, harness: Harness, case: Case, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    expectation = case.expectation(harness.id)
    if expectation == "unbounded":
        tally.record(harness.id, "skipped")
        pytest.skip(f"documented non-guarantee of {harness.id} (README, SECURITY.md): cooperative limits cannot stop this C-level operation or unaccounted allocation in time")
    xfail_reason = case.xfail.get(harness.id)
    if xfail_reason:
        # A known, reported failure the owner could not fix yet: strict, so a fix turns it red.
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=xfail_reason))
    problems, leaks = _attack(harness, case, expectation, capfd, caplog)
    outcome = "leaked" if leaks else "escaped" if problems else "blocked"
    tally.record(harness.id, outcome, known=bool(xfail_reason))
    assert not leaks and not problems, f"{case.id} on {harness.id}: leaks={leaks} problems={problems}"


def _attack(harness: Harness, case: Case, expectation: str, capfd, caplog) -> tuple[list[str], list[str]]:
    code = harness.env.substitute(case.code)
    if harness.runtime[0] == "wasi":  # attack the WebAssembly boundary, not the guest's own allowlist
        code = WASI_UNGATED + code
    before_resources = Resources.take()
    before_state = host_state()
    caplog.set_level(logging.DEBUG)
    problems: list[str] = []
    started = time.monotonic()
    try:
        result = harness.sandbox.run(code)
    except Exception as exc:  # a guest must never raise on the host
        result = None
        problems.append(f"host exception from Sandbox.run: {type(exc).__name__}: {str(exc)[:300]}")
    elapsed = time.monotonic() - started
    if elapsed > CASE_LIMITS.wall_seconds + WALL_SLACK:
        problems.append(f"took {elapsed:.1f} s, over the wall limit {CASE_LIMITS.wall_seconds} s + {WALL_SLACK} s")
    if result is not None:
        problem = outcome_problem(expectation, result)
        if problem:
            problems.append(f"{problem} (expected {expectation!r}; got ok={result.ok} error={result.error})")
    out, err = capfd.readouterr()
    texts = [result.model_dump_json() if result is not None else "", out, err, caplog.text]
    leaks = sorted({leak for text in texts for leak in find_leaks(text)})
    problems += harness.env.violations()
    problems += state_violations(before_state, host_state())
    problems += resource_violations(before_resources)
    health = harness.healthy()
    if health:
        problems.append(health)
    if problems or leaks:
        harness.env.reset()
    return problems, leaks


def test_corpus_is_well_formed_and_security_md_counts_are_current() -> None:
    from . import counts

    assert len(CASES) >= 300 and {c.category for c in CASES} >= {"dunder-walk", "format-string", "frames", "secrets", "resource"}
    assert all(c.source and c.code for c in CASES)
    assert counts.main(["--check"]) == 0, "run: python -m tests.adversarial.counts"
