"""The one test of where the runtimes still differ: every row of `runtime_differences.DIFFERENCES`
gives, on each runtime, exactly the outcome the row says, and README lists every row."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox import Limits

from .runtime_differences import ALL, DIFFERENCES, Difference

README = Path(__file__).resolve().parents[2] / "README.md"


def _runtime_id(runtime: tuple[str, str | None]) -> str:
    name, isolation = runtime
    return f"{name}+{isolation}" if isolation else name


@pytest.mark.parametrize("row", DIFFERENCES, ids=lambda row: row.id)
def test_runtime_differences(make_sandbox, runtime, row: Difference):
    assert set(row.outcomes) == set(ALL) and len({repr(o) for o in row.outcomes.values()}) > 1, (
        f"{row.id}: a row names every runtime and is a difference (same everywhere: move it to test_same_program)")
    assert f"`{row.id}`" in README.read_text(), f"README, 'Where the runtimes differ', must list {row.id}"
    result = make_sandbox(limits=Limits(cpu_seconds=2, wall_seconds=5)).run(row.code)
    got = ("value", result.value) if result.ok else (result.error.kind, result.error.type)
    assert got == row.outcomes[_runtime_id(runtime)], result.error
